#!/usr/bin/env bash
# Builds the real Cloud SQL Auth Proxy (github.com/GoogleCloudPlatform/cloud-sql-proxy/v2) from
# the Go module proxy and caches it in $FEDCRED_CACHE/bin. Idempotent: a binary already built
# at the pinned version is kept. tests/proxy_settings.rs runs it as the injected sidecar.
#
#   CLOUDSQL_PROXY_VERSION=v2.27.0 hack/build-cloudsql-proxy.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

module=github.com/GoogleCloudPlatform/cloud-sql-proxy/v2
binary="$BIN_DIR/cloud-sql-proxy"
mkdir -p "$BIN_DIR"

if [[ -x "$binary" && "$(cat "$binary.version" 2>/dev/null)" == "$CLOUDSQL_PROXY_VERSION" ]]; then
  log "cloud-sql-proxy $CLOUDSQL_PROXY_VERSION already built"
  exit 0
fi
command -v go >/dev/null || die "go is not on PATH: install Go (1.25 or later) to build cloud-sql-proxy"

# A version whose go.mod asks for a newer Go than this one would make the go command fetch a
# whole toolchain; refuse instead and say which version to pin.
log "cloud-sql-proxy $CLOUDSQL_PROXY_VERSION: reading its go.mod from the Go module proxy"
gomod=$(go mod download -json "$module@$CLOUDSQL_PROXY_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -n "$gomod" && -f "$gomod" ]] || die "the Go module proxy has no $module@$CLOUDSQL_PROXY_VERSION (see: go list -m -versions $module)"
wanted=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
have=$(go env GOVERSION); have=${have#go}
if [[ -n "$wanted" && "$(printf '%s\n%s\n' "$wanted" "$have" | sort -V | tail -n1)" != "$have" ]]; then
  die "cloud-sql-proxy $CLOUDSQL_PROXY_VERSION needs Go $wanted, this is Go $have: pin an older CLOUDSQL_PROXY_VERSION (go list -m -versions $module)"
fi

log "building cloud-sql-proxy $CLOUDSQL_PROXY_VERSION from the Go module proxy (cold: about 2 min on 2 cores)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-cloudsql-proxy.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
GOTOOLCHAIN=local GOBIN="$tmp" go install "$module@$CLOUDSQL_PROXY_VERSION" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 15
  kill -0 "$pid" 2>/dev/null && log "  still building cloud-sql-proxy ($((SECONDS - start)) s)"
done
wait "$pid" || die "building cloud-sql-proxy $CLOUDSQL_PROXY_VERSION failed"
"$tmp/cloud-sql-proxy" --version >/dev/null || die "the built cloud-sql-proxy does not run"
mv "$tmp/cloud-sql-proxy" "$binary"
echo "$CLOUDSQL_PROXY_VERSION" >"$binary.version"
log "cloud-sql-proxy $CLOUDSQL_PROXY_VERSION built in $((SECONDS - start)) s: $binary"
drop_go_caches
