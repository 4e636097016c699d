//! [`ClusterJob`]: our submit loop on Ballista's scheduler gRPC client. It submits the physical
//! plan (`ExecuteQuery`), keeps the job id, polls `GetJobStatus`, fetches the results from
//! the executors (Arrow Flight, as Ballista's own client does) and cancels the job
//! (`CancelJob`) when the driver stops waiting: Ctrl+C, an error, or the job dropped
//! unfinished. Ballista's `execute_physical_plan` hides the job id, and dropping its stream
//! leaves the job running on the executors.

use std::time::Duration;

use ballista_core::client::BallistaClient;
use ballista_core::config::BallistaConfig;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::execute_query_failure_result::Failure;
use ballista_core::serde::protobuf::get_job_status_result::FlightProxy;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    execute_query_params, execute_query_result, job_status, CancelJobParams, ExecuteQueryParams,
    GetJobStatusParams, KeyValuePair, PartitionLocation,
};
use ballista_core::serde::scheduler::PartitionId;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use ballista_core::{version, JobId, BALLISTA_VERSION};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionConfig;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::error::{PrsError, Result};

/// How often the job's status is asked for.
const STATUS_EVERY: Duration = Duration::from_millis(200);
/// Status calls that may fail in a row (a busy scheduler) before the scheduler counts as lost.
const STATUS_FAILURES: u32 = 10;
/// How long a cancelled job may take to be reported as ended by the scheduler.
const CANCEL_CONFIRM: Duration = Duration::from_secs(15);

/// How a job submitted to the scheduler ended, as far as the driver waits for it.
#[derive(Debug)]
pub enum JobEnd {
    /// Every task succeeded: the results are at these locations (see [`ClusterJob::results`]).
    Succeeded(Vec<PartitionLocation>),
    /// The driver stopped waiting (its cancellation token) and cancelled the job.
    Cancelled {
        /// Whether the scheduler reported the job ended within a few seconds.
        confirmed: bool,
    },
}

/// A job on a Ballista scheduler, cancelled when dropped before it ended.
pub struct ClusterJob {
    client: SchedulerGrpcClient<Channel>,
    host_port: String,
    job_id: String,
    flight_proxy: Option<FlightProxy>,
    max_message_size: usize,
    io_retries: u8,
    io_retry_wait_ms: u64,
    /// The job ended (succeeded, failed or cancelled): nothing to cancel on drop.
    ended: bool,
}

