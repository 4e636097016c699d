//! Poison-record isolation (`isolate_failures`): a mini-batch that failed every try is split
//! in halves, each half run once, and every failing half split again, until the failing items
//! stand alone. The good parts' results are committed with the mini-batch; only the isolated
//! items count as failed items. The partition's stream ([`super::stream`]) makes the run()
//! calls; this module decides which parts to run and puts the outcome together.
//!
//! Parts are run depth first, first half first, so the good parts' results come in row
//! order. When a first half succeeds, its failing parent's second half is split without being
//! run whole (the failure is in it; its parts all run, so nothing is lost if it was not). One
//! failing item in `n` costs one or two calls per level, at most `2 * ceil(log2(n))`; the
//! calls of one mini-batch are bounded by [`ISOLATED_ITEMS_BUDGET`] such items: the parts not
//! run by then count as failed, with the error of the part that held them. The bisection does
//! not stop early when `error_threshold` is exceeded: its record stays complete, so a resumed
//! run with a raised threshold keeps it as it is.

use std::ops::Range;

use arrow::array::UInt64Array;
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::batch::{IsolatedItem, Lineage, MiniBatch, MiniBatchId};
use crate::error::Result;
use crate::exec::state::RunSettings;
use crate::exec::stream::FailedInput;
use crate::worker::{RunError, RunReturn};

/// Failing items one mini-batch's bisection budget allows for: `2 * ceil(log2(n))` calls each.
pub const ISOLATED_ITEMS_BUDGET: u32 = 16;

/// Whether a mini-batch that failed every try with `error` is bisected: the job isolates
/// failures, it is not keyed, it has more than one item, and a timeout only with
/// `isolate_timeouts`.
pub fn eligible(settings: &RunSettings, mb: &MiniBatch, error: &RunError) -> bool {
    settings.isolate_failures
        && settings.partition_keys.is_empty()
        && mb.partition_key_value.is_empty()
        && mb.items() > 1
        && (settings.isolate_timeouts || !matches!(error, RunError::Timeout { .. }))
}

/// `ceil(log2(n))` (0 for n <= 1).
fn levels(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

/// The run() calls bisecting `n` items may make.
pub fn call_budget(n: u64) -> u32 {
    2 * levels(n).max(1) * ISOLATED_ITEMS_BUDGET
}

/// A part of the mini-batch to run: its derived id and its rows (positions within the
/// original mini-batch), with the error of the failing part it was split from.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The derived id (`0-17.01`).
    pub id: MiniBatchId,
    /// Positions within the original mini-batch.
    pub rows: Range<u64>,
    parent_error: RunError,
}

/// The state of one bisection: the parts still to run, the good ones and the isolated items.
#[derive(Debug)]
pub struct Bisection {
    pending: Vec<Piece>,
    good: Vec<(MiniBatchId, Range<u64>, RunReturn)>,
    isolated: Vec<IsolatedItem>,
    calls: u32,
    budget: u32,
    isolate_timeouts: bool,
}

/// What a bisection found.
#[derive(Debug)]
pub struct Found {
    /// The parts that ran, in row order, with what run() returned.
    pub good: Vec<(Range<u64>, RunReturn)>,
    /// The failing items (or parts left when the budget was spent), in row order.
    pub isolated: Vec<IsolatedItem>,
    /// run() calls made.
    pub calls: u32,
}

impl Bisection {
    /// The bisection of `mb`, which failed every try with `error`.
    pub fn new(mb: &MiniBatch, error: RunError, settings: &RunSettings) -> Self {
        let mut bisection = Bisection {
            pending: Vec::new(),
            good: Vec::new(),
            isolated: Vec::new(),
            calls: 0,
            budget: call_budget(mb.items()),
            isolate_timeouts: settings.isolate_timeouts,
        };
        bisection.split(mb.id, 0..mb.items(), error);
        bisection
    }

