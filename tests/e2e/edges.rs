//! Where the operator meets a platform team's other tools: renamed Secret keys (an Envoy
//! Gateway-style `client-id`/`client-secret` Secret), the access-token lifetime, per-object
//! metrics that end with their object, and the CLI's `rotate -l` / `status`. Each test has
//! its own emulator and operator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiRegistration, M2MApplication, M2MApplicationSpec, OptionalKey,
    ROTATE_REQUESTED_AT_ANNOTATION, SecretKeys, SecretSpec, TokensSpec,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::support::fixtures::{ApiFixture, GrantFixture, api_grant, api_registration};
use crate::support::{
    self, Ctx, E2eTest, Emulator, Kind, KindStatus, Operator, annotate, wait_for, wait_reason,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("edges::envoy_style_secret_keys", envoy_style_secret_keys),
        support::test("edges::secret_keys_refused", secret_keys_refused),
        support::test("edges::access_token_lifetime", access_token_lifetime),
        support::test(
            "edges::metrics_series_end_with_the_object",
            metrics_series_end_with_the_object,
        ),
        support::test(
            "edges::cli_rotate_selected_and_status",
            cli_rotate_selected_and_status,
        ),
    ]
}

const WAIT: Duration = Duration::from_secs(90);

/// The test's emulator and an operator with `/metrics` on a known address.
struct Env {
    ctx: Ctx,
    emu: Emulator,
    op: Operator,
    metrics: String,
}

async fn start(ctx: Ctx, resync: &str) -> anyhow::Result<Env> {
    ctx.harness.ensure_crds().await?;
    let emu = ctx.own_emulator()?;
    let addr = format!("127.0.0.1:{}", support::free_port()?);
    let op = ctx.run_operator_listening(&emu, &addr, &[], resync, &[])?;
    Ok(Env {
        ctx,
        emu,
        op,
        metrics: format!("http://{addr}/metrics"),
    })
}

impl Env {
    /// Runs `body`; on failure the operator's log tail is added.
    async fn run<F>(self, body: impl FnOnce(Arc<Env>) -> F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let env = Arc::new(self);
        let result = body(env.clone()).await;
        result.map_err(|e| e.context(env.op.log_tail(40)))
    }

    async fn create<K>(&self, obj: K) -> anyhow::Result<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        Ok(self
            .ctx
            .api::<K>()
            .create(&PostParams::default(), &obj)
            .await?)
    }

    /// An audience (each test has an emulator of its own: no clash with other tests).
    fn audience(&self, what: &str) -> String {
        format!("https://{what}.example.com")
    }
}

fn data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The Secret once its `key` holds something other than `not`.
async fn wait_secret_key(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    not: Option<&str>,
) -> anyhow::Result<BTreeMap<String, String>> {
    wait_for(&format!("Secret {name} key {key}"), WAIT, || async {
        let Some(s) = secrets.get_opt(name).await? else {
            return Ok(None);
        };
        let d = data(&s);
        Ok(d.get(key)
            .filter(|v| Some(v.as_str()) != not)
            .map(|_| d.clone()))
    })
    .await
}

async fn wait_rotated(
    api: &Api<M2MApplication>,
    name: &str,
    value: &str,
) -> anyhow::Result<M2MApplication> {
    wait_for(&format!("{name} rotated for {value}"), WAIT, || async {
        let app = api.get(name).await?;
        let handled = app
            .status
            .as_ref()
            .and_then(|s| s.last_handled_rotate_request.as_deref())
            == Some(value);
        let ready = app.status.as_ref().is_some_and(KindStatus::is_ready);
        Ok((handled && ready).then_some(app))
    })
    .await
}

