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

mod failed_rows;
mod folder;
mod format;

pub use failed_rows::{FailedRowsWriter, FAILED_ROWS_DIR};
pub use folder::{
    clean_output_dir, earlier_results, lock_holder, prepare_output_dir, OutputLock, LOCK_FILE_NAME,
};
use format::{check_text_columns, FinalWriter};

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

use crate::batch::MiniBatchId;
use crate::config::OutputFormat;
use crate::error::{PrsError, Result};
use crate::exec::{CompletedMiniBatch, MiniBatchSink};
use crate::lock;
use crate::worker::ResultShape;

/// The folder of a run's own working files below the output folder (committed parts,
/// worker folders, the Python bootstrap, download caches): removed when the job succeeds.
pub const WORK_DIR_NAME: &str = ".parallel_run";

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

#[cfg(test)]
mod tests {
    use super::format::nested_as_json;
    use super::*;
    use arrow::array::{Array, ArrayRef, AsArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

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
