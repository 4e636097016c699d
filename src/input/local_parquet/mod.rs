//! Local Parquet inputs, read page by page.
//!
//! DataFusion's Parquet scan fetches every column chunk of a row group before decoding it, so
//! its memory grows with the row group: a file written with 1M-row groups (pyarrow's default)
//! holds over 100 MB per group in the engine. Local files are read here instead with the
//! `parquet` crate's synchronous reader, which reads one page per column at a time: memory
//! depends on the page and batch sizes, never on how the files were cut into row groups.
//! Inputs on object storage keep DataFusion's scan (see [`crate::storage`]).
//!
//! The table is DataFusion's in every other respect: the same file listing (a file, a folder
//! with `.parquet` files, or a glob; via [`ListingTableUrl`]), files in sorted path order,
//! one schema merged from every file's, and projection; filters and limits above it are
//! applied by DataFusion.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::stats::Precision;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::CreateExternalTable;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, Statistics, StatisticsArgs,
};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy, RowSelector,
};
use parquet::arrow::ProjectionMask;
use sha2::{Digest, Sha256};

use crate::batch::MiniBatchId;

mod rows;
use rows::modified_ns;
pub(crate) use rows::{descriptor_digest, descriptor_hash};
pub use rows::{
    footer_cut, footer_fingerprint, read_rows, FileRows, RowLocator, RowsInFiles, RowsReader,
};

/// The Parquet files of a local input and their merged schema.
#[derive(Debug)]
pub struct LocalParquetTable {
    location: String,
    files: Arc<Vec<ParquetFile>>,
    schema: SchemaRef,
    /// Rows of all files, from their footers.
    rows: u64,
}

/// One file of a [`LocalParquetTable`], as listed when the table was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParquetFile {
    /// Its path.
    pub path: PathBuf,
    /// Its rows (footer).
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its modification time, in nanoseconds since the epoch (0 when unknown).
    pub modified_ns: u64,
    /// Its row groups, in order (footer).
    pub groups: Vec<RowGroupSize>,
}

/// One row group of a [`ParquetFile`], from the footer: what the mini-batch boundaries are
/// estimated from ([`LocalParquetExec::footer_cut`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowGroupSize {
    /// Its rows.
    pub rows: u64,
    /// The uncompressed bytes of each top-level column's chunks (the leaves of a nested
    /// column summed), by column name.
    pub column_bytes: Vec<(String, u64)>,
}

impl LocalParquetTable {
    /// Lists `table_path` (a file, a folder ending in `/`, or a glob; as
    /// [`ListingTableUrl::parse`] reads it) for files ending in `extension`, sorted by path,
    /// and merges their schemas. Errors name the file that cannot be read.
    pub async fn try_new(
        session: &dyn Session,
        table_path: &str,
        extension: &str,
    ) -> DFResult<Self> {
        let url = ListingTableUrl::parse(table_path)?;
        let store = session.runtime_env().object_store(url.object_store())?;
        let mut found: Vec<_> = url
            .list_all_files(session, store.as_ref(), extension)
            .await?
            .try_collect()
            .await?;
        found.sort_by(|a, b| a.location.cmp(&b.location));
        let local = LocalFileSystem::new();
        let files = found
            .iter()
            .map(|meta| local.path_to_filesystem(&meta.location))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if files.is_empty() {
            return Err(DataFusionError::Plan(if extension.is_empty() {
                format!(
                    "no files match {table_path}; check the pattern (the folders' depth, the \
                     extension, upper and lower case)"
                )
            } else {
                format!(
                    "no files ending in {extension:?} in {table_path}; for other names use a \
                     glob, e.g. '{table_path}*.parq'"
                )
            }));
        }
        // Reading the footers blocks on the file system.
        let (schema, files) = tokio::task::spawn_blocking(move || merged_schema(&files))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        let rows = files.iter().map(|f| f.rows).sum();
        let files = Arc::new(files);
        Ok(LocalParquetTable {
            location: table_path.to_string(),
            files,
            schema,
            rows,
        })
    }

    /// The files, in reading order.
    pub fn files(&self) -> &[ParquetFile] {
        &self.files
    }
}

/// `CREATE EXTERNAL TABLE ... STORED AS PARQUET` on one local location, with no declared
/// columns, partition columns, order or options, makes a [`LocalParquetTable`] (so a SQL job
/// reads exactly as the same YAML job); anything else goes to DataFusion's listing tables.
#[derive(Debug, Default)]
pub struct LocalParquetFactory;

