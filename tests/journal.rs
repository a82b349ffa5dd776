//! The state file's journal: every acknowledged bind survives a SIGKILL at
//! any moment (compactions included), a torn tail is set aside with a
//! warning and the rest restored, churn is compacted so the files stay
//! bounded, and a state file of the format before journals is migrated.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::{slow, wait_until, Proc, TestDaemon, TIMEOUT};

const CONFIG: &str = "[daemon]\nmax_bindings_per_uid = 100000\n";

/// A connection speaking the protocol line by line.
struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(daemon: &TestDaemon) -> Client {
        let stream = UnixStream::connect(&daemon.socket).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends `lines` at once; returns the answers read before the daemon
    /// went away.
    fn send(&mut self, lines: &[String]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let all: String = lines.concat();
        if self.writer.write_all(all.as_bytes()).is_err() {
            return out;
        }
        for _ in lines {
            let mut answer = String::new();
            match self.reader.read_line(&mut answer) {
                Ok(n) if n > 0 => out.push(serde_json::from_str(&answer).unwrap()),
                _ => break,
            }
        }
        out
    }

    fn one(&mut self, line: String) -> serde_json::Value {
        self.send(&[line]).pop().expect("an answer")
    }
}

fn bind_line(parent: i32, child: i32) -> String {
    format!(
        "{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{parent}}},\"children\":[{{\"pid\":{child}}}]}}\n"
    )
}

fn unbind_line(id: u64) -> String {
    format!("{{\"v\":1,\"op\":\"unbind\",\"id\":{id}}}\n")
}

