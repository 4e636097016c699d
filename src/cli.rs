//! The command line: `parallel-run run | validate | show-config JOB.yaml` and
//! `parallel-run sql JOB.sql` ([`crate::sql::runner`]), and a cluster's
//! `parallel-run scheduler` / `parallel-run executor` ([`crate::cluster::server`]).
//!
//! Exit codes: 0 success, 42 the job ran and failed (PRS's code), 2 usage or configuration
//! error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::azure_v2::V2Options;
use crate::config::{JobSettings, JobSpec, LoadedJob, LoggingLevel};
use crate::error::{PrsError, Result};
use crate::input::{job_session, register_inputs_with};
use crate::job::{factory_with_env, run_job_spec, worker_env, Progress};
use crate::ledger::{ResumeMode, ResumeOptions};
use crate::storage::StorageContext;
use crate::worker::ScriptRegistry;

/// `println!` that ignores a closed stdout (`parallel-run run job.yaml | head -1` must not
/// panic: the job has run, only its summary lines have nowhere to go).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Exit code of a job that ran and failed.
pub const EXIT_JOB_FAILED: i32 = 42;
/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of a run stopped by Ctrl+C (resumable with `--resume`).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Runs ParallelRunStep-style batch jobs.
#[derive(Debug, Parser)]
#[command(name = "parallel-run", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by the subcommands that read a job file.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The job file (YAML, Azure's `parallel_run_config:` layout plus inputs and output).
    pub job: PathBuf,
    /// Override a parallel_run_config key (or output, output_format, preserve_order), e.g.
    /// `--set mini_batch_size=10MB`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The output folder (overrides `output:` in the job file); `NAME=PATH` instead replaces
    /// the path of the named output NAME of an Azure v2 job. Repeatable.
    #[arg(long, value_name = "DIR|NAME=PATH")]
    pub output: Vec<String>,
    /// `NAME=PATH`: replaces the path of the named input NAME of an Azure v2 job (e.g. one
    /// that another pipeline step would have produced). Repeatable.
    #[arg(long = "input", value_name = "NAME=PATH")]
    pub input: Vec<String>,
    /// The `type: parallel` job to run from an Azure v2 pipeline file (default: its only one).
    #[arg(long = "job", value_name = "NAME")]
    pub pipeline_job: Option<String>,
}

impl JobArgs {
    /// The output folder and the named inputs and outputs given on the command line.
    fn v2_options(&self) -> Result<V2Options> {
        let mut options = V2Options {
            job: self.pipeline_job.clone(),
            ..V2Options::default()
        };
        let mut folder = None;
        for value in &self.output {
            match named(value) {
                Some((name, path)) => {
                    options.outputs.insert(name, path);
                }
                None if folder.is_some() => {
                    return Err(PrsError::config(
                        "--output",
                        value,
                        "only one output folder may be given (NAME=PATH values name outputs)",
                    ))
                }
                None => folder = Some(PathBuf::from(value)),
            }
        }
        for value in &self.input {
            let (name, path) = named(value).ok_or_else(|| {
                PrsError::config(
                    "--input",
                    value,
                    "expected NAME=PATH, e.g. --input images=./data/images",
                )
            })?;
            options.inputs.insert(name, path);
        }
        // Paths typed on the command line are relative to the current folder (not the job
        // file's): made absolute here; URLs as written.
        options.command_dir = std::env::current_dir().ok();
        options.output_dir =
            folder.map(|f| PathBuf::from(options.given_path(Path::new("."), &f.to_string_lossy())));
        Ok(options)
    }
}

