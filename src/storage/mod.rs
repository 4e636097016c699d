//! Object storage: inputs and outputs on S3 (`s3://bucket/prefix`) and Azure Blob
//! (`az://container/prefix`, also `abfss://`, `azure://`, `adl://`), through `object_store`.
//!
//! - [`StorageOptions`] (`storage_options:` in the job) configure the stores on top of the
//!   standard environment variables, which the builders read with `from_env()`; secrets are
//!   masked wherever options or errors are shown.
//! - [`StorageContext`] is one job's view: it builds each store once (wrapped in a
//!   [`named::NamedStore`] so errors name the store, the object and the operation), registers
//!   it with the DataFusion session, checks inputs and the output before the job starts, and
//!   owns the download caches of file datasets.
//! - Tabular inputs are DataFusion listing tables reading straight from the store.
//! - File datasets are listed as a stream and downloaded ahead of the workers into a bounded
//!   local cache (`input::remote_files`, [`cache`]); `run()` receives local paths.
//! - Outputs are written to a local folder and uploaded when the job commits ([`output`]).

pub mod cache;
pub mod lease;
pub mod named;
pub mod options;
pub mod output;
pub mod read_ahead;

use crate::config::ObjectUrl;
pub use crate::config::{is_object_url, CacheOptions, StorageOptions, StoreKind};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use crate::config::JobSpec;
use crate::error::{PrsError, Result};
use crate::storage::cache::FileCache;
use crate::storage::named::{NamedStore, StoreContext};
use crate::storage::output::RemoteOutput;

/// An object-storage location: the store and the object path (or prefix) within it, and an
/// optional glob over the keys below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    /// S3 or Azure.
    pub kind: StoreKind,
    /// The store's URL, `scheme://authority` (e.g. `s3://bucket`,
    /// `abfss://container@account.dfs.core.windows.net`).
    pub store_url: Url,
    /// The object path or prefix (before any glob).
    pub prefix: ObjectPath,
    /// A glob over keys relative to `prefix` (e.g. `*.parquet`), when the location had one.
    pub glob: Option<String>,
    /// Written with a trailing `/`: certainly a prefix, not an object.
    pub is_dir: bool,
    /// The location as written.
    pub text: String,
}

impl ObjectLocation {
    /// Parses `s3://bucket/prefix`, `az://container/prefix`, `abfss://container@account.dfs.core.windows.net/prefix`,
    /// ... A glob may follow the prefix (`s3://bucket/data/*.parquet`). `field` names the
    /// setting in errors.
    pub fn parse(field: &str, location: &str) -> Result<Self> {
        let url = ObjectUrl::parse(field, location)?;
        let bad = |reason: String| PrsError::config(field, location, reason);
        let store_url = Url::parse(&format!("{}://{}", url.scheme, url.authority))
            .map_err(|e| bad(format!("is not a valid URL: {e}")))?;
        if store_url.host_str().is_none_or(str::is_empty) {
            return Err(bad("is not a valid URL: no bucket or container".into()));
        }
        let prefix_url = Url::parse(&format!(
            "{}://{}/{}",
            url.scheme, url.authority, url.prefix
        ))
        .map_err(|e| bad(format!("is not a valid URL: {e}")))?;
        let prefix = ObjectPath::from_url_path(prefix_url.path())
            .map_err(|e| bad(format!("is not a valid object path: {e}")))?;
        Ok(ObjectLocation {
            kind: url.kind,
            store_url,
            prefix,
            glob: url.glob,
            is_dir: url.is_dir,
            text: location.to_string(),
        })
    }

    /// `scheme://authority` as users know the store, e.g. `s3://bucket`.
    pub fn store_label(&self) -> String {
        self.store_url.as_str().trim_end_matches('/').to_string()
    }

    /// The full URL of `path` in this location's store.
    pub fn url_of(&self, path: &ObjectPath) -> String {
        named::object_url(&self.store_label(), path)
    }

    /// The URL of the prefix as a folder (with a trailing `/`).
    pub fn prefix_dir_url(&self) -> String {
        let mut url = self.url_of(&self.prefix);
        if !url.ends_with('/') {
            url.push('/');
        }
        url
    }

    /// `path` relative to the prefix (its last segment when the location is the object itself).
    pub fn relative(&self, path: &ObjectPath) -> String {
        match path.prefix_match(&self.prefix) {
            Some(parts) => {
                let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
                if parts.is_empty() {
                    path.filename().unwrap_or_default().to_string()
                } else {
                    parts.join("/")
                }
            }
            None => path.as_ref().to_string(),
        }
    }
}

