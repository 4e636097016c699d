//! The workloads: their job files and the two sides each one times (parallel-run, and the
//! baseline or the same job another way), run interleaved.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};
use crate::measure::{run_side, Check, Sample, Side};
use crate::report::mb;
use crate::setup::{count_label, shell_line, Ctx, DataSet};

/// The workloads' names.
pub const SCORE_SMALL: &str = "score-20k";
pub const SCORE_MAIN: &str = "score-2M";
pub const FILES_JOB: &str = "files-20k";
pub const RUST_SCORE: &str = "rust-score-2M";
pub const S3_SCORE: &str = "s3-score-2M";
/// The reference job's init() sleeps this long (score_entry.py and rust:score).
pub const SCORE_INIT_SECS: f64 = 1.0;

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
    mini_batch_size: &'a str,
    output: &'a Path,
    output_format: &'a str,
    storage_options: Option<String>,
}

impl JobFile<'_> {
    fn write(&self, path: &Path) -> Result<()> {
        let mut y = String::from("# Written by benches/harness (cargo bench --bench harness).\n");
        y.push_str("parallel_run_config:\n");
        let _ = writeln!(y, "  entry_script: {}", q(&self.entry_script));
        if let Some(python) = self.python {
            let _ = writeln!(y, "  environment: {{python: {}}}", qp(python));
        }
        y.push_str("  error_threshold: 0\n");
        y.push_str("  output_action: append_row\n");
        y.push_str("  node_count: 1\n");
        y.push_str("  process_count_per_node: 2\n");
        let _ = writeln!(y, "  mini_batch_size: {}", q(self.mini_batch_size));
        y.push_str("inputs:\n");
        let _ = writeln!(
            y,
            "  - {{name: data, path: {}, format: {}}}",
            q(&self.input),
            self.format
        );
        let _ = writeln!(y, "output: {}", qp(self.output));
        let _ = writeln!(y, "output_format: {}", self.output_format);
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
        check: Check::Job {
            out_dir: out_dir.to_path_buf(),
            items,
            lines_file: None,
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
        entry_script: ctx
            .bench
            .join("score_entry.py")
            .to_string_lossy()
            .into_owned(),
        python: Some(&ctx.python),
        input,
        format: "parquet",
        mini_batch_size: "1MB",
        output: &out,
        output_format: "parquet",
        storage_options,
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
        entry_script: ctx
            .bench
            .join("files_entry.py")
            .to_string_lossy()
            .into_owned(),
        python: Some(&ctx.python),
        input: dir_arg(&data.dir),
        format: "files",
        mini_batch_size: "100",
        output: &out,
        output_format: "txt",
        storage_options: None,
    }
    .write(&job)?;
    let mut a = engine_side(ctx, "parallel-run", &job, &out, data.items);
    if let Check::Job { lines_file, .. } = &mut a.check {
        *lines_file = Some(out.join("parallel_run_step.txt"));
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
    JobFile {
        entry_script: "rust:score".into(),
        python: None,
        input: dir_arg(&data.dir),
        format: "parquet",
        mini_batch_size: "1MB",
        output: &out,
        output_format: "parquet",
        storage_options: None,
    }
    .write(&job)?;
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
