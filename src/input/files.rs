//! File datasets: a folder of files as a table of `(path, size, modified)` plus key columns
//! taken from the paths.
//!
//! One table ([`FileListingTable`]) and one operator ([`FileListingExec`]) list every file
//! dataset; a [`FileSource`] says where the entries come from: a local folder or glob
//! ([`FileListing`], sorted by path) or object storage
//! ([`RemoteFiles`](crate::input::remote_files::RemoteFiles), in listing order, each file
//! downloaded ahead so that `path` is a local file). Entries stream in chunks: the first
//! mini-batch can start before a large folder is fully listed.

use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::error::{PrsError, Result};

pub use crate::input::local_files::FileListing;

/// Most entries per chunk (and rows per batch) of a listing.
pub const LISTING_BATCH: usize = 1024;

static FILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| listing_schema(&[]));

/// The columns of a file dataset that need a stat() of every file (indices 1 and 2 of
/// [`files_schema`]).
pub const FILE_METADATA_COLUMNS: [&str; 2] = ["size", "modified"];

/// Schema of a file dataset: `path` (Utf8), `size` (UInt64), `modified` (UTC timestamp, ms).
pub fn files_schema() -> SchemaRef {
    FILES_SCHEMA.clone()
}

/// The schema of a listing: `path`, `size`, `modified`, then one Utf8 column per key.
fn listing_schema(keys: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new(
            "modified",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ];
    fields.extend(keys.iter().map(|n| Field::new(n, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's local path (a download, for a dataset on object storage).
    pub path: String,
    /// Its size in bytes (0 when the listing was asked for no metadata).
    pub size: u64,
    /// Its modification time, ms since the Unix epoch (None: not known or not asked for).
    pub modified: Option<i64>,
    /// The values of the source's key columns, in [`FileSource::key_names`] order.
    pub keys: Vec<Option<String>>,
}

/// Where a file dataset's entries come from.
pub trait FileSource: fmt::Debug + Send + Sync + 'static {
    /// The location listed, as the user gave it (shown by EXPLAIN).
    fn location(&self) -> String;

    /// Names of the key columns taken from the paths (after `path`, `size`, `modified`).
    fn key_names(&self) -> &[String] {
        &[]
    }

    /// Settings shown by EXPLAIN after the location, as `(name, value)`.
    fn settings(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The entries, in the dataset's order, in chunks of at most [`LISTING_BATCH`]. Without
    /// `metadata` nobody reads `size` and `modified`: a source may leave them 0 and None
    /// rather than stat() every file.
    fn entries(self: Arc<Self>, metadata: bool) -> BoxStream<'static, Result<Vec<FileEntry>>>;
}

/// The rows of `entries` in `schema` (a [`listing_schema`]).
fn entries_batch(schema: &SchemaRef, entries: &[FileEntry]) -> DFResult<RecordBatch> {
    let keys = schema.fields().len().saturating_sub(3);
    let mut paths = StringBuilder::new();
    let mut sizes = UInt64Builder::with_capacity(entries.len());
    let mut modified = TimestampMillisecondBuilder::with_capacity(entries.len());
    let mut values: Vec<StringBuilder> = (0..keys).map(|_| StringBuilder::new()).collect();
    for entry in entries {
        paths.append_value(&entry.path);
        sizes.append_value(entry.size);
        modified.append_option(entry.modified);
        for (i, builder) in values.iter_mut().enumerate() {
            builder.append_option(entry.keys.get(i).cloned().flatten());
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(paths.finish()),
        Arc::new(sizes.finish()),
        Arc::new(modified.finish().with_timezone("UTC")),
    ];
    columns.extend(values.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A file dataset as a DataFusion table.
#[derive(Debug)]
pub struct FileListingTable {
    source: Arc<dyn FileSource>,
    schema: SchemaRef,
}

impl FileListingTable {
    /// A table over the entries of `source`.
    pub fn new(source: impl FileSource) -> Self {
        let schema = listing_schema(source.key_names());
        FileListingTable {
            source: Arc::new(source),
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for FileListingTable {
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
        Ok(Arc::new(FileListingExec::new(
            self.source.clone(),
            self.schema.clone(),
            projection.cloned(),
        )))
    }
}

/// Streams the entries of a [`FileSource`] as record batches (one partition).
pub struct FileListingExec {
    source: Arc<dyn FileSource>,
    /// The table's schema (before the projection).
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for FileListingExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileListingExec({})", self.source.location())
    }
}

impl FileListingExec {
    fn new(source: Arc<dyn FileSource>, schema: SchemaRef, projection: Option<Vec<usize>>) -> Self {
        let projected = match &projection {
            Some(p) => Arc::new(
                schema
                    .project(p)
                    .unwrap_or_else(|_| schema.as_ref().clone()),
            ),
            None => schema.clone(),
        };
        let properties = crate::input::leaf_properties(projected);
        FileListingExec {
            source,
            schema,
            projection,
            properties,
        }
    }

    /// Whether the projection keeps `size` or `modified`.
    fn needs_metadata(&self) -> bool {
        self.projection.as_ref().is_none_or(|p| {
            p.iter().any(|&i| {
                self.schema
                    .fields()
                    .get(i)
                    .is_some_and(|f| FILE_METADATA_COLUMNS.contains(&f.name().as_str()))
            })
        })
    }
}

impl DisplayAs for FileListingExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let location = self.source.location();
        let settings = self.source.settings();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "FileListingExec: location={location}")?;
                for (name, value) in settings {
                    write!(f, ", {name}={value}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                writeln!(f, "location={location}")?;
                for (name, value) in settings {
                    writeln!(f, "{name}={value}")?;
                }
                Ok(())
            }
        }
    }
}

impl ExecutionPlan for FileListingExec {
    crate::input::leaf_plan_methods!("FileListingExec");

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let projection = self.projection.clone();
        let stream = self
            .source
            .clone()
            .entries(self.needs_metadata())
            .map(move |entries| {
                let batch = entries_batch(&schema, &entries.map_err(PrsError::into_datafusion)?)?;
                match &projection {
                    Some(p) => batch.project(p).map_err(DataFusionError::from),
                    None => Ok(batch),
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.properties.eq_properties.schema().clone(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt64Array};
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    /// Two chunks of entries with the values of one key column.
    #[derive(Debug, Default)]
    struct Fixed {
        keys: Vec<String>,
    }

    impl FileSource for Fixed {
        fn location(&self) -> String {
            "fixed://x".into()
        }
        fn key_names(&self) -> &[String] {
            &self.keys
        }
        fn settings(&self) -> Vec<(&'static str, String)> {
            vec![("prefetch", "2 files".into())]
        }
        fn entries(self: Arc<Self>, _metadata: bool) -> BoxStream<'static, Result<Vec<FileEntry>>> {
            let entry = |path: &str, key: Option<&str>| FileEntry {
                path: path.into(),
                size: 3,
                modified: Some(1_000),
                keys: vec![key.map(str::to_string)],
            };
            let chunks = vec![
                Ok(vec![entry("a", Some("fr")), entry("b", None)]),
                Ok(vec![entry("c", Some("de"))]),
            ];
            futures::stream::iter(chunks).boxed()
        }
    }

    #[tokio::test]
    async fn one_table_streams_any_source_with_its_keys_and_projection() {
        let ctx = SessionContext::new();
        let table = FileListingTable::new(Fixed {
            keys: vec!["country".into()],
        });
        ctx.register_table("t", Arc::new(table)).unwrap();
        let names = |b: &RecordBatch| -> Vec<String> {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        };
        let all = ctx.table("t").await.unwrap().collect().await.unwrap();
        assert_eq!(all.len(), 2, "one batch per chunk");
        assert_eq!(names(&all[0]), ["path", "size", "modified", "country"]);
        let sizes = all[0]
            .column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(sizes.values().to_vec(), [3, 3]);
        let keys = all[0]
            .column(3)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(keys.iter().collect::<Vec<_>>(), [Some("fr"), None]);

        let paths = ctx
            .sql("SELECT path, country FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(names(&paths[0]), ["path", "country"]);

        let plan = ctx
            .sql("SELECT path FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        assert!(
            text.contains("FileListingExec: location=fixed://x, prefetch=2 files"),
            "{text}"
        );
    }

    #[test]
    fn metadata_is_asked_for_only_when_projected() {
        let schema = listing_schema(&["k".to_string()]);
        let source: Arc<dyn FileSource> = Arc::new(Fixed::default());
        let exec = |projection: Option<Vec<usize>>| {
            FileListingExec::new(source.clone(), schema.clone(), projection).needs_metadata()
        };
        assert!(exec(None));
        assert!(exec(Some(vec![0, 1])));
        assert!(exec(Some(vec![2])));
        assert!(!exec(Some(vec![0, 3])));
        assert_eq!(files_schema().fields().len(), 3);
    }
}
