//! Azure MLTable inputs: `read_delimited` options, columns from the file paths
//! (`include_path_column`, `extract_columns_from_partition_format`) feeding `partition_keys`,
//! and options that are refused. (Data on object storage: `object_store::transfer`.)

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::*;

/// A `rust:echo` job (every row comes back as it is) over the MLTable folder `mltable`,
/// written to `out/` as Parquet in mini-batch order.
fn echo_mltable_job(dir: &Path, mltable: &str, config: &str) -> PathBuf {
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\n{config}"
        ),
        &format!(
            "inputs:\n  - {{name: table, path: {mltable}, format: mltable}}\noutput: out\noutput_format: parquet\npreserve_order: true\n"
        ),
    )
}

/// The output's columns, each as text (`<null>` for a null), by name in file order.
fn output_columns(dir: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let file = File::open(dir.join("out/parallel_run_step.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let names = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut columns = vec![Vec::new(); schema.fields().len()];
    for batch in &batches {
        for (i, column) in columns.iter_mut().enumerate() {
            let text = arrow::compute::cast(batch.column(i), &DataType::Utf8).unwrap();
            let text = text.as_string::<i32>();
            for r in 0..text.len() {
                column.push(if text.is_null(r) {
                    "<null>".to_string()
                } else {
                    text.value(r).to_string()
                });
            }
        }
    }
    (names, columns)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Tab-separated files without a header: columns `Column1..N` as Azure names them, empty
/// fields as empty strings, and the `Path` column naming each row's file.
#[test]
fn delimited_options_shape_the_table() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(&dir.join("table/data/part-0.tsv"), "1\tx\t\n2\t\tz\n");
    write(&dir.join("table/data/part-1.tsv"), "3\ty\tw\n");
    write(
        &dir.join("table/MLTable"),
        "paths:\n  - pattern: ./data/*.tsv\ntransformations:\n  - read_delimited:\n      delimiter: '\\t'\n      header: no_header\n      encoding: utf8\n      empty_as_string: true\n      include_path_column: true\n",
    );
    let job = echo_mltable_job(dir, "table", "mini_batch_size: 1KB");
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let (names, columns) = output_columns(dir);
    assert_eq!(names, ["Column1", "Column2", "Column3", "Path"]);
    assert_eq!(columns[0], ["1", "2", "3"]);
    assert_eq!(columns[1], ["x", "", "y"]);
    assert_eq!(columns[2], ["", "z", "w"]);
    let part = |i: usize| {
        dir.join(format!("table/data/part-{i}.tsv"))
            .display()
            .to_string()
    };
    assert_eq!(columns[3], [part(0), part(0), part(1)]);

    // The same files without empty_as_string: empty fields are null, as on Azure.
    write(
        &dir.join("table/MLTable"),
        "paths:\n  - pattern: ./data/*.tsv\ntransformations:\n  - read_delimited: {delimiter: \"\\t\", header: no_header}\n",
    );
    let run = run_job(&job, &["--overwrite"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (names, columns) = output_columns(dir);
    assert_eq!(names, ["Column1", "Column2", "Column3"]);
    assert_eq!(columns[1], ["x", "<null>", "y"]);
}

/// `header: from_first_file`: the first file's first line names the columns; every line of
/// the other files is data. Semicolon-separated, with keep_columns on top.
#[test]
fn from_first_file_reads_the_other_files_whole() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(
        &dir.join("table/a.csv"),
        "id;name;score\n1;ann;0.5\n2;bob;0.25\n",
    );
    write(&dir.join("table/b.csv"), "3;cy;1.5\n4;dee;2\n");
    write(
        &dir.join("table/MLTable"),
        "type: mltable\npaths:\n  - folder: ./\ntransformations:\n  - read_delimited:\n      delimiter: ';'\n      header: from_first_file\n  - keep_columns: [id, name]\n",
    );
    let job = echo_mltable_job(dir, "table", "mini_batch_size: 1KB");
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let (names, columns) = output_columns(dir);
    assert_eq!(names, ["id", "name"]);
    assert_eq!(columns[0], ["1", "2", "3", "4"]);
    assert_eq!(columns[1], ["ann", "bob", "cy", "dee"]);
}

/// A partition step's output, one folder per `{Store}/{Brand}`, read through an MLTable whose
/// `extract_columns_from_partition_format` makes the folders columns: `partition_keys:
/// [Store, Brand]` then gives one mini-batch per folder, whatever the files hold.
#[test]
fn a_partition_steps_output_feeds_partition_keys() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut expected = Vec::new();
    for store in ["1000", "1001", "1002"] {
        for brand in ["dominicks", "tropicana"] {
            write(
                &dir.join(format!("sales/{store}/{brand}/result.csv")),
                &format!("week,qty\n1,{store}\n2,{store}\n"),
            );
            expected.push(format!("{{\"Store\":\"{store}\",\"Brand\":\"{brand}\"}}"));
        }
    }
    // Not data: left out by the format (and by the folder's .csv rule).
    write(&dir.join("sales/1000/_SUCCESS"), "");
    write(
        &dir.join("sales/MLTable"),
        "paths:\n  - folder: ./\ntransformations:\n  - read_delimited\n  - extract_columns_from_partition_format:\n      partition_format: /sales/{Store}/{Brand}/\n",
    );
    let job = echo_mltable_job(dir, "sales", "partition_keys: [Store, Brand]");
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut got: Vec<String> = processed(&dir.join("out"))
        .iter()
        .map(|r| r["partition_key_value"].replace(' ', ""))
        .collect();
    got.sort();
    assert_eq!(got, expected);
    let (names, columns) = output_columns(dir);
    assert_eq!(names, ["week", "qty", "Store", "Brand"]);
    assert_eq!(columns[0].len(), 12);
    // Each row's Store column is its folder's, which the test wrote into qty too.
    assert_eq!(columns[1], columns[2]);
}

/// Options that cannot be honoured fail `validate` and `run` with exit 2, naming the MLTable
/// file, the option and its value.
#[test]
fn unsupported_options_are_named_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(&dir.join("table/a.csv"), "id\n1\n");
    let job = echo_mltable_job(dir, "table", "");
    for (options, named) in [
        ("encoding: latin1", "latin1"),
        (
            "header: all_files_different_headers",
            "all_files_different_headers",
        ),
        ("delimiter: ';;'", ";;"),
    ] {
        write(
            &dir.join("table/MLTable"),
            &format!(
                "paths:\n  - file: ./a.csv\ntransformations:\n  - read_delimited: {{{options}}}\n"
            ),
        );
        for command in ["validate", "run"] {
            let run = cli(&[command, job.to_str().unwrap()]);
            assert_eq!(run.code, 2, "{options} ({command}): {run:?}");
            let key = options.split(':').next().unwrap();
            assert!(
                run.stderr.contains("MLTable")
                    && run.stderr.contains(&format!("read_delimited.{key}"))
                    && run.stderr.contains(named),
                "{options} ({command}): {run:?}"
            );
        }
    }
    // A partition_format that matches none of the files says so, with an example path.
    write(
        &dir.join("table/MLTable"),
        "paths:\n  - folder: ./\ntransformations:\n  - read_delimited\n  - extract_columns_from_partition_format: {partition_format: '{Store}/{Brand}/*.csv'}\n",
    );
    let run = cli(&["validate", job.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("matches none") && run.stderr.contains("partition_format"),
        "{run:?}"
    );
}
