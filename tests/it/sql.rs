//! The SQL way in: `parallel-run sql`, the `parallel_run` namespace and relation, and
//! `parallel_run::sql::register` from Rust.

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use parallel_run::scripts::builtin_registry;
use parallel_run::sql::{register_with, SqlOptions};

use crate::common::*;

/// Every row of a Parquet file as text (`v1|v2|...`, columns in file order), sorted.
fn parquet_rows(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(batch_rows(&batch.unwrap()));
    }
    rows.sort();
    rows
}

/// A batch's rows as `v1|v2|...`.
fn batch_rows(batch: &RecordBatch) -> Vec<String> {
    let options = FormatOptions::default();
    let formatters: Vec<ArrayFormatter> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
        .collect();
    (0..batch.num_rows())
        .map(|r| {
            formatters
                .iter()
                .map(|f| f.value(r).to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// `(mini_batch_id, rows)` of every mini-batch of a report folder.
fn mini_batches(report_dir: &Path) -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(report_dir.join("sys/job_report/processed_mini-batches.csv"))
            .unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].to_string(), fields[2].to_string())
        })
        .collect()
}

/// The summary JSON of a report folder.
fn report_summary(report_dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(report_dir.join("job_summary.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", report_dir.display()));
    serde_json::from_str(&text).unwrap()
}

/// Writes `job.sql` in `dir` and runs `parallel-run sql` on it.
fn run_sql(dir: &Path, sql: &str, extra: &[&str]) -> CliRun {
    let path = dir.join("job.sql");
    std::fs::write(&path, sql).unwrap();
    let mut args = vec!["sql", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli(&args)
}

/// A session with parallel_run registered, one partition (a stable plan), paths relative to
/// `dir`.
fn session(dir: &Path) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    register_with(
        &ctx,
        SqlOptions::new(builtin_registry()).base_dir(dir.to_path_buf()),
    )
    .unwrap()
}

async fn collect(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn int_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let c =
                arrow::compute::cast(b.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
            c.as_primitive::<Int64Type>().values().to_vec()
        })
        .collect()
}

#[test]
fn a_sql_job_and_the_same_yaml_job_give_the_same_rows_and_mini_batches() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 3_000, 700);
    let job = write_job(
        d.path(),
        "entry_script: rust:echo\nerror_threshold: 5\noutput_action: append_row\nnode_count: 1\n\
         process_count_per_node: 3\nmini_batch_size: 16KB\nrun_max_try: 2",
        "inputs:\n  - {name: rows, path: in.parquet, format: parquet}\noutput: yaml_out\n\
         output_format: parquet\narguments: [--drop-ids, '5,6', --fail-ids, '2000', --fail-tries, '1']\n",
    );
    let yaml = run_job(&job, &[]);
    assert_eq!(yaml.code, 0, "{yaml:?}");

    let sql = run_sql(
        d.path(),
        "CREATE EXTERNAL TABLE rows STORED AS PARQUET LOCATION 'in.parquet';\n\
         SET parallel_run.entry_script = 'rust:echo';\n\
         SET parallel_run.error_threshold = 5;\n\
         SET parallel_run.process_count_per_node = 3;\n\
         SET parallel_run.mini_batch_size = '16KB';\n\
         SET parallel_run.run_max_try = 2;\n\
         COPY (SELECT * FROM parallel_run(rows, arguments => '--drop-ids 5,6 --fail-ids 2000 --fail-tries 1'))\n\
           TO 'sql_out/rows.parquet' STORED AS PARQUET;\n",
        &[],
    );
    assert_eq!(sql.code, 0, "{sql:?}");
    assert!(sql.stderr.contains("There are"), "{}", sql.stderr);

    let yaml_rows = parquet_rows(&d.path().join("yaml_out/parallel_run_step.parquet"));
    let sql_rows = parquet_rows(&d.path().join("sql_out/rows.parquet"));
    assert_eq!(yaml_rows.len(), 2_998);
    assert_eq!(sql_rows, yaml_rows);

    let report = d.path().join("sql_out/rows.parquet.logs");
    assert_eq!(
        mini_batches(&report),
        mini_batches(&d.path().join("yaml_out/logs"))
    );
    let (s, y) = (report_summary(&report), summary(&d.path().join("yaml_out")));
    for key in [
        "status",
        "mini_batches_total",
        "items_total",
        "items_succeeded",
        "items_failed",
        "tries",
    ] {
        assert_eq!(s[key], y[key], "{key}: {s} vs {y}");
    }
    assert!(!d
        .path()
        .join("sql_out/.rows.parquet.parallel_run_staging")
        .exists());
}

