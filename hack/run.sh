#!/usr/bin/env bash
# fedcred's main job on a local default: a real local control plane, AWS STS (the real moto
# server), the verifying Google and AlloyDB doubles in front of a real PostgreSQL, and
# `fedcred controller` keeping the example FederatedCredentials' Secrets fresh and injecting
# pods; then an injected pod's sidecars run on this machine exactly as the API server stored
# them (the metadata emulator and the real AlloyDB Auth Proxy) and psql logs in through them
# as the IAM database user.
#   hack/run.sh [--once]    (--once: show the result and stop instead of waiting for Ctrl-C)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

"$here/install-tools.sh"
"$here/build-controlplane.sh"
"$here/build-alloydb-proxy.sh"
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
}
trap stop EXIT
trap 'echo; exit 0' INT TERM

"$here/controlplane.sh" up "$run_dir"
source "$run_dir/env"
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
alloydb_admin="http://127.0.0.1:$admin_port"
log "starting the Google STS and IAM Credentials doubles on 127.0.0.1:$google_port, the AlloyDB Admin API and instance doubles (instance on 127.0.0.1:5433)"
python3 - "$moto" "$pg_port" "$admin_port" >"$run_dir/google.json" <<'PY'
import json, sys
moto, pg_port, admin_port = sys.argv[1], sys.argv[2], sys.argv[3]
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
            "psc_dns_name": "localhost",
        }],
        "service_accounts": ["orders-api@acme-shop.iam.gserviceaccount.com"],
        "postgres": f"127.0.0.1:{pg_port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
    },
}, indent=2))
PY
"$bin/fedcred-doubles" --listen "127.0.0.1:$google_port" --config "$run_dir/google.json" >"$run_dir/logs/google.log" 2>&1 &
pids+=($!)
google="http://127.0.0.1:$google_port"
for _ in $(seq 100); do curl -s "$google/" >/dev/null && break; sleep 0.2; done
for _ in $(seq 100); do curl -s "$alloydb_admin/" >/dev/null && break; sleep 0.2; done
curl -s "$alloydb_admin/" >/dev/null || die "the AlloyDB doubles did not start (is 127.0.0.1:5433 free?); see $run_dir/logs/google.log"

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

log "starting fedcred controller (namespace analytics may lend the controller's identity)"
AWS_ACCESS_KEY_ID=$(xml AccessKeyId) AWS_SECRET_ACCESS_KEY=$(xml SecretAccessKey) AWS_SESSION_TOKEN=$(xml SessionToken) \
AWS_ENDPOINT_URL_STS="$moto" AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  "$bin/fedcred" controller --leader-election=false --metrics-address 127.0.0.1:0 \
  --webhook-address "127.0.0.1:$webhook_port" --webhook-dns-names 127.0.0.1 --fedcred-image fedcred:dev \
  --allow-controller-identity analytics --log-format text \
  --google-sts-url "$google/v1/token" --google-iam-credentials-url "$google" \
  >"$run_dir/logs/controller.log" 2>&1 &
pids+=($!)

log "applying the examples"
kubectl apply -f examples/
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
log "starting sidecar alloydb-proxy-0: alloydb-auth-proxy ${px_args[*]} (+ --alloydbadmin-api-endpoint of the Admin API double)"
env -i PATH="$PATH" "${px_env[@]}" "$proxy_bin" "${px_args[@]}" --alloydbadmin-api-endpoint "$alloydb_admin" \
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
echo
log "control plane and controller running; logs in $run_dir/logs; try: KUBECONFIG=$run_dir/kubeconfig kubectl get fedcred -A"
if [[ "${1:-}" != "--once" ]]; then
  log "press Ctrl-C to stop"
  while sleep 3600; do :; done
fi
