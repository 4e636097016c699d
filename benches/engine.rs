//! Micro-benchmarks: mini-batch cutting throughput and the engine's per-mini-batch overhead
//! with a no-op in-process runner. `cargo bench --bench engine`.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use parallel_run::batch::{slice_memory_size, ByteChunker};
use parallel_run::config::{MiniBatchSize, OutputAction, ParallelRunConfig};
use parallel_run::worker::rust::{RunOutput, ScriptError};
use parallel_run::worker::{EntryScript, MiniBatchContext};
use parallel_run::ParallelRunDataFrameExt;

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

criterion_group!(benches, chunking, engine_overhead);
criterion_main!(benches);
