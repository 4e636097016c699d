//! Executing a SQL `parallel_run(...)`: the run's report ([`SqlRun`]), the operator that writes
//! it ([`ParallelRunReportExec`], above [`ParallelRunExec`](crate::exec::ParallelRunExec)) and the planners that put it there.
//!
//! A YAML job drives [`crate::exec::ParallelRunExec`] itself and writes the report when it is
//! done ([`crate::job::execute`]). In SQL, DataFusion drives the operator, so the report is written
//! by an operator placed right above it: the first `execute()` creates the report files (so
//! EXPLAIN never touches them), and the run is finished when
//! - every partition's stream has ended: the job succeeded (or PRS's rule that append_row needs a
//!   succeeded item fails it, and the last stream ends with that error);
//! - a partition's stream fails (a threshold exceeded, init() failing, a result that does not
//!   fit the output schema): the job is aborted and the error goes on to the query;
//! - the query stops reading (a LIMIT): the job stops where it is and the report says so.
//!
//! Either way the run is finished by the same [`crate::job::JobRun`] as a YAML job's (summary
//! rule, `job_result.txt`, `job_summary.json`, the progress file).
//!
//! With `preserve_order` the operator below commits each mini-batch to a staged sink (one
//! Arrow IPC part per mini-batch under the report folder, as a job's append_row output) and
//! this operator returns the parts in mini-batch order once every partition is done: memory
//! stays bounded by one part, whatever the size of the result.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{Stream, StreamExt};

use crate::batch::MiniBatchId;
use crate::config::{JobSettings, OutputFormat, ParallelRunConfig};
use crate::error::PrsError;
use crate::exec::ResumeSkips;
use crate::exec::{
    conform, plan_node, JobObserver, JobState, MiniBatchRecord, MiniBatchSink, OperatorSpec,
    ParallelRunNode, ParallelRunPlanner,
};
use crate::job::{JobRun, Progress};
use crate::ledger::{self, LedgerSink, ResumeMode};
use crate::lock;
use crate::output::{staging_dir, AppendRowSink, FailedRowsWriter, StagedSink};
use crate::report::{self, JobSummary, ReportWriter};
use crate::sql::SqlShared;

/// One `parallel_run(...)` of a query: its spec (settings, report folder) and, once
/// executed, its report. It is the operator's [`JobObserver`]: events go to the report files
/// of the current execution.
pub struct SqlRun {
    label: String,
    spec: Arc<OperatorSpec>,
    /// A resumable run (`SET parallel_run.resume`): it keeps a ledger in its report folder.
    resume: Option<ResumeMode>,
    writer: Mutex<Option<Arc<ReportWriter>>>,
    summary: Mutex<Option<JobSummary>>,
    started: AtomicBool,
    probed: AtomicBool,
}

impl fmt::Debug for SqlRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlRun")
            .field("label", &self.label)
            .field("report_dir", &self.report_dir())
            .finish()
    }
}

impl SqlRun {
    /// A run of `spec` (its report folder is the spec's log folder).
    pub(crate) fn new(label: String, spec: Arc<OperatorSpec>) -> Self {
        SqlRun {
            label,
            spec,
            resume: None,
            writer: Mutex::new(None),
            summary: Mutex::new(None),
            started: AtomicBool::new(false),
            probed: AtomicBool::new(false),
        }
    }

    /// The same run, resumable with `mode` (see `SET parallel_run.resume`).
    pub(crate) fn with_resume(mut self, mode: Option<ResumeMode>) -> Self {
        self.resume = mode;
        self
    }

    /// How the run treats its ledger, when it keeps one.
    pub fn resume(&self) -> Option<ResumeMode> {
        self.resume
    }

    /// The spec it runs.
    pub fn spec(&self) -> &Arc<OperatorSpec> {
        &self.spec
    }

    fn settings(&self) -> &JobSettings {
        self.spec.job()
    }

    /// Records that the probe ran init() and run() at planning time for this run.
    pub(crate) fn mark_probed(&self) {
        self.probed.store(true, Ordering::SeqCst);
    }

