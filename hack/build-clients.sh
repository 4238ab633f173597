#!/usr/bin/env bash
# Builds the client programs of tests/clients.rs, Google's own libraries used as their docs
# show, from their registries, cached outside the repo and rebuilt only when their sources
# change:
#   - tests/go/clients (x/oauth2/google ADC, cloud.google.com/go/compute/metadata,
#     google.golang.org/api/idtoken) from the Go module proxy → $BIN_DIR/fedcred-go-clients;
#   - tests/node/clients (google-auth-library) from the npm registry, `npm ci` of its lock file
#     → $FEDCRED_CACHE/clients/node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
tests="$(cd "$here/../tests" && pwd)"
mkdir -p "$BIN_DIR"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Go.
src="$tests/go/clients"
binary="$BIN_DIR/fedcred-go-clients"
stamp=$(stamp_of "$src/go.mod" "$src/go.sum" "$src"/*.go)
if [[ -x "$binary" && "$(cat "$binary.version" 2>/dev/null)" == "$stamp" ]]; then
  log "Go client programs already built"
else
  command -v go >/dev/null || die "go is not on PATH: install Go (1.26 or later) to build tests/go/clients"
  log "building the Go client programs from the Go module proxy (cold: about 1 min)"
  start=$SECONDS
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -trimpath -o "$binary.tmp" .) \
    || die "building tests/go/clients failed"
  mv "$binary.tmp" "$binary"
  echo "$stamp" >"$binary.version"
  log "Go client programs built in $((SECONDS - start)) s: $binary"
  drop_go_caches
fi

# Node.
src="$tests/node/clients"
dest="$FEDCRED_CACHE/clients/node"
stamp=$(stamp_of "$src/package.json" "$src/package-lock.json" "$src/index.js")
if [[ -d "$dest/node_modules" && "$(cat "$dest/.version" 2>/dev/null)" == "$stamp" ]]; then
  log "Node client program already installed"
else
  command -v npm >/dev/null || die "npm is not on PATH: install Node.js 18 or later (Debian: nodejs npm)"
  log "installing the Node client program's packages from the npm registry"
  rm -rf "$dest" && mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$src/index.js" "$dest/"
  (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || die "npm ci of tests/node/clients failed"
  echo "$stamp" >"$dest/.version"
  log "Node client program ready: $dest"
fi
