//! The job report, in PRS's layout under `<output>/logs/`:
//! - `sys/job_report/processed_mini-batches.csv`: one row per mini-batch as it finishes;
//! - `sys/events.txt`: failed tries and worker starts/replacements, as they happen;
//! - `job_progress_overview.txt`: "Processed P of T mini batches in h:mm:ss. ...", refreshed;
//! - `job_result.txt`: the outcome, the PRS summary sentence and where to look;
//! - `job_summary.json`: the same, machine-readable;
//! - `failed_items.parquet` and its twin `failed_items.csv`: the dead letters, one row per
//!   failed mini-batch and per item bisection isolated ([`dead_letter_schema`]), written as
//!   they fail; present (empty) when nothing failed.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use serde::Serialize;

use crate::batch::MiniBatchId;
use crate::error::{PrsError, Result};
use crate::exec::{JobCounts, JobObserver, MiniBatchRecord};
use crate::lock;

/// Header of `processed_mini-batches.csv`.
pub const PROCESSED_HEADER: &str = "mini_batch_id,input,rows,partition_key_value,tries,process,start_time,total_items,succeeded_items,failed_items,elapsed_seconds,run_seconds,status,error_message";

/// Writes the report files that grow while the job runs.
pub struct ReportWriter {
    log_dir: PathBuf,
    processed: Mutex<BufWriter<File>>,
    events: Mutex<BufWriter<File>>,
    /// Failed mini-batches' messages, kept for job_result.txt (bounded).
    failures: Mutex<Vec<String>>,
    dead_letters: Mutex<DeadLetters>,
}

/// The schema of `failed_items.parquet` / `failed_items.csv`: one row per failed mini-batch
/// (`level` `mini_batch`) and, after it, one per item bisection isolated in it (`level`
/// `item`, see `isolate_failures`). Columns: `level`, `mini_batch_id` (an item's is the
/// derived id of the part that held only it, e.g. `0-17.0110`), `input`, `rows_start`,
/// `rows_end` (the row range in the input's ordered stream), `row_index` (an item's position
/// within its mini-batch; null for a mini-batch), `partition_key_value` (JSON, null when not
/// keyed), `error_class` (`RUN_EXCEPTION`, `RUN_TIMEOUT`, `PROCESS_CRASHED`, `BAD_RESULT`, or
/// [`MISSING_RESULTS`] for a mini-batch whose run() succeeded with fewer results than items),
/// `message`, `traceback`, `tries` (1 for an item: its one bisection call), `process` (the
/// worker of the last try), `start_time` (UTC) and `elapsed_seconds` (of the mini-batch).
pub fn dead_letter_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("level", false),
        text("mini_batch_id", false),
        text("input", false),
        Field::new("rows_start", DataType::UInt64, false),
        Field::new("rows_end", DataType::UInt64, false),
        Field::new("row_index", DataType::UInt64, true),
        text("partition_key_value", true),
        text("error_class", false),
        text("message", false),
        text("traceback", true),
        Field::new("tries", DataType::UInt32, false),
        text("process", false),
        Field::new(
            "start_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("elapsed_seconds", DataType::Float64, false),
    ]))
}

/// The dead letters' `error_class` of a mini-batch whose run() succeeded but returned fewer
/// results than items: PRS counts the missing ones as failed items, which ones is not known.
pub const MISSING_RESULTS: &str = "MISSING_RESULTS";

/// Dead-letter rows held until the next flush of the dead-letter files.
const DEAD_LETTERS_PER_FLUSH: usize = 256;

/// One row of the dead letters ([`dead_letter_schema`]).
#[derive(Debug, Clone)]
struct DeadLetter {
    level: &'static str,
    id: String,
    input: String,
    rows: std::ops::Range<u64>,
    row_index: Option<u64>,
    keys: Option<String>,
    error_class: &'static str,
    message: String,
    traceback: Option<String>,
    tries: u32,
    process: String,
    start_time: SystemTime,
    elapsed_seconds: f64,
}

