//! Who may adopt which Kinde object with the `m2m.kinde-operator.io/external-id` annotation.
//!
//! Adopting hands the adopter an existing Kinde object: for an application its client secret
//! lands in the adopter's Secret, for an API the adopter's `grantPolicy` and scopes take it
//! over. Anybody who can write an M2MApplication or ApiRegistration can set the annotation,
//! and Kinde ids are not secret (a client id is the `azp` of every token its owner sends), so
//! the annotation alone must never be enough. Adoption is an authority the platform team
//! grants at cluster level:
//! - only objects in namespaces the policy admits (`--adoption-namespace`, or
//!   `--adoption-namespace-selector` on the Namespace's labels, which tenants holding the
//!   built-in `admin`/`edit` roles cannot change) may adopt; by default none may;
//! - never the operator's own management application or the Kinde Management API;
//! - never an object another resource of this operator holds (current or retiring), is
//!   creating (its creation marker), or adopted first;
//! - adopted objects are never deleted in Kinde (deletion policy `Delete`, or a rotation
//!   retiring the adopted application) unless `--adoption-allow-delete` says so.
//!
//! Everything here is pure: the controllers gather the facts and act on the verdict.

use std::collections::{BTreeMap, BTreeSet};

use clap::{ArgAction, Args};
use kube::core::{Expression, Selector, SelectorExt};

use crate::conditions::reasons;
use crate::validation::{is_label_value, is_qualified_name};

/// Command-line switches of the adoption policy (`run`).
#[derive(Args, Debug, Clone, Default)]
pub struct AdoptionArgs {
    /// Namespace whose objects may adopt existing Kinde objects (external-id annotation);
    /// repeat for several. Default: adoption is refused everywhere.
    #[arg(
        long = "adoption-namespace",
        env = "KINDE_M2M_ADOPTION_NAMESPACES",
        value_delimiter = ','
    )]
    pub adoption_namespaces: Vec<String>,
    /// Label selector on Namespaces whose objects may adopt (e.g.
    /// `m2m.kinde-operator.io/adoption=allowed`); `=`, `==`, `!=`, `key` and `!key` terms,
    /// comma-separated.
    #[arg(long, env = "KINDE_M2M_ADOPTION_NAMESPACE_SELECTOR")]
    pub adoption_namespace_selector: Option<String>,
    /// Allow deleting adopted Kinde objects (deletionPolicy Delete, rotation of an adopted
    /// application). Default: adopted objects are always left in Kinde.
    #[arg(long, env = "KINDE_M2M_ADOPTION_ALLOW_DELETE", default_value_t = false, action = ArgAction::Set)]
    pub adoption_allow_delete: bool,
}

/// The cluster-level adoption policy.
#[derive(Debug, Clone, Default)]
pub struct AdoptionPolicy {
    namespaces: BTreeSet<String>,
    selector: Option<Selector>,
    /// Adopted objects may be deleted in Kinde.
    pub allow_delete: bool,
}

impl AdoptionPolicy {
    /// The policy from its flags; names the flag when the selector cannot be parsed.
    pub fn from_args(args: &AdoptionArgs) -> anyhow::Result<Self> {
        let selector = match args.adoption_namespace_selector.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(parse_selector(s).map_err(|e| {
                anyhow::anyhow!(
                    "--adoption-namespace-selector (KINDE_ADOPTION_NAMESPACE_SELECTOR): {e}"
                )
            })?),
        };
        Ok(Self {
            namespaces: args
                .adoption_namespaces
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            selector,
            allow_delete: args.adoption_allow_delete,
        })
    }

    /// Whether the policy needs the namespace's labels to decide.
    pub(crate) fn needs_labels(&self, namespace: &str) -> bool {
        !self.namespaces.contains(namespace) && self.selector.is_some()
    }

    /// Whether objects in `namespace` (with these labels) may adopt.
    pub fn admits(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.contains(namespace)
            || self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }

    /// The refusal for a namespace the policy does not admit, if it does not.
    pub(crate) fn check_namespace(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        if self.admits(namespace, labels) {
            return Ok(());
        }
        Err(Refusal::not_permitted(format!(
            "adoption (m2m.kinde-operator.io/external-id) is not permitted in namespace {namespace}: the platform team allows it per namespace (--adoption-namespace, --adoption-namespace-selector)"
        )))
    }
}

