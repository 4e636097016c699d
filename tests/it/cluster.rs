//! Multi-node runs on Ballista: the operator's codec, the manifest restricted per task, the
//! `scheduler` / `executor` processes, and a job on an in-process cluster giving the rows of
//! a local run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::StreamExt;

use parallel_run::batch::{ItemKind, Lineage, MiniBatch, MiniBatchId, PartitionKeyValue};
use parallel_run::cluster::{PrsPhysicalCodec, PRS_MAGIC};
use parallel_run::config::{InputFormat, InputSpec, JobSettings, OutputAction, ParallelRunConfig};
use parallel_run::exec::manifest::{
    manifest_batch, manifest_schema, read_envelopes, ManifestEntry,
};
use parallel_run::exec::{ExecMode, InputInfo, OperatorSpec, ParallelRunExec};
use parallel_run::job::JobRuntimes;

use crate::common::*;

fn registry() -> parallel_run::worker::ScriptRegistry {
    parallel_run::scripts::builtin_registry()
}

fn codec() -> PrsPhysicalCodec {
    PrsPhysicalCodec::new(Arc::new(JobRuntimes::new(registry())))
}

fn spec(entry_script: &str, python: Option<&str>, workers: u32) -> Arc<OperatorSpec> {
    let mut config = ParallelRunConfig::new(entry_script, -1, OutputAction::AppendRow);
    config.node_count = workers;
    config.process_count_per_node = Some(1);
    config.environment.python = python.map(str::to_string);
    let job = JobSettings::new(config, "/jobs/out");
    let input = InputInfo::new("t", ItemKind::Rows).with_source(InputSpec::path(
        "t",
        "/data/t.csv",
        InputFormat::Csv,
    ));
    Arc::new(OperatorSpec::new(job, vec![input], None).unwrap())
}

/// A manifest of `n` three-row mini-batches of input 0, mini-batch `i` in partition
/// `i % partitions`.
fn manifest(n: u64, partitions: usize) -> Arc<dyn ExecutionPlan> {
    let mut dealt = vec![Vec::new(); partitions];
    for seq in 0..n {
        let start = (seq * 3) as i64;
        let data = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from_iter_values(start..start + 3)) as ArrayRef,
        )])
        .unwrap();
        let mb = MiniBatch {
            id: MiniBatchId::new(0, seq),
            kind: ItemKind::Rows,
            data,
            lineage: Lineage {
                input: Arc::from("t"),
                rows: seq * 3..seq * 3 + 3,
            },
            partition_key_value: PartitionKeyValue::default(),
        };
        dealt[seq as usize % partitions].push(ManifestEntry::new(mb, seq, seq + 100));
    }
    let batches: Vec<Vec<RecordBatch>> = dealt
        .iter()
        .map(|part| vec![manifest_batch(part).unwrap()])
        .collect();
    MemorySourceConfig::try_new_exec(&batches, manifest_schema(), None).unwrap()
}

fn round_trip(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let codec = codec();
    let node = PhysicalPlanNode::try_from_physical_plan(plan, &codec).unwrap();
    let mut bytes = Vec::new();
    node.try_encode(&mut bytes).unwrap();
    let node = PhysicalPlanNode::try_decode(&bytes).unwrap();
    let ctx = SessionContext::new();
    node.try_into_physical_plan(&ctx.task_ctx(), &codec)
        .unwrap()
}

/// The pids of this process's children (every thread's).
fn children() -> BTreeSet<String> {
    let mut pids = BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            pids.extend(text.split_whitespace().map(str::to_string));
        }
    }
    pids
}

#[test]
fn the_codec_round_trips_the_operator_in_both_modes() {
    let spec = spec("rust:echo", None, 4);
    let runtimes = Arc::new(JobRuntimes::new(registry()));
    let op = ParallelRunExec::deferred(
        ExecMode::Manifest,
        vec![manifest(10, 4)],
        spec.clone(),
        runtimes.clone(),
    )
    .unwrap();
    assert_eq!(op.properties().partitioning.partition_count(), 4);
    let back = round_trip(Arc::new(op));
    let back = back.downcast_ref::<ParallelRunExec>().unwrap();
    assert_eq!(back.spec(), &spec, "the spec travels as a value");
    assert_eq!(back.mode(), ExecMode::Manifest);
    assert_eq!(back.properties().partitioning.partition_count(), 4);
    assert!(back.runtime().is_none(), "no runtime is built by decoding");
    assert_eq!(
        back.children()[0].output_partitioning().partition_count(),
        4
    );

    // Local mode: as many children as inputs, `workers` partitions.
    let input = MemorySourceConfig::try_new_exec(&[vec![]], manifest_schema(), None).unwrap();
    let op =
        ParallelRunExec::deferred(ExecMode::Local, vec![input], spec.clone(), runtimes).unwrap();
    let back = round_trip(Arc::new(op));
    let back = back.downcast_ref::<ParallelRunExec>().unwrap();
    assert_eq!((back.mode(), back.spec()), (ExecMode::Local, &spec));
    assert_eq!(back.properties().partitioning.partition_count(), 4);

    // Our bytes start with the magic; Ballista's own nodes do not reach our decoder.
    let codec = codec();
    let mut buf = Vec::new();
    use datafusion_proto::physical_plan::PhysicalExtensionCodec;
    codec
        .try_encode(
            back.children()[0].clone(),
            &mut buf,
            &datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {},
        )
        .unwrap_err();
    let op: Arc<dyn ExecutionPlan> = Arc::new(
        ParallelRunExec::deferred(
            ExecMode::Manifest,
            vec![manifest(1, 1)],
            spec,
            Arc::new(JobRuntimes::new(registry())),
        )
        .unwrap(),
    );
    codec
        .try_encode(
            op,
            &mut buf,
            &datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {},
        )
        .unwrap();
    assert!(buf.starts_with(PRS_MAGIC));
}

