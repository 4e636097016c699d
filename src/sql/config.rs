//! The `parallel_run` configuration namespace: `SET parallel_run.KEY = 'value'`.
//!
//! [`ParallelRunOptions`] is a DataFusion [`ConfigExtension`] with the prefix `parallel_run`.
//! Every key is checked when it is set, with the readers, rules and messages of a YAML job's
//! `parallel_run_config:` (a [`ParallelRunConfig`] is built from it and validated), so
//! `SET parallel_run.mini_batch_size = '10 MB'` fails with
//! `mini_batch_size "10 MB": no spaces allowed; use e.g. "10MB"`. Setting a key to `''` unsets
//! it. The same keys are the named arguments of `parallel_run(...)`, which override the SET
//! values for that relation ([`SqlJob::from_values`] merges and checks them). The PRS keys
//! are the [`catalogue`]'s parameters flagged [`catalogue::SQL`], with its help texts; SQL
//! adds its own (`python`, `pip`, the job-level settings and the relation's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use serde_yaml::{Mapping, Value};

use crate::config::catalogue::{self, Param, Type};
use crate::config::{
    read_config_entries, validate_arguments, MiniBatchFormat, OutputFormat, ParallelRunConfig,
};
use crate::error::{PrsError, Result};

/// The namespace prefix: `SET parallel_run.mini_batch_size = '1MB'`.
pub const PREFIX: &str = "parallel_run";

/// How a key's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `parallel_run_config` scalar, read as YAML reads it.
    Config,
    /// A list (`partition_keys`): comma-separated items.
    Columns,
    /// A mapping (`environment_variables`): comma-separated `NAME=value` pairs.
    Variables,
    /// A `parallel_run_config` flag (`isolate_failures`): true or false.
    Flag,
    /// `python`: the interpreter (`environment.python`).
    Python,
    /// `pip`: comma-separated packages (`environment.pip`).
    Pip,
    /// `output_format`.
    OutputFormat,
    /// `preserve_order`.
    PreserveOrder,
    /// `allow_empty_input`.
    AllowEmptyInput,
    /// `mini_batch_format`.
    MiniBatchFormat,
    /// `arguments`: split like a shell command line.
    Arguments,
    /// `report_dir`: a folder.
    Folder,
    /// `output_schema`: column definitions.
    Schema,
    /// `resume`: false, true or rerun_failed.
    Resume,
    /// `dead_letter_rows`.
    DeadLetterRows,
}

/// One key of the namespace.
#[derive(Debug, Clone, Copy)]
struct Key {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// Masked by `SHOW`.
    secret: bool,
}

impl Key {
    /// The key of a catalogue parameter flagged [`catalogue::SQL`].
    fn of(param: &Param) -> Key {
        Key {
            name: param.name,
            kind: match param.kind {
                Type::List => Kind::Columns,
                Type::Map => Kind::Variables,
                Type::Boolean => Kind::Flag,
                _ => Kind::Config,
            },
            help: param.help,
            secret: param.has(catalogue::SECRET),
        }
    }

    /// One of SQL's own keys.
    const fn own(name: &'static str, kind: Kind, help: &'static str) -> Key {
        Key {
            name,
            kind,
            help,
            secret: false,
        }
    }
}

/// SQL's own keys, listed after the catalogue's PRS parameters: the fields of `environment`,
/// the job-level settings, and the relation's own.
const OWN_KEYS: &[Key] = &[
    Key::own(
        "python",
        Kind::Python,
        "The Python interpreter (name or path; default python3 from PATH).",
    ),
    Key::own(
        "pip",
        Kind::Pip,
        "Comma-separated pip packages for a cached virtual environment built on python.",
    ),
    Key::own(
        "output_format",
        Kind::OutputFormat,
        "txt, csv or parquet: accepted as in YAML; the relation always returns typed rows (choose the file format with COPY ... STORED AS).",
    ),
    Key::own(
        "preserve_order",
        Kind::PreserveOrder,
        "true: the relation returns its rows in mini-batch order (buffered until the job ends); default false.",
    ),
    Key::own(
        "allow_empty_input",
        Kind::AllowEmptyInput,
        "true: a run whose input has no rows succeeds with no rows; default false (it fails, as an empty input is usually a wrong path or filter).",
    ),
    Key::own(
        "mini_batch_format",
        Kind::MiniBatchFormat,
        "What a Python run() receives: pandas (a DataFrame, default) or pyarrow (a Table).",
    ),
    Key::own(
        "arguments",
        Kind::Arguments,
        "Extra argv for the entry script, split like a shell line: '--model m.bin --top 5'.",
    ),
    Key::own(
        "report_dir",
        Kind::Folder,
        "Folder of the report (job_result.txt, job_summary.json, sys/, user/). Default: <COPY target>.logs, else ./parallel_run_logs.",
    ),
    Key::own(
        "resume",
        Kind::Resume,
        "true: the run keeps a ledger in its report folder and continues the one an interrupted or failed run of the same statement left (committed mini-batches are not run again; rows come back in mini-batch order once the run ends); rerun_failed: also runs the failed mini-batches again; default false.",
    ),
    Key::own(
        "dead_letter_rows",
        Kind::DeadLetterRows,
        "true: the input rows of failed items go to failed_rows/ in the report folder, one Parquet file per mini-batch with every input column (as a job file's dead_letter_rows); default false.",
    ),
    Key::own(
        "output_schema",
        Kind::Schema,
        "run()'s result columns, e.g. 'id BIGINT, score DOUBLE'; when absent, one worker is started at planning time to find them.",
    ),
];

