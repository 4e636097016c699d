//! Statistics of the runs and the Markdown report (BENCHMARKS.md): the machine, the targets'
//! verdicts, wall time, memory and CPU, and every workload's commands.

use std::fmt::Write as _;
use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use crate::measure::{Sample, SAMPLE_EVERY};
use crate::setup::Ctx;
use crate::workloads::{
    Outcome, FILES_JOB, KEYED_MAIN, KEYED_MARGIN_BYTES, KEYED_MEMORY_LIMIT,
    KEYED_MEMORY_LIMIT_BYTES, RESUME, RESUME_AT, RUST_SCORE, S3_SCORE, SCORE_MAIN, SCORE_SMALL,
};

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    wall: f64,
    wall_min: f64,
    wall_max: f64,
    peak: f64,
    peak_max: f64,
    cpu: f64,
}

/// Median of `ledger_seconds / wall` over the runs that report it, with the median
/// ledger_seconds and wall.
fn ledger_share(samples: &[Sample]) -> Option<(f64, f64, f64)> {
    let with: Vec<&Sample> = samples.iter().filter(|s| s.ledger.is_some()).collect();
    if with.is_empty() {
        return None;
    }
    let share = median(
        with.iter()
            .map(|s| s.ledger.unwrap_or_default() / s.wall)
            .collect(),
    );
    let secs = median(with.iter().filter_map(|s| s.ledger).collect());
    let wall = median(with.iter().map(|s| s.wall).collect());
    Some((share, secs, wall))
}

/// `a..=b` of the values, or `a` when they are all equal.
fn range_text(values: impl Iterator<Item = u64>) -> Option<String> {
    let v: Vec<u64> = values.collect();
    let (lo, hi) = (v.iter().min()?, v.iter().max()?);
    Some(if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    })
}

/// The resume workload's figures from its medians: (whole job's wall, the remaining work's
/// estimate: init + the unfinished share of the rest, the resumed run's wall).
fn resume_figures(o: &Outcome) -> Option<(f64, f64, f64)> {
    let (resumed, whole) = (stats(&o.a)?, stats(&o.b)?);
    let remaining = o.init_secs + (1.0 - RESUME_AT) * (whole.wall - o.init_secs);
    Some((whole.wall, remaining, resumed.wall))
}

fn stats(samples: &[Sample]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let walls: Vec<f64> = samples.iter().map(|s| s.wall).collect();
    Some(Stats {
        wall: median(walls.clone()),
        wall_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        wall_max: walls.iter().copied().fold(0.0, f64::max),
        peak: median(samples.iter().map(|s| s.peak_rss as f64).collect()),
        peak_max: samples
            .iter()
            .map(|s| s.peak_rss as f64)
            .fold(0.0, f64::max),
        cpu: median(samples.iter().map(|s| s.cpu).collect()),
    })
}

pub fn mb(bytes: f64) -> String {
    format!("{:.0} MB", bytes / 1e6)
}

fn wall_text(s: &Stats) -> String {
    format!("{:.2} s ({:.2}–{:.2})", s.wall, s.wall_min, s.wall_max)
}

fn rate(items: u64, secs: f64, unit: &str) -> String {
    let r = items as f64 / secs;
    if r >= 1e6 {
        format!("{:.2} M {unit}/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k {unit}/s", r / 1e3)
    } else {
        format!("{r:.0} {unit}/s")
    }
}

fn ms(secs: f64) -> String {
    format!("{:.2} ms", secs * 1e3)
}

fn signed_ms(secs: f64) -> String {
    format!("{:+.2} ms", secs * 1e3)
}

/// A target's verdict.
struct Verdict {
    target: String,
    measured: String,
    limit: String,
    result: String,
}

impl Verdict {
    /// A target whose workload ran and failed is failed, not unchecked.
    fn unless_failed(mut self, outcome: Option<&Outcome>) -> Verdict {
        if outcome.is_some_and(|o| o.error.is_some()) {
            self.measured = "– (the workload failed)".into();
            self.result = "FAIL (see Failed workloads)".into();
        }
        self
    }
}

fn verdict(
    target: &str,
    measured: Option<(f64, String)>,
    limit: f64,
    limit_text: String,
) -> Verdict {
    let (measured, result) = match measured {
        Some((v, text)) if v.is_finite() => {
            let result = if v <= limit {
                "PASS".to_string()
            } else {
                format!("MISS (by {:.0}%)", (v / limit - 1.0) * 100.0)
            };
            (text, result)
        }
        _ => ("–".to_string(), "not checked".to_string()),
    };
    Verdict {
        target: target.into(),
        measured,
        limit: limit_text,
        result,
    }
}

