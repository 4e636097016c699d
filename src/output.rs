//! append_row output, exactly once.
//!
//! Each succeeded mini-batch's rows are written to their own part file in a staging folder
//! (`<output>/.parallel_run/staging/parts/<id>.arrow`, Arrow IPC, written under a temporary
//! name and renamed when complete) and then recorded in the job's ledger
//! (`crate::ledger`). Rows of a failed try
//! never get there, so a retried mini-batch cannot duplicate rows. When the job succeeds the
//! parts are merged into the final file (temporary name, then an atomic rename) in completion
//! order, or in mini-batch id order with `preserve_order`, and the staging folder is removed.
//! When the job fails, no final file appears and the staging folder is kept and named.
//!
//! A new run never starts on an earlier run's results ([`prepare_output_dir`]): a failed
//! rerun would otherwise leave the old final file beside a report of its own.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::json::writer::{make_encoder, EncoderOptions};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;

use crate::batch::MiniBatchId;
use crate::config::OutputFormat;
use crate::error::{PrsError, Result};
use crate::exec::{conform, CompletedMiniBatch, MiniBatchSink};
use crate::lock;
use crate::worker::{ResultShape, RESULT_SHAPE_KEY};

/// The folder of a run's own working files below the output folder (committed parts,
/// worker folders, the Python bootstrap, download caches): removed when the job succeeds.
pub const WORK_DIR_NAME: &str = ".parallel_run";

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

/// The folder below the output folder where `dead_letter_rows` writes the input of failed
/// items.
pub const FAILED_ROWS_DIR: &str = "failed_rows";

/// Writes the input items of failed mini-batches (`dead_letter_rows`) to
/// `<output>/failed_rows/`, one file per failed mini-batch named by its id: `<ID>.parquet`
/// with every input column for a table, `<ID>.txt` with one path per line for a file dataset.
/// Each file is written under a temporary name and renamed when complete. A mini-batch that
/// now succeeds (`--rerun-failed`) has its earlier file removed.
#[derive(Debug)]
pub struct FailedRowsWriter {
    dir: PathBuf,
}

