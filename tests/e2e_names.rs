//! Every end-to-end test is registered as `<file>::<function>` (plus
//! `support::NOT_FOUND_404_SUFFIX` for a 404-mode variant), so a failing name can be grepped
//! straight to its body. Reads the sources of `tests/e2e/*.rs`; needs no control plane.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// A registered name, `area::name` (with `{}` when the 404 suffix is formatted onto it).
struct Registration {
    area: String,
    name: String,
    /// Source text after the name up to the next registration: must call the function.
    rest: String,
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `word` occurs in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The body of `pub fn tests()` (up to the first closing brace at column 0).
fn tests_fn(source: &str) -> Option<&str> {
    let start = source.find("pub fn tests()")?;
    let len = source[start..].find("\n}\n")?;
    Some(&source[start..start + len])
}

/// The `"area::name"` string literals in `body`, in order.
fn registrations(body: &str) -> Vec<Registration> {
    let mut found: Vec<(usize, usize, String, String)> = Vec::new();
    let mut rest = body;
    let mut offset = 0;
    while let Some(open) = rest.find('"') {
        let Some(len) = rest[open + 1..].find('"') else {
            break;
        };
        let literal = &rest[open + 1..open + 1 + len];
        let literal_name = literal.strip_suffix("{}").unwrap_or(literal);
        if let Some((area, name)) = literal_name.split_once("::")
            && is_ident(area)
            && is_ident(name)
        {
            found.push((
                offset + open,
                offset + open + len + 2,
                area.to_owned(),
                name.to_owned(),
            ));
        }
        offset += open + len + 2;
        rest = &rest[open + len + 2..];
    }
    found
        .iter()
        .enumerate()
        .map(|(i, (_, end, area, name))| Registration {
            area: area.clone(),
            name: name.clone(),
            rest: body[*end..found.get(i + 1).map_or(body.len(), |next| next.0)].to_owned(),
        })
        .collect()
}

/// The problems with one file's registrations (empty: all named after their function).
fn check_file(area: &str, source: &str) -> Vec<String> {
    let Some(body) = tests_fn(source) else {
        return Vec::new();
    };
    let regs = registrations(body);
    let mut problems = Vec::new();
    // Every registration call must carry a literal name this check can read.
    let calls = ["support::test(", "app_test(", "app_test_404("]
        .iter()
        .map(|call| body.matches(call).count())
        .sum::<usize>();
    if calls != regs.len() {
        problems.push(format!(
            "{area}: {calls} registrations but {} literal `{area}::name`s",
            regs.len()
        ));
    }
    for r in &regs {
        let what = format!("{}::{}", r.area, r.name);
        if r.area != area {
            problems.push(format!("{what}: registered in {area}.rs"));
        }
        if !has_word(&r.rest, &r.name) {
            problems.push(format!(
                "{what}: registered with another function (`{}`)",
                r.rest.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        if !source.contains(&format!("fn {}(", r.name)) {
            problems.push(format!("{what}: no `fn {}` in {area}.rs", r.name));
        }
    }
    problems
}

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

#[test]
fn e2e_tests_are_registered_under_their_function_name() {
    let mut problems = Vec::new();
    let mut total = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(e2e_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for path in files {
        let area = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let source = std::fs::read_to_string(&path).unwrap();
        if let Some(body) = tests_fn(&source) {
            total += registrations(body).len();
        }
        problems.extend(check_file(&area, &source));
    }
    // The areas main.rs runs all register something: a parser that found nothing is broken.
    assert!(total >= 80, "only {total} registrations found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_finds_a_mismatch() {
    let good = r#"
pub fn tests() -> Vec<E2eTest> {
    vec![
        support::test("x::alpha", alpha),
        support::test(&format!("x::beta{}", SUFFIX), |ctx| beta(ctx, 404)),
    ]
}
async fn alpha(ctx: Ctx) {}
async fn beta(ctx: Ctx, s: u16) {}
"#;
    assert_eq!(check_file("x", good), Vec::<String>::new());
    let renamed = good.replace("\"x::alpha\", alpha", "\"x::alpha_long\", alpha");
    assert_eq!(check_file("x", &renamed).len(), 2, "{renamed}");
    let other_fn = good.replace(
        "support::test(\"x::alpha\", alpha)",
        "support::test(\"x::alpha\", beta)",
    );
    assert_eq!(check_file("x", &other_fn).len(), 1);
    assert_eq!(check_file("y", good).len(), 2, "wrong area");
    let unnamed = good.replace("\"x::alpha\"", "name");
    assert_eq!(check_file("x", &unnamed).len(), 1);
}