pub struct Machine {
    cpus: usize,
    model: String,
    memory: String,
    kernel: String,
    date: String,
    commit: String,
    python: String,
    /// Median wall of `python -c "import numpy, pandas"`: what score_entry.py's own imports
    /// cost before its init() can start.
    import_floor: Option<f64>,
}

pub fn machine(ctx: &Ctx, python: String, import_floor: Option<f64>) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or_else(
            || "unknown".to_string(),
            |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0),
        );
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&ctx.manifest)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!BENCHMARKS.md",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} with uncommitted changes")
            } else {
                c
            }
        }
        None => "unknown (not a git checkout)".into(),
    };
    Machine {
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        model,
        memory,
        kernel,
        date: chrono::Local::now()
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        commit,
        python,
        import_floor,
    }
}

/// Walls of `ctx.runs` (at least 3) bare `python -c "import numpy, pandas, os; os._exit(0)"`:
/// the entry script's imports (without the interpreter's teardown, which workers skip too).
pub fn import_walls(ctx: &Ctx) -> Vec<f64> {
    let mut walls = Vec::new();
    for _ in 0..ctx.runs.max(3) {
        let start = Instant::now();
        let ok = Command::new(&ctx.python)
            .args(["-c", "import numpy, pandas, os; os._exit(0)"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Vec::new();
        }
        walls.push(start.elapsed().as_secs_f64());
    }
    walls
}

pub struct Report<'a> {
    pub ctx: &'a Ctx,
    pub machine: Machine,
    pub outcomes: Vec<Outcome>,
    pub skipped: Vec<String>,
    pub large_name: String,
    pub keyed_large_name: String,
    pub argv: String,
}

