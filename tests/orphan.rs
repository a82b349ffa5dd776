//! What happens to bound children when their parent exits.

use std::time::{Duration, Instant};

use crate::util::{binding, Proc, TestDaemon};

const SIGTERM: Option<i32> = Some(libc::SIGTERM);
const SIGKILL: Option<i32> = Some(libc::SIGKILL);

#[test]
fn child_gets_sigterm_when_parent_is_sigkilled() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "name = \"web\""));
    parent.kill9();
    child.expect_signal(SIGTERM, &daemon);
    daemon.wait_log(&format!(
        "binding \"web\": parent {} exited; sent SIGTERM to child {}",
        parent.pid(),
        child.pid()
    ));
}

#[test]
fn configured_signal_is_the_one_sent() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "signal = \"int\""));
    parent.kill9();
    child.expect_signal(Some(libc::SIGINT), &daemon);
}

#[test]
fn child_ignoring_sigterm_gets_sigkill_after_grace() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::term_ignorer();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "grace = \"1s\""));
    let killed_at = Instant::now();
    parent.kill9();
    daemon.wait_log("sent SIGTERM");
    child.expect_signal(SIGKILL, &daemon);
    let took = killed_at.elapsed();
    // The SIGKILL comes at about `grace`: not before it, and well before
    // the default of 5s.
    assert!(
        took >= Duration::from_millis(950),
        "SIGKILL came early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "SIGKILL came late: {took:?}");
    daemon.wait_log(&format!(
        "grace 1s over; sent SIGKILL to child {}",
        child.pid()
    ));
}

#[test]
fn grace_never_does_not_escalate() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::term_ignorer();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "grace = \"never\""));
    parent.kill9();
    daemon.wait_log("SIGKILL will not follow");
    // A binding with grace 1s would have escalated by now.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.is_alive(),
        "child was killed; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(daemon.count("SIGKILL to child"), 0);
}

#[test]
fn child_exiting_first_ends_the_binding() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let config = format!(
        "[daemon]\nlog = \"debug\"\n{}",
        binding(parent.pid(), child.pid(), "")
    );
    let daemon = TestDaemon::start(&config);
    child.kill9();
    daemon.wait_log(&format!("child {} exited before the parent", child.pid()));
    daemon.wait_log("done");
    parent.kill9();
    // The parent's exit is no longer watched: no signal is sent, and the
    // daemon logs nothing about it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.count("sent SIGTERM"),
        0,
        "log:\n{}",
        daemon.log_text()
    );
    assert_eq!(daemon.count(&format!("parent {} exited", parent.pid())), 0);
}

#[test]
fn parent_already_dead_at_load_acts_at_once() {
    let mut parent = Proc::sleeper();
    let parent_pid = parent.pid();
    parent.kill9();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent_pid, child.pid(), ""));
    child.expect_signal(SIGTERM, &daemon);
    daemon.wait_log(&format!("parent {parent_pid} is gone at load"));
}

#[test]
fn every_child_of_a_binding_is_signalled() {
    let mut parent = Proc::sleeper();
    let mut children: Vec<Proc> = (0..3).map(|_| Proc::sleeper()).collect();
    let list: Vec<String> = children.iter().map(|c| c.pid().to_string()).collect();
    let config = format!(
        "[[binding]]\nparent = {}\nchildren = [{}]\n",
        parent.pid(),
        list.join(", ")
    );
    let daemon = TestDaemon::start(&config);
    parent.kill9();
    for child in &mut children {
        child.expect_signal(SIGTERM, &daemon);
    }
}

#[test]
fn two_bindings_on_one_parent_both_fire() {
    let mut parent = Proc::sleeper();
    let mut a = Proc::sleeper();
    let mut b = Proc::sleeper();
    let config = binding(parent.pid(), a.pid(), "") + &binding(parent.pid(), b.pid(), "");
    let daemon = TestDaemon::start(&config);
    parent.kill9();
    a.expect_signal(SIGTERM, &daemon);
    b.expect_signal(SIGTERM, &daemon);
}

#[test]
fn parent_exiting_normally_also_fires() {
    // A parent that exits on its own (status 0) is as gone as a killed one.
    // It waits on a fifo, so it exits when the test says, not before.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut parent = Proc::sh(&format!("read x < {}; exit 0", fifo.display()));
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
    std::fs::write(&fifo, "go\n").unwrap();
    child.expect_signal(SIGTERM, &daemon);
    assert_eq!(parent.try_status().and_then(|s| s.code()), Some(0));
    daemon.wait_log(&format!("parent {} exited", parent.pid()));
}

#[test]
fn wrong_child_pin_drops_the_child_unsignalled() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let wrong = child.start_time() + 1;
    let daemon = TestDaemon::start(&binding(
        parent.pid(),
        child.pid(),
        &format!("child_start = {wrong}"),
    ));
    daemon.wait_log(&format!(
        "child {} dropped, it will never be signalled",
        child.pid()
    ));
    parent.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.is_alive(),
        "a mismatched child was signalled; log:\n{}",
        daemon.log_text()
    );
}

#[test]
fn wrong_parent_pin_counts_as_parent_exited() {
    let parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let wrong = parent.start_time() + 1;
    let daemon = TestDaemon::start(&binding(
        parent.pid(),
        child.pid(),
        &format!(
            "parent_start = {wrong}\nchild_start = {}",
            child.start_time()
        ),
    ));
    child.expect_signal(SIGTERM, &daemon);
    daemon.wait_log("so it is another process");
}

#[test]
fn right_pins_are_accepted() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(
        parent.pid(),
        child.pid(),
        &format!(
            "parent_start = {}\nchild_start = {}",
            parent.start_time(),
            child.start_time()
        ),
    ));
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.is_alive());
    parent.kill9();
    child.expect_signal(SIGTERM, &daemon);
}

#[test]
fn wrong_inode_pin_drops_the_child_where_pidfs_exists() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "child_inode = 1"));
    let log = daemon.log_text();
    if log.contains("needs pidfs") {
        eprintln!(
            "skipped: no pidfs here (Linux 6.9+ and the pidfd backend), inode pins are refused"
        );
        assert!(log.contains("binding not held"));
        return;
    }
    daemon.wait_log("its pidfs inode is");
    parent.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.is_alive(), "log:\n{log}");
}