impl DeadLetter {
    /// The rows of a failed mini-batch: its own, then one per isolated item.
    fn of(r: &MiniBatchRecord) -> Vec<DeadLetter> {
        let keys = (!r.partition_key_value.is_empty())
            .then(|| serde_json::to_string(&r.partition_key_value).unwrap_or_default());
        let base = DeadLetter {
            level: "mini_batch",
            id: r.id.to_string(),
            input: r.lineage.input.to_string(),
            rows: r.lineage.rows.clone(),
            row_index: None,
            keys,
            error_class: if r.succeeded() {
                MISSING_RESULTS
            } else {
                r.status.as_str()
            },
            message: r.error_message.clone(),
            traceback: r.traceback.clone(),
            tries: r.tries,
            process: r.process.clone(),
            start_time: r.start_time,
            elapsed_seconds: r.elapsed_seconds,
        };
        let start = r.lineage.rows.start;
        let items = r.isolated.iter().map(|item| DeadLetter {
            level: "item",
            id: item.id.to_string(),
            rows: start + item.rows.start..start + item.rows.end,
            row_index: Some(item.rows.start),
            error_class: item.status.as_str(),
            message: item.error_message.clone(),
            traceback: item.traceback.clone(),
            tries: 1,
            ..base.clone()
        });
        let mut rows = vec![base.clone()];
        rows.extend(items);
        rows
    }
}

/// The dead-letter files being written.
struct DeadLetters {
    pending: Vec<DeadLetter>,
    parquet: Option<ArrowWriter<File>>,
    csv: Option<arrow::csv::Writer<BufWriter<File>>>,
    /// Whether a batch (an empty one included) reached the files.
    written: bool,
    path: PathBuf,
    /// The first write error (reported when the files are closed).
    error: Option<PrsError>,
}

impl DeadLetters {
    fn create(log_dir: &Path) -> Result<Self> {
        let path = log_dir.join("failed_items.parquet");
        let file = File::create(&path).map_err(|e| PrsError::io(&path, e))?;
        let parquet = ArrowWriter::try_new(file, dead_letter_schema(), None)
            .map_err(|e| dead_letter_error(&path, e))?;
        let csv_path = log_dir.join("failed_items.csv");
        let csv_file = File::create(&csv_path).map_err(|e| PrsError::io(&csv_path, e))?;
        let csv = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(BufWriter::new(csv_file));
        Ok(DeadLetters {
            pending: Vec::new(),
            parquet: Some(parquet),
            csv: Some(csv),
            written: false,
            path,
            error: None,
        })
    }

    fn push(&mut self, record: &MiniBatchRecord) {
        self.pending.extend(DeadLetter::of(record));
        if self.pending.len() >= DEAD_LETTERS_PER_FLUSH {
            self.flush();
        }
    }

    /// Writes the pending rows (an empty batch when nothing was ever written, so that both
    /// files have their schema / header).
    fn flush(&mut self) {
        if self.pending.is_empty() && self.written {
            return;
        }
        let path = &self.path;
        let result = dead_letter_batch(&self.pending).and_then(|batch| {
            if let Some(parquet) = self.parquet.as_mut() {
                parquet
                    .write(&batch)
                    .map_err(|e| dead_letter_error(path, e))?;
            }
            if let Some(csv) = self.csv.as_mut() {
                csv.write(&batch)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => self.written = true,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.pending.clear();
    }

    /// Flushes and closes both files; the first error of the run, if any.
    fn close(&mut self) -> Result<()> {
        self.flush();
        if let Some(parquet) = self.parquet.take() {
            if let Err(e) = parquet.close() {
                self.error.get_or_insert(dead_letter_error(&self.path, e));
            }
        }
        if let Some(csv) = self.csv.take() {
            if let Err(e) = csv.into_inner().flush() {
                self.error
                    .get_or_insert(PrsError::io(self.path.with_extension("csv"), e));
            }
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn dead_letter_error(path: &Path, e: parquet::errors::ParquetError) -> PrsError {
    PrsError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// `rows` in [`dead_letter_schema`].
fn dead_letter_batch(rows: &[DeadLetter]) -> Result<RecordBatch> {
    let text = |f: &dyn Fn(&DeadLetter) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let millis = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| Some(r.level.to_string())),
        text(&|r| Some(r.id.clone())),
        text(&|r| Some(r.input.clone())),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.rows.start),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.rows.end),
        )),
        Arc::new(rows.iter().map(|r| r.row_index).collect::<UInt64Array>()),
        text(&|r| r.keys.clone()),
        text(&|r| Some(r.error_class.to_string())),
        text(&|r| Some(r.message.clone())),
        text(&|r| r.traceback.clone()),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.tries))),
        text(&|r| Some(r.process.clone())),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| millis(r.start_time)))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.elapsed_seconds),
        )),
    ];
    Ok(RecordBatch::try_new(dead_letter_schema(), columns)?)
}

