#!/usr/bin/env bash
# Runs the fault suite (tests/faults.rs) and the soak (tests/soak.rs) on a fresh local control
# plane, collects the figures each prints into markdown tables, ends with the secrecy scan, and
# with --update writes the tables into RELIABILITY.md (between its faults and soak markers).
#
#   hack/faults.sh [--update] [--no-faults] [--no-soak] [--soak-minutes M] [--without-node]
#
# With a real node (the default; it needs root) the stories and the soak also read tokens where a
# pod reads them, from reader pods' metadata sidecars; --without-node reads the Secrets only.
# The soak runs 2 minutes unless told otherwise (FEDCRED_SOAK_RESOURCES, FEDCRED_SOAK_IDENTITIES
# and FEDCRED_SOAK_SEED pass through to it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

update=false run_faults=true run_soak=true soak_minutes=2 with_node=true
while (($#)); do
  case "$1" in
    --update) update=true ;;
    --no-faults) run_faults=false ;;
    --no-soak) run_soak=false ;;
    --soak-minutes) soak_minutes=${2:?--soak-minutes needs a number}; shift ;;
    --without-node) with_node=false ;;
    *) die "usage: $0 [--update] [--no-faults] [--no-soak] [--soak-minutes M] [--without-node]" ;;
  esac
  shift
done
if $with_node && ((EUID != 0)); then
  die "the node (kubelet, containerd) needs root: run as root, or add --without-node to read the Secrets only"
fi

"$here/install-tools.sh"
"$here/build-controlplane.sh"
if $with_node; then "$here/build-node.sh"; fi

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-faults.XXXXXX")
cleanup() {
  local rc=$?
  "$here/controlplane.sh" down "$run_dir" || true
  if [[ -f "$run_dir/node/before" ]] && ! "$here/node.sh" leftovers "$run_dir"; then
    rc=1
  fi
  rm -rf "$run_dir"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if $with_node; then
  "$here/controlplane.sh" up "$run_dir" --node
else
  "$here/controlplane.sh" up "$run_dir"
fi
source "$run_dir/env"
export FEDCRED_TEST_VENV="$FEDCRED_CACHE/venv"
export AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-1
export FEDCRED_ISSUED_TOKENS="$run_dir/issued-tokens" FEDCRED_EVIDENCE_DIR="$run_dir/evidence"
export FEDCRED_FAULT_REPORT="$run_dir/faults.md" FEDCRED_SOAK_REPORT="$run_dir/soak.md"
: >"$FEDCRED_FAULT_REPORT"
: >"$FEDCRED_SOAK_REPORT"

rc=0
if $run_faults; then
  log "running the fault suite"
  cargo test --locked --test faults || rc=$?
fi
if $run_soak; then
  log "running the soak for $soak_minutes min"
  FEDCRED_SOAK_SECONDS=$((soak_minutes * 60)) cargo test --locked --test soak -- --nocapture || rc=$?
fi
"$here/secrecy-scan.sh" --cluster "$FEDCRED_ISSUED_TOKENS" "$FEDCRED_EVIDENCE_DIR" "$run_dir/logs" || rc=1

when="$(date -u +'%Y-%m-%d %H:%M UTC'), $(nproc) cores"
faults_table="$run_dir/faults-table.md"
soak_table="$run_dir/soak-table.md"
{
  echo "Measured $when, by \`hack/faults.sh\`:"
  echo
  echo "| fault | time to recover | tokens served expired (Secret samples) | served expired in a pod | Secrets lost | exchange calls | notes |"
  echo "|---|---|---|---|---|---|---|"
  sort "$FEDCRED_FAULT_REPORT"
} >"$faults_table"
{
  echo "Measured $when, by \`${FEDCRED_SOAK_COMMAND:-hack/faults.sh}\`:"
  echo
  echo "| duration | resources | tokens served expired | Secrets lost | worst staleness | exchange rate | controller peak RSS | faults injected (seed ${FEDCRED_SOAK_SEED:-7}) |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$FEDCRED_SOAK_REPORT"
} >"$soak_table"
if $run_faults; then cat "$faults_table"; echo; fi
if $run_soak; then cat "$soak_table"; fi

if $update; then
  replace() { # marker table: the lines between <!-- marker:begin --> and <!-- marker:end -->
    python3 - "$1" "$2" <<'PY'
import sys
marker, table = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open("RELIABILITY.md").read()
begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
if begin not in text or end not in text:
    sys.exit(f"RELIABILITY.md has no {begin} … {end}")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open("RELIABILITY.md", "w").write(f"{head}{begin}\n{table}\n{end}{tail}")
PY
  }
  if ((rc == 0)); then
    if $run_faults; then replace faults "$faults_table"; fi
    if $run_soak; then replace soak "$soak_table"; fi
    log "RELIABILITY.md updated"
  else
    log "not updating RELIABILITY.md: the run failed"
  fi
fi
exit $rc
