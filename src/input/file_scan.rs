//! Inputs read by DataFusion's own file scans, cut as descriptors: CSV and newline-delimited
//! JSON as byte ranges, Parquet read through a store (object storage) as row ranges.
//!
//! An input whose plan is a `DataSourceExec` over one ordered group of files (under row-wise
//! projections) is cut before its rows are decoded ([`FileScan::cut`]):
//!
//! - **CSV / JSON**: the files are read once, as bytes, in the scan's order; each record's
//!   end is found (quote-aware for CSV: a newline inside a quoted value does not end a record;
//!   blank and comment lines are not records; a CSV file's first record is its header when the
//!   scan has one). A mini-batch ends at the first record end where its records' bytes reach
//!   `mini_batch_size` (the size of the source text, as PRS measures a tabular mini-batch); it
//!   may span files. Its descriptor names, per file, the byte range of its records and their
//!   count.
//! - **Parquet**: the boundaries come from the footers (fetched with ranged reads), exactly as
//!   for local Parquet ([`crate::input::footer_cut`]); the descriptor names, per file, the rows
//!   to read.
//!
//! A local run reads the scan as a stream and slices its batches at those row boundaries; a
//! cluster executor reads only its descriptor ([`read_parts`]): the same scan, restricted to
//! the byte ranges (DataFusion aligns a range to record boundaries; ours already are) or to a
//! row selection ([`ParquetRowSelection`]), after checking each file is still the one the
//! driver listed. The fingerprint of a mini-batch ([`parts_fingerprint`]) is made of its id,
//! rows, the columns read and the identity of the file parts: no data.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{
    CsvSource, FileGroup, FileScanConfig, FileScanConfigBuilder, JsonSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt,
};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use sha2::Digest;

use crate::batch::MiniBatchId;
use crate::config::{InputSpec, StorageOptions};
use crate::error::{PrsError, Result};
use crate::input::footer_cut;
use crate::input::local_parquet::{
    descriptor_digest, descriptor_hash, group_sizes, ParquetFile, RowLocator,
};
use crate::storage::read_ahead::NotAhead;
use crate::storage::StorageContext;
use datafusion::prelude::SessionContext;

/// The options of a read that cuts an input: straight to the store, past the read-ahead (see
/// [`NotAhead`]).
fn cutting_read(range: Option<GetRange>) -> GetOptions {
    let mut options = GetOptions {
        range,
        ..Default::default()
    };
    options.extensions.insert(NotAhead);
    options
}

/// The footer of the Parquet object `meta`, read from its tail (64 KiB first, then as much as
/// it says it needs).
async fn parquet_footer(store: &dyn ObjectStore, meta: &ObjectMeta) -> DFResult<ParquetMetaData> {
    let mut suffix = (64 * 1024u64).min(meta.size);
    loop {
        let start = meta.size - suffix;
        let bytes = store
            .get_opts(
                &meta.location,
                cutting_read(Some(GetRange::Bounded(start..meta.size))),
            )
            .await?
            .bytes()
            .await?;
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&bytes, meta.size) {
            Ok(()) => return Ok(reader.finish()?),
            Err(ParquetError::NeedMoreData(needed))
                if (needed as u64) > suffix && (needed as u64) <= meta.size =>
            {
                suffix = needed as u64;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The bytes of a GET, in chunks: a local file in large reads on a blocking thread (the
/// store's own stream reads 8 KiB at a time, one blocking task each), a remote body as it
/// comes.
fn text_chunks(result: GetResult) -> BoxStream<'static, DFResult<Bytes>> {
    const READ: usize = 4 * 1024 * 1024;
    match result.payload {
        GetResultPayload::File(file, _) => futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; READ];
                let mut filled = 0;
                while filled < READ {
                    match std::io::Read::read(&mut file, &mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok((file, buf))
            })
            .await;
            match read {
                Ok(Ok((_, buf))) if buf.is_empty() => None,
                Ok(Ok((file, buf))) => Some((Ok(Bytes::from(buf)), Some(file))),
                Ok(Err(e)) => Some((Err(DataFusionError::IoError(e)), None)),
                Err(e) => Some((Err(DataFusionError::External(Box::new(e))), None)),
            }
        })
        .boxed(),
        GetResultPayload::Stream(stream) => stream.map_err(DataFusionError::from).boxed(),
    }
}

/// The rows of one mini-batch of a [`FileScan`] input and the file parts holding them: what a
/// cluster executor reads ([`read_parts`]) instead of receiving the rows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartsInFiles {
    /// The input's rows `[start, end)`.
    pub rows: Range<u64>,
    /// The store the files are in (DataFusion's object store URL: `file://`, `s3://bucket`).
    pub store: String,
    /// The parts, in order.
    pub parts: Vec<FilePart>,
}

