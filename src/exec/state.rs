//! Shared state of one job execution: counters, thresholds, cancellation, and the observer
//! that turns events into reports. One `Arc<JobState>` is passed down to every partition; there
//! is no process-global state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::batch::{MiniBatchId, MiniBatchRecord};
use crate::config::ParallelRunConfig;
use crate::error::PrsError;
use crate::lock;

/// The operator's validated settings, derived from [`ParallelRunConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    /// Total workers (= output partitions).
    pub workers: usize,
    /// Workers per node (for node names and init-failure limits).
    pub processes_per_node: usize,
    /// Target bytes per tabular mini-batch.
    pub mini_batch_bytes: u64,
    /// Files per file-dataset mini-batch.
    pub mini_batch_files: u64,
    /// Limit for one run() call.
    pub run_timeout: Duration,
    /// Total tries per mini-batch.
    pub run_max_try: u32,
    /// Failed items allowed (-1: no limit).
    pub error_threshold: i64,
    /// Failed mini-batches allowed (`None` or -1: no limit).
    pub allowed_failed_count: Option<i64>,
    /// Failed mini-batches allowed, percent (`None` or -1: no limit).
    pub allowed_failed_percent: Option<f64>,
    /// Mini-batches queued ahead of the workers, in total.
    pub queue_depth: usize,
    /// Columns whose distinct value tuples each form one mini-batch (empty: byte-sized).
    pub partition_keys: Vec<String>,
    /// Bisect a mini-batch that failed every try down to its failing items.
    pub isolate_failures: bool,
    /// ... also when its last try timed out.
    pub isolate_timeouts: bool,
    /// Keep the input rows of failed items for the job's sink (`dead_letter_rows`).
    pub keep_failed_rows: bool,
}

impl RunSettings {
    /// Settings for `config` (which must be validated). `has_file_inputs` says whether a file
    /// dataset is among the inputs: then `mini_batch_size` must be a plain count.
    pub fn from_config(config: &ParallelRunConfig, has_file_inputs: bool) -> crate::Result<Self> {
        let workers = config.worker_count().max(1);
        let mini_batch_files = match config.mini_batch_files() {
            Ok(n) => n,
            Err(e) if has_file_inputs => return Err(e),
            // A size with a unit only concerns tabular inputs.
            Err(_) => u64::MAX,
        };
        Ok(RunSettings {
            workers,
            processes_per_node: config.processes_per_node().max(1),
            mini_batch_bytes: config.mini_batch_bytes(),
            mini_batch_files,
            run_timeout: config.run_timeout(),
            run_max_try: config.run_max_try.max(1),
            error_threshold: config.error_threshold,
            allowed_failed_count: config.allowed_failed_count,
            allowed_failed_percent: config.allowed_failed_percent,
            queue_depth: workers * 2,
            partition_keys: config.partition_keys.clone(),
            isolate_failures: config.isolates_failures(),
            isolate_timeouts: config.isolate_timeouts,
            keep_failed_rows: false,
        })
    }
}

/// Receives the events of a job (reports, progress bars). All methods must be cheap.
pub trait JobObserver: Send + Sync {
    /// A mini-batch reached its final status.
    fn mini_batch_finished(&self, _record: &MiniBatchRecord) {}
    /// One try of a mini-batch failed (it may be retried).
    fn try_failed(&self, _id: MiniBatchId, _attempt: u32, _process: &str, _message: &str) {}
    /// All mini-batches are cut and queued: the totals are known.
    fn scheduling_done(&self, _mini_batches: u64, _items: u64) {}
    /// A worker was started, replaced, or failed to initialise.
    fn worker_event(&self, _process: &str, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;
impl JobObserver for NoopObserver {}

/// Counts over the whole job. Cheap to copy.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct JobCounts {
    /// Mini-batches cut so far (all of them once `scheduling_done`).
    pub mini_batches_total: u64,
    /// Items in those mini-batches.
    pub items_total: u64,
    /// True once every mini-batch is cut and queued.
    pub scheduling_done: bool,
    /// Mini-batches with a final status.
    pub mini_batches_processed: u64,
    /// ... of which succeeded.
    pub mini_batches_succeeded: u64,
    /// ... of which failed (every try failed).
    pub mini_batches_failed: u64,
    /// Items in processed mini-batches.
    pub items_processed: u64,
    /// Items returned by run().
    pub items_succeeded: u64,
    /// Items failed.
    pub items_failed: u64,
    /// run() calls made, retries included.
    pub tries: u64,
    /// ... of which bisection made (`isolate_failures`).
    pub bisection_calls: u64,
    /// init() failures.
    pub init_failures: u64,
    /// Mini-batches an earlier run finished and this (resumed) run did not run again; they
    /// are counted in the totals above.
    pub mini_batches_skipped: u64,
    /// Input rows of skipped mini-batches that were not read at all (a resumed local
    /// Parquet input re-cut from the ledger's row ranges).
    pub rows_not_read: u64,
    /// The items of all inputs, exactly, from metadata known before reading them (Parquet
    /// footers); `None` when some input's count is not known that way.
    pub items_expected: Option<u64>,
}

impl JobCounts {
    /// True when `mini_batches_total` is exact: every mini-batch has been cut. Otherwise it
    /// is a lower bound (the input was not fully read).
    pub fn mini_batches_total_exact(&self) -> bool {
        self.scheduling_done
    }

