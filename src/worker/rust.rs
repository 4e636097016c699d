//! In-process Rust entry scripts.
//!
//! A Rust entry script implements [`EntryScript`] (init / run / shutdown, like a Python one)
//! and is registered by name in a [`ScriptRegistry`]; a job names it as `rust:NAME`.
//!
//! Timeouts: run() executes on a blocking thread. When it exceeds `run_invocation_timeout`
//! the mini-batch fails with a timeout and the worker is replaced by a fresh instance (which
//! runs init() again), exactly as a Python worker would be. Rust code cannot be interrupted
//! from outside, so the timed-out call keeps its thread until it returns on its own; its
//! result is then discarded. Scripts that may hang should check for that themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use async_trait::async_trait;

use crate::batch::MiniBatch;
use crate::error::{PrsError, Result};
use crate::worker::{
    MiniBatchContext, ResultShape, RunError, RunReturn, Worker, WorkerFactory, WorkerSlot,
    RESULT_SHAPE_KEY,
};

/// Boxed error type returned by entry scripts.
pub type ScriptError = Box<dyn std::error::Error + Send + Sync>;

/// What an entry script's run() returns.
#[derive(Debug, Clone)]
pub enum RunOutput {
    /// Table rows (like a pandas DataFrame): each row is one succeeded item.
    Rows(RecordBatch),
    /// A list of values (like a Python list): each element is one succeeded item and one line
    /// of `txt` output.
    List(ArrayRef),
}

impl RunOutput {
    /// Converts the output to a record batch tagged with its [`ResultShape`].
    pub fn into_batch(self) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let (batch, shape) = match self {
            RunOutput::Rows(b) => (b, ResultShape::Table),
            RunOutput::List(a) => {
                let schema = Schema::new(vec![Field::new("result", a.data_type().clone(), true)]);
                (
                    RecordBatch::try_new(Arc::new(schema), vec![a])?,
                    ResultShape::List,
                )
            }
        };
        let mut metadata = batch.schema_ref().metadata().clone();
        metadata.insert(RESULT_SHAPE_KEY.to_string(), shape.as_str().to_string());
        let schema = Arc::new(Schema::new_with_metadata(
            batch.schema_ref().fields().clone(),
            metadata,
        ));
        batch.with_schema(schema)
    }
}

/// Facts about the worker an entry script runs in.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker slot.
    pub slot: WorkerSlot,
    /// The job's extra `arguments` (what a Python script would find in argv).
    pub arguments: Vec<String>,
}

/// A Rust entry script: the same life cycle as a Python one.
pub trait EntryScript: Send + 'static {
    /// Called once per worker before any run().
    fn init(&mut self, _worker: &WorkerInfo) -> std::result::Result<(), ScriptError> {
        Ok(())
    }

    /// Processes one mini-batch (rows, or for file datasets a batch with a `path` column).
    fn run(
        &mut self,
        mini_batch: &RecordBatch,
        context: &MiniBatchContext,
    ) -> std::result::Result<RunOutput, ScriptError>;

    /// Called once when no work is left.
    fn shutdown(&mut self) -> std::result::Result<(), ScriptError> {
        Ok(())
    }
}

/// Creates a fresh entry-script instance (one per worker, and one per replacement).
pub type ScriptConstructor = Arc<dyn Fn() -> Box<dyn EntryScript> + Send + Sync>;

/// Rust entry scripts known by name (`rust:NAME` in a job). Not global: a registry is built by
/// whoever starts the job (the CLI binary, a test, a library user) and passed in.
#[derive(Clone, Default)]
pub struct ScriptRegistry {
    scripts: BTreeMap<String, ScriptConstructor>,
}

impl fmt::Debug for ScriptRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.scripts.keys()).finish()
    }
}

impl ScriptRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `constructor` under `name`.
    pub fn register<F, S>(&mut self, name: impl Into<String>, constructor: F) -> &mut Self
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: EntryScript,
    {
        self.scripts.insert(
            name.into(),
            Arc::new(move || Box::new(constructor()) as Box<dyn EntryScript>),
        );
        self
    }

    /// Registers an already boxed `constructor` under `name` (replacing one of that name).
    pub fn insert(&mut self, name: impl Into<String>, constructor: ScriptConstructor) -> &mut Self {
        self.scripts.insert(name.into(), constructor);
        self
    }

    /// The constructor registered under `name`.
    pub fn get(&self, name: &str) -> Option<ScriptConstructor> {
        self.scripts.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.scripts.keys().cloned().collect()
    }
}

/// Starts in-process workers for one Rust entry script.
#[derive(Clone)]
pub struct RustWorkerFactory {
    name: String,
    constructor: ScriptConstructor,
    keep_results: bool,
    arguments: Vec<String>,
}

