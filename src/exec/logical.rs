//! The logical extension node: `ParallelRun` over one or more input plans.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::common::internal_datafusion_err;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

use crate::error::{PrsError, Result};
use crate::exec::{InputInfo, OperatorRuntime, OperatorSpec};

/// Logical node for the operator; planned into a [`crate::exec::ParallelRunExec`] by
/// [`crate::exec::ParallelRunPlanner`].
///
/// Its identity is its content: the [`OperatorSpec`] value and the input plans. The runtime
/// (worker factory, observer) rides along for the planner but is not part of it, so two
/// nodes built from the same job compare equal.
#[derive(Debug, Clone)]
pub struct ParallelRunNode {
    inputs: Vec<LogicalPlan>,
    spec: Arc<OperatorSpec>,
    runtime: OperatorRuntime,
    schema: DFSchemaRef,
}

impl ParallelRunNode {
    /// A node running `spec` over `inputs` (one plan per input of the spec, in order).
    pub fn try_new(
        inputs: Vec<LogicalPlan>,
        spec: Arc<OperatorSpec>,
        runtime: OperatorRuntime,
    ) -> Result<Self> {
        if inputs.len() != spec.inputs().len() {
            return Err(PrsError::from_datafusion(internal_datafusion_err!(
                "ParallelRunNode: {} input plans for a spec of {} inputs",
                inputs.len(),
                spec.inputs().len()
            )));
        }
        let arrow_schema = spec
            .output_schema()
            .cloned()
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
        let schema = Arc::new(DFSchema::try_from(arrow_schema.as_ref().clone())?);
        Ok(ParallelRunNode {
            inputs,
            spec,
            runtime,
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

    /// The factory and observer the planned operator runs with.
    pub fn runtime(&self) -> &OperatorRuntime {
        &self.runtime
    }

    /// What the node knows of its inputs.
    pub fn infos(&self) -> &[InputInfo] {
        self.spec.inputs()
    }
}

impl PartialEq for ParallelRunNode {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.inputs == other.inputs
    }
}

impl Eq for ParallelRunNode {}

impl Hash for ParallelRunNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.spec.hash(state);
        self.inputs.hash(state);
    }
}

impl PartialOrd for ParallelRunNode {
    /// Ordered by call number (nodes of different calls are never equal).
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if self == other {
            return Some(Ordering::Equal);
        }
        match self.spec.call().cmp(&other.spec.call()) {
            Ordering::Equal => None,
            order => Some(order),
        }
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
        let s = self.spec.settings();
        write!(
            f,
            "ParallelRun: script={}, workers={}, inputs=[{}]",
            self.runtime.factory.describe(),
            s.workers,
            self.infos()
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        Ok(ParallelRunNode {
            inputs,
            spec: self.spec.clone(),
            runtime: self.runtime.clone(),
            schema: self.schema.clone(),
        })
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // run() sees every input column: none may be pruned.
        None
    }
}