    /// The next part to run (`None`: done). Once the budget is spent the parts left are not
    /// run: they count as failed.
    pub fn next_piece(&mut self) -> Option<Piece> {
        while let Some(piece) = self.pending.pop() {
            if self.calls < self.budget {
                self.calls += 1;
                return Some(piece);
            }
            let why = format!(
                "bisection stopped before running this part: its budget of {} run() calls \
                 ({ISOLATED_ITEMS_BUDGET} failing items) was spent",
                self.budget
            );
            self.isolate(piece.id, piece.rows, &piece.parent_error, Some(why));
        }
        None
    }

    /// Records the outcome of running `piece`: a good part, or a failing one split again (a
    /// single item, or a timeout without `isolate_timeouts`, is isolated as it is).
    pub fn record(&mut self, piece: Piece, outcome: std::result::Result<RunReturn, RunError>) {
        match outcome {
            Ok(ret) => {
                // The first half ran, so the failure of their parent is in the second half:
                // split it without running it whole (its parts still all run).
                let halves = piece.id.parent().and_then(|p| p.halves());
                if let Some((_, second)) = halves.filter(|(first, _)| *first == piece.id) {
                    let splittable = |p: &Piece| p.id == second && p.rows.end - p.rows.start > 1;
                    if self.pending.last().is_some_and(splittable) {
                        if let Some(next) = self.pending.pop() {
                            self.split(next.id, next.rows, next.parent_error);
                        }
                    }
                }
                self.good.push((piece.id, piece.rows, ret))
            }
            Err(e) if matches!(e, RunError::Timeout { .. }) && !self.isolate_timeouts => {
                self.isolate(piece.id, piece.rows, &e, None)
            }
            Err(e) => self.split(piece.id, piece.rows, e),
        }
    }

    /// Queues the halves of the failing part `rows` (first half on top), or isolates it.
    fn split(&mut self, id: MiniBatchId, rows: Range<u64>, error: RunError) {
        let len = rows.end - rows.start;
        let halves = id.halves().filter(|_| len > 1);
        let Some((first, second)) = halves else {
            self.isolate(id, rows, &error, None);
            return;
        };
        let mid = rows.start + len / 2;
        self.pending.push(Piece {
            id: second,
            rows: mid..rows.end,
            parent_error: error.clone(),
        });
        self.pending.push(Piece {
            id: first,
            rows: rows.start..mid,
            parent_error: error,
        });
    }

    fn isolate(
        &mut self,
        id: MiniBatchId,
        rows: Range<u64>,
        error: &RunError,
        why: Option<String>,
    ) {
        let message = error.message(&id.to_string());
        self.isolated.push(IsolatedItem {
            id,
            rows,
            status: error.status(),
            error_message: match why {
                Some(why) => format!("{why}; a part holding it failed with: {message}"),
                None => message,
            },
            traceback: error.traceback().map(str::to_string),
        });
    }

    /// The outcome, once [`Bisection::next_piece`] returned `None`. A good part whose result
    /// cannot be put together with the others' is isolated ([`Bisection::isolate_odd_results`]).
    pub fn finish(mut self) -> Found {
        self.good.sort_by_key(|(_, rows, _)| rows.start);
        self.isolate_odd_results();
        self.isolated.sort_by_key(|i| i.rows.start);
        Found {
            good: self
                .good
                .into_iter()
                .map(|(_, rows, ret)| (rows, ret))
                .collect(),
            isolated: self.isolated,
            calls: self.calls,
        }
    }