impl std::fmt::Debug for ReportWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReportWriter({})", self.log_dir.display())
    }
}

/// The machine-readable progress file in the log folder.
pub const PROGRESS_FILE: &str = "job_progress.json";

/// What `job_progress.json` holds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProgressFile {
    /// The job's counts when it was written.
    pub counts: JobCounts,
    /// Seconds since the run started.
    pub elapsed_seconds: f64,
}

/// How many failure messages job_result.txt lists.
const LISTED_FAILURES: usize = 20;

impl ReportWriter {
    /// Creates `<log_dir>` and the growing report files (replacing those of an earlier run).
    pub fn create(log_dir: &Path) -> Result<Self> {
        let report_dir = log_dir.join("sys").join("job_report");
        fs::create_dir_all(&report_dir).map_err(|e| PrsError::io(&report_dir, e))?;
        let processed_path = report_dir.join("processed_mini-batches.csv");
        let mut processed = BufWriter::new(
            File::create(&processed_path).map_err(|e| PrsError::io(&processed_path, e))?,
        );
        writeln!(processed, "{PROCESSED_HEADER}").map_err(|e| PrsError::io(&processed_path, e))?;
        processed
            .flush()
            .map_err(|e| PrsError::io(&processed_path, e))?;
        let events_path = log_dir.join("sys").join("events.txt");
        let events =
            BufWriter::new(File::create(&events_path).map_err(|e| PrsError::io(&events_path, e))?);
        Ok(ReportWriter {
            log_dir: log_dir.to_path_buf(),
            processed: Mutex::new(processed),
            events: Mutex::new(events),
            failures: Mutex::new(Vec::new()),
            dead_letters: Mutex::new(DeadLetters::create(log_dir)?),
        })
    }

    /// Completes the dead-letter files (`failed_items.parquet` / `.csv`); an error says
    /// which file could not be written.
    pub fn close_dead_letters(&self) -> Result<()> {
        lock(&self.dead_letters).close()
    }

    /// The log folder.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Messages of failed mini-batches (the first few).
    pub fn failures(&self) -> Vec<String> {
        lock(&self.failures).clone()
    }

    fn event(&self, text: &str) {
        let mut events = lock(&self.events);
        let _ = writeln!(events, "{} {text}", timestamp(SystemTime::now()));
        let _ = events.flush();
    }

    /// Rewrites `job_progress_overview.txt`, and `job_progress.json` (the counts and the
    /// elapsed seconds, which `parallel-run status` reads).
    pub fn write_progress(&self, counts: &JobCounts, elapsed: Duration) {
        let path = self.log_dir.join("job_progress_overview.txt");
        let _ = fs::write(path, progress_line(counts, elapsed) + "\n");
        let progress = ProgressFile {
            counts: counts.clone(),
            elapsed_seconds: elapsed.as_secs_f64(),
        };
        if let Ok(json) = serde_json::to_vec(&progress) {
            let path = self.log_dir.join(PROGRESS_FILE);
            let tmp = self.log_dir.join(format!(".{PROGRESS_FILE}.tmp"));
            if fs::write(&tmp, json).is_ok() {
                let _ = fs::rename(tmp, path);
            }
        }
    }
}

