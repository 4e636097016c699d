//! The plan of a job: from [`JobSettings`] and what is known of the inputs to the operator's
//! spec and the factory that starts its workers. This is the only place the worker
//! environment, the worker factory, the run settings and the operator spec are built, for
//! every way in (job file, Rust builder, SQL relation).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::batch::ItemKind;
use crate::config::{JobSettings, MiniBatchFormat, OutputAction, ParallelRunConfig};
use crate::error::{PrsError, Result};
use crate::exec::{InputInfo, JobObserver, OperatorRuntime, OperatorSpec};
use crate::output::WORK_DIR_NAME;
use crate::worker::pool::{PoolKey, WorkerPool};
use crate::worker::python::{resolve_interpreter, PythonWorkerFactory, PythonWorkerSpec};
use crate::worker::rust::RustWorkerFactory;
use crate::worker::{ScriptRegistry, WorkerEnv, WorkerFactoryRef, WorkerSlot};

/// A planned job: the operator's spec (a value) and the factory of its workers.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// What the operator runs.
    pub spec: Arc<OperatorSpec>,
    /// Starts the workers (Python processes or in-process Rust scripts).
    pub factory: WorkerFactoryRef,
}

impl JobPlan {
    /// Plans `settings` over inputs with these schemas and infos: checks `partition_keys`
    /// against every input, builds the spec (`output_schema`: run()'s declared result schema,
    /// for a relation; `None` for a job, whose results go to the sink) and the worker factory
    /// (`rust:NAME` scripts come from `registry`).
    pub fn new(
        settings: JobSettings,
        inputs: &[(SchemaRef, InputInfo)],
        output_schema: Option<SchemaRef>,
        registry: &ScriptRegistry,
    ) -> Result<Self> {
        let tabular = inputs.iter().any(|(_, info)| info.kind == ItemKind::Rows);
        let factory = worker_factory(&settings, tabular, registry)?;
        Self::with_factory(settings, inputs, output_schema, factory)
    }

    /// [`JobPlan::new`] with a factory made earlier by [`worker_factory`] (a job file's
    /// workers start while its inputs are listed).
    pub fn with_factory(
        settings: JobSettings,
        inputs: &[(SchemaRef, InputInfo)],
        output_schema: Option<SchemaRef>,
        factory: WorkerFactoryRef,
    ) -> Result<Self> {
        let infos = inputs.iter().map(|(_, info)| info.clone()).collect();
        // Validates the settings.
        let spec = OperatorSpec::new(settings, infos, output_schema)?;
        Self::check_inputs(spec.job(), inputs)?;
        Ok(JobPlan {
            spec: Arc::new(spec),
            factory,
        })
    }

    /// Checks that every input has the `partition_keys` columns (done by [`JobPlan::new`];
    /// the SQL relation checks before it probes the output schema).
    pub fn check_inputs(settings: &JobSettings, inputs: &[(SchemaRef, InputInfo)]) -> Result<()> {
        for (schema, info) in inputs {
            crate::exec::keyed::check_keys(&info.name, schema, &settings.config.partition_keys)?;
        }
        Ok(())
    }

    /// The same plan as call number `call` of a SQL statement (see [`OperatorSpec::with_call`]).
    pub fn with_call(mut self, call: u64) -> Self {
        self.spec = Arc::new(self.spec.as_ref().clone().with_call(call));
        self
    }

    /// The job's settings.
    pub fn settings(&self) -> &JobSettings {
        self.spec.job()
    }

    /// The runtime of the planned operator: this plan's workers, reporting to `observer`.
    pub fn runtime(&self, observer: Arc<dyn JobObserver>) -> OperatorRuntime {
        OperatorRuntime::new(self.factory.clone(), observer)
    }

    /// The first-generation worker slots (for [`crate::worker::WorkerFactory::prestart`]).
    pub fn worker_slots(&self) -> Vec<WorkerSlot> {
        worker_slots(&self.spec.job().config)
    }
}

/// Builds the runtime of a decoded operator in this process (a cluster executor): its worker
/// factory from the spec's entry script and environment recipe, Rust scripts from
/// `registry`. Used by the codec of `parallel-run scheduler|executor`; called at the
/// operator's first `execute()`, never while decoding. An executor's runtimes lend the
/// workers of a [`WorkerPool`] ([`JobRuntimes::pooled`]): a job's workers are started and
/// initialised once per executor and serve all its tasks there.
#[derive(Debug, Clone)]
pub struct JobRuntimes {
    registry: ScriptRegistry,
    pool: Option<WorkerPool>,
}

