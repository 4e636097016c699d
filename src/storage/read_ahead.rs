//! Read-ahead for tabular inputs on object storage.
//!
//! DataFusion reads a table's objects one after the other, each only when the previous one is
//! done, and the job does not read far ahead of its workers: on a remote store every object's
//! transfer then sits on the job's critical path, and the seconds the workers spend starting
//! and in `init()` go unused. A [`ReadAhead`] downloads the objects of the job's tables, in
//! the order DataFusion reads them, into a local folder from the moment the job starts
//! ([`ReadAhead::start`]), a few at a time (`download_concurrency`) and within the disk
//! budget of the download cache (`cache_size`). DataFusion still reads every byte through
//! the store ([`crate::storage::NamedStore`]): a request for an object already here is served
//! from the local copy, one being downloaded waits for it, and anything else (an object not
//! yet started, larger than the budget, or whose download failed) goes to the store as
//! before, so errors and results are the store's own. A copy is deleted once DataFusion has
//! moved on two objects past it, and the folder when the job ends.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};

/// Where an object's download stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Not started.
    Pending,
    /// Being downloaded.
    Downloading,
    /// Complete at this local path.
    Ready(PathBuf),
    /// Left to the store: failed, too large, requested before its turn, or deleted after use.
    Direct,
}

#[derive(Debug)]
struct Entry {
    meta: ObjectMeta,
    status: Status,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    index: HashMap<Path, usize>,
    /// Bytes of the copies downloading or on disk.
    used: u64,
    /// The furthest object DataFusion has asked for.
    reading: Option<usize>,
    /// Entries before this one are no longer on disk (or still downloading, in which case
    /// the download deletes its copy itself): where deleting resumes.
    cleared: usize,
    /// Entries before this one are no longer pending: where the downloader looks next.
    next_pending: usize,
    started: bool,
    stats: ReadAheadStats,
}

/// Marks a request (in `GetOptions::extensions`) that goes to the store as it is, neither
/// served by the read-ahead nor changing its plan: the reads that cut an input into
/// mini-batches before DataFusion reads it (a footer, the text scanned for record ends), which
/// would otherwise come far ahead of the scan and use up the download budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAhead;

/// Counters, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadAheadStats {
    /// Objects downloaded ahead.
    pub downloaded: u64,
    /// Requests served from a local copy.
    pub served: u64,
    /// The most bytes on disk at once.
    pub peak: u64,
}

/// The read-ahead of one store (see the module documentation).
#[derive(Debug)]
pub struct ReadAhead {
    /// The store itself (errors of the downloads are not shown: the request then goes to the
    /// store, which reports them).
    inner: Arc<dyn ObjectStore>,
    parent: PathBuf,
    dir: Mutex<Option<tempfile::TempDir>>,
    budget: u64,
    concurrency: usize,
    state: Mutex<State>,
    changed: Arc<Notify>,
}

