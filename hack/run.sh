#!/usr/bin/env bash
# Runs fedcred's main job on a local default: a real local control plane, the
# FederatedCredential CRD, and the example resources of the two seed scenarios.
#   hack/run.sh [--once]    (--once: show the result and stop instead of waiting for Ctrl-C)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

"$here/install-tools.sh"
"$here/build-controlplane.sh"
log "building fedcred"
cargo build --locked --quiet

run_dir="${FEDCRED_RUN_DIR:-$FEDCRED_CACHE/run}"
"$here/controlplane.sh" down "$run_dir" >/dev/null 2>&1 || true
rm -rf "$run_dir"
trap '"$here/controlplane.sh" down "$run_dir"' EXIT
trap 'echo; exit 0' INT TERM
"$here/controlplane.sh" up "$run_dir"
source "$run_dir/env"

log "installing the CRD (printed by \`fedcred crd\`)"
target/debug/fedcred crd | kubectl apply --server-side --field-manager=fedcred -f -
kubectl wait --for=condition=Established --timeout=60s crd/federatedcredentials.fedcred.io >/dev/null
log "applying the examples"
kubectl apply -f examples/
echo
kubectl get federatedcredentials --all-namespaces
echo
kubectl explain federatedcredential.spec.aws | sed -n '1,20p'
echo
log "control plane running; try: KUBECONFIG=$run_dir/kubeconfig kubectl get fedcred -A"
if [[ "${1:-}" != "--once" ]]; then
  log "press Ctrl-C to stop"
  while sleep 3600; do :; done
fi