/// Downloads the object `path` of `location`'s store into the file `local` (its folder is
/// created): streamed to `.NAME.part` beside it, then renamed, so `local` is complete or
/// absent.
pub async fn download_object(
    store: &NamedStore,
    location: &ObjectLocation,
    path: &ObjectPath,
    local: &Path,
    options: &StorageOptions,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let object = location.url_of(path);
    if let Some(parent) = local.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| PrsError::io(parent, e))?;
    }
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let part = local.with_file_name(format!(".{name}.part"));
    let written = async {
        let result = store
            .get(path)
            .await
            .map_err(|e| storage_error(location, "GET", &object, &e, options))?;
        let mut body = result.into_stream();
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| PrsError::io(&part, e))?;
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            let chunk = chunk.map_err(|e| storage_error(location, "GET", &object, &e, options))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| PrsError::io(&part, e))?;
        }
        file.flush().await.map_err(|e| PrsError::io(&part, e))?;
        tokio::fs::rename(&part, local)
            .await
            .map_err(|e| PrsError::io(local, e))
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    written
}

/// A storage failure as a [`PrsError::Storage`], using the context a [`NamedStore`] added.
pub fn storage_error(
    location: &ObjectLocation,
    operation: &str,
    object: &str,
    e: &object_store::Error,
    options: &StorageOptions,
) -> PrsError {
    let detail = match std::error::Error::source(e).and_then(|s| s.downcast_ref::<StoreContext>()) {
        Some(context) => context.message.clone(),
        None => options.redact(&e.to_string()),
    };
    let message = classify(location, e, &detail);
    PrsError::Storage {
        store: location.store_label(),
        object: object.to_string(),
        operation: operation.to_string(),
        message,
    }
}

/// A storage error message that says what is wrong in plain words when it can (missing
/// bucket, missing object, denied access), followed by the store's own detail.
fn classify(location: &ObjectLocation, e: &object_store::Error, detail: &str) -> String {
    use object_store::Error as E;
    let container = location.kind.container_word();
    const MISSING_BUCKET: &[&str] = &["NoSuchBucket", "ContainerNotFound"];
    const DENIED: &[&str] = &[
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "InvalidAuthenticationInfo",
        "ExpiredToken",
        "403 Forbidden",
        "401 Unauthorized",
    ];
    if MISSING_BUCKET.iter().any(|code| detail.contains(code)) {
        return format!(
            "the {container} {} does not exist ({detail})",
            location.store_label()
        );
    }
    let variables = match location.kind {
        StoreKind::S3 => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        StoreKind::Azure => "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
    };
    // No credentials configured: object_store fell back to the cloud's metadata service.
    if detail.contains("169.254.169.254") || detail.contains("169.254.170.2") {
        return format!(
            "no credentials: set {variables} (or storage_options); the instance metadata \
             service gave none ({detail})"
        );
    }
    if matches!(e, E::PermissionDenied { .. } | E::Unauthenticated { .. })
        || DENIED.iter().any(|code| detail.contains(code))
    {
        return format!(
            "access denied: check the credentials ({variables} or storage_options) and their \
             permissions ({detail})"
        );
    }
    if matches!(e, E::NotFound { .. }) {
        return format!("not found ({detail})");
    }
    detail.to_string()
}

/// Builds the store for `location` from the environment (`from_env()`) and `options`, wrapped
/// so that its errors name it. A store that cannot be configured (no account, a malformed
/// key, ...) is a configuration error.
pub fn build_store(location: &ObjectLocation, options: &StorageOptions) -> Result<Arc<NamedStore>> {
    let label = location.store_label();
    // A store that cannot be configured is a configuration error (exit code 2).
    let configure_error = |e: object_store::Error| {
        PrsError::config(
            "storage_options",
            &label,
            format!(
                "the store cannot be configured: {}; set its environment variables or \
                 storage_options",
                options.redact(&e.to_string())
            ),
        )
    };
    let entries = options.object_store_entries()?;
    let retry = options::retry_config(options);
    let inner: Arc<dyn ObjectStore> = match location.kind {
        StoreKind::S3 => {
            let mut builder = AmazonS3Builder::from_env();
            for (key, value) in entries {
                if let Ok(k) = key.parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(k, value);
                }
            }
            let builder = builder
                .with_url(location.store_url.as_str())
                .with_retry(retry);
            Arc::new(builder.build().map_err(configure_error)?)
        }
        StoreKind::Azure => {
            let mut builder = MicrosoftAzureBuilder::from_env();
            for (key, value) in entries {
                if let Ok(k) = key.parse::<AzureConfigKey>() {
                    builder = builder.with_config(k, value);
                }
            }
            let builder = builder
                .with_url(location.store_url.as_str())
                .with_retry(retry);
            Arc::new(builder.build().map_err(configure_error)?)
        }
    };
    Ok(Arc::new(NamedStore::new(inner, label, options.clone())))
}

