//! Several Kinde businesses in one cluster: KindeConnection and ClusterKindeConnection,
//! each a second emulator of the test's own beside the operator's default one.

use anyhow::{Context as _, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kinde_m2m_operator::crd::{
    ApiGrant, ApiRegistration, ClusterKindeConnection, KindeConnection, M2MApplication,
};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::fixtures::{
    ApiFixture as _, AppFixture as _, GrantFixture as _, api_grant, api_registration,
    m2m_application,
};
use crate::support::{
    self, Ctx, E2eTest, Emulator, KINDE_CLIENT_ID, KINDE_CLIENT_SECRET, WAIT, wait_for, wait_reason,
};

pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test(
            "connections::two_businesses_in_one_cluster",
            two_businesses_in_one_cluster,
        ),
        support::test(
            "connections::cluster_connection_admits_selected_namespaces",
            cluster_connection_admits_selected_namespaces,
        ),
        support::test(
            "connections::management_secret_rotated_and_scopes_missing",
            management_secret_rotated_and_scopes_missing,
        ),
        support::test(
            "connections::a_slow_business_holds_only_its_own_slots",
            a_slow_business_holds_only_its_own_slots,
        ),
    ]
}

/// The emulators listen on loopback: the tenants' connections may name them.
const ALLOW_LOOPBACK: [&str; 2] = ["--kinde-connection-domain", "http://127.0.0.1:*"];

/// A Secret holding a management client ID and secret.
async fn management_secret(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    id: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let data = [("client-id", id), ("client-secret", secret)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&s))
        .await
        .context("applying the management Secret")?;
    Ok(())
}

/// A second business: an emulator of the test's own, and Secret `other-mgmt` in the test's
/// namespace with its management credentials.
async fn other_business(ctx: &Ctx) -> anyhow::Result<Emulator> {
    let other = ctx.own_emulator()?;
    management_secret(
        ctx,
        &ctx.ns,
        "other-mgmt",
        KINDE_CLIENT_ID,
        KINDE_CLIENT_SECRET,
    )
    .await?;
    Ok(other)
}

fn kinde_connection(name: &str, domain: &str, secret: &str) -> anyhow::Result<KindeConnection> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "m2m.kinde-operator.io/v1alpha1",
        "kind": "KindeConnection",
        "metadata": {"name": name},
        "spec": {"domain": domain, "credentials": {"name": secret}},
    }))?)
}

fn on(kind: &str, name: &str) -> serde_json::Value {
    json!({"kind": kind, "name": name})
}

fn app_on(name: &str, kind: &str, connection: &str) -> anyhow::Result<M2MApplication> {
    let mut app = m2m_application(name).with_display_name(name);
    app.spec.connection_ref = Some(serde_json::from_value(on(kind, connection))?);
    Ok(app)
}

fn api_on(
    name: &str,
    audience: &str,
    scopes: &[&str],
    kind: &str,
    connection: &str,
) -> anyhow::Result<ApiRegistration> {
    let mut api = api_registration(name, audience).with_scopes(scopes);
    api.spec.connection_ref = Some(serde_json::from_value(on(kind, connection))?);
    Ok(api)
}

fn grant(name: &str, app: &str, api: &str, scopes: &[&str]) -> ApiGrant {
    api_grant(name, app, api).with_scopes(scopes)
}

fn aud(ctx: &Ctx, what: &str) -> String {
    // The namespace's random tail keeps audiences of reruns apart (at most 64 characters).
    let tail = &ctx.ns[ctx.ns.len().saturating_sub(5)..];
    format!("https://{what}-{tail}.example.com")
}

/// The `createApplication` calls Kinde answered 429, counted for `connection`.
async fn refused_creates(metrics: &str, connection: &str) -> anyhow::Result<Option<f64>> {
    let labels = [
        ("connection", connection),
        ("operation", "createApplication"),
        ("status", "429"),
    ];
    support::metric(metrics, "kinde_m2m_operator_kinde_requests_total", &labels).await
}

