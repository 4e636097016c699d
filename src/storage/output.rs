//! Outputs on object storage (`output: s3://bucket/run1/`).
//!
//! The job writes into a local mirror folder exactly as for a local output: logs, the report,
//! and the exactly-once staging of committed mini-batch parts. As mini-batches commit, their
//! parts and ledger records are also copied to the bucket in the background
//! (the ledger module's `bucket`: `.parallel_run/staging/parts/` and `logs/ledger/`), so a lost
//! machine loses nothing committed and `--resume` on another machine continues from the
//! bucket; one run at a time holds the output through its lease object
//! ([`crate::storage::lease`]). When the job commits, the final append_row file is assembled
//! locally and uploaded with a multipart upload, which makes the object visible only when the
//! upload completes; then the logs (and anything else the entry script wrote into the output
//! folder) are uploaded beside it, and the bucket's parts are removed unless some mini-batch
//! failed. An aborted job uploads no final object: its committed parts stay in the mirror's
//! `.parallel_run/staging/` and in the bucket, and `job_result.txt` says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::{PrsError, Result};
use crate::storage::lease::{LeaseError, OutputLease, LEASE_OBJECT};
use crate::storage::named::NamedStore;
use crate::storage::{storage_error, ObjectLocation, StorageContext};

/// The ledger's folder in the bucket (written by the ledger module's `bucket`).
pub const LEDGER_PREFIX: &str = "logs/ledger";
/// The committed parts in the bucket.
pub const STAGING_PARTS: &str = ".parallel_run/staging/parts";

/// What [`RemoteOutput::prepare`] clears before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepare {
    /// A new run: an earlier run's results are refused.
    Fresh,
    /// A new run replacing everything an earlier one left (`--overwrite`, `--restart`).
    Overwrite,
    /// A resumed run: its ledger and staging stay.
    Resume,
}

/// Size of one uploaded part (S3 needs at least 5 MiB for all parts but the last).
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once.
const PART_CONCURRENCY: usize = 4;

/// An output folder on object storage with its local mirror.
#[derive(Debug, Clone)]
pub struct RemoteOutput {
    location: ObjectLocation,
    store: Arc<NamedStore>,
    local_dir: PathBuf,
}

impl RemoteOutput {
    /// The output at `url`; the local mirror is `storage_options.local_dir`, or a folder under
    /// the system's temporary folder named after the URL.
    pub fn new(url: &str, storage: &StorageContext) -> Result<Self> {
        let location = ObjectLocation::parse("output", url)?;
        if location.glob.is_some() {
            return Err(PrsError::config(
                "output",
                url,
                "must be a folder URL, e.g. s3://bucket/run1/, without glob characters",
            ));
        }
        let store = storage.store(&location)?;
        let local_dir = storage
            .options()
            .local_dir()
            .unwrap_or_else(|| default_local_dir(url));
        Ok(RemoteOutput {
            location,
            store,
            local_dir,
        })
    }

    /// The local mirror folder the job writes into.
    pub fn local_dir(&self) -> &Path {
        &self.local_dir
    }

    /// The output URL as written.
    pub fn url(&self) -> &str {
        &self.location.text
    }

