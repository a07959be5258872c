//! `kinde-m2m-operator status <kind> <name>`: one object as its owner wants to see it:
//! conditions, Kinde ids, the credentials Secret (whether it exists and is the operator's;
//! never its data), retiring credentials and the next rotation, and its recent Events.

use anyhow::{Context as _, bail};
use clap::Args;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use crate::crd::{ApiGrant, ApiRegistration, M2MApplication};

/// Options of `kinde-m2m-operator status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// `m2mapp` (M2MApplication), `kapi` (ApiRegistration) or `apigrant` (ApiGrant); the
    /// kind's name, singular or plural, works too.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, env = "KINDE_M2M_NAMESPACE")]
    pub namespace: Option<String>,
    /// How many of the most recent Events to show.
    #[arg(long, default_value_t = 10)]
    pub events: usize,
}

/// The three kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    M2MApplication,
    ApiRegistration,
    ApiGrant,
}

impl Kind {
    /// Parses what `kubectl` accepts: short name, kind, singular, plural (any case).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.to_ascii_lowercase();
        let s = s.split('.').next().unwrap_or_default();
        Ok(match s {
            "m2mapp" | "m2mapplication" | "m2mapplications" => Kind::M2MApplication,
            "kapi" | "apiregistration" | "apiregistrations" => Kind::ApiRegistration,
            "apigrant" | "apigrants" => Kind::ApiGrant,
            other => {
                bail!("unknown kind {other:?} (the <kind> argument): use m2mapp, kapi or apigrant")
            }
        })
    }
}

/// Everything shown, gathered first so the rendering is a pure function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub heading: String,
    pub conditions: Vec<Condition>,
    /// `(label, value)` lines: Kinde ids, Secret, rotation.
    pub facts: Vec<(String, String)>,
    /// Most recent last: `(when, type, reason, note)`.
    pub events: Vec<(String, String, String, String)>,
}

/// The report as printed.
pub fn render(r: &Report) -> String {
    let mut out = format!("{}\n", r.heading);
    out.push_str("Conditions:\n");
    if r.conditions.is_empty() {
        out.push_str("  (none yet: the operator has not reconciled it)\n");
    }
    for c in &r.conditions {
        out.push_str(&format!(
            "  {:<8} {:<6} {:<24} {} (since {})\n",
            c.type_, c.status, c.reason, c.message, c.last_transition_time.0
        ));
    }
    for (label, value) in &r.facts {
        out.push_str(&format!("{label}: {value}\n"));
    }
    out.push_str("Recent events:\n");
    if r.events.is_empty() {
        out.push_str("  (none)\n");
    }
    for (when, type_, reason, note) in &r.events {
        out.push_str(&format!("  {when}  {type_:<7} {reason:<20} {note}\n"));
    }
    out
}

fn fact(label: &str, value: impl Into<String>) -> (String, String) {
    (label.to_owned(), value.into())
}

fn or_none(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "(none)".to_owned())
}

fn heading<K: Resource<DynamicType = ()>>(obj: &K, observed: Option<i64>) -> String {
    format!(
        "{} {}/{} (generation {}, observed {})",
        K::kind(&()),
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
        obj.meta().generation.unwrap_or_default(),
        observed.map_or_else(|| "never".to_owned(), |g| g.to_string()),
    )
}

