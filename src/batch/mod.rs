//! Mini-batches: what they are ([`MiniBatch`], [`MiniBatchId`], [`Lineage`]) and how they are cut
//! from record-batch streams ([`ByteChunker`] for tables, [`FileChunker`] for file datasets).
//!
//! # How ids are derived
//! Each processed input has an ordinal (its position among the job's processed inputs) and is
//! read as one stream in a fixed order (files sorted by path, rows in file order). Mini-batches
//! are cut from that stream front to back, so the n-th mini-batch of input i is always the same
//! rows, whatever the number of workers or their timing. Its id is `"{i}-{n}"` (both decimal,
//! from 0). The lineage records the input and the row range `[start, end)` of the mini-batch
//! within that ordered stream (for file datasets: the file paths themselves).
//!
//! With `partition_keys`, a mini-batch is one key tuple: its id is `"{i}-{h}"` where `h` is
//! derived from the key values ([`key_id`]), so it is stable across runs and worker counts.

mod chunker;
mod fingerprint;
mod keyed;
mod record;

pub(crate) use chunker::compact_concat;
pub use chunker::{slice_memory_size, ByteChunker, FileChunker};
pub use fingerprint::slice_fingerprint;
pub use keyed::{json_value, key_id, KeyChunker};
pub use record::{IsolatedItem, MiniBatchRecord};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

/// Stable identity of a mini-batch: input ordinal, sequence number within that input and,
/// for a mini-batch derived from another by splitting it in halves (bisecting a failing
/// mini-batch, see `docs/design/mini-batches.md`), the path of halves taken.
///
/// Written `INPUT-SEQ` (`0-17`), and `INPUT-SEQ.PATH` for a derived one, one digit per split,
/// `0` the first half and `1` the second (`0-17.10`: the first half of the second half of
/// `0-17`). Ids order as their rows do: by input, sequence, then position within the
/// original mini-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MiniBatchId {
    /// Ordinal of the input among the job's processed inputs.
    pub input: u32,
    /// Position of the mini-batch within its input (0-based).
    pub seq: u64,
    /// The halves taken from the original mini-batch (empty for an original one).
    pub split: SplitPath,
}

/// The halves taken to reach a derived mini-batch: `depth` splits, the i-th one (from the
/// original) in bit `depth - 1 - i` of `bits` (0: first half, 1: second half).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SplitPath {
    depth: u8,
    bits: u64,
}

impl SplitPath {
    /// The most splits a path holds: a mini-batch is at most 2^63 items.
    pub const MAX_DEPTH: u8 = 63;

    /// Number of splits (0: not derived).
    pub fn depth(self) -> u8 {
        self.depth
    }

    /// The halves, from the original mini-batch down: `false` first, `true` second.
    pub fn halves(self) -> impl Iterator<Item = bool> {
        (0..self.depth).map(move |i| self.bits >> (self.depth - 1 - i) & 1 == 1)
    }

    /// The path left-aligned in 64 bits: orders derived mini-batches as their rows.
    fn aligned(self) -> u64 {
        if self.depth == 0 {
            0
        } else {
            self.bits << (64 - u32::from(self.depth))
        }
    }
}

impl MiniBatchId {
    /// The original (not derived) mini-batch `seq` of input `input`.
    pub fn new(input: u32, seq: u64) -> Self {
        MiniBatchId {
            input,
            seq,
            split: SplitPath::default(),
        }
    }

    /// True for a mini-batch derived by splitting.
    pub fn is_derived(&self) -> bool {
        self.split.depth > 0
    }

    /// The ids of the two halves of this mini-batch; `None` past [`SplitPath::MAX_DEPTH`].
    pub fn halves(&self) -> Option<(MiniBatchId, MiniBatchId)> {
        if self.split.depth >= SplitPath::MAX_DEPTH {
            return None;
        }
        let half = |second: u64| MiniBatchId {
            split: SplitPath {
                depth: self.split.depth + 1,
                bits: self.split.bits << 1 | second,
            },
            ..*self
        };
        Some((half(0), half(1)))
    }

    /// The mini-batch this one was split from (`None` for an original one).
    pub fn parent(&self) -> Option<MiniBatchId> {
        (self.split.depth > 0).then(|| MiniBatchId {
            split: SplitPath {
                depth: self.split.depth - 1,
                bits: self.split.bits >> 1,
            },
            ..*self
        })
    }

