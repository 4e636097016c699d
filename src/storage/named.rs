//! [`NamedStore`]: an object store whose errors say which store, which object and which
//! operation failed, with secrets masked.
//!
//! DataFusion reads tabular inputs through the stores we register, so its errors pass
//! through here too. Error variants are kept (DataFusion treats `NotFound` specially); only
//! paths become full URLs and messages get the context.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

use crate::config::StorageOptions;
use crate::storage::read_ahead::ReadAhead;

/// Context added to an object_store error.
#[derive(Debug)]
pub struct StoreContext {
    /// The store, e.g. `s3://bucket`.
    pub store: String,
    /// The object (full URL) or prefix concerned.
    pub object: String,
    /// The operation: `GET`, `PUT`, `LIST`, `HEAD`, `multipart upload`, ...
    pub operation: &'static str,
    /// The underlying error's message, secrets masked.
    pub message: String,
}

impl fmt::Display for StoreContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} failed (store {}): {}",
            self.operation, self.object, self.store, self.message
        )
    }
}

impl std::error::Error for StoreContext {}

/// Wraps a store: errors name the store, the object and the operation.
#[derive(Debug)]
pub struct NamedStore {
    inner: Arc<dyn ObjectStore>,
    /// Local copies of the job's tabular inputs, downloaded ahead (see [`ReadAhead`]).
    read_ahead: OnceLock<Arc<ReadAhead>>,
    /// `scheme://authority`, e.g. `s3://bucket` or `az://container`.
    label: String,
    options: StorageOptions,
}

impl NamedStore {
    /// Wraps `inner`, known to users as `label` (`s3://bucket`).
    pub fn new(inner: Arc<dyn ObjectStore>, label: String, options: StorageOptions) -> Self {
        NamedStore {
            inner,
            read_ahead: OnceLock::new(),
            label,
            options,
        }
    }

    /// The read-ahead of this store, made on first use (downloads into a folder under
    /// `parent`, within `budget` bytes, `concurrency` at a time; see [`ReadAhead`]).
    pub fn read_ahead(&self, parent: PathBuf, budget: u64, concurrency: usize) -> Arc<ReadAhead> {
        self.read_ahead
            .get_or_init(|| {
                Arc::new(ReadAhead::new(
                    self.inner.clone(),
                    parent,
                    budget,
                    concurrency,
                ))
            })
            .clone()
    }

    /// The read-ahead, if one was made.
    pub fn existing_read_ahead(&self) -> Option<&Arc<ReadAhead>> {
        self.read_ahead.get()
    }

    /// The full URL of `path` in this store.
    pub fn url_of(&self, path: &Path) -> String {
        object_url(&self.label, path)
    }

    fn wrap(
        &self,
        operation: &'static str,
        path: Option<&Path>,
        e: object_store::Error,
    ) -> object_store::Error {
        wrap_error(&self.label, &self.options, operation, path, e)
    }
}

/// `label/path` (no double slash, the label alone for the root).
pub fn object_url(label: &str, path: &Path) -> String {
    if path.as_ref().is_empty() {
        format!("{label}/")
    } else {
        format!("{label}/{}", path.as_ref())
    }
}

/// Adds store, object and operation to `e`, keeping its variant; secrets are masked.
pub fn wrap_error(
    label: &str,
    options: &StorageOptions,
    operation: &'static str,
    path: Option<&Path>,
    e: object_store::Error,
) -> object_store::Error {
    use object_store::Error as E;
    let object = path.map_or_else(|| format!("{label}/"), |p| object_url(label, p));
    let context = |source: Box<dyn std::error::Error + Send + Sync>| -> Box<dyn std::error::Error + Send + Sync> {
        // Already wrapped (e.g. a stream error passing through twice): keep it.
        if source.downcast_ref::<StoreContext>().is_some() {
            return source;
        }
        Box::new(StoreContext {
            store: label.to_string(),
            object: object.clone(),
            operation,
            message: options.redact(&source.to_string()),
        })
    };
    match e {
        E::Generic { store, source } => E::Generic {
            store,
            source: context(source),
        },
        E::NotFound { source, .. } => E::NotFound {
            path: object.clone(),
            source: context(source),
        },
        E::AlreadyExists { source, .. } => E::AlreadyExists {
            path: object.clone(),
            source: context(source),
        },
        E::Precondition { source, .. } => E::Precondition {
            path: object.clone(),
            source: context(source),
        },
        E::NotModified { source, .. } => E::NotModified {
            path: object.clone(),
            source: context(source),
        },
        E::PermissionDenied { source, .. } => E::PermissionDenied {
            path: object.clone(),
            source: context(source),
        },
        E::Unauthenticated { source, .. } => E::Unauthenticated {
            path: object.clone(),
            source: context(source),
        },
        other => other,
    }
}

