//! Starting, watching and stopping worker processes: pipes, process groups, log files, exit
//! statuses, GPU indices.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use crate::worker::WorkerSlot;

/// The child's end of the engine→worker pipe.
pub(crate) const CHILD_READ_FD: RawFd = 3;
/// The child's end of the worker→engine pipe.
pub(crate) const CHILD_WRITE_FD: RawFd = 4;

/// Where a worker's user-visible logs go (PRS layout, see [`user_log_paths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLogPaths {
    /// `<log_dir>/user/stdout/<node>/<agent>.stdout.txt`
    pub stdout: PathBuf,
    /// `<log_dir>/user/stderr/<node>/<agent>.stderr.txt` (also the Python logging root)
    pub stderr: PathBuf,
    /// `<log_dir>/user/entry_script_log/<node>/<agent>.log.txt` (`EntryScript().logger`)
    pub entry_script_log: PathBuf,
}

/// The folder name of node `node` in the log layout: `node000`, `node001`, ...
pub fn node_name(node: usize) -> String {
    format!("node{node:03}")
}

/// The log files of the worker in `slot` under the job's `log_dir` (its node folder named
/// after the slot's node index, see [`node_name`]).
pub fn user_log_paths(log_dir: &Path, slot: &WorkerSlot) -> UserLogPaths {
    user_log_paths_in(log_dir, &node_name(slot.node), &slot.agent_name)
}

/// The log files of worker `agent` in node folder `node` under the job's `log_dir`.
pub fn user_log_paths_in(log_dir: &Path, node: &str, agent: &str) -> UserLogPaths {
    let user = log_dir.join("user");
    UserLogPaths {
        stdout: user
            .join("stdout")
            .join(node)
            .join(format!("{agent}.stdout.txt")),
        stderr: user
            .join("stderr")
            .join(node)
            .join(format!("{agent}.stderr.txt")),
        entry_script_log: user
            .join("entry_script_log")
            .join(node)
            .join(format!("{agent}.log.txt")),
    }
}

/// Opens `path` for appending (creating its folder), so a replacement worker keeps appending.
pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// An anonymous pipe (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Larger pipes cut the wake-ups per mini-batch (a 1 MiB round trip: ~0.95 ms with the
    // default 64 KiB, ~0.7 ms with 1 MiB). Unprivileged users share a budget of pipe memory
    // (fs/pipe-user-pages-soft, 64 MiB), so they get less. Best effort: errors are ignored.
    // SAFETY: geteuid has no preconditions.
    let size: libc::c_int = if unsafe { libc::geteuid() } == 0 {
        1 << 20
    } else {
        256 << 10
    };
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(ends.0.as_raw_fd(), libc::F_SETPIPE_SZ, size);
    }
    Ok(ends)
}

/// Installs the child's protocol pipes as fds 3 (read) and 4 (write) between fork and exec.
///
/// Only async-signal-safe calls: the source descriptors are first moved above 4 (they might be
/// 3 or 4 themselves), then duplicated onto 3 and 4, which clears close-on-exec on them.
pub(crate) fn install_child_fds(
    read: &OwnedFd,
    write: &OwnedFd,
) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let (read, write) = (read.as_raw_fd(), write.as_raw_fd());
    move || {
        // SAFETY: plain fd syscalls on descriptors that are open in the forked child.
        unsafe {
            let r = libc::fcntl(read, libc::F_DUPFD_CLOEXEC, 10);
            let w = libc::fcntl(write, libc::F_DUPFD_CLOEXEC, 10);
            if r < 0 || w < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(r, CHILD_READ_FD) < 0 || libc::dup2(w, CHILD_WRITE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(r);
            libc::close(w);
        }
        Ok(())
    }
}

/// Sends SIGKILL to the whole process group `pgid` (the worker and anything it started).
pub(crate) fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// What is known of a process's end: `exit code 3`, `killed by signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = signal_name(signal);
            let mut text = match name {
                Some(name) => format!("killed by signal {signal} ({name})"),
                None => format!("killed by signal {signal}"),
            };
            if signal == libc::SIGKILL {
                text.push_str(", e.g. by the out-of-memory killer");
            }
            if status.core_dumped() {
                text.push_str(", core dumped");
            }
            text
        }
        None => format!("ended with status {status}"),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// The last `max_bytes` written to `path` since byte `start` (a worker's own part of an
