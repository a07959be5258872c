//! `kinde-m2m-operator run`: configuration, start-up checks, leader election, the HTTP
//! endpoints and graceful shutdown around the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args};
use futures::FutureExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use url::Url;

use crate::adoption::{AdoptionArgs, AdoptionPolicy};
use crate::controller::kernel::events::Events;
use crate::controller::{self, Scope, Settings};
use crate::crd::{ApiGrant, ApiRegistration, M2MApplication};
use crate::http;
use crate::kinde::{KindeClient, KindeConfig, KindeMetrics, WriteFence};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

/// A share between 0 and 1.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a share between 0 and 1 (such as 0.5)"
        )),
    }
}

/// How to reach Kinde. Every flag has an environment fallback; the secret's value is never
/// shown in `--help` or logs.
#[derive(Args, Debug, Clone)]
pub struct KindeArgs {
    /// Kinde domain: `https://<business>.kinde.com` or your custom domain.
    #[arg(long, env = "KINDE_M2M_DOMAIN")]
    pub kinde_domain: Option<Url>,
    /// Client ID of the operator's own Kinde M2M application (authorized for the Kinde
    /// Management API with the scopes listed in the README).
    #[arg(long, env = "KINDE_M2M_CLIENT_ID")]
    pub kinde_client_id: Option<String>,
    /// Client secret of that application.
    #[arg(long, env = "KINDE_M2M_CLIENT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub kinde_client_secret: Option<SecretString>,
    /// Process-wide Kinde request rate (requests per second; 0 = unlimited).
    #[arg(long, env = "KINDE_M2M_REQUESTS_PER_SECOND", default_value_t = 10.0)]
    pub kinde_requests_per_second: f64,
    /// Requests allowed in a burst above the rate (1: none; a burst on top of a rate Kinde
    /// already holds us to comes back as 429s).
    #[arg(long, env = "KINDE_M2M_BURST", default_value_t = 1)]
    pub kinde_burst: u32,
    /// Kinde calls in flight at once, process-wide.
    #[arg(long, env = "KINDE_M2M_MAX_IN_FLIGHT", default_value_t = 4)]
    pub kinde_max_in_flight: usize,
    /// Timeout of one Kinde request.
    #[arg(long, env = "KINDE_M2M_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub kinde_timeout: Duration,
}

impl KindeArgs {
    /// The client configuration; names the missing flag when something is absent.
    pub fn config(&self) -> anyhow::Result<KindeConfig> {
        let domain = self
            .kinde_domain
            .clone()
            .context("--kinde-domain (env KINDE_M2M_DOMAIN, or KINDE_DOMAIN) is required")?;
        let id = self.kinde_client_id.clone().context(
            "--kinde-client-id (env KINDE_M2M_CLIENT_ID, or KINDE_CLIENT_ID) is required",
        )?;
        let secret = self
            .kinde_client_secret
            .clone()
            .context("--kinde-client-secret (env KINDE_M2M_CLIENT_SECRET, or KINDE_CLIENT_SECRET) is required")?;
        let mut config = KindeConfig::new(domain, id, secret);
        config.requests_per_second = self.kinde_requests_per_second;
        config.burst = self.kinde_burst;
        config.max_in_flight = self.kinde_max_in_flight;
        config.request_timeout = self.kinde_timeout;
        Ok(config)
    }
}

