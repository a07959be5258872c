//! What `plan` and `export` read of a Kinde business, read-only: its APIs with their scopes
//! and authorized applications, its M2M applications with their owner keys, and, for the
//! pairs asked about, the scopes an application holds on an API. Kinde reports the last
//! only in a token: one client-credentials token of the application for the API's
//! audience is minted and dropped (never shown), its `scp` claim is the answer.

use std::collections::{BTreeMap, BTreeSet};

use secrecy::SecretString;

use crate::identity::OWNER_PROPERTY;
use crate::kinde::types::ApiScope;
use crate::kinde::{KindeClient, KindeError};

/// A Kinde API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindeApi {
    pub id: String,
    pub name: String,
    pub audience: String,
    pub management: bool,
    pub scopes: Vec<ApiScope>,
    /// Ids of the applications authorized for it.
    pub applications: BTreeSet<String>,
}

/// A Kinde M2M application (never its secret).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindeApplication {
    pub id: String,
    pub name: String,
    /// The owner key an installation recorded on it, if read and set.
    pub owner: Option<String>,
}

/// What an application holds on an API.
#[derive(Clone, Debug, PartialEq)]
pub enum Held {
    Scopes(BTreeSet<String>),
    /// Could not be read (why, without any secret).
    Unknown(String),
}

/// The business as read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub apis: Vec<KindeApi>,
    pub apps: Vec<KindeApplication>,
    /// By `(application id, API id)`.
    pub held: BTreeMap<(String, String), Held>,
}

impl Snapshot {
    pub fn app(&self, id: &str) -> Option<&KindeApplication> {
        self.apps.iter().find(|a| a.id == id)
    }

    pub fn api(&self, id: &str) -> Option<&KindeApi> {
        self.apis.iter().find(|a| a.id == id)
    }
}

/// Reads every API (scopes with descriptions, authorized applications) and every M2M
/// application but the operator's own management client; owner keys when `with_owners`.
pub async fn read(kinde: &KindeClient, with_owners: bool) -> Result<Snapshot, KindeError> {
    let mut snapshot = Snapshot::default();
    for summary in kinde.list_apis(false).await? {
        let mut api = KindeApi {
            id: summary.id.clone(),
            name: summary.name.clone(),
            audience: summary.audience.clone(),
            management: summary.is_management_api,
            ..KindeApi::default()
        };
        if !api.management {
            let full = kinde.get_api(&summary.id).await?;
            api.applications = full.applications.into_iter().map(|a| a.id).collect();
            api.scopes = kinde.list_api_scopes(&summary.id).await?;
        }
        snapshot.apis.push(api);
    }
    let management_client = kinde.management_client_id();
    for summary in kinde.list_applications().await? {
        if summary.app_type.as_deref().is_some_and(|t| t != "m2m")
            || summary.id == management_client
        {
            continue;
        }
        let owner = if with_owners {
            match kinde
                .application_property(&summary.id, OWNER_PROPERTY)
                .await
            {
                Ok(owner) => owner.filter(|o| !o.is_empty()),
                // No such property in this business yet: no owner anywhere.
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        snapshot.apps.push(KindeApplication {
            id: summary.id,
            name: summary.name,
            owner,
        });
    }
    Ok(snapshot)
}

/// Reads the scopes each `(application id, API id)` pair holds into `snapshot.held`.
pub async fn read_held(
    kinde: &KindeClient,
    snapshot: &mut Snapshot,
    pairs: &BTreeSet<(String, String)>,
) -> Result<(), KindeError> {
    let mut credentials: BTreeMap<String, (String, SecretString)> = BTreeMap::new();
    for (app_id, api_id) in pairs {
        let Some(api) = snapshot.api(api_id) else {
            continue;
        };
        let audience = api.audience.clone();
        if !credentials.contains_key(app_id) {
            let app = kinde.get_application(app_id).await?;
            let Some(secret) = app.client_secret else {
                snapshot.held.insert(
                    (app_id.clone(), api_id.clone()),
                    Held::Unknown("Kinde did not return the application's client secret".into()),
                );
                continue;
            };
            credentials.insert(app_id.clone(), (app.client_id, secret));
        }
        let Some((client_id, secret)) = credentials.get(app_id) else {
            continue;
        };
        let held = match kinde
            .application_scopes_for(client_id, secret, &audience)
            .await
        {
            Ok(scopes) => Held::Scopes(scopes.unwrap_or_default().into_iter().collect()),
            Err(e) => Held::Unknown(format!("its token for {audience} was refused: {e}")),
        };
        snapshot.held.insert((app_id.clone(), api_id.clone()), held);
    }
    Ok(())
}
