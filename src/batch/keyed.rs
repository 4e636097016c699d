//! Cutting key-sorted streams into one mini-batch per key tuple.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::memory_pool::MemoryReservation;
use sha2::{Digest, Sha256};

use crate::batch::chunker::compact_concat;
use crate::batch::{
    slice_memory_size, ItemKind, Lineage, MiniBatch, MiniBatchId, PartitionKeyValue,
};
use crate::error::{PrsError, Result};

/// The id of the mini-batch of input `input` holding key values `values`: the first 8 bytes of
/// SHA-256 over the canonical JSON of the values (cleared top bit), so ids are stable across
/// runs and worker counts.
pub fn key_id(input: u32, values: &PartitionKeyValue) -> MiniBatchId {
    // Sorted by key name: the ids of earlier versions, whatever the order of partition_keys.
    let canonical = serde_json::to_string(&values.sorted()).unwrap_or_default();
    let digest = Sha256::digest(canonical.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    MiniBatchId::new(input, u64::from_be_bytes(bytes) >> 1)
}

/// The value at `row` of `array` as JSON (numbers and booleans as such, everything else as
/// its display text).
pub fn json_value(array: &dyn Array, row: usize) -> serde_json::Value {
    use arrow::datatypes::DataType::*;
    if array.is_null(row) {
        return serde_json::Value::Null;
    }
    let text = ArrayFormatter::try_new(array, &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_default();
    match array.data_type() {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => text
            .parse::<i128>()
            .ok()
            .and_then(serde_json::Number::from_i128)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::String(text)),
        Float16 | Float32 | Float64 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::String(text)),
        Boolean => serde_json::Value::Bool(text == "true"),
        _ => serde_json::Value::String(text),
    }
}

/// Cuts one key-sorted partition (with the row-number column last) into one mini-batch per
/// key tuple. A key group is held in memory until it is complete; its bytes are reserved in
/// the memory pool, and a group that does not fit fails with an error naming the key.
pub struct KeyChunker {
    input: u32,
    input_name: Arc<str>,
    kind: ItemKind,
    keys: Vec<String>,
    key_indices: Vec<usize>,
    /// Schema of the rows handed to run() (without the row number).
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    pending_key: Option<Vec<String>>,
    pending_rows: u64,
    first_row: u64,
    reservation: MemoryReservation,
}

impl KeyChunker {
    /// A chunker for input `input` whose rows (as sorted, with the row number last) have
    /// `sorted_schema`.
    pub fn new(
        input: u32,
        input_name: Arc<str>,
        kind: ItemKind,
        sorted_schema: &SchemaRef,
        keys: &[String],
        reservation: MemoryReservation,
    ) -> Result<Self> {
        let key_indices = keys
            .iter()
            .map(|k| {
                sorted_schema.index_of(k).map_err(|_| {
                    PrsError::config(
                        "partition_keys",
                        k,
                        format!("is not a column of input {input_name:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let n = sorted_schema.fields().len().saturating_sub(1);
        let schema = Arc::new(sorted_schema.project(&(0..n).collect::<Vec<_>>())?);
        Ok(KeyChunker {
            input,
            input_name,
            kind,
            keys: keys.to_vec(),
            key_indices,
            schema,
            pending: Vec::new(),
            pending_key: None,
            pending_rows: 0,
            first_row: 0,
            reservation,
        })
    }

    /// Adds a sorted batch; returns the key groups it completes.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<MiniBatch>> {
        let mut out = Vec::new();
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        let key_columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let ranges = arrow::compute::partition(&key_columns)?.ranges();
        for range in ranges {
            let key = self.key_text(&key_columns, range.start);
            if self.pending_key.as_ref().is_some_and(|k| *k != key) {
                out.push(self.emit()?);
            }
            if self.pending_key.is_none() {
                self.pending_key = Some(key);
                let ids = batch.column(batch.num_columns() - 1);
                self.first_row = ids
                    .as_any()
                    .downcast_ref::<arrow::array::UInt64Array>()
                    .map_or(0, |a| a.value(range.start));
            }
            let piece = batch.slice(range.start, range.end - range.start);
            let bytes = slice_memory_size(&piece);
            if let Err(e) = self.reservation.try_grow(bytes) {
                return Err(PrsError::Input {
                    input: self.input_name.to_string(),
                    location: format!("partition key {}", self.describe_key()),
                    message: format!(
                        "this key's rows need more than {} bytes, more than the memory limit allows ({e}); \
                         one key's rows must fit in memory: raise memory_limit or use finer partition_keys",
                        self.reservation.size() + bytes
                    ),
                });
            }
            self.pending_rows += piece.num_rows() as u64;
            self.pending.push(piece);
        }
        Ok(out)
    }

    /// Emits the last group.
    pub fn finish(&mut self) -> Result<Option<MiniBatch>> {
        if self.pending_key.is_none() {
            return Ok(None);
        }
        self.emit().map(Some)
    }

    fn key_text(&self, columns: &[ArrayRef], row: usize) -> Vec<String> {
        columns
            .iter()
            .map(|c| json_value(c.as_ref(), row).to_string())
            .collect()
    }

    fn describe_key(&self) -> String {
        let values = self.pending_key.clone().unwrap_or_default();
        self.keys
            .iter()
            .zip(values)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn emit(&mut self) -> Result<MiniBatch> {
        let mut values = PartitionKeyValue::default();
        if let Some(first) = self.pending.first() {
            for (key, index) in self.keys.iter().zip(&self.key_indices) {
                values.push(key.clone(), json_value(first.column(*index).as_ref(), 0));
            }
        }
        let n = self.schema.fields().len();
        let pieces = self
            .pending
            .iter()
            .map(|p| RecordBatch::try_new(self.schema.clone(), p.columns()[..n].to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let data = compact_concat(&self.schema, &pieces)?;
        let rows = self.pending_rows;
        let mb = MiniBatch {
            id: key_id(self.input, &values),
            kind: self.kind,
            data,
            lineage: Lineage {
                input: self.input_name.clone(),
                rows: self.first_row..self.first_row + rows,
            },
            partition_key_value: values,
        };
        self.pending.clear();
        self.pending_key = None;
        self.pending_rows = 0;
        self.reservation.free();
        Ok(mb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_values_keep_their_order_and_ids_do_not_depend_on_it() {
        let store_first: PartitionKeyValue =
            [("Store", json!(1000)), ("Brand", json!("dominicks"))]
                .into_iter()
                .collect();
        let brand_first: PartitionKeyValue =
            [("Brand", json!("dominicks")), ("Store", json!(1000))]
                .into_iter()
                .collect();
        assert_eq!(
            serde_json::to_string(&store_first).unwrap(),
            r#"{"Store":1000,"Brand":"dominicks"}"#
        );
        assert_eq!(key_id(2, &store_first), key_id(2, &brand_first));
        // The id earlier versions derived from the alphabetically sorted values.
        let digest = Sha256::digest(br#"{"Brand":"dominicks","Store":1000}"#);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        assert_eq!(key_id(2, &store_first).seq, u64::from_be_bytes(bytes) >> 1);
    }
}
