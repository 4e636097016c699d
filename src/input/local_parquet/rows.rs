//! Rows of a local Parquet input by position: where a run of rows is ([`RowLocator`],
//! [`RowsInFiles`]), the mini-batch boundaries and fingerprints the footers give
//! ([`footer_cut`], [`footer_fingerprint`]), and reading exactly those rows again, on a cluster
//! executor ([`RowsReader`], [`read_rows`]).

use super::*;

/// Rows `rows` of a local Parquet input and the files holding them: what a cluster executor
/// reads for a table mini-batch ([`read_rows`]) instead of receiving its rows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowsInFiles {
    /// The input's rows `[start, end)`.
    pub rows: Range<u64>,
    /// The files holding them, in order.
    pub files: Vec<FileRows>,
}

/// One file of [`RowsInFiles`]: where its rows start in the input, and what it was when the
/// driver cut the job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRows {
    /// Its path (absolute: the same on every node).
    pub path: PathBuf,
    /// The input row its first row is.
    pub first_row: u64,
    /// Its rows.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its modification time, in nanoseconds since the epoch (0 when unknown).
    pub modified_ns: u64,
}

/// Finds the files holding a run of rows of a [`LocalParquetExec`]'s input.
#[derive(Debug, Clone)]
pub struct RowLocator {
    files: Arc<Vec<ParquetFile>>,
    /// The input row each file's first row is.
    starts: Arc<Vec<u64>>,
}

impl RowLocator {
    pub(crate) fn new(files: Arc<Vec<ParquetFile>>) -> Self {
        let mut at = 0u64;
        let starts = files
            .iter()
            .map(|f| {
                let start = at;
                at += f.rows;
                start
            })
            .collect();
        RowLocator {
            files,
            starts: Arc::new(starts),
        }
    }

    /// The input's rows (all files, from their footers).
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// The files holding the input's rows `rows`.
    pub fn locate(&self, rows: Range<u64>) -> RowsInFiles {
        // The first file ending after rows.start.
        let first = self
            .starts
            .partition_point(|&start| start <= rows.start)
            .saturating_sub(1);
        let mut files = Vec::new();
        for (file, &first_row) in self.files.iter().zip(self.starts.iter()).skip(first) {
            if first_row >= rows.end {
                break;
            }
            let end = first_row + file.rows;
            if rows.start < end {
                files.push(FileRows {
                    path: file.path.clone(),
                    first_row,
                    rows: file.rows,
                    bytes: file.bytes,
                    modified_ns: file.modified_ns,
                });
            }
        }
        RowsInFiles { rows, files }
    }
}

/// The row ranges of the mini-batches of `files` (read with the columns of `schema`) of
/// about `target_bytes` each, from the footers alone.
///
/// Each row group's rows are taken to be of equal size: the uncompressed size of the group's
/// chunks of the columns read (the footer's figure, for a column the file lacks 0) divided
/// by its rows. The rows are walked in input order (files in path order, their groups in
/// order) as [`crate::batch::ByteChunker`] walks record batches: a mini-batch ends as soon
/// as its estimated bytes reach `target_bytes` (at least one row each; a mini-batch may span
/// row groups and files), the last one is what is left. Integer arithmetic only, so the
/// boundaries depend on the files and the columns read alone: not on the batch size, the
/// workers or the nodes.
pub fn footer_cut(files: &[ParquetFile], schema: &Schema, target_bytes: u64) -> Vec<Range<u64>> {
    let target = u128::from(target_bytes.max(1));
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut pos = 0u64;
    let mut pending: u128 = 0;
    for file in files {
        let group_rows: u64 = file.groups.iter().map(|g| g.rows).sum();
        // A footer whose groups do not add up to its rows: one group of all the rows.
        let whole;
        let groups: &[RowGroupSize] = if group_rows == file.rows {
            &file.groups
        } else {
            whole = [RowGroupSize {
                rows: file.rows,
                column_bytes: file
                    .groups
                    .iter()
                    .flat_map(|g| g.column_bytes.iter().cloned())
                    .collect(),
            }];
            &whole
        };
        for group in groups {
            let rows = u128::from(group.rows);
            if rows == 0 {
                continue;
            }
            let bytes: u64 = schema
                .fields()
                .iter()
                .map(|f| {
                    group
                        .column_bytes
                        .iter()
                        .filter(|(name, _)| name == f.name())
                        .map(|(_, b)| *b)
                        .sum::<u64>()
                })
                .sum();
            let bytes = u128::from(bytes.max(1));
            let mut offset: u128 = 0;
            while offset < rows {
                let room = target.saturating_sub(pending);
                // The rows that fill the room (at least one), at bytes/rows each.
                let take = (room * rows).div_ceil(bytes).clamp(1, rows - offset);
                pending += (take * bytes + rows / 2) / rows;
                offset += take;
                pos += take as u64;
                if pending >= target {
                    out.push(start..pos);
                    start = pos;
                    pending = 0;
                }
            }
        }
    }
    if pos > start {
        out.push(start..pos);
    }
    out
}

