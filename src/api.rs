//! The Rust library API: a builder for whole jobs ([`ParallelRun`]) and an extension on
//! DataFusion's `DataFrame` ([`ParallelRunDataFrameExt`]) that returns run()'s results as a
//! `DataFrame`, so users keep composing in DataFusion.

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::prelude::DataFrame;

use crate::batch::ItemKind;
use crate::config::{InputSpec, JobSettings, OutputFormat, ParallelRunConfig};
use crate::error::{PrsError, Result};
use crate::exec::{InputInfo, NoopObserver, ParallelRunNode, ParallelRunQueryPlanner};
use crate::input::{job_session, register_inputs};
use crate::job::{execute, schemas, JobPlan, JobReport, Progress};
use crate::ledger::{prepare_run, ResumeOptions};
use crate::output::OutputLock;
use crate::session::with_query_planner;
use crate::worker::python::MiniBatchFormat;
use crate::worker::{EntryScript, ScriptRegistry};

enum JobInput {
    Frame { name: String, df: DataFrame },
    Spec(InputSpec),
}

/// A job built in code. Await it to run it:
///
/// ```no_run
/// # use parallel_run::{ParallelRun, config::{ParallelRunConfig, OutputAction}};
/// # async fn demo(df: datafusion::prelude::DataFrame) -> parallel_run::Result<()> {
/// let config = ParallelRunConfig::new("score.py", 10, OutputAction::AppendRow);
/// let report = ParallelRun::new(config).input("reviews", df).output("out/").await?;
/// assert!(report.succeeded());
/// # Ok(()) }
/// ```
pub struct ParallelRun {
    config: ParallelRunConfig,
    inputs: Vec<JobInput>,
    script: Option<(String, crate::worker::rust::ScriptConstructor)>,
    registry: ScriptRegistry,
    output: Option<PathBuf>,
    output_format: OutputFormat,
    preserve_order: bool,
    allow_empty_input: bool,
    dead_letter_rows: bool,
    arguments: Vec<String>,
    mini_batch_format: MiniBatchFormat,
    progress: Progress,
    overwrite: bool,
    resume: ResumeOptions,
}

impl ParallelRun {
    /// A job with `config` (its `entry_script` is used unless [`ParallelRun::entry_script`] is
    /// called).
    pub fn new(config: ParallelRunConfig) -> Self {
        ParallelRun {
            config,
            inputs: Vec::new(),
            script: None,
            registry: ScriptRegistry::new(),
            output: None,
            output_format: OutputFormat::Txt,
            preserve_order: false,
            allow_empty_input: false,
            dead_letter_rows: false,
            arguments: Vec::new(),
            mini_batch_format: MiniBatchFormat::default(),
            progress: Progress::Quiet,
            overwrite: false,
            resume: ResumeOptions::default(),
        }
    }

    /// Adds a DataFrame as an input named `name` (its rows are the items).
    pub fn input(mut self, name: impl Into<String>, df: DataFrame) -> Self {
        self.inputs.push(JobInput::Frame {
            name: name.into(),
            df,
        });
        self
    }

    /// Adds an input described as in a job file (a path with a format, or SQL over earlier
    /// inputs).
    pub fn input_spec(mut self, spec: InputSpec) -> Self {
        self.inputs.push(JobInput::Spec(spec));
        self
    }

    /// Runs the in-process Rust entry script built by `constructor` (one instance per worker).
    pub fn entry_script<F, S>(mut self, constructor: F) -> Self
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: EntryScript,
    {
        let name = std::any::type_name::<S>()
            .rsplit("::")
            .next()
            .unwrap_or("script")
            .to_string();
        self.script = Some((
            name,
            Arc::new(move || Box::new(constructor()) as Box<dyn EntryScript>),
        ));
        self
    }