/// Why an adoption is refused: a stable condition reason and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn not_permitted(message: String) -> Self {
        Self {
            reason: reasons::ADOPTION_NOT_PERMITTED,
            message,
        }
    }

    fn refused(message: String) -> Self {
        Self {
            reason: reasons::ADOPTION_REFUSED,
            message,
        }
    }
}

/// Another resource's hold on a Kinde object, as the controllers found it in their stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// `<namespace>/<name>` of the other resource.
    pub holder: String,
    /// How it holds the object (`current`, `retiring`, `adopted first`, `creating`).
    pub how: &'static str,
}

impl Claim {
    /// `holder`'s hold on a Kinde object, named `<Kind> <namespace>/<name>`.
    pub fn by<K: kube::Resource<DynamicType = ()>>(holder: &K, how: &'static str) -> Self {
        Self {
            holder: format!(
                "{} {}/{}",
                K::kind(&()),
                holder.meta().namespace.as_deref().unwrap_or_default(),
                holder.meta().name.as_deref().unwrap_or_default()
            ),
            how,
        }
    }
}

/// What is known of a Kinde application someone wants to adopt.
#[derive(Debug, Clone)]
pub(crate) struct AppFacts<'a> {
    pub id: &'a str,
    pub client_id: &'a str,
    pub name: &'a str,
    /// Kinde's type (`m2m`, `reg`, `spa`, ...), when reported.
    pub app_type: Option<&'a str>,
}

/// Checks an application's adoption before any Kinde call: never the management client,
/// never another resource's object.
pub(crate) fn check_app_id(
    id: &str,
    management_client_id: &str,
    claims: &[Claim],
) -> Result<(), Refusal> {
    if id == management_client_id {
        return Err(Refusal::refused(format!(
            "Kinde application {id} is the operator's own management application; it is never adopted"
        )));
    }
    check_claims("Kinde application", id, claims)
}

/// Checks an application's adoption once it was read from Kinde.
pub(crate) fn check_app(
    app: &AppFacts<'_>,
    management_client_id: &str,
    own_marker_body: &str,
) -> Result<(), Refusal> {
    if app.client_id == management_client_id || app.id == management_client_id {
        return Err(Refusal::refused(format!(
            "Kinde application {} is the operator's own management application; it is never adopted",
            app.id
        )));
    }
    if let Some(t) = app.app_type.filter(|t| *t != "m2m") {
        return Err(Refusal {
            reason: reasons::INVALID_SPEC,
            message: format!(
                "Kinde application {} is of type {t:?}, not an M2M application; it cannot be adopted",
                app.id
            ),
        });
    }
    if marker_body(app.name).is_some() && !carries_marker_of(app.name, own_marker_body) {
        return Err(Refusal::refused(format!(
            "Kinde application {} carries the creation marker of another resource ({:?}); it is never adopted",
            app.id, app.name
        )));
    }
    Ok(())
}

/// What is known of a Kinde API someone wants to adopt.
#[derive(Debug, Clone)]
pub(crate) struct ApiFacts<'a> {
    pub id: &'a str,
    pub audience: &'a str,
    pub is_management_api: bool,
}

/// Checks an API's adoption once it was read from Kinde: never the Management API, never
/// another resource's API.
pub(crate) fn check_api(
    api: &ApiFacts<'_>,
    management_audience: &str,
    claims: &[Claim],
) -> Result<(), Refusal> {
    if api.is_management_api || api.audience.trim_end_matches('/') == management_audience {
        return Err(Refusal {
            reason: reasons::MANAGEMENT_API_REFUSED,
            message: format!(
                "Kinde API {} is the Kinde Management API ({}); the operator never manages or grants it",
                api.id, api.audience
            ),
        });
    }
    check_claims("Kinde API", api.id, claims)
}

/// Refuses an object another resource holds.
pub(crate) fn check_claims(what: &str, id: &str, claims: &[Claim]) -> Result<(), Refusal> {
    match claims.first() {
        None => Ok(()),
        Some(c) => Err(Refusal::refused(format!(
            "{what} {id} belongs to {} ({}); it cannot be adopted by another resource",
            c.holder, c.how
        ))),
    }
}

