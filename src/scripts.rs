//! Rust entry scripts built into the `parallel-run` binary, usable as `entry_script:
//! rust:NAME`. They exist to try the engine without Python and to test it end to end.
//!
//! - `rust:echo` returns its mini-batch's rows unchanged. Its behaviour can be steered with
//!   job `arguments`, which makes it the engine's test script:
//!   `--fail-ids 3,7` raise an error for any mini-batch holding one of these `id` values;
//!   `--fail-tries N` ... but only on tries 1..=N (then succeed; default: every try);
//!   `--drop-ids 4,5` leave these rows out of the result (fewer returned rows = failed items);
//!   `--sleep-ms N` sleep N ms in every run(); `--sleep-ids 9` ... only for these ids;
//!   `--panic-ids 2` panic (like a crashed worker) for these ids;
//!   `--fail-paths a.txt,b.txt` (file datasets) raise an error for any mini-batch holding a
//!   file whose path ends with one of these names;
//!   `--init-fail` fail in init(); `--as-list` return the `id` column as a list;
//!   `--read-files` (file datasets) return `file, size, content`: each local file's name,
//!   the bytes read and its text.
//! - `rust:score` scores the reference benchmark rows (`id`, `f0`..`f7`) like
//!   `shared/bench/score_entry.py`: `score = 1 / (1 + exp(-(X @ W)))` with the same weights
//!   (numpy's `default_rng(42).normal(size=8)`), returning `id, score`; init() sleeps 1 s.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::worker::rust::{RunOutput, ScriptError, WorkerInfo};
use crate::worker::{EntryScript, MiniBatchContext, ScriptRegistry};

/// The registry of built-in scripts.
pub fn builtin_registry() -> ScriptRegistry {
    let mut registry = ScriptRegistry::new();
    registry.register("echo", EchoScript::default);
    registry.register("score", ScoreScript::default);
    registry
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct EchoScript {
    fail_ids: BTreeSet<i64>,
    fail_tries: Option<u32>,
    drop_ids: BTreeSet<i64>,
    sleep: Duration,
    sleep_ids: BTreeSet<i64>,
    panic_ids: BTreeSet<i64>,
    fail_paths: Vec<String>,
    as_list: bool,
    read_files: bool,
}

fn parse_ids(value: Option<&String>) -> Result<BTreeSet<i64>, ScriptError> {
    let Some(v) = value else {
        return Ok(BTreeSet::new());
    };
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .map_err(|e| format!("bad id {s:?}: {e}").into())
        })
        .collect()
}

impl EntryScript for EchoScript {
    fn init(&mut self, worker: &WorkerInfo) -> Result<(), ScriptError> {
        let args = &worker.arguments;
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
        };
        if args.iter().any(|a| a == "--init-fail") {
            return Err("init failed on purpose (--init-fail)".into());
        }
        self.fail_ids = parse_ids(value("--fail-ids"))?;
        self.fail_tries = value("--fail-tries").map(|v| v.parse()).transpose()?;
        self.drop_ids = parse_ids(value("--drop-ids"))?;
        self.sleep_ids = parse_ids(value("--sleep-ids"))?;
        self.panic_ids = parse_ids(value("--panic-ids"))?;
        self.fail_paths = value("--fail-paths")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        self.sleep = Duration::from_millis(
            value("--sleep-ms")
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or(0),
        );
        self.as_list = args.iter().any(|a| a == "--as-list");
        self.read_files = args.iter().any(|a| a == "--read-files");
        Ok(())
    }

    fn run(
        &mut self,
        batch: &RecordBatch,
        context: &MiniBatchContext,
    ) -> Result<RunOutput, ScriptError> {
        let ids = id_column(batch)?;
        let has = |set: &BTreeSet<i64>| ids.iter().flatten().any(|id| set.contains(&id));
        if has(&self.panic_ids) {
            panic!("panic on purpose (--panic-ids)");
        }
        if !self.sleep.is_zero() && (self.sleep_ids.is_empty() || has(&self.sleep_ids)) {
            std::thread::sleep(self.sleep);
        }
        if !self.fail_paths.is_empty() {
            if let Some(paths) = batch.column_by_name("path") {
                let paths = cast(paths, &DataType::Utf8)?;
                let failing = paths.as_string::<i32>().iter().flatten().find(|p| {
                    self.fail_paths
                        .iter()
                        .any(|name| p.ends_with(name.as_str()))
                });
                if let Some(path) = failing {
                    return Err(format!("failing on purpose (--fail-paths): {path}").into());
                }
            }
        }
        if has(&self.fail_ids) && self.fail_tries.is_none_or(|n| context.attempt <= n) {
            return Err(format!("failing on purpose (--fail-ids), try {}", context.attempt).into());
        }
        let keep: BooleanArray = ids
            .iter()
            .map(|id| Some(!id.is_some_and(|id| self.drop_ids.contains(&id))))
            .collect();
        let kept = filter_record_batch(batch, &keep)?;
        if self.read_files {
            return Ok(RunOutput::Rows(read_files(&kept)?));
        }
        if self.as_list {
            let column = kept.column_by_name("id").cloned().ok_or("no id column")?;
            return Ok(RunOutput::List(column));
        }
        Ok(RunOutput::Rows(kept))
    }
}

