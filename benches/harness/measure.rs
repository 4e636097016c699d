//! Running and measuring one command: wall time, peak memory of its process tree, CPU
//! time, and checking its output (never timed). A side may have an untimed preparation
//! before each run: starting the job and killing it part way, for the resume workload.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{FailedRun, HarnessError, Result, RunFailure};
use crate::servers::tail;
use crate::setup::{shell_line, Ctx};

/// How often the process tree's memory is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// One timed run.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub wall: f64,
    /// Peak summed VmRSS of the process and all its descendants, bytes.
    pub peak_rss: u64,
    /// User + system CPU seconds of the process and the descendants it reaped.
    pub cpu: f64,
    /// CPU seconds of the side's server process (S3) during the run.
    pub server_cpu: Option<f64>,
    /// From logs/job_summary.json (parallel-run runs only).
    pub mini_batches: Option<u64>,
    pub job_elapsed: Option<f64>,
    /// `ledger_seconds`: time spent on the ledger, summed over the job's tasks.
    pub ledger: Option<f64>,
    /// `mini_batches_skipped` of a resumed run (committed by the run it continued).
    pub skipped: Option<u64>,
    /// `rows_not_read` of a resumed run (input rows of skipped mini-batches not read again).
    pub not_read: Option<u64>,
    /// Ledger records when the side's preparation killed the job (resume workload).
    pub killed_at: Option<u64>,
}

/// How a run's output is checked (never timed).
pub enum Check {
    /// parallel-run: exit 0 and `logs/job_summary.json` says succeeded with every item, the
    /// output is as `output` says, and (when given) the job had `mini_batches` mini-batches
    /// and was a resumed run that skipped at least `min_skipped` of them.
    Job {
        out_dir: PathBuf,
        items: u64,
        output: JobOutput,
        mini_batches: Option<u64>,
        min_skipped: Option<u64>,
    },
    /// mp_baseline.py: exit 0 and a `rows=N` line in its output.
    RowsLine { expect: u64 },
    /// mp_baseline_files.py: exit 0 and one line per file in the results file.
    Lines { file: PathBuf, expect: u64 },
}

/// What a parallel-run job's output must hold.
pub enum JobOutput {
    /// `output_rows` (job_summary.json) is the item count.
    Rows,
    /// `txt` output: this file has a line per item (`output_rows` counts pre-formatted
    /// chunks, not lines).
    Lines(PathBuf),
    /// This Parquet file's `id` column holds every id 0..items exactly once (the reference
    /// data's ids), and `output_rows` is the item count.
    EveryIdOnce(PathBuf),
    /// `summary_only`: no output file to check.
    None,
}

/// One side of a workload: a command, what to remove before each run, an untimed
/// preparation after that, how to check it.
pub struct Side {
    pub label: String,
    pub cmd: Command,
    pub clean: PathBuf,
    /// Run (untimed) after cleaning, before each timed run.
    pub prepare: Option<Interrupt>,
    pub check: Check,
    /// A process outside the tree whose CPU time during the run is recorded too (the S3
    /// server the harness started).
    pub server_pid: Option<i32>,
}

/// An untimed preparation: start `cmd` (a job), wait until its ledger's `records` file holds
/// at least `at` lines (mini-batches that reached their final status), then SIGKILL it, as
/// the out-of-memory killer or a lost VM would. A job that finishes before that is started
/// again, up to `attempts` times.
pub struct Interrupt {
    pub cmd: Command,
    pub records: PathBuf,
    pub at: u64,
    pub attempts: u32,
}

/// How often the preparation counts the ledger's records.
const POLL_EVERY: Duration = Duration::from_millis(1);

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

