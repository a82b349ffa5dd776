//! The control socket and tetherctl: every command, exec, restarts, and
//! clients that misbehave.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::util::{
    as_user, become_subreaper, binding, ctl_as, reap, root_and_test_user, test_user, tetherctl,
    users_sleeper, wait_until, Proc, TestDaemon, TETHERCTL, TIMEOUT,
};

#[test]
fn bind_list_status_unbind() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let (mut other_p, mut other_c) = (Proc::sleeper(), Proc::sleeper());
    let daemon = TestDaemon::start("");
    let id = daemon.bind(
        parent.pid(),
        &[child.pid()],
        &["--name", "qemu", "--signal", "INT", "--grace", "2s"],
    );
    let other = daemon.bind(other_p.pid(), &[other_c.pid()], &[]);
    assert_ne!(id, other);

    let (code, out, _) = daemon.ctl(&["list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID  NAME"), "{out}");
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.contains("qemu"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            id.to_string().as_str(),
            "qemu",
            "socket",
            "0",
            &parent.pid().to_string(),
            &child.pid().to_string(),
            "SIGINT",
            "2s",
            "process",
            "armed"
        ]
    );

    let (code, out, _) = daemon.ctl(&["list", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap();
    assert_eq!(entry["parent"], parent.pid());
    assert_eq!(entry["children"][0], child.pid());
    assert_eq!(entry["signal"], "SIGINT");

    let (code, out, _) = daemon.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("backend:      {}\n", crate::util::backend_name())),
        "{out}"
    );
    assert!(
        out.contains("bindings:     2 (2 watching their parent)"),
        "{out}"
    );
    let (_, out, _) = daemon.ctl(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["pid"], daemon.pid());
    assert!(status["fds_in_use"].as_u64().unwrap() >= 4);
    assert!(status["fds_allowed"].as_u64().unwrap() > 0);

    // Unbound: the parent's death no longer matters.
    let (code, _, err) = daemon.ctl(&["unbind", &other.to_string()]);
    assert_eq!(code, 0, "{err}");
    other_p.kill9();
    // The bound one acts with its own signal.
    parent.kill9();
    child.expect_signal(Some(libc::SIGINT), &daemon);
    std::thread::sleep(Duration::from_millis(200));
    assert!(other_c.is_alive(), "an unbound child was signalled");
    let (code, _, err) = daemon.ctl(&["unbind", "999"]);
    assert_eq!((code, err.trim()), (1, "tetherctl: no binding 999"));
}

