//! The shared store a cluster job commits through: every executor writes each finished
//! mini-batch's results (a *part*) and then its *record* into the output's staging area,
//! which every node and the driver see (a shared folder or an object-storage prefix).
//!
//! Layout, under `<output>/.parallel_run/staging/shared/`:
//! ```text
//! parts/<id>.<executor>.<task>.arrow   results of one try (Arrow IPC file), unique per try
//! records/<id>.json                    the commit: created if absent, names the part
//! manifest/<n>.arrow                   the driver's manifest segments, when too big for the plan
//! executors/<executor>.json            written when an executor's task starts (write check)
//! job.json                             the driver's: the scheduler and id of the cluster job
//! resume/skips.json                    a resumed keyed job: ids (and fingerprints) not run
//! ```
//! The same store copies an executor's worker logs straight into the output's log folder
//! (`<output>/logs/user/...`, outside the staging area: clearing the staging area leaves
//! them), see [`crate::exec::logs`].
//! A record is created with `PutMode::Create` after its part is complete, so the first try
//! to finish wins; a later try (a zombie of an executor declared lost) that loses the create
//! deletes its own part. A re-executed task lists `records/` first and does not run the
//! mini-batches that have one. The driver follows `records/` during the job and reads
//! exactly the part each record names, so a mini-batch reaches the output once whatever ran
//! twice.
//!
//! The staging area outlives a driver that crashes (its cluster job runs on, its records
//! stay): `job.json` tells the next run which cluster job wrote there, so that it can stop
//! that job if it still runs, and a `--resume` adopts the records it left (see
//! `cluster::submit`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::batch::MiniBatchRecord;
use crate::config::StorageOptions;
use crate::exec::stream::CompletedMiniBatch;

/// The object listing what a resumed keyed job skips (see
/// [`SharedStaging::write_resume_skips`]).
const RESUME_SKIPS: &str = "resume/skips.json";

/// Where the shared staging area is, relative to the output.
pub const SHARED_STAGING: &str = ".parallel_run/staging/shared";

/// Where a cluster job's shared staging area is: the driver puts it in the operator's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SharedLocation {
    /// The output is a folder every node sees under this absolute path.
    Folder(PathBuf),
    /// The output is on object storage: its URL and the storage options that are not
    /// secrets (each node takes secrets from its own environment; they never travel).
    Url {
        /// The output's URL (`s3://bucket/out`).
        url: String,
        /// `storage_options` without secret values (`${VAR}` references are expanded on
        /// each node).
        options: BTreeMap<String, String>,
    },
}

impl SharedLocation {
    /// The staging area of the output `url` on object storage, with `options` stripped of
    /// their secrets.
    pub fn url(url: &str, options: &StorageOptions) -> Self {
        SharedLocation::Url {
            url: url.trim_end_matches('/').to_string(),
            options: options.without_secrets(),
        }
    }

    /// The staging area as users see it (a folder path or a URL).
    pub fn shown(&self) -> String {
        match self {
            SharedLocation::Folder(path) => path.join(SHARED_STAGING).display().to_string(),
            SharedLocation::Url { url, .. } => format!("{url}/{SHARED_STAGING}"),
        }
    }
}

/// What went wrong with the shared staging area.
#[derive(Debug, thiserror::Error)]
pub enum SharedStoreError {
    /// An executor cannot write into the output's staging area when its first task starts.
    #[error(
        "executor {executor} cannot write into the job's shared staging area {location}: \
         {message}. A cluster job's output must be a folder every node sees under the same \
         path (a shared file system), or an object-storage URL every node can write to"
    )]
    NotWritable {
        /// The staging area.
        location: String,
        /// The executor (`HOST:PID`).
        executor: String,
        /// What failed.
        message: String,
    },
    /// Reading or writing an object of the staging area failed.
    #[error("{operation} {object} in the shared staging area {location} failed: {message}")]
    Object {
        /// What was done (`writing the part of mini batch 0-3`, `listing the records`).
        operation: String,
        /// The object's name relative to the staging area.
        object: String,
        /// The staging area.
        location: String,
        /// The store's message.
        message: String,
    },
    /// A record or part that cannot be read back (another parallel-run version wrote it,
    /// or it was changed by hand).
    #[error(
        "{object} in the shared staging area {location} is not readable: {message}; remove \
         the staging area and run the job again (or --resume it)"
    )]
    Unreadable {
        /// The object's name relative to the staging area.
        object: String,
        /// The staging area.
        location: String,
        /// Why.
        message: String,
    },
}

