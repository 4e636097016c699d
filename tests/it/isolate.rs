//! Poison-record isolation (`isolate_failures`), item-level dead letters and
//! `dead_letter_rows`, and how they meet the ledger (--resume, --rerun-failed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;

use crate::common::*;

/// 10,000 rows (ids 0..10000) in one Parquet file, cut in mini-batches of about 110 rows,
/// run by `rust:echo` with `arguments`, csv output in row order.
fn rows_job(dir: &Path, config: &str, arguments: &str) -> PathBuf {
    if !dir.join("in/rows.parquet").exists() {
        write_parquet(&dir.join("in/rows.parquet"), 0, 10_000, 1000);
    }
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\n\
             process_count_per_node: 2\nmini_batch_size: 6KB\nrun_max_try: 1\n{config}"
        ),
        &format!(
            "inputs:\n  - {{name: rows, path: in, format: parquet}}\noutput: out\n\
             output_format: csv\npreserve_order: true\narguments: [{arguments}]\n"
        ),
    )
}

/// The ids of a csv output (first column), in file order.
fn csv_ids(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

/// The rows of a Parquet file, every column as text (null: empty).
fn parquet_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            let mut row = BTreeMap::new();
            for (i, field) in batch.schema().fields().iter().enumerate() {
                let col = arrow::compute::cast(batch.column(i), &DataType::Utf8).unwrap();
                let col = col.as_string::<i32>();
                let text = if col.is_null(r) { "" } else { col.value(r) };
                row.insert(field.name().clone(), text.to_string());
            }
            rows.push(row);
        }
    }
    rows
}

fn dead_letters(out: &Path) -> Vec<BTreeMap<String, String>> {
    parquet_rows(&out.join("logs/failed_items.parquet"))
}

fn ceil_log2(n: u64) -> u64 {
    64 - u64::from((n - 1).leading_zeros())
}

#[test]
fn one_bad_row_in_10000_is_isolated_in_about_14_calls_and_every_good_row_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = rows_job(
        dir.path(),
        "error_threshold: 1\nallowed_failed_count: 1\nisolate_failures: true",
        "--fail-ids, '6173'",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let expected: Vec<i64> = (0..10_000).filter(|id| *id != 6173).collect();
    assert_eq!(csv_ids(&out.join("parallel_run_step.csv")), expected);

    let s = summary(&out);
    assert_eq!(s["items_failed"], 1, "{s}");
    assert_eq!(s["items_succeeded"], 9_999, "{s}");
    assert_eq!(s["mini_batches_failed"], 1, "{s}");
    let failed: Vec<_> = processed(&out)
        .into_iter()
        .filter(|r| r["status"] != "SUCCEEDED")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let items: u64 = failed[0]["total_items"].parse().unwrap();
    let calls = s["bisection_calls"].as_u64().unwrap();
    assert!(
        calls >= 1 && calls <= 2 * ceil_log2(items) && calls <= 16,
        "{calls} bisection calls for {items} rows"
    );
    assert_eq!(
        failed[0]["tries"],
        (1 + calls).to_string(),
        "tries = all calls"
    );
    assert_eq!(failed[0]["failed_items"], "1");
    assert_eq!(
        s["tries"].as_u64().unwrap(),
        s["mini_batches_total"].as_u64().unwrap() + calls
    );

    let letters = dead_letters(&out);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let (mb, item) = (&letters[0], &letters[1]);
    assert_eq!(mb["level"], "mini_batch");
    assert_eq!(mb["error_class"], "RUN_EXCEPTION");
    assert_eq!(mb["row_index"], "");
    assert_eq!(item["level"], "item");
    assert_eq!(item["error_class"], "RUN_EXCEPTION");
    assert!(
        item["mini_batch_id"].starts_with(&format!("{}.", mb["mini_batch_id"])),
        "{item:?}"
    );
    assert_eq!(item["rows_start"], "6173");
    assert_eq!(item["rows_end"], "6174");
    let start: u64 = mb["rows_start"].parse().unwrap();
    assert_eq!(item["row_index"], (6173 - start).to_string());
    assert!(item["message"].contains("failing on purpose"), "{item:?}");
    // The CSV twin has the same rows.
    let csv = lines(&out.join("logs/failed_items.csv"));
    assert_eq!(csv.len(), 3, "{csv:?}");
    assert!(csv[0].starts_with("level,mini_batch_id,input,rows_start,rows_end,row_index,"));

    let events = std::fs::read_to_string(out.join("logs/sys/events.txt")).unwrap();
    assert!(
        events.contains(&format!("bisection made {calls} run() calls"))
            && events.contains(&format!("row {}", 6173 - start)),
        "{events}"
    );
}