#[async_trait]
impl TableProviderFactory for LocalParquetFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DFResult<Arc<dyn TableProvider>> {
        let plain = cmd.file_type.eq_ignore_ascii_case("parquet")
            && cmd.locations.len() == 1
            && cmd.schema.fields().is_empty()
            && cmd.table_partition_cols.is_empty()
            && cmd.order_exprs.is_empty()
            && cmd.options.is_empty()
            && !cmd.unbounded;
        let location = cmd
            .locations
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        let local = location.starts_with("file://") || !location.contains("://");
        if !(plain && local) {
            return ListingTableFactory::new().create(state, cmd).await;
        }
        // A folder: its .parquet files; one file (whatever its name) or a glob: itself.
        let table = if location.ends_with('/') {
            LocalParquetTable::try_new(state, location, ".parquet").await?
        } else if Path::new(location).is_dir() {
            LocalParquetTable::try_new(state, &format!("{location}/"), ".parquet").await?
        } else {
            LocalParquetTable::try_new(state, location, "").await?
        };
        Ok(Arc::new(table))
    }
}

/// One schema for all files: fields merged by name (first file's order first), schema
/// metadata dropped (as DataFusion's Parquet tables do: pandas' metadata would describe the
/// file, not the table); and each file's rows (from the same footers), size and modification
/// time.
fn merged_schema(paths: &[PathBuf]) -> DFResult<(SchemaRef, Vec<ParquetFile>)> {
    let mut schemas = Vec::with_capacity(paths.len());
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let builder = open(path)?;
        let meta = std::fs::metadata(path).map_err(|e| {
            DataFusionError::Execution(format!("cannot read {}: {e}", path.display()))
        })?;
        files.push(ParquetFile {
            path: path.clone(),
            rows: builder.metadata().file_metadata().num_rows().max(0) as u64,
            bytes: meta.len(),
            modified_ns: modified_ns(&meta),
            groups: group_sizes(builder.metadata()),
        });
        let schema = builder.schema().as_ref().clone();
        schemas.push(Schema::new(schema.fields().clone()));
    }
    let merged = Schema::try_merge(schemas.iter().cloned()).map_err(|e| {
        DataFusionError::Plan(format!(
            "the Parquet files have incompatible schemas ({e}); read them as separate inputs"
        ))
    })?;
    // A column some file lacks is null in that file's rows.
    let fields: Vec<_> = merged
        .fields()
        .iter()
        .map(|f| {
            let everywhere = schemas.iter().all(|s| s.field_with_name(f.name()).is_ok());
            Arc::new(
                f.as_ref()
                    .clone()
                    .with_nullable(f.is_nullable() || !everywhere),
            )
        })
        .collect();
    Ok((Arc::new(Schema::new(fields)), files))
}

/// Each row group's rows and uncompressed column sizes, from a file's footer.
pub(crate) fn group_sizes(meta: &parquet::file::metadata::ParquetMetaData) -> Vec<RowGroupSize> {
    let schema = meta.file_metadata().schema_descr();
    meta.row_groups()
        .iter()
        .map(|group| {
            let mut column_bytes: Vec<(String, u64)> = Vec::new();
            for (i, chunk) in group.columns().iter().enumerate() {
                let name = schema.get_column_root(i).name();
                let bytes = chunk.uncompressed_size().max(0) as u64;
                match column_bytes.iter_mut().find(|(n, _)| n == name) {
                    Some((_, b)) => *b += bytes,
                    None => column_bytes.push((name.to_string(), bytes)),
                }
            }
            RowGroupSize {
                rows: group.num_rows().max(0) as u64,
                column_bytes,
            }
        })
        .collect()
}

fn open(path: &PathBuf) -> DFResult<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path)
        .map_err(|e| DataFusionError::Execution(format!("cannot open {}: {e}", path.display())))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        DataFusionError::Execution(format!(
            "{} is not a readable Parquet file: {e}",
            path.display()
        ))
    })
}

#[async_trait]
impl TableProvider for LocalParquetTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(LocalParquetExec::new(
            self.location.clone(),
            self.files.clone(),
            schema,
            self.rows,
        )))
    }
}

