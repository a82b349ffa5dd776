//! Pid reuse: a pid is not an identity. In a fresh pid namespace the test
//! controls which pid the next process gets (/proc/sys/kernel/ns_last_pid),
//! so it can hand a bound child's pid to an innocent process and check that
//! tetherd never signals it: neither while it holds the child's pidfd, nor
//! after a restart, where only the remembered pin (of a config binding, or
//! of a binding made over the socket) tells the two apart.

use crate::util::reuse_script_output;

/// The scenario, run by bash as pid 1 of a new pid namespace. Prints
/// `SKIP reason`, or one `OK`/`FAIL` line per check.
const SCRIPT: &str = r#"
set -u
T=$1; D=$2; C=$3; shift 3
B=("$@") # the backend's arguments for tetherd
# Outside a pid namespace (netlink) nothing kills what is left: do it.
trap 'kill $(jobs -p) 2>/dev/null' EXIT
log=$D/tetherd.log
ready() { # wait for the Nth "ready:" line
  for _ in $(seq 1 400); do
    [ "$(grep -c 'ready:' "$log" 2>/dev/null)" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "FAIL tetherd not ready"; cat "$log"; exit 1
}
wait_log() {
  for _ in $(seq 1 400); do grep -q "$1" "$log" && return 0; sleep 0.05; done
  echo "FAIL no log line: $1"; cat "$log"; exit 1
}
# Gives the next forked process pid $1 (if it is free).
next_pid() { echo $(( $1 - 1 )) > /proc/sys/kernel/ns_last_pid; }
innocent() { # an innocent process that records any SIGTERM it gets
  # Start times count clock ticks (10 ms): without a pidfs inode (Linux
  # before 6.9, or the netlink and poll backends) a process that took the
  # pid within the same tick would share the pin. Only a privileged writer
  # of ns_last_pid can reuse a pid that fast (docs/ARCHITECTURE.md).
  sleep 0.03
  next_pid "$1"
  ( trap "echo TERM >> $D/innocent.$1; exit 0" TERM; for _ in $(seq 300); do sleep 1; done ) &
}

[ -w /proc/sys/kernel/ns_last_pid ] || { echo "SKIP ns_last_pid is not writable"; exit 0; }

# 1. A held pidfd: one child dies and its pid goes to an innocent while
#    tetherd watches; then the parent dies and the other child is signalled.
sleep 300 & P1=$!
sleep 300 & C1=$!
sleep 300 & K1=$!
# 2. Restart: a child dies while tetherd is down and an innocent takes its
#    pid; only the pin in the state file tells them apart.
sleep 300 & P2=$!
sleep 300 & C2=$!
sleep 300 & K2=$!
printf '[defaults]\ngrace = "1s"\n' > $D/t.toml
printf '[[binding]]\nname = "held"\nparent = %s\nchildren = [%s, %s]\n' $P1 $C1 $K1 >> $D/t.toml
printf '[[binding]]\nname = "restart"\nparent = %s\nchildren = [%s, %s]\n' $P2 $C2 $K2 >> $D/t.toml
"$T" "${B[@]}" --config $D/t.toml --state $D/state.json --socket $D/tether.sock 2>>$log & TD=$!
ready 1

kill -9 $C1; wait $C1 2>/dev/null
innocent $C1; I1=$!
[ "$I1" = "$C1" ] || { echo "SKIP pid $C1 could not be reused (got $I1)"; kill $TD; exit 0; }
kill -9 $P1; wait $P1 2>/dev/null
wait_log "binding \"held\": parent $P1 exited; sent SIGTERM to child $K1"

kill -TERM $TD; wait $TD
kill -9 $C2; wait $C2 2>/dev/null
innocent $C2; I2=$!
[ "$I2" = "$C2" ] || { echo "SKIP pid $C2 could not be reused (got $I2)"; exit 0; }
"$T" "${B[@]}" --config $D/t.toml --state $D/state.json --socket $D/tether.sock 2>>$log & TD=$!
ready 2
wait_log "child $C2 dropped"
kill -9 $P2; wait $P2 2>/dev/null
wait_log "binding \"restart\": parent $P2 exited; sent SIGTERM to child $K2"
sleep 1.5   # longer than the grace period: no SIGTERM, no SIGKILL came

# 3. The same for a binding made over the socket: the daemon is stopped,
#    the child dies, an innocent takes its pid, the daemon restarts from its
#    state file, the parent dies.
sleep 300 & P3=$!
sleep 300 & C3=$!
sleep 300 & K3=$!
TETHER_SOCKET=$D/tether.sock "$C" bind --parent $P3 --child $C3 --child $K3 --name sock --grace 1s > $D/id || { echo "FAIL bind"; exit 1; }
kill -TERM $TD; wait $TD
kill -9 $C3; wait $C3 2>/dev/null
innocent $C3; I3=$!
[ "$I3" = "$C3" ] || { echo "SKIP pid $C3 could not be reused (got $I3)"; exit 0; }
"$T" "${B[@]}" --config $D/t.toml --state $D/state.json --socket $D/tether.sock 2>>$log & TD=$!
ready 3
wait_log "child $C3 dropped"
kill -9 $P3; wait $P3 2>/dev/null
wait_log "parent $P3 exited; sent SIGTERM to child $K3"
sleep 1.5

for pid in $I1 $I2 $I3; do
  if [ -e $D/innocent.$pid ]; then echo "FAIL innocent $pid was signalled"
  elif kill -0 $pid 2>/dev/null; then echo "OK innocent $pid alive and unsignalled"
  else echo "FAIL innocent $pid is dead"; fi
done
kill -TERM $TD; wait $TD
echo "EXIT $?"
"#;

#[test]
fn reused_child_pid_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let Some((stdout, stderr, log)) = reuse_script_output(SCRIPT, dir.path()) else {
        return;
    };
    assert!(!stdout.contains("FAIL"), "{stdout}\n{stderr}\nlog:\n{log}");
    assert_eq!(
        stdout.matches("OK innocent").count(),
        3,
        "{stdout}\n{stderr}\nlog:\n{log}"
    );
    assert!(stdout.contains("EXIT 0"), "{stdout}");
    assert!(log.contains("the pin taken at bind time"), "{log}");
    assert!(
        log.contains("the pin recorded when tetherd first saw it"),
        "{log}"
    );
}

