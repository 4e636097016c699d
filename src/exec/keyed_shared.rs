//! `partition_keys` on a cluster: the hash repartition is a stage of the plan, and each task
//! cuts one mini-batch per key from its sorted partitions ([`ExecMode::Keyed`]).
//!
//! The plan of one keyed input (Ballista cuts a stage at the hash repartition):
//! ```text
//! ParallelRunExec[keyed]                      partitions = P, one child per input
//!   SortExec(keys, row, preserve_partitioning)
//!     RepartitionExec(Hash(keys), P)          <- stage boundary (shuffle write / read)
//!       KeyedReadExec                         partition-preserving: reads its chunks' rows
//!         DataSourceExec(MemorySourceConfig)  the driver's row chunks, dealt in P runs
//! ```
//! The driver cuts each input into *row chunks* that know the input row they start at
//! ([`RowChunk`]): a local Parquet input as row ranges and the files holding them (from the
//! footers, nothing read), any other input with its rows. [`KeyedReadExec`] reads a
//! chunk's rows on the executor and numbers them as a local run does ([`ROW_ID`]: the row's
//! position in the input), so after the shuffle and the sort each key's rows come in input
//! order, the key's first row number is the local run's, and the mini-batch's id, lineage
//! and slice fingerprint are those of a local run. Ballista restricts both leaves to a
//! task's partitions (the chunk leaf in the first stage, the shuffle readers in the second).
//!
//! The second stage's tasks commit through the shared store as manifest tasks do
//! ([`crate::exec::shared`]), skipping keys already recorded (an earlier try of the task)
//! and keys a resumed job committed before (checked against their fingerprints). The driver
//! does not know the keys in advance: it knows every input's row count, and a job is
//! complete when the Ballista job succeeded and the records (with the resumed job's skipped
//! mini-batches) hold every row of every input (see `cluster::keyed`).
//!
//! [`ExecMode::Keyed`]: crate::exec::ExecMode::Keyed

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::batch::{slice_fingerprint, ItemKind, KeyChunker, MiniBatch};
use crate::error::{PrsError, Result};
use crate::exec::dispatch::{Dispatched, EngineMemoryPool, InputInfo};
use crate::exec::keyed::{check_keys, ROW_ID};
use crate::exec::manifest::{batch_from_ipc, ipc_bytes};
use crate::exec::recut::local_scan;
use crate::exec::shared::SharedStaging;
use crate::exec::state::JobState;
use crate::input::remote_files::ExecutorFiles;
use crate::input::{
    FileScan, PartsInFiles, PartsReader, ReadFrom, RowsInFiles, RowsReader, ScanSource,
};

/// The most bytes of rows a keyed job's inputs carry in the plan (the inputs not read by the
/// executors as row ranges or file parts travel with their rows): Ballista's gRPC messages are limited to
/// 16 MiB, and the plan has more than these rows in it. (An unkeyed job's manifest has no
/// such cap: it goes to the shared staging area in segments.)
pub const CARRIED_LIMIT_BYTES: usize = 12 * 1024 * 1024;

/// Rows of one chunk of a local Parquet input (what one read of an executor covers).
pub const CHUNK_ROWS: u64 = 64 * 1024;

/// Bytes of one chunk of an input that travels with its rows.
const CHUNK_BYTES: usize = 1024 * 1024;

/// A run of consecutive rows of a keyed input, starting at input row `first_row`.
#[derive(Debug, Clone)]
pub struct RowChunk {
    /// The input row its first row is.
    pub first_row: u64,
    /// Its rows: read by the executor, or carried.
    pub rows: ChunkRows,
}

/// Where a [`RowChunk`]'s rows are.
#[derive(Debug, Clone)]
pub enum ChunkRows {
    /// In local Parquet files every node sees.
    Read(RowsInFiles),
    /// In parts of the files of a declared input (CSV and JSON byte ranges, Parquet on
    /// object storage).
    Parts(PartsInFiles),
    /// Here (the rows themselves).
    Carried(RecordBatch),
}

/// A keyed input cut by the driver: its chunks in input order, and its row count.
#[derive(Debug)]
pub struct CutInput {
    /// The chunks, in input order.
    pub chunks: Vec<RowChunk>,
    /// Rows of the whole input.
    pub rows: u64,
    /// Bytes the carried rows take in the plan.
    pub carried_bytes: usize,
}

