//! [`slice_fingerprint`]: what identifies a mini-batch's input slice, so that a resumed job can
//! tell, while it cuts the input again, whether the mini-batch it is about to skip is still
//! made of the same items as the one an earlier run committed.

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sha2::{Digest, Sha256};

use crate::batch::{ItemKind, MiniBatch};

/// A 64-bit fingerprint of `mini_batch`'s input slice: its id, row range, item count and key
/// values, and the contents of its items: every entry of a file mini-batch (path, and size and
/// modification time where listed), the first and last row of a table mini-batch (cheap, and
/// a change anywhere before them shifts the mini-batch boundaries too; a keyed mini-batch's
/// rows keep their input order, the grouping sort breaking ties by row number). Stable across
/// runs, processes and worker counts.
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
    let sampled: Vec<usize> = match (mini_batch.kind, rows) {
        (_, 0) => Vec::new(),
        (ItemKind::Files, _) => (0..rows).collect(),
        (ItemKind::Rows, 1) => vec![0],
        (ItemKind::Rows, _) => vec![0, rows - 1],
    };
    if sampled.is_empty() {
        return finish(hash);
    }
    let options = FormatOptions::default().with_null("\u{0}null");
    for column in data.columns() {
        let column = column.as_ref();
        // Text and fixed-width values by their bytes (a file mini-batch hashes every entry);
        // other types as the formatter shows them.
        let width = column.data_type().primitive_width();
        let values = column.to_data();
        let text = match column.data_type() {
            DataType::Utf8 => Some(Text::Utf8(column.as_string::<i32>())),
            DataType::LargeUtf8 => Some(Text::Large(column.as_string::<i64>())),
            DataType::Utf8View => Some(Text::View(column.as_string_view())),
            _ => None,
        };
        let formatter = if text.is_none() && width.is_none() {
            match ArrayFormatter::try_new(column, &options) {
                Ok(f) => Some(f),
                // A type the formatter cannot show still counts by its length.
                Err(_) => {
                    hash.update(column.len().to_le_bytes());
                    continue;
                }
            }
        } else {
            None
        };
        for &row in &sampled {
            if column.is_null(row) {
                hash.update([0x00, 0x1e]);
                continue;
            }
            match (&text, width, &formatter) {
                (Some(Text::Utf8(a)), _, _) => hash.update(a.value(row).as_bytes()),
                (Some(Text::Large(a)), _, _) => hash.update(a.value(row).as_bytes()),
                (Some(Text::View(a)), _, _) => hash.update(a.value(row).as_bytes()),
                (None, Some(width), _) => {
                    let start = (values.offset() + row) * width;
                    if let Some(bytes) = values
                        .buffers()
                        .first()
                        .and_then(|b| b.as_slice().get(start..start + width))
                    {
                        hash.update(bytes);
                    }
                }
                (_, _, Some(f)) => hash.update(f.value(row).to_string().as_bytes()),
                _ => {}
            }
            hash.update([0x1f]);
        }
    }
    finish(hash)
}

/// The text columns a fingerprint reads directly.
enum Text<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

fn finish(hash: Sha256) -> u64 {
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