#[tokio::test]
async fn decoding_names_no_interpreter_and_starts_nothing() {
    let spec = spec(
        "/nonexistent/folder/score.py",
        Some("/nonexistent/bin/python9.99"),
        2,
    );
    let op = ParallelRunExec::deferred(
        ExecMode::Manifest,
        vec![manifest(4, 2)],
        spec.clone(),
        Arc::new(JobRuntimes::new(registry())),
    )
    .unwrap();
    let before = children();
    let back = round_trip(Arc::new(op));
    assert_eq!(children(), before, "decoding started no process");
    let op = back.downcast_ref::<ParallelRunExec>().unwrap();
    assert!(op.runtime().is_none());
    assert_eq!(op.spec().entry_script(), "/nonexistent/folder/score.py");
    // The script is looked for when the operator runs, and the error names it.
    let err = match back.execute(0, SessionContext::new().task_ctx()) {
        Ok(_) => panic!("executing a missing script must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("/nonexistent/folder/score.py"), "{err}");
    assert_eq!(children(), before, "and still nothing was started");
}

#[tokio::test]
async fn a_restricted_manifest_runs_exactly_its_partitions() {
    let spec = spec("rust:echo", None, 4);
    let op: Arc<dyn ExecutionPlan> = Arc::new(
        ParallelRunExec::deferred(
            ExecMode::Manifest,
            vec![manifest(12, 4)],
            spec,
            Arc::new(JobRuntimes::new(registry())),
        )
        .unwrap(),
    );
    // What the scheduler does to a task's plan: its leaves keep the task's partitions.
    let task =
        ballista_scheduler::state::task_builder::restrict_plan_to_partitions(op, &[1, 3]).unwrap();
    assert_eq!(task.output_partitioning().partition_count(), 2);
    let ctx = SessionContext::new().task_ctx();
    let mut streams = Vec::new();
    for p in 0..2 {
        streams.push(task.execute(p, ctx.clone()).unwrap());
    }
    let mut ids = Vec::new();
    let mut merged = futures::stream::select_all(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(batch) = tokio::time::timeout_at(deadline, merged.next())
        .await
        .expect("the task finishes")
    {
        for done in read_envelopes(&batch.unwrap()).unwrap() {
            assert!(done.record.succeeded(), "{:?}", done.record);
            assert_eq!(done.fingerprint, done.id.seq + 100, "fingerprints travel");
            assert_eq!(done.result.unwrap().num_rows(), 3);
            ids.push(done.id.seq);
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        [1, 3, 5, 7, 9, 11],
        "partitions 1 and 3 of 4, each once"
    );
}

/// A child process killed (and reaped) when dropped, its stderr lines sent to a channel.
struct Process {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        Process::start_with(args, &[])
    }

    /// With extra environment variables.
    fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parallel-run"))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for a stderr line containing `text`.
    fn wait_for(&mut self, text: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if self.seen.iter().any(|l| l.contains(text)) {
            return true;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `parallel-run executor` with one process on free ports, heartbeat 1 s.
fn start_executor(scheduler_address: &str) -> Process {
    start_executor_with(scheduler_address, &[], &[])
}

/// [`start_executor`] with more flags (`--processes` among them replaces its 1) and
/// environment variables.
fn start_executor_with(scheduler_address: &str, extra: &[&str], envs: &[(&str, &str)]) -> Process {
    let (port, grpc_port) = (free_port().to_string(), free_port().to_string());
    let mut args = vec!["executor", "--scheduler", scheduler_address];
    if !extra.contains(&"--processes") {
        args.extend(["--processes", "1"]);
    }
    args.extend([
        "--port",
        &port,
        "--grpc-port",
        &grpc_port,
        "--heartbeat",
        "1",
    ]);
    args.extend_from_slice(extra);
    Process::start_with(&args, envs)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `parallel-run ARGS` in `dir`, killed after `limit`: (exit code, stderr).
fn run_bounded(dir: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String) {
    run_bounded_with(dir, args, &[], limit)
}

/// [`run_bounded`] with environment variables `vars` set for the driver.
fn run_bounded_with(
    dir: &Path,
    args: &[&str],
    vars: &[(&str, &str)],
    limit: Duration,
) -> (Option<i32>, String) {
    let err_path = dir.join("driver.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_parallel-run"))
        .args(args)
        .envs(vars.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(err_path).unwrap_or_default())
}

#[test]
fn a_job_runs_on_scheduler_and_executor_processes() {
    let scheduler_address = format!("127.0.0.1:{}", free_port());
    let mut scheduler = Process::start(&[
        "scheduler",
        "--bind",
        &scheduler_address,
        "--executor-timeout",
        "10",
        "--expire-interval",
        "1",
    ]);
    assert!(
        scheduler.wait_for("listening on", Duration::from_secs(60)),
        "the scheduler starts: {:?}",
        scheduler.seen
    );
    let mut executors = Vec::new();
    for _ in 0..2 {
        executors.push(start_executor(&scheduler_address));
    }
    let registrations = |p: &Process| {
        p.seen
            .iter()
            .filter(|l| l.contains("register executor request"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while registrations(&scheduler) < 2 && Instant::now() < deadline {
        // Reads the scheduler's lines for up to a second.
        scheduler.wait_for("\u{0}", Duration::from_secs(1));
    }
    let registered = registrations(&scheduler);
    assert!(
        registered >= 2,
        "both executors register: scheduler said {:?}",
        scheduler.seen
    );
    for executor in &mut executors {
        assert!(
            executor.child.try_wait().unwrap().is_none(),
            "the executor keeps running"
        );
    }

    // The same job locally and on the cluster (the driver is `parallel-run run`).
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/a.csv"), 0, 300);
    write_csv(&dir.path().join("data/b.csv"), 300, 200);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\nmini_batch_size: 4KB",
        "inputs:\n  - {name: t, path: data/, format: csv}\n",
    );
    let job = job.to_str().unwrap();
    let limit = Duration::from_secs(120);
    let (code, stderr) = run_bounded(dir.path(), &["run", job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    let target = format!("compute_target=df://{scheduler_address}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", job, "-q", "--output", "cluster", "--set", &target],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    let file = "parallel_run_step.txt";
    let sorted = |out: &str| {
        let mut lines = lines(&dir.path().join(out).join(file));
        lines.sort();
        lines
    };
    assert_eq!(sorted("cluster").len(), 500);
    assert_eq!(sorted("cluster"), sorted("local"));
    let local = summary(&dir.path().join("local"));
    let cluster = summary(&dir.path().join("cluster"));
    assert_eq!(
        cluster["mini_batches_succeeded"],
        local["mini_batches_succeeded"]
    );
    // Run by the executors (each record names its node); usually both take part, but a
    // loaded machine may have one executor declared lost and the other rerun its task.
    let nodes: BTreeSet<String> = processed(&dir.path().join("cluster"))
        .into_iter()
        .map(|r| r["process"].split('/').next().unwrap().to_string())
        .collect();
    assert!(
        (1..=2).contains(&nodes.len()) && nodes.iter().all(|n| n.contains(':')),
        "{nodes:?}"
    );

    // A local Parquet table travels as row ranges (the executors read their rows): the same
    // rows as locally, mini-batches spanning files and row groups.
    write_parquet(&dir.path().join("pq/a.parquet"), 0, 700, 128);
    write_parquet(&dir.path().join("pq/b.parquet"), 700, 300, 100);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\nmini_batch_size: 4KB",
        "inputs:\n  - {name: t, path: pq/, format: parquet}\n",
    );
    let job = job.to_str().unwrap();
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", job, "-q", "--output", "pq-local"],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", job, "-q", "--output", "pq-cluster", "--set", &target],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    assert_eq!(sorted("pq-cluster").len(), 1000);
    assert_eq!(sorted("pq-cluster"), sorted("pq-local"));
    assert_eq!(
        summary(&dir.path().join("pq-cluster"))["mini_batches_succeeded"],
        summary(&dir.path().join("pq-local"))["mini_batches_succeeded"]
    );
    // Cut from the footers: the same mini-batches (ids, rows and slice fingerprints in the
    // ledger) on the cluster and locally, whatever the workers.
    let (code, stderr) = run_bounded(
        dir.path(),
        &[
            "run",
            job,
            "-q",
            "--output",
            "pq-local3",
            "--set",
            "process_count_per_node=3",
        ],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let cut = |out: &str| ledger_slices(&dir.path().join(out));
    assert!(cut("pq-local").len() > 6, "{:?}", cut("pq-local"));
    assert_eq!(cut("pq-cluster"), cut("pq-local"));
    assert_eq!(cut("pq-local3"), cut("pq-local"));

    // A manifest too big for the plan goes to the shared staging area in segments (made
    // small here: every manifest is "too big", 3 mini-batches a segment, so the two tasks'
    // runs start and end inside segments): the same rows.
    let vars = [
        ("PARALLEL_RUN_TEST_INLINE_MANIFEST_BYTES", "1"),
        ("PARALLEL_RUN_TEST_MANIFEST_SEGMENT_ENTRIES", "3"),
        ("RUST_LOG", "parallel_run=info"),
    ];
    let (code, stderr) = run_bounded_with(
        dir.path(),
        &["run", job, "-q", "--output", "pq-stored", "--set", &target],
        &vars,
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    assert!(stderr.contains("in segments"), "{stderr}");
    assert_eq!(sorted("pq-stored"), sorted("pq-local"));
    let stored = summary(&dir.path().join("pq-stored"));
    assert_eq!(
        stored["mini_batches_succeeded"],
        summary(&dir.path().join("pq-local"))["mini_batches_succeeded"]
    );
    assert!(
        stored["mini_batches_succeeded"].as_u64().unwrap() > 6,
        "{stored}"
    );
    // The segments went with the rest of the staging area.
    assert!(!dir
        .path()
        .join("pq-stored/.parallel_run/staging/shared/manifest")
        .exists());
}

#[test]
fn an_unreachable_scheduler_is_a_usage_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("t.csv"), 0, 10);
    let port = free_port();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
             node_count: 2\nprocess_count_per_node: 1\ncompute_target: df://127.0.0.1:{port}"
        ),
        "inputs:\n  - {name: t, path: t.csv, format: csv}\noutput: out\n",
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("compute_target")
            && run.stderr.contains(&format!("127.0.0.1:{port}"))
            && run.stderr.contains("parallel-run scheduler"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("out").exists(), "nothing written");
}

/// An in-process scheduler (serving Ballista's `/readyz`, which the driver reads) and
/// `executors` executors of one worker slot, with our codec.
async fn in_process_cluster(executors: usize) -> std::net::SocketAddr {
    use ballista_core::serde::BallistaCodec;
    use ballista_core::utils::default_config_producer;
    use ballista_scheduler::config::SchedulerConfig;
    let physical = Arc::new(codec());
    let config = Arc::new(SchedulerConfig {
        override_physical_codec: Some(physical.clone()),
        ..SchedulerConfig::default()
            .with_scheduler_policy(ballista_core::config::TaskSchedulingPolicy::PullStaged)
    });
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&config)
        .await
        .unwrap();
    let scheduler = ballista_scheduler::scheduler_process::create_scheduler::<
        datafusion_proto::protobuf::LogicalPlanNode,
        PhysicalPlanNode,
    >(cluster, config)
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        ballista_scheduler::scheduler_process::start_grpc_service_with_listener(
            listener, scheduler,
        ),
    );
    for _ in 0..executors {
        let client =
            ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient::connect(
                format!("http://{address}"),
            )
            .await
            .unwrap();
        let executor_codec = BallistaCodec::new(
            Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
            physical.clone(),
        );
        let runtime_env = Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default());
        ballista_executor::new_standalone_executor_from_builder(
            client,
            1,
            Arc::new(default_config_producer),
            Arc::new(move |_| Ok(runtime_env.clone())),
            executor_codec,
            ballista_core::registry::BallistaFunctionRegistry::default(),
        )
        .await
        .unwrap();
    }
    address
}

async fn run_spec(job: &Path, sets: &[String]) -> parallel_run::JobReport {
    let loaded = parallel_run::config::JobSpec::load_yaml(job, sets).unwrap();
    parallel_run::job::run_job_spec(
        &loaded.spec,
        &registry(),
        parallel_run::Progress::Quiet,
        false,
        Default::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_on_an_in_process_cluster_gives_the_rows_of_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/a.csv"), 0, 700);
    write_csv(&dir.path().join("data/b.csv"), 700, 500);
    cluster_matches_local(
        dir.path(),
        "inputs:\n  - {name: t, path: data/, format: csv}\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_json_job_on_an_in_process_cluster_gives_the_rows_of_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    write_json(&dir.path().join("data/a.json"), 0, 700);
    write_json(&dir.path().join("data/b.json"), 700, 500);
    cluster_matches_local(
        dir.path(),
        "inputs:\n  - {name: t, path: data/, format: json}\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_with_columns_from_the_paths_on_an_in_process_cluster_gives_the_rows_of_a_local_run()
{
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/s1/a.csv"), 0, 700);
    write_csv(&dir.path().join("data/s2/b.csv"), 700, 500);
    cluster_matches_local(
        dir.path(),
        "inputs:\n  - {name: t, path: data/, format: csv, path_column: Path, \
         partition_format: \"{store}/*.csv\"}\n",
    )
    .await;
}

/// Runs the echo job over `inputs` (1,200 rows in `dir`) locally and on an in-process cluster
/// of 2 executors: the same mini-batches (ids and rows), records, counts and rows.
async fn cluster_matches_local(dir: &Path, inputs: &str) {
    let job = write_job(
        dir,
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\nmini_batch_size: 4KB",
        inputs,
    );
    let local_out = dir.join("local");
    let local = run_spec(&job, &[format!("output={}", local_out.display())]).await;
    assert!(local.succeeded(), "{local:?}");

    let address = tokio::time::timeout(Duration::from_secs(60), in_process_cluster(2))
        .await
        .expect("the cluster starts");
    let cluster_out = dir.join("cluster");
    let cluster = tokio::time::timeout(
        Duration::from_secs(180),
        run_spec(
            &job,
            &[
                format!("output={}", cluster_out.display()),
                format!("compute_target=df://{address}"),
            ],
        ),
    )
    .await
    .expect("the cluster job finishes");
    assert!(cluster.succeeded(), "{cluster:?}");
    assert!(local.mini_batches_total > 4, "{local:?}");
    assert_eq!(
        (
            cluster.mini_batches_total,
            cluster.mini_batches_succeeded,
            cluster.output_rows
        ),
        (
            local.mini_batches_total,
            local.mini_batches_succeeded,
            local.output_rows
        )
    );
    let cluster_lines = sorted_output_lines(&cluster_out);
    assert_eq!(cluster_lines.len(), 1200);
    assert_eq!(
        cluster_lines,
        sorted_output_lines(&local_out),
        "the same rows"
    );
    // The same mini-batches (ids and rows), one record each.
    assert_eq!(mini_batch_rows(&cluster_out), mini_batch_rows(&local_out));
    // Run by the cluster's executors: their records name the node.
    let node = format!(":{}/process", std::process::id());
    for row in processed(&cluster_out) {
        assert!(row["process"].contains(&node), "{row:?}");
    }
    for row in processed(&local_out) {
        assert!(row["process"].starts_with("process"), "{row:?}");
    }
}

#[test]
fn an_executor_killed_mid_job_is_replaced_and_the_output_stays_exactly_once() {
    let (scheduler, scheduler_address) = start_scheduler_losing_executors_fast();
    let start_executor = || start_executor(&scheduler_address);
    let mut a = start_executor();
    let mut b = start_executor();
    for executor in [&mut a, &mut b] {
        assert!(
            executor.wait_for("registration succeed", Duration::from_secs(60)),
            "{:?}",
            executor.seen
        );
    }

    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 1000);
    // Every run() call appends the first id of its mini-batch to calls.txt.
    let calls = dir.path().join("calls.txt");
    std::fs::write(
        dir.path().join("slow.py"),
        counting_script(&calls, "return mini_batch"),
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: slow.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 2KB\nrun_max_try: 3",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let job = job.to_str().unwrap().to_string();
    let limit = Duration::from_secs(180);
    let (code, stderr) = run_bounded(dir.path(), &["run", &job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_file(&calls).unwrap();

    let target = format!("compute_target=df://{scheduler_address}");
    let driver_dir = dir.path().to_path_buf();
    let driver = std::thread::spawn(move || {
        run_bounded(
            &driver_dir,
            &["run", &job, "-q", "--output", "cluster", "--set", &target],
            limit,
        )
    });
    // SIGKILL executor B once it has committed two mini-batches to the shared store.
    let b_pid = b.child.id();
    let records = dir
        .path()
        .join("cluster/.parallel_run/staging/shared/records");
    kill_after_records(&mut b, &records, 2);
    let (code, stderr) = driver.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);

    let file = "parallel_run_step.txt";
    let sorted = |out: &str| {
        let mut lines = lines(&dir.path().join(out).join(file));
        lines.sort();
        lines
    };
    assert_eq!(sorted("cluster").len(), 1000);
    assert_eq!(
        sorted("cluster"),
        sorted("local"),
        "no row lost, none twice"
    );
    let ids = |out: &str| {
        let mut ids: Vec<String> = processed(&dir.path().join(out))
            .into_iter()
            .map(|r| r["mini_batch_id"].clone())
            .collect();
        ids.sort();
        ids
    };
    let cluster_ids = ids("cluster");
    assert_eq!(cluster_ids, ids("local"), "one record per mini-batch");
    assert!(cluster_ids.len() > 10, "{cluster_ids:?}");

    // The mini-batches B committed before it was killed kept B's record and were not run
    // again by the retry of its task: one run() call each.
    let calls = run_calls(&calls);
    let by_b: Vec<String> = processed(&dir.path().join("cluster"))
        .into_iter()
        .filter(|r| r["process"].contains(&format!(":{b_pid}/")))
        .map(|r| first_row(&r["rows"]))
        .collect();
    assert!(by_b.len() >= 2, "B's records kept: {by_b:?}");
    for first in &by_b {
        assert_eq!(
            calls.get(first),
            Some(&1),
            "mini-batch at row {first}: {calls:?}"
        );
    }
    // Every mini-batch ran (at least once: B's unfinished one again on A).
    assert_eq!(calls.len(), cluster_ids.len(), "{calls:?}");
    // The shared staging area was removed after the commit.
    assert!(!records.exists());

    // No worker of the killed executor is left behind (bounded wait).
    let out = dir.path().join("cluster");
    assert!(
        workers_gone(&out, Duration::from_secs(20)),
        "orphan workers: {:?}",
        python_workers(&out)
    );
    drop(a);
}

/// A Python entry script whose run() sleeps 0.3 s, appends the first id of its mini-batch
/// to `calls`, then runs `body` (e.g. `return mini_batch`).
fn counting_script(calls: &Path, body: &str) -> String {
    format!(
        "import time\n\nCALLS = {:?}\n\ndef init():\n    pass\n\n\
         def run(mini_batch):\n    time.sleep(0.3)\n    with open(CALLS, 'a') as f:\n        \
         f.write(str(mini_batch.iloc[0, 0]) + '\\n')\n    {body}\n",
        calls.display().to_string()
    )
}

/// run() calls per first id of a mini-batch, from a [`counting_script`]'s file.
fn run_calls(calls: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(calls).unwrap_or_default().lines() {
        *counts.entry(line.trim().to_string()).or_insert(0) += 1;
    }
    counts
}

/// The first row of a `rows` range of processed_mini-batches.csv (`17..34` -> `17`).
fn first_row(rows: &str) -> String {
    rows.split_once("..").map_or(rows, |(a, _)| a).to_string()
}

/// The records in the shared store's `records` folder that executor `pid` committed.
fn recorded_by(records: &Path, pid: u32) -> usize {
    let mark = format!(":{pid}\",\"task\"");
    std::fs::read_dir(records)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&mark)))
                .count()
        })
        .unwrap_or(0)
}

/// The command lines of the Python workers of the job whose output folder is `out`.
fn python_workers(out: &Path) -> Vec<String> {
    let marker = out.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&marker) && cmdline.contains("prs_worker") {
                found.push(cmdline);
            }
        }
    }
    found
}

/// Polls (at most `limit`) until no Python worker of the job writing to `out` is left.
fn workers_gone(out: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !python_workers(out).is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// A scheduler with short executor-loss settings, started and listening.
fn start_scheduler() -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let mut scheduler = Process::start(&[
        "scheduler",
        "--bind",
        &address,
        "--executor-timeout",
        "10",
        "--expire-interval",
        "1",
    ]);
    assert!(
        scheduler.wait_for("listening on", Duration::from_secs(60)),
        "the scheduler starts: {:?}",
        scheduler.seen
    );
    (scheduler, address)
}

/// Waits (at most 120 s) until `executor` has committed `n` records to the shared store's
/// `records` folder, then kills it with SIGKILL.
fn kill_after_records(executor: &mut Process, records: &Path, n: usize) {
    let pid = executor.child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorded_by(records, pid) < n {
        assert!(
            Instant::now() < deadline,
            "executor {pid} committed fewer than {n} mini-batches: {:?}",
            executor.seen
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = executor.child.kill();
    let _ = executor.child.wait();
}

/// A scheduler that declares an executor lost 3 s after its last heartbeat (checked every
/// second), and keeps jobs 20 s without any executor: (process, address).
fn start_scheduler_losing_executors_fast() -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let mut scheduler = Process::start(&[
        "scheduler",
        "--bind",
        &address,
        "--executor-timeout",
        "3",
        "--expire-interval",
        "1",
        "--no-executors-grace",
        "20",
    ]);
    assert!(
        scheduler.wait_for("listening on", Duration::from_secs(60)),
        "the scheduler starts: {:?}",
        scheduler.seen
    );
    (scheduler, address)
}

/// `n` executors of the scheduler at `address`, each waited for until registered.
fn registered_executors(address: &str, n: usize) -> Vec<Process> {
    registered_executors_with(address, n, &[])
}

/// [`registered_executors`] with extra environment variables.
fn registered_executors_with(address: &str, n: usize, envs: &[(&str, &str)]) -> Vec<Process> {
    (0..n)
        .map(|_| {
            let mut executor = start_executor_with(address, &[], envs);
            assert!(
                executor.wait_for("registration succeed", Duration::from_secs(60)),
                "{:?}",
                executor.seen
            );
            executor
        })
        .collect()
}

/// The driver `parallel-run ARGS` in `dir`, running: (child, its stderr file).
fn start_driver(dir: &Path, args: &[&str]) -> (Child, std::path::PathBuf) {
    start_driver_with(dir, args, &[])
}

/// [`start_driver`] with extra environment variables.
fn start_driver_with(
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Child, std::path::PathBuf) {
    let err_path = dir.join("driver.stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_parallel-run"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    (child, err_path)
}

/// Waits (at most `limit`) for `child` to exit: its exit code, `None` when it was killed
/// at the limit (or by a signal).
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of job `job_id` as the scheduler at `address` reports it.
fn job_status(
    address: &str,
    job_id: &str,
) -> Option<ballista_core::serde::protobuf::job_status::Status> {
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use ballista_core::serde::protobuf::GetJobStatusParams;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = SchedulerGrpcClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        client
            .get_job_status(GetJobStatusParams {
                job_id: job_id.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .and_then(|s| s.status)
    })
}

#[test]
fn ctrl_c_on_the_driver_cancels_the_cluster_job_and_stops_its_workers() {
    let (mut scheduler, address) = start_scheduler();
    let mut executors = registered_executors(&address, 2);
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 1000);
    // Every run() outlasts the test: only a cancellation ends the job.
    std::fs::write(
        dir.path().join("slow.py"),
        "import time\n\ndef init():\n    pass\n\ndef run(mini_batch):\n    time.sleep(600)\n    return mini_batch\n",
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: slow.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 2KB\nrun_invocation_timeout: 900",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let target = format!("compute_target=df://{address}");
    let (mut driver, stderr) = start_driver(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "-q",
            "--output",
            "cluster",
            "--set",
            &target,
        ],
    );
    // The executors run the job: their workers are up (bounded wait).
    let out = dir.path().join("cluster");
    let deadline = Instant::now() + Duration::from_secs(120);
    while python_workers(&out).is_empty() {
        assert!(
            Instant::now() < deadline && driver.try_wait().unwrap().is_none(),
            "the job's workers start: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    unsafe {
        libc::kill(driver.id() as i32, libc::SIGINT);
    }
    let code = wait_exit(&mut driver, Duration::from_secs(60));
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(code, Some(130), "the driver stops as interrupted: {text}");
    assert!(text.contains("--resume"), "{text}");

    // The scheduler cancelled the job, and the executors stopped its workers.
    assert!(
        scheduler.wait_for("Job cancelled", Duration::from_secs(30)),
        "{:?}",
        scheduler.seen
    );
    let line = scheduler
        .seen
        .iter()
        .find(|l| l.contains("Job cancelled"))
        .unwrap();
    let job_id = line
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(id, _)| id.to_string())
        .unwrap();
    use ballista_core::serde::protobuf::job_status::Status;
    let status = job_status(&address, &job_id);
    assert!(
        matches!(status, Some(Status::Failed(_))),
        "job {job_id}: {status:?}"
    );
    assert!(
        workers_gone(&out, Duration::from_secs(60)),
        "workers still run the cancelled job: {:?}",
        python_workers(&out)
    );
    for executor in &mut executors {
        assert!(
            executor.child.try_wait().unwrap().is_none(),
            "the executors keep running"
        );
    }
}

/// A small `rust:echo` job over 50 rows, `node_count` executors of one process.
fn echo_job(dir: &Path, node_count: u32, extra: &str) -> std::path::PathBuf {
    write_csv(&dir.join("t.csv"), 0, 50);
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
             node_count: {node_count}\nprocess_count_per_node: 1\n{extra}"
        ),
        "inputs:\n  - {name: t, path: t.csv, format: csv}\n",
    )
}

