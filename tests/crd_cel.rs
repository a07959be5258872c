//! Every CEL rule (`x-kubernetes-validations`) of the committed CRDs, evaluated client-side
//! with kube's `cel` feature against the schema as it is written in `crds/*.yaml` (which
//! `crd_drift.rs` keeps equal to the Rust types). Each rule has passing and failing objects,
//! on create and on update; a rule without both fails `every_rule_is_covered`.

use std::{collections::BTreeSet, path::Path};

use kube::core::cel::Validator;
use serde_json::{Value, json};

/// The openAPIV3Schema of the committed CRD with this plural.
fn schema(plural: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("crds/{plural}.m2m.kinde-operator.io.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crd: Value = serde_yaml::from_str(&text).expect("CRD YAML parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// All rules in a schema, as `plural: rule`.
fn rules_of(plural: &str, schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "x-kubernetes-validations" {
                    for r in v.as_array().expect("rules are a list") {
                        out.insert(format!(
                            "{plural}: {}",
                            r["rule"].as_str().expect("rule text")
                        ));
                    }
                } else {
                    rules_of(plural, v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| rules_of(plural, v, out)),
        _ => {}
    }
}

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "m2m.kinde-operator.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "example", "namespace": "platform"},
        "spec": spec,
    })
}

fn api(spec: Value) -> Value {
    object("ApiRegistration", spec)
}

fn app(spec: Value) -> Value {
    object("M2MApplication", spec)
}

struct Case {
    name: &'static str,
    plural: &'static str,
    /// Substring of the rule text this case targets.
    rule: &'static str,
    new: Value,
    old: Option<Value>,
    /// `None`: must pass; `Some(field)`: must fail on the targeted rule, with a message
    /// naming `field`.
    fails_naming: Option<&'static str>,
}

const AUDIENCE: &str = "self == oldSelf";
const API_DISPLAY_NAME: &str = "has(self.displayName)";
const GRANT_POLICY: &str = "self.from == 'Selector'";
const ORG_CODE: &str = "has(self.organizationCode)";
const DISTINCT_KEYS: &str = "'KINDE_CLIENT_SECRET')) &&";
const OMIT_RENAMED: &str = "'tokenUrl' in self.omit && has(self.tokenUrl)";
const TOKEN_LIFETIME: &str = "duration('24h')";

