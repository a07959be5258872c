//! A small, strict validator for the OpenAPI 3.0 schema subset that
//! `management-api.yaml` uses, and lookups of operations, responses and request bodies.
//!
//! Strict means: any schema keyword it does not implement is an error of the *schema*
//! (`Err`), never silently ignored, so a validation can only pass when every constraint
//! was understood and checked. Supported: `$ref` (`#/...` pointers), `type` (string,
//! integer, number, boolean, array, object), `nullable`, `properties`, `required`,
//! `additionalProperties` (bool or schema), `items`, `enum`, `allOf`, `anyOf`, `oneOf`;
//! annotations `description`, `example`, `title`.
#![allow(dead_code)]

use serde_json::Value;

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "example", "title"];
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "nullable",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "allOf",
    "anyOf",
    "oneOf",
];
const MAX_DEPTH: usize = 64;

/// A parsed OpenAPI document.
pub struct Spec {
    pub doc: Value,
}

impl Spec {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        Ok(Self { doc })
    }

    /// Follows `$ref`s until a non-reference node.
    pub fn resolve<'a>(&'a self, mut node: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..MAX_DEPTH {
            let Some(r) = node.get("$ref") else {
                return Ok(node);
            };
            let r = r.as_str().ok_or("$ref is not a string")?;
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("external $ref {r:?} not supported"))?;
            node = self
                .doc
                .pointer(pointer)
                .ok_or_else(|| format!("dangling $ref {r:?}"))?;
        }
        Err("$ref chain too long".into())
    }

    /// `(method, path, operation object)` of an `operationId`.
    pub fn operation(&self, id: &str) -> Result<(String, String, &Value), String> {
        let paths = self
            .doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("spec has no paths")?;
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                if op.get("operationId").and_then(Value::as_str) == Some(id) {
                    return Ok((method.to_ascii_uppercase(), path.clone(), op));
                }
            }
        }
        Err(format!("operationId {id:?} not in the spec"))
    }

    /// The documented 2xx status codes of an operation.
    pub fn success_statuses(&self, id: &str) -> Result<Vec<u16>, String> {
        let (_, _, op) = self.operation(id)?;
        let responses = op
            .get("responses")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{id}: no responses"))?;
        Ok(responses
            .keys()
            .filter_map(|k| k.parse::<u16>().ok())
            .filter(|s| (200..300).contains(s))
            .collect())
    }

    /// The JSON schema of `id`'s response with `status`: `Ok(Some)` with a schema,
    /// `Ok(None)` when documented without a body, `Err` when the status is not documented.
    pub fn response_schema(&self, id: &str, status: u16) -> Result<Option<&Value>, String> {
        let (_, _, op) = self.operation(id)?;
        let response = op
            .get("responses")
            .and_then(|r| r.get(status.to_string()))
            .ok_or_else(|| format!("{id}: status {status} is not documented"))?;
        let response = self.resolve(response)?;
        match response.get("content") {
            None => Ok(None),
            Some(content) => {
                let media = content
                    .get("application/json")
                    .or_else(|| content.get("application/json; charset=utf-8"))
                    .ok_or_else(|| format!("{id} {status}: no application/json content"))?;
                media
                    .get("schema")
                    .map(Some)
                    .ok_or_else(|| format!("{id} {status}: content without schema"))
            }
        }
    }

    /// The JSON schema of `id`'s request body, if it has one.
    pub fn request_schema(&self, id: &str) -> Result<Option<&Value>, String> {
        let (_, _, op) = self.operation(id)?;
        let Some(body) = op.get("requestBody") else {
            return Ok(None);
        };
        let body = self.resolve(body)?;
        body.pointer("/content/application~1json/schema")
            .map(Some)
            .ok_or_else(|| format!("{id}: request body without an application/json schema"))
    }

    /// `#/components/schemas/<name>`.
    pub fn component(&self, name: &str) -> Result<&Value, String> {
        self.doc
            .pointer(&format!("/components/schemas/{name}"))
            .ok_or_else(|| format!("no schema {name:?}"))
    }

    pub fn validator(&self) -> Validator<'_> {
        Validator {
            spec: self,
            deny_unknown_properties: false,
        }
    }
}

