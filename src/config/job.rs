//! The YAML job file: Azure's `parallel_run_config:` mapping plus the inputs, output and
//! arguments around it. Relative paths are relative to the job file's folder.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::config::azure_v2::{self, V2Options};
use crate::config::environment::parse_environment;
use crate::config::mltable;
use crate::config::named;
use crate::config::yaml::{show, string_map, unknown_key, Section};
use crate::config::{is_object_url, is_url, ObjectUrl, StorageOptions};
use crate::config::{
    ComputeTarget, LoggingLevel, MiniBatchSize, OutputAction, ParallelRunConfig,
    DEFAULT_APPEND_ROW_FILE_NAME, RESERVED_ARGUMENTS,
};
use crate::error::{PrsError, Result};

/// Data format of a path input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// Parquet file(s).
    Parquet,
    /// CSV file(s) with a header row.
    Csv,
    /// Newline-delimited JSON file(s).
    Json,
    /// A file dataset: each file is one item; run() gets local paths.
    Files,
}

/// Where an input's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A file, folder or glob (already resolved against the job file's folder when relative;
    /// URLs such as `s3://...` are kept as written).
    Path {
        /// The file, folder or glob.
        path: String,
        /// Its format.
        format: InputFormat,
    },
    /// A SQL query over the other inputs (by name).
    Sql(String),
}

/// One entry of `inputs:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Table name (unique within the job).
    pub name: String,
    /// Where its data comes from.
    pub source: InputSource,
    /// For file datasets: Azure's FileDataset partition format, e.g. `{country}/{year}/*.jpg`,
    /// whose `{key}` fields become columns (usable as partition_keys). Hive-style folders
    /// (`country=fr/`) become columns without it.
    pub partition_format: Option<String>,
}

impl InputSpec {
    /// A path input.
    pub fn path(name: impl Into<String>, path: impl Into<String>, format: InputFormat) -> Self {
        InputSpec {
            name: name.into(),
            source: InputSource::Path {
                path: path.into(),
                format,
            },
            partition_format: None,
        }
    }

    /// Whether its mini-batches are rows (every input but a file dataset).
    pub fn is_tabular(&self) -> bool {
        !matches!(
            self.source,
            InputSource::Path {
                format: InputFormat::Files,
                ..
            }
        )
    }

    /// A SQL input over the other inputs.
    pub fn sql(name: impl Into<String>, query: impl Into<String>) -> Self {
        InputSpec {
            name: name.into(),
            source: InputSource::Sql(query.into()),
            partition_format: None,
        }
    }
}

/// Format of the append_row output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputFormat {
    /// PRS's exact text format: one line per list element, table rows space-separated, no header.
    #[default]
    Txt,
    /// CSV with a header row.
    Csv,
    /// Parquet, typed with run()'s result schema.
    Parquet,
}

impl OutputFormat {
    /// The append_row file a job writes for `file_name` in this format: PRS's default name
    /// ([`DEFAULT_APPEND_ROW_FILE_NAME`]) gets the format's extension
    /// (`parallel_run_step.csv`); a name the user chose is kept as is.
    pub fn append_row_file_name(self, file_name: &str) -> String {
        if file_name != DEFAULT_APPEND_ROW_FILE_NAME {
            return file_name.to_string();
        }
        match self {
            OutputFormat::Txt => DEFAULT_APPEND_ROW_FILE_NAME.to_string(),
            OutputFormat::Csv => "parallel_run_step.csv".to_string(),
            OutputFormat::Parquet => "parallel_run_step.parquet".to_string(),
        }
    }
}

/// A whole job: the PRS parameters and what surrounds them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The PRS parameters.
    pub config: ParallelRunConfig,
    /// The inputs, in order (at least one).
    pub inputs: Vec<InputSpec>,
    /// The output folder (logs and the append_row file go here). `None` until set (by the
    /// file or by `--output`); running requires it. An object-storage URL
    /// (`s3://bucket/run1/`) is kept as written.
    pub output: Option<PathBuf>,
    /// Format of the append_row file.
    pub output_format: OutputFormat,
    /// Extra arguments appended to the entry script's argv.
    pub arguments: Vec<String>,
    /// Write output in mini-batch order instead of completion order.
    pub preserve_order: bool,
    /// Folders the entry script writes into (an Azure v2 job's named outputs), created before
    /// the workers start.
    pub output_folders: Vec<PathBuf>,
    /// A job with zero items overall (an empty input, a query returning no rows) succeeds
    /// instead of failing (exit 42).
    pub allow_empty_input: bool,
    /// What a Python run() receives for tabular mini-batches.
    pub mini_batch_format: MiniBatchFormat,
    /// Object-storage settings (`storage_options:`): object_store keys and parallel-run's
    /// retry, cache and local-folder keys. Secrets are masked when shown.
    pub storage_options: StorageOptions,
    /// Memory the engine may use for buffering and grouping (partition_keys spill to disk
    /// beyond it); `None` = half of the machine's memory.
    pub memory_limit: Option<MiniBatchSize>,
    /// `models:`: model name (or `name:version`) -> local path, for the entry script's
    /// `Model.get_model_path(name, version)` (see the README); paths are absolute.
    pub models: BTreeMap<String, String>,
    /// The folder relative paths were resolved against (the job file's); not saved by
    /// [`JobSpec::to_yaml`]. Python workers run in it unless `source_directory` is set, as on
    /// Azure where the code snapshot is the working directory. `None` for a job built in code.
    pub base_dir: Option<PathBuf>,
}

