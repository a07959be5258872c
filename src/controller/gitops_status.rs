//! What GitOps tools make of the status the kernel's rules write, for every condition
//! reason and all three kinds: kstatus (Flux, kpt, Config Sync), by its rules restated
//! below, and Argo CD, by running the health check in `resource_customizations/` in a real
//! Lua 5.1 interpreter (Argo CD's gopher-lua implements 5.1) with the libraries Argo CD
//! opens. The same check is also run on its own fixtures (`health_test.yaml`, Argo CD's
//! format), which are manifests read back from a cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mlua::{Lua, LuaOptions, StdLib};
use serde::Deserialize;
use serde_json::{Value, json};

use super::kernel::rules::record_outcome;
use super::kernel::{Error, Managed, Outcome, Result};
use crate::conditions::{self, Progress, reasons};
use crate::crd::{ApiGrant, ApiRegistration, M2MApplication};
use crate::kinde::{ErrorKind, KindeError, KindeErrorBody, Transient};

// ---------------------------------------------------------------------------------------
// kstatus, restated from cli-utils pkg/kstatus/status (generic.go `checkGenericProperties`,
// `checkGeneration`; status.go `Compute`, `checkReadyCondition`). A custom resource has no
// legacy rules there, so these are all that apply to it.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KStatus {
    InProgress,
    Failed,
    Current,
    Terminating,
}

/// kstatus's status and message of an object (JSON as the API server serves it).
fn kstatus(obj: &Value) -> (KStatus, String) {
    let deleting = obj["metadata"]["deletionTimestamp"]
        .as_str()
        .is_some_and(|t| !t.is_empty());
    if deleting {
        return (
            KStatus::Terminating,
            "Resource scheduled for deletion".into(),
        );
    }
    // Compared only when both are present.
    if let (Some(generation), Some(observed)) = (
        obj["metadata"]["generation"].as_i64(),
        obj["status"]["observedGeneration"].as_i64(),
    ) && generation != observed
    {
        return (
            KStatus::InProgress,
            format!("generation is {generation}, but latest observed generation is {observed}"),
        );
    }
    let conds = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let text = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_owned();
    // In list order: whichever of the two holds first decides.
    for c in &conds {
        match (c["type"].as_str(), c["status"].as_str()) {
            (Some("Reconciling"), Some("True")) => {
                return (KStatus::InProgress, text(c, "message"));
            }
            (Some("Stalled"), Some("True")) => return (KStatus::Failed, text(c, "message")),
            _ => {}
        }
    }
    for c in conds.iter().filter(|c| c["type"] == "Ready") {
        match c["status"].as_str() {
            Some("True") => return (KStatus::Current, "Resource is Ready".into()),
            Some("False" | "Unknown") => return (KStatus::InProgress, text(c, "message")),
            _ => {}
        }
    }
    (KStatus::Current, "Resource is current".into())
}

// ---------------------------------------------------------------------------------------
// Argo CD
// ---------------------------------------------------------------------------------------

fn customizations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("resource_customizations/m2m.kinde-operator.io/_")
}

fn health_script() -> String {
    let path = customizations().join("health.lua");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// JSON as Argo CD hands it to Lua (`decodeValue`): objects and arrays as tables (arrays
/// from 1), numbers as Lua numbers, null as nil.
fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().unwrap_or_default()),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table()?;
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}

/// A Lua state with what Argo CD opens for a health check: base, package and table (and a
/// reduced `os` this check does not use); no `string`, so a script using it fails here as
/// it would there.
fn bare_lua() -> Lua {
    Lua::new_with(StdLib::TABLE | StdLib::PACKAGE, LuaOptions::default()).expect("a Lua state")
}

/// Argo CD's health `(status, message)` of `obj` by `script`, run as Argo CD runs it: the
/// object in the global `obj`, and only the base, package and table libraries (Argo CD
/// adds a reduced `os`; no `string`, so a script using it fails here as it would there).
fn argo_health(script: &str, obj: &Value) -> (String, String) {
    let lua = bare_lua();
    let run = || -> mlua::Result<(String, String)> {
        lua.globals().set("obj", to_lua(&lua, obj)?)?;
        let hs: mlua::Table = lua.load(script).set_name("health.lua").eval()?;
        Ok((hs.get("status")?, hs.get("message")?))
    };
    let (status, message) = run().unwrap_or_else(|e| panic!("health.lua on {obj}: {e}"));
    // Argo CD turns any other value into Unknown ("Lua returned an invalid health status").
    let valid = [
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
        "Missing",
        "Unknown",
    ];
    assert!(valid.contains(&status.as_str()), "invalid status {status}");
    (status, message)
}

