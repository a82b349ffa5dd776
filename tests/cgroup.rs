//! `kill = "cgroup"` on real processes and real cgroups (root only): what
//! daemonizes, double-forks, ignores SIGTERM or forks during the grace
//! period is held and killed, after the polite signal, and the cgroup is
//! removed; a restart in between; a second cgroup2 mount of the same
//! hierarchy; and the refusals (another user's process, no cgroup v2).
//! Each test uses a `cgroup_root` of its own, removed at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// A cgroup root of the test's own under a cgroup2 mount; on drop every
/// cgroup below it is killed and removed, then the root.
struct CgRoot {
    path: PathBuf,
    /// A mount the test made (unmounted on drop).
    own_mount: Option<PathBuf>,
}

impl CgRoot {
    /// Under the system's cgroup2 mount; `None` (with the reason printed)
    /// without root or cgroup v2.
    fn new(tag: &str) -> Option<CgRoot> {
        if !is_root() {
            eprintln!("skipped: moving processes between cgroups needs root");
            return None;
        }
        let place = match tether::locate_cgroups(None, false) {
            Ok(place) => place,
            Err(why) => {
                eprintln!("skipped: no usable cgroup v2 here: {why}");
                return None;
            }
        };
        let path = place.mount.join(format!(
            "tether-test-{}-{tag}-{}",
            std::process::id(),
            backend_name()
        ));
        Some(CgRoot {
            path,
            own_mount: None,
        })
    }

    fn config(&self) -> String {
        format!(
            "[daemon]\ncgroup_root = {:?}\n",
            self.path.display().to_string()
        )
    }

    /// The binding cgroups (`b<id>`) under the root and its `u<uid>`
    /// parents now.
    fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in std::iter::once(self.path.clone()).chain(self.user_parents()) {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            out.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with('b'))
                    .map(|e| e.path()),
            );
        }
        out.sort();
        out
    }

    /// The users' parents (`u<uid>`) under the root.
    fn user_parents(&self) -> Vec<PathBuf> {
        let Ok(dir) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('u'))
            .map(|e| e.path())
            .collect()
    }

    /// The only binding cgroup, once there is one.
    fn the_cgroup(&self) -> PathBuf {
        assert!(wait_until(TIMEOUT, || self.cgroups().len() == 1));
        self.cgroups().remove(0)
    }
}

impl Drop for CgRoot {
    fn drop(&mut self) {
        for dir in self.cgroups() {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            wait_until(Duration::from_secs(5), || !populated(&dir));
            let _ = fs::remove_dir(&dir);
        }
        for dir in self.user_parents() {
            let _ = fs::remove_dir(&dir);
        }
        let _ = fs::remove_dir(&self.path);
        if let Some(mount) = &self.own_mount {
            let _ = Command::new("umount").arg(mount).status();
            let _ = fs::remove_dir(mount);
        }
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// `NAME PID` lines of a pids file.
fn pids_of(file: &Path) -> Vec<(String, i32)> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ')?;
            Some((name.to_string(), pid.trim().parse().ok()?))
        })
        .collect()
}

