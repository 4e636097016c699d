//! Python workers: one process per worker slot, Arrow IPC over two dedicated pipes.
//!
//! A [`PythonWorkerFactory`] starts, for each [`WorkerSlot`], the interpreter on the bootstrap
//! shipped inside this binary (`bootstrap/prs_worker.py`, written to
//! `<work_dir>/.bootstrap/` when a worker starts, so planning alone creates no folder):
//!
//! ```text
//! <python> -u <work_dir>/.bootstrap/prs_worker.py <system arguments...> <user arguments...>
//! ```
//!
//! The entry script sees `sys.argv = [<entry script>, <system arguments...>, <user
//! arguments...>]`, so `argparse.ArgumentParser().parse_known_args()` finds the user's
//! arguments. Everything else the bootstrap needs travels in the environment variable
//! `PARALLEL_RUN_WORKER` (JSON: entry script, folders, agent name, logging level, ...).
//!
//! # The process
//! - Its own process group; on a timeout, a protocol error, a drop or a failed shutdown the
//!   whole group gets SIGKILL (so whatever the script started dies with it), and the leader is
//!   reaped. A worker also notices its engine dying (parent pid change) and kills its group.
//! - Current directory [`WorkerEnv::current_dir`] (`source_directory`, else the job file's
//!   folder, else the engine's), so relative paths in `arguments` mean what the user reads;
//!   `EntryScript().working_dir` is a scratch folder `<work_dir>/<agent_name>/` of its own;
//!   `environment_variables` set;
//!   `AZUREML_BI_OUTPUT_PATH` = the job's output folder; on GPU machines `CUDA_VISIBLE_DEVICES`
//!   = one GPU per slot (`slot.index % GPUs`, so a replacement keeps its slot's GPU), unless
//!   the job sets it itself.
//! - stdin is `/dev/null`; stdout and stderr are appended to
//!   `<log_dir>/user/stdout/<node>/<agent>.stdout.txt` and `.../stderr/...stderr.txt`, where
//!   `<node>` is [`node_name`] (`node000` for node 0). The Python logging root goes to stderr
//!   at `logging_level`; `EntryScript().logger` writes to
//!   `<log_dir>/user/entry_script_log/<node>/<agent>.log.txt` (see [`user_log_paths`]).
//! - `from azureml_user.parallel_run import EntryScript` and `from parallel_run import
//!   EntryScript` both work: the bootstrap folder is on the worker's `sys.path`, after
//!   `source_directory` and the entry script's folder (so the user's own modules win).
//!
//! # The protocol
//! The child reads fd 3 and writes fd 4 (pipes installed between fork and exec); stdin/stdout
//! are never used, so nothing the script prints can corrupt it. Every message is one frame:
//!
//! ```text
//! u32 LE header length | u64 LE payload length | header (UTF-8 JSON, with "type") | payload
//! ```
//!
//! The payload, when there is one, is one Arrow IPC stream (or, for the `text` result shape,
//! UTF-8 text). Engine → worker:
//! - `RUN` `{id, minibatch_index, attempt, input_name, partition_key_value, kind: rows|files,
//!   keep_results, output_format: txt|csv|parquet}` + the mini-batch's rows (only those: a
//!   [`MiniBatch`](crate::batch::MiniBatch)'s data is compact); for `files` the header carries
//!   `paths` instead and there is no payload. run() receives a pandas DataFrame (`rows`,
//!   default), a `pyarrow.Table` (`rows` with [`MiniBatchFormat::PyArrow`]) or the list of
//!   `path` strings (`files`); a run() with two positional parameters also gets a context with
//!   `partition_key_value`, `minibatch_index`, `mini_batch_id`, `input_name`, `attempt`.
//! - `SHUTDOWN` `{}`: call shutdown() if the script has one, answer, exit 0.
//!
//! Worker → engine:
//! - `READY` `{pid, python}` once the packages the job needs are imported, the script is
//!   imported and init() returned. The worker starts all that as soon as it is spawned;
//!   [`Worker::init`] waits for it. The packages (the worker config's `tabular`,
//!   `keep_results` and `output_format` say which): pyarrow, and pandas for the pandas format,
//!   when the job has tabular inputs ([`WorkerEnv::tabular_inputs`]); only pyarrow for a job of
//!   file datasets whose list results are converted (csv or parquet output); nothing beyond the
//!   standard library for file datasets with txt output or summary_only (paths travel in the
//!   header and txt results as text).
//! - `INIT_ERROR` `{stage: packages|import|init, message, traceback, fatal}`; the worker then
//!   exits. `packages` means pyarrow (or pandas) is missing, and the message says how to
//!   install it. An `import` message starts with the file and line (`/x/score.py, line 3:
//!   SyntaxError: ...`). `fatal` (missing packages, a SyntaxError or ImportError at import, no
//!   run()): every try would fail the same way, so the engine fails the job at once instead of
//!   applying PRS's `3 x process_count_per_node` rule for init() failures.
//!
//! With `check_only` in the worker config (`parallel-run validate`) the worker imports the
//! packages and the script, answers `READY` without running init(), and exits.
//! - `STARTED` `{}`: the RUN's mini-batch is read and decoded, run() is called now; `RAN` `{}`:
//!   run() returned and its result is being converted (sent only when `keep_results`). The
//!   engine applies `run_invocation_timeout` between the two (or until the `ERROR` or `RESULT`
//!   that ends run() when no `RAN` comes), so run() alone is timed, as in PRS; sending and
//!   decoding the mini-batch (until `STARTED`) and converting the result (from `RAN`) are
//!   bounded by [`STALL_LIMIT`] instead, after which the worker is killed as stalled (a
//!   [`RunError::Crashed`](crate::worker::RunError::Crashed)). Both are prepared frames of
//!   about 30 bytes, one write each.
//! - `RESULT` `{returned, shape: table|list|text}` + the result when `keep_results`: a DataFrame
//!   as its columns (index dropped), a list/tuple/array/Series as one column `result`, a pyarrow
//!   Table/RecordBatch as it is; for `txt` output lists and DataFrames arrive pre-formatted
//!   exactly as PRS writes them (`str(x)` per element; `to_csv(sep=" ", header=False,
//!   index=False)`) with shape `text` and the UTF-8 text as the payload, which the engine turns
//!   into one Utf8 column `line` written verbatim (shape `lines`). The schema
//!   metadata [`RESULT_SHAPE_KEY`](crate::worker::RESULT_SHAPE_KEY) carries the shape. Without
//!   `keep_results` (summary_only) only `returned` is sent.
//! - `ERROR` `{kind: exception|bad_result, message, traceback}`: run() raised (one-line message
//!   `ValueError: bad id 7`, traceback also written to stderr) or returned None/another type;
//!   the worker stays usable.
//! - `SHUTDOWN_DONE` `{error?, traceback?}`.
//!
//! A closed pipe or the process's end at any time is a crash ([`RunError::Crashed`](crate::worker::RunError::Crashed) with
//! `exit code N` or `killed by signal N (NAME)`); the engine replaces the worker.
//!
//! # Interpreters
//! [`resolve_interpreter`] turns a job's `environment` into an interpreter path, building a
//! cached virtual environment for a `pip` list (see [`mod@env`]).

