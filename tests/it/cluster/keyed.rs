//! partition_keys jobs on a cluster: the hash repartition is a stage of the plan, one
//! mini-batch per key as locally (same ids, rows, lineage and counts).

use super::*;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// Rows `start..start+n` of a table with 20 keys (`k00`..`k19`, by id) in a Parquet file of
/// small row groups.
fn write_keyed_parquet(path: &Path, start: i64, n: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("store", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (start..start + n as i64).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("k{:02}", i % 20)),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("row {i}")),
            )),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(64))
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Four Parquet files (1000 rows, 20 keys spread over every file) under `dir/pq/`.
fn keyed_input(dir: &Path) {
    for (i, (start, n)) in [(0, 300), (300, 250), (550, 250), (800, 200)]
        .into_iter()
        .enumerate()
    {
        write_keyed_parquet(&dir.join(format!("pq/part-{i}.parquet")), start, n);
    }
}

/// What processed_mini-batches.csv says of each mini-batch, by id: input, rows, key value,
/// items and status (not where or when it ran).
fn keyed_records(out: &Path) -> BTreeMap<String, Vec<String>> {
    processed(out)
        .into_iter()
        .map(|r| {
            let id = r["mini_batch_id"].clone();
            let kept = [
                "input",
                "rows",
                "partition_key_value",
                "total_items",
                "succeeded_items",
                "status",
            ]
            .iter()
            .map(|c| r[*c].clone())
            .collect();
            (id, kept)
        })
        .collect()
}

fn sorted_output(out: &Path) -> Vec<String> {
    let mut lines = lines(&out.join("parallel_run_step.txt"));
    lines.sort();
    lines
}

