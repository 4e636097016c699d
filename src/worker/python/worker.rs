//! One Python worker process seen from the engine: [`PythonWorker`] implements [`Worker`].

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Child;

use super::process::{describe_exit, kill_group, log_tail, UserLogPaths};
use super::protocol::{self, ErrorKind, InitStage, ReadError, Reply};
use crate::batch::MiniBatch;
use crate::config::OutputFormat;
use crate::error::{PrsError, Result};
use crate::worker::{MiniBatchContext, RunError, RunReturn, Worker, WorkerSlot};

/// How long shutdown() may take before the worker is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker may take to exit once it said it would (or after its pipe closed).
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// How much of the stderr log goes into an error about a worker that died early.
const STDERR_TAIL_BYTES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started; importing the script and running init().
    Starting,
    /// READY received: takes mini-batches.
    Ready,
    /// Dead, killed or stopped: never used again.
    Gone,
}

/// A running Python worker process and its two protocol pipes.
pub(crate) struct PythonWorker {
    pub(crate) slot: WorkerSlot,
    /// `None` once reaped.
    pub(crate) child: Option<Child>,
    /// Process group id (= the child's pid).
    pub(crate) pgid: i32,
    pub(crate) to_child: pipe::Sender,
    pub(crate) from_child: BufReader<pipe::Receiver>,
    state: State,
    pub(crate) keep_results: bool,
    pub(crate) output_format: OutputFormat,
    pub(crate) logs: UserLogPaths,
    /// Size of the stderr log when this worker started: its own output comes after.
    pub(crate) stderr_start: u64,
    pub(crate) python: PathBuf,
    /// The entry script (for the message of a script that cannot be loaded).
    pub(crate) entry_script: PathBuf,
    /// Limit for the parts of a RUN that are not run() itself (see [`super::STALL_LIMIT`]).
    pub(crate) stall_limit: Duration,
}

/// How a worker was found dead while waiting for it.
struct Death {
    detail: String,
}

impl Death {
    /// The run() failure for a worker lost this way.
    fn crashed(self) -> RunError {
        RunError::Crashed {
            detail: self.detail,
        }
    }
}