/// The key DataFusion's object store registry files a URL under (`scheme://host:port`, no
/// user info).
fn registry_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// `m`'s guard, also after a panic elsewhere held it (the crate's `lock`, kept inside this
/// module, which imports nothing of the crate but `config` and `error`).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a check of an input location found.
#[derive(Debug, Clone)]
pub enum Probe {
    /// The location is one object.
    Object(ObjectMeta),
    /// The location is a prefix; this is its first (matching) object.
    Prefix(ObjectMeta),
}

/// One job's object storage: options, the stores it built, its output on object storage (if
/// any) and its download caches.
#[derive(Debug)]
pub struct StorageContext {
    options: StorageOptions,
    /// Local output folder (the mirror of a remote output); the default cache place.
    local_output: Option<PathBuf>,
    /// The output, when it is on object storage.
    remote_output: Option<RemoteOutput>,
    /// Files per mini-batch (sizes the default prefetch).
    files_per_batch: u64,
    /// File datasets on object storage are listed with their objects' URLs and not
    /// downloaded here (a cluster driver's: each executor downloads its mini-batches' files).
    files_by_url: bool,
    stores: Mutex<BTreeMap<String, Arc<NamedStore>>>,
    /// DataFusion registry key -> our store label (to catch two stores sharing a key).
    registered: Mutex<BTreeMap<String, String>>,
    caches: Mutex<BTreeMap<String, Arc<FileCache>>>,
    /// The lease of the output on object storage, while the job holds it.
    lease: Mutex<Option<lease::OutputLease>>,
}

impl StorageContext {
    /// A context with `options`; caches go under `local_output/.parallel_run/cache` unless
    /// `cache_dir` is set.
    pub fn new(options: StorageOptions, local_output: Option<PathBuf>) -> Self {
        StorageContext {
            options,
            local_output,
            remote_output: None,
            files_per_batch: crate::config::DEFAULT_MINI_BATCH_FILES,
            files_by_url: false,
            stores: Mutex::new(BTreeMap::new()),
            registered: Mutex::new(BTreeMap::new()),
            caches: Mutex::new(BTreeMap::new()),
            lease: Mutex::new(None),
        }
    }

    /// The context of a job writing to `output` (a folder, or an object-storage URL whose
    /// local mirror is then the job's output folder) with `spec`'s storage options.
    pub fn for_job(spec: &JobSpec, output: &Path) -> Result<Self> {
        let mut context = StorageContext::new(spec.storage_options.clone(), None);
        context.files_by_url = matches!(
            spec.config.compute_target,
            crate::config::ComputeTarget::Cluster(_)
        );
        context.files_per_batch = spec
            .config
            .mini_batch_files()
            .unwrap_or(crate::config::DEFAULT_MINI_BATCH_FILES);
        match output.to_str().filter(|o| is_object_url(o)) {
            Some(url) => {
                let remote = RemoteOutput::new(url, &context)?;
                context.local_output = Some(remote.local_dir().to_path_buf());
                context.remote_output = Some(remote);
            }
            None => context.local_output = Some(output.to_path_buf()),
        }
        Ok(context)
    }

    /// [`StorageContext::for_job`], then [`StorageContext::check_output`]: what `run` and
    /// `validate` do before registering the inputs.
    pub async fn prepare(spec: &JobSpec, output: &Path) -> Result<Arc<Self>> {
        options::check_keys("storage_options", &spec.storage_options)?;
        let context = Arc::new(StorageContext::for_job(spec, output)?);
        context.check_output().await?;
        Ok(context)
    }

    /// Whether file datasets on object storage are listed by URL, not downloaded (a cluster
    /// driver's: its executors download the files).
    pub fn files_by_url(&self) -> bool {
        self.files_by_url
    }