    /// The original mini-batch this one derives from (itself when not derived).
    pub fn original(&self) -> MiniBatchId {
        MiniBatchId::new(self.input, self.seq)
    }
}

impl Ord for MiniBatchId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.input, self.seq, self.split.aligned(), self.split.depth).cmp(&(
            other.input,
            other.seq,
            other.split.aligned(),
            other.split.depth,
        ))
    }
}

impl PartialOrd for MiniBatchId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MiniBatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.input, self.seq)?;
        if self.is_derived() {
            f.write_str(".")?;
            for second in self.split.halves() {
                f.write_str(if second { "1" } else { "0" })?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for MiniBatchId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, rest) = s
            .split_once('-')
            .ok_or_else(|| format!("mini-batch id {s:?}: expected INPUT-SEQ, e.g. 0-17"))?;
        let (n, path) = rest.split_once('.').unwrap_or((rest, ""));
        let mut id = MiniBatchId::new(
            i.parse()
                .map_err(|_| format!("mini-batch id {s:?}: bad input ordinal"))?,
            n.parse()
                .map_err(|_| format!("mini-batch id {s:?}: bad sequence number"))?,
        );
        if rest.contains('.') && path.is_empty() {
            return Err(format!("mini-batch id {s:?}: nothing after the '.'"));
        }
        for c in path.chars() {
            let (first, second) = id.halves().ok_or_else(|| {
                format!(
                    "mini-batch id {s:?}: more than {} splits",
                    SplitPath::MAX_DEPTH
                )
            })?;
            id = match c {
                '0' => first,
                '1' => second,
                _ => return Err(format!("mini-batch id {s:?}: the split path is 0s and 1s")),
            };
        }
        Ok(id)
    }
}

impl serde::Serialize for MiniBatchId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MiniBatchId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of items a mini-batch holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// Table rows: run() receives a DataFrame / RecordBatch.
    Rows,
    /// Files: the batch has columns `path`, `size`, `modified`; run() receives local paths.
    Files,
}

/// Where a mini-batch's items came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The input's name.
    pub input: Arc<str>,
    /// Row range `[start, end)` within the input's ordered row stream. For a partition_keys
    /// mini-batch, whose rows are spread over the input, `start` is the position of its first
    /// row and `end - start` its number of rows.
    pub rows: std::ops::Range<u64>,
}

/// Serialized as `{"input": NAME, "rows": [START, END]}`.
impl serde::Serialize for Lineage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Lineage", 2)?;
        s.serialize_field("input", self.input.as_ref())?;
        s.serialize_field("rows", &[self.rows.start, self.rows.end])?;
        s.end()
    }
}

impl<'de> serde::Deserialize<'de> for Lineage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wire {
            input: String,
            rows: [u64; 2],
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Lineage {
            input: wire.input.into(),
            rows: wire.rows[0]..wire.rows[1],
        })
    }
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}..{}]", self.input, self.rows.start, self.rows.end)
    }
}

/// The key values of a keyed mini-batch, in `partition_keys` order (the user's order, not
/// alphabetical: scripts do `os.path.join(folder, *partition_key_value.values())`). Serializes
/// as a JSON object with the keys in that order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionKeyValue(Vec<(String, serde_json::Value)>);

impl PartitionKeyValue {
    /// Appends the value of the next key.
    pub fn push(&mut self, key: impl Into<String>, value: serde_json::Value) {
        self.0.push((key.into(), value));
    }

    /// True when the mini-batch is not keyed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The (key, value) pairs in `partition_keys` order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The values sorted by key name: the form the mini-batch id is derived from, which
    /// stays the same whatever the order of `partition_keys`.
    pub fn sorted(&self) -> BTreeMap<&str, &serde_json::Value> {
        self.iter().collect()
    }
}

