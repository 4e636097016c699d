//! The YAML job file: Azure's `parallel_run_config:` mapping plus the inputs, output and
//! arguments around it. Relative paths are relative to the job file's folder.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::config::azure_v2::V2Options;
use crate::config::reader::{parse_job, read_job_file};
use crate::config::{is_object_url, ObjectUrl, StorageOptions};
use crate::config::{
    MiniBatchSize, ParallelRunConfig, DEFAULT_APPEND_ROW_FILE_NAME, RESERVED_ARGUMENTS,
};
use crate::error::{PrsError, Result};

/// Data format of a path input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    /// Table name (unique within the job).
    pub name: String,
    /// Where its data comes from.
    pub source: InputSource,
    /// Azure's partition format, e.g. `{country}/{year}/*.jpg`, whose `{key}` fields become
    /// columns (usable as partition_keys); files that do not match are left out. For file
    /// datasets, hive-style folders (`country=fr/`) become columns without it.
    pub partition_format: Option<String>,
    /// How CSV files are read (delimiter, header rows, empty fields); ignored for other
    /// formats.
    #[serde(default)]
    pub csv: CsvOptions,
    /// Tabular inputs: a column of this name holds each row's source file path (MLTable's
    /// `include_path_column`, whose column is `Path`).
    #[serde(default)]
    pub path_column: Option<String>,
}

/// How the rows of CSV files are read. The default is Azure's and DataFusion's: a comma, a
/// header row at the top of every file, empty fields read as null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CsvOptions {
    /// The field delimiter (one ASCII character: `,`, `;`, a tab, `|`, ...).
    pub delimiter: u8,
    /// Which files start with a header row.
    pub header: CsvHeader,
    /// An empty field is an empty string rather than null (a column with empty fields is
    /// then read as text).
    pub empty_as_string: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: b',',
            header: CsvHeader::AllFilesSameHeaders,
            empty_as_string: false,
        }
    }
}

/// Which CSV files start with a header row, with Azure's names (MLTable's `header:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CsvHeader {
    /// Every file starts with the same header row (`all_files_same_headers`).
    AllFilesSameHeaders,
    /// The first file (in path order) starts with the header row; every line of the other
    /// files is data (`from_first_file`).
    FromFirstFile,
    /// No file has a header row: the columns are `Column1`, `Column2`, ... as Azure names
    /// them (`no_header`).
    NoHeader,
}

impl CsvHeader {
    /// Azure's name (`all_files_same_headers`, `from_first_file`, `no_header`).
    pub fn as_str(self) -> &'static str {
        match self {
            CsvHeader::AllFilesSameHeaders => "all_files_same_headers",
            CsvHeader::FromFirstFile => "from_first_file",
            CsvHeader::NoHeader => "no_header",
        }
    }

    /// Parses Azure's name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            CsvHeader::AllFilesSameHeaders,
            CsvHeader::FromFirstFile,
            CsvHeader::NoHeader,
        ]
        .into_iter()
        .find(|h| h.as_str() == name.trim())
    }
}

/// What `header:` allows.
pub(super) const CSV_HEADER_RULE: &str =
    "must be all_files_same_headers, from_first_file or no_header (Azure's names; \
     all_files_different_headers is not supported: give each header's files their own input)";

impl CsvOptions {
    /// Parses a delimiter: one ASCII character (a tab also as the two characters `\t`, or `tab`).
    pub fn parse_delimiter(text: &str) -> Option<u8> {
        match text {
            "\\t" | "tab" => Some(b'\t'),
            _ => match text.as_bytes() {
                [b] if b.is_ascii() && *b != b'\n' && *b != b'\r' && *b != b'"' => Some(*b),
                _ => None,
            },
        }
    }

    /// The delimiter as one character (YAML writes a tab as "\t").
    pub fn delimiter_text(&self) -> String {
        (self.delimiter as char).to_string()
    }
}

/// What `delimiter:` allows.
pub(super) const DELIMITER_RULE: &str =
    "must be one ASCII character, e.g. ',', ';', '|' or a tab (\"\\t\")";

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
            csv: CsvOptions::default(),
            path_column: None,
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
            csv: CsvOptions::default(),
            path_column: None,
        }
    }
}

