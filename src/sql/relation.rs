//! The `parallel_run(...)` relation: a DataFusion [`RelationPlanner`] that turns
//!
//! ```sql
//! parallel_run((SELECT id, text FROM reviews WHERE lang = 'en'),
//!              entry_script => 'score.py', mini_batch_size => '1MB', error_threshold => 10)
//! ```
//!
//! into a [`ParallelRunNode`] over the planned subquery. Unnamed arguments are the inputs (a
//! parenthesized subquery, or a table name, which is planned as a scan of that table); named
//! arguments (`name => value`, literals) are the keys of the `parallel_run` configuration
//! namespace and override its SET values. The relation's columns are run()'s result columns:
//! given as `output_schema => 'id BIGINT, score DOUBLE'`, or found by the probe
//! ([`crate::sql::probe`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchema;
use datafusion::datasource::provider_as_source;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    self, CastKind, ColumnDef, ColumnOption, FunctionArg, FunctionArgExpr, FunctionArguments,
    ObjectName, ObjectNamePart, TableFactor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::batch::ItemKind;
use crate::config::{JobSettings, OutputFormat};
use crate::error::{PrsError, Result};
use crate::exec::{InputInfo, ParallelRunNode};
use crate::job::{worker_factory, JobPlan};
use crate::output::FailedRowsWriter;
use crate::sql::config::{canonical_key, ParallelRunOptions, SqlJob};
use crate::sql::exec::SqlRun;
use crate::sql::{block_on, probe, SqlShared};

/// The relation's name in SQL.
pub const NAME: &str = "parallel_run";

/// Plans `parallel_run(...)` wherever a table may appear.
#[derive(Debug)]
pub struct ParallelRunRelationPlanner {
    shared: Arc<SqlShared>,
}

impl ParallelRunRelationPlanner {
    pub(crate) fn new(shared: Arc<SqlShared>) -> Self {
        ParallelRunRelationPlanner { shared }
    }
}

impl RelationPlanner for ParallelRunRelationPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> DFResult<RelationPlanning> {
        let ours = match &relation {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => is_parallel_run(name),
            TableFactor::TableFunction {
                expr: ast::Expr::Function(f),
                ..
            } => is_parallel_run(&f.name),
            _ => false,
        };
        if !ours {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        }
        let (args, alias) = match relation {
            TableFactor::Table {
                args: Some(args),
                alias,
                ..
            } => (args.args, alias),
            TableFactor::Function { args, alias, .. } => (args, alias),
            TableFactor::TableFunction {
                expr: ast::Expr::Function(f),
                alias,
            } => match f.args {
                FunctionArguments::List(list) => (list.args, alias),
                _ => (Vec::new(), alias),
            },
            other => return Ok(RelationPlanning::Original(Box::new(other))),
        };
        let plan = self.plan_call(args, context)?;
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan, alias,
        ))))
    }
}

