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

# The Go builds here (the control plane, the AlloyDB and Cloud SQL proxies, baselines) keep
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

# go_install_cached NAME MODULE VERSION VERSION_VARIABLE: builds the program NAME of Go module
# MODULE at VERSION from the Go module proxy into $BIN_DIR/NAME, with progress, unless that
# version is built already; refuses a version whose go.mod needs a newer Go than this one (the
# go command would fetch a whole toolchain) and says to pin another with VERSION_VARIABLE.
go_install_cached() {
  local name=$1 module=$2 version=$3 variable=$4
  local binary="$BIN_DIR/$name"
  mkdir -p "$BIN_DIR"
  if [[ -x "$binary" && "$(cat "$binary.version" 2>/dev/null)" == "$version" ]]; then
    log "$name $version already built"
    return 0
  fi
  command -v go >/dev/null || die "go is not on PATH: install Go (1.25 or later) to build $name"
  log "$name $version: reading its go.mod from the Go module proxy"
  local gomod wanted have
  gomod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -n "$gomod" && -f "$gomod" ]] || die "the Go module proxy has no $module@$version (see: go list -m -versions $module)"
  wanted=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  have=$(go env GOVERSION); have=${have#go}
  if [[ -n "$wanted" && "$(printf '%s\n%s\n' "$wanted" "$have" | sort -V | tail -n1)" != "$have" ]]; then
    die "$name $version needs Go $wanted, this is Go $have: pin an older $variable (go list -m -versions $module)"
  fi
  log "building $name $version from the Go module proxy (cold: a minute or two on 2 cores)"
  local tmp start pid
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-$name.XXXXXX")
  start=$SECONDS
  GOTOOLCHAIN=local GOBIN="$tmp" go install "$module@$version" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null && log "  still building $name ($((SECONDS - start)) s)"
  done
  wait "$pid" || { rm -rf "$tmp"; die "building $name $version failed"; }
  "$tmp/$name" --version >/dev/null || { rm -rf "$tmp"; die "the built $name does not run"; }
  mv "$tmp/$name" "$binary"
  rm -rf "$tmp"
  echo "$version" >"$binary.version"
  log "$name $version built in $((SECONDS - start)) s: $binary"
  drop_go_caches
}
