#!/usr/bin/env bash
# Outage economy: N FederatedCredentials on a few identities through a Google STS outage that
# begins when their tokens fall due, on a real local control plane.
#   bench/outage.sh            (500 resources, 1 identity, a 10-minute outage)
#   FEDCRED_OUTAGE_RESOURCES=50,500 FEDCRED_OUTAGE_SECONDS=240 bench/outage.sh
#     (each count in a namespace of its own, one after the other)
#   FEDCRED_OUTAGE_IDENTITIES=1,5 bench/outage.sh
#     (every count on each number of identities)
# Per minute of the outage: the STS and IAM Credentials calls the Google doubles saw; then the
# expired tokens served, the time to recover after STS is mended, the controller's CPU and RSS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../hack/lib.sh"
cd "$here/.."

"$here/../hack/install-tools.sh"
"$here/../hack/build-controlplane.sh"
log "building fedcred (release)"
cargo build --release --locked --quiet --bin fedcred
export FEDCRED_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/fedcred"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-outage.XXXXXX")
trap '"$here/../hack/controlplane.sh" down "$run_dir"; rm -rf "$run_dir"' EXIT
"$here/../hack/controlplane.sh" up "$run_dir"
source "$run_dir/env"
log "installing the CRD"
"$FEDCRED_BIN" crd | kubectl apply --server-side -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/federatedcredentials.fedcred.io >/dev/null
export FEDCRED_TEST_VENV="$FEDCRED_CACHE/venv"
log "running the outage benchmark"
cargo bench --locked --bench outage