pub mod env;
mod process;
mod protocol;
mod worker;

#[cfg(test)]
pub(crate) mod tests;

pub use env::{cache_dir, resolve_interpreter};
pub use process::{node_name, user_log_paths, user_log_paths_in, UserLogPaths};

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use tokio::net::unix::pipe;

use crate::error::{PrsError, Result};
use crate::worker::{Worker, WorkerEnv, WorkerFactory, WorkerSlot};

use self::process::{install_child_fds, open_append, CHILD_READ_FD, CHILD_WRITE_FD};
use self::worker::PythonWorker;

/// The bootstrap files shipped inside the binary: (path under the bootstrap folder, content).
const BOOTSTRAP_FILES: &[(&str, &str)] = &[
    ("prs_worker.py", include_str!("bootstrap/prs_worker.py")),
    (
        "_prs_entry_script.py",
        include_str!("bootstrap/_prs_entry_script.py"),
    ),
    (
        "parallel_run/__init__.py",
        include_str!("bootstrap/parallel_run/__init__.py"),
    ),
    // Stand-ins for Azure modules, each put on the import path only when the real module is
    // not installed (prs_worker.py decides per module).
    (
        "standins/azureml_user/azureml_user/__init__.py",
        include_str!("bootstrap/standins/azureml_user/azureml_user/__init__.py"),
    ),
    (
        "standins/azureml_user/azureml_user/parallel_run/__init__.py",
        include_str!("bootstrap/standins/azureml_user/azureml_user/parallel_run/__init__.py"),
    ),
    (
        "standins/azureml_core/azureml/__init__.py",
        include_str!("bootstrap/standins/azureml_core/azureml/__init__.py"),
    ),
    (
        "standins/azureml_core/azureml/core/__init__.py",
        include_str!("bootstrap/standins/azureml_core/azureml/core/__init__.py"),
    ),
    (
        "standins/azureml_core/azureml/core/model.py",
        include_str!("bootstrap/standins/azureml_core/azureml/core/model.py"),
    ),
    (
        "standins/azureml_core/azureml/core/run.py",
        include_str!("bootstrap/standins/azureml_core/azureml/core/run.py"),
    ),
];