/// The captive `tetherctl exec` runs: an escaper (double fork + setsid),
/// a shell that ignores SIGTERM with children, a bounded fork loop that
/// keeps forking through the grace period, nbdkit and socat in their
/// daemonizing modes if installed. Each records SIGTERM in `rec`.
const CAPTIVE: &str = r#"
d=$1
( setsid sh -c 'trap "echo escaper >> $0/rec" TERM; echo "escaper $$" >> $0/pids; while :; do sleep 0.1; done' "$d" & )
sh -c 'trap "echo ignorer >> $0/rec" TERM; sleep 1000 & echo "ignorers-child $!" >> $0/pids; echo "ignorer $$" >> $0/pids; while :; do sleep 0.1; done' "$d" &
sh -c 'trap "echo forker >> $0/rec" TERM; echo "forker $$" >> $0/pids; i=0; while [ $i -lt 1500 ]; do sleep 1 & i=$((i+1)); sleep 0.02; done' "$d" &
if command -v nbdkit >/dev/null; then
  nbdkit -P "$d/nbdkit.pid" --unix "$d/nbd.sock" memory 1M
  # nbdkit's foreground process returns before its daemon writes the pid.
  i=0; while [ ! -s "$d/nbdkit.pid" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
  echo "nbdkit $(cat "$d/nbdkit.pid")" >> "$d/pids"
fi
if command -v socat >/dev/null; then ( socat UNIX-LISTEN:"$d/socat.sock",fork EXEC:cat & echo "socat $!" >> "$d/pids" ) ; fi
echo done > "$d/started"
exec sleep 1000
"#;

/// Runs the captive under `tetherctl exec --kill cgroup` in a launcher
/// shell, SIGKILLs the launcher, and checks: every process of the captive
/// got SIGTERM first (those that record it did), everything in the
/// cgroup is gone after the grace, the cgroup is removed, a bystander
/// outside lives.
fn exec_captive_is_killed_whole(root: &CgRoot) {
    let daemon = TestDaemon::start(&root.config());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display().to_string();
    let mut bystander = Proc::sleeper();
    let socket = daemon.socket.display().to_string();
    let launcher_script =
        "\"$0\" --socket \"$1\" exec --kill cgroup --grace 2s -- sh -c \"$2\" captive \"$3\"; :";
    let child = Command::new("sh")
        .arg("-c")
        .arg(launcher_script)
        .arg(TETHERCTL)
        .arg(&socket)
        .arg(CAPTIVE)
        .arg(&d)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut launcher = Proc::from_child(child);
    let started = tmp.path().join("started");
    assert!(
        wait_until(TIMEOUT, || started.exists()),
        "the captive did not start; log:\n{}",
        daemon.log_text()
    );
    let names = ["escaper", "ignorer", "ignorers-child", "forker"];
    assert!(wait_until(TIMEOUT, || {
        let pids = pids_of(&tmp.path().join("pids"));
        names.iter().all(|n| pids.iter().any(|(m, _)| m == n))
    }));
    let pids = pids_of(&tmp.path().join("pids"));
    if !pids.iter().any(|(name, _)| name == "nbdkit") {
        eprintln!("note: nbdkit is not installed; the captive runs without it");
    }
    let dir = root.the_cgroup();
    let inside = procs(&dir);
    for (name, pid) in &pids {
        assert!(
            inside.contains(pid),
            "{name} {pid} is not in {}: {inside:?}",
            dir.display()
        );
    }
    assert!(!inside.contains(&bystander.pid()));

    launcher.kill9();
    assert!(
        wait_until(TIMEOUT, || !dir.exists()),
        "cgroup {} not removed; log:\n{}",
        dir.display(),
        daemon.log_text()
    );
    for (name, pid) in &pids {
        assert!(wait_until(TIMEOUT, || ended(*pid)), "{name} {pid} survived");
    }
    let rec = fs::read_to_string(tmp.path().join("rec")).unwrap_or_default();
    for name in ["escaper", "ignorer", "forker"] {
        assert!(
            rec.lines().any(|l| l == name),
            "{name} did not get SIGTERM before it was killed: {rec:?}"
        );
    }
    let log = daemon.log_text();
    assert!(log.contains("processes of its cgroup"), "{log}");
    assert!(log.contains("killed"), "{log}");
    assert!(bystander.is_alive());
}

/// `tetherctl exec --kill cgroup` in the layout of this host (hybrid or
/// unified, found from /proc/self/mountinfo).
#[test]
fn exec_cgroup_holds_every_escaper_and_kills_it_after_the_polite_signal() {
    let Some(root) = CgRoot::new("exec") else {
        return;
    };
    exec_captive_is_killed_whole(&root);
}

/// The same with the cgroups under a cgroup2 mount the test makes itself
/// (the hierarchy is one per system, so it shows the same tree at another
/// place): the mount `cgroup_root` is under is found, and membership read
/// from /proc/PID/cgroup matches.
#[test]
fn exec_cgroup_works_under_a_second_cgroup2_mount() {
    let Some(mut root) = CgRoot::new("mount") else {
        return;
    };
    let mount = std::env::temp_dir().join(format!("tether-cg2-{}", std::process::id()));
    fs::create_dir_all(&mount).unwrap();
    // The mount options (nsdelegate, favordynmods, ...) belong to the
    // hierarchy: a mount without the host's would turn them off for it.
    let options = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" - cgroup2 ").map(|(_, r)| r.to_string()))
        .find_map(|r| r.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "rw".into());
    let ok = Command::new("mount")
        .args(["-t", "cgroup2", "-o", &options, "none"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = fs::remove_dir(&mount);
        eprintln!("skipped: cannot mount cgroup2 at {}", mount.display());
        return;
    }
    root.path = mount.join(root.path.file_name().unwrap());
    root.own_mount = Some(mount);
    exec_captive_is_killed_whole(&root);
}

