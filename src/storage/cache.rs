//! The download cache of a file dataset on object storage: a local folder holding the objects
//! downloaded ahead of the workers, with a disk budget.
//!
//! Each listed object gets a sequence number (its row in the input's ordered stream). A
//! download first reserves its size: reservations are granted in sequence order, when they fit
//! the budget, or always for the file the dispatcher is waiting for (the head of the line), so
//! the budget bounds prefetching but never stops the job. Files are deleted when the mini-batch
//! holding them has finished ([`FileCache::release`], called with the mini-batch's row range),
//! and the whole folder when the cache is dropped (the folder is created on the first
//! download, so registering an input for `validate` leaves nothing behind).
//!
//! A job's cache folder has a stable name ([`FileCache::stable`]): the local paths its rows
//! carry are then the same in every run of the job, so a resumed run recognises the input
//! slices of the mini-batches it skips, and the files of those are not downloaded at all
//! ([`FileCache::skip_rows`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::error::{PrsError, Result};

/// Counters of a cache, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes reserved now (downloading or on disk, not yet released).
    pub used: u64,
    /// The most bytes ever reserved at once.
    pub peak: u64,
    /// Files downloaded.
    pub downloaded: u64,
    /// Files deleted after their mini-batch finished.
    pub released: u64,
    /// Files not downloaded: their mini-batch was finished by an earlier run (`--resume`).
    pub skipped: u64,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    next_reserve: u64,
    next_emit: u64,
    /// seq -> (local file once downloaded, reserved bytes)
    files: BTreeMap<u64, (Option<PathBuf>, u64)>,
    /// Rows (listing sequence numbers) not to download, sorted, not overlapping.
    skip: Vec<Range<u64>>,
    stats: CacheStats,
}

/// The cache folder, once made.
#[derive(Debug)]
enum CacheDir {
    /// A fresh folder with a random name, removed on drop.
    Temp(tempfile::TempDir),
    /// A folder with a stable name (emptied when made), removed on drop.
    Fixed(PathBuf),
}

impl CacheDir {
    fn path(&self) -> &std::path::Path {
        match self {
            CacheDir::Temp(dir) => dir.path(),
            CacheDir::Fixed(path) => path,
        }
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        if let CacheDir::Fixed(path) = self {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The local cache of one file-dataset input.
#[derive(Debug)]
pub struct FileCache {
    parent: PathBuf,
    /// The folder's name prefix (a random suffix follows), or its whole name when `stable`.
    prefix: String,
    stable: bool,
    /// Created on first use in `parent`, removed on drop.
    dir: Mutex<Option<CacheDir>>,
    budget: u64,
    state: Mutex<State>,
    changed: Notify,
}

impl FileCache {
    /// A cache in a fresh folder `<parent>/<prefix>XXXX` (created on the first download,
    /// removed when the cache is dropped) with a budget of `budget` bytes.
    pub fn new(parent: PathBuf, prefix: &str, budget: u64) -> Self {
        FileCache {
            parent,
            prefix: prefix.to_string(),
            stable: false,
            dir: Mutex::new(None),
            budget,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// A cache in the folder `<parent>/<name>`, the same in every run: emptied when it is
    /// made (what a killed run left), removed when the cache is dropped. `name` must belong
    /// to one job and input (two jobs at once must not share it).
    pub fn stable(parent: PathBuf, name: &str, budget: u64) -> Self {
        let mut cache = FileCache::new(parent, name, budget);
        cache.stable = true;
        cache
    }

    /// The cache folder, created on first use.
    pub fn dir(&self) -> Result<PathBuf> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dir.as_ref() {
            return Ok(d.path().to_path_buf());
        }
        std::fs::create_dir_all(&self.parent).map_err(|e| PrsError::io(&self.parent, e))?;
        let created = if self.stable {
            let path = self.parent.join(&self.prefix);
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(PrsError::io(&path, e))
                }
                _ => {}
            }
            std::fs::create_dir(&path).map_err(|e| PrsError::io(&path, e))?;
            CacheDir::Fixed(path)
        } else {
            CacheDir::Temp(
                tempfile::Builder::new()
                    .prefix(&self.prefix)
                    .tempdir_in(&self.parent)
                    .map_err(|e| PrsError::io(&self.parent, e))?,
            )
        };
        let path = created.path().to_path_buf();
        *dir = Some(created);
        Ok(path)
    }

    /// Rows (listing sequence numbers) whose files are not to be downloaded: their
    /// mini-batches were finished by an earlier run and a resumed run skips them. Set before
    /// the listing starts; kept by [`FileCache::reset`].
    pub fn skip_rows(&self, rows: impl IntoIterator<Item = Range<u64>>) {
        let mut state = self.lock();
        state
            .skip
            .extend(rows.into_iter().filter(|r| r.start < r.end));
        state.skip.sort_by_key(|r| r.start);
    }

    /// True when file `seq` is not to be downloaded ([`FileCache::skip_rows`]).
    pub fn skips(&self, seq: u64) -> bool {
        let state = self.lock();
        let after = state.skip.partition_point(|r| r.start <= seq);
        after > 0 && state.skip[after - 1].end > seq
    }

    /// Waits for file `seq`'s turn (as [`FileCache::reserve`]) and passes it without
    /// reserving anything: it is not downloaded ([`FileCache::skips`]).
    pub async fn pass(&self, seq: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if seq <= state.next_reserve {
                    state.next_reserve = state.next_reserve.max(seq + 1);
                    state.stats.skipped += 1;
                    drop(state);
                    self.changed.notify_waiters();
                    return;
                }
            }
            notified.await;
        }
    }

