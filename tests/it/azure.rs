//! Azure ML migration: v2 parallel job files as Microsoft publishes them.

use std::path::Path;

use crate::common::*;

/// azureml-examples `cli/jobs/parallel/3a_mnist_batch_identification/pipeline.yml`, verbatim.
const MNIST_PIPELINE: &str = r#"$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
display_name: mnist-batch-identification-using-parallel
description: The hello world pipeline job with inline parallel job
experiment_name: hello-world-parallel-job
tags:
  tag: tagvalue
  owner: sdkteam

jobs:
  prepare_data:
    type: command
    compute: azureml:cpu-cluster
    component: ./script/prepare_data.yml

  predict_digits_mnist:
    type: parallel
    compute: azureml:cpu-cluster
    inputs:
      job_data_path:
        type: uri_folder
        path: ${{parent.jobs.prepare_data.outputs.mnist_png}}
        mode: ro_mount
      score_model:
        type: uri_folder
        path: ./mnist_models
        mode: download
    outputs:
      job_output_file:
        type: uri_file
        path: azureml://datastores/${{default_datastore}}/paths/${{name}}/aggregated_returns.csv
        mode: rw_mount

    mini_batch_size: "5"
    resources:
      instance_count: 2
    mini_batch_error_threshold: 5
    logging_level: "DEBUG"
    input_data: ${{inputs.job_data_path}}
    max_concurrency_per_instance: 2
    retry_settings:
      max_retries: 2
      timeout: 60
    
    environment_variables:
      "AZUREML_PARALLEL_EXAMPLE": "3a_yaml"
    
    task:
      type: run_function
      code: ./script
      entry_script: digit_identification.py
      environment:
        image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
        conda_file: ./script/environment_parallel.yml
      program_arguments: >-
        --model ${{inputs.score_model}}
      append_row_to: ${{outputs.job_output_file}}

"#;

/// A stand-in for the sample's digit_identification.py (standard library only): init() reads
/// the model folder given by `--model`, run() returns one line per image.
const SCRIPT: &str = r#"
import argparse
import os

def init():
    global model
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    args, _ = parser.parse_known_args()
    model = sorted(os.listdir(args.model))[0]
    assert os.environ["AZUREML_PARALLEL_EXAMPLE"] == "3a_yaml"

def run(mini_batch):
    return ["%s %s %d" % (os.path.basename(p), model, len(mini_batch)) for p in mini_batch]
"#;

fn mnist_sample(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("script")).unwrap();
    std::fs::create_dir_all(dir.join("mnist_models")).unwrap();
    std::fs::create_dir_all(dir.join("pngs")).unwrap();
    std::fs::write(dir.join("script/digit_identification.py"), SCRIPT).unwrap();
    std::fs::write(
        dir.join("script/environment_parallel.yml"),
        "name: prs-env\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.8\n  - pip\n  - pip:\n    - numpy\n    - pillow\n",
    )
    .unwrap();
    std::fs::write(dir.join("mnist_models/model.h5"), "weights").unwrap();
    for i in 0..12 {
        std::fs::write(dir.join(format!("pngs/{i:02}.png")), "png").unwrap();
    }
    let pipeline = dir.join("pipeline.yml");
    std::fs::write(&pipeline, MNIST_PIPELINE).unwrap();
    pipeline
}

