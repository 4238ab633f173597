//! The FederatedCredential controller: keeps a fresh token in each resource's Secret and
//! explains itself in status.
//!
//! Decisions live in [`decide`] and the objects written in [`objects`]; this module is the
//! adapter that reads the cache, asks the exchange engine, and writes the Secret and status
//! with server-side apply under field manager `fedcred`. It never writes a spec.

pub mod decide;
pub mod objects;
pub mod rollout;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use crate::api::{FederatedCredential, FederatedCredentialStatus};
use crate::error::ExchangeError;
use crate::exchange::{Defaults, Engine, Reuse, plan};
use crate::metrics::Metrics;
use decide::{Decision, Schedule, Trigger};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "fedcred";

/// Routine refreshes are reported as events at most this often per resource; first issues,
/// repairs and spec changes are reported each time, within the controller-wide budget below.
const ROUTINE_EVENT_INTERVAL: Duration = Duration::from_secs(3600);

/// Controller-wide budget for Normal events, so that thousands of resources becoming Ready at
/// once do not add thousands of writes. Warnings are not limited (the recorder folds repeats
/// into event series).
const EVENT_BURST: f64 = 50.0;
const EVENTS_PER_SECOND: f64 = 5.0;

/// A token bucket: `burst` events at once, refilled at `rate` per second.
#[derive(Debug)]
pub struct EventBudget {
    tokens: f64,
    last: Instant,
}

impl EventBudget {
    pub fn new(now: Instant) -> Self {
        EventBudget {
            tokens: EVENT_BURST,
            last: now,
        }
    }

    /// Takes one event from the budget if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * EVENTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(EVENT_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Errors that make a reconcile retry: the API server refused or failed a write.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading Secret {namespace}/{name} failed: {source}")]
    SecretRead {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing Secret {namespace}/{name} failed: {source}")]
    SecretWrite {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing the status of FederatedCredential {namespace}/{name} failed: {source}")]
    StatusWrite {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::SecretRead { .. } => "SecretRead",
            Error::SecretWrite { .. } => "SecretWrite",
            Error::StatusWrite { .. } => "StatusWrite",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub engine: Arc<Engine>,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    secrets: Store<Secret>,
    last_routine_event: Mutex<HashMap<ObjectRef<FederatedCredential>, Instant>>,
    event_budget: Mutex<EventBudget>,
}

fn schedule_of(status: Option<&FederatedCredentialStatus>) -> Schedule {
    let Some(s) = status else {
        return Schedule::default();
    };
    Schedule {
        observed_generation: s.observed_generation,
        expires_at: s.expires_at.as_ref().map(|t| t.0),
        next_refresh: s.next_refresh_time.as_ref().map(|t| t.0),
        failure_count: s.failure_count,
    }
}

fn until(t: Timestamp, now: Timestamp) -> Duration {
    // Wake a second late rather than early: times are whole seconds.
    t.duration_since(now)
        .unsigned_abs()
        .saturating_add(Duration::from_secs(1))
        .max(Duration::from_secs(1))
}

async fn write_status(
    api: &Api<FederatedCredential>,
    fc: &FederatedCredential,
    status: FederatedCredentialStatus,
) -> Result<(), Error> {
    if fc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "fedcred.io/v1alpha1",
        "kind": "FederatedCredential",
        "status": status,
    });
    api.patch_status(
        &fc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::StatusWrite {
        namespace: fc.namespace().unwrap_or_default(),
        name: fc.name_any(),
        source,
    })
}

impl Context {
    async fn event(
        &self,
        fc: &FederatedCredential,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &fc.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }

    /// Whether a Normal event about a refresh may be published now.
    async fn refresh_event_allowed(&self, fc: &FederatedCredential, trigger: Trigger) -> bool {
        if trigger == Trigger::Due && !self.routine_event_due(fc).await {
            return false;
        }
        self.event_budget.lock().await.allow(Instant::now())
    }