#[test]
fn processes_of_another_parallel_run_version_refuse_each_other() {
    let ours = env!("CARGO_PKG_VERSION");
    let other = "9.9.9-test";
    let (mut scheduler, address) = start_scheduler();

    // An executor of another version is refused at registration and stops, saying why.
    let (port, grpc_port) = (free_port().to_string(), free_port().to_string());
    let mut stranger = Process::start_with(
        &[
            "executor",
            "--scheduler",
            &address,
            "--processes",
            "1",
            "--port",
            &port,
            "--grpc-port",
            &grpc_port,
            "--heartbeat",
            "1",
        ],
        &[(parallel_run::cluster::VERSION_OVERRIDE_ENV, other)],
    );
    let code = wait_exit(&mut stranger.child, Duration::from_secs(60));
    stranger.wait_for("\u{0}", Duration::from_secs(2));
    let said = stranger.seen.join("\n");
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {said}");
    assert!(said.contains(other) && said.contains(ours), "{said}");
    assert!(
        scheduler.wait_for("refusing an executor", Duration::from_secs(10)),
        "{:?}",
        scheduler.seen
    );

    // A driver of another version: the scheduler refuses its plan, and the driver says so.
    let mut executor = start_executor(&address);
    assert!(
        executor.wait_for("registration succeed", Duration::from_secs(60)),
        "{:?}",
        executor.seen
    );
    let dir = tempfile::tempdir().unwrap();
    let job = echo_job(dir.path(), 1, "");
    let target = format!("compute_target=df://{address}");
    let (mut driver, stderr) = start_driver_with(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "-q",
            "--output",
            "out",
            "--set",
            &target,
        ],
        &[(parallel_run::cluster::VERSION_OVERRIDE_ENV, other)],
    );
    let code = wait_exit(&mut driver, Duration::from_secs(120));
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {text}");
    assert!(
        text.contains(other) && text.contains(ours) && text.contains(&address),
        "{text}"
    );
    assert!(!dir.path().join("out/parallel_run_step.txt").exists());
}

