//! The CRDs on a real API server (v1.20.2): they install, the examples are accepted, invalid
//! specs are refused by the schema with the field named, and `kubectl get kinde` shows the
//! printer columns.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kinde_m2m_operator::crd::{API_VERSION, ApiRegistration, GROUP};
use kube::api::Api;
use serde_json::Value;

use crate::support::fixtures::{
    ApiFixture as _, GrantFixture as _, api_grant, api_registration, m2m_application,
};
use crate::support::{self, Ctx, E2eTest};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test(
            "crds::install_with_kubectl_and_established",
            install_with_kubectl_and_established,
        ),
        support::test("crds::examples_accepted", examples_accepted),
        support::test(
            "crds::invalid_specs_rejected_naming_the_field",
            invalid_specs_rejected_naming_the_field,
        ),
        support::test(
            "crds::kubectl_get_kinde_printer_columns",
            kubectl_get_kinde_printer_columns,
        ),
    ]
}

/// (a) `kubectl apply --validate=false -f crds/` (the documented way on v1.20, whose kubectl
/// schema does not know `x-kubernetes-validations`; the harness installs them so) gives
/// five CRDs that become Established, are discoverable with their short names and the
/// `kinde` category, and keep their structural validation. Re-applying changes nothing.
async fn install_with_kubectl_and_established(ctx: Ctx) -> anyhow::Result<()> {
    let installed = ctx.harness.ensure_crds().await?;
    let mut names: Vec<String> = [
        "apiregistrations",
        "m2mapplications",
        "apigrants",
        "kindeconnections",
        "clusterkindeconnections",
    ]
    .iter()
    .map(|p| format!("{p}.{GROUP}"))
    .collect();
    names.sort();
    let mut installed = installed.to_vec();
    installed.sort();
    ensure!(
        installed == names,
        "installed CRDs {installed:?}, expected {names:?}"
    );
    support::wait_crds_established(&ctx.client, &names, Duration::from_secs(10)).await?;

    // Re-applying is a no-op. kubectl reports "configured" for the CRDs with CEL rules (the
    // server dropped them, so they differ from the last-applied annotation every time), so
    // compare the generations.
    let crd_api = Api::<CustomResourceDefinition>::all(ctx.client.clone());
    let generations = || async {
        let mut g = Vec::new();
        for name in &names {
            g.push(crd_api.get(name).await?.metadata.generation);
        }
        Ok::<_, anyhow::Error>(g)
    };
    let before = generations().await?;
    let crds_dir = support::repo_path("crds");
    ctx.kubectl(&[
        "apply",
        "--validate=false",
        "-f",
        &crds_dir.to_string_lossy(),
    ])
    .await?
    .success()?;
    let after = generations().await?;
    ensure!(
        before == after,
        "re-applying crds/ changed generations {before:?} -> {after:?}"
    );

    // Discovery: kind, namespaced, short name, category.
    let resources = ctx
        .kubectl(&[
            "api-resources",
            "--api-group",
            GROUP,
            "-o",
            "wide",
            "--no-headers",
        ])
        .await?
        .success()?;
    for (plural, short, kind) in [
        ("apiregistrations", "kapi", "ApiRegistration"),
        ("m2mapplications", "m2mapp", "M2MApplication"),
        ("apigrants", "apigrant", "ApiGrant"),
    ] {
        let line = resources
            .lines()
            .find(|l| l.split_whitespace().next() == Some(plural))
            .with_context(|| format!("{plural} missing from api-resources:\n{resources}"))?;
        let cols: Vec<&str> = line.split_whitespace().collect();
        // NAME SHORTNAMES APIVERSION NAMESPACED KIND VERBS CATEGORIES
        ensure!(
            cols.get(1) == Some(&short)
                && cols.get(2) == Some(&API_VERSION)
                && cols.get(3) == Some(&"true")
                && cols.get(4) == Some(&kind)
                && cols.last() == Some(&"kinde"),
            "unexpected discovery entry for {plural}: {line}"
        );
    }

    // The server kept the structural schema (v1.20 only drops the CEL rules).
    let crd = Api::<CustomResourceDefinition>::all(ctx.client.clone())
        .get(&format!("apiregistrations.{GROUP}"))
        .await?;
    let schema = serde_json::to_value(&crd.spec.versions[0].schema)?;
    let audience = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["audience"];
    ensure!(
        audience["maxLength"] == 64,
        "spec.audience lost its maxLength on the server: {audience}"
    );
    ensure!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        "no status subresource on {}",
        crd.metadata.name.unwrap_or_default()
    );
    Ok(())
}