impl PythonWorker {
    /// A worker around a freshly spawned child.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        slot: WorkerSlot,
        child: Child,
        pgid: i32,
        to_child: pipe::Sender,
        from_child: pipe::Receiver,
        keep_results: bool,
        output_format: OutputFormat,
        logs: UserLogPaths,
        stderr_start: u64,
        python: PathBuf,
        entry_script: PathBuf,
        stall_limit: Duration,
    ) -> Self {
        PythonWorker {
            slot,
            child: Some(child),
            pgid,
            to_child,
            from_child: BufReader::with_capacity(64 * 1024, from_child),
            state: State::Starting,
            keep_results,
            output_format,
            logs,
            stderr_start,
            python,
            entry_script,
            stall_limit,
        }
    }

    fn agent(&self) -> String {
        self.slot.agent_name.clone()
    }

    /// Waits for the next frame, noticing at once if the process dies (even when something it
    /// started keeps the pipe open).
    async fn receive(
        &mut self,
    ) -> std::result::Result<(Reply, Option<arrow::buffer::Buffer>), Death> {
        let outcome = {
            let Some(child) = self.child.as_mut() else {
                return Err(Death {
                    detail: "the worker process is gone".into(),
                });
            };
            // Reading first: a worker that sends a frame and exits (INIT_ERROR) has written
            // all of it before its exit can be seen, so the frame is never lost to the race.
            tokio::select! {
                biased;
                frame = protocol::read_frame(&mut self.from_child) => Ok(frame),
                status = child.wait() => Err(status),
            }
        };
        match outcome {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(ReadError::Invalid(message))) => {
                Err(self.stop_now(format!("protocol error: {message}")).await)
            }
            Ok(Err(ReadError::Closed)) => Err(self.await_death().await),
            Ok(Err(ReadError::Io(e))) => {
                tracing::debug!(worker = %self.slot.agent_name, error = %e, "reading from the worker failed");
                Err(self.await_death().await)
            }
            Err(status) => {
                self.child = None;
                // The leader is gone; take down whatever it started too.
                kill_group(self.pgid);
                self.state = State::Gone;
                Err(Death {
                    detail: match status {
                        Ok(status) => describe_exit(status),
                        Err(e) => format!("could not wait for the worker: {e}"),
                    },
                })
            }
        }
    }

    /// The pipe closed: collects the exit status (killing the group if it lingers).
    async fn await_death(&mut self) -> Death {
        self.state = State::Gone;
        let Some(mut child) = self.child.take() else {
            return Death {
                detail: "the worker process is gone".into(),
            };
        };
        let status = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
            Ok(status) => {
                kill_group(self.pgid);
                status
            }
            Err(_) => {
                kill_group(self.pgid);
                let status = child.wait().await;
                return Death {
                    detail: format!(
                        "the worker closed its protocol pipe and did not exit ({})",
                        status.map(describe_exit).unwrap_or_else(|e| e.to_string())
                    ),
                };
            }
        };
        Death {
            detail: match status {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not wait for the worker: {e}"),
            },
        }
    }

    /// Kills the process group and reaps the leader; `detail` says why.
    async fn stop_now(&mut self, detail: String) -> Death {
        self.kill_and_reap().await;
        Death { detail }
    }

    /// SIGKILL to the group (before reaping, so the group id cannot be reused meanwhile),
    /// then reap the leader (bounded: a process stuck in the kernel is left to the runtime).
    async fn kill_and_reap(&mut self) {
        self.state = State::Gone;
        if let Some(mut child) = self.child.take() {
            kill_group(self.pgid);
            if tokio::time::timeout(EXIT_GRACE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(worker = %self.slot.agent_name, "worker did not exit after SIGKILL; leaving it to be reaped later");
            }
        }
    }

    async fn send(&mut self, frame: &[u8]) -> std::result::Result<(), Death> {
        let sent = async {
            self.to_child.write_all(frame).await?;
            self.to_child.flush().await
        }
        .await;
        match sent {
            Ok(()) => Ok(()),
            // Broken pipe: the worker died; find out how.
            Err(_) => Err(self.death_after_send().await),
        }
    }

    async fn death_after_send(&mut self) -> Death {
        match self.receive().await {
            Err(death) => death,
            Ok((reply, _)) => {
                self.stop_now(format!("unexpected {} while sending", reply.name()))
                    .await
            }
        }
    }

    /// The message of an init failure for the engine (the traceback included). A `fatal` one
    /// (every try would fail the same way) is a configuration error: missing packages name
    /// `environment`, a script that cannot be loaded is an [`PrsError::EntryScript`].
    fn init_failure(
        &self,
        stage: InitStage,
        message: &str,
        traceback: Option<&str>,
        fatal: bool,
    ) -> PrsError {
        if fatal && stage == InitStage::Packages {
            return PrsError::config("environment", self.python.display(), message);
        }
        if fatal {
            let mut text = format!(
                "cannot be loaded: {message}. Not retried (every try would fail the same way): \
                 fix the script; `parallel-run validate` checks it without running anything"
            );
            if let Some(tb) = traceback {
                text.push('\n');
                text.push_str(tb.trim_end());
            }
            return PrsError::EntryScript {
                script: self.entry_script.display().to_string(),
                message: text,
            };
        }
        let text = match stage {
            InitStage::Packages => message.to_string(),
            InitStage::Import => match traceback {
                Some(tb) => format!("loading the entry script failed: {message}\n{tb}"),
                None => format!("loading the entry script failed: {message}"),
            },
            InitStage::Init => match traceback {
                Some(tb) => format!("init() failed: {message}\n{tb}"),
                None => format!("init() failed: {message}"),
            },
        };
        let mut text = text.trim_end().to_string();
        if message.contains("SystemExit") {
            // The script exited by itself (argparse does on bad arguments): what it printed
            // says why.
            let tail = log_tail(&self.logs.stderr, self.stderr_start, STDERR_TAIL_BYTES);
            if !tail.is_empty() {
                text.push_str(&format!(
                    "\nthe worker's stderr ({}) ends with:\n{tail}",
                    self.logs.stderr.display()
                ));
            }
        }
        PrsError::Worker {
            worker: self.agent(),
            message: text,
        }
    }

    /// The message for a worker that died before init() finished, with its stderr tail.
    fn died_during_init(&self, detail: &str) -> PrsError {
        let tail = log_tail(&self.logs.stderr, self.stderr_start, STDERR_TAIL_BYTES);
        let mut message = format!(
            "init() failed: the worker ({}) ended before init() finished: {detail}",
            self.python.display()
        );
        if tail.is_empty() {
            message.push_str(&format!(
                " (nothing on stderr: {})",
                self.logs.stderr.display()
            ));
        } else {
            message.push_str(&format!(
                "; its stderr ({}) ends with:\n{tail}",
                self.logs.stderr.display()
            ));
        }
        PrsError::Worker {
            worker: self.agent(),
            message,
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        match self.state {
            State::Ready => return Ok(()),
            State::Gone => {
                return Err(PrsError::Worker {
                    worker: self.agent(),
                    message: "the worker has stopped".into(),
                })
            }
            State::Starting => {}
        }
        match self.receive().await {
            Ok((Reply::Ready { pid, python }, _)) => {
                tracing::debug!(worker = %self.slot.agent_name, pid, python = %python, "worker ready");
                self.state = State::Ready;
                Ok(())
            }
            Ok((
                Reply::InitError {
                    stage,
                    message,
                    traceback,
                    fatal,
                },
                _,
            )) => {
                let error = self.init_failure(stage, &message, traceback.as_deref(), fatal);
                // The worker exits by itself after INIT_ERROR.
                let _ = self.await_death().await;
                Err(error)
            }
            Ok((other, _)) => {
                let detail = format!("protocol error: {} before READY", other.name());
                self.kill_and_reap().await;
                Err(self.died_during_init(&detail))
            }
            Err(death) => Err(self.died_during_init(&death.detail)),
        }
    }

    /// Kills a worker that made no progress for the stall limit while `phase` the mini-batch.
    async fn stalled(&mut self, phase: &str, mini_batch: &MiniBatch) -> RunError {
        let death = self
            .stop_now(format!(
                "the worker stalled: no progress for {} seconds while {phase} mini batch {} \
                 (outside run(), which run_invocation_timeout bounds); it was killed",
                self.stall_limit.as_secs_f64().ceil() as u64,
                mini_batch.id
            ))
            .await;
        Death::crashed(death)
    }

    async fn exchange(
        &mut self,
        frame: &[u8],
    ) -> std::result::Result<(Reply, Option<arrow::buffer::Buffer>), Death> {
        self.send(frame).await?;
        self.receive().await
    }
}