#[test]
fn a_v2_pipeline_file_runs_as_published() {
    let d = tempfile::tempdir().unwrap();
    let pipeline = mnist_sample(d.path());
    let pngs = d.path().join("pngs");
    let store = d.path().join("store");
    let input = format!("job_data_path={}", pngs.display());
    let environment = format!("environment={}", python());

    // The earlier step's output and the datastore are what this machine cannot know.
    let run = cli(&[
        "validate",
        pipeline.to_str().unwrap(),
        "--set",
        &environment,
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("parent.jobs.prepare_data.outputs.mnist_png")
            && run.stderr.contains("--input job_data_path=PATH"),
        "{run:?}"
    );
    let run = cli(&[
        "validate",
        pipeline.to_str().unwrap(),
        "--input",
        &input,
        "--set",
        &environment,
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--output job_output_file=PATH"),
        "{run:?}"
    );

    // With a datastores key the published file runs unchanged.
    let mut text = MNIST_PIPELINE.to_string();
    text.push_str(&format!(
        "datastores: {{workspaceblobstore: {}}}\n",
        store.display()
    ));
    std::fs::write(&pipeline, text).unwrap();
    let run = cli(&[
        "run",
        pipeline.to_str().unwrap(),
        "--quiet",
        "--input",
        &input,
        "--set",
        &environment,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("image"),
        "the Docker image is named in a warning: {run:?}"
    );
    let out = store.join("predict_digits_mnist");
    let mut got = lines(&out.join("aggregated_returns.csv"));
    got.sort();
    let expected: Vec<String> = (0..12).map(|i| format!("{i:02}.png model.h5 5")).collect();
    assert_eq!(got.len(), 12, "{got:?}");
    for (line, want) in got.iter().zip(&expected) {
        let (name_model, _) = line.rsplit_once(' ').unwrap();
        assert_eq!(name_model, want.rsplit_once(' ').unwrap().0);
    }
    let s = summary(&out);
    assert_eq!(
        s["mini_batches_total"], 3,
        "mini_batch_size \"5\" is five files"
    );
    assert_eq!(s["status"], "succeeded");

    // --output NAME=PATH moves a named output.
    let elsewhere = d.path().join("elsewhere/results.txt");
    let run = cli(&[
        "run",
        pipeline.to_str().unwrap(),
        "--quiet",
        "--input",
        &input,
        "--set",
        &environment,
        "--output",
        &format!("job_output_file={}", elsewhere.display()),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&elsewhere).len(), 12);
}

/// A `type: parallel` job (the layout of azureml-examples' 2a_iris_batch_prediction) with an
/// MLTable input that keeps some columns, a side input and PRS settings in the arguments.
#[test]
fn a_v2_parallel_job_with_an_mltable_input() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir_all(dir.join("iris-mltable")).unwrap();
    std::fs::create_dir_all(dir.join("iris-model")).unwrap();
    std::fs::create_dir_all(dir.join("script")).unwrap();
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width,species\n");
    for i in 0..150 {
        csv.push_str(&format!("{}.1,3.5,1.4,0.2,setosa\n", 4 + i % 3));
    }
    std::fs::write(dir.join("iris-mltable/iris.csv"), csv).unwrap();
    std::fs::write(
        dir.join("iris-mltable/MLTable"),
        "paths:\n  - file: ./iris.csv\ntransformations:\n  - read_delimited:\n      delimiter: ','\n      encoding: 'ascii'\n      header: all_files_same_headers\n  - keep_columns: [sepal_length, petal_width]\n",
    )
    .unwrap();
    std::fs::write(dir.join("iris-model/MLmodel"), "flavor: stand-in").unwrap();
    std::fs::write(
        dir.join("script/iris_prediction.py"),
        r#"
import argparse, os

def init():
    global model
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    args, _ = parser.parse_known_args()
    model = os.path.exists(os.path.join(args.model, "MLmodel"))

def run(mini_batch):
    assert list(mini_batch.columns) == ["sepal_length", "petal_width"], list(mini_batch.columns)
    return ["%s %s" % (model, v) for v in mini_batch["sepal_length"]]
"#,
    )
    .unwrap();
    let job = dir.join("job.yml");
    std::fs::write(
        &job,
        r#"$schema: https://azuremlschemas.azureedge.net/latest/parallelJob.schema.json
type: parallel
compute: azureml:cpu-cluster
inputs:
  input_data:
    type: mltable
    path: ./iris-mltable
    mode: direct
  score_model:
    type: uri_folder
    path: ./iris-model
    mode: download
outputs:
  job_output_file:
    type: uri_file
    path: ./results/aggregated_returns.csv
    mode: rw_mount
input_data: ${{inputs.input_data}}
mini_batch_size: "1kb"
resources:
  instance_count: 1
max_concurrency_per_instance: 2
logging_level: "DEBUG"
error_threshold: 5
mini_batch_error_threshold: 5
retry_settings:
  max_retries: 2
  timeout: 60
task:
  type: run_function
  code: "./script"
  entry_script: iris_prediction.py
  program_arguments: >-
    --model ${{inputs.score_model}}
    --allowed_failed_percent 30
    --task_overhead_timeout 1200
  append_row_to: ${{outputs.job_output_file}}
"#,
    )
    .unwrap();
    let environment = format!("environment={}", python());
    let run = cli(&[
        "run",
        job.to_str().unwrap(),
        "--quiet",
        "--set",
        &environment,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let got = lines(&dir.join("results/aggregated_returns.csv"));
    assert_eq!(got.len(), 150, "{got:?}");
    assert!(got.iter().all(|l| l.starts_with("True ")), "{got:?}");
    let s = summary(&dir.join("results"));
    assert!(s["mini_batches_total"].as_u64().unwrap() > 1, "{s}");
    assert!(run.stderr.contains("--task_overhead_timeout"), "{run:?}");
    // --output DIR moves the job's own folder; an output with its own path stays where it is.
    let elsewhere = dir.join("elsewhere");
    std::fs::remove_file(dir.join("results/aggregated_returns.csv")).unwrap();
    let run = cli(&[
        "run",
        job.to_str().unwrap(),
        "--quiet",
        "--overwrite",
        "--set",
        &environment,
        "--output",
        elsewhere.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        lines(&dir.join("results/aggregated_returns.csv")).len(),
        150
    );
    assert!(!elsewhere.join("aggregated_returns.csv").exists());
    let shown = cli(&["show-config", job.to_str().unwrap()]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.contains("allowed_failed_percent: 30"),
        "{shown:?}"
    );
}

/// In parallel-run's own layout too: `${{inputs.NAME}}` / `${{outputs.NAME}}` in arguments, a
/// `side: true` input that is not cut into mini-batches, outputs created before init(), and
/// `--input NAME=PATH` overrides.
#[test]
fn named_inputs_and_outputs_in_a_job_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write_parquet(&dir.join("in/rows.parquet"), 0, 300, 300);
    std::fs::create_dir_all(dir.join("model-a")).unwrap();
    std::fs::create_dir_all(dir.join("model-b")).unwrap();
    std::fs::write(dir.join("model-a/name.txt"), "a").unwrap();
    std::fs::write(dir.join("model-b/name.txt"), "b").unwrap();
    std::fs::write(
        dir.join("entry.py"),
        r#"
import argparse, os
def init():
    global args, model
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--models_out")
    args, _ = parser.parse_known_args()
    assert os.path.isabs(args.model) and os.path.isdir(args.models_out), args
    model = open(os.path.join(args.model, "name.txt")).read()

def run(mini_batch):
    with open(os.path.join(args.models_out, "seen-%d.txt" % mini_batch["id"].iloc[0]), "w") as f:
        f.write(model)
    return [model] * len(mini_batch)
"#,
    )
    .unwrap();
    let job = write_job(
        dir,
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 4KB", python()),
        "inputs:\n  - {name: rows, path: in, format: parquet}\n  - {name: model, path: model-a, format: files, side: true}\noutputs: {models: out/models}\narguments: [--model, '${{inputs.model}}', --models_out, '${{outputs.models}}']\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let got = lines(&dir.join("out/parallel_run_step.txt"));
    assert_eq!(got.len(), 300, "the side input is not processed: {got:?}");
    assert!(got.iter().all(|l| l == "a"));
    assert!(std::fs::read_dir(dir.join("out/models")).unwrap().count() > 1);

    let other = format!("model={}", dir.join("model-b").display());
    let out2 = dir.join("out2");
    let run = run_job(
        &job,
        &["--input", &other, "--output", out2.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(lines(&out2.join("parallel_run_step.txt"))
        .iter()
        .all(|l| l == "b"));
    // Paths on the command line are relative to the current folder, not the job file's.
    std::fs::create_dir_all(dir.join("elsewhere/model-c")).unwrap();
    std::fs::write(dir.join("elsewhere/model-c/name.txt"), "c").unwrap();
    let run = cli_in(
        &dir.join("elsewhere"),
        &[
            "run",
            job.to_str().unwrap(),
            "--quiet",
            "--input",
            "model=model-c",
            "--output",
            "out3",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(lines(&dir.join("elsewhere/out3/parallel_run_step.txt"))
        .iter()
        .all(|l| l == "c"));
    let run = run_job(&job, &["--input", "nope=/x"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("nope") && run.stderr.contains("model, rows"),
        "{run:?}"
    );
}

/// Microsoft's published v1 sample scripts (tests/data/azure-samples), copied unchanged.
fn sample_script(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/azure-samples")
            .join(name),
    )
    .unwrap()
}

/// iris_score.py: `from azureml.core.model import Model` and `Model.get_model_path(name)` from
/// the job's `models:` key; a pickled model (a stand-in class, no scikit-learn needed).
#[test]
fn the_iris_sample_finds_its_model_through_the_model_stand_in() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir_all(dir.join("Code")).unwrap();
    std::fs::write(
        dir.join("Code/iris_score.py"),
        sample_script("iris_score.py"),
    )
    .unwrap();
    std::fs::write(
        dir.join("Code/stub_model.py"),
        "import numpy\n\nclass IrisModel:\n    def predict(self, frame):\n        return numpy.array(['Setosa' if v < 5.5 else 'Virginica' for v in frame.iloc[:, 0]])\n",
    )
    .unwrap();
    let pickled = std::process::Command::new(samples_python())
        .current_dir(dir.join("Code"))
        .args([
            "-c",
            "import pickle, stub_model; pickle.dump(stub_model.IrisModel(), open('../iris.pkl', 'wb'))",
        ])
        .status()
        .unwrap();
    assert!(pickled.success());
    let mut csv = String::from("sepal.length,sepal.width,petal.length,petal.width,variety\n");
    for i in 0..150 {
        csv.push_str(&format!(
            "{},3.5,1.4,0.2,unknown\n",
            if i % 2 == 0 { "5.1" } else { "6.3" }
        ));
    }
    std::fs::write(dir.join("iris.csv"), csv).unwrap();
    let job = write_job(
        dir,
        &format!("entry_script: iris_score.py\nsource_directory: Code\nenvironment: {{python: {}}}\nerror_threshold: 10\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 1KB", samples_python()),
        "inputs:\n  - {name: iris, path: iris.csv, format: csv}\nmodels: {iris: iris.pkl}\narguments: [--model_name, iris]\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut got = lines(&dir.join("out/parallel_run_step.txt"));
    assert_eq!(got.len(), 150);
    got.sort();
    got.dedup();
    assert_eq!(got, ["5.1 3.5 1.4 0.2 Setosa", "6.3 3.5 1.4 0.2 Virginica"]);

    // An unknown model name fails init() naming the known ones.
    let run = run_job(&job, &["--overwrite", "--set", "allowed_failed_count=0"]);
    assert_eq!(run.code, 0, "{run:?}");
    let bad = write_job(
        dir,
        &format!("entry_script: iris_score.py\nsource_directory: Code\nenvironment: {{python: {}}}\nerror_threshold: 10\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 1", samples_python()),
        "inputs:\n  - {name: iris, path: iris.csv, format: csv}\nmodels: {iris: iris.pkl}\narguments: [--model_name, roses]\noutput: out-bad\n",
    );
    let run = run_job(&bad, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let reason = summary(&dir.join("out-bad"))["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("'roses' is not known") && reason.contains("iris:1"),
        "{reason}"
    );
}

/// total_income.py with partition_keys on a CSV (the tabular partition notebook), and
/// `Run.get_context()` metrics from a script that logs them.
#[test]
fn the_total_income_sample_runs_per_key_and_run_metrics_are_logged() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(
        dir.join("total_income.py"),
        sample_script("total_income.py"),
    )
    .unwrap();
    let mut csv = String::from("STATE,INCOME\n");
    for (state, income) in [("WA", 10), ("CA", 5), ("WA", 20), ("NY", 7), ("CA", 1)] {
        csv.push_str(&format!("{state},{income}\n"));
    }
    std::fs::write(dir.join("income.csv"), csv).unwrap();
    let job = write_job(
        dir,
        &format!("entry_script: total_income.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\npartition_keys: [STATE]", python()),
        "inputs:\n  - {name: income, path: income.csv, format: csv}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut got = lines(&dir.join("out/parallel_run_step.txt"));
    got.sort();
    assert_eq!(
        got,
        ["CA 1 6", "CA 5 6", "NY 7 7", "WA 10 30", "WA 20 30"],
        "each row with its key's total"
    );

    std::fs::write(
        dir.join("metrics.py"),
        "from azureml.core import Run\n\ndef run(mini_batch):\n    r = Run.get_context()\n    r.log('rows', len(mini_batch))\n    r.log_row('seen', count=len(mini_batch))\n    assert r.parent is not None and r.experiment.name\n    return mini_batch\n",
    )
    .unwrap();
    let run = run_job(
        &job,
        &[
            "--set",
            "entry_script=metrics.py",
            "--output",
            dir.join("out2").to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let metrics_dir = dir.join("out2/logs/user/metrics/node000");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(&metrics_dir).unwrap() {
        for line in lines(&entry.unwrap().path()) {
            records.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    }
    let rows: i64 = records
        .iter()
        .filter(|r| r["name"] == "rows")
        .map(|r| r["value"].as_i64().unwrap())
        .sum();
    assert_eq!(rows, 5, "{records:?}");
    assert!(records
        .iter()
        .any(|r| r["kind"] == "row" && r["name"] == "seen"));
}

/// `mini_batch_context.dataset` (v1's total_file_size.py prints it): a readable repr, `to_path()`
/// for file datasets and `to_pandas_dataframe()` for tables.
#[test]
fn the_mini_batch_context_has_a_dataset() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    for i in 0..4 {
        std::fs::write(dir.join(format!("docs/{i}.txt")), "x".repeat(i + 1)).unwrap();
    }
    write_parquet(&dir.join("rows.parquet"), 0, 20, 20);
    std::fs::write(
        dir.join("entry.py"),
        r#"
import os
def run(mini_batch, mini_batch_context):
    ds = mini_batch_context.dataset
    print(ds)
    assert "input=" in repr(ds), repr(ds)
    if isinstance(mini_batch, list):
        assert ds.to_path() == mini_batch
        return ["%s %d" % (mini_batch_context.input_name, sum(os.path.getsize(p) for p in ds.to_path()))]
    frame = ds.to_pandas_dataframe()
    return ["%s %d" % (mini_batch_context.input_name, len(frame))] * len(mini_batch)
"#,
    )
    .unwrap();
    let job = write_job(
        dir,
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: -1\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 1\nmini_batch_size: 4", python()),
        "inputs:\n  - {name: docs, path: docs, format: files}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&dir.join("out/parallel_run_step.txt")), ["docs 10"]);
    let job = write_job(
        dir,
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 1", python()),
        "inputs:\n  - {name: rows, path: rows.parquet, format: parquet}\noutput: out2\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&dir.join("out2/parallel_run_step.txt")).len(), 20);
}

/// total_file_size.py (the file-dataset partition notebook) with the notebook's verbatim
/// `path` and `partition_format`, `partition_keys: [user, genres]`, on a bare python3: one
/// mini-batch per (user, genres), every file once.
#[test]
fn the_total_file_size_sample_runs_with_the_notebooks_partition_format() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(
        dir.join("total_file_size.py"),
        sample_script("total_file_size.py"),
    )
    .unwrap();
    let root = dir.join("dataset_partition_test");
    let mut files = 0;
    for (user, season, genre, size) in [
        ("alice", "spring", "disco", 3),
        ("alice", "summer", "disco", 5),
        ("alice", "summer", "piano", 7),
        ("bob", "winter", "orchestra", 11),
    ] {
        std::fs::create_dir_all(root.join(user).join(season)).unwrap();
        std::fs::write(
            root.join(user).join(season).join(format!("{genre}.wav")),
            "x".repeat(size),
        )
        .unwrap();
        files += 1;
    }
    let job = write_job(
        dir,
        "entry_script: total_file_size.py\nenvironment: {python: python3}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\npartition_keys: [user, genres]",
        "inputs:\n  - {name: wavs, path: \"dataset_partition_test/*/*/*.wav\", format: files, partition_format: \"dataset_partition_test/{user}/{season}/{genres}.wav\"}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut got = lines(&dir.join("out/parallel_run_step.txt"));
    got.sort();
    assert_eq!(got.len(), files, "{got:?}");
    assert_eq!(
        got,
        [
            "disco.wav,3,0.375,alice,disco,8",
            "disco.wav,5,0.625,alice,disco,8",
            "orchestra.wav,11,1.0,bob,orchestra,11",
            "piano.wav,7,1.0,alice,piano,7",
        ]
    );
    let stdout_dir = dir.join("out/logs/user/stdout/node000");
    let printed: String = std::fs::read_dir(&stdout_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        printed.contains("dataset = MiniBatchDataset(input='wavs'"),
        "{printed}"
    );
}

/// An oj_sales-style training script (azureml-examples `1a_oj_sales_prediction`'s
/// `parallel_train.py` layout: argparse `--model_folder`, one model per `partition_keys`
/// tuple written to `os.path.join(model_folder, *partition_key_value.values())`) whose first
/// try for one key dies after writing half a model: the retry writes it again and the job
/// succeeds with every model complete (files a script writes are outside the exactly-once
/// guarantee, so they must be written idempotently, as this one does).
#[test]
fn an_oj_sales_style_training_job_survives_a_retried_try() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut csv = String::from("Store,Brand,week,Quantity\n");
    for (store, brand) in [
        (1000, "dominicks"),
        (1000, "tropicana"),
        (1001, "minute.maid"),
    ] {
        for week in 0..5 {
            csv.push_str(&format!(
                "{store},{brand},{week},{}\n",
                100 + week * store % 7
            ));
        }
    }
    std::fs::write(dir.join("sales.csv"), csv).unwrap();
    std::fs::write(
        dir.join("parallel_train.py"),
        r#"
import argparse
import os
import pickle

import pandas as pd

parser = argparse.ArgumentParser()
parser.add_argument("--model_folder", type=str)
args, _ = parser.parse_known_args()
MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash-once")


def init():
    os.makedirs(args.model_folder, exist_ok=True)


def run(input_data, mini_batch_context):
    keys = mini_batch_context.partition_key_value
    folder = os.path.join(args.model_folder, *[str(v) for v in keys.values()])
    os.makedirs(folder, exist_ok=True)
    model = {"mean": float(input_data["Quantity"].mean()), "rows": len(input_data)}
    path = os.path.join(folder, "model.pkl")
    with open(path, "wb") as f:
        f.write(b"half a model")
        if keys["Brand"] == "tropicana" and os.path.exists(MARKER):
            os.remove(MARKER)
            os._exit(3)
    with open(path, "wb") as f:
        pickle.dump(model, f)
    return pd.DataFrame({"Store": [keys["Store"]], "Brand": [keys["Brand"]], "rows": [len(input_data)]})
"#,
    )
    .unwrap();
    std::fs::write(dir.join("crash-once"), "").unwrap();
    let job = write_job(
        dir,
        &format!("entry_script: parallel_train.py\nenvironment: {{python: {}}}\nerror_threshold: -1\nmini_batch_error_threshold: 5\nrun_max_try: 3\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\npartition_keys: [Store, Brand]", samples_python()),
        "inputs:\n  - {name: sales, path: sales.csv, format: csv}\noutput: out\noutput_format: csv\narguments: [--model_folder, models]\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!dir.join("crash-once").exists(), "the crash happened");
    let s = summary(&dir.join("out"));
    assert_eq!(s["mini_batches_failed"], 0, "{s}");
    assert!(
        s["tries"].as_u64().unwrap() >= 4,
        "one key was retried: {s}"
    );
    for (store, brand) in [
        (1000, "dominicks"),
        (1000, "tropicana"),
        (1001, "minute.maid"),
    ] {
        let model = dir.join(format!("models/{store}/{brand}/model.pkl"));
        let bytes = std::fs::read(&model).unwrap();
        assert!(
            bytes.starts_with(&[0x80]),
            "{} is a complete pickle",
            model.display()
        );
    }
    let mut rows = lines(&dir.join("out/parallel_run_step.csv"));
    rows.sort();
    assert_eq!(rows.len(), 4, "header and one row per key: {rows:?}");
}
