//! Running a whole job: settings -> plan -> operator -> exactly-once output -> report.
//!
//! Every way in produces the same [`JobSettings`] (a job file through [`run_job_spec`], the
//! Rust builder [`crate::ParallelRun`], a SQL `parallel_run(...)`); [`plan`] turns them into a
//! [`JobPlan`] (the only place workers, settings and the operator spec are built) and [`run`]
//! finishes every run ([`JobRun`]: summary rule, report files, progress). A job file and the
//! builder are driven here, by [`execute`]; SQL's operator is driven by DataFusion and
//! finished by the report operator through the same [`JobRun`].

pub mod plan;
pub mod run;

pub use plan::{
    factory_with_env, with_thread_limits, worker_env, worker_factory, JobPlan, JobRuntimes,
};
pub use run::{JobRun, Progress};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use futures::StreamExt;

use crate::batch::{ItemKind, MiniBatchId};
use crate::config::{ComputeTarget, JobSettings, JobSpec, OutputAction};
use crate::error::{PrsError, Result};
use crate::exec::shared::SharedLocation;
use crate::exec::{
    InputInfo, JobObserver, JobState, MiniBatchRecord, MiniBatchSink, ParallelRunExec, ResumeSkips,
    RunSettings,
};
use crate::input::files::FILE_METADATA_COLUMNS;
use crate::input::{job_session_with, register_inputs_with};
use crate::ledger::{self, LedgerSink, ResumeMode, ResumeOptions};
use crate::output::{staging_dir, FailedRowsWriter, OutputLock, StagedSink, WORK_DIR_NAME};
use crate::report::{JobSummary, ReportWriter};
use crate::storage::output::{Prepare, STAGING_PARTS};
use crate::storage::StorageContext;
use crate::worker::ScriptRegistry;

/// The report of a finished job (also written to `logs/job_summary.json`).
pub type JobReport = JobSummary;

/// Loads nothing: runs a validated [`JobSpec`] with the Rust scripts of `registry` available.
/// `overwrite` lets the job replace an earlier run's results in its output folder (see
/// [`crate::output::prepare_output_dir`]); without it such a folder is refused. `resume`
/// continues an interrupted run from its ledger (see [`ledger::prepare_run`]).
pub async fn run_job_spec(
    spec: &JobSpec,
    registry: &ScriptRegistry,
    progress: Progress,
    overwrite: bool,
    resume: ResumeOptions,
) -> Result<JobReport> {
    // MLTable inputs on object storage: their files are fetched and read first.
    let resolved = crate::input::resolve_remote_mltables(spec).await?;
    let spec = &resolved;
    spec.validate()?;
    if let Some(target) = cluster_target(&spec.config.compute_target) {
        // Before anything is written: an unreachable cluster is a usage error.
        crate::cluster::check_reachable(target, std::time::Duration::from_secs(10)).await?;
        crate::cluster::wait_for_executors(
            target,
            spec.config.node_count,
            std::time::Duration::from_secs(spec.config.executor_wait_timeout),
            !matches!(progress, Progress::Quiet),
        )
        .await?;
    }
    let output = spec.output.clone().ok_or_else(|| {
        PrsError::missing(
            "output",
            "set `output:` in the job file or pass --output DIR",
        )
    })?;
    // Object storage: an output URL gets a local mirror folder; stores are checked first.
    let storage = StorageContext::prepare(spec, &output).await?;
    let output = storage.local_output().map_or(output, Path::to_path_buf);
    let settings = JobSettings::from_spec(spec, output);
    // One run at a time per output folder (held until this function returns), and for an
    // object-storage output across machines too: its lease, released when the run ends.
    let _lock = OutputLock::acquire(&settings.output)?;
    if let Some(taken) = storage.acquire_lease().await? {
        eprintln!("parallel-run: {taken}");
    }
    let result = run_held(
        spec, registry, progress, overwrite, resume, &storage, settings,
    )
    .await;
    if let Some(warning) = storage.release_lease().await {
        tracing::warn!("{warning}");
    }
    result
}

