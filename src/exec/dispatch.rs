//! The shared queue: one dispatcher reads the inputs in order, cuts them into mini-batches and
//! queues them; every partition's worker pulls from the same queue, so none idles while
//! another has a backlog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex};

use crate::batch::{
    slice_fingerprint, ByteChunker, FileChunker, ItemKind, KeyChunker, MiniBatch, MiniBatchId,
    MiniBatchRecord,
};
use crate::config::InputSpec;
use crate::error::{PrsError, Result};
use crate::exec::keyed;
use crate::exec::recut::{self, FooterCut, Step};
use crate::exec::state::JobState;
use crate::input::ReadFrom;

/// What the operator knows of each of its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct InputInfo {
    /// The input's name (for lineage and reports).
    pub name: String,
    /// Rows or files.
    pub kind: ItemKind,
    /// The declarative description of a file-backed input (path or URL, format,
    /// partition_format), from which another process can register the same table. `None`
    /// for an input that is an arbitrary plan (a SQL subquery, a DataFrame, a `sql:` input):
    /// those travel through DataFusion's plan codec.
    pub source: Option<InputSpec>,
    /// Its rows come in the same order in every run (files read in path order, a plain table
    /// scan), so a resumed run can match its mini-batches with the ledger's.
    #[serde(default)]
    pub ordered: bool,
}

impl InputInfo {
    /// An input named `name` of `kind` items, with no declarative source.
    pub fn new(name: impl Into<String>, kind: ItemKind) -> Self {
        InputInfo {
            name: name.into(),
            kind,
            source: None,
            ordered: false,
        }
    }

    /// The same input described by `spec` (a file-backed input of a job file): ordered.
    pub fn with_source(mut self, spec: InputSpec) -> Self {
        self.source = Some(spec);
        self.ordered = true;
        self
    }

    /// The same input, marked as reading its rows in the same order in every run.
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }
}

/// A mini-batch an earlier run of the job brought to its final status: a resumed run counts
/// its record and does not run it.
#[derive(Debug, Clone)]
pub struct SkippedMiniBatch {
    /// The record the earlier run wrote.
    pub record: MiniBatchRecord,
    /// Its input slice's fingerprint then ([`slice_fingerprint`]).
    pub fingerprint: u64,
    /// The input's source identity then (see [`CompletedMiniBatch::source`]).
    ///
    /// [`CompletedMiniBatch::source`]: crate::exec::CompletedMiniBatch::source
    pub source: Option<u64>,
}

/// The mini-batches a resumed run skips (from the job's ledger). The dispatcher still cuts
/// the input as before, so ids and boundaries are the same; each mini-batch found here is
/// checked against its fingerprint (unless `check_slices` is off: `--force`) and counted
/// without running. A local Parquet input is cut from its footers and not read where it is
/// skipped (see the `exec::recut` module).
///
/// Without the check (a forced resume) a mini-batch whose slice changed runs again, and the
/// committed results of mini-batches the new cut does not have are left out of the output
/// ([`ResumeSkips::was_skipped`]): the output stays the rows of the new cut, each once.
#[derive(Debug, Default)]
pub struct ResumeSkips {
    inner: std::sync::RwLock<SkipsInner>,
    /// The mini-batches skipped so far (found again, with the same slice).
    skipped: std::sync::Mutex<std::collections::HashSet<MiniBatchId>>,
}

#[derive(Debug, Default)]
struct SkipsInner {
    done: HashMap<MiniBatchId, SkippedMiniBatch>,
    check_slices: bool,
}

impl ResumeSkips {
    /// Adds a finished mini-batch.
    pub fn insert(&mut self, id: MiniBatchId, skipped: SkippedMiniBatch) {
        self.inner_mut().done.insert(id, skipped);
    }

    /// Refuse a mini-batch whose input slice changed (and an input with fewer mini-batches);
    /// off for a forced resume.
    pub fn set_check_slices(&mut self, on: bool) {
        self.inner_mut().check_slices = on;
    }

