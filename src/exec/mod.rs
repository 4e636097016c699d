//! The operator: [`ParallelRunExec`], a DataFusion `ExecutionPlan` that runs the entry script
//! over mini-batches of its inputs on `workers` worker slots (one per output partition), plus
//! its logical node ([`ParallelRunNode`]) and planner ([`ParallelRunPlanner`]).
//!
//! Layout: `dispatch` (the shared queue), `stream` (one partition's retry/timeout loop),
//! `state` (counters, thresholds, cancellation), `logical` and `planner`.

pub mod bisect;
pub mod dispatch;
pub mod keyed;
pub mod keyed_shared;
pub mod logical;
pub mod logs;
pub mod manifest;
pub mod planner;
pub(crate) mod recut;
pub mod shared;
pub mod spec;
pub mod state;
pub mod stream;

pub use crate::batch::MiniBatchRecord;
pub use dispatch::{InputInfo, ResumeSkips, SkippedMiniBatch};
pub use logical::ParallelRunNode;
pub use planner::{plan_node, ParallelRunPlanner, ParallelRunQueryPlanner};
pub use spec::{OperatorSpec, SPEC_FORMAT_VERSION};
pub use state::{JobCounts, JobObserver, JobState, NoopObserver, RunSettings};
pub use stream::{CompletedMiniBatch, FailedInput};

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::compute::cast_with_options;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_datafusion_err, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::batch::ItemKind;
use crate::error::{PrsError, Result};
use crate::output::FailedRowsWriter;
use crate::worker::WorkerFactoryRef;

/// A stream of succeeded mini-batches from one partition.
pub type MiniBatchStream = Pin<Box<dyn Stream<Item = Result<CompletedMiniBatch>> + Send>>;

/// Where finished mini-batches go instead of the operator's output stream: the job's ledger
/// and exactly-once append_row sink (`crate::ledger::LedgerSink`, `crate::output::StagedSink`).
/// Called once per mini-batch that reached its final status (failed ones too, with no
/// results), from any partition; an error aborts the job.
pub trait MiniBatchSink: Send + Sync {
    /// Commits `done`: its results (complete or not at all) and its record.
    fn commit(&self, done: &CompletedMiniBatch) -> Result<()>;
}

/// What a spec needs to run in this process: the factory that starts its workers, who
/// hears of its progress and, for a job, the sink its results are committed to. Built by the side that executes the plan (never encoded, never
/// compared: a plan's identity is its [`OperatorSpec`]).
#[derive(Clone)]
pub struct OperatorRuntime {
    /// Starts workers.
    pub factory: WorkerFactoryRef,
    /// Receives per-mini-batch events (reports, progress).
    pub observer: Arc<dyn JobObserver>,
    /// When set, results are committed here and the operator emits no rows.
    pub sink: Option<Arc<dyn MiniBatchSink>>,
    /// A resumed run: the mini-batches an earlier run finished, counted and not run.
    pub skips: Option<Arc<ResumeSkips>>,
    /// `dead_letter_rows`: where the input of each finished mini-batch's failed items is
    /// written, before it is committed or emitted.
    pub failed_rows: Option<Arc<FailedRowsWriter>>,
}

impl OperatorRuntime {
    /// A runtime with `factory` reporting to `observer`, emitting results as rows.
    pub fn new(factory: WorkerFactoryRef, observer: Arc<dyn JobObserver>) -> Self {
        OperatorRuntime {
            factory,
            observer,
            sink: None,
            skips: None,
            failed_rows: None,
        }
    }

    /// The same runtime writing the input of failed items with `failed_rows`
    /// (`dead_letter_rows`).
    pub fn with_failed_rows(mut self, failed_rows: Arc<FailedRowsWriter>) -> Self {
        self.failed_rows = Some(failed_rows);
        self
    }

    /// The same runtime skipping the mini-batches in `skips` (a resumed run).
    pub fn with_skips(mut self, skips: Arc<ResumeSkips>) -> Self {
        self.skips = Some(skips);
        self
    }

    /// The same runtime committing results to `sink` instead of emitting them.
    pub fn with_sink(mut self, sink: Arc<dyn MiniBatchSink>) -> Self {
        self.sink = Some(sink);
        self
    }
}

