//! A cluster executor's worker logs: the Python workers of a cluster run write their
//! `stdout`, `stderr`, `entry_script_log` (and `metrics`) files into a folder of the executor
//! itself, under a node folder named after the executor (`user/stdout/<host>-<pid>/
//! process000.stdout.txt`), and the executor copies that folder through the shared store
//! ([`SharedStaging::copy_to_output`]) into the output's log folder
//! (`<output>/logs/user/stdout/<host>-<pid>/...`, outside the staging area).
//!
//! One mechanism for every output: a shared folder and an object-storage URL get their logs
//! the same way, and nothing is written twice. A file is copied whole when it changed since
//! its last copy (worker logs only grow, so a copy replaces the previous one with a longer
//! one): every [`copy_every`] (10 s) while a task of the run is running on the executor, and when a
//! task's partition ends (after its workers stopped, so their last lines are in). A file of
//! more than [`PERIODIC_LIMIT`] bytes is copied only at a partition's end (a large log is
//! not uploaded again every few seconds). What an executor killed with SIGKILL had written
//! after its last copy is lost: the output keeps the copy of the last period.
//!
//! The executor's folder is `$TMPDIR/parallel-run-executor-logs/<host>-<pid>/<run>/`: one
//! per run of the driver (the spec's [`OperatorSpec::run`]), so two runs of one job on a
//! long-lived executor do not mix their lines. It stays while the executor runs (a worker
//! may outlive a task); the first cluster task of a later executor process on the host
//! removes the folders of the executors that no longer run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, SystemTime};

use datafusion::common::runtime::SpawnedTask;

use crate::exec::shared::{SharedStaging, SharedStoreError};
use crate::exec::OperatorSpec;

/// How often a running executor copies its workers' logs into the output, by default.
pub const COPY_EVERY: Duration = Duration::from_secs(10);

/// The executor's environment variable that sets the copy period in seconds (at least 1).
pub const COPY_SECONDS_VARIABLE: &str = "PARALLEL_RUN_LOG_COPY_SECONDS";

/// How often this executor copies: [`COPY_SECONDS_VARIABLE`] when set to a whole number of
/// seconds of at least 1, else [`COPY_EVERY`] (an unusable value is warned about).
pub fn copy_every() -> Duration {
    let Ok(value) = std::env::var(COPY_SECONDS_VARIABLE) else {
        return COPY_EVERY;
    };
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds >= 1 => Duration::from_secs(seconds),
        _ => {
            tracing::warn!(
                "{COPY_SECONDS_VARIABLE}={value:?} is not a whole number of seconds of at \
                 least 1: the worker logs are copied every {} s",
                COPY_EVERY.as_secs()
            );
            COPY_EVERY
        }
    }
}

/// Files larger than this are copied only when a partition ends, not every period.
pub const PERIODIC_LIMIT: u64 = 64 << 20;

/// Where this executor's workers of a cluster run log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorLogs {
    /// The workers' log folder (their `log_dir`) on this executor.
    pub dir: PathBuf,
    /// The node folder in the log layout: this executor's name, path-safe (`host-4242`).
    pub node: String,
}

impl ExecutorLogs {
    /// The log folder of this executor for the cluster run of `spec`; `None` when `spec` is
    /// not a cluster run's (no shared store or no run identity: the workers log into the
    /// job's own `log_dir`).
    pub fn of(spec: &OperatorSpec) -> Option<Self> {
        spec.shared()?;
        let run = spec.run()?;
        let node = node_folder(&super::node_name());
        let root = std::env::temp_dir().join("parallel-run-executor-logs");
        static TIDIED: std::sync::Once = std::sync::Once::new();
        TIDIED.call_once(|| remove_dead_executors(&root, &node));
        let dir = root.join(&node).join(node_folder(run));
        Some(ExecutorLogs { dir, node })
    }
}

/// Removes the folders in `root` of this host's executors that no longer run (`<host>-<pid>`
/// with no process `pid`): their logs were copied into their outputs. Best effort.
fn remove_dead_executors(root: &Path, node: &str) {
    let Some((host, _)) = node.rsplit_once('-') else {
        return;
    };
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(host)
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::debug!("removing {}: {e}", entry.path().display());
            }
        }
    }
}

/// `node` (an executor's `HOST:PID`) as a folder name: characters other than ASCII letters,
/// digits, `.`, `_` and `-` become `-` (`host:4242` -> `host-4242`).
pub fn node_folder(node: &str) -> String {
    let folder: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    match folder.as_str() {
        "" | "." | ".." => format!("node{folder}"),
        _ => folder,
    }
}

/// Copies one executor log folder into the output's `logs/` (see the module docs). One per
/// folder in a process, shared by the tasks of the run running on it.
pub struct LogShipper {
    local: PathBuf,
    staging: Arc<SharedStaging>,
    /// The length and modification time of each file when it was last copied.
    copied: tokio::sync::Mutex<HashMap<PathBuf, (u64, Option<SystemTime>)>>,
}

