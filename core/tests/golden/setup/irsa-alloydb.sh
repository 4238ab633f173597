#!/usr/bin/env bash
# Written by `fedcred setup` for shop/orders-db.
# Review it, then run it once. It grants exactly what these resources need and admits
# exactly the principals fedcred presents for them: no wildcard.
set -euo pipefail

########## Google Cloud ##########

# Workload Identity pool eks-pool in project 123456789012: the providers below live in it, and the principals bound to service accounts are named after it.
gcloud iam workload-identity-pools create eks-pool \
  --project=123456789012 --location=global \
  --display-name="fedcred"

# Provider aws-shop trusts AWS account 123456789012: Google verifies the signed GetCallerIdentity
# request fedcred sends and learns the caller's ARN.
# The mapping makes the caller's ARN the subject. For an assumed role the ARN ends in the session name fedcred chooses (fedcred.NAMESPACE.SERVICEACCOUNT for IRSA, fedcred.NAMESPACE for the controller's identity), so each principal is one namespace.
# The condition admits exactly the principals of shop/orders-db; any other role or namespace of
# the account is refused with "The given credential is rejected by the attribute condition".
# (The provider exists already? Run `providers update-aws` with the same flags.)
gcloud iam workload-identity-pools providers create-aws aws-shop \
  --project=123456789012 --location=global --workload-identity-pool=eks-pool \
  --account-id=123456789012 \
  --attribute-mapping="google.subject=assertion.arn,attribute.aws_account=assertion.account" \
  --attribute-condition="assertion.arn in ['arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop.orders-api']"

# orders-api@acme-shop.iam.gserviceaccount.com is impersonated for shop/orders-db: only these principals may mint its tokens
# (roles/iam.workloadIdentityUser on the service account, not on the project).
gcloud iam service-accounts add-iam-policy-binding orders-api@acme-shop.iam.gserviceaccount.com \
  --project=acme-shop --role=roles/iam.workloadIdentityUser \
  --member="principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/subject/arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop.orders-api"
# roles/alloydb.client: the AlloyDB Auth Proxy asks the Admin API for connection info and a client certificate.
gcloud projects add-iam-policy-binding acme-shop \
  --member="serviceAccount:orders-api@acme-shop.iam.gserviceaccount.com" --role=roles/alloydb.client --condition=None
# roles/alloydb.databaseUser: automatic IAM database login: the proxy logs in as the service account.
gcloud projects add-iam-policy-binding acme-shop \
  --member="serviceAccount:orders-api@acme-shop.iam.gserviceaccount.com" --role=roles/alloydb.databaseUser --condition=None
# roles/serviceusage.serviceUsageConsumer: Private Service Connect: the proxy's Admin API calls bill the service account's project, which needs serviceusage.services.use.
gcloud projects add-iam-policy-binding acme-shop \
  --member="serviceAccount:orders-api@acme-shop.iam.gserviceaccount.com" --role=roles/serviceusage.serviceUsageConsumer --condition=None

# The AlloyDB Auth Proxy logs in as orders-api@acme-shop.iam (the service account's email without
# .gserviceaccount.com); AlloyDB needs the IAM user to exist in cluster orders.
gcloud alloydb users create orders-api@acme-shop.iam \
  --cluster=orders --region=asia-northeast1 --project=acme-shop --type=IAM_BASED
# An IAM user starts with no privileges. As a database administrator (psql as postgres), grant
# what the application needs, for example:
#   GRANT CONNECT ON DATABASE <database> TO "orders-api@acme-shop.iam";
#   GRANT USAGE ON SCHEMA public TO "orders-api@acme-shop.iam";
#   GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "orders-api@acme-shop.iam";

########## AWS ##########

# The cluster's IAM OIDC provider (its issuer without https://), which IRSA roles trust:
#   aws eks describe-cluster --name CLUSTER --query cluster.identity.oidc.issuer --output text
# IAM must know it once per cluster (`eksctl utils associate-iam-oidc-provider --cluster CLUSTER --approve`).
OIDC_PROVIDER="oidc.eks.ap-northeast-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"

# arn:aws:iam::123456789012:role/shop-orders-api
# IRSA: fedcred asks the API server for a token of shop:orders-api and exchanges it with
# AssumeRoleWithWebIdentity; the trust policy admits only those ServiceAccounts' tokens.
# It needs no permission policy: GetCallerIdentity, which Google calls, needs none.
# (The role exists already? `aws iam update-assume-role-policy --role-name shop-orders-api --policy-document ...`.)
aws iam create-role --role-name shop-orders-api --path / \
  --description "fedcred: Google Workload Identity Federation" \
  --assume-role-policy-document "$(cat <<JSON
{
  "Statement": [
    {
      "Action": "sts:AssumeRoleWithWebIdentity",
      "Condition": {
        "StringEquals": {
          "${OIDC_PROVIDER}:aud": "sts.amazonaws.com",
          "${OIDC_PROVIDER}:sub": [
            "system:serviceaccount:shop:orders-api"
          ]
        }
      },
      "Effect": "Allow",
      "Principal": {
        "Federated": "arn:aws:iam::123456789012:oidc-provider/${OIDC_PROVIDER}"
      },
      "Sid": "FedcredIrsa"
    }
  ],
  "Version": "2012-10-17"
}
JSON
)"
