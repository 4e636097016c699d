//! The command line: `cargo bench --bench harness -- [OPTIONS]`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "harness",
    bin_name = "cargo bench --bench harness --",
    about = "parallel-run's benchmark harness: reference workloads against the multiprocessing \
             baselines, wall time and peak process-tree memory; writes BENCHMARKS.md",
    after_help = "Workloads: score-20k, score-2M, files-20k, rust-score-2M, s3-score-2M, \
                  keyed-2M, resume-2M, cluster-score-2M, cluster-noop-2M, cluster-tasks-2M, \
                  the memory check score-<rows-large> (alias: memory), keyed-<rows-large> and \
                  cluster-score-<rows-large>."
)]
pub struct Args {
    /// Runs per workload and side (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Run only this workload (repeatable).
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
    /// Rows of the large data set (the memory check and keyed-<rows-large>).
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rows_large: u64,
    /// Skip the large workloads, score-<rows-large> and keyed-<rows-large> (and generating
    /// their data).
    #[arg(long)]
    pub skip_large: bool,
    /// Python with numpy, pandas and pyarrow (default: $PARALLEL_RUN_PYTHON, else the crate's
    /// .venv/bin/python, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Where the data sets, job files and outputs go; data sets are generated only when
    /// missing (default: target/bench-data in the crate).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the Markdown report goes (default: BENCHMARKS.md in the crate).
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Print the report only; write no file.
    #[arg(long, conflicts_with = "write")]
    pub no_write: bool,
    /// An S3 endpoint to use (its bucket must exist; credentials test/testsecret). Without
    /// it the harness uses $PARALLEL_RUN_S3_ENDPOINT (the server `.ci/run` starts), else starts
    /// s3s-fs from $PARALLEL_RUN_S3S_FS_BIN or the CI cache, if there.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The bucket for the S3 workload (default: parallel-run-bench; $PARALLEL_RUN_S3_BUCKET
    /// with $PARALLEL_RUN_S3_ENDPOINT's server).
    #[arg(long, value_name = "NAME")]
    pub s3_bucket: Option<String>,
    /// A run taking longer than this is killed and the workload fails.
    #[arg(long, default_value_t = 1200)]
    pub timeout_secs: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
}