#[test]
fn a_job_s_partitions_spread_over_executors_with_more_slots_than_it_needs() {
    // Two executors of 4 slots each, a job of 2 x 1 partitions: without a cap on partitions
    // per task and round-robin dealing, the first executor takes both.
    let (_scheduler, address) = start_scheduler();
    let executors: Vec<Process> = (0..2)
        .map(|_| {
            let mut executor = start_executor_with(&address, &["--processes", "4"], &[]);
            assert!(
                executor.wait_for("registration succeed", Duration::from_secs(60)),
                "{:?}",
                executor.seen
            );
            executor
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let job = echo_job(dir.path(), 2, "mini_batch_size: 100");
    let target = format!("compute_target=df://{address}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "-q",
            "--output",
            "out",
            "--set",
            &target,
        ],
        Duration::from_secs(180),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let rows = processed(&dir.path().join("out"));
    assert!(rows.len() >= 2, "{rows:?}");
    let nodes: BTreeSet<&str> = rows
        .iter()
        .map(|row| row["process"].rsplit_once('/').map_or("", |(node, _)| node))
        .collect();
    let pids: BTreeSet<String> = executors
        .iter()
        .map(|e| format!(":{}", e.child.id()))
        .collect();
    assert_eq!(nodes.len(), 2, "both executors run a task: {nodes:?}");
    for node in &nodes {
        assert!(
            pids.iter().any(|pid| node.ends_with(pid.as_str())),
            "{node} {pids:?}"
        );
    }
}

#[test]
fn a_cluster_job_waits_for_node_count_executors_or_says_how_many_it_found() {
    let (_scheduler, address) = start_scheduler();
    let mut first = start_executor(&address);
    assert!(
        first.wait_for("registration succeed", Duration::from_secs(60)),
        "{:?}",
        first.seen
    );
    let target = format!("compute_target=df://{address}");

    // Too few, and none comes: a usage error naming the counts, before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let job = echo_job(dir.path(), 2, "executor_wait_timeout: 1");
    let (mut driver, stderr) = start_driver(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "-q",
            "--output",
            "out",
            "--set",
            &target,
        ],
    );
    let code = wait_exit(&mut driver, Duration::from_secs(60));
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "found 1 of 2 executors at {address}; start more executors or lower node_count"
        )),
        "{text}"
    );
    assert!(!dir.path().join("out").exists(), "nothing written");

    // The second executor comes while the driver waits: the job runs.
    let job = echo_job(dir.path(), 2, "executor_wait_timeout: 300");
    let (mut driver, stderr) = start_driver(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "--output",
            "out",
            "--set",
            &target,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("waiting up to 300 s for 2 executors")
    {
        assert!(
            Instant::now() < deadline && driver.try_wait().unwrap().is_none(),
            "the driver waits: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _second = start_executor(&address);
    let code = wait_exit(&mut driver, Duration::from_secs(180));
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        txt_ids(&dir.path().join("out/parallel_run_step.txt")).len(),
        50
    );
}

#[test]
fn a_job_exceeding_error_threshold_on_two_executors_stops_promptly() {
    let (_scheduler, address) = start_scheduler();
    let _executors = registered_executors(&address, 2);
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 2000);
    let calls = dir.path().join("calls.txt");
    std::fs::write(
        dir.path().join("fail.py"),
        counting_script(&calls, "raise ValueError('bad batch')"),
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: fail.py\nenvironment: {{python: {}}}\nerror_threshold: 190\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 1KB\nrun_max_try: 1",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let job = job.to_str().unwrap().to_string();
    let limit = Duration::from_secs(180);
    let (local_code, stderr) =
        run_bounded(dir.path(), &["run", &job, "-q", "--output", "local"], limit);
    assert_ne!(local_code, Some(0), "{stderr}");
    std::fs::remove_file(&calls).unwrap();

    let target = format!("compute_target=df://{address}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", &job, "-q", "--output", "cluster", "--set", &target],
        limit,
    );
    assert_eq!(code, local_code, "exit code as locally: {stderr}");
    assert!(stderr.contains("error_threshold"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("cluster/logs/job_summary.json")).unwrap(),
    )
    .unwrap();
    let total = summary["mini_batches_total"].as_u64().unwrap();
    let processed = processed(&dir.path().join("cluster")).len() as u64;
    let ran = run_calls(&calls).values().sum::<usize>() as u64;
    assert!(total > 40, "{summary}");
    // error_threshold counts items (about 19 per mini-batch): over the whole job it is
    // crossed after about 10 failed mini-batches, 5 per executor (each executor alone would
    // cross it after 10 of its own). The job stopped on both executors well before the end.
    assert!(
        processed > 5 && processed < total / 2,
        "{processed} of {total}: {summary}"
    );
    assert!(ran < total, "{ran} run() calls for {total} mini-batches");
}