impl FailedRowsWriter {
    /// A writer for `<output_dir>/failed_rows/` (created now).
    pub fn create(output_dir: &Path) -> Result<Self> {
        let dir = output_dir.join(FAILED_ROWS_DIR);
        fs::create_dir_all(&dir).map_err(|e| PrsError::io(&dir, e))?;
        Ok(FailedRowsWriter { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the failed items of `done` (see the type's docs).
    pub fn write(&self, done: &CompletedMiniBatch) -> Result<()> {
        let parquet = self.dir.join(format!("{}.parquet", done.id));
        let txt = self.dir.join(format!("{}.txt", done.id));
        let Some(failed) = &done.failed_input else {
            for stale in [parquet, txt] {
                match fs::remove_file(&stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(PrsError::io(&stale, e))
                    }
                    _ => {}
                }
            }
            return Ok(());
        };
        let (path, tmp) = match failed.kind {
            crate::batch::ItemKind::Rows => {
                (parquet, self.dir.join(format!(".{}.parquet.tmp", done.id)))
            }
            crate::batch::ItemKind::Files => (txt, self.dir.join(format!(".{}.txt.tmp", done.id))),
        };
        let failure = |message: String| PrsError::Output {
            path: path.display().to_string(),
            message: format!(
                "writing the failed rows of mini batch {} (dead_letter_rows) failed: {message}",
                done.id
            ),
        };
        let file = File::create(&tmp).map_err(|e| PrsError::io(&tmp, e))?;
        match failed.kind {
            crate::batch::ItemKind::Rows => {
                let mut writer = ArrowWriter::try_new(file, failed.rows.schema(), None)
                    .map_err(|e| failure(e.to_string()))?;
                writer
                    .write(&failed.rows)
                    .map_err(|e| failure(e.to_string()))?;
                writer.close().map_err(|e| failure(e.to_string()))?;
            }
            crate::batch::ItemKind::Files => {
                let paths = failed
                    .rows
                    .column_by_name("path")
                    .ok_or_else(|| failure("the file dataset has no path column".into()))?;
                let paths = arrow::compute::cast(paths, &DataType::Utf8)
                    .map_err(|e| failure(e.to_string()))?;
                let mut out = BufWriter::new(file);
                for path in paths.as_string::<i32>().iter().flatten() {
                    writeln!(out, "{path}").map_err(|e| PrsError::io(&tmp, e))?;
                }
                out.flush().map_err(|e| PrsError::io(&tmp, e))?;
            }
        }
        fs::rename(&tmp, &path).map_err(|e| PrsError::io(&path, e))?;
        Ok(())
    }
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

struct Part {
    id: MiniBatchId,
    path: PathBuf,
    rows: u64,
}

/// A committed part file, as the ledger names it: its file name in the staging folder's
/// `parts/`, its size (a resume checks it) and the output rows it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartRef {
    /// File name in `parts/`.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Output rows.
    pub rows: u64,
}

/// The staging folder of an output folder: `<output>/.parallel_run/staging` (the committed
/// parts are in its `parts/`).
pub fn staging_dir(output_dir: &Path) -> PathBuf {
    output_dir.join(WORK_DIR_NAME).join("staging")
}

/// Writes committed mini-batches and, at the end, the final output file.
pub struct AppendRowSink {
    final_path: PathBuf,
    staging: PathBuf,
    format: OutputFormat,
    parts: Vec<Part>,
    /// The ids of the parts committed by earlier runs (a resumed run).
    resumed: HashSet<MiniBatchId>,
    rows: u64,
    /// The final file's temporary copy and its writer, when merging as mini-batches commit.
    live: Option<(PathBuf, FinalWriter)>,
    merge_as_committed: bool,
    finished: bool,
}

/// What the sink produced.
#[derive(Debug, Clone)]
pub struct OutputSummary {
    /// The final file.
    pub path: PathBuf,
    /// Rows written.
    pub rows: u64,
}

impl AppendRowSink {
    /// A sink writing `<output_dir>/<file_name>` in `format`. A staging folder left by an
    /// earlier, failed run of the same output is replaced.
    pub fn create(output_dir: &Path, file_name: &str, format: OutputFormat) -> Result<Self> {
        let staging = staging_dir(output_dir);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| PrsError::io(&staging, e))?;
        }
        Self::open(output_dir, file_name, format, Vec::new())
    }

    /// A sink continuing an interrupted run of the same output (a resumed job): the staging
    /// folder is kept and `parts` (the committed parts the ledger names, in `parts/`) are
    /// merged into the final file with the new ones.
    pub fn reopen(
        output_dir: &Path,
        file_name: &str,
        format: OutputFormat,
        parts: Vec<(MiniBatchId, PartRef)>,
    ) -> Result<Self> {
        Self::open(output_dir, file_name, format, parts)
    }

    fn open(
        output_dir: &Path,
        file_name: &str,
        format: OutputFormat,
        committed: Vec<(MiniBatchId, PartRef)>,
    ) -> Result<Self> {
        let staging = staging_dir(output_dir);
        let parts_dir = staging.join("parts");
        fs::create_dir_all(&parts_dir).map_err(|e| PrsError::io(&parts_dir, e))?;
        let mut rows = 0;
        let mut resumed = HashSet::with_capacity(committed.len());
        let mut parts = Vec::with_capacity(committed.len());
        for (id, part) in committed {
            rows += part.rows;
            resumed.insert(id);
            parts.push(Part {
                id,
                path: parts_dir.join(&part.file),
                rows: part.rows,
            });
        }
        Ok(AppendRowSink {
            final_path: output_dir.join(format.append_row_file_name(file_name)),
            staging,
            format,
            parts,
            resumed,
            rows,
            live: None,
            merge_as_committed: false,
            finished: false,
        })
    }

    /// Also appends each committed mini-batch to the final file's temporary copy right away,
    /// so `finish` only renames it (completion order only; `preserve_order` merges at the end).
    /// The parts are still written: they are the record of what was committed.
    pub fn merge_as_committed(mut self, on: bool) -> Self {
        self.merge_as_committed = on;
        self
    }

    fn temp_final_path(&self) -> PathBuf {
        let name = self
            .final_path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.final_path.with_file_name(format!(".{name}.tmp"))
    }

    /// The folder holding the committed parts.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The final file (once [`AppendRowSink::finish`] succeeded).
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Commits a succeeded mini-batch: its part file appears complete or not at all. Returns
    /// the part (`None` when the mini-batch has no results to keep).
    pub fn commit(&mut self, done: &CompletedMiniBatch) -> Result<Option<PartRef>> {
        let Some(batch) = &done.result else {
            return Ok(None);
        };
        // Refused here, at the first mini-batch, rather than after every mini-batch has run.
        check_text_columns(batch, self.format, &self.final_path, &done.id)?;
        let name = format!("{}.arrow", done.id);
        let path = self.staging.join("parts").join(&name);
        let tmp = self.staging.join("parts").join(format!(".{name}.tmp"));
        let bytes = write_ipc(&tmp, batch)?;
        fs::rename(&tmp, &path).map_err(|e| PrsError::io(&path, e))?;
        // Text lines arrive pre-formatted, several per value: count what run() returned.
        let rows = match ResultShape::of(batch) {
            ResultShape::Lines => done.returned,
            _ => batch.num_rows() as u64,
        };
        self.rows += rows;
        if self.resumed.remove(&done.id) {
            // Run again (a forced resume found its input slice changed): the new part
            // replaced the old one under the same name.
            if let Some(old) = self.parts.iter().position(|p| p.id == done.id) {
                self.rows -= self.parts.remove(old).rows;
            }
        }
        self.parts.push(Part {
            id: done.id,
            path,
            rows,
        });
        if self.merge_as_committed {
            if self.live.is_none() {
                let tmp = self.temp_final_path();
                let file = File::create(&tmp).map_err(|e| PrsError::io(&tmp, e))?;
                let writer = FinalWriter::new(self.format, BufWriter::with_capacity(1 << 20, file));
                self.live = Some((tmp, writer));
            }
            if let Some((_, writer)) = self.live.as_mut() {
                writer.write(batch, &done.id)?;
            }
        }
        Ok(Some(PartRef {
            file: name,
            bytes,
            rows,
        }))
    }

    /// Drops the parts of earlier runs whose mini-batch `keep` refuses (a forced resume: the
    /// mini-batches the new cut no longer has).
    pub fn retain_resumed(&mut self, keep: impl Fn(&MiniBatchId) -> bool) {
        let resumed = &self.resumed;
        let mut dropped = 0;
        self.parts.retain(|p| {
            let kept = !resumed.contains(&p.id) || keep(&p.id);
            if !kept {
                dropped += p.rows;
            }
            kept
        });
        self.rows -= dropped;
    }

    /// The committed parts in mini-batch id order (Arrow IPC files, one per mini-batch), for
    /// a reader that wants the results in order without a final file (SQL's
    /// `preserve_order`); [`AppendRowSink::discard`] removes them when it is done.
    pub fn parts_in_order(&mut self) -> Vec<PathBuf> {
        self.parts.sort_by_key(|p| p.id);
        self.parts.iter().map(|p| p.path.clone()).collect()
    }

    /// Removes the staging folder without writing a final file.
    pub fn discard(mut self) {
        self.live = None;
        let _ = fs::remove_file(self.temp_final_path());
        self.finished = true;
        if let Err(e) = fs::remove_dir_all(&self.staging) {
            tracing::warn!("removing {} failed: {e}", self.staging.display());
        }
        // The work folder too, when nothing else is in it.
        if let Some(work) = self.staging.parent() {
            let _ = fs::remove_dir(work);
        }
    }

    /// Merges the parts into the final file (in completion order, or id order when
    /// `preserve_order`), makes it visible atomically and removes the staging folder, unless
    /// `keep_parts` (some mini-batch failed: `--rerun-failed` rebuilds the output from them).
    pub fn finish(mut self, preserve_order: bool, keep_parts: bool) -> Result<OutputSummary> {
        let tmp = self.temp_final_path();
        match self.live.take() {
            Some((tmp, writer)) if !preserve_order => writer.close(&tmp)?,
            live => {
                drop(live);
                if preserve_order {
                    self.parts.sort_by_key(|p| p.id);
                }
                let file = File::create(&tmp).map_err(|e| PrsError::io(&tmp, e))?;
                let mut writer =
                    FinalWriter::new(self.format, BufWriter::with_capacity(1 << 20, file));
                for part in &self.parts {
                    let reader = File::open(&part.path).map_err(|e| PrsError::io(&part.path, e))?;
                    let reader = FileReader::try_new(reader, None)?;
                    for batch in reader {
                        writer.write(&batch?, &part.id)?;
                    }
                }
                writer.close(&tmp)?;
            }
        }
        fs::rename(&tmp, &self.final_path).map_err(|e| PrsError::io(&self.final_path, e))?;
        self.finished = true;
        // The output is complete: a staging folder left behind costs disk, not correctness.
        if !keep_parts {
            if let Err(e) = fs::remove_dir_all(&self.staging) {
                tracing::warn!("removing {} failed: {e}", self.staging.display());
            }
        }
        Ok(OutputSummary {
            path: self.final_path.clone(),
            rows: self.rows,
        })
    }
}

/// An [`AppendRowSink`] shared by the operator's partitions (the operator commits each
/// succeeded mini-batch to it, see [`MiniBatchSink`]). It is created at the first commit
/// unless [`StagedSink::open`] created it before (a job does, so that a folder it cannot write
/// fails before any worker runs); nothing touches the disk before that (EXPLAIN).
pub struct StagedSink {
    output_dir: PathBuf,
    file_name: String,
    format: OutputFormat,
    merge_as_committed: bool,
    transient: bool,
    /// A resumed run: the parts committed before, merged with the new ones.
    resumed: Mutex<Option<Vec<(MiniBatchId, PartRef)>>>,
    sink: Mutex<Option<AppendRowSink>>,
}

impl std::fmt::Debug for StagedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedSink")
            .field("output_dir", &self.output_dir)
            .field("format", &self.format)
            .finish()
    }
}

