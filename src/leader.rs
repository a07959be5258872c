//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and
//! exactly one reconciles (two writers would race on Kinde creates).
//!
//! The client-go protocol, with its safety argument spelled out because Kinde offers no
//! fencing token: once a write has reached Kinde nothing can undo it, so the only defence
//! is that a replica stops writing *before* any other replica can believe the Lease free.
//!
//! - A candidate never compares the holder's `renewTime` (written with the holder's clock)
//!   with its own clock. It remembers the record it saw (holder, renewTime, duration,
//!   resourceVersion) and the instant *of its own monotonic clock* at which it first saw
//!   that record; the Lease is expired only when the record stayed unchanged for
//!   `lease_duration` of local time. Clock skew between nodes is irrelevant; only the
//!   rates of the clocks matter.
//! - The leader steps down at `renew_deadline` after the *start* of its last successful
//!   renewal, on a timer that does not wait for any request (a request to a frozen API
//!   server may hang). Every API call has a deadline as well, so the loop keeps trying.
//! - Ordering: a renewal's write happens after the renewal started; a standby first sees
//!   the renewed record after that write, and takes over `lease_duration` later. So the
//!   standby takes over no earlier than `start + lease_duration`, while the old leader has
//!   stopped at `start + renew_deadline`, with `renew_deadline < lease_duration`.
//! - Stopping means exiting the process (see `run.rs`): no task, however detached, can
//!   write after that.
//!
//! Updates use the Lease's resourceVersion, so two candidates can never both win one
//! round. On graceful shutdown the Lease is released for a fast hand-over.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use crate::kinde::WriteFence;

/// Timing of the election, as in client-go's defaults.
#[derive(Clone, Debug)]
pub(crate) struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name + a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// Deadline of each API call of the elector.
    pub request_timeout: Duration,
}