/// The client IDs of the applications a business holds.
async fn client_ids(emulator: &Emulator) -> anyhow::Result<Vec<String>> {
    Ok(emulator
        .kinde_apps()
        .await?
        .iter()
        // The emulator, as Kinde, gives an M2M application its client ID as its id.
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect())
}

/// Two businesses: the operator's own (flags) and one through a KindeConnection. Each
/// object lands in its business, tokens work against its domain, a grant across the two is
/// refused, an edit of the reference is refused, and a business answering 429 to every
/// create does not hold up the other one.
async fn two_businesses_in_one_cluster(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let default_business = ctx.own_emulator()?;
    let listen = format!("127.0.0.1:{}", support::free_port()?);
    let metrics = format!("http://{listen}/metrics");
    let operator =
        ctx.run_operator_listening(&default_business, &listen, &[], "10m", &ALLOW_LOOPBACK)?;
    let other = other_business(&ctx).await?;
    let (aud_a, aud_b) = (aud(&ctx, "a"), aud(&ctx, "b"));
    const KC: &str = "KindeConnection";
    ctx.apply(&[
        &kinde_connection("other", &other.url, "other-mgmt")?,
        &api_registration("api-a", &aud_a).with_scopes(&["read"]),
        &m2m_application("app-a").with_display_name("app-a"),
        &grant("grant-a", "app-a", "api-a", &["read"]),
        &api_on("api-b", &aud_b, &["read", "write"], KC, "other")?,
        &app_on("app-b", KC, "other")?,
        &grant("grant-b", "app-b", "api-b", &["write"]),
        &grant("across", "app-a", "api-b", &["read"]),
    ])
    .await?;
    let r = async {
        let conn = wait_reason(&ctx.api::<KindeConnection>(), "other", "Connected").await?;
        let status = conn.status.clone().unwrap_or_default();
        ensure!(
            status.management_api_id.is_some() && status.rate.is_some(),
            "connection status: {status:?}"
        );
        wait_reason(&ctx.api::<ApiGrant>(), "grant-a", "Reconciled").await?;
        wait_reason(&ctx.api::<ApiGrant>(), "grant-b", "Reconciled").await?;
        let across = wait_reason(&ctx.api::<ApiGrant>(), "across", "ConnectionMismatch").await?;
        let message = across.status.unwrap_or_default().conditions[0]
            .message
            .clone();
        ensure!(message.contains("KindeConnection/other"), "{message}");

        // Each application and API is in its own business, and its Secret says where.
        let (a, b) = (
            ctx.credentials("app-a").await?,
            ctx.credentials("app-b").await?,
        );
        let (in_default, in_other) = (
            client_ids(&default_business).await?,
            client_ids(&other).await?,
        );
        ensure!(
            in_default.contains(&a.client_id) && !in_default.contains(&b.client_id),
            "default business holds {in_default:?}"
        );
        ensure!(
            in_other.contains(&b.client_id) && !in_other.contains(&a.client_id),
            "other business holds {in_other:?}"
        );
        ensure!(
            !other.state().await?.to_string().contains(&aud_a)
                && !default_business.state().await?.to_string().contains(&aud_b),
            "an API landed in the wrong business"
        );
        let secret_b = ctx
            .api::<Secret>()
            .get(
                &ctx.api::<M2MApplication>()
                    .get("app-b")
                    .await?
                    .status
                    .unwrap_or_default()
                    .secret_name
                    .unwrap_or_default(),
            )
            .await?;
        let domain_b = secret_b
            .data
            .unwrap_or_default()
            .get("KINDE_DOMAIN")
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default();
        ensure!(
            domain_b.trim_end_matches('/') == other.url.trim_end_matches('/'),
            "app-b's Secret names {domain_b}"
        );
        other.wait_scp(&b, &aud_b, &["write"]).await?;
        default_business.wait_scp(&a, &aud_a, &["read"]).await?;
        let app_b = ctx.api::<M2MApplication>().get("app-b").await?;
        ensure!(
            app_b.status.unwrap_or_default().connection.as_deref() == Some("KindeConnection/other"),
            "app-b's status.connection"
        );

        // The reference is fixed once the Kinde object exists.
        support::merge_patch(
            &ctx.api::<M2MApplication>(),
            "app-b",
            json!({"spec": {"connectionRef": null}}),
        )
        .await?;
        wait_reason(&ctx.api::<M2MApplication>(), "app-b", "ConnectionChanged").await?;
        ensure!(
            client_ids(&default_business).await?.len() == in_default.len(),
            "the edit created an application in the default business"
        );
        support::merge_patch(
            &ctx.api::<M2MApplication>(),
            "app-b",
            json!({"spec": {"connectionRef": on(KC, "other")}}),
        )
        .await?;
        wait_reason(&ctx.api::<M2MApplication>(), "app-b", "Reconciled").await?;

        // The other business answers every create with 429 and a reset far away: its
        // application waits, the default business's goes ahead.
        other
            .fault(json!({
                "operation": "createApplication",
                "status": 429,
                "times": 10000,
                "headers": {"RateLimit-Reset": "3600"},
            }))
            .await?;
        ctx.apply(&[&app_on("app-b2", KC, "other")?]).await?;
        wait_for("app-b2 throttled", WAIT, || async {
            Ok(
                (other.call_count("createApplication").await? > in_other.len() as u64)
                    .then_some(()),
            )
        })
        .await?;
        ctx.apply(&[&m2m_application("app-a2").with_display_name("app-a2")])
            .await?;
        wait_reason(&ctx.api::<M2MApplication>(), "app-a2", "Reconciled").await?;
        let b2 = ctx.api::<M2MApplication>().get("app-b2").await?;
        ensure!(
            b2.status
                .as_ref()
                .and_then(|s| s.client_id.as_ref())
                .is_none(),
            "app-b2 was created despite the 429s: {:?}",
            b2.status
        );

        // The metrics tell the businesses apart: the 429s are the other one's.
        let other_label = format!("KindeConnection/{}/other", ctx.ns);
        ensure!(
            refused_creates(&metrics, &other_label)
                .await?
                .unwrap_or(0.0)
                >= 1.0,
            "no 429 counted for {other_label}"
        );
        ensure!(
            refused_creates(&metrics, "default").await?.is_none(),
            "429s counted for the default business"
        );
        ensure!(
            support::metric(
                &metrics,
                "kinde_m2m_operator_kinde_requests_total",
                &[("connection", "default")]
            )
            .await?
            .unwrap_or(0.0)
                >= 1.0,
            "no calls counted for the default business"
        );
        Ok(())
    }
    .await;
    operator.with_log(r)
}