#[test]
fn three_bad_rows_in_separate_places_are_isolated_and_only_they_count() {
    let dir = tempfile::tempdir().unwrap();
    // 17 and 40 share a mini-batch; 9999 is in the last one.
    let job = rows_job(
        dir.path(),
        "error_threshold: 3\nisolate_failures: true",
        "--fail-ids, '17,40,9999'",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let expected: Vec<i64> = (0..10_000)
        .filter(|id| ![17, 40, 9999].contains(id))
        .collect();
    assert_eq!(csv_ids(&out.join("parallel_run_step.csv")), expected);
    let s = summary(&out);
    assert_eq!(s["items_failed"], 3, "{s}");
    assert_eq!(s["mini_batches_failed"], 2, "{s}");
    let items: Vec<String> = dead_letters(&out)
        .into_iter()
        .filter(|r| r["level"] == "item")
        .map(|r| r["rows_start"].clone())
        .collect();
    assert_eq!(items, ["17", "40", "9999"]);

    // Without isolation the same job fails: every row of both mini-batches counts.
    let job = rows_job(dir.path(), "error_threshold: 3", "--fail-ids, '17,40,9999'");
    let run = run_job(&job, &["--overwrite"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(summary(&out)["items_failed"].as_u64().unwrap() > 3);
    assert_eq!(summary(&out)["bisection_calls"], 0);
}

/// 1000 rows in 10 files, mini-batches of about 36 rows, one try each.
fn small_job(dir: &Path, config: &str, arguments: &str) -> PathBuf {
    for i in 0..10 {
        write_parquet(&dir.join(format!("in/p{i}.parquet")), i * 100, 100, 100);
    }
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\n\
             process_count_per_node: 2\nmini_batch_size: 2KB\nrun_max_try: 1\n\
             error_threshold: -1\n{config}"
        ),
        &format!(
            "inputs:\n  - {{name: rows, path: in, format: parquet}}\noutput: out\n\
             output_format: csv\narguments: [{arguments}]\n"
        ),
    )
}

#[test]
fn dead_letters_of_a_crash_and_a_timeout_name_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let job = small_job(dir.path(), "isolate_failures: true", "--panic-ids, '420'");
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let letters = dead_letters(&out);
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["error_class"], "PROCESS_CRASHED");
    let item = &letters[1];
    assert_eq!(
        (item["level"].as_str(), item["error_class"].as_str()),
        ("item", "PROCESS_CRASHED")
    );
    assert_eq!(item["rows_start"], "420");
    assert!(item["message"].contains("panic on purpose"), "{item:?}");
    assert_eq!(summary(&out)["items_failed"], 1);
    assert_eq!(csv_ids_sorted(&out).len(), 999);
    let events = std::fs::read_to_string(out.join("logs/sys/events.txt")).unwrap();
    assert!(events.contains("worker replaced"), "{events}");

    // A timeout is bisected only with isolate_timeouts.
    let dir = tempfile::tempdir().unwrap();
    let job = small_job(
        dir.path(),
        "run_invocation_timeout: 1\nisolate_failures: true\nisolate_timeouts: true",
        "--sleep-ms, '1500', --sleep-ids, '250'",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let letters = dead_letters(&out);
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0]["error_class"], "RUN_TIMEOUT");
    let item = &letters[1];
    assert_eq!(item["error_class"], "RUN_TIMEOUT");
    assert_eq!(item["rows_start"], "250");
    assert!(
        item["message"].contains("did not finish in 1 seconds"),
        "{item:?}"
    );
    assert_eq!(csv_ids_sorted(&out).len(), 999);
}

fn csv_ids_sorted(out: &Path) -> Vec<i64> {
    let mut ids = csv_ids(&out.join("parallel_run_step.csv"));
    ids.sort();
    ids
}

