//! What can go wrong in the harness: its environment (the shared folder, Python, the binary,
//! files, an S3 server) and the runs it measures.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::servers::ServerError;

pub type Result<T> = std::result::Result<T, HarnessError>;

/// An error that stops the harness, a workload, or (for the S3 workload) its setup.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("current folder: {0}")]
    CurrentDir(#[source] io::Error),
    /// Reading, writing, creating or removing a file or folder.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the shared folder {} is missing ({source}); the harness needs ../shared/bench beside \
         the crate (gen_data.py, the entry scripts and the baselines)",
        path.display()
    )]
    SharedMissing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is missing from the shared folder", .0.display())]
    SharedFileMissing(PathBuf),
    #[error("the parallel-run binary {} is missing", .0.display())]
    BinaryMissing(PathBuf),
    #[error(
        "the loopback cluster (scheduler at {address}) did not get its executors within 120 s; \
         see the cluster-*.log files in {}",
        logs.display()
    )]
    ClusterNotReady { address: String, logs: PathBuf },
    #[error("cannot run Python {}: {source}", python.display())]
    PythonStart {
        python: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "Python {} lacks numpy, pandas or pyarrow (pass --python or set PARALLEL_RUN_PYTHON; \
         `bash .ci/run` makes .venv with them):\n{stderr}",
        python.display()
    )]
    PythonPackages { python: PathBuf, stderr: String },
    #[error("cannot run {}: {source}", script.display())]
    GeneratorStart {
        script: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating {} failed ({status}): {command}", dir.display())]
    Generate {
        dir: PathBuf,
        status: ExitStatus,
        command: String,
    },
    #[error("{}: no mini_batches_total to learn the job's mini-batch count from", .0.display())]
    NoMiniBatchCount(PathBuf),
    #[error("--only {name}: no such workload; choose from {choices}")]
    UnknownWorkload { name: String, choices: String },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("waiting for `{label}`: {source}")]
    Wait {
        label: String,
        #[source]
        source: io::Error,
    },
    /// A measured run that failed or whose output is wrong.
    #[error(transparent)]
    Run(Box<FailedRun>),
    #[error(
        "no S3 server: pass --s3-endpoint URL or set PARALLEL_RUN_S3_ENDPOINT, or install \
         s3s-fs ({0}; see README \"Object storage\")"
    )]
    NoS3Server(#[source] ServerError),
    #[error(transparent)]
    Server(ServerError),
    #[error("tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("S3 client for {endpoint}: {source}")]
    S3Client {
        endpoint: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "listing {url} at {endpoint}: {source} (the bucket must exist: create it or name \
         another with --s3-bucket)"
    )]
    S3List {
        url: String,
        endpoint: String,
        #[source]
        source: object_store::Error,
    },
    #[error("uploading {url}: {source}")]
    S3Upload {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

impl HarnessError {
    /// An I/O error on `path`, while doing `action` ("reading", "writing", ...).
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| HarnessError::Io {
            action,
            path,
            source,
        }
    }
}

impl From<ServerError> for HarnessError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::NotInstalled { .. } => HarnessError::NoS3Server(e),
            e => HarnessError::Server(e),
        }
    }
}

/// A measured run that does not count: why, and where to look.
#[derive(Debug, thiserror::Error)]
#[error("{failure}\n  command: {command}\n  log: {}\n  last output:\n{tail}", log.display())]
pub struct FailedRun {
    pub failure: RunFailure,
    pub command: String,
    pub log: PathBuf,
    /// The end of the run's log.
    pub tail: String,
}

/// Why a measured run does not count.
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    #[error("{label} took longer than {secs} s and was killed")]
    TimedOut { label: String, secs: u64 },
    #[error("{label} failed: {how}")]
    Failed { label: String, how: String },
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: bad JSON: {source}", path.display())]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{}: status {status}, items_total {total:?}, items_succeeded {succeeded:?}; expected \
         {items} items",
        path.display()
    )]
    NotSucceeded {
        path: PathBuf,
        status: String,
        total: Option<u64>,
        succeeded: Option<u64>,
        items: u64,
    },
    #[error("{}: {lines} lines, expected {expect}", path.display())]
    Lines {
        path: PathBuf,
        lines: u64,
        expect: u64,
    },
    #[error("{}: output_rows {written:?}, expected {items}", path.display())]
    OutputRows {
        path: PathBuf,
        written: Option<u64>,
        items: u64,
    },
    #[error("{label}: reported rows {rows:?}, expected {expect}")]
    RowsLine {
        label: String,
        rows: Option<u64>,
        expect: u64,
    },
    #[error("{}: mini_batches_total {total:?}, expected {expect}", path.display())]
    MiniBatches {
        path: PathBuf,
        total: Option<u64>,
        expect: u64,
    },
    #[error(
        "{}: resumed {resumed:?}, mini_batches_skipped {skipped:?}; expected a resumed run \
         skipping at least {min}",
        path.display()
    )]
    NotResumed {
        path: PathBuf,
        resumed: Option<bool>,
        skipped: Option<u64>,
        min: u64,
    },
    #[error(
        "{label}: the job to interrupt finished every time before its ledger held {at} \
         records (it held {finished:?} when it finished), so there was nothing to resume"
    )]
    NotInterrupted {
        label: String,
        at: u64,
        finished: Vec<u64>,
    },
    #[error("{}: {problem}", path.display())]
    Ids { path: PathBuf, problem: String },
}
