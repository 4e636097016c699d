//! File datasets: a folder or glob as a table of `(path, size, modified)`.
//!
//! Listing streams: entries are produced while the walk goes on, so the first mini-batch can
//! start before a large folder is fully listed. The order is deterministic: each folder's
//! entries are visited sorted by name (depth first), which gives paths in sorted order. (A
//! folder's own entries are read in full to sort them; sub-folders are walked lazily.)

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use globset::{GlobBuilder, GlobMatcher};
use tokio::sync::mpsc;

use crate::error::{PrsError, Result};

/// Entries per listing batch.
const LISTING_BATCH: usize = 1024;

static FILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new(
            "modified",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
});

/// Schema of a file dataset: `path` (Utf8), `size` (UInt64), `modified` (UTC timestamp, ms).
pub fn files_schema() -> SchemaRef {
    FILES_SCHEMA.clone()
}

/// What to list: a single file, a folder (recursively), or a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileListing {
    input: String,
    root: PathBuf,
    pattern: Option<String>,
}

impl FileListing {
    /// A listing for input `input` at `location` (a local file, folder or glob). Errors when
    /// nothing exists at the location's fixed part.
    pub fn new(input: &str, location: &str) -> Result<Self> {
        let location = location.strip_prefix("file://").unwrap_or(location);
        let (root, pattern) = split_glob(location);
        if !root.exists() {
            return Err(PrsError::Input {
                input: input.to_string(),
                location: location.to_string(),
                message: format!("{} does not exist; check the path (relative paths are relative to the job file)", root.display()),
            });
        }
        if let Some(p) = &pattern {
            glob_matcher(p).map_err(|message| PrsError::Input {
                input: input.into(),
                location: location.into(),
                message,
            })?;
        }
        Ok(FileListing {
            input: input.to_string(),
            root,
            pattern,
        })
    }

    /// Walks the listing, calling `emit` with batches of entries in sorted path order until it
    /// returns false.
    pub fn walk(&self, mut emit: impl FnMut(RecordBatch) -> bool) -> Result<()> {
        let matcher = match &self.pattern {
            Some(p) => Some(glob_matcher(p).map_err(|message| self.error(message))?),
            None => None,
        };
        let mut batch = ListingBatch::default();
        let walker = walkdir::WalkDir::new(&self.root)
            .follow_links(true)
            .sort_by_file_name();
        for entry in walker {
            let entry = entry.map_err(|e| self.error(format!("listing failed: {e}")))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.path();
            if let Some(m) = &matcher {
                if !m.is_match(path) {
                    continue;
                }
            }
            let meta = entry
                .metadata()
                .map_err(|e| self.error(format!("{}: {e}", path.display())))?;
            batch.push(path, &meta);
            if batch.len == LISTING_BATCH && !emit(batch.finish()?) {
                return Ok(());
            }
        }
        if batch.len > 0 {
            emit(batch.finish()?);
        }
        Ok(())
    }

    fn error(&self, message: String) -> PrsError {
        PrsError::Input {
            input: self.input.clone(),
            location: self.location(),
            message,
        }
    }

    fn location(&self) -> String {
        match &self.pattern {
            Some(p) => p.clone(),
            None => self.root.display().to_string(),
        }
    }
}

/// Splits `a/b/*.txt` into the folder to walk (`a/b`) and the full glob, or returns the
/// path itself when it has no glob characters.
fn split_glob(location: &str) -> (PathBuf, Option<String>) {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(location) {
        return (PathBuf::from(location), None);
    }
    let mut root = PathBuf::new();
    for component in Path::new(location).components() {
        let text = component.as_os_str().to_string_lossy();
        if is_glob(&text) {
            break;
        }
        root.push(component);
    }
    if root.as_os_str().is_empty() {
        root.push(".");
    }
    (root, Some(location.to_string()))
}

fn glob_matcher(pattern: &str) -> std::result::Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

#[derive(Default)]
struct ListingBatch {
    paths: StringBuilder,
    sizes: UInt64Builder,
    modified: TimestampMillisecondBuilder,
    len: usize,
}

