//! The benchmark harness: the reference workloads of the speed and memory targets, each timed
//! end to end (wall time of the whole command) against the hand-written multiprocessing
//! baselines of `../shared/bench/peers`, run in the same invocation, with the peak memory of
//! the whole process tree. It writes `BENCHMARKS.md`.
//!
//! ```text
//! cargo bench --bench harness                          # everything, 3 runs each
//! cargo bench --bench harness -- --runs 5 --only score-2M --only files-20k --no-write
//! cargo bench --bench harness -- --help                # every option
//! ```
//!
//! Under `cargo test` (no `--bench` in argv) it prints one line and exits: nothing heavy.
//!
//! - [`cli`]: the command line;
//! - [`setup`]: paths, Python, the generated data sets;
//! - [`workloads`]: the job files and the two sides of each workload ([`s3`]: the S3 one and
//!   its server, started through `tests/support/servers.rs`, the launcher the tests share);
//! - [`measure`]: running one command: wall, peak tree memory, CPU, checking its output;
//! - [`report`]: statistics, the targets' verdicts and BENCHMARKS.md;
//! - [`error`]: what can go wrong, typed.

mod cli;
mod cluster;
mod error;
mod measure;
mod report;
mod s3;
#[path = "../../tests/support/servers.rs"]
mod servers;
mod setup;
mod workloads;

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::Args;
use crate::cluster::{
    cluster_noop_workload, cluster_setup, cluster_tasks_workload, cluster_workload,
};
use crate::error::{HarnessError, Result};
use crate::report::{import_walls, machine, median, Report};
use crate::s3::{s3_setup, s3_workload};
use crate::setup::{absolute, check_python, count_label, find_python, shell_word, Ctx, DataSet};
use crate::workloads::{
    files_workload, keyed_workload, resume_workload, run_workload, rust_score_workload,
    score_workload, Outcome, Workload, FILES_JOB, KEYED_MAIN, RESUME, RUST_SCORE, S3_SCORE,
    SCORE_MAIN, SCORE_SMALL,
};