impl StagedSink {
    /// A sink for `<output_dir>/<file_name>` in `format` (see [`AppendRowSink::create`] and
    /// [`AppendRowSink::merge_as_committed`]).
    pub fn new(
        output_dir: &Path,
        file_name: &str,
        format: OutputFormat,
        merge_as_committed: bool,
    ) -> Self {
        StagedSink {
            output_dir: output_dir.to_path_buf(),
            file_name: file_name.to_string(),
            format,
            merge_as_committed,
            transient: false,
            resumed: Mutex::new(None),
            sink: Mutex::new(None),
        }
    }

    /// The same sink continuing a resumed run: the staging folder is kept and `parts` (the
    /// committed parts of the earlier runs) are merged into the final file with the new ones,
    /// at the end (in id order with `preserve_order`).
    pub fn resuming(self, parts: Vec<(MiniBatchId, PartRef)>) -> Self {
        self.resume_with(parts);
        self
    }

    /// [`StagedSink::resuming`] on a shared sink, before its first commit.
    pub fn resume_with(&self, parts: Vec<(MiniBatchId, PartRef)>) {
        *lock(&self.resumed) = Some(parts);
    }

    /// Parts only held until they are read back (SQL's `preserve_order`): whatever is still
    /// staged when the sink is dropped (a failed or abandoned query) is removed.
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Creates the staging folder now.
    pub fn open(&self) -> Result<()> {
        let mut slot = lock(&self.sink);
        if slot.is_none() {
            *slot = Some(self.create()?);
        }
        Ok(())
    }

