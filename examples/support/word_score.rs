//! The entry script the examples share: scores reviews by counting happy and unhappy words,
//! the same model as the sample's `score_reviews.py`, in Rust. Included by each example with
//! `#[path = "support/word_score.rs"] mod word_score;`.

#![allow(dead_code)] // each example uses its own part

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parallel_run::worker::rust::{RunOutput, ScriptError, WorkerInfo};
use parallel_run::worker::{EntryScript, MiniBatchContext, ScriptRegistry};

/// The sample data: 2,000 product reviews (`id`, `product`, `lang`, `rating`, `text`).
pub const REVIEWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample/reviews.parquet");

/// The script's name in a registry: `entry_script: rust:word_score`.
pub const NAME: &str = "word_score";

/// The model: the words that count.
const POSITIVE: &str = "great excellent love perfect fast sturdy happy recommend";
const NEGATIVE: &str = "broken slow refund poor awful late cheap disappointed";

/// Scores each review's `text` from -1 to 1: (happy words - unhappy words) / words.
#[derive(Default)]
pub struct WordScore {
    positive: Vec<&'static str>,
    negative: Vec<&'static str>,
}

impl EntryScript for WordScore {
    fn init(&mut self, _worker: &WorkerInfo) -> Result<(), ScriptError> {
        self.positive = POSITIVE.split(' ').collect();
        self.negative = NEGATIVE.split(' ').collect();
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

/// run()'s result columns: `id`, `product`, `score`.
pub fn output_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("product", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

/// A registry holding the script as `rust:word_score` (for SQL and YAML jobs, which name
/// their entry script).
pub fn registry() -> ScriptRegistry {
    let mut registry = ScriptRegistry::new();
    registry.register(NAME, WordScore::default);
    registry
}
