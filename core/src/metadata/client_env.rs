//! The environment that points Google's client libraries at the emulator, for the webhook.
//!
//! Findings (the module doc of [`super`] has the file-by-file evidence):
//! - `GCE_METADATA_HOST` (`host:port`): Go (`cloud.google.com/go/compute/metadata`) sends every
//!   request there and, when it is set, believes it runs on GCE without probing; Java
//!   (`ComputeEngineCredentials`) pings `http://$GCE_METADATA_HOST/` and fetches from it;
//!   Python google-auth fetches from it.
//! - `GCE_METADATA_IP` (`host:port`): Python google-auth's detection ping goes to
//!   `http://$GCE_METADATA_IP/` (default 169.254.169.254, which on AWS is the EC2 instance
//!   metadata service); without it google-auth never detects the emulator. Node's
//!   gcp-metadata also uses it as its base address.
//! - `GCE_METADATA_ROOT` (`host`): the old name of `GCE_METADATA_HOST`, still the fallback in
//!   google-auth and the only name in oauth2client and gcloud's apitools.
//!
//! What must *not* be set: `NO_GCE_CHECK=true` (Python, Java: skip detection),
//! `GOOGLE_APPLICATION_CREDENTIALS` or a gcloud ADC file (both win over the metadata server in
//! every language), `GCE_METADATA_MTLS_MODE=strict` (google-auth then refuses a custom host).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where the emulator listens unless told otherwise: loopback only, on a port no common
/// application or sidecar uses (GKE's own metadata server uses 988; AlloyDB's proxy 5432 and
/// 9091).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8988";

/// Environment variables to inject into every application container of a pod whose emulator
/// listens on `listen` (as given to `--listen`). An unspecified address (`0.0.0.0`, `::`)
/// becomes the loopback address of its family, since that is where clients must connect.
pub fn injected_env(listen: &str) -> Vec<(String, String)> {
    let address = client_address(listen);
    ["GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"]
        .into_iter()
        .map(|name| (name.to_owned(), address.clone()))
        .collect()
}

/// `GOOGLE_CLOUD_PROJECT` when the project is known (the Secret's `project_id`). Java's
/// `ServiceOptions.getDefaultProjectId` reads it first and otherwise asks a hard-coded
/// `metadata.google.internal`, ignoring `GCE_METADATA_HOST`; every other library also honours
/// it.
pub fn project_env(project_id: Option<&str>) -> Vec<(String, String)> {
    project_id
        .filter(|p| !p.is_empty())
        .map(|p| vec![("GOOGLE_CLOUD_PROJECT".to_owned(), p.to_owned())])
        .unwrap_or_default()
}

fn client_address(listen: &str) -> String {
    let listen = listen.trim();
    match listen.parse::<SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            addr.to_string()
        }
        // A host name such as `localhost:8988` is passed through as given.
        Err(_) => listen.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn the_default_listen_address_is_injected_under_every_name() {
        assert_eq!(
            pairs(&injected_env(DEFAULT_LISTEN)),
            vec![
                ("GCE_METADATA_HOST", "127.0.0.1:8988"),
                ("GCE_METADATA_IP", "127.0.0.1:8988"),
                ("GCE_METADATA_ROOT", "127.0.0.1:8988"),
            ]
        );
    }

    #[test]
    fn unspecified_addresses_become_loopback() {
        assert_eq!(injected_env("0.0.0.0:9000")[0].1, "127.0.0.1:9000");
        assert_eq!(injected_env("[::]:9000")[0].1, "[::1]:9000");
        assert_eq!(injected_env("[::1]:9000")[0].1, "[::1]:9000");
        assert_eq!(injected_env(" localhost:8988 ")[0].1, "localhost:8988");
    }

    #[test]
    fn never_switches_off_detection_or_names_a_credentials_file() {
        for (name, _) in injected_env(DEFAULT_LISTEN) {
            assert!(name.starts_with("GCE_METADATA_"), "{name}");
        }
    }

    #[test]
    fn the_project_is_injected_only_when_known() {
        assert_eq!(
            pairs(&project_env(Some("acme-shop"))),
            vec![("GOOGLE_CLOUD_PROJECT", "acme-shop")]
        );
        assert!(project_env(None).is_empty());
        assert!(project_env(Some("")).is_empty());
    }
}