    /// The options.
    pub fn options(&self) -> &StorageOptions {
        &self.options
    }

    /// The local output folder: the output itself, or the local mirror of a remote output.
    pub fn local_output(&self) -> Option<&Path> {
        self.local_output.as_deref()
    }

    /// The output on object storage, if it is there.
    pub fn remote_output(&self) -> Option<&RemoteOutput> {
        self.remote_output.as_ref()
    }

    /// Takes the lease of the output on object storage (see [`lease`]) and holds it until
    /// [`StorageContext::release_lease`]; returns what it took over (a stale lease,
    /// described). Nothing to do for a local output.
    pub async fn acquire_lease(&self) -> Result<Option<String>> {
        let Some(remote) = &self.remote_output else {
            return Ok(None);
        };
        let lease = remote.acquire_lease(self).await?;
        let taken = lease.taken_over().map(str::to_string);
        *lock(&self.lease) = Some(lease);
        Ok(taken)
    }

    /// `f` of the held lease (`None` when none is held).
    pub fn with_lease<R>(&self, f: impl FnOnce(&lease::OutputLease) -> R) -> Option<R> {
        lock(&self.lease).as_ref().map(f)
    }

    /// Releases the held lease (deletes its object). Returns a warning when that failed (the
    /// lease then goes stale by itself).
    pub async fn release_lease(&self) -> Option<String> {
        let lease = lock(&self.lease).take()?;
        lease
            .release()
            .await
            .err()
            .map(|e| format!("removing the output's lease failed ({e}); it goes stale by itself"))
    }

    /// Checks the output on object storage (bucket, credentials) before the job starts.
    pub async fn check_output(&self) -> Result<()> {
        match &self.remote_output {
            Some(remote) => remote.check(self).await.map_err(|e| {
                PrsError::config("output", remote.url(), format!("cannot be written: {e}"))
            }),
            None => Ok(()),
        }
    }

    /// Uploads the final output file `local` to the output on object storage (a multipart
    /// upload: the object appears when it completes) and removes the local copy. Returns the
    /// object's URL; `None` for a local output. An error names the store, the object and the
    /// operation; the file then stays where it is.
    pub async fn commit_output(&self, local: &Path) -> Option<Result<String>> {
        let remote = self.remote_output.as_ref()?;
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        Some(remote.upload_final(local, &name, self).await.inspect(|_| {
            let _ = std::fs::remove_file(local);
        }))
    }

    /// Uploads the logs (and any other file the job left in the local mirror, staging and the
    /// files of `skip` excepted) next to the output on object storage. Returns a warning when
    /// that failed (the logs are still in the local mirror). Nothing to do for a local output.
    pub async fn upload_logs(&self, skip: &[PathBuf]) -> Option<String> {
        let remote = self.remote_output.as_ref()?;
        match remote.upload_tree(skip, self).await {
            Ok(_) => None,
            Err(e) => Some(format!(
                "the logs could not be uploaded to {} ({e}); they are in {}",
                remote.url(),
                remote.local_dir().display()
            )),
        }
    }

    /// Files per mini-batch of the job (sizes the default prefetch of file datasets).
    pub fn files_per_batch(&self) -> u64 {
        self.files_per_batch
    }

