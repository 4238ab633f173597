//! The GCE metadata protocol as two pure steps: [`route`] decides what a request asks for (or
//! why it is refused) from its method, URI and headers; [`answer`] renders the reply from one
//! [`SecretView`] at one instant. The HTTP adapter in the `fedcred` crate only glues them.

use http::{HeaderMap, Method, StatusCode, Uri};
use jiff::Timestamp;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use super::identity::{self, BadIdentityQuery, IdentityRequest};
use super::view::SecretView;

/// The header every request must carry and every answer carries.
pub const FLAVOR_HEADER: &str = "metadata-flavor";
pub const FLAVOR: &str = "Google";

/// GCE's content type for leaf values and listings; google-auth parses JSON only when the
/// content type says `application/json`, so text must not claim to be JSON.
pub const TEXT: &str = "application/text";
pub const JSON: &str = "application/json";

/// What a request may ask for: the part of the metadata tree this emulator knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `/`: where google-auth and Java ping to detect a metadata server.
    Root,
    /// `/computeMetadata/`
    ComputeMetadata,
    /// `/computeMetadata/v1/`
    V1,
    /// `/computeMetadata/v1/instance/` (gcp-metadata for Node pings this one).
    Instance,
    /// `…/instance/service-accounts/`
    ServiceAccounts,
    /// `…/instance/service-accounts/{account}/…`
    Account(String, AccountItem),
    /// `…/instance/service-accounts/{account}/identity?audience=…`: minted by the adapter
    /// ([`identity`]).
    Identity(String, IdentityRequest),
    /// `instance/attributes/` and `project/attributes/`: empty here.
    Attributes,
    /// A key under `attributes/`: none exist.
    Attribute,
    /// What only a Compute Engine instance has (`instance/zone`, `instance/id`,
    /// `instance/hostname`): not defined here, named in the 404.
    NotOnGce(&'static str),
    Project,
    ProjectId,
    NumericProjectId,
    Universe,
    UniverseDomain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountItem {
    Directory,
    Aliases,
    Email,
    Scopes,
    Token,
}

/// `?alt=`: how a value is rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alt {
    /// No `alt`: leaves as text, directories as listings (JSON when recursive).
    #[default]
    Default,
    /// `alt=json`: leaves as JSON values, directories as JSON objects.
    Json,
    /// `alt=text`: leaves and listings as text.
    Text,
}

/// A request this emulator answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub resource: Resource,
    /// `?recursive=true`: directories answer as JSON objects.
    pub recursive: bool,
    pub alt: Alt,
    /// `?scopes=a,b` on the token: served only if the token holds them ([`scopes_missing`]).
    pub scopes: Option<Vec<String>>,
}

impl Served {
    fn of(resource: Resource) -> Served {
        Served {
            resource,
            recursive: false,
            alt: Alt::Default,
            scopes: None,
        }
    }

    /// Whether answering needs the Secret; listings of fixed names do not.
    pub fn needs_secret(&self) -> bool {
        match self.resource {
            Resource::Root
            | Resource::ComputeMetadata
            | Resource::Attributes
            | Resource::Attribute
            | Resource::NotOnGce(_) => false,
            // Recursive answers hold the account, whatever their rendering.
            Resource::Instance | Resource::V1 => self.recursive || self.alt == Alt::Json,
            _ => true,
        }
    }

    /// The ID token request, when this asks for one: the adapter mints it.
    pub fn identity(&self) -> Option<(&str, &IdentityRequest)> {
        match &self.resource {
            Resource::Identity(account, request) => Some((account, request)),
            _ => None,
        }
    }

    /// Directories answer as JSON objects with `recursive=true` (unless `alt=text`) or
    /// `alt=json`.
    fn json_directory(&self) -> bool {
        (self.recursive && self.alt != Alt::Text) || self.alt == Alt::Json
    }
}

/// Why a request is refused, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Only GET and HEAD exist.
    MethodNotAllowed,
    /// `X-Forwarded-For` or `Forwarded`: the request came through a proxy, which GCE refuses
    /// so that a proxy inside the pod cannot be used to reach the token from outside.
    Proxied,
    /// No `Metadata-Flavor: Google`: the header proves the caller meant to ask the metadata
    /// server (a browser or an SSRF-prone fetcher cannot be made to add it).
    MissingFlavor,
    /// Not a path of the tree, or an odd one (`..`, `//`, encoded slashes).
    NotFound,
    /// `wait_for_change` asks for a long poll this emulator does not offer.
    WaitForChange,
    /// An `identity` query without an audience or with odd values.
    BadIdentityQuery(BadIdentityQuery),
    /// `alt` other than `json` or `text`.
    BadAlt,
}

