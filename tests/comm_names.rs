//! Program names that are not valid UTF-8. The kernel keeps a process's
//! name (`comm`, field 2 of /proc/PID/stat) as the first 15 bytes of its
//! executable's name, so a name in Cyrillic is cut in the middle of a
//! two-byte letter: such a process must be bound, watched and signalled
//! like any other, as a parent, a child and a descendant of a tree.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::util::{become_subreaper, binding, ended, wait_until, Proc, TestDaemon, TIMEOUT};

/// The executable's name: 31 bytes, cut by the kernel to 15, the last of
/// them the first byte of "и".
const NAME: &str = "мониторинг-сервис";

/// A copy of sleep(1) named [`NAME`] in `dir`.
fn named_sleep(dir: &Path) -> PathBuf {
    let path = dir.join(NAME);
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep(1)");
    std::fs::copy(sleep, &path).expect("copy sleep");
    path
}

/// Runs `program 1000`.
fn spawn(program: &Path) -> Proc {
    let child = crate::util::spawn_copied(Command::new(program).arg("1000").stdin(Stdio::null()));
    let proc = Proc::from_child(child);
    let pid = proc.pid();
    assert!(
        wait_until(TIMEOUT, || cut_name(pid).is_some()),
        "no cut name"
    );
    proc
}

/// The raw `comm` of `pid` if it is the cut, invalid UTF-8 [`NAME`].
fn cut_name(pid: i32) -> Option<Vec<u8>> {
    let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm).to_vec();
    (comm.as_slice() == NAME.as_bytes().get(..15)? && std::str::from_utf8(&comm).is_err())
        .then_some(comm)
}

#[test]
fn a_name_cut_mid_letter_is_bound_as_parent_and_child() {
    let dir = tempfile::tempdir().unwrap();
    let program = named_sleep(dir.path());
    let mut parent = spawn(&program);
    let mut child = spawn(&program);
    let mut parent2 = spawn(&program);
    let mut child2 = spawn(&program);
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), "name = \"cfg\""));
    daemon.wait_log("1 bindings held");
    // Over the socket too: tetherctl reads the start times itself.
    daemon.bind(parent2.pid(), &[child2.pid()], &["--name", "sock"]);

    // The parent's death is seen whether it is reaped at once or stays a
    // zombie for a while (its launcher reaping late).
    parent.signal(Signal::SIGKILL);
    child.expect_signal(Some(libc::SIGTERM), &daemon);
    parent.kill9();
    parent2.kill9();
    child2.expect_signal(Some(libc::SIGTERM), &daemon);
    daemon.wait_log(&format!("child {} exited", child2.pid()));
}

/// SIGKILLs a pid when dropped, so a descendant the daemon missed does not
/// outlive a failed test.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

#[test]
fn a_name_cut_mid_letter_does_not_escape_a_tree() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let program = named_sleep(dir.path());
    let mut parent = Proc::sleeper();
    let pidfile = dir.path().join("descendant");
    // The bound child forks the named program and waits for it.
    let script = format!("\"$0\" 1000 & echo $! > {}; wait", pidfile.display());
    let child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(std::ffi::OsStr::from_bytes(program.as_os_str().as_bytes()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Proc::from_child(child);
    let mut descendant = 0;
    assert!(wait_until(TIMEOUT, || {
        descendant = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        descendant > 0 && cut_name(descendant).is_some()
    }));
    let _guard = KillOnDrop(descendant);
    let daemon = TestDaemon::start(&binding(
        parent.pid(),
        child.pid(),
        "kill = \"tree\"\ngrace = \"10s\"",
    ));
    daemon.wait_log("1 bindings held");
    parent.kill9();
    assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
    assert!(
        wait_until(TIMEOUT, || ended(descendant)),
        "the descendant {descendant} with a cut name was not signalled\nlog:\n{}",
        daemon.log_text()
    );
    daemon.wait_log(&format!("to descendant {descendant}"));
}
