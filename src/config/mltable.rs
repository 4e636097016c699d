//! Azure ML `MLTable` inputs (`format: mltable`, a folder holding an `MLTable` file, or the
//! file itself), turned into the inputs parallel-run reads: a path with its format, and a
//! `sql` input over it when columns are kept or dropped.
//!
//! Supported: `paths` (one `file`, `folder` or `pattern`, local or an object-storage URL), and
//! the transformations `read_delimited` (`delimiter`, `header: all_files_same_headers |
//! from_first_file | no_header`, `encoding: utf8` (or ascii), `empty_as_string`,
//! `include_path_column`, `support_multi_line`, `infer_column_types: true`), `read_parquet`
//! and `read_json_lines` (`include_path_column`), `keep_columns`, `drop_columns` and
//! `extract_columns_from_partition_format`. They become the options of a path input
//! (`delimiter`, `header`, `empty_as_string`, `path_column: Path`, `partition_format`), read by
//! the input layer. Anything else is an error that names it: never ignored.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::config::yaml::{scalar_text, show};
use crate::config::{CsvHeader, CsvOptions};
use crate::error::{PrsError, Result};

/// True for an `inputs:` entry with `format: mltable`.
pub(super) fn is_mltable(item: &Value) -> bool {
    item.get("format").and_then(Value::as_str) == Some("mltable")
}

/// An `inputs:` entry with `format: mltable` whose MLTable file is on object storage: it is
/// expanded once the file was fetched (`input::resolve_remote_mltables`, which has the
/// stores), into the inputs it describes, at `position` among the job's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMlTable {
    /// Where its inputs go in the job's `inputs` (before what is there now).
    pub position: usize,
    /// The entry's place in the job file, for messages (`inputs[2]`).
    pub field: String,
    /// The input's name.
    pub name: String,
    /// The MLTable folder (or the MLTable file itself) on object storage.
    pub url: String,
}

impl RemoteMlTable {
    /// The URL of the MLTable file.
    pub fn file_url(&self) -> String {
        if self.url.ends_with("/MLTable") {
            self.url.clone()
        } else {
            format!("{}/MLTable", self.url.trim_end_matches('/'))
        }
    }

    /// The inputs it describes, given the text of its MLTable file; relative `paths:` resolve
    /// against the file's folder on the store.
    pub fn expand(&self, text: &str) -> Result<Vec<Value>> {
        let file_url = self.file_url();
        let folder = format!("{}/", file_url.trim_end_matches("/MLTable"));
        entries(&self.name, text, Path::new(&file_url), &Base::Url(&folder))
    }
}

/// What an `inputs:` entry with `format: mltable` becomes.
pub(super) enum Expansion {
    /// The entries that replace it.
    Local(Vec<Value>),
    /// Its MLTable file is on object storage: expanded later.
    Remote(RemoteMlTable),
}

/// The entries that replace an `inputs:` entry with `format: mltable` at `field`, or the
/// remote MLTable to expand later (`position`: where its entries go).
pub(super) fn expand(
    field: &str,
    item: Value,
    base_dir: &Path,
    position: usize,
) -> Result<Expansion> {
    let name = item
        .get("name")
        .and_then(scalar_text)
        .ok_or_else(|| PrsError::missing(format!("{field}.name"), "a table name for this input"))?;
    let path = item
        .get("path")
        .and_then(scalar_text)
        .ok_or_else(|| PrsError::missing(format!("{field}.path"), "the MLTable folder or file"))?;
    if crate::config::is_object_url(&path) {
        crate::config::ObjectUrl::parse(&format!("{field}.path"), &path)?;
        return Ok(Expansion::Remote(RemoteMlTable {
            position,
            field: field.to_string(),
            name,
            url: path,
        }));
    }
    if crate::config::is_url(&path) {
        return Err(PrsError::config(
            format!("{field}.path"),
            &path,
            "is a URL of no supported store: give a local MLTable folder or an s3://, az:// or \
             abfss:// URL",
        ));
    }
    let location = crate::config::resolve_path(base_dir, &path);
    let file = if location.is_dir() {
        location.join("MLTable")
    } else {
        location.clone()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        PrsError::config(
            format!("{field}.path"),
            &path,
            format!("no MLTable file at {}: {e}", file.display()),
        )
    })?;
    let folder = file.parent().map(Path::to_path_buf).unwrap_or_default();
    entries(&name, &text, &file, &Base::Local(&folder)).map(Expansion::Local)
}

