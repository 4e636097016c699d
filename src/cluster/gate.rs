//! Version checks between the processes of a cluster, inside Ballista's own mechanisms:
//!
//! - an executor's id carries its parallel-run version ([`executor_id`]), and our scheduler's
//!   cluster state ([`VersionGate`], Ballista's pluggable `ClusterState`) refuses to register
//!   an executor of another version (or a stock Ballista executor): it never gets a task,
//!   and its process stops with the scheduler's message naming both versions;
//! - the codec's bytes carry the encoding process's version (see [`super::codec`]): a
//!   scheduler refuses a driver's plan of another version at submission, and an executor
//!   would refuse a task's plan the same way.
//!
//! [`VersionGate`] also gives back the executor vcores Ballista 55 loses when an executor
//! loss rolls a running stage back (see `VersionGate::refund_lost_vcores`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ballista_core::error::{BallistaError, Result};
use ballista_core::serde::protobuf::{task_status, ExecutorHeartbeat};
use ballista_core::serde::scheduler::{ExecutorData, ExecutorMetadata};
use ballista_core::JobId;
use ballista_scheduler::cluster::{BoundTask, ClusterState, ClusterStateEventStream, ExecutorSlot};
use ballista_scheduler::config::TaskDistributionPolicy;
use ballista_scheduler::state::task_manager::JobInfoCache;

/// What starts the id of a parallel-run executor: `prs-<version>_<unique id>`.
const EXECUTOR_ID_PREFIX: &str = "prs-";

/// The Ballista executor id of a parallel-run executor of `version`, unique by `unique`.
pub fn executor_id(version: &str, unique: &str) -> String {
    format!("{EXECUTOR_ID_PREFIX}{version}_{unique}")
}

/// The parallel-run version in an executor id made by [`executor_id`]; `None` for another
/// id (a stock Ballista executor's is a bare UUID).
pub fn executor_version(id: &str) -> Option<&str> {
    let (version, _) = id.strip_prefix(EXECUTOR_ID_PREFIX)?.rsplit_once('_')?;
    (!version.is_empty()).then_some(version)
}

/// A `ClusterState` that admits only executors of this scheduler's parallel-run version
/// and delegates everything else to Ballista's (giving back the vcores Ballista loses).
pub struct VersionGate {
    inner: Arc<dyn ClusterState>,
    version: String,
    /// Per executor, the vcores bound to tasks and not given back yet (as Ballista's own
    /// state counts them: bound here, given back through `unbind_tasks`).
    outstanding: std::sync::Mutex<HashMap<String, u32>>,
}

