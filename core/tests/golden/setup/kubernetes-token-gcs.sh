#!/usr/bin/env bash
# Written by `fedcred setup` for reports/reports-gcs.
# Review it, then run it once. It grants exactly what these resources need and admits
# exactly the principals fedcred presents for them: no wildcard.
set -euo pipefail

########## Google Cloud ##########

# Workload Identity pool k8s-pool in project 555555555555: the providers below live in it, and the principals bound to service accounts are named after it.
gcloud iam workload-identity-pools create k8s-pool \
  --project=555555555555 --location=global \
  --display-name="fedcred"

# Provider onprem trusts the ServiceAccount tokens of the cluster whose issuer (the tokens' iss) is
#   https://k8s.acme-reports.example
# (spec.kubernetes: the token goes to Google as it is; nothing is created on AWS). Google
# fetches the cluster's signing keys through https://k8s.acme-reports.example/.well-known/openid-configuration,
# which must be public over https. A private issuer: upload the keys instead
# (--jwk-json-path=jwks.json, from `kubectl get --raw /openid/v1/jwks > jwks.json`), and again
# whenever the cluster's signing key changes.
# The mapping makes the token's sub, system:serviceaccount:NAMESPACE:NAME, the subject, so each principal is one ServiceAccount; attribute.namespace allows principalSet bindings per namespace.
# The condition admits exactly the ServiceAccounts of reports/reports-gcs; any other ServiceAccount
# or namespace of the cluster is refused with "The given credential is rejected by the attribute condition".
# (The provider exists already? Run `providers update-oidc` with the same flags.)
gcloud iam workload-identity-pools providers create-oidc onprem \
  --project=555555555555 --location=global --workload-identity-pool=k8s-pool \
  --issuer-uri="https://k8s.acme-reports.example" \
  --attribute-mapping="google.subject=assertion.sub,attribute.namespace=assertion['kubernetes.io']['namespace']" \
  --attribute-condition="assertion.sub in ['system:serviceaccount:reports:report-writer']"

# report-writer@acme-reports.iam.gserviceaccount.com is impersonated for reports/reports-gcs: only these principals may mint its tokens
# (roles/iam.workloadIdentityUser on the service account, not on the project).
gcloud iam service-accounts add-iam-policy-binding report-writer@acme-reports.iam.gserviceaccount.com \
  --project=acme-reports --role=roles/iam.workloadIdentityUser \
  --member="principal://iam.googleapis.com/projects/555555555555/locations/global/workloadIdentityPools/k8s-pool/subject/system:serviceaccount:reports:report-writer"
# Not granted here, the resources to grant on are yours to name: Cloud Storage: roles/storage.objectViewer (or objectUser) on each bucket it uses.

########## AWS ##########

# Nothing: ServiceAccount tokens (spec.kubernetes) go to Google without AWS.
