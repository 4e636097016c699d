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
    let run = run_job(&job, &["--input", "nope=/x"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("nope") && run.stderr.contains("model, rows"),
        "{run:?}"
    );
}
