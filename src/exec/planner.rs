//! Turns [`ParallelRunNode`] into [`ParallelRunExec`], and a `QueryPlanner` that knows it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result as DFResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::exec::{JobState, MiniBatchSink, ParallelRunExec, ParallelRunNode};

/// Plans [`ParallelRunNode`]s. Each planned operator gets a fresh [`JobState`] reporting to
/// the spec's observer.
#[derive(Debug, Default)]
pub struct ParallelRunPlanner;

#[async_trait]
impl ExtensionPlanner for ParallelRunPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ParallelRunNode>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(plan_node(node, physical_inputs, None, None))))
    }
}

/// The operator for `node` over its planned inputs, with a fresh [`JobState`] reporting to the
/// runtime's observer (see [`ParallelRunExec::state`]); with `sink`, committing its results
/// there instead of emitting them.
pub fn plan_node(
    node: &ParallelRunNode,
    physical_inputs: &[Arc<dyn ExecutionPlan>],
    sink: Option<Arc<dyn MiniBatchSink>>,
    skips: Option<Arc<crate::exec::ResumeSkips>>,
) -> ParallelRunExec {
    let spec = node.spec().clone();
    let mut runtime = node.runtime().clone();
    if let Some(sink) = sink {
        runtime = runtime.with_sink(sink);
    }
    if let Some(skips) = skips {
        runtime = runtime.with_skips(skips);
    }
    let state = JobState::new(spec.settings().clone(), runtime.observer.clone());
    ParallelRunExec::new(physical_inputs.to_vec(), spec, runtime, state)
}

/// A query planner: DataFusion's default planner plus [`ParallelRunPlanner`].
#[derive(Debug, Default)]
pub struct ParallelRunQueryPlanner;

#[async_trait]
impl QueryPlanner for ParallelRunQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ParallelRunPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}
