//! Multi-node runs on an Apache DataFusion Ballista 55 cluster: the codec that carries
//! `ParallelRunExec` between processes ([`codec`]), our own `scheduler` and `executor`
//! processes built from the Ballista libraries with that codec ([`server`]), and the
//! driver's side of a job whose `compute_target` is `df://HOST:PORT` ([`submit`]).
//!
//! The driver cuts the mini-batches exactly as a local run does (same ids), deals them into
//! `node_count x process_count_per_node` partitions of a manifest Ballista restricts per
//! task, and submits the physical plan; the executors commit each finished mini-batch to
//! the output's shared staging area (`exec::shared`), where the driver follows them and
//! commits them through its staged sink and ledger (see `docs/design/mini-batches.md`).

pub mod client;
pub mod codec;
pub mod engine;
mod follow;
pub mod gate;
pub mod keyed;
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

/// How often the scheduler's executor count is read while waiting.
const READY_EVERY: Duration = Duration::from_millis(500);

/// Waits (at most `limit`) until at least `expected` executors are registered with the
/// scheduler at `target`, reading the count from Ballista's `/readyz` endpoint on the
/// scheduler's port (always served, unlike the REST API, which needs a cargo feature).
/// Returns the count; fails with a usage error saying how many were found. `announce`
/// prints one line while waiting.
pub async fn wait_for_executors(
    target: &str,
    expected: u32,
    limit: Duration,
    announce: bool,
) -> Result<usize> {
    let host_port = scheduler_host_port(target)?;
    let expected = expected as usize;
    let url = format!("http://{host_port}/readyz");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut announced = false;
    loop {
        let found = registered_executors(&client, &url).await.map_err(|why| {
            PrsError::config(
                "compute_target",
                target,
                format!(
                    "could not count the executors registered at {host_port} ({why}): is it \
                     `parallel-run scheduler` of this parallel-run version?"
                ),
            )
        })?;
        if found >= expected {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PrsError::config(
                "node_count",
                expected,
                format!(
                    "found {found} of {expected} executors at {host_port}; start more \
                     executors or lower node_count (waited {} s, executor_wait_timeout; an \
                     executor starts with `parallel-run executor --scheduler {host_port}`)",
                    limit.as_secs()
                ),
            ));
        }
        if announce && !announced {
            eprintln!(
                "parallel-run: waiting up to {} s for {expected} executors at {host_port} \
                 ({found} registered)",
                limit.as_secs()
            );
            announced = true;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(READY_EVERY.min(left)).await;
    }
}

/// The executors alive at the scheduler, from its `/readyz` answer.
async fn registered_executors(
    client: &reqwest::Client,
    url: &str,
) -> std::result::Result<usize, String> {
    let answer = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    // 503 is "not ready": fewer executors than the scheduler's own minimum.
    let body = answer.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    executor_count(&body).ok_or_else(|| format!("GET {url} answered {body:?}"))
}

/// The count in Ballista 55's `/readyz` text: `ready: N executors registered` or
/// `not ready: N/M executors registered`.
fn executor_count(body: &str) -> Option<usize> {
    let rest = body
        .trim()
        .strip_prefix("not ready: ")
        .or_else(|| body.trim().strip_prefix("ready: "))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_count_is_read_from_readyz() {
        assert_eq!(executor_count("ready: 3 executors registered\n"), Some(3));
        assert_eq!(
            executor_count("not ready: 0/1 executors registered\n"),
            Some(0)
        );
        assert_eq!(executor_count("REST API has been disabled"), None);
        assert_eq!(executor_count("ready: many"), None);
    }

    #[tokio::test]
    async fn too_few_executors_fail_naming_the_counts() {
        // A stand-in for the scheduler's /readyz: one executor, forever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let body = "not ready: 1/2 executors registered\n";
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let target = format!("df://{address}");
        assert_eq!(
            wait_for_executors(&target, 1, Duration::ZERO, false)
                .await
                .unwrap(),
            1
        );
        let e = wait_for_executors(&target, 2, Duration::ZERO, false)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        for part in [
            "found 1 of 2 executors at",
            &address.to_string(),
            "start more executors",
            "lower node_count",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }
}
