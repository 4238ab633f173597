#!/usr/bin/env bash
# Builds the real Cloud SQL Auth Proxy (github.com/GoogleCloudPlatform/cloud-sql-proxy/v2) from
# the Go module proxy and caches it in $FEDCRED_CACHE/bin. Idempotent: a binary already built
# at the pinned version is kept. tests/proxy_settings.rs runs it as the injected sidecar.
#
#   CLOUDSQL_PROXY_VERSION=v2.27.0 hack/build-cloudsql-proxy.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

go_install_cached cloud-sql-proxy github.com/GoogleCloudPlatform/cloud-sql-proxy/v2 \
  "$CLOUDSQL_PROXY_VERSION" CLOUDSQL_PROXY_VERSION
