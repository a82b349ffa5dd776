//! `tetherctl exec` and `bind` as a script sees them: exit statuses for a
//! launcher that is gone (whether tetherctl or the daemon finds out), and
//! warnings on stderr for a bind that succeeded but will not do what the
//! user meant.

use std::fs;
use std::process::Command;

use crate::util::*;

/// The daemon refuses an exec whose `--parent` is pinned to another
/// process (`PID:START` with the wrong start) with `code: parent_gone`:
/// tetherctl exits 4, as for a launcher it finds gone itself, and the
/// command is not started.
#[test]
fn exec_refused_by_the_daemon_because_the_parent_is_gone_exits_4() {
    let daemon = TestDaemon::start("");
    let live = Proc::sleeper();
    let wrong = format!("{}:{}", live.pid(), live.start_time() + 1);
    let marker = daemon.path().join("ran");
    let (code, _, err) = daemon.ctl(&[
        "exec",
        "--parent",
        &wrong,
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("the parent {}", live.pid())), "{err}");
    assert!(err.contains("not starting touch"), "{err}");
    assert!(!marker.exists());
}

/// `( tetherctl exec -- cmd & )`: the subshell that launched tetherctl has
/// exited before tetherctl looks, so it was adopted by init (pid 1 of a
/// fresh pid namespace here, a perl loop that reports how its children
/// ended). tetherctl exits 4 and says to pass `--parent $$`; the command
/// is not started. (An orphan adopted by a subreaper other than init
/// cannot be told from the subreaper's own child; see tetherctl(1).)
#[test]
fn exec_whose_launcher_exited_and_left_it_to_init_exits_4() {
    if !is_root() {
        eprintln!("skipped: a pid namespace needs root");
        return;
    }
    if Command::new("perl").arg("-e1").status().is_err() {
        eprintln!("skipped: the namespace's init is a perl script and perl is missing");
        return;
    }
    // The launcher starts a shell in the background and exits; the shell
    // waits until it has been adopted, then becomes tetherctl.
    const INIT: &str = r#"
        my ($ctl, $err, $marker) = @ARGV;
        my $launcher = q{( sh -c 'while [ "$(cut -d" " -f4 /proc/$$/stat)" != 1 ]; do sleep 0.01; done; exec "$0" exec -- touch "$2" 2>"$1"' "$0" "$1" "$2" & )};
        if (fork() == 0) { exec "sh", "-c", $launcher, $ctl, $err, $marker; }
        while ((my $pid = wait()) != -1) { printf "exit %d\n", $? >> 8; }
    "#;
    let tmp = tempfile::tempdir().unwrap();
    let err_file = tmp.path().join("exec.err");
    let marker = tmp.path().join("ran");
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(["perl", "-e", INIT, TETHERCTL])
        .arg(&err_file)
        .arg(&marker)
        .env("TETHER_SOCKET", tmp.path().join("no-daemon.sock"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && stdout.is_empty() {
        eprintln!(
            "skipped: cannot create a pid namespace here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let err = fs::read_to_string(&err_file).unwrap_or_default();
    assert!(
        stdout.lines().any(|l| l == "exit 4"),
        "tetherctl did not exit 4: {stdout}\n{err}"
    );
    assert!(
        err.contains("the launcher is gone: this process was adopted by pid 1; not starting touch"),
        "{err}"
    );
    assert!(err.contains("--parent $$"), "{err}");
    assert!(!marker.exists());
}

/// `tetherctl bind` with a parent that is not running (a typo) still
/// binds (the children are signalled at once, as documented), but says so
/// on stderr instead of printing only the id.
#[test]
fn bind_with_a_parent_not_running_says_so() {
    let daemon = TestDaemon::start("");
    let mut gone = Proc::sleeper();
    let pid = gone.pid();
    gone.kill9();
    let mut child = Proc::sleeper();
    let (code, out, err) = daemon.ctl(&[
        "bind",
        "--parent",
        &pid.to_string(),
        "--child",
        &child.pid().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().parse::<u64>().is_ok(), "{out}");
    assert!(
        err.contains(&format!(
            "tetherctl: warning: the parent {pid} is not running"
        )) && err.contains("the children were signalled at once"),
        "{err}"
    );
    assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
}