/// Envoy Gateway's OIDC and oauth2-proxy read `client-id`/`client-secret`: the Secret
/// carries exactly those (and the domain), the credentials work at the token endpoint, a
/// rotation switches id and secret together (every version of the Secret a watcher sees
/// holds a pair Kinde issued), and renaming the keys back converges.
async fn envoy_style_secret_keys(ctx: Ctx) -> anyhow::Result<()> {
    start(ctx, "10m")
        .await?
        .run(|env| async move {
            let audience = env.audience("orders");
            env.create(api_registration("orders", &audience).with_scopes(&["read:orders"]))
                .await?;
            let app = M2MApplication::new(
                "gateway",
                M2MApplicationSpec {
                    secret: SecretSpec {
                        keys: SecretKeys {
                            client_id: Some("client-id".into()),
                            client_secret: Some("client-secret".into()),
                            omit: vec![OptionalKey::Audience, OptionalKey::TokenUrl],
                            ..SecretKeys::default()
                        },
                        ..SecretSpec::default()
                    },
                    ..M2MApplicationSpec::default()
                },
            );
            env.create(app).await?;
            env.create(
                api_grant("gateway-orders", "gateway", "orders").with_scopes(&["read:orders"]),
            )
            .await?;
            let grants = env.ctx.api::<ApiGrant>();
            wait_reason(&grants, "gateway-orders", "Reconciled").await?;
            let apps = env.ctx.api::<M2MApplication>();
            wait_reason(&apps, "gateway", "Reconciled").await?;

            let secrets = env.ctx.api::<Secret>();
            let before =
                wait_secret_key(&secrets, "gateway-credentials", "client-id", None).await?;
            let keys: BTreeSet<&str> = before.keys().map(String::as_str).collect();
            ensure!(
                keys == BTreeSet::from(["KINDE_DOMAIN", "client-id", "client-secret"]),
                "Secret keys {keys:?}"
            );
            let claims = env
                .emu
                .token_claims(&before["client-id"], &before["client-secret"], &audience)
                .await?
                .map_err(anyhow::Error::msg)?;
            ensure!(claims["azp"] == before["client-id"].as_str(), "{claims}");

            // Watch every version of the Secret through a rotation.
            let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
            let watch = {
                let seen = seen.clone();
                let config = watcher::Config::default().fields("metadata.name=gateway-credentials");
                let stream = watcher(secrets.clone(), config).applied_objects();
                tokio::spawn(async move {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(Ok(s)) = stream.next().await {
                        let d = data(&s);
                        if let (Some(id), Some(secret)) =
                            (d.get("client-id"), d.get("client-secret"))
                        {
                            seen.lock().unwrap().push((id.clone(), secret.clone()));
                        }
                    }
                })
            };
            // The watch has started once it reported the current version.
            wait_for("the Secret watch", WAIT, || async {
                Ok((!seen.lock().unwrap().is_empty()).then_some(()))
            })
            .await?;
            annotate(
                &apps,
                "gateway",
                &[(ROTATE_REQUESTED_AT_ANNOTATION, Some("rotate-1"))],
            )
            .await?;
            wait_rotated(&apps, "gateway", "rotate-1").await?;
            let after = wait_secret_key(
                &secrets,
                "gateway-credentials",
                "client-id",
                Some(&before["client-id"]),
            )
            .await?;
            let keys: BTreeSet<&str> = after.keys().map(String::as_str).collect();
            ensure!(
                keys == BTreeSet::from(["KINDE_DOMAIN", "client-id", "client-secret"]),
                "Secret keys after the rotation {keys:?}"
            );
            // The switch is one write: give the watch a moment to see it, then look.
            let new_pair = (after["client-id"].clone(), after["client-secret"].clone());
            wait_for("the watch to see the switch", WAIT, || async {
                Ok(seen.lock().unwrap().contains(&new_pair).then_some(()))
            })
            .await?;
            watch.abort();
            let old_pair = (before["client-id"].clone(), before["client-secret"].clone());
            for pair in seen.lock().unwrap().iter() {
                ensure!(
                    *pair == old_pair || *pair == new_pair,
                    "a Secret version held client-id {} with another application's secret",
                    pair.0
                );
            }
            env.emu
                .token_claims(&new_pair.0, &new_pair.1, &audience)
                .await?
                .map_err(anyhow::Error::msg)
                .context("the rotated credentials")?;

            // Back to the default names: the Secret follows, the custom keys go.
            apps.patch(
                "gateway",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"secret": {"keys": null}}})),
            )
            .await?;
            let restored =
                wait_secret_key(&secrets, "gateway-credentials", "KINDE_CLIENT_ID", None).await?;
            let keys: BTreeSet<&str> = restored.keys().map(String::as_str).collect();
            ensure!(
                keys == BTreeSet::from([
                    "KINDE_AUDIENCE",
                    "KINDE_CLIENT_ID",
                    "KINDE_CLIENT_SECRET",
                    "KINDE_DOMAIN",
                    "KINDE_TOKEN_URL"
                ]),
                "Secret keys back to defaults {keys:?}"
            );
            ensure!(restored["KINDE_CLIENT_ID"] == new_pair.0);
            ensure!(restored["KINDE_AUDIENCE"] == audience);
            Ok(())
        })
        .await
}

