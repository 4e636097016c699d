//! The PRS parameters ([`ParallelRunConfig`]) with the contract's defaults and error rules
//! (`../shared/reference/prs-contract.md`, section A2).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::catalogue::{self as params, FORBIDDEN_FILE_NAME_CHARS};
use crate::config::MiniBatchSize;
use crate::error::{PrsError, Result};

/// What to do with run()'s results.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize,
)]
pub enum OutputAction {
    /// Write every returned row to the output file.
    AppendRow,
    /// Keep counts only; write no output file.
    SummaryOnly,
}

/// Python logging level of the workers (and the engine's own verbosity).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize,
)]
pub enum LoggingLevel {
    /// `DEBUG`
    Debug,
    /// `INFO` (default)
    Info,
    /// `WARNING`
    Warning,
}

/// Where the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub enum ComputeTarget {
    /// This machine (`local`, or absent).
    Local,
    /// A Ballista scheduler's address, `df://host:50050` or `ballista://host:50050`.
    Cluster(String),
}

/// `HOST:PORT` of a cluster target `df://HOST:PORT` or `ballista://HOST:PORT` (a trailing
/// `/` allowed); `None` for any other form.
pub fn cluster_host_port(target: &str) -> Option<&str> {
    let rest = target
        .strip_prefix("df://")
        .or_else(|| target.strip_prefix("ballista://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
    (host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)).then_some(rest)
}

/// The Python environment the entry script runs in.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize,
)]
pub struct Environment {
    /// Interpreter name or path (`python3` from PATH when absent).
    pub python: Option<String>,
    /// Packages to install into a cached virtual environment built on top of `python`.
    pub pip: Vec<String>,
    /// Display name (Azure environments have one).
    pub name: Option<String>,
}

/// Every ParallelRunConfig parameter, validated, with the contract's defaults applied.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParallelRunConfig {
    /// The Python environment (optional here: defaults to `python3` on PATH).
    pub environment: Environment,
    /// The entry script: a path (relative to `source_directory` when given), or `rust:NAME`
    /// for an in-process Rust entry script registered by name.
    pub entry_script: String,
    /// Failed items (rows or files) allowed over the whole job; -1 ignores all. Required.
    pub error_threshold: i64,
    /// `append_row` or `summary_only`. Required.
    pub output_action: OutputAction,
    /// Where it runs (default: this machine).
    pub compute_target: ComputeTarget,
    /// Seconds a cluster job waits for `node_count` executors to register (0: check once).
    #[serde(default = "default_executor_wait_timeout")]
    pub executor_wait_timeout: u64,
    /// Nodes, >= 1. Required.
    pub node_count: u32,
    /// Worker processes per node; `None` means the number of cores.
    pub process_count_per_node: Option<u32>,
    /// Bytes (tabular) or files (file datasets) per mini-batch; `None` means the default
    /// (1 MiB / 10 files).
    pub mini_batch_size: Option<MiniBatchSize>,
    /// Folder with the script and its helpers (put on the worker's import path).
    pub source_directory: Option<PathBuf>,
    /// Display text.
    pub description: Option<String>,
    /// WARNING, INFO (default) or DEBUG.
    pub logging_level: LoggingLevel,
    /// Seconds one run() call may take (> 0; default 60).
    pub run_invocation_timeout: u64,
    /// Total tries of a failed or timed-out mini-batch (>= 1; default 3).
    pub run_max_try: u32,
    /// Output file name for append_row (default `parallel_run_step.txt`).
    pub append_row_file_name: String,
    /// Failed mini-batches allowed; -1 ignores all; `None` = no limit.
    pub allowed_failed_count: Option<i64>,
    /// Failed mini-batches allowed in percent (0-100); `None` = no limit (100).
    pub allowed_failed_percent: Option<f64>,
    /// Columns whose distinct value tuples each form one mini-batch (empty = none).
    pub partition_keys: Vec<String>,
    /// Set in every worker process.
    pub environment_variables: BTreeMap<String, String>,
    /// A mini-batch that fails every try is split in halves, recursively, until its failing
    /// items are isolated; the others are committed (not with partition_keys).
    #[serde(default)]
    pub isolate_failures: bool,
    /// ... timeouts too (each timed-out half costs a whole run_invocation_timeout); implies
    /// `isolate_failures`.
    #[serde(default)]
    pub isolate_timeouts: bool,
}

