//! The SQL way in: a `parallel_run` configuration namespace, a `parallel_run(...)` relation
//! usable anywhere a table is, and a runner for files of SQL statements
//! (`parallel-run sql JOB.sql`).
//!
//! ```sql
//! CREATE EXTERNAL TABLE reviews STORED AS PARQUET LOCATION 'data/reviews.parquet';
//! SET parallel_run.process_count_per_node = 2;
//! SET parallel_run.mini_batch_size = '1MB';
//! COPY (
//!   SELECT * FROM parallel_run((SELECT id, text FROM reviews WHERE lang = 'en'),
//!                              entry_script => 'score.py', error_threshold => 10)
//! ) TO 'out/scores.parquet' STORED AS PARQUET;
//! ```
//!
//! - **Parameters** ([`config`]): `SET parallel_run.KEY = 'value'` for every scalar
//!   `parallel_run_config` key (plus `python`, `pip`, `arguments`, `output_format`,
//!   `preserve_order`, `mini_batch_format`, `report_dir`, `output_schema`), checked when set
//!   with the YAML job's rules and messages. Named arguments of `parallel_run(...)` take the
//!   same keys and override the SET values. `output_action` defaults to `append_row` and
//!   `node_count` to 1; `entry_script` and `error_threshold` are required.
//! - **The relation** ([`relation`]): inputs are a parenthesized subquery or a table name
//!   (several inputs are run in one job, in order); its columns are run()'s result columns,
//!   from `output_schema => 'id BIGINT, score DOUBLE'` or from the probe ([`probe`]: one
//!   worker runs `init()` and the first mini-batch at planning time). Its rows can be filtered,
//!   joined, aggregated and written with `COPY`.
//! - **Semantics** ([`exec`]): the same operator as a YAML job ([`crate::exec::ParallelRunExec`]),
//!   so the same mini-batches, retries, timeouts and thresholds; only rows of succeeded
//!   mini-batches reach the query. A threshold exceeded fails the statement. EXPLAIN shows
//!   `ParallelRunReportExec` over `ParallelRunExec` with its settings (with a sort of each
//!   worker's rows between them when the query orders the rows: the report operator passes
//!   rows through unchanged, so it keeps its input's ordering and partitioning).
//! - **The report** goes to `report_dir`: the files a YAML job writes under `<output>/logs/`
//!   (`job_result.txt`, `job_summary.json`, `job_progress_overview.txt`,
//!   `sys/job_report/processed_mini-batches.csv`, `sys/events.txt`, `user/...`). Default: for a
//!   `COPY ... TO 'out/scores.parquet'` statement run by [`SqlRunner`], `out/scores.parquet.logs`;
//!   otherwise `parallel_run_logs` in the base folder. Two runs of one statement with the same
//!   folder get `-2`, `-3`, ... suffixes. The folder is created when the query executes, not
//!   when it is planned (EXPLAIN, a statement that fails to plan), except for the probe's
//!   worker logs (`user/`, a Python script without `output_schema`); the runner prints its
//!   path. `summary.output_rows` counts the rows the relation returned.
//! - **Paths**: relative paths in `parallel_run` values (entry_script, source_directory,
//!   python, report_dir) resolve against the base folder (`base_dir` of [`SqlOptions`]). The
//!   runner also resolves `CREATE EXTERNAL TABLE ... LOCATION` and `COPY ... TO` paths against
//!   it; the CLI's base folder is the SQL file's folder (the current folder for `-e`).
//! - **Exit codes** (CLI): 0 success; 42 a job ran and failed (a threshold exceeded, init()
//!   failing, nothing succeeded, a result not fitting the output schema), also when the
//!   user's init() or run() fails in the probe; 2 a usage or configuration error (a missing
//!   SQL file, bad SQL, an unknown table, a bad SET value or argument, any other planning
//!   error, the optimizer's included).
//!
//! From Rust, [`register`] makes `parallel_run(...)` and the namespace available to a
//! session's SQL:
//!
//! ```no_run
//! # async fn demo() -> parallel_run::Result<()> {
//! let ctx = datafusion::prelude::SessionContext::new();
//! let ctx = parallel_run::sql::register(&ctx, parallel_run::scripts::builtin_registry())?;
//! ctx.sql("CREATE TABLE t AS VALUES (1), (2), (3)").await?;
//! let rows = ctx
//!     .sql("SELECT * FROM parallel_run(t, entry_script => 'rust:echo', error_threshold => 0)")
//!     .await?
//!     .collect()
//!     .await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod exec;
pub mod ledger_table;
pub mod probe;
pub mod relation;
pub mod runner;