/// The parallel-run binary cargo built for this bench (release profile under `cargo bench`).
const BINARY: &str = env!("CARGO_BIN_EXE_parallel-run");
/// The crate root.
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Rows of the reference data sets.
const ROWS_MAIN: u64 = 2_000_000;
const ROWS_SMALL: u64 = 20_000;
const FILES: u64 = 20_000;
/// `--only memory` selects the large memory-check workload, whatever its row count.
const MEMORY_ALIAS: &str = "memory";

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "harness: not run under `cargo test`; run `cargo bench --bench harness` to measure"
        );
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("harness: some workloads failed (see the report above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("harness: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<bool> {
    let manifest = PathBuf::from(MANIFEST_DIR);
    let shared = manifest.join("../shared");
    let shared = shared
        .canonicalize()
        .map_err(|source| HarnessError::SharedMissing {
            path: shared.clone(),
            source,
        })?;
    let bench = shared.join("bench");
    for f in [
        "gen_data.py",
        "score_entry.py",
        "files_entry.py",
        "peers/mp_baseline.py",
        "peers/mp_baseline_files.py",
    ] {
        if !bench.join(f).is_file() {
            return Err(HarnessError::SharedFileMissing(bench.join(f)));
        }
    }
    let data = absolute(
        &args
            .data_dir
            .clone()
            .unwrap_or_else(|| manifest.join("target/bench-data")),
    )?;
    let logs = data.join("logs");
    fs::create_dir_all(&logs).map_err(HarnessError::io("creating", &logs))?;
    let python = find_python(args.python.as_deref(), &manifest)?;
    let python_version = check_python(&python)?;
    let binary = PathBuf::from(BINARY);
    if !binary.is_file() {
        return Err(HarnessError::BinaryMissing(binary));
    }
    let ctx = Ctx {
        manifest,
        shared,
        bench,
        data,
        logs,
        python,
        binary,
        runs: args.runs,
        timeout: Duration::from_secs(args.timeout_secs),
    };

    let large_name = format!("score-{}", count_label(args.rows_large));
    let cluster_main = format!("cluster-{SCORE_MAIN}");
    let cluster_large = format!("cluster-{large_name}");
    let cluster_noop = format!("cluster-noop-{}", count_label(ROWS_MAIN));
    let cluster_tasks = format!("cluster-tasks-{}", count_label(ROWS_MAIN));
    let keyed_large_name = format!("keyed-{}", count_label(args.rows_large));
    let all = [
        SCORE_SMALL,
        SCORE_MAIN,
        FILES_JOB,
        RUST_SCORE,
        S3_SCORE,
        KEYED_MAIN,
        RESUME,
        large_name.as_str(),
        keyed_large_name.as_str(),
        cluster_main.as_str(),
        cluster_large.as_str(),
        cluster_noop.as_str(),
        cluster_tasks.as_str(),
    ];
    for name in &args.only {
        if !all.contains(&name.as_str()) && name != MEMORY_ALIAS {
            return Err(HarnessError::UnknownWorkload {
                name: name.clone(),
                choices: format!("{}, {MEMORY_ALIAS}", all.join(", ")),
            });
        }
    }
    let wanted = |name: &str| {
        args.only.is_empty()
            || args.only.iter().any(|o| o == name)
            || (name == large_name && args.only.iter().any(|o| o == MEMORY_ALIAS))
    };
    let mut skipped: Vec<String> = all
        .iter()
        .filter(|name| !wanted(name))
        .map(|name| format!("{name}: not selected (--only)"))
        .collect();
    let run_large = wanted(&large_name) && !args.skip_large;
    if wanted(&large_name) && args.skip_large {
        skipped.push(format!(
            "{large_name} (the memory check for {} rows): --skip-large",
            args.rows_large
        ));
    }
    let run_cluster_large = wanted(&cluster_large) && !args.skip_large;
    if wanted(&cluster_large) && args.skip_large {
        skipped.push(format!(
            "{cluster_large} (the score job over {} rows on a loopback cluster): --skip-large",
            args.rows_large
        ));
    }
    let run_keyed_large = wanted(&keyed_large_name) && !args.skip_large;
    if wanted(&keyed_large_name) && args.skip_large {
        skipped.push(format!(
            "{keyed_large_name} (partition_keys over {} rows): --skip-large",
            args.rows_large
        ));
    }

    // Data, generated once.
    let small = DataSet::rows(&ctx, ROWS_SMALL);
    let main = DataSet::rows(&ctx, ROWS_MAIN);
    let files = DataSet::files(&ctx, FILES);
    let large = DataSet::rows(&ctx, args.rows_large);
    if wanted(SCORE_SMALL) {
        small.ensure(&ctx)?;
    }
    if [
        SCORE_MAIN,
        RUST_SCORE,
        S3_SCORE,
        KEYED_MAIN,
        RESUME,
        &cluster_main,
        &cluster_noop,
    ]
    .iter()
    .any(|name| wanted(name))
    {
        main.ensure(&ctx)?;
    }
    if wanted(FILES_JOB) {
        files.ensure(&ctx)?;
    }
    if run_large || run_keyed_large || run_cluster_large {
        large.ensure(&ctx)?;
    }

    let mut outcomes = Vec::new();
    let add = |w: Result<Workload>, name: &str, outcomes: &mut Vec<Outcome>| match w {
        Ok(w) => outcomes.push(run_workload(&ctx, w)),
        Err(e) => {
            eprintln!("harness: {name}: {e}");
            outcomes.push(Outcome::failed(name, e));
        }
    };
    // The entry script's import floor, timed around score-20k (same machine conditions).
    let mut floor_walls = Vec::new();
    if wanted(SCORE_SMALL) {
        floor_walls.extend(import_walls(&ctx));
        add(
            score_workload(&ctx, &small, true),
            SCORE_SMALL,
            &mut outcomes,
        );
        floor_walls.extend(import_walls(&ctx));
    }
    if wanted(SCORE_MAIN) {
        add(score_workload(&ctx, &main, true), SCORE_MAIN, &mut outcomes);
    }
    if wanted(FILES_JOB) {
        add(files_workload(&ctx, &files), FILES_JOB, &mut outcomes);
    }
    if wanted(RUST_SCORE) {
        add(rust_score_workload(&ctx, &main), RUST_SCORE, &mut outcomes);
    }
    if wanted(S3_SCORE) {
        match s3_setup(&ctx, &args) {
            Ok(s3) => {
                add(s3_workload(&ctx, &s3, &main), S3_SCORE, &mut outcomes);
                drop(s3);
            }
            Err(why) => {
                eprintln!("harness: {S3_SCORE} skipped: {why}");
                skipped.push(format!("{S3_SCORE}: {why}"));
            }
        }
    }
    if wanted(KEYED_MAIN) {
        add(keyed_workload(&ctx, &main), KEYED_MAIN, &mut outcomes);
    }
    if wanted(RESUME) {
        add(resume_workload(&ctx, &main), RESUME, &mut outcomes);
    }
    if run_large {
        add(
            score_workload(&ctx, &large, true),
            &large_name,
            &mut outcomes,
        );
    }
    if run_keyed_large {
        add(
            keyed_workload(&ctx, &large),
            &keyed_large_name,
            &mut outcomes,
        );
    }

    if wanted(&cluster_main) || run_cluster_large || wanted(&cluster_noop) || wanted(&cluster_tasks)
    {
        match cluster_setup(&ctx) {
            Ok(cluster) => {
                if wanted(&cluster_main) {
                    add(
                        cluster_workload(&ctx, &cluster, &main),
                        &cluster_main,
                        &mut outcomes,
                    );
                }
                if wanted(&cluster_noop) {
                    add(
                        cluster_noop_workload(&ctx, &cluster, &main),
                        &cluster_noop,
                        &mut outcomes,
                    );
                }
                if wanted(&cluster_tasks) {
                    add(
                        cluster_tasks_workload(&ctx, &cluster, &main),
                        &cluster_tasks,
                        &mut outcomes,
                    );
                }
                if run_cluster_large {
                    add(
                        cluster_workload(&ctx, &cluster, &large),
                        &cluster_large,
                        &mut outcomes,
                    );
                }
            }
            Err(e) => {
                eprintln!("harness: the cluster workloads: {e}");
                let name = if wanted(&cluster_main) {
                    &cluster_main
                } else if wanted(&cluster_noop) {
                    &cluster_noop
                } else if wanted(&cluster_tasks) {
                    &cluster_tasks
                } else {
                    &cluster_large
                };
                outcomes.push(Outcome::failed(name, e));
            }
        }
    }

    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| shell_word(&a))
        .collect();
    let report = Report {
        machine: machine(
            &ctx,
            python_version,
            (!floor_walls.is_empty()).then(|| median(floor_walls)),
        ),
        ctx: &ctx,
        outcomes,
        skipped,
        large_name,
        keyed_large_name,
        argv: argv.join(" "),
    };
    let text = report.markdown();
    println!("{text}");
    if !args.no_write {
        let path = absolute(
            &args
                .write
                .clone()
                .unwrap_or_else(|| ctx.manifest.join("BENCHMARKS.md")),
        )?;
        fs::write(&path, &text).map_err(HarnessError::io("writing", &path))?;
        eprintln!("harness: wrote {}", path.display());
    }
    Ok(report.outcomes.iter().all(|o| o.error.is_none()))
}
