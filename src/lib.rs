//! parallel-run: ParallelRunStep-style batch jobs on Apache Arrow and DataFusion.

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
pub mod output;
pub mod report;

pub use api::{ParallelRun, ParallelRunDataFrameExt};
pub use job::{JobReport, Progress};
pub mod cli;
pub mod scripts;