    /// True when the probe ran for this run (its worker's logs, if any, are in `user/` of the
    /// report folder even when the run itself never executes, e.g. for EXPLAIN).
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::SeqCst)
    }

    /// A short name for messages, e.g. `parallel_run(rust:echo)`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The report folder (`job_result.txt`, `job_summary.json`, `sys/`, `user/`).
    pub fn report_dir(&self) -> &Path {
        &self.settings().log_dir
    }

    /// The PRS parameters it runs with.
    pub fn config(&self) -> &ParallelRunConfig {
        &self.settings().config
    }

    /// True once an execution started (the report files exist).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// The summary of the last finished execution.
    pub fn summary(&self) -> Option<JobSummary> {
        lock(&self.summary).clone()
    }

    /// Marks a finished run as failed because the query around it failed (after the run
    /// itself had nothing to report), and rewrites its final report.
    pub(crate) fn fail_after(&self, reason: &str) {
        let mut slot = lock(&self.summary);
        let Some(summary) = slot.as_mut() else { return };
        if !summary.succeeded() {
            return;
        }
        summary.fail(format!("the query failed: {reason}"));
        let failures = self
            .current_writer()
            .map(|w| w.failures())
            .unwrap_or_default();
        if let Err(e) = report::write_final(self.report_dir(), summary, &failures) {
            tracing::warn!("{}: writing the report failed: {e}", self.label);
        }
    }

    fn current_writer(&self) -> Option<Arc<ReportWriter>> {
        lock(&self.writer).clone()
    }

    /// Creates the report files for a new execution.
    fn begin(&self) -> crate::Result<Arc<ReportWriter>> {
        let writer = Arc::new(ReportWriter::create(self.report_dir())?);
        *lock(&self.writer) = Some(writer.clone());
        *lock(&self.summary) = None;
        self.started.store(true, Ordering::SeqCst);
        Ok(writer)
    }
}

impl JobObserver for SqlRun {
    fn mini_batch_finished(&self, record: &MiniBatchRecord) {
        if let Some(w) = self.current_writer() {
            w.mini_batch_finished(record);
        }
    }

    fn try_failed(&self, id: MiniBatchId, attempt: u32, process: &str, message: &str) {
        if let Some(w) = self.current_writer() {
            w.try_failed(id, attempt, process, message);
        }
    }

    fn scheduling_done(&self, mini_batches: u64, items: u64) {
        if let Some(w) = self.current_writer() {
            w.scheduling_done(mini_batches, items);
        }
    }

    fn worker_event(&self, process: &str, message: &str) {
        if let Some(w) = self.current_writer() {
            w.worker_event(process, message);
        }
    }
}

/// One execution of a run: counts partitions and rows, and finishes the report once (through
/// [`JobRun`], as a job's).
struct Tracker {
    run: Arc<SqlRun>,
    state: Arc<JobState>,
    /// A resumable run's ledger, opened by the first execute().
    ledger: Option<Arc<SqlLedger>>,
    partitions: usize,
    open: AtomicUsize,
    ended: AtomicUsize,
    rows: AtomicU64,
    job_run: Mutex<Option<JobRun>>,
    finished: AtomicBool,
}

