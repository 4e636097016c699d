//! Running a whole job: inputs -> operator -> exactly-once output -> report.
//!
//! Both the YAML/CLI path ([`run_job_spec`]) and the library builder
//! ([`crate::ParallelRun`]) end in [`execute`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::stats::Precision;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use futures::StreamExt;

use crate::batch::ItemKind;
use crate::config::{JobSpec, OutputAction, OutputFormat, ParallelRunConfig};
use crate::error::{PrsError, Result};
use crate::exec::{InputInfo, JobObserver, JobState, OperatorSpec, ParallelRunExec, RunSettings};
use crate::input::files::FILE_METADATA_COLUMNS;
use crate::input::{job_session_with, register_inputs_with};
use crate::output::{prepare_output_dir, AppendRowSink, WORK_DIR_NAME};
use crate::report::{self, JobSummary, ReportWriter};
use crate::storage::StorageContext;
use crate::worker::python::{
    resolve_interpreter, MiniBatchFormat, PythonWorkerFactory, PythonWorkerSpec,
};
use crate::worker::rust::RustWorkerFactory;
use crate::worker::{ScriptRegistry, WorkerEnv, WorkerFactoryRef, WorkerSlot};

/// The report of a finished job (also written to `logs/job_summary.json`).
pub type JobReport = JobSummary;

/// How the job shows progress on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Nothing on the console (the log files are still written).
    #[default]
    Quiet,
    /// A live bar on a terminal; a plain line every few seconds otherwise.
    Console,
}

/// Everything about a job besides its inputs and its entry script.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Output folder (logs, append_row file).
    pub output: PathBuf,
    /// Format of the append_row file.
    pub output_format: OutputFormat,
    /// Extra argv for the entry script.
    pub arguments: Vec<String>,
    /// Write output in mini-batch order.
    pub preserve_order: bool,
    /// Zero items overall is a success, not a failure.
    pub allow_empty_input: bool,
    /// What run() receives for tabular data in Python.
    pub mini_batch_format: MiniBatchFormat,
    /// Console progress.
    pub progress: Progress,
    /// Whether any input is tabular (Python workers import pyarrow/pandas before they are
    /// ready); false for a job of file datasets only.
    pub tabular_inputs: bool,
    /// The job file's folder: Python workers run in it when `source_directory` is not set
    /// (`None`: in the engine's current directory).
    pub job_dir: Option<PathBuf>,
}

/// Loads nothing: runs a validated [`JobSpec`] with the Rust scripts of `registry` available.
/// `overwrite` lets the job replace an earlier run's results in its output folder (see
/// [`crate::output::prepare_output_dir`]); without it such a folder is refused.
pub async fn run_job_spec(
    spec: &JobSpec,
    registry: &ScriptRegistry,
    progress: Progress,
    overwrite: bool,
) -> Result<JobReport> {
    spec.validate()?;
    let output = spec.output.clone().ok_or_else(|| {
        PrsError::missing(
            "output",
            "set `output:` in the job file or pass --output DIR",
        )
    })?;
    // Object storage: an output URL gets a local mirror folder; stores are checked first.
    let storage = StorageContext::prepare(spec, &output).await?;
    let output = storage.local_output().map_or(output, Path::to_path_buf);
    let options = JobOptions {
        output,
        output_format: spec.output_format,
        arguments: spec.arguments.clone(),
        preserve_order: spec.preserve_order,
        allow_empty_input: spec.allow_empty_input,
        mini_batch_format: spec.mini_batch_format,
        progress,
        tabular_inputs: spec.has_tabular_inputs(),
        job_dir: spec.base_dir.clone(),
    };
    // Before any worker writes its bootstrap into the folder.
    let final_name = spec
        .output_format
        .append_row_file_name(&spec.config.append_row_file_name);
    if let Some(remote) = storage.remote_output() {
        remote.prepare(&final_name, overwrite, &storage).await?;
    }
    prepare_output_dir(&options.output, &final_name, overwrite)?;
    // Folders the script writes into (an Azure v2 job's outputs) exist before init() runs.
    for folder in &spec.output_folders {
        std::fs::create_dir_all(folder).map_err(|e| PrsError::io(folder, e))?;
    }
    // `models:` reach the workers through environment variables (and a folder layout).
    let mut config = spec.config.clone();
    for (name, value) in model_environment(&spec.models, &options.output)? {
        config.environment_variables.entry(name).or_insert(value);
    }
    let config = &config;
    // Workers first: they start (and run init()) while the inputs are listed and planned.
    let factory = factory_for(config, &options, registry)?;
    factory.prestart(&worker_slots(config)).await;
    let ctx = job_session_with(spec.memory_limit.as_ref().map(|m| m.value));
    let prepared = register_inputs_with(&ctx, &spec.inputs, &storage).await?;
    let state = ctx.state();
    let mut inputs = Vec::with_capacity(prepared.len());
    for p in prepared {
        let logical = if p.info.kind == ItemKind::Files && !factory.file_metadata() {
            without_file_metadata(p.plan)?
        } else {
            p.plan
        };
        let plan = state.create_physical_plan(&logical).await?;
        inputs.push((plan, p.info));
    }
    execute_with_storage(
        config,
        &options,
        inputs,
        factory,
        ctx.task_ctx(),
        Some(&storage),
    )
    .await
}

