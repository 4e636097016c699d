use super::*;
use crate::config::named::{reference, substitute};

fn translate_text(text: &str, options: &V2Options) -> Result<(Mapping, Vec<String>)> {
    let root: Mapping = serde_yaml::from_str(text).unwrap();
    let mut warnings = Vec::new();
    let t = translate(root, Path::new("/jobs/a"), options, &mut warnings)?;
    Ok((t.root, warnings))
}

fn config(root: &Mapping) -> &Mapping {
    root["parallel_run_config"].as_mapping().unwrap()
}

const PARALLEL: &str = r#"
type: parallel
inputs:
  data:
    type: uri_folder
    path: ./data
  model: {type: uri_folder, path: /models/m1, mode: download}
  drop_cols: "Revenue,Advert"
outputs:
  model_folder: {type: uri_folder}
  scored:
    type: uri_file
    path: azureml://datastores/${{default_datastore}}/paths/${{name}}/out.csv
input_data: ${{inputs.data}}
error_threshold: 5
mini_batch_error_threshold: 2
retry_settings: {max_retries: 2, timeout: 60}
datastores: {workspaceblobstore: ./store}
task:
  type: run_function
  code: ./src
  entry_script: score.py
  program_arguments: >-
    --model ${{inputs.model}} --drop_cols ${{inputs.drop_cols}}
    --model_folder ${{outputs.model_folder}}
    --allowed_failed_percent 30 --task_overhead_timeout 1200
  append_row_to: ${{outputs.scored}}
"#;

#[test]
fn a_parallel_job_maps_to_our_layout() {
    let (root, warnings) = translate_text(PARALLEL, &V2Options::default()).unwrap();
    let c = config(&root);
    assert_eq!(c["entry_script"], "score.py");
    assert_eq!(c["source_directory"], "/jobs/a/src");
    assert_eq!(c["output_action"], "append_row");
    assert_eq!(c["append_row_file_name"], "out.csv");
    assert_eq!(c["allowed_failed_percent"], 30);
    assert_eq!(c["error_threshold"], 5);
    assert_eq!(c["mini_batch_error_threshold"], 2);
    assert_eq!(root["output"], "/jobs/a/store/parallel_job");
    let args: Vec<&str> = root["arguments"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--model",
            "/models/m1",
            "--drop_cols",
            "Revenue,Advert",
            "--model_folder",
            "/jobs/a/out/parallel_job/model_folder",
            "--task_overhead_timeout",
            "1200"
        ],
        "PRS settings that apply become keys and leave the argv"
    );
    let input = root["inputs"][0].as_mapping().unwrap();
    assert_eq!(input["path"], "/jobs/a/data");
    assert_eq!(input["format"], "files");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--task_overhead_timeout")),
        "{warnings:?}"
    );
}

#[test]
fn overrides_replace_named_paths_and_the_output_folder() {
    let options = V2Options {
        inputs: [("data".to_string(), "/elsewhere/d".to_string())].into(),
        outputs: [("scored".to_string(), "/results/x.txt".to_string())].into(),
        output_dir: Some(PathBuf::from("/o")),
        ..V2Options::default()
    };
    let (root, _) = translate_text(PARALLEL, &options).unwrap();
    assert_eq!(root["inputs"][0]["path"], "/elsewhere/d");
    assert_eq!(root["output"], "/results");
    assert_eq!(config(&root)["append_row_file_name"], "x.txt");
    assert!(root["arguments"]
        .as_sequence()
        .unwrap()
        .contains(&Value::from("/o/model_folder")));
    let bad = V2Options {
        inputs: [("nope".to_string(), "/x".to_string())].into(),
        ..V2Options::default()
    };
    let e = translate_text(PARALLEL, &bad).unwrap_err().to_string();
    assert!(
        e.contains("--input") && e.contains("nope") && e.contains("data"),
        "{e}"
    );
}

#[test]
fn unresolvable_references_say_what_to_pass() {
    let text = PARALLEL.replace("path: ./data", "path: ${{parent.jobs.prep.outputs.x}}");
    let e = translate_text(&text, &V2Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("parent.jobs.prep.outputs.x") && e.contains("--input data=PATH"),
        "{e}"
    );
    let text = PARALLEL.replace("datastores: {workspaceblobstore: ./store}\n", "");
    let e = translate_text(&text, &V2Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("default_datastore") && e.contains("--output scored=PATH"),
        "{e}"
    );
}

#[test]
fn a_setting_in_the_arguments_and_as_a_key_must_agree() {
    let text = PARALLEL.replace("--allowed_failed_percent 30", "--run_invocation_timeout 30");
    let e = translate_text(&text, &V2Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--run_invocation_timeout 30") && e.contains("keep one"),
        "{e}"
    );
    let same = PARALLEL.replace("--allowed_failed_percent 30", "--run_invocation_timeout 60");
    let (root, _) = translate_text(&same, &V2Options::default()).unwrap();
    assert!(!root["arguments"]
        .as_sequence()
        .unwrap()
        .contains(&Value::from("--run_invocation_timeout")));
}

#[test]
fn pipelines_pick_their_parallel_job() {
    let pipeline = format!(
            "type: pipeline\nsettings: {{default_compute: azureml:cpu}}\njobs:\n  prep: {{type: command}}\n  score:\n{}",
            PARALLEL.lines().map(|l| format!("    {l}\n")).collect::<String>()
        );
    let (root, warnings) = translate_text(&pipeline, &V2Options::default()).unwrap();
    assert_eq!(config(&root)["entry_script"], "score.py");
    assert!(
        warnings.iter().any(|w| w.contains("settings")),
        "{warnings:?}"
    );
    let two = pipeline.replace("  prep: {type: command}", "  prep: {type: parallel}");
    let e = translate_text(&two, &V2Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--job") && e.contains("prep") && e.contains("score"),
        "{e}"
    );
    let picked = V2Options {
        job: Some("score".into()),
        ..V2Options::default()
    };
    assert!(translate_text(&two, &picked).is_ok());
}

#[test]
fn substitution_and_references() {
    let lookup = |e: &str| (e == "name").then(|| "job1".to_string());
    assert_eq!(
        substitute("a/${{ name }}/b", "f", &lookup).unwrap(),
        "a/job1/b"
    );
    assert!(substitute("${{ nope }}", "f", &lookup).is_err());
    assert_eq!(reference("${{inputs.data}}", "inputs"), Some("data"));
    assert_eq!(reference(" ${{ outputs.x }} ", "outputs"), Some("x"));
    assert_eq!(reference("${{inputs.data}}/sub", "inputs"), None);
}
