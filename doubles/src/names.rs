//! Google resource names the doubles parse and build: a Workload Identity provider's full
//! resource name (the STS `audience`), its pool, and the IAM member strings
//! (`principal://…`, `principalSet://…`, `serviceAccount:…`) that bindings are written in.
//!
//! Pure string handling; no policy decisions.

const IAM_HOST: &str = "//iam.googleapis.com/";

/// A parsed provider name:
/// `//iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderName {
    pub project_number: String,
    pub pool: String,
    pub provider: String,
}

impl ProviderName {
    /// Parses a provider's full resource name the way Google STS accepts it as an audience:
    /// numeric project, `global` location, pool and provider ids of 4–32 lowercase letters,
    /// digits and hyphens.
    pub fn parse(audience: &str) -> Option<ProviderName> {
        let rest = audience.strip_prefix(IAM_HOST)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [
            "projects",
            project,
            "locations",
            "global",
            "workloadIdentityPools",
            pool,
            "providers",
            provider,
        ] = parts[..]
        else {
            return None;
        };
        let is_id = |s: &str| {
            (4..=32).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if project.is_empty() || !project.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !is_id(pool) || !is_id(provider) {
            return None;
        }
        Some(ProviderName {
            project_number: project.to_owned(),
            pool: pool.to_owned(),
            provider: provider.to_owned(),
        })
    }

    /// `iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL`, the part
    /// member strings share.
    pub fn pool_path(&self) -> String {
        format!(
            "iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}",
            self.project_number, self.pool
        )
    }
}

/// The pool part of `audience` (everything before `/providers/`, without the leading `//` and an
/// optional `https:`), whether or not the audience is well formed.
fn pool_path_of(audience: &str) -> String {
    let audience = audience.strip_prefix("https:").unwrap_or(audience);
    let pool = audience
        .split_once("/providers/")
        .map_or(audience, |(pool, _)| pool);
    pool.trim_start_matches('/').to_owned()
}

/// `principal://iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/subject/SUBJECT`
/// for the identity whose `google.subject` is `subject` (for AWS, the caller ARN), in the pool
/// of provider `audience`.
pub fn principal_member(audience: &str, subject: &str) -> String {
    format!("principal://{}/subject/{subject}", pool_path_of(audience))
}

/// `principalSet://…/POOL/attribute.aws_role/ROLE` for every identity of the pool of provider
/// `audience` whose `attribute.aws_role` is `role_arn_attr`
/// (`arn:aws:sts::ACCOUNT:assumed-role/ROLE`).
pub fn role_member(audience: &str, role_arn_attr: &str) -> String {
    attribute_member(audience, "aws_role", role_arn_attr)
}

/// `principalSet://…/POOL/attribute.NAME/VALUE`.
pub fn attribute_member(audience: &str, attribute: &str, value: &str) -> String {
    format!(
        "principalSet://{}/attribute.{attribute}/{value}",
        pool_path_of(audience)
    )
}

/// `principalSet://…/POOL/*`: every identity of the pool (seed 000's binding).
pub fn pool_member(audience: &str) -> String {
    format!("principalSet://{}/*", pool_path_of(audience))
}

/// `serviceAccount:EMAIL`.
pub fn service_account_member(email: &str) -> String {
    format!("serviceAccount:{email}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov";

    #[test]
    fn parses_provider_names() {
        let name = ProviderName::parse(AUDIENCE).unwrap();
        assert_eq!(name.project_number, "123456789");
        assert_eq!(name.pool, "aws-pool");
        assert_eq!(name.provider, "aws-prov");
        assert_eq!(
            name.pool_path(),
            "iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/aws-pool"
        );
    }

    #[test]
    fn rejects_malformed_provider_names() {
        for bad in [
            "",
            "aws-pool",
            "https://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov",
            "//iam.googleapis.com/projects/my-project/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov",
            "//iam.googleapis.com/projects/123/locations/us-east1/workloadIdentityPools/aws-pool/providers/aws-prov",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/aws-prov",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/Aws-Pool/providers/aws-prov",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/aws-pool/providers/aws-prov/extra",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/aws-pool",
        ] {
            assert_eq!(ProviderName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn builds_members() {
        let pool =
            "iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/aws-pool";
        assert_eq!(
            principal_member(AUDIENCE, "arn:aws:sts::1:assumed-role/r/s"),
            format!("principal://{pool}/subject/arn:aws:sts::1:assumed-role/r/s")
        );
        assert_eq!(
            role_member(AUDIENCE, "arn:aws:sts::1:assumed-role/r"),
            format!("principalSet://{pool}/attribute.aws_role/arn:aws:sts::1:assumed-role/r")
        );
        assert_eq!(
            role_member(&format!("https:{AUDIENCE}"), "x"),
            role_member(AUDIENCE, "x")
        );
        assert_eq!(pool_member(AUDIENCE), format!("principalSet://{pool}/*"));
        assert_eq!(service_account_member("a@b"), "serviceAccount:a@b");
    }
}