impl fmt::Display for NamedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.label)
    }
}

#[async_trait]
impl ObjectStore for NamedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner
            .put_opts(location, payload, opts)
            .await
            .map_err(|e| self.wrap("PUT", Some(location), e))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self
            .inner
            .put_multipart_opts(location, opts)
            .await
            .map_err(|e| self.wrap("multipart upload (create)", Some(location), e))?;
        Ok(Box::new(NamedUpload {
            inner: upload,
            label: self.label.clone(),
            options: self.options.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if let Some(ahead) = self.read_ahead.get() {
            if let Some(served) = ahead.get_opts(location, &options).await {
                return served;
            }
        }
        let operation = if options.head { "HEAD" } else { "GET" };
        let mut result = self
            .inner
            .get_opts(location, options)
            .await
            .map_err(|e| self.wrap(operation, Some(location), e))?;
        if let GetResultPayload::Stream(stream) = result.payload {
            let label = self.label.clone();
            let opts = self.options.clone();
            let path = location.clone();
            result.payload = GetResultPayload::Stream(
                stream
                    .map_err(move |e| {
                        wrap_error(&label, &opts, "GET (reading the body)", Some(&path), e)
                    })
                    .boxed(),
            );
        }
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        if let Some(ahead) = self.read_ahead.get() {
            if let Some(served) = ahead.get_ranges(location, ranges).await {
                return served;
            }
        }
        self.inner
            .get_ranges(location, ranges)
            .await
            .map_err(|e| self.wrap("GET (ranges)", Some(location), e))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let label = self.label.clone();
        let opts = self.options.clone();
        self.inner
            .delete_stream(locations)
            .map_err(move |e| wrap_error(&label, &opts, "DELETE", None, e))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let label = self.label.clone();
        let opts = self.options.clone();
        let path = prefix.cloned();
        self.inner
            .list(prefix)
            .map_err(move |e| wrap_error(&label, &opts, "LIST", path.as_ref(), e))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let label = self.label.clone();
        let opts = self.options.clone();
        let path = prefix.cloned();
        self.inner
            .list_with_offset(prefix, offset)
            .map_err(move |e| wrap_error(&label, &opts, "LIST", path.as_ref(), e))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| self.wrap("LIST", prefix, e))
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner
            .copy_opts(from, to, options)
            .await
            .map_err(|e| self.wrap("COPY", Some(from), e))
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner
            .rename_opts(from, to, options)
            .await
            .map_err(|e| self.wrap("RENAME", Some(from), e))
    }
}

/// A multipart upload whose errors name the store and the object.
#[derive(Debug)]
struct NamedUpload {
    inner: Box<dyn MultipartUpload>,
    label: String,
    options: StorageOptions,
    location: Path,
}

#[async_trait]
impl MultipartUpload for NamedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        let label = self.label.clone();
        let opts = self.options.clone();
        let path = self.location.clone();
        Box::pin(async move {
            part.await
                .map_err(|e| wrap_error(&label, &opts, "multipart upload (part)", Some(&path), e))
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await.map_err(|e| {
            wrap_error(
                &self.label,
                &self.options,
                "multipart upload (complete)",
                Some(&self.location),
                e,
            )
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await.map_err(|e| {
            wrap_error(
                &self.label,
                &self.options,
                "multipart upload (abort)",
                Some(&self.location),
                e,
            )
        })
    }
}
