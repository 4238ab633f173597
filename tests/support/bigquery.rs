//! A BigQuery and Cloud Storage double for the seed 003 report job, which queries a view,
//! exports the result to Cloud Storage and downloads the export. It serves the calls Google's
//! Python clients make for that: BigQuery's job insert and read and query results (a query
//! job, then an extract job of the query's destination table into the export bucket), and
//! Cloud Storage's object list and media download. Each call is accepted only with a live
//! bearer token the Google doubles issued to the expected service account with a scope that
//! covers the API called, refused otherwise as Google's front end refuses. The export's
//! objects carry their CRC32C, which the storage client checks on download.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::cloud::Cloud;

pub const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Scopes that let a token read Cloud Storage objects.
const STORAGE_READ_SCOPES: [&str; 4] = [
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/devstorage.full_control",
    CLOUD_PLATFORM,
];
/// The one bucket the service account may export to and read from.
pub const EXPORT_BUCKET: &str = "acme-analytics-exports";
/// The rows every query returns: `(region, orders)`.
const ROWS: [(&str, i64); 2] = [("asia-northeast1", 1204), ("us-east4", 877)];

/// What the BigQuery double saw.
#[derive(Default)]
pub struct Seen {
    /// Bearer tokens of accepted requests.
    pub accepted: BTreeSet<String>,
    /// `(status, reason)` of refused requests.
    pub refused: Vec<(u16, String)>,
    /// Projects named in accepted request paths.
    pub projects: BTreeSet<String>,
    /// SQL of the query jobs inserted.
    pub queries: Vec<String>,
    /// Destination URIs of the extract jobs inserted, as the client sent them.
    pub exports: Vec<String>,
    /// Names of the objects downloaded from the export bucket.
    pub downloads: Vec<String>,
    /// Jobs by id, as inserted and completed.
    jobs: BTreeMap<String, Value>,
    /// Query results' tables, as `project:dataset.table`.
    tables: BTreeSet<String>,
    /// Objects of the export bucket, by name.
    objects: BTreeMap<String, Vec<u8>>,
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
    /// Checks the bearer token of a BigQuery call as Google's front end does: issued by the
    /// doubles, not expired, for the expected service account, with a scope that covers
    /// BigQuery.
    fn authorize(&self, headers: &HeaderMap, project: &str) -> Result<(), Box<Response>> {
        self.authorize_for(
            headers,
            &[BIGQUERY_SCOPE, CLOUD_PLATFORM],
            "The caller does not have bigquery.jobs.create permission.",
        )?;
        self.seen
            .lock()
            .unwrap()
            .projects
            .insert(project.to_owned());
        Ok(())
    }

    /// The same checks for a Cloud Storage read.
    fn authorize_storage(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        self.authorize_for(
            headers,
            &STORAGE_READ_SCOPES,
            "The caller does not have storage.objects.get access to the Google Cloud Storage object.",
        )
    }

    fn authorize_for(
        &self,
        headers: &HeaderMap,
        scopes: &[&str],
        denied: &str,
    ) -> Result<(), Box<Response>> {
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
            return Err(refuse(StatusCode::FORBIDDEN, "accessDenied", denied));
        }
        let covered = info.scopes.iter().any(|s| scopes.contains(&s.as_str()));
        if !covered {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "Request had insufficient authentication scopes.",
            ));
        }
        self.seen.lock().unwrap().accepted.insert(token.to_owned());
        Ok(())
    }
}

/// CRC-32C (Castagnoli) of `bytes`, the checksum Cloud Storage sends in `x-goog-hash`.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn crc32c_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc32c(bytes).to_be_bytes())
}

/// An object name as one URL path segment.
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The table a query job writes its result to, as BigQuery names anonymous tables.
fn destination_table(project: &str, id: &str) -> Value {
    json!({"projectId": project, "datasetId": "_0f3a9c41e2b8", "tableId": format!("anon_{id}")})
}

fn table_name(table: &Value) -> Option<String> {
    Some(format!(
        "{}:{}.{}",
        table["projectId"].as_str()?,
        table["datasetId"].as_str()?,
        table["tableId"].as_str()?
    ))
}

fn query_job(project: &str, id: &str, query: &str) -> Value {
    json!({
        "kind": "bigquery#job",
        "id": format!("{project}:US.{id}"),
        "jobReference": {"projectId": project, "jobId": id, "location": "US"},
        "configuration": {
            "query": {
                "query": query,
                "useLegacySql": false,
                "destinationTable": destination_table(project, id),
            },
            "jobType": "QUERY",
        },
        "status": {"state": "DONE"},
        "statistics": {"query": {"totalBytesProcessed": "2048", "statementType": "SELECT"}},
    })
}

/// The query result as the CSV an export writes: a header line, then one line per row.
fn export_csv() -> Vec<u8> {
    let mut csv = String::from("region,orders\n");
    for (region, orders) in ROWS {
        csv.push_str(&format!("{region},{orders}\n"));
    }
    csv.into_bytes()
}

