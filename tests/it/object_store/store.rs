//! The test servers' buckets, and talking to them from the tests.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::servers::{self, Kind, Server, AZURE_ACCOUNT, AZURE_KEY, S3_KEY, S3_SECRET};

/// The bucket of a private S3 server, and the container of every Azurite (created when
/// missing).
pub const S3_BUCKET: &str = "parallel-run-tests";
pub const AZURE_CONTAINER: &str = "parallel-run-tests";

/// A private server of one test, with its bucket or container, storing in a temporary folder
/// (the fault tests stop it and start it again).
pub struct PrivateServer {
    server: Server,
    _dir: tempfile::TempDir,
}

impl PrivateServer {
    /// Starts a server of `kind`; panics, saying how to install it, when it cannot.
    pub fn start(kind: Kind) -> PrivateServer {
        Self::try_start(kind).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(kind: Kind) -> Result<PrivateServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
        if kind == Kind::S3 {
            let bucket = dir.path().join(S3_BUCKET);
            std::fs::create_dir_all(&bucket).map_err(|e| format!("{}: {e}", bucket.display()))?;
        }
        let server = Server::start(kind, dir.path(), None).map_err(|e| {
            format!(
                "the object-storage tests need a server ({} names one, else they start their \
                 own): {e}",
                kind.endpoint_variable()
            )
        })?;
        if kind == Kind::Azure {
            servers::create_container(&server.endpoint(), AZURE_CONTAINER)
                .map_err(|e| e.to_string())?;
        }
        Ok(PrivateServer { server, _dir: dir })
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn store(&self) -> Store {
        let bucket = match self.server.kind() {
            Kind::S3 => S3_BUCKET,
            Kind::Azure => AZURE_CONTAINER,
        };
        Store::new(self.server.kind(), self.endpoint(), bucket.into())
    }

    /// Stops the server (SIGTERM), as an operator would.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.server.restart().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The shared servers: `.ci/run`'s, or private ones started once for this test binary (from
/// a thread that lives as long as the process, so the death signal fires only at exit).
pub fn shared(kind: Kind) -> Store {
    static S3: OnceLock<(String, String)> = OnceLock::new();
    static AZURE: OnceLock<(String, String)> = OnceLock::new();
    let cell = match kind {
        Kind::S3 => &S3,
        Kind::Azure => &AZURE,
    };
    let (endpoint, bucket) = cell.get_or_init(|| {
        if let Some(endpoint) = kind.endpoint_from_env() {
            let bucket = match kind {
                Kind::S3 => {
                    std::env::var("PARALLEL_RUN_S3_BUCKET").unwrap_or_else(|_| S3_BUCKET.into())
                }
                Kind::Azure => {
                    servers::create_container(&endpoint, AZURE_CONTAINER)
                        .unwrap_or_else(|e| panic!("{e}"));
                    AZURE_CONTAINER.into()
                }
            };
            return (endpoint, bucket);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || match PrivateServer::try_start(kind) {
            Ok(server) => {
                let _ = tx.send(Ok(server.store()));
                // Keep the server for the life of the process.
                let _keep = server;
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(store)) => (store.endpoint, store.bucket),
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("the private {} did not start: {e}", kind.server()),
        }
    });
    Store::new(kind, endpoint.clone(), bucket.clone())
}

/// A bucket or container on a test server.
#[derive(Clone)]
pub struct Store {
    pub kind: Kind,
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
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

impl Store {
    fn new(kind: Kind, endpoint: String, bucket: String) -> Store {
        Store {
            kind,
            endpoint,
            bucket,
        }
    }

    /// The same server, another (missing) bucket.
    pub fn with_bucket(&self, bucket: &str) -> Store {
        Store {
            bucket: bucket.into(),
            ..self.clone()
        }
    }

    pub fn url(&self, key: &str) -> String {
        let scheme = match self.kind {
            Kind::S3 => "s3",
            Kind::Azure => "az",
        };
        format!("{scheme}://{}/{key}", self.bucket)
    }

    /// `storage_options:` for a job (credentials given there).
    pub fn storage_options(&self, extra: &str) -> String {
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
    pub fn env(&self) -> Vec<(String, String)> {
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
            Kind::S3 => Arc::new(servers::s3_client(&self.endpoint, &self.bucket).unwrap()),
            Kind::Azure => Arc::new(servers::azure_client(&self.endpoint, &self.bucket).unwrap()),
        }
    }

    pub fn put(&self, key: &str, data: Vec<u8>) {
        let client = self.client();
        runtime()
            .block_on(client.put(&ObjectPath::from(key), PutPayload::from(data)))
            .unwrap();
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let client = self.client();
        runtime().block_on(async {
            match client.get(&ObjectPath::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    pub fn list(&self, prefix: &str) -> Vec<String> {
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
    pub fn upload_dir(&self, dir: &Path, prefix: &str) {
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
