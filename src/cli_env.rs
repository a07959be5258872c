//! Environment variable names of the command line: every one is prefixed `KINDE_M2M_`, so
//! none collides with what else a pod's environment holds (`LISTEN`, `NAMESPACE`, or the
//! `KINDE_CLIENT_ID` of a credentials Secret mounted with `envFrom`). The names used before
//! the prefix keep working as aliases ([`ALIASES`]), below the flag and the new name.
//!
//! clap reads one variable per argument, so the alias is applied to the built command:
//! where the new variable is unset and the old one set, the old value becomes the
//! argument's default (hidden from `--help`, which would otherwise print a secret).

use std::ffi::OsString;

use clap::Command;

/// `(new name, old name)` for every variable that was renamed.
pub const ALIASES: &[(&str, &str)] = &[
    ("KINDE_M2M_LOG_FORMAT", "LOG_FORMAT"),
    ("KINDE_M2M_LOG_LEVEL", "RUST_LOG"),
    ("KINDE_M2M_DOMAIN", "KINDE_DOMAIN"),
    ("KINDE_M2M_CLIENT_ID", "KINDE_CLIENT_ID"),
    ("KINDE_M2M_CLIENT_SECRET", "KINDE_CLIENT_SECRET"),
    ("KINDE_M2M_REQUESTS_PER_SECOND", "KINDE_REQUESTS_PER_SECOND"),
    ("KINDE_M2M_BURST", "KINDE_BURST"),
    ("KINDE_M2M_MAX_IN_FLIGHT", "KINDE_MAX_IN_FLIGHT"),
    ("KINDE_M2M_TIMEOUT", "KINDE_TIMEOUT"),
    ("KINDE_M2M_EMULATOR", "KINDE_EMULATOR"),
    ("KINDE_M2M_EMULATOR_LISTEN", "KINDE_EMULATOR_LISTEN"),
    ("KINDE_M2M_WATCH_NAMESPACES", "WATCH_NAMESPACES"),
    ("KINDE_M2M_RESYNC_PERIOD", "RESYNC_PERIOD"),
    ("KINDE_M2M_MIN_ROTATION_INTERVAL", "MIN_ROTATION_INTERVAL"),
    ("KINDE_M2M_LISTEN", "LISTEN"),
    ("KINDE_M2M_LEADER_ELECTION", "LEADER_ELECTION"),
    ("KINDE_M2M_LEASE_NAMESPACE", "LEASE_NAMESPACE"),
    ("KINDE_M2M_LEASE_NAME", "LEASE_NAME"),
    ("KINDE_M2M_ADOPTION_NAMESPACES", "KINDE_ADOPTION_NAMESPACES"),
    (
        "KINDE_M2M_ADOPTION_NAMESPACE_SELECTOR",
        "KINDE_ADOPTION_NAMESPACE_SELECTOR",
    ),
    (
        "KINDE_M2M_ADOPTION_ALLOW_DELETE",
        "KINDE_ADOPTION_ALLOW_DELETE",
    ),
    ("KINDE_M2M_NAMESPACE", "NAMESPACE"),
];

/// The old name of a renamed variable.
pub fn alias_of(new: &str) -> Option<&'static str> {
    ALIASES.iter().find(|(n, _)| *n == new).map(|(_, old)| *old)
}

/// `cmd` (and its subcommands) with the old variable names as fallbacks, reading the
/// environment through `lookup` (`std::env::var_os` in the binary).
pub fn with_aliases(cmd: Command, lookup: &dyn Fn(&str) -> Option<OsString>) -> Command {
    cmd.mut_args(|arg| {
        let Some(new) = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned) else {
            return arg;
        };
        let Some(old) = alias_of(&new) else {
            return arg;
        };
        if lookup(&new).is_some() {
            return arg;
        }
        let Some(value) = lookup(old) else {
            return arg;
        };
        let value = value.to_string_lossy().into_owned();
        let values: Vec<String> = match arg.get_value_delimiter() {
            Some(d) => value.split(d).map(str::to_owned).collect(),
            None => vec![value],
        };
        let takes_values = arg.get_action().takes_values();
        let arg = arg.default_values(values);
        // Flags (`--kinde-emulator`) show no default anyway.
        if takes_values {
            arg.hide_default_value(true)
        } else {
            arg
        }
    })
    .mut_subcommands(|sub| with_aliases(sub, lookup))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t").subcommand(
            Command::new("run")
                .arg(
                    Arg::new("listen")
                        .long("listen")
                        .env("KINDE_M2M_LISTEN")
                        .default_value("0.0.0.0:8080"),
                )
                .arg(
                    Arg::new("namespaces")
                        .long("namespace")
                        .env("KINDE_M2M_WATCH_NAMESPACES")
                        .value_delimiter(',')
                        .action(ArgAction::Append),
                )
                .arg(
                    Arg::new("emulator")
                        .long("kinde-emulator")
                        .env("KINDE_M2M_EMULATOR")
                        .action(ArgAction::SetTrue),
                ),
        )
    }

    fn parse(env: &[(&str, &str)], args: &[&str]) -> clap::ArgMatches {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        };
        let matches = with_aliases(cmd(), &lookup)
            .try_get_matches_from(args)
            .expect("parses");
        matches.subcommand_matches("run").expect("run").clone()
    }

    #[test]
    fn the_old_name_is_a_fallback_below_the_flag() {
        let listen = |m: &clap::ArgMatches| m.get_one::<String>("listen").cloned();
        let m = parse(&[("LISTEN", "127.0.0.1:1")], &["t", "run"]);
        assert_eq!(listen(&m).as_deref(), Some("127.0.0.1:1"));
        let m = parse(
            &[("LISTEN", "127.0.0.1:1")],
            &["t", "run", "--listen", "127.0.0.1:2"],
        );
        assert_eq!(listen(&m).as_deref(), Some("127.0.0.1:2"), "the flag wins");
        let m = parse(&[], &["t", "run"]);
        assert_eq!(listen(&m).as_deref(), Some("0.0.0.0:8080"));
        let namespaces = parse(&[("WATCH_NAMESPACES", "a,b")], &["t", "run"])
            .get_many::<String>("namespaces")
            .map(|v| v.cloned().collect::<Vec<_>>());
        assert_eq!(namespaces, Some(vec!["a".to_owned(), "b".to_owned()]));
        let on = parse(&[("KINDE_EMULATOR", "true")], &["t", "run"]).get_flag("emulator");
        assert!(on);
        let off = parse(&[], &["t", "run"]).get_flag("emulator");
        assert!(!off);
    }

    #[test]
    fn every_alias_is_a_distinct_prefixed_name() {
        let mut news = std::collections::BTreeSet::new();
        for (new, old) in ALIASES {
            assert!(new.starts_with("KINDE_M2M_"), "{new}");
            assert!(!old.starts_with("KINDE_M2M_"), "{old}");
            assert!(news.insert(*new), "{new} twice");
        }
    }
}