/// Runs an extract job: the source must be a query's result, each destination a `gs://` URI
/// in the export bucket; the one file each URI names (its `*` numbered as BigQuery numbers
/// shards) is written to the bucket. Returns the finished job or a Google error.
fn extract(
    bq: &BigQuery,
    project: &str,
    id: &str,
    extract: &Value,
) -> Result<Value, Box<Response>> {
    let invalid =
        |message: &str| Box::new(google_error(StatusCode::BAD_REQUEST, "invalid", message));
    let source = table_name(&extract["sourceTable"]).ok_or_else(|| {
        invalid("Required parameter is missing: configuration.extract.sourceTable")
    })?;
    let uris: Vec<&str> = extract["destinationUris"]
        .as_array()
        .map(|uris| uris.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if uris.is_empty() {
        return Err(invalid(
            "Required parameter is missing: configuration.extract.destinationUris",
        ));
    }
    let format = extract["destinationFormat"].as_str().unwrap_or("CSV");
    if format != "CSV" {
        return Err(invalid(&format!(
            "the double exports CSV only, not {format}"
        )));
    }
    let mut seen = bq.seen.lock().unwrap();
    if !seen.tables.contains(&source) {
        return Err(Box::new(google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Table {source}"),
        )));
    }
    let mut objects = Vec::new();
    for uri in &uris {
        let Some((bucket, name)) = uri.strip_prefix("gs://").and_then(|p| p.split_once('/')) else {
            return Err(invalid(&format!("Invalid extract destination URI '{uri}'")));
        };
        if bucket != EXPORT_BUCKET {
            return Err(Box::new(google_error(
                StatusCode::FORBIDDEN,
                "accessDenied",
                &format!(
                    "Access Denied: BigQuery BigQuery: Permission denied while writing data to gs://{bucket}."
                ),
            )));
        }
        objects.push(name.replacen('*', "000000000000", 1));
    }
    for name in objects {
        seen.objects.insert(name, export_csv());
    }
    seen.exports.extend(uris.iter().map(|u| (*u).to_owned()));
    Ok(json!({
        "kind": "bigquery#job",
        "id": format!("{project}:US.{id}"),
        "jobReference": {"projectId": project, "jobId": id, "location": "US"},
        "configuration": {"extract": extract, "jobType": "EXTRACT"},
        "status": {"state": "DONE"},
        "statistics": {"extract": {"destinationUriFileCounts": vec!["1"; uris.len()]}},
    }))
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
    let id = body["jobReference"]["jobId"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("job_{}", bq.seen.lock().unwrap().jobs.len() + 1));
    let job = if let Some(query) = body["configuration"]["query"]["query"].as_str() {
        let job = query_job(&project, &id, query);
        let mut seen = bq.seen.lock().unwrap();
        seen.queries.push(query.to_owned());
        seen.tables
            .insert(table_name(&destination_table(&project, &id)).unwrap());
        job
    } else if body["configuration"]["extract"].is_object() {
        match extract(&bq, &project, &id, &body["configuration"]["extract"]) {
            Ok(job) => job,
            Err(error) => return *error,
        }
    } else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the double runs query and extract jobs: configuration.query.query or configuration.extract is required",
        );
    };
    bq.seen.lock().unwrap().jobs.insert(id, job.clone());
    axum::Json(job).into_response()
}

