//! `dead_letter_rows`: the input items of failed mini-batches, written to
//! `<output>/failed_rows/`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use parquet::arrow::ArrowWriter;

use crate::error::{PrsError, Result};
use crate::exec::CompletedMiniBatch;

/// The folder below the output folder where `dead_letter_rows` writes the input of failed
/// items.
pub const FAILED_ROWS_DIR: &str = "failed_rows";

/// Writes the input items of failed mini-batches (`dead_letter_rows`) to
/// `<output>/failed_rows/`, one file per failed mini-batch named by its id: `<ID>.parquet`
/// with every input column for a table, `<ID>.txt` with one path per line for a file dataset.
/// Each file is written under a temporary name and renamed when complete. A mini-batch that
/// now succeeds (`--rerun-failed`) has its earlier file removed. The operator writes them
/// ([`crate::exec::OperatorRuntime::with_failed_rows`]) before it commits the mini-batch.
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

    /// A writer for `<parent>/failed_rows/`, created when the first file is written (a SQL
    /// run's report folder: EXPLAIN creates nothing).
    pub fn in_folder(parent: &Path) -> Self {
        FailedRowsWriter {
            dir: parent.join(FAILED_ROWS_DIR),
        }
    }

    /// Removes the folder and what it holds (a run that starts anew).
    pub fn clear(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PrsError::io(&self.dir, e)),
            _ => Ok(()),
        }
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
        fs::create_dir_all(&self.dir).map_err(|e| PrsError::io(&self.dir, e))?;
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
