//! `kinde-m2m-operator export --out <dir>`: manifests for what a Kinde business holds
//! (its APIs with their scopes, its M2M applications and their authorizations), in the
//! `examples/` layout (`platform/` for the APIs, `customers/<name>/` for each application
//! and its grants), every object marked for adoption by its Kinde id, so a team moves from
//! the dashboard to GitOps without re-issuing a credential. Reads Kinde only; prints no
//! secret.
//!
//! Kinde reports the scopes an application holds on an API only in the application's
//! tokens: each exported grant lists the scopes its token for that audience carried (one
//! token minted and dropped per authorization) and says so in a comment; where no token
//! could be had the list is empty and the comment says why. Applications some
//! installation of the operator already owns (an owner key) are left out: they are
//! managed already.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::crd::{API_VERSION, EXTERNAL_ID_ANNOTATION};
use crate::kinde::{KindeClient, KindeMetrics};
use crate::plan::snapshot::{self, Held, KindeApi, KindeApplication, Snapshot};
use crate::run::KindeArgs;

/// The label exported Namespaces carry, for the operator's adoption selector.
pub const ADOPTION_LABEL: (&str, &str) = ("m2m.kinde-operator.io/adoption", "allowed");
/// The label that admits a namespace's grants to the exported APIs (their `grantPolicy`).
pub const CUSTOMER_LABEL: (&str, &str) = ("kinde-m2m-operator.io/customer", "true");

/// Options of `kinde-m2m-operator export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub kinde: KindeArgs,
    /// Directory to write into; must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Namespace of the exported ApiRegistrations.
    #[arg(long, default_value = "platform")]
    pub platform_namespace: String,
}

/// Runs the export.
pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    if !crate::validation::is_dns1123_label(&args.platform_namespace) {
        bail!(
            "--platform-namespace {:?} is not a namespace name (a DNS-1123 label)",
            args.platform_namespace
        );
    }
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .with_context(|| format!("--out {}", args.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--out {} exists and is not empty: export writes into a new directory",
            args.out.display()
        );
    }
    let kinde =
        KindeClient::new(args.kinde.config()?, KindeMetrics::default()).context("Kinde client")?;
    let mut business = snapshot::read(&kinde, true)
        .await
        .context("reading Kinde")?;
    let managed = business.apps.iter().filter(|a| a.owner.is_some()).count();
    business.apps.retain(|a| a.owner.is_none());
    let pairs = authorized_pairs(&business);
    snapshot::read_held(&kinde, &mut business, &pairs)
        .await
        .context("reading the scopes applications hold")?;
    let files = render(&business, &args.platform_namespace);
    for (path, text) in &files {
        let path = args.out.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let apis = business.apis.iter().filter(|a| !a.management).count();
    eprintln!(
        "exported {apis} APIs, {} applications and {} authorizations to {} ({managed} applications an installation of the operator already owns were left out)",
        business.apps.len(),
        pairs.len(),
        args.out.display()
    );
    eprintln!(
        "apply it with the operator's adoption policy admitting the exported namespaces: --adoption-namespace-selector {}={} (chart: adoption.namespaceSelector); then `plan -f {}` shows what applying would still grant",
        ADOPTION_LABEL.0,
        ADOPTION_LABEL.1,
        args.out.display()
    );
    Ok(())
}

/// Every `(application id, API id)` authorization among the exported objects.
fn authorized_pairs(business: &Snapshot) -> BTreeSet<(String, String)> {
    business
        .apis
        .iter()
        .filter(|api| !api.management)
        .flat_map(|api| {
            api.applications
                .iter()
                .filter(|id| business.app(id).is_some())
                .map(|id| (id.clone(), api.id.clone()))
        })
        .collect()
}

