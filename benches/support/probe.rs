//! What the latency and proof benchmarks share: probes that timestamp
//! the signal they get, parent/probe pairs, one-process watchers, and
//! percentiles.
//!
//! Every measured child is a probe forked by the benchmark: it blocks
//! SIGTERM, waits for it with sigwaitinfo, reads CLOCK_MONOTONIC and writes
//! (pid, time) to a pipe.

#![allow(
    dead_code,
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

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::Tetherd;

pub fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both descriptors were just created for us.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn write_all(fd: RawFd, bytes: &[u8]) {
    // SAFETY: a plain write of a buffer we own; short writes do not happen
    // below PIPE_BUF.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

pub fn read_exact(fd: RawFd, buf: &mut [u8]) -> bool {
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
pub fn probe(results: RawFd, ready: RawFd, pdeathsig_parent: Option<i32>) -> ! {
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

pub fn fork() -> i32 {
    // SAFETY: the bench is single-threaded, so the child may run Rust code
    // until it execs or exits.
    unsafe { libc::fork() }
}

/// Forks a parent that forks a probe child; returns (parent, child).
pub fn spawn_pair(pdeathsig: bool, results: RawFd) -> (i32, i32) {
    let (ready_r, ready_w) = pipe();
    let parent = fork_parent(|| {
        let me = std::process::id() as i32;
        if fork() == 0 {
            probe(results, ready_w.as_raw_fd(), pdeathsig.then_some(me));
        }
    });
    drop(ready_w);
    let mut buf = [0u8; 4];
    assert!(
        read_exact(ready_r.as_raw_fd(), &mut buf),
        "probe did not start"
    );
    (parent, i32::from_ne_bytes(buf))
}

/// Forks a pidfd watcher for one pair: the one-process-per-binding design.
pub fn spawn_watcher(parent: i32, child: i32) -> i32 {
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

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill takes two integers.
    unsafe { libc::kill(pid, sig) };
}

pub fn reap_all() {
    // SAFETY: waitpid with a null status pointer on any child.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Reads one (pid, time) report, with a timeout.
pub fn read_result(results: RawFd, timeout: Duration) -> Option<(i32, i64)> {
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
    pub fn bind(&self, stream: &mut UnixStream, parent: i32, child: i32) {
        let line = format!("{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{parent}}},\"children\":[{{\"pid\":{child}}}]}}\n");
        stream.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&*stream).read_line(&mut answer).unwrap();
        assert!(answer.contains("\"ok\":true"), "{answer}");
    }

    /// (VmRSS kB, utime+stime ticks, voluntary, involuntary switches).
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        usage(self.pid())
    }
}

/// The first number on the line of `path` that starts with `key` (as
/// "VmRSS:" in /proc/PID/status), or 0.
pub fn proc_field(path: &str, key: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (VmRSS kB, utime+stime ticks, voluntary, involuntary switches) of `pid`.
pub fn usage(pid: i32) -> (u64, u64, u64, u64) {
    let status = format!("/proc/{pid}/status");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        proc_field(&status, "VmRSS:"),
        tick(11) + tick(12),
        proc_field(&status, "voluntary_ctxt_switches:"),
        proc_field(&status, "nonvoluntary_ctxt_switches:"),
    )
}

/// Forks a process that runs `then` (which must not return into the
/// benchmark's code: it forks, execs or spawns) and waits for SIGKILL.
pub fn fork_parent(then: impl FnOnce()) -> i32 {
    let pid = fork();
    assert!(pid >= 0, "fork");
    if pid == 0 {
        then();
        loop {
            // SAFETY: pause has no arguments; the parent waits for SIGKILL.
            unsafe { libc::pause() };
        }
    }
    pid
}

/// The set-up both process benchmarks share. Orphaned probes come back to
/// us (subreaper), everything forked shares our process group, and as root
/// kernel.pid_max is raised to 4194304. A panic puts pid_max back and kills
/// the whole group, so no probe outlives a failed run; `restore` (or the
/// drop) puts pid_max back after a good one.
pub struct RunGuard {
    old_pid_max: Option<String>,
}

impl RunGuard {
    pub fn start() -> RunGuard {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        // SAFETY: setpgid on ourselves.
        unsafe { libc::setpgid(0, 0) };
        let old = fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|_| root_at_start());
        let restore = old.clone();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            if let Some(old) = &restore {
                let _ = fs::write("/proc/sys/kernel/pid_max", old);
            }
            // SAFETY: signals our own process group, ourselves included.
            unsafe { libc::kill(0, libc::SIGKILL) };
        }));
        if old.is_some() {
            let _ = fs::write("/proc/sys/kernel/pid_max", "4194304");
        }
        RunGuard { old_pid_max: old }
    }

    /// Puts kernel.pid_max back (once the big scales are done).
    pub fn restore(&mut self) {
        if let Some(old) = self.old_pid_max.take() {
            let _ = fs::write("/proc/sys/kernel/pid_max", old);
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

pub fn root_at_start() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// `[[binding]]` tables for `pairs`.
pub fn filler_config(pairs: &[(i32, i32)]) -> String {
    pairs
        .iter()
        .map(|(p, c)| format!("[[binding]]\nparent = {p}\nchild = {c}\n"))
        .collect()
}

#[derive(Default)]
pub struct Stats {
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn add(&mut self, us: f64) {
        self.samples.push(us);
    }
    pub fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// Kills every parent at once; returns µs from the first kill to the last
/// child's signal, and how many children reported (each at most once).
pub fn mass_exit(pairs: &[(i32, i32)], results: RawFd) -> (f64, usize) {
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
