//! `storage_options:`: object_store configuration keys plus parallel-run's own storage keys,
//! with secrets masked wherever the options are shown. The values live here, in the
//! configuration; the storage module checks the object_store key names and turns the options
//! into stores.
//!
//! - Any key object_store's S3 or Azure builders accept (`aws_endpoint`, `aws_allow_http`,
//!   `aws_region`, `azure_storage_account_name`, `azure_storage_use_emulator`, `timeout`, ...).
//!   They override what the builders read from the environment (`AWS_*`, `AZURE_*`).
//! - Values may reference environment variables, `${NAME}`, expanded when a store is built, so
//!   secrets need not be written into job files.
//! - parallel-run's own keys: the retry policy (`retry_max_retries`, `retry_timeout_secs`,
//!   `retry_init_backoff_ms`, `retry_max_backoff_ms`, `retry_backoff_base`), the download cache
//!   of file datasets (`cache_dir`, `cache_size`, `prefetch_files`, `download_concurrency`) and
//!   the local folder of an object-storage output (`local_dir`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::MiniBatchSize;
use crate::error::{PrsError, Result};

/// What a masked secret is shown as.
pub const MASK: &str = "*****";

/// The retry policy keys.
pub const RETRY_KEYS: &[&str] = &[
    "retry_max_retries",
    "retry_timeout_secs",
    "retry_init_backoff_ms",
    "retry_max_backoff_ms",
    "retry_backoff_base",
];

/// parallel-run's own keys (everything else goes to object_store).
pub const OWN_KEYS: &[&str] = &[
    "retry_max_retries",
    "retry_timeout_secs",
    "retry_init_backoff_ms",
    "retry_max_backoff_ms",
    "retry_backoff_base",
    "cache_dir",
    "cache_size",
    "prefetch_files",
    "download_concurrency",
    "local_dir",
];

/// Keys that hold paths (resolved against the job file's folder).
const PATH_KEYS: &[&str] = &["cache_dir", "local_dir"];

/// Commonly used object_store keys, for "did you mean" hints.
pub const COMMON_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region",
    "aws_endpoint",
    "aws_allow_http",
    "aws_virtual_hosted_style_request",
    "azure_storage_account_name",
    "azure_storage_account_key",
    "azure_storage_sas_key",
    "azure_storage_token",
    "azure_storage_endpoint",
    "azure_storage_use_emulator",
    "azure_allow_http",
    "allow_http",
    "timeout",
    "connect_timeout",
];

/// Default disk budget of the download cache: 1 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 1 << 30;
/// Default number of parallel downloads.
pub const DEFAULT_DOWNLOAD_CONCURRENCY: usize = 8;

/// The job's `storage_options:`, keys lowercased, values as written (`${VAR}` references kept).
///
/// `Debug` and [`StorageOptions::shown`] mask secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageOptions {
    entries: BTreeMap<String, String>,
}

/// Settings of the download cache of file datasets on object storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// Parent folder of the cache (a fresh sub-folder per job); `None`: under the local output
    /// folder, `<output>/.parallel_run/cache`.
    pub dir: Option<PathBuf>,
    /// Disk budget in bytes for downloaded files not yet finished with.
    pub size: u64,
    /// Files downloaded (or downloading) ahead of the dispatcher; `None`: twice the files of a
    /// mini-batch, at least 16.
    pub prefetch_files: Option<usize>,
    /// Parallel downloads.
    pub concurrency: usize,
}

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.shown()).finish()
    }
}