    fn create(&self) -> Result<AppendRowSink> {
        match lock(&self.resumed).take() {
            // The parts of earlier runs are merged at the end, with the new ones.
            Some(parts) => {
                AppendRowSink::reopen(&self.output_dir, &self.file_name, self.format, parts)
            }
            None => Ok(
                AppendRowSink::create(&self.output_dir, &self.file_name, self.format)?
                    .merge_as_committed(self.merge_as_committed),
            ),
        }
    }

    /// Commits `done`'s results (see [`AppendRowSink::commit`]) and returns its part.
    pub fn commit_part(&self, done: &CompletedMiniBatch) -> Result<Option<PartRef>> {
        let mut slot = lock(&self.sink);
        if slot.is_none() {
            *slot = Some(self.create()?);
        }
        match slot.as_mut() {
            Some(sink) => sink.commit(done),
            None => Ok(None),
        }
    }

    /// See [`AppendRowSink::retain_resumed`].
    pub fn retain_resumed(&self, keep: impl Fn(&MiniBatchId) -> bool) {
        if let Some(sink) = lock(&self.sink).as_mut() {
            sink.retain_resumed(keep);
        }
    }

    /// The sink with everything committed so far (`None` when nothing was committed and it
    /// was never opened); later commits start a new one.
    pub fn take(&self) -> Option<AppendRowSink> {
        lock(&self.sink).take()
    }
}