/// A Python entry script writing `init PID TIME`, `run PID TIME` (per mini-batch, after
/// sleeping `pause` seconds) and `shutdown PID TIME` lines to `events`.
fn life_cycle_script(events: &Path, pause: f64) -> String {
    format!(
        "import os, time\n\nEVENTS = {:?}\n\n\
         def note(what):\n    with open(EVENTS, 'a') as f:\n        \
         f.write('%s %d %.3f\\n' % (what, os.getpid(), time.time()))\n\n\
         def init():\n    note('init')\n\n\
         def run(mini_batch):\n    time.sleep({pause})\n    note('run')\n    \
         return mini_batch\n\n\
         def shutdown():\n    note('shutdown')\n",
        events.display().to_string()
    )
}

/// The pids of `what` lines in a [`life_cycle_script`]'s file, in order.
fn events(path: &Path, what: &str) -> Vec<String> {
    timed_events(path, what)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// The (pid, time in seconds) of `what` lines in a [`life_cycle_script`]'s file, in order.
fn timed_events(path: &Path, what: &str) -> Vec<(String, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            (fields.next()? == what).then_some(())?;
            let pid = fields.next()?.to_string();
            Some((pid, fields.next()?.parse().ok()?))
        })
        .collect()
}

/// The ids of the records in the shared store's `records` folder.
fn record_ids(records: &Path) -> BTreeSet<String> {
    std::fs::read_dir(records)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".json").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of the mini-batches in a job's ledger (`logs/ledger/records.jsonl`).
