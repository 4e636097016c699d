//! The crate's one error type.
//!
//! Every variant carries enough context (parameter, file, mini-batch) for the message to say what
//! went wrong and what to do about it. [`PrsError::exit_code`] maps an error to the CLI's exit code.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = PrsError> = std::result::Result<T, E>;

/// Everything that can go wrong in parallel-run.
#[derive(Debug, thiserror::Error)]
pub enum PrsError {
    /// A configuration value is missing or invalid. `field` names the parameter.
    #[error("{field} {value}: {reason}")]
    Config {
        /// The parameter, e.g. `mini_batch_size` or `inputs[1].format`.
        field: String,
        /// The offending value, already quoted for display (empty when the value is missing).
        value: String,
        /// What is wrong and what is allowed.
        reason: String,
    },

    /// A job file could not be read or parsed.
    #[error("job file {path}: {message}")]
    JobFile {
        /// The job file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// An input could not be found, listed or read.
    #[error("input {input:?} ({location}): {message}")]
    Input {
        /// The input's name.
        input: String,
        /// The path, glob or query of the input.
        location: String,
        /// What went wrong and what to do.
        message: String,
    },

    /// A worker could not be started or initialised (the entry script's `init()` failed, the
    /// interpreter is missing, ...).
    #[error("worker {worker}: {message}")]
    Worker {
        /// The worker's agent name, e.g. `process000`.
        worker: String,
        /// What went wrong, with the traceback when there is one.
        message: String,
    },

    /// The entry script is unknown or unusable.
    #[error("entry_script {script:?}: {message}")]
    EntryScript {
        /// The entry script as configured.
        script: String,
        /// What went wrong and what to do.
        message: String,
    },

    /// The job was aborted because a failure threshold was exceeded.
    #[error("{0}")]
    ThresholdExceeded(String),

    /// The job produced no output where some was required (the PRS rule for `append_row`).
    #[error("{0}")]
    NoOutput(String),

    /// Writing or committing output failed.
    #[error("output {path}: {message}")]
    Output {
        /// The file or folder concerned.
        path: String,
        /// What went wrong.
        message: String,
    },

    /// The job ran and failed: a threshold was exceeded, init() kept failing, nothing
    /// succeeded, or the output could not be committed. The report (also written to
    /// `logs/job_summary.json` and `logs/job_result.txt`) says why. The CLI exits 42 for it.
    #[error("the job failed: {reason} (see {})", report.logs.join("job_result.txt").display())]
    JobFailed {
        /// Why the job failed (the report's `reason`).
        reason: String,
        /// The job's report.
        report: Box<crate::report::JobSummary>,
    },

    /// Talking to a Ballista cluster failed: its scheduler could not be reached, refused the
    /// job, or reported it failed.
    #[error("{message}")]
    Cluster {
        /// The scheduler's `HOST:PORT`.
        scheduler: String,
        /// What went wrong (naming the scheduler) and what to do.
        message: String,
    },

    /// The shared staging area of a cluster job (see `exec::shared`).
    #[error(transparent)]
    SharedStore(#[from] crate::exec::shared::SharedStoreError),

    /// The job was cancelled (e.g. by Ctrl-C) before it finished.
    #[error("job cancelled: {0}")]
    Cancelled(String),

    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from DataFusion (planning or execution).
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// An error from Arrow.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),

    /// Another run holds the lease of an object-storage output (see
    /// [`crate::storage::lease`]): two runs must not write one output at once.
    #[error("output {output} is being written by another parallel-run run ({holder}): {advice}")]
    OutputLeased {
        /// The output URL.
        output: String,
        /// Who holds the lease: host, process, run, when it started and was last renewed.
        holder: String,
        /// What to do.
        advice: String,
    },

    /// An error from the object store.
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),

    /// An object-storage operation failed (after the store's retries): which store, which
    /// object and which operation, with secrets masked.
    #[error("{operation} {object} failed (store {store}): {message}")]
    Storage {
        /// The store, e.g. `s3://bucket` or `az://container`.
        store: String,
        /// The object or prefix (a full URL), empty when the store itself is concerned.
        object: String,
        /// The operation: `GET`, `LIST`, `HEAD`, `multipart upload (complete)`, `configure`...
        operation: String,
        /// What went wrong and what to do.
        message: String,
    },
}

impl PrsError {
    /// A configuration error for `field` with the offending `value` (quoted) and the `reason`.
    pub fn config(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        PrsError::Config {
            field: field.into(),
            value: format!("{:?}", value.to_string()),
            reason: reason.into(),
        }
    }