/// The schema of the chunk leaf: first row, where to read (JSON) or the rows (IPC).
pub fn chunk_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("first_row", DataType::UInt64, false),
        Field::new("read", DataType::Utf8, true),
        Field::new("rows", DataType::Binary, true),
    ]))
}

/// Cuts input `info` (read through `plan`) into row chunks: a local Parquet input from its
/// footers (nothing is read), a declared CSV, JSON or Parquet-through-a-store input into file
/// parts (its text scanned for record ends, or its footers), any other input by reading it
/// here in order.
pub async fn cut_rows(
    plan: &Arc<dyn ExecutionPlan>,
    info: &InputInfo,
    context: &Arc<TaskContext>,
) -> Result<CutInput> {
    if let Some(scan) = local_scan(plan) {
        let locator = scan.locator();
        let rows = locator.rows();
        let chunks = (0..rows)
            .step_by(CHUNK_ROWS as usize)
            .map(|start| RowChunk {
                first_row: start,
                rows: ChunkRows::Read(locator.locate(start..(start + CHUNK_ROWS).min(rows))),
            })
            .collect();
        return Ok(CutInput {
            chunks,
            rows,
            carried_bytes: 0,
        });
    }
    if let Some(scan) = FileScan::of(plan).filter(|_| info.source.is_some()) {
        let cut = scan
            .cut(context, &plan.schema(), CHUNK_BYTES as u64)
            .await
            .map_err(|e| PrsError::Input {
                input: info.name.clone(),
                location: "cutting the input for the cluster".into(),
                message: e.to_string(),
            })?;
        let chunks: Vec<RowChunk> = (0..cut.len())
            .filter_map(|seq| cut.parts(seq))
            .map(|parts| RowChunk {
                first_row: parts.rows.start,
                rows: ChunkRows::Parts(parts),
            })
            .collect();
        let rows = chunks.last().map_or(0, |c| match &c.rows {
            ChunkRows::Parts(parts) => parts.rows.end,
            _ => 0,
        });
        return Ok(CutInput {
            chunks,
            rows,
            carried_bytes: 0,
        });
    }
    let schema = plan.schema();
    let mut chunks = Vec::new();
    let (mut rows, mut carried_bytes) = (0u64, 0usize);
    let mut pending: Vec<RecordBatch> = Vec::new();
    let (mut pending_rows, mut pending_bytes) = (0u64, 0usize);
    let mut flush = |pending: &mut Vec<RecordBatch>, first_row: u64| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let batch = crate::batch::compact_concat(&schema, pending)?;
        pending.clear();
        carried_bytes += batch.get_array_memory_size();
        if carried_bytes > CARRIED_LIMIT_BYTES {
            return Err(PrsError::config(
                "compute_target",
                &info.name,
                format!(
                    "input {:?} of this partition_keys job travels with its rows (only inputs \
                     declared as Parquet, CSV or JSON files are read by the executors \
                     themselves), and it is larger than the {} MiB a cluster plan carries: \
                     declare it as files (not a sql: input), or run the job \
                     locally (compute_target: local)",
                    info.name,
                    CARRIED_LIMIT_BYTES / (1024 * 1024)
                ),
            ));
        }
        chunks.push(RowChunk {
            first_row,
            rows: ChunkRows::Carried(batch),
        });
        Ok(())
    };
    for partition in 0..plan.output_partitioning().partition_count() {
        let mut stream = plan.execute(partition, context.clone())?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| PrsError::Input {
                input: info.name.clone(),
                location: "scan (cutting the input for the cluster)".into(),
                message: e.to_string(),
            })?;
            pending_rows += batch.num_rows() as u64;
            pending_bytes += batch.get_array_memory_size();
            pending.push(batch);
            if pending_bytes >= CHUNK_BYTES {
                flush(&mut pending, rows)?;
                rows += pending_rows;
                (pending_rows, pending_bytes) = (0, 0);
            }
        }
    }
    flush(&mut pending, rows)?;
    rows += pending_rows;
    Ok(CutInput {
        chunks,
        rows,
        carried_bytes,
    })
}