/// [`run_job_spec`] once the output is held.
async fn run_held(
    spec: &JobSpec,
    registry: &ScriptRegistry,
    progress: Progress,
    overwrite: bool,
    resume: ResumeOptions,
    storage: &Arc<StorageContext>,
    mut settings: JobSettings,
) -> Result<JobReport> {
    let cluster = cluster_target(&spec.config.compute_target);
    let final_name = settings.final_file_name();
    let checked_fresh = match storage.remote_output() {
        // Refused first with the output's URL, before the bucket's ledger comes into the
        // mirror (whose folder the refusal below would name).
        Some(remote) if !overwrite && resume.mode == ResumeMode::Fresh => {
            remote.prepare(&final_name, Prepare::Fresh, storage).await?;
            true
        }
        _ => false,
    };
    if let (Some(remote), false) = (storage.remote_output(), overwrite) {
        // The bucket's ledger comes into the mirror where it holds more (a fresh machine).
        let restored = ledger::bucket::restore(remote, storage, &settings.log_dir).await?;
        if restored.records > 0 {
            eprintln!(
                "parallel-run: {} ledger record(s) restored from {}",
                restored.records,
                remote.url()
            );
        }
    }
    // Before any worker writes its bootstrap into the folder.
    let mode = ledger::prepare_run(
        &settings.output,
        &settings.log_dir,
        &final_name,
        resume,
        overwrite,
    )
    .map_err(|e| match storage.remote_output() {
        // The mirror stands for the output: name the output.
        Some(remote) => e.naming_output(remote.url()),
        None => e,
    })?;
    if let Some(remote) = storage.remote_output() {
        // A resumed run continues from the ledger and staging (in the mirror and the bucket):
        // what an earlier, failed run uploaded besides them is replaced when this one commits.
        let how = match (overwrite, mode) {
            (true, _) => Prepare::Overwrite,
            (false, ResumeMode::Fresh) => Prepare::Fresh,
            _ => Prepare::Resume,
        };
        if !(checked_fresh && how == Prepare::Fresh) {
            remote.prepare(&final_name, how, storage).await?;
        }
        if how == Prepare::Resume {
            let parts = staging_dir(&settings.output).join("parts");
            let fetched =
                ledger::bucket::fetch_parts(remote, storage, &settings.log_dir, &parts).await?;
            if fetched > 0 {
                eprintln!(
                    "parallel-run: {fetched} committed part(s) downloaded from {}",
                    remote.url()
                );
            }
        }
    }
    let resume = ResumeOptions { mode, ..resume };
    // Folders the script writes into (an Azure v2 job's outputs) exist before init() runs.
    for folder in &spec.output_folders {
        std::fs::create_dir_all(folder).map_err(|e| PrsError::io(folder, e))?;
    }
    // `models:` reach the workers through environment variables (and a folder layout); those
    // on object storage are downloaded first, once.
    let models = download_models(&spec.models, storage).await?;
    for (name, value) in model_environment(&models, &settings.output)? {
        settings
            .config
            .environment_variables
            .entry(name)
            .or_insert(value);
    }
    // Workers first: they start (and run init()) while the inputs are listed and planned.
    let factory = worker_factory(&settings, spec.has_tabular_inputs(), registry)?;
    if cluster.is_none() {
        factory
            .prestart(&plan::worker_slots(&settings.config))
            .await;
    }
    let ctx = job_session_with(spec.memory_limit.as_ref().map(|m| m.value));
    let prepared = register_inputs_with(&ctx, &spec.inputs, storage).await?;
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
    let plan = JobPlan::with_factory(settings, &schemas(&inputs), None, factory)?;
    let inputs = inputs.into_iter().map(|(plan, _)| plan).collect();
    execute(
        &plan,
        inputs,
        ctx.task_ctx(),
        Some(storage),
        progress,
        resume,
    )
    .await
}

/// The scheduler address of a cluster target; `None` for this machine.
fn cluster_target(target: &ComputeTarget) -> Option<&str> {
    match target {
        ComputeTarget::Cluster(address) => Some(address.as_str()),
        ComputeTarget::Local => None,
    }
}

/// The schemas and infos of planned inputs, as [`JobPlan`] takes them.
pub fn schemas(inputs: &[(Arc<dyn ExecutionPlan>, InputInfo)]) -> Vec<(SchemaRef, InputInfo)> {
    inputs
        .iter()
        .map(|(plan, info)| (plan.schema(), info.clone()))
        .collect()
}

