//! The operator's multi-node form: mini-batches cut by the driver travel to executors as a
//! *manifest* (one row per mini-batch), and their outcomes come back as *envelopes* (one row
//! per finished mini-batch).
//!
//! The driver cuts the inputs exactly as a local run does (same chunkers, ids, dispatch
//! indexes and slice fingerprints) and deals the mini-batches into the partitions of a leaf
//! Ballista can restrict per task (`DataSourceExec(MemorySourceConfig)`); the operator in
//! [`crate::exec::ExecMode::Manifest`] is partition-preserving over it, so a task that runs
//! partitions 1 and 3 sees exactly their mini-batches. A file dataset's mini-batch is its
//! listing rows (paths: each executor reads the files itself); a local Parquet table's
//! mini-batch is its row range and the files holding it ([`RowsInFiles`], cut from the
//! footers: the driver reads no rows; the executor reads exactly those rows, checks the files
//! are the ones the driver listed and the slice's fingerprint); a declared CSV, JSON or
//! object-storage Parquet table's mini-batch is its file parts ([`PartsInFiles`]: byte or row
//! ranges, read by a [`PartsReader`] over the input's own scan); any other table's mini-batch
//! carries its rows. A manifest bigger than
//! [`INLINE_MANIFEST_BYTES`] does not travel in the plan: the driver writes it to the shared
//! staging area in segments ([`manifest_segments`], at most [`SEGMENT_ENTRIES`] mini-batches
//! or [`SEGMENT_BYTES`] of rows each), and each partition's one row in the plan is a
//! [`StoredRun`] naming its mini-batches' ordinals and the segments holding them; the task
//! reads one segment at a time.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::batch::{ItemKind, Lineage, MiniBatch, MiniBatchId, MiniBatchRecord, PartitionKeyValue};
use crate::error::{PrsError, Result};
use crate::exec::dispatch::InputInfo;
use crate::exec::dispatch::{Dispatched, EngineMemoryPool};
use crate::exec::shared::SharedStaging;
use crate::exec::spec::OperatorSpec;
use crate::exec::state::JobState;
use crate::exec::stream::CompletedMiniBatch;
use crate::input::remote_files::ExecutorFiles;
use crate::input::{
    footer_fingerprint, parts_fingerprint, PartsInFiles, PartsReader, ReadFrom, RowsInFiles,
    RowsReader,
};

/// The largest manifest a plan carries (Ballista's gRPC messages are limited to 16 MiB, and
/// every task's plan is sent to its executor): a bigger one goes to the shared store in
/// segments, and the plan carries only where each partition's mini-batches are.
pub const INLINE_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The most mini-batches a manifest segment holds.
pub const SEGMENT_ENTRIES: usize = 4096;

/// The most bytes of rows a manifest segment holds (mini-batches of tables that travel with
/// their rows): an executor holds one segment at a time.
pub const SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// A run of a manifest stored in segments: the mini-batches `entries` (ordinals in the
/// job's dispatch order) and the segments holding them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredRun {
    /// Ordinals of the run's mini-batches in the whole manifest.
    pub entries: std::ops::Range<u64>,
    /// The segments holding them, in order.
    pub segments: Vec<StoredSegment>,
}

/// One segment of a stored manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSegment {
    /// Its object name in the shared staging area's `manifest/`.
    pub name: String,
    /// The ordinal of its first mini-batch.
    pub first: u64,
    /// Its mini-batches.
    pub count: u64,
}