impl JobObserver for ReportWriter {
    fn mini_batch_finished(&self, r: &MiniBatchRecord) {
        let keys = if r.partition_key_value.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&r.partition_key_value).unwrap_or_default()
        };
        let row = [
            r.id.to_string(),
            r.lineage.input.to_string(),
            format!("{}..{}", r.lineage.rows.start, r.lineage.rows.end),
            keys,
            r.tries.to_string(),
            r.process.clone(),
            timestamp(r.start_time),
            r.total_items.to_string(),
            r.succeeded_items.to_string(),
            r.failed_items.to_string(),
            format!("{:.3}", r.elapsed_seconds),
            format!("{:.3}", r.run_seconds),
            r.status.as_str().to_string(),
            r.error_message.clone(),
        ];
        let line = row
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",");
        {
            let mut processed = lock(&self.processed);
            let _ = writeln!(processed, "{line}");
            let _ = processed.flush();
        }
        if r.bisection_calls > 0 {
            self.event(&bisection_text(r));
        }
        if r.succeeded() && r.failed_items > 0 {
            // run() left items out: a dead letter for the mini-batch (not a failed one).
            self.event(&format!(
                "mini batch {} ({}): {} ({MISSING_RESULTS})",
                r.id, r.lineage, r.error_message
            ));
            lock(&self.dead_letters).push(r);
        }
        if !r.succeeded() {
            let mut text = format!(
                "mini batch {} ({}) failed after {} tries: {} ({})",
                r.id, r.lineage, r.tries, r.error_message, r.status
            );
            if let Some(tb) = &r.traceback {
                text.push('\n');
                text.push_str(tb.trim_end());
            }
            for (attempt, message) in &r.earlier_errors {
                text.push_str(&format!("\n  try {attempt} failed differently: {message}"));
            }
            if !r.isolated.is_empty() {
                let rows: Vec<String> = r
                    .isolated
                    .iter()
                    .map(|i| format!("{} ({})", i.rows.start, i.id))
                    .collect();
                text.push_str(&format!(
                    "\n  bisection isolated the failing item(s) at row(s) {} of the mini batch; \
                     its other {} item(s) were committed",
                    rows.join(", "),
                    r.succeeded_items
                ));
            }
            self.event(&text);
            lock(&self.dead_letters).push(r);
            let mut failures = lock(&self.failures);
            if failures.len() < LISTED_FAILURES {
                failures.push(text);
            }
        }
    }

    fn try_failed(&self, id: MiniBatchId, attempt: u32, process: &str, message: &str) {
        self.event(&format!(
            "mini batch {id} try {attempt} on {process} failed: {message}"
        ));
    }

    fn worker_event(&self, process: &str, message: &str) {
        self.event(&format!("{process}: {message}"));
    }
}

/// The events line of a bisected mini-batch: the calls made and what they isolated.
fn bisection_text(r: &MiniBatchRecord) -> String {
    let mut text = format!(
        "mini batch {} ({}): bisection made {} run() calls; ",
        r.id, r.lineage, r.bisection_calls
    );
    if r.isolated.is_empty() {
        text.push_str("every part succeeded alone, no item isolated");
        return text;
    }
    text.push_str(&format!(
        "{} item(s) failed, {} committed:",
        r.failed_items, r.succeeded_items
    ));
    for item in &r.isolated {
        let rows = if item.rows.end - item.rows.start == 1 {
            format!("row {}", item.rows.start)
        } else {
            format!("rows {}..{}", item.rows.start, item.rows.end)
        };
        text.push_str(&format!(
            "\n  {rows} ({}): {} ({})",
            item.id, item.error_message, item.status
        ));
    }
    text
}