const PY_SCORE: &str = r#"
import pandas as pd

def init():
    global factor
    factor = 0.5

def run(mini_batch):
    return pd.DataFrame({"id": mini_batch["id"], "score": mini_batch["f0"] * factor})
"#;

#[test]
fn a_python_sql_job_equals_its_yaml_job_and_probes_its_schema() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("data/in.parquet"), 0, 1_500, 500);
    std::fs::create_dir_all(d.path().join("scripts")).unwrap();
    std::fs::write(d.path().join("scripts/score.py"), PY_SCORE).unwrap();
    let python = python();
    let job = write_job(
        d.path(),
        &format!(
            "entry_script: scripts/score.py\nenvironment: {{python: {python}}}\nerror_threshold: 0\n\
             output_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 8KB"
        ),
        "inputs:\n  - {name: rows, path: data/in.parquet, format: parquet}\noutput: yaml_out\n\
         output_format: parquet\n",
    );
    let yaml = run_job(&job, &[]);
    assert_eq!(yaml.code, 0, "{yaml:?}");

    // Relative paths (the table, the script, the output) are relative to the SQL file.
    let sql = run_sql(
        d.path(),
        &format!(
            "CREATE EXTERNAL TABLE rows STORED AS PARQUET LOCATION 'data/in.parquet';\n\
             SET parallel_run.python = '{python}';\n\
             SET parallel_run.process_count_per_node = 2;\n\
             COPY (SELECT * FROM parallel_run((SELECT * FROM rows), entry_script => 'scripts/score.py',\n\
                   error_threshold => 0, mini_batch_size => '8KB'))\n\
               TO 'sql_out/scores.parquet' STORED AS PARQUET;\n"
        ),
        &[],
    );
    assert_eq!(sql.code, 0, "{sql:?}");
    let sql_rows = parquet_rows(&d.path().join("sql_out/scores.parquet"));
    assert_eq!(sql_rows.len(), 1_500);
    assert_eq!(
        sql_rows,
        parquet_rows(&d.path().join("yaml_out/parallel_run_step.parquet"))
    );
    let report = d.path().join("sql_out/scores.parquet.logs");
    assert_eq!(report_summary(&report)["status"], "succeeded");
    // The probe ran one worker of its own, with its own log files.
    assert!(report.join("user/stdout/node000/probe.stdout.txt").exists());
}