const MEMORY_LIMIT_RULE: &str = "must be a size such as 2GB or 512MB";

/// What a Python `run()` receives for tabular mini-batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MiniBatchFormat {
    /// A pandas DataFrame (PRS's behaviour); pandas must be installed.
    #[default]
    Pandas,
    /// A `pyarrow.Table` (no conversion; pandas not needed).
    PyArrow,
}

const MINI_BATCH_FORMAT_RULE: &str =
    "must be pandas (a DataFrame, the default) or pyarrow (a pyarrow.Table)";

impl MiniBatchFormat {
    /// The name used in job files and on the wire: `pandas` or `pyarrow`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MiniBatchFormat::Pandas => "pandas",
            MiniBatchFormat::PyArrow => "pyarrow",
        }
    }
}

impl std::str::FromStr for MiniBatchFormat {
    type Err = PrsError;

    /// Parses `pandas` or `pyarrow`, case-insensitively.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "pandas" => Ok(MiniBatchFormat::Pandas),
            "pyarrow" | "arrow" => Ok(MiniBatchFormat::PyArrow),
            _ => Err(PrsError::config(
                "mini_batch_format",
                text,
                MINI_BATCH_FORMAT_RULE,
            )),
        }
    }
}

/// A job file after loading: the spec plus the warnings worth showing the user
/// (e.g. Azure environment settings that do not apply here).
#[derive(Debug, Clone)]
pub struct LoadedJob {
    /// The validated job.
    pub spec: JobSpec,
    /// Human-readable warnings.
    pub warnings: Vec<String>,
}

/// The `parallel_run_config` key.
pub(super) const CONFIG: &str = "parallel_run_config";

/// Keys allowed at the top level of a job file.
const TOP_LEVEL_KEYS: &[&str] = &[
    CONFIG,
    "inputs",
    "output",
    "output_format",
    "arguments",
    "preserve_order",
    "allow_empty_input",
    "mini_batch_format",
    "memory_limit",
    "storage_options",
    "models",
];

/// Top-level keys that `--set` may override (the rest of `--set` goes to `parallel_run_config`).
const JOB_OVERRIDE_KEYS: &[&str] = &[
    "output",
    "output_format",
    "preserve_order",
    "allow_empty_input",
    "mini_batch_format",
    "storage_options",
];

/// What `storage_options` allows.
const STORAGE_OPTIONS_RULE: &str = "must map object_store keys (e.g. aws_endpoint, \
     azure_storage_account_name) or parallel-run's storage keys (retry_max_retries, cache_size, \
     ...) to values";

/// Keys allowed in `parallel_run_config`: Azure's, ours, and the v2 names (the last four).
const CONFIG_KEYS: &[&str] = &[
    "entry_script",
    "error_threshold",
    "output_action",
    "node_count",
    "process_count_per_node",
    "mini_batch_size",
    "source_directory",
    "description",
    "logging_level",
    "run_invocation_timeout",
    "run_max_try",
    "append_row_file_name",
    "allowed_failed_count",
    "allowed_failed_percent",
    "partition_keys",
    "environment_variables",
    "compute_target_name",
    "compute_target",
    "environment",
    "mini_batch_error_threshold",
    "retry_settings",
    "max_concurrency_per_instance",
    "instance_count",
];

/// Keys of the v2 `retry_settings` mapping.
const RETRY_KEYS: &[&str] = &["max_retries", "timeout"];

/// Keys of one `inputs:` entry.
const INPUT_KEYS: &[&str] = &["name", "path", "sql", "format", "partition_format", "side"];

