//! [`OperatorSpec`]: what one `ParallelRunExec` runs, as a value.
//!
//! The spec is the job's settings (the PRS parameters with the entry-script reference and the
//! environment *recipe*: interpreter name and pip list, never a resolved virtual environment,
//! bootstrap copy, work or log folder), what the operator knows of each input, run()'s output
//! schema and, for SQL, the call's position. A file-backed input of a job file carries its
//! declarative description (path or URL, format, partition_format: [`InputInfo::source`]);
//! an input that is an arbitrary plan (a SQL subquery, a DataFrame) does not: its wire form
//! comes from DataFusion's plan codec (the multi-node issue). It compares and hashes by content, and encodes to
//! canonical bytes ([`OperatorSpec::encode`]) with a format version, so that a plan can be
//! shipped to another process (multi-node) and a resume can hash it. Decoding is pure: the
//! worker factory and the observer are the receiving side's (`OperatorRuntime`), built from the
//! spec (a Rust entry script is looked up by name in that side's registry).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Cursor;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::batch::ItemKind;
use crate::config::{JobSettings, StorageOptions};
use crate::error::{PrsError, Result};
use crate::exec::shared::SharedLocation;
use crate::exec::{InputInfo, RunSettings};
use crate::input::ScanSource;

/// The name of the wire format, checked on decoding.
const FORMAT: &str = "parallel-run/operator-spec";

/// The wire format's version. Raise it whenever the encoding changes meaning; a decoder
/// refuses any other version with [`PrsError::Config`] naming both.
pub const SPEC_FORMAT_VERSION: u32 = 1;

/// What a `ParallelRunExec` runs (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorSpec {
    job: JobSettings,
    inputs: Vec<InputInfo>,
    output_schema: Option<SchemaRef>,
    call: u64,
    /// A cluster job's shared staging area (where executors commit; `None` elsewhere).
    shared: Option<SharedLocation>,
    /// A cluster run's identity (unique per run of the driver): executors keep each run's
    /// worker logs apart by it (`None` elsewhere).
    run: Option<String>,
    /// The job's storage options without their secrets: how a cluster executor opens the
    /// inputs on object storage it reads by descriptor (secrets come from its environment).
    input_storage: BTreeMap<String, String>,
    /// Derived from `job` and `inputs` (not encoded).
    settings: RunSettings,
}

/// The encoded form.
#[derive(Serialize, Deserialize)]
struct Wire {
    format: String,
    version: u32,
    job: JobSettings,
    inputs: Vec<InputInfo>,
    /// The schema as an Arrow IPC stream with no batches (keeps every type and metadata).
    output_schema: Option<Vec<u8>>,
    call: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared: Option<SharedLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    input_storage: BTreeMap<String, String>,
}

impl OperatorSpec {
    /// The spec of a job over `inputs`. Checks the settings; `mini_batch_size` must be a plain
    /// count when a file dataset is among the inputs.
    pub fn new(
        job: JobSettings,
        inputs: Vec<InputInfo>,
        output_schema: Option<SchemaRef>,
    ) -> Result<Self> {
        job.validate()?;
        let has_files = inputs.iter().any(|i| i.kind == ItemKind::Files);
        let mut settings = RunSettings::from_config(&job.config, has_files)?;
        settings.keep_failed_rows = job.dead_letter_rows;
        Ok(OperatorSpec {
            job,
            inputs,
            output_schema,
            call: 0,
            shared: None,
            run: None,
            input_storage: BTreeMap::new(),
            settings,
        })
    }

    /// The same spec as call number `call` (SQL: the position of the `parallel_run(...)`
    /// among the calls of its statement), so that two identical calls stay two runs.
    pub fn with_call(mut self, call: u64) -> Self {
        self.call = call;
        self
    }

    /// The same spec committing through the shared staging area at `location` (a cluster
    /// job: see [`crate::exec::shared`]).
    pub fn with_shared(mut self, location: SharedLocation) -> Self {
        self.shared = Some(location);
        self
    }

