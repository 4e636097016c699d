//! `parallel_run_ledger('OUT')`: a job's ledger as a table, one row per mini-batch with its
//! final record (e.g. `SELECT status, count(*) FROM parallel_run_ledger('out/') GROUP BY
//! status`).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;

use crate::error::PrsError;
use crate::ledger::table::{entries_batch, ledger_schema};
use crate::ledger::{final_entries, find_log_dir, ledger_dir, read_entries};

/// The table function; relative folders resolve against `base_dir`.
#[derive(Debug)]
pub struct LedgerFunction {
    pub(crate) base_dir: PathBuf,
}

impl TableFunctionImpl for LedgerFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let folder = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(folder)), _)]
            | [Expr::Literal(ScalarValue::LargeUtf8(Some(folder)), _)]
            | [Expr::Literal(ScalarValue::Utf8View(Some(folder)), _)] => folder.clone(),
            _ => {
                return plan_err!(
                    "parallel_run_ledger takes one text argument: a job's output folder or a \
                     SQL job's report folder, e.g. parallel_run_ledger('out/')"
                )
            }
        };
        let folder = crate::sql::resolve_path(&self.base_dir, &folder);
        let log_dir =
            find_log_dir(&folder, "parallel_run_ledger").map_err(PrsError::into_datafusion)?;
        let entries = read_entries(&ledger_dir(&log_dir)).map_err(PrsError::into_datafusion)?;
        let last = final_entries(entries);
        let mut rows: Vec<_> = last.values().collect();
        rows.sort_by_key(|e| e.record.id);
        let batch = entries_batch(&rows).map_err(PrsError::into_datafusion)?;
        Ok(Arc::new(MemTable::try_new(
            ledger_schema(),
            vec![vec![batch]],
        )?))
    }
}
