//! One partition of the operator: owns one worker slot, pulls mini-batches from the shared
//! queue, runs them with retries and timeouts, and emits the results of succeeded
//! mini-batches only (rows of a failed try never leave this module).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::batch::{ItemKind, Lineage, MiniBatch, MiniBatchId, MiniBatchRecord, MiniBatchStatus};
use crate::error::{PrsError, Result};
use crate::exec::bisect;
use crate::exec::dispatch::{Dispatched, SharedQueue};
use crate::exec::state::JobState;
use crate::worker::{MiniBatchContext, RunError, RunReturn, Worker, WorkerFactoryRef, WorkerSlot};

/// A mini-batch that reached its final status: its record and, when it succeeded and results
/// are kept, the rows its run() returned.
#[derive(Debug, Clone)]
pub struct CompletedMiniBatch {
    /// Stable id.
    pub id: MiniBatchId,
    /// Dispatch order.
    pub index: u64,
    /// Where its items came from.
    pub lineage: Lineage,
    /// The returned rows (absent when results are not kept, e.g. summary_only).
    pub result: Option<RecordBatch>,
    /// Elements run() returned: the output rows (pre-formatted text lines may hold several in
    /// one value).
    pub returned: u64,
    /// Its record (status, tries, timings, worker), as the observer received it.
    pub record: MiniBatchRecord,
    /// What identifies its input slice ([`crate::batch::slice_fingerprint`]).
    pub fingerprint: u64,
    /// What identified the input's source when it was cut (a local Parquet scan's files and
    /// batching), recorded in the ledger for diagnosis: a resume relies on the fingerprint.
    pub source: Option<u64>,
    /// The input items that failed (all of a failed mini-batch's, or those bisection
    /// isolated, or all of one whose run() returned fewer results than items: which ones it
    /// left out is not known), kept only for `dead_letter_rows`.
    pub failed_input: Option<FailedInput>,
}

/// The input items of a mini-batch's failed items (see [`CompletedMiniBatch::failed_input`]).
#[derive(Debug, Clone)]
pub struct FailedInput {
    /// Rows of a table or entries of a file dataset.
    pub kind: ItemKind,
    /// The items, with every input column, in row order.
    pub rows: RecordBatch,
}

/// The items a successful run() counts as succeeded (returned elements, capped at `total`),
/// and what the record says when that is not `total`: PRS counts input items minus returned
/// elements as failed items, and more than `total` as `total` (with a warning).
fn returned_items(id: &str, ret: &RunReturn, total: u64) -> (u64, String) {
    if ret.returned > total {
        let w = format!(
            "run() returned {} elements for {} items; counted as {} succeeded",
            ret.returned, total, total
        );
        tracing::warn!("mini batch {id}: {w}");
        (total, w)
    } else if ret.returned < total {
        (ret.returned, missing_results_message(ret.returned, total))
    } else {
        (ret.returned, String::new())
    }
}

/// The message of a mini-batch whose run() succeeded with fewer results than items.
fn missing_results_message(returned: u64, total: u64) -> String {
    format!(
        "run() returned {returned} results for {total} items: the {} missing count as failed \
         items (which ones is not known; return one element or row per succeeded item)",
        total - returned
    )
}

/// Runs partition `partition` until the queue is drained or the job is aborted, sending each
/// mini-batch that reached its final status (succeeded or failed) to `out`.
pub async fn run_partition(
    partition: usize,
    queue: SharedQueue,
    factory: WorkerFactoryRef,
    state: Arc<JobState>,
    out: mpsc::Sender<Result<CompletedMiniBatch>>,
) {
    let mut runner = PartitionRunner {
        slot: WorkerSlot::new(partition, partition / state.settings().processes_per_node),
        worker: None,
        factory,
        state: state.clone(),
    };
    let result = runner.run(queue, &out).await;
    runner.shutdown().await;
    let end = match result {
        Err(e) => Some(e),
        Ok(()) if state.abort_reason().is_some() => Some(state.abort_error()),
        Ok(()) => None,
    };
    if let Some(e) = end {
        let _ = out.send(Err(e)).await;
    }
}

struct PartitionRunner {
    slot: WorkerSlot,
    worker: Option<Box<dyn Worker>>,
    factory: WorkerFactoryRef,
    state: Arc<JobState>,
}