    /// The same spec whose executors open the inputs with `options` (their secrets are not
    /// kept: each executor takes them from its own environment).
    pub fn with_input_storage(mut self, options: &StorageOptions) -> Self {
        self.input_storage = options.without_secrets();
        self
    }

    /// The storage options an executor opens the inputs with (see
    /// [`OperatorSpec::with_input_storage`]).
    pub fn input_storage(&self) -> StorageOptions {
        StorageOptions::from_entries(self.input_storage.clone())
    }

    /// How an executor opens input `name` to read its parts (see
    /// [`crate::input::PartsReader`]): its declaration and the storage options without
    /// secrets; `None` when the input has no declaration.
    pub fn scan_source(&self, name: &str) -> Option<ScanSource> {
        let input = self
            .inputs
            .iter()
            .find(|i| i.name == name)?
            .source
            .clone()?;
        Some(ScanSource {
            input,
            storage: self.input_storage.clone(),
        })
    }

    /// The same spec as the run `run` of a cluster job (see [`OperatorSpec::run`]).
    pub fn with_run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// A cluster run's identity, unique per run of the driver: an executor writes the worker
    /// logs of each run into a folder of its own (see [`crate::exec::logs`]).
    pub fn run(&self) -> Option<&str> {
        self.run.as_deref()
    }

    /// Where a cluster job's executors commit, when they do.
    pub fn shared(&self) -> Option<&SharedLocation> {
        self.shared.as_ref()
    }

    /// The job's settings.
    pub fn job(&self) -> &JobSettings {
        &self.job
    }

    /// The operator's settings (derived from the job's).
    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// The entry script as the user wrote it (`score.py`, `rust:NAME`).
    pub fn entry_script(&self) -> &str {
        &self.job.config.entry_script
    }

    /// What the operator knows of each input, in order.
    pub fn inputs(&self) -> &[InputInfo] {
        &self.inputs
    }

    /// run()'s result schema; `None` in job mode (results go to the sink with their own).
    pub fn output_schema(&self) -> Option<&SchemaRef> {
        self.output_schema.as_ref()
    }

    /// The call number (see [`OperatorSpec::with_call`]).
    pub fn call(&self) -> u64 {
        self.call
    }

    /// Canonical bytes: the same spec always encodes to the same bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let output_schema = match &self.output_schema {
            Some(schema) => Some(schema_bytes(schema)?),
            None => None,
        };
        let wire = Wire {
            format: FORMAT.to_string(),
            version: SPEC_FORMAT_VERSION,
            job: self.job.clone(),
            inputs: self.inputs.clone(),
            output_schema,
            call: self.call,
            shared: self.shared.clone(),
            run: self.run.clone(),
            input_storage: self.input_storage.clone(),
        };
        serde_json::to_vec(&wire).map_err(|e| wire_error(format!("encoding failed: {e}")))
    }

    /// The spec `bytes` encode. A different format version is refused, naming both versions.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| wire_error(format!("not an encoded operator spec: {e}")))?;
        let format = value.get("format").and_then(|f| f.as_str());
        if format != Some(FORMAT) {
            return Err(wire_error(format!(
                "not an encoded operator spec (format {format:?}, expected {FORMAT:?})"
            )));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(SPEC_FORMAT_VERSION)) {
            return Err(wire_error(format!(
                "was encoded with format version {}, this engine reads version \
                 {SPEC_FORMAT_VERSION}: run the same parallel-run version on every side \
                 (and resume with the version that started the job)",
                version.map_or("(none)".to_string(), |v| v.to_string())
            )));
        }
        let wire: Wire = serde_json::from_value(value)
            .map_err(|e| wire_error(format!("cannot be decoded: {e}")))?;
        let output_schema = match wire.output_schema {
            Some(bytes) => Some(schema_from_bytes(&bytes)?),
            None => None,
        };
        let mut spec =
            OperatorSpec::new(wire.job, wire.inputs, output_schema)?.with_call(wire.call);
        spec.shared = wire.shared;
        spec.run = wire.run;
        spec.input_storage = wire.input_storage;
        Ok(spec)
    }
}