/// Every key, in the order `SHOW ALL` lists them: the catalogue's parameters flagged for SQL,
/// then SQL's own.
fn keys() -> impl Iterator<Item = Key> {
    catalogue::flagged(catalogue::SQL)
        .map(Key::of)
        .chain(OWN_KEYS.iter().copied())
}

/// The key named `name` (already lower case).
fn key(name: &str) -> Option<Key> {
    keys().find(|k| k.name == name)
}

/// The names of every key, for messages.
pub fn key_names() -> Vec<&'static str> {
    keys().map(|k| k.name).collect()
}

/// `SET parallel_run.KEY = 'value'` values, each checked when set. Register it on a session
/// with [`crate::sql::register`] (or `SessionConfig::with_option_extension`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParallelRunOptions {
    values: BTreeMap<String, String>,
}

impl ParallelRunOptions {
    /// The value set for `key` (without the prefix), if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Every value set, by key.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Sets `key` (without the prefix) to `value` after checking it with the job file's rules;
    /// an empty value unsets the key. Errors name the key and the value.
    pub fn set_value(&mut self, key: &str, value: &str) -> Result<()> {
        let name = canonical_key(key)?;
        if value.trim().is_empty() {
            self.values.remove(name);
            return Ok(());
        }
        check_value(name, value)?;
        self.values.insert(name.to_string(), value.to_string());
        Ok(())
    }
}

impl ExtensionOptions for ParallelRunOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::error::Result<()> {
        self.set_value(key, value)
            .map_err(PrsError::into_datafusion)
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        keys()
            .map(|k| ConfigEntry {
                key: format!("{PREFIX}.{}", k.name),
                value: self.values.get(k.name).map(|value| match k.secret {
                    true => "********".to_string(),
                    false => value.clone(),
                }),
                description: k.help,
            })
            .collect()
    }
}

impl ConfigExtension for ParallelRunOptions {
    const PREFIX: &'static str = PREFIX;
}

/// The known key for `name` (any case), or an error listing the keys.
pub(crate) fn canonical_key(name: &str) -> Result<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    let lower = lower
        .strip_prefix(&format!("{PREFIX}."))
        .map(str::to_string)
        .unwrap_or(lower);
    key(&lower).map(|k| k.name).ok_or_else(|| {
        let hint = keys()
            .find(|k| k.name.contains(&lower) || (lower.len() > 3 && lower.contains(k.name)))
            .map(|k| format!(" (did you mean {:?}?)", k.name))
            .unwrap_or_default();
        PrsError::config(
            PREFIX,
            name,
            format!("unknown key{hint}; the keys are {}", key_names().join(", ")),
        )
    })
}

/// Checks one value alone: with placeholders for the required keys, a job made of just this
/// key must pass the job file's rules.
fn check_value(name: &'static str, value: &str) -> Result<()> {
    let mut values = BTreeMap::from([
        ("entry_script".to_string(), "rust:placeholder".to_string()),
        ("error_threshold".to_string(), "0".to_string()),
    ]);
    values.insert(name.to_string(), value.to_string());
    SqlJob::from_values(&values, Path::new(".")).map(|_| ())
}

