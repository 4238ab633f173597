//! The webhook's certificates kept in a Secret on the real API server: created once, kept,
//! renewed when the names change or the CA nears its end, written once when two replicas
//! race, and the CA kept as the `caBundle` of a MutatingWebhookConfiguration.

mod support;

use std::collections::BTreeMap;

use fedcred::webhook::certs::{self, CertSettings};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use support::TestNamespace;

/// A MutatingWebhookConfiguration that can never match anything: its object selector needs
/// a label no object carries, and its failure policy ignores an unreachable URL anyway.
/// Deleted when dropped.
struct Configuration {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
}

impl Configuration {
    async fn create(client: &Client, name: &str) -> Self {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let webhook = |n: &str| MutatingWebhook {
            name: format!("{n}.{name}.fedcred.io"),
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            failure_policy: Some("Ignore".to_owned()),
            client_config: WebhookClientConfig {
                url: Some("https://127.0.0.1:1/mutate".to_owned()),
                ..WebhookClientConfig::default()
            },
            object_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "fedcred.io/never-matches".to_owned(),
                    name.to_owned(),
                )])),
                ..LabelSelector::default()
            }),
            rules: Some(Vec::new()),
            ..MutatingWebhook::default()
        };
        let config = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![webhook("a"), webhook("b")]),
        };
        api.create(&PostParams::default(), &config).await.unwrap();
        Configuration {
            api,
            name: name.to_owned(),
        }
    }

    async fn ca_bundles(&self) -> Vec<Option<String>> {
        let config = self.api.get(&self.name).await.unwrap();
        config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .map(|b| String::from_utf8(b.0).unwrap())
            })
            .collect()
    }
}

impl Drop for Configuration {
    fn drop(&mut self) {
        // Also on a failed assertion: kubectl, as Drop cannot wait for the async client.
        let _ = support::kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ],
            None,
        );
    }
}