impl ListingBatch {
    fn push(&mut self, path: &Path, meta: &std::fs::Metadata) {
        self.paths.append_value(path.to_string_lossy());
        self.sizes.append_value(meta.len());
        let ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        self.modified.append_option(ms);
        self.len += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        self.len = 0;
        let modified = self.modified.finish().with_timezone("UTC");
        Ok(RecordBatch::try_new(
            files_schema(),
            vec![
                Arc::new(self.paths.finish()),
                Arc::new(self.sizes.finish()),
                Arc::new(modified),
            ],
        )?)
    }
}

/// A file dataset as a DataFusion table.
#[derive(Debug)]
pub struct FileListingTable {
    listing: Arc<FileListing>,
}

impl FileListingTable {
    /// A table over `listing`.
    pub fn new(listing: FileListing) -> Self {
        FileListingTable {
            listing: Arc::new(listing),
        }
    }
}

#[async_trait]
impl TableProvider for FileListingTable {
    fn schema(&self) -> SchemaRef {
        files_schema()
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
            self.listing.clone(),
            projection.cloned(),
        )))
    }
}

/// Streams a [`FileListing`] as record batches (one partition).
pub struct FileListingExec {
    listing: Arc<FileListing>,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for FileListingExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileListingExec({})", self.listing.location())
    }
}

impl FileListingExec {
    fn new(listing: Arc<FileListing>, projection: Option<Vec<usize>>) -> Self {
        let schema = match &projection {
            Some(p) => Arc::new(
                files_schema()
                    .project(p)
                    .unwrap_or_else(|_| files_schema().as_ref().clone()),
            ),
            None => files_schema(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        FileListingExec {
            listing,
            projection,
            properties,
        }
    }
}

impl DisplayAs for FileListingExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FileListingExec: location={}", self.listing.location())
    }
}

impl ExecutionPlan for FileListingExec {
    fn name(&self) -> &str {
        "FileListingExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let (tx, rx) = mpsc::channel::<DFResult<RecordBatch>>(2);
        let listing = self.listing.clone();
        let projection = self.projection.clone();
        // The walk blocks on the file system: run it on a blocking thread, feeding a small
        // channel (backpressure keeps at most a few batches of entries in memory).
        let task = datafusion::common::runtime::SpawnedTask::spawn_blocking(move || {
            let result = listing.walk(|batch| {
                let batch = match &projection {
                    Some(p) => batch.project(p).map_err(DataFusionError::from),
                    None => Ok(batch),
                };
                tx.blocking_send(batch).is_ok()
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e.into_datafusion()));
            }
        });
        let stream = futures::stream::unfold((rx, task), |(mut rx, task)| async move {
            rx.recv().await.map(|item| (item, (rx, task)))
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

    #[test]
    fn splits_globs() {
        assert_eq!(
            split_glob("a/b/*.txt"),
            (PathBuf::from("a/b"), Some("a/b/*.txt".into()))
        );
        assert_eq!(split_glob("a/b"), (PathBuf::from("a/b"), None));
        assert_eq!(
            split_glob("*.txt"),
            (PathBuf::from("."), Some("*.txt".into()))
        );
    }

    #[test]
    fn lists_sorted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.txt", "a.txt", "c.bin", "sub/z.txt", "sub/a.txt"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, name).unwrap();
        }
        let collect = |listing: FileListing| {
            let mut paths = Vec::new();
            listing
                .walk(|b| {
                    let col = b
                        .column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .unwrap();
                    paths.extend(col.iter().map(|p| p.unwrap().to_string()));
                    true
                })
                .unwrap();
            paths
        };
        let root = dir.path().to_str().unwrap();
        let all = collect(FileListing::new("f", root).unwrap());
        let rel: Vec<_> = all
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string())
            .collect();
        assert_eq!(
            rel,
            ["/a.txt", "/b.txt", "/c.bin", "/sub/a.txt", "/sub/z.txt"]
        );
        let txt = collect(FileListing::new("f", &format!("{root}/*.txt")).unwrap());
        assert_eq!(txt.len(), 2);
        assert!(FileListing::new("f", &format!("{root}/missing")).is_err());
    }
}