/// A row of a manifest: a mini-batch, or a run of them in the shared store.
#[derive(Debug)]
pub enum ManifestRow {
    /// A mini-batch.
    Entry(ManifestEntry),
    /// Mini-batches in the shared store.
    Stored(StoredRun),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredDescriptor {
    stored: StoredRun,
}

/// The manifest segments of `cut` (whole, in order): bytes of each, with its segment
/// description, cut at `max_entries` mini-batches (normally [`SEGMENT_ENTRIES`]) or
/// [`SEGMENT_BYTES`] of rows.
pub fn manifest_segments(
    cut: &[ManifestEntry],
    max_entries: usize,
) -> Result<Vec<(StoredSegment, Vec<u8>)>> {
    let max_entries = max_entries.max(1);
    let mut segments = Vec::new();
    let mut first = 0usize;
    let mut bytes = 0usize;
    for (i, entry) in cut.iter().enumerate() {
        bytes += entry.mini_batch.data.get_array_memory_size();
        let end = i + 1;
        if end - first >= max_entries || bytes >= SEGMENT_BYTES || end == cut.len() {
            let batch = manifest_batch(&cut[first..end])?;
            let segment = StoredSegment {
                name: format!("{:08}.arrow", segments.len()),
                first: first as u64,
                count: (end - first) as u64,
            };
            segments.push((segment, ipc_bytes(&batch)?));
            first = end;
            bytes = 0;
        }
    }
    Ok(segments)
}

/// The manifest rows of stored runs (one row each).
pub fn stored_batch(runs: &[StoredRun]) -> Result<RecordBatch> {
    let mut descriptors = Vec::with_capacity(runs.len());
    for run in runs {
        let descriptor = StoredDescriptor {
            stored: run.clone(),
        };
        descriptors.push(
            serde_json::to_string(&descriptor)
                .map_err(|e| manifest_error("(stored run)", e.to_string()))?,
        );
    }
    let n = runs.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![""; n])),
        Arc::new(UInt64Array::from(vec![0u64; n])),
        Arc::new(UInt64Array::from(vec![0u64; n])),
        Arc::new(StringArray::from(descriptors)),
        Arc::new(BinaryArray::from_iter_values(std::iter::repeat_n(b"", n))),
    ];
    Ok(RecordBatch::try_new(manifest_schema(), columns)?)
}

/// What a manifest row says of its mini-batch besides its data.
#[derive(serde::Serialize, serde::Deserialize)]
struct Descriptor {
    id: MiniBatchId,
    kind: ItemKind,
    lineage: Lineage,
    partition_key_value: PartitionKeyValue,
    /// Where the executor reads the rows (the items then hold none, only the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read: Option<ReadFrom>,
}

/// One mini-batch of a manifest.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// The mini-batch (with no rows when `read` says where they are).
    pub mini_batch: MiniBatch,
    /// Its dispatch index.
    pub index: u64,
    /// Its slice's fingerprint.
    pub fingerprint: u64,
    /// Where an executor reads its rows, for an input cut as descriptors.
    pub read: Option<ReadFrom>,
}

impl ManifestEntry {
    /// A mini-batch that travels with its items.
    pub fn new(mini_batch: MiniBatch, index: u64, fingerprint: u64) -> Self {
        ManifestEntry {
            mini_batch,
            index,
            fingerprint,
            read: None,
        }
    }

    /// The same mini-batch read by the executor from `read`: its rows stay behind.
    pub fn read_from(self, read: ReadFrom) -> Self {
        let empty = RecordBatch::new_empty(self.mini_batch.data.schema());
        self.read_from_with(read, &empty)
    }

    /// [`ManifestEntry::read_from`] with `empty`, an empty batch of the mini-batch's schema,
    /// in place of its rows: a cut shares one (an empty batch of its own would cost about a
    /// hundred bytes per column for every mini-batch).
    pub fn read_from_with(mut self, read: ReadFrom, empty: &RecordBatch) -> Self {
        self.mini_batch.data = if empty.schema_ref() == self.mini_batch.data.schema_ref() {
            empty.clone()
        } else {
            RecordBatch::new_empty(self.mini_batch.data.schema())
        };
        self.read = Some(read);
        self
    }
}

/// The manifest's schema: id text, dispatch index, slice fingerprint, descriptor (JSON) and
/// the mini-batch's items (an Arrow IPC stream).
pub fn manifest_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("mini_batch", DataType::Utf8, false),
        Field::new("index", DataType::UInt64, false),
        Field::new("fingerprint", DataType::UInt64, false),
        Field::new("descriptor", DataType::Utf8, false),
        Field::new("items", DataType::Binary, false),
    ]))
}

/// The schema of the operator's output in manifest mode: one row per finished mini-batch
/// with its record (JSON) and, when it succeeded and results are kept, its result rows (an
/// Arrow IPC stream).
pub fn envelope_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("mini_batch", DataType::Utf8, false),
        Field::new("index", DataType::UInt64, false),
        Field::new("fingerprint", DataType::UInt64, false),
        Field::new("returned", DataType::UInt64, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("result", DataType::Binary, true),
    ]))
}

