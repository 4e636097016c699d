//! SQL: `parallel_run(...)` as a relation in a DataFusion session, with an in-process Rust entry
//! script registered as `rust:word_score`. The job's parameters come from `SET
//! parallel_run.*` and the call's named arguments; its rows are filtered, joined and
//! aggregated like any table. The report goes to `report_dir` (a temporary folder here).
//!
//! ```sh
//! cargo run --example sql
//! ```
//!
//! `parallel-run sql data/sample/job.sql` runs a file of such statements from the command
//! line (with the sample's Python entry script).

#[path = "support/word_score.rs"]
mod word_score;

use datafusion::prelude::SessionContext;

use word_score::{registry, REVIEWS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A session whose SQL knows `parallel_run(...)` and the `parallel_run` settings.
    let ctx = parallel_run::sql::register(&SessionContext::new(), registry())?;
    ctx.register_parquet("reviews", REVIEWS, Default::default())
        .await?;

    ctx.sql("SET parallel_run.process_count_per_node = 2")
        .await?;
    ctx.sql("SET parallel_run.mini_batch_size = '16KB'").await?;
    let logs = tempfile::tempdir()?;
    let query = format!(
        "SELECT s.product, count(*) AS positive_reviews, round(avg(s.score), 3) AS avg_score,
                round(avg(r.rating), 2) AS avg_rating
         FROM parallel_run((SELECT id, product, text FROM reviews WHERE lang = 'en'),
                           entry_script => 'rust:word_score', error_threshold => 0,
                           output_schema => 'id BIGINT, product VARCHAR, score DOUBLE',
                           report_dir => '{}') AS s
         JOIN reviews r ON r.id = s.id
         WHERE s.score > 0
         GROUP BY s.product
         ORDER BY s.product",
        logs.path().display()
    );
    ctx.sql(&query).await?.show().await?;

    let summary = std::fs::read_to_string(logs.path().join("job_result.txt"))?;
    for line in summary.lines().take(2) {
        println!("{line}");
    }
    Ok(())
}
