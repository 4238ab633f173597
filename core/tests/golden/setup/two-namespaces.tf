# Written by `fedcred setup` for shop/orders-db, shop-staging/orders-db, reports/warehouse.
# Review it, then run it once. It grants exactly what these resources need and admits
# exactly the principals fedcred presents for them: no wildcard.

variable "oidc_provider" {
  description = "The EKS cluster's OIDC issuer without https:// (aws eks describe-cluster --query cluster.identity.oidc.issuer); IRSA roles trust it."
  type        = string
  default     = "oidc.eks.us-east-1.amazonaws.com/id/CLUSTER1"
}

# Workload Identity pool eks-pool in project 123456789012: the providers below live in it, and the principals bound to service accounts are named after it.
resource "google_iam_workload_identity_pool" "eks_pool" {
  project                   = "123456789012"
  workload_identity_pool_id = "eks-pool"
  display_name              = "fedcred"
}

# Provider aws-shop trusts AWS account 123456789012.
# The mapping makes the caller's ARN the subject. For an assumed role the ARN ends in the session name fedcred chooses (fedcred.NAMESPACE.SERVICEACCOUNT for IRSA, fedcred.NAMESPACE for the controller's identity), so each principal is one namespace.
# The condition admits exactly the principals of reports/warehouse, shop-staging/orders-db, shop/orders-db.
resource "google_iam_workload_identity_pool_provider" "eks_pool_aws_shop" {
  project                            = "123456789012"
  workload_identity_pool_id          = google_iam_workload_identity_pool.eks_pool.workload_identity_pool_id
  workload_identity_pool_provider_id = "aws-shop"
  attribute_mapping = {
    "google.subject" = "assertion.arn"
    "attribute.aws_account" = "assertion.account"
  }
  attribute_condition = "assertion.arn in ['arn:aws:sts::123456789012:assumed-role/reports/fedcred.reports.reporter', 'arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop-staging.orders-api', 'arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop.orders-api']"
  aws {
    account_id = "123456789012"
  }
}

# orders-api@acme-shop.iam.gserviceaccount.com is impersonated for shop-staging/orders-db, shop/orders-db: only these principals may mint its tokens.
resource "google_service_account_iam_member" "orders_api_acme_shop_wif_0" {
  service_account_id = "projects/acme-shop/serviceAccounts/orders-api@acme-shop.iam.gserviceaccount.com"
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/subject/arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop-staging.orders-api"
}
resource "google_service_account_iam_member" "orders_api_acme_shop_wif_1" {
  service_account_id = "projects/acme-shop/serviceAccounts/orders-api@acme-shop.iam.gserviceaccount.com"
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/subject/arn:aws:sts::123456789012:assumed-role/shop-orders-api/fedcred.shop.orders-api"
}

# roles/alloydb.client: the AlloyDB Auth Proxy asks the Admin API for connection info and a client certificate.
resource "google_project_iam_member" "orders_api_acme_shop_alloydb_client" {
  project = "acme-shop"
  role    = "roles/alloydb.client"
  member  = "serviceAccount:orders-api@acme-shop.iam.gserviceaccount.com"
}

# roles/alloydb.databaseUser: automatic IAM database login: the proxy logs in as the service account.
resource "google_project_iam_member" "orders_api_acme_shop_alloydb_databaseuser" {
  project = "acme-shop"
  role    = "roles/alloydb.databaseUser"
  member  = "serviceAccount:orders-api@acme-shop.iam.gserviceaccount.com"
}

# roles/serviceusage.serviceUsageConsumer: Private Service Connect: the proxy's Admin API calls bill the service account's project, which needs serviceusage.services.use.
resource "google_project_iam_member" "orders_api_acme_shop_serviceusage_serviceusageconsumer" {
  project = "acme-shop"
  role    = "roles/serviceusage.serviceUsageConsumer"
  member  = "serviceAccount:orders-api@acme-shop.iam.gserviceaccount.com"
}

# arn:aws:sts::123456789012:assumed-role/reports/fedcred.reports.reporter uses its federated token directly: grant it access on each resource it uses
# as the member "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/subject/arn:aws:sts::123456789012:assumed-role/reports/fedcred.reports.reporter".

# The AlloyDB Auth Proxy logs in as orders-api@acme-shop.iam; the IAM user must exist in the cluster. It starts
# with no privileges: GRANT what the application needs as a database administrator.
resource "google_alloydb_user" "orders_orders_api_acme_shop_iam" {
  cluster   = "projects/acme-shop/locations/asia-northeast1/clusters/orders"
  user_id   = "orders-api@acme-shop.iam"
  user_type = "ALLOYDB_IAM_USER"
}

# arn:aws:iam::123456789012:role/shop-orders-api: IRSA: only the named ServiceAccounts' tokens may assume it. No permission policy: GetCallerIdentity needs none.
resource "aws_iam_role" "shop_orders_api" {
  name               = "shop-orders-api"
  path               = "/"
  description        = "fedcred: Google Workload Identity Federation"
  assume_role_policy = <<-JSON
    {
      "Statement": [
        {
          "Action": "sts:AssumeRoleWithWebIdentity",
          "Condition": {
            "StringEquals": {
              "${var.oidc_provider}:aud": "sts.amazonaws.com",
              "${var.oidc_provider}:sub": [
                "system:serviceaccount:shop-staging:orders-api",
                "system:serviceaccount:shop:orders-api"
              ]
            }
          },
          "Effect": "Allow",
          "Principal": {
            "Federated": "arn:aws:iam::123456789012:oidc-provider/${var.oidc_provider}"
          },
          "Sid": "FedcredIrsa"
        }
      ],
      "Version": "2012-10-17"
    }
  JSON
}

# arn:aws:iam::123456789012:role/team/reports: IRSA: only the named ServiceAccounts' tokens may assume it. No permission policy: GetCallerIdentity needs none.
resource "aws_iam_role" "reports" {
  name               = "reports"
  path               = "/team/"
  description        = "fedcred: Google Workload Identity Federation"
  assume_role_policy = <<-JSON
    {
      "Statement": [
        {
          "Action": "sts:AssumeRoleWithWebIdentity",
          "Condition": {
            "StringEquals": {
              "${var.oidc_provider}:aud": "sts.amazonaws.com",
              "${var.oidc_provider}:sub": [
                "system:serviceaccount:reports:reporter"
              ]
            }
          },
          "Effect": "Allow",
          "Principal": {
            "Federated": "arn:aws:iam::123456789012:oidc-provider/${var.oidc_provider}"
          },
          "Sid": "FedcredIrsa"
        }
      ],
      "Version": "2012-10-17"
    }
  JSON
}