async fn get_job(
    State(bq): State<BigQuery>,
    UrlPath((project, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = bq.authorize(&headers, &project) {
        return *refused;
    }
    match bq.seen.lock().unwrap().jobs.get(&id) {
        Some(job) if job["jobReference"]["projectId"] == project.as_str() => {
            axum::Json(job.clone()).into_response()
        }
        _ => google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Job {project}:{id}"),
        ),
    }
}

async fn query_results(
    State(bq): State<BigQuery>,
    UrlPath((project, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = bq.authorize(&headers, &project) {
        return *refused;
    }
    let is_query = bq.seen.lock().unwrap().jobs.get(&id).is_some_and(|job| {
        job["jobReference"]["projectId"] == project.as_str()
            && job["configuration"]["jobType"] == "QUERY"
    });
    if !is_query {
        return google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Job {project}:{id}"),
        );
    }
    let rows: Vec<Value> = ROWS
        .iter()
        .map(|(region, orders)| json!({"f": [{"v": region}, {"v": orders.to_string()}]}))
        .collect();
    axum::Json(json!({
        "kind": "bigquery#getQueryResultsResponse",
        "jobReference": {"projectId": project, "jobId": id, "location": "US"},
        "jobComplete": true,
        "schema": {"fields": [
            {"name": "region", "type": "STRING", "mode": "NULLABLE"},
            {"name": "orders", "type": "INTEGER", "mode": "NULLABLE"},
        ]},
        "rows": rows,
        "totalRows": ROWS.len().to_string(),
        "totalBytesProcessed": "2048",
        "cacheHit": false,
    }))
    .into_response()
}

fn no_such_bucket(bucket: &str) -> Response {
    google_error(
        StatusCode::NOT_FOUND,
        "notFound",
        &format!("The specified bucket does not exist: {bucket}"),
    )
}

/// `GET /storage/v1/b/{bucket}/o?prefix=P`: the export bucket's objects whose names start
/// with the prefix, each with the download link Cloud Storage gives (at the host the client
/// called).
async fn list_objects(
    State(bq): State<BigQuery>,
    UrlPath(bucket): UrlPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = bq.authorize_storage(&headers) {
        return *refused;
    }
    if bucket != EXPORT_BUCKET {
        return no_such_bucket(&bucket);
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("storage.googleapis.com");
    let prefix = query.get("prefix").map_or("", String::as_str);
    let seen = bq.seen.lock().unwrap();
    let items: Vec<Value> = seen
        .objects
        .range(prefix.to_owned()..)
        .take_while(|(name, _)| name.starts_with(prefix))
        .map(|(name, data)| {
            json!({
                "kind": "storage#object",
                "id": format!("{bucket}/{name}/1"),
                "name": name,
                "bucket": bucket,
                "generation": "1",
                "metageneration": "1",
                "contentType": "application/octet-stream",
                "size": data.len().to_string(),
                "crc32c": crc32c_base64(data),
                "mediaLink": format!(
                    "http://{host}/download/storage/v1/b/{bucket}/o/{}?generation=1&alt=media",
                    path_segment(name)
                ),
            })
        })
        .collect();
    axum::Json(json!({"kind": "storage#objects", "items": items})).into_response()
}

/// `GET /download/storage/v1/b/{bucket}/o/{object}?alt=media`: the object's bytes with their
/// CRC32C in `x-goog-hash`.
async fn download_object(
    State(bq): State<BigQuery>,
    UrlPath((bucket, name)): UrlPath<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = bq.authorize_storage(&headers) {
        return *refused;
    }
    if bucket != EXPORT_BUCKET {
        return no_such_bucket(&bucket);
    }
    if query.get("alt").map(String::as_str) != Some("media") {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the download endpoint serves alt=media only",
        );
    }
    let mut seen = bq.seen.lock().unwrap();
    let Some(data) = seen.objects.get(&name).cloned() else {
        return google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("No such object: {bucket}/{name}"),
        );
    };
    seen.downloads.push(name);
    (
        [
            ("content-type", "application/octet-stream".to_owned()),
            ("x-goog-generation", "1".to_owned()),
            ("x-goog-hash", format!("crc32c={}", crc32c_base64(&data))),
        ],
        data,
    )
        .into_response()
}

/// The double on a free port of `bind_ip`; returns its base URL at `host`, which serves both
/// BigQuery's and Cloud Storage's paths.
pub async fn start_bigquery_at(bq: BigQuery, bind_ip: &str, host: &str) -> String {
    let router = Router::new()
        .route("/bigquery/v2/projects/{project}/jobs", post(insert_job))
        .route("/bigquery/v2/projects/{project}/jobs/{id}", get(get_job))
        .route(
            "/bigquery/v2/projects/{project}/queries/{id}",
            get(query_results),
        )
        .route("/storage/v1/b/{bucket}/o", get(list_objects))
        .route(
            "/download/storage/v1/b/{bucket}/o/{object}",
            get(download_object),
        )
        .fallback(|uri: axum::http::Uri| async move {
            google_error(
                StatusCode::NOT_FOUND,
                "notFound",
                &format!(
                    "the BigQuery and Cloud Storage double does not serve {}",
                    uri.path()
                ),
            )
        })
        .with_state(bq);
    let listener = tokio::net::TcpListener::bind((bind_ip, 0)).await.unwrap();
    let url = format!("http://{host}:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// The double on a free loopback port; returns its base URL.
pub async fn start_bigquery(bq: BigQuery) -> String {
    start_bigquery_at(bq, "127.0.0.1", "127.0.0.1").await
}

/// Checks the report program's export: one extract into the export bucket, whose one file
/// was downloaded and read back as the query's rows.
pub fn assert_exported_and_downloaded(report: &Value, seen: &Seen) {
    let rows: Vec<Value> = ROWS
        .iter()
        .map(|(region, orders)| json!({"region": region, "orders": orders}))
        .collect();
    assert_eq!(report["rows"], json!(rows), "the query's rows");
    assert_eq!(seen.exports.len(), 1, "one extract job: {:?}", seen.exports);
    let uri = &seen.exports[0];
    let name = uri
        .strip_prefix(&format!("gs://{EXPORT_BUCKET}/"))
        .unwrap_or_else(|| panic!("the export went to {uri}, not the export bucket"))
        .replacen('*', "000000000000", 1);
    assert_eq!(report["exported"], json!([name]), "the objects listed");
    assert_eq!(seen.downloads, vec![name], "the objects downloaded");
    assert_eq!(
        report["downloaded_rows"],
        json!(rows),
        "the downloaded file's rows"
    );
}
