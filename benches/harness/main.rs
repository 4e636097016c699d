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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

/// The parallel-run binary cargo built for this bench (release profile under `cargo bench`).
const BINARY: &str = env!("CARGO_BIN_EXE_parallel-run");
/// The crate root.
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// How often the process tree's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The credentials of the S3 server the harness starts (and expects at `--s3-endpoint`).
const S3_KEY: &str = "test";
const S3_SECRET: &str = "testsecret";
const S3_REGION: &str = "us-east-1";
/// The reference job's init() sleeps this long (score_entry.py and rust:score).
const SCORE_INIT_SECS: f64 = 1.0;
/// Rows of the reference data sets.
const ROWS_MAIN: u64 = 2_000_000;
const ROWS_SMALL: u64 = 20_000;
const FILES: u64 = 20_000;

const SCORE_SMALL: &str = "score-20k";
const SCORE_MAIN: &str = "score-2M";
const FILES_JOB: &str = "files-20k";
const RUST_SCORE: &str = "rust-score-2M";
const S3_SCORE: &str = "s3-score-2M";
/// `--only memory` selects the large memory-check workload, whatever its row count.
const MEMORY_ALIAS: &str = "memory";

#[derive(Parser, Debug)]
#[command(
    name = "harness",
    bin_name = "cargo bench --bench harness --",
    about = "parallel-run's benchmark harness: reference workloads against the multiprocessing \
             baselines, wall time and peak process-tree memory; writes BENCHMARKS.md",
    after_help = "Workloads: score-20k, score-2M, files-20k, rust-score-2M, s3-score-2M and the \
                  memory check score-<rows-large> (alias: memory)."
)]
struct Args {
    /// Runs per workload and side (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Run only this workload (repeatable).
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
    /// Rows of the memory-check data set.
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    rows_large: u64,
    /// Skip the large memory-check workload (and generating its data).
    #[arg(long)]
    skip_large: bool,
    /// Python with numpy, pandas and pyarrow (default: $PARALLEL_RUN_PYTHON, else the crate's
    /// .venv/bin/python, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where the data sets, job files and outputs go; data sets are generated only when
    /// missing (default: target/bench-data in the crate).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the Markdown report goes (default: BENCHMARKS.md in the crate).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Print the report only; write no file.
    #[arg(long, conflicts_with = "write")]
    no_write: bool,
    /// An S3 endpoint to use (its bucket must exist; credentials test/testsecret). Without
    /// it the harness starts s3s-fs from $PARALLEL_RUN_S3S_FS_BIN or the CI cache, if there.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// The bucket for the S3 workload.
    #[arg(long, default_value = "parallel-run-bench")]
    s3_bucket: String,
    /// A run taking longer than this is killed and the workload fails.
    #[arg(long, default_value_t = 1200)]
    timeout_secs: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

type Res<T> = Result<T, String>;

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

// ---------------------------------------------------------------------------------------------
// Setup

/// Paths and settings shared by every workload.
struct Ctx {
    manifest: PathBuf,
    shared: PathBuf,
    bench: PathBuf,
    data: PathBuf,
    logs: PathBuf,
    python: PathBuf,
    binary: PathBuf,
    runs: u32,
    timeout: Duration,
}

impl Ctx {
    /// A path as people would type it from the crate root (`target/...`, `../shared/...`).
    fn show(&self, path: &Path) -> String {
        if let Ok(rest) = path.strip_prefix(&self.shared) {
            return Path::new("../shared").join(rest).display().to_string();
        }
        if let Ok(rest) = path.strip_prefix(&self.manifest) {
            return rest.display().to_string();
        }
        path.display().to_string()
    }
}

fn absolute(path: &Path) -> Res<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| format!("current folder: {e}"))?;
    Ok(cwd.join(path))
}

/// `$PARALLEL_RUN_PYTHON`, else `.venv/bin/python` in the crate, else `python3`.
fn find_python(given: Option<&Path>, manifest: &Path) -> Res<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("PARALLEL_RUN_PYTHON") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let venv = manifest.join(".venv/bin/python");
                if venv.exists() {
                    venv
                } else {
                    PathBuf::from("python3")
                }
            }
        },
    };
    // A bare name is looked up on PATH; anything with a slash is made absolute (not
    // canonicalized: a venv's python is a symlink whose target is not the venv).
    if path.components().count() > 1 {
        absolute(&path)
    } else {
        Ok(path)
    }
}

