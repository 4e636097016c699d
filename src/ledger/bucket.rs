//! The ledger and committed parts of an object-storage output, kept in its bucket as the run
//! goes, so that a lost machine loses nothing committed.
//!
//! # Layout (below the output prefix)
//! - `logs/ledger/job.json`: the [`super::LedgerHeader`], written when each run starts.
//! - `logs/ledger/runs/<run>.json`: each run's [`RunEntry`], created (create-if-absent) when it
//!   starts.
//! - `logs/ledger/records/<run>-<seq>.jsonl`: immutable segments of ledger records, each
//!   written once (create-if-absent) by one group commit: the lines of `records.jsonl` that
//!   the run wrote since its last segment, in the same order.
//! - `.parallel_run/staging/parts/<id>.arrow`: the committed parts. A segment is written only
//!   after every part its records name is stored, so the bucket's ledger never names a part
//!   that is not there.
//!
//! The local mirror's ledger and parts are written first (the run's critical path, as for a
//! local output); [`BucketReplica`] copies them in the background. A `kill -9` or a lost
//! machine loses at most the records (and parts) of the last group not yet uploaded: their
//! mini-batches run again. At the start of the next run, [`restore`] rebuilds the mirror's
//! ledger from the bucket wherever the bucket holds more (a fresh machine, or a mirror older
//! than the bucket), and [`fetch_parts`] downloads the parts a resumed run merges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::PutMode;
use tokio::sync::mpsc;

use super::{
    final_entries, ledger_error, read_entries, read_runs, LedgerEntry, RunEntry, HEADER_FILE,
    RECORDS_FILE, RUNS_FILE,
};
use crate::error::{PrsError, Result};
use crate::output::PartRef;
use crate::storage::lease::OutputLease;
use crate::storage::output::{RemoteOutput, LEDGER_PREFIX, STAGING_PARTS};
use crate::storage::StorageContext;

/// Parts uploaded or downloaded at once.
const CONCURRENCY: usize = 8;
/// The most records in one segment.
const SEGMENT_RECORDS: usize = 4096;

fn header_object() -> String {
    format!("{LEDGER_PREFIX}/{HEADER_FILE}")
}

fn run_object(run: u32) -> String {
    format!("{LEDGER_PREFIX}/runs/{run:06}.json")
}

fn segment_object(run: u32, seq: u64) -> String {
    format!("{LEDGER_PREFIX}/records/{run:06}-{seq:06}.jsonl")
}

fn part_object(file: &str) -> String {
    format!("{STAGING_PARTS}/{file}")
}

/// What [`restore`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Records taken from the bucket that the mirror did not have.
    pub records: usize,
    /// The mirror's ledger was rewritten from the bucket's.
    pub rewritten: bool,
}