/// The fingerprint of mini-batch `id` of a local Parquet input cut from the footers: its id,
/// row range and item count, the identity of the files it spans (`read`: path, first row,
/// rows, size and modification time) and the columns read (`schema`). Needs no data, so the
/// driver of a cluster job and a local run compute the same one; it never equals a
/// fingerprint of the rows' values ([`crate::batch::slice_fingerprint`]), which the
/// mini-batches of earlier versions have.
pub fn footer_fingerprint(id: MiniBatchId, read: &RowsInFiles, schema: &Schema) -> u64 {
    let mut hash = descriptor_hash(b"parquet-footer-cut/1", id, &read.rows, schema);
    for file in &read.files {
        hash.update(file.path.to_string_lossy().as_bytes());
        hash.update([0x1f]);
        hash.update(file.first_row.to_le_bytes());
        hash.update(file.rows.to_le_bytes());
        hash.update(file.bytes.to_le_bytes());
        hash.update(file.modified_ns.to_le_bytes());
    }
    descriptor_digest(hash)
}

/// The start of the fingerprint of a mini-batch cut as a descriptor (no data): the cut's
/// `tag` (its kind and version), the id, the row range and count, and the columns read
/// (names and types). The caller adds the descriptor's files, then [`descriptor_digest`].
pub(crate) fn descriptor_hash(
    tag: &[u8],
    id: MiniBatchId,
    rows: &Range<u64>,
    schema: &Schema,
) -> Sha256 {
    let mut hash = Sha256::new();
    hash.update(tag);
    hash.update(id.to_string().as_bytes());
    hash.update(rows.start.to_le_bytes());
    hash.update(rows.end.to_le_bytes());
    hash.update(rows.end.saturating_sub(rows.start).to_le_bytes());
    for field in schema.fields() {
        hash.update(field.name().as_bytes());
        hash.update([0x1f]);
        hash.update(field.data_type().to_string().as_bytes());
        hash.update([0x1e]);
    }
    hash
}