/// Runs one side once: cleans its output, runs the command with stdout and stderr going to
/// `log`, samples the tree's memory, then checks the output.
pub fn run_side(ctx: &Ctx, side: &mut Side, log: &Path) -> Result<Sample> {
    if side.clean.exists() {
        fs::remove_dir_all(&side.clean).map_err(HarnessError::io("removing", &side.clean))?;
    }
    let killed_at = match side.prepare.as_mut() {
        Some(prepare) => Some(interrupt(ctx, &side.label, prepare, &side.clean, log)?),
        None => None,
    };
    let out = fs::File::create(log).map_err(HarnessError::io("creating", log))?;
    let err = out.try_clone().map_err(HarnessError::io("opening", log))?;
    side.cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));

    let server_cpu_before = side.server_pid.and_then(process_cpu);
    let start = Instant::now();
    let child = side.cmd.spawn().map_err(|source| HarnessError::Spawn {
        command: shell_line(&side.cmd),
        source,
    })?;
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

    let (status, usage) = waited.map_err(|source| HarnessError::Wait {
        label: side.label.clone(),
        source,
    })?;
    let (ok, how) = describe_status(status);
    let fail = |failure: RunFailure| {
        HarnessError::Run(Box::new(FailedRun {
            failure,
            command: shell_line(&side.cmd),
            log: log.to_path_buf(),
            tail: tail(log, 1500),
        }))
    };
    if timed_out {
        return Err(fail(RunFailure::TimedOut {
            label: side.label.clone(),
            secs: timeout.as_secs(),
        }));
    }
    if !ok {
        return Err(fail(RunFailure::Failed {
            label: side.label.clone(),
            how,
        }));
    }
    let mut sample = Sample {
        wall,
        peak_rss: peak.load(Ordering::Relaxed),
        cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        server_cpu: match (server_cpu_before, side.server_pid.and_then(process_cpu)) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        },
        killed_at,
        ..Sample::default()
    };
    match &side.check {
        Check::Job {
            out_dir,
            items,
            output,
            mini_batches,
            min_skipped,
        } => {
            let path = out_dir.join("logs/job_summary.json");
            let text = read(&path).map_err(fail)?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| {
                fail(RunFailure::BadJson {
                    path: path.clone(),
                    source,
                })
            })?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
            let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("?");
            let (total, good, written) = (
                num("items_total"),
                num("items_succeeded"),
                num("output_rows"),
            );
            if status != "succeeded" || total != Some(*items) || good != Some(*items) {
                return Err(fail(RunFailure::NotSucceeded {
                    path,
                    status: status.to_string(),
                    total,
                    succeeded: good,
                    items: *items,
                }));
            }
            let rows_written = || {
                if written == Some(*items) {
                    Ok(())
                } else {
                    Err(fail(RunFailure::OutputRows {
                        path: path.clone(),
                        written,
                        items: *items,
                    }))
                }
            };
            match output {
                JobOutput::Rows => rows_written()?,
                JobOutput::Lines(file) => check_lines(file, *items).map_err(fail)?,
                JobOutput::EveryIdOnce(file) => {
                    rows_written()?;
                    check_ids(file, *items).map_err(fail)?;
                }
                JobOutput::None => {}
            }
            let total = num("mini_batches_total");
            if let Some(expect) = mini_batches {
                if total != Some(*expect) {
                    return Err(fail(RunFailure::MiniBatches {
                        path,
                        total,
                        expect: *expect,
                    }));
                }
            }
            let skipped = num("mini_batches_skipped");
            if let Some(min) = min_skipped {
                let resumed = v.get("resumed").and_then(serde_json::Value::as_bool);
                if resumed != Some(true) || skipped.is_none_or(|n| n < *min) {
                    return Err(fail(RunFailure::NotResumed {
                        path,
                        resumed,
                        skipped,
                        min: *min,
                    }));
                }
            }
            sample.mini_batches = total;
            sample.skipped = skipped.filter(|_| min_skipped.is_some());
            sample.not_read = num("rows_not_read").filter(|_| min_skipped.is_some());
            sample.job_elapsed = v.get("elapsed_seconds").and_then(|s| s.as_f64());
            sample.ledger = v.get("ledger_seconds").and_then(|s| s.as_f64());
        }
        Check::RowsLine { expect } => {
            let text = fs::read_to_string(log).unwrap_or_default();
            let rows = text
                .lines()
                .find_map(|l| l.strip_prefix("rows="))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|r| r.parse::<u64>().ok());
            if rows != Some(*expect) {
                return Err(fail(RunFailure::RowsLine {
                    label: side.label.clone(),
                    rows,
                    expect: *expect,
                }));
            }
        }
        Check::Lines { file, expect } => check_lines(file, *expect).map_err(fail)?,
    }
    Ok(sample)
}