/// What each parameter allows, shared by the type and missing-value errors.
mod rule {
    pub(super) const ENTRY_SCRIPT: &str =
        "the Python script with init() and run() (or rust:NAME for a Rust entry script)";
    pub(super) const ERROR_THRESHOLD: &str =
        "an integer >= -1 (-1 ignores all failures): failed items allowed over the job";
    pub(super) const OUTPUT_ACTION: &str = "append_row or summary_only";
    pub(super) const NODE_COUNT: &str = "an integer >= 1 (1 on this machine)";
    pub(super) const PROCESSES: &str =
        "must be an integer >= 1, or left out to use one process per core";
    pub(super) const TEXT: &str = "must be a text";
    pub(super) const TIMEOUT: &str = "must be a number of seconds > 0 (default 60)";
    pub(super) const MAX_TRY: &str = "must be an integer >= 1 (total tries, default 3)";
    pub(super) const MAX_RETRIES: &str = "must be an integer >= 0 (retries after the first try)";
    pub(super) const FAILED_COUNT: &str = "must be an integer >= -1 (-1 ignores all failures)";
    pub(super) const FAILED_PERCENT: &str = "must be a number between 0 and 100, or -1";
    pub(super) const PARTITION_KEYS: &str = "must be a list of column names, e.g. [a, b]";
    pub(super) const ENV_VARS: &str =
        "must map variable names to values, e.g. {OMP_NUM_THREADS: 1}";
    pub(super) const COMPUTE: &str = "must be local (or a cluster address such as df://host:50050)";
    pub(super) const INPUT_FORMAT: &str =
        "must be parquet, csv, json (also jsonl, ndjson), files or mltable";
    pub(super) const OUTPUT_FORMAT: &str = "must be txt, csv or parquet";
    pub(super) const ARGUMENTS: &str = "must be a list of arguments, e.g. [\"--model\", m.bin]";
    pub(super) const BOOLEAN: &str = "must be true or false";
}

impl InputFormat {
    /// The name used in YAML (`parquet`, `csv`, `json`, `files`).
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Parquet => "parquet",
            InputFormat::Csv => "csv",
            InputFormat::Json => "json",
            InputFormat::Files => "files",
        }
    }

    /// Parses a name case-insensitively (`jsonl` and `ndjson` mean `json`).
    fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "parquet" => Some(InputFormat::Parquet),
            "csv" => Some(InputFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(InputFormat::Json),
            "files" => Some(InputFormat::Files),
            _ => None,
        }
    }

    /// The format a path's extension implies (`data/*.parquet` -> parquet), if any.
    fn from_extension(path: &str) -> Option<Self> {
        let file = path.trim_end_matches('/').rsplit('/').next()?;
        let (_, extension) = file.rsplit_once('.')?;
        match extension.to_ascii_lowercase().as_str() {
            "pq" => Some(InputFormat::Parquet),
            "files" => None,
            other => InputFormat::from_name(other),
        }
    }
}

impl std::str::FromStr for InputFormat {
    type Err = PrsError;

    /// Parses `parquet`, `csv`, `json` (`jsonl`, `ndjson`) or `files`, case-insensitively.
    fn from_str(text: &str) -> Result<Self> {
        InputFormat::from_name(text)
            .ok_or_else(|| PrsError::config("format", text, rule::INPUT_FORMAT))
    }
}

impl OutputFormat {
    /// The name used in YAML (`txt`, `csv`, `parquet`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Txt => "txt",
            OutputFormat::Csv => "csv",
            OutputFormat::Parquet => "parquet",
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = PrsError;

    /// Parses `txt`, `csv` or `parquet`, case-insensitively.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "txt" => Ok(OutputFormat::Txt),
            "csv" => Ok(OutputFormat::Csv),
            "parquet" => Ok(OutputFormat::Parquet),
            _ => Err(PrsError::config("output_format", text, rule::OUTPUT_FORMAT)),
        }
    }
}

impl JobSpec {
    /// Loads and validates a job file. `overrides` are `key=value` pairs applied to the
    /// `parallel_run_config` mapping (values parsed as YAML scalars) before validation, as the
    /// CLI's `--set` does; unknown keys are errors. The job-level `output`, `output_format` and
    /// `preserve_order` may be overridden too, and dotted keys reach into mappings
    /// (`retry_settings.max_retries=2`, `environment.python=/usr/bin/python3`).
    pub fn load_yaml(path: &Path, overrides: &[String]) -> Result<LoadedJob> {
        Self::load_yaml_with(path, overrides, &V2Options::default())
    }

    /// [`JobSpec::load_yaml`] with the command-line choices for an Azure ML v2 job file
    /// (`type: parallel`, or a `type: pipeline` file; see [`crate::config::azure_v2`]).
    pub fn load_yaml_with(path: &Path, overrides: &[String], v2: &V2Options) -> Result<LoadedJob> {
        let text = read_job_file(path)?;
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let base_dir = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
        parse_job(&text, &base_dir, overrides, path, v2)
    }

    /// Parses job YAML text; relative paths resolve against `base_dir`.
    pub fn from_yaml_str(text: &str, base_dir: &Path, overrides: &[String]) -> Result<LoadedJob> {
        parse_job(
            text,
            base_dir,
            overrides,
            Path::new("(job YAML text)"),
            &V2Options::default(),
        )
    }