/// A ClusterKindeConnection admits the namespaces its selector picks: an object elsewhere is
/// refused (`ConnectionNotPermitted`). Its deletion waits while an object uses it, naming
/// it, and goes once that object is gone.
async fn cluster_connection_admits_selected_namespaces(ctx: Ctx) -> anyhow::Result<()> {
    let admitted = ctx.extra_namespace(&[("e2e-business", "other")]).await?;
    // Every operator of the run sees this cluster-scoped connection; this one holds it
    // under its own installation's finalizer, as a second installation in a cluster would.
    let installation = format!("conn-{}", &ctx.ns[ctx.ns.len().saturating_sub(5)..]);
    let (_default_business, operator) = ctx
        .own_emulator_and_operator(&[&admitted], "10m", &["--installation-id", &installation])
        .await?;
    let other = other_business(&ctx).await?;
    let name = format!("other-{}", ctx.ns);
    let cluster: Api<ClusterKindeConnection> = Api::all(ctx.client.clone());
    let connection: ClusterKindeConnection = serde_json::from_value(json!({
        "apiVersion": "m2m.kinde-operator.io/v1alpha1",
        "kind": "ClusterKindeConnection",
        "metadata": {"name": name},
        "spec": {
            "domain": other.url,
            "credentials": {"name": "other-mgmt", "namespace": ctx.ns},
            "namespaceSelector": {"matchLabels": {"e2e-business": "other"}},
        },
    }))?;
    cluster.create(&PostParams::default(), &connection).await?;
    const CKC: &str = "ClusterKindeConnection";
    let held_by = || async { anyhow::Ok(cluster.get(&name).await?.finalizers().to_vec()) };
    let r = async {
        // Every operator of the run sees it, and none holds it while no object of its
        // own uses it (an installation that never uses a connection, or was uninstalled,
        // must not keep it from being deleted).
        wait_for("the connection Ready", WAIT, || async {
            Ok(support::cluster_connection_ready(&cluster, &name)
                .await?
                .is_some_and(|c| c.status == "True")
                .then_some(()))
        })
        .await?;
        let unused = held_by().await?;
        ensure!(unused.is_empty(), "an unused connection is held by {unused:?}");
        ctx.apply_in(&admitted, &[&app_on("tenant", CKC, &name)?])
            .await?;
        ctx.apply(&[&app_on("outsider", CKC, &name)?]).await?;
        let in_admitted: Api<M2MApplication> = ctx.api_in(&admitted);
        wait_reason(&in_admitted, "tenant", "Reconciled").await?;
        let used = held_by().await?;
        ensure!(
            used == [format!("m2m.kinde-operator.io/{installation}")],
            "the connection is held by {used:?}: only the installation whose objects use it may hold it"
        );
        let tenant = support::credentials(&ctx.api_in(&admitted), "tenant-credentials").await?;
        ensure!(
            client_ids(&other).await?.contains(&tenant.client_id),
            "the tenant's application is not in the connection's business"
        );
        let outsider = wait_reason(
            &ctx.api::<M2MApplication>(),
            "outsider",
            "ConnectionNotPermitted",
        )
        .await?;
        ensure!(
            outsider.status.unwrap_or_default().client_id.is_none(),
            "the outsider got an application"
        );

        cluster.delete(&name, &DeleteParams::default()).await?;
        wait_for(
            "the connection's deletion waits, naming its user",
            WAIT,
            || async {
                Ok(support::cluster_connection_ready(&cluster, &name)
                    .await?
                    .is_some_and(|c| c.reason == "InUse" && c.message.contains("tenant"))
                    .then_some(()))
            },
        )
        .await?;
        support::delete(&in_admitted, "tenant").await?;
        support::wait_gone(&in_admitted, "tenant").await?;
        wait_for("the connection gone", WAIT, || async {
            Ok(cluster.get_opt(&name).await?.is_none().then_some(()))
        })
        .await?;
        Ok(())
    }
    .await;
    let _ = cluster.delete(&name, &DeleteParams::default()).await;
    operator.with_log(r)
}

