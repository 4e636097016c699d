//! Inputs on object storage: a tabular input becomes a DataFusion listing table reading
//! straight from the store (its first objects downloaded ahead, see
//! [`crate::storage::read_ahead`]); a file dataset becomes a [`FileListingTable`] over
//! [`RemoteFiles`], whose rows are local copies downloaded ahead of the workers into a bounded
//! cache. The stores, their errors and the caches are [`StorageContext`]'s.

use std::sync::Arc;

use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use url::Url;

use crate::config::{CsvHeader, CsvOptions, InputFormat, InputSpec};
use crate::error::{PrsError, Result};
use crate::input::files::FileListingTable;
use crate::input::formats::{csv_schema, csv_table, listing_options, usual_extension};
use crate::input::remote_files::RemoteFiles;
use crate::storage::cache::FileCache;
use crate::storage::{sanitize_segment, ObjectLocation, Probe, StorageContext};

/// Objects of one tabular input planned for the read-ahead (the rest are read directly).
const READ_AHEAD_OBJECTS: usize = 10_000;

/// Registers input `name` at the object-storage URL `location` in `format` (a table read
/// by DataFusion, or a file dataset downloaded ahead), checking it first.
pub async fn register_remote_input(
    storage: &StorageContext,
    ctx: &SessionContext,
    spec: &InputSpec,
    location: &str,
    format: InputFormat,
) -> Result<()> {
    let name = spec.name.as_str();
    let parsed = ObjectLocation::parse("inputs", location)?;
    match format {
        InputFormat::Files => {
            register_files(storage, ctx, name, &parsed, storage.files_per_batch()).await
        }
        _ => register_table(storage, ctx, name, &parsed, format, &spec.csv).await,
    }
}

/// The error about input `name` at `location`.
fn input_error(name: &str, location: &ObjectLocation, message: String) -> PrsError {
    PrsError::Input {
        input: name.to_string(),
        location: location.text.clone(),
        message,
    }
}

/// Registers a tabular input at `location` as a DataFusion listing table reading straight
/// from the store, after checking the location.
async fn register_table(
    storage: &StorageContext,
    ctx: &SessionContext,
    name: &str,
    location: &ObjectLocation,
    format: InputFormat,
    csv: &CsvOptions,
) -> Result<()> {
    let input_error = |message: String| input_error(name, location, message);
    let store = storage.register_store(ctx, location)?;
    let default_extension = usual_extension(format);
    // A glob says which files; a folder takes the format's usual extension; one object is
    // read whatever its name.
    let check_extension = (location.glob.is_none()).then_some(default_extension);
    let probe = storage
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
    let listing_options = listing_options(ctx, format, &extension, csv)
        .ok_or_else(|| input_error("a file dataset is not a table".into()))?;
    let schema = listing_options
        .infer_schema(&ctx.state(), &table_path)
        .await
        .map_err(|e| input_error(format!("cannot read it as {format:?}: {e}")))?;
    let schema = if format == InputFormat::Csv {
        csv_schema(schema, csv)
    } else {
        schema
    };
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
    // Every object is read with one reader here: a header row in the first object only
    // would be read as data, or a first data row dropped, without a word.
    if format == InputFormat::Csv && csv.header == CsvHeader::FromFirstFile && objects.len() > 1 {
        return Err(input_error(format!(
            "header: from_first_file with {} objects is not supported on object storage yet; \
             use all_files_same_headers (every object starts with the header row), or read a \
             local copy",
            objects.len()
        )));
    }
    let cache_options = storage.options().cache();
    store
        .read_ahead(
            storage.cache_parent(),
            cache_options.size,
            cache_options.concurrency,
        )
        .plan(objects);
    let table_config = ListingTableConfig::new(table_path)
        .with_listing_options(listing_options)
        .with_schema(schema);
    let table = ListingTable::try_new(table_config)?
        .with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
    ctx.register_table(name, csv_table(ctx, Arc::new(table), format, csv)?)?;
    Ok(())
}

/// Registers a file dataset at `location`: listed through the store as a stream, its
/// objects downloaded ahead into a bounded local cache, rows `(path, size, modified)` with
/// local paths. `files_per_batch` sizes the default prefetch.
async fn register_files(
    storage: &StorageContext,
    ctx: &SessionContext,
    name: &str,
    location: &ObjectLocation,
    files_per_batch: u64,
) -> Result<()> {
    let input_error = |message: String| input_error(name, location, message);
    let store = storage.register_store(ctx, location)?;
    let probe = storage
        .probe(location, None)
        .await
        .map_err(|e| input_error(e.to_string()))?;
    let cache_options = storage.options().cache();
    let cache = Arc::new(match storage.local_output() {
        // A job's cache folder is named after its output and the input, the same in every
        // run: the rows' local paths are part of the mini-batches' slice fingerprints, which
        // a resumed run checks. (One output is run by one job at a time: its lock.)
        Some(output) => FileCache::stable(
            storage.cache_parent(),
            &format!(
                "{}-{}",
                sanitize_segment(name),
                stable_suffix(&[&output.to_string_lossy(), &location.text])
            ),
            cache_options.size,
        ),
        None => FileCache::new(
            storage.cache_parent(),
            &format!("{}-", sanitize_segment(name)),
            cache_options.size,
        ),
    });
    let prefetch = cache_options
        .prefetch_files
        .unwrap_or_else(|| (2 * files_per_batch as usize).max(16))
        .max(1);
    let single = match probe {
        Probe::Object(meta) => Some(meta),
        Probe::Prefix(_) => None,
    };
    let dataset = RemoteFiles::new(
        name,
        location.clone(),
        store,
        cache.clone(),
        single,
        prefetch,
        cache_options.concurrency,
        storage.options().clone(),
    )
    .map_err(input_error)?
    .by_url(storage.files_by_url());
    if !storage.files_by_url() {
        storage.add_cache(name, cache);
    }
    ctx.register_table(name, Arc::new(FileListingTable::new(dataset)))?;
    Ok(())
}

/// 16 hex digits of the SHA-256 of `parts`: a folder-name suffix that is the same in every
/// run for the same parts.
fn stable_suffix(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
