//! Configuration errors as an administrator sees them: through the binary.
//! (Each message is pinned by the unit tests in src/config; these check
//! that the binary reports them, one per line, with the right exit code.)

use std::fs;

use crate::util::{is_root, run_tetherd};

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(&path, config).unwrap();
    run_tetherd(&["--check-config", "--config", path.to_str().unwrap()])
}

#[test]
fn valid_config_passes_check() {
    let (code, out, err) = check("[[binding]]\nparent = 4242\nchild = 4343\n");
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("configuration OK (1 bindings)"), "{out}");
}

#[test]
fn invalid_config_fails_check_with_every_error() {
    let config = "[defaults]\ngrace = \"5 sec\"\n\n[[binding]]\nname = \"qemu\"\nparent = 10\nchild = 11\nsignal = \"SIGFOO\"\n";
    let (code, _, err) = check(config);
    assert_eq!(code, 2);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(
            "bad.toml:2:9: [defaults]: grace: invalid duration \"5 sec\" (expected e.g. \"500ms\", \"5s\", \"2m\" or \"never\")"
        )),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| {
            l.ends_with(
            "bad.toml:8:10: binding \"qemu\": signal: \"SIGFOO\" is not a signal name (try SIGTERM)"
        )
        }),
        "{err}"
    );
    assert!(err.contains("tetherd: 2 error(s) in"), "{err}");
}

#[test]
fn syntax_error_names_line_and_column() {
    let (code, _, err) = check("[[binding]]\nparent = 42\nchild = \n");
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:3:"), "{err}");
}

#[test]
fn missing_named_config_is_an_error() {
    let (code, _, err) = run_tetherd(&["--check-config", "--config", "/nonexistent/tether.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/tether.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let (code, _, err) = run_tetherd(&["--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn help_and_version() {
    let (code, out, _) = run_tetherd(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--check-config") && out.contains("Exit status"),
        "{out}"
    );
    let (code, out, _) = run_tetherd(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("tetherd {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn root_refuses_a_config_others_can_write() {
    if !is_root() {
        eprintln!("skipped: needs root (ownership checks apply to a daemon running as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.toml");
    fs::write(&path, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = run_tetherd(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("other users can write"), "{err}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_tetherd(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tether.toml");
    let (code, out, err) = run_tetherd(&["--check-config", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_counts_pidfile_bindings() {
    let config = "[[binding]]\nparent = 4242\nchild_pidfile = \"/run/a.pid\"\n\n\
                  [[binding]]\nparent_pidfile = \"/run/b.pid\"\nchild = 4343\n\n\
                  [[binding]]\nparent = 4242\nchild = 4344\n";
    let (code, out, err) = check(config);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("configuration OK (3 bindings)"), "{out}");
}

#[test]
fn check_warns_of_pidfiles_the_shipped_service_cannot_see() {
    if !is_root() {
        eprintln!("skipped: the warnings are about the system service, given as root");
        return;
    }
    let config = "[[binding]]\nname = \"t\"\nparent = 4242\nchild_pidfile = \"/tmp/x.pid\"\n\n\
                  [[binding]]\nname = \"h\"\nparent_pidfile = \"/home/ann/x.pid\"\nchild = 4343\n\n\
                  [[binding]]\nname = \"r\"\nparent_pidfile = \"/run/tether-absent/x.pid\"\nchild = 4343\n\n\
                  [daemon]\nsocket = \"/var/tmp/t.sock\"\n";
    let (code, out, err) = check(config);
    assert_eq!(code, 0, "a warning is not an error: {err}");
    assert!(out.contains("configuration OK (3 bindings)"), "{out}");
    for needle in [
        "binding \"t\": /tmp/x.pid: hidden from the shipped tetherd.service (PrivateTmp=yes)",
        "binding \"h\": /home/ann/x.pid: hidden from the shipped tetherd.service (ProtectHome=yes)",
        "[daemon] socket: /var/tmp/t.sock: outside /run/tether",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("tetherd: warning: "), "{err}");
    // A pidfile under /run whose directory does not exist yet is fine.
    assert!(!err.contains("binding \"r\""), "{err}");
}
