//! Persistence figures: the `bind` round trip (each answered only after
//! the state is durable) at 0, 1,000, 10,000 and 100,000 live socket
//! bindings, and how long a restart takes with 100,000 bindings held in
//! the snapshot and with 100,000 records in a journal.
//!
//! The same two sleepers are bound again and again (the model allows it),
//! on the netlink backend by default, which holds no descriptor per
//! process (pidfd: RLIMIT_NOFILE is raised where it can be).
//!
//! Then it binds and unbinds `--churn` times at the top level, so that
//! compactions happen, and reports the slowest bind among them.
//!
//! Run with `cargo bench --bench persistence [-- --levels 0,1000,10000,100000
//! --samples 200 --churn 10000 --backend netlink --tetherd PATH]`
//! (`--tetherd` measures another build, e.g. main's, with the same client).

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The descriptor limit tetherd gets: the hard limit, or more where this
/// process may raise it.
fn nofile() -> u64 {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let wanted = 420_000;
    let raised =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, wanted, wanted);
    if raised.is_ok() {
        wanted
    } else {
        hard
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    tetherd: PathBuf,
    backend: String,
    nofile: u64,
}

impl Daemon {
    fn state(&self) -> PathBuf {
        self.dir.join("state/state.json")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("tether.sock")
    }