#[test]
fn set_errors_name_the_key_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    for (statement, words) in [
        (
            "SET parallel_run.mini_batch_size = '10 MB'",
            &["mini_batch_size \"10 MB\": no spaces allowed; use e.g. \"10MB\""][..],
        ),
        (
            "SET parallel_run.run_max_try = 0",
            &["run_max_try \"0\"", ">= 1"][..],
        ),
        (
            "SET parallel_run.node_count = 'two'",
            &["parallel_run.node_count \"two\""][..],
        ),
        (
            "SET parallel_run.output_action = 'append'",
            &["output_action", "append_row or summary_only"][..],
        ),
        (
            "SET parallel_run.mini_batch = '1MB'",
            &["unknown key", "mini_batch_size"][..],
        ),
        (
            "SET parallel_run.partition_keys = 'key'; SET parallel_run.error_threshold = 0; \
             SELECT * FROM parallel_run((SELECT 1 AS key), entry_script => 'rust:echo', mini_batch_size => '1MB')",
            &["partition_keys", "mini_batch_size", "remove one"][..],
        ),
        (
            "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:echo')",
            &["parallel_run.error_threshold is missing"][..],
        ),
        (
            "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:nope', error_threshold => 0)",
            &["rust:nope", "echo"][..],
        ),
        (
            "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:echo', error_threshold => 0, run_max_try => 1 + 1)",
            &["run_max_try", "must be a literal"][..],
        ),
        (
            "SELECT * FROM parallel_run(missing_table, entry_script => 'rust:echo', error_threshold => 0)",
            &["missing_table", "not found"][..],
        ),
    ] {
        let run = run_sql(d.path(), statement, &[]);
        assert_eq!(run.code, 2, "{statement}: {run:?}");
        for word in words {
            assert!(run.stderr.contains(word), "{statement}: {word:?} in {}", run.stderr);
        }
    }
    // --set goes through the same checks.
    let run = cli(&["sql", "-e", "SELECT 1", "--set", "mini_batch_size=10 MB"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no spaces allowed"), "{}", run.stderr);
}

#[test]
fn planning_errors_exit_2_but_the_probe_failing_in_user_code_exits_42() {
    let d = tempfile::tempdir().unwrap();
    // The optimizer rejects it (physical planning), after the SQL itself was planned.
    let run = run_sql(
        d.path(),
        "SELECT (SELECT a FROM (VALUES (1), (2)) s(a) WHERE s.a > t.b) FROM (VALUES (1)) t(b)",
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("statement 1") && run.stderr.contains("must be aggregated"),
        "{}",
        run.stderr
    );
    // The probe runs the user's init() and run() while planning: their exceptions fail the
    // job (42), as they would at run time.
    for arguments in ["--init-fail", "--fail-ids 1"] {
        let run = run_sql(
            d.path(),
            &format!(
                "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:echo', \
                 error_threshold => 0, arguments => '{arguments}')"
            ),
            &[],
        );
        assert_eq!(run.code, 42, "{arguments}: {run:?}");
        assert!(run.stderr.contains("worker probe"), "{}", run.stderr);
    }
    std::fs::write(
        d.path().join("bad.py"),
        "def init():\n    raise ValueError('no model here')\n\ndef run(mini_batch):\n    return mini_batch\n",
    )
    .unwrap();
    let run = run_sql(
        d.path(),
        &format!(
            "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'bad.py', \
             error_threshold => 0, python => '{}')",
            python()
        ),
        &[],
    );
    assert_eq!(run.code, 42, "{run:?}");
    assert!(
        run.stderr.contains("ValueError: no model here")
            && run.stderr.contains(&format!(
                "The probe's logs: {}",
                d.path().join("parallel_run_logs/user").display()
            )),
        "{}",
        run.stderr
    );
}

#[test]
fn the_default_report_folder_is_made_only_when_a_run_executes_and_is_printed() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("score.py"),
        "def run(mini_batch):\n    return mini_batch\n",
    )
    .unwrap();
    let python = python();
    let folder = d.path().join("parallel_run_logs");
    for (sql, code) in [
        ("SELECT 1".to_string(), 0),
        // Planned, not run: a Python worker's files are written when one starts.
        (
            format!(
                "EXPLAIN SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'score.py', \
                 error_threshold => 0, python => '{python}', output_schema => 'id BIGINT')"
            ),
            0,
        ),
        (
            format!(
                "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'score.py', \
                 error_threshold => 0, python => '{python}', output_schema => 'id NOTATYPE')"
            ),
            2,
        ),
    ] {
        let run = cli_in(d.path(), &["sql", "-e", &sql]);
        assert_eq!(run.code, code, "{sql}: {run:?}");
        assert!(!folder.exists(), "{sql}: {folder:?} was created");
    }
    let run = cli_in(
        d.path(),
        &[
            "sql",
            "-e",
            "SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:echo', \
             error_threshold => 0)",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("parallel-run: report: {}", folder.display())),
        "{}",
        run.stderr
    );
    assert_eq!(report_summary(&folder)["status"], "succeeded");

    // EXPLAIN without output_schema probes: the probe's worker logs are the only files, and
    // their folder is printed.
    std::fs::remove_dir_all(&folder).unwrap();
    let sql = format!(
        "EXPLAIN SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'score.py', \
         error_threshold => 0, python => '{python}')"
    );
    let run = cli_in(d.path(), &["sql", "-e", &sql]);
    assert_eq!(run.code, 0, "{run:?}");
    let logs = folder.join("user");
    assert!(
        run.stderr.contains(&format!(
            "the output-schema probe's logs: {}",
            logs.display()
        )),
        "{}",
        run.stderr
    );
    assert!(logs.is_dir() && !folder.join("job_summary.json").exists());
}

