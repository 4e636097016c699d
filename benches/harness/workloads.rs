//! The workloads: their job files and the two sides each one times (parallel-run, and the
//! baseline or the same job another way), run interleaved.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};
use crate::measure::{run_side, Check, Interrupt, JobOutput, Sample, Side};
use crate::report::mb;
use crate::setup::{count_label, shell_line, Ctx, DataSet};

/// The workloads' names.
pub const SCORE_SMALL: &str = "score-20k";
pub const SCORE_MAIN: &str = "score-2M";
pub const FILES_JOB: &str = "files-20k";
pub const RUST_SCORE: &str = "rust-score-2M";
pub const S3_SCORE: &str = "s3-score-2M";
pub const KEYED_MAIN: &str = "keyed-2M";
pub const RESUME: &str = "resume-2M";
/// The reference job's init() sleeps this long (score_entry.py and rust:score).
pub const SCORE_INIT_SECS: f64 = 1.0;
/// Distinct values of the reference data's `key` column (gen_data.py's N_KEYS): the keyed
/// jobs' mini-batches.
pub const KEYS: u64 = 1000;
/// The keyed jobs' workers and `memory_limit` (binary units, as the job file reads it):
/// well below the data (the 2M-row set is 259 MB of Parquet, the 20M-row one 2.3 GB).
pub const KEYED_WORKERS: u32 = 4;
pub const KEYED_MEMORY_LIMIT: &str = "128MB";
pub const KEYED_MEMORY_LIMIT_BYTES: u64 = 128 << 20;
/// What a keyed job's peak tree RSS may exceed `memory_limit` by, bytes: the memory the
/// limit does not account for and that does not grow with the data (see the report's
/// "How it is measured").
pub const KEYED_MARGIN_BYTES: u64 = 128_000_000;
/// resume-2M kills its job once the ledger holds this share of the mini-batches.
pub const RESUME_AT: f64 = 0.9;

/// A YAML/JSON string scalar.
pub fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

struct JobFile<'a> {
    entry_script: String,
    python: Option<&'a Path>,
    input: String,
    format: &'a str,
    /// None with `partition_keys` (the two exclude each other).
    mini_batch_size: Option<&'a str>,
    output: &'a Path,
    output_format: &'a str,
    storage_options: Option<String>,
    output_action: &'a str,
    workers: u32,
    partition_keys: Option<&'a str>,
    memory_limit: Option<&'a str>,
}

impl<'a> JobFile<'a> {
    /// The settings every workload shares (2 workers, append_row, no keys, the default
    /// memory limit) for `entry_script` over `input`.
    fn new(entry_script: String, input: String, format: &'a str, output: &'a Path) -> Self {
        JobFile {
            entry_script,
            python: None,
            input,
            format,
            mini_batch_size: None,
            output,
            output_format: "parquet",
            storage_options: None,
            output_action: "append_row",
            workers: 2,
            partition_keys: None,
            memory_limit: None,
        }
    }

    fn write(&self, path: &Path) -> Result<()> {
        let mut y = String::from("# Written by benches/harness (cargo bench --bench harness).\n");
        y.push_str("parallel_run_config:\n");
        let _ = writeln!(y, "  entry_script: {}", q(&self.entry_script));
        if let Some(python) = self.python {
            let _ = writeln!(y, "  environment: {{python: {}}}", qp(python));
        }
        y.push_str("  error_threshold: 0\n");
        let _ = writeln!(y, "  output_action: {}", self.output_action);
        y.push_str("  node_count: 1\n");
        let _ = writeln!(y, "  process_count_per_node: {}", self.workers);
        if let Some(size) = self.mini_batch_size {
            let _ = writeln!(y, "  mini_batch_size: {}", q(size));
        }
        if let Some(keys) = self.partition_keys {
            let _ = writeln!(y, "  partition_keys: [{}]", q(keys));
        }
        y.push_str("inputs:\n");
        let _ = writeln!(
            y,
            "  - {{name: data, path: {}, format: {}}}",
            q(&self.input),
            self.format
        );
        let _ = writeln!(y, "output: {}", qp(self.output));
        if self.output_action == "append_row" {
            let _ = writeln!(y, "output_format: {}", self.output_format);
        }
        if let Some(limit) = self.memory_limit {
            let _ = writeln!(y, "memory_limit: {limit}");
        }
        if let Some(options) = &self.storage_options {
            let _ = writeln!(y, "storage_options: {options}");
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(HarnessError::io("creating", parent))?;
        }
        fs::write(path, y).map_err(HarnessError::io("writing", path))
    }
}