impl Tracker {
    fn new(
        run: Arc<SqlRun>,
        state: Arc<JobState>,
        partitions: usize,
        ledger: Option<Arc<SqlLedger>>,
    ) -> Self {
        Tracker {
            run,
            state,
            ledger,
            partitions,
            open: AtomicUsize::new(partitions),
            ended: AtomicUsize::new(0),
            rows: AtomicU64::new(0),
            job_run: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }

    /// Creates the report files and starts the run's progress on the first call.
    fn begin(&self) -> DFResult<()> {
        let mut job_run = lock(&self.job_run);
        if job_run.is_some() {
            return Ok(());
        }
        if let Some(ledger) = &self.ledger {
            ledger.open(&self.run).map_err(PrsError::into_datafusion)?;
        }
        let continued = self
            .ledger
            .as_ref()
            .is_some_and(|l| l.continued.load(Ordering::SeqCst));
        if self.run.settings().dead_letter_rows && !continued {
            // An earlier execution's failed rows are not this one's (a continued run keeps
            // those of the mini-batches it skips).
            FailedRowsWriter::in_folder(self.run.report_dir())
                .clear()
                .map_err(PrsError::into_datafusion)?;
        }
        let writer = self.run.begin().map_err(PrsError::into_datafusion)?;
        *job_run = Some(JobRun::begin(
            self.run.settings(),
            writer,
            self.state.clone(),
            Progress::Quiet,
        ));
        Ok(())
    }

    /// A partition's stream failed: the job is aborted with that reason and finished.
    fn failed(&self, error: &DataFusionError) {
        if self.state.abort_reason().is_none() {
            self.state.abort(crate::sql::error_text(error));
        }
        self.finish(true);
    }

    /// A partition's stream ended (`ended`: read to its end) or was dropped. Returns the error
    /// the last stream must end with (PRS's rule that append_row needs a succeeded item).
    fn partition_done(&self, ended: bool) -> Option<PrsError> {
        if ended {
            self.ended.fetch_add(1, Ordering::SeqCst);
        }
        if self.open.fetch_sub(1, Ordering::SeqCst) != 1 {
            return None;
        }
        let complete = self.ended.load(Ordering::SeqCst) == self.partitions;
        let summary = self.finish(complete)?;
        (complete && !summary.succeeded()).then(|| PrsError::NoOutput(summary.reason))
    }

    /// Writes the final report (once); returns the summary when this call wrote it.
    fn finish(&self, complete: bool) -> Option<JobSummary> {
        let mut slot = lock(&self.job_run);
        let job_run = slot.as_mut()?;
        if self.finished.swap(true, Ordering::SeqCst) {
            return None;
        }
        let aborted = self.state.abort_reason().is_some();
        let mut summary = job_run.summarize();
        if !complete && !aborted {
            let counts = self.state.counts();
            summary.status = crate::report::JobStatus::Succeeded;
            summary.reason = format!(
                "the query stopped reading before the end (e.g. a LIMIT): {} of {} mini batches \
                 were processed",
                counts.mini_batches_processed,
                if counts.scheduling_done {
                    counts.mini_batches_total.to_string()
                } else {
                    format!("{}+", counts.mini_batches_total)
                }
            );
        }
        summary.output_rows = self.rows.load(Ordering::SeqCst);
        if let Some(ledger) = &self.ledger {
            summary.resumed = ledger.continued.load(Ordering::SeqCst);
            summary.mini_batches_rerun = ledger.rerun.load(Ordering::SeqCst);
            if let Err(e) = ledger.sink.close() {
                summary.fail(format!("writing the ledger failed: {e}"));
            }
            summary.ledger_seconds = (ledger.sink.time() + self.state.ledger_time()).as_secs_f64();
        }
        job_run.write(&mut summary);
        *lock(&self.run.summary) = Some(summary.clone());
        Some(summary)
    }
}

/// A resumable SQL run's ledger (`SET parallel_run.resume`): the sink its operator commits
/// to (results staged under the report folder, then the record), and what its dispatcher
/// skips; opened when the statement first executes, so EXPLAIN touches no file.
pub(crate) struct SqlLedger {
    sink: Arc<LedgerSink>,
    staged: Arc<StagedSink>,
    skips: Arc<ResumeSkips>,
    continued: AtomicBool,
    rerun: AtomicU64,
}

impl SqlLedger {
    /// Opens the ledger of `run` in its report folder: continues an unfinished one (a
    /// finished one is started anew, as a statement runs again), refusing changed settings or
    /// inputs as a job's `--resume` does.
    fn open(&self, run: &SqlRun) -> crate::Result<()> {
        let Some(mode) = run.resume() else {
            return Ok(());
        };
        let report_dir = run.report_dir();
        let mode = match ledger::finished_status(report_dir).as_deref() {
            Some("succeeded") => ResumeMode::Fresh,
            _ => mode,
        };
        let parts = staging_dir(report_dir).join("parts");
        let (writer, resumed) = ledger::open(
            &ledger::ledger_dir(report_dir),
            run.spec(),
            mode,
            false,
            &parts,
        )?;
        for warning in &resumed.warnings {
            tracing::warn!("{}: {warning}", run.label());
        }
        if resumed.continued {
            self.staged.resume_with(resumed.parts);
        }
        self.continued.store(resumed.continued, Ordering::SeqCst);
        self.rerun.store(resumed.rerun, Ordering::SeqCst);
        self.skips.load(resumed.skips);
        self.sink.open_with(writer.sync_before(parts));
        self.staged.open()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Partitions that were never executed, or a plan dropped mid-way: finish anyway.
        self.finish(false);
    }
}

/// Writes the report of the [`ParallelRunExec`](crate::exec::ParallelRunExec) below it (see the module docs); otherwise
/// passes its rows through. With `preserve_order` it has one partition and returns the rows
/// in mini-batch order once the job is done.
pub struct ParallelRunReportExec {
    input: Arc<dyn ExecutionPlan>,
    run: Arc<SqlRun>,
    state: Arc<JobState>,
    properties: Arc<PlanProperties>,
    tracker: Arc<Tracker>,
    /// With `preserve_order`: the staged sink the operator below commits to.
    staged: Option<Arc<StagedSink>>,
}

impl fmt::Debug for ParallelRunReportExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelRunReportExec")
            .field("run", &self.run)
            .finish()
    }
}

