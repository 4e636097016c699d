//! Jobs reading from and writing to each store: tabular inputs, globs, file datasets and a
//! Python entry script, each compared with the same job on local files.

use std::path::{Path, PathBuf};

use super::jobs::*;
use super::store::{shared, unique};
use crate::common::*;
use crate::servers::Kind;

/// Tabular input read by DataFusion straight from each store, output committed to each store:
/// the bytes equal a local run's; both stores cut the same mini-batches (by decoded size: a
/// local Parquet input is cut from its footers, so its mini-batches are not the reference).
#[test]
fn tabular_jobs_read_from_and_write_to_each_store() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    parquet_inputs(&data);
    // The local reference run.
    let local_dir = d.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let config = "mini_batch_size: 8KB";
    let rest = |input: &str, output: &str, extra: &str| {
        format!(
            "inputs:\n  - {{name: rows, path: \"{input}\", format: parquet}}\noutput: \"{output}\"\noutput_format: csv\npreserve_order: true\n{extra}"
        )
    };
    let job = echo_job(&local_dir, config, &rest(data.to_str().unwrap(), "out", ""));
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let expected = std::fs::read(local_dir.join("out/parallel_run_step.csv")).unwrap();
    assert!(
        processed(&local_dir.join("out")).len() > 3,
        "several mini-batches per file"
    );
    // The mini-batches (id and rows) of the first store's run, which the second must cut too.
    let mut store_batches: Option<Vec<(String, String)>> = None;

    let s3 = shared(Kind::S3);
    let azure = shared(Kind::Azure);
    let prefix = unique("tabular");
    s3.upload_dir(&data, &format!("{prefix}/in"));
    azure.upload_dir(&data, &format!("{prefix}/in"));
    // S3 -> Azure (S3 credentials from the environment, Azure's from storage_options), then
    // Azure -> S3 the other way round.
    for (from, to) in [(&s3, &azure), (&azure, &s3)] {
        let dir = d.path().join(format!("{:?}-to-{:?}", from.kind, to.kind));
        std::fs::create_dir_all(&dir).unwrap();
        let out_prefix = format!("{prefix}/out-{:?}", from.kind);
        let job = echo_job(
            &dir,
            config,
            &rest(
                &from.url(&format!("{prefix}/in/")),
                &to.url(&format!("{out_prefix}/")),
                &to.storage_options(""),
            ),
        );
        let run = run_env(&job, &from.env());
        assert_eq!(run.code, 0, "{:?} -> {:?}: {run:?}", from.kind, to.kind);
        // The default local mirror (under the temporary folder) keeps the logs; clean it up.
        let logs = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Logs: "))
            .map(PathBuf::from)
            .expect("the logs line");
        assert!(logs.join("job_result.txt").is_file(), "{logs:?}");
        assert!(
            logs.starts_with(std::env::temp_dir().join("parallel-run")),
            "{logs:?}"
        );
        std::fs::remove_dir_all(logs.parent().unwrap()).unwrap();
        assert!(
            run.stdout
                .contains(&to.url(&format!("{out_prefix}/parallel_run_step.csv"))),
            "{run:?}"
        );
        let got = to
            .get(&format!("{out_prefix}/parallel_run_step.csv"))
            .expect("the final object");
        assert!(
            got == expected,
            "{:?} -> {:?}: output differs from the local run",
            from.kind,
            to.kind
        );
        // The logs are uploaded beside it; the report lists the same mini-batches.
        let keys = to.list(&out_prefix);
        assert!(
            keys.iter().any(|k| k.ends_with("logs/job_summary.json")),
            "{keys:?}"
        );
        let report_bytes = to
            .get(&format!(
                "{out_prefix}/logs/sys/job_report/processed_mini-batches.csv"
            ))
            .unwrap();
        let copy = dir.join("report-copy");
        let report = copy.join("logs/sys/job_report/processed_mini-batches.csv");
        std::fs::create_dir_all(report.parent().unwrap()).unwrap();
        std::fs::write(&report, report_bytes).unwrap();
        let mut batches: Vec<(String, String)> = processed(&copy)
            .into_iter()
            .map(|r| (r["mini_batch_id"].clone(), r["rows"].clone()))
            .collect();
        batches.sort();
        assert!(batches.len() > 3, "several mini-batches: {batches:?}");
        match &store_batches {
            None => store_batches = Some(batches),
            Some(first) => assert_eq!(&batches, first, "the same mini-batches from each store"),
        }
        assert!(
            !keys.iter().any(|k| k.contains(".parallel_run")),
            "{keys:?}"
        );
    }
}

