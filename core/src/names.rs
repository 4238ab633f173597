//! Names that are interfaces, and every name derived from a FederatedCredential: the Secret it
//! writes, the STS session it presents, the database user and project of its service account,
//! and the rule that says whether a pod (or a pod template) asks for injection.
//!
//! Each is decided once, here, so that the controller, the webhook, the rollouts and the
//! agent cannot disagree about them.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::FederatedCredential;

/// Pod label that opts a pod in (the webhook's objectSelector); its value must be `true`.
pub const INJECT_LABEL: &str = "fedcred.io/inject";

/// Pod annotation naming the FederatedCredential of the pod's namespace to use.
pub const CREDENTIAL_ANNOTATION: &str = "fedcred.io/credential";

/// Label on everything fedcred manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "fedcred";

/// Label naming the FederatedCredential a Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "fedcred.io/credential";

/// Set to `"false"` on a FederatedCredential (none of its workloads) or on a Deployment,
/// StatefulSet or DaemonSet (that workload only) to leave rollouts to the user.
pub const ROLLOUT_ANNOTATION: &str = "fedcred.io/rollout";

/// The pod-template annotation that carries the hash of the injected settings.
pub const TEMPLATE_ANNOTATION: &str = "fedcred.io/injection-hash";

/// Annotation EKS uses to name a ServiceAccount's IAM role.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// Audience of ServiceAccount tokens AWS STS accepts.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// The Secret a resource writes its token to: `spec.secret.name`, else the resource's name.
pub fn secret_name(fc: &FederatedCredential) -> String {
    fc.spec
        .secret
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| fc.metadata.name.clone().unwrap_or_default())
}

/// The FederatedCredential a pod or pod template asks for, from its labels and annotations:
/// `Some(name)` when it carries `fedcred.io/inject: "true"`, with the trimmed value of
/// `fedcred.io/credential` (empty when the annotation is missing or blank, which the webhook
/// refuses with an explanation). `None`: not opted in.
pub fn requested_credential<'a>(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&'a BTreeMap<String, String>>,
) -> Option<&'a str> {
    let opted_in = labels
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "true");
    opted_in.then(|| {
        annotations
            .and_then(|a| a.get(CREDENTIAL_ANNOTATION))
            .map_or("", |name| name.trim())
    })
}

/// Whether `name` can name an object: a DNS subdomain (RFC 1123), as the API server requires.
pub fn is_object_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `name` can name a namespace: a DNS label (RFC 1123) of at most 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_object_name(name)
}

/// The AlloyDB and Cloud SQL PostgreSQL IAM database user of a service account: its email
/// without `.gserviceaccount.com` (`app@my-project.iam`).
pub fn db_user(service_account: &str) -> Option<String> {
    service_account
        .strip_suffix(".gserviceaccount.com")
        .map(str::to_owned)
}

/// The Cloud SQL for MySQL IAM database user of a service account: its name before the `@`.
pub fn mysql_db_user(service_account: &str) -> Option<String> {
    service_account
        .split_once('@')
        .map(|(name, _)| name.to_owned())
        .filter(|name| !name.is_empty())
}

/// The parts of an AlloyDB instance URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceUri<'a> {
    pub project: &'a str,
    pub region: &'a str,
    pub cluster: &'a str,
    pub instance: &'a str,
}

/// Splits `projects/P/locations/R/clusters/C/instances/I` (query options ignored); `None` for
/// anything else.
pub fn instance_uri(uri: &str) -> Option<InstanceUri<'_>> {
    let path = uri.split('?').next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let [
        "projects",
        project,
        "locations",
        region,
        "clusters",
        cluster,
        "instances",
        instance,
    ] = parts[..]
    else {
        return None;
    };
    Some(InstanceUri {
        project,
        region,
        cluster,
        instance,
    })
}

/// The project ID in a service-account email, when the email carries one.
pub fn project_id(service_account: &str) -> Option<String> {
    let domain = service_account.split_once('@')?.1;
    let project = domain
        .strip_suffix(".iam.gserviceaccount.com")
        .or_else(|| domain.strip_suffix(".appspot.gserviceaccount.com"))
        .or_else(|| {
            (domain == "appspot.gserviceaccount.com")
                .then(|| service_account.split('@').next().unwrap_or(""))
        })?;
    (!project.is_empty()).then(|| project.to_owned())
}

/// Deterministic STS session name: `fedcred.NAMESPACE` or `fedcred.NAMESPACE.SERVICEACCOUNT`,
/// at most 64 characters of `[\w+=,.@-]`. Longer names keep a readable prefix of 31
/// characters and end in 128 bits of a SHA-256 of the whole, so no tenant can search for a
/// name that collides with another's (a trust policy may match on `sts:RoleSessionName`).
pub fn session_name(namespace: &str, service_account: Option<&str>) -> String {
    let full = match service_account {
        Some(sa) => format!("fedcred.{namespace}.{sa}"),
        None => format!("fedcred.{namespace}"),
    };
    let clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 64 {
        return clean;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash = crate::encode::hex(&digest[..16]);
    format!("{}-{hash}", &clean[..31])
}

/// Whether `arn` is an IAM role ARN (`arn:PARTITION:iam::ACCOUNT:role/NAME`).
pub fn is_role_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name.len() <= 576
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-/".contains(c))
        })
}

