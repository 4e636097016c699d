//! [`WorkerPool`]: a cluster executor's started and initialised workers, kept between the
//! tasks of one job, so that init() runs once per worker slot per executor per job (as in
//! PRS, where a worker process serves every mini-batch of its node), not once per task.
//!
//! The pool holds the workers of each job under a [`PoolKey`] (the Ballista job id and the
//! identity of the operator's spec: entry script, interpreter, environment...). A task's
//! operator gets a [`WorkerFactory`] from [`WorkerPool::factory`]: its `start` lends an idle
//! worker of the job (already initialised: its `init()` does nothing) or starts a new one,
//! and the worker's `shutdown()` at the end of the task gives it back, still initialised.
//! A worker is given back only when it is known to be sound: initialised, not lost (a
//! timeout or a crash), not interrupted mid-call (a cancelled task drops its workers, which
//! kills them), so an aborted, failed or doubtful worker is never lent again; and one that
//! died while idle ([`Worker::alive`]) is dropped instead of lent.
//!
//! The pool holds at most `limit` started workers (the executor's `--processes`): to start a
//! worker beyond it, idle workers of other jobs are shut down first (when every worker is
//! busy the new one starts anyway: the executor's slots already bound the tasks it runs).
//! The workers of a job are shut down (the entry script's `shutdown()`, as at the end of a
//! local run) when the job is over: [`WorkerPool::end_job`] (the executor learned from the
//! scheduler that the job ended), or when none of its workers was lent or given back for
//! `idle_timeout`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::batch::MiniBatch;
use crate::error::Result;
use crate::worker::{
    MiniBatchContext, RunError, RunReturn, Worker, WorkerFactory, WorkerFactoryRef, WorkerSlot,
};

/// How long the pool waits for a worker's `shutdown()` before it kills the worker.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

/// Which workers may serve a task: those of the same cluster job running the same spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The cluster's job id.
    pub job: String,
    /// The identity of the operator's spec (a hash of its bytes).
    pub spec: u64,
}

/// An executor's pool of initialised workers (see the module documentation). Cloning shares
/// the pool.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<PoolKey, JobWorkers>,
    /// Workers started and not stopped: idle ones and lent ones.
    started: usize,
}

