# Shared settings for the scripts in hack/. Sourced, never run.
# Everything built or downloaded for tests lives in a cache outside the repository so a
# clean checkout reuses it and a fresh machine rebuilds it unattended.

FEDCRED_CACHE="${FEDCRED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedcred}"
KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# The newest alloydb-auth-proxy that builds with Go 1.26 (v1.17.2 needs Go 1.27; the module
# proxy has no v1.13.x).
ALLOYDB_PROXY_VERSION="${ALLOYDB_PROXY_VERSION:-v1.17.1}"
# The newest Cloud SQL Auth Proxy the Go module proxy serves whole (v2.28.0 needs a package it
# does not serve).
CLOUDSQL_PROXY_VERSION="${CLOUDSQL_PROXY_VERSION:-v2.27.0}"
BIN_DIR="$FEDCRED_CACHE/bin"
export PATH="$BIN_DIR:$PATH"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Go builds here (the control plane, the AlloyDB Auth Proxy, benchmark baselines) keep
# their module and build caches in the cache, apart from the user's own. Together they take
# about 5 GB after a cold build, and nothing needs them once the binaries are built.
export GOMODCACHE="${FEDCRED_GOMODCACHE:-$FEDCRED_CACHE/go/mod}"
export GOCACHE="${FEDCRED_GOCACHE:-$FEDCRED_CACHE/go/build}"

# Drops the Go caches above after a successful build (FEDCRED_KEEP_GO_CACHES=1 keeps them).
drop_go_caches() {
  [[ "${FEDCRED_KEEP_GO_CACHES:-0}" == 1 ]] && return 0
  local size
  size=$(du -sh "$GOCACHE" "$GOMODCACHE" 2>/dev/null | awk '{print $1}' | paste -sd+ -)
  go clean -cache -modcache 2>/dev/null || true
  rm -rf "$GOCACHE" "$GOMODCACHE" 2>/dev/null || true
  log "dropped the Go build and module caches (${size:-0}); FEDCRED_KEEP_GO_CACHES=1 keeps them"
}