#[test]
fn a_threshold_exceeded_fails_the_statement_with_exit_42_and_the_report_written() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 400, 400);
    let run = run_sql(
        d.path(),
        "CREATE EXTERNAL TABLE rows STORED AS PARQUET LOCATION 'in.parquet';\n\
         COPY (SELECT * FROM parallel_run(rows, entry_script => 'rust:echo', error_threshold => 0,\n\
               mini_batch_size => '2KB', process_count_per_node => 2, run_max_try => 1,\n\
               arguments => '--fail-ids 150', report_dir => 'report'))\n\
           TO 'out/rows.parquet' STORED AS PARQUET;\n\
         SELECT 'never reached';\n",
        &[],
    );
    assert_eq!(run.code, 42, "{run:?}");
    assert!(
        run.stderr.contains("error_threshold exceeded"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("never reached"), "{}", run.stdout);
    let report = d.path().join("report");
    let result = std::fs::read_to_string(report.join("job_result.txt")).unwrap();
    assert!(
        result.contains("The job failed: error_threshold exceeded"),
        "{result}"
    );
    assert!(result.contains("failing on purpose"), "{result}");
    assert_eq!(report_summary(&report)["status"], "failed");
    assert!(!mini_batches(&report).is_empty());
    // Like a YAML job's append_row file: no output for a failed job.
    assert!(!d.path().join("out/rows.parquet").exists());
    assert!(!d
        .path()
        .join("out/.rows.parquet.parallel_run_staging")
        .exists());
}

#[test]
fn nothing_succeeded_fails_like_append_row_does() {
    let d = tempfile::tempdir().unwrap();
    let run = cli(&[
        "sql",
        "-e",
        &format!(
            "SELECT * FROM parallel_run((SELECT 1 AS id UNION ALL SELECT 2), entry_script => \
             'rust:echo', error_threshold => -1, output_schema => 'id BIGINT', \
             arguments => '--drop-ids 1,2', report_dir => '{}')",
            d.path().join("r").display()
        ),
    ]);
    assert_eq!(run.code, 42, "{run:?}");
    assert!(
        run.stderr.contains("no succeeded mini-batch item"),
        "{}",
        run.stderr
    );
    assert_eq!(report_summary(&d.path().join("r"))["status"], "failed");
}