/// The worker environment for a job's `models:` (name or `name:version` -> local path):
/// `PARALLEL_RUN_MODELS` (JSON `{name: {version: path}}`, read by the `azureml.core.Model`
/// stand-in), and Azure's own layout `<output>/.parallel_run/azureml-models/<name>/<version>/`
/// (links to the models) with `AML_APP_ROOT` and `AZUREML_MODEL_DIR` pointing into it, which is
/// where the real azureml-core looks for models offline.
fn model_environment(
    models: &BTreeMap<String, String>,
    output: &Path,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    if models.is_empty() {
        return Ok(env);
    }
    let root = output.join(WORK_DIR_NAME);
    let layout = root.join("azureml-models");
    let mut registry: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut last_dir = layout.clone();
    for (key, path) in models {
        let (name, version) = key.split_once(':').unwrap_or((key, "1"));
        registry
            .entry(name.to_string())
            .or_default()
            .insert(version.to_string(), path.clone());
        let dir = layout.join(name).join(version);
        std::fs::create_dir_all(&dir).map_err(|e| PrsError::io(&dir, e))?;
        let target = Path::new(path);
        let link = dir.join(target.file_name().unwrap_or(name.as_ref()));
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).map_err(|e| PrsError::io(&link, e))?;
        }
        std::os::unix::fs::symlink(target, &link).map_err(|e| PrsError::io(&link, e))?;
        last_dir = dir;
    }
    let model_dir = if models.len() == 1 { last_dir } else { layout };
    let json = serde_json::to_string(&registry).map_err(|e| PrsError::Output {
        path: "models".into(),
        message: e.to_string(),
    })?;
    env.insert("PARALLEL_RUN_MODELS".to_string(), json);
    env.insert("AML_APP_ROOT".to_string(), root.display().to_string());
    env.insert(
        "AZUREML_MODEL_DIR".to_string(),
        model_dir.display().to_string(),
    );
    Ok(env)
}

/// The exact number of rows of all `inputs` from their plans' statistics (Parquet footers),
/// or `None` when some input's count is not exact (a filter, a CSV file, a file dataset
/// still being listed).
fn expected_items(inputs: &[(Arc<dyn ExecutionPlan>, InputInfo)]) -> Option<u64> {
    let statistics = StatisticsContext::new();
    let mut total = 0u64;
    for (plan, _) in inputs {
        match statistics
            .compute(plan.as_ref(), &StatisticsArgs::new())
            .ok()?
            .num_rows
        {
            Precision::Exact(rows) => total += rows as u64,
            _ => return None,
        }
    }
    Some(total)
}

/// A file dataset's plan without its `size` and `modified` columns (for workers that only
/// see paths: the listing then stats no file).
fn without_file_metadata(plan: LogicalPlan) -> Result<LogicalPlan> {
    let keep: Vec<Expr> = plan
        .schema()
        .columns()
        .into_iter()
        .filter(|c| !FILE_METADATA_COLUMNS.contains(&c.name.as_str()))
        .map(Expr::Column)
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(keep)?.build()?)
}

/// The first-generation slots of a job's workers, as the operator's partitions use them.
pub fn worker_slots(config: &ParallelRunConfig) -> Vec<WorkerSlot> {
    let per_node = config.processes_per_node().max(1);
    (0..config.worker_count())
        .map(|p| WorkerSlot::new(p, p / per_node))
        .collect()
}

