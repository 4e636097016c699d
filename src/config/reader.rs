//! Reading a job file: the YAML document (ours, or an Azure v2 file translated by
//! [`crate::config::azure_v2`]), `--set` overrides, path resolution, and every key's rule.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::config::azure_v2::{self, V2Options};
use crate::config::catalogue::{
    self, Param, ALLOWED_FAILED_COUNT, ALLOWED_FAILED_PERCENT, APPEND_ROW_FILE_NAME,
    COMPUTE_TARGET, DESCRIPTION, ENTRY_SCRIPT, ENVIRONMENT_VARIABLES, ERROR_THRESHOLD,
    EXECUTOR_WAIT_TIMEOUT, ISOLATE_FAILURES, ISOLATE_TIMEOUTS, LOGGING_LEVEL, MINI_BATCH_SIZE,
    NODE_COUNT, OUTPUT_ACTION, OUTPUT_FOLDER, PARTITION_KEYS, PROCESS_COUNT_PER_NODE,
    RUN_INVOCATION_TIMEOUT, RUN_MAX_TRY, SOURCE_DIRECTORY,
};
use crate::config::environment::parse_environment;
use crate::config::job::{
    path_text, resolve, rule, CONFIG, CSV_HEADER_RULE, DELIMITER_RULE, INPUT_KEYS,
    JOB_OVERRIDE_KEYS, MEMORY_LIMIT_RULE, MINI_BATCH_FORMAT_RULE, RETRY_KEYS, STORAGE_OPTIONS_RULE,
    TOP_LEVEL_KEYS,
};
use crate::config::yaml::{show, string_map, unknown_key, Section};
use crate::config::{is_object_url, is_url, StorageOptions};
use crate::config::{mltable, named};
use crate::config::{
    ComputeTarget, CsvHeader, CsvOptions, InputFormat, InputSource, InputSpec, JobSpec, LoadedJob,
    LoggingLevel, MiniBatchFormat, MiniBatchSize, OutputAction, OutputFormat, ParallelRunConfig,
};
use crate::error::{PrsError, Result};

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
pub(super) fn parse_job(
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
        // `--output DIR` (a v2 translation has used it already, for the outputs' paths).
        if let Some(dir) = &v2.output_dir {
            root.insert("output".into(), dir.display().to_string().into());
        }
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
pub(super) fn read_job(
    root: Value,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<JobSpec> {
    let mut top = Section::new("", root, TOP_LEVEL_KEYS)?;
    let config = top.take(CONFIG).ok_or_else(|| {
        PrsError::missing(
            CONFIG,
            "required: the mapping of PRS parameters (entry_script, error_threshold, \
             output_action, node_count, ...)",
        )
    })?;
    let config = read_config(config, base_dir, warnings)?;
    let (inputs, remote_mltables) = read_inputs(top.take("inputs"), base_dir)?;
    let output = top.string(OUTPUT_FOLDER.name, &OUTPUT_FOLDER.message())?;
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
        dead_letter_rows: top
            .boolean("dead_letter_rows", rule::BOOLEAN)?
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
        remote_mltables,
        base_dir: Some(base_dir.to_path_buf()),
    })
}

