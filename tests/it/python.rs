//! Python entry scripts, run unchanged through the whole engine: one script per behaviour,
//! each checked on its output rows and its report.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A job over ids 0..n (Parquet, about 100 rows per mini-batch) running `script`.
fn python_job(dir: &Path, script: &str, config: &str, rest: &str, n: usize) -> PathBuf {
    write_parquet(&dir.join("in.parquet"), 0, n, 1_000);
    std::fs::write(dir.join("entry.py"), script).unwrap();
    let python = python();
    write_job(
        dir,
        &format!(
            "entry_script: entry.py\nenvironment: {{python: {python}}}\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 6KB\n{config}"
        ),
        &format!("inputs:\n  - {{name: rows, path: in.parquet, format: parquet}}\noutput: out\n{rest}"),
    )
}

fn out(dir: &Path) -> PathBuf {
    dir.join("out")
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    lines(path)
        .iter()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

const ECHO_DF: &str = r#"
def init():
    pass

def run(mini_batch):
    return mini_batch[["id", "f0"]]
"#;

#[test]
fn dataframe_results_in_every_format() {
    for (format, file) in [
        ("txt", "parallel_run_step.txt"),
        ("csv", "parallel_run_step.csv"),
        ("parquet", "parallel_run_step.parquet"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let job = python_job(
            d.path(),
            ECHO_DF,
            "error_threshold: 0\noutput_action: append_row",
            &format!("output_format: {format}\n"),
            1_000,
        );
        let run = run_job(&job, &[]);
        assert_eq!(run.code, 0, "{format}: {run:?}");
        let path = out(d.path()).join(file);
        match format {
            "txt" => {
                let lines = lines(&path);
                assert_eq!(lines.len(), 1_000);
                // pandas' to_csv(sep=" ", header=False, index=False)
                assert!(lines.contains(&"7 3.5".to_string()), "{:?}", &lines[..5]);
            }
            "csv" => {
                assert_eq!(lines(&path)[0], "id,f0");
                assert_eq!(csv_rows(&path).len(), 1_000);
            }
            _ => {
                let mut ids = parquet_ids(&path);
                ids.sort();
                assert_eq!(ids, (0..1000).collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn list_and_numpy_results() {
    let list = "def run(mini_batch):\n    return [f'row {i}' for i in mini_batch['id']]\n";
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            list,
            "error_threshold: 0\noutput_action: append_row",
            "",
            500,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let mut lines = lines(&out(d.path()).join("parallel_run_step.txt"));
    lines.sort();
    assert!(
        lines.contains(&"row 42".to_string()),
        "list elements are written with str(x)"
    );
    assert_eq!(lines.len(), 500);
    assert_eq!(
        summary(&out(d.path()))["output_rows"],
        500,
        "output_rows counts lines"
    );

    let numpy =
        "import numpy as np\ndef run(mini_batch):\n    return mini_batch['id'].to_numpy() * 2\n";
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            numpy,
            "error_threshold: 0\noutput_action: append_row",
            "output_format: parquet\npreserve_order: true\n",
            500,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let file = std::fs::File::open(out(d.path()).join("parallel_run_step.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let values: Vec<i64> = reader
        .flat_map(|b| {
            let b = b.unwrap();
            let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
            c.as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(values, (0..500).map(|i| i * 2).collect::<Vec<_>>());
}

#[test]
fn exceptions_fail_mini_batches_with_their_traceback() {
    let script = r#"
def run(mini_batch):
    if 150 in set(mini_batch["id"]):
        raise ValueError("bad row 150")
    return mini_batch[["id"]]
"#;
    let d = tempfile::tempdir().unwrap();
    let job = python_job(
        d.path(),
        script,
        "error_threshold: -1\noutput_action: append_row\nrun_max_try: 2",
        "output_format: csv\n",
        1_000,
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = processed(&out(d.path()));
    let failed: Vec<_> = rows.iter().filter(|r| r["status"] != "SUCCEEDED").collect();
    assert_eq!(failed.len(), 1, "{rows:?}");
    assert_eq!(failed[0]["status"], "RUN_EXCEPTION");
    assert_eq!(failed[0]["tries"], "2");
    assert!(
        failed[0]["error_message"].contains("ValueError: bad row 150"),
        "{:?}",
        failed[0]
    );
    let result = std::fs::read_to_string(out(d.path()).join("logs/job_result.txt")).unwrap();
    assert!(
        result.contains("Traceback") && result.contains("entry.py"),
        "{result}"
    );
    let n_failed: usize = failed[0]["total_items"].parse().unwrap();
    assert_eq!(
        csv_rows(&out(d.path()).join("parallel_run_step.csv")).len(),
        1_000 - n_failed
    );
}

#[test]
fn fewer_returned_rows_count_as_failed_items() {
    let script =
        "def run(mini_batch):\n    return mini_batch[mini_batch['id'] % 10 != 0][['id']]\n";
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: 100\noutput_action: append_row",
            "",
            1_000,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let s = summary(&out(d.path()));
    assert_eq!(s["items_failed"], 100);
    assert_eq!(s["items_succeeded"], 900);
    assert_eq!(s["mini_batches_failed"], 0);
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: 99\noutput_action: append_row",
            "",
            1_000,
        ),
        &[],
    );
    assert_eq!(run.code, 42, "100 failed items exceed 99: {run:?}");
}

#[test]
fn a_hang_past_the_timeout_is_killed_and_retried() {
    let script = r#"
import time
def run(mini_batch):
    if 250 in set(mini_batch["id"]):
        time.sleep(60)
    return mini_batch[["id"]]
"#;
    let d = tempfile::tempdir().unwrap();
    let job = python_job(
        d.path(),
        script,
        "error_threshold: -1\noutput_action: append_row\nrun_invocation_timeout: 1\nrun_max_try: 2",
        "",
        1_000,
    );
    let started = std::time::Instant::now();
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        started.elapsed().as_secs() < 30,
        "the hung worker was killed, not waited for"
    );
    let rows = processed(&out(d.path()));
    let timed_out: Vec<_> = rows
        .iter()
        .filter(|r| r["status"] == "RUN_TIMEOUT")
        .collect();
    assert_eq!(timed_out.len(), 1, "{rows:?}");
    assert_eq!(timed_out[0]["tries"], "2");
    let id = &timed_out[0]["mini_batch_id"];
    assert!(
        timed_out[0]["error_message"]
            .contains(&format!("mini batch {id} did not finish in 1 seconds")),
        "{:?}",
        timed_out[0]
    );
    let events = std::fs::read_to_string(out(d.path()).join("logs/sys/events.txt")).unwrap();
    assert!(events.contains("replaced"), "{events}");
}

#[test]
fn a_worker_dying_on_the_first_try_is_replaced_without_duplicate_rows() {
    let script = r#"
import os
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    marker = os.path.join(EntryScript().output_dir, "died-once")
    if 777 in set(mini_batch["id"]) and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return mini_batch[["id"]]
"#;
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: 0\noutput_action: append_row",
            "output_format: csv\n",
            1_000,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let mut ids: Vec<i64> = csv_rows(&out(d.path()).join("parallel_run_step.csv"))
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>(), "every row exactly once");
    let rows = processed(&out(d.path()));
    let retried: Vec<_> = rows.iter().filter(|r| r["tries"] == "2").collect();
    assert_eq!(retried.len(), 1, "{rows:?}");
    let events = std::fs::read_to_string(out(d.path()).join("logs/sys/events.txt")).unwrap();
    assert!(events.contains("exit code 3"), "{events}");
}

#[test]
fn init_failure_stops_the_job_with_the_traceback() {
    let script = "def init():\n    raise RuntimeError('no model here')\n\ndef run(mini_batch):\n    return mini_batch\n";
    let d = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: 0\noutput_action: append_row",
            "",
            300,
        ),
        &[],
    );
    assert_eq!(run.code, 42, "{run:?}");
    assert!(started.elapsed().as_secs() < 60);
    let s = summary(&out(d.path()));
    assert_eq!(s["items_failed"], 0);
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("init()") && reason.contains("RuntimeError: no model here"),
        "{reason}"
    );
    let result = std::fs::read_to_string(out(d.path()).join("logs/job_result.txt")).unwrap();
    assert!(result.contains("Traceback"), "{result}");
}

#[test]
fn prints_go_to_the_log_not_the_protocol() {
    let script = r#"
import sys
def run(mini_batch):
    print("hello from run", len(mini_batch))
    print("x" * 100000)
    sys.stdout.write("\x00\xff binary-ish\n")
    print("to stderr", file=sys.stderr)
    return mini_batch[["id"]]
"#;
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: 0\noutput_action: append_row",
            "",
            1_000,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        txt_ids(&out(d.path()).join("parallel_run_step.txt")),
        (0..1000).collect::<Vec<_>>()
    );
    let stdout_dir = out(d.path()).join("logs/user/stdout");
    let all: String = walk(&stdout_dir)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        all.contains("hello from run"),
        "stdout logs: {:?}",
        walk(&stdout_dir)
    );
    let stderr: String = walk(&out(d.path()).join("logs/user/stderr"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(stderr.contains("to stderr"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn entry_script_helper_arguments_and_environment_variables() {
    let script = r#"
import argparse, os
from azureml_user.parallel_run import EntryScript
from parallel_run import EntryScript as Neutral

FACTOR = None

def init():
    global FACTOR
    parser = argparse.ArgumentParser()
    parser.add_argument("--factor", type=int)
    args, unknown = parser.parse_known_args()
    FACTOR = args.factor
    es = EntryScript()
    assert es is EntryScript(), "singleton"
    es.logger.info("init on %s in %s", es.agent_name, es.working_dir)
    assert Neutral().agent_name == es.agent_name
    assert os.environ["AZUREML_BI_OUTPUT_PATH"] == es.output_dir
    assert "--mini_batch_size" in unknown, unknown

def run(mini_batch):
    out = mini_batch[["id"]].copy()
    out["scaled"] = out["id"] * FACTOR
    out["var"] = os.environ["MY_SETTING"]
    out["agent"] = EntryScript().agent_name
    out["threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "-") + "/" + os.environ["OMP_NUM_THREADS"]
    return out
"#;
    let d = tempfile::tempdir().unwrap();
    let job = python_job(
        d.path(),
        script,
        "error_threshold: 0\noutput_action: append_row\nenvironment_variables: {MY_SETTING: hello, OMP_NUM_THREADS: '5'}",
        "output_format: csv\narguments: [--factor, '3']\n",
        400,
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = csv_rows(&out(d.path()).join("parallel_run_step.csv"));
    assert_eq!(rows.len(), 400);
    // BLAS thread pools get the cores split between the 2 workers, unless already set.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blas = std::env::var("OPENBLAS_NUM_THREADS").unwrap_or((cores / 2).max(1).to_string());
    for r in &rows {
        let id: i64 = r[0].parse().unwrap();
        assert_eq!(r[1], (id * 3).to_string());
        assert_eq!(r[2], "hello");
        assert!(r[3].starts_with("process00"), "{r:?}");
        assert_eq!(r[4], format!("{blas}/5"), "{r:?}");
    }
    let logs: String = walk(&out(d.path()).join("logs/user/entry_script_log"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(logs.contains("init on process00"), "{logs}");
}

#[test]
fn two_argument_run_gets_the_context() {
    let script = r#"
def run(mini_batch, mini_batch_context):
    out = mini_batch[["id"]].copy()
    out["index"] = mini_batch_context.minibatch_index
    out["keys"] = len(mini_batch_context.partition_key_value)
    out["mb"] = mini_batch_context.mini_batch_id
    return out
"#;
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: 0\noutput_action: append_row",
            "output_format: csv\n",
            1_000,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let rows = csv_rows(&out(d.path()).join("parallel_run_step.csv"));
    let report = processed(&out(d.path()));
    for r in &rows {
        assert_eq!(r[2], "0");
        assert!(
            report.iter().any(|p| p["mini_batch_id"] == r[3]),
            "mini-batch id {} is in the report",
            r[3]
        );
    }
    let indexes: std::collections::BTreeSet<&String> = rows.iter().map(|r| &r[1]).collect();
    assert_eq!(indexes.len(), report.len());
}

#[test]
fn file_datasets_get_local_paths() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..23 {
        std::fs::create_dir_all(d.path().join("docs")).unwrap();
        std::fs::write(
            d.path().join(format!("docs/doc{i:02}.txt")),
            "one two three ".repeat(i + 1),
        )
        .unwrap();
    }
    let script = r#"
import os, sys
def run(mini_batch):
    assert isinstance(mini_batch, list)
    # Paths and text results travel without Arrow: the worker never pays pyarrow's import.
    assert "--csv" in sys.argv or "pyarrow" not in sys.modules, "pyarrow was imported"
    return [f"{os.path.basename(p)} {len(open(p).read().split())}" for p in mini_batch]
"#;
    std::fs::write(d.path().join("entry.py"), script).unwrap();
    let job = write_job(
        d.path(),
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 5", python()),
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut lines = lines(&out(d.path()).join("parallel_run_step.txt"));
    lines.sort();
    assert_eq!(lines.len(), 23);
    assert_eq!(lines[0], "doc00.txt 3");
    assert_eq!(lines[22], "doc22.txt 69");
    assert_eq!(processed(&out(d.path())).len(), 5);

    // Other output formats convert the same list results through pyarrow, imported on need.
    let job = write_job(
        d.path(),
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 5", python()),
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out_csv\noutput_format: csv\npreserve_order: true\narguments: [--csv]\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows = csv_rows(&d.path().join("out_csv/parallel_run_step.csv"));
    assert_eq!(rows.len(), 23, "{rows:?}");
    assert_eq!(rows[0], vec!["doc00.txt 3".to_string()]);
    assert_eq!(rows[22], vec!["doc22.txt 69".to_string()]);
}

#[test]
fn returning_none_is_an_error_that_names_the_type() {
    let script = "def run(mini_batch):\n    return None\n";
    let d = tempfile::tempdir().unwrap();
    let run = run_job(
        &python_job(
            d.path(),
            script,
            "error_threshold: -1\noutput_action: summary_only\nrun_max_try: 1",
            "",
            200,
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let rows = processed(&out(d.path()));
    assert!(rows.iter().all(|r| r["status"] == "BAD_RESULT"), "{rows:?}");
    assert!(
        rows[0]["error_message"].contains("NoneType"),
        "{:?}",
        rows[0]
    );
}

#[test]
fn pyarrow_mini_batch_format_hands_a_table() {
    let script = r#"
import pyarrow as pa
def run(mini_batch):
    assert isinstance(mini_batch, pa.Table), type(mini_batch)
    return mini_batch.select(["id"])
"#;
    let d = tempfile::tempdir().unwrap();
    let job = python_job(
        d.path(),
        script,
        "error_threshold: 0\noutput_action: append_row",
        "mini_batch_format: pyarrow\noutput_format: parquet\n",
        1_000,
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut ids = parquet_ids(&out(d.path()).join("parallel_run_step.parquet"));
    ids.sort();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_python_without_pyarrow_gets_an_error_that_says_how_to_fix_it() {
    let d = tempfile::tempdir().unwrap();
    let bare = bare_python(d.path());
    std::fs::write(d.path().join("entry.py"), ECHO_DF).unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 100, 100);
    let job = write_job(
        d.path(),
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 1", bare.display()),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let reason = summary(&out(d.path()))["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("pip") && reason.contains("pyarrow"),
        "{reason}"
    );
}

/// A Python with the standard library only: a fresh virtual environment in `dir` on the base
/// interpreter of [`python`].
fn bare_python(dir: &Path) -> PathBuf {
    let base = std::process::Command::new(python())
        .args([
            "-c",
            "import sys; print(getattr(sys, 'base_prefix', sys.prefix))",
        ])
        .output()
        .unwrap();
    let prefix = String::from_utf8_lossy(&base.stdout).trim().to_string();
    let base_python = ["bin/python3", "bin/python"]
        .iter()
        .map(|b| Path::new(&prefix).join(b))
        .find(|p| p.exists())
        .unwrap();
    let venv = dir.join("bare");
    let made = std::process::Command::new(&base_python)
        .args(["-m", "venv", "--without-pip", venv.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(made.success());
    let python = venv.join("bin/python");
    let check = std::process::Command::new(&python)
        .args(["-c", "import pandas"])
        .output()
        .unwrap();
    assert!(!check.status.success(), "{} has pandas", python.display());
    python
}

#[test]
fn file_datasets_with_txt_output_need_the_standard_library_only() {
    let d = tempfile::tempdir().unwrap();
    let bare = bare_python(d.path());
    std::fs::create_dir_all(d.path().join("docs")).unwrap();
    for i in 0..7 {
        std::fs::write(
            d.path().join(format!("docs/doc{i}.txt")),
            "w ".repeat(i + 1),
        )
        .unwrap();
    }
    let script = "import os\ndef run(mini_batch):\n    return [f'{os.path.basename(p)} {len(open(p).read().split())}' for p in mini_batch]\n";
    std::fs::write(d.path().join("entry.py"), script).unwrap();
    let config = format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 3", bare.display());
    let job = write_job(
        d.path(),
        &config,
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut lines = lines(&out(d.path()).join("parallel_run_step.txt"));
    lines.sort();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(
        (lines[0].as_str(), lines[6].as_str()),
        ("doc0.txt 1", "doc6.txt 7")
    );

    // csv output converts the results with pyarrow: the error says so, and what to do.
    let out_csv = d.path().join("out_csv");
    let out_csv_arg = out_csv.to_str().unwrap();
    let run = run_job(
        &job,
        &["--set", "output_format=csv", "--output", out_csv_arg],
    );
    assert_eq!(run.code, 42, "{run:?}");
    let reason = summary(&out_csv)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("pyarrow is not installed")
            && reason.contains("output_format csv")
            && reason.contains("output_format txt needs the standard library only")
            && reason.contains("pip install pyarrow"),
        "{reason}"
    );
}

#[test]
fn relative_paths_in_arguments_resolve_against_the_code_folder() {
    let script = r#"
import argparse, os
from azureml_user.parallel_run import EntryScript

def init():
    global FOLDER
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_folder")
    FOLDER = parser.parse_known_args()[0].model_folder
    os.makedirs(FOLDER, exist_ok=True)

def run(mini_batch):
    name = "%s.txt" % EntryScript().agent_name
    with open(os.path.join(FOLDER, name), "a") as f:
        f.write("%d\n" % len(mini_batch))
    return [EntryScript().working_dir] * len(mini_batch)
"#;
    for source_directory in [None, Some("code")] {
        let d = tempfile::tempdir().unwrap();
        let code = match source_directory {
            Some(dir) => d.path().join(dir),
            None => d.path().to_path_buf(),
        };
        std::fs::create_dir_all(&code).unwrap();
        std::fs::write(code.join("entry.py"), script).unwrap();
        write_parquet(&d.path().join("in.parquet"), 0, 300, 1_000);
        let source = source_directory
            .map(|dir| format!("source_directory: {dir}\n"))
            .unwrap_or_default();
        let job = write_job(
            d.path(),
            &format!(
                "entry_script: entry.py\n{source}environment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 6KB",
                python()
            ),
            "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\narguments: [--model_folder, models/m]\n",
        );
        // Run from another folder: the job file's folder (or source_directory) counts.
        let run = run_job(&job, &[]);
        assert_eq!(run.code, 0, "{source_directory:?}: {run:?}");
        let models = code.join("models/m");
        let written: usize = walk(&models)
            .iter()
            .flat_map(|p| lines(p))
            .map(|n| n.parse::<usize>().unwrap())
            .sum();
        assert_eq!(
            written,
            300,
            "{source_directory:?}: rows counted in {}",
            models.display()
        );
        // EntryScript().working_dir stays a per-worker scratch folder.
        for dir in lines(&out(d.path()).join("parallel_run_step.txt")) {
            assert!(
                dir.contains(".parallel_run/work/process00"),
                "{source_directory:?}: {dir}"
            );
        }
    }
}

#[test]
fn validate_loads_the_script_and_run_fails_at_once_when_it_cannot() {
    let d = tempfile::tempdir().unwrap();
    let broken = "import os\ndef run(mini_batch)\n    return mini_batch\n";
    let job = python_job(
        d.path(),
        broken,
        "error_threshold: 0\noutput_action: append_row",
        "",
        200,
    );
    let check = cli(&["validate", job.to_str().unwrap()]);
    assert_eq!(check.code, 2, "{check:?}");
    assert!(
        check.stderr.contains("entry.py, line 2: SyntaxError"),
        "{check:?}"
    );
    // run: the first worker's failure ends the job; no 3 x process_count_per_node tries.
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let reason = summary(&out(d.path()))["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("entry.py, line 2: SyntaxError") && reason.contains("Not retried"),
        "{reason}"
    );
    assert!(!reason.contains("times on node"), "{reason}");

    std::fs::write(d.path().join("entry.py"), "def init():\n    pass\n").unwrap();
    let check = cli(&["validate", job.to_str().unwrap()]);
    assert_eq!(check.code, 2, "{check:?}");
    assert!(
        check.stderr.contains("no run(mini_batch) function"),
        "{check:?}"
    );

    // A valid script is imported, but its init() is not run.
    let script = "def init():\n    open('init-ran', 'w').close()\n    raise RuntimeError('no model')\n\ndef run(mini_batch):\n    return mini_batch\n";
    std::fs::write(d.path().join("entry.py"), script).unwrap();
    let check = cli(&["validate", job.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(check.stdout.contains("is valid"), "{check:?}");
    assert!(!d.path().join("init-ran").exists(), "validate ran init()");
}
