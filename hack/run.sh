#!/usr/bin/env bash
# fedcred's main job on a local default: a real local control plane with a real node (kubelet,
# containerd, runc), AWS STS (the real moto server), the verifying Google and AlloyDB doubles in
# front of a real PostgreSQL, and `fedcred controller` keeping the example FederatedCredentials'
# Secrets fresh and injecting pods. The example's orders-api Deployment then runs as real pods:
# the kubelet starts the metadata sidecar and the real AlloyDB Auth Proxy from their images, and
# psql inside the app container logs in through them as the IAM database user.
#   hack/run.sh [--once] [--without-node]
#     --once          show the result and stop instead of waiting for Ctrl-C
#     --without-node  no node (it needs root): run the stored pod's sidecars as local processes
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

once=false with_node=true
while (($#)); do
  case "$1" in
    --once) once=true ;;
    --without-node) with_node=false ;;
    *) die "usage: $0 [--once] [--without-node]" ;;
  esac
  shift
done
if $with_node && ((EUID != 0)); then
  die "the node (kubelet, containerd) needs root: run as root, or hack/run.sh --without-node to run the pod's sidecars as local processes"
fi

"$here/install-tools.sh"
"$here/build-controlplane.sh"
"$here/build-alloydb-proxy.sh"
if $with_node; then "$here/build-node.sh"; fi
log "building fedcred and the Google doubles"
cargo build --locked --quiet -p fedcred --bin fedcred && cargo build --locked --quiet -p fedcred-doubles --bin fedcred-doubles
bin="$PWD/target/debug"
venv="$FEDCRED_CACHE/venv"