/// `models:`: a mapping of model names (`iris`, or `iris:2` for a version) to local files or
/// folders, resolved against the job's folder, or object-storage URLs (kept as written).
pub(super) fn read_models(
    value: Option<Value>,
    base_dir: &Path,
) -> Result<BTreeMap<String, String>> {
    const RULE: &str = "must map model names (or name:version) to local files or folders or \
                        object-storage URLs, e.g. {iris: ./models/iris.pkl, \"iris:2\": \
                        s3://bucket/models/iris-v2/}";
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
        // On object storage: downloaded when the job starts (into the job's cache).
        if is_object_url(&path) {
            out.insert(name.clone(), path);
            continue;
        }
        if is_url(&path) {
            return Err(PrsError::config(
                &field,
                &path,
                "is a URL of no supported store: use a local file or folder, or an s3://, \
                 az:// or abfss:// URL",
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
pub(super) fn resolve_output(base_dir: &Path, output: &str) -> Result<PathBuf> {
    if is_object_url(output) {
        return Ok(PathBuf::from(output));
    }
    Ok(PathBuf::from(resolve_location("output", base_dir, output)?))
}

/// Reads `parallel_run_config` (Azure's names, ours and the v2 aliases).
pub(super) fn read_config(
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

/// [`read_config`] for a mapping named `section` in errors. The keys, aliases and rules are
/// the [`catalogue`]'s (plus v2's structural `retry_settings`).
pub(super) fn read_config_in(
    section: &str,
    value: Value,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<ParallelRunConfig> {
    let mut s = Section::new(section, value, &config_keys())?;
    let entry_script = s.string(ENTRY_SCRIPT.name, &ENTRY_SCRIPT.message())?;
    let entry_script = required(&s, &ENTRY_SCRIPT, entry_script)?;
    let error_threshold = s.integer::<i64>(ERROR_THRESHOLD.name, &ERROR_THRESHOLD.message())?;
    let error_threshold = required(&s, &ERROR_THRESHOLD, error_threshold)?;
    let output_action = s.string(OUTPUT_ACTION.name, &OUTPUT_ACTION.message())?;
    let output_action = required(&s, &OUTPUT_ACTION, output_action)?;
    let output_action = output_action
        .parse::<OutputAction>()
        .map_err(|_| OUTPUT_ACTION.error_at(s.field(OUTPUT_ACTION.name), &output_action))?;
    let mut config = ParallelRunConfig::new(entry_script, error_threshold, output_action);

    let key = pick(&s, &NODE_COUNT)?;
    let node_count = s.integer::<u32>(key, &NODE_COUNT.message())?;
    config.node_count = required(&s, &NODE_COUNT, node_count)?;
    let key = pick(&s, &PROCESS_COUNT_PER_NODE)?;
    config.process_count_per_node = s.integer::<u32>(key, &PROCESS_COUNT_PER_NODE.message())?;
    let size = s.scalar(MINI_BATCH_SIZE.name, &MINI_BATCH_SIZE.message())?;
    config.mini_batch_size = size.as_deref().map(MiniBatchSize::parse).transpose()?;
    let source_directory = s.string(SOURCE_DIRECTORY.name, &SOURCE_DIRECTORY.message())?;
    config.source_directory = source_directory.map(|dir| resolve(base_dir, &dir));
    config.description = s.scalar(DESCRIPTION.name, &DESCRIPTION.message())?;
    if let Some(level) = s.string(LOGGING_LEVEL.name, &LOGGING_LEVEL.message())? {
        config.logging_level = level
            .parse::<LoggingLevel>()
            .map_err(|_| LOGGING_LEVEL.error_at(s.field(LOGGING_LEVEL.name), &level))?;
    }
    read_tries(&mut s, &mut config)?;
    let file_name = APPEND_ROW_FILE_NAME;
    if let Some(name) = s.string(file_name.name, &file_name.message())? {
        config.append_row_file_name = name;
    }
    let key = pick(&s, &ALLOWED_FAILED_COUNT)?;
    config.allowed_failed_count = s.integer::<i64>(key, &ALLOWED_FAILED_COUNT.message())?;
    let percent = ALLOWED_FAILED_PERCENT;
    config.allowed_failed_percent = s.number(percent.name, &percent.message())?;
    config.partition_keys = s
        .string_list(PARTITION_KEYS.name, &PARTITION_KEYS.message())?
        .unwrap_or_default();
    config.isolate_failures = s
        .boolean(ISOLATE_FAILURES.name, &ISOLATE_FAILURES.message())?
        .unwrap_or(false);
    config.isolate_timeouts = s
        .boolean(ISOLATE_TIMEOUTS.name, &ISOLATE_TIMEOUTS.message())?
        .unwrap_or(false);
    let variables = ENVIRONMENT_VARIABLES;
    config.environment_variables = s
        .string_map(variables.name, &variables.message())?
        .unwrap_or_default();
    if let Some(seconds) =
        s.integer::<u64>(EXECUTOR_WAIT_TIMEOUT.name, &EXECUTOR_WAIT_TIMEOUT.message())?
    {
        config.executor_wait_timeout = seconds;
    }
    let key = pick(&s, &COMPUTE_TARGET)?;
    if let Some(target) = s.string(key, &COMPUTE_TARGET.message())? {
        config.compute_target = parse_compute_target(&s.field(key), &target, warnings);
    }
    read_environment(&mut s, &mut config, base_dir, warnings)?;
    config.entry_script = resolve_entry_script(&config, base_dir)?;
    Ok(config)
}

/// Azure v2's structural keys `parallel_run_config:` also reads (they are not aliases: one
/// stands for two parameters).
const V2_SECTIONS: &[&str] = &["retry_settings"];

/// The keys of `parallel_run_config:`: the catalogue's names and aliases, and
/// [`V2_SECTIONS`].
fn config_keys() -> Vec<&'static str> {
    let mut keys = catalogue::config_keys();
    keys.extend(V2_SECTIONS);
    keys
}

/// Which of `param`'s name and its alias is given (see [`Section::pick`]).
fn pick(s: &Section, param: &Param) -> Result<&'static str> {
    match param.alias {
        Some(alias) => s.pick(param.name, alias),
        None => Ok(param.name),
    }
}

/// A required parameter's value: missing is an error with its rule as the explanation.
fn required<T>(s: &Section, param: &Param, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| PrsError::missing(s.field(param.name), param.required_message()))
}

/// run_invocation_timeout and run_max_try, or the v2 `retry_settings` (tries = retries + 1).
pub(super) fn read_tries(s: &mut Section, config: &mut ParallelRunConfig) -> Result<()> {
    let (mut max_retries, mut retry_timeout) = (None, None);
    let timeout_rule = RUN_INVOCATION_TIMEOUT.message();
    if let Some(mut retry) = s.section("retry_settings", RETRY_KEYS)? {
        for (key, original) in [
            ("max_retries", RUN_MAX_TRY.name),
            ("timeout", RUN_INVOCATION_TIMEOUT.name),
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
        retry_timeout = retry.integer::<u64>("timeout", &timeout_rule)?;
    }
    if let Some(timeout) = s
        .integer::<u64>(RUN_INVOCATION_TIMEOUT.name, &timeout_rule)?
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
        None => s.integer::<u32>(RUN_MAX_TRY.name, &RUN_MAX_TRY.message())?,
    };
    if let Some(tries) = tries {
        config.run_max_try = tries;
    }
    Ok(())
}

/// The environment, with Azure's environment variables merged into `environment_variables`
/// (keys already set there win) and a python path resolved against the job folder.
pub(super) fn read_environment(
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
pub(super) fn parse_compute_target(
    field: &str,
    target: &str,
    warnings: &mut Vec<String>,
) -> ComputeTarget {
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
pub(super) fn resolve_entry_script(config: &ParallelRunConfig, base_dir: &Path) -> Result<String> {
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

/// Reads `inputs:` (absent = none; `validate` then asks for one), and the MLTable inputs on
/// object storage still to expand.
pub(super) fn read_inputs(
    value: Option<Value>,
    base_dir: &Path,
) -> Result<(Vec<InputSpec>, Vec<mltable::RemoteMlTable>)> {
    match value {
        None => Ok((Vec::new(), Vec::new())),
        Some(Value::Sequence(items)) => {
            // MLTable inputs become the path (and sql) inputs they describe (those on object
            // storage once their file is fetched).
            let mut expanded = Vec::with_capacity(items.len());
            let mut remote_mltables = Vec::new();
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
                    let field = format!("inputs[{i}]");
                    match mltable::expand(&field, item, base_dir, expanded.len())? {
                        mltable::Expansion::Local(entries) => expanded.extend(entries),
                        mltable::Expansion::Remote(remote) => remote_mltables.push(remote),
                    }
                } else {
                    expanded.push(item);
                }
            }
            let inputs = expanded
                .into_iter()
                .enumerate()
                .map(|(i, item)| read_input(i, item, base_dir))
                .collect::<Result<Vec<_>>>()?;
            Ok((inputs, remote_mltables))
        }
        Some(other) => Err(PrsError::config(
            "inputs",
            show(&other),
            "must be a list of {name, path, format} or {name, sql} entries",
        )),
    }
}

/// Reads one `inputs:` entry: a path with its format, or a SQL query.
pub(super) fn read_input(index: usize, value: Value, base_dir: &Path) -> Result<InputSpec> {
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
    let csv = read_csv_options(&mut s)?;
    let path_column = s.string(
        "path_column",
        "must be a column name, e.g. Path (the column then holds each row's file path)",
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
    let path_format = match &source {
        InputSource::Path { format, .. } => Some(*format),
        InputSource::Sql(_) => None,
    };
    if let Some(pattern) = &partition_format {
        if path_format.is_none() {
            return Err(PrsError::config(
                s.field("partition_format"),
                pattern,
                "applies to path inputs only; remove it from a sql input",
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
    if let Some((key, value)) = csv.as_ref().map(|(key, value, _)| (key, value)) {
        if path_format != Some(InputFormat::Csv) {
            return Err(PrsError::config(
                s.field(key),
                value,
                "applies to csv inputs only; remove it",
            ));
        }
    }
    if let Some(column) = &path_column {
        let tabular = path_format.is_some_and(|f| f != InputFormat::Files);
        if !tabular || column.trim().is_empty() {
            return Err(PrsError::config(
                s.field("path_column"),
                column,
                "applies to parquet, csv and json path inputs (a file dataset's rows are \
                 paths already) and must name a column, e.g. Path",
            ));
        }
    }
    Ok(InputSpec {
        name,
        source,
        partition_format,
        csv: csv.map(|(_, _, options)| options).unwrap_or_default(),
        path_column,
    })
}

/// The CSV options of an `inputs:` entry (`delimiter`, `header`, `empty_as_string`), with the
/// first key given and its value (for the error when the input is not CSV); `None` when none
/// is given.
fn read_csv_options(s: &mut Section) -> Result<Option<(&'static str, String, CsvOptions)>> {
    let mut options = CsvOptions::default();
    let mut given = None;
    if let Some(text) = s.scalar("delimiter", DELIMITER_RULE)? {
        options.delimiter = CsvOptions::parse_delimiter(&text)
            .ok_or_else(|| PrsError::config(s.field("delimiter"), &text, DELIMITER_RULE))?;
        given.get_or_insert(("delimiter", text));
    }
    if let Some(text) = s.scalar("header", CSV_HEADER_RULE)? {
        options.header = CsvHeader::from_name(&text)
            .ok_or_else(|| PrsError::config(s.field("header"), &text, CSV_HEADER_RULE))?;
        given.get_or_insert(("header", text));
    }
    if let Some(value) = s.boolean("empty_as_string", rule::BOOLEAN)? {
        options.empty_as_string = value;
        given.get_or_insert(("empty_as_string", value.to_string()));
    }
    Ok(given.map(|(key, text)| (key, text, options)))
}

/// An input location: URLs are kept, `file://` URLs become paths, relative paths resolve
/// against the job folder (a trailing `/` is kept).
pub(super) fn resolve_location(field: &str, base_dir: &Path, location: &str) -> Result<String> {
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

/// Applies one `--set key=value`: job-level keys (`output`, `output_format`, `preserve_order`)
/// at the top, anything else inside `parallel_run_config` (dotted keys reach into mappings,
/// e.g. `retry_settings.max_retries=2` or `environment_variables.OMP_NUM_THREADS=1`).
pub(super) fn apply_override(root: &mut Mapping, text: &str) -> Result<()> {
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
    let mut allowed = config_keys();
    if !allowed.contains(&path[1]) {
        allowed.extend(JOB_OVERRIDE_KEYS);
        return Err(unknown_key("--set", path[1], &allowed));
    }
    set_nested(root, &path, value, text)
}

/// Sets `path` (non-empty) in nested mappings, creating missing or null ones on the way.
pub(super) fn set_nested(
    root: &mut Mapping,
    path: &[&str],
    value: Value,
    text: &str,
) -> Result<()> {
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
