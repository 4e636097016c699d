//! The job's durable ledger: what a resumed run, `parallel-run status` and the report read to
//! know which mini-batches are final, and what each committed.
//!
//! # Layout (`<log_dir>/ledger/`, i.e. `<output>/logs/ledger/` for a job)
//! - `job.json`: the [`LedgerHeader`]: the job's operator spec (its canonical bytes, see
//!   [`crate::exec::OperatorSpec::encode`]) and the entry script's digest, written once by the
//!   first run (temporary name, then a rename) and replaced only by a forced resume.
//! - `records.jsonl`: one [`LedgerEntry`] per line, appended as each mini-batch reaches its
//!   final status: its [`MiniBatchRecord`], the fingerprint of its input slice and the part
//!   file it committed: a succeeded one's, or a failed one's whose good items bisection
//!   (`isolate_failures`) committed. A part is complete (written under a temporary
//!   name, then renamed) before the line naming it is written, so a record never names a part
//!   that is not there; a line is written whole by one `write` and the file is synced when a
//!   record comes [`SYNC_INTERVAL`] or more after the last sync, and when the run ends. A
//!   `kill -9` can at most cut the last line short, which a reader ignores ([`read_entries`]);
//!   a power loss can lose the records since the last sync, and a record whose part did not
//!   reach the disk is found by its size: those mini-batches run again.
//! - `runs.jsonl`: one line per run of the job (started, how: run / resume / rerun-failed,
//!   forced).
//!
//! For an object-storage output the records and parts are also copied to the bucket as they
//! commit, and a resume restores them from there: see [`bucket`].
//!
//! Later lines win: a mini-batch failed in one run and re-run by `--rerun-failed` has two
//! records, the last one counts. A failed record with a part (bisection isolated its failing
//! items) is kept by `--resume` like a succeeded one (skipped, its part merged); `--rerun-failed`
//! runs it again and does not merge its part (the new part replaces the file of that name).

pub mod bucket;
pub mod status;
pub mod table;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{MiniBatchId, MiniBatchRecord};
use crate::config::catalogue::{flagged, OUTPUT};
use crate::config::JobSettings;
use crate::error::{PrsError, Result};
use crate::exec::{CompletedMiniBatch, MiniBatchSink, OperatorSpec, ResumeSkips, SkippedMiniBatch};
use crate::output::{PartRef, StagedSink};

/// The ledger's folder below the log folder.
pub const LEDGER_DIR: &str = "ledger";
/// The header file.
pub const HEADER_FILE: &str = "job.json";
/// The records file.
pub const RECORDS_FILE: &str = "records.jsonl";
/// The runs file.
pub const RUNS_FILE: &str = "runs.jsonl";
/// The most time between two syncs of the records file.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

const FORMAT: &str = "parallel-run/ledger";
/// The ledger format's version; a resume refuses another one.
pub const LEDGER_FORMAT_VERSION: u32 = 1;

/// The ledger folder of a job logging to `log_dir`.
pub fn ledger_dir(log_dir: &Path) -> PathBuf {
    log_dir.join(LEDGER_DIR)
}

/// The log folder holding the ledger of the job in `folder`: `folder/logs` (a job's output
/// folder) or `folder` itself (a log or SQL report folder); an error naming `folder` and
/// `what` (the command or function asking) when neither has one.
pub fn find_log_dir(folder: &Path, what: &str) -> Result<PathBuf> {
    [folder.join("logs"), folder.to_path_buf()]
        .into_iter()
        .find(|d| ledger_dir(d).join(HEADER_FILE).is_file())
        .ok_or_else(|| {
            PrsError::config(
                what,
                folder.display(),
                "holds no job ledger (logs/ledger/job.json): give the output folder of a job \
                 (or a SQL job's report folder) run by this version of parallel-run",
            )
        })
}

/// What a job is, as its first run recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerHeader {
    /// `parallel-run/ledger`.
    pub format: String,
    /// [`LEDGER_FORMAT_VERSION`].
    pub version: u32,
    /// The engine version that wrote it.
    pub engine: String,
    /// The operator spec's canonical encoding (JSON).
    pub spec: serde_json::Value,
    /// SHA-256 of the entry script file, when it is a file.
    pub entry_script_sha256: Option<String>,
}