/// Key syntax is the schema's (the API server refuses it, naming the field); two keys with
/// one name need CEL, which v1.20 drops: the operator refuses it (`InvalidSpec`, naming
/// both fields) before any Kinde write.
async fn secret_keys_refused(ctx: Ctx) -> anyhow::Result<()> {
    start(ctx, "10m")
        .await?
        .run(|env| async move {
            let bad = json!({
                "apiVersion": "m2m.kinde-operator.io/v1alpha1", "kind": "M2MApplication",
                "metadata": {"name": "bad-key"},
                // Not expressible in the typed spec's meaning: a key the server must refuse.
                "spec": {"secret": {"keys": {"clientId": "client id"}}}
            });
            let err = env
                .ctx
                .kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &bad.to_string())
                .await?
                .failure()?;
            ensure!(err.contains("spec.secret.keys.clientId"), "{err}");

            let clash = M2MApplication::new(
                "clash",
                M2MApplicationSpec {
                    secret: SecretSpec {
                        keys: SecretKeys {
                            client_secret: Some("KINDE_CLIENT_ID".into()),
                            ..SecretKeys::default()
                        },
                        ..SecretSpec::default()
                    },
                    ..M2MApplicationSpec::default()
                },
            );
            env.create(clash).await?;
            let apps = env.ctx.api::<M2MApplication>();
            let refused = wait_reason(&apps, "clash", "InvalidSpec").await?;
            let message = refused.condition("Ready").context("Ready")?.message.clone();
            ensure!(
                message.contains("spec.secret.keys.clientSecret")
                    && message.contains("spec.secret.keys.clientId"),
                "{message}"
            );
            ensure!(
                env.emu.kinde_apps().await?.is_empty(),
                "a Kinde application was created"
            );
            ensure!(
                env.ctx
                    .api::<Secret>()
                    .get_opt("clash-credentials")
                    .await?
                    .is_none(),
                "a Secret was written"
            );
            Ok(())
        })
        .await
}

/// `spec.tokens.accessTokenLifetime` reaches Kinde (`updateApplicationTokens`), the
/// tokens issued with the Secret's credentials live that long, a change is applied, a
/// rotation's successor gets it before its credentials are in the Secret, and resyncs do
/// not repeat the call.
async fn access_token_lifetime(ctx: Ctx) -> anyhow::Result<()> {
    start(ctx, "2s")
        .await?
        .run(|env| async move {
            let audience = env.audience("billing");
            env.create(api_registration("billing", &audience).with_scopes(&["read:invoices"]))
                .await?;
            let mut app = M2MApplication::new("short", M2MApplicationSpec::default());
            app.spec.tokens = Some(TokensSpec {
                access_token_lifetime: Some("10m".into()),
            });
            env.create(app).await?;
            env.create(
                api_grant("short-billing", "short", "billing").with_scopes(&["read:invoices"]),
            )
            .await?;
            wait_reason(&env.ctx.api::<ApiGrant>(), "short-billing", "Reconciled").await?;
            let apps = env.ctx.api::<M2MApplication>();
            wait_reason(&apps, "short", "Reconciled").await?;
            let secrets = env.ctx.api::<Secret>();

            let lifetime = |creds: BTreeMap<String, String>| {
                let env = env.clone();
                let audience = audience.clone();
                async move {
                    let claims = env
                        .emu
                        .token_claims(
                            &creds["KINDE_CLIENT_ID"],
                            &creds["KINDE_CLIENT_SECRET"],
                            &audience,
                        )
                        .await?
                        .map_err(anyhow::Error::msg)?;
                    let exp = claims["exp"].as_i64().context("exp")?;
                    let iat = claims["iat"].as_i64().context("iat")?;
                    anyhow::Ok(exp - iat)
                }
            };
            let creds =
                wait_secret_key(&secrets, "short-credentials", "KINDE_AUDIENCE", Some("")).await?;
            ensure!(
                lifetime(creds.clone()).await? == 600,
                "tokens do not live 10m"
            );
            let calls = env.emu.call_count("updateApplicationTokens").await?;
            ensure!(calls == 1, "updateApplicationTokens called {calls} times");

            apps.patch(
                "short",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"tokens": {"accessTokenLifetime": "15m"}}})),
            )
            .await?;
            wait_for("the new lifetime in Kinde", WAIT, || async {
                let app = apps.get("short").await?;
                Ok(app
                    .status
                    .and_then(|s| s.applied_tokens)
                    .filter(|t| t.access_token_lifetime_seconds == 900)
                    .map(|_| ()))
            })
            .await?;
            ensure!(lifetime(creds.clone()).await? == 900);

            annotate(
                &apps,
                "short",
                &[(ROTATE_REQUESTED_AT_ANNOTATION, Some("rotate-1"))],
            )
            .await?;
            wait_rotated(&apps, "short", "rotate-1").await?;
            let rotated = wait_secret_key(
                &secrets,
                "short-credentials",
                "KINDE_CLIENT_ID",
                Some(&creds["KINDE_CLIENT_ID"]),
            )
            .await?;
            ensure!(lifetime(rotated).await? == 900, "the successor's tokens");

            // Resyncs every 2 s: the lifetime known to be in place is not sent again.
            let settled = env.emu.call_count("updateApplicationTokens").await?;
            let reads = env.emu.call_count("getApplication").await?;
            wait_for("three more resyncs", WAIT, || async {
                Ok((env.emu.call_count("getApplication").await? >= reads + 3).then_some(()))
            })
            .await?;
            let now = env.emu.call_count("updateApplicationTokens").await?;
            ensure!(
                now == settled,
                "resyncs sent updateApplicationTokens {} more times",
                now - settled
            );
            Ok(())
        })
        .await
}

