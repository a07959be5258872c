//! What the tests read from Kinde's side: the credentials the operator wrote into a
//! Secret, the tokens the emulator issues for them, and the emulator's state (its Kinde
//! applications and APIs, management client excluded).

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

use super::{Emulator, WAIT, wait_for};

/// The value of `key` in a Secret's data.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// What a consumer reads from an M2MApplication's credentials Secret (empty where a key is
/// missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
    /// `KINDE_AUDIENCE`: space-separated audiences.
    pub audience: String,
}

impl Credentials {
    pub fn of(secret: &Secret) -> Self {
        let key = |k: &str| secret_value(secret, k).unwrap_or_default();
        Self {
            client_id: key("KINDE_CLIENT_ID"),
            client_secret: key("KINDE_CLIENT_SECRET"),
            audience: key("KINDE_AUDIENCE"),
        }
    }

    /// The audiences of `KINDE_AUDIENCE`, sorted.
    pub fn audiences(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.audience.split_whitespace().collect();
        v.sort_unstable();
        v
    }
}

/// The credentials in Secret `name`; fails while it has no client id.
pub async fn credentials(secrets: &Api<Secret>, name: &str) -> anyhow::Result<Credentials> {
    let secret = secrets
        .get(name)
        .await
        .with_context(|| format!("Secret {name}"))?;
    let creds = Credentials::of(&secret);
    anyhow::ensure!(
        !creds.client_id.is_empty(),
        "no KINDE_CLIENT_ID in Secret {name}"
    );
    Ok(creds)
}

/// The strings of a JSON array (non-strings and non-arrays give nothing).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// `&[&str]` as owned strings, sorted (to compare with sorted scope lists).
pub fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// The scope keys of a Kinde API (from the emulator's state), sorted.
pub fn scope_keys(api: &Value) -> Vec<String> {
    let mut keys: Vec<String> = api["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["key"].as_str().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

/// The Kinde applications in an emulator state (`GET /_emulator/state`) other than the
/// management client.
pub fn kinde_apps_of(state: &Value) -> Vec<Value> {
    state["applications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["is_management_client"] != true)
        .cloned()
        .collect()
}

/// The Kinde APIs in an emulator state other than the Management API.
pub fn kinde_apis_of(state: &Value) -> Vec<Value> {
    state["apis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["is_management_api"] != true)
        .cloned()
        .collect()
}

impl Emulator {
    /// The sorted `scp` claim of a token for `creds` on `audience`, or Kinde's refusal.
    pub async fn scp(
        &self,
        creds: &Credentials,
        audience: &str,
    ) -> anyhow::Result<Result<Vec<String>, String>> {
        Ok(self
            .token_claims(&creds.client_id, &creds.client_secret, audience)
            .await?
            .map(|claims| {
                let mut v = strings(&claims["scp"]);
                v.sort();
                v
            }))
    }

    /// Waits until a token for `creds` on `audience` carries exactly `scopes`.
    pub async fn wait_scp(
        &self,
        creds: &Credentials,
        audience: &str,
        scopes: &[&str],
    ) -> anyhow::Result<()> {
        let want = sorted(scopes);
        wait_for(
            &format!(
                "a token for {} on {audience} with scp {want:?}",
                creds.client_id
            ),
            WAIT,
            || async {
                match self.scp(creds, audience).await? {
                    Ok(got) if got == want => Ok(Some(())),
                    other => Err(anyhow!("token: {other:?}")),
                }
            },
        )
        .await
    }

    /// Waits until a token request for `creds` on `audience` is refused; returns the refusal.
    pub async fn wait_refused(
        &self,
        creds: &Credentials,
        audience: &str,
    ) -> anyhow::Result<String> {
        wait_for(
            &format!(
                "the token request of {} for {audience} to be refused",
                creds.client_id
            ),
            WAIT,
            || async {
                match self.scp(creds, audience).await? {
                    Err(refusal) => Ok(Some(refusal)),
                    Ok(scp) => Err(anyhow!("still granted, scp {scp:?}")),
                }
            },
        )
        .await
    }

    /// The Kinde APIs in the emulator's state other than the Management API.
    pub async fn kinde_apis(&self) -> anyhow::Result<Vec<Value>> {
        Ok(kinde_apis_of(&self.state().await?))
    }

    /// The Kinde API with id `id`, if any.
    pub async fn kinde_api(&self, id: &str) -> anyhow::Result<Option<Value>> {
        Ok(self.kinde_apis().await?.into_iter().find(|a| a["id"] == id))
    }

    /// The Kinde API with `audience`, if any.
    pub async fn kinde_api_by_audience(&self, audience: &str) -> anyhow::Result<Option<Value>> {
        Ok(self
            .kinde_apis()
            .await?
            .into_iter()
            .find(|a| a["audience"] == audience))
    }

    /// The Kinde application with id `id`, if any (the management client included).
    pub async fn kinde_app(&self, id: &str) -> anyhow::Result<Option<Value>> {
        Ok(self.state().await?["applications"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["id"] == id)
            .cloned())
    }

    /// The Kinde applications (management client excluded): id -> name.
    pub async fn kinde_app_names(&self) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(self
            .kinde_apps()
            .await?
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap_or_default().to_owned(),
                    a["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Deletes `path` (like `/api/v1/apis/<id>`) in Kinde behind the operator's back.
    pub async fn mgmt_delete(&self, path: &str) -> anyhow::Result<()> {
        self.mgmt(reqwest::Method::DELETE, path, None)
            .await
            .map(drop)
    }

    /// Creates an M2M application in Kinde behind the operator's back (as the dashboard
    /// does); returns Kinde's `application` object (`id`, `client_id`, `client_secret`).
    pub async fn create_kinde_app(&self, name: &str) -> anyhow::Result<Value> {
        let created = self
            .mgmt(
                reqwest::Method::POST,
                "/api/v1/applications",
                Some(json!({"name": name, "type": "m2m"})),
            )
            .await?;
        anyhow::ensure!(
            created["application"]["id"].is_string(),
            "no application id: {created}"
        );
        Ok(created["application"].clone())
    }

    /// Creates an API in Kinde behind the operator's back; returns its id.
    pub async fn create_kinde_api(&self, name: &str, audience: &str) -> anyhow::Result<String> {
        let created = self
            .mgmt(
                reqwest::Method::POST,
                "/api/v1/apis",
                Some(json!({"name": name, "audience": audience})),
            )
            .await?;
        created["api"]["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no api.id: {created}"))
    }

    /// Waits until the emulator has counted at least `n` calls of `operation` (a call it
    /// holds counts on arrival: the caller is then blocked inside it).
    pub async fn wait_calls(&self, operation: &str, n: u64) -> anyhow::Result<()> {
        wait_for(
            &format!("{n} {operation} call(s) in the emulator"),
            WAIT,
            || async { Ok((self.call_count(operation).await? >= n).then_some(())) },
        )
        .await
    }

    /// Removes every pending fault.
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.control(reqwest::Method::DELETE, "faults", None)
            .await
            .map(drop)
    }
}
