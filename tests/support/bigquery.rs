//! A BigQuery double for the seed 003 report job: the three calls Google's Python client makes
//! for a query (insert the job, read it, read its results), each accepted only with a live
//! bearer token the Google doubles issued to the expected service account with a scope that
//! covers BigQuery, refused otherwise as Google's front end refuses.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::cloud::Cloud;

pub const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// What the BigQuery double saw.
#[derive(Default)]
pub struct Seen {
    /// Bearer tokens of accepted requests.
    pub accepted: BTreeSet<String>,
    /// `(status, reason)` of refused requests.
    pub refused: Vec<(u16, String)>,
    /// Projects named in accepted request paths.
    pub projects: BTreeSet<String>,
    /// SQL of the jobs inserted.
    pub queries: Vec<String>,
}

#[derive(Clone)]
pub struct BigQuery {
    pub cloud: Arc<Cloud>,
    pub seen: Arc<Mutex<Seen>>,
    /// The service account whose tokens are accepted.
    pub email: String,
}

fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": if status == StatusCode::UNAUTHORIZED { "UNAUTHENTICATED" } else { "PERMISSION_DENIED" },
    }});
    (status, axum::Json(body)).into_response()
}

impl BigQuery {
    /// Checks the bearer token as Google's front end does: issued by the doubles, not
    /// expired, for the expected service account, with a scope that covers BigQuery.
    fn authorize(&self, headers: &HeaderMap, project: &str) -> Result<(), Box<Response>> {
        let refuse = |status: StatusCode, reason: &str, message: &str| {
            self.seen
                .lock()
                .unwrap()
                .refused
                .push((status.as_u16(), reason.to_owned()));
            Box::new(google_error(status, reason, message))
        };
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "required",
                "Request is missing required authentication credential.",
            ));
        };
        let Some(info) = self.cloud.google.lookup(token) else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "authError",
                "Request had invalid authentication credentials.",
            ));
        };
        if info.expires_at <= std::time::SystemTime::now() {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "authError",
                "Request had invalid authentication credentials: the token expired.",
            ));
        }
        if info.email() != Some(self.email.as_str()) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "accessDenied",
                "The caller does not have bigquery.jobs.create permission.",
            ));
        }
        let covered = info
            .scopes
            .iter()
            .any(|s| s == BIGQUERY_SCOPE || s == "https://www.googleapis.com/auth/cloud-platform");
        if !covered {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "Request had insufficient authentication scopes.",
            ));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.accepted.insert(token.to_owned());
        seen.projects.insert(project.to_owned());
        Ok(())
    }
}

fn job(project: &str, id: &str, query: &str) -> Value {
    json!({
        "kind": "bigquery#job",
        "id": format!("{project}:US.{id}"),
        "jobReference": {"projectId": project, "jobId": id, "location": "US"},
        "configuration": {"query": {"query": query, "useLegacySql": false}, "jobType": "QUERY"},
        "status": {"state": "DONE"},
        "statistics": {"query": {"totalBytesProcessed": "2048", "statementType": "SELECT"}},
    })
}

async fn insert_job(
    State(bq): State<BigQuery>,
    UrlPath(project): UrlPath<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(refused) = bq.authorize(&headers, &project) {
        return *refused;
    }
    let Some(query) = body["configuration"]["query"]["query"].as_str() else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Required parameter is missing: configuration.query.query",
        );
    };
    bq.seen.lock().unwrap().queries.push(query.to_owned());
    let id = body["jobReference"]["jobId"]
        .as_str()
        .unwrap_or("job_1")
        .to_owned();
    axum::Json(job(&project, &id, query)).into_response()
}

async fn get_job(
    State(bq): State<BigQuery>,
    UrlPath((project, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = bq.authorize(&headers, &project) {
        return *refused;
    }
    let query = bq
        .seen
        .lock()
        .unwrap()
        .queries
        .last()
        .cloned()
        .unwrap_or_default();
    axum::Json(job(&project, &id, &query)).into_response()
}

async fn query_results(
    State(bq): State<BigQuery>,
    UrlPath((project, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = bq.authorize(&headers, &project) {
        return *refused;
    }
    axum::Json(json!({
        "kind": "bigquery#getQueryResultsResponse",
        "jobReference": {"projectId": project, "jobId": id, "location": "US"},
        "jobComplete": true,
        "schema": {"fields": [
            {"name": "region", "type": "STRING", "mode": "NULLABLE"},
            {"name": "orders", "type": "INTEGER", "mode": "NULLABLE"},
        ]},
        "rows": [
            {"f": [{"v": "asia-northeast1"}, {"v": "1204"}]},
            {"f": [{"v": "us-east4"}, {"v": "877"}]},
        ],
        "totalRows": "2",
        "totalBytesProcessed": "2048",
        "cacheHit": false,
    }))
    .into_response()
}

/// The BigQuery double on a free port of `bind_ip`; returns its base URL at `host`.
pub async fn start_bigquery_at(bq: BigQuery, bind_ip: &str, host: &str) -> String {
    let router = Router::new()
        .route("/bigquery/v2/projects/{project}/jobs", post(insert_job))
        .route("/bigquery/v2/projects/{project}/jobs/{id}", get(get_job))
        .route(
            "/bigquery/v2/projects/{project}/queries/{id}",
            get(query_results),
        )
        .fallback(|uri: axum::http::Uri| async move {
            google_error(
                StatusCode::NOT_FOUND,
                "notFound",
                &format!("the BigQuery double does not serve {}", uri.path()),
            )
        })
        .with_state(bq);
    let listener = tokio::net::TcpListener::bind((bind_ip, 0)).await.unwrap();
    let url = format!("http://{host}:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// The BigQuery double on a free loopback port; returns its base URL.
pub async fn start_bigquery(bq: BigQuery) -> String {
    start_bigquery_at(bq, "127.0.0.1", "127.0.0.1").await
}