    /// A result can be invalid only next to others: a column whose values are numbers for
    /// most rows and text for a poison row cannot become Arrow in one part, yet the poison
    /// row alone returns a valid text column. The good parts' results are cast to the schema
    /// of those holding the most rows (the first on a tie), strictly (a value that does not
    /// convert is an error, never a null); the parts that cannot be are isolated as
    /// `BAD_RESULT` items.
    fn isolate_odd_results(&mut self) {
        let mut rows_per_schema: Vec<(SchemaRef, usize)> = Vec::new();
        for batch in self
            .good
            .iter()
            .filter_map(|(_, _, ret)| ret.result.as_ref())
        {
            let schema = batch.schema();
            match rows_per_schema.iter_mut().find(|(s, _)| *s == schema) {
                Some((_, rows)) => *rows += batch.num_rows(),
                None => rows_per_schema.push((schema, batch.num_rows())),
            }
        }
        if rows_per_schema.len() < 2 {
            return;
        }
        let mut reference = &rows_per_schema[0];
        for candidate in &rows_per_schema[1..] {
            if candidate.1 > reference.1 {
                reference = candidate;
            }
        }
        let reference = reference.0.clone();
        for (id, rows, mut ret) in std::mem::take(&mut self.good) {
            let Some(batch) = ret.result.take() else {
                self.good.push((id, rows, ret));
                continue;
            };
            if batch.schema() == reference {
                ret.result = Some(batch);
                self.good.push((id, rows, ret));
                continue;
            }
            let columns = crate::input::file_scan::describe_columns(&batch.schema());
            match super::conform(batch, &reference, &id.to_string()) {
                Ok(batch) => {
                    ret.result = Some(batch);
                    self.good.push((id, rows, ret));
                }
                Err(e) => {
                    let error = RunError::BadResult {
                        message: format!(
                            "run() returned ({columns}) for these items but ({}) for the rest \
                             of the mini batch, and the results cannot be put together ({e}); \
                             return the same columns and types whatever the rows",
                            crate::input::file_scan::describe_columns(&reference)
                        ),
                    };
                    self.isolate(id, rows, &error, None);
                }
            }
        }
    }
}

