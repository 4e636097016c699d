//! Local file datasets: a folder or glob listed as a [`FileSource`] of a
//! [`FileListingTable`](crate::input::FileListingTable).
//!
//! Listing streams: entries are produced while the walk goes on, so the first mini-batch can
//! start before a large folder is fully listed. The order is deterministic: each folder's
//! entries are visited sorted by name (depth first), which gives paths in sorted order. (A
//! folder's own entries are read in full to sort them; sub-folders are walked lazily.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::BoxStream;

use crate::config::glob_matcher;
use crate::error::{PrsError, Result};
use crate::input::files::{FileEntry, FileSource, LISTING_BATCH};

/// What to list: a single file, a folder (recursively), or a glob; plus key columns taken
/// from the paths.
#[derive(Debug, Clone)]
pub struct FileListing {
    input: String,
    root: PathBuf,
    pattern: Option<String>,
    keys: PathKeys,
}

/// Key columns read from file paths (relative to the listing's root).
#[derive(Debug, Clone)]
enum PathKeys {
    /// No key columns.
    None,
    /// Hive-style folders `name=value/`: these names, in path order.
    Hive(Vec<String>),
    /// Azure's partition_format, e.g. `{country}/{year}/*.jpg`: a regex with one named group
    /// per key; files that do not match are left out.
    Format {
        names: Vec<String>,
        regex: regex::Regex,
    },
}

impl PathKeys {
    fn names(&self) -> &[String] {
        match self {
            PathKeys::None => &[],
            PathKeys::Hive(names) | PathKeys::Format { names, .. } => names,
        }
    }

