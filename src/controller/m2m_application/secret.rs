//! The credentials Secret: ownership checked on metadata, created as a placeholder, then
//! written by one server-side apply conditional on the version checked.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use super::decide::KindeApp;
use super::decide::change_note;
use crate::conditions::{self, reasons};
use crate::controller::kernel::{
    Error, FIELD_MANAGER, Outcome, Result, Step, Stop, current, record_change,
};
use crate::controller::world::Ctx;
use crate::crd::M2MApplication;
use crate::secret;

/// Audiences of the application's Ready grants, for `KINDE_AUDIENCE`.
/// Each grant as it is now (a grant that just turned Ready woke this application, possibly
/// before its store shows that).
async fn audiences(ctx: &Ctx, obj: &M2MApplication) -> Result<Vec<String>> {
    let mut audiences = Vec::new();
    for grant in ctx.world.grants_of(obj) {
        let grant = current(ctx, grant).await?;
        if grant.meta().deletion_timestamp.is_some() {
            continue;
        }
        if let Some(s) = grant.status.as_ref()
            && conditions::is_true(&s.conditions, conditions::READY)
            && let Some(audience) = &s.audience
        {
            audiences.push(audience.clone());
        }
    }
    Ok(audiences)
}

/// How the credentials Secret came to be this M2MApplication's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// It already was.
    Owned,
    /// It was left by an earlier M2MApplication of this name (a restore from backup) and
    /// now names this one as its owner.
    TakenBack,
    /// Created just now, as a placeholder.
    Created,
}

