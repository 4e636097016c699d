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
}

impl MiniBatchRecord {
    /// True when the mini-batch succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == MiniBatchStatus::Succeeded
    }
}
