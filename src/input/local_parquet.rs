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

use std::fmt;
use std::fs::File;
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
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use tokio::sync::mpsc;

/// The Parquet files of a local input and their merged schema.
#[derive(Debug)]
pub struct LocalParquetTable {
    location: String,
    files: Arc<Vec<PathBuf>>,
    schema: SchemaRef,
    /// Rows of all files, from their footers.
    rows: u64,
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
        let files = Arc::new(files);
        // Reading the footers blocks on the file system.
        let list = files.clone();
        let (schema, rows) = tokio::task::spawn_blocking(move || merged_schema(&list))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        Ok(LocalParquetTable {
            location: table_path.to_string(),
            files,
            schema,
            rows,
        })
    }

    /// The files, in reading order.
    pub fn files(&self) -> &[PathBuf] {
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
/// file, not the table); and the rows of all files, from the same footers.
fn merged_schema(files: &[PathBuf]) -> DFResult<(SchemaRef, u64)> {
    let mut schemas = Vec::with_capacity(files.len());
    let mut rows = 0u64;
    for path in files {
        let builder = open(path)?;
        rows += builder.metadata().file_metadata().num_rows().max(0) as u64;
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
    Ok((Arc::new(Schema::new(fields)), rows))
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

/// Reads a [`LocalParquetTable`]'s files one after the other (one partition).
pub struct LocalParquetExec {
    location: String,
    files: Arc<Vec<PathBuf>>,
    properties: Arc<PlanProperties>,
    rows: u64,
}

impl fmt::Debug for LocalParquetExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalParquetExec({})", self.location)
    }
}

impl LocalParquetExec {
    fn new(location: String, files: Arc<Vec<PathBuf>>, schema: SchemaRef, rows: u64) -> Self {
        let properties = crate::input::leaf_properties(schema);
        LocalParquetExec {
            location,
            files,
            properties,
            rows,
        }
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
        let out = schema.clone();
        Ok(crate::input::blocking_stream(schema, move |tx| {
            for path in files.iter() {
                match read_file(path, &out, batch_size, &tx) {
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

/// Sends `path`'s rows as batches of `schema`; false when the receiver has gone.
fn read_file(
    path: &PathBuf,
    schema: &SchemaRef,
    batch_size: usize,
    tx: &mpsc::Sender<DFResult<RecordBatch>>,
) -> DFResult<bool> {
    let builder = open(path)?;
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
    for batch in reader {
        let batch = batch.map_err(|e| read_error(path, e))?;
        let batch = conform(batch, schema).map_err(|e| {
            DataFusionError::Execution(format!(
                "{}: its columns do not fit the table's schema: {e}",
                path.display()
            ))
        })?;
        if tx.blocking_send(Ok(batch)).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
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

    fn write(path: &std::path::Path, batch: &RecordBatch, row_group_rows: usize) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(row_group_rows))
            .set_data_page_row_count_limit(1000)
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    fn ids(from: i64, n: i64) -> RecordBatch {
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