    /// Starts tetherd; returns how long until it answered a `status`.
    fn spawn(&mut self) -> Duration {
        let config = self.dir.join("tether.toml");
        std::fs::write(
            &config,
            "[daemon]\nlog = \"warn\"\nmax_bindings_per_uid = 1000000\n",
        )
        .unwrap();
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(&self.tetherd);
        cmd.arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(self.state())
            .arg("--socket")
            .arg(self.socket())
            .args(["--backend", &self.backend])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let limit = self.nofile;
        // SAFETY: setrlimit is async-signal-safe and touches no memory
        // shared with the parent.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    limit,
                    limit,
                )
                .map_err(std::io::Error::from)
            });
        }
        let t0 = Instant::now();
        self.child = Some(cmd.spawn().unwrap());
        loop {
            if let Ok(mut stream) = UnixStream::connect(self.socket()) {
                stream.write_all(b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_ok()
                    && line.contains("\"ok\":true")
                {
                    return t0.elapsed();
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "tetherd did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    answer: String,
}

impl Client {
    fn new(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            answer: String::new(),
        }
    }

    fn round_trip(&mut self, line: &[u8]) -> &str {
        self.writer.write_all(line).unwrap();
        self.answer.clear();
        self.reader.read_line(&mut self.answer).unwrap();
        assert!(self.answer.contains("\"ok\":true"), "{}", self.answer);
        &self.answer
    }

    /// Sends `n` copies of `line` at once and reads the answers.
    fn pipelined(&mut self, line: &[u8], n: usize) {
        let mut lines = Vec::with_capacity(line.len() * n);
        for _ in 0..n {
            lines.extend_from_slice(line);
        }
        self.writer.write_all(&lines).unwrap();
        for _ in 0..n {
            self.answer.clear();
            self.reader.read_line(&mut self.answer).unwrap();
            assert!(self.answer.contains("\"ok\":true"), "{}", self.answer);
        }
    }
}

fn median(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let p99 = samples[((samples.len() - 1) * 99) / 100];
    (samples[samples.len() / 2], p99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CRC-32 (IEEE), as the journal frames its records.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn frame(out: &mut String, payload: &str) {
    let _ = writeln!(
        out,
        "{:08x} {:08x} {payload}",
        payload.len(),
        crc32(payload.as_bytes())
    );
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn main() {
    let levels: Vec<usize> = arg("--levels")
        .unwrap_or_else(|| "0,1000,10000,100000".into())
        .split(',')
        .map(|l| l.parse().unwrap())
        .collect();
    let samples: usize = arg("--samples").map_or(200, |s| s.parse().unwrap());
    let backend = arg("--backend").unwrap_or_else(|| "netlink".into());
    let tetherd = arg("--tetherd").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tetherd")),
        PathBuf::from,
    );
    let mut parent = Command::new("sleep").arg("100000").spawn().unwrap();
    let mut child = Command::new("sleep").arg("100000").spawn().unwrap();
    let bind = format!(
        "{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{}}},\"children\":[{{\"pid\":{}}}]}}\n",
        parent.id(),
        child.id()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon {
        child: None,
        dir: tmp.path().to_owned(),
        tetherd: tetherd.clone(),
        backend: backend.clone(),
        nofile: nofile(),
    };
    // Each binding of one child counts two processes against the daemon's
    // capacity, less 512 kept for the control socket: the descriptor
    // limit with pidfds, 2^20 processes (or the limit, if larger) with a
    // backend that holds no descriptor per process.
    let capacity = if backend == "pidfd" {
        daemon.nofile
    } else {
        daemon.nofile.max(1 << 20)
    };
    let admitted = usize::try_from(capacity.saturating_sub(600) / 2).unwrap() - samples;
    let wanted = levels.clone();
    let levels: Vec<usize> = levels.into_iter().map(|l| l.min(admitted)).collect();
    daemon.spawn();

    println!("# tether persistence benchmark");
    println!();
    println!(
        "tetherd {}, backend {backend}, kernel {}, {} cores; the state is on {}",
        tetherd.display(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::env::temp_dir().display()
    );
    if levels != wanted {
        println!();
        println!(
            "RLIMIT_NOFILE is {} here and cannot be raised: the {backend} backend admits about {admitted} bindings of one child, so the levels {wanted:?} are cut to {levels:?}.",
            daemon.nofile
        );
    }
    println!();
    println!("| live socket bindings | binds | median ms | p99 ms | state files, bytes |");
    println!("|---|---|---|---|---|");
    let mut client = Client::new(&daemon.socket());
    let mut held = 0;
    let mut first = None;
    let mut last = Duration::ZERO;
    for &level in &levels {
        // Fill to the level in pipelined batches (one commit each).
        while held < level {
            let n = (level - held).min(1000);
            client.pipelined(bind.as_bytes(), n);
            held += n;
        }
        // Then bind one at a time; unbind them afterwards, together.
        let mut times = Vec::with_capacity(samples);
        let mut ids = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t0 = Instant::now();
            let answer = client.round_trip(bind.as_bytes());
            times.push(t0.elapsed());
            let id: u64 = answer
                .split("\"id\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap();
            ids.push(id);
        }
        let unbinds: String = ids
            .iter()
            .map(|id| format!("{{\"v\":1,\"op\":\"unbind\",\"id\":{id}}}\n"))
            .collect();
        client.writer.write_all(unbinds.as_bytes()).unwrap();
        for _ in &ids {
            client.answer.clear();
            client.reader.read_line(&mut client.answer).unwrap();
        }
        let bytes: u64 = std::fs::read_dir(daemon.state().parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        let (med, p99) = median(times);
        first.get_or_insert(med);
        last = med;
        println!(
            "| {level} | {samples} | {:.3} | {:.3} | {bytes} |",
            ms(med),
            ms(p99)
        );
    }
    println!();
    if let Some(first) = first {
        println!(
            "The bind round trip at {} live bindings is {:.2}x the one at {}.",
            levels.last().unwrap(),
            last.as_secs_f64() / first.as_secs_f64(),
            levels[0]
        );
    }
    // Churn at the top level: bind and unbind one at a time, long enough
    // for several compactions, to show what they cost the loop (they run
    // in a thread; the loop only starts a new journal).
    let generation = |daemon: &Daemon| -> u64 {
        let text = std::fs::read_to_string(daemon.state()).unwrap_or_default();
        text.split("\"journal\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    };
    let churn = arg("--churn").map_or(10_000, |s| s.parse().unwrap());
    let before = generation(&daemon);
    let mut times = Vec::with_capacity(churn);
    for _ in 0..churn {
        let t0 = Instant::now();
        let answer = client.round_trip(bind.as_bytes());
        times.push(t0.elapsed());
        let id: u64 = answer
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap();
        client.round_trip(format!("{{\"v\":1,\"op\":\"unbind\",\"id\":{id}}}\n").as_bytes());
    }
    let after = generation(&daemon);
    let max = *times.iter().max().unwrap();
    let (med, p99) = median(times);
    println!(
        "Churn at {held} bindings, {churn} binds each unbound again: bind median {:.3} ms, p99 {:.3} ms, max {:.3} ms; the snapshot went from journal generation {before} to {after} (compactions in a background thread).",
        ms(med),
        ms(p99),
        ms(max)
    );

    // Restart with what is held (snapshot and whatever journal is left).
    drop(client);
    daemon.kill9();
    let restart = daemon.spawn();
    println!(
        "Restart (SIGKILL, then start until `status` answers) with {held} bindings held: {:.0} ms.",
        ms(restart)
    );
    daemon.kill9();

    // Restart with 100,000 records in one journal over an empty snapshot
    // (only a build that journals reads them): bindings made and, all but
    // the last ones the descriptor limit admits, unbound again.
    let n = 100_000u64;
    let kept = u64::try_from(held.min(n as usize / 2)).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let dir = daemon.state().parent().unwrap().to_owned();
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::write(
        daemon.state(),
        "{\"version\":2,\"journal\":1,\"next_id\":1,\"bindings\":[]}",
    )
    .unwrap();
    let (ps, cs) = (start_time(parent.id()), start_time(child.id()));
    let mut journal = String::new();
    frame(&mut journal, "{\"version\":2}");
    let n_bound = (n + kept) / 2;
    for id in 1..=n_bound {
        frame(
            &mut journal,
            &format!(
                "{{\"bound\":{{\"id\":{id},\"uid\":0,\"boot_id\":\"{}\",\"parent\":{{\"pid\":{},\"start\":{ps}}},\"children\":[{{\"pid\":{},\"start\":{cs}}}],\"signal\":\"SIGTERM\",\"grace\":\"5s\",\"kill\":\"process\"}}}}",
                boot.trim(),
                parent.id(),
                child.id()
            ),
        );
    }
    for id in 1..=(n - n_bound) {
        frame(&mut journal, &format!("{{\"unbound\":{id}}}"));
    }
    std::fs::write(dir.join("state.journal.1"), &journal).unwrap();
    let restart = daemon.spawn();
    let mut client = Client::new(&daemon.socket());
    let status = client
        .round_trip(b"{\"v\":1,\"op\":\"status\"}\n")
        .to_owned();
    println!(
        "Restart with {n} journal records ({n_bound} binds, {} unbinds, {} bytes) over an empty snapshot: {:.0} ms (status: {}).",
        n - n_bound,
        journal.len(),
        ms(restart),
        status.trim()
    );
    drop(daemon);
    let _ = parent.kill();
    let _ = child.kill();
    let _ = parent.wait();
    let _ = child.wait();
}