/// Format of the append_row output file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
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
    /// Write the input rows of failed mini-batches (the isolated ones when bisection found
    /// them) to `<output>/failed_rows/`: Parquet for tables, a text file of paths for files.
    pub dead_letter_rows: bool,
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
    /// MLTable inputs whose MLTable file is on object storage, not yet in `inputs`: they are
    /// expanded into it once their files are fetched ([`JobSpec::with_remote_mltables`], done
    /// by `input::resolve_remote_mltables` before a job is validated or run).
    pub remote_mltables: Vec<crate::config::mltable::RemoteMlTable>,
    /// The folder relative paths were resolved against (the job file's); not saved by
    /// [`JobSpec::to_yaml`]. Python workers run in it unless `source_directory` is set, as on
    /// Azure where the code snapshot is the working directory. `None` for a job built in code.
    pub base_dir: Option<PathBuf>,
}

pub(super) const MEMORY_LIMIT_RULE: &str = "must be a size such as 2GB or 512MB";

/// What a Python `run()` receives for tabular mini-batches.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum MiniBatchFormat {
    /// A pandas DataFrame (PRS's behaviour); pandas must be installed.
    #[default]
    Pandas,
    /// A `pyarrow.Table` (no conversion; pandas not needed).
    PyArrow,
}

pub(super) const MINI_BATCH_FORMAT_RULE: &str =
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
pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    CONFIG,
    "inputs",
    "output",
    "output_format",
    "arguments",
    "preserve_order",
    "allow_empty_input",
    "dead_letter_rows",
    "mini_batch_format",
    "memory_limit",
    "storage_options",
    "models",
];

/// Top-level keys that `--set` may override (the rest of `--set` goes to `parallel_run_config`).
pub(super) const JOB_OVERRIDE_KEYS: &[&str] = &[
    "output",
    "output_format",
    "preserve_order",
    "allow_empty_input",
    "dead_letter_rows",
    "mini_batch_format",
    "storage_options",
];

/// What `storage_options` allows.
pub(super) const STORAGE_OPTIONS_RULE: &str = "must map object_store keys (e.g. aws_endpoint, \
     azure_storage_account_name) or parallel-run's storage keys (retry_max_retries, cache_size, \
     ...) to values";

/// Keys of the v2 `retry_settings` mapping.
pub(super) const RETRY_KEYS: &[&str] = &["max_retries", "timeout"];

/// Keys of one `inputs:` entry.
pub(super) const INPUT_KEYS: &[&str] = &[
    "name",
    "path",
    "sql",
    "format",
    "partition_format",
    "side",
    "delimiter",
    "header",
    "empty_as_string",
    "path_column",
];

/// What the job-level keys (and v2's `retry_settings.max_retries`) allow; the PRS parameters'
/// rules are in the [`catalogue`](crate::config::catalogue).
pub(super) mod rule {
    pub(in crate::config) const MAX_RETRIES: &str =
        "must be an integer >= 0 (retries after the first try)";
    pub(in crate::config) const INPUT_FORMAT: &str =
        "must be parquet, csv, json (also jsonl, ndjson), files or mltable";
    pub(in crate::config) const OUTPUT_FORMAT: &str = "must be txt, csv or parquet";
    pub(in crate::config) const ARGUMENTS: &str =
        "must be a list of arguments, e.g. [\"--model\", m.bin]";
    pub(in crate::config) const BOOLEAN: &str = "must be true or false";
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
    pub(super) fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "parquet" => Some(InputFormat::Parquet),
            "csv" => Some(InputFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(InputFormat::Json),
            "files" => Some(InputFormat::Files),
            _ => None,
        }
    }

    /// The format a path's extension implies (`data/*.parquet` -> parquet), if any.
    pub(super) fn from_extension(path: &str) -> Option<Self> {
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
    /// The spec with its remote MLTable inputs expanded, `texts[i]` being the text of
    /// `remote_mltables[i]`'s MLTable file: their inputs take their places among the others.
    pub fn with_remote_mltables(mut self, texts: &[String]) -> Result<JobSpec> {
        let remotes = std::mem::take(&mut self.remote_mltables);
        let base_dir = self.base_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        for (remote, text) in remotes.iter().zip(texts).rev() {
            let mut inputs = Vec::new();
            for (k, item) in remote.expand(text)?.into_iter().enumerate() {
                inputs.push(crate::config::reader::read_input(
                    remote.position + k,
                    item,
                    &base_dir,
                )?);
            }
            let at = remote.position.min(self.inputs.len());
            self.inputs.splice(at..at, inputs);
        }
        Ok(self)
    }

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
        if self.inputs.is_empty() && self.remote_mltables.is_empty() {
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

/// Is `name` a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`)?
pub(super) fn is_sql_identifier(name: &str) -> bool {
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