/// Reads a [`LocalParquetTable`]'s files one after the other (one partition), each in batches
/// of the session's `batch_size` rows (the last batch of a file may be shorter).
///
/// A resumed job can leave out rows it already processed ([`LocalParquetExec::without_rows`]):
/// whole reader batches are then not read, and the batches that are read are the same as
/// without the omission, so the job cuts the rest of its mini-batches exactly as before.
pub struct LocalParquetExec {
    location: String,
    files: Arc<Vec<ParquetFile>>,
    properties: Arc<PlanProperties>,
    rows: u64,
    /// Per file, the row ranges (within the file) not read, sorted and disjoint.
    omitted: Arc<Vec<Vec<Range<u64>>>>,
}

impl fmt::Debug for LocalParquetExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalParquetExec({})", self.location)
    }
}

impl LocalParquetExec {
    fn new(location: String, files: Arc<Vec<ParquetFile>>, schema: SchemaRef, rows: u64) -> Self {
        let properties = crate::input::leaf_properties(schema);
        LocalParquetExec {
            location,
            files,
            properties,
            rows,
            omitted: Arc::new(Vec::new()),
        }
    }

    /// What identifies the rows this scan produces, and how it batches them: every file's
    /// path, size, modification time and rows, the columns read, and `batch_size`. Two scans
    /// with the same identity produce the same batches (unless a file was rewritten in place
    /// with the same size within the file system's time resolution).
    pub fn source_identity(&self, batch_size: usize) -> u64 {
        let mut hash = Sha256::new();
        hash.update(b"LocalParquetExec/1");
        hash.update((batch_size as u64).to_le_bytes());
        for field in self.schema().fields() {
            hash.update(field.name().as_bytes());
            hash.update(field.data_type().to_string().as_bytes());
            hash.update([u8::from(field.is_nullable())]);
        }
        for file in self.files.iter() {
            hash.update(file.path.to_string_lossy().as_bytes());
            hash.update(file.rows.to_le_bytes());
            hash.update(file.bytes.to_le_bytes());
            hash.update(file.modified_ns.to_le_bytes());
        }
        let digest = hash.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    /// The row ranges of this scan's mini-batches of about `target_bytes` each, cut from the
    /// footers without reading any data (see [`footer_cut`]).
    pub fn footer_cut(&self, target_bytes: u64) -> Vec<Range<u64>> {
        footer_cut(&self.files, &self.schema(), target_bytes)
    }

    /// Where the rows of this scan's input are, by file.
    pub fn locator(&self) -> RowLocator {
        RowLocator::new(self.files.clone())
    }

    /// This scan without the reader batches (of `batch_size` rows, counted from each file's
    /// start) that lie wholly inside `skip` (row ranges of the whole input, sorted, disjoint),
    /// and those batches' row ranges, merged and in order. The batches still read are exactly
    /// the ones the full scan produces.
    pub fn without_rows(&self, skip: &[Range<u64>], batch_size: usize) -> (Self, Vec<Range<u64>>) {
        let batch_size = batch_size.max(1) as u64;
        let mut omitted_all: Vec<Range<u64>> = Vec::new();
        let mut per_file = Vec::with_capacity(self.files.len());
        let mut file_start = 0u64;
        let mut next_skip = 0usize;
        for file in self.files.iter() {
            let mut local: Vec<Range<u64>> = Vec::new();
            let mut batch_start = 0u64;
            while batch_start < file.rows {
                let batch_end = (batch_start + batch_size).min(file.rows);
                let (from, to) = (file_start + batch_start, file_start + batch_end);
                while next_skip < skip.len() && skip[next_skip].end <= from {
                    next_skip += 1;
                }
                let inside = skip
                    .get(next_skip)
                    .is_some_and(|s| s.start <= from && to <= s.end);
                if inside {
                    match local.last_mut() {
                        Some(last) if last.end == batch_start => last.end = batch_end,
                        _ => local.push(batch_start..batch_end),
                    }
                    match omitted_all.last_mut() {
                        Some(last) if last.end == from => last.end = to,
                        _ => omitted_all.push(from..to),
                    }
                }
                batch_start = batch_end;
            }
            per_file.push(local);
            file_start += file.rows;
        }
        let scan = LocalParquetExec {
            location: self.location.clone(),
            files: self.files.clone(),
            properties: self.properties.clone(),
            rows: self.rows,
            omitted: Arc::new(per_file),
        };
        (scan, omitted_all)
    }
}

impl DisplayAs for LocalParquetExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LocalParquetExec: location={}, files={}",
            self.location,
            self.files.len()
        )
    }
}

