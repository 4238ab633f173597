# Written by `fedcred setup` for analytics/bigquery-export.
# Review it, then run it once. It grants exactly what these resources need and admits
# exactly the principals fedcred presents for them: no wildcard.

variable "controller_role_arn" {
  description = "The fedcred controller's own IAM role, which chained roles trust."
  type        = string
}

# Workload Identity pool bq-pool in project 987654321098: the providers below live in it, and the principals bound to service accounts are named after it.
resource "google_iam_workload_identity_pool" "bq_pool" {
  project                   = "987654321098"
  workload_identity_pool_id = "bq-pool"
  display_name              = "fedcred"
}

# Provider aws-analytics trusts AWS account 123456789012.
# The mapping makes the caller's ARN the subject. For an assumed role the ARN ends in the session name fedcred chooses (fedcred.NAMESPACE.SERVICEACCOUNT for IRSA, fedcred.NAMESPACE for the controller's identity), so each principal is one namespace.
# The condition admits exactly the principals of analytics/bigquery-export.
resource "google_iam_workload_identity_pool_provider" "bq_pool_aws_analytics" {
  project                            = "987654321098"
  workload_identity_pool_id          = google_iam_workload_identity_pool.bq_pool.workload_identity_pool_id
  workload_identity_pool_provider_id = "aws-analytics"
  attribute_mapping = {
    "google.subject" = "assertion.arn"
    "attribute.aws_account" = "assertion.account"
  }
  attribute_condition = "assertion.arn in ['arn:aws:sts::123456789012:assumed-role/access2bq/fedcred.analytics']"
  aws {
    account_id = "123456789012"
  }
}

# bq-export@acme-analytics.iam.gserviceaccount.com is impersonated for analytics/bigquery-export: only these principals may mint its tokens.
resource "google_service_account_iam_member" "bq_export_acme_analytics_wif_0" {
  service_account_id = "projects/acme-analytics/serviceAccounts/bq-export@acme-analytics.iam.gserviceaccount.com"
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/987654321098/locations/global/workloadIdentityPools/bq-pool/subject/arn:aws:sts::123456789012:assumed-role/access2bq/fedcred.analytics"
}
# Not granted here, the resources to grant on are yours to name: BigQuery: roles/bigquery.jobUser on the project and roles/bigquery.dataViewer (or dataEditor) on each dataset it reads.
# Not granted here, the resources to grant on are yours to name: Cloud Storage: roles/storage.objectViewer (or objectUser) on each bucket it uses.

# arn:aws:iam::123456789012:role/access2bq: the controller's identity, for the session names of the allowed namespaces only. No permission policy: GetCallerIdentity needs none.
resource "aws_iam_role" "access2bq" {
  name               = "access2bq"
  path               = "/"
  description        = "fedcred: Google Workload Identity Federation"
  assume_role_policy = <<-JSON
    {
      "Statement": [
        {
          "Action": "sts:AssumeRole",
          "Condition": {
            "StringEquals": {
              "sts:RoleSessionName": [
                "fedcred.analytics"
              ]
            }
          },
          "Effect": "Allow",
          "Principal": {
            "AWS": "${var.controller_role_arn}"
          },
          "Sid": "FedcredControllerIdentity"
        }
      ],
      "Version": "2012-10-17"
    }
  JSON
}