fn id_column(batch: &RecordBatch) -> Result<Int64Array, ScriptError> {
    match batch.column_by_name("id") {
        Some(col) => Ok(cast(col, &DataType::Int64)?
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone()),
        // File datasets and tables without an id: use the row position.
        None => Ok(Int64Array::from_iter_values(0..batch.num_rows() as i64)),
    }
}

/// `file, size, content` of each local file named in the `path` column.
fn read_files(batch: &RecordBatch) -> Result<RecordBatch, ScriptError> {
    let paths = batch.column_by_name("path").ok_or("no path column")?;
    let paths = cast(paths, &DataType::Utf8)?;
    let (mut names, mut sizes, mut contents) = (Vec::new(), Vec::new(), Vec::new());
    for path in paths.as_string::<i32>().iter().flatten() {
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        names.push(name);
        sizes.push(bytes.len() as i64);
        contents.push(String::from_utf8_lossy(&bytes).to_string());
    }
    let schema = Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("content", DataType::Utf8, false),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(arrow::array::StringArray::from(names)),
            Arc::new(Int64Array::from(sizes)),
            Arc::new(arrow::array::StringArray::from(contents)),
        ],
    )?)
}

/// numpy's `np.random.default_rng(42).normal(size=8)`, the weights of `score_entry.py`.
const SCORE_WEIGHTS: [f64; 8] = [
    0.30471707975443135,
    -1.0399841062404955,
    0.7504511958064572,
    0.9405647163912139,
    -1.9510351886538364,
    -1.302179506862318,
    0.12784040316728537,
    -0.3162425923435822,
];

/// See the module docs.
#[derive(Debug, Default)]
pub struct ScoreScript {
    weights: Vec<f64>,
}

impl EntryScript for ScoreScript {
    fn init(&mut self, _worker: &WorkerInfo) -> Result<(), ScriptError> {
        // Stands in for loading a model, like score_entry.py's one-second sleep.
        std::thread::sleep(Duration::from_secs(1));
        self.weights = SCORE_WEIGHTS.to_vec();
        Ok(())
    }

    fn run(
        &mut self,
        batch: &RecordBatch,
        _context: &MiniBatchContext,
    ) -> Result<RunOutput, ScriptError> {
        let mut score = vec![0.0f64; batch.num_rows()];
        for (i, w) in self.weights.iter().enumerate() {
            let col = batch
                .column_by_name(&format!("f{i}"))
                .ok_or_else(|| format!("column f{i} is missing"))?;
            let col = cast(col, &DataType::Float64)?;
            let values = col.as_primitive::<arrow::datatypes::Float64Type>();
            for (s, v) in score.iter_mut().zip(values.iter()) {
                *s += v.unwrap_or(0.0) * w;
            }
        }
        for s in score.iter_mut() {
            *s = 1.0 / (1.0 + (-*s).exp());
        }
        let id: ArrayRef = batch
            .column_by_name("id")
            .cloned()
            .ok_or("column id is missing")?;
        let schema = Schema::new(vec![
            Field::new("id", id.data_type().clone(), true),
            Field::new("score", DataType::Float64, false),
        ]);
        let score: ArrayRef = Arc::new(Float64Array::from(score));
        Ok(RunOutput::Rows(RecordBatch::try_new(
            Arc::new(schema),
            vec![id, score],
        )?))
    }
}