/// Whether a job succeeded (written `succeeded` / `failed` in `job_summary.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Every rule held and the output is complete.
    Succeeded,
    /// A threshold was exceeded, nothing succeeded, or the output could not be committed.
    Failed,
}

/// The job's outcome, as written to `job_summary.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobSummary {
    /// `succeeded` or `failed`.
    pub status: JobStatus,
    /// Why the job failed (empty on success).
    pub reason: String,
    /// All mini-batches; a lower bound when `mini_batches_total_exact` is false.
    pub mini_batches_total: u64,
    /// True when every mini-batch was cut (the input was fully read).
    pub mini_batches_total_exact: bool,
    /// Mini-batches with a final status.
    pub mini_batches_processed: u64,
    /// ... succeeded.
    pub mini_batches_succeeded: u64,
    /// ... failed.
    pub mini_batches_failed: u64,
    /// All items (rows or files); a lower bound when `items_total_exact` is false.
    pub items_total: u64,
    /// True when `items_total` is exact: from metadata (Parquet row counts), or every
    /// mini-batch was cut.
    pub items_total_exact: bool,
    /// Items in processed mini-batches.
    pub items_processed: u64,
    /// Items returned by run().
    pub items_succeeded: u64,
    /// Items failed.
    pub items_failed: u64,
    /// run() calls, retries included.
    pub tries: u64,
    /// ... of which bisection made (`isolate_failures`).
    pub bisection_calls: u64,
    /// init() failures.
    pub init_failures: u64,
    /// This run continued an interrupted one (`--resume`, `--rerun-failed`).
    pub resumed: bool,
    /// Mini-batches earlier runs finished and this one did not run again (counted in the
    /// totals above, which cover the whole job).
    pub mini_batches_skipped: u64,
    /// Input rows of the skipped mini-batches that this run did not even read (local Parquet
    /// inputs unchanged since they were cut: re-cut from the ledger's row ranges).
    pub rows_not_read: u64,
    /// Failed mini-batches of earlier runs that this run ran again (`--rerun-failed`).
    pub mini_batches_rerun: u64,
    /// Seconds spent on the ledger (fingerprinting input slices, writing and syncing
    /// records), summed over the job's tasks: an upper bound of what the ledger costs.
    pub ledger_seconds: f64,
    /// Files of file datasets on object storage this run downloaded (a resumed run does not
    /// download the files of the mini-batches it skips).
    pub files_downloaded: u64,
    /// Wall time, seconds.
    pub elapsed_seconds: f64,
    /// The append_row file (absent for summary_only or a failed job).
    pub output: Option<PathBuf>,
    /// Rows in the output file.
    pub output_rows: u64,
    /// The error_threshold in force.
    pub error_threshold: i64,
    /// Where committed parts are kept when the job failed.
    pub partial_output: Option<PathBuf>,
    /// The log folder.
    pub logs: PathBuf,
    /// A cluster job: how many executors ran the mini-batches this run committed (distinct
    /// executors named by the records, a replacement of a lost executor counted too; absent
    /// for a local run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executors: Option<u64>,
}

impl JobSummary {
    /// Marks the job failed for `reason` (a later failure's reason follows an earlier one's).
    pub fn fail(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.reason = if self.succeeded() || self.reason.is_empty() {
            reason
        } else {
            format!("{}; then {reason}", self.reason)
        };
        self.status = JobStatus::Failed;
    }

