//! Helpers shared by the integration tests: sample data, job files, running the CLI.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// The reference-like schema: id, key, f0, text.
pub fn sample_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("f0", DataType::Float64, false),
        Field::new("text", DataType::Utf8, false),
    ]))
}

/// Rows `start..start+n` of the sample table.
pub fn sample_batch(start: i64, n: usize) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n as i64).collect();
    RecordBatch::try_new(
        sample_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("k{}", i % 7)),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64 * 0.5),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("row number {i} with some text")),
            )),
        ],
    )
    .unwrap()
}

/// Writes rows `start..start+n` to a Parquet file with the given row-group size.
pub fn write_parquet(path: &Path, start: i64, n: usize, row_group: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), sample_schema(), Some(props)).unwrap();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(4096);
        w.write(&sample_batch(start + done as i64, k)).unwrap();
        done += k;
    }
    w.close().unwrap();
}

/// Writes rows as CSV with a header.
pub fn write_csv(path: &Path, start: i64, n: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(File::create(path).unwrap());
    w.write(&sample_batch(start, n)).unwrap();
}

/// Writes rows as newline-delimited JSON.
pub fn write_json(path: &Path, start: i64, n: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = arrow::json::LineDelimitedWriter::new(File::create(path).unwrap());
    w.write(&sample_batch(start, n)).unwrap();
    w.finish().unwrap();
}

/// A job file in `dir` with the given parallel_run_config lines and the rest of the YAML.
pub fn write_job(dir: &Path, config: &str, rest: &str) -> PathBuf {
    let mut text = String::from("parallel_run_config:\n");
    for line in config.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("  ");
        text.push_str(line.trim());
        text.push('\n');
    }
    text.push_str(rest);
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The outcome of a CLI run.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CliRun {
    fn from(out: Output) -> CliRun {
        CliRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// Runs the `parallel-run` binary with `args`.
pub fn cli(args: &[&str]) -> CliRun {
    cli_in(Path::new("."), args)
}

/// Runs the `parallel-run` binary with `args` in the folder `dir`.
pub fn cli_in(dir: &Path, args: &[&str]) -> CliRun {
    let out = Command::new(env!("CARGO_BIN_EXE_parallel-run"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    CliRun::from(out)
}

/// `parallel-run run JOB --quiet` (plus `extra` args).
pub fn run_job(job: &Path, extra: &[&str]) -> CliRun {
    let mut args = vec!["run", job.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    cli(&args)
}

/// `logs/job_summary.json` of an output folder.
pub fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("logs/job_summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Rows of `processed_mini-batches.csv`, keyed by column name.
pub fn processed(out: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(out.join("logs/sys/job_report/processed_mini-batches.csv"))
        .unwrap();
    let mut reader = arrow::csv::ReaderBuilder::new(Arc::new(Schema::new(
        text.lines()
            .next()
            .unwrap()
            .split(',')
            .map(|c| Field::new(c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )))
    .with_header(true)
    .build(text.as_bytes())
    .unwrap();
    let mut rows = Vec::new();
    for batch in reader.by_ref() {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            let mut row = BTreeMap::new();
            for (i, f) in batch.schema().fields().iter().enumerate() {
                let col = batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                row.insert(
                    f.name().clone(),
                    if col.is_null(r) {
                        String::new()
                    } else {
                        col.value(r).to_string()
                    },
                );
            }
            rows.push(row);
        }
    }
    rows
}

/// Lines of a text file.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `id` values (first space-separated field) of a txt output file, sorted.
pub fn txt_ids(path: &Path) -> Vec<i64> {
    sorted_ids(&std::fs::read_to_string(path).unwrap())
}

/// The `id` values (first space-separated field) of a txt output's text, sorted.
pub fn sorted_ids(text: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = text
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

/// The `id` column of a Parquet file, in file order.
pub fn parquet_ids(path: &Path) -> Vec<i64> {
    let file = File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col =
            arrow::compute::cast(batch.column_by_name("id").unwrap(), &DataType::Int64).unwrap();
        ids.extend(
            col.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .iter()
                .copied(),
        );
    }
    ids
}

/// A Python interpreter with numpy, pandas and pyarrow: `$PARALLEL_RUN_PYTHON`, the repo's
/// `.venv`, or `python3`.
/// The Python of the Azure sample tests: their own requirements (pandas 2, as Azure's
/// samples were written for it): `$PARALLEL_RUN_SAMPLES_PYTHON`, else the repo's
/// `.venv-samples` (made by `.ci/run`).
pub fn samples_python() -> String {
    if let Ok(p) = std::env::var("PARALLEL_RUN_SAMPLES_PYTHON") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-samples/bin/python");
    assert!(
        venv.exists(),
        "the Azure sample tests need {} (pandas 2, numpy, pyarrow): run `bash .ci/run` once, or \
         `python3 -m venv .venv-samples && .venv-samples/bin/pip install 'pandas<3' numpy pyarrow`",
        venv.display()
    );
    venv.display().to_string()
}

pub fn python() -> String {
    if let Ok(p) = std::env::var("PARALLEL_RUN_PYTHON") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return venv.display().to_string();
    }
    "python3".to_string()
}