impl ParallelRunRelationPlanner {
    /// Plans one `parallel_run(args)`.
    fn plan_call(
        &self,
        args: Vec<FunctionArg>,
        context: &mut dyn RelationPlannerContext,
    ) -> DFResult<LogicalPlan> {
        let mut inputs = Vec::new();
        let mut named: BTreeMap<String, String> = BTreeMap::new();
        for arg in args {
            let (name, expr) = match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => {
                    inputs.push(self.plan_input(expr, context)?);
                    continue;
                }
                FunctionArg::Named {
                    name,
                    arg: FunctionArgExpr::Expr(expr),
                    ..
                } => (name.value, expr),
                FunctionArg::ExprNamed {
                    name: ast::Expr::Identifier(name),
                    arg: FunctionArgExpr::Expr(expr),
                    ..
                } => (name.value, expr),
                other => {
                    return Err(usage(PrsError::config(
                        NAME,
                        other,
                        "takes its input (a subquery or a table) and then NAME => value \
                         arguments, e.g. parallel_run((SELECT ...), entry_script => 'score.py', \
                         error_threshold => 10)",
                    )))
                }
            };
            let key = canonical_key(&name).map_err(usage)?;
            let text = literal_text(key, &expr).map_err(usage)?;
            if named.insert(key.to_string(), text).is_some() {
                return Err(usage(PrsError::config(
                    key,
                    expr,
                    "is given twice in parallel_run(...); give it once",
                )));
            }
        }
        if inputs.is_empty() {
            return Err(usage(PrsError::missing(
                "parallel_run input",
                "required: a subquery or a table as the first argument, e.g. \
                 parallel_run((SELECT id, text FROM reviews), entry_script => 'score.py', \
                 error_threshold => 10)",
            )));
        }
        let mut values: BTreeMap<String, String> = context
            .context_provider()
            .options()
            .extensions
            .get::<ParallelRunOptions>()
            .map(|o| o.values().clone())
            .unwrap_or_default();
        values.extend(named);
        self.plan_node(inputs, &values, context).map_err(usage)
    }

    /// The node for `inputs` with the merged `values`.
    fn plan_node(
        &self,
        inputs: Vec<(LogicalPlan, InputInfo)>,
        values: &BTreeMap<String, String>,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<LogicalPlan> {
        let job = SqlJob::from_values(values, self.shared.base_dir())?;
        for warning in &job.warnings {
            tracing::warn!("parallel_run: {warning}");
        }
        let report_dir = self.shared.report_dir_for(job.report_dir.clone());
        // The report folder is the log folder; results come back typed (not as txt lines).
        let settings = JobSettings {
            log_dir: report_dir.clone(),
            output_format: OutputFormat::Parquet,
            arguments: job.arguments.clone(),
            preserve_order: job.preserve_order,
            allow_empty_input: job.allow_empty_input,
            dead_letter_rows: job.dead_letter_rows,
            mini_batch_format: job.mini_batch_format,
            ..JobSettings::new(job.config.clone(), report_dir.clone())
        };
        let schemas: Vec<(SchemaRef, InputInfo)> = inputs
            .iter()
            .map(|(plan, info)| (Arc::new(plan.schema().as_arrow().clone()), info.clone()))
            .collect();
        JobPlan::check_inputs(&settings, &schemas)?;
        let tabular = schemas.iter().any(|(_, info)| info.kind == ItemKind::Rows);
        let factory = worker_factory(&settings, tabular, self.shared.registry())?;
        let schema = match &job.output_schema {
            Some(text) => declared_schema(text, context)?,
            None if job.config.output_action == crate::config::OutputAction::SummaryOnly => {
                Arc::new(Schema::empty())
            }
            None => {
                let state = self.shared.session_state().ok_or_else(|| {
                    PrsError::config(
                        "output_schema",
                        "",
                        "is needed: the session parallel_run was registered on is gone, so \
                         the output schema cannot be probed; give output_schema => 'id BIGINT, \
                         ...'",
                    )
                })?;
                let (plan, info) = &inputs[0];
                let (plan, name) = (plan.clone(), info.name.clone());
                let (factory, config) = (factory.clone(), job.config.clone());
                let probed = block_on(async move {
                    probe::output_schema(state, plan, &name, factory, &config).await
                })?;
                probed.map_err(|e| probe::with_logs(e, &report_dir))?
            }
        };
        let label = format!("{NAME}({})", factory.describe());
        let plan = JobPlan::with_factory(settings, &schemas, Some(schema), factory)?
            .with_call(self.shared.next_call());
        let run = Arc::new(SqlRun::new(label, plan.spec.clone()).with_resume(job.resume));
        if job.output_schema.is_none() {
            run.mark_probed();
        }
        self.shared.add_run(&run);
        let mut runtime = plan.runtime(run);
        if job.dead_letter_rows {
            // In the report folder, made when the first mini-batch fails.
            runtime = runtime.with_failed_rows(Arc::new(FailedRowsWriter::in_folder(&report_dir)));
        }
        let plans = inputs.into_iter().map(|(plan, _)| plan).collect();
        Ok(ParallelRunNode::try_new(plans, plan.spec, runtime)?.into_plan())
    }

    /// Plans one input argument: a subquery, or a table name.
    fn plan_input(
        &self,
        expr: ast::Expr,
        context: &mut dyn RelationPlannerContext,
    ) -> DFResult<(LogicalPlan, InputInfo)> {
        let (plan, table) =
            match expr {
                ast::Expr::Subquery(query) => (
                    context.plan(TableFactor::Derived {
                        lateral: false,
                        subquery: query,
                        alias: None,
                        sample: None,
                    })?,
                    false,
                ),
                ast::Expr::Identifier(ident) => (
                    self.plan_table(ObjectName::from(vec![ident]), context)?,
                    true,
                ),
                ast::Expr::CompoundIdentifier(idents) => {
                    (self.plan_table(ObjectName::from(idents), context)?, true)
                }
                other => return Err(usage(PrsError::config(
                    "parallel_run input",
                    other,
                    "must be a subquery in parentheses, e.g. (SELECT id, text FROM reviews), or \
                     a table name",
                ))),
            };
        let name = first_table(&plan).unwrap_or_else(|| "input".to_string());
        let mut info = InputInfo::new(name, ItemKind::Rows);
        // A table named directly (not a view with joins or aggregates) is read in the same
        // order every run: its statement can be resumed.
        if table && is_plain_scan(&plan) {
            info = info.ordered();
        }
        Ok((plan, info))
    }

    /// A scan of the table `name`. A table named only as an argument is not among the tables
    /// DataFusion resolved for the statement, so it is looked up in the session's catalog.
    fn plan_table(
        &self,
        name: ObjectName,
        context: &mut dyn RelationPlannerContext,
    ) -> DFResult<LogicalPlan> {
        let table = TableFactor::Table {
            name: name.clone(),
            alias: None,
            args: None,
            with_hints: Vec::new(),
            version: None,
            with_ordinality: false,
            partitions: Vec::new(),
            json_path: None,
            sample: None,
            index_hints: Vec::new(),
        };
        let first_error = match context.plan(table) {
            Ok(plan) => return Ok(plan),
            Err(e) => e,
        };
        let reference = context.object_name_to_table_reference(name)?;
        let Some(state) = self.shared.session_state() else {
            return Err(first_error);
        };
        let lookup = reference.clone();
        let provider = block_on(async move {
            SessionContext::new_with_state(state)
                .table_provider(lookup)
                .await
        })
        .map_err(PrsError::into_datafusion)?
        .map_err(|_| first_error)?;
        LogicalPlanBuilder::scan(reference, provider_as_source(provider), None)?.build()
    }
}