pub use config::{ParallelRunOptions, SqlJob};
pub use exec::{ParallelRunReportExec, SqlQueryPlanner, SqlRun};
pub use relation::ParallelRunRelationPlanner;
pub use runner::{SqlRunner, StatementOutcome};

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;

use crate::error::{PrsError, Result};
use crate::exec::OperatorSpec;
use crate::lock;
use crate::worker::ScriptRegistry;

/// How `parallel_run(...)` is set up on a session.
#[derive(Debug, Clone, Default)]
pub struct SqlOptions {
    /// The Rust entry scripts `entry_script => 'rust:NAME'` can name.
    pub registry: ScriptRegistry,
    /// Relative paths in `parallel_run` values resolve against this folder (default: the
    /// current folder).
    pub base_dir: Option<PathBuf>,
}

impl SqlOptions {
    /// Options with `registry` and paths relative to the current folder.
    pub fn new(registry: ScriptRegistry) -> Self {
        SqlOptions {
            registry,
            base_dir: None,
        }
    }

    /// Relative paths resolve against `dir`.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }
}

/// Makes `parallel_run(...)` and `SET parallel_run.*` available to the SQL of a session: the
/// returned context shares `ctx`'s tables and settings, with the `parallel_run` namespace,
/// the relation planner and a query planner that knows the operator.
pub fn register(ctx: &SessionContext, registry: ScriptRegistry) -> Result<SessionContext> {
    register_with(ctx, SqlOptions::new(registry))
}

/// [`register`] with all options.
pub fn register_with(ctx: &SessionContext, options: SqlOptions) -> Result<SessionContext> {
    register_shared(ctx, options).map(|(ctx, _)| ctx)
}

/// [`register_with`], also returning what the planners share (the runner needs it).
pub(crate) fn register_shared(
    ctx: &SessionContext,
    options: SqlOptions,
) -> Result<(SessionContext, Arc<SqlShared>)> {
    let shared = Arc::new(SqlShared::new(options));
    let mut config = ctx.copied_config();
    if config
        .options()
        .extensions
        .get::<ParallelRunOptions>()
        .is_none()
    {
        config
            .options_mut()
            .extensions
            .insert(ParallelRunOptions::default());
    }
    let state = crate::session::with_query_planner(
        ctx.state(),
        Some(config),
        Arc::new(SqlQueryPlanner::new(shared.clone())),
    );
    let ctx = SessionContext::new_with_state(state);
    let weak = ctx.state_weak_ref();
    let getter: SessionGetter = Box::new(move || weak.upgrade().map(|s| s.read().clone()));
    let _ = shared.session.set(getter);
    ctx.register_relation_planner(Arc::new(ParallelRunRelationPlanner::new(shared.clone())))?;
    ctx.register_udtf(
        "parallel_run_ledger",
        Arc::new(ledger_table::LedgerFunction {
            base_dir: shared.base_dir.clone(),
        }),
    );
    Ok((ctx, shared))
}

/// Returns a copy of the session's state, when the session still exists.
type SessionGetter = Box<dyn Fn() -> Option<SessionState> + Send + Sync>;

/// What the relation planner, the physical planner and the runner of one session share.
pub struct SqlShared {
    registry: ScriptRegistry,
    base_dir: PathBuf,
    session: OnceLock<SessionGetter>,
    runs: Mutex<Vec<Weak<SqlRun>>>,
    statement: Mutex<StatementScope>,
}

