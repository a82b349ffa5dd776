//! Bindings that name a pidfile instead of a pid.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{binding, is_root, Proc, TestDaemon, TIMEOUT};

#[test]
fn a_pidfile_binding_follows_a_restart_of_the_service_it_names() {
    let mut parent = Proc::sleeper();
    let mut old = Proc::sleeper();
    let daemon = TestDaemon::start("");
    let pidfile = daemon.path().join("captive.pid");
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
    let dir = tempfile::tempdir().unwrap();
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
