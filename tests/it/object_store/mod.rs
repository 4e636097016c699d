//! Inputs and outputs on object storage, against real servers on 127.0.0.1: s3s-fs (S3) and
//! Azurite (Azure Blob).
//!
//! `.ci/run` installs both, starts them and exports `PARALLEL_RUN_S3_ENDPOINT` (with
//! `PARALLEL_RUN_S3_BUCKET`, an existing bucket) and `PARALLEL_RUN_AZURITE_ENDPOINT`, plus the
//! binaries (`PARALLEL_RUN_S3S_FS_BIN`, `PARALLEL_RUN_AZURITE_BIN`). When an endpoint is not
//! set, these tests start a private server from the binary (the variables above, or the CI
//! cache under `~/.cache/parallel-run-ci/`); when no binary is found they FAIL with the
//! command that installs it. They never pass without a server. The fault tests (a server
//! stopped mid-job) always start their own server, so they can stop it. Starting, stopping
//! and finding the servers is `tests/support/servers.rs`, shared with the benchmark harness.
//!
//! - [`store`]: the shared and private servers' buckets, and reading and writing them;
//! - [`jobs`]: job files, data and running the CLI with only the store's credentials;
//! - [`transfer`]: jobs reading from and writing to each store;
//! - [`faults`]: servers stopped in the middle of a job;
//! - [`checks`]: what is refused before a job starts;
//! - [`lease`]: one run at a time on an output in a bucket (the lease object);
//! - [`resume`]: jobs killed and resumed, on the same machine or a fresh one.

pub mod jobs;
/// Also used by the cluster tests (an output on object storage).
pub(crate) mod store;

mod checks;
mod faults;
mod lease;
mod resume;
mod transfer;
