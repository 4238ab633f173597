#!/usr/bin/env bash
# The scan that ends every test run: no token value the doubles issued, nor any credential they
# received (ServiceAccount tokens and AWS subject tokens presented to STS, the AWS session tokens
# and secret keys that signed them), may appear, plainly or base64-encoded, in what the run left
# behind (controller logs, events, FederatedCredential statuses, metrics, control-plane logs).
#
#   hack/secrecy-scan.sh [--cluster] TOKENS_FILE DIR...
#
# TOKENS_FILE lists every issued token and received credential, one a line (the doubles append to the file named by
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
# Each value in plain text and in base64 (standard and URL-safe alphabet), at each of the three
# alignments it can have inside a longer encoded text (a Secret's data, a JWT, a dump): the
# characters that depend only on the value, without the first and last group it shares with
# its neighbours. The hit is reported by the plain value it stands for.
variants=$(mktemp)
trap 'rm -f "$patterns" "$variants"' EXIT
grep -v '^$' "$tokens" | sort -u | python3 -c '
import base64, sys
for line in sys.stdin:
    value = line.rstrip("\n")
    raw = value.encode()
    forms = {value}
    for shift in range(3):
        text = base64.b64encode(b"\0" * shift + raw).decode().rstrip("=")
        start = 4 if shift else 0
        end = len(text) - (0 if (shift + len(raw)) % 3 == 0 else 4)
        part = text[start:end]
        if len(part) >= 12:
            forms.add(part)
            forms.add(part.replace("+", "-").replace("/", "_"))
    for form in sorted(forms):
        print(form + "\t" + value)
' >"$variants"
cut -f1 "$variants" | sort -u >"$patterns"
count=$(grep -v '^$' "$tokens" | sort -u | wc -l)
tokens_real=$(realpath "$tokens")

hits=0
files=0
while IFS= read -r -d '' file; do
  [[ "$(realpath "$file")" == "$tokens_real" ]] && continue
  files=$((files + 1))
  found=$(grep -aoFf "$patterns" "$file" | sort -u || true)
  [[ -n "$found" ]] || continue
  while IFS= read -r form; do
    hits=$((hits + 1))
    token=$(awk -F'\t' -v f="$form" '$1 == f { print $2; exit }' "$variants")
    how=plain
    [[ "$form" == "$token" ]] || how=base64
    log "secrecy scan: token sha256:$(printf '%s' "$token" | sha256sum | cut -c1-12) found ($how) in $file"
  done <<<"$found"
done < <(find "${dirs[@]}" -type f -print0)

if ((hits > 0)); then
  log "secrecy scan FAILED: $hits token occurrence(s) in $files file(s) scanned for $count issued token(s)"
  exit 1
fi
log "secrecy scan: $count issued token(s) and credential(s) (plain and base64), $files file(s) scanned, no token found"