    /// The exact number of items, when known: every mini-batch cut, or metadata.
    pub fn items_total_known(&self) -> Option<u64> {
        if self.scheduling_done {
            Some(self.items_total)
        } else {
            self.items_expected
        }
    }
}

/// State shared by all partitions of one job execution.
pub struct JobState {
    settings: RunSettings,
    counts: Mutex<JobCounts>,
    abort: Mutex<Option<String>>,
    /// The abort was a threshold exceeded (its message is restated with the final counts).
    threshold_abort: AtomicBool,
    /// The counts are final (see [`JobState::close`]).
    closed: AtomicBool,
    cancel: CancellationToken,
    observer: Arc<dyn JobObserver>,
    started: Instant,
    init_failures_per_node: Mutex<BTreeMap<usize, u64>>,
    /// Time spent inside run() calls, every try of every worker, in nanoseconds.
    worker_nanos: AtomicU64,
    /// Time spent on the ledger's behalf (input-slice fingerprints), in nanoseconds.
    ledger_nanos: AtomicU64,
    /// The executors whose records a cluster job's driver committed (by name).
    executors: Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("counts", &self.counts())
            .finish()
    }
}

impl JobState {
    /// A fresh state reporting to `observer`.
    pub fn new(settings: RunSettings, observer: Arc<dyn JobObserver>) -> Arc<Self> {
        Arc::new(JobState {
            settings,
            counts: Mutex::new(JobCounts::default()),
            abort: Mutex::new(None),
            threshold_abort: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            observer,
            started: Instant::now(),
            init_failures_per_node: Mutex::new(BTreeMap::new()),
            worker_nanos: AtomicU64::new(0),
            ledger_nanos: AtomicU64::new(0),
            executors: Mutex::new(Default::default()),
        })
    }

    /// The executors that ran the mini-batches a cluster job's driver committed (their
    /// records' `process` names them), in name order; empty for a local run.
    pub fn executors(&self) -> Vec<String> {
        lock(&self.executors).iter().cloned().collect()
    }

    /// Adds time spent for the ledger (fingerprinting an input slice).
    pub fn add_ledger_time(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.ledger_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Time spent for the ledger so far in the operator.
    pub fn ledger_time(&self) -> Duration {
        Duration::from_nanos(self.ledger_nanos.load(Ordering::Relaxed))
    }

    /// Adds the time of one run() call (a try) to the job's time in workers.
    pub fn add_worker_time(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.worker_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Time spent inside run() calls so far, over all tries and workers.
    pub fn worker_time(&self) -> Duration {
        Duration::from_nanos(self.worker_nanos.load(Ordering::Relaxed))
    }

    /// The settings.
    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// The observer.
    pub fn observer(&self) -> &Arc<dyn JobObserver> {
        &self.observer
    }

    /// Time since the state was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> JobCounts {
        lock(&self.counts).clone()
    }

    /// Cancelled when the job must stop (threshold exceeded, fatal error, user cancel).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the job was aborted, if it was.
    pub fn abort_reason(&self) -> Option<String> {
        lock(&self.abort).clone()
    }

    /// Aborts the job: records the first reason and cancels outstanding work. Returns true
    /// when this call's reason was the first.
    pub fn abort(&self, reason: impl Into<String>) -> bool {
        let mut abort = lock(&self.abort);
        let first = abort.is_none();
        if first {
            *abort = Some(reason.into());
        }
        drop(abort);
        self.cancel.cancel();
        first
    }

    /// Why the job was aborted, stated with `counts`: a threshold's message is rebuilt from
    /// them, so that it agrees with the report (mini-batches running when the threshold was
    /// crossed may have failed too before the end).
    pub fn abort_reason_with(&self, counts: &JobCounts) -> Option<String> {
        let reason = self.abort_reason()?;
        if self.threshold_abort.load(Ordering::SeqCst) {
            if let Some(now) = threshold_violation(&self.settings, counts) {
                return Some(now);
            }
        }
        Some(reason)
    }

    /// Records the exact number of items of all inputs, known from metadata before reading.
    pub fn expect_items(&self, items: u64) {
        lock(&self.counts).items_expected = Some(items);
    }

    /// Ends the job's accounting and returns the final counts. Whatever happens after this
    /// (a worker finishing a mini-batch as the job stops, the dispatcher cutting one more) is
    /// neither counted nor reported, so every report of the job states these counts.
    pub fn close(&self) -> JobCounts {
        let counts = lock(&self.counts);
        self.closed.store(true, Ordering::SeqCst);
        counts.clone()
    }

    /// The counts, for changing them; `None` once the job is closed.
    fn open_counts(&self) -> Option<std::sync::MutexGuard<'_, JobCounts>> {
        let counts = lock(&self.counts);
        (!self.closed.load(Ordering::SeqCst)).then_some(counts)
    }

