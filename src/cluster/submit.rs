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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK;
use ballista_core::extension::SessionConfigExt;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::batch::MiniBatchId;
use crate::cluster::client::ClusterJob;
use crate::cluster::follow::{completed, follow_job, mismatch, Expected, Follower};
use crate::cluster::{scheduler_host_port, PrsPhysicalCodec};
use crate::config::StorageOptions;
use crate::error::{PrsError, Result};
use crate::exec::manifest::{
    manifest_batch, manifest_schema, manifest_segments, stored_batch, ManifestEntries,
    ManifestEntry, StoredRun, StoredSegment, INLINE_MANIFEST_BYTES, SEGMENT_ENTRIES,
};
use crate::exec::shared::{JobMarker, SharedLocation, SharedStaging, SHARED_STAGING};
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
/// executors committing through the shared staging area at `shared` (which the driver opens
/// with the job's `storage_options`, secrets included; the executors get none): counts and
/// reports go to `state` as on a local run (while the job runs: the driver follows the
/// records the executors commit, so progress moves and thresholds are checked over the whole
/// job), and `commit` receives every finished mini-batch (results read from its part, and
/// record). `earlier` says what becomes of the records an earlier run's cluster job left
/// (its driver crashed): a resume adopts the ones that match this run's cut.
/// Returns when every outcome was committed; an error (the Ballista job failed, a
/// mini-batch without a record, a commit failed) is returned as it is.
#[allow(clippy::too_many_arguments)]
pub async fn run_on_cluster(
    target: &str,
    spec: &Arc<OperatorSpec>,
    shared: SharedLocation,
    storage_options: &StorageOptions,
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    task_ctx: Arc<TaskContext>,
    state: &Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
    earlier: EarlierRecords,
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
            target,
            spec,
            shared,
            storage_options,
            inputs,
            task_ctx,
            state,
            skips,
            earlier,
            commit,
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
    let staging = SharedStaging::open_for_driver(&shared, storage_options)?;
    // An earlier run's cluster job whose driver crashed runs on: stopped before anything else
    // (what it finished stays in the staging area).
    stop_earlier_job(&staging, earlier).await;
    let spec = Arc::new(
        spec.as_ref()
            .clone()
            .with_shared(shared)
            .with_input_storage(storage_options),
    );
    let cut = cut_mini_batches(inputs, task_ctx, state, skips.clone()).await?;
    let cut = match earlier {
        EarlierRecords::Adopt { failed } => {
            adopt(&staging, cut, failed, skips.as_deref(), state, &commit).await?
        }
        EarlierRecords::Discard => cut,
    };
    // What is left of an earlier run is not this run's: the driver's ledger holds what was
    // committed (or adopted) of it, the rest runs again.
    staging.clear().await?;
    if state.abort_reason().is_some() {
        // An adopted failure crossed a threshold: nothing more runs.
        return Err(state.abort_error());
    }
    if cut.is_empty() {
        // Everything was committed before (or adopted): nothing to submit.
        return Ok(());
    }
    let expected: HashMap<MiniBatchId, Expected> = cut
        .iter()
        .map(|e| {
            let expected = Expected {
                index: e.index,
                fingerprint: e.fingerprint,
                lineage: e.mini_batch.lineage.clone(),
            };
            (e.mini_batch.id, expected)
        })
        .collect();
    let partitions = spec.settings().workers.max(1);
    let manifest = deal(cut, partitions, &staging).await?;
    // Our own submit loop: it knows the job id, so Ctrl+C, an error, an exceeded threshold or
    // the driver dropping the job cancels it on the scheduler (see `ClusterJob`).
    let mut job = submit_plan(host_port, &spec, ExecMode::Manifest, vec![manifest]).await?;
    let job_id = job.id().to_string();
    // A later run of this output stops this job if this driver crashes (see
    // `stop_earlier_job`).
    let marker = JobMarker {
        scheduler: host_port.to_string(),
        job_id: job_id.clone(),
        driver: driver_name(),
    };
    if let Err(e) = staging.write_marker(&marker).await {
        tracing::warn!("noting the cluster job in the shared staging area failed: {e}");
    }
    let mut follower = Follower {
        staging,
        scheduler: host_port.to_string(),
        expected,
        seen: HashSet::new(),
        job_id: job_id.clone(),
        others: matches!(earlier, EarlierRecords::Adopt { .. }),
        // As many parts in memory as the job has workers (a local run holds as many
        // mini-batches), up to 16 requests in flight.
        reads_at_once: spec.settings().workers.clamp(1, 16),
    };
    // Whatever ended the job, what was committed until now is this run's (a resume skips it).
    if !follow_job(&mut job, &mut follower, state, &commit, host_port).await? {
        // Cancelled: the job state holds why (Ctrl+C, a threshold...).
        return Ok(());
    }
    let mut missing: Vec<&MiniBatchId> = follower
        .expected
        .keys()
        .filter(|id| !follower.seen.contains(*id))
        .collect();
    missing.sort();
    if let Some(missing) = missing.first() {
        return Err(PrsError::Cluster {
            scheduler: host_port.to_string(),
            message: format!(
                "cluster job {job_id} succeeded, but mini batch {missing} has no record in the \
                 shared staging area {}: {} of {} mini-batches were recorded. Its executor \
                 could not write there, or the staging area was changed during the job; run \
                 the job again with --resume",
                follower.staging.shown(),
                follower.seen.len(),
                follower.expected.len()
            ),
        });
    }
    // Committed here (the driver's ledger and staged parts): the shared copies are done with.
    if let Err(e) = follower.staging.clear().await {
        tracing::warn!("removing the shared staging area failed: {e}");
    }
    Ok(())
}

