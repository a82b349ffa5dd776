//! Parent-death-to-signal latency, memory, idle cost and mass exit of
//! tetherd, side by side with the kernel's own PR_SET_PDEATHSIG and with a
//! dedicated pidfd watcher process per binding, in one run.
//!
//! Each tetherd figure is taken once per watch backend this host can run
//! (pidfd, netlink, poll; `--backends pidfd,poll` to choose).
//!
//! Run as root with `cargo bench --bench latency [-- --rounds N --pairs N
//! --idle-secs N --poll-rounds N --backends LIST]`. Root is needed to raise RLIMIT_NOFILE and pid_max for
//! 10,000 bindings (both are restored or confined to this run).
//!
//! Every measured child is a probe forked from this process: it blocks
//! SIGTERM, waits for it with sigwaitinfo, reads CLOCK_MONOTONIC and writes
//! (pid, time) to a pipe. The delay is that time minus the time read just
//! before `kill(parent, SIGKILL)`.

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

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Pdeathsig,
    Watcher,
    Tetherd,
}

/// One latency round for `method`; returns the delay in µs. `jitter`
/// is an extra pause before the kill (for the poll backend, whose timer
/// would otherwise lock to the rounds' own rhythm).
fn round(
    method: Method,
    (results_r, results_w): (RawFd, RawFd),
    daemon: Option<(&Tetherd, &mut UnixStream)>,
    jitter: Duration,
) -> f64 {
    let (parent, child) = spawn_pair(method == Method::Pdeathsig, results_w);
    let watcher = match method {
        Method::Watcher => Some(spawn_watcher(parent, child)),
        _ => None,
    };
    if let Some((daemon, stream)) = daemon {
        daemon.bind(stream, parent, child);
    }
    // Every method gets the same pause between set-up and the kill, so the
    // write-back of a bind's fsync or a fork's page faults are not counted
    // against one method only.
    std::thread::sleep(Duration::from_millis(3) + jitter);
    let t0 = now_ns();
    kill(parent, libc::SIGKILL);
    let (pid, t1) =
        read_result(results_r, Duration::from_secs(30)).expect("the probe was not signalled");
    assert_eq!(pid, child);
    if let Some(w) = watcher {
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(w, std::ptr::null_mut(), 0) };
    }
    reap_all();
    (t1 - t0) as f64 / 1000.0
}

