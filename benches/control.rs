//! Control-socket figures: `bind` round trip (each acknowledged only after
//! the state file's fsync), binds per second when requests are pipelined
//! (one fsync per batch), and what `tetherctl exec` adds to a command's
//! start compared with starting it directly, in the same run.
//!
//! Run with `cargo bench --bench control [-- --binds N --execs N]`.

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

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

const TETHERCTL: &str = env!("CARGO_BIN_EXE_tetherctl");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
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
    median
}

fn bind_line(parent: u32, child: u32) -> Vec<u8> {
    format!(
        "{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{parent}}},\"children\":[{{\"pid\":{child}}}]}}\n"
    )
    .into_bytes()
}

fn main() {
    let n_binds = arg("--binds", 500);
    let n_execs = arg("--execs", 200);
    let mut parent = Command::new("sleep").arg("1000").spawn().unwrap();
    let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
    let daemon = Tetherd::start("");
    let stream = UnixStream::connect(&daemon.socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let line = bind_line(parent.id(), child.id());

    println!("# tether control-socket benchmark");
    println!();
    println!(
        "kernel {}, {} cores; the state file is on {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::env::temp_dir().display()
    );
    println!();
    println!("| measure | n | min µs | median µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|---|");

    // exec overhead: `tetherctl exec -- true` against `true`, interleaved.
    let mut direct = Vec::with_capacity(n_execs);
    let mut tethered = Vec::with_capacity(n_execs);
    for _ in 0..n_execs {
        let t0 = Instant::now();
        let status = Command::new("true").status().unwrap();
        direct.push(t0.elapsed());
        assert!(status.success());
        let t0 = Instant::now();
        let status = Command::new(TETHERCTL)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["exec", "--", "true"])
            .status()
            .unwrap();
        tethered.push(t0.elapsed());
        assert!(status.success());
    }
    let direct = summary("start `true` directly", direct);
    let tethered = summary("start `tetherctl exec -- true`", tethered);
    // One bind at a time: each answer waits for the state file's fsync.
    let mut samples = Vec::with_capacity(n_binds);
    let mut answer = String::new();
    for _ in 0..n_binds {
        let t0 = Instant::now();
        writer.write_all(&line).unwrap();
        answer.clear();
        reader.read_line(&mut answer).unwrap();
        samples.push(t0.elapsed());
        assert!(answer.contains("\"ok\":true"), "{answer}");
    }
    let tenth = (n_binds / 10).max(1);
    summary(
        &format!("bind round trip (with fsync), first {tenth}"),
        samples[..tenth].to_vec(),
    );
    summary(
        &format!("bind round trip (with fsync), last {tenth}"),
        samples[n_binds - tenth..].to_vec(),
    );
    summary("bind round trip (with fsync), all", samples);

    // A status round trip: the same path without the state write.
    let status = b"{\"v\":1,\"op\":\"status\"}\n";
    let mut samples = Vec::with_capacity(n_binds);
    for _ in 0..n_binds {
        let t0 = Instant::now();
        writer.write_all(status).unwrap();
        answer.clear();
        reader.read_line(&mut answer).unwrap();
        samples.push(t0.elapsed());
    }
    summary("status round trip (no state write)", samples);

    // Pipelined: a batch of binds written at once shares one fsync.
    let batch = 100;
    let mut batch_times = Vec::new();
    let t_all = Instant::now();
    for _ in 0..(n_binds / batch).max(1) {
        let t0 = Instant::now();
        let mut lines = Vec::with_capacity(line.len() * batch);
        for _ in 0..batch {
            lines.extend_from_slice(&line);
        }
        writer.write_all(&lines).unwrap();
        for _ in 0..batch {
            answer.clear();
            reader.read_line(&mut answer).unwrap();
            assert!(answer.contains("\"ok\":true"), "{answer}");
        }
        batch_times.push(t0.elapsed() / u32::try_from(batch).unwrap());
    }
    let pipelined = (n_binds / batch).max(1) * batch;
    summary(
        &format!("bind, pipelined in batches of {batch} (per bind)"),
        batch_times,
    );
    let rate = pipelined as f64 / t_all.elapsed().as_secs_f64();

    println!();
    println!(
        "Sustained pipelined binds: {rate:.0} per second (state file rewritten once per batch, {} bindings held at the end).",
        n_binds + pipelined
    );
    println!(
        "tetherctl exec adds {:.0} µs to a command's start (median, {:.1}x the direct start).",
        us(tethered.saturating_sub(direct)),
        tethered.as_secs_f64() / direct.as_secs_f64()
    );
    let _ = parent.kill();
    let _ = child.kill();
    let _ = parent.wait();
    let _ = child.wait();
}