/// Options of `kinde-m2m-operator run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub kinde: KindeArgs,
    #[command(flatten)]
    pub adoption: AdoptionArgs,
    /// Start the embedded Kinde emulator and use it instead of Kinde (local trial, demos).
    #[arg(long, env = "KINDE_M2M_EMULATOR")]
    pub kinde_emulator: bool,
    /// Where the embedded emulator listens (with --kinde-emulator).
    #[arg(
        long,
        env = "KINDE_M2M_EMULATOR_LISTEN",
        default_value = "127.0.0.1:8787"
    )]
    pub kinde_emulator_listen: SocketAddr,
    /// Namespace to watch; repeat for several. Default: all namespaces.
    #[arg(
        long = "namespace",
        env = "KINDE_M2M_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Period of the drift-detecting resync of every object (each object at its own slot of
    /// the period, so the reads spread evenly).
    #[arg(long, env = "KINDE_M2M_RESYNC_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_period: Duration,
    /// This installation's id (a DNS label), part of the owner key the operator records on
    /// each Kinde application (`kmo/<installation>/<namespace>/<name>`): the same id after a
    /// cluster rebuild finds the same applications; two clusters or installations sharing
    /// a Kinde business need different ids (see the README).
    #[arg(long, env = "KINDE_M2M_INSTALLATION_ID", default_value = crate::identity::DEFAULT_INSTALLATION, value_parser = crate::identity::parse_installation)]
    pub installation_id: String,
    /// Domains a namespaced KindeConnection may name (repeatable; one `*` stands for any
    /// host part). ClusterKindeConnections, made by cluster admins, may name any.
    #[arg(
        long = "kinde-connection-domain",
        env = "KINDE_M2M_CONNECTION_DOMAINS",
        value_delimiter = ',',
        default_value = "https://*.kinde.com"
    )]
    pub kinde_connection_domains: Vec<String>,
    /// Reconciles of one kind running at once in one Kinde business (each connection has
    /// its own; times the `--namespace` slots). Bounded so that a fleet applied at once
    /// does not queue a thousand reconciles at the Kinde rate limiter, where an API's few
    /// calls would wait behind every application's (at 1,000 customers the grants waited
    /// minutes for their API); 16 keeps the Kinde rate busy.
    #[arg(long, env = "KINDE_M2M_MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Share (0 to 1) of `--kinde-requests-per-second` the resync's drift reads may take:
    /// the period stretches when a fleet's reads would need more (see the README's
    /// sizing). 0 keeps the period as configured.
    #[arg(long, env = "KINDE_M2M_RESYNC_READ_SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub resync_read_share: f64,
    /// Shortest `spec.rotation.every` accepted (each scheduled rotation mints a new
    /// authorized Kinde application; the interval must also be at least twice the overlap).
    #[arg(long, env = "KINDE_M2M_MIN_ROTATION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub min_rotation_interval: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KINDE_M2M_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Elect a leader on a Lease so several replicas can run safely.
    #[arg(long, env = "KINDE_M2M_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "KINDE_M2M_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "KINDE_M2M_LEASE_NAME",
        default_value = "kinde-m2m-operator"
    )]
    pub lease_name: String,
    /// How long a Lease holds without renewal before a standby may take it (client-go's
    /// default). Must exceed the renew deadline, which must exceed the retry period.
    #[arg(long, env = "KINDE_M2M_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops reconciling.
    #[arg(long, env = "KINDE_M2M_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_deadline: Duration,
    /// How often candidates try to acquire or renew the Lease.
    #[arg(long, env = "KINDE_M2M_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_period: Duration,
}

/// The Lease timings of the command line.
#[derive(Debug, Clone, Copy)]
struct LeaseTimings {
    duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}

/// Fails early with a clear message when the CRDs are not installed or not readable
/// (listing where the operator will watch: with `--namespace`, RBAC may be per namespace).
async fn check_crds(client: &kube::Client, scope: &Scope) -> anyhow::Result<()> {
    async fn check<K>(client: &kube::Client, scope: &Scope) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let lp = ListParams::default().limit(1);
        let apis: Vec<Api<K>> = match scope {
            Scope::All => vec![Api::all(client.clone())],
            Scope::Namespaces(ns) => ns
                .iter()
                .map(|n| Api::namespaced(client.clone(), n))
                .collect(),
        };
        for api in apis {
            api.list(&lp).await.with_context(|| {
                format!(
                    "{} not queryable: are the CRDs in crds/ installed, and may the operator list them?",
                    K::kind(&())
                )
            })?;
        }
        Ok(())
    }
    check::<ApiRegistration>(client, scope).await?;
    check::<M2MApplication>(client, scope).await?;
    check::<ApiGrant>(client, scope).await
}

/// How long the API server may keep a watch open without sending anything: kube-runtime's
/// watcher asks for `timeoutSeconds=290`, after which the server ends the watch.
const WATCH_SERVER_TIMEOUT: Duration = Duration::from_secs(290);