/// Checks the interpreter has what the baselines and the entry scripts need; returns the
/// versions line.
fn check_python(python: &Path) -> Res<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, numpy, pandas, pyarrow; print(f'Python {sys.version.split()[0]}, \
             numpy {numpy.__version__}, pandas {pandas.__version__}, \
             pyarrow {pyarrow.__version__}')",
        ])
        .output()
        .map_err(|e| format!("cannot run Python {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "Python {} lacks numpy, pandas or pyarrow (pass --python or set \
             PARALLEL_RUN_PYTHON; `bash .ci/run` makes .venv with them):\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Short names: 20000 -> 20k, 2000000 -> 2M.
fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// A generated data set.
struct DataSet {
    dir: PathBuf,
    /// Rows (tabular) or files.
    items: u64,
    files: bool,
}

impl DataSet {
    fn rows(ctx: &Ctx, rows: u64) -> DataSet {
        DataSet {
            dir: ctx.data.join(format!("rows-{rows}")),
            items: rows,
            files: false,
        }
    }

    fn files(ctx: &Ctx, files: u64) -> DataSet {
        DataSet {
            dir: ctx.data.join(format!("files-{files}")),
            items: files,
            files: true,
        }
    }

    /// Generates the data with gen_data.py unless a complete copy is there.
    fn ensure(&self, ctx: &Ctx) -> Res<()> {
        // Beside the folder, not in it: a file dataset job would list it.
        let marker = self.dir.with_extension("complete");
        if marker.exists() {
            return Ok(());
        }
        let gen = ctx.bench.join("gen_data.py");
        let mut cmd = Command::new(&ctx.python);
        cmd.arg(&gen).arg(&self.dir);
        if self.files {
            cmd.arg("--files").arg(self.items.to_string());
        } else {
            cmd.arg("--rows").arg(self.items.to_string());
        }
        cmd.arg("--clean");
        eprintln!(
            "harness: generating {} ({} {}) ...",
            ctx.show(&self.dir),
            self.items,
            if self.files { "files" } else { "rows" }
        );
        let t = Instant::now();
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {}: {e}", gen.display()))?;
        if !status.success() {
            return Err(format!(
                "generating {} failed ({status}): {}",
                self.dir.display(),
                shell_line(&cmd)
            ));
        }
        fs::write(&marker, shell_line(&cmd) + "\n")
            .map_err(|e| format!("{}: {e}", marker.display()))?;
        eprintln!(
            "harness: generated {} in {:.1} s",
            ctx.show(&self.dir),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn shell_line(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            v.map(|v| {
                format!(
                    "{}={}",
                    k.to_string_lossy(),
                    shell_word(&v.to_string_lossy())
                )
            })
        })
        .collect();
    words.push(shell_word(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| shell_word(&a.to_string_lossy())));
    words.join(" ")
}

// ---------------------------------------------------------------------------------------------
// Job files

/// A YAML/JSON string scalar.
fn q(s: &str) -> String {
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
    fn write(&self, path: &Path) -> Res<()> {
        let mut y =
            String::from("# Written by benches/harness.rs (cargo bench --bench harness).\n");
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
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(path, y).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// Running and measuring one command

/// One timed run.
#[derive(Debug, Clone, Default)]
struct Sample {
    wall: f64,
    /// Peak summed VmRSS of the process and all its descendants, bytes.
    peak_rss: u64,
    /// User + system CPU seconds of the process and the descendants it reaped.
    cpu: f64,
    /// CPU seconds of the side's server process (S3) during the run.
    server_cpu: Option<f64>,
    /// From logs/job_summary.json (parallel-run runs only).
    mini_batches: Option<u64>,
    job_elapsed: Option<f64>,
}

/// How a run's output is checked (never timed).
enum Check {
    /// parallel-run: exit 0 and `logs/job_summary.json` says succeeded with every item, and
    /// the output has a row per item: `output_rows`, or the lines of `lines_file` for `txt`
    /// output (whose `output_rows` counts pre-formatted chunks, not lines).
    Job {
        out_dir: PathBuf,
        items: u64,
        lines_file: Option<PathBuf>,
    },
    /// mp_baseline.py: exit 0 and a `rows=N` line in its output.
    RowsLine { expect: u64 },
    /// mp_baseline_files.py: exit 0 and one line per file in the results file.
    Lines { file: PathBuf, expect: u64 },
}

/// One side of a workload: a command, what to remove before each run, how to check it.
struct Side {
    label: String,
    cmd: Command,
    clean: PathBuf,
    check: Check,
    /// A process outside the tree whose CPU time during the run is recorded too (the S3
    /// server the harness started).
    server_pid: Option<i32>,
}

/// User + system CPU seconds `pid` has used so far (`/proc/PID/stat`).
fn process_cpu(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm)": state is field 3 of the line, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// Sum of VmRSS over `root` and all its descendants, bytes.
fn tree_rss(root: i32) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(ppid) = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        children.entry(ppid).or_default().push(pid);
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        total += vm_rss(pid);
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    total
}

fn vm_rss(pid: i32) -> u64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Waits for `pid` and returns (wait status, rusage of it and its reaped descendants).
fn wait4(pid: i32) -> io::Result<(i32, libc::rusage)> {
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals; pid is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((status, usage));
    }
}

fn describe_status(status: i32) -> (bool, String) {
    if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (code == 0, format!("exit code {code}"))
    } else if libc::WIFSIGNALED(status) {
        (
            false,
            format!("killed by signal {}", libc::WTERMSIG(status)),
        )
    } else {
        (false, format!("wait status {status}"))
    }
}

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

/// Runs one side once: cleans its output, runs the command with stdout and stderr going to
/// `log`, samples the tree's memory, then checks the output.
fn run_side(ctx: &Ctx, side: &mut Side, log: &Path) -> Res<Sample> {
    if side.clean.exists() {
        fs::remove_dir_all(&side.clean)
            .map_err(|e| format!("removing {}: {e}", side.clean.display()))?;
    }
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    side.cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));

    let server_cpu_before = side.server_pid.and_then(process_cpu);
    let start = Instant::now();
    let child = side
        .cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", shell_line(&side.cmd)))?;
    let pid = child.id() as i32;

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss(pid), Ordering::Relaxed);
                thread::sleep(SAMPLE_EVERY);
            }
        })
    };
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let timeout = ctx.timeout;
    let watchdog = thread::spawn(move || {
        if done_rx.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: plain syscall on our own child's pid, not yet reaped (we are its waiter).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });

    let waited = wait4(pid);
    let wall = start.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let timed_out = watchdog.join().unwrap_or(false);
    drop(child); // already reaped by wait4

    let (status, usage) = waited.map_err(|e| format!("waiting for `{}`: {e}", side.label))?;
    let (ok, how) = describe_status(status);
    let fail = |what: String| {
        format!(
            "{what}\n  command: {}\n  log: {}\n  last output:\n{}",
            shell_line(&side.cmd),
            log.display(),
            tail(log, 1500)
        )
    };
    if timed_out {
        return Err(fail(format!(
            "{} took longer than {} s and was killed",
            side.label,
            timeout.as_secs()
        )));
    }
    if !ok {
        return Err(fail(format!("{} failed: {how}", side.label)));
    }
    let mut sample = Sample {
        wall,
        peak_rss: peak.load(Ordering::Relaxed),
        cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        server_cpu: match (server_cpu_before, side.server_pid.and_then(process_cpu)) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        },
        ..Sample::default()
    };
    match &side.check {
        Check::Job {
            out_dir,
            items,
            lines_file,
        } => {
            let path = out_dir.join("logs/job_summary.json");
            let text = fs::read_to_string(&path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| fail(format!("{}: bad JSON: {e}", path.display())))?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
            let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("?");
            let (total, good, written) = (
                num("items_total"),
                num("items_succeeded"),
                num("output_rows"),
            );
            if status != "succeeded" || total != Some(*items) || good != Some(*items) {
                return Err(fail(format!(
                    "{}: status {status}, items_total {total:?}, items_succeeded {good:?}; \
                     expected {items} items",
                    path.display()
                )));
            }
            match lines_file {
                Some(file) => {
                    let text = fs::read_to_string(file)
                        .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
                    let lines = text.lines().count() as u64;
                    if lines != *items {
                        return Err(fail(format!(
                            "{}: {lines} lines, expected {items}",
                            file.display()
                        )));
                    }
                }
                None if written != Some(*items) => {
                    return Err(fail(format!(
                        "{}: output_rows {written:?}, expected {items}",
                        path.display()
                    )));
                }
                None => {}
            }
            sample.mini_batches = num("mini_batches_total");
            sample.job_elapsed = v.get("elapsed_seconds").and_then(|s| s.as_f64());
        }
        Check::RowsLine { expect } => {
            let text = fs::read_to_string(log).unwrap_or_default();
            let rows = text
                .lines()
                .find_map(|l| l.strip_prefix("rows="))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|r| r.parse::<u64>().ok());
            if rows != Some(*expect) {
                return Err(fail(format!(
                    "{}: reported rows {rows:?}, expected {expect}",
                    side.label
                )));
            }
        }
        Check::Lines { file, expect } => {
            let text = fs::read_to_string(file)
                .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
            let lines = text.lines().count() as u64;
            if lines != *expect {
                return Err(fail(format!(
                    "{}: {lines} lines, expected {expect}",
                    file.display()
                )));
            }
        }
    }
    Ok(sample)
}