fn cases() -> Vec<Case> {
    let base = || json!({"audience": "https://api.example.com"});
    let with = |extra: Value| {
        let mut spec = base();
        for (k, v) in extra.as_object().expect("object").clone() {
            spec[k] = v;
        }
        spec
    };
    let selector = json!({"matchLabels": {"kinde-m2m-operator.io/customer": "true"}});
    vec![
        // --- ApiRegistration spec.audience: immutable.
        Case {
            name: "audience: create",
            plural: "apiregistrations",
            rule: AUDIENCE,
            new: api(base()),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "audience: update keeping it (scopes change)",
            plural: "apiregistrations",
            rule: AUDIENCE,
            new: api(with(json!({"scopes": [{"key": "read:users"}]}))),
            old: Some(api(base())),
            fails_naming: None,
        },
        Case {
            name: "audience: update changing it",
            plural: "apiregistrations",
            rule: AUDIENCE,
            new: api(json!({"audience": "https://other.example.com"})),
            old: Some(api(base())),
            fails_naming: Some("spec.audience"),
        },
        // --- ApiRegistration spec.displayName: immutable, incl. adding and removing.
        Case {
            name: "displayName: create with it",
            plural: "apiregistrations",
            rule: API_DISPLAY_NAME,
            new: api(with(json!({"displayName": "Example"}))),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "displayName: update keeping it",
            plural: "apiregistrations",
            rule: API_DISPLAY_NAME,
            new: api(with(
                json!({"displayName": "Example", "deletionPolicy": "Orphan"}),
            )),
            old: Some(api(with(json!({"displayName": "Example"})))),
            fails_naming: None,
        },
        Case {
            name: "displayName: update, absent before and after",
            plural: "apiregistrations",
            rule: API_DISPLAY_NAME,
            new: api(with(json!({"deletionPolicy": "Delete"}))),
            old: Some(api(base())),
            fails_naming: None,
        },
        Case {
            name: "displayName: update changing it",
            plural: "apiregistrations",
            rule: API_DISPLAY_NAME,
            new: api(with(json!({"displayName": "Renamed"}))),
            old: Some(api(with(json!({"displayName": "Example"})))),
            fails_naming: Some("spec.displayName"),
        },
        Case {
            name: "displayName: update adding it",
            plural: "apiregistrations",
            rule: API_DISPLAY_NAME,
            new: api(with(json!({"displayName": "Example"}))),
            old: Some(api(base())),
            fails_naming: Some("spec.displayName"),
        },
        Case {
            name: "displayName: update removing it",
            plural: "apiregistrations",
            rule: API_DISPLAY_NAME,
            new: api(base()),
            old: Some(api(with(json!({"displayName": "Example"})))),
            fails_naming: Some("spec.displayName"),
        },
        // --- ApiRegistration spec.grantPolicy: namespaceSelector exactly when from == Selector.
        Case {
            name: "grantPolicy: omitted (defaults to Same)",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(base()),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "grantPolicy: Selector with selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(
                json!({"grantPolicy": {"from": "Selector", "namespaceSelector": selector}}),
            )),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "grantPolicy: All without selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(json!({"grantPolicy": {"from": "All"}}))),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "grantPolicy: update Same -> Selector with selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(
                json!({"grantPolicy": {"from": "Selector", "namespaceSelector": selector}}),
            )),
            old: Some(api(with(json!({"grantPolicy": {"from": "Same"}})))),
            fails_naming: None,
        },
        Case {
            name: "grantPolicy: Selector without selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(json!({"grantPolicy": {"from": "Selector"}}))),
            old: None,
            fails_naming: Some("spec.grantPolicy.namespaceSelector"),
        },
        Case {
            name: "grantPolicy: All with selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(
                json!({"grantPolicy": {"from": "All", "namespaceSelector": selector}}),
            )),
            old: None,
            fails_naming: Some("spec.grantPolicy.namespaceSelector"),
        },
        Case {
            name: "grantPolicy: from omitted (Same) with selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(
                json!({"grantPolicy": {"namespaceSelector": selector}}),
            )),
            old: None,
            fails_naming: Some("spec.grantPolicy.namespaceSelector"),
        },
        Case {
            name: "grantPolicy: update dropping the selector but keeping Selector",
            plural: "apiregistrations",
            rule: GRANT_POLICY,
            new: api(with(json!({"grantPolicy": {"from": "Selector"}}))),
            old: Some(api(with(
                json!({"grantPolicy": {"from": "Selector", "namespaceSelector": selector}}),
            ))),
            fails_naming: Some("spec.grantPolicy.namespaceSelector"),
        },
        // --- M2MApplication spec.organizationCode: immutable, incl. adding and removing.
        Case {
            name: "organizationCode: create with it",
            plural: "m2mapplications",
            rule: ORG_CODE,
            new: app(json!({"organizationCode": "org_123"})),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "organizationCode: update keeping it",
            plural: "m2mapplications",
            rule: ORG_CODE,
            new: app(json!({"organizationCode": "org_123", "displayName": "Acme"})),
            old: Some(app(json!({"organizationCode": "org_123"}))),
            fails_naming: None,
        },
        Case {
            name: "organizationCode: update, absent before and after",
            plural: "m2mapplications",
            rule: ORG_CODE,
            new: app(json!({"displayName": "Acme"})),
            old: Some(app(json!({}))),
            fails_naming: None,
        },
        Case {
            name: "organizationCode: update changing it",
            plural: "m2mapplications",
            rule: ORG_CODE,
            new: app(json!({"organizationCode": "org_456"})),
            old: Some(app(json!({"organizationCode": "org_123"}))),
            fails_naming: Some("spec.organizationCode"),
        },
        Case {
            name: "organizationCode: update adding it",
            plural: "m2mapplications",
            rule: ORG_CODE,
            new: app(json!({"organizationCode": "org_123"})),
            old: Some(app(json!({}))),
            fails_naming: Some("spec.organizationCode"),
        },
        Case {
            name: "organizationCode: update removing it",
            plural: "m2mapplications",
            rule: ORG_CODE,
            new: app(json!({})),
            old: Some(app(json!({"organizationCode": "org_123"}))),
            fails_naming: Some("spec.organizationCode"),
        },
        // --- M2MApplication spec.secret.keys: no two keys share a name (defaults included,
        // omitted ones excluded).
        Case {
            name: "secret keys: Envoy Gateway style",
            plural: "m2mapplications",
            rule: DISTINCT_KEYS,
            new: app(keys(
                json!({"clientId": "client-id", "clientSecret": "client-secret", "omit": ["audience", "tokenUrl"]}),
            )),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "secret keys: an omitted key frees its default name",
            plural: "m2mapplications",
            rule: DISTINCT_KEYS,
            new: app(keys(
                json!({"clientId": "KINDE_AUDIENCE", "omit": ["audience"]}),
            )),
            old: Some(app(json!({}))),
            fails_naming: None,
        },
        Case {
            name: "secret keys: renamed onto another default",
            plural: "m2mapplications",
            rule: DISTINCT_KEYS,
            new: app(keys(json!({"clientSecret": "KINDE_CLIENT_ID"}))),
            old: None,
            fails_naming: Some("spec.secret.keys"),
        },
        Case {
            name: "secret keys: update giving two the same name",
            plural: "m2mapplications",
            rule: DISTINCT_KEYS,
            new: app(keys(json!({"domain": "x", "tokenUrl": "x"}))),
            old: Some(app(keys(json!({"domain": "x"})))),
            fails_naming: Some("spec.secret.keys"),
        },
        // --- spec.secret.keys.omit: a key is renamed or omitted, not both.
        Case {
            name: "omit: an unrenamed key",
            plural: "m2mapplications",
            rule: OMIT_RENAMED,
            new: app(keys(json!({"audience": "aud", "omit": ["tokenUrl"]}))),
            old: None,
            fails_naming: None,
        },
        Case {
            name: "omit: a renamed key",
            plural: "m2mapplications",
            rule: OMIT_RENAMED,
            new: app(keys(json!({"audience": "aud", "omit": ["audience"]}))),
            old: None,
            fails_naming: Some("spec.secret.keys.omit"),
        },
        Case {
            name: "omit: update omitting a renamed key",
            plural: "m2mapplications",
            rule: OMIT_RENAMED,
            new: app(keys(json!({"tokenUrl": "url", "omit": ["tokenUrl"]}))),
            old: Some(app(keys(json!({"tokenUrl": "url"})))),
            fails_naming: Some("spec.secret.keys.omit"),
        },
        Case {
            name: "omit: update keeping it valid",
            plural: "m2mapplications",
            rule: OMIT_RENAMED,
            new: app(keys(json!({"omit": ["tokenUrl", "audience"]}))),
            old: Some(app(keys(json!({"omit": ["audience"]})))),
            fails_naming: None,
        },
        // --- spec.tokens.accessTokenLifetime: 1m to 24h.
        Case {
            name: "accessTokenLifetime: in range",
            plural: "m2mapplications",
            rule: TOKEN_LIFETIME,
            new: app(json!({"tokens": {"accessTokenLifetime": "90m"}})),
            old: Some(app(json!({"tokens": {"accessTokenLifetime": "1h"}}))),
            fails_naming: None,
        },
        Case {
            name: "accessTokenLifetime: the bounds",
            plural: "m2mapplications",
            rule: TOKEN_LIFETIME,
            new: app(json!({"tokens": {"accessTokenLifetime": "24h"}})),
            old: Some(app(json!({"tokens": {"accessTokenLifetime": "1m"}}))),
            fails_naming: None,
        },
        Case {
            name: "accessTokenLifetime: too short",
            plural: "m2mapplications",
            rule: TOKEN_LIFETIME,
            new: app(json!({"tokens": {"accessTokenLifetime": "59s"}})),
            old: None,
            fails_naming: Some("spec.tokens.accessTokenLifetime"),
        },
        Case {
            name: "accessTokenLifetime: update to too long",
            plural: "m2mapplications",
            rule: TOKEN_LIFETIME,
            new: app(json!({"tokens": {"accessTokenLifetime": "25h"}})),
            old: Some(app(json!({"tokens": {"accessTokenLifetime": "1h"}}))),
            fails_naming: Some("spec.tokens.accessTokenLifetime"),
        },
    ]
}