    /// The usage error for an output folder (or prefix) `output` holding `found` from an
    /// earlier run.
    pub fn earlier_results(output: &str, found: &[String]) -> Self {
        PrsError::config(
            "output",
            output,
            format!(
                "holds the results of an earlier run ({}); a new run must not leave them \
                 looking like its own. Run with --overwrite (ParallelRun::overwrite(true) in \
                 Rust) to remove them first, or choose another output folder",
                found.join(", ")
            ),
        )
    }

    /// A configuration error about a missing required `field`.
    pub fn missing(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PrsError::Config {
            field: field.into(),
            value: "is missing".into(),
            reason: reason.into(),
        }
    }

    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PrsError::Io {
            path: path.into(),
            source,
        }
    }

    /// The same error about the output named `output` (an object-storage output's URL for the
    /// local mirror that stands for it).
    pub fn naming_output(self, output: &str) -> Self {
        match self {
            PrsError::Config { field, reason, .. } if field == "output" => PrsError::Config {
                field,
                value: format!("{output:?}"),
                reason,
            },
            other => other,
        }
    }

    /// Is this a configuration or usage error (exit code 2) rather than a failed job (42)?
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PrsError::Config { .. }
                | PrsError::JobFile { .. }
                | PrsError::EntryScript { .. }
                | PrsError::Input { .. }
                | PrsError::OutputLeased { .. }
        )
    }

    /// The process exit code the CLI uses for this error: 2 for usage and configuration
    /// errors, 42 (PRS's code) for a job that ran and failed.
    pub fn exit_code(&self) -> i32 {
        if self.is_usage() {
            2
        } else {
            42
        }
    }

    /// Wraps this error for DataFusion, so it can travel through an `ExecutionPlan` stream and be
    /// recovered with [`PrsError::from_datafusion`].
    pub fn into_datafusion(self) -> datafusion::error::DataFusionError {
        match self {
            PrsError::DataFusion(e) => e,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }

    /// Recovers a [`PrsError`] wrapped by [`PrsError::into_datafusion`], looking through
    /// DataFusion's context and shared wrappers.
    pub fn from_datafusion(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e {
            D::External(b) => match b.downcast::<PrsError>() {
                Ok(p) => *p,
                Err(b) => PrsError::DataFusion(D::External(b)),
            },
            D::Context(_, inner) => PrsError::from_datafusion(*inner),
            D::Shared(arc) => match std::sync::Arc::try_unwrap(arc) {
                Ok(inner) => PrsError::from_datafusion(inner),
                Err(arc) => {
                    if let D::External(b) = arc.as_ref() {
                        if let Some(p) = b.downcast_ref::<PrsError>() {
                            return p.shallow_clone();
                        }
                    }
                    PrsError::DataFusion(D::Shared(arc))
                }
            },
            other => PrsError::DataFusion(other),
        }
    }

    /// A copy that keeps the variant and message (sources become text).
    fn shallow_clone(&self) -> Self {
        match self {
            PrsError::ThresholdExceeded(m) => PrsError::ThresholdExceeded(m.clone()),
            PrsError::NoOutput(m) => PrsError::NoOutput(m.clone()),
            PrsError::Cancelled(m) => PrsError::Cancelled(m.clone()),
            PrsError::Worker { worker, message } => PrsError::Worker {
                worker: worker.clone(),
                message: message.clone(),
            },
            PrsError::Config {
                field,
                value,
                reason,
            } => PrsError::Config {
                field: field.clone(),
                value: value.clone(),
                reason: reason.clone(),
            },
            PrsError::Storage {
                store,
                object,
                operation,
                message,
            } => PrsError::Storage {
                store: store.clone(),
                object: object.clone(),
                operation: operation.clone(),
                message: message.clone(),
            },
            other => PrsError::Output {
                path: String::new(),
                message: other.to_string(),
            },
        }
    }
}
