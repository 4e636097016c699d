//! parallel-run: ParallelRunStep-style batch jobs on Apache Arrow and DataFusion.
//!
//! A job runs an entry script (`init()`, `run(mini_batch)`, `shutdown()`) over mini-batches of
//! its inputs on `node_count x process_count_per_node` workers, with retries, timeouts, error
//! budgets, exactly-once output and PRS's report files.
//!
//! A tour, following the data:
//! - [`config`]: the PRS parameters ([`config::ParallelRunConfig`]) and YAML job files;
//! - [`input`]: inputs as DataFusion tables, file datasets as listings;
//! - [`batch`]: mini-batches, their stable ids and lineage, and how they are cut;
//! - [`exec`]: the operator [`exec::ParallelRunExec`], its logical node and planner;
//! - [`worker`]: the worker interface, in-process Rust scripts, Python worker processes;
//! - [`output`] and [`report`]: exactly-once output and the report files;
//! - [`storage`]: inputs and outputs on S3 and Azure Blob through object_store;
//! - [`session`]: the one recipe for DataFusion sessions;
//! - [`job`], [`api`], [`sql`] and [`cli`]: ways in.
//!
//! Running a Rust entry script over a DataFrame and getting the results as a DataFrame:
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use parallel_run::config::{OutputAction, ParallelRunConfig};
//! use parallel_run::worker::rust::{RunOutput, ScriptError};
//! use parallel_run::worker::{EntryScript, MiniBatchContext};
//! use parallel_run::ParallelRunDataFrameExt;
//!
//! /// Returns each row's id times ten.
//! struct TimesTen;
//! impl EntryScript for TimesTen {
//!     fn run(&mut self, batch: &RecordBatch, _: &MiniBatchContext) -> Result<RunOutput, ScriptError> {
//!         let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().ok_or("id")?;
//!         let out: Int64Array = ids.iter().map(|v| v.map(|v| v * 10)).collect();
//!         Ok(RunOutput::List(Arc::new(out)))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = datafusion::prelude::SessionContext::new();
//! let df = ctx.sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(id)").await?;
//! let schema = Arc::new(Schema::new(vec![Field::new("result", DataType::Int64, true)]));
//! let config = ParallelRunConfig::new("rust:times_ten", 0, OutputAction::AppendRow);
//! let results = df.parallel_run(&config, schema, || TimesTen)?.collect().await?;
//! let total: usize = results.iter().map(|b| b.num_rows()).sum();
//! assert_eq!(total, 3);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod error;
pub mod worker;

pub use error::{PrsError, Result};
pub mod api;
pub mod exec;
pub mod input;
pub mod job;
pub mod ledger;
pub mod output;
pub mod report;
pub mod session;
pub mod storage;

pub use api::{ParallelRun, ParallelRunDataFrameExt};
pub use job::{JobReport, Progress};
pub mod cli;
pub mod cluster;
pub mod scripts;
pub mod sql;

/// Locks `m`, taking the data of a poisoned lock (a panic elsewhere already failed the job;
/// the counters and reports it guards stay readable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The README's Rust blocks, compiled and run by `cargo test --doc` so the documented library
/// API stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The import rules of ARCHITECTURE.md, checked on the `crate::` paths of every source file
/// (comments included: a doc link is a dependency too).
#[cfg(test)]
mod layout {
    use std::path::Path;

    /// Every `crate::MODULE` named in the files under `src/<folder>` that is not in `allowed`.
    fn offenders(folder: &str, allowed: &[&str]) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join(folder);
        let mut found = Vec::new();
        let mut folders = vec![root];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let mut rest = line;
                    while let Some(i) = rest.find("crate::") {
                        let module: String = rest[i + 7..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !module.is_empty() && !allowed.contains(&module.as_str()) {
                            found.push(format!("{}:{}: {line}", path.display(), n + 1));
                        }
                        rest = &rest[i + 7..];
                    }
                }
            }
        }
        found
    }

    #[test]
    fn config_is_the_ground_floor() {
        let found = offenders("config", &["config", "error"]);
        assert!(
            found.is_empty(),
            "config imports more than error:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_cluster_ships_the_operator_and_never_names_a_job_driver() {
        let found = offenders("cluster", &["cluster", "exec", "batch", "config", "error"]);
        assert!(
            found.is_empty(),
            "cluster imports more than exec, batch, config and error:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn storage_is_about_object_stores_only() {
        let found = offenders("storage", &["config", "error", "storage"]);
        assert!(
            found.is_empty(),
            "storage imports more than config and error:\n{}",
            found.join("\n")
        );
    }
}