impl fmt::Debug for OperatorRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorRuntime")
            .field("factory", &self.factory)
            .finish()
    }
}

/// How the operator gets its mini-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecMode {
    /// One process: a single dispatcher reads every input and cuts it into mini-batches;
    /// the `workers` output partitions share its queue.
    Local,
    /// One task of a multi-node run: the only child is the driver's mini-batch manifest
    /// ([`manifest`]); the operator is partition-preserving over it (output partition `i`
    /// runs the mini-batches of child partition `i`, the task's partitions sharing one queue)
    /// and emits one envelope row per finished mini-batch.
    Manifest,
    /// One task of a multi-node `partition_keys` job: one child per input, each sorted on
    /// its keys within each of its hash partitions ([`keyed_shared`]); the operator is
    /// partition-preserving over them, cuts one mini-batch per key from each partition and
    /// commits like [`ExecMode::Manifest`].
    Keyed,
}

/// Builds the runtime of an operator decoded from bytes, in the process that runs it (a
/// multi-node executor): at its first `execute()`, never while decoding (decoding starts
/// nothing and probes nothing: the scheduler decodes every plan too).
pub trait RuntimeProvider: Send + Sync {
    /// The runtime for `spec` in this process.
    fn runtime(&self, spec: &OperatorSpec) -> Result<OperatorRuntime>;

    /// The runtime for `spec` in a task of cluster job `job` (an executor may keep the job's
    /// workers between its tasks). The default is [`RuntimeProvider::runtime`].
    fn runtime_for_job(&self, spec: &OperatorSpec, job: &str) -> Result<OperatorRuntime> {
        let _ = job;
        self.runtime(spec)
    }

    /// The cluster jobs whose workers this process keeps while none of its tasks runs (see
    /// [`RuntimeProvider::job_ended`]). The default: none.
    fn idle_jobs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Cluster job `job` is over: the workers kept for it are shut down. The default does
    /// nothing.
    fn job_ended(&self, job: &str) {
        let _ = job;
    }
}

/// The operator's runtime: given, or built on first use by a [`RuntimeProvider`].
struct RuntimeCell {
    ready: OnceLock<OperatorRuntime>,
    provider: Option<Arc<dyn RuntimeProvider>>,
    building: Mutex<()>,
    /// The cluster job a task's operator runs in (set by the executor before it runs).
    job: OnceLock<String>,
}

impl RuntimeCell {
    fn ready(runtime: OperatorRuntime) -> Self {
        RuntimeCell {
            ready: OnceLock::from(runtime),
            provider: None,
            building: Mutex::new(()),
            job: OnceLock::new(),
        }
    }

    fn deferred(provider: Arc<dyn RuntimeProvider>) -> Self {
        RuntimeCell {
            ready: OnceLock::new(),
            provider: Some(provider),
            building: Mutex::new(()),
            job: OnceLock::new(),
        }
    }

    fn get(&self, spec: &OperatorSpec) -> Result<&OperatorRuntime> {
        if let Some(runtime) = self.ready.get() {
            return Ok(runtime);
        }
        // One build at a time: the partitions of a task start together.
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(runtime) = self.ready.get() {
            return Ok(runtime);
        }
        let provider = self.provider.as_ref().ok_or_else(|| {
            PrsError::from_datafusion(internal_datafusion_err!(
                "ParallelRunExec has neither a runtime nor a way to build one"
            ))
        })?;
        let built = match self.job.get() {
            Some(job) => provider.runtime_for_job(spec, job)?,
            None => provider.runtime(spec)?,
        };
        Ok(self.ready.get_or_init(|| built))
    }
}

/// Runs an entry script over mini-batches of its inputs.
///
/// [`ExecMode::Local`]: output partition `p` is worker slot `p`. Its inputs are read one after
/// the other (each input's partitions in order) by a single dispatcher that cuts them into
/// mini-batches, so mini-batch ids do not depend on the number of workers. Only rows of
/// succeeded mini-batches are emitted. [`ExecMode::Manifest`]: see there.
pub struct ParallelRunExec {
    mode: ExecMode,
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    spec: Arc<OperatorSpec>,
    runtime: Arc<RuntimeCell>,
    state: Arc<JobState>,
    properties: Arc<PlanProperties>,
    schema: SchemaRef,
    execution: Mutex<Option<Arc<Execution>>>,
    /// Rows emitted per partition (the job's counts come from `state`, see `metrics()`).
    metrics: ExecutionPlanMetricsSet,
}

