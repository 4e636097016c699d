//! The wire format between the engine and a Python worker (see the module documentation of
//! [`crate::worker::python`] for the messages).

use std::sync::Arc;

use arrow::array::StringArray;
use arrow::buffer::{Buffer, MutableBuffer};
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::batch::{ItemKind, MiniBatch, PartitionKeyValue};
use crate::config::OutputFormat;
use crate::worker::{MiniBatchContext, ResultShape, RESULT_SHAPE_KEY};

/// Bytes before the header: u32 LE header length, u64 LE payload length.
pub(crate) const PREFIX_LEN: usize = 12;

/// Sanity limit for a JSON header (tracebacks included).
const MAX_HEADER_LEN: usize = 64 << 20;

/// The RUN header.
#[derive(Serialize)]
struct RunHeader<'a> {
    #[serde(rename = "type")]
    tag: &'static str,
    id: String,
    minibatch_index: u64,
    attempt: u32,
    input_name: &'a str,
    partition_key_value: &'a PartitionKeyValue,
    kind: &'static str,
    keep_results: bool,
    output_format: &'static str,
    /// A file dataset's paths travel in the header (no payload): the worker then needs no
    /// pyarrow, whose import costs 0.1 to 0.25 s per worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    paths: Option<Vec<&'a str>>,
}

/// What failed before a worker was ready (`stage` of `INIT_ERROR`; its text is the wire's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum InitStage {
    /// Importing the packages the job needs (pyarrow, pandas).
    Packages,
    /// Importing the entry script.
    Import,
    /// The script's init().
    Init,
}

impl std::fmt::Display for InitStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InitStage::Packages => "packages",
            InitStage::Import => "import",
            InitStage::Init => "init",
        })
    }
}

/// What went wrong in one RUN (`kind` of `ERROR`; its text is the wire's). Any other text is
/// read as [`ErrorKind::Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// run() raised.
    Exception,
    /// run() returned something that cannot be used.
    BadResult,
    /// The worker could not follow the protocol.
    #[serde(other)]
    Protocol,
}

/// A message from the worker.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum Reply {
    /// init() returned: the worker takes mini-batches.
    #[serde(rename = "READY")]
    Ready {
        /// Worker process id.
        #[serde(default)]
        pid: u32,
        /// Python version.
        #[serde(default)]
        python: String,
    },
    /// Importing packages or the script, or init(), failed; the worker exits.
    #[serde(rename = "INIT_ERROR")]
    InitError {
        /// What failed.
        stage: InitStage,
        /// One line (for `packages`: what to do).
        message: String,
        /// The traceback, when there is one.
        #[serde(default)]
        traceback: Option<String>,
        /// Every try would fail the same way (missing packages, a SyntaxError or ImportError
        /// at import, no run()): not retried.
        #[serde(default)]
        fatal: bool,
    },
    /// The mini-batch is read and decoded; run() is being called now (its timeout starts).
    #[serde(rename = "STARTED")]
    Started,
    /// run() returned; its result is being converted (sent only when results are kept).
    #[serde(rename = "RAN")]
    Ran,
    /// run() returned `returned` elements; the payload holds them when results are kept.
    #[serde(rename = "RESULT")]
    Result {
        /// Number of elements/rows returned.
        returned: u64,
        /// `table`, `list` or `lines` (absent when results are not kept).
        #[serde(default)]
        shape: Option<String>,
    },
    /// run() raised (`kind` = `exception`) or returned something unusable (`bad_result`).
    #[serde(rename = "ERROR")]
    Error {
        /// What went wrong.
        kind: ErrorKind,
        /// One line, e.g. `ValueError: bad id 7`.
        message: String,
        /// The traceback, when there is one.
        #[serde(default)]
        traceback: Option<String>,
    },
    /// shutdown() ran (or there is none); the worker exits.
    #[serde(rename = "SHUTDOWN_DONE")]
    ShutdownDone {
        /// One line when shutdown() raised.
        #[serde(default)]
        error: Option<String>,
        /// Its traceback.
        #[serde(default)]
        traceback: Option<String>,
    },
}