impl Refusal {
    /// Short stable label for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MethodNotAllowed => "MethodNotAllowed",
            Refusal::Proxied => "Proxied",
            Refusal::MissingFlavor => "MissingFlavor",
            Refusal::NotFound => "NotFound",
            Refusal::WaitForChange => "WaitForChange",
            Refusal::BadIdentityQuery(_) => "BadIdentityQuery",
            Refusal::BadAlt => "BadAlt",
        }
    }
}

/// A rendered answer; the adapter adds `Metadata-Flavor: Google` and drops the body for HEAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            body: body.into(),
        }
    }

    fn ok(body: impl Into<String>) -> Reply {
        Reply::text(StatusCode::OK, body)
    }

    fn json(value: &Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: JSON,
            body: value.to_string(),
        }
    }

    fn not_found(what: &str) -> Reply {
        Reply::text(StatusCode::NOT_FOUND, format!("fedcred: {what}\n"))
    }
}

/// Decides what a request asks for, or why it is refused.
pub fn route(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Served, Refusal> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Refusal::MethodNotAllowed);
    }
    if headers.contains_key("x-forwarded-for") || headers.contains_key(http::header::FORWARDED) {
        return Err(Refusal::Proxied);
    }
    let segments = segments(uri.path()).ok_or(Refusal::NotFound)?;
    if segments.is_empty() {
        // The root answers without the header, as GCE's does: Go's detection probe
        // (compute/metadata `metadataRequestStrategy`) sends none and reveals nothing.
        return Ok(Served::of(Resource::Root));
    }
    if headers.get(FLAVOR_HEADER).map(|v| v.as_bytes()) != Some(FLAVOR.as_bytes()) {
        return Err(Refusal::MissingFlavor);
    }
    let query = uri.query().unwrap_or("");
    let mut served = Served::of(resource(&segments, query)?);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "recursive" => served.recursive = value.eq_ignore_ascii_case("true"),
            "alt" => {
                served.alt = match &*value {
                    "json" => Alt::Json,
                    "text" => Alt::Text,
                    _ => return Err(Refusal::BadAlt),
                }
            }
            "wait_for_change" if value.eq_ignore_ascii_case("true") => {
                return Err(Refusal::WaitForChange);
            }
            "scopes" => {
                let scopes = value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                served.scopes.get_or_insert_with(Vec::new).extend(scopes);
            }
            // `audience`, `format`, `licenses` belong to `identity`; `timeout_sec` and
            // `last_etag` only matter with `wait_for_change`.
            _ => {}
        }
    }
    Ok(served)
}

/// Path segments after the leading `/`, percent-decoded; a trailing `/` is dropped. `None`
/// for anything odd: no leading slash, empty segments inside, `.`/`..`, encoded `/` or `\`,
/// control characters, invalid UTF-8.
fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/')
        .map(|raw| {
            let segment = percent_decode_str(raw).decode_utf8().ok()?;
            let odd = segment.is_empty()
                || segment == "."
                || segment == ".."
                || segment.contains(['/', '\\'])
                || segment.chars().any(char::is_control);
            (!odd).then(|| segment.into_owned())
        })
        .collect()
}

fn resource(segments: &[String], query: &str) -> Result<Resource, Refusal> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    if let [
        "computeMetadata",
        "v1",
        "instance",
        "service-accounts",
        account,
        "identity",
    ] = s.as_slice()
    {
        let request = identity::parse_query(query).map_err(Refusal::BadIdentityQuery)?;
        return Ok(Resource::Identity((*account).to_owned(), request));
    }
    known(&s).ok_or(Refusal::NotFound)
}

fn known(s: &[&str]) -> Option<Resource> {
    Some(match s {
        ["computeMetadata"] => Resource::ComputeMetadata,
        ["computeMetadata", "v1", rest @ ..] => match rest {
            [] => Resource::V1,
            ["instance"] => Resource::Instance,
            ["instance", "service-accounts"] => Resource::ServiceAccounts,
            ["instance" | "project", "attributes"] => Resource::Attributes,
            ["instance" | "project", "attributes", _] => Resource::Attribute,
            ["instance", "zone"] => Resource::NotOnGce("zone"),
            ["instance", "id"] => Resource::NotOnGce("id"),
            ["instance", "hostname"] => Resource::NotOnGce("hostname"),
            ["instance", "service-accounts", account, item @ ..] => {
                let item = match item {
                    [] => AccountItem::Directory,
                    ["aliases"] => AccountItem::Aliases,
                    ["email"] => AccountItem::Email,
                    ["scopes"] => AccountItem::Scopes,
                    ["token"] => AccountItem::Token,
                    _ => return None,
                };
                Resource::Account((*account).to_owned(), item)
            }
            ["project"] => Resource::Project,
            ["project", "project-id"] => Resource::ProjectId,
            ["project", "numeric-project-id"] => Resource::NumericProjectId,
            ["universe"] => Resource::Universe,
            ["universe", "universe-domain"] => Resource::UniverseDomain,
            _ => return None,
        },
        _ => return None,
    })
}