/// A connection whose management application lacks a scope says which; once granted it
/// turns Ready. Its management secret rotated in Kinde (the old one dead, every token
/// revoked) and in its Secret: the connection keeps working with the new one.
async fn management_secret_rotated_and_scopes_missing(ctx: Ctx) -> anyhow::Result<()> {
    let (_default_business, operator) = ctx
        .own_emulator_and_operator(&[], "10m", &ALLOW_LOOPBACK)
        .await?;
    let other = other_business(&ctx).await?;
    let all = other
        .control(reqwest::Method::GET, "management-client/scopes", None)
        .await?["scopes"]
        .clone();
    let without_create: Vec<&str> = all
        .as_array()
        .context("scopes")?
        .iter()
        .filter_map(|s| s.as_str())
        .filter(|s| *s != "create:applications")
        .collect();
    other
        .control(
            reqwest::Method::PUT,
            "management-client/scopes",
            Some(json!({"scopes": without_create})),
        )
        .await?;
    ctx.apply(&[&kinde_connection("other", &other.url, "other-mgmt")?])
        .await?;
    let connections = ctx.api::<KindeConnection>();
    let r = async {
        let c = wait_reason(&connections, "other", "MissingScopes").await?;
        ensure!(
            c.status.unwrap_or_default().missing_scopes == ["create:applications"],
            "missingScopes"
        );
        ctx.apply(&[&app_on("waits", "KindeConnection", "other")?])
            .await?;
        wait_reason(&ctx.api::<M2MApplication>(), "waits", "ConnectionNotReady").await?;
        other
            .control(
                reqwest::Method::PUT,
                "management-client/scopes",
                Some(json!({"scopes": all})),
            )
            .await?;
        wait_reason(&connections, "other", "Connected").await?;
        wait_reason(&ctx.api::<M2MApplication>(), "waits", "Reconciled").await?;

        // Rotate the management secret: the old one stops working at once.
        let rotated = other
            .control(
                reqwest::Method::POST,
                &format!("applications/{KINDE_CLIENT_ID}/rotate-secret"),
                Some(json!({"retain_old": false})),
            )
            .await?;
        let new_secret = rotated["client_secret"]
            .as_str()
            .context("new secret")?
            .to_owned();
        other
            .control(reqwest::Method::POST, "tokens/revoke", None)
            .await?;
        management_secret(&ctx, &ctx.ns, "other-mgmt", KINDE_CLIENT_ID, &new_secret).await?;
        let version = ctx
            .api::<Secret>()
            .get("other-mgmt")
            .await?
            .resource_version();
        wait_for("the connection read the rotated Secret", WAIT, || async {
            let c = connections.get("other").await?;
            let s = c.status.unwrap_or_default();
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok((ready && s.credentials_version == version).then_some(()))
        })
        .await?;
        ctx.apply(&[&app_on("after", "KindeConnection", "other")?])
            .await?;
        wait_reason(&ctx.api::<M2MApplication>(), "after", "Reconciled").await?;
        let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
        ensure!(
            !log.contains(&new_secret) && !log.contains(KINDE_CLIENT_SECRET),
            "a management secret is in the operator's log"
        );
        Ok(())
    }
    .await;
    operator.with_log(r)
}

