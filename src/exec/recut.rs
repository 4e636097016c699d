//! File-backed table inputs cut before they are read: local Parquet from its footers, and
//! DataFusion file scans (CSV and JSON by source bytes, Parquet through a store from its
//! footers: [`crate::input::FileScan`]).
//!
//! The mini-batches of a local Parquet input (a [`LocalParquetExec`] under column-only
//! projections) are cut before anything is read: their row ranges come from the files'
//! footers ([`LocalParquetExec::footer_cut`]), their fingerprints from the files' identities
//! ([`footer_fingerprint`]). A local run reads the rows and slices the record batches at
//! those boundaries ([`FooterCut::feed`]); a cluster driver reads nothing and sends the
//! executors where each mini-batch's rows are ([`FooterCut::descriptor`]). Both cut the same
//! mini-batches with the same ids and fingerprints, whatever the batch size, workers or
//! nodes.
//!
//! A resumed job knows, before reading, which of its mini-batches the ledger holds with the
//! same fingerprint: the scan leaves out the reader batches lying wholly inside runs of
//! them ([`LocalParquetExec::without_rows`]), so their pages are not read or decoded, and the
//! rows of theirs it still gets are dropped. A ledger mini-batch whose fingerprint differs
//! (the files changed, or the job was started by a version that cut Parquet inputs by their
//! decoded size) refuses the resume before anything runs, unless it is forced.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::batch::{compact_concat, ItemKind, Lineage, MiniBatch, MiniBatchId};
use crate::error::{PrsError, Result};
use crate::exec::dispatch::{ResumeSkips, SkippedMiniBatch};
use crate::input::{
    footer_fingerprint, parts_fingerprint, FileScan, LocalParquetExec, ReadFrom, RowLocator,
    ScanCut,
};

/// One step of a footer-cut input.
pub(crate) enum Step {
    /// A mini-batch to run, with its fingerprint and, when its rows were not read, where they
    /// are.
    Cut(MiniBatch, u64, Option<ReadFrom>),
    /// A mini-batch an earlier run finished (not read).
    Skipped(MiniBatchId, Box<SkippedMiniBatch>),
}

/// The cut of one local Parquet input: its mini-batches' row ranges, which of them an
/// earlier run finished, and how far the scan has been read.
pub(crate) struct FooterCut {
    input: Arc<str>,
    ordinal: u32,
    schema: SchemaRef,
    locate: Locate,
    bounds: Vec<Range<u64>>,
    /// The skipped mini-batches, by sequence number.
    skipped: HashMap<u64, SkippedMiniBatch>,
    /// Rows the scan leaves out (inside skipped mini-batches), in order.
    omitted: VecDeque<Range<u64>>,
    /// The row the next batch from the scan starts at.
    pos: u64,
    /// The mini-batch being filled.
    next: usize,
    pending: Vec<RecordBatch>,
    /// Rows the scan does not read.
    pub rows_not_read: u64,
}

/// Where the rows of a cut input's mini-batches are.
enum Locate {
    /// A local Parquet input, cut from its footers.
    Footer(RowLocator),
    /// A DataFusion file scan (CSV and JSON byte ranges, Parquet through a store).
    Parts(ScanCut),
}

/// The local Parquet scan an input's plan reads, when the plan is that scan under
/// column-only projections and cooperative-scheduling wrappers (nothing that changes or
/// reorders its rows or batches).
pub(crate) fn local_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<&LocalParquetExec> {
    if let Some(scan) = plan.downcast_ref::<LocalParquetExec>() {
        return Some(scan);
    }
    if let Some(coop) = plan.downcast_ref::<CooperativeExec>() {
        return local_scan(coop.input());
    }
    let projection = plan.downcast_ref::<ProjectionExec>()?;
    let plain = projection
        .expr()
        .iter()
        .all(|e| e.expr.downcast_ref::<Column>().is_some());
    if plain {
        local_scan(projection.input())
    } else {
        None
    }
}

