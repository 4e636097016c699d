//! The three output formats, summary_only, file names and order.

use crate::common::*;

fn job(dir: &std::path::Path, config: &str, rest: &str) -> std::path::PathBuf {
    write_parquet(&dir.join("in.parquet"), 0, 2_000, 300);
    write_job(
        dir,
        &format!("entry_script: rust:echo\nerror_threshold: 0\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 8KB\n{config}"),
        &format!("inputs:\n  - {{name: rows, path: in.parquet, format: parquet}}\noutput: out\n{rest}"),
    )
}

#[test]
fn txt_is_prs_format() {
    let d = tempfile::tempdir().unwrap();
    let run = run_job(&job(d.path(), "output_action: append_row", ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines = lines(&d.path().join("out/parallel_run_step.txt"));
    assert_eq!(lines.len(), 2_000);
    let row7 = lines.iter().find(|l| l.starts_with("7 ")).unwrap();
    // Space-separated, no header, text with spaces quoted like pandas' to_csv(sep=" ").
    assert_eq!(row7, "7 k0 3.5 \"row number 7 with some text\"");
}

#[test]
fn txt_list_results_are_one_line_each() {
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &job(
            d.path(),
            "output_action: append_row",
            "arguments: [--as-list]\n",
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let mut ids: Vec<i64> = lines(&d.path().join("out/parallel_run_step.txt"))
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..2000).collect::<Vec<_>>());
}

#[test]
fn csv_has_a_header_and_parquet_is_typed_and_ordered() {
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &job(
            d.path(),
            "output_action: append_row",
            "output_format: csv\n",
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines = lines(&d.path().join("out/parallel_run_step.csv"));
    assert_eq!(lines[0], "id,key,f0,text");
    assert_eq!(lines.len(), 2_001);

    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &job(
            d.path(),
            "output_action: append_row",
            "output_format: parquet\npreserve_order: true\n",
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let path = d.path().join("out/parallel_run_step.parquet");
    assert_eq!(
        parquet_ids(&path),
        (0..2000).collect::<Vec<_>>(),
        "preserve_order writes mini-batch order"
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&path).unwrap(),
    )
    .unwrap();
    let schema = reader.schema().clone();
    assert_eq!(
        schema.field_with_name("f0").unwrap().data_type(),
        &arrow::datatypes::DataType::Float64
    );
}

#[test]
fn append_row_file_name_is_used() {
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &job(
            d.path(),
            "output_action: append_row\nappend_row_file_name: scores.txt",
            "",
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&d.path().join("out/scores.txt")).len(), 2_000);
    assert!(
        !d.path().join("out/.parallel_run/staging").exists(),
        "staging is removed after commit"
    );
}

#[test]
fn summary_only_writes_no_output_but_counts() {
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &job(
            d.path(),
            "output_action: summary_only",
            "arguments: [--drop-ids, '3']\n",
        ),
        &[],
    );
    // error_threshold 0 with one dropped row: exceeded.
    assert_eq!(run.code, 42, "{run:?}");
    let d = tempfile::tempdir().unwrap();
    let run = run_job(&job(d.path(), "output_action: SUMMARY_ONLY", ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!d.path().join("out/parallel_run_step.txt").exists());
    let s = summary(&d.path().join("out"));
    assert_eq!(s["items_succeeded"], 2000);
    assert_eq!(s["status"], "succeeded");
    assert!(s["output"].is_null());
}

#[test]
fn report_files_follow_prs() {
    let d = tempfile::tempdir().unwrap();
    let run = run_job(&job(d.path(), "output_action: append_row", ""), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = d.path().join("out");
    let s = summary(&out);
    for key in [
        "status",
        "reason",
        "mini_batches_total",
        "mini_batches_succeeded",
        "mini_batches_failed",
        "items_total",
        "items_succeeded",
        "items_failed",
        "tries",
        "elapsed_seconds",
        "output",
    ] {
        assert!(s.get(key).is_some(), "job_summary.json lacks {key}: {s}");
    }
    let result = std::fs::read_to_string(out.join("logs/job_result.txt")).unwrap();
    let total = s["mini_batches_total"].as_u64().unwrap();
    assert!(
        result.contains(&format!("There are {total} mini batches with 2000 items. Processed {total} mini batches containing 2000 items, 2000 succeeded, 0 failed. The error threshold is 0.")),
        "{result}"
    );
    let progress = std::fs::read_to_string(out.join("logs/job_progress_overview.txt")).unwrap();
    assert!(
        progress.starts_with(&format!("Processed {total} of {total} mini batches in ")),
        "{progress}"
    );
    assert_eq!(processed(&out).len() as u64, total);
    assert!(run.stdout.contains("There are"), "{run:?}");
}

/// `n` rows of `id` and a nested column `tags` (a list of ints, null for every 10th row) and
/// `point` (a struct), in one Parquet file.
fn write_nested_parquet(path: &std::path::Path, n: i64) {
    use arrow::array::{ArrayRef, Int64Array, ListArray, StructArray};
    use arrow::datatypes::{DataType, Field, Int32Type};
    use std::sync::Arc;
    let tags = ListArray::from_iter_primitive::<Int32Type, _, _>(
        (0..n).map(|i| (i % 10 != 0).then(|| vec![Some(i as i32), Some(i as i32 + 1)])),
    );
    let point = StructArray::from(vec![(
        Arc::new(Field::new("x", DataType::Int64, true)),
        Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
    )]);
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
        ),
        ("tags", Arc::new(tags) as ArrayRef),
        ("point", Arc::new(point) as ArrayRef),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn nested_columns_are_written_to_csv_as_json_text() {
    for preserve_order in [false, true] {
        let d = tempfile::tempdir().unwrap();
        write_nested_parquet(&d.path().join("nested.parquet"), 500);
        let job = write_job(
            d.path(),
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 4KB",
            &format!("inputs:\n  - {{name: rows, path: nested.parquet, format: parquet}}\noutput: out\noutput_format: csv\npreserve_order: {preserve_order}\n"),
        );
        let run = run_job(&job, &[]);
        assert_eq!(run.code, 0, "preserve_order {preserve_order}: {run:?}");
        let text = std::fs::read_to_string(d.path().join("out/parallel_run_step.csv")).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.remove(0), "id,tags,point");
        assert_eq!(lines.len(), 500);
        assert!(
            lines.contains(&r#"7,"[7,8]","{""x"":7}""#),
            "{:?}",
            &lines[..12]
        );
        assert!(
            lines.contains(&r#"10,,"{""x"":10}""#),
            "a null list is an empty cell"
        );
        assert!(summary(&d.path().join("out"))["status"] == "succeeded");
    }
}

#[test]
fn a_failure_after_the_mini_batches_still_leaves_a_report() {
    let d = tempfile::tempdir().unwrap();
    let job = job(
        d.path(),
        "output_action: append_row",
        "output_format: csv\npreserve_order: true\n",
    );
    // The final file cannot be put in place: a folder holds its name.
    std::fs::create_dir_all(d.path().join("out/parallel_run_step.csv/taken")).unwrap();
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let out = d.path().join("out");
    let s = summary(&out);
    assert_eq!(s["status"], "failed");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("writing the final output file failed")
            && reason.contains("parallel_run_step.csv"),
        "{reason}"
    );
    assert_eq!(s["items_succeeded"], 2000, "every mini batch ran: {s}");
    assert!(s["output"].is_null(), "{s}");
    let result = std::fs::read_to_string(out.join("logs/job_result.txt")).unwrap();
    assert!(
        result.contains("The job failed: every mini batch ran"),
        "{result}"
    );
    assert!(result.contains(".parallel_run/staging"), "{result}");
    assert!(
        run.stderr.contains("writing the final output file failed"),
        "{run:?}"
    );
}

#[test]
fn a_succeeded_job_keeps_its_logs_and_removes_its_work_files() {
    // A Python job: its workers' bootstrap copies and working folders live under
    // .parallel_run/ while it runs.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("docs")).unwrap();
    for i in 0..6 {
        std::fs::write(d.path().join(format!("docs/{i}.txt")), "x").unwrap();
    }
    std::fs::write(
        d.path().join("entry.py"),
        "import os\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n",
    )
    .unwrap();
    let job = write_job(
        d.path(),
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 2", python()),
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = d.path().join("out");
    assert_eq!(lines(&out.join("parallel_run_step.txt")).len(), 6);
    assert!(out.join("logs/job_result.txt").is_file());
    assert!(out.join("logs/user").is_dir(), "the workers' logs stay");
    assert!(
        !out.join(".parallel_run").exists(),
        "work files are removed: {:?}",
        walk(&out.join(".parallel_run"))
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            found.push(e.path());
            found.extend(walk(&e.path()));
        }
    }
    found
}

/// A column that is numbers in one mini-batch and text in another: CSV keeps each value as
/// returned; Parquet (one type per column) fails loudly naming the mini-batch and the value,
/// never writing nulls in their place.
#[test]
fn results_of_different_types_are_never_silently_changed() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 400, 400);
    std::fs::write(
        d.path().join("entry.py"),
        "import pandas as pd\n\
         def run(mini_batch):\n\
         \x20   out = pd.DataFrame({'id': mini_batch['id']})\n\
         \x20   out['score'] = 1 if int(mini_batch['id'].iloc[0]) == 0 else 'n/a'\n\
         \x20   return out\n",
    )
    .unwrap();
    for format in ["csv", "parquet"] {
        let job = write_job(
            d.path(),
            &format!(
                "entry_script: entry.py\nenvironment: {{python: {}}}\nnode_count: 1\n\
                 process_count_per_node: 1\nerror_threshold: 0\noutput_action: append_row\n\
                 mini_batch_size: 2KB",
                python()
            ),
            &format!(
                "inputs:\n  - {{name: t, path: in.parquet, format: parquet}}\noutput: out-{format}\n\
                 output_format: {format}\npreserve_order: true\n"
            ),
        );
        let run = run_job(&job, &[]);
        let out = d.path().join(format!("out-{format}"));
        if format == "csv" {
            assert_eq!(run.code, 0, "{run:?}");
            let text = std::fs::read_to_string(out.join("parallel_run_step.csv")).unwrap();
            let rows: Vec<&str> = text.lines().collect();
            assert_eq!(rows.len(), 401, "{text}");
            assert_eq!(rows[1], "0,1");
            assert_eq!(rows[400], "399,n/a");
        } else {
            assert_ne!(run.code, 0, "{run:?}");
            assert!(
                run.stderr.contains("mini batch 0-1")
                    && run.stderr.contains("score")
                    && run.stderr.contains("n/a"),
                "{run:?}"
            );
            assert!(!out.join("parallel_run_step.parquet").exists());
        }
    }
}