/// The record object of one mini-batch: what the driver commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedRecord {
    /// The mini-batch's record (status, tries, timings, `process` naming the executor).
    pub record: MiniBatchRecord,
    /// Its dispatch index.
    pub index: u64,
    /// Its slice's fingerprint.
    pub fingerprint: u64,
    /// Elements run() returned.
    pub returned: u64,
    /// The part holding its results (relative to `parts/`), when it has results.
    pub part: Option<String>,
    /// The executor that committed it (`HOST:PID`).
    pub executor: String,
    /// The task attempt that ran it (Ballista's task id).
    pub task: String,
}

impl SharedRecord {
    /// The id of the cluster job whose task wrote the record (Ballista's task identity is
    /// `TID <job>/<stage>.<attempt>/<task>.<attempt>`); `None` when `task` is not one.
    pub fn job(&self) -> Option<&str> {
        let rest = self.task.strip_prefix("TID ")?;
        let (job, _) = rest.split_once('/')?;
        (!job.is_empty()).then_some(job)
    }
}

/// The driver's note of the cluster job committing into a staging area (`job.json`),
/// written when the job is submitted: a later run of the output reads it to stop that job
/// if it still runs (its driver crashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMarker {
    /// The scheduler's `HOST:PORT`.
    pub scheduler: String,
    /// The cluster job's id on that scheduler.
    pub job_id: String,
    /// The driver process (`HOST:PID`).
    pub driver: String,
}

/// The driver's job marker, relative to the staging area.
const JOB_MARKER: &str = "job.json";

/// How a try's commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Its record is the mini-batch's.
    Won,
    /// Another try had recorded the mini-batch first: this try's part was removed.
    Lost,
}

/// The shared staging area of one job, opened in the process that uses it.
pub struct SharedStaging {
    store: Arc<dyn ObjectStore>,
    /// The staging area in `store`.
    prefix: ObjectPath,
    /// The output (folder or URL prefix) in `store`.
    output: ObjectPath,
    shown: String,
}

/// Files larger than this are copied to the output in parts (bounded memory).
const UPLOAD_PART: usize = 8 << 20;

impl std::fmt::Debug for SharedStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStaging")
            .field("location", &self.shown)
            .finish()
    }
}

impl SharedStaging {
    /// Opens the staging area at `location` (`executor` names this process in errors). A
    /// folder is created when missing.
    pub fn open(location: &SharedLocation, executor: &str) -> Result<Self, SharedStoreError> {
        Self::open_with(location, executor, None)
    }

    /// Opens the staging area at `location` in the driver, whose `options` are the job's
    /// `storage_options` with their secrets (a location carries none: each executor takes
    /// them from its own environment, the driver may have them in the job).
    pub fn open_for_driver(
        location: &SharedLocation,
        options: &StorageOptions,
    ) -> Result<Self, SharedStoreError> {
        Self::open_with(location, "(driver)", Some(options))
    }

