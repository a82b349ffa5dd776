//! Torture: many rounds of what hosts throw at tetherd. Short runs here;
//! `TETHER_TORTURE=long` makes them long (thousands of pid-reuse rounds,
//! more crashes, 10,000 parents at once). Each failure mode that a round
//! checks has failed before in other tools: signals to reused pids, lost
//! bindings after a crash, double signals on mass exit.

use std::time::Duration;

use crate::util::reuse_script_output;

fn long() -> bool {
    std::env::var("TETHER_TORTURE").is_ok_and(|v| v == "long")
}

/// Rounds of: bind P -> {C, K}; kill C and give its pid to an innocent;
/// kill P and give its pid to another innocent; K (the legitimate child)
/// must get SIGTERM, and neither innocent may get anything. Run as pid 1
/// of a pid namespace (or in the initial one for netlink).
const ROUNDS_SCRIPT: &str = r#"
set -u
T=$1; D=$2; C=$3; shift 3
B=("$@")
ROUNDS=$(cat "$D/rounds")
r=0
trap 'kill -9 $(jobs -p) 2>/dev/null' EXIT
log=$D/tetherd.log
S=$D/tether.sock
[ -w /proc/sys/kernel/ns_last_pid ] || { echo "SKIP ns_last_pid is not writable"; exit 0; }
: > $D/t.toml; chmod 600 $D/t.toml
"$T" "${B[@]}" --config $D/t.toml --state $D/state.json --socket $S 2>>$log & TD=$!
for _ in $(seq 1 400); do grep -q 'ready:' $log 2>/dev/null && break; sleep 0.05; done
grep -q 'ready:' $log || { echo "FAIL tetherd did not start"; cat $log; exit 1; }
# An innocent at pid $1: records any signal tetherd might send it.
innocent() {
  echo $(( $1 - 1 )) > /proc/sys/kernel/ns_last_pid
  # Bounded (300 s), so nothing outlives a test that was killed.
  ( trap "echo TERM >> $D/hit.$1" TERM; trap "echo INT >> $D/hit.$1" INT; for _ in $(seq 300); do sleep 1; done ) &
}
reused=0; term=0
# Rounds go on until ROUNDS of them really reused both pids (a fork
# elsewhere, e.g. another test in the initial namespace, can take a pid
# first), or three times that many were tried.
while [ $reused -lt $ROUNDS ] && [ $r -lt $((ROUNDS * 3)) ]; do
  r=$((r + 1))
  sleep 300 & P=$!
  # K notes its SIGTERM in a file: with ns_last_pid rewound, its pid may
  # be a new process's by the time we look, so `wait $K` could wait for
  # the wrong one. It lives 30 s at most.
  ( trap 'echo TERM > $D/k; kill ${S30:-} 2>/dev/null; exit 0' TERM; sleep 30 & S30=$!; wait $S30 ) & K=$!
  sleep 300 & Cc=$!
  TETHER_SOCKET=$S "$C" bind --parent $P --child $Cc --child $K --grace 5s >/dev/null \
    || { echo "FAIL round $r: bind"; cat $log; exit 1; }
  kill -9 $Cc; wait $Cc 2>/dev/null
  # Start times count 10 ms ticks: one tick before the reuse (see reuse.rs).
  sleep 0.011
  innocent $Cc; I1=$!
  kill -9 $P; wait $P 2>/dev/null
  sleep 0.011
  innocent $P; I2=$!
  [ "$I1" = "$Cc" ] && [ "$I2" = "$P" ] && reused=$((reused + 1))
  # K must get SIGTERM (20 s at most: a miss is a failure, not a hang).
  for _ in $(seq 400); do [ -e $D/k ] && break; sleep 0.05; done
  if [ -e $D/k ]; then term=$((term + 1)); rm $D/k
  else echo "FAIL round $r: child $K of parent $P got no SIGTERM in 20 s"; break; fi
  kill -9 $I1 $I2 2>/dev/null; wait $I1 $I2 2>/dev/null
done
hits=$(cat $D/hit.* 2>/dev/null | wc -l)
echo "ROUNDS $r REUSED $reused TERM $term HITS $hits"
kill -TERM $TD; wait $TD
"#;

