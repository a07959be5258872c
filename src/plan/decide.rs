//! What applying the manifests would do in Kinde, decided from the manifests and a read of
//! Kinde alone (pure; the effects are in `mod.rs`). Objects are matched to Kinde the way
//! the operator matches them when they have no status (a fresh cluster, a restore):
//! - an M2MApplication by its `external-id` annotation, else by the owner key this
//!   installation records on its applications (`kmo/<installation>/<namespace>/<name>`);
//! - an ApiRegistration by its `external-id` annotation, else by its audience (unique in
//!   Kinde), which it may take only with `adoption-policy: adopt-or-create`;
//! - an ApiGrant through the application and API it names, which must be among the
//!   manifests.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::manifests::{Desired, Manifest};
use super::snapshot::{Held, KindeApi, KindeApplication, Snapshot};
use crate::crd::{ApiGrant, ApiRegistration, KindeAnnotations, M2MApplication};

/// What a line says will happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// Created, authorized or granted in Kinde.
    Add,
    /// Changed in Kinde.
    Change,
    /// Deleted, disconnected or withdrawn in Kinde.
    Remove,
    /// Nothing to do (said so the match can be checked).
    Same,
    /// Depends on what the cluster holds, which the plan does not read.
    Unsure,
    /// The operator would refuse the object: it would not become Ready.
    Refused,
}

impl Verb {
    pub fn sign(self) -> char {
        match self {
            Verb::Add => '+',
            Verb::Change => '~',
            Verb::Remove => '-',
            Verb::Same => '=',
            Verb::Unsure => '?',
            Verb::Refused => '!',
        }
    }
}

/// One line of the plan, about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub verb: Verb,
    pub text: String,
}

fn line(verb: Verb, text: impl Into<String>) -> Line {
    Line {
        verb,
        text: text.into(),
    }
}

/// The lines about one object (or about Kinde objects no manifest matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `Kind namespace/name (source)`.
    pub subject: String,
    pub lines: Vec<Line>,
}

/// What the plan needs besides the manifests and Kinde.
#[derive(Clone, Debug)]
pub struct Setting {
    pub installation: String,
    /// The Kinde Management API's audience (never managed).
    pub management_audience: String,
    /// Treat the manifests as the whole desired state of their namespaces: applications
    /// this installation owns there that no manifest declares, and authorizations between
    /// declared applications and APIs that no grant declares, are shown as removed.
    pub prune: bool,
}

/// How an object stands against Kinde.
#[derive(Clone, Debug, PartialEq)]
enum Match<'a, T> {
    /// This Kinde object is the object's.
    Found(&'a T, &'static str),
    /// Nothing in Kinde: the operator creates it.
    New,
    /// The operator would refuse it, saying this.
    Refused(String),
}

fn match_app<'a>(
    obj: &M2MApplication,
    kinde: &'a Snapshot,
    setting: &Setting,
) -> Match<'a, KindeApplication> {
    if let Some(id) = obj.external_id() {
        return match kinde.app(id) {
            Some(app) => Match::Found(app, "adopted by its external-id annotation"),
            None => Match::Refused(format!(
                "metadata.annotations[m2m.kinde-operator.io/external-id]: Kinde has no M2M application {id} (or it is the operator's own management application)"
            )),
        };
    }
    let key = crate::identity::owner_key(
        &setting.installation,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    );
    match kinde
        .apps
        .iter()
        .find(|a| a.owner.as_deref() == Some(key.as_str()))
    {
        Some(app) => Match::Found(app, "found by its owner key"),
        None => Match::New,
    }
}

