//! Backend choice: `auto` falls back from pidfd to netlink to poll when
//! the kernel refuses. The refusal is real, not injected into tether: a
//! seccomp filter installed in the daemon's process before exec makes
//! `pidfd_open` fail with ENOSYS (what a kernel before 5.3 answers) and,
//! for the second step, `socket(AF_NETLINK, ...)` fail with
//! EAFNOSUPPORT, as a container profile might.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::util::{binding, is_root, tetherctl, wait_until, Proc, TETHERCTL, TETHERD, TIMEOUT};

/// `AUDIT_ARCH_*` of this build's architecture, for the seccomp filter.
fn audit_arch() -> Option<u32> {
    if cfg!(target_arch = "x86_64") {
        Some(0xC000_003E)
    } else if cfg!(target_arch = "aarch64") {
        Some(0xC000_00B7)
    } else {
        None
    }
}

/// A seccomp program: `pidfd_open` fails with ENOSYS; with `no_netlink`,
/// `socket(AF_NETLINK, ..)` fails with EAFNOSUPPORT; all else is allowed.
fn filter(arch: u32, no_netlink: bool) -> Vec<libc::sock_filter> {
    let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    // seccomp_data: nr at 0, arch at 4, args[0] at 16 (low half on
    // little-endian machines, which both arches above are).
    let socket_nr = if no_netlink {
        libc::SYS_socket as u32
    } else {
        u32::MAX
    };
    vec![
        insn(ld, 0, 0, 4),
        insn(jeq, 1, 0, arch),
        insn(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
        insn(ld, 0, 0, 0),
        insn(jeq, 0, 1, libc::SYS_pidfd_open as u32),
        insn(ret, 0, 0, errno(libc::ENOSYS)),
        insn(jeq, 0, 3, socket_nr),
        insn(ld, 0, 0, 16),
        insn(jeq, 0, 1, libc::AF_NETLINK as u32),
        insn(ret, 0, 0, errno(libc::EAFNOSUPPORT)),
        insn(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Installs `program` as this process's seccomp filter (no_new_privs
/// first, so that it needs no privilege).
fn install_seccomp(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` and the program it points to outlive the call; the
    // kernel copies them.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            std::ptr::from_ref(&prog),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd` run under `program` (set after fork, before exec).
fn confine(cmd: &mut Command, program: Vec<libc::sock_filter>) {
    // SAFETY: between fork and exec only prctl(2) is called, which is
    // async-signal-safe; `program` was built before the fork and is only
    // read.
    unsafe {
        cmd.pre_exec(move || install_seccomp(&program));
    }
}

/// Starts tetherd (backend `auto`) under the filter; returns it with its
/// directory once it is ready, or `None` with the log if it did not start.
fn start_confined(
    config: &str,
    no_netlink: bool,
    extra: &[&str],
) -> Option<(std::process::Child, tempfile::TempDir)> {
    let arch = audit_arch()?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.toml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut cmd = Command::new(TETHERD);
    cmd.arg("--config")
        .arg(dir.path().join("t.toml"))
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(log);
    confine(&mut cmd, filter(arch, no_netlink));
    let mut child = cmd.spawn().unwrap();
    let read = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    wait_until(TIMEOUT, || {
        read().contains("ready:") || child.try_wait().unwrap().is_some()
    });
    if child.try_wait().unwrap().is_some() {
        return None;
    }
    Some((child, dir))
}

fn log_of(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
}

fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn auto_falls_back_to_netlink_then_poll_when_pidfd_is_refused() {
    if !is_root() {
        eprintln!("skipped: the netlink backend needs CAP_NET_ADMIN (run as root)");
        return;
    }
    if audit_arch().is_none() {
        eprintln!("skipped: no seccomp filter written for this architecture");
        return;
    }
    for (no_netlink, expected) in [(false, "netlink"), (true, "poll")] {
        let mut parent = Proc::sleeper();
        let mut child = Proc::sleeper();
        let config = binding(parent.pid(), child.pid(), "");
        let (daemon, dir) = start_confined(&config, no_netlink, &["--poll-interval", "50ms"])
            .expect("tetherd started under the seccomp filter");
        let log = log_of(&dir);
        assert!(
            log.contains(&format!(
                "backend {expected} chosen because pidfd is not usable: Function not implemented"
            )),
            "{log}"
        );
        if no_netlink {
            assert!(log.contains("netlink is not usable"), "{log}");
        }
        assert!(log.contains(&format!("backend {expected}, ")), "{log}");
        let (code, out, err) = tetherctl(&dir.path().join("s.sock"), &["status"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("backend:      {expected}\n")),
            "{out}"
        );
        parent.kill9();
        assert_eq!(
            child.wait_signal(TIMEOUT),
            Some(libc::SIGTERM),
            "{}",
            log_of(&dir)
        );
        stop(daemon);
    }
}

#[test]
fn a_backend_chosen_by_name_that_is_refused_stops_the_daemon_with_the_reason() {
    let Some(arch) = audit_arch() else {
        eprintln!("skipped: no seccomp filter written for this architecture");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = Command::new(TETHERD);
    cmd.arg("--config")
        .arg(&config)
        .arg("--backend")
        .arg("pidfd")
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .env_remove("RUST_LOG");
    confine(&mut cmd, filter(arch, false));
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot start: pidfd is not usable: Function not implemented"),
        "{err}"
    );
    // And a backend of another OS is refused by name.
    let (code, _, err) = crate::util::run_tetherd(&[
        "--config",
        config.to_str().unwrap(),
        "--backend",
        "kqueue",
        "--state",
        dir.path().join("state.json").to_str().unwrap(),
        "--socket",
        dir.path().join("s.sock").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("kqueue is not a backend of this OS (this build has: pidfd, netlink, poll)"),
        "{err}"
    );
}

#[test]
fn exec_without_pidfds_binds_by_start_time() {
    // The daemon has pidfds; tetherctl (under the filter) does not, so it
    // names its parent and itself by start time.
    let Some(arch) = audit_arch() else {
        eprintln!("skipped: no seccomp filter written for this architecture");
        return;
    };
    let daemon = crate::util::TestDaemon::start("");
    crate::util::become_subreaper();
    // A launcher shell runs `tetherctl exec -- sleep` under the filter;
    // then the launcher is killed and the sleep must get SIGTERM.
    let mut launcher = Command::new("sh");
    launcher
        .arg("-c")
        .arg(format!(
            "{TETHERCTL} --socket {} exec --name confined -- sleep 1000 & echo $!; wait",
            daemon.socket.display()
        ))
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    confine(&mut launcher, filter(arch, false));
    let mut launcher = launcher.spawn().unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(launcher.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    daemon.wait_log("binding \"confined\"");
    let list: serde_json::Value = serde_json::from_str(&daemon.ctl(&["list", "--json"]).1).unwrap();
    assert_eq!(list[0]["children"][0], pid, "{list}");
    // Pinned to the start time (tetherctl sent it; the daemon checked it).
    let saved = crate::util::saved_bindings(&daemon.state);
    let pinned = &saved[0]["children"][0];
    assert_eq!(pinned["pid"], pid, "{saved:?}");
    assert_eq!(pinned["start"], crate::util::start_time(pid), "{saved:?}");
    launcher.kill().unwrap();
    let _ = launcher.wait();
    assert_eq!(
        crate::util::reap(pid, TIMEOUT),
        Some(libc::SIGTERM),
        "{}",
        daemon.log_text()
    );
}