/// The dispatcher and queue of one execution; alive while any partition runs.
struct Execution {
    queue: dispatch::SharedQueue,
    /// Where a cluster task commits its mini-batches (manifest mode with a shared store).
    shared: Option<Arc<shared::SharedStaging>>,
    /// Copies a cluster task's worker logs into the output (with the shared store), and
    /// the task copying them every period while the execution lives.
    logs: Option<(Arc<logs::LogShipper>, SpawnedTask<()>)>,
    _dispatcher: SpawnedTask<()>,
    claimed: Mutex<usize>,
}

impl fmt::Debug for ParallelRunExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelRunExec")
            .field("mode", &self.mode)
            .field("spec", &self.spec)
            .finish()
    }
}

impl ParallelRunExec {
    /// An operator running `spec` over `inputs` (planned; in the spec's input order) with
    /// `runtime`'s workers, counting in `state`.
    pub fn new(
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        spec: Arc<OperatorSpec>,
        runtime: OperatorRuntime,
        state: Arc<JobState>,
    ) -> Self {
        let runtime = Arc::new(RuntimeCell::ready(runtime));
        Self::build(ExecMode::Local, inputs, spec, runtime, state)
    }

    /// An operator in `mode` over `inputs` whose runtime `provider` builds at the first
    /// `execute()` (an operator decoded from bytes, or one the driver ships). Pure: starts
    /// nothing, probes nothing. `inputs` are the spec's inputs in local mode, the manifest in
    /// manifest mode.
    pub fn deferred(
        mode: ExecMode,
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        spec: Arc<OperatorSpec>,
        provider: Arc<dyn RuntimeProvider>,
    ) -> Result<Self> {
        let expected = match mode {
            ExecMode::Local | ExecMode::Keyed => spec.inputs().len(),
            ExecMode::Manifest => 1,
        };
        if inputs.len() != expected {
            return Err(PrsError::from_datafusion(internal_datafusion_err!(
                "ParallelRunExec ({mode:?}) needs {expected} input(s), got {}",
                inputs.len()
            )));
        }
        let state = JobState::new(spec.settings().clone(), Arc::new(NoopObserver));
        let runtime = Arc::new(RuntimeCell::deferred(provider));
        Ok(Self::build(mode, inputs, spec, runtime, state))
    }

