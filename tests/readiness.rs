//! Telling a supervisor that tetherd is ready: s6's notification
//! descriptor (`--ready-fd`) and systemd's NOTIFY_SOCKET datagrams, each
//! checked from the supervisor's side with a real pipe or socket.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::{backend_args, TETHERD};

/// A tetherd command on files in `dir`.
fn tetherd(dir: &std::path::Path) -> Command {
    std::fs::write(dir.join("t.toml"), "").unwrap();
    let mut cmd = Command::new(TETHERD);
    cmd.arg("--config")
        .arg(dir.join("t.toml"))
        .arg("--state")
        .arg(dir.join("state.json"))
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .args(backend_args())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// dup2(fd, 3), for the child side of a fork.
fn onto_fd_3(fd: i32) -> std::io::Result<()> {
    // SAFETY: dup2 takes two integers; `fd` is open in the child.
    if unsafe { nix::libc::dup2(fd, 3) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn ready_fd_gets_a_newline_once_the_socket_answers_and_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    // Close-on-exec, so tetherd inherits the write end only as fd 3 (and
    // closing that is all it takes to end the read below).
    let (reader, writer): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    for fd in [&reader, &writer] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let raw = writer.as_raw_fd();
    let mut cmd = tetherd(dir.path());
    cmd.arg("--ready-fd").arg("3");
    // SAFETY: only dup2, which is async-signal-safe, runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || onto_fd_3(raw));
    }
    let mut child = cmd.spawn().unwrap();
    drop(writer);
    // Blocks until tetherd writes and closes its end (or dies).
    let mut got = String::new();
    std::fs::File::from(reader)
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "\n", "tetherd exited: {:?}", child.try_wait());
    // Ready means serving: the control socket answers now.
    let (code, out, err) = crate::util::tetherctl(&dir.path().join("s.sock"), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bindings:"), "{out}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_ready_fd_that_is_not_open_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = tetherd(dir.path())
        .args(["--ready-fd", "97"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tetherd: --ready-fd: descriptor 97 is not open"),
        "{err}"
    );
}

#[test]
fn notify_socket_gets_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let listener = UnixDatagram::bind(&path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = tetherd(dir.path())
        .env("NOTIFY_SOCKET", &path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = listener.recv(&mut buf).expect("a datagram from tetherd");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=0 bindings (0 watched), backend "),
        "{ready}"
    );
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGHUP).unwrap();
    assert!(next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(next().starts_with("READY=1\n"));
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(next(), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}
