//! Named inputs and outputs and `${{...}}` references, shared by parallel-run's own job
//! layout ([`resolve_named`]) and the Azure v2 translation ([`crate::config::azure_v2`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::config::azure_v2::{absolute, V2Options};
use crate::config::yaml::{scalar_text, show};
use crate::error::{PrsError, Result};

/// Named inputs and outputs in parallel-run's own layout: an input marked `side: true` is not
/// cut into mini-batches (its path only reaches the arguments), a top-level `outputs:` maps
/// names to folders (created before init()), `${{inputs.NAME}}` / `${{outputs.NAME}}` in
/// `arguments` become absolute paths, and `--input` / `--output NAME=PATH` replace paths.
/// Returns the output folders.
pub fn resolve_named(
    root: &mut Mapping,
    base_dir: &Path,
    options: &V2Options,
) -> Result<Vec<PathBuf>> {
    let mut inputs: BTreeMap<String, String> = BTreeMap::new();
    if let Some(Value::Sequence(items)) = root.get_mut("inputs") {
        let mut kept = Vec::with_capacity(items.len());
        for mut item in std::mem::take(items) {
            let name = item.get("name").and_then(scalar_text);
            if let (Some(name), Value::Mapping(m)) = (&name, &mut item) {
                if let Some(path) = options.inputs.get(name) {
                    m.insert("path".into(), options.given_path(base_dir, path).into());
                }
                if let Some(path) = m.get("path").and_then(scalar_text) {
                    inputs.insert(name.clone(), absolute(base_dir, &path));
                }
                match m.remove("side") {
                    Some(Value::Bool(true)) => continue,
                    Some(Value::Bool(false)) | None => {}
                    Some(other) => {
                        return Err(PrsError::config(
                            format!("inputs.{name}.side"),
                            show(&other),
                            "must be true or false",
                        ))
                    }
                }
            }
            kept.push(item);
        }
        *items = kept;
    }
    for name in options.inputs.keys() {
        if !inputs.contains_key(name) {
            return Err(names_none("--input", name, "path input", inputs.keys()));
        }
    }
    let mut outputs: BTreeMap<String, String> = BTreeMap::new();
    match root.remove("outputs") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let (Some(name), Some(path)) = (k.as_str(), scalar_text(&v)) else {
                    return Err(PrsError::config(
                        "outputs",
                        show(&v),
                        "must map output names to folders, e.g. {models: out/models}",
                    ));
                };
                outputs.insert(name.to_string(), absolute(base_dir, &path));
            }
        }
        Some(other) => {
            return Err(PrsError::config(
                "outputs",
                show(&other),
                "must map output names to folders, e.g. {models: out/models}; for the job's \
                 output folder, did you mean \"output\"?",
            ))
        }
    }
    for (name, path) in &options.outputs {
        match outputs.get_mut(name) {
            Some(slot) => *slot = options.given_path(base_dir, path),
            None => return Err(names_none("--output", name, "output", outputs.keys())),
        }
    }
    if let Some(Value::Sequence(arguments)) = root.get_mut("arguments") {
        for (i, argument) in arguments.iter_mut().enumerate() {
            let Some(text) = scalar_text(argument) else {
                continue;
            };
            let field = format!("arguments[{i}]");
            let resolved = substitute(&text, &field, &|expr| match expr.split_once('.') {
                Some(("inputs", name)) => inputs.get(name).cloned(),
                Some(("outputs", name)) => outputs.get(name).cloned(),
                _ => None,
            })?;
            *argument = Value::String(resolved);
        }
    }
    Ok(outputs
        .values()
        .filter(|p| !crate::config::is_url(p))
        .map(PathBuf::from)
        .collect())
}

/// `text` with every `${{ expr }}` replaced by `lookup(expr)`; an unknown expression is an
/// error naming `field`.
pub(super) fn substitute(
    text: &str,
    field: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| PrsError::config(field, text, "has an unclosed ${{"))?;
        let expr = after[..end].trim();
        let value = lookup(expr).ok_or_else(|| {
            let why = if expr.starts_with("parent.") {
                "refers to another step of the pipeline, which parallel-run does not run"
            } else {
                "cannot be resolved here"
            };
            PrsError::config(field, format!("${{{{{expr}}}}}"), why)
        })?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `NAME` of a whole-value reference `${{scope.NAME}}`.
pub(super) fn reference<'t>(text: &'t str, scope: &str) -> Option<&'t str> {
    let inner = text.trim().strip_prefix("${{")?.strip_suffix("}}")?.trim();
    inner.strip_prefix(scope)?.strip_prefix('.')
}

/// The error for `value` of `field` naming no `what` of the job, listing the `known` names.
pub(super) fn names_none<'k>(
    field: &str,
    value: &str,
    what: &str,
    known: impl IntoIterator<Item = &'k String>,
) -> PrsError {
    let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
    PrsError::config(
        field,
        value,
        format!(
            "names no {what} of the job (its {what}s: [{}])",
            known.join(", ")
        ),
    )
}