/// Makes the local mirror's ledger (`ledger_dir`, below `log_dir`) hold everything the bucket's
/// holds: for each run, the longer of the two record lists (the mirror may be ahead of the
/// bucket by a group not yet uploaded, or behind it, or empty on a fresh machine). Nothing
/// changes when the bucket holds no ledger or nothing the mirror lacks.
pub async fn restore(
    remote: &RemoteOutput,
    storage: &StorageContext,
    log_dir: &Path,
) -> Result<Restored> {
    let Some(header) = remote.get(&header_object(), storage).await? else {
        return Ok(Restored::default());
    };
    let mut bucket_runs = Vec::new();
    let mut segments = Vec::new();
    for meta in remote.list(LEDGER_PREFIX, storage).await? {
        let Some(relative) = remote.relative(&meta.location) else {
            continue;
        };
        if relative.starts_with(&format!("{LEDGER_PREFIX}/runs/")) {
            bucket_runs.push(meta.location);
        } else if relative.starts_with(&format!("{LEDGER_PREFIX}/records/")) {
            segments.push(meta.location);
        }
    }
    // Zero-padded names: the name order is the run and segment order.
    segments.sort();
    let mut runs: Vec<RunEntry> = Vec::with_capacity(bucket_runs.len());
    for object in &bucket_runs {
        if let Some(bytes) = remote.get_object(object, storage).await? {
            runs.push(parse(&bytes, &remote.location_url(object))?);
        }
    }
    let fetched: Vec<Option<Bytes>> = futures::stream::iter(segments.iter())
        .map(|object| remote.get_object(object, storage))
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut entries = Vec::new();
    for (object, bytes) in segments.iter().zip(fetched) {
        let Some(bytes) = bytes else { continue };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            entries.push(parse::<LedgerEntry>(line, &remote.location_url(object))?);
        }
    }

    let dir = super::ledger_dir(log_dir);
    let local_header = dir.join(HEADER_FILE).is_file();
    let local_runs = read_runs(&dir)?;
    let local_entries = read_entries(&dir)?;
    let newest = |runs: &[RunEntry]| runs.iter().map(|r| r.run).max().unwrap_or(0);
    let bucket_newer = newest(&runs) > newest(&local_runs);
    let Some((runs, entries, records)) = merge(local_runs, local_entries, runs, entries) else {
        if local_header {
            return Ok(Restored::default());
        }
        // Runs and records agree but the header is missing: take the bucket's.
        write_file(&dir, HEADER_FILE, &header)?;
        return Ok(Restored {
            records: 0,
            rewritten: true,
        });
    };
    std::fs::create_dir_all(&dir).map_err(|e| PrsError::io(&dir, e))?;
    if bucket_newer || !local_header {
        write_file(&dir, HEADER_FILE, &header)?;
        // The mirror's summary belongs to an older run than the bucket's newest.
        let summary = log_dir.join("job_summary.json");
        if summary.exists() {
            std::fs::remove_file(&summary).map_err(|e| PrsError::io(&summary, e))?;
        }
        if let Some(bytes) = remote.get("logs/job_summary.json", storage).await? {
            write_file(log_dir, "job_summary.json", &bytes)?;
        }
    }
    write_file(&dir, RUNS_FILE, &lines(&runs)?)?;
    write_file(&dir, RECORDS_FILE, &lines(&entries)?)?;
    // A finished job with failed mini-batches keeps its parts for --rerun-failed.
    if !remote.list(STAGING_PARTS, storage).await?.is_empty() {
        let parts = crate::output::staging_dir(
            log_dir
                .parent()
                .ok_or_else(|| ledger_error("folder", "the log folder has no parent"))?,
        )
        .join("parts");
        std::fs::create_dir_all(&parts).map_err(|e| PrsError::io(&parts, e))?;
    }
    Ok(Restored {
        records,
        rewritten: true,
    })
}

/// For each run, the longer of the mirror's and the bucket's records (in run order), and the
/// runs of both; `None` when the mirror already holds everything. Also the number of records
/// taken from the bucket.
fn merge(
    local_runs: Vec<RunEntry>,
    local: Vec<LedgerEntry>,
    bucket_runs: Vec<RunEntry>,
    bucket: Vec<LedgerEntry>,
) -> Option<(Vec<RunEntry>, Vec<LedgerEntry>, usize)> {
    let by_run = |entries: Vec<LedgerEntry>| {
        let mut map: BTreeMap<u32, Vec<LedgerEntry>> = BTreeMap::new();
        for e in entries {
            map.entry(e.run).or_default().push(e);
        }
        map
    };
    let mut local = by_run(local);
    let bucket = by_run(bucket);
    let mut taken = 0;
    for (run, records) in bucket {
        let mine = local.entry(run).or_default();
        if records.len() > mine.len() {
            taken += records.len() - mine.len();
            *mine = records;
        }
    }
    let known: std::collections::HashSet<u32> = local_runs.iter().map(|r| r.run).collect();
    let mut runs: BTreeMap<u32, RunEntry> = BTreeMap::new();
    for r in bucket_runs {
        runs.insert(r.run, r);
    }
    for r in local_runs {
        runs.insert(r.run, r);
    }
    let new_runs = runs.keys().any(|r| !known.contains(r));
    if taken == 0 && !new_runs {
        return None;
    }
    let entries = local.into_values().flatten().collect();
    Some((runs.into_values().collect(), entries, taken))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], url: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        ledger_error(
            url,
            format!(
                "{e}. The bucket's ledger is damaged: run with --restart to start the job over"
            ),
        )
    })
}

