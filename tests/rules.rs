//! `[[rule]]`: processes bound as they start, by their executable and
//! their launcher's, with no pid in the configuration and no wrapper.
//! Every test runs real launchers (copies of bash) that fork and exec a
//! copy of `sleep` (or of bash) under the test's own directory, and needs
//! root (fanotify, the process connector).

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// Copies `from` (found on PATH) to `dir/name`, executable.
fn copy_program(from: &str, dir: &Path, name: &str) -> PathBuf {
    let source = ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(from))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{from} not found"));
    let to = dir.join(name);
    fs::copy(&source, &to).expect("copy program");
    to
}

/// A directory for the programs of one test, with a launcher (bash) and
/// a captive (sleep) in it.
struct Programs {
    dir: tempfile::TempDir,
    launcher: PathBuf,
    captive: PathBuf,
}

impl Programs {
    fn new() -> Programs {
        let dir = tempfile::tempdir().expect("tempdir");
        let launcher = copy_program("bash", dir.path(), "launcher");
        let captive = copy_program("sleep", dir.path(), "captive");
        Programs {
            dir,
            launcher,
            captive,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `shell -c script` (the launcher copy, or another shell), with
    /// `$D` the programs' directory.
    fn run(&self, shell: &Path, script: &str) -> Proc {
        let child = crate::util::spawn_copied(
            Command::new(shell)
                .arg("-c")
                .arg(script)
                .env("D", self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        );
        Proc::from_child(child)
    }

    /// Starts `shell` forking a captive (`sleep 1000`) that writes its pid
    /// to `pidfile`; returns the launcher and the captive's pid.
    fn launch(&self, shell: &Path, pidfile: &str) -> (Proc, i32) {
        let launcher = self.run(
            shell,
            &format!("\"$D/captive\" 1000 & echo $! > \"$D/{pidfile}.tmp\"; mv \"$D/{pidfile}.tmp\" \"$D/{pidfile}\"; wait"),
        );
        let pid = read_pid(&self.path(pidfile));
        (launcher, pid)
    }

    /// The rule binding `captive` to `launcher`, with `extra` lines.
    fn rule(&self, extra: &str) -> String {
        format!(
            "[[rule]]\nname = \"sleepers\"\nexec = \"{}/capt*\"\nlauncher = \"{}\"\nsignal = \"HUP\"\ngrace = \"2s\"\n{extra}\n",
            self.dir.path().display(),
            self.launcher.display()
        )
    }
}

/// Waits for `path` to hold a pid.
fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    wait_until(TIMEOUT, || {
        pid = fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("{} never held a pid", path.display()))
}

/// The executable `pid` runs ("" once it is gone).
fn exe(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn needs_root() -> bool {
    if !is_root() {
        eprintln!("skipped: rules need root (fanotify, the process connector)");
        return false;
    }
    true
}

/// The launcher nobody wrapped is SIGKILLed: its captive gets the rule's
/// signal. The same executable started by another shell is left alone,
/// and `list` and `status` show the rule.
#[test]
fn a_rule_binds_a_captive_to_its_launcher_and_signals_it_when_the_launcher_dies() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let daemon = TestDaemon::start(&programs.rule(""));
    let (mut launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    daemon.wait_log(&format!(
        "pid {captive} bound to its launcher {}",
        launcher.pid()
    ));
    let (_, list, _) = daemon.ctl(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&format!("sleepers:{captive}")) && l.contains("rule:sleepers")),
        "{list}"
    );

    // The same captive under a shell the rule does not name.
    let (mut other, stranger) = programs.launch(Path::new("/bin/sh"), "stranger.pid");
    let (_, status, _) = daemon.ctl(&["status"]);
    assert!(status.contains("rule source:  fanotify"), "{status}");
    assert!(status.contains("sleepers (1 matched)"), "{status}");

    launcher.kill9();
    assert_eq!(
        reap(captive, TIMEOUT),
        Some(Signal::SIGHUP as i32),
        "captive {captive} did not get SIGHUP; log:\n{}",
        daemon.log_text()
    );
    other.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        exists(stranger) && !ended(stranger),
        "the stranger's captive was signalled; log:\n{}",
        daemon.log_text()
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(stranger), Signal::SIGKILL);
    reap(stranger, TIMEOUT);
}

/// An exec of a program no rule names never involves tetherd: it runs at
/// once even while tetherd is stopped.
#[test]
fn an_unrelated_exec_never_waits_for_tetherd() {
    if !needs_root() {
        return;
    }
    let programs = Programs::new();
    let daemon = TestDaemon::start(&programs.rule(""));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let status = Command::new("/bin/true").status().unwrap();
    let took = started.elapsed();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), Signal::SIGCONT).unwrap();
    assert!(status.success());
    assert!(
        took < Duration::from_secs(1),
        "/bin/true took {took:?} with tetherd stopped"
    );
}

