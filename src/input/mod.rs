//! Inputs become DataFusion tables.
//!
//! - Tabular inputs (Parquet, CSV with a header, newline-delimited JSON; a file, folder or
//!   glob) are registered as listing tables; local Parquet as a [`LocalParquetTable`], read
//!   page by page so memory does not grow with the files' row groups.
//! - Local tables with columns from their file paths (`path_column`, a `partition_format`) or
//!   CSV with `header: from_first_file` become a [`PathColumnsTable`].
//! - File datasets become a [`FileListingTable`] of `(path, size, modified)`, local
//!   ([`FileListing`]) or on object storage ([`remote_files::RemoteFiles`]).
//! - `sql:` inputs are views over the others.
//!
//! Every input is read as ONE ordered stream: the job's session scans with one partition and
//! no repartitioning, and listing tables visit their files sorted by path. That is what makes
//! mini-batch ids independent of the number of workers.
//!
//! Which inputs are processed: every input that no `sql:` input reads from. (An input used by
//! a query is a table for that query, not a job input of its own.)

pub mod file_scan;
pub mod files;
pub mod formats;
pub mod local_files;
pub mod local_parquet;
pub mod path_columns;
pub mod remote;
pub mod remote_files;

pub use crate::session::{default_memory_limit, job_session, job_session_with};
pub use file_scan::{
    parts_fingerprint, read_parts, FilePart, FileScan, PartRange, PartsInFiles, PartsReader,
    ScanCut, ScanSource,
};
pub use files::{files_schema, FileEntry, FileListingTable, FileSource};
pub use formats::{listing_options, usual_extension};
pub use local_files::FileListing;
pub use local_parquet::{
    footer_cut, footer_fingerprint, read_rows, FileRows, LocalParquetExec, LocalParquetFactory,
    LocalParquetTable, ParquetFile, RowGroupSize, RowLocator, RowsInFiles, RowsReader,
};
pub use path_columns::{PathColumnsInput, PathColumnsTable};

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result as DFResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{Partitioning, PlanProperties};
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::batch::ItemKind;
use crate::config::{CsvHeader, CsvOptions, InputFormat, InputSource, InputSpec, JobSpec};
use crate::error::{PrsError, Result};
use crate::exec::InputInfo;
use crate::storage::{is_object_url, StorageContext, StorageOptions};

/// Where a cluster executor reads a mini-batch's rows itself (its descriptor), instead of
/// receiving them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// Rows of a local Parquet input ([`LocalParquetTable`]).
    Rows(RowsInFiles),
    /// Parts of the files of a DataFusion file scan ([`FileScan`]).
    Parts(PartsInFiles),
}

/// An input ready to be processed: its logical plan and what the operator needs to know.
#[derive(Debug, Clone)]
pub struct PreparedInput {
    /// Name and item kind.
    pub info: InputInfo,
    /// The plan producing its rows.
    pub plan: LogicalPlan,
}

/// The plan properties of an input's leaf operator: one partition producing `schema`'s rows
/// incrementally, bounded.
pub(crate) fn leaf_properties(schema: SchemaRef) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(1),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// The `ExecutionPlan` methods an input's leaf operator (a struct with a `properties:
/// Arc<PlanProperties>` field, see [`leaf_properties`]) has in common: its name, no children,
/// no expressions, nothing to replace.
macro_rules! leaf_plan_methods {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &::std::sync::Arc<::datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn children(
            &self,
        ) -> Vec<&::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>> {
            Vec::new()
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &::std::sync::Arc<dyn ::datafusion::physical_expr::PhysicalExpr>,
            ) -> ::datafusion::error::Result<
                ::datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> ::datafusion::error::Result<::datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(::datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        fn with_new_children(
            self: ::std::sync::Arc<Self>,
            _children: Vec<::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>>,
        ) -> ::datafusion::error::Result<
            ::std::sync::Arc<dyn ::datafusion::physical_plan::ExecutionPlan>,
        > {
            Ok(self)
        }
    };
}
pub(crate) use leaf_plan_methods;

/// A stream of items made by `produce` on a blocking thread (file system work), through a
/// channel of two items: backpressure keeps memory bounded. `produce` sends with
/// `blocking_send` and stops when that fails (the stream was dropped).
pub(crate) fn blocking_items<T: Send + 'static>(
    produce: impl FnOnce(mpsc::Sender<T>) + Send + 'static,
) -> BoxStream<'static, T> {
    let (tx, rx) = mpsc::channel::<T>(2);
    let task = datafusion::common::runtime::SpawnedTask::spawn_blocking(move || produce(tx));
    futures::stream::unfold((rx, task), |(mut rx, task)| async move {
        rx.recv().await.map(|item| (item, (rx, task)))
    })
    .boxed()
}

