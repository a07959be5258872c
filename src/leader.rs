//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and
//! exactly one reconciles (two writers would race on Kinde creates).
//!
//! The usual client-go protocol: take the Lease when it is free or expired, renew it every
//! `retry_period`, and give up leadership (the process stops reconciling) when renewal has
//! failed for `renew_deadline`. Updates use the Lease's resourceVersion, so two candidates
//! can never both win. On graceful shutdown the Lease is released for a fast hand-over.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// Timing of the election, as in client-go's defaults.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name + a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// Outcome of one try to take or keep the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    Held,
    HeldByOther(String),
}

/// A candidate for leadership.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut reported = None::<String>;
        loop {
            match self.try_claim().await {
                Ok(Claim::Held) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
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

    /// Renews the Lease until renewal fails for longer than `renew_deadline` or another
    /// replica took it; returns then (the caller must stop reconciling).
    pub async fn keep(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_claim().await {
                Ok(Claim::Held) => last_renewal = tokio::time::Instant::now(),
                Ok(Claim::HeldByOther(holder)) => {
                    tracing::error!(%holder, "lost the leader Lease to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the leader Lease failed");
                    if last_renewal.elapsed() > self.config.renew_deadline {
                        tracing::error!("could not renew the leader Lease within the deadline");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a successor need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader Lease"),
        }
    }

    async fn try_claim(&self) -> kube::Result<Claim> {
        let now = Timestamp::now();
        let me = self.config.identity.as_str();
        let duration_secs = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
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
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Claim::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Claim::HeldByOther("(just created)".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(me);
        if !mine
            && let Some(holder) = holder.clone()
            && !expired(spec, now)
        {
            return Ok(Claim::HeldByOther(holder));
        }
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me.to_owned());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        // `replace` carries the resourceVersion we read: a concurrent winner makes it 409.
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Claim::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Claim::HeldByOther(
                holder.unwrap_or_else(|| "(another candidate)".into()),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A Lease is free once `renewTime + leaseDurationSeconds` has passed.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .map_or(true, |until| until < now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry() {
        let now = Timestamp::now();
        let spec = |ago: i64, duration: i32| LeaseSpec {
            renew_time: Some(MicroTime(now - jiff::SignedDuration::from_secs(ago))),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec(5, 15), now));
        assert!(expired(&spec(20, 15), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