#[test]
fn dead_letter_rows_round_trip_as_a_job_input() {
    let dir = tempfile::tempdir().unwrap();
    let job = rows_job(
        dir.path(),
        "error_threshold: -1\nisolate_failures: true",
        "--fail-ids, '17,40,9999'",
    );
    let text = std::fs::read_to_string(&job).unwrap() + "dead_letter_rows: true\n";
    std::fs::write(&job, text).unwrap();
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let failed_rows = dir.path().join("out/failed_rows");
    let mut files: Vec<String> = std::fs::read_dir(&failed_rows)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "one file per failed mini-batch: {files:?}");
    assert!(files.iter().all(|f| f.ends_with(".parquet")), "{files:?}");

    // Fed to a job as its input: exactly the failing rows, with every input column.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let job = write_job(
        &again,
        "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\n\
         process_count_per_node: 1\nerror_threshold: 0",
        &format!(
            "inputs:\n  - {{name: failed, path: {}, format: parquet}}\noutput: out\n\
             output_format: csv\npreserve_order: true\n",
            failed_rows.display()
        ),
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(again.join("out/parallel_run_step.csv")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.remove(0), "id,key,f0,text");
    assert_eq!(
        lines,
        [
            "17,k3,8.5,row number 17 with some text",
            "40,k5,20.0,row number 40 with some text",
            "9999,k3,4999.5,row number 9999 with some text",
        ]
    );

    // Without isolation a failed mini-batch's rows are all written.
    let plain = tempfile::tempdir().unwrap();
    let job = small_job(plain.path(), "isolate_failures: false", "--fail-ids, '420'");
    let text = std::fs::read_to_string(&job).unwrap() + "dead_letter_rows: true\n";
    std::fs::write(&job, text).unwrap();
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = plain.path().join("out");
    let letter = &dead_letters(&out)[0];
    let file = out
        .join("failed_rows")
        .join(format!("{}.parquet", letter["mini_batch_id"]));
    let rows = parquet_rows(&file);
    let (start, end): (i64, i64) = (
        letter["rows_start"].parse().unwrap(),
        letter["rows_end"].parse().unwrap(),
    );
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].parse().unwrap()).collect();
    // One file per input, in order: the row range of input p4 starts at 400.
    assert_eq!(ids.len() as i64, end - start);
    assert!(ids.contains(&420), "{ids:?}");
}

#[test]
fn file_datasets_isolate_the_failing_file_and_list_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    for i in 0..40 {
        std::fs::write(
            dir.path().join(format!("docs/f{i:02}.txt")),
            format!("file {i}"),
        )
        .unwrap();
    }
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1\n\
         process_count_per_node: 2\nmini_batch_size: 8\nrun_max_try: 1\nerror_threshold: 1\n\
         isolate_failures: true",
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out\n\
         arguments: [--fail-paths, f13.txt, --read-files]\ndead_letter_rows: true\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let output = std::fs::read_to_string(out.join("parallel_run_step.txt")).unwrap();
    assert_eq!(output.lines().count(), 39, "{output}");
    assert!(!output.contains("f13.txt"), "{output}");
    let items: Vec<_> = dead_letters(&out)
        .into_iter()
        .filter(|r| r["level"] == "item")
        .collect();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["rows_start"], "13");
    let listed: Vec<PathBuf> = std::fs::read_dir(out.join("failed_rows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let paths = lines(&listed[0]);
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].ends_with("f13.txt"), "{paths:?}");
}

