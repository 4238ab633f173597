//! The FederatedCredential controller: keeps a fresh token in each resource's Secret and
//! explains itself in status.
//!
//! What to do is decided in [`fedcred_core::refresh`] and [`fedcred_core::rollout`]; this
//! module observes (the watched caches, the clock), asks the exchange engine, and carries the
//! decisions out with server-side apply under field manager `fedcred`. It never writes a spec.

pub mod rollout;
mod secrets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fedcred_core::api::{FederatedCredential, FederatedCredentialStatus};
use fedcred_core::error::Reason;
use fedcred_core::exchange::{Defaults, IdentityKey};
use fedcred_core::google::truncate;
use fedcred_core::names::{MANAGED_BY, MANAGED_BY_LABEL, ROLLOUT_ANNOTATION, secret_name};
use fedcred_core::refresh::cached::CachedCredential;
use fedcred_core::refresh::changes::SpecChanges;
use fedcred_core::refresh::decide::SecretState;
use fedcred_core::refresh::events::Budgets;
use fedcred_core::refresh::{self, Effects, Next, Observed, Outcome, objects};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use crate::exchange::Engine;
use crate::metrics::Metrics;

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "fedcred";

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
    #[error("the reconcile did not finish within {} s and was abandoned", RECONCILE_DEADLINE.as_secs())]
    Deadline,
}

