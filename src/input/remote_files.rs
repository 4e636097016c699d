//! File datasets on object storage: a [`FileSource`] of a
//! [`FileListingTable`](crate::input::FileListingTable) whose `path` is a LOCAL file,
//! downloaded ahead of the workers.
//!
//! The scan lists the prefix as a stream (S3 and Azure list keys in lexicographic order, so
//! the order, and with it the mini-batch ids, is deterministic; the first mini-batch starts
//! after its own files are listed and downloaded, not after the whole listing). Each listed
//! object is downloaded by its own task, at most `prefetch` objects ahead of what the
//! dispatcher has taken and `download_concurrency` at a time, within the cache's disk budget
//! ([`FileCache`]). Rows come out in listing order, in small batches as downloads complete.
//! The objects of mini-batches a resumed run skips are listed but not downloaded
//! ([`FileCache::skip_rows`]): their rows carry the local path a download would have.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use datafusion::common::runtime::SpawnedTask;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use globset::GlobMatcher;
use object_store::{ObjectMeta, ObjectStore};
use tokio::sync::Semaphore;

use crate::config::glob_matcher;
use crate::error::{PrsError, Result};
use crate::input::files::{FileEntry, FileSource, LISTING_BATCH};
use crate::storage::cache::FileCache;
use crate::storage::named::NamedStore;
use crate::storage::{download_object, local_path, storage_error, ObjectLocation, StorageOptions};

/// A file dataset on object storage and how it is downloaded.
pub struct RemoteFiles {
    input: String,
    location: ObjectLocation,
    store: Arc<NamedStore>,
    cache: Arc<FileCache>,
    /// Set when the location is one object.
    single: Option<ObjectMeta>,
    matcher: Option<GlobMatcher>,
    prefetch: usize,
    concurrency: usize,
    options: StorageOptions,
    /// Rows name the objects by URL, nothing is downloaded (a cluster driver's listing).
    by_url: bool,
}

impl fmt::Debug for RemoteFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFiles")
            .field("input", &self.input)
            .field("location", &self.location.text)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// One downloaded file: its place in the listing and its entry.
struct Downloaded {
    seq: u64,
    entry: FileEntry,
}

impl RemoteFiles {
    /// A dataset for input `input` at `location`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: &str,
        location: ObjectLocation,
        store: Arc<NamedStore>,
        cache: Arc<FileCache>,
        single: Option<ObjectMeta>,
        prefetch: usize,
        concurrency: usize,
        options: StorageOptions,
    ) -> std::result::Result<Self, String> {
        let matcher = location.glob.as_deref().map(glob_matcher).transpose()?;
        Ok(RemoteFiles {
            input: input.to_string(),
            location,
            store,
            cache,
            single,
            matcher,
            prefetch: prefetch.max(1),
            concurrency: concurrency.max(1),
            options,
            by_url: false,
        })
    }

    /// The same dataset listed with its objects' URLs in `path` and nothing downloaded, when
    /// `by_url` (a cluster driver: each executor downloads the files of its mini-batches).
    pub fn by_url(mut self, by_url: bool) -> Self {
        self.by_url = by_url;
        self
    }

    /// Entries naming the objects by URL, in listing order, nothing downloaded.
    fn urls(self: Arc<Self>) -> BoxStream<'static, Result<Vec<FileEntry>>> {
        let this = self.clone();
        self.listing()
            .map_ok(move |meta| FileEntry {
                path: this.location.url_of(&meta.location),
                size: meta.size,
                modified: Some(meta.last_modified.timestamp_millis()),
                keys: Vec::new(),
            })
            .try_chunks(LISTING_BATCH)
            .map_err(|e| e.1)
            .boxed()
    }

    /// The download cache.
    pub fn cache(&self) -> &Arc<FileCache> {
        &self.cache
    }

    /// The objects of the dataset, in listing order (folder markers and non-matching keys
    /// left out).
    fn listing(self: &Arc<Self>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Some(meta) = &self.single {
            return futures::stream::once(futures::future::ready(Ok(meta.clone()))).boxed();
        }
        let this = self.clone();
        let prefix = (!self.location.prefix.as_ref().is_empty()).then_some(&self.location.prefix);
        let url = {
            let mut u = self.location.url_of(&self.location.prefix);
            if !u.ends_with('/') {
                u.push('/');
            }
            u
        };
        let this_err = self.clone();
        self.store
            .list(prefix)
            .map_err(move |e| {
                storage_error(&this_err.location, "LIST", &url, &e, &this_err.options)
            })
            .try_filter(move |meta| {
                let key = meta.location.as_ref();
                let keep = !key.ends_with('/')
                    && this
                        .matcher
                        .as_ref()
                        .is_none_or(|m| m.is_match(this.location.relative(&meta.location)));
                futures::future::ready(keep)
            })
            .boxed()
    }

    /// Downloads object `seq` into the cache (after reserving its size) and returns its local
    /// path.
    async fn download(
        self: Arc<Self>,
        seq: u64,
        meta: ObjectMeta,
        permits: Arc<Semaphore>,
    ) -> Result<Downloaded> {
        self.cache.reserve(seq, meta.size).await;
        let result = self.fetch(&meta, &permits).await;
        match result {
            Ok(local) => {
                self.cache.downloaded(seq, local.clone());
                Ok(Downloaded {
                    seq,
                    entry: entry(&local, &meta),
                })
            }
            Err(e) => {
                self.cache.failed(seq);
                Err(e)
            }
        }
    }

    /// The entry of object `seq` without downloading it (a resumed run skips its
    /// mini-batch, see [`FileCache::skip_rows`]): its local path is the one a download would
    /// have, so the mini-batch's input slice is recognised.
    async fn pass(self: Arc<Self>, seq: u64, meta: ObjectMeta) -> Result<Downloaded> {
        self.cache.pass(seq).await;
        Ok(Downloaded {
            seq,
            entry: entry(&self.local_path(&meta)?, &meta),
        })
    }

    /// Where object `meta` is downloaded: its path below the prefix, in the cache folder.
    fn local_path(&self, meta: &ObjectMeta) -> Result<std::path::PathBuf> {
        Ok(local_path(
            &self.cache.dir()?,
            &self.location.relative(&meta.location),
        ))
    }

    async fn fetch(&self, meta: &ObjectMeta, permits: &Semaphore) -> Result<std::path::PathBuf> {
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| PrsError::Cancelled("downloads stopped".into()))?;
        let local = self.local_path(meta)?;
        download_object(
            &self.store,
            &self.location,
            &meta.location,
            &local,
            &self.options,
        )
        .await?;
        Ok(local)
    }

    /// Lists, downloads ahead and emits entries with local paths, in listing order.
    fn stream(self: Arc<Self>) -> impl Stream<Item = Result<Vec<FileEntry>>> + Send {
        self.cache.reset();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let this = self.clone();
        let downloads = self
            .listing()
            .enumerate()
            .map(move |(seq, item)| {
                let this = this.clone();
                let permits = permits.clone();
                // Its own task, so downloads go on while the dispatcher is busy.
                let task = SpawnedTask::spawn(async move {
                    let meta = item?;
                    let seq = seq as u64;
                    if this.cache.skips(seq) {
                        return this.pass(seq, meta).await;
                    }
                    this.download(seq, meta, permits).await
                });
                async move {
                    task.join()
                        .await
                        .map_err(|e| PrsError::Cancelled(format!("a download task stopped: {e}")))?
                }
            })
            .buffered(self.prefetch);
        let state = Emitter {
            downloads: Box::pin(downloads),
            cache: self.cache.clone(),
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            state.next_batch().await.map(|item| (item, state))
        })
    }
}