#[test]
fn a_resume_keeps_the_isolated_failure_and_rerun_failed_runs_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let job = rows_job(
        dir.path(),
        "error_threshold: 1\nisolate_failures: true",
        "--fail-ids, '5000'",
    );
    let reference = run_job(&job, &["--output", clean.to_str().unwrap()]);
    assert_eq!(reference.code, 0, "{reference:?}");

    // error_threshold 0: the isolated item stops the job, its good rows committed.
    let job = rows_job(
        dir.path(),
        "error_threshold: 0\nisolate_failures: true",
        "--fail-ids, '5000'",
    );
    let first = run_job(&job, &[]);
    assert_ne!(first.code, 0, "{first:?}");
    let out = dir.path().join("out");
    let ledger = std::fs::read_to_string(out.join("logs/ledger/records.jsonl")).unwrap();
    let failed: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["record"]["status"] != "SUCCEEDED")
        .collect();
    assert_eq!(failed.len(), 1, "{ledger}");
    let id = failed[0]["record"]["id"].as_str().unwrap().to_string();
    assert!(
        failed[0]["part"].is_object(),
        "its good rows are committed: {ledger}"
    );
    assert_eq!(failed[0]["record"]["isolated"].as_array().unwrap().len(), 1);

    // Raising the threshold and resuming: the failed mini-batch is not run again.
    let job = rows_job(
        dir.path(),
        "error_threshold: 1\nisolate_failures: true",
        "--fail-ids, '5000'",
    );
    let resumed = run_job(&job, &["--resume"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let s = summary(&out);
    assert_eq!(s["resumed"], true);
    assert_eq!(s["bisection_calls"], 0, "not bisected again: {s}");
    assert_eq!(s["items_failed"], 1, "{s}");
    let ledger = std::fs::read_to_string(out.join("logs/ledger/records.jsonl")).unwrap();
    let records_of = |id: &str| {
        ledger
            .lines()
            .filter(|l| l.contains(&format!("\"id\":\"{id}\"")))
            .count()
    };
    assert_eq!(records_of(&id), 1, "{ledger}");
    assert_eq!(
        std::fs::read(out.join("parallel_run_step.csv")).unwrap(),
        std::fs::read(clean.join("parallel_run_step.csv")).unwrap(),
        "the same output as a run that was never interrupted"
    );

    // The script is fixed: --rerun-failed runs that mini-batch again, every row once.
    let job = rows_job(
        dir.path(),
        "error_threshold: 0\nisolate_failures: true",
        "--fail-ids, ''",
    );
    let rerun = run_job(&job, &["--rerun-failed", "--force"]);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    assert_eq!(
        csv_ids(&out.join("parallel_run_step.csv")),
        (0..10_000).collect::<Vec<_>>()
    );
    let s = summary(&out);
    assert_eq!(s["mini_batches_rerun"], 1, "{s}");
    assert_eq!(s["items_failed"], 0, "{s}");
}

#[test]
fn a_python_exception_and_os_exit_are_isolated_with_traceback_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("in.parquet"), 0, 1000, 1000);
    std::fs::write(
        dir.path().join("entry.py"),
        r#"
import os

def init():
    pass

def run(mini_batch):
    ids = set(mini_batch["id"])
    if 333 in ids:
        raise ValueError("row 333 is poison")
    if 777 in ids:
        os._exit(3)
    return mini_batch[["id"]]
"#,
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: entry.py\nenvironment: {{python: {}}}\nnode_count: 1\n\
             process_count_per_node: 2\nmini_batch_size: 6KB\nrun_max_try: 1\n\
             error_threshold: 2\noutput_action: append_row\nisolate_failures: true",
            python()
        ),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n\
         output_format: csv\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let expected: Vec<i64> = (0..1000).filter(|id| *id != 333 && *id != 777).collect();
    assert_eq!(csv_ids_sorted(&out), expected);
    let items: Vec<_> = dead_letters(&out)
        .into_iter()
        .filter(|r| r["level"] == "item")
        .collect();
    assert_eq!(items.len(), 2, "{items:?}");
    let (exception, crash) = (&items[0], &items[1]);
    assert_eq!(exception["rows_start"], "333");
    assert_eq!(exception["error_class"], "RUN_EXCEPTION");
    assert!(
        exception["message"].contains("row 333 is poison"),
        "{exception:?}"
    );
    assert!(
        exception["traceback"].contains("ValueError"),
        "{exception:?}"
    );
    assert_eq!(crash["rows_start"], "777");
    assert_eq!(crash["error_class"], "PROCESS_CRASHED");
    assert!(crash["message"].contains("exit code 3"), "{crash:?}");
    assert_eq!(summary(&out)["items_failed"], 2);
}

#[test]
fn rows_that_make_run_return_a_bad_result_are_isolated_and_every_good_row_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("in.parquet"), 0, 1000, 1000);
    // Invalid only when a poison row is present: a dict is no result at all, and a column
    // mixing numbers and text cannot become Arrow.
    std::fs::write(
        dir.path().join("entry.py"),
        r#"
def run(mini_batch):
    ids = set(mini_batch["id"])
    if 333 in ids:
        return {"not": "a result"}
    result = mini_batch[["id"]].astype(object)
    if 777 in ids:
        result.loc[result["id"] == 777, "id"] = "seven hundred seventy-seven"
    return result
"#,
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: entry.py\nenvironment: {{python: {}}}\nnode_count: 1\n\
             process_count_per_node: 2\nmini_batch_size: 6KB\nrun_max_try: 2\n\
             error_threshold: 2\noutput_action: append_row\nisolate_failures: true",
            python()
        ),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n\
         output_format: csv\ndead_letter_rows: true\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let expected: Vec<i64> = (0..1000).filter(|id| *id != 333 && *id != 777).collect();
    assert_eq!(csv_ids_sorted(&out), expected, "every good row once");

    let letters = dead_letters(&out);
    let batches: Vec<_> = letters
        .iter()
        .filter(|r| r["level"] == "mini_batch")
        .collect();
    assert_eq!(batches.len(), 2, "{letters:?}");
    assert!(
        batches
            .iter()
            .all(|r| r["error_class"] == "BAD_RESULT" && r["tries"] != "2"),
        "each failed both tries, then was bisected: {batches:?}"
    );
    let items: Vec<_> = letters.iter().filter(|r| r["level"] == "item").collect();
    assert_eq!(items.len(), 2, "{letters:?}");
    let (dict, mixed) = (&items[0], &items[1]);
    assert_eq!(
        (dict["rows_start"].as_str(), dict["error_class"].as_str()),
        ("333", "BAD_RESULT")
    );
    assert!(dict["message"].contains("returned dict"), "{dict:?}");
    assert_eq!(
        (mixed["rows_start"].as_str(), mixed["error_class"].as_str()),
        ("777", "BAD_RESULT")
    );
    assert!(
        mixed["message"].contains("id Utf8") && mixed["message"].contains("id Int64"),
        "alone, the row's result is a valid text column that does not fit the others': {mixed:?}"
    );
    let s = summary(&out);
    assert_eq!(s["items_failed"], 2, "{s}");
    assert_eq!(s["items_succeeded"], 998, "{s}");
    assert!(s["bisection_calls"].as_u64().unwrap() > 0, "{s}");

    // dead_letter_rows: the two poison rows, with every input column.
    let mut failed: Vec<i64> = std::fs::read_dir(out.join("failed_rows"))
        .unwrap()
        .flat_map(|e| parquet_rows(&e.unwrap().path()))
        .map(|row| row["id"].parse().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, [333, 777]);
}

