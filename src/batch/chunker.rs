//! Cutting record-batch streams into mini-batches.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, SchemaRef};

use crate::batch::{ItemKind, Lineage, MiniBatch, MiniBatchId};
use crate::error::Result;

/// Bytes held by the rows of `batch` (only the rows in the slice, not the shared buffers
/// behind it, which `get_array_memory_size` would count).
pub fn slice_memory_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| array_slice_size(c.as_ref()))
        .sum()
}

fn array_slice_size(array: &dyn Array) -> usize {
    match array.data_type() {
        // Views: 16 bytes per view plus the out-of-line bytes of the strings longer than 12.
        DataType::Utf8View | DataType::BinaryView => {
            let data = array.to_data();
            let views = data.buffer::<u128>(0);
            let offset = data.offset();
            let long: usize = views[offset..offset + data.len()]
                .iter()
                .map(|v| (*v as u32) as usize)
                .filter(|len| *len > 12)
                .sum();
            data.len() * 16 + long + null_bytes(data.len(), data.nulls().is_some())
        }
        _ => match array.to_data().get_slice_memory_size() {
            Ok(n) => n,
            // Types arrow cannot size by slice: share the whole buffers out by length.
            Err(_) => {
                let whole = array.get_array_memory_size();
                let full_len = array
                    .to_data()
                    .buffers()
                    .first()
                    .map(|_| array.len())
                    .unwrap_or(0);
                if full_len == 0 {
                    whole
                } else {
                    whole.min(whole * array.len() / full_len.max(1))
                }
            }
        },
    }
}

fn null_bytes(len: usize, has_nulls: bool) -> usize {
    if has_nulls {
        len.div_ceil(8)
    } else {
        0
    }
}

/// Cuts a stream of record batches into contiguous mini-batches of about `target_bytes` each.
///
/// Batches are sliced and joined as needed, so a mini-batch may hold rows of several record
/// batches (and files), and one big record batch becomes many mini-batches. The cut points
/// depend only on the stream's contents and batch boundaries, which are fixed for a given input,
/// so the same input always gives the same mini-batches. Never emits an empty mini-batch.
pub struct ByteChunker {
    input: u32,
    input_name: Arc<str>,
    target_bytes: usize,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    pending_bytes: usize,
    pending_rows: u64,
    /// Row offset of the first pending row within the input.
    start_row: u64,
    next_seq: u64,
}

impl ByteChunker {
    /// A chunker for input number `input` (named `input_name`) with rows of `schema`.
    pub fn new(input: u32, input_name: Arc<str>, schema: SchemaRef, target_bytes: u64) -> Self {
        ByteChunker {
            input,
            input_name,
            target_bytes: target_bytes.max(1) as usize,
            schema,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_rows: 0,
            start_row: 0,
            next_seq: 0,
        }
    }

    /// Adds a record batch; returns the mini-batches it completes.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<MiniBatch>> {
        let mut out = Vec::new();
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(out);
        }
        let bytes = slice_memory_size(&batch).max(1);
        let bytes_per_row = (bytes as f64 / rows as f64).max(f64::MIN_POSITIVE);
        let mut offset = 0usize;
        while offset < rows {
            let room = self.target_bytes.saturating_sub(self.pending_bytes);
            // At least one row, so progress is guaranteed even when one row exceeds the target.
            let take = ((room as f64 / bytes_per_row).ceil() as usize).clamp(1, rows - offset);
            let piece = batch.slice(offset, take);
            self.pending_bytes += (take as f64 * bytes_per_row).round() as usize;
            self.pending_rows += take as u64;
            self.pending.push(piece);
            offset += take;
            if self.pending_bytes >= self.target_bytes {
                out.push(self.emit()?);
            }
        }
        Ok(out)
    }

    /// Emits the last, possibly smaller, mini-batch.
    pub fn finish(&mut self) -> Result<Option<MiniBatch>> {
        if self.pending_rows == 0 {
            return Ok(None);
        }
        self.emit().map(Some)
    }

    fn emit(&mut self) -> Result<MiniBatch> {
        // concat copies exactly the pending rows: the mini-batch never drags the parent
        // buffers of a sliced batch along (which would make IPC send them all).
        let data = concat_batches(&self.schema, &self.pending)?;
        let end = self.start_row + self.pending_rows;
        let mb = MiniBatch {
            id: MiniBatchId {
                input: self.input,
                seq: self.next_seq,
            },
            kind: ItemKind::Rows,
            data,
            lineage: Lineage {
                input: self.input_name.clone(),
                rows: self.start_row..end,
            },
            partition_key_value: Default::default(),
        };
        self.next_seq += 1;
        self.start_row = end;
        self.pending.clear();
        self.pending_bytes = 0;
        self.pending_rows = 0;
        Ok(mb)
    }
}

/// Cuts a stream of file-listing batches (`path`, `size`, `modified`) into mini-batches of
/// `files_per_batch` files.
pub struct FileChunker {
    inner: RowCountChunker,
}

impl FileChunker {
    /// A chunker for file-dataset input number `input`.
    pub fn new(input: u32, input_name: Arc<str>, schema: SchemaRef, files_per_batch: u64) -> Self {
        FileChunker {
            inner: RowCountChunker::new(input, input_name, schema, files_per_batch.max(1)),
        }
    }

    /// Adds a listing batch; returns the mini-batches it completes.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<MiniBatch>> {
        self.inner.push(batch)
    }

    /// Emits the last, possibly smaller, mini-batch.
    pub fn finish(&mut self) -> Result<Option<MiniBatch>> {
        self.inner.finish()
    }
}

struct RowCountChunker {
    bytes: ByteChunker,
    rows_per_batch: u64,
}

impl RowCountChunker {
    fn new(input: u32, input_name: Arc<str>, schema: SchemaRef, rows_per_batch: u64) -> Self {
        RowCountChunker {
            bytes: ByteChunker::new(input, input_name, schema, u64::MAX),
            rows_per_batch,
        }
    }

    fn push(&mut self, batch: RecordBatch) -> Result<Vec<MiniBatch>> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        while offset < batch.num_rows() {
            let room = (self.rows_per_batch - self.bytes.pending_rows) as usize;
            let take = room.min(batch.num_rows() - offset);
            self.bytes.pending.push(batch.slice(offset, take));
            self.bytes.pending_rows += take as u64;
            offset += take;
            if self.bytes.pending_rows >= self.rows_per_batch {
                let mut mb = self.bytes.emit()?;
                mb.kind = ItemKind::Files;
                out.push(mb);
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Option<MiniBatch>> {
        Ok(self.bytes.finish()?.map(|mut mb| {
            mb.kind = ItemKind::Files;
            mb
        }))
    }
}
