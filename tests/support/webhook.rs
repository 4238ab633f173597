//! The admission webhook in tests: served in-process on 127.0.0.1 as `fedcred controller`
//! serves it, and registered with the real API server for one test namespace.

use std::sync::mpsc;
use std::time::Duration;

use fedcred::webhook::{self, CertBundle};
use fedcred_core::inject::InjectConfig;
use serde_json::json;

use super::{TestNamespace, kubectl};

/// The webhook server, running on its own thread and runtime so that the blocking kubectl
/// calls of the tests never stall it. Stops when dropped.
pub struct Server {
    pub port: u16,
    pub certs: CertBundle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts it with a fresh CA, injecting `fedcred_image` as the metadata sidecar.
    pub fn start(fedcred_image: &str) -> Self {
        Self::start_with(fedcred_image, webhook::ServeOptions::default())
    }

    /// [`Server::start`] with its connection settings.
    pub fn start_with(fedcred_image: &str, options: webhook::ServeOptions) -> Self {
        let fedcred_image = fedcred_image.to_owned();
        let certs = webhook::generate(&["127.0.0.1".to_owned()]).unwrap();
        let tls = webhook::server_config(&certs.cert_pem, &certs.key_pem).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = super::kube_client().await;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                // As `fedcred controller` runs it: lookups served from a watched cache.
                let (cache, watch) = webhook::watch_credentials(client.clone(), None);
                tokio::spawn(watch);
                let router = webhook::router(
                    webhook::Webhook::new(client, InjectConfig::new(fedcred_image))
                        .with_cache(cache),
                );
                webhook::serve(listener, tls, router, options, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let port = port_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Server {
            port,
            certs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A MutatingWebhookConfiguration that sends the opted-in pods of one namespace to
/// `https://127.0.0.1:PORT/mutate`, configured as the chart configures it. Without a `caBundle`
/// the controller serving the webhook fills it in. Deleted when dropped.
pub struct Registration {
    pub name: String,
}

impl Registration {
    /// Waits (up to a minute) until the controller has written the caBundle, so the API
    /// server can call the webhook.
    pub fn wait_for_ca_bundle(&self) {
        super::wait_until(Duration::from_secs(60), || {
            let out = kubectl(
                &[
                    "get",
                    "mutatingwebhookconfiguration",
                    &self.name,
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ],
                None,
            );
            out.ok && !out.stdout.trim().is_empty()
        });
    }

    /// A registration for a controller about to serve the webhook on a free loopback port,
    /// and the controller arguments that serve it there with `fedcred_image` injected.
    pub fn for_controller(ns: &TestNamespace, fedcred_image: &str) -> (Registration, Vec<String>) {
        let port = super::free_port();
        let registration = Registration::create(ns, port, None);
        let args = vec![
            "--webhook-address".to_owned(),
            format!("127.0.0.1:{port}"),
            "--webhook-dns-names".to_owned(),
            "127.0.0.1".to_owned(),
            "--webhook-configuration".to_owned(),
            registration.name.clone(),
            "--fedcred-image".to_owned(),
            fedcred_image.to_owned(),
        ];
        (registration, args)
    }

    pub fn create(ns: &TestNamespace, port: u16, ca_pem: Option<&str>) -> Registration {
        use base64::Engine as _;
        let name = format!("fedcred-test-{}", ns.name);
        kubectl(
            &[
                "label",
                "namespace",
                &ns.name,
                &format!("fedcred-test/webhook={}", ns.name),
            ],
            None,
        )
        .success();
        let mut client = json!({"url": format!("https://127.0.0.1:{port}/mutate")});
        if let Some(ca) = ca_pem {
            client["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.fedcred.io",
                "clientConfig": client,
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced",
                }],
                "objectSelector": {"matchLabels": {"fedcred.io/inject": "true"}},
                "namespaceSelector": {"matchLabels": {"fedcred-test/webhook": ns.name}},
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        });
        kubectl(&["create", "-f", "-"], Some(&config.to_string())).success();
        Registration { name }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

/// `fedcred controller` watching `ns`, serving its webhook on a free loopback port registered
/// for `ns` without a `caBundle`: the controller fills it in, as it does for the chart's
/// configuration.
pub fn controller_with_webhook(
    ns: &TestNamespace,
    cloud: &super::cloud::Cloud,
    identity: &str,
    fedcred_image: &str,
) -> (Registration, super::controller::ControllerProcess) {
    controller_with_webhook_and(ns, cloud, identity, fedcred_image, &[])
}

/// [`controller_with_webhook`] with more controller arguments (proxy images, endpoints).
pub fn controller_with_webhook_and(
    ns: &TestNamespace,
    cloud: &super::cloud::Cloud,
    identity: &str,
    fedcred_image: &str,
    extra: &[&str],
) -> (Registration, super::controller::ControllerProcess) {
    let (registration, mut args) = Registration::for_controller(ns, fedcred_image);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = super::controller::ControllerProcess::start(&ns.name, cloud, identity, &args);
    (registration, controller)
}

/// Waits (up to 30 s) until the API server calls the webhook for `ns`: a dry-run of `pod`
/// (opted in) naming a missing FederatedCredential is then refused by the webhook with that
/// name. The webhook's configuration takes a moment to reach the API server's watch.
pub fn wait_for_webhook(ns: &TestNamespace, pod: &serde_json::Value) {
    let mut probe = pod.clone();
    probe["metadata"]["annotations"]["fedcred.io/credential"] = json!("no-such-credential");
    super::wait_until(Duration::from_secs(30), || {
        let out = ns.kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(&probe.to_string()),
        );
        !out.ok && out.stderr.contains("no-such-credential")
    });
}

impl Server {
    /// A TLS connection to the server that trusts its CA, for what reqwest will not send.
    pub async fn raw_tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use base64::Engine as _;
        let b64: String = self
            .certs
            .ca_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }
}