/// A job over 1000 rows whose Python run() leaves out rows 17 and 40 (it succeeds), with
/// `error_threshold` and `dead_letter_rows: true`.
fn dropping_job(dir: &Path, error_threshold: i64) -> PathBuf {
    if !dir.join("in.parquet").exists() {
        write_parquet(&dir.join("in.parquet"), 0, 1000, 1000);
        std::fs::write(
            dir.join("entry.py"),
            "def run(mini_batch):\n    return mini_batch[~mini_batch[\"id\"].isin([17, 40])][[\"id\"]]\n",
        )
        .unwrap();
    }
    write_job(
        dir,
        &format!(
            "entry_script: entry.py\nenvironment: {{python: {}}}\nnode_count: 1\n\
             process_count_per_node: 2\nmini_batch_size: 6KB\n\
             error_threshold: {error_threshold}\noutput_action: append_row",
            python()
        ),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n\
         output_format: csv\ndead_letter_rows: true\n",
    )
}

#[test]
fn rows_a_succeeding_run_leaves_out_are_failed_items_with_a_dead_letter_and_their_input() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_job(&dropping_job(dir.path(), 2), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let expected: Vec<i64> = (0..1000).filter(|id| *id != 17 && *id != 40).collect();
    assert_eq!(csv_ids_sorted(&out), expected);
    let s = summary(&out);
    assert_eq!(s["items_failed"], 2, "{s}");
    assert_eq!(
        s["mini_batches_failed"], 0,
        "the mini-batch itself succeeded: {s}"
    );

    // One dead letter, for the mini-batch: which rows are missing is not known.
    let letters = dead_letters(&out);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["level"], "mini_batch");
    assert_eq!(letter["error_class"], "MISSING_RESULTS");
    let (start, end): (i64, i64) = (
        letter["rows_start"].parse().unwrap(),
        letter["rows_end"].parse().unwrap(),
    );
    assert!(start <= 17 && 40 < end, "{letter:?}");
    let items = end - start;
    assert!(
        letter["message"].contains(&format!(
            "run() returned {} results for {items} items",
            items - 2
        )),
        "{letter:?}"
    );
    let row = processed(&out)
        .into_iter()
        .find(|r| r["mini_batch_id"] == letter["mini_batch_id"])
        .unwrap();
    assert_eq!(
        (row["status"].as_str(), row["failed_items"].as_str()),
        ("SUCCEEDED", "2")
    );
    assert_eq!(row["error_message"], letter["message"]);

    // dead_letter_rows: the mini-batch's whole input, every column.
    let files: Vec<PathBuf> = std::fs::read_dir(out.join("failed_rows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(format!("{}.parquet", letter["mini_batch_id"])));
    let rows = parquet_rows(&files[0]);
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].parse().unwrap()).collect();
    assert_eq!(ids, (start..end).collect::<Vec<_>>());
    assert_eq!(rows[0].len(), 4, "every input column: {:?}", rows[0]);

    // The missing rows count against error_threshold, as in PRS.
    let run = run_job(&dropping_job(dir.path(), 1), &["--overwrite"]);
    assert_eq!(run.code, 42, "{run:?}");
    let s = summary(&out);
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("error_threshold exceeded: 2 items failed"),
        "{s}"
    );
}
