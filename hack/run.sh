#!/usr/bin/env bash
# fedcred's main job on a local default: a real local control plane, AWS STS (the real moto
# server), the verifying Google doubles, and `fedcred controller` keeping the example
# FederatedCredentials' Secrets fresh.
#   hack/run.sh [--once]    (--once: show the result and stop instead of waiting for Ctrl-C)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"
cd "$here/.."

"$here/install-tools.sh"
"$here/build-controlplane.sh"
log "building fedcred and the Google doubles"
cargo build --locked --quiet -p fedcred --bin fedcred && cargo build --locked --quiet -p fedcred-doubles --bin fedcred-doubles
bin="$PWD/target/debug"
venv="$FEDCRED_CACHE/venv"

run_dir="${FEDCRED_RUN_DIR:-$FEDCRED_CACHE/run}"
"$here/controlplane.sh" down "$run_dir" >/dev/null 2>&1 || true
rm -rf "$run_dir"
mkdir -p "$run_dir/logs"
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
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

google_port=$(free_port)
log "starting the Google STS and IAM Credentials doubles on 127.0.0.1:$google_port"
python3 - "$moto" >"$run_dir/google.json" <<'PY'
import json, sys
moto = sys.argv[1]
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
}, indent=2))
PY
"$bin/fedcred-doubles" --listen "127.0.0.1:$google_port" --config "$run_dir/google.json" >"$run_dir/logs/google.log" 2>&1 &
pids+=($!)
google="http://127.0.0.1:$google_port"
for _ in $(seq 100); do curl -s "$google/" >/dev/null && break; sleep 0.2; done

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
kubectl -n shop create --dry-run=server -o json -f - <<'YAML' | python3 -c '
import json, sys
pod = json.load(sys.stdin)["spec"]
for c in pod.get("initContainers", []) + pod["containers"]:
    kind = "sidecar" if c.get("restartPolicy") == "Always" else "container"
    print("  %s %s: %s" % (kind, c["name"], " ".join(c.get("args", [])) or c.get("image", "")))
    for e in c.get("env", []):
        print("      %s=%s" % (e["name"], e.get("value", "<from reference>")))'
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
YAML
echo
log "control plane and controller running; logs in $run_dir/logs; try: KUBECONFIG=$run_dir/kubeconfig kubectl get fedcred -A"
if [[ "${1:-}" != "--once" ]]; then
  log "press Ctrl-C to stop"
  while sleep 3600; do :; done
fi
