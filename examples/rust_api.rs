//! The Rust API, with an in-process Rust entry script over the sample reviews:
//!
//! 1. `ParallelRunDataFrameExt::parallel_run` turns a DataFrame into the DataFrame of run()'s
//!    results, and the example keeps composing in DataFusion (filter, aggregate, sort);
//! 2. the `ParallelRun` builder runs the same script as a whole job over the DataFrame: output
//!    file, report files and PRS's summary sentence, like `parallel-run run JOB.yaml`.
//!
//! ```sh
//! cargo run --example rust_api
//! ```

#[path = "support/word_score.rs"]
mod word_score;

use datafusion::functions_aggregate::expr_fn::{avg, count};
use datafusion::prelude::{col, lit, SessionContext};
use parallel_run::config::{MiniBatchSize, OutputAction, OutputFormat, ParallelRunConfig};
use parallel_run::{ParallelRun, ParallelRunDataFrameExt};

use word_score::{output_schema, WordScore, REVIEWS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = SessionContext::new();
    let reviews = ctx.read_parquet(REVIEWS, Default::default()).await?;

    let mut config = ParallelRunConfig::new("rust:word_score", 0, OutputAction::AppendRow);
    config.process_count_per_node = Some(2);
    config.mini_batch_size = Some(MiniBatchSize::parse("16KB")?);

    // 1. run()'s results as a DataFrame.
    let scored = reviews
        .clone()
        .parallel_run(&config, output_schema(), WordScore::default)?;
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

    // 2. A whole job: the results and the report go to an output folder.
    let out = tempfile::tempdir()?;
    let report = ParallelRun::new(config)
        .input("reviews", reviews)
        .entry_script(WordScore::default)
        .output(out.path())
        .output_format(OutputFormat::Csv)
        .await?;
    println!("{}", report.sentence());
    let mut written: Vec<String> = std::fs::read_dir(out.path())?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    println!("written to the output folder: {}", written.join(", "));
    Ok(())
}
