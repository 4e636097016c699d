//! Running a file of SQL statements: `parallel-run sql JOB.sql` and `parallel-run sql -e "..."`.
//!
//! Statements run in order, each to its end, on a session set up like a YAML job's (inputs read
//! as ordered streams, plain strings from Parquet) with `parallel_run(...)` registered. The
//! first failing statement stops the script. `SELECT` (and `EXPLAIN`) results are printed as
//! tables, at most `max_rows` rows each (every row is still computed: a job always runs to its
//! end); `COPY` prints the number of rows written. After each statement, each
//! `parallel_run(...)` it ran prints PRS's summary sentence and its report folder on stderr.
//!
//! Relative paths resolve against the base folder (the SQL file's folder): `CREATE EXTERNAL
//! TABLE ... LOCATION`, `COPY ... TO`, and the paths among the `parallel_run` values.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;

use crate::error::{PrsError, Result};
use crate::sql::config::PREFIX;
use crate::sql::{probe, prs_error, register_shared, resolve_path, SqlOptions, SqlRun, SqlShared};
use crate::worker::ScriptRegistry;

/// Rows of a result printed by default.
pub const DEFAULT_MAX_ROWS: usize = 50;

/// How long a statement waits for its runs to write their final report after it ended.
const REPORT_WAIT: Duration = Duration::from_secs(30);

/// The `parallel-run sql` subcommand's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SqlArgs {
    /// The SQL file: CREATE EXTERNAL TABLE for inputs, SET parallel_run.KEY for parameters,
    /// SELECT / COPY with parallel_run(...). Relative paths in it resolve against its folder.
    #[arg(required_unless_present = "execute", conflicts_with = "execute")]
    pub file: Option<PathBuf>,
    /// SQL statements to run instead of a file (paths relative to the current folder).
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    pub execute: Option<String>,
    /// Set a parallel_run key before the statements run, e.g. `--set mini_batch_size=10MB`
    /// (as `SET parallel_run.mini_batch_size = '10MB'`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Rows printed per result (the query still runs to its end).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ROWS)]
    pub max_rows: usize,
    /// No run summaries on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `parallel-run sql`; returns the exit code (errors carry their own).
pub async fn run_cli(args: &SqlArgs, registry: ScriptRegistry) -> Result<i32> {
    crate::cli::init_tracing(crate::config::LoggingLevel::Info);
    let cwd = std::env::current_dir().map_err(|e| PrsError::io(".", e))?;
    let (text, base_dir, source) = match (&args.file, &args.execute) {
        (Some(file), None) => {
            let text = crate::config::read_job_file(file)?;
            let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
            let folder = cwd.join(folder.unwrap_or(Path::new(".")));
            (text, folder, file.clone())
        }
        (None, Some(sql)) => (sql.clone(), cwd, PathBuf::from("(-e)")),
        _ => {
            return Err(PrsError::missing(
                "sql",
                "give a SQL file (parallel-run sql JOB.sql) or statements (-e \"...\")",
            ))
        }
    };
    let mut runner = SqlRunner::new(registry, base_dir)?
        .source(source)
        .max_rows(args.max_rows);
    runner.quiet = args.quiet;
    for pair in &args.set {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            PrsError::config(
                "--set",
                pair,
                "expected KEY=VALUE, e.g. mini_batch_size=10MB",
            )
        })?;
        runner.set(key, value)?;
    }
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    runner.run_script(&text, &mut out, &mut err).await?;
    Ok(0)
}

/// Runs SQL statements with `parallel_run(...)` available (see the module docs).
pub struct SqlRunner {
    ctx: SessionContext,
    shared: Arc<SqlShared>,
    base_dir: PathBuf,
    source: PathBuf,
    max_rows: usize,
    quiet: bool,
}

/// What one statement returned.
#[derive(Debug)]
pub struct StatementOutcome {
    /// True for a statement with a result to show (a query, EXPLAIN, COPY); false for DDL and
    /// SET.
    pub has_result: bool,
    /// The first rows of its result (at most `max_rows`).
    pub batches: Vec<RecordBatch>,
    /// All rows of its result.
    pub rows: usize,
    /// The `parallel_run(...)` relations it ran.
    pub runs: Vec<Arc<SqlRun>>,
}

impl SqlRunner {
    /// A runner on a fresh session set up like a YAML job's; relative paths resolve against
    /// `base_dir`.
    pub fn new(registry: ScriptRegistry, base_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::with_context(&crate::input::job_session(), registry, base_dir)
    }