/// The samples of `name` on `/metrics` whose labels include all of `labels`.
async fn samples(url: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Vec<f64>> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').context("metric line")?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            out.push(value.parse()?);
        }
    }
    Ok(out)
}

/// Per-object series exist while the object does (readiness, credential age, retiring)
/// and are gone once it is deleted; `build_info` is there; no series is labelled
/// `namespace`.
async fn metrics_series_end_with_the_object(ctx: Ctx) -> anyhow::Result<()> {
    start(ctx, "10m")
        .await?
        .run(|env| async move {
            let ns = env.ctx.ns.clone();
            env.create(api_registration("catalog", &env.audience("catalog")))
                .await?;
            env.create(M2MApplication::new(
                "metered",
                M2MApplicationSpec::default(),
            ))
            .await?;
            let apps = env.ctx.api::<M2MApplication>();
            wait_reason(&apps, "metered", "Reconciled").await?;
            wait_reason(&env.ctx.api::<ApiRegistration>(), "catalog", "Reconciled").await?;
            let of = |kind: &'static str, name: &'static str| {
                [
                    ("kind", kind),
                    ("object_namespace", ns.as_str()),
                    ("object_name", name),
                ]
            };
            let pfx = "kinde_m2m_operator_";
            let ready = samples(
                &env.metrics,
                &format!("{pfx}object_ready"),
                &of("M2MApplication", "metered"),
            )
            .await?;
            ensure!(ready == [1.0], "object_ready {ready:?}");
            let api_ready = samples(
                &env.metrics,
                &format!("{pfx}object_ready"),
                &of("ApiRegistration", "catalog"),
            )
            .await?;
            ensure!(api_ready == [1.0], "object_ready of the API {api_ready:?}");
            let issued = samples(
                &env.metrics,
                &format!("{pfx}credential_issued_timestamp_seconds"),
                &of("M2MApplication", "metered"),
            )
            .await?;
            let created = apps
                .get("metered")
                .await?
                .meta()
                .creation_timestamp
                .clone()
                .context("created")?;
            ensure!(
                issued == [created.0.as_second() as f64],
                "credential_issued {issued:?}"
            );
            let retiring = samples(
                &env.metrics,
                &format!("{pfx}retiring_credentials"),
                &of("M2MApplication", "metered"),
            )
            .await?;
            ensure!(retiring == [0.0], "retiring_credentials {retiring:?}");
            ensure!(
                !samples(&env.metrics, &format!("{pfx}build_info"), &[])
                    .await?
                    .is_empty(),
                "no build_info"
            );
            let text = reqwest::get(&env.metrics).await?.text().await?;
            ensure!(
                !text.contains("{namespace=") && !text.contains(",namespace="),
                "a series labelled namespace"
            );

            apps.delete("metered", &DeleteParams::default()).await?;
            env.ctx
                .api::<ApiRegistration>()
                .delete("catalog", &DeleteParams::default())
                .await?;
            wait_for("both objects gone", WAIT, || async {
                let gone = apps.get_opt("metered").await?.is_none()
                    && env
                        .ctx
                        .api::<ApiRegistration>()
                        .get_opt("catalog")
                        .await?
                        .is_none();
                Ok(gone.then_some(()))
            })
            .await?;
            // Finalizer removal is the operator's last act: its series are gone by then,
            // but the scrape may race the delete event; wait briefly rather than sleep.
            wait_for(
                "the deleted objects' series to go",
                Duration::from_secs(10),
                || async {
                    let text = reqwest::get(&env.metrics).await?.text().await?;
                    let left: Vec<&str> = text
                        .lines()
                        .filter(|l| l.contains(&format!("object_namespace=\"{ns}\"")))
                        .collect();
                    if left.is_empty() {
                        Ok(Some(()))
                    } else {
                        Ok(None)
                    }
                },
            )
            .await?;
            Ok(())
        })
        .await
}