/// What a run does with the records an earlier run of the same output left in the shared
/// staging area (its driver crashed, its cluster job ran on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlierRecords {
    /// A new run: they are removed.
    Discard,
    /// A resumed run: each one of a mini-batch this run's cut has, made of exactly the same
    /// input slice, is committed as if this run had followed it, and counted as skipped; the
    /// others are removed (with a warning) and their mini-batches run. `failed`: failed
    /// records too (not with `--rerun-failed`, which runs failed mini-batches again).
    Adopt {
        /// Adopt failed records too.
        failed: bool,
    },
}

/// A resumed run takes over what an earlier run's cluster job finished and its driver did not
/// commit (the driver crashed, the job ran on): each record in the staging area of a
/// mini-batch of `cut`, made of exactly its input slice, is committed through `commit` (the
/// driver's staged sink and ledger, as the follower does) and counted as skipped; the
/// mini-batch leaves the cut. A record that does not match or cannot be read is left out
/// with a warning, a failed one (unless `failed`) silently, and its mini-batch runs. Returns
/// the rest of the cut.
async fn adopt(
    staging: &SharedStaging,
    cut: Vec<ManifestEntry>,
    failed: bool,
    skips: Option<&ResumeSkips>,
    state: &Arc<JobState>,
    commit: &impl Fn(&CompletedMiniBatch) -> Result<()>,
) -> Result<Vec<ManifestEntry>> {
    let mut left: HashSet<String> = staging
        .record_names()
        .await?
        .into_iter()
        .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
        .collect();
    if left.is_empty() {
        return Ok(cut);
    }
    let mut keep = Vec::with_capacity(cut.len());
    let mut adopted = 0u64;
    let mut discarded: Vec<String> = Vec::new();
    for entry in cut {
        let id = entry.mini_batch.id;
        if !left.remove(&id.to_string()) || state.cancellation().is_cancelled() {
            keep.push(entry);
            continue;
        }
        let expected = Expected {
            index: entry.index,
            fingerprint: entry.fingerprint,
            lineage: entry.mini_batch.lineage.clone(),
        };
        let why = match staging.read_record(&format!("{id}.json")).await {
            Err(e) => Some(e.to_string()),
            Ok(shared) => match mismatch(&shared, &id, &expected) {
                Some(why) => Some(why),
                None if !failed && !shared.record.succeeded() => {
                    // --rerun-failed: it runs again, as the ledger's failed ones do.
                    keep.push(entry);
                    continue;
                }
                None => match completed(staging, shared, entry.index).await {
                    Err(e) => Some(e.to_string()),
                    Ok(done) => {
                        state.mini_batch_adopted(&done.record);
                        commit(&done)?;
                        adopted += 1;
                        None
                    }
                },
            },
        };
        if let Some(why) = why {
            discarded.push(format!("mini batch {id}: {why}"));
            keep.push(entry);
        }
    }
    // The ledger's mini-batches (committed by the earlier driver) left the cut: their records
    // are done with. Any other record is not one of this run's mini-batches.
    let mut strangers: Vec<String> = left
        .into_iter()
        .filter(|id| {
            let ledger = id
                .parse::<MiniBatchId>()
                .is_ok_and(|id| skips.is_some_and(|s| s.was_skipped(&id)));
            !ledger
        })
        .collect();
    strangers.sort();
    if adopted > 0 {
        eprintln!(
            "parallel-run: adopted {adopted} mini-batch(es) that the earlier run's cluster job \
             finished after its driver stopped (their records in {}): they are not run again",
            staging.shown()
        );
    }
    if !discarded.is_empty() {
        eprintln!(
            "parallel-run: warning: {} record(s) the earlier run's cluster job left in {} do \
             not match this run's mini-batches and were discarded (those mini-batches run \
             again): {}",
            discarded.len(),
            staging.shown(),
            shown_few(&discarded)
        );
    }
    if !strangers.is_empty() {
        eprintln!(
            "parallel-run: warning: {} record(s) in {} are of mini-batches this run does not \
             have and were discarded: {}",
            strangers.len(),
            staging.shown(),
            shown_few(&strangers)
        );
    }
    Ok(keep)
}