/// The workers of one key.
struct JobWorkers {
    factory: WorkerFactoryRef,
    idle: Vec<(WorkerSlot, Box<dyn Worker>)>,
    /// Workers lent to tasks now.
    lent: usize,
    /// The last time a worker was lent, given back or lost.
    since: Instant,
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("WorkerPool")
            .field("limit", &self.inner.limit)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("jobs", &state.jobs.len())
            .field("started", &state.started)
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WorkerPool {
    /// A pool of at most `limit` started workers, shutting down a job's workers after
    /// `idle_timeout` without a task. Within a Tokio runtime it watches the idle time itself
    /// (until the pool is dropped); elsewhere call [`WorkerPool::reap_idle`].
    pub fn new(limit: usize, idle_timeout: Duration) -> Self {
        let pool = WorkerPool {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                idle_timeout,
                state: Mutex::new(State::default()),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool.inner);
            let every =
                (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            runtime.spawn(reaper(weak, every));
        }
        pool
    }

    /// The factory of the workers of `key`: lends the job's idle workers and starts new ones
    /// with the job's own factory, made by `make` when the pool has none for `key` yet.
    pub fn factory(
        &self,
        key: PoolKey,
        make: impl FnOnce() -> Result<WorkerFactoryRef>,
    ) -> Result<WorkerFactoryRef> {
        let known = self.inner.lock().jobs.get(&key).map(|j| j.factory.clone());
        let inner = match known {
            Some(factory) => factory,
            None => {
                // Made outside the lock: resolving an interpreter may build an environment.
                let made = make()?;
                let mut state = self.inner.lock();
                state
                    .jobs
                    .entry(key.clone())
                    .or_insert_with(|| JobWorkers::new(made))
                    .factory
                    .clone()
            }
        };
        Ok(Arc::new(PooledFactory {
            pool: self.inner.clone(),
            key,
            inner,
        }))
    }

    /// The jobs that have no worker lent to a task now (those whose end is worth checking).
    pub fn idle_jobs(&self) -> Vec<String> {
        let state = self.inner.lock();
        let mut jobs: Vec<String> = state
            .jobs
            .iter()
            .filter(|(_, workers)| workers.lent == 0)
            .map(|(key, _)| key.job.clone())
            .collect();
        jobs.sort();
        jobs.dedup();
        jobs
    }

    /// The job `job` is over: its idle workers are shut down now, and those still lent when
    /// they are given back.
    pub fn end_job(&self, job: &str) {
        let stopping = {
            let mut state = self.inner.lock();
            let keys: Vec<PoolKey> = state
                .jobs
                .keys()
                .filter(|k| k.job == job)
                .cloned()
                .collect();
            let mut stopping = Vec::new();
            for key in keys {
                if let Some(workers) = state.jobs.remove(&key) {
                    stopping.extend(workers.idle);
                }
            }
            state.started = state.started.saturating_sub(stopping.len());
            stopping
        };
        if !stopping.is_empty() {
            tracing::info!(
                job,
                workers = stopping.len(),
                "job over: stopping its workers"
            );
        }
        stop_all(stopping);
    }

    /// Shuts down the workers of the jobs idle for the pool's idle timeout (done every
    /// moment by the pool itself within a Tokio runtime). Returns how many were stopped.
    pub fn reap_idle(&self) -> usize {
        reap(&self.inner)
    }

    /// Workers started and not stopped (idle or lent).
    pub fn started(&self) -> usize {
        self.inner.lock().started
    }

    /// Idle workers of `job`.
    pub fn idle(&self, job: &str) -> usize {
        let state = self.inner.lock();
        state
            .jobs
            .iter()
            .filter(|(k, _)| k.job == job)
            .map(|(_, w)| w.idle.len())
            .sum()
    }
}

impl JobWorkers {
    fn new(factory: WorkerFactoryRef) -> Self {
        JobWorkers {
            factory,
            idle: Vec::new(),
            lent: 0,
            since: Instant::now(),
        }
    }
}

/// Removes the jobs idle for the timeout and stops their workers.
fn reap(inner: &Inner) -> usize {
    let stopping = {
        let mut state = inner.lock();
        let expired: Vec<PoolKey> = state
            .jobs
            .iter()
            .filter(|(_, w)| w.lent == 0 && w.since.elapsed() >= inner.idle_timeout)
            .map(|(k, _)| k.clone())
            .collect();
        let mut stopping = Vec::new();
        for key in expired {
            if let Some(workers) = state.jobs.remove(&key) {
                if !workers.idle.is_empty() {
                    tracing::info!(
                        job = %key.job,
                        workers = workers.idle.len(),
                        "no task of the job for {} s: stopping its workers",
                        inner.idle_timeout.as_secs()
                    );
                }
                stopping.extend(workers.idle);
            }
        }
        state.started = state.started.saturating_sub(stopping.len());
        stopping
    };
    let stopped = stopping.len();
    stop_all(stopping);
    stopped
}

async fn reaper(pool: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        reap(&inner);
    }
}

/// Runs each worker's `shutdown()` (bounded by [`SHUTDOWN_LIMIT`], then it is killed), in
/// the background when a Tokio runtime runs; dropped (killed) otherwise.
fn stop_all(workers: Vec<(WorkerSlot, Box<dyn Worker>)>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for (slot, worker) in workers {
        runtime.spawn(stop(slot, worker));
    }
}

async fn stop(slot: WorkerSlot, mut worker: Box<dyn Worker>) {
    match tokio::time::timeout(SHUTDOWN_LIMIT, worker.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(worker = %slot.agent_name, "shutdown() failed: {e}"),
        Err(_) => tracing::warn!(
            worker = %slot.agent_name,
            "shutdown() did not finish in {} s: the worker is killed",
            SHUTDOWN_LIMIT.as_secs()
        ),
    }
}

/// The factory a task's operator gets from the pool.
struct PooledFactory {
    pool: Arc<Inner>,
    key: PoolKey,
    inner: WorkerFactoryRef,
}

