//! Execution counting for the proptest harnesses that stand in for cargo-fuzz (which needs a
//! nightly toolchain): each property reports how many inputs it ran, how long it took and how
//! many shrunk failures its `*.proptest-regressions` file keeps.
//!
//! Sizing: a CI-sized default per property; `GPUVIRT_FUZZ_CASES=N` runs N cases per property
//! (`PROPTEST_CASES`, proptest's own variable, is honoured too and wins when both are set).
//! `GPUVIRT_FUZZ_SECS=S` time-boxes each property: once S seconds have passed, the remaining
//! cases are generated but not executed, and only executed ones are counted.
//! `GPUVIRT_FUZZ_REPORT=FILE` appends one JSON line per property to FILE.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::test_runner::Config;

/// One property's execution counter.
pub struct Fuzz {
    target: String,
    regressions_file: std::path::PathBuf,
    cases: u32,
    executions: AtomicU64,
    /// Nanoseconds from `started` to the end of the last execution's start, so a time-boxed
    /// run's rate leaves out the skipped cases' generation.
    last_hit_nanos: AtomicU64,
    started: Instant,
    time_box: Option<Duration>,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Fuzz {
    /// `source` is the harness's `file!()`; `name` the property; `default_cases` the CI size.
    pub fn new(source: &str, name: &str, default_cases: u32) -> Self {
        let stem = Path::new(source)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("unknown")
            .to_string();
        let cases = env_number("PROPTEST_CASES")
            .or_else(|| env_number("GPUVIRT_FUZZ_CASES"))
            .map_or(default_cases, |n| u32::try_from(n).unwrap_or(u32::MAX));
        Self {
            target: format!("{stem}::{name}"),
            regressions_file: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(format!("{stem}.proptest-regressions")),
            cases,
            executions: AtomicU64::new(0),
            last_hit_nanos: AtomicU64::new(0),
            started: Instant::now(),
            time_box: env_number("GPUVIRT_FUZZ_SECS").map(Duration::from_secs),
        }
    }

    /// The runner configuration: this property's case count, failures persisted next to the
    /// harness (proptest's default place).
    pub fn config(&self) -> Config {
        Config {
            cases: self.cases,
            ..Config::default()
        }
    }

    /// Counts one execution; false once the time box is spent (the caller skips the case).
    pub fn hit(&self) -> bool {
        let elapsed = self.started.elapsed();
        if self.time_box.is_some_and(|limit| elapsed > limit) {
            return false;
        }
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.last_hit_nanos.store(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        true
    }

    /// Executions so far.
    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    /// Shrunk failing inputs kept in the harness's regressions file (replayed first each run).
    pub fn regressions(&self) -> usize {
        std::fs::read_to_string(&self.regressions_file)
            .map(|text| text.lines().filter(|l| l.starts_with("cc ")).count())
            .unwrap_or(0)
    }

    /// Prints the figures (visible with `--nocapture`) and appends them to
    /// `GPUVIRT_FUZZ_REPORT` when set. Asserts the property really ran.
    pub fn report(&self) {
        let executions = self.executions();
        let total = self.started.elapsed().as_secs_f64();
        // Executing time: up to the last executed case when the time box cut the run short.
        let secs = if executions < u64::from(self.cases) {
            Duration::from_nanos(self.last_hit_nanos.load(Ordering::Relaxed)).as_secs_f64()
        } else {
            total
        };
        let regressions = self.regressions();
        eprintln!(
            "fuzz {}: {executions} executions in {secs:.1} s ({:.0}/s; {total:.1} s in all), {} cases configured, {regressions} persisted regressions",
            self.target,
            executions as f64 / secs.max(1e-9),
            self.cases,
        );
        if let Ok(path) = std::env::var("GPUVIRT_FUZZ_REPORT") {
            let line = format!(
                "{{\"target\":\"{}\",\"executions\":{executions},\"seconds\":{secs:.3},\"total_seconds\":{total:.3},\"cases\":{},\"regressions\":{regressions}}}\n",
                self.target, self.cases
            );
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(line.as_bytes());
            }
        }
        assert!(
            executions > 0 || self.cases == 0,
            "{}: no input was executed",
            self.target
        );
    }
}