/// The chunk leaf of `chunks`: dealt in contiguous runs into `partitions` partitions.
pub fn chunk_leaf(chunks: &[RowChunk], partitions: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions = partitions.max(1);
    let total = chunks.len();
    let mut dealt: Vec<Vec<&RowChunk>> = vec![Vec::new(); partitions];
    for (i, chunk) in chunks.iter().enumerate() {
        dealt[i * partitions / total.max(1)].push(chunk);
    }
    let mut batches = Vec::with_capacity(partitions);
    for part in dealt {
        if part.is_empty() {
            batches.push(Vec::new());
        } else {
            batches.push(vec![chunk_batch(&part)?]);
        }
    }
    Ok(
        datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &batches,
            chunk_schema(),
            None,
        )?,
    )
}

fn chunk_batch(chunks: &[&RowChunk]) -> Result<RecordBatch> {
    let mut first = Vec::with_capacity(chunks.len());
    let mut reads: Vec<Option<String>> = Vec::with_capacity(chunks.len());
    let mut rows: Vec<Option<Vec<u8>>> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        first.push(chunk.first_row);
        match &chunk.rows {
            ChunkRows::Read(read) => {
                reads.push(Some(chunk_json(&ReadFrom::Rows(read.clone()))?));
                rows.push(None);
            }
            ChunkRows::Parts(parts) => {
                reads.push(Some(chunk_json(&ReadFrom::Parts(parts.clone()))?));
                rows.push(None);
            }
            ChunkRows::Carried(batch) => {
                reads.push(None);
                rows.push(Some(ipc_bytes(batch)?));
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(first)),
        Arc::new(StringArray::from(reads)),
        Arc::new(BinaryArray::from(
            rows.iter().map(|r| r.as_deref()).collect::<Vec<_>>(),
        )),
    ];
    Ok(RecordBatch::try_new(chunk_schema(), columns)?)
}

fn chunk_json(read: &ReadFrom) -> Result<String> {
    serde_json::to_string(read).map_err(|e| chunk_error(format!("a chunk cannot be encoded: {e}")))
}

fn read_chunks(batch: &RecordBatch) -> Result<Vec<RowChunk>> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| chunk_error(format!("the chunk leaf has no column {name:?}")))
    };
    let first = column("first_row")?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| chunk_error("first_row is not UInt64".into()))?;
    let reads = column("read")?
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| chunk_error("read is not Utf8".into()))?;
    let rows = column("rows")?
        .as_any()
        .downcast_ref::<BinaryArray>()
        .ok_or_else(|| chunk_error("rows is not Binary".into()))?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let chunk_rows = if reads.is_valid(i) {
            match serde_json::from_str(reads.value(i))
                .map_err(|e| chunk_error(format!("bad chunk: {e}")))?
            {
                ReadFrom::Rows(read) => ChunkRows::Read(read),
                ReadFrom::Parts(parts) => ChunkRows::Parts(parts),
            }
        } else {
            ChunkRows::Carried(batch_from_ipc(rows.value(i))?)
        };
        out.push(RowChunk {
            first_row: first.value(i),
            rows: chunk_rows,
        });
    }
    Ok(out)
}

fn chunk_error(message: String) -> PrsError {
    PrsError::Output {
        path: "partition_keys row chunks (cluster plan)".into(),
        message: format!(
            "{message}: the driver and this executor run different parallel-run versions?"
        ),
    }
}

/// The plan of one keyed input on a cluster: its chunk leaf read and numbered
/// ([`KeyedReadExec`]), hash-repartitioned on `keys` into `partitions`, and each partition
/// sorted on (keys, row number).
pub fn keyed_input_plan(
    leaf: Arc<dyn ExecutionPlan>,
    input: &str,
    schema: SchemaRef,
    source: Option<ScanSource>,
    keys: &[String],
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    check_keys(input, &schema, keys)?;
    let read: Arc<dyn ExecutionPlan> =
        Arc::new(KeyedReadExec::new(leaf, input, schema).with_source(source));
    let numbered = read.schema();
    let column = |name: &str| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Column::new_with_schema(name, &numbered)?))
    };
    let hash = keys.iter().map(|k| column(k)).collect::<Result<Vec<_>>>()?;
    let repartition = Arc::new(RepartitionExec::try_new(
        read,
        Partitioning::Hash(hash, partitions.max(1)),
    )?);
    let mut order: Vec<PhysicalSortExpr> = keys
        .iter()
        .map(|k| column(k).map(PhysicalSortExpr::new_default))
        .collect::<Result<_>>()?;
    order.push(PhysicalSortExpr::new_default(column(ROW_ID)?));
    let ordering = LexOrdering::new(order)
        .ok_or_else(|| PrsError::missing("partition_keys", "at least one key"))?;
    Ok(Arc::new(
        SortExec::new(ordering, repartition).with_preserve_partitioning(true),
    ))
}

