//! partition_keys: one mini-batch per distinct key tuple.
//!
//! Each keyed input is sorted once: a row number is appended ([`RowIdExec`], so rows keep their
//! input order within a key) and one `SortExec` orders the rows on (keys, row number), spilling
//! through DataFusion's memory pool when the data does not fit. A [`crate::batch::KeyChunker`]
//! then cuts the sorted stream where the key changes, and the key groups go to the shared queue
//! like any mini-batch, so every worker takes groups as it becomes free.
//!
//! One sort, not one per worker: sorts running side by side split the pool between them, and
//! with 4 or more workers each share fell below what a sort needs to merge its spill files, so
//! jobs failed for memory on data a few times the limit. One sort has the whole pool whatever
//! the worker count, and [`RowIdExec`] cuts its input into batches small against the pool, so
//! a sort never meets a batch it cannot hold. Only the largest key group must fit in memory.
//! Its merge reads a bounded number of spill files at once
//! ([`crate::session::spill_merge_fan_in`]), so the memory it holds outside the pool depends on
//! the limit, not on the data's size.
//!
//! Mini-batch ids of keyed inputs are derived from the key values (see
//! [`crate::batch::key_id`]), so they do not depend on the number of workers.

use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

use crate::batch::compact_concat;
use crate::error::{PrsError, Result};

/// The smallest batch [`RowIdExec`] cuts for the sort, whatever the pool.
const MIN_SORT_BATCH_BYTES: usize = 64 * 1024;

/// `batch` as it is when it holds at most `max_bytes`, else cut into compact (copied) pieces of
/// about `max_bytes` each: a slice alone would still count its whole buffers in the pool.
fn split_batch(batch: DFResult<RecordBatch>, max_bytes: usize) -> Vec<DFResult<RecordBatch>> {
    let batch = match batch {
        Ok(b) => b,
        Err(e) => return vec![Err(e)],
    };
    let bytes = batch.get_array_memory_size();
    let rows = batch.num_rows();
    if bytes <= max_bytes || rows <= 1 {
        return vec![Ok(batch)];
    }
    let per_piece = (rows * max_bytes / bytes).max(1);
    (0..rows)
        .step_by(per_piece)
        .map(|start| {
            let piece = batch.slice(start, per_piece.min(rows - start));
            compact_concat(&batch.schema(), &[piece]).map_err(|e| e.into_datafusion())
        })
        .collect()
}

/// Name of the row-number column added to keyed inputs (removed before run() sees the rows).
pub const ROW_ID: &str = "__parallel_run_row";

/// Checks that every key is a column of `schema`, naming the missing key and the input.
pub fn check_keys(input: &str, schema: &Schema, keys: &[String]) -> Result<()> {
    for key in keys {
        if schema.index_of(key).is_err() {
            let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(PrsError::config(
                "partition_keys",
                key,
                format!(
                    "is not a column of input {input:?} (its columns: {})",
                    columns.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The plan of one partition holding every row, sorted by key and then by input order.
pub fn keyed_plan(
    input: Arc<dyn ExecutionPlan>,
    keys: &[String],
) -> Result<Arc<dyn ExecutionPlan>> {
    let with_ids: Arc<dyn ExecutionPlan> = Arc::new(RowIdExec::new(input));
    let schema = with_ids.schema();
    let column = |name: &str| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Column::new_with_schema(name, &schema)?))
    };
    let key_exprs = keys.iter().map(|k| column(k)).collect::<Result<Vec<_>>>()?;
    let mut order: Vec<PhysicalSortExpr> = key_exprs
        .into_iter()
        .map(PhysicalSortExpr::new_default)
        .collect();
    order.push(PhysicalSortExpr::new_default(column(ROW_ID)?));
    let ordering = LexOrdering::new(order)
        .ok_or_else(|| PrsError::missing("partition_keys", "at least one key"))?;
    Ok(Arc::new(SortExec::new(ordering, with_ids)))
}

/// Appends a `UInt64` row number (in the order of the input's partitions, read one after the
/// other) to every row. Output: one partition, in batches of at most 1/16 of the memory pool
/// (larger ones are split and copied), so the sort above can always take the next batch.
pub struct RowIdExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for RowIdExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowIdExec")
    }
}

impl RowIdExec {
    /// Numbers the rows of `input`.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let mut fields: Vec<Field> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW_ID, DataType::UInt64, false));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input.schema().metadata().clone(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        RowIdExec {
            input,
            schema,
            properties,
        }
    }
}

impl DisplayAs for RowIdExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RowIdExec")
    }
}

impl ExecutionPlan for RowIdExec {
    fn name(&self) -> &str {
        "RowIdExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(child) if children.is_empty() => Ok(Arc::new(RowIdExec::new(child))),
            _ => datafusion::common::internal_err!("RowIdExec takes one child"),
        }
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let context_pool_limit = context.memory_pool().memory_limit();
        let input = self.input.clone();
        let schema = self.schema.clone();
        let partitions = input.output_partitioning().partition_count();
        let streams = (0..partitions).map(move |p| input.execute(p, context.clone()));
        let batches = futures::stream::iter(streams)
            .map(|s| match s {
                Ok(stream) => stream.boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        let max_bytes = match context_pool_limit {
            MemoryLimit::Finite(pool) => (pool / 16).max(MIN_SORT_BATCH_BYTES),
            _ => usize::MAX,
        };
        let out_schema = schema.clone();
        let numbered = batches
            .flat_map(move |batch| futures::stream::iter(split_batch(batch, max_bytes)))
            .scan(0u64, move |next, batch| {
                let result = batch.and_then(|b| {
                    let n = b.num_rows() as u64;
                    let ids = UInt64Array::from_iter_values(*next..*next + n);
                    *next += n;
                    let mut columns = b.columns().to_vec();
                    columns.push(Arc::new(ids));
                    Ok(RecordBatch::try_new(out_schema.clone(), columns)?)
                });
                futures::future::ready(Some(result))
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, numbered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringArray};

    #[test]
    fn large_batches_are_cut_into_compact_pieces_under_the_cap() {
        let text: StringArray = (0..1000).map(|i| Some(format!("row {i:0100}"))).collect();
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(text)]).unwrap();
        let cap = batch.get_array_memory_size() / 7;
        let pieces: Vec<RecordBatch> = split_batch(Ok(batch.clone()), cap)
            .into_iter()
            .map(|p| p.unwrap())
            .collect();
        assert!(pieces.len() >= 7, "{} pieces", pieces.len());
        assert!(pieces
            .iter()
            .all(|p| p.get_array_memory_size() <= cap + 1024));
        let rows: usize = pieces.iter().map(|p| p.num_rows()).sum();
        assert_eq!(rows, 1000);
        let first = pieces[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            first.value(0),
            batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0)
        );
        // Small batches pass through untouched.
        let same = split_batch(Ok(batch.clone()), usize::MAX);
        assert_eq!(same.len(), 1);
    }
}