/// Everything one `parallel_run(...)` relation runs with: the PRS parameters and the SQL
/// relation's own settings, from the SET values overridden by the named arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlJob {
    /// The validated PRS parameters (paths resolved against the base folder).
    pub config: ParallelRunConfig,
    /// Accepted for YAML parity (the relation always returns typed rows).
    pub output_format: OutputFormat,
    /// Return rows in mini-batch order.
    pub preserve_order: bool,
    /// An input with no rows is a success, not a failure.
    pub allow_empty_input: bool,
    /// What a Python run() receives.
    pub mini_batch_format: MiniBatchFormat,
    /// Extra argv for the entry script.
    pub arguments: Vec<String>,
    /// The report folder when one was given (resolved against the base folder).
    pub report_dir: Option<PathBuf>,
    /// run()'s result columns as written (`id BIGINT, score DOUBLE`), when given.
    pub output_schema: Option<String>,
    /// A resumable run (`resume`): it keeps a ledger and continues an earlier one.
    pub resume: Option<crate::ledger::ResumeMode>,
    /// The input rows of failed items go to `failed_rows/` in the report folder.
    pub dead_letter_rows: bool,
    /// Warnings worth showing (e.g. from the environment).
    pub warnings: Vec<String>,
}

impl SqlJob {
    /// Reads and checks `values` (key without prefix -> text), resolving relative paths
    /// against `base_dir`. `output_action` defaults to `append_row` and `node_count` to 1;
    /// `entry_script` and `error_threshold` are required as in a job file.
    pub fn from_values(values: &BTreeMap<String, String>, base_dir: &Path) -> Result<Self> {
        let mut entries: Vec<(String, Value)> = vec![
            ("output_action".into(), Value::from("append_row")),
            ("node_count".into(), Value::from("1")),
        ];
        let mut environment = Mapping::new();
        let mut job = SqlJob {
            config: ParallelRunConfig::new("", 0, crate::config::OutputAction::AppendRow),
            output_format: OutputFormat::default(),
            preserve_order: false,
            allow_empty_input: false,
            mini_batch_format: MiniBatchFormat::default(),
            arguments: Vec::new(),
            report_dir: None,
            output_schema: None,
            resume: None,
            dead_letter_rows: false,
            warnings: Vec::new(),
        };
        for (name, text) in values {
            let name = canonical_key(name)?;
            let Some(spec) = key(name) else { continue };
            match spec.kind {
                Kind::Config => entries.push((name.into(), Value::from(text.as_str()))),
                Kind::Columns => entries.push((name.into(), Value::Sequence(list(text)))),
                Kind::Variables => entries.push((name.into(), variables(text)?)),
                Kind::Flag => entries.push((name.into(), Value::Bool(flag(name, text)?))),
                Kind::Python => {
                    environment.insert("python".into(), Value::from(text.as_str()));
                }
                Kind::Pip => {
                    environment.insert("pip".into(), Value::Sequence(list(text)));
                }
                Kind::OutputFormat => job.output_format = text.parse()?,
                Kind::PreserveOrder => job.preserve_order = flag(name, text)?,
                Kind::AllowEmptyInput => job.allow_empty_input = flag(name, text)?,
                Kind::DeadLetterRows => job.dead_letter_rows = flag(name, text)?,
                Kind::MiniBatchFormat => job.mini_batch_format = text.parse()?,
                Kind::Arguments => {
                    job.arguments = split_arguments(text)?;
                    validate_arguments(&job.arguments)?;
                }
                Kind::Folder => {
                    if text.trim().is_empty() {
                        return Err(PrsError::config(name, text, "must be a folder path"));
                    }
                    job.report_dir = Some(crate::sql::resolve_path(base_dir, text.trim()));
                }
                Kind::Schema => {
                    crate::sql::relation::parse_columns(text)?;
                    job.output_schema = Some(text.clone());
                }
                Kind::Resume => {
                    job.resume = match text.trim().to_ascii_lowercase().as_str() {
                        "false" => None,
                        "true" => Some(crate::ledger::ResumeMode::Resume),
                        "rerun_failed" => Some(crate::ledger::ResumeMode::RerunFailed),
                        _ => {
                            return Err(PrsError::config(
                                name,
                                text,
                                "must be true, false or rerun_failed",
                            ))
                        }
                    };
                }
            }
        }
        if !environment.is_empty() {
            entries.push(("environment".into(), Value::Mapping(environment)));
        }
        job.config = read_config_entries(PREFIX, entries, base_dir, &mut job.warnings)?;
        job.config.validate()?;
        Ok(job)
    }
}