/// What the runner tells the planner about the statement being planned.
#[derive(Debug, Default)]
struct StatementScope {
    /// The statement's `COPY ... TO` target (the default report folder goes beside it).
    copy_target: Option<PathBuf>,
    /// The runs planned during the statement, when the runner collects them.
    runs: Option<Vec<Arc<SqlRun>>>,
    /// `parallel_run(...)` calls planned so far in the statement.
    calls: u64,
}

impl fmt::Debug for SqlShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlShared")
            .field("registry", &self.registry)
            .field("base_dir", &self.base_dir)
            .finish()
    }
}

impl SqlShared {
    fn new(options: SqlOptions) -> Self {
        SqlShared {
            registry: options.registry,
            base_dir: options.base_dir.unwrap_or_else(|| PathBuf::from(".")),
            session: OnceLock::new(),
            runs: Mutex::new(Vec::new()),
            statement: Mutex::new(StatementScope::default()),
        }
    }

    /// The registered Rust entry scripts.
    pub(crate) fn registry(&self) -> &ScriptRegistry {
        &self.registry
    }

    /// The folder relative paths resolve against.
    pub(crate) fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// A copy of the session's current state (tables, settings, planners).
    pub(crate) fn session_state(&self) -> Option<SessionState> {
        self.session.get().and_then(|get| get())
    }

    /// The run of `spec`, if it is one of ours (specs compare by value; two calls of a
    /// statement differ by their call number).
    pub(crate) fn run_for(&self, spec: &OperatorSpec) -> Option<Arc<SqlRun>> {
        lock(&self.runs)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|run| run.spec().as_ref() == spec)
    }

    /// The number of the next `parallel_run(...)` call of the statement being planned (from 0
    /// for each statement the runner plans; counting on over the session otherwise).
    pub(crate) fn next_call(&self) -> u64 {
        let mut statement = lock(&self.statement);
        let call = statement.calls;
        statement.calls += 1;
        call
    }

    /// Records a planned run.
    pub(crate) fn add_run(&self, run: &Arc<SqlRun>) {
        let mut runs = lock(&self.runs);
        runs.retain(|r| r.strong_count() > 0);
        runs.push(Arc::downgrade(run));
        if let Some(collected) = lock(&self.statement).runs.as_mut() {
            collected.push(run.clone());
        }
    }

    /// The report folder of a new run: `given`, or the default (see the module docs), made
    /// unique among the runs alive.
    pub(crate) fn report_dir_for(&self, given: Option<PathBuf>) -> PathBuf {
        let base = given.unwrap_or_else(|| match &lock(&self.statement).copy_target {
            Some(target) => {
                let text = target.to_string_lossy();
                PathBuf::from(format!("{}.logs", text.trim_end_matches('/')))
            }
            None => self.base_dir.join("parallel_run_logs"),
        });
        let taken: Vec<PathBuf> = lock(&self.runs)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|run| run.report_dir().to_path_buf())
            .collect();
        let mut candidate = base.clone();
        let mut n = 2;
        while taken.contains(&candidate) {
            candidate = PathBuf::from(format!("{}-{n}", base.to_string_lossy()));
            n += 1;
        }
        candidate
    }

    /// The runner starts planning a statement (`copy_target`: its COPY target, if any).
    pub(crate) fn begin_statement(&self, copy_target: Option<PathBuf>) {
        *lock(&self.statement) = StatementScope {
            copy_target,
            runs: Some(Vec::new()),
            calls: 0,
        };
    }

    /// The runner is done with a statement: the runs planned during it.
    pub(crate) fn end_statement(&self) -> Vec<Arc<SqlRun>> {
        std::mem::take(&mut *lock(&self.statement))
            .runs
            .unwrap_or_default()
    }
}

