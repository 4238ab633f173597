//! The STS double end to end with a real moto server: temporary credentials from moto's
//! AssumeRoleWithWebIdentity, a GetCallerIdentity request signed by botocore, and the double's
//! verdict on it and on every way of spoiling it.

mod support;

use fedcred_doubles::moto::{Moto, TemporaryCredentials};
use fedcred_doubles::{
    Condition, Config, Fault, GoogleDoubles, Principal, Provider, Target, role_member,
};
use serde_json::Value;
use support::{AUDIENCE, OTHER_AUDIENCE, Signing, exchange, header, set_header};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/fedcred-demo";
const AWS_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/fedcred-demo";

struct World {
    moto: Moto,
    google: GoogleDoubles,
    creds: TemporaryCredentials,
}

impl World {
    /// Moto, the doubles trusting it with one provider (`condition`), and credentials for
    /// session `ns-a.app` of the demo role.
    async fn new(condition: Condition, tweak: impl FnOnce(&mut Config)) -> World {
        let moto = Moto::start_async().await.expect("moto starts");
        let mut config = Config::with_moto(&moto.url())
            .provider(Provider::new(AUDIENCE).with_condition(condition))
            .provider(Provider {
                disabled: true,
                ..Provider::new(OTHER_AUDIENCE)
            });
        tweak(&mut config);
        let google = GoogleDoubles::start(config).await.expect("doubles start");
        let creds = moto
            .assume_role_with_web_identity(ROLE_ARN, "ns-a.app")
            .await
            .expect("moto issues credentials");
        World {
            moto,
            google,
            creds,
        }
    }

    fn signing(&self) -> Signing {
        Signing::new(
            &self.moto.url(),
            &self.creds.access_key_id,
            &self.creds.secret_access_key,
        )
        .session_token(&self.creds.session_token)
    }

    async fn exchange(&self, token: &Value) -> (u16, Value) {
        exchange(&self.google.sts_url(), AUDIENCE, token).await
    }
}

fn assert_error(answer: &(u16, Value), error: &str, description_contains: &str) {
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["error"], error, "{}", answer.1);
    let description = answer.1["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(description_contains),
        "{description:?} should contain {description_contains:?}"
    );
}

