//! Pure decisions of the connection controller: the credentials a Secret holds, whether a
//! management token makes the connection Ready, and who still uses a connection.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use secrecy::SecretString;

use crate::conditions::reasons;
use crate::crd::{CredentialsRef, RateStatus};
use crate::kinde::{ErrorKind, KindeError};

/// Why a connection is not Ready: a reason constant and a message for the user.
pub type NotReady = (&'static str, String);

/// The management client ID and secret from the Secret's data. Surrounding whitespace is
/// dropped (a Secret made with `echo` ends in a newline that Kinde would refuse).
pub fn credentials(
    secret: &str,
    data: &BTreeMap<String, ByteString>,
    keys: &CredentialsRef,
) -> Result<(String, SecretString), NotReady> {
    let value = |key: &str| {
        data.get(key)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let missing = |key: &str| {
        (
            reasons::SECRET_KEY_MISSING,
            format!("Secret {secret} has no non-empty UTF-8 key {key}"),
        )
    };
    let id = value(keys.client_id_key()).ok_or_else(|| missing(keys.client_id_key()))?;
    let secret_value =
        value(keys.client_secret_key()).ok_or_else(|| missing(keys.client_secret_key()))?;
    Ok((id.to_owned(), SecretString::from(secret_value.to_owned())))
}

/// Whether the management token makes the connection Ready: `Ok(missing scopes)` with an
/// empty list when it carries every needed scope (or lists none: then the calls tell),
/// `Err` when no token came back.
pub fn readiness(
    token: &Result<Option<Vec<String>>, KindeError>,
    needed: &BTreeSet<&'static str>,
) -> Result<Vec<String>, NotReady> {
    match token {
        Ok(Some(scopes)) => Ok(needed
            .iter()
            .filter(|s| !scopes.iter().any(|t| t == *s))
            .map(|s| (*s).to_owned())
            .collect()),
        Ok(None) => Ok(Vec::new()),
        Err(e) if matches!(e.kind(), ErrorKind::Unauthorized | ErrorKind::Forbidden) => Err((
            reasons::CREDENTIALS_REFUSED,
            format!(
                "Kinde refused the management credentials: {e} (check the Secret's client ID and secret, and that the application is authorized for the Kinde Management API)"
            ),
        )),
        Err(e) => Err((
            reasons::BUSINESS_UNREACHABLE,
            format!("no management token: {e}"),
        )),
    }
}

/// Whether a KindeConnection (a tenant's) may reach `domain`: it matches one of the
/// operator's `--kinde-connection-domain` patterns, where one `*` stands for any non-empty
/// run of host characters (`https://*.kinde.com` admits `https://acme.kinde.com`). Without
/// this, a tenant could point the operator at any address its pod reaches.
pub fn domain_allowed(domain: &str, patterns: &[String]) -> bool {
    let domain = domain.trim_end_matches('/').to_ascii_lowercase();
    patterns.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('/').to_ascii_lowercase();
        match pattern.split_once('*') {
            None => pattern == domain,
            Some((prefix, suffix)) => {
                domain.len() > prefix.len() + suffix.len()
                    && domain.starts_with(prefix)
                    && domain.ends_with(suffix)
                    && domain[prefix.len()..domain.len() - suffix.len()]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            }
        }
    })
}

/// The message of a connection whose token lacks scopes.
pub fn missing_scopes_message(missing: &[String]) -> String {
    format!(
        "the management application lacks {}: grant {} on the Kinde Management API (Settings > APIs > Kinde Management API > Applications)",
        missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    )
}

/// Most users a refused deletion names.
const USERS_NAMED: usize = 5;

