//! The command line: config errors, exit codes, validate, show-config, --set.

use crate::common::*;

fn base(dir: &std::path::Path, config: &str) -> std::path::PathBuf {
    write_parquet(&dir.join("in.parquet"), 0, 100, 100);
    write_job(
        dir,
        config,
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n",
    )
}

const GOOD: &str =
    "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1";

#[test]
fn config_errors_name_the_field_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let job = base(d.path(), &format!("{GOOD}\nmini_batch_size: 10 MB"));
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("mini_batch_size") && run.stderr.contains("10 MB"),
        "{}",
        run.stderr
    );

    let job = base(
        d.path(),
        "entry_script: rust:echo\noutput_action: append_row\nnode_count: 1",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("error_threshold"), "{}", run.stderr);

    let job = base(
        d.path(),
        &format!("{GOOD}\npartition_keys: [key]\nmini_batch_size: 1MB"),
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("partition_keys") && run.stderr.contains("mini_batch_size"),
        "{}",
        run.stderr
    );

    let job = base(
        d.path(),
        &format!("{GOOD}\nappend_row_file_name: \"a:b.txt\""),
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("append_row_file_name"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_scripts_and_missing_inputs_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let job = base(
        d.path(),
        "entry_script: rust:nope\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("nope") && run.stderr.contains("echo"),
        "{}",
        run.stderr
    );

    let job = write_job(
        d.path(),
        GOOD,
        "inputs:\n  - {name: rows, path: missing.parquet, format: parquet}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("missing.parquet"), "{}", run.stderr);
}

#[test]
fn validate_and_show_config() {
    let d = tempfile::tempdir().unwrap();
    let job = base(d.path(), GOOD);
    let run = cli(&["validate", job.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("is valid"), "{run:?}");

    let run = cli(&[
        "show-config",
        job.to_str().unwrap(),
        "--set",
        "run_max_try=7",
        "--set",
        "mini_batch_size=10MB",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    for key in [
        "run_max_try: 7",
        "mini_batch_size: 10MB",
        "run_invocation_timeout: 60",
        "append_row_file_name: parallel_run_step.txt",
        "logging_level",
        "error_threshold: 0",
    ] {
        assert!(
            run.stdout.contains(key),
            "show-config lacks {key}:\n{}",
            run.stdout
        );
    }
    let run = cli(&[
        "show-config",
        job.to_str().unwrap(),
        "--set",
        "run_max_tries=7",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("run_max_tries"), "{}", run.stderr);
}

#[test]
fn output_flag_overrides_the_job_file() {
    let d = tempfile::tempdir().unwrap();
    let job = base(d.path(), GOOD);
    let other = d.path().join("elsewhere");
    let run = run_job(&job, &["--output", other.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(other.join("parallel_run_step.txt").exists());
    assert!(!d.path().join("out").exists());
}

#[test]
fn a_missing_job_file_is_a_usage_error_for_every_subcommand() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nosuch.yaml");
    let missing = missing.to_str().unwrap();
    let missing_sql = d.path().join("nosuch.sql");
    let missing_sql = missing_sql.to_str().unwrap();
    for args in [
        vec!["run", missing, "--quiet"],
        vec!["validate", missing],
        vec!["show-config", missing],
        vec!["sql", missing_sql],
    ] {
        let run = cli(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("nosuch.") && run.stderr.contains("does not exist"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains("check the path"), "{}", run.stderr);
    }
    // A folder given as the job file says so.
    let run = cli(&["validate", d.path().to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is a folder"), "{}", run.stderr);
}