    fn inner_mut(&mut self) -> &mut SkipsInner {
        self.inner.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    fn inner(&self) -> std::sync::RwLockReadGuard<'_, SkipsInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes over what `other` skips (a resume opened after the plan was built: SQL opens its
    /// ledger when the statement first executes, before the dispatcher starts).
    pub fn load(&self, other: ResumeSkips) {
        let other = other.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = other;
    }

    /// Whether slices are checked.
    pub fn check_slices(&self) -> bool {
        self.inner().check_slices
    }

    /// Number of mini-batches to skip.
    pub fn len(&self) -> usize {
        self.inner().done.len()
    }

    /// True when nothing is skipped.
    pub fn is_empty(&self) -> bool {
        self.inner().done.is_empty()
    }

    /// The skipped mini-batch `id`, if it is one.
    pub fn get(&self, id: &MiniBatchId) -> Option<SkippedMiniBatch> {
        self.inner().done.get(id).cloned()
    }

    /// The ids to skip, in order.
    pub fn ids(&self) -> Vec<MiniBatchId> {
        let mut ids: Vec<MiniBatchId> = self.inner().done.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Marks mini-batch `id` as skipped: a keyed cluster job, whose executors find the
    /// mini-batch again (and check its slice) where the driver cannot see it.
    pub fn mark_skipped(&self, id: MiniBatchId) {
        crate::lock(&self.skipped).insert(id);
    }

    /// True when mini-batch `id` was found again with the same slice and skipped.
    pub fn was_skipped(&self, id: &MiniBatchId) -> bool {
        crate::lock(&self.skipped).contains(id)
    }
}

/// A queued mini-batch with its dispatch index and its share of the memory budget.
#[derive(Debug)]
pub struct Dispatched {
    /// The mini-batch.
    pub mini_batch: MiniBatch,
    /// Dispatch order over the whole job (`minibatch_index`).
    pub index: u64,
    /// Its input slice's fingerprint ([`slice_fingerprint`]), for the ledger.
    pub fingerprint: u64,
    /// Its input's source identity, for the ledger (see
    /// [`crate::exec::CompletedMiniBatch::source`]).
    pub source: Option<u64>,
    /// Where its rows are, when they were not read (a cluster driver's cut).
    pub read: Option<ReadFrom>,
    /// Memory held while the mini-batch is queued or running; released on drop.
    _reservation: MemoryReservation,
    /// Files downloaded for it (a cluster executor's copies of a file dataset's objects),
    /// removed on drop.
    _files: Option<tempfile::TempDir>,
}

impl Dispatched {
    /// `mini_batch`, dispatched as number `index` of the job, with its slice's `fingerprint`,
    /// holding `reservation` while queued or running (the manifest of a multi-node run).
    pub fn new(
        mini_batch: MiniBatch,
        index: u64,
        fingerprint: u64,
        reservation: MemoryReservation,
    ) -> Self {
        Dispatched {
            mini_batch,
            index,
            fingerprint,
            source: None,
            read: None,
            _reservation: reservation,
            _files: None,
        }
    }

    /// The same mini-batch, holding `files` (its downloaded copies) until it is done.
    pub fn with_files(mut self, files: Option<tempfile::TempDir>) -> Self {
        self._files = files;
        self
    }
}

/// The memory pool for the engine's own buffers (queued mini-batches, key groups being
/// collected), kept apart from the pool DataFusion's operators spill against so that a sort
/// cannot take all of it. Set as a session-config extension; without it the task's pool is
/// used.
#[derive(Debug)]
pub struct EngineMemoryPool(pub Arc<dyn MemoryPool>);

impl EngineMemoryPool {
    /// The pool the engine's readers reserve in for a task of `context`: the session's
    /// [`EngineMemoryPool`], else the task's own pool.
    pub fn of(context: &TaskContext) -> Arc<dyn MemoryPool> {
        match context.session_config().get_extension::<EngineMemoryPool>() {
            Some(engine) => engine.0.clone(),
            None => context.memory_pool().clone(),
        }
    }
}

/// The receiving end of the queue, shared by all partitions.
pub type SharedQueue = Arc<Mutex<mpsc::Receiver<Dispatched>>>;

/// Reads `inputs` (in order; each input's partitions in order) and queues their mini-batches,
/// counting those in `skips` (a resumed run) instead. Returns when everything is queued, the
/// queue is closed, or the job is cancelled. Errors are also recorded as the job's abort
/// reason so every partition stops.
pub async fn dispatch(
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    context: Arc<TaskContext>,
    state: Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
    queue: mpsc::Sender<Dispatched>,
) {
    dispatch_with(inputs, context, state, skips, queue, Rows::Read).await
}

/// As [`dispatch`], but the mini-batches of local Parquet inputs are queued without their
/// rows (cut from the footers, nothing read: a cluster driver's cut, whose executors read
/// the rows); other inputs are read as by [`dispatch`].
pub async fn cut_descriptors(
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    context: Arc<TaskContext>,
    state: Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
    queue: mpsc::Sender<Dispatched>,
) {
    dispatch_with(inputs, context, state, skips, queue, Rows::Leave).await
}

/// Whether the rows of local Parquet inputs are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Read,
    Leave,
}

async fn dispatch_with(
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    context: Arc<TaskContext>,
    state: Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
    queue: mpsc::Sender<Dispatched>,
    rows: Rows,
) {
    let pool = EngineMemoryPool::of(&context);
    let reservation = MemoryConsumer::new("ParallelRunExec[queue]").register(&pool);
    let cut = Cut {
        index: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        skips,
    };
    let result = dispatch_all(&inputs, &context, &state, &queue, &reservation, &cut, rows).await;
    match result {
        Ok(true) => state.scheduling_finished(),
        // Stopped before the end (the job was cancelled, or nobody reads the queue): the
        // totals cut so far are lower bounds, not the job's totals.
        Ok(false) => {}
        Err(e) => {
            if !state.cancellation().is_cancelled() {
                state.abort(format!("reading the input failed: {e}"));
            }
        }
    }
}

async fn dispatch_all(
    inputs: &[(Arc<dyn ExecutionPlan>, InputInfo)],
    context: &Arc<TaskContext>,
    state: &Arc<JobState>,
    queue: &mpsc::Sender<Dispatched>,
    reservation: &MemoryReservation,
    cut: &Cut,
    rows: Rows,
) -> Result<bool> {
    let settings = state.settings().clone();
    let batch_size = context.session_config().batch_size();
    for (ordinal, (plan, info)) in inputs.iter().enumerate() {
        let name: Arc<str> = Arc::from(info.name.as_str());
        // A local Parquet input (not keyed): cut at boundaries from its footers.
        if settings.partition_keys.is_empty() && info.kind == ItemKind::Rows {
            let source = recut::source_identity(plan, batch_size);
            let footer = FooterCut::prepare(
                plan,
                context,
                info.source.is_some(),
                &info.name,
                ordinal as u32,
                settings.mini_batch_bytes,
                cut.skips.as_deref(),
                batch_size,
            )
            .await?;
            if let Some((plan, footer)) = footer {
                let to = Sink {
                    cut,
                    state,
                    queue,
                    reservation,
                    source,
                };
                let more = match rows {
                    Rows::Read => dispatch_footer(&plan, footer, context, &info.name, &to).await?,
                    Rows::Leave => dispatch_descriptors(footer, &to).await?,
                };
                if !more {
                    return Ok(false);
                }
                continue;
            }
        }
        // partition_keys: the input sorted on its keys (see [`crate::exec::keyed`]) and cut
        // into one mini-batch per key tuple; otherwise cut by size (or files) as it comes.
        let (plan, mut chunker) = if !settings.partition_keys.is_empty() {
            keyed::check_keys(&info.name, &plan.schema(), &settings.partition_keys)?;
            let sorted = keyed::keyed_plan(plan.clone(), &settings.partition_keys)?;
            let chunker = KeyChunker::new(
                ordinal as u32,
                name,
                info.kind,
                &sorted.schema(),
                &settings.partition_keys,
                reservation.new_empty(),
            )?;
            (sorted, Chunker::Keys(chunker))
        } else {
            let chunker = match info.kind {
                ItemKind::Rows => Chunker::Bytes(ByteChunker::new(
                    ordinal as u32,
                    name,
                    plan.schema(),
                    settings.mini_batch_bytes,
                )),
                ItemKind::Files => Chunker::Files(FileChunker::new(
                    ordinal as u32,
                    name,
                    plan.schema(),
                    settings.mini_batch_files,
                )),
            };
            (plan.clone(), chunker)
        };
        let to = Sink {
            cut,
            state,
            queue,
            reservation,
            source: None,
        };
        for partition in 0..plan.output_partitioning().partition_count() {
            let mut stream = plan.execute(partition, context.clone())?;
            loop {
                let next = tokio::select! {
                    _ = state.cancellation().cancelled() => return Ok(false),
                    next = stream.next() => next,
                };
                let Some(batch) = next else { break };
                let batch = batch.map_err(|e| input_error(&info.name, e))?;
                for mb in chunker.push(batch)? {
                    if !enqueue(mb, None, None, &to).await? {
                        return Ok(false);
                    }
                }
            }
        }
        if let Some(mb) = chunker.finish()? {
            if !enqueue(mb, None, None, &to).await? {
                return Ok(false);
            }
        }
    }
    if let Some(skips) = cut.skips.as_ref().filter(|s| s.check_slices()) {
        let found = cut.skipped.load(Ordering::Relaxed);
        if found < skips.len() as u64 {
            let mut missing: Vec<String> = skips.ids().iter().map(ToString::to_string).collect();
            missing.truncate(3);
            return Err(resume_refused(
                &missing[0],
                format!(
                    "the input now has fewer mini-batches than when the job was started: {}                      recorded mini-batch(es) were not found again (e.g. {})",
                    skips.len() as u64 - found,
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(true)
}

/// Reads `plan` (a local Parquet scan, leaving out what a resume skips) and cuts it at the
/// boundaries of `footer`, counting the skipped mini-batches without reading them.
async fn dispatch_footer(
    plan: &Arc<dyn ExecutionPlan>,
    mut footer: FooterCut,
    context: &Arc<TaskContext>,
    input: &str,
    to: &Sink<'_>,
) -> Result<bool> {
    to.state.rows_not_read(footer.rows_not_read);
    let mut steps = Vec::new();
    for partition in 0..plan.output_partitioning().partition_count() {
        let mut stream = plan.execute(partition, context.clone())?;
        loop {
            let next = tokio::select! {
                _ = to.state.cancellation().cancelled() => return Ok(false),
                next = stream.next() => next,
            };
            let Some(batch) = next else { break };
            let batch = batch.map_err(|e| input_error(input, e))?;
            footer.feed(&batch, &mut steps)?;
            if !take_steps(&mut steps, to).await? {
                return Ok(false);
            }
        }
    }
    footer.finish(&mut steps)?;
    take_steps(&mut steps, to).await
}

/// Queues the mini-batches of `footer` without their rows (nothing is read), counting the
/// skipped ones.
async fn dispatch_descriptors(mut footer: FooterCut, to: &Sink<'_>) -> Result<bool> {
    let mut steps = Vec::with_capacity(1);
    for seq in 0..footer.len() {
        steps.push(footer.descriptor(seq));
        if !take_steps(&mut steps, to).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Queues the mini-batches of `steps` and counts the skipped ones (emptying `steps`).
async fn take_steps(steps: &mut Vec<Step>, to: &Sink<'_>) -> Result<bool> {
    for step in steps.drain(..) {
        let more = match step {
            Step::Cut(mb, fingerprint, read) => enqueue(mb, Some(fingerprint), read, to).await?,
            Step::Skipped(id, skipped) => {
                let Some(skips) = to.cut.skips.as_ref() else {
                    continue;
                };
                count_skipped(id, &skipped, skips, to)
            }
        };
        if !more {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where the dispatcher's mini-batches go, and the source identity of the input being cut.
struct Sink<'a> {
    cut: &'a Cut,
    state: &'a Arc<JobState>,
    queue: &'a mpsc::Sender<Dispatched>,
    reservation: &'a MemoryReservation,
    source: Option<u64>,
}

/// Counts skipped mini-batch `id` (found again with the same slice, or not read); false when
/// the job is cancelled.
fn count_skipped(
    id: MiniBatchId,
    skipped: &SkippedMiniBatch,
    skips: &ResumeSkips,
    to: &Sink<'_>,
) -> bool {
    to.cut.skipped.fetch_add(1, Ordering::Relaxed);
    crate::lock(&skips.skipped).insert(id);
    to.cut.index.fetch_add(1, Ordering::Relaxed);
    to.state.mini_batch_skipped(&skipped.record);
    !to.state.cancellation().is_cancelled()
}

/// The dispatcher's position: the next dispatch index, and what a resumed run skips.
struct Cut {
    index: AtomicU64,
    skipped: AtomicU64,
    skips: Option<Arc<ResumeSkips>>,
}

fn resume_refused(mini_batch: &str, why: String) -> PrsError {
    PrsError::config(
        "--resume",
        format!("mini batch {mini_batch}"),
        format!(
            "{why}. The committed results no longer match the input: restore the input, run \
             with --restart to start over, or add --force to keep the committed results anyway"
        ),
    )
}

/// Queues one mini-batch, with its `fingerprint` if it was cut from the footers (then it
/// holds no rows when they are left to an executor: its items are its row range), else its
/// fingerprint is [`slice_fingerprint`]; `Ok(false)` when nobody listens any more or the job
/// is cancelled.
async fn enqueue(
    mini_batch: MiniBatch,
    fingerprint: Option<u64>,
    read: Option<ReadFrom>,
    to: &Sink<'_>,
) -> Result<bool> {
    let Sink {
        cut,
        state,
        queue,
        reservation,
        source,
    } = *to;
    let items = match fingerprint {
        Some(_) => mini_batch.lineage.rows.end - mini_batch.lineage.rows.start,
        None => mini_batch.items(),
    };
    let fingerprint = match fingerprint {
        Some(fingerprint) => fingerprint,
        None => {
            let t = std::time::Instant::now();
            let fingerprint = slice_fingerprint(&mini_batch);
            state.add_ledger_time(t.elapsed());
            fingerprint
        }
    };
    let skip = cut
        .skips
        .as_ref()
        .and_then(|s| s.get(&mini_batch.id).map(|e| (s, e)));
    if let Some((skips, skipped)) = skip {
        let same = fingerprint == skipped.fingerprint;
        if !same && skips.check_slices() {
            return Err(resume_refused(
                &mini_batch.id.to_string(),
                format!(
                    "input {:?} changed: rows {}..{} are not the ones this mini-batch was \
                     made of when it was committed",
                    mini_batch.lineage.input.as_ref(),
                    mini_batch.lineage.rows.start,
                    mini_batch.lineage.rows.end
                ),
            ));
        }
        if same {
            return Ok(count_skipped(mini_batch.id, &skipped, skips, to));
        }
        cut.skipped.fetch_add(1, Ordering::Relaxed);
        // Forced: its slice changed, so it runs again.
    }
    let bytes = mini_batch.memory_size();
    let mb_reservation = reservation.new_empty();
    mb_reservation.try_grow(bytes).map_err(|e| PrsError::Input {
        input: mini_batch.lineage.input.to_string(),
        location: format!("mini batch {}", mini_batch.id),
        message: format!(
            "the memory pool refused {bytes} bytes for the mini-batch: {e}. Lower mini_batch_size or raise the memory limit"
        ),
    })?;
    state.mini_batch_scheduled(items);
    let dispatched = Dispatched {
        mini_batch,
        index: cut.index.fetch_add(1, Ordering::Relaxed),
        fingerprint,
        source,
        read,
        _reservation: mb_reservation,
        _files: None,
    };
    tokio::select! {
        _ = state.cancellation().cancelled() => Ok(false),
        sent = queue.send(dispatched) => Ok(sent.is_ok()),
    }
}

fn input_error(input: &str, e: datafusion::error::DataFusionError) -> PrsError {
    PrsError::Input {
        input: input.to_string(),
        location: "scan".into(),
        message: e.to_string(),
    }
}

enum Chunker {
    Bytes(ByteChunker),
    Files(FileChunker),
    Keys(KeyChunker),
}

impl Chunker {
    fn push(&mut self, batch: arrow::record_batch::RecordBatch) -> Result<Vec<MiniBatch>> {
        match self {
            Chunker::Bytes(c) => c.push(batch),
            Chunker::Files(c) => c.push(batch),
            Chunker::Keys(c) => c.push(batch),
        }
    }

    fn finish(&mut self) -> Result<Option<MiniBatch>> {
        match self {
            Chunker::Bytes(c) => c.finish(),
            Chunker::Files(c) => c.finish(),
            Chunker::Keys(c) => c.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::state::{NoopObserver, RunSettings};
    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use datafusion::datasource::memory::MemorySourceConfig;
    use std::time::Duration;

    fn settings() -> RunSettings {
        RunSettings {
            workers: 1,
            processes_per_node: 1,
            mini_batch_bytes: 800,
            mini_batch_files: 10,
            run_timeout: Duration::from_secs(1),
            run_max_try: 1,
            error_threshold: -1,
            allowed_failed_count: None,
            allowed_failed_percent: None,
            queue_depth: 1,
            partition_keys: Vec::new(),
            isolate_failures: false,
            isolate_timeouts: false,
            keep_failed_rows: false,
        }
    }

    #[tokio::test]
    async fn totals_are_final_only_when_the_whole_input_was_cut() {
        let batch = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(0..1000)) as ArrayRef,
        )])
        .unwrap();
        let plan: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch.clone()]], batch.schema(), None).unwrap();
        let inputs = vec![(plan, InputInfo::new("rows", ItemKind::Rows))];
        let task_ctx = datafusion::prelude::SessionContext::new().task_ctx();

        // Everything read: the totals are the job's.
        let state = JobState::new(settings(), Arc::new(NoopObserver));
        let (tx, mut rx) = mpsc::channel(1);
        let reader = tokio::spawn(async move {
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        dispatch(inputs.clone(), task_ctx.clone(), state.clone(), None, tx).await;
        let n = reader.await.unwrap();
        let counts = state.counts();
        assert!(n > 1, "{counts:?}");
        assert!(counts.scheduling_done);
        assert_eq!((counts.mini_batches_total, counts.items_total), (n, 1000));

        // Cancelled while waiting for room in the queue: only a lower bound was cut.
        let state = JobState::new(settings(), Arc::new(NoopObserver));
        let (tx, _rx) = mpsc::channel(1);
        let task = tokio::spawn(dispatch(inputs, task_ctx, state.clone(), None, tx));
        for _ in 0..1000 {
            if state.counts().mini_batches_total >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state.abort("stopped by the test");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the dispatcher stops when cancelled")
            .unwrap();
        let counts = state.counts();
        assert!(counts.mini_batches_total >= 2, "{counts:?}");
        assert!(!counts.scheduling_done, "{counts:?}");
    }

    /// Runs `dispatch_with` over `inputs` to the end: what it queued (id, rows, fingerprint,
    /// rows held) and the job state.
    async fn cut_all(
        inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
        task_ctx: Arc<TaskContext>,
        rows: Rows,
    ) -> (
        Vec<(String, std::ops::Range<u64>, u64, usize)>,
        Arc<JobState>,
    ) {
        let mut s = settings();
        s.mini_batch_bytes = 4096;
        let state = JobState::new(s, Arc::new(NoopObserver));
        let (tx, mut rx) = mpsc::channel::<Dispatched>(4);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(d) = rx.recv().await {
                let mb = &d.mini_batch;
                out.push((
                    mb.id.to_string(),
                    mb.lineage.rows.clone(),
                    d.fingerprint,
                    mb.data.num_rows(),
                ));
            }
            out
        });
        dispatch_with(inputs, task_ctx, state.clone(), None, tx, rows).await;
        (reader.await.unwrap(), state)
    }

    #[tokio::test]
    async fn a_cluster_driver_cuts_a_parquet_input_as_a_local_run_without_reading_it() {
        use parquet::arrow::ArrowWriter;
        let d = tempfile::tempdir().unwrap();
        for (name, from, n) in [("a", 0i64, 1000i64), ("b", 1000, 2000)] {
            let batch = RecordBatch::try_from_iter(vec![(
                "id",
                Arc::new(Int64Array::from_iter_values(from..from + n)) as ArrayRef,
            )])
            .unwrap();
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(300))
                .build();
            let file = std::fs::File::create(d.path().join(format!("{name}.parquet"))).unwrap();
            let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        let ctx = datafusion::prelude::SessionContext::new();
        let folder = format!("{}/", d.path().display());
        let table = crate::input::LocalParquetTable::try_new(&ctx.state(), &folder, ".parquet")
            .await
            .unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let plan = ctx
            .sql("SELECT id FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let inputs = vec![(plan, InputInfo::new("t", ItemKind::Rows).ordered())];
        let (local, state) = cut_all(inputs.clone(), ctx.task_ctx(), Rows::Read).await;
        assert!(state.counts().scheduling_done);
        assert!(local.len() > 4, "{local:?}");
        assert!(local
            .iter()
            .all(|(_, r, _, n)| (r.end - r.start) as usize == *n));
        // Every data page of b.parquet overwritten, its footer kept: reading it fails...
        let path = d.path().join("b.parquet");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        bytes[4..n - 8 - footer].fill(0x5a);
        std::fs::write(&path, &bytes).unwrap();
        let (_, failed) = cut_all(inputs.clone(), ctx.task_ctx(), Rows::Read).await;
        assert!(failed.abort_reason().is_some(), "reading b.parquet fails");
        // ... the cluster driver's cut reads no rows: the same mini-batches, ids and
        // fingerprints, all the items counted.
        let (cluster, state) = cut_all(inputs, ctx.task_ctx(), Rows::Leave).await;
        assert!(state.abort_reason().is_none());
        let strip = |v: &[(String, std::ops::Range<u64>, u64, usize)]| {
            v.iter()
                .map(|(id, r, f, _)| (id.clone(), r.clone(), *f))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&cluster), strip(&local));
        assert!(cluster.iter().all(|(_, _, _, n)| *n == 0), "no rows held");
        let counts = state.counts();
        assert!(counts.scheduling_done);
        assert_eq!(
            (counts.mini_batches_total, counts.items_total),
            (local.len() as u64, 3000)
        );
    }
}
