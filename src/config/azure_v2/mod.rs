//! Azure ML v2 parallel jobs, loaded as they are: a translation layer from the v2 layout
//! (`type: parallel`, or the `type: parallel` job of a `type: pipeline` file) to parallel-run's
//! own job layout, which the ordinary reader then validates. Nothing here runs anything.
//!
//! What maps where:
//! - `task.code` -> `source_directory`; `task.entry_script`; `task.environment` (a `conda_file`
//!   gives its pip list and python version; `image` and conda-only packages become warnings);
//!   `task.program_arguments` -> `arguments` (with `${{inputs.X}}` / `${{outputs.Y}}` resolved,
//!   and PRS settings such as `--allowed_failed_percent 30` applied as keys);
//!   `task.append_row_to: ${{outputs.Y}}` -> the append_row file (else `summary_only`).
//! - `resources.instance_count`, `max_concurrency_per_instance`, `mini_batch_size`,
//!   `mini_batch_error_threshold`, `error_threshold`, `retry_settings`, `logging_level`,
//!   `environment_variables`, `partition_keys` -> the same parameters.
//! - `input_data: ${{inputs.X}}` -> the one processed input (`uri_folder` / `uri_file`: a file
//!   dataset); every other input is a side input: its path (or literal value) only reaches
//!   `program_arguments`.
//! - `outputs:` -> folders (`uri_folder`) or files (`uri_file`); one without a path is
//!   `<output>/<name>`, and its folder is created before init().
//! - `azureml://datastores/NAME/paths/P`, `${{default_datastore}}` and `${{name}}` resolve
//!   through a `datastores:` key (name -> local folder or object-store URL) and the job's
//!   name; `${{parent.*}}` and other unresolvable references are errors that suggest
//!   `--input NAME=PATH` / `--output NAME=PATH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::config::named::{names_none, reference, substitute};
use crate::config::yaml::{scalar_text, show};
use crate::error::{PrsError, Result};

/// Command-line choices for a v2 job file: which job of a pipeline, and paths that replace
/// named inputs and outputs (and the output folder).
#[derive(Debug, Clone, Default)]
pub struct V2Options {
    /// The `jobs:` entry of a pipeline file (`--job NAME`); the only parallel job when absent.
    pub job: Option<String>,
    /// `--input NAME=PATH`: replaces the path of input NAME.
    pub inputs: BTreeMap<String, String>,
    /// `--output NAME=PATH`: replaces the path of output NAME.
    pub outputs: BTreeMap<String, String>,
    /// `--output DIR`: the job's own output folder (logs, outputs without a path).
    pub output_dir: Option<PathBuf>,
    /// The folder relative `--input` / `--output NAME=PATH` paths are relative to (the
    /// current folder of the command line); the job file's folder when `None`.
    pub command_dir: Option<PathBuf>,
}

impl V2Options {
    /// A path given as `--input` / `--output NAME=PATH`, absolute (URLs as written).
    pub(crate) fn given_path(&self, base_dir: &Path, path: &str) -> String {
        absolute(self.command_dir.as_deref().unwrap_or(base_dir), path)
    }
}

/// A v2 job in parallel-run's layout, plus the folders to create before the workers start.
#[derive(Debug)]
pub struct Translated {
    /// The job document in parallel-run's layout (absolute paths).
    pub root: Mapping,
    /// Output folders the script writes into (named outputs), created before init().
    pub output_folders: Vec<PathBuf>,
}

/// True for a v2 document: `type: parallel` or `type: pipeline`.
pub fn is_v2(root: &Mapping) -> bool {
    matches!(
        root.get("type").and_then(Value::as_str),
        Some("parallel") | Some("pipeline")
    )
}

/// Keys of a v2 parallel job that load with a warning (they mean nothing on this machine).
const IGNORED_KEYS: &[&str] = &[
    "$schema",
    "display_name",
    "experiment_name",
    "tags",
    "compute",
    "settings",
    "identity",
    "services",
    "is_deterministic",
];

