# Written by `fedcred setup` for reports/reports-gcs.
# Review it, then run it once. It grants exactly what these resources need and admits
# exactly the principals fedcred presents for them: no wildcard.

# Workload Identity pool k8s-pool in project 555555555555: the providers below live in it, and the principals bound to service accounts are named after it.
resource "google_iam_workload_identity_pool" "k8s_pool" {
  project                   = "555555555555"
  workload_identity_pool_id = "k8s-pool"
  display_name              = "fedcred"
}

# Provider onprem trusts the ServiceAccount tokens of the cluster whose issuer (the tokens' iss) is
#   https://k8s.acme-reports.example
# (spec.kubernetes: the token goes to Google as it is; nothing is created on AWS). Google
# fetches the cluster's signing keys through https://k8s.acme-reports.example/.well-known/openid-configuration,
# which must be public over https. A private issuer: upload the keys instead
# (the jwks_json line below, from `kubectl get --raw /openid/v1/jwks > jwks.json`), and again
# whenever the cluster's signing key changes.
# The mapping makes the token's sub, system:serviceaccount:NAMESPACE:NAME, the subject, so each principal is one ServiceAccount; attribute.namespace allows principalSet bindings per namespace.
# The condition admits exactly the ServiceAccounts of reports/reports-gcs; any other ServiceAccount
# or namespace of the cluster is refused with "The given credential is rejected by the attribute condition".
resource "google_iam_workload_identity_pool_provider" "k8s_pool_onprem" {
  project                            = "555555555555"
  workload_identity_pool_id          = google_iam_workload_identity_pool.k8s_pool.workload_identity_pool_id
  workload_identity_pool_provider_id = "onprem"
  attribute_mapping = {
    "google.subject" = "assertion.sub"
    "attribute.namespace" = "assertion['kubernetes.io']['namespace']"
  }
  attribute_condition = "assertion.sub in ['system:serviceaccount:reports:report-writer']"
  oidc {
    issuer_uri = "https://k8s.acme-reports.example"
    # jwks_json = file("jwks.json")
  }
}

# report-writer@acme-reports.iam.gserviceaccount.com is impersonated for reports/reports-gcs: only these principals may mint its tokens.
resource "google_service_account_iam_member" "report_writer_acme_reports_wif_0" {
  service_account_id = "projects/acme-reports/serviceAccounts/report-writer@acme-reports.iam.gserviceaccount.com"
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/555555555555/locations/global/workloadIdentityPools/k8s-pool/subject/system:serviceaccount:reports:report-writer"
}
# Not granted here, the resources to grant on are yours to name: Cloud Storage: roles/storage.objectViewer (or objectUser) on each bucket it uses.