    async fn routine_event_due(&self, fc: &FederatedCredential) -> bool {
        let mut last = self.last_routine_event.lock().await;
        let key = ObjectRef::from_obj(fc);
        let due = last
            .get(&key)
            .is_none_or(|t| t.elapsed() >= ROUTINE_EVENT_INTERVAL);
        if due {
            last.insert(key, Instant::now());
        }
        due
    }
}

/// One reconcile: decide, and if a refresh is due, obtain a token and write it.
pub async fn reconcile(fc: Arc<FederatedCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = fc.namespace().unwrap_or_default();
    let name = fc.name_any();
    if fc.meta().deletion_timestamp.is_some() {
        // The Secret is owned by the resource; the garbage collector removes it.
        ctx.metrics.forget(&namespace, &name);
        ctx.last_routine_event
            .lock()
            .await
            .remove(&ObjectRef::from_obj(fc.as_ref()));
        return Ok(Action::await_change());
    }
    let api: Api<FederatedCredential> = Api::namespaced(ctx.client.clone(), &namespace);
    // Rollouts come first and never hold up a token: a failure is reported and retried soon.
    let (fc, rollout_failed) = match rollouts(&api, fc, &ctx).await {
        Ok(fc) => (fc, false),
        Err(fc) => (fc, true),
    };
    let action = refresh(&api, fc, &ctx).await?;
    Ok(if rollout_failed {
        Action::requeue(ROLLOUT_RETRY)
    } else {
        action
    })
}

/// How soon a failed rollout is tried again.
const ROLLOUT_RETRY: Duration = Duration::from_secs(30);

/// Rolls the workloads that use `fc` when its injected settings changed (see [`rollout`])
/// and records the hash. Returns the resource as the rest of the reconcile must see it (with
/// the hash just recorded), or unchanged in `Err` when the rollout failed.
async fn rollouts(
    api: &Api<FederatedCredential>,
    fc: Arc<FederatedCredential>,
    ctx: &Context,
) -> Result<Arc<FederatedCredential>, Arc<FederatedCredential>> {
    let hash = match rollout::plan(&fc) {
        rollout::Plan::Nothing => return Ok(fc),
        rollout::Plan::Record(hash) => hash,
        rollout::Plan::Roll(hash) => {
            match rollout::roll(&ctx.client, &fc, &hash).await {
                Ok(rolled) => {
                    if !rolled.patched.is_empty() || !rolled.skipped.is_empty() {
                        let mut note = format!(
                            "injected settings changed; rolled {}",
                            list_or_none(&rolled.patched)
                        );
                        if !rolled.skipped.is_empty() {
                            note.push_str(&format!(
                                "; left {} alone ({}: \"false\")",
                                rolled.skipped.join(", "),
                                rollout::ROLLOUT_ANNOTATION
                            ));
                        }
                        tracing::info!(namespace = %fc.namespace().unwrap_or_default(), name = %fc.name_any(), %note, "rollout");
                        ctx.event(&fc, EventType::Normal, "RolledOut", note, "Rollout")
                            .await;
                    }
                }
                Err(message) => {
                    tracing::warn!(namespace = %fc.namespace().unwrap_or_default(), name = %fc.name_any(), error = %message, "rollout failed");
                    ctx.event(
                        &fc,
                        EventType::Warning,
                        "RolloutFailed",
                        format!("{message}; retrying in {}s", ROLLOUT_RETRY.as_secs()),
                        "Rollout",
                    )
                    .await;
                    return Err(fc);
                }
            }
            hash
        }
    };
    let mut status = fc.status.clone().unwrap_or_default();
    status.injection_hash = Some(hash);
    if let Err(e) = write_status(api, &fc, status.clone()).await {
        tracing::warn!(error = %e, "recording the injection hash failed");
        return Err(fc);
    }
    // Keep the spec and metadata this reconcile started from, with the status just written.
    let mut next = FederatedCredential::clone(&fc);
    next.status = Some(status);
    Ok(Arc::new(next))
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

/// Decides whether the token needs refreshing, and if so obtains it and writes it.
async fn refresh(
    api: &Api<FederatedCredential>,
    fc: Arc<FederatedCredential>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let namespace = fc.namespace().unwrap_or_default();
    let name = fc.name_any();
    let secret_name = objects::secret_name(&fc);
    // Until the Secrets have been listed once, a missing Secret means "not seen yet", not
    // "deleted": deciding then would re-exchange every token after each restart.
    if ctx.secrets.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let found = ctx
        .secrets
        .get(&ObjectRef::new(&secret_name).within(&namespace));
    let mut state = objects::secret_state(&fc, found.as_deref());
    if state == decide::SecretState::Missing {
        // The cache holds only Secrets with fedcred's label: ask whether the name is taken by
        // one without it (listing by name reads metadata only, and needs no `get`).
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let listed = secrets
            .list_metadata(&ListParams::default().fields(&format!("metadata.name={secret_name}")))
            .await
            .map_err(|source| Error::SecretRead {
                namespace: namespace.clone(),
                name: secret_name.clone(),
                source,
            })?;
        state = objects::uncached_secret_state(&fc, listed.items.first().map(|s| &s.metadata));
    }
    let now = google_now();
    let schedule = schedule_of(fc.status.as_ref());

    let trigger = match decide::decide(now, fc.metadata.generation, &schedule, &state) {
        Decision::Wait(at) => {
            if let Some(exp) = schedule.expires_at {
                ctx.metrics
                    .set_expiry(&namespace, &name, exp.as_second() - now.as_second());
            }
            return Ok(Action::requeue(until(at, now)));
        }
        Decision::Conflict => {
            let status = objects::conflict_status(&fc, now);
            let first = fc.status.as_ref().is_none_or(|s| {
                !s.conditions
                    .iter()
                    .any(|c| c.reason == objects::SECRET_CONFLICT)
            });
            write_status(api, &fc, status).await?;
            if first {
                let note = format!(
                    "Secret {secret_name} exists and is not owned by this FederatedCredential"
                );
                ctx.event(
                    &fc,
                    EventType::Warning,
                    objects::SECRET_CONFLICT,
                    note,
                    "WriteSecret",
                )
                .await;
            }
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Decision::Refresh(trigger) => trigger,
    };

    let key = match plan(&namespace, &fc.spec, &ctx.defaults) {
        Ok(key) => key,
        Err(err) => return fail(api, &fc, ctx, None, err, &schedule).await,
    };
    let renew = fc
        .spec
        .secret
        .as_ref()
        .map(|s| s.renew_before_percentage)
        .unwrap_or(50);
    let started = Instant::now();
    let result = ctx
        .engine
        .token(
            &key,
            Reuse::RefreshWithin(decide::refresh_share(renew)),
            fc.status
                .as_ref()
                .and_then(|s| s.last_failure_time.as_ref())
                .map(|t| t.0),
        )
        .await;
    let issued = match result {
        Ok(issued) => {
            ctx.metrics.observe_refresh(started.elapsed(), None);
            issued
        }
        Err(err) => {
            ctx.metrics
                .observe_refresh(started.elapsed(), Some(err.reason.as_str()));
            return fail(api, &fc, ctx, Some(&key), err, &schedule).await;
        }
    };

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let desired = objects::desired_secret(&fc, &issued);
    secrets
        .patch(
            &secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|source| Error::SecretWrite {
            namespace: namespace.clone(),
            name: secret_name.clone(),
            source,
        })?;

    let unit = decide::unit_from(&format!(
        "{}/{}",
        fc.uid().unwrap_or_default(),
        issued.expires_at
    ));
    let next = decide::refresh_at(issued.issued_at, issued.expires_at, renew, unit)
        .max(now + Duration::from_secs(1));
    write_status(
        api,
        &fc,
        objects::success_status(&fc, &key, &issued, next, now),
    )
    .await?;
    ctx.metrics.set_expiry(
        &namespace,
        &name,
        issued.expires_at.as_second() - now.as_second(),
    );
    tracing::info!(%namespace, %name, trigger = trigger.as_str(), expires_at = %issued.expires_at, next_refresh = %next, "token written");
    if ctx.refresh_event_allowed(&fc, trigger).await {
        let note = format!(
            "Secret {secret_name} refreshed ({}); valid until {}",
            trigger.as_str(),
            issued.expires_at
        );
        ctx.event(&fc, EventType::Normal, "TokenRefreshed", note, "Refresh")
            .await;
    }
    Ok(Action::requeue(until(next, now)))
}

async fn fail(
    api: &Api<FederatedCredential>,
    fc: &FederatedCredential,
    ctx: &Context,
    key: Option<&crate::exchange::IdentityKey>,
    err: ExchangeError,
    schedule: &Schedule,
) -> Result<Action, Error> {
    // The moment of the failure, not of the reconcile's start: the retry is spaced from it,
    // and the exchange engine tells this resource's next retry its own failure by it.
    let now = google_now();
    let failures = fc
        .status
        .as_ref()
        .map(|s| s.failure_count)
        .unwrap_or(0)
        .saturating_add(1);
    let unit = decide::unit_from(&format!(
        "{}/retry/{failures}",
        fc.uid().unwrap_or_default()
    ));
    let retry = decide::retry_at(now, failures, schedule.expires_at, unit);
    tracing::warn!(
        namespace = %fc.namespace().unwrap_or_default(),
        name = %fc.name_any(),
        reason = err.reason.as_str(),
        failures,
        retry_at = %retry,
        "refresh failed: {}", err.message
    );
    write_status(api, fc, objects::failure_status(fc, key, &err, retry, now)).await?;
    ctx.event(
        fc,
        EventType::Warning,
        err.reason.as_str(),
        err.message.clone(),
        "Refresh",
    )
    .await;
    Ok(Action::requeue(until(retry, now)))
}

fn google_now() -> Timestamp {
    crate::google::truncate(Timestamp::now())
}

fn error_policy(fc: Arc<FederatedCredential>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: err.metric_label(),
        })
        .inc();
    tracing::warn!(namespace = %fc.namespace().unwrap_or_default(), name = %fc.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// How long triggers for one resource are gathered before it is reconciled: its own Secret
/// and status writes arrive as two watch events, and reconciling between them would read a
/// status older than the Secret and write both again.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Drops what the controller never reads from cached objects: field-manager history and
/// kubectl's copy of the last applied object, which together can double an object's size.
fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Runs the controller until `shutdown` resolves. `concurrency` bounds parallel reconciles.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    namespace: Option<&str>,
    engine: Arc<Engine>,
    defaults: Defaults,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (fcs, secrets_api): (Api<FederatedCredential>, Api<Secret>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let selector = format!("{}={}", objects::MANAGED_BY_LABEL, objects::MANAGED_BY);
    let (secret_store, secret_writer) = reflector::store();
    let secret_events = reflector::reflector(
        secret_writer,
        watcher(secrets_api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .modify(|s: &mut Secret| {
                slim(s);
                objects::forget_data(s);
            }),
    )
    .touched_objects();
    let (fc_store, fc_writer) = reflector::store();
    // Status-only updates (most of them our own) need no reconcile: the schedule is in the
    // requeue, and the store still receives every update.
    let fc_events = reflector::reflector(
        fc_writer,
        watcher(fcs, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(slim),
    )
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        engine: engine.clone(),
        defaults,
        metrics: metrics.clone(),
        secrets: secret_store,
        last_routine_event: Mutex::new(HashMap::new()),
        event_budget: Mutex::new(EventBudget::new(Instant::now())),
    });
    let housekeeping = {
        let fc_store = fc_store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                engine.prune();
                // Resources deleted since: drop their expiry series.
                metrics.retain_resources(|namespace, name| {
                    fc_store
                        .get(&ObjectRef::new(name).within(namespace))
                        .is_some()
                });
            }
        })
    };
    Controller::for_stream(fc_events, fc_store)
        .owns_stream(secret_events)
        .with_config(
            ControllerConfig::default()
                .concurrency(concurrency)
                .debounce(DEBOUNCE),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    housekeeping.abort();
}