/// The facts of an M2MApplication; `secret` is whether its Secret exists and is owned by
/// it (`None`: not looked at).
pub fn app_report(app: &M2MApplication, secret: Option<(bool, bool)>) -> Report {
    let s = app.status.clone().unwrap_or_default();
    let mut facts = vec![
        fact("Kinde application", or_none(&s.application_id)),
        fact("Client ID", or_none(&s.client_id)),
    ];
    let secret_name = s.secret_name.clone().unwrap_or_else(|| app.secret_name());
    let secret_state = match secret {
        Some((true, true)) => "exists",
        Some((true, false)) => "exists but is NOT owned by this M2MApplication",
        Some((false, _)) => "missing",
        None => "not checked",
    };
    facts.push(fact("Secret", format!("{secret_name} ({secret_state})")));
    if let Some(t) = &s.last_rotation_time {
        facts.push(fact("Last rotation", t.0.to_string()));
    }
    facts.push(fact(
        "Next rotation",
        s.next_rotation_time.as_ref().map_or_else(
            || "on request only (no spec.rotation.every)".to_owned(),
            |t| t.0.to_string(),
        ),
    ));
    for r in &s.retiring {
        facts.push(fact(
            "Retiring",
            format!(
                "client ID {} (application {}) until {}",
                r.client_id, r.application_id, r.retire_at.0
            ),
        ));
    }
    if let Some(p) = &s.pending_successor {
        facts.push(fact(
            "Rotation in progress",
            format!("successor application {}", p.application_id),
        ));
    }
    if let Some(t) = &s.applied_tokens {
        facts.push(fact(
            "Access-token lifetime",
            format!("{} s", t.access_token_lifetime_seconds),
        ));
    }
    if let Some(id) = &s.adopted_id {
        facts.push(fact("Adopted", id.clone()));
    }
    Report {
        heading: heading(app, s.observed_generation),
        conditions: s.conditions,
        facts,
        events: Vec::new(),
    }
}

pub fn api_report(api: &ApiRegistration) -> Report {
    let s = api.status.clone().unwrap_or_default();
    let scopes: Vec<String> = s
        .scopes
        .iter()
        .map(|sc| format!("{} ({})", sc.key, sc.id))
        .collect();
    let mut facts = vec![
        fact("Kinde API", or_none(&s.api_id)),
        fact("Audience", or_none(&s.audience)),
        fact(
            "Scopes",
            if scopes.is_empty() {
                "(none)".to_owned()
            } else {
                scopes.join(", ")
            },
        ),
    ];
    if let Some(id) = &s.adopted_id {
        facts.push(fact("Adopted", id.clone()));
    }
    Report {
        heading: heading(api, s.observed_generation),
        conditions: s.conditions,
        facts,
        events: Vec::new(),
    }
}

pub fn grant_report(grant: &ApiGrant) -> Report {
    let s = grant.status.clone().unwrap_or_default();
    let facts = vec![
        fact("Kinde application", or_none(&s.application_id)),
        fact("Kinde API", or_none(&s.api_id)),
        fact("Audience", or_none(&s.audience)),
        fact(
            "Granted scopes",
            if s.granted_scopes.is_empty() {
                "(none)".to_owned()
            } else {
                s.granted_scopes.join(" ")
            },
        ),
    ];
    Report {
        heading: heading(grant, s.observed_generation),
        conditions: s.conditions,
        facts,
        events: Vec::new(),
    }
}

/// Reads the object, its Secret's metadata and its Events, and prints the report.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let kind = Kind::parse(&args.kind)?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration")?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let missing = |k: &str| format!("{k} {ns}/{}", args.name);
    let (mut report, uid) = match kind {
        Kind::M2MApplication => {
            let app = Api::<M2MApplication>::namespaced(client.clone(), &ns)
                .get(&args.name)
                .await
                .with_context(|| missing("M2MApplication"))?;
            let secret_name = app
                .status
                .as_ref()
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_else(|| app.secret_name());
            // Metadata only: the status command never reads credentials.
            let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                .get_metadata_opt(&secret_name)
                .await
                .ok()
                .map(|found| match found {
                    Some(meta) => {
                        let owned = meta.owner_references().iter().any(|o| {
                            Some(o.uid.as_str()) == app.uid().as_deref()
                                && o.controller == Some(true)
                        });
                        (true, owned)
                    }
                    None => (false, false),
                });
            (app_report(&app, secret), app.uid())
        }
        Kind::ApiRegistration => {
            let api = Api::<ApiRegistration>::namespaced(client.clone(), &ns)
                .get(&args.name)
                .await
                .with_context(|| missing("ApiRegistration"))?;
            (api_report(&api), api.uid())
        }
        Kind::ApiGrant => {
            let grant = Api::<ApiGrant>::namespaced(client.clone(), &ns)
                .get(&args.name)
                .await
                .with_context(|| missing("ApiGrant"))?;
            (grant_report(&grant), grant.uid())
        }
    };
    if let Some(uid) = uid {
        report.events = recent_events(&client, &ns, &uid, args.events)
            .await
            .unwrap_or_else(|e| {
                vec![(
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("(could not list Events: {e})"),
                )]
            });
    }
    print!("{}", render(&report));
    Ok(())
}