/// Is this the name `parallel_run` (any case)?
fn is_parallel_run(name: &ObjectName) -> bool {
    name.0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .is_some_and(|ident| ident.value.eq_ignore_ascii_case(NAME))
}

/// A named argument's value as text: a string, number or boolean literal, or a bare word.
fn literal_text(key: &str, expr: &ast::Expr) -> Result<String> {
    let bad = || {
        PrsError::config(
            key,
            expr,
            "must be a literal: a string ('10MB'), a number (10) or a boolean (true)",
        )
    };
    match expr {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::SingleQuotedString(s)
            | ast::Value::DoubleQuotedString(s)
            | ast::Value::EscapedStringLiteral(s)
            | ast::Value::UnicodeStringLiteral(s)
            | ast::Value::DollarQuotedString(ast::DollarQuotedString { value: s, .. }) => {
                Ok(s.clone())
            }
            ast::Value::Number(..) | ast::Value::Boolean(_) => Ok(value.value.to_string()),
            _ => Err(bad()),
        },
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr: inner,
        } => match inner.as_ref() {
            ast::Expr::Value(v) if matches!(v.value, ast::Value::Number(..)) => {
                Ok(format!("-{}", v.value))
            }
            _ => Err(bad()),
        },
        ast::Expr::Identifier(ident) => Ok(ident.value.clone()),
        _ => Err(bad()),
    }
}

/// The input's name for reports: the first alias or table the plan names, from the top.
fn first_table(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply(|node| {
        let name = match node {
            LogicalPlan::TableScan(scan) => scan.table_name.table(),
            LogicalPlan::SubqueryAlias(alias) => alias.alias.table(),
            _ => return Ok(TreeNodeRecursion::Continue),
        };
        found = Some(name.to_string());
        Ok(TreeNodeRecursion::Stop)
    });
    found
}