/// Reads the rows of the driver's row chunks and numbers them ([`ROW_ID`], the row's
/// position in the input). Partition-preserving over the chunk leaf, so Ballista restricts
/// it to a task's partitions like any scan.
pub struct KeyedReadExec {
    leaf: Arc<dyn ExecutionPlan>,
    input: String,
    /// The input's rows as the job reads them (the chunks' rows).
    rows_schema: SchemaRef,
    /// How to open the input for chunks of file parts.
    source: Option<ScanSource>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for KeyedReadExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyedReadExec({})", self.input)
    }
}

impl KeyedReadExec {
    /// Reads the chunks of `leaf` (rows of input `input`, of `rows_schema`).
    pub fn new(leaf: Arc<dyn ExecutionPlan>, input: &str, rows_schema: SchemaRef) -> Self {
        let mut fields: Vec<Field> = rows_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW_ID, DataType::UInt64, false));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            rows_schema.metadata().clone(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(leaf.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        KeyedReadExec {
            leaf,
            input: input.to_string(),
            rows_schema,
            source: None,
            properties,
        }
    }

    /// The same node, opening the input from `source` for chunks of file parts.
    pub fn with_source(mut self, source: Option<ScanSource>) -> Self {
        self.source = source;
        self
    }

    /// Its bytes for the cluster codec: the input's name, its source (JSON) and rows schema
    /// (the leaf travels as the node's child).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let source = serde_json::to_vec(&self.source)
            .map_err(|e| chunk_error(format!("the input's source cannot be encoded: {e}")))?;
        for field in [self.input.as_bytes(), &source] {
            let length = u32::try_from(field.len())
                .map_err(|_| chunk_error(format!("input {:?} is too long", self.input)))?;
            out.extend_from_slice(&length.to_le_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&ipc_bytes(&RecordBatch::new_empty(
            self.rows_schema.clone(),
        ))?);
        Ok(out)
    }

    /// The node of [`KeyedReadExec::encode`]'s bytes over `leaf`.
    pub fn decode(bytes: &[u8], leaf: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let short = || chunk_error("the encoded KeyedReadExec is cut short".into());
        let field = |bytes: &'_ [u8]| -> Result<(Vec<u8>, usize)> {
            let (length, rest) = bytes.split_at_checked(4).ok_or_else(short)?;
            let length: [u8; 4] = length.try_into().map_err(|_| short())?;
            let length = u32::from_le_bytes(length) as usize;
            let value = rest.get(..length).ok_or_else(short)?;
            Ok((value.to_vec(), 4 + length))
        };
        let (name, used) = field(bytes)?;
        let (source, more) = field(&bytes[used..])?;
        let name = String::from_utf8(name).map_err(|_| short())?;
        let source: Option<ScanSource> = serde_json::from_slice(&source)
            .map_err(|e| chunk_error(format!("the input's source cannot be decoded: {e}")))?;
        let schema = batch_from_ipc(&bytes[used + more..])?.schema();
        Ok(KeyedReadExec::new(leaf, &name, schema).with_source(source))
    }
}

impl DisplayAs for KeyedReadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "KeyedReadExec: input={}", self.input)
    }
}

