//! ApiGrant decisions, pure: which scopes to grant and withdraw, which of two grants for
//! the same pair wins. Unit-tested with plain values; the effects are in `mod.rs`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::controller::kernel::is_older;
use crate::crd::{ApiGrant, ApiGrantStatus};

/// The granted keys whose Kinde scope is still the one granted. A scope deleted and
/// re-created in Kinde (a new id) lost the application's grant with it and must be granted
/// again. Keys no longer wanted stay in (they are withdrawn); a status from before scope ids
/// were recorded is trusted by key.
pub(super) fn still_granted(
    status: &ApiGrantStatus,
    scopes: &[(String, String)],
) -> BTreeSet<String> {
    status
        .granted_scopes
        .iter()
        .filter(|key| {
            status.granted_scope_ids.is_empty()
                || scopes
                    .iter()
                    .find(|(k, _)| k == *key)
                    .is_none_or(|(_, id)| status.granted_scope_ids.contains(id))
        })
        .cloned()
        .collect()
}

/// Per-app scopes to grant (`(key, id)`) and to withdraw (keys), given the scopes wanted
/// (`(key, id)`), those granted and still valid, and whether Kinde's authorization of this
/// application holds (without it, nothing counts as granted: Kinde dropped the scopes).
pub(super) fn scope_plan<'a>(
    wanted: &'a [(String, String)],
    granted: &'a BTreeSet<String>,
) -> (Vec<&'a (String, String)>, Vec<&'a String>) {
    let desired: BTreeSet<&str> = wanted.iter().map(|(k, _)| k.as_str()).collect();
    let to_add = wanted
        .iter()
        .filter(|(k, _)| !granted.contains(k))
        .collect();
    let to_remove = granted
        .iter()
        .filter(|k| !desired.contains(k.as_str()))
        .collect();
    (to_add, to_remove)
}

/// The grant that wins over `grant` for the same application and API: the oldest of the
/// others, if any is older (creation time, then name).
pub(super) fn winner_over<'a>(
    grant: &ApiGrant,
    others: &'a [Arc<ApiGrant>],
) -> Option<&'a ApiGrant> {
    others
        .iter()
        .map(Arc::as_ref)
        .filter(|g| is_older(*g, grant))
        .min_by(|a, b| {
            if is_older(*a, *b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::ResourceExt;

    fn status(keys: &[&str], ids: &[&str]) -> ApiGrantStatus {
        ApiGrantStatus {
            granted_scopes: keys.iter().map(|s| (*s).to_owned()).collect(),
            granted_scope_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            ..ApiGrantStatus::default()
        }
    }

    fn scopes(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, i)| ((*k).to_owned(), (*i).to_owned()))
            .collect()
    }

    #[test]
    fn a_scope_recreated_in_kinde_is_granted_again() {
        let s = status(&["read", "write"], &["id-r", "id-w"]);
        let now = scopes(&[("read", "id-r"), ("write", "id-w2")]);
        let kept: Vec<String> = still_granted(&s, &now).into_iter().collect();
        assert_eq!(kept, ["read"], "write has a new id: not granted any more");
    }

    #[test]
    fn unchanged_and_unwanted_scopes_count_as_granted() {
        let s = status(&["read", "old"], &["id-r", "id-o"]);
        let now = scopes(&[("read", "id-r")]);
        let kept: Vec<String> = still_granted(&s, &now).into_iter().collect();
        assert_eq!(
            kept,
            ["old", "read"],
            "old stays in so that it is withdrawn"
        );
    }

    #[test]
    fn a_status_without_ids_is_trusted_by_key() {
        let s = status(&["read"], &[]);
        let now = scopes(&[("read", "id-new")]);
        assert_eq!(still_granted(&s, &now).len(), 1);
    }

    #[test]
    fn scopes_to_grant_and_withdraw() {
        let wanted = vec![
            ("read".to_owned(), "id-r".to_owned()),
            ("write".to_owned(), "id-w".to_owned()),
        ];
        let granted: BTreeSet<String> = ["read".to_owned(), "old".to_owned()].into();
        let (add, remove) = scope_plan(&wanted, &granted);
        assert_eq!(add, [&wanted[1]]);
        assert_eq!(remove, [&"old".to_owned()]);
        let none = BTreeSet::new();
        let (add, remove) = scope_plan(&wanted, &none);
        assert_eq!(
            add.len(),
            2,
            "nothing counts as granted without the authorization"
        );
        assert!(remove.is_empty());
    }

    fn grant(name: &str, created: i64) -> Arc<ApiGrant> {
        let mut g = ApiGrant::new(
            name,
            serde_json::from_value(serde_json::json!({
                "applicationRef": {"name": "app"}, "apiRef": {"name": "api"}, "scopes": []
            }))
            .expect("spec"),
        );
        g.metadata.namespace = Some("acme".into());
        g.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("ts")));
        Arc::new(g)
    }

    #[test]
    fn the_oldest_grant_wins_a_conflict() {
        let me = grant("b", 200);
        let others = [grant("c", 300), grant("a", 100), grant("z", 100)];
        assert_eq!(
            winner_over(&me, &others).map(|g| g.name_any()).as_deref(),
            Some("a")
        );
        let oldest = grant("a0", 50);
        assert!(
            winner_over(&oldest, &others).is_none(),
            "the oldest wins itself"
        );
        // Same creation time: the name decides.
        let tie = grant("y", 100);
        assert_eq!(
            winner_over(&tie, &others).map(|g| g.name_any()).as_deref(),
            Some("a")
        );
    }
}