/// `plan` with its local Parquet scan replaced by `scan`.
fn with_scan(
    plan: &Arc<dyn ExecutionPlan>,
    scan: LocalParquetExec,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    if plan.is::<LocalParquetExec>() {
        return Ok(Arc::new(scan));
    }
    let child = plan.children().into_iter().next().cloned().ok_or_else(|| {
        datafusion::error::DataFusionError::Internal(format!(
            "{} has no input to re-cut",
            plan.name()
        ))
    })?;
    let child = with_scan(&child, scan)?;
    // The scan's properties are the same with fewer rows read.
    plan.clone().replace_children(
        vec![child],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
}

/// The source identity of an input's plan ([`LocalParquetExec::source_identity`]) when it
/// reads local Parquet files as they are.
pub(crate) fn source_identity(plan: &Arc<dyn ExecutionPlan>, batch_size: usize) -> Option<u64> {
    local_scan(plan).map(|scan| scan.source_identity(batch_size))
}

impl FooterCut {
    /// The cut of input number `ordinal` (named `input`) read by `plan`, in mini-batches of
    /// about `target_bytes`, and the plan that leaves out what a resume skips (`skips`,
    /// reader batches of `batch_size` rows); `None` when `plan` is neither a local Parquet
    /// scan nor, for a `declared` input (a path in the job), a file scan (its files are read
    /// from `context`'s stores to cut them). A mini-batch of the ledger whose slice is not
    /// the one cut now refuses the resume, unless slices are not checked (`--force`: it
    /// runs again).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn prepare(
        plan: &Arc<dyn ExecutionPlan>,
        context: &TaskContext,
        declared: bool,
        input: &str,
        ordinal: u32,
        target_bytes: u64,
        skips: Option<&ResumeSkips>,
        batch_size: usize,
    ) -> Result<Option<(Arc<dyn ExecutionPlan>, FooterCut)>> {
        let local = local_scan(plan);
        // A file scan is cut as descriptors when the input is declared (a path, not a
        // query): an executor rebuilds its plan from that declaration.
        let scan = FileScan::of(plan).filter(|_| declared);
        let (locate, bounds) = match (local, scan) {
            (Some(scan), _) => (
                Locate::Footer(scan.locator()),
                scan.footer_cut(target_bytes),
            ),
            (None, Some(scan)) => {
                let started = std::time::Instant::now();
                let cut = scan
                    .cut(context, &plan.schema(), target_bytes)
                    .await
                    .map_err(|e| PrsError::Input {
                        input: input.to_string(),
                        location: "cutting into mini-batches".into(),
                        message: e.to_string(),
                    })?;
                let bounds = cut.bounds();
                tracing::info!(
                    "input {input:?}: cut into {} mini-batches from {} files ({} bytes) in {} ms",
                    bounds.len(),
                    cut.files(),
                    cut.bytes(),
                    started.elapsed().as_millis()
                );
                (Locate::Parts(cut), bounds)
            }
            (None, None) => return Ok(None),
        };
        let mut cut = FooterCut {
            input: Arc::from(input),
            ordinal,
            schema: plan.schema(),
            locate,
            bounds,
            skipped: HashMap::new(),
            omitted: VecDeque::new(),
            pos: 0,
            next: 0,
            pending: Vec::new(),
            rows_not_read: 0,
        };
        let Some(skips) = skips else {
            return Ok(Some((plan.clone(), cut)));
        };
        for id in skips.ids() {
            if id.input != ordinal || id.is_derived() {
                continue;
            }
            let Some(skipped) = skips.get(&id) else {
                continue;
            };
            let now = cut.bounds.get(id.seq as usize).cloned();
            let same = now
                .as_ref()
                .is_some_and(|_| cut.fingerprint(id.seq as usize) == skipped.fingerprint);
            if same {
                cut.skipped.insert(id.seq, skipped);
            } else if skips.check_slices() {
                return Err(cut.changed(id, &skipped, now));
            }
        }
        let mut runs: Vec<Range<u64>> = Vec::new();
        let mut seqs: Vec<u64> = cut.skipped.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let rows = cut.bounds[seq as usize].clone();
            match runs.last_mut() {
                Some(run) if run.end == rows.start => run.end = rows.end,
                _ => runs.push(rows),
            }
        }
        // A file scan's skipped rows are read and dropped; a local Parquet scan leaves them
        // out.
        let Some(scan) = local.filter(|_| !runs.is_empty()) else {
            return Ok(Some((plan.clone(), cut)));
        };
        let (scan, omitted) = scan.without_rows(&runs, batch_size);
        let plan = with_scan(plan, scan).map_err(|e| PrsError::Input {
            input: input.to_string(),
            location: "resume".into(),
            message: e.to_string(),
        })?;
        cut.rows_not_read = omitted.iter().map(|o| o.end - o.start).sum();
        cut.omitted = omitted.into();
        Ok(Some((plan, cut)))
    }

    /// The number of mini-batches.
    pub(crate) fn len(&self) -> usize {
        self.bounds.len()
    }

    /// The fingerprint of mini-batch `seq` ([`footer_fingerprint`], [`parts_fingerprint`]).
    fn fingerprint(&self, seq: usize) -> u64 {
        let id = MiniBatchId::new(self.ordinal, seq as u64);
        match self.read_from(seq) {
            ReadFrom::Rows(rows) => footer_fingerprint(id, &rows, &self.schema),
            ReadFrom::Parts(parts) => parts_fingerprint(id, &parts, &self.schema),
        }
    }

    /// Where the rows of mini-batch `seq` are.
    fn read_from(&self, seq: usize) -> ReadFrom {
        let rows = self.bounds.get(seq).cloned().unwrap_or(0..0);
        match &self.locate {
            Locate::Footer(locator) => ReadFrom::Rows(locator.locate(rows)),
            Locate::Parts(cut) => {
                ReadFrom::Parts(cut.parts(seq).unwrap_or(crate::input::PartsInFiles {
                    rows,
                    store: String::new(),
                    parts: Vec::new(),
                }))
            }
        }
    }

    /// Mini-batch `seq` as a descriptor (its rows not read: an executor reads them), or its
    /// skip.
    pub(crate) fn descriptor(&mut self, seq: usize) -> Step {
        if let Some(skipped) = self.skipped.remove(&(seq as u64)) {
            return Step::Skipped(
                MiniBatchId::new(self.ordinal, seq as u64),
                Box::new(skipped),
            );
        }
        let data = RecordBatch::new_empty(self.schema.clone());
        let read = self.read_from(seq);
        let id = MiniBatchId::new(self.ordinal, seq as u64);
        let fingerprint = match &read {
            ReadFrom::Rows(rows) => footer_fingerprint(id, rows, &self.schema),
            ReadFrom::Parts(parts) => parts_fingerprint(id, parts, &self.schema),
        };
        Step::Cut(self.mini_batch(seq, data), fingerprint, Some(read))
    }

    fn mini_batch(&self, seq: usize, data: RecordBatch) -> MiniBatch {
        MiniBatch {
            id: MiniBatchId::new(self.ordinal, seq as u64),
            kind: ItemKind::Rows,
            data,
            lineage: Lineage {
                input: self.input.clone(),
                rows: self.bounds.get(seq).cloned().unwrap_or(0..0),
            },
            partition_key_value: Default::default(),
        }
    }

    /// Cuts the next batch of the scan at the boundaries, passing the skipped mini-batches
    /// it reaches.
    pub(crate) fn feed(&mut self, batch: &RecordBatch, out: &mut Vec<Step>) -> Result<()> {
        self.advance(out)?;
        let start = self.pos;
        let end = start + batch.num_rows() as u64;
        self.pos = end;
        let mut cur = start;
        while cur < end {
            let Some(bound) = self.bounds.get(self.next).cloned() else {
                return Err(self.shape_error(format!(
                    "it has more rows than when it was cut into mini-batches ({})",
                    self.bounds.last().map_or(0, |b| b.end)
                )));
            };
            let upto = bound.end.min(end);
            if !self.skipped.contains_key(&(self.next as u64)) {
                let from = (cur - start) as usize;
                self.pending.push(batch.slice(from, (upto - cur) as usize));
            }
            cur = upto;
            if cur == bound.end {
                self.close(out)?;
            }
        }
        Ok(())
    }

    /// The end of the scan: passes the skipped mini-batches it ends with; refuses when
    /// rows the cut promised did not come.
    pub(crate) fn finish(&mut self, out: &mut Vec<Step>) -> Result<()> {
        self.advance(out)?;
        if self.next < self.bounds.len() {
            return Err(self.shape_error(format!(
                "it ended at row {}, before the {} rows it had when it was cut into mini-batches",
                self.pos,
                self.bounds.last().map_or(0, |b| b.end)
            )));
        }
        Ok(())
    }

    /// Passes the rows the scan leaves out at the current position, and the mini-batches
    /// they end.
    fn advance(&mut self, out: &mut Vec<Step>) -> Result<()> {
        while let Some(o) = self
            .omitted
            .front()
            .filter(|o| o.start == self.pos)
            .cloned()
        {
            self.omitted.pop_front();
            self.pos = o.end;
            while self.bounds.get(self.next).is_some_and(|b| b.end <= o.end) {
                if !self.skipped.contains_key(&(self.next as u64)) || !self.pending.is_empty() {
                    return Err(self.shape_error(format!(
                        "rows {}..{} were left out, but mini batch {}-{} is not skipped",
                        o.start, o.end, self.ordinal, self.next
                    )));
                }
                self.close(out)?;
            }
        }
        Ok(())
    }

    /// Ends the mini-batch being filled.
    fn close(&mut self, out: &mut Vec<Step>) -> Result<()> {
        let seq = self.next;
        self.next += 1;
        if let Some(skipped) = self.skipped.remove(&(seq as u64)) {
            self.pending.clear();
            out.push(Step::Skipped(
                MiniBatchId::new(self.ordinal, seq as u64),
                Box::new(skipped),
            ));
            return Ok(());
        }
        let data = compact_concat(&self.schema, &self.pending)?;
        self.pending.clear();
        let fingerprint = self.fingerprint(seq);
        out.push(Step::Cut(self.mini_batch(seq, data), fingerprint, None));
        Ok(())
    }

    fn shape_error(&self, what: String) -> PrsError {
        PrsError::Input {
            input: self.input.to_string(),
            location: "scan".into(),
            message: match self.locate {
                Locate::Footer(_) => format!(
                    "{what}: a file changed while the job ran; inputs must not change while a \
                     job runs"
                ),
                Locate::Parts(_) => format!(
                    "{what}: a file changed while the job ran, or its text holds records the \
                     cut does not see as DataFusion reads them (the cut counts one record per \
                     non-blank line of JSON, and CSV records by their line ends outside \
                     quotes: e.g. two JSON objects on one line, or a line ending in \\r alone, \
                     are not). Inputs must not change while a job runs; fix the file, or read \
                     the input through a sql: input (cut as it is read)"
                ),
            },
        }
    }

    /// The refusal of a resume whose mini-batch `id` (committed as `skipped`) is not the
    /// slice cut now (`now`: its rows now, if it still exists).
    fn changed(
        &self,
        id: MiniBatchId,
        skipped: &SkippedMiniBatch,
        now: Option<Range<u64>>,
    ) -> PrsError {
        let then = &skipped.record.lineage.rows;
        let now = match now {
            Some(rows) => format!("rows {}..{} now", rows.start, rows.end),
            None => format!("the input now has only {} mini-batches", self.bounds.len()),
        };
        PrsError::config(
            "--resume",
            format!("mini batch {id}"),
            format!(
                "input {:?} is not cut as it was when mini-batch {id} (rows {}..{}; {now}) was \
                 committed: its files changed since (path, size, modification time or rows), \
                 or the job was started by a version of parallel-run that cut Parquet, CSV \
                 and JSON inputs by the decoded size of their rows (they are now cut from \
                 the files' footers and source bytes; see CHANGELOG.md). The committed results no longer match the input: run with \
                 --restart to start over, restore the input, or add --force to keep the \
                 committed results anyway",
                self.input.as_ref(),
                then.start,
                then.end
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{MiniBatchRecord, MiniBatchStatus};
    use crate::input::LocalParquetTable;
    use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    use datafusion::physical_plan::ExecutionPlanProperties;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use futures::StreamExt;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use std::time::SystemTime;

    /// Rows `from..to`: an id and a text of varying width.
    fn batch(from: i64, to: i64) -> RecordBatch {
        let ids = Int64Array::from_iter_values(from..to);
        let text = StringArray::from_iter_values((from..to).map(|i| "x".repeat((i % 37) as usize)));
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(ids) as ArrayRef),
            ("t", Arc::new(text) as ArrayRef),
        ])
        .unwrap()
    }

    fn write(path: &std::path::Path, batch: &RecordBatch, group_rows: usize) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .set_data_page_row_count_limit(100)
            .set_dictionary_enabled(false)
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    /// Three files of 1000, 700 and 1300 rows in groups of 300, 250 and 1000 rows.
    fn files() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("a.parquet"), &batch(0, 1000), 300);
        write(&d.path().join("b.parquet"), &batch(1000, 1700), 250);
        write(&d.path().join("c.parquet"), &batch(1700, 3000), 1000);
        d
    }

    async fn plan(
        dir: &std::path::Path,
        batch_size: usize,
    ) -> (SessionContext, Arc<dyn ExecutionPlan>) {
        let config = SessionConfig::new().with_batch_size(batch_size);
        let ctx = SessionContext::new_with_config(config);
        let folder = format!("{}/", dir.display());
        let table = LocalParquetTable::try_new(&ctx.state(), &folder, ".parquet")
            .await
            .unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let plan = ctx
            .sql("SELECT id, t FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        (ctx, plan)
    }

    /// What a step says: id, rows, fingerprint, skipped.
    type Seen = (String, Range<u64>, u64, bool);

    /// Cuts `plan` at 8 KB reading its rows, with `skips`: the steps, checking every cut
    /// mini-batch holds exactly its rows.
    async fn cut(
        ctx: &SessionContext,
        plan: &Arc<dyn ExecutionPlan>,
        skips: Option<&ResumeSkips>,
    ) -> Result<(Vec<Seen>, u64)> {
        let batch_size = ctx.state().config().batch_size();
        let (plan, mut footer) = FooterCut::prepare(
            plan,
            &ctx.task_ctx(),
            true,
            "rows",
            0,
            8 * 1024,
            skips,
            batch_size,
        )
        .await?
        .unwrap();
        let mut steps = Vec::new();
        for p in 0..plan.output_partitioning().partition_count() {
            let mut stream = plan.execute(p, ctx.task_ctx()).unwrap();
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| PrsError::Input {
                    input: "rows".into(),
                    location: "scan".into(),
                    message: e.to_string(),
                })?;
                footer.feed(&b, &mut steps)?;
            }
        }
        footer.finish(&mut steps)?;
        Ok((seen(steps, true), footer.rows_not_read))
    }

    fn seen(steps: Vec<Step>, with_rows: bool) -> Vec<Seen> {
        steps
            .into_iter()
            .map(|s| match s {
                Step::Cut(mb, fingerprint, _) => {
                    let rows = mb.lineage.rows.clone();
                    if with_rows {
                        let ids = mb
                            .data
                            .column(0)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap();
                        let expected: Vec<i64> = (rows.start as i64..rows.end as i64).collect();
                        assert_eq!(ids.values().to_vec(), expected, "{}", mb.id);
                    } else {
                        assert_eq!(mb.data.num_rows(), 0);
                    }
                    (mb.id.to_string(), rows, fingerprint, false)
                }
                Step::Skipped(id, s) => {
                    (id.to_string(), s.record.lineage.rows, s.fingerprint, true)
                }
            })
            .collect()
    }

    async fn descriptors(
        plan: &Arc<dyn ExecutionPlan>,
        skips: Option<&ResumeSkips>,
    ) -> Result<Vec<Seen>> {
        let ctx = SessionContext::new();
        let (_, mut footer) =
            FooterCut::prepare(plan, &ctx.task_ctx(), true, "rows", 0, 8 * 1024, skips, 64)
                .await?
                .unwrap();
        let steps = (0..footer.len())
            .map(|seq| footer.descriptor(seq))
            .collect();
        Ok(seen(steps, false))
    }

    fn skips(full: &[Seen], seqs: &[usize], fingerprint: impl Fn(u64) -> u64) -> ResumeSkips {
        let mut skips = ResumeSkips::default();
        skips.set_check_slices(true);
        for &seq in seqs {
            let (id, rows, f, _) = &full[seq];
            let id: MiniBatchId = id.parse().unwrap();
            let record = MiniBatchRecord {
                id,
                index: id.seq,
                lineage: Lineage {
                    input: Arc::from("rows"),
                    rows: rows.clone(),
                },
                partition_key_value: Default::default(),
                tries: 1,
                process: "process000".into(),
                start_time: SystemTime::now(),
                total_items: rows.end - rows.start,
                succeeded_items: rows.end - rows.start,
                failed_items: 0,
                elapsed_seconds: 0.0,
                run_seconds: 0.0,
                status: MiniBatchStatus::Succeeded,
                error_message: String::new(),
                traceback: None,
                earlier_errors: Vec::new(),
                bisection_calls: 0,
                isolated: Vec::new(),
            };
            let skipped = SkippedMiniBatch {
                record,
                fingerprint: fingerprint(*f),
                source: None,
            };
            skips.insert(id, skipped);
        }
        skips
    }

    #[tokio::test]
    async fn the_cut_comes_from_the_footers_whatever_the_batch_size() {
        let d = files();
        let (ctx, p) = plan(d.path(), 128).await;
        let (full, not_read) = cut(&ctx, &p, None).await.unwrap();
        assert_eq!(not_read, 0);
        assert!(full.len() > 8, "{} mini-batches", full.len());
        // Contiguous, complete, in order; at least one spans two files.
        let mut next = 0;
        for (seq, (id, rows, _, _)) in full.iter().enumerate() {
            assert_eq!(id, &format!("0-{seq}"));
            assert_eq!(rows.start, next);
            next = rows.end;
        }
        assert_eq!(next, 3000);
        assert!(full
            .iter()
            .any(|(_, r, _, _)| r.start < 1000 && r.end > 1000));
        // Another batch size: the same mini-batches, ids and fingerprints.
        for batch_size in [1, 7, 1000, 8192] {
            let (ctx, p) = plan(d.path(), batch_size).await;
            assert_eq!(
                cut(&ctx, &p, None).await.unwrap().0,
                full,
                "batch size {batch_size}"
            );
        }
        // The cluster driver's cut (no rows read): the same.
        assert_eq!(descriptors(&p, None).await.unwrap(), full);
    }

    #[tokio::test]
    async fn a_resume_skips_without_reading_and_cuts_the_rest_as_a_full_run() {
        let d = files();
        let (ctx, p) = plan(d.path(), 50).await;
        let (full, _) = cut(&ctx, &p, None).await.unwrap();
        let n = full.len();
        let cases: Vec<Vec<usize>> = vec![
            (0..n).collect(),
            (0..3).collect(),
            (n - 3..n).collect(),
            vec![0, 2, 3, 4, n - 2],
            (0..n).filter(|i| i % 3 != 1).collect(),
        ];
        for seqs in cases {
            let skips = skips(&full, &seqs, |f| f);
            let expected: Vec<Seen> = full
                .iter()
                .enumerate()
                .map(|(i, (id, r, f, _))| (id.clone(), r.clone(), *f, seqs.contains(&i)))
                .collect();
            let (got, not_read) = cut(&ctx, &p, Some(&skips)).await.unwrap();
            assert_eq!(got, expected, "skipping {seqs:?}");
            if seqs.len() == n {
                assert_eq!(not_read, 3000, "nothing read when everything is skipped");
            }
            assert_eq!(descriptors(&p, Some(&skips)).await.unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_ledger_of_another_cut_is_refused_before_anything_is_read() {
        let d = files();
        let (ctx, p) = plan(d.path(), 50).await;
        let (full, _) = cut(&ctx, &p, None).await.unwrap();
        // Fingerprints of the rows' values (an earlier version's ledger): refused, saying
        // what to do.
        let old = skips(&full, &[0, 1, 2], |f| f ^ 1);
        let task = ctx.task_ctx();
        let prepared = FooterCut::prepare(&p, &task, true, "rows", 0, 8 * 1024, Some(&old), 50);
        let err = match prepared.await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a ledger of another cut was accepted"),
        };
        assert!(
            err.contains("mini batch 0-0") && err.contains("--restart") && err.contains("footers"),
            "{err}"
        );
        // Forced: nothing skipped, everything cut again.
        let mut forced = skips(&full, &[0, 1, 2], |f| f ^ 1);
        forced.set_check_slices(false);
        let (got, _) = cut(&ctx, &p, Some(&forced)).await.unwrap();
        assert_eq!(got, full);
        // A file touched since: its mini-batches' fingerprints differ.
        let (_, p2) = {
            let f = std::fs::File::options()
                .write(true)
                .open(d.path().join("c.parquet"))
                .unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
                .unwrap();
            plan(d.path(), 50).await
        };
        let (again, _) = cut(&ctx, &p2, None).await.unwrap();
        assert_eq!(again.len(), full.len());
        let last = full.len() - 1;
        assert_ne!(again[last].2, full[last].2);
        assert_eq!(again[0].2, full[0].2, "a.parquet is the same");
        let stale = skips(&full, &[last], |f| f);
        let prepared = FooterCut::prepare(&p2, &task, true, "rows", 0, 8 * 1024, Some(&stale), 50);
        assert!(prepared.await.is_err());
    }

    #[tokio::test]
    async fn the_descriptor_cut_reads_no_rows() {
        let d = files();
        let (ctx, p) = plan(d.path(), 64).await;
        let (full, _) = cut(&ctx, &p, None).await.unwrap();
        // Every data page of b.parquet overwritten (its footer kept): reading it fails, the
        // cut from the footers does not notice.
        let path = d.path().join("b.parquet");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        for b in &mut bytes[4..n - 8 - footer] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            cut(&ctx, &p, None).await.is_err() || {
                // The reader may fail as a panic-free error inside the stream.
                false
            }
        );
        assert_eq!(descriptors(&p, None).await.unwrap(), full);
    }

    #[tokio::test]
    async fn a_declared_csv_input_is_cut_as_byte_ranges_the_same_read_or_not() {
        use crate::config::{InputFormat, InputSpec};
        use crate::input::{parts_fingerprint, register_inputs};
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("id,text\n");
        for i in 0..100 {
            text.push_str(&format!("{i},\"row {i}\nof text\"\n"));
        }
        std::fs::write(dir.path().join("a.csv"), text).unwrap();
        let ctx = crate::input::job_session();
        let spec = InputSpec::path("t", format!("{}/", dir.path().display()), InputFormat::Csv);
        let prepared = register_inputs(&ctx, &[spec]).await.unwrap();
        let plan = ctx
            .state()
            .create_physical_plan(&prepared[0].plan)
            .await
            .unwrap();
        let task = ctx.task_ctx();
        // A query's plan (not declared) keeps the stream cut.
        let query = FooterCut::prepare(&plan, &task, false, "t", 0, 200, None, 64).await;
        assert!(query.unwrap().is_none());
        let (read, mut cut) = FooterCut::prepare(&plan, &task, true, "t", 0, 200, None, 64)
            .await
            .unwrap()
            .unwrap();
        assert!(cut.len() > 5, "{}", cut.len());
        // As descriptors: no rows, where they are, and a fingerprint of that.
        let mut described = Vec::new();
        for seq in 0..cut.len() {
            match cut.descriptor(seq) {
                Step::Cut(mb, fingerprint, Some(ReadFrom::Parts(parts))) => {
                    assert_eq!(mb.data.num_rows(), 0);
                    assert_eq!(mb.lineage.rows, parts.rows);
                    assert_eq!(
                        fingerprint,
                        parts_fingerprint(mb.id, &parts, &plan.schema())
                    );
                    described.push((mb.id, mb.lineage.rows, fingerprint));
                }
                _ => panic!("mini-batch {seq} is not a descriptor"),
            }
        }
        // Read locally: the same mini-batches, holding their rows.
        let mut steps = Vec::new();
        let mut stream = read.execute(0, task.clone()).unwrap();
        while let Some(batch) = stream.next().await {
            cut.feed(&batch.unwrap(), &mut steps).unwrap();
        }
        cut.finish(&mut steps).unwrap();
        let mut local = Vec::new();
        for step in steps {
            match step {
                Step::Cut(mb, fingerprint, None) => {
                    let rows = mb.lineage.rows.clone();
                    assert_eq!(mb.data.num_rows() as u64, rows.end - rows.start);
                    local.push((mb.id, rows, fingerprint));
                }
                _ => panic!("not a cut mini-batch"),
            }
        }
        assert_eq!(local, described);
        assert_eq!(local.last().map(|l| l.1.end), Some(100));
    }
}
