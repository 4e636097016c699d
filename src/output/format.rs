//! The final file's formats: txt (PRS's text lines), CSV and Parquet, written from the
//! committed parts.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::writer::{make_encoder, EncoderOptions};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;

use crate::batch::MiniBatchId;
use crate::config::OutputFormat;
use crate::error::{PrsError, Result};
use crate::exec::conform;
use crate::worker::{ResultShape, RESULT_SHAPE_KEY};

/// Writes result batches in the output format.
pub(super) enum FinalWriter {
    Txt(BufWriter<File>),
    Csv {
        out: Option<BufWriter<File>>,
        writer: Option<arrow::csv::Writer<BufWriter<File>>>,
        schema: Option<SchemaRef>,
    },
    Parquet {
        out: Option<BufWriter<File>>,
        writer: Option<ArrowWriter<BufWriter<File>>>,
        schema: Option<SchemaRef>,
    },
}

impl FinalWriter {
    pub(super) fn new(format: OutputFormat, out: BufWriter<File>) -> Self {
        match format {
            OutputFormat::Txt => FinalWriter::Txt(out),
            OutputFormat::Csv => FinalWriter::Csv {
                out: Some(out),
                writer: None,
                schema: None,
            },
            OutputFormat::Parquet => FinalWriter::Parquet {
                out: Some(out),
                writer: None,
                schema: None,
            },
        }
    }

    pub(super) fn write(&mut self, batch: &RecordBatch, id: &MiniBatchId) -> Result<()> {
        match self {
            FinalWriter::Txt(out) => write_txt(out, batch).map_err(|e| PrsError::Output {
                path: "append_row file".into(),
                message: format!("writing the rows of mini batch {id}: {e}"),
            }),
            FinalWriter::Csv {
                out,
                writer,
                schema,
            } => {
                let target = schema
                    .get_or_insert_with(|| output_schema(batch.schema_ref()))
                    .clone();
                // Text: each value as its own type shows it (a column may be numbers in one
                // mini-batch and text in another); the columns are the first result's.
                let batch = nested_as_json(&same_columns(batch, &target, id)?).map_err(|e| {
                    PrsError::Output {
                        path: "append_row file".into(),
                        message: format!("writing the rows of mini batch {id}: {e}"),
                    }
                })?;
                if writer.is_none() {
                    let file = out.take().ok_or_else(closed)?;
                    *writer = Some(
                        arrow::csv::WriterBuilder::new()
                            .with_header(true)
                            .build(file),
                    );
                }
                writer.as_mut().ok_or_else(closed)?.write(&batch)?;
                Ok(())
            }
            FinalWriter::Parquet {
                out,
                writer,
                schema,
            } => {
                let target = schema
                    .get_or_insert_with(|| output_schema(batch.schema_ref()))
                    .clone();
                same_columns(batch, &target, id)?;
                let batch = conform(batch.clone(), &target, &id.to_string())?;
                if writer.is_none() {
                    let file = out.take().ok_or_else(closed)?;
                    let properties = parquet_properties(&target);
                    *writer = Some(
                        ArrowWriter::try_new(file, target, Some(properties))
                            .map_err(parquet_err)?,
                    );
                }
                writer
                    .as_mut()
                    .ok_or_else(closed)?
                    .write(&batch)
                    .map_err(parquet_err)?;
                Ok(())
            }
        }
    }