/// One file's share of a mini-batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePart {
    /// The file's path in its store.
    pub location: String,
    /// Its size in bytes when the driver listed it.
    pub size: u64,
    /// Its modification time then, in nanoseconds since the epoch.
    pub modified_ns: u64,
    /// Its entity tag then, on object storage (the identity of its content there: an object
    /// uploaded again with the same bytes keeps it, while its modification time changes);
    /// `None` for a local file, which is known by its size and modification time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// The mini-batch's records (rows) in it.
    pub rows: u64,
    /// Where they are.
    pub range: PartRange,
}

/// Where a [`FilePart`]'s rows are in its file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartRange {
    /// Bytes `[start, end)`: whole records (CSV, JSON).
    Bytes(Range<u64>),
    /// Rows `[start, end)` of the file's `of` rows (Parquet).
    Rows {
        /// The rows.
        rows: Range<u64>,
        /// The file's rows.
        of: u64,
    },
}

/// How a scan's files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Csv(CsvSyntax),
    Json,
    Parquet,
}

/// What finding a CSV file's records needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CsvSyntax {
    header: bool,
    quote: u8,
    escape: Option<u8>,
    terminator: u8,
    comment: Option<u8>,
}

/// A DataFusion file scan whose mini-batches can be cut as descriptors (see the module docs).
#[derive(Debug, Clone)]
pub struct FileScan {
    store: ObjectStoreUrl,
    files: Vec<ObjectMeta>,
    syntax: Syntax,
}

/// The scan `plan` reads, when `plan` is one ordered file group of CSV, newline-delimited
/// JSON or Parquet (uncompressed text, no limit, no partition columns) under row-wise
/// projections and cooperative-scheduling wrappers.
fn scan_config(plan: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        return scan_config(projection.input());
    }
    if let Some(coop) = plan.downcast_ref::<CooperativeExec>() {
        return scan_config(coop.input());
    }
    let source = plan.downcast_ref::<DataSourceExec>()?;
    source.data_source().downcast_ref::<FileScanConfig>()
}

impl FileScan {
    /// The scan of `plan` (see [`scan_config`]), or `None` when it is not one this module cuts.
    pub fn of(plan: &Arc<dyn ExecutionPlan>) -> Option<FileScan> {
        let config = scan_config(plan)?;
        if config.file_groups.len() != 1
            || config.limit.is_some()
            || !config.table_partition_cols().is_empty()
        {
            return None;
        }
        let source = config.file_source();
        let syntax = if let Some(csv) = source.downcast_ref::<CsvSource>() {
            Syntax::Csv(CsvSyntax {
                header: csv.has_header(),
                quote: csv.quote(),
                escape: csv.escape(),
                terminator: csv.terminator().unwrap_or(b'\n'),
                comment: csv.comment(),
            })
        } else if source.downcast_ref::<JsonSource>().is_some() {
            Syntax::Json
        } else if source.downcast_ref::<ParquetSource>().is_some() {
            Syntax::Parquet
        } else {
            return None;
        };
        // DataFusion reads byte ranges of uncompressed text only.
        if syntax != Syntax::Parquet
            && config.file_compression_type != FileCompressionType::UNCOMPRESSED
        {
            return None;
        }
        let files: Vec<ObjectMeta> = config.file_groups[0]
            .files()
            .iter()
            .map(|f| f.object_meta.clone())
            .collect();
        if config.file_groups[0]
            .files()
            .iter()
            .any(|f| f.range.is_some())
        {
            return None;
        }
        Some(FileScan {
            store: config.object_store_url.clone(),
            files,
            syntax,
        })
    }