/// Environment variable carrying the worker's settings (JSON) to the bootstrap.
const CONFIG_ENV: &str = "PARALLEL_RUN_WORKER";

/// How long the parts of a mini-batch's round trip that are not run() itself may go without
/// progress: sending the mini-batch and decoding it in the worker (until `STARTED`), and
/// converting and sending back run()'s result (from `RAN` until `RESULT`). Only run() counts
/// against `run_invocation_timeout`; a worker stalled this long elsewhere is killed and the
/// try fails like a crash. Generous: these steps take milliseconds for a mini-batch of
/// megabytes.
pub const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

pub use crate::config::MiniBatchFormat;

/// Everything needed to start Python workers for one job.
#[derive(Debug, Clone)]
pub struct PythonWorkerSpec {
    /// The interpreter (see [`resolve_interpreter`]).
    pub python: PathBuf,
    /// The entry script (made absolute against the current folder if relative).
    pub entry_script: PathBuf,
    /// Put first on the worker's `sys.path` (the entry script's folder follows it).
    pub source_directory: Option<PathBuf>,
    /// Job-wide worker facts: folders, logging level, arguments, variables, output.
    pub env: WorkerEnv,
    /// What run() receives for tabular mini-batches.
    pub mini_batch_format: MiniBatchFormat,
}

/// Starts Python worker processes for one entry script.
pub struct PythonWorkerFactory {
    spec: PythonWorkerSpec,
    bootstrap_dir: PathBuf,
    /// True once the bootstrap is written (by the first worker to start).
    bootstrapped: std::sync::Mutex<bool>,
    /// GPU ids to spread over the slots (empty without GPUs).
    gpus: Vec<String>,
    /// Workers started by [`WorkerFactory::prestart`], by slot index, until `start` takes them.
    warm: std::sync::Mutex<std::collections::HashMap<usize, PythonWorker>>,
    /// [`STALL_LIMIT`], shorter in tests.
    stall_limit: std::time::Duration,
}

impl std::fmt::Debug for PythonWorkerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let warm = self.warm.lock().map(|w| w.len()).unwrap_or(0);
        f.debug_struct("PythonWorkerFactory")
            .field("spec", &self.spec)
            .field("bootstrap_dir", &self.bootstrap_dir)
            .field("gpus", &self.gpus)
            .field("warm", &warm)
            .field("stall_limit", &self.stall_limit)
            .finish()
    }
}