    pub(super) fn close(self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| PrsError::io(path, e);
        match self {
            FinalWriter::Txt(mut out) => out.flush().map_err(io),
            FinalWriter::Csv { out, writer, .. } => {
                if let Some(w) = writer {
                    w.into_inner().flush().map_err(io)?;
                } else if let Some(mut out) = out {
                    out.flush().map_err(io)?;
                }
                Ok(())
            }
            FinalWriter::Parquet { out, writer, .. } => {
                match writer {
                    Some(w) => {
                        w.close().map_err(parquet_err)?;
                    }
                    // No rows at all: still a valid (empty) Parquet file.
                    None => {
                        if let Some(out) = out {
                            ArrowWriter::try_new(out, Arc::new(Schema::empty()), None)
                                .and_then(|w| w.close().map(|_| ()))
                                .map_err(parquet_err)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Row groups of 128Ki rows: the writer buffers one row group, so this bounds its memory
/// whatever the size of the output. No dictionary encoding for floating-point and 64-bit
/// integer columns (scores, ids, timestamps): their values rarely repeat, so the writer would
/// hash every value into a dictionary only to fall back to plain encoding, and that hashing
/// was a tenth of the engine's CPU time in the 2M-row score job. Strings, booleans and small
/// integers (labels, classes) keep it.
pub(super) fn parquet_properties(schema: &Schema) -> parquet::file::properties::WriterProperties {
    let mut builder = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(128 * 1024));
    for field in schema.fields() {
        let unique_values = matches!(
            field.data_type(),
            DataType::Float16
                | DataType::Float32
                | DataType::Float64
                | DataType::Int64
                | DataType::UInt64
                | DataType::Timestamp(..)
                | DataType::Date64
        );
        if unique_values {
            builder = builder.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from(field.name().as_str()),
                false,
            );
        }
    }
    builder.build()
}

pub(super) fn closed() -> PrsError {
    PrsError::Output {
        path: "append_row file".into(),
        message: "writer already closed".into(),
    }
}

pub(super) fn parquet_err(e: parquet::errors::ParquetError) -> PrsError {
    PrsError::Output {
        path: "append_row file".into(),
        message: e.to_string(),
    }
}

/// The schema written to csv/parquet: the first result's columns, nullable, without our
/// metadata.
/// `batch`'s columns in `target`'s order (with their own types); an error when it has other
/// columns than the file's (set by the first result), which would otherwise be dropped or
/// made up.
fn same_columns(batch: &RecordBatch, target: &SchemaRef, id: &MiniBatchId) -> Result<RecordBatch> {
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let differ = || PrsError::Output {
        path: format!("mini batch {id}"),
        message: format!(
            "run() returned columns [{}], but the output file has columns [{}] (from the \
             first mini-batch written): return the same columns from every mini-batch",
            names(batch.schema_ref()),
            names(target)
        ),
    };
    if batch.num_columns() != target.fields().len() {
        return Err(differ());
    }
    let mut fields = Vec::with_capacity(target.fields().len());
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let (i, own) = batch
            .schema_ref()
            .column_with_name(field.name())
            .ok_or_else(differ)?;
        fields.push(own.clone().with_nullable(true));
        columns.push(batch.column(i).clone());
    }
    let schema = Schema::new_with_metadata(fields, target.metadata().clone());
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

pub(super) fn output_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let mut metadata = schema.metadata().clone();
    metadata.remove(RESULT_SHAPE_KEY);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// PRS's text format: list elements one per line (`str(x)`), table rows space-separated with
/// no header and CSV quoting, pre-formatted lines verbatim.
pub(super) fn write_txt(
    out: &mut BufWriter<File>,
    batch: &RecordBatch,
) -> std::result::Result<(), String> {
    match ResultShape::of(batch) {
        ResultShape::Lines => {
            let col = batch.column(0);
            match col.data_type() {
                DataType::Utf8 => write_strings(out, col.as_string::<i32>().iter()),
                DataType::LargeUtf8 => write_strings(out, col.as_string::<i64>().iter()),
                DataType::Utf8View => write_strings(out, col.as_string_view().iter()),
                other => Err(format!("text lines must be strings, got {other}")),
            }
        }
        ResultShape::List => {
            let col = batch.column(0);
            let options = FormatOptions::default().with_null("None");
            let formatter =
                ArrayFormatter::try_new(col.as_ref(), &options).map_err(|e| e.to_string())?;
            for i in 0..col.len() {
                writeln!(out, "{}", formatter.value(i)).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        ResultShape::Table => {
            let batch = nested_as_json(batch).map_err(|e| e.to_string())?;
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .with_delimiter(b' ')
                .build(&mut *out);
            writer.write(&batch).map_err(|e| e.to_string())
        }
    }
}

pub(super) fn write_strings<'a>(
    out: &mut BufWriter<File>,
    values: impl Iterator<Item = Option<&'a str>>,
) -> std::result::Result<(), String> {
    for v in values.flatten() {
        out.write_all(v.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Does `format` write `batch` through arrow's CSV writer (`csv`, and `txt` tables)?
pub(super) fn written_as_text(batch: &RecordBatch, format: OutputFormat) -> bool {
    match format {
        OutputFormat::Csv => true,
        OutputFormat::Txt => ResultShape::of(batch) == ResultShape::Table,
        OutputFormat::Parquet => false,
    }
}

/// Refuses a result with a nested column that cannot be written as JSON text (e.g. a union)
/// in a text format, naming the column and the mini-batch.
pub(super) fn check_text_columns(
    batch: &RecordBatch,
    format: OutputFormat,
    final_path: &Path,
    id: &MiniBatchId,
) -> Result<()> {
    if !written_as_text(batch, format) {
        return Ok(());
    }
    let options = json_options();
    for (field, column) in batch.schema_ref().fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            continue;
        }
        if let Err(e) = make_encoder(field, column.as_ref(), &options) {
            return Err(PrsError::Output {
                path: final_path.display().to_string(),
                message: format!(
                    "column {:?} of mini batch {id} has type {}, which cannot be written as text ({e}); \
                     use output_format: parquet, or return a column of a simpler type from run()",
                    field.name(),
                    field.data_type()
                ),
            });
        }
    }
    Ok(())
}

pub(super) fn json_options() -> EncoderOptions {
    EncoderOptions::default().with_explicit_nulls(true)
}

/// `batch` with every nested column (list, struct, map) replaced by a text column holding each
/// value as JSON (`[1,2]`, `{"a":1,"b":null}`); a null value stays null. Other columns are
/// kept as they are. CSV has no nested values, and JSON is what readers can parse back.
pub(super) fn nested_as_json(
    batch: &RecordBatch,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema_ref();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let options = json_options();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if !field.data_type().is_nested() {
            fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let mut encoder = make_encoder(field, column.as_ref(), &options)?;
        let mut text = StringBuilder::with_capacity(column.len(), column.len() * 16);
        let mut buffer = Vec::new();
        for i in 0..column.len() {
            if encoder.is_null(i) {
                text.append_null();
                continue;
            }
            buffer.clear();
            encoder.encode(i, &mut buffer);
            let value = std::str::from_utf8(&buffer).map_err(|e| {
                arrow::error::ArrowError::JsonError(format!("column {:?}: {e}", field.name()))
            })?;
            text.append_value(value);
        }
        fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
        columns.push(Arc::new(text.finish()) as ArrayRef);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn writer(format: OutputFormat, path: &Path) -> FinalWriter {
        FinalWriter::new(format, BufWriter::new(File::create(path).unwrap()))
    }

    #[test]
    fn csv_keeps_each_value_as_returned_and_refuses_other_columns() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.csv");
        let mut w = writer(OutputFormat::Csv, &path);
        let ints = batch(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "score",
                Arc::new(Int64Array::from(vec![10, 20])) as ArrayRef,
            ),
        ]);
        // Later: the same columns in another order, a score that is text.
        let text = batch(vec![
            (
                "score",
                Arc::new(StringArray::from(vec!["n/a"])) as ArrayRef,
            ),
            ("id", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
        ]);
        w.write(&ints, &MiniBatchId::new(0, 0)).unwrap();
        w.write(&text, &MiniBatchId::new(0, 1)).unwrap();
        let extra = batch(vec![
            ("id", Arc::new(Int64Array::from(vec![4])) as ArrayRef),
            ("score", Arc::new(Int64Array::from(vec![40])) as ArrayRef),
            ("note", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ]);
        let err = w
            .write(&extra, &MiniBatchId::new(0, 2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0-2") && err.contains("note") && err.contains("same columns"),
            "{err}"
        );
        w.close(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, "id,score\n1,10\n2,20\n3,n/a\n");
    }

    #[test]
    fn parquet_refuses_a_value_that_would_change() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.parquet");
        let mut w = writer(OutputFormat::Parquet, &path);
        let ints = batch(vec![(
            "score",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        )]);
        w.write(&ints, &MiniBatchId::new(0, 0)).unwrap();
        // 3.0 is an integer; 2.5 is not, and "n/a" is no number: errors, not nulls.
        let whole = batch(vec![(
            "score",
            Arc::new(Float64Array::from(vec![3.0])) as ArrayRef,
        )]);
        w.write(&whole, &MiniBatchId::new(0, 1)).unwrap();
        let half = batch(vec![(
            "score",
            Arc::new(Float64Array::from(vec![4.0, 2.5])) as ArrayRef,
        )]);
        let err = w
            .write(&half, &MiniBatchId::new(0, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("0-2") && err.contains("2.5"), "{err}");
        let text = batch(vec![(
            "score",
            Arc::new(StringArray::from(vec!["n/a"])) as ArrayRef,
        )]);
        let err = w
            .write(&text, &MiniBatchId::new(0, 3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("0-3") && err.contains("score"), "{err}");
    }
}