/// `models` with each object-storage URL replaced by a local copy: the object (or every object
/// below the prefix) downloaded into `<cache>/models/<name>/<version>/`.
async fn download_models(
    models: &BTreeMap<String, String>,
    storage: &StorageContext,
) -> Result<BTreeMap<String, String>> {
    let mut local = BTreeMap::new();
    for (key, path) in models {
        if !crate::config::is_object_url(path) {
            local.insert(key.clone(), path.clone());
            continue;
        }
        let field = format!("models.{key}");
        let location = crate::storage::ObjectLocation::parse(&field, path)?;
        let (name, version) = key.split_once(':').unwrap_or((key, "1"));
        let dir = storage
            .cache_parent()
            .join("models")
            .join(name)
            .join(version);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| PrsError::io(&dir, e))?;
        }
        let copy = storage.download(&field, &location, &dir).await?;
        tracing::info!("model {key}: downloaded {path} to {}", copy.display());
        local.insert(key.clone(), copy.display().to_string());
    }
    Ok(local)
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

/// Commits the output of a succeeded job to object storage and points the summary at it.
/// When the upload fails the job fails, the reason names the store, the object and the
/// operation, and the complete file stays in the local mirror. Nothing to do for a local
/// output.
async fn commit_output(storage: &StorageContext, summary: &mut JobSummary) {
    let Some(local) = summary.output.clone() else {
        return;
    };
    match storage.commit_output(&local).await {
        None => {}
        Some(Ok(url)) => summary.output = Some(PathBuf::from(url)),
        Some(Err(e)) => {
            summary.fail(format!(
                "committing the output failed: {e}; the complete output is in {}",
                local.display()
            ));
            summary.output = None;
            summary.partial_output = Some(local);
        }
    }
}

/// Tells the download caches of file datasets on object storage which files not to download:
/// those of the mini-batches a resumed run skips. Their rows are the files' positions in the
/// listing, as the mini-batches are cut again the same way; not for keyed jobs (their rows
/// are positions in the key order) nor a forced resume (a changed slice runs again).
fn skip_downloads(storage: &StorageContext, skips: &ResumeSkips, settings: &RunSettings) {
    if !settings.partition_keys.is_empty() || !skips.check_slices() {
        return;
    }
    let mut rows: BTreeMap<String, Vec<std::ops::Range<u64>>> = BTreeMap::new();
    for id in skips.ids() {
        if let Some(skipped) = skips.get(&id) {
            let lineage = &skipped.record.lineage;
            rows.entry(lineage.input.to_string())
                .or_default()
                .push(lineage.rows.clone());
        }
    }
    for (input, rows) in rows {
        if let Some(cache) = storage.cache(&input) {
            cache.skip_rows(rows);
        }
    }
}

/// Passes every event on to `inner` and frees the downloaded files of each finished
/// mini-batch of a file dataset on object storage.
struct ReleasingObserver {
    inner: Arc<dyn JobObserver>,
    storage: Arc<StorageContext>,
}

impl JobObserver for ReleasingObserver {
    fn mini_batch_finished(&self, record: &MiniBatchRecord) {
        self.inner.mini_batch_finished(record);
        self.storage
            .release(&record.lineage.input, record.lineage.rows.clone());
    }

    fn try_failed(&self, id: MiniBatchId, attempt: u32, process: &str, message: &str) {
        self.inner.try_failed(id, attempt, process, message);
    }

    fn scheduling_done(&self, mini_batches: u64, items: u64) {
        self.inner.scheduling_done(mini_batches, items);
    }

    fn worker_event(&self, process: &str, message: &str) {
        self.inner.worker_event(process, message);
    }
}

