//! Running and measuring one command: wall time, peak memory of its process tree, CPU
//! time, and checking its output (never timed).

use std::collections::HashMap;
use std::fs;
use std::io;
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
}

/// How a run's output is checked (never timed).
pub enum Check {
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
pub struct Side {
    pub label: String,
    pub cmd: Command,
    pub clean: PathBuf,
    pub check: Check,
    /// A process outside the tree whose CPU time during the run is recorded too (the S3
    /// server the harness started).
    pub server_pid: Option<i32>,
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

/// Runs one side once: cleans its output, runs the command with stdout and stderr going to
/// `log`, samples the tree's memory, then checks the output.
pub fn run_side(ctx: &Ctx, side: &mut Side, log: &Path) -> Result<Sample> {
    if side.clean.exists() {
        fs::remove_dir_all(&side.clean).map_err(HarnessError::io("removing", &side.clean))?;
    }
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
        ..Sample::default()
    };
    match &side.check {
        Check::Job {
            out_dir,
            items,
            lines_file,
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
            match lines_file {
                Some(file) => check_lines(file, *items).map_err(fail)?,
                None if written != Some(*items) => {
                    return Err(fail(RunFailure::OutputRows {
                        path,
                        written,
                        items: *items,
                    }));
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
