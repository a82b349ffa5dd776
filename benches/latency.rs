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

use support::{arg, Tetherd};

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Pdeathsig,
    Watcher,
    Tetherd,
}

fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both descriptors were just created for us.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: RawFd, bytes: &[u8]) {
    // SAFETY: a plain write of a buffer we own; short writes do not happen
    // below PIPE_BUF.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of our own buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            return false;
        }
        got += n as usize;
    }
    true
}

/// Runs in a forked probe: wait for SIGTERM, report (pid, time), exit.
fn probe(results: RawFd, ready: RawFd, pdeathsig_parent: Option<i32>) -> ! {
    // SAFETY: only async-signal-safe calls follow, in a freshly forked
    // single-threaded child.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if let Some(parent) = pdeathsig_parent {
            // What `setpriv --pdeathsig TERM` does before exec, with the
            // race check against the parent captured before fork.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            if libc::getppid() != parent {
                libc::_exit(3);
            }
        }
        let me = libc::getpid();
        write_all(ready, &me.to_ne_bytes());
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if sig == libc::SIGTERM {
                let t = now_ns();
                let mut msg = [0u8; 12];
                msg[..4].copy_from_slice(&me.to_ne_bytes());
                msg[4..].copy_from_slice(&t.to_ne_bytes());
                write_all(results, &msg);
                libc::_exit(0);
            }
        }
    }
}

fn fork() -> i32 {
    // SAFETY: the bench is single-threaded, so the child may run Rust code
    // until it execs or exits.
    unsafe { libc::fork() }
}

/// Forks a parent that forks a probe child; returns (parent, child).
fn spawn_pair(method: Method, results: RawFd) -> (i32, i32) {
    let (ready_r, ready_w) = pipe();
    let parent = fork();
    assert!(parent >= 0, "fork");
    if parent == 0 {
        let me = std::process::id() as i32;
        let child = fork();
        if child == 0 {
            let pdeath = (method == Method::Pdeathsig).then_some(me);
            probe(results, ready_w.as_raw_fd(), pdeath);
        }
        loop {
            // SAFETY: pause has no arguments; the parent waits for SIGKILL.
            unsafe { libc::pause() };
        }
    }
    drop(ready_w);
    let mut buf = [0u8; 4];
    assert!(
        read_exact(ready_r.as_raw_fd(), &mut buf),
        "probe did not start"
    );
    (parent, i32::from_ne_bytes(buf))
}

/// Forks a pidfd watcher for one pair: the one-process-per-binding design.
fn spawn_watcher(parent: i32, child: i32) -> i32 {
    let (ready_r, ready_w) = pipe();
    let pid = fork();
    if pid == 0 {
        // SAFETY: raw syscalls on descriptors this child owns.
        unsafe {
            let pfd = libc::syscall(libc::SYS_pidfd_open, parent, 0) as i32;
            let cfd = libc::syscall(libc::SYS_pidfd_open, child, 0) as i32;
            write_all(ready_w.as_raw_fd(), &[1]);
            let mut pollfd = libc::pollfd {
                fd: pfd,
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut pollfd, 1, -1);
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                cfd,
                libc::SIGTERM,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            libc::_exit(0);
        }
    }
    drop(ready_w);
    let mut buf = [0u8; 1];
    assert!(
        read_exact(ready_r.as_raw_fd(), &mut buf),
        "watcher did not start"
    );
    pid
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill takes two integers.
    unsafe { libc::kill(pid, sig) };
}