pub struct Workload {
    pub name: String,
    /// One line for the report.
    pub what: String,
    pub items: u64,
    pub unit: &'static str,
    /// Seconds of init() inside the wall (the entry script's sleep).
    pub init_secs: f64,
    pub a: Side,
    pub b: Option<Side>,
    /// Extra lines for the commands section (setup not timed).
    pub setup_note: Option<String>,
}

/// What a workload measured.
pub struct Outcome {
    pub name: String,
    pub what: String,
    pub items: u64,
    pub unit: &'static str,
    pub init_secs: f64,
    pub a: Vec<Sample>,
    pub b_label: Option<String>,
    pub b: Vec<Sample>,
    /// (label, command line) of each side.
    pub commands: Vec<(String, String)>,
    pub setup_note: Option<String>,
    pub error: Option<HarnessError>,
}

impl Outcome {
    /// A workload that could not be set up.
    pub fn failed(name: &str, error: HarnessError) -> Outcome {
        Outcome {
            name: name.into(),
            what: String::new(),
            items: 0,
            unit: "",
            init_secs: 0.0,
            a: Vec::new(),
            b_label: None,
            b: Vec::new(),
            commands: Vec::new(),
            setup_note: None,
            error: Some(error),
        }
    }
}

pub fn run_workload(ctx: &Ctx, mut w: Workload) -> Outcome {
    let mut commands = vec![(w.a.label.clone(), shell_line(&w.a.cmd))];
    if let Some(b) = &w.b {
        commands.push((b.label.clone(), shell_line(&b.cmd)));
    }
    let mut outcome = Outcome {
        name: w.name.clone(),
        what: w.what.clone(),
        items: w.items,
        unit: w.unit,
        init_secs: w.init_secs,
        a: Vec::new(),
        b_label: w.b.as_ref().map(|b| b.label.clone()),
        b: Vec::new(),
        commands,
        setup_note: w.setup_note.take(),
        error: None,
    };
    eprintln!("harness: {} ({})", w.name, w.what);
    for run in 1..=ctx.runs {
        let log = ctx.logs.join(format!("{}-run{run}-a.log", w.name));
        match run_side(ctx, &mut w.a, &log) {
            Ok(s) => {
                eprintln!(
                    "  run {run}/{}: {:<28} {:7.2} s  {:>7}  cpu {:.1} s{}",
                    ctx.runs,
                    w.a.label,
                    s.wall,
                    mb(s.peak_rss as f64),
                    s.cpu,
                    s.server_cpu
                        .map_or(String::new(), |c| format!(" (+ {c:.1} s S3 server)"))
                );
                outcome.a.push(s);
            }
            Err(e) => {
                eprintln!("  run {run}: FAILED: {e}");
                outcome.error = Some(e);
                return outcome;
            }
        }
        if let Some(b) = w.b.as_mut() {
            let log = ctx.logs.join(format!("{}-run{run}-b.log", w.name));
            match run_side(ctx, b, &log) {
                Ok(s) => {
                    eprintln!(
                        "  run {run}/{}: {:<28} {:7.2} s  {:>7}  cpu {:.1} s",
                        ctx.runs,
                        b.label,
                        s.wall,
                        mb(s.peak_rss as f64),
                        s.cpu
                    );
                    outcome.b.push(s);
                }
                Err(e) => {
                    eprintln!("  run {run}: FAILED: {e}");
                    outcome.error = Some(e);
                    return outcome;
                }
            }
        }
    }
    outcome
}

pub fn engine_side(ctx: &Ctx, label: &str, job: &Path, out_dir: &Path, items: u64) -> Side {
    let mut cmd = Command::new(&ctx.binary);
    cmd.arg("run").arg(job).arg("--quiet");
    Side {
        label: label.to_string(),
        cmd,
        clean: out_dir.to_path_buf(),
        prepare: None,
        check: Check::Job {
            out_dir: out_dir.to_path_buf(),
            items,
            output: JobOutput::Rows,
            mini_batches: None,
            min_skipped: None,
        },
        server_pid: None,
    }
}

fn baseline_side(ctx: &Ctx, data: &DataSet, out_dir: &Path) -> Side {
    let script = if data.files {
        "mp_baseline_files.py"
    } else {
        "mp_baseline.py"
    };
    let mut cmd = Command::new(&ctx.python);
    cmd.env("BENCH_VERIFY", "0")
        .arg(ctx.bench.join("peers").join(script))
        .arg(&data.dir)
        .arg(out_dir);
    Side {
        label: script.to_string(),
        cmd,
        clean: out_dir.to_path_buf(),
        prepare: None,
        server_pid: None,
        check: if data.files {
            Check::Lines {
                file: out_dir.join("results.txt"),
                expect: data.items,
            }
        } else {
            Check::RowsLine { expect: data.items }
        },
    }
}