fn lines<T: serde::Serialize>(values: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for v in values {
        serde_json::to_writer(&mut out, v).map_err(|e| ledger_error("records", e))?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Writes `dir/name` whole: a temporary name, synced, then renamed.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| PrsError::io(dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| PrsError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| PrsError::io(&tmp, e))?;
    file.sync_all().map_err(|e| PrsError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| PrsError::io(&path, e))?;
    super::sync_dir(dir);
    Ok(())
}

/// Downloads into `parts_dir` the committed parts the ledger in `log_dir` names that the
/// mirror lacks (or holds with another size). A part missing from the bucket too is left
/// out: the ledger's check finds it lost and its mini-batch runs again. Returns how many were
/// downloaded.
pub async fn fetch_parts(
    remote: &RemoteOutput,
    storage: &StorageContext,
    log_dir: &Path,
    parts_dir: &Path,
) -> Result<usize> {
    let entries = final_entries(read_entries(&super::ledger_dir(log_dir))?);
    let wanted: Vec<PartRef> = entries
        .into_values()
        .filter_map(|e| e.part)
        .filter(|p| std::fs::metadata(parts_dir.join(&p.file)).map_or(true, |m| m.len() != p.bytes))
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    std::fs::create_dir_all(parts_dir).map_err(|e| PrsError::io(parts_dir, e))?;
    let fetched: Vec<bool> = futures::stream::iter(wanted.iter())
        .map(|part| async move {
            let Some(bytes) = remote.get(&part_object(&part.file), storage).await? else {
                return Ok(false);
            };
            write_file(parts_dir, &part.file, &bytes)?;
            Ok::<_, PrsError>(true)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(fetched.into_iter().filter(|f| *f).count())
}

/// One ledger record for the bucket: its line, and the part it names (local path, file name).
#[derive(Debug)]
struct Replicated {
    line: Vec<u8>,
    part: Option<(PathBuf, String)>,
}

/// What [`BucketReplica`] stored.
#[derive(Debug, Default, Clone)]
pub struct ReplicaStats {
    /// Segments written.
    pub segments: u64,
    /// Records in them.
    pub records: u64,
    /// Parts uploaded.
    pub parts: u64,
    /// Records not stored because an upload failed (they stay in the mirror).
    pub dropped: u64,
    /// The first failure.
    pub error: Option<String>,
}

/// Hands records to a [`BucketReplica`] (cheap to clone; sending never waits).
#[derive(Debug, Clone)]
pub struct ReplicaSender {
    tx: mpsc::UnboundedSender<Replicated>,
    parts_dir: PathBuf,
}

impl ReplicaSender {
    /// Queues the record `line` (as written to `records.jsonl`, newline included) and its part.
    pub fn send(&self, line: Vec<u8>, part: Option<&PartRef>) {
        let part = part.map(|p| (self.parts_dir.join(&p.file), p.file.clone()));
        // A closed channel means the replica finished: nothing more goes up.
        let _ = self.tx.send(Replicated { line, part });
    }
}

/// Copies the run's ledger records and committed parts to the bucket in the background, in
/// groups: the parts of a group first (several at once), then one segment with its records.
/// After a failed upload (the store down past its retries) or a lost lease it stops: the
/// mirror still holds everything, and the bucket's ledger stays a consistent prefix.
#[derive(Debug)]
pub struct BucketReplica {
    sender: Option<ReplicaSender>,
    task: tokio::task::JoinHandle<ReplicaStats>,
}

impl BucketReplica {
    /// Starts replicating run `run` of the ledger in `ledger_dir` (whose committed parts are in
    /// `parts_dir`): the header and the run's entry go to the bucket first (in the background,
    /// like the rest).
    pub fn start(
        storage: Arc<StorageContext>,
        ledger_dir: &Path,
        run: u32,
        parts_dir: PathBuf,
    ) -> Result<Self> {
        let remote = storage
            .remote_output()
            .ok_or_else(|| ledger_error("bucket", "the output is not on object storage"))?
            .clone();
        let header = std::fs::read(ledger_dir.join(HEADER_FILE))
            .map_err(|e| PrsError::io(ledger_dir.join(HEADER_FILE), e))?;
        let entry = read_runs(ledger_dir)?
            .into_iter()
            .find(|r| r.run == run)
            .ok_or_else(|| ledger_error(RUNS_FILE, format!("run {run} is not recorded")))?;
        let entry = serde_json::to_vec(&entry).map_err(|e| ledger_error(RUNS_FILE, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let started = start_run(&remote, &storage, run, header, entry).await;
            replicate(remote, storage, run, started.err(), rx).await
        });
        Ok(BucketReplica {
            sender: Some(ReplicaSender { tx, parts_dir }),
            task,
        })
    }

    /// Where the ledger sink sends its records.
    pub fn sender(&self) -> Option<ReplicaSender> {
        self.sender.clone()
    }

    /// Stops at once, dropping what is still queued: for a run that ran every mini-batch
    /// successfully and commits its output next, after which the bucket's parts are removed
    /// anyway (should the commit fail, the records not stored run again on resume).
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Waits for everything queued to be stored (call after the last record was sent and
    /// every other sender was dropped).
    pub async fn finish(mut self) -> ReplicaStats {
        self.sender = None;
        match (&mut self.task).await {
            Ok(stats) => stats,
            Err(e) => ReplicaStats {
                error: Some(format!("the bucket replica stopped: {e}")),
                ..ReplicaStats::default()
            },
        }
    }
}

/// Writes the header and the run's entry (create-if-absent: a run number is used once).
async fn start_run(
    remote: &RemoteOutput,
    storage: &StorageContext,
    run: u32,
    header: Vec<u8>,
    entry: Vec<u8>,
) -> Result<()> {
    remote
        .put(&header_object(), header.into(), PutMode::Overwrite, storage)
        .await?;
    remote
        .put(&run_object(run), entry.into(), PutMode::Create, storage)
        .await
        .map_err(|e| {
            PrsError::config(
                "output",
                remote.url(),
                format!(
                    "its bucket's ledger already has a run {run} ({e}): the mirror's ledger and \
                     the bucket's disagree; run with --restart to start the job over"
                ),
            )
        })
}

async fn replicate(
    remote: RemoteOutput,
    storage: Arc<StorageContext>,
    run: u32,
    failed_start: Option<PrsError>,
    mut rx: mpsc::UnboundedReceiver<Replicated>,
) -> ReplicaStats {
    let mut stats = ReplicaStats {
        error: failed_start.map(|e| e.to_string()),
        ..ReplicaStats::default()
    };
    let mut seq = 0u64;
    while let Some(first) = rx.recv().await {
        // Group commit: everything queued while the last group was uploading.
        let mut group = vec![first];
        while group.len() < SEGMENT_RECORDS {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if stats.error.is_none() {
            if let Some(why) = storage.with_lease(OutputLease::lost).flatten() {
                stats.error = Some(why);
            }
        }
        if stats.error.is_some() {
            stats.dropped += group.len() as u64;
            continue;
        }
        match store_group(&remote, &storage, run, seq, &group).await {
            Ok(parts) => {
                seq += 1;
                stats.segments += 1;
                stats.records += group.len() as u64;
                stats.parts += parts;
            }
            Err(e) => {
                tracing::warn!(
                    "copying the ledger to {} stopped: {e}; the local mirror keeps everything",
                    remote.url()
                );
                stats.error = Some(e.to_string());
                stats.dropped += group.len() as u64;
            }
        }
    }
    stats
}

async fn store_group(
    remote: &RemoteOutput,
    storage: &StorageContext,
    run: u32,
    seq: u64,
    group: &[Replicated],
) -> Result<u64> {
    let uploads: Vec<_> = group
        .iter()
        .filter_map(|r| r.part.as_ref())
        .map(|(path, file)| upload_part(remote, storage, path, file))
        .collect();
    let parts = uploads.len() as u64;
    futures::stream::iter(uploads)
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let segment: Vec<u8> = group.iter().flat_map(|r| r.line.iter().copied()).collect();
    remote
        .put(
            &segment_object(run, seq),
            segment.into(),
            PutMode::Create,
            storage,
        )
        .await?;
    Ok(parts)
}

async fn upload_part(
    remote: &RemoteOutput,
    storage: &StorageContext,
    path: &Path,
    file: &str,
) -> Result<()> {
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| PrsError::io(path, e))?;
    remote
        .put(&part_object(file), data.into(), PutMode::Overwrite, storage)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Lineage, MiniBatchId, MiniBatchRecord, MiniBatchStatus};

    fn entry(run: u32, id: u64) -> LedgerEntry {
        let record = MiniBatchRecord {
            id: MiniBatchId::new(0, id),
            index: id,
            lineage: Lineage {
                input: Arc::from("rows"),
                rows: id * 10..id * 10 + 10,
            },
            partition_key_value: Default::default(),
            tries: 1,
            process: "process000".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            total_items: 10,
            succeeded_items: 10,
            failed_items: 0,
            elapsed_seconds: 0.0,
            run_seconds: 0.0,
            status: MiniBatchStatus::Succeeded,
            error_message: String::new(),
            traceback: None,
            earlier_errors: Vec::new(),
            bisection_calls: 0,
            isolated: Vec::new(),
        };
        LedgerEntry {
            record,
            slice: format!("{id:016x}"),
            part: None,
            run,
            source: None,
        }
    }

    fn run(n: u32) -> RunEntry {
        RunEntry {
            run: n,
            mode: "run".into(),
            forced: false,
            started: std::time::SystemTime::UNIX_EPOCH,
            pid: n,
        }
    }

    #[test]
    fn a_mirror_holding_everything_is_left_alone() {
        let local = vec![entry(1, 0), entry(1, 1)];
        // The bucket lags one record behind.
        assert!(merge(
            vec![run(1)],
            local.clone(),
            vec![run(1)],
            local[..1].to_vec()
        )
        .is_none());
    }

    #[test]
    fn an_empty_mirror_takes_the_buckets_ledger() {
        let bucket = vec![entry(1, 0), entry(1, 1), entry(2, 2)];
        let (runs, entries, taken) =
            merge(vec![], vec![], vec![run(2), run(1)], bucket.clone()).unwrap();
        assert_eq!(entries, bucket);
        assert_eq!(taken, 3);
        assert_eq!(runs.iter().map(|r| r.run).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn each_run_keeps_the_longer_list_in_run_order() {
        // Run 1 went further here than in the bucket; run 2 ran on another machine.
        let local = vec![entry(1, 0), entry(1, 1), entry(1, 2)];
        let bucket = vec![entry(1, 0), entry(2, 3), entry(2, 4)];
        let (runs, entries, taken) =
            merge(vec![run(1)], local, vec![run(1), run(2)], bucket).unwrap();
        let ids: Vec<u64> = entries.iter().map(|e| e.record.index).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(taken, 2);
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn a_run_only_the_bucket_knows_is_taken_even_without_records() {
        let (runs, entries, taken) =
            merge(vec![run(1)], vec![], vec![run(1), run(2)], vec![]).unwrap();
        assert_eq!(runs.len(), 2);
        assert!(entries.is_empty());
        assert_eq!(taken, 0);
    }
}
