//! `[[rule]]` figures: what an exec costs when tetherd holds it until the
//! binding is made (fanotify `FAN_OPEN_EXEC_PERM`), against the same exec
//! with no rule, and what an exec of a program no rule names costs with
//! and without tetherd (nothing: its inode carries no mark).
//!
//! Each sample is a whole `spawn` + `wait` of a copy of `true`, from this
//! process (which is the launcher the rule names). Needs root. Run with
//! `cargo bench --bench rules [-- --execs N]`.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

#[path = "support/mod.rs"]
mod support;

use support::{arg, Tetherd};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints one row; returns the (min, median).
fn summary(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let median = percentile(&samples, 0.5);
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        us(samples[0]),
        us(median),
        us(percentile(&samples, 0.99)),
        us(*samples.last().unwrap())
    );
    (samples[0], median)
}

/// `n` samples of running `program` to its end.
fn execs(program: &Path, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new(program).status().unwrap();
            let took = start.elapsed();
            assert!(status.success());
            took
        })
        .collect()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: rules need root (fanotify)");
        return;
    }
    let n = arg("--execs", 2000);
    let dir = tempfile::tempdir().unwrap();
    let ruled = dir.path().join("ruled");
    let unrelated = dir.path().join("unrelated");
    for copy in [&ruled, &unrelated] {
        std::fs::copy("/bin/true", copy).unwrap();
    }
    let me = std::env::current_exe().unwrap();
    let rule = |launcher: &Path| {
        format!(
            "[[rule]]\nname = \"bench\"\nexec = \"{}\"\nlauncher = \"{}\"\n",
            ruled.display(),
            launcher.display()
        )
    };
    // Warm the page cache and the binaries.
    execs(&ruled, 50);
    execs(&unrelated, 50);

    println!("exec of a copy of true, spawn to exit ({n} each, microseconds)\n");
    println!("| case | n | min | median | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let base_ruled = summary("ruled executable, no tetherd", execs(&ruled, n));
    let base_other = summary("unrelated executable, no tetherd", execs(&unrelated, n));

    let daemon = Tetherd::start(&rule(&me));
    let bound = summary(
        "ruled executable, tetherd binds each (fanotify)",
        execs(&ruled, n),
    );
    let other = summary(
        "unrelated executable, tetherd running with the rule",
        execs(&unrelated, n),
    );
    drop(daemon);

    let daemon = Tetherd::start(&rule(Path::new("/nonexistent/launcher")));
    let unmatched = summary(
        "ruled executable, launcher not matched (allowed unbound)",
        execs(&ruled, n),
    );
    drop(daemon);
    // The same baseline again: how far two runs of one case differ here.
    let again = summary(
        "unrelated executable, no tetherd (again)",
        execs(&unrelated, n),
    );

    let delta = |a: (Duration, Duration), b: (Duration, Duration)| {
        format!(
            "{:+.0} us median, {:+.0} us min",
            us(a.1) - us(b.1),
            us(a.0) - us(b.0)
        )
    };
    println!();
    println!("cost of a bound exec: {}", delta(bound, base_ruled));
    println!(
        "cost of an exec tetherd reads but does not bind: {}",
        delta(unmatched, base_ruled)
    );
    println!("cost of an unrelated exec: {}", delta(other, base_other));
    println!(
        "noise (one case measured twice): {}",
        delta(again, base_other)
    );
}