    /// The error to end streams with after an abort.
    pub fn abort_error(&self) -> PrsError {
        PrsError::ThresholdExceeded(
            self.abort_reason()
                .unwrap_or_else(|| "job cancelled".to_string()),
        )
    }

    /// A mini-batch was cut and queued.
    pub fn mini_batch_scheduled(&self, items: u64) {
        if let Some(mut c) = self.open_counts() {
            c.mini_batches_total += 1;
            c.items_total += items;
        }
    }

    /// Every mini-batch is cut and queued; checks the percent threshold from now on.
    pub fn scheduling_finished(&self) {
        let (total, items) = {
            let Some(mut c) = self.open_counts() else {
                return;
            };
            c.scheduling_done = true;
            (c.mini_batches_total, c.items_total)
        };
        self.observer.scheduling_done(total, items);
        self.check_thresholds();
    }

    /// Counts one run() call.
    pub fn try_started(&self) {
        if let Some(mut c) = self.open_counts() {
            c.tries += 1;
        }
    }

    /// Counts one run() call made by bisection (a try too).
    pub fn bisection_call_started(&self) {
        if let Some(mut c) = self.open_counts() {
            c.tries += 1;
            c.bisection_calls += 1;
        }
    }

    /// A mini-batch an earlier run of the job finished (a resumed run): counted as cut and
    /// processed with its recorded status, reported, not run.
    pub fn mini_batch_skipped(&self, record: &MiniBatchRecord) {
        if let Some(mut c) = self.open_counts() {
            c.mini_batches_total += 1;
            c.items_total += record.total_items;
            c.mini_batches_skipped += 1;
        }
        self.mini_batch_finished(record);
    }

    /// A mini-batch cut (and counted) by this run that an earlier run finished without
    /// committing it (a cluster job whose driver crashed; see `cluster::submit`): counted as
    /// skipped and processed with its recorded status, reported, not run.
    pub fn mini_batch_adopted(&self, record: &MiniBatchRecord) {
        if let Some(mut c) = self.open_counts() {
            c.mini_batches_skipped += 1;
        }
        self.mini_batch_finished(record);
    }

    /// A resumed run left `rows` input rows of skipped mini-batches unread.
    pub fn rows_not_read(&self, rows: u64) {
        if let Some(mut c) = self.open_counts() {
            c.rows_not_read += rows;
        }
    }

    /// A try failed; tells the observer.
    pub fn try_failed(&self, id: MiniBatchId, attempt: u32, process: &str, message: &str) {
        self.observer.try_failed(id, attempt, process, message);
    }

    /// Records a mini-batch's final status and aborts the job if a threshold is now exceeded.
    /// After [`JobState::close`] the record is dropped: the job's reports are final.
    pub fn mini_batch_finished(&self, record: &MiniBatchRecord) {
        {
            let Some(mut c) = self.open_counts() else {
                return;
            };
            c.mini_batches_processed += 1;
            if record.succeeded() {
                c.mini_batches_succeeded += 1;
            } else {
                c.mini_batches_failed += 1;
            }
            c.items_processed += record.total_items;
            c.items_succeeded += record.succeeded_items;
            c.items_failed += record.failed_items;
            // Reported while the counts are held, so a close() sees both or neither.
            self.observer.mini_batch_finished(record);
        }
        self.check_thresholds();
    }

