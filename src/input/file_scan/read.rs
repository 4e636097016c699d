//! Reading a descriptor's file parts on an executor: the input's plan restricted to the
//! parts, opened from the input's declaration.

use std::collections::{HashMap, HashSet};

use datafusion::common::ScalarValue;

use super::*;

/// The columns an input's plan takes from its files' paths (`path_column`,
/// `partition_format`: the files' partition values), by file location, as the plan's own
/// listing gives them; none for a plan without such columns.
#[derive(Debug, Default)]
pub struct PathValues(Option<HashMap<String, Vec<ScalarValue>>>);

impl PathValues {
    /// The values of `plan`'s files (see [`FileScan::of`]).
    pub fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let Some(config) = scan_config(plan).filter(|c| !c.table_partition_cols().is_empty())
        else {
            return PathValues(None);
        };
        let values = config
            .file_groups
            .iter()
            .flat_map(|g| g.files())
            .map(|f| {
                (
                    f.object_meta.location.to_string(),
                    f.partition_values.clone(),
                )
            })
            .collect();
        PathValues(Some(values))
    }

    /// `file` (the file part at `location`) with its path values.
    fn apply(&self, location: &str, file: PartitionedFile) -> DFResult<PartitionedFile> {
        let Some(values) = &self.0 else {
            return Ok(file);
        };
        let found = values.get(location).ok_or_else(|| {
            DataFusionError::Execution(format!(
                "{location} is not among the input's files here: the input differs between \
                 the nodes or changed during the job"
            ))
        })?;
        Ok(file.with_partition_values(found.clone()))
    }
}

/// `plan` (an input's plan, see [`FileScan::of`]) reading only the file parts of `parts`,
/// each with its columns from `paths` (the plan's [`PathValues`]).
pub fn restricted(
    plan: &Arc<dyn ExecutionPlan>,
    parts: &PartsInFiles,
    paths: &PathValues,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let files = parts
        .parts
        .iter()
        .map(|part| paths.apply(&part.location, partitioned_file(part)))
        .collect::<DFResult<Vec<_>>>()?;
    let replaced = plan.clone().transform_down(|node| {
        let Some(source) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(config) = source.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let config = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(vec![FileGroup::new(files.clone())])
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
    made: Option<Made>,
}

/// What a [`PartsReader`] makes once: the input's plan, its session, its files' path values
/// and the files already checked against the driver's listing.
struct Made {
    ctx: SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    paths: PathValues,
    checked: HashSet<String>,
}

impl PartsReader {
    /// A reader of the input `source` declares (nothing is opened yet).
    pub fn new(source: ScanSource) -> Self {
        PartsReader { source, made: None }
    }

    /// The rows of `parts`, as one batch of `schema` (the columns the driver cut); the input's
    /// columns here must be the same.
    pub async fn read(&mut self, parts: &PartsInFiles, schema: &SchemaRef) -> Result<RecordBatch> {
        let made = match self.made.take() {
            Some(made) => made,
            None => self.make().await?,
        };
        let made = self.made.insert(made);
        let error = |message: String| PrsError::Input {
            input: self.source.input.name.clone(),
            location: "this executor".into(),
            message,
        };
        if made.plan.schema().fields() != schema.fields() {
            return Err(error(format!(
                "the input's columns here ({}) are not the driver's ({}): the input files \
                 differ between the nodes",
                describe_columns(&made.plan.schema()),
                describe_columns(schema)
            )));
        }
        read_parts_with(
            &made.plan,
            parts,
            schema,
            made.ctx.task_ctx(),
            &made.paths,
            &mut made.checked,
        )
        .await
        .map_err(|e| error(e.to_string()))
    }

    fn error(&self, message: String) -> PrsError {
        PrsError::Input {
            input: self.source.input.name.clone(),
            location: "this executor".into(),
            message,
        }
    }

    async fn make(&self) -> Result<Made> {
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
        Ok(Made {
            paths: PathValues::of(&plan),
            ctx,
            plan,
            checked: HashSet::new(),
        })
    }
}

/// Checks that `part`'s file is the one the driver listed: the same size, and the same
/// entity tag or modification time (at the precision the listing had).
async fn check_file(store: &dyn ObjectStore, part: &FilePart, local: bool) -> DFResult<()> {
    let path = object_store::path::Path::from(part.location.as_str());
    let meta = store.head(&path).await?;
    let modified = meta.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
    // Times compare at the precision the listing had: a local listing may keep
    // milliseconds; on object storage a listing gives milliseconds and a HEAD (an HTTP
    // date) whole seconds.
    const SECOND: u64 = 1_000_000_000;
    const MILLI: u64 = 1_000_000;
    let unit = match part.modified_ns {
        _ if !local => SECOND,
        listed if listed % SECOND == 0 => SECOND,
        listed if listed % MILLI == 0 => MILLI,
        _ => 1,
    };
    let same = meta.size == part.size
        && match &part.e_tag {
            Some(tag) => meta.e_tag.as_ref() == Some(tag),
            None => modified / unit == part.modified_ns / unit,
        };
    if same {
        return Ok(());
    }
    Err(DataFusionError::Execution(format!(
        "{} changed after the job was cut (size {}, modified {} ns, entity tag {:?}; listed \
         with {}, {} ns, {:?}): inputs must not change while a job runs, and must be the same \
         on every node",
        part.location, meta.size, modified, meta.e_tag, part.size, part.modified_ns, part.e_tag
    )))
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
/// after checking each file is the one the driver listed (size and modification time or
/// entity tag, one HEAD each); the rows read must be the descriptor's count.
pub async fn read_parts(
    plan: &Arc<dyn ExecutionPlan>,
    parts: &PartsInFiles,
    schema: &SchemaRef,
    context: Arc<TaskContext>,
) -> DFResult<RecordBatch> {
    let paths = PathValues::of(plan);
    read_parts_with(plan, parts, schema, context, &paths, &mut HashSet::new()).await
}

/// [`read_parts`] with `plan`'s [`PathValues`] made once, and `checked`: the files already
/// checked (not asked again; each file checked is added).
async fn read_parts_with(
    plan: &Arc<dyn ExecutionPlan>,
    parts: &PartsInFiles,
    schema: &SchemaRef,
    context: Arc<TaskContext>,
    paths: &PathValues,
    checked: &mut HashSet<String>,
) -> DFResult<RecordBatch> {
    let url = ObjectStoreUrl::parse(&parts.store)?;
    let store = context.runtime_env().object_store(&url)?;
    let local = parts.store.starts_with("file://");
    for part in &parts.parts {
        if checked.contains(&part.location) {
            continue;
        }
        check_file(store.as_ref(), part, local).await?;
        checked.insert(part.location.clone());
    }
    let restricted = restricted(plan, parts, paths)?;
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
