//! The cluster workloads: the score job on a Ballista cluster made of parallel-run's own
//! scheduler and 2 executors of 1 process each, all on loopback, against the same job run
//! locally with 2 processes. Both sides read the same local Parquet files (the executors read
//! their mini-batches' rows from them) and write the same output.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::setup::{count_label, shell_line, Ctx, DataSet};
use crate::workloads::{dir_arg, echo_job, engine_side, score_job, Workload, SCORE_INIT_SECS};

/// Executors of the cluster, and worker processes in each.
pub const EXECUTORS: u32 = 2;

/// The scheduler and executors the cluster workloads run on (stopped on drop).
pub struct Cluster {
    /// `HOST:PORT` of the scheduler.
    pub address: String,
    processes: Vec<Child>,
    /// How to start the same cluster by hand.
    pub by_hand: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(HarnessError::io("binding", Path::new("127.0.0.1:0")))?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::io("binding", Path::new("127.0.0.1:0")))?
        .port();
    Ok(port)
}

/// The executors the scheduler at `address` counts as registered (from its `/readyz`
/// answer), `None` when it does not answer.
fn registered(address: &str) -> Option<u32> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /readyz HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body = answer.split("\r\n\r\n").nth(1)?;
    // "ready: N executors registered" or "not ready: N/M ...".
    let after = body.split(':').nth(1)?.trim_start();
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
}