/// Keys of a v2 parallel job copied as they are into `parallel_run_config` (the v2 names are
/// parameter aliases there).
const COPIED_KEYS: &[&str] = &[
    "mini_batch_size",
    "mini_batch_error_threshold",
    "error_threshold",
    "retry_settings",
    "logging_level",
    "environment_variables",
    "partition_keys",
    "max_concurrency_per_instance",
];

/// Our own keys a v2 file may carry beside Azure's.
const OWN_KEYS: &[&str] = &[
    "datastores",
    "output",
    "output_format",
    "preserve_order",
    "allow_empty_input",
    "dead_letter_rows",
    "mini_batch_format",
    "memory_limit",
    "storage_options",
];

/// PRS settings scripts pass in `program_arguments` that are parameters here: applied as keys.
const APPLIED_ARGUMENTS: &[&str] = &[
    "allowed_failed_percent",
    "allowed_failed_count",
    "run_invocation_timeout",
    "run_max_try",
    "error_threshold",
    "mini_batch_size",
    "logging_level",
    "process_count_per_node",
    "append_row_file_name",
];

/// PRS settings in `program_arguments` that have no meaning here: named in a warning.
const IGNORED_ARGUMENTS: &[&str] = &[
    "task_overhead_timeout",
    "progress_update_timeout",
    "first_task_creation_timeout",
    "resource_monitor_interval",
    "copy_logs_to_parent",
    "enable_profiling",
    "profiling_module",
];

/// Translates a v2 document whose relative paths are relative to `base_dir`.
pub fn translate(
    root: Mapping,
    base_dir: &Path,
    options: &V2Options,
    warnings: &mut Vec<String>,
) -> Result<Translated> {
    let mut datastores = read_datastores(&root, base_dir)?;
    let (name, job, pipeline_keys) = select_job(root, options)?;
    datastores.extend(read_datastores(&job, base_dir)?);
    for key in pipeline_keys {
        warnings.push(format!(
            "{key}: an Azure pipeline setting with no meaning here; ignored"
        ));
    }
    Translator {
        base_dir,
        options,
        datastores,
        name,
        warnings,
    }
    .job(job)
}

/// The job to run: the document itself, or the chosen `type: parallel` entry of `jobs:`.
/// Returns its name (`${{name}}`), its mapping and the pipeline-level keys ignored.
fn select_job(mut root: Mapping, options: &V2Options) -> Result<(String, Mapping, Vec<String>)> {
    if root.get("type").and_then(Value::as_str) == Some("parallel") {
        let name = root
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("parallel_job")
            .to_string();
        return Ok((name, root, Vec::new()));
    }
    let jobs = match root.remove("jobs") {
        Some(Value::Mapping(jobs)) => jobs,
        _ => {
            return Err(PrsError::config(
                "jobs",
                "",
                "a type: pipeline file needs a jobs: mapping with a type: parallel job",
            ))
        }
    };
    let ignored: Vec<String> = root
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| !matches!(*k, "type" | "datastores" | "output" | "description"))
        .map(str::to_string)
        .collect();
    let mut parallel: Vec<(String, Mapping)> = jobs
        .into_iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::String(k), Value::Mapping(m))
                if m.get("type").and_then(Value::as_str) == Some("parallel") =>
            {
                Some((k, m))
            }
            _ => None,
        })
        .collect();
    let names: Vec<String> = parallel.iter().map(|(k, _)| k.clone()).collect();
    let chosen = match &options.job {
        Some(wanted) => parallel
            .iter()
            .position(|(k, _)| k == wanted)
            .ok_or_else(|| {
                PrsError::config(
                    "--job",
                    wanted,
                    format!(
                        "is not a type: parallel job of this pipeline (its parallel jobs: [{}])",
                        names.join(", ")
                    ),
                )
            })?,
        None if parallel.len() == 1 => 0,
        None if parallel.is_empty() => {
            return Err(PrsError::config(
                "jobs",
                "",
                "this pipeline has no type: parallel job; parallel-run runs parallel jobs only",
            ))
        }
        None => {
            return Err(PrsError::config(
                "--job",
                "",
                format!(
                    "this pipeline has several parallel jobs: pick one with --job NAME ([{}])",
                    names.join(", ")
                ),
            ))
        }
    };
    let (name, job) = parallel.swap_remove(chosen);
    Ok((name, job, ignored))
}