impl VersionGate {
    /// Ballista's cluster state `inner`, admitting executors of parallel-run `version` only.
    pub fn new(inner: Arc<dyn ClusterState>, version: impl Into<String>) -> Self {
        VersionGate {
            inner,
            version: version.into(),
            outstanding: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.outstanding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back the vcores of tasks that no running job counts as running any more.
    ///
    /// Ballista 55 (push scheduling) gives a task's vcores back when the task's status
    /// arrives, looking the amount up in the task's stage; when an executor is lost, a
    /// stage reading its shuffle output is rolled back to unresolved and the tasks it runs
    /// on the other executors are cancelled, and their statuses then find no stage: their
    /// vcores are never given back (likewise tasks of a job that ended meanwhile). With one
    /// vcore per executor (`--processes 1`) the survivor then gets no task again and the job
    /// hangs (a `partition_keys` job whose executor is lost mid-job). So before each binding
    /// round, the vcores bound on an executor beyond what the running jobs' stages count as
    /// running there are given back.
    async fn refund_lost_vcores(&self, active_jobs: &HashMap<JobId, JobInfoCache>) -> Result<()> {
        let mut running: HashMap<String, u32> = HashMap::new();
        for job in active_jobs.values() {
            let graph = job.execution_graph.read().await;
            for stage in graph.stages().values() {
                for info in stage.task_infos().unwrap_or_default() {
                    if let task_status::Status::Running(task) = &info.task_status {
                        *running.entry(task.executor_id.clone()).or_default() +=
                            info.vcores_consumed;
                    }
                }
            }
        }
        let lost: Vec<(String, u32)> = {
            let mut outstanding = self.outstanding();
            let mut lost = Vec::new();
            for (executor, bound) in outstanding.iter_mut() {
                let counted = running.get(executor).copied().unwrap_or(0);
                if *bound > counted {
                    lost.push((executor.clone(), *bound - counted));
                    *bound = counted;
                }
            }
            lost
        };
        if lost.is_empty() {
            return Ok(());
        }
        tracing::info!("giving back vcores of tasks no stage counts as running: {lost:?}");
        self.inner.unbind_tasks(lost).await
    }

    /// Refuses an executor of another version, saying which and what to do.
    fn admit(&self, metadata: &ExecutorMetadata) -> Result<()> {
        let ours = &self.version;
        let theirs = match executor_version(&metadata.id) {
            Some(version) if version == ours => return Ok(()),
            Some(version) => format!("runs parallel-run {version}"),
            None => "is not a parallel-run executor (a stock Ballista executor?)".to_string(),
        };
        let message = format!(
            "executor {} at {}:{} {theirs}, this scheduler runs parallel-run {ours}: run the \
             same parallel-run version on the driver, the scheduler and every executor",
            metadata.id, metadata.host, metadata.port
        );
        tracing::warn!("refusing an executor: {message}");
        Err(BallistaError::General(message))
    }
}

#[async_trait::async_trait]
impl ClusterState for VersionGate {
    async fn init(&self) -> Result<()> {
        self.inner.init().await
    }

    async fn bind_schedulable_tasks(
        &self,
        distribution: TaskDistributionPolicy,
        active_jobs: Arc<HashMap<JobId, JobInfoCache>>,
        executors: Option<HashSet<String>>,
    ) -> Result<Vec<BoundTask>> {
        self.refund_lost_vcores(&active_jobs).await?;
        let bound = self
            .inner
            .bind_schedulable_tasks(distribution, active_jobs, executors)
            .await?;
        let mut outstanding = self.outstanding();
        for (executor, task) in &bound {
            *outstanding.entry(executor.clone()).or_default() += task.vcores_consumed;
        }
        Ok(bound)
    }

    async fn unbind_tasks(&self, executor_slots: Vec<ExecutorSlot>) -> Result<()> {
        {
            let mut outstanding = self.outstanding();
            for (executor, vcores) in &executor_slots {
                if let Some(bound) = outstanding.get_mut(executor) {
                    *bound = bound.saturating_sub(*vcores);
                }
            }
        }
        self.inner.unbind_tasks(executor_slots).await
    }

    async fn register_executor(
        &self,
        metadata: ExecutorMetadata,
        spec: ExecutorData,
    ) -> Result<()> {
        self.admit(&metadata)?;
        let id = metadata.id.clone();
        self.inner.register_executor(metadata, spec).await?;
        // Registered with all its vcores free.
        self.outstanding().insert(id, 0);
        Ok(())
    }

    async fn save_executor_metadata(&self, metadata: ExecutorMetadata) -> Result<()> {
        self.admit(&metadata)?;
        self.inner.save_executor_metadata(metadata).await
    }

    async fn get_executor_metadata(&self, executor_id: &str) -> Result<ExecutorMetadata> {
        self.inner.get_executor_metadata(executor_id).await
    }

    async fn registered_executor_metadata(&self) -> Vec<ExecutorMetadata> {
        self.inner.registered_executor_metadata().await
    }

    async fn save_executor_heartbeat(&self, heartbeat: ExecutorHeartbeat) -> Result<()> {
        self.inner.save_executor_heartbeat(heartbeat).await
    }

    async fn remove_executor(&self, executor_id: &str) -> Result<()> {
        self.outstanding().remove(executor_id);
        self.inner.remove_executor(executor_id).await
    }

    fn executor_heartbeats(&self) -> HashMap<String, ExecutorHeartbeat> {
        self.inner.executor_heartbeats()
    }

    fn get_executor_heartbeat(&self, executor_id: &str) -> Option<ExecutorHeartbeat> {
        self.inner.get_executor_heartbeat(executor_id)
    }

    async fn cluster_state_events(&self) -> Result<ClusterStateEventStream> {
        self.inner.cluster_state_events().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_scheduler::cluster::memory::InMemoryClusterState;

    fn metadata(id: &str) -> ExecutorMetadata {
        ExecutorMetadata {
            id: id.to_string(),
            host: "node1".to_string(),
            port: 50051,
            grpc_port: 50052,
            specification: Default::default(),
            os_info: Default::default(),
        }
    }

    /// A running job of one stage over a 2-partition table, ready to bind tasks.
    async fn running_job(id: &str) -> Arc<HashMap<JobId, JobInfoCache>> {
        use ballista_core::extension::SessionConfigExt;
        use ballista_scheduler::planner::DefaultDistributedPlanner;
        use ballista_scheduler::state::execution_graph::{ExecutionGraph, StaticExecutionGraph};
        use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::prelude::SessionConfig;

        let batch = RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(Int64Array::from_iter_values(0..4)) as ArrayRef,
        )])
        .unwrap();
        let plan = MemorySourceConfig::try_new_exec(
            &[vec![batch.slice(0, 2)], vec![batch.slice(2, 2)]],
            batch.schema(),
            None,
        )
        .unwrap();
        let job: JobId = id.to_string().into();
        let mut graph = StaticExecutionGraph::new(
            "localhost:50050",
            &job,
            "",
            "session",
            plan,
            0,
            Arc::new(SessionConfig::new_with_ballista()),
            &mut DefaultDistributedPlanner::new(),
            None,
        )
        .unwrap();
        graph.revive();
        Arc::new(HashMap::from([(job, JobInfoCache::new(Box::new(graph)))]))
    }

