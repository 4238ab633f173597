//! Leader election with a `coordination.k8s.io` Lease, so two replicas never both reconcile.
//!
//! The decisions are [`fedcred_core::lease`]'s: a candidate takes the Lease over only when
//! its record has not changed for a lease duration by this replica's own clock, and a leader
//! gives up when it has not renewed within the renew deadline, which is shorter than the lease
//! duration. Every write is a replace with the resourceVersion read, so two candidates cannot
//! both win. Every call to the API server has a deadline: a hung renewal counts as a failed
//! one. A leader that shuts down releases the Lease so a standby takes over at once.

use std::time::Duration;

use fedcred_core::lease::{Observer, Record, Timing};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    pub timing: Timing,
}

/// Why an attempt to take or keep the Lease did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the API server did not answer about Lease {0} in time")]
    TimedOut(String),
    #[error("reading or writing Lease {lease} failed: {source}")]
    Api { lease: String, source: kube::Error },
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    seen: Mutex<Observer>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            seen: Mutex::new(Observer::default()),
        }
    }

    fn api_error(&self, source: kube::Error) -> Error {
        Error::Api {
            lease: self.settings.name.clone(),
            source,
        }
    }

    /// One attempt to take or keep the Lease, within `deadline`. `Ok(true)`: we hold it now.
    pub async fn try_acquire(&self, deadline: Duration) -> Result<bool, Error> {
        match tokio::time::timeout(deadline, self.attempt()).await {
            Ok(result) => result,
            Err(_) => Err(Error::TimedOut(self.settings.name.clone())),
        }
    }

    async fn attempt(&self) -> Result<bool, Error> {
        let s = &self.settings;
        let now = Timestamp::now();
        let spec = |previous: Option<&LeaseSpec>| {
            let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
            let held_by_us =
                previous.and_then(|p| p.holder_identity.as_deref()) == Some(s.identity.as_str());
            LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(s.timing.lease_duration.as_secs() as i32),
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
        let Some(mut lease) = self
            .api
            .get_opt(&s.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(self.api_error(e)),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let may = {
            let mut seen = self.seen.lock().await;
            seen.observe(record(&current), Instant::now().into_std());
            seen.may_acquire(&s.identity, Instant::now().into_std())
        };
        if !may {
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
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let timing = self.settings.timing;
        loop {
            match self.try_acquire(timing.retry_period).await {
                Ok(true) => {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: taking the Lease failed"),
            }
            tokio::time::sleep(timing.retry_period).await;
        }
    }

    /// Renews until leadership is lost: another replica took the Lease, or no renewal
    /// succeeded within the renew deadline (a hung API server counts). Returns at that moment,
    /// before any standby may take over (the fencing margin is lease duration minus renew
    /// deadline).
    pub async fn hold(&self) {
        let timing = self.settings.timing;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep_until(renewed + timing.retry_period).await;
            loop {
                let left = timing
                    .renew_deadline
                    .saturating_sub(renewed.elapsed())
                    .min(timing.retry_period.max(Duration::from_secs(1)));
                if timing.lost(renewed.into_std(), Instant::now().into_std()) || left.is_zero() {
                    tracing::error!(
                        lease = %self.settings.name,
                        "leader election: no renewal within the renew deadline; giving up leadership"
                    );
                    return;
                }
                match self.try_acquire(left).await {
                    Ok(true) => {
                        renewed = Instant::now();
                        break;
                    }
                    Ok(false) => {
                        tracing::error!(lease = %self.settings.name, "leader election: another replica took the Lease");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renewing the Lease failed");
                        tokio::time::sleep(Duration::from_millis(200).min(left)).await;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a standby need not wait for it to expire.
    pub async fn release(&self) {
        let timing = self.settings.timing;
        let release = async {
            let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
                return;
            };
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.settings.identity);
            if !ours {
                return;
            }
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
        };
        if tokio::time::timeout(timing.renew_deadline, release)
            .await
            .is_err()
        {
            tracing::warn!("releasing the Lease timed out; the standby takes over when it expires");
        }
    }
}

/// What the core compares of a Lease.
fn record(spec: &LeaseSpec) -> Record {
    Record {
        holder: spec.holder_identity.clone().unwrap_or_default(),
        lease_duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
        renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
    }
}