/// A CSV glob over a prefix and a single object: both read from the store.
#[test]
fn globs_and_single_objects_are_read() {
    let s3 = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    let prefix = unique("glob");
    let data = d.path().join("data");
    write_csv(&data.join("a.csv"), 0, 100);
    write_csv(&data.join("b.csv"), 100, 100);
    std::fs::write(data.join("notes.txt"), "not csv").unwrap();
    s3.upload_dir(&data, &prefix);
    for (input, n) in [
        (s3.url(&format!("{prefix}/*.csv")), 200),
        (s3.url(&format!("{prefix}/b.csv")), 100),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let job = echo_job(
            dir.path(),
            "mini_batch_size: 2KB",
            &format!(
                "inputs:\n  - {{name: rows, path: \"{input}\", format: csv}}\noutput: out\n{}",
                s3.storage_options("")
            ),
        );
        let run = run_env(&job, &[]);
        assert_eq!(run.code, 0, "{input}: {run:?}");
        let ids = txt_ids(&dir.path().join("out/parallel_run_step.txt"));
        assert_eq!(ids.len(), n, "{input}");
    }
}

/// File datasets on each store: listed, downloaded ahead into the cache (a budget smaller
/// than one mini-batch still lets the job through), run() gets local files with the right
/// bytes, and the cache is gone afterwards. Results equal a local run's.
#[test]
fn file_datasets_are_downloaded_ahead_into_a_bounded_cache() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("files");
    text_files(&data, 25);
    let rest = |input: &str, extra: &str| {
        format!(
            "inputs:\n  - {{name: docs, path: \"{input}\", format: files}}\noutput: out\noutput_format: csv\npreserve_order: true\narguments: [--read-files]\n{extra}"
        )
    };
    let local = d.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let job = echo_job(
        &local,
        "mini_batch_size: 4",
        &rest(data.to_str().unwrap(), ""),
    );
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let expected = std::fs::read_to_string(local.join("out/parallel_run_step.csv")).unwrap();
    assert_eq!(expected.lines().count(), 26, "{expected}");

    let prefix = unique("files");
    for kind in [Kind::S3, Kind::Azure] {
        let store = shared(kind);
        store.upload_dir(&data, &format!("{prefix}/docs"));
        let dir = d.path().join(format!("{kind:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("cache");
        let job = echo_job(
            &dir,
            "mini_batch_size: 4",
            &rest(
                &store.url(&format!("{prefix}/docs/")),
                &store.storage_options(&format!(
                    "cache_dir: {}\ncache_size: 100\nprefetch_files: 6\ndownload_concurrency: 3",
                    cache.display()
                )),
            ),
        );
        let run = run_env(&job, &[]);
        assert_eq!(run.code, 0, "{kind:?}: {run:?}");
        let got = std::fs::read_to_string(dir.join("out/parallel_run_step.csv")).unwrap();
        // Object stores list keys in byte order, the local walk folder by folder: same here.
        assert_eq!(got, expected, "{kind:?}");
        let rows = processed(&dir.join("out"));
        assert_eq!(rows.len(), 7, "{kind:?}: 25 files, 4 per mini-batch");
        // Every cached file was removed, and the job's cache folder with them.
        let left: Vec<_> = walkdir::WalkDir::new(&cache)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().to_path_buf())
            .collect();
        assert!(left.is_empty(), "{kind:?}: {left:?}");
    }
}

