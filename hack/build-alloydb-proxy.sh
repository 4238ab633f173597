#!/usr/bin/env bash
# Builds the real AlloyDB Auth Proxy (github.com/GoogleCloudPlatform/alloydb-auth-proxy) from
# the Go module proxy and caches it in $FEDCRED_CACHE/bin. Idempotent: a binary already built
# at the pinned version is kept. The end-to-end AlloyDB test runs it as the injected sidecar.
#
#   ALLOYDB_PROXY_VERSION=v1.17.1 hack/build-alloydb-proxy.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

go_install_cached alloydb-auth-proxy github.com/GoogleCloudPlatform/alloydb-auth-proxy \
  "$ALLOYDB_PROXY_VERSION" ALLOYDB_PROXY_VERSION