    /// A mini-batch another process ran (an executor of a cluster) reached its final status:
    /// its tries and the time of its last run() call are counted here, then it is recorded as
    /// by [`JobState::mini_batch_finished`].
    pub fn mini_batch_finished_elsewhere(&self, record: &MiniBatchRecord) {
        if let Some(mut c) = self.open_counts() {
            c.tries += u64::from(record.tries);
        }
        // `process` is `<executor>/<agent>` (`host:4242/process000`).
        if let Some((executor, _)) = record.process.rsplit_once('/') {
            lock(&self.executors).insert(executor.to_string());
        }
        self.add_worker_time(Duration::try_from_secs_f64(record.run_seconds).unwrap_or_default());
        self.mini_batch_finished(record);
    }

    /// Records an init() failure on `node`; aborts the job once a node has failed
    /// 3 x process_count_per_node times (PRS's rule). Returns true when the job was aborted.
    pub fn init_failed(&self, node: usize, process: &str, message: &str) -> bool {
        if let Some(mut c) = self.open_counts() {
            c.init_failures += 1;
        }
        // The worker's message says which stage failed ("init() failed: ...", "loading the
        // entry script failed: ...").
        self.observer.worker_event(process, message);
        let limit = 3 * self.settings.processes_per_node as u64;
        let failures = {
            let mut per_node = lock(&self.init_failures_per_node);
            let n = per_node.entry(node).or_insert(0);
            *n += 1;
            *n
        };
        if failures >= limit {
            self.abort(format!(
                "init() failed {failures} times on node {node} (the limit is 3 x process_count_per_node = {limit}); \
                 the job stops. Last failure ({process}):\n{message}"
            ));
            true
        } else {
            false
        }
    }

    /// Records a worker whose entry script cannot be loaded (a SyntaxError or ImportError at
    /// import, no run(), missing packages: `error` is a configuration error) and aborts the
    /// job at once: unlike an init() failure, every try would fail the same way.
    pub fn load_failed(&self, process: &str, error: &PrsError) {
        lock(&self.counts).init_failures += 1;
        let message = error.to_string();
        self.observer.worker_event(
            process,
            &format!("loading the entry script failed: {message}"),
        );
        self.abort(message);
    }

