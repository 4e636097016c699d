//! The ledger: kill -9 and --resume, --rerun-failed, refusals, status, Ctrl+C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A child process killed when dropped (a failed assertion never leaves a run behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(job: &Path, extra: &[&str]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_parallel-run"))
            .args(["run", job.to_str().unwrap(), "--quiet"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn records(out: &Path) -> usize {
    std::fs::read_to_string(out.join("logs/ledger/records.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits (bounded) until the run has recorded at least `n` mini-batches; false when it ended or
/// the time ran out first.
fn wait_for_records(run: &mut Running, out: &Path, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if records(out) >= n {
            return true;
        }
        if run.0.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn kill9(run: &mut Running) {
    unsafe {
        libc::kill(run.0.id() as i32, libc::SIGKILL);
    }
    let _ = run.0.wait();
}

/// The kinds of job the kill tests cover.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Table,
    Keyed,
    Files,
}

/// A job over 10 Parquet files of 100 rows (or 40 small text files), slow enough to be killed
/// part-way, with `preserve_order` so that outputs compare byte for byte.
fn slow_job(dir: &Path, kind: Kind) -> PathBuf {
    let (config, input) = match kind {
        Kind::Table => {
            for i in 0..10 {
                write_parquet(&dir.join(format!("in/p{i}.parquet")), i * 100, 100, 100);
            }
            (
                "mini_batch_size: 4KB",
                "{name: rows, path: in, format: parquet}",
            )
        }
        Kind::Keyed => {
            for i in 0..10 {
                write_parquet(&dir.join(format!("in/p{i}.parquet")), i * 100, 100, 100);
            }
            (
                "partition_keys: [key]",
                "{name: rows, path: in, format: parquet}",
            )
        }
        Kind::Files => {
            std::fs::create_dir_all(dir.join("docs")).unwrap();
            for i in 0..40 {
                std::fs::write(dir.join(format!("docs/f{i:02}.txt")), format!("file {i}")).unwrap();
            }
            (
                "mini_batch_size: 2",
                "{name: docs, path: docs, format: files}",
            )
        }
    };
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\noutput_action: append_row\nerror_threshold: 0\nnode_count: 1\nprocess_count_per_node: 2\n{config}"
        ),
        &format!(
            "inputs:\n  - {input}\noutput: out\noutput_format: csv\npreserve_order: true\narguments: [--sleep-ms, '120']\n"
        ),
    )
}

fn kill_then_resume(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let job = slow_job(dir.path(), kind);
    let out = dir.path().join("out");
    let clean = dir.path().join("clean");
    let reference = run_job(&job, &["--output", clean.to_str().unwrap()]);
    assert_eq!(reference.code, 0, "{reference:?}");
    let total = summary(&clean)["mini_batches_total"].as_u64().unwrap();
    assert!(total >= 7, "{kind:?}: {total} mini-batches");

    // Killed twice: before any commit could be counted on, and after a few commits.
    let mut run = start(&job, &[]);
    assert!(
        wait_for_records(&mut run, &out, 3),
        "{kind:?}: the run records mini-batches"
    );
    kill9(&mut run);
    let committed = records(&out);
    assert!(
        committed < total as usize,
        "{kind:?}: killed before the end"
    );

    // A plain run must not throw that work away.
    let plain = run_job(&job, &[]);
    assert_eq!(plain.code, 2, "{plain:?}");
    assert!(
        plain.stderr.contains("--resume") && plain.stderr.contains("--restart"),
        "{plain:?}"
    );

    // Resumed and killed again, then resumed to the end.
    let mut run = start(&job, &["--resume"]);
    let again = wait_for_records(&mut run, &out, committed + 2);
    kill9(&mut run);
    assert!(
        again || records(&out) == total as usize,
        "{kind:?}: the resumed run recorded more mini-batches, or finished the job"
    );
    let resumed = run_job(&job, &["--resume"]);
    assert_eq!(resumed.code, 0, "{kind:?}: {resumed:?}");
    let s = summary(&out);
    assert_eq!(s["resumed"], true, "{s}");
    let skipped = s["mini_batches_skipped"].as_u64().unwrap();
    assert!(skipped >= committed as u64, "{kind:?}: {s}");
    assert_eq!(s["mini_batches_total"].as_u64().unwrap(), total, "{s}");
    assert_eq!(s["mini_batches_succeeded"].as_u64().unwrap(), total, "{s}");
    assert_eq!(
        processed(&out).len() as u64,
        total,
        "the report covers the whole job"
    );
    let expected = std::fs::read(clean.join("parallel_run_step.csv")).unwrap();
    let got = std::fs::read(out.join("parallel_run_step.csv")).unwrap();
    assert!(
        expected == got,
        "{kind:?}: the resumed output equals an uninterrupted run's, byte for byte"
    );
    // Nothing ran twice: each mini-batch has exactly one succeeded record in the ledger.
    let ledger = std::fs::read_to_string(out.join("logs/ledger/records.jsonl")).unwrap();
    let mut ids: Vec<String> = ledger
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["record"]["id"].as_str().unwrap().to_string())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "{kind:?}: no mini-batch recorded twice");
    assert_eq!(n as u64, total);
    // The work folder is gone, the ledger stays with the report.
    assert!(!out.join(".parallel_run").exists());
    assert!(out.join("logs/ledger/job.json").is_file());
}

#[test]
fn kill_9_then_resume_gives_the_output_of_an_uninterrupted_run() {
    kill_then_resume(Kind::Table);
}

#[test]
fn kill_9_then_resume_with_partition_keys() {
    kill_then_resume(Kind::Keyed);
}

#[test]
fn kill_9_then_resume_a_file_dataset() {
    kill_then_resume(Kind::Files);
}

/// A Python script failing for the mini-batch holding id 150 while `broken` exists beside it.
fn fixable_job(dir: &Path) -> PathBuf {
    for i in 0..10 {
        write_parquet(&dir.join(format!("in/p{i}.parquet")), i * 100, 100, 100);
    }
    std::fs::write(
        dir.join("score.py"),
        "import os\n\
         HERE = os.path.dirname(os.path.abspath(__file__))\n\
         def init():\n    pass\n\
         def run(mini_batch):\n\
         \x20   if os.path.exists(os.path.join(HERE, 'broken')) and (mini_batch['id'] == 150).any():\n\
         \x20       raise ValueError('bad row 150')\n\
         \x20   return mini_batch[['id']]\n",
    )
    .unwrap();
    std::fs::write(dir.join("broken"), "").unwrap();
    write_job(
        dir,
        &format!(
            "entry_script: score.py\noutput_action: append_row\nerror_threshold: -1\nrun_max_try: 1\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 4KB\nenvironment: {{python: {}}}",
            python()
        ),
        "inputs:\n  - {name: rows, path: in, format: parquet}\noutput: out\noutput_format: csv\n",
    )
}

fn csv_ids(path: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut ids: Vec<i64> = text.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    ids.sort();
    ids
}

#[test]
fn rerun_failed_after_fixing_the_cause_completes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let job = fixable_job(dir.path());
    let out = dir.path().join("out");
    let first = run_job(&job, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let s = summary(&out);
    assert_eq!(s["mini_batches_failed"], 1, "{s}");
    let ids = csv_ids(&out.join("parallel_run_step.csv"));
    assert!(!ids.contains(&150));
    // Dead letters name the failed mini-batch.
    let failed = std::fs::read_to_string(out.join("logs/failed_items.csv")).unwrap();
    assert!(failed.contains("bad row 150"), "{failed}");

    // --resume has nothing to do on a finished job.
    let resume = run_job(&job, &["--resume"]);
    assert_eq!(resume.code, 2, "{resume:?}");
    assert!(resume.stderr.contains("--rerun-failed"), "{resume:?}");

    std::fs::remove_file(dir.path().join("broken")).unwrap();
    let rerun = run_job(&job, &["--rerun-failed"]);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let s = summary(&out);
    assert_eq!(s["mini_batches_failed"], 0, "{s}");
    assert_eq!(s["mini_batches_rerun"], 1, "{s}");
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(
        csv_ids(&out.join("parallel_run_step.csv")),
        (0..1000).collect::<Vec<_>>(),
        "every row exactly once, as if the failed mini-batch had succeeded the first time"
    );
    // Nothing failed any more: the committed parts are gone.
    assert!(!out.join(".parallel_run").exists());
}

/// A job killed part-way, for the refusal tests.
fn interrupted(dir: &Path) -> (PathBuf, PathBuf) {
    let job = slow_job(dir, Kind::Table);
    let out = dir.join("out");
    let mut run = start(&job, &[]);
    assert!(wait_for_records(&mut run, &out, 3));
    kill9(&mut run);
    (job, out)
}

#[test]
fn resume_refuses_a_changed_setting_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = interrupted(dir.path());
    let changed = run_job(&job, &["--resume", "--set", "mini_batch_size=8KB"]);
    assert_eq!(changed.code, 2, "{changed:?}");
    assert!(
        changed.stderr.contains("mini_batch_size") && changed.stderr.contains("--force"),
        "{changed:?}"
    );
    // Timeouts and tries may change.
    let timeout = run_job(
        &job,
        &[
            "--resume",
            "--set",
            "run_invocation_timeout=120",
            "--set",
            "run_max_try=5",
        ],
    );
    assert_eq!(timeout.code, 0, "{timeout:?}");
    assert_eq!(summary(&out)["resumed"], true);

    let dir = tempfile::tempdir().unwrap();
    let (job, out) = interrupted(dir.path());
    let forced = run_job(
        &job,
        &["--resume", "--force", "--set", "mini_batch_size=8KB"],
    );
    // Forced: the input is cut with the new size; a committed mini-batch whose slice is not
    // the same any more runs again, one the new cut does not have is left out: every row once.
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stderr.contains("changed settings"), "{forced:?}");
    let text = std::fs::read_to_string(out.join("parallel_run_step.csv")).unwrap();
    let mut ids: Vec<i64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
}

