#!/usr/bin/env bash
# Written by `fedcred setup` for analytics/bigquery-export.
# Review it, then run it once. It grants exactly what these resources need and admits
# exactly the principals fedcred presents for them: no wildcard.
set -euo pipefail

########## Google Cloud ##########

# Workload Identity pool bq-pool in project 987654321098: the providers below live in it, and the principals bound to service accounts are named after it.
gcloud iam workload-identity-pools create bq-pool \
  --project=987654321098 --location=global \
  --display-name="fedcred"

# Provider aws-analytics trusts AWS account 123456789012: Google verifies the signed GetCallerIdentity
# request fedcred sends and learns the caller's ARN.
# The mapping makes the caller's ARN the subject. For an assumed role the ARN ends in the session name fedcred chooses (fedcred.NAMESPACE.SERVICEACCOUNT for IRSA, fedcred.NAMESPACE for the controller's identity), so each principal is one namespace.
# The condition admits exactly the principals of analytics/bigquery-export; any other role or namespace of
# the account is refused with "The given credential is rejected by the attribute condition".
# (The provider exists already? Run `providers update-aws` with the same flags.)
gcloud iam workload-identity-pools providers create-aws aws-analytics \
  --project=987654321098 --location=global --workload-identity-pool=bq-pool \
  --account-id=123456789012 \
  --attribute-mapping="google.subject=assertion.arn,attribute.aws_account=assertion.account" \
  --attribute-condition="assertion.arn in ['arn:aws:sts::123456789012:assumed-role/access2bq/fedcred.analytics']"

# bq-export@acme-analytics.iam.gserviceaccount.com is impersonated for analytics/bigquery-export: only these principals may mint its tokens
# (roles/iam.workloadIdentityUser on the service account, not on the project).
gcloud iam service-accounts add-iam-policy-binding bq-export@acme-analytics.iam.gserviceaccount.com \
  --project=acme-analytics --role=roles/iam.workloadIdentityUser \
  --member="principal://iam.googleapis.com/projects/987654321098/locations/global/workloadIdentityPools/bq-pool/subject/arn:aws:sts::123456789012:assumed-role/access2bq/fedcred.analytics"
# Not granted here, the resources to grant on are yours to name: BigQuery: roles/bigquery.jobUser on the project and roles/bigquery.dataViewer (or dataEditor) on each dataset it reads.
# Not granted here, the resources to grant on are yours to name: Cloud Storage: roles/storage.objectViewer (or objectUser) on each bucket it uses.

########## AWS ##########

# The controller's own role (its ServiceAccount's eks.amazonaws.com/role-arn, or its
# Pod Identity association), which chained roles trust.
CONTROLLER_ROLE_ARN=""
: "${CONTROLLER_ROLE_ARN:?set CONTROLLER_ROLE_ARN to the IAM role of the fedcred controller}"

# arn:aws:iam::123456789012:role/access2bq
# The controller's identity chained into this role (AssumeRole); the trust policy admits
# only the session names fedcred gives the allowed namespaces: fedcred.analytics.
# It needs no permission policy: GetCallerIdentity, which Google calls, needs none.
# (The role exists already? `aws iam update-assume-role-policy --role-name access2bq --policy-document ...`.)
aws iam create-role --role-name access2bq --path / \
  --description "fedcred: Google Workload Identity Federation" \
  --assume-role-policy-document "$(cat <<JSON
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
        "AWS": "${CONTROLLER_ROLE_ARN}"
      },
      "Sid": "FedcredControllerIdentity"
    }
  ],
  "Version": "2012-10-17"
}
JSON
)"