#[test]
fn bind_refusals_are_one_line_errors() {
    let daemon = TestDaemon::start("");
    let me = std::process::id().to_string();
    let other = Proc::sleeper();
    let other = other.pid().to_string();
    let dead = {
        let mut p = Proc::sleeper();
        let pid = p.pid();
        p.kill9();
        pid.to_string()
    };
    let cases: [(&[&str], &str); 3] = [
        (&["bind", "--parent", &me, "--child", &me], "pid "),
        (
            &["bind", "--parent", &me, "--child", &dead],
            "is not running",
        ),
        (
            &["bind", "--parent", "1", "--child", &other],
            "pid 1 cannot be bound",
        ),
    ];
    for (args, expected) in cases {
        let (code, out, err) = daemon.ctl(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.starts_with("tetherctl: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let (code, _, err) = daemon.ctl(&[
        "bind",
        "--parent",
        &me,
        "--child",
        &other,
        "--kill",
        "everything",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown kill mode \"everything\""), "{err}");
    let (code, _, err) = daemon.ctl(&["bind", "--parent", "x", "--child", "2"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = daemon.ctl(&["bind", "--parent", "5", "--child", "6", "--grace", "5 sec"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn reload_over_the_socket_reports_config_errors() {
    let daemon = TestDaemon::start("");
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    fs::write(&daemon.config, binding(parent.pid(), child.pid(), "")).unwrap();
    let (code, out, err) = daemon.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "reloaded: 1 added, 0 removed, 0 unchanged, 0 failed"
    );
    fs::write(&daemon.config, "[defaults]\ngrace = \"soon\"\n").unwrap();
    let (code, _, err) = daemon.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("reload refused: 1 error(s)"), "{err}");
    assert!(
        err.contains("tether.toml:2:9: [defaults]: grace: invalid duration \"soon\""),
        "{err}"
    );
    parent.kill9();
    assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
}

/// Starts `sh` that runs `tetherctl exec ARGS -- sleep 1000` in the
/// background, writes the tethered command's pid to a file, then execs
/// into `sleep` itself: the sh process is the launcher.
fn launch(
    socket: &std::path::Path,
    dir: &std::path::Path,
    args: &str,
) -> (Proc, i32, std::path::PathBuf) {
    let pidfile = dir.join("cmd.pid");
    let errfile = dir.join("exec.err");
    let script = format!(
        "TETHER_SOCKET={} {TETHERCTL} exec {args} -- sleep 1000 2>{} & echo $! > {}; exec sleep 1000",
        socket.display(),
        errfile.display(),
        pidfile.display()
    );
    let launcher = Proc::sh(&script);
    assert!(wait_until(TIMEOUT, || fs::read_to_string(&pidfile)
        .is_ok_and(|s| s.ends_with('\n'))));
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (launcher, pid, errfile)
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn exec_binds_the_launcher_through_the_daemon() {
    become_subreaper();
    let daemon = TestDaemon::start("");
    let (mut launcher, cmd, _) = launch(&daemon.socket, daemon.path(), "--grace 1s");
    // The command keeps tetherctl's pid and becomes sleep.
    assert!(
        wait_until(TIMEOUT, || comm(cmd) == "sleep"),
        "exec did not happen"
    );
    let (_, out, _) = daemon.ctl(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = &json.as_array().unwrap()[0];
    assert_eq!(entry["parent"], launcher.pid());
    assert_eq!(entry["children"][0], cmd);
    assert_eq!(entry["name"], "sleep");
    launcher.kill9();
    assert_eq!(
        reap(cmd, TIMEOUT),
        Some(libc::SIGTERM),
        "log:\n{}",
        daemon.log_text()
    );
}

#[test]
fn exec_without_a_daemon_refuses_to_start_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let socket = dir.path().join("none.sock");
    let (code, _, err) = tetherctl(&socket, &["exec", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no tetherd answers at") && err.contains("not starting touch untethered"),
        "{err}"
    );
    assert!(!marker.exists(), "the command ran untethered");
}

#[test]
fn exec_fallback_arms_the_kernels_parent_death_signal() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let (mut launcher, cmd, errfile) = launch(&socket, dir.path(), "--fallback pdeathsig");
    assert!(
        wait_until(TIMEOUT, || comm(cmd) == "sleep"),
        "exec did not happen"
    );
    let err = fs::read_to_string(&errfile).unwrap();
    assert!(
        err.contains("falling back to the kernel's parent-death signal (SIGTERM)"),
        "{err}"
    );
    launcher.kill9();
    assert_eq!(reap(cmd, TIMEOUT), Some(libc::SIGTERM));
}

#[test]
fn exec_whose_parent_is_gone_does_not_start() {
    let daemon = TestDaemon::start("");
    let mut gone = Proc::sleeper();
    let pid = gone.pid().to_string();
    gone.kill9();
    let marker = daemon.path().join("ran");
    let (code, _, err) = daemon.ctl(&[
        "exec",
        "--parent",
        &pid,
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!(
            "the parent {pid} is already gone; not starting touch"
        )),
        "{err}"
    );
    assert!(!marker.exists());
}

#[test]
fn socket_bindings_survive_a_restart_and_a_parent_dead_meanwhile_is_acted_on() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let (kept_p, mut kept_c) = (Proc::sleeper(), Proc::sleeper());
    let mut daemon = TestDaemon::start("");
    let id = daemon.bind(parent.pid(), &[child.pid()], &[]);
    let kept = daemon.bind(kept_p.pid(), &[kept_c.pid()], &[]);
    daemon.stop();
    parent.kill9();
    daemon.spawn(None);
    child.expect_signal(Some(libc::SIGTERM), &daemon);
    daemon.wait_log(&format!(
        "binding {}->{} #{id} (uid 0): parent {} is gone at load",
        parent.pid(),
        child.pid(),
        parent.pid()
    ));
    // The other binding came back with its id and still acts.
    let (_, out, _) = daemon.ctl(&["list", "--json"]);
    assert!(out.contains(&format!("\"id\": {kept}")), "{out}");
    assert!(kept_c.is_alive());
    let new = daemon.bind(kept_p.pid(), &[kept_c.pid()], &["--name", "again"]);
    assert!(new > kept, "ids are not reused after a restart");
}

#[test]
fn a_sigkilled_daemon_loses_no_acknowledged_binding() {
    const N: usize = 100;
    let mut pairs: Vec<(Proc, Proc)> = (0..N).map(|_| (Proc::sleeper(), Proc::sleeper())).collect();
    let mut daemon = TestDaemon::start("");
    let socket = daemon.socket.clone();
    let jobs: Vec<(i32, i32)> = pairs.iter().map(|(p, c)| (p.pid(), c.pid())).collect();
    // Bind from another thread while the daemon is SIGKILLed mid-stream.
    let binder = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for (p, c) in jobs {
            let (code, out, _) = tetherctl(
                &socket,
                &[
                    "bind",
                    "--parent",
                    &p.to_string(),
                    "--child",
                    &c.to_string(),
                ],
            );
            if code == 0 {
                acked.push((p, out.trim().to_owned()));
            }
        }
        acked
    });
    assert!(wait_until(TIMEOUT, || daemon.count("bound by pid") >= N / 4));
    daemon.stop_with(nix::sys::signal::Signal::SIGKILL);
    let acked = binder.join().unwrap();
    assert!(
        !acked.is_empty() && acked.len() < N,
        "the kill should land mid-stream: {} acked",
        acked.len()
    );
    daemon.spawn(None);
    for (p, c) in &mut pairs {
        if acked.iter().any(|(pid, _)| *pid == p.pid()) {
            p.kill9();
            assert_eq!(
                c.wait_signal(TIMEOUT),
                Some(libc::SIGTERM),
                "acknowledged binding lost; log:\n{}",
                daemon.log_text()
            );
        }
    }
}

#[test]
fn hostile_clients_do_not_stall_the_daemon() {
    let daemon = TestDaemon::start("");
    // Garbage gets an error and the connection stays usable.
    let mut garbage = UnixStream::connect(&daemon.socket).unwrap();
    garbage.set_read_timeout(Some(TIMEOUT)).unwrap();
    garbage
        .write_all(b"\x00\xffnot json\n{\"v\":1,\"op\":\"status\"}\n")
        .unwrap();
    let mut reader = std::io::BufReader::new(garbage.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(
        line.contains("\"ok\":false") && line.contains("bad request"),
        "{line}"
    );
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");

    // Silent clients, more of them than the daemon keeps.
    let silent: Vec<UnixStream> = (0..500)
        .filter_map(|_| UnixStream::connect(&daemon.socket).ok())
        .collect();
    assert!(silent.len() >= 400, "only {} connections", silent.len());

    // A 10 MB line is refused, not buffered.
    let big = UnixStream::connect(&daemon.socket).unwrap();
    big.set_read_timeout(Some(TIMEOUT)).unwrap();
    let writer = {
        let mut big = big.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..10 {
                if big.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = big.write_all(b"\n");
        })
    };

    // Meanwhile a well-behaved client is served.
    let (code, out, err) = daemon.ctl(&["status"]);
    assert_eq!(code, 0, "{err}\nlog:\n{}", daemon.log_text());
    assert!(out.contains("backend:"));
    writer.join().unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&big), &mut answer).unwrap();
    assert!(answer.contains("longer than 65536 bytes"), "{answer}");
    daemon.wait_log("connections open; closing the idlest");
    drop(silent);
    let (code, _, _) = daemon.ctl(&["list"]);
    assert_eq!(code, 0);
}