    fn open_with(
        location: &SharedLocation,
        executor: &str,
        full: Option<&StorageOptions>,
    ) -> Result<Self, SharedStoreError> {
        let shown = location.shown();
        let not_writable = |message: String| SharedStoreError::NotWritable {
            location: shown.clone(),
            executor: executor.to_string(),
            message,
        };
        match location {
            SharedLocation::Folder(path) => {
                let folder = path.join(SHARED_STAGING);
                std::fs::create_dir_all(&folder).map_err(|e| not_writable(e.to_string()))?;
                // Rooted at the output: the worker logs go beside the staging area.
                let store = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| not_writable(e.to_string()))?;
                Ok(SharedStaging {
                    store: Arc::new(store),
                    prefix: ObjectPath::from(SHARED_STAGING),
                    output: ObjectPath::default(),
                    shown,
                })
            }
            SharedLocation::Url { url, options } => {
                let parsed = crate::storage::ObjectLocation::parse("output", url)
                    .map_err(|e| not_writable(e.to_string()))?;
                let options = match full {
                    Some(full) => full.clone(),
                    None => StorageOptions::from_entries(options.clone()),
                };
                let store = crate::storage::build_store(&parsed, &options)
                    .map_err(|e| not_writable(e.to_string()))?;
                let prefix = parsed
                    .prefix
                    .parts()
                    .chain(ObjectPath::from(SHARED_STAGING).parts())
                    .collect();
                Ok(SharedStaging {
                    store,
                    prefix,
                    output: parsed.prefix.clone(),
                    shown,
                })
            }
        }
    }

    /// The staging area as users see it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn object(&self, relative: &str) -> ObjectPath {
        self.prefix
            .parts()
            .chain(ObjectPath::from(relative).parts())
            .collect()
    }

    fn failed(
        &self,
        operation: impl Into<String>,
        object: &str,
        e: impl ToString,
    ) -> SharedStoreError {
        SharedStoreError::Object {
            operation: operation.into(),
            object: object.to_string(),
            location: self.shown.clone(),
            message: e.to_string(),
        }
    }

    /// Checks that `executor` can write here (an object naming it), when its first task
    /// starts: a folder that is not shared, or not writable, fails the task naming both.
    pub async fn check_writable(&self, executor: &str) -> Result<(), SharedStoreError> {
        let name = format!("executors/{}.json", object_name(executor));
        let body = serde_json::json!({ "executor": executor }).to_string();
        self.store
            .put(&self.object(&name), PutPayload::from(body.into_bytes()))
            .await
            .map(|_| ())
            .map_err(|e| SharedStoreError::NotWritable {
                location: self.shown.clone(),
                executor: executor.to_string(),
                message: e.to_string(),
            })
    }

    /// The ids (text) of the mini-batches that have a record.
    pub async fn recorded(&self) -> Result<HashSet<String>, SharedStoreError> {
        Ok(self
            .record_names()
            .await?
            .into_iter()
            .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
            .collect())
    }

    /// The names of the record objects (`<id>.json`).
    pub async fn record_names(&self) -> Result<Vec<String>, SharedStoreError> {
        let prefix = self.object("records");
        let listed: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.failed("listing", "records/", e))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_string))
            .collect())
    }

    /// Commits one finished mini-batch of `executor`'s task `task`: its results as a part
    /// unique to this try, then its record, created only if the mini-batch has none yet.
    pub async fn commit(
        &self,
        done: &CompletedMiniBatch,
        executor: &str,
        task: &str,
    ) -> Result<Commit, SharedStoreError> {
        let id = done.id.to_string();
        let part = match &done.result {
            Some(batch) => {
                let name = format!("{id}.{}.{}.arrow", object_name(executor), object_name(task));
                let bytes = ipc_file(batch).map_err(|e| {
                    self.failed(
                        format!("encoding the results of mini batch {id} for"),
                        &name,
                        e,
                    )
                })?;
                let object = format!("parts/{name}");
                self.store
                    .put(&self.object(&object), PutPayload::from(bytes))
                    .await
                    .map_err(|e| {
                        self.failed(
                            format!("writing the part of mini batch {id} to"),
                            &object,
                            e,
                        )
                    })?;
                Some(name)
            }
            None => None,
        };
        let record = SharedRecord {
            record: done.record.clone(),
            index: done.index,
            fingerprint: done.fingerprint,
            returned: done.returned,
            part: part.clone(),
            executor: executor.to_string(),
            task: task.to_string(),
        };
        let object = format!("records/{id}.json");
        let body = serde_json::to_vec(&record).map_err(|e| {
            self.failed(
                format!("encoding the record of mini batch {id} for"),
                &object,
                e,
            )
        })?;
        let created = self
            .store
            .put_opts(
                &self.object(&object),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match created {
            Ok(_) => Ok(Commit::Won),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Another try committed this mini-batch first: this try's part is garbage.
                if let Some(name) = part {
                    let object = format!("parts/{name}");
                    if let Err(e) = self.store.delete(&self.object(&object)).await {
                        tracing::warn!("{}", self.failed("removing the losing part", &object, e));
                    }
                }
                Ok(Commit::Lost)
            }
            Err(e) => Err(self.failed(
                format!("writing the record of mini batch {id} to"),
                &object,
                e,
            )),
        }
    }

    /// Writes what a resumed keyed job skips (mini-batch id text -> slice fingerprint, from
    /// the driver's ledger), for its executors: they find those mini-batches again when
    /// they cut their partitions, check their slices and do not run them.
    pub async fn write_resume_skips(
        &self,
        skips: &BTreeMap<String, u64>,
    ) -> Result<(), SharedStoreError> {
        let body =
            serde_json::to_vec(skips).map_err(|e| self.failed("encoding", RESUME_SKIPS, e))?;
        self.store
            .put(&self.object(RESUME_SKIPS), PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("writing", RESUME_SKIPS, e))
    }

    /// What a resumed keyed job skips ([`SharedStaging::write_resume_skips`]); empty when
    /// the driver wrote nothing (not a resumed job).
    pub async fn resume_skips(&self) -> Result<BTreeMap<String, u64>, SharedStoreError> {
        let bytes = match self.store.get(&self.object(RESUME_SKIPS)).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| self.failed("reading", RESUME_SKIPS, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.failed("reading", RESUME_SKIPS, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| SharedStoreError::Unreadable {
            object: RESUME_SKIPS.to_string(),
            location: self.shown.clone(),
            message: e.to_string(),
        })
    }

    /// The bytes of `object` (relative to the staging area).
    async fn read_bytes(&self, object: &str) -> Result<bytes::Bytes, SharedStoreError> {
        self.store
            .get(&self.object(object))
            .await
            .map_err(|e| self.failed("reading", object, e))?
            .bytes()
            .await
            .map_err(|e| self.failed("reading", object, e))
    }

    /// The record object `name` (`<id>.json`).
    pub async fn read_record(&self, name: &str) -> Result<SharedRecord, SharedStoreError> {
        let object = format!("records/{name}");
        let bytes = self.read_bytes(&object).await?;
        serde_json::from_slice(&bytes).map_err(|e| SharedStoreError::Unreadable {
            object,
            location: self.shown.clone(),
            message: e.to_string(),
        })
    }

    /// The results in part `name`.
    pub async fn read_part(&self, name: &str) -> Result<RecordBatch, SharedStoreError> {
        let object = format!("parts/{name}");
        let bytes = self.read_bytes(&object).await?;
        batch_from_ipc_file(&bytes).map_err(|message| SharedStoreError::Unreadable {
            object,
            location: self.shown.clone(),
            message,
        })
    }

    /// Copies the first `len` bytes of the local file `local` to `relative` below the output
    /// (`logs/user/stdout/<node>/...`), replacing the copy there. The copy appears whole (a
    /// put, or a multipart upload completed at the end for a file of more than
    /// [`UPLOAD_PART`] bytes, read in parts).
    pub async fn copy_to_output(
        &self,
        local: &std::path::Path,
        len: u64,
        relative: &str,
    ) -> Result<(), SharedStoreError> {
        use tokio::io::AsyncReadExt;
        let object: ObjectPath = self
            .output
            .parts()
            .chain(ObjectPath::from(relative).parts())
            .collect();
        let shown = format!("{} (the output's {relative})", local.display());
        let failed = |e: &dyn std::fmt::Display| SharedStoreError::Object {
            operation: "copying".to_string(),
            object: shown.clone(),
            location: self.shown.clone(),
            message: e.to_string(),
        };
        let file = tokio::fs::File::open(local).await.map_err(|e| failed(&e))?;
        let mut file = file.take(len);
        if len <= UPLOAD_PART as u64 {
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(UPLOAD_PART));
            file.read_to_end(&mut bytes).await.map_err(|e| failed(&e))?;
            self.store
                .put(&object, PutPayload::from(bytes))
                .await
                .map_err(|e| failed(&e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&object)
            .await
            .map_err(|e| failed(&e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART);
        let copied = async {
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer).await.map_err(|e| failed(&e))?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(2).await.map_err(|e| failed(&e))?;
                writer.write(&buffer[..n]);
            }
        }
        .await;
        match copied {
            Ok(()) => writer.finish().await.map(|_| ()).map_err(|e| failed(&e)),
            Err(e) => {
                // Leave nothing half-uploaded behind (best effort).
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Writes segment `name` of a job's manifest (`manifest/<name>`): the driver puts a
    /// manifest too big for the plan here.
    pub async fn write_manifest_segment(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), SharedStoreError> {
        let object = format!("manifest/{name}");
        self.store
            .put(&self.object(&object), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("writing", &object, e))
    }

    /// The bytes of manifest segment `name`.
    pub async fn read_manifest_segment(
        &self,
        name: &str,
    ) -> Result<bytes::Bytes, SharedStoreError> {
        self.read_bytes(&format!("manifest/{name}")).await
    }

    /// Notes the cluster job that commits here (replacing an earlier note).
    pub async fn write_marker(&self, marker: &JobMarker) -> Result<(), SharedStoreError> {
        let body = serde_json::to_vec(marker)
            .map_err(|e| self.failed("encoding the job marker for", JOB_MARKER, e))?;
        self.store
            .put(&self.object(JOB_MARKER), PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("writing", JOB_MARKER, e))
    }

    /// The cluster job an earlier driver noted here, if any.
    pub async fn read_marker(&self) -> Result<Option<JobMarker>, SharedStoreError> {
        let bytes = match self.store.get(&self.object(JOB_MARKER)).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| self.failed("reading", JOB_MARKER, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed("reading", JOB_MARKER, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SharedStoreError::Unreadable {
                object: JOB_MARKER.to_string(),
                location: self.shown.clone(),
                message: e.to_string(),
            })
    }

    /// Removes every object of the staging area; returns how many.
    pub async fn clear(&self) -> Result<usize, SharedStoreError> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.failed("listing", "", e))?;
        for meta in &listed {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed("removing", meta.location.as_ref(), e)),
            }
        }
        Ok(listed.len())
    }
}

