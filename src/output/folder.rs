//! The output folder's life: what an earlier run left there ([`earlier_results`],
//! [`prepare_output_dir`]), removing a failed run's work files ([`clean_output_dir`]), and
//! one run at a time per folder ([`OutputLock`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PrsError, Result};

use super::{FAILED_ROWS_DIR, WORK_DIR_NAME};

/// What an earlier run left in `output_dir` that a new run would be mistaken for or mixed
/// with: the final file `final_name`, `logs/job_summary.json` (every finished run writes
/// it, failed ones too), and the committed parts of an unfinished run
/// (the ledger's `logs/ledger/records.jsonl`, not empty). Paths relative to `output_dir`.
pub fn earlier_results(output_dir: &Path, final_name: &str) -> Vec<String> {
    let candidates = [
        final_name.to_string(),
        "logs/job_summary.json".to_string(),
        "logs/ledger/records.jsonl".to_string(),
    ];
    candidates
        .into_iter()
        .filter(|relative| {
            fs::metadata(output_dir.join(relative)).is_ok_and(|m| m.is_file() && m.len() > 0)
        })
        .collect()
}

/// Makes `output_dir` ready for a new run writing `final_name`: refuses (a usage error)
/// when it holds an earlier run's results ([`earlier_results`]), unless `overwrite`, which
/// removes them first: the final file, `logs/`, `.parallel_run/` and `failed_rows/`. Anything else in the
/// folder (files run() wrote) is left alone.
pub fn prepare_output_dir(output_dir: &Path, final_name: &str, overwrite: bool) -> Result<()> {
    let found = earlier_results(output_dir, final_name);
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(PrsError::earlier_results(
            &output_dir.display().to_string(),
            &found,
        ));
    }
    let final_path = output_dir.join(final_name);
    if final_path.is_file() {
        fs::remove_file(&final_path).map_err(|e| PrsError::io(&final_path, e))?;
    }
    for dir in ["logs", WORK_DIR_NAME, FAILED_ROWS_DIR] {
        let dir = output_dir.join(dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| PrsError::io(&dir, e))?;
        }
    }
    Ok(())
}

/// Removes what a failed or unfinished run left in `output_dir` besides its results and its
/// report: the committed parts and work files (`.parallel_run/`). Refused while a run holds
/// the folder ([`OutputLock`]). Returns what was removed (nothing: an empty list).
pub fn clean_output_dir(output_dir: &Path) -> Result<Vec<PathBuf>> {
    if !output_dir.is_dir() {
        return Err(PrsError::config(
            "output",
            output_dir.display(),
            "is not a folder: give the output folder of a job",
        ));
    }
    let _lock = OutputLock::acquire(output_dir)?;
    let work = output_dir.join(WORK_DIR_NAME);
    if !work.exists() {
        return Ok(Vec::new());
    }
    fs::remove_dir_all(&work).map_err(|e| PrsError::io(&work, e))?;
    Ok(vec![work])
}

/// The name of the lock file a running job holds in its output folder.
pub const LOCK_FILE_NAME: &str = ".parallel_run.lock";

/// A running job's hold on its output folder: an advisory lock (`flock`) on
/// `<output>/.parallel_run.lock`, so that a second run on the same folder (which could clear
/// the first one's committed work with `--overwrite`) is refused. The operating system
/// releases it when the process ends, however it ends (a `kill -9` leaves no stale lock); the
/// file is removed when the hold is dropped.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    _file: File,
}

impl OutputLock {
    /// Takes the lock of `output_dir` (creating the folder), or refuses with a usage error
    /// naming the process that holds it.
    pub fn acquire(output_dir: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        fs::create_dir_all(output_dir).map_err(|e| PrsError::io(output_dir, e))?;
        let path = output_dir.join(LOCK_FILE_NAME);
        // A holder that finished removed the file it locked: lock the file that is there now.
        for _ in 0..3 {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| PrsError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    return Err(PrsError::config(
                        "output",
                        output_dir.display(),
                        format!(
                            "is being written by another parallel-run run ({}); wait for it to \
                             finish or choose another output folder",
                            match holder.trim() {
                                "" => "a process on this machine".to_string(),
                                pid => format!("process {pid}"),
                            }
                        ),
                    ));
                }
                Err(fs::TryLockError::Error(e)) => return Err(PrsError::io(&path, e)),
            }
            let same = match (file.metadata(), fs::metadata(&path)) {
                (Ok(held), Ok(now)) => held.ino() == now.ino() && held.dev() == now.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0).map_err(|e| PrsError::io(&path, e))?;
            write!(file, "{}", std::process::id()).map_err(|e| PrsError::io(&path, e))?;
            return Ok(OutputLock { path, _file: file });
        }
        Err(PrsError::config(
            "output",
            output_dir.display(),
            "its lock file keeps being replaced by other parallel-run runs; run one at a time",
        ))
    }
}

/// Who holds the lock of `output_dir` (`Some("process PID")`), without taking it; `None` when
/// no run holds it.
pub fn lock_holder(output_dir: &Path) -> Option<String> {
    let path = output_dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(fs::TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            Some(match pid.trim() {
                "" => "a process on this machine".to_string(),
                pid => format!("process {pid}"),
            })
        }
        Err(fs::TryLockError::Error(_)) => None,
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still held: a run that opens it now locks a new file.
        let _ = fs::remove_file(&self.path);
    }
}