/// Runs `future` to completion on a thread of its own with its own Tokio runtime, from
/// synchronous code that may itself run inside a runtime (DataFusion's SQL planner).
pub(crate) fn block_on<F>(future: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| PrsError::io("(tokio runtime)", e))?;
                Ok(runtime.block_on(future))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(PrsError::Worker {
                    worker: "planner".into(),
                    message: "a planning task panicked".into(),
                })
            })
    })
}

/// `path` resolved against `base` (see the job file's rule, which this shares).
pub(crate) fn resolve_path(base: &Path, path: &str) -> PathBuf {
    crate::config::resolve_path(base, path)
}

/// The message of a DataFusion error, showing a wrapped [`PrsError`] as itself.
pub(crate) fn error_text(error: &DataFusionError) -> String {
    match error {
        DataFusionError::External(inner) => match inner.downcast_ref::<PrsError>() {
            Some(p) => p.to_string(),
            None => inner.to_string(),
        },
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            error_text(inner)
        }
        DataFusionError::Shared(inner) => error_text(inner),
        other => other.to_string(),
    }
}

/// A DataFusion error as a [`PrsError`]: a wrapped one is recovered (through context and
/// diagnostic layers), anything else stays a DataFusion error.
pub(crate) fn prs_error(error: DataFusionError) -> PrsError {
    match error {
        DataFusionError::Diagnostic(_, inner) => prs_error(*inner),
        DataFusionError::Context(_, inner) => prs_error(*inner),
        other => PrsError::from_datafusion(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_lexically() {
        let base = Path::new("/jobs/a");
        assert_eq!(resolve_path(base, "x/../y"), PathBuf::from("/jobs/a/y"));
        assert_eq!(resolve_path(base, "../../../z"), PathBuf::from("/z"));
        assert_eq!(resolve_path(base, "/abs/./p"), PathBuf::from("/abs/p"));
        assert_eq!(resolve_path(Path::new("."), "."), PathBuf::from("."));
    }

    #[test]
    fn report_folders_default_beside_the_copy_target_and_are_unique() {
        let shared = SqlShared::new(SqlOptions::default().base_dir("/jobs/a"));
        assert_eq!(
            shared.report_dir_for(None),
            PathBuf::from("/jobs/a/parallel_run_logs")
        );
        shared.begin_statement(Some(PathBuf::from("/jobs/a/out/s.parquet")));
        let config = crate::config::ParallelRunConfig::new(
            "rust:echo",
            0,
            crate::config::OutputAction::AppendRow,
        );
        let first = shared.report_dir_for(None);
        assert_eq!(first, PathBuf::from("/jobs/a/out/s.parquet.logs"));
        let settings = crate::config::JobSettings {
            log_dir: first.clone(),
            ..crate::config::JobSettings::new(config, first)
        };
        let spec = OperatorSpec::new(settings, Vec::new(), None).unwrap();
        let run = Arc::new(SqlRun::new("r".into(), Arc::new(spec.clone())));
        shared.add_run(&run);
        assert_eq!(
            shared.report_dir_for(None),
            PathBuf::from("/jobs/a/out/s.parquet.logs-2")
        );
        assert_eq!(
            shared.report_dir_for(Some(PathBuf::from("/r"))),
            PathBuf::from("/r")
        );
        let runs = shared.end_statement();
        assert_eq!(runs.len(), 1);
        assert!(shared.run_for(&spec).is_some(), "found by value");
        assert!(shared.run_for(&spec.clone().with_call(1)).is_none());
        drop((runs, run));
        assert_eq!(
            shared.report_dir_for(None),
            PathBuf::from("/jobs/a/parallel_run_logs"),
            "the COPY hint ends with its statement"
        );
    }
}

#[cfg(test)]
mod register_tests {
    use super::*;

    #[tokio::test]
    async fn tables_registered_before_stay_visible() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE reviews AS VALUES (1), (2), (3)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ctx = register(&ctx, crate::scripts::builtin_registry()).unwrap();
        let rows = ctx
            .sql("SELECT * FROM parallel_run(reviews, entry_script => 'rust:echo', error_threshold => 0, output_schema => 'column1 BIGINT')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }
}