/// `text` as one safe object-name segment (`HOST:PID` -> `HOST-PID`).
fn object_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `batch` as an Arrow IPC file.
fn ipc_file(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = FileWriter::try_new(Vec::new(), batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    writer.into_inner()
}

/// The rows of an Arrow IPC file (one batch).
fn batch_from_ipc_file(bytes: &[u8]) -> Result<RecordBatch, String> {
    let reader =
        FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match batches.len() {
        1 => batches
            .into_iter()
            .next()
            .ok_or_else(|| "no batch".to_string()),
        _ => arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Lineage, MiniBatchId, MiniBatchStatus, PartitionKeyValue};
    use arrow::array::{ArrayRef, Int64Array};

    fn done(seq: u64, process: &str) -> CompletedMiniBatch {
        let data = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(0..3)) as ArrayRef,
        )])
        .unwrap();
        let id = MiniBatchId::new(0, seq);
        let lineage = Lineage {
            input: Arc::from("t"),
            rows: 0..3,
        };
        CompletedMiniBatch {
            id,
            index: seq,
            lineage: lineage.clone(),
            result: Some(data),
            returned: 3,
            record: MiniBatchRecord {
                id,
                index: seq,
                lineage,
                partition_key_value: PartitionKeyValue::default(),
                tries: 1,
                process: process.into(),
                start_time: std::time::SystemTime::UNIX_EPOCH,
                total_items: 3,
                succeeded_items: 3,
                failed_items: 0,
                elapsed_seconds: 0.1,
                run_seconds: 0.1,
                status: MiniBatchStatus::Succeeded,
                error_message: String::new(),
                traceback: None,
                earlier_errors: Vec::new(),
                bisection_calls: 0,
                isolated: Vec::new(),
            },
            fingerprint: 7,
            source: None,
            failed_input: None,
        }
    }

    #[tokio::test]
    async fn the_first_record_wins_and_a_losing_try_removes_its_part() {
        let dir = tempfile::tempdir().unwrap();
        let location = SharedLocation::Folder(dir.path().to_path_buf());
        let a = SharedStaging::open(&location, "host:1").unwrap();
        let b = SharedStaging::open(&location, "host:2").unwrap();
        a.check_writable("host:1").await.unwrap();
        assert!(a.recorded().await.unwrap().is_empty());

        assert_eq!(
            a.commit(&done(4, "A"), "host:1", "TID j/1.0/0.0")
                .await
                .unwrap(),
            Commit::Won
        );
        // A zombie try of another executor finishes later: it loses and leaves no part.
        assert_eq!(
            b.commit(&done(4, "B"), "host:2", "TID j/1.0/0.1")
                .await
                .unwrap(),
            Commit::Lost
        );
        let parts: Vec<_> = std::fs::read_dir(dir.path().join(SHARED_STAGING).join("parts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(parts, vec!["0-4.host-1.TID-j-1-0-0-0.arrow".to_string()]);

        assert_eq!(
            b.recorded().await.unwrap(),
            HashSet::from(["0-4".to_string()])
        );
        let record = b.read_record("0-4.json").await.unwrap();
        assert_eq!(
            (record.record.process.as_str(), record.executor.as_str()),
            ("A", "host:1")
        );
        let rows = b.read_part(record.part.as_deref().unwrap()).await.unwrap();
        assert_eq!(Some(&rows), done(4, "A").result.as_ref());

        assert!(a.clear().await.unwrap() >= 3);
        assert!(a.recorded().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_job_marker_round_trips_and_a_record_names_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let location = SharedLocation::Folder(dir.path().to_path_buf());
        let staging = SharedStaging::open(&location, "host:1").unwrap();
        assert_eq!(staging.read_marker().await.unwrap(), None);
        let marker = JobMarker {
            scheduler: "h:50050".into(),
            job_id: "abc1234".into(),
            driver: "h:9".into(),
        };
        staging.write_marker(&marker).await.unwrap();
        assert_eq!(staging.read_marker().await.unwrap(), Some(marker));
        // The marker is not a record; clearing removes it.
        assert!(staging.recorded().await.unwrap().is_empty());
        staging.clear().await.unwrap();
        assert_eq!(staging.read_marker().await.unwrap(), None);

        staging
            .commit(&done(1, "A"), "host:1", "TID abc1234/1.0/3.0")
            .await
            .unwrap();
        let record = staging.read_record("0-1.json").await.unwrap();
        assert_eq!(record.job(), Some("abc1234"));
        for task in ["partition 0 of 42", "TID /1.0/0.0", "TID abc"] {
            let record = SharedRecord {
                task: task.into(),
                ..record.clone()
            };
            assert_eq!(record.job(), None, "{task}");
        }
    }

    #[tokio::test]
    async fn an_unwritable_folder_names_the_path_and_the_executor() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the output folder should be.
        let file = dir.path().join("out");
        std::fs::write(&file, "x").unwrap();
        let e = SharedStaging::open(&SharedLocation::Folder(file.clone()), "node7:42").unwrap_err();
        let text = e.to_string();
        let path = file.display().to_string();
        for part in [path.as_str(), "node7:42", "every node sees"] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }

    #[test]
    fn secrets_do_not_travel_with_a_url_location() {
        let options = StorageOptions::from_entries(BTreeMap::from([
            ("aws_region".to_string(), "eu-west-1".to_string()),
            ("aws_secret_access_key".to_string(), "hunter2".to_string()),
        ]));
        let location = SharedLocation::url("s3://bucket/out/", &options);
        let text = serde_json::to_string(&location).unwrap();
        assert!(text.contains("eu-west-1"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            location.shown(),
            "s3://bucket/out/.parallel_run/staging/shared"
        );
    }
}