#[test]
fn a_keyed_job_on_two_executors_cuts_the_mini_batches_of_a_local_run() {
    let (scheduler, address) = start_scheduler();
    let _executors = registered_executors(&address, 2);
    let dir = tempfile::tempdir().unwrap();
    keyed_input(dir.path());
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\npartition_keys: [store]",
        "inputs:\n  - {name: t, path: pq/, format: parquet}\n",
    );
    let job = job.to_str().unwrap();
    let limit = Duration::from_secs(120);
    let (code, stderr) = run_bounded(dir.path(), &["run", job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    let target = format!("compute_target=df://{address}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", job, "-q", "--output", "cluster", "--set", &target],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);

    let (local, cluster) = (dir.path().join("local"), dir.path().join("cluster"));
    assert_eq!(sorted_output(&cluster).len(), 1000);
    assert_eq!(sorted_output(&cluster), sorted_output(&local));
    // One mini-batch per key, with the ids, row numbers (lineage) and counts of the local run.
    let records = keyed_records(&cluster);
    assert_eq!(records.len(), 20, "{records:?}");
    // Run by the executors: each record names its node (HOST:PID/slot).
    let nodes: BTreeSet<String> = processed(&cluster)
        .into_iter()
        .map(|r| r["process"].split('/').next().unwrap().to_string())
        .collect();
    assert!(
        (1..=2).contains(&nodes.len()) && nodes.iter().all(|n| n.contains(':')),
        "{nodes:?}"
    );
    assert_eq!(records, keyed_records(&local));
    // Each key's rows reached run() in input order: echo returns them as they came.
    let cluster_lines = lines(&cluster.join("parallel_run_step.txt"));
    let mut last_id_of_key: BTreeMap<String, i64> = BTreeMap::new();
    for line in &cluster_lines {
        let mut fields = line.split(' ');
        let id: i64 = fields.next().unwrap().parse().unwrap();
        let key = fields.next().unwrap().to_string();
        if let Some(last) = last_id_of_key.insert(key, id) {
            assert!(last < id, "rows of a key out of input order: {line}");
        }
    }
    let (local, cluster) = (summary(&local), summary(&cluster));
    for field in [
        "mini_batches_total",
        "mini_batches_succeeded",
        "items_total",
        "items_succeeded",
    ] {
        assert_eq!(cluster[field], local[field], "{field}");
    }

    // A CSV input travels as file parts (byte ranges the executors read): the same
    // mini-batches too.
    write_csv(&dir.path().join("csv/a.csv"), 0, 120);
    write_csv(&dir.path().join("csv/b.csv"), 120, 80);
    let job = write_job(
        dir.path(),
        "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\n\
         node_count: 2\nprocess_count_per_node: 1\npartition_keys: [key]",
        "inputs:\n  - {name: t, path: csv/, format: csv}\n",
    );
    let job = job.to_str().unwrap();
    let (code, stderr) = run_bounded(
        dir.path(),
        &["run", job, "-q", "--output", "csv-local"],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run_bounded(
        dir.path(),
        &[
            "run",
            job,
            "-q",
            "--output",
            "csv-cluster",
            "--set",
            &target,
        ],
        limit,
    );
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    let (local, cluster) = (dir.path().join("csv-local"), dir.path().join("csv-cluster"));
    assert_eq!(sorted_output(&cluster).len(), 200);
    assert_eq!(sorted_output(&cluster), sorted_output(&local));
    let records = keyed_records(&cluster);
    assert_eq!(records.len(), 7, "{records:?}");
    assert_eq!(records, keyed_records(&local));
}

#[test]
fn a_keyed_job_survives_an_executor_killed_mid_job() {
    let (mut scheduler, scheduler_address) = start_scheduler_losing_executors_fast();
    let mut a = start_executor(&scheduler_address);
    let mut b = start_executor(&scheduler_address);
    for executor in [&mut a, &mut b] {
        assert!(
            executor.wait_for("registration succeed", Duration::from_secs(60)),
            "{:?}",
            executor.seen
        );
    }
    let dir = tempfile::tempdir().unwrap();
    keyed_input(dir.path());
    // Every run() call appends the first id of its key's rows to calls.txt.
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
             partition_keys: [store]\nrun_max_try: 3",
            python()
        ),
        "inputs:\n  - {name: t, path: pq/, format: parquet}\n",
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
    // SIGKILL executor B once it has committed two keys to the shared store.
    let b_pid = b.child.id();
    let records = dir
        .path()
        .join("cluster/.parallel_run/staging/shared/records");
    kill_after_records(&mut b, &records, 2);
    let (code, stderr) = driver.join().unwrap();
    if code != Some(0) {
        // What the scheduler and the surviving executor said, for the failure message.
        scheduler.wait_for("\u{0}", Duration::from_secs(1));
        a.wait_for("\u{0}", Duration::from_secs(1));
    }
    assert_eq!(
        code,
        Some(0),
        "{stderr}\nscheduler: {:#?}\nexecutor A: {:#?}",
        scheduler.seen,
        a.seen
    );

    let (local, cluster) = (dir.path().join("local"), dir.path().join("cluster"));
    assert_eq!(
        sorted_output(&cluster),
        sorted_output(&local),
        "no row lost, none twice"
    );
    assert_eq!(keyed_records(&cluster), keyed_records(&local));
    // The keys B committed before it was killed kept B's record and were not run again.
    let calls = run_calls(&calls);
    let by_b: Vec<String> = processed(&cluster)
        .into_iter()
        .filter(|r| r["process"].contains(&format!(":{b_pid}/")))
        .map(|r| first_row(&r["rows"]))
        .collect();
    assert!(by_b.len() >= 2, "B's records kept: {by_b:?}");
    for first in &by_b {
        assert_eq!(calls.get(first), Some(&1), "key at row {first}: {calls:?}");
    }
    assert_eq!(calls.len(), 20, "every key ran: {calls:?}");
    assert!(!records.exists());
    assert!(
        workers_gone(&cluster, Duration::from_secs(20)),
        "orphan workers: {:?}",
        python_workers(&cluster)
    );
    drop(a);
}