/// `kinde-m2m-operator ARGS` against the run's control plane; `(success, stdout, stderr)`.
async fn cli(ctx: &Ctx, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(support::operator_bin())
        .args(args)
        .env("KUBECONFIG", &ctx.harness.control_plane.kubeconfig)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `rotate -l` rotates exactly the matching applications (and `--wait` returns once the
/// operator handled each); `rotate -A -l` finds them across namespaces; `status` shows
/// ids, Secret, retiring credentials and the Events.
async fn cli_rotate_selected_and_status(ctx: Ctx) -> anyhow::Result<()> {
    start(ctx, "10m")
        .await?
        .run(|env| async move {
            let ns = env.ctx.ns.clone();
            for (name, team) in [("alpha", "a"), ("beta", "a"), ("gamma", "b")] {
                let mut app = M2MApplication::new(name, M2MApplicationSpec::default());
                app.labels_mut().insert("team".into(), team.into());
                // Unique to this test, so `-A` cannot reach other tests' objects.
                app.labels_mut().insert("e2e-cli".into(), ns.clone());
                env.create(app).await?;
            }
            let apps = env.ctx.api::<M2MApplication>();
            for name in ["alpha", "beta", "gamma"] {
                wait_reason(&apps, name, "Reconciled").await?;
            }
            let (ok, stdout, stderr) = cli(
                &env.ctx,
                &[
                    "rotate",
                    "-n",
                    &ns,
                    "-l",
                    "team=a",
                    "--wait",
                    "--timeout",
                    "90s",
                ],
            )
            .await?;
            ensure!(ok, "rotate -l failed: {stderr}");
            for name in ["alpha", "beta"] {
                ensure!(
                    stdout.contains(&format!("rotated {ns}/{name}: client ID")),
                    "{stdout}"
                );
                let s = apps.get(name).await?.status.context("status")?;
                ensure!(s.retiring.len() == 1, "{name} has no predecessor retiring");
            }
            let gamma = apps.get("gamma").await?.status.context("status")?;
            ensure!(
                gamma.last_handled_rotate_request.is_none() && gamma.retiring.is_empty(),
                "gamma rotated"
            );

            let selector = format!("e2e-cli={ns},team=b");
            let (ok, stdout, stderr) = cli(&env.ctx, &["rotate", "-A", "-l", &selector]).await?;
            ensure!(ok, "rotate -A -l failed: {stderr}");
            ensure!(
                stdout.contains(&format!("rotation of {ns}/gamma requested")),
                "{stdout}"
            );
            ensure!(!stdout.contains("alpha"), "{stdout}");

            let (ok, _, stderr) =
                cli(&env.ctx, &["rotate", "-n", &ns, "-l", "team=nobody"]).await?;
            ensure!(
                !ok && stderr.contains("team=nobody"),
                "an empty selection: {stderr}"
            );
            let (ok, _, stderr) = cli(&env.ctx, &["rotate", "-A"]).await?;
            ensure!(!ok && stderr.contains("--all"), "-A alone: {stderr}");

            let alpha = apps.get("alpha").await?.status.context("status")?;
            let (ok, stdout, stderr) =
                cli(&env.ctx, &["status", "m2mapp", "alpha", "-n", &ns]).await?;
            ensure!(ok, "status failed: {stderr}");
            let retiring = &alpha.retiring[0];
            for want in [
                format!("M2MApplication {ns}/alpha"),
                format!(
                    "Kinde application: {}",
                    alpha.application_id.clone().unwrap_or_default()
                ),
                "Secret: alpha-credentials (exists)".to_owned(),
                format!("Retiring: client ID {}", retiring.client_id),
                "CredentialsRotated".to_owned(),
                "Ready    True".to_owned(),
            ] {
                ensure!(stdout.contains(&want), "{want:?} missing in:\n{stdout}");
            }
            let secret = data(&env.ctx.api::<Secret>().get("alpha-credentials").await?);
            ensure!(
                !stdout.contains(secret["KINDE_CLIENT_SECRET"].as_str()),
                "status printed the client secret"
            );
            let (ok, _, stderr) =
                cli(&env.ctx, &["status", "m2mapp", "nothing", "-n", &ns]).await?;
            ensure!(
                !ok && stderr.contains(&format!("M2MApplication {ns}/nothing")),
                "{stderr}"
            );
            Ok(())
        })
        .await
}