/// What relative `paths:` of an MLTable file resolve against: its folder, local or on a store.
enum Base<'a> {
    Local(&'a Path),
    Url(&'a str),
}

/// The inputs an MLTable file (`text`, read from `file`) describes for the input `name`.
fn entries(name: &str, text: &str, file: &Path, base: &Base) -> Result<Vec<Value>> {
    let table = parse(text, file)?;
    let data_path = match &table.path {
        DataPath::File(p) | DataPath::Folder(p) | DataPath::Pattern(p) => {
            data_location(file, base, p)?
        }
    };
    let mut entries = Vec::new();
    let raw_name = if table.columns.is_some() {
        format!("{name}__mltable")
    } else {
        name.to_string()
    };
    let mut raw = Mapping::new();
    raw.insert("name".into(), raw_name.as_str().into());
    raw.insert("path".into(), data_path.into());
    raw.insert("format".into(), table.format.into());
    for (key, value) in table.options {
        raw.insert(key.into(), value);
    }
    entries.push(Value::Mapping(raw));
    if let Some(columns) = table.columns {
        let mut sql = Mapping::new();
        sql.insert("name".into(), name.into());
        sql.insert("sql".into(), columns.query(&raw_name).into());
        entries.push(Value::Mapping(sql));
    }
    Ok(entries)
}

/// Where the data is, relative to the MLTable file's folder.
#[derive(Debug, PartialEq)]
enum DataPath {
    File(String),
    Folder(String),
    Pattern(String),
}

/// Columns kept or dropped.
#[derive(Debug, PartialEq)]
enum Columns {
    Keep(Vec<String>),
    Drop(Vec<String>),
}

impl Columns {
    fn query(&self, table: &str) -> String {
        let quote = |c: &String| format!("\"{}\"", c.replace('"', "\"\""));
        match self {
            Columns::Keep(cols) => format!(
                "SELECT {} FROM \"{table}\"",
                cols.iter().map(quote).collect::<Vec<_>>().join(", ")
            ),
            Columns::Drop(cols) => format!(
                "SELECT * EXCLUDE ({}) FROM \"{table}\"",
                cols.iter().map(quote).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[derive(Debug)]
struct Table {
    path: DataPath,
    format: &'static str,
    /// Options of the path input: `delimiter`, `header`, `empty_as_string`, `path_column`,
    /// `partition_format` (checked again, with the job file's rules, when the entry is read).
    options: Vec<(&'static str, Value)>,
    columns: Option<Columns>,
}

/// The column `include_path_column: true` adds, named as Azure names it.
const PATH_COLUMN: &str = "Path";

/// Where a `paths:` entry points: a path relative to the MLTable file's folder (local, or on
/// the store of a remote MLTable file), or an object-storage URL (`s3://`, `az://`,
/// `abfss://...`) kept as written.
fn data_location(file: &Path, base: &Base, path: &str) -> Result<String> {
    if !crate::config::is_object_url(path) {
        if crate::config::is_url(path) {
            return Ok(path.to_string()); // file://, resolved with the job file's rules
        }
        let folder = match base {
            Base::Local(folder) => folder,
            Base::Url(folder) => {
                if Path::new(path).is_absolute() {
                    return Err(error(
                        file,
                        "paths[0]",
                        path,
                        "an MLTable file on object storage names its data relative to its \
                         folder or by URL, not by a local path",
                    ));
                }
                return Ok(format!("{folder}{}", path.trim_start_matches("./")));
            }
        };
        let mut text = crate::config::resolve_path(folder, path)
            .display()
            .to_string();
        if path.ends_with('/') && !text.ends_with('/') {
            text.push('/');
        }
        return Ok(text);
    }
    if path.starts_with("azureml://") {
        return Err(error(
            file,
            "paths[0]",
            path,
            "azureml:// data paths are not resolved inside MLTable files; write the \
             datastore's own URL (s3://bucket/..., az://container/..., \
             abfss://container@account.dfs.core.windows.net/...) or a local path",
        ));
    }
    let field = format!("MLTable {} paths[0]", file.display());
    crate::config::ObjectUrl::parse(&field, path)?;
    Ok(path.to_string())
}

fn error(file: &Path, key: &str, value: impl std::fmt::Display, why: &str) -> PrsError {
    PrsError::config(format!("MLTable {} {key}", file.display()), value, why)
}

fn parse(text: &str, file: &Path) -> Result<Table> {
    let doc: Value = serde_yaml::from_str(text)
        .map_err(|e| error(file, "", "", &format!("is not valid YAML: {e}")))?;
    let Value::Mapping(mut doc) = doc else {
        return Err(error(
            file,
            "",
            "",
            "must be a mapping with paths: and transformations:",
        ));
    };
    let paths = match doc.remove("paths") {
        Some(Value::Sequence(paths)) => paths,
        other => {
            return Err(error(
                file,
                "paths",
                other.as_ref().map(show).unwrap_or_default(),
                "required: a list of {file: ...}, {folder: ...} or {pattern: ...}",
            ))
        }
    };
    if paths.len() != 1 {
        return Err(error(
            file,
            "paths",
            paths.len(),
            "one path is supported (a folder or a pattern covers many files)",
        ));
    }
    let path = match &paths[0] {
        Value::Mapping(m) if m.len() == 1 => {
            let (k, v) = m
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), scalar_text(v)))
                .unwrap_or((None, None));
            match (k, v) {
                (Some("file"), Some(p)) => DataPath::File(p),
                (Some("folder"), Some(p)) => DataPath::Folder(p),
                (Some("pattern"), Some(p)) => DataPath::Pattern(p),
                _ => {
                    return Err(error(
                        file,
                        "paths[0]",
                        show(&paths[0]),
                        "must be {file: P}, {folder: P} or {pattern: P}",
                    ))
                }
            }
        }
        other => {
            return Err(error(
                file,
                "paths[0]",
                show(other),
                "must be {file: P}, {folder: P} or {pattern: P}",
            ))
        }
    };
    let mut format = None;
    let mut options = Vec::new();
    let mut columns = None;
    let transformations = match doc.remove("transformations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            return Err(error(
                file,
                "transformations",
                show(&other),
                "must be a list",
            ))
        }
    };
    for item in transformations {
        let (name, item_options) = match &item {
            Value::Mapping(m) if m.len() == 1 => match m.iter().next() {
                Some((Value::String(k), v)) => (k.clone(), v.clone()),
                _ => {
                    return Err(error(
                        file,
                        "transformations",
                        show(&item),
                        "each entry is {NAME: options}",
                    ))
                }
            },
            Value::String(k) => (k.clone(), Value::Null),
            other => {
                return Err(error(
                    file,
                    "transformations",
                    show(other),
                    "each entry is {NAME: options}",
                ))
            }
        };
        let read = match name.as_str() {
            "read_delimited" => Some("csv"),
            "read_parquet" => Some("parquet"),
            "read_json_lines" => Some("json"),
            _ => None,
        };
        if let Some(read) = read {
            if format.is_some() {
                return Err(error(
                    file,
                    &name,
                    "",
                    "one read_delimited, read_parquet or read_json_lines per MLTable",
                ));
            }
            options.extend(read_options(file, &name, &item_options)?);
            format = Some(read);
            continue;
        }
        match name.as_str() {
            "keep_columns" | "drop_columns" => {
                let list = column_list(file, &name, &item_options)?;
                if columns.is_some() {
                    return Err(error(
                        file,
                        &name,
                        "",
                        "use one keep_columns or drop_columns",
                    ));
                }
                columns = Some(if name == "keep_columns" {
                    Columns::Keep(list)
                } else {
                    Columns::Drop(list)
                });
            }
            "extract_columns_from_partition_format" => {
                if options.iter().any(|(k, _)| *k == "partition_format") {
                    return Err(error(file, &name, "", "give it once"));
                }
                let pattern = partition_format(file, &item_options)?;
                options.push(("partition_format", pattern.into()));
            }
            other => {
                return Err(error(
                    file,
                    "transformations",
                    other,
                    "is not supported (supported: read_delimited, read_parquet, read_json_lines, \
                     keep_columns, drop_columns, extract_columns_from_partition_format)",
                ))
            }
        }
    }
    if let Some((key, _)) = doc.into_iter().find(|(k, _)| k.as_str() != Some("type")) {
        return Err(error(
            file,
            &show(&key),
            "",
            "is not an MLTable key parallel-run reads",
        ));
    }
    let format = format.ok_or_else(|| {
        error(
            file,
            "transformations",
            "",
            "needs read_delimited, read_parquet or read_json_lines",
        )
    })?;
    Ok(Table {
        path,
        format,
        options,
        columns,
    })
}

