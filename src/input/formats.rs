//! The one mapping from an input's [`InputFormat`] to how DataFusion reads it, shared by local
//! and object-storage tabular inputs.

use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

use crate::config::InputFormat;

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
/// `extension` (`""`: every file): Parquet, CSV with a header row, newline-delimited JSON.
/// `None` for a file dataset, which is not read as a table.
pub fn listing_options(
    ctx: &SessionContext,
    format: InputFormat,
    extension: &str,
) -> Option<ListingOptions> {
    let config = ctx.copied_config();
    let table_options = ctx.copied_table_options();
    Some(match format {
        InputFormat::Parquet => ParquetReadOptions::default()
            .file_extension(extension)
            .to_listing_options(&config, table_options),
        InputFormat::Csv => CsvReadOptions::new()
            .has_header(true)
            .file_extension(extension)
            .to_listing_options(&config, table_options),
        InputFormat::Json => JsonReadOptions::default()
            .file_extension(extension)
            .to_listing_options(&config, table_options),
        InputFormat::Files => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tabular_format_maps_to_listing_options() {
        let ctx = SessionContext::new();
        for format in [InputFormat::Parquet, InputFormat::Csv, InputFormat::Json] {
            let options = listing_options(&ctx, format, usual_extension(format)).unwrap();
            assert_eq!(options.file_extension, usual_extension(format));
            let other = listing_options(&ctx, format, ".txt").unwrap();
            assert_eq!(other.file_extension, ".txt");
        }
        assert!(listing_options(&ctx, InputFormat::Files, "").is_none());
        // CSV files have a header row.
        let csv = listing_options(&ctx, InputFormat::Csv, ".csv").unwrap();
        let format = csv
            .format
            .downcast_ref::<datafusion::datasource::file_format::csv::CsvFormat>()
            .unwrap();
        assert_eq!(format.has_header(), Some(true));
    }
}