/// [`blocking_items`] of record batches in `schema`.
pub(crate) fn blocking_stream(
    schema: SchemaRef,
    produce: impl FnOnce(mpsc::Sender<DFResult<RecordBatch>>) + Send + 'static,
) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        blocking_items(produce),
    ))
}

/// `spec` with its MLTable inputs on object storage expanded: each MLTable file fetched with
/// the job's storage options and read (see `JobSpec::with_remote_mltables`). A job without
/// them is returned as it is. A file that cannot be fetched is an error naming the input's
/// `path`, the store and the object.
pub async fn resolve_remote_mltables(spec: &JobSpec) -> Result<JobSpec> {
    if spec.remote_mltables.is_empty() {
        return Ok(spec.clone());
    }
    let storage = StorageContext::new(spec.storage_options.clone(), None);
    let mut texts = Vec::with_capacity(spec.remote_mltables.len());
    for remote in &spec.remote_mltables {
        let field = format!("{}.path", remote.field);
        let url = remote.file_url();
        let location = crate::storage::ObjectLocation::parse(&field, &url)?;
        let store = storage.store(&location)?;
        let fetch = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => PrsError::config(
                &field,
                &remote.url,
                format!("holds no MLTable file ({url} does not exist): give the MLTable folder"),
            ),
            e => crate::storage::storage_error(&location, "GET", &url, &e, storage.options()),
        };
        let bytes = object_store::ObjectStoreExt::get(store.as_ref(), &location.prefix)
            .await
            .map_err(fetch)?
            .bytes()
            .await
            .map_err(fetch)?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
            PrsError::config(&field, &url, "is not a text file: not an MLTable file")
        })?;
        texts.push(text);
    }
    spec.clone().with_remote_mltables(&texts)
}

/// Registers every input as a table of `ctx` and returns the processed ones, in job order.
/// Inputs on object storage use the stores configured by the environment alone (see
/// [`register_inputs_with`]).
pub async fn register_inputs(
    ctx: &SessionContext,
    specs: &[InputSpec],
) -> Result<Vec<PreparedInput>> {
    let storage = StorageContext::new(StorageOptions::default(), None);
    register_inputs_with(ctx, specs, &storage).await
}

/// [`register_inputs`] with the job's object storage: inputs at `s3://`, `az://`, ... URLs are
/// checked and registered through `storage` (tables read straight from the store, file
/// datasets downloaded ahead into its cache).
pub async fn register_inputs_with(
    ctx: &SessionContext,
    specs: &[InputSpec],
    storage: &StorageContext,
) -> Result<Vec<PreparedInput>> {
    let mut kinds = Vec::with_capacity(specs.len());
    for spec in specs {
        kinds.push(match &spec.source {
            InputSource::Path { path, format } if is_object_url(path) => {
                let unsupported = if spec.partition_format.is_some() {
                    Some("partition_format")
                } else if spec.path_column.is_some() && *format != InputFormat::Files {
                    Some("path_column (MLTable's include_path_column)")
                } else {
                    None
                };
                if let Some(what) = unsupported {
                    return Err(PrsError::Input {
                        input: spec.name.clone(),
                        location: path.clone(),
                        message: format!(
                            "{what} is not supported on object storage yet; read the files \
                             from a local copy, or remove it"
                        ),
                    });
                }
                remote::register_remote_input(storage, ctx, spec, path, *format).await?;
                Some(if *format == InputFormat::Files {
                    ItemKind::Files
                } else {
                    ItemKind::Rows
                })
            }
            InputSource::Path { path, format } => {
                register_path(ctx, spec, path, *format).await?;
                Some(if *format == InputFormat::Files {
                    ItemKind::Files
                } else {
                    ItemKind::Rows
                })
            }
            InputSource::Sql(_) => None,
        });
    }
    // Queries last, in order, so they can read path inputs and earlier queries.
    let mut referenced = BTreeSet::new();
    for spec in specs {
        if let InputSource::Sql(query) = &spec.source {
            let df = ctx.sql(query).await.map_err(|e| PrsError::Input {
                input: spec.name.clone(),
                location: "sql".into(),
                message: format!("the query does not plan: {e}"),
            })?;
            referenced.extend(scanned_tables(df.logical_plan()));
            ctx.register_table(spec.name.as_str(), df.into_view())?;
        }
    }
    let mut prepared = Vec::new();
    for (spec, kind) in specs.iter().zip(kinds) {
        if referenced.contains(&spec.name) {
            continue;
        }
        let plan = ctx.table(spec.name.as_str()).await?.into_unoptimized_plan();
        prepared.push(PreparedInput {
            info: match &spec.source {
                InputSource::Path { .. } => {
                    InputInfo::new(&spec.name, kind.unwrap_or(ItemKind::Rows))
                        .with_source(spec.clone())
                }
                InputSource::Sql(_) => InputInfo::new(&spec.name, kind.unwrap_or(ItemKind::Rows)),
            },
            plan,
        });
    }
    Ok(prepared)
}

