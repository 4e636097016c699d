//! The driver's side of a job on a cluster: cut the mini-batches (as a local run does, so
//! ids, indexes and fingerprints are the same), deal them into a manifest of
//! `node_count x process_count_per_node` partitions, submit the physical plan to the
//! scheduler, and hand every finished mini-batch that comes back to the job's commit (the
//! staged sink and ledger of a local run).
//!
//! The job is submitted and watched by our own loop ([`ClusterJob`]), which cancels it on the
//! scheduler when the driver stops (Ctrl+C, an error, an exceeded threshold). Executors
//! commit each finished mini-batch to the output's shared staging area
//! ([`crate::exec::shared`]); the driver follows the records there while the job runs and
//! commits them through its own sink and ledger (see `docs/design/mini-batches.md`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::SessionConfigExt;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use tokio::sync::mpsc;

use crate::cluster::client::{ClusterJob, JobEnd};
use crate::cluster::{scheduler_host_port, PrsPhysicalCodec};
use crate::error::{PrsError, Result};
use crate::exec::manifest::{
    manifest_batch, manifest_schema, ManifestEntry, RowLocators, MANIFEST_LIMIT_BYTES,
};
use crate::exec::shared::{SharedLocation, SharedStaging};
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

/// Runs the job of `spec` over `inputs` on the cluster at `target` (`df://HOST:PORT`), the
/// executors committing through the shared staging area at `shared`: counts and reports go
/// to `state` as on a local run (while the job runs: the driver follows the records the
/// executors commit, so progress moves and thresholds are checked over the whole job), and
/// `commit` receives every finished mini-batch (results read from its part, and record).
/// Returns when every outcome was committed; an error (the Ballista job failed, a
/// mini-batch without a record, a commit failed) is returned as it is.
#[allow(clippy::too_many_arguments)]
pub async fn run_on_cluster(
    target: &str,
    spec: &Arc<OperatorSpec>,
    shared: SharedLocation,
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
        // One mini-batch per key: the plan groups the rows (see `cluster::keyed`).
        return super::keyed::run_keyed_on_cluster(
            target, spec, shared, inputs, task_ctx, state, skips, commit,
        )
        .await;
    }
    if spec.job().dead_letter_rows {
        return Err(PrsError::config(
            "compute_target",
            target,
            "dead_letter_rows is not supported on a cluster yet (the failed rows stay on the \
             executors): remove it, or run locally (compute_target: local)",
        ));
    }
    let staging = SharedStaging::open(&shared, "(driver)")?;
    // Records of an earlier run of this output are not this run's: the driver's ledger holds
    // what it committed of them.
    staging.clear().await?;
    let spec = Arc::new(spec.as_ref().clone().with_shared(shared));
    let cut = cut_mini_batches(inputs, task_ctx, state, skips).await?;
    let expected: Vec<String> = cut.iter().map(|e| e.mini_batch.id.to_string()).collect();
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
    // Our own submit loop: it knows the job id, so Ctrl+C, an error, an exceeded threshold or
    // the driver dropping the job cancels it on the scheduler (see `ClusterJob`).
    let mut job = ClusterJob::submit(host_port, encoded, &session_config, session_id).await?;
    let job_id = job.id().to_string();
    let mut follower = Follower::new(staging);
    let ended = {
        let wait = job.wait(state.cancellation());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                ended = &mut wait => break ended,
                _ = tokio::time::sleep(FOLLOW_EVERY) => {
                    // A threshold crossed here aborts the state: the wait cancels the job.
                    follower.poll(state, &commit).await?;
                }
            }
        }
    };
    // Whatever ended the job, what was committed until now is this run's (a resume skips it).
    let end = match ended {
        Ok(end) => end,
        Err(e) => {
            if let Err(late) = follower.poll(state, &commit).await {
                tracing::warn!("reading the last records of the failed job: {late}");
            }
            return Err(e);
        }
    };
    follower.poll(state, &commit).await?;
    match end {
        // The results are in the shared store: nothing is fetched from the executors (an
        // executor lost after its task succeeded would make that fetch fail).
        JobEnd::Succeeded(_) => {}
        JobEnd::Cancelled { confirmed } => {
            if !confirmed {
                eprintln!(
                    "parallel-run: warning: the scheduler at {host_port} did not confirm that \
                     cluster job {job_id} was cancelled; its tasks may still run"
                );
            }
            // The job state holds why (Ctrl+C, a threshold...).
            return Ok(());
        }
    }
    if let Some(missing) = expected.iter().find(|id| !follower.seen.contains(*id)) {
        return Err(PrsError::Cluster {
            scheduler: host_port.to_string(),
            message: format!(
                "cluster job {job_id} succeeded, but mini batch {missing} has no record in the \
                 shared staging area {}: {} of {} mini-batches were recorded. Its executor \
                 could not write there, or the staging area was changed during the job; run \
                 the job again with --resume",
                follower.staging.shown(),
                follower.seen.len(),
                expected.len()
            ),
        });
    }
    // Committed here (the driver's ledger and staged parts): the shared copies are done with.
    if let Err(e) = follower.staging.clear().await {
        tracing::warn!("removing the shared staging area failed: {e}");
    }
    Ok(())
}

/// How often the driver lists the records committed in the shared store.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The driver following a cluster job through the records its executors commit.
struct Follower {
    staging: SharedStaging,
    /// Ids already committed by the driver.
    seen: HashSet<String>,
}

impl Follower {
    fn new(staging: SharedStaging) -> Self {
        Follower {
            staging,
            seen: HashSet::new(),
        }
    }

    /// Commits the records that appeared since the last poll (with their parts' results).
    async fn poll(
        &mut self,
        state: &Arc<JobState>,
        commit: &impl Fn(&CompletedMiniBatch) -> Result<()>,
    ) -> Result<()> {
        let mut names = self.staging.record_names().await?;
        names.sort();
        for name in names {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if self.seen.contains(id) {
                continue;
            }
            let shared = self.staging.read_record(&name).await?;
            let result = match &shared.part {
                Some(part) => Some(self.staging.read_part(part).await?),
                None => None,
            };
            let done = CompletedMiniBatch {
                id: shared.record.id,
                index: shared.index,
                lineage: shared.record.lineage.clone(),
                result,
                returned: shared.returned,
                fingerprint: shared.fingerprint,
                source: None,
                record: shared.record,
                // Not kept on the executors (a cluster job refuses dead_letter_rows).
                failed_input: None,
            };
            state.mini_batch_finished_elsewhere(&done.record);
            commit(&done)?;
            self.seen.insert(id.to_string());
        }
        Ok(())
    }
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

/// The manifest leaf: the mini-batches in dispatch order, dealt in contiguous runs of (almost)
/// equal length, one per partition, so that each task reads its rows in one forward pass
/// over its part of the files (round-robin dealing would have every task decode nearly every
/// page of the input, then skip most of its rows).
fn deal(
    cut: Vec<ManifestEntry>,
    partitions: usize,
    target: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions = partitions.max(1);
    let total = cut.len();
    let mut dealt: Vec<Vec<ManifestEntry>> = vec![Vec::new(); partitions];
    for (i, entry) in cut.into_iter().enumerate() {
        dealt[i * partitions / total.max(1)].push(entry);
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
