//! The driver's side of a `partition_keys` job on a cluster.
//!
//! The driver cannot cut the mini-batches (one per key: the keys are known only once the
//! rows are grouped), so the plan does the grouping (see [`crate::exec::keyed_shared`]): the
//! driver cuts each input into row chunks that know their input row numbers, and the plan
//! hash-repartitions the rows on the keys (a Ballista stage boundary), sorts each partition
//! and cuts one mini-batch per key, with the ids, lineage and fingerprints of a local run.
//!
//! Completeness: the driver knows every input's row count, not its keys. Each key's
//! mini-batch holds all the rows of that key, and its record says how many; so the job is
//! complete when the Ballista job succeeded and the records (plus the mini-batches a
//! resumed run skips) hold every row of every input. Until then the mini-batch totals are
//! not known (the progress line says so, as for a local job cut while it reads).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;

use crate::cluster::follow::{follow_job, Follow};
use crate::cluster::scheduler_host_port;
use crate::cluster::submit::{driver_name, stop_earlier_job, submit_plan, EarlierRecords};
use crate::config::StorageOptions;
use crate::error::{PrsError, Result};
use crate::exec::keyed_shared::{chunk_leaf, cut_rows, keyed_input_plan, CARRIED_LIMIT_BYTES};
use crate::exec::shared::{JobMarker, SharedLocation, SharedStaging};
use crate::exec::{CompletedMiniBatch, ExecMode, InputInfo, JobState, OperatorSpec, ResumeSkips};

/// Runs the `partition_keys` job of `spec` over `inputs` on the cluster at `target`, as
/// [`super::submit::run_on_cluster`] does for other jobs (same arguments, same outcome).
#[allow(clippy::too_many_arguments)]
pub async fn run_keyed_on_cluster(
    target: &str,
    spec: &Arc<OperatorSpec>,
    shared: SharedLocation,
    storage_options: &StorageOptions,
    inputs: Vec<(Arc<dyn ExecutionPlan>, InputInfo)>,
    task_ctx: Arc<TaskContext>,
    state: &Arc<JobState>,
    skips: Option<Arc<ResumeSkips>>,
    earlier: EarlierRecords,
    commit: impl Fn(&CompletedMiniBatch) -> Result<()>,
) -> Result<()> {
    let host_port = scheduler_host_port(target)?;
    if spec.job().dead_letter_rows {
        return Err(PrsError::config(
            "compute_target",
            target,
            "dead_letter_rows is not supported on a cluster yet (the failed rows stay on the \
             executors): remove it, or run locally (compute_target: local)",
        ));
    }
    let keys = spec.settings().partition_keys.clone();
    let partitions = spec.settings().workers.max(1);
    let spec = Arc::new(
        spec.as_ref()
            .clone()
            .with_shared(shared.clone())
            .with_input_storage(storage_options),
    );
    // The plan: one sorted, hash-partitioned child per input.
    let mut children = Vec::with_capacity(inputs.len());
    let mut rows = Vec::with_capacity(inputs.len());
    let mut carried = 0usize;
    for (plan, info) in &inputs {
        let cut = cut_rows(plan, info, &task_ctx).await?;
        carried += cut.carried_bytes;
        if carried > CARRIED_LIMIT_BYTES {
            return Err(PrsError::config(
                "compute_target",
                target,
                format!(
                    "the inputs of this partition_keys job that travel with their rows add \
                     up to more than the {} MiB a cluster plan carries (only inputs declared \
                     as Parquet, CSV or JSON files are read by the executors themselves): \
                     declare them as files (not a sql: input), or run the \
                     job locally (compute_target: local)",
                    CARRIED_LIMIT_BYTES / (1024 * 1024)
                ),
            ));
        }
        let leaf = chunk_leaf(&cut.chunks, partitions)?;
        children.push(keyed_input_plan(
            leaf,
            &info.name,
            plan.schema(),
            spec.scan_source(&info.name),
            &keys,
            partitions,
        )?);
        rows.push(cut.rows);
    }
    // The keys are not known before the end, the rows are: the bar shows items.
    state.expect_items(rows.iter().sum());

    let staging = SharedStaging::open_for_driver(&shared, storage_options)?;
    // An earlier run's cluster job whose driver crashed runs on: stopped first. Its records
    // are not adopted (a keyed job's mini-batches are known only as the executors find
    // them); the driver's ledger holds what it committed, the rest runs again.
    stop_earlier_job(&staging, earlier).await;
    staging.clear().await?;
    // A resumed run: the executors find the committed keys again and do not run them; the
    // driver counts them now (their rows count towards the inputs' rows).
    let mut tally = Tally::new(rows);
    if let Some(skips) = skips.as_ref().filter(|s| !s.is_empty()) {
        let mut listed = BTreeMap::new();
        for id in skips.ids() {
            if let Some(skipped) = skips.get(&id) {
                listed.insert(id.to_string(), skipped.fingerprint);
                tally.add(&skipped.record);
                state.mini_batch_skipped(&skipped.record);
                skips.mark_skipped(id);
            }
        }
        staging.write_resume_skips(&listed).await?;
    }

    let mut job = submit_plan(host_port, &spec, ExecMode::Keyed, children).await?;
    let job_id = job.id().to_string();
    // A later run of this output stops this job if this driver crashes.
    let marker = JobMarker {
        scheduler: host_port.to_string(),
        job_id: job_id.clone(),
        driver: driver_name(),
    };
    if let Err(e) = staging.write_marker(&marker).await {
        tracing::warn!("noting the cluster job in the shared staging area failed: {e}");
    }
    let mut follower = KeyedFollower {
        staging,
        seen: HashSet::new(),
        tally,
    };
    if !follow_job(&mut job, &mut follower, state, &commit, host_port).await? {
        // Cancelled: the job state holds why.
        return Ok(());
    }
    if let Some(problem) = follower
        .tally
        .incomplete(spec.inputs(), follower.staging.shown())
    {
        return Err(PrsError::Cluster {
            scheduler: host_port.to_string(),
            message: format!(
                "cluster job {job_id} succeeded, but {problem} ({} mini-batches recorded)",
                follower.seen.len()
            ),
        });
    }
    // Every key is known now: the totals are final (and the percent threshold checked).
    state.scheduling_finished();
    if let Err(e) = follower.staging.clear().await {
        tracing::warn!("removing the shared staging area failed: {e}");
    }
    Ok(())
}

