//! Config loads: how long tetherd takes to apply 10,000 and 100,000
//! configured bindings, at start and by a reload over the socket, and the
//! longest stretch during it in which the control socket went unanswered.
//!
//! The bindings pair a few hundred sleepers (every ordered pair of them at
//! most once, as the configuration allows). A second client sends `status`
//! requests one after the other during the load and records each round
//! trip: the longest is the longest stretch the loop spent without serving
//! the socket (plus one status answer's own cost).
//!
//! Run as root (to raise RLIMIT_NOFILE, as the other benchmarks do) with
//! `cargo bench --bench load [-- --sizes 10000,100000 --backends pidfd,netlink]`.
//! A size whose pidfds (two a binding) exceed the descriptor limit is
//! skipped on the pidfd backend.

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

use support::{probe::root_at_start, Tetherd, TETHERD};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const STATUS: &[u8] = b"{\"v\":1,\"op\":\"status\"}\n";
/// The ping: a request the loop answers at once and cheaply (a `status`
/// counts the daemon's descriptors in /proc/self/fd, which with 18,000
/// pidfds costs milliseconds of its own): an unbind of an id that never
/// exists, refused.
const PING: &[u8] = b"{\"v\":1,\"op\":\"unbind\",\"id\":0}\n";

fn list(name: &str, default: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The tetherd measured: `TETHER_BENCH_TETHERD` (to compare builds with
/// the same benchmark), else this build's.
fn tetherd() -> String {
    std::env::var("TETHER_BENCH_TETHERD").unwrap_or_else(|_| TETHERD.to_owned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `n` bindings over as few sleepers as the rule "each parent and child
/// pair once" allows.
fn config_for(procs: &[Child], n: usize) -> String {
    let pids: Vec<u32> = procs.iter().map(Child::id).collect();
    let mut text = String::with_capacity(n * 48);
    let mut made = 0;
    'all: for (i, p) in pids.iter().enumerate() {
        for (j, c) in pids.iter().enumerate() {
            if i == j {
                continue;
            }
            text.push_str(&format!("[[binding]]\nparent = {p}\nchild = {c}\n"));
            made += 1;
            if made == n {
                break 'all;
            }
        }
    }
    assert_eq!(made, n, "too few processes");
    text
}

/// A client sending pings back to back until stopped; each sample is
/// (sent, answered, answer).
struct Pinger {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<(Instant, Instant, String)>>,
}

impl Pinger {
    /// Starts pinging `socket`, connecting as soon as it exists.
    fn start(socket: std::path::PathBuf) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            let stream = loop {
                if let Ok(stream) = UnixStream::connect(&socket) {
                    break stream;
                }
                if flag.load(Ordering::Relaxed) {
                    return samples;
                }
                thread::sleep(Duration::from_micros(200));
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            while !flag.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if writer.write_all(PING).is_err() {
                    break;
                }
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                samples.push((sent, Instant::now(), line));
            }
            samples
        });
        Pinger { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The longest round trip among the pings sent before `end`, and how many
/// were answered before it.
fn longest(samples: &[(Instant, Instant, String)], end: Instant) -> (Duration, usize) {
    let during: Vec<_> = samples.iter().filter(|(sent, ..)| *sent < end).collect();
    let worst = during
        .iter()
        .map(|(sent, got, _)| got.saturating_duration_since(*sent))
        .max()
        .unwrap_or_default();
    let answered = during.iter().filter(|(_, got, _)| *got < end).count();
    (worst, answered)
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether a status answer shows `n` bindings held and no load going on.
fn loaded(line: &str, n: usize) -> bool {
    line.contains("\"ok\":true")
        && !line.contains("\"loading\"")
        && field(line, "bindings") == Some(n as u64)
}

fn reload(socket: &std::path::Path) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(b"{\"v\":1,\"op\":\"reload\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "reload: {line}");
    line
}

/// Starts tetherd on `n` bindings and measures the start; then reloads to
/// nothing and back to `n`, measuring each.
fn measure(backend: &str, procs: &[Child], n: usize) {
    let bindings = config_for(procs, n);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tether.toml");
    let head = "[daemon]\nlog = \"warn\"\nmax_bindings_per_uid = 1000000\n";
    std::fs::write(&config, format!("{head}{bindings}")).unwrap();
    let socket = dir.path().join("tether.sock");
    let t0 = Instant::now();
    let mut child = Command::new(tetherd())
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .arg("--socket")
        .arg(&socket)
        .args(["--backend", backend])
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pinger = Pinger::start(socket.clone());
    // Until a status (one every 10 ms) shows every binding held and no
    // load going on.
    let (mut n_status, mut showed_load) = (0, false);
    let ready = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "tetherd did not start"
        );
        let Ok(mut stream) = UnixStream::connect(&socket) else {
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        n_status += 1;
        stream.write_all(STATUS).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        if loaded(&line, n) {
            break Instant::now();
        }
        if line.contains("\"loading\"") {
            showed_load = true;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let samples = pinger.finish();
    let (worst, answered) = longest(&samples, ready);
    println!(
        "| {backend} | {n} | start | {:.0} | {:.1} | {answered} | {} |",
        ms(ready - t0),
        ms(worst),
        if showed_load {
            format!("yes ({n_status} asked)")
        } else {
            format!("no ({n_status} asked)")
        }
    );

    // Reload to nothing, then back to n: each answered when applied.
    for (what, text, held) in [
        ("reload, all removed", String::new(), 0),
        ("reload, all added", bindings, n),
    ] {
        std::fs::write(&config, format!("{head}{text}")).unwrap();
        let pinger = Pinger::start(socket.clone());
        thread::sleep(Duration::from_millis(20));
        // One status a little after the reload is asked for: does it
        // answer during the load, and say so?
        let status_socket = socket.clone();
        let status_thread = thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            let mut stream = UnixStream::connect(&status_socket).unwrap();
            stream.write_all(STATUS).unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            line.contains("\"loading\"")
        });
        let t0 = Instant::now();
        let answer = reload(&socket);
        let done = Instant::now();
        let samples = pinger.finish();
        let during: Vec<_> = samples
            .iter()
            .filter(|(_, got, _)| *got > t0)
            .cloned()
            .collect();
        let (worst, answered) = longest(&during, done);
        let status = status_thread.join().unwrap();
        assert!(answer.contains("\"ok\":true"));
        println!(
            "| {backend} | {n} | {what} | {:.0} | {:.1} | {answered} | {} |",
            ms(done - t0),
            ms(worst),
            if status { "yes" } else { "no" }
        );
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(STATUS).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert!(loaded(&line, held), "after the reload: {line}");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn main() {
    let sizes: Vec<usize> = list("--sizes", "10000,100000")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let backends = list("--backends", "pidfd,netlink");
    let root = root_at_start();
    if root {
        let limit = libc::rlimit {
            rlim_cur: 1 << 18,
            rlim_max: 1 << 18,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills one rlimit we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut n_procs = 2;
    while n_procs * (n_procs - 1) < largest {
        n_procs += 1;
    }
    let mut procs: Vec<Child> = (0..n_procs)
        .map(|_| Command::new("sleep").arg("100000").spawn().unwrap())
        .collect();

    println!("# tether config-load benchmark");
    println!();
    println!(
        "kernel {}, {} cores, {n_procs} sleepers, descriptor limit {}. Time is until the answer (reload) or until a status shows every binding held (start); the longest round trip is that of pings (a refused `unbind`) sent back to back by a second client meanwhile.",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        limit.rlim_cur,
    );
    println!();
    println!("| backend | bindings | load | time ms | longest ping round trip ms | pings answered during it | a status during it shows the load |");
    println!("|---|---|---|---|---|---|---|");
    let mut done = Vec::new();
    for backend in &backends {
        for &n in &sizes {
            // Two pidfds a binding: a size beyond the descriptor limit is
            // measured at the largest thousand that fits.
            let fits = (limit.rlim_cur.saturating_sub(256) / 2 / 1000 * 1000) as usize;
            let n = if backend == "pidfd" { n.min(fits) } else { n };
            if n > 0 && !done.contains(&(backend, n)) {
                measure(backend, &procs, n);
                done.push((backend, n));
            }
        }
    }
    // The floor: a ping on an idle daemon.
    let idle = Tetherd::start("");
    let pinger = Pinger::start(idle.socket.clone());
    thread::sleep(Duration::from_millis(300));
    let samples = pinger.finish();
    let mut rtts: Vec<Duration> = samples.iter().map(|(s, g, _)| *g - *s).collect();
    rtts.sort();
    if let Some(median) = rtts.get(rtts.len() / 2) {
        println!();
        println!(
            "An idle daemon answers the ping in {:.3} ms (median of {}).",
            ms(*median),
            rtts.len()
        );
    }
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
}
