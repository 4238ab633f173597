//! Pod-local ports: what the pod declares, and free ones for the injected servers.
//!
//! All containers of a pod share one network namespace, so an injected listener must avoid
//! every `containerPort` of the pod and every other injected listener. Undeclared ports cannot
//! be seen; the defaults are chosen to be unusual. The choice is deterministic: start from a
//! default and step up, so the same pod always gets the same ports.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

/// Ports the pod's own containers and init containers declare, with the first container that
/// declares each (for messages).
pub(super) fn declared(pod: &Pod) -> BTreeMap<u16, String> {
    let mut ports = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else {
        return ports;
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for container in containers {
        for port in container.ports.iter().flatten() {
            if let Ok(number) = u16::try_from(port.container_port) {
                ports
                    .entry(number)
                    .or_insert_with(|| container.name.clone());
            }
        }
    }
    ports
}

/// Ports in use so far; [`Taken::claim_from`] hands out the next free one.
#[derive(Debug, Default)]
pub(super) struct Taken(BTreeSet<u16>);

impl Taken {
    pub(super) fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        Taken(ports.into_iter().collect())
    }

    /// The first free port at or above `start` (never 0), now taken; `None` when none is left.
    pub(super) fn claim_from(&mut self, start: u16) -> Option<u16> {
        let port = (start.max(1)..=u16::MAX).find(|p| !self.0.contains(p))?;
        self.0.insert(port);
        Some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_over_taken_ports_and_remembers_its_own() {
        let mut taken = Taken::new([8988, 8989, 9801]);
        assert_eq!(taken.claim_from(8988), Some(8990));
        assert_eq!(taken.claim_from(8988), Some(8991));
        assert_eq!(taken.claim_from(9801), Some(9802));
        assert_eq!(taken.claim_from(9801), Some(9803));
    }

    #[test]
    fn runs_out_at_the_top() {
        let mut taken = Taken::new([u16::MAX]);
        assert_eq!(taken.claim_from(u16::MAX), None);
        assert_eq!(taken.claim_from(0), Some(1));
    }

    #[test]
    fn declared_ports_name_the_first_container() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "initContainers": [{"name": "init", "ports": [{"containerPort": 9000}]}],
                "containers": [
                    {"name": "app", "ports": [{"containerPort": 8080}, {"containerPort": 9000}]}
                ]
            }
        }))
        .unwrap();
        let ports = declared(&pod);
        assert_eq!(ports.get(&8080).map(String::as_str), Some("app"));
        assert_eq!(ports.get(&9000).map(String::as_str), Some("init"));
    }
}