impl StorageOptions {
    /// Reads and checks a `storage_options` mapping (`field` names it in errors): the values of
    /// parallel-run's own keys must parse; relative paths resolve against `base_dir`. The other
    /// keys go to object_store, which the storage module checks (`check_keys`) before a job
    /// starts and in `validate`.
    pub fn from_map(field: &str, map: BTreeMap<String, String>, base_dir: &Path) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for (key, value) in map {
            let key = key.trim().to_ascii_lowercase();
            let name = format!("{field}.{key}");
            if OWN_KEYS.contains(&key.as_str()) {
                check_own_value(&name, &key, &value)?;
            }
            let value = if PATH_KEYS.contains(&key.as_str()) && !value.trim().is_empty() {
                let path = base_dir.join(value.trim());
                path.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| PrsError::config(&name, &value, "must be a UTF-8 path"))?
            } else {
                value
            };
            entries.insert(key, value);
        }
        Ok(StorageOptions { entries })
    }

    /// Options from entries already checked elsewhere (the non-secret options a cluster
    /// plan carries, see [`StorageOptions::without_secrets`]).
    pub fn from_entries(entries: BTreeMap<String, String>) -> Self {
        StorageOptions { entries }
    }

    /// The entries whose keys are not secrets (a `${VAR}` reference of a secret key is
    /// dropped too: each node reads secrets from its own environment).
    pub fn without_secrets(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .filter(|(k, _)| !is_secret_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// No options at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys (lowercase), in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The raw value of `key` (lowercase), `${VAR}` references unexpanded.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Sets `key` (lowercased) to `value` without checking it (for programmatic use; job files
    /// go through [`StorageOptions::from_map`]).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries
            .insert(key.into().to_ascii_lowercase(), value.into());
    }

    /// The entries as they may be shown: secret values that are not `${VAR}` references are
    /// replaced by [`MASK`].
    pub fn shown(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_key(k) && !is_env_reference(v) {
                    MASK.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }

    /// The object_store entries (parallel-run's own keys left out) with `${VAR}` references
    /// expanded.
    pub fn object_store_entries(&self) -> Result<Vec<(String, String)>> {
        self.entries
            .iter()
            .filter(|(k, _)| !OWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| Ok((k.clone(), expand(k, v)?)))
            .collect()
    }

    /// The download cache settings.
    pub fn cache(&self) -> CacheOptions {
        CacheOptions {
            dir: self.get("cache_dir").map(PathBuf::from),
            size: self
                .get("cache_size")
                .and_then(|s| MiniBatchSize::parse_for("cache_size", s).ok())
                .map_or(DEFAULT_CACHE_SIZE, |s| s.value),
            prefetch_files: self.number::<usize>("prefetch_files"),
            concurrency: self
                .number::<usize>("download_concurrency")
                .unwrap_or(DEFAULT_DOWNLOAD_CONCURRENCY)
                .max(1),
        }
    }

    /// The local folder of an object-storage output (`local_dir`), if set.
    pub fn local_dir(&self) -> Option<PathBuf> {
        self.get("local_dir").map(PathBuf::from)
    }

    /// Replaces every secret value known to this process (secret options, expanded, and the
    /// secret `AWS_*` / `AZURE_*` environment variables) in `text` by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<String> = Vec::new();
        for (k, v) in &self.entries {
            if is_secret_key(k) {
                secrets.push(expand(k, v).unwrap_or_else(|_| v.clone()));
            }
        }
        for (name, value) in std::env::vars() {
            let lower = name.to_ascii_lowercase();
            if (lower.starts_with("aws_") || lower.starts_with("azure_")) && is_secret_key(&lower) {
                secrets.push(value);
            }
        }
        let mut out = text.to_string();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in secrets {
            if secret.len() >= 4 {
                out = out.replace(&secret, MASK);
            }
        }
        out
    }

    /// A numeric own key (already checked by `from_map`).
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }
}

/// Is `key` (lowercase) a secret: keys, tokens, passwords? (`..._id` keys are not.)
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_id") {
        return false;
    }
    [
        "secret",
        "token",
        "password",
        "sas",
        "account_key",
        "access_key",
        "master_key",
        "customer_key",
        "credential",
    ]
    .iter()
    .any(|word| key.contains(word))
}

fn is_env_reference(value: &str) -> bool {
    value.contains("${")
}

/// Expands `${NAME}` references in the value of `key`.
fn expand(key: &str, value: &str) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            PrsError::config(
                format!("storage_options.{key}"),
                shown_value(key, value),
                "has an unclosed ${ reference; write ${NAME}",
            )
        })?;
        let name = &after[..end];
        let resolved = std::env::var(name).map_err(|_| {
            PrsError::config(
                format!("storage_options.{key}"),
                shown_value(key, value),
                format!("the environment variable {name} is not set"),
            )
        })?;
        out.push_str(&resolved);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn shown_value(key: &str, value: &str) -> String {
    if is_secret_key(key) && !is_env_reference(value) {
        MASK.to_string()
    } else {
        value.to_string()
    }
}

/// Checks the value of one of parallel-run's own keys.
fn check_own_value(name: &str, key: &str, value: &str) -> Result<()> {
    let v = value.trim();
    let ok = match key {
        "retry_max_retries" | "prefetch_files" => v.parse::<usize>().is_ok(),
        "download_concurrency" => v.parse::<usize>().is_ok_and(|n| n >= 1),
        "retry_init_backoff_ms" | "retry_max_backoff_ms" => v.parse::<u64>().is_ok(),
        "retry_timeout_secs" => v.parse::<f64>().is_ok_and(|s| s.is_finite() && s >= 0.0),
        "retry_backoff_base" => v.parse::<f64>().is_ok_and(|b| b.is_finite() && b >= 1.0),
        "cache_size" => {
            MiniBatchSize::parse_for(name, v)?;
            true
        }
        "cache_dir" | "local_dir" => !v.is_empty(),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    let rule = match key {
        "retry_max_retries" => "must be an integer >= 0 (retries of a failed request)",
        "prefetch_files" => "must be an integer >= 0 (files downloaded ahead)",
        "download_concurrency" => "must be an integer >= 1 (parallel downloads)",
        "retry_init_backoff_ms" | "retry_max_backoff_ms" => "must be a number of milliseconds",
        "retry_timeout_secs" => "must be a number of seconds >= 0",
        "retry_backoff_base" => "must be a number >= 1 (the backoff multiplier)",
        _ => "must be a folder path",
    };
    Err(PrsError::config(name, value, rule))
}