/// The worker environment for a job.
pub fn worker_env(config: &ParallelRunConfig, options: &JobOptions) -> WorkerEnv {
    let logs = log_dir(&options.output);
    let system_arguments = config.system_arguments(&options.output);
    WorkerEnv {
        output_dir: options.output.clone(),
        log_dir: logs,
        work_dir: options.output.join(WORK_DIR_NAME).join("work"),
        logging_level: config.logging_level,
        arguments: options.arguments.clone(),
        system_arguments,
        environment_variables: with_thread_limits(
            &config.environment_variables,
            config.processes_per_node(),
            |name| std::env::var_os(name).is_some(),
        ),
        output_format: options.output_format,
        keep_results: config.output_action == OutputAction::AppendRow,
        tabular_inputs: options.tabular_inputs,
        current_dir: config
            .source_directory
            .clone()
            .or_else(|| options.job_dir.clone()),
    }
}

/// The variables that size the thread pools of numpy's BLAS, OpenMP, MKL and numexpr.
pub const THREAD_LIMIT_VARIABLES: [&str; 5] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// `variables` plus each of [`THREAD_LIMIT_VARIABLES`] the job does not set and the engine's
/// own environment (which workers inherit) does not have, set to the node's cores divided by
/// `processes_per_node` (at least 1). Without them every worker's BLAS starts one spinning
/// thread per core: with 2 workers on 2 cores, 4 threads fight for 2 cores (Ray sets
/// OMP_NUM_THREADS for its workers the same way).
pub fn with_thread_limits(
    variables: &BTreeMap<String, String>,
    processes_per_node: usize,
    inherited: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / processes_per_node.max(1)).max(1).to_string();
    let mut all = variables.clone();
    for name in THREAD_LIMIT_VARIABLES {
        if !all.contains_key(name) && !inherited(name) {
            all.insert(name.to_string(), threads.clone());
        }
    }
    all
}

/// The worker factory for `config.entry_script`: `rust:NAME` from `registry`, otherwise a
/// Python script (relative to `source_directory` when given).
pub fn factory_for(
    config: &ParallelRunConfig,
    options: &JobOptions,
    registry: &ScriptRegistry,
) -> Result<WorkerFactoryRef> {
    factory_with_env(
        config,
        worker_env(config, options),
        options.mini_batch_format,
        registry,
    )
}

/// [`factory_for`] with a worker environment of the caller's making (the SQL relation puts the
/// workers' logs in its own report folder and asks for typed results).
pub fn factory_with_env(
    config: &ParallelRunConfig,
    env: WorkerEnv,
    mini_batch_format: MiniBatchFormat,
    registry: &ScriptRegistry,
) -> Result<WorkerFactoryRef> {
    if let Some(name) = config.entry_script.strip_prefix("rust:") {
        let constructor = registry.get(name).ok_or_else(|| PrsError::EntryScript {
            script: config.entry_script.clone(),
            message: format!(
                "no Rust entry script is registered under {name:?}; registered: [{}]",
                registry.names().join(", ")
            ),
        })?;
        return Ok(Arc::new(
            RustWorkerFactory::new(name, constructor, env.keep_results)
                .with_arguments(env.arguments),
        ));
    }
    let script = match &config.source_directory {
        Some(dir) => dir.join(&config.entry_script),
        None => PathBuf::from(&config.entry_script),
    };
    if !script.is_file() {
        return Err(PrsError::EntryScript {
            script: config.entry_script.clone(),
            message: format!(
                "{} is not a file; entry_script is relative to source_directory when that is set, otherwise to the job file",
                script.display()
            ),
        });
    }
    let python = resolve_interpreter(&config.environment)?;
    let factory = PythonWorkerFactory::new(PythonWorkerSpec {
        python,
        entry_script: script,
        source_directory: config.source_directory.clone(),
        env,
        mini_batch_format,
    })?;
    Ok(Arc::new(factory))
}

/// Runs the operator over `inputs` with workers from `factory`, commits the output exactly
/// once and writes the report. A job that ran and failed returns `Ok` with status `failed`.
/// The output folder is taken as it is: [`run_job_spec`] and [`crate::ParallelRun`] refuse
/// (or clear, with `overwrite`) an earlier run's results before their workers start
/// ([`crate::output::prepare_output_dir`]); callers of this function do that themselves.
pub async fn execute(
    config: &ParallelRunConfig,
    options: &JobOptions,
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    factory: WorkerFactoryRef,
    task_ctx: Arc<TaskContext>,
) -> Result<JobReport> {
    execute_with_storage(config, options, inputs, factory, task_ctx, None).await
}

