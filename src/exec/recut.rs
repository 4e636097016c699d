//! Resuming without reading again what is skipped.
//!
//! A resumed job skips the mini-batches its ledger holds. In general it cuts the input again to
//! find them (reading every row, checking each skipped slice's fingerprint). For a local
//! Parquet input whose source is unchanged since those mini-batches were cut (the same files
//! with the same sizes, modification times and rows, the same columns and batch size: the
//! source identity recorded with each mini-batch), the dispatcher takes their row ranges from
//! the ledger instead:
//!
//! - the scan leaves out the reader batches lying wholly inside a run of skipped mini-batches
//!   ([`LocalParquetExec::without_rows`]), so their pages are not read or decoded;
//! - the chunker drops the skipped rows of the batches it still gets, counts the run's
//!   mini-batches as skipped, and continues cutting at the run's end with the next sequence
//!   number, exactly where a full run would: a record batch is sized as a whole, whatever
//!   part of it is cut ([`ByteChunker::push_rows`]).
//!
//! Every run must start at a mini-batch boundary of the re-cut; if one does not (something
//! the identity does not cover changed), the resume is refused as a changed slice is.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::batch::{ByteChunker, MiniBatch, MiniBatchId};
use crate::error::{PrsError, Result};
use crate::exec::dispatch::{ResumeSkips, SkippedMiniBatch};
use crate::input::LocalParquetExec;

/// One step of a re-cut input.
pub(crate) enum Step {
    /// A mini-batch to run.
    Cut(MiniBatch),
    /// A mini-batch an earlier run finished, not read.
    Skipped(MiniBatchId, Box<SkippedMiniBatch>),
}

/// Consecutive skipped mini-batches: their rows, and the mini-batches in order.
struct SkipRun {
    rows: Range<u64>,
    mini_batches: Vec<(MiniBatchId, SkippedMiniBatch)>,
}

/// The re-cut of one input: where the skipped runs are, what the scan leaves out, and how far
/// the input has been read.
pub(crate) struct Recut {
    input: String,
    runs: VecDeque<SkipRun>,
    omitted: VecDeque<Range<u64>>,
    /// The row (of the whole input) the next batch from the scan starts at.
    pos: u64,
    /// Rows before this one are skipped (inside the run being passed).
    discard_until: u64,
    /// Rows the scan does not read.
    pub rows_not_read: u64,
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

impl Recut {
    /// The re-cut of input number `ordinal` (named `input`), read by `plan` whose source has
    /// `identity`, and the plan that leaves out what it skips; `None` when the input must be
    /// read whole (a forced resume, nothing skipped, or a skipped mini-batch cut from another
    /// source or without a recorded identity).
    pub(crate) fn prepare(
        plan: &Arc<dyn ExecutionPlan>,
        input: &str,
        ordinal: u32,
        skips: &ResumeSkips,
        identity: u64,
        batch_size: usize,
    ) -> Result<Option<(Arc<dyn ExecutionPlan>, Recut)>> {
        let Some(scan) = local_scan(plan) else {
            return Ok(None);
        };
        if !skips.check_slices() {
            return Ok(None);
        }
        let mut skipped: Vec<(MiniBatchId, SkippedMiniBatch)> = skips
            .ids()
            .into_iter()
            .filter(|id| id.input == ordinal && !id.is_derived())
            .filter_map(|id| skips.get(&id).map(|s| (id, s)))
            .collect();
        if skipped.is_empty() || skipped.iter().any(|(_, s)| s.source != Some(identity)) {
            return Ok(None);
        }
        skipped.sort_by_key(|(id, _)| id.seq);
        let mut runs: Vec<SkipRun> = Vec::new();
        for (id, s) in skipped {
            let rows = s.record.lineage.rows.clone();
            if rows.is_empty() {
                return Ok(None);
            }
            match runs.last_mut() {
                Some(run)
                    if run.mini_batches.last().map(|(last, _)| last.seq + 1) == Some(id.seq) =>
                {
                    if run.rows.end != rows.start {
                        // Consecutive mini-batches whose rows are not: the ledger does not
                        // describe one cut; read the input whole (and check every slice).
                        return Ok(None);
                    }
                    run.rows.end = rows.end;
                    run.mini_batches.push((id, s));
                }
                _ => runs.push(SkipRun {
                    rows,
                    mini_batches: vec![(id, s)],
                }),
            }
        }
        let ranges: Vec<Range<u64>> = runs.iter().map(|r| r.rows.clone()).collect();
        let (scan, omitted) = scan.without_rows(&ranges, batch_size);
        let plan = with_scan(plan, scan).map_err(|e| PrsError::Input {
            input: input.to_string(),
            location: "resume".into(),
            message: e.to_string(),
        })?;
        Ok(Some((
            plan,
            Recut {
                input: input.to_string(),
                rows_not_read: omitted.iter().map(|o| o.end - o.start).sum(),
                runs: runs.into(),
                omitted: omitted.into(),
                pos: 0,
                discard_until: 0,
            },
        )))
    }

