//! The command line as a user runs it: the built binary, no cluster. `check` against an
//! in-process emulator (credentials and scopes found, missing, refused), the environment
//! variables under their `KINDE_M2M_` names and their old ones, `completion`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_kinde;

use std::process::Output;

use kinde_m2m_operator::kinde::Operation;
use support_kinde::Emu;

/// `kinde-m2m-operator ARGS` with exactly `env` (nothing inherited: a variable of the
/// test's own environment must not decide the outcome).
async fn operator(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kinde-m2m-operator"));
    cmd.args(args).env_clear().envs(env.iter().copied());
    cmd.output().await.expect("the binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn old_names(emu: &Emu) -> Vec<(&'static str, String)> {
    vec![
        ("KINDE_DOMAIN", emu.emu.base_url().to_owned()),
        (
            "KINDE_CLIENT_ID",
            kinde_emulator::DEFAULT_CLIENT_ID.to_owned(),
        ),
        (
            "KINDE_CLIENT_SECRET",
            kinde_emulator::DEFAULT_CLIENT_SECRET.to_owned(),
        ),
    ]
}

fn new_names(emu: &Emu) -> Vec<(&'static str, String)> {
    vec![
        ("KINDE_M2M_DOMAIN", emu.emu.base_url().to_owned()),
        (
            "KINDE_M2M_CLIENT_ID",
            kinde_emulator::DEFAULT_CLIENT_ID.to_owned(),
        ),
        (
            "KINDE_M2M_CLIENT_SECRET",
            kinde_emulator::DEFAULT_CLIENT_SECRET.to_owned(),
        ),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn check_passes_with_either_variable_names() {
    let emu = Emu::start().await;
    for env in [old_names(&emu), new_names(&emu)] {
        let out = operator(&["check"], &pairs(&env)).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{env:?}\n{stdout}\n{stderr}");
        for scope in Operation::required_scopes() {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{scope} ")))
                .unwrap_or_else(|| panic!("no line for {scope}:\n{stdout}"));
            assert!(line.contains(" ok ("), "{line}");
        }
        assert!(
            stdout.contains("ok (probed with getApplications)"),
            "{stdout}"
        );
        assert!(
            !stdout.contains(kinde_emulator::DEFAULT_CLIENT_SECRET),
            "a secret printed"
        );
    }
    // The new name wins over the old one.
    let mut both = new_names(&emu);
    both.push(("KINDE_CLIENT_SECRET", "wrong".to_owned()));
    let out = operator(&["check"], &pairs(&both)).await;
    assert!(out.status.success(), "{:?}", text(&out));
    // ... and the flag over both.
    let out = operator(&["check", "--kinde-client-secret", "wrong"], &pairs(&both)).await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn check_names_missing_scopes_and_fails() {
    let emu = Emu::start().await;
    let granted: Vec<&str> = Operation::required_scopes()
        .into_iter()
        .filter(|s| {
            ![
                "delete:apis",
                "read:applications",
                "update:application_tokens",
            ]
            .contains(s)
        })
        .collect();
    emu.set_management_scopes(&granted).await;
    let out = operator(&["check"], &pairs(&new_names(&emu))).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    let line = |scope: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{scope} ")))
            .unwrap_or_else(|| panic!("no line for {scope}:\n{stdout}"))
            .to_owned()
    };
    assert!(line("delete:apis").contains("MISSING"));
    assert!(line("read:applications").contains("MISSING"));
    assert!(line("update:application_tokens").contains("only spec.tokens needs it"));
    assert!(line("create:apis").contains("ok (in the token)"));
    assert!(
        stderr.contains("delete:apis") && stderr.contains("read:applications"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("update:application_tokens"),
        "optional: {stderr}"
    );

    // Only the optional scope missing: the check passes.
    let all_but_tokens: Vec<&str> = Operation::required_scopes()
        .into_iter()
        .filter(|s| *s != "update:application_tokens")
        .collect();
    emu.set_management_scopes(&all_but_tokens).await;
    let out = operator(&["check"], &pairs(&old_names(&emu))).await;
    assert!(out.status.success(), "{:?}", text(&out));
}

#[tokio::test]
async fn check_names_the_flag_for_bad_or_missing_credentials() {
    let emu = Emu::start().await;
    let mut wrong = old_names(&emu);
    wrong[2].1 = "not-the-secret".to_owned();
    let out = operator(&["check"], &pairs(&wrong)).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--kinde-client-secret"), "{stderr}");
    assert!(
        !stderr.contains("not-the-secret"),
        "the secret in an error: {stderr}"
    );

    let out = operator(&["check"], &pairs(&old_names(&emu)[1..])).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--kinde-domain") && stderr.contains("KINDE_M2M_DOMAIN"),
        "{stderr}"
    );
    // A malformed value is refused by the flag's name, under either variable.
    let out = operator(&["check"], &[("KINDE_TIMEOUT", "soon")]).await;
    assert!(text(&out).1.contains("--kinde-timeout"), "{:?}", text(&out));
}

#[tokio::test]
async fn completion_scripts_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = operator(&["completion", shell], &[]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        for word in [
            "kinde-m2m-operator",
            "rotate",
            "status",
            "check",
            "all-namespaces",
        ] {
            assert!(stdout.contains(word), "{shell}: {word} missing");
        }
    }
    let out = operator(&["completion", "tcsh"], &[]).await;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("<SHELL>"), "{:?}", text(&out));
}
