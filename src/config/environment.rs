//! The `environment` entry of `parallel_run_config`, in either of two forms:
//!
//! - ours: `{python: python3, pip: [numpy], name: scoring}`, or a plain string naming the
//!   interpreter;
//! - Azure's, as `ParallelRunConfig.save_to_yaml` writes an `azureml.core.Environment`
//!   (`python:` is then a mapping with `interpreterPath`, `condaDependencies`, ...).
//!
//! Azure settings that do not apply on this machine (Docker, Spark, conda packages, ...) become
//! warnings, never errors, so Azure exports load as they are.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use crate::config::yaml::{scalar_text, show, string_map, Section};
use crate::config::Environment;
use crate::error::{PrsError, Result};

/// The keys of our environment form.
const OUR_KEYS: &[&str] = &["python", "pip", "name"];

/// Top-level keys only Azure's environment form has.
const AZURE_ONLY_KEYS: &[&str] = &[
    "version",
    "docker",
    "environmentVariables",
    "spark",
    "databricks",
    "r",
    "inferencingStackVersion",
    "assetId",
];

/// An environment read from YAML, plus the environment variables an Azure environment carries
/// (merged into `environment_variables` by the caller).
#[derive(Debug, Default)]
pub(super) struct ParsedEnvironment {
    /// The environment.
    pub(super) environment: Environment,
    /// Azure's `environmentVariables`, empty for our form.
    pub(super) variables: BTreeMap<String, String>,
}

/// Reads the `environment` value at `field` (absent or null = the default environment).
pub(super) fn parse_environment(
    field: &str,
    value: Option<Value>,
    warnings: &mut Vec<String>,
) -> Result<ParsedEnvironment> {
    match value {
        None | Some(Value::Null) => Ok(ParsedEnvironment::default()),
        Some(Value::String(python)) => Ok(ParsedEnvironment {
            environment: Environment {
                python: Some(python),
                ..Environment::default()
            },
            variables: BTreeMap::new(),
        }),
        Some(Value::Mapping(mapping)) if is_azure(&mapping) => {
            parse_azure(field, mapping, warnings)
        }
        Some(value @ Value::Mapping(_)) => Ok(ParsedEnvironment {
            environment: parse_ours(field, value)?,
            variables: BTreeMap::new(),
        }),
        Some(other) => Err(PrsError::config(
            field,
            show(&other),
            "must be an interpreter (e.g. python3) or a mapping {python: python3, pip: [...]}",
        )),
    }
}

/// Our form as a YAML mapping: `{python, pip, name}` (null when unset).
pub(super) fn environment_to_yaml(environment: &Environment) -> Value {
    let optional = |text: &Option<String>| text.clone().map_or(Value::Null, Value::String);
    let mut mapping = Mapping::new();
    mapping.insert("python".into(), optional(&environment.python));
    let pip = environment.pip.iter().cloned().map(Value::String).collect();
    mapping.insert("pip".into(), Value::Sequence(pip));
    mapping.insert("name".into(), optional(&environment.name));
    Value::Mapping(mapping)
}

/// Is this mapping Azure's serialized environment rather than ours?
fn is_azure(mapping: &Mapping) -> bool {
    matches!(mapping.get("python"), Some(Value::Mapping(_)))
        || AZURE_ONLY_KEYS.iter().any(|key| mapping.contains_key(*key))
}

/// Our mapping form, strict about its keys.
fn parse_ours(field: &str, value: Value) -> Result<Environment> {
    let mut section = Section::new(field, value, OUR_KEYS)?;
    Ok(Environment {
        python: section.string(
            "python",
            "must be an interpreter name or path, e.g. python3",
        )?,
        pip: section
            .string_list(
                "pip",
                "must be a list of pip requirements, e.g. [numpy, pandas]",
            )?
            .unwrap_or_default(),
        name: section.scalar("name", "must be a text")?,
    })
}

