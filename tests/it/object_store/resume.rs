//! Resuming jobs whose output is on object storage: the staging area and the ledger are in
//! the local mirror and, as mini-batches commit, in the bucket; a resumed run (on the same
//! machine, or on a fresh one from the bucket alone) uploads the complete output.

use super::jobs::*;
use super::store::shared;
use crate::common::*;
use crate::servers::Kind;

/// Killed (-9) part-way (or during the final upload), then resumed: the final object holds
/// every row once.
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
    // As if the kill had come during the final upload: the bucket holds an object that is
    // not the job's output (a store's PUT is all or nothing: an earlier, stale one), and the
    // mirror a final file cut short. The resume replaces both.
    store.put(
        &format!("{prefix}/parallel_run_step.txt"),
        b"stale\n".to_vec(),
    );
    std::fs::write(mirror.join("parallel_run_step.txt"), "0 partial").unwrap();

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

/// A file dataset on S3 whose job stopped at its error_threshold, resumed with a higher one:
/// the files of the mini-batches the resume skips are not downloaded again (job_summary.json's
/// `files_downloaded` counts the downloads of one run), and the output holds every good file
/// once.
#[test]
fn a_resumed_file_dataset_downloads_only_the_files_of_the_mini_batches_it_runs() {
    let store = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    let prefix = super::store::unique("resume-files");
    let data = d.path().join("files");
    text_files(&data, 30);
    store.upload_dir(&data, &format!("{prefix}/docs"));
    let job = |threshold: u32| {
        crate::common::write_job(
            d.path(),
            &format!(
                "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\n\
                 process_count_per_node: 2\nmini_batch_size: 2\nrun_max_try: 1\n\
                 error_threshold: {threshold}"
            ),
            &format!(
                "inputs:\n  - {{name: docs, path: \"{}\", format: files}}\noutput: out\n\
                 arguments: [--read-files, --fail-paths, f14.txt]\n{}",
                store.url(&format!("{prefix}/docs/")),
                store.storage_options("prefetch_files: 4")
            ),
        )
    };
    let out = d.path().join("out");
    let first = run_env(&job(0), &store.env());
    assert_eq!(first.code, 42, "the failing file stops the job: {first:?}");
    // Every mini-batch the first run finished (succeeded or failed) is skipped by the resume.
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("logs/ledger/records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let skipped_files: u64 = records
        .iter()
        .map(|r| r["record"]["total_items"].as_u64().unwrap())
        .sum();
    assert!(!records.is_empty() && skipped_files < 30, "{records:?}");

    let resumed = cli_env(
        &["run", job(2).to_str().unwrap(), "--quiet", "--resume"],
        &store.env(),
    );
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let s = summary(&out);
    assert_eq!(s["mini_batches_skipped"], records.len() as u64, "{s}");
    assert_eq!(
        s["files_downloaded"],
        30 - skipped_files,
        "only the files of the mini-batches the resume runs are downloaded: {s}"
    );
    let output = lines(&out.join("parallel_run_step.txt"));
    let mut names: Vec<&str> = output
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), output.len(), "every file once: {output:?}");
    assert_eq!(
        output.len(),
        28,
        "30 files but the failing mini-batch's 2: {output:?}"
    );
}

/// The records of the bucket's ledger segments (`logs/ledger/records/`), in order.
fn bucket_records(store: &super::store::Store, prefix: &str) -> Vec<serde_json::Value> {
    store
        .list(&format!("{prefix}/logs/ledger/records/"))
        .iter()
        .flat_map(|key| {
            let text = String::from_utf8(store.get(key).unwrap()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Killed (-9) part-way, its local mirror deleted (a lost machine), then resumed with an
/// empty mirror: the ledger and the committed parts come from the bucket, the mini-batches it
/// holds are not run again, and the output equals a clean run's (rows sorted by id), each row
/// once.
#[test]
fn an_s3_output_job_killed_then_resumed_on_a_fresh_machine_commits_every_row_once() {
    let store = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    let mirror = d.path().join("mirror");
    let prefix = super::store::unique("fresh-machine");
    let job = slow_tabular_job(
        &store,
        d.path(),
        &store.url(&format!("{prefix}/")),
        &format!("local_dir: {}", mirror.display()),
    );
    let env = store.env();
    let mut child = spawn_job(&job, &env);
    // Until the bucket holds a few committed mini-batches.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bucket_records(&store, &prefix).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no ledger segment reached the bucket"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let in_bucket = bucket_records(&store, &prefix);
    // Every record the bucket holds names a part the bucket holds, of the recorded size.
    for record in &in_bucket {
        let part = &record["part"];
        let key = format!(
            "{prefix}/.parallel_run/staging/parts/{}",
            part["file"].as_str().unwrap()
        );
        let bytes = store
            .get(&key)
            .unwrap_or_else(|| panic!("{key} is missing"));
        assert_eq!(bytes.len() as u64, part["bytes"].as_u64().unwrap(), "{key}");
    }
    std::fs::remove_dir_all(&mirror).unwrap();

    let resumed = cli_env(&["run", job.to_str().unwrap(), "--quiet", "--resume"], &env);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed.stderr.contains("ledger record(s) restored from"),
        "{resumed:?}"
    );
    assert!(
        resumed.stderr.contains("took over the lease"),
        "the killed run's lease (a process gone on this machine): {resumed:?}"
    );
    let text = String::from_utf8(
        store
            .get(&format!("{prefix}/parallel_run_step.txt"))
            .unwrap(),
    )
    .unwrap();
    let s = summary(&mirror);
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(
        s["mini_batches_skipped"].as_u64().unwrap(),
        in_bucket.len() as u64,
        "{s}"
    );
    assert_eq!(s["mini_batches_succeeded"], s["mini_batches_total"], "{s}");
    assert_eq!(s["items_succeeded"], 800, "{s}");
    assert_eq!(s["output_rows"], 800, "{s}");

    // A clean run of the same job into another prefix: the same rows.
    let clean_prefix = format!("{prefix}-clean");
    let clean_job = d.path().join("clean.yaml");
    std::fs::write(
        &clean_job,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace(&format!("{prefix}/"), &format!("{clean_prefix}/"))
            .replace(
                &mirror.display().to_string(),
                &d.path().join("clean-mirror").display().to_string(),
            ),
    )
    .unwrap();
    let clean = run_env(&clean_job, &env);
    assert_eq!(clean.code, 0, "{clean:?}");
    let clean_text = String::from_utf8(
        store
            .get(&format!("{clean_prefix}/parallel_run_step.txt"))
            .unwrap(),
    )
    .unwrap();
    let sorted = |t: &str| {
        let mut rows: Vec<(i64, String)> = t
            .lines()
            .map(|l| (l.split(' ').next().unwrap().parse().unwrap(), l.to_string()))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(sorted(&text), sorted(&clean_text));
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
    // Committed with nothing failed: the bucket's parts and the lease are gone, the ledger
    // stays with the logs.
    assert!(store.list(&format!("{prefix}/.parallel_run/")).is_empty());
    assert!(store
        .get(&format!("{prefix}/logs/ledger/records.jsonl"))
        .is_some());
}
