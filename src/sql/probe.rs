//! The probe: finding run()'s result schema when `output_schema` is not given.
//!
//! A DataFusion plan needs its columns when it is planned, but a Python script's result
//! columns are only known by running it. So, at planning time, one worker is started from the
//! job's own factory (named `probe`: its output goes to `user/stdout/node000/probe.stdout.txt`
//! and friends in the report folder), `init()` runs, `run()` gets the first mini-batch of the
//! first input (cut from its first [`PROBE_ROWS`] rows with the job's `mini_batch_size`), the
//! columns of its result are taken (all nullable), and the worker is shut down. When that
//! run() fails, the next mini-batches are tried (up to [`PROBE_TRIES`]); an `init()` failure
//! fails the query at once, as it would fail the job.
//!
//! Cost: one extra `init()` (plus one `run()` on a small mini-batch) per `parallel_run(...)`
//! at planning time, EXPLAIN included; the probe's results are not reused and its tries are
//! not counted in the report. `output_schema =>
//! 'id BIGINT, score DOUBLE'` skips it. Later mini-batches' results are cast to the probed
//! schema by column name; a result that does not fit fails the query with an error naming the
//! mini-batch and the column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;

use crate::batch::{ByteChunker, ItemKind, Lineage, MiniBatch, MiniBatchId};
use crate::config::ParallelRunConfig;
use crate::error::{PrsError, Result};
use crate::worker::{MiniBatchContext, Worker, WorkerFactoryRef, WorkerSlot};

/// Rows of the input read for the probe (at most).
pub const PROBE_ROWS: usize = 1_000;

/// The agent name of the probe worker.
pub const PROBE_AGENT: &str = "probe";

/// Mini-batches tried before the probe gives up (a run() failing on the first one need not
/// fail the query when the job tolerates failures).
pub const PROBE_TRIES: usize = 3;

/// What the probe's errors suggest.
const HINT: &str = "give output_schema => 'col TYPE, ...' to skip the probe";

/// Runs the first mini-batch of `input` through one worker from `factory` and returns the
/// schema of its result (see the module docs).
pub async fn output_schema(
    state: SessionState,
    input: LogicalPlan,
    input_name: &str,
    factory: WorkerFactoryRef,
    config: &ParallelRunConfig,
) -> Result<SchemaRef> {
    let frame = DataFrame::new(state, input).limit(0, Some(PROBE_ROWS))?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    let candidates = first_mini_batches(schema, batches, input_name, config.mini_batch_bytes())?;
    let slot = WorkerSlot {
        index: 0,
        node: 0,
        agent_name: PROBE_AGENT.to_string(),
        generation: 0,
    };
    let mut worker: Option<Box<dyn Worker>> = None;
    let mut failures = Vec::new();
    for (i, mini_batch) in candidates.iter().enumerate() {
        if worker.is_none() {
            let mut started = factory.start(&slot).await?;
            if let Err(e) = started.init().await {
                let _ = started.shutdown().await;
                return Err(match e {
                    PrsError::Worker { worker, message } => PrsError::Worker {
                        worker,
                        message: format!(
                            "init() failed while finding the output schema of parallel_run(...) \
                             ({HINT}):\n{message}"
                        ),
                    },
                    other => other,
                });
            }
            worker = Some(started);
        }
        let Some(running) = worker.as_mut() else {
            break;
        };
        let context = MiniBatchContext {
            minibatch_index: i as u64,
            attempt: 1,
            input_name: input_name.to_string(),
        };
        match running
            .run(mini_batch, &context, config.run_timeout())
            .await
        {
            Ok(returned) => {
                if let Some(mut done) = worker.take() {
                    if let Err(e) = done.shutdown().await {
                        tracing::warn!("the probe worker did not shut down cleanly: {e}");
                    }
                }
                let result = returned.result.ok_or_else(|| PrsError::Worker {
                    worker: PROBE_AGENT.to_string(),
                    message: format!(
                        "run() returned no result to take the output schema from ({HINT})"
                    ),
                })?;
                return Ok(result_schema(&result));
            }
            Err(e) => {
                if e.worker_lost() {
                    worker = None;
                }
                failures.push(format!(
                    "mini batch {} ({} rows): {}{}",
                    mini_batch.id,
                    mini_batch.items(),
                    e.message(&mini_batch.id.to_string()),
                    e.traceback().map(|t| format!("\n{t}")).unwrap_or_default()
                ));
            }
        }
    }
    if let Some(mut done) = worker.take() {
        let _ = done.shutdown().await;
    }
    Err(PrsError::Worker {
        worker: PROBE_AGENT.to_string(),
        message: format!(
            "run() failed on the first {} mini batch(es) of {input_name} while finding the \
             output schema of parallel_run(...) ({HINT}):\n{}",
            failures.len(),
            failures.join("\n")
        ),
    })
}

