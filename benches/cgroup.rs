//! `kill = "cgroup"`: how long from the parent's SIGKILL until the whole
//! captive is gone, for captives of 1, 10 and 100 processes, against
//! `kill = "tree"` and (one process) the kernel's PR_SET_PDEATHSIG; and
//! what `tetherctl exec --kill cgroup` costs against a plain `exec`.
//!
//! Run as root with `cargo bench --bench cgroup [-- --rounds N]`. The
//! captive is a shell with N-1 `sleep` children, bound with `tetherctl
//! bind` (the cgroup mode moves all N in at bind time); "gone" means every
//! one of its processes has exited (gone or a zombie), looked for every
//! 50 µs; for the cgroup mode, the time `cgroup.events` said
//! `populated 0` is printed as well. Grace is 10 s: SIGTERM ends them all.

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

use support::probe::{fork, fork_parent, kill, pipe, read_exact, write_all, Stats};
use support::{arg, Tetherd};

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TETHERCTL: &str = env!("CARGO_BIN_EXE_tetherctl");

/// Whether `pid` has exited: no /proc entry, or a zombie.
fn ended(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next().map(|s| s == "Z"))
            .unwrap_or(true),
    }
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// A shell with `n - 1` sleeping children; returns its pid and theirs.
fn captive(n: usize) -> Vec<i32> {
    let (r, w) = pipe();
    let script = format!(
        "i=1; while [ $i -lt {n} ]; do sleep 1000 3>&- & echo $! >&3; i=$((i+1)); done; echo $$ >&3; exec 3>&-; exec sleep 1000"
    );
    let w_raw = w.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::dup2(w_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(w);
    drop(child);
    let mut out = Vec::new();
    let mut text = String::new();
    let mut buf = [0u8; 1];
    while read_exact(r.as_raw_fd(), &mut buf) {
        text.push(buf[0] as char);
    }
    for line in text.lines() {
        out.push(line.trim().parse().unwrap());
    }
    assert_eq!(out.len(), n);
    out.rotate_right(1); // the shell first
    out
}

/// One round: a parent, a captive of `n`, bound with `kill`; the parent
/// SIGKILLed; returns (µs until every captive process ended, µs until the
/// cgroup said empty where there is one).
fn round(daemon: &Tetherd, root: &Path, kill_mode: &str, n: usize) -> (f64, Option<f64>) {
    let parent = fork_parent(|| {});
    let pids = captive(n);
    let socket = daemon.socket.display().to_string();
    let out = Command::new(TETHERCTL)
        .args(["--socket", &socket, "bind", "--parent", &parent.to_string()])
        .args([
            "--child",
            &pids[0].to_string(),
            "--kill",
            kill_mode,
            "--grace",
            "10s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir: PathBuf = root.join(format!("b{id}"));
    let t0 = Instant::now();
    kill(parent, libc::SIGKILL);
    let mut empty_at = None;
    let mut left: Vec<i32> = pids.clone();
    while !left.is_empty() {
        left.retain(|&p| !ended(p));
        if kill_mode == "cgroup" && empty_at.is_none() && !populated(&dir) {
            empty_at = Some(t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "captive not ended");
        std::thread::sleep(Duration::from_micros(50));
    }
    let all = t0.elapsed();
    if kill_mode == "cgroup" {
        while populated(&dir) {
            std::thread::sleep(Duration::from_micros(50));
        }
        empty_at.get_or_insert(t0.elapsed());
    }
    support::probe::reap_all();
    (
        all.as_secs_f64() * 1e6,
        empty_at.map(|d| d.as_secs_f64() * 1e6),
    )
}

/// PR_SET_PDEATHSIG on one process: µs from the parent's SIGKILL until
/// the child ended.
fn pdeathsig_round() -> f64 {
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let parent = fork_parent(move || {
        // SAFETY: getpid has no arguments.
        let me = unsafe { libc::getpid() };
        if fork() == 0 {
            // SAFETY: async-signal-safe calls in a fresh child.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                if libc::getppid() != me {
                    libc::_exit(3);
                }
                let child = libc::getpid();
                write_all(w_raw, &child.to_ne_bytes());
                loop {
                    libc::pause();
                }
            }
        }
    });
    drop(w);
    let mut buf = [0u8; 4];
    assert!(read_exact(r.as_raw_fd(), &mut buf));
    let child = i32::from_ne_bytes(buf);
    let t0 = Instant::now();
    kill(parent, libc::SIGKILL);
    while !ended(child) {
        std::thread::sleep(Duration::from_micros(50));
    }
    let us = t0.elapsed().as_secs_f64() * 1e6;
    support::probe::reap_all();
    us
}

/// µs for `tetherctl exec [--kill cgroup] -- true`, start to exit.
fn exec_round(daemon: &Tetherd, cgroup: bool) -> f64 {
    let socket = daemon.socket.display().to_string();
    let mut cmd = Command::new(TETHERCTL);
    cmd.args(["--socket", &socket, "exec"]);
    if cgroup {
        cmd.args(["--kill", "cgroup"]);
    }
    cmd.args(["--", "true"]);
    let t0 = Instant::now();
    let status = cmd.status().unwrap();
    let us = t0.elapsed().as_secs_f64() * 1e6;
    assert!(status.success());
    us
}

fn line(what: &str, s: &mut Stats) {
    println!(
        "| {what:<40} | {:>9.0} | {:>9.0} | {:>9.0} |",
        s.pct(0.5),
        s.pct(0.9),
        s.pct(1.0)
    );
}

fn main() {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the cgroup benchmark needs root");
        return;
    }
    let place = match tether::locate_cgroups(None, false) {
        Ok(place) => place,
        Err(why) => {
            println!("skipped: no usable cgroup v2: {why}");
            return;
        }
    };
    let rounds = arg("--rounds", 20);
    // Orphaned sleeps come back to us to be reaped.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let root = place
        .mount
        .join(format!("tether-bench-{}", std::process::id()));
    let daemon = Tetherd::start_on(
        Some("pidfd"),
        &format!("cgroup_root = {:?}\n", root.display().to_string()),
    );
    println!(
        "rounds: {rounds}; cgroups under {}; backend pidfd",
        root.display()
    );
    println!();
    println!(
        "| parent SIGKILLed to the whole captive gone (µs)  |       p50 |       p90 |       max |"
    );
    println!("|------------------------------------------|-----------|-----------|-----------|");
    let mut s = Stats::default();
    for _ in 0..rounds {
        s.add(pdeathsig_round());
    }
    line("PR_SET_PDEATHSIG, 1 process", &mut s);
    for n in [1, 10, 100] {
        for mode in ["tree", "cgroup"] {
            let mut all = Stats::default();
            let mut empty = Stats::default();
            for _ in 0..rounds {
                let (a, e) = round(&daemon, &root, mode, n);
                all.add(a);
                if let Some(e) = e {
                    empty.add(e);
                }
            }
            line(&format!("kill = \"{mode}\", {n} processes"), &mut all);
            if mode == "cgroup" {
                line(&format!("  cgroup.events populated 0, {n}"), &mut empty);
            }
        }
    }
    println!();
    println!("| tetherctl exec -- true (µs)              |       p50 |       p90 |       max |");
    println!("|------------------------------------------|-----------|-----------|-----------|");
    for (what, cgroup) in [("plain exec", false), ("exec --kill cgroup", true)] {
        let mut s = Stats::default();
        for _ in 0..rounds.max(50) {
            s.add(exec_round(&daemon, cgroup));
        }
        line(what, &mut s);
    }
    drop(daemon);
    let _ = fs::remove_dir(&root);
}
