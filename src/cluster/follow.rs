//! The driver following a cluster job: it polls the records the executors commit in the
//! shared staging area, checks each against what the driver cut, and commits it (with its
//! part's results) through the driver's ledger and output, as a local run commits a finished
//! mini-batch ([`follow_job`], [`Follower`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::batch::{Lineage, MiniBatchId};
use crate::cluster::client::{ClusterJob, JobEnd};
use crate::error::{PrsError, Result};
use crate::exec::shared::{SharedRecord, SharedStaging};
use crate::exec::{CompletedMiniBatch, JobState};

/// How often the driver lists the records committed in the shared store.
pub(super) const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// What the driver cut as one mini-batch, to check a record against.
#[derive(Debug, Clone)]
pub(super) struct Expected {
    pub(super) index: u64,
    pub(super) fingerprint: u64,
    pub(super) lineage: Lineage,
}

/// Why `shared` is not the record of the cut mini-batch `expected` (`None`: it is).
pub(super) fn mismatch(
    shared: &SharedRecord,
    id: &MiniBatchId,
    expected: &Expected,
) -> Option<String> {
    let lineage = &shared.record.lineage;
    if shared.record.id != *id {
        return Some(format!(
            "it is the record of mini batch {}",
            shared.record.id
        ));
    }
    if *lineage != expected.lineage {
        return Some(format!(
            "it holds rows {}..{} of input {:?}, this run's mini-batch rows {}..{} of input {:?}",
            lineage.rows.start,
            lineage.rows.end,
            lineage.input.as_ref(),
            expected.lineage.rows.start,
            expected.lineage.rows.end,
            expected.lineage.input.as_ref()
        ));
    }
    if shared.fingerprint != expected.fingerprint {
        return Some(format!(
            "its input slice changed (fingerprint {:016x}, now {:016x})",
            shared.fingerprint, expected.fingerprint
        ));
    }
    if shared.index != expected.index {
        return Some(format!(
            "it was dispatched as number {}, this run's mini-batch as number {}",
            shared.index, expected.index
        ));
    }
    None
}

/// The finished mini-batch a record commits (its results read from its part); `index` is
/// this run's.
pub(super) async fn completed(
    staging: &SharedStaging,
    shared: SharedRecord,
    index: u64,
) -> Result<CompletedMiniBatch> {
    let result = match &shared.part {
        Some(part) => Some(staging.read_part(part).await?),
        None => None,
    };
    Ok(CompletedMiniBatch {
        id: shared.record.id,
        index,
        lineage: shared.record.lineage.clone(),
        result,
        returned: shared.returned,
        fingerprint: shared.fingerprint,
        source: None,
        record: shared.record,
        // Not kept on the executors (a cluster job refuses dead_letter_rows).
        failed_input: None,
    })
}

/// What follows the records the executors of a job commit: polled every [`FOLLOW_EVERY`]
/// while the job runs (see [`follow_job`]).
pub(super) trait Follow {
    /// Commits the records that appeared since the last poll, through `commit`.
    async fn poll(
        &mut self,
        state: &Arc<JobState>,
        commit: &impl Fn(&CompletedMiniBatch) -> Result<()>,
    ) -> Result<()>;
}

/// Waits for `job` to end while `follower` commits what its executors record, then commits
/// the last records. `Ok(true)` when the job succeeded, `Ok(false)` when it was cancelled
/// (by the job state's cancellation: Ctrl+C, an exceeded threshold; the state says why); a
/// failed job is an error, after what it recorded was committed.
pub(super) async fn follow_job(
    job: &mut ClusterJob,
    follower: &mut impl Follow,
    state: &Arc<JobState>,
    commit: &impl Fn(&CompletedMiniBatch) -> Result<()>,
    host_port: &str,
) -> Result<bool> {
    let ended = {
        let wait = job.wait(state.cancellation());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                ended = &mut wait => break ended,
                _ = tokio::time::sleep(FOLLOW_EVERY) => {
                    // A threshold crossed here aborts the state: the wait cancels the job.
                    follower.poll(state, commit).await?;
                }
            }
        }
    };
    let end = match ended {
        Ok(end) => end,
        Err(e) => {
            if let Err(late) = follower.poll(state, commit).await {
                tracing::warn!("reading the last records of the failed job: {late}");
            }
            return Err(e);
        }
    };
    follower.poll(state, commit).await?;
    match end {
        // The results are in the shared store: nothing is fetched from the executors (an
        // executor lost after its task succeeded would make that fetch fail).
        JobEnd::Succeeded(_) => Ok(true),
        JobEnd::Cancelled { confirmed } => {
            if !confirmed {
                eprintln!(
                    "parallel-run: warning: the scheduler at {host_port} did not confirm that \
                     cluster job {} was cancelled; its tasks may still run",
                    job.id()
                );
            }
            Ok(false)
        }
    }
}

