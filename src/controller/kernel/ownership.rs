//! The owner record in Kinde (see [`crate::identity`]): the installation's owner keys, the
//! application property that holds them (defined once per Kinde business), and what is
//! known of the owners of applications already looked at.
//!
//! The property is an addition to a working installation: a management application
//! without the property scopes (an upgrade that did not add them) keeps working, its
//! applications are just not recoverable after a rebuild. Kinde refusing the property is
//! logged once per [`RETRY_AFTER_REFUSAL`] and not tried again before, so a fleet does not
//! pay a refused call per reconcile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::identity::{
    OWNER_CATEGORY, OWNER_PROPERTY, OWNER_PROPERTY_DESCRIPTION, OWNER_PROPERTY_NAME, owner_key,
};
use crate::kinde::{KindeClient, KindeError};

/// How long a refused property (scopes missing) is left alone.
pub const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(600);

/// Whether the owner record can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRecord {
    Available,
    /// Kinde refused the property (the management application lacks its scopes).
    Refused,
}

pub struct Ownership {
    installation: String,
    defined: tokio::sync::OnceCell<()>,
    refused_at: Mutex<Option<Instant>>,
    /// Owner keys of applications looked at (`None`: no owner), by application id.
    owners: Mutex<HashMap<String, Option<String>>>,
}

impl Ownership {
    pub fn new(installation: String) -> Self {
        Self {
            installation,
            defined: tokio::sync::OnceCell::new(),
            refused_at: Mutex::new(None),
            owners: Mutex::default(),
        }
    }

    pub fn installation(&self) -> &str {
        &self.installation
    }

    /// The owner key of the object `namespace/name`.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        owner_key(&self.installation, namespace, name)
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Defines the property in Kinde if that was not done yet by this process.
    async fn define(&self, kinde: &KindeClient) -> Result<OwnerRecord, KindeError> {
        let refused_recently = self
            .refused_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_REFUSAL);
        if refused_recently {
            return Ok(OwnerRecord::Refused);
        }
        let defined = self
            .defined
            .get_or_try_init(|| async {
                kinde
                    .ensure_application_property(
                        OWNER_PROPERTY,
                        OWNER_PROPERTY_NAME,
                        OWNER_PROPERTY_DESCRIPTION,
                        OWNER_CATEGORY,
                    )
                    .await
            })
            .await;
        match defined {
            Ok(()) => Ok(OwnerRecord::Available),
            Err(e) => self.refusal(e),
        }
    }

    fn refusal(&self, e: KindeError) -> Result<OwnerRecord, KindeError> {
        if matches!(e, KindeError::Forbidden { .. }) {
            tracing::warn!(error = %e, "Kinde refused the owner property: applications are not recoverable after a cluster rebuild until the management application has the property scopes (see the README)");
            *self.refused_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            Ok(OwnerRecord::Refused)
        } else {
            Err(e)
        }
    }

    /// The owner key recorded on application `id` (read once per process).
    pub async fn owner_of(
        &self,
        kinde: &KindeClient,
        id: &str,
    ) -> Result<Option<String>, KindeError> {
        if let Some(known) = self.owners().get(id) {
            return Ok(known.clone());
        }
        if self.define(kinde).await? == OwnerRecord::Refused {
            return Ok(None);
        }
        let owner = match kinde.application_property(id, OWNER_PROPERTY).await {
            Ok(owner) => owner,
            Err(e) if e.is_not_found() => None,
            Err(e) => return self.refusal(e).map(|_| None),
        };
        self.owners().insert(id.to_owned(), owner.clone());
        Ok(owner)
    }

    /// Records `owner` (or, with `None`, no owner) on application `id`.
    pub async fn record(
        &self,
        kinde: &KindeClient,
        id: &str,
        owner: Option<&str>,
    ) -> Result<OwnerRecord, KindeError> {
        if self.define(kinde).await? == OwnerRecord::Refused {
            return Ok(OwnerRecord::Refused);
        }
        if let Err(e) = kinde
            .set_application_property(id, OWNER_PROPERTY, owner.unwrap_or(""))
            .await
        {
            return self.refusal(e);
        }
        self.owners()
            .insert(id.to_owned(), owner.map(str::to_owned));
        Ok(OwnerRecord::Available)
    }

    /// Forgets a deleted application.
    pub fn forget(&self, id: &str) {
        self.owners().remove(id);
    }
}