    /// Checks the config and the job-level rules (unique input names, sql inputs reference
    /// known names only loosely, reserved argument names, ...).
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        self.validate_inputs()?;
        if let Some(output) = self.output.as_ref().and_then(|o| o.to_str()) {
            if is_object_url(output) {
                let location = ObjectUrl::parse("output", output)?;
                if location.glob.is_some() {
                    return Err(PrsError::config(
                        "output",
                        output,
                        "must be a folder URL, e.g. s3://bucket/run1/, without glob characters",
                    ));
                }
            }
        }
        validate_arguments(&self.arguments)
    }

    /// At least one input; names are unique SQL identifiers; paths and queries are non-empty.
    fn validate_inputs(&self) -> Result<()> {
        if self.inputs.is_empty() {
            return Err(PrsError::missing(
                "inputs",
                "required: at least one input, e.g. inputs: [{name: reviews, path: \
                 data/reviews.parquet, format: parquet}] (an Azure save_to_yaml file has only \
                 parallel_run_config: add inputs: next to it)",
            ));
        }
        let mut seen: Vec<String> = Vec::new();
        for (i, input) in self.inputs.iter().enumerate() {
            if !is_sql_identifier(&input.name) {
                return Err(PrsError::config(
                    format!("inputs[{i}].name"),
                    &input.name,
                    "must be a SQL identifier: a letter or _ followed by letters, digits or _",
                ));
            }
            let folded = input.name.to_ascii_lowercase();
            if let Some(j) = seen.iter().position(|name| *name == folded) {
                return Err(PrsError::config(
                    format!("inputs[{i}].name"),
                    &input.name,
                    format!("is already the name of inputs[{j}]; input names must be unique"),
                ));
            }
            seen.push(folded);
            match &input.source {
                InputSource::Path { path, .. } if is_object_url(path) => {
                    ObjectUrl::parse(&format!("inputs[{i}].path"), path)?;
                }
                InputSource::Path { path, .. } if path.trim().is_empty() => {
                    return Err(PrsError::config(
                        format!("inputs[{i}].path"),
                        path,
                        "must not be empty: give a file, folder, glob or URL",
                    ));
                }
                InputSource::Sql(sql) if sql.trim().is_empty() => {
                    return Err(PrsError::config(
                        format!("inputs[{i}].sql"),
                        sql,
                        "must not be empty: give a query over the other inputs",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The text of a job file (YAML or SQL). A file that cannot be read is a usage error
/// ([`PrsError::JobFile`], exit code 2) that says what to check.
pub(crate) fn read_job_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "does not exist (looked for {}); check the path, which is relative to the \
                 current folder",
                std::path::absolute(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
            ),
            std::io::ErrorKind::IsADirectory => {
                "is a folder; give the job file inside it".to_string()
            }
            _ => format!("cannot be read: {e}; check that it is a readable text file"),
        };
        PrsError::JobFile {
            path: path.to_path_buf(),
            message,
        }
    })
}

/// Parses, applies the overrides, reads and validates a job; `source` names it in YAML errors.
fn parse_job(
    text: &str,
    base_dir: &Path,
    overrides: &[String],
    source: &Path,
    v2: &V2Options,
) -> Result<LoadedJob> {
    let job_file_error = |message: String| PrsError::JobFile {
        path: source.to_path_buf(),
        message,
    };
    let document: Value =
        serde_yaml::from_str(text).map_err(|e| job_file_error(format!("not valid YAML: {e}")))?;
    let mut root = match document {
        Value::Null => Mapping::new(),
        Value::Mapping(mapping) => mapping,
        other => {
            return Err(job_file_error(format!(
                "the top level must be a mapping with the keys {}, not {}",
                TOP_LEVEL_KEYS.join(", "),
                show(&other)
            )))
        }
    };
    let mut warnings = Vec::new();
    let output_folders;
    if azure_v2::is_v2(&root) {
        let translated = azure_v2::translate(root, base_dir, v2, &mut warnings)?;
        root = translated.root;
        output_folders = translated.output_folders;
    } else {
        output_folders = named::resolve_named(&mut root, base_dir, v2)?;
    }
    for text in overrides {
        apply_override(&mut root, text)?;
    }
    let mut spec = read_job(Value::Mapping(root), base_dir, &mut warnings)?;
    spec.output_folders = output_folders;
    spec.validate()?;
    Ok(LoadedJob { spec, warnings })
}

/// Reads the whole job from the (overridden) document.
fn read_job(root: Value, base_dir: &Path, warnings: &mut Vec<String>) -> Result<JobSpec> {
    let mut top = Section::new("", root, TOP_LEVEL_KEYS)?;
    let config = top.take(CONFIG).ok_or_else(|| {
        PrsError::missing(
            CONFIG,
            "required: the mapping of PRS parameters (entry_script, error_threshold, \
             output_action, node_count, ...)",
        )
    })?;
    let config = read_config(config, base_dir, warnings)?;
    let inputs = read_inputs(top.take("inputs"), base_dir)?;
    let output = top.string("output", "must be a folder path or URL")?;
    let output = output
        .map(|path| resolve_output(base_dir, &path))
        .transpose()?;
    let storage_options = match top.take("storage_options") {
        Some(value) => StorageOptions::from_map(
            "storage_options",
            string_map("storage_options", value, STORAGE_OPTIONS_RULE)?,
            base_dir,
        )?,
        None => StorageOptions::default(),
    };
    let output_format = match top.string("output_format", rule::OUTPUT_FORMAT)? {
        Some(text) => text.parse()?,
        None => OutputFormat::default(),
    };
    Ok(JobSpec {
        config,
        inputs,
        output,
        output_format,
        arguments: top
            .string_list("arguments", rule::ARGUMENTS)?
            .unwrap_or_default(),
        preserve_order: top
            .boolean("preserve_order", rule::BOOLEAN)?
            .unwrap_or(false),
        allow_empty_input: top
            .boolean("allow_empty_input", rule::BOOLEAN)?
            .unwrap_or(false),
        output_folders: Vec::new(),
        mini_batch_format: match top.string("mini_batch_format", MINI_BATCH_FORMAT_RULE)? {
            Some(text) => text.parse()?,
            None => MiniBatchFormat::default(),
        },
        memory_limit: match top.scalar("memory_limit", MEMORY_LIMIT_RULE)? {
            Some(text) => Some(MiniBatchSize::parse_for("memory_limit", &text)?),
            None => None,
        },
        storage_options,
        models: read_models(top.take("models"), base_dir)?,
        base_dir: Some(base_dir.to_path_buf()),
    })
}

/// `models:`: a mapping of model names (`iris`, or `iris:2` for a version) to local files or
/// folders, resolved against the job's folder.
fn read_models(value: Option<Value>, base_dir: &Path) -> Result<BTreeMap<String, String>> {
    const RULE: &str = "must map model names (or name:version) to local files or folders, e.g. \
                        {iris: ./models/iris.pkl, \"iris:2\": ./models/iris-v2/}";
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (name, path) in string_map("models", value, RULE)? {
        let field = format!("models.{name}");
        let (model, version) = name.split_once(':').unwrap_or((&name, "1"));
        if model.is_empty() || version.is_empty() || version.contains(['/', ':']) {
            return Err(PrsError::config(&field, &name, RULE));
        }
        if is_url(&path) {
            return Err(PrsError::config(
                &field,
                &path,
                "models on object storage are not downloaded yet: copy the model to a local \
                 folder and name that",
            ));
        }
        let resolved = resolve(base_dir, &path);
        if !resolved.exists() {
            return Err(PrsError::config(
                &field,
                &path,
                format!("{} does not exist", resolved.display()),
            ));
        }
        out.insert(name.clone(), resolved.display().to_string());
    }
    Ok(out)
}

/// The output: object-storage URLs are kept as written, `file://` URLs become paths, other
/// paths resolve against the job folder.
fn resolve_output(base_dir: &Path, output: &str) -> Result<PathBuf> {
    if is_object_url(output) {
        return Ok(PathBuf::from(output));
    }
    Ok(PathBuf::from(resolve_location("output", base_dir, output)?))
}

/// Reads `parallel_run_config` (Azure's names, ours and the v2 aliases).
fn read_config(
    value: Value,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<ParallelRunConfig> {
    read_config_in(CONFIG, value, base_dir, warnings)
}

/// Reads PRS parameters given one by one (the SQL way in: `SET parallel_run.KEY` values and
/// `parallel_run(...)` arguments) with the readers, rules and messages of `parallel_run_config:`;
/// `section` names them in errors (e.g. `parallel_run.run_max_try "many": ...`). Keys are
/// those of `parallel_run_config:`; a later entry replaces an earlier one. Text values stand
/// for any scalar (numbers in text are read where numbers are expected). Relative paths resolve
/// against `base_dir`. Not validated yet: call [`ParallelRunConfig::validate`].
pub(crate) fn read_config_entries(
    section: &str,
    entries: Vec<(String, Value)>,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<ParallelRunConfig> {
    let mapping: Mapping = entries
        .into_iter()
        .map(|(key, value)| (Value::String(key), value))
        .collect();
    read_config_in(section, Value::Mapping(mapping), base_dir, warnings)
}

/// [`read_config`] for a mapping named `section` in errors.
fn read_config_in(
    section: &str,
    value: Value,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<ParallelRunConfig> {
    let mut s = Section::new(section, value, CONFIG_KEYS)?;
    let entry_script = s.string("entry_script", rule::TEXT)?;
    let entry_script = s.required("entry_script", rule::ENTRY_SCRIPT, entry_script)?;
    let error_threshold = s.integer::<i64>("error_threshold", "must be an integer >= -1")?;
    let error_threshold = s.required("error_threshold", rule::ERROR_THRESHOLD, error_threshold)?;
    let output_action = s.string("output_action", rule::OUTPUT_ACTION)?;
    let output_action = s.required("output_action", rule::OUTPUT_ACTION, output_action)?;
    let output_action = output_action.parse::<OutputAction>().map_err(|_| {
        let reason = format!("must be {}", rule::OUTPUT_ACTION);
        PrsError::config(s.field("output_action"), &output_action, reason)
    })?;
    let mut config = ParallelRunConfig::new(entry_script, error_threshold, output_action);

    let key = s.pick("node_count", "instance_count")?;
    let node_count = s.integer::<u32>(key, "must be an integer >= 1")?;
    config.node_count = s.required("node_count", rule::NODE_COUNT, node_count)?;
    let key = s.pick("process_count_per_node", "max_concurrency_per_instance")?;
    config.process_count_per_node = s.integer::<u32>(key, rule::PROCESSES)?;
    let size = s.scalar(
        "mini_batch_size",
        "must be a number, or digits with KB, MB or GB",
    )?;
    config.mini_batch_size = size.as_deref().map(MiniBatchSize::parse).transpose()?;
    let source_directory = s.string("source_directory", "must be a folder path")?;
    config.source_directory = source_directory.map(|dir| resolve(base_dir, &dir));
    config.description = s.scalar("description", rule::TEXT)?;
    if let Some(level) = s.string("logging_level", "must be WARNING, INFO or DEBUG")? {
        config.logging_level = level.parse::<LoggingLevel>().map_err(|_| {
            PrsError::config(
                s.field("logging_level"),
                &level,
                "must be WARNING, INFO or DEBUG",
            )
        })?;
    }
    read_tries(&mut s, &mut config)?;
    if let Some(name) = s.string("append_row_file_name", rule::TEXT)? {
        config.append_row_file_name = name;
    }
    let key = s.pick("allowed_failed_count", "mini_batch_error_threshold")?;
    config.allowed_failed_count = s.integer::<i64>(key, rule::FAILED_COUNT)?;
    config.allowed_failed_percent = s.number("allowed_failed_percent", rule::FAILED_PERCENT)?;
    config.partition_keys = s
        .string_list("partition_keys", rule::PARTITION_KEYS)?
        .unwrap_or_default();
    config.environment_variables = s
        .string_map("environment_variables", rule::ENV_VARS)?
        .unwrap_or_default();
    let key = s.pick("compute_target_name", "compute_target")?;
    if let Some(target) = s.string(key, rule::COMPUTE)? {
        config.compute_target = parse_compute_target(&s.field(key), &target, warnings);
    }
    read_environment(&mut s, &mut config, base_dir, warnings)?;
    config.entry_script = resolve_entry_script(&config, base_dir)?;
    Ok(config)
}

/// run_invocation_timeout and run_max_try, or the v2 `retry_settings` (tries = retries + 1).
fn read_tries(s: &mut Section, config: &mut ParallelRunConfig) -> Result<()> {
    let (mut max_retries, mut retry_timeout) = (None, None);
    if let Some(mut retry) = s.section("retry_settings", RETRY_KEYS)? {
        for (key, original) in [
            ("max_retries", "run_max_try"),
            ("timeout", "run_invocation_timeout"),
        ] {
            if retry.has(key) && s.has(original) {
                return Err(PrsError::config(
                    retry.field(key),
                    show(&retry.take(key).unwrap_or_default()),
                    format!(
                        "is the v2 form of {}, which is also given; remove one of them",
                        s.field(original)
                    ),
                ));
            }
        }
        max_retries = retry.integer::<u32>("max_retries", rule::MAX_RETRIES)?;
        retry_timeout = retry.integer::<u64>("timeout", rule::TIMEOUT)?;
    }
    if let Some(timeout) = s
        .integer::<u64>("run_invocation_timeout", rule::TIMEOUT)?
        .or(retry_timeout)
    {
        config.run_invocation_timeout = timeout;
    }
    let tries = match max_retries {
        Some(retries) => Some(retries.checked_add(1).ok_or_else(|| {
            PrsError::config(
                "parallel_run_config.retry_settings.max_retries",
                retries,
                "is too large",
            )
        })?),
        None => s.integer::<u32>("run_max_try", rule::MAX_TRY)?,
    };
    if let Some(tries) = tries {
        config.run_max_try = tries;
    }
    Ok(())
}

/// The environment, with Azure's environment variables merged into `environment_variables`
/// (keys already set there win) and a python path resolved against the job folder.
fn read_environment(
    s: &mut Section,
    config: &mut ParallelRunConfig,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let field = s.field("environment");
    let parsed = parse_environment(&field, s.take("environment"), warnings)?;
    config.environment = parsed.environment;
    if let Some(python) = &config.environment.python {
        if python.contains('/') {
            let resolved = resolve(base_dir, python);
            config.environment.python = Some(path_text(&field, &resolved)?);
        }
    }
    let mut merged = Vec::new();
    for (name, value) in parsed.variables {
        if let Entry::Vacant(entry) = config.environment_variables.entry(name.clone()) {
            entry.insert(value);
            merged.push(name);
        }
    }
    if !merged.is_empty() {
        warnings.push(format!(
            "{field}.environmentVariables ({}) were merged into {}.environment_variables",
            merged.join(", "),
            CONFIG
        ));
    }
    Ok(())
}

/// `local` (or nothing) is this machine; an address with `://` is a cluster; any other name is
/// an Azure compute target, which means this machine here (with a warning).
fn parse_compute_target(field: &str, target: &str, warnings: &mut Vec<String>) -> ComputeTarget {
    let target = target.trim();
    if target.is_empty() || target.eq_ignore_ascii_case("local") {
        ComputeTarget::Local
    } else if target.contains("://") {
        ComputeTarget::Cluster(target.to_string())
    } else {
        warnings.push(format!(
            "{field} {target:?} names an Azure compute target; the job runs on this machine \
             (compute_target_name: local)"
        ));
        ComputeTarget::Local
    }
}

/// The entry script path: relative to the job folder unless `source_directory` is given (it is
/// then relative to that folder) or it names a Rust script.
fn resolve_entry_script(config: &ParallelRunConfig, base_dir: &Path) -> Result<String> {
    let script = &config.entry_script;
    if config.source_directory.is_some() || script.starts_with("rust:") || script.trim().is_empty()
    {
        return Ok(script.clone());
    }
    path_text(
        "parallel_run_config.entry_script",
        &resolve(base_dir, script),
    )
}

/// Reads `inputs:` (absent = none; `validate` then asks for one).
fn read_inputs(value: Option<Value>, base_dir: &Path) -> Result<Vec<InputSpec>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => {
            // MLTable inputs become the path (and sql) inputs they describe.
            let mut expanded = Vec::with_capacity(items.len());
            for (i, mut item) in items.into_iter().enumerate() {
                let untyped_folder = item.get("format").is_none()
                    && item
                        .get("path")
                        .and_then(Value::as_str)
                        .and_then(|p| mltable::holds_mltable(base_dir, p))
                        .is_some();
                if untyped_folder {
                    if let Value::Mapping(m) = &mut item {
                        m.insert("format".into(), "mltable".into());
                    }
                }
                if mltable::is_mltable(&item) {
                    expanded.extend(mltable::expand(&format!("inputs[{i}]"), item, base_dir)?);
                } else {
                    expanded.push(item);
                }
            }
            expanded
                .into_iter()
                .enumerate()
                .map(|(i, item)| read_input(i, item, base_dir))
                .collect()
        }
        Some(other) => Err(PrsError::config(
            "inputs",
            show(&other),
            "must be a list of {name, path, format} or {name, sql} entries",
        )),
    }
}

/// Reads one `inputs:` entry: a path with its format, or a SQL query.
fn read_input(index: usize, value: Value, base_dir: &Path) -> Result<InputSpec> {
    let mut s = Section::new(format!("inputs[{index}]"), value, INPUT_KEYS)?;
    let name = s.scalar("name", "must be a table name")?;
    let name = s.required("name", "a table name for this input, e.g. reviews", name)?;
    let path = s.string("path", "must be a file, folder, glob or URL")?;
    let sql = s.string("sql", "must be a SQL query over the other inputs")?;
    let format = s.string("format", rule::INPUT_FORMAT)?;
    let partition_format = s.string(
        "partition_format",
        "must be a path pattern with {key} fields, e.g. \"{country}/{year}/*.jpg\"",
    )?;
    let source = match (path, sql) {
        (Some(_), Some(sql)) => {
            return Err(PrsError::config(
                s.field("sql"),
                sql,
                "give either path or sql, not both",
            ))
        }
        (None, None) => {
            return Err(PrsError::missing(
                s.field("path"),
                "required: path (a file, folder, glob or URL) or sql (a query over the other \
                 inputs)",
            ))
        }
        (None, Some(sql)) => {
            if let Some(format) = format {
                return Err(PrsError::config(
                    s.field("format"),
                    format,
                    "applies to path inputs only; remove it from a sql input",
                ));
            }
            InputSource::Sql(sql)
        }
        (Some(path), None) => {
            let format = match format {
                Some(text) => InputFormat::from_name(&text).ok_or_else(|| {
                    PrsError::config(s.field("format"), &text, rule::INPUT_FORMAT)
                })?,
                None => InputFormat::from_extension(&path).ok_or_else(|| {
                    PrsError::missing(
                        s.field("format"),
                        format!(
                            "required: the path {path:?} does not tell the format; use parquet, \
                             csv, json or files"
                        ),
                    )
                })?,
            };
            let path = resolve_location(&s.field("path"), base_dir, &path)?;
            InputSource::Path { path, format }
        }
    };
    if let Some(pattern) = &partition_format {
        let is_files = matches!(
            &source,
            InputSource::Path {
                format: InputFormat::Files,
                ..
            }
        );
        if !is_files {
            return Err(PrsError::config(
                s.field("partition_format"),
                pattern,
                "applies to file datasets (format: files) only",
            ));
        }
        if !pattern.contains('{') {
            return Err(PrsError::config(
                s.field("partition_format"),
                pattern,
                "names no {key} field; e.g. \"{country}/{year}/*.jpg\"",
            ));
        }
    }
    Ok(InputSpec {
        name,
        source,
        partition_format,
    })
}

/// An input location: URLs are kept, `file://` URLs become paths, relative paths resolve
/// against the job folder (a trailing `/` is kept).
fn resolve_location(field: &str, base_dir: &Path, location: &str) -> Result<String> {
    if location.trim().is_empty() {
        return Ok(location.to_string());
    }
    if location.starts_with("file://") {
        let path = url::Url::parse(location)
            .ok()
            .and_then(|url| url.to_file_path().ok());
        let path = path.ok_or_else(|| {
            PrsError::config(
                field,
                location,
                "is not a valid file URL; use file:///absolute/path or a plain path",
            )
        })?;
        return path_text(field, &path);
    }
    if is_url(location) {
        return Ok(location.to_string());
    }
    let mut text = path_text(field, &resolve(base_dir, location))?;
    if location.ends_with('/') && !text.ends_with('/') {
        text.push('/');
    }
    Ok(text)
}

/// `path` resolved against `base_dir` when relative, without `.` components and with `..`
/// folded into the folder before it (lexically, so `data/sample/../../out` becomes `out`;
/// `..` above the root stays at the root).
pub(crate) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let joined = base_dir.join(path);
    let mut parts: Vec<Component> = Vec::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            Component::ParentDir if matches!(parts.last(), Some(Component::RootDir)) => {}
            other => parts.push(other),
        }
    }
    let normal: PathBuf = parts.into_iter().collect();
    if normal.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        normal
    }
}

