#!/usr/bin/env bash
# Builds the fedcred binary exactly as the Dockerfile's build stage does (same build context
# after .dockerignore, same profile settings, flags and target), checks that it runs as the
# image runs it, and fails when the image would exceed the size budget. Builds fedcred-agent
# (the agent alone, what hosts install: docs/agent.md) with the same settings beside it.
#   hack/build-image-binary.sh
# Environment: IMAGE_BUDGET_BYTES (default 25000000), BASE_IMAGE_BYTES (see below).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"

target=x86_64-unknown-linux-gnu
budget="${IMAGE_BUDGET_BYTES:-25000000}"
# gcr.io/distroless/static-debian12:nonroot is about 2 MB uncompressed (ca-certificates,
# tzdata, /etc/passwd, base-files); 2.5 MB leaves room for its updates.
base="${BASE_IMAGE_BYTES:-2500000}"

# The same settings as the Dockerfile's ENV.
export CARGO_PROFILE_RELEASE_LTO=fat
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_OPT_LEVEL=s
export CARGO_PROFILE_RELEASE_PACKAGE_AWS_LC_SYS_OPT_LEVEL=3
export RUSTFLAGS="-C target-feature=+crt-static"
# Its own target directory: these flags would otherwise invalidate the development build.
export CARGO_TARGET_DIR="$repo/target/image"

# The build context as Docker sees it: the repository without what .dockerignore excludes. It
# keeps one path (tar keeps modification times), so unchanged sources are not rebuilt.
context="$CARGO_TARGET_DIR/context"
rm -rf "$context"
mkdir -p "$context"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-image.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
excludes=()
while read -r pattern; do
  [[ -z "$pattern" || "$pattern" == \#* ]] && continue
  pattern="${pattern%/}"
  excludes+=("--exclude=./${pattern#\*\*/}")
done <"$repo/.dockerignore"
tar -C "$repo" "${excludes[@]}" -cf - . | tar -C "$context" -xf -

log "building fedcred for $target as the Dockerfile does, and fedcred-agent (the agent alone, for hosts) the same way"
(cd "$context" && cargo build --locked --release --target "$target" --bin fedcred --bin fedcred-agent)
binary="$CARGO_TARGET_DIR/$target/release/fedcred"
agent="$CARGO_TARGET_DIR/$target/release/fedcred-agent"

log "checking the binary"
if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
  die "$binary is dynamically linked; distroless/static has no libc to load it"
fi
"$binary" --help >/dev/null || die "fedcred --help failed"
if readelf -l "$agent" | grep -q 'Requesting program interpreter'; then
  die "$agent is dynamically linked; hosts and distroless/static have no matching libc to promise"
fi
"$agent" --help >/dev/null || die "fedcred-agent --help failed"
"$binary" crd | cmp -s - "$repo/crds/fedcred.io_federatedcredentials.yaml" ||
  die "fedcred crd differs from crds/"
# The injected sidecar's startup probe: must fail while nothing listens.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if "$binary" metadata-server --check --listen "127.0.0.1:$port" 2>/dev/null; then
  die "metadata-server --check succeeded with nothing listening on 127.0.0.1:$port"
fi
# Name lookups without NSS modules: a static binary resolves through the files and dns
# lookups built into glibc, never by loading libnss_*.so (which the image does not have).
if command -v strace >/dev/null; then
  kubeconfig="$scratch/lookup.kubeconfig"
  cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://localhost:$port"}}]
users: [{name: u, user: {token: not-a-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
KUBECONFIG
  manifest='{"apiVersion":"fedcred.io/v1alpha1","kind":"FederatedCredential","metadata":{"name":"x","namespace":"x"},"spec":{"aws":{"serviceAccount":{"name":"x"},"region":"us-east-1"},"google":{"audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"}}}'
  echo "$manifest" | KUBECONFIG="$kubeconfig" AWS_EC2_METADATA_DISABLED=true \
    strace -f -e trace=openat,connect -o "$scratch/strace" "$binary" exchange -f - >/dev/null 2>&1 || true
  if grep -q 'libnss_' "$scratch/strace"; then
    die "the binary loads NSS modules for name lookups: $(grep libnss_ "$scratch/strace" | head -1)"
  fi
  # Resolved: the client dialled localhost's address (and was refused).
  grep -q "connect(.*htons($port).*127\.0\.0\.1" "$scratch/strace" ||
    die "localhost did not resolve without NSS modules"
fi

size=$(stat -c %s "$binary")
total=$((size + base))
log "binary: $size bytes ($((size / 1000000)) MB); image estimate with a $base-byte base: $total bytes (budget $budget)"
if ((total > budget)); then
  die "the image would be $total bytes, over the $budget-byte budget"
fi
echo "fedcred binary $size bytes; image about $total bytes (base $base); budget $budget"
echo "fedcred-agent binary $(stat -c %s "$agent") bytes: $agent"