impl Drop for StagedSink {
    fn drop(&mut self) {
        if self.transient {
            if let Some(sink) = self.take() {
                sink.discard();
            }
        }
    }
}

impl MiniBatchSink for StagedSink {
    fn commit(&self, done: &CompletedMiniBatch) -> Result<()> {
        self.commit_part(done).map(|_| ())
    }
}

impl Drop for AppendRowSink {
    /// A sink dropped before `finish` (the job failed) leaves no final file behind, not even
    /// the temporary copy; the committed parts stay in the staging folder.
    fn drop(&mut self) {
        if !self.finished {
            self.live = None;
            let _ = fs::remove_file(self.temp_final_path());
        }
    }
}

/// Writes `batch` as an Arrow IPC file; returns its size in bytes.
fn write_ipc(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let file = File::create(path).map_err(|e| PrsError::io(path, e))?;
    let mut writer = FileWriter::try_new(BufWriter::new(file), batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    let mut inner = writer.into_inner()?;
    inner.flush().map_err(|e| PrsError::io(path, e))?;
    let file = inner.get_ref();
    let bytes = file.metadata().map_err(|e| PrsError::io(path, e))?.len();
    Ok(bytes)
}

/// Writes result batches in the output format.
enum FinalWriter {
    Txt(BufWriter<File>),
    Csv {
        out: Option<BufWriter<File>>,
        writer: Option<arrow::csv::Writer<BufWriter<File>>>,
        schema: Option<SchemaRef>,
    },
    Parquet {
        out: Option<BufWriter<File>>,
        writer: Option<ArrowWriter<BufWriter<File>>>,
        schema: Option<SchemaRef>,
    },
}

impl FinalWriter {
    fn new(format: OutputFormat, out: BufWriter<File>) -> Self {
        match format {
            OutputFormat::Txt => FinalWriter::Txt(out),
            OutputFormat::Csv => FinalWriter::Csv {
                out: Some(out),
                writer: None,
                schema: None,
            },
            OutputFormat::Parquet => FinalWriter::Parquet {
                out: Some(out),
                writer: None,
                schema: None,
            },
        }
    }

    fn write(&mut self, batch: &RecordBatch, id: &MiniBatchId) -> Result<()> {
        match self {
            FinalWriter::Txt(out) => write_txt(out, batch).map_err(|e| PrsError::Output {
                path: "append_row file".into(),
                message: format!("writing the rows of mini batch {id}: {e}"),
            }),
            FinalWriter::Csv {
                out,
                writer,
                schema,
            } => {
                let target = schema
                    .get_or_insert_with(|| output_schema(batch.schema_ref()))
                    .clone();
                let batch = nested_as_json(&conform(batch.clone(), &target, &id.to_string())?)
                    .map_err(|e| PrsError::Output {
                        path: "append_row file".into(),
                        message: format!("writing the rows of mini batch {id}: {e}"),
                    })?;
                if writer.is_none() {
                    let file = out.take().ok_or_else(closed)?;
                    *writer = Some(
                        arrow::csv::WriterBuilder::new()
                            .with_header(true)
                            .build(file),
                    );
                }
                writer.as_mut().ok_or_else(closed)?.write(&batch)?;
                Ok(())
            }
            FinalWriter::Parquet {
                out,
                writer,
                schema,
            } => {
                let target = schema
                    .get_or_insert_with(|| output_schema(batch.schema_ref()))
                    .clone();
                let batch = conform(batch.clone(), &target, &id.to_string())?;
                if writer.is_none() {
                    let file = out.take().ok_or_else(closed)?;
                    let properties = parquet_properties(&target);
                    *writer = Some(
                        ArrowWriter::try_new(file, target, Some(properties))
                            .map_err(parquet_err)?,
                    );
                }
                writer
                    .as_mut()
                    .ok_or_else(closed)?
                    .write(&batch)
                    .map_err(parquet_err)?;
                Ok(())
            }
        }
    }

    fn close(self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| PrsError::io(path, e);
        match self {
            FinalWriter::Txt(mut out) => out.flush().map_err(io),
            FinalWriter::Csv { out, writer, .. } => {
                if let Some(w) = writer {
                    w.into_inner().flush().map_err(io)?;
                } else if let Some(mut out) = out {
                    out.flush().map_err(io)?;
                }
                Ok(())
            }
            FinalWriter::Parquet { out, writer, .. } => {
                match writer {
                    Some(w) => {
                        w.close().map_err(parquet_err)?;
                    }
                    // No rows at all: still a valid (empty) Parquet file.
                    None => {
                        if let Some(out) = out {
                            ArrowWriter::try_new(out, Arc::new(Schema::empty()), None)
                                .and_then(|w| w.close().map(|_| ()))
                                .map_err(parquet_err)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Row groups of 128Ki rows: the writer buffers one row group, so this bounds its memory
/// whatever the size of the output. No dictionary encoding for floating-point and 64-bit
/// integer columns (scores, ids, timestamps): their values rarely repeat, so the writer would
/// hash every value into a dictionary only to fall back to plain encoding, and that hashing
/// was a tenth of the engine's CPU time in the 2M-row score job. Strings, booleans and small
/// integers (labels, classes) keep it.
fn parquet_properties(schema: &Schema) -> parquet::file::properties::WriterProperties {
    let mut builder = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(128 * 1024));
    for field in schema.fields() {
        let unique_values = matches!(
            field.data_type(),
            DataType::Float16
                | DataType::Float32
                | DataType::Float64
                | DataType::Int64
                | DataType::UInt64
                | DataType::Timestamp(..)
                | DataType::Date64
        );
        if unique_values {
            builder = builder.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from(field.name().as_str()),
                false,
            );
        }
    }
    builder.build()
}

fn closed() -> PrsError {
    PrsError::Output {
        path: "append_row file".into(),
        message: "writer already closed".into(),
    }
}

fn parquet_err(e: parquet::errors::ParquetError) -> PrsError {
    PrsError::Output {
        path: "append_row file".into(),
        message: e.to_string(),
    }
}

/// The schema written to csv/parquet: the first result's columns, nullable, without our
/// metadata.
fn output_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let mut metadata = schema.metadata().clone();
    metadata.remove(RESULT_SHAPE_KEY);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// PRS's text format: list elements one per line (`str(x)`), table rows space-separated with
/// no header and CSV quoting, pre-formatted lines verbatim.
fn write_txt(out: &mut BufWriter<File>, batch: &RecordBatch) -> std::result::Result<(), String> {
    match ResultShape::of(batch) {
        ResultShape::Lines => {
            let col = batch.column(0);
            match col.data_type() {
                DataType::Utf8 => write_strings(out, col.as_string::<i32>().iter()),
                DataType::LargeUtf8 => write_strings(out, col.as_string::<i64>().iter()),
                DataType::Utf8View => write_strings(out, col.as_string_view().iter()),
                other => Err(format!("text lines must be strings, got {other}")),
            }
        }
        ResultShape::List => {
            let col = batch.column(0);
            let options = FormatOptions::default().with_null("None");
            let formatter =
                ArrayFormatter::try_new(col.as_ref(), &options).map_err(|e| e.to_string())?;
            for i in 0..col.len() {
                writeln!(out, "{}", formatter.value(i)).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        ResultShape::Table => {
            let batch = nested_as_json(batch).map_err(|e| e.to_string())?;
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .with_delimiter(b' ')
                .build(&mut *out);
            writer.write(&batch).map_err(|e| e.to_string())
        }
    }
}

fn write_strings<'a>(
    out: &mut BufWriter<File>,
    values: impl Iterator<Item = Option<&'a str>>,
) -> std::result::Result<(), String> {
    for v in values.flatten() {
        out.write_all(v.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Does `format` write `batch` through arrow's CSV writer (`csv`, and `txt` tables)?
fn written_as_text(batch: &RecordBatch, format: OutputFormat) -> bool {
    match format {
        OutputFormat::Csv => true,
        OutputFormat::Txt => ResultShape::of(batch) == ResultShape::Table,
        OutputFormat::Parquet => false,
    }
}

/// Refuses a result with a nested column that cannot be written as JSON text (e.g. a union)
/// in a text format, naming the column and the mini-batch.
fn check_text_columns(
    batch: &RecordBatch,
    format: OutputFormat,
    final_path: &Path,
    id: &MiniBatchId,
) -> Result<()> {
    if !written_as_text(batch, format) {
        return Ok(());
    }
    let options = json_options();
    for (field, column) in batch.schema_ref().fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            continue;
        }
        if let Err(e) = make_encoder(field, column.as_ref(), &options) {
            return Err(PrsError::Output {
                path: final_path.display().to_string(),
                message: format!(
                    "column {:?} of mini batch {id} has type {}, which cannot be written as text ({e}); \
                     use output_format: parquet, or return a column of a simpler type from run()",
                    field.name(),
                    field.data_type()
                ),
            });
        }
    }
    Ok(())
}

fn json_options() -> EncoderOptions {
    EncoderOptions::default().with_explicit_nulls(true)
}

/// `batch` with every nested column (list, struct, map) replaced by a text column holding each
/// value as JSON (`[1,2]`, `{"a":1,"b":null}`); a null value stays null. Other columns are
/// kept as they are. CSV has no nested values, and JSON is what readers can parse back.
fn nested_as_json(
    batch: &RecordBatch,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema_ref();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let options = json_options();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let mut encoder = make_encoder(field, column.as_ref(), &options)?;
        let mut text = StringBuilder::with_capacity(column.len(), column.len() * 16);
        let mut buffer = Vec::new();
        for i in 0..column.len() {
            if encoder.is_null(i) {
                text.append_null();
                continue;
            }
            buffer.clear();
            encoder.encode(i, &mut buffer);
            let value = std::str::from_utf8(&buffer).map_err(|e| {
                arrow::error::ArrowError::JsonError(format!("column {:?}: {e}", field.name()))
            })?;
            text.append_value(value);
        }
        fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
        columns.push(Arc::new(text.finish()) as ArrayRef);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_the_work_folder_only_and_never_under_a_running_job() {
        let d = tempfile::tempdir().unwrap();
        let parts = d.path().join(WORK_DIR_NAME).join("staging/parts");
        fs::create_dir_all(&parts).unwrap();
        fs::write(parts.join("0-1.arrow"), "x").unwrap();
        fs::create_dir_all(d.path().join("logs")).unwrap();
        fs::write(d.path().join("logs/job_summary.json"), "{}").unwrap();
        fs::write(d.path().join("parallel_run_step.txt"), "1\n").unwrap();
        let running = OutputLock::acquire(d.path()).unwrap();
        let e = clean_output_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("another parallel-run run"), "{e}");
        assert!(parts.join("0-1.arrow").exists());
        drop(running);
        let removed = clean_output_dir(d.path()).unwrap();
        assert_eq!(removed, [d.path().join(WORK_DIR_NAME)]);
        assert!(d.path().join("logs/job_summary.json").exists());
        assert!(d.path().join("parallel_run_step.txt").exists());
        assert!(
            clean_output_dir(d.path()).unwrap().is_empty(),
            "nothing left"
        );
        assert!(clean_output_dir(&d.path().join("nope")).is_err());
    }

    #[test]
    fn one_run_at_a_time_holds_an_output_folder() {
        let d = tempfile::tempdir().unwrap();
        let first = OutputLock::acquire(d.path()).unwrap();
        let lock_file = d.path().join(LOCK_FILE_NAME);
        assert_eq!(
            fs::read_to_string(&lock_file).unwrap(),
            std::process::id().to_string()
        );
        let e = OutputLock::acquire(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("another parallel-run run")
                && e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(first);
        assert!(!lock_file.exists(), "removed with the hold");
        // A lock file left by a run that died holds nothing: the next run takes it.
        fs::write(&lock_file, "999999").unwrap();
        let again = OutputLock::acquire(d.path()).unwrap();
        drop(again);
    }
    use arrow::array::{Int32Array, ListArray, StructArray, UnionArray};
    use arrow::buffer::ScalarBuffer;
    use arrow::datatypes::{Int32Type, UnionFields};

    #[test]
    fn nested_values_become_json_text_and_nulls_stay_null() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
            Some(vec![None]),
        ]);
        let point = StructArray::from(vec![
            (
                Arc::new(Field::new("x", DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("y", DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![4, 5, 6])) as ArrayRef,
            ),
        ]);
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int32Array::from(vec![7, 8, 9])) as ArrayRef),
            ("values", Arc::new(list) as ArrayRef),
            ("point", Arc::new(point) as ArrayRef),
        ])
        .unwrap();
        let text = nested_as_json(&batch).unwrap();
        assert_eq!(text.schema().field(0).data_type(), &DataType::Int32);
        let values = text.column(1).as_string::<i32>();
        assert_eq!(values.value(0), "[1,2]");
        assert!(values.is_null(1), "a null list stays an empty cell");
        assert_eq!(values.value(2), "[null]");
        let points = text.column(2).as_string::<i32>();
        assert_eq!(points.value(0), r#"{"x":1,"y":4}"#);
        assert_eq!(points.value(1), r#"{"x":null,"y":5}"#);
    }

    #[test]
    fn a_column_json_cannot_hold_is_refused_at_commit_naming_it() {
        let fields =
            UnionFields::try_new(vec![0], vec![Field::new("a", DataType::Int32, true)]).unwrap();
        let union = UnionArray::try_new(
            fields,
            ScalarBuffer::from(vec![0i8, 0]),
            None,
            vec![Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef],
        )
        .unwrap();
        let batch =
            RecordBatch::try_from_iter(vec![("choice", Arc::new(union) as ArrayRef)]).unwrap();
        let id = MiniBatchId::new(0, 3);
        let out = Path::new("out/parallel_run_step.csv");
        let e = check_text_columns(&batch, OutputFormat::Csv, out, &id)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"choice\"") && e.contains("0-3") && e.contains("output_format: parquet"),
            "{e}"
        );
        assert!(check_text_columns(&batch, OutputFormat::Parquet, out, &id).is_ok());
    }
}