/// The driver following a cluster job through the records its executors commit.
pub(super) struct Follower {
    pub(super) staging: SharedStaging,
    /// The scheduler's `HOST:PORT`.
    pub(super) scheduler: String,
    /// The mini-batches the job runs.
    pub(super) expected: HashMap<MiniBatchId, Expected>,
    /// Ids already committed by the driver.
    pub(super) seen: HashSet<MiniBatchId>,
    /// The cluster job's id.
    pub(super) job_id: String,
    /// Records another cluster job wrote (an earlier run's, whose driver crashed, finishing
    /// late) are committed when they match the cut (a resumed run adopts them anyway);
    /// otherwise they are refused.
    pub(super) others: bool,
    /// Records (and their parts) read at once: the store's latency is paid once per batch
    /// of them, not per mini-batch; at most this many parts are in memory.
    pub(super) reads_at_once: usize,
}

impl Follow for Follower {
    /// Commits the records that appeared since the last poll (with their parts' results), in
    /// the order of their names, reading up to `reads_at_once` of them at a time.
    /// A record that is not of a mini-batch the job runs is ignored; one that does not match
    /// its mini-batch, or (unless `others`) was written by another cluster job, is an error:
    /// another run commits into this output.
    async fn poll(
        &mut self,
        state: &Arc<JobState>,
        commit: &impl Fn(&CompletedMiniBatch) -> Result<()>,
    ) -> Result<()> {
        let mut names = self.staging.record_names().await?;
        names.sort();
        let mut new = Vec::new();
        for name in names {
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|id| id.parse::<MiniBatchId>().ok())
            else {
                continue;
            };
            if self.seen.contains(&id) {
                continue;
            }
            let Some(expected) = self.expected.get(&id) else {
                // Not this run's (an earlier job's late record of a mini-batch the ledger
                // holds): never committed.
                self.seen.insert(id);
                tracing::warn!(
                    "ignoring the record of mini batch {id} in {}: this run does not run it",
                    self.staging.shown()
                );
                continue;
            };
            new.push((name, id, expected.clone()));
        }
        let (staging, scheduler, job_id, others) =
            (&self.staging, &self.scheduler, &self.job_id, self.others);
        let mut reads = futures::stream::iter(new)
            .map(|(name, id, expected)| async move {
                let shared = staging.read_record(&name).await?;
                let other = shared.job().filter(|job| job != job_id);
                let why = match other {
                    Some(job) if !others => Some(format!(
                        "it was written by cluster job {job}, not by this run's job {job_id}"
                    )),
                    _ => mismatch(&shared, &id, &expected),
                };
                if let Some(why) = why {
                    return Err(PrsError::Cluster {
                        scheduler: scheduler.clone(),
                        message: format!(
                            "the record of mini batch {id} in the shared staging area {} is \
                             not this run's: {why}. Another run commits into this output (a \
                             cluster job whose driver stopped?): make sure it is stopped, then \
                             run the job again with --resume",
                            staging.shown()
                        ),
                    });
                }
                if let Some(job) = other {
                    eprintln!(
                        "parallel-run: mini batch {id} was finished by cluster job {job} of \
                         the earlier run (stopped late); its record matches this run's and is \
                         kept"
                    );
                }
                Ok((id, completed(staging, shared, expected.index).await?))
            })
            .buffered(self.reads_at_once.max(1));
        while let Some(read) = reads.next().await {
            let (id, done) = read?;
            state.mini_batch_finished_elsewhere(&done.record);
            commit(&done)?;
            self.seen.insert(id);
        }
        Ok(())
    }
}