    /// Cuts the next batch of the scan with `chunker`, passing the skipped runs it reaches.
    pub(crate) fn feed(
        &mut self,
        batch: &RecordBatch,
        chunker: &mut ByteChunker,
        out: &mut Vec<Step>,
    ) -> Result<()> {
        self.advance(chunker, out)?;
        let start = self.pos;
        let end = start + batch.num_rows() as u64;
        self.pos = end;
        let mut cur = start;
        loop {
            self.enter_runs(cur, chunker, out)?;
            if cur >= end {
                return Ok(());
            }
            if self.discard_until > cur {
                cur = self.discard_until.min(end);
                continue;
            }
            let upto = match self.runs.front() {
                Some(run) if run.rows.start < cur => return Err(self.misaligned(run)),
                Some(run) => run.rows.start.min(end),
                None => end,
            };
            let range = (cur - start) as usize..(upto - start) as usize;
            out.extend(chunker.push_rows(batch, range)?.into_iter().map(Step::Cut));
            cur = upto;
        }
    }

    /// The end of the scan: passes the runs it ends with. Refuses when a run was not found.
    pub(crate) fn finish(&mut self, chunker: &mut ByteChunker, out: &mut Vec<Step>) -> Result<()> {
        self.advance(chunker, out)?;
        match self.runs.front() {
            Some(run) => Err(self.misaligned(run)),
            None => Ok(()),
        }
    }

    /// Passes the runs starting at the current position and the omitted rows that follow.
    fn advance(&mut self, chunker: &mut ByteChunker, out: &mut Vec<Step>) -> Result<()> {
        loop {
            self.enter_runs(self.pos, chunker, out)?;
            match self.omitted.front() {
                Some(o) if o.start == self.pos => {
                    self.pos = o.end;
                    self.omitted.pop_front();
                }
                _ => return Ok(()),
            }
        }
    }

    /// Passes the runs starting at row `at`: the chunker must be at a boundary there.
    fn enter_runs(
        &mut self,
        at: u64,
        chunker: &mut ByteChunker,
        out: &mut Vec<Step>,
    ) -> Result<()> {
        while let Some(run) = self.runs.front() {
            if run.rows.start != at || self.discard_until > at {
                return Ok(());
            }
            let first = run.mini_batches.first().map(|(id, _)| id.seq);
            if chunker.boundary() != Some((at, first.unwrap_or(0))) {
                return Err(self.misaligned(run));
            }
            let Some(run) = self.runs.pop_front() else {
                return Ok(());
            };
            let next_seq = run.mini_batches.last().map_or(0, |(id, _)| id.seq + 1);
            chunker.skip_to(run.rows.end, next_seq);
            self.discard_until = run.rows.end;
            out.extend(
                run.mini_batches
                    .into_iter()
                    .map(|(id, s)| Step::Skipped(id, Box::new(s))),
            );
        }
        Ok(())
    }

    fn misaligned(&self, run: &SkipRun) -> PrsError {
        let id = run
            .mini_batches
            .first()
            .map_or_else(String::new, |(id, _)| id.to_string());
        PrsError::config(
            "--resume",
            format!("mini batch {id}"),
            format!(
                "input {:?} is not cut as it was when mini-batch {id} (rows {}..{}) was \
                 committed, although its files are the same: a setting that changes the cut \
                 differs. The committed results no longer match the input: restore the \
                 setting, run with --restart to start over, or add --force to keep the \
                 committed results anyway",
                self.input, run.rows.start, run.rows.end
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Lineage, MiniBatchRecord, MiniBatchStatus};
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::time::SystemTime;

    /// Rows `from..to` as one batch: an id and a text column of varying width, so mini-batch
    /// boundaries depend on how batches are sized.
    fn batch(from: u64, to: u64) -> RecordBatch {
        let ids = Int64Array::from_iter_values(from as i64..to as i64);
        let text = StringArray::from_iter_values((from..to).map(|i| "x".repeat((i % 7) as usize)));
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(ids) as ArrayRef),
            ("t", Arc::new(text) as ArrayRef),
        ])
        .unwrap()
    }

    /// Reader batches of 100 rows over two "files" of 450 and 300 rows.
    fn reader_batches() -> Vec<Range<u64>> {
        let mut out = Vec::new();
        for (start, rows) in [(0u64, 450u64), (450, 300)] {
            let mut at = 0;
            while at < rows {
                let end = (at + 100).min(rows);
                out.push(start + at..start + end);
                at = end;
            }
        }
        out
    }