impl ExecutionPlan for KeyedReadExec {
    fn name(&self) -> &str {
        "KeyedReadExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.leaf]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            // Ballista restricts the leaf to a task's partitions: the count follows.
            Some(leaf) if children.is_empty() => Ok(Arc::new(
                KeyedReadExec::new(leaf, &self.input, self.rows_schema.clone())
                    .with_source(self.source.clone()),
            )),
            _ => datafusion::common::internal_err!("KeyedReadExec takes one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let schema = self.schema();
        let leaf = self.leaf.execute(partition, context)?;
        let state = ReadState {
            leaf: Some(leaf),
            chunks: VecDeque::new(),
            reader: None,
            parts: self.source.clone().map(PartsReader::new),
            rows_schema: self.rows_schema.clone(),
            schema: schema.clone(),
            input: self.input.clone(),
        };
        let batches = futures::stream::unfold(state, |mut state| async move {
            match state.next().await {
                Ok(Some(batch)) => Some((Ok(batch), state)),
                Ok(None) => None,
                Err(e) => {
                    // One error ends the partition.
                    state.leaf = None;
                    state.chunks.clear();
                    Some((Err(e), state))
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// One partition of a [`KeyedReadExec`] being read.
struct ReadState {
    /// The leaf, until its chunks are all taken.
    leaf: Option<SendableRecordBatchStream>,
    chunks: VecDeque<RowChunk>,
    reader: Option<RowsReader>,
    /// The reader of chunks of file parts.
    parts: Option<PartsReader>,
    rows_schema: SchemaRef,
    schema: SchemaRef,
    input: String,
}

impl ReadState {
    async fn next(&mut self) -> DFResult<Option<RecordBatch>> {
        if let Some(mut leaf) = self.leaf.take() {
            // The partition's chunks first (small: row ranges, or rows bounded by the plan
            // size), so each file is read in one forward pass.
            while let Some(batch) = leaf.next().await {
                self.chunks
                    .extend(read_chunks(&batch?).map_err(PrsError::into_datafusion)?);
            }
            let reads: Vec<RowsInFiles> = self
                .chunks
                .iter()
                .filter_map(|c| match &c.rows {
                    ChunkRows::Read(read) => Some(read.clone()),
                    ChunkRows::Parts(_) | ChunkRows::Carried(_) => None,
                })
                .collect();
            self.reader = Some(RowsReader::new(self.rows_schema.clone(), &reads));
        }
        let Some(chunk) = self.chunks.pop_front() else {
            return Ok(None);
        };
        let rows = match chunk.rows {
            ChunkRows::Carried(batch) => batch,
            ChunkRows::Parts(parts) => {
                let at = || format!("rows from {} on this executor", chunk.first_row);
                let Some(reader) = self.parts.as_mut() else {
                    return Err(PrsError::Input {
                        input: self.input.clone(),
                        location: at(),
                        message: "the plan does not say how to open the input: the driver and \
                                  this executor run different parallel-run versions"
                            .into(),
                    }
                    .into_datafusion());
                };
                reader
                    .read(&parts, &self.rows_schema)
                    .await
                    .map_err(|e| match e {
                        PrsError::Input { input, message, .. } => PrsError::Input {
                            input,
                            location: at(),
                            message,
                        },
                        e => e,
                    })
                    .map_err(PrsError::into_datafusion)?
            }
            ChunkRows::Read(read) => {
                let mut reader = self
                    .reader
                    .take()
                    .unwrap_or_else(|| RowsReader::new(self.rows_schema.clone(), &[]));
                let (reader, rows) = tokio::task::spawn_blocking(move || {
                    let rows = reader.read(&read);
                    (reader, rows.map(|r| (r, read.rows.end - read.rows.start)))
                })
                .await
                .map_err(|e| DataFusionError::Execution(format!("reading rows stopped: {e}")))?;
                self.reader = Some(reader);
                let (rows, expected) = rows.map_err(|e| {
                    PrsError::Input {
                        input: self.input.clone(),
                        location: format!("rows from {} on this executor", chunk.first_row),
                        message: e.to_string(),
                    }
                    .into_datafusion()
                })?;
                if rows.num_rows() as u64 != expected {
                    return Err(PrsError::Input {
                        input: self.input.clone(),
                        location: format!("rows from {} on this executor", chunk.first_row),
                        message: format!(
                            "{} rows read where the driver listed {expected}: the input \
                             files differ between the nodes or changed during the job",
                            rows.num_rows()
                        ),
                    }
                    .into_datafusion());
                }
                rows
            }
        };
        let n = rows.num_rows() as u64;
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(
            chunk.first_row..chunk.first_row + n,
        )));
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

/// Cuts the task's sorted partitions of every keyed input (`inputs`: the sorts, in the
/// job's input order) into one mini-batch per key and queues them for this task's workers.
/// Errors abort the task's job state, so every partition stops.
///
/// With the shared store (`shared`: the staging area and this executor's name), the task
/// first checks it can write there, then leaves out the keys already recorded (an earlier
/// try of the task) and those a resumed job committed before (whose slices must be the
/// same).
pub async fn dispatch_keyed(
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    context: Arc<TaskContext>,
    state: Arc<JobState>,
    shared: Option<(Arc<SharedStaging>, String)>,
    files: ExecutorFiles,
    queue: mpsc::Sender<Dispatched>,
) {
    let pool = EngineMemoryPool::of(&context);
    let reservation = MemoryConsumer::new("ParallelRunExec[keyed]").register(&pool);
    let known = match &shared {
        Some((staging, executor)) => {
            let checked = async {
                staging.check_writable(executor).await?;
                Ok::<_, crate::exec::shared::SharedStoreError>((
                    staging.recorded().await?,
                    staging.resume_skips().await?,
                ))
            };
            match checked.await {
                Ok(known) => known,
                Err(e) => {
                    state.abort(PrsError::from(e).to_string());
                    return;
                }
            }
        }
        None => (HashSet::new(), BTreeMap::new()),
    };
    let to = Queue {
        state: &state,
        queue: &queue,
        reservation: &reservation,
        recorded: &known.0,
        skips: &known.1,
        files: &files,
    };
    match cut_keys(&inputs, &context, &to).await {
        Ok(true) => state.scheduling_finished(),
        Ok(false) => {}
        Err(e) => {
            if !state.cancellation().is_cancelled() {
                state.abort(format!("cutting the keys of this task failed: {e}"));
            }
        }
    }
}

/// Where a task's key mini-batches go, and which ones are not run.
struct Queue<'a> {
    state: &'a Arc<JobState>,
    queue: &'a mpsc::Sender<Dispatched>,
    reservation: &'a MemoryReservation,
    /// Ids with a record in the shared store.
    recorded: &'a HashSet<String>,
    /// Ids a resumed job committed before, with their slices' fingerprints.
    skips: &'a BTreeMap<String, u64>,
    /// The downloader of a file dataset's objects (listed by URL on object storage).
    files: &'a ExecutorFiles,
}

async fn cut_keys(
    inputs: &[(Arc<dyn ExecutionPlan>, InputInfo)],
    context: &Arc<TaskContext>,
    to: &Queue<'_>,
) -> Result<bool> {
    let keys = to.state.settings().partition_keys.clone();
    let mut index = 0u64;
    for (ordinal, (plan, info)) in inputs.iter().enumerate() {
        let name: Arc<str> = Arc::from(info.name.as_str());
        // Each partition holds whole keys, sorted: cut on its own.
        for partition in 0..plan.output_partitioning().partition_count() {
            let mut chunker = KeyChunker::new(
                ordinal as u32,
                name.clone(),
                info.kind,
                &plan.schema(),
                &keys,
                to.reservation.new_empty(),
            )?;
            let mut stream = plan.execute(partition, context.clone())?;
            loop {
                let next = tokio::select! {
                    _ = to.state.cancellation().cancelled() => return Ok(false),
                    next = stream.next() => next,
                };
                let Some(batch) = next else { break };
                let batch = batch.map_err(|e| PrsError::Input {
                    input: info.name.clone(),
                    location: "its partition on this executor".into(),
                    message: e.to_string(),
                })?;
                for mb in chunker.push(batch)? {
                    if !enqueue(mb, &mut index, to).await? {
                        return Ok(false);
                    }
                }
            }
            if let Some(mb) = chunker.finish()? {
                if !enqueue(mb, &mut index, to).await? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// Queues one key's mini-batch unless it is recorded or skipped; `Ok(false)` when nobody
/// listens any more or the job is cancelled.
async fn enqueue(mut mini_batch: MiniBatch, index: &mut u64, to: &Queue<'_>) -> Result<bool> {
    let id = mini_batch.id.to_string();
    // Committed by an earlier try of this task: not run again.
    if to.recorded.contains(&id) {
        return Ok(true);
    }
    let fingerprint = slice_fingerprint(&mini_batch);
    if let Some(committed) = to.skips.get(&id) {
        if *committed != fingerprint {
            return Err(PrsError::config(
                "--resume",
                format!("mini batch {id}"),
                format!(
                    "input {:?} changed: the rows of partition key {} are not the ones this \
                     mini-batch was made of when it was committed. Restore the input, or run \
                     with --restart to start over",
                    mini_batch.lineage.input.as_ref(),
                    serde_json::to_string(&mini_batch.partition_key_value).unwrap_or_default()
                ),
            ));
        }
        // Committed by the run this one resumes (the driver counted it).
        return Ok(true);
    }
    // A file dataset on object storage: its objects, listed by URL, downloaded here.
    let mut files = None;
    if mini_batch.kind == ItemKind::Files {
        let input = mini_batch.lineage.input.to_string();
        if let Some((rows, dir)) = to.files.localize(&input, &mini_batch.data).await? {
            mini_batch.data = rows;
            files = Some(dir);
        }
    }
    let held = to.reservation.new_empty();
    held.try_grow(mini_batch.memory_size())?;
    to.state.mini_batch_scheduled(mini_batch.items());
    let dispatched = Dispatched::new(mini_batch, *index, fingerprint, held).with_files(files);
    *index += 1;
    tokio::select! {
        _ = to.state.cancellation().cancelled() => Ok(false),
        sent = to.queue.send(dispatched) => Ok(sent.is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    /// (id, row number) of every row `read` gives, partition after partition (the id is the
    /// first column, the row number the last).
    async fn numbered(read: &KeyedReadExec, ctx: Arc<TaskContext>) -> Vec<(i64, u64)> {
        let mut numbered = Vec::new();
        for p in 0..read.properties().partitioning.partition_count() {
            let batches: Vec<RecordBatch> = read
                .execute(p, ctx.clone())
                .unwrap()
                .map(|b| b.unwrap())
                .collect()
                .await;
            for b in batches {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let last = b.num_columns() - 1;
                let rows = b
                    .column(last)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .unwrap();
                for i in 0..b.num_rows() {
                    numbered.push((ids.value(i), rows.value(i)));
                }
            }
        }
        numbered
    }

    #[tokio::test]
    async fn carried_chunks_are_numbered_in_input_order_and_survive_the_codec() {
        let rows = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(10..15)) as ArrayRef,
        )])
        .unwrap();
        let chunks = vec![
            RowChunk {
                first_row: 0,
                rows: ChunkRows::Carried(rows.slice(0, 2)),
            },
            RowChunk {
                first_row: 2,
                rows: ChunkRows::Carried(rows.slice(2, 3)),
            },
        ];
        let leaf = chunk_leaf(&chunks, 2).unwrap();
        let read = KeyedReadExec::new(leaf.clone(), "t", rows.schema());
        let back = KeyedReadExec::decode(&read.encode().unwrap(), leaf).unwrap();
        assert_eq!(back.input, "t");
        assert_eq!(back.schema(), read.schema());
        let ctx = datafusion::prelude::SessionContext::new().task_ctx();
        let numbered = numbered(&back, ctx).await;
        assert_eq!(numbered, vec![(10, 0), (11, 1), (12, 2), (13, 3), (14, 4)]);
    }

    #[tokio::test]
    async fn a_declared_csv_input_is_cut_into_file_parts_read_back_through_the_codec() {
        use crate::config::{InputFormat, InputSpec};
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("id,word\n");
        for i in 0..3000 {
            text.push_str(&format!("{i},\"w{i}, quoted\"\n"));
        }
        std::fs::write(dir.path().join("a.csv"), &text).unwrap();
        std::fs::write(dir.path().join("b.csv"), "id,word\n3000,last\n").unwrap();
        let ctx = crate::input::job_session();
        let spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Csv);
        let prepared = crate::input::register_inputs(&ctx, std::slice::from_ref(&spec))
            .await
            .unwrap();
        let plan = ctx
            .state()
            .create_physical_plan(&prepared[0].plan)
            .await
            .unwrap();
        let info = prepared[0].info.clone();
        assert!(info.source.is_some());
        let cut = cut_rows(&plan, &info, &ctx.task_ctx()).await.unwrap();
        assert_eq!((cut.rows, cut.carried_bytes), (3001, 0));
        assert!(cut
            .chunks
            .iter()
            .all(|c| matches!(c.rows, ChunkRows::Parts(_))));
        // A query's plan (no declaration) still travels with its rows.
        let mut query = info.clone();
        query.source = None;
        let carried = cut_rows(&plan, &query, &ctx.task_ctx()).await.unwrap();
        assert!(carried.carried_bytes > 0);

        let source = ScanSource {
            input: spec,
            storage: Default::default(),
        };
        let leaf = chunk_leaf(&cut.chunks, 2).unwrap();
        let read = KeyedReadExec::new(leaf.clone(), "t", plan.schema()).with_source(Some(source));
        let back = KeyedReadExec::decode(&read.encode().unwrap(), leaf).unwrap();
        assert_eq!(back.source, read.source);
        let numbered = numbered(&back, ctx.task_ctx()).await;
        let expected: Vec<(i64, u64)> = (0..3001).map(|i| (i as i64, i as u64)).collect();
        assert_eq!(numbered, expected);
    }
}