/// Rows per input: in the input, and in the mini-batches recorded or skipped so far.
struct Tally {
    expected: Vec<u64>,
    recorded: Vec<u64>,
}

impl Tally {
    fn new(expected: Vec<u64>) -> Self {
        let recorded = vec![0; expected.len()];
        Tally { expected, recorded }
    }

    fn add(&mut self, record: &crate::batch::MiniBatchRecord) {
        if let Some(rows) = self.recorded.get_mut(record.id.input as usize) {
            *rows += record.total_items;
        }
    }

    /// What is wrong (an input whose rows are not all recorded, or more than all), if
    /// anything; `staging` is the shared staging area as users see it.
    fn incomplete(&self, inputs: &[InputInfo], staging: &str) -> Option<String> {
        self.expected
            .iter()
            .zip(&self.recorded)
            .enumerate()
            .find(|(_, (expected, recorded))| expected != recorded)
            .map(|(i, (expected, recorded))| {
                let name = inputs.get(i).map_or("?", |info| info.name.as_str());
                if recorded > expected {
                    format!(
                        "{recorded} rows of input {name:?} are recorded or skipped where it \
                         has {expected}: keys the run this one resumes committed are gone \
                         from the input. Restore the input, or run with --restart"
                    )
                } else {
                    format!(
                        "only {recorded} of the {expected} rows of input {name:?} have a \
                         record in the shared staging area {staging}: an executor could not \
                         write there, the staging area was changed during the job, or the \
                         input changed. Run the job again with --resume"
                    )
                }
            })
    }
}

/// The driver following a keyed cluster job through the records its executors commit.
struct KeyedFollower {
    staging: SharedStaging,
    /// Ids already committed by the driver.
    seen: HashSet<String>,
    tally: Tally,
}

impl Follow for KeyedFollower {
    /// Commits the records that appeared since the last poll (with their parts' results).
    /// A key's mini-batch is counted as cut when its record arrives (the totals grow as the
    /// job runs), and numbered in the order the driver commits them.
    async fn poll(
        &mut self,
        state: &Arc<JobState>,
        commit: &impl Fn(&CompletedMiniBatch) -> Result<()>,
    ) -> Result<()> {
        let mut names = self.staging.record_names().await?;
        names.sort();
        for name in names {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if self.seen.contains(id) {
                continue;
            }
            let shared = self.staging.read_record(&name).await?;
            let result = match &shared.part {
                Some(part) => Some(self.staging.read_part(part).await?),
                None => None,
            };
            let mut record = shared.record;
            // Dispatch order: the order the driver sees the keys (each task numbers its own).
            let index = state.counts().mini_batches_total;
            record.index = index;
            let done = CompletedMiniBatch {
                id: record.id,
                index,
                lineage: record.lineage.clone(),
                result,
                returned: shared.returned,
                fingerprint: shared.fingerprint,
                source: None,
                record,
                // Not kept on the executors (a cluster job refuses dead_letter_rows).
                failed_input: None,
            };
            state.mini_batch_scheduled(done.record.total_items);
            state.mini_batch_finished_elsewhere(&done.record);
            commit(&done)?;
            self.tally.add(&done.record);
            self.seen.insert(id.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{ItemKind, Lineage, MiniBatchId, MiniBatchRecord, MiniBatchStatus};

    fn record(input: u32, rows: u64) -> MiniBatchRecord {
        MiniBatchRecord {
            id: MiniBatchId::new(input, 7),
            index: 0,
            lineage: Lineage {
                input: Arc::from("t"),
                rows: 0..rows,
            },
            partition_key_value: Default::default(),
            tries: 1,
            process: "p".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            total_items: rows,
            succeeded_items: rows,
            failed_items: 0,
            elapsed_seconds: 0.0,
            run_seconds: 0.0,
            status: MiniBatchStatus::Succeeded,
            error_message: String::new(),
            traceback: None,
            earlier_errors: Vec::new(),
            bisection_calls: 0,
            isolated: Vec::new(),
        }
    }

    #[test]
    fn a_job_is_complete_when_the_records_hold_every_row_of_every_input() {
        let inputs = vec![
            InputInfo::new("a", ItemKind::Rows),
            InputInfo::new("b", ItemKind::Rows),
        ];
        let mut tally = Tally::new(vec![10, 5]);
        tally.add(&record(0, 4));
        tally.add(&record(1, 5));
        let missing = tally.incomplete(&inputs, "/out/staging").unwrap();
        for part in ["only 4 of the 10 rows", "\"a\"", "/out/staging", "--resume"] {
            assert!(missing.contains(part), "{part}: {missing}");
        }
        tally.add(&record(0, 6));
        assert_eq!(tally.incomplete(&inputs, "/out/staging"), None);
        tally.add(&record(1, 1));
        let gone = tally.incomplete(&inputs, "/out/staging").unwrap();
        for part in ["6 rows of input \"b\"", "has 5", "--restart"] {
            assert!(gone.contains(part), "{part}: {gone}");
        }
    }
}
