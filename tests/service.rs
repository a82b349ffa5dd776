//! What the service files rely on: `tetherctl reload` (the unit's
//! `ExecReload=`, and the reload of the other init scripts) finds the
//! daemon through the configuration's `[daemon] socket`, waits for the
//! daemon's answer and fails on a file the daemon refuses.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{backend_args, wait_until, Proc, TETHERCTL, TETHERD, TIMEOUT};

/// tetherctl with `args` and no TETHER_SOCKET unless `env_socket` is given.
fn ctl(args: &[&str], env_socket: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(TETHERCTL);
    cmd.args(args)
        .env_remove("TETHER_SOCKET")
        .stdin(Stdio::null());
    if let Some(socket) = env_socket {
        cmd.env("TETHER_SOCKET", socket);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tetherctl_reload_talks_to_the_socket_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("custom/tether.sock");
    let config = dir.path().join("tether.toml");
    let daemon_table = format!("[daemon]\nsocket = \"{}\"\n", socket.display());
    fs::write(&config, &daemon_table).unwrap();
    let log = fs::File::create(dir.path().join("tetherd.log")).unwrap();
    // No --socket: the daemon serves the socket of its file, as under the
    // shipped unit when an administrator sets one.
    let mut daemon = Proc::from_child(
        Command::new(TETHERD)
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .args(backend_args())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_text = || fs::read_to_string(dir.path().join("tetherd.log")).unwrap_or_default();
    assert!(
        wait_until(TIMEOUT, || log_text().contains("ready:")),
        "{}",
        log_text()
    );
    assert!(Path::new(&socket).exists(), "{}", log_text());
    let config_arg = config.to_str().unwrap();

    let (code, out, err) = ctl(&["--config", config_arg, "reload"], None);
    assert_eq!(
        (code, out.trim()),
        (0, "reloaded: 0 added, 0 removed, 0 unchanged, 0 failed"),
        "{err}"
    );

    // A file the daemon refuses: reload fails with the daemon's reasons,
    // and the daemon keeps running on its old configuration.
    fs::write(
        &config,
        format!("{daemon_table}\n[[binding]]\nparent = 4242\nchild = 4343\ngrace = \"5 sec\"\n"),
    )
    .unwrap();
    let (code, _, err) = ctl(&["--config", config_arg, "reload"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid duration \"5 sec\""), "{err}");
    assert!(daemon.is_alive());
    let (code, out, err) = ctl(&["--config", config_arg, "status"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pidfd") || out.contains("netlink") || out.contains("poll"),
        "{out}"
    );

    // --socket and TETHER_SOCKET come before the file.
    let (code, _, err) = ctl(
        &["--config", config_arg, "reload"],
        Some("/nonexistent/tether.sock"),
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/nonexistent/tether.sock"), "{err}");
    let (code, _, err) = ctl(
        &[
            "--config",
            config_arg,
            "--socket",
            "/nonexistent/s.sock",
            "status",
        ],
        None,
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/nonexistent/s.sock"), "{err}");

    // A named file that cannot be read is a usage error.
    let (code, _, err) = ctl(&["--config", "/nonexistent/tether.toml", "reload"], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/nonexistent/tether.toml: cannot read the configuration"),
        "{err}"
    );
}
