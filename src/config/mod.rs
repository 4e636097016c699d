//! Configuration: the PRS parameters ([`ParallelRunConfig`], declared once in the
//! [`catalogue`]), the job file around them ([`JobSpec`]), and their validation.
//!
//! Configuration has one home: every other module receives these validated, typed values,
//! never raw strings.

pub mod azure_v2;
pub mod catalogue;
mod environment;
mod job;
mod location;
pub mod mltable;
mod named;
mod params;
mod reader;
mod settings;
mod size;
pub mod storage_options;
mod writer;
mod yaml;

pub use catalogue::{Param, CATALOGUE, RESERVED_ARGUMENTS};
pub(crate) use job::{resolve as resolve_path, validate_arguments};
pub use job::{
    CsvHeader, CsvOptions, InputFormat, InputSource, InputSpec, JobSpec, LoadedJob,
    MiniBatchFormat, OutputFormat,
};
pub use location::{glob_matcher, is_object_url, is_url, ObjectUrl, StoreKind};
pub use params::{
    cluster_host_port, ComputeTarget, Environment, LoggingLevel, OutputAction, ParallelRunConfig,
    DEFAULT_APPEND_ROW_FILE_NAME, DEFAULT_MINI_BATCH_FILES,
};
pub(crate) use reader::{read_config_entries, read_job_file};
pub use settings::{log_dir, JobSettings};
pub use size::MiniBatchSize;
pub use storage_options::{CacheOptions, StorageOptions};
pub(crate) use yaml::closest;
