//! The object-storage servers of the integration tests and the benchmark harness, on
//! 127.0.0.1: s3s-fs (S3) and Azurite (Azure Blob). One file, included by both with
//! `#[path = ".../tests/support/servers.rs"] mod servers;`.
//!
//! `.ci/run` installs both into `~/.cache/parallel-run-ci/` (or `$PARALLEL_RUN_CI_CACHE`),
//! starts them for the whole test run and exports their endpoints (`PARALLEL_RUN_S3_ENDPOINT`
//! with `PARALLEL_RUN_S3_BUCKET`, an existing bucket, and `PARALLEL_RUN_AZURITE_ENDPOINT`) and
//! binaries (`PARALLEL_RUN_S3S_FS_BIN`, `PARALLEL_RUN_AZURITE_BIN`): [`Kind::endpoint_from_env`]
//! reads the former. [`Server::start`] starts a private server from the binary (on a free
//! port, returning once it accepts connections, stopped when dropped), for whoever has no
//! endpoint or must stop the server itself.

#![allow(dead_code)] // each includer uses its own part

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use sha2::Sha256;

/// The credentials every s3s-fs of ours is started with.
pub const S3_KEY: &str = "test";
pub const S3_SECRET: &str = "testsecret";
pub const S3_REGION: &str = "us-east-1";
/// Azurite's development account and its published key.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long a server may take to accept connections, or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a server is not there.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no {server} at {}: {hint}", path.display())]
    NotInstalled {
        server: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("no free port on 127.0.0.1: {0}")]
    NoPort(#[source] io::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{server} exited at start ({status}){log}")]
    Exited {
        server: &'static str,
        status: ExitStatus,
        /// The end of its log, when it has one.
        log: String,
    },
    #[error("{server} did not accept connections on 127.0.0.1:{port} within {} s", START_TIMEOUT.as_secs())]
    NotListening { server: &'static str, port: u16 },
    #[error("creating the container {container} at {endpoint} failed: {detail}")]
    Container {
        container: String,
        endpoint: String,
        detail: String,
    },
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
}

impl Kind {
    /// The server program's name.
    pub fn server(self) -> &'static str {
        match self {
            Kind::S3 => "s3s-fs",
            Kind::Azure => "Azurite",
        }
    }

    /// The variable `.ci/run` exports with its server's endpoint.
    pub fn endpoint_variable(self) -> &'static str {
        match self {
            Kind::S3 => "PARALLEL_RUN_S3_ENDPOINT",
            Kind::Azure => "PARALLEL_RUN_AZURITE_ENDPOINT",
        }
    }

    /// The endpoint of the server `.ci/run` started (`http://127.0.0.1:PORT`), if any.
    pub fn endpoint_from_env(self) -> Option<String> {
        non_empty_var(self.endpoint_variable()).map(|e| e.trim_end_matches('/').to_string())
    }

    /// The server's program: `$PARALLEL_RUN_S3S_FS_BIN` / `$PARALLEL_RUN_AZURITE_BIN`, else
    /// where `.ci/run` installs it.
    pub fn binary(self) -> Result<PathBuf, ServerError> {
        let (variable, cached, hint) = match self {
            Kind::S3 => (
                "PARALLEL_RUN_S3S_FS_BIN",
                "s3s-fs-0.14.1/bin/s3s-fs",
                format!(
                    "run `bash .ci/run` once, or install it with `cargo install s3s-fs@0.14.1 \
                     --features binary --root {}` (about 4 minutes), or set \
                     PARALLEL_RUN_S3S_FS_BIN",
                    ci_cache().join("s3s-fs-0.14.1").display()
                ),
            ),
            Kind::Azure => (
                "PARALLEL_RUN_AZURITE_BIN",
                "azurite/node_modules/.bin/azurite-blob",
                format!(
                    "run `bash .ci/run` once, or install Azurite with `npm install azurite@3` in \
                     {} (about 30 seconds), or set PARALLEL_RUN_AZURITE_BIN",
                    ci_cache().join("azurite").display()
                ),
            ),
        };
        let path = non_empty_var(variable)
            .map(PathBuf::from)
            .unwrap_or_else(|| ci_cache().join(cached));
        if path.is_file() {
            Ok(path)
        } else {
            Err(ServerError::NotInstalled {
                server: self.server(),
                path,
                hint,
            })
        }
    }
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where `.ci/run` installs the servers.
fn ci_cache() -> PathBuf {
    if let Some(dir) = non_empty_var("PARALLEL_RUN_CI_CACHE") {
        return PathBuf::from(dir);
    }
    let home = non_empty_var("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/parallel-run-ci")
}

