//! The Helm chart, with the real helm (v4, `scripts/fetch-tools`): lint, `helm template` for
//! every values combination that changes the output (checked object by object, RBAC rule by
//! rule), values the schema or the templates refuse, the chart's CRDs against `crdgen`, and
//! `helm install` into the test control plane. `tests/e2e/rbac.rs` runs the operator as the
//! chart's ServiceAccount.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::Api;
use serde_json::Value;

use crate::support::{self, Ctx, E2eTest, Harness, KubectlOutput};

pub const CHART: &str = "charts/kinde-m2m-operator";
pub const CHART_NAME: &str = "kinde-m2m-operator";
/// Values every render needs.
const REQUIRED: [&str; 4] = [
    "--set",
    "kinde.domain=https://acme.kinde.com",
    "--set",
    "kinde.existingSecret=kinde-operator-credentials",
];

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("chart::lint", lint),
        support::test("chart::template_defaults", template_defaults),
        support::test("chart::template_required_values", template_required_values),
        support::test(
            "chart::template_watch_namespaces",
            template_watch_namespaces,
        ),
        support::test("chart::template_options", template_options),
        support::test("chart::template_conventions", template_conventions),
        support::test("chart::values_schema_rejects", values_schema_rejects),
        support::test("chart::crds_are_generated", crds_are_generated),
        support::test("chart::install", install),
    ]
}

// ---------------------------------------------------------------------------------------
// helm
// ---------------------------------------------------------------------------------------

/// `helm ARGS` (from the repo root, with its own cache/config dirs under the run dir);
/// `kubeconfig` for commands that talk to a cluster.
pub async fn helm(
    h: &Harness,
    kubeconfig: Option<&Path>,
    args: &[&str],
) -> anyhow::Result<KubectlOutput> {
    let bin = h.helm_bin()?;
    let home = h.run_dir.join("helm");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .current_dir(support::repo_root())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        // Never the machine's cluster.
        None => cmd.env("KUBECONFIG", "/dev/null"),
    };
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(KubectlOutput {
        command: format!("helm {}", args.join(" ")),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `helm template kmo CHART -n kinde-system` with the required values plus `extra`.
async fn template(h: &Harness, extra: &[&str]) -> anyhow::Result<KubectlOutput> {
    let mut args = vec!["template", "kmo", CHART, "--namespace", "kinde-system"];
    args.extend(REQUIRED);
    args.extend_from_slice(extra);
    helm(h, None, &args).await
}

/// The rendered objects (empty documents dropped).
async fn render(h: &Harness, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let text = template(h, extra).await?.success()?;
    parse_docs(&text)
}

pub fn parse_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap_or("?"), name_of(d)))
        .collect()
}

fn name_of(d: &Value) -> String {
    match d["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", d["metadata"]["name"].as_str().unwrap_or("?")),
        None => d["metadata"]["name"].as_str().unwrap_or("?").to_string(),
    }
}

/// The one object of `kind` named `name` (`ns/name` for namespaced objects).
fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && name_of(d) == name)
        .ok_or_else(|| anyhow!("no {kind} {name} in the output; objects: {:?}", kinds(docs)))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

// ---------------------------------------------------------------------------------------
// RBAC rules, as comparable sets
// ---------------------------------------------------------------------------------------

/// A role's `rules`, one `group|resource|verb[|names]` string per combination granted.
pub fn rule_set(rules: &Value) -> BTreeSet<String> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        let names = strs(&rule["resourceNames"]);
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    let mut s = format!("{g}|{r}|{v}");
                    if !names.is_empty() {
                        s.push('|');
                        s.push_str(&names.join(","));
                    }
                    out.insert(s);
                }
            }
        }
    }
    out
}

fn expand(group: &str, resources: &[&str], verbs: &[&str]) -> Vec<String> {
    resources
        .iter()
        .flat_map(|r| verbs.iter().map(move |v| format!("{group}|{r}|{v}")))
        .collect()
}

/// What the operator needs where it watches (cluster-wide or per namespace).
pub fn expected_namespaced_rules() -> BTreeSet<String> {
    const GROUP: &str = "m2m.kinde-operator.io";
    const KINDS: [&str; 4] = [
        "apiregistrations",
        "m2mapplications",
        "apigrants",
        "kindeconnections",
    ];
    let mut out = BTreeSet::new();
    out.extend(expand(GROUP, &KINDS, &["list", "watch", "patch"]));
    out.extend(expand(
        GROUP,
        &KINDS
            .map(|k| format!("{k}/status"))
            .each_ref()
            .map(String::as_str),
        &["patch"],
    ));
    out.extend(expand(
        "",
        &["secrets"],
        &["get", "list", "watch", "create", "patch"],
    ));
    out.extend(expand("events.k8s.io", &["events"], &["create", "patch"]));
    out
}