    fn build(
        mode: ExecMode,
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        spec: Arc<OperatorSpec>,
        runtime: Arc<RuntimeCell>,
        state: Arc<JobState>,
    ) -> Self {
        let (schema, inputs, partitions): (SchemaRef, Vec<_>, usize) = match mode {
            ExecMode::Local => (
                spec.output_schema()
                    .cloned()
                    .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty())),
                inputs
                    .into_iter()
                    .zip(spec.inputs().iter().cloned())
                    .collect(),
                spec.settings().workers,
            ),
            ExecMode::Manifest => {
                let partitions = inputs
                    .first()
                    .map_or(0, |m| m.properties().partitioning.partition_count());
                let inputs = inputs
                    .into_iter()
                    .map(|m| (m, InputInfo::new("manifest", ItemKind::Rows)))
                    .collect();
                (manifest::envelope_schema(), inputs, partitions)
            }
            ExecMode::Keyed => {
                let partitions = inputs
                    .first()
                    .map_or(0, |m| m.properties().partitioning.partition_count());
                let inputs = inputs
                    .into_iter()
                    .zip(spec.inputs().iter().cloned())
                    .collect();
                (manifest::envelope_schema(), inputs, partitions)
            }
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        ParallelRunExec {
            mode,
            inputs,
            spec,
            runtime,
            state,
            properties,
            schema,
            execution: Mutex::new(None),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Stops this operator's work with `reason`, as an exceeded threshold does: its
    /// partitions end with that error and their workers are stopped. For a cluster task that
    /// Ballista cancelled (see `cluster::engine`).
    pub fn stop(&self, reason: &str) {
        self.state.abort(reason);
    }

    /// Tells an operator decoded on a cluster executor which cluster job its task belongs
    /// to, before it runs: its runtime is then built with
    /// [`RuntimeProvider::runtime_for_job`] (the executor's workers of that job are reused
    /// across its tasks). The first call wins.
    pub fn set_cluster_job(&self, job: &str) {
        let _ = self.runtime.job.set(job.to_string());
    }

    /// Why the operator was stopped ([`ParallelRunExec::stop`], a threshold...), if it was.
    pub fn stopped(&self) -> Option<String> {
        self.state.abort_reason()
    }

    /// The spec.
    pub fn spec(&self) -> &Arc<OperatorSpec> {
        &self.spec
    }

    /// How it gets its mini-batches.
    pub fn mode(&self) -> ExecMode {
        self.mode
    }

    /// The factory and observer it runs with, once known (an operator decoded from bytes
    /// builds them at its first `execute()`).
    pub fn runtime(&self) -> Option<&OperatorRuntime> {
        self.runtime.ready.get()
    }

    fn partitions(&self) -> usize {
        self.properties.partitioning.partition_count()
    }

    /// The job state (counters, cancellation).
    pub fn state(&self) -> &Arc<JobState> {
        &self.state
    }

    /// The inputs and what the operator knows of them.
    pub fn inputs(&self) -> &[(Arc<dyn ExecutionPlan>, InputInfo)] {
        &self.inputs
    }

    /// Runs partition `partition` and returns its succeeded mini-batches with their ids, the
    /// shared staging area a cluster task commits them to, and what copies its workers' logs.
    #[allow(clippy::type_complexity)]
    fn mini_batches(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<(
        MiniBatchStream,
        Option<Arc<shared::SharedStaging>>,
        Option<Arc<logs::LogShipper>>,
    )> {
        let partitions = self.partitions();
        if partition >= partitions {
            return Err(PrsError::from_datafusion(internal_datafusion_err!(
                "ParallelRunExec has {partitions} partitions, partition {partition} requested"
            )));
        }
        let runtime = self.runtime.get(&self.spec)?;
        let execution = self.claim_execution(&context, runtime)?;
        let shared = execution.shared.clone();
        let shipper = execution.logs.as_ref().map(|(shipper, _)| shipper.clone());
        let (tx, rx) = mpsc::channel(2);
        let task = SpawnedTask::spawn(stream::run_partition(
            partition,
            execution.queue.clone(),
            runtime.factory.clone(),
            self.state.clone(),
            tx,
        ));
        // The stream owns the partition task (aborted when the stream is dropped) and a share of
        // the execution (the dispatcher stops when no partition is left).
        let guard = (task, execution);
        let stream: MiniBatchStream = Box::pin(futures::stream::unfold(
            (rx, guard),
            |(mut rx, guard)| async move { rx.recv().await.map(|item| (item, (rx, guard))) },
        ));
        Ok((stream, shared, shipper))
    }

    fn claim_execution(
        &self,
        context: &Arc<TaskContext>,
        runtime: &OperatorRuntime,
    ) -> Result<Arc<Execution>> {
        let mut slot = self.execution.lock().unwrap_or_else(|p| p.into_inner());
        let execution = match slot.as_ref() {
            Some(e) => e.clone(),
            None => {
                let (tx, rx) = mpsc::channel(self.spec.settings().queue_depth.max(1));
                // A cluster task commits through the shared store (opened, and checked
                // writable, when its first partition starts).
                let shared = match (self.mode, self.spec.shared()) {
                    (ExecMode::Manifest | ExecMode::Keyed, Some(location)) => Some(Arc::new(
                        shared::SharedStaging::open(location, &node_name())?,
                    )),
                    _ => None,
                };
                // Its workers log on this executor: copied into the output's logs.
                let logs = match (&shared, logs::ExecutorLogs::of(&self.spec)) {
                    (Some(shared), Some(logs)) => {
                        let shipper = logs::LogShipper::of(logs.dir, shared.clone());
                        let copying = shipper.every(logs::copy_every());
                        Some((shipper, copying))
                    }
                    _ => None,
                };
                let dispatcher = match (self.mode, self.inputs.first()) {
                    (ExecMode::Manifest, Some((manifest, _))) => {
                        SpawnedTask::spawn(manifest::dispatch_manifest(
                            manifest.clone(),
                            self.spec.clone(),
                            context.clone(),
                            self.state.clone(),
                            shared.clone().map(|s| (s, node_name())),
                            tx,
                        ))
                    }
                    (ExecMode::Keyed, _) => SpawnedTask::spawn(keyed_shared::dispatch_keyed(
                        self.inputs.clone(),
                        context.clone(),
                        self.state.clone(),
                        shared.clone().map(|s| (s, node_name())),
                        crate::input::remote_files::ExecutorFiles::new(self.spec.input_storage()),
                        tx,
                    )),
                    _ => SpawnedTask::spawn(dispatch::dispatch(
                        self.inputs.clone(),
                        context.clone(),
                        self.state.clone(),
                        runtime.skips.clone(),
                        tx,
                    )),
                };
                let e = Arc::new(Execution {
                    queue: Arc::new(tokio::sync::Mutex::new(rx)),
                    shared,
                    logs,
                    _dispatcher: dispatcher,
                    claimed: Mutex::new(0),
                });
                *slot = Some(e.clone());
                e
            }
        };
        let mut claimed = execution.claimed.lock().unwrap_or_else(|p| p.into_inner());
        *claimed += 1;
        if *claimed >= self.partitions() {
            // Every partition has its share: a later execute() starts a fresh execution.
            *slot = None;
        }
        drop(claimed);
        Ok(execution)
    }
}

impl DisplayAs for ParallelRunExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.spec.settings();
        let names: Vec<&str> = self.inputs.iter().map(|(_, i)| i.name.as_str()).collect();
        let script = match self.runtime() {
            Some(runtime) => runtime.factory.describe(),
            None => self.spec.entry_script().to_string(),
        };
        if t == DisplayFormatType::TreeRender {
            // One short key=value per line, as the tree renderer expects.
            writeln!(f, "script={script}")?;
            writeln!(f, "workers={}", s.workers)?;
            return writeln!(f, "inputs=[{}]", names.join(", "));
        }
        match self.mode {
            ExecMode::Manifest => write!(f, "ParallelRunExec[manifest]: ")?,
            ExecMode::Keyed => write!(f, "ParallelRunExec[keyed]: ")?,
            ExecMode::Local => write!(f, "ParallelRunExec: ")?,
        }
        write!(
            f,
            "script={}, workers={}, {}, run_max_try={}, \
             run_invocation_timeout={}s, error_threshold={}, allowed_failed_count={}, allowed_failed_percent={}, inputs=[{}]",
            script,
            s.workers,
            if s.partition_keys.is_empty() {
                mini_batch_size_text(s, self.inputs.iter().map(|(_, i)| i.kind))
            } else {
                format!("partition_keys=[{}]", s.partition_keys.join(", "))
            },
            s.run_max_try,
            s.run_timeout.as_secs(),
            s.error_threshold,
            s.allowed_failed_count.map_or("none".to_string(), |v| v.to_string()),
            s.allowed_failed_percent.map_or("none".to_string(), |v| v.to_string()),
            names.join(", ")
        )
    }
}

