#!/usr/bin/env bash
# The scan that ends every test run: no token value the doubles issued (nor any ServiceAccount
# token presented to the STS double, a credential too) may appear in what the run
# left behind (controller logs, events, FederatedCredential statuses, metrics, control-plane logs).
#
#   hack/secrecy-scan.sh [--cluster] TOKENS_FILE DIR...
#
# TOKENS_FILE lists every issued token, one a line (the doubles append to the file named by
# FEDCRED_ISSUED_TOKENS). With --cluster, all events and FederatedCredentials of the cluster in
# KUBECONFIG are first dumped as JSON into the first DIR, so they are scanned too. Exits 1 naming
# each file that holds a token, with a short SHA-256 prefix of the token (never the token).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

cluster=false
if [[ "${1:-}" == "--cluster" ]]; then
  cluster=true
  shift
fi
(($# >= 2)) || die "usage: $0 [--cluster] TOKENS_FILE DIR..."
tokens=$1
shift
dirs=("$@")
mkdir -p "${dirs[0]}"

if $cluster; then
  dump="${dirs[0]}/cluster"
  mkdir -p "$dump"
  kubectl get events -A -o json >"$dump/events.json" || die "could not dump events"
  # The CRD may be missing when no test installed it: then there are no statuses to scan.
  if kubectl get crd federatedcredentials.fedcred.io >/dev/null 2>&1; then
    kubectl get federatedcredentials -A -o json >"$dump/federatedcredentials.json" ||
      die "could not dump FederatedCredentials"
  fi
fi

if [[ ! -s "$tokens" ]]; then
  log "secrecy scan: no issued tokens recorded in $tokens; nothing to look for"
  exit 0
fi
patterns=$(mktemp)
trap 'rm -f "$patterns"' EXIT
grep -v '^$' "$tokens" | sort -u >"$patterns"
count=$(wc -l <"$patterns")
tokens_real=$(realpath "$tokens")

hits=0
files=0
while IFS= read -r -d '' file; do
  [[ "$(realpath "$file")" == "$tokens_real" ]] && continue
  files=$((files + 1))
  found=$(grep -aoFf "$patterns" "$file" | sort -u || true)
  [[ -n "$found" ]] || continue
  while IFS= read -r token; do
    hits=$((hits + 1))
    log "secrecy scan: token sha256:$(printf '%s' "$token" | sha256sum | cut -c1-12) found in $file"
  done <<<"$found"
done < <(find "${dirs[@]}" -type f -print0)

if ((hits > 0)); then
  log "secrecy scan FAILED: $hits token occurrence(s) in $files file(s) scanned for $count issued token(s)"
  exit 1
fi
log "secrecy scan: $count issued token(s), $files file(s) scanned, no token found"
