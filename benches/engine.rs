//! Micro-benchmarks: mini-batch cutting throughput (of decoded batches, and of CSV text by
//! its record ends, beside DataFusion decoding the same CSV), the engine's per-mini-batch overhead with
//! a no-op in-process Rust runner and with a no-op Python runner, and the Arrow IPC round trip
//! to a Python worker. `cargo bench --bench engine` (about two minutes).
//!
//! The Python benchmarks use `$PARALLEL_RUN_PYTHON`, else the crate's `.venv/bin/python`, else
//! `python3`; they are skipped, with a note, when that interpreter has no pyarrow.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use parallel_run::batch::{slice_memory_size, ByteChunker};
use parallel_run::config::{
    JobSettings, MiniBatchSize, OutputAction, OutputFormat, ParallelRunConfig,
};
use parallel_run::job::worker_env;
use parallel_run::worker::python::{MiniBatchFormat, PythonWorkerFactory, PythonWorkerSpec};
use parallel_run::worker::rust::{RunOutput, ScriptError};
use parallel_run::worker::{EntryScript, MiniBatchContext, WorkerFactory, WorkerSlot};
use parallel_run::{ParallelRun, ParallelRunDataFrameExt, Progress};

fn batch(start: i64, n: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("f0", DataType::Float64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (start..start + n as i64).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|i| *i as f64),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.iter()
                    .map(|i| format!("some words of text for row {i}")),
            )),
        ],
    )
    .expect("bench batch")
}

fn chunking(c: &mut Criterion) {
    let batches: Vec<RecordBatch> = (0..25).map(|i| batch(i * 8192, 8192)).collect();
    let bytes: usize = batches.iter().map(slice_memory_size).sum();
    let mut group = c.benchmark_group("cut_mini_batches");
    group.throughput(Throughput::Bytes(bytes as u64));
    for size in [64 * 1024u64, 1024 * 1024] {
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, size| {
            b.iter(|| {
                let mut chunker =
                    ByteChunker::new(0, Arc::from("bench"), batches[0].schema(), *size);
                let mut n = 0;
                for batch in &batches {
                    n += chunker.push(batch.clone()).expect("push").len();
                }
                n + chunker.finish().expect("finish").map_or(0, |_| 1)
            })
        });
    }
    group.finish();
}

/// A CSV file of about 64 MB in `dir` (an id, a float, a quoted text with a comma): what the
/// text cut reads.
fn csv_file(dir: &std::path::Path) -> u64 {
    use std::io::Write;
    let path = dir.join("t.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("bench csv"));
    writeln!(out, "id,f0,text").expect("bench csv");
    for i in 0..1_000_000u64 {
        writeln!(
            out,
            "{i},{},\"some words, of text for row {i}\"",
            i as f64 * 0.37
        )
        .expect("bench csv");
    }
    out.flush().expect("bench csv");
    std::fs::metadata(&path).expect("bench csv").len()
}

fn text_cut(c: &mut Criterion) {
    use datafusion::physical_plan::ExecutionPlan;
    use parallel_run::config::{InputFormat, InputSpec};
    let dir = tempfile::tempdir().expect("bench dir");
    let bytes = csv_file(dir.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ctx = parallel_run::input::job_session();
    let spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Csv);
    let plan: Arc<dyn ExecutionPlan> = runtime.block_on(async {
        let prepared = parallel_run::input::register_inputs(&ctx, &[spec])
            .await
            .expect("register");
        ctx.state()
            .create_physical_plan(&prepared[0].plan)
            .await
            .expect("plan")
    });
    let mut group = c.benchmark_group("csv_64MB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("cut_by_record_ends_1MB", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let scan = parallel_run::input::FileScan::of(&plan).expect("a file scan");
                scan.cut(&ctx.task_ctx(), &plan.schema(), 1 << 20)
                    .await
                    .expect("cut")
                    .len()
            })
        })
    });
    group.bench_function("decode_with_datafusion", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let df = ctx.table("t").await.expect("table");
                let batches = df.collect().await.expect("decode");
                batches.iter().map(|b| b.num_rows()).sum::<usize>()
            })
        })
    });
    group.finish();
}

struct Noop;
impl EntryScript for Noop {
    fn run(&mut self, batch: &RecordBatch, _: &MiniBatchContext) -> Result<RunOutput, ScriptError> {
        Ok(RunOutput::List(batch.column(0).clone()))
    }
}

fn engine_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let batches: Vec<RecordBatch> = (0..25).map(|i| batch(i * 8192, 8192)).collect();
    let schema = batches[0].schema();
    let table = Arc::new(MemTable::try_new(schema, vec![batches]).expect("memtable"));
    let out_schema = Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Int64,
        true,
    )]));
    let mut group = c.benchmark_group("engine_noop_rust");
    group.sample_size(10);
    // 64KB mini-batches over ~9 MB: about 140 mini-batches per run.
    group.bench_function("64KB_mini_batches_2_workers", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let ctx = SessionContext::new();
                let df = ctx.read_table(table.clone()).expect("table");
                let mut config = ParallelRunConfig::new("rust:noop", 0, OutputAction::AppendRow);
                config.process_count_per_node = Some(2);
                config.mini_batch_size = Some(MiniBatchSize::parse("64KB").expect("size"));
                let out = df
                    .parallel_run(&config, out_schema.clone(), || Noop)
                    .expect("plan");
                out.collect().await.expect("run").len()
            })
        })
    });
    group.finish();
}

/// A Python entry script that returns its mini-batch unchanged (a `pyarrow.Table` with
/// `mini_batch_format: pyarrow`, so no pandas conversion either way).
const NOOP_PY: &str = "def init():\n    pass\n\n\ndef run(mini_batch):\n    return mini_batch\n";