/// The binding exists before the captive's first instruction: a captive
/// whose first act is to SIGKILL its launcher, then fork, is still caught,
/// with its descendant (`kill = "tree"`). Only fanotify can promise this.
#[test]
fn a_captive_that_kills_its_launcher_and_forks_at_once_loses_no_descendant() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    // The captive is a copy of bash this time.
    let captive_shell = copy_program("bash", programs.dir.path(), "captive-sh");
    let config = format!(
        "[[rule]]\nname = \"quick\"\nexec = \"{}\"\nlauncher = \"{}\"\nkill = \"tree\"\ngrace = \"1s\"\n",
        captive_shell.display(),
        programs.launcher.display()
    );
    let daemon = TestDaemon::start(&config);
    let mut launcher = programs.run(
        &programs.launcher,
        "\"$D/captive-sh\" -c 'trap \"\" TERM; echo $$ > \"$D/captive.tmp\"; mv \"$D/captive.tmp\" \"$D/captive.pid\"; kill -9 $PPID; sleep 1000 & echo $! > \"$D/grandchild.tmp\"; mv \"$D/grandchild.tmp\" \"$D/grandchild\"; wait' & wait",
    );
    let captive = read_pid(&programs.path("captive.pid"));
    assert_eq!(launcher.wait_signal(TIMEOUT), Some(libc::SIGKILL));
    let grandchild = read_pid(&programs.path("grandchild"));
    // Both end (the child may be reaped by the captive itself).
    let both = wait_until(TIMEOUT, || ended(captive) && ended(grandchild));
    assert!(
        both,
        "captive {captive} or its child {grandchild} still runs; log:\n{}",
        daemon.log_text()
    );
    reap(captive, TIMEOUT);
    daemon.wait_log(&format!("pid {captive} bound to its launcher"));
}

/// tetherd stopped while a matching exec waits, then SIGKILLed: the exec
/// completes as soon as tetherd is gone (the kernel allows the pending
/// events of a closed group).
#[test]
fn an_exec_pending_when_tetherd_is_killed_completes() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let mut daemon = TestDaemon::start(&programs.rule(""));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), Signal::SIGSTOP).unwrap();
    let (_launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    // The exec waits for the stopped daemon: the process still runs the
    // launcher's image.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        exe(captive),
        programs.launcher.display().to_string(),
        "the exec did not wait for tetherd"
    );
    let killed_at = Instant::now();
    daemon.stop_with(Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(2), || exe(captive)
            == programs.captive.display().to_string()),
        "the exec was still pending {:?} after tetherd was killed",
        killed_at.elapsed()
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(captive), Signal::SIGKILL);
    reap(captive, TIMEOUT);
}