/// [`execute`] with the job's object storage: download caches are freed as mini-batches
/// finish, and an output on object storage is uploaded when the job commits (the final file
/// with a multipart upload, then the logs).
pub async fn execute_with_storage(
    config: &ParallelRunConfig,
    options: &JobOptions,
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    factory: WorkerFactoryRef,
    task_ctx: Arc<TaskContext>,
    storage: Option<&Arc<StorageContext>>,
) -> Result<JobReport> {
    config.validate()?;
    let has_files = inputs
        .iter()
        .any(|(_, info)| info.kind == crate::batch::ItemKind::Files);
    for (plan, info) in &inputs {
        crate::exec::keyed::check_keys(&info.name, &plan.schema(), &config.partition_keys)?;
    }
    let settings = RunSettings::from_config(config, has_files)?;
    let log_dir = log_dir(&options.output);
    let reports = Arc::new(ReportWriter::create(&log_dir)?);
    let spec = Arc::new(OperatorSpec {
        settings: settings.clone(),
        entry_script: config.entry_script.clone(),
        factory,
        output_schema: None,
        observer: reports.clone(),
    });
    let observer: Arc<dyn JobObserver> = match storage {
        Some(storage) => storage.observer(reports.clone()),
        None => reports.clone(),
    };
    let state = JobState::new(settings.clone(), observer);
    if let Some(items) = expected_items(&inputs) {
        state.expect_items(items);
    }
    let exec = ParallelRunExec::new(inputs, spec, state.clone());
    let mut sink = match config.output_action {
        OutputAction::AppendRow => Some(
            AppendRowSink::create(
                &options.output,
                &config.append_row_file_name,
                options.output_format,
            )?
            .merge_as_committed(!options.preserve_order),
        ),
        OutputAction::SummaryOnly => None,
    };

    if let Some(storage) = storage {
        storage.start_read_ahead();
    }
    let ticker = spawn_progress(state.clone(), reports.clone(), options.progress);
    let mut streams = Vec::with_capacity(settings.workers);
    for p in 0..settings.workers {
        streams.push(exec.execute_mini_batches(p, task_ctx.clone())?);
    }
    let mut merged = futures::stream::select_all(streams);
    let mut fatal: Option<PrsError> = None;
    while let Some(item) = merged.next().await {
        match item {
            Ok(done) => {
                if let Some(sink) = sink.as_mut() {
                    if let Err(e) = sink.commit(&done) {
                        state.abort(format!(
                            "committing the output of mini batch {} failed: {e}",
                            done.id
                        ));
                        fatal = Some(e);
                        break;
                    }
                }
            }
            Err(e) => {
                // Every partition ends with the abort error; the first one is enough.
                if state.abort_reason().is_none() {
                    state.abort(e.to_string());
                }
                break;
            }
        }
    }
    drop(merged);
    ticker.abort();
    // Closes the counts: the console, the progress file and the report all state these.
    let mut summary = final_summary(
        config,
        &state,
        fatal.map(|e| e.to_string()),
        &log_dir,
        options.allow_empty_input,
    );
    let counts = state.counts();
    let elapsed = Duration::from_secs_f64(summary.elapsed_seconds);
    reports.write_progress(&counts, elapsed);
    finish_progress(options.progress, &counts, elapsed);
    if summary.succeeded() {
        if let Some(sink) = sink {
            let staging = sink.staging_dir().to_path_buf();
            match sink.finish(options.preserve_order) {
                Ok(out) => {
                    summary.output = Some(out.path);
                    summary.output_rows = out.rows;
                }
                Err(e) => {
                    summary.fail(format!(
                        "every mini batch ran, but writing the final output file failed: {e}"
                    ));
                    summary.partial_output = Some(staging);
                }
            }
        }
        if let Some(storage) = storage.filter(|_| summary.succeeded()) {
            storage.commit_output(&mut summary).await;
        }
    } else if let Some(sink) = sink {
        summary.partial_output = Some(sink.staging_dir().to_path_buf());
    }
    write_report(&log_dir, &mut summary, &reports.failures());
    if let Some(storage) = storage {
        if let Some(warning) = storage.upload_logs(&summary).await {
            tracing::warn!("{warning}");
        }
    }
    if summary.succeeded() {
        // Committed: the parts, worker folders, bootstrap copies and caches are done with.
        // A failed job keeps them: the report names the committed parts.
        drop(exec);
        let work = options.output.join(WORK_DIR_NAME);
        if let Err(e) = std::fs::remove_dir_all(&work) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {} failed: {e}", work.display());
            }
        }
    }
    Ok(summary)
}