/// A DNS-1123 label made of `name` (lower case, runs of anything else as one `-`), unique
/// among `taken`; `fallback` when nothing is left of it.
fn slug(name: &str, fallback: &str, taken: &mut BTreeSet<String>) -> String {
    let mut s = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let mut base: String = s.trim_matches('-').chars().take(50).collect();
    base = base.trim_end_matches('-').to_owned();
    if base.is_empty() {
        base = fallback.to_owned();
    }
    let mut candidate = base.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

fn yaml(comment: &str, value: &Value) -> String {
    let body = serde_yaml::to_string(value).unwrap_or_default();
    let comment: String = comment.lines().map(|l| format!("# {l}\n")).collect();
    format!("{comment}{body}")
}

fn namespace(name: &str, customer: bool) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(ADOPTION_LABEL.0.into(), ADOPTION_LABEL.1.into());
    if customer {
        labels.insert(CUSTOMER_LABEL.0.into(), CUSTOMER_LABEL.1.into());
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn kustomization(resources: &[String]) -> String {
    yaml(
        "Written by kinde-m2m-operator export.",
        &json!({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}),
    )
}

fn api_registration(api: &KindeApi, name: &str, ns: &str) -> Value {
    let scopes: Vec<Value> = api
        .scopes
        .iter()
        .map(|s| json!({"key": s.key, "description": s.description.clone().unwrap_or_default()}))
        .collect();
    let mut spec = json!({
        "displayName": api.name,
        "audience": api.audience,
        "grantPolicy": {"from": "Selector", "namespaceSelector": {"matchLabels": {CUSTOMER_LABEL.0: CUSTOMER_LABEL.1}}},
    });
    if !scopes.is_empty() {
        spec["scopes"] = Value::Array(scopes);
    }
    json!({
        "apiVersion": API_VERSION, "kind": "ApiRegistration",
        "metadata": {"name": name, "namespace": ns, "annotations": {EXTERNAL_ID_ANNOTATION: api.id}},
        "spec": spec,
    })
}

fn m2m_application(app: &KindeApplication, name: &str) -> Value {
    json!({
        "apiVersion": API_VERSION, "kind": "M2MApplication",
        "metadata": {"name": name, "namespace": name, "annotations": {EXTERNAL_ID_ANNOTATION: app.id}},
        "spec": {"displayName": app.name},
    })
}

/// The grant of one authorization, with the comment that says where its scopes come from.
fn api_grant(
    business: &Snapshot,
    app: &KindeApplication,
    app_name: &str,
    api: &KindeApi,
    api_name: &str,
    platform: &str,
) -> (String, Value) {
    let declared: BTreeSet<&str> = api.scopes.iter().map(|s| s.key.as_str()).collect();
    let (scopes, comment) = match business.held.get(&(app.id.clone(), api.id.clone())) {
        Some(Held::Scopes(held)) => (
            held.iter()
                .filter(|k| declared.contains(k.as_str()))
                .cloned()
                .collect::<Vec<_>>(),
            format!(
                "Kinde does not report which scopes an application holds on an API: these are the\nscopes its token for {} carried at export. `kinde-m2m-operator plan` shows the\nscopes applying this grant would grant.",
                api.audience
            ),
        ),
        Some(Held::Unknown(why)) => (
            Vec::new(),
            format!(
                "Kinde does not report which scopes an application holds on an API, and {why}:\nlist the scopes it should hold. `kinde-m2m-operator plan` shows what applying would grant."
            ),
        ),
        None => (
            Vec::new(),
            "Scopes not read: list the scopes it should hold.".to_owned(),
        ),
    };
    let mut spec = json!({"applicationRef": {"name": app_name}, "apiRef": {"name": api_name, "namespace": platform}});
    if !scopes.is_empty() {
        spec["scopes"] = json!(scopes);
    }
    (
        comment,
        json!({
            "apiVersion": API_VERSION, "kind": "ApiGrant",
            "metadata": {"name": format!("{app_name}-{api_name}"), "namespace": app_name},
            "spec": spec,
        }),
    )
}

/// The files of the export, by path relative to the output directory (pure).
pub fn render(business: &Snapshot, platform: &str) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut taken = BTreeSet::new();
    let mut api_names = BTreeMap::new();
    let mut platform_files = vec!["namespace.yaml".to_owned()];
    files.insert(
        Path::new("platform/namespace.yaml").to_owned(),
        yaml(
            "The platform team's APIs live here.",
            &namespace(platform, false),
        ),
    );
    for api in business.apis.iter().filter(|a| !a.management) {
        let name = slug(&api.name, "api", &mut taken);
        let file = format!("{name}.yaml");
        files.insert(
            Path::new("platform").join(&file),
            yaml(
                &format!(
                    "Kinde API {} (audience {}), adopted by its id.",
                    api.id, api.audience
                ),
                &api_registration(api, &name, platform),
            ),
        );
        platform_files.push(file);
        api_names.insert(api.id.clone(), name);
    }
    files.insert(
        Path::new("platform/kustomization.yaml").to_owned(),
        kustomization(&platform_files),
    );
    let mut roots = vec!["platform".to_owned()];
    let mut app_taken = BTreeSet::from([platform.to_owned()]);
    for app in &business.apps {
        let name = slug(&app.name, "customer", &mut app_taken);
        let dir = Path::new("customers").join(&name);
        let mut resources = vec![
            "namespace.yaml".to_owned(),
            "m2m-application.yaml".to_owned(),
        ];
        files.insert(
            dir.join("namespace.yaml"),
            yaml(
                &format!("The namespace of {:?}.", app.name),
                &namespace(&name, true),
            ),
        );
        files.insert(
            dir.join("m2m-application.yaml"),
            yaml(
                &format!("Kinde application {}, adopted by its id: its client ID and secret are kept\nand land in the Secret {name}/{name}-credentials.", app.id),
                &m2m_application(app, &name),
            ),
        );
        for api in business
            .apis
            .iter()
            .filter(|a| !a.management && a.applications.contains(&app.id))
        {
            let api_name = &api_names[&api.id];
            let (comment, grant) = api_grant(business, app, &name, api, api_name, platform);
            let file = format!("api-grant-{api_name}.yaml");
            files.insert(dir.join(&file), yaml(&comment, &grant));
            resources.push(file);
        }
        files.insert(dir.join("kustomization.yaml"), kustomization(&resources));
        roots.push(format!("customers/{name}"));
    }
    files.insert(
        Path::new("kustomization.yaml").to_owned(),
        kustomization(&roots),
    );
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinde::types::ApiScope;
    use crate::plan::manifests::{Desired, parse};

    fn business() -> Snapshot {
        let mut s = Snapshot {
            apis: vec![
                KindeApi {
                    id: "api_1".into(),
                    name: "Orders API".into(),
                    audience: "https://orders.example".into(),
                    management: false,
                    scopes: vec![
                        ApiScope {
                            id: "s1".into(),
                            key: "read".into(),
                            description: Some("Read".into()),
                        },
                        ApiScope {
                            id: "s2".into(),
                            key: "write".into(),
                            description: None,
                        },
                    ],
                    applications: BTreeSet::from(["app_1".to_owned(), "app_2".to_owned()]),
                },
                KindeApi {
                    id: "mgmt".into(),
                    name: "Kinde Management API".into(),
                    audience: "https://biz/api".into(),
                    management: true,
                    ..KindeApi::default()
                },
            ],
            apps: vec![
                KindeApplication {
                    id: "app_1".into(),
                    name: "Acme Corp".into(),
                    owner: None,
                },
                KindeApplication {
                    id: "app_2".into(),
                    name: "acme corp!".into(),
                    owner: None,
                },
            ],
            held: BTreeMap::new(),
        };
        s.held.insert(
            ("app_1".into(), "api_1".into()),
            Held::Scopes(BTreeSet::from(["read".to_owned(), "gone".to_owned()])),
        );
        s.held.insert(
            ("app_2".into(), "api_1".into()),
            Held::Unknown("its token was refused".into()),
        );
        s
    }

    #[test]
    fn the_layout_of_examples_with_every_object_marked_for_adoption() {
        let files = render(&business(), "platform");
        let paths: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "customers/acme-corp/api-grant-orders-api.yaml",
                "customers/acme-corp/kustomization.yaml",
                "customers/acme-corp/m2m-application.yaml",
                "customers/acme-corp/namespace.yaml",
                "customers/acme-corp-2/api-grant-orders-api.yaml",
                "customers/acme-corp-2/kustomization.yaml",
                "customers/acme-corp-2/m2m-application.yaml",
                "customers/acme-corp-2/namespace.yaml",
                "kustomization.yaml",
                "platform/kustomization.yaml",
                "platform/namespace.yaml",
                "platform/orders-api.yaml",
            ]
        );
        // Every manifest parses as the operator's objects, marked with their Kinde ids.
        let mut objects = Vec::new();
        for (path, text) in &files {
            objects.extend(parse(&path.display().to_string(), text, "default").expect("parses"));
        }
        let mut grants = BTreeMap::new();
        for m in &objects {
            match &m.object {
                Desired::Api(a) => {
                    assert_eq!(
                        crate::crd::KindeAnnotations::external_id(a.as_ref()),
                        Some("api_1")
                    );
                    assert_eq!(a.spec.scopes.len(), 2);
                }
                Desired::App(a) => {
                    assert!(crate::crd::KindeAnnotations::external_id(a.as_ref()).is_some());
                    assert!(["Acme Corp", "acme corp!"].contains(&a.display_name().as_str()));
                }
                Desired::Grant(g) => {
                    grants.insert(m.object.key(), g.spec.scopes.clone());
                }
            }
        }
        // Held scopes as the token showed them, but only those the API declares; none when
        // the token was refused, with the comment saying so.
        assert_eq!(grants["acme-corp/acme-corp-orders-api"], ["read"]);
        assert!(grants["acme-corp-2/acme-corp-2-orders-api"].is_empty());
        let refused = &files[Path::new("customers/acme-corp-2/api-grant-orders-api.yaml")];
        assert!(refused.starts_with("# Kinde does not report"), "{refused}");
        assert!(refused.contains("its token was refused"), "{refused}");
        assert!(!files.values().any(|t| t.contains("Kinde Management API")));
    }

    #[test]
    fn slugs_are_dns_labels_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(slug("Acme, Inc.", "x", &mut taken), "acme-inc");
        assert_eq!(slug("ACME inc", "x", &mut taken), "acme-inc-2");
        assert_eq!(slug("!!!", "customer", &mut taken), "customer");
        assert_eq!(
            slug("ünï", "customer", &mut taken),
            "n",
            "non-ASCII letters are dropped"
        );
        let long = slug(&"a".repeat(100), "x", &mut taken);
        assert!(crate::validation::is_dns1123_label(&long) && long.len() <= 50);
    }
}