/// The no-op job of the cluster overhead workload: rust:echo over `input` (Parquet) in
/// `mini_batch_size` mini-batches, 2 workers, Parquet output.
pub fn echo_job(
    ctx: &Ctx,
    name: &str,
    input: String,
    mini_batch_size: &str,
) -> Result<(PathBuf, PathBuf)> {
    let job = ctx.data.join("jobs").join(format!("{name}.yaml"));
    let out = ctx.data.join("out").join(name);
    JobFile {
        mini_batch_size: Some(mini_batch_size),
        ..JobFile::new("rust:echo".into(), input, "parquet", &out)
    }
    .write(&job)?;
    Ok((job, out))
}

/// The Python score job over `data` (score_entry.py, 2 workers, 1MB, Parquet output).
pub fn score_job(
    ctx: &Ctx,
    name: &str,
    input: String,
    storage_options: Option<String>,
) -> Result<(PathBuf, PathBuf)> {
    let job = ctx.data.join("jobs").join(format!("{name}.yaml"));
    let out = ctx.data.join("out").join(name);
    JobFile {
        python: Some(&ctx.python),
        mini_batch_size: Some("1MB"),
        storage_options,
        ..JobFile::new(
            ctx.bench
                .join("score_entry.py")
                .to_string_lossy()
                .into_owned(),
            input,
            "parquet",
            &out,
        )
    }
    .write(&job)?;
    Ok((job, out))
}

pub fn score_workload(ctx: &Ctx, data: &DataSet, with_baseline: bool) -> Result<Workload> {
    let name = format!("score-{}", count_label(data.items));
    let (job, out) = score_job(ctx, &name, dir_arg(&data.dir), None)?;
    Ok(Workload {
        what: format!(
            "score_entry.py over {} rows, 2 workers, 1MB mini-batches, Parquet output",
            data.items
        ),
        items: data.items,
        unit: "rows",
        init_secs: SCORE_INIT_SECS,
        a: engine_side(ctx, "parallel-run", &job, &out, data.items),
        b: with_baseline.then(|| {
            baseline_side(
                ctx,
                data,
                &ctx.data.join("out").join(format!("{name}-baseline")),
            )
        }),
        name,
        setup_note: None,
    })
}

/// A folder as a job input path (with the trailing slash that says "folder").
pub fn dir_arg(dir: &Path) -> String {
    format!("{}/", dir.display())
}

pub fn files_workload(ctx: &Ctx, data: &DataSet) -> Result<Workload> {
    let name = FILES_JOB.to_string();
    let job = ctx.data.join("jobs").join(format!("{name}.yaml"));
    let out = ctx.data.join("out").join(&name);
    JobFile {
        python: Some(&ctx.python),
        mini_batch_size: Some("100"),
        output_format: "txt",
        ..JobFile::new(
            ctx.bench
                .join("files_entry.py")
                .to_string_lossy()
                .into_owned(),
            dir_arg(&data.dir),
            "files",
            &out,
        )
    }
    .write(&job)?;
    let mut a = engine_side(ctx, "parallel-run", &job, &out, data.items);
    if let Check::Job { output, .. } = &mut a.check {
        *output = JobOutput::Lines(out.join("parallel_run_step.txt"));
    }
    Ok(Workload {
        what: format!(
            "files_entry.py over {} text files, 2 workers, 100 files per mini-batch, txt output",
            data.items
        ),
        items: data.items,
        unit: "files",
        init_secs: 0.0,
        a,
        b: Some(baseline_side(
            ctx,
            data,
            &ctx.data.join("out").join(format!("{name}-baseline")),
        )),
        name,
        setup_note: None,
    })
}

pub fn rust_score_workload(ctx: &Ctx, data: &DataSet) -> Result<Workload> {
    let name = RUST_SCORE.to_string();
    let job = ctx.data.join("jobs").join(format!("{name}.yaml"));
    let out = ctx.data.join("out").join(&name);
    rust_score_job(data, &job, &out)?;
    Ok(Workload {
        what: format!(
            "the same scoring as the in-process Rust script rust:score (init sleeps 1 s) over {} \
             rows, 2 workers, 1MB, Parquet output",
            data.items
        ),
        items: data.items,
        unit: "rows",
        init_secs: SCORE_INIT_SECS,
        a: engine_side(ctx, "parallel-run rust:score", &job, &out, data.items),
        b: None,
        name,
        setup_note: None,
    })
}