/// A path as UTF-8 text (YAML and the rest of the engine need text).
pub(super) fn path_text(field: &str, path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        PrsError::config(
            field,
            path.display(),
            "is not valid UTF-8; use a UTF-8 path",
        )
    })
}

/// Applies one `--set key=value`: job-level keys (`output`, `output_format`, `preserve_order`)
/// at the top, anything else inside `parallel_run_config` (dotted keys reach into mappings,
/// e.g. `retry_settings.max_retries=2` or `environment_variables.OMP_NUM_THREADS=1`).
fn apply_override(root: &mut Mapping, text: &str) -> Result<()> {
    const USAGE: &str =
        "expected key=value, e.g. run_max_try=5, mini_batch_size=10MB or partition_keys=[a,b]";
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| PrsError::config("--set", text, USAGE))?;
    let key = key.trim();
    let value: Value = serde_yaml::from_str(raw.trim()).map_err(|e| {
        PrsError::config(
            "--set",
            text,
            format!("the value is not valid YAML ({e}); quote it, e.g. description='a: b'"),
        )
    })?;
    if JOB_OVERRIDE_KEYS.contains(&key) {
        root.insert(key.into(), value);
        return Ok(());
    }
    if let Some(option) = key.strip_prefix("storage_options.") {
        if option.trim().is_empty() {
            return Err(PrsError::config("--set", text, USAGE));
        }
        return set_nested(root, &["storage_options", option], value, text);
    }
    let inner = key.strip_prefix("parallel_run_config.").unwrap_or(key);
    let path: Vec<&str> = std::iter::once(CONFIG).chain(inner.split('.')).collect();
    if path.iter().any(|segment| segment.trim().is_empty()) {
        return Err(PrsError::config("--set", text, USAGE));
    }
    if !CONFIG_KEYS.contains(&path[1]) {
        let allowed: Vec<&str> = CONFIG_KEYS
            .iter()
            .chain(JOB_OVERRIDE_KEYS)
            .copied()
            .collect();
        return Err(unknown_key("--set", path[1], &allowed));
    }
    set_nested(root, &path, value, text)
}