impl std::fmt::Debug for ClusterJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterJob")
            .field("scheduler", &self.host_port)
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl ClusterJob {
    /// Submits an encoded physical plan to the scheduler at `host_port` with the settings of
    /// `session_config` (its Ballista options included). The scheduler decodes the plan with
    /// its codec at once: a plan it cannot decode (another parallel-run version) is refused
    /// here, with the scheduler's reason.
    pub async fn submit(
        host_port: &str,
        plan: Vec<u8>,
        session_config: &SessionConfig,
        session_id: String,
    ) -> Result<ClusterJob> {
        let ballista: BallistaConfig = session_config.ballista_config();
        let max_message_size = ballista.grpc_client_max_message_size();
        let failed = |what: &str, why: String| scheduler_error(host_port, what, why);
        let mut client = connect(host_port, &ballista).await?;
        let settings = session_config
            .options()
            .entries()
            .into_iter()
            .map(|entry| KeyValuePair {
                key: entry.key,
                value: entry.value,
            })
            .collect();
        let mut request = tonic::Request::new(ExecuteQueryParams {
            query: Some(execute_query_params::Query::PhysicalPlan(plan)),
            settings,
            session_id,
            operation_id: format!("parallel-run-{}", std::process::id()),
        });
        // Schedulers of Ballista 55 refuse a submission without the client's version.
        version::insert_version_header(request.metadata_mut());
        let response = client
            .execute_query(request)
            .await
            .map_err(|status| failed("submitting the job to", status.message().to_string()))?;
        let scheduler_version = version::version_from_metadata(response.metadata());
        let ballista_mismatch =
            version::check_compatibility(Some(BALLISTA_VERSION), scheduler_version).err();
        let result = response.into_inner().result;
        let job_id = match result {
            Some(execute_query_result::Result::Success(success)) => success.job_id,
            Some(execute_query_result::Result::Failure(failure)) => {
                let why = match failure.failure {
                    Some(Failure::PlanParsingFailure(why))
                    | Some(Failure::SqlParsingFailure(why))
                    | Some(Failure::SessionNotFound(why)) => why,
                    None => "no reason given".to_string(),
                };
                let why = ballista_mismatch.map_or(why.clone(), |m| format!("{m} ({why})"));
                return Err(failed(
                    "submitting the job to",
                    format!("it refused the job: {why}"),
                ));
            }
            None => return Err(failed("submitting the job to", "no answer".into())),
        };
        let mut job = ClusterJob {
            client,
            host_port: host_port.to_string(),
            job_id,
            flight_proxy: None,
            max_message_size,
            io_retries: u8::try_from(ballista.io_retries_times()).unwrap_or(u8::MAX),
            io_retry_wait_ms: ballista.io_retry_wait_time_ms() as u64,
            ended: false,
        };
        if let Some(mismatch) = ballista_mismatch {
            // A scheduler too old to check versions has queued the job anyway.
            job.cancel().await;
            return Err(failed("submitting the job to", mismatch));
        }
        tracing::debug!(job = %job.job_id, scheduler = %host_port, "cluster job submitted");
        Ok(job)
    }

    /// The job `job_id` that another driver submitted to the scheduler at `host_port` (a
    /// driver that crashed: its job runs on), to ask whether it still runs and cancel it.
    /// Dropped unended, it is cancelled as a submitted one is.
    pub async fn attach(host_port: &str, job_id: &str) -> Result<ClusterJob> {
        let ballista = BallistaConfig::default();
        let client = connect(host_port, &ballista).await?;
        Ok(ClusterJob {
            client,
            host_port: host_port.to_string(),
            job_id: job_id.to_string(),
            flight_proxy: None,
            max_message_size: ballista.grpc_client_max_message_size(),
            io_retries: u8::try_from(ballista.io_retries_times()).unwrap_or(u8::MAX),
            io_retry_wait_ms: ballista.io_retry_wait_time_ms() as u64,
            ended: false,
        })
    }

    /// Whether the job is still queued or running on the scheduler. A job it does not know
    /// (it restarted, or forgot the finished job) has ended: the driver that submitted it had
    /// its id, so it was queued by then. Marks an ended job as such, so dropping it cancels
    /// nothing.
    pub async fn still_runs(&mut self) -> Result<bool> {
        let runs = matches!(
            self.status().await?,
            Some(job_status::Status::Queued(_) | job_status::Status::Running(_))
        );
        if !runs {
            self.ended = true;
        }
        Ok(runs)
    }

    /// The scheduler's id of the job.
    pub fn id(&self) -> &str {
        &self.job_id
    }

    /// Waits for the job to end, asking for its status every [`STATUS_EVERY`]. When `cancel`
    /// fires first, the job is cancelled on the scheduler (its running tasks are stopped on
    /// the executors) and [`JobEnd::Cancelled`] returned. A failed job, or a scheduler that
    /// stops answering, is an error (the job is cancelled first when it may still run).
    pub async fn wait(&mut self, cancel: &CancellationToken) -> Result<JobEnd> {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let confirmed = self.cancel().await;
                    return Ok(JobEnd::Cancelled { confirmed });
                }
                _ = tokio::time::sleep(STATUS_EVERY) => {}
            }
            let status = match self.status().await {
                Ok(status) => {
                    failures = 0;
                    status
                }
                Err(e) => {
                    failures += 1;
                    if failures < STATUS_FAILURES {
                        continue;
                    }
                    self.cancel().await;
                    return Err(e);
                }
            };
            match status {
                None
                | Some(job_status::Status::Queued(_))
                | Some(job_status::Status::Running(_)) => {}
                Some(job_status::Status::Failed(failed)) => {
                    self.ended = true;
                    return Err(scheduler_error(
                        &self.host_port,
                        "the job failed on",
                        format!("job {}: {}", self.job_id, failed.error),
                    ));
                }
                Some(job_status::Status::Successful(done)) => {
                    self.ended = true;
                    return Ok(JobEnd::Succeeded(done.partition_location));
                }
            }
        }
    }

    /// The job's status (`None` while the scheduler plans it).
    async fn status(&mut self) -> Result<Option<job_status::Status>> {
        let answer = self
            .client
            .get_job_status(GetJobStatusParams {
                job_id: self.job_id.clone(),
            })
            .await
            .map_err(|status| {
                scheduler_error(
                    &self.host_port,
                    "asking for the job's status from",
                    format!("job {}: {}", self.job_id, status.message()),
                )
            })?
            .into_inner();
        if answer.flight_proxy.is_some() {
            self.flight_proxy = answer.flight_proxy;
        }
        Ok(answer.status.and_then(|s| s.status))
    }

    /// Cancels the job on the scheduler and waits (at most [`CANCEL_CONFIRM`]) until the
    /// scheduler reports it ended. Returns whether it did; a failure is logged, not returned
    /// (the driver is stopping anyway).
    pub async fn cancel(&mut self) -> bool {
        if self.ended {
            return true;
        }
        self.ended = true;
        let cancelled = self
            .client
            .cancel_job(CancelJobParams {
                job_id: self.job_id.clone(),
            })
            .await;
        if let Err(status) = cancelled {
            tracing::warn!(
                job = %self.job_id,
                scheduler = %self.host_port,
                "cancelling the cluster job failed: {}",
                status.message()
            );
            return false;
        }
        let deadline = tokio::time::Instant::now() + CANCEL_CONFIRM;
        while tokio::time::Instant::now() < deadline {
            match self.status().await {
                Ok(Some(job_status::Status::Failed(_) | job_status::Status::Successful(_))) => {
                    tracing::debug!(job = %self.job_id, "cluster job cancelled");
                    return true;
                }
                Ok(_) | Err(_) => tokio::time::sleep(STATUS_EVERY).await,
            }
        }
        false
    }

    /// The results at `locations`, fetched one after the other from the executors that hold
    /// them (or through the scheduler's Flight proxy when it says so).
    pub async fn results(
        &self,
        locations: Vec<PartitionLocation>,
    ) -> Result<Vec<SendableRecordBatchStream>> {
        let mut streams = Vec::with_capacity(locations.len());
        for location in locations {
            streams.push(self.fetch(location).await?);
        }
        Ok(streams)
    }

    async fn fetch(&self, location: PartitionLocation) -> Result<SendableRecordBatchStream> {
        let failed = |why: String| {
            scheduler_error(
                &self.host_port,
                "fetching the results of the job from an executor of",
                format!("job {}: {why}", self.job_id),
            )
        };
        let layout = location.layout();
        let executor = location
            .executor_meta
            .ok_or_else(|| failed("a result has no executor".into()))?;
        let partition = location
            .partition_id
            .ok_or_else(|| failed("a result has no partition id".into()))?;
        let executor_port = u16::try_from(executor.port)
            .map_err(|_| failed(format!("executor port {} out of range", executor.port)))?;
        let (host, port) = self.flight_address(&executor.host, executor_port)?;
        let mut client = BallistaClient::try_new(
            &host,
            port,
            self.max_message_size,
            false,
            None,
            self.io_retries,
            self.io_retry_wait_ms,
            0,
            0,
        )
        .await
        .map_err(|e| failed(format!("connecting to {host}:{port}: {e}")))?;
        let partition_id = PartitionId::new(
            &JobId::from(partition.job_id),
            partition.stage_id as usize,
            partition.partition_id as usize,
        );
        client
            .fetch_partition_proxied(
                &executor.id,
                &partition_id,
                location.file_id,
                layout,
                &executor.host,
                executor_port,
                true,
            )
            .await
            .map_err(|e| failed(format!("{host}:{port}: {e}")))
    }

    /// Where results are read: the executor, or the Flight proxy the scheduler names.
    fn flight_address(&self, executor_host: &str, executor_port: u16) -> Result<(String, u16)> {
        let proxy = match &self.flight_proxy {
            Some(FlightProxy::External(address)) => address.as_str(),
            Some(FlightProxy::Local(true)) => self.host_port.as_str(),
            Some(FlightProxy::Local(false)) | None => {
                return Ok((executor_host.to_string(), executor_port))
            }
        };
        let (host, port) = proxy
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                scheduler_error(
                    &self.host_port,
                    "reading the results through the Flight proxy of",
                    format!("proxy address {proxy:?} is not HOST:PORT"),
                )
            })?;
        Ok((host.to_string(), port))
    }
}

