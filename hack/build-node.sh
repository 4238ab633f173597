#!/usr/bin/env bash
# Builds what the node (hack/node.sh) runs that Debian does not ship: kubelet and kube-scheduler
# at $KUBE_VERSION from the Go module proxy, as hack/build-controlplane.sh builds kube-apiserver,
# cached in $FEDCRED_CACHE/bin. containerd, runc and the CNI plugins come from Debian
# (hack/install-tools.sh); the images are written when the node starts (hack/node/images.py).
# Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/build-controlplane.sh" node
