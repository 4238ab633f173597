# Shared settings for the scripts in hack/. Sourced, never run.
# Everything built or downloaded for tests lives in a cache outside the repository so a
# clean checkout reuses it and a fresh machine rebuilds it unattended.

FEDCRED_CACHE="${FEDCRED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedcred}"
KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# The newest alloydb-auth-proxy that builds with Go 1.26 (v1.17.2 needs Go 1.27; the module
# proxy has no v1.13.x).
ALLOYDB_PROXY_VERSION="${ALLOYDB_PROXY_VERSION:-v1.17.1}"
BIN_DIR="$FEDCRED_CACHE/bin"
export PATH="$BIN_DIR:$PATH"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
