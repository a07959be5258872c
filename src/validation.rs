//! Kubernetes naming rules the operator checks itself before its first Kinde write: a name
//! the API server would refuse later (a Secret name, a label) must not leave a Kinde object
//! behind that the operator can then never finish.

/// Longest object name whose Events the API server accepts: kube's recorder names an Event
/// `<object name>.<nanoseconds, hex>` (16 hex digits for years to come) and names are
/// DNS-1123 subdomains of at most 253 characters.
pub(crate) const MAX_NAME_FOR_EVENTS: usize = 253 - 17;

/// A DNS-1123 subdomain (object names such as a Secret's): at most 253 characters,
/// lowercase alphanumerics, `-` and `.`, each dot-separated part starting and ending with an
/// alphanumeric.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A DNS-1123 label (a namespace's name): at most 63 characters, one part of a subdomain.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns1123_subdomain(s)
}

/// A Secret (or ConfigMap) data key: 1-253 characters of `[-._a-zA-Z0-9]`, neither `.` nor
/// starting with `..` (the API server's `IsConfigMapKey`).
pub(crate) fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && key != "."
        && !key.starts_with("..")
}

/// A label or annotation key: an optional DNS-1123 subdomain prefix and `/`, then a name of
/// 1-63 alphanumerics, `-`, `_` and `.`, starting and ending with an alphanumeric.
pub(crate) fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && is_label_name(name)
}

/// A label value: empty, or 1-63 alphanumerics, `-`, `_` and `.`, starting and ending with
/// an alphanumeric.
pub(crate) fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name(v)
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        assert!(is_dns1123_subdomain("acme-credentials"));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(is_dns1123_subdomain(&"a".repeat(253)));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", "a."] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn secret_keys() {
        for ok in [
            "KINDE_CLIENT_ID",
            "client-id",
            "a.b_c-9",
            ".env",
            &"a".repeat(253),
        ] {
            assert!(is_secret_key(ok), "{ok:?}");
        }
        for bad in ["", ".", "..", "..a", "a b", "a/b", "ü", &"a".repeat(254)] {
            assert!(!is_secret_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(is_qualified_name("team"));
        assert!(is_qualified_name("example.com/team_name.x"));
        assert!(!is_qualified_name("Example.com/team"));
        assert!(!is_qualified_name("a/b/c"));
        assert!(!is_qualified_name(&"a".repeat(64)));
        assert!(!is_qualified_name("/x"));
        assert!(is_label_value(""));
        assert!(is_label_value("A-b_c.9"));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value("a b"));
        assert!(!is_label_value(&"a".repeat(64)));
    }
}