/// What the operator needs cluster-wide whatever it watches: ClusterKindeConnections are
/// cluster-scoped (watched, finalizer patched, status written).
pub fn expected_cluster_rules() -> BTreeSet<String> {
    const GROUP: &str = "m2m.kinde-operator.io";
    let mut out = BTreeSet::new();
    out.extend(expand(
        GROUP,
        &["clusterkindeconnections"],
        &["list", "watch", "patch"],
    ));
    out.extend(expand(
        GROUP,
        &["clusterkindeconnections/status"],
        &["patch"],
    ));
    out
}

pub fn expected_lease_rules() -> BTreeSet<String> {
    expand(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
    )
    .into_iter()
    .collect()
}

fn diff(what: &str, got: &BTreeSet<String>, want: &BTreeSet<String>) -> anyhow::Result<()> {
    let extra: Vec<_> = got.difference(want).collect();
    let missing: Vec<_> = want.difference(got).collect();
    ensure!(
        extra.is_empty() && missing.is_empty(),
        "{what}: granted but not expected: {extra:?}; expected but missing: {missing:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

async fn lint(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    let mut args = vec!["lint", "--strict", CHART];
    args.extend(REQUIRED);
    let out = helm(h, None, &args).await?.success()?;
    ensure!(out.contains("0 chart(s) failed"), "helm lint: {out}");
    for extra in [
        &["--set", "watchNamespaces={a,b}", "--set", "replicaCount=2"][..],
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
        ],
    ] {
        let mut args = args.clone();
        args.extend_from_slice(extra);
        helm(h, None, &args).await?.success()?;
    }
    Ok(())
}

async fn template_defaults(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    let docs = render(h, &[]).await?;
    let full = "kmo-kinde-m2m-operator";
    let want: BTreeSet<String> = [
        format!("ServiceAccount/kinde-system/{full}"),
        format!("ClusterRole/{full}"),
        // Aggregated into the built-in admin/edit and view roles (tenants).
        format!("ClusterRole/{full}-edit"),
        format!("ClusterRole/{full}-view"),
        format!("ClusterRoleBinding/{full}"),
        format!("Role/kinde-system/{full}-leader-election"),
        format!("RoleBinding/kinde-system/{full}-leader-election"),
        format!("Service/kinde-system/{full}-metrics"),
        format!("Deployment/kinde-system/{full}"),
    ]
    .into();
    ensure!(kinds(&docs) == want, "objects: {:?}", kinds(&docs));

    // The Deployment: hardened, probed, credentials from the existing Secret.
    let d = object(&docs, "Deployment", &format!("kinde-system/{full}"))?;
    let pod = &d["spec"]["template"]["spec"];
    ensure!(
        pod["serviceAccountName"] == full,
        "SA: {}",
        pod["serviceAccountName"]
    );
    ensure!(
        pod["securityContext"]["runAsNonRoot"] == true,
        "pod securityContext: {}",
        pod["securityContext"]
    );
    ensure!(
        pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
        "seccomp: {}",
        pod["securityContext"]
    );
    let containers = pod["containers"].as_array().context("containers")?;
    ensure!(containers.len() == 1, "containers: {containers:?}");
    let c = &containers[0];
    let sc = &c["securityContext"];
    ensure!(
        sc["readOnlyRootFilesystem"] == true,
        "container securityContext: {sc}"
    );
    ensure!(
        sc["allowPrivilegeEscalation"] == false,
        "container securityContext: {sc}"
    );
    ensure!(
        sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "capabilities: {sc}"
    );
    ensure!(
        sc["privileged"].is_null() || sc["privileged"] == false,
        "privileged: {sc}"
    );
    for path in ["requests/cpu", "requests/memory", "limits/memory"] {
        let (a, b) = path.split_once('/').unwrap();
        ensure!(
            c["resources"][a][b].is_string(),
            "resources.{a}.{b} missing: {}",
            c["resources"]
        );
    }
    let port_name = c["ports"][0]["name"]
        .as_str()
        .context("container port name")?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        ensure!(
            get["path"] == path && get["port"] == port_name,
            "{probe}: {}",
            c[probe]
        );
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(args.first() == Some(&"run"), "args: {args:?}");
    ensure!(args.contains(&"--leader-election=true"), "args: {args:?}");
    ensure!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "all namespaces by default: {args:?}"
    );
    let env = c["env"].as_array().context("env")?;
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    ensure!(
        var("KINDE_DOMAIN").is_some_and(|e| e["value"] == "https://acme.kinde.com"),
        "KINDE_DOMAIN: {env:?}"
    );
    for (name, key) in [
        ("KINDE_CLIENT_ID", "KINDE_CLIENT_ID"),
        ("KINDE_CLIENT_SECRET", "KINDE_CLIENT_SECRET"),
    ] {
        let e = var(name).with_context(|| format!("{name} not in env: {env:?}"))?;
        let r = &e["valueFrom"]["secretKeyRef"];
        ensure!(
            r["name"] == "kinde-operator-credentials" && r["key"] == key && e["value"].is_null(),
            "{name} must come from the existing Secret: {e}"
        );
    }
    // The lease namespace comes from the pod's namespace.
    ensure!(
        var("POD_NAMESPACE")
            .is_some_and(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "POD_NAMESPACE: {env:?}"
    );

    // No secret value anywhere: no Secret object, no literal for a credential variable, and
    // the chart has no value that could carry one (see values_schema_rejects).
    ensure!(
        of_kind(&docs, "Secret").is_empty(),
        "the chart renders a Secret"
    );
    for d in &docs {
        ensure!(
            d["data"].is_null() && d["stringData"].is_null(),
            "{} carries data",
            name_of(d)
        );
    }
    for e in env {
        let name = e["name"].as_str().unwrap_or_default();
        ensure!(
            !(name.contains("SECRET") || name.contains("CLIENT_ID")) || e["value"].is_null(),
            "{name} has a literal value"
        );
    }

    // RBAC, rule by rule.
    let cr = object(&docs, "ClusterRole", full)?;
    let mut want = expected_namespaced_rules();
    want.insert("|namespaces|get".into());
    want.extend(expected_cluster_rules());
    diff(
        "ClusterRole (all namespaces)",
        &rule_set(&cr["rules"]),
        &want,
    )?;
    let lease = object(
        &docs,
        "Role",
        &format!("kinde-system/{full}-leader-election"),
    )?;
    diff(
        "leader-election Role",
        &rule_set(&lease["rules"]),
        &expected_lease_rules(),
    )?;
    for (kind, name) in [
        ("ClusterRoleBinding", full.to_string()),
        (
            "RoleBinding",
            format!("kinde-system/{full}-leader-election"),
        ),
    ] {
        let b = object(&docs, kind, &name)?;
        ensure!(
            b["subjects"]
                == serde_json::json!([{"kind": "ServiceAccount", "name": full, "namespace": "kinde-system"}]),
            "{kind} {name} subjects: {}",
            b["subjects"]
        );
    }
    Ok(())
}

async fn template_required_values(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    for (set, value) in [
        ("kinde.domain=", "kinde.domain"),
        ("kinde.existingSecret=", "kinde.existingSecret"),
    ] {
        let err = template(h, &["--set", set]).await?.failure()?;
        ensure!(
            err.contains(&format!("{value} is required")),
            "without {value}: {err}"
        );
    }
    // Neither given at all (no --set): the first missing one is named.
    let err = helm(h, None, &["template", "kmo", CHART])
        .await?
        .failure()?;
    ensure!(err.contains("is required"), "without values: {err}");
    Ok(())
}

async fn template_watch_namespaces(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    let docs = render(h, &["--set", "watchNamespaces={team-a,team-b}"]).await?;
    let full = "kmo-kinde-m2m-operator";
    let roles: BTreeSet<String> = of_kind(&docs, "Role").into_iter().map(name_of).collect();
    let want: BTreeSet<String> = [
        format!("team-a/{full}"),
        format!("team-b/{full}"),
        format!("kinde-system/{full}-leader-election"),
        format!("kube-system/{full}-cluster-events"),
    ]
    .into();
    ensure!(roles == want, "Roles: {roles:?}");
    let events = object(&docs, "Role", &format!("kube-system/{full}-cluster-events"))?;
    diff(
        "Role in kube-system (Events of cluster-scoped objects)",
        &rule_set(&events["rules"]),
        &expand("events.k8s.io", &["events"], &["create", "patch"])
            .into_iter()
            .collect(),
    )?;
    for ns in ["team-a", "team-b"] {
        let role = object(&docs, "Role", &format!("{ns}/{full}"))?;
        diff(
            &format!("Role in {ns}"),
            &rule_set(&role["rules"]),
            &expected_namespaced_rules(),
        )?;
        let b = object(&docs, "RoleBinding", &format!("{ns}/{full}"))?;
        ensure!(
            b["roleRef"]["kind"] == "Role"
                && b["roleRef"]["name"] == full
                && b["subjects"][0]["namespace"] == "kinde-system"
                && b["subjects"][0]["name"] == full,
            "RoleBinding in {ns}: {b}"
        );
    }
    // Cluster-wide: only the watched namespaces' labels, nothing on Secrets or the CRs.
    let cr = object(&docs, "ClusterRole", full)?;
    diff(
        "ClusterRole (namespaced install)",
        &rule_set(&cr["rules"]),
        &expected_cluster_rules()
            .into_iter()
            .chain(["|namespaces|get|team-a,team-b".to_string()])
            .collect(),
    )?;
    let d = object(&docs, "Deployment", &format!("kinde-system/{full}"))?;
    let args = &d["spec"]["template"]["spec"]["containers"][0]["args"];
    for ns in ["team-a", "team-b"] {
        ensure!(
            args.as_array()
                .is_some_and(|a| a.contains(&Value::from(format!("--namespace={ns}")))),
            "args lack --namespace={ns}: {args}"
        );
    }
    Ok(())
}

async fn template_options(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    adoption_values(h).await?;
    let full = "kmo-kinde-m2m-operator";
    let selector = serde_json::json!({
        "app.kubernetes.io/name": CHART_NAME,
        "app.kubernetes.io/instance": "kmo",
    });

    // replicaCount 2: a PodDisruptionBudget (none for one replica, none when disabled).
    let docs = render(h, &["--set", "replicaCount=2"]).await?;
    let pdb = object(
        &docs,
        "PodDisruptionBudget",
        &format!("kinde-system/{full}"),
    )?;
    ensure!(
        pdb["spec"]["maxUnavailable"] == 1 && pdb["spec"]["selector"]["matchLabels"] == selector,
        "PDB: {pdb}"
    );
    let d = object(&docs, "Deployment", &format!("kinde-system/{full}"))?;
    ensure!(
        d["spec"]["replicas"] == 2,
        "replicas: {}",
        d["spec"]["replicas"]
    );
    let docs = render(
        h,
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "podDisruptionBudget.enabled=false",
        ],
    )
    .await?;
    ensure!(
        of_kind(&docs, "PodDisruptionBudget").is_empty(),
        "PDB though disabled"
    );
    ensure!(
        of_kind(&render(h, &[]).await?, "PodDisruptionBudget").is_empty(),
        "PDB for a single replica"
    );

    // serviceMonitor: selects the metrics Service's port; needs that Service.
    let docs = render(
        h,
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=prom",
        ],
    )
    .await?;
    let sm = object(&docs, "ServiceMonitor", &format!("kinde-system/{full}"))?;
    let svc = object(&docs, "Service", &format!("kinde-system/{full}-metrics"))?;
    ensure!(
        sm["spec"]["selector"]["matchLabels"] == selector
            && sm["metadata"]["labels"]["release"] == "prom"
            && sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
            && sm["spec"]["endpoints"][0]["path"] == "/metrics",
        "ServiceMonitor: {sm}"
    );
    let labels = svc["metadata"]["labels"].as_object().context("labels")?;
    for (k, v) in selector.as_object().context("selector")? {
        ensure!(
            labels.get(k) == Some(v),
            "Service lacks {k}={v}: {labels:?}"
        );
    }
    let err = template(
        h,
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "metrics.service.enabled=false",
        ],
    )
    .await?
    .failure()?;
    ensure!(err.contains("metrics.service.enabled"), "{err}");

    // networkPolicy: ingress only to the metrics port; egress DNS + HTTPS/API server.
    let docs = render(h, &["--set", "networkPolicy.enabled=true"]).await?;
    let np = object(&docs, "NetworkPolicy", &format!("kinde-system/{full}"))?;
    let spec = &np["spec"];
    ensure!(spec["podSelector"]["matchLabels"] == selector, "{np}");
    ensure!(
        spec["policyTypes"] == serde_json::json!(["Ingress", "Egress"]),
        "policyTypes: {spec}"
    );
    ensure!(
        spec["ingress"].as_array().map(Vec::len) == Some(1)
            && spec["ingress"][0]["ports"]
                == serde_json::json!([{"port": "http-metrics", "protocol": "TCP"}]),
        "ingress: {}",
        spec["ingress"]
    );
    let egress_ports: BTreeSet<String> = spec["egress"]
        .as_array()
        .context("egress")?
        .iter()
        .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("")))
        .collect();
    let want: BTreeSet<String> = ["53/UDP", "53/TCP", "443/TCP", "6443/TCP"]
        .map(String::from)
        .into();
    ensure!(egress_ports == want, "egress ports: {egress_ports:?}");
    ensure!(
        of_kind(&render(h, &[]).await?, "NetworkPolicy").is_empty(),
        "NetworkPolicy by default"
    );

    // leaderElection off: no Lease Role, and the operator is told.
    let docs = render(h, &["--set", "leaderElection.enabled=false"]).await?;
    ensure!(
        of_kind(&docs, "Role").is_empty() && of_kind(&docs, "RoleBinding").is_empty(),
        "Lease RBAC without leader election: {:?}",
        kinds(&docs)
    );
    let d = object(&docs, "Deployment", &format!("kinde-system/{full}"))?;
    let args = &d["spec"]["template"]["spec"]["containers"][0]["args"];
    ensure!(
        args.as_array()
            .is_some_and(|a| a.contains(&Value::from("--leader-election=false"))),
        "args: {args}"
    );

    // rbac.create=false / serviceAccount.create=false: nothing of either.
    let docs = render(
        h,
        &[
            "--set",
            "rbac.create=false",
            "--set",
            "serviceAccount.create=false",
            "--set",
            "serviceAccount.name=bring-your-own",
        ],
    )
    .await?;
    let k = kinds(&docs);
    ensure!(
        k.iter()
            .all(|o| o.starts_with("Service/") || o.starts_with("Deployment/")),
        "objects: {k:?}"
    );
    let d = object(&docs, "Deployment", &format!("kinde-system/{full}"))?;
    ensure!(
        d["spec"]["template"]["spec"]["serviceAccountName"] == "bring-your-own",
        "SA name: {}",
        d["spec"]["template"]["spec"]["serviceAccountName"]
    );
    Ok(())
}

