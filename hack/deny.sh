#!/usr/bin/env bash
# cargo-deny over the workspace's dependency tree: licenses, banned crates and sources (deny.toml).
#   hack/deny.sh
# Installs cargo-deny into the cache when missing. These checks need only the package registry;
# `cargo deny check advisories` needs the RustSec advisory database from GitHub and is not run
# here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"
deny_root="$FEDCRED_CACHE/cargo-deny"
cargo_deny="$deny_root/bin/cargo-deny"
if [[ ! -x "$cargo_deny" ]] || ! "$cargo_deny" --version | grep -qF "$CARGO_DENY_VERSION"; then
  log "installing cargo-deny $CARGO_DENY_VERSION into $deny_root (a few minutes, once)"
  cargo install --locked --root "$deny_root" --version "$CARGO_DENY_VERSION" cargo-deny
fi
log "cargo deny: licenses, bans, sources"
"$cargo_deny" --log-level warn check licenses bans sources ||
  die "cargo deny refused the dependency tree (above: the crate, the rule in deny.toml, and how it got in)"
log "cargo deny: licenses, bans and sources pass"