impl LedgerHeader {
    /// The header of a job running `spec` under `settings`.
    pub fn new(spec: &OperatorSpec) -> Result<Self> {
        let bytes = spec.encode()?;
        let spec_json = serde_json::from_slice(&bytes).map_err(|e| ledger_error("job.json", e))?;
        Ok(LedgerHeader {
            format: FORMAT.to_string(),
            version: LEDGER_FORMAT_VERSION,
            engine: env!("CARGO_PKG_VERSION").to_string(),
            spec: spec_json,
            entry_script_sha256: entry_script_digest(spec.job()),
        })
    }

    /// The spec it recorded.
    pub fn spec(&self) -> Result<OperatorSpec> {
        let bytes = serde_json::to_vec(&self.spec).map_err(|e| ledger_error("job.json", e))?;
        OperatorSpec::decode(&bytes)
    }
}

/// What one line of `records.jsonl` says of a mini-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Its record (final status, tries, timings, worker, lineage, key values).
    pub record: MiniBatchRecord,
    /// The fingerprint of its input slice ([`crate::batch::slice_fingerprint`]), hex.
    pub slice: String,
    /// The committed part: of a mini-batch with results that succeeded, or failed after
    /// bisection committed its good items.
    pub part: Option<PartRef>,
    /// The run (1-based, see `runs.jsonl`) that wrote it.
    pub run: u32,
    /// The identity of its input's source when it was cut (hex; a local Parquet input's
    /// files and batching), for diagnosis: a resume checks the slice's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl LedgerEntry {
    /// The slice fingerprint as a number (`None` when the text is not one).
    pub fn fingerprint(&self) -> Option<u64> {
        u64::from_str_radix(&self.slice, 16).ok()
    }
}

/// How a run treats an existing ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumeMode {
    /// A new job: an unfinished ledger in the output folder is refused.
    #[default]
    Fresh,
    /// Continue: skip every mini-batch with a final record (succeeded or failed).
    Resume,
    /// Continue, and run the failed mini-batches again.
    RerunFailed,
}

impl ResumeMode {
    /// The command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            ResumeMode::Fresh => "",
            ResumeMode::Resume => "--resume",
            ResumeMode::RerunFailed => "--rerun-failed",
        }
    }
}

/// One line of `runs.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEntry {
    /// 1-based.
    pub run: u32,
    /// `run`, `resume` or `rerun-failed`.
    pub mode: String,
    /// `--force` was given.
    pub forced: bool,
    /// When it started.
    pub started: SystemTime,
    /// The process.
    pub pid: u32,
}

/// Reads the records of a ledger, in file order. A last line cut short (the process was
/// killed while writing it) is ignored; any other line that cannot be read is an error naming
/// the file and the line.
pub fn read_entries(dir: &Path) -> Result<Vec<LedgerEntry>> {
    read_lines(&dir.join(RECORDS_FILE))
}

/// Reads the runs of a ledger (see [`read_entries`]).
pub fn read_runs(dir: &Path) -> Result<Vec<RunEntry>> {
    read_lines(&dir.join(RUNS_FILE))
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PrsError::io(path, e)),
    };
    let mut lines = BufReader::new(file).lines().peekable();
    let mut out = Vec::new();
    let mut n = 0;
    while let Some(line) = lines.next() {
        n += 1;
        let line = line.map_err(|e| PrsError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(entry) => out.push(entry),
            // The last line, cut short by a kill: the mini-batch simply runs again.
            Err(_) if lines.peek().is_none() => {
                tracing::warn!("{}: ignoring an incomplete last line", path.display())
            }
            Err(e) => {
                return Err(ledger_error(
                    &format!("{} line {n}", path.display()),
                    format!("{e}. The ledger is damaged: run with --restart to start the job over"),
                ))
            }
        }
    }
    Ok(out)
}