    /// A runner on (a copy of) `ctx`, sharing its tables.
    pub fn with_context(
        ctx: &SessionContext,
        registry: ScriptRegistry,
        base_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        let base_dir = base_dir.into();
        let (ctx, shared) =
            register_shared(ctx, SqlOptions::new(registry).base_dir(base_dir.clone()))?;
        Ok(SqlRunner {
            ctx,
            shared,
            base_dir,
            source: PathBuf::from("(sql)"),
            max_rows: DEFAULT_MAX_ROWS,
            quiet: false,
        })
    }

    /// Names the statements' origin in errors (the SQL file).
    pub fn source(mut self, source: impl Into<PathBuf>) -> Self {
        self.source = source.into();
        self
    }

    /// Rows printed per result.
    pub fn max_rows(mut self, rows: usize) -> Self {
        self.max_rows = rows;
        self
    }

    /// The session the statements run on.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// `SET parallel_run.KEY = 'value'`, checked like the statement.
    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        state
            .config_mut()
            .options_mut()
            .set(&format!("{PREFIX}.{}", key.trim()), value.trim())
            .map_err(prs_error)
    }

    /// Runs every statement of `sql` in order, printing results to `out` and run summaries to
    /// `err`; stops at the first failing statement. Returns the number of statements run.
    pub async fn run_script(
        &self,
        sql: &str,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> Result<usize> {
        let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
            .map_err(|e| self.usage(None, format!("not valid SQL: {e}")))?;
        let count = statements.len();
        for (i, statement) in statements.into_iter().enumerate() {
            let outcome = self.run_statement(i + 1, statement, err).await?;
            if outcome.has_result {
                print_rows(out, &outcome.batches, outcome.rows)?;
            }
        }
        Ok(count)
    }

    /// Runs one statement to its end and reports its runs on `err`.
    pub async fn run_statement(
        &self,
        index: usize,
        statement: DFStatement,
        err: &mut (dyn Write + Send),
    ) -> Result<StatementOutcome> {
        let text = abbreviate(&statement.to_string());
        let (mut statement, copy_target) = resolve_paths(statement, &self.base_dir);
        let staged = match &mut statement {
            DFStatement::CopyTo(copy) => Staged::stage(copy),
            _ => None,
        };
        if let Some(staged) = &staged {
            staged.prepare()?;
        }
        self.shared.begin_statement(copy_target);
        let mut result = self.execute(index, &text, statement).await;
        let runs = self.shared.end_statement();
        for run in &runs {
            wait_for_report(run).await;
        }
        if let Some(staged) = &staged {
            match &result {
                Ok(_) => {
                    if let Err(e) = staged.commit() {
                        result = Err(e);
                    }
                }
                Err(_) => staged.discard(),
            }
        }
        match result {
            Ok(result) => {
                if !self.quiet {
                    for run in &runs {
                        report_run(err, run)?;
                    }
                }
                let has_result = result.is_some();
                let (batches, rows) = result.unwrap_or_default();
                Ok(StatementOutcome {
                    has_result,
                    batches,
                    rows,
                    runs,
                })
            }
            Err(e) => {
                let reason = e.to_string();
                for run in &runs {
                    run.fail_after(&reason);
                    if !self.quiet {
                        report_run(err, run)?;
                    }
                }
                writeln!(err, "parallel-run: statement {index} failed: {text}")
                    .map_err(|e| PrsError::io("(stderr)", e))?;
                Err(e)
            }
        }
    }

    /// Plans and executes one statement; returns the first rows and the row count of a
    /// statement with a result.
    async fn execute(
        &self,
        index: usize,
        text: &str,
        statement: DFStatement,
    ) -> Result<Option<(Vec<RecordBatch>, usize)>> {
        let planning = |e| self.planning_error(index, text, e);
        let plan = self
            .ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(planning)?;
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(planning)?;
        if matches!(frame.logical_plan(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row) {
            // DDL and SET are done by now; what is left is an empty relation.
            return Ok(None);
        }
        // Physical planning (the optimizer included) is still planning: its errors are usage
        // errors too. Only executing the plan runs a job.
        let task_ctx = Arc::new(frame.task_ctx());
        let physical = frame.create_physical_plan().await.map_err(planning)?;
        let mut stream =
            datafusion::physical_plan::execute_stream(physical, task_ctx).map_err(prs_error)?;
        let (mut kept, mut rows) = (Vec::new(), 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(prs_error)?;
            let room = self.max_rows.saturating_sub(rows);
            if room > 0 && batch.num_rows() > 0 {
                kept.push(batch.slice(0, room.min(batch.num_rows())));
            }
            rows += batch.num_rows();
        }
        Ok(Some((kept, rows)))
    }

    /// A planning error: a parallel-run error keeps its kind; DataFusion's own (bad SQL, an
    /// unknown table or column) is a usage error naming the statement.
    fn planning_error(
        &self,
        index: usize,
        text: &str,
        error: datafusion::error::DataFusionError,
    ) -> PrsError {
        match prs_error(error) {
            PrsError::DataFusion(e) => self.usage(Some((index, text)), e.to_string()),
            other => other,
        }
    }

    fn usage(&self, statement: Option<(usize, &str)>, message: String) -> PrsError {
        let message = match statement {
            Some((index, text)) => format!("statement {index} ({text}): {message}"),
            None => message,
        };
        PrsError::JobFile {
            path: self.source.clone(),
            message,
        }
    }
}

/// A local `COPY ... TO` target, written under a staging name beside it and moved into place
/// only when the statement succeeds: like a YAML job's append_row file, a failed job leaves
/// no output (DataFusion itself would leave the rows written before the failure).
#[derive(Debug)]
struct Staged {
    /// Where DataFusion writes: `<parent>/.<name>.parallel_run_staging/<name>`.
    staged: PathBuf,
    /// Where the output goes.
    target: PathBuf,
    /// The staging folder.
    dir: PathBuf,
}

impl Staged {
    /// Redirects a local COPY target to its staging name.
    fn stage(copy: &mut datafusion::sql::parser::CopyToStatement) -> Option<Staged> {
        if copy.target.contains("://") {
            return None;
        }
        let target = PathBuf::from(&copy.target);
        let name = target.file_name()?.to_string_lossy().into_owned();
        let dir = target
            .parent()?
            .join(format!(".{name}.parallel_run_staging"));
        let staged = dir.join(&name);
        let mut text = staged.to_string_lossy().into_owned();
        if copy.target.ends_with('/') {
            text.push('/');
        }
        copy.target = text;
        Some(Staged {
            staged,
            target,
            dir,
        })
    }

    /// Removes what an earlier, failed statement left.
    fn prepare(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| PrsError::io(&self.dir, e))?;
        }
        Ok(())
    }

    /// Moves the written output into place (a folder's files join an existing folder).
    fn commit(&self) -> Result<()> {
        let fail = |message: String| PrsError::Output {
            path: self.target.display().to_string(),
            message,
        };
        if self.staged.is_dir() && self.target.is_dir() {
            let entries =
                std::fs::read_dir(&self.staged).map_err(|e| PrsError::io(&self.staged, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| PrsError::io(&self.staged, e))?;
                let to = self.target.join(entry.file_name());
                std::fs::rename(entry.path(), &to).map_err(|e| PrsError::io(&to, e))?;
            }
        } else if self.staged.exists() {
            if self.target.is_dir() != self.staged.is_dir() && self.target.exists() {
                return Err(fail(format!(
                    "exists as a {}; the COPY wrote a {} (kept in {})",
                    if self.target.is_dir() {
                        "folder"
                    } else {
                        "file"
                    },
                    if self.staged.is_dir() {
                        "folder"
                    } else {
                        "file"
                    },
                    self.staged.display()
                )));
            }
            std::fs::rename(&self.staged, &self.target)
                .map_err(|e| PrsError::io(&self.target, e))?;
        }
        std::fs::remove_dir_all(&self.dir).map_err(|e| PrsError::io(&self.dir, e))
    }

    /// Drops a failed statement's output.
    fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resolves the statement's relative `LOCATION` and `COPY ... TO` paths against `base`;
