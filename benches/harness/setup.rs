//! What every workload shares: the crate's and the shared folder's paths, the Python, the
//! generated data sets, and showing commands as shell lines.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// Paths and settings shared by every workload.
pub struct Ctx {
    pub manifest: PathBuf,
    pub shared: PathBuf,
    pub bench: PathBuf,
    pub data: PathBuf,
    pub logs: PathBuf,
    pub python: PathBuf,
    pub binary: PathBuf,
    pub runs: u32,
    pub timeout: Duration,
}

impl Ctx {
    /// A path as people would type it from the crate root (`target/...`, `../shared/...`).
    pub fn show(&self, path: &Path) -> String {
        if let Ok(rest) = path.strip_prefix(&self.shared) {
            return Path::new("../shared").join(rest).display().to_string();
        }
        if let Ok(rest) = path.strip_prefix(&self.manifest) {
            return rest.display().to_string();
        }
        path.display().to_string()
    }

    /// A command line with the harness's absolute paths made relative to the crate root.
    pub fn relative(&self, line: &str) -> String {
        let shared = format!("{}/", self.shared.display());
        let manifest = format!("{}/", self.manifest.display());
        line.replace(&shared, "../shared/").replace(&manifest, "")
    }
}

pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(HarnessError::CurrentDir)?;
    Ok(cwd.join(path))
}

/// `$PARALLEL_RUN_PYTHON`, else `.venv/bin/python` in the crate, else `python3`.
pub fn find_python(given: Option<&Path>, manifest: &Path) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("PARALLEL_RUN_PYTHON") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let venv = manifest.join(".venv/bin/python");
                if venv.exists() {
                    venv
                } else {
                    PathBuf::from("python3")
                }
            }
        },
    };
    // A bare name is looked up on PATH; anything with a slash is made absolute (not
    // canonicalized: a venv's python is a symlink whose target is not the venv).
    if path.components().count() > 1 {
        absolute(&path)
    } else {
        Ok(path)
    }
}

/// Checks the interpreter has what the baselines and the entry scripts need; returns the
/// versions line.
pub fn check_python(python: &Path) -> Result<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, numpy, pandas, pyarrow; print(f'Python {sys.version.split()[0]}, \
             numpy {numpy.__version__}, pandas {pandas.__version__}, \
             pyarrow {pyarrow.__version__}')",
        ])
        .output()
        .map_err(|source| HarnessError::PythonStart {
            python: python.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::PythonPackages {
            python: python.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Short names: 20000 -> 20k, 2000000 -> 2M.
pub fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// A generated data set.
pub struct DataSet {
    pub dir: PathBuf,
    /// Rows (tabular) or files.
    pub items: u64,
    pub files: bool,
}

impl DataSet {
    pub fn rows(ctx: &Ctx, rows: u64) -> DataSet {
        DataSet {
            dir: ctx.data.join(format!("rows-{rows}")),
            items: rows,
            files: false,
        }
    }

    pub fn files(ctx: &Ctx, files: u64) -> DataSet {
        DataSet {
            dir: ctx.data.join(format!("files-{files}")),
            items: files,
            files: true,
        }
    }

    /// Generates the data with gen_data.py unless a complete copy is there.
    pub fn ensure(&self, ctx: &Ctx) -> Result<()> {
        // Beside the folder, not in it: a file dataset job would list it.
        let marker = self.dir.with_extension("complete");
        if marker.exists() {
            return Ok(());
        }
        let gen = ctx.bench.join("gen_data.py");
        let mut cmd = Command::new(&ctx.python);
        cmd.arg(&gen).arg(&self.dir);
        if self.files {
            cmd.arg("--files").arg(self.items.to_string());
        } else {
            cmd.arg("--rows").arg(self.items.to_string());
        }
        cmd.arg("--clean");
        eprintln!(
            "harness: generating {} ({} {}) ...",
            ctx.show(&self.dir),
            self.items,
            if self.files { "files" } else { "rows" }
        );
        let t = Instant::now();
        let status = cmd
            .status()
            .map_err(|source| HarnessError::GeneratorStart {
                script: gen.clone(),
                source,
            })?;
        if !status.success() {
            return Err(HarnessError::Generate {
                dir: self.dir.clone(),
                status,
                command: shell_line(&cmd),
            });
        }
        fs::write(&marker, shell_line(&cmd) + "\n")
            .map_err(HarnessError::io("writing", &marker))?;
        eprintln!(
            "harness: generated {} in {:.1} s",
            ctx.show(&self.dir),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// `s` as one word of a POSIX shell line.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command as a shell line: its environment, program and arguments.
pub fn shell_line(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            v.map(|v| {
                format!(
                    "{}={}",
                    k.to_string_lossy(),
                    shell_word(&v.to_string_lossy())
                )
            })
        })
        .collect();
    words.push(shell_word(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| shell_word(&a.to_string_lossy())));
    words.join(" ")
}
