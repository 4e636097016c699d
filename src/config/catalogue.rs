//! The catalogue of PRS parameters: one entry per `parallel_run_config` key (and the one
//! job-level parameter the entry script receives, `output`), in the spirit of DataFusion's
//! `config_namespace!`. Each entry says the key's name, the flat Azure name that also reads,
//! its type, default, rule (the one message every reader and `validate` use), help text, and
//! where it goes: the entry script's argv (and so a reserved `arguments` name), SQL
//! `SET parallel_run.*`, whether it is secret, travels to remote executors, or affects the
//! output (a resume must refuse a change to it).
//!
//! Every consumer reads it: the YAML reader (the allowed keys, aliases and rules), the writer
//! (`show-config`, `save_yaml`), `--set`, [`RESERVED_ARGUMENTS`],
//! [`ParallelRunConfig::validate`]'s messages, the worker argv
//! ([`ParallelRunConfig::system_arguments`]) and SQL's `SET` / `SHOW`. Azure v2's structural
//! layout (`task.*`, `resources.*`, `retry_settings`) is a translation layer, not an alias.
//!
//! Adding a parameter: one entry below, plus its field in [`ParallelRunConfig`] (with its
//! default in `ParallelRunConfig::new`), the line of `reader.rs` that reads it, and any check
//! beyond the type in `validate`. The tests below walk the catalogue and fail when one of
//! those is missing.

use std::path::Path;

use serde_yaml::Value;

use crate::config::environment::environment_to_yaml;
use crate::config::job::path_text;
use crate::config::{ComputeTarget, MiniBatchSize, OutputFormat, ParallelRunConfig};
use crate::error::{PrsError, Result};

/// Where a parameter is written in a job file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Inside `parallel_run_config:`.
    Config,
    /// At the top level of the job file (next to `inputs:`).
    Job,
}

/// The type of a parameter's value, as a job file writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A text.
    Text,
    /// A file or folder path (relative ones resolve against the job file's folder).
    Path,
    /// An integer.
    Integer,
    /// A number (integer or decimal).
    Number,
    /// A count, or a size with KB, MB or GB.
    Size,
    /// One of a few names.
    Choice,
    /// A list of texts (SQL: comma-separated).
    List,
    /// A mapping of names to texts (SQL: comma-separated `NAME=value` pairs).
    Map,
    /// The Python environment: a mapping of its own, or an Azure environment.
    Environment,
    /// true or false.
    Boolean,
}

/// Flag: settable with SQL `SET parallel_run.KEY` and as a `parallel_run(...)` argument.
pub const SQL: u8 = 1;
/// Flag: a secret, masked when shown.
pub const SECRET: u8 = 1 << 1;
/// Flag: travels to remote executors (the workers need it).
pub const REMOTE: u8 = 1 << 2;
/// Flag: changes the output; a resumed job must refuse a change to it.
pub const OUTPUT: u8 = 1 << 3;

/// Writes a parameter's value as YAML for `show-config` (the job's output format names the
/// append_row file).
pub type Writer = fn(&ParallelRunConfig, OutputFormat) -> Result<Value>;

/// The value of a parameter's `--NAME` flag on the entry script's argv (`None`: not passed),
/// given the job's output folder.
pub type ArgvValue = fn(&ParallelRunConfig, &Path) -> Option<String>;

/// One PRS parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The key, as written in a job file and in SQL.
    pub name: &'static str,
    /// The other flat name Azure gives it (v2's, or the SDK argument's), read as the same key.
    pub alias: Option<&'static str>,
    /// Where a job file has it.
    pub place: Place,
    /// Its value's type.
    pub kind: Type,
    /// Must a job file give it?
    pub required: bool,
    /// The default as written (`""`: unset unless given; the help says what unset means).
    pub default: &'static str,
    /// What a value must be, as a phrase after "must be" (e.g. `an integer >= 1`).
    pub rule: &'static str,
    /// One line for SQL `SHOW` and the documentation.
    pub help: &'static str,
    /// A valid value other than the default, as YAML (for help texts and tests).
    pub example: &'static str,
    /// [`SQL`], [`SECRET`], [`REMOTE`], [`OUTPUT`], combined with `|`.
    pub flags: u8,
    /// How `show-config` writes it inside `parallel_run_config` (`None`: written by the job).
    pub write: Option<Writer>,
    /// Passed to the entry script as `--NAME VALUE`, and so a reserved `arguments` name.
    pub argv: Option<ArgvValue>,
}