/// Starts a scheduler and [`EXECUTORS`] executors of 1 process on loopback (free ports) and
/// waits until every executor is registered.
pub fn cluster_setup(ctx: &Ctx) -> Result<Cluster> {
    let address = format!("127.0.0.1:{}", free_port()?);
    let mut cluster = Cluster {
        address: address.clone(),
        processes: Vec::new(),
        by_hand: Vec::new(),
    };
    let mut start = |name: String, args: Vec<String>| -> Result<()> {
        let log = ctx.logs.join(format!("{name}.log"));
        let file = File::create(&log).map_err(HarnessError::io("creating", &log))?;
        let err = file
            .try_clone()
            .map_err(HarnessError::io("creating", &log))?;
        let mut cmd = Command::new(&ctx.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        cluster.by_hand.push(ctx.relative(&shell_line(&cmd)));
        let child = cmd
            .spawn()
            .map_err(HarnessError::io("starting", &ctx.binary))?;
        cluster.processes.push(child);
        Ok(())
    };
    start(
        "cluster-scheduler".into(),
        vec!["scheduler".into(), "--bind".into(), address.clone()],
    )?;
    for n in 0..EXECUTORS {
        start(
            format!("cluster-executor{n}"),
            vec![
                "executor".into(),
                "--scheduler".into(),
                address.clone(),
                "--processes".into(),
                "1".into(),
                "--port".into(),
                free_port()?.to_string(),
                "--grpc-port".into(),
                free_port()?.to_string(),
            ],
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if registered(&address) == Some(EXECUTORS) {
            return Ok(cluster);
        }
        if Instant::now() > deadline {
            return Err(HarnessError::ClusterNotReady {
                address,
                logs: ctx.logs.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cluster-score-<rows>`: the score job over `data` on `cluster` (2 executors x 1 process)
/// against the same job run locally with 2 processes.
pub fn cluster_workload(ctx: &Ctx, cluster: &Cluster, data: &DataSet) -> Result<Workload> {
    let name = format!("cluster-score-{}", count_label(data.items));
    let (job, out) = score_job(ctx, &name, dir_arg(&data.dir), None)?;
    let local_out = ctx.data.join("out").join(format!("{name}-local"));
    let (a, b) = both_sides(ctx, cluster, &job, &out, &local_out, data.items);
    fs::create_dir_all(&ctx.logs).map_err(HarnessError::io("creating", &ctx.logs))?;
    Ok(Workload {
        what: format!(
            "score_entry.py over {} rows, 1MB mini-batches, Parquet output: on a loopback \
             cluster of {EXECUTORS} executors x 1 process vs 2 local processes",
            data.items
        ),
        items: data.items,
        unit: "rows",
        init_secs: SCORE_INIT_SECS,
        a,
        b: Some(b),
        name,
        setup_note: Some(format!(
            "the cluster (started once, untimed, before the runs): {}",
            cluster.by_hand.join("; ")
        )),
    })
}

/// `cluster-noop-<rows>`: what the cluster adds per mini-batch, with nothing else to hide it:
/// the in-process no-op script rust:echo over `data` in 16KB mini-batches (about 16k of
/// them for 2M rows) on `cluster` (2 executors x 1 process) against 2 local processes.
pub fn cluster_noop_workload(ctx: &Ctx, cluster: &Cluster, data: &DataSet) -> Result<Workload> {
    let name = format!("cluster-noop-{}", count_label(data.items));
    let (job, out) = echo_job(ctx, &name, dir_arg(&data.dir), "16KB")?;
    let local_out = ctx.data.join("out").join(format!("{name}-local"));
    let (a, b) = both_sides(ctx, cluster, &job, &out, &local_out, data.items);
    Ok(Workload {
        what: format!(
            "the no-op rust:echo over {} rows in 16KB mini-batches, Parquet output: on a \
             loopback cluster of {EXECUTORS} executors x 1 process vs 2 local processes (the \
             cluster's cost per mini-batch: manifest, reading rows, part and record in the \
             shared store, the driver's commit)",
            data.items
        ),
        items: data.items,
        unit: "rows",
        init_secs: 0.0,
        a,
        b: Some(b),
        name,
        setup_note: Some(format!(
            "the cluster (started once, untimed, before the runs): {}",
            cluster.by_hand.join("; ")
        )),
    })
}

/// Partitions per executor of the `cluster-tasks` workload's many-task side.
const TASKS_PER_EXECUTOR: u32 = 200;

/// `cluster-tasks-<rows>`: what a Ballista task costs, scheduler included: rust:echo over
/// `data` in 640KB mini-batches (about 400 for 2M rows) on `cluster`, once as
/// `2 x TASKS_PER_EXECUTOR` partitions (the executors have one slot each, so every task takes
/// one partition: about 400 tasks) and once as 2 partitions (2 tasks). The same mini-batches,
/// reads and commits on both sides: the difference is the tasks.
pub fn cluster_tasks_workload(ctx: &Ctx, cluster: &Cluster, data: &DataSet) -> Result<Workload> {
    let name = format!("cluster-tasks-{}", count_label(data.items));
    let (job, out) = echo_job(ctx, &name, dir_arg(&data.dir), "640KB")?;
    let few_out = ctx.data.join("out").join(format!("{name}-2-tasks"));
    let target = format!("compute_target=df://{}", cluster.address);
    let side = |label: &str, out: &Path, per_node: u32| {
        let mut side = engine_side(ctx, label, &job, out, data.items);
        side.cmd.args([
            "--output",
            &out.to_string_lossy(),
            "--set",
            &target,
            "--set",
            &format!("node_count={EXECUTORS}"),
            "--set",
            &format!("process_count_per_node={per_node}"),
        ]);
        side
    };
    let tasks = EXECUTORS * TASKS_PER_EXECUTOR;
    Ok(Workload {
        what: format!(
            "the no-op rust:echo over {} rows in 640KB mini-batches on a loopback cluster of \
             {EXECUTORS} executors x 1 slot: {tasks} partitions (one task each) vs \
             {EXECUTORS} partitions (the cost of a Ballista task: (a - b) / {})",
            data.items,
            tasks - EXECUTORS
        ),
        items: data.items,
        unit: "rows",
        init_secs: 0.0,
        a: side(&format!("cluster, {tasks} tasks"), &out, TASKS_PER_EXECUTOR),
        b: Some(side(&format!("cluster, {EXECUTORS} tasks"), &few_out, 1)),
        name,
        setup_note: Some(format!(
            "the cluster (started once, untimed, before the runs): {}",
            cluster.by_hand.join("; ")
        )),
    })
}

/// The two sides of a cluster workload: `job` on `cluster` (2 executors x 1 process) into
/// `out`, and the same job run locally into `local_out`.
fn both_sides(
    ctx: &Ctx,
    cluster: &Cluster,
    job: &Path,
    out: &Path,
    local_out: &Path,
    items: u64,
) -> (crate::measure::Side, crate::measure::Side) {
    let mut a = engine_side(ctx, "parallel-run (cluster)", job, out, items);
    a.cmd.args([
        "--set",
        &format!("compute_target=df://{}", cluster.address),
        "--set",
        &format!("node_count={EXECUTORS}"),
        "--set",
        "process_count_per_node=1",
    ]);
    let mut b = engine_side(ctx, "parallel-run (local)", job, local_out, items);
    b.cmd.args(["--output", &local_out.to_string_lossy()]);
    (a, b)
}
