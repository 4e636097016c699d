//! [`slice_fingerprint`]: what identifies a mini-batch's input slice, so that a resumed job can
//! tell, while it cuts the input again, whether the mini-batch it is about to skip is still
//! made of the same items as the one an earlier run committed.

use arrow::util::display::{ArrayFormatter, FormatOptions};
use sha2::{Digest, Sha256};

use crate::batch::{ItemKind, MiniBatch};

/// A 64-bit fingerprint of `mini_batch`'s input slice: its id, row range, item count and key
/// values, and the contents of its items: every entry of a file mini-batch (path, and size and
/// modification time where listed), the first and last row of a table mini-batch (cheap, and
/// a change anywhere before them shifts the mini-batch boundaries too). A keyed mini-batch
/// (`partition_keys`) is identified by its key values and row count only: the order of the
/// rows within a key is not guaranteed from one run to the next (the sort that groups them is
/// not stable). Stable across runs, processes and worker counts.
pub fn slice_fingerprint(mini_batch: &MiniBatch) -> u64 {
    let mut hash = Sha256::new();
    hash.update(mini_batch.id.to_string().as_bytes());
    hash.update(mini_batch.lineage.rows.start.to_le_bytes());
    hash.update(mini_batch.lineage.rows.end.to_le_bytes());
    hash.update(mini_batch.items().to_le_bytes());
    if !mini_batch.partition_key_value.is_empty() {
        let keys = serde_json::to_string(&mini_batch.partition_key_value).unwrap_or_default();
        hash.update(keys.as_bytes());
    }
    let data = &mini_batch.data;
    let rows = data.num_rows();
    let keyed = !mini_batch.partition_key_value.is_empty();
    let sampled: Vec<usize> = match (mini_batch.kind, rows) {
        (_, 0) => Vec::new(),
        (ItemKind::Rows, _) if keyed => Vec::new(),
        (ItemKind::Files, _) => (0..rows).collect(),
        (ItemKind::Rows, 1) => vec![0],
        (ItemKind::Rows, _) => vec![0, rows - 1],
    };
    let options = FormatOptions::default().with_null("\u{0}null");
    for column in data.columns() {
        // A type the formatter cannot show still counts by its length.
        let Ok(formatter) = ArrayFormatter::try_new(column.as_ref(), &options) else {
            hash.update(column.len().to_le_bytes());
            continue;
        };
        for &row in &sampled {
            hash.update(formatter.value(row).to_string().as_bytes());
            hash.update([0x1f]);
        }
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Lineage, MiniBatchId, PartitionKeyValue};
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn mini_batch(kind: ItemKind, values: &[i64], names: &[&str]) -> MiniBatch {
        let data = RecordBatch::try_from_iter(vec![
            ("x", Arc::new(Int64Array::from(values.to_vec())) as ArrayRef),
            (
                "path",
                Arc::new(StringArray::from(names.to_vec())) as ArrayRef,
            ),
        ])
        .unwrap();
        MiniBatch {
            id: MiniBatchId::new(0, 3),
            kind,
            lineage: Lineage {
                input: "in".into(),
                rows: 30..30 + values.len() as u64,
            },
            data,
            partition_key_value: PartitionKeyValue::default(),
        }
    }

    #[test]
    fn the_same_slice_gives_the_same_fingerprint_and_a_changed_one_another() {
        let a = mini_batch(ItemKind::Rows, &[1, 2, 3], &["a", "b", "c"]);
        assert_eq!(slice_fingerprint(&a), slice_fingerprint(&a.clone()));
        // First or last row changed: another fingerprint.
        let last = mini_batch(ItemKind::Rows, &[1, 2, 4], &["a", "b", "c"]);
        assert_ne!(slice_fingerprint(&a), slice_fingerprint(&last));
        let mut moved = a.clone();
        moved.lineage.rows = 31..34;
        assert_ne!(slice_fingerprint(&a), slice_fingerprint(&moved));
        // Files: every entry counts.
        let f = mini_batch(ItemKind::Files, &[1, 2, 3], &["a", "b", "c"]);
        let g = mini_batch(ItemKind::Files, &[1, 2, 3], &["a", "x", "c"]);
        assert_ne!(slice_fingerprint(&f), slice_fingerprint(&g));
    }
}
