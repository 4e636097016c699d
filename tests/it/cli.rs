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
fn debug_logs_have_no_colour_codes_off_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 100, 100);
    std::fs::write(
        d.path().join("entry.py"),
        "def run(mini_batch):\n    return mini_batch\n",
    )
    .unwrap();
    let job = write_job(
        d.path(),
        &format!("entry_script: entry.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 1\nlogging_level: DEBUG", python()),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("DEBUG"),
        "debug lines are logged: {run:?}"
    );
    assert!(!run.stderr.contains('\u{1b}'), "no ANSI escapes: {run:?}");
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

#[test]
fn an_earlier_runs_results_are_refused_unless_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let final_file = out.join("parallel_run_step.txt");
    let job = base(d.path(), GOOD);
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let first = std::fs::read_to_string(&final_file).unwrap();

    // Again into the same folder: refused before anything runs, and nothing is touched.
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&out.display().to_string())
            && run.stderr.contains("parallel_run_step.txt")
            && run.stderr.contains("logs/job_summary.json")
            && run.stderr.contains("--overwrite"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&final_file).unwrap(), first);
    assert_eq!(summary(&out)["status"], "succeeded");

    // --overwrite replaces them.
    let run = run_job(&job, &["--overwrite"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&final_file).len(), 100);

    // A failed rerun with --overwrite leaves no final file at all, old or new.
    let failing = write_job(
        d.path(),
        &format!("{GOOD}\nrun_max_try: 1"),
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\narguments: [--fail-ids, '7']\n",
    );
    let run = run_job(&failing, &["--overwrite"]);
    assert_eq!(run.code, 42, "{run:?}");
    assert!(!final_file.exists(), "a failed run leaves no final file");
    assert_eq!(summary(&out)["status"], "failed");
    // An unfinished job is there now: the next run must choose to continue it or start over.
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("unfinished job")
            && run.stderr.contains("--resume")
            && run.stderr.contains("--restart"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_second_run_on_a_running_jobs_output_is_refused() {
    let d = tempfile::tempdir().unwrap();
    // run() sleeps 4 s: the first run holds the folder for at least that long (a margin for
    // a busy machine: the second run only has to start and read its job file).
    write_parquet(&d.path().join("in.parquet"), 0, 100, 100);
    let job = write_job(
        d.path(),
        GOOD,
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n\
         arguments: [--sleep-ms, \"4000\"]\n",
    );
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_parallel-run"))
        .args(["run", job.to_str().unwrap(), "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = d.path().join("out/.parallel_run.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(lock.exists(), "the first run takes the lock");
    // Even --overwrite (which would clear the first run's work) is refused.
    let second = run_job(&job, &["--overwrite"]);
    let first_status = first.wait().unwrap();
    assert_eq!(second.code, 2, "{second:?}");
    assert!(
        second
            .stderr
            .contains("being written by another parallel-run run"),
        "{}",
        second.stderr
    );
    assert!(first_status.success(), "the first run is not disturbed");
    assert!(!lock.exists(), "released and removed when the run ends");
    assert_eq!(summary(&d.path().join("out"))["status"], "succeeded");
}

#[test]
fn clean_removes_a_failed_runs_parts_and_keeps_its_report() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 100, 10);
    let job = write_job(
        d.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\n\
         mini_batch_size: 100",
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n\
         arguments: [--fail-ids, \"99\"]\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 42, "{run:?}");
    let out = d.path().join("out");
    assert!(
        out.join(".parallel_run").is_dir(),
        "a failed run keeps its parts"
    );
    let clean = cli(&["clean", out.to_str().unwrap()]);
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(clean.stdout.contains("removed"), "{}", clean.stdout);
    assert!(!out.join(".parallel_run").exists());
    assert!(
        out.join("logs/job_summary.json").is_file(),
        "the report stays"
    );
    let again = cli(&["clean", out.to_str().unwrap()]);
    assert!(
        again.stdout.contains("nothing to clean"),
        "{}",
        again.stdout
    );
}

/// Rows of a Parquet file, from its footer.
fn parquet_rows(path: &std::path::Path) -> i64 {
    use parquet::file::reader::FileReader;
    let file = std::fs::File::open(path).unwrap();
    parquet::file::reader::SerializedFileReader::new(file)
        .unwrap()
        .metadata()
        .file_metadata()
        .num_rows()
}

#[test]
fn failed_mini_batches_are_dead_letters_and_none_is_an_empty_file() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 100, 10);
    let job = write_job(
        d.path(),
        "entry_script: rust:echo\nerror_threshold: -1\nallowed_failed_count: -1\n\
         output_action: append_row\nnode_count: 1\nrun_max_try: 2\nmini_batch_size: 100",
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out\n\
         arguments: [--fail-ids, \"42\"]\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let logs = d.path().join("out/logs");
    let csv = std::fs::read_to_string(logs.join("failed_items.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[0].starts_with("level,mini_batch_id,input,rows_start,rows_end"),
        "{csv}"
    );
    assert!(
        lines[1].starts_with("mini_batch,") && lines[1].contains("RUN_EXCEPTION"),
        "{csv}"
    );
    assert!(lines[1].contains(",2,"), "two tries: {csv}");
    assert_eq!(parquet_rows(&logs.join("failed_items.parquet")), 1);

    // Nothing failed: both files exist, empty.
    let job = write_job(
        d.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1",
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: out2\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let logs = d.path().join("out2/logs");
    let csv = std::fs::read_to_string(logs.join("failed_items.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1, "the header only: {csv}");
    assert_eq!(parquet_rows(&logs.join("failed_items.parquet")), 0);
}