    /// Checks the three thresholds against the counts; aborts the job with a message that says
    /// which one was exceeded and by how much.
    pub fn check_thresholds(&self) {
        if let Some(reason) = threshold_violation(&self.settings, &self.counts()) {
            if self.abort(reason) {
                self.threshold_abort.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The first threshold `counts` exceeds, as a message; `None` when all are respected.
pub fn threshold_violation(s: &RunSettings, c: &JobCounts) -> Option<String> {
    if s.error_threshold >= 0 && c.items_failed as i64 > s.error_threshold {
        return Some(format!(
            "error_threshold exceeded: {} items failed, {} allowed (over by {})",
            c.items_failed,
            s.error_threshold,
            c.items_failed as i64 - s.error_threshold
        ));
    }
    if let Some(allowed) = s.allowed_failed_count.filter(|a| *a >= 0) {
        if c.mini_batches_failed as i64 > allowed {
            return Some(format!(
                "allowed_failed_count exceeded: {} mini batches failed, {} allowed (over by {})",
                c.mini_batches_failed,
                allowed,
                c.mini_batches_failed as i64 - allowed
            ));
        }
    }
    if let Some(percent) = s.allowed_failed_percent.filter(|p| *p >= 0.0) {
        if c.scheduling_done && c.mini_batches_total > 0 {
            let failed = c.mini_batches_failed as f64 * 100.0 / c.mini_batches_total as f64;
            if failed > percent {
                return Some(format!(
                    "allowed_failed_percent exceeded: {} of {} mini batches failed ({failed:.2}%), {percent}% allowed (over by {:.2} points)",
                    c.mini_batches_failed,
                    c.mini_batches_total,
                    failed - percent
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Lineage, MiniBatchStatus};
    use std::time::SystemTime;

    fn settings() -> RunSettings {
        RunSettings {
            workers: 2,
            processes_per_node: 2,
            mini_batch_bytes: 1024,
            mini_batch_files: 10,
            run_timeout: Duration::from_secs(1),
            run_max_try: 3,
            error_threshold: 5,
            allowed_failed_count: Some(2),
            allowed_failed_percent: Some(50.0),
            queue_depth: 4,
            partition_keys: Vec::new(),
            isolate_failures: false,
            isolate_timeouts: false,
            keep_failed_rows: false,
        }
    }

    #[test]
    fn thresholds_trigger_only_when_exceeded() {
        let s = settings();
        let mut c = JobCounts {
            items_failed: 5,
            mini_batches_failed: 2,
            mini_batches_total: 4,
            ..Default::default()
        };
        assert_eq!(threshold_violation(&s, &c), None);
        c.items_failed = 6;
        let m = threshold_violation(&s, &c).unwrap();
        assert!(
            m.contains("error_threshold") && m.contains("over by 1"),
            "{m}"
        );
        c.items_failed = 0;
        c.mini_batches_failed = 3;
        let m = threshold_violation(&s, &c).unwrap();
        assert!(
            m.contains("allowed_failed_count") && m.contains("over by 1"),
            "{m}"
        );
    }

    fn record(id: u64, items: u64, succeeded: bool) -> MiniBatchRecord {
        MiniBatchRecord {
            id: MiniBatchId::new(0, id),
            index: id,
            lineage: Lineage {
                input: Arc::from("rows"),
                rows: 0..items,
            },
            partition_key_value: Default::default(),
            tries: 1,
            process: "process000".into(),
            start_time: SystemTime::now(),
            total_items: items,
            succeeded_items: if succeeded { items } else { 0 },
            failed_items: if succeeded { 0 } else { items },
            elapsed_seconds: 0.0,
            run_seconds: 0.0,
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
        }
    }

    #[test]
    fn closed_counts_are_final_and_the_threshold_reason_states_them() {
        let mut s = settings();
        s.error_threshold = 15;
        s.allowed_failed_count = None;
        let state = JobState::new(s, Arc::new(NoopObserver));
        for _ in 0..3 {
            state.mini_batch_scheduled(10);
            state.try_started();
        }
        state.mini_batch_finished(&record(0, 10, false));
        assert!(state.abort_reason().is_none());
        state.mini_batch_finished(&record(1, 10, false));
        let at_abort = state.abort_reason().unwrap();
        assert!(at_abort.contains("20 items failed"), "{at_abort}");
        // A mini-batch that was running when the threshold was crossed fails too.
        state.mini_batch_finished(&record(2, 10, false));
        let closed = state.close();
        assert_eq!(closed.items_failed, 30);
        let reason = state.abort_reason_with(&closed).unwrap();
        assert!(
            reason.contains("30 items failed") && reason.contains("over by 15"),
            "{reason}"
        );
        // After close nothing changes any more.
        state.mini_batch_scheduled(10);
        state.try_started();
        state.mini_batch_finished(&record(3, 10, true));
        state.scheduling_finished();
        assert_eq!(state.counts(), closed);
        assert!(!state.counts().mini_batches_total_exact());
    }

    #[test]
    fn a_cluster_jobs_records_name_the_executors_that_ran_them() {
        let state = JobState::new(settings(), Arc::new(NoopObserver));
        for (id, process) in [
            (0, "node-a:11/process000"),
            (1, "node-b:12/process000"),
            (2, "node-a:11/process001"),
        ] {
            state.mini_batch_scheduled(10);
            let mut r = record(id, 10, true);
            r.process = process.into();
            state.mini_batch_finished_elsewhere(&r);
        }
        assert_eq!(state.executors(), vec!["node-a:11", "node-b:12"]);
        // A local run's records name the worker only.
        let local = JobState::new(settings(), Arc::new(NoopObserver));
        local.mini_batch_finished(&record(0, 10, true));
        assert!(local.executors().is_empty());
    }

    #[test]
    fn item_totals_are_known_from_metadata_or_once_everything_is_cut() {
        let state = JobState::new(settings(), Arc::new(NoopObserver));
        state.mini_batch_scheduled(10);
        assert_eq!(state.counts().items_total_known(), None);
        state.expect_items(25);
        assert_eq!(state.counts().items_total_known(), Some(25));
        state.mini_batch_scheduled(15);
        state.scheduling_finished();
        let c = state.counts();
        assert_eq!(c.items_total_known(), Some(25));
        assert!(c.mini_batches_total_exact());
    }

    #[test]
    fn percent_waits_for_scheduling() {
        let mut s = settings();
        s.allowed_failed_count = None;
        s.error_threshold = -1;
        let mut c = JobCounts {
            mini_batches_failed: 3,
            mini_batches_total: 4,
            ..Default::default()
        };
        assert_eq!(threshold_violation(&s, &c), None);
        c.scheduling_done = true;
        assert!(threshold_violation(&s, &c)
            .unwrap()
            .contains("allowed_failed_percent"));
        s.allowed_failed_percent = Some(-1.0);
        assert_eq!(threshold_violation(&s, &c), None);
    }
}