impl Error {
    /// Every value of [`Error::metric_label`]: the metric starts at 0 for each, so that the
    /// first error is an increase and dashboards see the series before anything fails.
    pub const METRIC_LABELS: [&'static str; 4] =
        ["SecretRead", "SecretWrite", "StatusWrite", "Deadline"];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::SecretRead { .. } => "SecretRead",
            Error::SecretWrite { .. } => "SecretWrite",
            Error::StatusWrite { .. } => "StatusWrite",
            Error::Deadline => "Deadline",
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
    /// Roll the workloads that use a resource when what is injected changes.
    pub rollouts: bool,
    secrets: secrets::SecretCache,
    budgets: Mutex<Budgets<ObjectRef<CachedCredential>>>,
}

/// The current time in whole seconds, as status keeps it.
fn now() -> Timestamp {
    truncate(Timestamp::now())
}

/// How long until `t`, woken a second late rather than early: times are whole seconds.
fn until(t: Timestamp, now: Timestamp) -> Duration {
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
    async fn publish(&self, fc: &FederatedCredential, note: refresh::Note) {
        let allowed = self
            .budgets
            .lock()
            .await
            .allow(note.budget, reference(fc), Instant::now());
        if !allowed {
            return;
        }
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason,
            note: Some(note.message),
            action: note.action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &fc.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }

    /// Carries out `effects` for `fc`: the Secret, then the status, the metric, the log line
    /// and the event; returns when to look again.
    async fn apply(
        &self,
        api: &Api<FederatedCredential>,
        fc: &FederatedCredential,
        effects: Effects,
    ) -> Result<Action, Error> {
        let namespace = fc.namespace().unwrap_or_default();
        let name = fc.name_any();
        if let Some(secret) = &effects.secret {
            let secret_name = secret_name(fc);
            Api::<Secret>::namespaced(self.client.clone(), &namespace)
                .patch(
                    &secret_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(secret),
                )
                .await
                .map_err(|source| Error::SecretWrite {
                    namespace: namespace.clone(),
                    name: secret_name,
                    source,
                })?;
        }
        write_status(api, fc, effects.status).await?;
        if let Some(seconds) = effects.seconds_to_expiry {
            self.metrics.set_expiry(&namespace, &name, seconds);
        }
        match &effects.outcome {
            Outcome::Written {
                trigger,
                expires_at,
                next_refresh,
            } => {
                tracing::info!(%namespace, %name, trigger = trigger.as_str(), %expires_at, %next_refresh, "token written");
            }
            Outcome::Failed {
                error,
                failures,
                retry_at,
            } => {
                tracing::warn!(%namespace, %name, reason = error.reason.as_str(), failures, %retry_at, "refresh failed: {error}");
            }
            Outcome::InPod => {
                tracing::debug!(%namespace, %name, "the exchange happens in the pods");
            }
            Outcome::Conflict => {
                tracing::warn!(%namespace, %name, "the Secret's name is taken by a Secret this resource does not own");
            }
        }
        if let Some(note) = effects.event {
            self.publish(fc, note).await;
        }
        Ok(Action::requeue(until(effects.requeue_at, now())))
    }

    /// What the controller's cache knows of the resource's Secret.
    fn cached_secret(&self, fc: &FederatedCredential) -> SecretState {
        let namespace = fc.namespace().unwrap_or_default();
        let found = self.secrets.get(&namespace, &secret_name(fc));
        objects::secret_state(fc, found.as_ref())
    }

    /// Whether the name of a Secret the cache does not hold is taken. The cache holds only
    /// Secrets with fedcred's label, so before writing a Secret it has not seen, ask whether
    /// one without it has the name (listing by name reads metadata only, and needs no `get`).
    /// The list is served from the API server's watch cache (`resourceVersion=0`), without the
    /// round trip to etcd and the wait for the cache to catch up that a consistent list costs.
    /// It is made right before the write, once per write: not on each look of a resource
    /// waiting for its identity's token, which at scale repeated it several times per resource.
    /// A namesake created in the last moments may be missed, as one created between any check
    /// and the write after it would be.
    async fn uncached_secret(&self, fc: &FederatedCredential) -> Result<SecretState, Error> {
        let namespace = fc.namespace().unwrap_or_default();
        let name = secret_name(fc);
        let listed = Api::<Secret>::namespaced(self.client.clone(), &namespace)
            .list_metadata(
                &ListParams::default()
                    .fields(&format!("metadata.name={name}"))
                    .match_any(),
            )
            .await
            .map_err(|source| Error::SecretRead {
                namespace,
                name,
                source,
            })?;
        Ok(objects::uncached_secret_state(
            fc,
            listed.items.first().map(|s| &s.metadata),
        ))
    }
}

/// One reconcile: rollouts first, then the token.
pub async fn reconcile(cached: Arc<CachedCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cached.meta().deletion_timestamp.is_some() {
        // The Secret is owned by the resource; the garbage collector removes it.
        ctx.metrics
            .forget(&cached.namespace().unwrap_or_default(), &cached.name_any());
        ctx.budgets
            .lock()
            .await
            .routine
            .forget(&reference(&*cached));
        return Ok(Action::await_change());
    }
    let fc = match cached.unpack() {
        Ok(fc) => Arc::new(fc),
        // What the cache packed itself always unpacks; a resource that did not would wait for
        // its next change rather than stop the controller.
        Err(e) => {
            tracing::error!(namespace = %cached.namespace().unwrap_or_default(), name = %cached.name_any(), error = %e, "the cached resource could not be read back; waiting for its next change");
            return Ok(Action::await_change());
        }
    };
    let api: Api<FederatedCredential> =
        Api::namespaced(ctx.client.clone(), &fc.namespace().unwrap_or_default());
    // Rollouts never hold up a token: a failure is reported and retried soon.
    let (fc, unrecorded, rollout_failed) = match rollouts(&api, fc, &ctx).await {
        Ok(Rollouts::Recorded(fc)) => (fc, None, false),
        Ok(Rollouts::Unrecorded(fc, hash)) => (fc, Some(hash), false),
        Err(fc) => (fc, None, true),
    };
    let action = refresh(&api, &fc, unrecorded, &ctx).await?;
    Ok(if rollout_failed {
        Action::requeue(ROLLOUT_RETRY)
    } else {
        action
    })
}

/// How soon a resource whose exchange was not tried ([`Reason::Busy`]) is looked at again: soon,
/// since most such resources wait for a token another resource of the same identity is being
/// issued, and are then answered from the cache; spread over a range so that a crowd turned
/// away together does not come back together.
fn busy_retry() -> Duration {
    Duration::from_millis(rand::random_range(200..600))
}

/// Longest one reconcile may take: the exchange's own deadline and a few API writes.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);

/// [`reconcile`] within [`RECONCILE_DEADLINE`]: a peer that never answers cannot hold a
/// worker for longer.
async fn reconcile_within_deadline(
    fc: Arc<CachedCredential>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    tokio::time::timeout(RECONCILE_DEADLINE, reconcile(fc, ctx))
        .await
        .unwrap_or(Err(Error::Deadline))
}

/// How soon a failed rollout is tried again.
const ROLLOUT_RETRY: Duration = Duration::from_secs(30);

/// What [`rollouts`] leaves for the rest of the reconcile.
enum Rollouts {
    /// The resource as the rest of the reconcile must see it: its hash is recorded (now or
    /// before).
    Recorded(Arc<FederatedCredential>),
    /// Nothing was rolled and the hash is still to be recorded: the refresh writes it with the
    /// status it writes anyway, so a new resource costs one status write, not two.
    Unrecorded(Arc<FederatedCredential>, String),
}

/// Rolls the workloads that use `fc` when its injected settings changed and records the hash.
/// Returns the resource as the rest of the reconcile must see it (with the hash just
/// recorded, or the hash to record when nothing was rolled), or unchanged in `Err` when the
/// rollout failed.
async fn rollouts(
    api: &Api<FederatedCredential>,
    fc: Arc<FederatedCredential>,
    ctx: &Context,
) -> Result<Rollouts, Arc<FederatedCredential>> {
    use fedcred_core::rollout::Plan;
    let hash = match fedcred_core::rollout::plan(&fc) {
        Plan::Nothing => return Ok(Rollouts::Recorded(fc)),
        // Nothing to roll: if the refresh fails before writing, the next reconcile plans the
        // same again, which costs nothing.
        Plan::Record(hash) => return Ok(Rollouts::Unrecorded(fc, hash)),
        Plan::Roll(hash) if !ctx.rollouts => {
            // Rollouts are off, so the controller may not touch workloads: say what to do.
            let note = refresh::Note {
                warning: false,
                reason: "RolloutsOff".to_owned(),
                message: "injected settings changed; rollouts are off, so restart the workloads that use this resource (kubectl rollout restart) for their pods to get them".to_owned(),
                action: "Rollout",
                budget: refresh::events::Budget::Unlimited,
            };
            ctx.publish(&fc, note).await;
            hash
        }
        Plan::Roll(hash) => {
            let note = match rollout::roll(&ctx.client, &fc, &hash).await {
                Ok(rolled) if rolled.patched.is_empty() && rolled.skipped.is_empty() => None,
                Ok(rolled) => {
                    let mut note = format!(
                        "injected settings changed; rolled {}",
                        list_or_none(&rolled.patched)
                    );
                    if !rolled.skipped.is_empty() {
                        note.push_str(&format!(
                            "; left {} alone ({ROLLOUT_ANNOTATION}: \"false\")",
                            rolled.skipped.join(", "),
                        ));
                    }
                    tracing::info!(namespace = %fc.namespace().unwrap_or_default(), name = %fc.name_any(), %note, "rollout");
                    Some(refresh::Note {
                        warning: false,
                        reason: "RolledOut".to_owned(),
                        message: note,
                        action: "Rollout",
                        budget: refresh::events::Budget::Unlimited,
                    })
                }
                Err(error) => {
                    tracing::warn!(namespace = %fc.namespace().unwrap_or_default(), name = %fc.name_any(), %error, "rollout failed");
                    let note = refresh::Note {
                        warning: true,
                        reason: "RolloutFailed".to_owned(),
                        message: format!("{error}; retrying in {}s", ROLLOUT_RETRY.as_secs()),
                        action: "Rollout",
                        budget: refresh::events::Budget::Unlimited,
                    };
                    ctx.publish(&fc, note).await;
                    return Err(fc);
                }
            };
            if let Some(note) = note {
                ctx.publish(&fc, note).await;
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
    Ok(Rollouts::Recorded(Arc::new(next)))
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

/// Observes the resource and its Secret, lets [`refresh::next`] decide, and carries it out,
/// recording `unrecorded` (an injection hash) in the status it writes.
async fn refresh(
    api: &Api<FederatedCredential>,
    fc: &FederatedCredential,
    unrecorded: Option<String>,
    ctx: &Context,
) -> Result<Action, Error> {
    // Until the Secrets have been listed once, a missing Secret means "not seen yet", not
    // "deleted": deciding then would re-exchange every token after each restart.
    if ctx.secrets.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let secret = ctx.cached_secret(fc);
    // Only a failing resource asks: a healthy one keeps its schedule whatever its peers hold.
    let peer_token = fc.status.as_ref().is_some_and(|s| s.failure_count > 0)
        && refresh::identity(fc, &ctx.defaults)
            .is_some_and(|(key, reuse)| ctx.engine.holds(&key, reuse));
    let observed = Observed {
        fc,
        secret,
        now: now(),
        peer_token,
    };
    let mut effects = match refresh::next(&observed, &ctx.defaults) {
        Next::Wait {
            at,
            seconds_to_expiry,
        } => {
            if let Some(seconds) = seconds_to_expiry {
                ctx.metrics.set_expiry(
                    &fc.namespace().unwrap_or_default(),
                    &fc.name_any(),
                    seconds,
                );
            }
            if let Some(hash) = unrecorded {
                let mut status = fc.status.clone().unwrap_or_default();
                status.injection_hash = Some(hash);
                write_status(api, fc, status).await?;
            }
            return Ok(Action::requeue(until(at, observed.now)));
        }
        Next::Write(effects) => *effects,
        Next::Refresh {
            trigger,
            key,
            reuse,
            failed_at,
        } => {
            let started = Instant::now();
            let result = ctx.engine.token(&key, reuse, failed_at).await;
            ctx.metrics.observe_refresh(
                started.elapsed(),
                result.as_ref().err().map(|e| e.reason.as_str()),
            );
            match result {
                Ok(issued) => refresh::issued(&observed, &key, trigger, &issued),
                // Not tried: the namespace's share is in use or the identity's exchange is
                // running; nothing to report, look again soon.
                Err(err) if err.reason == Reason::Busy => {
                    tracing::debug!(namespace = %fc.namespace().unwrap_or_default(), name = %fc.name_any(), "{err}");
                    return Ok(Action::requeue(busy_retry()));
                }
                // The moment of the failure, not of the reconcile's start.
                Err(err) => refresh::failed(
                    &Observed {
                        now: now(),
                        ..observed.clone()
                    },
                    Some(&key),
                    err,
                ),
            }
        }
    };
    if observed.secret == SecretState::Missing
        && effects.secret.is_some()
        && ctx.uncached_secret(fc).await? == SecretState::ForeignOwner
    {
        // The name is taken: what to do with a foreign Secret instead (report, leave it).
        let foreign = Observed {
            secret: SecretState::ForeignOwner,
            now: now(),
            ..observed
        };
        effects = match refresh::next(&foreign, &ctx.defaults) {
            Next::Write(effects) => *effects,
            Next::Wait { at, .. } => return Ok(Action::requeue(until(at, foreign.now))),
            Next::Refresh { .. } => return Ok(Action::requeue(busy_retry())),
        };
    }
    if let Some(hash) = unrecorded {
        effects.status.injection_hash = Some(hash);
    }
    ctx.apply(api, fc, effects).await
}

fn error_policy(fc: Arc<CachedCredential>, err: &Error, ctx: Arc<Context>) -> Action {
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

/// How the controller runs.
pub struct Settings {
    /// Watch only these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// Roll the workloads that use a resource when what is injected changes.
    pub rollouts: bool,
    pub defaults: Defaults,
    pub reporter: Reporter,
    /// Most reconciles at once, over all namespaces.
    pub concurrency: u16,
}

/// What each watch covers: every namespace (`None`) when `namespaces` is empty, otherwise
/// each of them. A watch covers one namespace or all, so that a controller given a few
/// namespaces needs permissions in those only.
pub fn scopes(namespaces: &[String]) -> Vec<Option<&str>> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|ns| Some(ns.as_str())).collect()
    }
}

/// Each scope's share of `concurrency`, at least one: the scopes together reconcile about as
/// many resources at once as one controller of all namespaces would.
fn concurrency_per_scope(concurrency: u16, scopes: usize) -> u16 {
    let scopes = u16::try_from(scopes.max(1)).unwrap_or(u16::MAX);
    concurrency.div_ceil(scopes).max(1)
}

/// Runs the controller until `shutdown` resolves: one kube-runtime controller per scope (see
/// [`scopes`]), each with its own caches, sharing the engine and the metrics.
pub async fn run(
    client: Client,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt as _;
    for reason in Error::METRIC_LABELS {
        drop(
            metrics
                .reconcile_errors
                .get_or_create(&crate::metrics::ReasonLabels { reason }),
        );
    }
    let shutdown = shutdown.shared();
    let scopes = scopes(&settings.namespaces);
    let concurrency = concurrency_per_scope(settings.concurrency, scopes.len());
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for namespace in scopes {
        let (store, controller) = run_scope(
            namespace,
            &settings,
            client.clone(),
            engine.clone(),
            metrics.clone(),
            concurrency,
            shutdown.clone(),
        );
        stores.push(store);
        controllers.push(controller);
    }
    let housekeeping = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            engine.prune();
            // Resources deleted since: drop their expiry series.
            metrics.retain_resources(|namespace, name| {
                let key = ObjectRef::new(name).within(namespace);
                stores.iter().any(|store| store.get(&key).is_some())
            });
        }
    });
    futures::future::join_all(controllers).await;
    housekeeping.abort();
}