fn match_api<'a>(
    obj: &ApiRegistration,
    kinde: &'a Snapshot,
    setting: &Setting,
) -> Match<'a, KindeApi> {
    let audience = &obj.spec.audience;
    if let Some(id) = obj.external_id() {
        return match kinde.api(id) {
            Some(api) if api.management => Match::Refused(format!(
                "metadata.annotations[m2m.kinde-operator.io/external-id]: {id} is the Kinde Management API, which the operator never manages"
            )),
            Some(api) => Match::Found(api, "adopted by its external-id annotation"),
            None => Match::Refused(format!(
                "metadata.annotations[m2m.kinde-operator.io/external-id]: Kinde has no API {id}"
            )),
        };
    }
    if *audience == setting.management_audience {
        return Match::Refused(format!(
            "spec.audience {audience} is the Kinde Management API's; the operator never manages it"
        ));
    }
    match kinde.apis.iter().find(|a| a.audience == *audience) {
        Some(api) if api.management => Match::Refused(format!(
            "spec.audience {audience} is the Kinde Management API's; the operator never manages it"
        )),
        Some(api) if obj.adopts_or_creates() => {
            Match::Found(api, "taken by its audience (adopt-or-create)")
        }
        Some(api) => Match::Found(api, BY_AUDIENCE_ONLY),
        None => Match::New,
    }
}

/// How an API whose audience exists is matched without an annotation: it is the object's
/// if the object registered it (its `status.apiId`, in the cluster, which the plan does not
/// read); on a fresh cluster the operator refuses it.
const BY_AUDIENCE_ONLY: &str = "its audience";

/// Where each declared application and API stands, by `namespace/name`.
struct Matches<'a> {
    apps: BTreeMap<String, Match<'a, KindeApplication>>,
    apis: BTreeMap<String, (Match<'a, KindeApi>, &'a ApiRegistration)>,
}

fn matches<'a>(manifests: &'a [Manifest], kinde: &'a Snapshot, setting: &Setting) -> Matches<'a> {
    let mut m = Matches {
        apps: BTreeMap::new(),
        apis: BTreeMap::new(),
    };
    for manifest in manifests {
        match &manifest.object {
            Desired::App(o) => {
                m.apps
                    .insert(manifest.object.key(), match_app(o, kinde, setting));
            }
            Desired::Api(o) => {
                m.apis
                    .insert(manifest.object.key(), (match_api(o, kinde, setting), o));
            }
            Desired::Grant(_) => {}
        }
    }
    m
}

/// The `(application id, API id)` pairs whose held scopes the plan needs: every grant
/// whose application and API both exist in Kinde already and are joined there.
pub fn pairs_to_read(
    manifests: &[Manifest],
    kinde: &Snapshot,
    setting: &Setting,
) -> BTreeSet<(String, String)> {
    let m = matches(manifests, kinde, setting);
    manifests
        .iter()
        .filter_map(|manifest| match &manifest.object {
            Desired::Grant(g) => existing_pair(g, &m),
            _ => None,
        })
        .filter(|(app, api)| kinde.api(api).is_some_and(|a| a.applications.contains(app)))
        .collect()
}

fn api_key_of(grant: &ApiGrant) -> String {
    let ns = grant
        .spec
        .api_ref
        .namespace
        .clone()
        .or_else(|| grant.namespace())
        .unwrap_or_default();
    format!("{ns}/{}", grant.spec.api_ref.name)
}

fn app_key_of(grant: &ApiGrant) -> String {
    format!(
        "{}/{}",
        grant.namespace().unwrap_or_default(),
        grant.spec.application_ref.name
    )
}

fn existing_pair(grant: &ApiGrant, m: &Matches<'_>) -> Option<(String, String)> {
    let Some(Match::Found(app, _)) = m.apps.get(&app_key_of(grant)) else {
        return None;
    };
    let Some((Match::Found(api, _), _)) = m.apis.get(&api_key_of(grant)) else {
        return None;
    };
    Some((app.id.clone(), api.id.clone()))
}