impl OutputAction {
    /// The name used in YAML and on the command line (`append_row`, `summary_only`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputAction::AppendRow => "append_row",
            OutputAction::SummaryOnly => "summary_only",
        }
    }
}

impl std::str::FromStr for OutputAction {
    type Err = PrsError;

    /// Parses `append_row` or `summary_only`, case-insensitively.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "append_row" => Ok(OutputAction::AppendRow),
            "summary_only" => Ok(OutputAction::SummaryOnly),
            _ => Err(params::OUTPUT_ACTION.error(text)),
        }
    }
}

impl std::fmt::Display for OutputAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LoggingLevel {
    /// The Python logging level name (`DEBUG`, `INFO`, `WARNING`).
    pub fn as_str(self) -> &'static str {
        match self {
            LoggingLevel::Debug => "DEBUG",
            LoggingLevel::Info => "INFO",
            LoggingLevel::Warning => "WARNING",
        }
    }
}

impl std::str::FromStr for LoggingLevel {
    type Err = PrsError;

    /// Parses `WARNING`, `INFO` or `DEBUG`, case-insensitively.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "DEBUG" => Ok(LoggingLevel::Debug),
            "INFO" => Ok(LoggingLevel::Info),
            "WARNING" => Ok(LoggingLevel::Warning),
            _ => Err(params::LOGGING_LEVEL.error(text)),
        }
    }
}

impl std::fmt::Display for LoggingLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds a cluster job waits for its executors by default (`executor_wait_timeout`).
pub const DEFAULT_EXECUTOR_WAIT_TIMEOUT: u64 = 60;

fn default_executor_wait_timeout() -> u64 {
    DEFAULT_EXECUTOR_WAIT_TIMEOUT
}

/// PRS's default `append_row_file_name`.
pub const DEFAULT_APPEND_ROW_FILE_NAME: &str = "parallel_run_step.txt";

/// Default bytes per tabular mini-batch (1 MiB).
const DEFAULT_MINI_BATCH_BYTES: u64 = 1 << 20;

/// Default files per mini-batch for file datasets.
/// Files per mini-batch of a file dataset when `mini_batch_size` is not set (PRS's default).
pub const DEFAULT_MINI_BATCH_FILES: u64 = 10;

impl ParallelRunConfig {
    /// A config with the required values given and every other parameter at its default.
    pub fn new(
        entry_script: impl Into<String>,
        error_threshold: i64,
        output_action: OutputAction,
    ) -> Self {
        ParallelRunConfig {
            environment: Environment::default(),
            entry_script: entry_script.into(),
            error_threshold,
            output_action,
            compute_target: ComputeTarget::Local,
            executor_wait_timeout: DEFAULT_EXECUTOR_WAIT_TIMEOUT,
            node_count: 1,
            process_count_per_node: None,
            mini_batch_size: None,
            source_directory: None,
            description: None,
            logging_level: LoggingLevel::Info,
            run_invocation_timeout: 60,
            run_max_try: 3,
            append_row_file_name: DEFAULT_APPEND_ROW_FILE_NAME.to_string(),
            allowed_failed_count: None,
            allowed_failed_percent: None,
            partition_keys: Vec::new(),
            environment_variables: BTreeMap::new(),
            isolate_failures: false,
            isolate_timeouts: false,
        }
    }

    /// Checks every rule of the contract (ranges, the file-name characters, partition_keys
    /// with mini_batch_size, ...). Errors name the parameter and the bad value.
    pub fn validate(&self) -> Result<()> {
        self.validate_entry_script()?;
        if self.error_threshold < -1 {
            return Err(params::ERROR_THRESHOLD.error(self.error_threshold));
        }
        self.validate_compute()?;
        self.validate_tries()?;
        validate_append_row_file_name(&self.append_row_file_name)?;
        self.validate_failure_limits()?;
        self.validate_partition_keys()?;
        self.validate_isolation()?;
        self.validate_environment_variables()?;
        self.validate_environment()
    }

    /// node_count x process_count_per_node (cores when unset): the number of workers.
    pub fn worker_count(&self) -> usize {
        (self.node_count as usize).saturating_mul(self.processes_per_node())
    }

