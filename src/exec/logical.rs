//! The logical extension node: `ParallelRun` over one or more input plans.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

use crate::error::Result;
use crate::exec::{InputInfo, OperatorSpec};

/// Logical node for the operator; planned into a [`crate::exec::ParallelRunExec`] by
/// [`crate::exec::ParallelRunPlanner`].
#[derive(Debug, Clone)]
pub struct ParallelRunNode {
    inputs: Vec<LogicalPlan>,
    infos: Vec<InputInfo>,
    spec: Arc<OperatorSpec>,
    schema: DFSchemaRef,
}

impl ParallelRunNode {
    /// A node running `spec` over `inputs`.
    pub fn try_new(
        inputs: Vec<LogicalPlan>,
        infos: Vec<InputInfo>,
        spec: Arc<OperatorSpec>,
    ) -> Result<Self> {
        let arrow_schema = spec
            .output_schema
            .clone()
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
        let schema = Arc::new(DFSchema::try_from(arrow_schema.as_ref().clone())?);
        Ok(ParallelRunNode {
            inputs,
            infos,
            spec,
            schema,
        })
    }

    /// Wraps the node as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The spec.
    pub fn spec(&self) -> &Arc<OperatorSpec> {
        &self.spec
    }

    /// What the node knows of its inputs.
    pub fn infos(&self) -> &[InputInfo] {
        &self.infos
    }

    fn key(&self) -> (usize, &[InputInfo]) {
        (Arc::as_ptr(&self.spec) as *const () as usize, &self.infos)
    }
}

impl PartialEq for ParallelRunNode {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.inputs == other.inputs
    }
}

impl Eq for ParallelRunNode {}

impl Hash for ParallelRunNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
        self.inputs.hash(state);
    }
}

impl PartialOrd for ParallelRunNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.key().0.partial_cmp(&other.key().0)
    }
}

impl UserDefinedLogicalNodeCore for ParallelRunNode {
    fn name(&self) -> &str {
        "ParallelRun"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.inputs.iter().collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.spec.settings;
        write!(
            f,
            "ParallelRun: script={}, workers={}, inputs=[{}]",
            self.spec.factory.describe(),
            s.workers,
            self.infos
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        Ok(ParallelRunNode {
            inputs,
            infos: self.infos.clone(),
            spec: self.spec.clone(),
            schema: self.schema.clone(),
        })
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // run() sees every input column: none may be pruned.
        None
    }
}
