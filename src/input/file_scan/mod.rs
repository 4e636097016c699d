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

mod read;
mod text;

pub(crate) use read::describe_columns;
pub use read::{read_parts, restricted, PartsReader, PathValues, ScanSource};
use text::{text_chunks, Cutter, Lines};

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
/// JSON or Parquet (uncompressed text, no limit) under row-wise
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
        // (Columns from the files' paths are the files' partition values: the parts take
        // them from the executor's own listing, see `restricted`.)
        if config.file_groups.len() != 1 || config.limit.is_some() {
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
        let fresh = restricted(plan, &whole(&cut), &PathValues::of(plan)).unwrap();
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
    async fn columns_from_the_paths_come_with_each_part() {
        let dir = tempfile::tempdir().unwrap();
        for (store, rows) in [("s1", 0..40), ("s2", 40..100)] {
            let folder = dir.path().join(store);
            std::fs::create_dir_all(&folder).unwrap();
            let mut text = String::from("id,text\n");
            for i in rows {
                text.push_str(&format!("{i},\"row {i}\"\n"));
            }
            std::fs::write(folder.join("a.csv"), text).unwrap();
        }
        let ctx = crate::input::job_session();
        let mut spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Csv);
        spec.path_column = Some("Path".into());
        spec.partition_format = Some("{store}/*.csv".into());
        let plan = plan_of(&ctx, spec).await;
        assert!(plan.schema().field_with_name("store").is_ok());
        for target in [1, 100, 1 << 20] {
            let cut = check_cut(&ctx, &plan, target).await;
            assert_eq!(cut.bounds().last().map(|b| b.end), Some(100));
        }
        // The last mini-batch of a 100-byte cut holds rows of s2 only, with its path values.
        let cut = check_cut(&ctx, &plan, 100).await;
        let last = cut.parts(cut.len() - 1).unwrap();
        let rows = read_parts(&plan, &last, &plan.schema(), ctx.task_ctx())
            .await
            .unwrap();
        let store = rows
            .column_by_name("store")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .map(|a| a.value(0).to_string());
        assert_eq!(store.as_deref(), Some("s2"));
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