/// Validates instances against schemas of one spec.
pub struct Validator<'a> {
    spec: &'a Spec,
    /// Treat properties a schema does not list as errors even without
    /// `additionalProperties: false` (catches misspelt or undocumented fields).
    pub deny_unknown_properties: bool,
}

impl Validator<'_> {
    /// `Ok(violations)` (empty = valid), or `Err` when the schema uses something this
    /// validator does not understand.
    pub fn validate(&self, schema: &Value, instance: &Value) -> Result<Vec<String>, String> {
        self.lint(schema, "$", 0)?;
        let mut errors = Vec::new();
        self.check(schema, instance, "$", 0, &mut errors)?;
        Ok(errors)
    }

    /// Walks the whole schema (through `$ref`s), refusing any keyword or keyword value
    /// this validator does not implement, whether or not an instance would reach it.
    pub fn lint(&self, schema: &Value, at: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            // Recursive schemas end here: everything up to this depth was checked.
            return Ok(());
        }
        let obj = schema
            .as_object()
            .ok_or_else(|| format!("{at}: schema is not an object: {schema}"))?;
        if obj.contains_key("$ref") {
            return self.lint(self.spec.resolve(schema)?, at, depth + 1);
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !KEYWORDS.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(format!("{at}: unsupported schema keyword {k:?}"));
        }
        if let Some(t) = obj.get("type") {
            match t.as_str() {
                Some("string" | "integer" | "number" | "boolean" | "array" | "object") => {}
                _ => return Err(format!("{at}: unknown type {t}")),
            }
        }
        if obj.get("type").and_then(Value::as_str) == Some("array") && !obj.contains_key("items") {
            return Err(format!("{at}: array schema without items"));
        }
        if let Some(p) = obj.get("properties") {
            let p = p
                .as_object()
                .ok_or_else(|| format!("{at}: properties is not an object"))?;
            for (name, sub) in p {
                self.lint(sub, &format!("{at}.{name}"), depth + 1)?;
            }
        }
        if let Some(items) = obj.get("items") {
            self.lint(items, &format!("{at}[]"), depth + 1)?;
        }
        if let Some(sub @ Value::Object(_)) = obj.get("additionalProperties") {
            self.lint(sub, &format!("{at}.*"), depth + 1)?;
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(list) = obj.get(key).and_then(Value::as_array) {
                for (i, sub) in list.iter().enumerate() {
                    self.lint(sub, &format!("{at}<{key}[{i}]>"), depth + 1)?;
                }
            }
        }
        Ok(())
    }

    fn check(
        &self,
        schema: &Value,
        v: &Value,
        at: &str,
        depth: usize,
        errors: &mut Vec<String>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{at}: schema nesting too deep"));
        }
        let obj = schema
            .as_object()
            .ok_or_else(|| format!("{at}: schema is not an object: {schema}"))?;
        if obj.contains_key("$ref") {
            if let Some(k) = obj
                .keys()
                .find(|k| *k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return Err(format!("{at}: keyword {k:?} next to $ref"));
            }
            let target = self.spec.resolve(schema)?;
            return self.check(target, v, at, depth + 1, errors);
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !KEYWORDS.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(format!("{at}: unsupported schema keyword {k:?}"));
        }
        let nullable = match obj.get("nullable") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("{at}: nullable is not a boolean: {other}")),
        };
        if v.is_null() {
            if !nullable {
                errors.push(format!("{at}: null where the schema is not nullable"));
            }
            return Ok(());
        }
        if let Some(t) = obj.get("type") {
            let t = t
                .as_str()
                .ok_or_else(|| format!("{at}: type is not a string"))?;
            let ok = match t {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                other => return Err(format!("{at}: unknown type {other:?}")),
            };
            if !ok {
                errors.push(format!("{at}: expected {t}, got {v}"));
                return Ok(());
            }
        }
        if let Some(e) = obj.get("enum") {
            let allowed = e
                .as_array()
                .ok_or_else(|| format!("{at}: enum is not an array"))?;
            if !allowed.contains(v) {
                errors.push(format!("{at}: {v} is not one of {e}"));
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            let Some(list) = obj.get(key) else { continue };
            let list = list
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| format!("{at}: {key} is not a non-empty array"))?;
            let mut passing = 0;
            let mut all_errors = Vec::new();
            for (i, sub) in list.iter().enumerate() {
                let mut sub_errors = Vec::new();
                self.check(
                    sub,
                    v,
                    &format!("{at}<{key}[{i}]>"),
                    depth + 1,
                    &mut sub_errors,
                )?;
                if sub_errors.is_empty() {
                    passing += 1;
                }
                all_errors.extend(sub_errors);
            }
            match key {
                "allOf" => errors.extend(all_errors),
                "anyOf" if passing == 0 => {
                    errors.push(format!("{at}: matches none of anyOf ({all_errors:?})"))
                }
                "oneOf" if passing != 1 => errors.push(format!(
                    "{at}: matches {passing} of oneOf, expected exactly 1 ({all_errors:?})"
                )),
                _ => {}
            }
        }
        if let Some(items) = obj.get("items") {
            if let Some(arr) = v.as_array() {
                for (i, item) in arr.iter().enumerate() {
                    self.check(items, item, &format!("{at}[{i}]"), depth + 1, errors)?;
                }
            }
        } else if obj.get("type").and_then(Value::as_str) == Some("array") {
            return Err(format!("{at}: array schema without items"));
        }
        let props = match obj.get("properties") {
            None => None,
            Some(p) => Some(
                p.as_object()
                    .ok_or_else(|| format!("{at}: properties is not an object"))?,
            ),
        };
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(r) => r
                .as_array()
                .and_then(|r| r.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| format!("{at}: required is not a list of strings"))?,
        };
        if let Some(map) = v.as_object() {
            for name in &required {
                if !map.contains_key(*name) {
                    errors.push(format!("{at}: missing required property {name:?}"));
                }
            }
            let additional = obj.get("additionalProperties");
            for (name, value) in map {
                let here = format!("{at}.{name}");
                if let Some(sub) = props.and_then(|p| p.get(name)) {
                    self.check(sub, value, &here, depth + 1, errors)?;
                    continue;
                }
                match additional {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{here}: property not allowed"))
                    }
                    Some(Value::Bool(true)) => {}
                    Some(sub @ Value::Object(_)) => {
                        self.check(sub, value, &here, depth + 1, errors)?
                    }
                    Some(other) => {
                        return Err(format!("{at}: additionalProperties is {other}"));
                    }
                    None if self.deny_unknown_properties && props.is_some() => {
                        errors.push(format!("{here}: property not in the schema"))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Spec {
        Spec::from_yaml(
            r#"
paths:
  /things:
    post:
      operationId: addThing
      requestBody:
        content:
          application/json:
            schema: { $ref: '#/components/schemas/thing' }
      responses:
        '201':
          $ref: '#/components/responses/created'
        '204':
          description: nothing
components:
  responses:
    created:
      description: made
      content:
        application/json:
          schema: { $ref: '#/components/schemas/thing' }
  schemas:
    thing:
      type: object
      description: a thing
      required: [name, kind]
      properties:
        name: { type: string, example: x }
        kind: { type: string, enum: [a, b] }
        count: { type: integer }
        ratio: { type: number }
        on: { type: boolean }
        tags: { type: array, items: { type: string } }
        note: { type: string, nullable: true }
        inner:
          type: object
          additionalProperties: false
          properties:
            id: { type: string }
"#,
        )
        .unwrap()
    }

    fn errors(schema: &Value, v: Value) -> Vec<String> {
        let s = spec();
        s.validator().validate(schema, &v).unwrap()
    }

    fn thing() -> Value {
        json!({"$ref": "#/components/schemas/thing"})
    }

    #[test]
    fn accepts_a_valid_instance() {
        let ok = json!({"name": "n", "kind": "a", "count": 3, "ratio": 0.5, "on": true,
            "tags": ["x"], "note": null, "inner": {"id": "i"}, "extra": 1});
        assert_eq!(errors(&thing(), ok), Vec::<String>::new());
    }

    #[test]
    fn rejects_wrong_types() {
        for (field, bad) in [
            ("name", json!(1)),
            ("count", json!(1.5)),
            ("count", json!("3")),
            ("ratio", json!("0.5")),
            ("on", json!("true")),
            ("tags", json!("x")),
            ("inner", json!([])),
        ] {
            let mut v = json!({"name": "n", "kind": "a"});
            v[field] = bad.clone();
            assert_eq!(errors(&thing(), v).len(), 1, "{field} = {bad}");
        }
        assert_eq!(errors(&thing(), json!(["not an object"])).len(), 1);
        let tags = errors(
            &thing(),
            json!({"name": "n", "kind": "a", "tags": ["ok", 2]}),
        );
        assert!(tags[0].starts_with("$.tags[1]"), "{tags:?}");
    }

    #[test]
    fn rejects_missing_required_fields() {
        let e = errors(&thing(), json!({"name": "n"}));
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("\"kind\""), "{e:?}");
    }

    #[test]
    fn rejects_bad_enum_values() {
        assert_eq!(errors(&thing(), json!({"name": "n", "kind": "c"})).len(), 1);
    }

    #[test]
    fn null_only_where_nullable() {
        assert_eq!(
            errors(&thing(), json!({"name": null, "kind": "a"})).len(),
            1
        );
        assert!(errors(&thing(), json!({"name": "n", "kind": "a", "note": null})).is_empty());
    }

    #[test]
    fn additional_properties() {
        let e = errors(
            &thing(),
            json!({"name": "n", "kind": "a", "inner": {"id": "i", "x": 1}}),
        );
        assert_eq!(e.len(), 1, "{e:?}");
        let s = spec();
        let mut strict = s.validator();
        strict.deny_unknown_properties = true;
        let e = strict
            .validate(&thing(), &json!({"name": "n", "kind": "a", "extra": 1}))
            .unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        let map = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        assert!(errors(&map, json!({"a": 1})).is_empty());
        assert_eq!(errors(&map, json!({"a": "1"})).len(), 1);
    }

    #[test]
    fn composition() {
        let one_of =
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]});
        assert!(errors(&one_of, json!("s")).is_empty());
        assert_eq!(
            errors(&one_of, json!(1)).len(),
            1,
            "integer is also a number"
        );
        let any_of = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(errors(&any_of, json!(1)).is_empty());
        assert_eq!(errors(&any_of, json!(true)).len(), 1);
        let all_of = json!({"allOf": [thing(), {"required": ["count"]}]});
        assert_eq!(errors(&all_of, json!({"name": "n", "kind": "a"})).len(), 1);
    }

    #[test]
    fn unknown_keywords_are_schema_errors() {
        let s = spec();
        let v = s.validator();
        for schema in [
            json!({"type": "string", "maxLength": 3}),
            json!({"type": "string", "format": "uuid"}),
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
            json!({"type": "timestamp"}),
            json!({"$ref": "#/components/schemas/nope"}),
            json!({"$ref": "other.yaml#/x"}),
            json!({"type": "array"}),
        ] {
            assert!(
                v.validate(&schema, &json!({"a": "x"})).is_err(),
                "{schema} accepted"
            );
            assert!(
                v.validate(&schema, &json!([])).is_err(),
                "{schema} accepted"
            );
        }
        // Found even where the instance never goes.
        let deep = json!({"type": "object", "properties": {"b": {"items": {"type": "string", "minLength": 1}, "type": "array"}}});
        assert!(v.validate(&deep, &json!({})).is_err());
    }

    #[test]
    fn spec_lookups() {
        let s = spec();
        assert_eq!(s.success_statuses("addThing").unwrap(), vec![201, 204]);
        assert!(s.response_schema("addThing", 201).unwrap().is_some());
        assert!(s.response_schema("addThing", 204).unwrap().is_none());
        assert!(s.response_schema("addThing", 400).is_err());
        assert!(s.request_schema("addThing").unwrap().is_some());
        assert!(s.operation("nothing").is_err());
    }
}