#[test]
fn explain_shows_the_operator_and_its_settings() {
    let d = tempfile::tempdir().unwrap();
    let ctx = session(d.path());
    let batches = tokio_runtime().block_on(collect(
        &ctx,
        "EXPLAIN SELECT id FROM parallel_run(\
           (SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(id, txt) WHERE id > 0),\
           entry_script => 'rust:echo', error_threshold => 3, process_count_per_node => 2,\
           mini_batch_size => 10, allowed_failed_count => 1, run_max_try => 4,\
           output_schema => 'id BIGINT, txt VARCHAR') WHERE id < 2",
    ));
    let plan = batches
        .iter()
        .flat_map(|b| {
            let types = b.column(0).as_string::<i32>().clone();
            let plans = b.column(1).as_string::<i32>().clone();
            (0..b.num_rows())
                .map(move |r| format!("{}:\n{}", types.value(r), plans.value(r)))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(&d.path().display().to_string(), "<dir>");
    let physical = plan
        .split_once("physical_plan:\n")
        .map(|(_, p)| p.trim_end().to_string())
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(
        physical,
        "FilterExec: id@0 < 2\n\
         \x20 ProjectionExec: expr=[id@0 as id]\n\
         \x20   ParallelRunReportExec: report_dir=<dir>/parallel_run_logs, preserve_order=false\n\
         \x20     ParallelRunExec: script=rust:echo, workers=2, mini_batch_size=10 bytes, \
         run_max_try=4, run_invocation_timeout=60s, error_threshold=3, allowed_failed_count=1, \
         allowed_failed_percent=none, inputs=[t]\n\
         \x20       ProjectionExec: expr=[column1@0 as id, column2@1 as txt]\n\
         \x20         FilterExec: column1@0 > 0\n\
         \x20           DataSourceExec: partitions=1, partition_sizes=[1]",
        "{plan}"
    );
    assert!(
        plan.contains("ParallelRun: script=rust:echo, workers=2"),
        "{plan}"
    );
    // A size with a unit is bytes only (it has no file count to show).
    let batches = tokio_runtime().block_on(collect(
        &ctx,
        "EXPLAIN SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:echo', \
         error_threshold => 0, mini_batch_size => '1MB', output_schema => 'id BIGINT')",
    ));
    let text = batches
        .iter()
        .flat_map(batch_rows)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("mini_batch_size=1048576 bytes,"), "{text}");
    assert!(!text.contains("files"), "{text}");
    // EXPLAIN runs nothing and writes no report.
    assert!(!d.path().join("parallel_run_logs").exists());
}

#[test]
fn results_can_be_filtered_joined_and_aggregated() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 2_000, 500);
    let ctx = session(d.path());
    let rt = tokio_runtime();
    rt.block_on(async {
        collect(
            &ctx,
            &format!(
                "CREATE EXTERNAL TABLE rows STORED AS PARQUET LOCATION '{}'",
                d.path().join("in.parquet").display()
            ),
        )
        .await;
        collect(&ctx, "SET parallel_run.entry_script = 'rust:echo'").await;
        collect(&ctx, "SET parallel_run.error_threshold = 0").await;
        collect(&ctx, "SET parallel_run.mini_batch_size = '8KB'").await;
        collect(&ctx, "SET parallel_run.process_count_per_node = 2").await;
        let grouped = collect(
            &ctx,
            "SELECT r.key, count(*) AS n, sum(p.id) AS total \
             FROM parallel_run((SELECT id FROM rows WHERE id < 1000), output_schema => 'id BIGINT') AS p \
             JOIN rows r ON r.id = p.id \
             WHERE p.id % 2 = 0 \
             GROUP BY r.key ORDER BY r.key",
        )
        .await;
        let keys: Vec<String> = grouped
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                c.as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(keys, vec!["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);
        let n: i64 = int_column(&grouped, "n").iter().sum();
        let total: i64 = int_column(&grouped, "total").iter().sum();
        assert_eq!(n, 500);
        assert_eq!(total, (0..1000).filter(|i| i % 2 == 0).sum::<i64>());

        // Named arguments override the SET values, here for this relation only.
        let counted = collect(
            &ctx,
            "SELECT count(*) AS n FROM parallel_run(rows, arguments => '--drop-ids 1,2,3', \
             error_threshold => 3)",
        )
        .await;
        assert_eq!(int_column(&counted, "n"), vec![1997]);
    });
    let report = d.path().join("parallel_run_logs");
    assert_eq!(report_summary(&report)["items_failed"], 3);
}

/// `parallel_run(...)` over ids 1..=3000 in mini-batches of 125 rows on three workers.
const THREE_WORKERS: &str = "parallel_run((SELECT value AS id FROM generate_series(1, 3000)), \
     entry_script => 'rust:echo', error_threshold => 0, mini_batch_size => 1000, \
     process_count_per_node => 3, output_schema => 'id BIGINT')";

#[test]
fn order_by_over_several_workers_plans_and_sorts() {
    let d = tempfile::tempdir().unwrap();
    let run = run_sql(
        d.path(),
        &format!(
            "SELECT * FROM {THREE_WORKERS} ORDER BY id DESC;\n\
             COPY (SELECT id FROM {THREE_WORKERS} ORDER BY id) TO 'sorted.parquet' STORED AS PARQUET;\n"
        ),
        &["--max-rows", "3"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("(3000 rows, the first 3 shown)"),
        "{}",
        run.stdout
    );
    let (select, _) = run.stdout.split_once("(3000 rows").unwrap();
    let shown: Vec<&str> = select
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("id"))
        .collect();
    assert_eq!(
        shown,
        vec!["| 3000 |", "| 2999 |", "| 2998 |"],
        "{}",
        run.stdout
    );
    assert_eq!(
        parquet_ids(&d.path().join("sorted.parquet")),
        (1..=3000).collect::<Vec<_>>()
    );
    for report in ["parallel_run_logs", "sorted.parquet.logs"] {
        let s = report_summary(&d.path().join(report));
        assert_eq!(s["status"], "succeeded", "{report}: {s}");
        assert_eq!(s["output_rows"], 3000, "{report}: {s}");
    }
}

#[test]
fn windows_joins_and_sorts_over_several_workers_and_partitions() {
    let d = tempfile::tempdir().unwrap();
    // Several target partitions: the optimizer repartitions, sorts and merges around the
    // operator.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(3));
    let ctx = register_with(
        &ctx,
        SqlOptions::new(builtin_registry()).base_dir(d.path().to_path_buf()),
    )
    .unwrap();
    let all: Vec<i64> = (1..=3000).collect();
    tokio_runtime().block_on(async {
        let windowed = collect(
            &ctx,
            &format!(
                "SELECT id, row_number() OVER (ORDER BY id) AS rn, \
                 count(*) OVER (PARTITION BY id % 3) AS per_class \
                 FROM {THREE_WORKERS} ORDER BY id"
            ),
        )
        .await;
        assert_eq!(int_column(&windowed, "id"), all);
        assert_eq!(int_column(&windowed, "rn"), all);
        assert!(int_column(&windowed, "per_class")
            .iter()
            .all(|n| *n == 1000));

        let joined = collect(
            &ctx,
            &format!(
                "SELECT a.id, b.id * 2 AS twice FROM {THREE_WORKERS} AS a \
                 JOIN {THREE_WORKERS} AS b ON a.id = b.id ORDER BY a.id"
            ),
        )
        .await;
        assert_eq!(int_column(&joined, "id"), all);
        assert_eq!(
            int_column(&joined, "twice"),
            all.iter().map(|i| i * 2).collect::<Vec<_>>()
        );

        // preserve_order's single partition sorts like any other.
        let ordered = collect(
            &ctx,
            &format!(
                "SELECT id FROM {} ORDER BY id DESC",
                THREE_WORKERS.replace("output_schema", "preserve_order => true, output_schema")
            ),
        )
        .await;
        assert_eq!(
            int_column(&ordered, "id"),
            all.iter().rev().copied().collect::<Vec<_>>()
        );
    });
    // preserve_order staged its results on disk (not in memory) and removed them once read.
    let reports: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("parallel_run_logs")
        })
        .collect();
    // The self-join's two identical calls are two runs (value identity includes the call's
    // position): two report folders.
    assert!(reports.len() >= 2, "{reports:?}");
    for report in reports {
        assert!(report.join("job_summary.json").is_file());
        assert!(
            !report.join(".parallel_run").exists(),
            "{}",
            report.display()
        );
    }
}