#[async_trait]
impl Worker for PythonWorker {
    async fn init(&mut self) -> Result<()> {
        self.wait_ready().await
    }

    async fn run(
        &mut self,
        mini_batch: &MiniBatch,
        context: &MiniBatchContext,
        timeout: Duration,
    ) -> std::result::Result<RunReturn, RunError> {
        if self.state != State::Ready {
            // run() before init(): wait for init() first (outside the run timeout).
            self.wait_ready().await.map_err(|e| RunError::Crashed {
                detail: e.to_string(),
            })?;
        }
        let frame =
            protocol::encode_run(mini_batch, context, self.keep_results, self.output_format)
                .map_err(|e| RunError::Exception {
                    message: format!("could not encode mini batch {}: {e}", mini_batch.id),
                    traceback: None,
                })?;
        // Sending and decoding the mini-batch (up to STARTED), run() itself (up to RAN, or the
        // ERROR/RESULT that ends it), and converting the result: only run() counts against the
        // user's timeout; the rest is bounded by the stall limit.
        let stall = self.stall_limit;
        let mut reply = match tokio::time::timeout(stall, self.exchange(&frame)).await {
            Err(_) => return Err(self.stalled("receiving and decoding", mini_batch).await),
            Ok(reply) => reply.map_err(Death::crashed)?,
        };
        if matches!(reply.0, Reply::Started) {
            reply = match tokio::time::timeout(timeout, self.receive()).await {
                Err(_) => {
                    self.kill_and_reap().await;
                    return Err(RunError::Timeout {
                        seconds: timeout.as_secs_f64().ceil() as u64,
                    });
                }
                Ok(reply) => reply.map_err(Death::crashed)?,
            };
        }
        if matches!(reply.0, Reply::Ran) {
            reply = match tokio::time::timeout(stall, self.receive()).await {
                Err(_) => {
                    return Err(self
                        .stalled("converting run()'s result of", mini_batch)
                        .await)
                }
                Ok(reply) => reply.map_err(Death::crashed)?,
            };
        }
        match reply {
            (Reply::Result { returned, shape }, payload) => {
                let result = match (self.keep_results, payload) {
                    (true, Some(payload)) => {
                        let shape = protocol::parse_shape(shape.as_deref());
                        Some(protocol::decode_payload(payload, shape).map_err(|e| {
                            RunError::BadResult {
                                message: format!("could not read run()'s result: {e}"),
                            }
                        })?)
                    }
                    _ => None,
                };
                Ok(RunReturn { returned, result })
            }
            (
                Reply::Error {
                    kind,
                    message,
                    traceback,
                },
                _,
            ) => match kind {
                ErrorKind::BadResult => Err(RunError::BadResult { message }),
                ErrorKind::Exception => Err(RunError::Exception { message, traceback }),
                ErrorKind::Protocol => {
                    let death = self.stop_now(format!("protocol error: {message}")).await;
                    Err(RunError::Crashed {
                        detail: death.detail,
                    })
                }
            },
            (other, _) => {
                let death = self
                    .stop_now(format!("protocol error: {} in reply to RUN", other.name()))
                    .await;
                Err(RunError::Crashed {
                    detail: death.detail,
                })
            }
        }
    }

