//! Azure ML `MLTable` inputs (`format: mltable`, a folder holding an `MLTable` file, or the
//! file itself), turned into the inputs parallel-run reads: a path with its format, and a
//! `sql` input over it when columns are kept or dropped.
//!
//! Supported: `paths` (one `file`, `folder` or `pattern`), and the transformations
//! `read_delimited` (delimiter `,`, `header: all_files_same_headers | from_first_file` with a
//! single file, encoding utf8/ascii, `empty_as_string`), `read_parquet`, `read_json_lines`,
//! `keep_columns` and `drop_columns`. Anything else is an error that names it: never ignored.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::config::yaml::{scalar_text, show};
use crate::error::{PrsError, Result};

/// True for an `inputs:` entry with `format: mltable`.
pub(super) fn is_mltable(item: &Value) -> bool {
    item.get("format").and_then(Value::as_str) == Some("mltable")
}

/// The entries that replace an `inputs:` entry with `format: mltable` at `field`.
pub(super) fn expand(field: &str, item: Value, base_dir: &Path) -> Result<Vec<Value>> {
    let name = item
        .get("name")
        .and_then(scalar_text)
        .ok_or_else(|| PrsError::missing(format!("{field}.name"), "a table name for this input"))?;
    let path = item
        .get("path")
        .and_then(scalar_text)
        .ok_or_else(|| PrsError::missing(format!("{field}.path"), "the MLTable folder or file"))?;
    if crate::config::is_url(&path) {
        return Err(PrsError::config(
            format!("{field}.path"),
            &path,
            "MLTable files on object storage are not supported yet: give the data's own URL with format: csv | parquet | json",
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
    let table = parse(&text, &file)?;
    let data_path = match &table.path {
        DataPath::File(p) | DataPath::Folder(p) | DataPath::Pattern(p) => {
            crate::config::resolve_path(&folder, p)
        }
    };
    let mut entries = Vec::new();
    let raw_name = if table.columns.is_some() {
        format!("{name}__mltable")
    } else {
        name.clone()
    };
    let mut raw = Mapping::new();
    raw.insert("name".into(), raw_name.as_str().into());
    raw.insert("path".into(), data_path.display().to_string().into());
    raw.insert("format".into(), table.format.into());
    entries.push(Value::Mapping(raw));
    if let Some(columns) = table.columns {
        let mut sql = Mapping::new();
        sql.insert("name".into(), name.as_str().into());
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
    columns: Option<Columns>,
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
        let (name, options) = match &item {
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
        match name.as_str() {
            "read_delimited" => {
                check_delimited(file, &options, &path)?;
                format = Some("csv");
            }
            "read_parquet" => {
                no_options(file, &name, &options)?;
                format = Some("parquet");
            }
            "read_json_lines" => {
                check_json(file, &options)?;
                format = Some("json");
            }
            "keep_columns" | "drop_columns" => {
                let list = column_list(file, &name, &options)?;
                if columns.is_some() {
                    return Err(error(file, &name, "", "use one keep_columns or drop_columns"));
                }
                columns = Some(if name == "keep_columns" {
                    Columns::Keep(list)
                } else {
                    Columns::Drop(list)
                });
            }
            other => {
                return Err(error(
                    file,
                    "transformations",
                    other,
                    "is not supported (supported: read_delimited, read_parquet, read_json_lines, keep_columns, drop_columns)",
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

fn check_delimited(file: &Path, options: &Value, path: &DataPath) -> Result<()> {
    let Value::Mapping(options) = options else {
        return no_options(file, "read_delimited", options);
    };
    for (key, value) in options {
        let key = key.as_str().unwrap_or_default();
        let text = scalar_text(value).unwrap_or_default();
        let ok = match key {
            "delimiter" => text == ",",
            "encoding" => matches!(
                text.to_ascii_lowercase().as_str(),
                "utf8" | "utf-8" | "ascii"
            ),
            "header" => match text.as_str() {
                "all_files_same_headers" => true,
                "from_first_file" => matches!(path, DataPath::File(_)),
                _ => false,
            },
            "empty_as_string" | "support_multi_line" => matches!(value, Value::Bool(_)),
            "infer_column_types" => true,
            _ => false,
        };
        if !ok {
            return Err(error(
                file,
                &format!("read_delimited.{key}"),
                &text,
                "is not supported yet (supported: delimiter ',', header all_files_same_headers \
                 (or from_first_file with one file), encoding utf8/ascii)",
            ));
        }
    }
    Ok(())
}

fn check_json(file: &Path, options: &Value) -> Result<()> {
    let Value::Mapping(options) = options else {
        return no_options(file, "read_json_lines", options);
    };
    for (key, value) in options {
        let key = key.as_str().unwrap_or_default();
        let text = scalar_text(value).unwrap_or_default();
        if !(key == "encoding"
            && matches!(
                text.to_ascii_lowercase().as_str(),
                "utf8" | "utf-8" | "ascii"
            ))
        {
            return Err(error(
                file,
                &format!("read_json_lines.{key}"),
                &text,
                "is not supported yet",
            ));
        }
    }
    Ok(())
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
        expand("inputs[0]", item, Path::new("/")).unwrap()
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
    fn anything_else_is_named_in_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("MLTable"),
            "paths:\n  - file: ./a.csv\ntransformations:\n  - read_delimited: {delimiter: ';'}\n",
        )
        .unwrap();
        let item: Value = serde_yaml::from_str(&format!(
            "{{name: t, path: {}, format: mltable}}",
            d.path().display()
        ))
        .unwrap();
        let e = expand("inputs[0]", item.clone(), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("read_delimited.delimiter") && e.contains(';'),
            "{e}"
        );
        std::fs::write(
            d.path().join("MLTable"),
            "paths:\n  - file: ./a.csv\ntransformations:\n  - read_delimited\n  - take: 10\n",
        )
        .unwrap();
        let e = expand("inputs[0]", item, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("take") && e.contains("not supported"), "{e}");
    }
}
