#!/usr/bin/env bash
# Controller scale benchmark: N FederatedCredentials over M identities on a real local control
# plane, against a floor loop doing the same writes in the same run, in interleaved rounds.
#   bench/scale.sh            (N = 1000 and 5000 over 50 identities, one round)
#   FEDCRED_SCALE_SIZES="1000:50 50000:500" FEDCRED_SCALE_ROUNDS=3 bench/scale.sh
#     (sizes as COUNT:IDENTITIES; each size in 3 rounds, the floor first in rounds 0 and 2 and
#      last in round 1; the median and range of controller / floor at the end)
#   FEDCRED_SCALE_COUNTS=200 FEDCRED_SCALE_IDENTITIES=20 bench/scale.sh
#     (the older form: every count over the same identities)
#   FEDCRED_SCALE_BASELINE=/path/to/older/fedcred bench/scale.sh
#     (that binary runs in every round too, in alternating order with this one)
# Other knobs: FEDCRED_SCALE_CONCURRENCY (controller --concurrency and the floor's, default 32),
# FEDCRED_SCALE_POPULATE_CONCURRENCY (creates in flight per namespace, default 32),
# FEDCRED_SCALE_NAMESPACE_SHARE (controller --namespace-share), FEDCRED_SCALE_RESTART=0 (no
# restart check), FEDCRED_SCALE_RESTART_SETTLE (seconds watched after the restarted controller
# has looked at every resource, default 10), FEDCRED_SCALE_FIRST_ROUND (the first round's number;
# 1 starts with the floor last).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../hack/lib.sh"
cd "$here/.."

"$here/../hack/install-tools.sh"
"$here/../hack/build-controlplane.sh"
log "building fedcred (release)"
cargo build --release --locked --quiet --bin fedcred
export FEDCRED_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/fedcred"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-scale.XXXXXX")
trap '"$here/../hack/controlplane.sh" down "$run_dir"; rm -rf "$run_dir"' EXIT
"$here/../hack/controlplane.sh" up "$run_dir"
source "$run_dir/env"
# The API server's and etcd's pids, for their CPU time and memory over each phase.
export FEDCRED_SCALE_CONTROLPLANE="$run_dir"
log "installing the CRD"
"$FEDCRED_BIN" crd | kubectl apply --server-side -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/federatedcredentials.fedcred.io >/dev/null
export FEDCRED_TEST_VENV="$FEDCRED_CACHE/venv"
log "running the scale benchmark"
cargo bench --locked --bench scale