// ---------------------------------------------------------------------------------------------
// Workloads

struct Workload {
    name: String,
    /// One line for the report.
    what: String,
    items: u64,
    unit: &'static str,
    /// Seconds of init() inside the wall (the entry script's sleep).
    init_secs: f64,
    a: Side,
    b: Option<Side>,
    /// Extra lines for the commands section (setup not timed).
    setup_note: Option<String>,
}

/// What a workload measured.
struct Outcome {
    name: String,
    what: String,
    items: u64,
    unit: &'static str,
    init_secs: f64,
    a: Vec<Sample>,
    b_label: Option<String>,
    b: Vec<Sample>,
    /// (label, command line) of each side.
    commands: Vec<(String, String)>,
    setup_note: Option<String>,
    error: Option<String>,
}

fn run_workload(ctx: &Ctx, mut w: Workload) -> Outcome {
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

fn engine_side(ctx: &Ctx, label: &str, job: &Path, out_dir: &Path, items: u64) -> Side {
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
fn score_job(
    ctx: &Ctx,
    name: &str,
    input: String,
    storage_options: Option<String>,
) -> Res<(PathBuf, PathBuf)> {
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

fn score_workload(ctx: &Ctx, data: &DataSet, with_baseline: bool) -> Res<Workload> {
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
fn dir_arg(dir: &Path) -> String {
    format!("{}/", dir.display())
}

fn files_workload(ctx: &Ctx, data: &DataSet) -> Res<Workload> {
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

fn rust_score_workload(ctx: &Ctx, data: &DataSet) -> Res<Workload> {
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

// ---------------------------------------------------------------------------------------------
// S3

/// The s3s-fs server the harness started; stopped on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct S3 {
    endpoint: String,
    bucket: String,
    how: String,
    _server: Option<Server>,
    /// The started server's pid (its CPU time is recorded).
    server_pid: Option<i32>,
    /// How to start the same server by hand (to repeat a run).
    by_hand: Option<String>,
}

fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PARALLEL_RUN_S3S_FS_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/parallel-run-ci/s3s-fs-0.14.1/bin/s3s-fs");
    p.exists().then_some(p)
}

/// The S3 endpoint to use: `--s3-endpoint`, or an s3s-fs started here; `Err` says why the
/// S3 workload cannot run.
fn s3_setup(ctx: &Ctx, args: &Args) -> Res<S3> {
    if let Some(endpoint) = &args.s3_endpoint {
        return Ok(S3 {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: args.s3_bucket.clone(),
            how: format!("the S3 server at {endpoint} (--s3-endpoint)"),
            _server: None,
            server_pid: None,
            by_hand: None,
        });
    }
    let Some(bin) = s3s_fs_binary() else {
        return Err(
            "no S3 server: pass --s3-endpoint URL, set PARALLEL_RUN_S3S_FS_BIN, or \
                    install s3s-fs (`cargo install s3s-fs@0.14.1 --features binary --root \
                    ~/.cache/parallel-run-ci/s3s-fs-0.14.1`, see README \"Object storage\")"
                .into(),
        );
    };
    if !bin.exists() {
        return Err(format!("s3s-fs not found at {}", bin.display()));
    }
    let root = ctx.data.join("s3");
    let bucket_dir = root.join(&args.s3_bucket);
    fs::create_dir_all(&bucket_dir).map_err(|e| format!("{}: {e}", bucket_dir.display()))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for s3s-fs: {e}"))?
        .port();
    let log_path = ctx.logs.join("s3s-fs.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut server = Server { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!(
                "s3s-fs exited at start ({status}): {}",
                tail(&log_path, 1000)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("s3s-fs did not listen on port {port} within 30 s"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(S3 {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: args.s3_bucket.clone(),
        how: format!(
            "s3s-fs ({}) started by the harness on 127.0.0.1:{port}, storing under {}",
            ctx.show(&bin),
            ctx.show(&root)
        ),
        server_pid: Some(server.child.id() as i32),
        _server: Some(server),
        by_hand: Some(format!(
            "{} --host 127.0.0.1 --port {port} --access-key {S3_KEY} --secret-key {S3_SECRET} {}",
            ctx.show(&bin),
            ctx.show(&root)
        )),
    })
}

/// Uploads the data set's Parquet files under `prefix` unless the same names and sizes are
/// there already. Returns a line for the report.
fn s3_upload(s3: &S3, data: &DataSet, prefix: &str) -> Res<String> {
    use futures::TryStreamExt;
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    let store = AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_bucket_name(&s3.bucket)
        .with_access_key_id(S3_KEY)
        .with_secret_access_key(S3_SECRET)
        .with_region(S3_REGION)
        .build()
        .map_err(|e| format!("S3 client for {}: {e}", s3.endpoint))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    let mut local: Vec<(String, PathBuf, u64)> = Vec::new();
    let entries = fs::read_dir(&data.dir).map_err(|e| format!("{}: {e}", data.dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", data.dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") {
            let size = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?
                .len();
            local.push((name, entry.path(), size));
        }
    }
    local.sort();
    runtime.block_on(async {
        let remote: BTreeMap<String, u64> = store
            .list(Some(&ObjectPath::from(prefix)))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(|e| {
                format!(
                    "listing s3://{}/{prefix}/ at {}: {e} (the bucket must exist: create it \
                     or name another with --s3-bucket)",
                    s3.bucket, s3.endpoint
                )
            })?;
        let t = Instant::now();
        let mut uploaded = 0u64;
        for (name, path, size) in &local {
            let key = format!("{prefix}/{name}");
            if remote.get(&key) == Some(size) {
                continue;
            }
            let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            store
                .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes))
                .await
                .map_err(|e| format!("uploading s3://{}/{key}: {e}", s3.bucket))?;
            uploaded += size;
        }
        Ok(if uploaded == 0 {
            format!(
                "the {} Parquet files were already in s3://{}/{prefix}/",
                local.len(),
                s3.bucket
            )
        } else {
            format!(
                "uploaded {} to s3://{}/{prefix}/ in {:.1} s (not timed)",
                mb(uploaded as f64),
                s3.bucket,
                t.elapsed().as_secs_f64()
            )
        })
    })
}

fn s3_workload(ctx: &Ctx, s3: &S3, data: &DataSet) -> Res<Workload> {
    let prefix = format!("bench/rows-{}", data.items);
    let uploaded = s3_upload(s3, data, &prefix)?;
    let options = format!(
        "{{aws_endpoint: {}, aws_allow_http: \"true\", aws_access_key_id: {}, \
         aws_secret_access_key: {}, aws_region: {}}}",
        q(&s3.endpoint),
        q(S3_KEY),
        q(S3_SECRET),
        q(S3_REGION)
    );
    let input = format!("s3://{}/{prefix}/", s3.bucket);
    let (job, out) = score_job(ctx, S3_SCORE, input.clone(), Some(options))?;
    let (local_job, local_out) =
        score_job(ctx, &format!("{S3_SCORE}-local"), dir_arg(&data.dir), None)?;
    Ok(Workload {
        name: S3_SCORE.into(),
        what: format!(
            "the score-2M job reading {input} from {}, against the same job on local disk \
             (interleaved); the S3 server's own memory and CPU are not counted",
            s3.how
        ),
        items: data.items,
        unit: "rows",
        init_secs: SCORE_INIT_SECS,
        a: Side {
            server_pid: s3.server_pid,
            ..engine_side(ctx, "parallel-run (S3 input)", &job, &out, data.items)
        },
        b: Some(engine_side(
            ctx,
            "parallel-run (local disk)",
            &local_job,
            &local_out,
            data.items,
        )),
        setup_note: Some(match &s3.by_hand {
            Some(start) => {
                format!("{uploaded}; to repeat a run by hand, start the server first: `{start} &`")
            }
            None => uploaded,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    wall: f64,
    wall_min: f64,
    wall_max: f64,
    peak: f64,
    peak_max: f64,
    cpu: f64,
}

fn stats(samples: &[Sample]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let walls: Vec<f64> = samples.iter().map(|s| s.wall).collect();
    Some(Stats {
        wall: median(walls.clone()),
        wall_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        wall_max: walls.iter().copied().fold(0.0, f64::max),
        peak: median(samples.iter().map(|s| s.peak_rss as f64).collect()),
        peak_max: samples
            .iter()
            .map(|s| s.peak_rss as f64)
            .fold(0.0, f64::max),
        cpu: median(samples.iter().map(|s| s.cpu).collect()),
    })
}

fn mb(bytes: f64) -> String {
    format!("{:.0} MB", bytes / 1e6)
}

fn wall_text(s: &Stats) -> String {
    format!("{:.2} s ({:.2}–{:.2})", s.wall, s.wall_min, s.wall_max)
}

fn rate(items: u64, secs: f64, unit: &str) -> String {
    let r = items as f64 / secs;
    if r >= 1e6 {
        format!("{:.2} M {unit}/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k {unit}/s", r / 1e3)
    } else {
        format!("{r:.0} {unit}/s")
    }
}

fn ms(secs: f64) -> String {
    format!("{:.2} ms", secs * 1e3)
}

fn signed_ms(secs: f64) -> String {
    format!("{:+.2} ms", secs * 1e3)
}

/// A target's verdict.
struct Verdict {
    target: String,
    measured: String,
    limit: String,
    result: String,
}

fn verdict(
    target: &str,
    measured: Option<(f64, String)>,
    limit: f64,
    limit_text: String,
) -> Verdict {
    let (measured, result) = match measured {
        Some((v, text)) if v.is_finite() => {
            let result = if v <= limit {
                "PASS".to_string()
            } else {
                format!("MISS (by {:.0}%)", (v / limit - 1.0) * 100.0)
            };
            (text, result)
        }
        _ => ("–".to_string(), "not checked".to_string()),
    };
    Verdict {
        target: target.into(),
        measured,
        limit: limit_text,
        result,
    }
}

struct Machine {
    cpus: usize,
    model: String,
    memory: String,
    kernel: String,
    date: String,
    commit: String,
    python: String,
    /// Median wall of `python -c "import numpy, pandas"`: what score_entry.py's own imports
    /// cost before its init() can start.
    import_floor: Option<f64>,
}

fn machine(ctx: &Ctx, python: String, import_floor: Option<f64>) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or_else(
            || "unknown".to_string(),
            |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0),
        );
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&ctx.manifest)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!BENCHMARKS.md",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} with uncommitted changes")
            } else {
                c
            }
        }
        None => "unknown (not a git checkout)".into(),
    };
    Machine {
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        model,
        memory,
        kernel,
        date: chrono::Local::now()
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        commit,
        python,
        import_floor,
    }
}

/// Walls of `ctx.runs` (at least 3) bare `python -c "import numpy, pandas, os; os._exit(0)"`:
/// the entry script's imports (without the interpreter's teardown, which workers skip too).
fn import_walls(ctx: &Ctx) -> Vec<f64> {
    let mut walls = Vec::new();
    for _ in 0..ctx.runs.max(3) {
        let start = Instant::now();
        let ok = Command::new(&ctx.python)
            .args(["-c", "import numpy, pandas, os; os._exit(0)"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Vec::new();
        }
        walls.push(start.elapsed().as_secs_f64());
    }
    walls
}

struct Report<'a> {
    ctx: &'a Ctx,
    machine: Machine,
    outcomes: Vec<Outcome>,
    skipped: Vec<String>,
    large_name: String,
    argv: String,
}

impl Report<'_> {
    fn get(&self, name: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|o| o.name == name && o.error.is_none())
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let a = |name: &str| self.get(name).and_then(|o| stats(&o.a));
        let b = |name: &str| self.get(name).and_then(|o| stats(&o.b));
        let ratio = |name: &str| match (a(name), b(name)) {
            (Some(x), Some(y)) => Some((
                x.wall / y.wall,
                format!("{:.2} ({:.2} s / {:.2} s)", x.wall / y.wall, x.wall, y.wall),
            )),
            _ => None,
        };
        let wall = |name: &str| a(name).map(|s| (s.wall, format!("{:.2} s", s.wall)));
        let mut v = vec![
            verdict(
                "score-2M: wall vs mp_baseline.py",
                ratio(SCORE_MAIN),
                0.8,
                "<= 0.80".into(),
            ),
            verdict(
                "score-20k: wall (1 s init included)",
                wall(SCORE_SMALL),
                1.3,
                "<= 1.30 s".into(),
            ),
            verdict(
                "files-20k: wall vs mp_baseline_files.py",
                ratio(FILES_JOB),
                1.0,
                "<= 1.00".into(),
            ),
            verdict(
                "rust-score-2M: wall (1 s init included)",
                wall(RUST_SCORE),
                2.0,
                "<= 2.00 s".into(),
            ),
            verdict(
                "score-2M: peak process-tree memory (max of runs)",
                a(SCORE_MAIN).map(|s| (s.peak_max / 1e6, mb(s.peak_max))),
                500.0,
                "<= 500 MB".into(),
            ),
        ];
        let main_peak = a(SCORE_MAIN).map(|s| s.peak_max);
        v.push(verdict(
            &format!(
                "{}: peak memory vs score-2M's (max of runs)",
                self.large_name
            ),
            match (a(&self.large_name), main_peak) {
                (Some(l), Some(m)) => Some((
                    l.peak_max / m,
                    format!("{:.2} ({} / {})", l.peak_max / m, mb(l.peak_max), mb(m)),
                )),
                _ => None,
            },
            1.1,
            "<= 1.10".into(),
        ));
        v.push(verdict(
            "s3-score-2M: wall vs the same job on local disk",
            ratio(S3_SCORE),
            1.5,
            "<= 1.50".into(),
        ));
        v
    }

    fn markdown(&self) -> String {
        let ctx = self.ctx;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Generated by the benchmark harness (`benches/harness.rs`); do not edit by hand. \
             Regenerate with\n\n```sh\ncargo bench --bench harness            # every workload, \
             3 runs each (about 5 minutes; generating the data takes longer, once)\ncargo bench --bench harness -- --help    # options: \
             --runs, --only NAME, --skip-large, --python, --s3-endpoint, --no-write ...\n```\n"
        );
        if self.argv.is_empty() {
            let _ = writeln!(s, "This run: `cargo bench --bench harness`\n");
        } else {
            let _ = writeln!(
                s,
                "This run: `cargo bench --bench harness -- {}`\n",
                self.argv
            );
        }
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "- date: {}", m.date);
        let _ = writeln!(s, "- CPU: {} ({} cores available)", m.model, m.cpus);
        let _ = writeln!(s, "- memory: {}; Linux {}", m.memory, m.kernel);
        let _ = writeln!(
            s,
            "- parallel-run {} (release build), commit {}",
            env!("CARGO_PKG_VERSION"),
            m.commit
        );
        let _ = writeln!(s, "- {} ({})", m.python, ctx.show(&ctx.python));
        let _ = writeln!(
            s,
            "- {} run{} per workload and side, interleaved (A B A B ...)\n",
            ctx.runs,
            if ctx.runs == 1 { "" } else { "s" }
        );

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | measured (medians) | limit | result |");
        let _ = writeln!(s, "|---|---|---|---|");
        for v in self.verdicts() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                v.target, v.measured, v.limit, v.result
            );
        }

        if let (Some(floor), Some(small)) = (
            m.import_floor,
            self.get(SCORE_SMALL).and_then(|o| stats(&o.a)),
        ) {
            let _ = writeln!(
                s,
                "\nStart-up floor of score-20k: score_entry.py imports numpy and pandas before its \
                 init() sleeps 1 s, and `python -c \"import numpy, pandas, os; os._exit(0)\"` alone takes {floor:.2} s \
                 here (median of {} runs, timed just before and after score-20k's), so no engine running that \
                 script in a fresh Python can finish under {:.2} s. parallel-run's own share of \
                 the {:.2} s (its start, the 3 mini-batches, the output, the report and the \
                 shutdown) is the rest: {:.0} ms.",
                2 * ctx.runs.max(3),
                1.0 + floor,
                small.wall,
                (small.wall - 1.0 - floor) * 1000.0
            );
        }
        let _ = writeln!(s, "\n## Wall time\n");
        let _ = writeln!(
            s,
            "| workload | parallel-run wall: median (min–max) | compared with | its wall: median \
             (min–max) | ratio | throughput | mini-batches | (wall − init) / mini-batch | \
             (wall − compared) / mini-batch |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for o in &self.outcomes {
            let Some(a) = stats(&o.a) else {
                let _ = writeln!(s, "| {} | FAILED (see below) | | | | | | | |", o.name);
                continue;
            };
            // rust-score-2M has no baseline of its own: it is compared with score-2M's.
            let (b_label, b) = match (&o.b_label, stats(&o.b)) {
                (Some(l), Some(b)) => (l.clone(), Some(b)),
                _ if o.name == RUST_SCORE => (
                    "mp_baseline.py (score-2M's runs)".to_string(),
                    self.get(SCORE_MAIN).and_then(|x| stats(&x.b)),
                ),
                _ => ("–".to_string(), None),
            };
            let batches = o.a.last().and_then(|x| x.mini_batches);
            let per = |secs: f64| batches.filter(|n| *n > 0).map(|n| secs / n as f64);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o.name,
                wall_text(&a),
                b_label,
                b.as_ref().map_or("–".into(), wall_text),
                b.as_ref()
                    .map_or("–".into(), |b| format!("{:.2}", a.wall / b.wall)),
                rate(o.items, a.wall, o.unit),
                batches.map_or("–".into(), |n| n.to_string()),
                per(a.wall - o.init_secs).map_or("–".into(), ms),
                b.as_ref()
                    .and_then(|b| per(a.wall - b.wall))
                    .map_or("–".into(), signed_ms),
            );
        }

        let _ = writeln!(s, "\n## Memory and CPU\n");
        let _ = writeln!(
            s,
            "| workload | parallel-run peak tree RSS: median (max) | compared with: peak (max) | \
             parallel-run CPU | compared CPU | job elapsed (job_summary.json) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for o in &self.outcomes {
            let Some(a) = stats(&o.a) else {
                continue;
            };
            let b = stats(&o.b);
            let elapsed = median(o.a.iter().filter_map(|x| x.job_elapsed).collect());
            let server = median(o.a.iter().filter_map(|x| x.server_cpu).collect());
            let server = if server.is_finite() {
                format!(" (+ {server:.1} s of the S3 server)")
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {:.1} s{server} | {} | {} |",
                o.name,
                mb(a.peak),
                mb(a.peak_max),
                match (&o.b_label, b) {
                    (Some(l), Some(b)) => format!("{l}: {} ({})", mb(b.peak), mb(b.peak_max)),
                    _ => "–".into(),
                },
                a.cpu,
                b.map_or("–".into(), |b| format!("{:.1} s", b.cpu)),
                if elapsed.is_finite() {
                    format!("{elapsed:.2} s")
                } else {
                    "–".into()
                },
            );
        }

        let failed: Vec<&Outcome> = self.outcomes.iter().filter(|o| o.error.is_some()).collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\n## Failed workloads\n");
            for o in failed {
                let _ = writeln!(
                    s,
                    "### {}\n\n```text\n{}\n```\n",
                    o.name,
                    o.error.as_deref().unwrap_or_default()
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "\n## Not run\n");
            for line in &self.skipped {
                let _ = writeln!(s, "- {line}");
            }
        }

        let _ = writeln!(s, "\n## Workloads and commands\n");
        let _ = writeln!(
            s,
            "Run from the crate root after `cargo bench --bench harness` has generated the data \
             and the job files under `{}` (data sets are generated once, by `python \
             ../shared/bench/gen_data.py DIR --rows N` or `--files N`, and reused). Before \
             each run the output folder is removed (not timed). Paths are shown relative to \
             the crate root.\n",
            ctx.show(&ctx.data)
        );
        for o in &self.outcomes {
            let _ = writeln!(s, "- **{}**: {}.", o.name, o.what);
            if let Some(note) = &o.setup_note {
                let _ = writeln!(s, "  Setup: {note}.");
            }
            let _ = writeln!(s, "\n  ```sh");
            for (label, c) in &o.commands {
                let _ = writeln!(s, "  # {label}\n  {}", self.relative(c));
            }
            let _ = writeln!(s, "  ```\n");
        }

        let _ = writeln!(s, "## How it is measured\n");
        let _ = writeln!(
            s,
            "- **Wall** is the whole command, from spawn to exit: process start, Python \
             start-up and imports, init() (the reference entry script sleeps 1 s in it), the \
             job, writing the output and the report, shutdown. Each workload runs its two \
             sides alternately (A B A B ...) so that drift of the machine affects both; the \
             table gives the median and the range of the runs.\n\
             - **Checked, not timed**: after every parallel-run run the exit code must be 0 and \
             `logs/job_summary.json` must say `succeeded` with items_total and items_succeeded \
             equal to the input's rows (or files) and the output must hold one row per item \
             (`output_rows`; for txt output, the lines of the output file); the baselines run with \
             `BENCH_VERIFY=0` (their own full check is slow) and must exit 0 and report every \
             row (mp_baseline.py's `rows=N`; mp_baseline_files.py's results.txt has one line \
             per file). A failed run fails the workload instead of being timed.\n\
             - **Peak tree RSS**: every {} ms the harness walks `/proc/*/stat` for the \
             descendants of the command's process and sums `VmRSS` of the process and all of \
             them (Python workers, multiprocessing pool processes); the peak of these sums. MB \
             = 10^6 bytes. Shared pages (the Python libraries mapped by every worker) count \
             once per process, as VmRSS does.\n\
             - **CPU** is user + system time of the command and every descendant it reaped \
             (`wait4` rusage), median of the runs: above the wall time means both cores \
             were busy. For s3-score-2M the CPU time the S3 server the harness started used \
             during the run (from `/proc/PID/stat`) is given beside it: on this machine the \
             server competes with the job for the same cores.\n\
             - **(wall − init) / mini-batch**: the median wall minus the init() sleep the \
             entry script does (1 s for the score jobs, which both workers do at the same \
             time; 0 for the file job), divided by the job's mini-batches \
             (`mini_batches_total` in job_summary.json): the wall each mini-batch costs, \
             including the user's run() and process start-up, so an upper bound of the \
             engine's per-mini-batch overhead.\n\
             - **(wall − compared) / mini-batch**: the median wall minus the compared \
             command's median wall, divided by parallel-run's mini-batches: what parallel-run \
             adds (positive) or saves (negative) per mini-batch against the baseline doing the \
             same user work (for s3-score-2M: what reading from S3 adds per mini-batch). The \
             baselines cut 10,000-row (or 100-file) mini-batches: 200 for 2M rows.\n\
             - The engine's own per-mini-batch overhead without user work is measured by the \
             criterion micro-benchmarks: `cargo bench --bench engine` (no-op Rust runner, \
             no-op Python runner, Arrow IPC round trip to a Python worker).\n\
             - **Job elapsed** is the engine's own clock in job_summary.json (planning to \
             commit); the wall minus it is process start and exit.",
            SAMPLE_EVERY.as_millis()
        );
        s
    }

    /// Command lines with the harness's absolute paths made relative to the crate root.
    fn relative(&self, line: &str) -> String {
        let ctx = self.ctx;
        let shared = format!("{}/", ctx.shared.display());
        let manifest = format!("{}/", ctx.manifest.display());
        line.replace(&shared, "../shared/").replace(&manifest, "")
    }
}