#[test]
fn torture_pid_reuse_rounds_never_signal_an_innocent() {
    let rounds = if long() { 3000 } else { 40 };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rounds"), rounds.to_string()).unwrap();
    let Some((stdout, stderr, log)) = reuse_script_output(ROUNDS_SCRIPT, dir.path()) else {
        return;
    };
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ROUNDS "))
        .unwrap_or_else(|| panic!("{stdout}\n{stderr}\n{log}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [rounds_run, reused, term, hits] = n[..] else {
        panic!("{line}");
    };
    eprintln!("{line}");
    assert!(!stdout.contains("FAIL"), "{stdout}\n{log}");
    assert_eq!(
        hits, 0,
        "innocent processes were signalled:\n{stdout}\n{log}"
    );
    assert_eq!(term, rounds_run, "every legitimate child gets SIGTERM");
    // The rounds that count are those that really reused both pids.
    assert_eq!(
        reused, rounds,
        "only {reused} of {rounds_run} rounds reused both pids"
    );
}

/// A small deterministic generator, so a failing run can be repeated with
/// its printed seed (`TETHER_TORTURE_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// One pair in the ledger, and what was acknowledged about it.
struct Entry {
    parent: crate::util::Proc,
    child: crate::util::Proc,
    /// The id, if the bind was acknowledged.
    id: Option<u64>,
    /// Whether an unbind was acknowledged (only ever while the parent
    /// lived, so the binding cannot have fired before).
    unbound: bool,
    /// Whether an unbind was sent but not answered (the daemon died
    /// meanwhile): then it may or may not have been carried out.
    unbind_unknown: bool,
    parent_killed: bool,
}

#[test]
fn torture_crash_and_restart_keeps_the_ledger() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    use crate::util::{Proc, TestDaemon, TIMEOUT};

    let seed = std::env::var("TETHER_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("TETHER_TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    let crashes = if long() { 25 } else { 4 };
    let bystanders: Vec<Proc> = (0..5).map(|_| Proc::sleeper()).collect();
    let mut ledger: Vec<Entry> = Vec::new();
    let mut daemon = TestDaemon::start("");
    for crash in 0..crashes {
        // SIGKILL the daemon at a random moment of the stream below, once
        // this round has one acknowledged bind: on a slow machine (qemu
        // without KVM) a fixed delay could end every round before the
        // first answer, and the test would prove nothing.
        let pid = Pid::from_raw(daemon.pid());
        let delay = Duration::from_millis(20 + rng.next(200)) * crate::util::slow();
        let (acked_tx, acked_rx) = std::sync::mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let _ = acked_rx.recv_timeout(TIMEOUT * crate::util::slow());
            std::thread::sleep(delay);
            let _ = kill(pid, Signal::SIGKILL);
        });
        loop {
            let op = rng.next(10);
            let result = if op < 5 || ledger.is_empty() {
                let entry = Entry {
                    parent: Proc::sleeper(),
                    child: Proc::sleeper(),
                    id: None,
                    unbound: false,
                    unbind_unknown: false,
                    parent_killed: false,
                };
                let (p, c) = (
                    entry.parent.pid().to_string(),
                    entry.child.pid().to_string(),
                );
                ledger.push(entry);
                let (code, out, _) =
                    daemon.ctl(&["bind", "--parent", &p, "--child", &c, "--grace", "5s"]);
                let last = ledger.last_mut().unwrap();
                last.id = (code == 0).then(|| out.trim().parse().unwrap());
                if code == 0 {
                    let _ = acked_tx.send(());
                }
                code
            } else if op < 7 {
                // Unbind an acknowledged binding whose parent lives.
                let live: Vec<usize> = (0..ledger.len())
                    .filter(|&i| {
                        ledger[i].id.is_some() && !ledger[i].unbound && !ledger[i].parent_killed
                    })
                    .collect();
                let Some(&i) = live.get(rng.next(live.len() as u64) as usize) else {
                    continue;
                };
                let id = ledger[i].id.unwrap().to_string();
                let (code, _, _) = daemon.ctl(&["unbind", &id]);
                if code == 0 {
                    ledger[i].unbound = true;
                } else {
                    ledger[i].unbind_unknown = true;
                }
                code
            } else {
                // A parent dies (the daemon may be up or down).
                let alive: Vec<usize> = (0..ledger.len())
                    .filter(|&i| !ledger[i].parent_killed)
                    .collect();
                let Some(&i) = alive.get(rng.next(alive.len() as u64) as usize) else {
                    continue;
                };
                ledger[i].parent.kill9();
                ledger[i].parent_killed = true;
                0
            };
            if result == 3 {
                // No daemon answered: it was killed.
                break;
            }
        }
        killer.join().unwrap();
        daemon.stop_with(Signal::SIGKILL);
        eprintln!("crash {crash}: {} pairs so far", ledger.len());
        daemon.spawn(None);
    }
    // The end: every remaining parent dies too.
    for entry in ledger.iter_mut().filter(|e| !e.parent_killed) {
        entry.parent.kill9();
        entry.parent_killed = true;
    }
    let mut acked = 0;
    for entry in &mut ledger {
        let pid = entry.child.pid();
        match (entry.id, entry.unbound) {
            // An unbind that was sent but never answered: either way.
            (Some(_), false) if entry.unbind_unknown => {}
            (Some(id), false) => {
                acked += 1;
                assert_eq!(
                    entry.child.wait_signal(TIMEOUT),
                    Some(libc::SIGTERM),
                    "acknowledged binding #{id} (child {pid}) was not honoured (seed {seed}):\n{}",
                    daemon.log_text()
                );
            }
            (Some(id), true) => {
                std::thread::sleep(Duration::from_millis(20));
                assert!(
                    entry.child.is_alive(),
                    "child {pid} of unbound #{id} was signalled (seed {seed}):\n{}",
                    daemon.log_text()
                );
            }
            // Unacknowledged: either outcome is allowed.
            (None, _) => {}
        }
    }
    for mut bystander in bystanders {
        assert!(
            bystander.is_alive(),
            "a bystander was touched (seed {seed})"
        );
    }
    eprintln!(
        "{} pairs, {acked} acknowledged bindings honoured across {crashes} crashes",
        ledger.len()
    );
    assert!(
        acked > 0,
        "no bind was acknowledged: the test proved nothing"
    );
}

