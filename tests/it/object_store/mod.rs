//! Inputs and outputs on object storage, against real servers on 127.0.0.1: s3s-fs (S3) and
//! Azurite (Azure Blob).
//!
//! `.ci/run` installs both, starts them and exports `PARALLEL_RUN_S3_ENDPOINT` (with
//! `PARALLEL_RUN_S3_BUCKET`, an existing bucket) and `PARALLEL_RUN_AZURITE_ENDPOINT`, plus the
//! binaries (`PARALLEL_RUN_S3S_FS_BIN`, `PARALLEL_RUN_AZURITE_BIN`). When an endpoint is not
//! set, these tests start a private server from the binary (the variables above, or the CI
//! cache under `~/.cache/parallel-run-ci/`); when no binary is found they FAIL with the
//! command that installs it. They never pass without a server. The fault tests (a server
//! stopped mid-job) always start their own server, so they can stop it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::common::*;

const S3_KEY: &str = "test";
const S3_SECRET: &str = "testsecret";
const S3_BUCKET: &str = "parallel-run-tests";
const AZURE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key.
const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const AZURE_CONTAINER: &str = "parallel-run-tests";

// ---------------------------------------------------------------------------------------------
// Servers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    S3,
    Azure,
}

fn home_cache() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    Path::new(&home).join(".cache/parallel-run-ci")
}

