//! Retries, timeouts, crashes and the three thresholds.

use crate::common::*;

/// 10 mini-batches of 100 rows (ids 0..1000), 2 workers, output csv.
fn job(dir: &std::path::Path, extra_config: &str, arguments: &str) -> std::path::PathBuf {
    for i in 0..10 {
        write_parquet(&dir.join(format!("in/p{i}.parquet")), i * 100, 100, 100);
    }
    write_job(
        dir,
        &format!("entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\n{extra_config}"),
        &format!("inputs:\n  - {{name: rows, path: in, format: parquet}}\noutput: out\noutput_format: csv\narguments: [{arguments}]\n"),
    )
}

fn csv_ids(dir: &std::path::Path) -> Vec<i64> {
    let text = std::fs::read_to_string(dir.join("out/parallel_run_step.csv")).unwrap();
    let mut ids: Vec<i64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_retried_mini_batch_succeeds_without_duplicate_rows() {
    let dir = tempfile::tempdir().unwrap();
    // mini_batch_size 1 byte: one row per mini-batch... too many; use the file rows instead.
    let job = job(
        dir.path(),
        "error_threshold: 0\nmini_batch_size: 2KB",
        "--fail-ids, '150', --fail-tries, '2', --drop-ids, ''",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        csv_ids(dir.path()),
        (0..1000).collect::<Vec<_>>(),
        "every row exactly once"
    );
    let rows = processed(&dir.path().join("out"));
    let retried: Vec<_> = rows.iter().filter(|r| r["tries"] != "1").collect();
    assert_eq!(retried.len(), 1, "{rows:?}");
    assert_eq!(retried[0]["tries"], "3");
    assert_eq!(retried[0]["status"], "SUCCEEDED");
    let events = std::fs::read_to_string(dir.path().join("out/logs/sys/events.txt")).unwrap();
    assert!(events.contains("failing on purpose"), "{events}");
}

fn failing_items(dir: &std::path::Path, config: &str, args: &str) -> (CliRun, serde_json::Value) {
    let job = job(dir, config, args);
    let run = run_job(&job, &[]);
    let s = summary(&dir.join("out"));
    (run, s)
}

#[test]
fn error_threshold_aborts_exactly_when_exceeded() {
    // Rows 5 and 6 are dropped: 2 failed items.
    let args = "--drop-ids, '5,6'";
    let d = tempfile::tempdir().unwrap();
    let (run, s) = failing_items(d.path(), "error_threshold: 2\nmini_batch_size: 2KB", args);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(s["items_failed"], 2);
    let d = tempfile::tempdir().unwrap();
    let (run, s) = failing_items(d.path(), "error_threshold: 1\nmini_batch_size: 2KB", args);
    assert_eq!(run.code, 42, "{run:?}");
    assert_eq!(s["status"], "failed");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("error_threshold") && reason.contains("over by 1"),
        "{reason}"
    );
    assert!(
        !d.path().join("out/parallel_run_step.csv").exists(),
        "no final file after an abort"
    );
    assert!(
        !d.path().join("out/.parallel_run_step.csv.tmp").exists(),
        "not even its temporary copy"
    );
    let result = std::fs::read_to_string(d.path().join("out/logs/job_result.txt")).unwrap();
    assert!(
        result.contains("staging"),
        "job_result names where the parts are: {result}"
    );
    let d = tempfile::tempdir().unwrap();
    let (run, _) = failing_items(d.path(), "error_threshold: -1\nmini_batch_size: 2KB", args);
    assert_eq!(run.code, 0, "-1 disables: {run:?}");
}

