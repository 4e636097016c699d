//! The driver's side of a job on a cluster: cut the mini-batches (as a local run does, so
//! ids, indexes and fingerprints are the same), deal them into a manifest of
//! `node_count x process_count_per_node` partitions, submit the physical plan to the
//! scheduler, and hand every finished mini-batch that comes back to the job's commit (the
//! staged sink and ledger of a local run).
//!
//! The job is submitted and watched by our own loop ([`ClusterJob`]), which cancels it on the
//! scheduler when the driver stops (Ctrl+C, an error). For now outcomes come back once the
//! Ballista job has succeeded; the shared-store commit protocol (records written by the
//! executors as they go) is the next step (see `docs/design/mini-batches.md`).

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::cluster::client::{ClusterJob, JobEnd};
use crate::cluster::{scheduler_host_port, PrsPhysicalCodec};
use crate::error::{PrsError, Result};
use crate::exec::manifest::{
    manifest_batch, manifest_schema, read_envelopes, ManifestEntry, RowLocators,
    MANIFEST_LIMIT_BYTES,
};
use crate::exec::{
    dispatch, CompletedMiniBatch, ExecMode, InputInfo, JobState, OperatorRuntime, OperatorSpec,
    ParallelRunExec, ResumeSkips, RuntimeProvider,
};

/// The driver ships the operator but never runs it.
struct DriverOnly;

impl RuntimeProvider for DriverOnly {
    fn runtime(&self, _spec: &OperatorSpec) -> Result<OperatorRuntime> {
        Err(PrsError::config(
            "compute_target",
            "(driver)",
            "the driver does not run mini-batches of a cluster job",
        ))
    }
}