impl Param {
    /// The fields every entry starts from.
    const BASE: Param = Param {
        name: "",
        alias: None,
        place: Place::Config,
        kind: Type::Text,
        required: false,
        default: "",
        rule: "",
        help: "",
        example: "",
        flags: 0,
        write: None,
        argv: None,
    };

    /// Does it have `flag` ([`SQL`], [`SECRET`], [`REMOTE`], [`OUTPUT`])?
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Is it passed to the entry script's argv (and reserved in `arguments`)?
    pub const fn is_argv(&self) -> bool {
        self.argv.is_some()
    }

    /// The rule as an error reason: `must be <rule>`.
    pub fn message(&self) -> String {
        format!("must be {}", self.rule)
    }

    /// The reason for a missing required value: `required: <rule>`.
    pub fn required_message(&self) -> String {
        format!("required: {}", self.rule)
    }

    /// `value` breaks the rule.
    pub fn error(&self, value: impl std::fmt::Display) -> PrsError {
        PrsError::config(self.name, value, self.message())
    }

    /// `value` of `field` (this parameter under another name or section) breaks the rule.
    pub fn error_at(&self, field: impl Into<String>, value: impl std::fmt::Display) -> PrsError {
        PrsError::config(field, value, self.message())
    }

    /// `value` breaks the rule in a way `why` says; the rule follows.
    pub fn reject(&self, value: impl std::fmt::Display, why: impl std::fmt::Display) -> PrsError {
        self.reject_at(self.name, value, why)
    }

    /// [`Param::reject`] for `field` (e.g. `environment_variables.NAME`).
    pub fn reject_at(
        &self,
        field: impl Into<String>,
        value: impl std::fmt::Display,
        why: impl std::fmt::Display,
    ) -> PrsError {
        PrsError::config(
            field,
            value,
            format!("{why} ({} must be {})", self.name, self.rule),
        )
    }
}