#[test]
fn allowed_failed_count_aborts_exactly_when_exceeded() {
    // ids 50 and 950 fail in every try: two failed mini-batches.
    let args = "--fail-ids, '50,950'";
    let d = tempfile::tempdir().unwrap();
    let (run, s) = failing_items(
        d.path(),
        "error_threshold: -1\nallowed_failed_count: 2\nrun_max_try: 1\nmini_batch_size: 2KB",
        args,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(s["mini_batches_failed"], 2);
    let d = tempfile::tempdir().unwrap();
    let (run, s) = failing_items(
        d.path(),
        "error_threshold: -1\nallowed_failed_count: 1\nrun_max_try: 1\nmini_batch_size: 2KB",
        args,
    );
    assert_eq!(run.code, 42, "{run:?}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("allowed_failed_count"),
        "{s}"
    );
    let d = tempfile::tempdir().unwrap();
    let (run, _) = failing_items(
        d.path(),
        "error_threshold: -1\nallowed_failed_count: -1\nrun_max_try: 1\nmini_batch_size: 2KB",
        args,
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn allowed_failed_percent_is_checked_against_all_mini_batches() {
    let args = "--fail-ids, '50,950'";
    let d = tempfile::tempdir().unwrap();
    let (run, s) = failing_items(
        d.path(),
        "error_threshold: -1\nallowed_failed_percent: 100\nrun_max_try: 1\nmini_batch_size: 2KB",
        args,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(s["mini_batches_failed"], 2);
    let total = s["mini_batches_total"].as_u64().unwrap() as f64;
    let exact = 200.0 / total;
    let d = tempfile::tempdir().unwrap();
    let (run, _) = failing_items(d.path(), &format!("error_threshold: -1\nallowed_failed_percent: {exact}\nrun_max_try: 1\nmini_batch_size: 2KB"), args);
    assert_eq!(run.code, 0, "exactly at the limit is allowed: {run:?}");
    let d = tempfile::tempdir().unwrap();
    let (run, s) = failing_items(
        d.path(),
        &format!(
            "error_threshold: -1\nallowed_failed_percent: {}\nrun_max_try: 1\nmini_batch_size: 2KB",
            exact - 0.01
        ),
        args,
    );
    assert_eq!(run.code, 42, "{run:?}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("allowed_failed_percent"),
        "{s}"
    );
}

#[test]
fn a_timeout_fails_the_try_and_replaces_the_worker() {
    let d = tempfile::tempdir().unwrap();
    let job = job(
        d.path(),
        "error_threshold: -1\nrun_invocation_timeout: 1\nrun_max_try: 2\nmini_batch_size: 2KB",
        "--sleep-ms, '2500', --sleep-ids, '250'",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = processed(&d.path().join("out"));
    let timed_out: Vec<_> = rows
        .iter()
        .filter(|r| r["status"] == "RUN_TIMEOUT")
        .collect();
    assert_eq!(timed_out.len(), 1, "{rows:?}");
    assert_eq!(timed_out[0]["tries"], "2");
    assert!(
        timed_out[0]["error_message"].contains("did not finish in 1 seconds"),
        "{:?}",
        timed_out[0]
    );
    let items: u64 = timed_out[0]["total_items"].parse().unwrap();
    assert_eq!(summary(&d.path().join("out"))["items_failed"], items);
}

#[test]
fn a_crash_is_retried() {
    let d = tempfile::tempdir().unwrap();
    let job = job(
        d.path(),
        "error_threshold: -1\nrun_max_try: 2\nmini_batch_size: 2KB",
        "--panic-ids, '420'",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = processed(&d.path().join("out"));
    let crashed: Vec<_> = rows
        .iter()
        .filter(|r| r["status"] == "PROCESS_CRASHED")
        .collect();
    assert_eq!(crashed.len(), 1, "{rows:?}");
    assert!(
        crashed[0]["error_message"].contains("panic"),
        "{:?}",
        crashed[0]
    );
}

#[test]
fn init_failure_stops_the_job() {
    let d = tempfile::tempdir().unwrap();
    let job = job(
        d.path(),
        "error_threshold: -1\nmini_batch_size: 2KB",
        "--init-fail",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let s = summary(&d.path().join("out"));
    assert!(
        s["reason"].as_str().unwrap().contains("init() failed"),
        "{s}"
    );
    assert_eq!(s["items_failed"], 0, "init failures are not item failures");
}

#[test]
fn append_row_with_nothing_succeeded_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let job = job(
        d.path(),
        "error_threshold: -1\nrun_max_try: 1\nmini_batch_size: 2KB",
        &format!("--fail-ids, '{}'", ids.join(",")),
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let s = summary(&d.path().join("out"));
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("no succeeded mini-batch item"),
        "{s}"
    );
}

#[test]
fn events_record_every_worker_start_and_init_failures_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_job(&job(dir.path(), "error_threshold: 0", ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let events = std::fs::read_to_string(dir.path().join("out/logs/sys/events.txt")).unwrap();
    for process in ["process000", "process001"] {
        assert!(
            events.contains(&format!("{process}: worker started on node 0 and ready")),
            "a clean run records each worker's start: {events}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let run = run_job(&job(dir.path(), "error_threshold: 0", "--init-fail"), &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let events = std::fs::read_to_string(dir.path().join("out/logs/sys/events.txt")).unwrap();
    assert!(events.contains("init() failed: "), "{events}");
    assert!(
        !events.contains("init() failed: init() failed"),
        "the stage is said once: {events}"
    );
}

/// job_result.txt names every distinct error of a failed mini-batch's tries: the cause is often
/// in the first try (a crash) while the last one says something else.
#[test]
fn job_result_shows_every_distinct_error_of_the_tries() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("in.parquet"), 0, 50, 50);
    std::fs::write(
        dir.path().join("entry.py"),
        r#"
import os
def run(mini_batch, mini_batch_context):
    if mini_batch_context.attempt == 1:
        os._exit(3)
    raise ValueError("model not loaded after restart")
"#,
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: -1\noutput_action: summary_only\nnode_count: 1\nprocess_count_per_node: 1\nrun_max_try: 3", python()),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let result = std::fs::read_to_string(dir.path().join("out/logs/job_result.txt")).unwrap();
    assert!(
        result.contains("ValueError: model not loaded after restart"),
        "{result}"
    );
    assert!(
        result.contains("try 1 failed differently") && result.contains("exit code 3"),
        "{result}"
    );
}

#[test]
fn counts_after_an_abort_agree_everywhere() {
    // 2,000 rows in one file, about 100 mini-batches; the early ones fail, so the job stops
    // long before the input is cut. Not --quiet: the console's lines are checked too.
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 2_000, 500);
    let fail: Vec<String> = (0..200).step_by(10).map(|i| i.to_string()).collect();
    let job = write_job(
        d.path(),
        "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nerror_threshold: 5\nrun_max_try: 1\nmini_batch_size: 1KB",
        &format!(
            "inputs:\n  - {{name: rows, path: in.parquet, format: parquet}}\noutput: out\noutput_format: csv\narguments: [--fail-ids, '{}']\n",
            fail.join(",")
        ),
    );
    let run = cli(&["run", job.to_str().unwrap()]);
    assert_eq!(run.code, 42, "{run:?}");
    let out = d.path().join("out");
    let s = summary(&out);
    let n = |key: &str| s[key].as_u64().unwrap();
    assert_eq!(
        n("items_total"),
        2_000,
        "exact from the Parquet footer: {s}"
    );
    assert_eq!(s["items_total_exact"], true);
    assert_eq!(s["mini_batches_total_exact"], false, "{s}");
    let total = n("mini_batches_total");
    assert!(total < 50, "the job stopped early: {s}");
    let (done, items_processed) = (n("mini_batches_processed"), n("items_processed"));
    let (succeeded, failed) = (n("items_succeeded"), n("items_failed"));
    let failed_mini_batches = n("mini_batches_failed");
    assert_eq!(succeeded + failed, items_processed);
    assert_eq!(n("mini_batches_succeeded") + failed_mini_batches, done);

    let sentence = format!(
        "There are at least {total} mini batches (input not fully read) with 2000 items. \
         Processed {done} mini batches containing {items_processed} items, {succeeded} \
         succeeded, {failed} failed. The error threshold is 5."
    );
    let reason = format!("error_threshold exceeded: {failed} items failed, 5 allowed");
    let result = std::fs::read_to_string(out.join("logs/job_result.txt")).unwrap();
    for (what, text) in [("job_result.txt", &result), ("stderr", &run.stderr)] {
        assert!(
            text.contains(&sentence),
            "{what} lacks {sentence:?}:\n{text}"
        );
        assert!(text.contains(&reason), "{what} lacks {reason:?}:\n{text}");
    }
    assert!(s["reason"].as_str().unwrap().starts_with(&reason), "{s}");
    let progress = format!("Processed {done} of at least {total} mini batches in ");
    let tail = format!(
        "{succeeded} items succeeded, {failed} failed, {failed_mini_batches} mini batches failed."
    );
    let overview = std::fs::read_to_string(out.join("logs/job_progress_overview.txt")).unwrap();
    for (what, text) in [
        ("job_progress_overview.txt", &overview),
        ("stderr", &run.stderr),
    ] {
        assert!(
            text.contains(&progress) && text.contains(&tail),
            "{what} lacks {progress:?} ... {tail:?}:\n{text}"
        );
    }
    let rows = processed(&out);
    assert_eq!(rows.len() as u64, done, "{rows:?}");
    let sum = |key: &str| {
        rows.iter()
            .map(|r| r[key].parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("failed_items"), failed);
    assert_eq!(sum("succeeded_items"), succeeded);
    assert_eq!(
        rows.iter().filter(|r| r["status"] != "SUCCEEDED").count() as u64,
        failed_mini_batches
    );
}
