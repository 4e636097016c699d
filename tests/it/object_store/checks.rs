//! What is checked before a job starts: credentials, buckets and objects, an output prefix
//! holding earlier results, and `show-config`'s masking of secrets.

use super::jobs::*;
use super::store::{shared, unique};
use crate::servers::Kind;

/// Wrong credentials: `run` and `validate` stop before the job starts (exit code 2), say
/// access was denied to which store, and never print the secret.
#[test]
fn bad_credentials_are_reported_before_the_job_starts() {
    let prefix = unique("creds");
    for kind in [Kind::S3, Kind::Azure] {
        let store = shared(kind);
        store.put(&format!("{prefix}/in/a.csv"), b"id\n1\n".to_vec());
        let (secret_key, bad_secret) = match kind {
            Kind::S3 => ("aws_secret_access_key", "wrong-secret-value"),
            // A valid key (base64), but not the account's.
            Kind::Azure => (
                "azure_storage_account_key",
                "d3Jvbmcta2V5LXZhbHVlLXdyb25nLWtleS12YWx1ZQ==",
            ),
        };
        let options = store
            .storage_options("")
            .lines()
            .map(|l| {
                if l.trim_start().starts_with(secret_key) {
                    format!("  {secret_key}: \"{bad_secret}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let d = tempfile::tempdir().unwrap();
        let job = echo_job(
            d.path(),
            "",
            &format!(
                "inputs:\n  - {{name: rows, path: \"{}\", format: csv}}\noutput: out\n{options}\n",
                store.url(&format!("{prefix}/in/"))
            ),
        );
        for command in ["run", "validate"] {
            let run = cli_env(&[command, job.to_str().unwrap()], &[]);
            assert_eq!(run.code, 2, "{kind:?} {command}: {run:?}");
            assert!(
                run.stderr.contains("access denied"),
                "{kind:?} {command}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(&store.url("")),
                "{kind:?}: {}",
                run.stderr
            );
            assert!(!run.stderr.contains(bad_secret), "{kind:?}: {}", run.stderr);
        }
        assert!(!d.path().join("out/logs").exists(), "nothing ran");
    }
}

/// A missing bucket or container, for an input or the output, and a missing prefix: clear
/// errors before the job starts.
#[test]
fn missing_buckets_and_objects_are_reported_before_the_job_starts() {
    for kind in [Kind::S3, Kind::Azure] {
        let store = shared(kind);
        let missing = store.with_bucket("no-such-bucket-here");
        let d = tempfile::tempdir().unwrap();
        let prefix = unique("missing");
        store.put(&format!("{prefix}/in/a.csv"), b"id\n1\n".to_vec());
        let cases = [
            (missing.url("in/"), "out".to_string(), "does not exist"),
            (
                store.url(&format!("{prefix}/nothing-here/")),
                "out".to_string(),
                "no object",
            ),
            (
                store.url(&format!("{prefix}/in/")),
                format!("\"{}\"", missing.url("out/")),
                "does not exist",
            ),
        ];
        for (input, output, words) in cases {
            let job = echo_job(
                d.path(),
                "",
                &format!(
                    "inputs:\n  - {{name: rows, path: \"{input}\", format: csv}}\noutput: {output}\n{}",
                    store.storage_options("")
                ),
            );
            let run = cli_env(&["validate", job.to_str().unwrap()], &[]);
            assert_eq!(run.code, 2, "{kind:?} {input} -> {output}: {run:?}");
            assert!(
                run.stderr.contains(words),
                "{kind:?} {input} -> {output}: {}",
                run.stderr
            );
            let run = run_env(&job, &[]);
            assert_eq!(run.code, 2, "{kind:?}: {run:?}");
        }
    }
}

/// `show-config` prints storage_options with secrets masked (`${VAR}` references are shown);
/// `--set storage_options.KEY=VALUE` works; unknown keys are named.
#[test]
fn show_config_masks_secrets() {
    let d = tempfile::tempdir().unwrap();
    let job = echo_job(
        d.path(),
        "",
        "inputs:\n  - {name: rows, path: \"s3://bucket/in/\", format: parquet}\noutput: \"s3://bucket/out/\"\nstorage_options:\n  aws_secret_access_key: super-secret-value\n  azure_storage_account_key: ${MY_AZURE_KEY}\n  aws_endpoint: http://127.0.0.1:1\n",
    );
    let run = cli_env(
        &[
            "show-config",
            job.to_str().unwrap(),
            "--set",
            "storage_options.retry_max_retries=4",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("super-secret-value"), "{}", run.stdout);
    assert!(
        run.stdout.contains("aws_secret_access_key: '*****'"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("${MY_AZURE_KEY}"), "{}", run.stdout);
    assert!(
        run.stdout.contains("retry_max_retries: '4'"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("output: s3://bucket/out/"),
        "{}",
        run.stdout
    );
    let run = cli_env(
        &[
            "show-config",
            job.to_str().unwrap(),
            "--set",
            "storage_options.aws_endpont=x",
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("did you mean \"aws_endpoint\""),
        "{}",
        run.stderr
    );
}

/// An output prefix holding an earlier run's results is refused, also from a machine whose
/// local mirror knows nothing of it; `--overwrite` deletes the old final object and logs first.
#[test]
fn an_output_prefix_with_earlier_results_is_refused_unless_overwrite() {
    let s3 = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    parquet_inputs(&d.path().join("data"));
    let prefix = unique("rerun");
    let out_url = s3.url(&format!("{prefix}/out/"));
    let job = |mirror: &str| {
        echo_job(
            d.path(),
            "mini_batch_size: 64KB",
            &format!(
                "inputs:\n  - {{name: rows, path: data, format: parquet}}\noutput: \"{out_url}\"\n{}",
                s3.storage_options(&format!("  local_dir: {}\n", d.path().join(mirror).display()))
            ),
        )
    };
    let run = run_env(&job("first"), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    s3.put(&format!("{prefix}/out/logs/stale.txt"), b"old".to_vec());

    let run = run_env(&job("second"), &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&out_url)
            && run.stderr.contains("parallel_run_step.txt")
            && run.stderr.contains("--overwrite"),
        "{}",
        run.stderr
    );
    let run = cli_env(
        &[
            "run",
            job("third").to_str().unwrap(),
            "--quiet",
            "--overwrite",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let keys = s3.list(&format!("{prefix}/out"));
    assert!(
        !keys.iter().any(|k| k.ends_with("logs/stale.txt")),
        "the old logs are gone: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with("parallel_run_step.txt")),
        "{keys:?}"
    );
}