/// The refusal for deleting an adopted object when the policy keeps adopted objects.
pub(crate) fn check_destructive(policy: &AdoptionPolicy, what: &str) -> Result<(), Refusal> {
    if policy.allow_delete {
        return Ok(());
    }
    Err(Refusal::refused(format!(
        "{what} would delete an adopted Kinde object; the adoption policy leaves adopted objects in Kinde (--adoption-allow-delete)"
    )))
}

/// The body of an operator name marker (`<name> [kmo:<body>]`), if `name` carries one.
pub(crate) fn marker_body(name: &str) -> Option<&str> {
    let start = name.rfind(" [kmo:")?;
    name[start + " [kmo:".len()..].trim_end().strip_suffix(']')
}

/// Whether `name` carries a marker of the object whose UID marker body is `uid_body`
/// (its creation marker `[kmo:<body>]` or a rotation's `[kmo:<body>:<hash>]`).
pub(crate) fn carries_marker_of(name: &str, uid_body: &str) -> bool {
    marker_body(name).is_some_and(|b| {
        b.strip_prefix(uid_body)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
    })
}

/// Parses an equality-based label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined.
fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut exprs = Vec::new();
    for term in s.split(',').map(str::trim) {
        if term.is_empty() {
            return Err(format!("empty term in selector {s:?}"));
        }
        let expr = if let Some((k, v)) = term.split_once("!=") {
            Expression::NotEqual(label_key(k)?, label_value(v)?)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Expression::Equal(label_key(k)?, label_value(v)?)
        } else if let Some(k) = term.strip_prefix('!') {
            Expression::DoesNotExist(label_key(k)?)
        } else {
            Expression::Exists(label_key(term)?)
        };
        exprs.push(expr);
    }
    Ok(exprs.into_iter().collect())
}

fn label_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if is_qualified_name(k) {
        Ok(k.to_owned())
    } else {
        Err(format!("{k:?} is not a valid label key"))
    }
}