impl<K: Into<String>> FromIterator<(K, serde_json::Value)> for PartitionKeyValue {
    fn from_iter<I: IntoIterator<Item = (K, serde_json::Value)>>(iter: I) -> Self {
        PartitionKeyValue(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl serde::Serialize for PartitionKeyValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for PartitionKeyValue {
    /// Reads the JSON object [`Serialize`](serde::Serialize) writes, keeping its key order.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = PartitionKeyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of partition key values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, serde_json::Value>()? {
                    pairs.push(pair);
                }
                Ok(PartitionKeyValue(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// The final status of a mini-batch (its text exists only in the report files and on the wire:
/// `SUCCEEDED`, `RUN_EXCEPTION`, `RUN_TIMEOUT`, `PROCESS_CRASHED`, `BAD_RESULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MiniBatchStatus {
    /// run() returned (some items may still have failed: fewer results than items).
    Succeeded,
    /// Every try failed; the last one with an exception in run().
    RunException,
    /// ... the last one did not finish within run_invocation_timeout.
    RunTimeout,
    /// ... the last one lost its worker process.
    ProcessCrashed,
    /// ... the last one returned something that cannot be used.
    BadResult,
}

impl MiniBatchStatus {
    /// The status as PRS's reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            MiniBatchStatus::Succeeded => "SUCCEEDED",
            MiniBatchStatus::RunException => "RUN_EXCEPTION",
            MiniBatchStatus::RunTimeout => "RUN_TIMEOUT",
            MiniBatchStatus::ProcessCrashed => "PROCESS_CRASHED",
            MiniBatchStatus::BadResult => "BAD_RESULT",
        }
    }
}

impl std::str::FromStr for MiniBatchStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            MiniBatchStatus::Succeeded,
            MiniBatchStatus::RunException,
            MiniBatchStatus::RunTimeout,
            MiniBatchStatus::ProcessCrashed,
            MiniBatchStatus::BadResult,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| format!("unknown mini-batch status {text:?}"))
    }
}

impl serde::Serialize for MiniBatchStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for MiniBatchStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for MiniBatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One unit of work: the rows (or file entries) one run() call receives.
#[derive(Debug, Clone)]
pub struct MiniBatch {
    /// Stable id.
    pub id: MiniBatchId,
    /// Rows or files.
    pub kind: ItemKind,
    /// The items: only the rows of this mini-batch (compacted, never a view of a larger batch).
    pub data: RecordBatch,
    /// Where the items came from.
    pub lineage: Lineage,
    /// Key values of this mini-batch when partition_keys are set (empty otherwise).
    pub partition_key_value: PartitionKeyValue,
}

impl MiniBatch {
    /// Number of items (rows or files).
    pub fn items(&self) -> u64 {
        self.data.num_rows() as u64
    }

    /// Bytes of the data held.
    pub fn memory_size(&self) -> usize {
        slice_memory_size(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_print_parse_and_order_as_their_rows() {
        let id = MiniBatchId::new(0, 17);
        assert!(!id.is_derived());
        assert_eq!(id.to_string(), "0-17");
        let (first, second) = id.halves().unwrap();
        let (second_first, second_second) = second.halves().unwrap();
        assert_eq!(second_first.to_string(), "0-17.10");
        assert_eq!(second_first.parent(), Some(second));
        assert_eq!(second_first.original(), id);
        assert_eq!(second.split.halves().collect::<Vec<_>>(), [true]);
        for id in [id, first, second, second_first, second_second] {
            assert_eq!(id.to_string().parse::<MiniBatchId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<MiniBatchId>(&json).unwrap(), id);
        }
        // Leaves of one mini-batch, in row order, all before the next mini-batch.
        let mut ids = [
            MiniBatchId::new(0, 18),
            second_second,
            first,
            second_first,
            MiniBatchId::new(0, 16),
        ];
        ids.sort();
        let text: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["0-16", "0-17.0", "0-17.10", "0-17.11", "0-18"]);
    }

    #[test]
    fn bad_ids_say_what_is_wrong() {
        for (text, says) in [
            ("17", "expected INPUT-SEQ"),
            ("0-17.", "nothing after"),
            ("0-17.2", "0s and 1s"),
            ("x-1", "input ordinal"),
        ] {
            let e = text.parse::<MiniBatchId>().unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let deepest = format!("0-1.{}", "1".repeat(usize::from(SplitPath::MAX_DEPTH)));
        let id: MiniBatchId = deepest.parse().unwrap();
        assert!(id.halves().is_none());
        assert!(format!("{deepest}0").parse::<MiniBatchId>().is_err());
    }
}
