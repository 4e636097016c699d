//! Cutting record-batch streams into mini-batches.

use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayData, MutableArrayData, RecordBatch};
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

/// Concatenates `pieces` into one batch that owns exactly their rows (always a copy, also for a
/// single piece, which `concat_batches` would return as is, parent buffers and all).
pub(crate) fn compact_concat(schema: &SchemaRef, pieces: &[RecordBatch]) -> Result<RecordBatch> {
    let rows: usize = pieces.iter().map(|p| p.num_rows()).sum();
    if pieces.len() > 1 {
        return Ok(gc_views(concat_batches(schema, pieces)?));
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for i in 0..schema.fields().len() {
        let datas: Vec<ArrayData> = pieces.iter().map(|p| p.column(i).to_data()).collect();
        let refs: Vec<&ArrayData> = datas.iter().collect();
        let mut copy = MutableArrayData::new(refs, false, rows);
        for (n, d) in datas.iter().enumerate() {
            copy.try_extend(n, 0, d.len())?;
        }
        columns.push(make_array(copy.freeze()));
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(gc_views(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?))
}

/// View arrays keep referencing their source's data buffers after a copy: compact them.
fn gc_views(batch: RecordBatch) -> RecordBatch {
    use arrow::array::AsArray;
    if !batch
        .schema_ref()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return batch;
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| -> arrow::array::ArrayRef {
            match c.data_type() {
                DataType::Utf8View => Arc::new(c.as_string_view().gc()),
                DataType::BinaryView => Arc::new(c.as_binary_view().gc()),
                _ => c.clone(),
            }
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
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
        let rows = batch.num_rows();
        self.push_rows(&batch, 0..rows)
    }

    /// Adds rows `range` of `batch`, sized as the whole batch's rows are; returns the
    /// mini-batches they complete.
    pub fn push_rows(
        &mut self,
        batch: &RecordBatch,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<MiniBatch>> {
        let mut out = Vec::new();
        let rows = batch.num_rows();
        let end = range.end.min(rows);
        if rows == 0 || range.start >= end {
            return Ok(out);
        }
        let bytes = slice_memory_size(batch).max(1);
        let bytes_per_row = (bytes as f64 / rows as f64).max(f64::MIN_POSITIVE);
        let mut offset = range.start;
        while offset < end {
            let room = self.target_bytes.saturating_sub(self.pending_bytes);
            // At least one row, so progress is guaranteed even when one row exceeds the target.
            let take = ((room as f64 / bytes_per_row).ceil() as usize).clamp(1, end - offset);
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
        let data = compact_concat(&self.schema, &self.pending)?;
        let end = self.start_row + self.pending_rows;
        let mb = MiniBatch {
            id: MiniBatchId::new(self.input, self.next_seq),
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn batch(start: i64, n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        let ids: Vec<i64> = (start..start + n as i64).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("text of row {i:08}")),
                )),
            ],
        )
        .unwrap()
    }

    fn cut(batches: Vec<RecordBatch>, target: u64) -> Vec<MiniBatch> {
        let mut c = ByteChunker::new(0, Arc::from("t"), batches[0].schema(), target);
        let mut out = Vec::new();
        for b in batches {
            out.extend(c.push(b).unwrap());
        }
        out.extend(c.finish().unwrap());
        out
    }

    #[test]
    fn slices_count_only_their_rows() {
        let b = batch(0, 10_000);
        let whole = slice_memory_size(&b);
        let tenth = slice_memory_size(&b.slice(0, 1_000));
        assert!(
            tenth * 9 < whole && tenth * 11 > whole,
            "tenth={tenth} whole={whole}"
        );
        assert!(tenth < b.slice(0, 1_000).get_array_memory_size() / 5);
    }

    #[test]
    fn mini_batches_are_about_the_target_size() {
        let target = 16 * 1024;
        let mbs = cut(vec![batch(0, 50_000)], target);
        assert!(mbs.len() > 50);
        for mb in &mbs[..mbs.len() - 1] {
            let size = mb.memory_size() as f64;
            assert!(
                size >= target as f64 * 0.9 && size <= target as f64 * 1.1,
                "size {size}"
            );
        }
        assert!(
            mbs.iter().all(|m| m.items() > 0),
            "never an empty mini-batch"
        );
    }

    #[test]
    fn rows_are_contiguous_and_complete_across_batch_boundaries() {
        let batches: Vec<_> = (0..7).map(|i| batch(i * 333, 333)).collect();
        let mbs = cut(batches, 4096);
        let mut next = 0u64;
        for (seq, mb) in mbs.iter().enumerate() {
            assert_eq!(mb.id, MiniBatchId::new(0, seq as u64));
            assert_eq!(mb.lineage.rows.start, next);
            let ids = mb
                .data
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(ids.value(0) as u64, next);
            next = mb.lineage.rows.end;
            assert_eq!(mb.items(), mb.lineage.rows.end - mb.lineage.rows.start);
        }
        assert_eq!(next, 7 * 333);
    }

    #[test]
    fn a_row_bigger_than_the_target_is_its_own_mini_batch() {
        let mbs = cut(vec![batch(0, 5)], 1);
        assert_eq!(mbs.len(), 5);
    }

    #[test]
    fn mini_batches_do_not_keep_parent_buffers() {
        let mbs = cut(vec![batch(0, 100_000)], 8 * 1024);
        let mb = &mbs[3];
        // Compacted: the batch's buffers hold about its own rows, not the 100k-row parent.
        assert!(
            mb.data.get_array_memory_size() < 4 * mb.memory_size(),
            "{} vs {}",
            mb.data.get_array_memory_size(),
            mb.memory_size()
        );
    }

    #[test]
    fn file_chunker_counts_files() {
        let schema = batch(0, 1).schema();
        let mut c = FileChunker::new(1, Arc::from("f"), schema, 10);
        let mut out = c.push(batch(0, 25)).unwrap();
        out.extend(c.finish().unwrap());
        let sizes: Vec<u64> = out.iter().map(|m| m.items()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        assert!(out
            .iter()
            .all(|m| m.kind == ItemKind::Files && m.id.input == 1));
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = MiniBatchId::new(2, 17);
        assert_eq!(id.to_string(), "2-17");
        assert_eq!("2-17".parse::<MiniBatchId>().unwrap(), id);
        assert!("17".parse::<MiniBatchId>().is_err());
    }
}
