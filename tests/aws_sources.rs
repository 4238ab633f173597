//! The controller's own AWS identity through each standard source, end to end: the real
//! `fedcred exchange -f` as a child process, with exactly one source configured, against moto
//! (AWS STS), the verifying Google doubles and fakes of the AWS metadata endpoints that insist on
//! the real protocol (IMDSv2 session tokens, the container `Authorization` token).
//!
//! Every source hands out credentials moto issued, so the Google STS double can verify the
//! signature. With `controllerIdentity.roleArn` the exchange chains AssumeRole and Google sees
//! `assumed-role/shop-orders/fedcred.<namespace>`; without it, Google sees the source's own
//! principal, which the CLI learns from GetCallerIdentity.
//!
//! No Kubernetes here: `controllerIdentity` needs none.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use fedcred_doubles::aws_metadata::{ContainerCredentials, Imds, Instance, Seen};
use fedcred_doubles::moto::TemporaryCredentials;
use fedcred_doubles::{Binding, Target, role_member};
use serde_json::json;
use support::cloud::{ASSUMED_ROLE, AUDIENCE, Cloud, ROLE, SA_EMAIL};

/// The namespace of every manifest; the chained session is `fedcred.analytics`.
const NAMESPACE: &str = "analytics";
/// The role every source's credentials belong to: the controller's own.
const CONTROLLER_ROLE: &str = "arn:aws:iam::123456789012:role/fedcred-controller";
/// How Google names sessions of the controller's role (`attribute.aws_role`).
const CONTROLLER_ASSUMED_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/fedcred-controller";
/// What EKS Pod Identity mounts at AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: a ServiceAccount
/// token. Projected token files end without a newline.
const POD_IDENTITY_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZlZGNyZWQifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZmVkY3JlZDpmZWRjcmVkIn0.c2lnbmF0dXJl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_credentials_sign_as_themselves() {
    let scene = Scene::start().await;
    let own = scene.controller_session("from-the-environment").await;

    let out = scene
        .exchange(None)
        .env("AWS_ACCESS_KEY_ID", &own.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &own.secret_access_key)
        .env("AWS_SESSION_TOKEN", &own.session_token)
        .run()
        .await;

    assert_eq!(out.principal(), own.arn);
    assert_eq!(scene.cloud.google.seen_principals(), vec![own.arn]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_identity_token_file_is_exchanged_at_the_sts_endpoint_override() {
    let scene = Scene::start().await;
    let token = scene.dir.file("web-identity-token", POD_IDENTITY_TOKEN);
    // AWS_ENDPOINT_URL_STS is the only way to point the SDK's web identity provider at moto:
    // it builds its own STS client, which knows nothing of aws.stsEndpoint.
    let web_identity = |run: Exchange| {
        run.env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
            .env("AWS_ROLE_ARN", CONTROLLER_ROLE)
            .env("AWS_ROLE_SESSION_NAME", "fedcred-controller-pod")
            .env("AWS_ENDPOINT_URL_STS", scene.cloud.moto.url())
    };

    let chained = web_identity(scene.exchange(Some(ROLE))).run().await;
    assert_eq!(chained.principal(), chained_principal());

    let own = web_identity(scene.exchange(None)).run().await;
    assert_eq!(
        own.principal(),
        format!("{CONTROLLER_ASSUMED_ROLE}/fedcred-controller-pod")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_pod_identity_sends_the_token_file_as_authorization() {
    let scene = Scene::start().await;
    let own = scene.controller_session("eks-pod-identity").await;
    let agent = ContainerCredentials::start(POD_IDENTITY_TOKEN, own)
        .await
        .expect("the container credentials fake starts");
    let token_file = scene.dir.file("eks-pod-identity-token", POD_IDENTITY_TOKEN);

    let out = scene
        .exchange(Some(ROLE))
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.url())
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file)
        .run()
        .await;

    assert_eq!(out.principal(), chained_principal());
    // Served only to the matching Authorization header, and asked exactly once.
    assert_eq!(agent.requests(), vec![credentials_request(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_authorization_token_from_the_environment_is_sent() {
    let scene = Scene::start().await;
    let own = scene.controller_session("ecs-task").await;
    let agent = ContainerCredentials::start("ecs-task-token", own.clone())
        .await
        .expect("the container credentials fake starts");

    let out = scene
        .exchange(None)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.url())
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-task-token")
        .run()
        .await;

    assert_eq!(out.principal(), own.arn);
    assert_eq!(agent.requests(), vec![credentials_request(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_container_token_fails_naming_the_container_source() {
    let scene = Scene::start().await;
    let own = scene.controller_session("ecs-task").await;
    let agent = ContainerCredentials::start("ecs-task-token", own)
        .await
        .expect("the container credentials fake starts");

    let out = scene
        .exchange(Some(ROLE))
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.url())
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "another-task-token")
        .run_expecting_failure()
        .await;

    assert!(
        out.stderr.contains("(AwsCredentialsUnavailable)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("container (ECS task role or EKS Pod Identity"),
        "{}",
        out.stderr
    );
    assert_eq!(agent.requests(), vec![credentials_request(403)]);
    assert_eq!(scene.cloud.google.calls(Target::Sts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_serves_instance_credentials_only_within_a_v2_session() {
    let scene = Scene::start().await;
    let own = scene.controller_session("i-0123456789abcdef0").await;
    let imds = Imds::start(Instance::new("fedcred-controller", own.clone()))
        .await
        .expect("the IMDS fake starts");
    let on_the_instance = |run: Exchange| {
        run.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
            .env("AWS_EC2_METADATA_DISABLED", "false")
    };

    let chained = on_the_instance(scene.exchange(Some(ROLE))).run().await;
    assert_eq!(chained.principal(), chained_principal());

    let seen = imds.requests();
    assert!(imds.tokens_issued() >= 1, "{seen:#?}");
    assert_eq!(imds.credentials_served(), 1, "{seen:#?}");
    // Every read carried a live session token: none was refused, so the SDK never tried
    // IMDSv1, and the first thing it did was ask for a token.
    assert_eq!(imds.refused(), 0, "{seen:#?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert!(
        seen.iter()
            .all(|s| s.status == 200 && (s.method == "PUT") == (s.path == "/latest/api/token")),
        "{seen:#?}"
    );

    let instance_itself = on_the_instance(scene.exchange(None)).run().await;
    assert_eq!(instance_itself.principal(), own.arn);
    assert_eq!(imds.credentials_served(), 2);
    assert_eq!(imds.refused(), 0);
}

fn chained_principal() -> String {
    format!("{ASSUMED_ROLE}/fedcred.{NAMESPACE}")
}

fn credentials_request(status: u16) -> Seen {
    Seen {
        method: "GET".to_owned(),
        path: "/v1/credentials".to_owned(),
        status,
    }
}

/// Moto, the Google doubles (SA_EMAIL bound to sessions of ROLE and of the controller's own
/// role), and a scratch directory for manifests, token files and HOME.
struct Scene {
    cloud: Cloud,
    dir: TempDir,
}

impl Scene {
    async fn start() -> Scene {
        let cloud = Cloud::start(|c| {
            c.binding(Binding::new(
                SA_EMAIL,
                &[role_member(AUDIENCE, CONTROLLER_ASSUMED_ROLE)],
            ))
        })
        .await;
        Scene {
            cloud,
            dir: TempDir::new(),
        }
    }

    /// Credentials of the controller's role under `session`, as a metadata endpoint would hand
    /// them out; issued by moto so the Google double can check what they sign.
    async fn controller_session(&self, session: &str) -> TemporaryCredentials {
        self.cloud
            .moto
            .assume_role_with_web_identity(CONTROLLER_ROLE, session)
            .await
            .expect("moto issues the controller's credentials")
    }

    /// `fedcred exchange` for a `controllerIdentity` manifest chaining into `role`, if given.
    fn exchange(&self, role: Option<&str>) -> Exchange {
        let identity = match role {
            Some(role) => json!({"roleArn": role}),
            None => json!({}),
        };
        let spec = self
            .cloud
            .spec(json!({"controllerIdentity": identity}), json!({}));
        let manifest = json!({
            "apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
            "metadata": {"name": "bq", "namespace": NAMESPACE}, "spec": spec
        });
        let file = self.dir.file(
            &format!("fc-{}.json", role.is_some()),
            &manifest.to_string(),
        );
        Exchange::new(&file, &self.dir.path)
    }
}

/// One `fedcred exchange -f` child process that sees only the AWS sources a test gives it: no
/// inherited `AWS_*` variable, a HOME without `~/.aws`, and instance metadata off unless a test
/// turns it on.
struct Exchange {
    command: Command,
}

/// What a run printed.
struct Output {
    stdout: String,
    stderr: String,
}

impl Exchange {
    fn new(manifest: &Path, home: &Path) -> Exchange {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fedcred"));
        command.arg("exchange").arg("-f").arg(manifest);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command
            .env("HOME", home)
            .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
        Exchange { command }
    }

    fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Exchange {
        self.command.env(name, value);
        self
    }

    /// Runs to completion and panics, with both streams, unless it succeeded.
    async fn run(self) -> Output {
        let (ok, out) = self.output().await;
        assert!(ok, "fedcred exchange failed:\n{}{}", out.stdout, out.stderr);
        out
    }

    /// Runs to completion and panics unless it failed.
    async fn run_expecting_failure(self) -> Output {
        let (ok, out) = self.output().await;
        assert!(
            !ok,
            "fedcred exchange unexpectedly succeeded:\n{}",
            out.stdout
        );
        out
    }

    async fn output(mut self) -> (bool, Output) {
        // The doubles answer on this runtime: wait for the child off its worker threads.
        let out = tokio::task::spawn_blocking(move || self.command.output())
            .await
            .expect("the waiting thread finishes")
            .expect("the fedcred binary runs");
        (
            out.status.success(),
            Output {
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
        )
    }
}

impl Output {
    /// The `principal:` line.
    fn principal(&self) -> String {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix("principal:"))
            .map(|p| p.trim().to_owned())
            .unwrap_or_else(|| panic!("no principal line in:\n{}", self.stdout))
    }
}

/// A scratch directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "fedcred-aws-sources-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("the scratch directory is created");
        TempDir { path }
    }

    /// Writes `contents` (as is, no newline added) to `name` in the directory.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).expect("the scratch file is written");
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