/// `NAME=PATH` with NAME an identifier (a folder such as `out/country=fr` is not one).
fn named(value: &str) -> Option<(String, String)> {
    let (name, path) = value.split_once('=')?;
    let identifier = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    identifier.then(|| (name.to_string(), path.to_string()))
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job.
    Run {
        /// The job.
        #[command(flatten)]
        args: JobArgs,
        /// No progress output on the console.
        #[arg(long, short)]
        quiet: bool,
        /// Replace an earlier run's results in the output folder (its append_row file,
        /// logs/ and .parallel_run/) instead of refusing to start.
        #[arg(long)]
        overwrite: bool,
        /// Discard an unfinished job's work in the output folder and start over (the same as
        /// --overwrite).
        #[arg(long, conflicts_with_all = ["resume", "rerun_failed"])]
        restart: bool,
        /// Continue an interrupted or failed run in the same output folder: mini-batches it
        /// finished (succeeded or failed) are not run again; the output equals that of an
        /// uninterrupted run.
        #[arg(long, conflicts_with = "rerun_failed")]
        resume: bool,
        /// Like --resume, and also run the failed mini-batches again (after fixing the
        /// script or the data).
        #[arg(long)]
        rerun_failed: bool,
        /// With --resume / --rerun-failed: resume even though settings that change the output
        /// or the input changed since the job started.
        #[arg(long)]
        force: bool,
    },
    /// Show the state of a running or finished job from its ledger: finished, failed and
    /// remaining mini-batches, items, rate, ETA, the last errors.
    Status {
        /// The job's output folder (or a SQL job's report folder).
        output: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a job file, its inputs and its entry script without running anything.
    Validate {
        /// The job.
        #[command(flatten)]
        args: JobArgs,
    },
    /// Print the effective job (every key, defaults filled in) as YAML.
    ShowConfig {
        /// The job.
        #[command(flatten)]
        args: JobArgs,
    },
    /// Run a file of SQL statements with parallel_run(...) (or -e "..."): CREATE EXTERNAL
    /// TABLE for inputs, SET parallel_run.KEY for parameters, SELECT / COPY to run jobs.
    Sql(crate::sql::runner::SqlArgs),
    /// Run a cluster scheduler (Apache Ballista with parallel-run's operator): jobs with
    /// `compute_target: df://HOST:PORT` are sent to it. Trusted network only: executors run
    /// the code of the plans they receive, without authentication.
    Scheduler(SchedulerArgs),
    /// Run a cluster executor: it registers with the scheduler and runs mini-batches of
    /// cluster jobs on --processes worker slots. Inputs, outputs, entry scripts and
    /// interpreters must be reachable under the same path or URL on every node.
    Executor(ExecutorArgs),
    /// Remove what a failed or unfinished run left in an output folder (its committed parts
    /// and work files, .parallel_run/); its results and logs/ stay. Refused while a run is
    /// writing the folder.
    Clean {
        /// The job's output folder.
        output: PathBuf,
    },
}

/// `parallel-run scheduler` options.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// HOST:PORT to listen on (0.0.0.0:PORT for every interface).
    #[arg(long, default_value = crate::cluster::server::DEFAULT_SCHEDULER)]
    pub bind: String,
    /// Seconds without a heartbeat after which an executor is lost and its work runs
    /// elsewhere (short values are for tests).
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub executor_timeout: u64,
    /// Seconds between checks for lost executors.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub expire_interval: u64,
    /// Seconds running jobs wait for an executor when none is left, before they fail.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub no_executors_grace: u64,
}

/// `parallel-run executor` options.
#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler's HOST:PORT.
    #[arg(long, default_value = crate::cluster::server::DEFAULT_SCHEDULER)]
    pub scheduler: String,
    /// Worker processes run at once (the ceiling of a job's process_count_per_node on this
    /// node); default: the number of cores.
    #[arg(long)]
    pub processes: Option<usize>,
    /// Host (IP) to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// The executor's Arrow Flight (data) port.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// The executor's gRPC (control) port.
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// The host advertised to the scheduler and the driver (when bound to 0.0.0.0).
    #[arg(long)]
    pub external_host: Option<String>,
    /// Seconds between heartbeats to the scheduler (short values are for tests).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub heartbeat: u64,
    /// Folder for the executor's shuffle and result files (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// A job's Python workers are started once on this executor and reused by all its
    /// tasks here; they are shut down (the entry script's shutdown()) when the scheduler
    /// reports the job ended, or after this many seconds without a task of the job.
    #[arg(
        long,
        default_value_t = crate::cluster::server::DEFAULT_WORKER_IDLE_TIMEOUT,
        value_name = "SECONDS"
    )]
    pub worker_idle_timeout: u64,
}

