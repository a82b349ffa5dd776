//! The cost of an `events --follow` reader on the delay from a parent's
//! exit to its child's signal: four daemons side by side, one with no
//! reader, one with a reader that keeps up, the same with the reader at
//! SCHED_IDLE (so that, on a small machine, the reader's own CPU time does
//! not compete with the probe's wake-up), and one with a reader that never
//! reads (so its output bound is full and the ring overtakes it), their
//! rounds interleaved, per backend (pidfd and netlink by default;
//! `--backends pidfd,netlink,poll`).
//!
//! Run with `cargo bench --bench events [-- --rounds N --backends LIST]`.
//! The measurement is benches/latency.rs's: a probe child that waits for
//! SIGTERM and reads CLOCK_MONOTONIC, against the time read just before
//! `kill(parent, SIGKILL)`. Each daemon's own histogram (from the loop
//! learning of the exit to the signal) is printed too.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::multiple_unsafe_ops_per_block
)]

#[path = "support/mod.rs"]
mod support;

use support::probe::*;
use support::{arg, Tetherd};

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A reader that keeps up with `events --follow` on `daemon`, on a thread
/// of its own (at SCHED_IDLE with `idle`), counting the lines it reads.
fn reader_thread(daemon: &Tetherd, idle: bool) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let n_read = Arc::new(AtomicU64::new(0));
    let reader = follow(daemon);
    let counter = Arc::clone(&n_read);
    let thread = std::thread::spawn(move || {
        if idle {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets the calling thread's policy from a valid param.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        }
        for line in BufReader::new(reader).lines() {
            if line.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (n_read, thread)
}

/// A subscriber to `events --follow` on `daemon`.
fn follow(daemon: &Tetherd) -> UnixStream {
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(b"{\"v\":1,\"op\":\"events\",\"follow\":true}\n")
        .unwrap();
    stream
}

/// The sum and count of the daemon's own delay histogram.
fn own_delay(daemon: &Tetherd) -> (f64, f64) {
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream.write_all(b"{\"v\":1,\"op\":\"metrics\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    let text = value["metrics"].as_str().unwrap().to_owned();
    let get = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        get("tether_exit_to_signal_seconds_sum "),
        get("tether_exit_to_signal_seconds_count "),
    )
}

fn main() {
    let rounds = arg("--rounds", 300);
    let args: Vec<String> = std::env::args().collect();
    let backends: Vec<String> = if args.iter().any(|a| a == "--backends") {
        support::usable_backends()
    } else {
        support::usable_backends()
            .into_iter()
            .filter(|b| b != "poll")
            .collect()
    };
    let (results_r, results_w) = pipe();
    let (res_r, res_w) = (results_r.as_raw_fd(), results_w.as_raw_fd());
    println!("# Event stream cost: parent SIGKILLed to child's SIGTERM (µs)");
    println!();
    println!(
        "{rounds} rounds per daemon, interleaved; {} cores.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!();
    println!("| backend | reader | rounds | min | median | p99 | max | daemon's own histogram: mean µs | events read |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for backend in &backends {
        let plain = Tetherd::start_on(Some(backend), "");
        let reading = Tetherd::start_on(Some(backend), "");
        let reading_idle = Tetherd::start_on(Some(backend), "");
        let stalled = Tetherd::start_on(Some(backend), "");
        let (n_read, thread) = reader_thread(&reading, false);
        let (n_read_idle, thread_idle) = reader_thread(&reading_idle, true);
        // The reader that never reads: its stream is kept open, unread.
        let _stalled_reader = follow(&stalled);
        let daemons = [
            ("none", &plain),
            ("follower reading", &reading),
            ("follower reading, SCHED_IDLE", &reading_idle),
            ("follower never reading", &stalled),
        ];
        let mut streams: Vec<UnixStream> = daemons
            .iter()
            .map(|(_, d)| UnixStream::connect(&d.socket).unwrap())
            .collect();
        let mut stats: Vec<Stats> = daemons.iter().map(|_| Stats::default()).collect();
        for _ in 0..rounds {
            for (i, (_, daemon)) in daemons.iter().enumerate() {
                let (parent, child) = spawn_pair(false, res_w);
                daemon.bind(&mut streams[i], parent, child);
                std::thread::sleep(Duration::from_millis(3));
                let t0 = now_ns();
                kill(parent, libc::SIGKILL);
                let (pid, t1) = read_result(res_r, Duration::from_secs(30))
                    .expect("the probe was not signalled");
                assert_eq!(pid, child);
                reap_all();
                stats[i].add((t1 - t0) as f64 / 1000.0);
            }
        }
        for ((name, daemon), s) in daemons.iter().zip(&stats) {
            let (sum, count) = own_delay(daemon);
            let read = match *name {
                "follower reading" => n_read.load(Ordering::Relaxed).to_string(),
                "follower reading, SCHED_IDLE" => n_read_idle.load(Ordering::Relaxed).to_string(),
                _ => "-".into(),
            };
            println!(
                "| {backend} | {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {read} |",
                s.samples.len(),
                s.pct(0.0),
                s.pct(0.5),
                s.pct(0.99),
                s.pct(1.0),
                if count > 0.0 { sum / count * 1e6 } else { 0.0 },
            );
        }
        drop(streams);
        drop(plain);
        drop(reading);
        drop(reading_idle);
        drop(stalled);
        let _ = thread.join();
        let _ = thread_idle.join();
    }
}