impl ParallelRunReportExec {
    /// The report writer above `input` (a [`ParallelRunExec`](crate::exec::ParallelRunExec) reporting to `state`; with
    /// `preserve_order`, committing to `staged`).
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        run: Arc<SqlRun>,
        state: Arc<JobState>,
        staged: Option<Arc<StagedSink>>,
        ledger: Option<Arc<SqlLedger>>,
    ) -> Self {
        let properties = Arc::new(if staged.is_some() {
            // One partition, emitted once the job is done, in mini-batch order (not an
            // ordering of any column).
            PlanProperties::new(
                EquivalenceProperties::new(input.schema()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                input.boundedness(),
            )
        } else {
            // Rows pass through partition by partition, unchanged: whatever the input
            // guarantees (its ordering, e.g. a sort the optimizer pushed below, and its
            // partitioning) holds here too, as `maintains_input_order` says.
            PlanProperties::new(
                input.equivalence_properties().clone(),
                input.output_partitioning().clone(),
                input.pipeline_behavior(),
                input.boundedness(),
            )
        });
        let partitions = properties.output_partitioning().partition_count();
        let tracker = Arc::new(Tracker::new(run.clone(), state.clone(), partitions, ledger));
        ParallelRunReportExec {
            input,
            run,
            state,
            properties,
            tracker,
            staged,
        }
    }

    /// The run it reports on.
    pub fn run(&self) -> &Arc<SqlRun> {
        &self.run
    }

    /// All rows in mini-batch order, after the job is done: the operator below commits each
    /// mini-batch to the staged sink (one Arrow IPC part per mini-batch on disk, under the
    /// report folder), then the parts are read back in id order, one at a time.
    fn execute_ordered(
        &self,
        staged: Arc<StagedSink>,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let mut streams = Vec::new();
        for p in 0..self.input.output_partitioning().partition_count() {
            streams.push(self.input.execute(p, context.clone())?);
        }
        let schema = self.schema();
        let target = schema.clone();
        let ordered = futures::stream::once(async move {
            let mut merged = futures::stream::select_all(streams);
            while let Some(item) = merged.next().await {
                item?;
            }
            Ok::<_, DataFusionError>(staged.take())
        })
        .flat_map(move |staged| match staged {
            Ok(Some(sink)) => ordered_parts(sink, target.clone()).boxed(),
            Ok(None) => futures::stream::empty().boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            Tracked::new(ordered.boxed(), self.tracker.clone()),
        )))
    }
}

/// The batches of the committed parts of `sink` in mini-batch order, cast to `schema`; the
/// staging folder is removed once the last part is read.
fn ordered_parts(
    mut sink: AppendRowSink,
    schema: SchemaRef,
) -> impl Stream<Item = DFResult<RecordBatch>> + Send {
    let parts = sink.parts_in_order();
    let batches = futures::stream::iter(parts).flat_map(move |path| {
        let schema = schema.clone();
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let read = std::fs::File::open(&path)
            .map_err(|e| PrsError::io(&path, e))
            .and_then(|file| Ok(FileReader::try_new(file, None)?));
        match read {
            Ok(reader) => futures::stream::iter(reader.map(move |batch| {
                let batch = batch.map_err(PrsError::from)?;
                conform(batch, &schema, &label)
            }))
            .map(|r| r.map_err(PrsError::into_datafusion))
            .boxed(),
            Err(e) => futures::stream::iter([Err(e.into_datafusion())]).boxed(),
        }
    });
    let cleanup = futures::stream::once(async move {
        sink.discard();
        None
    });
    batches
        .map(Some)
        .chain(cleanup)
        .filter_map(futures::future::ready)
}

impl DisplayAs for ParallelRunReportExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        if t == DisplayFormatType::TreeRender {
            writeln!(f, "report_dir={}", self.run.report_dir().display())?;
            return writeln!(f, "preserve_order={}", self.run.settings().preserve_order);
        }
        write!(
            f,
            "ParallelRunReportExec: report_dir={}, preserve_order={}",
            self.run.report_dir().display(),
            self.run.settings().preserve_order
        )
    }
}

