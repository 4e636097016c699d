//! Local tabular inputs whose rows carry columns taken from their file's path: the path
//! itself (`path_column:`, MLTable's `include_path_column`) and the fields of a
//! `partition_format` (`{Store}/{Brand}/*.csv`, MLTable's
//! `extract_columns_from_partition_format`). CSV inputs with `header: from_first_file` and
//! several files are read here too: the first file with its header row, the others as data.
//!
//! The files are listed by [`FileListing`], the listing of file datasets (same order, same
//! partition_format rules and checks), and read by DataFusion's own file format in one scan
//! in path order, each file's path values given as its partition values: DataFusion adds the
//! columns, and projections and limits reach the reader as for any listing table.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::TableType;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use object_store::ObjectMeta;

use crate::config::{CsvHeader, CsvOptions, InputFormat};
use crate::error::{PrsError, Result};
use crate::input::files::FileSource;
use crate::input::formats::{csv_schema, csv_without_header, listing_options, usual_extension};
use crate::input::local_files::FileListing;

/// What a [`PathColumnsTable`] reads: the input, its location (a local file, folder or glob)
/// and format, and the columns taken from the paths.
#[derive(Debug, Clone, Copy)]
pub struct PathColumnsInput<'a> {
    /// The input's name (for errors).
    pub name: &'a str,
    /// A local file, folder (its files with the format's usual extension) or glob.
    pub location: &'a str,
    /// Parquet, CSV or JSON.
    pub format: InputFormat,
    /// How CSV files are read.
    pub csv: &'a CsvOptions,
    /// The column holding each row's file path, if any.
    pub path_column: Option<&'a str>,
    /// Azure's partition format, whose fields become columns, if any.
    pub partition_format: Option<&'a str>,
}

/// A local tabular input whose rows carry columns from their file's path (see the module
/// documentation).
pub struct PathColumnsTable {
    /// The files in path order, each with its path columns' values.
    files: Vec<PartitionedFile>,
    /// How the first file is read, when it differs from the others (`header:
    /// from_first_file`: with its header row).
    first_format: Option<Arc<dyn FileFormat>>,
    /// How the files are read.
    format: Arc<dyn FileFormat>,
    /// The files' columns, then the path columns.
    table_schema: TableSchema,
}

impl fmt::Debug for PathColumnsTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PathColumnsTable({} files, {:?})",
            self.files.len(),
            self.table_schema.table_schema()
        )
    }
}

impl PathColumnsTable {
    /// Lists `input`'s files and infers their schema (from the first file alone for `header:
    /// from_first_file`). Errors name the input: nothing to read, a partition_format matching
    /// no file, a path column named like a column of the files.
    pub async fn try_new(ctx: &SessionContext, input: PathColumnsInput<'_>) -> Result<Self> {
        let input_error = |message: String| PrsError::Input {
            input: input.name.to_string(),
            location: input.location.to_string(),
            message,
        };
        let listing = FileListing::new(input.name, input.location, input.partition_format)?;
        let key_names: Vec<String> = match input.partition_format {
            Some(_) => listing.key_names().to_vec(),
            None => Vec::new(), // hive folders are not columns of a table
        };
        // A folder is read as its files with the format's usual extension, as a listing
        // table reads it; a single file or a glob says which files itself.
        let extension = Path::new(input.location)
            .is_dir()
            .then(|| usual_extension(input.format));
        let mut entries = Vec::new();
        listing.walk(true, |chunk| {
            entries.extend(
                chunk
                    .into_iter()
                    .filter(|e| extension.is_none_or(|ext| e.path.ends_with(ext))),
            );
            true
        })?;
        if entries.is_empty() {
            return Err(input_error(format!(
                "there are no {}files to read; check the path",
                extension.map(|e| format!("{e} ")).unwrap_or_default()
            )));
        }
        let mut files = Vec::with_capacity(entries.len());
        for entry in entries {
            let location = object_store::path::Path::from_absolute_path(&entry.path)
                .map_err(|e| input_error(format!("{}: {e}", entry.path)))?;
            let mut values = Vec::with_capacity(1 + key_names.len());
            if input.path_column.is_some() {
                values.push(ScalarValue::Utf8(Some(entry.path.clone())));
            }
            if !key_names.is_empty() {
                values.extend(entry.keys.into_iter().map(ScalarValue::Utf8));
            }
            let modified = entry
                .modified
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or_default();
            files.push(
                PartitionedFile::new_from_meta(ObjectMeta {
                    location,
                    last_modified: modified,
                    size: entry.size,
                    e_tag: None,
                    version: None,
                })
                .with_partition_values(values),
            );
        }

        let options = |csv: &CsvOptions| {
            listing_options(ctx, input.format, "", csv)
                .map(|o| o.format)
                .ok_or_else(|| input_error("a file dataset is not a table".into()))
        };
        let from_first_file =
            input.format == InputFormat::Csv && input.csv.header == CsvHeader::FromFirstFile;
        let (first_format, format) = if from_first_file {
            (
                Some(options(input.csv)?),
                options(&csv_without_header(input.csv))?,
            )
        } else {
            (None, options(input.csv)?)
        };
        let state = ctx.state();
        let store = state
            .runtime_env()
            .object_store(ObjectStoreUrl::local_filesystem())?;
        let objects: Vec<ObjectMeta> = files.iter().map(|f| f.object_meta.clone()).collect();
        let inferred = match &first_format {
            Some(first) => first.infer_schema(&state, &store, &objects[..1]).await,
            None => format.infer_schema(&state, &store, &objects).await,
        }
        .map_err(|e| input_error(format!("cannot read it as {:?}: {e}", input.format)))?;
        let file_schema = if input.format == InputFormat::Csv {
            csv_schema(inferred, input.csv)
        } else {
            inferred
        };
        let mut extra: Vec<FieldRef> = Vec::new();
        if let Some(column) = input.path_column {
            extra.push(Arc::new(Field::new(column, DataType::Utf8, false)));
        }
        for key in &key_names {
            extra.push(Arc::new(Field::new(key, DataType::Utf8, true)));
        }
        for (i, field) in extra.iter().enumerate() {
            let clash = file_schema.field_with_name(field.name()).is_ok()
                || extra[..i].iter().any(|f| f.name() == field.name());
            if clash {
                return Err(input_error(format!(
                    "the column {:?} (from the file paths: path_column or a partition_format \
                     field) is already a column of the files; give it another name",
                    field.name()
                )));
            }
        }
        Ok(PathColumnsTable {
            files,
            first_format,
            format,
            table_schema: TableSchema::builder(file_schema)
                .with_table_partition_cols(extra)
                .build(),
        })
    }