/// Azure's form: what can be used is mapped, the rest becomes warnings.
fn parse_azure(
    field: &str,
    mapping: Mapping,
    warnings: &mut Vec<String>,
) -> Result<ParsedEnvironment> {
    let mut parsed = ParsedEnvironment::default();
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(str::to_string) else {
            warnings.push(format!("{field}: ignoring the non-text key {}", show(&key)));
            continue;
        };
        let here = format!("{field}.{key}");
        match key.as_str() {
            "name" => parsed.environment.name = scalar_text(&value),
            "version" | "assetId" => {}
            "python" => parse_azure_python(&here, value, &mut parsed.environment, warnings)?,
            "environmentVariables" if !value.is_null() => {
                parsed.variables = string_map(&here, value, "must map names to values")?;
            }
            "docker" => warn_docker(&here, &value, warnings),
            _ if is_empty_setting(&value) => {}
            _ => warnings.push(format!(
                "{here} ({}) does not apply here and is ignored",
                show(&value)
            )),
        }
    }
    Ok(parsed)
}

/// Azure's `python` section: the interpreter when dependencies are user-managed, otherwise the
/// pip part of the conda specification.
fn parse_azure_python(
    field: &str,
    value: Value,
    environment: &mut Environment,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let Value::Mapping(python) = value else {
        if !value.is_null() {
            warnings.push(format!(
                "{field} ({}) is not understood and is ignored",
                show(&value)
            ));
        }
        return Ok(());
    };
    let user_managed = matches!(
        python.get("userManagedDependencies"),
        Some(Value::Bool(true))
    );
    if user_managed {
        environment.python = python.get("interpreterPath").and_then(scalar_text);
    } else {
        if let Some(conda) = python.get("condaDependencies").filter(|v| !v.is_null()) {
            let field = format!("{field}.condaDependencies");
            environment.pip = conda_pip_packages(&field, conda, warnings)?;
        }
        for key in ["condaDependenciesFile", "baseCondaEnvironment"] {
            if let Some(value) = python.get(key).filter(|v| !v.is_null()) {
                warnings.push(format!(
                    "{field}.{key} ({}) is not read here; list the pip packages under \
                     environment.pip instead",
                    show(value)
                ));
            }
        }
    }
    Ok(())
}

/// The pip list of a conda specification; the conda packages around it are named in a warning,
/// since they are not installed here.
fn conda_pip_packages(
    field: &str,
    conda: &Value,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let dependencies = match conda.get("dependencies") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            return Err(PrsError::config(
                format!("{field}.dependencies"),
                show(other),
                "must be a list of conda packages and {pip: [...]}",
            ))
        }
    };
    let mut pip = Vec::new();
    let mut conda_only = Vec::new();
    for item in dependencies {
        match item.get("pip") {
            Some(Value::Sequence(packages)) => {
                for package in packages {
                    let text = scalar_text(package).ok_or_else(|| {
                        PrsError::config(
                            format!("{field}.dependencies.pip"),
                            show(package),
                            "must be a list of pip requirements",
                        )
                    })?;
                    pip.push(text);
                }
            }
            _ => match scalar_text(item) {
                // pip itself comes with any interpreter we use.
                Some(text) if text == "pip" || text.starts_with("pip=") => {}
                Some(text) => conda_only.push(text),
                None => conda_only.push(show(item)),
            },
        }
    }
    if !conda_only.is_empty() {
        warnings.push(format!(
            "{field}: the conda packages {} are not installed here (only the pip list is); use \
             an interpreter that has them (environment.python) or add them to environment.pip",
            conda_only.join(", ")
        ));
    }
    Ok(pip)
}

/// One warning for a Docker section that asks for anything (Azure always writes one).
fn warn_docker(field: &str, docker: &Value, warnings: &mut Vec<String>) {
    let enabled = matches!(docker.get("enabled"), Some(Value::Bool(true)));
    let image = docker.get("baseImage").and_then(scalar_text);
    let dockerfile = docker.get("baseDockerfile").filter(|v| !v.is_null());
    if !enabled && image.is_none() && dockerfile.is_none() {
        return;
    }
    let what = match image {
        Some(image) => format!("base image {image:?}"),
        None => "a Dockerfile".to_string(),
    };
    warnings.push(format!(
        "{field} ({what}) does not apply here: the entry script runs with a local Python \
         (environment.python) instead of a container"
    ));
}

