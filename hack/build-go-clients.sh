#!/usr/bin/env bash
# Builds tests/go/clients (Google's Go libraries used as their docs show: x/oauth2/google ADC,
# cloud.google.com/go/compute/metadata, google.golang.org/api/idtoken) from the Go module
# proxy into $FEDCRED_CACHE/bin/fedcred-go-clients, for tests/clients.rs. Idempotent: rebuilt
# only when the program or its go.mod/go.sum change.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

src="$here/../tests/go/clients"
binary="$BIN_DIR/fedcred-go-clients"
mkdir -p "$BIN_DIR"
stamp=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -d' ' -f1)
if [[ -x "$binary" && "$(cat "$binary.version" 2>/dev/null)" == "$stamp" ]]; then
  log "Go client programs already built"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH: install Go (1.26 or later) to build tests/go/clients"
log "building the Go client programs from the Go module proxy (cold: about 1 min)"
start=$SECONDS
(cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -trimpath -o "$binary.tmp" .) \
  || die "building tests/go/clients failed"
mv "$binary.tmp" "$binary"
echo "$stamp" >"$binary.version"
log "Go client programs built in $((SECONDS - start)) s: $binary"
drop_go_caches
