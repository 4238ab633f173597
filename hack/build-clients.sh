#!/usr/bin/env bash
# Builds the client programs of tests/clients.rs, Google's own libraries used as their docs
# show, from their registries, cached outside the repo and rebuilt only when their sources
# change:
#   - tests/go/clients (x/oauth2/google ADC, cloud.google.com/go/compute/metadata,
#     google.golang.org/api/idtoken) from the Go module proxy → $BIN_DIR/fedcred-go-clients;
#   - tests/node/clients (google-auth-library) from the npm registry, `npm ci` of its lock file
#     → $FEDCRED_CACHE/clients/node;
#   - tests/java/clients (google-auth-library-oauth2-http) from Maven Central, its jars
#     → $FEDCRED_CACHE/clients/java/lib (the test runs Clients.java with java's source launcher).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
tests="$(cd "$here/../tests" && pwd)"
mkdir -p "$BIN_DIR"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Node.js with npm, and a JDK with Maven, from Debian when missing.
need_debs=()
command -v npm >/dev/null || need_debs+=(nodejs npm)
command -v mvn >/dev/null || need_debs+=(maven)
command -v javac >/dev/null || need_debs+=(default-jdk-headless)
if ((${#need_debs[@]})); then
  log "installing Debian packages: ${need_debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
fi

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

# Java.
src="$tests/java/clients"
dest="$FEDCRED_CACHE/clients/java"
stamp=$(stamp_of "$src/pom.xml")
if [[ -d "$dest/lib" && "$(cat "$dest/.version" 2>/dev/null)" == "$stamp" ]]; then
  log "Java client libraries already fetched"
else
  command -v mvn >/dev/null || die "mvn is not on PATH: install Maven and a JDK 17 or later (Debian: maven default-jdk-headless)"
  log "fetching the Java client libraries from Maven Central"
  rm -rf "$dest" && mkdir -p "$dest"
  mvn -B -q -f "$src/pom.xml" -Dmaven.repo.local="$FEDCRED_CACHE/m2" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dest/lib" >"$dest/mvn.log" 2>&1 \
    || { cat "$dest/mvn.log" >&2; die "fetching the dependencies of tests/java/clients failed"; }
  echo "$stamp" >"$dest/.version"
  log "Java client libraries ready: $dest/lib"
fi
