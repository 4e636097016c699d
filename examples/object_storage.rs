//! Object storage: the sample reviews are uploaded to an S3 bucket, read back by DataFusion
//! straight from S3, scored with an in-process Rust entry script, and the scores written to
//! the bucket as Parquet.
//!
//! It needs an S3 server and an existing bucket:
//!
//! ```sh
//! # what .ci/run starts (see README "Object storage" for s3s-fs):
//! PARALLEL_RUN_S3_ENDPOINT=http://127.0.0.1:8014 PARALLEL_RUN_S3_BUCKET=parallel-run-tests \
//!   cargo run --example object_storage
//! ```
//!
//! Credentials are `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (default: `test` /
//! `testsecret`, those of the s3s-fs `.ci/run` starts), the region `AWS_REGION` (default
//! `us-east-1`). Job files name S3 inputs and outputs directly (`path: "s3://bucket/in/"`, with
//! `storage_options:`); see the README.

#[path = "support/word_score.rs"]
mod word_score;

use std::process::ExitCode;
use std::sync::Arc;

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{col, SessionContext};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parallel_run::config::{MiniBatchSize, OutputAction, ParallelRunConfig};
use parallel_run::ParallelRunDataFrameExt;
use url::Url;

use word_score::{output_schema, WordScore, REVIEWS};

/// The variables naming the server, and what each is.
const NEEDED: [(&str, &str); 2] = [
    (
        "PARALLEL_RUN_S3_ENDPOINT",
        "the S3 server's URL, e.g. http://127.0.0.1:8014",
    ),
    ("PARALLEL_RUN_S3_BUCKET", "an existing bucket on it"),
];

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (Some(endpoint), Some(bucket)) = (var(NEEDED[0].0), var(NEEDED[1].0)) else {
        eprintln!("object_storage: this example needs an S3 server; set");
        for (name, what) in NEEDED {
            eprintln!("  {name}: {what}");
        }
        eprintln!(
            "(and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY unless they are test / testsecret); \
             `bash .ci/run` starts s3s-fs and runs this example with them set"
        );
        return Ok(ExitCode::from(2));
    };
    // The AWS_* variables, then the server and the bucket; s3s-fs's defaults where unset.
    let mut s3 = AmazonS3Builder::from_env()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket);
    if var("AWS_ACCESS_KEY_ID").is_none() {
        s3 = s3
            .with_access_key_id("test")
            .with_secret_access_key("testsecret");
    }
    if var("AWS_REGION").is_none() {
        s3 = s3.with_region("us-east-1");
    }
    let store = Arc::new(s3.build()?);

    // A prefix of this run's own, removed at the end.
    let prefix = format!("examples/object_storage-{}", std::process::id());
    let input = ObjectPath::from(format!("{prefix}/in/reviews.parquet"));
    store
        .put(&input, PutPayload::from(std::fs::read(REVIEWS)?))
        .await?;
    println!("uploaded s3://{bucket}/{input}");

    let ctx = SessionContext::new();
    ctx.register_object_store(&Url::parse(&format!("s3://{bucket}"))?, store.clone());
    let reviews = ctx
        .read_parquet(format!("s3://{bucket}/{prefix}/in/"), Default::default())
        .await?;

    let mut config = ParallelRunConfig::new("rust:word_score", 0, OutputAction::AppendRow);
    config.process_count_per_node = Some(2);
    config.mini_batch_size = Some(MiniBatchSize::parse("16KB")?);
    let scored = reviews.parallel_run(&config, output_schema(), WordScore::default)?;
    let output = format!("s3://{bucket}/{prefix}/out/scores.parquet");
    scored
        .write_parquet(
            &output,
            DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await?;
    println!("wrote {output}");

    // Read the results back from S3.
    ctx.read_parquet(&output, Default::default())
        .await?
        .aggregate(vec![], vec![count(col("id")).alias("scored_reviews")])?
        .show()
        .await?;

    let keys: Vec<ObjectPath> = store
        .list(Some(&ObjectPath::from(prefix.as_str())))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    for key in &keys {
        store.delete(key).await?;
    }
    println!("removed s3://{bucket}/{prefix}/ ({} objects)", keys.len());
    Ok(ExitCode::SUCCESS)
}