/// Why a connection's deletion waits: the objects still using it (`Kind ns/name`).
pub fn in_use_message(users: &[String]) -> String {
    let named: Vec<&str> = users.iter().take(USERS_NAMED).map(String::as_str).collect();
    let more = users.len().saturating_sub(USERS_NAMED);
    format!(
        "still used by {}{}: delete them (or point them elsewhere before their Kinde objects exist) first",
        named.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// The rate as `status.rate` shows it.
pub fn rate_status(configured: Option<f64>, current: Option<f64>) -> RateStatus {
    let show = |r: Option<f64>| r.map_or_else(|| "unlimited".to_owned(), |r| format!("{r:.2}"));
    RateStatus {
        configured_per_second: show(configured),
        current_per_second: show(current),
    }
}

/// Whether this installation writes the connection's status and Events: when it holds the
/// connection, or when no installation does (each one that sees it reports then; they
/// agree while each is healthy). With several installations in a cluster, a connection in
/// use is reported by those whose objects use it, not by every one that sees it (whose
/// paces differ, and whose Events would repeat each other).
pub fn reports(ours: bool, held_by_any: bool) -> bool {
    ours || !held_by_any
}

/// What this installation does with its finalizer on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    Add,
    Release,
    Keep,
}

/// The finalizer step (pure). `ours`: the connection carries this installation's
/// finalizer. `wanted`: this installation's objects name the connection or were made
/// through it. `in_use`: objects made through it (their Kinde objects are in its business)
/// remain. `users_known`: the stores those come from have listed (at start they may not
/// have yet, and would miss users). Held while wanted; while deleting, released once
/// nothing made through it remains (no finalizer can be added to an object being
/// deleted); never released on users not known yet.
pub fn hold(ours: bool, deleting: bool, wanted: bool, in_use: bool, users_known: bool) -> Hold {
    match (deleting, ours) {
        (_, true) if !users_known => Hold::Keep,
        (true, true) if !in_use => Hold::Release,
        (true, _) => Hold::Keep,
        (false, false) if wanted => Hold::Add,
        (false, true) if !wanted => Hold::Release,
        (false, _) => Hold::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_reported_by_its_holders_or_by_all_when_none_holds_it() {
        assert!(reports(true, true));
        assert!(reports(false, false));
        assert!(!reports(false, true));
    }

    #[test]
    fn an_installation_holds_a_connection_only_while_its_objects_want_it() {
        // (ours, deleting, wanted, in_use, users_known)
        assert_eq!(hold(false, false, true, false, true), Hold::Add);
        assert_eq!(hold(false, false, true, true, true), Hold::Add);
        assert_eq!(hold(true, false, true, true, true), Hold::Keep);
        // Nothing of this installation names it or was made through it: let it go, so an
        // installation that never used a connection never blocks its deletion.
        assert_eq!(hold(true, false, false, false, true), Hold::Release);
        assert_eq!(hold(false, false, false, false, true), Hold::Keep);
        // Being deleted: kept while objects made through it remain, then released; never
        // added (the API server refuses new finalizers on an object being deleted).
        assert_eq!(hold(true, true, true, true, true), Hold::Keep);
        assert_eq!(hold(true, true, true, false, true), Hold::Release);
        assert_eq!(hold(true, true, false, false, true), Hold::Release);
        assert_eq!(hold(false, true, true, true, true), Hold::Keep);
        // Before the stores have listed, no user seen proves nothing: never released then
        // (a user found may still be held).
        assert_eq!(hold(true, false, false, false, false), Hold::Keep);
        assert_eq!(hold(true, true, false, false, false), Hold::Keep);
        assert_eq!(hold(false, false, true, false, false), Hold::Add);
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn credentials_are_read_trimmed_and_a_missing_key_is_named() {
        use secrecy::ExposeSecret;
        let keys = CredentialsRef::default();
        let (id, secret) = credentials(
            "mgmt",
            &data(&[("client-id", "abc\n"), ("client-secret", " s3cret\n")]),
            &keys,
        )
        .expect("credentials");
        assert_eq!(id, "abc");
        assert_eq!(secret.expose_secret(), "s3cret");
        let (reason, message) =
            credentials("mgmt", &data(&[("client-id", "abc")]), &keys).expect_err("missing");
        assert_eq!(reason, reasons::SECRET_KEY_MISSING);
        assert!(
            message.contains("client-secret") && message.contains("mgmt"),
            "{message}"
        );
        let custom = CredentialsRef {
            client_id_key: Some("id".into()),
            client_secret_key: Some("secret".into()),
            ..Default::default()
        };
        let (reason, _) = credentials("mgmt", &data(&[("id", " "), ("secret", "x")]), &custom)
            .expect_err("blank");
        assert_eq!(reason, reasons::SECRET_KEY_MISSING);
    }

    #[test]
    fn a_token_without_needed_scopes_names_them_and_a_refusal_is_told() {
        let needed = BTreeSet::from(["create:apis", "read:apis"]);
        let token = Ok(Some(vec!["read:apis".to_owned()]));
        assert_eq!(
            readiness(&token, &needed),
            Ok(vec!["create:apis".to_owned()])
        );
        let all = Ok(Some(vec!["read:apis".to_owned(), "create:apis".to_owned()]));
        assert_eq!(readiness(&all, &needed), Ok(vec![]));
        let refused = Err(KindeError::Unauthorized {
            operation: "token",
            status: 401,
            body: Default::default(),
        });
        let (reason, _) = readiness(&refused, &needed).expect_err("refused");
        assert_eq!(reason, reasons::CREDENTIALS_REFUSED);
        let down = Err(KindeError::Config("no route".into()));
        assert_eq!(
            readiness(&down, &needed).expect_err("down").0,
            reasons::BUSINESS_UNREACHABLE
        );
        assert!(missing_scopes_message(&["create:apis".into()]).contains("grant it"));
    }

    #[test]
    fn tenant_domains_must_match_a_pattern() {
        let kinde = vec!["https://*.kinde.com".to_owned()];
        assert!(domain_allowed("https://acme.kinde.com", &kinde));
        assert!(domain_allowed("https://ACME.kinde.com/", &kinde));
        assert!(!domain_allowed("https://kinde.com", &kinde));
        assert!(!domain_allowed("http://acme.kinde.com", &kinde));
        assert!(!domain_allowed("https://evil.com/x.kinde.com", &kinde));
        assert!(!domain_allowed("https://169.254.169.254", &kinde));
        assert!(!domain_allowed("https://a:1@b.kinde.com", &kinde));
        let exact = vec!["https://auth.example.com".to_owned()];
        assert!(domain_allowed("https://auth.example.com", &exact));
        assert!(!domain_allowed("https://auth.example.com.evil", &exact));
        assert!(!domain_allowed("https://x.kinde.com", &[]));
    }

    #[test]
    fn a_refused_deletion_names_a_few_users_and_counts_the_rest() {
        let users: Vec<String> = (0..7)
            .map(|i| format!("M2MApplication t/app-{i}"))
            .collect();
        let m = in_use_message(&users);
        assert!(
            m.contains("app-0") && m.contains("app-4") && !m.contains("app-5"),
            "{m}"
        );
        assert!(m.contains("and 2 more"), "{m}");
        assert_eq!(
            rate_status(Some(20.0), Some(12.5)).current_per_second,
            "12.50"
        );
        assert_eq!(rate_status(None, None).configured_per_second, "unlimited");
    }
}
