//! The S3 workload: the score job reading its input from an S3 server, against the same job
//! on local disk. The server is `--s3-endpoint`, else the one `.ci/run` starts
//! (`$PARALLEL_RUN_S3_ENDPOINT`), else an s3s-fs the harness starts through the launcher the
//! tests share (`tests/support/servers.rs`).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::cli::Args;
use crate::error::{HarnessError, Result};
use crate::measure::Side;
use crate::report::mb;
use crate::servers::{self, Kind, Server, S3_KEY, S3_REGION, S3_SECRET};
use crate::setup::{shell_line, Ctx, DataSet};
use crate::workloads::{dir_arg, engine_side, q, score_job, Workload, S3_SCORE, SCORE_INIT_SECS};

/// The bucket of the S3 workload when no other is named.
const DEFAULT_BUCKET: &str = "parallel-run-bench";

/// The S3 server of the workload.
pub struct S3 {
    endpoint: String,
    bucket: String,
    /// Which server, for the report.
    how: String,
    /// The server the harness started (stopped on drop); its CPU time is recorded.
    server: Option<Server>,
    /// How to start the same server by hand (to repeat a run).
    by_hand: Option<String>,
}

/// The S3 server to use: `--s3-endpoint`, `$PARALLEL_RUN_S3_ENDPOINT`, or an s3s-fs started
/// here; `Err` says why the S3 workload cannot run.
pub fn s3_setup(ctx: &Ctx, args: &Args) -> Result<S3> {
    let named = |endpoint: &str, bucket: Option<String>, how: String| S3 {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        bucket: args
            .s3_bucket
            .clone()
            .or(bucket)
            .unwrap_or_else(|| DEFAULT_BUCKET.into()),
        how,
        server: None,
        by_hand: None,
    };
    if let Some(endpoint) = &args.s3_endpoint {
        let how = format!("the S3 server at {endpoint} (--s3-endpoint)");
        return Ok(named(endpoint, None, how));
    }
    if let Some(endpoint) = Kind::S3.endpoint_from_env() {
        let bucket = std::env::var("PARALLEL_RUN_S3_BUCKET").ok();
        let how = format!("the S3 server at {endpoint} ($PARALLEL_RUN_S3_ENDPOINT)");
        return Ok(named(&endpoint, bucket, how));
    }
    let bucket = args
        .s3_bucket
        .clone()
        .unwrap_or_else(|| DEFAULT_BUCKET.into());
    let root = ctx.data.join("s3");
    let bucket_dir = root.join(&bucket);
    fs::create_dir_all(&bucket_dir).map_err(HarnessError::io("creating", &bucket_dir))?;
    let server = Server::start(Kind::S3, &root, Some(&ctx.logs.join("s3s-fs.log")))?;
    let command = server.command();
    let endpoint = server.endpoint();
    Ok(S3 {
        how: format!(
            "s3s-fs ({}) started by the harness on {}, storing under {}",
            ctx.show(&PathBuf::from(command.get_program())),
            endpoint.trim_start_matches("http://"),
            ctx.show(&root)
        ),
        by_hand: Some(ctx.relative(&shell_line(&command))),
        endpoint,
        bucket,
        server: Some(server),
    })
}

/// Uploads the data set's Parquet files under `prefix` unless the same names and sizes are
/// there already. Returns a line for the report.
fn s3_upload(s3: &S3, data: &DataSet, prefix: &str) -> Result<String> {
    let store =
        servers::s3_client(&s3.endpoint, &s3.bucket).map_err(|source| HarnessError::S3Client {
            endpoint: s3.endpoint.clone(),
            source,
        })?;
    let runtime = tokio::runtime::Runtime::new().map_err(HarnessError::Runtime)?;
    let mut local: Vec<(String, PathBuf, u64)> = Vec::new();
    let listing = |source| HarnessError::Io {
        action: "listing",
        path: data.dir.clone(),
        source,
    };
    let entries = fs::read_dir(&data.dir).map_err(listing)?;
    for entry in entries {
        let entry = entry.map_err(listing)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") {
            let size = entry
                .metadata()
                .map_err(HarnessError::io("reading", entry.path()))?
                .len();
            local.push((name, entry.path(), size));
        }
    }
    local.sort();
    runtime.block_on(async {
        let remote: BTreeMap<String, u64> = store
            .list(Some(&ObjectPath::from(prefix)))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(|source| HarnessError::S3List {
                url: format!("s3://{}/{prefix}/", s3.bucket),
                endpoint: s3.endpoint.clone(),
                source,
            })?;
        let t = Instant::now();
        let mut uploaded = 0u64;
        for (name, path, size) in &local {
            let key = format!("{prefix}/{name}");
            if remote.get(&key) == Some(size) {
                continue;
            }
            let bytes = fs::read(path).map_err(HarnessError::io("reading", path))?;
            store
                .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes))
                .await
                .map_err(|source| HarnessError::S3Upload {
                    url: format!("s3://{}/{key}", s3.bucket),
                    source,
                })?;
            uploaded += size;
        }
        Ok(if uploaded == 0 {
            format!(
                "the {} Parquet files were already in s3://{}/{prefix}/",
                local.len(),
                s3.bucket
            )
        } else {
            format!(
                "uploaded {} to s3://{}/{prefix}/ in {:.1} s (not timed)",
                mb(uploaded as f64),
                s3.bucket,
                t.elapsed().as_secs_f64()
            )
        })
    })
}

pub fn s3_workload(ctx: &Ctx, s3: &S3, data: &DataSet) -> Result<Workload> {
    let prefix = format!("bench/rows-{}", data.items);
    let uploaded = s3_upload(s3, data, &prefix)?;
    let options = format!(
        "{{aws_endpoint: {}, aws_allow_http: \"true\", aws_access_key_id: {}, \
         aws_secret_access_key: {}, aws_region: {}}}",
        q(&s3.endpoint),
        q(S3_KEY),
        q(S3_SECRET),
        q(S3_REGION)
    );
    let input = format!("s3://{}/{prefix}/", s3.bucket);
    let (job, out) = score_job(ctx, S3_SCORE, input.clone(), Some(options))?;
    let (local_job, local_out) =
        score_job(ctx, &format!("{S3_SCORE}-local"), dir_arg(&data.dir), None)?;
    Ok(Workload {
        name: S3_SCORE.into(),
        what: format!(
            "the score-2M job reading {input} from {}, against the same job on local disk \
             (interleaved); the S3 server's own memory and CPU are not counted",
            s3.how
        ),
        items: data.items,
        unit: "rows",
        init_secs: SCORE_INIT_SECS,
        a: Side {
            server_pid: s3.server.as_ref().and_then(Server::pid).map(|p| p as i32),
            ..engine_side(ctx, "parallel-run (S3 input)", &job, &out, data.items)
        },
        b: Some(engine_side(
            ctx,
            "parallel-run (local disk)",
            &local_job,
            &local_out,
            data.items,
        )),
        setup_note: Some(match &s3.by_hand {
            Some(start) => {
                format!("{uploaded}; to repeat a run by hand, start the server first: `{start} &`")
            }
            None => uploaded,
        }),
    })
}
