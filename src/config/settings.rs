//! [`JobSettings`]: the one job value every way in produces (a job file, the Rust builder, a
//! SQL `parallel_run(...)`), and the only settings the job pipeline reads.
//!
//! It is plain data: it serializes (it travels inside the operator's wire form, the
//! operator spec), compares by value, and holds no resolved environment, work
//! folder or process-local handle.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{
    validate_arguments, JobSpec, MiniBatchFormat, OutputFormat, ParallelRunConfig,
};
use crate::error::Result;

/// Everything about a job besides its inputs: the PRS parameters and the settings around them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSettings {
    /// The PRS parameters (entry script, environment recipe, thresholds, ...).
    pub config: ParallelRunConfig,
    /// The output folder (the append_row file; `--output` of the entry script). For an output
    /// on object storage, its local mirror.
    pub output: PathBuf,
    /// Where the report files and the workers' logs go: `<output>/logs` for a job, the report
    /// folder for a SQL `parallel_run(...)`.
    pub log_dir: PathBuf,
    /// Format of the append_row results (the SQL relation asks for typed results: Parquet).
    pub output_format: OutputFormat,
    /// Extra argv for the entry script.
    pub arguments: Vec<String>,
    /// Results in mini-batch order instead of completion order.
    pub preserve_order: bool,
    /// Zero items overall is a success, not a failure.
    pub allow_empty_input: bool,
    /// The input rows (or paths) of failed items go to `<output>/failed_rows/`.
    #[serde(default)]
    pub dead_letter_rows: bool,
    /// What a Python run() receives for tabular mini-batches.
    pub mini_batch_format: MiniBatchFormat,
    /// The job file's folder: Python workers run in it when `source_directory` is not set
    /// (`None`: the engine's current folder).
    pub job_dir: Option<PathBuf>,
}

impl JobSettings {
    /// Settings for `config` writing to `output` (logs in `<output>/logs`), with the
    /// defaults of a job file for everything else.
    pub fn new(config: ParallelRunConfig, output: impl Into<PathBuf>) -> Self {
        let output = output.into();
        JobSettings {
            config,
            log_dir: log_dir(&output),
            output,
            output_format: OutputFormat::default(),
            arguments: Vec::new(),
            preserve_order: false,
            allow_empty_input: false,
            dead_letter_rows: false,
            mini_batch_format: MiniBatchFormat::default(),
            job_dir: None,
        }
    }

    /// The settings of a loaded job file, writing to `output` (the job's output folder, or
    /// the local mirror of an output on object storage).
    pub fn from_spec(spec: &JobSpec, output: impl Into<PathBuf>) -> Self {
        JobSettings {
            output_format: spec.output_format,
            arguments: spec.arguments.clone(),
            preserve_order: spec.preserve_order,
            allow_empty_input: spec.allow_empty_input,
            dead_letter_rows: spec.dead_letter_rows,
            mini_batch_format: spec.mini_batch_format,
            job_dir: spec.base_dir.clone(),
            ..JobSettings::new(spec.config.clone(), output)
        }
    }

    /// Checks the PRS parameters and the entry script's `arguments` (no reserved names).
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        validate_arguments(&self.arguments)
    }

    /// The name of the append_row file this job writes (PRS's default name gets the format's
    /// extension).
    pub fn final_file_name(&self) -> String {
        self.output_format
            .append_row_file_name(&self.config.append_row_file_name)
    }
}

/// The log folder of an output folder: `<output>/logs`.
pub fn log_dir(output: &Path) -> PathBuf {
    output.join("logs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutputAction;

    #[test]
    fn settings_round_trip_through_json_and_compare_by_value() {
        let mut config = ParallelRunConfig::new("score.py", 5, OutputAction::AppendRow);
        config.environment.pip = vec!["numpy==2.1".into()];
        config.mini_batch_size = Some(crate::config::MiniBatchSize::parse("1MB").unwrap());
        config.allowed_failed_percent = Some(12.5);
        let mut settings = JobSettings::new(config, "/out");
        settings.arguments = vec!["--model".into(), "m1".into()];
        assert_eq!(settings.log_dir, PathBuf::from("/out/logs"));
        let text = serde_json::to_string(&settings).unwrap();
        let back: JobSettings = serde_json::from_str(&text).unwrap();
        assert_eq!(back, settings);
        assert_eq!(serde_json::to_string(&back).unwrap(), text, "canonical");
        assert_eq!(settings.final_file_name(), "parallel_run_step.txt");
    }
}
