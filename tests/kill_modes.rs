//! Kill modes on a real process tree: `process` signals the bound child
//! only, `group` its process group, `tree` it and its descendants, and
//! none of them reaches a process that escaped by double fork and setsid.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{become_subreaper, binding, wait_until, Proc, TestDaemon, TIMEOUT};

/// The bound child: bash, leader of its own process group, which builds
///
/// - `ignorer`: same group, ignores SIGTERM (only SIGKILL ends it);
/// - `middle` and its child `grandchild`: same group, three levels deep;
/// - `forker`: same group; on SIGTERM it forks `late` (after the first
///   snapshot) and keeps running;
/// - `owngroup`: a descendant in a session and group of its own;
/// - `escapee`: double-forked and setsid before the parent dies, so it is
///   neither a descendant nor in the group any more.
///
/// Each writes `NAME PID` to `pids`; `ready` ends the list.
const TREE: &str = r#"
d=$1
( trap '' TERM; exec sleep 1000 ) & echo "ignorer $!" >> $d/pids
( sleep 1000 & echo "grandchild $!" >> $d/pids; wait ) & echo "middle $!" >> $d/pids
( trap 'sleep 1000 & echo "late $!" >> $d/pids; wait' TERM; sleep 1000 & echo "forkers-sleep $!" >> $d/pids; wait ) & echo "forker $!" >> $d/pids
setsid sleep 1000 & echo "owngroup $!" >> $d/pids
( setsid sleep 1000 & echo "escapee $!" >> $d/pids )
sleep 0.2
echo "ready 0" >> $d/pids
wait
"#;

struct Tree {
    child: Proc,
    pids: HashMap<String, i32>,
    dir: tempfile::TempDir,
}

impl Tree {
    fn start() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("bash")
            .args(["-c", TREE, "tree"])
            .arg(dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut tree = Tree {
            child: Proc::from_child(child),
            pids: HashMap::new(),
            dir,
        };
        assert!(
            wait_until(TIMEOUT, || tree.read().contains_key("ready")),
            "tree not built"
        );
        tree.pids = tree.read();
        tree
    }