/// Reload adds a rule (execs from then on are bound), removes it (they are
/// not), and refuses a rule whose executable does not exist, saying why.
#[test]
fn reload_adds_and_removes_rules_and_refuses_a_missing_executable() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let daemon = TestDaemon::start("");
    let (_l1, unbound) = programs.launch(&programs.launcher, "1.pid");

    daemon.reload(&programs.rule(""));
    daemon.wait_log("rules: 1 added, 0 removed, 0 unchanged");
    let (_l2, bound) = programs.launch(&programs.launcher, "2.pid");
    daemon.wait_log(&format!("pid {bound} bound to its launcher"));

    daemon.reload("");
    daemon.wait_log("rules: 0 added, 1 removed, 0 unchanged");
    let (_, status, _) = daemon.ctl(&["status"]);
    assert!(!status.contains("rule source"), "{status}");
    let (_l3, after) = programs.launch(&programs.launcher, "3.pid");
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log_text();
    for pid in [unbound, after] {
        assert!(!log.contains(&format!("pid {pid} bound")), "{log}");
    }

    let missing = format!(
        "[[rule]]\nname = \"ghost\"\nexec = \"{}/no-such-*\"\n",
        programs.dir.path().display()
    );
    daemon.reload(&missing);
    daemon.wait_log("reload refused");
    daemon.wait_log(&format!(
        "rule \"ghost\": exec: no executable file matches \"{}/no-such-*\"",
        programs.dir.path().display()
    ));
    for pid in [unbound, bound, after] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        reap(pid, TIMEOUT);
    }
}