/// Whether `region` has the shape of an AWS region code (`us-east-1`, `us-gov-west-1`, …).
pub fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.len() <= 4
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `audience` is a Workload Identity provider's full resource name.
pub fn is_audience(audience: &str) -> bool {
    let Some(rest) = audience.strip_prefix("//iam.googleapis.com/projects/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let id = |s: &str| {
        (4..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    matches!(
        parts.as_slice(),
        [number, "locations", "global", "workloadIdentityPools", pool, "providers", provider]
            if (1..=20).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit()) && id(pool) && id(provider)
    )
}

/// Whether `email` is a Google service-account email.
pub fn is_service_account_email(email: &str) -> bool {
    let Some((account, domain)) = email.split_once('@') else {
        return false;
    };
    let account_ok = (1..=63).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let domain_ok = domain == "developer.gserviceaccount.com"
        || domain == "appspot.gserviceaccount.com"
        || domain
            .strip_suffix(".iam.gserviceaccount.com")
            .is_some_and(|project| {
                !project.is_empty()
                    && project.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
            });
    account_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_session(s: &str) -> bool {
        (2..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    }

    #[test]
    fn session_names_are_stable_per_namespace_identity() {
        assert_eq!(
            session_name("shop", Some("orders-api")),
            "fedcred.shop.orders-api"
        );
        assert_eq!(session_name("analytics", None), "fedcred.analytics");
        assert_ne!(session_name("shop", Some("a")), session_name("shop", None));
    }

    #[test]
    fn a_long_session_name_ends_in_128_bits_of_hash() {
        // A 32-bit hash lets one tenant search for a name that collides with another's.
        let name = session_name(&"n".repeat(63), Some(&"s".repeat(200)));
        assert_eq!(name.len(), 64);
        let (_, hash) = name.rsplit_once('-').unwrap();
        assert_eq!(hash.len(), 32, "{name}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }

    #[test]
    fn long_session_names_stay_valid_and_distinct() {
        let ns = "n".repeat(63);
        let a = session_name(&ns, Some(&"a".repeat(253)));
        let b = session_name(&ns, Some(&format!("{}b", "a".repeat(252))));
        assert!(valid_session(&a), "{a}");
        assert!(valid_session(&b), "{b}");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.starts_with("fedcred.nnn"));
    }

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::123456789012:role/shop-orders-api",
            "arn:aws:iam::123456789012:role/path/to/role",
            "arn:aws-cn:iam::123456789012:role/x",
            "arn:aws-us-gov:iam::123456789012:role/a+b=c,d.e@f_g",
        ] {
            assert!(is_role_arn(ok), "{ok}");
        }
        for bad in [
            "",
            "arn:aws:iam::123456789012:user/alice",
            "arn:aws:iam::1234:role/x",
            "arn:aws:sts::123456789012:assumed-role/x/y",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam:us-east-1:123456789012:role/x",
            "arn:aws:iam::123456789012:role/has space",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn regions() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "ap-northeast-1",
            "cn-north-1",
            "eu-central-2",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in ["", "us", "us-east", "US-EAST-1", "us-east-x", "us--1"] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn audiences_and_emails() {
        assert!(is_audience(
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop"
        ));
        // The CRD allows 1 to 20 digits of project number.
        assert!(!is_audience(&format!(
            "//iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop",
            "1".repeat(21)
        )));
        assert!(is_service_account_email(
            "a-b@my-project.iam.gserviceaccount.com"
        ));
        assert!(is_service_account_email(
            "123-compute@developer.gserviceaccount.com"
        ));
        assert!(!is_service_account_email("alice@example.com"));
    }

    #[test]
    fn db_user_and_project_come_from_the_email() {
        assert_eq!(
            db_user("orders-api@acme-shop.iam.gserviceaccount.com").as_deref(),
            Some("orders-api@acme-shop.iam")
        );
        assert_eq!(
            project_id("orders-api@acme-shop.iam.gserviceaccount.com").as_deref(),
            Some("acme-shop")
        );
        assert_eq!(
            mysql_db_user("orders-api@acme-shop.iam.gserviceaccount.com").as_deref(),
            Some("orders-api")
        );
        assert_eq!(mysql_db_user("no-at-sign"), None);
    }

    #[test]
    fn an_instance_uri_splits_into_its_parts_and_nothing_else_does() {
        let parts =
            instance_uri("projects/acme/locations/us-east4/clusters/orders/instances/primary?x=1")
                .unwrap();
        assert_eq!(
            (parts.project, parts.region, parts.cluster, parts.instance),
            ("acme", "us-east4", "orders", "primary")
        );
        assert_eq!(
            instance_uri("projects/acme/locations/us-east4/clusters/orders"),
            None
        );
        assert_eq!(instance_uri("acme:us-east4:orders"), None);
        assert_eq!(
            project_id("acme-shop@appspot.gserviceaccount.com").as_deref(),
            Some("acme-shop")
        );
        assert_eq!(
            project_id("123-compute@developer.gserviceaccount.com"),
            None
        );
        assert_eq!(db_user("alice@example.com"), None);
    }

    #[test]
    fn only_the_label_opts_in_and_the_annotation_names_the_credential() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let labels = map(&[(INJECT_LABEL, "true")]);
        let named = map(&[(CREDENTIAL_ANNOTATION, " orders-db ")]);
        assert_eq!(
            requested_credential(Some(&labels), Some(&named)),
            Some("orders-db")
        );
        assert_eq!(requested_credential(Some(&labels), None), Some(""));
        let off = map(&[(INJECT_LABEL, "True")]);
        assert_eq!(requested_credential(Some(&off), Some(&named)), None);
        assert_eq!(requested_credential(None, Some(&named)), None);
        assert!(is_object_name("orders-db.v2"));
        assert!(!is_object_name("orders-db/status"));
        assert!(!is_object_name("-x"));
    }
}