/// Names of the tables a plan scans.
fn scanned_tables(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            names.insert(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

/// Registers the local input `spec` at `location`: a file dataset, a tabular input with
/// columns from its file paths ([`PathColumnsTable`]), local Parquet, or a listing table.
async fn register_path(
    ctx: &SessionContext,
    spec: &InputSpec,
    location: &str,
    format: InputFormat,
) -> Result<()> {
    let name = spec.name.as_str();
    let partition_format = spec.partition_format.as_deref();
    let input_error = |message: String| PrsError::Input {
        input: name.to_string(),
        location: location.to_string(),
        message,
    };
    if format == InputFormat::Files {
        let listing = FileListing::new(name, location, partition_format)?;
        ctx.register_table(name, Arc::new(FileListingTable::new(listing)))?;
        return Ok(());
    }
    let local = location.strip_prefix("file://").unwrap_or(location);
    let from_first_file = format == InputFormat::Csv && spec.csv.header == CsvHeader::FromFirstFile;
    if spec.path_column.is_some() || partition_format.is_some() || from_first_file {
        let table = PathColumnsTable::try_new(
            ctx,
            PathColumnsInput {
                name,
                location: local,
                format,
                csv: &spec.csv,
                path_column: spec.path_column.as_deref(),
                partition_format,
            },
        )
        .await?;
        let table = formats::csv_table(ctx, Arc::new(table), format, &spec.csv)?;
        ctx.register_table(name, table)?;
        return Ok(());
    }
    let is_url = local.contains("://");
    let mut table_path = local.to_string();
    // A single file: accept whatever its extension is. A folder: files with the format's usual
    // extension (use a glob for others).
    let mut extension = None;
    if !is_url && !local.contains(['*', '?', '[', '{']) {
        let path = Path::new(local);
        if !path.exists() {
            return Err(input_error(format!(
                "{local} does not exist; check the path (relative paths are relative to the job file)"
            )));
        }
        if path.is_file() {
            extension = Some(
                path.extension()
                    .map(|e| format!(".{}", e.to_string_lossy()))
                    .unwrap_or_default(),
            );
        } else if !table_path.ends_with('/') {
            table_path.push('/');
        }
    } else if !is_url {
        FileListing::require_files(name, local)?;
        extension = Some(String::new());
    }
    let extension = extension.as_deref().unwrap_or(usual_extension(format));
    let result = if format == InputFormat::Parquet && !is_url {
        // Local files: read page by page, whatever their row groups (see local_parquet.rs).
        match LocalParquetTable::try_new(&ctx.state(), &table_path, extension).await {
            Ok(table) => ctx.register_table(name, Arc::new(table)).map(|_| ()),
            Err(e) => Err(e),
        }
    } else {
        let options = listing_options(ctx, format, extension, &spec.csv)
            .ok_or_else(|| input_error("a file dataset is not a table".into()))?;
        register_listing(ctx, name, &table_path, options, format, &spec.csv).await
    };
    result.map_err(|e| input_error(format!("cannot read it as {format:?}: {e}")))?;
    Ok(())
}

/// Registers a listing table at `table_path` (as `SessionContext::register_listing_table`
/// does); CSV without a header row gets Azure's column names (`Column1`, ...) in place of
/// DataFusion's, and `empty_as_string` its view (see [`formats::csv_table`]).
async fn register_listing(
    ctx: &SessionContext,
    name: &str,
    table_path: &str,
    options: ListingOptions,
    format: InputFormat,
    csv: &CsvOptions,
) -> DFResult<()> {
    let table_path = ListingTableUrl::parse(table_path)?.with_table_ref(name.into());
    let inferred = options.infer_schema(&ctx.state(), &table_path).await?;
    let schema = if format == InputFormat::Csv {
        formats::csv_schema(inferred, csv)
    } else {
        inferred
    };
    let config = ListingTableConfig::new(table_path)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)?
        .with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
    ctx.register_table(name, formats::csv_table(ctx, Arc::new(table), format, csv)?)?;
    Ok(())
}