/// Timeouts of the controllers' client. The read timeout must not cut healthy watches,
/// which may stay silent until the server ends them: it sits above the watch timeout, so
/// it only ends requests (and watches) whose connection went dead. Counting from the
/// write of each request (`reset_reader_on_write`) keeps a pooled connection's idle
/// time out of it.
fn controller_timeouts(config: &mut kube::Config) {
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(WATCH_SERVER_TIMEOUT + Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    config.reset_reader_on_write = true;
}

/// Timeouts of the leader elector's own client (its own connection pool, so its requests
/// never queue behind the controllers'): it makes short requests only, each also bounded
/// by `request_timeout` in [`LeaderElector`].
fn elector_timeouts(config: &mut kube::Config, request_timeout: Duration) {
    config.connect_timeout = Some(request_timeout);
    config.read_timeout = Some(request_timeout);
    config.write_timeout = Some(request_timeout);
    config.reset_reader_on_write = true;
}

/// Lease timing (client-go's defaults unless the flags say otherwise). The margin between
/// the renew deadline and the lease duration is the time by which the old leader has exited
/// before a standby takes over; `LeaseConfig::validate` refuses timings without it.
fn lease_config(namespace: String, name: String, identity: String, t: LeaseTimings) -> LeaseConfig {
    LeaseConfig {
        namespace,
        name,
        identity,
        lease_duration: t.duration,
        renew_deadline: t.renew_deadline,
        retry_period: t.retry_period,
        request_timeout: Duration::from_secs(5).min(t.renew_deadline / 2),
    }
}

/// Exit status after losing leadership (distinct from start-up failures, for alerting).
pub const EXIT_LOST_LEADERSHIP: i32 = 3;

/// Runs the operator until SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut kinde_config = args.kinde.config()?;
    let adoption = AdoptionPolicy::from_args(&args.adoption)?;
    let mut kube_config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (KUBECONFIG or in-cluster)")?;
    // Named in the API server's audit log and in its metrics, as every well-behaved
    // controller is (kube-rs sends no User-Agent of its own).
    kube_config.headers.push((
        reqwest::header::USER_AGENT,
        reqwest::header::HeaderValue::from_static(concat!(
            "kinde-m2m-operator/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    let mut controller_config = kube_config.clone();
    controller_timeouts(&mut controller_config);
    let client =
        kube::Client::try_from(controller_config).context("building the Kubernetes client")?;

    // With leader election, Kinde writes are allowed only inside a won term (see
    // `kinde::WriteFence`): closed until the Lease is held.
    let fence = Arc::new(if args.leader_election {
        WriteFence::closed()
    } else {
        WriteFence::open()
    });
    kinde_config.write_fence = fence.clone();
    let mut registry = Registry::with_prefix("kinde_m2m_operator");
    let kinde_metrics = KindeMetrics::register(&mut registry);
    let metrics = Metrics::register(&mut registry);
    let kinde = KindeClient::new(kinde_config, kinde_metrics)?;
    let state = http::State::new(registry);

    let shutdown = shutdown_signal().shared();
    let server = tokio::spawn(http::serve(args.listen, state.clone(), shutdown.clone()));

    let scope = if args.namespaces.is_empty() {
        Scope::All
    } else {
        Scope::Namespaces(args.namespaces.clone())
    };
    check_crds(&client, &scope).await?;
    state.set_ready(true);

    let identity = format!(
        "{}-{:08x}",
        std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "kinde-m2m-operator".into()),
        fastrand::u32(..)
    );
    let elector = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let timings = LeaseTimings {
            duration: args.lease_duration,
            renew_deadline: args.lease_renew_deadline,
            retry_period: args.lease_retry_period,
        };
        let lease = lease_config(
            namespace,
            args.lease_name.clone(),
            identity.clone(),
            timings,
        );
        lease
            .validate()
            .map_err(|e| {
                anyhow::anyhow!(
                    "leader election (--lease-duration, --lease-renew-deadline, --lease-retry-period): {e}"
                )
            })?;
        let mut config = kube_config.clone();
        elector_timeouts(&mut config, lease.request_timeout);
        let client = kube::Client::try_from(config)
            .context("building the leader election's Kubernetes client")?;
        Some(LeaderElector::new(client, lease).with_fence(fence.clone()))
    } else {
        None
    };
    let mut elected_at = None;
    if let Some(e) = &elector {
        tokio::select! {
            at = e.acquire() => elected_at = Some(at),
            () = shutdown.clone() => return finish_server(server).await,
        }
        state.set_ready(false);
    }

    tracing::info!(?scope, resync = ?args.resync_period, domain = %kinde.domain(), "starting controllers");
    let settings = Settings {
        events: Events::new(
            client.clone(),
            Reporter {
                controller: "kinde-m2m-operator".into(),
                instance: Some(identity),
            },
        ),
        client,
        kinde,
        metrics,
        scope,
        resync: args.resync_period,
        resync_read_share: args.resync_read_share,
        adoption,
        min_rotation_every: args.min_rotation_interval,
        installation: args.installation_id.clone(),
        connection_domains: args.kinde_connection_domains.clone(),
        max_concurrent_reconciles: args.max_concurrent_reconciles,
    };
    let ready_state = state.clone();
    let controllers = controller::run(
        settings,
        move || ready_state.set_ready(true),
        shutdown.clone(),
    );
    let lost = async {
        match (&elector, elected_at) {
            (Some(e), Some(at)) => e.keep(at).await,
            _ => futures::future::pending().await,
        }
    };
    tokio::select! {
        // The elector first: each time this task wakes, a passed deadline wins over more
        // controller work.
        biased;
        lost = lost => {
            // Fencing: Kinde has no fencing token, so the only guarantee that nothing of
            // this process writes to Kinde once a standby may have taken over is that the
            // process is gone by then. Exiting right here, before the Lease could be
            // taken (renew deadline < lease duration), ends every task at once, detached
            // ones included; no release (the Lease is not ours to give, and the API
            // server may be unreachable), no draining.
            tracing::error!(reason = %lost, "lost leadership: stepping down, exiting now");
            std::process::exit(EXIT_LOST_LEADERSHIP);
        }
        () = controllers => {}
    }
    if let Some(e) = &elector {
        e.release().await;
    }
    finish_server(server).await
}

async fn finish_server(server: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    server.await.context("HTTP server task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> kube::Config {
        kube::Config::new("https://127.0.0.1:6443".parse().expect("a URL"))
    }

    #[test]
    fn the_controllers_read_timeout_spares_silent_watches() {
        let mut c = config();
        controller_timeouts(&mut c);
        let read = c.read_timeout.expect("a read timeout");
        assert!(read > WATCH_SERVER_TIMEOUT, "{read:?}");
        assert!(c.reset_reader_on_write);
        assert!(c.connect_timeout.is_some() && c.write_timeout.is_some());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn client_go_timings() -> LeaseTimings {
        LeaseTimings {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn lease_flags_are_used_and_refused_when_they_leave_no_margin() {
        use clap::Parser as _;
        let args = Cli::try_parse_from([
            "x",
            "--lease-duration",
            "30s",
            "--lease-renew-deadline",
            "20s",
            "--lease-retry-period",
            "4s",
        ])
        .expect("parses")
        .run;
        let t = LeaseTimings {
            duration: args.lease_duration,
            renew_deadline: args.lease_renew_deadline,
            retry_period: args.lease_retry_period,
        };
        let lease = lease_config("ns".into(), "l".into(), "me".into(), t);
        assert_eq!(lease.lease_duration, Duration::from_secs(30));
        assert_eq!(lease.validate(), Ok(()));
        let tight = LeaseTimings {
            renew_deadline: Duration::from_secs(29),
            ..t
        };
        assert!(
            lease_config("ns".into(), "l".into(), "me".into(), tight)
                .validate()
                .is_err()
        );
        // A short renew deadline shortens the requests' timeout with it.
        let quick = LeaseTimings {
            duration: Duration::from_secs(6),
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
        };
        assert_eq!(
            lease_config("ns".into(), "l".into(), "me".into(), quick).validate(),
            Ok(())
        );
    }

    #[test]
    fn the_elector_client_gives_up_within_the_request_timeout() {
        let lease = lease_config(
            "ns".into(),
            "lease".into(),
            "me".into(),
            client_go_timings(),
        );
        assert_eq!(lease.validate(), Ok(()));
        let mut c = config();
        elector_timeouts(&mut c, lease.request_timeout);
        for t in [c.connect_timeout, c.read_timeout, c.write_timeout] {
            assert_eq!(t, Some(lease.request_timeout));
        }
        assert!(c.reset_reader_on_write);
    }
}