impl Found {
    /// The good parts' results concatenated in row order (`None` when results are not kept),
    /// the elements run() returned and the items that count as succeeded. Parts whose results
    /// have other column types than the first one's are cast to them; an error names the
    /// mini-batch (`id`) and the column.
    pub fn result(&self, id: &str) -> Result<(Option<RecordBatch>, u64, u64)> {
        let mut returned = 0;
        let mut succeeded = 0;
        let mut batches = Vec::new();
        for (rows, ret) in &self.good {
            returned += ret.returned;
            succeeded += ret.returned.min(rows.end - rows.start);
            if let Some(batch) = &ret.result {
                batches.push(batch.clone());
            }
        }
        let Some(first) = batches.first() else {
            return Ok((None, returned, succeeded));
        };
        let schema = first.schema();
        let batches = batches
            .into_iter()
            .map(|b| {
                if b.schema() == schema {
                    Ok(b)
                } else {
                    super::conform(b, &schema, id)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Some(concat_batches(&schema, &batches)?),
            returned,
            succeeded,
        ))
    }

    /// The input items of the failed ones: the isolated items (all of `mb`'s when `all`).
    pub fn failed_input(&self, mb: &MiniBatch, all: bool) -> Option<FailedInput> {
        let rows = if all {
            mb.data.clone()
        } else {
            let indices =
                UInt64Array::from_iter_values(self.isolated.iter().flat_map(|i| i.rows.clone()));
            if indices.is_empty() {
                return None;
            }
            take_record_batch(&mb.data, &indices).ok()?
        };
        Some(FailedInput {
            kind: mb.kind,
            rows,
        })
    }
}

/// The derived mini-batch of `piece`: its rows of `mb` (copied: a mini-batch never views a
/// larger batch) and their lineage.
pub fn sub_mini_batch(mb: &MiniBatch, piece: &Piece) -> Result<MiniBatch> {
    let indices = UInt64Array::from_iter_values(piece.rows.clone());
    Ok(MiniBatch {
        id: piece.id,
        kind: mb.kind,
        data: take_record_batch(&mb.data, &indices)?,
        lineage: Lineage {
            input: mb.lineage.input.clone(),
            rows: mb.lineage.rows.start + piece.rows.start..mb.lineage.rows.start + piece.rows.end,
        },
        partition_key_value: mb.partition_key_value.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ItemKind;
    use arrow::array::{ArrayRef, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    fn settings() -> RunSettings {
        RunSettings {
            workers: 1,
            processes_per_node: 1,
            mini_batch_bytes: 1024,
            mini_batch_files: 10,
            run_timeout: Duration::from_secs(1),
            run_max_try: 1,
            error_threshold: -1,
            allowed_failed_count: None,
            allowed_failed_percent: None,
            queue_depth: 1,
            partition_keys: Vec::new(),
            isolate_failures: true,
            isolate_timeouts: false,
            keep_failed_rows: true,
        }
    }

    fn mini_batch(n: i64) -> MiniBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(1000..1000 + n));
        MiniBatch {
            id: MiniBatchId::new(0, 17),
            kind: ItemKind::Rows,
            data: RecordBatch::try_from_iter(vec![("id", ids)]).unwrap(),
            lineage: Lineage {
                input: Arc::from("rows"),
                rows: 5000..5000 + n as u64,
            },
            partition_key_value: Default::default(),
        }
    }

    fn failure() -> RunError {
        RunError::Exception {
            message: "bad row".into(),
            traceback: Some("Traceback: ...".into()),
        }
    }

    /// Runs a bisection of `mb` with a run() that fails on any part holding one of `bad`.
    fn bisect(mb: &MiniBatch, bad: &BTreeSet<i64>, settings: &RunSettings) -> Found {
        let mut bisection = Bisection::new(mb, failure(), settings);
        while let Some(piece) = bisection.next_piece() {
            let sub = sub_mini_batch(mb, &piece).unwrap();
            let ids = sub.data.column(0).as_primitive::<Int64Type>();
            let outcome = if ids.values().iter().any(|id| bad.contains(id)) {
                Err(failure())
            } else {
                Ok(RunReturn {
                    returned: sub.items(),
                    result: Some(sub.data.clone()),
                })
            };
            bisection.record(piece, outcome);
        }
        bisection.finish()
    }

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn one_bad_row_costs_two_calls_per_level_and_the_rest_comes_back_in_order() {
        let mb = mini_batch(10_000);
        let found = bisect(&mb, &BTreeSet::from([1000 + 6173]), &settings());
        assert!(found.calls <= 2 * levels(10_000), "{} calls", found.calls);
        assert!(found.calls >= levels(10_000) - 1, "{} calls", found.calls);
        assert_eq!(found.isolated.len(), 1);
        let item = &found.isolated[0];
        assert_eq!(item.rows, 6173..6174);
        assert_eq!(item.id.original(), mb.id);
        assert!(item.id.split.depth() <= 14);
        assert_eq!(item.traceback.as_deref(), Some("Traceback: ..."));
        let (result, returned, succeeded) = found.result("0-17").unwrap();
        let expected: Vec<i64> = (1000..11_000).filter(|id| *id != 7173).collect();
        assert_eq!(ids(&result.unwrap()), expected);
        assert_eq!((returned, succeeded), (9_999, 9_999));
        let failed = found.failed_input(&mb, false).unwrap();
        assert_eq!(ids(&failed.rows), [7173]);
    }

    #[test]
    fn bad_rows_in_separate_places_are_each_isolated() {
        let mb = mini_batch(1000);
        let bad = BTreeSet::from([1000, 1500, 1999]);
        let found = bisect(&mb, &bad, &settings());
        let rows: Vec<u64> = found.isolated.iter().map(|i| i.rows.start).collect();
        assert_eq!(rows, [0, 500, 999]);
        assert!(found.calls <= 3 * 2 * levels(1000), "{} calls", found.calls);
        let (result, _, succeeded) = found.result("0-17").unwrap();
        assert_eq!(succeeded, 997);
        let result = ids(&result.unwrap());
        assert!(result.windows(2).all(|w| w[0] < w[1]), "row order");
        assert_eq!(result.len(), 997);
        // The derived ids name the rows: parsing one leads back to its position.
        let item = &found.isolated[1];
        let parsed: MiniBatchId = item.id.to_string().parse().unwrap();
        assert_eq!(parsed, item.id);
    }

    #[test]
    fn the_budget_bounds_the_calls_when_everything_fails() {
        let mb = mini_batch(4096);
        let all: BTreeSet<i64> = (1000..1000 + 4096).collect();
        let found = bisect(&mb, &all, &settings());
        assert_eq!(found.calls, call_budget(4096));
        let failed: u64 = found
            .isolated
            .iter()
            .map(|i| i.rows.end - i.rows.start)
            .sum();
        assert_eq!(failed, 4096, "what was not run counts as failed");
        assert!(found
            .isolated
            .last()
            .unwrap()
            .error_message
            .contains("budget"));
        assert_eq!(found.result("0-17").unwrap().2, 0);
    }

    #[test]
    fn timeouts_split_only_when_asked_and_keyed_or_single_items_never() {
        let mb = mini_batch(8);
        let timeout = RunError::Timeout { seconds: 1 };
        let mut s = settings();
        assert!(eligible(&s, &mb, &failure()));
        assert!(!eligible(&s, &mb, &timeout));
        s.isolate_timeouts = true;
        assert!(eligible(&s, &mb, &timeout));
        assert!(!eligible(&s, &mini_batch(1), &failure()));
        let mut keyed = mini_batch(8);
        keyed
            .partition_key_value
            .push("key", serde_json::json!("a"));
        assert!(!eligible(&s, &keyed, &failure()));
        s.isolate_failures = false;
        assert!(!eligible(&s, &mb, &failure()));

        // A part that times out during the bisection of an exception is not split further.
        let mut bisection = Bisection::new(&mb, failure(), &settings());
        let first = bisection.next_piece().unwrap();
        bisection.record(first, Err(timeout));
        let second = bisection.next_piece().unwrap();
        assert_eq!(second.rows, 4..8);
        bisection.record(second, Err(failure()));
        while let Some(piece) = bisection.next_piece() {
            bisection.record(
                piece,
                Ok(RunReturn {
                    returned: 0,
                    result: None,
                }),
            );
        }
        let found = bisection.finish();
        assert_eq!(found.isolated[0].rows, 0..4);
        assert_eq!(found.isolated[0].status.as_str(), "RUN_TIMEOUT");
    }

    #[test]
    fn a_part_whose_result_only_fits_alone_is_isolated_as_a_bad_result() {
        // Like a DataFrame column of numbers that holds text for the poison row: any part
        // mixing both fails to convert; the poison row alone returns a text column.
        let mb = mini_batch(100);
        let poison = 1000 + 37;
        let mut bisection = Bisection::new(
            &mb,
            RunError::BadResult {
                message: "cannot be converted".into(),
            },
            &settings(),
        );
        while let Some(piece) = bisection.next_piece() {
            let sub = sub_mini_batch(&mb, &piece).unwrap();
            let ids = ids(&sub.data);
            let outcome = if ids == [poison] {
                let text: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["poison"]));
                Ok(RunReturn {
                    returned: 1,
                    result: Some(RecordBatch::try_from_iter(vec![("id", text)]).unwrap()),
                })
            } else if ids.contains(&poison) {
                Err(RunError::BadResult {
                    message: "cannot be converted".into(),
                })
            } else {
                Ok(RunReturn {
                    returned: sub.items(),
                    result: Some(sub.data.clone()),
                })
            };
            bisection.record(piece, outcome);
        }
        let found = bisection.finish();
        assert_eq!(found.isolated.len(), 1, "{:?}", found.isolated);
        let item = &found.isolated[0];
        assert_eq!(item.rows, 37..38);
        assert_eq!(item.status.as_str(), "BAD_RESULT");
        assert!(
            item.error_message.contains("id Utf8") && item.error_message.contains("id Int64"),
            "{}",
            item.error_message
        );
        let (result, _, succeeded) = found.result("0-17").unwrap();
        let expected: Vec<i64> = (1000..1100).filter(|id| *id != poison).collect();
        assert_eq!(
            ids(&result.unwrap()),
            expected,
            "no null in place of the text"
        );
        assert_eq!(succeeded, 99);
    }

    #[test]
    fn levels_are_ceil_log2() {
        assert_eq!(
            [1, 2, 3, 4, 5, 128, 129, 10_000].map(levels),
            [0, 1, 2, 2, 3, 7, 8, 14]
        );
    }
}
