//! `parallel-run scheduler` and `parallel-run executor`: Ballista's scheduler and executor
//! processes, built from its libraries with [`PrsPhysicalCodec`] (a stock Ballista binary
//! cannot decode `ParallelRunExec`). Executors run the code named by the plans they receive,
//! without authentication: a cluster belongs on a trusted network. An executor keeps a job's
//! workers between its tasks (its `RuntimeProvider`, see `worker::pool` in the crate) and
//! asks the scheduler every few seconds whether the jobs it keeps idle workers for ended.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{job_status, GetJobStatusParams};
use ballista_core::utils::create_grpc_client_endpoint;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::common::runtime::SpawnedTask;

use crate::cluster::advertised_version;
use crate::cluster::engine::StoppingEngine;
use crate::cluster::gate::{executor_id, VersionGate};
use crate::cluster::PrsPhysicalCodec;
use crate::error::{PrsError, Result};
use crate::exec::RuntimeProvider;

/// The default scheduler address (`scheduler --bind`, `executor --scheduler`).
pub const DEFAULT_SCHEDULER: &str = "127.0.0.1:50050";

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// `HOST:PORT` to listen on.
    pub bind: String,
    /// An executor silent for this long is lost and its tasks run elsewhere.
    pub executor_timeout_seconds: u64,
    /// How often lost executors are looked for.
    pub expire_interval_seconds: u64,
    /// How long running jobs wait for an executor when none is left before they fail.
    pub no_executors_grace_seconds: u64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            bind: DEFAULT_SCHEDULER.to_string(),
            // Loss noticed within 30 s (20 s of silence, checked every 5 s).
            executor_timeout_seconds: 20,
            expire_interval_seconds: 5,
            no_executors_grace_seconds: 20,
        }
    }
}

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's `HOST:PORT`.
    pub scheduler: String,
    /// Worker slots (tasks at once): the ceiling of a job's process_count_per_node here.
    pub processes: usize,
    /// The host (IP) to listen on.
    pub bind: String,
    /// The Arrow Flight (data) port.
    pub port: u16,
    /// The gRPC (control) port.
    pub grpc_port: u16,
    /// The host advertised to the scheduler and the other executors (when bound to 0.0.0.0).
    pub external_host: Option<String>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_seconds: u64,
    /// Where shuffle and result files go (a temporary folder when absent).
    pub work_dir: Option<PathBuf>,
    /// A job's workers are kept between its tasks; they are shut down when the scheduler
    /// reports the job ended, or after this many seconds without a task of the job.
    pub worker_idle_timeout_seconds: u64,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            scheduler: DEFAULT_SCHEDULER.to_string(),
            processes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            bind: "127.0.0.1".to_string(),
            port: 50051,
            grpc_port: 50052,
            external_host: None,
            heartbeat_seconds: 5,
            work_dir: None,
            worker_idle_timeout_seconds: DEFAULT_WORKER_IDLE_TIMEOUT,
        }
    }
}

/// The default of `executor --worker-idle-timeout` (seconds).
pub const DEFAULT_WORKER_IDLE_TIMEOUT: u64 = 60;

/// How often an executor asks the scheduler whether the jobs it keeps workers for ended.
const JOB_END_EVERY: Duration = Duration::from_secs(2);

