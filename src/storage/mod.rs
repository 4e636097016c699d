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
//!   local cache ([`files`], [`cache`]); `run()` receives local paths.
//! - Outputs are written to a local folder and uploaded when the job commits ([`output`]).

pub mod cache;
pub mod files;
pub mod named;
pub mod options;
pub mod output;
pub mod read_ahead;

use crate::config::ObjectUrl;
pub use crate::config::{is_object_url, CacheOptions, StorageOptions, StoreKind};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use crate::batch::MiniBatchId;
use crate::config::{InputFormat, JobSpec};
use crate::error::{PrsError, Result};
use crate::exec::{JobObserver, MiniBatchRecord};
use crate::report::JobSummary;
use crate::storage::cache::FileCache;
use crate::storage::named::{NamedStore, StoreContext};
use crate::storage::output::RemoteOutput;

/// Files per mini-batch when the config does not say (PRS's default).
const DEFAULT_FILES_PER_BATCH: u64 = 10;

/// Objects of one tabular input planned for the read-ahead (the rest are read directly).
const READ_AHEAD_OBJECTS: usize = 10_000;

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
    fn prefix_dir_url(&self) -> String {
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
    stores: Mutex<BTreeMap<String, Arc<NamedStore>>>,
    /// DataFusion registry key -> our store label (to catch two stores sharing a key).
    registered: Mutex<BTreeMap<String, String>>,
    caches: Mutex<BTreeMap<String, Arc<FileCache>>>,
}

impl StorageContext {
    /// A context with `options`; caches go under `local_output/.parallel_run/cache` unless
    /// `cache_dir` is set.
    pub fn new(options: StorageOptions, local_output: Option<PathBuf>) -> Self {
        StorageContext {
            options,
            local_output,
            remote_output: None,
            files_per_batch: DEFAULT_FILES_PER_BATCH,
            stores: Mutex::new(BTreeMap::new()),
            registered: Mutex::new(BTreeMap::new()),
            caches: Mutex::new(BTreeMap::new()),
        }
    }