// ---------------------------------------------------------------------------------------
// Statuses the operator writes
// ---------------------------------------------------------------------------------------

const GENERATION: i64 = 2;

/// An object of kind `K` at [`GENERATION`] whose status records `outcome` as the kernel's
/// `finish` does, serialized as the API server would serve it.
fn object_with<K: Managed>(outcome: &Result<Outcome>) -> Value {
    let mut status = K::Status::default();
    record_outcome(&mut status, Some(GENERATION), K::KIND, outcome);
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": "x", "namespace": "team", "generation": GENERATION},
        "spec": {},
        "status": serde_json::to_value(&status).expect("status serializes"),
    })
}

/// The same for each kind.
const KINDS: [fn(&Result<Outcome>) -> Value; 3] = [
    object_with::<ApiRegistration>,
    object_with::<M2MApplication>,
    object_with::<ApiGrant>,
];

/// A Kinde error of each kind, as the client raises it.
fn kinde_error(kind: ErrorKind) -> KindeError {
    let operation = "getAPI";
    let body = KindeErrorBody {
        code: Some("CODE".into()),
        message: Some("Kinde says no".into()),
    };
    let e = match kind {
        ErrorKind::NotFound => KindeError::NotFound { operation, body },
        ErrorKind::Unauthorized => KindeError::Unauthorized {
            operation,
            status: 401,
            body,
        },
        ErrorKind::Forbidden => KindeError::Forbidden {
            operation,
            scope: "read:apis",
            body,
        },
        ErrorKind::RateLimited => KindeError::RateLimited {
            operation,
            retry_after: None,
        },
        ErrorKind::Retryable => KindeError::Retryable {
            operation,
            reason: Transient::Server(503),
            attempts: 3,
        },
        ErrorKind::OutcomeUnknown => KindeError::OutcomeUnknown {
            operation,
            reason: Transient::Timeout,
        },
        ErrorKind::Invalid => KindeError::Invalid {
            operation,
            status: 400,
            body,
        },
        ErrorKind::Decode => KindeError::Decode {
            operation,
            detail: "not JSON".into(),
        },
        ErrorKind::Config => KindeError::Config("no domain".into()),
        ErrorKind::Fenced => KindeError::Fenced { operation },
    };
    assert_eq!(e.kind(), kind);
    e
}

/// Every way a reconcile ends with Ready=False for `reason` on an object that was never
/// Ready, each with the message its conditions then carry: the outcome (waiting, refused)
/// and the failure (blocked), and for a Kinde reason the Kinde error itself.
fn not_ready_outcomes(reason: &'static str) -> Vec<(Result<Outcome>, String)> {
    let message = format!("what {reason} means here");
    let mut outcomes = vec![
        (
            Ok(Outcome::not_ready(reason, message.clone())),
            message.clone(),
        ),
        (
            Err(Error::Blocked {
                reason,
                message: message.clone(),
            }),
            message,
        ),
    ];
    if let Some(kind) = ErrorKind::from_name(reason) {
        let err = kinde_error(kind);
        let note = err.to_string();
        outcomes.push((Err(Error::Kinde(err)), note));
    }
    outcomes
}

/// The condition `type_` of a serialized object as `(status, reason, message)`.
fn condition(obj: &Value, type_: &str) -> (String, String, String) {
    let conds = obj["status"]["conditions"].as_array().cloned();
    let c = conds
        .unwrap_or_default()
        .into_iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {obj}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("reason"), s("message"))
}

fn expected_progress(reason: &str) -> Progress {
    conditions::EXPECTED_PROGRESS
        .iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("{reason} has no expected class"))
}