impl fmt::Debug for RustWorkerFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RustWorkerFactory({})", self.name)
    }
}

impl RustWorkerFactory {
    /// A factory for the script `name` built by `constructor`.
    pub fn new(
        name: impl Into<String>,
        constructor: ScriptConstructor,
        keep_results: bool,
    ) -> Self {
        RustWorkerFactory {
            name: name.into(),
            constructor,
            keep_results,
            arguments: Vec::new(),
        }
    }

    /// Passes the job's `arguments` to the scripts (see [`WorkerInfo::arguments`]).
    pub fn with_arguments(mut self, arguments: Vec<String>) -> Self {
        self.arguments = arguments;
        self
    }
}

#[async_trait]
impl WorkerFactory for RustWorkerFactory {
    async fn start(&self, slot: &WorkerSlot) -> Result<Box<dyn Worker>> {
        Ok(Box::new(RustWorker {
            script: Some((self.constructor)()),
            info: WorkerInfo {
                slot: slot.clone(),
                arguments: self.arguments.clone(),
            },
            keep_results: self.keep_results,
        }))
    }

    fn describe(&self) -> String {
        format!("rust:{}", self.name)
    }
}

/// One in-process worker: an entry-script instance run on blocking threads.
struct RustWorker {
    /// `None` while a call is in flight, or for good after a timeout.
    script: Option<Box<dyn EntryScript>>,
    info: WorkerInfo,
    keep_results: bool,
}

impl RustWorker {
    fn take_script(&mut self) -> std::result::Result<Box<dyn EntryScript>, RunError> {
        self.script.take().ok_or_else(|| RunError::Crashed {
            detail: "the worker was lost by an earlier timeout".into(),
        })
    }
}

#[async_trait]
impl Worker for RustWorker {
    async fn init(&mut self) -> Result<()> {
        let mut script = self.script.take().ok_or_else(|| PrsError::Worker {
            worker: self.info.slot.agent_name.clone(),
            message: "init() called on a lost worker".into(),
        })?;
        let info = self.info.clone();
        let (script, outcome) = tokio::task::spawn_blocking(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script.init(&info)));
            (script, r)
        })
        .await
        .map_err(|e| PrsError::Worker {
            worker: self.info.slot.agent_name.clone(),
            message: format!("init() thread failed: {e}"),
        })?;
        self.script = Some(script);
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PrsError::Worker {
                worker: self.info.slot.agent_name.clone(),
                message: format!("init() failed: {e}"),
            }),
            Err(panic) => Err(PrsError::Worker {
                worker: self.info.slot.agent_name.clone(),
                message: format!("init() panicked: {}", panic_message(&panic)),
            }),
        }
    }

    async fn run(
        &mut self,
        mini_batch: &MiniBatch,
        context: &MiniBatchContext,
        timeout: Duration,
    ) -> std::result::Result<RunReturn, RunError> {
        let mut script = self.take_script()?;
        let data = mini_batch.data.clone();
        let ctx = context.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script.run(&data, &ctx)));
            (script, r)
        });
        let (script, outcome) = match tokio::time::timeout(timeout, handle).await {
            // The thread keeps running until run() returns; its result is dropped with it.
            Err(_) => {
                return Err(RunError::Timeout {
                    seconds: timeout.as_secs(),
                })
            }
            Ok(Err(join)) => {
                return Err(RunError::Crashed {
                    detail: format!("run() thread failed: {join}"),
                })
            }
            Ok(Ok(pair)) => pair,
        };
        self.script = Some(script);
        let output = match outcome {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(RunError::Exception {
                    message: e.to_string(),
                    traceback: None,
                })
            }
            Err(panic) => {
                // A panic may leave the instance in any state: replace it like a crashed process.
                self.script = None;
                return Err(RunError::Crashed {
                    detail: format!("run() panicked: {}", panic_message(&panic)),
                });
            }
        };
        let batch = output.into_batch().map_err(|e| RunError::BadResult {
            message: format!("run() returned an unusable result: {e}"),
        })?;
        let returned = batch.num_rows() as u64;
        Ok(RunReturn {
            returned,
            result: self.keep_results.then_some(batch),
        })
    }

    async fn shutdown(&mut self) -> Result<()> {
        let Some(mut script) = self.script.take() else {
            return Ok(());
        };
        let agent = self.info.slot.agent_name.clone();
        let r = tokio::task::spawn_blocking(move || script.shutdown())
            .await
            .map_err(|e| PrsError::Worker {
                worker: agent.clone(),
                message: format!("shutdown() thread failed: {e}"),
            })?;
        r.map_err(|e| PrsError::Worker {
            worker: agent,
            message: format!("shutdown() failed: {e}"),
        })
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
