//! Where the operator's Events go. Namespaced objects' Events go through kube's
//! [`Recorder`] (which turns a repeated Event into a series). Events about cluster-scoped
//! objects (ClusterKindeConnections) go to namespace `kube-system`. That is the one
//! namespace every Kubernetes version accepts for them: before 1.22 the API server refuses
//! an `events.k8s.io/v1` Event in `default` whose `regarding` has no namespace, and that
//! is where the Recorder would put it. Such Events are rare (a connection's Ready changes),
//! so a plain create does.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The namespace of Events about cluster-scoped objects.
pub const CLUSTER_SCOPED_EVENTS_NAMESPACE: &str = "kube-system";

/// Publishes the operator's Events as `reporter`.
pub struct Events {
    recorder: Recorder,
    client: Client,
    reporter: Reporter,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }
    }

    pub async fn publish(&self, event: &Event, reference: &ObjectReference) -> kube::Result<()> {
        if reference.namespace.is_some() {
            return self.recorder.publish(event, reference).await;
        }
        let k8s = cluster_scoped_event(&self.reporter, event, reference, Timestamp::now());
        Api::<K8sEvent>::namespaced(self.client.clone(), CLUSTER_SCOPED_EVENTS_NAMESPACE)
            .create(&PostParams::default(), &k8s)
            .await
            .map(drop)
    }
}

/// The `events.k8s.io/v1` Event about the cluster-scoped object `reference`, as the
/// Recorder would build it but in [`CLUSTER_SCOPED_EVENTS_NAMESPACE`].
pub fn cluster_scoped_event(
    reporter: &Reporter,
    event: &Event,
    reference: &ObjectReference,
    now: Timestamp,
) -> K8sEvent {
    let stem = reference.name.as_deref().unwrap_or(&reporter.controller);
    K8sEvent {
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        related: event.secondary.clone(),
        note: event.note.clone(),
        metadata: ObjectMeta {
            namespace: Some(CLUSTER_SCOPED_EVENTS_NAMESPACE.into()),
            name: Some(format!("{stem}.{:x}", now.as_nanosecond())),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_scoped_objects_event_lands_in_kube_system_and_names_it() {
        let reporter = Reporter {
            controller: "kinde-m2m-operator".into(),
            instance: Some("pod-1".into()),
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "SecretNotFound".into(),
            note: Some("no Secret platform/mgmt".into()),
            action: "Connect".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("m2m.kinde-operator.io/v1alpha1".into()),
            kind: Some("ClusterKindeConnection".into()),
            name: Some("shared".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let now = Timestamp::from_second(1_800_000_000).expect("a valid time");
        let e = cluster_scoped_event(&reporter, &event, &reference, now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("kube-system"));
        assert!(
            e.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("shared."))
        );
        // The object is named as it is: without a namespace.
        assert_eq!(e.regarding.as_ref(), Some(&reference));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("SecretNotFound"));
        assert_eq!(e.action.as_deref(), Some("Connect"));
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some("kinde-m2m-operator")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(e.event_time, Some(MicroTime(now)));
    }
}
