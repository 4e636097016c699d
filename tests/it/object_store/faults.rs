//! Servers stopped in the middle of a job: each test starts a private server, so it can stop
//! it, and checks the job either rides it out (retries) or fails clearly and commits nothing.

use std::time::Duration;

use super::jobs::*;
use super::store::PrivateServer;
use crate::common::*;
use crate::servers::{Kind, AZURE_KEY, S3_SECRET};

/// S3 stopped in the middle of a tabular job (input and output there) and started again
/// within the retry budget: the job completes with every row, once.
#[test]
fn s3_down_mid_job_then_back_the_job_completes() {
    let mut server = PrivateServer::start(Kind::S3);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let options = format!(
        "{}\nlocal_dir: {}",
        retries(30),
        d.path().join("mirror").display()
    );
    let job = slow_tabular_job(&store, d.path(), &store.url("out/"), &options);
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&d.path().join("mirror"), 2);
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    server.restart();
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    let text = String::from_utf8(store.get("out/parallel_run_step.txt").unwrap()).unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
}

/// S3 stopped mid-job and left down: the job fails, naming the store, the object and the
/// operation; nothing is committed (no final object once the server is back); the report says
/// where the committed parts are.
#[test]
fn s3_down_for_good_fails_the_job_clearly_commits_nothing_and_resumes_once_back() {
    let mut server = PrivateServer::start(Kind::S3);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let mirror = d.path().join("mirror");
    // A read-ahead budget smaller than any object: DataFusion reads every object from the
    // store itself (with the default budget the 16 objects would all be local before the
    // server stops, and the job would fail at the output's upload instead).
    let options = format!(
        "{}\nlocal_dir: {}\ncache_size: 1KB",
        retries(2),
        mirror.display()
    );
    let job = slow_tabular_job(&store, d.path(), &store.url("out/"), &options);
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&mirror, 2);
    server.stop();
    let run = finish(child);
    assert_eq!(run.code, 42, "{run:?}");
    let summary = summary(&mirror);
    let reason = summary["reason"].as_str().unwrap();
    assert!(reason.contains("s3://parallel-run-tests"), "{reason}");
    assert!(reason.contains("GET"), "{reason}");
    assert!(reason.contains("in/p"), "names the object: {reason}");
    assert!(!reason.contains(S3_SECRET), "{reason}");
    let result = std::fs::read_to_string(mirror.join("logs/job_result.txt")).unwrap();
    assert!(result.contains(".parallel_run/staging"), "{result}");
    let done_before = summary["mini_batches_succeeded"].as_u64().unwrap();
    assert!(done_before >= 2);
    server.restart();
    assert_eq!(store.get("out/parallel_run_step.txt"), None);
    std::thread::sleep(Duration::from_millis(200));

    // Once the store is back, --resume finishes the job without running the committed
    // mini-batches again; a plain run does not throw that work away.
    let plain = cli_env(&["run", job.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(
        plain.code, 2,
        "an unfinished job is not thrown away: {plain:?}"
    );
    let resumed = cli_env(&["run", job.to_str().unwrap(), "--quiet", "--resume"], &[]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let text = String::from_utf8(store.get("out/parallel_run_step.txt").unwrap()).unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
    let s = crate::common::summary(&mirror);
    assert!(
        s["mini_batches_skipped"].as_u64().unwrap() >= done_before,
        "{s}"
    );
}

/// A tabular input is downloaded ahead from the moment the job starts (within the cache's
/// budget): once the first mini-batches are done every object is local, so the S3 server
/// stopping does not stop the job, and the rows equal the input.
#[test]
fn tabular_inputs_are_read_ahead_while_the_job_starts() {
    let mut server = PrivateServer::start(Kind::S3);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let job = slow_tabular_job(&store, d.path(), &out.display().to_string(), &retries(2));
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&d.path().join("out"), 2);
    server.stop();
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(out.join("parallel_run_step.txt")).unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
    // The copies went with the job.
    let cache = d.path().join("out/.parallel_run/cache");
    let left = std::fs::read_dir(&cache).map(|r| r.count()).unwrap_or(0);
    assert_eq!(left, 0, "read-ahead copies left in {}", cache.display());
}

/// Azurite stopped while a file dataset is being downloaded and started again: the
/// downloads are retried and the job completes.
#[test]
fn azure_down_during_downloads_then_back_the_job_completes() {
    let mut server = PrivateServer::start(Kind::Azure);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let job = slow_files_job(&store, d.path(), "out", &retries(30));
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&d.path().join("out"), 2);
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    server.restart();
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&d.path().join("out/parallel_run_step.txt")).len(), 30);
}

/// Azurite stopped for good while a file dataset is downloaded, output on Azure: the job
/// fails with the store, the object and the operation; no final object appears.
#[test]
fn azure_down_for_good_fails_the_job_clearly() {
    let mut server = PrivateServer::start(Kind::Azure);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let mirror = d.path().join("mirror");
    let options = format!("{}\nlocal_dir: {}", retries(2), mirror.display());
    let job = slow_files_job(&store, d.path(), &store.url("out/"), &options);
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&mirror, 2);
    server.stop();
    let run = finish(child);
    assert_eq!(run.code, 42, "{run:?}");
    let reason = summary(&mirror)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("az://parallel-run-tests"), "{reason}");
    assert!(reason.contains("docs/"), "{reason}");
    assert!(
        reason.contains("GET") || reason.contains("LIST"),
        "{reason}"
    );
    assert!(!reason.contains(AZURE_KEY), "{reason}");
    server.restart();
    assert_eq!(store.get("out/parallel_run_step.txt"), None);
}