/// appended log), lossily decoded, starting at a line boundary when possible.
pub(crate) fn log_tail(path: &Path, start: u64, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return String::new();
    };
    let from = start.max(len.saturating_sub(max_bytes));
    if from >= len || file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.take(max_bytes).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = if from > start {
        match text.find('\n') {
            Some(i) => &text[i + 1..],
            None => &text[..],
        }
    } else {
        &text[..]
    };
    text.trim_end().to_string()
}

/// GPU ids visible to the engine: the entries of `CUDA_VISIBLE_DEVICES` when it is set, else
/// one per `/dev/nvidiaN` device (or per `nvidia-smi -L` line where only the control device or
/// WSL's `/dev/dxg` is visible). Empty without GPUs.
pub(crate) fn detect_gpus() -> Vec<String> {
    if let Ok(visible) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return parse_visible_devices(&visible);
    }
    let mut count = 0usize;
    if let Ok(entries) = std::fs::read_dir("/dev") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_prefix("nvidia") {
                if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                    count += 1;
                }
            }
        }
    }
    if count == 0 && (Path::new("/dev/nvidiactl").exists() || Path::new("/dev/dxg").exists()) {
        count = nvidia_smi_count();
    }
    (0..count).map(|i| i.to_string()).collect()
}

fn nvidia_smi_count() -> usize {
    let out = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("GPU "))
            .count(),
        _ => 0,
    }
}

/// The ids in a `CUDA_VISIBLE_DEVICES` value (`-1` or empty: none).
pub(crate) fn parse_visible_devices(value: &str) -> Vec<String> {
    let ids: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if ids.iter().any(|id| id == "-1") {
        return Vec::new();
    }
    ids
}

/// The GPU for worker slot `index`: the same for every replacement in that slot.
pub(crate) fn gpu_for_slot(gpus: &[String], index: usize) -> Option<&str> {
    if gpus.is_empty() {
        None
    } else {
        Some(gpus[index % gpus.len()].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_indices_wrap_per_slot() {
        let gpus = parse_visible_devices("0, 1");
        assert_eq!(gpu_for_slot(&gpus, 0), Some("0"));
        assert_eq!(gpu_for_slot(&gpus, 3), Some("1"));
        assert_eq!(gpu_for_slot(&parse_visible_devices("-1"), 0), None);
        assert_eq!(gpu_for_slot(&parse_visible_devices(""), 0), None);
        assert_eq!(
            gpu_for_slot(&parse_visible_devices("GPU-abc,GPU-def"), 2),
            Some("GPU-abc")
        );
    }

    #[test]
    fn log_paths_follow_the_prs_layout() {
        let slot = WorkerSlot::new(2, 0);
        let paths = user_log_paths(Path::new("/out/logs"), &slot);
        assert_eq!(
            paths.stdout,
            Path::new("/out/logs/user/stdout/node000/process002.stdout.txt")
        );
        assert_eq!(
            paths.stderr,
            Path::new("/out/logs/user/stderr/node000/process002.stderr.txt")
        );
        assert_eq!(
            paths.entry_script_log,
            Path::new("/out/logs/user/entry_script_log/node000/process002.log.txt")
        );
    }

    #[test]
    fn exit_statuses_are_named() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert!(describe_exit(ExitStatus::from_raw(libc::SIGKILL))
            .starts_with("killed by signal 9 (SIGKILL)"));
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "killed by signal 11 (SIGSEGV)"
        );
    }

    #[test]
    fn log_tail_reads_only_this_workers_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.txt");
        std::fs::write(&path, "old line\nnew 1\nnew 2\n").unwrap();
        assert_eq!(log_tail(&path, 9, 1000), "new 1\nnew 2");
        assert_eq!(log_tail(&path, 0, 8), "new 2");
    }
}