/// Does this setting ask for nothing (null, false, empty, or a mapping of such)?
fn is_empty_setting(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Sequence(items) => items.is_empty(),
        // Azure writes flags such as `precachePackages: true` even for unused sections, so a
        // mapping counts as empty when all its lists and texts are.
        Value::Mapping(m) => m
            .values()
            .all(|v| is_empty_setting(v) || matches!(v, Value::Bool(_))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Result<ParsedEnvironment>, Vec<String>) {
        let value: Value = serde_yaml::from_str(text).unwrap();
        let mut warnings = Vec::new();
        let parsed = parse_environment("environment", Some(value), &mut warnings);
        (parsed, warnings)
    }

    #[test]
    fn a_plain_string_is_the_interpreter() {
        let (parsed, warnings) = parse("python3.11");
        let parsed = parsed.unwrap();
        assert_eq!(parsed.environment.python.as_deref(), Some("python3.11"));
        assert!(parsed.environment.pip.is_empty() && warnings.is_empty());
    }

    #[test]
    fn our_mapping_form() {
        let (parsed, warnings) = parse("{python: python3, pip: [numpy, pandas], name: scoring}");
        let env = parsed.unwrap().environment;
        assert_eq!(env.python.as_deref(), Some("python3"));
        assert_eq!(env.pip, vec!["numpy", "pandas"]);
        assert_eq!(env.name.as_deref(), Some("scoring"));
        assert!(warnings.is_empty());
    }

    #[test]
    fn our_form_rejects_unknown_keys() {
        let (parsed, _) = parse("{python: python3, pips: [numpy]}");
        let e = parsed.unwrap_err().to_string();
        assert!(
            e.contains("environment \"pips\": unknown key") && e.contains("\"pip\""),
            "{e}"
        );
    }

    #[test]
    fn our_form_round_trips() {
        let env = Environment {
            python: Some("/usr/bin/python3".into()),
            pip: vec!["numpy".into()],
            name: None,
        };
        let mut warnings = Vec::new();
        let parsed = parse_environment(
            "environment",
            Some(environment_to_yaml(&env)),
            &mut warnings,
        );
        assert_eq!(parsed.unwrap().environment, env);
    }

    #[test]
    fn azure_conda_environment_keeps_pip_and_warns() {
        let (parsed, warnings) = parse(
            r#"
name: myenv
version: "1"
python:
  interpreterPath: python
  userManagedDependencies: false
  condaDependencies:
    name: project_environment
    dependencies: ["python=3.8", "scikit-learn", pip, {pip: [pandas, pyarrow]}]
    channels: [conda-forge]
  baseCondaEnvironment: null
environmentVariables: {EXAMPLE_ENV_VAR: EXAMPLE_VALUE}
docker: {enabled: true, baseImage: "mcr.microsoft.com/azureml/base:latest", sharedVolumes: true}
spark: {repositories: [], packages: [], precachePackages: true}
databricks: {mavenLibraries: [], pypiLibraries: []}
r: null
inferencingStackVersion: null
"#,
        );
        let parsed = parsed.unwrap();
        assert_eq!(parsed.environment.python, None);
        assert_eq!(parsed.environment.pip, vec!["pandas", "pyarrow"]);
        assert_eq!(parsed.environment.name.as_deref(), Some("myenv"));
        assert_eq!(
            parsed.variables.get("EXAMPLE_ENV_VAR").map(String::as_str),
            Some("EXAMPLE_VALUE")
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings
            .iter()
            .any(|w| w.contains("python=3.8") && w.contains("scikit-learn")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("environment.docker") && w.contains("mcr.")));
    }

    #[test]
    fn azure_user_managed_environment_uses_the_interpreter() {
        let (parsed, warnings) = parse(
            "{name: local, python: {interpreterPath: /opt/venv/bin/python, \
             userManagedDependencies: true, condaDependencies: {dependencies: [{pip: [x]}]}}, \
             spark: {packages: [{group: a}]}}",
        );
        let env = parsed.unwrap().environment;
        assert_eq!(env.python.as_deref(), Some("/opt/venv/bin/python"));
        assert!(env.pip.is_empty());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("environment.spark"), "{warnings:?}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let (parsed, _) = parse("[python3]");
        assert!(parsed.unwrap_err().to_string().contains("environment"));
    }
}