impl Reply {
    /// The message type, for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Reply::Ready { .. } => "READY",
            Reply::InitError { .. } => "INIT_ERROR",
            Reply::Started => "STARTED",
            Reply::Ran => "RAN",
            Reply::Result { .. } => "RESULT",
            Reply::Error { .. } => "ERROR",
            Reply::ShutdownDone { .. } => "SHUTDOWN_DONE",
        }
    }
}

/// Starts a frame: room for the prefix, then the header.
fn frame_with_header(header: &[u8], payload_hint: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(PREFIX_LEN + header.len() + payload_hint);
    frame.extend_from_slice(&[0u8; PREFIX_LEN]);
    frame.extend_from_slice(header);
    frame
}

/// Fills in the prefix once the payload has been appended.
fn finish_frame(frame: &mut [u8], header_len: usize) -> Result<(), ArrowError> {
    let payload_len = frame.len() - PREFIX_LEN - header_len;
    let header_len = u32::try_from(header_len)
        .map_err(|_| ArrowError::InvalidArgumentError("frame header too large".into()))?;
    frame[..4].copy_from_slice(&header_len.to_le_bytes());
    frame[4..PREFIX_LEN].copy_from_slice(&(payload_len as u64).to_le_bytes());
    Ok(())
}

/// Encodes a RUN frame: header plus the mini-batch as one Arrow IPC stream, in one buffer so
/// it goes out with as few writes as the pipe allows.
pub(crate) fn encode_run(
    mini_batch: &MiniBatch,
    context: &MiniBatchContext,
    keep_results: bool,
    output_format: OutputFormat,
) -> Result<Vec<u8>, ArrowError> {
    let paths = match mini_batch.kind {
        ItemKind::Files => Some(file_paths(&mini_batch.data)?),
        ItemKind::Rows => None,
    };
    let header = RunHeader {
        tag: "RUN",
        id: mini_batch.id.to_string(),
        minibatch_index: context.minibatch_index,
        attempt: context.attempt,
        input_name: &context.input_name,
        partition_key_value: &mini_batch.partition_key_value,
        kind: match mini_batch.kind {
            ItemKind::Rows => "rows",
            ItemKind::Files => "files",
        },
        keep_results,
        output_format: output_format.as_str(),
        paths,
    };
    let header = serde_json::to_vec(&header).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    if mini_batch.kind == ItemKind::Files {
        let mut frame = frame_with_header(&header, 0);
        finish_frame(&mut frame, header.len())?;
        return Ok(frame);
    }
    let data = &mini_batch.data;
    // IPC adds a few hundred bytes of metadata and padding per column.
    let hint = data.get_array_memory_size() + 512 + 64 * data.num_columns();
    let mut frame = frame_with_header(&header, hint);
    {
        let mut writer = StreamWriter::try_new(&mut frame, data.schema_ref())?;
        writer.write(data)?;
        writer.finish()?;
    }
    finish_frame(&mut frame, header.len())?;
    Ok(frame)
}

/// The `path` column of a file mini-batch.
fn file_paths(data: &RecordBatch) -> Result<Vec<&str>, ArrowError> {
    let column = data
        .column_by_name("path")
        .ok_or_else(|| ArrowError::SchemaError("a file mini-batch has no path column".into()))?;
    let paths = column
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| {
            ArrowError::SchemaError(format!(
                "the path column of a file mini-batch is {}, not Utf8",
                column.data_type()
            ))
        })?;
    Ok(paths.iter().map(|p| p.unwrap_or_default()).collect())
}

/// Encodes a frame with a JSON header and no payload (SHUTDOWN).
pub(crate) fn encode_message(header: &serde_json::Value) -> Vec<u8> {
    let header = header.to_string().into_bytes();
    let mut frame = frame_with_header(&header, 0);
    // A small JSON header always fits in u32.
    let len = header.len() as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The pipe was closed (at a frame boundary or in the middle of one).
    Closed,
    /// A read failed.
    Io(std::io::Error),
    /// The bytes are not a valid frame.
    Invalid(String),
}