impl std::fmt::Debug for LogShipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogShipper")
            .field("local", &self.local)
            .field("staging", &self.staging)
            .finish()
    }
}

/// The shippers alive in this process, by folder.
static SHIPPERS: LazyLock<Mutex<HashMap<PathBuf, Weak<LogShipper>>>> =
    LazyLock::new(Default::default);

impl LogShipper {
    /// The shipper of the folder `local` into the output of `staging`: the one a running
    /// task of this process already has, else a new one.
    pub fn of(local: PathBuf, staging: Arc<SharedStaging>) -> Arc<Self> {
        let mut shippers = SHIPPERS.lock().unwrap_or_else(|p| p.into_inner());
        shippers.retain(|_, shipper| shipper.strong_count() > 0);
        if let Some(shipper) = shippers.get(&local).and_then(Weak::upgrade) {
            return shipper;
        }
        let shipper = Arc::new(LogShipper {
            local: local.clone(),
            staging,
            copied: Default::default(),
        });
        shippers.insert(local, Arc::downgrade(&shipper));
        shipper
    }

    /// The folder it copies.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// Copies the files that changed since their last copy (all of them when `at_end`; files
    /// of more than [`PERIODIC_LIMIT`] bytes only then). Returns how many were copied; the
    /// first failure ends the pass (the next pass tries again).
    pub async fn copy(&self, at_end: bool) -> Result<usize, SharedStoreError> {
        let mut copied = self.copied.lock().await;
        let mut n = 0;
        for (path, relative, len, modified) in files_below(&self.local) {
            if copied.get(&path) == Some(&(len, modified)) {
                continue;
            }
            if !at_end && len > PERIODIC_LIMIT {
                continue;
            }
            self.staging
                .copy_to_output(&path, len, &format!("logs/{relative}"))
                .await?;
            copied.insert(path, (len, modified));
            n += 1;
        }
        Ok(n)
    }

    /// [`LogShipper::copy`], a failure logged (the job goes on: its results are not in the
    /// logs).
    pub async fn copy_logged(&self, at_end: bool) {
        if let Err(e) = self.copy(at_end).await {
            tracing::warn!(
                "copying the worker logs in {} into the output: {e}",
                self.local.display()
            );
        }
    }

    /// Copies every `period` until the returned task is dropped (a failed copy is logged and
    /// tried again at the next period).
    pub fn every(self: &Arc<Self>, period: Duration) -> SpawnedTask<()> {
        let shipper = Arc::downgrade(self);
        SpawnedTask::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: nothing is written yet.
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(shipper) = shipper.upgrade() else {
                    return;
                };
                shipper.copy_logged(false).await;
            }
        })
    }
}

/// The copy at a partition's end: [`FinalCopy::run`] awaits it when the partition ended
/// (before its task is reported done); dropped without running (the task was cancelled, or
/// failed and its stream was dropped), it copies in the background.
pub struct FinalCopy(Option<Arc<LogShipper>>);

impl FinalCopy {
    /// The final copy of `shipper`'s folder (`None`: nothing to copy).
    pub fn new(shipper: Option<Arc<LogShipper>>) -> Self {
        FinalCopy(shipper)
    }

    /// Copies now.
    pub async fn run(mut self) {
        if let Some(shipper) = self.0.take() {
            shipper.copy_logged(true).await;
        }
    }
}

impl Drop for FinalCopy {
    fn drop(&mut self) {
        let Some(shipper) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { shipper.copy_logged(true).await });
        }
    }
}