impl Eq for OperatorSpec {}

impl Hash for OperatorSpec {
    /// Hashes a part of the content that equal specs share (consistent with `Eq`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.job.config.entry_script.hash(state);
        self.job.output.hash(state);
        self.job.log_dir.hash(state);
        self.inputs.hash(state);
        self.call.hash(state);
    }
}

fn wire_error(message: String) -> PrsError {
    PrsError::config("operator spec", "(bytes)", message)
}

fn schema_bytes(schema: &SchemaRef) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn schema_from_bytes(bytes: &[u8]) -> Result<SchemaRef> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(reader.schema())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InputFormat, InputSpec, OutputAction, ParallelRunConfig};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn spec() -> OperatorSpec {
        let mut config = ParallelRunConfig::new("score.py", 10, OutputAction::AppendRow);
        config.environment.python = Some("python3.11".into());
        config.environment.pip = vec!["numpy".into(), "pandas<3".into()];
        config.partition_keys = vec!["store".into()];
        config.allowed_failed_percent = Some(2.5);
        let mut job = JobSettings::new(config, "/jobs/out");
        job.arguments = vec!["--threshold".into(), "0.5".into()];
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float64, true),
        ]));
        OperatorSpec::new(
            job,
            vec![
                InputInfo::new("reviews", ItemKind::Rows),
                InputInfo::new("images", ItemKind::Files).with_source(InputSpec {
                    partition_format: Some("{country}/{year}/*.jpg".into()),
                    ..InputSpec::path("images", "s3://bucket/images/", InputFormat::Files)
                }),
            ],
            Some(schema),
        )
        .unwrap()
        .with_call(3)
    }

    #[test]
    fn the_spec_round_trips_through_bytes_canonically() {
        let spec = spec();
        let bytes = spec.encode().unwrap();
        let back = OperatorSpec::decode(&bytes).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.settings(), spec.settings());
        assert_eq!(
            back.encode().unwrap(),
            bytes,
            "the same spec, the same bytes"
        );
        assert_eq!(spec.clone().encode().unwrap(), bytes);
    }

    #[test]
    fn the_shared_staging_location_travels_with_the_spec() {
        let location = SharedLocation::Folder(std::path::PathBuf::from("/shared/out"));
        let shared = spec().with_shared(location.clone()).with_run("run1-ab");
        let back = OperatorSpec::decode(&shared.encode().unwrap()).unwrap();
        assert_eq!(back.shared(), Some(&location));
        assert_eq!(back.run(), Some("run1-ab"), "and the run's identity");
        assert_eq!(back, shared);
        // A spec without one encodes without the field (bytes of earlier builds decode).
        let plain = spec().encode().unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("\"shared\""));
        assert!(!String::from_utf8_lossy(&plain).contains("\"run\""));
        assert_eq!(OperatorSpec::decode(&plain).unwrap().shared(), None);
        assert_eq!(OperatorSpec::decode(&plain).unwrap().run(), None);
    }

    #[test]
    fn specs_compare_by_value_and_the_call_position_counts() {
        let (a, b) = (spec(), spec());
        assert_eq!(a, b, "two specs built from the same job are equal");
        let hash = |s: &OperatorSpec| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
        let other = b.with_call(4);
        assert_ne!(a, other, "another call of the statement is another run");
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let bytes = spec().encode().unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["version"] = serde_json::json!(SPEC_FORMAT_VERSION + 1);
        let err = OperatorSpec::decode(&serde_json::to_vec(&value).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("format version {}", SPEC_FORMAT_VERSION + 1))
                && err.contains("same parallel-run version"),
            "{err}"
        );
        let err = OperatorSpec::decode(b"{\"x\": 1}").unwrap_err().to_string();
        assert!(err.contains("not an encoded operator spec"), "{err}");
    }
}
