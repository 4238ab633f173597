//! Where the signature verifier gets an access key's secret: the static keys of the config, and
//! the temporary credentials a moto server issued (its `GET /moto-api/data.json` state,
//! `sts.AssumedRole[*]` and `iam.AccessKey[*]`), fetched again whenever a key is unknown.
//!
//! Secrets stay in here and in the verifier; nothing logs or returns them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;

use crate::sync::lock;

pub(crate) struct KeySource {
    static_keys: HashMap<String, String>,
    moto_url: Option<String>,
    moto_keys: Mutex<HashMap<String, String>>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct MotoState {
    #[serde(default)]
    sts: MotoSts,
    #[serde(default)]
    iam: MotoIam,
}

#[derive(Deserialize, Default)]
struct MotoSts {
    #[serde(rename = "AssumedRole", default)]
    assumed_role: Vec<MotoKey>,
}

#[derive(Deserialize, Default)]
struct MotoIam {
    #[serde(rename = "AccessKey", default)]
    access_key: Vec<MotoKey>,
}

#[derive(Deserialize)]
struct MotoKey {
    access_key_id: String,
    secret_access_key: String,
}

/// Why no secret was found.
#[derive(Debug)]
pub(crate) enum KeyError {
    /// Neither the static keys nor moto know the key.
    Unknown,
    /// Moto could not be asked.
    Moto(String),
}

impl KeySource {
    pub fn new(
        static_keys: &[(String, String)],
        moto_url: Option<&str>,
        http: reqwest::Client,
    ) -> Self {
        KeySource {
            static_keys: static_keys.iter().cloned().collect(),
            moto_url: moto_url.map(|u| u.trim_end_matches('/').to_owned()),
            moto_keys: Mutex::new(HashMap::new()),
            http,
        }
    }

    /// The secret of `access_key_id`.
    pub async fn secret(&self, access_key_id: &str) -> Result<String, KeyError> {
        if let Some(secret) = self.static_keys.get(access_key_id) {
            return Ok(secret.clone());
        }
        if let Some(secret) = lock(&self.moto_keys).get(access_key_id) {
            return Ok(secret.clone());
        }
        let Some(moto_url) = &self.moto_url else {
            return Err(KeyError::Unknown);
        };
        let fresh = self.fetch(moto_url).await?;
        let mut known = lock(&self.moto_keys);
        known.extend(fresh);
        known.get(access_key_id).cloned().ok_or(KeyError::Unknown)
    }

    async fn fetch(&self, moto_url: &str) -> Result<HashMap<String, String>, KeyError> {
        let response = self
            .http
            .get(format!("{moto_url}/moto-api/data.json"))
            .send()
            .await
            .map_err(|e| KeyError::Moto(format!("GET /moto-api/data.json failed: {e}")))?;
        if !response.status().is_success() {
            return Err(KeyError::Moto(format!(
                "GET /moto-api/data.json answered {}",
                response.status()
            )));
        }
        let state: MotoState = response
            .json()
            .await
            .map_err(|e| KeyError::Moto(format!("unexpected /moto-api/data.json: {e}")))?;
        Ok(state
            .sts
            .assumed_role
            .into_iter()
            .chain(state.iam.access_key)
            .map(|k| (k.access_key_id, k.secret_access_key))
            .collect())
    }
}
