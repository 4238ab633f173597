//! What the Cloud SQL doubles are configured with: the instances that exist (their connection
//! names, engines and the addresses `connectSettings` reports), the service accounts allowed
//! to connect, where the Admin API listens and the PostgreSQL server accepted connections are
//! relayed to.
//!
//! Plain data, (de)serializable, e.g.
//!
//! ```json
//! {"instances": [{"connection_name": "p:europe-west1:orders", "psc_dns_name": "localhost"}],
//!  "service_accounts": ["app@p.iam.gserviceaccount.com"],
//!  "postgres": "127.0.0.1:15432"}
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The port the Cloud SQL Auth Proxy and the connectors always dial on an instance.
pub const SERVER_PROXY_PORT: u16 = 3307;

/// Everything the Cloud SQL doubles decide with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudSqlConfig {
    /// Instances that exist.
    pub instances: Vec<CloudSqlInstance>,
    /// Service accounts (emails) with `roles/cloudsql.client` and `roles/cloudsql.instanceUser`
    /// on every instance: they may read connect settings, get ephemeral certificates and log
    /// in as their IAM database user.
    pub service_accounts: Vec<String>,
    /// Address of the Admin API (plain HTTP); port 0 picks a free one.
    pub admin_listen: SocketAddr,
    /// The PostgreSQL server that accepted connections to `POSTGRES_*` instances are relayed
    /// to.
    pub postgres: Option<SocketAddr>,
    /// The MySQL-compatible server that accepted connections to `MYSQL_*` instances are
    /// relayed to.
    pub mysql: Option<SocketAddr>,
}

impl Default for CloudSqlConfig {
    fn default() -> Self {
        CloudSqlConfig {
            instances: Vec::new(),
            service_accounts: Vec::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            postgres: None,
            mysql: None,
        }
    }
}

impl CloudSqlConfig {
    /// Adds an instance.
    pub fn instance(mut self, instance: CloudSqlInstance) -> Self {
        self.instances.push(instance);
        self
    }

    /// Allows `email` to connect.
    pub fn service_account(mut self, email: &str) -> Self {
        self.service_accounts.push(email.to_owned());
        self
    }

    /// The instance `name` of `project`, as the Admin API's URLs name it.
    pub fn find(&self, project: &str, name: &str) -> Option<&CloudSqlInstance> {
        self.instances.iter().find(|i| {
            i.parts()
                .is_some_and(|p| p.project == project && p.name == name)
        })
    }
}

/// One Cloud SQL instance: its connection name, engine and the addresses `connectSettings`
/// reports. Whichever the client picks (public IP by default, `--private-ip`, `--psc`) must
/// lead to `listen`, where its server-side proxy runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSqlInstance {
    /// `project:region:instance`.
    pub connection_name: String,
    /// `databaseVersion`, e.g. `POSTGRES_16` or `MYSQL_8_0` (PostgreSQL and MySQL engines are
    /// served).
    #[serde(default = "default_version")]
    pub database_version: String,
    /// `ipAddresses[type=PRIMARY]`.
    #[serde(default)]
    pub public_ip_address: Option<String>,
    /// `ipAddresses[type=PRIVATE]`.
    #[serde(default)]
    pub private_ip_address: Option<String>,
    /// `pscEnabled` with this `dnsName` (and `dnsNames` entry).
    #[serde(default)]
    pub psc_dns_name: Option<String>,
    /// Where the instance's server-side proxy listens: port [`SERVER_PROXY_PORT`] on an address
    /// the reported ones lead to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_version() -> String {
    "POSTGRES_16".to_owned()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], SERVER_PROXY_PORT))
}

/// The three parts of a connection name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionName<'a> {
    pub project: &'a str,
    pub region: &'a str,
    pub name: &'a str,
}

/// Splits `project:region:instance`; a domain-scoped project (`example.com:p`) keeps its colon.
pub fn parse_connection_name(name: &str) -> Option<ConnectionName<'_>> {
    let (rest, instance) = name.rsplit_once(':')?;
    let (project, region) = rest.rsplit_once(':')?;
    let fine = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    (fine(project) && fine(region) && fine(instance) && !region.contains(['.', ':'])).then_some(
        ConnectionName {
            project,
            region,
            name: instance,
        },
    )
}

impl CloudSqlInstance {
    /// An instance with a public IP address.
    pub fn public(connection_name: &str, ip: &str) -> Self {
        CloudSqlInstance {
            connection_name: connection_name.to_owned(),
            database_version: default_version(),
            public_ip_address: Some(ip.to_owned()),
            private_ip_address: None,
            psc_dns_name: None,
            listen: default_listen(),
        }
    }

    /// An instance reached through Private Service Connect at `psc_dns_name`.
    pub fn psc(connection_name: &str, psc_dns_name: &str) -> Self {
        CloudSqlInstance {
            public_ip_address: None,
            psc_dns_name: Some(psc_dns_name.to_owned()),
            ..Self::public(connection_name, "")
        }
    }

    /// Project, region and instance name, when the connection name is well formed.
    pub fn parts(&self) -> Option<ConnectionName<'_>> {
        parse_connection_name(&self.connection_name)
    }

    /// Names the server certificate carries besides its `project:instance` common name.
    pub fn server_names(&self) -> Vec<String> {
        let mut names = vec![self.listen.ip().to_string()];
        for name in [
            &self.public_ip_address,
            &self.private_ip_address,
            &self.psc_dns_name,
        ]
        .into_iter()
        .flatten()
        {
            let name = name.trim_end_matches('.').to_owned();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_split_into_three_parts() {
        assert_eq!(
            parse_connection_name("p:europe-west1:orders"),
            Some(ConnectionName {
                project: "p",
                region: "europe-west1",
                name: "orders"
            })
        );
        assert_eq!(
            parse_connection_name("example.com:p:us-east4:i").map(|c| c.project),
            Some("example.com:p")
        );
        for bad in [
            "p:r",
            "p::i",
            ":r:i",
            "p:r:",
            "p:r:i/x",
            "projects/p/instances/i",
        ] {
            assert_eq!(parse_connection_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_json_with_defaults_and_names_every_address() {
        let config: CloudSqlConfig = serde_json::from_str(
            r#"{"instances":[{"connection_name":"p:r:i","psc_dns_name":"x.sql.goog."}],
                "service_accounts":["a@p.iam.gserviceaccount.com"]}"#,
        )
        .unwrap();
        let instance = &config.instances[0];
        assert_eq!(instance.listen.port(), SERVER_PROXY_PORT);
        assert_eq!(instance.database_version, "POSTGRES_16");
        assert_eq!(instance.server_names(), ["127.0.0.1", "x.sql.goog"]);
        assert!(config.find("p", "i").is_some());
        assert!(config.find("p", "other").is_none());
    }
}