/// The plan: one entry per manifest, in their order, then (with `prune`) one for what
/// Kinde holds that the manifests no longer declare.
pub fn plan(manifests: &[Manifest], kinde: &Snapshot, setting: &Setting) -> Vec<Entry> {
    let m = matches(manifests, kinde, setting);
    let mut entries: Vec<Entry> = manifests
        .iter()
        .map(|manifest| Entry {
            subject: format!(
                "{} {} ({})",
                manifest.object.kind(),
                manifest.object.key(),
                manifest.source
            ),
            lines: match &manifest.object {
                Desired::App(o) => app_lines(o, &m.apps[&manifest.object.key()]),
                Desired::Api(o) => api_lines(o, &m.apis[&manifest.object.key()].0),
                Desired::Grant(g) => grant_lines(g, &m, kinde),
            },
        })
        .collect();
    if setting.prune {
        let pruned = prune_lines(manifests, &m, kinde, setting);
        if !pruned.is_empty() {
            entries.push(Entry {
                subject: "In Kinde, declared by no manifest".into(),
                lines: pruned,
            });
        }
    }
    entries
}

fn app_lines(obj: &M2MApplication, found: &Match<'_, KindeApplication>) -> Vec<Line> {
    let display = obj.display_name();
    match found {
        Match::Refused(why) => vec![line(Verb::Refused, why.clone())],
        Match::New => vec![line(
            Verb::Add,
            format!("create Kinde M2M application {display:?} (new client ID and secret)"),
        )],
        Match::Found(app, how) => {
            let mut lines = vec![line(
                Verb::Same,
                format!(
                    "Kinde application {} ({how}): its client ID and secret are kept",
                    app.id
                ),
            )];
            if app.name != display {
                lines.push(line(
                    Verb::Change,
                    format!("rename the application from {:?} to {display:?}", app.name),
                ));
            }
            lines
        }
    }
}

