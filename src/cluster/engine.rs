//! [`StoppingEngine`]: the executor's Ballista execution engine, which tells a task's
//! `ParallelRunExec` its job (so the executor reuses the job's workers across its tasks) and
//! stops it (and so kills its Python workers) when Ballista cancels the task.
//!
//! Ballista 55 cancels a task by aborting the future of its query stage, but its default
//! engine drives the stage's partitions in `tokio::spawn`ed tasks that the abort does not
//! reach: without this engine a cancelled job's mini-batches would keep running on the
//! executors until they finish. The engine wraps Ballista's own
//! [`DefaultExecutionEngine`] (plugged in through `ExecutorProcessConfig::
//! override_execution_engine`) and only adds the stop.

use std::fmt;
use std::sync::Arc;

use ballista_core::serde::protobuf::{
    RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport,
};
use ballista_core::JobId;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;

use crate::exec::ParallelRunExec;

/// Why a task's operator stopped when Ballista cancelled the task.
pub const CANCELLED_BY_SCHEDULER: &str =
    "the scheduler cancelled this task (the cluster job was cancelled, or the task runs elsewhere)";

/// Ballista's default execution engine, whose tasks stop their `ParallelRunExec` operators
/// when cancelled.
pub struct StoppingEngine {
    inner: DefaultExecutionEngine,
}

impl StoppingEngine {
    /// Wraps Ballista's default engine (without a shuffle client pool: a parallel-run stage
    /// reads no shuffle).
    pub fn new() -> Self {
        StoppingEngine {
            inner: DefaultExecutionEngine::new(),
        }
    }
}

impl Default for StoppingEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecutionEngine for StoppingEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let operators = operators_in(&plan)?;
        for operator in &operators {
            if let Some(exec) = operator.downcast_ref::<ParallelRunExec>() {
                // The executor keeps a job's workers between its tasks (see
                // `RuntimeProvider::runtime_for_job`).
                exec.set_cluster_job(job_id.as_str());
            }
        }
        let inner = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        if operators.is_empty() {
            return Ok(inner);
        }
        Ok(Arc::new(StoppingStage { inner, operators }))
    }
}

/// The `ParallelRunExec` nodes of a stage plan (the instances the stage will execute: the
/// default engine keeps them as they are).
fn operators_in(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
    let mut found = Vec::new();
    plan.apply(|node| {
        if node.downcast_ref::<ParallelRunExec>().is_some() {
            found.push(node.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// A stage whose operators are stopped when its future is dropped before it finished.
struct StoppingStage {
    inner: Arc<dyn QueryStageExecutor>,
    operators: Vec<Arc<dyn ExecutionPlan>>,
}

impl fmt::Debug for StoppingStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for StoppingStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// Stops the operators when dropped armed (the stage's future was dropped mid-way).
struct StopOnDrop<'a> {
    operators: &'a [Arc<dyn ExecutionPlan>],
    armed: bool,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for operator in self.operators {
            if let Some(exec) = operator.downcast_ref::<ParallelRunExec>() {
                exec.stop(CANCELLED_BY_SCHEDULER);
            }
        }
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for StoppingStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        let mut guard = StopOnDrop {
            operators: &self.operators,
            armed: true,
        };
        let written = self.inner.execute_query_stage(task_id, context).await;
        guard.armed = false;
        written
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.inner.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> Result<Vec<WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ItemKind;
    use crate::config::{JobSettings, OutputAction, ParallelRunConfig};
    use crate::exec::manifest::manifest_schema;
    use crate::exec::{ExecMode, InputInfo, OperatorRuntime, OperatorSpec, RuntimeProvider};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;

    struct NoRuntime;

    impl RuntimeProvider for NoRuntime {
        fn runtime(&self, _spec: &OperatorSpec) -> crate::error::Result<OperatorRuntime> {
            unreachable!("nothing runs in these tests")
        }
    }

    fn operator() -> Arc<dyn ExecutionPlan> {
        let config = ParallelRunConfig::new("rust:echo", -1, OutputAction::AppendRow);
        let job = JobSettings::new(config, "/jobs/out");
        let spec = OperatorSpec::new(job, vec![InputInfo::new("t", ItemKind::Rows)], None);
        let manifest =
            MemorySourceConfig::try_new_exec(&[vec![], vec![]], manifest_schema(), None).unwrap();
        Arc::new(
            ParallelRunExec::deferred(
                ExecMode::Manifest,
                vec![manifest],
                Arc::new(spec.unwrap()),
                Arc::new(NoRuntime),
            )
            .unwrap(),
        )
    }

    fn stopped(operator: &Arc<dyn ExecutionPlan>) -> Option<String> {
        operator
            .downcast_ref::<ParallelRunExec>()
            .unwrap()
            .stopped()
    }

    #[test]
    fn a_stage_dropped_before_its_end_stops_its_operators() {
        let plan: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(operator()));
        let operators = operators_in(&plan).unwrap();
        assert_eq!(operators.len(), 1, "found below the stage's root");

        // Finished: the guard is disarmed, nothing is stopped.
        let guard = StopOnDrop {
            operators: &operators,
            armed: false,
        };
        drop(guard);
        assert_eq!(stopped(&operators[0]), None);

        // Dropped mid-way (the task's future aborted): the operator stops.
        let guard = StopOnDrop {
            operators: &operators,
            armed: true,
        };
        drop(guard);
        assert_eq!(
            stopped(&operators[0]).as_deref(),
            Some(CANCELLED_BY_SCHEDULER)
        );
    }
}
