//! Mini-batch cutting through the whole engine: sizes, splitting, stable ids.

use std::collections::BTreeMap;

use crate::common::*;

fn ids_to_rows(out: &std::path::Path) -> BTreeMap<String, (String, String)> {
    processed(out)
        .into_iter()
        .map(|r| {
            (
                r["mini_batch_id"].clone(),
                (r["rows"].clone(), r["total_items"].clone()),
            )
        })
        .collect()
}

#[test]
fn one_big_file_with_one_row_group_is_split() {
    let dir = tempfile::tempdir().unwrap();
    // ~40 bytes per row: 30,000 rows is about 1.2 MB in one row group.
    write_parquet(&dir.path().join("big.parquet"), 0, 30_000, 1_000_000);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 64KB",
        "inputs:\n  - {name: big, path: big.parquet, format: parquet}\noutput: out\noutput_format: parquet\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = dir.path().join("out");
    let rows = processed(&out);
    assert!(
        rows.len() >= 10,
        "expected many mini-batches, got {}",
        rows.len()
    );
    // Every mini-batch but the last holds about 64 KiB of rows.
    let bytes_per_row = {
        let b = sample_batch(0, 30_000);
        arrow::array::RecordBatch::get_array_memory_size(&b) as f64 / 30_000.0
    };
    let mut sizes: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| {
            let (a, b) = r["rows"].split_once("..").unwrap();
            let start: u64 = a.parse().unwrap();
            let end: u64 = b.parse().unwrap();
            (start, (end - start) as f64 * bytes_per_row)
        })
        .collect();
    sizes.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    for (_, size) in &sizes[..sizes.len() - 1] {
        assert!(
            *size > 0.5 * 65536.0 && *size < 2.0 * 65536.0,
            "mini-batch of {size} bytes is far from 64 KiB"
        );
    }
    // Contiguous, complete, no empty mini-batch.
    let mut expected_start = 0;
    let mut ranges: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            let (a, b) = r["rows"].split_once("..").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    ranges.sort();
    for (a, b) in ranges {
        assert_eq!(a, expected_start);
        assert!(b > a, "empty mini-batch");
        expected_start = b;
    }
    assert_eq!(expected_start, 30_000);
    let mut ids = parquet_ids(&out.join("parallel_run_step.parquet"));
    ids.sort();
    assert_eq!(ids, (0..30_000).collect::<Vec<_>>());
}

#[test]
fn ids_are_stable_across_runs_and_worker_counts() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        write_parquet(
            &dir.path().join(format!("in/part-{i}.parquet")),
            i * 5_000,
            5_000,
            1_500,
        );
    }
    let mut maps = Vec::new();
    for (n, workers) in [1, 3, 3].iter().enumerate() {
        let out = format!("out{n}");
        let job = write_job(
            dir.path(),
            &format!("entry_script: rust:echo\nerror_threshold: 0\noutput_action: summary_only\nnode_count: 1\nprocess_count_per_node: {workers}\nmini_batch_size: 50KB"),
            &format!("inputs:\n  - {{name: rows, path: in, format: parquet}}\noutput: {out}\n"),
        );
        let run = run_job(&job, &[]);
        assert_eq!(run.code, 0, "{run:?}");
        maps.push(ids_to_rows(&dir.path().join(out)));
    }
    assert!(maps[0].len() > 5);
    assert_eq!(maps[0], maps[1]);
    assert_eq!(maps[1], maps[2]);
}

#[test]
fn small_files_are_joined_into_one_mini_batch() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write_parquet(
            &dir.path().join(format!("in/f{i}.parquet")),
            i * 100,
            100,
            100,
        );
    }
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2",
        "inputs:\n  - {name: rows, path: in, format: parquet}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = processed(&dir.path().join("out"));
    assert_eq!(
        rows.len(),
        1,
        "500 small rows fit one 1 MiB mini-batch: {rows:?}"
    );
    assert_eq!(rows[0]["total_items"], "500");
    assert_eq!(
        txt_ids(&dir.path().join("out/parallel_run_step.txt")),
        (0..500).collect::<Vec<_>>()
    );
}

#[test]
fn csv_and_json_inputs_are_read() {
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("rows.csv"), 0, 300);
    write_json(&dir.path().join("rows.jsonl"), 300, 200);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 4KB",
        "inputs:\n  - {name: c, path: rows.csv, format: csv}\n  - {name: j, path: rows.jsonl, format: json}\noutput: out\noutput_format: csv\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let s = summary(&dir.path().join("out"));
    assert_eq!(s["items_total"], 500);
    assert_eq!(s["items_succeeded"], 500);
    let text = std::fs::read_to_string(dir.path().join("out/parallel_run_step.csv")).unwrap();
    assert!(text.starts_with("id,key,f0,text\n"), "{}", &text[..60]);
    assert_eq!(text.lines().count(), 501);
    // Ids carry the input ordinal: both inputs are in the report.
    let inputs: std::collections::BTreeSet<String> = processed(&dir.path().join("out"))
        .into_iter()
        .map(|r| r["input"].clone())
        .collect();
    assert_eq!(
        inputs,
        ["c".to_string(), "j".to_string()].into_iter().collect()
    );
}

#[test]
fn file_dataset_gives_n_files_per_mini_batch() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..25 {
        let p = dir.path().join(format!("docs/sub{}/doc{i:02}.txt", i % 2));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("document {i}")).unwrap();
    }
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 10",
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out\noutput_format: csv\npreserve_order: true\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = processed(&dir.path().join("out"));
    let mut items: Vec<String> = rows.iter().map(|r| r["total_items"].clone()).collect();
    items.sort();
    assert_eq!(items, ["10", "10", "5"]);
    let text = std::fs::read_to_string(dir.path().join("out/parallel_run_step.csv")).unwrap();
    let paths: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(paths.len(), 25);
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(
        paths, sorted,
        "files are listed in sorted path order and preserve_order keeps it"
    );
}

#[test]
fn a_glob_that_matches_nothing_names_the_input_and_the_pattern() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("in/a.parquet"), 0, 10, 10);
    write_csv(&dir.path().join("in/b.csv"), 0, 10);
    std::fs::write(dir.path().join("in/c.txt"), "x").unwrap();
    for (format, pattern) in [
        ("parquet", "in/*.parq"),
        ("csv", "in/*.tsv"),
        ("json", "in/*/*.jsonl"),
        ("files", "in/*.wav"),
    ] {
        let job = write_job(
            dir.path(),
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1",
            &format!(
                "inputs:\n  - {{name: rows, path: \"{pattern}\", format: {format}}}\noutput: out\n"
            ),
        );
        for run in [
            cli(&["validate", job.to_str().unwrap()]),
            run_job(&job, &[]),
        ] {
            assert_eq!(run.code, 2, "{format}: {run:?}");
            for words in [
                "input \"rows\"",
                pattern,
                "matches no files",
                "check the pattern",
            ] {
                assert!(
                    run.stderr.contains(words),
                    "{format}: {words:?} in {}",
                    run.stderr
                );
            }
            assert!(!run.stderr.contains("ending in \"\""), "{}", run.stderr);
        }
    }
}
