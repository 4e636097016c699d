//! One run at a time on an object-storage output: a lease object.
//!
//! A local output folder is held with a lock file (`OutputLock`); the runs
//! writing one bucket prefix may be on different machines, so an object-storage output is held
//! with `<output>/.parallel_run/lease.json` ([`LEASE_OBJECT`]):
//!
//! - a run creates it with a create-if-absent PUT (`PutMode::Create`: S3 `If-None-Match: *`,
//!   Azure `If-None-Match: *`), naming itself ([`LeaseHolder`]: host, boot id, process, start
//!   time, run number, when it was last renewed);
//! - it renews it every [`RENEW_INTERVAL`] with a PUT conditional on the e-tag it last wrote
//!   (`PutMode::Update`): a renewal refused for a changed e-tag means another run took the
//!   lease over, and this run stops ([`OutputLease::on_lost`]);
//! - it deletes it when the run ends;
//! - a run finding a lease refuses to start (`PrsError::OutputLeased`, exit 2) unless
//!   the lease is stale: not renewed for [`LEASE_TTL`] (its holder was killed, or its machine
//!   lost), or held by a process of this very machine (same host name and boot id) that no
//!   longer exists. A stale lease is taken over with a PUT conditional on its e-tag, so two
//!   runs taking over one stale lease cannot both win.
//!
//! The stores decide the conditions atomically (S3, MinIO, R2, Azure). s3s-fs, the S3 server
//! of the tests, checks `If-None-Match`/`If-Match` before it writes, not atomically with the
//! write: two requests racing within the same instant could both pass there (the tests never
//! race two creates; the refusal, renewal and take-over paths are what they exercise).
//!
//! Staleness compares the holder's renewal time with this machine's clock: the machines'
//! clocks are assumed to agree within a few seconds (NTP), well inside [`LEASE_TTL`].

use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};
use serde::{Deserialize, Serialize};

use super::lock;

/// The lease object, below the output prefix.
pub const LEASE_OBJECT: &str = ".parallel_run/lease.json";
/// A lease not renewed for this long is stale: another run takes it over.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often the holder renews its lease.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(15);

/// What a lease object holds: who holds the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The host name of the holder's machine.
    pub host: String,
    /// The kernel's boot id of that machine (empty when unknown): with the host name, tells
    /// "this machine, since its last boot" apart from another one.
    pub boot_id: String,
    /// The holder's process id.
    pub pid: u32,
    /// When the holder started (Unix seconds).
    pub started: u64,
    /// When the holder last renewed the lease (Unix seconds, the holder's clock).
    pub renewed: u64,
    /// Renewals so far (each write differs, so each has a new e-tag).
    pub renewals: u64,
    /// The run number of the job's ledger, once the holder opened it.
    pub run: Option<u32>,
    /// Seconds without renewal after which the lease is stale.
    pub ttl_secs: u64,
}

impl LeaseHolder {
    /// This process, now.
    pub fn this_process() -> Self {
        let now = unix_now();
        LeaseHolder {
            host: host_name(),
            boot_id: boot_id(),
            pid: std::process::id(),
            started: now,
            renewed: now,
            renewals: 0,
            run: None,
            ttl_secs: LEASE_TTL.as_secs(),
        }
    }

    /// Why this lease may be taken over at Unix time `now` by `taker` (`None`: it is live).
    pub fn stale_reason(&self, now: u64, taker: &LeaseHolder) -> Option<String> {
        let age = now.saturating_sub(self.renewed);
        if age > self.ttl_secs {
            return Some(format!(
                "it was last renewed {age} s ago (a lease is stale after {} s)",
                self.ttl_secs
            ));
        }
        let same_machine =
            !self.boot_id.is_empty() && self.host == taker.host && self.boot_id == taker.boot_id;
        if same_machine && self.pid != taker.pid && !process_exists(self.pid) {
            return Some(format!(
                "its process {} on this machine no longer exists",
                self.pid
            ));
        }
        None
    }

    /// `host H, process P, run N, started T, last renewed S s ago`.
    pub fn describe(&self, now: u64) -> String {
        let started = chrono::DateTime::<chrono::Utc>::from_timestamp(self.started as i64, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| self.started.to_string());
        let run = self.run.map(|r| format!(", run {r}")).unwrap_or_default();
        format!(
            "host {}, process {}{run}, started {started}, last renewed {} s ago",
            self.host,
            self.pid,
            now.saturating_sub(self.renewed)
        )
    }