impl ExecutionPlan for ParallelRunReportExec {
    fn name(&self) -> &str {
        "ParallelRunReportExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // Nothing may come between this and the operator it reports on.
        vec![false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![self.staged.is_none()]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let [input] = match <[_; 1]>::try_from(children) {
            Ok(one) => one,
            Err(c) => {
                return datafusion::common::internal_err!(
                    "ParallelRunReportExec has one child, got {}",
                    c.len()
                )
            }
        };
        Ok(Arc::new(ParallelRunReportExec::new(
            input,
            self.run.clone(),
            self.state.clone(),
            self.staged.clone(),
            self.tracker.ledger.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        self.tracker.begin()?;
        if let Some(staged) = &self.staged {
            return self
                .execute_ordered(staged.clone(), context)
                .inspect_err(|e| self.tracker.failed(e));
        }
        let inner = match self.input.execute(partition, context) {
            Ok(stream) => stream,
            Err(e) => {
                self.tracker.failed(&e);
                return Err(e);
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            Tracked::new(inner, self.tracker.clone()),
        )))
    }
}

/// A partition's stream, reporting its end (or drop) to the tracker.
struct Tracked {
    inner: Pin<Box<dyn Stream<Item = DFResult<RecordBatch>> + Send>>,
    tracker: Arc<Tracker>,
    done: bool,
    pending_error: Option<PrsError>,
}

impl Tracked {
    fn new(
        inner: Pin<Box<dyn Stream<Item = DFResult<RecordBatch>> + Send>>,
        tracker: Arc<Tracker>,
    ) -> Self {
        Tracked {
            inner,
            tracker,
            done: false,
            pending_error: None,
        }
    }
}

impl Stream for Tracked {
    type Item = DFResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(e) = self.pending_error.take() {
            return Poll::Ready(Some(Err(e.into_datafusion())));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(batch))) => {
                self.tracker
                    .rows
                    .fetch_add(batch.num_rows() as u64, Ordering::SeqCst);
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                self.tracker.failed(&e);
                self.tracker.partition_done(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                match self.tracker.partition_done(true) {
                    Some(e) => Poll::Ready(Some(Err(e.into_datafusion()))),
                    None => Poll::Ready(None),
                }
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.tracker.partition_done(false);
        }
    }
}

/// Plans the [`ParallelRunNode`]s that `parallel_run(...)` made into a [`ParallelRunExec`](crate::exec::ParallelRunExec)
/// under a [`ParallelRunReportExec`]; other nodes are left to the next planner.
#[derive(Debug)]
pub struct SqlRunPlanner {
    shared: Arc<SqlShared>,
}

#[async_trait]
impl ExtensionPlanner for SqlRunPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ParallelRunNode>() else {
            return Ok(None);
        };
        let Some(run) = self.shared.run_for(node.spec()) else {
            return Ok(None);
        };
        // preserve_order: results are staged on disk under the report folder and read back
        // in mini-batch order (not sorted in memory). A resumable run stages them too (kept
        // when the statement does not finish) and records each mini-batch in its ledger.
        let staged_sink = || {
            StagedSink::new(
                run.report_dir(),
                "ordered_results",
                OutputFormat::Parquet,
                false,
            )
        };
        let (staged, sink, ledger) = match run.resume() {
            Some(_) => {
                let staged = Arc::new(staged_sink());
                let sink = Arc::new(LedgerSink::unopened(Some(staged.clone())));
                let ledger = Arc::new(SqlLedger {
                    sink: sink.clone(),
                    staged: staged.clone(),
                    skips: Arc::new(ResumeSkips::default()),
                    continued: AtomicBool::new(false),
                    rerun: AtomicU64::new(0),
                });
                (
                    Some(staged),
                    Some(sink as Arc<dyn MiniBatchSink>),
                    Some(ledger),
                )
            }
            None if run.settings().preserve_order => {
                let staged = Arc::new(staged_sink().transient());
                let sink = staged.clone() as Arc<dyn MiniBatchSink>;
                (Some(staged), Some(sink), None)
            }
            None => (None, None, None),
        };
        let skips = ledger.as_ref().map(|l| l.skips.clone());
        let exec = Arc::new(plan_node(node, physical_inputs, sink, skips));
        let state = exec.state().clone();
        Ok(Some(Arc::new(ParallelRunReportExec::new(
            exec, run, state, staged, ledger,
        ))))
    }
}

/// DataFusion's planner with [`SqlRunPlanner`] and [`ParallelRunPlanner`].
#[derive(Debug)]
pub struct SqlQueryPlanner {
    shared: Arc<SqlShared>,
}

impl SqlQueryPlanner {
    pub(crate) fn new(shared: Arc<SqlShared>) -> Self {
        SqlQueryPlanner { shared }
    }
}

#[async_trait]
impl QueryPlanner for SqlQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(SqlRunPlanner {
                shared: self.shared.clone(),
            }),
            Arc::new(ParallelRunPlanner),
        ])
        .create_physical_plan(logical_plan, session)
        .await
    }
}