    /// The context of a job writing to `output` (a folder, or an object-storage URL whose
    /// local mirror is then the job's output folder) with `spec`'s storage options.
    pub fn for_job(spec: &JobSpec, output: &Path) -> Result<Self> {
        let mut context = StorageContext::new(spec.storage_options.clone(), None);
        context.files_per_batch = spec
            .config
            .mini_batch_files()
            .unwrap_or(DEFAULT_FILES_PER_BATCH);
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

    /// Checks the output on object storage (bucket, credentials) before the job starts.
    pub async fn check_output(&self) -> Result<()> {
        match &self.remote_output {
            Some(remote) => remote.check(self).await.map_err(|e| {
                PrsError::config("output", remote.url(), format!("cannot be written: {e}"))
            }),
            None => Ok(()),
        }
    }

    /// Registers input `name` at the object-storage URL `location` in `format` (a table read
    /// by DataFusion, or a file dataset downloaded ahead), checking it first.
    pub async fn register_input(
        &self,
        ctx: &SessionContext,
        name: &str,
        location: &str,
        format: InputFormat,
    ) -> Result<()> {
        let parsed = ObjectLocation::parse("inputs", location)?;
        match format {
            InputFormat::Files => {
                self.register_files(ctx, name, &parsed, self.files_per_batch)
                    .await
            }
            _ => self.register_table(ctx, name, &parsed, format).await,
        }
    }

    /// `inner`, plus freeing the download cache of each finished mini-batch when some input
    /// is a file dataset on object storage.
    pub fn observer(self: &Arc<Self>, inner: Arc<dyn JobObserver>) -> Arc<dyn JobObserver> {
        if self.has_caches() {
            Arc::new(ReleasingObserver::new(inner, self.clone()))
        } else {
            inner
        }
    }

    /// Commits the output of a succeeded job to object storage: uploads the final file
    /// (a multipart upload: the object appears when it completes) and points the summary at
    /// it. When the upload fails the job fails, the reason names the store, the object and
    /// the operation, and the complete file stays in the local mirror. Nothing to do for a
    /// local output.
    pub async fn commit_output(&self, summary: &mut JobSummary) {
        let (Some(remote), Some(local)) = (&self.remote_output, summary.output.clone()) else {
            return;
        };
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        match remote.upload_final(&local, &name, self).await {
            Ok(url) => {
                let _ = std::fs::remove_file(&local);
                summary.output = Some(PathBuf::from(url));
            }
            Err(e) => {
                summary.fail(format!(
                    "committing the output failed: {e}; the complete output is in {}",
                    local.display()
                ));
                summary.output = None;
                summary.partial_output = Some(local);
            }
        }
    }

    /// Uploads the logs (and any other file the job left in the local mirror, staging and
    /// an uncommitted final file excepted) next to the output on object storage. Returns a warning when that failed
    /// (the logs are still in the local mirror). Nothing to do for a local output.
    pub async fn upload_logs(&self, summary: &JobSummary) -> Option<String> {
        let remote = self.remote_output.as_ref()?;
        // A final file whose upload failed stays local: a plain PUT must not publish it.
        let skip: Vec<PathBuf> = summary.partial_output.iter().cloned().collect();
        match remote.upload_tree(&skip, self).await {
            Ok(_) => None,
            Err(e) => Some(format!(
                "the logs could not be uploaded to {} ({e}); they are in {}",
                remote.url(),
                remote.local_dir().display()
            )),
        }
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
                files::glob_matcher(g)
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

    /// Registers a tabular input at `location` as a DataFusion listing table reading straight
    /// from the store, after checking the location.
    pub async fn register_table(
        &self,
        ctx: &SessionContext,
        name: &str,
        location: &ObjectLocation,
        format: InputFormat,
    ) -> Result<()> {
        let input_error = |message: String| PrsError::Input {
            input: name.to_string(),
            location: location.text.clone(),
            message,
        };
        let store = self.register_store(ctx, location)?;
        let default_extension = match format {
            InputFormat::Parquet => ".parquet",
            InputFormat::Csv => ".csv",
            InputFormat::Json => ".json",
            InputFormat::Files => "",
        };
        // A glob says which files; a folder takes the format's usual extension; one object is
        // read whatever its name.
        let check_extension = (location.glob.is_none()).then_some(default_extension);
        let probe = self
            .probe(location, check_extension)
            .await
            .map_err(|e| input_error(e.to_string()))?;
        let (table_url, extension) = match &probe {
            Probe::Object(meta) => {
                let name = meta.location.filename().unwrap_or_default();
                let extension = name.rfind('.').map_or("", |i| &name[i..]).to_string();
                (location.url_of(&meta.location), extension)
            }
            Probe::Prefix(_) => {
                let extension = if location.glob.is_some() {
                    String::new()
                } else {
                    default_extension.to_string()
                };
                (location.prefix_dir_url(), extension)
            }
        };
        let url = Url::parse(&table_url).map_err(|e| input_error(format!("bad URL: {e}")))?;
        let mut table_path = ListingTableUrl::try_new(url, None)?;
        if let Some(glob) = &location.glob {
            table_path = table_path
                .with_glob(glob)
                .map_err(|e| input_error(format!("bad glob {glob:?}: {e}")))?;
        }
        let table_path = table_path.with_table_ref(name.into());
        let config = ctx.copied_config();
        let table_options = ctx.copied_table_options();
        let listing_options = match format {
            InputFormat::Parquet => ParquetReadOptions::default()
                .file_extension(&extension)
                .to_listing_options(&config, table_options),
            InputFormat::Csv => CsvReadOptions::new()
                .has_header(true)
                .file_extension(&extension)
                .to_listing_options(&config, table_options),
            InputFormat::Json => JsonReadOptions::default()
                .file_extension(&extension)
                .to_listing_options(&config, table_options),
            InputFormat::Files => {
                return Err(input_error("a file dataset is not a table".into()));
            }
        };
        let schema = listing_options
            .infer_schema(&ctx.state(), &table_path)
            .await
            .map_err(|e| input_error(format!("cannot read it as {format:?}: {e}")))?;
        // The objects DataFusion will read, in its order, for the read-ahead (the first
        // READ_AHEAD_OBJECTS of them: more are read straight from the store).
        let mut objects: Vec<ObjectMeta> = table_path
            .list_all_files(
                &ctx.state(),
                store.as_ref(),
                &listing_options.file_extension,
            )
            .await
            .map_err(|e| input_error(format!("cannot list it: {e}")))?
            .take(READ_AHEAD_OBJECTS)
            .try_collect()
            .await
            .map_err(|e| input_error(format!("cannot list it: {e}")))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let cache_options = self.options.cache();
        store
            .read_ahead(
                self.cache_parent(),
                cache_options.size,
                cache_options.concurrency,
            )
            .plan(objects);
        let table_config = ListingTableConfig::new(table_path)
            .with_listing_options(listing_options)
            .with_schema(schema);
        let table = ListingTable::try_new(table_config)?
            .with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
        ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }

    /// Registers a file dataset at `location`: listed through the store as a stream, its
    /// objects downloaded ahead into a bounded local cache, rows `(path, size, modified)` with
    /// local paths. `files_per_batch` sizes the default prefetch.
    pub async fn register_files(
        &self,
        ctx: &SessionContext,
        name: &str,
        location: &ObjectLocation,
        files_per_batch: u64,
    ) -> Result<()> {
        let input_error = |message: String| PrsError::Input {
            input: name.to_string(),
            location: location.text.clone(),
            message,
        };
        let store = self.register_store(ctx, location)?;
        let probe = self
            .probe(location, None)
            .await
            .map_err(|e| input_error(e.to_string()))?;
        let cache_options = self.options.cache();
        let cache = Arc::new(FileCache::new(
            self.cache_parent(),
            &format!("{}-", sanitize_segment(name)),
            cache_options.size,
        ));
        let prefetch = cache_options
            .prefetch_files
            .unwrap_or_else(|| (2 * files_per_batch as usize).max(16))
            .max(1);
        let single = match probe {
            Probe::Object(meta) => Some(meta),
            Probe::Prefix(_) => None,
        };
        let dataset = files::RemoteFiles::new(
            name,
            location.clone(),
            store,
            cache.clone(),
            single,
            prefetch,
            cache_options.concurrency,
            self.options.clone(),
        )
        .map_err(input_error)?;
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), cache);
        ctx.register_table(name, Arc::new(files::RemoteFilesTable::new(dataset)))?;
        Ok(())
    }