#[test]
fn output_schema_given_or_probed() {
    let d = tempfile::tempdir().unwrap();
    let ctx = session(d.path());
    let rt = tokio_runtime();
    let source = "(SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'c')) AS t(id, txt))";
    rt.block_on(async {
        collect(&ctx, "SET parallel_run.entry_script = 'rust:echo'").await;
        collect(&ctx, "SET parallel_run.error_threshold = 0").await;

        // Probed: run()'s own columns and types.
        let probed = collect(&ctx, &format!("SELECT * FROM parallel_run({source})")).await;
        let schema = probed[0].schema();
        let fields: Vec<(String, DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("id".to_string(), DataType::Int64),
                ("txt".to_string(), DataType::Utf8)
            ]
        );

        // Given: selected and cast by name.
        let given = collect(
            &ctx,
            &format!("SELECT * FROM parallel_run({source}, output_schema => 'id VARCHAR')"),
        )
        .await;
        assert_eq!(given[0].schema().field(0).name(), "id");
        assert!(matches!(
            given[0].schema().field(0).data_type(),
            DataType::Utf8 | DataType::Utf8View
        ));

        // The probe tries the next mini-batch when run() fails on the first one, so a job
        // that tolerates the failure runs.
        let tolerant = collect(
            &ctx,
            &format!(
                "SELECT id FROM parallel_run({source}, mini_batch_size => 10, run_max_try => 1, \
                 error_threshold => 1, arguments => '--fail-ids 1')"
            ),
        )
        .await;
        let mut ids = int_column(&tolerant, "id");
        ids.sort();
        assert_eq!(ids, vec![2, 3]);

        // A result that does not fit fails with the mini-batch and the column named.
        let error = ctx
            .sql(&format!(
                "SELECT * FROM parallel_run({source}, output_schema => 'score DOUBLE')"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("mini batch 0-0") && error.contains("\"score\""),
            "{error}"
        );
    });
}

