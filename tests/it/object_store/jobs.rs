//! Jobs over the test stores: job files, data, running the CLI with a clean environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::store::Store;
use crate::common::*;

/// The CLI with `args`; the environment loses every AWS_/AZURE_ variable of the caller and
/// gets `env`.
fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parallel-run"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("AZURE_") || name.starts_with("AZURITE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// Runs the CLI with `args` and only `env` for object storage.
pub fn cli_env(args: &[&str], env: &[(String, String)]) -> CliRun {
    CliRun::from(command(args, env).output().unwrap())
}

pub fn run_env(job: &Path, env: &[(String, String)]) -> CliRun {
    cli_env(&["run", job.to_str().unwrap(), "--quiet"], env)
}

/// Starts `job` with `env` in the background.
pub fn spawn_job(job: &Path, env: &[(String, String)]) -> Child {
    command(&["run", job.to_str().unwrap(), "--quiet"], env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn finish(child: Child) -> CliRun {
    CliRun::from(child.wait_with_output().unwrap())
}

/// Writes `job.yaml` into `dir` running `rust:echo` (2 workers) with `config` lines and `rest`.
pub fn echo_job(dir: &Path, config: &str, rest: &str) -> PathBuf {
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\n{config}"
        ),
        rest,
    )
}

/// Three Parquet files of the sample table (ids 0..3000) in `dir`.
pub fn parquet_inputs(dir: &Path) {
    for i in 0..3 {
        write_parquet(&dir.join(format!("part-{i}.parquet")), i * 1000, 1000, 250);
    }
}

/// Small text files in `dir`: `f00.txt`... and two in a sub-folder.
pub fn text_files(dir: &Path, n: usize) {
    for i in 0..n {
        let path = if i % 10 == 9 {
            dir.join(format!("sub/f{i:02}.txt"))
        } else {
            dir.join(format!("f{i:02}.txt"))
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("file {i}: {}", "x".repeat(i * 7))).unwrap();
    }
}

/// Retry settings used by the fault tests: quick backoff, `timeout_secs` in all.
pub fn retries(timeout_secs: u32) -> String {
    format!(
        "retry_max_retries: 50\nretry_timeout_secs: {timeout_secs}\nretry_init_backoff_ms: 100\nretry_max_backoff_ms: 400\nconnect_timeout: 1s\ntimeout: 5s"
    )
}

/// Waits until `out`'s report lists at least `n` finished mini-batches.
pub fn wait_for_mini_batches(out: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = out.join("logs/sys/job_report/processed_mini-batches.csv");
    while Instant::now() < deadline {
        let done = std::fs::read_to_string(&report)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        if done >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the job did not get going");
}

/// 16 Parquet objects of 50 rows (ids 0..800) under `in/`, and a job echoing them slowly
/// (120 ms per 1KB mini-batch) to `output` with `options` (storage_options lines).
pub fn slow_tabular_job(store: &Store, dir: &Path, output: &str, options: &str) -> PathBuf {
    let data = dir.join("data");
    for i in 0..16 {
        write_parquet(&data.join(format!("p{i:02}.parquet")), i * 50, 50, 50);
    }
    // Under a prefix of its own: tests running beside it upload the same files, which would
    // be new objects (a new modification time) under a shared one.
    let prefix = format!("{}/in", super::store::unique("tabular"));
    store.upload_dir(&data, &prefix);
    echo_job(
        dir,
        "mini_batch_size: 1KB",
        &format!(
            "inputs:\n  - {{name: rows, path: \"{}\", format: parquet}}\noutput: \"{output}\"\narguments: [--sleep-ms, \"120\"]\n{}",
            store.url(&format!("{prefix}/")),
            store.storage_options(options)
        ),
    )
}

/// 30 small text files under `docs/`, and a job reading them as a file dataset slowly (100 ms
/// per 2-file mini-batch, 2 files downloaded ahead) to `output` with `options`
/// (storage_options lines).
pub fn slow_files_job(store: &Store, dir: &Path, output: &str, options: &str) -> PathBuf {
    let data = dir.join("files");
    text_files(&data, 30);
    store.upload_dir(&data, "docs");
    echo_job(
        dir,
        "mini_batch_size: 2",
        &format!(
            "inputs:\n  - {{name: docs, path: \"{}\", format: files}}\noutput: \"{output}\"\narguments: [--sleep-ms, \"100\", --read-files]\n{}",
            store.url("docs/"),
            store.storage_options(&format!("{options}\nprefetch_files: 2"))
        ),
    )
}