    /// The key values of `relative` (None: the file does not match the format).
    fn values(&self, relative: &str) -> Option<Vec<Option<String>>> {
        match self {
            PathKeys::None => Some(Vec::new()),
            PathKeys::Hive(names) => {
                let found = hive_pairs(relative);
                Some(
                    names
                        .iter()
                        .map(|n| found.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
                        .collect(),
                )
            }
            PathKeys::Format { names, regex } => {
                let caps = regex.captures(relative)?;
                Some(
                    names
                        .iter()
                        .map(|n| caps.name(n).map(|m| m.as_str().to_string()))
                        .collect(),
                )
            }
        }
    }
}

/// `name=value` folder components of a relative path, in order.
fn hive_pairs(relative: &str) -> Vec<(String, String)> {
    let mut parts: Vec<&str> = relative.split('/').collect();
    parts.pop(); // the file name itself
    parts
        .into_iter()
        .filter_map(|c| {
            c.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Turns a partition format such as `{country}/{year}/*.jpg` into an anchored regex and its
/// key names. A format ending with `/` matches every file below the folders it describes.
fn partition_format_regex(
    format: &str,
) -> std::result::Result<(Vec<String>, regex::Regex), String> {
    let mut names = Vec::new();
    let mut pattern = String::from("^");
    let mut rest = format.trim_start_matches('/');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| format!("partition_format {format:?}: unclosed {{"))?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "partition_format {format:?}: {{{name}}} is not a valid key name"
                ));
            }
            pattern.push_str(&format!("(?P<{name}>[^/]+)"));
            names.push(name.to_string());
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix("**") {
            pattern.push_str(".*");
            rest = after;
        } else if let Some(after) = rest.strip_prefix('*') {
            pattern.push_str("[^/]*");
            rest = after;
        } else {
            let c = rest.chars().next().unwrap_or_default();
            pattern.push_str(&regex::escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    // A format naming folders only (`{Store}/{Brand}/`) takes every file below them.
    if format.ends_with('/') {
        pattern.push_str(".+");
    }
    pattern.push('$');
    let regex =
        regex::Regex::new(&pattern).map_err(|e| format!("partition_format {format:?}: {e}"))?;
    Ok((names, regex))
}

impl FileListing {
    /// A listing for input `input` at `location` (a local file, folder or glob). Errors when
    /// nothing exists at the location's fixed part, or a glob matches no file.
    ///
    /// With `partition_format` (e.g. `{country}/{year}/*.jpg`, relative to the folder; Azure's
    /// form with the folder's own name in front is accepted, see `relative_format`),
    /// its fields become columns and files that do not match are left out; when files are
    /// listed but none matches, that is an error here, before anything runs (the walk stops
    /// at the first match, so a good format costs one file). Without it, hive-style folders
    /// (`country=fr/`) of the first files do.
    pub fn new(input: &str, location: &str, partition_format: Option<&str>) -> Result<Self> {
        let mut listing = FileListing::plain(input, location)?;
        // Files seen by the up-front walk, and the first of them (for messages).
        let mut listed = 0u64;
        let mut example: Option<String> = None;
        listing.keys = match partition_format {
            Some(format) => {
                let relative = listing.relative_format(format);
                let (names, regex) =
                    partition_format_regex(&relative).map_err(|message| listing.error(message))?;
                let keys = PathKeys::Format { names, regex };
                // Before any run(): a format that matches none of the files would silently
                // leave every file out. The walk stops at the first match.
                let mut matched = false;
                listing.walk_paths(|path| {
                    listed += 1;
                    example.get_or_insert_with(|| path.to_string());
                    matched = keys.values(path).is_some();
                    !matched
                })?;
                if listed > 0 && !matched {
                    return Err(listing.format_matches_nothing(
                        format,
                        &relative,
                        listed,
                        example.as_deref().unwrap_or_default(),
                    ));
                }
                keys
            }
            None => {
                // The hive key names of the first files that have some (a README at the top
                // of the folder must not hide them).
                let mut names: Vec<String> = Vec::new();
                listing.walk_paths(|path| {
                    listed += 1;
                    for (k, _) in hive_pairs(path) {
                        if !names.contains(&k) {
                            names.push(k);
                        }
                    }
                    names.is_empty() && listed < 1000
                })?;
                if names.is_empty() {
                    PathKeys::None
                } else {
                    PathKeys::Hive(names)
                }
            }
        };
        if listed == 0 && listing.pattern.is_some() {
            return Err(listing.glob_matches_nothing());
        }
        Ok(listing)
    }

    /// Checks, before anything runs, that a glob `location` of input `input` matches at least
    /// one file (a folder or a single file is not checked). DataFusion's listing would
    /// otherwise fail with a message that names neither the input nor the glob, or find an
    /// empty table.
    pub fn require_files(input: &str, location: &str) -> Result<()> {
        let listing = FileListing::plain(input, location)?;
        if listing.pattern.is_none() {
            return Ok(());
        }
        let mut any = false;
        listing.walk_paths(|_| {
            any = true;
            false
        })?;
        if any {
            Ok(())
        } else {
            Err(listing.glob_matches_nothing())
        }
    }

    /// A listing without key columns; errors when nothing exists at the location's fixed part
    /// or the glob is malformed.
    fn plain(input: &str, location: &str) -> Result<Self> {
        let location = location.strip_prefix("file://").unwrap_or(location);
        let (root, pattern) = split_glob(location);
        let err = |message: String| PrsError::Input {
            input: input.into(),
            location: location.into(),
            message,
        };
        if !root.exists() {
            return Err(err(format!(
                "{} does not exist; check the path (relative paths are relative to the job file)",
                root.display()
            )));
        }
        if let Some(p) = &pattern {
            glob_matcher(p).map_err(err)?;
        }
        Ok(FileListing {
            input: input.to_string(),
            root,
            pattern,
            keys: PathKeys::None,
        })
    }

    /// Azure's meaning of a partition_format given with the full path, as in
    /// `path: dataset/*/*/*.wav` with `partition_format: dataset/{user}/{season}/{genre}.wav`:
    /// a leading `/` is dropped, then the format's leading literal segments that repeat the
    /// last segments of the folder listed (`dataset`), and the rest is matched against paths
    /// relative to that folder (`{user}/{season}/{genre}.wav`). The last segment is never
    /// dropped.
    fn relative_format(&self, format: &str) -> String {
        let format = format.trim_start_matches('/');
        let segments: Vec<&str> = format.split('/').collect();
        let literal = segments
            .iter()
            .take_while(|s| !s.contains(['{', '*', '?', '[']))
            .count();
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        let folders: Vec<String> = root
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let most = literal
            .min(segments.len().saturating_sub(1))
            .min(folders.len());
        for k in (1..=most).rev() {
            if segments[..k]
                .iter()
                .zip(&folders[folders.len() - k..])
                .all(|(a, b)| *a == b.as_str())
            {
                return segments[k..].join("/");
            }
        }
        format.to_string()
    }

    /// The error for a glob that matches no file.
    fn glob_matches_nothing(&self) -> PrsError {
        self.error(format!(
            "the glob matches no files under {}; check the pattern (the folders' depth, the \
             extension, upper and lower case; relative paths are relative to the job file), or \
             give the folder itself",
            self.root.display()
        ))
    }

    /// The error for a partition_format that matches none of the files listed.
    fn format_matches_nothing(
        &self,
        format: &str,
        relative: &str,
        listed: u64,
        example: &str,
    ) -> PrsError {
        let read_as = if relative == format.trim_start_matches('/') {
            String::new()
        } else {
            format!(" (read as {relative:?})")
        };
        self.error(format!(
            "partition_format {format:?}{read_as} matches none of the {listed} files listed, \
             e.g. {example:?}; it describes each file's path relative to {}: change it to \
             describe paths like that one (e.g. {{key}}/*.ext), or remove it",
            self.root.display()
        ))
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/")
    }

    /// The matching files, in sorted path order.
    fn files(&self) -> Result<impl Iterator<Item = Result<walkdir::DirEntry>> + '_> {
        let matcher = match &self.pattern {
            Some(p) => Some(glob_matcher(p).map_err(|message| self.error(message))?),
            None => None,
        };
        let walker = walkdir::WalkDir::new(&self.root)
            .follow_links(true)
            .sort_by_file_name();
        Ok(walker.into_iter().filter_map(move |entry| match entry {
            Err(e) => Some(Err(self.error(format!("listing failed: {e}")))),
            Ok(entry) => (entry.file_type().is_file()
                && matcher.as_ref().is_none_or(|m| m.is_match(entry.path())))
            .then_some(Ok(entry)),
        }))
    }

    /// Walks matching file paths (relative to the root) until `f` returns false.
    fn walk_paths(&self, mut f: impl FnMut(&str) -> bool) -> Result<()> {
        for entry in self.files()? {
            if !f(&self.relative(entry?.path())) {
                break;
            }
        }
        Ok(())
    }

    /// Walks the listing, calling `emit` with chunks of entries in sorted path order until it
    /// returns false. Without `metadata` no file is stat()ed (a third of the listing's time):
    /// `size` is then 0 and `modified` None.
    pub fn walk(&self, metadata: bool, mut emit: impl FnMut(Vec<FileEntry>) -> bool) -> Result<()> {
        let mut chunk = Vec::with_capacity(LISTING_BATCH);
        for entry in self.files()? {
            let entry = entry?;
            let path = entry.path();
            let Some(keys) = self.keys.values(&self.relative(path)) else {
                continue;
            };
            let meta = if metadata {
                Some(
                    entry
                        .metadata()
                        .map_err(|e| self.error(format!("{}: {e}", path.display())))?,
                )
            } else {
                None
            };
            chunk.push(FileEntry {
                path: path.to_string_lossy().into_owned(),
                size: meta.as_ref().map_or(0, |m| m.len()),
                modified: meta
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64),
                keys,
            });
            if chunk.len() == LISTING_BATCH
                && !emit(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(LISTING_BATCH),
                ))
            {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            emit(chunk);
        }
        Ok(())
    }

