#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd, and the node's kubelet and
# kube-scheduler, from the Go module proxy and caches them in $FEDCRED_CACHE/bin. Idempotent: a binary already built at the pinned version is kept.
#
# `go install k8s.io/kubernetes/cmd/...@vX` is refused because k8s.io/kubernetes replaces its
# staging modules (k8s.io/api, ...) with local directories and lists them as v0.0.0. A small
# wrapper module requires k8s.io/kubernetes and replaces each of those with its published v0.Y.Z.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

mkdir -p "$BIN_DIR" "$FEDCRED_CACHE/src"

stamp_ok() { [[ -x "$BIN_DIR/$1" && "$(cat "$BIN_DIR/$1.version" 2>/dev/null)" == "$2" ]]; }

# Follows the modules being fetched and the packages being compiled so a 15-minute
# cold build shows it is alive.
progress() {
  local what=$1 pid=$2 start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null || break
    log "  still building $what ($((SECONDS - start)) s; $(du -sh "$(go env GOCACHE)" 2>/dev/null | cut -f1) compiled so far)"
  done
}

run_with_progress() {
  local what=$1; shift
  "$@" &
  local pid=$!
  progress "$what" "$pid" &
  local ppid=$!
  local rc=0
  wait "$pid" || rc=$?
  kill "$ppid" 2>/dev/null || true
  wait "$ppid" 2>/dev/null || true
  return $rc
}

# Builds the given k8s.io/kubernetes commands at $KUBE_VERSION into $BIN_DIR (the node's
# kubelet and kube-scheduler come through here too, from hack/build-node.sh).
build_kube_commands() { # cmd...
  local missing=()
  for cmd in "$@"; do stamp_ok "$cmd" "$KUBE_VERSION" || missing+=("$cmd"); done
  if ((${#missing[@]} == 0)); then
    log "$* $KUBE_VERSION already built"
    return
  fi
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local staging="v0.${KUBE_VERSION#v1.}"
  local dir="$FEDCRED_CACHE/src/kubernetes-$KUBE_VERSION"
  mkdir -p "$dir"
  log "building ${missing[*]} $KUBE_VERSION from the Go module proxy (cold: about 3-5 min each on 2 cores)"
  go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >"$dir/download.json"
  local gomod
  gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' "$dir/download.json")
  {
    echo "module fedcred.io/controlplane"
    echo
    grep -E '^go [0-9.]+$' "$gomod"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    grep -E '^[[:space:]]+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" |
      awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } >"$dir/go.mod"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$dir"
    log "  resolving modules"
    go mod download k8s.io/kubernetes
    for cmd in "${missing[@]}"; do
      log "  compiling $cmd"
      run_with_progress "$cmd" go build -mod=mod -trimpath -ldflags "$ld" -o "$BIN_DIR/$cmd" "k8s.io/kubernetes/cmd/$cmd"
      echo "$KUBE_VERSION" >"$BIN_DIR/$cmd.version"
    done
  )
  built=1
  log "built ${missing[*]} $KUBE_VERSION"
}

build_kubernetes() { build_kube_commands kube-apiserver kube-controller-manager; }

build_etcd() {
  if stamp_ok etcd "$ETCD_VERSION"; then
    log "etcd $ETCD_VERSION already built"
    return
  fi
  local dir="$FEDCRED_CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  log "building etcd $ETCD_VERSION from the Go module proxy"
  go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >"$dir/download.json"
  local gomod
  gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' "$dir/download.json")
  {
    echo "module fedcred.io/etcd"
    echo
    grep -E '^go [0-9.]+$' "$gomod"
    echo
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo
    # The server module replaces its sibling modules with ../api, ../pkg, ...
    grep -E '^[[:space:]]*go\.etcd\.io/etcd/[a-z0-9/]+ => \.\./' "$gomod" |
      awk -v v="$ETCD_VERSION" '{print "replace " $1 " => " $1 " " v}'
  } >"$dir/go.mod"
  (
    cd "$dir"
    run_with_progress etcd go build -mod=mod -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3
  )
  echo "$ETCD_VERSION" >"$BIN_DIR/etcd.version"
  built=1
  log "built $("$BIN_DIR/etcd" --version | head -1)"
}

built=0
case "${1:-all}" in
  etcd) build_etcd ;;
  kubernetes) build_kubernetes ;;
  node) build_kube_commands kubelet kube-scheduler ;;
  # With the node's kubelet and kube-scheduler: one module download and one Go cache for all.
  all) build_etcd; build_kube_commands kube-apiserver kube-controller-manager kubelet kube-scheduler ;;
  *) die "usage: $0 [all|etcd|kubernetes|node]" ;;
esac
if ((built)); then drop_go_caches; fi
