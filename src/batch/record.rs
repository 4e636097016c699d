//! The record of a processed mini-batch ([`MiniBatchRecord`]): one type for the report's
//! `processed_mini-batches.csv`, the observers, and (serialized) the ledger of the resume and
//! multi-node issues; see `docs/design/mini-batches.md`.

use std::time::SystemTime;

use crate::batch::{Lineage, MiniBatchId, MiniBatchStatus, PartitionKeyValue};

/// What is known of one mini-batch once it reached its final status: the row of
/// `processed_mini-batches.csv`, and the record a ledger keeps (JSON, one per line) to resume
/// a job without running a finished mini-batch again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MiniBatchRecord {
    /// Stable id.
    pub id: MiniBatchId,
    /// Dispatch order (`minibatch_index`).
    pub index: u64,
    /// Input name and row range.
    pub lineage: Lineage,
    /// Key values (partition_keys), empty otherwise.
    pub partition_key_value: PartitionKeyValue,
    /// Tries used.
    pub tries: u32,
    /// Agent name of the worker of the last try.
    pub process: String,
    /// When the first try started.
    pub start_time: SystemTime,
    /// Items in the mini-batch.
    pub total_items: u64,
    /// Items returned by run() (capped at total).
    pub succeeded_items: u64,
    /// Items not returned, or all items when the mini-batch failed.
    pub failed_items: u64,
    /// Wall time from first try to the end, seconds.
    pub elapsed_seconds: f64,
    /// Time inside the last run() call, seconds.
    pub run_seconds: f64,
    /// `SUCCEEDED`, `RUN_EXCEPTION`, `RUN_TIMEOUT`, `PROCESS_CRASHED`, `BAD_RESULT`.
    pub status: MiniBatchStatus,
    /// Last error message (empty on success), or the warning about extra returned rows.
    pub error_message: String,
    /// Traceback of the last failure, when known.
    pub traceback: Option<String>,
    /// The other errors of the failed tries, distinct, each with the first try that had it
    /// (the cause is often in an early try: a crash, then timeouts of the replacement).
    pub earlier_errors: Vec<(u32, String)>,
    /// run() calls made by bisection (`isolate_failures`), counted in `tries` too.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bisection_calls: u32,
    /// The items bisection isolated as failing, in row order (empty when not bisected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated: Vec<IsolatedItem>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An item (row or file) that bisection isolated as failing: the derived mini-batch that
/// held only it, and why its run() call failed. When bisection stopped before reaching single
/// items (its call budget was spent), `rows` spans the part that was still failing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IsolatedItem {
    /// The derived id (`0-17.0110`).
    pub id: MiniBatchId,
    /// Positions within the original mini-batch, `[start, end)` (one item: `end = start + 1`).
    pub rows: std::ops::Range<u64>,
    /// How its call failed (`RUN_EXCEPTION`, `RUN_TIMEOUT`, `PROCESS_CRASHED`, `BAD_RESULT`).
    pub status: MiniBatchStatus,
    /// The error message.
    pub error_message: String,
    /// The traceback, when known.
    pub traceback: Option<String>,
}

impl MiniBatchRecord {
    /// True when the mini-batch succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == MiniBatchStatus::Succeeded
    }
}
