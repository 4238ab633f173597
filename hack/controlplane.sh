#!/usr/bin/env bash
# A real, local Kubernetes control plane for tests and the demo: etcd, kube-apiserver (RBAC,
# ServiceAccount token issuer, so TokenRequest works) and kube-controller-manager (garbage
# collector, namespace deletion, default ServiceAccounts), all on 127.0.0.1.
#
#   hack/controlplane.sh up DIR [--node]
#                                   start, write DIR/kubeconfig and DIR/env, return when ready;
#                                   with --node also a real node (hack/node.sh): kubelet,
#                                   containerd, runc, CNI and kube-scheduler, so pods run
#   hack/controlplane.sh down DIR   stop everything started in DIR (the node first)
#   hack/controlplane.sh restart-apiserver DIR [DOWN_SECONDS]
#                                   SIGKILL kube-apiserver, wait, start it again as before
#
# DIR/env holds shell exports (KUBECONFIG, FEDCRED_TEST_*) for whatever runs against it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pki() {
  local d=$1
  mkdir -p "$d"
  ( cd "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -keyout ca.key -out ca.crt -subj "/CN=fedcred-test-ca" 2>/dev/null
    leaf() { # name subject [sans]: a v3 certificate (rustls refuses v1) for a server or a client
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [[ -n "${3:-}" ]]; then
          echo "extendedKeyUsage=serverAuth"
          echo "subjectAltName=$3"
        else
          echo "extendedKeyUsage=clientAuth"
        fi
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    # The node's pods reach the API server at the bridge's host address (hack/node.sh).
    leaf apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1,IP:${FEDCRED_NODE_SUBNET_PREFIX:-10.244.77}.1"
    leaf admin "/O=system:masters/CN=fedcred-test-admin"
    # The controller manager runs all its controllers under one identity here (no per-controller
    # ServiceAccounts), so it needs the permissions they would have together.
    leaf controller-manager "/O=system:masters/CN=system:kube-controller-manager"
    # For the node (hack/node.sh): the kubelet's client and serving certificates (the node is
    # named localhost), the API server's client certificate for the kubelet, the scheduler's.
    leaf node "/O=system:nodes/CN=system:node:localhost"
    leaf kubelet-serving "/CN=localhost" "DNS:localhost,IP:127.0.0.1"
    leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    leaf scheduler "/CN=system:kube-scheduler"
    # ServiceAccount tokens are signed with RSA, which every client of TokenRequest verifies.
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

kubeconfig() { # file server cert key
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $2
    certificate-authority: $(dirname "$1")/pki/ca.crt
users:
- name: user
  user:
    client-certificate: $3
    client-key: $4
contexts:
- name: local
  context: {cluster: local, user: user}
current-context: local
KC
}

wait_for() { # what seconds command...
  local what=$1 limit=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || return 1
    sleep 0.2
  done
  log "$what ready after $((SECONDS - start)) s"
}

start_apiserver() { # dir etcd_port api_port: kube-apiserver in the background, its pid in DIR
  local dir=$1 etcd_port=$2 api_port=$3
  log "starting kube-apiserver $(cat "$BIN_DIR/kube-apiserver.version") on https://127.0.0.1:$api_port"
  local node_flags=() bind_address
  if [[ -f "$dir/with-node" ]]; then
    # The kubelet is reached by its name, localhost (it refuses a loopback node IP), and the
    # webhook of a controller running as a pod by its endpoint (there is no kube-proxy).
    # Pods reach the API server at the bridge's host address, which exists only once the node
    # networked a pod: the API server listens on every address (clients still need a
    # certificate or a token).
    bind_address=0.0.0.0
    node_flags=(
      --kubelet-client-certificate "$dir/pki/apiserver-kubelet-client.crt"
      --kubelet-client-key "$dir/pki/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "$dir/pki/ca.crt"
      --kubelet-preferred-address-types Hostname,InternalIP
      --enable-aggregator-routing
      --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
    )
  else
    bind_address=127.0.0.1
    node_flags=(--authorization-mode RBAC)
  fi
  kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$bind_address" --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" \
    "${node_flags[@]}" \
    --service-account-issuer "https://127.0.0.1:$api_port" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-jwks-uri "https://127.0.0.1:$api_port/openid/v1/jwks" \
    --service-account-key-file "$dir/pki/sa.pub" \
    --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true \
    --enable-priority-and-fairness=false \
    --profiling=false \
    --v=1 >>"$dir/logs/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
}

up() {
  local dir=$1 with_node=${2:-}
  [[ -z "$with_node" || "$with_node" == --node ]] || die "usage: $0 up DIR [--node]"
  for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$BIN_DIR/$b" ]] || die "$b missing: run hack/build-controlplane.sh and hack/install-tools.sh first"
  done
  mkdir -p "$dir/logs"
  dir=$(cd "$dir" && pwd)
  pki "$dir/pki"
  rm -f "$dir/with-node"
  [[ -n "$with_node" ]] && touch "$dir/with-node"
  local etcd_port etcd_peer api_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  local server="https://127.0.0.1:$api_port"

  log "starting etcd $(cat "$BIN_DIR/etcd.version") on 127.0.0.1:$etcd_port"
  etcd --name fedcred-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "fedcred-test=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync --log-level warn >"$dir/logs/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_for etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health" || die "etcd did not start; see $dir/logs/etcd.log"

  echo "$etcd_port $api_port" >"$dir/ports"
  start_apiserver "$dir" "$etcd_port" "$api_port"

  kubeconfig "$dir/kubeconfig" "$server" "$dir/pki/admin.crt" "$dir/pki/admin.key"
  kubeconfig "$dir/controller-manager.kubeconfig" "$server" "$dir/pki/controller-manager.crt" "$dir/pki/controller-manager.key"
  export KUBECONFIG="$dir/kubeconfig"
  wait_for kube-apiserver 120 kubectl get --raw /readyz || die "kube-apiserver did not become ready; see $dir/logs/kube-apiserver.log"

  log "starting kube-controller-manager (garbage collector, namespaces, ServiceAccounts)"
  local controllers=garbagecollector,namespace,serviceaccount node_cm_flags=()
  if [[ -n "$with_node" ]]; then
    # Pods that mount a ServiceAccount token need kube-root-ca.crt in their namespace; the
    # workload controllers turn Deployments, Jobs and CronJobs into pods.
    controllers+=,root-ca-cert-publisher,deployment,replicaset,job,cronjob,endpointslice,nodelifecycle
    node_cm_flags=(--root-ca-file "$dir/pki/ca.crt")
  fi
  kube-controller-manager \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --controllers "$controllers" "${node_cm_flags[@]}" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
    --v=1 >"$dir/logs/kube-controller-manager.log" 2>&1 &
  echo $! >"$dir/kube-controller-manager.pid"
  wait_for "default ServiceAccount" 60 kubectl -n default get serviceaccount default ||
    die "kube-controller-manager did not create ServiceAccounts; see $dir/logs/kube-controller-manager.log"

  cat >"$dir/env" <<ENV
export KUBECONFIG="$dir/kubeconfig"
export FEDCRED_TEST_KUBECONFIG="$dir/kubeconfig"
export FEDCRED_TEST_RUN_DIR="$dir"
export PATH="$BIN_DIR:\$PATH"
ENV
  if [[ -n "$with_node" ]]; then
    "$here/node.sh" up "$dir" || die "the node did not start; see $dir/logs"
  fi
  log "control plane up: $(kubectl version -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | tail -1) at $server; kubeconfig $dir/kubeconfig"
}

down() {
  local dir=$1
  "$here/node.sh" down "$dir"
  for c in kube-controller-manager kube-apiserver etcd; do
    local f="$dir/$c.pid"
    [[ -f "$f" ]] || continue
    local pid; pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  log "control plane in $dir stopped"
}

# Kills kube-apiserver with SIGKILL, as when its node dies, keeps it down DOWN seconds, starts it
# again with the same flags, ports and certificates, and returns once it is ready again.
restart_apiserver() { # dir down_seconds
  local dir=$1 down=${2:-0}
  [[ -f "$dir/ports" && -f "$dir/kube-apiserver.pid" ]] || die "no control plane started in $dir"
  local etcd_port api_port pid
  read -r etcd_port api_port <"$dir/ports"
  pid=$(cat "$dir/kube-apiserver.pid")
  log "killing kube-apiserver (pid $pid) for $down s"
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  sleep "$down"
  start_apiserver "$dir" "$etcd_port" "$api_port"
  KUBECONFIG="$dir/kubeconfig" wait_for kube-apiserver 120 kubectl get --raw /readyz ||
    die "kube-apiserver did not become ready again; see $dir/logs/kube-apiserver.log"
}

case "${1:-}" in
  up) up "${2:?usage: $0 up DIR [--node]}" "${3:-}" ;;
  down) down "${2:?usage: $0 down DIR}" ;;
  restart-apiserver) restart_apiserver "${2:?usage: $0 restart-apiserver DIR [DOWN_SECONDS]}" "${3:-0}" ;;
  *) die "usage: $0 up|down|restart-apiserver DIR" ;;
esac