#[test]
fn preserve_order_returns_rows_in_mini_batch_order() {
    let d = tempfile::tempdir().unwrap();
    let ctx = session(d.path());
    let ids = tokio_runtime().block_on(async {
        let batches = collect(
            &ctx,
            "SELECT id FROM parallel_run((SELECT value AS id FROM generate_series(1, 3000)), \
             entry_script => 'rust:echo', error_threshold => 0, mini_batch_size => 1000, \
             process_count_per_node => 3, preserve_order => true, output_schema => 'id BIGINT', \
             arguments => '--sleep-ids 1,2,3 --sleep-ms 30')",
        )
        .await;
        int_column(&batches, "id")
    });
    assert_eq!(ids, (1..=3000).collect::<Vec<_>>());
}

#[test]
fn a_limit_stops_the_job_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let run = cli(&[
        "sql",
        "-e",
        &format!(
            "SELECT * FROM parallel_run((SELECT value AS id FROM generate_series(1, 50000)), \
             entry_script => 'rust:echo', error_threshold => 0, mini_batch_size => 1000, \
             process_count_per_node => 2, output_schema => 'id BIGINT', report_dir => '{}') LIMIT 3",
            d.path().join("r").display()
        ),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("(3 rows)"), "{}", run.stdout);
    let s = report_summary(&d.path().join("r"));
    assert_eq!(s["status"], "succeeded");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("stopped reading before the end"),
        "{s}"
    );
}