/// The answer to a refused request.
pub fn refuse(refusal: Refusal) -> Reply {
    match refusal {
        Refusal::MethodNotAllowed => Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "fedcred: the metadata server answers GET and HEAD only\n",
        ),
        Refusal::Proxied => Reply::text(
            StatusCode::FORBIDDEN,
            "fedcred: requests through a proxy (X-Forwarded-For or Forwarded) are refused\n",
        ),
        Refusal::MissingFlavor => Reply::text(
            StatusCode::FORBIDDEN,
            "fedcred: missing required header \"Metadata-Flavor: Google\"\n",
        ),
        Refusal::NotFound => Reply::not_found("no such metadata path"),
        Refusal::WaitForChange => Reply::text(
            StatusCode::BAD_REQUEST,
            "fedcred: wait_for_change is not offered: nothing here changes but the token, \
             whose expires_in tells when to ask again\n",
        ),
        Refusal::BadIdentityQuery(why) => Reply::text(StatusCode::BAD_REQUEST, why.message()),
        Refusal::BadAlt => Reply::text(
            StatusCode::BAD_REQUEST,
            "fedcred: alt must be \"json\" or \"text\"\n",
        ),
    }
}

/// The answer when the Secret volume could not be read at all.
pub fn unreadable(error: &std::io::Error) -> Reply {
    Reply::text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("fedcred: cannot read the mounted Secret: {error}\n"),
    )
}

/// Renders the answer to `served` from `view` at `now`.
pub fn answer(served: &Served, view: &SecretView, now: Timestamp) -> Reply {
    let reply = render(served, view, now);
    let leaf = !matches!(
        served.resource,
        Resource::Account(_, AccountItem::Token) | Resource::Identity(..)
    );
    if served.alt == Alt::Json
        && leaf
        && reply.status == StatusCode::OK
        && reply.content_type == TEXT
    {
        // A leaf as a JSON value: numbers stay numbers (GCE answers ids that way), the rest
        // are strings; listings become arrays.
        let value = if reply.body.ends_with('\n') || reply.body.is_empty() {
            Value::from(reply.body.lines().map(str::to_owned).collect::<Vec<_>>())
        } else if let Ok(number) = reply.body.parse::<u64>() {
            Value::from(number)
        } else {
            Value::from(reply.body)
        };
        return Reply::json(&value);
    }
    reply
}