    /// The disk budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a new pass over the listing: forgets (and deletes) everything held.
    pub fn reset(&self) {
        let files = {
            let mut state = self.lock();
            let files = std::mem::take(&mut state.files);
            state.used = 0;
            state.next_reserve = 0;
            state.next_emit = 0;
            files
        };
        for (path, _) in files.into_values() {
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until file `seq` of `size` bytes may be downloaded, and reserves its size.
    pub async fn reserve(&self, seq: u64, size: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the wait is seen.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let in_turn = seq <= state.next_reserve;
                let fits = state.used.saturating_add(size) <= self.budget;
                let needed = seq <= state.next_emit || state.used == 0;
                if in_turn && (fits || needed) {
                    state.used += size;
                    state.stats.used = state.used;
                    state.stats.peak = state.stats.peak.max(state.used);
                    state.next_reserve = state.next_reserve.max(seq + 1);
                    state.files.insert(seq, (None, size));
                    drop(state);
                    self.changed.notify_waiters();
                    return;
                }
            }
            notified.await;
        }
    }

    /// File `seq` is on disk at `path`.
    pub fn downloaded(&self, seq: u64, path: PathBuf) {
        let mut state = self.lock();
        if let Some(entry) = state.files.get_mut(&seq) {
            entry.0 = Some(path);
            state.stats.downloaded += 1;
        } else {
            // Reset meanwhile: nobody wants it.
            drop(state);
            let _ = std::fs::remove_file(path);
        }
    }