/// Declares each parameter as a constant and [`CATALOGUE`] as the list of them all.
macro_rules! catalogue {
    ($($(#[doc = $doc:literal])* $id:ident = $param:expr;)*) => {
        $($(#[doc = $doc])* pub const $id: Param = $param;)*

        /// Every parameter, in the order `show-config` writes them and the entry script
        /// receives its flags.
        pub const CATALOGUE: &[Param] = &[$($id),*];
    };
}

/// The characters Azure forbids in `append_row_file_name`, as one literal for the rule text.
macro_rules! forbidden_file_name_chars {
    () => {
        "~\"#%&*:<>?/\\{|}"
    };
}

/// Characters Azure forbids in `append_row_file_name`.
pub(crate) const FORBIDDEN_FILE_NAME_CHARS: &str = forbidden_file_name_chars!();

/// The `write` and `argv` of a field shown as it is (a number): `..field!(run_max_try)`.
macro_rules! field {
    ($field:ident) => {
        Param {
            write: Some(|c, _| Ok(c.$field.into())),
            argv: Some(|c, _| text(c.$field)),
            ..Param::BASE
        }
    };
}

/// The `write` and `argv` of a field that is one of a few names (`as_str` and `Display`).
macro_rules! choice {
    ($field:ident) => {
        Param {
            write: Some(|c, _| Ok(c.$field.as_str().into())),
            argv: Some(|c, _| text(c.$field)),
            ..Param::BASE
        }
    };
}

/// The `write` and `argv` of an optional field (null, and no flag, when unset).
macro_rules! optional_field {
    ($field:ident) => {
        Param {
            write: Some(|c, _| Ok(optional(c.$field))),
            argv: Some(|c, _| c.$field.map(|v| v.to_string())),
            ..Param::BASE
        }
    };
}

/// A number, or null when unset.
fn optional(value: Option<impl Into<Value>>) -> Value {
    value.map_or(Value::Null, Into::into)
}

/// A text as `--NAME` value.
fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

catalogue! {
    /// `entry_script`: the script with init() and run(), or `rust:NAME`.
    ENTRY_SCRIPT = Param {
        name: "entry_script",
        kind: Type::Path,
        required: true,
        rule: "the Python script with init() and run() (relative to source_directory when \
               given), or rust:NAME for a registered Rust entry script",
        help: "The entry script with init() and run(): a .py path (relative to source_directory, \
               or to the job or SQL file) or rust:NAME. Required.",
        example: "other.py",
        flags: SQL | REMOTE | OUTPUT,
        write: Some(|c, _| Ok(c.entry_script.as_str().into())),
        ..Param::BASE
    };
    /// `mini_batch_size`: files or approximate bytes per mini-batch.
    MINI_BATCH_SIZE = Param {
        name: "mini_batch_size",
        kind: Type::Size,
        rule: "a number, or digits with KB, MB or GB and no spaces (e.g. 10MB): files per \
               mini-batch for a file dataset, approximate bytes for tabular data",
        help: "Files per mini-batch (file datasets, default 10) or approximate bytes: 1024, \
               64KB, 10MB, 1GB (no spaces; default 1MB).",
        example: "10MB",
        flags: SQL | REMOTE | OUTPUT,
        write: Some(|c, _| Ok(c.mini_batch_size.as_ref().map_or(Value::Null, size_to_yaml))),
        argv: Some(|c, _| c.mini_batch_size.as_ref().map(|m| m.raw.clone())),
        ..Param::BASE
    };
    /// `error_threshold`: failed items allowed over the job.
    ERROR_THRESHOLD = Param {
        name: "error_threshold",
        kind: Type::Integer,
        required: true,
        rule: "an integer >= -1: the failed items (rows or files) allowed over the job; -1 \
               ignores all failed items",
        help: "Failed items (rows or files) allowed over the job; -1 ignores all. Required.",
        example: "-1",
        flags: SQL | REMOTE,
        ..field!(error_threshold)
    };
    /// `output`: the job's output folder (top level of a job file).
    OUTPUT_FOLDER = Param {
        name: "output",
        place: Place::Job,
        kind: Type::Path,
        rule: "a folder path or URL",
        help: "The output folder: the append_row file and the logs go here.",
        example: "out/run2",
        flags: REMOTE | OUTPUT,
        argv: Some(|_, output| text(output.display())),
        ..Param::BASE
    };
    /// `output_action`: append_row or summary_only.
    OUTPUT_ACTION = Param {
        name: "output_action",
        kind: Type::Choice,
        required: true,
        rule: "append_row or summary_only",
        help: "append_row (write run()'s rows; a SQL relation returns them and is append_row \
               unless told) or summary_only (counts only, no rows). Required in a job file.",
        example: "summary_only",
        flags: SQL | REMOTE | OUTPUT,
        ..choice!(output_action)
    };
    /// `node_count`: nodes (`instance_count` in Azure v2).
    NODE_COUNT = Param {
        name: "node_count",
        alias: Some("instance_count"),
        kind: Type::Integer,
        required: true,
        default: "1",
        rule: "an integer >= 1 (1 on this machine)",
        help: "Nodes (locally: groups of workers), >= 1 (default 1 in SQL).",
        example: "2",
        flags: SQL,
        write: Some(|c, _| Ok(c.node_count.into())),
        ..Param::BASE
    };
    /// `logging_level`: WARNING, INFO or DEBUG.
    LOGGING_LEVEL = Param {
        name: "logging_level",
        kind: Type::Choice,
        default: "INFO",
        rule: "WARNING, INFO or DEBUG",
        help: "The workers' Python logging level: WARNING, INFO (default) or DEBUG.",
        example: "DEBUG",
        flags: SQL | REMOTE,
        ..choice!(logging_level)
    };
    /// `process_count_per_node`: workers per node (`max_concurrency_per_instance` in v2).
    PROCESS_COUNT_PER_NODE = Param {
        name: "process_count_per_node",
        alias: Some("max_concurrency_per_instance"),
        kind: Type::Integer,
        rule: "an integer >= 1, or left out to use one process per core",
        help: "Workers per node (default: the number of cores).",
        example: "2",
        flags: SQL | REMOTE,
        write: Some(|c, _| Ok(optional(c.process_count_per_node))),
        argv: Some(|c, _| text(c.processes_per_node())),
        ..Param::BASE
    };
    /// `run_invocation_timeout`: seconds one run() call may take.
    RUN_INVOCATION_TIMEOUT = Param {
        name: "run_invocation_timeout",
        kind: Type::Integer,
        default: "60",
        rule: "a number of seconds > 0 (default 60)",
        help: "Seconds one run() call may take, > 0 (default 60).",
        example: "120",
        flags: SQL | REMOTE,
        ..field!(run_invocation_timeout)
    };
    /// `run_max_try`: total tries of a mini-batch.
    RUN_MAX_TRY = Param {
        name: "run_max_try",
        kind: Type::Integer,
        default: "3",
        rule: "an integer >= 1: the total number of tries of a mini-batch (default 3)",
        help: "Total tries of a failed or timed-out mini-batch, >= 1 (default 3).",
        example: "5",
        flags: SQL | REMOTE,
        ..field!(run_max_try)
    };
    /// `append_row_file_name`: the append_row output file.
    APPEND_ROW_FILE_NAME = Param {
        name: "append_row_file_name",
        kind: Type::Text,
        default: crate::config::DEFAULT_APPEND_ROW_FILE_NAME,
        rule: concat!(
            "a plain file name without any of ",
            forbidden_file_name_chars!(),
            " (default parallel_run_step.txt)"
        ),
        help: "The append_row output file (default parallel_run_step.txt, with the output \
               format's extension). Checked and passed to the entry script in SQL too, where \
               the relation's rows go where the query sends them.",
        example: "results.txt",
        flags: SQL | REMOTE | OUTPUT,
        write: Some(|c, format| Ok(format.append_row_file_name(&c.append_row_file_name).into())),
        argv: Some(|c, _| text(&c.append_row_file_name)),
        ..Param::BASE
    };
    /// `allowed_failed_count`: failed mini-batches allowed (`mini_batch_error_threshold` in v2).
    ALLOWED_FAILED_COUNT = Param {
        name: "allowed_failed_count",
        alias: Some("mini_batch_error_threshold"),
        kind: Type::Integer,
        rule: "an integer >= -1: the failed mini-batches allowed; -1 ignores all failed \
               mini-batches",
        help: "Failed mini-batches allowed; -1 ignores all (default: no limit).",
        example: "4",
        flags: SQL | REMOTE,
        ..optional_field!(allowed_failed_count)
    };
    /// `allowed_failed_percent`: failed mini-batches allowed, in percent.
    ALLOWED_FAILED_PERCENT = Param {
        name: "allowed_failed_percent",
        kind: Type::Number,
        rule: "a number between 0 and 100 (the failed mini-batches allowed, in percent), or -1 \
               to disable the check",
        help: "Failed mini-batches allowed, in percent 0-100, checked once all are scheduled \
               (default: no limit).",
        example: "12.5",
        flags: SQL | REMOTE,
        ..optional_field!(allowed_failed_percent)
    };
    /// `partition_keys`: columns whose value tuples each form one mini-batch.
    PARTITION_KEYS = Param {
        name: "partition_keys",
        kind: Type::List,
        rule: "a list of distinct, non-empty column names, e.g. [a, b], not given together \
               with mini_batch_size",
        help: "Columns whose distinct values each form one mini-batch (SQL: comma-separated); \
               not with mini_batch_size.",
        example: "[country, year]",
        flags: SQL | REMOTE | OUTPUT,
        write: Some(|c, _| Ok(strings(&c.partition_keys))),
        argv: Some(|c, _| (!c.partition_keys.is_empty()).then(|| c.partition_keys.join(","))),
        ..Param::BASE
    };
    /// `isolate_failures`: bisect a mini-batch that failed every try down to its failing items.
    ISOLATE_FAILURES = Param {
        name: "isolate_failures",
        kind: Type::Boolean,
        default: "false",
        rule: "true or false: true splits a mini-batch that failed every try (an exception, a \
               crashed worker, a bad result) in halves, recursively, until the failing items \
               are isolated; not with partition_keys",
        help: "true: a mini-batch that fails every try is bisected (one run() per half) until \
               its failing rows or files are isolated; the others are committed and only the \
               isolated items count as failed items. Not with partition_keys (default false).",
        example: "true",
        flags: SQL | REMOTE,
        write: Some(|c, _| Ok(c.isolate_failures.into())),
        ..Param::BASE
    };
    /// `isolate_timeouts`: bisect timed-out mini-batches too.
    ISOLATE_TIMEOUTS = Param {
        name: "isolate_timeouts",
        kind: Type::Boolean,
        default: "false",
        rule: "true or false: true also bisects a mini-batch whose last try timed out (and \
               turns on isolate_failures); not with partition_keys",
        help: "true: isolate_failures (which it turns on) also bisects mini-batches whose last \
               try timed out; each timed-out half costs a whole run_invocation_timeout \
               (default false).",
        example: "true",
        flags: SQL | REMOTE,
        write: Some(|c, _| Ok(c.isolate_timeouts.into())),
        ..Param::BASE
    };
    /// `source_directory`: the folder with the script and its helpers.
    SOURCE_DIRECTORY = Param {
        name: "source_directory",
        kind: Type::Path,
        rule: "the folder with the entry script and its helpers (put on the worker's import \
               path), or left out",
        help: "Folder put on the worker's import path and used as its current folder; \
               entry_script is relative to it.",
        example: "src",
        flags: SQL | REMOTE | OUTPUT,
        write: Some(|c, _| {
            Ok(match &c.source_directory {
                Some(dir) => path_text("source_directory", dir)?.into(),
                None => Value::Null,
            })
        }),
        ..Param::BASE
    };
    /// `description`: display text.
    DESCRIPTION = Param {
        name: "description",
        kind: Type::Text,
        rule: "a text",
        help: "Display text.",
        example: "nightly scoring",
        flags: SQL,
        write: Some(|c, _| Ok(optional(c.description.clone()))),
        ..Param::BASE
    };
    /// `environment_variables`: set in every worker.
    ENVIRONMENT_VARIABLES = Param {
        name: "environment_variables",
        kind: Type::Map,
        rule: "a mapping of variable names to values, e.g. {OMP_NUM_THREADS: 1}; names are \
               non-empty, without '=', and neither names nor values contain NUL",
        help: "Variables set in every worker (SQL: comma-separated NAME=value pairs).",
        example: "{OMP_NUM_THREADS: '1'}",
        flags: SQL | REMOTE | OUTPUT,
        write: Some(|c, _| {
            Ok(Value::Mapping(
                c.environment_variables
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
            ))
        }),
        ..Param::BASE
    };
    /// `compute_target_name`: where it runs (`compute_target` is the SDK's argument).
    COMPUTE_TARGET = Param {
        name: "compute_target_name",
        alias: Some("compute_target"),
        kind: Type::Text,
        default: "local",
        rule: "local: the only target until multi-node runs, with cluster addresses such as \
               df://host:50050, are available",
        help: "Where it runs: local (default). An Azure compute name means this machine.",
        example: "df://host:50050",
        write: Some(|c, _| {
            Ok(match &c.compute_target {
                ComputeTarget::Local => "local".into(),
                ComputeTarget::Cluster(address) => address.as_str().into(),
            })
        }),
        ..Param::BASE
    };
    /// `executor_wait_timeout`: how long a cluster job waits for node_count executors.
    EXECUTOR_WAIT_TIMEOUT = Param {
        name: "executor_wait_timeout",
        kind: Type::Integer,
        default: "60",
        rule: "an integer >= 0: the seconds a cluster job waits for node_count executors to \
               register with the scheduler before it fails (0: check once, do not wait)",
        help: "Cluster jobs: seconds to wait for node_count executors to register before \
               failing (default 60; 0 checks once).",
        example: "300",
        write: Some(|c, _| Ok(c.executor_wait_timeout.into())),
        ..Param::BASE
    };
    /// `environment`: the Python environment.
    ENVIRONMENT = Param {
        name: "environment",
        kind: Type::Environment,
        rule: "a mapping {python: interpreter name or path, pip: [packages]}, or an Azure \
               environment",
        help: "The Python environment: {python: python3, pip: [numpy]} (default python3 from \
               PATH); an Azure environment loads too. SQL: the python and pip keys.",
        example: "{python: python3.11, pip: [numpy]}",
        flags: REMOTE | OUTPUT,
        write: Some(|c, _| Ok(environment_to_yaml(&c.environment))),
        ..Param::BASE
    };
}

/// A list of texts as a YAML sequence.
fn strings(items: &[String]) -> Value {
    Value::Sequence(items.iter().cloned().map(Value::String).collect())
}

/// `mini_batch_size` as written: a plain count as a YAML integer (as Azure writes it), anything
/// else as text.
fn size_to_yaml(size: &MiniBatchSize) -> Value {
    if !size.has_unit && size.raw == size.value.to_string() {
        Value::from(size.value)
    } else {
        Value::String(size.raw.clone())
    }
}

/// How many parameters go to the entry script's argv.
const fn argv_count() -> usize {
    let (mut i, mut n) = (0, 0);
    while i < CATALOGUE.len() {
        if CATALOGUE[i].is_argv() {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The names of the parameters passed to the entry script's argv, in order.
const fn argv_names<const N: usize>() -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < CATALOGUE.len() {
        if CATALOGUE[i].is_argv() {
            out[n] = CATALOGUE[i].name;
            n += 1;
        }
        i += 1;
    }
    out
}

/// Names the system passes to the entry script itself (the catalogue's argv parameters);
/// rejected as user `arguments`.
pub const RESERVED_ARGUMENTS: &[&str] = &argv_names::<{ argv_count() }>();

/// The parameters of `parallel_run_config:`, in order.
pub fn config_params() -> impl Iterator<Item = &'static Param> + Clone {
    CATALOGUE.iter().filter(|p| p.place == Place::Config)
}

/// The keys `parallel_run_config:` reads: every name, then the aliases.
pub fn config_keys() -> Vec<&'static str> {
    let params = config_params();
    params
        .clone()
        .map(|p| p.name)
        .chain(params.filter_map(|p| p.alias))
        .collect()
}

/// The parameters with `flag` ([`SQL`], [`SECRET`], [`REMOTE`], [`OUTPUT`]), in order: e.g.
/// what a resumed job compares (`OUTPUT`) or what an executor needs (`REMOTE`).
pub fn flagged(flag: u8) -> impl Iterator<Item = &'static Param> {
    CATALOGUE.iter().filter(move |p| p.has(flag))
}

/// The parameter named `name` (not an alias), if any.
pub fn param(name: &str) -> Option<&'static Param> {
    CATALOGUE.iter().find(|p| p.name == name)
}

impl ParallelRunConfig {
    /// The system's own flags for the entry script, `--NAME VALUE` for each argv parameter
    /// of the catalogue that has a value, in catalogue order; `output` is the job's output
    /// folder. The job's `arguments` follow them.
    pub fn system_arguments(&self, output: &Path) -> Vec<String> {
        CATALOGUE
            .iter()
            .filter_map(|p| Some((p.name, (p.argv?)(self, output)?)))
            .flat_map(|(name, value)| [format!("--{name}"), value])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_yaml::Mapping;

    use super::*;
    use crate::config::reader::{apply_override, read_config, read_job};
    use crate::config::{LoggingLevel, OutputAction};

    const BASE_DIR: &str = "/base";

    /// A minimal `parallel_run_config:` as a mapping.
    fn minimal() -> Mapping {
        serde_yaml::from_str(
            "{entry_script: score.py, error_threshold: 10, output_action: append_row, \
             node_count: 1}",
        )
        .unwrap()
    }

    fn read(mapping: Mapping) -> ParallelRunConfig {
        read_config(
            Value::Mapping(mapping),
            Path::new(BASE_DIR),
            &mut Vec::new(),
        )
        .unwrap_or_else(|e| panic!("should read: {e}"))
    }

    /// What show-config writes for `param` of `config`.
    fn written(param: &Param, config: &ParallelRunConfig) -> Value {
        (param.write.unwrap())(config, OutputFormat::Txt).unwrap()
    }

    fn example(param: &Param) -> Value {
        serde_yaml::from_str(param.example).unwrap()
    }

    #[test]
    fn names_are_unique_and_entries_complete() {
        let mut seen = std::collections::BTreeSet::new();
        for p in CATALOGUE {
            for name in std::iter::once(p.name).chain(p.alias) {
                assert!(seen.insert(name), "{name} is declared twice");
            }
            assert!(!p.rule.is_empty() && !p.help.is_empty(), "{}", p.name);
            assert!(!p.example.is_empty(), "{} needs an example", p.name);
            assert_ne!(
                p.example, p.default,
                "{}: the example must not be the default",
                p.name
            );
            assert_eq!(
                p.write.is_some(),
                p.place == Place::Config,
                "{}: parallel_run_config keys are written by show-config",
                p.name
            );
        }
    }

    /// Every key reads from YAML (the example changes what show-config writes), by its name
    /// and by its alias, and is written back as read.
    #[test]
    fn every_key_reads_from_yaml_and_is_written() {
        let baseline = read(minimal());
        for p in config_params() {
            assert_ne!(
                written(p, &read(minimal())),
                example(p),
                "{}: the example must differ from the minimal job",
                p.name
            );
            for key in std::iter::once(p.name).chain(p.alias) {
                let mut mapping = minimal();
                mapping.remove(p.name);
                mapping.insert(key.into(), example(p));
                let config = read(mapping);
                let value = written(p, &config);
                assert_ne!(
                    value,
                    written(p, &baseline),
                    "{key}: {} was not read from YAML",
                    p.example
                );
                // Read again from what show-config wrote: the same setting.
                let mut again = minimal();
                again.insert(p.name.into(), value);
                assert_eq!(read(again), config, "{key}: not written back as read");
            }
        }
    }

    /// Every key can be set with `--set KEY=VALUE` (and `parallel_run_config.KEY=VALUE`).
    #[test]
    fn every_key_is_settable_with_set() {
        for p in config_params() {
            for key in [
                p.name.to_string(),
                format!("parallel_run_config.{}", p.name),
            ] {
                let mut root = Mapping::new();
                root.insert("parallel_run_config".into(), Value::Mapping(minimal()));
                apply_override(&mut root, &format!("{key}={}", p.example))
                    .unwrap_or_else(|e| panic!("--set {key}: {e}"));
                let spec = read_job(Value::Mapping(root), Path::new(BASE_DIR), &mut Vec::new())
                    .unwrap_or_else(|e| panic!("--set {key}: {e}"));
                assert_ne!(
                    written(p, &spec.config),
                    written(p, &read(minimal())),
                    "--set {key}={} had no effect",
                    p.example
                );
            }
        }
        let mut root = Mapping::new();
        apply_override(&mut root, "output=elsewhere").unwrap();
        assert_eq!(root.get("output"), Some(&Value::from("elsewhere")));
    }

    #[test]
    fn defaults_are_those_of_a_new_config() {
        let config = ParallelRunConfig::new("score.py", 10, OutputAction::AppendRow);
        for p in config_params() {
            let value = written(p, &config);
            if p.default.is_empty() || p.required {
                continue;
            }
            assert_eq!(
                value,
                serde_yaml::from_str::<Value>(p.default).unwrap(),
                "{}",
                p.name
            );
        }
        for p in config_params().filter(|p| p.default.is_empty() && !p.required) {
            let value = written(p, &config);
            let empty = match &value {
                Value::Null => true,
                Value::Sequence(items) => items.is_empty(),
                Value::Mapping(m) => m.is_empty() || p.kind == Type::Environment,
                _ => false,
            };
            assert!(
                empty,
                "{}: unset by default, but written as {value:?}",
                p.name
            );
        }
    }

    #[test]
    fn reserved_arguments_are_the_argv_parameters() {
        let argv: Vec<&str> = CATALOGUE
            .iter()
            .filter(|p| p.is_argv())
            .map(|p| p.name)
            .collect();
        assert_eq!(RESERVED_ARGUMENTS, argv.as_slice());
        // The contract's list (prs-contract.md, A1), in any order.
        let mut contract = vec![
            "mini_batch_size",
            "error_threshold",
            "allowed_failed_count",
            "allowed_failed_percent",
            "output",
            "output_action",
            "logging_level",
            "process_count_per_node",
            "run_invocation_timeout",
            "run_max_try",
            "append_row_file_name",
            "partition_keys",
        ];
        contract.sort_unstable();
        let mut reserved = RESERVED_ARGUMENTS.to_vec();
        reserved.sort_unstable();
        assert_eq!(reserved, contract);
    }

    /// The exact argv the workers got before the catalogue existed.
    #[test]
    fn system_arguments_are_the_argv_parameters_in_order() {
        let mut c = ParallelRunConfig::new("score.py", 5, OutputAction::SummaryOnly);
        let out = PathBuf::from("/out/run");
        let cores = c.processes_per_node();
        assert_eq!(
            c.system_arguments(&out).join(" "),
            format!(
                "--error_threshold 5 --output /out/run --output_action summary_only \
                 --logging_level INFO --process_count_per_node {cores} \
                 --run_invocation_timeout 60 --run_max_try 3 \
                 --append_row_file_name parallel_run_step.txt"
            )
        );
        c.mini_batch_size = Some(MiniBatchSize::parse("10mb").unwrap());
        c.logging_level = LoggingLevel::Debug;
        c.process_count_per_node = Some(2);
        c.allowed_failed_count = Some(-1);
        c.allowed_failed_percent = Some(100.0);
        c.partition_keys = vec!["a".into(), "b".into()];
        c.output_action = OutputAction::AppendRow;
        c.append_row_file_name = "my results.txt".into();
        let argv = c.system_arguments(&out);
        assert_eq!(argv.len(), 24, "{argv:?}");
        assert_eq!(argv[17], "my results.txt", "one argument, spaces and all");
        assert_eq!(
            argv.join(" "),
            "--mini_batch_size 10mb --error_threshold 5 --output /out/run --output_action \
             append_row --logging_level DEBUG --process_count_per_node 2 \
             --run_invocation_timeout 60 --run_max_try 3 --append_row_file_name my results.txt \
             --allowed_failed_count -1 --allowed_failed_percent 100 --partition_keys a,b"
        );
    }
}