    fn chunker() -> ByteChunker {
        ByteChunker::new(0, Arc::from("rows"), batch(0, 1).schema(), 700)
    }

    fn full_cut() -> Vec<MiniBatch> {
        let mut c = chunker();
        let mut out = Vec::new();
        for b in reader_batches() {
            out.extend(c.push(batch(b.start, b.end)).unwrap());
        }
        out.extend(c.finish().unwrap());
        out
    }

    fn skipped(mb: &MiniBatch) -> SkippedMiniBatch {
        SkippedMiniBatch {
            record: MiniBatchRecord {
                id: mb.id,
                index: mb.id.seq,
                lineage: Lineage {
                    input: Arc::from("rows"),
                    rows: mb.lineage.rows.clone(),
                },
                partition_key_value: Default::default(),
                tries: 1,
                process: "process000".into(),
                start_time: SystemTime::now(),
                total_items: mb.items(),
                succeeded_items: mb.items(),
                failed_items: 0,
                elapsed_seconds: 0.0,
                run_seconds: 0.0,
                status: MiniBatchStatus::Succeeded,
                error_message: String::new(),
                traceback: None,
                earlier_errors: Vec::new(),
                bisection_calls: 0,
                isolated: Vec::new(),
            },
            fingerprint: 0,
            source: Some(1),
        }
    }

    /// Re-cuts with the mini-batches `skip` (sequence numbers) taken from the ledger: the
    /// reader batches wholly inside their runs do not come.
    fn recut(full: &[MiniBatch], skip: &[u64]) -> Result<Vec<(String, Range<u64>, bool)>> {
        let mut runs: Vec<SkipRun> = Vec::new();
        for mb in full.iter().filter(|mb| skip.contains(&mb.id.seq)) {
            match runs.last_mut() {
                Some(run) if run.rows.end == mb.lineage.rows.start => {
                    run.rows.end = mb.lineage.rows.end;
                    run.mini_batches.push((mb.id, skipped(mb)));
                }
                _ => runs.push(SkipRun {
                    rows: mb.lineage.rows.clone(),
                    mini_batches: vec![(mb.id, skipped(mb))],
                }),
            }
        }
        let inside = |b: &Range<u64>| {
            runs.iter()
                .any(|r| r.rows.start <= b.start && b.end <= r.rows.end)
        };
        let omitted: Vec<Range<u64>> = reader_batches().into_iter().filter(|b| inside(b)).collect();
        let read: Vec<Range<u64>> = reader_batches()
            .into_iter()
            .filter(|b| !inside(b))
            .collect();
        let mut state = Recut {
            input: "rows".into(),
            runs: runs.into(),
            omitted: omitted.into(),
            pos: 0,
            discard_until: 0,
            rows_not_read: 0,
        };
        let mut c = chunker();
        let mut steps = Vec::new();
        for b in read {
            state.feed(&batch(b.start, b.end), &mut c, &mut steps)?;
        }
        state.finish(&mut c, &mut steps)?;
        steps.extend(c.finish()?.map(Step::Cut));
        Ok(steps
            .into_iter()
            .map(|s| match s {
                Step::Cut(mb) => (mb.id.to_string(), mb.lineage.rows, false),
                Step::Skipped(id, s) => (id.to_string(), s.record.lineage.rows, true),
            })
            .collect())
    }

    #[test]
    fn a_recut_gives_the_full_cut_with_the_skipped_ones_not_read() {
        let full = full_cut();
        let n = full.len() as u64;
        assert!(n > 12, "{n} mini-batches");
        let expected = |skip: &[u64]| -> Vec<(String, Range<u64>, bool)> {
            full.iter()
                .map(|mb| {
                    (
                        mb.id.to_string(),
                        mb.lineage.rows.clone(),
                        skip.contains(&mb.id.seq),
                    )
                })
                .collect()
        };
        let cases: Vec<Vec<u64>> = vec![
            vec![],
            (0..n).collect(),
            (0..5).collect(),
            (n - 4..n).collect(),
            vec![0, 2, 3, 4, 9, 10],
            (1..n - 1).collect(),
            (0..n).filter(|i| i % 3 != 1).collect(),
        ];
        for skip in cases {
            let got = recut(&full, &skip).unwrap();
            assert_eq!(got, expected(&skip), "skipping {skip:?}");
        }
    }

    #[test]
    fn a_run_the_recut_does_not_reach_is_refused() {
        let mut full = full_cut();
        // The ledger says mini-batch 3 started a row later than this cut does.
        full[3].lineage.rows.start += 1;
        let err = recut(&full, &[3, 4]).unwrap_err().to_string();
        assert!(
            err.contains("not cut as it was") && err.contains("--restart"),
            "{err}"
        );
    }
}