    fn payload(&self) -> Result<PutPayload, LeaseError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| LeaseError::Damaged {
            message: e.to_string(),
        })?;
        Ok(PutPayload::from(bytes))
    }
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A live run holds it.
    #[error("held by {holder}")]
    Held {
        /// The holder, described.
        holder: String,
        /// The holder's renewal age limit in seconds.
        ttl_secs: u64,
    },
    /// The store cannot do conditional writes.
    #[error(
        "the store does not support conditional writes (create-if-absent and e-tag updates), \
         which the output's lease needs: {source}"
    )]
    Unsupported {
        /// The store's answer.
        #[source]
        source: object_store::Error,
    },
    /// The object is not a lease parallel-run wrote.
    #[error("is not a lease written by parallel-run ({message}): delete it if no run is using the output")]
    Damaged {
        /// What is wrong.
        message: String,
    },
    /// A request failed.
    #[error("{operation} failed: {source}")]
    Store {
        /// The request, e.g. `PUT (create-if-absent)`.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Other runs keep replacing the lease.
    #[error("other runs keep replacing it; run one at a time")]
    Contended,
}

/// A held lease; renewed in the background until [`OutputLease::release`] (or dropped: the
/// renewals stop and the object stays, stale after [`LEASE_TTL`]).
pub struct OutputLease {
    store: Arc<dyn ObjectStore>,
    object: ObjectPath,
    state: Arc<LeaseState>,
    renewal: tokio::task::JoinHandle<()>,
    taken_over: Option<String>,
}

type LostCallback = Box<dyn Fn(&str) + Send + Sync>;

struct LeaseState {
    holder: Mutex<LeaseHolder>,
    version: Mutex<UpdateVersion>,
    run: AtomicU32,
    /// Why the lease was lost (another run took it over), once it was.
    lost: Mutex<Option<String>>,
    on_lost: Mutex<Option<LostCallback>>,
}

impl std::fmt::Debug for OutputLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputLease")
            .field("object", &self.object)
            .finish()
    }
}

