//! Multi-node runs on an Apache DataFusion Ballista 55 cluster: the codec that carries
//! `ParallelRunExec` between processes ([`codec`]), our own `scheduler` and `executor`
//! processes built from the Ballista libraries with that codec ([`server`]), and the
//! driver's side of a job whose `compute_target` is `df://HOST:PORT` ([`submit`]).
//!
//! The driver cuts the mini-batches exactly as a local run does (same ids), deals them into
//! `node_count x process_count_per_node` partitions of a manifest Ballista restricts per
//! task, submits the physical plan, and commits the outcomes that come back through its
//! staged sink and ledger (see `docs/design/mini-batches.md`).

pub mod client;
pub mod codec;
pub mod engine;
pub mod gate;
pub mod server;
pub mod submit;

pub use codec::{PrsPhysicalCodec, PRS_MAGIC};

use std::time::Duration;

use crate::error::{PrsError, Result};

/// Test-only: makes this process advertise another parallel-run version to the other
/// processes of a cluster (in its codec's bytes and its executor id), so tests can check
/// that processes of different versions refuse each other. Never set it otherwise.
pub const VERSION_OVERRIDE_ENV: &str = "PARALLEL_RUN_TEST_CLUSTER_VERSION";

/// The parallel-run version this process advertises to the other processes of a cluster:
/// this build's, unless [`VERSION_OVERRIDE_ENV`] says otherwise.
pub fn advertised_version() -> String {
    std::env::var(VERSION_OVERRIDE_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

/// A scheduler address from `compute_target` (`df://HOST:PORT` or `ballista://HOST:PORT`):
/// `HOST:PORT`. The config layer has checked the form.
pub fn scheduler_host_port(target: &str) -> Result<&str> {
    crate::config::cluster_host_port(target)
        .ok_or_else(|| PrsError::config("compute_target", target, "expected df://HOST:PORT"))
}

/// Checks that something listens at the scheduler's address (one TCP connection, at most
/// `timeout`), so that an unreachable cluster is refused before anything is written.
pub async fn check_reachable(target: &str, timeout: Duration) -> Result<()> {
    let host_port = scheduler_host_port(target)?;
    let refused = |why: String| {
        PrsError::config(
            "compute_target",
            target,
            format!(
                "no Ballista scheduler answers at {host_port} ({why}). Start one with \
                 `parallel-run scheduler --bind {host_port}` and executors with \
                 `parallel-run executor --scheduler {host_port}`, or run locally with \
                 --set compute_target=local"
            ),
        )
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(host_port)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(refused(e.to_string())),
        Err(_) => Err(refused(format!("no answer within {} s", timeout.as_secs()))),
    }
}