// ---------------------------------------------------------------------------------------------

fn run(args: Args) -> Res<bool> {
    let manifest = PathBuf::from(MANIFEST_DIR);
    let shared = manifest.join("../shared");
    let shared = shared.canonicalize().map_err(|e| {
        format!(
            "the shared folder {} is missing ({e}); the harness needs ../shared/bench beside \
             the crate (gen_data.py, the entry scripts and the baselines)",
            shared.display()
        )
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
            return Err(format!(
                "{} is missing from the shared folder",
                bench.join(f).display()
            ));
        }
    }
    let data = absolute(
        &args
            .data_dir
            .clone()
            .unwrap_or_else(|| manifest.join("target/bench-data")),
    )?;
    let logs = data.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let python = find_python(args.python.as_deref(), &manifest)?;
    let python_version = check_python(&python)?;
    let binary = PathBuf::from(BINARY);
    if !binary.is_file() {
        return Err(format!(
            "the parallel-run binary {} is missing",
            binary.display()
        ));
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
    let all = [
        SCORE_SMALL,
        SCORE_MAIN,
        FILES_JOB,
        RUST_SCORE,
        S3_SCORE,
        large_name.as_str(),
    ];
    for name in &args.only {
        if !all.contains(&name.as_str()) && name != MEMORY_ALIAS {
            return Err(format!(
                "--only {name}: no such workload; choose from {}, {MEMORY_ALIAS}",
                all.join(", ")
            ));
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

    // Data, generated once.
    let small = DataSet::rows(&ctx, ROWS_SMALL);
    let main = DataSet::rows(&ctx, ROWS_MAIN);
    let files = DataSet::files(&ctx, FILES);
    let large = DataSet::rows(&ctx, args.rows_large);
    if wanted(SCORE_SMALL) {
        small.ensure(&ctx)?;
    }
    if wanted(SCORE_MAIN) || wanted(RUST_SCORE) || wanted(S3_SCORE) {
        main.ensure(&ctx)?;
    }
    if wanted(FILES_JOB) {
        files.ensure(&ctx)?;
    }
    if run_large {
        large.ensure(&ctx)?;
    }

    let mut outcomes = Vec::new();
    let failed = |name: &str, e: String| Outcome {
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
        error: Some(e),
    };
    let add = |w: Res<Workload>, name: &str, outcomes: &mut Vec<Outcome>| match w {
        Ok(w) => outcomes.push(run_workload(&ctx, w)),
        Err(e) => {
            eprintln!("harness: {name}: {e}");
            outcomes.push(failed(name, e));
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
    if run_large {
        add(
            score_workload(&ctx, &large, true),
            &large_name,
            &mut outcomes,
        );
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
        fs::write(&path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("harness: wrote {}", path.display());
    }
    Ok(report.outcomes.iter().all(|o| o.error.is_none()))
}
