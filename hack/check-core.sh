#!/usr/bin/env bash
# The core crate stays pure: no Kubernetes client, HTTP stack, AWS SDK or async runtime may enter
# its normal (non-dev) dependencies. Adapters in the fedcred crate depend on the core, never the
# reverse. Fails naming the crate that came in and the path that brought it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
forbidden='^(kube-client|kube-runtime|reqwest|hyper|hyper-util|h2|tokio|tokio-rustls|rustls|aws-[a-z0-9-]+|tower|axum|mio)$'
tree=$(cargo tree --locked -p fedcred-core -e normal --prefix none --format '{p}' | sed 's/ .*//' | sort -u)
bad=$(grep -E "$forbidden" <<<"$tree" || true)
if [[ -n "$bad" ]]; then
  echo "fedcred-core must not depend on: $(tr '\n' ' ' <<<"$bad")" >&2
  for crate in $bad; do
    echo "-- how $crate comes in (cargo tree -p fedcred-core -e normal -i $crate):" >&2
    cargo tree --locked -p fedcred-core -e normal -i "$crate" >&2 || true
  done
  echo "move the code that needs it into the fedcred crate (an adapter), and keep the decision in core" >&2
  exit 1
fi
echo "fedcred-core: $(wc -l <<<"$tree") crates, none of them a client, server, SDK or runtime"