    /// True when the job succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == JobStatus::Succeeded
    }

    /// PRS's summary sentence. A total the job could not know (it stopped before reading all
    /// of its input) reads "at least N ... (input not fully read)".
    pub fn sentence(&self) -> String {
        format!(
            "There are {} with {}. Processed {} mini batches containing {} items, {} succeeded, {} failed. The error threshold is {}.",
            total_text(self.mini_batches_total, self.mini_batches_total_exact, "mini batches"),
            total_text(self.items_total, self.items_total_exact, "items"),
            self.mini_batches_processed,
            self.items_processed,
            self.items_succeeded,
            self.items_failed,
            self.error_threshold
        )
    }

    /// Builds the summary from the final counts.
    pub fn from_counts(c: &JobCounts, error_threshold: i64, elapsed: Duration) -> Self {
        JobSummary {
            status: JobStatus::Succeeded,
            reason: String::new(),
            mini_batches_total: c.mini_batches_total,
            mini_batches_total_exact: c.mini_batches_total_exact(),
            mini_batches_processed: c.mini_batches_processed,
            mini_batches_succeeded: c.mini_batches_succeeded,
            mini_batches_failed: c.mini_batches_failed,
            items_total: c.items_total_known().unwrap_or(c.items_total),
            items_total_exact: c.items_total_known().is_some(),
            items_processed: c.items_processed,
            items_succeeded: c.items_succeeded,
            items_failed: c.items_failed,
            tries: c.tries,
            bisection_calls: c.bisection_calls,
            init_failures: c.init_failures,
            resumed: false,
            mini_batches_skipped: c.mini_batches_skipped,
            rows_not_read: c.rows_not_read,
            mini_batches_rerun: 0,
            ledger_seconds: 0.0,
            files_downloaded: 0,
            elapsed_seconds: elapsed.as_secs_f64(),
            output: None,
            output_rows: 0,
            error_threshold,
            partial_output: None,
            logs: PathBuf::new(),
            executors: None,
        }
    }
}

/// `N what`, or `at least N what (input not fully read)` when `N` is a lower bound.
fn total_text(n: u64, exact: bool, what: &str) -> String {
    if exact {
        format!("{n} {what}")
    } else {
        format!("at least {n} {what} (input not fully read)")
    }
}

/// Writes `job_result.txt` and `job_summary.json`, and a last progress overview.
pub fn write_final(log_dir: &Path, summary: &JobSummary, failures: &[String]) -> Result<()> {
    let mut text = String::new();
    if summary.succeeded() {
        text.push_str("The job succeeded.\n");
    } else {
        text.push_str(&format!("The job failed: {}\n", summary.reason));
    }
    text.push_str(&summary.sentence());
    text.push('\n');
    if let Some(out) = &summary.output {
        text.push_str(&format!(
            "Output: {} ({} rows)\n",
            out.display(),
            summary.output_rows
        ));
    }
    if let Some(partial) = &summary.partial_output {
        text.push_str(&format!(
            "No output file was written. Rows of the mini batches that succeeded are kept in {}\n",
            partial.display()
        ));
    }
    if !failures.is_empty() {
        text.push_str("\nFailed mini batches (first ones):\n");
        for f in failures {
            text.push_str(f);
            text.push('\n');
        }
    }
    text.push_str(&format!(
        "\nDetails: {} (one row per mini batch), {} (tries and workers), {} (entry script output).\n",
        log_dir.join("sys/job_report/processed_mini-batches.csv").display(),
        log_dir.join("sys/events.txt").display(),
        log_dir.join("user").display()
    ));
    let result_path = log_dir.join("job_result.txt");
    fs::write(&result_path, text).map_err(|e| PrsError::io(&result_path, e))?;
    let json_path = log_dir.join("job_summary.json");
    let json = serde_json::to_string_pretty(summary).map_err(|e| PrsError::Output {
        path: json_path.display().to_string(),
        message: e.to_string(),
    })?;
    fs::write(&json_path, json + "\n").map_err(|e| PrsError::io(&json_path, e))?;
    Ok(())
}

