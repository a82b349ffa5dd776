//! Parent-death figures: how fast tetherd signals a child after its parent
//! is SIGKILLed, compared side by side in the same run with the kernel's own
//! `PR_SET_PDEATHSIG` and with a dedicated pidfd watcher process per
//! binding; tetherd's memory with 1 and with 10,000 bindings; its CPU time
//! and context switches while idle; and a mass exit of 10,000 parents.
//!
//! Run with `cargo bench --bench pdeath [-- --rounds N --pairs N
//! --idle-secs N --watchers N --log LEVEL --quick]`. Best run as root: it
//! raises `kernel.pid_max` (restored at the end) and `RLIMIT_NOFILE` for the
//! 10,000-binding daemon. docs/performance.md explains every figure.
//!
//! A "pair" is a parent P forked by the bench and a probe child C forked by
//! P. The probe blocks SIGTERM and waits for it in `sigtimedwait`; when it
//! arrives it reads CLOCK_MONOTONIC and writes its pid, the sender's pid and
//! the time in one 16-byte write to a pipe shared by all probes. The delay
//! of a round is that time minus CLOCK_MONOTONIC read right before
//! `kill(P, SIGKILL)`. The bench is a child subreaper, so orphaned probes
//! come back to it and are reaped.
//!
//! Methods, interleaved round by round: `PR_SET_PDEATHSIG` armed by the
//! probe; a forked pidfd watcher process for the pair; a fresh tetherd with
//! the pair as its only binding; and one tetherd loaded with 10,000 filler
//! pairs from its configuration, the measured pair bound over the control
//! socket as one more. tetherd is ready when its loop answers a `status`
//! request, which works at any log level.
//!
//! The bench stays single-threaded: it forks, and its children only make
//! async-signal-safe calls before `_exit`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getppid, ForkResult, Pid};

const TETHERD: &str = env!("CARGO_BIN_EXE_tetherd");

/// The `kernel.pid_max` the bench needs for tens of thousands of processes.
const PID_MAX: u64 = 4_194_304;
/// The descriptor limit given to tetherd (2 per binding, plus its own).
const NOFILE: u64 = 65_536;
/// A probe nobody signals gives up after this long (if the bench died).
const PROBE_TIMEOUT_SECS: i64 = 3600;
/// Pipe buffers big enough that 10,000 probes never wait to report.
const PIPE_SIZE: i32 = 1 << 20;
/// Every message on the bench's pipes: kind or sender, pid, value.
const MSG: usize = 16;
/// Ready message of a probe: (KIND_PROBE, C, P).
const KIND_PROBE: i32 = -1;
/// Ready message of a watcher: (KIND_WATCHER, W, 0 or -errno).
const KIND_WATCHER: i32 = -2;

/// The grace before SIGKILL in every tetherd configuration.
const GRACE: &str = "5s";
/// Settle time after each setup, before the kill: every method alike.
const SETTLE: Duration = Duration::from_millis(10);
/// How long one probe may take to be signalled before the round is lost.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// The old `kernel.pid_max`, for the signal handler (0: not changed).
static OLD_PID_MAX: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone)]
struct Args {
    rounds: usize,
    pairs: usize,
    idle_secs: u64,
    watchers: usize,
    log: String,
    quick: bool,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str, default: usize| {
            value(name)
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
                })
                .unwrap_or(default)
        };
        Args {
            rounds: number("--rounds", if quick { 30 } else { 200 }).max(1),
            pairs: number("--pairs", if quick { 2_000 } else { 10_000 }).max(1),
            idle_secs: number("--idle-secs", if quick { 3 } else { 10 }) as u64,
            watchers: number("--watchers", if quick { 200 } else { 1_000 }).max(1),
            log: value("--log").unwrap_or_else(|| "info".to_owned()),
            quick,
        }
    }
}

// ---------------------------------------------------------------------------
// Small system helpers (safe wrappers; each unsafe block is one call)

/// CLOCK_MONOTONIC in ns (vDSO, async-signal-safe).
fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec into `ts`, which lives
    // in this frame; CLOCK_MONOTONIC always exists on Linux.
    let _ = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Ends a forked child without running any of the parent's exit handlers.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) only ends the process; it is async-signal-safe and
    // runs no destructors or atexit handlers copied from the bench.
    unsafe { libc::_exit(code) }
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new
    // descriptor or -1; no memory is passed.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just installed descriptor `ret` for us; nothing
    // else refers to it, so we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

fn pidfd_send_signal(fd: &OwnedFd, sig: Signal) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd we own, a signal
    // number, a null siginfo (the kernel fills in SI_USER) and flags 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// One message: `a`, `b` (pids or a kind) and a value.
fn send(fd: RawFd, a: i32, b: i32, value: i64) {
    let mut msg = [0u8; MSG];
    msg[0..4].copy_from_slice(&a.to_ne_bytes());
    msg[4..8].copy_from_slice(&b.to_ne_bytes());
    msg[8..16].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: `fd` is the write end of one of the bench's pipes, inherited
    // across fork and open for the life of the process; `msg` is a live
    // buffer of MSG bytes. One write of MSG <= PIPE_BUF bytes is atomic.
    let _ = unsafe { libc::write(fd, msg.as_ptr().cast(), MSG) };
}

fn decode(msg: &[u8]) -> (i32, i32, i64) {
    (
        i32::from_ne_bytes(msg[0..4].try_into().unwrap()),
        i32::from_ne_bytes(msg[4..8].try_into().unwrap()),
        i64::from_ne_bytes(msg[8..16].try_into().unwrap()),
    )
}

fn fork() -> ForkResult {
    // SAFETY: the bench is single-threaded (it starts no threads), so the
    // child is a consistent copy; children only make async-signal-safe
    // calls (prctl, sigprocmask, fork, write, poll, pidfd syscalls) and
    // leave with _exit.
    unsafe { nix::unistd::fork() }.expect("fork")
}

fn poll_ms(fd: &OwnedFd, ms: i32) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(ms.max(0)).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
    // Root may go up to fs.pipe-max-size (1 MiB by default); otherwise the
    // default 64 KiB only makes probes wait to write, not their timestamps.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    (r, w)
}

