//! One run at a time on an object-storage output: the lease object
//! `<output>/.parallel_run/lease.json` (created if absent, renewed on its e-tag, removed at the
//! end), against the S3 test server (s3s-fs 0.14.1 honours `If-None-Match: *` and `If-Match` on
//! PUT, checked before the write rather than atomically with it: these tests never race two
//! creates).

use super::jobs::*;
use super::store::{shared, unique, Store};
use crate::common::*;
use crate::servers::Kind;

fn lease_key(prefix: &str) -> String {
    format!("{prefix}/.parallel_run/lease.json")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A lease as another machine's run writes it, last renewed `age` seconds ago.
fn foreign_lease(store: &Store, prefix: &str, host: &str, age: u64) {
    let now = unix_now();
    let lease = serde_json::json!({
        "host": host, "boot_id": "another-boot", "pid": 4242, "started": now - age - 100,
        "renewed": now - age, "renewals": 7, "run": 1, "ttl_secs": 60
    });
    store.put(&lease_key(prefix), serde_json::to_vec(&lease).unwrap());
}

/// While a run holds the output (through another local mirror, so the local lock file plays
/// no part), a second run is refused with exit 2 naming the output, the holder and what to
/// do; the first one finishes, and its lease is gone.
#[test]
fn a_second_run_while_the_first_holds_the_lease_is_refused() {
    let store = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    let prefix = unique("lease-busy");
    let first_mirror = d.path().join("mirror-1");
    let job = slow_tabular_job(
        &store,
        d.path(),
        &store.url(&format!("{prefix}/")),
        &format!("local_dir: {}", first_mirror.display()),
    );
    let second_job = d.path().join("second.yaml");
    let text = std::fs::read_to_string(&job).unwrap().replace(
        &first_mirror.display().to_string(),
        &d.path().join("mirror-2").display().to_string(),
    );
    std::fs::write(&second_job, text).unwrap();

    let child = spawn_job(&job, &store.env());
    let pid = child.id();
    wait_for_mini_batches(&first_mirror, 1);
    assert!(
        store.get(&lease_key(&prefix)).is_some(),
        "the lease is held"
    );
    let second = run_env(&second_job, &store.env());
    let first = finish(child);
    assert_eq!(second.code, 2, "{second:?}");
    let message = &second.stderr;
    assert!(
        message.contains(&store.url(&format!("{prefix}/"))),
        "{message}"
    );
    assert!(message.contains(&format!("process {pid}")), "{message}");
    assert!(message.contains("lease.json"), "names the lease: {message}");
    assert!(
        message.contains("stale"),
        "says how to take it over: {message}"
    );
    assert!(
        !d.path().join("mirror-2/logs/ledger").exists(),
        "nothing started"
    );

    assert_eq!(first.code, 0, "{first:?}");
    let text = String::from_utf8(
        store
            .get(&format!("{prefix}/parallel_run_step.txt"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
    assert_eq!(store.get(&lease_key(&prefix)), None, "released at the end");
}

/// A live lease of another machine refuses the run; one not renewed for longer than its
/// period is taken over (the run says so), and removed when the run ends.
#[test]
fn a_stale_lease_is_taken_over_and_a_live_one_is_not() {
    let store = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    let prefix = unique("lease-stale");
    let data = d.path().join("data");
    write_parquet(&data.join("p.parquet"), 0, 300, 100);
    store.upload_dir(&data, &format!("{prefix}-in"));
    let job = echo_job(
        d.path(),
        "mini_batch_size: 2KB",
        &format!(
            "inputs:\n  - {{name: rows, path: \"{}\", format: parquet}}\noutput: \"{}\"\n{}",
            store.url(&format!("{prefix}-in/")),
            store.url(&format!("{prefix}/")),
            store.storage_options(&format!("local_dir: {}", d.path().join("mirror").display()))
        ),
    );

    foreign_lease(&store, &prefix, "busy-vm", 5);
    let refused = run_env(&job, &store.env());
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("host busy-vm, process 4242, run 1"),
        "{refused:?}"
    );

    foreign_lease(&store, &prefix, "lost-vm", 600);
    let run = run_env(&job, &store.env());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("took over the lease of host lost-vm"),
        "{run:?}"
    );
    let text = String::from_utf8(
        store
            .get(&format!("{prefix}/parallel_run_step.txt"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sorted_ids(&text), (0..300).collect::<Vec<_>>());
    assert_eq!(store.get(&lease_key(&prefix)), None, "released at the end");
}