/// Writes the final report. A job whose report cannot be written has failed: its final file
/// (when local) is removed, so that no output stands without a report saying it is complete,
/// and the summary (which the caller prints) says what failed.
fn write_report(log_dir: &Path, summary: &mut JobSummary, failures: &[String]) {
    let Err(e) = report::write_final(log_dir, summary, failures) else {
        return;
    };
    let mut reason = format!("writing the report to {} failed: {e}", log_dir.display());
    if let Some(out) = summary.output.take() {
        if out.is_file() {
            let _ = std::fs::remove_file(&out);
            reason.push_str("; the final output file was removed");
        } else {
            reason.push_str(&format!("; the uploaded output {} was kept", out.display()));
        }
    }
    summary.fail(reason);
}

/// The summary of a finished run, from its state: the counts (closed here, see
/// [`JobState::close`]), and the failure when there is one (the abort reason, else `fatal`,
/// else a job with no items at all unless `allow_empty_input`,
/// else PRS's rule that append_row needs at least one succeeded item). `log_dir` is recorded
/// as the report's folder. Shared by [`execute`] and the SQL relation ([`crate::sql`]).
pub fn final_summary(
    config: &ParallelRunConfig,
    state: &JobState,
    fatal: Option<String>,
    log_dir: &Path,
    allow_empty_input: bool,
) -> JobSummary {
    let counts = state.close();
    let mut summary = JobSummary::from_counts(&counts, config.error_threshold, state.elapsed());
    summary.logs = log_dir.to_path_buf();
    let mut failure = state.abort_reason_with(&counts).or(fatal);
    if failure.is_none() && counts.scheduling_done && counts.items_total == 0 && !allow_empty_input
    {
        failure = Some(
            "the inputs hold no items (no rows, no files): nothing was run. Check the input \
             paths, globs and queries; set allow_empty_input: true in the job file (or \
             --set allow_empty_input=true) if an empty input is expected"
                .to_string(),
        );
    }
    if failure.is_none()
        && config.output_action == OutputAction::AppendRow
        && counts.items_total > 0
        && counts.items_succeeded == 0
    {
        failure = Some(
            "no succeeded mini-batch item returned from run(); append_row has nothing to write"
                .to_string(),
        );
    }
    if let Some(reason) = failure {
        summary.fail(reason);
    }
    summary
}

fn spawn_progress(
    state: Arc<JobState>,
    reports: Arc<ReportWriter>,
    progress: Progress,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = (progress == Progress::Console && std::io::stderr().is_terminal())
            .then(indicatif::ProgressBar::new_spinner);
        let mut shown: Option<Option<u64>> = None;
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tick += 1;
            let counts = state.counts();
            let elapsed = state.elapsed();
            if let Some(bar) = &bar {
                draw_bar(bar, &counts, elapsed, &mut shown);
            } else if progress == Progress::Console && tick.is_multiple_of(20) {
                eprintln!("parallel-run: {}", report::progress_line(&counts, elapsed));
            }
            if tick.is_multiple_of(4) {
                reports.write_progress(&counts, elapsed);
            }
        }
    })
}

/// The live bar's template for an item total (`None`: not known yet).
fn bar_template(total: Option<u64>) -> &'static str {
    match total {
        Some(_) => "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items {msg} ETA {eta}",
        None => "{spinner} [{elapsed_precise}] {pos} items, total: estimating {msg}",
    }
}

