#!/usr/bin/env bash
# The long soak: tests/soak.rs for MINUTES (default 30) on a fresh local control plane, ending
# with the secrecy scan; prints the figures as a markdown table.
#
#   hack/soak.sh [MINUTES] [--update]
#
# --update writes the table into RELIABILITY.md. FEDCRED_SOAK_RESOURCES (default 200),
# FEDCRED_SOAK_IDENTITIES (20) and FEDCRED_SOAK_SEED (7) pass through.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
minutes=30
extra=()
for arg in "$@"; do
  case "$arg" in
    --update) extra+=(--update) ;;
    *[!0-9]* | "") echo "usage: $0 [MINUTES] [--update]" >&2; exit 2 ;;
    *) minutes=$arg ;;
  esac
done
FEDCRED_SOAK_COMMAND="hack/soak.sh $minutes" exec "$here/faults.sh" --no-faults --soak-minutes "$minutes" "${extra[@]}"