/// A business whose calls wait (here a tenant's connection paced at 0.1 calls a second,
/// its objects queued behind each other) fills only its own reconcile slots: with one slot
/// per kind (`--max-concurrent-reconciles 1`), an application of the default business
/// still converges while the slow business's applications wait for their turn.
async fn a_slow_business_holds_only_its_own_slots(ctx: Ctx) -> anyhow::Result<()> {
    ctx.harness.ensure_crds().await?;
    let default_business = ctx.own_emulator()?;
    let mut args = ALLOW_LOOPBACK.to_vec();
    args.extend(["--max-concurrent-reconciles", "1"]);
    let operator = ctx.run_operator(&default_business, &[], "10m", &args)?;
    let slow = other_business(&ctx).await?;
    let mut connection = kinde_connection("slow", &slow.url, "other-mgmt")?;
    connection.spec.business.client = Some(serde_json::from_value(
        json!({"requestsPerSecond": 0.1, "maxInFlight": 1}),
    )?);
    ctx.apply(&[&connection]).await?;
    let r = async {
        wait_reason(&ctx.api::<KindeConnection>(), "slow", "Connected").await?;
        const SLOW: [&str; 3] = ["slow-1", "slow-2", "slow-3"];
        for name in SLOW {
            ctx.apply(&[&app_on(name, "KindeConnection", "slow")?]).await?;
        }
        // One of them is at work in the slow business (its one slot taken, each of its
        // calls ten seconds apart), the others queued behind it.
        wait_for("a create in the slow business", WAIT, || async {
            Ok((slow.call_count("createApplication").await? >= 1).then_some(()))
        })
        .await?;

        ctx.apply(&[&m2m_application("fast").with_display_name("fast")])
            .await?;
        wait_reason(&ctx.api::<M2MApplication>(), "fast", "Reconciled").await?;
        let mut waiting = Vec::new();
        for name in SLOW {
            let app = ctx.api::<M2MApplication>().get(name).await?;
            if app.status.and_then(|s| s.client_id).is_none() {
                waiting.push(name);
            }
        }
        ensure!(
            !waiting.is_empty(),
            "every slow application was done before the fast one: the test proved nothing"
        );
        eprintln!(
            "slow business: {} of {} applications still waiting when the default business's was Ready",
            waiting.len(),
            SLOW.len()
        );
        Ok(())
    }
    .await;
    operator.with_log(r)
}
