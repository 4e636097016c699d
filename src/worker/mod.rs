//! Workers: what runs the entry script.
//!
//! The engine talks to every kind of worker through one small async interface, [`Worker`],
//! created by a [`WorkerFactory`]. A worker is owned by one operator partition; when it times
//! out or dies the engine drops it (killing whatever is left of it) and asks the factory for a
//! replacement in the same [`WorkerSlot`].
//!
//! Two implementations:
//! - [`rust`]: in-process Rust entry scripts ([`EntryScript`]), registered by name in a
//!   [`ScriptRegistry`].
//! - [`python`]: a Python process per worker, speaking Arrow IPC over dedicated pipes.
//!
//! A cluster executor lends its workers to the tasks of a job through a [`pool::WorkerPool`]
//! (init() once per worker slot per executor per job); a local run does not use it.

pub mod pool;
pub mod python;
pub mod rust;

pub use rust::{EntryScript, RunOutput, ScriptRegistry};

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::batch::{MiniBatch, MiniBatchStatus};
use crate::config::{LoggingLevel, OutputFormat};
use crate::error::Result;

/// Schema metadata key on a run() result telling how it was returned (see [`ResultShape`]).
pub const RESULT_SHAPE_KEY: &str = "parallel_run.result_shape";

/// How run() returned its result; decides how the `txt` output writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultShape {
    /// A table (DataFrame, Arrow table): rows written space-separated.
    Table,
    /// A list/tuple/array: one column, each element written as one line.
    List,
    /// Already formatted text lines (one column `line`), written verbatim.
    Lines,
}

impl ResultShape {
    /// The metadata value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ResultShape::Table => "table",
            ResultShape::List => "list",
            ResultShape::Lines => "lines",
        }
    }

    /// Reads the shape from a result's schema metadata (tables when absent).
    pub fn of(batch: &RecordBatch) -> ResultShape {
        match batch
            .schema_ref()
            .metadata()
            .get(RESULT_SHAPE_KEY)
            .map(String::as_str)
        {
            Some("list") => ResultShape::List,
            Some("lines") => ResultShape::Lines,
            _ => ResultShape::Table,
        }
    }
}

/// Identity of a worker position: stable across replacements of the worker in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    /// Global worker index, 0-based (also the operator partition).
    pub index: usize,
    /// Node index (0 for local runs).
    pub node: usize,
    /// Agent name as in PRS: `process000`, `process001`, ...
    pub agent_name: String,
    /// How many workers were started in this slot before this one (0 for the first).
    pub generation: u32,
}

impl WorkerSlot {
    /// The slot for worker `index` on `node`, first generation.
    pub fn new(index: usize, node: usize) -> Self {
        WorkerSlot {
            index,
            node,
            agent_name: format!("process{index:03}"),
            generation: 0,
        }
    }
}

/// Job-wide facts a worker needs to start: paths, levels and user arguments.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    /// The job's output folder (`EntryScript().output_dir`, `AZUREML_BI_OUTPUT_PATH`).
    pub output_dir: PathBuf,
    /// The job's log folder (`<output>/logs`; a cluster executor's own folder, whose files
    /// it copies into the output's, see `crate::exec::logs`).
    pub log_dir: PathBuf,
    /// The node's folder in the log layout (`user/stdout/<node>/...`) and
    /// `EntryScript().node_id`: `None` names it after the slot's node index (`node000`); a
    /// cluster executor names it after itself.
    pub node: Option<String>,
    /// Parent folder of the per-worker working directories.
    pub work_dir: PathBuf,
    /// Python logging level.
    pub logging_level: LoggingLevel,
    /// Extra argv for the entry script (after the system's own flags).
    pub arguments: Vec<String>,
    /// The system's own flags (`--mini_batch_size`, `--error_threshold`, ...), passed first.
    pub system_arguments: Vec<String>,
    /// Set in every worker.
    pub environment_variables: BTreeMap<String, String>,
    /// Format of the append_row output (a worker may pre-format `txt` lines).
    pub output_format: OutputFormat,
    /// Whether results are kept at all (`summary_only` needs only the counts).
    pub keep_results: bool,
    /// Whether the job has tabular inputs: Python workers then import pyarrow (and pandas)
    /// before they report ready, so no run() pays for the import within its timeout. Without
    /// them (file datasets only) a worker needs pyarrow only to convert results for csv or
    /// parquet output, and nothing beyond the standard library otherwise.
    pub tabular_inputs: bool,
    /// The worker process's current directory: `source_directory` when given, else the job
    /// file's folder (as on Azure, where the code snapshot is the working directory); `None`:
    /// the engine's own. `EntryScript().working_dir` is a per-worker scratch folder under
    /// `work_dir` either way.
    pub current_dir: Option<PathBuf>,
}

/// Context of one run() call.
#[derive(Debug, Clone)]
pub struct MiniBatchContext {
    /// Position of the mini-batch in the job's dispatch order (`minibatch_index`).
    pub minibatch_index: u64,
    /// The try, from 1.
    pub attempt: u32,
    /// Name of the input the mini-batch came from.
    pub input_name: String,
}