/// The adoption policy: refused everywhere by default (`--adoption-allow-delete=false`, no
/// namespace), and each value becomes its flag.
async fn adoption_values(h: &Harness) -> anyhow::Result<()> {
    let args_of = |docs: &[Value]| -> anyhow::Result<Vec<String>> {
        let d = object(docs, "Deployment", "kinde-system/kmo-kinde-m2m-operator")?;
        Ok(d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .filter(|a| a.starts_with("--adoption"))
            .collect())
    };
    let defaults = args_of(&render(h, &[]).await?)?;
    ensure!(
        defaults == ["--adoption-allow-delete=false"],
        "default adoption args: {defaults:?}"
    );
    let set = args_of(
        &render(
            h,
            &[
                "--set",
                "adoption.namespaces={platform,legacy}",
                "--set",
                "adoption.namespaceSelector=m2m.kinde-operator.io/adoption=allowed",
                "--set",
                "adoption.allowDelete=true",
            ],
        )
        .await?,
    )?;
    ensure!(
        set == [
            "--adoption-namespace=platform",
            "--adoption-namespace=legacy",
            "--adoption-namespace-selector=m2m.kinde-operator.io/adoption=allowed",
            "--adoption-allow-delete=true",
        ],
        "adoption args: {set:?}"
    );
    Ok(())
}