/// The object's most recent Events, oldest first.
async fn recent_events(
    client: &kube::Client,
    ns: &str,
    uid: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?;
    let mut items: Vec<(String, String, String, String)> = list
        .items
        .into_iter()
        .map(|e| {
            let when = e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.last_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .map(|t| t.to_string())
                .unwrap_or_default();
            (
                when,
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect();
    // RFC 3339 in UTC sorts as time.
    items.sort();
    let skip = items.len().saturating_sub(count);
    Ok(items.split_off(skip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{M2MApplicationSpec, M2MApplicationStatus, RetiringCredentials};
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn kinds_parse_like_kubectl() {
        for s in [
            "m2mapp",
            "M2MApplication",
            "m2mapplications",
            "m2mapplications.m2m.kinde-operator.io",
        ] {
            assert_eq!(Kind::parse(s).expect(s), Kind::M2MApplication);
        }
        assert_eq!(Kind::parse("kapi").expect("kapi"), Kind::ApiRegistration);
        assert_eq!(Kind::parse("ApiGrants").expect("grants"), Kind::ApiGrant);
        let err = Kind::parse("pod").expect_err("refused").to_string();
        assert!(err.contains("<kind>") && err.contains("m2mapp"), "{err}");
    }

    #[test]
    fn an_application_report_shows_ids_secret_and_rotation_never_a_secret() {
        let mut app = M2MApplication::new("shop", M2MApplicationSpec::default());
        app.metadata.namespace = Some("acme".into());
        app.metadata.generation = Some(2);
        let at = |s| Time(Timestamp::from_second(s).expect("ts"));
        app.status = Some(M2MApplicationStatus {
            observed_generation: Some(2),
            application_id: Some("app2".into()),
            client_id: Some("app2".into()),
            secret_name: Some("shop-credentials".into()),
            next_rotation_time: Some(at(1_800_000_000)),
            retiring: vec![RetiringCredentials {
                application_id: "app1".into(),
                client_id: "app1".into(),
                retire_at: at(1_700_003_600),
            }],
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Reconciled".into(),
                message: "in sync with Kinde".into(),
                last_transition_time: at(1_700_000_000),
                observed_generation: Some(2),
            }],
            ..M2MApplicationStatus::default()
        });
        let mut report = app_report(&app, Some((true, true)));
        report.events.push((
            "2023-11-14T22:13:20Z".into(),
            "Normal".into(),
            "CredentialsRotated".into(),
            "rotated to Kinde application app2".into(),
        ));
        let text = render(&report);
        for want in [
            "M2MApplication acme/shop (generation 2, observed 2)",
            "Ready    True   Reconciled",
            "Kinde application: app2",
            "Secret: shop-credentials (exists)",
            "Next rotation: 2027-01-15T08:00:00Z",
            "Retiring: client ID app1 (application app1) until 2023-11-14T23:13:20Z",
            "CredentialsRotated",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        let foreign = render(&app_report(&app, Some((true, false))));
        assert!(foreign.contains("NOT owned"), "{foreign}");
        let fresh = M2MApplication::new("new", M2MApplicationSpec::default());
        let text = render(&app_report(&fresh, Some((false, false))));
        assert!(
            text.contains("not reconciled") && text.contains("new-credentials (missing)"),
            "{text}"
        );
        assert!(text.contains("on request only"), "{text}");
    }
}
