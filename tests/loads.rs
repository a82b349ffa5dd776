//! Large configurations: applied in slices, so the socket and the
//! watchers are served during the load; a reload is answered when its load
//! is applied (a second one waits for it); a parent that exits before its
//! binding's slice is acted on.

use std::thread;
use std::time::Instant;

use crate::util::{binding, tetherctl, wait_until, Proc, TestDaemon, TIMEOUT};

/// Sleepers shared by the bindings (the configuration allows a child in
/// several bindings, each parent and child pair once): 80 make 6,320
/// pairs.
const N_PROCS: usize = 80;
const N_BINDINGS: usize = 6000;

/// `n` bindings over `procs`, every ordered pair at most once.
fn many(procs: &[Proc], n: usize) -> String {
    let mut text = String::new();
    let pairs = procs.iter().flat_map(|p| {
        procs
            .iter()
            .filter(move |c| c.pid() != p.pid())
            .map(move |c| (p.pid(), c.pid()))
    });
    for (parent, child) in pairs.take(n) {
        text.push_str(&format!(
            "[[binding]]\nparent = {parent}\nchild = {child}\n"
        ));
    }
    text
}

/// How many bindings the daemon can hold here: each holds two pidfds
/// with the pidfd backend, so a descriptor limit below what
/// [`N_BINDINGS`] needs is raised where the test may (root in a VM), and
/// the load made smaller where it may not.
fn bindings_that_fit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = u64::try_from(N_BINDINGS * 2 + 1024).unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard >= want || setrlimit(Resource::RLIMIT_NOFILE, soft, want).is_ok() {
        return N_BINDINGS;
    }
    let fit = usize::try_from(hard.saturating_sub(1024) / 2).unwrap();
    eprintln!("RLIMIT_NOFILE {hard} cannot be raised here: {fit} bindings instead of {N_BINDINGS}");
    fit.min(N_BINDINGS)
}

#[test]
fn a_large_reload_keeps_serving_the_socket_and_the_watchers() {
    let n_bindings = bindings_that_fit();
    let procs: Vec<Proc> = (0..N_PROCS).map(|_| Proc::sleeper()).collect();
    let (mut kept_p, mut kept_c) = (Proc::sleeper(), Proc::sleeper());
    let (mut gone_p, mut gone_c) = (Proc::sleeper(), Proc::sleeper());
    let (mut late_p, mut late_c) = (Proc::sleeper(), Proc::sleeper());
    let kept = binding(kept_p.pid(), kept_c.pid(), "name = \"kept\"");
    let gone = binding(gone_p.pid(), gone_c.pid(), "name = \"gone\"");
    // The file's last entry: applied in the load's last slice.
    let late = binding(late_p.pid(), late_c.pid(), "name = \"late\"");
    let daemon = TestDaemon::start(&format!("{kept}{gone}"));
    let big = format!("{kept}{}{late}", many(&procs, n_bindings));
    std::fs::write(&daemon.config, big).expect("write config");

    let socket = daemon.socket.clone();
    let asked = Instant::now();
    let first = thread::spawn(move || {
        let answer = tetherctl(&socket, &["reload"]);
        (answer, Instant::now())
    });
    // The load runs, and status says so (a daemon that served nothing
    // during the load would answer only after it, showing none).
    let mut seen = String::new();
    wait_until(TIMEOUT, || {
        seen = daemon.ctl(&["status"]).1;
        seen.contains("loading:      reload in progress") || first.is_finished()
    });
    assert!(
        seen.contains("loading:      reload in progress"),
        "status never showed the load: {seen}\nlog:\n{}",
        daemon.log_text()
    );
    // The parent of the last entry exits before its slice.
    late_p.kill9();
    // A second reload, asked for during the load, waits for it.
    let socket = daemon.socket.clone();
    let second = thread::spawn(move || tetherctl(&socket, &["reload"]));

    // A root bind is answered, and a parent's exit acted on, during the
    // load: both before the reload's answer, which waits for its end.
    let (mut bound_p, mut bound_c) = (Proc::sleeper(), Proc::sleeper());
    daemon.bind(bound_p.pid(), &[bound_c.pid()], &[]);
    let bound = Instant::now();
    bound_p.kill9();
    bound_c.expect_signal(Some(libc::SIGTERM), &daemon);
    let signalled = Instant::now();

    let ((code, out, err), reloaded) = first.join().expect("reload thread");
    println!(
        "reload answered after {:?}; the bind during it after {:?}, the signal after {:?}",
        reloaded - asked,
        bound - asked,
        signalled - asked
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "reloaded: {} added, 1 removed, 1 unchanged, 0 failed",
            n_bindings + 1
        ),
        "log:\n{}",
        daemon.log_text()
    );
    assert!(
        bound < reloaded && signalled < reloaded,
        "the bind ({:?}) or the signal ({:?}) came only after the load ended",
        bound.saturating_duration_since(reloaded),
        signalled.saturating_duration_since(reloaded)
    );
    // The binding whose parent exited before its slice was acted on.
    late_c.expect_signal(Some(libc::SIGTERM), &daemon);
    daemon.wait_log(&format!(
        "binding \"late\": parent {} is gone at load",
        late_p.pid()
    ));

    // The second reload read the same file: nothing left to change.
    let (code, out, err) = second.join().expect("second reload thread");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "reloaded: 0 added, 0 removed, {} unchanged, 0 failed",
            n_bindings + 2
        )
    );
    let (_, status, _) = daemon.ctl(&["status"]);
    assert!(!status.contains("loading:"), "{status}");

    // The removed binding no longer acts; the kept one still does.
    daemon.wait_log("binding \"gone\": removed (no longer in the configuration)");
    gone_p.kill9();
    kept_p.kill9();
    kept_c.expect_signal(Some(libc::SIGTERM), &daemon);
    assert!(gone_c.is_alive(), "a removed binding acted");
}