fn render(served: &Served, view: &SecretView, now: Timestamp) -> Reply {
    if served.recursive && served.alt == Alt::Text {
        // GCE's flattened form: one `path value` line per leaf of the recursive answer.
        let json = Served {
            alt: Alt::Default,
            ..served.clone()
        };
        let reply = render(&json, view, now);
        if reply.content_type != JSON || reply.status != StatusCode::OK {
            return reply;
        }
        let value: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        let mut lines = String::new();
        flatten("", &value, &mut lines);
        return Reply::ok(lines);
    }
    let recursive = served.json_directory();
    match &served.resource {
        Resource::Root => Reply::ok("computeMetadata/\n"),
        Resource::ComputeMetadata => Reply::ok("v1/\n"),
        Resource::V1 if recursive => Reply::json(&json!({
            "instance": instance_json(view),
            "project": project_json(view),
            "universe": universe_json(view),
        })),
        Resource::V1 => Reply::ok("instance/\nproject/\nuniverse/\n"),
        Resource::Instance if recursive => Reply::json(&instance_json(view)),
        Resource::Instance => Reply::ok("attributes/\nservice-accounts/\n"),
        Resource::ServiceAccounts if recursive => Reply::json(&accounts_json(view)),
        Resource::ServiceAccounts => Reply::ok(
            account_names(view)
                .iter()
                .map(|name| format!("{name}/\n"))
                .collect::<String>(),
        ),
        Resource::Account(name, _) if !view.is_account(name) => {
            Reply::not_found("no such service account in this pod")
        }
        Resource::Account(_, AccountItem::Token) => match &served.scopes {
            Some(asked) => match scopes_missing(asked, &view.scopes()) {
                missing if missing.is_empty() => account(AccountItem::Token, view, false, now),
                missing => Reply::text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "fedcred: the token does not carry the requested scopes {missing:?} \
                         (it carries {:?}); add them to the FederatedCredential's \
                         spec.google.scopes\n",
                        view.scopes()
                    ),
                ),
            },
            None => account(AccountItem::Token, view, false, now),
        },
        Resource::Account(_, item) => account(*item, view, recursive, now),
        Resource::Identity(account, _) => match identity::minter(view, account, now) {
            // Only the adapter mints; answering here means it did not intercept.
            Ok(_) => Reply::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fedcred: ID tokens are minted by the server, not here\n",
            ),
            Err(reply) => reply,
        },
        Resource::Attributes if recursive => Reply::json(&json!({})),
        Resource::Attributes => Reply::ok(""),
        Resource::Attribute => Reply::not_found("no such attribute: none are set here"),
        Resource::NotOnGce(what) => Reply::not_found(&format!(
            "instance/{what} is not defined: this is not a Compute Engine instance"
        )),
        Resource::Project if recursive => Reply::json(&project_json(view)),
        Resource::Project => {
            let mut listing = "attributes/\n".to_owned();
            if view.numeric_project_id.is_some() {
                listing.push_str("numeric-project-id\n");
            }
            if view.project_id.is_some() {
                listing.push_str("project-id\n");
            }
            Reply::ok(listing)
        }
        Resource::ProjectId => match &view.project_id {
            Some(id) => Reply::ok(id.clone()),
            None => Reply::not_found(
                "the project id is unknown: the mounted Secret has no project_id key (it is \
                 known when a service account is impersonated); set GOOGLE_CLOUD_PROJECT",
            ),
        },
        Resource::NumericProjectId => match &view.numeric_project_id {
            Some(number) => Reply::ok(number.clone()),
            None => Reply::not_found("the numeric project id is unknown"),
        },
        Resource::Universe if recursive => Reply::json(&universe_json(view)),
        Resource::Universe => Reply::ok("universe-domain\n"),
        Resource::UniverseDomain => Reply::ok(view.universe_domain().to_owned()),
    }
}

fn account(item: AccountItem, view: &SecretView, recursive: bool, now: Timestamp) -> Reply {
    match item {
        AccountItem::Directory if recursive => Reply::json(&account_json(view)),
        AccountItem::Directory => Reply::ok("aliases\nemail\nidentity\nscopes\ntoken\n"),
        AccountItem::Aliases => Reply::ok("default\n"),
        AccountItem::Email => Reply::ok(view.email().to_owned()),
        AccountItem::Scopes => Reply::ok(
            view.scopes()
                .iter()
                .map(|s| format!("{s}\n"))
                .collect::<String>(),
        ),
        AccountItem::Token => match view.token(now) {
            Ok(token) => Reply::json(&json!({
                "access_token": token.access_token.expose(),
                "expires_in": token.expires_in,
                "token_type": token.token_type,
            })),
            Err(why) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, why.message()),
        },
    }
}

/// `default`, and the service account's email when there is one: GCE lists both names.
fn account_names(view: &SecretView) -> Vec<&str> {
    let mut names = vec!["default"];
    if let Some(email) = &view.service_account {
        names.push(email);
    }
    names
}

fn account_json(view: &SecretView) -> Value {
    json!({
        "aliases": ["default"],
        "email": view.email(),
        "scopes": view.scopes(),
    })
}

fn accounts_json(view: &SecretView) -> Value {
    let accounts: Map<String, Value> = account_names(view)
        .into_iter()
        .map(|name| (name.to_owned(), account_json(view)))
        .collect();
    Value::Object(accounts)
}

fn instance_json(view: &SecretView) -> Value {
    json!({ "attributes": {}, "serviceAccounts": accounts_json(view) })
}

/// `path value` lines for every leaf of `value`, arrays indexed from 0.
fn flatten(prefix: &str, value: &Value, out: &mut String) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}/{key}")
        }
    };
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| flatten(&join(k), v, out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten(&join(&i.to_string()), v, out)),
        Value::String(s) => out.push_str(&format!("{prefix} {s}\n")),
        other => out.push_str(&format!("{prefix} {other}\n")),
    }
}

/// Cloud-platform covers the Google Cloud APIs but not sign-in scopes: database logins and
/// identity scopes must be granted by name.
const NOT_COVERED_BY_CLOUD_PLATFORM: &[&str] = &[
    "https://www.googleapis.com/auth/alloydb.login",
    "https://www.googleapis.com/auth/sqlservice.login",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
    "openid",
    "email",
    "profile",
];