/// Rules exist only in the configuration file: the socket has no rule
/// operation, and a bind request carrying a rule's fields is refused.
#[test]
fn clients_cannot_add_rules_over_the_socket() {
    let daemon = TestDaemon::start("");
    let child = Proc::sleeper();
    for request in [
        "{\"v\":1,\"op\":\"rule\",\"name\":\"x\",\"exec\":\"/bin/sleep\"}\n".to_string(),
        format!(
            "{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{}}},\"children\":[{{\"pid\":{}}}],\"exec\":\"/bin/sleep\"}}\n",
            std::process::id(),
            child.pid()
        ),
    ] {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["ok"], false, "{request} -> {line}");
    }
    let (_, list, _) = daemon.ctl(&["list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
}

/// `rule_source = "connector"`: execs are learnt after the fact from the
/// process connector, and the binding still holds.
#[test]
fn the_connector_fallback_binds_after_the_exec() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let daemon = TestDaemon::start(&format!(
        "[daemon]\nrule_source = \"connector\"\n{}",
        programs.rule("")
    ));
    let (_, status, _) = daemon.ctl(&["status"]);
    assert!(status.contains("rule source:  connector"), "{status}");
    let (mut launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    daemon.wait_log(&format!(
        "pid {captive} bound to its launcher {}",
        launcher.pid()
    ));
    daemon.wait_log("after its exec");
    launcher.kill9();
    assert_eq!(
        reap(captive, TIMEOUT),
        Some(Signal::SIGHUP as i32),
        "log:\n{}",
        daemon.log_text()
    );
}

/// The issue's case: an unwrapped Python launcher runs `sh`, which starts
/// a copy of `qemu-system-x86_64`; the rule names the qemu glob and the
/// Python interpreter as the nearest matching ancestor. SIGKILL to Python:
/// qemu gets the rule's SIGTERM and exits.
#[test]
fn a_python_launcher_two_levels_up_takes_its_qemu_with_it() {
    if !needs_root() {
        return;
    }
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let modules = Path::new("/usr/lib/x86_64-linux-gnu/qemu");
    let python = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let Some(python) = python.filter(|_| qemu.exists()) else {
        eprintln!("skipped: needs python3 and /usr/bin/qemu-system-x86_64");
        return;
    };
    become_subreaper();
    let programs = Programs::new();
    fs::copy(qemu, programs.path("qemu-system-x86_64")).unwrap();
    let daemon = TestDaemon::start(&format!(
        "[[rule]]\nname = \"appliances\"\nexec = \"{}/qemu-system-*\"\nlauncher = \"{python}\"\nlauncher_match = \"ancestor\"\n",
        programs.dir.path().display()
    ));
    let script = r#"
import os, subprocess, sys, time
d = os.environ["D"]
subprocess.Popen(["/bin/sh", "-c",
    '"$D/qemu-system-x86_64" -machine none -nodefaults -display none -S -monitor none -serial none & '
    'echo $! > "$D/qemu.tmp"; mv "$D/qemu.tmp" "$D/qemu.pid"; wait'])
time.sleep(1000)
"#;
    let child = Command::new(&python)
        .args(["-c", script])
        .env("D", programs.dir.path())
        .env("QEMU_MODULE_DIR", modules)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut launcher = Proc::from_child(child);
    let qemu_pid = read_pid(&programs.path("qemu.pid"));
    daemon.wait_log(&format!(
        "pid {qemu_pid} bound to its launcher {}",
        launcher.pid()
    ));
    assert!(exists(qemu_pid) && !ended(qemu_pid), "qemu did not start");
    launcher.kill9();
    daemon.wait_log(&format!("sent SIGTERM to child {qemu_pid}"));
    assert!(
        wait_until(TIMEOUT, || ended(qemu_pid)),
        "qemu {qemu_pid} still runs; log:\n{}",
        daemon.log_text()
    );
    reap(qemu_pid, TIMEOUT);
}

/// A rule's binding acts for its launcher's user: when a user's launcher
/// dies, its plain captive gets the signal, but a set-user-id root captive
/// it started does not (the kernel's PR_SET_PDEATHSIG is cleared by such
/// an exec too), and the log says why.
#[test]
fn a_users_launcher_cannot_have_a_set_user_id_captive_signalled() {
    use std::os::unix::fs::PermissionsExt;
    let Some((uid, gid)) = root_and_test_user("a set-user-id captive needs root and a test user")
    else {
        return;
    };
    become_subreaper();
    let programs = Programs::new();
    let dir = programs.dir.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let suid = copy_program("sleep", dir, "suid-captive");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    nix::unistd::chown(
        &out,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    let daemon = TestDaemon::start(&format!(
        "[[rule]]\nname = \"users\"\nexec = \"{}/*captive\"\nlauncher = \"{}\"\n",
        dir.display(),
        programs.launcher.display()
    ));
    let launcher = programs.launcher.display().to_string();
    let child = as_user(
        uid,
        gid,
        &[
            &launcher,
            "-c",
            "for c in captive suid-captive; do \"$D/$c\" 1000 & echo $! > \"$D/out/$c.tmp\"; mv \"$D/out/$c.tmp\" \"$D/out/$c\"; done; wait",
        ],
    )
    .env("D", dir)
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let mut launcher = Proc::from_child(child);
    let plain = read_pid(&out.join("captive"));
    let privileged = read_pid(&out.join("suid-captive"));
    daemon.wait_log(&format!("pid {plain} bound to its launcher"));
    daemon.wait_log(&format!("pid {privileged} bound to its launcher"));
    // Both execs done (a signal sent before the set-user-id exec commits
    // its credentials is one the user could have sent itself).
    let effective_root = || {
        fs::read_to_string(format!("/proc/{privileged}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
            .unwrap_or(false)
    };
    assert!(wait_until(TIMEOUT, || effective_root()
        && exe(plain) == programs.captive.display().to_string()));
    let (_, list, _) = daemon.ctl(&["list"]);
    assert!(
        list.lines()
            .filter(|l| l.contains("rule:users"))
            .all(|l| l.contains(&format!("  {uid}  "))),
        "{list}"
    );
    launcher.kill9();
    assert_eq!(
        reap(plain, TIMEOUT),
        Some(libc::SIGTERM),
        "{}",
        daemon.log_text()
    );
    daemon.wait_log(&format!(
        "child {privileged} not signalled: it runs with the privileges of uid 0"
    ));
    assert!(exists(privileged) && !ended(privileged));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(privileged), Signal::SIGKILL);
    reap(privileged, TIMEOUT);
}

/// Without `launcher`, the parent is the launcher whatever it runs; the
/// JSON status counts the match.
#[test]
fn a_rule_without_a_launcher_binds_to_any_parent() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let daemon = TestDaemon::start(&format!(
        "[[rule]]\nname = \"any\"\nexec = \"{}\"\nsignal = 10\n",
        programs.captive.display()
    ));
    let (mut launcher, captive) = programs.launch(Path::new("/bin/sh"), "captive.pid");
    daemon.wait_log(&format!(
        "pid {captive} bound to its launcher {}",
        launcher.pid()
    ));
    let (_, json, _) = daemon.ctl(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["rule_source"], "fanotify", "{json}");
    assert_eq!(status["rules"][0]["name"], "any", "{json}");
    assert_eq!(status["rules"][0]["matches"], 1, "{json}");
    launcher.kill9();
    assert_eq!(
        reap(captive, TIMEOUT),
        Some(libc::SIGUSR1),
        "{}",
        daemon.log_text()
    );
}

/// `kill = "cgroup"` from a rule: the captive is in its binding's cgroup
/// before its first instruction, so a daemon it double-forks at once
/// cannot escape; the launcher's death ends them all.
#[test]
fn a_rule_with_kill_cgroup_holds_a_double_forked_escaper() {
    if !needs_root() {
        return;
    }
    let place = match tether::locate_cgroups(None, false) {
        Ok(place) => place,
        Err(why) => {
            eprintln!("skipped: no usable cgroup v2 here: {why}");
            return;
        }
    };
    let root = place.mount.join(format!(
        "tether-rules-test-{}-{}",
        std::process::id(),
        backend_name()
    ));
    become_subreaper();
    let programs = Programs::new();
    let captive_shell = copy_program("bash", programs.dir.path(), "captive-sh");
    let daemon = TestDaemon::start(&format!(
        "[daemon]\ncgroup_root = {:?}\n[[rule]]\nname = \"held\"\nexec = \"{}\"\nlauncher = \"{}\"\nkill = \"cgroup\"\ngrace = \"1s\"\n",
        root.display().to_string(),
        captive_shell.display(),
        programs.launcher.display()
    ));
    let mut launcher = programs.run(
        &programs.launcher,
        "\"$D/captive-sh\" -c '(setsid sleep 1000 & echo $! > \"$D/esc.tmp\"; mv \"$D/esc.tmp\" \"$D/escaper\") & sleep 1000' & echo $! > \"$D/captive.tmp\"; mv \"$D/captive.tmp\" \"$D/captive.pid\"; wait",
    );
    let captive = read_pid(&programs.path("captive.pid"));
    let escaper = read_pid(&programs.path("escaper"));
    daemon.wait_log(&format!("pid {captive} bound to its launcher"));
    launcher.kill9();
    let gone = wait_until(TIMEOUT, || ended(captive) && ended(escaper));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaper), Signal::SIGKILL);
    reap(captive, TIMEOUT);
    drop(daemon);
    if let Ok(dir) = fs::read_dir(&root) {
        for cgroup in dir.flatten().filter(|e| e.path().is_dir()) {
            let _ = fs::write(cgroup.path().join("cgroup.kill"), "1");
            wait_until(TIMEOUT, || fs::remove_dir(cgroup.path()).is_ok());
        }
    }
    let _ = fs::remove_dir(&root);
    assert!(
        gone,
        "captive {captive} or the escaper {escaper} still runs"
    );
}