/// The files below `dir` with their path relative to it (`/`-separated), length and
/// modification time, in name order. A missing folder has none (no worker started yet);
/// entries that cannot be read are skipped.
fn files_below(dir: &Path) -> Vec<(PathBuf, String, u64, Option<SystemTime>)> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(relative) = entry.path().strip_prefix(dir) else {
            continue;
        };
        let relative: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        files.push((
            entry.path().to_path_buf(),
            relative.join("/"),
            meta.len(),
            meta.modified().ok(),
        ));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ItemKind;
    use crate::config::{JobSettings, OutputAction, ParallelRunConfig};
    use crate::exec::shared::SharedLocation;
    use crate::exec::InputInfo;
    use std::io::Write;

    #[test]
    fn node_folders_are_path_safe() {
        assert_eq!(node_folder("host.example:4242"), "host.example-4242");
        assert_eq!(node_folder("a/b\\c d"), "a-b-c-d");
        assert_eq!(node_folder(".."), "node..");
        assert_eq!(node_folder(""), "node");
    }

    #[test]
    fn the_folders_of_executors_gone_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let me = format!("host-{}", std::process::id());
        // No process has a pid this large (pid_max is at most 2^22).
        for name in [me.as_str(), "host-99999999", "other-99999999", "host-x"] {
            std::fs::create_dir_all(root.path().join(name).join("run1")).unwrap();
        }
        remove_dead_executors(root.path(), &me);
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![me.clone(), "host-x".into(), "other-99999999".into()]
        );
    }

    #[test]
    fn only_a_cluster_runs_workers_log_on_the_executor() {
        let config = ParallelRunConfig::new("score.py", 5, OutputAction::AppendRow);
        let spec = OperatorSpec::new(
            JobSettings::new(config, "/out"),
            vec![InputInfo::new("t", ItemKind::Rows)],
            None,
        )
        .unwrap();
        assert_eq!(ExecutorLogs::of(&spec), None, "a local run");
        let shared = spec.with_shared(SharedLocation::Folder("/out".into()));
        assert_eq!(ExecutorLogs::of(&shared), None, "no run identity");
        let a = ExecutorLogs::of(&shared.clone().with_run("run1-a")).unwrap();
        let b = ExecutorLogs::of(&shared.with_run("run2-b")).unwrap();
        assert_eq!(a.node, node_folder(&crate::exec::node_name()));
        assert!(!a.node.contains(':'), "{}", a.node);
        assert_ne!(a.dir, b.dir, "each run has its own folder");
        assert!(a.dir.ends_with(format!("{}/run1-a", a.node)), "{:?}", a.dir);
    }

    fn append(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn changed_logs_are_copied_whole_into_the_outputs_log_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let local = dir.path().join("executor");
        let staging =
            Arc::new(SharedStaging::open(&SharedLocation::Folder(out.clone()), "h:1").unwrap());
        let shipper = LogShipper::of(local.clone(), staging.clone());
        assert!(
            Arc::ptr_eq(&shipper, &LogShipper::of(local.clone(), staging.clone())),
            "one shipper per folder while one is alive"
        );
        assert_eq!(shipper.copy(false).await.unwrap(), 0, "no folder yet");

        let stdout = local.join("user/stdout/h-1/process000.stdout.txt");
        let stderr = local.join("user/stderr/h-1/process000.stderr.txt");
        append(&stdout, "first\n");
        append(&stderr, "warning\n");
        assert_eq!(shipper.copy(false).await.unwrap(), 2);
        let copy = out.join("logs/user/stdout/h-1/process000.stdout.txt");
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "first\n");
        assert_eq!(shipper.copy(false).await.unwrap(), 0, "nothing changed");

        append(&stdout, "second\n");
        assert_eq!(
            shipper.copy(true).await.unwrap(),
            1,
            "only the changed file"
        );
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "first\nsecond\n");
        assert_eq!(
            std::fs::read_to_string(out.join("logs/user/stderr/h-1/process000.stderr.txt"))
                .unwrap(),
            "warning\n"
        );
        // Outside the staging area: clearing it leaves the logs.
        staging.clear().await.unwrap();
        assert!(copy.is_file());
    }

    #[tokio::test]
    async fn a_large_log_is_copied_in_parts_at_the_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let local = dir.path().join("executor");
        let staging =
            Arc::new(SharedStaging::open(&SharedLocation::Folder(out.clone()), "h:2").unwrap());
        let shipper = LogShipper::of(local.clone(), staging);
        let big = local.join("user/stdout/h-2/process001.stdout.txt");
        let line = "x".repeat(1023) + "\n";
        let text = line.repeat(usize::try_from(PERIODIC_LIMIT / 1024).unwrap() + 1);
        append(&big, &text);
        assert_eq!(shipper.copy(false).await.unwrap(), 0, "not every period");
        assert_eq!(shipper.copy(true).await.unwrap(), 1);
        let copy = std::fs::read(out.join("logs/user/stdout/h-2/process001.stdout.txt")).unwrap();
        assert_eq!(copy.len(), text.len());
        assert!(copy == text.as_bytes(), "the same bytes");
    }

    #[tokio::test]
    async fn a_final_copy_dropped_before_it_ran_copies_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let local = dir.path().join("executor");
        let staging =
            Arc::new(SharedStaging::open(&SharedLocation::Folder(out.clone()), "h:4").unwrap());
        let shipper = LogShipper::of(local.clone(), staging);
        append(&local.join("user/stderr/h-4/p.txt"), "Traceback\n");
        // Awaited: copied when it returns.
        FinalCopy::new(Some(shipper.clone())).run().await;
        let copy = out.join("logs/user/stderr/h-4/p.txt");
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "Traceback\n");
        // A cancelled task drops it: the copy still happens.
        append(&local.join("user/stderr/h-4/p.txt"), "cancelled\n");
        drop(FinalCopy::new(Some(shipper)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&copy).unwrap() != "Traceback\ncancelled\n" {
            assert!(std::time::Instant::now() < deadline, "never copied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(FinalCopy::new(None));
    }

    #[tokio::test]
    async fn the_periodic_copy_runs_while_its_task_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let local = dir.path().join("executor");
        let staging =
            Arc::new(SharedStaging::open(&SharedLocation::Folder(out.clone()), "h:3").unwrap());
        let shipper = LogShipper::of(local.clone(), staging);
        let copying = shipper.every(Duration::from_millis(50));
        append(&local.join("user/stdout/h-3/p.txt"), "tick\n");
        let copy = out.join("logs/user/stdout/h-3/p.txt");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !copy.is_file() {
            assert!(std::time::Instant::now() < deadline, "never copied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(copying);
    }
}