/// rust-score-2M's job file: rust:score over `data`, 2 workers, 1MB, Parquet output.
fn rust_score_job(data: &DataSet, job: &Path, out: &Path) -> Result<()> {
    JobFile {
        mini_batch_size: Some("1MB"),
        ..JobFile::new("rust:score".into(), dir_arg(&data.dir), "parquet", out)
    }
    .write(job)
}

/// keyed-2M / keyed-20M: rust:echo over `data` with `partition_keys: [key]` (one mini-batch
/// per key), `summary_only`, 4 workers and a `memory_limit` well below the data.
pub fn keyed_workload(ctx: &Ctx, data: &DataSet) -> Result<Workload> {
    let name = format!("keyed-{}", count_label(data.items));
    let job = ctx.data.join("jobs").join(format!("{name}.yaml"));
    let out = ctx.data.join("out").join(&name);
    JobFile {
        output_action: "summary_only",
        workers: KEYED_WORKERS,
        partition_keys: Some("key"),
        memory_limit: Some(KEYED_MEMORY_LIMIT),
        ..JobFile::new("rust:echo".into(), dir_arg(&data.dir), "parquet", &out)
    }
    .write(&job)?;
    let mut a = engine_side(ctx, "parallel-run rust:echo", &job, &out, data.items);
    if let Check::Job {
        output,
        mini_batches,
        ..
    } = &mut a.check
    {
        *output = JobOutput::None;
        *mini_batches = Some(KEYS);
    }
    Ok(Workload {
        what: format!(
            "the in-process Rust script rust:echo over {} rows with `partition_keys: [key]` \
             ({KEYS} keys, so {KEYS} mini-batches), summary_only, {KEYED_WORKERS} workers, \
             `memory_limit: {KEYED_MEMORY_LIMIT}`",
            data.items
        ),
        items: data.items,
        unit: "rows",
        init_secs: 0.0,
        a,
        b: None,
        name,
        setup_note: None,
    })
}

/// resume-2M: rust-score-2M's job (rust:score, 2 workers, 1MB, Parquet output) SIGKILLed once
/// its ledger holds 90% of the mini-batches (untimed), then `--resume` (timed), against the
/// same job run whole (interleaved). One untimed whole run first learns the mini-batch count.
pub fn resume_workload(ctx: &Ctx, data: &DataSet) -> Result<Workload> {
    let name = RESUME.to_string();
    let job = ctx.data.join("jobs").join(format!("{name}.yaml"));
    let out = ctx.data.join("out").join(&name);
    rust_score_job(data, &job, &out)?;
    let mut full = engine_side(ctx, "parallel-run (whole job)", &job, &out, data.items);
    let log = ctx.logs.join(format!("{name}-count.log"));
    let total = run_side(ctx, &mut full, &log)?
        .mini_batches
        .filter(|n| *n > 0)
        .ok_or_else(|| HarnessError::NoMiniBatchCount(out.join("logs/job_summary.json")))?;
    let at = (total as f64 * RESUME_AT).ceil() as u64;
    let mut run = Command::new(&ctx.binary);
    run.arg("run").arg(&job).arg("--quiet");
    let records = out.join("logs/ledger/records.jsonl");
    let setup_note = format!(
        "one whole run (not timed) counted {total} mini-batches; before each timed resume, `{}` \
         runs (not timed) until `{}` holds at least {at} lines ({:.0}% of the mini-batches) and \
         is then killed with SIGKILL",
        ctx.relative(&shell_line(&run)),
        ctx.show(&records),
        RESUME_AT * 100.0
    );
    let mut resume = Command::new(&ctx.binary);
    resume.arg("run").arg(&job).arg("--resume").arg("--quiet");
    let a = Side {
        label: "parallel-run --resume".into(),
        cmd: resume,
        clean: out.clone(),
        prepare: Some(Interrupt {
            cmd: run,
            records,
            at,
            attempts: 5,
        }),
        check: Check::Job {
            out_dir: out.clone(),
            items: data.items,
            output: JobOutput::EveryIdOnce(out.join("parallel_run_step.parquet")),
            mini_batches: Some(total),
            min_skipped: Some(at),
        },
        server_pid: None,
    };
    Ok(Workload {
        what: format!(
            "rust-score-2M's job (rust:score, init sleeps 1 s, {} rows, 2 workers, 1MB, Parquet \
             output) killed with SIGKILL after {:.0}% of its mini-batches, then `--resume`, \
             against the same job run whole",
            data.items,
            RESUME_AT * 100.0
        ),
        items: data.items,
        unit: "rows",
        init_secs: SCORE_INIT_SECS,
        a,
        b: Some(full),
        name,
        setup_note: Some(setup_note),
    })
}
