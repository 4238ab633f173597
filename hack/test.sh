#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the tools, builds (or reuses) the real
# control plane and node, starts them, runs every test against them, stops them and checks the
# node left nothing behind on the machine.
#   hack/test.sh [cargo test arguments...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

"$here/install-tools.sh"
"$here/build-controlplane.sh"
"$here/build-alloydb-proxy.sh"
"$here/build-cloudsql-proxy.sh"
"$here/build-node.sh"
"$here/build-clients.sh"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-test.XXXXXX")
cleanup() {
  local rc=$?
  if ((rc != 0)) && [[ -f "$run_dir/logs/kube-apiserver.log" ]]; then
    log "last lines of the kube-apiserver log:"
    tail -n 20 "$run_dir/logs/kube-apiserver.log" >&2 || true
  fi
  "$here/controlplane.sh" down "$run_dir" || true
  if [[ -f "$run_dir/node/before" ]] && ! "$here/node.sh" leftovers "$run_dir"; then
    rc=1
  fi
  rm -rf "$run_dir"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$here/controlplane.sh" up "$run_dir" --node
source "$run_dir/env"
export FEDCRED_TEST_VENV="$FEDCRED_CACHE/venv"
export FEDCRED_ALLOYDB_PROXY="$BIN_DIR/alloydb-auth-proxy" FEDCRED_CLOUDSQL_PROXY="$BIN_DIR/cloud-sql-proxy"
export FEDCRED_GO_CLIENTS="$BIN_DIR/fedcred-go-clients" FEDCRED_NODE_CLIENTS="$FEDCRED_CACHE/clients/node" \
  FEDCRED_JAVA_CLIENTS="$FEDCRED_CACHE/clients/java"
# Tests bring their own AWS peers; never let the SDK probe a real instance metadata service.
export AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-1
# What the secrecy scan reads: every token the doubles issue, and the evidence tests leave
# (controller logs, events, statuses, metrics).
export FEDCRED_ISSUED_TOKENS="$run_dir/issued-tokens" FEDCRED_EVIDENCE_DIR="$run_dir/evidence"

log "running cargo test"
rc=0
cargo test --locked --workspace "$@" || rc=$?
log "scanning the run for issued tokens"
"$here/secrecy-scan.sh" --cluster "$FEDCRED_ISSUED_TOKENS" "$FEDCRED_EVIDENCE_DIR" "$run_dir/logs" || rc=1
exit $rc