// ---------------------------------------------------------------------------
// The forked processes

/// P: dies with the bench (PR_SET_PDEATHSIG SIGKILL, so nothing outlives an
/// interrupted run), blocks SIGTERM for its probe to inherit, forks the
/// probe and pauses until killed.
fn pair_parent(bench: i32, pdeath: bool, ready: RawFd, results: RawFd) -> ! {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid().as_raw() != bench {
        exit_now(12);
    }
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    if term.thread_block().is_err() {
        exit_now(13);
    }
    let me = getpid().as_raw();
    match fork() {
        ForkResult::Child => probe(me, pdeath, ready, results),
        ForkResult::Parent { .. } => loop {
            nix::unistd::pause();
        },
    }
}

/// C: arms PR_SET_PDEATHSIG for the `pdeath` method exactly as
/// `setpriv --pdeathsig SIGTERM` does before exec (prctl, then the
/// getppid() race check), reports ready, waits for SIGTERM and reports the
/// time it arrived and who sent it.
fn probe(parent: i32, pdeath: bool, ready: RawFd, results: RawFd) -> ! {
    if pdeath && nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() {
        exit_now(10);
    }
    if getppid().as_raw() != parent {
        // The parent died before the prctl: it would never fire.
        exit_now(11);
    }
    let me = getpid().as_raw();
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    send(ready, KIND_PROBE, me, i64::from(parent));
    let timeout = libc::timespec {
        tv_sec: PROBE_TIMEOUT_SECS,
        tv_nsec: 0,
    };
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `term` is a valid sigset, `info` a live siginfo_t and
        // `timeout` a live timespec, all owned by this frame.
        let sig = unsafe { libc::sigtimedwait(term.as_ref(), &mut info, &timeout) };
        if sig == libc::SIGTERM {
            let t = now_ns();
            // SAFETY: sigtimedwait filled `info` for a SIGTERM, whose
            // si_pid field is the sender's pid (SI_USER / SI_KERNEL layout).
            let sender = unsafe { info.si_pid() };
            send(results, sender, me, t);
            exit_now(0);
        }
        if Errno::last() != Errno::EINTR {
            exit_now(14);
        }
    }
}

/// A dedicated watcher process for one binding, taking tetherd's steps:
/// open pidfds for P and C, sleep in poll on P's, then check that C has not
/// exited and signal it through its pidfd.
fn watcher(bench: i32, p: i32, c: i32, ready: RawFd) -> ! {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid().as_raw() != bench {
        exit_now(12);
    }
    let me = getpid().as_raw();
    let (pfd, cfd) = match (pidfd_open(p), pidfd_open(c)) {
        (Ok(pfd), Ok(cfd)) => (pfd, cfd),
        (Err(err), _) | (_, Err(err)) => {
            send(ready, KIND_WATCHER, me, -(err as i64));
            exit_now(15);
        }
    };
    send(ready, KIND_WATCHER, me, 0);
    loop {
        let mut fds = [PollFd::new(pfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => break,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => exit_now(16),
        }
    }
    let mut fds = [PollFd::new(cfd.as_fd(), PollFlags::POLLIN)];
    if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
        let _ = pidfd_send_signal(&cfd, Signal::SIGTERM);
    }
    exit_now(0);
}

// ---------------------------------------------------------------------------
// The bench's side

struct Bench {
    me: i32,
    /// CLOCK_MONOTONIC when the bench started.
    epoch: i64,
    ready_r: OwnedFd,
    ready_w: OwnedFd,
    results_r: OwnedFd,
    results_w: OwnedFd,
    ready_buf: Vec<u8>,
    results_buf: Vec<u8>,
    /// Probe C of parent P, by P.
    probes: HashMap<i32, i32>,
    /// Watcher readiness: 0, or -errno.
    watchers: HashMap<i32, i64>,
    /// Reports by probe pid: (sender, time).
    results: HashMap<i32, Vec<(i32, i64)>>,
    /// Processes that are ours (or will be, as orphans) and not yet reaped.
    live: HashSet<i32>,
}

#[derive(Debug, Clone, Copy)]
struct Report {
    sender: i32,
    t: i64,
}

impl Bench {
    fn new() -> Bench {
        let (ready_r, ready_w) = pipe();
        let (results_r, results_w) = pipe();
        Bench {
            me: getpid().as_raw(),
            epoch: now_ns(),
            ready_r,
            ready_w,
            results_r,
            results_w,
            ready_buf: Vec::new(),
            results_buf: Vec::new(),
            probes: HashMap::new(),
            watchers: HashMap::new(),
            results: HashMap::new(),
            live: HashSet::new(),
        }
    }

    /// Forks P (which forks its probe C); returns P.
    fn fork_pair(&mut self, pdeath: bool) -> i32 {
        let (ready, results) = (self.ready_w.as_raw_fd(), self.results_w.as_raw_fd());
        match fork() {
            ForkResult::Child => pair_parent(self.me, pdeath, ready, results),
            ForkResult::Parent { child } => {
                self.live.insert(child.as_raw());
                child.as_raw()
            }
        }
    }

    fn fork_watcher(&mut self, p: i32, c: i32) -> i32 {
        let ready = self.ready_w.as_raw_fd();
        match fork() {
            ForkResult::Child => watcher(self.me, p, c, ready),
            ForkResult::Parent { child } => {
                self.live.insert(child.as_raw());
                child.as_raw()
            }
        }
    }

    /// Reads what the pipe has (waiting up to `ms` for the first byte).
    fn drain(fd: &OwnedFd, buf: &mut Vec<u8>, ms: i32) -> Vec<(i32, i32, i64)> {
        let mut out = Vec::new();
        if !poll_ms(fd, ms) {
            return out;
        }
        let mut chunk = vec![0u8; 64 * MSG];
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let whole = buf.len() / MSG * MSG;
        for msg in buf[..whole].chunks_exact(MSG) {
            out.push(decode(msg));
        }
        buf.drain(..whole);
        out
    }