fn settings(namespace: &str, configuration: &str, names: &[&str]) -> CertSettings {
    CertSettings {
        namespace: namespace.to_owned(),
        secret: "fedcred-webhook-tls".to_owned(),
        webhook_configuration: configuration.to_owned(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    }
}

async fn secret(client: &Client, namespace: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get("fedcred-webhook-tls")
        .await
        .unwrap()
}

/// The owner references of the Secret.
async fn owners(client: &Client, namespace: &str) -> Vec<OwnerReference> {
    secret(client, namespace)
        .await
        .metadata
        .owner_references
        .unwrap_or_default()
}

async fn data_of(client: &Client, namespace: &str, key: &str) -> String {
    data(&secret(client, namespace).await, key)
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_created_kept_renewed_and_trusted() {
    let ns = TestNamespace::new("certs");
    let client = support::kube_client().await;
    let configuration = Configuration::create(&client, &format!("fedcred-{}", ns.name)).await;
    let first_names = settings(&ns.name, &configuration.name, &["a.example.svc"]);

    // First: the Secret is created with the four keys and the CA is trusted.
    let first = certs::ensure(&client, &first_names).await.unwrap();
    let stored = secret(&client, &ns.name).await;
    for key in [certs::CA_CRT, certs::CA_KEY, certs::TLS_CRT, certs::TLS_KEY] {
        assert!(!data(&stored, key).is_empty(), "{key} is missing");
    }
    assert_eq!(data(&stored, certs::CA_CRT), first.ca_pem);
    assert_eq!(data(&stored, certs::TLS_CRT), first.cert_pem);
    assert_eq!(
        configuration.ca_bundles().await,
        vec![Some(first.ca_pem.clone()); 2]
    );

    // Second: nothing changes.
    let again = certs::ensure(&client, &first_names).await.unwrap();
    assert_eq!(again.ca_pem, first.ca_pem);
    assert_eq!(again.cert_pem, first.cert_pem);
    assert_eq!(again.key_pem, first.key_pem);
    let unchanged = secret(&client, &ns.name).await;
    assert_eq!(
        unchanged.metadata.resource_version,
        stored.metadata.resource_version
    );

    // Other names: a new serving certificate under the same CA.
    let other_names = settings(&ns.name, &configuration.name, &["b.example.svc"]);
    let renamed = certs::ensure(&client, &other_names).await.unwrap();
    assert_eq!(renamed.ca_pem, first.ca_pem);
    assert_ne!(renamed.cert_pem, first.cert_pem);
    assert_eq!(
        secret(&client, &ns.name)
            .await
            .metadata
            .annotations
            .unwrap()[certs::NAMES],
        "b.example.svc"
    );

    // A serving pair from another CA written into the Secret by hand: the API server, which
    // trusts our CA, would refuse it, so it is replaced under our CA.
    let foreign = fedcred::webhook::generate(&["b.example.svc".to_owned()]).unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let mut edited = secret(&client, &ns.name).await;
    let data = edited.data.as_mut().unwrap();
    for (key, value) in [
        (certs::TLS_CRT, &foreign.cert_pem),
        (certs::TLS_KEY, &foreign.key_pem),
    ] {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    secrets
        .replace("fedcred-webhook-tls", &PostParams::default(), &edited)
        .await
        .unwrap();
    let repaired = certs::ensure(&client, &other_names).await.unwrap();
    assert_eq!(repaired.ca_pem, first.ca_pem);
    assert_ne!(repaired.cert_pem, foreign.cert_pem);
    assert_eq!(
        data_of(&client, &ns.name, certs::TLS_CRT).await,
        repaired.cert_pem
    );
    assert!(fedcred::webhook::tls::trusted_for(
        &first.ca_pem,
        &repaired.cert_pem,
        &other_names.names,
        Timestamp::now()
    ));

    // The CA within 90 days of its end: everything renewed, and the new CA trusted.
    let later = Timestamp::now() + SignedDuration::from_hours(24 * 300);
    let renewed = certs::ensure_at(&client, &other_names, later)
        .await
        .unwrap();
    assert_ne!(renewed.ca_pem, first.ca_pem);
    assert_ne!(renewed.cert_pem, renamed.cert_pem);
    assert_eq!(
        configuration.ca_bundles().await,
        vec![Some(renewed.ca_pem.clone()); 2]
    );
    fedcred::webhook::server_config(&renewed.cert_pem, &renewed.key_pem).unwrap();

    drop(configuration);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_end_with_one_secret_and_one_ca() {
    let ns = TestNamespace::new("certs-race");
    let client = support::kube_client().await;
    // No configuration of that name: skipped, not an error.
    let settings = settings(
        &ns.name,
        &format!("fedcred-missing-{}", ns.name),
        &["a.svc"],
    );
    let (a, b) = tokio::join!(
        certs::ensure(&client, &settings),
        certs::ensure(&client, &settings)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.ca_pem, b.ca_pem);
    assert_eq!(a.cert_pem, b.cert_pem);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    let ours: Vec<_> = secrets
        .items
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some("fedcred-webhook-tls"))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(data(ours[0], certs::CA_CRT), a.ca_pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_goes_with_its_configuration() {
    let ns = TestNamespace::new("certs-owner");
    let client = support::kube_client().await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let name = format!("fedcred-{}", ns.name);
    let settings = settings(&ns.name, &name, &["a.svc"]);

    // A Secret written before its configuration existed gets the configuration as its owner
    // once it appears, without new material.
    let early = certs::ensure(&client, &settings).await.unwrap();
    assert_eq!(owners(&client, &ns.name).await, Vec::new());
    let configuration = Configuration::create(&client, &name).await;
    let uid = configuration.api.get(&name).await.unwrap().metadata.uid;
    let kept = certs::ensure(&client, &settings).await.unwrap();
    assert_eq!(kept.ca_pem, early.ca_pem);
    assert_eq!(kept.cert_pem, early.cert_pem);
    let owned_by = owners(&client, &ns.name).await;
    assert_eq!(owned_by.len(), 1);
    assert_eq!(owned_by[0].kind, "MutatingWebhookConfiguration");
    assert_eq!(owned_by[0].name, name);
    assert_eq!(Some(owned_by[0].uid.clone()), uid);
    assert_eq!(
        configuration.ca_bundles().await,
        vec![Some(early.ca_pem.clone()); 2]
    );

    // Deleting the configuration (helm uninstall, kubectl delete) removes the Secret through
    // the garbage collector.
    drop(configuration);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while secrets
        .get_opt("fedcred-webhook-tls")
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the garbage collector did not delete the Secret within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A new configuration of the name gets a new CA in a new Secret it owns.
    let configuration = Configuration::create(&client, &name).await;
    let uid = configuration.api.get(&name).await.unwrap().metadata.uid;
    let renewed = certs::ensure(&client, &settings).await.unwrap();
    assert_ne!(renewed.ca_pem, early.ca_pem);
    let owned_by = owners(&client, &ns.name).await;
    assert_eq!(owned_by.len(), 1);
    assert_eq!(Some(owned_by[0].uid.clone()), uid);
    assert_eq!(
        configuration.ca_bundles().await,
        vec![Some(renewed.ca_pem.clone()); 2]
    );
}

/// A client of the webhook port trusting only `ca_pem`.
fn trusting(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_renewed_certificates_without_a_restart() {
    use fedcred::webhook::{self, ReloadingCert};

    let ns = TestNamespace::new("certs-reload");
    let client = support::kube_client().await;
    let missing = format!("fedcred-missing-{}", ns.name);
    let settings = settings(&ns.name, &missing, &["127.0.0.1"]);
    // Issued 300 days ago: still valid, but the CA is within 90 days of its end.
    let earlier = Timestamp::now() - SignedDuration::from_hours(24 * 300);
    let first = certs::ensure_at(&client, &settings, earlier).await.unwrap();
    let cert = ReloadingCert::new(&first).unwrap();
    let tls = webhook::reloading_server_config(cert.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/healthz", listener.local_addr().unwrap());
    let router = webhook::router(webhook::Webhook::new(
        client.clone(),
        fedcred_core::inject::InjectConfig::new("ghcr.io/example/fedcred:test"),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webhook::serve(
        listener,
        tls,
        router,
        webhook::ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let status = |ca: String, url: String| async move {
        trusting(&ca).get(url).send().await.map(|r| r.status())
    };
    assert_eq!(
        status(first.ca_pem.clone(), url.clone()).await.unwrap(),
        200
    );

    // Now everything is renewed; once set, the next handshake presents the new certificate.
    let renewed = certs::ensure(&client, &settings).await.unwrap();
    assert_ne!(renewed.ca_pem, first.ca_pem);
    cert.set(&renewed).unwrap();
    assert_eq!(
        status(renewed.ca_pem.clone(), url.clone()).await.unwrap(),
        200
    );
    assert!(status(first.ca_pem.clone(), url.clone()).await.is_err());

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
