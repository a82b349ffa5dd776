//! The proof: tetherd against what users would pick instead, at every
//! scale, in one command. As root:
//!
//! ```sh
//! cargo bench --bench proof [-- --rounds 200 --slow-rounds 20 --idle-secs 60
//!                              --scales 1,1000,10000,50000 --out docs/bench]
//! ```
//!
//! 1. Latency, parent SIGKILLed to the child's signal, side by side: the
//!    kernel's PR_SET_PDEATHSIG, a pidfd watcher process per binding, a
//!    polling watcher (`tail --pid`), nbdkit's `--exit-with-parent` where
//!    nbdkit is installed, and tetherd through a config binding, a socket
//!    binding and `tetherctl exec`.
//! 2. Scale: 1, 1,000, 10,000 and 50,000 bindings: tetherd's memory and
//!    per-binding cost against a watcher process per binding, config load
//!    time, and all parents killed at once to all children signalled.
//! 3. Idle: CPU time and context switches over 60 idle seconds at 10,000.
//! 4. Output: Markdown on stdout and in OUT/results.md, and SVG plots in
//!    OUT/latency.svg and OUT/memory.svg, drawn by this program.
//!
//! kernel.pid_max is raised for the run and restored; RLIMIT_NOFILE is
//! raised as far as the hard limit allows, and the pidfd backend is
//! skipped at a scale beyond it (the netlink backend holds no descriptor
//! per process and covers it).

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

use std::fmt::Write as _;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::probe::*;
use support::{arg, usable_backends, Tetherd};

const TETHERCTL: &str = env!("CARGO_BIN_EXE_tetherctl");
/// Where `tetherctl exec`'s probe finds its pipes after exec.
const EXEC_RESULTS_FD: RawFd = 10;
const EXEC_READY_FD: RawFd = 11;

/// A pseudo-random pause (0 to 1 s) for methods that poll once a second,
/// so that kills land anywhere in their period.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        Duration::from_millis((self.0 >> 33) % 1000)
    }
}

/// Kills `parent` after the common 3 ms pause (plus `extra`) and waits for
/// the probe `child`'s report; returns the delay in µs.
fn measure(what: &str, parent: i32, child: i32, results: RawFd, extra: Duration) -> f64 {
    std::thread::sleep(Duration::from_millis(3) + extra);
    let t0 = now_ns();
    kill(parent, libc::SIGKILL);
    // Reap the parent at once, as its own parent would: a zombie still
    // answers kill(pid, 0), which is all `tail --pid` asks.
    // SAFETY: waitpid on our own child, with no status wanted.
    unsafe { libc::waitpid(parent, std::ptr::null_mut(), 0) };
    let Some((pid, t1)) = read_result(results, Duration::from_secs(30)) else {
        panic!(
            "{what}: probe {child} was not signalled in 30 s after its parent {parent} was killed"
        );
    };
    assert_eq!(pid, child);
    reap_all();
    (t1 - t0) as f64 / 1000.0
}

/// A polling watcher, as `tail --pid` (or libguestfs's recovery loop):
/// checks the parent once a second, then signals the child.
fn spawn_tail_watcher(parent: i32, child: i32) -> std::process::Child {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tail --pid={parent} -f /dev/null; kill -TERM {child}"
        ))
        .spawn()
        .unwrap()
}

/// The exec'd probe of `tetherctl exec`: this same binary, run with
/// `--probe-exec`. SIGTERM is already blocked (the mask survives exec).
fn exec_probe() -> ! {
    // SAFETY: plain system calls on descriptors inherited for this use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let me = libc::getpid();
        libc::write(EXEC_READY_FD, me.to_ne_bytes().as_ptr().cast(), 4);
        loop {
            if libc::sigwaitinfo(&set, std::ptr::null_mut()) == libc::SIGTERM {
                let t = now_ns();
                let mut msg = [0u8; 12];
                msg[..4].copy_from_slice(&me.to_ne_bytes());
                msg[4..].copy_from_slice(&t.to_ne_bytes());
                libc::write(EXEC_RESULTS_FD, msg.as_ptr().cast(), 12);
                libc::_exit(0);
            }
        }
    }
}