/// Pins belong to the configuration entry that took them. Run as pid 1 of
/// a new pid namespace, like [`SCRIPT`].
/// 1. A job's launcher dies and its captive is signalled; the next job's
///    launcher gets the same pid and the configuration is rewritten for
///    it: its captive must not be signalled at load for the old launcher.
/// 2. A reload drops an entry; its child dies and an innocent takes the
///    pid; the entry comes back: its old pins come back with it, so the
///    innocent is never signalled.
const ENTRY_SCRIPT: &str = r#"
set -u
T=$1; D=$2; C=$3; shift 3
B=("$@")
trap 'kill $(jobs -p) 2>/dev/null' EXIT
log=$D/tetherd.log
wait_log() {
  for _ in $(seq 1 400); do grep -q "$1" "$log" && return 0; sleep 0.05; done
  echo "FAIL no log line: $1"; cat "$log"; exit 1
}
next_pid() { echo $(( $1 - 1 )) > /proc/sys/kernel/ns_last_pid; }
recorder() { # records any SIGTERM in $D/term.$1, once its trap is set
  ( trap "echo TERM >> $D/term.$1; exit 0" TERM; touch $D/ready.$1
    while :; do sleep 0.05; done ) &
}
trap_set() { # waits for recorder $1's trap
  for _ in $(seq 1 400); do [ -e $D/ready.$1 ] && return 0; sleep 0.01; done
  echo "FAIL recorder $1 not ready"; exit 1
}
applied=1
write() { printf "$@" > $D/new.toml; mv $D/new.toml $D/t.toml; }
config() { # rewrites the config (atomically) and waits for it to be applied
  write "$@"
  applied=$((applied + 1))
  kill -HUP $TD
  for _ in $(seq 1 400); do
    [ "$(grep -c 'configuration applied' "$log" 2>/dev/null)" -ge $applied ] && return 0
    sleep 0.05
  done
  echo "FAIL config not applied"; cat "$log"; exit 1
}
[ -w /proc/sys/kernel/ns_last_pid ] || { echo "SKIP ns_last_pid is not writable"; exit 0; }
J='[[binding]]\nname = "job"\nparent = %s\nchild = %s\ngrace = "1s"\n'

# 1. The next job's launcher at the old launcher's pid.
sleep 300 & P=$!
recorder job1; C1=$!
trap_set job1
write "$J" $P $C1
"$T" "${B[@]}" --config $D/t.toml --state $D/state.json --socket $D/tether.sock 2>>$log & TD=$!
wait_log "ready:"
kill -9 $P; wait $P 2>/dev/null
wait_log "binding \"job\": parent $P exited; sent SIGTERM to child $C1"
wait $C1 2>/dev/null
sleep 0.03
next_pid $P
sleep 300 & P2=$!
[ "$P2" = "$P" ] || { echo "SKIP pid $P could not be reused (got $P2)"; exit 0; }
next_pid $(( C1 + 100 )) # the new captive's pid is not the old one's
recorder job2; C2=$!
trap_set job2
config "$J" $P $C2
sleep 1
if [ -e $D/term.job2 ] || ! kill -0 $C2; then echo "FAIL the new job's captive $C2 was signalled for the old launcher"
else echo "OK the new job's captive is left alone"; fi
kill -9 $P2; wait $P2 2>/dev/null
wait_log "binding \"job\": parent $P exited; sent SIGTERM to child $C2"

# 2. An entry leaves and comes back: its pins come back with it.
sleep 300 & P3=$!
sleep 300 & C3=$!
sleep 300 & K3=$!
S='[[binding]]\nname = "svc"\nparent = %s\nchildren = [%s, %s]\ngrace = "1s"\n'
config "$S" $P3 $C3 $K3
config '# nothing for now\n'
kill -9 $C3; wait $C3 2>/dev/null
sleep 0.03
next_pid $C3
recorder innocent; I3=$!
[ "$I3" = "$C3" ] || { echo "SKIP pid $C3 could not be reused (got $I3)"; exit 0; }
trap_set innocent
config "$S" $P3 $C3 $K3
wait_log "binding \"svc\": child $C3 dropped"
kill -9 $P3; wait $P3 2>/dev/null
wait_log "binding \"svc\": parent $P3 exited; sent SIGTERM to child $K3"
sleep 1.5   # longer than the grace period
if [ -e $D/term.innocent ]; then echo "FAIL innocent $I3 was signalled"
elif kill -0 $I3 2>/dev/null; then echo "OK innocent $I3 alive and unsignalled"
else echo "FAIL innocent $I3 is dead"; fi
kill -TERM $TD; wait $TD
echo "EXIT $?"
"#;

#[test]
fn pins_belong_to_the_config_entry_that_took_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some((stdout, stderr, log)) = reuse_script_output(ENTRY_SCRIPT, dir.path()) else {
        return;
    };
    assert!(!stdout.contains("FAIL"), "{stdout}\n{stderr}\nlog:\n{log}");
    assert_eq!(
        stdout.matches("OK ").count(),
        2,
        "{stdout}\n{stderr}\nlog:\n{log}"
    );
    assert!(stdout.contains("EXIT 0"), "{stdout}\n{stderr}\nlog:\n{log}");
}
