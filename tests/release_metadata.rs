//! The release's metadata agrees with itself: one version for the crate, the chart
//! (`version`, `appVersion`) and the changelog's latest release; the license file is the
//! one `Cargo.toml` names; the Dockerfile and `scripts/build-image` build the same image
//! (entrypoint, command, user, port).

use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key: value` / `key = "value"` on the first line starting with `key`.
fn field(text: &str, key: &str, sep: char) -> String {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix(sep))
        })
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no {key} line"))
}

#[test]
fn crate_chart_and_changelog_carry_one_version() {
    let version = field(&read("Cargo.toml"), "version", '=');
    let chart = read("charts/kinde-m2m-operator/Chart.yaml");
    assert_eq!(field(&chart, "version", ':'), version, "Chart.yaml version");
    assert_eq!(
        field(&chart, "appVersion", ':'),
        version,
        "Chart.yaml appVersion"
    );
    let changelog = read("CHANGELOG.md");
    let latest = changelog
        .lines()
        .filter_map(|l| l.strip_prefix("## ["))
        .map(|l| l.split(']').next().unwrap_or_default())
        .find(|v| *v != "Unreleased")
        .expect("a released version in CHANGELOG.md");
    assert_eq!(latest, version, "CHANGELOG.md's latest release");
}

#[test]
fn the_license_is_the_one_cargo_names() {
    assert_eq!(field(&read("Cargo.toml"), "license", '='), "Apache-2.0");
    let license = read("LICENSE");
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache License 2.0"
    );
}

#[test]
fn dockerfile_and_build_image_build_the_same_image() {
    let dockerfile = read("Dockerfile");
    let script = read("scripts/build-image");
    let docker = |instruction: &str| {
        dockerfile
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(instruction))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"))
    };
    let flag = |name: &str| {
        script
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| {
                v.trim()
                    .trim_end_matches('\\')
                    .trim()
                    .trim_matches('\'')
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("no {name} in scripts/build-image"))
    };
    assert_eq!(docker("ENTRYPOINT"), flag("--entrypoint"), "entrypoint");
    assert_eq!(docker("CMD"), format!("[\"{}\"]", flag("--cmd")), "command");
    assert_eq!(docker("USER"), flag("--user"), "user");
    assert_eq!(docker("EXPOSE"), flag("--port"), "port");
    assert!(
        dockerfile.contains("/usr/local/bin/kinde-m2m-operator")
            && script.contains("/usr/local/bin/kinde-m2m-operator"),
        "binary path"
    );
}