/// The exact number of rows of all `inputs` from their plans' statistics (Parquet footers),
/// or `None` when some input's count is not exact (a filter, a CSV file, a file dataset
/// still being listed).
fn expected_items(inputs: &[Arc<dyn ExecutionPlan>]) -> Option<u64> {
    let statistics = StatisticsContext::new();
    let mut total = 0u64;
    for plan in inputs {
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

/// Runs a planned job over its planned `inputs` (in the spec's order): drives the operator,
/// commits the output exactly once, and finishes the run ([`JobRun`]). A job that ran and
/// failed returns `Ok` with status `failed`. With `storage`, download caches are freed as
/// mini-batches finish, and an output on object storage is uploaded when the job commits (the
/// final file with a multipart upload, then the logs).
///
/// Every mini-batch that reaches its final status is recorded in the job's ledger
/// (`<log_dir>/ledger/`, see [`crate::ledger`]) after its results are committed; with
/// `resume` (a mode other than fresh) the mini-batches the ledger holds are counted and not
/// run, and their committed parts are merged into the final file with the new ones.
///
/// The output folder is taken as it is: [`run_job_spec`] and [`crate::ParallelRun`] refuse
/// (or clear, with `overwrite`) an earlier run's results before their workers start
/// ([`ledger::prepare_run`]); other callers do that themselves.
pub async fn execute(
    plan: &JobPlan,
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    task_ctx: Arc<TaskContext>,
    storage: Option<&Arc<StorageContext>>,
    progress: Progress,
    resume: ResumeOptions,
) -> Result<JobReport> {
    let settings = plan.settings();
    let parts_dir = staging_dir(&settings.output).join("parts");
    let (writer, resumed) = ledger::open(
        &ledger::ledger_dir(&settings.log_dir),
        &plan.spec,
        resume.mode,
        resume.force,
        &parts_dir,
    )?;
    for warning in &resumed.warnings {
        eprintln!("parallel-run: warning: {warning}");
    }
    let ledger_run = writer.run();
    // An object-storage output: records and parts also go to the bucket as they commit.
    let replica = match storage.filter(|s| s.remote_output().is_some()) {
        Some(storage) => {
            storage.with_lease(|lease| lease.set_run(writer.run()));
            Some(ledger::bucket::BucketReplica::start(
                storage.clone(),
                &ledger::ledger_dir(&settings.log_dir),
                writer.run(),
                parts_dir.clone(),
            )?)
        }
        None => None,
    };
    let resuming = resume.mode != ResumeMode::Fresh;
    let reports = Arc::new(ReportWriter::create(&settings.log_dir)?);
    // File datasets on object storage: each finished mini-batch frees its downloads.
    let observer: Arc<dyn JobObserver> = match storage.filter(|s| s.has_caches()) {
        Some(storage) => Arc::new(ReleasingObserver {
            inner: reports.clone(),
            storage: storage.clone(),
        }),
        None => reports.clone(),
    };
    let state = JobState::new(plan.spec.settings().clone(), observer.clone());
    if let Some(storage) = storage {
        // Another run took the output's lease over: this one stops.
        let state = state.clone();
        storage.with_lease(move |lease| {
            lease.on_lost(move |why| {
                state.abort(why);
            })
        });
    }
    if let Some(items) = expected_items(&inputs) {
        state.expect_items(items);
    }
    let workers = plan.spec.settings().workers;
    let sink = match settings.config.output_action {
        OutputAction::AppendRow => {
            let mut sink = StagedSink::new(
                &settings.output,
                &settings.config.append_row_file_name,
                settings.output_format,
                !settings.preserve_order,
            );
            if resuming {
                sink = sink.resuming(resumed.parts);
            }
            let sink = Arc::new(sink);
            sink.open()?;
            Some(sink)
        }
        OutputAction::SummaryOnly => None,
    };
    let mut ledger_sink = LedgerSink::new(sink.clone(), writer.sync_before(parts_dir));
    if let Some(sender) = replica.as_ref().and_then(|r| r.sender()) {
        ledger_sink = ledger_sink.with_replica(sender);
    }
    let ledger_sink = Arc::new(ledger_sink);
    let mut runtime = plan.runtime(observer).with_sink(ledger_sink.clone());
    if settings.dead_letter_rows {
        let failed_rows = FailedRowsWriter::create(&settings.output)?;
        runtime = runtime.with_failed_rows(Arc::new(failed_rows));
    }
    if let Some(storage) = storage.filter(|_| resuming) {
        skip_downloads(storage, &resumed.skips, plan.spec.settings());
    }
    let skips = Arc::new(resumed.skips);
    if resuming {
        runtime = runtime.with_skips(skips.clone());
    }
    // A single Ctrl+C stops the run cleanly, resumable; a second one ends the process.
    let interrupt = HANDLE_CTRL_C
        .load(std::sync::atomic::Ordering::SeqCst)
        .then(|| spawn_interrupt_handler(state.clone()));

    if let Some(storage) = storage {
        storage.start_read_ahead();
    }
    let mut run = JobRun::begin(settings, reports, state.clone(), progress);
    let no_options = crate::config::StorageOptions::default();
    let exec = match cluster_target(&settings.config.compute_target) {
        None => {
            if resuming {
                // A cluster job of an earlier run whose driver crashed: stopped, and what it
                // left is not adopted by a local run (see `discard_earlier_cluster_job`).
                crate::cluster::submit::discard_earlier_cluster_job(
                    &shared_location(settings, storage)?,
                    storage.map_or(&no_options, |s| s.options()),
                )
                .await;
            }
            let exec = ParallelRunExec::new(inputs, plan.spec.clone(), runtime, state.clone());
            // The operator commits each succeeded mini-batch to the sink and emits no rows:
            // draining its partitions runs the job.
            let mut streams = Vec::with_capacity(workers);
            for p in 0..workers {
                streams.push(exec.execute(p, task_ctx.clone())?);
            }
            let mut merged = futures::stream::select_all(streams);
            while let Some(item) = merged.next().await {
                if let Err(e) = item {
                    // Every partition ends with the abort error; the first one is enough.
                    // The streams are still drained: a mini-batch that finished before its
                    // partition stopped (the one that crossed a threshold among them) is
                    // counted, so it is committed and recorded in the ledger too.
                    if state.abort_reason().is_none() {
                        state.abort(PrsError::from_datafusion(e).to_string());
                    }
                }
            }
            drop(merged);
            Some(exec)
        }
        Some(target) => {
            // The executors run the mini-batches; their outcomes are committed here, through
            // the same sink and ledger as a local run's.
            let inputs = inputs
                .into_iter()
                .zip(plan.spec.inputs().iter().cloned())
                .collect();
            use crate::cluster::submit::EarlierRecords;
            // Executors keep each run's worker logs apart by its identity.
            let spec = Arc::new(
                plan.spec
                    .as_ref()
                    .clone()
                    .with_run(run_identity(ledger_run)),
            );
            let ran = crate::cluster::submit::run_on_cluster(
                target,
                &spec,
                shared_location(settings, storage)?,
                storage.map_or(&no_options, |s| s.options()),
                inputs,
                task_ctx,
                &state,
                runtime.skips.clone(),
                // A resume takes over what the cluster job of a run whose driver crashed
                // finished after the crash (see `cluster::submit::EarlierRecords`).
                match resume.mode {
                    ResumeMode::Fresh => EarlierRecords::Discard,
                    ResumeMode::Resume => EarlierRecords::Adopt { failed: true },
                    ResumeMode::RerunFailed => EarlierRecords::Adopt { failed: false },
                },
                |done| ledger_sink.commit(done),
            )
            .await;
            if let Err(e) = ran {
                if state.abort_reason().is_none() {
                    state.abort(format!("the cluster job failed: {e}"));
                }
            }
            None
        }
    };
    drop(interrupt);
    // Closes the counts: the console, the progress file and the report all state these.
    let mut summary = run.summarize();
    if cluster_target(&settings.config.compute_target).is_some() {
        summary.executors = Some(state.executors().len() as u64);
    }
    summary.resumed = resuming;
    summary.mini_batches_rerun = resumed.rerun;
    if let Err(e) = ledger_sink.close() {
        summary.fail(format!("writing the job's ledger failed: {e}"));
    }
    match replica {
        // Every mini-batch succeeded: the output is committed next, and the bucket's parts
        // removed, so what is still queued need not wait (off the critical path).
        Some(replica) if summary.succeeded() && summary.mini_batches_failed == 0 => {
            replica.abandon()
        }
        // Failed, interrupted or with failed mini-batches: everything reaches the bucket, so
        // that a resume on any machine continues from it.
        Some(replica) => {
            let t = std::time::Instant::now();
            let stats = replica.finish().await;
            tracing::info!(
                "bucket ledger: {} segment(s), {} record(s), {} part(s); {:.3} s waited at \
                 the end",
                stats.segments,
                stats.records,
                stats.parts,
                t.elapsed().as_secs_f64()
            );
            if let Some(e) = &stats.error {
                eprintln!(
                    "parallel-run: warning: {} of this run's ledger records reached the bucket, \
                     {} did not ({e}); the local mirror holds them all",
                    stats.records, stats.dropped
                );
            }
        }
        None => {}
    }
    summary.ledger_seconds = (ledger_sink.time() + state.ledger_time()).as_secs_f64();
    if let Some(sink) = sink.as_ref().filter(|_| resuming) {
        // Only the parts of mini-batches this run's cut still has (see `ResumeSkips`).
        sink.retain_resumed(|id| skips.was_skipped(id));
    }
    let sink = sink.and_then(|sink| sink.take());
    if summary.succeeded() {
        if let Some(sink) = sink {
            let staging = sink.staging_dir().to_path_buf();
            match sink.finish(settings.preserve_order, summary.mini_batches_failed > 0) {
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
            // A run whose lease another run took over must not publish over that run's work.
            match storage.with_lease(|lease| lease.lost()).flatten() {
                Some(why) => summary.fail(why),
                None => commit_output(storage, &mut summary).await,
            }
        }
    } else if let Some(sink) = sink {
        summary.partial_output = Some(sink.staging_dir().to_path_buf());
    }
    summary.files_downloaded = storage.map_or(0, |s| s.files_downloaded());
    run.write(&mut summary);
    if let Some(storage) = storage {
        // A final file whose upload failed stays local: a plain PUT must not publish it.
        let skip: Vec<PathBuf> = summary.partial_output.iter().cloned().collect();
        // Committed with nothing failed: the bucket's parts are done with (removed while the
        // logs go up).
        let clean = summary.succeeded() && summary.mini_batches_failed == 0;
        let remove_parts = async {
            match storage.remote_output().filter(|_| clean) {
                Some(remote) => remote.delete_prefix(STAGING_PARTS, storage).await.err(),
                None => None,
            }
        };
        let t = std::time::Instant::now();
        let (logs, parts) = futures::join!(storage.upload_logs(&skip), remove_parts);
        if storage.remote_output().is_some() {
            tracing::info!(
                "logs uploaded (and parts removed) in {:.3} s",
                t.elapsed().as_secs_f64()
            );
        }
        if let Some(warning) = logs {
            tracing::warn!("{warning}");
        }
        if let Some(e) = parts {
            tracing::warn!("removing the committed parts from the bucket failed: {e}");
        }
    }
    if summary.succeeded() {
        // Committed: the worker folders, bootstrap copies and caches are done with, and the
        // parts too unless some mini-batch failed (`--rerun-failed` rebuilds the output from
        // them). A failed job keeps everything: the report names the committed parts.
        drop(exec);
        let work = settings.output.join(WORK_DIR_NAME);
        let keep_parts = summary.mini_batches_failed > 0;
        let removed = if keep_parts {
            remove_all_but(&work, "staging")
        } else {
            std::fs::remove_dir_all(&work)
        };
        if let Err(e) = removed {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {} failed: {e}", work.display());
            }
        }
    } else if state.abort_reason().as_deref() == Some(INTERRUPTED) {
        eprintln!(
            "parallel-run: stopped by Ctrl+C; the work done so far is kept. Continue with the \
             same command and --resume"
        );
    }
    Ok(summary)
}

/// Where the executors of a cluster job commit: the output's staging area, in a folder every
/// node sees under the same path, or in the output's bucket.
fn shared_location(
    settings: &JobSettings,
    storage: Option<&Arc<StorageContext>>,
) -> Result<SharedLocation> {
    Ok(
        match storage.and_then(|s| s.remote_output().map(|r| (s, r))) {
            Some((storage, remote)) => SharedLocation::url(remote.url(), storage.options()),
            None => SharedLocation::Folder(
                std::path::absolute(&settings.output)
                    .map_err(|e| PrsError::io(&settings.output, e))?,
            ),
        },
    )
}

/// The identity of a cluster run (see [`crate::exec::OperatorSpec::run`]): the ledger's run
/// number and the time, unique per run of this output (an `--overwrite` run starts the
/// ledger's numbering again).
fn run_identity(ledger_run: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("run{ledger_run}-{nanos:x}")
}

static HANDLE_CTRL_C: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether runs in this process stop cleanly on Ctrl+C (the command line turns it on; a
/// library caller keeps its own signal handling).
pub fn handle_ctrl_c(on: bool) {
    HANDLE_CTRL_C.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// The abort reason of a run stopped by Ctrl+C.
pub const INTERRUPTED: &str =
    "interrupted (Ctrl+C): the committed mini-batches are kept; run again with --resume";

/// Aborts the run on the first Ctrl+C (the workers stop, the committed work and the ledger
/// stay: the run can be resumed) and ends the process on the second.
fn spawn_interrupt_handler(state: Arc<JobState>) -> datafusion::common::runtime::SpawnedTask<()> {
    datafusion::common::runtime::SpawnedTask::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "\nparallel-run: Ctrl+C: stopping the workers (press Ctrl+C again to quit at once)"
        );
        state.abort(INTERRUPTED);
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("parallel-run: quitting; continue later with --resume");
            std::process::exit(crate::cli::EXIT_INTERRUPTED);
        }
    })
}

/// Removes everything in `dir` but its entry `keep`.
fn remove_all_but(dir: &Path, keep: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == keep {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
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
}
