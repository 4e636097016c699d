//! `task.environment` of a v2 job: a conda file's pip list and python version; Docker images
//! and conda-only packages become warnings.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::{absolute, Translator};
use crate::config::yaml::{scalar_text, show};
use crate::error::{PrsError, Result};

impl Translator<'_> {
    /// `task.environment`: a conda file's pip list and python version; the rest warned about.
    pub(super) fn environment(&mut self, value: Value) -> Result<Option<Value>> {
        let mut spec = match value {
            Value::Mapping(m) => m,
            Value::String(name) => {
                self.warnings.push(format!(
                    "task.environment {name:?}: a registered Azure environment cannot be fetched here; using python3 (set environment: {{pip: [...]}} or --set environment=...)"
                ));
                return Ok(None);
            }
            other => {
                return Err(PrsError::config(
                    "task.environment",
                    show(&other),
                    "must be a mapping or an environment name",
                ))
            }
        };
        for key in ["name", "version", "description", "tags"] {
            spec.remove(key);
        }
        if let Some(image) = spec.remove("image") {
            self.warnings.push(format!(
                "task.environment.image {}: Docker images are not used here; the conda file's pip packages are installed into a cached virtual environment",
                show(&image)
            ));
        }
        let mut env = Mapping::new();
        if let Some(conda) = spec.remove("conda_file") {
            let file = scalar_text(&conda).unwrap_or_default();
            let path = PathBuf::from(absolute(self.base_dir, file.trim_start_matches("file:")));
            let (python, pip) = self.conda_file(&path)?;
            if let Some(python) = python {
                env.insert("python".into(), python.into());
            }
            env.insert(
                "pip".into(),
                Value::Sequence(pip.into_iter().map(Value::String).collect()),
            );
        }
        if let Some((key, _)) = spec.into_iter().next() {
            self.warnings.push(format!(
                "task.environment.{}: not used here; ignored",
                show(&key)
            ));
        }
        Ok(if env.is_empty() {
            None
        } else {
            Some(Value::Mapping(env))
        })
    }

    /// (python interpreter when the conda file pins one that is installed, pip packages).
    fn conda_file(&mut self, path: &Path) -> Result<(Option<String>, Vec<String>)> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PrsError::config(
                "task.environment.conda_file",
                path.display(),
                format!("cannot be read: {e}"),
            )
        })?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| {
            PrsError::config(
                "task.environment.conda_file",
                path.display(),
                format!("is not valid YAML: {e}"),
            )
        })?;
        let mut python = None;
        let mut pip = Vec::new();
        let mut conda_only = Vec::new();
        if let Some(Value::Sequence(deps)) = doc.get("dependencies") {
            for dep in deps {
                match dep {
                    Value::Mapping(m) => {
                        if let Some(Value::Sequence(items)) = m.get("pip") {
                            pip.extend(items.iter().filter_map(scalar_text));
                        }
                    }
                    other => {
                        let Some(text) = scalar_text(other) else {
                            continue;
                        };
                        let name = text
                            .split(|c: char| "=<> ".contains(c))
                            .next()
                            .unwrap_or("");
                        if name == "python" {
                            let version: String = text[name.len()..]
                                .trim_start_matches(|c: char| "=<> ".contains(c))
                                .split('.')
                                .take(2)
                                .collect::<Vec<_>>()
                                .join(".");
                            python = Some(version);
                        } else if name != "pip" {
                            conda_only.push(text);
                        }
                    }
                }
            }
        }
        if !conda_only.is_empty() {
            self.warnings.push(format!(
                "{}: conda packages are not installed here ({}); add them to the pip list if the script needs them",
                path.display(),
                conda_only.join(", ")
            ));
        }
        let interpreter = match python {
            Some(version) if !version.is_empty() => {
                let name = format!("python{version}");
                if on_path(&name) {
                    Some(name)
                } else {
                    self.warnings.push(format!(
                        "{}: python {version} is not installed here; using python3",
                        path.display()
                    ));
                    None
                }
            }
            _ => None,
        };
        Ok((interpreter, pip))
    }
}

/// Is `program` an executable on PATH?
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
