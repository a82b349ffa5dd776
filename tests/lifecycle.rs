//! Starting, stopping, defaults, files and limits.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{backend_args, binding, is_root, wait_until, Proc, TestDaemon, TETHERD, TIMEOUT};

#[test]
fn sigterm_and_sigint_stop_cleanly_and_leave_children_alone() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut parent = Proc::sleeper();
        let mut child = Proc::sleeper();
        let mut daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
        let status = daemon.stop_with(sig);
        assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
        assert!(daemon.log_text().contains("children untouched"));
        parent.kill9();
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.is_alive(), "a stopped daemon must not signal");
    }
}

#[test]
fn empty_config_runs() {
    let mut daemon = TestDaemon::start("");
    assert!(daemon.log_text().contains("ready: 0 bindings"));
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn missing_default_config_means_no_bindings() {
    if !is_root() {
        eprintln!("skipped: the default path tested here is root's /etc/tether/tether.toml");
        return;
    }
    if std::path::Path::new("/etc/tether/tether.toml").exists() {
        eprintln!("skipped: /etc/tether/tether.toml exists on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(TETHERD)
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .arg("--socket")
        .arg(dir.path().join("tether.sock"))
        .args(backend_args())
        .env_remove("RUST_LOG")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_until(TIMEOUT, || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready: 0 bindings")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(ready, "{}", fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(status.code(), Some(0));
}

#[test]
fn pins_are_written_to_the_state_file() {
    let parent = Proc::sleeper();
    let child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
    let pins_file = daemon.state.with_extension("pins.json");
    let state = fs::read_to_string(&pins_file).expect("pins file written at start");
    let json: serde_json::Value = serde_json::from_str(&state).unwrap();
    let pins = json["pins"].as_array().unwrap();
    let find = |pid: i32| pins.iter().find(|p| p["pid"] == pid).cloned().unwrap();
    assert_eq!(find(parent.pid())["start"], parent.start_time());
    assert_eq!(find(child.pid())["start"], child.start_time());
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(find(child.pid())["boot_id"], boot.trim());
}

#[test]
fn corrupt_state_file_is_moved_aside_and_the_daemon_starts() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let mut daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
    daemon.stop();
    fs::write(&daemon.state, b"\x00garbage{").unwrap();
    daemon.spawn(None);
    daemon.wait_log("corrupt state file");
    let aside = fs::read_dir(daemon.state.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("state.json.corrupt-")
        });
    assert!(aside, "the corrupt file must be kept for inspection");
    parent.kill9();
    assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
}

#[test]
fn pins_survive_a_restart_and_a_parent_dead_meanwhile_is_acted_on() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let mut daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
    daemon.stop();
    // The parent dies while the daemon is down.
    parent.kill9();
    daemon.spawn(None);
    child.expect_signal(Some(libc::SIGTERM), &daemon);
}

#[test]
fn running_out_of_descriptors_fails_some_bindings_and_serves_the_rest() {
    // 40 descriptors: the daemon's own few, then two per binding.
    let mut pairs: Vec<(Proc, Proc)> = (0..30)
        .map(|_| (Proc::sleeper(), Proc::sleeper()))
        .collect();
    let config: String = pairs
        .iter()
        .map(|(p, c)| binding(p.pid(), c.pid(), ""))
        .collect();
    let daemon = TestDaemon::start_limited(&config, 40);
    let log = daemon.log_text();
    if crate::util::backend_name() == "pidfd" {
        assert!(log.contains("descriptor limit is reached"), "log:\n{log}");
        assert!(log.contains("binding not held"), "log:\n{log}");
    } else {
        // netlink and poll hold no descriptor per process: the same
        // limit serves every binding.
        assert!(
            log.contains("30 added, 0 removed, 0 unchanged, 0 failed"),
            "log:\n{log}"
        );
        let (parent, child) = &mut pairs[29];
        parent.kill9();
        assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
    }
    // The first binding was armed before descriptors ran out.
    let (parent, child) = &mut pairs[0];
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
}

#[test]
fn socket_file_is_removed_on_exit_and_a_stale_one_is_replaced() {
    let mut daemon = TestDaemon::start("");
    assert!(daemon.socket.exists());
    daemon.stop();
    assert!(!daemon.socket.exists(), "a clean exit removes the socket");

    // A crashed daemon leaves its socket behind; the next start replaces it.
    daemon.spawn(None);
    daemon.stop_with(Signal::SIGKILL);
    assert!(daemon.socket.exists());
    daemon.spawn(None);
    let (code, _, err) = daemon.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_live_daemon_on_the_same_socket_is_a_clear_error() {
    let daemon = TestDaemon::start("");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(TETHERD)
        .arg("--config")
        .arg(&daemon.config)
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(backend_args())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another tetherd is already serving this socket"),
        "{err}"
    );
    // The first daemon is untouched.
    let (code, _, _) = daemon.ctl(&["status"]);
    assert_eq!(code, 0);
}

#[test]
fn unsafe_socket_locations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    // A planted symlink in place of the socket directory.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // A socket path that is a regular file.
    let file = real.join("file.sock");
    fs::write(&file, "").unwrap();
    // A world-writable directory.
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("empty.toml");
    fs::write(&config, "").unwrap();
    for (socket, expected) in [
        (link.join("tether.sock"), "not a directory (a symlink?)"),
        (file.clone(), "exists and is not a socket"),
        (open.join("tether.sock"), "writable by others"),
    ] {
        let out = std::process::Command::new(TETHERD)
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .arg("--socket")
            .arg(&socket)
            .args(backend_args())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{socket:?}: {err}");
        assert!(err.contains(expected), "{socket:?}: {err}");
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "",
        "the regular file was not replaced"
    );
}

/// The daemon's voluntary context switches so far.
fn voluntary_switches(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn an_idle_daemon_does_not_wake_for_a_finished_bindings_deadline() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "grace = \"1s\""));
    parent.kill9();
    assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
    daemon.wait_log(&format!("child {} exited", child.pid()));
    // The escalation deadline (1 s after the signal) is now moot: the
    // daemon must sleep through it.
    std::thread::sleep(Duration::from_millis(100));
    let before = voluntary_switches(daemon.pid());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        voluntary_switches(daemon.pid()),
        before,
        "the daemon woke while idle"
    );
}
