//! The GCE metadata protocol (DESIGN.md §5) that fedcred's pod-local emulator speaks, so that
//! every unchanged Google client library finds its token.
//!
//! This module owns the decisions: interpreting one reading of the token's files ([`view`]:
//! `expires_in`, never an expired token), the protocol ([`protocol`]: which paths exist, which
//! requests are refused, what each answer says) and the environment that points client
//! libraries at the emulator ([`client_env`], for the webhook). Reading the files and serving
//! HTTP are the `fedcred` crate's `metadata` adapter.
//!
//! # Answers
//! Every answer carries `Metadata-Flavor: Google`. Requests need `Metadata-Flavor: Google`
//! (403 otherwise) except `GET /`, which GCE answers to anyone and which reveals nothing;
//! requests carrying `X-Forwarded-For` or `Forwarded` get 403; only GET and HEAD exist (405);
//! odd paths (`..`, `//`, encoded `/`) and unknown ones get 404.
//!
//! | path under `/computeMetadata/v1/` | answer |
//! |---|---|
//! | `instance/service-accounts/default/token` | `{"access_token","expires_in","token_type"}`; 503 when missing or expired (or within [`view::EXPIRY_MARGIN`]) |
//! | `…/default/token?scopes=A,B` | the same token for Google Cloud API scopes, as a GCE VM serves its own scopes whatever is asked (libraries ask for `cloud-platform` by default; the API's 403 names a scope the token lacks); 400 naming `spec.google.scopes` for a sign-in scope the token does not list (`alloydb.login`, `sqlservice.login`, the identity scopes) and for anything that is not a Google API scope ([`protocol::scopes_missing`]); a new token with other scopes is never minted |
//! | `…/default/identity?audience=A[&format=full][&licenses=TRUE]` | an ID token of the impersonated service account for `A`, minted by the emulator through IAM Credentials `generateIdToken`, with the email when `format=full`; cached per audience ([`identity`]: where it is minted, the cache, every refusal) |
//! | `…/default/email` | `service_account`, or `default` for a federated token ([`view::FEDERATED_EMAIL`]) |
//! | `…/default/scopes` | the Secret's optional `scopes` key, else `cloud-platform` ([`view::DEFAULT_SCOPE`]) |
//! | `…/default/?recursive=true` | `{"aliases":["default"],"email","scopes"}` |
//! | `instance/service-accounts/` | `default/` and the email; the account is also served under its email |
//! | `instance/attributes/`, `project/attributes/` | empty listing (`{}` when recursive); any key below is 404 |
//! | `instance/zone`, `instance/id`, `instance/hostname` | 404 on purpose, the body saying this is not a Compute Engine instance: inventing values would mislead what reads them (Go's `metadata.Zone()` returns `NotDefinedError`, which callers handle) |
//! | `project/project-id` | `project_id`, 404 when unknown |
//! | `project/numeric-project-id` | the optional `numeric_project_id` key, 404 when unknown (the controller does not learn the number) |
//! | `universe/universe-domain` | `googleapis.com` (or the optional `universe_domain` key) |
//!
//! Query parameters: `recursive=true` turns a directory into one JSON object; `alt=json`
//! renders a leaf as a JSON value (numbers as numbers) and a directory as with `recursive`;
//! `alt=text` is the default rendering, and with `recursive=true` GCE's flattened form (one
//! `path value` line per leaf, paths spelled as the JSON keys); any other `alt` is 400. `wait_for_change=true`
//! is refused with 400 and the reason: nothing here changes but the token, whose `expires_in`
//! says when to ask again, and a long poll would hold a connection per waiting client.
//!
//! The client matrix (`tests/clients.rs`) runs Python google-auth, Go's x/oauth2/google,
//! compute/metadata and api/idtoken, Node's google-auth-library and Java's
//! google-auth-library-oauth2-http against both `fedcred metadata-server` and `fedcred agent`;
//! `docs/metadata.md` lists per library what it reads.
//!
//! Why `default` as the email of a federated token: google-auth reads the email to label the
//! credential and looks up regional access boundaries only for `…@….gserviceaccount.com`
//! addresses (`compute_engine/credentials.py` `_build_regional_access_boundary_lookup_url`,
//! `_metadata._is_service_account_email`); Go's `cloud.google.com/go/auth` reads it for the
//! same lookup only when `GOOGLE_AUTH_TRUST_BOUNDARY_ENABLED` is set; Java reads it to sign
//! blobs through IAM (`getAccount`). `default` is inert in all of them and names no identity
//! that does not exist (GKE answers the analogous case with `PROJECT.svc.id.goog`).
//! Scopes: the controller writes the scopes it asked for as the Secret's `scopes` key
//! (space-separated); Secrets written without it get the cloud-platform default.
//!
//! # How each library finds the emulator (evidence for [`client_env::injected_env`])
//! **Python google-auth 2.62.2** (`google/auth/compute_engine/_metadata.py`):
//! - lines 55-59: the data host is `GCE_METADATA_HOST`, else `GCE_METADATA_ROOT`, else
//!   `metadata.google.internal`; read once at import time.
//! - lines 92-97, 225-236: the detection ping is `GET http://$GCE_METADATA_IP` (default
//!   `169.254.169.254`, which on EC2/EKS is the AWS instance metadata service), with the
//!   header, and needs status 200 plus `Metadata-Flavor: Google` in the answer. So
//!   `GCE_METADATA_IP` is required: `GCE_METADATA_HOST` alone is never pinged.
//! - line 122, 139-150: `NO_GCE_CHECK=true` disables detection; a failed ping falls back to
//!   `/sys/class/dmi/id/product_name` starting with `Google` (false on AWS).
//! - lines 390-404: a body is parsed as JSON only when `Content-Type` is `application/json`.
//! - `_default.py` lines 390-416, 704-713: ADC tries `GOOGLE_APPLICATION_CREDENTIALS`, the
//!   gcloud ADC file and App Engine before the metadata server, then asks `project/project-id`
//!   (a 404 just leaves the project unknown); `GOOGLE_CLOUD_PROJECT` wins over it.
//! - `_mtls.py` `_parse_mds_mode`: `GCE_METADATA_MTLS_MODE=strict` refuses any custom host.
//! - retries 500/503/504/408/429 up to 5 times (`transport/__init__.py` lines 30-36), so a
//!   503 for an expired token is retried, not cached.
//!
//! **Go `cloud.google.com/go/compute/metadata` v0.10.0** (`metadata.go`):
//! - line 47: `GCE_METADATA_HOST` is the only variable.
//! - lines 456-461: `OnGCE` returns true at once when `GCE_METADATA_HOST` is non-empty; no
//!   probe. Otherwise (lines 429-450) it probes `http://169.254.169.254` without the header
//!   and resolves `metadata.google.internal.`, neither of which reaches the emulator.
//! - lines 519-534: requests go to `http://$GCE_METADATA_HOST/computeMetadata/v1/…` with the
//!   header; 404 is `NotDefinedError` (line 572); 5xx is retried (`retry.go` lines 87-95).
//! - `golang.org/x/oauth2` v0.38.0 `google/default.go` line 253 and `google/google.go`
//!   line 294, and `cloud.google.com/go/auth` v0.24.4 `credentials/detect.go` line 172 and
//!   `credentials/compute.go` line 92: ADC uses the metadata server when `OnGCE`, and a token
//!   answer with `expires_in == 0` is an error, hence never answering 0.
//!
//! **Java google-auth-library-java** (`oauth2_http/.../ComputeEngineCredentials.java`,
//! `DefaultCredentialsProvider.java`):
//! - `getMetadataServerUrl`: `http://$GCE_METADATA_HOST`, else
//!   `http://metadata.google.internal`.
//! - `isOnGce`: `NO_GCE_CHECK` (parsed as a boolean) disables it; `pingComputeEngineMetadata`
//!   sends `GET http://$GCE_METADATA_HOST` (the root) with the header and only checks that the
//!   answer carries `Metadata-Flavor: Google`; then the SMBIOS product name.
//! - `refreshAccessToken`: `…/service-accounts/default/token`, parses `access_token` and
//!   `expires_in`; a 503 becomes a retryable `GoogleAuthException`.
//! - The project id does not come from the credentials: google-cloud-core's
//!   `ServiceOptions.getDefaultProjectId` reads `GOOGLE_CLOUD_PROJECT` / `GCLOUD_PROJECT`
//!   first and its metadata fallback (`MetadataConfig`) uses a hard-coded
//!   `http://metadata/computeMetadata/v1/`, ignoring `GCE_METADATA_HOST`; hence
//!   [`client_env::project_env`].
//!
//! **Node gcp-metadata** (`src/index.ts`): base address `GCE_METADATA_IP` (newer releases
//! also `GCE_METADATA_HOST`); `isAvailable` gets `/computeMetadata/v1/instance` and needs the
//! header and a non-empty body, which `instance/` provides.
//!
//! **oauth2client, gcloud's apitools**: `GCE_METADATA_ROOT` for data, `GCE_METADATA_IP` for
//! the ping.

pub mod client_env;
pub mod identity;
pub mod protocol;
pub mod view;

pub use client_env::{DEFAULT_LISTEN, injected_env, project_env};