/// Why a run() call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// The entry script raised; the worker is still usable.
    Exception {
        /// One-line message.
        message: String,
        /// Full traceback, when available.
        traceback: Option<String>,
    },
    /// run() took longer than run_invocation_timeout; the worker has been stopped.
    Timeout {
        /// The limit that was exceeded, in seconds.
        seconds: u64,
    },
    /// The worker died during the call (exit code, signal, broken pipe...).
    Crashed {
        /// What is known of the death, e.g. "exit code 3" or "killed by signal 9 (SIGKILL)".
        detail: String,
    },
    /// run() returned something that cannot be used (None, an unsupported type...).
    BadResult {
        /// What was wrong, naming the type.
        message: String,
    },
}

impl RunError {
    /// True when the worker cannot be used again and must be replaced.
    pub fn worker_lost(&self) -> bool {
        matches!(self, RunError::Timeout { .. } | RunError::Crashed { .. })
    }

    /// The mini-batch's status when this was its last try.
    pub fn status(&self) -> MiniBatchStatus {
        match self {
            RunError::Exception { .. } => MiniBatchStatus::RunException,
            RunError::Timeout { .. } => MiniBatchStatus::RunTimeout,
            RunError::Crashed { .. } => MiniBatchStatus::ProcessCrashed,
            RunError::BadResult { .. } => MiniBatchStatus::BadResult,
        }
    }

    /// A one-line message for the report.
    pub fn message(&self, mini_batch: &str) -> String {
        match self {
            RunError::Exception { message, .. } => message.clone(),
            RunError::Timeout { seconds } => {
                format!("mini batch {mini_batch} did not finish in {seconds} seconds")
            }
            RunError::Crashed { detail } => {
                format!("worker died while running mini batch {mini_batch}: {detail}")
            }
            RunError::BadResult { message } => message.clone(),
        }
    }

    /// The traceback, when there is one.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            RunError::Exception { traceback, .. } => traceback.as_deref(),
            _ => None,
        }
    }
}

/// A running worker. Owned by one operator partition at a time.
///
/// Dropping a worker must stop it (kill its process group, abandon its thread).
#[async_trait]
pub trait Worker: Send {
    /// Runs the entry script's `init()`. An error here is an init failure (not an item
    /// failure); the message carries the traceback.
    async fn init(&mut self) -> Result<()>;

    /// Runs `run(mini_batch)` once, giving up after `timeout`. On success returns the result
    /// (its rows are the succeeded items; metadata [`RESULT_SHAPE_KEY`] says how it was
    /// returned) or `None` when results are not kept (`summary_only`) together with the count
    /// of returned elements.
    async fn run(
        &mut self,
        mini_batch: &MiniBatch,
        context: &MiniBatchContext,
        timeout: Duration,
    ) -> std::result::Result<RunReturn, RunError>;

    /// Runs `shutdown()` (when the script has one) and stops the worker.
    async fn shutdown(&mut self) -> Result<()>;

    /// Whether the worker may still take mini-batches: false once it is known to be dead
    /// (its process exited). A cluster executor checks a worker it kept idle between tasks
    /// before lending it again ([`pool`]). The default: true.
    fn alive(&mut self) -> bool {
        true
    }
}

/// What a successful run() returned.
#[derive(Debug, Clone)]
pub struct RunReturn {
    /// Number of elements returned (rows of a table, elements of a list).
    pub returned: u64,
    /// The result rows, when kept.
    pub result: Option<RecordBatch>,
}

/// Starts workers for a job. Shared by all partitions of the operator.
#[async_trait]
pub trait WorkerFactory: Send + Sync + Debug {
    /// Starts a worker in `slot` (not yet initialised).
    async fn start(&self, slot: &WorkerSlot) -> Result<Box<dyn Worker>>;

    /// A short description for EXPLAIN and logs, e.g. `python:score.py`.
    fn describe(&self) -> String;

    /// Whether run() sees a file dataset's `size` and `modified` columns. A Python run() gets
    /// only the list of paths, so for it the listing skips the stat() of every file. The
    /// default (in-process Rust scripts get the whole batch) is true.
    fn file_metadata(&self) -> bool {
        true
    }

    /// Starts the first workers of `slots` now, before the job has planned its inputs, so
    /// their start-up (a Python interpreter importing pandas) and init() overlap that work;
    /// [`WorkerFactory::start`] then hands them out. A worker that fails to start here is
    /// started (and its error reported) by `start` as usual. The default does nothing.
    async fn prestart(&self, _slots: &[WorkerSlot]) {}

    /// Loads the entry script the way a worker does, without running init() or anything
    /// else (`parallel-run validate`): a Python worker imports it in the job's interpreter. An
    /// error names the file, the line and what is wrong. The default does nothing.
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// Shared handle to a factory.
pub type WorkerFactoryRef = Arc<dyn WorkerFactory>;