/// `a, b` -> `[a, b]` (items trimmed; empty items kept so the rules can name them).
fn list(text: &str) -> Vec<Value> {
    text.split(',')
        .map(|item| Value::from(item.trim()))
        .collect()
}

/// `A=1, B=x` -> `{A: 1, B: x}`.
fn variables(text: &str) -> Result<Value> {
    let mut mapping = Mapping::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            PrsError::config(
                "environment_variables",
                text,
                "must be NAME=value pairs separated by commas, e.g. OMP_NUM_THREADS=1,MODE=fast",
            )
        })?;
        mapping.insert(Value::from(name.trim()), Value::from(value.trim()));
    }
    Ok(Value::Mapping(mapping))
}

/// `true` or `false`, any case.
fn flag(name: &str, text: &str) -> Result<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(PrsError::config(name, text, "must be true or false")),
    }
}

/// Splits a command line as a POSIX shell does (quotes group, backslashes escape), with the
/// `shlex` crate as the Azure v2 `program_arguments` and pip option lines are.
pub(crate) fn split_arguments(text: &str) -> Result<Vec<String>> {
    shlex::split(text).ok_or_else(|| {
        PrsError::config(
            "arguments",
            text,
            "has a quote that is not closed (or ends with a lone backslash)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(options: &mut ParallelRunOptions, key: &str, value: &str) -> String {
        match options.set_value(key, value) {
            Ok(()) => panic!("{key} = {value:?} should be rejected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn set_checks_values_with_the_yaml_rules() {
        let mut o = ParallelRunOptions::default();
        assert_eq!(
            set(&mut o, "mini_batch_size", "10 MB"),
            "mini_batch_size \"10 MB\": no spaces allowed; use e.g. \"10MB\""
        );
        let e = set(&mut o, "run_max_try", "0");
        assert!(e.contains("run_max_try \"0\"") && e.contains(">= 1"), "{e}");
        let e = set(&mut o, "node_count", "many");
        assert!(e.contains("parallel_run.node_count \"many\""), "{e}");
        let e = set(&mut o, "error_threshold", "-2");
        assert!(e.contains("error_threshold \"-2\""), "{e}");
        let e = set(&mut o, "output_action", "append");
        assert!(
            e.contains("output_action") && e.contains("append_row"),
            "{e}"
        );
        let e = set(&mut o, "append_row_file_name", "a:b");
        assert!(e.contains("append_row_file_name"), "{e}");
        let e = set(&mut o, "allowed_failed_percent", "120");
        assert!(e.contains("allowed_failed_percent \"120\""), "{e}");
        let e = set(&mut o, "logging_level", "trace");
        assert!(e.contains("logging_level"), "{e}");
        let e = set(&mut o, "output_format", "xml");
        assert!(e.contains("output_format \"xml\""), "{e}");
        let e = set(&mut o, "preserve_order", "yes");
        assert!(e.contains("preserve_order \"yes\""), "{e}");
        let e = set(&mut o, "arguments", "--mini_batch_size 3");
        assert!(e.contains("reserved"), "{e}");
        let e = set(&mut o, "partition_keys", "a,a");
        assert!(e.contains("partition_keys") && e.contains("twice"), "{e}");
        let e = set(&mut o, "environment_variables", "A");
        assert!(e.contains("NAME=value"), "{e}");
        let e = set(&mut o, "output_schema", "id BIGINT,");
        assert!(e.contains("output_schema"), "{e}");
        assert!(o.values().is_empty(), "nothing was stored: {o:?}");
    }

    #[test]
    fn unknown_keys_list_the_keys() {
        let mut o = ParallelRunOptions::default();
        let e = set(&mut o, "mini_batch", "1MB");
        assert!(e.contains("unknown key"), "{e}");
        assert!(e.contains("mini_batch_size"), "{e}");
    }

    #[test]
    fn good_values_are_kept_and_empty_unsets() {
        let mut o = ParallelRunOptions::default();
        o.set_value("MINI_BATCH_SIZE", "10mb").unwrap();
        o.set_value("error_threshold", "-1").unwrap();
        o.set_value("partition_keys", "a, b").unwrap();
        assert_eq!(o.get("mini_batch_size"), Some("10mb"));
        assert_eq!(o.get("partition_keys"), Some("a, b"));
        let entries = o.entries();
        assert!(
            entries
                .iter()
                .any(|e| e.key == "parallel_run.mini_batch_size"
                    && e.value.as_deref() == Some("10mb"))
        );
        o.set_value("mini_batch_size", "").unwrap();
        assert_eq!(o.get("mini_batch_size"), None);
    }

    #[test]
    fn a_job_needs_the_required_keys_and_checks_the_combination() {
        let values = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = SqlJob::from_values(&values(&[("entry_script", "rust:echo")]), Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("parallel_run.error_threshold is missing"), "{e}");
        let e = SqlJob::from_values(
            &values(&[
                ("entry_script", "rust:echo"),
                ("error_threshold", "1"),
                ("partition_keys", "k"),
                ("mini_batch_size", "1MB"),
            ]),
            Path::new("/b"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("partition_keys") && e.contains("mini_batch_size"),
            "{e}"
        );

        let job = SqlJob::from_values(
            &values(&[
                ("entry_script", "score.py"),
                ("error_threshold", "10"),
                ("python", "venv/bin/python"),
                ("pip", "numpy, pandas"),
                ("environment_variables", "A=1, B=x"),
                ("arguments", "--model 'my model.bin' -k 5"),
                ("report_dir", "logs/run"),
                ("preserve_order", "TRUE"),
                ("process_count_per_node", "2"),
            ]),
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(job.config.entry_script, "/b/score.py");
        assert_eq!(job.config.error_threshold, 10);
        assert_eq!(job.config.node_count, 1);
        assert_eq!(job.config.process_count_per_node, Some(2));
        assert_eq!(
            job.config.environment.python.as_deref(),
            Some("/b/venv/bin/python")
        );
        assert_eq!(job.config.environment.pip, vec!["numpy", "pandas"]);
        assert_eq!(
            job.config
                .environment_variables
                .get("B")
                .map(String::as_str),
            Some("x")
        );
        assert_eq!(job.arguments, vec!["--model", "my model.bin", "-k", "5"]);
        assert_eq!(job.report_dir, Some(PathBuf::from("/b/logs/run")));
        assert!(job.preserve_order);
    }

    /// A catalogue example (YAML) as SQL writes it: lists and mappings comma-separated.
    fn sql_text(example: &str) -> String {
        match serde_yaml::from_str::<Value>(example).unwrap() {
            Value::Sequence(items) => items
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap()))
                .collect::<Vec<_>>()
                .join(","),
            _ => example.to_string(),
        }
    }

    /// Every catalogue parameter flagged SQL is a key, settable with SET and effective in the
    /// job; SQL's own keys are not catalogue parameters.
    #[test]
    fn every_sql_parameter_of_the_catalogue_is_settable() {
        let names = key_names();
        let base = BTreeMap::from([
            ("entry_script".to_string(), "score.py".to_string()),
            ("error_threshold".to_string(), "3".to_string()),
        ]);
        let baseline = SqlJob::from_values(&base, Path::new("/b")).unwrap().config;
        for param in catalogue::CATALOGUE {
            assert_eq!(
                names.contains(&param.name),
                param.has(catalogue::SQL),
                "{}: SQL keys are the catalogue's SQL parameters",
                param.name
            );
            if !param.has(catalogue::SQL) {
                continue;
            }
            let text = sql_text(param.example);
            let mut o = ParallelRunOptions::default();
            o.set_value(&format!("parallel_run.{}", param.name), &text)
                .unwrap_or_else(|e| panic!("SET {} = {text:?}: {e}", param.name));
            assert_eq!(o.get(param.name), Some(text.as_str()));
            let mut values = base.clone();
            values.insert(param.name.to_string(), text.clone());
            let config = SqlJob::from_values(&values, Path::new("/b"))
                .unwrap_or_else(|e| panic!("{} = {text:?}: {e}", param.name))
                .config;
            let write = param.write.unwrap();
            assert_ne!(
                write(&config, OutputFormat::Txt).unwrap(),
                write(&baseline, OutputFormat::Txt).unwrap(),
                "SET {} = {text:?} had no effect",
                param.name
            );
        }
        for own in OWN_KEYS {
            assert!(
                catalogue::param(own.name).is_none(),
                "{} is a catalogue parameter: flag it SQL there instead",
                own.name
            );
        }
    }

    #[test]
    fn arguments_split_like_a_shell() {
        assert_eq!(
            split_arguments("  a \"b c\" d'e f'  ").unwrap(),
            vec!["a", "b c", "de f"]
        );
        assert_eq!(split_arguments("''").unwrap(), vec![""]);
        assert!(split_arguments("'open").is_err());
    }
}