    /// Keeps `cache` as the download cache of file-dataset input `name`.
    pub fn add_cache(&self, name: &str, cache: Arc<FileCache>) {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), cache);
    }

    /// The rows `rows` of file-dataset input `input` are done with (their mini-batch
    /// finished): their downloaded files are freed.
    pub fn release(&self, input: &str, rows: std::ops::Range<u64>) {
        if let Some(cache) = self.cache(input) {
            cache.release(rows);
        }
    }

    /// Downloads `location` into the folder `dir`: the object itself (as `dir/NAME`) when it
    /// is one, else every object below the prefix (keeping their paths below it). Returns the
    /// local file, or `dir` for a prefix. Nothing found is an error naming `field` and the URL.
    pub async fn download(
        &self,
        field: &str,
        location: &ObjectLocation,
        dir: &Path,
    ) -> Result<PathBuf> {
        let store = self.store(location)?;
        if !location.is_dir && location.glob.is_none() {
            if let Ok(meta) = store.head(&location.prefix).await {
                let name = meta.location.filename().unwrap_or("object").to_string();
                let local = dir.join(name);
                download_object(&store, location, &meta.location, &local, &self.options).await?;
                return Ok(local);
            }
        }
        let listed: Vec<ObjectMeta> = store
            .list(Some(&location.prefix))
            .try_collect()
            .await
            .map_err(|e| {
                storage_error(
                    location,
                    "LIST",
                    &location.prefix_dir_url(),
                    &e,
                    &self.options,
                )
            })?;
        if listed.is_empty() {
            return Err(PrsError::config(
                field,
                &location.text,
                "has no object at or below it: check the URL",
            ));
        }
        for meta in listed {
            let local = dir.join(location.relative(&meta.location));
            download_object(&store, location, &meta.location, &local, &self.options).await?;
        }
        Ok(dir.to_path_buf())
    }

    /// The store for `location`, built on first use.
    pub fn store(&self, location: &ObjectLocation) -> Result<Arc<NamedStore>> {
        let label = location.store_label();
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = stores.get(&label) {
            return Ok(store.clone());
        }
        let store = build_store(location, &self.options)?;
        stores.insert(label, store.clone());
        Ok(store)
    }

    /// Builds the store for `location` and registers it with `ctx`'s runtime, so DataFusion
    /// reads `location` through it.
    pub fn register_store(
        &self,
        ctx: &SessionContext,
        location: &ObjectLocation,
    ) -> Result<Arc<NamedStore>> {
        let store = self.store(location)?;
        let key = registry_key(&location.store_url);
        let label = location.store_label();
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        match registered.get(&key) {
            Some(other) if *other != label => {
                return Err(PrsError::config(
                    "inputs",
                    &location.text,
                    format!(
                        "{label} and {other} share DataFusion's store key {key}; use az://CONTAINER/... \
                         URLs with azure_storage_account_name in storage_options instead"
                    ),
                ))
            }
            Some(_) => {}
            None => {
                ctx.register_object_store(&location.store_url, store.clone());
                registered.insert(key, label);
            }
        }
        Ok(store)
    }

    /// Checks that an input location exists and is readable: the first object of a listing
    /// of the prefix (matching the glob and `extension` when given), or, when there is none, a
    /// HEAD of the location as one object. Missing buckets, objects and bad credentials are
    /// reported here, before the job starts.
    pub async fn probe(&self, location: &ObjectLocation, extension: Option<&str>) -> Result<Probe> {
        let store = self.store(location)?;
        let matcher = match &location.glob {
            Some(g) => Some(
                crate::config::glob_matcher(g)
                    .map_err(|m| PrsError::config("inputs", &location.text, m))?,
            ),
            None => None,
        };
        let prefix = (!location.prefix.as_ref().is_empty()).then_some(&location.prefix);
        let mut listing = store.list(prefix);
        loop {
            match listing.try_next().await {
                Ok(Some(meta)) => {
                    let relative = location.relative(&meta.location);
                    let glob_ok = matcher.as_ref().is_none_or(|m| m.is_match(&relative));
                    let ext_ok = extension.is_none_or(|e| meta.location.as_ref().ends_with(e));
                    if glob_ok && ext_ok && !meta.location.as_ref().ends_with('/') {
                        return Ok(Probe::Prefix(meta));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(storage_error(
                        location,
                        "LIST",
                        &location.prefix_dir_url(),
                        &e,
                        &self.options,
                    ))
                }
            }
        }
        // Nothing below it as a folder: it may be one object.
        if location.glob.is_none() && !location.is_dir && prefix.is_some() {
            match store.head(&location.prefix).await {
                Ok(meta) => return Ok(Probe::Object(meta)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(storage_error(
                        location,
                        "HEAD",
                        &location.url_of(&location.prefix),
                        &e,
                        &self.options,
                    ))
                }
            }
        }
        let what = match (&location.glob, extension) {
            (Some(g), _) => format!(" matching {g}"),
            (None, Some(e)) if !e.is_empty() => format!(" ending with {e}"),
            _ => String::new(),
        };
        Err(PrsError::Storage {
            store: location.store_label(),
            object: location.prefix_dir_url(),
            operation: "LIST".into(),
            message: format!(
                "no object{what} there; check the path (a folder is listed recursively)"
            ),
        })
    }

    /// Where download caches and read-ahead copies go: `cache_dir`, else
    /// `<output>/.parallel_run/cache`.
    pub fn cache_parent(&self) -> PathBuf {
        match (&self.options.cache().dir, &self.local_output) {
            (Some(dir), _) => dir.clone(),
            (None, Some(out)) => out.join(".parallel_run").join("cache"),
            (None, None) => std::env::temp_dir().join("parallel-run-cache"),
        }
    }

    /// Starts downloading the tabular inputs on object storage ahead of DataFusion (see
    /// [`read_ahead`]); called when the job starts running, so the transfers overlap the
    /// workers' start-up and init().
    pub fn start_read_ahead(&self) {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        for store in stores.values() {
            if let Some(ahead) = store.existing_read_ahead() {
                ahead.start();
            }
        }
    }

    /// The download cache of file-dataset input `name`, if it is on object storage.
    pub fn cache(&self, name: &str) -> Option<Arc<FileCache>> {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Files the download caches of the file datasets downloaded.
    pub fn files_downloaded(&self) -> u64 {
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|cache| cache.stats().downloaded)
            .sum()
    }

    /// True when some input is a file dataset on object storage.
    pub fn has_caches(&self) -> bool {
        !self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// A path segment safe to use as a local file or folder name.
pub(crate) fn sanitize_segment(segment: &str) -> String {
    let cleaned: String = segment
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => cleaned,
    }
}

/// `path` below `root`, each segment sanitized.
pub(crate) fn local_path(root: &Path, relative: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    for segment in relative.split('/') {
        path.push(sanitize_segment(segment));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let l = ObjectLocation::parse("p", "s3://bucket/data/in/").unwrap();
        assert_eq!(l.kind, StoreKind::S3);
        assert_eq!(l.store_label(), "s3://bucket");
        assert_eq!(l.prefix.as_ref(), "data/in");
        assert!(l.is_dir && l.glob.is_none());

        let l = ObjectLocation::parse("p", "az://container/data/*.parquet").unwrap();
        assert_eq!(l.kind, StoreKind::Azure);
        assert_eq!(l.prefix.as_ref(), "data");
        assert_eq!(l.glob.as_deref(), Some("*.parquet"));

        let l = ObjectLocation::parse("p", "abfss://c@acct.dfs.core.windows.net/x/y.csv").unwrap();
        assert_eq!(l.store_label(), "abfss://c@acct.dfs.core.windows.net");
        assert_eq!(l.prefix.as_ref(), "x/y.csv");
        assert!(!l.is_dir);
        assert_eq!(
            registry_key(&l.store_url),
            "abfss://acct.dfs.core.windows.net"
        );

        let l = ObjectLocation::parse("p", "s3://bucket").unwrap();
        assert!(l.is_dir);
        assert_eq!(l.prefix.as_ref(), "");
        assert_eq!(l.prefix_dir_url(), "s3://bucket/");

        let l = ObjectLocation::parse("p", "azure://c/my%20dir/a b.txt").unwrap();
        assert_eq!(l.prefix.as_ref(), "my dir/a b.txt");

        for bad in ["gs://b/x", "s3:///x", "s3://*/x", "http://host/x"] {
            assert!(ObjectLocation::parse("p", bad).is_err(), "{bad}");
        }
        assert!(is_object_url("s3://b/x") && is_object_url("gs://b"));
        assert!(!is_object_url("file:///x") && !is_object_url("/tmp/x") && !is_object_url("a/b"));
    }

    #[test]
    fn relative_paths_and_local_names() {
        let l = ObjectLocation::parse("p", "s3://b/data/").unwrap();
        assert_eq!(l.relative(&ObjectPath::from("data/sub/a.txt")), "sub/a.txt");
        let one = ObjectLocation::parse("p", "s3://b/data/a.txt").unwrap();
        assert_eq!(one.relative(&ObjectPath::from("data/a.txt")), "a.txt");
        assert_eq!(
            local_path(Path::new("/c"), "sub/../a.txt"),
            PathBuf::from("/c/sub/_/a.txt")
        );
    }

    #[test]
    fn configuration_errors_name_the_store_and_hide_secrets() {
        let mut options = StorageOptions::default();
        options.insert("azure_storage_account_key", "not-base64-secret!!");
        options.insert("azure_storage_account_name", "acct");
        let l = ObjectLocation::parse("p", "az://container/x").unwrap();
        let e = build_store(&l, &options).unwrap_err().to_string();
        assert!(e.contains("az://container"), "{e}");
        assert!(!e.contains("not-base64-secret!!"), "{e}");
    }
}