    /// Cuts the scan's rows into mini-batches of about `target_bytes` (see the module docs),
    /// reading the files from `context`'s store; `schema` is the columns read.
    pub async fn cut(
        &self,
        context: &TaskContext,
        schema: &Schema,
        target_bytes: u64,
    ) -> DFResult<ScanCut> {
        let store = context.runtime_env().object_store(&self.store)?;
        let local = self.store.as_str().starts_with("file://");
        let files: Vec<ScanFile> = self
            .files
            .iter()
            .map(|meta| ScanFile {
                location: meta.location.to_string(),
                size: meta.size,
                modified_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u64,
                e_tag: meta.e_tag.clone().filter(|_| !local),
                rows: 0,
            })
            .collect();
        let mut cut = ScanCut {
            store: self.store.as_str().to_string(),
            parquet: self.syntax == Syntax::Parquet,
            files,
            batches: Vec::new(),
        };
        match self.syntax {
            Syntax::Parquet => {
                self.cut_parquet(&store, schema, target_bytes, &mut cut)
                    .await?
            }
            syntax => {
                let mut cutter = Cutter::new(target_bytes);
                for (i, meta) in self.files.iter().enumerate() {
                    let mut lines = Lines::new(syntax);
                    let mut chunks =
                        text_chunks(store.get_opts(&meta.location, cutting_read(None)).await?);
                    let mut at = 0u64;
                    while let Some(chunk) = chunks.next().await {
                        let chunk = chunk?;
                        lines.feed(&chunk, at, |start, end| cutter.record(i as u32, start, end));
                        at += chunk.len() as u64;
                    }
                    if at != meta.size {
                        return Err(DataFusionError::Execution(format!(
                            "{} is {at} bytes, not the {} it was listed with: inputs must not \
                             change while a job runs",
                            meta.location, meta.size
                        )));
                    }
                    lines.finish(at, |start, end| cutter.record(i as u32, start, end));
                    cut.files[i].rows = cutter.file_end(i as u32, at);
                }
                cut.batches = cutter.finish();
            }
        }
        Ok(cut)
    }

    async fn cut_parquet(
        &self,
        store: &Arc<dyn ObjectStore>,
        schema: &Schema,
        target_bytes: u64,
        cut: &mut ScanCut,
    ) -> DFResult<()> {
        let mut footers = Vec::with_capacity(self.files.len());
        for (meta, file) in self.files.iter().zip(cut.files.iter_mut()) {
            let parquet = parquet_footer(store.as_ref(), meta).await.map_err(|e| {
                DataFusionError::Execution(format!(
                    "{} is not a readable Parquet file: {e}",
                    meta.location
                ))
            })?;
            file.rows = parquet.file_metadata().num_rows().max(0) as u64;
            footers.push(ParquetFile {
                path: meta.location.to_string().into(),
                rows: file.rows,
                bytes: meta.size,
                modified_ns: file.modified_ns,
                groups: group_sizes(&parquet),
            });
        }
        let bounds = footer_cut(&footers, schema, target_bytes);
        // The input row each file starts at (the locator lists files in the same order).
        let starts: Vec<u64> = footers
            .iter()
            .scan(0u64, |at, f| {
                let start = *at;
                *at += f.rows;
                Some(start)
            })
            .collect();
        let locator = RowLocator::new(Arc::new(footers));
        for rows in bounds {
            let located = locator.locate(rows.clone());
            let parts = located
                .files
                .iter()
                .map(|f| {
                    // The last file starting there (empty files before it hold none).
                    let file = starts
                        .partition_point(|&s| s <= f.first_row)
                        .saturating_sub(1) as u32;
                    let start = rows.start.max(f.first_row) - f.first_row;
                    let end = rows.end.min(f.first_row + f.rows) - f.first_row;
                    RawPart {
                        file,
                        range: start..end,
                        rows: end - start,
                    }
                })
                .collect();
            cut.batches.push((rows, parts));
        }
        Ok(())
    }
}

/// One file of a [`ScanCut`].
#[derive(Debug, Clone)]
struct ScanFile {
    location: String,
    size: u64,
    modified_ns: u64,
    e_tag: Option<String>,
    /// Its records.
    rows: u64,
}

/// A part of a mini-batch in a [`ScanCut`]: file number, range (bytes, or rows of the file)
/// and records.
#[derive(Debug, Clone)]
struct RawPart {
    file: u32,
    range: Range<u64>,
    rows: u64,
}

/// The mini-batches of a [`FileScan`]: their row ranges and parts.
#[derive(Debug, Clone)]
pub struct ScanCut {
    store: String,
    /// Parts are rows of Parquet files (else byte ranges of text files).
    parquet: bool,
    files: Vec<ScanFile>,
    batches: Vec<(Range<u64>, Vec<RawPart>)>,
}

impl ScanCut {
    /// The mini-batches' row ranges, in order.
    pub fn bounds(&self) -> Vec<Range<u64>> {
        self.batches.iter().map(|(rows, _)| rows.clone()).collect()
    }

    /// The number of mini-batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// The number of files.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// The files' bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The descriptor of mini-batch `seq`.
    pub fn parts(&self, seq: usize) -> Option<PartsInFiles> {
        let (rows, raw) = self.batches.get(seq)?;
        let parts = raw
            .iter()
            .map(|p| {
                let file = &self.files[p.file as usize];
                FilePart {
                    location: file.location.clone(),
                    size: file.size,
                    modified_ns: file.modified_ns,
                    e_tag: file.e_tag.clone(),
                    rows: p.rows,
                    range: if self.is_parquet() {
                        PartRange::Rows {
                            rows: p.range.clone(),
                            of: file.rows,
                        }
                    } else {
                        PartRange::Bytes(p.range.clone())
                    },
                }
            })
            .collect();
        Some(PartsInFiles {
            rows: rows.clone(),
            store: self.store.clone(),
            parts,
        })
    }