/// `mini_batch_size=...` for EXPLAIN, in the units of the inputs: bytes for tables, files for
/// file datasets (a size with a unit has no file count, so files are shown only when a file
/// dataset is among the inputs).
fn mini_batch_size_text(s: &RunSettings, kinds: impl Iterator<Item = ItemKind>) -> String {
    let (mut rows, mut files) = (false, false);
    for kind in kinds {
        match kind {
            ItemKind::Rows => rows = true,
            ItemKind::Files => files = true,
        }
    }
    match (rows, files) {
        (true, true) => format!(
            "mini_batch_size={} bytes / {} files",
            s.mini_batch_bytes, s.mini_batch_files
        ),
        (false, true) => format!("mini_batch_size={} files", s.mini_batch_files),
        _ => format!("mini_batch_size={} bytes", s.mini_batch_bytes),
    }
}

impl ExecutionPlan for ParallelRunExec {
    fn name(&self) -> &str {
        "ParallelRunExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution; self.inputs.len()]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // Inputs are read in order by one dispatcher: splitting them gains nothing and would
        // make mini-batch boundaries depend on the session's partitioning.
        vec![false; self.inputs.len()]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    /// For EXPLAIN ANALYZE: rows emitted, and the job's mini-batches succeeded, failed and
    /// retried, items in and succeeded, and the time spent inside run() (all tries).
    fn metrics(&self) -> Option<MetricsSet> {
        let counts = self.state.counts();
        let set = ExecutionPlanMetricsSet::new();
        let global = |name: &'static str, value: u64| {
            MetricBuilder::new(&set)
                .global_counter(name)
                .add(usize::try_from(value).unwrap_or(usize::MAX));
        };
        global("mini_batches_succeeded", counts.mini_batches_succeeded);
        global("mini_batches_failed", counts.mini_batches_failed);
        global(
            "retries",
            counts.tries.saturating_sub(counts.mini_batches_processed),
        );
        global("items_in", counts.items_processed);
        global("items_succeeded", counts.items_succeeded);
        MetricBuilder::new(&set)
            .subset_time("worker_time", 0)
            .add_duration(self.state.worker_time());
        let mut all = self.metrics.clone_inner();
        for metric in set.clone_inner().iter() {
            all.push(metric.clone());
        }
        Some(all)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().map(|(p, _)| p).collect()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if children.len() != self.inputs.len() {
            return internal_err!(
                "ParallelRunExec has {} inputs, got {} children",
                self.inputs.len(),
                children.len()
            );
        }
        // Ballista restricts a manifest to a task's partitions and rebuilds the operator over
        // it: the partition count follows the child's.
        Ok(Arc::new(ParallelRunExec::build(
            self.mode,
            children,
            self.spec.clone(),
            self.runtime.clone(),
            self.state.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        // Names this try's parts in the shared store: unique per task attempt.
        let task = context
            .task_id()
            .unwrap_or_else(|| format!("partition {partition} of {}", std::process::id()));
        let (stream, shared, shipper) = self
            .mini_batches(partition, context)
            .map_err(PrsError::into_datafusion)?;
        let target = schema.clone();
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        // A runtime exists once mini_batches() succeeded.
        let sink = self.runtime().and_then(|r| r.sink.clone());
        let failed_rows = self.runtime().and_then(|r| r.failed_rows.clone());
        let (mode, state) = (self.mode, self.state.clone());
        // A cluster task's records name the node (host and executor process) of the worker.
        let node = (mode != ExecMode::Local).then(node_name);
        let batches = stream.filter_map(move |item| {
            let target = target.clone();
            let output_rows = output_rows.clone();
            let (sink, state, node) = (sink.clone(), state.clone(), node.clone());
            let (shared, task) = (shared.clone(), task.clone());
            let failed_rows = failed_rows.clone();
            async move {
                if let (Ok(done), Some(failed_rows)) = (&item, &failed_rows) {
                    // Before the commit: the ledger's record of a mini-batch comes after its
                    // dead letters are on disk.
                    if let Err(e) = failed_rows.write(done) {
                        state.abort(format!(
                            "writing the failed rows of mini batch {} failed: {e}",
                            done.id
                        ));
                        return Some(Err(e.into_datafusion()));
                    }
                }
                match item {
                    Err(e) => Some(Err(e.into_datafusion())),
                    // An executor's task: the outcome goes back to the driver, which commits.
                    Ok(mut done) if mode != ExecMode::Local => {
                        let node = node.unwrap_or_else(node_name);
                        done.record.process = format!("{node}/{}", done.record.process);
                        if let Some(shared) = &shared {
                            // Committed in the shared store; only the record goes back.
                            match shared.commit(&done, &node, &task).await {
                                Ok(shared::Commit::Won) => done.result = None,
                                Ok(shared::Commit::Lost) => return None,
                                Err(e) => {
                                    let e = PrsError::from(e);
                                    state.abort(e.to_string());
                                    return Some(Err(e.into_datafusion()));
                                }
                            }
                        }
                        Some(
                            manifest::envelope_batch(&done)
                                .inspect(|batch| output_rows.add(batch.num_rows()))
                                .map_err(PrsError::into_datafusion),
                        )
                    }
                    Ok(done) => match &sink {
                        // Committed to the job's sink: nothing to emit.
                        Some(sink) => sink.commit(&done).err().map(|e| {
                            state.abort(format!(
                                "committing the output of mini batch {} failed: {e}",
                                done.id
                            ));
                            Err(e.into_datafusion())
                        }),
                        None => done.result.map(|b| {
                            let batch = conform(b, &target, &done.id.to_string())
                                .map_err(PrsError::into_datafusion)?;
                            output_rows.add(batch.num_rows());
                            Ok(batch)
                        }),
                    },
                }
            }
        });
        // A cluster task's partition ends with a copy of its workers' logs (they stopped
        // when the partition's queue ran dry), before the scheduler hears the task ended.
        // A task cancelled or failed drops the stream first: the copy then runs in the
        // background.
        let last_copy = logs::FinalCopy::new(shipper);
        let last_copy = futures::stream::once(async move {
            last_copy.run().await;
            None
        })
        .filter_map(futures::future::ready);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            batches.chain(last_copy),
        )))
    }
}