/// The controller of one scope (a namespace, or all when `None`): the cache of its
/// FederatedCredentials, and the future that reconciles them until `shutdown`.
fn run_scope<S>(
    namespace: Option<&str>,
    settings: &Settings,
    client: Client,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    concurrency: u16,
    shutdown: S,
) -> (
    Store<CachedCredential>,
    impl std::future::Future<Output = ()> + use<S>,
)
where
    S: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let (fcs, secrets_api): (Api<CachedCredential>, Api<Secret>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let (secret_cache, secret_events) = secrets::watch(secrets_api, &selector);
    // The cache holds each resource packed (`CachedCredential`), unpacked for its reconciles.
    let (fc_store, fc_writer) = reflector::store();
    // Status-only updates (most of them our own) need no reconcile: the schedule is in the
    // requeue, and the store still receives every update.
    let fc_events = reflector::reflector(
        fc_writer,
        watcher(fcs, watcher::Config::default().any_semantic()).default_backoff(),
    );
    let fc_changes = spec_changes(fc_events);
    let recoveries = engine.recoveries();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), settings.reporter.clone()),
        client,
        engine,
        defaults: settings.defaults.clone(),
        metrics,
        rollouts: settings.rollouts,
        secrets: secret_cache,
        budgets: Mutex::new(Budgets::new(Instant::now())),
    });
    let woken = woken_by_recoveries(recoveries, fc_store.clone(), settings.defaults.clone());
    // The watch's resources come in as references without their resource version and uid
    // (see `reference`); the stream of objects the controller takes itself stays empty.
    let run = Controller::for_stream(futures::stream::pending(), fc_store.clone())
        .reconcile_on(fc_changes)
        .reconcile_on(secret_events)
        .reconcile_on(woken)
        .with_config(
            ControllerConfig::default()
                .concurrency(concurrency)
                .debounce(DEBOUNCE),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile_within_deadline, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (fc_store, run)
}

