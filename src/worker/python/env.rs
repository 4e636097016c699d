//! Finding the Python interpreter of a job, and building the cached virtual environment for a
//! job's `pip` list.
//!
//! Without `pip`, the interpreter is `environment.python` (default `python3`), looked up on
//! `PATH` when it is a bare name. With `pip`, it is `<cache>/venvs/<key>/bin/python`: a virtual
//! environment built once on top of that interpreter and reused by every later job with the
//! same package list and interpreter. `<cache>` is `$PARALLEL_RUN_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/parallel-run`, else `~/.cache/parallel-run`; `<key>` is a SHA-256 of the
//! sorted package list, the interpreter's path and its version.
//!
//! A virtual environment cannot be moved once built (its scripts name their own absolute path),
//! so instead of building elsewhere and renaming, the build happens in place under an exclusive
//! lock (`<key>.lock`), and a marker file written last (`.parallel-run-complete`) says it is
//! usable: a half-built environment (killed build) has no marker and is rebuilt from scratch.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::config::Environment;
use crate::error::{PrsError, Result};

/// Marker written once a cached environment is complete.
const COMPLETE_MARKER: &str = ".parallel-run-complete";
/// Lines of pip's output quoted in an error.
const PIP_TAIL_LINES: usize = 30;

/// The interpreter for `env`: `env.python` (or `python3`) resolved through `PATH`, or, when
/// `env.pip` lists packages, the Python of a cached virtual environment with those packages
/// (built on first use, with a message on stderr).
pub fn resolve_interpreter(env: &Environment) -> Result<PathBuf> {
    if env.pip.is_empty() {
        // No environment to build: finding the program is enough (a broken interpreter fails
        // the workers' start with its own message), and saves starting Python once more.
        return find_interpreter(env.python.as_deref());
    }
    let base = base_interpreter(env.python.as_deref())?;
    let cache = cache_dir()?;
    cached_venv(&base, &env.pip, &cache)
}

/// The per-user cache folder: `$PARALLEL_RUN_CACHE_DIR`, `$XDG_CACHE_HOME/parallel-run`, or
/// `~/.cache/parallel-run`.
pub fn cache_dir() -> Result<PathBuf> {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = non_empty("PARALLEL_RUN_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(dir.join("parallel-run"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".cache").join("parallel-run"));
    }
    Err(PrsError::missing(
        "environment.pip",
        "no cache folder for the Python environment: set PARALLEL_RUN_CACHE_DIR (or HOME)",
    ))
}

/// A working interpreter: where it really is and its version.
#[derive(Debug, Clone)]
pub(crate) struct Interpreter {
    /// `sys.executable` (a pyenv shim becomes the real interpreter; a venv's python stays).
    pub(crate) executable: PathBuf,
    /// `major.minor.micro`.
    pub(crate) version: String,
}

/// Finds `python` (a name on PATH or a path; default `python3`).
fn find_interpreter(python: Option<&str>) -> Result<PathBuf> {
    let name = python
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("python3");
    find_program(name).ok_or_else(|| {
        PrsError::config(
            "environment.python",
            name,
            if name.contains('/') {
                "no such interpreter; set environment.python in the job file to the path of a Python 3 interpreter (e.g. /usr/bin/python3 or a virtual environment's bin/python)"
            } else {
                "not found on PATH; install Python 3, or set environment.python in the job file to an interpreter's path (e.g. /usr/bin/python3 or a virtual environment's bin/python)"
            },
        )
    })
}

