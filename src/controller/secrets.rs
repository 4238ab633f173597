//! The controller's cache of its Secrets: a [`SecretSummary`] of each by namespace and name,
//! kept from a watch of the Secrets with fedcred's label, and the resources to look at again
//! when one of them changes. The summary is all the decisions read, and a fraction of the
//! object's size (the cache holds one per resource).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fedcred_core::api::FederatedCredential;
use fedcred_core::refresh::cached::CachedCredential;
use fedcred_core::refresh::objects::SecretSummary;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::watch;

type Key = (String, String);

#[derive(Default)]
struct Summaries {
    current: HashMap<Key, SecretSummary>,
    /// What a list in progress has returned so far; it replaces `current` when complete, so
    /// a relist never shows a half-filled cache.
    relisting: Option<HashMap<Key, SecretSummary>>,
}

/// What the controller knows of its Secrets, shared by its reconciles.
#[derive(Clone)]
pub struct SecretCache {
    summaries: Arc<RwLock<Summaries>>,
    listed: watch::Receiver<bool>,
}

impl SecretCache {
    /// The summary of the Secret `namespace/name`, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<SecretSummary> {
        let summaries = self.summaries.read().unwrap_or_else(|e| e.into_inner());
        summaries
            .current
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Waits until the Secrets have been listed once; `Err` when the watch has ended first.
    pub async fn wait_until_ready(&self) -> Result<(), ()> {
        let mut listed = self.listed.clone();
        listed.wait_for(|l| *l).await.map(|_| ()).map_err(|_| ())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let summaries = self.summaries.read().unwrap_or_else(|e| e.into_inner());
        summaries.current.len()
    }
}

/// Keeps a [`SecretCache`] from watch events.
struct Writer {
    summaries: Arc<RwLock<Summaries>>,
    listed: watch::Sender<bool>,
}

impl Writer {
    fn new() -> (Writer, SecretCache) {
        let summaries = Arc::new(RwLock::new(Summaries::default()));
        let (listed, ready) = watch::channel(false);
        let cache = SecretCache {
            summaries: summaries.clone(),
            listed: ready,
        };
        (Writer { summaries, listed }, cache)
    }

    /// Applies one watch event and returns the resources that control the Secrets it touched.
    fn apply(&self, event: Event<Secret>) -> Vec<ObjectRef<CachedCredential>> {
        let mut summaries = self.summaries.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => {
                summaries.relisting = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(secret) => {
                let owners = controllers(&secret);
                if let Some(key) = key(&secret) {
                    let summary = SecretSummary::of(&secret);
                    summaries
                        .relisting
                        .get_or_insert_with(HashMap::new)
                        .insert(key, summary);
                }
                owners
            }
            Event::InitDone => {
                if let Some(listed) = summaries.relisting.take() {
                    summaries.current = listed;
                }
                self.listed.send_replace(true);
                Vec::new()
            }
            Event::Apply(secret) => {
                if let Some(key) = key(&secret) {
                    summaries.current.insert(key, SecretSummary::of(&secret));
                }
                controllers(&secret)
            }
            Event::Delete(secret) => {
                if let Some(key) = key(&secret) {
                    summaries.current.remove(&key);
                }
                controllers(&secret)
            }
        }
    }
}

fn key(secret: &Secret) -> Option<Key> {
    Some((secret.namespace()?, secret.meta().name.clone()?))
}

/// The FederatedCredentials named as the Secret's controller (at most one).
fn controllers(secret: &Secret) -> Vec<ObjectRef<CachedCredential>> {
    let namespace = secret.namespace().unwrap_or_default();
    let kind = FederatedCredential::kind(&());
    let api_version = FederatedCredential::api_version(&());
    secret
        .owner_references()
        .iter()
        .filter(|r| r.controller == Some(true) && r.kind == kind && r.api_version == api_version)
        .map(|r| ObjectRef::new(&r.name).within(&namespace))
        .collect()
}

/// Watches the Secrets `api` lists with `selector`, keeping the returned cache; the stream
/// yields the resources to reconcile because their Secret changed and must be polled.
pub fn watch(
    api: Api<Secret>,
    selector: &str,
) -> (
    SecretCache,
    impl Stream<Item = ObjectRef<CachedCredential>> + Send + 'static,
) {
    let (writer, cache) = Writer::new();
    let triggers = watcher(api, watcher::Config::default().labels(selector))
        .default_backoff()
        .flat_map(move |event| {
            let owners = match event {
                Ok(event) => writer.apply(event),
                Err(error) => {
                    tracing::warn!("watching Secrets failed, retrying: {error}");
                    Vec::new()
                }
            };
            futures::stream::iter(owners)
        });
    (cache, triggers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn secret(name: &str, owner: Option<(&str, bool)>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                owner_references: owner.map(|(fc, controller)| {
                    vec![OwnerReference {
                        api_version: FederatedCredential::api_version(&()).into_owned(),
                        kind: FederatedCredential::kind(&()).into_owned(),
                        name: fc.into(),
                        uid: format!("uid-{fc}"),
                        controller: Some(controller),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[tokio::test]
    async fn a_relist_replaces_the_cache_only_when_complete() {
        let (writer, cache) = Writer::new();
        writer.apply(Event::Init);
        writer.apply(Event::InitApply(secret("a", Some(("a", true)))));
        assert_eq!(
            cache.get("shop", "a"),
            None,
            "not before the list completes"
        );
        writer.apply(Event::InitDone);
        cache.wait_until_ready().await.unwrap();
        assert_eq!(
            cache.get("shop", "a").and_then(|s| s.controller_uid),
            Some("uid-a".into())
        );
        // A relist that no longer finds `a` but finds `b`.
        writer.apply(Event::Init);
        writer.apply(Event::InitApply(secret("b", Some(("b", true)))));
        assert!(cache.get("shop", "a").is_some(), "the old view until done");
        writer.apply(Event::InitDone);
        assert_eq!(cache.get("shop", "a"), None);
        assert!(cache.get("shop", "b").is_some());
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn not_ready_until_listed_and_an_ended_watch_says_so() {
        let (writer, cache) = Writer::new();
        writer.apply(Event::Apply(secret("a", Some(("a", true)))));
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            cache.wait_until_ready(),
        );
        assert!(waiting.await.is_err(), "ready before any list");
        drop(writer);
        assert_eq!(cache.wait_until_ready().await, Err(()));
    }

    #[test]
    fn changes_and_deletions_wake_the_controlling_resource_only() {
        let (writer, cache) = Writer::new();
        let woken = writer.apply(Event::Apply(secret("a", Some(("orders", true)))));
        assert_eq!(woken, vec![ObjectRef::new("orders").within("shop")]);
        assert!(cache.get("shop", "a").is_some());
        let woken = writer.apply(Event::Delete(secret("a", Some(("orders", true)))));
        assert_eq!(woken, vec![ObjectRef::new("orders").within("shop")]);
        assert_eq!(cache.get("shop", "a"), None);
        assert!(
            writer
                .apply(Event::Apply(secret("b", Some(("orders", false)))))
                .is_empty(),
            "an owner that does not control it"
        );
        assert!(writer.apply(Event::Apply(secret("c", None))).is_empty());
        let mut other_kind = secret("d", Some(("orders", true)));
        other_kind.metadata.owner_references.as_mut().unwrap()[0].kind = "Deployment".into();
        assert!(writer.apply(Event::Apply(other_kind)).is_empty());
    }
}