impl ExecutionPlan for LocalParquetExec {
    crate::input::leaf_plan_methods!("LocalParquetExec");

    /// The exact row count, from the footers (the job's item total before reading).
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DFResult<Arc<Statistics>> {
        let mut statistics = Statistics::new_unknown(&self.schema());
        statistics.num_rows = Precision::Exact(self.rows as usize);
        Ok(Arc::new(statistics))
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let schema = self.properties.eq_properties.schema().clone();
        let batch_size = context.session_config().batch_size();
        let files = self.files.clone();
        let omitted = self.omitted.clone();
        let out = schema.clone();
        Ok(crate::input::blocking_stream(schema, move |tx| {
            for (n, file) in files.iter().enumerate() {
                let skip = omitted.get(n).map_or(&[][..], Vec::as_slice);
                let mut send = |batch| tx.blocking_send(Ok(batch)).is_ok();
                match read_file(&file.path, &out, batch_size, skip, &mut send) {
                    Ok(true) => {}
                    Ok(false) => return, // the consumer has gone
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        }))
    }
}

/// Gives `path`'s rows, but those in `omitted` (row ranges within the file), to `send` as
/// batches of `schema`; false when `send` refused one (the receiver has gone).
fn read_file(
    path: &PathBuf,
    schema: &SchemaRef,
    batch_size: usize,
    omitted: &[Range<u64>],
    send: &mut dyn FnMut(RecordBatch) -> bool,
) -> DFResult<bool> {
    let Some(reader) = file_reader(path, schema, batch_size, omitted)? else {
        return Ok(true);
    };
    for batch in reader {
        if !send(batch?) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The batches of `path` without the rows `omitted` (file rows, sorted and disjoint), with
/// the columns of `schema`; `None` when nothing is left to read.
fn file_reader(
    path: &PathBuf,
    schema: &SchemaRef,
    batch_size: usize,
    omitted: &[Range<u64>],
) -> DFResult<Option<FileBatches>> {
    let mut builder = open(path)?;
    if !omitted.is_empty() {
        let group_rows: Vec<u64> = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as u64)
            .collect();
        let (groups, selectors) = read_plan(&group_rows, omitted);
        if groups.is_empty() {
            return Ok(None);
        }
        builder = builder
            .with_row_groups(groups)
            .with_row_selection(RowSelection::from(selectors))
            // Selectors, not masks: a batch is filled across a skip, as without it.
            .with_row_selection_policy(RowSelectionPolicy::Selectors);
    }
    let file_schema = builder.schema().clone();
    // The table's columns this file has, by name; the others are filled with nulls.
    let mut roots = Vec::new();
    for field in schema.fields() {
        if let Ok(i) = file_schema.index_of(field.name()) {
            roots.push(i);
        }
    }
    roots.sort_unstable();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_batch_size(batch_size)
        .with_projection(mask)
        .build()
        .map_err(|e| read_error(path, e))?;
    let path = path.clone();
    let schema = schema.clone();
    Ok(Some(Box::new(reader.map(move |batch| {
        let batch = batch.map_err(|e| read_error(&path, e))?;
        conform(batch, &schema).map_err(|e| {
            DataFusionError::Execution(format!(
                "{}: its columns do not fit the table's schema: {e}",
                path.display()
            ))
        })
    }))))
}

/// The batches a [`file_reader`] yields.
type FileBatches = Box<dyn Iterator<Item = DFResult<RecordBatch>> + Send>;

/// The row groups to read and the selection within them (relative to those groups) that
/// leaves out `omitted` (row ranges within the file, sorted and disjoint), for a file whose
/// row groups hold `group_rows` rows. Row groups wholly omitted are not read at all.
fn read_plan(group_rows: &[u64], omitted: &[Range<u64>]) -> (Vec<usize>, Vec<RowSelector>) {
    let mut groups = Vec::new();
    let mut selectors: Vec<RowSelector> = Vec::new();
    let mut push = |selector: RowSelector| match selectors.last_mut() {
        Some(last) if last.skip == selector.skip => last.row_count += selector.row_count,
        _ => selectors.push(selector),
    };
    let mut group_start = 0u64;
    for (g, rows) in group_rows.iter().enumerate() {
        let group = group_start..group_start + rows;
        group_start = group.end;
        let cuts: Vec<Range<u64>> = omitted
            .iter()
            .filter(|o| o.start < group.end && group.start < o.end)
            .map(|o| o.start.max(group.start)..o.end.min(group.end))
            .collect();
        let left_out: u64 = cuts.iter().map(|c| c.end - c.start).sum();
        if left_out == *rows {
            continue;
        }
        groups.push(g);
        let mut at = group.start;
        for cut in cuts {
            if cut.start > at {
                push(RowSelector::select((cut.start - at) as usize));
            }
            push(RowSelector::skip((cut.end - cut.start) as usize));
            at = cut.end;
        }
        if group.end > at {
            push(RowSelector::select((group.end - at) as usize));
        }
    }
    (groups, selectors)
}

fn read_error(path: &std::path::Path, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("cannot read {}: {e}", path.display()))
}

/// `batch` with the columns of `schema`, in its order: cast where a file's type differs, nulls
/// for columns the file lacks.
fn conform(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => arrow::compute::cast(column, field.data_type()),
            None => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use datafusion::prelude::SessionContext;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    pub(super) fn write(path: &std::path::Path, batch: &RecordBatch, row_group_rows: usize) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(row_group_rows))
            .set_data_page_row_count_limit(1000)
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    /// The table of `dir` after writing ids 0..1000 (row groups of 300) to `a.parquet` and
    /// 1000..1500 (row groups of 200) to `b.parquet`.
    pub(super) async fn two_file_table(dir: &std::path::Path) -> LocalParquetTable {
        write(&dir.join("a.parquet"), &ids(0, 1000), 300);
        write(&dir.join("b.parquet"), &ids(1000, 500), 200);
        let ctx = SessionContext::new();
        let folder = format!("{}/", dir.display());
        LocalParquetTable::try_new(&ctx.state(), &folder, ".parquet")
            .await
            .unwrap()
    }

    pub(super) fn ids(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(Float64Array::from_iter_values(
                    (from..from + n).map(|i| i as f64),
                )),
            ],
        )
        .unwrap()
    }

    async fn collect(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    #[tokio::test]
    async fn reads_files_in_path_order_with_merged_schemas() {
        let d = tempfile::tempdir().unwrap();
        // b.parquet sorts after a.parquet whatever order they were written in; c lacks x and
        // has an extra column; notes.txt is not a Parquet file and is not listed.
        write(&d.path().join("b.parquet"), &ids(100, 50), 20);
        write(&d.path().join("a.parquet"), &ids(0, 100), 30);
        let c = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![150, 151])),
                Arc::new(StringArray::from(vec!["p", "q"])),
            ],
        )
        .unwrap();
        write(&d.path().join("c.parquet"), &c, 10);
        std::fs::write(d.path().join("notes.txt"), "not parquet").unwrap();
        let ctx = SessionContext::new();
        let folder = format!("{}/", d.path().display());
        let table = LocalParquetTable::try_new(&ctx.state(), &folder, ".parquet")
            .await
            .unwrap();
        assert_eq!(table.files().len(), 3);
        assert_eq!(
            table.files().iter().map(|f| f.rows).collect::<Vec<_>>(),
            [100, 50, 2]
        );
        ctx.register_table("t", Arc::new(table)).unwrap();
        let batches = collect(&ctx, "SELECT id, x, name FROM t").await;
        let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let id = all.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(id.values().to_vec(), (0..152).collect::<Vec<i64>>());
        assert_eq!(all.column(1).null_count(), 2, "c.parquet has no x");
        assert_eq!(all.column(2).null_count(), 150, "only c.parquet has names");
        // Filters and projections are DataFusion's as usual.
        let batches = collect(&ctx, "SELECT count(*) AS n FROM t WHERE x >= 120").await;
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.value(0), 30);
        // The row count is exact from the footers, before anything is read; not after a filter.
        let rows = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let plan = ctx
                    .sql(sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                datafusion::physical_plan::StatisticsContext::new()
                    .compute(plan.as_ref(), &StatisticsArgs::new())
                    .unwrap()
                    .num_rows
            }
        };
        assert_eq!(rows("SELECT id, name FROM t").await, Precision::Exact(152));
        assert!(!matches!(
            rows("SELECT id FROM t WHERE x >= 120").await,
            Precision::Exact(_)
        ));
    }

    #[test]
    fn read_plan_leaves_out_whole_row_groups_and_selects_the_rest() {
        // Groups of 300, 300, 100 rows; rows 100..650 left out.
        let (groups, selectors) = read_plan(&[300, 300, 100], &[100..250, 250..300, 300..650]);
        assert_eq!(groups, [0, 2], "group 1 is wholly left out");
        assert_eq!(
            selectors,
            [
                RowSelector::select(100),
                RowSelector::skip(200),
                RowSelector::skip(50),
                RowSelector::select(50)
            ]
            .into_iter()
            .fold(Vec::<RowSelector>::new(), |mut v, s| {
                match v.last_mut() {
                    Some(l) if l.skip == s.skip => l.row_count += s.row_count,
                    _ => v.push(s),
                }
                v
            })
        );
        let (groups, _) = read_plan(&[10, 10], &[0..10, 10..20]);
        assert!(groups.is_empty());
    }

    #[tokio::test]
    async fn without_rows_reads_the_same_batches_but_the_omitted_ones() {
        let d = tempfile::tempdir().unwrap();
        let table = two_file_table(d.path()).await;
        let batch_size = 128;
        let config = datafusion::prelude::SessionConfig::new().with_batch_size(batch_size);
        let task = Arc::new(TaskContext::default().with_session_config(config));
        let scan = LocalParquetExec::new(
            "t".into(),
            table.files.clone(),
            table.schema.clone(),
            table.rows,
        );
        let read = |scan: &LocalParquetExec| {
            let stream = scan.execute(0, task.clone()).unwrap();
            async move {
                let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
                batches
                    .iter()
                    .map(|b| {
                        let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                        (id.value(0) as u64)..(id.value(b.num_rows() - 1) as u64 + 1)
                    })
                    .collect::<Vec<_>>()
            }
        };
        let full = read(&scan).await;
        assert_eq!(full[0], 0..128);
        assert_eq!(full[7], 896..1000, "a file's last batch is shorter");
        assert_eq!(full[8], 1000..1128, "the next file starts a batch");
        // Left out: rows 100..900 (batches 1..7 of a.parquet, 128..896) and 1100..1500
        // (b.parquet's batches from 1128 on, all to its end).
        let (part, omitted) = scan.without_rows(&[100..900, 1100..1500], batch_size);
        assert_eq!(omitted, [128..896, 1128..1500]);
        let expected: Vec<_> = full
            .iter()
            .filter(|b| !omitted.iter().any(|o| o.start <= b.start && b.end <= o.end))
            .cloned()
            .collect();
        assert_eq!(read(&part).await, expected);
        assert_ne!(
            scan.source_identity(batch_size),
            scan.source_identity(batch_size + 1)
        );
    }

    #[tokio::test]
    async fn create_external_table_reads_local_parquet_the_same_way() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("a.parquet"), &ids(0, 10), 10);
        let ctx = crate::input::job_session();
        let plan = |sql: String| {
            let ctx = ctx.clone();
            async move {
                ctx.sql(&sql).await.unwrap();
                let df = ctx.sql("SELECT id FROM t").await.unwrap();
                let plan = df.create_physical_plan().await.unwrap();
                ctx.deregister_table("t").unwrap();
                let text = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(false)
                    .to_string();
                text
            }
        };
        let dir = d.path().display();
        let file = plan(format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{dir}/a.parquet'"
        ))
        .await;
        assert!(file.contains("LocalParquetExec"), "{file}");
        let folder = plan(format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{dir}'"
        ))
        .await;
        assert!(folder.contains("LocalParquetExec"), "{folder}");
        // Options are DataFusion's: its own scan then.
        let with_options = plan(format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{dir}/' OPTIONS ('format.pushdown_filters' 'true')"
        ))
        .await;
        assert!(with_options.contains("DataSourceExec"), "{with_options}");
    }

    #[tokio::test]
    async fn errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("a.parquet"), &ids(0, 10), 10);
        std::fs::write(d.path().join("b.parquet"), "not parquet at all").unwrap();
        let ctx = SessionContext::new();
        let folder = format!("{}/", d.path().display());
        let err = LocalParquetTable::try_new(&ctx.state(), &folder, ".parquet")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.parquet") && err.contains("not a readable Parquet file"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let folder = format!("{}/", empty.path().display());
        let err = LocalParquetTable::try_new(&ctx.state(), &folder, ".parquet")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no files ending in \".parquet\""), "{err}");
        // A glob takes files of any name: the message is about the pattern.
        let glob = format!("{}/*.parq", d.path().display());
        let err = LocalParquetTable::try_new(&ctx.state(), &glob, "")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("no files match {glob}")) && !err.contains("ending in"),
            "{err}"
        );
    }
}
