//! A daemon out of descriptors cannot read /proc. For the backends that
//! know a process by pid and start time (netlink, poll) a failed read
//! proves nothing: the process must be neither taken as exited nor
//! signalled, and it must be looked at again, so that an exit seen while
//! /proc could not be read is acted on once descriptors are free again,
//! and an innocent process that took a dead child's pid meanwhile is
//! never signalled. The pidfd backend needs no read for either and must
//! pass the same tests.

use std::os::unix::net::UnixStream;

use crate::util::{backend_name, binding, reuse_script_output, Proc, TestDaemon, TIMEOUT};

/// tetherd's descriptor limit in these tests: enough to start, few enough
/// for a hundred connections to use up.
const NOFILE: u64 = 48;

/// Connects to `daemon` until it can accept no more (its descriptor table
/// is full); the connections are held until the result is dropped.
fn fill_descriptor_table(daemon: &TestDaemon) -> Vec<UnixStream> {
    let conns: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&daemon.socket).expect("connect"))
        .collect();
    daemon.wait_log("control socket: cannot accept");
    conns
}

#[test]
fn a_parent_exit_seen_while_out_of_descriptors_is_acted_on_once_they_free_up() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start_limited(
        &binding(parent.pid(), child.pid(), "name = \"held\""),
        NOFILE,
    );
    daemon.wait_log("1 bindings held");
    let conns = fill_descriptor_table(&daemon);
    parent.kill9();
    if backend_name() != "pidfd" {
        // The exit event came, and /proc could not be read: the log says
        // so, and nothing is decided.
        daemon.wait_log(&format!(
            "pid {}: /proc/{}/stat: ",
            parent.pid(),
            parent.pid()
        ));
        daemon.wait_log("whether it exited is unknown");
        assert!(child.is_alive(), "log:\n{}", daemon.log_text());
    }
    drop(conns);
    assert_eq!(
        child.wait_signal(TIMEOUT),
        Some(libc::SIGTERM),
        "the parent's exit was lost\nlog:\n{}",
        daemon.log_text()
    );
    daemon.wait_log(&format!(
        "parent {} exited; sent SIGTERM to child {}",
        parent.pid(),
        child.pid()
    ));
}

/// Run by bash as pid 1 of a new pid namespace (on the host for netlink):
/// a TERM-ignoring child is signalled when its parent dies, tetherd's
/// descriptors are used up, the child is killed and an innocent takes its
/// pid, and the grace period ends while tetherd cannot read /proc. Prints
/// `SKIP reason`, or `OK`/`FAIL` lines.
const SCRIPT: &str = r#"
set -u
T=$1; D=$2; C=$3; shift 3
B=("$@")
trap 'kill $(jobs -p) 2>/dev/null' EXIT
log=$D/tetherd.log
ready() {
  for _ in $(seq 1 400); do
    [ "$(grep -c 'ready:' "$log" 2>/dev/null)" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "FAIL tetherd not ready"; exit 1
}
wait_log() {
  for _ in $(seq 1 400); do grep -q "$1" "$log" && return 0; sleep 0.05; done
  echo "FAIL no log line: $1"; exit 1
}
next_pid() { echo $(( $1 - 1 )) > /proc/sys/kernel/ns_last_pid; }
innocent() {
  # One clock tick later, so its start time differs (see tests/reuse.rs).
  sleep 0.03
  next_pid "$1"
  ( trap "echo TERM >> $D/innocent.$1; exit 0" TERM; for _ in $(seq 300); do sleep 1; done ) &
}
[ -w /proc/sys/kernel/ns_last_pid ] || { echo "SKIP ns_last_pid is not writable"; exit 0; }
command -v perl >/dev/null || { echo "SKIP no perl to hold connections"; exit 0; }

sleep 300 & P=$!
( trap '' TERM; exec sleep 300 ) & K=$!
printf '[[binding]]\nname = "held"\nparent = %s\nchild = %s\ngrace = "2s"\n' $P $K > $D/t.toml
( ulimit -n 48; exec "$T" "${B[@]}" --config $D/t.toml --state $D/state.json --socket $D/tether.sock ) 2>>$log & TD=$!
ready 1
kill -9 $P; wait $P 2>/dev/null
wait_log "parent $P exited; sent SIGTERM to child $K"
# Use up tetherd's descriptors: connections held until $D/free exists.
perl -MIO::Socket::UNIX -e '
  my @s;
  for (1..100) { my $c = IO::Socket::UNIX->new(Peer => $ARGV[0]) or last; push @s, $c }
  select(undef, undef, undef, 0.05) until -e $ARGV[1];' -- $D/tether.sock $D/free &
wait_log "cannot accept"
kill -9 $K; wait $K 2>/dev/null
innocent $K; I=$!
[ "$I" = "$K" ] || { echo "SKIP pid $K could not be reused (got $I)"; exit 0; }
# The grace period (2s from the parent's death) ends while tetherd cannot
# read /proc: no signal may reach the innocent.
sleep 2.5
touch $D/free
wait_log "child $K exited"
sleep 0.5
if [ -e $D/innocent.$I ]; then echo "FAIL innocent $I was signalled"
elif kill -0 $I 2>/dev/null; then echo "OK innocent $I alive and unsignalled"
else echo "FAIL innocent $I is dead"; fi
kill -TERM $TD; wait $TD
"#;

#[test]
fn an_innocent_at_a_reused_pid_is_not_signalled_while_out_of_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let Some((stdout, stderr, log)) = reuse_script_output(SCRIPT, dir.path()) else {
        return;
    };
    assert!(
        !stdout.contains("FAIL") && stdout.contains("OK innocent"),
        "{stdout}\n{stderr}\nlog:\n{log}"
    );
    if backend_name() != "pidfd" {
        assert!(
            log.contains("not signalled: whether pid"),
            "the refusal is not in the log:\n{log}"
        );
    }
}
