//! The Rust library API: the job builder and the DataFrame extension.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{col, SessionContext};
use parallel_run::config::{OutputAction, ParallelRunConfig};
use parallel_run::worker::rust::{RunOutput, ScriptError, WorkerInfo};
use parallel_run::worker::{EntryScript, MiniBatchContext};
use parallel_run::{ParallelRun, ParallelRunDataFrameExt};

use crate::common::*;

/// Doubles f0; counts its init() calls.
struct Double {
    factor: f64,
}

impl EntryScript for Double {
    fn init(&mut self, _worker: &WorkerInfo) -> Result<(), ScriptError> {
        self.factor = 2.0;
        Ok(())
    }

    fn run(
        &mut self,
        batch: &RecordBatch,
        _ctx: &MiniBatchContext,
    ) -> Result<RunOutput, ScriptError> {
        let f0 = batch
            .column_by_name("f0")
            .ok_or("no f0")?
            .as_primitive::<arrow::datatypes::Float64Type>();
        let doubled: Float64Array = f0.iter().map(|v| v.map(|v| v * self.factor)).collect();
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("doubled", DataType::Float64, true),
        ]);
        Ok(RunOutput::Rows(RecordBatch::try_new(
            Arc::new(schema),
            vec![
                batch.column_by_name("id").ok_or("no id")?.clone(),
                Arc::new(doubled),
            ],
        )?))
    }
}

fn config() -> ParallelRunConfig {
    let mut c = ParallelRunConfig::new("double", 0, OutputAction::AppendRow);
    c.process_count_per_node = Some(2);
    c.mini_batch_size = Some(parallel_run::config::MiniBatchSize::parse("16KB").unwrap());
    c
}

#[tokio::test]
async fn builder_runs_a_job_over_a_dataframe() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 5_000, 1_000);
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(
            d.path().join("in.parquet").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let report = ParallelRun::new(config())
        .input("rows", df)
        .entry_script(|| Double { factor: 0.0 })
        .output(d.path().join("out"))
        .output_format(parallel_run::config::OutputFormat::Parquet)
        .preserve_order(true)
        .await
        .unwrap();
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.items_succeeded, 5_000);
    assert_eq!(report.output_rows, 5_000);
    assert_eq!(
        parquet_ids(report.output.as_ref().unwrap()),
        (0..5_000).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn dataframe_extension_composes_with_datafusion() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 3_000, 500);
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(
            d.path().join("in.parquet").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("doubled", DataType::Float64, true),
    ]));
    let results = df
        .parallel_run(&config(), schema, || Double { factor: 0.0 })
        .unwrap();
    let batches = results
        .filter(col("id").lt(datafusion::prelude::lit(100i64)))
        .unwrap()
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::sum(col("doubled")).alias("total")],
        )
        .unwrap()
        .collect()
        .await
        .unwrap();
    let total = batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Float64Type>()
        .value(0);
    // sum(2 * 0.5 * id) for id < 100
    assert_eq!(total, (0..100).map(|i| i as f64).sum::<f64>());
    assert_eq!(batches[0].column(0).len(), 1);
}

/// Fails every init().
struct NoModel;

impl EntryScript for NoModel {
    fn init(&mut self, _worker: &WorkerInfo) -> Result<(), ScriptError> {
        Err("no model here".into())
    }

    fn run(&mut self, _: &RecordBatch, _: &MiniBatchContext) -> Result<RunOutput, ScriptError> {
        Err("never called".into())
    }
}

