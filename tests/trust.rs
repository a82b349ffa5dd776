//! Whom tetherd and tetherctl trust: state and pins files another user
//! could have planted or could replace (a directory others can write, a
//! symlink, a FIFO, the wrong owner or mode), and control sockets another
//! user could serve.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::*;

/// A state file holding one socket binding made by uid 0 whose parent
/// (pinned) is already dead and whose child is `child`: restored, it
/// fires at once and sends SIGTERM to `child`.
fn planted_state(dead: (i32, u64), child: &Proc) -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    format!(
        r#"{{"version":1,"next_id":2,"bindings":[{{"id":1,"uid":0,"name":"planted","boot_id":"{}","parent":{{"pid":{},"start":{}}},"children":[{{"pid":{},"start":{}}}],"signal":"SIGTERM","grace":"5s","kill":"process"}}]}}"#,
        boot.trim(),
        dead.0,
        dead.1,
        child.pid(),
        child.start_time()
    )
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A state file holding a uid-0 binding that fires at restore, planted by
/// another user (or left writable by one): in a directory anyone can
/// write, behind a symlink, owned by another uid, or writable by others.
/// tetherd refuses each with a warning naming the file and why, starts
/// without it, and the child is not signalled. The control case (the
/// same file, root's own, mode 0600) shows that the file would fire.
#[test]
fn planted_state_files_are_refused_and_never_fire() {
    if !is_root() {
        eprintln!("skipped: planting another user's files needs root");
        return;
    }
    let Some((uid, gid)) = test_user() else {
        return;
    };
    let mut dead = Proc::sleeper();
    let dead_id = (dead.pid(), dead.start_time());
    dead.kill9();
    let cases: [(&str, &str); 5] = [
        ("shared-dir", "writable by group or others (mode 1777)"),
        ("symlink", "refused the state file: it is a symlink"),
        (
            "owner",
            &format!("it is owned by uid {uid}, not by tetherd's uid 0"),
        ),
        ("mode", "it is writable by group or others (mode 0666)"),
        ("control", ""),
    ];
    for (case, expected) in cases {
        let mut child = Proc::sleeper();
        let mut daemon = TestDaemon::start_stopped("");
        let state_dir = daemon.state.parent().unwrap().to_owned();
        fs::create_dir(&state_dir).unwrap();
        chmod(&state_dir, 0o700);
        let text = planted_state(dead_id, &child);
        match case {
            "shared-dir" => {
                chmod(&state_dir, 0o1777);
                fs::write(&daemon.state, &text).unwrap();
                chown(&daemon.state, uid, gid);
                chmod(&daemon.state, 0o600);
            }
            "symlink" => {
                let shared = daemon.path().join("shared");
                fs::create_dir(&shared).unwrap();
                chmod(&shared, 0o1777);
                let theirs = shared.join("theirs.json");
                fs::write(&theirs, &text).unwrap();
                chown(&theirs, uid, gid);
                std::os::unix::fs::symlink(&theirs, &daemon.state).unwrap();
            }
            "owner" => {
                fs::write(&daemon.state, &text).unwrap();
                chown(&daemon.state, uid, gid);
                chmod(&daemon.state, 0o600);
            }
            "mode" => {
                fs::write(&daemon.state, &text).unwrap();
                chmod(&daemon.state, 0o666);
            }
            _ => {
                fs::write(&daemon.state, &text).unwrap();
                chmod(&daemon.state, 0o600);
            }
        }
        daemon.spawn(None);
        if case == "control" {
            assert_eq!(
                child.wait_signal(TIMEOUT),
                Some(libc::SIGTERM),
                "the planted binding is not one that fires; log:\n{}",
                daemon.log_text()
            );
            continue;
        }
        let log = daemon.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("warn") && l.contains(expected)),
            "{case}: no warning with {expected:?}; log:\n{log}"
        );
        assert!(!log.contains("sent SIGTERM"), "{case}: fired; log:\n{log}");
        // A sleep only to show that nothing happens: the restore has run
        // before "ready".
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.is_alive(), "{case}: the child was signalled");
        if case != "shared-dir" {
            // The daemon's own state, written by a bind, is root's and 0600.
            let parent = Proc::sleeper();
            let victim = Proc::sleeper();
            daemon.bind(parent.pid(), &[victim.pid()], &[]);
            let meta = fs::symlink_metadata(&daemon.state).unwrap();
            assert!(meta.file_type().is_file(), "{case}");
            assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600), "{case}");
        }
    }
}