/// The requested scopes the token cannot serve: sign-in scopes it does not list, and anything
/// that is not a Google API scope. A Google Cloud API scope (`cloud-platform`, `bigquery`,
/// `devstorage.*`, …) is served with the token as it is, as a GCE VM serves its own scopes
/// whatever a library asks for: libraries ask for `cloud-platform` by default, and a resource
/// narrowed to `bigquery` and `devstorage.read_only` must still serve BigQuery's client. What
/// the token lacks is then the API's 403 to report, naming the scope. Sign-in scopes are not
/// served that way, because the database login that needs them fails far from its cause.
pub fn scopes_missing(asked: &[String], held: &[String]) -> Vec<String> {
    asked
        .iter()
        .filter(|scope| {
            let listed = held.contains(scope);
            let cloud_api = scope.starts_with("https://www.googleapis.com/auth/")
                && !NOT_COVERED_BY_CLOUD_PLATFORM.contains(&scope.as_str());
            !listed && !cloud_api
        })
        .cloned()
        .collect()
}

fn project_json(view: &SecretView) -> Value {
    let mut project = Map::new();
    if let Some(number) = &view.numeric_project_id {
        // GCE answers the number as a JSON number.
        let value = number
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(number.clone()));
        project.insert("numericProjectId".into(), value);
    }
    if let Some(id) = &view.project_id {
        project.insert("projectId".into(), Value::from(id.clone()));
    }
    Value::Object(project)
}