    /// The download of file `seq` failed: gives its reservation back.
    pub fn failed(&self, seq: u64) {
        let mut state = self.lock();
        if let Some((_, size)) = state.files.remove(&seq) {
            state.used = state.used.saturating_sub(size);
            state.stats.used = state.used;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Files before `next` have been handed to the dispatcher.
    pub fn emitted(&self, next: u64) {
        let mut state = self.lock();
        state.next_emit = state.next_emit.max(next);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The mini-batch holding files `rows` has finished: deletes them and frees their bytes.
    pub fn release(&self, rows: Range<u64>) {
        let mut removed = Vec::new();
        {
            let mut state = self.lock();
            let seqs: Vec<u64> = state.files.range(rows).map(|(s, _)| *s).collect();
            for seq in seqs {
                if let Some((path, size)) = state.files.remove(&seq) {
                    state.used = state.used.saturating_sub(size);
                    state.stats.released += 1;
                    removed.extend(path);
                }
            }
            state.stats.used = state.used;
        }
        for path in removed {
            let _ = std::fs::remove_file(path);
        }
        self.changed.notify_waiters();
    }
}

impl Drop for FileCache {
    fn drop(&mut self) {
        // The folder goes first (TempDir removes it), then the default parents when empty:
        // `<output>/.parallel_run/cache` and `<output>/.parallel_run`.
        drop(self.dir.lock().unwrap_or_else(|p| p.into_inner()).take());
        if self.parent.file_name().is_some_and(|n| n == "cache") {
            if let Some(staging_root) = self.parent.parent() {
                if staging_root
                    .file_name()
                    .is_some_and(|n| n == ".parallel_run")
                {
                    let _ = std::fs::remove_dir(&self.parent);
                    let _ = std::fs::remove_dir(staging_root);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn budget_bounds_prefetch_but_the_head_always_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(FileCache::new(dir.path().join("c"), "in-", 100));
        cache.reserve(0, 60).await;
        // Does not fit and is not needed yet: waits.
        let c = cache.clone();
        let second = tokio::spawn(async move { c.reserve(1, 60).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        // The dispatcher took file 0 and waits for file 1: it goes over budget.
        cache.emitted(1);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cache.stats().used, 120);
        // A third one waits until a release frees room.
        let c = cache.clone();
        let third = tokio::spawn(async move { c.reserve(2, 30).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        cache.release(0..1);
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cache.stats().used, 90);
        assert_eq!(cache.stats().peak, 120);
    }

    #[tokio::test]
    async fn reservations_go_in_order_and_release_deletes_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(FileCache::new(dir.path().join("c"), "in-", 1000));
        let c = cache.clone();
        let later = tokio::spawn(async move { c.reserve(1, 10).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!later.is_finished(), "file 1 waits for file 0's turn");
        cache.reserve(0, 10).await;
        later.await.unwrap();
        let f = cache.dir().unwrap().join("a.txt");
        std::fs::write(&f, "x").unwrap();
        cache.downloaded(0, f.clone());
        cache.release(0..1);
        assert!(!f.exists());
        assert_eq!(cache.stats().released, 1);
        let root = cache.dir().unwrap();
        assert!(root.starts_with(dir.path().join("c")));
        drop(cache);
        assert!(!root.exists());
    }

    #[tokio::test]
    async fn skipped_rows_pass_in_turn_and_a_stable_folder_is_emptied_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("c/docs-1234/old.txt");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, "left by a killed run").unwrap();
        let cache = Arc::new(FileCache::stable(dir.path().join("c"), "docs-1234", 1000));
        cache.skip_rows([4..6, 0..2]);
        let skipped: Vec<u64> = (0..8).filter(|seq| cache.skips(*seq)).collect();
        assert_eq!(skipped, [0, 1, 4, 5]);
        // File 2 waits for 0 and 1 to pass; they reserve nothing.
        let c = cache.clone();
        let third = tokio::spawn(async move { c.reserve(2, 10).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !third.is_finished(),
            "file 2 waits for the turn of files 0 and 1"
        );
        cache.pass(0).await;
        cache.pass(1).await;
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .unwrap()
            .unwrap();
        let stats = cache.stats();
        assert_eq!((stats.used, stats.skipped, stats.downloaded), (10, 2, 0));
        // The same folder every time, emptied when first used, removed with the cache.
        let root = cache.dir().unwrap();
        assert_eq!(root, dir.path().join("c/docs-1234"));
        assert!(!stale.exists());
        cache.reset();
        assert!(
            cache.skips(4),
            "a new pass over the listing keeps the rows to skip"
        );
        drop(cache);
        assert!(!root.exists());
    }
}