/// A child bound with `tetherctl bind --kill cgroup` (its descendant is
/// moved in too) survives a restart of tetherd with its cgroup: a parent
/// that died while tetherd was down is acted on at start, one that dies
/// after the restart later; an empty stray `b<id>` is removed at start.
#[test]
fn cgroup_bindings_survive_a_restart() {
    let Some(root) = CgRoot::new("restart") else {
        return;
    };
    let mut daemon = TestDaemon::start(&root.config());
    let tmp = tempfile::tempdir().unwrap();
    let child = |name: &str| {
        let script = format!(
            "trap 'echo {name} >> {d}/rec' TERM; sleep 1000 & echo \"{name}-sleep $!\" >> {d}/pids; while :; do sleep 0.1; done",
            d = tmp.path().display()
        );
        Proc::sh(&script)
    };
    let (mut parent_a, mut child_a) = (Proc::sleeper(), child("a"));
    let (mut parent_b, mut child_b) = (Proc::sleeper(), child("b"));
    assert!(wait_until(TIMEOUT, || pids_of(&tmp.path().join("pids"))
        .len()
        == 2));
    let pids = pids_of(&tmp.path().join("pids"));
    let id_a = daemon.bind(
        parent_a.pid(),
        &[child_a.pid()],
        &["--kill", "cgroup", "--grace", "1s"],
    );
    let id_b = daemon.bind(
        parent_b.pid(),
        &[child_b.pid()],
        &["--kill", "cgroup", "--grace", "1s"],
    );
    let dir_a = root.path.join(format!("b{id_a}"));
    let dir_b = root.path.join(format!("b{id_b}"));
    for (dir, child, name) in [(&dir_a, &child_a, "a-sleep"), (&dir_b, &child_b, "b-sleep")] {
        let inside = procs(dir);
        assert!(inside.contains(&child.pid()), "{inside:?}");
        let sleep = pids.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(
            inside.contains(&sleep),
            "descendant {sleep} not moved: {inside:?}"
        );
    }
    let stray = root.path.join("b999999");
    fs::create_dir(&stray).unwrap();

    daemon.stop();
    parent_a.kill9();
    daemon.spawn(None);
    child_a.expect_signal(Some(9), &daemon);
    assert!(
        wait_until(TIMEOUT, || !dir_a.exists()),
        "{}",
        daemon.log_text()
    );
    assert!(
        wait_until(TIMEOUT, || !stray.exists()),
        "{}",
        daemon.log_text()
    );
    assert!(dir_b.exists() && populated(&dir_b));
    assert!(child_b.is_alive());

    parent_b.kill9();
    child_b.expect_signal(Some(9), &daemon);
    assert!(
        wait_until(TIMEOUT, || !dir_b.exists()),
        "{}",
        daemon.log_text()
    );
    for (name, pid) in pids {
        assert!(wait_until(TIMEOUT, || ended(pid)), "{name} {pid} survived");
    }
    let rec = fs::read_to_string(tmp.path().join("rec")).unwrap_or_default();
    assert!(rec.contains('a') && rec.contains('b'), "{rec:?}");
}

