//! Reflector stores and wake-up channels across namespace slots.
//!
//! With `--namespace` given, each kind has one watch (and store) per namespace; these types
//! hide that, so a lookup or wake-up goes to whichever slot covers the namespace.

use std::sync::Arc;

use futures::channel::mpsc::UnboundedSender;
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

/// The stores of one kind, one per namespace slot (`None` = all namespaces).
pub struct StoreSet<K: Resource<DynamicType = ()> + Clone + 'static> {
    slots: Arc<Vec<(Option<String>, Store<K>)>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for StoreSet<K> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> StoreSet<K> {
    pub fn new(slots: Vec<(Option<String>, Store<K>)>) -> Self {
        Self {
            slots: Arc::new(slots),
        }
    }

    fn slot(&self, namespace: &str) -> Option<&Store<K>> {
        self.slots
            .iter()
            .find(|(ns, _)| ns.as_deref().is_none_or(|n| n == namespace))
            .map(|(_, s)| s)
    }

    /// Whether objects in `namespace` are watched at all.
    pub fn covers(&self, namespace: &str) -> bool {
        self.slot(namespace).is_some()
    }

    /// The cached object `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.slot(namespace)?
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// How many objects the stores hold.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|(_, s)| s.len()).sum()
    }

    /// Whether the stores hold no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every cached object that matches `pred`.
    pub fn find(&self, pred: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.slots
            .iter()
            .flat_map(|(_, s)| s.state())
            .filter(|o| pred(o))
            .collect()
    }

    /// Whether every store has received its first complete list.
    pub fn is_ready(&self) -> bool {
        self.slots.iter().all(|(_, s)| {
            matches!(
                futures::FutureExt::now_or_never(s.wait_until_ready()),
                Some(Ok(()))
            )
        })
    }

    /// Resolves once every store has received its first complete list.
    pub async fn wait_ready(&self) {
        for (_, s) in self.slots.iter() {
            // Only fails when the writer is dropped, i.e. the controller stopped.
            let _ = s.wait_until_ready().await;
        }
    }
}

type Senders<K> = Arc<Vec<(Option<String>, UnboundedSender<ObjectRef<K>>)>>;

/// Wakes reconciles of `K` objects (e.g. the grants of an API that turned Ready).
pub struct Router<K: Resource<DynamicType = ()> + 'static> {
    slots: Senders<K>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Router<K> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Router<K> {
    pub fn new(slots: Vec<(Option<String>, UnboundedSender<ObjectRef<K>>)>) -> Self {
        Self {
            slots: Arc::new(slots),
        }
    }

    /// Queues a reconcile of `namespace/name` (dropped if that namespace is not watched).
    pub(crate) fn wake(&self, namespace: &str, name: &str) {
        self.send(Some(namespace), name);
    }

    /// Queues a reconcile of the cluster-scoped object `name` (its watch is the slot of all
    /// namespaces).
    pub(crate) fn wake_cluster_scoped(&self, name: &str) {
        self.send(None, name);
    }

    fn send(&self, namespace: Option<&str>, name: &str) {
        let slot = self.slots.iter().find(|(ns, _)| match ns {
            None => true,
            Some(n) => namespace == Some(n.as_str()),
        });
        if let Some((_, tx)) = slot {
            let object = ObjectRef::new(name);
            let object = match namespace {
                Some(ns) => object.within(ns),
                None => object,
            };
            // Fails only when the controller has stopped: nothing left to wake.
            let _ = tx.unbounded_send(object);
        }
    }

    /// Queues a reconcile of each object.
    pub(crate) fn wake_all<'a>(&self, objs: impl IntoIterator<Item = &'a Arc<K>>) {
        for o in objs {
            if let Some(ns) = o.namespace() {
                self.wake(&ns, &o.name_any());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterKindeConnection, KindeConnection};

    #[test]
    fn a_wake_up_goes_to_the_slot_that_watches_it() {
        let (a, mut rx_a) = futures::channel::mpsc::unbounded();
        let router = Router::<KindeConnection>::new(vec![(Some("a".into()), a)]);
        router.wake("a", "x");
        router.wake("b", "y");
        router.wake_cluster_scoped("z");
        assert_eq!(rx_a.try_recv().ok(), Some(ObjectRef::new("x").within("a")));
        assert!(
            rx_a.try_recv().is_err(),
            "only a/x reaches namespace a's watch"
        );

        let (all, mut rx_all) = futures::channel::mpsc::unbounded();
        let cluster = Router::<ClusterKindeConnection>::new(vec![(None, all)]);
        cluster.wake_cluster_scoped("shared");
        assert_eq!(rx_all.try_recv().ok(), Some(ObjectRef::new("shared")));
    }
}