    /// The object path of `relative` (a `/`-separated path) below the output prefix.
    pub fn object(&self, relative: &str) -> ObjectPath {
        let mut parts: Vec<String> = self
            .location
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        parts.extend(
            relative
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        ObjectPath::from_iter(parts)
    }

    /// The URL of `object` (a full object path).
    pub fn location_url(&self, object: &ObjectPath) -> String {
        self.location.url_of(object)
    }

    /// The URL of `relative` below the output.
    pub fn url_of(&self, relative: &str) -> String {
        self.location.url_of(&self.object(relative))
    }

    /// Checks before the job starts that the bucket or container exists and that the
    /// credentials can list the output prefix.
    pub async fn check(&self, storage: &StorageContext) -> Result<()> {
        let prefix = (!self.location.prefix.as_ref().is_empty()).then_some(&self.location.prefix);
        self.store
            .list_with_delimiter(prefix)
            .await
            .map(|_| ())
            .map_err(|e| {
                let object = format!("{}/", self.url_of("").trim_end_matches('/'));
                storage_error(&self.location, "LIST", &object, &e, storage.options())
            })
    }

    /// Refuses an output prefix holding an earlier run's results (the final object `final_name`
    /// or `logs/job_summary.json`) unless `how` replaces them, and clears what `how` says:
    /// [`Prepare::Overwrite`] deletes the final object, everything below `logs/` (the bucket's
    /// ledger too) and the bucket's staging ([`STAGING_PARTS`]); [`Prepare::Resume`] deletes
    /// the final object and `logs/` but keeps `logs/ledger/` and the staging, which the
    /// resumed run continues.
    pub async fn prepare(
        &self,
        final_name: &str,
        how: Prepare,
        storage: &StorageContext,
    ) -> Result<()> {
        let mut found = Vec::new();
        for relative in [final_name, "logs/job_summary.json"] {
            if self.head(relative, storage).await?.is_some() {
                found.push(self.url_of(relative));
            }
        }
        if !found.is_empty() && how == Prepare::Fresh {
            return Err(PrsError::earlier_results(self.url(), &found));
        }
        if how == Prepare::Fresh {
            return Ok(());
        }
        let mut doomed = vec![self.object(final_name)];
        let ledger = self.object(LEDGER_PREFIX);
        for meta in self.list("logs", storage).await? {
            let keep = how == Prepare::Resume && meta.location.prefix_matches(&ledger);
            if !keep {
                doomed.push(meta.location);
            }
        }
        if how == Prepare::Overwrite {
            doomed.extend(
                self.list(STAGING_PARTS, storage)
                    .await?
                    .into_iter()
                    .map(|m| m.location),
            );
        }
        for object in doomed {
            self.delete_object(&object, storage).await?;
        }
        Ok(())
    }

    /// Takes the output's lease ([`LEASE_OBJECT`]): refused while another live run holds it.
    pub async fn acquire_lease(&self, storage: &StorageContext) -> Result<OutputLease> {
        let object = self.object(LEASE_OBJECT);
        let url = self.location.url_of(&object);
        let store: Arc<dyn ObjectStore> = self.store.clone();
        OutputLease::acquire(store, object.clone())
            .await
            .map_err(|e| match e {
                LeaseError::Held { holder, ttl_secs } => PrsError::OutputLeased {
                    output: self.url().to_string(),
                    holder,
                    advice: format!(
                        "wait for it to finish, or write another output. If that run is gone \
                         (killed on another machine, or its machine lost), its lease {url} goes \
                         stale {ttl_secs} s after its last renewal and the next run takes it \
                         over (a run on the same machine takes it over at once); to take it \
                         over now, delete that object and run again (with --resume to continue \
                         the job)"
                    ),
                },
                LeaseError::Store { operation, source } => {
                    storage_error(&self.location, operation, &url, &source, storage.options())
                }
                other => PrsError::config("output", self.url(), format!("its lease {url} {other}")),
            })
    }

    /// The store of the output.
    pub fn store(&self) -> &Arc<NamedStore> {
        &self.store
    }

    /// The metadata of `relative`, `None` when there is no such object.
    pub async fn head(
        &self,
        relative: &str,
        storage: &StorageContext,
    ) -> Result<Option<ObjectMeta>> {
        let object = self.object(relative);
        match self.store.head(&object).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("HEAD", &object, &e, storage)),
        }
    }

    /// The content of `relative`, `None` when there is no such object.
    pub async fn get(&self, relative: &str, storage: &StorageContext) -> Result<Option<Bytes>> {
        self.get_object(&self.object(relative), storage).await
    }

    /// The content of `object`, `None` when there is no such object.
    pub async fn get_object(
        &self,
        object: &ObjectPath,
        storage: &StorageContext,
    ) -> Result<Option<Bytes>> {
        let got = match self.store.get(object).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.fail("GET", object, &e, storage)),
        };
        match got.bytes().await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) => Err(self.fail("GET", object, &e, storage)),
        }
    }

    /// Writes `data` as `relative` with `mode` (an immutable object: [`PutMode::Create`]).
    pub async fn put(
        &self,
        relative: &str,
        data: Bytes,
        mode: PutMode,
        storage: &StorageContext,
    ) -> Result<()> {
        let object = self.object(relative);
        self.store
            .put_opts(&object, PutPayload::from(data), PutOptions::from(mode))
            .await
            .map(|_| ())
            .map_err(|e| self.fail("PUT", &object, &e, storage))
    }

    /// Every object below `relative` (a folder).
    pub async fn list(&self, relative: &str, storage: &StorageContext) -> Result<Vec<ObjectMeta>> {
        let prefix = self.object(relative);
        let mut listing = self.store.list(Some(&prefix));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            found.push(meta.map_err(|e| self.fail("LIST", &prefix, &e, storage))?);
        }
        Ok(found)
    }

    /// Deletes `object` (gone already is fine).
    pub async fn delete_object(&self, object: &ObjectPath, storage: &StorageContext) -> Result<()> {
        match self.store.delete(object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("DELETE", object, &e, storage)),
        }
    }

    /// Deletes every object below `relative` (a folder) with the store's bulk delete.
    /// Returns how many were deleted.
    pub async fn delete_prefix(&self, relative: &str, storage: &StorageContext) -> Result<usize> {
        let prefix = self.object(relative);
        let locations = self
            .store
            .list(Some(&prefix))
            .map(|meta| meta.map(|m| m.location))
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        let mut n = 0;
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.fail("DELETE", &prefix, &e, storage)),
            }
        }
        Ok(n)
    }

    /// The relative path of `object` below the output prefix (`None` when it is not below).
    pub fn relative(&self, object: &ObjectPath) -> Option<String> {
        let parts: Vec<String> = object
            .prefix_match(&self.location.prefix)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }

    fn fail(
        &self,
        operation: &str,
        object: &ObjectPath,
        e: &object_store::Error,
        storage: &StorageContext,
    ) -> PrsError {
        let url = self.location.url_of(object);
        storage_error(&self.location, operation, &url, e, storage.options())
    }

    /// Uploads the local file `local` as `name` below the output with a multipart upload: the
    /// object appears only when every part is stored and the upload completes. Returns the
    /// object's URL.
    pub async fn upload_final(
        &self,
        local: &Path,
        name: &str,
        storage: &StorageContext,
    ) -> Result<String> {
        let object = self.object(name);
        let url = self.location.url_of(&object);
        let fail = |operation: &str, e: &object_store::Error| {
            storage_error(&self.location, operation, &url, e, storage.options())
        };
        let upload = self
            .store
            .put_multipart(&object)
            .await
            .map_err(|e| fail("multipart upload (create)", &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let result = async {
            let mut file = tokio::fs::File::open(local)
                .await
                .map_err(|e| PrsError::io(local, e))?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buffer)
                    .await
                    .map_err(|e| PrsError::io(local, e))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(|e| fail("multipart upload (part)", &e))?;
                writer.write(&buffer[..n]);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| fail("multipart upload (complete)", &e))?;
                Ok(url)
            }
            Err(e) => {
                // Leave nothing half-uploaded behind (best effort).
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Uploads every file below the local mirror except the staging area (`.parallel_run/`)
    /// and `skip`, with single PUTs. Returns the number of files uploaded.
    pub async fn upload_tree(&self, skip: &[PathBuf], storage: &StorageContext) -> Result<usize> {
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(&self.local_dir).sort_by_file_name() {
            let entry = entry.map_err(|e| PrsError::Output {
                path: self.local_dir.display().to_string(),
                message: format!("listing the output folder failed: {e}"),
            })?;
            if !entry.file_type().is_file() || skip.iter().any(|s| s == entry.path()) {
                continue;
            }
            let Ok(relative) = entry.path().strip_prefix(&self.local_dir) else {
                continue;
            };
            let relative: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            // The engine's own work folder (`.parallel_run/`) and lock file
            // (`.parallel_run.lock`) are not results.
            if relative
                .first()
                .is_some_and(|c| c.starts_with(".parallel_run"))
            {
                continue;
            }
            files.push((entry.path().to_path_buf(), relative.join("/")));
        }
        for (path, relative) in &files {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| PrsError::io(path, e))?;
            let object = self.object(relative);
            self.store
                .put(&object, PutPayload::from(data))
                .await
                .map_err(|e| {
                    let url = self.location.url_of(&object);
                    storage_error(&self.location, "PUT", &url, &e, storage.options())
                })?;
        }
        Ok(files.len())
    }
}

/// `<temp>/parallel-run/output-<name>-<hash>`: a stable local mirror for an output URL.
pub fn default_local_dir(url: &str) -> PathBuf {
    let digest = Sha256::digest(url.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let readable: String = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    std::env::temp_dir()
        .join("parallel-run")
        .join(format!("output-{}-{hash}", readable.trim_matches('-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mirror_is_stable_and_readable() {
        let a = default_local_dir("s3://bucket/run1/");
        assert_eq!(a, default_local_dir("s3://bucket/run1/"));
        assert_ne!(a, default_local_dir("s3://bucket/run2/"));
        let name = a.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("output-bucket-run1-"), "{name}");
    }
}