    fn pump_ready(&mut self, ms: i32) {
        for (kind, pid, value) in Self::drain(&self.ready_r, &mut self.ready_buf, ms) {
            match kind {
                KIND_PROBE => {
                    self.probes.insert(value as i32, pid);
                    self.live.insert(pid);
                }
                KIND_WATCHER => {
                    self.watchers.insert(pid, value);
                }
                _ => eprintln!("pdeath: unknown ready message {kind} {pid} {value}"),
            }
        }
    }

    fn pump_results(&mut self, ms: i32) {
        for (sender, probe, t) in Self::drain(&self.results_r, &mut self.results_buf, ms) {
            self.results.entry(probe).or_default().push((sender, t));
        }
    }

    /// Waits until every parent of `parents` reported its probe ready;
    /// returns the (P, C) pairs in the same order.
    fn wait_pairs(&mut self, parents: &[i32], timeout: Duration) -> Vec<(i32, i32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if parents.iter().all(|p| self.probes.contains_key(p)) {
                return parents.iter().map(|&p| (p, self.probes[&p])).collect();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} probes became ready",
                parents
                    .iter()
                    .filter(|p| self.probes.contains_key(p))
                    .count(),
                parents.len()
            );
            self.pump_ready(100);
        }
    }

    fn wait_watchers(&mut self, watchers: &[i32], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !watchers.iter().all(|w| self.watchers.contains_key(w)) {
            assert!(Instant::now() < deadline, "watchers did not become ready");
            self.pump_ready(100);
        }
        for w in watchers {
            let status = self.watchers[w];
            assert!(
                status == 0,
                "watcher {w}: pidfd_open failed: errno {}",
                -status
            );
        }
    }

    /// The first report of probe `c`, waiting up to `timeout`.
    fn wait_result(&mut self, c: i32, timeout: Duration) -> Option<Report> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(&(sender, t)) = self.results.get(&c).and_then(|r| r.first()) {
                return Some(Report { sender, t });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.pump_results(left.as_millis().clamp(1, 1000) as i32);
        }
    }

    /// Reaps children until none of `pids` is left unreaped, or `timeout`.
    fn reap(&mut self, pids: &[i32], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut any = false;
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => {
                        if let Some(pid) = status.pid() {
                            self.live.remove(&pid.as_raw());
                            any = true;
                        }
                    }
                }
            }
            if pids.iter().all(|p| !self.live.contains(p)) || Instant::now() >= deadline {
                return;
            }
            if !any {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Kills every process of ours not yet reaped (parents first, so their
    /// probes come back to us), and reaps them all.
    fn cleanup(&mut self) {
        let parents: Vec<i32> = self.probes.keys().copied().collect();
        for &p in &parents {
            if self.live.contains(&p) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let rest: Vec<i32> = self.live.iter().copied().collect();
        for &pid in &rest {
            // Unreaped, so the pid is still this process's (alive or zombie).
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let all: Vec<i32> = self.live.iter().copied().collect();
        self.reap(&all, Duration::from_secs(20));
        if !self.live.is_empty() {
            eprintln!(
                "pdeath: warning: {} processes could not be reaped",
                self.live.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// tetherd

struct Daemon {
    pid: i32,
    bindings: usize,
    log: PathBuf,
    socket: PathBuf,
    dir: tempfile::TempDir,
    _log_dir: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start(bench: &mut Bench, pairs: &[(i32, i32)], level: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = format!(
            "[daemon]\nlog = \"{level}\"\n\n[defaults]\nsignal = \"SIGTERM\"\ngrace = \"{GRACE}\"\n"
        );
        for (p, c) in pairs {
            let _ = write!(config, "\n[[binding]]\nparent = {p}\nchild = {c}\n");
        }
        let config_path = dir.path().join("tether.toml");
        fs::write(&config_path, config).expect("write config");
        // The log goes to tmpfs when there is one: in production stderr is
        // a pipe or journald's socket, and a file on a journalling file
        // system can stall a write() behind a commit of the state file.
        let log_dir = tempfile::tempdir_in("/dev/shm").ok();
        let log = log_dir
            .as_ref()
            .map_or_else(|| dir.path().to_owned(), |d| d.path().to_owned())
            .join("tetherd.log");
        let socket = dir.path().join("tether.sock");
        let mut cmd = Command::new(TETHERD);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .arg("--socket")
            .arg(&socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"));
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe: tetherd gets SIGTERM
        // (a clean stop) if the bench dies.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn tetherd");
        let pid = child.id() as i32;
        // The bench reaps its children itself (waitpid); `child` is dropped.
        drop(child);
        bench.live.insert(pid);
        let daemon = Daemon {
            pid,
            bindings: pairs.len(),
            log,
            socket,
            dir,
            _log_dir: log_dir,
        };
        daemon.wait_ready(bench, Duration::from_secs(120));
        daemon
    }

    /// Binds P and C at run time over the control socket; returns once
    /// tetherd has answered (the binding is armed and on disk).
    fn bind(&self, p: i32, c: i32) {
        let mut stream = UnixStream::connect(&self.socket).expect("connect to tetherd");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let line = format!(
            "{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{p}}},\"children\":[{{\"pid\":{c}}}]}}\n"
        );
        stream.write_all(line.as_bytes()).expect("send bind");
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .expect("bind answer");
        assert!(
            answer.contains("\"ok\":true"),
            "bind refused: {answer}; log:\n{}",
            self.log_text()
        );
    }

    /// Ready means the event loop answers: a `status` request is answered
    /// only from the loop, after every binding was armed (and after the
    /// `ready` log line). This works whatever the log level.
    fn wait_ready(&self, bench: &mut Bench, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            bench.reap(&[], Duration::ZERO);
            assert!(
                bench.live.contains(&self.pid),
                "tetherd exited during start; its log:\n{}",
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "tetherd not ready after {timeout:?}; its log:\n{}",
                self.log_text()
            );
            if let Some(status) = status(&self.socket) {
                let armed = status["status"]["armed"].as_u64().unwrap_or(0) as usize;
                assert!(
                    armed == self.bindings,
                    "tetherd armed {armed} of {} bindings; its log:\n{}",
                    self.bindings,
                    self.log_text()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ready_line(&self) -> Option<String> {
        self.log_text()
            .lines()
            .find(|l| l.contains(" ready: "))
            .map(str::to_owned)
    }

    fn stop(self, bench: &mut Bench) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        bench.reap(&[self.pid], Duration::from_secs(30));
        if bench.live.contains(&self.pid) {
            eprintln!("pdeath: tetherd {} did not stop on SIGTERM", self.pid);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            bench.reap(&[self.pid], Duration::from_secs(5));
        }
    }
}

/// One `status` request over the control socket; `None` until it answers.
fn status(socket: &std::path::Path) -> Option<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"{\"v\":1,\"op\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).ok()?;
    let value: serde_json::Value = serde_json::from_str(&line).ok()?;
    (value["ok"] == serde_json::Value::Bool(true)).then_some(value)
}

// ---------------------------------------------------------------------------
// /proc

fn status_field_kib(pid: i32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (Pss, USS = Private_Clean + Private_Dirty) from smaps_rollup, in KiB.
/// (RssAnon, RssFile) from /proc/PID/status, in KiB.
fn anon_file_kib(pid: i32) -> Option<(u64, u64)> {
    Some((
        status_field_kib(pid, "RssAnon:")?,
        status_field_kib(pid, "RssFile:")?,
    ))
}

fn pss_uss_kib(pid: i32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((
        field("Pss:")?,
        field("Private_Clean:")? + field("Private_Dirty:")?,
    ))
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<u64> = rest
        .split_ascii_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // After the `)`, index 0 is field 3; utime is field 14, stime 15.
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// Over every thread: (ns on CPU from schedstat, voluntary switches,
/// involuntary switches, threads).
fn task_counters(pid: i32) -> (u64, u64, u64, usize) {
    let (mut ns, mut vol, mut nonvol, mut n) = (0, 0, 0, 0);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0, 0, 0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        n += 1;
        if let Ok(s) = fs::read_to_string(path.join("schedstat")) {
            ns += s
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = fs::read_to_string(path.join("status")) {
            for line in s.lines() {
                let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
                if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                    vol += num(v);
                } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                    nonvol += num(v);
                }
            }
        }
    }
    (ns, vol, nonvol, n)
}

/// Kernel-side memory in /proc/meminfo that processes and descriptors use:
/// KernelStack + PageTables + Slab, in KiB.
fn kernel_kib() -> i64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    field("KernelStack:") + field("PageTables:") + field("Slab:")
}

/// Drops reclaimable kernel caches so the kernel-memory deltas are less
/// noisy; root only, harmless otherwise.
fn quiet_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

// ---------------------------------------------------------------------------
// Statistics and output

#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank percentiles of delays in ns, as µs.
fn stats(delays: &[i64]) -> Option<Stats> {
    if delays.is_empty() {
        return None;
    }
    let mut sorted = delays.to_vec();
    sorted.sort_unstable();
    let rank = |p: f64| {
        let idx = (p * sorted.len() as f64).ceil() as usize;
        sorted[idx.clamp(1, sorted.len()) - 1] as f64 / 1e3
    };
    Some(Stats {
        n: sorted.len(),
        min: sorted[0] as f64 / 1e3,
        median: rank(0.5),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1] as f64 / 1e3,
    })
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{date}; kernel {}; nproc {}; CPU {cpu}; {:.1} GiB RAM",
        kernel.trim(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

// ---------------------------------------------------------------------------
// Setup and teardown of the machine-wide limits

fn raise_pid_max() {
    let path = "/proc/sys/kernel/pid_max";
    let old: u64 = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if old >= PID_MAX {
        println!("kernel.pid_max is already {old}: left as it is");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("kernel.pid_max is {old} and we are not root: large --pairs may run out of pids");
        return;
    }
    match fs::write(path, PID_MAX.to_string()) {
        Ok(()) => {
            OLD_PID_MAX.store(old, Ordering::SeqCst);
            println!(
                "kernel.pid_max raised from {old} to {PID_MAX} for the run (restored at the end)"
            );
        }
        Err(err) => println!("cannot raise kernel.pid_max from {old}: {err}"),
    }
}

fn restore_pid_max() {
    let old = OLD_PID_MAX.swap(0, Ordering::SeqCst);
    if old != 0 {
        match fs::write("/proc/sys/kernel/pid_max", old.to_string()) {
            Ok(()) => println!("kernel.pid_max restored to {old}"),
            Err(err) => println!("cannot restore kernel.pid_max to {old}: {err}"),
        }
    }
}

/// SIGINT/SIGTERM/SIGHUP: restore pid_max and leave. Everything forked dies
/// with the bench (PR_SET_PDEATHSIG on each parent, watcher and tetherd);
/// probes of the tetherd methods give up after PROBE_TIMEOUT_SECS.
extern "C" fn on_signal(sig: libc::c_int) {
    let old = OLD_PID_MAX.load(Ordering::SeqCst);
    if old != 0 {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = old;
        while v > 0 && i > 0 {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        // SAFETY: open(2) with a NUL-terminated static path; async-signal-safe.
        let fd = unsafe {
            libc::open(
                c"/proc/sys/kernel/pid_max".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            let text = &digits[i..];
            // SAFETY: write(2) of a live stack buffer to the descriptor just
            // opened; async-signal-safe.
            let _ = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
            // SAFETY: closes the descriptor this handler opened.
            let _ = unsafe { libc::close(fd) };
        }
    }
    exit_now(128 + sig);
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only makes async-signal-safe calls (open,
        // write, close, _exit) and reads an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

// ---------------------------------------------------------------------------
// The measurements

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Pdeathsig,
    Watcher,
    Tetherd1,
    TetherdN,
}

const METHODS: [Method; 4] = [
    Method::Pdeathsig,
    Method::Watcher,
    Method::Tetherd1,
    Method::TetherdN,
];

#[derive(Debug, Default)]
struct Latency {
    delays: Vec<i64>,
    /// (round, start of the kill in ns since the bench started, delay).
    samples: Vec<(usize, i64, i64)>,
    lost: usize,
    wrong_sender: usize,
}

/// Extra figures gathered during the rounds.
#[derive(Debug, Default)]
struct Side {
    /// Round trips of the socket binds to the loaded daemon, in ns.
    bind_ns: Vec<i64>,
    tetherd1_rss_kib: Vec<u64>,
    /// RssAnon and RssFile of the first one-binding daemon.
    tetherd1_anon_file_kib: Option<(u64, u64)>,
    watcher_rss_kib: Option<u64>,
    watcher_pss_uss_kib: Option<(u64, u64)>,
    tetherd1_ready: Option<String>,
}

/// One measured kill: t0 right before kill(P, SIGKILL), t1 from the probe.
fn measure(bench: &mut Bench, p: i32, c: i32, sender: i32, out: &mut Latency) {
    std::thread::sleep(SETTLE);
    let t0 = now_ns();
    kill(Pid::from_raw(p), Signal::SIGKILL).expect("kill P");
    match bench.wait_result(c, ROUND_TIMEOUT) {
        Some(report) => {
            out.delays.push(report.t - t0);
            out.samples
                .push((out.delays.len() - 1, t0 - bench.epoch, report.t - t0));
            if report.sender != sender {
                out.wrong_sender += 1;
                eprintln!(
                    "pdeath: probe {c} signalled by {} (expected {sender})",
                    report.sender
                );
            }
        }
        None => {
            out.lost += 1;
            eprintln!("pdeath: probe {c} not signalled within {ROUND_TIMEOUT:?}");
            let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
        }
    }
}

fn round(
    bench: &mut Bench,
    method: Method,
    daemon_n: &Daemon,
    args: &Args,
    side: &mut Side,
    out: &mut Latency,
) {
    match method {
        Method::Pdeathsig => {
            let p = bench.fork_pair(true);
            let (_, c) = bench.wait_pairs(&[p], Duration::from_secs(10))[0];
            // PR_SET_PDEATHSIG's signal comes from the exiting parent.
            measure(bench, p, c, p, out);
            bench.reap(&[p, c], Duration::from_secs(10));
        }
        Method::Watcher => {
            let p = bench.fork_pair(false);
            let (_, c) = bench.wait_pairs(&[p], Duration::from_secs(10))[0];
            let w = bench.fork_watcher(p, c);
            bench.wait_watchers(&[w], Duration::from_secs(10));
            if side.watcher_rss_kib.is_none() {
                side.watcher_rss_kib = status_field_kib(w, "VmRSS:");
                side.watcher_pss_uss_kib = pss_uss_kib(w);
            }
            measure(bench, p, c, w, out);
            bench.reap(&[p, c, w], Duration::from_secs(10));
        }
        Method::Tetherd1 => {
            let p = bench.fork_pair(false);
            let (_, c) = bench.wait_pairs(&[p], Duration::from_secs(10))[0];
            let daemon = Daemon::start(bench, &[(p, c)], &args.log);
            if let Some(rss) = status_field_kib(daemon.pid, "VmRSS:") {
                side.tetherd1_rss_kib.push(rss);
            }
            if side.tetherd1_anon_file_kib.is_none() {
                side.tetherd1_anon_file_kib = anon_file_kib(daemon.pid);
            }
            if side.tetherd1_ready.is_none() {
                side.tetherd1_ready = daemon.ready_line();
            }
            measure(bench, p, c, daemon.pid, out);
            daemon.stop(bench);
            bench.reap(&[p, c], Duration::from_secs(10));
        }
        Method::TetherdN => {
            // The loaded daemon holds the fillers; the measured pair is
            // bound over the control socket, so it is one more binding.
            let p = bench.fork_pair(false);
            let (_, c) = bench.wait_pairs(&[p], Duration::from_secs(10))[0];
            let t = now_ns();
            daemon_n.bind(p, c);
            side.bind_ns.push(now_ns() - t);
            measure(bench, p, c, daemon_n.pid, out);
            bench.reap(&[p, c], Duration::from_secs(10));
        }
    }
}

#[derive(Debug)]
struct MassExit {
    pairs: usize,
    signalled: usize,
    duplicates: usize,
    wrong_sender: usize,
    kill_loop_ms: f64,
    median_ms: f64,
    last_ms: f64,
}

/// Kills every parent as fast as possible and waits for every probe.
fn mass_exit(bench: &mut Bench, pairs: &[(i32, i32)], sender: Option<i32>) -> MassExit {
    std::thread::sleep(Duration::from_secs(1));
    let t0 = now_ns();
    for &(p, _) in pairs {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let kill_loop_ms = (now_ns() - t0) as f64 / 1e6;
    let deadline = Instant::now() + Duration::from_secs(60);
    let probes: Vec<i32> = pairs.iter().map(|&(_, c)| c).collect();
    loop {
        let n = probes
            .iter()
            .filter(|c| bench.results.contains_key(c))
            .count();
        if n == probes.len() || Instant::now() >= deadline {
            break;
        }
        bench.pump_results(100);
    }
    // Anything late (a second report) would come now.
    bench.pump_results(200);
    let mut times = Vec::new();
    let (mut duplicates, mut wrong_sender) = (0, 0);
    for &(p, c) in pairs {
        let Some(reports) = bench.results.get(&c) else {
            continue;
        };
        if reports.len() > 1 {
            duplicates += 1;
        }
        let (from, t) = reports[0];
        if from != sender.unwrap_or(p) {
            wrong_sender += 1;
        }
        times.push(t - t0);
    }
    times.sort_unstable();
    let all: Vec<i32> = pairs.iter().flat_map(|&(p, c)| [p, c]).collect();
    let unsignalled: Vec<i32> = pairs
        .iter()
        .map(|&(_, c)| c)
        .filter(|c| !bench.results.contains_key(c))
        .collect();
    for c in &unsignalled {
        let _ = kill(Pid::from_raw(*c), Signal::SIGKILL);
    }
    bench.reap(&all, Duration::from_secs(60));
    MassExit {
        pairs: pairs.len(),
        signalled: times.len(),
        duplicates,
        wrong_sender,
        kill_loop_ms,
        median_ms: times
            .get(times.len() / 2)
            .map_or(f64::NAN, |&t| t as f64 / 1e6),
        last_ms: times.last().map_or(f64::NAN, |&t| t as f64 / 1e6),
    }
}

fn fork_pairs(bench: &mut Bench, n: usize, pdeath: bool) -> Vec<(i32, i32)> {
    let parents: Vec<i32> = (0..n)
        .map(|i| {
            if i % 256 == 0 {
                bench.pump_ready(0);
            }
            bench.fork_pair(pdeath)
        })
        .collect();
    bench.wait_pairs(&parents, Duration::from_secs(300))
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let progress =
        |what: &str| eprintln!("pdeath: [{:6.1}s] {what}", started.elapsed().as_secs_f64());

    println!("# tether parent-death benchmark");
    println!();
    println!("machine: {}", machine());
    println!("tetherd: {TETHERD}");
    println!(
        "settings: {} rounds, {} bindings loaded, {} s idle, {} watchers for the fleet memory figure, tetherd log level {:?}{}",
        args.rounds,
        thousands(args.pairs),
        args.idle_secs,
        args.watchers,
        args.log,
        if args.quick { " (--quick)" } else { "" }
    );
    println!(
        "PR_SET_PDEATHSIG is armed with prctl(2) directly in the forked probe (prctl, then the getppid() check), which is exactly what `setpriv --pdeathsig SIGTERM` does before exec."
    );
    install_signal_handlers();
    raise_pid_max();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    if hard < NOFILE {
        match setrlimit(Resource::RLIMIT_NOFILE, NOFILE, NOFILE) {
            Ok(()) => println!("RLIMIT_NOFILE raised from {soft}/{hard} to {NOFILE}/{NOFILE} for tetherd"),
            Err(err) => println!(
                "cannot raise RLIMIT_NOFILE from {soft}/{hard}: {err} (raising the hard limit needs CAP_SYS_RESOURCE, and fs.nr_open is {})",
                fs::read_to_string("/proc/sys/fs/nr_open").unwrap_or_default().trim()
            ),
        }
    }
    // tetherd holds 2 descriptors per binding, and a few of its own (stdio,
    // epoll, signal pipe, socket, a connection): keep 32 for those and one
    // binding's worth for the measured pair bound at run time.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    let fd_cap = (hard.saturating_sub(32) / 2).saturating_sub(1) as usize;
    let n_fillers = args.pairs.min(fd_cap);
    if n_fillers < args.pairs {
        println!(
            "the descriptor limit {hard} lets tetherd hold about {} bindings: loading {} instead of {}",
            thousands(fd_cap + 1),
            thousands(n_fillers),
            thousands(args.pairs)
        );
    }
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    println!();
    let mut bench = Bench::new();

    // The 10,000-binding daemon: filler pairs in its configuration; each
    // round's measured pair is bound over the socket as one more.
    progress(&format!(
        "forking {} pairs for the loaded daemon",
        thousands(n_fillers)
    ));
    let fillers = fork_pairs(&mut bench, n_fillers, false);
    let n_loaded = fillers.len();
    quiet_caches();
    std::thread::sleep(Duration::from_millis(500));
    let kernel_before = kernel_kib();
    progress(&format!(
        "starting tetherd with {} bindings",
        thousands(n_loaded)
    ));
    let t_start = Instant::now();
    let daemon_n = Daemon::start(&mut bench, &fillers, &args.log);
    let start_secs = t_start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    quiet_caches();
    let kernel_daemon_kib = kernel_kib() - kernel_before;
    let rss_n = status_field_kib(daemon_n.pid, "VmRSS:").unwrap_or(0);
    let anon_file_n = anon_file_kib(daemon_n.pid);
    let fds_n = fs::read_dir(format!("/proc/{}/fd", daemon_n.pid)).map_or(0, |d| d.count());
    progress(&format!(
        "ready in {start_secs:.2} s: {}",
        daemon_n
            .ready_line()
            .unwrap_or_else(|| "(no ready line at this log level)".into())
    ));

    // Idle: nothing happens for --idle-secs.
    std::thread::sleep(Duration::from_secs(1));
    progress(&format!("idle for {} s", args.idle_secs));
    let ticks0 = cpu_ticks(daemon_n.pid);
    let (ns0, vol0, nonvol0, threads) = task_counters(daemon_n.pid);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let ticks1 = cpu_ticks(daemon_n.pid);
    let (ns1, vol1, nonvol1, _) = task_counters(daemon_n.pid);
    let idle_ticks = ticks1.saturating_sub(ticks0);
    let idle_ns = ns1.saturating_sub(ns0);
    let idle_vol = vol1.saturating_sub(vol0);
    let idle_nonvol = nonvol1.saturating_sub(nonvol0);

    // The per-binding watcher's all-in memory: a fleet of watchers on
    // filler pairs, their Pss plus what the kernel holds for them.
    let n_fleet = args.watchers.min(fillers.len());
    progress(&format!("forking {n_fleet} pidfd watchers (memory figure)"));
    quiet_caches();
    std::thread::sleep(Duration::from_millis(300));
    let fleet_before = kernel_kib();
    let fleet: Vec<i32> = fillers[..n_fleet]
        .iter()
        .map(|&(p, c)| bench.fork_watcher(p, c))
        .collect();
    bench.wait_watchers(&fleet, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    quiet_caches();
    let fleet_kernel_kib = kernel_kib() - fleet_before;
    let (fleet_pss_kib, fleet_uss_kib) = fleet
        .iter()
        .filter_map(|&w| pss_uss_kib(w))
        .fold((0, 0), |(p, u), (pss, uss)| (p + pss, u + uss));
    for &w in &fleet {
        let _ = kill(Pid::from_raw(w), Signal::SIGKILL);
    }
    bench.reap(&fleet, Duration::from_secs(30));

    // Latency rounds, methods interleaved; the order rotates every round so
    // that no method always follows the same one.
    progress(&format!("{} latency rounds of 4 methods", args.rounds));
    let mut latency: HashMap<Method, Latency> = HashMap::new();
    let mut side = Side::default();
    for r in 0..args.rounds {
        for k in 0..METHODS.len() {
            let method = METHODS[(r + k) % METHODS.len()];
            let out = latency.entry(method).or_default();
            round(&mut bench, method, &daemon_n, &args, &mut side, out);
        }
        if (r + 1) % 50 == 0 {
            progress(&format!("round {}/{}", r + 1, args.rounds));
        }
    }

    let rss_n_after = status_field_kib(daemon_n.pid, "VmRSS:").unwrap_or(0);
    let state_bytes = fs::metadata(daemon_n.dir.path().join("state.json")).map_or(0, |m| m.len());

    // Idle again, right after the activity of the rounds: the daemon should
    // go back to sleep once the last child has exited.
    progress(&format!("idle for {} s after the rounds", args.idle_secs));
    let ticks0 = cpu_ticks(daemon_n.pid);
    let (ns0, vol0, nonvol0, _) = task_counters(daemon_n.pid);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let after_ticks = cpu_ticks(daemon_n.pid).saturating_sub(ticks0);
    let (ns1, vol1, nonvol1, _) = task_counters(daemon_n.pid);
    let after_ns = ns1.saturating_sub(ns0);
    let after_vol = vol1.saturating_sub(vol0);
    let after_nonvol = nonvol1.saturating_sub(nonvol0);

    // Mass exit: the kernel first, on fresh pairs, then tetherd on its
    // fillers (all still armed).
    progress(&format!(
        "mass exit under PR_SET_PDEATHSIG: forking {} pairs",
        thousands(fillers.len())
    ));
    let kernel_pairs = fork_pairs(&mut bench, fillers.len(), true);
    progress("killing every parent at once (PR_SET_PDEATHSIG)");
    let mass_kernel = mass_exit(&mut bench, &kernel_pairs, None);
    progress(&format!(
        "killing every parent at once (tetherd, {} bindings)",
        thousands(fillers.len())
    ));
    let mass_tetherd = mass_exit(&mut bench, &fillers, Some(daemon_n.pid));

    let log_lines = daemon_n.log_text().lines().count();
    daemon_n.stop(&mut bench);
    bench.cleanup();
    restore_pid_max();
    progress("done");
    let csv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pdeath-samples.csv");
    let mut text = String::from("method,round,t_kill_ms,delay_us\n");
    for method in METHODS {
        for &(r, at, delay) in &latency[&method].samples {
            let _ = writeln!(
                text,
                "{method:?},{r},{:.3},{:.1}",
                at as f64 / 1e6,
                delay as f64 / 1e3
            );
        }
    }
    match fs::write(&csv, text) {
        Ok(()) => eprintln!("pdeath: raw latency samples in {}", csv.display()),
        Err(err) => eprintln!("pdeath: cannot write {}: {err}", csv.display()),
    }

    // -----------------------------------------------------------------------
    // Report
    println!();
    println!("## Latency: parent SIGKILLed to child signalled");
    println!();
    println!(
        "| method | bindings loaded | n | min µs | median µs | p99 µs | max µs | median / kernel | p99 / kernel | target (≤ 1.5× median, ≤ 2× p99) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let kernel = latency
        .get(&Method::Pdeathsig)
        .and_then(|l| stats(&l.delays));
    let mut latency_ok = true;
    for method in METHODS {
        let l = &latency[&method];
        let Some(s) = stats(&l.delays) else {
            println!("| {method:?} | | 0 | | | | | | | FAIL (no sample) |");
            latency_ok = false;
            continue;
        };
        let (name, loaded) = match method {
            Method::Pdeathsig => ("PR_SET_PDEATHSIG (kernel)", "-".to_owned()),
            Method::Watcher => (
                "pidfd watcher process per binding",
                "1 per process".to_owned(),
            ),
            Method::Tetherd1 => ("tetherd", "1".to_owned()),
            Method::TetherdN => ("tetherd", format!("{} + 1", thousands(n_loaded))),
        };
        let (rm, rp) = kernel.map_or((f64::NAN, f64::NAN), |k| {
            (s.median / k.median, s.p99 / k.p99)
        });
        let verdict = match method {
            Method::Pdeathsig => "reference".to_owned(),
            Method::Watcher => "(comparison)".to_owned(),
            Method::Tetherd1 | Method::TetherdN => {
                let ok = rm <= 1.5 && rp <= 2.0 && l.lost == 0 && l.wrong_sender == 0;
                latency_ok &= ok;
                pass(ok).to_owned()
            }
        };
        let lost = if l.lost + l.wrong_sender > 0 {
            format!(" ({} lost, {} wrong sender)", l.lost, l.wrong_sender)
        } else {
            String::new()
        };
        println!(
            "| {name} | {loaded} | {}{lost} | {:.1} | {:.1} | {:.1} | {:.1} | {rm:.2} | {rp:.2} | {verdict} |",
            s.n, s.min, s.median, s.p99, s.max
        );
    }

    println!();
    println!("## Memory");
    println!();
    let rss1 = {
        let mut v = side.tetherd1_rss_kib.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let per_binding = (rss_n as f64 - rss1 as f64) * 1024.0 / (n_loaded as f64 - 1.0);
    let scale = 10_000.0;
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| tetherd VmRSS, 1 binding (median of {} daemons) | {rss1} KiB | |",
        side.tetherd1_rss_kib.len()
    );
    // Below 10,000 loaded (the descriptor limit), the target is checked on
    // the figure extrapolated with the measured per-binding cost.
    let rss_10k_kib = rss_n as f64 + (10_000.0 - n_loaded as f64).max(0.0) * per_binding / 1024.0;
    let rss_ok = rss_10k_kib < 8.0 * 1024.0;
    let extrapolated = if n_loaded < 10_000 {
        format!("; {:.2} MiB extrapolated to 10,000", rss_10k_kib / 1024.0)
    } else {
        String::new()
    };
    println!(
        "| tetherd VmRSS, {} bindings | {rss_n} KiB ({:.2} MiB{extrapolated}) | < 8 MiB: {} |",
        thousands(n_loaded),
        rss_n as f64 / 1024.0,
        pass(rss_ok)
    );
    println!(
        "| tetherd's own memory per binding, (RSS_n − RSS_1) / (n − 1) | {per_binding:.0} bytes | about 500 bytes |"
    );
    let split = |v: Option<(u64, u64)>| {
        v.map_or_else(
            || "?".to_owned(),
            |(anon, file)| format!("{anon} KiB anonymous + {file} KiB file-backed"),
        )
    };
    println!(
        "| tetherd VmRSS split, 1 binding / {} bindings | {} / {} | (information) |",
        thousands(n_loaded),
        split(side.tetherd1_anon_file_kib),
        split(anon_file_n)
    );
    println!(
        "| tetherd VmRSS, {} bindings, after the {} socket binds of the latency rounds | {rss_n_after} KiB | (information) |",
        thousands(n_loaded),
        args.rounds
    );
    if let Some(b) = stats(&side.bind_ns) {
        println!(
            "| socket `bind` round trip with {} bindings loaded (state file {} KiB, rewritten and fsync'd per bind) | median {:.1} ms, max {:.1} ms | (information) |",
            thousands(n_loaded),
            state_bytes / 1024,
            b.median / 1e3,
            b.max / 1e3
        );
    }
    println!(
        "| kernel memory for tetherd's {} bindings (Δ KernelStack + PageTables + Slab at its start; {fds_n} descriptors) | {kernel_daemon_kib} KiB ({:.0} bytes per binding) | (information) |",
        thousands(n_loaded),
        kernel_daemon_kib as f64 * 1024.0 / n_loaded as f64
    );
    let gib = |kib: f64| kib * scale / 1024.0 / 1024.0;
    if let (Some(rss), Some((pss, uss))) = (side.watcher_rss_kib, side.watcher_pss_uss_kib) {
        println!("| pidfd watcher, one process (forked by the bench): VmRSS | {rss} KiB | (comparison) |");
        println!(
            "| pidfd watcher, one process: Pss × 10,000 | {pss} KiB × 10,000 = {:.2} GiB | (comparison) |",
            gib(pss as f64)
        );
        println!(
            "| pidfd watcher, one process: USS (private pages) × 10,000 | {uss} KiB × 10,000 = {:.2} GiB | (comparison) |",
            gib(uss as f64)
        );
    }
    let fleet_pss = fleet_pss_kib as f64 / n_fleet as f64;
    let fleet_uss = fleet_uss_kib as f64 / n_fleet as f64;
    let fleet_kernel = fleet_kernel_kib as f64 / n_fleet as f64;
    println!(
        "| pidfd watcher, fleet of {n_fleet}: mean Pss / USS per watcher | {fleet_pss:.0} / {fleet_uss:.0} KiB | (comparison) |"
    );
    println!(
        "| pidfd watcher, all-in: USS + kernel memory (Δ KernelStack + PageTables + Slab) per watcher, × 10,000 | {:.0} KiB ({fleet_uss:.0} + {fleet_kernel:.0}) × 10,000 = {:.2} GiB | (comparison) |",
        fleet_uss + fleet_kernel,
        gib(fleet_uss + fleet_kernel)
    );

    println!();
    println!("## Idle");
    println!();
    let idle_ok = idle_ticks == 0 && idle_vol == 0;
    println!(
        "| daemon | seconds | CPU ticks (utime+stime) | CPU ns (schedstat) | voluntary switches | involuntary switches | threads | target (0 CPU, 0 voluntary) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| tetherd, {} bindings | {} | {idle_ticks} | {idle_ns} | {idle_vol} | {idle_nonvol} | {threads} | {} |",
        thousands(n_loaded),
        args.idle_secs,
        pass(idle_ok)
    );
    println!(
        "| same, the {} s right after the last latency round (grace {}) | {} | {after_ticks} | {after_ns} | {after_vol} | {after_nonvol} | {threads} | (information) |",
        args.idle_secs,
        GRACE,
        args.idle_secs
    );

    println!();
    println!("## Mass exit: every parent SIGKILLed at once");
    println!();
    println!(
        "| method | pairs | signalled | twice | wrong sender | kill loop ms | median ms | last ms | last / kernel | target (≤ 1.5×, all signalled) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ratio = mass_tetherd.last_ms / mass_kernel.last_ms;
    let mass_ok = ratio <= 1.5
        && mass_tetherd.signalled == mass_tetherd.pairs
        && mass_tetherd.duplicates == 0
        && mass_tetherd.wrong_sender == 0;
    for (name, m, verdict) in [
        (
            "PR_SET_PDEATHSIG (kernel)",
            &mass_kernel,
            "reference".to_owned(),
        ),
        ("tetherd", &mass_tetherd, pass(mass_ok).to_owned()),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {verdict} |",
            thousands(m.pairs),
            thousands(m.signalled),
            m.duplicates,
            m.wrong_sender,
            m.kill_loop_ms,
            m.median_ms,
            m.last_ms,
            m.last_ms / mass_kernel.last_ms
        );
    }

    println!();
    println!("## Summary");
    println!();
    println!("| requirement | result |");
    println!("|---|---|");
    println!(
        "| latency: median ≤ 1.5×, p99 ≤ 2× PR_SET_PDEATHSIG, 1 and {} bindings | {} |",
        thousands(n_loaded),
        pass(latency_ok)
    );
    println!(
        "| resident memory < 8 MiB with 10,000 bindings | {} ({rss_n} KiB with {}{}) |",
        pass(rss_ok),
        thousands(n_loaded),
        if n_loaded < 10_000 {
            format!(", {:.2} MiB extrapolated to 10,000", rss_10k_kib / 1024.0)
        } else {
            String::new()
        }
    );
    println!(
        "| 0 CPU and 0 voluntary switches over {} idle seconds | {} |",
        args.idle_secs,
        pass(idle_ok)
    );
    println!(
        "| mass exit of {}: all signalled, last ≤ 1.5× kernel | {} ({}/{} signalled, {ratio:.2}×) |",
        thousands(mass_tetherd.pairs),
        pass(mass_ok),
        thousands(mass_tetherd.signalled),
        thousands(mass_tetherd.pairs)
    );
    println!();
    println!(
        "tetherd (log level {:?}) wrote {log_lines} log lines in the loaded run; start with {} bindings took {start_secs:.2} s.",
        args.log,
        thousands(n_loaded)
    );
    if let Some(line) = side.tetherd1_ready {
        println!("one-binding daemon: {line}");
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
}