/// A rule binding is in the state file: tetherd SIGKILLed and started
/// again restores it (still listed with its rule), and the launcher's
/// SIGKILL after the restart gets the captive the rule's signal.
#[test]
fn a_rule_binding_survives_a_restart_of_tetherd() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let mut daemon = TestDaemon::start(&programs.rule(""));
    let (mut launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    daemon.wait_log(&format!(
        "pid {captive} bound to its launcher {}",
        launcher.pid()
    ));
    // The exec was allowed: its binding is on disk.
    let runs = wait_until(TIMEOUT, || {
        exe(captive) == programs.captive.display().to_string()
    });
    assert!(runs, "captive {captive} never ran its program");
    daemon.stop_with(Signal::SIGKILL);
    daemon.spawn(None);
    let (_, list, _) = daemon.ctl(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&format!("sleepers:{captive}")) && l.contains("rule:sleepers")),
        "the rule binding was not restored:\n{list}\nlog:\n{}",
        daemon.log_text()
    );
    launcher.kill9();
    assert_eq!(
        reap(captive, TIMEOUT),
        Some(Signal::SIGHUP as i32),
        "captive {captive} did not get SIGHUP after the restart; log:\n{}",
        daemon.log_text()
    );
}

/// The launcher dies while tetherd is down: the restored rule binding
/// finds it gone at start and signals the captive at once.
#[test]
fn a_rule_bindings_launcher_dead_while_tetherd_was_down_is_acted_on_at_start() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let mut daemon = TestDaemon::start(&programs.rule(""));
    let (mut launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    daemon.wait_log(&format!(
        "pid {captive} bound to its launcher {}",
        launcher.pid()
    ));
    // The exec was allowed: its binding is on disk.
    let runs = wait_until(TIMEOUT, || {
        exe(captive) == programs.captive.display().to_string()
    });
    assert!(runs, "captive {captive} never ran its program");
    daemon.stop_with(Signal::SIGKILL);
    launcher.kill9();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!ended(captive), "captive {captive} ended with tetherd down");
    daemon.spawn(None);
    assert_eq!(
        reap(captive, TIMEOUT),
        Some(Signal::SIGHUP as i32),
        "captive {captive} did not get SIGHUP at start; log:\n{}",
        daemon.log_text()
    );
}