    fn error(&self, message: String) -> PrsError {
        PrsError::Input {
            input: self.input.clone(),
            location: self.location(),
            message,
        }
    }
}

/// Splits `a/b/*.txt` into the folder to walk (`a/b`) and the full glob, or returns the
/// path itself when it has no glob characters.
fn split_glob(location: &str) -> (PathBuf, Option<String>) {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(location) {
        return (PathBuf::from(location), None);
    }
    let mut root = PathBuf::new();
    for component in Path::new(location).components() {
        let text = component.as_os_str().to_string_lossy();
        if is_glob(&text) {
            break;
        }
        root.push(component);
    }
    if root.as_os_str().is_empty() {
        root.push(".");
    }
    (root, Some(location.to_string()))
}

impl FileSource for FileListing {
    fn location(&self) -> String {
        match &self.pattern {
            Some(p) => p.clone(),
            None => self.root.display().to_string(),
        }
    }

    fn key_names(&self) -> &[String] {
        self.keys.names()
    }

    /// Walks on a blocking thread, two chunks ahead of the consumer.
    fn entries(self: Arc<Self>, metadata: bool) -> BoxStream<'static, Result<Vec<FileEntry>>> {
        crate::input::blocking_items(move |tx| {
            let result = self.walk(metadata, |chunk| tx.blocking_send(Ok(chunk)).is_ok());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_globs() {
        assert_eq!(
            split_glob("a/b/*.txt"),
            (PathBuf::from("a/b"), Some("a/b/*.txt".into()))
        );
        assert_eq!(split_glob("a/b"), (PathBuf::from("a/b"), None));
        assert_eq!(
            split_glob("*.txt"),
            (PathBuf::from("."), Some("*.txt".into()))
        );
    }

    #[test]
    fn lists_sorted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.txt", "a.txt", "c.bin", "sub/z.txt", "sub/a.txt"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, name).unwrap();
        }
        let collect = |listing: FileListing| {
            let mut paths = Vec::new();
            listing
                .walk(true, |chunk| {
                    paths.extend(chunk.into_iter().map(|e| e.path));
                    true
                })
                .unwrap();
            paths
        };
        let root = dir.path().to_str().unwrap();
        // Sizes come from stat(), which is skipped when nobody needs them.
        let sizes = |metadata: bool| {
            let mut sizes = Vec::new();
            FileListing::new("f", root, None)
                .unwrap()
                .walk(metadata, |chunk| {
                    sizes.extend(chunk.iter().map(|e| (e.size, e.modified.is_some())));
                    true
                })
                .unwrap();
            sizes
        };
        assert_eq!(
            sizes(true),
            [5, 5, 5, 9, 9].map(|s| (s, true)),
            "a.txt b.txt c.bin sub/a.txt sub/z.txt"
        );
        assert_eq!(sizes(false), [(0, false); 5]);
        let all = collect(FileListing::new("f", root, None).unwrap());
        let rel: Vec<_> = all
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string())
            .collect();
        assert_eq!(
            rel,
            ["/a.txt", "/b.txt", "/c.bin", "/sub/a.txt", "/sub/z.txt"]
        );
        let txt = collect(FileListing::new("f", &format!("{root}/*.txt"), None).unwrap());
        assert_eq!(txt.len(), 2);
        assert!(FileListing::new("f", &format!("{root}/missing"), None).is_err());
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn partition_format_becomes_a_regex() {
        let (names, regex) = partition_format_regex("{country}/{year}/*.jpg").unwrap();
        assert_eq!(names, ["country", "year"]);
        let caps = regex.captures("fr/2024/a.jpg").unwrap();
        assert_eq!(&caps["country"], "fr");
        assert_eq!(&caps["year"], "2024");
        assert!(regex.captures("fr/2024/a.png").is_none());
        assert!(regex.captures("fr/a.jpg").is_none());
        let (names, regex) = partition_format_regex("/{Store}/{Brand}/").unwrap();
        assert_eq!(names, ["Store", "Brand"]);
        assert_eq!(
            &regex.captures("1000/dominicks/part/0.csv").unwrap()["Brand"],
            "dominicks"
        );
        assert!(regex.captures("1000/dominicks/").is_none());
        assert!(partition_format_regex("{bad key}/x").is_err());
        assert!(partition_format_regex("{open/x").is_err());
    }