/// The first few of `items`, and how many more.
fn shown_few(items: &[String]) -> String {
    const FEW: usize = 5;
    let mut text = items
        .iter()
        .take(FEW)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > FEW {
        text.push_str(&format!("; and {} more", items.len() - FEW));
    }
    text
}

/// How long the driver tries to reach the scheduler of an earlier run's cluster job.
const EARLIER_JOB_CHECK: Duration = Duration::from_secs(10);

/// Submits the operator of `spec` in `mode` over `children` to the scheduler at `host_port`
/// as a Ballista job, with our own submit loop (see [`ClusterJob`]).
///
/// A task takes at most `process_count_per_node` of the plan's partitions (Ballista's
/// `max_partitions_per_task`; otherwise one executor with free slots takes as many as it
/// has), and our scheduler deals tasks round-robin over the executors.
pub(super) async fn submit_plan(
    host_port: &str,
    spec: &Arc<OperatorSpec>,
    mode: ExecMode,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<ClusterJob> {
    let codec = Arc::new(PrsPhysicalCodec::new(Arc::new(DriverOnly)));
    let plan: Arc<dyn ExecutionPlan> = Arc::new(ParallelRunExec::deferred(
        mode,
        children,
        spec.clone(),
        Arc::new(DriverOnly),
    )?);
    let session_config = SessionConfig::new_with_ballista()
        .with_ballista_physical_extension_codec(codec.clone())
        .with_ballista_job_name(&format!("parallel-run {}", spec.job().output.display()))
        .set_usize(
            BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK,
            spec.settings().processes_per_node.max(1),
        );
    let encoded = PhysicalPlanNode::try_from_physical_plan(plan, codec.as_ref())
        .and_then(|node| {
            let mut bytes = Vec::new();
            node.try_encode(&mut bytes)?;
            Ok(bytes)
        })
        .map_err(PrsError::from_datafusion)?;
    let session_id = format!("parallel-run-{}", std::process::id());
    ClusterJob::submit(host_port, encoded, &session_config, session_id).await
}

/// Stops the cluster job an earlier run of this output submitted, if it is still running:
/// its driver crashed (a driver that ends in any other way cancels its job), so nothing
/// would commit what it finishes, and its tasks would keep writing into the staging area
/// this run uses. What it finished stays there, for `earlier` to adopt or discard. Failing
/// to ask is a warning: this run's follower refuses any record that is not its own job's or
/// does not match its cut.
pub(super) async fn stop_earlier_job(staging: &SharedStaging, earlier: EarlierRecords) {
    let marker = match staging.read_marker().await {
        Ok(Some(marker)) => marker,
        Ok(None) => return,
        Err(e) => {
            eprintln!(
                "parallel-run: warning: cannot tell which cluster job wrote into {} before: {e}",
                staging.shown()
            );
            return;
        }
    };
    let checked = tokio::time::timeout(EARLIER_JOB_CHECK, async {
        let mut job = ClusterJob::attach(&marker.scheduler, &marker.job_id).await?;
        if !job.still_runs().await? {
            return Ok(None);
        }
        let kept = match earlier {
            EarlierRecords::Adopt { .. } => "what it finished is adopted by this resumed run",
            EarlierRecords::Discard => "what it finished is discarded by this run",
        };
        eprintln!(
            "parallel-run: cluster job {} of an earlier run of this output is still running \
             on the scheduler at {} (its driver {} stopped): cancelling it; {kept}",
            marker.job_id, marker.scheduler, marker.driver
        );
        Ok::<_, PrsError>(Some(job.cancel().await))
    })
    .await;
    let unsure = match checked {
        Ok(Ok(None | Some(true))) => return,
        Ok(Ok(Some(false))) => "it did not confirm the cancellation".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", EARLIER_JOB_CHECK.as_secs()),
    };
    eprintln!(
        "parallel-run: warning: could not make sure that cluster job {} of an earlier run of \
         this output (scheduler {}, driver {}) is stopped: {unsure}. Records its tasks still \
         write are refused by this run",
        marker.job_id, marker.scheduler, marker.driver
    );
}

/// A local resume of an output that a cluster job committed into (its driver crashed):
/// stops that job if it still runs and removes what it left in the shared staging area. A
/// local run does not adopt those records: their mini-batches run again (a resume on the
/// cluster adopts them). Nothing is done when the output has no shared staging area;
/// failures are warnings.
pub async fn discard_earlier_cluster_job(
    shared: &SharedLocation,
    storage_options: &StorageOptions,
) {
    if let SharedLocation::Folder(path) = shared {
        if !path.join(SHARED_STAGING).exists() {
            return;
        }
    }
    let staging = match SharedStaging::open_for_driver(shared, storage_options) {
        Ok(staging) => staging,
        Err(e) => {
            eprintln!("parallel-run: warning: {e}");
            return;
        }
    };
    stop_earlier_job(&staging, EarlierRecords::Discard).await;
    let records = staging.record_names().await.map(|r| r.len()).unwrap_or(0);
    match staging.clear().await {
        Ok(_) if records > 0 => eprintln!(
            "parallel-run: warning: {records} mini-batch(es) that an earlier run's cluster job \
             finished after its driver stopped were discarded from {}: a local run does not \
             adopt them, they run again (resume with the cluster's compute_target to keep them)",
            staging.shown()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("parallel-run: warning: {e}"),
    }
}

/// This process as the driver of a cluster job: `HOST:PID`.
pub(super) fn driver_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// Cuts the inputs with the local dispatcher (ids, indexes, fingerprints and resume skips as
/// on a local run), keeping the mini-batches instead of running them. A mini-batch of a
/// file-backed table input (local Parquet cut from its footers; CSV and JSON cut by source
/// bytes; Parquet on object storage from its footers) is cut without decoding any rows and
/// keeps only where its rows are (the executor reads them); others keep their rows.
async fn cut_mini_batches(
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    task_ctx: Arc<TaskContext>,
    state: &Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
) -> Result<Vec<ManifestEntry>> {
    let mut entries = ManifestEntries::of(&inputs);
    let (tx, mut rx) = mpsc::channel(64);
    let dispatcher = tokio::spawn(dispatch::cut_descriptors(
        inputs,
        task_ctx,
        state.clone(),
        skips,
        tx,
    ));
    let mut cut = Vec::new();
    while let Some(dispatched) = rx.recv().await {
        cut.push(entries.entry(dispatched));
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
/// page of the input, then skip most of its rows). A manifest bigger than
/// [`INLINE_MANIFEST_BYTES`] is written to the shared staging area in segments, and each
/// partition's row in the plan names its run of mini-batches there.
async fn deal(
    cut: Vec<ManifestEntry>,
    partitions: usize,
    staging: &SharedStaging,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions = partitions.max(1);
    let total = cut.len();
    let bounds: Vec<usize> = (0..=partitions).map(|p| p * total / partitions).collect();
    let mut batches = Vec::with_capacity(partitions);
    let mut bytes = 0usize;
    for run in bounds.windows(2) {
        let part = &cut[run[0]..run[1]];
        if part.is_empty() {
            batches.push(Vec::new());
            continue;
        }
        let batch = manifest_batch(part)?;
        bytes += batch.get_array_memory_size();
        if bytes > manifest_limit(INLINE_LIMIT_VAR, INLINE_MANIFEST_BYTES) {
            break;
        }
        batches.push(vec![batch]);
    }
    if bytes > manifest_limit(INLINE_LIMIT_VAR, INLINE_MANIFEST_BYTES) {
        drop(batches);
        let segments =
            manifest_segments(&cut, manifest_limit(SEGMENT_ENTRIES_VAR, SEGMENT_ENTRIES))?;
        drop(cut);
        let described: Vec<StoredSegment> = segments.iter().map(|(s, _)| s.clone()).collect();
        let writes = segments.into_iter().map(|(segment, bytes)| async move {
            staging.write_manifest_segment(&segment.name, bytes).await
        });
        let written: Vec<_> = futures::stream::iter(writes)
            .buffer_unordered(8)
            .collect()
            .await;
        for result in written {
            result?;
        }
        tracing::info!(
            mini_batches = total,
            segments = described.len(),
            "the manifest is too big for the plan: written to {} in segments",
            staging.shown()
        );
        batches = bounds
            .windows(2)
            .map(|run| {
                let entries = run[0] as u64..run[1] as u64;
                if entries.is_empty() {
                    return Ok(Vec::new());
                }
                let segments = described
                    .iter()
                    .filter(|s| s.first < entries.end && entries.start < s.first + s.count)
                    .cloned()
                    .collect();
                Ok(vec![stored_batch(&[StoredRun { entries, segments }])?])
            })
            .collect::<Result<_>>()?;
    }
    Ok(MemorySourceConfig::try_new_exec(
        &batches,
        manifest_schema(),
        None,
    )?)
}

/// Tests make small manifests go to the store, in small segments, with these variables.
const INLINE_LIMIT_VAR: &str = "PARALLEL_RUN_TEST_INLINE_MANIFEST_BYTES";
const SEGMENT_ENTRIES_VAR: &str = "PARALLEL_RUN_TEST_MANIFEST_SEGMENT_ENTRIES";

fn manifest_limit(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{
        ItemKind, Lineage, MiniBatch, MiniBatchRecord, MiniBatchStatus, PartitionKeyValue,
    };
    use crate::cluster::follow::Follow;
    use crate::exec::NoopObserver;
    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use std::sync::Mutex;

    fn rows(seq: u64) -> RecordBatch {
        let start = (seq * 3) as i64;
        RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(start..start + 3)) as ArrayRef,
        )])
        .unwrap()
    }

    fn lineage(seq: u64) -> Lineage {
        Lineage {
            input: Arc::from("t"),
            rows: seq * 3..seq * 3 + 3,
        }
    }

    /// Mini-batch `seq` of the cut (fingerprint `seq`).
    fn entry(seq: u64) -> ManifestEntry {
        let mini_batch = MiniBatch {
            id: MiniBatchId::new(0, seq),
            kind: ItemKind::Rows,
            data: rows(seq),
            lineage: lineage(seq),
            partition_key_value: PartitionKeyValue::default(),
        };
        ManifestEntry::new(mini_batch, seq, seq)
    }

    /// Mini-batch `seq` as an executor finished it, with `fingerprint`.
    fn finished(seq: u64, fingerprint: u64, succeeded: bool) -> CompletedMiniBatch {
        let id = MiniBatchId::new(0, seq);
        CompletedMiniBatch {
            id,
            index: seq,
            lineage: lineage(seq),
            result: succeeded.then(|| rows(seq)),
            returned: if succeeded { 3 } else { 0 },
            record: MiniBatchRecord {
                id,
                index: seq,
                lineage: lineage(seq),
                partition_key_value: PartitionKeyValue::default(),
                tries: 1,
                process: "host:7/process000".into(),
                start_time: std::time::SystemTime::UNIX_EPOCH,
                total_items: 3,
                succeeded_items: if succeeded { 3 } else { 0 },
                failed_items: if succeeded { 0 } else { 3 },
                elapsed_seconds: 0.1,
                run_seconds: 0.1,
                status: if succeeded {
                    MiniBatchStatus::Succeeded
                } else {
                    MiniBatchStatus::RunException
                },
                error_message: String::new(),
                traceback: None,
                earlier_errors: Vec::new(),
                bisection_calls: 0,
                isolated: Vec::new(),
            },
            fingerprint,
            source: None,
            failed_input: None,
        }
    }

    fn state() -> Arc<JobState> {
        let config = crate::config::ParallelRunConfig::new(
            "rust:echo",
            0,
            crate::config::OutputAction::AppendRow,
        );
        let settings = crate::exec::RunSettings::from_config(&config, false).unwrap();
        JobState::new(settings, Arc::new(NoopObserver))
    }

    fn ids(entries: &[ManifestEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.mini_batch.id.to_string())
            .collect()
    }

    /// An earlier job's records: 0-0 matches the cut, 0-1 was made of another slice, 0-2
    /// failed, 0-3 is not in the cut; 0-4 has none.
    async fn earlier_records(dir: &std::path::Path) -> SharedStaging {
        let staging =
            SharedStaging::open(&SharedLocation::Folder(dir.to_path_buf()), "host:7").unwrap();
        for done in [
            finished(0, 0, true),
            finished(1, 99, true),
            finished(2, 2, false),
            finished(3, 3, true),
        ] {
            staging
                .commit(&done, "host:7", "TID old0001/1.0/0.0")
                .await
                .unwrap();
        }
        staging
    }

    #[tokio::test]
    async fn a_resume_adopts_only_the_records_that_match_its_cut() {
        let dir = tempfile::tempdir().unwrap();
        let staging = earlier_records(dir.path()).await;
        let cut = || vec![entry(0), entry(1), entry(2), entry(4)];
        for (failed, adopted, left) in [
            (true, vec!["0-0", "0-2"], vec!["0-1", "0-4"]),
            // --rerun-failed: a failed record runs again.
            (false, vec!["0-0"], vec!["0-1", "0-2", "0-4"]),
        ] {
            let state = state();
            let committed = Mutex::new(Vec::new());
            let commit = |done: &CompletedMiniBatch| {
                committed.lock().unwrap().push(done.clone());
                Ok(())
            };
            let kept = adopt(&staging, cut(), failed, None, &state, &commit)
                .await
                .unwrap();
            assert_eq!(ids(&kept), left, "failed: {failed}");
            let committed = committed.into_inner().unwrap();
            let committed_ids: Vec<String> = committed.iter().map(|d| d.id.to_string()).collect();
            assert_eq!(committed_ids, adopted, "failed: {failed}");
            // Committed with the part's rows, counted as skipped (not run, no tries).
            assert_eq!(committed[0].result.as_ref(), Some(&rows(0)));
            let counts = state.counts();
            assert_eq!(counts.mini_batches_skipped, adopted.len() as u64);
            assert_eq!(counts.mini_batches_processed, adopted.len() as u64);
            assert_eq!(counts.tries, 0);
        }
    }

    #[tokio::test]
    async fn the_follower_refuses_a_record_of_another_job_or_another_slice() {
        let dir = tempfile::tempdir().unwrap();
        let staging = earlier_records(dir.path()).await;
        let expected = |seqs: &[u64], fingerprint: fn(u64) -> u64| {
            seqs.iter()
                .map(|&seq| {
                    let expected = Expected {
                        index: seq,
                        fingerprint: fingerprint(seq),
                        lineage: lineage(seq),
                    };
                    (MiniBatchId::new(0, seq), expected)
                })
                .collect::<HashMap<_, _>>()
        };
        let follower = |staging, expected, others| Follower {
            staging,
            scheduler: "h:1".into(),
            expected,
            seen: HashSet::new(),
            job_id: "new0002".into(),
            others,
            reads_at_once: 3,
        };
        let location = SharedLocation::Folder(dir.path().to_path_buf());
        let open = || SharedStaging::open(&location, "(driver)").unwrap();
        let commit = |_: &CompletedMiniBatch| Ok(());

        // Records of another cluster job: refused, unless this run adopts them.
        let mut strict = follower(open(), expected(&[0], |s| s), false);
        let e = strict
            .poll(&state(), &commit)
            .await
            .unwrap_err()
            .to_string();
        for part in ["mini batch 0-0", "old0001", "new0002", "--resume"] {
            assert!(e.contains(part), "{part}: {e}");
        }
        let state = state();
        let mut adopting = follower(open(), expected(&[0, 2], |s| s), true);
        adopting.poll(&state, &commit).await.unwrap();
        let mut seen: Vec<String> = adopting.seen.iter().map(|id| id.to_string()).collect();
        seen.sort();
        // 0-1 and 0-3 are not this run's mini-batches: ignored, never committed.
        assert_eq!(seen, ["0-0", "0-1", "0-2", "0-3"]);
        assert_eq!(state.counts().mini_batches_processed, 2);

        // A record made of another slice than this run's mini-batch: refused.
        let mut changed = follower(open(), expected(&[1], |s| s), true);
        let e = changed
            .poll(&super::tests::state(), &commit)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mini batch 0-1") && e.contains("fingerprint"),
            "{e}"
        );
        drop(staging);
    }

    #[tokio::test]
    async fn a_local_resume_discards_what_an_earlier_cluster_job_left() {
        let dir = tempfile::tempdir().unwrap();
        let location = SharedLocation::Folder(dir.path().to_path_buf());
        let none = StorageOptions::default();
        // No staging area: nothing is created.
        discard_earlier_cluster_job(&location, &none).await;
        assert!(!dir.path().join(SHARED_STAGING).exists());

        let staging = earlier_records(dir.path()).await;
        // Its scheduler is gone: a warning, and the records are removed all the same.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let marker = JobMarker {
            scheduler: format!("127.0.0.1:{port}"),
            job_id: "old0001".into(),
            driver: "h:1".into(),
        };
        staging.write_marker(&marker).await.unwrap();
        discard_earlier_cluster_job(&location, &none).await;
        assert!(staging.recorded().await.unwrap().is_empty());
        assert_eq!(staging.read_marker().await.unwrap(), None);
    }
}