impl PythonWorkerFactory {
    /// Checks the spec and looks for GPUs (the bootstrap goes into `<work_dir>/.bootstrap/`
    /// when a worker starts).
    pub fn new(mut spec: PythonWorkerSpec) -> Result<Self> {
        let cwd = std::env::current_dir().map_err(|e| PrsError::io(".", e))?;
        if spec.entry_script.is_relative() {
            spec.entry_script = cwd.join(&spec.entry_script);
        }
        if !spec.entry_script.is_file() {
            return Err(PrsError::EntryScript {
                script: spec.entry_script.display().to_string(),
                message: "no such file".into(),
            });
        }
        if let Some(dir) = spec.source_directory.as_mut() {
            if dir.is_relative() {
                *dir = cwd.join(&*dir);
            }
        }
        for dir in [
            &mut spec.env.work_dir,
            &mut spec.env.log_dir,
            &mut spec.env.output_dir,
        ] {
            if dir.is_relative() {
                *dir = cwd.join(&*dir);
            }
        }
        let current_dir = cwd.join(spec.env.current_dir.as_deref().unwrap_or(&cwd));
        if !current_dir.is_dir() {
            return Err(PrsError::config(
                "source_directory",
                current_dir.display(),
                "is not a folder; Python workers run in source_directory (else in the job \
                 file's folder)",
            ));
        }
        spec.env.current_dir = Some(current_dir);
        let bootstrap_dir = spec.env.work_dir.join(".bootstrap");
        let gpus = if spec
            .env
            .environment_variables
            .contains_key("CUDA_VISIBLE_DEVICES")
        {
            Vec::new()
        } else {
            process::detect_gpus()
        };
        Ok(PythonWorkerFactory {
            spec,
            bootstrap_dir,
            bootstrapped: std::sync::Mutex::new(false),
            gpus,
            warm: Default::default(),
            stall_limit: STALL_LIMIT,
        })
    }

    /// The same factory with another stall limit (tests).
    #[cfg(test)]
    pub(crate) fn with_stall_limit(mut self, limit: std::time::Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// The spec (with paths made absolute).
    pub fn spec(&self) -> &PythonWorkerSpec {
        &self.spec
    }

    fn worker_config(
        &self,
        slot: &WorkerSlot,
        working_dir: &Path,
        logs: &UserLogPaths,
        check_only: bool,
    ) -> serde_json::Value {
        let env = &self.spec.env;
        serde_json::json!({
            "fds": [CHILD_READ_FD, CHILD_WRITE_FD],
            "entry_script": self.spec.entry_script,
            "source_directory": self.spec.source_directory,
            "log_dir": env.log_dir,
            "output_dir": env.output_dir,
            "working_dir": working_dir,
            "agent_name": slot.agent_name,
            "node": node_folder(env, slot),
            "entry_script_log": logs.entry_script_log,
            "logging_level": logging_level_name(env.logging_level),
            "mini_batch_format": self.spec.mini_batch_format.as_str(),
            "tabular": env.tabular_inputs,
            "keep_results": env.keep_results,
            "output_format": env.output_format.as_str(),
            "parent_pid": std::process::id(),
            "check_only": check_only,
        })
    }

    /// Starts a worker process; `check_only`: it only loads the script (see
    /// [`WorkerFactory::check`]).
    async fn spawn(&self, slot: &WorkerSlot, check_only: bool) -> std::io::Result<PythonWorker> {
        let env = &self.spec.env;
        // Written when the first worker starts, not when the factory is made: planning a SQL
        // query (EXPLAIN, a statement that fails) creates no folder. Once per factory, under
        // the lock, so workers started together do not rewrite the files one another runs.
        {
            let mut bootstrapped = self.bootstrapped.lock().unwrap_or_else(|p| p.into_inner());
            if !*bootstrapped {
                write_bootstrap(&self.bootstrap_dir)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                *bootstrapped = true;
            }
        }
        let working_dir = env.work_dir.join(&slot.agent_name);
        std::fs::create_dir_all(&working_dir)?;
        let logs = user_log_paths_in(&env.log_dir, &node_folder(env, slot), &slot.agent_name);
        let stdout = open_append(&logs.stdout)?;
        let stderr = open_append(&logs.stderr)?;
        let stderr_start = stderr.metadata().map(|m| m.len()).unwrap_or(0);
        if let Some(parent) = logs.entry_script_log.parent() {
            std::fs::create_dir_all(parent)?;
        }

        let (child_read, parent_write) = process::pipe()?;
        let (parent_read, child_write) = process::pipe()?;

        let mut cmd = tokio::process::Command::new(&self.spec.python);
        cmd.arg("-u")
            .arg(self.bootstrap_dir.join("prs_worker.py"))
            .args(&env.system_arguments)
            .args(&env.arguments)
            .current_dir(env.current_dir.as_deref().unwrap_or(&working_dir))
            .envs(&env.environment_variables)
            .env("AZUREML_BI_OUTPUT_PATH", &env.output_dir)
            .env(
                CONFIG_ENV,
                self.worker_config(slot, &working_dir, &logs, check_only)
                    .to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        if let Some(gpu) = process::gpu_for_slot(&self.gpus, slot.index) {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu);
        }
        // SAFETY: the closure only makes async-signal-safe fd syscalls (fcntl, dup2, close).
        unsafe {
            cmd.pre_exec(install_child_fds(&child_read, &child_write));
        }
        let child = cmd.spawn()?;
        // Our copies of the child's ends must go, or we would never see the pipe close.
        drop::<(OwnedFd, OwnedFd)>((child_read, child_write));
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the worker exited at once"))?;
        let to_child = pipe::Sender::from_owned_fd(parent_write)?;
        let from_child = pipe::Receiver::from_owned_fd(parent_read)?;
        tracing::debug!(worker = %slot.agent_name, pid, "started Python worker");
        Ok(PythonWorker::new(
            slot.clone(),
            child,
            pid as i32,
            to_child,
            from_child,
            env.keep_results,
            env.output_format,
            logs,
            stderr_start,
            self.spec.python.clone(),
            self.spec.entry_script.clone(),
            self.stall_limit,
        ))
    }
}

#[async_trait]
impl WorkerFactory for PythonWorkerFactory {
    async fn start(&self, slot: &WorkerSlot) -> Result<Box<dyn Worker>> {
        if slot.generation == 0 {
            let warm = self
                .warm
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&slot.index);
            if let Some(worker) = warm {
                return Ok(Box::new(worker));
            }
        }
        let worker = self
            .spawn(slot, false)
            .await
            .map_err(|e| PrsError::Worker {
                worker: slot.agent_name.clone(),
                message: format!("could not start {}: {e}", self.spec.python.display()),
            })?;
        Ok(Box::new(worker))
    }

