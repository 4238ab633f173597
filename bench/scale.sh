#!/usr/bin/env bash
# Controller scale benchmark: N FederatedCredentials over 50 identities on a real local
# control plane, against a floor loop doing the same writes in the same run.
#   bench/scale.sh            (N = 1000 and 5000)
#   FEDCRED_SCALE_COUNTS=200 bench/scale.sh
#   FEDCRED_SCALE_ROUNDS=3 FEDCRED_SCALE_BASELINE=/path/to/older/fedcred bench/scale.sh
#     (each size in 3 rounds, the baseline binary beside this one in alternating order;
#      the median and range of each ratio at the end)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../hack/lib.sh"
cd "$here/.."

"$here/../hack/install-tools.sh"
"$here/../hack/build-controlplane.sh"
log "building fedcred (release)"
cargo build --release --locked --quiet --bin fedcred
export FEDCRED_BIN="$PWD/target/release/fedcred"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-scale.XXXXXX")
trap '"$here/../hack/controlplane.sh" down "$run_dir"; rm -rf "$run_dir"' EXIT
"$here/../hack/controlplane.sh" up "$run_dir"
source "$run_dir/env"
log "installing the CRD"
"$FEDCRED_BIN" crd | kubectl apply --server-side -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/federatedcredentials.fedcred.io >/dev/null
export FEDCRED_TEST_VENV="$FEDCRED_CACHE/venv"
log "running the scale benchmark"
cargo bench --locked --bench scale