/// The ids of the socket bindings the daemon holds.
fn listed(daemon: &TestDaemon) -> BTreeSet<u64> {
    let answer = Client::connect(daemon).one("{\"v\":1,\"op\":\"list\"}\n".into());
    answer["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["origin"] == "socket")
        .map(|b| b["id"].as_u64().unwrap())
        .collect()
}

/// The journals of the state file, by generation.
fn journals(state: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut found: Vec<(u64, std::path::PathBuf)> = fs::read_dir(state.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let generation = name.strip_prefix("state.journal.")?.parse().ok()?;
            Some((generation, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The first journal generation the state file's snapshot does not cover.
fn snapshot_generation(state: &Path) -> u64 {
    let json: serde_json::Value = serde_json::from_slice(&fs::read(state).unwrap()).unwrap();
    json["journal"].as_u64().unwrap_or(0)
}

/// Bytes of every file in the state directory.
fn state_bytes(state: &Path) -> u64 {
    fs::read_dir(state.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn journal_kill9_at_random_points_loses_no_acknowledged_bind() {
    let seed = std::env::var("TETHER_JOURNAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    eprintln!("TETHER_JOURNAL_SEED={seed}");
    let mut rng = Rng(seed);
    let (parent, child) = (Proc::sleeper(), Proc::sleeper());
    let mut daemon = TestDaemon::start(CONFIG);
    // Acknowledged and not unbound; acknowledged unbinds.
    let mut live: BTreeSet<u64> = BTreeSet::new();
    let mut gone: BTreeSet<u64> = BTreeSet::new();
    let mut compacted = 0;
    for round in 0..4 {
        let pid = Pid::from_raw(daemon.pid());
        // Long enough, now and then, for the journal to pass the size at
        // which it is compacted, so kills land during compactions too.
        let delay = if round == 0 {
            Duration::from_millis(2000)
        } else {
            Duration::from_millis(50 + rng.next(2500))
        } * slow();
        let covered = snapshot_generation(&daemon.state);
        let (acked_tx, acked_rx) = std::sync::mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let _ = acked_rx.recv_timeout(TIMEOUT * slow());
            std::thread::sleep(delay);
            let _ = kill(pid, Signal::SIGKILL);
        });
        let mut client = Client::connect(&daemon);
        // Live ids to unbind from, kept to a few hundred so descriptors
        // last (each binding holds two).
        let mut pool: Vec<u64> = live.iter().copied().collect();
        loop {
            // A batch of binds (one group commit) and now and then unbinds.
            let n = 1 + rng.next(16) as usize;
            let mut lines: Vec<String> = (0..n)
                .map(|_| bind_line(parent.pid(), child.pid()))
                .collect();
            let mut unbinding = Vec::new();
            let n_unbind = rng.next(4) as usize + if pool.len() > 400 { n } else { 0 };
            for _ in 0..n_unbind {
                if pool.is_empty() {
                    break;
                }
                let id = pool.swap_remove(rng.next(pool.len() as u64) as usize);
                lines.push(unbind_line(id));
                unbinding.push(id);
            }
            let answers = client.send(&lines);
            for (i, answer) in answers.iter().enumerate() {
                assert_eq!(answer["ok"], true, "{answer}");
                if i < n {
                    let id = answer["id"].as_u64().unwrap();
                    live.insert(id);
                    pool.push(id);
                    let _ = acked_tx.send(());
                } else {
                    let id = unbinding[i - n];
                    live.remove(&id);
                    gone.insert(id);
                }
            }
            // Unbinds sent but not answered may or may not have been done.
            for &id in unbinding.iter().skip(answers.len().saturating_sub(n)) {
                if !gone.contains(&id) {
                    live.remove(&id);
                }
            }
            if answers.len() < lines.len() {
                break;
            }
        }
        killer.join().unwrap();
        daemon.stop_with(Signal::SIGKILL);
        if snapshot_generation(&daemon.state) > covered {
            compacted += 1;
        }
        daemon.spawn(None);
        let held = listed(&daemon);
        let lost: Vec<&u64> = live.difference(&held).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged bindings {lost:?} lost (seed {seed}):\n{}",
            daemon.log_text()
        );
        let back: Vec<&u64> = gone.intersection(&held).collect();
        assert!(
            back.is_empty(),
            "round {round}: unbound bindings {back:?} came back (seed {seed})"
        );
        eprintln!("round {round}: {} bindings held", held.len());
        // What is held now and was not acknowledged is taken as live.
        live.extend(held);
    }
    assert!(
        !daemon.log_text().contains("torn or corrupt"),
        "{}",
        daemon.log_text()
    );
    assert!(compacted > 0, "no round lasted long enough to compact");
}

#[test]
fn journal_a_torn_tail_is_set_aside_with_a_warning_and_the_rest_restored() {
    let (first_parent, first_child) = (Proc::sleeper(), Proc::sleeper());
    let mut daemon = TestDaemon::start(CONFIG);
    let mut client = Client::connect(&daemon);
    let ids: BTreeSet<u64> = (0..3)
        .map(|_| {
            client.one(bind_line(first_parent.pid(), first_child.pid()))["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    daemon.stop_with(Signal::SIGKILL);
    let (_, journal) = journals(&daemon.state).pop().expect("a journal");
    let good = fs::metadata(&journal).unwrap().len();
    let mut file = fs::OpenOptions::new().append(true).open(&journal).unwrap();
    file.write_all(b"000000f0 0badc0de {\"bound\":{\"id\":99")
        .unwrap();
    drop(file);
    daemon.spawn(None);
    daemon.wait_log(&format!(
        "{}: torn or corrupt record at offset {good} (a record cut short)",
        journal.display()
    ));
    assert_eq!(listed(&daemon), ids);
    let mut aside = journal.as_os_str().to_owned();
    aside.push(".corrupt-");
    let aside = aside.to_string_lossy().into_owned();
    let kept = fs::read_dir(daemon.state.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.path().to_string_lossy().starts_with(&aside));
    assert!(kept, "the journal is kept for a look");
    // And the daemon goes on journalling.
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let id = Client::connect(&daemon).one(bind_line(parent.pid(), child.pid()))["id"]
        .as_u64()
        .unwrap();
    assert!(id > *ids.last().unwrap());
    daemon.stop_with(Signal::SIGKILL);
    daemon.spawn(None);
    assert!(listed(&daemon).contains(&id));
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
}

#[test]
fn journal_churn_is_compacted_and_the_files_stay_bounded() {
    let (parent, child) = (Proc::sleeper(), Proc::sleeper());
    let mut daemon = TestDaemon::start(CONFIG);
    let mut client = Client::connect(&daemon);
    let kept = client.one(bind_line(parent.pid(), child.pid()))["id"]
        .as_u64()
        .unwrap();
    let snapshot_journal = |daemon: &TestDaemon| snapshot_generation(&daemon.state);
    let first = snapshot_journal(&daemon);
    // Twice the smallest journal compacted, and what is in flight.
    let bound = 1024 * 1024;
    let mut largest = 0;
    for i in 0..2500 {
        let id = client.one(bind_line(parent.pid(), child.pid()))["id"]
            .as_u64()
            .unwrap();
        assert_eq!(client.one(unbind_line(id))["ok"], true);
        if i % 50 == 0 {
            largest = largest.max(state_bytes(&daemon.state));
        }
    }
    assert!(
        largest < bound,
        "the state directory grew to {largest} bytes"
    );
    assert!(
        wait_until(TIMEOUT, || snapshot_journal(&daemon) > first + 1),
        "no compaction: the snapshot still names journal {first}"
    );
    daemon.stop_with(Signal::SIGKILL);
    daemon.spawn(None);
    assert_eq!(listed(&daemon), BTreeSet::from([kept]));
    // A start leaves one snapshot and no journal before the next bind.
    assert!(
        journals(&daemon.state).is_empty(),
        "{:?}",
        journals(&daemon.state)
    );
}

#[test]
fn journal_a_state_file_of_version_1_is_migrated() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let mut daemon = TestDaemon::start_stopped("");
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let old = serde_json::json!({
        "version": 1,
        "next_id": 8,
        "bindings": [{
            "id": 7, "uid": 0, "name": "old", "boot_id": boot.trim(),
            "parent": {"pid": parent.pid(), "start": parent.start_time()},
            "children": [{"pid": child.pid(), "start": child.start_time()}],
            "signal": "SIGTERM", "grace": "5s", "kill": "process"
        }]
    });
    fs::create_dir_all(daemon.state.parent().unwrap()).unwrap();
    fs::write(&daemon.state, old.to_string()).unwrap();
    daemon.spawn(None);
    assert_eq!(listed(&daemon), BTreeSet::from([7]));
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(&daemon.state).unwrap()).unwrap();
    assert_eq!(json["version"], 2, "{json}");
    assert_eq!(json["bindings"][0]["name"], "old", "{json}");
    let id = Client::connect(&daemon).one(bind_line(parent.pid(), child.pid()))["id"]
        .as_u64()
        .unwrap();
    assert_eq!(id, 8);
    daemon.stop_with(Signal::SIGKILL);
    daemon.spawn(None);
    assert_eq!(listed(&daemon), BTreeSet::from([7, 8]));
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
}
