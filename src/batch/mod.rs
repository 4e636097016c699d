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
mod keyed;

pub(crate) use chunker::compact_concat;
pub use chunker::{slice_memory_size, ByteChunker, FileChunker};
pub use keyed::{json_value, key_id, KeyChunker};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

/// Stable identity of a mini-batch: input ordinal and sequence number within that input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MiniBatchId {
    /// Ordinal of the input among the job's processed inputs.
    pub input: u32,
    /// Position of the mini-batch within its input (0-based).
    pub seq: u64,
}

impl fmt::Display for MiniBatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.input, self.seq)
    }
}

impl std::str::FromStr for MiniBatchId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('-')
            .ok_or_else(|| format!("mini-batch id {s:?}: expected INPUT-SEQ, e.g. 0-17"))?;
        Ok(MiniBatchId {
            input: i
                .parse()
                .map_err(|_| format!("mini-batch id {s:?}: bad input ordinal"))?,
            seq: n
                .parse()
                .map_err(|_| format!("mini-batch id {s:?}: bad sequence number"))?,
        })
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