fn load(args: &JobArgs) -> Result<LoadedJob> {
    let v2 = args.v2_options()?;
    let loaded = JobSpec::load_yaml_with(&args.job, &args.set, &v2)?;
    // object_store's key names are checked by the storage layer, at load as in validate.
    crate::storage::options::check_keys("storage_options", &loaded.spec.storage_options)?;
    for w in &loaded.warnings {
        eprintln!("parallel-run: warning: {w}");
    }
    Ok(loaded)
}

/// Runs the CLI and returns the process exit code.
pub async fn main_with(cli: Cli, registry: ScriptRegistry) -> i32 {
    match dispatch(cli, registry).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("parallel-run: error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(cli: Cli, registry: ScriptRegistry) -> Result<i32> {
    match cli.command {
        Command::Run {
            args,
            quiet,
            overwrite,
            restart,
            resume,
            rerun_failed,
            force,
        } => {
            let mode = match (resume, rerun_failed) {
                (_, true) => ResumeMode::RerunFailed,
                (true, _) => ResumeMode::Resume,
                _ => ResumeMode::Fresh,
            };
            if force && mode == ResumeMode::Fresh {
                return Err(PrsError::config(
                    "--force",
                    "(flag)",
                    "only applies to --resume or --rerun-failed; to start over use --restart",
                ));
            }
            let loaded = load(&args)?;
            init_tracing(loaded.spec.config.logging_level);
            let progress = if quiet {
                Progress::Quiet
            } else {
                Progress::Console
            };
            crate::job::handle_ctrl_c(true);
            let resume = ResumeOptions { mode, force };
            let report = run_job_spec(
                &loaded.spec,
                &registry,
                progress,
                overwrite || restart,
                resume,
            )
            .await?;
            if report.resumed && !quiet {
                eprintln!(
                    "parallel-run: resumed: {} mini-batch(es) finished by earlier runs were not run again{}",
                    report.mini_batches_skipped,
                    if report.mini_batches_rerun > 0 {
                        format!(", {} failed one(s) ran again", report.mini_batches_rerun)
                    } else {
                        String::new()
                    }
                );
            }
            if report.reason == crate::job::INTERRUPTED {
                eprintln!(
                    "parallel-run: the job was interrupted: {}",
                    report.sentence()
                );
                eprintln!(
                    "Continue with: parallel-run run {} --resume",
                    args.job.display()
                );
                return Ok(EXIT_INTERRUPTED);
            }
            if report.succeeded() {
                out!("{}", report.sentence());
                if let Some(out) = &report.output {
                    out!("Output: {} ({} rows)", out.display(), report.output_rows);
                }
                out!("Logs: {}", report.logs.display());
                Ok(0)
            } else {
                eprintln!("parallel-run: the job failed: {}", report.reason);
                eprintln!("{}", report.sentence());
                eprintln!("See {}", report.logs.join("job_result.txt").display());
                Ok(EXIT_JOB_FAILED)
            }
        }
        Command::Validate { args } => {
            let loaded = load(&args)?;
            let spec = &crate::input::resolve_remote_mltables(&loaded.spec).await?;
            let output = spec
                .output
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("parallel-run-validate"));
            // Object storage: checks the output and every input (HEAD / first listing page).
            let storage = StorageContext::prepare(spec, &output).await?;
            let ctx = job_session();
            let inputs = register_inputs_with(&ctx, &spec.inputs, &storage).await?;
            let settings = JobSettings::from_spec(
                spec,
                storage.local_output().map_or(output, Path::to_path_buf),
            );
            // The script is loaded in a scratch folder: validate writes nothing into the output.
            let scratch = tempfile::tempdir().map_err(|e| PrsError::io(std::env::temp_dir(), e))?;
            let mut env = worker_env(&settings, spec.has_tabular_inputs());
            env.work_dir = scratch.path().join("work");
            env.log_dir = scratch.path().join("logs");
            let factory =
                factory_with_env(&settings.config, env, settings.mini_batch_format, &registry)?;
            eprintln!(
                "parallel-run: loading the entry script ({}) without running init()...",
                factory.describe()
            );
            factory.check().await?;
            out!(
                "{} is valid: {} processed input(s) [{}], entry script {}, {} workers.",
                args.job.display(),
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.info.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                factory.describe(),
                spec.config.worker_count()
            );
            Ok(0)
        }
        Command::Sql(args) => crate::sql::runner::run_cli(&args, registry).await,
        Command::ShowConfig { args } => {
            let loaded = load(&args)?;
            print!("{}", loaded.spec.to_yaml()?);
            Ok(0)
        }
        Command::Status { output, json } => {
            let status = crate::ledger::status::job_status(&output)?;
            if json {
                let text = serde_json::to_string_pretty(&status).map_err(|e| PrsError::Output {
                    path: output.display().to_string(),
                    message: e.to_string(),
                })?;
                out!("{text}");
            } else {
                print!("{}", status.text());
            }
            Ok(0)
        }
        Command::Scheduler(args) => {
            init_cluster_tracing();
            let options = crate::cluster::server::SchedulerOptions {
                bind: args.bind,
                executor_timeout_seconds: args.executor_timeout,
                expire_interval_seconds: args.expire_interval,
                no_executors_grace_seconds: args.no_executors_grace,
            };
            let runtimes = Arc::new(crate::job::JobRuntimes::new(registry));
            crate::cluster::server::run_scheduler(&options, runtimes).await?;
            Ok(0)
        }
        Command::Executor(args) => {
            init_cluster_tracing();
            let defaults = crate::cluster::server::ExecutorOptions::default();
            let options = crate::cluster::server::ExecutorOptions {
                scheduler: args.scheduler,
                processes: args.processes.unwrap_or(defaults.processes),
                bind: args.bind,
                port: args.port,
                grpc_port: args.grpc_port,
                external_host: args.external_host,
                heartbeat_seconds: args.heartbeat,
                work_dir: args.work_dir,
                worker_idle_timeout_seconds: args.worker_idle_timeout,
            };
            // The executor's workers, reused across the tasks of a job.
            let pool = crate::worker::pool::WorkerPool::new(
                options.processes,
                std::time::Duration::from_secs(options.worker_idle_timeout_seconds),
            );
            let runtimes = Arc::new(crate::job::JobRuntimes::pooled(registry, pool));
            crate::cluster::server::run_executor(&options, runtimes).await?;
            Ok(0)
        }
        Command::Clean { output } => {
            let removed = crate::output::clean_output_dir(&output)?;
            if removed.is_empty() {
                out!("nothing to clean in {}", output.display());
            }
            for path in removed {
                out!("removed {}", path.display());
            }
            Ok(0)
        }
    }
}

/// A scheduler's or executor's messages (Ballista's included) on stderr (`RUST_LOG`
/// overrides the levels).
fn init_cluster_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "parallel_run=info,ballista_scheduler=info,ballista_executor=info,warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Engine messages on stderr at `level` (`RUST_LOG` overrides it); once per process, later
/// calls keep the first setting.
pub(crate) fn init_tracing(level: LoggingLevel) {
    let default = match level {
        LoggingLevel::Debug => "parallel_run=debug,warn",
        LoggingLevel::Info => "parallel_run=info,warn",
        LoggingLevel::Warning => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a pipe (logging_level: DEBUG into CI logs).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