impl ReadAhead {
    /// A read-ahead from `inner` into a fresh folder under `parent` (made on the first
    /// download), keeping at most `budget` bytes there, `concurrency` downloads at a time.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        parent: PathBuf,
        budget: u64,
        concurrency: usize,
    ) -> Self {
        ReadAhead {
            inner,
            parent,
            dir: Mutex::new(None),
            budget,
            concurrency: concurrency.max(1),
            state: Mutex::new(State::default()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Adds objects, in the order they will be read (after those added before).
    pub fn plan(&self, objects: impl IntoIterator<Item = ObjectMeta>) {
        let mut state = self.lock();
        for meta in objects {
            if state.index.contains_key(&meta.location) {
                continue;
            }
            let i = state.entries.len();
            state.index.insert(meta.location.clone(), i);
            state.entries.push(Entry {
                meta,
                status: Status::Pending,
            });
        }
    }

    /// Starts downloading (once; a no-op without planned objects). Registering inputs alone
    /// (e.g. `validate`) downloads nothing.
    pub fn start(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if state.started || state.entries.is_empty() {
                return;
            }
            state.started = true;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move { drive(this).await });
    }

    /// The counters.
    pub fn stats(&self) -> ReadAheadStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn folder(&self) -> std::io::Result<PathBuf> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dir.as_ref() {
            return Ok(d.path().to_path_buf());
        }
        std::fs::create_dir_all(&self.parent)?;
        let made = tempfile::Builder::new()
            .prefix("read-ahead-")
            .tempdir_in(&self.parent)?;
        let path = made.path().to_path_buf();
        *dir = Some(made);
        Ok(path)
    }

    /// The local copy of `location` for a read, waiting for a download in progress; `None`:
    /// read it from the store.
    async fn local_copy(&self, location: &Path) -> Option<(PathBuf, ObjectMeta)> {
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.lock();
                if !state.started {
                    return None;
                }
                let i = *state.index.get(location)?;
                self.moved_to(&mut state, i);
                let fits = state.used + state.entries[i].meta.size <= self.budget;
                let entry = &mut state.entries[i];
                match &entry.status {
                    Status::Ready(path) => {
                        let found = (path.clone(), entry.meta.clone());
                        state.stats.served += 1;
                        return Some(found);
                    }
                    Status::Downloading => {}
                    // Next in line and there is room: the downloader takes it now.
                    Status::Pending if fits => {}
                    Status::Pending => {
                        // No room (copies still in use): read it directly rather than wait,
                        // and don't download it later.
                        entry.status = Status::Direct;
                        return None;
                    }
                    Status::Direct => return None,
                }
            }
            notified.await;
        }
    }

    /// DataFusion asks for object `i`: copies two or more behind it are done with.
    fn moved_to(&self, state: &mut State, i: usize) {
        if state.reading.is_some_and(|r| r >= i) {
            return;
        }
        state.reading = Some(i);
        let mut freed = false;
        let behind = i.saturating_sub(1);
        for j in state.cleared.min(behind)..behind {
            let entry = &mut state.entries[j];
            match std::mem::replace(&mut entry.status, Status::Direct) {
                Status::Ready(path) => {
                    let _ = std::fs::remove_file(&path);
                    state.used -= entry.meta.size;
                    freed = true;
                }
                Status::Downloading => entry.status = Status::Downloading,
                _ => {}
            }
        }
        state.cleared = state.cleared.max(behind);
        if freed {
            self.changed.notify_waiters();
        }
    }

    /// The next object to download if the budget has room for it now.
    fn try_next(&self) -> Next {
        let mut state = self.lock();
        let behind = state.reading.unwrap_or(0);
        let State {
            entries,
            used,
            next_pending,
            ..
        } = &mut *state;
        let mut next = None;
        for (i, entry) in entries.iter_mut().enumerate().skip(*next_pending) {
            if entry.status == Status::Pending {
                if i >= behind && entry.meta.size <= self.budget {
                    next = Some(i);
                    break;
                }
                entry.status = Status::Direct; // passed already, or can never fit
            }
            *next_pending = i + 1; // nothing before here is pending any more
        }
        let Some(i) = next else {
            return Next::Done;
        };
        let size = entries[i].meta.size;
        if *used + size > self.budget {
            return Next::Wait;
        }
        entries[i].status = Status::Downloading;
        *used += size;
        let used = *used;
        state.stats.peak = state.stats.peak.max(used);
        Next::Download(i, state.entries[i].meta.clone())
    }

    /// Downloads object `i` into the folder; on any failure the object is left to the store.
    async fn download(&self, i: usize, meta: ObjectMeta) {
        let result = self.fetch(i, &meta).await;
        let mut state = self.lock();
        // Done with already (the reader is two objects further): nobody will read this copy.
        let passed = state.reading.is_some_and(|r| i + 1 < r);
        let entry = &mut state.entries[i];
        match result {
            Ok(path) if entry.status == Status::Downloading && !passed => {
                entry.status = Status::Ready(path);
                state.stats.downloaded += 1;
            }
            other => {
                if let Ok(path) = other {
                    let _ = std::fs::remove_file(path);
                }
                entry.status = Status::Direct;
                state.used -= meta.size;
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    async fn fetch(&self, i: usize, meta: &ObjectMeta) -> std::io::Result<PathBuf> {
        let path = self.folder()?.join(format!("{i:06}"));
        let mut body = self
            .inner
            .get(&meta.location)
            .await
            .map_err(std::io::Error::other)?
            .into_stream();
        let mut file = tokio::fs::File::create(&path).await?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            written += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        if written != meta.size {
            return Err(std::io::Error::other(format!(
                "{} bytes downloaded, {} listed",
                written, meta.size
            )));
        }
        Ok(path)
    }

    /// Serves a GET from a local copy when there is one (plain reads only: conditional and
    /// versioned requests, and HEAD, go to the store).
    pub(crate) async fn get_opts(
        &self,
        location: &Path,
        options: &GetOptions,
    ) -> Option<object_store::Result<GetResult>> {
        let plain = !options.head
            && options.extensions.get::<NotAhead>().is_none()
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none();
        if !plain {
            return None;
        }
        let (path, meta) = self.local_copy(location).await?;
        let range = match &options.range {
            Some(r) => match r.as_range(meta.size) {
                Ok(range) => range,
                Err(_) => return None, // let the store answer a bad range as it would
            },
            None => 0..meta.size,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(_) => return None,
        };
        Some(Ok(GetResult {
            payload: GetResultPayload::File(file, path),
            meta,
            range,
            attributes: Default::default(),
        }))
    }

    /// Serves ranges from a local copy when there is one.
    pub(crate) async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> Option<object_store::Result<Vec<Bytes>>> {
        let (path, meta) = self.local_copy(location).await?;
        if ranges.iter().any(|r| r.start > r.end || r.end > meta.size) {
            return None;
        }
        let ranges = ranges.to_vec();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Bytes>> {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            ranges
                .iter()
                .map(|r| {
                    let mut buf = vec![0u8; (r.end - r.start) as usize];
                    file.read_exact_at(&mut buf, r.start)?;
                    Ok(Bytes::from(buf))
                })
                .collect()
        })
        .await;
        match read {
            Ok(Ok(bytes)) => Some(Ok(bytes)),
            _ => None, // the copy went away: the store answers
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Wakes a downloader waiting for room, which then finds nothing left to serve.
        self.changed.notify_waiters();
    }
}

/// What the downloader does next.
enum Next {
    Download(usize, ObjectMeta),
    /// The budget is full: wait for a copy to be deleted.
    Wait,
    /// Every object is downloaded or left to the store.
    Done,
}

/// Downloads the planned objects in order, `concurrency` at a time, within the budget; stops
/// when all are handled or the read-ahead is dropped (it holds no reference while waiting).
async fn drive(this: std::sync::Weak<ReadAhead>) {
    let Some(first) = this.upgrade() else { return };
    let permits = Arc::new(Semaphore::new(first.concurrency));
    let changed = first.changed.clone();
    drop(first);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let notified = changed.notified();
        let Some(ahead) = this.upgrade() else { return };
        match ahead.try_next() {
            Next::Download(i, meta) => {
                tokio::spawn(async move {
                    ahead.download(i, meta).await;
                    drop(permit);
                });
            }
            Next::Wait => {
                drop((ahead, permit));
                notified.await;
            }
            Next::Done => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    async fn store_with(objects: &[(&str, usize)]) -> (Arc<dyn ObjectStore>, Vec<ObjectMeta>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut metas = Vec::new();
        for (name, size) in objects {
            let path = Path::from(*name);
            let data: Vec<u8> = (0..*size).map(|i| (i % 251) as u8).collect();
            store.put(&path, PutPayload::from(data)).await.unwrap();
            metas.push(store.head(&path).await.unwrap());
        }
        (store, metas)
    }

    async fn settle(ahead: &ReadAhead, downloaded: u64) {
        for _ in 0..200 {
            if ahead.stats().downloaded >= downloaded {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("only {:?}", ahead.stats());
    }

    #[tokio::test]
    async fn serves_local_copies_within_the_budget_and_deletes_them_behind_the_reader() {
        let (store, metas) =
            store_with(&[("t/a", 100), ("t/b", 100), ("t/c", 100), ("t/d", 100)]).await;
        let dir = tempfile::tempdir().unwrap();
        let ahead = Arc::new(ReadAhead::new(
            store.clone(),
            dir.path().to_path_buf(),
            250,
            4,
        ));
        ahead.plan(metas.clone());
        // Not started: every read goes to the store.
        assert!(ahead.local_copy(&metas[0].location).await.is_none());
        ahead.start();
        settle(&ahead, 2).await;
        assert_eq!(ahead.stats().peak, 200, "two objects fit a 250-byte budget");
        let got = ahead
            .get_ranges(&metas[0].location, &[1..3, 50..60])
            .await
            .unwrap()
            .unwrap();
        let direct = store
            .get_ranges(&metas[0].location, &[1..3, 50..60])
            .await
            .unwrap();
        assert_eq!(got, direct);
        // Moving on to c deletes a, which makes room for c (which the read waits for) and d.
        let result = ahead
            .get_opts(
                &metas[2].location,
                &GetOptions {
                    range: Some((10..20).into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        let bytes = result.bytes().await.unwrap();
        assert_eq!(
            bytes.as_ref(),
            &(10..20).map(|i| i as u8).collect::<Vec<u8>>()[..]
        );
        settle(&ahead, 3).await;
        // b stays (DataFusion may still be reading it) so d has to wait until the reader
        // moves on to d itself.
        assert_eq!(ahead.stats().downloaded, 3);
        let d = ahead
            .get_ranges(&metas[3].location, &[0..50, 50..100])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d[0].len() + d[1].len(), 100);
        let stats = ahead.stats();
        assert_eq!((stats.downloaded, stats.served), (4, 3), "{stats:?}");
        assert!(stats.peak <= 250, "{stats:?}");
        // A HEAD or an unknown object is the store's business.
        let head = GetOptions {
            head: true,
            ..Default::default()
        };
        assert!(ahead.get_opts(&metas[3].location, &head).await.is_none());
        assert!(ahead.local_copy(&Path::from("t/zzz")).await.is_none());
    }

    #[tokio::test]
    async fn objects_over_the_budget_and_passed_ones_are_read_directly() {
        let (store, metas) = store_with(&[("a", 10), ("big", 1000), ("c", 10)]).await;
        let dir = tempfile::tempdir().unwrap();
        let ahead = Arc::new(ReadAhead::new(store, dir.path().to_path_buf(), 100, 1));
        ahead.plan(metas.clone());
        ahead.start();
        settle(&ahead, 2).await;
        assert!(
            ahead.local_copy(&metas[1].location).await.is_none(),
            "too big"
        );
        assert!(ahead.local_copy(&metas[2].location).await.is_some());
        drop(ahead);
        // The folder goes with the read-ahead.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