/// Makes the manifest entries of a driver's cut: a mini-batch whose rows an executor reads
/// itself ([`Dispatched::read`]) travels without them, with an empty batch of its schema that
/// the entries of its input share.
pub struct ManifestEntries(Vec<Option<RecordBatch>>);

impl ManifestEntries {
    /// The entries of a cut of `inputs` (by ordinal).
    pub fn of(inputs: &[(Arc<dyn ExecutionPlan>, InputInfo)]) -> Self {
        ManifestEntries(vec![None; inputs.len()])
    }

    /// The manifest entry of `dispatched`.
    pub fn entry(&mut self, mut dispatched: Dispatched) -> ManifestEntry {
        let read = dispatched.read.take();
        let ordinal = dispatched.mini_batch.id.input as usize;
        let entry = ManifestEntry::new(
            dispatched.mini_batch,
            dispatched.index,
            dispatched.fingerprint,
        );
        match (read, self.0.get_mut(ordinal)) {
            (Some(read), Some(empty)) => {
                let empty = empty
                    .get_or_insert_with(|| RecordBatch::new_empty(entry.mini_batch.data.schema()));
                entry.read_from_with(read, empty)
            }
            (Some(read), None) => entry.read_from(read),
            (None, _) => entry,
        }
    }
}

/// Manifest rows of `mini_batches` (in the order given), one batch.
pub fn manifest_batch(mini_batches: &[ManifestEntry]) -> Result<RecordBatch> {
    let mut ids = Vec::with_capacity(mini_batches.len());
    let mut indexes = Vec::with_capacity(mini_batches.len());
    let mut fingerprints = Vec::with_capacity(mini_batches.len());
    let mut descriptors = Vec::with_capacity(mini_batches.len());
    let mut items = Vec::with_capacity(mini_batches.len());
    // A mini-batch an executor reads itself carries no rows, only its schema: written once
    // per batch, and as no bytes in the rows after it with the same schema (a few hundred
    // bytes less per mini-batch; see `read_manifest_rows`).
    let mut located_schema: Option<SchemaRef> = None;
    for entry in mini_batches {
        let mb = &entry.mini_batch;
        ids.push(mb.id.to_string());
        indexes.push(entry.index);
        fingerprints.push(entry.fingerprint);
        let descriptor = Descriptor {
            id: mb.id,
            kind: mb.kind,
            lineage: mb.lineage.clone(),
            partition_key_value: mb.partition_key_value.clone(),
            read: entry.read.clone(),
        };
        descriptors.push(
            serde_json::to_string(&descriptor)
                .map_err(|e| manifest_error(&mb.id.to_string(), e.to_string()))?,
        );
        if entry.read.is_some() && located_schema.as_ref() == Some(mb.data.schema_ref()) {
            items.push(Vec::new());
        } else {
            if entry.read.is_some() {
                located_schema = Some(mb.data.schema());
            }
            items.push(ipc_bytes(&mb.data)?);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(UInt64Array::from(indexes)),
        Arc::new(UInt64Array::from(fingerprints)),
        Arc::new(StringArray::from(descriptors)),
        Arc::new(BinaryArray::from_iter_values(items.iter())),
    ];
    Ok(RecordBatch::try_new(manifest_schema(), columns)?)
}

/// The mini-batches of a manifest batch, with their dispatch index and fingerprint (those
/// an executor reads itself still without their rows); a stored run is an error here.
pub fn read_manifest(batch: &RecordBatch) -> Result<Vec<ManifestEntry>> {
    read_manifest_rows(batch)?
        .into_iter()
        .map(|row| match row {
            ManifestRow::Entry(entry) => Ok(entry),
            ManifestRow::Stored(_) => Err(manifest_error(
                "(stored run)",
                "a manifest segment names another segment".into(),
            )),
        })
        .collect()
}

/// The rows of a manifest batch: mini-batches and runs in the shared store.
pub fn read_manifest_rows(batch: &RecordBatch) -> Result<Vec<ManifestRow>> {
    let ids = string_column(batch, "mini_batch")?;
    let indexes = u64_column(batch, "index")?;
    let fingerprints = u64_column(batch, "fingerprint")?;
    let descriptors = string_column(batch, "descriptor")?;
    let items = binary_column(batch, "items")?;
    let mut out = Vec::with_capacity(batch.num_rows());
    // The (empty) batch of the last mini-batch read by the executor: the rows after it with
    // the same schema have no items (see `manifest_batch`), and share it.
    let mut located_schema: Option<RecordBatch> = None;
    for row in 0..batch.num_rows() {
        let id = ids.value(row);
        if id.is_empty() {
            let stored: StoredDescriptor = serde_json::from_str(descriptors.value(row))
                .map_err(|e| manifest_error("(stored run)", format!("bad descriptor: {e}")))?;
            out.push(ManifestRow::Stored(stored.stored));
            continue;
        }
        let descriptor: Descriptor = serde_json::from_str(descriptors.value(row))
            .map_err(|e| manifest_error(id, format!("bad descriptor: {e}")))?;
        let bytes = items.value(row);
        let data = match (&descriptor.read, &located_schema) {
            (Some(_), Some(empty)) if bytes.is_empty() => empty.clone(),
            (_, None) if bytes.is_empty() => {
                return Err(manifest_error(
                    id,
                    "no items and no earlier row with the schema (a manifest batch was split \
                     between two rows of one schema)"
                        .into(),
                ))
            }
            _ => {
                batch_from_ipc(bytes).map_err(|e| manifest_error(id, format!("bad items: {e}")))?
            }
        };
        if descriptor.read.is_some() && data.num_rows() == 0 {
            located_schema = Some(data.clone());
        }
        out.push(ManifestRow::Entry(ManifestEntry {
            mini_batch: MiniBatch {
                id: descriptor.id,
                kind: descriptor.kind,
                data,
                lineage: descriptor.lineage,
                partition_key_value: descriptor.partition_key_value,
            },
            index: indexes.value(row),
            fingerprint: fingerprints.value(row),
            read: descriptor.read,
        }));
    }
    Ok(out)
}

/// The envelope row of one finished mini-batch.
pub fn envelope_batch(done: &CompletedMiniBatch) -> Result<RecordBatch> {
    let id = done.id.to_string();
    let record = serde_json::to_string(&done.record)
        .map_err(|e| manifest_error(&id, format!("its record cannot be encoded: {e}")))?;
    let result = match &done.result {
        Some(batch) => Some(ipc_bytes(batch)?),
        None => None,
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![id])),
        Arc::new(UInt64Array::from(vec![done.index])),
        Arc::new(UInt64Array::from(vec![done.fingerprint])),
        Arc::new(UInt64Array::from(vec![done.returned])),
        Arc::new(StringArray::from(vec![record])),
        Arc::new(BinaryArray::from(vec![result.as_deref()])),
    ];
    Ok(RecordBatch::try_new(envelope_schema(), columns)?)
}