impl LeaseConfig {
    /// Refuses timings under which a leader could still be working when a standby takes
    /// over. The margin covers the two clocks running at slightly different rates and the
    /// time the process needs to exit.
    pub fn validate(&self) -> Result<(), String> {
        let margin = self.lease_duration.checked_sub(self.renew_deadline);
        match margin {
            Some(m) if m >= Duration::from_secs(2) => {}
            _ => {
                return Err(format!(
                    "the renew deadline ({:?}) must be at least 2s shorter than the lease duration ({:?})",
                    self.renew_deadline, self.lease_duration
                ));
            }
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be positive and shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.request_timeout.is_zero() || self.request_timeout > self.renew_deadline {
            return Err(format!(
                "the request timeout ({:?}) must be positive and at most the renew deadline ({:?})",
                self.request_timeout, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// Why a leader stopped being one.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded within the renew deadline.
    DeadlinePassed,
    /// Another replica holds the Lease.
    TakenBy(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DeadlinePassed => {
                f.write_str("the leader Lease was not renewed within the renew deadline")
            }
            Self::TakenBy(holder) => write!(f, "the leader Lease is held by {holder}"),
        }
    }
}

/// Outcome of one try to take or keep the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    Held,
    HeldByOther(String),
}

/// The parts of a Lease whose change proves its holder alive (client-go compares the whole
/// record; the resourceVersion changes on any write).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    lease_duration_seconds: Option<i32>,
    resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// A record and the local instant at which it was first seen unchanged.
#[derive(Clone, Debug)]
struct Observed {
    record: Record,
    since: Instant,
}

/// Folds a fresh read of the Lease into what was known: an unchanged record keeps the
/// instant it was first seen, a changed one starts counting at `now`.
fn observe(previous: Option<Observed>, record: Record, now: Instant) -> Observed {
    match previous {
        Some(p) if p.record == record => p,
        _ => Observed { record, since: now },
    }
}

/// Who may hold the Lease as far as `me` can tell at `now`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Mine,
    Free,
    HeldBy(String),
}

/// Decides from local observation only. `own_duration` is a floor on the record's
/// duration: a record without one (or with a shorter one) must not let this replica take
/// a Lease sooner than it would itself allow a standby to.
fn verdict(observed: &Observed, me: &str, own_duration: Duration, now: Instant) -> Verdict {
    let Some(holder) = observed.record.holder.clone() else {
        return Verdict::Free;
    };
    if holder == me {
        return Verdict::Mine;
    }
    let recorded = observed
        .record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let duration = recorded.max(own_duration);
    // An instant too far away to represent is never reached.
    match observed.since.checked_add(duration) {
        Some(until) if now >= until => Verdict::Free,
        _ => Verdict::HeldBy(holder),
    }
}

/// When a leader whose last successful renewal started at `last_renewal` must have stopped.
fn step_down_at(last_renewal: Instant, renew_deadline: Duration) -> Instant {
    last_renewal + renew_deadline
}

/// An API call of the elector failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
}

/// A candidate for leadership.
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: std::sync::Mutex<Option<Observed>>,
    /// Opened for each term won or renewed, up to its step-down instant.
    fence: Arc<WriteFence>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: std::sync::Mutex::new(None),
            fence: Arc::new(WriteFence::open()),
        }
    }

    /// Fences Kinde writes to this elector's terms: `fence` allows writes only until the
    /// step-down instant of the last successful claim (see `kinde::WriteFence`).
    pub(crate) fn with_fence(mut self, fence: Arc<WriteFence>) -> Self {
        self.fence = fence;
        self
    }

    /// Waits until this replica holds the Lease; returns the instant at which the winning
    /// attempt started (what [`LeaderElector::keep`] counts the renew deadline from).
    pub(crate) async fn acquire(&self) -> Instant {
        let mut reported = None::<String>;
        loop {
            let started = Instant::now();
            match self.try_claim().await {
                Ok(Claim::Held) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    self.fence
                        .allow_until(step_down_at(started, self.config.renew_deadline));
                    return started;
                }
                Ok(Claim::HeldByOther(holder)) => {
                    if reported.as_deref() != Some(holder.as_str()) {
                        tracing::info!(lease = %self.config.name, %holder, "waiting for leadership");
                        reported = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "leader election failed, retrying")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the Lease every `retry_period`; returns as soon as this replica may no longer
    /// act as leader: another replica holds the Lease, or `renew_deadline` has passed since
    /// the start of the last successful renewal (`last_renewal`, first the one of
    /// `acquire`). The deadline is a timer of its own: a renewal hanging on a frozen
    /// connection cannot delay it.
    pub async fn keep(&self, mut last_renewal: Instant) -> Lost {
        loop {
            let deadline = step_down_at(last_renewal, self.config.renew_deadline);
            let renewal = async {
                tokio::time::sleep(self.config.retry_period).await;
                let started = Instant::now();
                (started, self.try_claim().await)
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    self.fence.close();
                    return Lost::DeadlinePassed;
                }
                (started, outcome) = renewal => match outcome {
                    Ok(Claim::Held) => {
                        last_renewal = started;
                        self.fence
                            .allow_until(step_down_at(started, self.config.renew_deadline));
                    }
                    Ok(Claim::HeldByOther(holder)) => {
                        self.fence.close();
                        return Lost::TakenBy(holder);
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the leader Lease failed"),
                },
            }
        }
    }

    /// Gives the Lease up so a successor need not wait for it to expire.
    pub async fn release(&self) {
        let mut lease = match self.call(self.api.get_opt(&self.config.name)).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader Lease");
                return;
            }
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .call(
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader Lease"),
        }
    }

    /// One API call, bounded by `request_timeout`.
    async fn call<T>(
        &self,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, CallError> {
        let limit = self.config.request_timeout;
        match tokio::time::timeout(limit, request).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CallError::Timeout(limit)),
        }
    }

    async fn try_claim(&self) -> Result<Claim, CallError> {
        let now = Timestamp::now();
        let me = self.config.identity.as_str();
        let duration_secs = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.call(self.api.get_opt(&self.config.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self
                .call(self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(_) => Ok(Claim::Held),
                Err(CallError::Kube(kube::Error::Api(s))) if s.code == 409 => {
                    Ok(Claim::HeldByOther("(just created)".into()))
                }
                Err(e) => Err(e),
            };
        };
        // Taken after the answer arrived: the record existed by then, so counting from here
        // never starts before the holder's write.
        let seen = Instant::now();
        let observed = {
            let mut slot = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            let observed = observe(slot.take(), Record::of(&lease), seen);
            *slot = Some(observed.clone());
            observed
        };
        let holder = observed.record.holder.clone();
        let mine = match verdict(&observed, me, self.config.lease_duration, seen) {
            Verdict::HeldBy(holder) => return Ok(Claim::HeldByOther(holder)),
            Verdict::Mine => true,
            Verdict::Free => false,
        };
        let spec = lease.spec.get_or_insert_default();
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(me.to_owned());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        // `replace` carries the resourceVersion we read: a concurrent winner makes it 409.
        match self
            .call(
                self.api
                    .replace(&lease.name_any(), &PostParams::default(), &lease),
            )
            .await
        {
            Ok(_) => Ok(Claim::Held),
            Err(CallError::Kube(kube::Error::Api(s))) if s.code == 409 => Ok(Claim::HeldByOther(
                holder.unwrap_or_else(|| "(another candidate)".into()),
            )),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn record(holder: &str, renewed: Timestamp, rv: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            renew_time: Some(renewed),
            lease_duration_seconds: Some(15),
            resource_version: Some(rv.into()),
        }
    }

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_live_lease_is_not_taken_whatever_the_clocks_say() {
        let t0 = Instant::now();
        // The standby's clock runs 15 s ahead of the holder's: the holder's fresh
        // renewTime looks 15 s old (the old code called that expired).
        let wall = Timestamp::now();
        let skewed = wall - jiff::SignedDuration::from_secs(15);
        let mut obs = observe(None, record("other", skewed, "1"), t0);
        assert_eq!(
            verdict(&obs, "me", LEASE, t0),
            Verdict::HeldBy("other".into())
        );
        // The holder renews every 2 s: each change restarts the count, forever held.
        for i in 1..30u64 {
            let now = t0 + Duration::from_secs(2 * i);
            let renewed = skewed + jiff::SignedDuration::from_secs(2 * i as i64);
            obs = observe(Some(obs), record("other", renewed, &i.to_string()), now);
            assert_eq!(obs.since, now);
            assert_eq!(
                verdict(&obs, "me", LEASE, now),
                Verdict::HeldBy("other".into())
            );
        }
    }

    #[test]
    fn an_unchanged_record_expires_after_the_duration_of_local_time() {
        let t0 = Instant::now();
        let r = record("other", Timestamp::now(), "7");
        let mut obs = observe(None, r.clone(), t0);
        for s in [1, 5, 14] {
            let now = t0 + Duration::from_secs(s);
            obs = observe(Some(obs), r.clone(), now);
            assert_eq!(
                obs.since, t0,
                "an unchanged record keeps its first sighting"
            );
            assert_eq!(
                verdict(&obs, "me", LEASE, now),
                Verdict::HeldBy("other".into())
            );
        }
        let now = t0 + LEASE;
        obs = observe(Some(obs), r, now);
        assert_eq!(verdict(&obs, "me", LEASE, now), Verdict::Free);
    }

    #[test]
    fn an_ancient_renew_time_seen_just_now_is_still_held() {
        // A freshly started standby has no history: it waits a whole duration.
        let t0 = Instant::now();
        let ancient = Timestamp::now() - jiff::SignedDuration::from_hours(24);
        let obs = observe(None, record("other", ancient, "3"), t0);
        assert_eq!(
            verdict(&obs, "me", LEASE, t0 + Duration::from_secs(14)),
            Verdict::HeldBy("other".into())
        );
        assert_eq!(verdict(&obs, "me", LEASE, t0 + LEASE), Verdict::Free);
    }

    #[test]
    fn any_change_of_the_record_restarts_the_count() {
        let t0 = Instant::now();
        let renewed = Timestamp::now();
        let obs = observe(None, record("other", renewed, "1"), t0);
        // Same renewTime, new resourceVersion (e.g. a relabel): still a sign of life.
        let t1 = t0 + Duration::from_secs(10);
        let obs = observe(Some(obs), record("other", renewed, "2"), t1);
        assert_eq!(obs.since, t1);
        assert_eq!(
            verdict(&obs, "me", LEASE, t0 + LEASE),
            Verdict::HeldBy("other".into())
        );
        // A new holder is a new record too.
        let t2 = t0 + Duration::from_secs(20);
        let obs = observe(Some(obs), record("third", renewed, "2"), t2);
        assert_eq!(obs.since, t2);
        assert_eq!(
            verdict(&obs, "me", LEASE, t2),
            Verdict::HeldBy("third".into())
        );
    }

    #[test]
    fn free_and_own_leases() {
        let t0 = Instant::now();
        let released = Record {
            holder: None,
            renew_time: Some(Timestamp::now()),
            lease_duration_seconds: Some(1),
            resource_version: Some("9".into()),
        };
        assert_eq!(
            verdict(&observe(None, released, t0), "me", LEASE, t0),
            Verdict::Free
        );
        let empty = Record {
            holder: None,
            renew_time: None,
            lease_duration_seconds: None,
            resource_version: None,
        };
        assert_eq!(
            verdict(&observe(None, empty, t0), "me", LEASE, t0),
            Verdict::Free
        );
        let mine = observe(None, record("me", Timestamp::now(), "4"), t0);
        assert_eq!(verdict(&mine, "me", LEASE, t0), Verdict::Mine);
    }

    #[test]
    fn a_short_or_missing_recorded_duration_does_not_shorten_the_wait() {
        let t0 = Instant::now();
        for seconds in [None, Some(0), Some(-5), Some(1)] {
            let r = Record {
                lease_duration_seconds: seconds,
                ..record("other", Timestamp::now(), "5")
            };
            let obs = observe(None, r, t0);
            let now = t0 + Duration::from_secs(14);
            assert_eq!(
                verdict(&obs, "me", LEASE, now),
                Verdict::HeldBy("other".into()),
                "{seconds:?}"
            );
            assert_eq!(verdict(&obs, "me", LEASE, t0 + LEASE), Verdict::Free);
        }
        // A longer recorded duration is honoured.
        let r = Record {
            lease_duration_seconds: Some(60),
            ..record("other", Timestamp::now(), "6")
        };
        let obs = observe(None, r, t0);
        assert_eq!(
            verdict(&obs, "me", LEASE, t0 + Duration::from_secs(59)),
            Verdict::HeldBy("other".into())
        );
    }

    #[test]
    fn the_leader_stops_before_a_standby_can_take_over() {
        // The standby's first sighting of the last renewal is after that renewal started;
        // its takeover comes a full duration later, our step-down a renew deadline later.
        let c = config();
        let started = Instant::now();
        for delay_ms in [0, 1, 500, 3_000] {
            let standby_saw = started + Duration::from_millis(delay_ms);
            let obs = observe(None, record("leader", Timestamp::now(), "1"), standby_saw);
            let stop = step_down_at(started, c.renew_deadline);
            assert_eq!(
                verdict(&obs, "standby", c.lease_duration, stop),
                Verdict::HeldBy("leader".into())
            );
            // Still held a little after we stopped: the margin.
            assert_eq!(
                verdict(
                    &obs,
                    "standby",
                    c.lease_duration,
                    stop + Duration::from_secs(4)
                ),
                Verdict::HeldBy("leader".into())
            );
        }
    }

    #[test]
    fn timings_are_checked() {
        assert_eq!(config().validate(), Ok(()));
        let bad = [
            LeaseConfig {
                renew_deadline: Duration::from_secs(15),
                ..config()
            },
            LeaseConfig {
                renew_deadline: Duration::from_secs(14),
                ..config()
            },
            LeaseConfig {
                retry_period: Duration::from_secs(10),
                ..config()
            },
            LeaseConfig {
                retry_period: Duration::ZERO,
                ..config()
            },
            LeaseConfig {
                request_timeout: Duration::from_secs(11),
                ..config()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    /// With paused time: a renewal that never answers (frozen API server) does not keep
    /// the leader in office past the renew deadline.
    #[tokio::test(start_paused = true)]
    async fn keep_steps_down_on_time_while_a_renewal_hangs() {
        // An API server that accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    open.push(s);
                }
            }
        });
        let kube_config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = Client::try_from(kube_config).unwrap();
        let mut c = config();
        // A request deadline longer than the renew deadline would be refused by
        // `validate`; here it shows that the step-down does not depend on it.
        c.request_timeout = Duration::from_secs(3600);
        let elector = LeaderElector::new(client, c.clone());
        let last = Instant::now();
        // The outer bound only turns a hang (the bug) into a failure.
        let lost = tokio::time::timeout(Duration::from_secs(3600), elector.keep(last))
            .await
            .expect("keep() never stepped down");
        assert_eq!(lost, Lost::DeadlinePassed);
        assert!(Instant::now() >= last + c.renew_deadline);
        assert!(Instant::now() < last + c.lease_duration);
        hold.abort();
    }
}