impl OutputLease {
    /// Takes the lease `object` in `store` for this process: creates it, or takes over a stale
    /// one. A live holder is [`LeaseError::Held`].
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        object: ObjectPath,
    ) -> Result<OutputLease, LeaseError> {
        Self::acquire_with(store, object, RENEW_INTERVAL).await
    }

    /// [`OutputLease::acquire`] renewing every `renew_every`.
    pub async fn acquire_with(
        store: Arc<dyn ObjectStore>,
        object: ObjectPath,
        renew_every: Duration,
    ) -> Result<OutputLease, LeaseError> {
        let mut holder = LeaseHolder::this_process();
        // Three rounds: the lease may be released or taken over between our requests.
        for _ in 0..3 {
            holder.renewed = unix_now();
            let created = store
                .put_opts(
                    &object,
                    holder.payload()?,
                    PutOptions::from(PutMode::Create),
                )
                .await;
            let existing = match created {
                Ok(put) => return Ok(Self::held(store, object, holder, put, None, renew_every)),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    match store.get(&object).await {
                        Ok(found) => found,
                        // Released in the meantime: create it again.
                        Err(object_store::Error::NotFound { .. }) => continue,
                        Err(source) => {
                            return Err(LeaseError::Store {
                                operation: "GET",
                                source,
                            })
                        }
                    }
                }
                Err(source @ object_store::Error::NotImplemented { .. }) => {
                    return Err(LeaseError::Unsupported { source })
                }
                Err(source) => {
                    return Err(LeaseError::Store {
                        operation: "PUT (create-if-absent)",
                        source,
                    })
                }
            };
            let version = UpdateVersion {
                e_tag: existing.meta.e_tag.clone(),
                version: existing.meta.version.clone(),
            };
            let bytes = existing.bytes().await.map_err(|source| LeaseError::Store {
                operation: "GET",
                source,
            })?;
            let old: LeaseHolder =
                serde_json::from_slice(&bytes).map_err(|e| LeaseError::Damaged {
                    message: e.to_string(),
                })?;
            let now = unix_now();
            let Some(why) = old.stale_reason(now, &holder) else {
                return Err(LeaseError::Held {
                    holder: old.describe(now),
                    ttl_secs: old.ttl_secs,
                });
            };
            let taken = store
                .put_opts(
                    &object,
                    holder.payload()?,
                    PutOptions::from(PutMode::Update(version)),
                )
                .await;
            match taken {
                Ok(put) => {
                    let note = format!("took over the lease of {} ({why})", old.describe(now));
                    return Ok(Self::held(
                        store,
                        object,
                        holder,
                        put,
                        Some(note),
                        renew_every,
                    ));
                }
                // Another run changed it first: look again.
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::NotFound { .. }) => continue,
                Err(source @ object_store::Error::NotImplemented { .. }) => {
                    return Err(LeaseError::Unsupported { source })
                }
                Err(source) => {
                    return Err(LeaseError::Store {
                        operation: "PUT (if e-tag matches)",
                        source,
                    })
                }
            }
        }
        Err(LeaseError::Contended)
    }

    fn held(
        store: Arc<dyn ObjectStore>,
        object: ObjectPath,
        holder: LeaseHolder,
        put: PutResult,
        taken_over: Option<String>,
        renew_every: Duration,
    ) -> OutputLease {
        let state = Arc::new(LeaseState {
            holder: Mutex::new(holder),
            version: Mutex::new(UpdateVersion::from(put)),
            run: AtomicU32::new(0),
            lost: Mutex::new(None),
            on_lost: Mutex::new(None),
        });
        let renewal = tokio::spawn(renew(
            store.clone(),
            object.clone(),
            state.clone(),
            renew_every,
        ));
        OutputLease {
            store,
            object,
            state,
            renewal,
            taken_over,
        }
    }

    /// What was taken over (a stale lease, described), if anything.
    pub fn taken_over(&self) -> Option<&str> {
        self.taken_over.as_deref()
    }

    /// The run number to name in the lease from its next renewal.
    pub fn set_run(&self, run: u32) {
        self.state.run.store(run, Ordering::Relaxed);
    }

    /// Why the lease was lost (another run took it over), if it was.
    pub fn lost(&self) -> Option<String> {
        lock(&self.state.lost).clone()
    }

    /// Calls `f` with the reason when the lease is lost (at once if it already is).
    pub fn on_lost(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        if let Some(why) = self.lost() {
            f(&why);
            return;
        }
        *lock(&self.state.on_lost) = Some(Box::new(f));
    }

    /// Stops the renewals and deletes the lease (unless another run took it over). Returns
    /// the store's error when the delete failed (the lease then goes stale).
    pub async fn release(self) -> Result<(), LeaseError> {
        // A renewal in flight cannot bring it back: it is conditional on the e-tag.
        self.renewal.abort();
        if self.lost().is_some() {
            return Ok(());
        }
        match self.store.delete(&self.object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(LeaseError::Store {
                operation: "DELETE",
                source,
            }),
        }
    }
}