/// The fingerprint a [`descriptor_hash`] ends in.
pub(crate) fn descriptor_digest(hash: Sha256) -> u64 {
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Reads exactly the rows `what` describes, as one batch of `schema` (the columns the input
/// reads), checking that every file is still the one the driver listed.
pub fn read_rows(what: &RowsInFiles, schema: &SchemaRef) -> DFResult<RecordBatch> {
    RowsReader::new(schema.clone(), std::slice::from_ref(what)).read(what)
}

/// Reads the rows of a sequence of [`RowsInFiles`] (a cluster task's mini-batches, in row
/// order) in one forward pass over each file.
///
/// Reading every mini-batch on its own would open its files again and decode their
/// dictionary pages and the pages around its rows each time: with small mini-batches in big
/// row groups, that costs many times the rows themselves. Here a file is opened once, with a
/// row selection of every row the task reads in it, so each page is decoded at most once and
/// the pages between the task's rows are skipped. Reading out of order still works (the file
/// is opened again at the rows asked for).
pub struct RowsReader {
    schema: SchemaRef,
    /// For each file, the file rows the task reads in it (sorted, disjoint).
    wanted: HashMap<PathBuf, Vec<Range<u64>>>,
    /// Rows per decoded batch: the largest mini-batch's rows, at most 64 Ki.
    batch_rows: usize,
    open: Option<OpenFile>,
}

/// A file a [`RowsReader`] reads forward.
struct OpenFile {
    path: PathBuf,
    batches: FileBatches,
    /// The file rows the reader yields next, in order: what is left of its selection.
    ahead: VecDeque<Range<u64>>,
    /// Rows decoded but not yet taken.
    pending: Option<RecordBatch>,
}

impl RowsReader {
    /// A reader of the rows of `reads` (the mini-batches it will be asked for, in order), as
    /// batches of `schema`.
    pub fn new(schema: SchemaRef, reads: &[RowsInFiles]) -> Self {
        let mut wanted: HashMap<PathBuf, Vec<Range<u64>>> = HashMap::new();
        let mut batch_rows = 1u64;
        for what in reads {
            batch_rows = batch_rows.max(what.rows.end.saturating_sub(what.rows.start));
            for file in &what.files {
                let rows = rows_in_file(what, file);
                if !rows.is_empty() {
                    wanted.entry(file.path.clone()).or_default().push(rows);
                }
            }
        }
        for ranges in wanted.values_mut() {
            ranges.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
            for r in ranges.drain(..) {
                match merged.last_mut() {
                    Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            *ranges = merged;
        }
        RowsReader {
            schema,
            wanted,
            batch_rows: batch_rows.min(64 * 1024) as usize,
            open: None,
        }
    }

    /// The rows `what` describes, as one batch, checking that every file is still the one
    /// the driver listed.
    pub fn read(&mut self, what: &RowsInFiles) -> DFResult<RecordBatch> {
        let mut pieces = Vec::new();
        for file in &what.files {
            let rows = rows_in_file(what, file);
            if rows.is_empty() {
                continue;
            }
            let open = match self.open.take() {
                Some(open) if open.path == file.path && open.next_row() == Some(rows.start) => open,
                _ => self.open_at(file, rows.clone())?,
            };
            let open = self.open.insert(open);
            open.take(rows.end - rows.start, &mut pieces)?;
        }
        crate::batch::compact_concat(&self.schema, &pieces)
            .map_err(|e| DataFusionError::Execution(format!("joining the rows read: {e}")))
    }

    /// `file`, checked, opened to read `rows` and then the task's rows after them.
    fn open_at(&self, file: &FileRows, rows: Range<u64>) -> DFResult<OpenFile> {
        check_unchanged(file)?;
        let mut ahead: VecDeque<Range<u64>> = self
            .wanted
            .get(&file.path)
            .into_iter()
            .flatten()
            .filter(|r| r.end > rows.start)
            .map(|r| r.start.max(rows.start)..r.end)
            .collect();
        if !ahead
            .front()
            .is_some_and(|r| r.start == rows.start && r.end >= rows.end)
        {
            // Rows the reader was not told about: read just them.
            ahead = VecDeque::from([rows]);
        }
        let mut omitted = Vec::new();
        let mut at = 0u64;
        for r in &ahead {
            if r.start > at {
                omitted.push(at..r.start);
            }
            at = r.end;
        }
        if at < file.rows {
            omitted.push(at..file.rows);
        }
        let batches = file_reader(&file.path, &self.schema, self.batch_rows, &omitted)?
            .unwrap_or_else(|| Box::new(std::iter::empty()));
        Ok(OpenFile {
            path: file.path.clone(),
            batches,
            ahead,
            pending: None,
        })
    }
}

impl OpenFile {
    /// The file row the reader yields next.
    fn next_row(&self) -> Option<u64> {
        self.ahead.front().map(|r| r.start)
    }

    /// Takes the next `rows` rows into `pieces`.
    fn take(&mut self, mut rows: u64, pieces: &mut Vec<RecordBatch>) -> DFResult<()> {
        while rows > 0 {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.batches.next() {
                    Some(batch) => batch?,
                    None => {
                        return Err(DataFusionError::Execution(format!(
                            "{} ended {rows} rows before the rows the driver listed in it: \
                             inputs must not change while a job runs",
                            self.path.display()
                        )))
                    }
                },
            };
            let n = batch.num_rows() as u64;
            let used = n.min(rows);
            pieces.push(batch.slice(0, used as usize));
            if used < n {
                self.pending = Some(batch.slice(used as usize, (n - used) as usize));
            }
            rows -= used;
            self.advance(used);
        }
        Ok(())
    }

    fn advance(&mut self, mut rows: u64) {
        while rows > 0 {
            let Some(front) = self.ahead.front_mut() else {
                return;
            };
            let len = front.end - front.start;
            if len <= rows {
                self.ahead.pop_front();
                rows -= len;
            } else {
                front.start += rows;
                rows = 0;
            }
        }
    }
}

/// The rows of `what` in `file`, counted from the file's first row.
fn rows_in_file(what: &RowsInFiles, file: &FileRows) -> Range<u64> {
    let from = what.rows.start.max(file.first_row) - file.first_row;
    let to = what
        .rows
        .end
        .min(file.first_row + file.rows)
        .saturating_sub(file.first_row);
    from..to.max(from)
}

/// Fails when `file` is not the one the driver listed (size or modification time differ).
fn check_unchanged(file: &FileRows) -> DFResult<()> {
    let now = std::fs::metadata(&file.path).map_err(|e| {
        DataFusionError::Execution(format!(
            "cannot read {} on this node: {e}; an input must be reachable under the same \
             path from every node (a shared folder) or be on object storage",
            file.path.display()
        ))
    })?;
    if now.len() != file.bytes || modified_ns(&now) != file.modified_ns {
        return Err(DataFusionError::Execution(format!(
            "{} is not the file the driver cut the job from (size or modification time \
             differ on this node): inputs must not change while a job runs",
            file.path.display()
        )));
    }
    Ok(())
}

pub(super) fn modified_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ids, two_file_table, write};
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field};

    /// The row locator of `table`'s scan.
    fn locator_of(table: &LocalParquetTable) -> RowLocator {
        LocalParquetExec::new(
            "t".into(),
            table.files.clone(),
            table.schema.clone(),
            table.rows,
        )
        .locator()
    }

    #[tokio::test]
    async fn a_rows_reader_reads_a_task_s_ranges_in_one_pass_and_out_of_order() {
        let d = tempfile::tempdir().unwrap();
        let table = two_file_table(d.path()).await;
        let locator = locator_of(&table);
        let ids_of = |batch: &RecordBatch| -> Vec<i64> {
            let id = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            id.values().to_vec()
        };
        // Gaps (other tasks' rows), touching ranges, ranges across a file and a row group.
        let task = [0..10, 10..40, 250..340, 600..950, 990..1210, 1499..1500];
        let reads: Vec<RowsInFiles> = task.iter().map(|r| locator.locate(r.clone())).collect();
        let mut reader = RowsReader::new(table.schema.clone(), &reads);
        for (rows, read) in task.iter().zip(&reads) {
            let batch = reader.read(read).unwrap();
            let expected: Vec<i64> = (rows.start as i64..rows.end as i64).collect();
            assert_eq!(ids_of(&batch), expected, "{rows:?}");
        }
        // Asked out of order (a range it was not told about, one behind): still exact.
        for rows in [300..320, 5..7, 1200..1300, 20..30] {
            let batch = reader.read(&locator.locate(rows.clone())).unwrap();
            let expected: Vec<i64> = (rows.start as i64..rows.end as i64).collect();
            assert_eq!(ids_of(&batch), expected, "{rows:?}");
        }
        // A file cut short since the listing (same size and time faked away: rewritten, so
        // the check refuses it first).
        write(&d.path().join("b.parquet"), &ids(1000, 100), 100);
        let mut reader = RowsReader::new(table.schema.clone(), &reads[4..]);
        let err = reader.read(&reads[4]).unwrap_err().to_string();
        assert!(err.contains("b.parquet"), "{err}");
    }

    #[tokio::test]
    async fn read_rows_reads_a_row_range_across_files_and_refuses_a_changed_file() {
        let d = tempfile::tempdir().unwrap();
        let table = two_file_table(d.path()).await;
        let locator = locator_of(&table);
        for rows in [0..10, 250..950, 990..1210, 1499..1500, 0..1500] {
            let what = locator.locate(rows.clone());
            let batch = read_rows(&what, &table.schema).unwrap();
            let id = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let expected: Vec<i64> = (rows.start as i64..rows.end as i64).collect();
            assert_eq!(id.values().to_vec(), expected, "{rows:?}");
        }
        assert_eq!(locator.locate(990..1210).files.len(), 2);
        let what = locator.locate(1100..1200);
        assert_eq!(what.files.len(), 1);
        // Rewritten since the listing: refused, naming the file.
        write(&d.path().join("b.parquet"), &ids(5000, 500), 100);
        let err = read_rows(&what, &table.schema).unwrap_err().to_string();
        assert!(
            err.contains("b.parquet") && err.contains("not the file"),
            "{err}"
        );
    }

    fn file(rows: &[u64], bytes: &[(&str, u64)]) -> ParquetFile {
        ParquetFile {
            path: PathBuf::from("f"),
            rows: rows.iter().sum(),
            bytes: 0,
            modified_ns: 0,
            groups: rows
                .iter()
                .map(|&rows| RowGroupSize {
                    rows,
                    column_bytes: bytes
                        .iter()
                        .map(|(n, b)| (n.to_string(), b * rows))
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_footer_cut_sizes_rows_by_their_row_group_s_uncompressed_bytes() {
        let schema = |names: &[&str]| {
            Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Int64, true))
                    .collect::<Vec<_>>(),
            )
        };
        // 10 + 30 bytes a row in the first file, 40 + 0 in the second: 100 rows of 40
        // bytes a mini-batch, across row groups and files.
        let files = [
            file(&[150, 0, 120], &[("a", 10), ("b", 30)]),
            file(&[230], &[("a", 40)]),
        ];
        let cut = footer_cut(&files, &schema(&["a", "b"]), 4000);
        assert_eq!(cut, [0..100, 100..200, 200..300, 300..400, 400..500]);
        // Only column a read: 10 bytes a row in the first file (2700 bytes), then 40.
        let cut = footer_cut(&files, &schema(&["a"]), 4000);
        assert_eq!(cut, [0..303, 303..403, 403..500]);
        // A column no file has weighs nothing; a row bigger than the target is one
        // mini-batch.
        let cut = footer_cut(&files, &schema(&["a", "b", "c"]), 1);
        assert_eq!(cut.len(), 500);
        assert!(cut.iter().all(|r| r.end == r.start + 1));
        // Uneven sizes: contiguous, complete, each at least the target but the last.
        let files = [file(&[7, 13, 1], &[("a", 33)]), file(&[50], &[("a", 3)])];
        let cut = footer_cut(&files, &schema(&["a"]), 100);
        assert_eq!(cut.first().map(|r| r.start), Some(0));
        assert_eq!(cut.last().map(|r| r.end), Some(71));
        assert!(cut.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(cut[..3], [0..4, 4..8, 8..12]);
        assert!(footer_cut(&[], &schema(&["a"]), 100).is_empty());
    }
}
