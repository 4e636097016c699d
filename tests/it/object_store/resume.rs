//! Resuming jobs whose output is on object storage: the staging area and the ledger are in
//! the local mirror; a resumed run uploads the complete output.

use super::jobs::*;
use super::store::shared;
use crate::common::*;
use crate::servers::Kind;

/// Killed (-9) part-way, then resumed: the final object holds every row once.
#[test]
fn an_s3_output_job_killed_then_resumed_commits_every_row_once() {
    let store = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    let mirror = d.path().join("mirror");
    let prefix = super::store::unique("resume-out");
    let options = format!("local_dir: {}", mirror.display());
    let job = slow_tabular_job(
        &store,
        d.path(),
        &store.url(&format!("{prefix}/")),
        &options,
    );
    let env = store.env();
    let mut child = spawn_job(&job, &env);
    wait_for_mini_batches(&mirror, 3);
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(store.get(&format!("{prefix}/parallel_run_step.txt")), None);
    // What the ledger holds (the report lists a mini-batch just before its commit, so it may
    // be one ahead of the ledger when the kill comes).
    let committed = std::fs::read_to_string(mirror.join("logs/ledger/records.jsonl"))
        .map_or(0, |t| t.lines().count()) as u64;

    let resumed = cli_env(&["run", job.to_str().unwrap(), "--quiet", "--resume"], &env);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let text = String::from_utf8(
        store
            .get(&format!("{prefix}/parallel_run_step.txt"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
    let s = summary(&mirror);
    assert_eq!(s["resumed"], true, "{s}");
    assert!(
        s["mini_batches_skipped"].as_u64().unwrap() >= committed.max(1),
        "{committed} committed before the kill: {s}"
    );
    // The ledger went up with the logs.
    assert!(store
        .get(&format!("{prefix}/logs/ledger/records.jsonl"))
        .is_some());
}