    fn alive(&mut self) -> bool {
        self.state == State::Ready
            && self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    async fn shutdown(&mut self) -> Result<()> {
        if self.state == State::Gone {
            return Ok(());
        }
        let frame = protocol::encode_message(&serde_json::json!({"type": "SHUTDOWN"}));
        let agent = self.agent();
        let outcome = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            self.send(&frame).await?;
            loop {
                match self.receive().await? {
                    (Reply::ShutdownDone { error, traceback }, _) => return Ok((error, traceback)),
                    // A worker still in init() answers READY (or INIT_ERROR) first.
                    (Reply::Ready { .. }, _) => continue,
                    (
                        Reply::InitError {
                            stage,
                            message,
                            traceback,
                            ..
                        },
                        _,
                    ) => return Ok((Some(format!("{stage} failed: {message}")), traceback)),
                    (other, _) => {
                        return Err(Death {
                            detail: format!(
                                "protocol error: {} in reply to SHUTDOWN",
                                other.name()
                            ),
                        })
                    }
                }
            }
        })
        .await;
        let result = match outcome {
            Err(_) => {
                self.kill_and_reap().await;
                Err(PrsError::Worker {
                    worker: agent,
                    message: format!(
                        "shutdown() did not finish in {} seconds; the worker was killed",
                        SHUTDOWN_TIMEOUT.as_secs()
                    ),
                })
            }
            Ok(Err(death)) => {
                self.kill_and_reap().await;
                Err(PrsError::Worker {
                    worker: agent,
                    message: format!("the worker died during shutdown(): {}", death.detail),
                })
            }
            Ok(Ok((error, traceback))) => {
                // The worker exits by itself now; give it a moment, then make sure.
                if let Some(mut child) = self.child.take() {
                    if tokio::time::timeout(EXIT_GRACE, child.wait()).await.is_ok() {
                        // Whatever the script started and left running goes with it.
                        kill_group(self.pgid);
                    } else {
                        self.child = Some(child);
                    }
                }
                match error {
                    None => Ok(()),
                    Some(message) => Err(PrsError::Worker {
                        worker: agent,
                        message: match traceback {
                            Some(tb) => format!("shutdown() failed: {message}\n{}", tb.trim_end()),
                            None => format!("shutdown() failed: {message}"),
                        },
                    }),
                }
            }
        };
        self.kill_and_reap().await;
        result
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        // Kill before the leader is reaped, so the group id still names our group; the tokio
        // runtime reaps the dropped child in the background.
        if self.child.is_some() {
            kill_group(self.pgid);
        }
    }
}
