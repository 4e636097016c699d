//! Typed reads from a parsed YAML mapping, so that every error names its field
//! (`parallel_run_config.run_max_try "many": must be an integer >= 1`) and unknown keys are
//! caught with a hint (`did you mean "run_max_try"?`).

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use crate::error::{PrsError, Result};

/// One YAML mapping being read: its entries, and the field path used in error messages.
pub(super) struct Section {
    /// Dotted field path, e.g. `parallel_run_config` or `inputs[2]`.
    path: String,
    /// The entries not read yet, with null values already dropped.
    entries: BTreeMap<String, Value>,
}

impl Section {
    /// Reads `value` as a mapping whose keys must all be in `allowed`. A null or absent value is
    /// an empty mapping.
    pub(super) fn new(path: impl Into<String>, value: Value, allowed: &[&str]) -> Result<Self> {
        let path = path.into();
        let mapping = match value {
            Value::Null => Mapping::new(),
            Value::Mapping(m) => m,
            other => {
                return Err(PrsError::config(
                    &path,
                    show(&other),
                    format!("must be a mapping with keys {}", allowed.join(", ")),
                ))
            }
        };
        let mut entries = BTreeMap::new();
        for (key, value) in mapping {
            let key = match key {
                Value::String(s) => s,
                other => {
                    return Err(PrsError::config(
                        &path,
                        show(&other),
                        "keys must be strings",
                    ));
                }
            };
            if !allowed.contains(&key.as_str()) {
                return Err(unknown_key(&path, &key, allowed));
            }
            if !value.is_null() {
                entries.insert(key, value);
            }
        }
        Ok(Section { path, entries })
    }

    /// The dotted field name of `key`, e.g. `parallel_run_config.run_max_try`.
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Is `key` given (and not null)?
    pub(super) fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes and returns `key`'s value; `None` when absent or null.
    pub(super) fn take(&mut self, key: &str) -> Option<Value> {
        self.entries.remove(key)
    }

    /// Which of `original` and its v2 `alias` is given (`original` when neither is); both at
    /// once is an error naming the two.
    pub(super) fn pick<'k>(&self, original: &'k str, alias: &'k str) -> Result<&'k str> {
        match (self.has(original), self.entries.get(alias)) {
            (true, Some(value)) => Err(PrsError::config(
                self.field(alias),
                show(value),
                format!(
                    "is another name for {}, which is also given; remove one of them",
                    self.field(original)
                ),
            )),
            (false, Some(_)) => Ok(alias),
            _ => Ok(original),
        }
    }

    /// A required value: missing is an error with `rule` as the explanation.
    pub(super) fn required<T>(&self, key: &str, rule: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| PrsError::missing(self.field(key), format!("required: {rule}")))
    }

    /// A string value; other types are an error quoting `rule`.
    pub(super) fn string(&mut self, key: &str, rule: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.type_error(key, &other, rule)),
        }
    }

    /// A scalar (string, number or boolean) as text, e.g. `mini_batch_size: 1024` -> `"1024"`.
    pub(super) fn scalar(&mut self, key: &str, rule: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match scalar_text(&value) {
                Some(text) => Ok(Some(text)),
                None => Err(self.type_error(key, &value, rule)),
            },
        }
    }

    /// An integer that fits `T` (numeric strings are accepted too); anything else, or a value
    /// out of `T`'s range, is an error quoting `rule`.
    pub(super) fn integer<T: TryFrom<i128>>(&mut self, key: &str, rule: &str) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match as_integer(&value).and_then(|i| T::try_from(i).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(self.type_error(key, &value, rule)),
            },
        }
    }

    /// A number (integer or decimal; numeric strings are accepted too).
    pub(super) fn number(&mut self, key: &str, rule: &str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => match as_number(&value) {
                Some(n) => Ok(Some(n)),
                None => Err(self.type_error(key, &value, rule)),
            },
        }
    }

    /// A boolean.
    pub(super) fn boolean(&mut self, key: &str, rule: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.type_error(key, &other, rule)),
        }
    }

    /// A list of scalars as text (a single scalar is not a list: that is an error).
    pub(super) fn string_list(&mut self, key: &str, rule: &str) -> Result<Option<Vec<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Sequence(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match scalar_text(item) {
                        Some(text) => out.push(text),
                        None => {
                            return Err(PrsError::config(
                                format!("{}[{i}]", self.field(key)),
                                show(item),
                                rule,
                            ))
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(other) => Err(self.type_error(key, &other, rule)),
        }
    }

    /// A mapping of scalars to scalars, as text (e.g. `environment_variables`).
    pub(super) fn string_map(
        &mut self,
        key: &str,
        rule: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => string_map(&self.field(key), value, rule).map(Some),
        }
    }

    /// A nested section (`retry_settings`, ...) with its own allowed keys.
    pub(super) fn section(&mut self, key: &str, allowed: &[&str]) -> Result<Option<Section>> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => Section::new(self.field(key), value, allowed).map(Some),
        }
    }

    /// The error for a value of the wrong type.
    fn type_error(&self, key: &str, value: &Value, rule: &str) -> PrsError {
        PrsError::config(self.field(key), show(value), rule)
    }
}

