//! Finishing a run, the same way for every way in: [`JobRun`] keeps the progress file (and
//! the console bar) up to date while the operator runs, applies the summary rule to the final
//! counts, and writes the report files (`job_result.txt`, `job_summary.json`, ...). The job
//! driver ([`crate::job::execute`]), the Rust builder (through it) and the SQL report operator
//! ([`crate::sql::ParallelRunReportExec`]) all finish through it.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::runtime::SpawnedTask;

use crate::config::{JobSettings, OutputAction};
use crate::exec::{JobCounts, JobState};
use crate::report::{self, JobSummary, ReportWriter};

/// How the job shows progress on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Nothing on the console (the log files are still written).
    #[default]
    Quiet,
    /// A live bar on a terminal; a plain line every few seconds otherwise.
    Console,
}

/// How often the console bar is redrawn.
const TICK: Duration = Duration::from_millis(500);
/// The progress file (`job_progress_overview.txt`) is rewritten every this many ticks.
const PROGRESS_FILE_EVERY: u64 = 4;
/// Without a terminal, a plain progress line every this many ticks.
const CONSOLE_LINE_EVERY: u64 = 20;

/// One run being reported on (see the module docs).
pub struct JobRun {
    settings: JobSettings,
    state: Arc<JobState>,
    reports: Arc<ReportWriter>,
    progress: Progress,
    ticker: Option<SpawnedTask<()>>,
}

impl std::fmt::Debug for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRun")
            .field("log_dir", &self.settings.log_dir)
            .field("progress", &self.progress)
            .finish()
    }
}

impl JobRun {
    /// Starts reporting on the run of `settings` counted by `state`, into the report files of
    /// `reports` (created in `settings.log_dir`): the progress file every 2 seconds, and the
    /// console per `progress`. Must be called within a Tokio runtime.
    pub fn begin(
        settings: &JobSettings,
        reports: Arc<ReportWriter>,
        state: Arc<JobState>,
        progress: Progress,
    ) -> Self {
        let ticker = SpawnedTask::spawn(tick(state.clone(), reports.clone(), progress));
        JobRun {
            settings: settings.clone(),
            state,
            reports,
            progress,
            ticker: Some(ticker),
        }
    }

    /// The run's counters.
    pub fn state(&self) -> &Arc<JobState> {
        &self.state
    }

    /// The run's report files.
    pub fn reports(&self) -> &Arc<ReportWriter> {
        &self.reports
    }

    /// Ends the run's progress and closes its counts (see [`JobState::close`]); returns its
    /// summary by the summary rule: the failure is the abort reason, else a job
    /// with no items at all unless `allow_empty_input`, else PRS's rule that append_row needs
    /// at least one succeeded item. The progress file and the console state the same counts.
    pub fn summarize(&mut self) -> JobSummary {
        drop(self.ticker.take());
        let config = &self.settings.config;
        let counts = self.state.close();
        let elapsed = self.state.elapsed();
        let mut summary = JobSummary::from_counts(&counts, config.error_threshold, elapsed);
        summary.logs = self.settings.log_dir.clone();
        let mut failure = self.state.abort_reason_with(&counts);
        if failure.is_none()
            && counts.scheduling_done
            && counts.items_total == 0
            && !self.settings.allow_empty_input
        {
            failure = Some(
                "the inputs hold no items (no rows, no files): nothing was run. Check the input \
                 paths, globs and queries; set allow_empty_input: true in the job file (or \
                 --set allow_empty_input=true) if an empty input is expected"
                    .to_string(),
            );
        }
        if failure.is_none()
            && config.output_action == OutputAction::AppendRow
            && counts.items_total > 0
            && counts.items_succeeded == 0
        {
            failure = Some(
                "no succeeded mini-batch item returned from run(); append_row has nothing to write"
                    .to_string(),
            );
        }
        if let Some(reason) = failure {
            summary.fail(reason);
        }
        // Complete before anything is committed: a run whose dead letters are lost has failed.
        if let Err(e) = self.reports.close_dead_letters() {
            summary.fail(format!(
                "writing the dead letters (failed_items.parquet / .csv) failed: {e}"
            ));
        }
        let elapsed = Duration::from_secs_f64(summary.elapsed_seconds);
        self.reports.write_progress(&counts, elapsed);
        if self.progress == Progress::Console {
            eprintln!("parallel-run: {}", report::progress_line(&counts, elapsed));
        }
        summary
    }

    /// Writes the final report files for `summary`. A run whose report cannot be written has
    /// failed: `summary` says so (and a local final output file is removed, so that no output
    /// stands without a report saying it is complete).
    pub fn write(&self, summary: &mut JobSummary) {
        write_report(&self.settings.log_dir, summary, &self.reports.failures());
    }
}