/// Every reason a not-Ready object can show (all of them but `Reconciled` and `Paused`,
/// whose outcomes are their own).
fn not_ready_reasons() -> Vec<&'static str> {
    conditions::all_reasons()
        .into_iter()
        .filter(|r| ![reasons::RECONCILED, reasons::PAUSED].contains(r))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn kstatus_reads_every_reason_as_its_class_says() {
    for object in KINDS {
        for reason in not_ready_reasons() {
            let want = match expected_progress(reason) {
                Progress::Reconciling => KStatus::InProgress,
                Progress::Stalled => KStatus::Failed,
            };
            for (outcome, message) in not_ready_outcomes(reason) {
                let obj = object(&outcome);
                assert_eq!(kstatus(&obj), (want, message.clone()), "{outcome:?}: {obj}");
                // The condition that holds repeats Ready's reason and message.
                let ready = condition(&obj, conditions::READY);
                assert_eq!(ready, ("False".into(), reason.into(), message), "{obj}");
                let holding = match want {
                    KStatus::Failed => conditions::STALLED,
                    _ => conditions::RECONCILING,
                };
                let (status, r, m) = condition(&obj, holding);
                assert_eq!((status.as_str(), r, m), ("True", ready.1, ready.2));

                // A spec the operator has not seen yet is in progress, whatever the reason.
                let mut newer = obj.clone();
                newer["metadata"]["generation"] = json!(GENERATION + 1);
                assert_eq!(kstatus(&newer).0, KStatus::InProgress, "{newer}");
                newer["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                assert_eq!(kstatus(&newer).0, KStatus::Terminating);
            }
        }
    }
}

#[test]
fn kstatus_reads_ready_paused_and_failing_ready_objects() {
    for object in KINDS {
        let current = |outcome: Result<Outcome>| kstatus(&object(&outcome)).0;
        assert_eq!(current(Ok(Outcome::Ready)), KStatus::Current);
        assert_eq!(
            current(Ok(Outcome::ReadyFor(std::time::Duration::from_secs(30)))),
            KStatus::Current
        );
        assert_eq!(
            current(Ok(Outcome::Paused { ready: true })),
            KStatus::Current
        );
        // Paused before it was ever Ready: nothing happens until the annotation goes.
        assert_eq!(
            current(Ok(Outcome::Paused { ready: false })),
            KStatus::Failed
        );
        // Spot checks against the README's table, independent of the class table.
        for (reason, want) in [
            (reasons::SCOPE_NOT_FOUND, KStatus::Failed),
            (reasons::INVALID_SPEC, KStatus::Failed),
            ("KindeForbidden", KStatus::Failed),
            (reasons::WAITING_FOR_API, KStatus::InProgress),
            (reasons::APPLICATION_NOT_FOUND, KStatus::InProgress),
            ("KindeUnavailable", KStatus::InProgress),
        ] {
            assert_eq!(
                current(Ok(Outcome::not_ready(reason, "why"))),
                want,
                "{reason}"
            );
        }
    }
    // An object that worked keeps working while Kinde fails: Ready stays True, neither
    // kstatus condition holds, the failure is in Synced.
    let mut status = crate::crd::ApiGrantStatus::default();
    record_outcome(
        &mut status,
        Some(GENERATION),
        "ApiGrant",
        &Ok(Outcome::Ready),
    );
    for kind in ErrorKind::ALL {
        let failed = Err(Error::Kinde(kinde_error(*kind)));
        let mut after = status.clone();
        record_outcome(&mut after, Some(GENERATION), "ApiGrant", &failed);
        let obj = json!({
            "metadata": {"generation": GENERATION},
            "status": serde_json::to_value(&after).expect("serializes"),
        });
        assert_eq!(kstatus(&obj).0, KStatus::Current, "{obj}");
        assert_eq!(condition(&obj, conditions::STALLED).0, "False");
        assert_eq!(condition(&obj, conditions::RECONCILING).0, "False");
    }
}

#[test]
fn argo_health_of_every_status_the_rules_write() {
    let script = health_script();
    for object in KINDS {
        for reason in not_ready_reasons() {
            let want = match expected_progress(reason) {
                Progress::Reconciling => "Progressing",
                Progress::Stalled => "Degraded",
            };
            for (outcome, message) in not_ready_outcomes(reason) {
                let obj = object(&outcome);
                let health = argo_health(&script, &obj);
                assert_eq!(
                    health,
                    (want.into(), format!("{reason}: {message}")),
                    "{obj}"
                );
                let mut newer = obj.clone();
                newer["metadata"]["generation"] = json!(GENERATION + 1);
                assert_eq!(argo_health(&script, &newer).0, "Progressing", "{newer}");
            }
        }
        let ready = object(&Ok(Outcome::Ready));
        let kind = ready["kind"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            argo_health(&script, &ready),
            ("Healthy".into(), format!("{kind} is in sync with Kinde"))
        );
        for ready in [true, false] {
            let paused = object(&Ok(Outcome::Paused { ready }));
            let health = argo_health(&script, &paused);
            assert_eq!(health.0, "Suspended", "{paused}");
            assert!(
                health.1.contains("m2m.kinde-operator.io/paused"),
                "{health:?}"
            );
        }
        let mut fresh = ready.clone();
        if let Some(o) = fresh.as_object_mut() {
            o.remove("status");
        }
        assert_eq!(
            argo_health(&script, &fresh),
            (
                "Progressing".into(),
                format!("Waiting for the operator to reconcile the {kind}")
            )
        );
    }
}

#[test]
fn argo_health_of_a_ready_object_while_kinde_fails_names_the_failure() {
    let script = health_script();
    let mut status = crate::crd::M2MApplicationStatus::default();
    record_outcome(&mut status, Some(1), "M2MApplication", &Ok(Outcome::Ready));
    let err = kinde_error(ErrorKind::Retryable);
    let note = err.to_string();
    record_outcome(&mut status, Some(1), "M2MApplication", &Err(err.into()));
    let obj = json!({
        "kind": "M2MApplication",
        "metadata": {"generation": 1},
        "status": serde_json::to_value(&status).expect("serializes"),
    });
    assert_eq!(
        argo_health(&script, &obj),
        (
            "Healthy".into(),
            format!(
                "M2MApplication is in sync with Kinde; last reconcile failed: KindeUnavailable: {note}"
            )
        )
    );
}

/// Argo CD's `health_test.yaml`.
#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Deserialize)]
struct HealthStatus {
    status: String,
    message: String,
}

#[test]
fn argo_health_fixtures() {
    let dir = customizations();
    let script = health_script();
    let text = std::fs::read_to_string(dir.join("health_test.yaml")).expect("health_test.yaml");
    let tests: HealthTests = serde_yaml::from_str(&text).expect("health_test.yaml parses");
    let mut covered = BTreeSet::new();
    for test in &tests.tests {
        let path = dir.join(&test.input_path);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let obj: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let (status, message) = argo_health(&script, &obj);
        assert_eq!(
            (status.as_str(), message.as_str()),
            (
                test.health_status.status.as_str(),
                test.health_status.message.as_str()
            ),
            "{}",
            test.input_path
        );
        // kstatus agrees (it cannot tell paused from anything else, and takes an object
        // without status for Current).
        let want = match status.as_str() {
            "Healthy" => Some(KStatus::Current),
            "Degraded" => Some(KStatus::Failed),
            "Progressing" if obj.get("status").is_some() => Some(KStatus::InProgress),
            _ => None,
        };
        if let Some(want) = want {
            assert_eq!(kstatus(&obj).0, want, "kstatus of {}", test.input_path);
        }
        covered.insert((obj["kind"].as_str().unwrap_or_default().to_owned(), status));
    }
    for kind in ["ApiRegistration", "M2MApplication", "ApiGrant"] {
        for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
            assert!(
                covered.contains(&(kind.to_owned(), status.to_owned())),
                "no fixture of a {status} {kind}"
            );
        }
    }
    // Every fixture file is used.
    let files: BTreeSet<String> = std::fs::read_dir(dir.join("testdata"))
        .expect("testdata/")
        .map(|e| {
            format!(
                "testdata/{}",
                e.expect("entry").file_name().to_string_lossy()
            )
        })
        .collect();
    let used: BTreeSet<String> = tests.tests.iter().map(|t| t.input_path.clone()).collect();
    assert_eq!(files, used);
}

#[test]
fn the_health_check_needs_no_string_library() {
    // The interpreter here is as bare as Argo CD's: a script calling `string` fails.
    let lua = bare_lua();
    let with_string = r#"return { status = string.lower("Healthy") }"#;
    assert!(lua.load(with_string).eval::<mlua::Table>().is_err());
}