    /// process_count_per_node, or the number of cores.
    pub fn processes_per_node(&self) -> usize {
        match self.process_count_per_node {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Bytes per tabular mini-batch (default 1 MiB).
    pub fn mini_batch_bytes(&self) -> u64 {
        self.mini_batch_size
            .as_ref()
            .map_or(DEFAULT_MINI_BATCH_BYTES, |size| size.value)
    }

    /// Files per mini-batch for file datasets (default 10). Errors if a unit was given.
    pub fn mini_batch_files(&self) -> Result<u64> {
        match &self.mini_batch_size {
            Some(size) => size.as_file_count(),
            None => Ok(DEFAULT_MINI_BATCH_FILES),
        }
    }

    /// run_invocation_timeout as a duration.
    pub fn run_timeout(&self) -> Duration {
        Duration::from_secs(self.run_invocation_timeout)
    }

    /// entry_script: non-empty; `rust:` needs a name; source_directory, when given, non-empty.
    fn validate_entry_script(&self) -> Result<()> {
        let script = self.entry_script.trim();
        if script.is_empty() {
            return Err(params::ENTRY_SCRIPT.reject(&self.entry_script, "must not be empty"));
        }
        if let Some(name) = script.strip_prefix("rust:") {
            if name.trim().is_empty() {
                return Err(params::ENTRY_SCRIPT.reject(
                    &self.entry_script,
                    "rust: needs the name of a registered Rust entry script, e.g. rust:echo",
                ));
            }
        }
        if let Some(dir) = &self.source_directory {
            if dir.as_os_str().is_empty() {
                return Err(params::SOURCE_DIRECTORY.reject("", "must not be empty"));
            }
        }
        Ok(())
    }

    /// compute_target (`local`, or a Ballista scheduler `df://HOST:PORT`), node_count and
    /// process_count_per_node.
    fn validate_compute(&self) -> Result<()> {
        if let ComputeTarget::Cluster(address) = &self.compute_target {
            if cluster_host_port(address).is_none() {
                return Err(params::COMPUTE_TARGET.reject(
                    address,
                    "a cluster is a Ballista scheduler's address, df://HOST:PORT (or \
                     ballista://HOST:PORT), e.g. df://127.0.0.1:50050; use local for this machine",
                ));
            }
        }
        if self.node_count == 0 {
            return Err(params::NODE_COUNT.error(self.node_count));
        }
        if self.process_count_per_node == Some(0) {
            return Err(params::PROCESS_COUNT_PER_NODE.error(0));
        }
        Ok(())
    }

    /// run_invocation_timeout > 0 and run_max_try >= 1.
    fn validate_tries(&self) -> Result<()> {
        if self.run_invocation_timeout == 0 {
            return Err(params::RUN_INVOCATION_TIMEOUT.error(0));
        }
        if self.run_max_try == 0 {
            return Err(params::RUN_MAX_TRY.error(0));
        }
        Ok(())
    }

    /// allowed_failed_count >= -1; allowed_failed_percent in 0..=100 or -1.
    fn validate_failure_limits(&self) -> Result<()> {
        if let Some(count) = self.allowed_failed_count {
            if count < -1 {
                return Err(params::ALLOWED_FAILED_COUNT.error(count));
            }
        }
        if let Some(percent) = self.allowed_failed_percent {
            if !((0.0..=100.0).contains(&percent) || percent == -1.0) {
                return Err(params::ALLOWED_FAILED_PERCENT.error(percent));
            }
        }
        Ok(())
    }

    /// isolate_failures (or isolate_timeouts, which implies it) not with partition_keys: a
    /// key's rows belong together and are never split.
    fn validate_isolation(&self) -> Result<()> {
        if self.isolates_failures() && !self.partition_keys.is_empty() {
            let param = if self.isolate_failures {
                params::ISOLATE_FAILURES
            } else {
                params::ISOLATE_TIMEOUTS
            };
            return Err(param.reject(
                "true",
                format!(
                    "is set together with partition_keys [{}]: a key's rows belong together and \
                     are never split; remove {} (or partition_keys)",
                    self.partition_keys.join(", "),
                    param.name
                ),
            ));
        }
        Ok(())
    }

    /// Whether a mini-batch that failed every try is bisected: `isolate_failures`, or
    /// `isolate_timeouts` (which implies it).
    pub fn isolates_failures(&self) -> bool {
        self.isolate_failures || self.isolate_timeouts
    }

    /// partition_keys: non-empty unique names, not together with mini_batch_size.
    fn validate_partition_keys(&self) -> Result<()> {
        if self.partition_keys.is_empty() {
            return Ok(());
        }
        let shown = format!("[{}]", self.partition_keys.join(", "));
        let keys = params::PARTITION_KEYS;
        if let Some(size) = &self.mini_batch_size {
            return Err(keys.reject(
                &shown,
                format!(
                    "is given together with mini_batch_size (\"{size}\"): each partition is one \
                     mini-batch, so remove one of them"
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for key in &self.partition_keys {
            if key.trim().is_empty() {
                return Err(keys.reject(&shown, "a column name is empty"));
            }
            if !seen.insert(key.as_str()) {
                return Err(keys.reject(&shown, format!("column {key:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// environment_variables: names non-empty, without '=' or NUL.
    fn validate_environment_variables(&self) -> Result<()> {
        let variables = params::ENVIRONMENT_VARIABLES;
        for (name, value) in &self.environment_variables {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(variables.reject(name, "is not a valid variable name"));
            }
            if value.contains('\0') {
                return Err(variables.reject_at(
                    format!("{}.{name}", variables.name),
                    value,
                    "contains a NUL character",
                ));
            }
        }
        Ok(())
    }

    /// environment: python non-empty when given; pip entries non-empty.
    fn validate_environment(&self) -> Result<()> {
        let environment = params::ENVIRONMENT;
        if let Some(python) = &self.environment.python {
            if python.trim().is_empty() {
                return Err(environment.reject_at(
                    "environment.python",
                    python,
                    "must not be empty: give an interpreter name or path (e.g. python3), or \
                     leave it out",
                ));
            }
        }
        if let Some(package) = self.environment.pip.iter().find(|p| p.trim().is_empty()) {
            return Err(environment.reject_at(
                "environment.pip",
                package,
                "package names must not be empty",
            ));
        }
        Ok(())
    }
}

/// append_row_file_name: a plain, non-empty file name without Azure's forbidden characters.
fn validate_append_row_file_name(name: &str) -> Result<()> {
    let file_name = params::APPEND_ROW_FILE_NAME;
    if name.trim().is_empty() {
        return Err(file_name.reject(name, "must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| FORBIDDEN_FILE_NAME_CHARS.contains(*c) || *c == '\0')
    {
        return Err(file_name.reject(name, format!("contains {c:?}")));
    }
    if name == "." || name == ".." {
        return Err(file_name.reject(name, "is not a file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ParallelRunConfig {
        ParallelRunConfig::new("score.py", 10, OutputAction::AppendRow)
    }

    /// Validates `config` and returns the error message, failing when it is accepted.
    fn rejected(config: &ParallelRunConfig) -> String {
        match config.validate() {
            Ok(()) => panic!("should be rejected: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_mentions(message: &str, words: &[&str]) {
        for word in words {
            assert!(
                message.contains(word),
                "{message:?} should mention {word:?}"
            );
        }
    }

    #[test]
    fn new_applies_the_contract_defaults() {
        let c = config();
        assert_eq!(c.environment, Environment::default());
        assert_eq!(c.entry_script, "score.py");
        assert_eq!(c.error_threshold, 10);
        assert_eq!(c.output_action, OutputAction::AppendRow);
        assert_eq!(c.compute_target, ComputeTarget::Local);
        assert_eq!(c.node_count, 1);
        assert_eq!(c.process_count_per_node, None);
        assert_eq!(c.mini_batch_size, None);
        assert_eq!(c.source_directory, None);
        assert_eq!(c.description, None);
        assert_eq!(c.logging_level, LoggingLevel::Info);
        assert_eq!(c.run_invocation_timeout, 60);
        assert_eq!(c.run_timeout(), Duration::from_secs(60));
        assert_eq!(c.run_max_try, 3);
        assert_eq!(c.append_row_file_name, "parallel_run_step.txt");
        assert_eq!(c.allowed_failed_count, None);
        assert_eq!(c.allowed_failed_percent, None);
        assert!(c.partition_keys.is_empty());
        assert!(c.environment_variables.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn mini_batch_defaults_and_units() {
        let mut c = config();
        assert_eq!(c.mini_batch_bytes(), 1_048_576);
        assert_eq!(c.mini_batch_files().unwrap(), 10);
        c.mini_batch_size = Some(MiniBatchSize::parse("5").unwrap());
        assert_eq!(c.mini_batch_bytes(), 5);
        assert_eq!(c.mini_batch_files().unwrap(), 5);
        c.mini_batch_size = Some(MiniBatchSize::parse("2MB").unwrap());
        assert_eq!(c.mini_batch_bytes(), 2 * 1024 * 1024);
        assert_mentions(
            &c.mini_batch_files().unwrap_err().to_string(),
            &["mini_batch_size", "2MB"],
        );
    }

    #[test]
    fn worker_count_multiplies_nodes_and_processes() {
        let mut c = config();
        c.process_count_per_node = Some(3);
        assert_eq!(c.processes_per_node(), 3);
        assert_eq!(c.worker_count(), 3);
        c.node_count = 2;
        assert_eq!(c.worker_count(), 6);
        c.process_count_per_node = None;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.processes_per_node(), cores);
        assert_eq!(c.worker_count(), 2 * cores);
    }

    #[test]
    fn error_threshold_must_be_at_least_minus_one() {
        let mut c = config();
        c.error_threshold = -1;
        c.validate().unwrap();
        c.error_threshold = -2;
        assert_mentions(&rejected(&c), &["error_threshold", "\"-2\"", ">= -1"]);
    }

    #[test]
    fn node_and_process_counts_must_be_positive() {
        let mut c = config();
        c.node_count = 0;
        assert_mentions(&rejected(&c), &["node_count", "\"0\"", ">= 1"]);
        let mut c = config();
        c.process_count_per_node = Some(0);
        assert_mentions(&rejected(&c), &["process_count_per_node", "\"0\"", ">= 1"]);
    }

    #[test]
    fn timeout_and_tries_must_be_positive() {
        let mut c = config();
        c.run_invocation_timeout = 0;
        assert_mentions(&rejected(&c), &["run_invocation_timeout", "\"0\"", "> 0"]);
        let mut c = config();
        c.run_max_try = 0;
        assert_mentions(&rejected(&c), &["run_max_try", "\"0\"", ">= 1"]);
    }

    #[test]
    fn append_row_file_name_rules() {
        let mut c = config();
        c.append_row_file_name = "results.csv".into();
        c.validate().unwrap();
        for bad in [
            "a/b.txt", "a:b", "out?.txt", "x|y", "~x", "a\\b", "{x}", "50%", "a\"b", "#",
        ] {
            c.append_row_file_name = bad.into();
            assert_mentions(&rejected(&c), &["append_row_file_name", "plain file name"]);
        }
        c.append_row_file_name = String::new();
        assert_mentions(
            &rejected(&c),
            &["append_row_file_name", "must not be empty"],
        );
        c.append_row_file_name = "..".into();
        assert_mentions(&rejected(&c), &["append_row_file_name"]);
    }

    #[test]
    fn allowed_failed_limits() {
        let mut c = config();
        c.allowed_failed_count = Some(-1);
        c.allowed_failed_percent = Some(-1.0);
        c.validate().unwrap();
        c.allowed_failed_count = Some(0);
        c.allowed_failed_percent = Some(100.0);
        c.validate().unwrap();
        c.allowed_failed_percent = Some(12.5);
        c.validate().unwrap();
        c.allowed_failed_count = Some(-2);
        assert_mentions(&rejected(&c), &["allowed_failed_count", "\"-2\"", ">= -1"]);
        c.allowed_failed_count = None;
        for bad in [100.5, -0.5, -2.0, f64::NAN] {
            c.allowed_failed_percent = Some(bad);
            assert_mentions(
                &rejected(&c),
                &["allowed_failed_percent", "between 0 and 100", "-1"],
            );
        }
    }

    #[test]
    fn isolation_is_never_for_keyed_jobs_and_timeouts_imply_it() {
        let mut c = config();
        assert!(!c.isolates_failures());
        c.isolate_timeouts = true;
        assert!(c.isolates_failures());
        c.validate().unwrap();
        c.partition_keys = vec!["country".into()];
        assert_mentions(
            &rejected(&c),
            &[
                "isolate_timeouts",
                "partition_keys [country]",
                "never split",
            ],
        );
        c.isolate_failures = true;
        assert_mentions(
            &rejected(&c),
            &["isolate_failures", "remove isolate_failures"],
        );
    }

    #[test]
    fn partition_keys_rules() {
        let mut c = config();
        c.partition_keys = vec!["a".into(), "b".into()];
        c.validate().unwrap();
        c.mini_batch_size = Some(MiniBatchSize::parse("10MB").unwrap());
        let e = rejected(&c);
        assert_mentions(
            &e,
            &[
                "partition_keys",
                "[a, b]",
                "mini_batch_size",
                "10MB",
                "remove one",
            ],
        );
        c.mini_batch_size = None;
        c.partition_keys = vec!["a".into(), "a".into()];
        assert_mentions(&rejected(&c), &["partition_keys", "twice"]);
        c.partition_keys = vec!["a".into(), " ".into()];
        assert_mentions(&rejected(&c), &["partition_keys", "empty"]);
    }

    #[test]
    fn entry_script_rules() {
        let mut c = config();
        c.entry_script = "rust:echo".into();
        c.validate().unwrap();
        c.entry_script = String::new();
        assert_mentions(&rejected(&c), &["entry_script", "must not be empty"]);
        c.entry_script = "rust:".into();
        assert_mentions(&rejected(&c), &["entry_script", "rust:"]);
        let mut c = config();
        c.source_directory = Some(PathBuf::new());
        assert_mentions(&rejected(&c), &["source_directory", "must not be empty"]);
    }

    #[test]
    fn environment_variable_names() {
        let mut c = config();
        c.environment_variables
            .insert("OMP_NUM_THREADS".into(), "1".into());
        c.validate().unwrap();
        c.environment_variables.insert("A=B".into(), "1".into());
        assert_mentions(&rejected(&c), &["environment_variables", "A=B", "'='"]);
        let mut c = config();
        c.environment_variables.insert(String::new(), "1".into());
        assert_mentions(&rejected(&c), &["environment_variables", "non-empty"]);
    }

    #[test]
    fn environment_rules() {
        let mut c = config();
        c.environment.python = Some(" ".into());
        assert_mentions(&rejected(&c), &["environment.python", "must not be empty"]);
        let mut c = config();
        c.environment.pip = vec!["numpy".into(), String::new()];
        assert_mentions(&rejected(&c), &["environment.pip", "empty"]);
    }

    #[test]
    fn cluster_targets_are_scheduler_addresses() {
        let mut c = config();
        for ok in [
            "df://host:50050",
            "ballista://10.0.0.1:50050/",
            "df://[::1]:1",
        ] {
            c.compute_target = ComputeTarget::Cluster(ok.into());
            assert!(c.validate().is_ok(), "{ok}");
        }
        assert_eq!(cluster_host_port("ballista://h:5/"), Some("h:5"));
        for bad in [
            "df://host",
            "http://host:50050",
            "df://:50050",
            "df://h:0",
            "df://h:x",
        ] {
            c.compute_target = ComputeTarget::Cluster(bad.into());
            assert_mentions(
                &rejected(&c),
                &["compute_target", bad, "df://HOST:PORT", "local"],
            );
        }
    }

    #[test]
    fn enum_names_parse_case_insensitively() {
        assert_eq!(
            "APPEND_ROW".parse::<OutputAction>().unwrap(),
            OutputAction::AppendRow
        );
        assert_eq!(
            "summary_only".parse::<OutputAction>().unwrap(),
            OutputAction::SummaryOnly
        );
        assert_mentions(
            &"append".parse::<OutputAction>().unwrap_err().to_string(),
            &["output_action", "append_row or summary_only"],
        );
        assert_eq!(
            "debug".parse::<LoggingLevel>().unwrap(),
            LoggingLevel::Debug
        );
        assert_eq!(
            "Warning".parse::<LoggingLevel>().unwrap(),
            LoggingLevel::Warning
        );
        assert_eq!(LoggingLevel::Info.to_string(), "INFO");
        assert_mentions(
            &"trace".parse::<LoggingLevel>().unwrap_err().to_string(),
            &["logging_level", "WARNING, INFO or DEBUG"],
        );
    }
}