/// A parent whose child runs `tetherctl exec -- <this binary> --probe-exec`;
/// returns (parent, probe) once the probe runs (so the binding is made).
fn spawn_exec_pair(socket: &Path, results: RawFd) -> (i32, i32) {
    let (ready_r, ready_w) = pipe();
    let exe = std::env::current_exe().unwrap();
    let args: Vec<std::ffi::CString> = [
        TETHERCTL,
        "--socket",
        socket.to_str().unwrap(),
        "exec",
        "--",
        exe.to_str().unwrap(),
        "--probe-exec",
    ]
    .iter()
    .map(|a| std::ffi::CString::new(*a).unwrap())
    .collect();
    let ready_raw = ready_w.as_raw_fd();
    let parent = fork_parent(|| {
        if fork() == 0 {
            let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            // SAFETY: in a freshly forked child: block SIGTERM (inherited
            // through both execs), move the pipes to the fixed numbers
            // (dup2 clears close-on-exec), exec.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                libc::dup2(results, EXEC_RESULTS_FD);
                libc::dup2(ready_raw, EXEC_READY_FD);
                libc::execv(argv[0], argv.as_ptr());
                libc::_exit(127);
            }
        }
    });
    drop(ready_w);
    let mut buf = [0u8; 4];
    assert!(
        read_exact(ready_r.as_raw_fd(), &mut buf),
        "the exec'd probe did not start"
    );
    (parent, i32::from_ne_bytes(buf))
}