/// returns the COPY target, if any.
fn resolve_paths(statement: DFStatement, base: &Path) -> (DFStatement, Option<PathBuf>) {
    match statement {
        DFStatement::CreateExternalTable(mut table) => {
            table.locations = table
                .locations
                .iter()
                .map(|l| resolve_location(base, l))
                .collect();
            (DFStatement::CreateExternalTable(table), None)
        }
        DFStatement::CopyTo(mut copy) => {
            copy.target = resolve_location(base, &copy.target);
            let target = (!copy.target.contains("://")).then(|| PathBuf::from(&copy.target));
            (DFStatement::CopyTo(copy), target)
        }
        DFStatement::Explain(mut explain) => {
            let (inner, target) = resolve_paths(*explain.statement, base);
            explain.statement = Box::new(inner);
            (DFStatement::Explain(explain), target)
        }
        other => (other, None),
    }
}

/// `location` against `base` when it is a relative path (URLs and absolute paths are kept;
/// a trailing `/` is kept).
fn resolve_location(base: &Path, location: &str) -> String {
    if location.contains("://") || Path::new(location).is_absolute() || location.is_empty() {
        return location.to_string();
    }
    let mut text = resolve_path(base, location).to_string_lossy().into_owned();
    if location.ends_with('/') && !text.ends_with('/') {
        text.push('/');
    }
    text
}