/// The builder is `Err(JobFailed)` exactly where the CLI exits 42, with the report written; a
/// summary_only job with -1 thresholds still succeeds when items fail (PRS's rules).
#[tokio::test]
async fn a_failed_job_is_an_error_with_its_report() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 1_000, 1_000);
    let ctx = SessionContext::new();
    let df = || async {
        ctx.read_parquet(
            d.path().join("in.parquet").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap()
    };
    let failed = ParallelRun::new(config())
        .input("rows", df().await)
        .entry_script(|| NoModel)
        .output(d.path().join("out"))
        .await;
    match failed {
        Err(e @ parallel_run::PrsError::JobFailed { .. }) => {
            assert_eq!(e.exit_code(), 42);
            let parallel_run::PrsError::JobFailed { report, reason } = e else {
                unreachable!()
            };
            assert!(!report.succeeded());
            assert!(reason.contains("no model here"), "{reason}");
            assert_eq!(summary(&d.path().join("out"))["status"], "failed");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }

    let mut lenient = ParallelRunConfig::new("fails", -1, OutputAction::SummaryOnly);
    lenient.allowed_failed_count = Some(-1);
    lenient.process_count_per_node = Some(2);
    let report = ParallelRun::new(lenient)
        .input("rows", df().await)
        .entry_script(|| FailRuns)
        .output(d.path().join("out2"))
        .await
        .expect("summary_only with -1 thresholds succeeds though every item failed");
    assert!(report.succeeded());
    assert_eq!(report.items_failed, 1_000);
}

/// Fails every run().
struct FailRuns;

impl EntryScript for FailRuns {
    fn run(&mut self, _: &RecordBatch, _: &MiniBatchContext) -> Result<RunOutput, ScriptError> {
        Err("bad rows".into())
    }
}

#[tokio::test]
async fn the_builder_refuses_an_earlier_run_unless_overwrite() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 500, 500);
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(
            d.path().join("in.parquet").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    let job = |overwrite: bool| {
        ParallelRun::new(config())
            .input("rows", df.clone())
            .entry_script(|| Double { factor: 0.0 })
            .output(d.path().join("out"))
            .overwrite(overwrite)
    };
    let report = job(false).await.unwrap();
    assert!(report.succeeded(), "{report:?}");
    assert!(
        report.items_total_exact,
        "Parquet footers give the total: {report:?}"
    );
    let err = job(false).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("overwrite(true)"), "{err}");
    let report = job(true).await.unwrap();
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.output_rows, 500);
}

#[tokio::test]
async fn builder_reruns_failed_mini_batches_and_refuses_to_resume_a_dataframe() {
    use parallel_run::config::{InputFormat, InputSpec};
    use parallel_run::ledger::{ResumeMode, ResumeOptions};
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 1_000, 100);
    let path = d.path().join("in.parquet").display().to_string();
    let mut c = ParallelRunConfig::new("rust:echo", -1, OutputAction::AppendRow);
    c.run_max_try = 1;
    c.mini_batch_size = Some(parallel_run::config::MiniBatchSize::parse("8KB").unwrap());
    let job = |out: &str| {
        ParallelRun::new(c.clone())
            .registry(parallel_run::scripts::builtin_registry())
            .input_spec(InputSpec::path("rows", path.clone(), InputFormat::Parquet))
            .arguments(["--fail-ids", "150"])
            .output(d.path().join(out))
    };
    let first = job("out").await.unwrap();
    assert_eq!(first.mini_batches_failed, 1, "{first:?}");
    // The same script again: the failed mini-batch runs again (and fails again), nothing else.
    let rerun = job("out")
        .resume(ResumeOptions {
            mode: ResumeMode::RerunFailed,
            force: false,
        })
        .await
        .unwrap();
    assert!(rerun.resumed, "{rerun:?}");
    assert_eq!(rerun.mini_batches_rerun, 1, "{rerun:?}");
    assert_eq!(
        rerun.mini_batches_skipped + 1,
        rerun.mini_batches_total,
        "{rerun:?}"
    );
    assert_eq!(rerun.tries, 1, "only the failed mini-batch ran: {rerun:?}");

    // A DataFrame has no guaranteed row order: its job cannot be resumed.
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(path.as_str(), Default::default())
        .await
        .unwrap();
    let mut strict = c.clone();
    strict.error_threshold = 0;
    let failed = ParallelRun::new(strict.clone())
        .registry(parallel_run::scripts::builtin_registry())
        .input("rows", df.clone())
        .arguments(["--fail-ids", "150"])
        .output(d.path().join("frame"))
        .await;
    assert!(failed.is_err());
    let resumed = ParallelRun::new(strict)
        .registry(parallel_run::scripts::builtin_registry())
        .input("rows", df)
        .arguments(["--fail-ids", "150"])
        .output(d.path().join("frame"))
        .resume(ResumeOptions::resume())
        .await;
    let e = resumed.unwrap_err().to_string();
    assert!(e.contains("cannot be resumed"), "{e}");
}
