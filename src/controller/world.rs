//! The world a kind's decisions look at: the reflector stores of the three kinds and the
//! routers that wake them, and who depends on whom (declared once, here: the kernel wakes
//! an object's dependants after its status changed and after its cleanup).

use std::sync::Arc;

use kube::{Resource, ResourceExt};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::kernel::{Context, Fleet, HasConditions, Recent, Router, StoreSet};
use super::m2m_application::KindeApp;
use crate::crd::{ApiGrant, ApiRegistration, M2MApplication};

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

    /// The M2MApplication a grant names, if it exists.
    pub fn app_of(&self, grant: &ApiGrant) -> Option<Arc<M2MApplication>> {
        let ns = grant.namespace().unwrap_or_default();
        self.apps.get(&ns, &grant.spec.application_ref.name)
    }
}

// Who depends on whom. The kernel wakes an object's dependants after its status changed and
// after its cleanup finished (see `Managed::wake_dependants`).

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