fn no_options(file: &Path, name: &str, options: &Value) -> Result<()> {
    match options {
        Value::Null => Ok(()),
        Value::Mapping(m) if m.is_empty() => Ok(()),
        other => Err(error(file, name, show(other), "options are not supported")),
    }
}

/// The path-input options of a `read_delimited`, `read_parquet` or `read_json_lines`
/// transformation named `name`: every option is mapped or refused, never ignored.
fn read_options(file: &Path, name: &str, options: &Value) -> Result<Vec<(&'static str, Value)>> {
    let Value::Mapping(options) = options else {
        no_options(file, name, options)?;
        return Ok(Vec::new());
    };
    let delimited = name == "read_delimited";
    let mut out = Vec::new();
    for (key, value) in options {
        let key = key.as_str().unwrap_or_default();
        let text = scalar_text(value).unwrap_or_else(|| show(value));
        let field = format!("{name}.{key}");
        let refuse = |why: &str| Err(error(file, &field, &text, why));
        match key {
            "delimiter" if delimited => match CsvOptions::parse_delimiter(&text) {
                Some(_) => out.push(("delimiter", text.as_str().into())),
                None => return refuse("must be one ASCII character, e.g. ',', ';', '|' or '\\t'"),
            },
            "header" if delimited => match CsvHeader::from_name(&text) {
                Some(_) => out.push(("header", text.as_str().into())),
                None => {
                    return refuse(
                        "must be all_files_same_headers, from_first_file or no_header \
                         (all_files_different_headers is not supported: give each header's \
                         files their own MLTable)",
                    )
                }
            },
            "encoding" => {
                if !matches!(
                    text.to_ascii_lowercase().as_str(),
                    "utf8" | "utf-8" | "ascii"
                ) {
                    return refuse(
                        "is not supported: files are read as utf8 (ascii is a part of it); \
                         convert them (e.g. iconv -f latin1 -t utf-8) and write encoding: utf8",
                    );
                }
            }
            "empty_as_string" if delimited => match value {
                Value::Bool(b) => out.push(("empty_as_string", (*b).into())),
                _ => return refuse("must be true or false"),
            },
            "include_path_column" => match value {
                Value::Bool(true) => out.push(("path_column", PATH_COLUMN.into())),
                Value::Bool(false) => {}
                _ => return refuse("must be true or false"),
            },
            // Quoted fields may always hold line breaks here: both values read the same.
            "support_multi_line" if delimited => {
                if !matches!(value, Value::Bool(_)) {
                    return refuse("must be true or false");
                }
            }
            "infer_column_types" if delimited => {
                if !matches!(value, Value::Bool(true)) {
                    return refuse(
                        "only true is supported (column types are inferred from the data); \
                         remove it, or cast the columns in your entry script",
                    );
                }
            }
            _ => {
                return refuse(if delimited {
                    "is not supported (supported: delimiter, header, encoding, \
                     empty_as_string, include_path_column, support_multi_line, \
                     infer_column_types: true)"
                } else {
                    "is not supported (supported: include_path_column, encoding)"
                })
            }
        }
    }
    Ok(out)
}

