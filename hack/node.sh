#!/usr/bin/env bash
# A real node beside the local control plane: containerd + runc + the bridge CNI plugin + kubelet,
# and kube-scheduler, so pods really run. Started by `hack/controlplane.sh up DIR --node`, which
# gives the API server and the controller manager what a node needs first.
#
#   hack/node.sh up DIR          start the node for the control plane in DIR (already up)
#   hack/node.sh down DIR        stop it and undo everything it did to the machine
#   hack/node.sh leftovers DIR   fail, listing them, if anything the node did is still there
#
# What the kubelet and the runtime do to the machine, and the teardown undoes: mounts (the
# kubelet bind-mounts its root dir; overlay roots, shm and Secret tmpfs volumes), cgroups
# (`kubepods` under every controller), network namespaces in /run/netns, the bridge, nft/iptables
# chains, net.ipv4.ip_forward, and /var/lib/kubelet/device-plugins (a fixed path). One node per
# machine: a second would share those fixed paths, so `up` refuses while another runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

LOCK=/run/fedcred-node.lock
BRIDGE="${FEDCRED_NODE_BRIDGE:-fedcred0}"
SUBNET_PREFIX="${FEDCRED_NODE_SUBNET_PREFIX:-10.244.77}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # what seconds command...
  local what=$1 limit=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || return 1
    sleep 0.2
  done
  log "$what ready after $((SECONDS - start)) s"
}