    fn is_parquet(&self) -> bool {
        self.parquet
    }
}

/// Finds the records of a text file fed in chunks: calls `record(start, end)` for each
/// (`end` past its terminator, or the file's end).
struct Lines {
    syntax: Syntax,
    /// Where the current line starts.
    line_start: u64,
    /// Nothing but blanks in the current line so far.
    blank: bool,
    /// The current line is a comment.
    comment: bool,
    /// At the line's first byte.
    first: bool,
    in_quotes: bool,
    escaped: bool,
    /// The CSV header is still to come.
    header_pending: bool,
}

impl Lines {
    fn new(syntax: Syntax) -> Self {
        Lines {
            syntax,
            line_start: 0,
            blank: true,
            comment: false,
            first: true,
            in_quotes: false,
            escaped: false,
            header_pending: matches!(syntax, Syntax::Csv(csv) if csv.header),
        }
    }

    fn terminator(&self) -> u8 {
        match self.syntax {
            Syntax::Csv(csv) => csv.terminator,
            _ => b'\n',
        }
    }

    fn feed(&mut self, chunk: &[u8], at: u64, mut record: impl FnMut(u64, u64)) {
        let terminator = self.terminator();
        let csv = match self.syntax {
            Syntax::Csv(csv) => Some(csv),
            _ => None,
        };
        let mut i = 0usize;
        while i < chunk.len() {
            if self.in_quotes {
                // Inside a quoted CSV value: only its closing quote (or an escape) matters.
                let Some(csv) = csv else { break };
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                let next = match csv.escape {
                    Some(escape) => memchr::memchr2(csv.quote, escape, &chunk[i..]),
                    None => memchr::memchr(csv.quote, &chunk[i..]),
                };
                match next {
                    None => break,
                    Some(k) => {
                        let b = chunk[i + k];
                        if Some(b) == csv.escape && b != csv.quote {
                            self.escaped = true;
                        } else {
                            self.in_quotes = false;
                        }
                        i += k + 1;
                    }
                }
                continue;
            }
            let b = chunk[i];
            if self.first {
                self.first = false;
                if csv.is_some_and(|c| c.comment == Some(b)) {
                    self.comment = true;
                }
            }
            if b == terminator {
                let end = at + i as u64 + 1;
                self.end_line(end, &mut record);
                i += 1;
                continue;
            }
            if !(b == b'\r' || (csv.is_none() && b.is_ascii_whitespace())) {
                self.blank = false;
            }
            if self.comment {
                // A comment line ends at the next terminator, whatever it holds.
                match memchr::memchr(terminator, &chunk[i + 1..]) {
                    Some(k) => i += k + 1,
                    None => i = chunk.len(),
                }
                continue;
            }
            if let Some(csv) = csv {
                if b == csv.quote {
                    self.in_quotes = true;
                    i += 1;
                    continue;
                }
                // Skip to the next byte that matters: a quote or the terminator.
                match memchr::memchr2(csv.quote, terminator, &chunk[i + 1..]) {
                    Some(k) => {
                        if k > 0 {
                            self.blank =
                                self.blank && chunk[i + 1..i + 1 + k].iter().all(|&c| c == b'\r');
                        }
                        i += k + 1;
                    }
                    None => {
                        self.blank = self.blank && chunk[i + 1..].iter().all(|&c| c == b'\r');
                        i = chunk.len();
                    }
                }
            } else if !self.blank {
                // JSON: the line is a record; its end is the next terminator.
                match memchr::memchr(terminator, &chunk[i + 1..]) {
                    Some(k) => i += k + 1,
                    None => i = chunk.len(),
                }
            } else {
                i += 1;
            }
        }
    }

    fn end_line(&mut self, end: u64, record: &mut impl FnMut(u64, u64)) {
        if !self.blank && !self.comment {
            if self.header_pending {
                self.header_pending = false;
            } else {
                record(self.line_start, end);
            }
        }
        self.line_start = end;
        self.blank = true;
        self.comment = false;
        self.first = true;
    }

    /// The file's end at `size`: its last line, when it has no terminator.
    fn finish(&mut self, size: u64, mut record: impl FnMut(u64, u64)) {
        if self.line_start < size {
            self.end_line(size, &mut record);
        }
    }
}

/// Groups records into mini-batches of about `target` bytes.
struct Cutter {
    target: u64,
    row: u64,
    batch_start: u64,
    bytes: u64,
    parts: Vec<RawPart>,
    /// The current file's part: where it starts, its records.
    part: Option<(u64, u64)>,
    /// The records of the current file.
    file_rows: u64,
    out: Vec<(Range<u64>, Vec<RawPart>)>,
}