impl PartitionRunner {
    async fn run(
        &mut self,
        queue: SharedQueue,
        out: &mpsc::Sender<Result<CompletedMiniBatch>>,
    ) -> Result<()> {
        // Start at once, so every worker's init() runs in parallel with the others' and with
        // the cutting of the first mini-batches.
        self.ensure_worker().await?;
        loop {
            let next = {
                let mut rx = queue.lock().await;
                tokio::select! {
                    _ = self.state.cancellation().cancelled() => None,
                    next = rx.recv() => next,
                }
            };
            let Some(dispatched) = next else {
                return Ok(());
            };
            let done = self.process(dispatched).await?;
            if out.send(Ok(done)).await.is_err() {
                // Nobody reads our results any more: stop quietly.
                return Ok(());
            }
        }
    }

    /// A started and initialised worker, replacing a lost one as needed.
    async fn ensure_worker(&mut self) -> Result<&mut Box<dyn Worker>> {
        while self.worker.is_none() {
            if self.state.cancellation().is_cancelled() {
                return Err(self.state.abort_error());
            }
            let t0 = Instant::now();
            let started = self.factory.start(&self.slot).await;
            let outcome = match started {
                Err(e) => Err(e),
                Ok(mut worker) => {
                    let init = tokio::select! {
                        _ = self.state.cancellation().cancelled() => return Err(self.state.abort_error()),
                        r = worker.init() => r,
                    };
                    init.map(|()| worker)
                }
            };
            match outcome {
                Ok(worker) => {
                    let what = if self.slot.generation > 0 {
                        format!("replacement worker (generation {})", self.slot.generation)
                    } else {
                        "worker".to_string()
                    };
                    self.state.observer().worker_event(
                        &self.slot.agent_name,
                        &format!(
                            "{what} started on node {} and ready (start and init() took {:.2} s)",
                            self.slot.node,
                            t0.elapsed().as_secs_f64()
                        ),
                    );
                    self.worker = Some(worker);
                }
                Err(e) if e.is_usage() => {
                    // The script cannot be loaded (or its packages are missing): not retried.
                    self.state.load_failed(&self.slot.agent_name, &e);
                    return Err(self.state.abort_error());
                }
                Err(e) => {
                    self.slot.generation += 1;
                    let message = match &e {
                        PrsError::Worker { message, .. } => message.clone(),
                        other => other.to_string(),
                    };
                    if self
                        .state
                        .init_failed(self.slot.node, &self.slot.agent_name, &message)
                    {
                        return Err(self.state.abort_error());
                    }
                }
            }
        }
        self.worker.as_mut().ok_or_else(|| PrsError::Worker {
            worker: self.slot.agent_name.clone(),
            message: "no worker".into(),
        })
    }