impl Drop for OutputLease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Renews the lease every `every` until it is lost or the task is aborted. A renewal that
/// fails for another reason (the store is down) is tried again at the next turn: the lease
/// stays ours unless another run takes it over once it is stale.
async fn renew(
    store: Arc<dyn ObjectStore>,
    object: ObjectPath,
    state: Arc<LeaseState>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let (payload, version) = {
            let mut holder = lock(&state.holder);
            holder.renewed = unix_now();
            holder.renewals += 1;
            let run = state.run.load(Ordering::Relaxed);
            if run > 0 {
                holder.run = Some(run);
            }
            let Ok(payload) = holder.payload() else {
                continue;
            };
            (payload, lock(&state.version).clone())
        };
        match store
            .put_opts(&object, payload, PutOptions::from(PutMode::Update(version)))
            .await
        {
            Ok(put) => *lock(&state.version) = UpdateVersion::from(put),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => {
                let why = format!(
                    "the output's lease {object} was taken over or removed by another run: this \
                     run stops so that two runs do not write one output"
                );
                tracing::error!("{why}");
                *lock(&state.lost) = Some(why.clone());
                if let Some(f) = lock(&state.on_lost).as_ref() {
                    f(&why);
                }
                return;
            }
            Err(e) => tracing::warn!("renewing the output's lease {object} failed: {e}"),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default()
}

fn process_exists(pid: u32) -> bool {
    FsPath::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn object() -> ObjectPath {
        ObjectPath::from("out/.parallel_run/lease.json")
    }

    async fn write(store: &InMemory, holder: &LeaseHolder) {
        store
            .put(&object(), holder.payload().unwrap())
            .await
            .unwrap();
    }

    #[test]
    fn a_lease_is_stale_when_old_or_when_its_process_on_this_machine_is_gone() {
        let me = LeaseHolder::this_process();
        let now = me.renewed;
        let live = LeaseHolder {
            pid: 1,
            ..me.clone()
        };
        assert_eq!(live.stale_reason(now, &me), None, "pid 1 exists");
        let old = LeaseHolder {
            renewed: now - 61,
            host: "elsewhere".into(),
            ..me.clone()
        };
        assert!(old.stale_reason(now, &me).unwrap().contains("61 s ago"));
        let elsewhere = LeaseHolder {
            host: "elsewhere".into(),
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert_eq!(elsewhere.stale_reason(now, &me), None, "not this machine");
        if !me.boot_id.is_empty() {
            let gone = LeaseHolder {
                pid: u32::MAX - 1,
                ..me.clone()
            };
            assert!(gone.stale_reason(now, &me).unwrap().contains("no longer"));
        }
        assert_eq!(me.stale_reason(now, &me), None, "this very process");
    }

    #[tokio::test]
    async fn a_live_lease_is_refused_a_stale_one_taken_over_and_a_released_one_gone() {
        let store = Arc::new(InMemory::new());
        let first = OutputLease::acquire(store.clone(), object()).await.unwrap();
        assert!(first.taken_over().is_none());
        // The same process asks again (a second job in one process): refused.
        let e = OutputLease::acquire(store.clone(), object())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, LeaseError::Held { holder, .. } if holder.contains(&format!("process {}", std::process::id()))),
            "{e}"
        );
        drop(first);
        // A holder on another machine that stopped renewing 2 minutes ago.
        let mut old = LeaseHolder::this_process();
        old.host = "lost-vm".into();
        old.renewed -= 120;
        write(&store, &old).await;
        let second = OutputLease::acquire(store.clone(), object()).await.unwrap();
        let note = second.taken_over().unwrap();
        assert!(
            note.contains("lost-vm") && note.contains("120 s ago"),
            "{note}"
        );
        second.release().await.unwrap();
        assert!(matches!(
            store.head(&object()).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_lease_taken_over_behind_its_holders_back_is_reported_lost() {
        let store = Arc::new(InMemory::new());
        let lease = OutputLease::acquire_with(store.clone(), object(), Duration::from_millis(20))
            .await
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        lease.on_lost(move |why| {
            let _ = tx.send(why.to_string());
        });
        // Another run overwrote it (e.g. it judged the lease stale).
        let mut other = LeaseHolder::this_process();
        other.host = "other".into();
        write(&store, &other).await;
        // The bound only stops a broken build from hanging.
        let why = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
        assert!(why.contains("taken over"), "{why}");
        assert!(lease.lost().is_some());
        // Not ours any more: releasing leaves the other run's lease alone.
        lease.release().await.unwrap();
        assert!(store.head(&object()).await.is_ok());
    }

    #[tokio::test]
    async fn renewals_rewrite_the_lease() {
        let store = Arc::new(InMemory::new());
        let lease = OutputLease::acquire_with(store.clone(), object(), Duration::from_millis(10))
            .await
            .unwrap();
        lease.set_run(3);
        let renewed = async {
            loop {
                let bytes = store.get(&object()).await.unwrap().bytes().await.unwrap();
                let holder: LeaseHolder = serde_json::from_slice(&bytes).unwrap();
                if holder.renewals > 0 && holder.run == Some(3) {
                    return holder;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        // The bound only stops a broken build from hanging.
        let holder = tokio::time::timeout(Duration::from_secs(60), renewed)
            .await
            .unwrap();
        assert_eq!(holder.pid, std::process::id());
        lease.release().await.unwrap();
    }
}