/// Sets `path` (non-empty) in nested mappings, creating missing or null ones on the way.
fn set_nested(root: &mut Mapping, path: &[&str], value: Value, text: &str) -> Result<()> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut current = root;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = current.entry(Value::from(*segment)).or_insert(Value::Null);
        if entry.is_null() {
            *entry = Value::Mapping(Mapping::new());
        }
        current = match entry {
            Value::Mapping(mapping) => mapping,
            other => {
                return Err(PrsError::config(
                    "--set",
                    text,
                    format!(
                        "{} is {} in the job, not a mapping; set it as a whole instead",
                        path[..=depth].join("."),
                        show(other)
                    ),
                ))
            }
        };
    }
    current.insert(Value::from(*last), value);
    Ok(())
}

/// Is `name` a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`)?
fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Rejects user arguments that would shadow the system's own flags (`--mini_batch_size`,
/// `--mini_batch_size=5`, `-mini_batch_size`, ...).
pub(crate) fn validate_arguments(arguments: &[String]) -> Result<()> {
    for argument in arguments {
        let name = argument.trim_start_matches('-');
        if name.len() == argument.len() {
            continue;
        }
        let name = name.split('=').next().unwrap_or(name);
        if RESERVED_ARGUMENTS.contains(&name) {
            return Err(PrsError::config(
                "arguments",
                argument,
                format!(
                    "--{name} is reserved: the system passes it to the entry script itself; \
                     rename your argument (reserved names: {})",
                    RESERVED_ARGUMENTS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