fn ledger_ids(out: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(out.join("logs/ledger/records.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            entry["record"]["mini_batch_id"]
                .as_str()
                .or_else(|| entry["record"]["id"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Each mini-batch of a job's ledger: its id, rows and slice fingerprint, in id order.
fn ledger_slices(out: &Path) -> BTreeSet<(String, String, String)> {
    std::fs::read_to_string(out.join("logs/ledger/records.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                entry["record"]["id"].to_string(),
                entry["record"]["lineage"]["rows"].to_string(),
                entry["slice"].to_string(),
            )
        })
        .collect()
}

/// Polls (at most `limit`) until `done`.
fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

#[test]
fn an_executor_initialises_a_job_s_worker_once_and_stops_it_when_the_job_ends() {
    let (_scheduler, address) = start_scheduler();
    // One worker slot, and an idle timeout longer than the test: only the job's end, which
    // the executor learns from the scheduler, stops the worker.
    let mut executor = start_executor_with(&address, &["--worker-idle-timeout", "600"], &[]);
    assert!(
        executor.wait_for("registration succeed", Duration::from_secs(60)),
        "{:?}",
        executor.seen
    );
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 300);
    let log = dir.path().join("events.txt");
    std::fs::write(dir.path().join("life.py"), life_cycle_script(&log, 0.0)).unwrap();
    // 3 partitions on an executor of one slot: 3 tasks, one after the other.
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: life.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 1\nprocess_count_per_node: 3\n\
             mini_batch_size: 1KB",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let job = job.to_str().unwrap().to_string();
    let target = format!("compute_target=df://{address}");
    let limit = Duration::from_secs(180);
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", &job, "-q", "--output", "first", "--set", &target],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}\nexecutor: {:?}", executor.seen);
    assert_eq!(
        lines(&dir.path().join("first/parallel_run_step.txt")).len(),
        300
    );
    let succeeded = summary(&dir.path().join("first"))["mini_batches_succeeded"]
        .as_u64()
        .unwrap();
    assert!(succeeded >= 6, "mini-batches in every task: {succeeded}");

    // The job's three tasks ran on one worker, initialised once.
    let inits = events(&log, "init");
    assert_eq!(inits.len(), 1, "init() once per slot per job: {inits:?}");
    let runs = events(&log, "run");
    assert_eq!(runs.len() as u64, succeeded);
    assert!(runs.iter().all(|pid| *pid == inits[0]), "{runs:?}");

    // The job is over: the executor stops its worker (the script's shutdown() runs) within
    // seconds, without waiting for the idle timeout.
    let out = dir.path().join("first");
    assert!(
        eventually(Duration::from_secs(30), || events(&log, "shutdown")
            == inits),
        "shutdown() of the worker: {:?}",
        std::fs::read_to_string(&log)
    );
    assert!(
        workers_gone(&out, Duration::from_secs(20)),
        "workers left: {:?}",
        python_workers(&out)
    );

    // The same job again is another cluster job: its own worker, initialised once.
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", &job, "-q", "--output", "second", "--set", &target],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let inits = events(&log, "init");
    assert_eq!(inits.len(), 2, "{inits:?}");
    assert_ne!(inits[0], inits[1]);
    assert_eq!(events(&log, "run").len() as u64, 2 * succeeded);
    assert!(
        eventually(Duration::from_secs(30), || events(&log, "shutdown")
            == inits),
        "{:?}",
        std::fs::read_to_string(&log)
    );
    assert!(
        executor.child.try_wait().unwrap().is_none(),
        "the executor runs on"
    );
}

#[test]
fn an_executor_stops_a_running_job_s_idle_workers_after_the_idle_timeout() {
    let (_scheduler, address) = start_scheduler();
    let executors: Vec<Process> = (0..2)
        .map(|_| {
            let mut executor = start_executor_with(&address, &["--worker-idle-timeout", "2"], &[]);
            assert!(
                executor.wait_for("registration succeed", Duration::from_secs(60)),
                "{:?}",
                executor.seen
            );
            executor
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 300);
    let log = dir.path().join("events.txt");
    // The worker whose init() comes second is slow (2 s per mini-batch): its task keeps the
    // job running long after the other executor's task ended and gave its worker back.
    let marker = dir.path().join("fast.marker");
    let script = life_cycle_script(&log, 0.0).replace(
        "def init():\n    note('init')\n",
        &format!(
            "SLOW = [False]\n\ndef init():\n    note('init')\n    try:\n        \
             os.close(os.open({:?}, os.O_CREAT | os.O_EXCL))\n    except FileExistsError:\n        \
             SLOW[0] = True\n",
            marker.display().to_string()
        ),
    );
    let script = script.replace(
        "def run(mini_batch):\n",
        "def run(mini_batch):\n    if SLOW[0]:\n        time.sleep(2)\n",
    );
    assert!(script.contains("SLOW[0] = True") && script.contains("if SLOW[0]"));
    std::fs::write(dir.path().join("life.py"), script).unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: life.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 1KB",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let target = format!("compute_target=df://{address}");
    let (mut driver, stderr) = start_driver(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "-q",
            "--output",
            "out",
            "--set",
            &target,
        ],
    );
    // Both workers start; the fast one's task ends, and its worker, idle while the job still
    // runs on the other executor, is shut down (its shutdown() runs) after the idle timeout.
    assert!(
        eventually(Duration::from_secs(120), || events(&log, "init").len() == 2),
        "both workers start: {:?} {}",
        std::fs::read_to_string(&log),
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let stopped_while_running = eventually(Duration::from_secs(60), || {
        !events(&log, "shutdown").is_empty()
    }) && driver.try_wait().unwrap().is_none();
    assert!(
        stopped_while_running,
        "an idle worker is shut down while the job runs: {:?}",
        std::fs::read_to_string(&log)
    );
    // Not at the end of its task, as without the pool: after the idle timeout (2 s).
    let (fast, stopped_at) = timed_events(&log, "shutdown")[0].clone();
    let last_run = timed_events(&log, "run")
        .into_iter()
        .filter(|(pid, _)| *pid == fast)
        .map(|(_, at)| at)
        .fold(0.0, f64::max);
    let idle = stopped_at - last_run;
    assert!(
        (1.5..30.0).contains(&idle),
        "worker {fast} stopped {idle:.2} s after its last run(): {:?}",
        std::fs::read_to_string(&log)
    );
    let code = wait_exit(&mut driver, Duration::from_secs(180));
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    assert_eq!(
        lines(&dir.path().join("out/parallel_run_step.txt")).len(),
        300
    );
    // After the job, the other worker stops too: no worker is left.
    let mut inits = events(&log, "init");
    inits.sort();
    assert!(
        eventually(Duration::from_secs(30), || {
            let mut stopped = events(&log, "shutdown");
            stopped.sort();
            stopped == inits
        }),
        "{:?}",
        std::fs::read_to_string(&log)
    );
    let out = dir.path().join("out");
    assert!(
        workers_gone(&out, Duration::from_secs(20)),
        "workers left: {:?}",
        python_workers(&out)
    );
    drop(executors);
}

/// Where a crash-and-resume test writes: a folder, or a prefix on an S3-protocol server.
enum Output {
    Folder,
    S3(crate::object_store::store::Store, String),
}

impl Output {
    /// The job's `output:` (and `storage_options:`) lines; its local folder is `out`.
    fn job_lines(&self, out: &Path) -> String {
        match self {
            Output::Folder => format!("output: \"{}\"\n", out.display()),
            Output::S3(store, prefix) => format!(
                "output: \"{}\"\n{}",
                store.url(&format!("{prefix}/")),
                store.storage_options(&format!("local_dir: {}", out.display()))
            ),
        }
    }

    /// The ids of the records in the shared staging area.
    fn record_ids(&self, out: &Path) -> BTreeSet<String> {
        let records = ".parallel_run/staging/shared/records";
        match self {
            Output::Folder => record_ids(&out.join(records)),
            Output::S3(store, prefix) => store
                .list(&format!("{prefix}/{records}"))
                .into_iter()
                .filter_map(|key| {
                    let name = key.rsplit('/').next()?;
                    name.strip_suffix(".json").map(str::to_string)
                })
                .collect(),
        }
    }

    /// The objects left in the shared staging area.
    fn staging_left(&self, out: &Path) -> Vec<String> {
        let staging = ".parallel_run/staging/shared";
        match self {
            Output::Folder => std::fs::read_dir(out.join(staging))
                .map(|e| {
                    e.flatten()
                        .map(|e| e.path().display().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            Output::S3(store, prefix) => store.list(&format!("{prefix}/{staging}")),
        }
    }

    /// The lines of the final file.
    fn final_lines(&self, out: &Path, file: &str) -> Vec<String> {
        match self {
            Output::Folder => lines(&out.join(file)),
            Output::S3(store, prefix) => {
                let object = store
                    .get(&format!("{prefix}/{file}"))
                    .unwrap_or_else(|| panic!("{prefix}/{file}: {:?}", store.list(prefix)));
                String::from_utf8(object)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect()
            }
        }
    }
}

/// The driver is SIGKILLed mid-job: its cluster job runs on and its executors keep
/// committing records the driver never saw. `--resume` stops that job, adopts those records
/// (committed through the ledger, not run again: one run() call each) and runs the rest:
/// the output equals a local run's, and the report counts the adopted ones as skipped.
fn crash_and_resume(output: Output) {
    let (scheduler, address) = start_scheduler();
    let env = match &output {
        Output::Folder => Vec::new(),
        Output::S3(store, _) => store.env(),
    };
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let executors = registered_executors_with(&address, 2, &envs);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/t.csv");
    write_csv(&data, 0, 1000);
    let calls = dir.path().join("calls.txt");
    std::fs::write(
        dir.path().join("slow.py"),
        counting_script(&calls, "time.sleep(0.5)\n    return mini_batch"),
    )
    .unwrap();
    // The driver's local folder (the output, or an object-storage output's mirror).
    let out = dir.path().join("cluster");
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: slow.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 2KB",
            python()
        ),
        &format!(
            "inputs:\n  - {{name: t, path: \"{}\", format: csv}}\n{}",
            data.display(),
            output.job_lines(&out)
        ),
    );
    let job = job.to_str().unwrap().to_string();
    let limit = Duration::from_secs(180);
    let (code, stderr) = run_bounded(dir.path(), &["run", &job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_file(&calls).unwrap();

    let target = format!("compute_target=df://{address}");
    let cluster = ["run", &job, "-q", "--set", &target];
    let (mut driver, driver_err) = start_driver(dir.path(), &cluster);
    let deadline = Instant::now() + Duration::from_secs(120);
    while output.record_ids(&out).len() < 3 {
        assert!(
            Instant::now() < deadline && driver.try_wait().unwrap().is_none(),
            "the cluster job commits: {}",
            std::fs::read_to_string(&driver_err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    driver.kill().unwrap();
    driver.wait().unwrap();
    let committed = ledger_ids(&out);
    // The job runs on without its driver: more records come (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    let orphaned = loop {
        let orphaned: BTreeSet<String> = output
            .record_ids(&out)
            .difference(&committed)
            .cloned()
            .collect();
        if orphaned.len() >= 3 {
            break orphaned;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster job ran on after its driver was killed: {orphaned:?}, scheduler: {:?}",
            scheduler.seen
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let mut resume = cluster.to_vec();
    resume.push("--resume");
    let (code, stderr) = run_bounded(dir.path(), &resume, limit);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("adopted"), "{stderr}");

    let file = "parallel_run_step.txt";
    let mut cluster_lines = output.final_lines(&out, file);
    cluster_lines.sort();
    let mut local_lines = lines(&dir.path().join("local").join(file));
    local_lines.sort();
    assert_eq!(cluster_lines.len(), 1000);
    assert_eq!(cluster_lines, local_lines, "no row lost, none twice");
    let report = processed(&out);
    let mut ids: Vec<String> = report.iter().map(|r| r["mini_batch_id"].clone()).collect();
    ids.sort();
    let mut local_ids: Vec<String> = processed(&dir.path().join("local"))
        .into_iter()
        .map(|r| r["mini_batch_id"].clone())
        .collect();
    local_ids.sort();
    assert_eq!(ids, local_ids, "one record per mini-batch");

    // The records the crashed driver never committed were adopted: run() once each.
    let calls = run_calls(&calls);
    for id in &orphaned {
        let row = report
            .iter()
            .find(|r| &r["mini_batch_id"] == id)
            .unwrap_or_else(|| panic!("mini batch {id} reported"));
        let first = first_row(&row["rows"]);
        assert_eq!(calls.get(&first), Some(&1), "mini batch {id}: {calls:?}");
    }
    let summary = summary(&out);
    assert_eq!(summary["resumed"], true, "{summary}");
    let skipped = summary["mini_batches_skipped"].as_u64().unwrap();
    assert!(
        skipped as usize >= committed.len() + orphaned.len(),
        "ledger {} + adopted {} skipped: {summary}",
        committed.len(),
        orphaned.len()
    );
    // The shared staging area was removed after the commit.
    let left = output.staging_left(&out);
    assert!(left.is_empty(), "{left:?}");
    drop(executors);
}

#[test]
fn a_resume_adopts_what_the_cluster_job_of_a_crashed_driver_finished() {
    crash_and_resume(Output::Folder);
}

/// The same with the output on an S3-protocol server: the records and parts are objects.
#[test]
fn a_resume_adopts_what_a_crashed_driver_left_on_object_storage() {
    use crate::object_store::store::{shared, unique};
    let store = shared(crate::servers::Kind::S3);
    crash_and_resume(Output::S3(store, unique("cluster-crash")));
}

/// Runs `job` (in `dir`) locally into `dir/local`, then on the cluster at `address` into
/// `dir/cluster`; both must succeed.
fn run_local_and_on_cluster(dir: &Path, job: &Path, address: &str) {
    let job = job.to_str().unwrap();
    let limit = Duration::from_secs(180);
    let (code, stderr) = run_bounded(dir, &["run", job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    let target = format!("compute_target=df://{address}");
    let (code, stderr) = run_bounded(
        dir,
        &["run", job, "-q", "--output", "cluster", "--set", &target],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}");
}

/// The lines of `out`'s parallel_run_step.txt, sorted.
fn sorted_output_lines(out: &Path) -> Vec<String> {
    let mut lines = lines(&out.join("parallel_run_step.txt"));
    lines.sort();
    lines
}

/// `(mini_batch_id, rows)` of every mini-batch in `out`'s report, sorted.
fn mini_batch_rows(out: &Path) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = processed(out)
        .into_iter()
        .map(|r| (r["mini_batch_id"].clone(), r["rows"].clone()))
        .collect();
    ids.sort();
    ids
}

/// The shared S3-protocol server, a scheduler and 2 registered executors whose environment
/// holds the server's credentials (secrets never travel in the plan).
fn s3_cluster() -> (
    crate::object_store::store::Store,
    Process,
    String,
    Vec<Process>,
) {
    let store = crate::object_store::store::shared(crate::servers::Kind::S3);
    let (scheduler, address) = start_scheduler();
    let env = store.env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let executors = registered_executors_with(&address, 2, &envs);
    (store, scheduler, address, executors)
}

/// A cluster job writing to object storage (an S3-protocol server on 127.0.0.1): the
/// executors commit into the output's staging prefix in the bucket, taking the credentials
/// from their own environment (secrets never travel in the plan); the final object equals a
/// local run's output and the shared staging prefix is removed.
#[test]
fn a_cluster_job_writes_its_output_to_object_storage() {
    use crate::object_store::store::unique;
    let (store, _scheduler, address, executors) = s3_cluster();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("cluster-out");
    let data = dir.path().join("data/t.csv");
    write_csv(&data, 0, 500);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\nmini_batch_size: 2KB",
        &format!(
            "inputs:\n  - {{name: t, path: \"{}\", format: csv}}\noutput: \"{}\"\n{}",
            data.display(),
            store.url(&format!("{prefix}/")),
            store.storage_options(&format!(
                "local_dir: {}",
                dir.path().join("mirror").display()
            ))
        ),
    );
    let job = job.to_str().unwrap().to_string();
    let limit = Duration::from_secs(180);
    let (code, stderr) = run_bounded(dir.path(), &["run", &job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    let target = format!("compute_target=df://{address}");
    let (code, stderr) = run_bounded(dir.path(), &["run", &job, "-q", "--set", &target], limit);
    assert_eq!(code, Some(0), "{stderr}");

    let file = "parallel_run_step.txt";
    let object = store
        .get(&format!("{prefix}/{file}"))
        .unwrap_or_else(|| panic!("{prefix}/{file} written: {:?}", store.list(&prefix)));
    let mut cluster: Vec<String> = String::from_utf8(object)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    cluster.sort();
    let mut local = lines(&dir.path().join("local").join(file));
    local.sort();
    assert_eq!(cluster.len(), 500);
    assert_eq!(cluster, local, "no row lost, none twice");
    let staging = store.list(&format!("{prefix}/.parallel_run/staging/shared"));
    assert!(
        staging.is_empty(),
        "the shared staging prefix is removed: {staging:?}"
    );
    // Run by the executors: their records name the node.
    let node = format!(":{}/process", executors[0].child.id());
    let other = format!(":{}/process", executors[1].child.id());
    let report = processed(&dir.path().join("mirror"));
    assert!(!report.is_empty());
    for row in &report {
        assert!(
            row["process"].contains(&node) || row["process"].contains(&other),
            "{row:?}"
        );
    }
}

#[test]
fn a_cluster_job_reads_parquet_and_csv_on_object_storage_by_descriptor() {
    use crate::object_store::store::unique;
    let (store, _scheduler, address, _executors) = s3_cluster();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("cluster-in");
    let upload = dir.path().join("upload");
    write_parquet(&upload.join("p/a.parquet"), 0, 600, 250);
    write_parquet(&upload.join("p/b.parquet"), 600, 400, 150);
    write_csv(&upload.join("c/t.csv"), 1000, 500);
    store.upload_dir(&upload, &prefix);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\nmini_batch_size: 4KB",
        &format!(
            "inputs:\n  - {{name: p, path: \"{}\", format: parquet}}\n  \
             - {{name: c, path: \"{}\", format: csv}}\n{}",
            store.url(&format!("{prefix}/p/")),
            store.url(&format!("{prefix}/c/t.csv")),
            store.storage_options("")
        ),
    );
    run_local_and_on_cluster(dir.path(), &job, &address);

    let cluster = sorted_output_lines(&dir.path().join("cluster"));
    assert_eq!(cluster.len(), 1500);
    assert_eq!(cluster, sorted_output_lines(&dir.path().join("local")));
    // The same mini-batches of both inputs (ids and rows), run by the executors.
    let ids = |out: &Path| {
        let mut ids: Vec<(String, String, String)> = processed(out)
            .into_iter()
            .map(|r| {
                (
                    r["mini_batch_id"].clone(),
                    r["rows"].clone(),
                    r["process"].clone(),
                )
            })
            .collect();
        ids.sort();
        ids
    };
    let local = ids(&dir.path().join("local"));
    let on_cluster = ids(&dir.path().join("cluster"));
    let without_process = |ids: &[(String, String, String)]| -> Vec<(String, String)> {
        ids.iter().map(|(i, r, _)| (i.clone(), r.clone())).collect()
    };
    assert_eq!(without_process(&on_cluster), without_process(&local));
    assert!(
        local.iter().any(|(id, _, _)| id.starts_with("0-")),
        "{local:?}"
    );
    assert!(
        local.iter().any(|(id, _, _)| id.starts_with("1-")),
        "{local:?}"
    );
    // A mini-batch spans the two Parquet files' boundary (row 600), as the footers cut it.
    assert!(
        local.iter().any(|(id, rows, _)| id.starts_with("0-") && {
            let (a, b) = rows.split_once("..").unwrap();
            a.parse::<u64>().unwrap() < 600 && b.parse::<u64>().unwrap() > 600
        }),
        "{local:?}"
    );
    for (_, _, process) in &on_cluster {
        assert!(
            !process.starts_with("process"),
            "run by an executor: {process}"
        );
    }
}

/// A file dataset on object storage on a cluster: the driver lists the objects by URL and
/// downloads nothing; each executor downloads its mini-batches' files into a folder of its
/// own (under its temporary folder), gives run() the local copies, and removes them when the
/// mini-batch is done. Same rows and mini-batches as a local run.
#[test]
fn a_file_dataset_on_object_storage_is_downloaded_by_the_executors_not_the_driver() {
    use crate::object_store::jobs::text_files;
    use crate::object_store::store::unique;
    let store = crate::object_store::store::shared(crate::servers::Kind::S3);
    let (_scheduler, address) = start_scheduler();
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("executor-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut envs = store.env();
    envs.push(("TMPDIR".into(), tmp.display().to_string()));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _executors = registered_executors_with(&address, 2, &envs);
    let prefix = unique("cluster-files");
    let files = dir.path().join("files");
    text_files(&files, 24);
    store.upload_dir(&files, &prefix);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\nmini_batch_size: 3",
        &format!(
            "inputs:\n  - {{name: docs, path: \"{}\", format: files}}\n\
             arguments: [--read-files]\n{}",
            store.url(&format!("{prefix}/")),
            store.storage_options("")
        ),
    );
    run_local_and_on_cluster(dir.path(), &job, &address);
    let cluster = sorted_output_lines(&dir.path().join("cluster"));
    assert_eq!(cluster.len(), 24);
    assert_eq!(
        cluster,
        sorted_output_lines(&dir.path().join("local")),
        "the same files' contents"
    );
    assert_eq!(
        mini_batch_rows(&dir.path().join("cluster")),
        mini_batch_rows(&dir.path().join("local"))
    );
    // Nothing downloaded by the driver; the executors' copies are gone.
    let cache = dir.path().join("cluster/.parallel_run/cache");
    let cached = std::fs::read_dir(&cache).map(|r| r.count()).unwrap_or(0);
    assert_eq!(cached, 0, "the driver downloaded into {}", cache.display());
    let copies = tmp.join("parallel-run-executor-files");
    assert!(
        copies.exists(),
        "the executors downloaded into {}",
        copies.display()
    );
    let left: Vec<_> = std::fs::read_dir(&copies).unwrap().collect();
    assert!(left.is_empty(), "mini-batch folders left: {left:?}");
}

/// `node` (`HOST:PID` in processed_mini-batches.csv) as its folder in the output's logs.
fn node_folder(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The text of every file in `folder` (none when it does not exist), concatenated.
fn texts_in(folder: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
}

#[test]
fn a_python_jobs_worker_logs_reach_the_output_under_each_executor() {
    let (scheduler, address) = start_scheduler();
    let executors = registered_executors(&address, 2);
    let pids: BTreeSet<u32> = executors.iter().map(|e| e.child.id()).collect();

    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 600);
    // Every run() prints a marker naming its mini-batch's first id, and logs one through
    // EntryScript().logger; the import prints too.
    std::fs::write(
        dir.path().join("marker.py"),
        "import time\nfrom azureml_user.parallel_run import EntryScript\n\n\
         print('imported on', EntryScript().node_id)\n\n\
         def run(mini_batch):\n    time.sleep(0.05)\n    first = mini_batch.iloc[0, 0]\n    \
         print('MARKER', first, flush=True)\n    \
         EntryScript().logger.info('LOGGED %s', first)\n    return mini_batch\n",
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: marker.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 1KB",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let target = format!("compute_target=df://{address}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "-q",
            "--output",
            "out",
            "--set",
            &target,
        ],
        Duration::from_secs(180),
    );
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    let out = dir.path().join("out");

    // processed_mini-batches.csv names the executor of every mini-batch (HOST:PID/agent).
    let rows = processed(&out);
    assert!(rows.len() > 10, "{rows:?}");
    let node_of = |row: &BTreeMap<String, String>| {
        let (node, agent) = row["process"].rsplit_once('/').unwrap();
        assert!(agent.starts_with("process"), "{row:?}");
        node.to_string()
    };
    let nodes: BTreeSet<String> = rows.iter().map(node_of).collect();
    for node in &nodes {
        let pid: u32 = node.rsplit_once(':').unwrap().1.parse().unwrap();
        assert!(
            pids.contains(&pid),
            "{node} is one of the executors {pids:?}"
        );
    }
    // job_summary.json counts the executors that ran them.
    let summary = summary(&out);
    assert_eq!(summary["executors"], nodes.len() as u64, "{summary}");

    // Both executors' workers logged into the output, each under its own node folder (no
    // node000), and every mini-batch's marker is in the logs of the executor that ran it.
    let user = out.join("logs/user");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for pid in &pids {
        let folder = node_folder(&format!("{hostname}:{pid}"));
        let stdout = texts_in(&user.join("stdout").join(&folder));
        assert!(
            stdout.contains(&format!("imported on {folder}")),
            "{folder}: {stdout:?}\nlogs: {:?}",
            std::fs::read_dir(user.join("stdout"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    }
    assert!(!user.join("stdout/node000").exists());
    for row in &rows {
        let folder = node_folder(&node_of(row));
        let first = first_row(&row["rows"]);
        let stdout = texts_in(&user.join("stdout").join(&folder));
        assert!(
            stdout.contains(&format!("MARKER {first}\n")),
            "{folder} ran {first}: {stdout}"
        );
        let logged = texts_in(&user.join("entry_script_log").join(&folder));
        assert!(
            logged.contains(&format!("LOGGED {first}")),
            "{folder}: {logged}"
        );
    }
    // The shared staging area was cleared; the logs stay.
    assert!(!out.join(".parallel_run/staging/shared/records").exists());
    drop(executors);
}

#[test]
fn the_logs_an_executor_copied_before_its_sigkill_stay_in_the_output() {
    let (scheduler, address) = start_scheduler_losing_executors_fast();
    // The executors copy their workers' logs every second.
    let envs = [("PARALLEL_RUN_LOG_COPY_SECONDS", "1")];
    let mut a = start_executor_with(&address, &[], &envs);
    let mut b = start_executor_with(&address, &[], &envs);
    for executor in [&mut a, &mut b] {
        assert!(
            executor.wait_for("registration succeed", Duration::from_secs(60)),
            "{:?}",
            executor.seen
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 2000);
    std::fs::write(
        dir.path().join("slow.py"),
        "import time\n\ndef run(mini_batch):\n    time.sleep(0.3)\n    \
         print('MARKER', mini_batch.iloc[0, 0], flush=True)\n    return mini_batch\n",
    )
    .unwrap();
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: slow.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 1KB\nrun_max_try: 3",
            python()
        ),
        "inputs:\n  - {name: t, path: data/t.csv, format: csv}\n",
    );
    let job = job.to_str().unwrap().to_string();
    let target = format!("compute_target=df://{address}");
    let driver_dir = dir.path().to_path_buf();
    let driver = std::thread::spawn(move || {
        run_bounded(
            &driver_dir,
            &["run", &job, "-q", "--output", "out", "--set", &target],
            Duration::from_secs(180),
        )
    });
    // Once a periodic copy of B's worker output reached the output, B is killed.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let b_folder = node_folder(&format!("{hostname}:{}", b.child.id()));
    let b_stdout = dir
        .path()
        .join("out/logs/user/stdout")
        .join(&b_folder)
        .join("process000.stdout.txt");
    let deadline = Instant::now() + Duration::from_secs(120);
    let copied = loop {
        let text = std::fs::read_to_string(&b_stdout).unwrap_or_default();
        if text.contains("MARKER") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no copy of B's logs: {:?}",
            b.seen
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let records = dir.path().join("out/.parallel_run/staging/shared/records");
    let b_committed = recorded_by(&records, b.child.id());
    let _ = b.child.kill();
    let _ = b.child.wait();
    let (code, stderr) = driver.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    // B was killed mid-task (its partition holds every other mini-batch): the copy it left
    // came from a periodic pass, not from the end of its task.
    let total = processed(&dir.path().join("out")).len();
    assert!(b_committed < total / 2, "{b_committed} of {total}");

    // What B copied before it was killed is still there (at least that, whole lines).
    let kept = std::fs::read_to_string(&b_stdout).unwrap();
    assert!(kept.starts_with(&copied) && kept.ends_with('\n'), "{kept}");
    // A ran the rest: its logs are there too, and every mini-batch is in the output once.
    let out = dir.path().join("out");
    let a_folder = node_folder(&format!("{hostname}:{}", a.child.id()));
    assert!(texts_in(&out.join("logs/user/stdout").join(&a_folder)).contains("MARKER"));
    assert_eq!(lines(&out.join("parallel_run_step.txt")).len(), 2000);
    let nodes: BTreeSet<String> = processed(&out)
        .into_iter()
        .map(|r| r["process"].rsplit_once('/').unwrap().0.to_string())
        .collect();
    assert_eq!(summary(&out)["executors"], nodes.len() as u64);
    drop(a);
}

#[test]
fn a_cluster_jobs_worker_logs_reach_an_output_in_a_bucket() {
    use crate::object_store::store::{shared, unique};
    let store = shared(crate::servers::Kind::S3);
    let (scheduler, address) = start_scheduler();
    // Secrets never travel in the plan: the executors take them from their environment.
    let env = store.env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let executors: Vec<Process> = (0..2)
        .map(|_| {
            let mut executor = start_executor_with(&address, &[], &envs);
            assert!(
                executor.wait_for("registration succeed", Duration::from_secs(60)),
                "{:?}",
                executor.seen
            );
            executor
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("data/t.csv"), 0, 300);
    std::fs::write(
        dir.path().join("marker.py"),
        "def run(mini_batch):\n    print('MARKER', mini_batch.iloc[0, 0], flush=True)\n    \
         return mini_batch\n",
    )
    .unwrap();
    let prefix = unique("cluster-logs");
    let job = write_job(
        dir.path(),
        &format!(
            "entry_script: marker.py\nenvironment: {{python: {}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 2\nprocess_count_per_node: 1\n\
             mini_batch_size: 1KB",
            python()
        ),
        &format!(
            "inputs:\n  - {{name: t, path: data/t.csv, format: csv}}\noutput: \"{}\"\n",
            store.url(&format!("{prefix}/out")),
        ),
    );
    // The driver too takes the store's settings from its environment.
    let target = format!("compute_target=df://{address}");
    let (mut driver, stderr) = start_driver_with(
        dir.path(),
        &["run", job.to_str().unwrap(), "-q", "--set", &target],
        &envs,
    );
    let code = wait_exit(&mut driver, Duration::from_secs(180));
    let stderr = std::fs::read_to_string(stderr).unwrap_or_default();
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);

    // Each executor's stdout is in the bucket under its node folder, with the markers of
    // the mini-batches it ran; the records name the executors and the summary counts them.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let text = |key: &str| String::from_utf8(store.get(key).unwrap_or_default()).unwrap();
    let mut markers = 0;
    for executor in &executors {
        let folder = node_folder(&format!("{hostname}:{}", executor.child.id()));
        let stdout = text(&format!(
            "{prefix}/out/logs/user/stdout/{folder}/process000.stdout.txt"
        ));
        markers += stdout.matches("MARKER ").count();
    }
    let summary: serde_json::Value =
        serde_json::from_str(&text(&format!("{prefix}/out/logs/job_summary.json"))).unwrap();
    let total = summary["mini_batches_succeeded"].as_u64().unwrap();
    assert!(total > 3, "{summary}");
    assert_eq!(
        markers as u64, total,
        "every run() printed once, in the bucket"
    );
    let processed = text(&format!(
        "{prefix}/out/logs/sys/job_report/processed_mini-batches.csv"
    ));
    let nodes: BTreeSet<&str> = processed
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(5)?.rsplit_once('/').map(|(n, _)| n))
        .collect();
    assert_eq!(summary["executors"], nodes.len() as u64, "{processed}");
    assert!(
        store
            .list(&format!("{prefix}/out/logs/user/stdout"))
            .iter()
            .all(|key| !key.contains("node000")),
        "no node000 folder"
    );
}

mod keyed;
