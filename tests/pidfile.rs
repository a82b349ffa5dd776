//! Bindings that name a pidfile instead of a pid.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use std::path::Path;

use crate::util::{binding, is_root, test_user, Proc, TestDaemon, TIMEOUT};

fn write_pid(path: &Path, pid: i32) {
    fs::write(path, format!("{pid}\n")).unwrap();
}

/// A directory for pidfiles that the daemon under test accepts: as root,
/// one where only root can write all the way up (under /run, not /tmp).
fn pidfile_dir() -> tempfile::TempDir {
    if is_root() {
        tempfile::Builder::new()
            .prefix("tether-test-")
            .tempdir_in("/run")
            .unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

#[test]
fn a_pidfile_binding_follows_a_restart_of_the_service_it_names() {
    let mut parent = Proc::sleeper();
    let mut old = Proc::sleeper();
    let daemon = TestDaemon::start("");
    let dir = pidfile_dir();
    let pidfile = dir.path().join("captive.pid");
    fs::write(&pidfile, format!("{}\n", old.pid())).unwrap();
    fs::write(
        &daemon.config,
        format!(
            "[[binding]]\nname = \"svc\"\nparent = {}\nchild_pidfile = \"{}\"\n",
            parent.pid(),
            pidfile.display()
        ),
    )
    .unwrap();
    let (code, out, err) = daemon.ctl(&["reload"]);
    assert_eq!(
        (code, out.trim()),
        (0, "reloaded: 1 added, 0 removed, 0 unchanged, 0 failed"),
        "{err}"
    );

    // The captive service restarts under a new pid and rewrites its pidfile.
    old.kill9();
    let mut new = Proc::sleeper();
    fs::write(&pidfile, format!("{}\n", new.pid())).unwrap();
    let (code, out, err) = daemon.ctl(&["reload"]);
    assert_eq!(
        (code, out.trim()),
        (0, "reloaded: 1 added, 1 removed, 0 unchanged, 0 failed"),
        "{err}"
    );
    let (_, list, _) = daemon.ctl(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["children"][0], new.pid(), "{list}");

    parent.kill9();
    new.expect_signal(Some(libc::SIGTERM), &daemon);
}

#[test]
fn bad_pidfiles_are_refused_and_the_rest_of_the_config_loads() {
    let dir = pidfile_dir();
    let path = |name: &str| dir.path().join(name);
    fs::write(path("empty.pid"), "").unwrap();
    fs::write(path("garbage.pid"), "twelve\n").unwrap();
    let mut dead = Proc::sleeper();
    fs::write(path("dead.pid"), dead.pid().to_string()).unwrap();
    dead.kill9();
    let alive = Proc::sleeper();
    fs::write(path("open.pid"), alive.pid().to_string()).unwrap();
    fs::set_permissions(path("open.pid"), fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::symlink(path("open.pid"), path("link.pid")).unwrap();

    let parent = Proc::sleeper();
    let mut config = String::new();
    for name in [
        "missing.pid",
        "empty.pid",
        "garbage.pid",
        "dead.pid",
        "open.pid",
        "link.pid",
    ] {
        config.push_str(&format!(
            "[[binding]]\nparent = {}\nchild_pidfile = \"{}\"\n",
            parent.pid(),
            path(name).display()
        ));
    }
    let (mut good_parent, mut good_child) = (Proc::sleeper(), Proc::sleeper());
    config.push_str(&binding(good_parent.pid(), good_child.pid(), ""));
    let daemon = TestDaemon::start(&config);
    let log = daemon.log_text();
    let shown = |name: &str| path(name).display().to_string();
    let mut expected = vec![
        format!(
            "{}: pidfile missing; binding not held",
            shown("missing.pid")
        ),
        format!(
            "{}: the pidfile is empty; binding not held",
            shown("empty.pid")
        ),
        format!(
            "{}: the pidfile does not hold a pid (\"twelve\"); binding not held",
            shown("garbage.pid")
        ),
        format!(
            "{}: names pid {}, which is not running; binding not held",
            shown("dead.pid"),
            dead.pid()
        ),
        format!(
            "{}: pidfile is a symlink; refusing it; binding not held",
            shown("link.pid")
        ),
    ];
    if is_root() {
        expected.push(format!(
            "{}: the pidfile is writable by a user other than root (owner uid 0, mode 0666); refusing it; binding not held",
            shown("open.pid")
        ));
    } else {
        eprintln!("note: not root, so a world-writable pidfile is accepted (the check is root's)");
    }
    for line in &expected {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    // The valid binding was loaded and works.
    good_parent.kill9();
    assert_eq!(
        good_child.wait_signal(TIMEOUT),
        Some(libc::SIGTERM),
        "log:\n{log}"
    );
}

#[test]
fn as_root_a_pidfile_is_read_only_where_no_one_but_root_can_write() {
    if !is_root() {
        eprintln!("skipped: the location rule is a root daemon's");
        return;
    }
    let run = pidfile_dir();
    let alive = Proc::sleeper();
    // Root's own file, in directories others can write: /tmp itself (a
    // root-owned private directory inside it does not help), a sticky
    // world-writable directory, and one owned by another user.
    let in_tmp = tempfile::tempdir_in("/tmp").unwrap();
    let sticky = run.path().join("sticky");
    let theirs = run.path().join("theirs");
    for dir in [&sticky, &theirs] {
        fs::create_dir(dir).unwrap();
    }
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let refused = [
        (
            in_tmp.path().join("x.pid"),
            "/tmp".to_string(),
            "owner uid 0, mode 1777",
        ),
        (
            sticky.join("x.pid"),
            sticky.display().to_string(),
            "owner uid 0, mode 1777",
        ),
        (
            theirs.join("x.pid"),
            theirs.display().to_string(),
            "owner uid 65534, mode 0755",
        ),
    ];
    // The same file where only root can write, reached through a symlink
    // to the directory (as /var/run is to /run), is accepted.
    let good = run.path().join("good.pid");
    let link = run.path().join("link");
    std::os::unix::fs::symlink(run.path(), &link).unwrap();
    let parent = Proc::sleeper();
    let mut config = String::new();
    for (path, _, _) in &refused {
        fs::write(path, alive.pid().to_string()).unwrap();
        config.push_str(&format!(
            "[[binding]]\nparent = {}\nchild_pidfile = \"{}\"\n",
            parent.pid(),
            path.display()
        ));
    }
    fs::write(&good, alive.pid().to_string()).unwrap();
    config.push_str(&format!(
        "[[binding]]\nname = \"good\"\nparent = {}\nchild_pidfile = \"{}\"\n",
        parent.pid(),
        link.join("good.pid").display()
    ));
    let daemon = TestDaemon::start(&config);
    let log = daemon.log_text();
    for (path, dir, why) in &refused {
        let line = format!(
            "{}: directory {dir} is writable by a user other than root ({why}",
            path.display()
        );
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
    assert!(
        log.contains("configuration applied: 1 added, 0 removed, 0 unchanged, 3 failed"),
        "{log}"
    );
}

/// A service rewriting its pidfile (truncate, then write) leaves it empty
/// for a moment; a reload in that moment must not drop the binding, or a
/// parent dying then leaves its child unsignalled.
#[test]
fn a_pidfile_briefly_empty_at_a_reload_keeps_the_binding_held() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let dir = pidfile_dir();
    let pidfile = dir.path().join("svc.pid");
    write_pid(&pidfile, parent.pid());
    let config = format!(
        "[[binding]]\nname = \"svc\"\nparent_pidfile = \"{}\"\nchild = {}\n",
        pidfile.display(),
        child.pid()
    );
    let daemon = TestDaemon::start(&config);
    daemon.wait_log("configuration applied: 1 added");
    let mut dead = Proc::sleeper();
    dead.kill9();
    let dead = format!("{}\n", dead.pid());
    for content in ["", "  \n", "garbage", dead.as_str()] {
        fs::write(&pidfile, content).unwrap();
        daemon.reload(&config);
    }
    daemon.wait_count(
        "the binding stays held until the pidfile names another running process",
        4,
    );
    assert_eq!(
        daemon.count(": removed ("),
        0,
        "log:\n{}",
        daemon.log_text()
    );
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
}

/// A service that removes its pidfile on exit (systemd's PIDFile=) must
/// not cancel the SIGKILL due at the end of the grace period, nor must a
/// new instance's pidfile: a reload never cancels a pending escalation.
#[test]
fn a_pidfile_removed_or_replaced_during_the_grace_period_still_gets_sigkill() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::term_ignorer();
    let dir = pidfile_dir();
    let pidfile = dir.path().join("svc.pid");
    write_pid(&pidfile, parent.pid());
    let config = format!(
        "[[binding]]\nname = \"svc\"\nparent_pidfile = \"{}\"\nchild = {}\ngrace = \"1500ms\"\n",
        pidfile.display(),
        child.pid()
    );
    let daemon = TestDaemon::start(&config);
    parent.kill9();
    daemon.wait_log(&format!("sent SIGTERM to child {}", child.pid()));
    fs::remove_file(&pidfile).unwrap();
    daemon.reload(&config);
    let next = Proc::sleeper();
    write_pid(&pidfile, next.pid());
    daemon.reload(&config);
    daemon.wait_log("no longer in the configuration; kept until its pending SIGKILL is sent");
    child.expect_signal(Some(libc::SIGKILL), &daemon);
    assert_eq!(daemon.count("SIGKILL is cancelled"), 0);
}

/// As root, a directory on a pidfile's path that another user owns (or a
/// symlink another user owns) lets that user point the daemon anywhere:
/// refused. A root-owned symlink in a root-owned directory (/var/run) is
/// followed.
#[test]
fn pidfiles_under_a_directory_or_symlink_another_user_owns_are_refused() {
    if !is_root() {
        eprintln!("skipped: the path checks are root's");
        return;
    }
    let Some((uid, gid)) = test_user() else {
        return;
    };
    let (parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let dir = pidfile_dir();
    let path = |name: &str| dir.path().join(name);
    fs::create_dir(path("real")).unwrap();
    write_pid(&path("real/svc.pid"), child.pid());
    // A directory the user owns, holding a root-owned pidfile.
    fs::create_dir(path("users")).unwrap();
    write_pid(&path("users/svc.pid"), child.pid());
    std::os::unix::fs::chown(path("users"), Some(uid), Some(gid)).unwrap();
    // A symlink the user owns, to a root-owned directory.
    std::os::unix::fs::symlink(path("real"), path("userlink")).unwrap();
    std::os::unix::fs::lchown(path("userlink"), Some(uid), Some(gid)).unwrap();
    // A symlink root owns.
    std::os::unix::fs::symlink("real", path("rootlink")).unwrap();
    let mut config = String::new();
    for (name, file) in [
        ("users", "users/svc.pid"),
        ("userlink", "userlink/svc.pid"),
        ("rootlink", "rootlink/svc.pid"),
    ] {
        config.push_str(&format!(
            "[[binding]]\nname = \"{name}\"\nparent = {}\nchild_pidfile = \"{}\"\n",
            parent.pid(),
            path(file).display()
        ));
    }
    let daemon = TestDaemon::start(&config);
    let log = daemon.log_text();
    for line in [
        format!(
            "binding \"users\": {}: directory {} is writable by a user other than root (owner uid {uid}, mode 0755); a pidfile must be where only root can write, such as /run; refusing it; binding not held",
            path("users/svc.pid").display(),
            path("users").display()
        ),
        format!(
            "binding \"userlink\": {}: {} is a symlink owned by uid {uid}, not root; refusing the pidfile; binding not held",
            path("userlink/svc.pid").display(),
            path("userlink").display()
        ),
        "configuration applied: 1 added, 0 removed, 0 unchanged, 2 failed".to_string(),
    ] {
        assert!(log.contains(&line), "missing {line:?} in:\n{log}");
    }
    let (_, list, _) = daemon.ctl(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "rootlink", "{list}");
    assert_eq!(list[0]["children"][0], child.pid(), "{list}");
    assert!(child.is_alive());
}

/// A pidfile naming tetherd itself or a kernel thread (kthreadd is pid 2),
/// or a configured pid naming them, is refused: tetherd must never signal
/// itself, and a kernel thread is no one's captive.
#[test]
fn pidfiles_and_pids_naming_tetherd_or_a_kernel_thread_are_refused() {
    let parent = Proc::sleeper();
    let daemon = TestDaemon::start("");
    let me = daemon.pid();
    let kthreadd = fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    let dir = pidfile_dir();
    let path = |name: &str| dir.path().join(name);
    write_pid(&path("self.pid"), me);
    write_pid(&path("two.pid"), 2);
    let mut config = String::new();
    let mut expected = Vec::new();
    let mut add = |name: &str, line: String, refusal: String| {
        config.push_str(&format!(
            "[[binding]]\nname = \"{name}\"\nparent = {}\n{line}\n",
            parent.pid()
        ));
        expected.push(format!("binding \"{name}\": {refusal}; binding not held"));
    };
    let shown = |name: &str| path(name).display().to_string();
    add(
        "self-file",
        format!("child_pidfile = \"{}\"", shown("self.pid")),
        format!(
            "{}: names pid {me}, which is tetherd itself; refusing it",
            shown("self.pid")
        ),
    );
    add(
        "self-pid",
        format!("child = {me}"),
        format!("cannot hold child {me}: pid {me} is tetherd itself; refusing it"),
    );
    if kthreadd {
        add(
            "two-file",
            format!("child_pidfile = \"{}\"", shown("two.pid")),
            format!(
                "{}: names pid 2, which is a kernel thread; refusing it",
                shown("two.pid")
            ),
        );
        add(
            "two-pid",
            "child = 2".into(),
            "cannot hold child 2: pid 2 is a kernel thread; refusing it".into(),
        );
    } else {
        eprintln!(
            "note: pid 2 is not kthreadd here (a pid namespace?); kernel threads not checked"
        );
    }
    daemon.reload(&config);
    let log = daemon.log_text();
    for line in &expected {
        assert!(log.contains(line.as_str()), "missing {line:?} in:\n{log}");
    }
    assert!(
        log.contains(&format!(
            "0 added, 0 removed, 0 unchanged, {} failed",
            expected.len()
        )),
        "{log}"
    );
}