    /// One scan of `files` read as `format`.
    async fn scan_files(
        &self,
        state: &dyn Session,
        format: &Arc<dyn FileFormat>,
        files: &[PartitionedFile],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let source = format.file_source(self.table_schema.clone());
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_groups(vec![FileGroup::new(files.to_vec())])
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

#[async_trait]
impl TableProvider for PathColumnsTable {
    fn schema(&self) -> SchemaRef {
        self.table_schema.table_schema().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// One partition reading every file in path order; for `from_first_file`, two: the
    /// first file, then the others (the dispatcher reads partitions in order).
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let Some(first) = &self.first_format else {
            return self
                .scan_files(state, &self.format, &self.files, projection, limit)
                .await;
        };
        let (head, rest) = self.files.split_at(1);
        let mut plans = vec![
            self.scan_files(state, first, head, projection, limit)
                .await?,
        ];
        if !rest.is_empty() {
            plans.push(
                self.scan_files(state, &self.format, rest, projection, limit)
                    .await?,
            );
        }
        UnionExec::try_new(plans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::record_batch::RecordBatch;

    async fn rows(table: PathColumnsTable, sql: &str) -> Vec<RecordBatch> {
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    fn column(batches: &[RecordBatch], i: usize) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            let col = arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            let col = col.as_string::<i32>();
            for r in 0..col.len() {
                out.push(if col.is_null(r) {
                    "<null>".to_string()
                } else {
                    col.value(r).to_string()
                });
            }
        }
        out
    }

    #[tokio::test]
    async fn partition_fields_and_the_path_become_columns() {
        let d = tempfile::tempdir().unwrap();
        for (store, brand, n) in [
            ("1000", "dominicks", 1),
            ("1000", "tropicana", 2),
            ("2000", "dominicks", 3),
        ] {
            let dir = d.path().join(store).join(brand);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("data.csv"), format!("week;qty\n{n};{}\n", n * 10)).unwrap();
        }
        std::fs::write(d.path().join("README.md"), "not data").unwrap();
        let root = d.path().display().to_string();
        let csv = CsvOptions {
            delimiter: b';',
            ..CsvOptions::default()
        };
        let ctx = SessionContext::new();
        let table = PathColumnsTable::try_new(
            &ctx,
            PathColumnsInput {
                name: "sales",
                location: &root,
                format: InputFormat::Csv,
                csv: &csv,
                path_column: Some("Path"),
                partition_format: Some("{Store}/{Brand}/data.csv"),
            },
        )
        .await
        .unwrap();
        let names: Vec<String> = table
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["week", "qty", "Path", "Store", "Brand"]);
        let got = rows(table, "SELECT * FROM t ORDER BY week").await;
        assert_eq!(column(&got, 0), ["1", "2", "3"]);
        assert_eq!(column(&got, 3), ["1000", "1000", "2000"]);
        assert_eq!(column(&got, 4), ["dominicks", "tropicana", "dominicks"]);
        assert_eq!(
            column(&got, 2)[1],
            d.path()
                .join("1000/tropicana/data.csv")
                .display()
                .to_string()
        );
        // A path column named like a column of the files is refused, naming it.
        let e = PathColumnsTable::try_new(
            &ctx,
            PathColumnsInput {
                name: "sales",
                location: &root,
                format: InputFormat::Csv,
                csv: &csv,
                path_column: Some("week"),
                partition_format: None,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"week\"") && e.contains("another name"), "{e}");
    }

    #[tokio::test]
    async fn from_first_file_reads_the_other_files_first_lines_as_data() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.csv"), "id,name\n1,x\n").unwrap();
        std::fs::write(d.path().join("b.csv"), "2,y\n3,\n").unwrap();
        let root = d.path().display().to_string();
        let ctx = SessionContext::new();
        let csv = CsvOptions {
            header: CsvHeader::FromFirstFile,
            ..CsvOptions::default()
        };
        let table = PathColumnsTable::try_new(
            &ctx,
            PathColumnsInput {
                name: "t",
                location: &root,
                format: InputFormat::Csv,
                csv: &csv,
                path_column: None,
                partition_format: None,
            },
        )
        .await
        .unwrap();
        let got = rows(table, "SELECT * FROM t ORDER BY id").await;
        assert_eq!(column(&got, 0), ["1", "2", "3"]);
        assert_eq!(column(&got, 1), ["x", "y", "<null>"]);
    }
}