/// "Processed P of T mini batches in h:mm:ss. Estimate remaining h:mm:ss. ...". The estimate
/// uses the exact item total when metadata gives it (so it is right from the start), else the
/// mini-batch total once every mini-batch is cut; before that it says "estimating".
pub fn progress_line(c: &JobCounts, elapsed: Duration) -> String {
    let total = if c.mini_batches_total_exact() {
        c.mini_batches_total.to_string()
    } else {
        format!("at least {}", c.mini_batches_total)
    };
    let mut line = format!(
        "Processed {} of {} mini batches in {}.",
        c.mini_batches_processed,
        total,
        hms(elapsed)
    );
    match remaining(c, elapsed) {
        Some(left) => line.push_str(&format!(" Estimate remaining {}.", hms(left))),
        None if !c.mini_batches_total_exact() && c.items_total_known().is_none() => {
            line.push_str(" Estimate remaining: estimating (input not fully read).")
        }
        None => {}
    }
    line.push_str(&format!(
        " {} items succeeded, {} failed, {} mini batches failed.",
        c.items_succeeded, c.items_failed, c.mini_batches_failed
    ));
    line
}

/// The time left at the rate so far: by items when their total is known, else by
/// mini-batches once all are cut; `None` when unknown or done.
pub fn remaining(c: &JobCounts, elapsed: Duration) -> Option<Duration> {
    let (done, total) = match c.items_total_known() {
        Some(items) => (c.items_processed, items),
        None if c.mini_batches_total_exact() => (c.mini_batches_processed, c.mini_batches_total),
        None => return None,
    };
    (done > 0 && done < total).then(|| elapsed.mul_f64((total - done) as f64 / done as f64))
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn timestamp(t: SystemTime) -> String {
    let dt: DateTime<Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_matches_prs() {
        let c = JobCounts {
            mini_batches_total: 3,
            items_total: 30,
            scheduling_done: true,
            mini_batches_processed: 3,
            items_processed: 30,
            items_succeeded: 28,
            items_failed: 2,
            ..Default::default()
        };
        let s = JobSummary::from_counts(&c, 5, Duration::from_secs(1));
        assert_eq!(
            s.sentence(),
            "There are 3 mini batches with 30 items. Processed 3 mini batches containing 30 items, 28 succeeded, 2 failed. The error threshold is 5."
        );
    }

    #[test]
    fn totals_not_known_say_at_least() {
        let c = JobCounts {
            mini_batches_total: 6,
            items_total: 990,
            items_expected: Some(2000),
            mini_batches_processed: 4,
            items_processed: 660,
            items_succeeded: 600,
            items_failed: 60,
            ..Default::default()
        };
        let s = JobSummary::from_counts(&c, 5, Duration::from_secs(1));
        assert_eq!(
            s.sentence(),
            "There are at least 6 mini batches (input not fully read) with 2000 items. Processed 4 mini batches containing 660 items, 600 succeeded, 60 failed. The error threshold is 5."
        );
        assert!(s.items_total_exact && !s.mini_batches_total_exact);
        let s = JobSummary::from_counts(
            &JobCounts {
                items_expected: None,
                ..c.clone()
            },
            5,
            Duration::from_secs(1),
        );
        assert!(s
            .sentence()
            .contains("with at least 990 items (input not fully read)."));
    }

    #[test]
    fn progress_estimates_from_known_totals_only() {
        let mut c = JobCounts {
            mini_batches_total: 4,
            items_total: 100,
            mini_batches_processed: 2,
            items_processed: 50,
            ..Default::default()
        };
        let line = progress_line(&c, Duration::from_secs(10));
        assert!(
            line.starts_with(
                "Processed 2 of at least 4 mini batches in 0:00:10. Estimate remaining: estimating"
            ),
            "{line}"
        );
        c.items_expected = Some(200);
        let line = progress_line(&c, Duration::from_secs(10));
        assert!(
            line.contains("Estimate remaining 0:00:30."),
            "by items: {line}"
        );
        c.items_expected = None;
        c.scheduling_done = true;
        let line = progress_line(&c, Duration::from_secs(10));
        assert!(
            line.starts_with(
                "Processed 2 of 4 mini batches in 0:00:10. Estimate remaining 0:00:10."
            ),
            "{line}"
        );
    }

    #[test]
    fn csv_quotes_when_needed() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