/// `datastores:` name -> local folder (absolute) or object-store URL.
fn read_datastores(root: &Mapping, base_dir: &Path) -> Result<BTreeMap<String, String>> {
    let Some(value) = root.get("datastores") else {
        return Ok(BTreeMap::new());
    };
    let Value::Mapping(mapping) = value else {
        return Err(PrsError::config(
            "datastores",
            show(value),
            "must map datastore names to local folders or object-store URLs",
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in mapping {
        let (Some(name), Some(location)) = (k.as_str(), scalar_text(v)) else {
            return Err(PrsError::config(
                "datastores",
                show(v),
                "must map datastore names to local folders or object-store URLs",
            ));
        };
        out.insert(name.to_string(), absolute(base_dir, &location));
    }
    Ok(out)
}

/// `location` made absolute against `base_dir` unless it is a URL.
pub(super) fn absolute(base_dir: &Path, location: &str) -> String {
    if crate::config::is_url(location) || Path::new(location).is_absolute() {
        return location.to_string();
    }
    crate::config::resolve_path(base_dir, location)
        .display()
        .to_string()
}

/// A named input: a path (with its type) or a literal value.
#[derive(Debug, Clone)]
enum InputValue {
    Path { kind: String, path: String },
    Literal(String),
}

struct Translator<'a> {
    base_dir: &'a Path,
    options: &'a V2Options,
    datastores: BTreeMap<String, String>,
    name: String,
    warnings: &'a mut Vec<String>,
}

impl Translator<'_> {
    fn job(mut self, mut job: Mapping) -> Result<Translated> {
        let mut config = Mapping::new();
        let mut root = Mapping::new();
        let take = |job: &mut Mapping, key: &str| job.remove(key);

        for key in IGNORED_KEYS {
            if job.remove(*key).is_some() {
                self.warnings.push(format!(
                    "{key}: an Azure setting with no meaning here; ignored"
                ));
            }
        }
        job.remove("type");
        job.remove("name");
        job.remove("datastores");
        if let Some(description) = take(&mut job, "description") {
            config.insert("description".into(), description);
        }
        for key in COPIED_KEYS {
            if let Some(value) = job.remove(*key) {
                config.insert((*key).into(), value);
            }
        }
        if let Some(resources) = take(&mut job, "resources") {
            self.resources(resources, &mut config)?;
        }
        // Azure's defaults for a parallel job: failures are ignored unless a threshold is set.
        if !config.contains_key("error_threshold") {
            config.insert("error_threshold".into(), Value::from(-1));
        }
        if !config.contains_key("node_count") && !config.contains_key("instance_count") {
            config.insert("node_count".into(), Value::from(1));
        }

        let output_dir = match &self.options.output_dir {
            Some(dir) => dir.display().to_string(),
            None => match take(&mut job, "output").as_ref().and_then(scalar_text) {
                Some(dir) => absolute(self.base_dir, &dir),
                None => absolute(self.base_dir, &format!("out/{}", self.name)),
            },
        };
        job.remove("output");
        let inputs = self.inputs(take(&mut job, "inputs"))?;
        let (outputs, output_folders) = self.outputs(take(&mut job, "outputs"), &output_dir)?;

        let input_data = take(&mut job, "input_data")
            .as_ref()
            .and_then(scalar_text)
            .ok_or_else(|| {
                PrsError::missing(
                    "input_data",
                    "required: the input cut into mini-batches, e.g. input_data: ${{inputs.images}}",
                )
            })?;
        let processed = reference(&input_data, "inputs").ok_or_else(|| {
            PrsError::config(
                "input_data",
                &input_data,
                "must be ${{inputs.NAME}} naming one of the job's inputs",
            )
        })?;
        let input = match inputs.get(processed) {
            Some(InputValue::Path { kind, path }) => {
                self.processed_input(processed, kind, path)?
            }
            Some(InputValue::Literal(value)) => {
                return Err(PrsError::config(
                    "input_data",
                    &input_data,
                    format!("names the literal input {processed} = {value:?}; it must name a uri_folder, uri_file or mltable input"),
                ))
            }
            None => {
                return Err(names_none("input_data", &input_data, "input", inputs.keys()))
            }
        };
        root.insert(
            "inputs".into(),
            Value::Sequence(vec![Value::Mapping(input)]),
        );

        let task =
            match take(&mut job, "task") {
                Some(Value::Mapping(task)) => task,
                _ => return Err(PrsError::missing(
                    "task",
                    "required: {type: run_function, code, entry_script, program_arguments, ...}",
                )),
            };
        let mut append_row_to = None;
        self.task(
            task,
            &inputs,
            &outputs,
            &mut config,
            &mut root,
            &mut append_row_to,
        )?;
        match append_row_to {
            Some(target) => {
                config.insert("output_action".into(), "append_row".into());
                let (folder, file) = match outputs.get(&target) {
                    Some((kind, path)) if kind == "uri_file" => split_file(path),
                    Some((_, path)) => (path.clone(), None),
                    None => {
                        return Err(names_none(
                            "task.append_row_to",
                            &target,
                            "output",
                            outputs.keys(),
                        ))
                    }
                };
                root.insert("output".into(), folder.into());
                if let Some(file) = file {
                    config.insert("append_row_file_name".into(), file.into());
                }
            }
            None => {
                config.insert("output_action".into(), "summary_only".into());
                root.insert("output".into(), output_dir.clone().into());
            }
        }

        for key in OWN_KEYS {
            if let Some(value) = job.remove(*key) {
                root.insert((*key).into(), value);
            }
        }
        if let Some((key, _)) = job.into_iter().next() {
            return Err(PrsError::config(
                show(&key),
                "",
                "is not a key of an Azure v2 parallel job that parallel-run knows; remove it",
            ));
        }
        root.insert("parallel_run_config".into(), Value::Mapping(config));
        Ok(Translated {
            root,
            output_folders,
        })
    }

    fn resources(&mut self, resources: Value, config: &mut Mapping) -> Result<()> {
        let Value::Mapping(resources) = resources else {
            return Err(PrsError::config(
                "resources",
                show(&resources),
                "must be a mapping such as {instance_count: 2}",
            ));
        };
        for (key, value) in resources {
            match key.as_str() {
                Some("instance_count") => {
                    config.insert("instance_count".into(), value);
                }
                Some(other) => self.warnings.push(format!(
                    "resources.{other}: an Azure compute setting with no meaning here; ignored"
                )),
                None => {}
            }
        }
        Ok(())
    }

    /// Named inputs: paths resolved (overrides first), literals kept.
    fn inputs(&mut self, value: Option<Value>) -> Result<BTreeMap<String, InputValue>> {
        let mut out = BTreeMap::new();
        let Some(value) = value else {
            return Ok(out);
        };
        let Value::Mapping(inputs) = value else {
            return Err(PrsError::config(
                "inputs",
                show(&value),
                "must map input names to inputs",
            ));
        };
        for (key, value) in inputs {
            let Some(name) = key.as_str().map(str::to_string) else {
                continue;
            };
            let field = format!("inputs.{name}");
            let input = match value {
                Value::Mapping(mut spec) => {
                    let kind = spec
                        .remove("type")
                        .as_ref()
                        .and_then(scalar_text)
                        .unwrap_or_else(|| "uri_folder".to_string());
                    spec.remove("mode");
                    let raw = match self.options.inputs.get(&name) {
                        Some(path) => self.options.given_path(self.base_dir, path),
                        None => spec
                            .remove("path")
                            .as_ref()
                            .and_then(scalar_text)
                            .ok_or_else(|| {
                                PrsError::missing(
                                    format!("{field}.path"),
                                    format!("give the input a path, or pass --input {name}=PATH"),
                                )
                            })?,
                    };
                    let path = self.path(&raw, &format!("{field}.path"), "--input", &name)?;
                    InputValue::Path { kind, path }
                }
                other => match scalar_text(&other) {
                    Some(text) => match self.options.inputs.get(&name) {
                        Some(value) => InputValue::Literal(value.clone()),
                        None => InputValue::Literal(text),
                    },
                    None => {
                        return Err(PrsError::config(
                            field,
                            show(&other),
                            "must be a literal value or {type, path}",
                        ))
                    }
                },
            };
            out.insert(name, input);
        }
        for name in self.options.inputs.keys() {
            if !out.contains_key(name) {
                return Err(names_none("--input", name, "input", out.keys()));
            }
        }
        Ok(out)
    }

    /// Named outputs: name -> (type, absolute path), and the folders to create.
    #[allow(clippy::type_complexity)]
    fn outputs(
        &mut self,
        value: Option<Value>,
        output_dir: &str,
    ) -> Result<(BTreeMap<String, (String, String)>, Vec<PathBuf>)> {
        let mut out = BTreeMap::new();
        let mut folders = Vec::new();
        let outputs = match value {
            None | Some(Value::Null) => Mapping::new(),
            Some(Value::Mapping(m)) => m,
            Some(other) => {
                return Err(PrsError::config(
                    "outputs",
                    show(&other),
                    "must map output names to outputs",
                ))
            }
        };
        for (key, value) in outputs {
            let Some(name) = key.as_str().map(str::to_string) else {
                continue;
            };
            let field = format!("outputs.{name}");
            let mut spec = match value {
                Value::Mapping(m) => m,
                Value::Null => Mapping::new(),
                other => {
                    return Err(PrsError::config(
                        field,
                        show(&other),
                        "must be {type, path} or empty",
                    ))
                }
            };
            let kind = spec
                .remove("type")
                .as_ref()
                .and_then(scalar_text)
                .unwrap_or_else(|| "uri_folder".to_string());
            if kind != "uri_folder" && kind != "uri_file" {
                return Err(PrsError::config(
                    format!("{field}.type"),
                    &kind,
                    "parallel-run writes uri_folder and uri_file outputs",
                ));
            }
            let path = match self.options.outputs.get(&name) {
                Some(path) => {
                    let given = self.options.given_path(self.base_dir, path);
                    self.path(&given, &field, "--output", &name)?
                }
                None => match spec.remove("path").as_ref().and_then(scalar_text) {
                    Some(raw) => self.path(&raw, &format!("{field}.path"), "--output", &name)?,
                    None => format!("{}/{name}", output_dir.trim_end_matches('/')),
                },
            };
            if !crate::config::is_url(&path) {
                let folder = if kind == "uri_folder" {
                    PathBuf::from(&path)
                } else {
                    PathBuf::from(split_file(&path).0)
                };
                folders.push(folder);
            }
            out.insert(name, (kind, path));
        }
        for name in self.options.outputs.keys() {
            if !out.contains_key(name) {
                return Err(names_none("--output", name, "output", out.keys()));
            }
        }
        Ok((out, folders))
    }

    /// The processed input in parallel-run's layout.
    fn processed_input(&mut self, name: &str, kind: &str, path: &str) -> Result<Mapping> {
        let format = match kind {
            "uri_folder" | "uri_file" | "custom_model" => "files",
            "mltable" => "mltable",
            other => {
                return Err(PrsError::config(
                    format!("inputs.{name}.type"),
                    other,
                    "input_data must be a uri_folder, uri_file or mltable input",
                ))
            }
        };
        let mut input = Mapping::new();
        input.insert("name".into(), name.into());
        input.insert("path".into(), path.into());
        input.insert("format".into(), format.into());
        Ok(input)
    }

    fn task(
        &mut self,
        mut task: Mapping,
        inputs: &BTreeMap<String, InputValue>,
        outputs: &BTreeMap<String, (String, String)>,
        config: &mut Mapping,
        root: &mut Mapping,
        append_row_to: &mut Option<String>,
    ) -> Result<()> {
        match task
            .remove("type")
            .as_ref()
            .and_then(scalar_text)
            .as_deref()
        {
            None | Some("run_function") => {}
            Some(other) => {
                return Err(PrsError::config(
                    "task.type",
                    other,
                    "parallel-run runs task.type: run_function",
                ))
            }
        }
        let code = task.remove("code").as_ref().and_then(scalar_text);
        let code_dir = code.map(|c| absolute(self.base_dir, c.trim_start_matches("file:")));
        if let Some(dir) = &code_dir {
            config.insert("source_directory".into(), dir.as_str().into());
        }
        let entry = task
            .remove("entry_script")
            .as_ref()
            .and_then(scalar_text)
            .ok_or_else(|| {
                PrsError::missing(
                    "task.entry_script",
                    "required: the script with init() and run()",
                )
            })?;
        config.insert("entry_script".into(), entry.into());
        if let Some(environment) = task.remove("environment") {
            if let Some(env) = self.environment(environment)? {
                config.insert("environment".into(), env);
            }
        }
        if let Some(variables) = task.remove("environment_variables") {
            config.insert("environment_variables".into(), variables);
        }
        let resolve = |text: &str, field: &str| -> Result<String> {
            substitute(text, field, &|expr| match expr.split_once('.') {
                Some(("inputs", name)) => match inputs.get(name) {
                    Some(InputValue::Path { path, .. }) => Some(path.clone()),
                    Some(InputValue::Literal(value)) => Some(value.clone()),
                    None => None,
                },
                Some(("outputs", name)) => outputs.get(name).map(|(_, path)| path.clone()),
                _ => None,
            })
        };
        if let Some(arguments) = task.remove("program_arguments") {
            let text = match &arguments {
                Value::Sequence(items) => items
                    .iter()
                    .filter_map(scalar_text)
                    .map(|s| shlex::try_quote(&s).map(|q| q.into_owned()).unwrap_or(s))
                    .collect::<Vec<_>>()
                    .join(" "),
                other => scalar_text(other).unwrap_or_default(),
            };
            let words = shlex::split(&text).ok_or_else(|| {
                PrsError::config("task.program_arguments", &text, "has an unclosed quote")
            })?;
            let mut user = Vec::new();
            let mut words = words.into_iter().peekable();
            while let Some(word) = words.next() {
                let word = resolve(&word, "task.program_arguments")?;
                let setting = word
                    .strip_prefix("--")
                    .map(|s| s.split_once('=').map_or(s, |(k, _)| k).to_string());
                match setting {
                    Some(key) if APPLIED_ARGUMENTS.contains(&key.as_str()) => {
                        let value = match word.split_once('=') {
                            Some((_, v)) => v.to_string(),
                            None => match words.next() {
                                Some(v) => resolve(&v, "task.program_arguments")?,
                                None => {
                                    return Err(PrsError::config(
                                        "task.program_arguments",
                                        &word,
                                        "needs a value",
                                    ))
                                }
                            },
                        };
                        self.apply_argument(&key, &value, config)?;
                    }
                    Some(key) if IGNORED_ARGUMENTS.contains(&key.as_str()) => {
                        self.warnings.push(format!(
                            "task.program_arguments: --{key} is an Azure PRS setting with no meaning here; it is passed to the script but changes nothing"
                        ));
                        user.push(word);
                    }
                    _ => user.push(word),
                }
            }
            root.insert(
                "arguments".into(),
                Value::Sequence(user.into_iter().map(Value::String).collect()),
            );
        }
        if let Some(target) = task.remove("append_row_to") {
            let text = scalar_text(&target).unwrap_or_default();
            let name = reference(&text, "outputs").ok_or_else(|| {
                PrsError::config(
                    "task.append_row_to",
                    &text,
                    "must be ${{outputs.NAME}} naming one of the job's outputs",
                )
            })?;
            if !outputs.contains_key(name) {
                return Err(names_none(
                    "task.append_row_to",
                    &text,
                    "output",
                    outputs.keys(),
                ));
            }
            *append_row_to = Some(name.to_string());
        }
        if let Some((key, _)) = task.into_iter().next() {
            return Err(PrsError::config(
                format!("task.{}", show(&key)),
                "",
                "is not a task key parallel-run knows (type, code, entry_script, environment, program_arguments, append_row_to, environment_variables)",
            ));
        }
        Ok(())
    }

    /// A PRS setting from `program_arguments`, as a key; the same key set to another value
    /// in the job is an error.
    fn apply_argument(&mut self, key: &str, value: &str, config: &mut Mapping) -> Result<()> {
        let parsed: Value =
            serde_yaml::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        let existing = match key {
            "run_invocation_timeout" => config
                .get("retry_settings")
                .and_then(|r| r.get("timeout"))
                .cloned(),
            "process_count_per_node" => config.get("max_concurrency_per_instance").cloned(),
            "allowed_failed_count" => config.get("mini_batch_error_threshold").cloned(),
            _ => config.get(key).cloned(),
        };
        if let Some(existing) = existing {
            if scalar_text(&existing) != scalar_text(&parsed) {
                return Err(PrsError::config(
                    "task.program_arguments",
                    format!("--{key} {value}"),
                    format!(
                        "the job also sets {key} to {}: keep one of the two",
                        show(&existing)
                    ),
                ));
            }
            return Ok(());
        }
        config.insert(key.into(), parsed);
        Ok(())
    }

    /// A path of the job: `${{...}}` resolved, `azureml://datastores/...` through
    /// `datastores:`, relative paths against the job file's folder.
    fn path(&self, raw: &str, field: &str, flag: &str, name: &str) -> Result<String> {
        let text = substitute(raw, field, &|expr| match expr {
            "name" => Some(self.name.clone()),
            "default_datastore" => self.default_datastore().map(str::to_string),
            _ => None,
        })
        .map_err(|e| with_hint(e, flag, name))?;
        if let Some(rest) = text.strip_prefix("azureml://datastores/") {
            let (store, path) = rest.split_once("/paths/").ok_or_else(|| {
                PrsError::config(
                    field,
                    &text,
                    "expected azureml://datastores/NAME/paths/PATH",
                )
            })?;
            let base = self.datastores.get(store).ok_or_else(|| {
                PrsError::config(
                    field,
                    &text,
                    format!(
                        "the datastore {store:?} is not in datastores: (known: [{}]); add `datastores: {{{store}: ./local-folder}}` to the job file, or pass {flag} {name}=PATH",
                        self.datastores.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            return Ok(format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            ));
        }
        if text.starts_with("azureml:") {
            return Err(PrsError::config(
                field,
                &text,
                format!("an Azure data asset cannot be fetched here: pass {flag} {name}=PATH with a local path or an object-store URL"),
            ));
        }
        Ok(absolute(self.base_dir, text.trim_start_matches("file:")))
    }

    /// `${{default_datastore}}`: the datastore named `default`, else `workspaceblobstore`
    /// (Azure's default name), else the only one.
    fn default_datastore(&self) -> Option<&str> {
        for name in ["default", "workspaceblobstore"] {
            if let Some((k, _)) = self.datastores.get_key_value(name) {
                return Some(k.as_str());
            }
        }
        match self.datastores.len() {
            1 => self.datastores.keys().next().map(String::as_str),
            _ => None,
        }
    }
}

/// The error with the command-line flag that replaces the unresolvable path.
fn with_hint(e: PrsError, flag: &str, name: &str) -> PrsError {
    match e {
        PrsError::Config {
            field,
            value,
            reason,
        } => PrsError::Config {
            field,
            value,
            reason: format!(
                "{reason}: pass {flag} {name}=PATH (a local path or an object-store URL)"
            ),
        },
        other => other,
    }
}

/// (folder, file name) of a file path.
fn split_file(path: &str) -> (String, Option<String>) {
    match path.rsplit_once('/') {
        Some((folder, file)) if !file.is_empty() => (folder.to_string(), Some(file.to_string())),
        _ => (path.to_string(), None),
    }
}

mod environment;
#[cfg(test)]
mod tests;