/// The ticker of a run: the console bar (or a line every 10 seconds without a terminal) and
/// the progress file.
async fn tick(state: Arc<JobState>, reports: Arc<ReportWriter>, progress: Progress) {
    let bar = (progress == Progress::Console && std::io::stderr().is_terminal())
        .then(indicatif::ProgressBar::new_spinner);
    let mut shown: Option<Option<u64>> = None;
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(TICK).await;
        ticks += 1;
        let counts = state.counts();
        let elapsed = state.elapsed();
        if let Some(bar) = &bar {
            draw_bar(bar, &counts, elapsed, &mut shown);
        } else if progress == Progress::Console && ticks.is_multiple_of(CONSOLE_LINE_EVERY) {
            eprintln!("parallel-run: {}", report::progress_line(&counts, elapsed));
        }
        if ticks.is_multiple_of(PROGRESS_FILE_EVERY) {
            reports.write_progress(&counts, elapsed);
        }
    }
}

/// Writes the final report. A job whose report cannot be written has failed: its final file
/// (when local) is removed, so that no output stands without a report saying it is complete,
/// and the summary (which the caller prints) says what failed.
fn write_report(log_dir: &Path, summary: &mut JobSummary, failures: &[String]) {
    let Err(e) = report::write_final(log_dir, summary, failures) else {
        return;
    };
    let mut reason = format!("writing the report to {} failed: {e}", log_dir.display());
    if let Some(out) = summary.output.take() {
        if out.is_file() {
            let _ = std::fs::remove_file(&out);
            reason.push_str("; the final output file was removed");
        } else {
            reason.push_str(&format!("; the uploaded output {} was kept", out.display()));
        }
    }
    summary.fail(reason);
}

/// The live bar's template for an item total (`None`: not known yet).
fn bar_template(total: Option<u64>) -> &'static str {
    match total {
        Some(_) => "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items {msg} ETA {eta}",
        None => "{spinner} [{elapsed_precise}] {pos} items, total: estimating {msg}",
    }
}

/// Draws `counts` on the live bar: a bar in items once their exact total is known (from
/// metadata at the start, else once every mini-batch is cut), so its length never grows
/// and its ETA holds; until then a spinner that says "estimating". `shown` is the total the
/// bar was last set up for.
fn draw_bar(
    bar: &indicatif::ProgressBar,
    counts: &JobCounts,
    elapsed: Duration,
    shown: &mut Option<Option<u64>>,
) {
    let total = counts.items_total_known();
    if *shown != Some(total) {
        bar.set_style(
            indicatif::ProgressStyle::with_template(bar_template(total))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        match total {
            Some(items) => bar.set_length(items),
            None => bar.unset_length(),
        }
        *shown = Some(total);
    }
    bar.set_position(counts.items_processed);
    let mini_batches = if counts.mini_batches_total_exact() {
        counts.mini_batches_total.to_string()
    } else {
        format!("at least {}", counts.mini_batches_total)
    };
    let rate = counts.items_processed as f64 / elapsed.as_secs_f64().max(0.001);
    bar.set_message(format!(
        "({} of {mini_batches} mini batches, {rate:.0} items/s, {} failed)",
        counts.mini_batches_processed, counts.mini_batches_failed
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ParallelRunConfig;
    use crate::exec::RunSettings;

    #[test]
    fn a_report_that_cannot_be_written_fails_the_job_and_takes_its_output_away() {
        let d = tempfile::tempdir().unwrap();
        let output = d.path().join("parallel_run_step.txt");
        std::fs::write(&output, "1\n2\n").unwrap();
        // The log folder's name is taken by a file: nothing can be written below it.
        let log_dir = d.path().join("logs");
        std::fs::write(&log_dir, "not a folder").unwrap();
        let counts = crate::exec::JobCounts {
            scheduling_done: true,
            ..Default::default()
        };
        let mut summary = JobSummary::from_counts(&counts, 0, Duration::ZERO);
        summary.output = Some(output.clone());
        write_report(&log_dir, &mut summary, &[]);
        assert!(!summary.succeeded());
        assert!(
            summary.reason.starts_with("writing the report to")
                && summary.reason.contains("the final output file was removed"),
            "{}",
            summary.reason
        );
        assert!(!output.exists() && summary.output.is_none());
    }

    #[test]
    fn the_bar_counts_items_and_its_total_never_grows() {
        let state = JobState::new(
            RunSettings::from_config(
                &ParallelRunConfig::new("rust:echo", -1, OutputAction::SummaryOnly),
                false,
            )
            .unwrap(),
            Arc::new(crate::exec::NoopObserver),
        );
        let bar = indicatif::ProgressBar::hidden();
        let mut shown = None;
        state.mini_batch_scheduled(10);
        draw_bar(&bar, &state.counts(), Duration::from_secs(1), &mut shown);
        assert_eq!(bar.length(), None, "no total yet: a spinner");
        assert!(bar_template(None).contains("estimating"));
        // Metadata gives the total: a bar in items from then on, whatever is cut later.
        state.expect_items(100);
        for _ in 0..5 {
            state.mini_batch_scheduled(10);
            draw_bar(&bar, &state.counts(), Duration::from_secs(1), &mut shown);
            assert_eq!(bar.length(), Some(100));
        }
        assert!(
            bar.message().contains("of at least 6 mini batches"),
            "{}",
            bar.message()
        );
    }
}