/// (b) Every manifest under `examples/` is accepted, applied the way examples/README.md says
/// (`kubectl apply -k` per folder), and every object of every file then exists.
///
/// The examples name fixed namespaces (`platform`, `acme`, `globex`); only this test uses
/// them, and it deletes them at the end.
async fn examples_accepted(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let examples = support::repo_path("examples");
    let files = support::yaml_files(&examples)?;
    let mut kustomizations: Vec<_> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .filter_map(|f| f.parent().map(|p| p.to_path_buf()))
        .collect();
    ensure!(
        !kustomizations.is_empty(),
        "no kustomizations in {}",
        examples.display()
    );
    // The platform folder first: the customers' grants reference its API.
    kustomizations.sort_by_key(|d| !d.ends_with("platform"));
    let result = async {
        for dir in &kustomizations {
            support::kubectl(ctx.harness, &["apply", "-k", &dir.to_string_lossy()], None)
                .await?
                .success()
                .with_context(|| format!("applying {}", dir.display()))?;
        }
        let manifests: Vec<_> = files
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"))
            .collect();
        ensure!(
            manifests.len() >= 3,
            "suspiciously few examples: {manifests:?}"
        );
        for file in manifests {
            let out = support::kubectl(
                ctx.harness,
                &["get", "-f", &file.to_string_lossy(), "-o", "name"],
                None,
            )
            .await?
            .success()
            .with_context(|| format!("objects of {} not on the server", file.display()))?;
            ensure!(
                !out.trim().is_empty(),
                "{} defines no objects",
                file.display()
            );
        }
        Ok(())
    }
    .await;
    for ns in ["acme", "globex", "platform"] {
        let _ = ctx
            .kubectl(&[
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
            ])
            .await;
    }
    result
}

/// A valid ApiRegistration to break one field at a time.
fn valid_api(name: &str) -> ApiRegistration {
    api_registration(name, "https://api.example.com")
        .with_scope("read:users", "Read users")
        .with_scope("write:users", "")
}

/// `api` as the JSON manifest kubectl is given.
fn manifest(api: &ApiRegistration) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(api)?)
}