/// An M2MApplication spec with these `spec.secret.keys`.
fn keys(keys: Value) -> Value {
    json!({"secret": {"keys": keys}})
}

#[test]
fn cel_rules_accept_and_refuse() {
    let validator = Validator::new();
    let mut failures = vec![];
    for case in cases() {
        let schema = schema(case.plural);
        let result = validator.validate(&schema, &case.new, case.old.as_ref());
        match (case.fails_naming, result) {
            (None, Ok(())) => {}
            (None, Err(errors)) => {
                failures.push(format!("{}: expected to pass, got {errors:?}", case.name))
            }
            (Some(_), Ok(())) => {
                failures.push(format!("{}: expected to be refused, passed", case.name))
            }
            (Some(field), Err(errors)) => {
                let hit = errors.iter().find(|e| e.rule.contains(case.rule));
                match hit {
                    None => failures.push(format!(
                        "{}: refused, but not by rule `{}`: {errors:?}",
                        case.name, case.rule
                    )),
                    Some(e) if !e.message.contains(field) => failures.push(format!(
                        "{}: message {:?} does not name {field}",
                        case.name, e.message
                    )),
                    Some(_) if errors.len() > 1 => failures.push(format!(
                        "{}: more than one rule failed: {errors:?}",
                        case.name
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "CEL cases failed:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn every_rule_is_covered() {
    let mut in_schema = BTreeSet::new();
    for plural in ["apiregistrations", "m2mapplications", "apigrants"] {
        rules_of(plural, &schema(plural), &mut in_schema);
    }
    let cases = cases();
    for rule in &in_schema {
        let (plural, text) = rule.split_once(": ").expect("plural: rule");
        let targeting = |c: &&Case| c.plural == plural && text.contains(c.rule);
        let mut matching = cases.iter().filter(targeting);
        let kinds: BTreeSet<(bool, bool)> = matching
            .by_ref()
            .map(|c| (c.fails_naming.is_some(), c.old.is_some()))
            .collect();
        assert!(
            kinds.contains(&(false, false)) || kinds.contains(&(false, true)),
            "{rule}: no passing case"
        );
        assert!(
            kinds.contains(&(true, false)) || kinds.contains(&(true, true)),
            "{rule}: no failing case"
        );
        assert!(
            kinds.iter().any(|(_, update)| *update),
            "{rule}: no update case"
        );
    }
    // Each case's target must name exactly one schema rule (no dangling or ambiguous targets).
    for case in &cases {
        let n = in_schema
            .iter()
            .filter(|r| r.starts_with(&format!("{}: ", case.plural)) && r.contains(case.rule))
            .count();
        assert_eq!(
            n, 1,
            "{}: target `{}` matches {n} rules in {:?}",
            case.name, case.rule, in_schema
        );
    }
    assert_eq!(
        in_schema.len(),
        7,
        "new CEL rule? add cases for it: {in_schema:?}"
    );
}

/// Every rule compiles, refers only to CRD-validation variables, and fits the apiserver's
/// cost budget with the schema's bounds (kube-cel's static analysis).
#[test]
fn rules_compile_within_scope_and_budget() {
    use kube::core::cel::{CompiledSchema, ScopeContext, analyze_rule, compile_schema};

    fn check(path: &str, node: &CompiledSchema, seen: &mut usize, problems: &mut Vec<String>) {
        for compiled in &node.validations {
            match compiled {
                Ok(result) => {
                    *seen += 1;
                    for w in analyze_rule(&result.rule.rule, node, ScopeContext::CrdValidation) {
                        problems.push(format!("{path}: {}: {}", result.rule.rule, w.message));
                    }
                    if result.rule.message.as_deref().is_none_or(str::is_empty) {
                        problems.push(format!("{path}: {}: no message", result.rule.rule));
                    }
                }
                Err(e) => problems.push(format!("{path}: does not compile: {e:?}")),
            }
        }
        for (name, child) in &node.properties {
            check(&format!("{path}.{name}"), child, seen, problems);
        }
        if let Some(items) = &node.items {
            check(&format!("{path}[]"), items, seen, problems);
        }
    }

    let mut seen = 0;
    let mut problems = vec![];
    for plural in ["apiregistrations", "m2mapplications", "apigrants"] {
        check(
            plural,
            &compile_schema(&schema(plural)),
            &mut seen,
            &mut problems,
        );
    }
    assert!(
        problems.is_empty(),
        "CEL rule problems:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(seen, 7);
}