#[test]
fn an_interrupted_keyed_cluster_job_resumes_without_running_its_committed_keys_again() {
    let (scheduler, address) = start_scheduler();
    let _executors = registered_executors(&address, 2);
    let dir = tempfile::tempdir().unwrap();
    keyed_input(dir.path());
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
             partition_keys: [store]",
            python()
        ),
        "inputs:\n  - {name: t, path: pq/, format: parquet}\n",
    );
    let job = job.to_str().unwrap();
    let limit = Duration::from_secs(180);
    let (code, stderr) = run_bounded(dir.path(), &["run", job, "-q", "--output", "local"], limit);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_file(&calls).unwrap();

    // Interrupted (Ctrl+C) once a few keys are committed.
    let target = format!("compute_target=df://{address}");
    let args = ["run", job, "-q", "--output", "cluster", "--set", &target];
    let (mut driver, stderr) = start_driver(dir.path(), &args);
    let records = dir
        .path()
        .join("cluster/.parallel_run/staging/shared/records");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&records).map_or(0, |d| d.count()) < 4 {
        assert!(
            Instant::now() < deadline && driver.try_wait().unwrap().is_none(),
            "keys are committed: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The driver commits what the executors recorded within half a second.
    std::thread::sleep(Duration::from_millis(1500));
    unsafe {
        libc::kill(driver.id() as i32, libc::SIGINT);
    }
    let code = wait_exit(&mut driver, Duration::from_secs(60));
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(code, Some(130), "{text}");
    let first_calls = run_calls(&calls).len();
    assert!(
        first_calls < 20,
        "interrupted before the end: {first_calls}"
    );
    std::fs::remove_file(&calls).unwrap();

    let mut resumed_args = args.to_vec();
    resumed_args.push("--resume");
    let (code, stderr) = run_bounded(dir.path(), &resumed_args, limit);
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    let (local, cluster) = (dir.path().join("local"), dir.path().join("cluster"));
    assert_eq!(sorted_output(&cluster), sorted_output(&local));
    assert_eq!(keyed_records(&cluster), keyed_records(&local));
    let report = summary(&cluster);
    let skipped = report["mini_batches_skipped"].as_u64().unwrap();
    assert!(skipped >= 4, "{report}");
    // The keys the interrupted run committed were not run again.
    let calls_now = run_calls(&calls);
    assert_eq!(calls_now.len() as u64, 20 - skipped, "{calls_now:?}");
    assert!(calls_now.values().all(|n| *n == 1), "{calls_now:?}");
    assert_eq!(report["mini_batches_total"], 20);

    // A local run interrupted, then resumed on the cluster: the executors find the keys the
    // local run committed with the same slices (fingerprints), and skip them.
    std::fs::remove_file(&calls).unwrap();
    let local_args = ["run", job, "-q", "--output", "mixed"];
    let (mut driver, stderr) = start_driver(dir.path(), &local_args);
    let deadline = Instant::now() + Duration::from_secs(120);
    while run_calls(&calls).len() < 4 {
        assert!(
            Instant::now() < deadline && driver.try_wait().unwrap().is_none(),
            "keys are run: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(driver.id() as i32, libc::SIGINT);
    }
    let code = wait_exit(&mut driver, Duration::from_secs(60));
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(code, Some(130), "{text}");
    std::fs::remove_file(&calls).unwrap();
    let mixed_args = [
        "run", job, "-q", "--output", "mixed", "--set", &target, "--resume",
    ];
    let (code, stderr) = run_bounded(dir.path(), &mixed_args, limit);
    assert_eq!(code, Some(0), "{stderr}\nscheduler: {:?}", scheduler.seen);
    let mixed = dir.path().join("mixed");
    assert_eq!(sorted_output(&mixed), sorted_output(&local));
    assert_eq!(keyed_records(&mixed), keyed_records(&local));
    let skipped = summary(&mixed)["mini_batches_skipped"].as_u64().unwrap();
    assert!(skipped >= 1, "{}", summary(&mixed));
    let calls_now = run_calls(&calls);
    assert_eq!(calls_now.len() as u64, 20 - skipped, "{calls_now:?}");
}

#[tokio::test]
async fn the_keyed_plan_round_trips_and_ballista_cuts_it_at_the_hash_repartition() {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_plan::displayable;
    use parallel_run::exec::keyed_shared::{
        chunk_leaf, keyed_input_plan, ChunkRows, KeyedReadExec, RowChunk,
    };

    let mut config = ParallelRunConfig::new("rust:echo", -1, OutputAction::AppendRow);
    config.node_count = 2;
    config.process_count_per_node = Some(1);
    config.partition_keys = vec!["store".to_string()];
    let job = JobSettings::new(config, "/jobs/out");
    let input = InputInfo::new("t", ItemKind::Rows).with_source(InputSpec::path(
        "t",
        "/data/pq",
        InputFormat::Parquet,
    ));
    let spec = Arc::new(OperatorSpec::new(job, vec![input], None).unwrap());
    let rows = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..40)) as ArrayRef,
        ),
        (
            "store",
            Arc::new(StringArray::from_iter_values(
                (0..40).map(|i| format!("k{}", i % 5)),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let chunks = vec![
        RowChunk {
            first_row: 0,
            rows: ChunkRows::Carried(rows.slice(0, 20)),
        },
        RowChunk {
            first_row: 20,
            rows: ChunkRows::Carried(rows.slice(20, 20)),
        },
    ];
    let leaf = chunk_leaf(&chunks, 2).unwrap();
    let child =
        keyed_input_plan(leaf, "t", rows.schema(), None, &["store".to_string()], 2).unwrap();
    let op = ParallelRunExec::deferred(
        ExecMode::Keyed,
        vec![child],
        spec,
        Arc::new(JobRuntimes::new(registry())),
    )
    .unwrap();
    // Through the codec (as the driver sends it and the scheduler decodes it).
    let plan = round_trip(Arc::new(op));
    let text = displayable(plan.as_ref()).indent(false).to_string();
    for part in [
        "ParallelRunExec[keyed]",
        "SortExec",
        "preserve_partitioning=[true]",
        "RepartitionExec: partitioning=Hash([store@1], 2)",
        "KeyedReadExec: input=t",
        "DataSourceExec",
    ] {
        assert!(text.contains(part), "{part}:\n{text}");
    }
    assert_eq!(plan.properties().partitioning.partition_count(), 2);

    // Ballista's planner cuts a stage at the hash repartition: the first reads and numbers
    // the chunks and writes the shuffle, the second sorts what it reads and runs the keys.
    let mut planner = ballista_scheduler::planner::DefaultDistributedPlanner::new();
    use ballista_scheduler::planner::DistributedPlanner;
    let stages = planner
        .plan_query_stages(
            &"keyed-test".to_string().into(),
            plan,
            &datafusion::config::ConfigOptions::default(),
        )
        .unwrap();
    assert_eq!(stages.len(), 2, "{stages:?}");
    let shown = |p: &Arc<dyn ExecutionPlan>| displayable(p.as_ref()).indent(false).to_string();
    let first: Arc<dyn ExecutionPlan> = stages[0].clone();
    let second: Arc<dyn ExecutionPlan> = stages[1].clone();
    let (first_text, second_text) = (shown(&first), shown(&second));
    assert!(
        first_text.contains("KeyedReadExec") && !first_text.contains("ParallelRunExec"),
        "{first_text}"
    );
    assert!(
        second_text.contains("ParallelRunExec[keyed]")
            && second_text.contains("SortExec")
            && second_text.contains("UnresolvedShuffleExec")
            && !second_text.contains("KeyedReadExec"),
        "{second_text}"
    );

    // A task of the first stage reads only its chunks, numbered as in the input.
    let restricted =
        ballista_scheduler::state::task_builder::restrict_plan_to_partitions(first, &[1]).unwrap();
    let mut read = None;
    restricted
        .apply(|node| {
            if node.downcast_ref::<KeyedReadExec>().is_some() {
                read = Some(node.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
    let read = read.expect("the stage reads the chunks");
    assert_eq!(read.properties().partitioning.partition_count(), 1);
    let ctx = SessionContext::new().task_ctx();
    let batches: Vec<RecordBatch> = read
        .execute(0, ctx)
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
        .await;
    let numbers: Vec<u64> = batches
        .iter()
        .flat_map(|b| {
            b.column(2)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(numbers, (20..40).collect::<Vec<u64>>());
}