impl JobRuntimes {
    /// Runtimes whose `rust:NAME` scripts come from `registry`, each task starting and
    /// stopping its own workers.
    pub fn new(registry: ScriptRegistry) -> Self {
        JobRuntimes {
            registry,
            pool: None,
        }
    }

    /// Runtimes whose tasks of a cluster job take their workers from `pool` and give them
    /// back (see [`crate::worker::pool`]).
    pub fn pooled(registry: ScriptRegistry, pool: WorkerPool) -> Self {
        JobRuntimes {
            registry,
            pool: Some(pool),
        }
    }

    fn factory(&self, spec: &OperatorSpec) -> Result<WorkerFactoryRef> {
        let tabular = spec.inputs().iter().any(|i| i.kind == ItemKind::Rows);
        let mut env = worker_env(spec.job(), tabular);
        if let Some(logs) = crate::exec::logs::ExecutorLogs::of(spec) {
            // A cluster run's workers log into this executor's own folder, named after it;
            // the operator copies that folder into the output's logs.
            env.log_dir = logs.dir;
            env.node = Some(logs.node);
        }
        let job = spec.job();
        factory_with_env(&job.config, env, job.mini_batch_format, &self.registry)
    }
}

impl crate::exec::RuntimeProvider for JobRuntimes {
    fn runtime(&self, spec: &OperatorSpec) -> Result<OperatorRuntime> {
        Ok(OperatorRuntime::new(
            self.factory(spec)?,
            Arc::new(crate::exec::NoopObserver),
        ))
    }

    fn runtime_for_job(&self, spec: &OperatorSpec, job: &str) -> Result<OperatorRuntime> {
        let Some(pool) = &self.pool else {
            return self.runtime(spec);
        };
        let key = PoolKey {
            job: job.to_string(),
            spec: spec_identity(spec)?,
        };
        let factory = pool.factory(key, || self.factory(spec))?;
        Ok(OperatorRuntime::new(
            factory,
            Arc::new(crate::exec::NoopObserver),
        ))
    }

    fn idle_jobs(&self) -> Vec<String> {
        self.pool
            .as_ref()
            .map_or_else(Vec::new, WorkerPool::idle_jobs)
    }

    fn job_ended(&self, job: &str) {
        if let Some(pool) = &self.pool {
            pool.end_job(job);
        }
    }
}

/// What tells two operators' workers apart within a job: a hash of the spec's bytes (entry
/// script, interpreter, environment, arguments...).
fn spec_identity(spec: &OperatorSpec) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    spec.encode()?.hash(&mut hasher);
    Ok(hasher.finish())
}

/// The first-generation slots of a job's workers, as the operator's partitions use them.
pub fn worker_slots(config: &ParallelRunConfig) -> Vec<WorkerSlot> {
    let per_node = config.processes_per_node().max(1);
    (0..config.worker_count())
        .map(|p| WorkerSlot::new(p, p / per_node))
        .collect()
}

/// The worker environment for a job (`tabular_inputs`: whether any input is a table; Python
/// workers then import pyarrow/pandas before they are ready).
pub fn worker_env(settings: &JobSettings, tabular_inputs: bool) -> WorkerEnv {
    let config = &settings.config;
    let system_arguments = config.system_arguments(&settings.output);
    WorkerEnv {
        output_dir: settings.output.clone(),
        log_dir: settings.log_dir.clone(),
        node: None,
        work_dir: settings.output.join(WORK_DIR_NAME).join("work"),
        logging_level: config.logging_level,
        arguments: settings.arguments.clone(),
        system_arguments,
        environment_variables: with_thread_limits(
            &config.environment_variables,
            config.processes_per_node(),
            |name| std::env::var_os(name).is_some(),
        ),
        output_format: settings.output_format,
        keep_results: config.output_action == OutputAction::AppendRow,
        tabular_inputs,
        current_dir: config
            .source_directory
            .clone()
            .or_else(|| settings.job_dir.clone()),
    }
}

/// The variables that size the thread pools of numpy's BLAS, OpenMP, MKL and numexpr.
pub const THREAD_LIMIT_VARIABLES: [&str; 5] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// `variables` plus each of [`THREAD_LIMIT_VARIABLES`] the job does not set and the engine's
/// own environment (which workers inherit) does not have, set to the node's cores divided by
/// `processes_per_node` (at least 1). Without them every worker's BLAS starts one spinning
/// thread per core: with 2 workers on 2 cores, 4 threads fight for 2 cores (Ray sets
/// OMP_NUM_THREADS for its workers the same way).
pub fn with_thread_limits(
    variables: &BTreeMap<String, String>,
    processes_per_node: usize,
    inherited: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / processes_per_node.max(1)).max(1).to_string();
    let mut all = variables.clone();
    for name in THREAD_LIMIT_VARIABLES {
        if !all.contains_key(name) && !inherited(name) {
            all.insert(name.to_string(), threads.clone());
        }
    }
    all
}