/// This process as a node of a cluster: `HOST:PID` (an executor is one process).
pub(crate) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// Casts a result batch to `schema` (the declared output schema, or the one earlier results
/// set), by column name, naming the mini-batch when it does not fit. Only lossless casts are
/// made: a value the cast cannot convert (text that is not a number), or converts with a
/// loss (2.5 to an integer, a large integer to a float, nanoseconds to microseconds), is an
/// error, never a null or a changed value in the output.
pub fn conform(batch: RecordBatch, schema: &SchemaRef, mini_batch: &str) -> Result<RecordBatch> {
    if batch.schema_ref().fields() == schema.fields() {
        return RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(Into::into);
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = batch
            .column_by_name(field.name())
            .ok_or_else(|| PrsError::Output {
                path: format!("mini batch {mini_batch}"),
                message: format!(
                    "run() returned columns [{}] but the declared output schema needs column {:?}",
                    batch
                        .schema_ref()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    field.name()
                ),
            })?;
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else {
            lossless_cast(column, field.data_type()).map_err(|e| PrsError::Output {
                path: format!("mini batch {mini_batch}"),
                message: format!(
                    "run() returned column {:?} as {}, but the output has it as {} (declared, \
                     or as earlier mini-batches returned it): {e}. Return the same types from \
                     every mini-batch (e.g. cast in run()), or declare a type every result \
                     converts to without loss",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ),
            })?
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(Into::into)
}

/// `column` cast to `to` when every value converts and converts back unchanged.
fn lossless_cast(
    column: &arrow::array::ArrayRef,
    to: &arrow::datatypes::DataType,
) -> std::result::Result<arrow::array::ArrayRef, String> {
    let strict = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = cast_with_options(column, to, &strict).map_err(|e| e.to_string())?;
    let back = cast_with_options(&cast, column.data_type(), &strict)
        .map_err(|e| format!("its values do not convert back ({e})"))?;
    if back.as_ref() != column.as_ref() {
        let row = (0..column.len())
            .find(|&i| back.slice(i, 1).as_ref() != column.slice(i, 1).as_ref())
            .unwrap_or(0);
        let shown = arrow::util::display::array_value_to_string(column, row).unwrap_or_default();
        return Err(format!(
            "the value {shown:?} (row {row}) would change in the conversion"
        ));
    }
    Ok(cast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_shows_mini_batch_size_in_the_units_of_the_inputs() {
        let mut config = crate::config::ParallelRunConfig::new(
            "rust:echo",
            0,
            crate::config::OutputAction::AppendRow,
        );
        config.mini_batch_size = Some(crate::config::MiniBatchSize::parse("64KB").unwrap());
        // A size with a unit has no file count: tables only, never u64::MAX files.
        let s = RunSettings::from_config(&config, false).unwrap();
        let text = |kinds: &[ItemKind]| mini_batch_size_text(&s, kinds.iter().copied());
        assert_eq!(text(&[ItemKind::Rows]), "mini_batch_size=65536 bytes");
        config.mini_batch_size = Some(crate::config::MiniBatchSize::parse("5").unwrap());
        let s = RunSettings::from_config(&config, true).unwrap();
        let text = |kinds: &[ItemKind]| mini_batch_size_text(&s, kinds.iter().copied());
        assert_eq!(text(&[ItemKind::Files]), "mini_batch_size=5 files");
        assert_eq!(
            text(&[ItemKind::Rows, ItemKind::Files]),
            "mini_batch_size=5 bytes / 5 files"
        );
    }
}