/// The row of object `meta`, at `local`.
fn entry(local: &std::path::Path, meta: &ObjectMeta) -> FileEntry {
    FileEntry {
        path: local.to_string_lossy().into_owned(),
        size: meta.size,
        modified: Some(meta.last_modified.timestamp_millis()),
        keys: Vec::new(),
    }
}

type Downloads = Pin<Box<dyn Stream<Item = Result<Downloaded>> + Send>>;

struct Emitter {
    downloads: Downloads,
    cache: Arc<FileCache>,
    done: bool,
}

impl Emitter {
    /// The next chunk: every download already complete, in order (at least one).
    async fn next_batch(&mut self) -> Option<Result<Vec<FileEntry>>> {
        if self.done {
            return None;
        }
        let mut rows: Vec<FileEntry> = Vec::new();
        loop {
            let next = if rows.is_empty() {
                self.downloads.next().await
            } else {
                match futures::poll!(self.downloads.next()) {
                    Poll::Ready(next) => next,
                    Poll::Pending => break,
                }
            };
            match next {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Some(Ok(d)) => {
                    self.cache.emitted(d.seq + 1);
                    rows.push(d.entry);
                    if rows.len() >= LISTING_BATCH {
                        break;
                    }
                }
            }
        }
        if rows.is_empty() {
            return None;
        }
        Some(Ok(rows))
    }
}

/// Downloads, on a cluster executor, the files of a file-dataset mini-batch the driver listed
/// by URL ([`RemoteFiles::by_url`]): each mini-batch's files go into a folder of their own,
/// removed when its guard (the [`tempfile::TempDir`] returned) is dropped, i.e. when the
/// mini-batch is done. The job's storage options (without secrets: each executor takes them
/// from its environment) open the stores.
pub struct ExecutorFiles {
    storage: crate::storage::StorageContext,
    parent: std::path::PathBuf,
}

impl ExecutorFiles {
    /// Downloads with `options`, into folders below the system's temporary folder.
    pub fn new(options: StorageOptions) -> Self {
        ExecutorFiles {
            storage: crate::storage::StorageContext::new(options, None),
            parent: std::env::temp_dir().join("parallel-run-executor-files"),
        }
    }