# The machine's state the node may change, one `kind item` per line, for `leftovers`.
snapshot() { # dir
  local dir=$1
  awk -v d="$dir" '$5 ~ "^" d || $5 ~ "^/var/lib/kubelet" || $5 ~ "^/run/netns" || $5 ~ "^/run/containerd" {print "mount " $5}' /proc/self/mountinfo
  local c
  for c in /sys/fs/cgroup/*/; do
    [[ -d "$c/kubepods" ]] && echo "cgroup ${c}kubepods"
    [[ -d "$c/k8s.io" ]] && echo "cgroup ${c}k8s.io"
  done
  ls /run/netns 2>/dev/null | sed 's/^/netns /' || true
  ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
  nft list tables 2>/dev/null | sed 's/^table /nft /' || true
  local ipt
  for ipt in iptables ip6tables; do
    "$ipt-save" 2>/dev/null | grep -E '^:KUBE|^-A .*KUBE' | sed "s/^/$ipt /" || true
  done
  echo "sysctl ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
  [[ -e /var/lib/kubelet ]] && echo "path /var/lib/kubelet"
  [[ -e /var/log/pods ]] && echo "path /var/log/pods"
  local pid cmd
  for pid in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$pid/cmdline" || true)
    [[ "$cmd" == *"$dir/node/"* ]] && echo "process ${pid#/proc/} ${cmd:0:80}"
  done
  return 0
}

up() {
  local dir=$1
  dir=$(cd "$dir" && pwd)
  [[ -f "$dir/env" && -f "$dir/with-node" ]] || die "no control plane started with --node in $dir (hack/controlplane.sh up $dir --node)"
  local b
  for b in kubelet kube-scheduler; do
    [[ -x "$BIN_DIR/$b" ]] || die "$b missing: run hack/build-node.sh first"
  done
  for b in containerd containerd-shim-runc-v2 ctr runc; do
    command -v "$b" >/dev/null || die "$b missing: run hack/install-tools.sh (Debian containerd and runc)"
  done
  for b in bridge host-local loopback; do
    [[ -x "/usr/lib/cni/$b" ]] || die "/usr/lib/cni/$b missing: run hack/install-tools.sh (Debian containernetworking-plugins)"
  done
  if [[ -e "$LOCK" ]]; then
    local other; other=$(cat "$LOCK")
    if [[ -f "$other/kubelet.pid" ]] && kill -0 "$(cat "$other/kubelet.pid")" 2>/dev/null; then
      die "another node runs on this machine (from $other; hack/node.sh down $other); two would share /var/lib/kubelet/device-plugins, the cgroups and the bridge"
    fi
    # A node whose run was killed before its teardown: undo what it left, then go on.
    log "cleaning up after a node that was not stopped ($other)"
    if [[ -d "$other/node" ]]; then down "$other"; fi
    rm -f "$LOCK"
  fi
  echo "$dir" >"$LOCK"
  local node="$dir/node"
  mkdir -p "$node"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,volume-plugins,images}
  snapshot "$dir" | grep -v '^process ' >"$node/before"
  cat /proc/sys/net/ipv4/ip_forward >"$node/ip_forward"

  # Images: written from the binaries the repository builds, reused while those are unchanged.
  local fedcred_bin="${FEDCRED_IMAGE_BINARY:-$here/../target/image/x86_64-unknown-linux-gnu/release/fedcred}"
  [[ -x "$fedcred_bin" ]] || "$here/build-image-binary.sh" >&2
  [[ -x "$fedcred_bin" ]] || die "$fedcred_bin missing: hack/build-image-binary.sh builds it"
  local images="$FEDCRED_CACHE/node-images"
  mkdir -p "$images"
  local pause="$images/pause"
  if [[ ! -x "$pause" || "$here/node/pause.c" -nt "$pause" ]]; then
    gcc -static -Os -s -Wall -Wextra -Werror -o "$pause" "$here/node/pause.c" || die "building the pause program failed (gcc with static glibc)"
  fi
  # Seed 003's report image takes Google's Python clients from the test virtualenv
  # (hack/install-tools.sh) and the program from tests/python.
  local site_packages report="$here/../tests/python/bigquery_report.py"
  site_packages=$(echo "$FEDCRED_CACHE"/venv/lib/python3*/site-packages)
  [[ -d "$site_packages" ]] || die "no virtualenv at $FEDCRED_CACHE/venv: run hack/install-tools.sh"
  local key
  key=$( (cat "$here/node/images.py" "$pause" "$fedcred_bin" "$BIN_DIR/alloydb-auth-proxy" /usr/bin/python3 "$report"; ls "$site_packages") | sha256sum | cut -c1-16)
  if [[ "$(cat "$images/key" 2>/dev/null)" != "$key" ]]; then
    log "writing the node's images (OCI archives)"
    python3 "$here/node/images.py" "$images" --pause "$pause" --fedcred "$fedcred_bin" \
      --alloydb-proxy "$BIN_DIR/alloydb-auth-proxy" --site-packages "$site_packages" --report "$report" >&2
    echo "$key" >"$images/key"
  fi
  local pause_ref
  pause_ref=$(awk '$1 == "pause" {print $2}' "$images/images")

  local sock="$node/containerd/containerd.sock"
  cat >"$node/containerd.toml" <<TOML
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # root here lacks CAP_SYS_RESOURCE: without this runc cannot lower oom_score_adj and every
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
TOML
  cat >"$node/cni/net.d/10-fedcred.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "fedcred",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node/cni/ipam",
        "ranges": [[{"subnet": "$SUBNET_PREFIX.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
JSON
  log "starting containerd $(containerd --version | awk '{print $3}') and runc $(runc --version | awk 'NR==1 {print $3}')"
  containerd --config "$node/containerd.toml" >>"$dir/logs/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  wait_for containerd 30 ctr --address "$sock" version || die "containerd did not start; see $dir/logs/containerd.log"
  local tar
  for tar in "$images"/*.tar; do
    ctr --address "$sock" -n k8s.io images import "$tar" >/dev/null ||
      die "importing $tar into containerd failed"
  done
  log "imported $(ctr --address "$sock" -n k8s.io images ls -q | grep -c fedcred-node) images"

  local kubelet_port healthz_port scheduler_port
  kubelet_port=$(free_port); healthz_port=$(free_port); scheduler_port=$(free_port)
  cat >"$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1, which kubelet 1.35 refuses unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
imageServiceEndpoint: unix://$sock
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $dir/pki/kubelet-serving.crt
tlsPrivateKeyFile: $dir/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
registerNode: true
# How often the kubelet re-reads mounted Secrets: a refreshed token reaches pods within a few
# seconds (a real node's default is one minute).
syncFrequency: 3s
nodeStatusUpdateFrequency: 10s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
enforceNodeAllocatable: ["pods"]
cgroupsPerQOS: true
podPidsLimit: -1
maxPods: 50
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
YAML
  cat >"$dir/kubelet.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$(awk '{print "https://127.0.0.1:" $2}' "$dir/ports")", certificate-authority: $dir/pki/ca.crt}
users:
- name: node
  user: {client-certificate: $dir/pki/node.crt, client-key: $dir/pki/node.key}
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
KC
  sed -e "s#$dir/pki/admin#$dir/pki/scheduler#g" "$dir/kubeconfig" >"$dir/scheduler.kubeconfig"

  log "starting kube-scheduler $(cat "$BIN_DIR/kube-scheduler.version")"
  kube-scheduler --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$scheduler_port" \
    --v=1 >>"$dir/logs/kube-scheduler.log" 2>&1 &
  echo $! >"$dir/kube-scheduler.pid"

  log "starting kubelet $(cat "$BIN_DIR/kubelet.version") as node localhost"
  # The kubelet refuses a loopback node IP; named `localhost`, with the API server preferring
  # the Hostname address, `kubectl logs/exec` reach it on 127.0.0.1.
  kubelet --config "$node/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" --hostname-override localhost \
    --v=2 >>"$dir/logs/kubelet.log" 2>&1 &
  echo $! >"$dir/kubelet.pid"
  export KUBECONFIG="$dir/kubeconfig"
  wait_for "node localhost Ready" 120 sh -c \
    "kubectl get node localhost -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" ||
    die "the node did not become Ready; see $dir/logs/kubelet.log"
  wait_for "kube-root-ca.crt" 60 kubectl -n default get configmap kube-root-ca.crt ||
    die "kube-controller-manager did not publish kube-root-ca.crt; see $dir/logs/kube-controller-manager.log"

  sed -i '/^export FEDCRED_TEST_NODE/d' "$dir/env"
  {
    echo "export FEDCRED_TEST_NODE=localhost"
    # Where pods reach the host: the bridge's address (the host's 127.0.0.1 is not theirs).
    echo "export FEDCRED_TEST_NODE_HOST_IP=$SUBNET_PREFIX.1"
    awk '{gsub(/-/, "_", $1); print "export FEDCRED_TEST_NODE_IMAGE_" toupper($1) "=" $2}' "$images/images"
  } >>"$dir/env"
  log "node localhost up: containerd $sock, kubelet 127.0.0.1:$kubelet_port"
}

stop_pid() { # dir name
  local f="$1/$2.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  local dir=$1
  [[ -d "$dir/node" ]] || return 0
  dir=$(cd "$dir" && pwd)
  local node="$dir/node" sock="$dir/node/containerd/containerd.sock"
  stop_pid "$dir" kubelet
  stop_pid "$dir" kube-scheduler
  # The containers' tasks, then the containers: their shims exit with them.
  if [[ -S "$sock" ]]; then
    local c
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -a -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      for _ in $(seq 50); do
        ctr --address "$sock" -n k8s.io tasks delete "$c" >/dev/null 2>&1 && break
        sleep 0.1
      done
    done
    for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$dir" containerd
  # Any process still holding the node's files (a shim whose task outlived the above).
  local pid
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [[ "$pid" == "$$" ]] && continue
    [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)" == *"$node/"* ]] && kill -9 "$pid" 2>/dev/null || true
  done
  sleep 0.2
  # Mounts, deepest first: the kubelet's volumes and its root dir's bind mount, overlay roots, shm.
  local m
  for m in $(awk -v d="$node/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
  local before="$node/before"
  # Network namespaces, links, nft tables and iptables chains that were not there before.
  for m in $(ls /run/netns 2>/dev/null); do
    grep -qxF "netns $m" "$before" || ip netns delete "$m" 2>/dev/null || umount "/run/netns/$m" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  local t
  while read -r t; do
    [[ -n "$t" ]] || continue
    grep -qxF "nft $t" "$before" || nft delete table $t 2>/dev/null || true
  done < <(nft list tables 2>/dev/null | sed 's/^table //')
  # The kubelet's KUBE-* chains (its canaries), in tables that were there before.
  local ipt table
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      "$ipt" -t "$table" -S 2>/dev/null | awk '/^-A .*KUBE/ {sub(/^-A/, "-D"); print}' |
        while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
      "$ipt" -t "$table" -S 2>/dev/null | awk '/^-N KUBE/ {print $2}' |
        while read -r chain; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
  # Cgroups: the kubelet's kubepods tree and containerd's k8s.io, deepest first.
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
    [[ -d "$c" ]] || continue
    grep -qxF "cgroup $c" "$before" && continue
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  [[ -f "$node/ip_forward" ]] && cat "$node/ip_forward" >/proc/sys/net/ipv4/ip_forward
  grep -qxF "path /var/lib/kubelet" "$before" || rm -rf /var/lib/kubelet
  grep -qxF "path /var/log/pods" "$before" || rm -rf /var/log/pods
  rm -rf "$node/containerd" "$node/kubelet"
  [[ "$(cat "$LOCK" 2>/dev/null)" == "$dir" ]] && rm -f "$LOCK"
  log "node in $dir stopped"
}

leftovers() {
  local dir=$1
  dir=$(cd "$dir" && pwd)
  local before="$dir/node/before"
  [[ -f "$before" ]] || die "no node was started in $dir"
  local now extra
  now=$(snapshot "$dir")
  extra=$(grep -vxF -f "$before" <<<"$now" || true)
  [[ -e "$LOCK" ]] && extra+=$'\n'"path $LOCK"
  extra=$(sed '/^$/d' <<<"$extra")
  if [[ -n "$extra" ]]; then
    log "the node left these behind:"
    printf '%s\n' "$extra" >&2
    return 1
  fi
  log "no leftovers: mounts, cgroups, netns, links, nft, iptables, ip_forward and /var/lib/kubelet are as before the node"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up DIR}" ;;
  down) down "${2:?usage: $0 down DIR}" ;;
  leftovers) leftovers "${2:?usage: $0 leftovers DIR}" ;;
  *) die "usage: $0 up|down|leftovers DIR" ;;
esac
