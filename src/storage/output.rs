//! Outputs on object storage (`output: s3://bucket/run1/`).
//!
//! The job writes into a local mirror folder exactly as for a local output: logs, the report,
//! and the exactly-once staging of committed mini-batch parts. When the job commits, the final
//! append_row file is assembled locally and uploaded with a multipart upload, which makes the
//! object visible only when the upload completes; then the logs (and anything else the entry
//! script wrote into the output folder) are uploaded beside it. An aborted job uploads no final
//! object: its committed parts stay in the mirror's `.parallel_run/staging/`, and
//! `job_result.txt` says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::{PrsError, Result};
use crate::storage::named::NamedStore;
use crate::storage::{storage_error, ObjectLocation, StorageContext};

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
    fn object(&self, relative: &str) -> ObjectPath {
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
    /// or `logs/job_summary.json`) unless `overwrite`, which deletes them first (the final
    /// object and everything below `logs/`).
    pub async fn prepare(
        &self,
        final_name: &str,
        overwrite: bool,
        storage: &StorageContext,
    ) -> Result<()> {
        let fail = |operation: &str, object: &ObjectPath, e: &object_store::Error| {
            let url = self.location.url_of(object);
            storage_error(&self.location, operation, &url, e, storage.options())
        };
        let mut found = Vec::new();
        for relative in [final_name, "logs/job_summary.json"] {
            let object = self.object(relative);
            match self.store.head(&object).await {
                Ok(_) => found.push(self.location.url_of(&object)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(fail("HEAD", &object, &e)),
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        if !overwrite {
            return Err(PrsError::earlier_results(self.url(), &found));
        }
        let mut doomed = vec![self.object(final_name)];
        let logs = self.object("logs");
        let mut listing = self.store.list(Some(&logs));
        while let Some(meta) = listing.next().await {
            doomed.push(meta.map_err(|e| fail("LIST", &logs, &e))?.location);
        }
        for object in doomed {
            match self.store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(fail("DELETE", &object, &e)),
            }
        }
        Ok(())
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