/// Reads the header of the ledger in `dir` (`None` when there is none).
pub fn read_header(dir: &Path) -> Result<Option<LedgerHeader>> {
    let path = dir.join(HEADER_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PrsError::io(&path, e)),
    };
    let header: LedgerHeader = serde_json::from_str(&text).map_err(|e| {
        ledger_error(
            &path.display().to_string(),
            format!("{e}. Run with --restart to start the job over"),
        )
    })?;
    if header.format != FORMAT || header.version != LEDGER_FORMAT_VERSION {
        return Err(ledger_error(
            &path.display().to_string(),
            format!(
                "is ledger format {} version {} (written by parallel-run {}); this engine \
                 reads version {LEDGER_FORMAT_VERSION}: resume with the version that started \
                 the job, or --restart",
                header.format, header.version, header.engine
            ),
        ));
    }
    Ok(Some(header))
}

/// The final record of every mini-batch (the last line of each id wins).
pub fn final_entries(entries: Vec<LedgerEntry>) -> HashMap<MiniBatchId, LedgerEntry> {
    let mut last = HashMap::with_capacity(entries.len());
    for entry in entries {
        last.insert(entry.record.id, entry);
    }
    last
}

/// What a resumed run starts from: the mini-batches it skips, and the committed parts the
/// final output is merged from.
#[derive(Debug, Default)]
pub struct ResumeState {
    /// What the dispatcher skips.
    pub skips: ResumeSkips,
    /// The committed parts of the skipped mini-batches (succeeded ones, and failed ones whose
    /// good items bisection committed).
    pub parts: Vec<(MiniBatchId, PartRef)>,
    /// Failed mini-batches that run again (`--rerun-failed`).
    pub rerun: u64,
    /// Succeeded mini-batches whose part is missing or damaged: they run again.
    pub lost_parts: u64,
    /// Warnings to show (a changed entry script, a forced change).
    pub warnings: Vec<String>,
    /// An existing ledger was continued (not a new one started).
    pub continued: bool,
}