    /// Rust scripts that `rust:NAME` entry scripts refer to.
    pub fn registry(mut self, registry: ScriptRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// The output folder (required).
    pub fn output(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output = Some(dir.into());
        self
    }

    /// Format of the append_row file (default `txt`).
    pub fn output_format(mut self, format: OutputFormat) -> Self {
        self.output_format = format;
        self
    }

    /// Write output in mini-batch order instead of completion order.
    pub fn preserve_order(mut self, on: bool) -> Self {
        self.preserve_order = on;
        self
    }

    /// Let a job whose inputs hold no items at all succeed (by default it fails, as an empty
    /// input is usually a wrong path or query).
    pub fn allow_empty_input(mut self, on: bool) -> Self {
        self.allow_empty_input = on;
        self
    }

    /// Write the input rows (or paths) of failed items to `<output>/failed_rows/` (see the
    /// README's dead letters).
    pub fn dead_letter_rows(mut self, on: bool) -> Self {
        self.dead_letter_rows = on;
        self
    }

    /// Extra arguments for the entry script's argv.
    pub fn arguments(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.arguments = args.into_iter().map(Into::into).collect();
        self
    }

    /// What a Python run() receives for tables (default: pandas DataFrame).
    pub fn mini_batch_format(mut self, format: MiniBatchFormat) -> Self {
        self.mini_batch_format = format;
        self
    }

    /// Show progress on the console.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Replace an earlier run's results in the output folder (its append_row file, `logs/`
    /// and `.parallel_run/`) before the job starts; without it such a folder is refused.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }

    /// Continue an interrupted run in the same output folder instead of refusing it
    /// ([`ResumeOptions::resume`]), or with `mode: RerunFailed` also re-run its failed
    /// mini-batches; see `parallel-run run --resume`.
    pub fn resume(mut self, options: ResumeOptions) -> Self {
        self.resume = options;
        self
    }

    /// Runs the job. A job that ran and failed (where the CLI exits 42) is
    /// `Err(PrsError::JobFailed { report, .. })`; the report files are written either way.
    pub async fn run(self) -> Result<JobReport> {
        let output = self.output.ok_or_else(|| {
            PrsError::missing("output", "call .output(\"dir\") on the ParallelRun builder")
        })?;
        if self.inputs.is_empty() {
            return Err(PrsError::missing(
                "inputs",
                "add at least one input with .input(name, df) or .input_spec(spec)",
            ));
        }
        let mut registry = self.registry;
        let mut config = self.config;
        if let Some((name, constructor)) = self.script {
            config.entry_script = format!("rust:{name}");
            registry.insert(name, constructor);
        }
        let settings = JobSettings {
            output_format: self.output_format,
            arguments: self.arguments,
            preserve_order: self.preserve_order,
            allow_empty_input: self.allow_empty_input,
            dead_letter_rows: self.dead_letter_rows,
            mini_batch_format: self.mini_batch_format,
            ..JobSettings::new(config, output)
        };
        settings.validate()?;
        // One run at a time per output folder (held until the job is done).
        let _lock = OutputLock::acquire(&settings.output)?;
        // Before any worker writes its bootstrap into the folder.
        let mode = prepare_run(
            &settings.output,
            &settings.log_dir,
            &settings.final_file_name(),
            self.resume,
            self.overwrite,
        )?;
        let resume = ResumeOptions {
            mode,
            ..self.resume
        };
        let ctx = job_session();
        let mut specs = Vec::new();
        let mut inputs = Vec::new();
        for input in self.inputs {
            match input {
                JobInput::Frame { name, df } => {
                    let plan = df.create_physical_plan().await?;
                    let kind = ItemKind::Rows;
                    inputs.push((plan, InputInfo::new(name, kind)));
                }
                JobInput::Spec(spec) => specs.push(spec),
            }
        }
        if !specs.is_empty() {
            for p in register_inputs(&ctx, &specs).await? {
                let plan = ctx.state().create_physical_plan(&p.plan).await?;
                inputs.push((plan, p.info));
            }
        }
        let plan = JobPlan::new(settings, &schemas(&inputs), None, &registry)?;
        let inputs = inputs.into_iter().map(|(plan, _)| plan).collect();
        let report = execute(&plan, inputs, ctx.task_ctx(), None, self.progress, resume).await?;
        if report.succeeded() {
            Ok(report)
        } else {
            Err(PrsError::JobFailed {
                reason: report.reason.clone(),
                report: Box::new(report),
            })
        }
    }
}

impl IntoFuture for ParallelRun {
    type Output = Result<JobReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Runs an entry script over a DataFrame's rows and returns the results as a DataFrame.
///
/// Thresholds and retries apply as in a job; a threshold exceeded ends the result stream with
/// an error. No report files are written (use [`ParallelRun`] for that).
pub trait ParallelRunDataFrameExt {
    /// Runs the Rust `script` over the rows of `self` with `config`; run()'s results must have
    /// `output_schema` (columns are matched by name and cast).
    fn parallel_run<F, S>(
        self,
        config: &ParallelRunConfig,
        output_schema: SchemaRef,
        script: F,
    ) -> Result<DataFrame>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: EntryScript;
}

impl ParallelRunDataFrameExt for DataFrame {
    fn parallel_run<F, S>(
        self,
        config: &ParallelRunConfig,
        output_schema: SchemaRef,
        script: F,
    ) -> Result<DataFrame>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: EntryScript,
    {
        let name = std::any::type_name::<S>()
            .rsplit("::")
            .next()
            .unwrap_or("script")
            .to_string();
        let mut registry = ScriptRegistry::new();
        registry.register(name.clone(), script);
        let mut config = config.clone();
        config.entry_script = format!("rust:{name}");
        // No output folder: run()'s rows come back typed, as the relation's rows.
        let settings = JobSettings {
            output_format: OutputFormat::Parquet,
            ..JobSettings::new(config, PathBuf::new())
        };
        let (state, plan) = self.into_parts();
        let info = InputInfo::new("input", ItemKind::Rows);
        let job = JobPlan::new(
            settings,
            &[(Arc::new(plan.schema().as_arrow().clone()), info)],
            Some(output_schema),
            &registry,
        )?;
        let runtime = job.runtime(Arc::new(NoopObserver));
        let node = ParallelRunNode::try_new(vec![plan], job.spec, runtime)?;
        // The DataFrame's own session plans it, with our planner added.
        let state = with_query_planner(state, None, Arc::new(ParallelRunQueryPlanner));
        Ok(DataFrame::new(state, node.into_plan()))
    }
}
