//! The world a kind's decisions look at: the reflector stores of the three kinds and the
//! routers that wake them, and who depends on whom (declared once, here: the kernel wakes
//! an object's dependants after its status changed and after its cleanup).

use std::sync::Arc;

use kube::{Resource, ResourceExt};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::kernel::{
    Bound, ConnectionKey, Context, Fleet, HasConditions, KindeApp, Managed, Recent, Router,
    StoreSet,
};
use crate::crd::{ApiGrant, ApiRegistration, ConnectionRef, M2MApplication, connection_label};

/// The context every kind's reconcile gets.
pub type Ctx = Context<World>;

/// Stores and wake-up routers of the three kinds.
pub struct World {
    pub apps: StoreSet<M2MApplication>,
    pub apis: StoreSet<ApiRegistration>,
    pub grants: StoreSet<ApiGrant>,
    pub wake_apps: Router<M2MApplication>,
    pub wake_apis: Router<ApiRegistration>,
    pub wake_grants: Router<ApiGrant>,
    /// Recent reads of each M2MApplication's Kinde application (see [`Recent`]).
    pub(crate) app_reads: Recent<KindeApp>,
}

macro_rules! has_conditions {
    ($($t:ty),*) => {$(
        impl HasConditions for $t {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )*};
}

has_conditions!(
    crate::crd::ApiRegistrationStatus,
    crate::crd::M2MApplicationStatus,
    crate::crd::ApiGrantStatus
);

/// Each kind's status records its connection once the id of its Kinde object is known (a
/// grant: once it knows the API it authorizes for).
macro_rules! bound_by {
    ($($t:ty => $id:ident),*) => {$(
        impl Bound for $t {
            fn connection(&self) -> Option<&str> {
                self.connection.as_deref()
            }
            fn set_connection(&mut self, label: String) {
                self.connection = Some(label);
            }
            fn is_bound(&self) -> bool {
                self.$id.is_some()
            }
        }
    )*};
}

bound_by!(
    crate::crd::ApiRegistrationStatus => api_id,
    crate::crd::M2MApplicationStatus => application_id,
    crate::crd::ApiGrantStatus => api_id
);

/// One period of drift checks reads each application once (`getApplication`) and each API
/// about three times (`getAPI` for the registration and the cached snapshot the grants
/// share, its scopes); a grant reads nothing of its own.
impl Fleet for World {
    fn resync_reads(&self) -> usize {
        self.apps.len() + 3 * self.apis.len()
    }
}

impl World {
    /// The grants in the application's namespace that name it.
    pub fn grants_of(&self, app: &M2MApplication) -> Vec<Arc<ApiGrant>> {
        let (ns, name) = (app.namespace(), app.name_any());
        self.grants
            .find(|g| g.namespace() == ns && g.spec.application_ref.name == name)
    }

    /// Grants (in any watched namespace) whose `apiRef` names this ApiRegistration.
    pub fn grants_referencing(&self, api: &ApiRegistration) -> Vec<Arc<ApiGrant>> {
        let (ns, name) = (api.namespace(), api.name_any());
        self.grants
            .find(|g| g.spec.api_ref.name == name && g.api_namespace() == ns)
    }

    /// Other live grants for the same application and API as `grant`.
    pub fn conflicting(&self, grant: &ApiGrant) -> Vec<Arc<ApiGrant>> {
        let (ns, name) = (grant.namespace(), grant.name_any());
        let api = grant.api_object_ref();
        self.grants.find(|g| {
            g.namespace() == ns
                && g.name_any() != name
                && g.meta().deletion_timestamp.is_none()
                && g.spec.application_ref.name == grant.spec.application_ref.name
                && g.api_object_ref() == api
        })
    }

    /// The connection of the ApiRegistration a grant names (none when it is not found:
    /// the grant then reports that, whichever business it looks in).
    pub fn api_connection(&self, grant: &ApiGrant) -> Option<ConnectionRef> {
        let api = self
            .apis
            .get(&grant.api_namespace()?, &grant.spec.api_ref.name)?;
        api.connection()
    }

    /// The M2MApplication a grant names, if it exists.
    pub fn app_of(&self, grant: &ApiGrant) -> Option<Arc<M2MApplication>> {
        let ns = grant.namespace().unwrap_or_default();
        self.apps.get(&ns, &grant.spec.application_ref.name)
    }
}

// Who depends on whom. The kernel wakes an object's dependants after its status changed and
// after its cleanup finished (see `Managed::wake_dependants`).

/// The applications and APIs a connection serves or may serve: those naming it in
/// `spec.connectionRef` (waiting for it, or refused by it) and those whose status records it
/// (their Kinde objects are in its business). A KindeConnection's are in its namespace; a
/// ClusterKindeConnection's anywhere. Woken when it appears, goes, changes who it admits
/// or turns Ready or not, so they report that at once instead of at their next recheck.
/// Their grants follow through [`wake_dependants_of_app`] and [`wake_dependants_of_api`].
pub fn wake_users_of_connection(world: &World, key: &ConnectionKey) {
    world
        .wake_apps
        .wake_all(&concerning(&world.apps, world, key));
    world
        .wake_apis
        .wake_all(&concerning(&world.apis, world, key));
}

/// The objects of one kind that concern the connection `key` ([`concerns_connection`] on
/// the connection the spec asks for and the one the status records).
pub fn concerning<K: Managed<World = World>>(
    objects: &StoreSet<K>,
    world: &World,
    key: &ConnectionKey,
) -> Vec<Arc<K>> {
    objects.find(|o| {
        concerns_connection(
            key,
            o.namespace().as_deref(),
            o.wanted_connection(world).as_ref(),
            o.current_status().and_then(|s| s.connection()),
        )
    })
}

/// Whether an object in `namespace` that names `wanted` in its spec and has `recorded` in
/// its status (the connection label its Kinde object was made through) concerns the
/// connection `key`: it must be where the connection serves (a KindeConnection: its own
/// namespace) and name it or have been made through it.
pub fn concerns_connection(
    key: &ConnectionKey,
    namespace: Option<&str>,
    wanted: Option<&ConnectionRef>,
    recorded: Option<&str>,
) -> bool {
    let reference = ConnectionRef {
        kind: key.kind,
        name: key.name.clone(),
    };
    (key.namespace.is_none() || namespace == key.namespace.as_deref())
        && (wanted == Some(&reference)
            || recorded == Some(connection_label(Some(&reference)).as_str()))
}

/// An application's grants: its Ready state and client ID decide theirs.
pub fn wake_dependants_of_app(world: &World, app: &M2MApplication) {
    world.wake_grants.wake_all(&world.grants_of(app));
}

/// An API's grants: its Ready state, id and scopes decide theirs.
pub fn wake_dependants_of_api(world: &World, api: &ApiRegistration) {
    world.wake_grants.wake_all(&world.grants_referencing(api));
}

/// A grant's application (its Secret lists the grant's audience), its API when that is
/// being deleted (its deletion waits on the grants; otherwise nothing of the API depends on
/// them, and waking it for every grant of a fleet cost a scope listing each), and the
/// grants that lost a conflict to it (they may take over).
pub fn wake_dependants_of_grant(world: &World, grant: &ApiGrant) {
    let ns = grant.namespace().unwrap_or_default();
    world.wake_apps.wake(&ns, &grant.spec.application_ref.name);
    if let Some(api_ns) = grant.api_namespace()
        && world
            .apis
            .get(&api_ns, &grant.spec.api_ref.name)
            .is_some_and(|api| api.meta().deletion_timestamp.is_some())
    {
        world.wake_apis.wake(&api_ns, &grant.spec.api_ref.name);
    }
    world.wake_grants.wake_all(&world.conflicting(grant));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ConnectionKind;

    #[test]
    fn objects_concern_a_connection_they_name_or_were_made_through_where_it_serves() {
        let tenant = ConnectionKey {
            kind: ConnectionKind::KindeConnection,
            namespace: Some("a".into()),
            name: "staging".into(),
        };
        let staging = ConnectionRef {
            kind: ConnectionKind::KindeConnection,
            name: "staging".into(),
        };
        let label = "KindeConnection/staging";
        // Named in the spec, or recorded in the status: in its namespace only.
        assert!(concerns_connection(
            &tenant,
            Some("a"),
            Some(&staging),
            None
        ));
        assert!(concerns_connection(&tenant, Some("a"), None, Some(label)));
        assert!(!concerns_connection(
            &tenant,
            Some("b"),
            Some(&staging),
            None
        ));
        assert!(!concerns_connection(&tenant, Some("b"), None, Some(label)));
        // Another connection, or the default one, is no concern of it.
        assert!(!concerns_connection(&tenant, Some("a"), None, None));
        assert!(!concerns_connection(
            &tenant,
            Some("a"),
            None,
            Some("default")
        ));
        let cluster_ref = ConnectionRef {
            kind: ConnectionKind::ClusterKindeConnection,
            name: "staging".into(),
        };
        assert!(!concerns_connection(
            &tenant,
            Some("a"),
            Some(&cluster_ref),
            None
        ));
        // A cluster connection's: any namespace.
        let shared = ConnectionKey {
            kind: ConnectionKind::ClusterKindeConnection,
            namespace: None,
            name: "staging".into(),
        };
        assert!(concerns_connection(
            &shared,
            Some("b"),
            Some(&cluster_ref),
            None
        ));
        assert!(concerns_connection(
            &shared,
            Some("c"),
            None,
            Some("ClusterKindeConnection/staging")
        ));
        assert!(!concerns_connection(
            &shared,
            Some("b"),
            Some(&staging),
            None
        ));
    }
}