#[test]
fn an_unprivileged_user_binds_only_what_it_owns_and_is_capped() {
    let Some((uid, gid)) =
        root_and_test_user("to run tetherd as root and a client as another user")
    else {
        return;
    };
    let daemon = TestDaemon::start("[daemon]\nmax_bindings_per_uid = 2\n");
    // Let the user reach the socket; the daemon's own directory is 0700.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(daemon.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| ctl_as(uid, gid, &daemon, args);
    let users_sleeper = || users_sleeper(uid, gid);

    let (root_p, root_c) = (Proc::sleeper(), Proc::sleeper());
    let roots = daemon.bind(root_p.pid(), &[root_c.pid()], &[]);
    let parent = Proc::sleeper();
    let (mine1, mine2, mine3) = (users_sleeper(), users_sleeper(), users_sleeper());

    // Root's process: refused, and logged with the peer's uid.
    let (code, _, err) = run(&[
        "bind",
        "--parent",
        &parent.pid().to_string(),
        "--child",
        &root_c.pid().to_string(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "uid {uid} may not bind child {}: it belongs to uid 0",
            root_c.pid()
        )),
        "{err}"
    );
    daemon.wait_log(&format!("refused bind from uid {uid} pid "));

    // Its own: allowed, up to the cap.
    for mine in [&mine1, &mine2] {
        let (code, out, err) = run(&[
            "bind",
            "--parent",
            &parent.pid().to_string(),
            "--child",
            &mine.pid().to_string(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.trim().parse::<u64>().is_ok(), "{out}");
    }
    let (code, _, err) = run(&[
        "bind",
        "--parent",
        &parent.pid().to_string(),
        "--child",
        &mine3.pid().to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("uid {uid} already has 2 live bindings, the limit")),
        "{err}"
    );

    // It sees only its own, cannot unbind root's, cannot reload.
    let (code, out, _) = run(&["list", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{out}");
    assert!(list.iter().all(|b| b["uid"] == uid));
    let (code, _, err) = run(&["unbind", &roots.to_string()]);
    assert_eq!(
        (code, err.trim().to_owned()),
        (1, format!("tetherctl: no binding {roots}"))
    );
    let (code, _, err) = run(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("reload is for root"), "{err}");
    // Root still sees everything.
    let (_, out, _) = daemon.ctl(&["list", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn a_bind_requiring_a_live_parent_says_why_in_a_code() {
    let daemon = TestDaemon::start("");
    let mut gone = Proc::sleeper();
    let pid = gone.pid();
    gone.kill9();
    let child = Proc::sleeper();
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    let request = format!(
        "{{\"v\":1,\"op\":\"bind\",\"parent\":{{\"pid\":{pid}}},\"children\":[{{\"pid\":{}}}],\"require_live_parent\":true}}\n",
        child.pid()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line).unwrap();
    let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["code"], "parent_gone", "{line}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains(&format!("the parent {pid} has already exited")));
}

/// A bind request from the test user that passes pidfds it opened on
/// root's processes: the daemon adopts the descriptors, but authorizes by
/// the processes' owners, so it refuses; and a request naming the
/// daemon's own pid or pid 1 is refused before any of that.
#[test]
fn an_unprivileged_user_cannot_bind_anothers_process_by_passing_its_pidfd() {
    if !crate::util::is_root() {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    let Some((uid, gid)) = test_user() else {
        return;
    };
    let daemon = TestDaemon::start("");
    let mut parent = Proc::sleeper();
    let mut victim = Proc::sleeper();
    // python3 opens pidfds (os.pidfd_open) and passes them (send_fds).
    let client = r#"
import json, os, socket, sys
sock, parent, child = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fds = [os.pidfd_open(parent), os.pidfd_open(child)]
req = {"v": 1, "op": "bind", "parent": {"pid": parent, "pidfd": 0},
       "children": [{"pid": child, "pidfd": 1}], "signal": "KILL"}
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
socket.send_fds(s, [json.dumps(req).encode() + b"\n"], fds)
print(s.makefile().readline().strip())
"#;
    // The system's python (a user-local one under /root is not reachable
    // by the test user).
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(python) = python else {
        eprintln!("skipped: no system python3 to write the crafted client in");
        return;
    };
    let socket = daemon.socket.display().to_string();
    let out = as_user(
        uid,
        gid,
        &[
            python,
            "-c",
            client,
            &socket,
            &parent.pid().to_string(),
            &victim.pid().to_string(),
        ],
    )
    .output()
    .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("pidfd_open") && err.contains("AttributeError") {
        eprintln!("skipped: this python3 has no os.pidfd_open");
        return;
    }
    assert!(answer.contains("\"ok\":false"), "{answer}\n{err}");
    assert!(
        answer.contains(&format!(
            "uid {uid} may not bind child {}: it belongs to uid 0",
            victim.pid()
        )),
        "{answer}"
    );
    // And the refusal holds: the parent dies, the victim lives.
    parent.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(victim.is_alive(), "{}", daemon.log_text());
    let (code, out, _) = daemon.ctl(&["list"]);
    assert_eq!(code, 0);
    assert!(!out.contains(&victim.pid().to_string()), "{out}");
}