fn api_lines(obj: &ApiRegistration, found: &Match<'_, KindeApi>) -> Vec<Line> {
    let audience = &obj.spec.audience;
    let spec_keys = || {
        obj.spec
            .scopes
            .iter()
            .map(|s| s.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match found {
        Match::Refused(why) => vec![line(Verb::Refused, why.clone())],
        Match::New => {
            let mut lines = vec![line(Verb::Add, format!("create Kinde API {audience}"))];
            if !obj.spec.scopes.is_empty() {
                lines.push(line(Verb::Add, format!("add scopes {}", spec_keys())));
            }
            lines
        }
        Match::Found(api, how) => {
            let mut lines = vec![line(Verb::Same, format!("Kinde API {} ({how})", api.id))];
            if *how == BY_AUDIENCE_ONLY {
                lines.push(line(
                    Verb::Unsure,
                    format!(
                        "the operator manages it only if this object registered it (status.apiId); on a fresh cluster it refuses it (AudienceInUse) unless the object is annotated m2m.kinde-operator.io/external-id: {} or m2m.kinde-operator.io/adoption-policy: adopt-or-create",
                        api.id
                    ),
                ));
            }
            let changes =
                crate::controller::api_registration::scope_changes(&obj.spec.scopes, &api.scopes);
            for (key, _) in &changes.add {
                lines.push(line(Verb::Add, format!("add scope {key}")));
            }
            for (_, key, description) in &changes.describe {
                lines.push(line(
                    Verb::Change,
                    format!("describe scope {key} as {description:?}"),
                ));
            }
            for (_, key) in &changes.remove {
                lines.push(line(
                    Verb::Remove,
                    format!("delete scope {key} (in Kinde, not in spec.scopes)"),
                ));
            }
            lines
        }
    }
}

fn grant_lines(grant: &ApiGrant, m: &Matches<'_>, kinde: &Snapshot) -> Vec<Line> {
    let (app_key, api_key) = (app_key_of(grant), api_key_of(grant));
    let Some(app) = m.apps.get(&app_key) else {
        return vec![line(
            Verb::Refused,
            format!(
                "spec.applicationRef: M2MApplication {app_key} is not among the manifests (pass its file too)"
            ),
        )];
    };
    let Some((api, registration)) = m.apis.get(&api_key) else {
        return vec![line(
            Verb::Refused,
            format!(
                "spec.apiRef: ApiRegistration {api_key} is not among the manifests (pass its file too)"
            ),
        )];
    };
    let unknown: Vec<&String> = grant
        .spec
        .scopes
        .iter()
        .filter(|k| !registration.spec.scopes.iter().any(|s| &s.key == *k))
        .collect();
    if !unknown.is_empty() {
        return vec![line(
            Verb::Refused,
            format!(
                "spec.scopes: {unknown:?} not declared by ApiRegistration {api_key} (ScopeNotFound)"
            ),
        )];
    }
    let wanted: BTreeSet<&str> = grant.spec.scopes.iter().map(String::as_str).collect();
    let list = |keys: &BTreeSet<&str>| keys.iter().copied().collect::<Vec<_>>().join(", ");
    let audience = &registration.spec.audience;
    match (app, api) {
        (Match::Refused(_), _) => vec![line(
            Verb::Refused,
            format!("its M2MApplication {app_key} would be refused"),
        )],
        (_, Match::Refused(_)) => vec![line(
            Verb::Refused,
            format!("its ApiRegistration {api_key} would be refused"),
        )],
        (Match::Found(app, _), Match::Found(api, _)) if api.applications.contains(&app.id) => {
            let mut lines = vec![line(
                Verb::Same,
                format!("application {} is authorized for {audience}", app.id),
            )];
            match kinde.held.get(&(app.id.clone(), api.id.clone())) {
                Some(Held::Scopes(held)) => {
                    let missing: BTreeSet<&str> = wanted.iter().copied().filter(|k| !held.contains(*k)).collect();
                    let extra: BTreeSet<&str> =
                        held.iter().map(String::as_str).filter(|k| !wanted.contains(k)).collect();
                    if !missing.is_empty() {
                        lines.push(line(Verb::Add, format!("grant scopes {}", list(&missing))));
                    }
                    if !extra.is_empty() {
                        lines.push(line(
                            Verb::Same,
                            format!("it also holds {} (not this grant's: the operator withdraws only scopes it granted)", list(&extra)),
                        ));
                    }
                }
                Some(Held::Unknown(why)) => lines.push(line(
                    Verb::Add,
                    format!("grant scopes {} (Kinde reports an application's scopes only in its tokens, and {why})", list(&wanted)),
                )),
                None => lines.push(line(Verb::Add, format!("grant scopes {} (held scopes not read)", list(&wanted)))),
            }
            lines
        }
        _ => {
            let mut lines = vec![line(
                Verb::Add,
                format!("authorize the application for {audience}"),
            )];
            if !wanted.is_empty() {
                lines.push(line(Verb::Add, format!("grant scopes {}", list(&wanted))));
            }
            lines
        }
    }
}

fn prune_lines(
    manifests: &[Manifest],
    m: &Matches<'_>,
    kinde: &Snapshot,
    setting: &Setting,
) -> Vec<Line> {
    let namespaces: BTreeSet<String> = manifests
        .iter()
        .filter_map(|x| x.object.key().split_once('/').map(|(ns, _)| ns.to_owned()))
        .collect();
    let claimed: BTreeSet<&str> = m
        .apps
        .values()
        .filter_map(|x| match x {
            Match::Found(app, _) => Some(app.id.as_str()),
            _ => None,
        })
        .collect();
    let prefix = format!("kmo/{}/", setting.installation);
    let mut lines = Vec::new();
    for app in &kinde.apps {
        let Some(rest) = app.owner.as_deref().and_then(|o| o.strip_prefix(&prefix)) else {
            continue;
        };
        let in_scope = rest
            .split_once('/')
            .is_some_and(|(ns, _)| namespaces.contains(ns));
        if in_scope && !claimed.contains(app.id.as_str()) {
            lines.push(line(
                Verb::Remove,
                format!("delete Kinde application {} {:?} (owner {rest}: its M2MApplication is gone from the manifests)", app.id, app.name),
            ));
        }
    }
    let granted: BTreeSet<(String, String)> = manifests
        .iter()
        .filter_map(|x| match &x.object {
            Desired::Grant(g) => existing_pair(g, m),
            _ => None,
        })
        .collect();
    for (api_match, _) in m.apis.values() {
        let Match::Found(api, _) = api_match else {
            continue;
        };
        for app_id in &claimed {
            if api.applications.contains(*app_id)
                && !granted.contains(&((*app_id).to_owned(), api.id.clone()))
            {
                lines.push(line(
                    Verb::Remove,
                    format!(
                        "disconnect application {app_id} from {} (no grant joins them)",
                        api.audience
                    ),
                ));
            }
        }
    }
    lines
}

/// `terraform plan -detailed-exitcode`: 0 nothing to change, 2 changes, 1 something the
/// operator would refuse.
pub fn exit_code(entries: &[Entry]) -> u8 {
    let verbs = || entries.iter().flat_map(|e| e.lines.iter().map(|l| l.verb));
    if verbs().any(|v| v == Verb::Refused) {
        1
    } else if verbs().any(|v| matches!(v, Verb::Add | Verb::Change | Verb::Remove)) {
        2
    } else {
        0
    }
}

/// The plan as text, ending with a summary.
pub fn render(entries: &[Entry]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut counts: BTreeMap<Verb, usize> = BTreeMap::new();
    for entry in entries {
        let _ = writeln!(out, "{}", entry.subject);
        for l in &entry.lines {
            *counts.entry(l.verb).or_default() += 1;
            let _ = writeln!(out, "  {} {}", l.verb.sign(), l.text);
        }
    }
    let n = |v| counts.get(&v).copied().unwrap_or_default();
    let changes = n(Verb::Add) + n(Verb::Change) + n(Verb::Remove);
    let _ = if changes == 0 && n(Verb::Refused) == 0 {
        writeln!(out, "\nNo changes: Kinde matches the manifests.")
    } else {
        writeln!(
            out,
            "\nPlan: {} to add, {} to change, {} to remove in Kinde; {} refused.",
            n(Verb::Add),
            n(Verb::Change),
            n(Verb::Remove),
            n(Verb::Refused)
        )
    };
    if n(Verb::Unsure) > 0 {
        let _ = writeln!(
            out,
            "{} lines (?) depend on the cluster's state.",
            n(Verb::Unsure)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::manifests::parse;
    use super::*;
    use crate::kinde::types::ApiScope;

    const MANIFESTS: &str = r#"
apiVersion: m2m.kinde-operator.io/v1alpha1
kind: ApiRegistration
metadata: {name: orders, namespace: platform}
spec:
  audience: https://orders.example
  scopes: [{key: read, description: Read}, {key: write, description: Write}]
---
apiVersion: m2m.kinde-operator.io/v1alpha1
kind: M2MApplication
metadata: {name: acme, namespace: acme}
spec: {displayName: Acme}
---
apiVersion: m2m.kinde-operator.io/v1alpha1
kind: ApiGrant
metadata: {name: acme-orders, namespace: acme}
spec:
  applicationRef: {name: acme}
  apiRef: {name: orders, namespace: platform}
  scopes: [read]
"#;

    fn setting() -> Setting {
        Setting {
            installation: "default".into(),
            management_audience: "https://biz.kinde.com/api".into(),
            prune: false,
        }
    }

    fn scope(id: &str, key: &str, description: &str) -> ApiScope {
        ApiScope {
            id: id.into(),
            key: key.into(),
            description: Some(description.into()),
        }
    }

    /// Kinde as the operator leaves it once the manifests are Ready.
    fn converged() -> Snapshot {
        let mut s = Snapshot {
            apis: vec![KindeApi {
                id: "api_1".into(),
                name: "orders".into(),
                audience: "https://orders.example".into(),
                management: false,
                scopes: vec![scope("s1", "read", "Read"), scope("s2", "write", "Write")],
                applications: BTreeSet::from(["app_1".to_owned()]),
            }],
            apps: vec![KindeApplication {
                id: "app_1".into(),
                name: "Acme".into(),
                owner: Some("kmo/default/acme/acme".into()),
            }],
            held: BTreeMap::new(),
        };
        s.held.insert(
            ("app_1".into(), "api_1".into()),
            Held::Scopes(BTreeSet::from(["read".to_owned()])),
        );
        s
    }

    fn manifests(text: &str) -> Vec<Manifest> {
        parse("m.yaml", text, "default").expect("parses")
    }

    fn verbs(entries: &[Entry]) -> Vec<Vec<Verb>> {
        entries
            .iter()
            .map(|e| e.lines.iter().map(|l| l.verb).collect())
            .collect()
    }

    #[test]
    fn an_empty_business_gets_everything_created() {
        let entries = plan(&manifests(MANIFESTS), &Snapshot::default(), &setting());
        assert_eq!(
            verbs(&entries),
            [
                vec![Verb::Add, Verb::Add],
                vec![Verb::Add],
                vec![Verb::Add, Verb::Add]
            ]
        );
        assert_eq!(exit_code(&entries), 2);
        let text = render(&entries);
        assert!(
            text.contains("+ create Kinde M2M application \"Acme\""),
            "{text}"
        );
        assert!(text.contains("+ grant scopes read"), "{text}");
        assert!(
            text.contains("Plan: 5 to add, 0 to change, 0 to remove in Kinde; 0 refused."),
            "{text}"
        );
    }

    #[test]
    fn a_converged_business_has_no_changes_and_the_pairs_to_read_are_the_joined_grants() {
        let m = manifests(MANIFESTS);
        let entries = plan(&m, &converged(), &setting());
        assert_eq!(exit_code(&entries), 0, "{}", render(&entries));
        assert!(render(&entries).contains("No changes"));
        assert_eq!(
            pairs_to_read(&m, &converged(), &setting()),
            BTreeSet::from([("app_1".to_owned(), "api_1".to_owned())])
        );
        // Another installation's owner key is not this one's.
        let other = Setting {
            installation: "blue".into(),
            ..setting()
        };
        let entries = plan(&m, &converged(), &other);
        assert_eq!(
            entries[1].lines[0].verb,
            Verb::Add,
            "blue creates its own application"
        );
    }

    #[test]
    fn drift_shows_as_changes() {
        let mut kinde = converged();
        kinde.apps[0].name = "Acme Old".into();
        kinde.apis[0].scopes = vec![scope("s1", "read", "Reads"), scope("s9", "admin", "")];
        kinde.held.insert(
            ("app_1".into(), "api_1".into()),
            Held::Scopes(BTreeSet::from(["admin".to_owned()])),
        );
        let text = render(&plan(&manifests(MANIFESTS), &kinde, &setting()));
        for expected in [
            "~ rename the application from \"Acme Old\" to \"Acme\"",
            "+ add scope write",
            "~ describe scope read as \"Read\"",
            "- delete scope admin",
            "+ grant scopes read",
            "= it also holds admin",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        kinde.held.insert(
            ("app_1".into(), "api_1".into()),
            Held::Unknown("no token".into()),
        );
        let text = render(&plan(&manifests(MANIFESTS), &kinde, &setting()));
        assert!(text.contains("+ grant scopes read (Kinde reports an application's scopes only in its tokens, and no token)"), "{text}");
    }

    #[test]
    fn refusals_name_the_field_and_exit_1() {
        let mut kinde = converged();
        kinde.apps[0].owner = None;
        // The audience exists: the ApiRegistration's if it registered it (the cluster knows).
        let entries = plan(&manifests(MANIFESTS), &kinde, &setting());
        assert_eq!(entries[0].lines[1].verb, Verb::Unsure);
        assert!(
            entries[0].lines[1]
                .text
                .contains("refuses it (AudienceInUse)"),
            "{:?}",
            entries[0]
        );
        assert!(render(&entries).contains("1 lines (?) depend on the cluster's state."));
        let adopting = MANIFESTS.replace(
            "metadata: {name: orders, namespace: platform}",
            "metadata: {name: orders, namespace: platform, annotations: {m2m.kinde-operator.io/adoption-policy: adopt-or-create}}",
        );
        let entries = plan(&manifests(&adopting), &kinde, &setting());
        assert_eq!(
            entries[0].lines,
            [line(
                Verb::Same,
                "Kinde API api_1 (taken by its audience (adopt-or-create))"
            )]
        );
        // The application has no owner key: a new one; so its grant authorizes anew.
        assert_eq!(verbs(&entries)[2], [Verb::Add, Verb::Add]);

        let unknown_scope = MANIFESTS.replace("scopes: [read]", "scopes: [delete]");
        let entries = plan(&manifests(&unknown_scope), &converged(), &setting());
        assert!(
            entries[2].lines[0]
                .text
                .starts_with("spec.scopes: [\"delete\"] not declared"),
            "{:?}",
            entries[2]
        );
        assert_eq!(exit_code(&entries), 1);
        let missing_api = MANIFESTS.replace(
            "{name: orders, namespace: platform}\n  scopes",
            "{name: billing, namespace: platform}\n  scopes",
        );
        let entries = plan(&manifests(&missing_api), &converged(), &setting());
        assert!(
            entries[2].lines[0]
                .text
                .starts_with("spec.apiRef: ApiRegistration platform/billing is not among"),
            "{:?}",
            entries[2]
        );
        let external = MANIFESTS.replace(
            "metadata: {name: acme, namespace: acme}",
            "metadata: {name: acme, namespace: acme, annotations: {m2m.kinde-operator.io/external-id: app_9}}",
        );
        let entries = plan(&manifests(&external), &converged(), &setting());
        assert!(
            entries[1].lines[0]
                .text
                .contains("Kinde has no M2M application app_9")
        );
        let management = MANIFESTS.replace("https://orders.example", "https://biz.kinde.com/api");
        let entries = plan(&manifests(&management), &Snapshot::default(), &setting());
        assert!(entries[0].lines[0].text.contains("Kinde Management API"));
    }

    #[test]
    fn prune_shows_what_the_manifests_no_longer_declare_in_their_namespaces() {
        let mut kinde = converged();
        kinde.apps.push(KindeApplication {
            id: "app_2".into(),
            name: "Acme Two".into(),
            owner: Some("kmo/default/acme/acme-two".into()),
        });
        kinde.apps.push(KindeApplication {
            id: "app_3".into(),
            name: "Elsewhere".into(),
            owner: Some("kmo/default/globex/globex".into()),
        });
        let without_grant: String = MANIFESTS
            .split("---")
            .take(2)
            .collect::<Vec<_>>()
            .join("---");
        let pruning = Setting {
            prune: true,
            ..setting()
        };
        let entries = plan(&manifests(&without_grant), &kinde, &pruning);
        let last = entries.last().expect("prune entry");
        let texts: Vec<&str> = last.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].starts_with("delete Kinde application app_2"),
            "{texts:?}"
        );
        assert!(
            texts[1].starts_with("disconnect application app_1 from https://orders.example"),
            "{texts:?}"
        );
        assert_eq!(exit_code(&entries), 2);
        // Without --prune, nothing of that.
        assert_eq!(
            plan(&manifests(&without_grant), &kinde, &setting()).len(),
            2
        );
    }
}