/// A root daemon whose state directory anyone can write answers a bind
/// with an error (it cannot make it durable there) rather than write
/// where any user can create names.
#[test]
fn a_root_daemon_does_not_write_state_where_others_can_create_names() {
    if !is_root() {
        eprintln!("skipped: the check applies to a root daemon");
        return;
    }
    let mut daemon = TestDaemon::start_stopped("");
    let state_dir = daemon.state.parent().unwrap().to_owned();
    fs::create_dir(&state_dir).unwrap();
    chmod(&state_dir, 0o1777);
    daemon.spawn(None);
    let parent = Proc::sleeper();
    let child = Proc::sleeper();
    let (code, _, err) = daemon.ctl(&[
        "bind",
        "--parent",
        &parent.pid().to_string(),
        "--child",
        &child.pid().to_string(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("writable by group or others (mode 1777)"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&state_dir).unwrap().count(), 0);
}

fn spawn_tetherd(daemon: &TestDaemon) -> Child {
    let log = fs::File::create(&daemon.log).unwrap();
    Command::new(TETHERD)
        .arg("--config")
        .arg(&daemon.config)
        .arg("--state")
        .arg(&daemon.state)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(backend_args())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A FIFO at the pins path (and one at the state path) is refused at once:
/// tetherd starts, says why, and stops on SIGTERM within a bounded time.
/// It used to block in open(2) for ever, and SIGTERM, caught by then, was
/// never acted on.
#[test]
fn a_fifo_at_the_pins_path_neither_hangs_start_up_nor_blocks_sigterm() {
    let daemon = TestDaemon::start_stopped("");
    let state_dir = daemon.state.parent().unwrap();
    fs::create_dir(state_dir).unwrap();
    let fifo_mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    nix::unistd::mkfifo(&daemon.state.with_extension("pins.json"), fifo_mode).unwrap();
    nix::unistd::mkfifo(&daemon.state, fifo_mode).unwrap();
    let mut child = spawn_tetherd(&daemon);
    let pid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let ready = wait_until(TIMEOUT, || daemon.count("ready:") > 0);
    let to_ready = started.elapsed();
    kill(pid, Signal::SIGTERM).unwrap();
    let stopping = Instant::now();
    let stopped = wait_until(TIMEOUT, || child.try_wait().unwrap().is_some());
    let to_stop = stopping.elapsed();
    if !stopped {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = daemon.log_text();
    assert!(ready, "not ready after {to_ready:?}; log:\n{log}");
    assert!(
        stopped,
        "SIGTERM did not stop it within {TIMEOUT:?}; log:\n{log}"
    );
    assert!(
        log.contains("refused the pins file: it is a FIFO, not a regular file"),
        "{log}"
    );
    assert!(
        log.contains("refused the state file: it is a FIFO, not a regular file"),
        "{log}"
    );
    eprintln!("ready in {to_ready:?}, stopped {to_stop:?} after SIGTERM");
}

/// Serves a fake tetherd at `socket` as `uid`: the directory is created
/// (0755, theirs) and every line gets `{"ok":true,"id":1}`.
fn fake_daemon(uid: u32, gid: u32, socket: &Path) -> Proc {
    const SCRIPT: &str = r#"
        use IO::Socket::UNIX; use File::Basename;
        my $path = shift;
        mkdir dirname($path), 0755;
        my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $path, Listen => 16)
            or die "listen: $!";
        chmod 0777, $path;
        while (my $c = $s->accept) { my $l = <$c>; print $c qq({"v":1,"ok":true,"id":1}\n); close $c; }
    "#;
    let child = as_user(uid, gid, &["perl", "-e", SCRIPT, socket.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let fake = Proc::from_child(child);
    assert!(
        wait_until(TIMEOUT, || fs::symlink_metadata(socket).is_ok()),
        "the fake daemon did not start"
    );
    fake
}

/// A uid with no account, for a victim whose /tmp/tether-UID/ no other
/// test run uses.
fn victim_uid() -> u32 {
    70_000 + std::process::id() % 10_000
}

/// `tetherctl ARGS` as `uid` without XDG_RUNTIME_DIR (as after su, sudo -u
/// or in cron), the system socket at `system`: (exit code, stderr).
fn tetherctl_as(uid: u32, system: &Path, args: &[&str]) -> (i32, String) {
    let mut argv = vec![TETHERCTL];
    argv.extend(args);
    let out = as_user(uid, uid, &argv)
        .env_remove("XDG_RUNTIME_DIR")
        .env("TETHER_SYSTEM_SOCKET", system)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Another user squats /tmp/tether-VICTIM/ and serves a fake daemon that
/// answers "ok" to everything. The victim's `tetherctl exec` (no
/// XDG_RUNTIME_DIR, no system daemon) refuses with exit 3 and does not
/// run the command; pointed at the fake socket explicitly, the peer
/// credentials refuse it too.
#[test]
fn a_squatted_user_socket_never_lets_exec_run_untethered() {
    if !is_root() {
        eprintln!("skipped: running two other users needs root");
        return;
    }
    let Some((attacker, attacker_gid)) = test_user() else {
        return;
    };
    if Command::new("perl").arg("-e1").status().is_err() {
        eprintln!("skipped: the fake daemon is a perl script and perl is missing");
        return;
    }
    let victim = victim_uid();
    let squat = std::path::PathBuf::from(format!("/tmp/tether-{victim}"));
    let _ = fs::remove_dir_all(&squat);
    let socket = squat.join("tether.sock");
    let _fake = fake_daemon(attacker, attacker_gid, &socket);
    let tmp = tempfile::tempdir().unwrap();
    let system = tmp.path().join("no-system-daemon.sock");

    let (code, err) = tetherctl_as(victim, &system, &["exec", "--", "sh", "-c", "exit 42"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "{}: the socket directory is owned by uid {attacker}, neither root nor you (uid {victim})",
            squat.display()
        )),
        "{err}"
    );
    assert!(err.contains("not starting sh untethered"), "{err}");

    let (code, err) = tetherctl_as(
        victim,
        &system,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "exec",
            "--",
            "sh",
            "-c",
            "exit 42",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "the server runs as uid {attacker}, neither root nor you (uid {victim}); refusing to talk to it"
        )),
        "{err}"
    );
    let _ = fs::remove_dir_all(&squat);
}

/// A stale per-user socket (its daemon gone, nothing listening) does not
/// hide the system daemon: `status` and `exec` fall through to it.
#[test]
fn a_stale_user_socket_falls_through_to_the_system_daemon() {
    if !is_root() {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    let daemon = TestDaemon::start("");
    chmod(daemon.path(), 0o755);
    let victim = victim_uid() + 1;
    let own_dir = std::path::PathBuf::from(format!("/tmp/tether-{victim}"));
    let _ = fs::remove_dir_all(&own_dir);
    fs::create_dir(&own_dir).unwrap();
    let stale = own_dir.join("tether.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    chown(&stale, victim, victim);
    chown(&own_dir, victim, victim);
    chmod(&own_dir, 0o700);

    let (code, err) = tetherctl_as(victim, &daemon.socket, &["status"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = tetherctl_as(
        victim,
        &daemon.socket,
        &["exec", "--", "sh", "-c", "exit 42"],
    );
    assert_eq!(code, 42, "the command did not run tethered: {err}");
    daemon.wait_log("bound by pid");
    let _ = fs::remove_dir_all(&own_dir);
}

/// The daemon's side: it refuses a socket directory another user owns
/// (as one squatted in /tmp would be) rather than serve from it.
#[test]
fn the_daemon_refuses_a_socket_directory_another_user_owns() {
    if !is_root() {
        eprintln!("skipped: making another user's directory needs root");
        return;
    }
    let Some((uid, gid)) = test_user() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("squatted");
    fs::create_dir(&dir).unwrap();
    chown(&dir, uid, gid);
    chmod(&dir, 0o755);
    let config = tmp.path().join("tether.toml");
    fs::write(&config, "").unwrap();
    let socket = dir.join("tether.sock");
    let state = tmp.path().join("state/state.json");
    let (code, _, err) = run_tetherd(&[
        "--config",
        config.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the socket directory is owned by uid {uid}, not by this daemon's uid 0 or root"
        )),
        "{err}"
    );
    assert!(!socket.exists());
}
