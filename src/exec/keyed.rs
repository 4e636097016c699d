//! partition_keys: one mini-batch per distinct key tuple.
//!
//! Each keyed input is turned into DataFusion partitioning: a row number is appended
//! ([`RowIdExec`], so rows keep their input order within a key), rows are hash-partitioned on the
//! keys over the workers (`RepartitionExec`), and each partition is sorted on (keys, row
//! number) by `SortExec`, which spills through DataFusion's memory pool when the data does not
//! fit. A [`crate::batch::KeyChunker`] then cuts each sorted partition where the key changes.
//!
//! Mini-batch ids of keyed inputs are derived from the key values (see
//! [`crate::batch::key_id`]), so they do not depend on the number of workers.

use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

use crate::error::{PrsError, Result};

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

/// The plan whose `partitions` partitions each hold whole key groups, sorted by key and then
/// by input order.
pub fn keyed_plan(
    input: Arc<dyn ExecutionPlan>,
    keys: &[String],
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let with_ids: Arc<dyn ExecutionPlan> = Arc::new(RowIdExec::new(input));
    let schema = with_ids.schema();
    let column = |name: &str| -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Column::new_with_schema(name, &schema)?))
    };
    let key_exprs = keys.iter().map(|k| column(k)).collect::<Result<Vec<_>>>()?;
    let repartitioned: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        with_ids,
        Partitioning::Hash(key_exprs.clone(), partitions.max(1)),
    )?);
    let mut order: Vec<PhysicalSortExpr> = key_exprs
        .into_iter()
        .map(PhysicalSortExpr::new_default)
        .collect();
    order.push(PhysicalSortExpr::new_default(column(ROW_ID)?));
    let ordering = LexOrdering::new(order)
        .ok_or_else(|| PrsError::missing("partition_keys", "at least one key"))?;
    Ok(Arc::new(
        SortExec::new(ordering, repartitioned).with_preserve_partitioning(true),
    ))
}

/// Appends a `UInt64` row number (in the order of the input's partitions, read one after the
/// other) to every row. Output: one partition.
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
            _ => Err(datafusion::error::DataFusionError::Internal(
                "RowIdExec takes one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
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
        let out_schema = schema.clone();
        let numbered = batches.scan(0u64, move |next, batch| {
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