/// A mapping of scalars to scalars, as text; `field` names it in errors.
pub(super) fn string_map(
    field: &str,
    value: Value,
    rule: &str,
) -> Result<BTreeMap<String, String>> {
    let Value::Mapping(mapping) = value else {
        return Err(PrsError::config(field, show(&value), rule));
    };
    let mut out = BTreeMap::new();
    for (key, value) in &mapping {
        let name = scalar_text(key).ok_or_else(|| PrsError::config(field, show(key), rule))?;
        let text = scalar_text(value)
            .ok_or_else(|| PrsError::config(format!("{field}.{name}"), show(value), rule))?;
        out.insert(name, text);
    }
    Ok(out)
}

/// The error for a key that is not allowed, with a "did you mean" hint and the allowed keys.
pub(super) fn unknown_key(path: &str, key: &str, allowed: &[&str]) -> PrsError {
    let hint = closest(key, allowed)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    let field = if path.is_empty() { "job file" } else { path };
    PrsError::config(
        field,
        key,
        format!("unknown key{hint}; allowed keys: {}", allowed.join(", ")),
    )
}

/// The allowed key closest to `key` (a likely typo), if any is close enough.
pub(crate) fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|candidate| (strsim::levenshtein(&key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// A scalar's text: strings as is, numbers and booleans as written; `None` for the rest.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An integer value, also from a numeric string (`"5"`); `None` for decimals and the rest.
fn as_integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A numeric value, also from a numeric string.
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A value for an error message: scalars as written, collections as flow YAML.
pub(super) fn show(value: &Value) -> String {
    if let Some(text) = scalar_text(value) {
        return text;
    }
    match value {
        Value::Null => "null".to_string(),
        other => serde_json::to_string(other)
            .or_else(|_| serde_yaml::to_string(other).map(|s| s.trim_end().to_string()))
            .unwrap_or_else(|_| "(a value that cannot be shown)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str, allowed: &[&str]) -> Section {
        let value: Value = serde_yaml::from_str(text).unwrap();
        Section::new("prc", value, allowed).unwrap()
    }

    #[test]
    fn unknown_keys_get_a_hint_and_the_allowed_list() {
        let value: Value = serde_yaml::from_str("run_max_tries: 3").unwrap();
        let e = Section::new("prc", value, &["run_max_try", "node_count"])
            .err()
            .unwrap();
        let e = e.to_string();
        assert!(e.contains("prc \"run_max_tries\": unknown key"), "{e}");
        assert!(e.contains("did you mean \"run_max_try\"?"), "{e}");
        assert!(e.contains("allowed keys: run_max_try, node_count"), "{e}");
    }

    #[test]
    fn no_hint_for_unrelated_keys() {
        let e = unknown_key("", "zzz", &["output", "inputs"]).to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert!(e.starts_with("job file \"zzz\""), "{e}");
    }

    #[test]
    fn typed_reads() {
        let mut s = section(
            "{a: 5, b: '7', c: 1.5, d: x, e: [1, two], f: {K: 1}, g: true, h: null}",
            &["a", "b", "c", "d", "e", "f", "g", "h"],
        );
        assert_eq!(s.integer::<u32>("a", "int").unwrap(), Some(5));
        assert_eq!(s.integer::<i64>("b", "int").unwrap(), Some(7));
        assert_eq!(s.number("c", "num").unwrap(), Some(1.5));
        assert_eq!(s.string("d", "str").unwrap().as_deref(), Some("x"));
        assert_eq!(
            s.string_list("e", "list").unwrap(),
            Some(vec!["1".into(), "two".into()])
        );
        let map = s.string_map("f", "map").unwrap().unwrap();
        assert_eq!(map.get("K").map(String::as_str), Some("1"));
        assert_eq!(s.boolean("g", "bool").unwrap(), Some(true));
        assert!(!s.has("h"));
        assert_eq!(s.string("h", "str").unwrap(), None);
    }

    #[test]
    fn type_errors_name_the_field() {
        let mut s = section("{a: many, b: -1, c: 2.5}", &["a", "b", "c"]);
        let e = s
            .integer::<u32>("a", "must be an integer >= 1")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "prc.a \"many\": must be an integer >= 1");
        let e = s
            .integer::<u32>("b", "must be an integer >= 1")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "prc.b \"-1\": must be an integer >= 1");
        assert!(s.integer::<i64>("c", "int").is_err());
    }

    #[test]
    fn alias_with_original_is_an_error() {
        let s = section(
            "{node_count: 1, instance_count: 2}",
            &["node_count", "instance_count"],
        );
        let e = s
            .pick("node_count", "instance_count")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prc.instance_count") && e.contains("prc.node_count"),
            "{e}"
        );
        let s = section("{instance_count: 2}", &["node_count", "instance_count"]);
        assert_eq!(
            s.pick("node_count", "instance_count").unwrap(),
            "instance_count"
        );
        let s = section("{}", &["node_count", "instance_count"]);
        assert_eq!(
            s.pick("node_count", "instance_count").unwrap(),
            "node_count"
        );
    }

    #[test]
    fn show_renders_collections_compactly() {
        let value: Value = serde_yaml::from_str("[a, 1]").unwrap();
        assert_eq!(show(&value), r#"["a",1]"#);
        assert_eq!(show(&Value::Null), "null");
    }
}
