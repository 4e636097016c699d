//! Writing a job back as YAML in Azure's layout (`show-config`, `save_yaml`): every key, with
//! the defaults filled in, such that reading it again gives an equal job.

use std::path::Path;

use serde_yaml::{Mapping, Value};

use crate::config::catalogue::config_params;
use crate::config::job::{path_text, CONFIG};
use crate::config::{CsvOptions, InputSource, InputSpec, JobSpec, OutputFormat, ParallelRunConfig};
use crate::error::{PrsError, Result};

impl JobSpec {
    /// The effective job as YAML in Azure's layout (every key, defaults filled in), such that
    /// `from_yaml_str(to_yaml())` gives an equal `JobSpec`.
    pub fn to_yaml(&self) -> Result<String> {
        let mut root = Mapping::new();
        root.insert(
            CONFIG.into(),
            config_to_yaml(&self.config, self.output_format)?,
        );
        let mut inputs: Vec<Value> = self.inputs.iter().map(input_to_yaml).collect();
        // MLTable inputs on object storage not expanded yet: as written, in their places.
        for remote in self.remote_mltables.iter().rev() {
            let mut entry = Mapping::new();
            entry.insert("name".into(), remote.name.as_str().into());
            entry.insert("path".into(), remote.url.as_str().into());
            entry.insert("format".into(), "mltable".into());
            let at = remote.position.min(inputs.len());
            inputs.insert(at, Value::Mapping(entry));
        }
        root.insert("inputs".into(), Value::Sequence(inputs));
        let output = match &self.output {
            Some(path) => Value::String(path_text("output", path)?),
            None => Value::Null,
        };
        root.insert("output".into(), output);
        root.insert("output_format".into(), self.output_format.as_str().into());
        let arguments = self.arguments.iter().cloned().map(Value::String).collect();
        root.insert("arguments".into(), Value::Sequence(arguments));
        root.insert("preserve_order".into(), self.preserve_order.into());
        root.insert("allow_empty_input".into(), self.allow_empty_input.into());
        root.insert("dead_letter_rows".into(), self.dead_letter_rows.into());
        root.insert(
            "mini_batch_format".into(),
            self.mini_batch_format.as_str().into(),
        );
        // Secrets are masked: write them as ${ENV_VAR} references to keep them.
        let storage: Mapping = self
            .storage_options
            .shown()
            .into_iter()
            .map(|(k, v)| (Value::String(k), Value::String(v)))
            .collect();
        root.insert("storage_options".into(), Value::Mapping(storage));
        if let Some(limit) = &self.memory_limit {
            root.insert("memory_limit".into(), limit.raw.as_str().into());
        }
        if !self.models.is_empty() {
            let models: Mapping = self
                .models
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                .collect();
            root.insert("models".into(), Value::Mapping(models));
        }
        let text = serde_yaml::to_string(&root).map_err(|e| PrsError::Output {
            path: "(job YAML)".into(),
            message: e.to_string(),
        })?;
        // A default that depends on this machine is shown as a comment, so the YAML stays
        // portable (another machine fills in its own) and never says null.
        let cores = self.config.processes_per_node();
        Ok(text.replace(
            "\n  process_count_per_node: null\n",
            &format!(
                "\n  # process_count_per_node: {cores}   (default here: this machine's {cores} cores)\n"
            ),
        ))
    }

    /// Writes [`JobSpec::to_yaml`] to `path`.
    pub fn save_yaml(&self, path: &Path) -> Result<()> {
        let text = self.to_yaml()?;
        std::fs::write(path, text).map_err(|e| PrsError::io(path, e))
    }

    /// Whether any input is tabular (see [`InputSpec::is_tabular`]).
    pub fn has_tabular_inputs(&self) -> bool {
        self.inputs.iter().any(InputSpec::is_tabular)
    }
}

/// `parallel_run_config` with every key of the [`catalogue`](crate::config::catalogue), in its
/// order (unset options as null); `append_row_file_name` is the file the job writes in `format`.
fn config_to_yaml(config: &ParallelRunConfig, format: OutputFormat) -> Result<Value> {
    let mut mapping = Mapping::new();
    for param in config_params() {
        if let Some(write) = param.write {
            mapping.insert(param.name.into(), write(config, format)?);
        }
    }
    Ok(Value::Mapping(mapping))
}

/// One `inputs:` entry: `{name, path, format}` or `{name, sql}`.
fn input_to_yaml(input: &InputSpec) -> Value {
    let mut mapping = Mapping::new();
    mapping.insert("name".into(), input.name.as_str().into());
    match &input.source {
        InputSource::Path { path, format } => {
            mapping.insert("path".into(), path.as_str().into());
            mapping.insert("format".into(), format.as_str().into());
        }
        InputSource::Sql(sql) => {
            mapping.insert("sql".into(), sql.as_str().into());
        }
    }
    if let Some(pattern) = &input.partition_format {
        mapping.insert("partition_format".into(), pattern.as_str().into());
    }
    let csv = &input.csv;
    let defaults = CsvOptions::default();
    if csv.delimiter != defaults.delimiter {
        mapping.insert("delimiter".into(), csv.delimiter_text().into());
    }
    if csv.header != defaults.header {
        mapping.insert("header".into(), csv.header.as_str().into());
    }
    if csv.empty_as_string != defaults.empty_as_string {
        mapping.insert("empty_as_string".into(), csv.empty_as_string.into());
    }
    if let Some(column) = &input.path_column {
        mapping.insert("path_column".into(), column.as_str().into());
    }
    Value::Mapping(mapping)
}
