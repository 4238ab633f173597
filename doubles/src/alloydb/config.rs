//! What the AlloyDB doubles are configured with: the instances that exist (with the addresses
//! the Admin API reports for them), the service accounts allowed to connect, where both servers
//! listen and the PostgreSQL server accepted connections are relayed to.
//!
//! Plain data, (de)serializable as the optional `alloydb` section of the `fedcred-doubles`
//! config, e.g.
//!
//! ```json
//! {"instances": [{"uri": "projects/p/locations/r/clusters/c/instances/i", "psc_dns_name": "localhost"}],
//!  "service_accounts": ["app@p.iam.gserviceaccount.com"],
//!  "postgres": "127.0.0.1:15432"}
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The port the AlloyDB Auth Proxy and the connectors always dial on an instance.
pub const SERVER_PROXY_PORT: u16 = 5433;

/// Everything the AlloyDB doubles decide with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlloyDbConfig {
    /// Instances that exist.
    pub instances: Vec<InstanceConfig>,
    /// Service accounts (emails) with `roles/alloydb.client` on every instance: they may fetch
    /// connection info and client certificates, and log in as their IAM database user.
    pub service_accounts: Vec<String>,
    /// Address of the Admin API (plain HTTP); port 0 picks a free one.
    pub admin_listen: SocketAddr,
    /// Address of the instance's server-side proxy (TLS 1.3, client certificates). Clients
    /// always dial port [`SERVER_PROXY_PORT`].
    pub instance_listen: SocketAddr,
    /// The PostgreSQL server that accepted connections are relayed to.
    pub postgres: Option<SocketAddr>,
}

impl Default for AlloyDbConfig {
    fn default() -> Self {
        AlloyDbConfig {
            instances: Vec::new(),
            service_accounts: Vec::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            instance_listen: SocketAddr::from(([127, 0, 0, 1], SERVER_PROXY_PORT)),
            postgres: None,
        }
    }
}

impl AlloyDbConfig {
    /// Adds an instance.
    pub fn instance(mut self, instance: InstanceConfig) -> Self {
        self.instances.push(instance);
        self
    }

    /// Allows `email` to connect.
    pub fn service_account(mut self, email: &str) -> Self {
        self.service_accounts.push(email.to_owned());
        self
    }

    /// The instance named `name` (`projects/P/locations/R/clusters/C/instances/I`).
    pub fn find_instance(&self, name: &str) -> Option<&InstanceConfig> {
        self.instances.iter().find(|i| i.uri == name)
    }

    /// Whether a cluster (`projects/P/locations/R/clusters/C`) has an instance here.
    pub fn has_cluster(&self, cluster: &str) -> bool {
        self.instances
            .iter()
            .any(|i| i.cluster().is_some_and(|c| c == cluster))
    }

    /// Names the server certificate must carry: every address an instance is reached by.
    pub fn server_names(&self) -> Vec<String> {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        for instance in &self.instances {
            for name in [
                &instance.ip_address,
                &instance.public_ip_address,
                &instance.psc_dns_name,
            ]
            .into_iter()
            .flatten()
            {
                let name = name.trim_end_matches('.').to_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

/// One AlloyDB instance and the addresses `connectionInfo` reports for it. Each address the
/// client picks (private IP by default, `--public-ip`, `--psc`) must lead to the instance
/// double's listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// `projects/P/locations/R/clusters/C/instances/I`.
    pub uri: String,
    /// Private IP, `ipAddress`.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// `publicIpAddress`.
    #[serde(default)]
    pub public_ip_address: Option<String>,
    /// Private Service Connect DNS name, `pscDnsName`.
    #[serde(default)]
    pub psc_dns_name: Option<String>,
    /// `instanceUid`.
    #[serde(default = "default_uid")]
    pub uid: String,
}

fn default_uid() -> String {
    "00000000-0000-4000-8000-000000000001".to_owned()
}

impl InstanceConfig {
    /// An instance reached through Private Service Connect at `psc_dns_name`.
    pub fn psc(uri: &str, psc_dns_name: &str) -> Self {
        InstanceConfig {
            uri: uri.to_owned(),
            ip_address: None,
            public_ip_address: None,
            psc_dns_name: Some(psc_dns_name.to_owned()),
            uid: default_uid(),
        }
    }

    /// `projects/P/locations/R/clusters/C`, when the URI is well formed.
    pub fn cluster(&self) -> Option<&str> {
        let (cluster, _) = split_instance(&self.uri)?;
        Some(cluster)
    }
}

/// Splits `projects/P/locations/R/clusters/C/instances/I` into the cluster name and `I`.
pub fn split_instance(name: &str) -> Option<(&str, &str)> {
    let (cluster, instance) = name.rsplit_once("/instances/")?;
    (is_cluster(cluster) && is_segment(instance)).then_some((cluster, instance))
}

/// Whether `name` is `projects/P/locations/R/clusters/C`.
pub fn is_cluster(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    matches!(
        parts.as_slice(),
        ["projects", p, "locations", r, "clusters", c]
            if [p, r, c].iter().all(|s| is_segment(s))
    )
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "projects/p/locations/r/clusters/c/instances/i";

    #[test]
    fn names_split_into_cluster_and_instance() {
        assert_eq!(
            split_instance(URI),
            Some(("projects/p/locations/r/clusters/c", "i"))
        );
        for bad in [
            "projects/p/locations/r/clusters/c",
            "projects/p/locations/r/clusters/c/instances/",
            "projects/p/locations/r/clusters/c/instances/i/x",
            "projects/p/regions/r/clusters/c/instances/i",
            "projects/p/locations/r/clusters/c/instances/i:x",
        ] {
            assert_eq!(split_instance(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_json_with_defaults_and_names_every_address() {
        let config: AlloyDbConfig = serde_json::from_str(&format!(
            r#"{{"instances":[{{"uri":"{URI}","psc_dns_name":"x.alloydb-psc.goog.","public_ip_address":"127.0.0.1"}}],
                "service_accounts":["a@p.iam.gserviceaccount.com"]}}"#
        ))
        .unwrap();
        assert_eq!(config.instance_listen.port(), SERVER_PROXY_PORT);
        assert!(config.has_cluster("projects/p/locations/r/clusters/c"));
        assert!(!config.has_cluster("projects/p/locations/r/clusters/d"));
        assert_eq!(
            config.server_names(),
            ["localhost", "127.0.0.1", "x.alloydb-psc.goog"]
        );
    }
}