/// Compares the spec of a resumed run with the one its ledger recorded: the changes to
/// output-affecting settings (the catalogue's `OUTPUT` parameters, the output format and
/// order, the arguments, the inputs, run()'s output schema), each as `key: old -> new`.
/// Timeouts, tries, thresholds and worker counts may change.
pub fn output_changes(old: &OperatorSpec, new: &OperatorSpec) -> Vec<String> {
    let (a, b) = (old.job(), new.job());
    let mut changes = Vec::new();
    for param in flagged(OUTPUT) {
        let Some(write) = param.write else { continue };
        let before = write(&a.config, a.output_format).ok();
        let after = write(&b.config, b.output_format).ok();
        if before != after {
            changes.push(format!(
                "{}: {} -> {}",
                param.name,
                yaml_text(before.as_ref()),
                yaml_text(after.as_ref())
            ));
        }
    }
    let mut field = |name: &str, before: String, after: String| {
        if before != after {
            changes.push(format!("{name}: {before} -> {after}"));
        }
    };
    field("output", show(&a.output), show(&b.output));
    field(
        "output_format",
        show(&a.output_format),
        show(&b.output_format),
    );
    field(
        "output_action",
        show(&a.config.output_action),
        show(&b.config.output_action),
    );
    field("arguments", show(&a.arguments), show(&b.arguments));
    field(
        "preserve_order",
        a.preserve_order.to_string(),
        b.preserve_order.to_string(),
    );
    field(
        "mini_batch_format",
        show(&a.mini_batch_format),
        show(&b.mini_batch_format),
    );
    let inputs = |spec: &OperatorSpec| {
        spec.inputs()
            .iter()
            .map(|i| {
                let source = i
                    .source
                    .as_ref()
                    .map(|s| format!(" {}", show(s)))
                    .unwrap_or_default();
                format!("{} ({:?}{source})", i.name, i.kind)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    field("inputs", inputs(old), inputs(new));
    field(
        "output schema",
        old.output_schema()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        new.output_schema()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    );
    changes
}

fn show(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

fn yaml_text(value: Option<&serde_yaml::Value>) -> String {
    match value {
        None | Some(serde_yaml::Value::Null) => "(not set)".to_string(),
        Some(v) => serde_yaml::to_string(v)
            .map(|t| t.trim().replace('\n', " "))
            .unwrap_or_default(),
    }
}

/// SHA-256 (hex) of the entry script file of `settings`, when it is a file that can be read.
pub fn entry_script_digest(settings: &JobSettings) -> Option<String> {
    let script = &settings.config.entry_script;
    if script.starts_with("rust:") {
        return None;
    }
    let path = Path::new(script);
    let candidates = [
        settings
            .config
            .source_directory
            .as_ref()
            .map(|d| d.join(path)),
        settings.job_dir.as_ref().map(|d| d.join(path)),
        Some(path.to_path_buf()),
    ];
    let bytes = candidates
        .into_iter()
        .flatten()
        .find_map(|p| fs::read(p).ok())?;
    Some(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the ledger of a run of `spec` in `dir` for `mode`. A fresh run starts an empty ledger
/// (the caller has made sure no unfinished one is there); a resume reads it, refuses a changed
/// output-affecting setting unless `force`, and returns what to skip. `parts_dir` is where the
/// committed parts are (a part that is missing or whose size differs from its record is
/// lost: its mini-batch runs again).
pub fn open(
    dir: &Path,
    spec: &OperatorSpec,
    mode: ResumeMode,
    force: bool,
    parts_dir: &Path,
) -> Result<(LedgerWriter, ResumeState)> {
    fs::create_dir_all(dir).map_err(|e| PrsError::io(dir, e))?;
    let header = LedgerHeader::new(spec)?;
    let mut resume = ResumeState::default();
    let old = match mode {
        ResumeMode::Fresh => None,
        _ => read_header(dir)?,
    };
    let runs = match &old {
        Some(_) => read_runs(dir)?,
        None => Vec::new(),
    };
    match &old {
        None => {
            // A new ledger (a leftover records file of a cleared job must not count).
            for name in [RECORDS_FILE, RUNS_FILE] {
                let path = dir.join(name);
                if path.exists() {
                    fs::remove_file(&path).map_err(|e| PrsError::io(&path, e))?;
                }
            }
            write_header(dir, &header)?;
        }
        Some(old) => {
            resume.continued = true;
            // Matching mini-batches with the ledger needs the same rows in the same order.
            if let Some(input) = spec.inputs().iter().find(|i| !i.ordered) {
                return Err(PrsError::config(
                    mode.flag(),
                    format!("input {}", input.name),
                    "is a query or DataFrame, whose row order is not guaranteed from one run \
                     to the next, so its mini-batches cannot be matched with the ones the \
                     ledger recorded: such a job cannot be resumed. Read the input from files \
                     (a Parquet/CSV/JSON path or a file dataset), or run again with --restart",
                ));
            }
            let changes = output_changes(&old.spec()?, spec);
            if !changes.is_empty() {
                if !force {
                    return Err(PrsError::config(
                        mode.flag(),
                        dir.display(),
                        format!(
                            "the job changed since its ledger was started, in settings that \
                             change the output: {}. Put them back, run with --restart to start \
                             over, or add --force to resume anyway (the committed results were \
                             made with the old settings)",
                            changes.join("; ")
                        ),
                    ));
                }
                resume.warnings.push(format!(
                    "resuming with changed settings (--force): {}",
                    changes.join("; ")
                ));
                write_header(dir, &header)?;
            }
            if old.entry_script_sha256.is_some()
                && header.entry_script_sha256.is_some()
                && old.entry_script_sha256 != header.entry_script_sha256
            {
                resume.warnings.push(format!(
                    "the entry script {} changed since the job started: the mini-batches \
                     committed before ran the old version",
                    spec.entry_script()
                ));
            }
            for (id, entry) in final_entries(read_entries(dir)?) {
                let Some(fingerprint) = entry.fingerprint() else {
                    continue;
                };
                if !entry.record.succeeded() && mode == ResumeMode::RerunFailed {
                    resume.rerun += 1;
                    continue;
                }
                if let Some(part) = &entry.part {
                    let path = parts_dir.join(&part.file);
                    let intact = fs::metadata(&path).is_ok_and(|m| m.len() == part.bytes);
                    if !intact {
                        resume.lost_parts += 1;
                        continue;
                    }
                    resume.parts.push((id, part.clone()));
                }
                resume.skips.insert(
                    id,
                    SkippedMiniBatch {
                        source: entry
                            .source
                            .as_deref()
                            .and_then(|s| u64::from_str_radix(s, 16).ok()),
                        record: entry.record,
                        fingerprint,
                    },
                );
            }
            resume.skips.set_check_slices(!force);
            // Merged in id order (the completion order of earlier runs is not kept).
            resume.parts.sort_by_key(|(id, _)| *id);
            if resume.lost_parts > 0 {
                resume.warnings.push(format!(
                    "{} committed part(s) are missing or incomplete (a power loss?): those \
                     mini-batches run again",
                    resume.lost_parts
                ));
            }
        }
    }
    let run = runs.iter().map(|r| r.run).max().unwrap_or(0) + 1;
    let writer = LedgerWriter::open(dir, run)?;
    let entry = RunEntry {
        run,
        mode: match (mode, &old) {
            (_, None) => "run",
            (ResumeMode::RerunFailed, _) => "rerun-failed",
            _ => "resume",
        }
        .to_string(),
        forced: force,
        started: SystemTime::now(),
        pid: std::process::id(),
    };
    append_line(&dir.join(RUNS_FILE), &entry)?;
    Ok((writer, resume))
}

fn write_header(dir: &Path, header: &LedgerHeader) -> Result<()> {
    let path = dir.join(HEADER_FILE);
    let tmp = dir.join(format!(".{HEADER_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(header).map_err(|e| ledger_error(HEADER_FILE, e))?;
    let mut file = File::create(&tmp).map_err(|e| PrsError::io(&tmp, e))?;
    file.write_all(&text).map_err(|e| PrsError::io(&tmp, e))?;
    file.sync_all().map_err(|e| PrsError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| PrsError::io(&path, e))?;
    sync_dir(dir);
    Ok(())
}

fn append_line(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut line =
        serde_json::to_vec(value).map_err(|e| ledger_error(&path.display().to_string(), e))?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| PrsError::io(path, e))?;
    file.write_all(&line).map_err(|e| PrsError::io(path, e))?;
    file.sync_data().map_err(|e| PrsError::io(path, e))?;
    Ok(())
}

/// Syncs a folder (its entries: renames, new files); best effort.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Appends records to `records.jsonl`: each as one write of a whole line, synced at most every
/// [`SYNC_INTERVAL`] (group commit) and on [`LedgerWriter::close`].
#[derive(Debug)]
pub struct LedgerWriter {
    path: PathBuf,
    file: File,
    run: u32,
    last_sync: Instant,
    dirty: bool,
    /// Folders whose new entries (renamed parts) must reach the disk before the records do.
    sync_first: Vec<PathBuf>,
}

impl LedgerWriter {
    fn open(dir: &Path, run: u32) -> Result<Self> {
        let path = dir.join(RECORDS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| PrsError::io(&path, e))?;
        Ok(LedgerWriter {
            path,
            file,
            run,
            last_sync: Instant::now(),
            dirty: false,
            sync_first: Vec::new(),
        })
    }

    /// The run number.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// Syncs `dir` before each sync of the records (the folder the parts are renamed into).
    pub fn sync_before(mut self, dir: PathBuf) -> Self {
        self.sync_first.push(dir);
        self
    }

    /// Appends the record of `done` (with the part it committed); returns the line written.
    pub fn append(&mut self, done: &CompletedMiniBatch, part: Option<PartRef>) -> Result<Vec<u8>> {
        let entry = LedgerEntry {
            record: done.record.clone(),
            slice: format!("{:016x}", done.fingerprint),
            part,
            run: self.run,
            source: done.source.map(|s| format!("{s:016x}")),
        };
        let mut line = serde_json::to_vec(&entry)
            .map_err(|e| ledger_error(&self.path.display().to_string(), e))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| PrsError::io(&self.path, e))?;
        self.dirty = true;
        if self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.sync()?;
        }
        Ok(line)
    }

    /// Makes every record written so far durable.
    pub fn sync(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        for dir in &self.sync_first {
            sync_dir(dir);
        }
        self.file
            .sync_data()
            .map_err(|e| PrsError::io(&self.path, e))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// The job's sink: commits each mini-batch's results to the output's staged sink (when the
/// job keeps results and run() returned some: a succeeded mini-batch, or a failed one whose
/// good items bisection committed), then writes the mini-batch's record, naming the part, to
/// the ledger. Every mini-batch that reaches a final status passes here, failed ones too
/// (with `dead_letter_rows`, after the operator wrote the input of its failed items to
/// `failed_rows/`).
pub struct LedgerSink {
    output: Option<Arc<StagedSink>>,
    /// `None` until the ledger is opened (SQL opens it when the statement first executes).
    writer: Mutex<Option<LedgerWriter>>,
    /// Time spent writing and syncing records, in nanoseconds.
    nanos: std::sync::atomic::AtomicU64,
    /// Where records also go (an object-storage output's bucket, see [`bucket`]).
    replica: Mutex<Option<bucket::ReplicaSender>>,
}

impl std::fmt::Debug for LedgerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSink").finish()
    }
}

impl LedgerSink {
    /// A sink writing to `writer`, committing results to `output`.
    pub fn new(output: Option<Arc<StagedSink>>, writer: LedgerWriter) -> Self {
        LedgerSink {
            output,
            writer: Mutex::new(Some(writer)),
            nanos: std::sync::atomic::AtomicU64::new(0),
            replica: Mutex::new(None),
        }
    }

    /// A sink whose ledger is opened later ([`LedgerSink::open_with`]), before the first
    /// mini-batch finishes.
    pub fn unopened(output: Option<Arc<StagedSink>>) -> Self {
        LedgerSink {
            output,
            writer: Mutex::new(None),
            nanos: std::sync::atomic::AtomicU64::new(0),
            replica: Mutex::new(None),
        }
    }

    /// Starts writing to `writer`.
    pub fn open_with(&self, writer: LedgerWriter) {
        *crate::lock(&self.writer) = Some(writer);
    }

    /// Also queues each record, with its part, for the bucket (`replica`).
    pub fn with_replica(self, replica: bucket::ReplicaSender) -> Self {
        *crate::lock(&self.replica) = Some(replica);
        self
    }

    /// Syncs the records written so far (the run ends) and stops queueing them for the
    /// bucket.
    pub fn close(&self) -> Result<()> {
        crate::lock(&self.replica).take();
        let t = Instant::now();
        let result = match crate::lock(&self.writer).as_mut() {
            Some(writer) => writer.sync(),
            None => Ok(()),
        };
        self.add_time(t.elapsed());
        result
    }

    /// Time spent writing and syncing records (waiting for the lock included).
    pub fn time(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn add_time(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.nanos
            .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
    }
}

impl MiniBatchSink for LedgerSink {
    fn commit(&self, done: &CompletedMiniBatch) -> Result<()> {
        let part = match &self.output {
            Some(output) if done.result.is_some() => output.commit_part(done)?,
            _ => None,
        };
        let t = Instant::now();
        let mut writer = crate::lock(&self.writer);
        let result = match writer.as_mut() {
            Some(writer) => writer.append(done, part.clone()).map(|line| {
                // Queued under the writer's lock: the bucket gets the records in file order.
                if let Some(replica) = crate::lock(&self.replica).as_ref() {
                    replica.send(line, part.as_ref());
                }
            }),
            None => Err(ledger_error(
                "records",
                "the ledger was not opened before the first mini-batch finished",
            )),
        };
        self.add_time(t.elapsed());
        result
    }
}

fn ledger_error(what: &str, e: impl std::fmt::Display) -> PrsError {
    PrsError::Output {
        path: format!("ledger {what}"),
        message: e.to_string(),
    }
}

/// How a run of a job treats what an earlier run left in its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResumeOptions {
    /// Fresh, resume, or resume and re-run the failed mini-batches.
    pub mode: ResumeMode,
    /// Resume even though output-affecting settings or input slices changed.
    pub force: bool,
}

impl ResumeOptions {
    /// Continue an interrupted run (`--resume`).
    pub fn resume() -> Self {
        ResumeOptions {
            mode: ResumeMode::Resume,
            force: false,
        }
    }
}

/// Makes the output folder ready for a run with `options` and returns the mode the run
/// really has. A fresh run on a folder holding an unfinished job (a ledger, and no run that
/// finished it) is refused unless `overwrite` (`--restart`), with the commands that continue
/// it; a finished one is handled by [`crate::output::prepare_output_dir`] (refused unless
/// `overwrite`). A resume with no ledger to continue says so and runs from the start; a
/// resume of a job that finished with nothing failed is refused (nothing to do).
pub fn prepare_run(
    output_dir: &Path,
    log_dir: &Path,
    final_name: &str,
    options: ResumeOptions,
    overwrite: bool,
) -> Result<ResumeMode> {
    let dir = ledger_dir(log_dir);
    let has_ledger = dir.join(HEADER_FILE).is_file();
    let finished = finished_status(log_dir);
    let fresh = |overwrite| {
        crate::output::prepare_output_dir(output_dir, final_name, overwrite)?;
        Ok(ResumeMode::Fresh)
    };
    match options.mode {
        ResumeMode::Fresh => {
            if has_ledger && finished.as_deref() != Some("succeeded") && !overwrite {
                let entries = final_entries(read_entries(&dir)?);
                let failed = entries.values().filter(|e| !e.record.succeeded()).count();
                return Err(PrsError::config(
                    "output",
                    output_dir.display(),
                    format!(
                        "holds an unfinished job ({} mini-batch(es) finished, {failed} of them \
                         failed; see `parallel-run status {}`). Run again with --resume to \
                         continue it, --rerun-failed to continue and retry the failed \
                         mini-batches, or --restart to discard its work and start over",
                        entries.len(),
                        output_dir.display()
                    ),
                ));
            }
            fresh(overwrite)
        }
        mode => {
            if overwrite {
                return Err(PrsError::config(
                    mode.flag(),
                    output_dir.display(),
                    "cannot be combined with --restart / --overwrite, which discard the work \
                     a resume continues: choose one",
                ));
            }
            if !has_ledger {
                eprintln!(
                    "parallel-run: nothing to resume in {} (no job ledger): running the job \
                     from the start",
                    output_dir.display()
                );
                return fresh(false);
            }
            if finished.as_deref() == Some("succeeded") {
                let failed = final_entries(read_entries(&dir)?)
                    .values()
                    .filter(|e| !e.record.succeeded())
                    .count();
                if failed == 0 || mode == ResumeMode::Resume {
                    return Err(PrsError::config(
                        mode.flag(),
                        output_dir.display(),
                        format!(
                            "holds a job that already finished successfully ({failed} failed \
                             mini-batch(es)): nothing to resume. {}Use --overwrite to run it \
                             again from the start",
                            if failed > 0 {
                                "Use --rerun-failed to retry its failed mini-batches. "
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                if !staging_parts_kept(output_dir) {
                    return Err(PrsError::config(
                        mode.flag(),
                        output_dir.display(),
                        "holds a finished job whose committed parts were removed (by \
                         `parallel-run clean`?): its output cannot be rebuilt. Use --overwrite \
                         to run it again from the start",
                    ));
                }
            }
            Ok(mode)
        }
    }
}

/// The status `job_summary.json` in `log_dir` states (`succeeded` / `failed`), if any.
pub fn finished_status(log_dir: &Path) -> Option<String> {
    let bytes = fs::read(log_dir.join("job_summary.json")).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("status")?.as_str().map(str::to_string)
}

fn staging_parts_kept(output_dir: &Path) -> bool {
    crate::output::staging_dir(output_dir)
        .join("parts")
        .is_dir()
}
