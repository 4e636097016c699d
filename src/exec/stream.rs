//! One partition of the operator: owns one worker slot, pulls mini-batches from the shared
//! queue, runs them with retries and timeouts, and emits the results of succeeded
//! mini-batches only (rows of a failed try never leave this module).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::batch::MiniBatchRecord;
use crate::batch::{Lineage, MiniBatchId, MiniBatchStatus};
use crate::error::{PrsError, Result};
use crate::exec::dispatch::{Dispatched, SharedQueue};
use crate::exec::state::JobState;
use crate::worker::{MiniBatchContext, RunError, Worker, WorkerFactoryRef, WorkerSlot};

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

    /// Runs one mini-batch with up to `run_max_try` tries and returns it with its final
    /// status (an error only when the job was aborted meanwhile).
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
        while attempt < settings.run_max_try {
            attempt += 1;
            let context = MiniBatchContext {
                minibatch_index: dispatched.index,
                attempt,
                input_name: mb.lineage.input.to_string(),
            };
            let cancel = self.state.cancellation().clone();
            let state = self.state.clone();
            let worker = self.ensure_worker().await?;
            state.try_started();
            let t = Instant::now();
            let outcome = tokio::select! {
                _ = cancel.cancelled() => None,
                r = worker.run(mb, &context, settings.run_timeout) => Some(r),
            };
            run_seconds = t.elapsed().as_secs_f64();
            self.state.add_worker_time(t.elapsed());
            let Some(outcome) = outcome else {
                // Aborted mid-run: the worker may be busy with work nobody wants; stop it.
                self.worker = None;
                return Err(self.state.abort_error());
            };
            match outcome {
                Ok(ret) => {
                    let succeeded = ret.returned.min(total);
                    let error_message = if ret.returned > total {
                        let w = format!(
                            "run() returned {} elements for {} items; counted as {} succeeded",
                            ret.returned, total, total
                        );
                        tracing::warn!("mini batch {id_text}: {w}");
                        w
                    } else {
                        String::new()
                    };
                    let record = MiniBatchRecord {
                        id: mb.id,
                        index: dispatched.index,
                        lineage: mb.lineage.clone(),
                        partition_key_value: mb.partition_key_value.clone(),
                        tries: attempt,
                        process: self.slot.agent_name.clone(),
                        start_time,
                        total_items: total,
                        succeeded_items: succeeded,
                        failed_items: total - succeeded,
                        elapsed_seconds: t0.elapsed().as_secs_f64(),
                        run_seconds,
                        status: MiniBatchStatus::Succeeded,
                        error_message,
                        traceback: None,
                        earlier_errors: Vec::new(),
                    };
                    self.state.mini_batch_finished(&record);
                    return Ok(CompletedMiniBatch {
                        id: mb.id,
                        index: dispatched.index,
                        lineage: mb.lineage.clone(),
                        result: ret.result,
                        returned: ret.returned,
                        record,
                        fingerprint: dispatched.fingerprint,
                    });
                }
                Err(e) => {
                    let message = e.message(&id_text);
                    self.state
                        .try_failed(mb.id, attempt, &self.slot.agent_name, &message);
                    if !errors.iter().any(|(_, m)| *m == message) {
                        errors.push((attempt, message.clone()));
                    }
                    if e.worker_lost() {
                        // The worker was stopped (timeout) or died: a new one takes the slot.
                        self.worker = None;
                        self.slot.generation += 1;
                        self.state.observer().worker_event(
                            &self.slot.agent_name,
                            &format!("worker replaced: {message}"),
                        );
                    }
                    last_error = Some(e);
                }
            }
        }
        let error = last_error.unwrap_or(RunError::Crashed {
            detail: "no try was made".into(),
        });
        let error_message = error.message(&id_text);
        let record = MiniBatchRecord {
            id: mb.id,
            index: dispatched.index,
            lineage: mb.lineage.clone(),
            partition_key_value: mb.partition_key_value.clone(),
            tries: attempt,
            process: self.slot.agent_name.clone(),
            start_time,
            total_items: total,
            succeeded_items: 0,
            failed_items: total,
            elapsed_seconds: t0.elapsed().as_secs_f64(),
            run_seconds,
            status: error.status(),
            earlier_errors: errors
                .into_iter()
                .filter(|(_, m)| *m != error_message)
                .collect(),
            error_message,
            traceback: error.traceback().map(str::to_string),
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
        })
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