/// Reads one frame: the reply and its payload (an aligned buffer, so Arrow decodes it in place).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(Reply, Option<Buffer>), ReadError> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact(reader, &mut prefix).await?;
    let header_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let mut payload_len_bytes = [0u8; 8];
    payload_len_bytes.copy_from_slice(&prefix[4..]);
    let payload_len = u64::from_le_bytes(payload_len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(ReadError::Invalid(format!(
            "frame header of {header_len} bytes"
        )));
    }
    let payload_len = usize::try_from(payload_len)
        .map_err(|_| ReadError::Invalid(format!("frame payload of {payload_len} bytes")))?;
    let mut header = vec![0u8; header_len];
    read_exact(reader, &mut header).await?;
    let reply: Reply = serde_json::from_slice(&header).map_err(|e| {
        ReadError::Invalid(format!(
            "bad frame header ({e}): {}",
            String::from_utf8_lossy(&header[..header.len().min(200)])
        ))
    })?;
    let payload = if payload_len > 0 {
        let mut buf = MutableBuffer::from_len_zeroed(payload_len);
        read_exact(reader, buf.as_slice_mut()).await?;
        Some(Buffer::from(buf))
    } else {
        None
    };
    Ok((reply, payload))
}

async fn read_exact<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadError::Closed),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Decodes a result payload (one Arrow IPC stream) into one record batch tagged with `shape`.
pub(crate) fn decode_result(
    mut payload: Buffer,
    shape: ResultShape,
) -> Result<RecordBatch, ArrowError> {
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !payload.is_empty() {
        match decoder.decode(&mut payload)? {
            Some(batch) => batches.push(batch),
            None => break,
        }
    }
    decoder.finish()?;
    let schema = decoder
        .schema()
        .or_else(|| batches.first().map(|b| b.schema()))
        .ok_or_else(|| ArrowError::IpcError("the result stream has no schema".into()))?;
    let mut metadata = schema.metadata().clone();
    metadata.insert(RESULT_SHAPE_KEY.to_string(), shape.as_str().to_string());
    let schema = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
    let batch = match batches.len() {
        0 => RecordBatch::new_empty(schema.clone()),
        1 => batches.swap_remove(0),
        _ => arrow::compute::concat_batches(&schema, &batches)?,
    };
    batch.with_schema(schema)
}

/// How a result payload is encoded, from the shape named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultEncoding {
    /// One Arrow IPC stream, of this shape.
    Ipc(ResultShape),
    /// `text`: pre-formatted lines as raw UTF-8 (what the txt output writes verbatim), sent
    /// without pyarrow.
    Text,
}

/// The encoding named on the wire.
pub(crate) fn parse_shape(shape: Option<&str>) -> ResultEncoding {
    match shape {
        Some("list") => ResultEncoding::Ipc(ResultShape::List),
        Some("text") => ResultEncoding::Text,
        _ => ResultEncoding::Ipc(ResultShape::Table),
    }
}

/// Decodes a result payload in either encoding.
pub(crate) fn decode_payload(
    payload: Buffer,
    encoding: ResultEncoding,
) -> Result<RecordBatch, ArrowError> {
    match encoding {
        ResultEncoding::Ipc(shape) => decode_result(payload, shape),
        ResultEncoding::Text => lines_batch(payload.as_slice()),
    }
}