impl Cutter {
    fn new(target: u64) -> Self {
        Cutter {
            target: target.max(1),
            row: 0,
            batch_start: 0,
            bytes: 0,
            parts: Vec::new(),
            part: None,
            file_rows: 0,
            out: Vec::new(),
        }
    }

    fn record(&mut self, file: u32, start: u64, end: u64) {
        let (part_start, rows) = self.part.get_or_insert((start, 0));
        let part_start = *part_start;
        *rows += 1;
        self.row += 1;
        self.file_rows += 1;
        self.bytes += end - start;
        if self.bytes >= self.target {
            self.close_part(file, part_start, end);
            self.out
                .push((self.batch_start..self.row, std::mem::take(&mut self.parts)));
            self.batch_start = self.row;
            self.bytes = 0;
        }
    }

    fn close_part(&mut self, file: u32, start: u64, end: u64) {
        if let Some((_, rows)) = self.part.take() {
            self.parts.push(RawPart {
                file,
                range: start..end,
                rows,
            });
        }
    }

    /// The end of file `file` at `size`; returns its records.
    fn file_end(&mut self, file: u32, size: u64) -> u64 {
        if let Some((start, _)) = self.part {
            self.close_part(file, start, size);
        }
        std::mem::take(&mut self.file_rows)
    }

    fn finish(mut self) -> Vec<(Range<u64>, Vec<RawPart>)> {
        if self.row > self.batch_start {
            self.out
                .push((self.batch_start..self.row, std::mem::take(&mut self.parts)));
        }
        self.out
    }
}

/// The fingerprint of mini-batch `id` of a [`FileScan`] input: its id, rows, the columns read
/// (`schema`) and its file parts (location, size, modification time, range, records). Needs
/// no data, so a cluster driver and a local run compute the same one; it never equals a
/// fingerprint of the rows' values ([`crate::batch::slice_fingerprint`]), which the
/// mini-batches of earlier versions have.
pub fn parts_fingerprint(id: MiniBatchId, parts: &PartsInFiles, schema: &Schema) -> u64 {
    let mut hash = descriptor_hash(b"file-scan-cut/1", id, &parts.rows, schema);
    hash.update(parts.store.as_bytes());
    for part in &parts.parts {
        hash.update([0x1d]);
        hash.update(part.location.as_bytes());
        hash.update([0x1f]);
        hash.update(part.size.to_le_bytes());
        match &part.e_tag {
            Some(tag) => {
                hash.update(b"e");
                hash.update(tag.as_bytes());
            }
            None => hash.update(part.modified_ns.to_le_bytes()),
        }
        hash.update(part.rows.to_le_bytes());
        match &part.range {
            PartRange::Bytes(bytes) => {
                hash.update(b"b");
                hash.update(bytes.start.to_le_bytes());
                hash.update(bytes.end.to_le_bytes());
            }
            PartRange::Rows { rows, of } => {
                hash.update(b"r");
                hash.update(rows.start.to_le_bytes());
                hash.update(rows.end.to_le_bytes());
                hash.update(of.to_le_bytes());
            }
        }
    }
    descriptor_digest(hash)
}

/// `plan` (an input's plan, see [`FileScan::of`]) reading only the file parts of `parts`.
pub fn restricted(
    plan: &Arc<dyn ExecutionPlan>,
    parts: &PartsInFiles,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let files: Vec<PartitionedFile> = parts.parts.iter().map(partitioned_file).collect();
    let group = FileGroup::new(files);
    let replaced = plan.clone().transform_down(|node| {
        let Some(source) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(config) = source.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let config = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(vec![group.clone()])
            .build();
        let exec: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        Ok(Transformed::yes(exec))
    })?;
    if !replaced.transformed {
        return Err(DataFusionError::Internal(
            "the input's plan has no file scan to restrict".into(),
        ));
    }
    Ok(replaced.data)
}

fn partitioned_file(part: &FilePart) -> PartitionedFile {
    let meta = ObjectMeta {
        location: object_store::path::Path::from(part.location.as_str()),
        last_modified: Utc.timestamp_nanos(part.modified_ns as i64),
        size: part.size,
        e_tag: part.e_tag.clone(),
        version: None,
    };
    let file = PartitionedFile::new_from_meta(meta);
    match &part.range {
        PartRange::Bytes(bytes) => file.with_range(bytes.start as i64, bytes.end as i64),
        PartRange::Rows { rows, of } => {
            let mut selectors = Vec::with_capacity(3);
            if rows.start > 0 {
                selectors.push(RowSelector::skip(rows.start as usize));
            }
            if rows.end > rows.start {
                selectors.push(RowSelector::select((rows.end - rows.start) as usize));
            }
            if *of > rows.end {
                selectors.push(RowSelector::skip((of - rows.end) as usize));
            }
            file.with_extension(ParquetRowSelection::new(RowSelection::from(selectors)))
        }
    }
}