/// The conventions a platform team expects of a chart (issue: installable), value by value.
async fn template_conventions(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    let full = "kmo-kinde-m2m-operator";
    let deployment = |docs: &[Value]| -> anyhow::Result<Value> {
        of_kind(docs, "Deployment")
            .first()
            .copied()
            .cloned()
            .context("no Deployment")
    };
    let container = |d: &Value| d["spec"]["template"]["spec"]["containers"][0].clone();

    // As a subchart: a parent's `global` is accepted.
    render(h, &["--set", "global.imageRegistry=registry.example"]).await?;

    // Tenant roles, aggregated into admin/edit and view; off with the value.
    let docs = render(h, &[]).await?;
    let edit = object(&docs, "ClusterRole", &format!("{full}-edit"))?;
    let labels = &edit["metadata"]["labels"];
    ensure!(
        labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
            && labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true",
        "edit role labels: {labels}"
    );
    let rules = edit["rules"].to_string();
    ensure!(
        !rules.contains("status") && rules.contains("deletecollection"),
        "edit rules: {rules}"
    );
    let view = object(&docs, "ClusterRole", &format!("{full}-view"))?;
    ensure!(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true");
    let docs = render(h, &["--set", "rbac.aggregateToDefaultRoles=false"]).await?;
    ensure!(
        object(&docs, "ClusterRole", &format!("{full}-edit")).is_err(),
        "aggregated roles though turned off"
    );

    // Names, labels, extra args/env/volumes, spread, security contexts, lease timings.
    let docs = render(
        h,
        &[
            "--set",
            "fullnameOverride=kinde-ops",
            "--set",
            "commonLabels.team=platform",
            "--set",
            "extraArgs={--log-format=text}",
            "--set",
            "extraEnv[0].name=HTTPS_PROXY",
            "--set",
            "extraEnv[0].value=http://proxy:3128",
            "--set",
            "extraVolumes[0].name=ca",
            "--set",
            "extraVolumes[0].configMap.name=corp-ca",
            "--set",
            "extraVolumeMounts[0].name=ca",
            "--set",
            "extraVolumeMounts[0].mountPath=/etc/corp-ca",
            "--set",
            "topologySpreadConstraints[0].maxSkew=1",
            "--set",
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "--set",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "--set",
            "podSecurityContext.runAsUser=null",
            "--set",
            "podSecurityContext.runAsGroup=null",
            "--set",
            "securityContext.readOnlyRootFilesystem=false",
            "--set",
            "leaderElection.leaseDuration=30s",
            "--set",
            "leaderElection.renewDeadline=20s",
        ],
    )
    .await?;
    let d = deployment(&docs)?;
    ensure!(
        d["metadata"]["name"] == "kinde-ops",
        "fullnameOverride: {}",
        d["metadata"]["name"]
    );
    ensure!(
        docs.iter()
            .all(|o| o["metadata"]["labels"]["team"] == "platform"),
        "commonLabels missing on some object"
    );
    let c = container(&d);
    let args = c["args"].to_string();
    ensure!(
        args.contains("--log-format=text")
            && args.contains("--lease-duration=30s")
            && args.contains("--lease-renew-deadline=20s"),
        "args: {args}"
    );
    ensure!(
        c["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "HTTPS_PROXY")),
        "extraEnv: {}",
        c["env"]
    );
    ensure!(
        c["volumeMounts"][0]["mountPath"] == "/etc/corp-ca",
        "mounts: {}",
        c["volumeMounts"]
    );
    let pod = &d["spec"]["template"]["spec"];
    ensure!(
        pod["volumes"][0]["configMap"]["name"] == "corp-ca",
        "volumes: {}",
        pod["volumes"]
    );
    ensure!(
        pod["topologySpreadConstraints"][0]["maxSkew"] == 1,
        "spread: {}",
        pod["topologySpreadConstraints"]
    );
    let psc = &pod["securityContext"];
    ensure!(
        psc.get("runAsUser").is_none() && psc["runAsNonRoot"] == true,
        "podSecurityContext overrides (OpenShift): {psc}"
    );
    ensure!(
        c["securityContext"]["readOnlyRootFilesystem"] == false
            && c["securityContext"]["allowPrivilegeEscalation"] == false,
        "container securityContext override: {}",
        c["securityContext"]
    );
    let docs = render(h, &["--set", "nameOverride=kmo-x"]).await?;
    ensure!(
        deployment(&docs)?["metadata"]["name"] == "kmo-kmo-x",
        "nameOverride: {}",
        deployment(&docs)?["metadata"]["name"]
    );

    // ServiceMonitor options; the PrometheusRule and its alerts.
    let docs = render(
        h,
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.namespace=monitoring",
            "--set",
            "serviceMonitor.scrapeTimeout=10s",
            "--set",
            "serviceMonitor.honorLabels=true",
            "--set",
            "serviceMonitor.relabelings[0].action=labeldrop",
            "--set",
            "serviceMonitor.relabelings[0].regex=pod",
            "--set",
            "serviceMonitor.metricRelabelings[0].action=drop",
            "--set",
            "serviceMonitor.metricRelabelings[0].regex=go_.*",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.notReadyFor=30m",
        ],
    )
    .await?;
    let sm = object(&docs, "ServiceMonitor", &format!("monitoring/{full}"))?;
    let ep = &sm["spec"]["endpoints"][0];
    ensure!(
        ep["scrapeTimeout"] == "10s"
            && ep["honorLabels"] == true
            && ep["relabelings"][0]["action"] == "labeldrop"
            && ep["metricRelabelings"][0]["action"] == "drop",
        "ServiceMonitor endpoint: {ep}"
    );
    ensure!(
        sm["spec"]["namespaceSelector"]["matchNames"][0] == "kinde-system",
        "{sm}"
    );
    let rule = object(&docs, "PrometheusRule", &format!("kinde-system/{full}"))?;
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    ensure!(
        alerts
            == [
                "KindeM2MObjectNotReady",
                "KindeM2MRotationFailed",
                "KindeM2MCredentialTooOld",
                "KindeM2MKindeErrors"
            ],
        "alerts: {alerts:?}"
    );
    ensure!(rule["spec"]["groups"][0]["rules"][0]["for"] == "30m");
    // Every alert's metric is one the operator exports.
    let text = rule.to_string();
    for metric in [
        "object_ready",
        "rotations_total",
        "credential_issued_timestamp_seconds",
        "kinde_requests_total",
    ] {
        ensure!(
            text.contains(&format!("kinde_m2m_operator_{metric}")),
            "alert on unknown metric {metric}"
        );
    }

    // CRDs as templates for `helm upgrade`, kept on uninstall; none by default.
    ensure!(of_kind(&render(h, &[]).await?, "CustomResourceDefinition").is_empty());
    let docs = render(h, &["--set", "crds.managed=true"]).await?;
    let crds = of_kind(&docs, "CustomResourceDefinition");
    let generated = kinde_m2m_operator::crd::crds().len();
    ensure!(
        crds.len() == generated,
        "{} CRDs templated, {generated} generated",
        crds.len()
    );
    ensure!(
        crds.iter()
            .all(|c| c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"),
        "CRDs without resource-policy keep"
    );
    Ok(())
}

async fn values_schema_rejects(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    for (set, mention) in [
        // Not a value of the chart at all.
        ("replicas=2", "replicas"),
        // The secret itself is never a value.
        ("kinde.clientSecret=hunter2", "clientSecret"),
        ("logFormat=xml", "logFormat"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("kinde.domain=acme.kinde.com", "kinde"),
        ("replicaCount=-1", "replicaCount"),
        ("adoption.allowDelete=yes", "allowDelete"),
        ("adoption.namespaces={Not_A_Namespace}", "namespaces"),
        ("leaderElection.leaseDuration=soon", "leaseDuration"),
        ("extraArgs={run}", "extraArgs"),
        ("prometheusRule.kindeErrorRatio=2", "kindeErrorRatio"),
        ("prometheusRule.notReadyFor=later", "notReadyFor"),
        ("serviceMonitor.scrapeTimeout=fast", "scrapeTimeout"),
        (
            "rbac.aggregateToDefaultRoles=maybe",
            "aggregateToDefaultRoles",
        ),
        ("crds.managed=sometimes", "managed"),
        ("global=5", "global"),
        ("extraEnv[0].value=no-name", "extraEnv"),
        ("extraVolumeMounts[0].name=ca", "extraVolumeMounts"),
        ("extraVolumes[0].configMap.name=no-name", "extraVolumes"),
        (
            "topologySpreadConstraints=oops",
            "topologySpreadConstraints",
        ),
        ("commonLabels.team=5", "commonLabels"),
        ("podSecurityContext=oops", "podSecurityContext"),
        ("serviceMonitor.relabelings=oops", "relabelings"),
        (
            "prometheusRule.credentialMaxAgeSeconds=1",
            "credentialMaxAgeSeconds",
        ),
        ("securityContext=oops", "securityContext"),
        (
            "fullnameOverride=a-name-far-longer-than-sixty-three-characters-which-kubernetes-refuses",
            "fullnameOverride",
        ),
        ("serviceMonitor.namespace=5", "namespace"),
        ("serviceMonitor.honorLabels=maybe", "honorLabels"),
        ("serviceMonitor.metricRelabelings=oops", "metricRelabelings"),
        ("leaderElection.renewDeadline=soon", "renewDeadline"),
        ("leaderElection.retryPeriod=soon", "retryPeriod"),
        (
            "nameOverride=a-name-far-longer-than-sixty-three-characters-which-kubernetes-refuses",
            "nameOverride",
        ),
    ] {
        let err = template(h, &["--set", set]).await?.failure()?;
        ensure!(
            err.contains("schema") && err.contains(mention),
            "--set {set}: expected a schema error naming {mention:?}, got:\n{err}"
        );
        ensure!(
            !err.contains("hunter2"),
            "the error echoes the secret: {err}"
        );
    }
    Ok(())
}

/// The chart ships exactly the CRDs the binary generates (`tests/crd_drift.rs` checks both
/// `crds/` and the chart's `crds/` against the Rust types; this checks the shipped binary's
/// `crdgen` against the chart).
async fn crds_are_generated(ctx: Ctx) -> anyhow::Result<()> {
    let out = ctx
        .harness
        .run_dir
        .join(format!("crdgen-{}", fastrand::u32(..)));
    let status = tokio::process::Command::new(support::OPERATOR_BIN)
        .args(["crdgen", "--out-dir"])
        .arg(&out)
        .status()
        .await?;
    ensure!(status.success(), "crdgen: {status}");
    let listing = |dir: &Path| -> anyhow::Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    };
    let chart_crds: PathBuf = support::repo_path(CHART).join("crds");
    let generated = listing(&out)?;
    ensure!(
        generated == listing(&chart_crds)?,
        "files: generated {generated:?}, chart {:?}",
        listing(&chart_crds)?
    );
    for f in &generated {
        let a = std::fs::read_to_string(out.join(f))?;
        let b = std::fs::read_to_string(chart_crds.join(f))?;
        ensure!(
            a == b,
            "{CHART}/crds/{f} differs from crdgen: run scripts/generate-crds"
        );
        let top = std::fs::read_to_string(support::repo_path("crds").join(f))?;
        ensure!(top == b, "crds/{f} and {CHART}/crds/{f} differ");
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// `helm install` into the test control plane (v1.20; no kubelet, so no `--wait`): every
/// object is created, with a PodDisruptionBudget the server knows (policy/v1beta1 there),
/// Roles in each watched namespace, and the CRDs present and Established. `helm uninstall`
/// removes the cluster-scoped RBAC and keeps the CRDs (and so everybody's resources).
async fn install(ctx: Ctx) -> anyhow::Result<()> {
    let h = ctx.harness;
    let kubeconfig = h.control_plane.kubeconfig.clone();
    let extra = ctx.extra_namespace(&[]).await?;
    let release = format!("kmo-{}", &ctx.ns[ctx.ns.len() - 5..]);
    let full = format!("{release}-{CHART_NAME}");
    let watch = format!("watchNamespaces={{{},{extra}}}", ctx.ns);
    let mut args = vec![
        "install",
        release.as_str(),
        CHART,
        "--namespace",
        ctx.ns.as_str(),
        // Helm 4 applies server-side by default; v1.20's server-side apply refuses the CRDs'
        // x-kubernetes-validations (README: Install with Helm).
        "--server-side=false",
        "--set",
        "replicaCount=2",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        &watch,
    ];
    args.extend(REQUIRED);
    let t0 = Instant::now();
    helm(h, Some(&kubeconfig), &args).await?.success()?;
    eprintln!("chart::install: helm install took {:.1?}", t0.elapsed());
    let result = check_installed(&ctx, &release, &full, &extra).await;

    let t0 = Instant::now();
    helm(
        h,
        Some(&kubeconfig),
        &["uninstall", &release, "--namespace", &ctx.ns],
    )
    .await?
    .success()?;
    eprintln!("chart::install: helm uninstall took {:.1?}", t0.elapsed());
    result?;
    let crs = Api::<ClusterRole>::all(ctx.client.clone());
    ensure!(
        crs.get_opt(&full).await?.is_none(),
        "ClusterRole {full} left after uninstall"
    );
    ensure!(
        Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .get_opt(&full)
            .await?
            .is_none(),
        "ClusterRoleBinding {full} left after uninstall"
    );
    let names = crd_names();
    support::wait_crds_established(&ctx.client, &names, Duration::from_secs(5))
        .await
        .context("the CRDs must survive helm uninstall")?;
    Ok(())
}

pub fn crd_names() -> Vec<String> {
    ["apiregistrations", "m2mapplications", "apigrants"]
        .map(|p| format!("{p}.m2m.kinde-operator.io"))
        .to_vec()
}

async fn check_installed(ctx: &Ctx, release: &str, full: &str, extra: &str) -> anyhow::Result<()> {
    let h = ctx.harness;
    let status = helm(
        h,
        Some(&h.control_plane.kubeconfig),
        &["status", release, "--namespace", &ctx.ns, "-o", "json"],
    )
    .await?
    .success()?;
    let status: Value = serde_json::from_str(&status)?;
    ensure!(
        status["info"]["status"] == "deployed",
        "release status: {}",
        status["info"]["status"]
    );
    support::wait_crds_established(&ctx.client, &crd_names(), Duration::from_secs(60)).await?;

    let c = &ctx.client;
    let d = ctx
        .api::<Deployment>()
        .get(full)
        .await
        .context("Deployment")?;
    ensure!(
        d.spec.as_ref().and_then(|s| s.replicas) == Some(2),
        "replicas: {:?}",
        d.spec.map(|s| s.replicas)
    );
    ctx.api::<ServiceAccount>()
        .get(full)
        .await
        .context("ServiceAccount")?;
    ctx.api::<Service>()
        .get(&format!("{full}-metrics"))
        .await
        .context("metrics Service")?;
    ctx.api::<NetworkPolicy>()
        .get(full)
        .await
        .context("NetworkPolicy")?;
    // Whatever policy version the server has (v1beta1 on v1.20).
    let pdb = ctx
        .kubectl(&["get", "poddisruptionbudget", full, "-o", "json"])
        .await?
        .success()
        .context("PodDisruptionBudget")?;
    let pdb: Value = serde_json::from_str(&pdb)?;
    ensure!(pdb["spec"]["maxUnavailable"] == 1, "PDB: {pdb}");

    let cr = Api::<ClusterRole>::all(c.clone()).get(full).await?;
    let got = rule_set(&serde_json::to_value(&cr.rules)?);
    let want = expected_cluster_rules()
        .into_iter()
        .chain([format!("|namespaces|get|{},{extra}", ctx.ns)])
        .collect();
    diff("installed ClusterRole", &got, &want)?;
    Api::<ClusterRoleBinding>::all(c.clone()).get(full).await?;
    for ns in [ctx.ns.as_str(), extra] {
        let role = Api::<Role>::namespaced(c.clone(), ns).get(full).await?;
        diff(
            &format!("installed Role in {ns}"),
            &rule_set(&serde_json::to_value(&role.rules)?),
            &expected_namespaced_rules(),
        )?;
        Api::<RoleBinding>::namespaced(c.clone(), ns)
            .get(full)
            .await
            .with_context(|| format!("RoleBinding in {ns}"))?;
    }
    let lease = ctx
        .api::<Role>()
        .get(&format!("{full}-leader-election"))
        .await?;
    diff(
        "installed leader-election Role",
        &rule_set(&serde_json::to_value(&lease.rules)?),
        &expected_lease_rules(),
    )?;
    if status["info"]["notes"]
        .as_str()
        .is_none_or(|n| !n.contains(extra))
    {
        bail!(
            "NOTES do not name the watched namespaces: {}",
            status["info"]["notes"]
        );
    }
    Ok(())
}
