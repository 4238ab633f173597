//! Leader election with a coordination.k8s.io Lease, so two replicas never both reconcile.
//!
//! The holder renews the Lease every `renew_every`; a candidate takes it over only when its
//! `renewTime` is older than `lease_duration`. Every write is a replace with the
//! resourceVersion read, so two candidates cannot both win. A leader that cannot renew within
//! the lease duration stops leading (the process exits and restarts), and a leader that shuts
//! down releases the Lease so a standby takes over at once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// Whether `lease` may be taken by `identity` at `now`. Pure.
pub fn can_acquire(lease: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = Duration::from_secs(lease.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    match &lease.renew_time {
        Some(MicroTime(renewed)) => *renewed + duration < now,
        None => true,
    }
}

#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// One attempt to take or keep the Lease. `Ok(true)`: we hold it now.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let s = &self.settings;
        let spec = |previous: Option<&LeaseSpec>| {
            let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
            let held_by_us =
                previous.and_then(|p| p.holder_identity.as_deref()) == Some(s.identity.as_str());
            LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(s.lease_duration.as_secs() as i32),
                acquire_time: if held_by_us {
                    previous.and_then(|p| p.acquire_time.clone())
                } else {
                    Some(MicroTime(now))
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(if held_by_us || previous.is_none() {
                    transitions
                } else {
                    transitions + 1
                }),
                ..LeaseSpec::default()
            }
        };
        match self.api.get_opt(&s.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(s.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec(None)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.clone().unwrap_or_default();
                if !can_acquire(&current, &s.identity, now) {
                    return Ok(false);
                }
                lease.spec = Some(spec(Some(&current)));
                match self
                    .api
                    .replace(&s.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: reading the Lease failed"),
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
    }

    /// Renews until renewal has failed for a whole lease duration; returns when leadership is
    /// lost.
    pub async fn hold(&self) {
        let mut last_success = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_success = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leader election: another replica took the Lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewing the Lease failed");
                    if last_success.elapsed() >= self.settings.lease_duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a standby need not wait for it to expire.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await {
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.settings.identity);
            if ours {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                if let Err(e) = self
                    .api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
                {
                    tracing::warn!(error = %e, "releasing the Lease failed; the standby takes over when it expires");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        assert!(!can_acquire(
            &lease(Some("a"), "2026-01-01T00:00:00Z"),
            "b",
            now
        ));
        assert!(can_acquire(
            &lease(Some("a"), "2026-01-01T00:00:00Z"),
            "a",
            now
        ));
    }

    #[test]
    fn an_expired_or_released_lease_can_be_taken() {
        let now: Timestamp = "2026-01-01T00:00:16Z".parse().unwrap();
        assert!(can_acquire(
            &lease(Some("a"), "2026-01-01T00:00:00Z"),
            "b",
            now
        ));
        assert!(can_acquire(&lease(None, "2026-01-01T00:00:15Z"), "b", now));
        assert!(can_acquire(&LeaseSpec::default(), "b", now));
    }
}