/// How the controller refers to a resource in its queue, its schedule and its budgets: by
/// namespace and name only. kube's reference from an object also carries the resource version
/// and uid, two more strings in each of the schedule's two copies of every resource's entry.
fn reference(fc: &impl Resource) -> ObjectRef<CachedCredential> {
    let meta = fc.meta();
    ObjectRef::new(meta.name.as_deref().unwrap_or_default())
        .within(meta.namespace.as_deref().unwrap_or_default())
}

/// The resources to reconcile from the watch's events: those seen for the first time and those
/// whose spec changed ([`SpecChanges`]). The store receives every event before this.
fn spec_changes<S>(
    events: S,
) -> impl futures::Stream<Item = ObjectRef<CachedCredential>> + Send + 'static
where
    S: futures::Stream<Item = Result<watcher::Event<CachedCredential>, watcher::Error>>
        + Send
        + 'static,
{
    let mut changes = SpecChanges::default();
    events.filter_map(move |event| {
        let passed = match event {
            Ok(watcher::Event::Apply(fc) | watcher::Event::InitApply(fc)) => {
                changes.applied(fc.meta()).then(|| reference(&fc))
            }
            Ok(watcher::Event::Delete(fc)) => {
                changes.deleted(fc.meta());
                None
            }
            Ok(watcher::Event::Init) => {
                changes.relist_started();
                None
            }
            Ok(watcher::Event::InitDone) => {
                changes.relist_done();
                None
            }
            // The watch retries with backoff; the store keeps what it had meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, "watching FederatedCredentials failed; retrying");
                None
            }
        };
        futures::future::ready(passed)
    })
}