    /// `data` (a file dataset's rows, of input `input`) with the object URLs of its `path`
    /// column replaced by local copies, and the folder holding them; `None` when it names no
    /// object URL (a shared folder's files are read where they are).
    pub async fn localize(
        &self,
        input: &str,
        data: &arrow::array::RecordBatch,
    ) -> Result<Option<(arrow::array::RecordBatch, tempfile::TempDir)>> {
        use arrow::array::{Array, StringArray};
        let Some((index, _)) = data.schema().column_with_name("path") else {
            return Ok(None);
        };
        let Some(paths) = data.column(index).as_any().downcast_ref::<StringArray>() else {
            return Ok(None);
        };
        let is_url = |i: usize| paths.is_valid(i) && crate::config::is_object_url(paths.value(i));
        if !(0..paths.len()).any(is_url) {
            return Ok(None);
        }
        std::fs::create_dir_all(&self.parent).map_err(|e| PrsError::io(&self.parent, e))?;
        let dir = tempfile::Builder::new()
            .prefix("mini-batch-")
            .tempdir_in(&self.parent)
            .map_err(|e| PrsError::io(&self.parent, e))?;
        let mut local = Vec::with_capacity(paths.len());
        for i in 0..paths.len() {
            if !is_url(i) {
                local.push(paths.is_valid(i).then(|| paths.value(i).to_string()));
                continue;
            }
            let url = paths.value(i);
            let location = ObjectLocation::parse(&format!("inputs.{input}.path"), url)?;
            let store = self.storage.store(&location)?;
            // Numbered, so two objects of one name stay apart.
            let name = location.prefix.filename().unwrap_or("file");
            let target = local_path(dir.path(), &format!("{i:05}/{name}"));
            download_object(
                &store,
                &location,
                &location.prefix,
                &target,
                self.storage.options(),
            )
            .await?;
            local.push(Some(target.to_string_lossy().into_owned()));
        }
        let mut columns = data.columns().to_vec();
        columns[index] = Arc::new(StringArray::from(local));
        let rows = arrow::array::RecordBatch::try_new(data.schema(), columns).map_err(|e| {
            PrsError::Input {
                input: input.to_string(),
                location: "this executor".into(),
                message: format!("the downloaded files' rows cannot be made: {e}"),
            }
        })?;
        Ok(Some((rows, dir)))
    }
}

impl FileSource for RemoteFiles {
    fn location(&self) -> String {
        self.location.text.clone()
    }

    fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("prefetch", format!("{} files", self.prefetch)),
            ("download_concurrency", self.concurrency.to_string()),
            ("cache_size", format!("{} bytes", self.cache.budget())),
        ]
    }

    /// Object storage lists `size` and `modified` with the keys: they are always filled.
    fn entries(self: Arc<Self>, _metadata: bool) -> BoxStream<'static, Result<Vec<FileEntry>>> {
        if self.by_url {
            return self.urls();
        }
        self.stream().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use object_store::ObjectStoreExt;
    use std::time::{Duration, Instant};

    /// 200 objects of 10 bytes listed at 5 ms per entry (1 s in all), a 50-byte budget and a
    /// consumer that frees each batch once it has it: rows come out before the listing ends,
    /// in order, as local files with the objects' bytes, and the cache never holds more than
    /// a few files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_ahead_of_the_listing_within_the_budget() {
        let memory = InMemory::new();
        for i in 0..200 {
            memory
                .put(
                    &ObjectPath::from(format!("data/f{i:03}.txt")),
                    format!("{i:010}").into_bytes().into(),
                )
                .await
                .unwrap();
        }
        let throttled = ThrottledStore::new(
            memory,
            ThrottleConfig {
                wait_list_per_entry: Duration::from_millis(5),
                ..Default::default()
            },
        );
        let options = StorageOptions::default();
        let store = Arc::new(NamedStore::new(
            Arc::new(throttled),
            "s3://b".into(),
            options.clone(),
        ));
        let location = ObjectLocation::parse("p", "s3://b/data/").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(FileCache::new(dir.path().to_path_buf(), "in-", 50));
        let files = Arc::new(
            RemoteFiles::new("in", location, store, cache.clone(), None, 20, 4, options).unwrap(),
        );
        let t0 = Instant::now();
        let mut stream = Box::pin(files.clone().stream());
        let mut seen = 0u64;
        let mut first_at = None;
        while let Some(batch) = stream.next().await {
            let entries = batch.unwrap();
            first_at.get_or_insert(t0.elapsed());
            for (i, entry) in entries.iter().enumerate() {
                let path = &entry.path;
                let n = seen + i as u64;
                assert!(path.ends_with(&format!("f{n:03}.txt")), "{path}");
                assert_eq!(std::fs::read_to_string(path).unwrap(), format!("{n:010}"));
            }
            let rows = entries.len() as u64;
            cache.release(seen..seen + rows);
            seen += rows;
        }
        assert_eq!(seen, 200);
        let first_at = first_at.unwrap();
        assert!(
            first_at < Duration::from_millis(500),
            "first rows after {first_at:?}"
        );
        let stats = cache.stats();
        assert_eq!(stats.downloaded, 200);
        assert_eq!(stats.released, 200);
        assert_eq!(stats.used, 0);
        assert!(
            stats.peak <= 100,
            "peak {} bytes for a 50-byte budget",
            stats.peak
        );
    }
}
