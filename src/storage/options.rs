//! The object_store side of `storage_options:` ([`StorageOptions`] lives in the configuration):
//! the retry policy and the check that every key is one object_store knows.

use std::time::Duration;

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::{BackoffConfig, RetryConfig};

use crate::config::closest;
use crate::config::storage_options::{COMMON_KEYS, OWN_KEYS};
use crate::config::StorageOptions;
use crate::error::{PrsError, Result};

/// Every key of `options` (`field` names them in errors) is one of parallel-run's own or one
/// object_store's S3 or Azure builders accept; an unknown key is named with the closest known
/// one. Called when a job is loaded and before it starts.
pub fn check_keys(field: &str, options: &StorageOptions) -> Result<()> {
    for key in options.keys() {
        if OWN_KEYS.contains(&key) || is_object_store_key(key) {
            continue;
        }
        let mut known: Vec<&str> = OWN_KEYS.to_vec();
        known.extend_from_slice(COMMON_KEYS);
        let hint = closest(key, &known)
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        return Err(PrsError::config(
            field,
            key,
            format!(
                "unknown key{hint}; use an object_store S3 or Azure key (e.g. aws_endpoint, \
                 aws_allow_http, azure_storage_account_name) or one of parallel-run's: {}",
                OWN_KEYS.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Does object_store know `key` for S3 or Azure?
fn is_object_store_key(key: &str) -> bool {
    key.parse::<AmazonS3ConfigKey>().is_ok() || key.parse::<AzureConfigKey>().is_ok()
}

/// The retry policy: object_store's defaults (10 retries, 3 minutes, backoff from 100 ms
/// doubling up to 15 s) overridden by the `retry_*` keys.
pub fn retry_config(options: &StorageOptions) -> RetryConfig {
    let mut retry = RetryConfig::default();
    if let Some(n) = options.number::<usize>("retry_max_retries") {
        retry.max_retries = n;
    }
    if let Some(s) = options.number::<f64>("retry_timeout_secs") {
        retry.retry_timeout = Duration::from_secs_f64(s);
    }
    let mut backoff = BackoffConfig::default();
    if let Some(ms) = options.number::<u64>("retry_init_backoff_ms") {
        backoff.init_backoff = Duration::from_millis(ms);
    }
    if let Some(ms) = options.number::<u64>("retry_max_backoff_ms") {
        backoff.max_backoff = Duration::from_millis(ms);
    }
    if let Some(base) = options.number::<f64>("retry_backoff_base") {
        backoff.base = base;
    }
    retry.backoff = backoff;
    retry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::storage_options::{is_secret_key, MASK};
    use std::path::{Path, PathBuf};

    fn options(pairs: &[(&str, &str)]) -> Result<StorageOptions> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let options = StorageOptions::from_map("storage_options", map, Path::new("/jobs"))?;
        check_keys("storage_options", &options)?;
        Ok(options)
    }

    #[test]
    fn accepts_object_store_and_own_keys() {
        let o = options(&[
            ("AWS_ENDPOINT", "http://127.0.0.1:8014"),
            ("aws_allow_http", "true"),
            ("azure_storage_use_emulator", "true"),
            ("timeout", "30s"),
            ("retry_max_retries", "3"),
            ("retry_timeout_secs", "2.5"),
            ("cache_size", "64MB"),
            ("cache_dir", "cache"),
        ])
        .unwrap();
        assert_eq!(o.get("aws_endpoint"), Some("http://127.0.0.1:8014"));
        assert_eq!(retry_config(&o).max_retries, 3);
        assert_eq!(retry_config(&o).retry_timeout, Duration::from_millis(2500));
        assert_eq!(o.cache().size, 64 << 20);
        assert_eq!(o.cache().dir, Some(PathBuf::from("/jobs/cache")));
        let entries = o.object_store_entries().unwrap();
        assert!(entries.iter().all(|(k, _)| !OWN_KEYS.contains(&k.as_str())));
        assert_eq!(entries.len(), 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = options(&[("aws_endpoit", "x")]).unwrap_err().to_string();
        assert!(
            e.contains("unknown key") && e.contains("aws_endpoint"),
            "{e}"
        );
        let e = options(&[("retry_max_retries", "many")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage_options.retry_max_retries"), "{e}");
        let e = options(&[("cache_size", "1 GB")]).unwrap_err().to_string();
        assert!(e.contains("cache_size"), "{e}");
    }

    #[test]
    fn secrets_are_masked_but_references_are_shown() {
        let o = options(&[
            ("aws_secret_access_key", "verysecretvalue"),
            ("aws_access_key_id", "AKIDEXAMPLE"),
            ("azure_storage_account_key", "${PRS_TEST_NOT_SET_ANYWHERE}"),
        ])
        .unwrap();
        let shown = o.shown();
        assert_eq!(shown["aws_secret_access_key"], MASK);
        assert_eq!(shown["aws_access_key_id"], "AKIDEXAMPLE");
        assert_eq!(
            shown["azure_storage_account_key"],
            "${PRS_TEST_NOT_SET_ANYWHERE}"
        );
        let debug = format!("{o:?}");
        assert!(!debug.contains("verysecretvalue"), "{debug}");
        assert_eq!(
            o.redact("signature for verysecretvalue failed"),
            format!("signature for {MASK} failed")
        );
        let e = o.object_store_entries().unwrap_err().to_string();
        assert!(e.contains("PRS_TEST_NOT_SET_ANYWHERE is not set"), "{e}");
    }

    #[test]
    fn job_files_read_write_and_override_storage_options() {
        use crate::config::JobSpec;
        let yaml = "parallel_run_config: {entry_script: 'rust:echo', error_threshold: 0, \
                    output_action: append_row, node_count: 1}\n\
                    inputs: [{name: t, path: 's3://b/in/', format: parquet}]\n\
                    output: 's3://b/out/'\n\
                    storage_options: {AWS_ENDPOINT: 'http://x:1', aws_secret_access_key: '${S}', \
                    retry_max_retries: 2, local_dir: mirror}\n";
        let set = ["storage_options.aws_region=eu-west-1".to_string()];
        let job = JobSpec::from_yaml_str(yaml, Path::new("/j"), &set)
            .unwrap()
            .spec;
        assert_eq!(job.output, Some(PathBuf::from("s3://b/out/")));
        let o = &job.storage_options;
        assert_eq!(o.get("aws_region"), Some("eu-west-1"));
        assert_eq!(o.get("aws_endpoint"), Some("http://x:1"));
        assert_eq!(o.local_dir(), Some(PathBuf::from("/j/mirror")));
        let text = job.to_yaml().unwrap();
        let mut again = JobSpec::from_yaml_str(&text, Path::new("/elsewhere"), &[]).unwrap();
        // The folder a job was read from is where it came from, not what it says.
        again.spec.base_dir = job.base_dir.clone();
        assert_eq!(again.spec, job, "{text}");

        // A literal secret is masked when written out.
        let set = ["storage_options.aws_secret_access_key=hunter2hunter2".to_string()];
        let job = JobSpec::from_yaml_str(yaml, Path::new("/j"), &set)
            .unwrap()
            .spec;
        let text = job.to_yaml().unwrap();
        assert!(
            !text.contains("hunter2hunter2") && text.contains(MASK),
            "{text}"
        );
        assert!(!format!("{job:?}").contains("hunter2hunter2"));

        // Unsupported schemes and globbed outputs are configuration errors.
        let bad = yaml.replace("s3://b/out/", "gs://b/out/");
        let e = JobSpec::from_yaml_str(&bad, Path::new("/j"), &[]).unwrap_err();
        assert!(e.to_string().contains("gs:// is not supported"), "{e}");
        let bad = yaml.replace("s3://b/in/", "ftp://b/in/");
        let e = JobSpec::from_yaml_str(&bad, Path::new("/j"), &[]).unwrap_err();
        assert!(e.to_string().contains("inputs[0].path"), "{e}");
        let bad = yaml.replace("s3://b/out/", "s3://b/out/*.txt");
        assert!(JobSpec::from_yaml_str(&bad, Path::new("/j"), &[]).is_err());
    }

    #[test]
    fn secret_keys() {
        for k in [
            "aws_secret_access_key",
            "aws_session_token",
            "azure_storage_account_key",
            "access_key",
            "azure_storage_sas_key",
            "bearer_token",
            "azure_client_secret",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "aws_access_key_id",
            "aws_endpoint",
            "azure_client_id",
            "aws_region",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