/// The pattern of `extract_columns_from_partition_format: {partition_format: P}` (or `: P`).
fn partition_format(file: &Path, options: &Value) -> Result<String> {
    let name = "extract_columns_from_partition_format";
    let pattern = match options {
        Value::Mapping(m) => {
            if let Some((key, _)) = m
                .iter()
                .find(|(k, _)| k.as_str() != Some("partition_format"))
            {
                return Err(error(
                    file,
                    &format!("{name}.{}", show(key)),
                    "",
                    "is not supported (supported: partition_format)",
                ));
            }
            m.get("partition_format").and_then(scalar_text)
        }
        other => scalar_text(other),
    };
    pattern.filter(|p| p.contains('{')).ok_or_else(|| {
        error(
            file,
            name,
            show(options),
            "needs partition_format: a path pattern with {column} fields, e.g. \
             \"{Store}/{Brand}/*.csv\"",
        )
    })
}

fn column_list(file: &Path, name: &str, options: &Value) -> Result<Vec<String>> {
    let list = match options {
        Value::Sequence(items) => items.iter().filter_map(scalar_text).collect::<Vec<_>>(),
        Value::Mapping(m) => match m.get("columns") {
            Some(Value::Sequence(items)) => items.iter().filter_map(scalar_text).collect(),
            Some(other) => scalar_text(other).into_iter().collect(),
            None => Vec::new(),
        },
        other => scalar_text(other).into_iter().collect(),
    };
    if list.is_empty() {
        return Err(error(
            file,
            name,
            show(options),
            "needs a list of column names",
        ));
    }
    Ok(list)
}

