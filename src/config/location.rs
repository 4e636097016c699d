//! Where data lives: local paths and object-storage URLs. The one family of location
//! predicates ([`is_url`], [`is_object_url`]) and the pure parse of an object-storage URL
//! ([`ObjectUrl`]); the storage module turns one into an object_store location.

use crate::error::{PrsError, Result};

/// Does this look like `scheme://...` (s3, az, abfss, gs, http, ...)?
pub fn is_url(location: &str) -> bool {
    match location.split_once("://") {
        Some((scheme, _)) => {
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// Does `location` look like `scheme://...` for a scheme other than `file`? (Such locations
/// are object storage; [`ObjectUrl::parse`] says whether the scheme is supported.)
pub fn is_object_url(location: &str) -> bool {
    is_url(location)
        && !location
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("file://"))
}

/// Which kind of store a URL addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// Amazon S3 and compatible servers (`s3://`, `s3a://`).
    S3,
    /// Azure Blob Storage / ADLS Gen2 (`az://`, `azure://`, `adl://`, `abfs://`, `abfss://`).
    Azure,
}

impl StoreKind {
    /// What users call a store of this kind: `bucket` or `container`.
    pub fn container_word(self) -> &'static str {
        match self {
            StoreKind::S3 => "bucket",
            StoreKind::Azure => "container",
        }
    }
}

/// An object-storage URL taken apart, without touching any store: `scheme://authority/prefix`
/// and an optional glob over the keys below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    /// S3 or Azure.
    pub kind: StoreKind,
    /// The scheme as written (`s3`, `az`, `abfss`, ...).
    pub scheme: String,
    /// The bucket or container (with an account host for `abfss://c@acct...`).
    pub authority: String,
    /// The object path or prefix, before any glob (no leading `/`).
    pub prefix: String,
    /// A glob over keys relative to `prefix` (e.g. `*.parquet`), when the location had one.
    pub glob: Option<String>,
    /// Written with a trailing `/` (or no path at all): certainly a prefix, not an object.
    pub is_dir: bool,
}

fn has_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

impl ObjectUrl {
    /// Parses `s3://bucket/prefix`, `az://container/prefix`,
    /// `abfss://container@account.dfs.core.windows.net/prefix`, ... A glob may follow the
    /// prefix (`s3://bucket/data/*.parquet`). `field` names the setting in errors.
    pub fn parse(field: &str, location: &str) -> Result<Self> {
        let bad = |reason: String| PrsError::config(field, location, reason);
        let (scheme, rest) = location
            .split_once("://")
            .ok_or_else(|| bad("is not a URL".into()))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => StoreKind::S3,
            "az" | "azure" | "adl" | "abfs" | "abfss" => StoreKind::Azure,
            other => {
                return Err(bad(format!(
                    "the scheme {other}:// is not supported; use s3://bucket/prefix, \
                     az://container/prefix (also abfss://, azure://), file:// or a local path"
                )))
            }
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad(format!(
                "names no {}; write {scheme}://NAME/prefix",
                kind.container_word()
            )));
        }
        if has_glob(authority) {
            return Err(bad("the bucket or container name cannot be a glob".into()));
        }
        // Split the path at the first segment with glob characters.
        let segments: Vec<&str> = path.split('/').collect();
        let glob_at = segments.iter().position(|s| has_glob(s));
        let (prefix, glob) = match glob_at {
            Some(i) => (segments[..i].join("/"), Some(segments[i..].join("/"))),
            None => (path.to_string(), None),
        };
        Ok(ObjectUrl {
            kind,
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            prefix,
            glob,
            is_dir: glob_at.is_none() && (path.is_empty() || path.ends_with('/')),
        })
    }
}

/// A glob over paths (or object keys) relative to a listing root; `*` stays within one
/// folder. The error says what is wrong with `pattern`.
pub fn glob_matcher(pattern: &str) -> std::result::Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}