/// `HOST:PORT` split and checked; `flag` names the option in errors.
fn host_port<'a>(flag: &str, value: &'a str) -> Result<(&'a str, u16)> {
    let bad = |why: &str| {
        PrsError::config(
            flag,
            value,
            format!("{why}: expected HOST:PORT, e.g. {DEFAULT_SCHEDULER}"),
        )
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("the port is not a number"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// Runs a scheduler until the process is stopped. Fails at once when the address cannot be
/// bound.
pub async fn run_scheduler(
    options: &SchedulerOptions,
    runtimes: Arc<dyn RuntimeProvider>,
) -> Result<()> {
    let (host, port) = host_port("--bind", &options.bind)?;
    let address: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| PrsError::config("--bind", &options.bind, "cannot resolve this host"))?;
    let config = SchedulerConfig {
        bind_host: address.ip().to_string(),
        bind_port: port,
        external_host: host.to_string(),
        executor_timeout_seconds: options.executor_timeout_seconds,
        expire_dead_executor_interval_seconds: options.expire_interval_seconds,
        no_executors_grace_period_seconds: options.no_executors_grace_seconds,
        override_physical_codec: Some(Arc::new(PrsPhysicalCodec::new(runtimes))),
        // One task per executor in turn: a job's partitions spread over the executors
        // (with at most process_count_per_node partitions per task, see
        // `submit::submit_plan`) instead of the first executor with free slots taking them.
        task_distribution: TaskDistributionPolicy::RoundRobin,
        ..SchedulerConfig::default()
    };
    let ballista = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| PrsError::config("scheduler", &options.bind, e.to_string()))?;
    // Ballista's in-memory state, admitting executors of our version only.
    let version = advertised_version();
    let cluster = BallistaCluster::new(
        Arc::new(VersionGate::new(ballista.cluster_state(), version.clone())),
        ballista.job_state(),
    );
    eprintln!("parallel-run {version}: scheduler listening on {address} (trusted network only)");
    start_server(cluster, address, Arc::new(config))
        .await
        .map_err(|e| {
            PrsError::config(
                "--bind",
                &options.bind,
                format!("the scheduler stopped: {e}"),
            )
        })
}

/// Runs an executor until the process is stopped (or the scheduler tells it to stop).
pub async fn run_executor(
    options: &ExecutorOptions,
    runtimes: Arc<dyn RuntimeProvider>,
) -> Result<()> {
    let (scheduler_host, scheduler_port) = host_port("--scheduler", &options.scheduler)?;
    if options.processes == 0 {
        return Err(PrsError::config(
            "--processes",
            0,
            "must be at least 1 (the worker processes this executor runs at once)",
        ));
    }
    if options.port == options.grpc_port {
        return Err(PrsError::config(
            "--grpc-port",
            options.grpc_port,
            "must differ from --port (the executor listens on both)",
        ));
    }
    let work_dir = match &options.work_dir {
        Some(dir) => Some(
            dir.to_str()
                .ok_or_else(|| {
                    PrsError::config("--work-dir", dir.display(), "must be valid UTF-8")
                })?
                .to_string(),
        ),
        None => None,
    };
    let version = advertised_version();
    let defaults = ExecutorProcessConfig::default();
    // The id carries our version: the scheduler admits executors of its own version only.
    let executor_id = executor_id(&version, &defaults.executor_id);
    let config = ExecutorProcessConfig {
        executor_id,
        bind_host: options.bind.clone(),
        external_host: options.external_host.clone(),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: scheduler_host.to_string(),
        scheduler_port,
        scheduler_connect_timeout_seconds: 20,
        vcores: options.processes,
        work_dir,
        executor_heartbeat_interval_seconds: options.heartbeat_seconds.max(1),
        override_physical_codec: Some(Arc::new(PrsPhysicalCodec::new(runtimes.clone()))),
        // Cancelled tasks stop their workers (Ballista's own engine leaves them running).
        override_execution_engine: Some(Arc::new(StoppingEngine::new())),
        ..defaults
    };
    eprintln!(
        "parallel-run {version}: executor on {}:{} (grpc {}), {} worker slot(s) (a job's \
         workers kept until it ends, at most {} s idle), scheduler {}",
        options.bind,
        options.port,
        options.grpc_port,
        options.processes,
        options.worker_idle_timeout_seconds,
        options.scheduler
    );
    // Shuts down the workers kept for a job once the scheduler says it ended (Ballista's
    // executor has no hook for its own job clean-up); ends with the executor.
    let _watch = SpawnedTask::spawn(watch_job_ends(
        options.scheduler.clone(),
        runtimes,
        JOB_END_EVERY,
    ));
    start_executor_process(Arc::new(config)).await.map_err(|e| {
        PrsError::config(
            "executor",
            &options.scheduler,
            format!("the executor stopped: {e}"),
        )
    })
}

/// Every `every`, asks the scheduler at `scheduler` (`HOST:PORT`) for the status of each job
/// `runtimes` keeps idle workers for, and tells `runtimes` of those that ended (succeeded,
/// failed or cancelled), so their workers stop within seconds of the job's end. A scheduler
/// that does not answer is asked again later; meanwhile the pool's idle timeout applies.
async fn watch_job_ends(scheduler: String, runtimes: Arc<dyn RuntimeProvider>, every: Duration) {
    let mut client: Option<SchedulerGrpcClient<tonic::transport::Channel>> = None;
    loop {
        tokio::time::sleep(every).await;
        let jobs = runtimes.idle_jobs();
        if jobs.is_empty() {
            continue;
        }
        if client.is_none() {
            client = connect(&scheduler)
                .await
                .inspect_err(|e| tracing::debug!("asking {scheduler} for job status: {e}"))
                .ok();
        }
        let Some(connected) = client.as_mut() else {
            continue;
        };
        for job in jobs {
            let answer = connected
                .get_job_status(GetJobStatusParams {
                    job_id: job.clone(),
                })
                .await;
            match answer {
                Ok(answer) => {
                    let status = answer.into_inner().status.and_then(|s| s.status);
                    if matches!(
                        status,
                        Some(job_status::Status::Successful(_) | job_status::Status::Failed(_))
                    ) {
                        runtimes.job_ended(&job);
                    }
                }
                Err(e) => {
                    tracing::debug!(job, "asking {scheduler} for the job's status: {e}");
                    client = None;
                    break;
                }
            }
        }
    }
}

/// A gRPC client of the scheduler at `scheduler` (`HOST:PORT`).
async fn connect(
    scheduler: &str,
) -> std::result::Result<SchedulerGrpcClient<tonic::transport::Channel>, String> {
    let endpoint = create_grpc_client_endpoint(format!("http://{scheduler}"), None)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    Ok(SchedulerGrpcClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(host_port("--bind", "0.0.0.0:1").unwrap(), ("0.0.0.0", 1));
        assert_eq!(host_port("--bind", "[::1]:7").unwrap(), ("::1", 7));
        for bad in ["host", ":5", "h:x", "h:70000"] {
            let e = host_port("--scheduler", bad).unwrap_err().to_string();
            assert!(e.contains("--scheduler") && e.contains("HOST:PORT"), "{e}");
        }
    }
}
