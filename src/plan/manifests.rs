//! Reading the operator's objects out of manifest files, the way `kubectl apply -f` takes
//! them: a file or a directory (recursively, `*.yaml`, `*.yml`, `*.json`), several
//! documents per file, `kind: List`. Objects of other kinds (Namespaces, Kustomizations)
//! are skipped; anything of this operator's API group that does not parse is an error
//! naming the file, the document and the field.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::crd::{ApiGrant, ApiRegistration, GROUP, M2MApplication};

/// One of the operator's objects, as a manifest declares it.
#[derive(Clone, Debug)]
pub enum Desired {
    Api(Box<ApiRegistration>),
    App(Box<M2MApplication>),
    Grant(Box<ApiGrant>),
}

impl Desired {
    pub fn kind(&self) -> &'static str {
        match self {
            Desired::Api(_) => "ApiRegistration",
            Desired::App(_) => "M2MApplication",
            Desired::Grant(_) => "ApiGrant",
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        let (ns, name) = match self {
            Desired::Api(o) => (o.namespace(), o.name_any()),
            Desired::App(o) => (o.namespace(), o.name_any()),
            Desired::Grant(o) => (o.namespace(), o.name_any()),
        };
        format!("{}/{name}", ns.unwrap_or_default())
    }
}

/// An object with where it was read from.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// `path` or `path (document N)`.
    pub source: String,
    pub object: Desired,
}

/// Every object of this operator in `paths`, objects without a namespace placed in
/// `default_namespace` (as kubectl does).
pub fn load(paths: &[PathBuf], default_namespace: &str) -> anyhow::Result<Vec<Manifest>> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut manifests = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        manifests.extend(parse(
            &file.display().to_string(),
            &text,
            default_namespace,
        )?);
    }
    let mut seen = std::collections::BTreeMap::new();
    for m in &manifests {
        let id = format!("{} {}", m.object.kind(), m.object.key());
        if let Some(first) = seen.insert(id.clone(), m.source.clone()) {
            bail!("{id} is declared twice: in {first} and in {}", m.source);
        }
    }
    Ok(manifests)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{}: no such file or directory", path.display()))?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot list", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// The operator's objects in one file's text.
pub fn parse(file: &str, text: &str, default_namespace: &str) -> anyhow::Result<Vec<Manifest>> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = format!("{file} (document {})", index + 1);
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| anyhow::anyhow!("{source}: not YAML: {e}"))?;
        collect_objects(&source, value, default_namespace, &mut out)?;
    }
    Ok(out)
}

fn collect_objects(
    source: &str,
    value: serde_yaml::Value,
    default_namespace: &str,
    out: &mut Vec<Manifest>,
) -> anyhow::Result<()> {
    if value.is_null() {
        return Ok(());
    }
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if kind.as_deref() == Some("List") {
        let items = value
            .get("items")
            .and_then(|i| i.as_sequence())
            .cloned()
            .unwrap_or_default();
        for (i, item) in items.into_iter().enumerate() {
            collect_objects(
                &format!("{source}, items[{i}]"),
                item,
                default_namespace,
                out,
            )?;
        }
        return Ok(());
    }
    let group = api_version
        .as_deref()
        .and_then(|v| v.rsplit_once('/'))
        .map(|(g, _)| g);
    if group != Some(GROUP) {
        return Ok(());
    }
    let object = match kind.as_deref() {
        Some("ApiRegistration") => Desired::Api(Box::new(typed(source, value, default_namespace)?)),
        Some("M2MApplication") => Desired::App(Box::new(typed(source, value, default_namespace)?)),
        Some("ApiGrant") => Desired::Grant(Box::new(typed(source, value, default_namespace)?)),
        other => bail!(
            "{source}: kind {:?} is not a kind of {GROUP} (ApiRegistration, M2MApplication, ApiGrant)",
            other.unwrap_or_default()
        ),
    };
    out.push(Manifest {
        source: source.to_owned(),
        object,
    });
    Ok(())
}