#[tokio::test]
async fn accepts_a_botocore_signed_request_and_learns_the_arn_from_aws() {
    let world = World::new(Condition::AwsRoleEquals(AWS_ROLE.into()), |_| {}).await;
    assert_eq!(
        world.creds.arn,
        "arn:aws:sts::123456789012:assumed-role/fedcred-demo/ns-a.app"
    );

    // As fedcred sends it (target signed, host listed) and as Google's Python library does
    // (target unsigned, host not listed by botocore).
    for (sign_target, include_host) in [(true, true), (false, false)] {
        let token = Signing {
            sign_target,
            include_host,
            ..world.signing()
        }
        .botocore();
        let (status, body) = world.exchange(&token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["issued_token_type"],
            "urn:ietf:params:oauth:token-type:access_token"
        );
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let access_token = body["access_token"].as_str().unwrap();
        assert!(access_token.starts_with("ya29.fake-"));

        let info = world.google.lookup(access_token).expect("live token");
        let Principal::Federated {
            subject,
            audience,
            attributes,
        } = &info.principal
        else {
            panic!("federated token expected: {info:?}");
        };
        assert_eq!(subject, &world.creds.arn);
        assert_eq!(audience, AUDIENCE);
        assert_eq!(attributes["attribute.aws_role"], AWS_ROLE);
        assert_eq!(attributes["attribute.aws_account"], "123456789012");
        assert_eq!(
            info.scopes,
            ["https://www.googleapis.com/auth/cloud-platform"]
        );
        assert!(
            world
                .google
                .issued_tokens()
                .contains(&access_token.to_owned())
        );
    }
    assert_eq!(
        world.google.seen_principals(),
        vec![world.creds.arn.clone()]
    );
    assert_eq!(world.google.calls(Target::Sts), 2);
    assert_eq!(world.google.exchanges(Target::Sts), 2);

    // The introspection endpoint tells the same story, without an email.
    let token = world.exchange(&world.signing().botocore()).await.1;
    let (status, info) = support::tokeninfo(
        &world.google.tokeninfo_url(),
        token["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(info["sub"], world.creds.arn.as_str());
    assert!(info.get("email").is_none());
    assert!(info["expires_in"].as_u64().unwrap() > 3590);
}

#[tokio::test]
async fn refuses_spoiled_requests() {
    let world = World::new(Condition::None, |_| {}).await;
    let good = world.signing().botocore();
    let sts = world.google.sts_url();

    // A one-character change of the signature.
    let mut tampered = good.clone();
    let authorization = header(&good, "authorization").unwrap();
    let flipped = if authorization.ends_with('0') {
        "1"
    } else {
        "0"
    };
    set_header(
        &mut tampered,
        "authorization",
        &format!("{}{flipped}", &authorization[..authorization.len() - 1]),
    );
    assert_error(
        &world.exchange(&tampered).await,
        "invalid_grant",
        "signature we calculated does not match",
    );

    // A signed header altered after signing.
    let mut altered = good.clone();
    set_header(&mut altered, "x-amz-security-token", "forged-session");
    assert_error(
        &world.exchange(&altered).await,
        "invalid_grant",
        "does not match",
    );

    // Signed with a key nobody issued.
    let unknown =
        Signing::new(&world.moto.url(), "ASIAUNKNOWNKEY000000", "not-a-secret").botocore();
    assert_error(
        &world.exchange(&unknown).await,
        "invalid_grant",
        "signature does not match",
    );

    // The target header names another provider than the audience (signed or not).
    for sign_target in [true, false] {
        let other = Signing {
            target: Some(OTHER_AUDIENCE.to_owned()),
            sign_target,
            ..world.signing()
        }
        .botocore();
        assert_error(
            &world.exchange(&other).await,
            "invalid_grant",
            "does not match the audience",
        );
    }
    let no_target = Signing {
        target: None,
        ..world.signing()
    }
    .botocore();
    assert_error(
        &world.exchange(&no_target).await,
        "invalid_grant",
        "missing the x-goog-cloud-target-resource",
    );

    // Signed 20 minutes ago, and 20 minutes ahead.
    for minutes in [-20i64, 20] {
        let time = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(minutes);
        let stale = Signing {
            time: Some(time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            ..world.signing()
        }
        .botocore();
        assert_error(
            &world.exchange(&stale).await,
            "invalid_grant",
            "expired or not yet valid",
        );
    }

    // An endpoint that is not the accepted AWS STS.
    let elsewhere = Signing::new(
        "http://127.0.0.1:9",
        &world.creds.access_key_id,
        &world.creds.secret_access_key,
    )
    .botocore();
    assert_error(
        &world.exchange(&elsewhere).await,
        "invalid_grant",
        "not an AWS STS endpoint",
    );

    // Not a subject token at all.
    assert_error(
        &support::post_form(
            &sts,
            support::sts_form(
                AUDIENCE,
                "%7B%22url%22%3A%22x%22%7D",
                support::CLOUD_PLATFORM,
            ),
        )
        .await,
        "invalid_grant",
        "AWS request has invalid format.",
    );

    // Unknown, disabled and malformed providers.
    let missing = AUDIENCE.replace("aws-prov", "no-such-prov");
    for audience in [missing.as_str(), OTHER_AUDIENCE] {
        let token = Signing {
            target: Some(audience.to_owned()),
            ..world.signing()
        }
        .botocore();
        assert_error(
            &exchange(&sts, audience, &token).await,
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid.",
        );
    }
    assert_error(
        &exchange(&sts, "projects/123/providers/aws-prov", &good).await,
        "invalid_request",
        "audience",
    );

    // Wrong form parameters.
    let form = support::sts_form(AUDIENCE, &support::encode(&good), support::CLOUD_PLATFORM);
    assert_error(
        &support::post_form(
            &sts,
            form.replace("token-type%3Aaws4_request", "token-type%3Ajwt"),
        )
        .await,
        "invalid_request",
        "subject_token_type",
    );
    assert_error(
        &support::post_form(
            &sts,
            form.replace("grant-type%3Atoken-exchange", "grant-type%3Ajwt-bearer"),
        )
        .await,
        "unsupported_grant_type",
        "grant_type",
    );

    // None of that issued a token; the good request still works afterwards.
    assert_eq!(world.google.issued_tokens(), Vec::<String>::new());
    assert_eq!(world.exchange(&good).await.0, 200);
}

#[tokio::test]
async fn applies_the_attribute_condition_and_can_change_it() {
    let world = World::new(
        Condition::AwsRoleEquals("arn:aws:sts::123456789012:assumed-role/another-role".into()),
        |_| {},
    )
    .await;
    let rejected = world.exchange(&world.signing().botocore()).await;
    assert_eq!(rejected.0, 400);
    assert_eq!(
        rejected.1,
        serde_json::json!({
            "error": "unauthorized_client",
            "error_description": "The given credential is rejected by the attribute condition."
        })
    );
    // AWS confirmed the caller even though Google then refused it.
    assert_eq!(
        world.google.seen_principals(),
        vec![world.creds.arn.clone()]
    );

    world.google.set_condition(
        AUDIENCE,
        Condition::ArnContains("assumed-role/other/".into()),
    );
    assert_eq!(
        world.exchange(&world.signing().botocore()).await.1["error"],
        "unauthorized_client"
    );

    world.google.set_condition(
        AUDIENCE,
        Condition::ArnContains("assumed-role/fedcred-demo/ns-a.".into()),
    );
    assert_eq!(world.exchange(&world.signing().botocore()).await.0, 200);

    // A Reject fault refuses one request that would have passed.
    world.google.inject(Target::Sts, Fault::Reject { count: 1 });
    assert_eq!(
        world.exchange(&world.signing().botocore()).await.1["error"],
        "unauthorized_client"
    );
    assert_eq!(world.exchange(&world.signing().botocore()).await.0, 200);
    assert_eq!(world.google.exchanges(Target::Sts), 2);
    assert_eq!(world.google.calls(Target::Sts), 5);

    // The same through the HTTP control.
    let response = support::http()
        .post(format!("{}/__condition", world.google.base_url()))
        .json(&serde_json::json!({"audience": AUDIENCE, "condition": {"aws_role_equals": "nope"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        world.exchange(&world.signing().botocore()).await.1["error"],
        "unauthorized_client"
    );
}

#[tokio::test]
async fn can_require_the_target_header_signed_and_answer_expires_in_as_a_string() {
    let world = World::new(Condition::None, |c| {
        c.require_signed_target = true;
        c.expires_in_as_string = true;
        c.federated_lifetime = std::time::Duration::from_secs(900);
    })
    .await;
    let unsigned = Signing {
        sign_target: false,
        ..world.signing()
    }
    .botocore();
    assert_error(
        &world.exchange(&unsigned).await,
        "invalid_grant",
        "not among its signed headers",
    );
    let (status, body) = world.exchange(&world.signing().botocore()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], "900");
    let info = world
        .google
        .lookup(body["access_token"].as_str().unwrap())
        .unwrap();
    let left = info.expires_in(std::time::SystemTime::now()).as_secs();
    assert!((895..=900).contains(&left), "{left}");
}

#[tokio::test]
async fn relays_an_aws_rejection() {
    // An "AWS STS" that refuses every call, as AWS does for an expired session token.
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FORBIDDEN,
            "<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code>\
             <Message>The security token included in the request is expired</Message></Error></ErrorResponse>",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aws = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (key, secret) = (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    let config = Config {
        aws_sts_endpoints: vec![aws.clone()],
        static_keys: vec![(key.to_owned(), secret.to_owned())],
        ..Config::default()
    }
    .provider(Provider::new(AUDIENCE));
    let google = GoogleDoubles::start(config).await.unwrap();
    let token = Signing::new(&aws, key, secret).botocore();
    let answer = exchange(&google.sts_url(), AUDIENCE, &token).await;
    assert_error(
        &answer,
        "invalid_grant",
        "AWS rejected the GetCallerIdentity request",
    );
    assert!(
        answer.1["error_description"]
            .as_str()
            .unwrap()
            .contains("ExpiredToken")
    );
    assert!(google.seen_principals().is_empty());
    // A static key verified: the failure is AWS's verdict, not the signature.
    assert!(!answer.1.to_string().contains(secret));
}

#[test]
fn role_members_name_the_pool() {
    assert_eq!(
        role_member(AUDIENCE, AWS_ROLE),
        "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/aws-pool/attribute.aws_role/arn:aws:sts::123456789012:assumed-role/fedcred-demo"
    );
}