/// A rule binding's life shows in `events`: bound, parent exited,
/// signalled, each naming the binding with origin "rule", the rule and
/// the launcher's uid.
#[test]
fn a_rule_bindings_life_shows_in_events_with_its_rule() {
    if !needs_root() {
        return;
    }
    become_subreaper();
    let programs = Programs::new();
    let daemon = TestDaemon::start(&programs.rule(""));
    let (mut launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    daemon.wait_log(&format!("pid {captive} bound to its launcher"));
    launcher.kill9();
    assert_eq!(reap(captive, TIMEOUT), Some(Signal::SIGHUP as i32));
    let name = format!("sleepers:{captive}");
    let mut ours: Vec<serde_json::Value> = Vec::new();
    let complete = wait_until(TIMEOUT, || {
        let (code, out, _) = daemon.ctl(&["events", "--json"]);
        assert_eq!(code, 0);
        ours = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["binding"]["name"] == name.as_str())
            .collect();
        ["bound", "parent_exited", "signalled"]
            .iter()
            .all(|kind| ours.iter().any(|e| e["kind"] == *kind))
    });
    assert!(complete, "events of {name}: {ours:#?}");
    for event in &ours {
        assert_eq!(event["binding"]["origin"], "rule", "{event}");
        assert_eq!(event["binding"]["rule"], "sleepers", "{event}");
        assert_eq!(event["binding"]["uid"], 0, "{event}");
    }
    let signalled = ours.iter().find(|e| e["kind"] == "signalled").unwrap();
    assert_eq!(signalled["pid"], captive, "{signalled}");
    assert_eq!(signalled["signal"], "SIGHUP", "{signalled}");
}

/// `rule_source = "auto"` in a tetherd without CAP_SYS_ADMIN (no
/// fanotify): the process connector is chosen, `status` says so, and a
/// ruled exec is still bound (after the fact).
#[test]
fn without_cap_sys_admin_auto_falls_back_to_the_connector() {
    if !needs_root() {
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    };
    become_subreaper();
    let programs = Programs::new();
    let mut daemon = TestDaemon::start_stopped(&format!(
        "[daemon]\nrule_source = \"auto\"\n{}",
        programs.rule("")
    ));
    daemon.spawn_under(
        None,
        &[
            setpriv,
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            "--",
        ],
    );
    let (_, status, _) = daemon.ctl(&["status"]);
    assert!(
        status.contains("rule source:  connector"),
        "{status}\nlog:\n{}",
        daemon.log_text()
    );
    let (mut launcher, captive) = programs.launch(&programs.launcher, "captive.pid");
    daemon.wait_log(&format!(
        "pid {captive} bound to its launcher {} by rule \"sleepers\" after its exec",
        launcher.pid()
    ));
    launcher.kill9();
    assert_eq!(
        reap(captive, TIMEOUT),
        Some(Signal::SIGHUP as i32),
        "log:\n{}",
        daemon.log_text()
    );
}