    fn file_metadata(&self) -> bool {
        false // run() gets the paths only
    }

    async fn prestart(&self, slots: &[WorkerSlot]) {
        for slot in slots.iter().filter(|s| s.generation == 0) {
            match self.spawn(slot, false).await {
                Ok(worker) => {
                    self.warm
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(slot.index, worker);
                }
                Err(e) => {
                    tracing::debug!(worker = %slot.agent_name, "prestart failed: {e}");
                }
            }
        }
    }

    async fn check(&self) -> Result<()> {
        let script = self.spec.entry_script.display().to_string();
        let mut worker = self
            .spawn(&WorkerSlot::new(0, 0), true)
            .await
            .map_err(|e| PrsError::EntryScript {
                script: script.clone(),
                message: format!("could not start {}: {e}", self.spec.python.display()),
            })?;
        // READY: imported (the worker exits by itself; dropping it reaps it).
        match Worker::init(&mut worker).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_usage() => Err(e),
            Err(e) => Err(PrsError::EntryScript {
                script,
                message: match e {
                    PrsError::Worker { message, .. } => message,
                    other => other.to_string(),
                },
            }),
        }
    }

    fn describe(&self) -> String {
        let name = self
            .spec
            .entry_script
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("python:{name}")
    }
}

/// The node folder of the worker in `slot` in the log layout: the environment's
/// ([`WorkerEnv::node`], a cluster executor's name) or the slot's node index (`node000`).
fn node_folder(env: &WorkerEnv, slot: &WorkerSlot) -> String {
    env.node.clone().unwrap_or_else(|| node_name(slot.node))
}

fn logging_level_name(level: crate::config::LoggingLevel) -> &'static str {
    match level {
        crate::config::LoggingLevel::Debug => "DEBUG",
        crate::config::LoggingLevel::Info => "INFO",
        crate::config::LoggingLevel::Warning => "WARNING",
    }
}

/// Writes the bootstrap files into `dir`, each atomically (temp file + rename), skipping
/// those already there with the same content.
fn write_bootstrap(dir: &Path) -> Result<()> {
    for (name, content) in BOOTSTRAP_FILES {
        let path = dir.join(name);
        if std::fs::read(&path)
            .map(|old| old == content.as_bytes())
            .unwrap_or(false)
        {
            continue;
        }
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|e| PrsError::io(parent, e))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(parent).map_err(|e| PrsError::io(parent, e))?;
        std::io::Write::write_all(&mut tmp, content.as_bytes())
            .map_err(|e| PrsError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| PrsError::io(&path, e.error))?;
    }
    Ok(())
}
