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
mod mltable;
mod named;
mod params;
mod reader;
mod size;
pub mod storage_options;
mod writer;
mod yaml;

pub use catalogue::{Param, CATALOGUE, RESERVED_ARGUMENTS};
pub(crate) use job::{resolve as resolve_path, validate_arguments};
pub use job::{
    InputFormat, InputSource, InputSpec, JobSpec, LoadedJob, MiniBatchFormat, OutputFormat,
};
pub use location::{is_object_url, is_url, ObjectUrl, StoreKind};
pub use params::{
    ComputeTarget, Environment, LoggingLevel, OutputAction, ParallelRunConfig,
    DEFAULT_APPEND_ROW_FILE_NAME,
};
pub(crate) use reader::{read_config_entries, read_job_file};
pub use size::MiniBatchSize;
pub use storage_options::{CacheOptions, StorageOptions};
pub(crate) use yaml::closest;

#[cfg(test)]
mod tests {
    /// `config` is the ground floor (ARCHITECTURE.md): nothing of the crate but `error`.
    #[test]
    fn imports_only_error() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
        let mut offenders = Vec::new();
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
                        if !module.is_empty() && module != "config" && module != "error" {
                            offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
                        }
                        rest = &rest[i + 7..];
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "config imports more than error:\n{}",
            offenders.join("\n")
        );
    }
}