run_dir="${FEDCRED_RUN_DIR:-$FEDCRED_CACHE/run}"
"$here/controlplane.sh" down "$run_dir" >/dev/null 2>&1 || true
rm -rf "$run_dir"
mkdir -p "$run_dir/logs"
pids=()
pg_stop=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((${#pg_stop[@]})); then "${pg_stop[@]}" >/dev/null 2>&1 || true; rm -rf "$pg_dir"; fi
  "$here/controlplane.sh" down "$run_dir"
  if [[ -f "$run_dir/node/before" ]]; then
    "$here/node.sh" leftovers "$run_dir" || log "the node left the above behind; hack/node.sh down $run_dir tries again"
  fi
}
trap stop EXIT
trap 'echo; exit 0' INT TERM

if $with_node; then
  "$here/controlplane.sh" up "$run_dir" --node
else
  "$here/controlplane.sh" up "$run_dir"
fi
source "$run_dir/env"
# Where the proxy reaches the AlloyDB doubles: from a pod, the bridge's host address (the doubles
# listen on every address, since the bridge exists only once the node has networked a pod);
# without a node, this machine's loopback.
if $with_node; then
  host_ip=$FEDCRED_TEST_NODE_HOST_IP listen_ip=0.0.0.0
else
  host_ip=127.0.0.1 listen_ip=127.0.0.1
fi

log "installing the CRD (printed by \`fedcred crd\`)"
"$bin/fedcred" crd | kubectl apply --server-side --field-manager=fedcred -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/federatedcredentials.fedcred.io >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

moto_port=$(free_port)
log "starting AWS STS (moto) on 127.0.0.1:$moto_port"
"$venv/bin/moto_server" -p "$moto_port" >"$run_dir/logs/moto.log" 2>&1 &
pids+=($!)
moto="http://127.0.0.1:$moto_port"
for _ in $(seq 100); do curl -sf "$moto/moto-api/" >/dev/null && break; sleep 0.2; done

# The controller's own AWS identity (as an EC2 instance role would give it), issued by moto.
creds=$(curl -sf -X POST "$moto" \
  -d Action=AssumeRoleWithWebIdentity -d Version=2011-06-15 \
  -d RoleArn=arn:aws:iam::123456789012:role/fedcred-controller \
  -d RoleSessionName=fedcred-controller -d WebIdentityToken=demo)
xml() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" <<<"$creds" | head -1; }

# The database behind the AlloyDB instance double: a real PostgreSQL with a login role named
# after the IAM database user. PostgreSQL refuses to run as root, so as root it runs as the
# `postgres` system user.
db_user=orders-api@acme-shop.iam
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
pg_port=$(free_port)
as_pg=()
# Outside the run directory: it may sit under a home the postgres user cannot enter.
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedcred-demo-postgres.XXXXXX")
if ((EUID == 0)); then
  chown postgres:postgres "$pg_dir"
  as_pg=(runuser -u postgres --)
fi
log "starting PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port with role $db_user"
"${as_pg[@]}" "$pg_bin/initdb" --auth=trust --username=postgres --no-sync -D "$pg_dir/data" >"$run_dir/logs/initdb.log" 2>&1 ||
  die "initdb failed; see $run_dir/logs/initdb.log"
"${as_pg[@]}" "$pg_bin/pg_ctl" -w -t 60 -D "$pg_dir/data" -l "$pg_dir/postgres.log" \
  -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_dir -c fsync=off" start >/dev/null ||
  die "PostgreSQL did not start; see $pg_dir/postgres.log"
pg_stop=("${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop)
psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "CREATE ROLE \"$db_user\" LOGIN"

google_port=$(free_port)
admin_port=$(free_port)
alloydb_admin="http://$host_ip:$admin_port"
log "starting the Google STS and IAM Credentials doubles on 127.0.0.1:$google_port, the AlloyDB Admin API and instance doubles (instance on $listen_ip:5433, reached at $host_ip)"
python3 - "$moto" "$pg_port" "$admin_port" "$host_ip" "$listen_ip" >"$run_dir/google.json" <<'PY'
import json, sys
moto, pg_port, admin_port, host_ip, listen_ip = sys.argv[1:6]
shop = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"
bq = "//iam.googleapis.com/projects/987654321098/locations/global/workloadIdentityPools/bq-pool/providers/aws-analytics"
def role_member(audience, role):
    pool = audience.split("/providers/")[0].lstrip("/")
    return f"principalSet://{pool}/attribute.aws_role/arn:aws:sts::123456789012:assumed-role/{role}"
routes = [(f"https://sts.{r}.amazonaws.com", moto) for r in ("ap-northeast-1", "us-east-1")]
print(json.dumps({
    "providers": [{"audience": shop}, {"audience": bq}],
    "bindings": [
        {"service_account": "orders-api@acme-shop.iam.gserviceaccount.com", "members": [role_member(shop, "shop-orders-api")]},
        {"service_account": "bq-export@acme-analytics.iam.gserviceaccount.com", "members": [role_member(bq, "access2bq")]},
    ],
    "aws_sts_endpoints": [moto] + [origin for origin, _ in routes],
    "aws_sts_routes": routes,
    "moto_url": moto,
    "require_signed_target": True,
    "alloydb": {
        "instances": [{
            "uri": "projects/acme-shop/locations/asia-northeast1/clusters/orders/instances/orders-primary",
            "psc_dns_name": "localhost" if host_ip == "127.0.0.1" else host_ip,
        }],
        "service_accounts": ["orders-api@acme-shop.iam.gserviceaccount.com"],
        "postgres": f"127.0.0.1:{pg_port}",
        "admin_listen": f"{listen_ip}:{admin_port}",
        "instance_listen": f"{listen_ip}:5433",
    },
}, indent=2))
PY
"$bin/fedcred-doubles" --listen "127.0.0.1:$google_port" --config "$run_dir/google.json" >"$run_dir/logs/google.log" 2>&1 &
pids+=($!)
google="http://127.0.0.1:$google_port"
for _ in $(seq 100); do curl -s "$google/" >/dev/null && break; sleep 0.2; done
for _ in $(seq 100); do curl -s "http://127.0.0.1:$admin_port/" >/dev/null && break; sleep 0.2; done
curl -s "http://127.0.0.1:$admin_port/" >/dev/null || die "the AlloyDB doubles did not start (is port 5433 free?); see $run_dir/logs/google.log"

webhook_port=$(free_port)
log "registering the admission webhook at https://127.0.0.1:$webhook_port/mutate (the controller fills in its caBundle)"
kubectl apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: fedcred
webhooks:
  - name: pods.fedcred.io
    clientConfig:
      url: https://127.0.0.1:$webhook_port/mutate
    rules:
      - {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"]}
    objectSelector:
      matchLabels: {fedcred.io/inject: "true"}
    failurePolicy: Fail
    reinvocationPolicy: IfNeeded
    sideEffects: None
    admissionReviewVersions: ["v1"]
    timeoutSeconds: 5
YAML

# The images the webhook puts into pods: on the node, the ones it imported; without one, names
# only (the sidecars then run from this machine's binaries).
if $with_node; then
  image_flags=(--fedcred-image "$FEDCRED_TEST_NODE_IMAGE_FEDCRED" --proxy-image "$FEDCRED_TEST_NODE_IMAGE_ALLOYDB_AUTH_PROXY")
else
  image_flags=(--fedcred-image fedcred:dev)
fi
log "starting fedcred controller (namespace analytics may lend the controller's identity)"
AWS_ACCESS_KEY_ID=$(xml AccessKeyId) AWS_SECRET_ACCESS_KEY=$(xml SecretAccessKey) AWS_SESSION_TOKEN=$(xml SessionToken) \
AWS_ENDPOINT_URL_STS="$moto" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  "$bin/fedcred" controller --leader-election=false --metrics-address 127.0.0.1:0 \
  --webhook-address "127.0.0.1:$webhook_port" --webhook-dns-names 127.0.0.1 "${image_flags[@]}" \
  --alloydb-admin-endpoint "$alloydb_admin" --allow-controller-identity analytics --log-format text \
  --google-sts-url "$google/v1/token" --google-iam-credentials-url "$google" \
  >"$run_dir/logs/controller.log" 2>&1 &
pids+=($!)

# The two examples of the seeds as users apply them (the others show alternatives to these).
# On the node, workloads whose images are not on this machine are left out (the orders-api
# Deployment runs later, with the client image as its app), so no pod waits on a registry it
# cannot reach.
examples=(-f examples/irsa-alloydb.yaml -f examples/controller-identity-bigquery.yaml)
apply_examples() {
  if ! $with_node; then
    log "applying the examples"
    kubectl apply "${examples[@]}"
    return
  fi
  kubectl create --dry-run=client -o json "${examples[@]}" >"$run_dir/examples.json"
  python3 - "$run_dir/examples.json" "$run_dir/examples-node.json" "$run_dir/orders-api.json" \
    "$FEDCRED_TEST_NODE_IMAGE_CLIENT" <<'PY'
import json, sys
source, kept_file, orders_file, client = sys.argv[1:5]
text, decoder, objects, i = open(source).read(), json.JSONDecoder(), [], 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i == len(text):
        break
    obj, i = decoder.raw_decode(text, i)
    objects.extend(obj["items"] if obj.get("kind") == "List" else [obj])
workloads = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
name = lambda o: "%s %s/%s" % (o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"])
json.dump({"apiVersion": "v1", "kind": "List", "items": [o for o in objects if o["kind"] not in workloads]},
          open(kept_file, "w"))
orders = next(o for o in objects if name(o) == "Deployment shop/orders-api")
app = orders["spec"]["template"]["spec"]["containers"][0]
app["image"] = client
app["command"] = ["python3", "-c", "import time\nwhile True:\n    time.sleep(3600)"]
app.setdefault("env", []).append({"name": "PGDATABASE", "value": "postgres"})
json.dump(orders, open(orders_file, "w"))
others = [name(o) for o in objects if o["kind"] in workloads and o is not orders]
if others:
    print("[not run on this node, their images are not here: %s]" % ", ".join(others), file=sys.stderr)
PY
  log "applying the examples (their workloads come after the FederatedCredentials are Ready)"
  kubectl apply -f "$run_dir/examples-node.json"
}

# The example's orders-api Deployment as real pods: Deployment → ReplicaSet → pods the webhook
# injects → the kubelet starts the metadata sidecar and the real AlloyDB Auth Proxy from their
# images, then the app; psql inside the app container logs in through the proxy.
pod_on_node() {
  echo
  log "the example's Deployment shop/orders-api, its app container on the client image (python3 and psql; ghcr.io/acme/orders-api is not on this machine)"
  local started=$SECONDS pod
  kubectl apply -f "$run_dir/orders-api.json"
  kubectl -n shop rollout status deployment/orders-api --timeout=180s >/dev/null || {
    kubectl -n shop get pods -o wide
    kubectl -n shop describe pods -l app=orders-api | tail -n 30
    die "the orders-api pods did not become Ready; see above, $run_dir/logs/kubelet.log and $run_dir/logs/controller.log"
  }
  log "pods Ready $((SECONDS - started)) s after the apply"
  echo
  kubectl -n shop get pods -o wide
  pod=$(kubectl -n shop get pods -l app=orders-api -o jsonpath='{.items[0].metadata.name}')
  echo
  log "pod $pod as the kubelet runs it:"
  kubectl -n shop get pod "$pod" -o json | python3 -c '
import json, sys
pod = json.load(sys.stdin)
status = {s["name"]: s for s in pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])}
for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
    sidecar = c.get("restartPolicy") == "Always"
    s = status.get(c["name"], {})
    print("  %-9s %-17s ready=%-5s %-7s %s" % ("sidecar" if sidecar else "container", c["name"],
          str(s.get("ready", False)).lower(), next(iter(s.get("state", {})), "?"), c["image"]))
    if sidecar:
        print("      " + " ".join(c.get("command", []) + c.get("args", [])))
    for e in c.get("env", []):
        if e["name"].startswith(("PG", "GCE_", "GOOGLE_")):
            print("      %s=%s" % (e["name"], e.get("value", "<from reference>")))'
  echo
  log "psql inside the app container (kubectl -n shop exec $pod -c api -- psql), through the proxy sidecar to the AlloyDB instance double:"
  kubectl -n shop exec "$pod" -c api -- psql -X -c 'select current_user, session_user' ||
    die "psql could not log in through the proxy; see kubectl -n shop logs $pod -c alloydb-proxy-0, and $run_dir/logs/google.log"
  log "what a Google client library in the app container finds at \$GCE_METADATA_HOST (token redacted):"
  kubectl -n shop exec "$pod" -c api -- python3 -c '
import json, os, urllib.request
base = "http://%s/computeMetadata/v1/" % os.environ["GCE_METADATA_HOST"]
def get(path):
    request = urllib.request.Request(base + path, headers={"Metadata-Flavor": "Google"})
    return urllib.request.urlopen(request, timeout=5).read().decode()
token = json.loads(get("instance/service-accounts/default/token"))
print("  project %s, service account %s: a %s token of %d characters, %d s left"
      % (get("project/project-id"), get("instance/service-accounts/default/email"),
         token["token_type"], len(token["access_token"]), token["expires_in"]))' ||
    die "the app container could not read a token from its metadata sidecar; see kubectl -n shop logs $pod -c fedcred-metadata"
}

finish() {
  echo
  if $with_node; then
    log "control plane, node and controller running; logs in $run_dir/logs; try: KUBECONFIG=$run_dir/kubeconfig kubectl -n shop get pods"
  else
    log "control plane and controller running; logs in $run_dir/logs; try: KUBECONFIG=$run_dir/kubeconfig kubectl get fedcred -A"
  fi
  if ! $once; then
    log "press Ctrl-C to stop"
    while sleep 3600; do :; done
  fi
}

apply_examples
for fc in shop/orders-db analytics/bigquery-export; do
  log "waiting for ${fc} to become Ready"
  kubectl -n "${fc%/*}" wait --for=condition=Ready --timeout=90s "federatedcredential/${fc#*/}" >/dev/null ||
    { kubectl -n "${fc%/*}" get fedcred "${fc#*/}" -o yaml; exit 1; }
done
echo
kubectl get federatedcredentials --all-namespaces
echo
kubectl -n shop get fedcred orders-db -o jsonpath='{.status.awsPrincipalArn}{"  →  "}{.status.googleServiceAccount}{"  (AlloyDB user "}{.status.dbUser}{")"}{"\n"}'
echo
log "Secret shop/orders-db (token redacted):"
kubectl -n shop get secret orders-db -o json | python3 -c '
import base64, json, sys
data = json.load(sys.stdin)["data"]
for key in sorted(data):
    value = base64.b64decode(data[key]).decode()
    if key == "access_token":
        value = "<redacted: %d characters>" % len(value)
    print("  %s: %s" % (key, value))'
if $with_node; then
  pod_on_node
  finish
  exit 0
fi

# Without a node:
echo
log "a pod of the orders-api Deployment as the API server stores it after injection (server-side dry run):"
kubectl -n shop create --dry-run=server -o json -f - >"$run_dir/pod.json" <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: orders-api-demo
  labels: {app: orders-api, fedcred.io/inject: "true"}
  annotations: {fedcred.io/credential: orders-db}
spec:
  serviceAccountName: orders-api
  containers:
    - name: api
      image: ghcr.io/acme/orders-api:1.4.2
      env: [{name: PGDATABASE, value: postgres}]
YAML
python3 - "$run_dir/pod.json" <<'PY'
import json, sys
pod = json.load(open(sys.argv[1]))["spec"]
for c in pod.get("initContainers", []) + pod["containers"]:
    kind = "sidecar" if c.get("restartPolicy") == "Always" else "container"
    print("  %s %s: %s" % (kind, c["name"], " ".join(c.get("args", [])) or c.get("image", "")))
    for e in c.get("env", []):
        print("      %s=%s" % (e["name"], e.get("value", "<from reference>")))
PY

# What the kubelet would do with that pod, done on this machine: the Secret volume (kept in step
# with the Secret, swapped atomically), then each sidecar with exactly its stored arguments and
# environment, each started once its predecessor's startup probe passes.
# container NAME FIELD: a field of the stored pod's container, NUL-separated.
container() {
  python3 - "$run_dir/pod.json" "$1" "$2" <<'PY'
import json, sys
pod = json.load(open(sys.argv[1]))["spec"]
c = next(c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == sys.argv[2])
field = sys.argv[3]
if field == "args":
    items = c.get("command", []) + c.get("args", [])
elif field == "env":
    items = ["%s=%s" % (e["name"], e["value"]) for e in c.get("env", []) if "value" in e]
elif field == "exec-probe":
    items = c["startupProbe"]["exec"]["command"]
elif field == "http-probe":
    probe = c["startupProbe"]["httpGet"]
    items = ["http://127.0.0.1:%s%s" % (probe["port"], probe["path"])]
sys.stdout.write("".join(i + "\0" for i in items))
PY
}
sync_secret() {
  kubectl -n shop get secret orders-db -o json | python3 -c '
import base64, json, os, shutil, sys, time
root, data = sys.argv[1], json.load(sys.stdin)["data"]
current = os.path.join(root, "..data")
if os.path.isdir(current) and all(
        os.path.exists(os.path.join(current, k))
        and open(os.path.join(current, k), "rb").read() == base64.b64decode(v)
        for k, v in data.items()):
    sys.exit(0)
name = "..%d" % time.time_ns()
os.mkdir(os.path.join(root, name))
for key, value in data.items():
    with open(os.path.join(root, name, key), "wb") as f:
        f.write(base64.b64decode(value))
os.symlink(name, os.path.join(root, "..data_tmp"))
os.replace(os.path.join(root, "..data_tmp"), current)
for key in data:
    if not os.path.lexists(os.path.join(root, key)):
        os.symlink(os.path.join("..data", key), os.path.join(root, key))
for entry in os.listdir(root):
    if entry.startswith("..") and entry not in ("..data", name):
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
' "$run_dir/secret"
}
mkdir -p "$run_dir/secret"
sync_secret
(while sleep 5; do sync_secret || true; done) &
pids+=($!)

mapfile -d '' md_args < <(container fedcred-metadata args)
mapfile -d '' md_env < <(container fedcred-metadata env)
md_args=("${md_args[@]//\/var\/run\/fedcred/$run_dir/secret}")
log "starting sidecar fedcred-metadata: fedcred ${md_args[*]}"
env -i PATH="$PATH" "${md_env[@]}" "$bin/fedcred" "${md_args[@]}" >"$run_dir/logs/pod-fedcred-metadata.log" 2>&1 &
pids+=($!)
mapfile -d '' probe < <(container fedcred-metadata exec-probe)
for _ in $(seq 100); do "$bin/fedcred" "${probe[@]:1}" >/dev/null 2>&1 && break; sleep 0.2; done
"$bin/fedcred" "${probe[@]:1}" >/dev/null 2>&1 || die "the metadata sidecar did not start; see $run_dir/logs/pod-fedcred-metadata.log"

proxy_bin="$BIN_DIR/alloydb-auth-proxy"
mapfile -d '' px_args < <(container alloydb-proxy-0 args)
mapfile -d '' px_env < <(container alloydb-proxy-0 env)
log "starting sidecar alloydb-proxy-0: alloydb-auth-proxy ${px_args[*]}"
env -i PATH="$PATH" "${px_env[@]}" "$proxy_bin" "${px_args[@]}" \
  >"$run_dir/logs/pod-alloydb-proxy-0.log" 2>&1 &
pids+=($!)
mapfile -d '' startup < <(container alloydb-proxy-0 http-probe)
for _ in $(seq 150); do curl -sf "${startup[0]}" >/dev/null && break; sleep 0.2; done
curl -sf "${startup[0]}" >/dev/null || die "the AlloyDB Auth Proxy did not start; see $run_dir/logs/pod-alloydb-proxy-0.log"

mapfile -d '' app_env < <(container api env)
echo
log "psql in the app container's environment ($(printf '%s ' "${app_env[@]}" | grep -o 'PG[A-Z]*=[^ ]*' | tr '\n' ' '))"
env -i PATH="$PATH" "${app_env[@]}" psql -X -c 'select current_user, session_user' ||
  die "psql could not log in through the proxy; see $run_dir/logs/pod-alloydb-proxy-0.log and $run_dir/logs/google.log"
finish