fn main() {
    let rounds = arg("--rounds", 200);
    let requested_pairs = arg("--pairs", 10_000);
    let idle_secs = arg("--idle-secs", 10) as u64;
    let root = root_at_start();
    let mut guard = RunGuard::start();
    let mut raised = false;
    if root {
        let limit = libc::rlimit {
            rlim_cur: 1 << 17,
            rlim_max: 1 << 17,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills one rlimit we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    // tetherd holds two pidfds per binding, plus a few of its own.
    let fd_cap = (limit.rlim_max.saturating_sub(100) / 2) as usize;
    let n_pairs = requested_pairs.min(fd_cap);
    let (results_r, results_w) = pipe();
    // Room for every report of a mass exit without blocking the probes.
    // SAFETY: fcntl on our own pipe.
    unsafe { libc::fcntl(results_w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let (res_r, res_w) = (results_r.as_raw_fd(), results_w.as_raw_fd());

    println!("# tether latency benchmark");
    println!();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    println!(
        "Machine: {} cores, {cpu}, kernel {}. {rounds} rounds, {n_pairs} pairs.{}{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        if root {
            " As root: kernel.pid_max raised to 4194304 for the run and restored at the end."
        } else {
            ""
        },
        if raised {
            " RLIMIT_NOFILE raised to 131072 for the run.".to_owned()
        } else {
            format!(
                " RLIMIT_NOFILE could not be raised above its hard limit of {} here, so the large case uses {n_pairs} bindings (two pidfds each){}.",
                limit.rlim_max,
                if n_pairs < requested_pairs { format!(" instead of {requested_pairs}") } else { String::new() }
            )
        }
    );
    println!("PR_SET_PDEATHSIG is armed with prctl in the probe, as `setpriv --pdeathsig TERM` does before exec.");
    println!();

    let backends = support::usable_backends();
    let poll_rounds = arg("--poll-rounds", 20).min(rounds);
    println!(
        "Backends measured: {}. The poll backend runs at its default 1 s interval, so its rounds are fewer ({poll_rounds}; `--poll-rounds N`) and each waits a pseudo-random 0 to 1 s before the kill.",
        backends.join(", ")
    );
    println!();
    let rounds_of = |b: &str| if b == "poll" { poll_rounds } else { rounds };
    // Poll rounds wait a pseudo-random 0 to 1 s before the kill, so an
    // exit lands anywhere in the timer's interval, as on a real host.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let jitter_of = |b: &str, seed: &mut u64| {
        if b != "poll" {
            return Duration::ZERO;
        }
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        Duration::from_millis((*seed >> 33) % 1000)
    };

    // Phase 1: one binding at a time, the kernel and a watcher process
    // interleaved with every backend's rounds.
    let (mut k1, mut w1) = (Stats::default(), Stats::default());
    let mut t1: Vec<Stats> = Vec::new();
    let mut rss_1: Vec<u64> = Vec::new();
    for backend in &backends {
        let small = Tetherd::start_on(Some(backend), "");
        let mut stream = UnixStream::connect(&small.socket).unwrap();
        rss_1.push(small.usage().0);
        let mut t = Stats::default();
        for _ in 0..rounds_of(backend) {
            k1.add(round(
                Method::Pdeathsig,
                (res_r, res_w),
                None,
                Duration::ZERO,
            ));
            w1.add(round(Method::Watcher, (res_r, res_w), None, Duration::ZERO));
            t.add(round(
                Method::Tetherd,
                (res_r, res_w),
                Some((&small, &mut stream)),
                jitter_of(backend, &mut seed),
            ));
        }
        t1.push(t);
    }

    // Phase 2, per backend: n_pairs bindings loaded from the config file,
    // then idle, then latency rounds, then every parent killed at once.
    let mut k2 = Stats::default();
    let mut big_runs: Vec<BigRun> = Vec::new();
    for backend in &backends {
        let filler: Vec<(i32, i32)> = (0..n_pairs).map(|_| spawn_pair(false, res_w)).collect();
        let load_start = Instant::now();
        let big = Tetherd::start_on(Some(backend), &filler_config(&filler));
        let load_time = load_start.elapsed();
        let mut stream = UnixStream::connect(&big.socket).unwrap();
        // Let the daemon see the start-up status connection close and
        // accept this one before the idle window opens.
        std::thread::sleep(Duration::from_secs(1));
        let (rss, cpu0, vol0, invol0) = big.usage();
        std::thread::sleep(Duration::from_secs(idle_secs));
        let (_, cpu1, vol1, invol1) = big.usage();
        let mut t = Stats::default();
        for _ in 0..rounds_of(backend) {
            k2.add(round(
                Method::Pdeathsig,
                (res_r, res_w),
                None,
                Duration::ZERO,
            ));
            t.add(round(
                Method::Tetherd,
                (res_r, res_w),
                Some((&big, &mut stream)),
                jitter_of(backend, &mut seed),
            ));
        }
        let (mass, seen) = mass_exit(&filler, res_r);
        drop(stream);
        drop(big);
        big_runs.push(BigRun {
            latency: t,
            rss,
            idle_cpu: cpu1 - cpu0,
            idle_vol: vol1 - vol0,
            idle_invol: invol1 - invol0,
            load_time,
            mass,
            seen,
        });
    }
    let kernel_pairs: Vec<(i32, i32)> = (0..n_pairs).map(|_| spawn_pair(true, res_w)).collect();
    let (kernel_mass, kernel_seen) = mass_exit(&kernel_pairs, res_r);

    // One watcher process's own memory, for the per-binding design.
    let (p, c) = spawn_pair(false, res_w);
    let w = spawn_watcher(p, c);
    let smaps = fs::read_to_string(format!("/proc/{w}/smaps_rollup")).unwrap_or_default();
    let kb = |name: &str| -> u64 {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (watcher_rss, watcher_pss) = (kb("Rss:"), kb("Pss:"));
    kill(p, libc::SIGKILL);
    let _ = read_result(res_r, Duration::from_secs(10));
    reap_all();

    guard.restore();

    let row = |name: &str, s: &Stats, k: &Stats| {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            s.samples.len(),
            s.pct(0.0),
            s.pct(0.5),
            s.pct(0.99),
            s.pct(1.0),
            s.pct(0.5) / k.pct(0.5),
            s.pct(0.99) / k.pct(0.99)
        );
    };
    println!("## Latency: parent SIGKILLed to child's SIGTERM (µs)");
    println!();
    println!("| method | rounds | min | median | p99 | max | median / kernel | p99 / kernel |");
    println!("|---|---|---|---|---|---|---|---|");
    row("PR_SET_PDEATHSIG (kernel), phase 1", &k1, &k1);
    row("pidfd watcher process per binding", &w1, &k1);
    for (backend, t) in backends.iter().zip(&t1) {
        row(&format!("tetherd {backend}, 1 binding loaded"), t, &k1);
    }
    row("PR_SET_PDEATHSIG (kernel), phase 2", &k2, &k2);
    for (backend, run) in backends.iter().zip(&big_runs) {
        row(
            &format!("tetherd {backend}, {n_pairs} bindings loaded"),
            &run.latency,
            &k2,
        );
    }
    println!();
    println!("## Cost with {n_pairs} bindings, per backend");
    println!();
    println!("| backend | resident memory | per binding | config load | idle {idle_secs} s: CPU ticks | voluntary / involuntary switches | CPU per second per 1,000 bindings | {n_pairs} parents killed at once: last child | / kernel |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((backend, run), rss1) in backends.iter().zip(&big_runs).zip(&rss_1) {
        let per_binding = run.rss.saturating_sub(*rss1) as f64 * 1024.0 / n_pairs as f64;
        // Ticks are 10 ms (USER_HZ 100).
        let cpu_ms_per_s_per_k =
            run.idle_cpu as f64 * 10.0 / idle_secs as f64 / (n_pairs as f64 / 1000.0);
        println!(
            "| {backend} | {:.2} MiB | {per_binding:.0} B | {:.0} ms | {} | {} / {} | {cpu_ms_per_s_per_k:.2} ms | {:.1} ms ({} signalled, none twice) | {:.2} × |",
            run.rss as f64 / 1024.0,
            run.load_time.as_secs_f64() * 1000.0,
            run.idle_cpu,
            run.idle_vol,
            run.idle_invol,
            run.mass / 1000.0,
            run.seen,
            run.mass / kernel_mass,
        );
    }
    println!();
    println!(
        "The kernel's PR_SET_PDEATHSIG, all {n_pairs} parents killed at once: {:.1} ms to the last child ({kernel_seen} signalled).",
        kernel_mass / 1000.0
    );
    println!();
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!("## Targets (pidfd, the default backend)");
    println!();
    println!("| target | figure | verdict |");
    println!("|---|---|---|");
    if let Some(at) = backends.iter().position(|b| b == "pidfd") {
        let (t1, run, rss1) = (&t1[at], &big_runs[at], rss_1[at]);
        for (name, s, k) in [
            ("1 binding", t1, &k1),
            (&format!("{n_pairs} bindings") as &str, &run.latency, &k2),
        ] {
            let m = s.pct(0.5) / k.pct(0.5);
            let p = s.pct(0.99) / k.pct(0.99);
            println!(
                "| median ≤ 1.5 × kernel, {name} | {m:.2} × | {} |",
                pass(m <= 1.5)
            );
            println!(
                "| p99 ≤ 2 × kernel, {name} | {p:.2} × | {} |",
                pass(p <= 2.0)
            );
        }
        let per_binding = (run.rss.saturating_sub(rss1)) as f64 * 1024.0 / n_pairs as f64;
        println!(
            "| resident memory < 8 MiB with {n_pairs} bindings | {:.2} MiB ({:.0} bytes per binding over the empty daemon's {:.2} MiB) | {} |",
            run.rss as f64 / 1024.0,
            per_binding,
            rss1 as f64 / 1024.0,
            pass(run.rss < 8 * 1024)
        );
        println!(
            "| idle {idle_secs} s: zero CPU, zero voluntary switches | {} ticks, {} voluntary, {} involuntary switches | {} |",
            run.idle_cpu,
            run.idle_vol,
            run.idle_invol,
            pass(run.idle_cpu == 0 && run.idle_vol == 0)
        );
        let ratio = run.mass / kernel_mass;
        println!(
            "| {n_pairs} parents killed at once: last child ≤ 1.5 × kernel | {:.1} ms against {:.1} ms: {ratio:.2} × | {} |",
            run.mass / 1000.0,
            kernel_mass / 1000.0,
            pass(ratio <= 1.5 && run.seen == n_pairs)
        );
    }
    println!();
    println!(
        "A pidfd watcher process per binding: {watcher_rss} KiB RSS, {watcher_pss} KiB PSS each (forked from this benchmark, so sharing its pages; an exec'd watcher costs more), i.e. {:.0} MiB of RSS for {n_pairs} bindings.",
        (watcher_rss * n_pairs as u64) as f64 / 1024.0,
    );
}

/// What phase 2 measured for one backend.
struct BigRun {
    latency: Stats,
    rss: u64,
    idle_cpu: u64,
    idle_vol: u64,
    idle_invol: u64,
    load_time: Duration,
    mass: f64,
    seen: usize,
}