/// Parses `id BIGINT, score DOUBLE` (a `CREATE TABLE` column list) into column definitions.
pub(crate) fn parse_columns(text: &str) -> Result<Vec<ColumnDef>> {
    let fail = |why: String| {
        PrsError::config(
            "output_schema",
            text,
            format!("must be column definitions such as 'id BIGINT, score DOUBLE' ({why})"),
        )
    };
    let sql = format!("CREATE TABLE output_schema ({text})");
    let statements =
        Parser::parse_sql(&GenericDialect {}, &sql).map_err(|e| fail(e.to_string()))?;
    match statements.as_slice() {
        [ast::Statement::CreateTable(table)] if !table.columns.is_empty() => {
            Ok(table.columns.clone())
        }
        _ => Err(fail("no column list".to_string())),
    }
}

/// The arrow schema of an `output_schema` text, with DataFusion's SQL types (`BIGINT` is Int64,
/// `DOUBLE` Float64, `VARCHAR` a string...). Columns are nullable unless `NOT NULL`.
fn declared_schema(text: &str, context: &mut dyn RelationPlannerContext) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for column in parse_columns(text)? {
        // DataFusion's own SQL type mapping, through `CAST(NULL AS <type>)`.
        let cast = ast::Expr::Cast {
            kind: CastKind::Cast,
            expr: Box::new(ast::Expr::Value(ast::Value::Null.with_empty_span())),
            data_type: column.data_type.clone(),
            array: false,
            format: None,
        };
        let data_type = match context.sql_expr_to_logical_expr(cast, &DFSchema::empty()) {
            Ok(Expr::Cast(cast)) => cast.field.data_type().clone(),
            Ok(_) => {
                return Err(PrsError::config(
                    "output_schema",
                    text,
                    format!(
                        "column {}: type {} is not supported",
                        column.name, column.data_type
                    ),
                ))
            }
            Err(e) => {
                return Err(PrsError::config(
                    "output_schema",
                    text,
                    format!("column {}: {}", column.name, crate::sql::error_text(&e)),
                ))
            }
        };
        let nullable = !column
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::NotNull));
        fields.push(Field::new(
            context.normalize_ident(column.name.clone()),
            data_type,
            nullable,
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// A [`PrsError`] for DataFusion's planner (recovered by [`PrsError::from_datafusion`]).
fn usage(e: PrsError) -> DataFusionError {
    e.into_datafusion()
}

/// True when `plan` is a table scan, possibly under aliases, projections and filters (which
/// keep its row order).
fn is_plain_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::SubqueryAlias(a) => is_plain_scan(&a.input),
        LogicalPlan::Projection(p) => is_plain_scan(&p.input),
        LogicalPlan::Filter(f) => is_plain_scan(&f.input),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_lists_parse() {
        let columns = parse_columns("id BIGINT, score DOUBLE NOT NULL, d DECIMAL(10, 2)").unwrap();
        let names: Vec<String> = columns.iter().map(|c| c.name.value.clone()).collect();
        assert_eq!(names, vec!["id", "score", "d"]);
        for bad in ["", "id", "id BIGINT)", "(", "id BIGINT); DROP TABLE x; --"] {
            let e = parse_columns(bad).unwrap_err().to_string();
            assert!(e.starts_with("output_schema"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn literals_become_text() {
        let parse = |sql: &str| -> ast::Expr {
            Parser::new(&GenericDialect {})
                .try_with_sql(sql)
                .unwrap()
                .parse_expr()
                .unwrap()
        };
        assert_eq!(literal_text("k", &parse("'10MB'")).unwrap(), "10MB");
        assert_eq!(literal_text("k", &parse("10")).unwrap(), "10");
        assert_eq!(literal_text("k", &parse("-1")).unwrap(), "-1");
        assert_eq!(literal_text("k", &parse("true")).unwrap(), "true");
        assert_eq!(
            literal_text("k", &parse("summary_only")).unwrap(),
            "summary_only"
        );
        let e = literal_text("k", &parse("1 + 2")).unwrap_err().to_string();
        assert!(e.contains("must be a literal"), "{e}");
    }
}
