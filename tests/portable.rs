//! The core behaviours on every OS tether supports, written with std, nix
//! and ps only: these are what CI runs on macOS and FreeBSD hosts (with
//! the kqueue backend), and on Linux they run against each backend too.

use std::io::BufRead;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::util::{binding, exists, wait_until, Proc, TestDaemon, TETHERCTL, TIMEOUT};

#[test]
fn portable_child_is_signalled_when_its_parent_dies() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "signal = \"INT\""));
    parent.kill9();
    assert_eq!(
        child.wait_signal(TIMEOUT),
        Some(libc::SIGINT),
        "{}",
        daemon.log_text()
    );
    daemon.wait_log(&format!("sent SIGINT to child {}", child.pid()));
}

#[test]
fn portable_a_child_ignoring_the_signal_gets_sigkill_after_grace() {
    let mut parent = Proc::sleeper();
    let mut child = Proc::term_ignorer();
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "grace = \"300ms\""));
    parent.kill9();
    assert_eq!(
        child.wait_signal(TIMEOUT),
        Some(libc::SIGKILL),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn portable_socket_binding_fires_and_status_names_the_backend() {
    let daemon = TestDaemon::start("");
    let parent = Proc::sleeper();
    let mut child = Proc::sleeper();
    let bystander = Proc::sleeper();
    let id = daemon.bind(parent.pid(), &[child.pid()], &["--grace", "1s"]);
    assert!(id > 0);
    let (code, out, err) = daemon.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    let expected = if cfg!(target_os = "linux") {
        crate::util::backend_name()
    } else {
        "kqueue".to_string()
    };
    assert!(
        out.contains(&format!("backend:      {expected}\n")),
        "{out}"
    );
    parent.signal(Signal::SIGKILL);
    assert_eq!(
        child.wait_signal(TIMEOUT),
        Some(libc::SIGTERM),
        "{}",
        daemon.log_text()
    );
    assert!(exists(bystander.pid()), "an unbound process was touched");
}

#[test]
fn portable_exec_tethers_a_command_to_its_launcher() {
    let daemon = TestDaemon::start("");
    let mut launcher = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{TETHERCTL} --socket {} exec --name portable -- sleep 1000 & echo $!; wait",
            daemon.socket.display()
        ))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(launcher.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    let mut launcher = Proc::from_child(launcher);
    daemon.wait_log("binding \"portable\"");
    assert!(wait_until(TIMEOUT, || crate::util::comm(pid) == "sleep"));
    launcher.kill9();
    // The orphan is re-parented to whoever reaps orphans here (this test
    // process, if another test made it a subreaper): ended is all a
    // portable test can see.
    assert!(
        wait_until(TIMEOUT, || crate::util::ended(pid)),
        "{}",
        daemon.log_text()
    );
    daemon.wait_log(&format!("sent SIGTERM to child {pid}"));
}