/// Waits (bounded) until a started run has written its final report.
async fn wait_for_report(run: &SqlRun) {
    if !run.started() {
        return;
    }
    let start = Instant::now();
    while run.summary().is_none() && start.elapsed() < REPORT_WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The run's outcome on `err`, like `parallel-run run` prints a job's.
fn report_run(err: &mut (dyn Write + Send), run: &SqlRun) -> Result<()> {
    let io = |e| PrsError::io("(stderr)", e);
    let label = run.label();
    let Some(summary) = run.summary() else {
        // Not executed (EXPLAIN): only the probe may have written logs.
        if let Some(logs) = run
            .probed()
            .then(|| probe::logs(run.report_dir()))
            .flatten()
        {
            writeln!(
                err,
                "parallel-run: {label}: the output-schema probe's logs: {}",
                logs.display()
            )
            .map_err(io)?;
        }
        return Ok(());
    };
    if summary.succeeded() {
        writeln!(err, "parallel-run: {label}: {}", summary.sentence()).map_err(io)?;
        if !summary.reason.is_empty() {
            writeln!(err, "parallel-run: {label}: {}", summary.reason).map_err(io)?;
        }
        writeln!(err, "parallel-run: report: {}", run.report_dir().display()).map_err(io)?;
    } else {
        writeln!(
            err,
            "parallel-run: {label}: the job failed: {}",
            summary.reason
        )
        .map_err(io)?;
        writeln!(err, "{}", summary.sentence()).map_err(io)?;
        writeln!(
            err,
            "See {}",
            run.report_dir().join("job_result.txt").display()
        )
        .map_err(io)?;
    }
    Ok(())
}

/// A result as a table, with its row count.
fn print_rows(out: &mut (dyn Write + Send), batches: &[RecordBatch], rows: usize) -> Result<()> {
    let io = |e| PrsError::io("(stdout)", e);
    let shown: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if !batches.is_empty() {
        let table = arrow::util::pretty::pretty_format_batches(batches)?;
        writeln!(out, "{table}").map_err(io)?;
    }
    if shown < rows {
        writeln!(out, "({rows} rows, the first {shown} shown)").map_err(io)?;
    } else {
        writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io)?;
    }
    Ok(())
}

/// The statement on one line, shortened.
fn abbreviate(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 80 {
        format!("{}...", line.chars().take(77).collect::<String>())
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_locations_resolve_against_the_base() {
        let base = Path::new("/jobs/a");
        assert_eq!(
            resolve_location(base, "data/x.parquet"),
            "/jobs/a/data/x.parquet"
        );
        assert_eq!(resolve_location(base, "data/"), "/jobs/a/data/");
        assert_eq!(resolve_location(base, "/abs/x"), "/abs/x");
        assert_eq!(resolve_location(base, "../b/./x"), "/jobs/b/x");
        assert_eq!(resolve_location(base, "s3://b/k"), "s3://b/k");
        let statements = DFParser::parse_sql_with_dialect(
            "COPY (SELECT 1) TO 'out/x.parquet' STORED AS PARQUET; \
             EXPLAIN COPY (SELECT 1) TO 'y.csv' STORED AS CSV; \
             CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'in/t.csv'",
            &GenericDialect {},
        )
        .unwrap();
        let resolved: Vec<_> = statements
            .into_iter()
            .map(|s| resolve_paths(s, base))
            .collect();
        assert_eq!(resolved[0].1, Some(PathBuf::from("/jobs/a/out/x.parquet")));
        assert!(resolved[0]
            .0
            .to_string()
            .contains("TO /jobs/a/out/x.parquet"));
        assert_eq!(resolved[1].1, Some(PathBuf::from("/jobs/a/y.csv")));
        assert_eq!(resolved[2].1, None);
        assert!(resolved[2].0.to_string().contains("/jobs/a/in/t.csv"));
    }

    #[test]
    fn long_statements_are_shortened() {
        assert_eq!(abbreviate("SELECT\n  1"), "SELECT 1");
        let long = "x".repeat(200);
        assert_eq!(abbreviate(&long).chars().count(), 80);
    }
}