/// How an executor opens a declared input to read its parts: the input's declaration (path or
/// URL, format, CSV options) and the job's storage options without their secrets (each
/// executor takes those from its own environment).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanSource {
    /// The input as the job declares it.
    pub input: InputSpec,
    /// `storage_options` without secret values.
    pub storage: BTreeMap<String, String>,
}

/// Reads the parts of one input on an executor ([`read_parts`]): the input's plan is made once,
/// from its declaration, exactly as the driver made it.
pub struct PartsReader {
    source: ScanSource,
    made: Option<(SessionContext, Arc<dyn ExecutionPlan>)>,
}

impl PartsReader {
    /// A reader of the input `source` declares (nothing is opened yet).
    pub fn new(source: ScanSource) -> Self {
        PartsReader { source, made: None }
    }

    /// The rows of `parts`, as one batch of `schema` (the columns the driver cut); the input's
    /// columns here must be the same.
    pub async fn read(&mut self, parts: &PartsInFiles, schema: &SchemaRef) -> Result<RecordBatch> {
        let (ctx, plan) = self.plan().await?;
        if plan.schema().fields() != schema.fields() {
            return Err(self.error(format!(
                "the input's columns here ({}) are not the driver's ({}): the input files \
                 differ between the nodes",
                describe_columns(&plan.schema()),
                describe_columns(schema)
            )));
        }
        read_parts(&plan, parts, schema, ctx.task_ctx())
            .await
            .map_err(|e| self.error(e.to_string()))
    }

    fn error(&self, message: String) -> PrsError {
        PrsError::Input {
            input: self.source.input.name.clone(),
            location: "this executor".into(),
            message,
        }
    }

    async fn plan(&mut self) -> Result<(SessionContext, Arc<dyn ExecutionPlan>)> {
        if let Some(made) = &self.made {
            return Ok(made.clone());
        }
        let ctx = crate::input::job_session();
        // Its read-ahead is never started: only the parts are read, with ranged requests.
        let storage = StorageContext::new(
            StorageOptions::from_entries(self.source.storage.clone()),
            None,
        );
        let prepared = crate::input::register_inputs_with(
            &ctx,
            std::slice::from_ref(&self.source.input),
            &storage,
        )
        .await?;
        let logical = prepared
            .first()
            .map(|p| p.plan.clone())
            .ok_or_else(|| self.error("the input registers no table here".into()))?;
        let plan = ctx
            .state()
            .create_physical_plan(&logical)
            .await
            .map_err(|e| self.error(format!("its plan cannot be made here: {e}")))?;
        self.made = Some((ctx.clone(), plan.clone()));
        Ok((ctx, plan))
    }
}

