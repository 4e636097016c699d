//! The ledger as a table: one row per mini-batch with its final record (SQL's
//! `parallel_run_ledger('OUT')`).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::ledger::LedgerEntry;

/// The table's schema.
pub fn ledger_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let count = |name: &str| Field::new(name, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        text("mini_batch_id", false),
        text("status", false),
        text("input", false),
        count("rows_start"),
        count("rows_end"),
        text("partition_key_value", true),
        Field::new("tries", DataType::UInt32, false),
        text("process", false),
        Field::new(
            "start_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        count("total_items"),
        count("succeeded_items"),
        count("failed_items"),
        Field::new("elapsed_seconds", DataType::Float64, false),
        Field::new("run_seconds", DataType::Float64, false),
        text("error_message", false),
        text("part", true),
        Field::new("run", DataType::UInt32, false),
    ]))
}

/// `entries` (in mini-batch id order) as one batch of [`ledger_schema`].
pub fn entries_batch(entries: &[&LedgerEntry]) -> Result<RecordBatch> {
    let n = entries.len();
    let mut id = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut input = StringBuilder::new();
    let mut start = UInt64Builder::with_capacity(n);
    let mut end = UInt64Builder::with_capacity(n);
    let mut keys = StringBuilder::new();
    let mut tries = UInt32Builder::with_capacity(n);
    let mut process = StringBuilder::new();
    let mut started = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut total = UInt64Builder::with_capacity(n);
    let mut succeeded = UInt64Builder::with_capacity(n);
    let mut failed = UInt64Builder::with_capacity(n);
    let mut elapsed = Float64Builder::with_capacity(n);
    let mut run_seconds = Float64Builder::with_capacity(n);
    let mut error = StringBuilder::new();
    let mut part = StringBuilder::new();
    let mut run = UInt32Builder::with_capacity(n);
    for entry in entries {
        let r = &entry.record;
        id.append_value(r.id.to_string());
        status.append_value(r.status.as_str());
        input.append_value(r.lineage.input.as_ref());
        start.append_value(r.lineage.rows.start);
        end.append_value(r.lineage.rows.end);
        if r.partition_key_value.is_empty() {
            keys.append_null();
        } else {
            keys.append_value(serde_json::to_string(&r.partition_key_value).unwrap_or_default());
        }
        tries.append_value(r.tries);
        process.append_value(&r.process);
        let micros = r
            .start_time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        started.append_value(micros);
        total.append_value(r.total_items);
        succeeded.append_value(r.succeeded_items);
        failed.append_value(r.failed_items);
        elapsed.append_value(r.elapsed_seconds);
        run_seconds.append_value(r.run_seconds);
        error.append_value(&r.error_message);
        part.append_option(entry.part.as_ref().map(|p| p.file.as_str()));
        run.append_value(entry.run);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(status.finish()),
        Arc::new(input.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(keys.finish()),
        Arc::new(tries.finish()),
        Arc::new(process.finish()),
        Arc::new(started.finish()),
        Arc::new(total.finish()),
        Arc::new(succeeded.finish()),
        Arc::new(failed.finish()),
        Arc::new(elapsed.finish()),
        Arc::new(run_seconds.finish()),
        Arc::new(error.finish()),
        Arc::new(part.finish()),
        Arc::new(run.finish()),
    ];
    Ok(RecordBatch::try_new(ledger_schema(), columns)?)
}