/// The interpreter for the Python benchmarks, or `None` (said once) when it has no pyarrow.
fn python() -> Option<&'static PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let python = match std::env::var_os("PARALLEL_RUN_PYTHON") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ if manifest.join(".venv/bin/python").exists() => {
                    manifest.join(".venv/bin/python")
                }
                _ => PathBuf::from("python3"),
            };
            let ok = std::process::Command::new(&python)
                .args(["-c", "import pyarrow"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                eprintln!(
                    "engine bench: skipping the Python benchmarks: {} cannot import pyarrow \
                     (set PARALLEL_RUN_PYTHON)",
                    python.display()
                );
            }
            ok.then_some(python)
        })
        .as_ref()
}

/// A folder with the no-op entry script.
fn noop_script_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("noop.py"), NOOP_PY).expect("write noop.py");
    dir
}

/// Runs the no-op Python job over `table` cut into `mini_batch_size` pieces; returns its wall
/// time and the number of mini-batches.
fn python_noop_job(
    runtime: &tokio::runtime::Runtime,
    python: &std::path::Path,
    script: &std::path::Path,
    table: &Arc<MemTable>,
    mini_batch_size: &str,
) -> (Duration, u64) {
    let out = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let report = runtime.block_on(async {
        let ctx = SessionContext::new();
        let df = ctx.read_table(table.clone()).expect("table");
        let mut config =
            ParallelRunConfig::new(script.display().to_string(), 0, OutputAction::AppendRow);
        config.environment.python = Some(python.display().to_string());
        config.process_count_per_node = Some(2);
        config.mini_batch_size = Some(MiniBatchSize::parse(mini_batch_size).expect("size"));
        ParallelRun::new(config)
            .input("t", df)
            .output(out.path())
            .output_format(OutputFormat::Parquet)
            .mini_batch_format(MiniBatchFormat::PyArrow)
            .progress(Progress::Quiet)
            .await
            .expect("python no-op job")
    });
    let wall = t.elapsed();
    assert!(report.succeeded(), "python no-op job: {}", report.reason);
    (wall, report.mini_batches_total)
}

/// Per-mini-batch overhead with a no-op Python runner: the same rows as one mini-batch and as
/// about 2,000, both as whole jobs (2 workers, start-up included); the difference divided by
/// the extra mini-batches is what one more mini-batch costs in job wall time (with two
/// workers sharing the work).
fn python_overhead(c: &mut Criterion) {
    let Some(python) = python() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = noop_script_dir();
    let script = dir.path().join("noop.py");
    let rows: Vec<RecordBatch> = vec![batch(0, 10_000)];
    let table = Arc::new(MemTable::try_new(rows[0].schema(), vec![rows]).expect("memtable"));
    let mut group = c.benchmark_group("engine_noop_python");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    group.bench_function("per_mini_batch_2_workers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (one, _) = python_noop_job(&runtime, python, &script, &table, "1GB");
                let (many, n) = python_noop_job(&runtime, python, &script, &table, "256");
                total += many.saturating_sub(one) / (n.max(2) - 1) as u32;
            }
            total
        })
    });
    group.finish();
}

/// One run() round trip to a started Python worker through the public worker API: the
/// mini-batch as Arrow IPC down a pipe, run() returning it (pyarrow, no pandas), the result
/// back as Arrow IPC.
fn python_ipc_round_trip(c: &mut Criterion) {
    let Some(python) = python() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = noop_script_dir();
    let out = dir.path().join("out");
    let config = ParallelRunConfig::new(
        dir.path().join("noop.py").display().to_string(),
        0,
        OutputAction::AppendRow,
    );
    let settings = JobSettings {
        output_format: OutputFormat::Parquet,
        mini_batch_format: MiniBatchFormat::PyArrow,
        ..JobSettings::new(config, out.clone())
    };
    let env = worker_env(&settings, true);
    let factory = PythonWorkerFactory::new(PythonWorkerSpec {
        python: python.clone(),
        entry_script: dir.path().join("noop.py"),
        source_directory: None,
        env,
        mini_batch_format: MiniBatchFormat::PyArrow,
    })
    .expect("python worker factory");
    let mut worker = runtime.block_on(async {
        let mut worker = factory
            .start(&WorkerSlot::new(0, 0))
            .await
            .expect("start python worker");
        worker.init().await.expect("python worker init");
        worker
    });
    let context = MiniBatchContext {
        minibatch_index: 0,
        attempt: 1,
        input_name: "bench".into(),
    };
    let timeout = Duration::from_secs(60);
    let mut group = c.benchmark_group("python_ipc_round_trip");
    for rows in [10usize, 1_000, 20_000] {
        let data = batch(0, rows);
        let mut chunker = ByteChunker::new(0, Arc::from("bench"), data.schema(), u64::MAX);
        let mut cut = chunker.push(data).expect("push");
        cut.extend(chunker.finish().expect("finish"));
        let mini_batch = cut.pop().expect("one mini-batch");
        group.throughput(Throughput::Bytes(mini_batch.memory_size() as u64));
        group.bench_with_input(BenchmarkId::new("rows", rows), &mini_batch, |b, mb| {
            b.iter(|| {
                let ret = runtime
                    .block_on(worker.run(mb, &context, timeout))
                    .expect("run");
                assert_eq!(ret.returned, mb.items());
                ret.returned
            })
        });
    }
    group.finish();
    runtime
        .block_on(worker.shutdown())
        .expect("python worker shutdown");
}

criterion_group!(
    benches,
    chunking,
    text_cut,
    engine_overhead,
    python_overhead,
    python_ipc_round_trip
);
criterion_main!(benches);