fn reap_all() {
    // SAFETY: waitpid with a null status pointer on any child.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Reads one (pid, time) report, with a timeout.
fn read_result(results: RawFd, timeout: Duration) -> Option<(i32, i64)> {
    let mut pollfd = libc::pollfd {
        fd: results,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we own.
    let n = unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return None;
    }
    let mut msg = [0u8; 12];
    read_exact(results, &mut msg).then(|| {
        (
            i32::from_ne_bytes(msg[..4].try_into().unwrap()),
            i64::from_ne_bytes(msg[4..].try_into().unwrap()),
        )
    })
}

impl Tetherd {
    fn bind(&self, stream: &mut UnixStream, parent: i32, child: i32) {
        let line = format!("{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{parent}}},\"children\":[{{\"pid\":{child}}}]}}\n");
        stream.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&*stream).read_line(&mut answer).unwrap();
        assert!(answer.contains("\"ok\":true"), "{answer}");
    }

    /// (VmRSS kB, utime+stime ticks, voluntary, involuntary switches).
    fn usage(&self) -> (u64, u64, u64, u64) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cpu = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        (
            field("VmRSS:"),
            cpu,
            field("voluntary_ctxt_switches:"),
            field("nonvoluntary_ctxt_switches:"),
        )
    }
}

fn root_at_start() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// `[[binding]]` tables for `pairs`.
fn filler_config(pairs: &[(i32, i32)]) -> String {
    pairs
        .iter()
        .map(|(p, c)| format!("[[binding]]\nparent = {p}\nchild = {c}\n"))
        .collect()
}

#[derive(Default)]
struct Stats {
    samples: Vec<f64>,
}

impl Stats {
    fn add(&mut self, us: f64) {
        self.samples.push(us);
    }
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    }
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
    let (parent, child) = spawn_pair(method, results_w);
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

/// Kills every parent at once; returns µs from the first kill to the last
/// child's signal, and how many children reported (each at most once).
fn mass_exit(pairs: &[(i32, i32)], results: RawFd) -> (f64, usize) {
    let children: HashSet<i32> = pairs.iter().map(|p| p.1).collect();
    let t0 = now_ns();
    for (p, _) in pairs {
        kill(*p, libc::SIGKILL);
    }
    let mut seen = HashSet::new();
    let mut last = t0;
    while seen.len() < pairs.len() {
        let Some((pid, t)) = read_result(results, Duration::from_secs(30)) else {
            break;
        };
        assert!(children.contains(&pid), "report from an unknown pid {pid}");
        assert!(seen.insert(pid), "pid {pid} was signalled twice");
        last = last.max(t);
    }
    reap_all();
    ((last - t0) as f64 / 1000.0, seen.len())
}

fn main() {
    let rounds = arg("--rounds", 200);
    let requested_pairs = arg("--pairs", 10_000);
    let idle_secs = arg("--idle-secs", 10) as u64;
    // SAFETY: geteuid has no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    // Orphaned probes come back to us, so nothing is left behind.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let old_pid_max = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default();
    // Everything forked here shares our process group; if the run fails,
    // the panic hook puts pid_max back and kills the whole group, so no
    // probe outlives the benchmark.
    // SAFETY: setpgid on ourselves.
    unsafe { libc::setpgid(0, 0) };
    let restore = old_pid_max.trim().to_owned();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if root_at_start() {
            let _ = fs::write("/proc/sys/kernel/pid_max", &restore);
        }
        // SAFETY: signals our own process group, ourselves included.
        unsafe { libc::kill(0, libc::SIGKILL) };
    }));
    let mut raised = false;
    if root {
        let limit = libc::rlimit {
            rlim_cur: 1 << 17,
            rlim_max: 1 << 17,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
        let _ = fs::write("/proc/sys/kernel/pid_max", "4194304");
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
        let filler: Vec<(i32, i32)> = (0..n_pairs)
            .map(|_| spawn_pair(Method::Tetherd, res_w))
            .collect();
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
    let kernel_pairs: Vec<(i32, i32)> = (0..n_pairs)
        .map(|_| spawn_pair(Method::Pdeathsig, res_w))
        .collect();
    let (kernel_mass, kernel_seen) = mass_exit(&kernel_pairs, res_r);

    // One watcher process's own memory, for the per-binding design.
    let (p, c) = spawn_pair(Method::Tetherd, res_w);
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

    if root {
        let _ = fs::write("/proc/sys/kernel/pid_max", old_pid_max.trim());
    }

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
