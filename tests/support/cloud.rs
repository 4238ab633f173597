//! The cloud around fedcred in tests: the real moto server for AWS STS and the verifying
//! Google doubles, configured with one provider and one service-account binding.

use fedcred::exchange::Engine;
use fedcred::exchange::aws::Aws;
use fedcred::exchange::google::GoogleClient;
use fedcred_core::api::FederatedCredentialSpec;
use fedcred_core::google::RetryPolicy;
use fedcred_doubles::aws_metadata::{Imds, Instance};
use fedcred_doubles::moto::Moto;
use fedcred_doubles::{Binding, Config, Fault, GoogleDoubles, Provider, Target, role_member};
use serde_json::json;

pub const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/eks-pool/providers/aws-shop";
pub const SA_EMAIL: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
/// The role of the EC2 instance in [`Cloud::ec2_host`].
pub const HOST_ROLE: &str = "arn:aws:iam::123456789012:role/host";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/shop-orders";
pub const ASSUMED_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/shop-orders";

/// Moto and the Google doubles, with a provider for AUDIENCE and SA_EMAIL bound to ROLE.
pub struct Cloud {
    pub moto: Moto,
    pub google: GoogleDoubles,
}

impl Cloud {
    pub async fn start(configure: impl FnOnce(Config) -> Config) -> Cloud {
        let moto = Moto::start_async()
            .await
            .expect("moto starts (hack/install-tools.sh installs it)");
        let config = Config::with_moto(&moto.url())
            .provider(Provider::new(AUDIENCE))
            .binding(Binding::new(
                SA_EMAIL,
                &[role_member(AUDIENCE, ASSUMED_ROLE)],
            ));
        let google = GoogleDoubles::start(configure(config))
            .await
            .expect("the Google doubles start");
        Cloud { moto, google }
    }

    /// Credentials from moto standing for the controller's own AWS identity (role
    /// `fedcred-controller`), which the doubles verify through moto's state.
    pub async fn controller_credentials(&self) -> fedcred_doubles::moto::TemporaryCredentials {
        self.moto
            .assume_role_with_web_identity(
                "arn:aws:iam::123456789012:role/fedcred-controller",
                "controller",
            )
            .await
            .expect("moto issues the controller's credentials")
    }

    /// The IMDS fake of an EC2 instance whose instance profile is [`HOST_ROLE`], its session
    /// named after the instance id, as EC2 does.
    pub async fn ec2_host(&self) -> Imds {
        let own = self
            .moto
            .assume_role_with_web_identity(HOST_ROLE, "i-0123456789abcdef0")
            .await
            .expect("moto issues the instance role's credentials");
        Imds::start(Instance::new("host", own))
            .await
            .expect("the IMDS fake starts")
    }

    /// The data of the Secret `name` in `ns`, whose access token the IAM double issued for
    /// [`SA_EMAIL`].
    pub fn secret_with_token(
        &self,
        ns: &super::TestNamespace,
        name: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let data = super::pod::secret_data(ns, name).expect("the Secret exists");
        let info = self
            .google
            .lookup(&data["access_token"])
            .expect("the IAM double issued the token");
        assert_eq!(info.email(), Some(SA_EMAIL));
        data
    }

    /// Makes Google STS answer the next `count` requests with 503 Service Unavailable.
    pub fn sts_unavailable(&self, count: u32) {
        self.google.inject(
            Target::Sts,
            Fault::Status {
                code: 503,
                retry_after: None,
                count,
            },
        );
    }

    /// A spec for `aws` pointed at these peers.
    pub fn spec(
        &self,
        aws: serde_json::Value,
        google: serde_json::Value,
    ) -> FederatedCredentialSpec {
        let mut spec = json!({
            "aws": aws,
            "google": {
                "audience": AUDIENCE,
                "serviceAccount": SA_EMAIL,
                "endpoints": {"sts": self.google.sts_url(), "iamCredentials": self.google.iam_credentials_url()}
            }
        });
        spec["aws"]["region"] = json!("us-east-1");
        spec["aws"]["stsEndpoint"] = json!(self.moto.url());
        for (k, v) in google.as_object().unwrap() {
            spec["google"][k] = v.clone();
        }
        serde_json::from_value(spec).unwrap()
    }

    pub async fn engine(&self, policy: RetryPolicy) -> Engine {
        Engine::new(
            Aws::from_env().await,
            GoogleClient::new(policy).unwrap(),
            Some(super::kube_client().await),
        )
    }
}

/// Applies the ServiceAccount `name` in `ns`, annotated with [`ROLE`] as for IRSA.
pub fn service_account(ns: &super::TestNamespace, name: &str) {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "annotations": {"eks.amazonaws.com/role-arn": ROLE}}});
    ns.kubectl(&["apply", "-f", "-"], Some(&sa.to_string()))
        .success();
}

/// A [`Cloud::start`] configuration whose Google issues federated tokens that live `seconds`.
pub fn federated(seconds: u64) -> impl FnOnce(Config) -> Config {
    move |c| Config {
        federated_lifetime: std::time::Duration::from_secs(seconds),
        ..c
    }
}
