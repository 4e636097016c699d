//! `parallel-run status OUT_DIR`: the state of a running or finished job, from its ledger.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::batch::MiniBatchStatus;
use crate::error::{PrsError, Result};
use crate::ledger::{final_entries, ledger_dir, read_entries, read_header, read_runs};
use crate::output::lock_holder;
use crate::report::{ProgressFile, PROGRESS_FILE};

/// What `status` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobStatusReport {
    /// The output folder.
    pub output: PathBuf,
    /// `running`, `succeeded`, `failed` or `interrupted` (no run holds the folder and no run
    /// finished it).
    pub state: String,
    /// The process running the job, when one is.
    pub running_pid: Option<String>,
    /// The entry script.
    pub entry_script: String,
    /// Runs so far (resumes included).
    pub runs: u32,
    /// Mini-batches with a final record: succeeded ...
    pub mini_batches_succeeded: u64,
    /// ... and failed.
    pub mini_batches_failed: u64,
    /// All mini-batches, when known (the input was fully cut).
    pub mini_batches_total: Option<u64>,
    /// Items in finished mini-batches, and of those the succeeded ones.
    pub items_processed: u64,
    /// Items returned by run().
    pub items_succeeded: u64,
    /// Items bisection isolated as failing (`isolate_failures`).
    pub items_isolated: u64,
    /// Mini-batches finished per second over the records' time span.
    pub rate_per_second: Option<f64>,
    /// Estimated time left for a running job.
    pub eta_seconds: Option<f64>,
    /// The last few errors (`id: message`).
    pub last_errors: Vec<String>,
}

/// Reads the state of the job whose output (or, for SQL, report) folder is `folder`.
pub fn job_status(folder: &Path) -> Result<JobStatusReport> {
    let log_dir = super::find_log_dir(folder, "status")?;
    let dir = ledger_dir(&log_dir);
    let header = read_header(&dir)?.ok_or_else(|| {
        PrsError::config("status", dir.display(), "has no job.json: not a job ledger")
    })?;
    let entry_script = header
        .spec()
        .map(|s| s.entry_script().to_string())
        .unwrap_or_else(|_| "(unknown)".to_string());
    let runs = read_runs(&dir)?;
    let entries = final_entries(read_entries(&dir)?);
    let mut report = JobStatusReport {
        output: folder.to_path_buf(),
        state: String::new(),
        running_pid: lock_holder(folder),
        entry_script,
        runs: runs.len() as u32,
        mini_batches_succeeded: 0,
        mini_batches_failed: 0,
        mini_batches_total: None,
        items_processed: 0,
        items_succeeded: 0,
        items_isolated: 0,
        rate_per_second: None,
        eta_seconds: None,
        last_errors: Vec::new(),
    };
    let mut failed = Vec::new();
    let (mut first, mut last): (Option<SystemTime>, Option<SystemTime>) = (None, None);
    let latest_run = runs.iter().map(|r| r.run).max().unwrap_or(0);
    let mut in_latest = 0u64;
    for entry in entries.values() {
        let r = &entry.record;
        if r.status == MiniBatchStatus::Succeeded {
            report.mini_batches_succeeded += 1;
        } else {
            report.mini_batches_failed += 1;
            failed.push((r.start_time, format!("{}: {}", r.id, r.error_message)));
        }
        report.items_processed += r.total_items;
        report.items_succeeded += r.succeeded_items;
        report.items_isolated += r
            .isolated
            .iter()
            .map(|i| i.rows.end - i.rows.start)
            .sum::<u64>();
        for item in &r.isolated {
            failed.push((r.start_time, format!("{}: {}", item.id, item.error_message)));
        }
        if entry.run == latest_run {
            in_latest += 1;
            let end = r.start_time + Duration::from_secs_f64(r.elapsed_seconds.max(0.0));
            first = Some(first.map_or(r.start_time, |f| f.min(r.start_time)));
            last = Some(last.map_or(end, |l| l.max(end)));
        }
    }
    failed.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    report.last_errors = failed.into_iter().take(5).map(|(_, m)| m).collect();
    if let (Some(first), Some(last)) = (first, last) {
        let span = last.duration_since(first).unwrap_or_default().as_secs_f64();
        if span > 0.0 && in_latest > 1 {
            report.rate_per_second = Some(in_latest as f64 / span);
        }
    }
    let progress: Option<ProgressFile> = std::fs::read(log_dir.join(PROGRESS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(p) = progress.filter(|p| p.counts.scheduling_done) {
        report.mini_batches_total = Some(p.counts.mini_batches_total);
    }
    let summary: Option<serde_json::Value> = std::fs::read(log_dir.join("job_summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let finished = summary
        .as_ref()
        .and_then(|s| s.get("status"))
        .and_then(|s| s.as_str())
        .map(str::to_string);
    if let Some(total) = summary
        .as_ref()
        .filter(|s| s.get("mini_batches_total_exact") == Some(&serde_json::Value::Bool(true)))
        .and_then(|s| s.get("mini_batches_total"))
        .and_then(|t| t.as_u64())
    {
        report.mini_batches_total = Some(total);
    }
    report.state = match (&report.running_pid, finished) {
        (Some(_), _) => "running".to_string(),
        (None, Some(status)) => status,
        (None, None) => "interrupted".to_string(),
    };
    if report.running_pid.is_some() {
        if let (Some(total), Some(rate)) = (report.mini_batches_total, report.rate_per_second) {
            let done = report.mini_batches_succeeded + report.mini_batches_failed;
            report.eta_seconds = Some(total.saturating_sub(done) as f64 / rate);
        }
    }
    Ok(report)
}

impl JobStatusReport {
    /// The text `parallel-run status` prints.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "job:        {}", self.output.display());
        let state = match &self.running_pid {
            Some(pid) => format!("running ({})", pid),
            None => self.state.clone(),
        };
        let _ = writeln!(t, "state:      {state}");
        let _ = writeln!(t, "script:     {}", self.entry_script);
        let _ = writeln!(t, "runs:       {}", self.runs);
        let done = self.mini_batches_succeeded + self.mini_batches_failed;
        let remaining = self
            .mini_batches_total
            .map(|total| total.saturating_sub(done).to_string())
            .unwrap_or_else(|| "unknown (the input is not fully cut yet)".to_string());
        let _ = writeln!(
            t,
            "mini-batches: {} succeeded, {} failed, {} remaining",
            self.mini_batches_succeeded, self.mini_batches_failed, remaining
        );
        let _ = writeln!(
            t,
            "items:      {} processed, {} succeeded{}",
            self.items_processed,
            self.items_succeeded,
            if self.items_isolated > 0 {
                format!(
                    ", {} isolated as failing (isolate_failures)",
                    self.items_isolated
                )
            } else {
                String::new()
            }
        );
        if let Some(rate) = self.rate_per_second {
            let _ = writeln!(t, "rate:       {rate:.2} mini-batches/s (latest run)");
        }
        if let Some(eta) = self.eta_seconds {
            let _ = writeln!(t, "eta:        {:.0} s", eta);
        }
        if !self.last_errors.is_empty() {
            let _ = writeln!(t, "last errors:");
            for e in &self.last_errors {
                let line: String = e
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                let _ = writeln!(t, "  {line}");
            }
        }
        if self.state == "interrupted" || self.state == "failed" {
            let _ = writeln!(
                t,
                "resume with: parallel-run run JOB.yaml --resume (or --rerun-failed to retry the failed mini-batches)"
            );
        }
        t
    }
}