/// The finished mini-batches an envelope batch holds.
pub fn read_envelopes(batch: &RecordBatch) -> Result<Vec<CompletedMiniBatch>> {
    let ids = string_column(batch, "mini_batch")?;
    let indexes = u64_column(batch, "index")?;
    let fingerprints = u64_column(batch, "fingerprint")?;
    let returned = u64_column(batch, "returned")?;
    let records = string_column(batch, "record")?;
    let results = binary_column(batch, "result")?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let id = ids.value(row);
        let record: MiniBatchRecord = serde_json::from_str(records.value(row))
            .map_err(|e| manifest_error(id, format!("bad record: {e}")))?;
        let result = if results.is_null(row) {
            None
        } else {
            Some(
                batch_from_ipc(results.value(row))
                    .map_err(|e| manifest_error(id, format!("bad result rows: {e}")))?,
            )
        };
        out.push(CompletedMiniBatch {
            id: record.id,
            index: indexes.value(row),
            lineage: record.lineage.clone(),
            result,
            returned: returned.value(row),
            fingerprint: fingerprints.value(row),
            source: None,
            record,
            // Not sent back from executors (a cluster job refuses dead_letter_rows).
            failed_input: None,
        });
    }
    Ok(out)
}

/// Reads every partition of `manifest` (the task's slice of the job's manifest) and queues
/// its mini-batches for this task's workers. Errors abort the task's job state, so every
/// partition stops.
///
/// With a shared store (`shared`: the staging area and this executor's name), the executor
/// first checks it can write there, then lists the records already committed (by an earlier
/// try of this task, e.g. on an executor since lost) and does not run those mini-batches.
pub async fn dispatch_manifest(
    manifest: Arc<dyn ExecutionPlan>,
    spec: Arc<OperatorSpec>,
    context: Arc<TaskContext>,
    state: Arc<JobState>,
    shared: Option<(Arc<SharedStaging>, String)>,
    queue: mpsc::Sender<Dispatched>,
) {
    let pool = EngineMemoryPool::of(&context);
    let reservation = MemoryConsumer::new("ParallelRunExec[manifest]").register(&pool);
    let recorded = match &shared {
        Some((staging, executor)) => {
            let checked = match staging.check_writable(executor).await {
                Ok(()) => staging.recorded().await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(recorded) => recorded,
                Err(e) => {
                    state.abort(PrsError::from(e).to_string());
                    return;
                }
            }
        }
        None => HashSet::new(),
    };
    let staging = shared.as_ref().map(|(staging, _)| staging.as_ref());
    let mut scans = ScanReaders::new(spec);
    let queued = queue_manifest(
        &manifest,
        &mut scans,
        &context,
        &state,
        &queue,
        &reservation,
        &recorded,
        staging,
    );
    match queued.await {
        Ok(true) => state.scheduling_finished(),
        Ok(false) => {}
        Err(e) => {
            if !state.cancellation().is_cancelled() {
                state.abort(format!("reading the mini-batch manifest failed: {e}"));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn queue_manifest(
    manifest: &Arc<dyn ExecutionPlan>,
    scans: &mut ScanReaders,
    context: &Arc<TaskContext>,
    state: &Arc<JobState>,
    queue: &mpsc::Sender<Dispatched>,
    reservation: &MemoryReservation,
    recorded: &HashSet<String>,
    staging: Option<&SharedStaging>,
) -> Result<bool> {
    // The task's mini-batches first (the manifest in the plan is small: descriptors, or rows
    // bounded by the plan's size), so each input's rows are read in one forward pass.
    let mut entries = Vec::new();
    let mut stored = Vec::new();
    for partition in 0..manifest.output_partitioning().partition_count() {
        let mut stream = manifest.execute(partition, context.clone())?;
        while let Some(batch) = stream.next().await {
            for row in read_manifest_rows(&batch?)? {
                match row {
                    // Committed by an earlier try: not run (nor read) again.
                    ManifestRow::Entry(entry) => {
                        if !recorded.contains(&entry.mini_batch.id.to_string()) {
                            entries.push(entry);
                        }
                    }
                    ManifestRow::Stored(run) => stored.push(run),
                }
            }
        }
    }
    if !queue_entries(entries, scans, state, queue, reservation).await? {
        return Ok(false);
    }
    for run in stored {
        let Some(staging) = staging else {
            return Err(manifest_error(
                "(stored run)",
                "the manifest is in a shared staging area this task was not given".into(),
            ));
        };
        // One segment at a time: an executor holds at most one.
        for segment in &run.segments {
            let bytes = staging.read_manifest_segment(&segment.name).await?;
            let batch = batch_from_ipc(&bytes).map_err(|e| {
                manifest_error(
                    &format!("(segment {})", segment.name),
                    format!("unreadable manifest segment: {e}"),
                )
            })?;
            let all = read_manifest(&batch)?;
            if all.len() as u64 != segment.count {
                return Err(manifest_error(
                    &format!("(segment {})", segment.name),
                    format!(
                        "the manifest segment holds {} mini-batches, the plan says {}: the \
                         shared staging area was changed during the job",
                        all.len(),
                        segment.count
                    ),
                ));
            }
            let entries: Vec<ManifestEntry> = all
                .into_iter()
                .enumerate()
                .filter(|(i, entry)| {
                    run.entries.contains(&(segment.first + *i as u64))
                        && !recorded.contains(&entry.mini_batch.id.to_string())
                })
                .map(|(_, entry)| entry)
                .collect();
            if !queue_entries(entries, scans, state, queue, reservation).await? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Queues `entries` (reading their rows where they have none) for this task's workers;
/// `false` when the job stopped.
async fn queue_entries(
    entries: Vec<ManifestEntry>,
    scans: &mut ScanReaders,
    state: &Arc<JobState>,
    queue: &mpsc::Sender<Dispatched>,
    reservation: &MemoryReservation,
) -> Result<bool> {
    let mut readers = RowReaders::of(&entries);
    for entry in entries {
        let (mut mini_batch, index, fingerprint) = match entry.read {
            Some(ReadFrom::Rows(read)) => (
                readers
                    .read(entry.mini_batch, read, entry.fingerprint)
                    .await?,
                entry.index,
                entry.fingerprint,
            ),
            Some(ReadFrom::Parts(parts)) => (
                scans
                    .read(entry.mini_batch, parts, entry.fingerprint)
                    .await?,
                entry.index,
                entry.fingerprint,
            ),
            None => (entry.mini_batch, entry.index, entry.fingerprint),
        };
        // A file dataset on object storage: its objects, listed by URL, downloaded here.
        let mut files = None;
        if mini_batch.kind == ItemKind::Files {
            let input = mini_batch.lineage.input.to_string();
            if let Some((rows, dir)) = scans.files().localize(&input, &mini_batch.data).await? {
                mini_batch.data = rows;
                files = Some(dir);
            }
        }
        let held = reservation.new_empty();
        held.try_grow(mini_batch.memory_size())?;
        state.mini_batch_scheduled(mini_batch.items());
        let dispatched = Dispatched::new(mini_batch, index, fingerprint, held).with_files(files);
        let sent = tokio::select! {
            _ = state.cancellation().cancelled() => return Ok(false),
            sent = queue.send(dispatched) => sent,
        };
        if sent.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One [`RowsReader`] per input of a task's mini-batches.
struct RowReaders {
    readers: HashMap<String, RowsReader>,
}

impl RowReaders {
    fn of(entries: &[ManifestEntry]) -> Self {
        let mut reads: HashMap<String, (SchemaRef, Vec<RowsInFiles>)> = HashMap::new();
        for entry in entries {
            if let Some(ReadFrom::Rows(read)) = &entry.read {
                reads
                    .entry(entry.mini_batch.lineage.input.to_string())
                    .or_insert_with(|| (entry.mini_batch.data.schema(), Vec::new()))
                    .1
                    .push(read.clone());
            }
        }
        let readers = reads
            .into_iter()
            .map(|(input, (schema, reads))| (input, RowsReader::new(schema, &reads)))
            .collect();
        RowReaders { readers }
    }

    /// `mini_batch` with its rows read from the files `read` names (off the async threads),
    /// checked against the `fingerprint` the driver computed when it cut them.
    async fn read(
        &mut self,
        mut mini_batch: MiniBatch,
        read: RowsInFiles,
        fingerprint: u64,
    ) -> Result<MiniBatch> {
        let id = mini_batch.id.to_string();
        let input = mini_batch.lineage.input.to_string();
        let read_copy = read.clone();
        let mut reader = match self.readers.remove(&input) {
            Some(reader) => reader,
            None => RowsReader::new(mini_batch.data.schema(), std::slice::from_ref(&read)),
        };
        let (reader, data) = tokio::task::spawn_blocking(move || {
            let data = reader.read(&read);
            (reader, data)
        })
        .await
        .map_err(|e| manifest_error(&id, format!("reading its rows stopped: {e}")))?;
        self.readers.insert(input.clone(), reader);
        mini_batch.data = data.map_err(|e| PrsError::Input {
            input: input.clone(),
            location: format!("mini batch {id} on this executor"),
            message: e.to_string(),
        })?;
        // The files are the ones the driver listed (the reader checked their sizes and
        // modification times): the slice is the one the driver cut when its fingerprint,
        // made of the same descriptor, is the one the driver computed.
        let rows = mini_batch.lineage.rows.clone();
        let here = footer_fingerprint(mini_batch.id, &read_copy, mini_batch.data.schema_ref());
        if here != fingerprint || mini_batch.items() != rows.end - rows.start {
            return Err(PrsError::Input {
                input,
                location: format!("mini batch {id} on this executor"),
                message: format!(
                    "rows {}..{} read here are not the ones the driver cut: the input files \
                     differ between the nodes or changed during the job",
                    rows.start, rows.end
                ),
            });
        }
        Ok(mini_batch)
    }
}

/// The readers of the inputs an executor reads as parts of files ([`ReadFrom::Parts`]), one
/// per input, made from the spec's declarations and storage options.
struct ScanReaders {
    spec: Arc<OperatorSpec>,
    readers: HashMap<String, PartsReader>,
    files: Option<ExecutorFiles>,
}

impl ScanReaders {
    fn new(spec: Arc<OperatorSpec>) -> Self {
        ScanReaders {
            spec,
            readers: HashMap::new(),
            files: None,
        }
    }

    /// The downloader of file datasets' objects (made on first use).
    fn files(&mut self) -> &ExecutorFiles {
        let spec = &self.spec;
        self.files
            .get_or_insert_with(|| ExecutorFiles::new(spec.input_storage()))
    }

    /// `mini_batch` with its rows read from `parts`, checked against the `fingerprint` the
    /// driver computed when it cut them.
    async fn read(
        &mut self,
        mut mini_batch: MiniBatch,
        parts: PartsInFiles,
        fingerprint: u64,
    ) -> Result<MiniBatch> {
        let id = mini_batch.id.to_string();
        let input = mini_batch.lineage.input.to_string();
        let here_error = |message: String| PrsError::Input {
            input: input.clone(),
            location: format!("mini batch {id} on this executor"),
            message,
        };
        let schema = mini_batch.data.schema();
        if parts_fingerprint(mini_batch.id, &parts, &schema) != fingerprint {
            return Err(here_error(
                "its descriptor does not match the fingerprint the driver cut: the manifest \
                 was changed during the job"
                    .into(),
            ));
        }
        let reader = match self.readers.entry(input.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let source = self.spec.scan_source(&input).ok_or_else(|| {
                    here_error(
                        "the plan names no file-backed input of this name: the driver and \
                         this executor run different parallel-run versions"
                            .into(),
                    )
                })?;
                e.insert(PartsReader::new(source))
            }
        };
        mini_batch.data = reader.read(&parts, &schema).await.map_err(|e| match e {
            PrsError::Input { message, .. } => here_error(message),
            e => e,
        })?;
        Ok(mini_batch)
    }
}

/// An Arrow IPC stream of one batch.
pub fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The one batch of an Arrow IPC stream (an empty batch of its schema when it has none).
pub fn batch_from_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch?);
    }
    match batches.len() {
        1 => Ok(batches.remove(0)),
        _ => Ok(arrow::compute::concat_batches(&schema, &batches)?),
    }
}

fn manifest_error(mini_batch: &str, message: String) -> PrsError {
    PrsError::Output {
        path: format!("mini batch {mini_batch} (cluster manifest)"),
        message,
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| PrsError::Output {
            path: "cluster manifest".into(),
            message: format!(
                "column {name:?} is missing or of another type: the driver and this executor \
                 run different parallel-run versions"
            ),
        })
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    column(batch, name)
}

fn u64_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a UInt64Array> {
    column(batch, name)
}

fn binary_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray> {
    column(batch, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::MiniBatchStatus;
    use arrow::array::Int64Array;

    fn mini_batch(seq: u64) -> MiniBatch {
        let data = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(0..3)) as ArrayRef,
        )])
        .unwrap();
        MiniBatch {
            id: MiniBatchId::new(0, seq),
            kind: ItemKind::Rows,
            data,
            lineage: Lineage {
                input: Arc::from("t"),
                rows: seq * 3..seq * 3 + 3,
            },
            partition_key_value: PartitionKeyValue::default(),
        }
    }

    #[test]
    fn a_manifest_in_segments_keeps_every_mini_batch_in_order() {
        let cut: Vec<ManifestEntry> = (0..10)
            .map(|seq| ManifestEntry::new(mini_batch(seq), seq, seq * 7))
            .collect();
        let segments = manifest_segments(&cut, 3).unwrap();
        let described: Vec<(u64, u64)> = segments.iter().map(|(s, _)| (s.first, s.count)).collect();
        assert_eq!(described, vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
        let mut back = Vec::new();
        for (segment, bytes) in &segments {
            let entries = read_manifest(&batch_from_ipc(bytes).unwrap()).unwrap();
            assert_eq!(entries.len() as u64, segment.count);
            back.extend(
                entries
                    .into_iter()
                    .map(|e| (e.mini_batch.id, e.fingerprint)),
            );
        }
        let expected: Vec<_> = cut
            .iter()
            .map(|e| (e.mini_batch.id, e.fingerprint))
            .collect();
        assert_eq!(back, expected);

        // A stored run travels as one manifest row, and is told apart from mini-batches.
        let run = StoredRun {
            entries: 4..8,
            segments: segments[1..3].iter().map(|(s, _)| s.clone()).collect(),
        };
        let rows = read_manifest_rows(&stored_batch(std::slice::from_ref(&run)).unwrap()).unwrap();
        assert!(matches!(&rows[..], [ManifestRow::Stored(r)] if *r == run));
        assert!(read_manifest(&stored_batch(&[run]).unwrap()).is_err());
    }

    #[test]
    fn mini_batches_read_by_the_executor_carry_their_schema_once_per_batch() {
        let located = |seq: u64| {
            ManifestEntry::new(mini_batch(seq), seq, seq).read_from(ReadFrom::Rows(RowsInFiles {
                rows: seq * 3..seq * 3 + 3,
                files: vec![crate::input::FileRows {
                    path: "/data/t.parquet".into(),
                    first_row: 0,
                    rows: 30,
                    bytes: 100,
                    modified_ns: 1,
                }],
            }))
        };
        // Located, carried (its rows travel), located again.
        let cut = vec![
            located(0),
            ManifestEntry::new(mini_batch(1), 1, 1),
            located(2),
        ];
        let batch = manifest_batch(&cut).unwrap();
        let items = binary_column(&batch, "items").unwrap();
        assert!(!items.value(0).is_empty() && !items.value(1).is_empty());
        assert!(items.value(2).is_empty(), "the schema is not repeated");
        let back = read_manifest(&batch).unwrap();
        for (a, b) in cut.iter().zip(&back) {
            assert_eq!(a.mini_batch.data, b.mini_batch.data);
            assert_eq!(a.read, b.read);
        }
        assert_eq!(back[2].mini_batch.data.num_rows(), 0);
        assert_eq!(
            back[2].mini_batch.data.schema(),
            mini_batch(2).data.schema()
        );
        // A batch split after its first located row: refused, not guessed.
        let e = read_manifest(&batch.slice(2, 1)).unwrap_err().to_string();
        assert!(e.contains("0-2") && e.contains("schema"), "{e}");
    }

    #[test]
    fn manifests_and_envelopes_round_trip() {
        let mbs = vec![
            ManifestEntry::new(mini_batch(0), 0, 11),
            ManifestEntry::new(mini_batch(1), 1, 22),
        ];
        let batch = manifest_batch(&mbs).unwrap();
        let back = read_manifest(&batch).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in mbs.iter().zip(&back) {
            assert_eq!(
                (a.mini_batch.id, a.index, a.fingerprint),
                (b.mini_batch.id, b.index, b.fingerprint)
            );
            assert_eq!(a.mini_batch.data, b.mini_batch.data);
            assert_eq!(a.mini_batch.lineage, b.mini_batch.lineage);
            assert_eq!(a.mini_batch.kind, b.mini_batch.kind);
            assert!(b.read.is_none());
        }

        let mb = &mbs[1].mini_batch;
        let record = MiniBatchRecord {
            id: mb.id,
            index: 1,
            lineage: mb.lineage.clone(),
            partition_key_value: PartitionKeyValue::default(),
            tries: 2,
            process: "process001".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            total_items: 3,
            succeeded_items: 3,
            failed_items: 0,
            elapsed_seconds: 0.5,
            run_seconds: 0.25,
            status: MiniBatchStatus::Succeeded,
            error_message: String::new(),
            traceback: None,
            earlier_errors: vec![(1, "boom".into())],
            bisection_calls: 0,
            isolated: Vec::new(),
        };
        let done = CompletedMiniBatch {
            id: mb.id,
            index: 1,
            lineage: mb.lineage.clone(),
            result: Some(mb.data.clone()),
            returned: 3,
            record: record.clone(),
            fingerprint: 22,
            source: None,
            failed_input: None,
        };
        let back = read_envelopes(&envelope_batch(&done).unwrap()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].record, record);
        assert_eq!(back[0].result.as_ref(), Some(&mb.data));
        assert_eq!((back[0].returned, back[0].fingerprint), (3, 22));
        let none = CompletedMiniBatch {
            result: None,
            ..done
        };
        let back = read_envelopes(&envelope_batch(&none).unwrap()).unwrap();
        assert!(back[0].result.is_none());
    }
}