    #[tokio::test]
    async fn vcores_of_tasks_no_running_job_counts_are_given_back() {
        let gate = VersionGate::new(Arc::new(InMemoryClusterState::default()), "0.1.0");
        let id = executor_id("0.1.0", "a");
        let spec = ExecutorData {
            executor_id: id.clone(),
            total_vcores: 1,
            available_vcores: 1,
        };
        gate.register_executor(metadata(&id), spec).await.unwrap();
        let first = running_job("first").await;
        let bound = gate
            .bind_schedulable_tasks(TaskDistributionPolicy::Bias, first.clone(), None)
            .await
            .unwrap();
        assert_eq!(bound.len(), 1);
        // Its one vcore is taken by a task the job counts as running: nothing more binds.
        let bound = gate
            .bind_schedulable_tasks(TaskDistributionPolicy::Bias, first, None)
            .await
            .unwrap();
        assert!(bound.is_empty());
        // That job is gone (as when its stage was rolled back, or it ended) and its task's
        // status gave nothing back: the vcore is given back, the next job's task binds.
        let bound = gate
            .bind_schedulable_tasks(
                TaskDistributionPolicy::Bias,
                running_job("next").await,
                None,
            )
            .await
            .unwrap();
        assert_eq!(bound.len(), 1, "{bound:?}");
        assert_eq!(bound[0].0, id);
    }

    #[test]
    fn executor_ids_carry_the_version() {
        let id = executor_id("0.1.0-rc.1", "7f3c0a4e-1b2c-4d5e-8f90-123456789abc");
        assert_eq!(executor_version(&id), Some("0.1.0-rc.1"));
        assert_eq!(
            executor_version("7f3c0a4e-1b2c-4d5e-8f90-123456789abc"),
            None
        );
        assert_eq!(executor_version("prs-_x"), None);
    }

    #[tokio::test]
    async fn only_executors_of_the_same_version_register() {
        let gate = VersionGate::new(Arc::new(InMemoryClusterState::default()), "0.1.0");
        let same = metadata(&executor_id("0.1.0", "a"));
        gate.admit(&same).unwrap();
        gate.save_executor_metadata(same).await.unwrap();

        let other = metadata(&executor_id("9.9.9", "b"));
        let e = gate
            .save_executor_metadata(other)
            .await
            .unwrap_err()
            .to_string();
        for part in ["9.9.9", "0.1.0", "node1:50051", "same parallel-run version"] {
            assert!(e.contains(part), "{part}: {e}");
        }
        let e = gate.admit(&metadata("b1946ac9")).unwrap_err().to_string();
        assert!(e.contains("not a parallel-run executor"), "{e}");
        assert_eq!(gate.registered_executor_metadata().await.len(), 1);
    }
}
