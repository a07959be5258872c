//! The dependency boundary between the operator and the Kinde emulator (SPEC section 8),
//! which Cargo alone cannot fully express: `kinde-emulator` is a regular dependency of the
//! operator package because Cargo has no binary-only dependencies, so nothing stops the
//! library from importing it except this test.
//!
//! - The operator library (`src/` except `main.rs`) never names the `kinde_emulator` crate:
//!   the client must not be shaped by the emulator it is tested against.
//! - The emulator crate depends on nothing of the operator (not the library, not its Kinde
//!   client), so that a misreading of the Kinde contract on either side fails a test.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Whether `code` names the crate `ident` as a path (`use ident`, `ident::x`, `ident as y`),
/// as opposed to a field or flag that merely shares the word (`args.kinde_emulator`,
/// `kinde_emulator: bool`).
fn names_crate(code: &str, ident: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(ident).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + ident.len()..];
        let field_like = after.trim_start().starts_with(':') && !after.starts_with("::");
        !before.is_some_and(|c| is_word(c) || c == '.')
            && !after.starts_with(is_word)
            && !field_like
    })
}

/// Files under `dir` (recursively, but not `except`) whose code (comments skipped) names
/// `ident`, with the offending lines.
fn code_mentions(dir: &Path, except: &[&Path], ident: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    assert!(!files.is_empty(), "no Rust files under {dir:?}");
    let mut hits = Vec::new();
    for file in files.iter().filter(|f| !except.contains(&f.as_path())) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if !code.starts_with("//") && names_crate(code, ident) {
                hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    hits
}

#[test]
fn crate_paths_are_told_from_fields() {
    let ident = "kinde_emulator";
    for code in [
        "use kinde_emulator as emulator;",
        "use kinde_emulator::{EmulatorConfig};",
        "let e = kinde_emulator::spawn(c);",
        "extern crate kinde_emulator;",
    ] {
        assert!(names_crate(code, ident), "{code}");
    }
    for code in [
        "pub kinde_emulator: bool,",
        "if args.kinde_emulator {",
        "kinde_emulator_listen: addr,",
        "let my_kinde_emulator = 1;",
    ] {
        assert!(!names_crate(code, ident), "{code}");
    }
}

#[test]
fn the_operator_library_never_imports_the_emulator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let main = src.join("main.rs");
    // The binary is the one place allowed to wire the emulator in; if it stopped doing so,
    // this test would no longer look at the right tree.
    let main_text = std::fs::read_to_string(&main).expect("src/main.rs");
    assert!(
        main_text.contains("kinde_emulator"),
        "src/main.rs no longer uses kinde_emulator: update this test"
    );
    let hits = code_mentions(&src, &[main.as_path()], "kinde_emulator");
    assert!(
        hits.is_empty(),
        "the operator library imports the emulator (only src/main.rs and tests may):\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_emulator_depends_on_nothing_of_the_operator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let emulator = packages
        .iter()
        .find(|p| p["name"] == "kinde-emulator")
        .expect("the workspace has a kinde-emulator package");
    let deps: Vec<&str> = emulator["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(!deps.is_empty(), "no dependencies read from the metadata");
    assert!(
        !deps.contains(&"kinde-m2m-operator"),
        "kinde-emulator depends on the operator: {deps:?}"
    );
    // And no source path reaches into the operator's tree instead.
    let emulator_src = root.join("crates/kinde-emulator/src");
    let hits = code_mentions(&emulator_src, &[], "kinde_m2m_operator");
    assert!(
        hits.is_empty(),
        "the emulator names the operator crate:\n{}",
        hits.join("\n")
    );
}
