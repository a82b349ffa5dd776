//! Bindings that name a pidfile instead of a pid.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{binding, is_root, Proc, TestDaemon, TIMEOUT};

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