/// Where the probe worker's logs are (`user/` in the report folder), when it wrote any.
pub fn logs(report_dir: &Path) -> Option<PathBuf> {
    let user = report_dir.join("user");
    user.is_dir().then_some(user)
}

/// A probe error, saying where the probe worker's logs are (when it wrote any).
pub(crate) fn with_logs(error: PrsError, report_dir: &Path) -> PrsError {
    match (error, logs(report_dir)) {
        (PrsError::Worker { worker, message }, Some(logs)) => PrsError::Worker {
            worker,
            message: format!("{message}\nThe probe's logs: {}", logs.display()),
        },
        (other, _) => other,
    }
}

/// The first (at most [`PROBE_TRIES`]) mini-batches the job would cut from these rows; one
/// empty mini-batch for an empty input (run() then shows its columns on no rows).
fn first_mini_batches(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    input_name: &str,
    mini_batch_bytes: u64,
) -> Result<Vec<MiniBatch>> {
    let name: Arc<str> = Arc::from(input_name);
    let mut chunker = ByteChunker::new(0, name.clone(), schema.clone(), mini_batch_bytes);
    let mut out = Vec::new();
    for batch in batches {
        out.extend(chunker.push(batch)?);
        if out.len() >= PROBE_TRIES {
            out.truncate(PROBE_TRIES);
            return Ok(out);
        }
    }
    out.extend(chunker.finish()?);
    if out.is_empty() {
        out.push(MiniBatch {
            id: MiniBatchId::new(0, 0),
            kind: ItemKind::Rows,
            data: RecordBatch::new_empty(schema),
            lineage: Lineage {
                input: name,
                rows: 0..0,
            },
            partition_key_value: Default::default(),
        });
    }
    out.truncate(PROBE_TRIES);
    Ok(out)
}

/// A result's columns, nullable and without the result-shape metadata.
fn result_schema(result: &RecordBatch) -> SchemaRef {
    let fields: Vec<Field> = result
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;

    fn batch(start: i64, n: usize) -> RecordBatch {
        let ids: Vec<i64> = (start..start + n as i64).collect();
        let text: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("text", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(text)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_first_mini_batch_is_cut_like_the_job_cuts_it() {
        let schema = batch(0, 0).schema();
        let two = vec![batch(0, 100), batch(100, 100)];
        let mbs = first_mini_batches(schema.clone(), two, "t", 512).unwrap();
        assert_eq!(mbs.len(), PROBE_TRIES);
        assert!(
            mbs[0].items() > 0 && mbs[0].items() < 100,
            "{}",
            mbs[0].items()
        );
        assert_eq!(mbs[0].lineage.rows.start, 0);
        assert_eq!(mbs[1].lineage.rows.start, mbs[0].lineage.rows.end);
        let all = first_mini_batches(schema.clone(), vec![batch(0, 10)], "t", 1 << 20).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].items(), 10);
        let empty = first_mini_batches(schema.clone(), Vec::new(), "t", 1).unwrap();
        assert_eq!(empty[0].items(), 0);
        assert_eq!(empty[0].data.schema(), schema);
    }

    #[test]
    fn result_schemas_are_nullable_and_plain() {
        let b = batch(0, 1);
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("parallel_run.result_shape".to_string(), "table".to_string());
        let schema = Schema::new_with_metadata(b.schema().fields().clone(), metadata);
        let b = b.with_schema(Arc::new(schema)).unwrap();
        let s = result_schema(&b);
        assert!(s.metadata().is_empty());
        assert!(s.fields().iter().all(|f| f.is_nullable()));
    }
}
