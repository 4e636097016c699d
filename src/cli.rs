//! The command line: `parallel-run run | validate | show-config JOB.yaml` and
//! `parallel-run sql JOB.sql` ([`crate::sql::runner`]).
//!
//! Exit codes: 0 success, 42 the job ran and failed (PRS's code), 2 usage or configuration
//! error.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{JobSpec, LoadedJob, LoggingLevel};
use crate::error::{PrsError, Result};
use crate::input::{job_session, register_inputs_with};
use crate::job::{factory_with_env, run_job_spec, worker_env, JobOptions, Progress};
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
    /// The output folder (overrides `output:` in the job file).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
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
}

fn load(args: &JobArgs) -> Result<LoadedJob> {
    let mut loaded = JobSpec::load_yaml(&args.job, &args.set)?;
    if let Some(out) = &args.output {
        loaded.spec.output = Some(out.clone());
    }
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
        Command::Run { args, quiet } => {
            let loaded = load(&args)?;
            init_tracing(loaded.spec.config.logging_level);
            let progress = if quiet {
                Progress::Quiet
            } else {
                Progress::Console
            };
            let report = run_job_spec(&loaded.spec, &registry, progress).await?;
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
            let spec = &loaded.spec;
            let output = spec
                .output
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("parallel-run-validate"));
            // Object storage: checks the output and every input (HEAD / first listing page).
            let storage = StorageContext::prepare(spec, &output).await?;
            let ctx = job_session();
            let inputs = register_inputs_with(&ctx, &spec.inputs, &storage).await?;
            let options = JobOptions {
                output: storage.local_output().map_or(output, Path::to_path_buf),
                output_format: spec.output_format,
                arguments: spec.arguments.clone(),
                preserve_order: spec.preserve_order,
                mini_batch_format: spec.mini_batch_format,
                progress: Progress::Quiet,
                tabular_inputs: spec.has_tabular_inputs(),
                job_dir: spec.base_dir.clone(),
            };
            // The script is loaded in a scratch folder: validate writes nothing into the output.
            let scratch = tempfile::tempdir().map_err(|e| PrsError::io(std::env::temp_dir(), e))?;
            let mut env = worker_env(&spec.config, &options);
            env.work_dir = scratch.path().join("work");
            env.log_dir = scratch.path().join("logs");
            let factory =
                factory_with_env(&spec.config, env, options.mini_batch_format, &registry)?;
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
    }
}

fn init_tracing(level: LoggingLevel) {
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
        .with_target(false)
        .try_init();
}