    /// Where download caches and read-ahead copies go: `cache_dir`, else
    /// `<output>/.parallel_run/cache`.
    fn cache_parent(&self) -> PathBuf {
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

    /// True when some input is a file dataset on object storage.
    pub fn has_caches(&self) -> bool {
        !self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The mini-batch `record` finished: its downloaded files are no longer needed.
    pub fn mini_batch_finished(&self, record: &MiniBatchRecord) {
        if let Some(cache) = self.cache(&record.lineage.input) {
            cache.release(record.lineage.rows.clone());
        }
    }
}

/// Passes every event on to `inner` and frees the download cache of each finished
/// mini-batch.
pub struct ReleasingObserver {
    inner: Arc<dyn JobObserver>,
    storage: Arc<StorageContext>,
}

impl ReleasingObserver {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn JobObserver>, storage: Arc<StorageContext>) -> Self {
        ReleasingObserver { inner, storage }
    }
}

impl JobObserver for ReleasingObserver {
    fn mini_batch_finished(&self, record: &MiniBatchRecord) {
        self.inner.mini_batch_finished(record);
        self.storage.mini_batch_finished(record);
    }

    fn try_failed(&self, id: MiniBatchId, attempt: u32, process: &str, message: &str) {
        self.inner.try_failed(id, attempt, process, message);
    }

    fn scheduling_done(&self, mini_batches: u64, items: u64) {
        self.inner.scheduling_done(mini_batches, items);
    }

    fn worker_event(&self, process: &str, message: &str) {
        self.inner.worker_event(process, message);
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