/// Pre-formatted text as the one-column `line` batch of shape [`ResultShape::Lines`].
fn lines_batch(text: &[u8]) -> Result<RecordBatch, ArrowError> {
    let text = std::str::from_utf8(text)
        .map_err(|e| ArrowError::ParseError(format!("the result text is not UTF-8: {e}")))?;
    let values: Vec<&str> = if text.is_empty() { vec![] } else { vec![text] };
    let metadata = std::collections::HashMap::from([(
        RESULT_SHAPE_KEY.to_string(),
        ResultShape::Lines.as_str().to_string(),
    )]);
    let schema = Schema::new_with_metadata(
        vec![arrow::datatypes::Field::new(
            "line",
            arrow::datatypes::DataType::Utf8,
            true,
        )],
        metadata,
    );
    RecordBatch::try_new(Arc::new(schema), vec![Arc::new(StringArray::from(values))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    use crate::batch::{Lineage, MiniBatchId};

    #[tokio::test]
    async fn run_frame_round_trips_through_the_decoder() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap();
        let mb = MiniBatch {
            id: MiniBatchId::new(0, 4),
            kind: ItemKind::Rows,
            data: data.clone(),
            lineage: Lineage {
                input: "in".into(),
                rows: 0..3,
            },
            partition_key_value: Default::default(),
        };
        let ctx = MiniBatchContext {
            minibatch_index: 4,
            attempt: 1,
            input_name: "in".into(),
        };
        let frame = encode_run(&mb, &ctx, true, OutputFormat::Csv).unwrap();
        let header_len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        let payload_len = u64::from_le_bytes(frame[4..12].try_into().unwrap()) as usize;
        assert_eq!(frame.len(), PREFIX_LEN + header_len + payload_len);
        let header: serde_json::Value =
            serde_json::from_slice(&frame[PREFIX_LEN..PREFIX_LEN + header_len]).unwrap();
        assert_eq!(header["type"], "RUN");
        assert_eq!(header["id"], "0-4");
        assert_eq!(header["kind"], "rows");
        let payload = Buffer::from(frame[PREFIX_LEN + header_len..].to_vec());
        let batch = decode_result(payload, ResultShape::List).unwrap();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(ResultShape::of(&batch), ResultShape::List);
        assert_eq!(batch.column(0), data.column(0));
    }

    #[test]
    fn file_paths_travel_in_the_header_and_text_comes_back_as_lines() {
        let schema = Arc::new(Schema::new(vec![Field::new("path", DataType::Utf8, false)]));
        let data = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["/d/a.txt", "/d/b.txt"]))],
        )
        .unwrap();
        let mb = MiniBatch {
            id: MiniBatchId::new(0, 1),
            kind: ItemKind::Files,
            data,
            lineage: Lineage {
                input: "docs".into(),
                rows: 0..2,
            },
            partition_key_value: Default::default(),
        };
        let ctx = MiniBatchContext {
            minibatch_index: 1,
            attempt: 1,
            input_name: "docs".into(),
        };
        let frame = encode_run(&mb, &ctx, true, OutputFormat::Txt).unwrap();
        let header_len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        let payload_len = u64::from_le_bytes(frame[4..12].try_into().unwrap());
        assert_eq!(payload_len, 0, "no Arrow payload for a file mini-batch");
        let header: serde_json::Value =
            serde_json::from_slice(&frame[PREFIX_LEN..PREFIX_LEN + header_len]).unwrap();
        assert_eq!(header["paths"], serde_json::json!(["/d/a.txt", "/d/b.txt"]));

        let encoding = parse_shape(Some("text"));
        assert_eq!(encoding, ResultEncoding::Text);
        let text = "a.txt 3\nb.txt 4\n";
        let batch = decode_payload(Buffer::from(text.as_bytes().to_vec()), encoding).unwrap();
        assert_eq!(ResultShape::of(&batch), ResultShape::Lines);
        assert_eq!(
            batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            text
        );
        let bad = decode_payload(Buffer::from(vec![0xff, 0xfe]), encoding).unwrap_err();
        assert!(bad.to_string().contains("not UTF-8"), "{bad}");
    }

    #[tokio::test]
    async fn read_frame_reports_a_closed_pipe() {
        let bytes: &[u8] = &[1, 0, 0];
        let mut reader = bytes;
        assert!(matches!(
            read_frame(&mut reader).await,
            Err(ReadError::Closed)
        ));
        for (kind, name) in [("STARTED", "STARTED"), ("RAN", "RAN")] {
            let frame = encode_message(&serde_json::json!({ "type": kind }));
            let mut reader = frame.as_slice();
            let (reply, payload) = read_frame(&mut reader).await.unwrap();
            assert_eq!((reply.name(), payload.is_none()), (name, true));
        }
        let frame = encode_message(&serde_json::json!({"type": "RESULT", "returned": 5}));
        let mut reader = frame.as_slice();
        match read_frame(&mut reader).await {
            Ok((
                Reply::Result {
                    returned: 5,
                    shape: None,
                },
                None,
            )) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