    fn read(&self) -> HashMap<String, i32> {
        fs::read_to_string(self.dir.path().join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, pid) = l.split_once(' ')?;
                Some((name.to_owned(), pid.parse().ok()?))
            })
            .collect()
    }

    fn pid(&self, name: &str) -> i32 {
        self.pids[name]
    }

    /// Which of the named processes are still running, from /proc.
    fn running(&self, names: &[&str]) -> Vec<String> {
        let all = self.read();
        names
            .iter()
            .filter(|n| all.get(**n).is_some_and(|&pid| running(pid)))
            .map(|n| (*n).to_owned())
            .collect()
    }

    fn kill_all(&self) {
        for pid in self.read().values().copied().filter(|&p| p > 0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Running: /proc has it and it is not a zombie.
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

const ALL: [&str; 8] = [
    "ignorer",
    "middle",
    "grandchild",
    "forker",
    "forkers-sleep",
    "owngroup",
    "escapee",
    "late",
];

/// Binds a fresh tree with `mode`, kills the parent, waits until only
/// `survivors` run (or the timeout passes) and returns what is still
/// running, plus the tree and the log.
fn run(mode: &str, survivors: &[&str]) -> (Vec<String>, bool, Tree, String) {
    become_subreaper();
    let bystander = Proc::sleeper();
    let mut parent = Proc::sleeper();
    let mut tree = Tree::start();
    let daemon = TestDaemon::start(&binding(
        parent.pid(),
        tree.child.pid(),
        &format!("kill = \"{mode}\"\ngrace = \"1s\""),
    ));
    parent.kill9();
    daemon.wait_log("parent");
    if mode == "process" {
        // Nothing beyond the child is to be signalled: show that nothing
        // was, past the grace period (a sleep that shows an absence).
        std::thread::sleep(Duration::from_millis(1500));
    } else {
        daemon.wait_log("grace 1s over; SIGKILL to everything the binding covers");
        wait_until(TIMEOUT, || tree.running(&ALL) == survivors);
    }
    let alive = tree.running(&ALL);
    let bound_child_alive = tree.child.is_alive();
    let mut bystander = bystander;
    assert!(
        bystander.is_alive(),
        "a process outside the binding was hit"
    );
    let log = daemon.log_text();
    (alive, bound_child_alive, tree, log)
}

#[test]
fn process_mode_signals_only_the_bound_child() {
    let survivors = [
        "ignorer",
        "middle",
        "grandchild",
        "forker",
        "forkers-sleep",
        "owngroup",
        "escapee",
    ];
    let (alive, child_alive, _tree, log) = run("process", &survivors);
    assert!(!child_alive, "{log}");
    assert_eq!(alive, survivors, "{log}");
}

#[test]
fn group_mode_signals_the_childs_process_group() {
    let (alive, child_alive, tree, log) = run("group", &["owngroup", "escapee"]);
    assert!(!child_alive, "{log}");
    // The late process, forked during the grace period, was found at
    // escalation; the own-group member and the escapee are outside the
    // group, the documented limit.
    assert!(
        tree.read().contains_key("late"),
        "the forker did not fork: {log}"
    );
    assert_eq!(alive, ["owngroup", "escapee"], "{log}");
    assert!(
        log.contains(&format!(
            "sent SIGKILL to group member {}",
            tree.pid("ignorer")
        )),
        "{log}"
    );
}

#[test]
fn tree_mode_signals_every_descendant_including_late_ones() {
    let (alive, child_alive, tree, log) = run("tree", &["escapee"]);
    assert!(!child_alive, "{log}");
    assert!(
        tree.read().contains_key("late"),
        "the forker did not fork: {log}"
    );
    // Only the escapee, which left the tree before the parent died, lives.
    assert_eq!(alive, ["escapee"], "{log}");
    assert!(
        log.contains(&format!(
            "sent SIGTERM to descendant {}",
            tree.pid("owngroup")
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "sent SIGKILL to descendant {}",
            tree.pid("ignorer")
        )),
        "{log}"
    );
}

#[test]
fn group_mode_refuses_groups_it_must_not_signal() {
    // A child in the test's (and so the daemon's) own group.
    let parent = Proc::sleeper();
    let same_as_daemon = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(
        parent.pid(),
        same_as_daemon.pid(),
        "kill = \"group\"",
    ));
    daemon.wait_log(&format!(
        "kill = \"group\": child {} is in process group",
        same_as_daemon.pid()
    ));
    assert!(daemon
        .log_text()
        .contains("which contains tetherd itself; binding not held"));

    // A child that shares the parent's group: refused, pointing at "tree".
    let leader = Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let leader_pid = leader.id() as i32;
    let leader = Proc::from_child(leader);
    let member = Command::new("sleep")
        .arg("1000")
        .process_group(leader_pid)
        .spawn()
        .unwrap();
    let member = Proc::from_child(member);
    let (code, _, err) = daemon.ctl(&[
        "bind",
        "--parent",
        &leader.pid().to_string(),
        "--child",
        &member.pid().to_string(),
        "--kill",
        "group",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "child {} shares process group {leader_pid} with its parent, so the captive has no group of its own (use kill = \"tree\")",
            member.pid()
        )),
        "{err}"
    );
}

#[test]
fn every_mode_is_accepted_by_tetherctl_and_shown_by_list() {
    let daemon = TestDaemon::start("");
    let parent = Proc::sleeper();
    for mode in ["process", "group", "tree"] {
        let child = Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let child = Proc::from_child(child);
        let id = daemon.bind(parent.pid(), &[child.pid()], &["--kill", mode]);
        let (_, out, _) = daemon.ctl(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap();
        assert_eq!(entry["kill"], mode);
    }
}