/// The MLTable folder of a path that holds an `MLTable` file, for inputs given without
/// `format:` (a folder holding an MLTable file is an MLTable input).
pub(super) fn holds_mltable(base_dir: &Path, path: &str) -> Option<PathBuf> {
    if crate::config::is_url(path) {
        return None;
    }
    let location = crate::config::resolve_path(base_dir, path);
    location.join("MLTable").is_file().then_some(location)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &Path, text: &str) -> Vec<Value> {
        std::fs::write(dir.join("MLTable"), text).unwrap();
        let item: Value = serde_yaml::from_str(&format!(
            "{{name: iris, path: {}, format: mltable}}",
            dir.display()
        ))
        .unwrap();
        match expand("inputs[0]", item, Path::new("/"), 0).unwrap() {
            Expansion::Local(entries) => entries,
            Expansion::Remote(r) => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_remote_mltable_resolves_its_paths_on_its_store() {
        let item: Value =
            serde_yaml::from_str("{name: t, path: 's3://b/tables/sales/', format: mltable}")
                .unwrap();
        let Expansion::Remote(remote) = expand("inputs[1]", item, Path::new("/"), 1).unwrap()
        else {
            panic!("remote")
        };
        assert_eq!(remote.file_url(), "s3://b/tables/sales/MLTable");
        let entries = remote
            .expand("paths:\n  - folder: ./data/\ntransformations:\n  - read_parquet\n")
            .unwrap();
        assert_eq!(
            entries[0]["path"].as_str(),
            Some("s3://b/tables/sales/data/")
        );
        let e = remote
            .expand("paths:\n  - file: /etc/data.csv\ntransformations:\n  - read_delimited\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not by a local path"), "{e}");
    }

    #[test]
    fn delimited_and_parquet_tables_become_path_inputs() {
        let d = tempfile::tempdir().unwrap();
        let got = table(
            d.path(),
            "paths:\n  - file: ./iris.csv\ntransformations:\n  - read_delimited:\n      delimiter: ','\n      encoding: 'ascii'\n      header: all_files_same_headers\n",
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["name"], "iris");
        assert_eq!(got[0]["format"], "csv");
        assert_eq!(
            got[0]["path"],
            d.path().join("iris.csv").display().to_string()
        );
        let got = table(
            d.path(),
            "paths:\n  - pattern: ./data/*.parquet\ntransformations:\n  - read_parquet\n  - drop_columns: [Revenue, Advert]\n",
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["name"], "iris__mltable");
        assert_eq!(got[1]["name"], "iris");
        assert_eq!(
            got[1]["sql"],
            "SELECT * EXCLUDE (\"Revenue\", \"Advert\") FROM \"iris__mltable\""
        );
    }

    #[test]
    fn read_options_become_the_path_inputs_options() {
        let d = tempfile::tempdir().unwrap();
        let got = table(
            d.path(),
            "paths:\n  - folder: ./sales/\ntransformations:\n  - read_delimited:\n      delimiter: ';'\n      header: no_header\n      encoding: utf8\n      empty_as_string: true\n      include_path_column: true\n      support_multi_line: false\n      infer_column_types: true\n  - extract_columns_from_partition_format:\n      partition_format: '{Store}/{Brand}/*.csv'\n",
        );
        assert_eq!(got.len(), 1);
        let input = &got[0];
        assert_eq!(input["format"], "csv");
        assert_eq!(
            input["path"],
            format!("{}/", d.path().join("sales").display())
        );
        assert_eq!(input["delimiter"], ";");
        assert_eq!(input["header"], "no_header");
        assert_eq!(input["empty_as_string"], true);
        assert_eq!(input["path_column"], "Path");
        assert_eq!(input["partition_format"], "{Store}/{Brand}/*.csv");
        // A tab, written as YAML's escape or as the two characters Azure's samples use.
        for written in ["\"\\t\"", "'\\t'"] {
            let got = table(
                d.path(),
                &format!("paths:\n  - file: a.tsv\ntransformations:\n  - read_delimited: {{delimiter: {written}}}\n"),
            );
            assert_eq!(
                CsvOptions::parse_delimiter(got[0]["delimiter"].as_str().unwrap()),
                Some(b'\t'),
                "{written}"
            );
        }
        // Parquet and JSON lines take include_path_column; false adds nothing.
        let got = table(
            d.path(),
            "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet: {include_path_column: true}\n",
        );
        assert_eq!(got[0]["path_column"], "Path");
        let got = table(
            d.path(),
            "paths:\n  - file: a.jsonl\ntransformations:\n  - read_json_lines: {include_path_column: false, encoding: utf8}\n",
        );
        assert!(got[0].get("path_column").is_none());
        // Data on object storage keeps its URL.
        let got = table(
            d.path(),
            "paths:\n  - folder: s3://bucket/sales/\ntransformations:\n  - read_parquet\n",
        );
        assert_eq!(got[0]["path"], "s3://bucket/sales/");
    }

    #[test]
    fn anything_else_is_named_in_an_error() {
        let d = tempfile::tempdir().unwrap();
        let item: Value = serde_yaml::from_str(&format!(
            "{{name: t, path: {}, format: mltable}}",
            d.path().display()
        ))
        .unwrap();
        let error_of = |text: &str| {
            std::fs::write(d.path().join("MLTable"), text).unwrap();
            match expand("inputs[0]", item.clone(), Path::new("/"), 0) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{text} was accepted"),
            }
        };
        let delimited = |options: &str| {
            error_of(&format!(
                "paths:\n  - file: ./a.csv\ntransformations:\n  - read_delimited: {{{options}}}\n"
            ))
        };
        for (options, named) in [
            ("delimiter: '::'", "read_delimited.delimiter"),
            ("encoding: latin1", "read_delimited.encoding"),
            (
                "header: all_files_different_headers",
                "read_delimited.header",
            ),
            ("empty_as_string: maybe", "read_delimited.empty_as_string"),
            (
                "include_path_column: 1",
                "read_delimited.include_path_column",
            ),
            (
                "infer_column_types: false",
                "read_delimited.infer_column_types",
            ),
            ("quoting: none", "read_delimited.quoting"),
        ] {
            let e = delimited(options);
            let value = options.split(": ").nth(1).unwrap().trim_matches('\'');
            assert!(e.contains(named) && e.contains(value), "{options}: {e}");
        }
        let e = error_of(
            "paths:\n  - file: ./a.csv\ntransformations:\n  - read_delimited\n  - take: 10\n",
        );
        assert!(e.contains("take") && e.contains("not supported"), "{e}");
        let e = error_of(
            "paths:\n  - file: ./a.parquet\ntransformations:\n  - read_parquet: {delimiter: ';'}\n",
        );
        assert!(e.contains("read_parquet.delimiter"), "{e}");
        let e = error_of(
            "paths:\n  - folder: ./x\ntransformations:\n  - read_parquet\n  - extract_columns_from_partition_format: {partition_format: 'no/fields'}\n",
        );
        assert!(
            e.contains("extract_columns_from_partition_format") && e.contains("{column}"),
            "{e}"
        );
        let e = error_of(
            "paths:\n  - folder: azureml://datastores/workspaceblobstore/paths/sales/\ntransformations:\n  - read_parquet\n",
        );
        assert!(e.contains("paths[0]") && e.contains("azureml://"), "{e}");
        let e = error_of(
            "paths:\n  - folder: wasbs://c@acct.blob.core.windows.net/x/\ntransformations:\n  - read_parquet\n",
        );
        assert!(e.contains("paths[0]") && e.contains("wasbs://"), "{e}");
    }
}
