//! The one mapping from an input's [`InputFormat`] to how DataFusion reads it, shared by local
//! and object-storage tabular inputs.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::ListingOptions;
use datafusion::error::Result as DFResult;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::logical_expr::{lit, Expr};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

use crate::config::{CsvHeader, CsvOptions, InputFormat};

/// The usual extension of `format`'s files: a folder given as a tabular input is read as its
/// files with this extension (a glob or a single file says which files itself). Empty for a
/// file dataset, which takes every file.
pub fn usual_extension(format: InputFormat) -> &'static str {
    match format {
        InputFormat::Parquet => ".parquet",
        InputFormat::Csv => ".csv",
        InputFormat::Json => ".json",
        InputFormat::Files => "",
    }
}

/// DataFusion's listing options for reading files of `format` whose names end with
/// `extension` (`""`: every file): Parquet, CSV (with `csv`'s delimiter, empty fields and a
/// header row unless `csv.header` is `no_header`; for `from_first_file` only the first file
/// may be read with these options, see [`csv_without_header`]), newline-delimited JSON.
/// `None` for a file dataset, which is not read as a table.
pub fn listing_options(
    ctx: &SessionContext,
    format: InputFormat,
    extension: &str,
    csv: &CsvOptions,
) -> Option<ListingOptions> {
    let config = ctx.copied_config();
    let table_options = ctx.copied_table_options();
    Some(match format {
        InputFormat::Parquet => ParquetReadOptions::default()
            .file_extension(extension)
            .to_listing_options(&config, table_options),
        InputFormat::Csv => CsvReadOptions::new()
            .has_header(csv.header != CsvHeader::NoHeader)
            .delimiter(csv.delimiter)
            .file_extension(extension)
            .to_listing_options(&config, table_options),
        InputFormat::Json => JsonReadOptions::default()
            .file_extension(extension)
            .to_listing_options(&config, table_options),
        InputFormat::Files => return None,
    })
}

/// The table to register for a tabular input read as `table`: with CSV's `empty_as_string`,
/// a view in which the text columns' empty fields (read as null: CSV has no other null) are
/// empty strings; otherwise `table` itself.
pub fn csv_table(
    ctx: &SessionContext,
    table: Arc<dyn TableProvider>,
    format: InputFormat,
    csv: &CsvOptions,
) -> DFResult<Arc<dyn TableProvider>> {
    if format != InputFormat::Csv || !csv.empty_as_string {
        return Ok(table);
    }
    let df = ctx.read_table(table)?;
    let columns: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let column = Expr::Column(Column::from_name(f.name()));
            if matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                coalesce(vec![column, lit("")]).alias(f.name())
            } else {
                column
            }
        })
        .collect();
    Ok(df.select(columns)?.into_view())
}

/// `csv` for the files after the first of a `header: from_first_file` input: every line is
/// data.
pub fn csv_without_header(csv: &CsvOptions) -> CsvOptions {
    CsvOptions {
        header: CsvHeader::NoHeader,
        ..*csv
    }
}

/// The table schema of CSV files read with `csv`: with `header: no_header` the columns are
/// named as Azure names them, `Column1`, `Column2`, ... (DataFusion's inference says
/// `column_1`); otherwise `inferred` as it is.
pub fn csv_schema(inferred: SchemaRef, csv: &CsvOptions) -> SchemaRef {
    if csv.header != CsvHeader::NoHeader {
        return inferred;
    }
    let fields: Vec<Field> = inferred
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_name(format!("Column{}", i + 1)))
        .collect();
    Arc::new(Schema::new_with_metadata(
        fields,
        inferred.metadata().clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tabular_format_maps_to_listing_options() {
        let ctx = SessionContext::new();
        for format in [InputFormat::Parquet, InputFormat::Csv, InputFormat::Json] {
            let csv = CsvOptions::default();
            let options = listing_options(&ctx, format, usual_extension(format), &csv).unwrap();
            assert_eq!(options.file_extension, usual_extension(format));
            let other = listing_options(&ctx, format, ".txt", &csv).unwrap();
            assert_eq!(other.file_extension, ".txt");
        }
        assert!(listing_options(&ctx, InputFormat::Files, "", &CsvOptions::default()).is_none());
        // CSV files have a header row.
        let csv = listing_options(&ctx, InputFormat::Csv, ".csv", &CsvOptions::default()).unwrap();
        let format = csv
            .format
            .downcast_ref::<datafusion::datasource::file_format::csv::CsvFormat>()
            .unwrap();
        assert_eq!(format.has_header(), Some(true));
    }
}