/// By default a plain user may not make a cgroup binding at all (it
/// would take their processes out of their slice and its limits): a
/// typed refusal naming the setting, and nothing moved or made.
#[test]
fn a_users_cgroup_binding_is_refused_by_default() {
    let Some((uid, gid)) = root_and_test_user("to bind as another user") else {
        return;
    };
    let Some(root) = CgRoot::new("userdefault") else {
        return;
    };
    let daemon = TestDaemon::start(&root.config());
    let user_parent = users_sleeper(uid, gid);
    let users_child = users_sleeper(uid, gid);
    let before = fs::read_to_string(format!("/proc/{}/cgroup", users_child.pid())).unwrap();
    let (code, _, err) = ctl_as(
        uid,
        gid,
        &daemon,
        &[
            "bind",
            "--parent",
            &user_parent.pid().to_string(),
            "--child",
            &users_child.pid().to_string(),
            "--kill",
            "cgroup",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("user_cgroups = true"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(root.cgroups().is_empty(), "{:?}", root.cgroups());
    let after = fs::read_to_string(format!("/proc/{}/cgroup", users_child.pid())).unwrap();
    assert_eq!(before, after);
    let (_, list, _) = ctl_as(uid, gid, &daemon, &["list"]);
    assert!(!list.contains(&users_child.pid().to_string()), "{list}");
}

/// With `user_cgroups = true`, a plain user may not put root's process
/// into a cgroup: refused, and no cgroup is left behind. The user's own
/// captive is held in `u<uid>/b<id>`, and killed through the freezer
/// with each member checked against the user.
#[test]
fn a_user_may_put_only_their_own_processes_into_a_cgroup() {
    let Some((uid, gid)) = root_and_test_user("to bind as another user") else {
        return;
    };
    let Some(root) = CgRoot::new("user") else {
        return;
    };
    let daemon = TestDaemon::start(&format!("{}user_cgroups = true\n", root.config()));
    let user_parent = users_sleeper(uid, gid);
    let roots_child = Proc::sleeper();
    let before = fs::read_to_string(format!("/proc/{}/cgroup", roots_child.pid())).unwrap();
    let (code, _, err) = ctl_as(
        uid,
        gid,
        &daemon,
        &[
            "bind",
            "--parent",
            &user_parent.pid().to_string(),
            "--child",
            &roots_child.pid().to_string(),
            "--kill",
            "cgroup",
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(root.cgroups().is_empty(), "{:?}", root.cgroups());
    let after = fs::read_to_string(format!("/proc/{}/cgroup", roots_child.pid())).unwrap();
    assert_eq!(before, after);

    // The user's own captive: a TERM-ignoring shell and its child.
    let mut user_parent = user_parent;
    let child = as_user(
        uid,
        gid,
        &[
            "sh",
            "-c",
            "trap '' TERM; sleep 1000 & while :; do sleep 0.1; done",
        ],
    )
    .spawn()
    .unwrap();
    let mut child = Proc::from_child(child);
    assert!(wait_until(TIMEOUT, || comm(child.pid()) == "sh"));
    let (code, out, err) = ctl_as(
        uid,
        gid,
        &daemon,
        &[
            "bind",
            "--parent",
            &user_parent.pid().to_string(),
            "--child",
            &child.pid().to_string(),
            "--kill",
            "cgroup",
            "--grace",
            "500ms",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let dir = root.path.join(format!("u{uid}/b{}", out.trim()));
    // `list` shows where the captive is held.
    let (_, list, _) = ctl_as(uid, gid, &daemon, &["list"]);
    assert!(
        list.lines().next().unwrap_or("").ends_with("CGROUP"),
        "{list}"
    );
    assert!(list.contains(&dir.display().to_string()), "{list}");
    let (_, json, _) = ctl_as(uid, gid, &daemon, &["list", "--json"]);
    assert!(
        json.contains(&format!("\"cgroup\": \"{}\"", dir.display())),
        "{json}"
    );
    // The parent, the child and the cgroup count against the user's budget.
    let (_, status, _) = ctl_as(uid, gid, &daemon, &["status"]);
    assert!(status.contains("processes:    3 held"), "{status}");
    assert!(
        wait_until(TIMEOUT, || procs(&dir).len() >= 2),
        "{:?}",
        procs(&dir)
    );
    user_parent.kill9();
    child.expect_signal(Some(9), &daemon);
    assert!(
        wait_until(TIMEOUT, || !dir.exists()),
        "{}",
        daemon.log_text()
    );
    daemon.wait_log("of its frozen cgroup");
}

/// Where cgroup v2 cannot be used (`cgroup_root` outside any cgroup2
/// mount), `kill = "cgroup"` is refused with the reason, and `status`
/// says so.
#[test]
fn cgroup_is_refused_with_the_reason_where_it_is_not_available() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("not-a-cgroup");
    let daemon = TestDaemon::start(&format!(
        "[daemon]\ncgroup_root = {:?}\n",
        root.display().to_string()
    ));
    let parent = Proc::sleeper();
    let child = Proc::sleeper();
    let (code, _, err) = daemon.ctl(&[
        "bind",
        "--parent",
        &parent.pid().to_string(),
        "--child",
        &child.pid().to_string(),
        "--kill",
        "cgroup",
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("kill = \"cgroup\" is not available"), "{err}");
    assert!(!root.exists());
    let (_, out, _) = daemon.ctl(&["status"]);
    assert!(out.contains("cgroup:       not available"), "{out}");
}

/// A configured binding gets a new id, so a new cgroup, at each start:
/// the cgroup its child is found in (left by the same binding before the
/// restart) is adopted whole, with what daemonized out of the child's
/// tree meanwhile, and removed.
#[test]
fn a_configured_binding_adopts_its_cgroup_from_before_a_restart() {
    let Some(root) = CgRoot::new("config") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display().to_string();
    let parent = Proc::sleeper();
    // The child double-forks an escaper once told to, after the bind.
    let mut child = Proc::sh(&format!(
        "while [ ! -e {d}/go ]; do sleep 0.05; done; ( setsid sh -c 'echo \"escaper $$\" >> {d}/pids; exec sleep 1000' & ); exec sleep 1000"
    ));
    let config = format!(
        "{}{}",
        root.config(),
        binding(
            parent.pid(),
            child.pid(),
            "kill = \"cgroup\"\ngrace = \"1s\""
        )
    );
    let mut daemon = TestDaemon::start(&config);
    let first = root.the_cgroup();
    assert!(procs(&first).contains(&child.pid()));
    fs::write(tmp.path().join("go"), "").unwrap();
    assert!(wait_until(TIMEOUT, || !pids_of(&tmp.path().join("pids")).is_empty()));
    let escaper = pids_of(&tmp.path().join("pids"))[0].1;
    assert!(wait_until(TIMEOUT, || procs(&first).contains(&escaper)));

    daemon.stop();
    daemon.spawn(None);
    assert!(
        wait_until(TIMEOUT, || !first.exists()),
        "{}",
        daemon.log_text()
    );
    let second = root.the_cgroup();
    assert_ne!(first, second);
    let inside = procs(&second);
    assert!(
        inside.contains(&child.pid()) && inside.contains(&escaper),
        "{inside:?}"
    );

    let mut parent = parent;
    parent.kill9();
    child.expect_signal(Some(15), &daemon);
    assert!(
        wait_until(TIMEOUT, || ended(escaper)),
        "escaper {escaper} survived"
    );
    assert!(
        wait_until(TIMEOUT, || !second.exists()),
        "{}",
        daemon.log_text()
    );
}

/// One tetherd per cgroup root: the names `b<id>` are each daemon's own
/// ids, so a second daemon on the same root refuses `kill = "cgroup"`
/// (and sweeps nothing), with the reason in `status`.
#[test]
fn a_second_daemon_does_not_share_a_cgroup_root() {
    let Some(root) = CgRoot::new("lock") else {
        return;
    };
    let first = TestDaemon::start(&root.config());
    let second = TestDaemon::start(&root.config());
    let (_, out, _) = first.ctl(&["status"]);
    assert!(out.contains("cgroup:       available"), "{out}");
    let (_, out, _) = second.ctl(&["status"]);
    assert!(
        out.contains("another tetherd uses the cgroup root"),
        "{out}"
    );
    drop(first);
    drop(second);
}

/// With `exec`, the command is in the binding's cgroup from its first
/// instruction: the first thing it reads, its own /proc/self/cgroup,
/// already names the cgroup.
#[test]
fn exec_runs_the_command_inside_its_cgroup_from_the_start() {
    let Some(root) = CgRoot::new("first") else {
        return;
    };
    let daemon = TestDaemon::start(&root.config());
    let (code, out, err) =
        daemon.ctl(&["exec", "--kill", "cgroup", "--", "cat", "/proc/self/cgroup"]);
    assert_eq!(code, 0, "{err}");
    let name = root.path.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        out.lines()
            .any(|l| l.starts_with("0::/") && l.ends_with(&format!("{name}/b1"))),
        "{out}"
    );
    assert!(
        wait_until(TIMEOUT, || root.cgroups().is_empty()),
        "{}",
        daemon.log_text()
    );
}

/// A user's cgroup (`u<uid>/b<id>`, with `user_cgroups = true`) is found
/// again after a restart, and a stray empty `b<id>` under the user's
/// parent is removed at start while the parent stays.
#[test]
fn a_users_cgroup_survives_a_restart_and_strays_under_the_user_are_swept() {
    let Some((uid, gid)) = root_and_test_user("to bind as another user") else {
        return;
    };
    let Some(root) = CgRoot::new("userrestart") else {
        return;
    };
    let mut daemon = TestDaemon::start(&format!("{}user_cgroups = true\n", root.config()));
    let mut parent = users_sleeper(uid, gid);
    let mut child = users_sleeper(uid, gid);
    let (code, out, err) = ctl_as(
        uid,
        gid,
        &daemon,
        &[
            "bind",
            "--parent",
            &parent.pid().to_string(),
            "--child",
            &child.pid().to_string(),
            "--kill",
            "cgroup",
            "--grace",
            "500ms",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let user_dir = root.path.join(format!("u{uid}"));
    let dir = user_dir.join(format!("b{}", out.trim()));
    assert!(procs(&dir).contains(&child.pid()), "{:?}", procs(&dir));
    let stray = user_dir.join("b999999");
    fs::create_dir(&stray).unwrap();

    daemon.stop();
    daemon.spawn(None);
    assert!(
        wait_until(TIMEOUT, || !stray.exists()),
        "{}",
        daemon.log_text()
    );
    assert!(user_dir.exists() && populated(&dir));
    parent.kill9();
    child.expect_signal(Some(15), &daemon);
    assert!(
        wait_until(TIMEOUT, || !dir.exists()),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn a_cgroup_bindings_signals_show_in_the_events_and_the_delay_histogram() {
    let Some(root) = CgRoot::new("events") else {
        return;
    };
    let daemon = TestDaemon::start(&root.config());
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let id = daemon.bind(
        parent.pid(),
        &[child.pid()],
        &["--kill", "cgroup", "--name", "cg-events"],
    );
    let (_, held, _) = daemon.ctl(&["metrics"]);
    let gauge = held
        .lines()
        .find(|l| l.starts_with("tether_bindings{") && l.contains("kill=\"cgroup\""));
    assert!(gauge.is_some_and(|l| l.ends_with(" 1")), "{held}");
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
    let mut events: Vec<serde_json::Value> = Vec::new();
    let seen = wait_until(TIMEOUT, || {
        let (code, out, _) = daemon.ctl(&["events", "--json"]);
        assert_eq!(code, 0);
        events = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["binding"]["id"] == id)
            .collect();
        events.iter().any(|e| e["kind"] == "unbound")
    });
    assert!(seen, "{events:?}\n{}", daemon.log_text());
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    let at = |kind: &str| kinds.iter().position(|k| *k == kind);
    assert!(
        at("bound") < at("parent_exited") && at("parent_exited") < at("signalled"),
        "{kinds:?}"
    );
    let signalled = events.iter().find(|e| e["kind"] == "signalled").unwrap();
    assert_eq!(signalled["pid"], child.pid(), "{signalled}");
    assert_eq!(signalled["signal"], "SIGTERM", "{signalled}");
    let (code, metrics, _) = daemon.ctl(&["metrics"]);
    assert_eq!(code, 0);
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tether_exit_to_signal_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(count, Some(1), "{metrics}");
}