#[test]
fn resume_refuses_a_changed_input() {
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = interrupted(dir.path());
    // The first file's rows change (same count, other values).
    write_parquet(&dir.path().join("in/p0.parquet"), 5000, 100, 100);
    let changed = run_job(&job, &["--resume"]);
    assert_ne!(changed.code, 0, "{changed:?}");
    assert!(
        changed.stderr.contains("changed") && changed.stderr.contains("--restart"),
        "{changed:?}"
    );
    assert!(
        !out.join("parallel_run_step.csv").exists(),
        "no output from a refused resume"
    );
    // --restart starts over.
    let restart = run_job(&job, &["--restart"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    assert_eq!(summary(&out)["resumed"], false);
    assert_eq!(summary(&out)["mini_batches_skipped"], 0);
}

/// A ledger written before local Parquet inputs were cut from their footers (its
/// fingerprints are of the slices' rows, as `slice_fingerprint` made them): a resume refuses
/// loudly, saying to start over with --restart, and writes nothing; --restart then runs.
#[test]
fn resume_refuses_a_ledger_of_the_earlier_parquet_cut() {
    use parallel_run::batch::{slice_fingerprint, ItemKind, Lineage, MiniBatch, MiniBatchId};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let (job, out) = interrupted(dir.path());
    let mut batches = Vec::new();
    for i in 0..10 {
        let file = std::fs::File::open(dir.path().join(format!("in/p{i}.parquet"))).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let ledger = out.join("logs/ledger/records.jsonl");
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(text.lines().count() >= 3);
    let mut old = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id: MiniBatchId = v["record"]["id"].as_str().unwrap().parse().unwrap();
        let rows = &v["record"]["lineage"]["rows"];
        let (start, end) = (rows[0].as_u64().unwrap(), rows[1].as_u64().unwrap());
        let mini_batch = MiniBatch {
            id,
            kind: ItemKind::Rows,
            data: all.slice(start as usize, (end - start) as usize),
            lineage: Lineage {
                input: "rows".into(),
                rows: start..end,
            },
            partition_key_value: Default::default(),
        };
        v["slice"] = format!("{:016x}", slice_fingerprint(&mini_batch)).into();
        old.push_str(&serde_json::to_string(&v).unwrap());
        old.push('\n');
    }
    std::fs::write(&ledger, old).unwrap();
    let resumed = run_job(&job, &["--resume"]);
    assert_ne!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed.stderr.contains("is not cut as it was")
            && resumed.stderr.contains("footers")
            && resumed.stderr.contains("--restart"),
        "{resumed:?}"
    );
    assert!(
        !out.join("parallel_run_step.csv").exists(),
        "no output from a refused resume"
    );
    let restart = run_job(&job, &["--restart"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    assert_eq!(summary(&out)["mini_batches_skipped"], 0);
}

/// A resumed local Parquet input is cut from its footers again: the files its skipped
/// mini-batches cover are not read again, and the output is an uninterrupted run's. A file
/// whose modification time changed is a changed input (a mini-batch's fingerprint is made of
/// its files' identities, not of their rows): the resume is refused, saying to use
/// --restart, and writes nothing.
#[test]
fn resume_does_not_read_again_what_it_skips() {
    for touched in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let job = slow_job(dir.path(), Kind::Table);
        let text = std::fs::read_to_string(&job).unwrap();
        // One worker: mini-batches commit in order, so the first ones form one run.
        std::fs::write(
            &job,
            text.replace("process_count_per_node: 2", "process_count_per_node: 1"),
        )
        .unwrap();
        let clean = dir.path().join("clean");
        let reference = run_job(&job, &["--output", clean.to_str().unwrap()]);
        assert_eq!(reference.code, 0, "{reference:?}");
        let out = dir.path().join("out");
        let mut run = start(&job, &[]);
        assert!(wait_for_records(&mut run, &out, 4));
        kill9(&mut run);
        if touched {
            let file = std::fs::File::options()
                .append(true)
                .open(dir.path().join("in/p0.parquet"))
                .unwrap();
            file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
                .unwrap();
        }
        let resumed = run_job(&job, &["--resume"]);
        if touched {
            assert_ne!(resumed.code, 0, "{resumed:?}");
            assert!(
                resumed.stderr.contains("is not cut as it was")
                    && resumed.stderr.contains("--restart"),
                "{resumed:?}"
            );
            assert!(
                !out.join("parallel_run_step.csv").exists(),
                "no output from a refused resume"
            );
            continue;
        }
        assert_eq!(resumed.code, 0, "{resumed:?}");
        let s = summary(&out);
        assert!(s["mini_batches_skipped"].as_u64().unwrap() >= 4, "{s}");
        let not_read = s["rows_not_read"].as_u64().unwrap();
        // 4 mini-batches of 4KB hold over 200 rows: files p0 and p1 at least (100 rows
        // each, one reader batch each).
        assert!(not_read >= 200 && not_read.is_multiple_of(100), "{s}");
        let expected = std::fs::read(clean.join("parallel_run_step.csv")).unwrap();
        let got = std::fs::read(out.join("parallel_run_step.csv")).unwrap();
        assert!(
            expected == got,
            "touched {touched}: the output of an uninterrupted run"
        );
    }
}

#[test]
fn resume_without_a_ledger_runs_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let job = slow_job(dir.path(), Kind::Table);
    let run = run_job(&job, &["--resume"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("nothing to resume"), "{run:?}");
    assert_eq!(summary(&dir.path().join("out"))["resumed"], false);
}

#[test]
fn status_shows_an_interrupted_job() {
    let dir = tempfile::tempdir().unwrap();
    let (_job, out) = interrupted(dir.path());
    let status = cli(&["status", out.to_str().unwrap()]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains("interrupted"), "{status:?}");
    assert!(status.stdout.contains("--resume"), "{status:?}");
    let json = cli(&["status", out.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(v["mini_batches_succeeded"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["state"], "interrupted");
    let none = cli(&["status", dir.path().to_str().unwrap()]);
    assert_eq!(none.code, 2, "{none:?}");
}

#[test]
fn ctrl_c_stops_cleanly_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let job = slow_job(dir.path(), Kind::Table);
    let out = dir.path().join("out");
    let mut run = Running(
        Command::new(env!("CARGO_BIN_EXE_parallel-run"))
            .args(["run", job.to_str().unwrap(), "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_records(&mut run, &out, 2));
    unsafe {
        libc::kill(run.0.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a Ctrl+C stops the run promptly");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let resumed = run_job(&job, &["--resume"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let s = summary(&out);
    assert!(s["mini_batches_skipped"].as_u64().unwrap() >= 2, "{s}");
    let text = std::fs::read_to_string(out.join("parallel_run_step.csv")).unwrap();
    assert_eq!(text.lines().count(), 1001, "header and every row once");
}

#[test]
fn killed_before_any_commit_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let job = slow_job(dir.path(), Kind::Table);
    let out = dir.path().join("out");
    let mut run = start(&job, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("logs/ledger/job.json").is_file() {
        assert!(Instant::now() < deadline, "the run starts its ledger");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill9(&mut run);
    let plain = run_job(&job, &[]);
    assert_eq!(plain.code, 2, "{plain:?}");
    let resumed = run_job(&job, &["--resume"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let text = std::fs::read_to_string(out.join("parallel_run_step.csv")).unwrap();
    assert_eq!(text.lines().count(), 1001, "header and every row once");
}

/// Killed when every mini-batch but the last was committed, with what a merge cut short
/// leaves behind (a partial temporary final file, even a stale final file): the resumed run
/// runs the last one and writes the final file anew.
#[test]
fn a_merge_cut_short_is_redone_by_the_resume() {
    let dir = tempfile::tempdir().unwrap();
    let job = slow_job(dir.path(), Kind::Table);
    // The last rows' mini-batch is slow: a wide window with all the others committed.
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        text.replace(
            "[--sleep-ms, '120']",
            "[--sleep-ms, '20', --sleep-ids, '999']",
        ),
    )
    .unwrap();
    let clean = dir.path().join("clean");
    let reference = run_job(&job, &["--output", clean.to_str().unwrap()]);
    assert_eq!(reference.code, 0, "{reference:?}");
    let total = summary(&clean)["mini_batches_total"].as_u64().unwrap() as usize;
    let out = dir.path().join("out");
    let mut run = start(&job, &[]);
    assert!(wait_for_records(&mut run, &out, total - 1));
    kill9(&mut run);
    std::fs::write(out.join(".parallel_run_step.csv.tmp"), "id,key\n1,partial").unwrap();
    std::fs::write(out.join("parallel_run_step.csv"), "stale").unwrap();
    let resumed = run_job(&job, &["--resume"]);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(
        std::fs::read(out.join("parallel_run_step.csv")).unwrap(),
        std::fs::read(clean.join("parallel_run_step.csv")).unwrap()
    );
    assert!(!out.join(".parallel_run_step.csv.tmp").exists());
}

#[test]
fn sql_reads_the_ledger_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let (_job, out) = interrupted(dir.path());
    let query = format!(
        "SELECT status, count(*) AS n, sum(total_items) AS items FROM parallel_run_ledger('{}') GROUP BY status",
        out.display()
    );
    let run = cli(&["sql", "-e", &query]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("SUCCEEDED"), "{run:?}");
    let bad = cli(&[
        "sql",
        "-e",
        "SELECT * FROM parallel_run_ledger('/nonexistent')",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("holds no job ledger"), "{bad:?}");
}

/// A resumable SQL statement (`SET parallel_run.resume = true`) killed part-way: run again,
/// it continues from its ledger in the report folder and writes every row once.
#[test]
fn a_resumable_sql_statement_continues_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        write_parquet(
            &dir.path().join(format!("in/p{i}.parquet")),
            i * 100,
            100,
            100,
        );
    }
    let sql = |target: &str| {
        format!(
            "CREATE EXTERNAL TABLE rows STORED AS PARQUET LOCATION 'in/';\n\
             SET parallel_run.entry_script = 'rust:echo';\n\
             SET parallel_run.error_threshold = 0;\n\
             SET parallel_run.process_count_per_node = 2;\n\
             SET parallel_run.mini_batch_size = '4KB';\n\
             SET parallel_run.arguments = '--sleep-ms 120';\n\
             SET parallel_run.output_schema = 'id BIGINT';\n\
             SET parallel_run.report_dir = 'report';\n\
             SET parallel_run.resume = true;\n\
             COPY (SELECT id FROM parallel_run(rows)) TO '{target}' STORED AS CSV;\n"
        )
    };
    std::fs::write(dir.path().join("job.sql"), sql("out.csv")).unwrap();
    let report = dir.path().join("report");
    let mut run = Running(
        Command::new(env!("CARGO_BIN_EXE_parallel-run"))
            .args([
                "sql",
                dir.path().join("job.sql").to_str().unwrap(),
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let ledger = report.join("ledger/records.jsonl");
    while std::fs::read_to_string(&ledger).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            Instant::now() < deadline,
            "the statement records mini-batches"
        );
        assert!(run.0.try_wait().unwrap().is_none(), "killed before the end");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut run);
    let committed = std::fs::read_to_string(&ledger).unwrap().lines().count() as u64;

    let again = cli(&[
        "sql",
        dir.path().join("job.sql").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(again.code, 0, "{again:?}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("job_summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["resumed"], true, "{s}");
    assert!(
        s["mini_batches_skipped"].as_u64().unwrap() >= committed,
        "{s}"
    );
    let text = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
    let mut ids: Vec<i64> = text.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 1000, "every row once");
    ids.sort();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    // Finished: the next run of the statement starts anew.
    std::fs::write(dir.path().join("job.sql"), sql("out2.csv")).unwrap();
    let fresh = cli(&[
        "sql",
        dir.path().join("job.sql").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(fresh.code, 0, "{fresh:?}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("job_summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["resumed"], false, "{s}");
}
