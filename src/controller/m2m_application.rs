//! M2MApplication: one Kinde M2M application and its credentials Secret.
//!
//! Crash safety: Kinde application names are not unique and a create is not idempotent, so
//! the application is created under a name carrying a marker derived from the object's
//! UID (`<displayName> [kmo:<uid>]`). Before any create the operator lists applications
//! and adopts one carrying the marker (its own, from before a crash or a lost response).
//! Only once the id is in the status is the application renamed to its display name.

use std::sync::Arc;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::rotation;
use super::{
    Context, Error, FIELD_MANAGER, Managed, Outcome, Result, Scope, api_for, apply_status,
    effective_deletion_policy, record_change, wait_if_paused,
};
use crate::conditions::{self, reasons};
use crate::crd::{
    ApiGrant, DeletionPolicy, KindeAnnotations, M2MApplication, M2MApplicationStatus,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::kinde::KindeError;
use crate::metrics::AppLabels;
use crate::secret;

impl Managed for M2MApplication {
    const KIND: &'static str = "M2MApplication";

    type Status = M2MApplicationStatus;

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn converge(&self, ctx: &Context, status: &mut Self::Status) -> Result<Outcome> {
        converge(self, ctx, status).await
    }

    fn status_changed(&self, ctx: &Context) {
        ctx.wake_grants.wake_all(&grants_of(ctx, self));
    }

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        wait_if_paused(obj.as_ref())?;
        let status = obj.status.clone().unwrap_or_default();
        if effective_deletion_policy(obj.spec.deletion_policy, obj.as_ref())
            == DeletionPolicy::Delete
        {
            let mut ids: Vec<String> = status.application_id.iter().cloned().collect();
            ids.extend(status.retiring.iter().map(|r| r.application_id.clone()));
            if status.application_id.is_none() && obj.external_id().is_none() {
                // Created but not recorded (crash or lost response): find it by marker.
                if let Some(found) = find_marked(&ctx, &creation_marker(obj.as_ref())?).await? {
                    ids.push(found);
                }
            }
            for id in ids {
                match ctx.kinde.delete_application(&id).await {
                    Ok(()) => {
                        record_change(
                            &ctx,
                            obj.as_ref(),
                            "Deleted",
                            format!("deleted Kinde application {id}"),
                        )
                        .await;
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        ctx.wake_grants.wake_all(&grants_of(&ctx, &obj));
        Ok(Action::await_change())
    }
}

/// The grants in the application's namespace that name it.
pub fn grants_of(ctx: &Context, app: &M2MApplication) -> Vec<Arc<ApiGrant>> {
    let (ns, name) = (app.namespace(), app.name_any());
    ctx.grants
        .find(|g| g.namespace() == ns && g.spec.application_ref.name == name)
}

/// Watches of the operator's Secrets, metadata only (their data never sits in memory),
/// one per namespace slot: a deleted or edited Secret wakes its M2MApplication.
pub(super) fn secret_triggers(
    client: &kube::Client,
    scope: &Scope,
) -> Vec<
    impl Stream<Item = std::result::Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static,
> {
    scope
        .slots()
        .into_iter()
        .map(|slot| {
            let config = watcher::Config::default()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
            watcher(api_for::<PartialObjectMeta<Secret>>(client, &slot), config)
                .default_backoff()
                .touched_objects()
        })
        .collect()
}

/// The object's UID, compacted: the stable part of every marker.
fn uid_marker_body(obj: &M2MApplication) -> Result<String> {
    let uid = obj.uid().ok_or(Error::MissingMetadata("uid"))?;
    Ok(uid.chars().filter(|c| *c != '-').take(16).collect())
}

/// The name suffix that identifies the application first created for this object.
fn creation_marker(obj: &M2MApplication) -> Result<String> {
    Ok(format!("[kmo:{}]", uid_marker_body(obj)?))
}

/// Whether a name still carries an operator marker (creation or rotation).
fn is_marked(name: &str) -> bool {
    name.trim_end().ends_with(']') && name.contains(" [kmo:")
}

/// The id of the application whose name carries `marker`, if any.
async fn find_marked(ctx: &Context, marker: &str) -> Result<Option<String>> {
    let apps = ctx.kinde.list_applications().await?;
    Ok(apps
        .into_iter()
        .find(|a| a.name.ends_with(marker))
        .map(|a| a.id))
}

/// What the operator knows of its Kinde application after finding or creating it.
pub(super) struct KindeApp {
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub secret: SecretString,
    /// Kinde's type (`m2m`, `reg`, ...) when known; adoption refuses anything but `m2m`.
    pub app_type: Option<String>,
}

fn validate(obj: &M2MApplication) -> Option<String> {
    let display = obj.display_name();
    if display.trim().is_empty() || display.chars().count() > 64 {
        return Some(format!(
            "the display name {display:?} must be 1-64 characters (spec.displayName, or <namespace>/<name> by default)"
        ));
    }
    if let Err(e) = obj.spec.rotation.overlap() {
        return Some(e.to_string());
    }
    if let Err(e) = obj.spec.rotation.every() {
        return Some(e.to_string());
    }
    None
}

async fn converge(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
) -> Result<Outcome> {
    // A rotation is decided on `lastHandledRotateRequest`/`lastRotationTime` as the
    // reflector has them, and the reflector can lag behind our own last status write: a
    // reconcile woken by the Secret that rotation just wrote (or by a grant) can start
    // before the watch delivers that status. The rotation then looks pending again and,
    // its successor having lost its marker, a third application would be created. So a
    // rotation that looks due is confirmed on the object as the API server has it now
    // (a `list`, the verb the operator is granted), and the whole reconcile runs on that.
    if !obj.is_paused() && rotation_looks_due(obj, status, Timestamp::now()) {
        let fresh = current_copy(ctx, obj).await?;
        if let Some(fresh) = fresh.filter(|f| f.resource_version() != obj.resource_version()) {
            tracing::debug!("rotation looked due on a stale cached copy; using the current one");
            *status = fresh.status.clone().unwrap_or_default();
            return converge_on(&fresh, ctx, status).await;
        }
    }
    converge_on(obj, ctx, status).await
}

/// Whether [`converge_on`] would rotate now, given `status` (pure).
fn rotation_looks_due(obj: &M2MApplication, status: &M2MApplicationStatus, now: Timestamp) -> bool {
    let every = obj.spec.rotation.every().ok().flatten();
    let base = status
        .last_rotation_time
        .clone()
        .or_else(|| obj.meta().creation_timestamp.clone());
    let status = M2MApplicationStatus {
        next_rotation_time: rotation::next_scheduled(every, base.as_ref(), now),
        ..status.clone()
    };
    rotation::due(obj, &status, now).is_some()
}

/// The object as the API server has it now (a quorum read, not the cache).
async fn current_copy(ctx: &Context, obj: &M2MApplication) -> Result<Option<M2MApplication>> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<M2MApplication> = Api::namespaced(ctx.client.clone(), &ns);
    let params =
        kube::api::ListParams::default().fields(&format!("metadata.name={}", obj.name_any()));
    Ok(api.list(&params).await?.items.into_iter().next())
}

async fn converge_on(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
) -> Result<Outcome> {
    if let Some(problem) = validate(obj) {
        return Ok(Outcome::not_ready(reasons::INVALID_SPEC, problem));
    }
    let paused = obj.is_paused();
    let mut app = match ensure_app(obj, ctx, status, paused).await? {
        Ok(app) => app,
        Err(outcome) => return Ok(outcome),
    };

    // Rotation: a new rotate-requested-at value, or the schedule.
    let now = Timestamp::now();
    let every = obj.spec.rotation.every().ok().flatten();
    let base = status
        .last_rotation_time
        .clone()
        .or_else(|| obj.meta().creation_timestamp.clone());
    status.next_rotation_time = rotation::next_scheduled(every, base.as_ref(), now);
    if let Some(due) = rotation::due(obj, status, now)
        && !paused
    {
        let overlap = obj.spec.rotation.overlap().unwrap_or_default();
        app = rotation::rotate(
            obj,
            ctx,
            status,
            &app,
            &due,
            &uid_marker_body(obj)?,
            overlap,
        )
        .await?;
    }
    status.application_id = Some(app.id.clone());
    status.client_id = Some(app.client_id.clone());
    record_credential_issue(ctx, obj, status);

    let secret_name = obj.secret_name();
    if let Err(outcome) = ensure_secret(obj, ctx, &app, &secret_name).await? {
        return Ok(outcome);
    }
    status.secret_name = Some(secret_name);
    // The id must be recorded before the marker leaves the name.
    apply_status(ctx, obj, obj.status.as_ref(), status).await?;

    let display = obj.display_name();
    if app.name != display {
        if paused {
            return Ok(Outcome::Paused { ready: true });
        }
        ctx.kinde.rename_application(&app.id, &display).await?;
        if is_marked(&app.name) {
            tracing::debug!(application = %app.id, "removed the creation marker from the name");
        } else {
            record_change(
                ctx,
                obj,
                "Renamed",
                format!("renamed Kinde application {} to {display:?}", app.id),
            )
            .await;
        }
    }
    if paused {
        return Ok(Outcome::Paused { ready: true });
    }
    let next_retire = rotation::retire_due(obj, ctx, status).await?;
    let next_rotation = rotation::until_next(status, Timestamp::now());
    Ok(match next_retire.into_iter().chain(next_rotation).min() {
        Some(d) => Outcome::ReadyFor(d),
        None => Outcome::Ready,
    })
}

/// Credential age for the metric: issued at the last rotation, else at creation.
fn record_credential_issue(ctx: &Context, obj: &M2MApplication, status: &M2MApplicationStatus) {
    let issued = status
        .last_rotation_time
        .as_ref()
        .or(obj.meta().creation_timestamp.as_ref())
        .map(|t| t.0.as_second());
    if let Some(issued) = issued {
        ctx.metrics
            .credential_issued
            .get_or_create(&AppLabels {
                namespace: obj.namespace().unwrap_or_default(),
                name: obj.name_any(),
            })
            .set(issued);
    }
}

/// The Kinde application, read, adopted, found by marker or created; or why there is none.
async fn ensure_app(
    obj: &M2MApplication,
    ctx: &Context,
    status: &mut M2MApplicationStatus,
    paused: bool,
) -> Result<std::result::Result<KindeApp, Outcome>> {
    let external = obj.external_id();
    if let Some(id) = status.application_id.clone()
        && external.is_none_or(|e| e == id)
    {
        match read_app(ctx, &id).await {
            Ok(app) => return Ok(Ok(app)),
            Err(e) if e.is_not_found() => {
                if external.is_some() {
                    return Ok(Err(external_gone(&id)));
                }
                record_change(
                    ctx,
                    obj,
                    "Recreating",
                    format!("Kinde application {id} was deleted in Kinde; creating it again"),
                )
                .await;
                status.application_id = None;
                status.client_id = None;
            }
            Err(e) => return Err(e.into()),
        }
    } else if let Some(ext) = external {
        let app = match read_app(ctx, ext).await {
            Ok(app) => app,
            Err(e) if e.is_not_found() || matches!(e, KindeError::InvalidId { .. }) => {
                return Ok(Err(external_gone(ext)));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(t) = app.app_type.as_deref().filter(|t| *t != "m2m") {
            return Ok(Err(Outcome::not_ready(
                reasons::INVALID_SPEC,
                format!(
                    "Kinde application {ext} is of type {t:?}, not an M2M application; it cannot be adopted"
                ),
            )));
        }
        record_change(
            ctx,
            obj,
            "Adopted",
            format!("adopted Kinde application {ext}"),
        )
        .await;
        return Ok(Ok(app));
    }

    if paused {
        // Even a marked app left by a crash is only picked up once writes are allowed.
        return Ok(Err(Outcome::Paused { ready: false }));
    }
    Ok(Ok(create_marked(obj, ctx, &creation_marker(obj)?).await?))
}

/// The application carrying `marker` in its name: found (created before a crash or a lost
/// response) or created now. Never creates a second one for the same marker.
pub(super) async fn create_marked(
    obj: &M2MApplication,
    ctx: &Context,
    marker: &str,
) -> Result<KindeApp> {
    if let Some(id) = find_marked(ctx, marker).await? {
        let app = read_app(ctx, &id).await?;
        record_change(
            ctx,
            obj,
            "Created",
            format!("created Kinde application {id}"),
        )
        .await;
        return Ok(app);
    }
    let name = format!("{} {marker}", obj.display_name());
    let created = ctx
        .kinde
        .create_application(&name, obj.spec.organization_code.as_deref())
        .await?;
    record_change(
        ctx,
        obj,
        "Created",
        format!("created Kinde application {}", created.id),
    )
    .await;
    Ok(KindeApp {
        id: created.id,
        client_id: created.client_id,
        name,
        secret: created.client_secret,
        app_type: Some("m2m".into()),
    })
}

fn external_gone(id: &str) -> Outcome {
    Outcome::not_ready(
        reasons::EXTERNAL_NOT_FOUND,
        format!(
            "no Kinde application with id {id:?} (adopted with the external-id annotation); it is not re-created"
        ),
    )
}

async fn read_app(ctx: &Context, id: &str) -> std::result::Result<KindeApp, KindeError> {
    let app = ctx.kinde.get_application(id).await?;
    let secret = app.client_secret.ok_or_else(|| KindeError::Decode {
        operation: "getApplication",
        detail: "response lacks `application.client_secret`".into(),
    })?;
    Ok(KindeApp {
        id: app.id,
        client_id: app.client_id,
        name: app.name,
        secret,
        app_type: app.app_type,
    })
}

/// Audiences of the application's Ready grants, for `KINDE_AUDIENCE`.
fn audiences(ctx: &Context, obj: &M2MApplication) -> Vec<String> {
    grants_of(ctx, obj)
        .iter()
        .filter(|g| g.meta().deletion_timestamp.is_none())
        .filter_map(|g| g.status.as_ref())
        .filter(|s| conditions::is_true(&s.conditions, conditions::READY))
        .filter_map(|s| s.audience.clone())
        .collect()
}

/// Creates or restores the credentials Secret; refuses to touch a Secret it does not own.
async fn ensure_secret(
    obj: &M2MApplication,
    ctx: &Context,
    app: &KindeApp,
    name: &str,
) -> Result<std::result::Result<(), Outcome>> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let owner = obj
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let domain = ctx.kinde.domain();
    let token_url = ctx.kinde.token_url();
    let desired = secret::build(
        &secret::Placement {
            name,
            namespace: &ns,
            owner: owner.clone(),
            labels: obj.spec.secret.labels.as_ref(),
            annotations: obj.spec.secret.annotations.as_ref(),
        },
        &secret::Credentials {
            domain: &domain,
            token_url: &token_url,
            application_id: &app.id,
            client_id: &app.client_id,
            client_secret: &app.secret,
            audiences: audiences(ctx, obj),
        },
    );
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api.get_opt(name).await?;
    let note = match &existing {
        Some(s) if !secret::is_owned_by(s, &owner) => {
            return Ok(Err(Outcome::not_ready(
                reasons::SECRET_CONFLICT,
                format!(
                    "Secret {ns}/{name} exists and is not owned by this M2MApplication; delete it or choose another spec.secret.name"
                ),
            )));
        }
        Some(s) if !secret::needs_update(s, &desired) => return Ok(Ok(())),
        Some(s) => {
            let same_client = secret::key_is(s, secret::KEY_CLIENT_ID, &app.client_id);
            let same_secret =
                secret::key_is(s, secret::KEY_CLIENT_SECRET, app.secret.expose_secret());
            let want_audience =
                secret::read_key(&desired, secret::KEY_AUDIENCE).unwrap_or_default();
            if same_client && !same_secret {
                (
                    "CredentialsUpdated",
                    format!(
                        "client secret of Kinde application {} changed; Secret {name} updated",
                        app.id
                    ),
                )
            } else if !same_client {
                (
                    "CredentialsUpdated",
                    format!(
                        "Secret {name} now holds the credentials of Kinde application {}",
                        app.id
                    ),
                )
            } else if !secret::key_is(s, secret::KEY_AUDIENCE, &want_audience) {
                (
                    "AudienceUpdated",
                    format!("Secret {name}: KINDE_AUDIENCE is now {want_audience:?}"),
                )
            } else {
                (
                    "SecretRestored",
                    format!("Secret {name} was edited or incomplete; restored"),
                )
            }
        }
        None => (
            "SecretCreated",
            format!(
                "wrote credentials of Kinde application {} to Secret {name}",
                app.id
            ),
        ),
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    // Server-side apply never removes a key another field manager added (`kubectl edit`,
    // a tool): drop such keys explicitly, or the Secret would differ from the desired one
    // forever and every resync would apply it again, with an Event each time.
    let foreign: serde_json::Map<String, serde_json::Value> = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .into_iter()
        .flatten()
        .filter(|(k, _)| secret::read_key(&desired, k).is_none())
        .map(|(k, _)| (k.clone(), serde_json::Value::Null))
        .collect();
    if !foreign.is_empty() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": foreign })),
        )
        .await?;
    }
    record_change(ctx, obj, note.0, note.1).await;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{M2MApplicationSpec, ROTATE_REQUESTED_AT_ANNOTATION};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).expect("ts")
    }

    #[test]
    fn a_request_looks_due_until_status_records_it() {
        let mut app = M2MApplication::new("a", M2MApplicationSpec::default());
        let status = M2MApplicationStatus::default();
        assert!(!rotation_looks_due(&app, &status, now()));
        app.annotations_mut()
            .insert(ROTATE_REQUESTED_AT_ANNOTATION.into(), "B".into());
        // A stale copy: the request looks pending.
        app.status = Some(M2MApplicationStatus {
            last_handled_rotate_request: Some("A".into()),
            ..Default::default()
        });
        assert!(rotation_looks_due(&app, &status, now()));
        // The current copy: handled.
        app.status = Some(M2MApplicationStatus {
            last_handled_rotate_request: Some("B".into()),
            ..Default::default()
        });
        assert!(!rotation_looks_due(&app, &status, now()));
    }

    #[test]
    fn the_schedule_looks_due_from_the_last_rotation() {
        let mut spec = M2MApplicationSpec::default();
        spec.rotation.every = Some("1h".into());
        let app = M2MApplication::new("a", spec);
        let at = |s: i64| Some(Time(Timestamp::from_second(s).expect("ts")));
        let stale = M2MApplicationStatus {
            last_rotation_time: at(1_000_000 - 3_600),
            ..Default::default()
        };
        assert!(rotation_looks_due(&app, &stale, now()));
        let current = M2MApplicationStatus {
            last_rotation_time: at(1_000_000 - 60),
            ..Default::default()
        };
        assert!(!rotation_looks_due(&app, &current, now()));
    }
}