/// Finds `python` (see [`find_interpreter`]) and checks that it runs and is Python 3.8 or
/// later.
pub(crate) fn base_interpreter(python: Option<&str>) -> Result<Interpreter> {
    let path = find_interpreter(python)?;
    let out = Command::new(&path)
        .args([
            "-c",
            "import sys; print(sys.executable); print('%d.%d.%d' % tuple(sys.version_info[:3]))",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            PrsError::config(
                "environment.python",
                path.display(),
                format!("cannot be run: {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(PrsError::config(
            "environment.python",
            path.display(),
            format!(
                "does not run: {}",
                tail(&String::from_utf8_lossy(&out.stderr), 10)
            ),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let executable = lines
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or(path.clone());
    let version = lines.next().map(str::trim).unwrap_or("").to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if major != 3 || minor < 8 {
        return Err(PrsError::config(
            "environment.python",
            path.display(),
            format!("is Python {version}; parallel-run needs Python 3.8 or later"),
        ));
    }
    Ok(Interpreter {
        executable,
        version,
    })
}

/// `name` as an executable path: paths are taken as they are (made absolute), bare names are
/// looked up on PATH.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        let path = if path.is_absolute() {
            path
        } else {
            std::env::current_dir().ok()?.join(path)
        };
        return is_executable(&path).then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The cache key of an environment: sorted packages, interpreter path and version.
pub(crate) fn venv_key(base: &Interpreter, pip: &[String]) -> String {
    let mut packages: Vec<&str> = pip.iter().map(|p| p.trim()).collect();
    packages.sort_unstable();
    let mut hasher = Sha256::new();
    hasher.update(packages.join("\n").as_bytes());
    hasher.update(b"\0");
    hasher.update(base.executable.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(base.version.as_bytes());
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The Python of the cached environment for `pip` on top of `base`, building it if needed.
pub(crate) fn cached_venv(base: &Interpreter, pip: &[String], cache: &Path) -> Result<PathBuf> {
    let venvs = cache.join("venvs");
    let key = venv_key(base, pip);
    let dir = venvs.join(&key);
    let python = dir.join("bin").join("python");
    let marker = dir.join(COMPLETE_MARKER);
    if marker.is_file() && python.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(&venvs).map_err(|e| PrsError::io(&venvs, e))?;
    let lock_path = venvs.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| PrsError::io(&lock_path, e))?;
    let packages = format!("[{}]", pip.join(", "));
    if !try_lock(&lock) {
        eprintln!("parallel-run: waiting for another parallel-run to finish building the Python environment for {packages} in {}", dir.display());
        lock_exclusive(&lock).map_err(|e| PrsError::io(&lock_path, e))?;
    }
    // Built by someone else while we waited?
    if marker.is_file() && python.exists() {
        return Ok(python);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| PrsError::io(&dir, e))?;
    }
    eprintln!(
        "parallel-run: building the Python environment for {packages} in {} (once; later runs reuse it)",
        dir.display()
    );
    let log_path = venvs.join(format!("{key}.log"));
    let step = |what: &str, program: &Path, args: &[&str]| -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| PrsError::io(&log_path, e))?;
        let _ = writeln!(log, "$ {} {}", program.display(), args.join(" "));
        let log_err = log.try_clone().map_err(|e| PrsError::io(&log_path, e))?;
        let status = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .status()
            .map_err(|e| {
                PrsError::config(
                    "environment.pip",
                    &packages,
                    format!("{what}: cannot run {}: {e}", program.display()),
                )
            })?;
        if status.success() {
            return Ok(());
        }
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        Err(PrsError::config(
            "environment.pip",
            &packages,
            format!(
                "{what} failed ({status}); the full output is in {}; it ends with:\n{}",
                log_path.display(),
                tail(&output, PIP_TAIL_LINES)
            ),
        ))
    };
    let _ = std::fs::remove_file(&log_path);
    let dir_arg = dir.to_string_lossy().into_owned();
    step(
        "creating the virtual environment",
        &base.executable,
        &["-m", "venv", &dir_arg],
    )?;
    let mut args: Vec<String> = [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ]
    .map(String::from)
    .into();
    args.extend(pip_arguments(pip)?);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    step("pip install", &python, &args).map_err(|e| explain_pip_failure(e, base))?;
    let record = format!(
        "python: {}\nversion: {}\npip: {packages}\n",
        base.executable.display(),
        base.version
    );
    std::fs::write(&marker, record).map_err(|e| PrsError::io(&marker, e))?;
    eprintln!("parallel-run: the Python environment is ready");
    drop(lock);
    Ok(python)
}

/// The pip list as pip's command line: requirement lines stay one argument each, while option
/// lines of a requirements file (`--find-links URL`, `--extra-index-url URL`, `-i URL`,
/// `--pre`, ...) become their words, as pip reads them in a requirements file.
fn pip_arguments(pip: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(pip.len());
    for line in pip {
        let line = line.trim();
        if line.starts_with('-') {
            let words = shlex::split(line).ok_or_else(|| {
                PrsError::config("environment.pip", line, "has an unclosed quote")
            })?;
            out.extend(words);
        } else if !line.is_empty() {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// A failed `pip install` with the requirement pip could not satisfy and the interpreter's
/// version named, and the way out.
fn explain_pip_failure(e: PrsError, base: &Interpreter) -> PrsError {
    let PrsError::Config {
        field,
        value,
        reason,
    } = e
    else {
        return e;
    };
    let requirement = reason.lines().find_map(|l| {
        l.split_once("No matching distribution found for ")
            .or_else(|| l.split_once("Could not find a version that satisfies the requirement "))
            .map(|(_, r)| r.split_whitespace().next().unwrap_or(r).to_string())
    });
    let reason = match requirement {
        Some(requirement) => format!(
            "{requirement} cannot be installed on Python {} ({}): change or remove the pin, or \
             run on another interpreter with --set environment.python=/path/to/python (or \
             --set environment=/path/to/python for one with the packages already installed). {reason}",
            base.version,
            base.executable.display()
        ),
        None => reason,
    };
    PrsError::Config {
        field,
        value,
        reason,
    }
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn lock_exclusive(file: &File) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::python::tests::test_python;

    #[test]
    fn bare_names_are_found_on_path_and_missing_ones_explain_the_fix() {
        let found = base_interpreter(Some(&test_python().to_string_lossy())).unwrap();
        assert!(found.executable.is_absolute());
        assert!(found.version.starts_with("3."));
        let err = base_interpreter(Some("no-such-python-xyz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-python-xyz"), "{err}");
        assert!(
            err.contains("not found on PATH") && err.contains("environment.python"),
            "{err}"
        );
        let err = base_interpreter(Some("/nowhere/bin/python"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such interpreter"), "{err}");
    }

    #[test]
    fn option_lines_become_pip_options() {
        let pip = vec![
            "numpy==1.26".to_string(),
            "--find-links https://example.org/wheels".to_string(),
            "--extra-index-url 'https://x.example/simple'".to_string(),
            "  pandas >= 2  ".to_string(),
        ];
        assert_eq!(
            pip_arguments(&pip).unwrap(),
            [
                "numpy==1.26",
                "--find-links",
                "https://example.org/wheels",
                "--extra-index-url",
                "https://x.example/simple",
                "pandas >= 2"
            ]
        );
    }

    #[test]
    fn a_pin_that_cannot_install_names_the_package_and_the_python() {
        let base = Interpreter {
            executable: "/usr/bin/python3".into(),
            version: "3.11.7".into(),
        };
        let failed = PrsError::config(
            "environment.pip",
            "[numpy==1.19.0]",
            "pip install failed (exit status: 1); it ends with:\nERROR: Could not find a version that satisfies the requirement numpy==1.19.0 (from versions: 1.26.0)\nERROR: No matching distribution found for numpy==1.19.0",
        );
        let e = explain_pip_failure(failed, &base).to_string();
        assert!(
            e.contains("numpy==1.19.0 cannot be installed on Python 3.11.7")
                && e.contains("--set environment"),
            "{e}"
        );
    }

    /// A `--find-links` line of an Azure export installs from a local folder (no index).
    #[test]
    fn a_find_links_line_installs_from_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_interpreter(Some(&test_python().to_string_lossy())).unwrap();
        let wheels = dir.path().join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        write_tiny_wheel(&base, &wheels.join("prs_tiny-0.1-py3-none-any.whl"));
        let pip = vec![
            "--no-index".to_string(),
            format!("--find-links {}", wheels.display()),
            "prs-tiny==0.1".to_string(),
        ];
        let python = cached_venv(&base, &pip, &dir.path().join("cache")).unwrap();
        let out = Command::new(&python)
            .args(["-c", "import prs_tiny; print(prs_tiny.VALUE)"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }

    /// A minimal wheel (module `prs_tiny` with `VALUE = 42`), written by Python's zipfile.
    fn write_tiny_wheel(base: &Interpreter, wheel: &Path) {
        let script = format!(
            r#"import zipfile
w = zipfile.ZipFile({wheel:?}, "w")
w.writestr("prs_tiny.py", "VALUE = 42\n")
w.writestr("prs_tiny-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: prs-tiny\nVersion: 0.1\n")
w.writestr("prs_tiny-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
w.writestr("prs_tiny-0.1.dist-info/RECORD", "")
w.close()
"#,
            wheel = wheel.to_string_lossy()
        );
        let ok = Command::new(&base.executable)
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    #[test]
    fn the_key_ignores_package_order() {
        let base = Interpreter {
            executable: "/usr/bin/python3".into(),
            version: "3.11.7".into(),
        };
        let a = venv_key(&base, &["pandas".into(), "pyarrow".into()]);
        let b = venv_key(&base, &["pyarrow".into(), "pandas".into()]);
        assert_eq!(a, b);
        let other = Interpreter {
            version: "3.12.1".into(),
            ..base.clone()
        };
        assert_ne!(a, venv_key(&other, &["pandas".into(), "pyarrow".into()]));
    }

    /// Builds a real environment from a local wheel (no network). Slow (5-10 s on two cores),
    /// so not in the default run: `cargo test --lib worker::python::env -- --ignored`.
    #[test]
    #[ignore]
    fn a_pip_list_builds_a_cached_environment_once() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_interpreter(Some(&test_python().to_string_lossy())).unwrap();
        let wheel = dir.path().join("prs_tiny-0.1-py3-none-any.whl");
        write_tiny_wheel(&base, &wheel);
        let cache = dir.path().join("cache");
        let pip = vec![wheel.to_string_lossy().into_owned()];
        let python = cached_venv(&base, &pip, &cache).unwrap();
        assert!(python.starts_with(cache.join("venvs")));
        let out = Command::new(&python)
            .args(["-c", "import prs_tiny; print(prs_tiny.VALUE)"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        // Reused, not rebuilt.
        let marker = python
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join(COMPLETE_MARKER);
        let before = std::fs::metadata(&marker).unwrap().modified().unwrap();
        assert_eq!(cached_venv(&base, &pip, &cache).unwrap(), python);
        assert_eq!(
            std::fs::metadata(&marker).unwrap().modified().unwrap(),
            before
        );
    }

    /// A failing install names the package and quotes pip (builds a second environment, so
    /// it is slow: `cargo test --lib worker::python::env -- --ignored`).
    #[test]
    #[ignore]
    fn a_failing_pip_install_quotes_pip() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_interpreter(Some(&test_python().to_string_lossy())).unwrap();
        let pip = vec!["/nowhere/none-0.1-py3-none-any.whl".to_string()];
        let err = cached_venv(&base, &pip, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pip install failed") && err.contains("none-0.1"),
            "{err}"
        );
        // Nothing half-built is left to be reused.
        let key = venv_key(&base, &pip);
        assert!(!dir.path().join("venvs").join(key).exists());
    }
}