/// The resources to look at again when an identity's exchange succeeds after failing: those
/// of that identity still failing, each waiting out its own backoff, which the identity's
/// token now answers without asking Google ([`refresh::decide::unless_a_peer_token`]).
fn woken_by_recoveries(
    recoveries: tokio::sync::broadcast::Receiver<IdentityKey>,
    store: Store<CachedCredential>,
    defaults: Defaults,
) -> impl futures::Stream<Item = ObjectRef<CachedCredential>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(recoveries, |mut recoveries| async move {
        loop {
            match recoveries.recv().await {
                Ok(key) => return Some((key, recoveries)),
                // Those resources wait out their backoff, as without this.
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "recoveries missed");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .flat_map(move |key| {
        let woken: Vec<_> = store
            .state()
            .iter()
            .filter(|cached| cached.failing())
            .filter_map(|cached| cached.unpack().ok())
            .filter(|fc| refresh::identity(fc, &defaults).is_some_and(|(k, _)| k == key))
            .map(|fc| reference(&fc))
            .collect();
        if !woken.is_empty() {
            tracing::info!(
                namespace = %key.namespace,
                identity = %key.describe(),
                resources = woken.len(),
                "the identity's exchange succeeds again; retrying its failing resources now"
            );
        }
        futures::stream::iter(woken)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespaces_is_one_watch_of_all_and_each_listed_namespace_is_its_own() {
        assert_eq!(scopes(&[]), vec![None]);
        let listed = ["shop".to_owned(), "billing".to_owned()];
        assert_eq!(scopes(&listed), vec![Some("shop"), Some("billing")]);
    }

    #[test]
    fn the_scopes_share_the_concurrency_and_each_gets_at_least_one() {
        assert_eq!(concurrency_per_scope(32, 1), 32);
        assert_eq!(concurrency_per_scope(32, 3), 11);
        assert_eq!(concurrency_per_scope(2, 5), 1);
        assert_eq!(concurrency_per_scope(32, 0), 32);
    }
}