/// Draws `counts` on the live bar: a bar in items once their exact total is known (from
/// metadata at the start, else once every mini-batch is cut), so its length never grows
/// and its ETA holds; until then a spinner that says "estimating". `shown` is the total the
/// bar was last set up for.
fn draw_bar(
    bar: &indicatif::ProgressBar,
    counts: &crate::exec::JobCounts,
    elapsed: Duration,
    shown: &mut Option<Option<u64>>,
) {
    let total = counts.items_total_known();
    if *shown != Some(total) {
        bar.set_style(
            indicatif::ProgressStyle::with_template(bar_template(total))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        match total {
            Some(items) => bar.set_length(items),
            None => bar.unset_length(),
        }
        *shown = Some(total);
    }
    bar.set_position(counts.items_processed);
    let mini_batches = if counts.mini_batches_total_exact() {
        counts.mini_batches_total.to_string()
    } else {
        format!("at least {}", counts.mini_batches_total)
    };
    let rate = counts.items_processed as f64 / elapsed.as_secs_f64().max(0.001);
    bar.set_message(format!(
        "({} of {mini_batches} mini batches, {rate:.0} items/s, {} failed)",
        counts.mini_batches_processed, counts.mini_batches_failed
    ));
}

fn finish_progress(progress: Progress, counts: &crate::exec::JobCounts, elapsed: Duration) {
    if progress == Progress::Console {
        eprintln!("parallel-run: {}", report::progress_line(counts, elapsed));
    }
}

/// The output folder's log directory.
pub fn log_dir(output: &Path) -> PathBuf {
    output.join("logs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn python_file_datasets_are_planned_without_the_stat_columns() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("lang=en")).unwrap();
        std::fs::write(d.path().join("lang=en/a.txt"), "x").unwrap();
        let listing =
            crate::input::FileListing::new("docs", d.path().to_str().unwrap(), None).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table(
            "docs",
            Arc::new(crate::input::FileListingTable::new(listing)),
        )
        .unwrap();
        let plan = ctx.table("docs").await.unwrap().into_unoptimized_plan();
        let plan = without_file_metadata(plan).unwrap();
        let names: Vec<String> = plan
            .schema()
            .columns()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["path", "lang"], "keys stay, size and modified go");
        let rows = ctx
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    #[test]
    fn a_report_that_cannot_be_written_fails_the_job_and_takes_its_output_away() {
        let d = tempfile::tempdir().unwrap();
        let output = d.path().join("parallel_run_step.txt");
        std::fs::write(&output, "1\n2\n").unwrap();
        // The log folder's name is taken by a file: nothing can be written below it.
        let log_dir = d.path().join("logs");
        std::fs::write(&log_dir, "not a folder").unwrap();
        let counts = crate::exec::JobCounts {
            scheduling_done: true,
            ..Default::default()
        };
        let mut summary = JobSummary::from_counts(&counts, 0, Duration::ZERO);
        summary.output = Some(output.clone());
        write_report(&log_dir, &mut summary, &[]);
        assert!(!summary.succeeded());
        assert!(
            summary.reason.starts_with("writing the report to")
                && summary.reason.contains("the final output file was removed"),
            "{}",
            summary.reason
        );
        assert!(!output.exists() && summary.output.is_none());
    }

    #[test]
    fn the_bar_counts_items_and_its_total_never_grows() {
        let state = JobState::new(
            RunSettings::from_config(
                &ParallelRunConfig::new("rust:echo", -1, OutputAction::SummaryOnly),
                false,
            )
            .unwrap(),
            Arc::new(crate::exec::NoopObserver),
        );
        let bar = indicatif::ProgressBar::hidden();
        let mut shown = None;
        state.mini_batch_scheduled(10);
        draw_bar(&bar, &state.counts(), Duration::from_secs(1), &mut shown);
        assert_eq!(bar.length(), None, "no total yet: a spinner");
        assert!(bar_template(None).contains("estimating"));
        // Metadata gives the total: a bar in items from then on, whatever is cut later.
        state.expect_items(100);
        for _ in 0..5 {
            state.mini_batch_scheduled(10);
            draw_bar(&bar, &state.counts(), Duration::from_secs(1), &mut shown);
            assert_eq!(bar.length(), Some(100));
        }
        assert!(
            bar.message().contains("of at least 6 mini batches"),
            "{}",
            bar.message()
        );
    }

    #[test]
    fn thread_limits_split_the_cores_and_never_override_the_user() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut user = BTreeMap::new();
        user.insert("OMP_NUM_THREADS".to_string(), "8".to_string());
        let all = with_thread_limits(&user, 1, |name| name == "MKL_NUM_THREADS");
        assert_eq!(all["OMP_NUM_THREADS"], "8", "the job's own value stays");
        assert!(
            !all.contains_key("MKL_NUM_THREADS"),
            "inherited: left alone"
        );
        assert_eq!(all["OPENBLAS_NUM_THREADS"], cores.to_string());
        let many = with_thread_limits(&BTreeMap::new(), cores * 4, |_| false);
        assert_eq!(many["NUMEXPR_NUM_THREADS"], "1", "at least one thread");
        assert_eq!(many.len(), THREAD_LIMIT_VARIABLES.len());
    }
}