impl Report<'_> {
    fn get(&self, name: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|o| o.name == name && o.error.is_none())
    }

    /// The workload `name` whether it succeeded or not.
    fn ran(&self, name: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.name == name)
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let a = |name: &str| self.get(name).and_then(|o| stats(&o.a));
        let b = |name: &str| self.get(name).and_then(|o| stats(&o.b));
        let ratio = |name: &str| match (a(name), b(name)) {
            (Some(x), Some(y)) => Some((
                x.wall / y.wall,
                format!("{:.2} ({:.2} s / {:.2} s)", x.wall / y.wall, x.wall, y.wall),
            )),
            _ => None,
        };
        let wall = |name: &str| a(name).map(|s| (s.wall, format!("{:.2} s", s.wall)));
        let mut v = vec![
            verdict(
                "score-2M: wall vs mp_baseline.py",
                ratio(SCORE_MAIN),
                0.8,
                "<= 0.80".into(),
            )
            .unless_failed(self.ran(SCORE_MAIN)),
            verdict(
                "score-20k: wall (1 s init included)",
                wall(SCORE_SMALL),
                1.3,
                "<= 1.30 s".into(),
            )
            .unless_failed(self.ran(SCORE_SMALL)),
            verdict(
                "files-20k: wall vs mp_baseline_files.py",
                ratio(FILES_JOB),
                1.0,
                "<= 1.00".into(),
            )
            .unless_failed(self.ran(FILES_JOB)),
            verdict(
                "rust-score-2M: wall (1 s init included)",
                wall(RUST_SCORE),
                2.0,
                "<= 2.00 s".into(),
            )
            .unless_failed(self.ran(RUST_SCORE)),
            verdict(
                "score-2M: peak process-tree memory (max of runs)",
                a(SCORE_MAIN).map(|s| (s.peak_max / 1e6, mb(s.peak_max))),
                500.0,
                "<= 500 MB".into(),
            )
            .unless_failed(self.ran(SCORE_MAIN)),
        ];
        let main_peak = a(SCORE_MAIN).map(|s| s.peak_max);
        v.push(
            verdict(
                &format!(
                    "{}: peak memory vs score-2M's (max of runs)",
                    self.large_name
                ),
                match (a(&self.large_name), main_peak) {
                    (Some(l), Some(m)) => Some((
                        l.peak_max / m,
                        format!("{:.2} ({} / {})", l.peak_max / m, mb(l.peak_max), mb(m)),
                    )),
                    _ => None,
                },
                1.1,
                "<= 1.10".into(),
            )
            .unless_failed(self.ran(&self.large_name)),
        );
        v.push(
            verdict(
                "s3-score-2M: wall vs the same job on local disk",
                ratio(S3_SCORE),
                1.5,
                "<= 1.50".into(),
            )
            .unless_failed(self.ran(S3_SCORE)),
        );
        let cluster_large = format!("cluster-{}", self.large_name);
        v.push(
            verdict(
                &format!("{cluster_large}: wall on 2 executors x 1 process vs 2 local processes"),
                ratio(&cluster_large),
                1.3,
                "<= 1.30".into(),
            )
            .unless_failed(self.ran(&cluster_large)),
        );
        let keyed_limit = (KEYED_MEMORY_LIMIT_BYTES + KEYED_MARGIN_BYTES) as f64;
        for name in [KEYED_MAIN, self.keyed_large_name.as_str()] {
            v.push(
                verdict(
                    &format!(
                        "{name}: completes; peak process-tree memory (max of runs) vs \
                         memory_limit + margin"
                    ),
                    a(name).map(|s| (s.peak_max, mb(s.peak_max))),
                    keyed_limit,
                    format!(
                        "<= {} (memory_limit {KEYED_MEMORY_LIMIT} = {}, + {})",
                        mb(keyed_limit),
                        mb(KEYED_MEMORY_LIMIT_BYTES as f64),
                        mb(KEYED_MARGIN_BYTES as f64)
                    ),
                )
                .unless_failed(self.ran(name)),
            );
        }
        v.push(
            verdict(
                &format!(
                    "resume-2M: --resume after {:.0}% vs the remaining work (init + {:.0}% of \
                     the whole job's rest)",
                    RESUME_AT * 100.0,
                    (1.0 - RESUME_AT) * 100.0
                ),
                self.get(RESUME)
                    .and_then(resume_figures)
                    .map(|(_, rest, resumed)| {
                        (
                            resumed / rest,
                            format!("{:.2} ({resumed:.2} s / {rest:.2} s)", resumed / rest),
                        )
                    }),
                1.1,
                "<= 1.10".into(),
            )
            .unless_failed(self.ran(RESUME)),
        );
        for name in [SCORE_MAIN, RUST_SCORE] {
            v.push(
                verdict(
                    &format!("{name}: ledger_seconds / wall (median of runs)"),
                    self.get(name)
                        .and_then(|o| ledger_share(&o.a))
                        .map(|(share, secs, wall)| {
                            (
                                share,
                                format!("{:.1}% ({secs:.3} s of {wall:.2} s)", share * 100.0),
                            )
                        }),
                    0.02,
                    "<= 2%".into(),
                )
                .unless_failed(self.ran(name)),
            );
        }
        v
    }

    pub fn markdown(&self) -> String {
        let ctx = self.ctx;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Generated by the benchmark harness (`benches/harness/`); do not edit by hand. \
             Regenerate with\n\n```sh\ncargo bench --bench harness            # every workload, \
             3 runs each (about 7 minutes; generating the data takes longer, once)\ncargo bench --bench harness -- --help    # options: \
             --runs, --only NAME, --skip-large, --python, --s3-endpoint, --no-write ...\n```\n"
        );
        if self.argv.is_empty() {
            let _ = writeln!(s, "This run: `cargo bench --bench harness`\n");
        } else {
            let _ = writeln!(
                s,
                "This run: `cargo bench --bench harness -- {}`\n",
                self.argv
            );
        }
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "- date: {}", m.date);
        let _ = writeln!(s, "- CPU: {} ({} cores available)", m.model, m.cpus);
        let _ = writeln!(s, "- memory: {}; Linux {}", m.memory, m.kernel);
        let _ = writeln!(
            s,
            "- parallel-run {} (release build), commit {}",
            env!("CARGO_PKG_VERSION"),
            m.commit
        );
        let _ = writeln!(s, "- {} ({})", m.python, ctx.show(&ctx.python));
        let _ = writeln!(
            s,
            "- {} run{} per workload and side, interleaved (A B A B ...)\n",
            ctx.runs,
            if ctx.runs == 1 { "" } else { "s" }
        );

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | measured (medians) | limit | result |");
        let _ = writeln!(s, "|---|---|---|---|");
        for v in self.verdicts() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                v.target, v.measured, v.limit, v.result
            );
        }

        if let (Some(floor), Some(small)) = (
            m.import_floor,
            self.get(SCORE_SMALL).and_then(|o| stats(&o.a)),
        ) {
            let _ = writeln!(
                s,
                "\nStart-up floor of score-20k: score_entry.py imports numpy and pandas before its \
                 init() sleeps 1 s, and `python -c \"import numpy, pandas, os; os._exit(0)\"` alone takes {floor:.2} s \
                 here (median of {} runs, timed just before and after score-20k's), so no engine running that \
                 script in a fresh Python can finish under {:.2} s. parallel-run's own share of \
                 the {:.2} s (its start, the 3 mini-batches, the output, the report and the \
                 shutdown) is the rest: {:.0} ms.",
                2 * ctx.runs.max(3),
                1.0 + floor,
                small.wall,
                (small.wall - 1.0 - floor) * 1000.0
            );
        }
        if let Some(o) = self.get(RESUME) {
            if let Some((whole, rest, resumed)) = resume_figures(o) {
                let _ = writeln!(
                    s,
                    "\nresume-2M: each timed `--resume` continued a run of the same job killed \
                     (SIGKILL) when its ledger held {} of its {} mini-batches, and skipped {} of \
                     them without reading {} of their input rows again. The whole job takes {whole:.2} s (median), {:.0} s of it init(), so \
                     the remaining work is estimated at {:.0} s + {:.0}% × {:.2} s = {rest:.2} s; \
                     the resume took {resumed:.2} s. Beyond init(), the resume spent {:.0}% \
                     of what the whole job spends ({:.2} s of {:.2} s).",
                    range_text(o.a.iter().filter_map(|x| x.killed_at)).unwrap_or("?".into()),
                    o.a.last()
                        .and_then(|x| x.mini_batches)
                        .map_or("?".into(), |n| n.to_string()),
                    range_text(o.a.iter().filter_map(|x| x.skipped)).unwrap_or("?".into()),
                    range_text(o.a.iter().filter_map(|x| x.not_read)).unwrap_or("?".into()),
                    o.init_secs,
                    o.init_secs,
                    (1.0 - RESUME_AT) * 100.0,
                    whole - o.init_secs,
                    (resumed - o.init_secs) / (whole - o.init_secs) * 100.0,
                    resumed - o.init_secs,
                    whole - o.init_secs,
                );
            }
        }
        let _ = writeln!(s, "\n## Wall time\n");
        let _ = writeln!(
            s,
            "| workload | parallel-run wall: median (min–max) | compared with | its wall: median \
             (min–max) | ratio | throughput | mini-batches | (wall − init) / mini-batch | \
             (wall − compared) / mini-batch |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for o in &self.outcomes {
            let Some(a) = stats(&o.a) else {
                let _ = writeln!(s, "| {} | FAILED (see below) | | | | | | | |", o.name);
                continue;
            };
            // rust-score-2M has no baseline of its own: it is compared with score-2M's.
            let (b_label, b) = match (&o.b_label, stats(&o.b)) {
                (Some(l), Some(b)) => (l.clone(), Some(b)),
                _ if o.name == RUST_SCORE => (
                    "mp_baseline.py (score-2M's runs)".to_string(),
                    self.get(SCORE_MAIN).and_then(|x| stats(&x.b)),
                ),
                _ => ("–".to_string(), None),
            };
            let batches = o.a.last().and_then(|x| x.mini_batches);
            // A resumed run ran only some of its mini-batches: no per-mini-batch figures.
            let skipped = range_text(o.a.iter().filter_map(|x| x.skipped));
            let per = |secs: f64| {
                batches
                    .filter(|n| *n > 0 && skipped.is_none())
                    .map(|n| secs / n as f64)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o.name,
                wall_text(&a),
                b_label,
                b.as_ref().map_or("–".into(), wall_text),
                b.as_ref()
                    .map_or("–".into(), |b| format!("{:.2}", a.wall / b.wall)),
                // A resumed run did not process every item.
                if skipped.is_some() {
                    "–".to_string()
                } else {
                    rate(o.items, a.wall, o.unit)
                },
                match (batches, &skipped) {
                    (Some(n), Some(k)) => format!("{n} ({k} skipped)"),
                    (Some(n), None) => n.to_string(),
                    _ => "–".into(),
                },
                per(a.wall - o.init_secs).map_or("–".into(), ms),
                b.as_ref()
                    .and_then(|b| per(a.wall - b.wall))
                    .map_or("–".into(), signed_ms),
            );
        }

        let _ = writeln!(s, "\n## Memory and CPU\n");
        let _ = writeln!(
            s,
            "| workload | parallel-run peak tree RSS: median (max) | compared with: peak (max) | \
             parallel-run CPU | compared CPU | job elapsed (job_summary.json) | ledger_seconds: \
             median (share of wall) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for o in &self.outcomes {
            let Some(a) = stats(&o.a) else {
                continue;
            };
            let b = stats(&o.b);
            let elapsed = median(o.a.iter().filter_map(|x| x.job_elapsed).collect());
            let server = median(o.a.iter().filter_map(|x| x.server_cpu).collect());
            let server = if server.is_finite() {
                format!(" (+ {server:.1} s of the S3 server)")
            } else {
                String::new()
            };
            let ledger = ledger_share(&o.a).map_or("–".into(), |(share, secs, _)| {
                format!("{secs:.3} s ({:.1}%)", share * 100.0)
            });
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {:.1} s{server} | {} | {} | {ledger} |",
                o.name,
                mb(a.peak),
                mb(a.peak_max),
                match (&o.b_label, b) {
                    (Some(l), Some(b)) => format!("{l}: {} ({})", mb(b.peak), mb(b.peak_max)),
                    _ => "–".into(),
                },
                a.cpu,
                b.map_or("–".into(), |b| format!("{:.1} s", b.cpu)),
                if elapsed.is_finite() {
                    format!("{elapsed:.2} s")
                } else {
                    "–".into()
                },
            );
        }

        let failed: Vec<&Outcome> = self.outcomes.iter().filter(|o| o.error.is_some()).collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\n## Failed workloads\n");
            for o in failed {
                let _ = writeln!(
                    s,
                    "### {}\n\n```text\n{}\n```\n",
                    o.name,
                    o.error
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "\n## Not run\n");
            for line in &self.skipped {
                let _ = writeln!(s, "- {line}");
            }
        }

        let _ = writeln!(s, "\n## Workloads and commands\n");
        let _ = writeln!(
            s,
            "Run from the crate root after `cargo bench --bench harness` has generated the data \
             and the job files under `{}` (data sets are generated once, by `python \
             ../shared/bench/gen_data.py DIR --rows N` or `--files N`, and reused). Before \
             each run the output folder is removed (not timed). Paths are shown relative to \
             the crate root.\n",
            ctx.show(&ctx.data)
        );
        for o in &self.outcomes {
            let _ = writeln!(s, "- **{}**: {}.", o.name, o.what);
            if let Some(note) = &o.setup_note {
                let _ = writeln!(s, "  Setup: {note}.");
            }
            let _ = writeln!(s, "\n  ```sh");
            for (label, c) in &o.commands {
                let _ = writeln!(s, "  # {label}\n  {}", ctx.relative(c));
            }
            let _ = writeln!(s, "  ```\n");
        }

        let _ = writeln!(s, "## How it is measured\n");
        let _ = writeln!(
            s,
            "- **Wall** is the whole command, from spawn to exit: process start, Python \
             start-up and imports, init() (the reference entry script sleeps 1 s in it), the \
             job, writing the output and the report, shutdown. Each workload runs its two \
             sides alternately (A B A B ...) so that drift of the machine affects both; the \
             table gives the median and the range of the runs.\n\
             - **Checked, not timed**: after every parallel-run run the exit code must be 0 and \
             `logs/job_summary.json` must say `succeeded` with items_total and items_succeeded \
             equal to the input's rows (or files) and the output must hold one row per item \
             (`output_rows`; for txt output, the lines of the output file); the baselines run with \
             `BENCH_VERIFY=0` (their own full check is slow) and must exit 0 and report every \
             row (mp_baseline.py's `rows=N`; mp_baseline_files.py's results.txt has one line \
             per file). A failed run fails the workload instead of being timed.\n\
             - **Peak tree RSS**: every {} ms the harness walks `/proc/*/stat` for the \
             descendants of the command's process and sums `VmRSS` of the process and all of \
             them (Python workers, multiprocessing pool processes); the peak of these sums. MB \
             = 10^6 bytes. Shared pages (the Python libraries mapped by every worker) count \
             once per process, as VmRSS does.\n\
             - **CPU** is user + system time of the command and every descendant it reaped \
             (`wait4` rusage), median of the runs: above the wall time means both cores \
             were busy. For s3-score-2M the CPU time the S3 server the harness started used \
             during the run (from `/proc/PID/stat`) is given beside it: on this machine the \
             server competes with the job for the same cores.\n\
             - **(wall − init) / mini-batch**: the median wall minus the init() sleep the \
             entry script does (1 s for the score jobs, which both workers do at the same \
             time; 0 for the file job), divided by the job's mini-batches \
             (`mini_batches_total` in job_summary.json): the wall each mini-batch costs, \
             including the user's run() and process start-up, so an upper bound of the \
             engine's per-mini-batch overhead.\n\
             - **(wall − compared) / mini-batch**: the median wall minus the compared \
             command's median wall, divided by parallel-run's mini-batches: what parallel-run \
             adds (positive) or saves (negative) per mini-batch against the baseline doing the \
             same user work (for s3-score-2M: what reading from S3 adds per mini-batch). The \
             baselines cut 10,000-row (or 100-file) mini-batches: 200 for 2M rows.\n\
             - The engine's own per-mini-batch overhead without user work is measured by the \
             criterion micro-benchmarks: `cargo bench --bench engine` (no-op Rust runner, \
             no-op Python runner, Arrow IPC round trip to a Python worker).\n\
             - **Job elapsed** is the engine's own clock in job_summary.json (planning to \
             commit); the wall minus it is process start and exit.\n\
             - **Keyed jobs** (keyed-*): one mini-batch per distinct `key` (the check also \
             requires `mini_batches_total` = {keys}); `summary_only` writes no output file, so \
             the check is job_summary.json's counts. Their `memory_limit: {limit}` ({limit_mb}) \
             is far below the data, and the target is that the job completes and its peak \
             tree RSS stays within memory_limit plus a fixed margin of {margin}: what \
             memory_limit does not account for and what does not grow with the data (the \
             process itself: binary, runtime, plan and worker threads, about 70 MB for the same \
             job over the 20k-row set; the Parquet reader's current row group; the sort's \
             spill-file buffers; the allocator's free pages kept for reuse). A peak beyond it \
             is memory that grows with the data outside memory_limit.\n\
             - **Resume** (resume-2M): before each timed run, and not timed, the job runs and is \
             killed with SIGKILL (its process group) as soon as its ledger \
             (`logs/ledger/records.jsonl`, one line per finished mini-batch, polled every \
             millisecond) holds {at:.0}% of the mini-batches (a run that finishes first is \
             started again, up to 5 times); the timed command is `parallel-run run JOB \
             --resume` in the same output folder. Checked: job_summary.json says succeeded, \
             `resumed: true`, `mini_batches_skipped` at least {at:.0}% of the mini-batches and \
             the whole job's counts, and the output file's `id` column holds every input id \
             exactly once. The compared side is the same job run whole (interleaved); the \
             remaining work is estimated as init + {rest:.0}% × (whole − init).\n\
             - **Cluster** (cluster-score-2M, cluster-score-<rows-large>): the score job on a \
             cluster the harness starts once before the runs (not timed): `parallel-run \
             scheduler` and 2 `parallel-run executor --processes 1` on loopback, waited for \
             until both are registered; the timed command is the job with `--set \
             compute_target=df://...`, `node_count=2` and `process_count_per_node=1`. The \
             compared side is the same job file run locally (2 processes). Peak memory is the \
             driver's process tree only (the executors and their workers are not in it); \
             \"(wall − compared) / mini-batch\" is what the cluster adds per mini-batch.\n\
             - **ledger_seconds** is the engine's own measure in job_summary.json of the time \
             spent on the ledger (fingerprinting input slices, writing and syncing records), \
             summed over the job's tasks, which overlap: an upper bound of what the ledger \
             adds to the wall. Its share is each run's ledger_seconds over that run's wall; \
             the median of the runs.",
            SAMPLE_EVERY.as_millis(),
            keys = crate::workloads::KEYS,
            limit = KEYED_MEMORY_LIMIT,
            limit_mb = mb(KEYED_MEMORY_LIMIT_BYTES as f64),
            margin = mb(KEYED_MARGIN_BYTES as f64),
            at = RESUME_AT * 100.0,
            rest = (1.0 - RESUME_AT) * 100.0,
        );
        s
    }
}
