//! Every manifest under `examples/` parses into its Rust type with no unknown or misspelt
//! field (the re-serialized object must contain everything the file says), passes the CRDs'
//! CEL rules, and the examples are consistent with each other (grants reference existing
//! applications and APIs, with scopes the API declares, from admitted namespaces).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Namespace;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiRegistration, ClusterKindeConnection, KindeConnection, M2MApplication,
};
use kube::{CustomResourceExt, ResourceExt, core::cel::Validator};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Whether everything in `input` is also in `output` (objects: key by key; arrays: element
/// by element; scalars: equal). Reports the first path that differs.
fn contained(path: &str, input: &Value, output: &Value) -> Result<(), String> {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => i.iter().try_for_each(|(k, v)| match o.get(k) {
            Some(ov) => contained(&format!("{path}.{k}"), v, ov),
            None => Err(format!("{path}.{k}: unknown field (typo?)")),
        }),
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => i
            .iter()
            .zip(o)
            .enumerate()
            .try_for_each(|(n, (iv, ov))| contained(&format!("{path}[{n}]"), iv, ov)),
        (i, o) if i == o => Ok(()),
        (i, o) => Err(format!("{path}: {i} became {o}")),
    }
}

fn parse_strict<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    contained("", doc, &back)?;
    Ok(typed)
}

fn cel_create<K: CustomResourceExt>(doc: &Value) -> Result<(), String> {
    let crd = K::crd();
    let schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .expect("schema")
            .open_api_v3_schema,
    )
    .expect("json");
    Validator::new()
        .validate(&schema, doc, None)
        .map_err(|e| format!("{e:?}"))
}

#[derive(Default)]
struct Examples {
    namespaces: Vec<Namespace>,
    apis: Vec<ApiRegistration>,
    apps: Vec<M2MApplication>,
    grants: Vec<ApiGrant>,
}

fn load() -> Examples {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files = vec![];
    yaml_files(&root, &mut files);
    assert!(
        !files.is_empty(),
        "no examples found under {}",
        root.display()
    );
    let mut examples = Examples::default();
    let mut problems = vec![];
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .expect("under root")
            .display()
            .to_string();
        let text = std::fs::read_to_string(file).expect("readable");
        for (n, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc: Value = match serde::Deserialize::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{rel}#{n}: not YAML: {e}"));
                    continue;
                }
            };
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let result = match kind.as_str() {
                "Namespace" => parse_strict(&doc).map(|ns| examples.namespaces.push(ns)),
                "ApiRegistration" => cel_create::<ApiRegistration>(&doc)
                    .and_then(|()| parse_strict(&doc))
                    .map(|o| examples.apis.push(o)),
                "M2MApplication" => cel_create::<M2MApplication>(&doc)
                    .and_then(|()| parse_strict(&doc))
                    .map(|o| examples.apps.push(o)),
                "ApiGrant" => cel_create::<ApiGrant>(&doc)
                    .and_then(|()| parse_strict(&doc))
                    .map(|o| examples.grants.push(o)),
                "KindeConnection" => cel_create::<KindeConnection>(&doc)
                    .and_then(|()| parse_strict::<KindeConnection>(&doc))
                    .map(drop),
                "ClusterKindeConnection" => cel_create::<ClusterKindeConnection>(&doc)
                    .and_then(|()| parse_strict::<ClusterKindeConnection>(&doc))
                    .map(drop),
                "Kustomization" => check_kustomization(file, &doc),
                other => Err(format!("unexpected kind {other:?}")),
            };
            if let Err(e) = result {
                problems.push(format!("{rel}#{n} ({kind}): {e}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "examples/ problems:\n  {}",
        problems.join("\n  ")
    );
    examples
}

/// A kustomization lists exactly the manifests of its folder.
fn check_kustomization(file: &Path, doc: &Value) -> Result<(), String> {
    let dir = file.parent().expect("parent");
    let mut listed: Vec<String> = doc["resources"]
        .as_array()
        .ok_or("no resources")?
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    if listed == present {
        Ok(())
    } else {
        Err(format!("resources {listed:?} but folder holds {present:?}"))
    }
}

#[test]
fn examples_parse_strictly_and_pass_cel() {
    let examples = load();
    assert_eq!(examples.apis.len(), 1);
    assert_eq!(examples.apps.len(), 2);
    assert_eq!(examples.grants.len(), 2);
}

#[test]
fn examples_are_consistent() {
    let examples = load();
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> = examples
        .namespaces
        .iter()
        .map(|ns| (ns.name_any(), ns.labels().clone()))
        .collect();
    for obj_ns in examples
        .apis
        .iter()
        .map(|o| o.namespace())
        .chain(examples.apps.iter().map(|o| o.namespace()))
        .chain(examples.grants.iter().map(|o| o.namespace()))
    {
        let ns = obj_ns.expect("examples are namespaced");
        assert!(
            ns_labels.contains_key(&ns),
            "namespace {ns} is not among the examples"
        );
    }
    for grant in &examples.grants {
        let grant_ns = grant.namespace().expect("namespaced");
        let api_ns = grant.api_namespace().expect("namespaced");
        assert!(
            examples
                .apps
                .iter()
                .any(|a| a.name_any() == grant.spec.application_ref.name
                    && a.namespace().as_deref() == Some(grant_ns.as_str())),
            "{}: application {} not found",
            grant.name_any(),
            grant.spec.application_ref.name
        );
        let api = examples
            .apis
            .iter()
            .find(|a| {
                a.name_any() == grant.spec.api_ref.name
                    && a.namespace().as_deref() == Some(api_ns.as_str())
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: API {api_ns}/{} not found",
                    grant.name_any(),
                    grant.spec.api_ref.name
                )
            });
        for scope in &grant.spec.scopes {
            assert!(
                api.has_scope(scope),
                "{}: scope {scope} not on {}",
                grant.name_any(),
                api.name_any()
            );
        }
        assert!(
            api.spec
                .grant_policy
                .permits(&api_ns, &grant_ns, &ns_labels[&grant_ns]),
            "{}: namespace {grant_ns} not admitted by {api_ns}/{}",
            grant.name_any(),
            api.name_any()
        );
    }
}