/// The s3s-fs binary: `$PARALLEL_RUN_S3S_FS_BIN` or the CI cache.
fn s3s_fs_bin() -> PathBuf {
    let path = std::env::var("PARALLEL_RUN_S3S_FS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home_cache().join("s3s-fs-0.14.1/bin/s3s-fs"));
    assert!(
        path.is_file(),
        "no S3 server for the object-storage tests: {} does not exist. Run `bash .ci/run`, or \
         install it with `cargo install s3s-fs@0.14.1 --features binary --root {}` (about 4 \
         minutes), or set PARALLEL_RUN_S3_ENDPOINT / PARALLEL_RUN_S3S_FS_BIN",
        path.display(),
        home_cache().join("s3s-fs-0.14.1").display()
    );
    path
}

/// The azurite-blob launcher: `$PARALLEL_RUN_AZURITE_BIN` or the CI cache.
fn azurite_bin() -> PathBuf {
    let path = std::env::var("PARALLEL_RUN_AZURITE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home_cache().join("azurite/node_modules/.bin/azurite-blob"));
    assert!(
        path.is_file(),
        "no Azure Blob server for the object-storage tests: {} does not exist. Run `bash \
         .ci/run`, or install Azurite with `npm install azurite@3` in {} (about 30 seconds), or \
         set PARALLEL_RUN_AZURITE_ENDPOINT / PARALLEL_RUN_AZURITE_BIN",
        path.display(),
        home_cache().join("azurite").display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "port {port} did not come {}",
        if up { "up" } else { "down" }
    );
}

/// A server process of ours, on a fixed port and data folder, that can be stopped and started
/// again. Killed when dropped (and, as a safety net, when the thread that started it ends).
struct Server {
    kind: Kind,
    port: u16,
    root: PathBuf,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start_new(kind: Kind) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server {
            kind,
            port: free_port(),
            root: dir.path().to_path_buf(),
            child: None,
            _dir: Some(dir),
        };
        if kind == Kind::S3 {
            std::fs::create_dir_all(server.root.join(S3_BUCKET)).unwrap();
        }
        server.start();
        if kind == Kind::Azure {
            create_container(&server.endpoint(), AZURE_CONTAINER);
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let mut command = match self.kind {
            Kind::S3 => {
                let mut c = Command::new(s3s_fs_bin());
                c.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                    .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
                    .arg(&self.root);
                c
            }
            Kind::Azure => {
                let mut c = Command::new(azurite_bin());
                c.args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &self.port.to_string(),
                ])
                .arg("--location")
                .arg(&self.root)
                .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"]);
                c
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when our thread ends.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().unwrap());
        wait_for_port(self.port, true);
    }

    /// Stops the server as an operator would (SIGTERM: Azurite saves its metadata then),
    /// killing it when it takes longer than 10 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals our own child process, by its id.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            wait_for_port(self.port, false);
        }
    }

    fn store(&self) -> Store {
        match self.kind {
            Kind::S3 => Store::s3(self.endpoint(), S3_BUCKET.into()),
            Kind::Azure => Store::azure(self.endpoint(), AZURE_CONTAINER.into()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shared servers: `.ci/run`'s, or private ones started once for this test binary (from
/// a thread that lives as long as the process, so the death signal fires only at exit).
fn shared(kind: Kind) -> Store {
    static S3: OnceLock<String> = OnceLock::new();
    static AZURE: OnceLock<String> = OnceLock::new();
    let (cell, variable) = match kind {
        Kind::S3 => (&S3, "PARALLEL_RUN_S3_ENDPOINT"),
        Kind::Azure => (&AZURE, "PARALLEL_RUN_AZURITE_ENDPOINT"),
    };
    let endpoint = cell.get_or_init(|| {
        if let Ok(endpoint) = std::env::var(variable) {
            if kind == Kind::Azure {
                create_container(&endpoint, AZURE_CONTAINER);
            }
            return endpoint;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = Server::start_new(kind);
            tx.send(server.endpoint()).unwrap();
            // Keep the server for the life of the process.
            let _keep = server;
            loop {
                std::thread::park();
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the private test server did not start")
    });
    match kind {
        Kind::S3 => Store::s3(
            endpoint.clone(),
            std::env::var("PARALLEL_RUN_S3_BUCKET").unwrap_or_else(|_| S3_BUCKET.into()),
        ),
        Kind::Azure => Store::azure(endpoint.clone(), AZURE_CONTAINER.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to a store from the tests

/// A bucket or container on a test server.
#[derive(Clone)]
struct Store {
    kind: Kind,
    endpoint: String,
    bucket: String,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A prefix unique to this test run.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

impl Store {
    fn s3(endpoint: String, bucket: String) -> Store {
        Store {
            kind: Kind::S3,
            endpoint,
            bucket,
        }
    }

    fn azure(endpoint: String, container: String) -> Store {
        Store {
            kind: Kind::Azure,
            endpoint,
            bucket: container,
        }
    }

    /// The same server, another (missing) bucket.
    fn with_bucket(&self, bucket: &str) -> Store {
        Store {
            bucket: bucket.into(),
            ..self.clone()
        }
    }

    fn url(&self, key: &str) -> String {
        let scheme = match self.kind {
            Kind::S3 => "s3",
            Kind::Azure => "az",
        };
        format!("{scheme}://{}/{key}", self.bucket)
    }

    /// `storage_options:` for a job (credentials given there).
    fn storage_options(&self, extra: &str) -> String {
        let mut text = String::from("storage_options:\n");
        match self.kind {
            Kind::S3 => {
                text.push_str(&format!("  aws_endpoint: {}\n", self.endpoint));
                text.push_str("  aws_allow_http: \"true\"\n");
                text.push_str(&format!("  aws_access_key_id: {S3_KEY}\n"));
                text.push_str(&format!("  aws_secret_access_key: {S3_SECRET}\n"));
                text.push_str("  aws_region: us-east-1\n");
            }
            Kind::Azure => {
                text.push_str(&format!("  azure_storage_account_name: {AZURE_ACCOUNT}\n"));
                text.push_str(&format!("  azure_storage_account_key: \"{AZURE_KEY}\"\n"));
                text.push_str(&format!(
                    "  azure_storage_endpoint: {}/{AZURE_ACCOUNT}\n",
                    self.endpoint
                ));
                text.push_str("  azure_allow_http: \"true\"\n");
            }
        }
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            text.push_str("  ");
            text.push_str(line.trim());
            text.push('\n');
        }
        text
    }

    /// The standard environment variables for this store (credentials given there).
    fn env(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self.kind {
            Kind::S3 => vec![
                ("AWS_ENDPOINT_URL", self.endpoint.clone()),
                ("AWS_ALLOW_HTTP", "true".into()),
                ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
                ("AWS_REGION", "us-east-1".into()),
            ],
            Kind::Azure => vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                ("AZURITE_BLOB_STORAGE_URL", self.endpoint.clone()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn client(&self) -> Arc<dyn ObjectStore> {
        match self.kind {
            Kind::S3 => Arc::new(
                AmazonS3Builder::new()
                    .with_endpoint(&self.endpoint)
                    .with_allow_http(true)
                    .with_bucket_name(&self.bucket)
                    .with_access_key_id(S3_KEY)
                    .with_secret_access_key(S3_SECRET)
                    .with_region("us-east-1")
                    .build()
                    .unwrap(),
            ),
            Kind::Azure => Arc::new(
                MicrosoftAzureBuilder::new()
                    .with_account(AZURE_ACCOUNT)
                    .with_access_key(AZURE_KEY)
                    .with_endpoint(format!("{}/{AZURE_ACCOUNT}", self.endpoint))
                    .with_allow_http(true)
                    .with_container_name(&self.bucket)
                    .build()
                    .unwrap(),
            ),
        }
    }

    fn put(&self, key: &str, data: Vec<u8>) {
        let client = self.client();
        runtime()
            .block_on(client.put(&ObjectPath::from(key), PutPayload::from(data)))
            .unwrap();
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let client = self.client();
        runtime().block_on(async {
            match client.get(&ObjectPath::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    fn list(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let client = self.client();
        let mut keys: Vec<String> = runtime()
            .block_on(
                client
                    .list(Some(&ObjectPath::from(prefix)))
                    .map_ok(|m| m.location.to_string())
                    .try_collect::<Vec<_>>(),
            )
            .unwrap();
        keys.sort();
        keys
    }

    /// Uploads every file below `dir` to `prefix/`.
    fn upload_dir(&self, dir: &Path, prefix: &str) {
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry.unwrap();
            if entry.file_type().is_file() {
                let rel = entry.path().strip_prefix(dir).unwrap().to_str().unwrap();
                self.put(
                    &format!("{prefix}/{rel}"),
                    std::fs::read(entry.path()).unwrap(),
                );
            }
        }
    }
}

// --- Azurite container creation: one signed REST call (object_store has no such call).

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c).unwrap() as u32;
        buffer = buffer << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// Creates `container` on Azurite at `endpoint` (no error when it exists).
fn create_container(endpoint: &str, container: &str) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{container}\nrestype:container"
    );
    let signature = base64_encode(&hmac_sha256(&base64_decode(AZURE_KEY), to_sign.as_bytes()));
    let request = format!(
        "PUT /{AZURE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: {host}\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\nContent-Length: 0\r\n\
         Authorization: SharedKey {AZURE_ACCOUNT}:{signature}\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(host).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap_or("");
    assert!(
        status == "201" || status == "409",
        "creating container {container} failed: {response}"
    );
}

#[test]
fn base64_and_hmac_match_known_values() {
    assert_eq!(base64_encode(b"hello!?"), "aGVsbG8hPw==");
    assert_eq!(base64_decode("aGVsbG8hPw=="), b"hello!?");
    // RFC 4231 test case 2.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

// ---------------------------------------------------------------------------------------------
// Running jobs

/// Runs the CLI with `args`; the environment loses every AWS_/AZURE_ variable of the caller
/// and gets `env`.
fn cli_env(args: &[&str], env: &[(String, String)]) -> CliRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parallel-run"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("AZURE_") || name.starts_with("AZURITE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = command.output().unwrap();
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn run_env(job: &Path, env: &[(String, String)]) -> CliRun {
    cli_env(&["run", job.to_str().unwrap(), "--quiet"], env)
}

/// Writes `job.yaml` into `dir` running `rust:echo` (2 workers) with `config` lines and `rest`.
fn echo_job(dir: &Path, config: &str, rest: &str) -> PathBuf {
    write_job(
        dir,
        &format!(
            "entry_script: rust:echo\nerror_threshold: 0\noutput_action: append_row\nnode_count: 1\nprocess_count_per_node: 2\n{config}"
        ),
        rest,
    )
}

/// Three Parquet files of the sample table (ids 0..3000) in `dir`.
fn parquet_inputs(dir: &Path) {
    for i in 0..3 {
        write_parquet(&dir.join(format!("part-{i}.parquet")), i * 1000, 1000, 250);
    }
}

/// Small text files in `dir`: `f00.txt`... and two in a sub-folder.
fn text_files(dir: &Path, n: usize) {
    for i in 0..n {
        let path = if i % 10 == 9 {
            dir.join(format!("sub/f{i:02}.txt"))
        } else {
            dir.join(format!("f{i:02}.txt"))
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("file {i}: {}", "x".repeat(i * 7))).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Tabular input read by DataFusion straight from each store, output committed to each store:
/// the bytes equal a local run's, mini-batches included.
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
    let expected_batches = processed(&local_dir.join("out")).len();
    assert!(expected_batches > 3, "several mini-batches per file");

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
        let report = to
            .get(&format!(
                "{out_prefix}/logs/sys/job_report/processed_mini-batches.csv"
            ))
            .unwrap();
        assert_eq!(
            String::from_utf8(report).unwrap().lines().count() - 1,
            expected_batches
        );
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

/// Retry settings used by the fault tests: quick backoff, `timeout_secs` in all.
fn retries(timeout_secs: u32) -> String {
    format!(
        "retry_max_retries: 50\nretry_timeout_secs: {timeout_secs}\nretry_init_backoff_ms: 100\nretry_max_backoff_ms: 400\nconnect_timeout: 1s\ntimeout: 5s"
    )
}

/// Starts `job` with `env` in the background.
fn spawn_job(job: &Path, env: &[(String, String)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parallel-run"));
    command.args(["run", job.to_str().unwrap(), "--quiet"]);
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("AZURE_") || name.starts_with("AZURITE_") {
            command.env_remove(name);
        }
    }
    command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> CliRun {
    let out = child.wait_with_output().unwrap();
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Waits until `out`'s report lists at least `n` finished mini-batches.
fn wait_for_mini_batches(out: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = out.join("logs/sys/job_report/processed_mini-batches.csv");
    while Instant::now() < deadline {
        let done = std::fs::read_to_string(&report)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        if done >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the job did not get going");
}

/// 16 Parquet objects of 50 rows (ids 0..800) under `in/`, and a job echoing them slowly
/// (120 ms per 1KB mini-batch) to `output` with `options` (storage_options lines).
fn slow_tabular_job(store: &Store, dir: &Path, output: &str, options: &str) -> PathBuf {
    let data = dir.join("data");
    for i in 0..16 {
        write_parquet(&data.join(format!("p{i:02}.parquet")), i * 50, 50, 50);
    }
    store.upload_dir(&data, "in");
    echo_job(
        dir,
        "mini_batch_size: 1KB",
        &format!(
            "inputs:\n  - {{name: rows, path: \"{}\", format: parquet}}\noutput: \"{output}\"\narguments: [--sleep-ms, \"120\"]\n{}",
            store.url("in/"),
            store.storage_options(options)
        ),
    )
}

/// The ids (first word of each line) of a txt output, sorted.
fn sorted_ids(text: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = text
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

/// S3 stopped in the middle of a tabular job (input and output there) and started again
/// within the retry budget: the job completes with every row, once.
#[test]
fn s3_down_mid_job_then_back_the_job_completes() {
    let mut server = Server::start_new(Kind::S3);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let options = format!(
        "{}\nlocal_dir: {}",
        retries(30),
        d.path().join("mirror").display()
    );
    let job = slow_tabular_job(&store, d.path(), &store.url("out/"), &options);
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&d.path().join("mirror"), 2);
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    server.start();
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    let text = String::from_utf8(store.get("out/parallel_run_step.txt").unwrap()).unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
}

/// S3 stopped mid-job and left down: the job fails, naming the store, the object and the
/// operation; nothing is committed (no final object once the server is back); the report says
/// where the committed parts are.
#[test]
fn s3_down_for_good_fails_the_job_clearly_and_commits_nothing() {
    let mut server = Server::start_new(Kind::S3);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let mirror = d.path().join("mirror");
    // A read-ahead budget smaller than any object: DataFusion reads every object from the
    // store itself (with the default budget the 16 objects would all be local before the
    // server stops, and the job would fail at the output's upload instead).
    let options = format!(
        "{}\nlocal_dir: {}\ncache_size: 1KB",
        retries(2),
        mirror.display()
    );
    let job = slow_tabular_job(&store, d.path(), &store.url("out/"), &options);
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&mirror, 2);
    server.stop();
    let run = finish(child);
    assert_eq!(run.code, 42, "{run:?}");
    let summary = summary(&mirror);
    let reason = summary["reason"].as_str().unwrap();
    assert!(reason.contains("s3://parallel-run-tests"), "{reason}");
    assert!(reason.contains("GET"), "{reason}");
    assert!(reason.contains("in/p"), "names the object: {reason}");
    assert!(!reason.contains(S3_SECRET), "{reason}");
    let result = std::fs::read_to_string(mirror.join("logs/job_result.txt")).unwrap();
    assert!(result.contains(".parallel_run/staging"), "{result}");
    server.start();
    assert_eq!(store.get("out/parallel_run_step.txt"), None);
}

/// A tabular input is downloaded ahead from the moment the job starts (within the cache's
/// budget): once the first mini-batches are done every object is local, so the S3 server
/// stopping does not stop the job, and the rows equal the input.
#[test]
fn tabular_inputs_are_read_ahead_while_the_job_starts() {
    let mut server = Server::start_new(Kind::S3);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let job = slow_tabular_job(&store, d.path(), &out.display().to_string(), &retries(2));
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&d.path().join("out"), 2);
    server.stop();
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(out.join("parallel_run_step.txt")).unwrap();
    assert_eq!(sorted_ids(&text), (0..800).collect::<Vec<_>>());
    // The copies went with the job.
    let cache = d.path().join("out/.parallel_run/cache");
    let left = std::fs::read_dir(&cache).map(|r| r.count()).unwrap_or(0);
    assert_eq!(left, 0, "read-ahead copies left in {}", cache.display());
}

/// Azurite stopped while a file dataset is being downloaded and started again: the
/// downloads are retried and the job completes.
#[test]
fn azure_down_during_downloads_then_back_the_job_completes() {
    let mut server = Server::start_new(Kind::Azure);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("files");
    text_files(&data, 30);
    store.upload_dir(&data, "docs");
    let job = echo_job(
        d.path(),
        "mini_batch_size: 2",
        &format!(
            "inputs:\n  - {{name: docs, path: \"{}\", format: files}}\noutput: out\narguments: [--sleep-ms, \"100\", --read-files]\n{}",
            store.url("docs/"),
            store.storage_options(&format!("{}\nprefetch_files: 2", retries(30)))
        ),
    );
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&d.path().join("out"), 2);
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    server.start();
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&d.path().join("out/parallel_run_step.txt")).len(), 30);
}

/// Azurite stopped for good while a file dataset is downloaded, output on Azure: the job
/// fails with the store, the object and the operation; no final object appears.
#[test]
fn azure_down_for_good_fails_the_job_clearly() {
    let mut server = Server::start_new(Kind::Azure);
    let store = server.store();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("files");
    text_files(&data, 30);
    store.upload_dir(&data, "docs");
    let mirror = d.path().join("mirror");
    let job = echo_job(
        d.path(),
        "mini_batch_size: 2",
        &format!(
            "inputs:\n  - {{name: docs, path: \"{}\", format: files}}\noutput: \"{}\"\narguments: [--sleep-ms, \"100\", --read-files]\n{}",
            store.url("docs/"),
            store.url("out/"),
            store.storage_options(&format!(
                "{}\nprefetch_files: 2\nlocal_dir: {}",
                retries(2),
                mirror.display()
            ))
        ),
    );
    let child = spawn_job(&job, &[]);
    wait_for_mini_batches(&mirror, 2);
    server.stop();
    let run = finish(child);
    assert_eq!(run.code, 42, "{run:?}");
    let reason = summary(&mirror)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("az://parallel-run-tests"), "{reason}");
    assert!(reason.contains("docs/"), "{reason}");
    assert!(
        reason.contains("GET") || reason.contains("LIST"),
        "{reason}"
    );
    assert!(!reason.contains(AZURE_KEY), "{reason}");
    server.start();
    assert_eq!(store.get("out/parallel_run_step.txt"), None);
}

/// Wrong credentials: `run` and `validate` stop before the job starts (exit code 2), say
/// access was denied to which store, and never print the secret.
#[test]
fn bad_credentials_are_reported_before_the_job_starts() {
    let prefix = unique("creds");
    for kind in [Kind::S3, Kind::Azure] {
        let store = shared(kind);
        store.put(&format!("{prefix}/in/a.csv"), b"id\n1\n".to_vec());
        let (secret_key, bad_secret) = match kind {
            Kind::S3 => ("aws_secret_access_key", "wrong-secret-value"),
            // A valid key (base64), but not the account's.
            Kind::Azure => (
                "azure_storage_account_key",
                "d3Jvbmcta2V5LXZhbHVlLXdyb25nLWtleS12YWx1ZQ==",
            ),
        };
        let options = store
            .storage_options("")
            .lines()
            .map(|l| {
                if l.trim_start().starts_with(secret_key) {
                    format!("  {secret_key}: \"{bad_secret}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let d = tempfile::tempdir().unwrap();
        let job = echo_job(
            d.path(),
            "",
            &format!(
                "inputs:\n  - {{name: rows, path: \"{}\", format: csv}}\noutput: out\n{options}\n",
                store.url(&format!("{prefix}/in/"))
            ),
        );
        for command in ["run", "validate"] {
            let run = cli_env(&[command, job.to_str().unwrap()], &[]);
            assert_eq!(run.code, 2, "{kind:?} {command}: {run:?}");
            assert!(
                run.stderr.contains("access denied"),
                "{kind:?} {command}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(&store.url("")),
                "{kind:?}: {}",
                run.stderr
            );
            assert!(!run.stderr.contains(bad_secret), "{kind:?}: {}", run.stderr);
        }
        assert!(!d.path().join("out/logs").exists(), "nothing ran");
    }
}

/// A missing bucket or container, for an input or the output, and a missing prefix: clear
/// errors before the job starts.
#[test]
fn missing_buckets_and_objects_are_reported_before_the_job_starts() {
    for kind in [Kind::S3, Kind::Azure] {
        let store = shared(kind);
        let missing = store.with_bucket("no-such-bucket-here");
        let d = tempfile::tempdir().unwrap();
        let prefix = unique("missing");
        store.put(&format!("{prefix}/in/a.csv"), b"id\n1\n".to_vec());
        let cases = [
            (missing.url("in/"), "out".to_string(), "does not exist"),
            (
                store.url(&format!("{prefix}/nothing-here/")),
                "out".to_string(),
                "no object",
            ),
            (
                store.url(&format!("{prefix}/in/")),
                format!("\"{}\"", missing.url("out/")),
                "does not exist",
            ),
        ];
        for (input, output, words) in cases {
            let job = echo_job(
                d.path(),
                "",
                &format!(
                    "inputs:\n  - {{name: rows, path: \"{input}\", format: csv}}\noutput: {output}\n{}",
                    store.storage_options("")
                ),
            );
            let run = cli_env(&["validate", job.to_str().unwrap()], &[]);
            assert_eq!(run.code, 2, "{kind:?} {input} -> {output}: {run:?}");
            assert!(
                run.stderr.contains(words),
                "{kind:?} {input} -> {output}: {}",
                run.stderr
            );
            let run = run_env(&job, &[]);
            assert_eq!(run.code, 2, "{kind:?}: {run:?}");
        }
    }
}

/// `show-config` prints storage_options with secrets masked (`${VAR}` references are shown);
/// `--set storage_options.KEY=VALUE` works; unknown keys are named.
#[test]
fn show_config_masks_secrets() {
    let d = tempfile::tempdir().unwrap();
    let job = echo_job(
        d.path(),
        "",
        "inputs:\n  - {name: rows, path: \"s3://bucket/in/\", format: parquet}\noutput: \"s3://bucket/out/\"\nstorage_options:\n  aws_secret_access_key: super-secret-value\n  azure_storage_account_key: ${MY_AZURE_KEY}\n  aws_endpoint: http://127.0.0.1:1\n",
    );
    let run = cli_env(
        &[
            "show-config",
            job.to_str().unwrap(),
            "--set",
            "storage_options.retry_max_retries=4",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("super-secret-value"), "{}", run.stdout);
    assert!(
        run.stdout.contains("aws_secret_access_key: '*****'"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("${MY_AZURE_KEY}"), "{}", run.stdout);
    assert!(
        run.stdout.contains("retry_max_retries: '4'"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("output: s3://bucket/out/"),
        "{}",
        run.stdout
    );
    let run = cli_env(
        &[
            "show-config",
            job.to_str().unwrap(),
            "--set",
            "storage_options.aws_endpont=x",
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("did you mean \"aws_endpoint\""),
        "{}",
        run.stderr
    );
}

/// An output prefix holding an earlier run's results is refused, also from a machine whose
/// local mirror knows nothing of it; `--overwrite` deletes the old final object and logs first.
#[test]
fn an_output_prefix_with_earlier_results_is_refused_unless_overwrite() {
    let s3 = shared(Kind::S3);
    let d = tempfile::tempdir().unwrap();
    parquet_inputs(&d.path().join("data"));
    let prefix = unique("rerun");
    let out_url = s3.url(&format!("{prefix}/out/"));
    let job = |mirror: &str| {
        echo_job(
            d.path(),
            "mini_batch_size: 64KB",
            &format!(
                "inputs:\n  - {{name: rows, path: data, format: parquet}}\noutput: \"{out_url}\"\n{}",
                s3.storage_options(&format!("  local_dir: {}\n", d.path().join(mirror).display()))
            ),
        )
    };
    let run = run_env(&job("first"), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    s3.put(&format!("{prefix}/out/logs/stale.txt"), b"old".to_vec());

    let run = run_env(&job("second"), &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&out_url)
            && run.stderr.contains("parallel_run_step.txt")
            && run.stderr.contains("--overwrite"),
        "{}",
        run.stderr
    );
    let run = cli_env(
        &[
            "run",
            job("third").to_str().unwrap(),
            "--quiet",
            "--overwrite",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let keys = s3.list(&format!("{prefix}/out"));
    assert!(
        !keys.iter().any(|k| k.ends_with("logs/stale.txt")),
        "the old logs are gone: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with("parallel_run_step.txt")),
        "{keys:?}"
    );
}