fn label_value(v: &str) -> Result<String, String> {
    let v = v.trim();
    if is_label_value(v) {
        Ok(v.to_owned())
    } else {
        Err(format!("{v:?} is not a valid label value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn default_policy_admits_no_namespace() {
        let policy = AdoptionPolicy::default();
        let refusal = policy
            .check_namespace(
                "tenant-a",
                &labels(&[("m2m.kinde-operator.io/adoption", "allowed")]),
            )
            .expect_err("refused");
        assert_eq!(refusal.reason, reasons::ADOPTION_NOT_PERMITTED);
        assert!(refusal.message.contains("tenant-a"), "{}", refusal.message);
        assert!(!policy.allow_delete);
    }

    #[test]
    fn listed_namespaces_and_selected_labels_are_admitted() {
        let policy = AdoptionPolicy::from_args(&AdoptionArgs {
            adoption_namespaces: vec!["platform".into(), " ".into()],
            adoption_namespace_selector: Some(
                "m2m.kinde-operator.io/adoption=allowed,!frozen".into(),
            ),
            adoption_allow_delete: false,
        })
        .expect("policy");
        assert!(policy.admits("platform", &labels(&[])));
        assert!(!policy.needs_labels("platform"));
        assert!(policy.needs_labels("tenant"));
        assert!(policy.admits(
            "tenant",
            &labels(&[("m2m.kinde-operator.io/adoption", "allowed")])
        ));
        assert!(!policy.admits(
            "tenant",
            &labels(&[
                ("m2m.kinde-operator.io/adoption", "allowed"),
                ("frozen", "")
            ])
        ));
        assert!(!policy.admits(
            "tenant",
            &labels(&[("m2m.kinde-operator.io/adoption", "no")])
        ));
        assert!(
            !policy.admits("", &labels(&[])),
            "a blank entry admits nothing"
        );
    }

    #[test]
    fn selector_syntax() {
        for ok in ["a=b", "a==b", "a!=b", "a", "!a", "x.io/a=b, c", "a="] {
            assert!(parse_selector(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a,,b", "a=b c", "=b", "a in (b)", "-a=b", "A.IO/a=b"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
        let err = AdoptionPolicy::from_args(&AdoptionArgs {
            adoption_namespace_selector: Some("a=b c".into()),
            ..AdoptionArgs::default()
        })
        .expect_err("bad selector");
        assert!(
            err.to_string().contains("--adoption-namespace-selector"),
            "{err}"
        );
    }

    #[test]
    fn management_client_is_never_adopted() {
        let refusal = check_app_id("mgmt", "mgmt", &[]).expect_err("refused");
        assert_eq!(refusal.reason, reasons::ADOPTION_REFUSED);
        // Also when the annotation names the app id and only the client id matches.
        let app = AppFacts {
            id: "other-id",
            client_id: "mgmt",
            name: "operator",
            app_type: Some("m2m"),
        };
        assert_eq!(
            check_app(&app, "mgmt", "abc").expect_err("refused").reason,
            reasons::ADOPTION_REFUSED
        );
    }

    #[test]
    fn another_resources_application_is_never_adopted() {
        let claims = [Claim {
            holder: "tenant-b/shop".into(),
            how: "retiring",
        }];
        let refusal = check_app_id("app1", "mgmt", &claims).expect_err("refused");
        assert_eq!(refusal.reason, reasons::ADOPTION_REFUSED);
        assert!(
            refusal.message.contains("tenant-b/shop"),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("retiring"), "{}", refusal.message);
        assert!(check_app_id("app1", "mgmt", &[]).is_ok());
    }

    #[test]
    fn marked_applications_belong_to_their_marker() {
        let app = |name| AppFacts {
            id: "a1",
            client_id: "a1",
            name,
            app_type: Some("m2m"),
        };
        assert!(check_app(&app("legacy app"), "mgmt", "abc").is_ok());
        assert!(check_app(&app("shop [kmo:abc]"), "mgmt", "abc").is_ok());
        assert!(check_app(&app("shop [kmo:abc:0011]"), "mgmt", "abc").is_ok());
        assert_eq!(
            check_app(&app("shop [kmo:def]"), "mgmt", "abc")
                .expect_err("refused")
                .reason,
            reasons::ADOPTION_REFUSED
        );
        let spa = AppFacts {
            app_type: Some("reg"),
            ..app("web")
        };
        assert_eq!(
            check_app(&spa, "mgmt", "abc").expect_err("refused").reason,
            reasons::INVALID_SPEC
        );
    }

    #[test]
    fn apis_of_others_and_the_management_api_are_never_adopted() {
        let api = |audience, is_management_api| ApiFacts {
            id: "api1",
            audience,
            is_management_api,
        };
        let mgmt = "https://biz.kinde.com/api";
        assert!(check_api(&api("https://a.example", false), mgmt, &[]).is_ok());
        assert_eq!(
            check_api(&api("https://biz.kinde.com/api/", false), mgmt, &[])
                .expect_err("refused")
                .reason,
            reasons::MANAGEMENT_API_REFUSED
        );
        assert_eq!(
            check_api(&api("https://x", true), mgmt, &[])
                .expect_err("refused")
                .reason,
            reasons::MANAGEMENT_API_REFUSED
        );
        let claims = [Claim {
            holder: "platform/orders".into(),
            how: "current",
        }];
        assert_eq!(
            check_api(&api("https://a.example", false), mgmt, &claims)
                .expect_err("refused")
                .reason,
            reasons::ADOPTION_REFUSED
        );
    }

    #[test]
    fn destruction_of_adopted_objects_needs_the_policy() {
        assert!(check_destructive(&AdoptionPolicy::default(), "deletionPolicy Delete").is_err());
        let policy = AdoptionPolicy {
            allow_delete: true,
            ..AdoptionPolicy::default()
        };
        assert!(check_destructive(&policy, "deletionPolicy Delete").is_ok());
    }

    #[test]
    fn marker_bodies() {
        assert_eq!(marker_body("shop [kmo:abc]"), Some("abc"));
        assert_eq!(marker_body("a [kmo:x] [kmo:abc:12] "), Some("abc:12"));
        assert_eq!(marker_body("shop"), None);
        assert!(carries_marker_of("shop [kmo:abc]", "abc"));
        assert!(carries_marker_of("shop [kmo:abc:0f]", "abc"));
        assert!(!carries_marker_of("shop [kmo:abcd]", "abc"));
        assert!(!carries_marker_of("shop", "abc"));
        assert_eq!(marker_body("shop [kmo:abc"), None);
    }

    #[test]
    fn claims_name_their_holder() {
        let mut app = crate::crd::M2MApplication::new("shop", Default::default());
        app.metadata.namespace = Some("acme".into());
        let claim = Claim::by(&app, "retiring");
        assert_eq!(claim.holder, "M2MApplication acme/shop");
        assert_eq!(claim.how, "retiring");
    }
}