/// A Python entry script over a file dataset on S3 gets local paths (as in PRS); the output
/// goes to Azure and equals a local run's.
#[test]
fn python_file_dataset_from_s3_to_azure() {
    const SCRIPT: &str = r#"
import os

def init():
    pass

def run(mini_batch):
    out = []
    for path in mini_batch:
        assert os.path.isfile(path), path
        assert "://" not in path, path
        with open(path) as f:
            out.append(os.path.basename(path) + " " + str(len(f.read())))
    return out
"#;
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("files");
    text_files(&data, 12);
    std::fs::write(d.path().join("entry.py"), SCRIPT).unwrap();
    let python = python();
    let job_for = |dir: &Path, input: &str, output: &str, extra: &str| {
        std::fs::create_dir_all(dir).unwrap();
        write_job(
            dir,
            &format!(
                "entry_script: {}\nenvironment: {{python: {python}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\nmini_batch_size: 5",
                d.path().join("entry.py").display()
            ),
            &format!(
                "inputs:\n  - {{name: docs, path: \"{input}\", format: files}}\noutput: \"{output}\"\npreserve_order: true\n{extra}"
            ),
        )
    };
    let local = d.path().join("local");
    let job = job_for(&local, data.to_str().unwrap(), "out", "");
    let run = run_job(&job, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let expected = std::fs::read(local.join("out/parallel_run_step.txt")).unwrap();

    let s3 = shared(Kind::S3);
    let azure = shared(Kind::Azure);
    let prefix = unique("python");
    s3.upload_dir(&data, &format!("{prefix}/docs"));
    let remote = d.path().join("remote");
    let job = job_for(
        &remote,
        &s3.url(&format!("{prefix}/docs")),
        &azure.url(&format!("{prefix}/out")),
        &azure.storage_options(&format!("local_dir: {}", remote.join("mirror").display())),
    );
    let run = run_env(&job, &s3.env());
    assert_eq!(run.code, 0, "{run:?}");
    let got = azure
        .get(&format!("{prefix}/out/parallel_run_step.txt"))
        .expect("the final object");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    // The local mirror keeps the logs; the final file was uploaded, not kept twice.
    assert!(remote.join("mirror/logs/job_result.txt").is_file());
    assert!(!remote.join("mirror/parallel_run_step.txt").exists());
}

/// A local MLTable file whose `paths:` point at each store: the data is read from the store
/// with the MLTable's read_delimited options (`;`, no header row); options the object-storage
/// reader cannot honour yet (include_path_column) are refused, naming the input.
#[test]
fn mltable_paths_on_each_store_are_read() {
    let d = tempfile::tempdir().unwrap();
    let prefix = unique("mltable");
    for store in [shared(Kind::S3), shared(Kind::Azure)] {
        let data = format!("{prefix}/{:?}/sales", store.kind);
        store.put(&format!("{data}/a.csv"), b"1;ann\n2;bob\n".to_vec());
        store.put(&format!("{data}/b.csv"), b"3;cy\n".to_vec());
        let dir = d.path().join(format!("{:?}", store.kind));
        std::fs::create_dir_all(dir.join("table")).unwrap();
        let mltable = |extra: &str| {
            std::fs::write(
                dir.join("table/MLTable"),
                format!(
                    "paths:\n  - folder: {}\ntransformations:\n  - read_delimited:\n      delimiter: ';'\n      header: no_header\n{extra}",
                    store.url(&format!("{data}/"))
                ),
            )
            .unwrap();
        };
        mltable("");
        let job = echo_job(
            &dir,
            "",
            "inputs:\n  - {name: sales, path: table, format: mltable}\noutput: out\noutput_format: csv\npreserve_order: true\n",
        );
        let run = run_env(&job, &store.env());
        assert_eq!(run.code, 0, "{:?}: {run:?}", store.kind);
        assert_eq!(
            lines(&dir.join("out/parallel_run_step.csv")),
            ["Column1,Column2", "1,ann", "2,bob", "3,cy"],
            "{:?}",
            store.kind
        );
        mltable("      include_path_column: true\n");
        let run = cli_env(
            &["run", job.to_str().unwrap(), "--quiet", "--overwrite"],
            &store.env(),
        );
        assert_eq!(run.code, 2, "{:?}: {run:?}", store.kind);
        assert!(
            run.stderr.contains("\"sales\"")
                && run.stderr.contains("include_path_column")
                && run.stderr.contains("object storage"),
            "{:?}: {run:?}",
            store.kind
        );
    }
}

/// `models:` naming an object and a prefix on each store: downloaded once when the job
/// starts, and `Model.get_model_path` gives the local copies.
#[test]
fn models_on_each_store_are_downloaded_for_the_model_stand_in() {
    let d = tempfile::tempdir().unwrap();
    let prefix = unique("models");
    for store in [shared(Kind::S3), shared(Kind::Azure)] {
        let root = format!("{prefix}/{:?}", store.kind);
        store.put(&format!("{root}/iris.txt"), b"iris-weights".to_vec());
        store.put(&format!("{root}/big/a.bin"), b"A".to_vec());
        store.put(&format!("{root}/big/sub/b.bin"), b"BB".to_vec());
        let dir = d.path().join(format!("{:?}", store.kind));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("in.csv"), "x\n1\n2\n").unwrap();
        std::fs::write(
            dir.join("score.py"),
            "import os\n\
             from azureml.core.model import Model\n\
             def init():\n\
             \x20   global line\n\
             \x20   text = open(Model.get_model_path('iris')).read()\n\
             \x20   big = Model.get_model_path('big', version=2)\n\
             \x20   files = sorted(os.path.relpath(os.path.join(r, f), big) for r, _, fs in os.walk(big) for f in fs)\n\
             \x20   line = text + ' ' + ','.join(files)\n\
             def run(mini_batch):\n\
             \x20   return [line] * len(mini_batch)\n",
        )
        .unwrap();
        let job = write_job(
            &dir,
            &format!(
                "entry_script: score.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 1",
                python()
            ),
            &format!(
                "inputs:\n  - {{name: rows, path: in.csv, format: csv}}\nmodels: {{iris: \"{}\", \"big:2\": \"{}\"}}\noutput: out\n",
                store.url(&format!("{root}/iris.txt")),
                store.url(&format!("{root}/big/"))
            ),
        );
        let run = run_env(&job, &store.env());
        assert_eq!(run.code, 0, "{:?}: {run:?}", store.kind);
        assert_eq!(
            lines(&dir.join("out/parallel_run_step.txt")),
            [
                "iris-weights a.bin,sub/b.bin",
                "iris-weights a.bin,sub/b.bin"
            ],
            "{:?}",
            store.kind
        );
        // A model URL with nothing behind it fails before any worker starts.
        let missing = write_job(
            &dir,
            &format!(
                "entry_script: score.py\nenvironment: {{python: {}}}\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1",
                python()
            ),
            &format!(
                "inputs:\n  - {{name: rows, path: in.csv, format: csv}}\nmodels: {{iris: \"{}\"}}\noutput: out-missing\n",
                store.url(&format!("{root}/nothing/"))
            ),
        );
        let run = run_env(&missing, &store.env());
        assert_eq!(run.code, 2, "{:?}: {run:?}", store.kind);
        assert!(run.stderr.contains("models.iris"), "{run:?}");
    }
}

