//! Runs an in-process Rust entry script over a Parquet file with the DataFrame extension, then
//! keeps composing in DataFusion: the results are filtered and aggregated like any table.
//!
//! ```sh
//! cargo run --example score_dataframe
//! ```

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::functions_aggregate::expr_fn::{avg, count};
use datafusion::prelude::{col, lit, SessionContext};
use parallel_run::config::{MiniBatchSize, OutputAction, ParallelRunConfig};
use parallel_run::worker::rust::{RunOutput, ScriptError, WorkerInfo};
use parallel_run::worker::{EntryScript, MiniBatchContext};
use parallel_run::ParallelRunDataFrameExt;

/// Scores reviews by counting happy and unhappy words: the same model as the sample's
/// `score_reviews.py`, in Rust.
#[derive(Default)]
struct WordScore {
    positive: Vec<&'static str>,
    negative: Vec<&'static str>,
}

impl EntryScript for WordScore {
    fn init(&mut self, _worker: &WorkerInfo) -> Result<(), ScriptError> {
        self.positive = vec![
            "great",
            "excellent",
            "love",
            "perfect",
            "fast",
            "sturdy",
            "happy",
            "recommend",
        ];
        self.negative = vec![
            "broken",
            "slow",
            "refund",
            "poor",
            "awful",
            "late",
            "cheap",
            "disappointed",
        ];
        Ok(())
    }

    fn run(
        &mut self,
        batch: &RecordBatch,
        _ctx: &MiniBatchContext,
    ) -> Result<RunOutput, ScriptError> {
        let text = arrow::compute::cast(
            batch.column_by_name("text").ok_or("no text column")?,
            &DataType::Utf8,
        )?;
        let scores: Float64Array = text
            .as_string::<i32>()
            .iter()
            .map(|t| {
                t.map(|t| {
                    let words: Vec<&str> = t.split_whitespace().collect();
                    let pos = words.iter().filter(|w| self.positive.contains(w)).count() as f64;
                    let neg = words.iter().filter(|w| self.negative.contains(w)).count() as f64;
                    (pos - neg) / words.len().max(1) as f64
                })
            })
            .collect();
        let product = arrow::compute::cast(
            batch.column_by_name("product").ok_or("no product column")?,
            &DataType::Utf8,
        )?;
        let product: StringArray = product.as_string::<i32>().clone();
        Ok(RunOutput::Rows(RecordBatch::try_new(
            output_schema(),
            vec![
                batch.column_by_name("id").ok_or("no id column")?.clone(),
                Arc::new(product),
                Arc::new(scores),
            ],
        )?))
    }
}

fn output_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("product", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample/reviews.parquet");
    let ctx = SessionContext::new();
    let reviews = ctx.read_parquet(path, Default::default()).await?;

    let mut config = ParallelRunConfig::new("rust:word_score", 0, OutputAction::AppendRow);
    config.process_count_per_node = Some(2);
    config.mini_batch_size = Some(MiniBatchSize::parse("16KB")?);

    let scored = reviews.parallel_run(&config, output_schema(), WordScore::default)?;
    let per_product = scored
        .filter(col("score").gt(lit(0.0)))?
        .aggregate(
            vec![col("product")],
            vec![
                count(col("id")).alias("positive_reviews"),
                avg(col("score")).alias("avg_score"),
            ],
        )?
        .sort(vec![col("product").sort(true, true)])?;
    per_product.show().await?;
    Ok(())
}
