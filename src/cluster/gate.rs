//! Version checks between the processes of a cluster, inside Ballista's own mechanisms:
//!
//! - an executor's id carries its parallel-run version ([`executor_id`]), and our scheduler's
//!   cluster state ([`VersionGate`], Ballista's pluggable `ClusterState`) refuses to register
//!   an executor of another version (or a stock Ballista executor): it never gets a task,
//!   and its process stops with the scheduler's message naming both versions;
//! - the codec's bytes carry the encoding process's version (see [`super::codec`]): a
//!   scheduler refuses a driver's plan of another version at submission, and an executor
//!   would refuse a task's plan the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ballista_core::error::{BallistaError, Result};
use ballista_core::serde::protobuf::ExecutorHeartbeat;
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
/// and delegates everything else to Ballista's.
pub struct VersionGate {
    inner: Arc<dyn ClusterState>,
    version: String,
}

impl VersionGate {
    /// Ballista's cluster state `inner`, admitting executors of parallel-run `version` only.
    pub fn new(inner: Arc<dyn ClusterState>, version: impl Into<String>) -> Self {
        VersionGate {
            inner,
            version: version.into(),
        }
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
        self.inner
            .bind_schedulable_tasks(distribution, active_jobs, executors)
            .await
    }

    async fn unbind_tasks(&self, executor_slots: Vec<ExecutorSlot>) -> Result<()> {
        self.inner.unbind_tasks(executor_slots).await
    }

    async fn register_executor(
        &self,
        metadata: ExecutorMetadata,
        spec: ExecutorData,
    ) -> Result<()> {
        self.admit(&metadata)?;
        self.inner.register_executor(metadata, spec).await
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