/// nbdkit started by a parent with `--exit-with-parent`: returns the delay
/// from the parent's SIGKILL to nbdkit's exit (seen through a pidfd), in
/// µs. That includes nbdkit's own shutdown, which a probe cannot see.
fn nbdkit_round(dir: &Path, round: usize) -> Option<f64> {
    let sock = dir.join(format!("nbd{round}.sock"));
    let (pid_r, pid_w) = pipe();
    let parent = fork_parent(|| {
        let child = std::process::Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .arg("null")
            .spawn();
        if let Ok(child) = child {
            write_all(pid_w.as_raw_fd(), &(child.id() as i32).to_ne_bytes());
        }
    });
    drop(pid_w);
    let mut buf = [0u8; 4];
    if !read_exact(pid_r.as_raw_fd(), &mut buf) {
        kill(parent, libc::SIGKILL);
        return None;
    }
    let nbd = i32::from_ne_bytes(buf);
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: pidfd_open takes two integers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, nbd, 0) } as i32;
    std::thread::sleep(Duration::from_millis(3));
    let t0 = now_ns();
    kill(parent, libc::SIGKILL);
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we own.
    unsafe { libc::poll(&mut pfd, 1, 30_000) };
    let t1 = now_ns();
    // SAFETY: closing the pidfd we opened.
    unsafe { libc::close(pidfd) };
    // nbdkit is not our child (its parent was): nothing to reap but that.
    reap_all();
    Some((t1 - t0) as f64 / 1000.0)
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: i32) -> u64 {
    proc_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Pss of a process in KiB.
fn pss_kib(pid: i32) -> u64 {
    proc_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// MemAvailable in KiB.
fn mem_available_kib() -> u64 {
    proc_field("/proc/meminfo", "MemAvailable:")
}

/// One row of the scale table.
struct ScaleRow {
    n: usize,
    backend: String,
    rss_kib: u64,
    per_binding: f64,
    load: Duration,
    mass_ms: f64,
    seen: usize,
    kernel_mass_ms: f64,
}

fn main() {
    if std::env::args().any(|a| a == "--probe-exec") {
        exec_probe();
    }
    let rounds = arg("--rounds", 200);
    let slow_rounds = arg("--slow-rounds", 20);
    let idle_secs = arg("--idle-secs", 60) as u64;
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let scales: Vec<usize> = value("--scales")
        .unwrap_or_else(|| "1,1000,10000,50000".into())
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let out_dir = PathBuf::from(value("--out").unwrap_or_else(|| "docs/bench".into()));
    let root = root_at_start();
    let mut guard = RunGuard::start();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on one rlimit we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let pidfd_cap = (limit.rlim_max.saturating_sub(100) / 2) as usize;
    let (results_r, results_w) = pipe();
    // SAFETY: fcntl on our own pipe: room for a mass exit's reports.
    unsafe { libc::fcntl(results_w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let (res_r, res_w) = (results_r.as_raw_fd(), results_w.as_raw_fd());
    let backends = usable_backends();
    let work = tempfile::tempdir().unwrap();

    let mut md = String::new();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    writeln!(md, "# tether: the proof benchmark\n").unwrap();
    writeln!(
        md,
        "Machine: {} cores, {cpu}, Linux {}. `cargo bench --bench proof` as {}. kernel.pid_max raised to 4194304 for the run and restored; RLIMIT_NOFILE {} (so the pidfd backend holds at most {pidfd_cap} bindings here; larger scales use the netlink backend, which holds no descriptor per process).\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel.trim(),
        if root { "root" } else { "an ordinary user" },
        limit.rlim_max,
    )
    .unwrap();

    // 1. Latency.
    eprintln!("latency...");
    let sock_daemon = Tetherd::start("");
    let mut sock_stream = UnixStream::connect(&sock_daemon.socket).unwrap();
    let cfg_daemon = Tetherd::start("");
    let exec_daemon = Tetherd::start("");
    let have_nbdkit = on_path("nbdkit");
    let have_tail = on_path("tail");
    let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15);
    let names = [
        "PR_SET_PDEATHSIG (kernel)",
        "pidfd watcher process per binding",
        "polling watcher (tail --pid, 1 s)",
        "nbdkit --exit-with-parent (until it exits)",
        "tetherd, config binding",
        "tetherd, socket binding",
        "tetherd, tetherctl exec",
    ];
    let mut stats: Vec<Stats> = names.iter().map(|_| Stats::default()).collect();
    for r in 0..rounds {
        let (p, c) = spawn_pair(true, res_w);
        stats[0].add(measure(names[0], p, c, res_r, Duration::ZERO));
        let (p, c) = spawn_pair(false, res_w);
        let w = spawn_watcher(p, c);
        stats[1].add(measure(names[1], p, c, res_r, Duration::ZERO));
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(w, std::ptr::null_mut(), 0) };
        if r < slow_rounds && have_tail {
            let (p, c) = spawn_pair(false, res_w);
            let mut t = spawn_tail_watcher(p, c);
            std::thread::sleep(Duration::from_millis(50));
            stats[2].add(measure(names[2], p, c, res_r, jitter.next()));
            let _ = t.wait();
        }
        if r < slow_rounds && have_nbdkit {
            if let Some(us) = nbdkit_round(work.path(), r) {
                stats[3].add(us);
            }
        }
        let (p, c) = spawn_pair(false, res_w);
        cfg_daemon.reload_with(&format!("[[binding]]\nparent = {p}\nchild = {c}\n"));
        stats[4].add(measure(names[4], p, c, res_r, Duration::ZERO));
        let (p, c) = spawn_pair(false, res_w);
        sock_daemon.bind(&mut sock_stream, p, c);
        stats[5].add(measure(names[5], p, c, res_r, Duration::ZERO));
        let (p, c) = spawn_exec_pair(&exec_daemon.socket, res_w);
        stats[6].add(measure(names[6], p, c, res_r, Duration::ZERO));
    }
    drop(sock_stream);
    drop((sock_daemon, cfg_daemon, exec_daemon));
    writeln!(
        md,
        "## Latency: parent SIGKILLed to the child's signal (µs)\n"
    )
    .unwrap();
    writeln!(
        md,
        "| method | rounds | min | median | p99 | max | median / kernel | p99 / kernel |\n|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    let kernel_stats = &stats[0];
    for (name, s) in names.iter().zip(&stats) {
        if s.samples.is_empty() {
            let why = if name.starts_with("nbdkit") {
                "nbdkit is not installed"
            } else {
                "tail is not installed"
            };
            writeln!(md, "| {name} | 0 | skipped: {why} | | | | | |").unwrap();
            continue;
        }
        writeln!(
            md,
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            s.samples.len(),
            s.pct(0.0),
            s.pct(0.5),
            s.pct(0.99),
            s.pct(1.0),
            s.pct(0.5) / kernel_stats.pct(0.5),
            s.pct(0.99) / kernel_stats.pct(0.99)
        )
        .unwrap();
    }
    writeln!(md, "\nThe polling watcher's and nbdkit's rounds are fewer ({slow_rounds}); the polling watcher's kills land at a pseudo-random point of its 1 s period. nbdkit's figure is the time until the nbdkit process has exited (seen through a pidfd), which includes its own shutdown, not just the signal's arrival.\n").unwrap();

    // 2. Scale.
    eprintln!("scale...");
    // One watcher process's memory, measured on 1,000 of them (they share
    // pages through fork, so PSS is the fair per-process figure).
    let sample = scales
        .iter()
        .copied()
        .filter(|&n| n <= 1000)
        .max()
        .unwrap_or(1)
        .max(1);
    let pairs: Vec<(i32, i32)> = (0..sample).map(|_| spawn_pair(false, res_w)).collect();
    let before = mem_available_kib();
    let watchers: Vec<i32> = pairs.iter().map(|&(p, c)| spawn_watcher(p, c)).collect();
    // What the host gives up per watcher, kernel side included (its stack,
    // task and page tables, which PSS does not count).
    let watcher_kib = before.saturating_sub(mem_available_kib()) / sample as u64;
    let watcher_pss: u64 = watchers.iter().map(|&w| pss_kib(w)).sum::<u64>() / sample as u64;
    let watcher_rss: u64 = watchers.iter().map(|&w| rss_kib(w)).sum::<u64>() / sample as u64;
    for &(p, _) in &pairs {
        kill(p, libc::SIGKILL);
    }
    for _ in 0..sample {
        let _ = read_result(res_r, Duration::from_secs(30));
    }
    reap_all();
    let mut rows: Vec<ScaleRow> = Vec::new();
    // (backend, bindings, CPU ticks, voluntary, involuntary switches)
    let mut idle: Vec<(String, usize, u64, u64, u64)> = Vec::new();
    let mut per_process_kib: u64 = 256;
    let mut skipped: Vec<String> = Vec::new();
    for &scale in &scales {
        for backend in backends.iter().filter(|b| *b == "pidfd" || *b == "netlink") {
            // The pidfd backend holds two descriptors per binding: a scale
            // just past the descriptor limit runs at the limit (and says
            // so); one far past it is left to the netlink backend.
            let n = if backend == "pidfd" && scale > pidfd_cap {
                if scale > pidfd_cap + pidfd_cap / 10 {
                    eprintln!("scale {scale}: pidfd skipped (descriptor limit {pidfd_cap})");
                    continue;
                }
                pidfd_cap
            } else {
                scale
            };
            // Each scale's processes (two per binding) must fit in memory
            // with room to spare; the cost per process is measured on the
            // scales before (256 KiB is assumed until then).
            let need = 2 * n as u64 * per_process_kib;
            let available = mem_available_kib();
            if need > available / 10 * 8 {
                eprintln!(
                    "scale {n}: skipped, {need} KiB of processes would not fit in {available} KiB"
                );
                skipped.push(format!("{n} bindings ({backend}): two processes per binding at {per_process_kib} KiB each would not fit in {} MiB available", available / 1024));
                continue;
            }
            eprintln!("scale {n}, kernel...");
            let before = mem_available_kib();
            let kernel_pairs: Vec<(i32, i32)> = (0..n).map(|_| spawn_pair(true, res_w)).collect();
            if n >= 1000 {
                let used = before.saturating_sub(mem_available_kib());
                per_process_kib = (used / (2 * n as u64)).max(16);
            }
            let (kernel_mass, kernel_seen) = mass_exit(&kernel_pairs, res_r);
            assert_eq!(kernel_seen, n, "the kernel missed children");
            drop(kernel_pairs);
            eprintln!("scale {n}, {backend}...");
            let filler: Vec<(i32, i32)> = (0..n).map(|_| spawn_pair(false, res_w)).collect();
            let empty = Tetherd::start_on(Some(backend), "");
            let rss_empty = rss_kib(empty.pid());
            drop(empty);
            let t = Instant::now();
            let daemon = Tetherd::start_on(Some(backend), &filler_config(&filler));
            let load = t.elapsed();
            std::thread::sleep(Duration::from_millis(500));
            let rss = rss_kib(daemon.pid());
            if (9_000..=10_000).contains(&n) {
                eprintln!("idle {idle_secs} s ({backend}, {n} bindings)...");
                let (_, c0, v0, i0) = usage(daemon.pid());
                std::thread::sleep(Duration::from_secs(idle_secs));
                let (_, c1, v1, i1) = usage(daemon.pid());
                idle.push((backend.clone(), n, c1 - c0, v1 - v0, i1 - i0));
            }
            let (mass, seen) = mass_exit(&filler, res_r);
            drop(daemon);
            rows.push(ScaleRow {
                n,
                backend: backend.clone(),
                rss_kib: rss,
                per_binding: rss.saturating_sub(rss_empty) as f64 * 1024.0 / n as f64,
                load,
                mass_ms: mass / 1000.0,
                seen,
                kernel_mass_ms: kernel_mass / 1000.0,
            });
        }
    }
    writeln!(md, "## Scale\n").unwrap();
    writeln!(md, "| bindings | backend | tetherd resident | per binding | a watcher process per binding | config load | all parents killed: last child | kernel (PR_SET_PDEATHSIG) | ratio |\n|---|---|---|---|---|---|---|---|---|").unwrap();
    for row in &rows {
        writeln!(
            md,
            "| {} | {} | {:.2} MiB | {} | {:.1} MiB | {:.0} ms | {:.1} ms ({} of {} signalled) | {:.1} ms | {:.2} × |",
            row.n,
            row.backend,
            row.rss_kib as f64 / 1024.0,
            // Below 1,000 the difference is allocator noise.
            if row.n >= 1000 {
                format!("{:.0} B", row.per_binding)
            } else {
                "–".to_owned()
            },
            (watcher_kib * row.n as u64) as f64 / 1024.0,
            row.load.as_secs_f64() * 1000.0,
            row.mass_ms,
            row.seen,
            row.n,
            row.kernel_mass_ms,
            row.mass_ms / row.kernel_mass_ms.max(0.001),
        )
        .unwrap();
    }
    writeln!(md, "\nA watcher process per binding: {watcher_kib} KiB each, the drop in MemAvailable over {sample} of them (kernel stack, task and page tables included), multiplied by the bindings; their PSS alone is {watcher_pss} KiB and their RSS {watcher_rss} KiB. They are forked from this benchmark and share its pages, so an exec'd watcher costs more. tetherd's figure is its resident memory; the kernel's share of its pidfds is not counted.\n").unwrap();
    for why in &skipped {
        writeln!(md, "Skipped: {why}.\n").unwrap();
    }
    writeln!(
        md,
        "Memory per forked process, measured as MemAvailable's drop: {per_process_kib} KiB.\n"
    )
    .unwrap();
    if !idle.is_empty() {
        writeln!(md, "## Idle\n\n{idle_secs} s with nothing happening (ticks are 10 ms of CPU time):\n\n| backend | bindings | CPU ticks | voluntary switches | involuntary switches |\n|---|---|---|---|---|").unwrap();
        for (backend, n, cpu, vol, invol) in &idle {
            writeln!(md, "| {backend} | {n} | {cpu} | {vol} | {invol} |").unwrap();
        }
        writeln!(md, "\nThe netlink backend has no timer either, but the kernel's process connector cannot subscribe to chosen pids: its socket filter passes exit events only, and every process that exits anywhere on the host wakes tetherd once. Any switches it shows above are other processes' exits on this host in those {idle_secs} s.\n").unwrap();
    }
    guard.restore();

    // 4. Output.
    fs::create_dir_all(&out_dir).unwrap();
    let latency: Vec<(&str, &Stats)> = names
        .iter()
        .zip(&stats)
        .filter(|(_, s)| !s.samples.is_empty())
        .map(|(n, s)| (*n, s))
        .collect();
    fs::write(out_dir.join("latency.svg"), latency_svg(&latency)).unwrap();
    fs::write(out_dir.join("memory.svg"), memory_svg(&rows, watcher_kib)).unwrap();
    writeln!(md, "Plots: [latency](latency.svg), [memory](memory.svg).").unwrap();
    fs::write(out_dir.join("results.md"), &md).unwrap();
    print!("{md}");
}

/// x position of `v` on a log scale from `lo` to `hi` over `width` px.
fn log_x(v: f64, lo: f64, hi: f64, x0: f64, width: f64) -> f64 {
    let v = v.clamp(lo, hi);
    x0 + (v.ln() - lo.ln()) / (hi.ln() - lo.ln()) * width
}

fn svg_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Box plots on a log axis: whiskers min..p99, box p25..p75, a bar at the
/// median, a dot at the max.
fn latency_svg(methods: &[(&str, &Stats)]) -> String {
    let (lo, hi) = (10.0, 2_000_000.0);
    let (x0, width, row) = (300.0, 560.0, 36.0);
    let height = 70.0 + row * methods.len() as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="450" y="20" text-anchor="middle" font-size="14">Parent SIGKILLed to child's signal (µs, log scale)</text>
"#
    );
    let mut tick = lo;
    while tick <= hi {
        let x = log_x(tick, lo, hi, x0, width);
        let label = if tick >= 1e6 {
            format!("{}s", tick / 1e6)
        } else if tick >= 1e3 {
            format!("{}ms", tick / 1e3)
        } else {
            format!("{tick}µs")
        };
        writeln!(
            s,
            r##"<line x1="{x:.1}" y1="35" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            height - 25.0,
            height - 10.0
        )
        .unwrap();
        tick *= 10.0;
    }
    for (i, (name, st)) in methods.iter().enumerate() {
        let y = 50.0 + row * i as f64;
        let x = |p: f64| log_x(st.pct(p), lo, hi, x0, width);
        writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>
<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>
<rect x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="#8cb4e0" stroke="#333"/>
<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#c00" stroke-width="2"/>
<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#333"/>"##,
            x0 - 8.0,
            y + 4.0,
            svg_escape(name),
            x(0.0),
            y,
            x(0.99),
            y,
            x(0.25),
            y - 8.0,
            (x(0.75) - x(0.25)).max(1.0),
            x(0.5),
            y - 9.0,
            x(0.5),
            y + 9.0,
            x(1.0),
            y
        )
        .unwrap();
    }
    s.push_str("</svg>\n");
    s
}

/// Resident memory against bindings, log-log: tetherd per backend, and a
/// watcher process per binding.
fn memory_svg(rows: &[ScaleRow], watcher_kib: u64) -> String {
    let (x0, width, y0, height) = (80.0, 520.0, 40.0, 300.0);
    let (nlo, nhi) = (1.0, 100_000.0);
    let (mlo, mhi) = (0.1, 100_000.0); // MiB
    let px = |n: f64| log_x(n, nlo, nhi, x0, width);
    let py = |mib: f64| y0 + height - (log_x(mib, mlo, mhi, 0.0, height));
    let mut s = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="860" height="400" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="340" y="22" text-anchor="middle" font-size="14">Resident memory (MiB) against bindings, log-log</text>
"#,
    );
    for exp in -1..=5 {
        let v = 10f64.powi(exp);
        let label = if exp < 0 {
            "0.1".to_owned()
        } else {
            format!("{v}")
        };
        if exp >= 0 {
            writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                y0 + height,
                y0 + height + 16.0,
                x = px(v),
            )
            .unwrap();
        }
        writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            x0 + width,
            x0 - 6.0,
            py(v) + 4.0,
            y = py(v),
        )
        .unwrap();
    }
    let series = |s: &mut String, points: &[(f64, f64)], colour: &str, label: &str, k: usize| {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points
            .iter()
            .map(|&(n, m)| format!("{:.1},{:.1}", px(n), py(m)))
            .collect();
        writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        )
        .unwrap();
        for &(n, m) in points {
            writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(n),
                py(m)
            )
            .unwrap();
        }
        let ly = y0 + 14.0 + 18.0 * k as f64;
        writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="4" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x0 + width + 10.0,
            ly - 4.0,
            x0 + width + 26.0,
            ly,
            svg_escape(label)
        )
        .unwrap();
    };
    let colours = ["#1f77b4", "#2ca02c", "#9467bd"];
    let mut k = 0;
    let mut backends: Vec<&str> = Vec::new();
    for row in rows {
        if !backends.contains(&row.backend.as_str()) {
            backends.push(&row.backend);
        }
    }
    for (i, b) in backends.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.backend == *b)
            .map(|r| (r.n as f64, r.rss_kib as f64 / 1024.0))
            .collect();
        series(
            &mut s,
            &pts,
            colours[i % colours.len()],
            &format!("tetherd ({b})"),
            k,
        );
        k += 1;
    }
    let mut ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let watcher: Vec<(f64, f64)> = ns
        .iter()
        .map(|&n| (n as f64, (watcher_kib * n as u64) as f64 / 1024.0))
        .collect();
    series(
        &mut s,
        &watcher,
        "#d62728",
        "a watcher process per binding",
        k,
    );
    s.push_str("</svg>\n");
    s
}