    #[test]
    fn azure_formats_with_the_folder_in_front_are_read_relative_to_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data/dataset_partition_test");
        for name in ["alice/summer/rock.wav", "bob/winter/pop.wav"] {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "RIFF").unwrap();
        }
        let glob = format!("{}/*/*/*.wav", root.display());
        let listing = FileListing::plain("audio", &glob).unwrap();
        let relative = |format: &str| listing.relative_format(format);
        let want = "{user}/{season}/{genre}.wav";
        assert_eq!(
            relative("dataset_partition_test/{user}/{season}/{genre}.wav"),
            want
        );
        assert_eq!(
            relative("/dataset_partition_test/{user}/{season}/{genre}.wav"),
            want
        );
        assert_eq!(
            relative("data/dataset_partition_test/{user}/{season}/{genre}.wav"),
            want
        );
        assert_eq!(relative(want), want);
        // Literal segments that are not the folder's own stay; the file name always stays.
        assert_eq!(relative("other/{user}/x.wav"), "other/{user}/x.wav");
        assert_eq!(relative("dataset_partition_test"), "dataset_partition_test");

        let keys = |format: &str| {
            FileListing::new("audio", &glob, Some(format)).map(|l| l.keys.names().to_vec())
        };
        assert_eq!(
            keys("dataset_partition_test/{user}/{season}/{genre}.wav").unwrap(),
            ["user", "season", "genre"]
        );
        let e = keys("dataset_partition_test/{user}/{genre}.wav")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input \"audio\"")
                && e.contains("(read as \"{user}/{genre}.wav\")")
                && e.contains("none of the 2 files")
                && e.contains("e.g. \"alice/summer/rock.wav\""),
            "{e}"
        );
        let e = FileListing::new("audio", &format!("{}/*.mp3", root.display()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the glob matches no files"), "{e}");
        assert!(FileListing::require_files("audio", &glob).is_ok());
        assert!(
            FileListing::require_files("audio", &format!("{}/*/*.wav", root.display())).is_err()
        );
        // A folder is not a pattern: an empty one is not checked here.
        assert!(FileListing::require_files("audio", &d.path().display().to_string()).is_ok());
    }

    #[test]
    fn hive_folders_are_read() {
        assert_eq!(
            hive_pairs("country=fr/year=2024/img.jpg"),
            vec![
                ("country".to_string(), "fr".to_string()),
                ("year".to_string(), "2024".to_string())
            ]
        );
        assert!(hive_pairs("a/b/c.txt").is_empty());
    }
}