/// The Secret to write the credentials into, with how it became ours; `None` when a Secret
/// of that name belongs to someone else. Ownership is checked on metadata first, so a
/// foreign Secret's data is never read; a missing Secret is created as a placeholder
/// (owner and label only), so that one someone else creates at the same moment makes the
/// create fail (409) instead of being taken over by a server-side apply.
async fn owned_secret(
    api: &Api<Secret>,
    name: &str,
    desired: &Secret,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<Option<(Secret, Origin)>> {
    if let Some(meta) = api.get_metadata_opt(name).await? {
        let origin = if secret::is_owned_by(&meta.metadata, owner) {
            Origin::Owned
        } else if secret::left_by_earlier_incarnation(&meta.metadata, owner) {
            take_back(api, name, &meta.metadata, owner).await?;
            Origin::TakenBack
        } else {
            return Ok(None);
        };
        if let Some(found) = api.get_opt(name).await? {
            return Ok(Some((found, origin)));
        }
    }
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &secret::placeholder(desired)).await {
        Ok(created) => Ok(Some((created, Origin::Created))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes `owner` the only owner of a Secret an earlier M2MApplication of its name left. A
/// merge patch replaces the whole list (a server-side apply would add a second controller
/// reference, which the API server refuses), conditional on the version whose owner was
/// checked: a Secret changed meanwhile makes it fail (409) and the next reconcile looks again.
async fn take_back(
    api: &Api<Secret>,
    name: &str,
    checked: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": checked.resource_version,
            "ownerReferences": [owner],
        }
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Creates or restores the credentials Secret; refuses to touch a Secret it does not own.
/// Returns whether its Event also announced the application's creation.
pub(super) async fn ensure_secret(
    obj: &M2MApplication,
    ctx: &Ctx,
    app: &KindeApp,
    name: &str,
) -> Step<bool> {
    let ns = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let owner = obj
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let domain = ctx.business.kinde.domain();
    let token_url = ctx.business.kinde.token_url();
    let keys = secret::KeyNames::from_spec(&obj.spec.secret.keys);
    let desired = secret::build(
        &secret::Placement {
            name,
            namespace: &ns,
            owner: owner.clone(),
            labels: obj.spec.secret.labels.as_ref(),
            annotations: obj.spec.secret.annotations.as_ref(),
            keys: &keys,
        },
        &secret::Credentials {
            domain: &domain,
            token_url: &token_url,
            application_id: &app.id,
            client_id: &app.client_id,
            client_secret: &app.secret,
            audiences: audiences(ctx, obj).await?,
        },
    );
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let conflict = || {
        Outcome::not_ready(
            reasons::SECRET_CONFLICT,
            format!(
                "Secret {ns}/{name} exists and is not owned by this M2MApplication; delete it or choose another spec.secret.name"
            ),
        )
    };
    let (existing, origin) = match owned_secret(&api, name, &desired, &owner).await? {
        Some(found) => found,
        None => return Err(Stop::Outcome(conflict())),
    };
    if origin == Origin::TakenBack {
        record_change(
            ctx,
            obj,
            "SecretTakenBack",
            format!(
                "Secret {name} was left by an earlier M2MApplication {} (a restore from backup); it now belongs to this one",
                obj.name_any()
            ),
        )
        .await;
    }
    let created = origin == Origin::Created;
    // The apply is conditional on the version whose ownership was checked: a Secret
    // replaced meanwhile makes it fail (409) and the next reconcile looks again.
    let mut desired = desired;
    desired.metadata.resource_version = existing.metadata.resource_version.clone();
    let note = if created && app.fresh {
        // One Event for a new customer's application and its Secret.
        (
            "Created",
            format!(
                "created Kinde application {} and wrote its credentials to Secret {name}",
                app.id
            ),
        )
    } else if created {
        (
            "SecretCreated",
            format!(
                "wrote credentials of Kinde application {} to Secret {name}",
                app.id
            ),
        )
    } else if !secret::needs_update(&existing, &desired) {
        return Ok(false);
    } else {
        change_note(&existing, &desired, app, name, &keys)
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
        .data
        .iter()
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
    Ok(created && app.fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    /// A mock API server answering `script` in order; returns what was asked, as
    /// `(method, path, accepts metadata only)`.
    async fn mock_secrets(
        script: Vec<(u16, serde_json::Value)>,
        call: impl AsyncFnOnce(Api<Secret>) -> Option<(Secret, Origin)>,
    ) -> (Option<(Secret, Origin)>, Vec<(String, String, bool)>) {
        let (client, server) = crate::controller::kernel::mock_api::serve(script);
        let result = call(Api::namespaced(client, "acme")).await;
        let seen = server.await.expect("mock server");
        let seen = seen
            .into_iter()
            .map(|a| (a.method, a.path, a.metadata_only))
            .collect();
        (result, seen)
    }

    fn owner(uid: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "m2m.kinde-operator.io/v1alpha1".into(),
            kind: "M2MApplication".into(),
            name: "shop".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn metadata_of(uid: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "shop-credentials", "namespace": "acme", "resourceVersion": "7",
                         "ownerReferences": [owner(uid)]}
        })
    }

    fn status_of(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": reason, "code": code, "message": reason})
    }

    fn desired() -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("shop-credentials".into());
        s.metadata.namespace = Some("acme".into());
        s.metadata.owner_references = Some(vec![owner("mine")]);
        s
    }

    #[tokio::test]
    async fn a_foreign_secret_is_checked_on_metadata_and_never_read_or_written() {
        // Controlled by another object (an M2MApplication of another name).
        let mut foreign = metadata_of("someone-else");
        foreign["metadata"]["ownerReferences"][0]["name"] = "other-app".into();
        let (result, seen) = mock_secrets(vec![(200, foreign)], async |api| {
            owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                .await
                .expect("no error")
        })
        .await;
        assert!(result.is_none(), "a foreign Secret counts as a conflict");
        assert_eq!(
            seen,
            [(
                "GET".to_owned(),
                "/api/v1/namespaces/acme/secrets/shop-credentials".to_owned(),
                true
            )],
            "only a metadata read"
        );
    }

    #[tokio::test]
    async fn a_secret_an_earlier_object_of_this_name_left_is_taken_back_then_read() {
        let earlier = metadata_of("uid-before-the-restore");
        let full = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": metadata_of("mine")["metadata"].clone(), "data": {"KINDE_CLIENT_ID": "YQ=="}});
        let (result, seen) = mock_secrets(
            vec![(200, earlier), (200, full.clone()), (200, full)],
            async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            },
        )
        .await;
        let (found, origin) = result.expect("taken back");
        assert_eq!(origin, Origin::TakenBack);
        assert!(found.data.is_some());
        let methods: Vec<&str> = seen.iter().map(|(m, _, _)| m.as_str()).collect();
        assert_eq!(methods, ["GET", "PATCH", "GET"], "{seen:?}");
    }

    #[tokio::test]
    async fn a_secret_created_meanwhile_by_someone_else_is_not_taken_over() {
        let (result, seen) = mock_secrets(
            vec![
                (404, status_of(404, "NotFound")),
                (409, status_of(409, "AlreadyExists")),
            ],
            async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            },
        )
        .await;
        assert!(result.is_none(), "the lost create race is a conflict");
        let methods: Vec<&str> = seen.iter().map(|(m, _, _)| m.as_str()).collect();
        assert_eq!(
            methods,
            ["GET", "POST"],
            "no apply after the refused create: {seen:?}"
        );
    }

    #[tokio::test]
    async fn an_owned_secret_is_read_whole_and_a_missing_one_created_as_a_placeholder() {
        let full = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": metadata_of("mine")["metadata"].clone(), "data": {"KINDE_CLIENT_ID": "YQ=="}});
        let (result, seen) =
            mock_secrets(vec![(200, metadata_of("mine")), (200, full)], async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            })
            .await;
        let (found, origin) = result.expect("owned");
        assert_eq!(origin, Origin::Owned);
        assert!(found.data.is_some());
        assert_eq!(
            seen.iter().map(|(_, _, m)| *m).collect::<Vec<_>>(),
            [true, false]
        );

        let placeholder = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": metadata_of("mine")["metadata"].clone()});
        let (result, seen) = mock_secrets(
            vec![(404, status_of(404, "NotFound")), (201, placeholder)],
            async |api| {
                owned_secret(&api, "shop-credentials", &desired(), &owner("mine"))
                    .await
                    .expect("no error")
            },
        )
        .await;
        let (made, origin) = result.expect("created");
        assert!(
            origin == Origin::Created && made.data.is_none(),
            "the placeholder carries no data"
        );
        assert_eq!(seen[1].0, "POST");
    }
}