/// An MLTable file on each store (its data beside it, named relatively): fetched and read
/// before the job starts; `show-config` writes the input as given.
#[test]
fn mltable_files_on_each_store_are_fetched_and_read() {
    let d = tempfile::tempdir().unwrap();
    let prefix = unique("mltable-file");
    for store in [shared(Kind::S3), shared(Kind::Azure)] {
        let table = format!("{prefix}/{:?}/sales", store.kind);
        store.put(
            &format!("{table}/MLTable"),
            b"paths:\n  - folder: ./data/\ntransformations:\n  - read_delimited:\n      delimiter: ';'\n      header: no_header\n  - keep_columns: [Column2]\n".to_vec(),
        );
        store.put(&format!("{table}/data/a.csv"), b"1;ann\n2;bob\n".to_vec());
        store.put(&format!("{table}/data/b.csv"), b"3;cy\n".to_vec());
        let dir = d.path().join(format!("{:?}", store.kind));
        std::fs::create_dir_all(&dir).unwrap();
        let job = echo_job(
            &dir,
            "",
            &format!(
                "inputs:\n  - {{name: sales, path: \"{}\", format: mltable}}\noutput: out\noutput_format: csv\npreserve_order: true\n",
                store.url(&format!("{table}/"))
            ),
        );
        let run = run_env(&job, &store.env());
        assert_eq!(run.code, 0, "{:?}: {run:?}", store.kind);
        assert_eq!(
            lines(&dir.join("out/parallel_run_step.csv")),
            ["Column2", "ann", "bob", "cy"],
            "{:?}",
            store.kind
        );
        let shown = cli_env(&["show-config", job.to_str().unwrap()], &store.env());
        assert_eq!(shown.code, 0, "{shown:?}");
        assert!(
            shown.stdout.contains("format: mltable") && shown.stdout.contains(&table),
            "{}",
            shown.stdout
        );
        let validate = cli_env(&["validate", job.to_str().unwrap()], &store.env());
        assert_eq!(validate.code, 0, "{validate:?}");
        // No MLTable file there: a configuration error naming the input.
        let missing = echo_job(
            &dir,
            "",
            &format!(
                "inputs:\n  - {{name: sales, path: \"{}\", format: mltable}}\noutput: out-missing\n",
                store.url(&format!("{prefix}/nothing/"))
            ),
        );
        let run = run_env(&missing, &store.env());
        assert_eq!(run.code, 2, "{:?}: {run:?}", store.kind);
        assert!(
            run.stderr.contains("MLTable") && run.stderr.contains("nothing"),
            "{run:?}"
        );
    }
}
