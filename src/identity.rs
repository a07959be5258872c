//! Who owns a Kinde application: the installation identity and the owner key the operator
//! records on each application it creates, so that an object re-created from the same
//! manifest (a cluster rebuilt from Git, a restore that dropped `status`) finds its
//! application again instead of creating a second one with new credentials.
//!
//! The key is `kmo/<installation>/<namespace>/<name>`, kept in a private Kinde application
//! property ([`OWNER_PROPERTY`]). It names the object, not its UID (which a rebuild
//! changes); the installation id keeps two clusters or two installations on one Kinde
//! business from claiming each other's applications.

/// The Kinde application property holding the owner key.
pub const OWNER_PROPERTY: &str = "kmo_owner";
/// Its display name and description in the Kinde dashboard.
pub const OWNER_PROPERTY_NAME: &str = "kinde-m2m-operator owner";
pub const OWNER_PROPERTY_DESCRIPTION: &str = "The M2MApplication that manages this application (installation/namespace/name). Set and read by kinde-m2m-operator; do not edit.";
/// The property category the operator files it under.
pub const OWNER_CATEGORY: &str = "kinde-m2m-operator";
/// The installation id when none is given.
pub const DEFAULT_INSTALLATION: &str = "default";
/// Longest owner key kept verbatim; longer ones end in a hash (Kinde's single-line text
/// values are short).
const MAX_OWNER_LEN: usize = 200;

/// Checks an installation id: 1 to 63 lowercase letters, digits and `-`, starting and
/// ending with a letter or digit (a DNS label: it may name Helm releases and namespaces).
pub fn parse_installation(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an installation id: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// The owner key of the object `namespace/name` in `installation`.
pub fn owner_key(installation: &str, namespace: &str, name: &str) -> String {
    let key = format!("kmo/{installation}/{namespace}/{name}");
    if key.len() <= MAX_OWNER_LEN {
        return key;
    }
    let mut cut = MAX_OWNER_LEN - 17;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &key[..cut], stable_hash(&key))
}

/// FNV-1a: a hash that stays the same across builds and platforms (owner keys, markers and
/// resync slots must).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installation_ids_are_dns_labels() {
        assert_eq!(parse_installation("prod-eu-1"), Ok("prod-eu-1".into()));
        for bad in ["", "Prod", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(parse_installation(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owner_keys_name_the_object_and_stay_short() {
        assert_eq!(
            owner_key("default", "acme", "shop"),
            "kmo/default/acme/shop"
        );
        assert_ne!(
            owner_key("blue", "acme", "shop"),
            owner_key("green", "acme", "shop")
        );
        let long = owner_key("default", "acme", &"x".repeat(253));
        assert!(long.len() <= MAX_OWNER_LEN, "{}", long.len());
        assert_eq!(long, owner_key("default", "acme", &"x".repeat(253)));
        assert_ne!(long, owner_key("default", "acme", &"x".repeat(252)));
    }
}