impl Drop for ClusterJob {
    /// A job the driver stopped waiting for (its future dropped) is cancelled in the
    /// background, so its tasks do not keep running on the executors.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut client = self.client.clone();
        let job_id = self.job_id.clone();
        runtime.spawn(async move {
            let _ = client.cancel_job(CancelJobParams { job_id }).await;
        });
    }
}

/// A gRPC client of the scheduler at `host_port`.
async fn connect(
    host_port: &str,
    ballista: &BallistaConfig,
) -> Result<SchedulerGrpcClient<Channel>> {
    let max_message_size = ballista.grpc_client_max_message_size();
    let failed = |why: String| scheduler_error(host_port, "connecting to", why);
    let endpoint = create_grpc_client_endpoint(
        format!("http://{host_port}"),
        Some(&GrpcClientConfig::from(ballista)),
    )
    .map_err(|e| failed(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(SchedulerGrpcClient::new(channel)
        .max_encoding_message_size(max_message_size)
        .max_decoding_message_size(max_message_size))
}

/// An error talking to the scheduler at `host_port`: `what` happened, `why`.
fn scheduler_error(host_port: &str, what: &str, why: String) -> PrsError {
    PrsError::Cluster {
        scheduler: host_port.to_string(),
        message: format!("{what} the Ballista scheduler at {host_port} failed: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_scheduler_is_named() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = SessionConfig::new();
        let e = ClusterJob::submit(&address, Vec::new(), &config, "s".into())
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&address) && text.contains("connecting"),
            "{text}"
        );
        assert!(matches!(e, PrsError::Cluster { .. }));
    }
}