fn universe_json(view: &SecretView) -> Value {
    json!({ "universeDomain": view.universe_domain() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const SA: &str = "orders-api@acme-shop.iam.gserviceaccount.com";
    const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

    /// A request as a client sends it: GET with `Metadata-Flavor: Google`.
    struct Req {
        method: Method,
        uri: String,
        headers: HeaderMap,
    }

    fn get(uri: &str) -> Req {
        let mut headers = HeaderMap::new();
        headers.insert(FLAVOR_HEADER, FLAVOR.parse().unwrap());
        Req {
            method: Method::GET,
            uri: uri.to_owned(),
            headers,
        }
    }

    impl Req {
        fn method(mut self, method: Method) -> Req {
            self.method = method;
            self
        }

        fn header(mut self, name: &'static str, value: &str) -> Req {
            self.headers.insert(name, value.parse().unwrap());
            self
        }

        fn without_flavor(mut self) -> Req {
            self.headers.remove(FLAVOR_HEADER);
            self
        }

        fn route(&self) -> Result<Served, Refusal> {
            route(&self.method, &self.uri.parse().unwrap(), &self.headers)
        }

        /// Routes and answers against `view` at `NOW`.
        fn answer(&self, view: &SecretView) -> Reply {
            match self.route() {
                Ok(served) => answer(&served, view, now()),
                Err(refusal) => refuse(refusal),
            }
        }
    }

    fn now() -> Timestamp {
        "2026-11-25T15:04:05Z".parse().unwrap()
    }

    fn view(pairs: &[(&str, &str)]) -> SecretView {
        let files: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SecretView::from_files(&files)
    }

    fn impersonated() -> SecretView {
        view(&[
            ("access_token", "ya29.impersonated"),
            ("expiry", "2026-11-25T16:04:05Z"),
            ("token_type", "Bearer"),
            ("service_account", SA),
            ("project_id", "acme-shop"),
        ])
    }

    fn federated() -> SecretView {
        view(&[
            ("access_token", "ya29.federated"),
            ("expiry", "2026-11-25T15:34:05Z"),
            ("token_type", "Bearer"),
        ])
    }

    fn json_body(reply: &Reply) -> Value {
        assert_eq!(reply.content_type, JSON, "{reply:?}");
        serde_json::from_str(&reply.body).unwrap()
    }

    #[test]
    fn the_token_answers_with_seconds_left() {
        let reply = get(TOKEN_PATH).answer(&impersonated());
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            json_body(&reply),
            json!({"access_token": "ya29.impersonated", "expires_in": 3600, "token_type": "Bearer"})
        );
    }

    #[test]
    fn requested_scopes_are_served_when_the_token_holds_them_and_refused_otherwise() {
        // google-cloud-storage and BigQuery ask for their own scopes, which cloud-platform
        // covers.
        let uri = format!(
            "{TOKEN_PATH}?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fbigquery,\
             https://www.googleapis.com/auth/devstorage.full_control"
        );
        let reply = get(&uri).answer(&federated());
        assert_eq!(json_body(&reply)["expires_in"], 1800);
        // A sign-in scope must be granted by name; the 400 says where.
        let login = format!(
            "{TOKEN_PATH}?scopes=https://www.googleapis.com/auth/cloud-platform,\
             https://www.googleapis.com/auth/alloydb.login"
        );
        let refused = get(&login).answer(&federated());
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.body.contains("alloydb.login"), "{}", refused.body);
        assert!(refused.body.contains("spec.google.scopes"));
        assert!(!refused.body.contains("ya29"));
        let granted = view(&[
            ("access_token", "ya29.login"),
            ("expiry", "2026-11-25T16:04:05Z"),
            (
                "scopes",
                "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/alloydb.login",
            ),
        ]);
        assert_eq!(get(&login).answer(&granted).status, StatusCode::OK);
        let unknown = get(&format!("{TOKEN_PATH}?scopes=x")).answer(&federated());
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        // A resource narrowed to BigQuery and read-only storage still serves BigQuery's client,
        // which asks for cloud-platform: the token goes as it is, as on a GCE VM.
        let narrowed = view(&[
            ("access_token", "ya29.narrow"),
            ("expiry", "2026-11-25T16:04:05Z"),
            (
                "scopes",
                "https://www.googleapis.com/auth/bigquery https://www.googleapis.com/auth/devstorage.read_only",
            ),
        ]);
        let platform = get(&format!(
            "{TOKEN_PATH}?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
        ))
        .answer(&narrowed);
        assert_eq!(platform.status, StatusCode::OK, "{}", platform.body);
        assert_eq!(json_body(&platform)["access_token"], "ya29.narrow");
        let sign_in = get(&format!(
            "{TOKEN_PATH}?scopes=https://www.googleapis.com/auth/sqlservice.login"
        ))
        .answer(&narrowed);
        assert_eq!(sign_in.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn alt_json_renders_leaves_as_json_values_and_directories_as_objects() {
        let id = get("/computeMetadata/v1/project/project-id?alt=json").answer(&impersonated());
        assert_eq!(json_body(&id), json!("acme-shop"));
        let known = view(&[("numeric_project_id", "123456789012")]);
        let number = get("/computeMetadata/v1/project/numeric-project-id?alt=json").answer(&known);
        assert_eq!(json_body(&number), json!(123456789012_u64));
        let dir = get("/computeMetadata/v1/instance/service-accounts/default/?alt=json")
            .answer(&impersonated());
        assert_eq!(json_body(&dir)["email"], SA);
        let text = get("/computeMetadata/v1/project/project-id?alt=text").answer(&impersonated());
        assert_eq!((text.content_type, text.body.as_str()), (TEXT, "acme-shop"));
        let flat =
            get("/computeMetadata/v1/instance/service-accounts/default/?recursive=true&alt=text")
                .answer(&impersonated());
        assert_eq!(flat.content_type, TEXT);
        assert_eq!(
            flat.body,
            format!(
                "aliases/0 default\nemail {SA}\nscopes/0 https://www.googleapis.com/auth/cloud-platform\n"
            )
        );
        assert_eq!(
            get("/computeMetadata/v1/project/project-id?alt=xml").route(),
            Err(Refusal::BadAlt)
        );
        assert_eq!(refuse(Refusal::BadAlt).status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn attributes_are_empty_and_instance_facts_are_not_defined() {
        for dir in [
            "/computeMetadata/v1/instance/attributes/",
            "/computeMetadata/v1/project/attributes/",
        ] {
            let listing = get(dir).answer(&SecretView::default());
            assert_eq!(
                (listing.status, listing.body.as_str()),
                (StatusCode::OK, "")
            );
            let all = get(&format!("{dir}?recursive=true")).answer(&SecretView::default());
            assert_eq!(json_body(&all), json!({}));
            assert!(!get(dir).route().unwrap().needs_secret());
        }
        let key = get("/computeMetadata/v1/instance/attributes/ssh-keys").answer(&federated());
        assert_eq!(key.status, StatusCode::NOT_FOUND);
        for what in ["zone", "id", "hostname"] {
            let reply = get(&format!("/computeMetadata/v1/instance/{what}")).answer(&federated());
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{what}");
            assert!(
                reply.body.contains("not a Compute Engine instance"),
                "{what}"
            );
        }
        let all = json_body(&get("/computeMetadata/v1/?recursive=true").answer(&impersonated()));
        assert_eq!(all["instance"]["attributes"], json!({}));
    }

    #[test]
    fn identity_needs_an_audience_and_a_service_account() {
        let path = "/computeMetadata/v1/instance/service-accounts/default/identity";
        assert_eq!(
            get(path).route(),
            Err(Refusal::BadIdentityQuery(BadIdentityQuery::MissingAudience))
        );
        assert_eq!(
            refuse(Refusal::BadIdentityQuery(BadIdentityQuery::MissingAudience)).status,
            StatusCode::BAD_REQUEST
        );
        let served = get(&format!("{path}?audience=https://svc&format=full"))
            .route()
            .unwrap();
        let (account, request) = served.identity().unwrap();
        assert_eq!((account, request.include_email()), ("default", true));
        assert!(served.needs_secret());
        // A federated token is refused with the fix; the adapter mints for the rest.
        let refused = answer(&served, &federated(), now());
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
        assert!(refused.body.contains("spec.google.serviceAccount"));
    }

    #[test]
    fn the_token_is_also_served_under_the_service_accounts_email() {
        let uri = format!("/computeMetadata/v1/instance/service-accounts/{SA}/token");
        assert_eq!(get(&uri).answer(&impersonated()).status, StatusCode::OK);
        let encoded = uri.replace('@', "%40");
        assert_eq!(get(&encoded).answer(&impersonated()).status, StatusCode::OK);
        let other =
            "/computeMetadata/v1/instance/service-accounts/x@y.iam.gserviceaccount.com/token";
        assert_eq!(
            get(other).answer(&impersonated()).status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn an_expired_or_missing_token_answers_503_without_a_token() {
        let late: Timestamp = "2026-11-25T16:04:00Z".parse().unwrap();
        let served = get(TOKEN_PATH).route().unwrap();
        let reply = answer(&served, &impersonated(), late);
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            reply.body.contains("expired at 2026-11-25T16:04:05Z"),
            "{}",
            reply.body
        );
        assert!(!reply.body.contains("ya29"));
        let reply = get(TOKEN_PATH).answer(&SecretView::default());
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.body.contains("no access_token yet"));
    }

    #[test]
    fn email_is_the_service_account_or_default_when_federated() {
        let path = "/computeMetadata/v1/instance/service-accounts/default/email";
        assert_eq!(get(path).answer(&impersonated()).body, SA);
        assert_eq!(get(path).answer(&federated()).body, "default");
        assert_eq!(get(path).answer(&federated()).content_type, TEXT);
    }

    #[test]
    fn scopes_default_to_cloud_platform_one_per_line() {
        let path = "/computeMetadata/v1/instance/service-accounts/default/scopes";
        assert_eq!(
            get(path).answer(&federated()).body,
            "https://www.googleapis.com/auth/cloud-platform\n"
        );
    }

    #[test]
    fn the_account_directory_answers_json_when_recursive() {
        let reply = get("/computeMetadata/v1/instance/service-accounts/default/?recursive=true")
            .answer(&impersonated());
        assert_eq!(
            json_body(&reply),
            json!({"aliases": ["default"], "email": SA,
                   "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})
        );
        let listing =
            get("/computeMetadata/v1/instance/service-accounts/default/").answer(&impersonated());
        assert_eq!(listing.body, "aliases\nemail\nidentity\nscopes\ntoken\n");
    }

    #[test]
    fn service_accounts_list_default_and_the_email() {
        let path = "/computeMetadata/v1/instance/service-accounts/";
        assert_eq!(
            get(path).answer(&impersonated()).body,
            format!("default/\n{SA}/\n")
        );
        assert_eq!(get(path).answer(&federated()).body, "default/\n");
        let all = json_body(&get(&format!("{path}?recursive=true")).answer(&impersonated()));
        assert_eq!(all["default"]["email"], SA);
        assert_eq!(all[SA]["aliases"], json!(["default"]));
    }

    #[test]
    fn project_id_is_served_when_known_and_404_otherwise() {
        let path = "/computeMetadata/v1/project/project-id";
        let reply = get(path).answer(&impersonated());
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "acme-shop")
        );
        let reply = get(path).answer(&federated());
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert!(reply.body.contains("GOOGLE_CLOUD_PROJECT"));
        let numeric = "/computeMetadata/v1/project/numeric-project-id";
        assert_eq!(
            get(numeric).answer(&impersonated()).status,
            StatusCode::NOT_FOUND
        );
        let known = view(&[("numeric_project_id", "123456789012"), ("project_id", "p")]);
        assert_eq!(get(numeric).answer(&known).body, "123456789012");
        assert_eq!(
            json_body(&get("/computeMetadata/v1/project/?recursive=true").answer(&known)),
            json!({"numericProjectId": 123456789012_u64, "projectId": "p"})
        );
    }

    #[test]
    fn universe_domain_is_googleapis() {
        let reply = get("/computeMetadata/v1/universe/universe-domain").answer(&federated());
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "googleapis.com")
        );
    }

    #[test]
    fn roots_answer_200_for_detection() {
        // google-auth and Java ping `/` with the header; Go's off-GCE probe sends none.
        assert_eq!(get("/").answer(&federated()).status, StatusCode::OK);
        assert_eq!(
            get("/").without_flavor().answer(&federated()).body,
            "computeMetadata/\n"
        );
        let v1 = get("/computeMetadata/v1/").answer(&federated());
        assert_eq!(v1.body, "instance/\nproject/\nuniverse/\n");
        assert_eq!(
            get("/computeMetadata/v1").answer(&federated()).status,
            StatusCode::OK
        );
        // gcp-metadata (Node) pings `instance` and wants a non-empty body.
        let instance = get("/computeMetadata/v1/instance").answer(&federated());
        assert_eq!(instance.body, "attributes/\nservice-accounts/\n");
    }

    #[test]
    fn only_secret_backed_resources_read_the_secret() {
        let needs = |path: &str| get(path).route().unwrap().needs_secret();
        assert!(!needs("/"));
        assert!(!needs("/computeMetadata/v1/instance/"));
        assert!(needs("/computeMetadata/v1/instance/?recursive=true"));
        assert!(needs(
            "/computeMetadata/v1/instance/?recursive=true&alt=text"
        ));
        assert!(needs("/computeMetadata/v1/?alt=json"));
        assert!(!needs("/computeMetadata/v1/instance/?alt=text"));
        assert!(needs(TOKEN_PATH));
        assert!(needs("/computeMetadata/v1/project/project-id"));
    }

    #[test]
    fn the_flavor_header_is_required_below_the_root() {
        assert_eq!(
            get(TOKEN_PATH).without_flavor().route(),
            Err(Refusal::MissingFlavor)
        );
        let wrong = get(TOKEN_PATH).header(FLAVOR_HEADER, "google");
        assert_eq!(wrong.route(), Err(Refusal::MissingFlavor));
        let reply = refuse(Refusal::MissingFlavor);
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(reply.body.contains("Metadata-Flavor: Google"));
    }

    #[test]
    fn proxied_requests_are_refused_even_for_the_root() {
        for header in ["x-forwarded-for", "forwarded"] {
            assert_eq!(
                get(TOKEN_PATH).header(header, "10.0.0.1").route(),
                Err(Refusal::Proxied)
            );
            assert_eq!(
                get("/").header(header, "10.0.0.1").route(),
                Err(Refusal::Proxied)
            );
        }
        assert_eq!(refuse(Refusal::Proxied).status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn only_get_and_head_are_allowed() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(
                get(TOKEN_PATH).method(method).route(),
                Err(Refusal::MethodNotAllowed)
            );
        }
        assert!(get(TOKEN_PATH).method(Method::HEAD).route().is_ok());
        assert_eq!(
            refuse(Refusal::MethodNotAllowed).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn odd_and_unknown_paths_are_404() {
        for path in [
            "/computeMetadata/v1/instance/service-accounts/default/../default/token",
            "/computeMetadata/v1/instance/service-accounts/default/%2e%2e/default/token",
            "/computeMetadata/v1/instance/service-accounts/./default/token",
            "/computeMetadata/v1//instance/service-accounts/default/token",
            "/computeMetadata/v1/instance/service-accounts/default%2ftoken",
            "/computeMetadata/v1/instance/service-accounts/default/token/extra",
            "/computeMetadata/v1/instance/service-accounts/de%00fault/token",
            "/computeMetadata/v1/instance/service-accounts/%ff/token",
            "/computeMetadata/v1/instance/cpu-platform",
            "/computeMetadata/v2/",
            "/latest/meta-data/",
            "/etc/passwd",
        ] {
            assert_eq!(get(path).route(), Err(Refusal::NotFound), "{path}");
        }
        assert_eq!(refuse(Refusal::NotFound).status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn long_polls_are_refused_rather_than_answered_at_once() {
        let path = "/computeMetadata/v1/project/project-id?wait_for_change=true";
        assert_eq!(get(path).route(), Err(Refusal::WaitForChange));
        assert_eq!(
            refuse(Refusal::WaitForChange).status,
            StatusCode::BAD_REQUEST
        );
    }
}