impl fmt::Debug for PooledFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledFactory")
            .field("key", &self.key)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl WorkerFactory for PooledFactory {
    async fn start(&self, slot: &WorkerSlot) -> Result<Box<dyn Worker>> {
        let (reused, evicted, dead) = {
            let mut state = self.pool.lock();
            let state = &mut *state;
            let workers = state
                .jobs
                .entry(self.key.clone())
                .or_insert_with(|| JobWorkers::new(self.inner.clone()));
            workers.since = Instant::now();
            // The worker that was in this slot before, else any idle one of the job; one
            // that died while idle is dropped.
            let mut dead = Vec::new();
            let idle = loop {
                let Some(i) = workers
                    .idle
                    .iter()
                    .position(|(s, _)| s.index == slot.index)
                    .or_else(|| workers.idle.len().checked_sub(1))
                else {
                    break None;
                };
                let (own_slot, mut worker) = workers.idle.swap_remove(i);
                if worker.alive() {
                    break Some((own_slot, worker));
                }
                dead.push((own_slot, worker));
            };
            workers.lent += 1;
            state.started = state.started.saturating_sub(dead.len());
            let mut evicted = Vec::new();
            if idle.is_none() {
                // Room for one more: idle workers of other jobs go first.
                while state.started >= self.pool.limit {
                    let other = state
                        .jobs
                        .iter_mut()
                        .find(|(k, w)| **k != self.key && !w.idle.is_empty())
                        .and_then(|(_, w)| w.idle.pop());
                    let Some(other) = other else { break };
                    state.started -= 1;
                    evicted.push(other);
                }
                state.started += 1;
            }
            (idle, evicted, dead)
        };
        for (own_slot, _) in &dead {
            tracing::warn!(
                worker = %own_slot.agent_name,
                job = %self.key.job,
                "a kept worker died while idle: a new one starts"
            );
        }
        drop(dead);
        stop_all(evicted);
        if let Some((own_slot, worker)) = reused {
            tracing::debug!(worker = %own_slot.agent_name, job = %self.key.job, "worker reused");
            return Ok(Box::new(PooledWorker::new(self, own_slot, worker, true)));
        }
        match self.inner.start(slot).await {
            Ok(worker) => Ok(Box::new(PooledWorker::new(
                self,
                slot.clone(),
                worker,
                false,
            ))),
            Err(e) => {
                release(&self.pool, &self.key);
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn file_metadata(&self) -> bool {
        self.inner.file_metadata()
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

/// A lent worker stopped or lost: one fewer started and lent.
fn release(pool: &Inner, key: &PoolKey) {
    let mut state = pool.lock();
    state.started = state.started.saturating_sub(1);
    if let Some(workers) = state.jobs.get_mut(key) {
        workers.lent = workers.lent.saturating_sub(1);
        workers.since = Instant::now();
    }
}

/// A worker lent to a task: given back to the pool by `shutdown()` when sound, killed when
/// dropped.
struct PooledWorker {
    worker: Option<Box<dyn Worker>>,
    /// The slot it was started in (its log files and working folder).
    slot: WorkerSlot,
    pool: Arc<Inner>,
    key: PoolKey,
    /// init() succeeded (now or for an earlier task).
    ready: bool,
    /// Lost by a call (timeout, crash): never given back.
    lost: bool,
    /// A call is under way, or was abandoned mid-way (its future dropped): in doubt.
    busy: bool,
}

impl PooledWorker {
    fn new(
        factory: &PooledFactory,
        slot: WorkerSlot,
        worker: Box<dyn Worker>,
        ready: bool,
    ) -> Self {
        PooledWorker {
            worker: Some(worker),
            slot,
            pool: factory.pool.clone(),
            key: factory.key.clone(),
            ready,
            lost: false,
            busy: false,
        }
    }

    fn worker(&mut self) -> Result<&mut Box<dyn Worker>> {
        self.worker
            .as_mut()
            .ok_or_else(|| crate::error::PrsError::Worker {
                worker: self.slot.agent_name.clone(),
                message: "the worker was given back to the pool".into(),
            })
    }
}

#[async_trait]
impl Worker for PooledWorker {
    async fn init(&mut self) -> Result<()> {
        if self.ready {
            return Ok(());
        }
        self.busy = true;
        self.worker()?.init().await?;
        self.busy = false;
        self.ready = true;
        Ok(())
    }

    async fn run(
        &mut self,
        mini_batch: &MiniBatch,
        context: &MiniBatchContext,
        timeout: Duration,
    ) -> std::result::Result<RunReturn, RunError> {
        self.busy = true;
        let worker = self.worker.as_mut().ok_or_else(|| RunError::Crashed {
            detail: "the worker was given back to the pool".into(),
        })?;
        let outcome = worker.run(mini_batch, context, timeout).await;
        self.busy = false;
        if outcome.as_ref().is_err_and(RunError::worker_lost) {
            self.lost = true;
        }
        outcome
    }

    fn alive(&mut self) -> bool {
        self.worker.as_mut().is_some_and(|w| w.alive())
    }

    /// Gives a sound worker back to the pool (its job's next task reuses it); stops any other.
    async fn shutdown(&mut self) -> Result<()> {
        let Some(mut worker) = self.worker.take() else {
            return Ok(());
        };
        if self.ready && !self.lost && !self.busy {
            let mut state = self.pool.lock();
            if let Some(workers) = state.jobs.get_mut(&self.key) {
                workers.lent = workers.lent.saturating_sub(1);
                workers.since = Instant::now();
                workers.idle.push((self.slot.clone(), worker));
                return Ok(());
            }
        }
        // Not to be lent again (or its job is over): stopped as a local run stops it.
        release(&self.pool, &self.key);
        worker.shutdown().await
    }
}

impl Drop for PooledWorker {
    fn drop(&mut self) {
        if self.worker.take().is_some() {
            // Dropping the worker stopped it (killed its process).
            release(&self.pool, &self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{ItemKind, Lineage, MiniBatchId, PartitionKeyValue};
    use crate::worker::rust::{RunOutput, RustWorkerFactory, ScriptError, WorkerInfo};
    use crate::worker::EntryScript;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts init(), run() and shutdown() calls; run() fails on a negative id, sleeps on 0.
    #[derive(Default)]
    struct Counts {
        init: AtomicUsize,
        run: AtomicUsize,
        shutdown: AtomicUsize,
    }

    struct Counting(Arc<Counts>);

    impl EntryScript for Counting {
        fn init(&mut self, _worker: &WorkerInfo) -> std::result::Result<(), ScriptError> {
            self.0.init.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn run(
            &mut self,
            mini_batch: &RecordBatch,
            _context: &MiniBatchContext,
        ) -> std::result::Result<RunOutput, ScriptError> {
            self.0.run.fetch_add(1, Ordering::SeqCst);
            let first = mini_batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map_or(1, |a| a.value(0));
            if first == 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
            if first < 0 {
                return Err("negative".into());
            }
            Ok(RunOutput::Rows(mini_batch.clone()))
        }

        fn shutdown(&mut self) -> std::result::Result<(), ScriptError> {
            self.0.shutdown.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn factory(counts: &Arc<Counts>) -> WorkerFactoryRef {
        let counts = counts.clone();
        let constructor: crate::worker::rust::ScriptConstructor =
            Arc::new(move || Box::new(Counting(counts.clone())) as Box<dyn EntryScript>);
        Arc::new(RustWorkerFactory::new("counting", constructor, true))
    }

    fn key(job: &str) -> PoolKey {
        PoolKey {
            job: job.to_string(),
            spec: 7,
        }
    }

    fn mini_batch(first: i64) -> MiniBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let data =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![first]))]).unwrap();
        MiniBatch {
            id: MiniBatchId::new(0, 0),
            kind: ItemKind::Rows,
            data,
            lineage: Lineage {
                input: "t".into(),
                rows: 0..1,
            },
            partition_key_value: PartitionKeyValue::default(),
        }
    }

    fn context() -> MiniBatchContext {
        MiniBatchContext {
            minibatch_index: 0,
            attempt: 1,
            input_name: "t".into(),
        }
    }

    /// One task's life of a worker: start, init, run `first`, end of task.
    async fn task(
        factory: &WorkerFactoryRef,
        first: i64,
        timeout: Duration,
    ) -> std::result::Result<RunReturn, RunError> {
        let mut worker = factory.start(&WorkerSlot::new(0, 0)).await.unwrap();
        worker.init().await.unwrap();
        let outcome = worker.run(&mini_batch(first), &context(), timeout).await;
        if !outcome.as_ref().is_err_and(RunError::worker_lost) {
            worker.shutdown().await.unwrap();
        }
        outcome
    }

    #[tokio::test]
    async fn a_job_s_tasks_share_one_initialised_worker() {
        let counts = Arc::new(Counts::default());
        let pool = WorkerPool::new(1, Duration::from_secs(600));
        let long = Duration::from_secs(60);
        for _ in 0..3 {
            let f = pool.factory(key("a"), || Ok(factory(&counts))).unwrap();
            task(&f, 1, long).await.unwrap();
        }
        assert_eq!(counts.init.load(Ordering::SeqCst), 1, "init() once");
        assert_eq!(counts.run.load(Ordering::SeqCst), 3);
        assert_eq!(counts.shutdown.load(Ordering::SeqCst), 0, "kept");
        assert_eq!((pool.started(), pool.idle("a")), (1, 1));
        assert_eq!(pool.idle_jobs(), ["a"]);

        // An exception in run() leaves the worker usable, as in a local run.
        let f = pool.factory(key("a"), || Ok(factory(&counts))).unwrap();
        assert!(task(&f, -1, long).await.is_err());
        assert_eq!((pool.started(), pool.idle("a")), (1, 1));
        assert_eq!(counts.init.load(Ordering::SeqCst), 1);

        // Another job needs its own worker: the idle one of job a is shut down for it (the
        // limit is 1), and a's next task initialises a new one.
        let f = pool.factory(key("b"), || Ok(factory(&counts))).unwrap();
        task(&f, 1, long).await.unwrap();
        assert_eq!(counts.init.load(Ordering::SeqCst), 2);
        assert_eq!((pool.started(), pool.idle("a"), pool.idle("b")), (1, 0, 1));
        wait_until(|| counts.shutdown.load(Ordering::SeqCst) == 1).await;

        // The job ends: its workers' shutdown() runs.
        pool.end_job("b");
        assert_eq!(pool.started(), 0);
        wait_until(|| counts.shutdown.load(Ordering::SeqCst) == 2).await;
        assert!(!pool.idle_jobs().contains(&"b".to_string()));
    }

    #[tokio::test]
    async fn a_timed_out_dropped_or_failed_worker_is_never_lent_again() {
        let counts = Arc::new(Counts::default());
        let pool = WorkerPool::new(2, Duration::from_secs(600));
        let f = pool.factory(key("a"), || Ok(factory(&counts))).unwrap();
        // run() outlasts its timeout: the worker is lost and not given back.
        let outcome = task(&f, 0, Duration::from_millis(100)).await;
        assert!(
            matches!(outcome, Err(RunError::Timeout { .. })),
            "{outcome:?}"
        );
        assert_eq!((pool.started(), pool.idle("a")), (0, 0));

        // A task dropped mid-call (cancelled): the worker is in doubt.
        let mut worker = f.start(&WorkerSlot::new(0, 0)).await.unwrap();
        worker.init().await.unwrap();
        let batch = mini_batch(0);
        let ctx = context();
        let run = worker.run(&batch, &ctx, Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_millis(50), run)
            .await
            .is_err());
        worker.shutdown().await.unwrap();
        assert_eq!(
            (pool.started(), pool.idle("a")),
            (0, 0),
            "stopped, not kept"
        );

        // A worker never initialised is not kept either.
        let mut worker = f.start(&WorkerSlot::new(0, 0)).await.unwrap();
        worker.shutdown().await.unwrap();
        assert_eq!((pool.started(), pool.idle("a")), (0, 0));

        // Dropped without shutdown (an aborted task): stopped and counted out.
        let worker = f.start(&WorkerSlot::new(0, 0)).await.unwrap();
        assert_eq!(pool.started(), 1);
        drop(worker);
        assert_eq!(pool.started(), 0);
    }

    #[tokio::test]
    async fn an_idle_job_s_workers_stop_after_the_idle_timeout() {
        let counts = Arc::new(Counts::default());
        let pool = WorkerPool::new(2, Duration::from_millis(300));
        let f = pool.factory(key("a"), || Ok(factory(&counts))).unwrap();
        task(&f, 1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(pool.idle("a"), 1);
        // The pool's own watch stops it (bounded wait).
        wait_until(|| counts.shutdown.load(Ordering::SeqCst) == 1).await;
        assert_eq!((pool.started(), pool.idle("a")), (0, 0));
        assert!(pool.idle_jobs().is_empty());
    }

    async fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