/// Parses one object, naming the field that does not fit; places it in the default
/// namespace when it names none.
fn typed<K>(source: &str, value: serde_yaml::Value, default_namespace: &str) -> anyhow::Result<K>
where
    K: DeserializeOwned + kube::Resource,
{
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        bail!("{source}: metadata.name is missing");
    };
    let mut object: K = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("{source}: {name}: field {path}: {}", e.into_inner())
    })?;
    if object.meta().namespace.as_deref().is_none_or(str::is_empty) {
        object.meta_mut().namespace = Some(default_namespace.to_owned());
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: acme}
---
apiVersion: m2m.kinde-operator.io/v1alpha1
kind: M2MApplication
metadata: {name: acme, namespace: acme}
spec: {displayName: Acme}
---
# only a comment
---
apiVersion: v1
kind: List
items:
  - apiVersion: m2m.kinde-operator.io/v1alpha1
    kind: ApiGrant
    metadata: {name: g}
    spec:
      applicationRef: {name: acme}
      apiRef: {name: orders, namespace: platform}
      scopes: [read]
"#;

    #[test]
    fn reads_the_operators_objects_and_skips_the_rest() {
        let found = parse("f.yaml", STREAM, "default").expect("parses");
        let ids: Vec<String> = found
            .iter()
            .map(|m| format!("{} {}", m.object.kind(), m.object.key()))
            .collect();
        assert_eq!(ids, ["M2MApplication acme/acme", "ApiGrant default/g"]);
        assert_eq!(found[0].source, "f.yaml (document 2)");
        assert_eq!(found[1].source, "f.yaml (document 4), items[0]");
    }

    #[test]
    fn a_field_that_does_not_fit_is_named_with_its_file_and_document() {
        let text = "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: ApiRegistration\nmetadata: {name: orders}\nspec:\n  audience: https://x\n  scopes:\n    - key: 5\n      description: [not, text]\n";
        let err = parse("apis.yaml", text, "default")
            .expect_err("refused")
            .to_string();
        assert!(
            err.starts_with("apis.yaml (document 1): orders: field spec.scopes[0]"),
            "{err}"
        );
        let err = parse(
            "x.yaml",
            "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: Widget\nmetadata: {name: w}\n",
            "d",
        )
        .expect_err("refused")
        .to_string();
        assert!(
            err.contains("x.yaml (document 1): kind \"Widget\""),
            "{err}"
        );
        let err = parse(
            "y.yaml",
            "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: M2MApplication\nspec: {}\n",
            "d",
        )
        .expect_err("refused")
        .to_string();
        assert!(err.contains("metadata.name is missing"), "{err}");
        let err = parse("z.yaml", "a: [unclosed", "d")
            .expect_err("refused")
            .to_string();
        assert!(err.starts_with("z.yaml (document 1): not YAML"), "{err}");
    }

    #[test]
    fn the_same_object_twice_is_refused() {
        let dir = std::env::temp_dir().join(format!("kmo-plan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        let app = "apiVersion: m2m.kinde-operator.io/v1alpha1\nkind: M2MApplication\nmetadata: {name: a, namespace: n}\nspec: {}\n";
        std::fs::write(dir.join("one.yaml"), app).expect("write");
        std::fs::write(dir.join("sub/two.yml"), app).expect("write");
        std::fs::write(dir.join("notes.txt"), "not a manifest").expect("write");
        let err = load(std::slice::from_ref(&dir), "default")
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("M2MApplication n/a is declared twice"),
            "{err}"
        );
        std::fs::remove_file(dir.join("sub/two.yml")).expect("rm");
        assert_eq!(
            load(std::slice::from_ref(&dir), "default")
                .expect("loads")
                .len(),
            1
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let err = load(&[dir.join("gone")], "d")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("no such file or directory"), "{err}");
    }
}