/// Runs the job of `spec` over `inputs` on the cluster at `target` (`df://HOST:PORT`):
/// counts and reports go to `state` as on a local run, and `commit` receives every finished
/// mini-batch (results and record). Returns when every outcome was committed; an error
/// (the Ballista job failed, a commit failed) is returned as it is.
pub async fn run_on_cluster(
    target: &str,
    spec: &Arc<OperatorSpec>,
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    task_ctx: Arc<TaskContext>,
    state: &Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
    commit: impl Fn(&CompletedMiniBatch) -> Result<()>,
) -> Result<()> {
    let host_port = scheduler_host_port(target)?;
    for (_, info) in &inputs {
        if info.source.is_none() {
            return Err(PrsError::config(
                "compute_target",
                target,
                format!(
                    "input {:?} is not file-backed (a SQL query or a DataFrame): a cluster job \
                     reads its inputs by path on every node. Give the input as a path or URL \
                     (with format:), or run locally (compute_target: local)",
                    info.name
                ),
            ));
        }
    }
    if !spec.settings().partition_keys.is_empty() {
        return Err(PrsError::config(
            "compute_target",
            target,
            "partition_keys jobs do not run on a cluster yet: run them locally \
             (compute_target: local)",
        ));
    }
    if spec.job().dead_letter_rows {
        return Err(PrsError::config(
            "compute_target",
            target,
            "dead_letter_rows is not supported on a cluster yet (the failed rows stay on the \
             executors): remove it, or run locally (compute_target: local)",
        ));
    }
    let cut = cut_mini_batches(inputs, task_ctx, state, skips).await?;
    let partitions = spec.settings().workers.max(1);
    let manifest = deal(cut, partitions, target)?;
    let codec = Arc::new(PrsPhysicalCodec::new(Arc::new(DriverOnly)));
    let plan: Arc<dyn ExecutionPlan> = Arc::new(ParallelRunExec::deferred(
        ExecMode::Manifest,
        vec![manifest],
        spec.clone(),
        Arc::new(DriverOnly),
    )?);
    let session_config = SessionConfig::new_with_ballista()
        .with_ballista_physical_extension_codec(codec.clone())
        .with_ballista_job_name(&format!("parallel-run {}", spec.job().output.display()));
    let encoded = PhysicalPlanNode::try_from_physical_plan(plan, codec.as_ref())
        .and_then(|node| {
            let mut bytes = Vec::new();
            node.try_encode(&mut bytes)?;
            Ok(bytes)
        })
        .map_err(PrsError::from_datafusion)?;
    let session_id = format!("parallel-run-{}", std::process::id());
    // Our own submit loop: it knows the job id, so Ctrl+C, an error or the driver dropping
    // the job cancels it on the scheduler (see `ClusterJob`).
    let mut job = ClusterJob::submit(host_port, encoded, &session_config, session_id).await?;
    let locations = match job.wait(state.cancellation()).await? {
        JobEnd::Succeeded(locations) => locations,
        JobEnd::Cancelled { confirmed } => {
            if !confirmed {
                eprintln!(
                    "parallel-run: warning: the scheduler at {host_port} did not confirm that \
                     cluster job {} was cancelled; its tasks may still run",
                    job.id()
                );
            }
            // The job state holds why (Ctrl+C, a threshold...).
            return Ok(());
        }
    };
    for mut stream in job.results(locations).await? {
        loop {
            // Ctrl+C while results are read: the job has ended, nothing to cancel.
            let next = tokio::select! {
                _ = state.cancellation().cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            let Some(batch) = next else { break };
            let batch = batch.map_err(PrsError::from_datafusion)?;
            for done in read_envelopes(&batch)? {
                state.mini_batch_finished_elsewhere(&done.record);
                commit(&done)?;
            }
        }
    }
    Ok(())
}

/// Cuts the inputs with the local dispatcher (ids, indexes, fingerprints and resume skips as
/// on a local run), keeping the mini-batches instead of running them. A mini-batch of a local
/// Parquet input keeps only where its rows are (the executor reads them); others keep their
/// rows.
async fn cut_mini_batches(
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    task_ctx: Arc<TaskContext>,
    state: &Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
) -> Result<Vec<ManifestEntry>> {
    let locators = RowLocators::of(&inputs);
    let (tx, mut rx) = mpsc::channel(64);
    let dispatcher = tokio::spawn(dispatch::dispatch(
        inputs,
        task_ctx,
        state.clone(),
        skips,
        tx,
    ));
    let mut cut = Vec::new();
    while let Some(dispatched) = rx.recv().await {
        cut.push(locators.entry(dispatched));
    }
    dispatcher.await.map_err(|e| PrsError::Output {
        path: "(cutting the inputs)".into(),
        message: format!("the dispatcher stopped: {e}"),
    })?;
    if state.abort_reason().is_some() {
        return Err(state.abort_error());
    }
    Ok(cut)
}

/// The manifest leaf: mini-batch `i` (in dispatch order) in partition `i % partitions`.
fn deal(
    cut: Vec<ManifestEntry>,
    partitions: usize,
    target: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut dealt: Vec<Vec<ManifestEntry>> = vec![Vec::new(); partitions];
    for (i, entry) in cut.into_iter().enumerate() {
        dealt[i % partitions].push(entry);
    }
    let mut batches = Vec::with_capacity(partitions);
    let mut bytes = 0usize;
    for part in &dealt {
        if part.is_empty() {
            batches.push(Vec::new());
            continue;
        }
        let batch = manifest_batch(part)?;
        bytes += batch.get_array_memory_size();
        batches.push(vec![batch]);
    }
    if bytes > MANIFEST_LIMIT_BYTES {
        return Err(PrsError::config(
            "compute_target",
            target,
            format!(
                "the job's mini-batches add up to {} MiB, more than the {} MiB a cluster plan \
                 carries (local Parquet tables and file datasets travel as row ranges and \
                 paths, other tables with their rows). Read the input from Parquet files, \
                 run it locally, or split it into several jobs",
                bytes / (1024 * 1024),
                MANIFEST_LIMIT_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok(MemorySourceConfig::try_new_exec(
        &batches,
        manifest_schema(),
        None,
    )?)
}