/// The untimed preparation of a run: starts the job, kills it once its ledger holds
/// `prepare.at` records, and returns how many it held then. Its console output goes to
/// `<log>.interrupted.log`, beside the timed run's.
fn interrupt(
    ctx: &Ctx,
    label: &str,
    prepare: &mut Interrupt,
    clean: &Path,
    log: &Path,
) -> Result<u64> {
    let log = log.with_extension("interrupted.log");
    let command = shell_line(&prepare.cmd);
    let fail = |failure: RunFailure| {
        HarnessError::Run(Box::new(FailedRun {
            failure,
            command: command.clone(),
            log: log.clone(),
            tail: tail(&log, 1500),
        }))
    };
    let mut finished = Vec::new();
    for _ in 0..prepare.attempts.max(1) {
        if clean.exists() {
            fs::remove_dir_all(clean).map_err(HarnessError::io("removing", clean))?;
        }
        let out = fs::File::create(&log).map_err(HarnessError::io("creating", &log))?;
        let err = out.try_clone().map_err(HarnessError::io("opening", &log))?;
        // Its own process group, so that the kill reaches any process it started.
        prepare
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let start = Instant::now();
        let mut child = prepare.cmd.spawn().map_err(|source| HarnessError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        let mut records = RecordCounter::new(&prepare.records);
        loop {
            if let Some(status) = child.try_wait().map_err(|source| HarnessError::Wait {
                label: label.to_string(),
                source,
            })? {
                // Finished (or failed) before it could be killed.
                let n = records.count();
                if !status.success() {
                    return Err(fail(RunFailure::Failed {
                        label: format!("{label} (the run to interrupt)"),
                        how: format!("{status} after {n} ledger records"),
                    }));
                }
                finished.push(n);
                break;
            }
            if records.count() >= prepare.at {
                // SAFETY: plain syscall on the process group of our own unreaped child.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                return Ok(records.count());
            }
            if start.elapsed() > ctx.timeout {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                return Err(fail(RunFailure::TimedOut {
                    label: format!("{label} (the run to interrupt)"),
                    secs: ctx.timeout.as_secs(),
                }));
            }
            thread::sleep(POLL_EVERY);
        }
    }
    Err(fail(RunFailure::NotInterrupted {
        label: label.to_string(),
        at: prepare.at,
        finished,
    }))
}

/// Counts the lines of a growing file, reading only what was appended since the last call.
struct RecordCounter<'a> {
    path: &'a Path,
    file: Option<fs::File>,
    offset: u64,
    lines: u64,
}

impl<'a> RecordCounter<'a> {
    fn new(path: &'a Path) -> Self {
        RecordCounter {
            path,
            file: None,
            offset: 0,
            lines: 0,
        }
    }

    /// Complete lines so far (a line being written counts once its newline is there).
    fn count(&mut self) -> u64 {
        if self.file.is_none() {
            self.file = fs::File::open(self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return 0;
        };
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_ok() && file.read_to_end(&mut buf).is_ok() {
            self.offset += buf.len() as u64;
            self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        }
        self.lines
    }
}

/// The Parquet `file`'s `id` column holds each of 0..items exactly once.
fn check_ids(file: &Path, items: u64) -> std::result::Result<(), RunFailure> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;

    let bad = |problem: String| RunFailure::Ids {
        path: file.to_path_buf(),
        problem,
    };
    let f = fs::File::open(file).map_err(|source| RunFailure::Unreadable {
        path: file.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(e.to_string()))?;
    let schema = builder.parquet_schema();
    let Some(column) = (0..schema.num_columns()).find(|i| schema.column(*i).name() == "id") else {
        return Err(bad("no `id` column".into()));
    };
    let mask = ProjectionMask::leaves(schema, [column]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut seen = vec![false; items as usize];
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let ids = batch
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| {
                bad(format!(
                    "`id` is {}, not Int64",
                    batch.column(0).data_type()
                ))
            })?;
        if ids.null_count() > 0 {
            return Err(bad("null ids".into()));
        }
        for id in ids.values().iter().copied() {
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| seen.get_mut(i))
                .ok_or_else(|| bad(format!("id {id} is not in 0..{items}")))?;
            if *slot {
                return Err(bad(format!("id {id} twice")));
            }
            *slot = true;
            rows += 1;
        }
    }
    if rows != items {
        let first = seen.iter().position(|s| !s).unwrap_or_default();
        return Err(bad(format!(
            "{rows} ids, expected {items}; {} missing, the first {first}",
            items - rows
        )));
    }
    Ok(())
}

fn read(path: &Path) -> std::result::Result<String, RunFailure> {
    fs::read_to_string(path).map_err(|source| RunFailure::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// `file` has `expect` lines.
fn check_lines(file: &Path, expect: u64) -> std::result::Result<(), RunFailure> {
    let lines = read(file)?.lines().count() as u64;
    if lines == expect {
        Ok(())
    } else {
        Err(RunFailure::Lines {
            path: file.to_path_buf(),
            lines,
            expect,
        })
    }
}