/// (c) Invalid specs are refused by the API server itself (client-side validation off),
/// and the error names the offending field and the rule. The unbroken base is accepted, so
/// a refusal is about the one broken field.
async fn invalid_specs_rejected_naming_the_field(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let long_audience = format!("https://{}.example.com", "a".repeat(50));
    ensure!(long_audience.len() > 64);
    let mut too_long = valid_api("too-long-audience");
    too_long.spec.audience = long_audience;
    let mut whitespace = valid_api("whitespace-scope-key");
    whitespace.spec.scopes[0].key = "read users".into();
    let mut duplicate = valid_api("duplicate-scope-key");
    duplicate.spec.scopes[1].key = "read:users".into();
    // What the types cannot express (an enum value they do not know, a required field left
    // out) is broken in the serialized manifest: raw JSON for exactly that field.
    let mut bad_policy = manifest(&valid_api("bad-grant-policy"))?;
    bad_policy["spec"]["grantPolicy"]["from"] = "Everyone".into();
    let mut missing_audience = manifest(&valid_api("missing-audience"))?;
    missing_audience["spec"]
        .as_object_mut()
        .context("spec is an object")?
        .remove("audience");
    let cases: Vec<(Value, &[&str])> = vec![
        (manifest(&too_long)?, &["spec.audience", "at most 64"]),
        (
            bad_policy,
            &["spec.grantPolicy.from", "Unsupported value: \"Everyone\""],
        ),
        (
            manifest(&whitespace)?,
            &["spec.scopes", "key", "\"read users\"", "should match"],
        ),
        (missing_audience, &["spec.audience", "Required value"]),
        (
            manifest(&duplicate)?,
            &["spec.scopes[1]", "Duplicate value"],
        ),
    ];

    ctx.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &manifest(&valid_api("valid"))?.to_string(),
    )
    .await?
    .success()
    .context("the valid base ApiRegistration was refused")?;

    let mut failures = Vec::new();
    for (manifest, expected) in &cases {
        let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
        let stderr = match ctx
            .kubectl_stdin(
                &["apply", "--validate=false", "-f", "-"],
                &manifest.to_string(),
            )
            .await?
            .failure()
        {
            Ok(stderr) => stderr,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let missing: Vec<_> = expected.iter().filter(|s| !stderr.contains(*s)).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{name}: error does not mention {missing:?}:\n{stderr}"
            ));
        }
        let exists = ctx
            .kubectl(&[
                "get",
                "apiregistration",
                name,
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .await?
            .success()?;
        if !exists.trim().is_empty() {
            failures.push(format!("{name}: refused, yet {exists} exists"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

/// (d) `kubectl get kinde -A` lists all three kinds with their printer columns.
async fn kubectl_get_kinde_printer_columns(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    ctx.apply(&[
        &valid_api("orders-api"),
        &m2m_application("shop"),
        &api_grant("shop-orders", "shop", "orders-api").with_scopes(&["read:users"]),
    ])
    .await?;

    // A discovery cache of its own: kubectl's shared on-disk cache may hold a discovery
    // made by another test before the CRDs existed, and a category ("kinde") that is not in
    // a cached discovery is not looked up again (seen once under load: "the server doesn't
    // have a resource type \"kinde\"").
    let cache = ctx
        .harness
        .run_dir
        .join(format!("kubectl-cache-{}", ctx.ns));
    let cache = cache.to_string_lossy();
    let out = ctx
        .kubectl(&["--cache-dir", &cache, "get", "kinde", "-A"])
        .await?
        .success()?;
    let tables = parse_tables(&out);
    let expect: [(&str, &str, &[&str]); 3] = [
        (
            "apiregistration",
            "orders-api",
            &["NAMESPACE", "NAME", "AUDIENCE", "READY", "SYNCED", "AGE"],
        ),
        (
            "m2mapplication",
            "shop",
            &[
                "NAMESPACE",
                "NAME",
                "CLIENT ID",
                "SECRET",
                "READY",
                "SYNCED",
                "AGE",
            ],
        ),
        (
            "apigrant",
            "shop-orders",
            &[
                "NAMESPACE",
                "NAME",
                "APPLICATION",
                "API",
                "AUDIENCE",
                "READY",
                "SYNCED",
                "AGE",
            ],
        ),
    ];
    for (resource, name, header) in expect {
        let row_name = format!("{resource}.{GROUP}/{name}");
        let table = tables
            .iter()
            .find(|t| {
                t.rows
                    .iter()
                    .any(|r| r.first() == Some(&ctx.ns) && r.get(1) == Some(&row_name))
            })
            .with_context(|| {
                format!(
                    "no row {} {row_name} in `kubectl get kinde -A`:\n{out}",
                    ctx.ns
                )
            })?;
        ensure!(
            table.header == header,
            "columns for {resource}: {:?}, expected {header:?}\n{out}",
            table.header
        );
    }
    // Column values: the spec-derived ones are filled in.
    let audience = ctx
        .kubectl(&["get", "kapi", "orders-api", "--no-headers"])
        .await?
        .success()?;
    ensure!(
        audience.contains("https://api.example.com"),
        "AUDIENCE column empty:\n{audience}"
    );
    let grant = ctx
        .kubectl(&["get", "apigrant", "shop-orders", "--no-headers"])
        .await?
        .success()?;
    ensure!(
        grant.split_whitespace().take(3).collect::<Vec<_>>()
            == ["shop-orders", "shop", "orders-api"],
        "APPLICATION/API columns of the grant:\n{grant}"
    );

    // `-o wide` adds the Ready condition's reason.
    let wide = ctx
        .kubectl(&["get", "kinde", "-o", "wide"])
        .await?
        .success()?;
    let wide_tables = parse_tables(&wide);
    ensure!(
        // The three kinds of this namespace, and the ClusterKindeConnections other tests
        // made (cluster-scoped, so listed in every namespace).
        wide_tables.len() >= 3
            && wide_tables
                .iter()
                .all(|t| t.header.iter().any(|h| h == "REASON")),
        "REASON column missing in `kubectl get kinde -o wide`:\n{wide}"
    );
    Ok(())
}

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Splits kubectl's table output (one table per kind, separated by blank lines) into
/// columns. Columns are separated by at least two spaces ("CLIENT ID" is one column); empty
/// cells make rows ragged, so only the leading NAMESPACE and NAME cells of rows are relied on.
fn parse_tables(out: &str) -> Vec<Table> {
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    out.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut lines = block.lines().filter(|l| !l.trim().is_empty());
            let header = split(lines.next()?);
            let rows = lines.map(split).collect();
            Some(Table { header, rows })
        })
        .collect()
}