    /// One run() call of `mb` on this slot's worker (started as needed), counted as a try (and
    /// as a bisection call when `bisection`); a worker lost by the call (timeout, crash) is
    /// replaced by the next call. Returns the outcome and the seconds inside run(); an error
    /// only when the job was aborted meanwhile.
    async fn call(
        &mut self,
        mb: &MiniBatch,
        context: &MiniBatchContext,
        bisection: bool,
    ) -> Result<(std::result::Result<RunReturn, RunError>, f64)> {
        let timeout = self.state.settings().run_timeout;
        let cancel = self.state.cancellation().clone();
        let state = self.state.clone();
        let worker = self.ensure_worker().await?;
        if bisection {
            state.bisection_call_started();
        } else {
            state.try_started();
        }
        let t = Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => None,
            r = worker.run(mb, context, timeout) => Some(r),
        };
        let seconds = t.elapsed().as_secs_f64();
        self.state.add_worker_time(t.elapsed());
        let Some(outcome) = outcome else {
            // Aborted mid-run: the worker may be busy with work nobody wants; stop it.
            self.worker = None;
            return Err(self.state.abort_error());
        };
        if let Err(e) = &outcome {
            if e.worker_lost() {
                // The worker was stopped (timeout) or died: a new one takes the slot.
                self.worker = None;
                self.slot.generation += 1;
                self.state.observer().worker_event(
                    &self.slot.agent_name,
                    &format!("worker replaced: {}", e.message(&mb.id.to_string())),
                );
            }
        }
        Ok((outcome, seconds))
    }

    /// Runs one mini-batch with up to `run_max_try` tries and returns it with its final
    /// status (an error only when the job was aborted meanwhile). A mini-batch that failed
    /// every try is bisected when the job isolates failures ([`bisect::eligible`]).
    async fn process(&mut self, dispatched: Dispatched) -> Result<CompletedMiniBatch> {
        let settings = self.state.settings().clone();
        let mb = &dispatched.mini_batch;
        let id_text = mb.id.to_string();
        let start_time = SystemTime::now();
        let t0 = Instant::now();
        let total = mb.items();
        let mut last_error: Option<RunError> = None;
        let mut errors: Vec<(u32, String)> = Vec::new();
        let mut attempt = 0;
        let mut run_seconds = 0.0;
        let process = self.slot.agent_name.clone();
        let record = |tries: u32, status: MiniBatchStatus, run_seconds: f64| MiniBatchRecord {
            id: mb.id,
            index: dispatched.index,
            lineage: mb.lineage.clone(),
            partition_key_value: mb.partition_key_value.clone(),
            tries,
            process: process.clone(),
            start_time,
            total_items: total,
            succeeded_items: 0,
            failed_items: total,
            elapsed_seconds: t0.elapsed().as_secs_f64(),
            run_seconds,
            status,
            error_message: String::new(),
            traceback: None,
            earlier_errors: Vec::new(),
            bisection_calls: 0,
            isolated: Vec::new(),
        };
        while attempt < settings.run_max_try {
            attempt += 1;
            let context = MiniBatchContext {
                minibatch_index: dispatched.index,
                attempt,
                input_name: mb.lineage.input.to_string(),
            };
            let (outcome, seconds) = self.call(mb, &context, false).await?;
            run_seconds = seconds;
            match outcome {
                Ok(ret) => {
                    let (succeeded, error_message) = returned_items(&id_text, &ret, total);
                    let record = MiniBatchRecord {
                        succeeded_items: succeeded,
                        failed_items: total - succeeded,
                        error_message,
                        ..record(attempt, MiniBatchStatus::Succeeded, run_seconds)
                    };
                    self.state.mini_batch_finished(&record);
                    // Items run() left out: which ones is not known, so the whole input.
                    let failed_input =
                        (settings.keep_failed_rows && succeeded < total).then(|| FailedInput {
                            kind: mb.kind,
                            rows: mb.data.clone(),
                        });
                    return Ok(CompletedMiniBatch {
                        id: mb.id,
                        index: dispatched.index,
                        lineage: mb.lineage.clone(),
                        result: ret.result,
                        returned: ret.returned,
                        record,
                        fingerprint: dispatched.fingerprint,
                        source: dispatched.source,
                        failed_input,
                    });
                }
                Err(e) => {
                    let message = e.message(&id_text);
                    self.state
                        .try_failed(mb.id, attempt, &self.slot.agent_name, &message);
                    if !errors.iter().any(|(_, m)| *m == message) {
                        errors.push((attempt, message.clone()));
                    }
                    last_error = Some(e);
                }
            }
        }
        let error = last_error.unwrap_or(RunError::Crashed {
            detail: "no try was made".into(),
        });
        let error_message = error.message(&id_text);
        let earlier_errors: Vec<(u32, String)> = errors
            .into_iter()
            .filter(|(_, m)| *m != error_message)
            .collect();
        if bisect::eligible(&settings, mb, &error) {
            let found = self.bisect(&dispatched, &error, attempt).await?;
            let elapsed = record(attempt, MiniBatchStatus::Succeeded, run_seconds);
            return Ok(self.bisected(&dispatched, found, elapsed, error, earlier_errors));
        }
        let record = MiniBatchRecord {
            earlier_errors,
            error_message,
            traceback: error.traceback().map(str::to_string),
            ..record(attempt, error.status(), run_seconds)
        };
        self.state.mini_batch_finished(&record);
        Ok(CompletedMiniBatch {
            id: mb.id,
            index: dispatched.index,
            lineage: mb.lineage.clone(),
            result: None,
            returned: 0,
            record,
            fingerprint: dispatched.fingerprint,
            source: dispatched.source,
            failed_input: settings.keep_failed_rows.then(|| FailedInput {
                kind: mb.kind,
                rows: mb.data.clone(),
            }),
        })
    }

    /// Bisects `dispatched`, which failed its `tries` tries with `error`: splits it in halves
    /// and runs each half once, splitting every failing half again, until the failing items
    /// stand alone (or the call budget is spent, see [`bisect::Bisection`]).
    async fn bisect(
        &mut self,
        dispatched: &Dispatched,
        error: &RunError,
        tries: u32,
    ) -> Result<bisect::Found> {
        let settings = self.state.settings().clone();
        let mb = &dispatched.mini_batch;
        let mut bisection = bisect::Bisection::new(mb, error.clone(), &settings);
        let mut attempt = tries;
        while let Some(piece) = bisection.next_piece() {
            attempt += 1;
            let sub = bisect::sub_mini_batch(mb, &piece)?;
            let context = MiniBatchContext {
                minibatch_index: dispatched.index,
                attempt,
                input_name: mb.lineage.input.to_string(),
            };
            let (outcome, _) = self.call(&sub, &context, true).await?;
            if let Err(e) = &outcome {
                self.state.try_failed(
                    sub.id,
                    attempt,
                    &self.slot.agent_name,
                    &format!("(bisection) {}", e.message(&sub.id.to_string())),
                );
            }
            bisection.record(piece, outcome);
        }
        Ok(bisection.finish())
    }

    /// The completed mini-batch of a bisected one: the good parts' results in row order, the
    /// isolated items as its failed items, and its record (see `docs/design/mini-batches.md`).
    fn bisected(
        &self,
        dispatched: &Dispatched,
        found: bisect::Found,
        base: MiniBatchRecord,
        error: RunError,
        earlier_errors: Vec<(u32, String)>,
    ) -> CompletedMiniBatch {
        let mb = &dispatched.mini_batch;
        let id_text = mb.id.to_string();
        let calls = found.calls;
        let tries = base.tries + calls;
        let (result, returned, succeeded, problem) = match found.result(&id_text) {
            Ok((result, returned, succeeded)) => (result, returned, succeeded, None),
            Err(e) => (None, 0, 0, Some(e)),
        };
        let failed_input = self
            .state
            .settings()
            .keep_failed_rows
            .then(|| found.failed_input(mb, problem.is_some()))
            .flatten();
        let mut record = MiniBatchRecord {
            tries,
            succeeded_items: succeeded,
            failed_items: base.total_items - succeeded,
            elapsed_seconds: base.start_time.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            bisection_calls: calls,
            earlier_errors,
            ..base
        };
        match problem {
            Some(problem) => {
                // The parts' results could not be put together: nothing of it is committed.
                record.status = MiniBatchStatus::BadResult;
                record.error_message = format!(
                    "{problem} (after bisection of a mini batch that failed with: {})",
                    error.message(&id_text)
                );
                record.succeeded_items = 0;
                record.failed_items = record.total_items;
            }
            None if found.isolated.is_empty() => {
                // Every part ran when run alone: the failure needed the whole mini-batch.
                record.status = MiniBatchStatus::Succeeded;
                record.error_message = format!(
                    "succeeded after bisection ({calls} run() calls): every part ran alone; \
                     the whole mini batch failed with: {}",
                    error.message(&id_text)
                );
            }
            None => {
                record.status = error.status();
                record.error_message = error.message(&id_text);
                record.traceback = error.traceback().map(str::to_string);
                record.isolated = found.isolated;
            }
        }
        self.state.mini_batch_finished(&record);
        CompletedMiniBatch {
            id: mb.id,
            index: dispatched.index,
            lineage: mb.lineage.clone(),
            result: if record.succeeded_items > 0 || record.succeeded() {
                result
            } else {
                None
            },
            returned,
            record,
            fingerprint: dispatched.fingerprint,
            source: dispatched.source,
            failed_input,
        }
    }

    async fn shutdown(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            if self.state.cancellation().is_cancelled() {
                // Aborted: don't wait for user code; dropping the worker stops it.
                return;
            }
            if let Err(e) = worker.shutdown().await {
                self.state
                    .observer()
                    .worker_event(&self.slot.agent_name, &format!("shutdown() failed: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_results_than_items_count_the_rest_as_failed_and_say_so() {
        let ret = |returned| RunReturn {
            returned,
            result: None,
        };
        assert_eq!(returned_items("0-1", &ret(10), 10), (10, String::new()));
        let (succeeded, message) = returned_items("0-1", &ret(7), 10);
        assert_eq!(succeeded, 7);
        assert!(
            message.starts_with("run() returned 7 results for 10 items: the 3 missing"),
            "{message}"
        );
        let (succeeded, message) = returned_items("0-1", &ret(12), 10);
        assert_eq!(succeeded, 10);
        assert!(message.contains("counted as 10 succeeded"), "{message}");
    }
}