#[test]
fn torture_mass_exit_signals_every_child_exactly_once() {
    use crate::util::{binding, wait_until, Proc, TestDaemon, TIMEOUT};

    // Long: 10,000, or for the pidfd backend (two descriptors per binding)
    // as many as a hard descriptor limit of 20,000 allows.
    let n = match (long(), crate::util::backend_name().as_str()) {
        (false, _) => 300,
        (true, "pidfd") => 9_900,
        (true, _) => 10_000,
    };
    let dir = tempfile::tempdir().unwrap();
    let parents: Vec<Proc> = (0..n).map(|_| Proc::sleeper()).collect();
    // Each child records every SIGTERM it gets in its own file and lives
    // on, so a second signal would show. It waits on a `sleep` of its own
    // (no fork per second: 9,900 of them would swamp the host), in its own
    // process group so that both go together, and lives 10 min at most,
    // so nothing outlives a killed test for long. Once its trap is set it
    // creates its ready file: a SIGTERM before that would kill it unseen.
    let ready = |i: usize| dir.path().join(format!("r{i}"));
    let children: Vec<Group> = (0..n)
        .map(|i| {
            let file = dir.path().join(format!("c{i}"));
            use std::os::unix::process::CommandExt as _;
            let child = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "trap 'echo >> {}' TERM; : > {}; sleep 600 & s=$!; \
                     while kill -0 $s 2>/dev/null; do wait $s; done",
                    file.display(),
                    ready(i).display()
                ))
                .stdin(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn sh");
            Group(Proc::from_child(child))
        })
        .collect();
    let config: String = parents
        .iter()
        .zip(&children)
        .map(|(p, c)| binding(p.pid(), c.0.pid(), "grace = \"never\""))
        .collect();
    let daemon = TestDaemon::start(&config);
    daemon.wait_log(&format!("{n} added"));
    // Every trap is set before any parent dies (issue 11: under load, a
    // child's shell had not run `trap` yet when its SIGTERM came).
    let mut n_ready = 0;
    let all_ready = wait_until(TIMEOUT * 3, || {
        while n_ready < n && ready(n_ready).exists() {
            n_ready += 1;
        }
        n_ready == n
    });
    assert!(all_ready, "only {n_ready} of {n} children set their trap");
    for p in &parents {
        p.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let count = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("c{i}")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let all = wait_until(TIMEOUT * 3, || (0..n).all(|i| count(i) >= 1));
    assert!(all, "not every child was signalled:\n{}", daemon.log_text());
    // A second signal would have arrived by now.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let twice: Vec<usize> = (0..n).filter(|&i| count(i) > 1).collect();
    assert!(twice.is_empty(), "children signalled twice: {twice:?}");
    drop(children);
    drop(parents);
}

/// A process that leads its own process group; dropping it kills the group.
struct Group(crate::util::Proc);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
