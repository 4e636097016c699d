use super::*;
use crate::config::{ComputeTarget, LoggingLevel, OutputAction};

const BASE: &str = "/jobs/demo";

fn load(text: &str) -> LoadedJob {
    load_with(text, &[])
}

fn load_with(text: &str, overrides: &[&str]) -> LoadedJob {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match JobSpec::from_yaml_str(text, Path::new(BASE), &overrides) {
        Ok(job) => job,
        Err(e) => panic!("should load: {e}\n{text}"),
    }
}

fn error(text: &str, overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match JobSpec::from_yaml_str(text, Path::new(BASE), &overrides) {
        Ok(job) => panic!("should be rejected: {:?}", job.spec),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, words: &[&str]) {
    for word in words {
        assert!(
            message.contains(word),
            "{message:?} should mention {word:?}"
        );
    }
}

/// The round trip: saved and loaded again (from another folder), the job is unchanged.
fn assert_round_trips(spec: &JobSpec) {
    let yaml = spec.to_yaml().unwrap();
    let mut again = JobSpec::from_yaml_str(&yaml, Path::new("/elsewhere"), &[])
        .unwrap_or_else(|e| panic!("saved YAML should load: {e}\n{yaml}"));
    // Every path is saved resolved; only the folder it was loaded from differs.
    assert_eq!(
        again.spec.base_dir.as_deref(),
        Some(Path::new("/elsewhere"))
    );
    again.spec.base_dir = spec.base_dir.clone();
    assert_eq!(&again.spec, spec, "{yaml}");
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

const MINIMAL: &str = r#"
parallel_run_config:
  entry_script: score.py
  error_threshold: 10
  output_action: append_row
  node_count: 1
inputs:
  - {name: reviews, path: data/reviews.parquet, format: parquet}
"#;

const FULL: &str = r#"
parallel_run_config:
  entry_script: score.py
  error_threshold: -1
  output_action: Summary_Only
  node_count: 1
  process_count_per_node: 2
  mini_batch_size: 1MB
  source_directory: scripts
  description: nightly scoring
  logging_level: debug
  run_invocation_timeout: 120
  run_max_try: 5
  append_row_file_name: results.txt
  allowed_failed_count: 5
  allowed_failed_percent: 10
  partition_keys: []
  environment_variables: {OMP_NUM_THREADS: 1, MODE: fast}
  compute_target_name: local
  environment: {python: venv/bin/python, pip: [numpy, pandas, pyarrow], name: scoring}
inputs:
  - {name: reviews, path: data/reviews.parquet, format: PARQUET}
  - {name: events, path: "s3://bucket/events/*.jsonl", format: ndjson}
  - {name: en, sql: "SELECT * FROM reviews WHERE lang = 'en'"}
output: out/
output_format: csv
arguments: ["--model", "m.bin", 3]
preserve_order: true
"#;

#[test]
fn minimal_job_gets_the_defaults() {
    let job = load(MINIMAL);
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let spec = job.spec;
    let mut expected = ParallelRunConfig::new("/jobs/demo/score.py", 10, OutputAction::AppendRow);
    expected.node_count = 1;
    assert_eq!(spec.config, expected);
    assert_eq!(
        spec.inputs,
        vec![InputSpec::path(
            "reviews",
            "/jobs/demo/data/reviews.parquet",
            InputFormat::Parquet
        )]
    );
    assert_eq!(spec.output, None);
    assert_eq!(spec.output_format, OutputFormat::Txt);
    assert!(spec.arguments.is_empty());
    assert!(!spec.preserve_order);
}

#[test]
fn full_job_reads_every_key() {
    let spec = load(FULL).spec;
    let c = &spec.config;
    assert_eq!(
        c.entry_script, "score.py",
        "kept relative to source_directory"
    );
    assert_eq!(
        c.source_directory,
        Some(PathBuf::from("/jobs/demo/scripts"))
    );
    assert_eq!(c.error_threshold, -1);
    assert_eq!(c.output_action, OutputAction::SummaryOnly);
    assert_eq!(c.process_count_per_node, Some(2));
    assert_eq!(c.mini_batch_size.as_ref().map(|s| s.value), Some(1 << 20));
    assert_eq!(c.description.as_deref(), Some("nightly scoring"));
    assert_eq!(c.logging_level, LoggingLevel::Debug);
    assert_eq!(c.run_invocation_timeout, 120);
    assert_eq!(c.run_max_try, 5);
    assert_eq!(c.append_row_file_name, "results.txt");
    assert_eq!(c.allowed_failed_count, Some(5));
    assert_eq!(c.allowed_failed_percent, Some(10.0));
    assert_eq!(
        c.environment_variables
            .get("OMP_NUM_THREADS")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(c.compute_target, ComputeTarget::Local);
    assert_eq!(
        c.environment.python.as_deref(),
        Some("/jobs/demo/venv/bin/python")
    );
    assert_eq!(c.environment.pip, vec!["numpy", "pandas", "pyarrow"]);
    assert_eq!(c.environment.name.as_deref(), Some("scoring"));
    assert_eq!(spec.inputs.len(), 3);
    assert_eq!(
        spec.inputs[1].source,
        InputSource::Path {
            path: "s3://bucket/events/*.jsonl".into(),
            format: InputFormat::Json
        }
    );
    assert_eq!(
        spec.inputs[2].source,
        InputSource::Sql("SELECT * FROM reviews WHERE lang = 'en'".into())
    );
    assert_eq!(spec.output, Some(PathBuf::from("/jobs/demo/out")));
    assert_eq!(spec.output_format, OutputFormat::Csv);
    assert_eq!(spec.arguments, vec!["--model", "m.bin", "3"]);
    assert!(spec.preserve_order);
}

#[test]
fn paths_resolve_against_the_job_folder() {
    let spec = load(
        r#"
parallel_run_config:
  entry_script: ./scripts/score.py
  error_threshold: 0
  output_action: append_row
  node_count: 1
  environment: python3
inputs:
  - {name: a, path: "../shared/a.csv"}
  - {name: b, path: /abs/b.parquet}
  - {name: c, path: "abfss://fs@acct.dfs.core.windows.net/c/", format: files}
  - {name: d, path: "file:///data/d%20x.parquet"}
  - {name: e, path: "images/", format: files}
  - {name: f, path: "az://container/f.json"}
output: /tmp/out
"#,
    )
    .spec;
    assert_eq!(spec.config.entry_script, "/jobs/demo/scripts/score.py");
    assert_eq!(
        spec.config.environment.python.as_deref(),
        Some("python3"),
        "a name stays a name"
    );
    let paths: Vec<(&str, InputFormat)> = spec
        .inputs
        .iter()
        .map(|input| match &input.source {
            InputSource::Path { path, format } => (path.as_str(), *format),
            InputSource::Sql(_) => panic!("no sql input here"),
        })
        .collect();
    assert_eq!(
        paths,
        vec![
            ("/jobs/shared/a.csv", InputFormat::Csv),
            ("/abs/b.parquet", InputFormat::Parquet),
            (
                "abfss://fs@acct.dfs.core.windows.net/c/",
                InputFormat::Files
            ),
            ("/data/d x.parquet", InputFormat::Parquet),
            ("/jobs/demo/images/", InputFormat::Files),
            ("az://container/f.json", InputFormat::Json),
        ]
    );
    assert_eq!(spec.output, Some(PathBuf::from("/tmp/out")));
}

#[test]
fn rust_entry_scripts_are_kept() {
    let spec = load(&MINIMAL.replace("score.py", "rust:echo")).spec;
    assert_eq!(spec.config.entry_script, "rust:echo");
}

#[test]
fn missing_required_keys_are_named() {
    for (key, words) in [
        (
            "entry_script",
            &["parallel_run_config.entry_script", "is missing", "required"][..],
        ),
        (
            "error_threshold",
            &["parallel_run_config.error_threshold", "is missing", ">= -1"][..],
        ),
        (
            "output_action",
            &[
                "parallel_run_config.output_action",
                "append_row or summary_only",
            ][..],
        ),
        (
            "node_count",
            &["parallel_run_config.node_count", "is missing", ">= 1"][..],
        ),
    ] {
        let text: String = MINIMAL
            .lines()
            .filter(|line| !line.trim_start().starts_with(key))
            .collect::<Vec<_>>()
            .join("\n");
        assert_mentions(&error(&text, &[]), words);
    }
    assert_mentions(
        &error("inputs: []", &[]),
        &["parallel_run_config", "is missing"],
    );
    assert_mentions(&error("", &[]), &["parallel_run_config", "is missing"]);
}

#[test]
fn at_least_one_input_is_required() {
    let text = MINIMAL.split("inputs:").next().unwrap_or_default();
    assert_mentions(&error(text, &[]), &["inputs", "at least one input"]);
}

#[test]
fn type_errors_name_the_field() {
    let e = error(
        &MINIMAL.replace("node_count: 1", "node_count: 1\n  run_max_try: many"),
        &[],
    );
    assert_eq!(
        e,
        r#"parallel_run_config.run_max_try "many": must be an integer >= 1: the total number of tries of a mini-batch (default 3)"#
    );
    let e = error(&MINIMAL.replace("node_count: 1", "node_count: -3"), &[]);
    assert_mentions(&e, &["parallel_run_config.node_count", "\"-3\"", ">= 1"]);
    let e = error(&MINIMAL.replace("append_row", "append"), &[]);
    assert_mentions(
        &e,
        &[
            "parallel_run_config.output_action",
            "\"append\"",
            "append_row or summary_only",
        ],
    );
    let e = error(
        &MINIMAL.replace("node_count: 1", "node_count: 1\n  partition_keys: a"),
        &[],
    );
    assert_mentions(&e, &["parallel_run_config.partition_keys", "list"]);
    let e = error(&format!("{MINIMAL}preserve_order: maybe\n"), &[]);
    assert_mentions(&e, &["preserve_order", "maybe", "true or false"]);
    let e = error(&format!("{MINIMAL}output_format: xml\n"), &[]);
    assert_mentions(&e, &["output_format", "xml", "txt, csv or parquet"]);
    let e = error(&MINIMAL.replace("format: parquet", "format: orc"), &[]);
    assert_mentions(&e, &["inputs[0].format", "orc", "parquet, csv, json"]);
}

#[test]
fn yaml_syntax_errors_give_the_line() {
    match JobSpec::from_yaml_str("parallel_run_config:\n  a: [1, 2\n", Path::new(BASE), &[]) {
        Err(PrsError::JobFile { message, .. }) => assert_mentions(&message, &["line"]),
        other => panic!("expected a JobFile error, got {other:?}"),
    }
    match JobSpec::from_yaml_str("- a\n- b\n", Path::new(BASE), &[]) {
        Err(PrsError::JobFile { message, .. }) => assert_mentions(&message, &["mapping"]),
        other => panic!("expected a JobFile error, got {other:?}"),
    }
}

#[test]
fn unknown_keys_are_caught_everywhere() {
    let e = error(
        &MINIMAL.replace("node_count: 1", "node_count: 1\n  run_max_tries: 3"),
        &[],
    );
    assert_mentions(
        &e,
        &[
            "parallel_run_config",
            "run_max_tries",
            "unknown key",
            "did you mean \"run_max_try\"",
            "allowed keys",
        ],
    );
    let e = error(&format!("{MINIMAL}outputs: out\n"), &[]);
    assert_mentions(&e, &["outputs", "did you mean \"output\""]);
    let e = error(&MINIMAL.replace("format: parquet", "fromat: parquet"), &[]);
    assert_mentions(&e, &["inputs[0]", "fromat", "did you mean \"format\""]);
    let e = error(
        &MINIMAL.replace(
            "node_count: 1",
            "node_count: 1\n  environment: {python: python3, pips: [x]}",
        ),
        &[],
    );
    assert_mentions(
        &e,
        &[
            "parallel_run_config.environment",
            "pips",
            "did you mean \"pip\"",
        ],
    );
    let e = error(
        &MINIMAL.replace(
            "node_count: 1",
            "node_count: 1\n  retry_settings: {max_retry: 2}",
        ),
        &[],
    );
    assert_mentions(&e, &["retry_settings", "max_retry", "max_retries"]);
}

#[test]
fn inputs_need_exactly_one_of_path_and_sql() {
    let e = error(
        &MINIMAL.replace(
            "path: data/reviews.parquet, format: parquet",
            "path: a.csv, sql: SELECT 1",
        ),
        &[],
    );
    assert_mentions(&e, &["inputs[0].sql", "either path or sql"]);
    let e = error(
        &MINIMAL.replace("path: data/reviews.parquet, format: parquet", "format: csv"),
        &[],
    );
    assert_mentions(&e, &["inputs[0].path", "is missing", "sql"]);
    let e = error(
        &MINIMAL.replace(
            "path: data/reviews.parquet, format: parquet",
            "sql: SELECT 1, format: csv",
        ),
        &[],
    );
    assert_mentions(&e, &["inputs[0].format", "path inputs only"]);
    let e = error(
        &MINIMAL.replace("data/reviews.parquet, format: parquet", "data/"),
        &[],
    );
    assert_mentions(
        &e,
        &[
            "inputs[0].format",
            "is missing",
            "parquet, csv, json or files",
        ],
    );
    let config = MINIMAL.split("inputs:").next().unwrap_or_default();
    let e = error(&format!("{config}inputs: {{a: b}}\n"), &[]);
    assert_mentions(&e, &["inputs", "list"]);
}

#[test]
fn input_names_must_be_unique_identifiers() {
    let two = format!("{MINIMAL}  - {{name: Reviews, path: b.csv}}\n");
    assert_mentions(
        &error(&two, &[]),
        &["inputs[1].name", "Reviews", "inputs[0]", "unique"],
    );
    let bad = MINIMAL.replace("name: reviews", "name: 2reviews");
    assert_mentions(
        &error(&bad, &[]),
        &["inputs[0].name", "2reviews", "SQL identifier"],
    );
    let bad = MINIMAL.replace("name: reviews", "name: my-reviews");
    assert_mentions(&error(&bad, &[]), &["inputs[0].name", "SQL identifier"]);
    let empty = MINIMAL.replace(
        "data/reviews.parquet, format: parquet",
        "'', format: parquet",
    );
    assert_mentions(
        &error(&empty, &[]),
        &["inputs[0].path", "must not be empty"],
    );
}

#[test]
fn reserved_arguments_are_rejected() {
    for argument in [
        "--mini_batch_size",
        "--mini_batch_size=5",
        "-mini_batch_size",
        "--output",
    ] {
        let text = format!("{MINIMAL}arguments: [\"--model\", m.bin, \"{argument}\"]\n");
        let e = error(&text, &[]);
        assert_mentions(&e, &["arguments", argument, "reserved", "run_max_try"]);
    }
    let spec = load(&format!(
        "{MINIMAL}arguments: [--output_dir, output, --batch, -5]\n"
    ))
    .spec;
    assert_eq!(
        spec.arguments,
        vec!["--output_dir", "output", "--batch", "-5"]
    );
}

#[test]
fn mini_batch_size_accepts_yaml_integers() {
    let spec =
        load(&MINIMAL.replace("node_count: 1", "node_count: 1\n  mini_batch_size: 1024")).spec;
    let size = spec.config.mini_batch_size.unwrap();
    assert_eq!(
        (size.raw.as_str(), size.value, size.has_unit),
        ("1024", 1024, false)
    );
    let e = error(
        &MINIMAL.replace("node_count: 1", "node_count: 1\n  mini_batch_size: 10 MB"),
        &[],
    );
    assert_mentions(&e, &["mini_batch_size", "10 MB", "no spaces"]);
    let e = error(
        &MINIMAL.replace("node_count: 1", "node_count: 1\n  mini_batch_size: 1.5"),
        &[],
    );
    assert_mentions(&e, &["mini_batch_size", "no decimals"]);
}

#[test]
fn partition_keys_conflict_with_mini_batch_size_but_not_with_files() {
    let both = MINIMAL.replace(
        "node_count: 1",
        "node_count: 1\n  mini_batch_size: 1MB\n  partition_keys: [a]",
    );
    assert_mentions(
        &error(&both, &[]),
        &["partition_keys", "[a]", "mini_batch_size", "remove one"],
    );
    let files = MINIMAL
        .replace("node_count: 1", "node_count: 1\n  partition_keys: [year]")
        .replace(
            "data/reviews.parquet, format: parquet",
            "images/, format: files",
        );
    assert_eq!(load(&files).spec.config.partition_keys, vec!["year"]);
}

#[test]
fn compute_targets() {
    let with =
        |target: &str| MINIMAL.replace("node_count: 1", &format!("node_count: 1\n  {target}"));
    assert_eq!(
        load(&with("compute_target_name: LOCAL"))
            .spec
            .config
            .compute_target,
        ComputeTarget::Local
    );
    assert_eq!(
        load(&with("compute_target: local"))
            .spec
            .config
            .compute_target,
        ComputeTarget::Local
    );
    let azure = load(&with("compute_target_name: cpu-cluster"));
    assert_eq!(azure.spec.config.compute_target, ComputeTarget::Local);
    assert_mentions(&azure.warnings.join("\n"), &["cpu-cluster", "this machine"]);
    assert_eq!(
        load(&with("compute_target: df://head:50050"))
            .spec
            .config
            .compute_target,
        ComputeTarget::Cluster("df://head:50050".into())
    );
    let e = error(&with("compute_target: df://head"), &[]);
    assert_mentions(
        &e,
        &["compute_target", "df://head", "df://HOST:PORT", "local"],
    );
    let e = error(
        &with("compute_target: local\n  compute_target_name: local"),
        &[],
    );
    assert_mentions(&e, &["compute_target", "compute_target_name", "remove one"]);
}

#[test]
fn v2_aliases() {
    let text = MINIMAL.replace(
        "node_count: 1",
        "instance_count: 2\n  max_concurrency_per_instance: 4\n  mini_batch_error_threshold: 7\n  \
             retry_settings: {max_retries: 2, timeout: 30}",
    );
    let c = load(&text).spec.config;
    assert_eq!(
        (
            c.node_count,
            c.process_count_per_node,
            c.allowed_failed_count
        ),
        (2, Some(4), Some(7))
    );
    assert_eq!((c.run_max_try, c.run_invocation_timeout), (3, 30));
    let c = load(&MINIMAL.replace(
        "node_count: 1",
        "node_count: 1\n  retry_settings: {max_retries: 0}",
    ))
    .spec
    .config;
    assert_eq!((c.run_max_try, c.run_invocation_timeout), (1, 60));
}

#[test]
fn an_alias_with_its_original_is_an_error() {
    for (extra, words) in [
        ("instance_count: 1", &["instance_count", "node_count"][..]),
        (
            "process_count_per_node: 1\n  max_concurrency_per_instance: 1",
            &["max_concurrency_per_instance", "process_count_per_node"][..],
        ),
        (
            "allowed_failed_count: 1\n  mini_batch_error_threshold: 1",
            &["mini_batch_error_threshold", "allowed_failed_count"][..],
        ),
        (
            "run_max_try: 2\n  retry_settings: {max_retries: 1}",
            &["retry_settings.max_retries", "run_max_try"][..],
        ),
        (
            "run_invocation_timeout: 2\n  retry_settings: {timeout: 1}",
            &["retry_settings.timeout", "run_invocation_timeout"][..],
        ),
    ] {
        let text = MINIMAL.replace("node_count: 1", &format!("node_count: 1\n  {extra}"));
        let e = error(&text, &[]);
        assert_mentions(&e, words);
        assert_mentions(&e, &["remove one"]);
    }
}

#[test]
fn overrides_apply_before_parsing() {
    let spec = load_with(
        MINIMAL,
        &[
            "run_max_try=5",
            "partition_keys=[a,b]",
            "parallel_run_config.logging_level=WARNING",
            "output=results",
            "output_format=parquet",
            "preserve_order=true",
            "environment.python=/opt/py/bin/python3",
            "environment_variables.OMP_NUM_THREADS=1",
            "retry_settings.timeout=90",
            "description=",
        ],
    )
    .spec;
    let c = &spec.config;
    assert_eq!(c.run_max_try, 5);
    assert_eq!(c.partition_keys, vec!["a", "b"]);
    assert_eq!(c.logging_level, LoggingLevel::Warning);
    assert_eq!(c.environment.python.as_deref(), Some("/opt/py/bin/python3"));
    assert_eq!(
        c.environment_variables
            .get("OMP_NUM_THREADS")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(c.run_invocation_timeout, 90);
    assert_eq!(c.description, None);
    assert_eq!(spec.output, Some(PathBuf::from("/jobs/demo/results")));
    assert_eq!(spec.output_format, OutputFormat::Parquet);
    assert!(spec.preserve_order);

    let spec = load_with(MINIMAL, &["mini_batch_size=10MB", "error_threshold=-1"]).spec;
    assert_eq!(spec.config.mini_batch_size.map(|s| s.value), Some(10 << 20));
    assert_eq!(spec.config.error_threshold, -1);
}

#[test]
fn override_errors() {
    assert_mentions(
        &error(MINIMAL, &["run_max_try"]),
        &["--set", "run_max_try", "key=value"],
    );
    assert_mentions(
        &error(MINIMAL, &["run_max_tri=4"]),
        &[
            "--set",
            "run_max_tri",
            "unknown key",
            "run_max_try",
            "output",
        ],
    );
    assert_mentions(
        &error(MINIMAL, &["inputs=[]"]),
        &["--set", "inputs", "unknown key"],
    );
    assert_mentions(
        &error(MINIMAL, &["partition_keys=[a,"]),
        &["--set", "not valid YAML"],
    );
    assert_mentions(
        &error(MINIMAL, &["run_max_try=0"]),
        &["run_max_try", "\"0\"", ">= 1"],
    );
    assert_mentions(
        &error(MINIMAL, &["entry_script.x=1"]),
        &["--set", "entry_script", "not a mapping"],
    );
    assert_mentions(
        &error(MINIMAL, &["environment.=1"]),
        &["--set", "key=value"],
    );
    // Overrides also create a missing parallel_run_config.
    let spec = load_with(
        "inputs: [{name: a, path: a.csv}]",
        &[
            "entry_script=rust:echo",
            "error_threshold=0",
            "output_action=summary_only",
            "node_count=1",
        ],
    )
    .spec;
    assert_eq!(spec.config.entry_script, "rust:echo");
}

#[test]
fn to_yaml_writes_every_key() {
    let yaml = load(MINIMAL).spec.to_yaml().unwrap();
    for key in crate::config::catalogue::config_params().map(|p| p.name) {
        assert!(
            yaml.contains(&format!("  {key}:")) || yaml.contains(&format!("  # {key}: ")),
            "{key} missing from\n{yaml}"
        );
    }
    for key in [
        "compute_target_name:",
        "environment:",
        "inputs:",
        "output:",
        "output_format: txt",
        "arguments:",
        "preserve_order: false",
        "run_max_try: 3",
        "append_row_file_name: parallel_run_step.txt",
    ] {
        assert!(yaml.contains(key), "{key} missing from\n{yaml}");
    }
    assert!(
        !yaml.contains("instance_count"),
        "v2 names are not written:\n{yaml}"
    );
}

#[test]
fn to_yaml_shows_machine_defaults_as_comments() {
    let spec = load(MINIMAL).spec;
    let yaml = spec.to_yaml().unwrap();
    assert!(!yaml.contains("process_count_per_node: null"), "{yaml}");
    assert!(
        yaml.contains("# process_count_per_node: ") && yaml.contains("(default here: "),
        "{yaml}"
    );
    assert_eq!(load(&yaml).spec.config.process_count_per_node, None);
    let limited = load(&format!("{MINIMAL}memory_limit: 2GB\n")).spec;
    assert_eq!(
        load(&limited.to_yaml().unwrap()).spec.memory_limit,
        limited.memory_limit
    );
}

#[test]
fn to_yaml_names_the_file_the_format_writes() {
    for (format, name) in [
        ("csv", "parallel_run_step.csv"),
        ("parquet", "parallel_run_step.parquet"),
        ("txt", "parallel_run_step.txt"),
    ] {
        let spec = load(&format!("{MINIMAL}output_format: {format}\n")).spec;
        let yaml = spec.to_yaml().unwrap();
        assert!(
            yaml.contains(&format!("append_row_file_name: {name}")),
            "{format}: {yaml}"
        );
        let again = load(&yaml).spec;
        assert_eq!(
            again
                .output_format
                .append_row_file_name(&again.config.append_row_file_name),
            name,
            "reloading show-config's YAML writes the same file"
        );
    }
    let chosen = load(&format!(
        "{}output_format: csv\n",
        MINIMAL.replace(
            "node_count: 1",
            "node_count: 1\n  append_row_file_name: r.txt"
        )
    ))
    .spec;
    assert!(chosen
        .to_yaml()
        .unwrap()
        .contains("append_row_file_name: r.txt"));
}

#[test]
fn round_trips() {
    assert_round_trips(&load(MINIMAL).spec);
    assert_round_trips(&load(FULL).spec);
    let mut spec =
        load(&MINIMAL.replace("node_count: 1", "node_count: 1\n  mini_batch_size: 0010kb")).spec;
    spec.config.description = Some("123".into());
    spec.config.allowed_failed_percent = Some(12.5);
    spec.config.partition_keys = Vec::new();
    spec.arguments = vec!["--flag".into(), "true".into(), "7".into()];
    assert_round_trips(&spec);
}

#[test]
fn round_trip_keeps_relative_paths_with_a_relative_base() {
    let job = JobSpec::from_yaml_str(MINIMAL, Path::new("."), &[]).unwrap();
    assert_eq!(job.spec.config.entry_script, "score.py");
    let again = JobSpec::from_yaml_str(&job.spec.to_yaml().unwrap(), Path::new("."), &[]).unwrap();
    assert_eq!(again.spec, job.spec);
}

/// What Azure's `ParallelRunConfig.save_to_yaml` writes (with nulls, a Docker section and a
/// conda environment), plus the inputs next to it.
const AZURE_EXPORT: &str = r#"
parallel_run_config:
  mini_batch_size: 10
  error_threshold: 5
  output_action: append_row
  logging_level: INFO
  compute_target_name: cpu-cluster
  node_count: 2
  process_count_per_node: 2
  entry_script: batch_scoring.py
  source_directory: scripts
  description: null
  run_invocation_timeout: 600
  run_max_try: 3
  append_row_file_name: mnist_outputs.txt
  environment:
    name: batch_environment
    version: '1'
    python:
      interpreterPath: python
      userManagedDependencies: false
      condaDependencies:
        name: project_environment
        dependencies:
        - python=3.8.13
        - pip=20.2.4
        - scikit-learn
        - pip:
          - azureml-core
          - pillow
          - pandas
        channels:
        - anaconda
        - conda-forge
      baseCondaEnvironment: null
    environmentVariables:
      EXAMPLE_ENV_VAR: EXAMPLE_VALUE
    docker:
      enabled: true
      baseImage: mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04:20220504.v1
      platform:
        os: Linux
        architecture: amd64
      baseDockerfile: null
      baseImageRegistry:
        address: null
        username: null
        password: null
      arguments: []
    spark:
      repositories: []
      packages: []
      precachePackages: true
    inferencingStackVersion: null
    databricks:
      mavenLibraries: []
      pypiLibraries: []
      rcranLibraries: []
      jarLibraries: []
      eggLibraries: []
    r: null
inputs:
  - {name: mnist, path: data/mnist, format: files}
"#;

#[test]
fn azure_exports_load_with_warnings() {
    let job = load(AZURE_EXPORT);
    let c = &job.spec.config;
    assert_eq!(c.entry_script, "batch_scoring.py");
    assert_eq!(
        c.source_directory,
        Some(PathBuf::from("/jobs/demo/scripts"))
    );
    assert_eq!((c.node_count, c.process_count_per_node), (2, Some(2)));
    assert_eq!(c.mini_batch_files().unwrap(), 10);
    assert_eq!(c.description, None);
    assert_eq!(c.compute_target, ComputeTarget::Local);
    assert_eq!(c.environment.python, None);
    assert_eq!(c.environment.pip, vec!["azureml-core", "pillow", "pandas"]);
    assert_eq!(c.environment.name.as_deref(), Some("batch_environment"));
    assert_eq!(
        c.environment_variables
            .get("EXAMPLE_ENV_VAR")
            .map(String::as_str),
        Some("EXAMPLE_VALUE")
    );
    let warnings = job.warnings.join("\n");
    assert_eq!(job.warnings.len(), 4, "{warnings}");
    assert!(
        !warnings.contains("pip=20.2.4"),
        "pip itself is not worth a warning: {warnings}"
    );
    assert_mentions(
        &warnings,
        &[
            "cpu-cluster",
            "python=3.8.13",
            "scikit-learn",
            "environment.docker",
            "openmpi",
            "environmentVariables",
        ],
    );
}

#[test]
fn azure_export_round_trips_after_loading() {
    let first = load(AZURE_EXPORT).spec;
    let yaml = first.to_yaml().unwrap();
    assert!(
        yaml.contains("  mini_batch_size: 10\n"),
        "a plain count stays an integer:\n{yaml}"
    );
    assert_round_trips(&first);
    let again = load(&first.to_yaml().unwrap()).spec;
    assert_eq!(again, first);
}

#[test]
fn azure_environment_variables_do_not_replace_ours() {
    let text = AZURE_EXPORT.replace(
        "  run_max_try: 3",
        "  run_max_try: 3\n  environment_variables: {EXAMPLE_ENV_VAR: ours}",
    );
    let job = load(&text);
    assert_eq!(
        job.spec
            .config
            .environment_variables
            .get("EXAMPLE_ENV_VAR")
            .map(String::as_str),
        Some("ours")
    );
    assert!(
        !job.warnings.iter().any(|w| w.contains("merged")),
        "{:?}",
        job.warnings
    );
}

#[test]
fn azure_export_without_inputs_says_what_to_add() {
    let text = AZURE_EXPORT.split("inputs:").next().unwrap_or_default();
    assert_mentions(
        &error(text, &[]),
        &["inputs", "at least one input", "save_to_yaml"],
    );
}

#[test]
fn save_and_load_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.yml");
    std::fs::write(&path, MINIMAL).unwrap();
    let job = JobSpec::load_yaml(&path, &["run_max_try=4".to_string()]).unwrap();
    let script = dir.path().join("score.py");
    assert_eq!(job.spec.config.entry_script, script.to_str().unwrap());
    assert_eq!(job.spec.config.run_max_try, 4);
    let saved = dir.path().join("saved.yml");
    job.spec.save_yaml(&saved).unwrap();
    assert_eq!(JobSpec::load_yaml(&saved, &[]).unwrap().spec, job.spec);
    let missing = JobSpec::load_yaml(&dir.path().join("nope.yml"), &[]).unwrap_err();
    assert_mentions(&missing.to_string(), &["nope.yml"]);
}

#[test]
fn validate_checks_programmatic_specs() {
    let mut spec = load(MINIMAL).spec;
    spec.validate().unwrap();
    spec.inputs[0].source = InputSource::Sql("  ".into());
    assert_mentions(
        &spec.validate().unwrap_err().to_string(),
        &["inputs[0].sql", "must not be empty"],
    );
    spec.inputs.clear();
    assert_mentions(
        &spec.validate().unwrap_err().to_string(),
        &["inputs", "at least one"],
    );
}

#[test]
fn format_names() {
    assert_eq!("JSONL".parse::<InputFormat>().unwrap(), InputFormat::Json);
    assert_eq!("Files".parse::<InputFormat>().unwrap(), InputFormat::Files);
    assert_eq!(
        InputFormat::from_extension("a/b.PQ"),
        Some(InputFormat::Parquet)
    );
    assert_eq!(
        InputFormat::from_extension("a/*.ndjson"),
        Some(InputFormat::Json)
    );
    assert_eq!(InputFormat::from_extension("a/b"), None);
    assert_eq!("CSV".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
    assert_mentions(
        &"xml".parse::<OutputFormat>().unwrap_err().to_string(),
        &["output_format", "xml"],
    );
}

#[test]
fn csv_and_path_column_options_are_read_checked_and_saved() {
    let job = |input: &str| {
        MINIMAL.replace(
            "  - {name: reviews, path: data/reviews.parquet, format: parquet}\n",
            &format!("  - {input}\n"),
        )
    };
    let spec = load(&job(
        "{name: t, path: data/, format: csv, delimiter: '|', header: no_header, empty_as_string: true, path_column: Path, partition_format: '{Store}/*.csv'}",
    ))
    .spec;
    let input = &spec.inputs[0];
    assert_eq!(
        input.csv,
        CsvOptions {
            delimiter: b'|',
            header: CsvHeader::NoHeader,
            empty_as_string: true
        }
    );
    assert_eq!(input.path_column.as_deref(), Some("Path"));
    assert_eq!(input.partition_format.as_deref(), Some("{Store}/*.csv"));
    assert_round_trips(&spec);
    // A tab survives the round trip too.
    let spec = load(&job(
        "{name: t, path: a.tsv, format: csv, delimiter: \"\\t\"}",
    ))
    .spec;
    assert_eq!(spec.inputs[0].csv.delimiter, b'\t');
    assert_round_trips(&spec);

    let e = error(&job("{name: t, path: a.parquet, delimiter: ';'}"), &[]);
    assert_mentions(&e, &["inputs[0].delimiter", "csv inputs only"]);
    let e = error(
        &job("{name: t, path: a.csv, header: all_files_different_headers}"),
        &[],
    );
    assert_mentions(
        &e,
        &[
            "inputs[0].header",
            "all_files_different_headers",
            "no_header",
        ],
    );
    let e = error(&job("{name: t, path: a.csv, delimiter: ';;'}"), &[]);
    assert_mentions(&e, &["inputs[0].delimiter", ";;", "one ASCII character"]);
    let e = error(
        &job("{name: t, path: in/, format: files, path_column: Path}"),
        &[],
    );
    assert_mentions(&e, &["inputs[0].path_column", "file dataset"]);
}