/// A server process of ours on a fixed port and data folder, which can be stopped and started
/// again. Stopped when dropped, and killed when the thread that started it ends (so a test
/// binary or harness that dies leaves no server behind).
pub struct Server {
    kind: Kind,
    binary: PathBuf,
    port: u16,
    root: PathBuf,
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server of `kind` on a free port, storing under `root` (created), its output
    /// going to `log` (else nowhere); returns once it accepts connections.
    pub fn start(kind: Kind, root: &Path, log: Option<&Path>) -> Result<Server, ServerError> {
        let binary = kind.binary()?;
        std::fs::create_dir_all(root).map_err(|source| ServerError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(ServerError::NoPort)?
            .port();
        let mut server = Server {
            kind,
            binary,
            port,
            root: root.to_path_buf(),
            log: log.map(Path::to_path_buf),
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command that starts this server (also to show how to start it by hand).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        let port = self.port.to_string();
        match self.kind {
            Kind::S3 => {
                command
                    .args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
                    .arg(&self.root);
            }
            Kind::Azure => {
                command
                    .args(["--blobHost", "127.0.0.1", "--blobPort", &port])
                    .arg("--location")
                    .arg(&self.root)
                    .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"]);
            }
        }
        command
    }

    /// Starts the (stopped) server again, on the same port and data folder.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop();
        let mut command = self.command();
        command.stdin(Stdio::null());
        match &self.log {
            Some(path) => {
                let io = |source| ServerError::Io {
                    path: path.clone(),
                    source,
                };
                let out = std::fs::File::create(path).map_err(io)?;
                let err = out.try_clone().map_err(io)?;
                command.stdout(out).stderr(err);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL when the thread that
        // started the server ends.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| ServerError::Spawn {
            path: self.binary.clone(),
            source,
        })?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let log = self
                    .log
                    .as_deref()
                    .map(|path| format!(": {}", tail(path, 1000)))
                    .unwrap_or_default();
                return Err(ServerError::Exited {
                    server: self.kind.server(),
                    status,
                    log,
                });
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(ServerError::NotListening {
                    server: self.kind.server(),
                    port: self.port,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server as an operator would (SIGTERM: Azurite saves its metadata then),
    /// killing it when it takes longer than 10 s; returns once its port is closed.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signals our own child process, by its id; it is not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `bytes` of a file, as text.
pub fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

/// A client for `bucket` on the S3 server at `endpoint` (our credentials).
pub fn s3_client(endpoint: &str, bucket: &str) -> object_store::Result<AmazonS3> {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_access_key_id(S3_KEY)
        .with_secret_access_key(S3_SECRET)
        .with_region(S3_REGION)
        .build()
}

/// A client for `container` on the Azurite at `endpoint` (the development account).
pub fn azure_client(endpoint: &str, container: &str) -> object_store::Result<MicrosoftAzure> {
    MicrosoftAzureBuilder::new()
        .with_account(AZURE_ACCOUNT)
        .with_access_key(AZURE_KEY)
        .with_endpoint(format!("{endpoint}/{AZURE_ACCOUNT}"))
        .with_allow_http(true)
        .with_container_name(container)
        .build()
}

/// Creates `container` on the Azurite at `endpoint` (`http://HOST:PORT`); an existing one is
/// fine. One request signed with the account key: object_store has no such call.
pub fn create_container(endpoint: &str, container: &str) -> Result<(), ServerError> {
    let fail = |detail: String| ServerError::Container {
        container: container.to_string(),
        endpoint: endpoint.to_string(),
        detail,
    };
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = BASE64
        .decode(AZURE_KEY)
        .map_err(|e| fail(format!("the account key is not base64: {e}")))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|e| fail(format!("the account key: {e}")))?;
    mac.update(to_sign.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let request = format!(
        "PUT /{AZURE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: {host}\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\nContent-Length: 0\r\n\
         Authorization: SharedKey {AZURE_ACCOUNT}:{signature}\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    TcpStream::connect(host)
        .and_then(|mut stream| {
            stream.write_all(request.as_bytes())?;
            stream.read_to_string(&mut response)
        })
        .map_err(|e| fail(e.to_string()))?;
    match response.split_whitespace().nth(1) {
        Some("201" | "409") => Ok(()),
        _ => Err(fail(response)),
    }
}