/// The worker factory of a job (`tabular_inputs`: whether any input is a table): its
/// workers' environment from [`worker_env`], its script from [`factory_with_env`].
pub fn worker_factory(
    settings: &JobSettings,
    tabular_inputs: bool,
    registry: &ScriptRegistry,
) -> Result<WorkerFactoryRef> {
    factory_with_env(
        &settings.config,
        worker_env(settings, tabular_inputs),
        settings.mini_batch_format,
        registry,
    )
}

/// The worker factory for `config.entry_script` with the workers' environment `env`:
/// `rust:NAME` from `registry`, otherwise a Python script (relative to `source_directory`
/// when given).
pub fn factory_with_env(
    config: &ParallelRunConfig,
    env: WorkerEnv,
    mini_batch_format: MiniBatchFormat,
    registry: &ScriptRegistry,
) -> Result<WorkerFactoryRef> {
    if let Some(name) = config.entry_script.strip_prefix("rust:") {
        let constructor = registry.get(name).ok_or_else(|| PrsError::EntryScript {
            script: config.entry_script.clone(),
            message: format!(
                "no Rust entry script is registered under {name:?}; registered: [{}]",
                registry.names().join(", ")
            ),
        })?;
        return Ok(Arc::new(
            RustWorkerFactory::new(name, constructor, env.keep_results)
                .with_arguments(env.arguments),
        ));
    }
    let script = match &config.source_directory {
        Some(dir) => dir.join(&config.entry_script),
        None => PathBuf::from(&config.entry_script),
    };
    if !script.is_file() {
        return Err(PrsError::EntryScript {
            script: config.entry_script.clone(),
            message: format!(
                "{} is not a file; entry_script is relative to source_directory when that is set, otherwise to the job file",
                script.display()
            ),
        });
    }
    let python = resolve_interpreter(&config.environment)?;
    let factory = PythonWorkerFactory::new(PythonWorkerSpec {
        python,
        entry_script: script,
        source_directory: config.source_directory.clone(),
        env,
        mini_batch_format,
    })?;
    Ok(Arc::new(factory))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{NoopObserver, ParallelRunNode};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::LogicalPlanBuilder;

    #[test]
    fn two_plans_of_the_same_job_compare_equal_and_ship_as_bytes() {
        let settings = JobSettings::new(
            ParallelRunConfig::new("rust:echo", 0, OutputAction::AppendRow),
            "/jobs/out",
        );
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let info = InputInfo::new("t", ItemKind::Rows);
        let inputs = [(schema.clone(), info)];
        let registry = crate::scripts::builtin_registry();
        let a = JobPlan::new(settings.clone(), &inputs, Some(schema.clone()), &registry).unwrap();
        let b = JobPlan::new(settings, &inputs, Some(schema), &registry).unwrap();
        assert!(!Arc::ptr_eq(&a.spec, &b.spec));
        assert_eq!(a.spec, b.spec, "built twice from one job: equal");
        let decoded = OperatorSpec::decode(&a.spec.encode().unwrap()).unwrap();
        assert_eq!(&decoded, a.spec.as_ref(), "and the same after the wire");

        let input = LogicalPlanBuilder::empty(false).build().unwrap();
        let node = |plan: &JobPlan| {
            ParallelRunNode::try_new(
                vec![input.clone()],
                plan.spec.clone(),
                plan.runtime(Arc::new(NoopObserver)),
            )
            .unwrap()
        };
        assert_eq!(node(&a), node(&b), "nodes too: the runtime is not identity");
        let second_call = b.with_call(1);
        assert_ne!(node(&a), node(&second_call), "another call is another run");
    }

    #[test]
    fn thread_limits_split_the_cores_and_never_override_the_user() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut user = BTreeMap::new();
        user.insert("OMP_NUM_THREADS".to_string(), "8".to_string());
        let all = with_thread_limits(&user, 1, |name| name == "MKL_NUM_THREADS");
        assert_eq!(all["OMP_NUM_THREADS"], "8", "the job's own value stays");
        assert!(
            !all.contains_key("MKL_NUM_THREADS"),
            "inherited: left alone"
        );
        assert_eq!(all["OPENBLAS_NUM_THREADS"], cores.to_string());
        let many = with_thread_limits(&BTreeMap::new(), cores * 4, |_| false);
        assert_eq!(many["NUMEXPR_NUM_THREADS"], "1", "at least one thread");
        assert_eq!(many.len(), THREAD_LIMIT_VARIABLES.len());
    }
}