/// `id Int64, text Utf8`.
pub(crate) fn describe_columns(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the rows of `parts` with `plan` (the input's plan) as one batch of `schema`,
/// after checking each file is the one the driver listed (size and modification time, one
/// HEAD each); the rows read must be the descriptor's count.
pub async fn read_parts(
    plan: &Arc<dyn ExecutionPlan>,
    parts: &PartsInFiles,
    schema: &SchemaRef,
    context: Arc<TaskContext>,
) -> DFResult<RecordBatch> {
    let url = ObjectStoreUrl::parse(&parts.store)?;
    let store = context.runtime_env().object_store(&url)?;
    let local = parts.store.starts_with("file://");
    for part in &parts.parts {
        let path = object_store::path::Path::from(part.location.as_str());
        let meta = store.head(&path).await?;
        let modified = meta.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
        const SECOND: u64 = 1_000_000_000;
        let same = meta.size == part.size
            && match &part.e_tag {
                Some(tag) => meta.e_tag.as_ref() == Some(tag),
                None if local => modified == part.modified_ns,
                // A listing gives milliseconds, a HEAD (an HTTP date) whole seconds.
                None => modified / SECOND == part.modified_ns / SECOND,
            };
        if !same {
            return Err(DataFusionError::Execution(format!(
                "{} changed after the job was cut (size {}, modified {} ns, entity tag {:?}; \
                 listed with {}, {} ns, {:?}): inputs must not change while a job runs, and \
                 must be the same on every node",
                part.location,
                meta.size,
                modified,
                meta.e_tag,
                part.size,
                part.modified_ns,
                part.e_tag
            )));
        }
    }
    let restricted = restricted(plan, parts)?;
    let mut batches = Vec::new();
    for partition in 0..restricted.properties().partitioning.partition_count() {
        let mut stream = restricted.execute(partition, context.clone())?;
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
    }
    let batch = arrow::compute::concat_batches(schema, &batches)?;
    let expected = parts.rows.end - parts.rows.start;
    if batch.num_rows() as u64 != expected {
        return Err(DataFusionError::Execution(format!(
            "read {} rows where the driver counted {expected} (rows {}..{}): the files differ \
             between the nodes or changed during the job",
            batch.num_rows(),
            parts.rows.start,
            parts.rows.end
        )));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InputFormat, InputSpec};
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    async fn plan_of(ctx: &SessionContext, spec: InputSpec) -> Arc<dyn ExecutionPlan> {
        let prepared = crate::input::register_inputs(ctx, &[spec]).await.unwrap();
        ctx.state()
            .create_physical_plan(&prepared[0].plan)
            .await
            .unwrap()
    }

    /// Cuts `plan` at `target` bytes and checks every mini-batch read by its descriptor is
    /// the slice of the whole scan at the cut's rows; returns the cut.
    async fn check_cut(
        ctx: &SessionContext,
        plan: &Arc<dyn ExecutionPlan>,
        target: u64,
    ) -> ScanCut {
        let scan = FileScan::of(plan).expect("a file scan");
        let cut = scan
            .cut(&ctx.task_ctx(), &plan.schema(), target)
            .await
            .unwrap();
        // A DataSourceExec hands its files out once: the whole scan from a fresh copy.
        let fresh = restricted(plan, &whole(&cut)).unwrap();
        let all = collect(fresh, ctx.task_ctx()).await.unwrap();
        let all = arrow::compute::concat_batches(&plan.schema(), &all).unwrap();
        let bounds = cut.bounds();
        assert_eq!(bounds.last().map_or(0, |b| b.end), all.num_rows() as u64);
        for (seq, rows) in bounds.iter().enumerate() {
            let parts = cut.parts(seq).unwrap();
            assert_eq!(parts.rows, *rows);
            assert_eq!(
                parts.parts.iter().map(|p| p.rows).sum::<u64>(),
                rows.end - rows.start
            );
            let got = read_parts(plan, &parts, &plan.schema(), ctx.task_ctx())
                .await
                .unwrap();
            let want = all.slice(rows.start as usize, (rows.end - rows.start) as usize);
            assert_eq!(got, want, "mini-batch {seq} ({rows:?}) at target {target}");
        }
        cut
    }

    /// Every file of `cut`, whole.
    fn whole(cut: &ScanCut) -> PartsInFiles {
        PartsInFiles {
            rows: 0..cut.bounds().last().map_or(0, |b| b.end),
            store: cut.store.clone(),
            parts: cut
                .files
                .iter()
                .map(|f| FilePart {
                    location: f.location.clone(),
                    size: f.size,
                    modified_ns: f.modified_ns,
                    e_tag: f.e_tag.clone(),
                    rows: f.rows,
                    range: if cut.parquet {
                        PartRange::Rows {
                            rows: 0..f.rows,
                            of: f.rows,
                        }
                    } else {
                        PartRange::Bytes(0..f.size)
                    },
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn csv_records_are_cut_and_read_back_by_byte_range_as_datafusion_parses_them() {
        let dir = tempfile::tempdir().unwrap();
        // Quoted newlines and quotes, a blank line, CRLF, a last line without a newline.
        std::fs::write(
            dir.path().join("a.csv"),
            "id,text\n1,plain\n2,\"two\nlines\"\n\n3,\"a \"\"quoted\"\" word\"\r\n4,x\n5,last",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.csv"), "id,text\n6,six\n7,\"se\nven\"\n").unwrap();
        std::fs::write(dir.path().join("c.csv"), "id,text\n").unwrap();
        let ctx = crate::input::job_session();
        let spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Csv);
        let plan = plan_of(&ctx, spec).await;
        for target in [1, 7, 12, 20, 1 << 20] {
            check_cut(&ctx, &plan, target).await;
        }
        let one_each = check_cut(&ctx, &plan, 1).await;
        assert_eq!(one_each.len(), 7);
        // The parts are whole records: the second starts after the first's newline.
        let second = one_each.parts(1).unwrap();
        assert_eq!(second.parts[0].range, PartRange::Bytes(16..30));
        // A mini-batch spans files.
        let all = check_cut(&ctx, &plan, 1 << 20).await;
        assert_eq!(all.len(), 1);
        assert_eq!(all.parts(0).unwrap().parts.len(), 2);
    }

    #[tokio::test]
    async fn json_lines_are_cut_and_read_back_by_byte_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            "{\"id\":1,\"s\":\"a\\nb\"}\n\n  \n{\"id\":2,\"s\":\"x\"}\r\n{\"id\":3,\"s\":\"y\"}",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.json"), "{\"id\":4,\"s\":\"z\"}\n").unwrap();
        let ctx = crate::input::job_session();
        let spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Json);
        let plan = plan_of(&ctx, spec).await;
        for target in [1, 20, 40, 1 << 20] {
            check_cut(&ctx, &plan, target).await;
        }
        assert_eq!(check_cut(&ctx, &plan, 1).await.len(), 4);
    }

    #[tokio::test]
    async fn parquet_through_a_store_is_cut_from_the_footers_and_read_back_by_rows() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field};
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        for (name, ids, group) in [
            ("a.parquet", 0..1000i64, 300),
            ("b.parquet", 1000..1500, 200),
        ] {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(group))
                .build();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(ids))],
            )
            .unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
        let ctx = crate::input::job_session();
        ctx.register_parquet(
            "t",
            &format!("{}/", dir.path().display()),
            Default::default(),
        )
        .await
        .unwrap();
        let df = ctx.table("t").await.unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        for target in [1000, 3000, 5000, 1 << 30] {
            let cut = check_cut(&ctx, &plan, target).await;
            // The same boundaries as the local Parquet footer cut.
            assert!(cut.parts(0).is_some());
        }
        let cut = check_cut(&ctx, &plan, 5000).await;
        assert!(
            cut.bounds().iter().any(|b| b.start < 1000 && b.end > 1000),
            "{:?}",
            cut.bounds()
        );
    }

    #[tokio::test]
    async fn a_file_changed_after_the_cut_is_refused_when_its_part_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "id\n1\n2\n3\n").unwrap();
        let ctx = crate::input::job_session();
        let spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Csv);
        let plan = plan_of(&ctx, spec).await;
        let cut = FileScan::of(&plan)
            .unwrap()
            .cut(&ctx.task_ctx(), &plan.schema(), 1)
            .await
            .unwrap();
        assert_eq!(cut.len(), 3);
        std::fs::write(&path, "id\n1\n2\n3\n4\n").unwrap();
        let err = read_parts(
            &plan,
            &cut.parts(1).unwrap(),
            &plan.schema(),
            ctx.task_ctx(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("a.csv changed after the job was cut"), "{err}");
    }

    #[test]
    fn a_query_or_a_compressed_file_is_not_a_file_scan_to_cut() {
        // (The plans of `sql:` inputs are not offered; compressed text is refused here.)
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "a",
            arrow::datatypes::DataType::Utf8,
            true,
        )]));
        let source = Arc::new(CsvSource::new(schema.clone()));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_groups(vec![FileGroup::new(vec![PartitionedFile::new(
                "a.csv.gz", 10,
            )])])
            .with_file_compression_type(FileCompressionType::GZIP)
            .build();
        let plan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        assert!(FileScan::of(&plan).is_none());
        let empty = datafusion::physical_plan::empty::EmptyExec::new(schema);
        assert!(FileScan::of(&(Arc::new(empty) as Arc<dyn ExecutionPlan>)).is_none());
    }

    #[test]
    fn the_fingerprint_changes_with_a_file_s_identity() {
        let parts = PartsInFiles {
            rows: 0..2,
            store: "file:///".into(),
            parts: vec![FilePart {
                location: "d/a.csv".into(),
                size: 10,
                modified_ns: 5,
                e_tag: None,
                rows: 2,
                range: PartRange::Bytes(3..10),
            }],
        };
        let schema = Schema::empty();
        let id = MiniBatchId::new(0, 0);
        let base = parts_fingerprint(id, &parts, &schema);
        let mut touched = parts.clone();
        touched.parts[0].modified_ns = 6;
        assert_ne!(parts_fingerprint(id, &touched, &schema), base);
        assert_ne!(
            parts_fingerprint(MiniBatchId::new(0, 1), &parts, &schema),
            base
        );
        assert_eq!(parts_fingerprint(id, &parts.clone(), &schema), base);
        // On object storage the entity tag is the identity: the same bytes uploaded again
        // (a new modification time) are the same input.
        let mut tagged = parts.clone();
        tagged.parts[0].e_tag = Some("abc".into());
        let tagged_base = parts_fingerprint(id, &tagged, &schema);
        tagged.parts[0].modified_ns = 99;
        assert_eq!(parts_fingerprint(id, &tagged, &schema), tagged_base);
        tagged.parts[0].e_tag = Some("abd".into());
        assert_ne!(parts_fingerprint(id, &tagged, &schema), tagged_base);
    }
}