#[test]
fn select_results_are_printed_with_a_row_cap() {
    let run = cli(&[
        "sql",
        "--max-rows",
        "5",
        "-e",
        "SELECT value FROM generate_series(1, 20)",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("(20 rows, the first 5 shown)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("| 5 "), "{}", run.stdout);
    assert!(!run.stdout.contains("| 6 "), "{}", run.stdout);
}

#[test]
fn register_from_rust_writes_the_report_when_the_query_ends() {
    let d = tempfile::tempdir().unwrap();
    let ctx = session(d.path());
    let batches = tokio_runtime().block_on(collect(
        &ctx,
        "SELECT * FROM parallel_run((SELECT value AS id FROM generate_series(1, 10)), \
         entry_script => 'rust:echo', error_threshold => 0, report_dir => 'rep')",
    ));
    assert_eq!(int_column(&batches, "id").len(), 10);
    let s = report_summary(&d.path().join("rep"));
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["items_succeeded"], 10);
    assert_eq!(s["output_rows"], 10);
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// EXPLAIN ANALYZE shows what the operator did: rows out, mini-batches, retries, time in
/// run(); the tree format gets short key=value lines.
#[test]
fn explain_analyze_shows_the_operator_metrics() {
    let d = tempfile::tempdir().unwrap();
    let ctx = session(d.path());
    let rt = tokio_runtime();
    let text = |sql: &str| {
        rt.block_on(collect(&ctx, sql))
            .iter()
            .flat_map(batch_rows)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let analyzed = text(
        "EXPLAIN ANALYZE SELECT * FROM parallel_run((SELECT * FROM (VALUES (1), (2), (3), (4)) AS t(id)), \
         entry_script => 'rust:echo', error_threshold => -1, mini_batch_size => '1', \
         output_schema => 'id BIGINT', arguments => '--fail-ids 3 --fail-tries 1')",
    );
    for metric in [
        "output_rows=4",
        "mini_batches_succeeded=",
        "mini_batches_failed=0",
        "retries=1",
        "items_in=4",
        "items_succeeded=4",
        "worker_time=",
    ] {
        assert!(analyzed.contains(metric), "{metric} in {analyzed}");
    }
    text("SET datafusion.explain.format = 'tree'");
    let tree = text(
        "EXPLAIN SELECT * FROM parallel_run((SELECT 1 AS id), entry_script => 'rust:echo', \
         error_threshold => 0, output_schema => 'id BIGINT')",
    );
    assert!(
        tree.contains("script: rust:echo") && tree.contains("workers: 2"),
        "{tree}"
    );
    assert!(
        !tree.contains("run_max_try") && !tree.contains("ParallelRunReportExec:"),
        "the tree shows the short forms: {tree}"
    );
}

/// A `parallel_run(...)` over a query with no rows fails as a job file's does (usually a
/// wrong filter), unless `allow_empty_input` is set.
#[test]
fn an_empty_input_fails_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let query = |extra: &str| {
        format!(
            "SELECT * FROM parallel_run((SELECT * FROM (VALUES (1)) AS t(id) WHERE id > 5), \
             entry_script => 'rust:echo', error_threshold => 0, output_schema => 'id BIGINT', \
             report_dir => '{}'{extra})",
            d.path().join("r").display()
        )
    };
    let run = cli(&["sql", "-e", &query("")]);
    assert_eq!(run.code, 42, "{run:?}");
    assert!(run.stderr.contains("hold no items"), "{run:?}");
    let run = cli(&["sql", "-e", &query(", allow_empty_input => 'true'")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(report_summary(&d.path().join("r"))["status"], "succeeded");
}

/// `SET parallel_run.dead_letter_rows = true`: the input rows of failed items go to
/// `failed_rows/` in the report folder, as a job file's do; a statement run again starts the
/// folder anew.
#[test]
fn dead_letter_rows_go_to_the_report_folder() {
    let d = tempfile::tempdir().unwrap();
    write_parquet(&d.path().join("in.parquet"), 0, 400, 400);
    std::fs::write(
        d.path().join("entry.py"),
        "import os\n\nFAIL_ID = int(os.environ[\"FAIL_ID\"])\n\n\
         def run(mini_batch):\n    \
             if FAIL_ID in set(mini_batch[\"id\"]):\n        \
                 raise ValueError(\"row %d is poison\" % FAIL_ID)\n    \
             return mini_batch[[\"id\"]]\n",
    )
    .unwrap();
    let statement = |fail_id: i64, isolate: bool| {
        format!(
            "CREATE EXTERNAL TABLE rows STORED AS PARQUET LOCATION 'in.parquet';\n\
             SET parallel_run.python = '{}';\n\
             SET parallel_run.dead_letter_rows = true;\n\
             COPY (SELECT * FROM parallel_run(rows, entry_script => 'entry.py',\n\
                   error_threshold => -1, mini_batch_size => '2KB', process_count_per_node => 2,\n\
                   run_max_try => 1, isolate_failures => {isolate}, output_schema => 'id BIGINT',\n\
                   environment_variables => 'FAIL_ID={fail_id}', report_dir => 'report'))\n\
               TO 'out/rows.parquet' STORED AS PARQUET;\n",
            python()
        )
    };
    let report = d.path().join("report");
    let failed_rows = report.join("failed_rows");
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&failed_rows)
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };

    // A failed mini-batch: all its rows, every input column, in a file named by its id.
    let run = run_sql(d.path(), &statement(150, false), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let letters = parquet_rows(&report.join("failed_items.parquet"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Vec<&str> = letters[0].split('|').collect();
    let (id, start, end) = (letter[1], letter[3], letter[4]);
    let (start, end): (i64, i64) = (start.parse().unwrap(), end.parse().unwrap());
    assert_eq!(files(), [failed_rows.join(format!("{id}.parquet"))]);
    let rows = parquet_rows(&files()[0]);
    assert_eq!(rows.len() as i64, end - start, "{rows:?}");
    assert!(
        rows.contains(&"150|k3|75.0|row number 150 with some text".to_string()),
        "{rows:?}"
    );
    let out = parquet_rows(&d.path().join("out/rows.parquet"));
    assert_eq!(out.len() as i64, 400 - (end - start));

    // Run again with nothing failing: the earlier execution's file is gone.
    let run = run_sql(d.path(), &statement(-1, false), &["--quiet"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(files(), Vec::<std::path::PathBuf>::new());

    // With isolate_failures: only the poison row.
    let run = run_sql(d.path(), &statement(150, true), &["--quiet"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(files().len(), 1);
    assert_eq!(
        parquet_rows(&files()[0]),
        ["150|k3|75.0|row number 150 with some text"]
    );
}
