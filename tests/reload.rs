//! SIGHUP: apply the difference, keep what did not change, refuse a broken
//! file and keep the old configuration.

use std::time::{Duration, Instant};

use crate::util::{binding, Proc, TestDaemon, TIMEOUT};

#[test]
fn reload_adds_removes_and_keeps_unchanged_bindings_and_timers() {
    let (mut kept_p, mut kept_c) = (Proc::sleeper(), Proc::sleeper());
    let (mut gone_p, mut gone_c) = (Proc::sleeper(), Proc::sleeper());
    let (mut new_p, mut new_c) = (Proc::sleeper(), Proc::sleeper());
    let (mut timer_p, mut timer_c) = (Proc::sleeper(), Proc::term_ignorer());

    let kept = binding(kept_p.pid(), kept_c.pid(), "name = \"kept\"");
    let timer = binding(
        timer_p.pid(),
        timer_c.pid(),
        "name = \"timer\"\ngrace = \"2s\"",
    );
    let gone = binding(gone_p.pid(), gone_c.pid(), "name = \"gone\"");
    let added = binding(new_p.pid(), new_c.pid(), "name = \"added\"");

    let daemon = TestDaemon::start(&format!("{kept}{timer}{gone}"));
    // Start the escalation timer of "timer" before the reload.
    timer_p.kill9();
    let fired = Instant::now();
    daemon.wait_log("binding \"timer\": parent");

    daemon.reload(&format!("{timer}{kept}{added}"));
    daemon.wait_log("configuration applied: 1 added, 1 removed, 2 unchanged");
    daemon.wait_log("binding \"gone\": removed (no longer in the configuration)");

    // The removed binding no longer acts.
    gone_p.kill9();
    // The added and the unchanged ones do.
    new_p.kill9();
    new_c.expect_signal(Some(libc::SIGTERM), &daemon);
    kept_p.kill9();
    kept_c.expect_signal(Some(libc::SIGTERM), &daemon);
    // The timer that was running survived the reload.
    timer_c.expect_signal(Some(libc::SIGKILL), &daemon);
    assert!(fired.elapsed() >= Duration::from_millis(1900));
    assert!(
        gone_c.is_alive(),
        "a removed binding acted; log:\n{}",
        daemon.log_text()
    );
    // The unchanged binding was not re-armed: one "gone at load" would show.
    assert_eq!(daemon.count("gone at load"), 0);
}

#[test]
fn broken_config_on_reload_keeps_the_old_one() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let good = binding(parent.pid(), child.pid(), "");
    let daemon = TestDaemon::start(&good);
    daemon.reload("[[binding]]\nparent = 1\nchild = \"x\"\n");
    daemon.wait_log("reload refused: 2 error(s)");
    daemon.wait_log("tether.toml:2:10: binding 1: parent: pid 1 cannot be bound");
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
}

#[test]
fn reload_of_a_done_binding_does_not_act_again() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let config = binding(parent.pid(), child.pid(), "");
    let daemon = TestDaemon::start(&config);
    parent.kill9();
    assert_eq!(child.wait_signal(TIMEOUT), Some(libc::SIGTERM));
    daemon.reload(&config);
    daemon.wait_log("0 added, 0 removed, 1 unchanged");
    assert_eq!(daemon.count("sent SIGTERM"), 1);
}

#[test]
fn a_reload_that_changes_the_backend_says_it_needs_a_restart() {
    let daemon = TestDaemon::start("[daemon]\npoll_interval = \"1s\"\n");
    let backend = crate::util::backend_name();
    // Another backend than the running one (auto picks pidfd here).
    let other = if backend == "poll" { "netlink" } else { "poll" };
    daemon.reload(&format!(
        "[daemon]\nbackend = \"{other}\"\npoll_interval = \"2s\"\n"
    ));
    if crate::util::backend().as_deref() != Some("poll") {
        // (The suite's poll run sets --poll-interval, which wins.)
        daemon.wait_log(
            "[daemon] poll_interval changed from 1s to 2s; it takes effect at the next start",
        );
    }
    if crate::util::backend().is_none() {
        daemon.wait_log(&format!(
            "[daemon] backend changed from auto to {other}; it takes effect at the next start (running: {backend})"
        ));
    } else {
        // --backend on the command line wins over the file: no warning.
        assert_eq!(daemon.count("[daemon] backend changed"), 0);
    }
    let (code, out, _) = daemon.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("backend:      {backend}\n")), "{out}");
}

/// `cat new > tether.toml` truncates the file and then writes it: a reload
/// in between must not apply the empty or half-written file (which would
/// drop bindings and forget their pins, or bind a pid cut short). A
/// writer pausing 5 ms between chunks (less than the 50 ms a file must be
/// still) rewrites the file while SIGHUPs arrive.
#[test]
fn a_config_rewritten_in_place_during_reloads_is_never_applied_half_written() {
    let pairs: Vec<(Proc, Proc)> = (0..3).map(|_| (Proc::sleeper(), Proc::sleeper())).collect();
    let config: String = pairs
        .iter()
        .enumerate()
        .map(|(i, (p, c))| binding(p.pid(), c.pid(), &format!("name = \"job{i}\"")))
        .collect();
    let daemon = TestDaemon::start(&config);
    let path = daemon.config.clone();
    let text = config.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for _ in 0..8 {
            let mut file = std::fs::File::create(&path).unwrap();
            for chunk in text.as_bytes().chunks(16) {
                file.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(file);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let pid = nix::unistd::Pid::from_raw(daemon.pid());
    let mut n_hups = 0;
    while !writer.is_finished() {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        n_hups += 1;
        std::thread::sleep(Duration::from_millis(7));
    }
    writer.join().unwrap();
    // The last SIGHUPs are handled, the file now whole and still.
    daemon.reload(&config);
    let log = daemon.log_text();
    assert!(n_hups > 20, "{n_hups} SIGHUPs");
    eprintln!(
        "{n_hups} SIGHUPs: {} reloads applied, {} refused",
        daemon.count("configuration applied") - 1,
        daemon.count("reload refused")
    );
    assert_eq!(daemon.count(": removed ("), 0, "log:\n{log}");
    assert_eq!(
        daemon.count("added, 0 removed, 3 unchanged"),
        daemon.count("configuration applied") - 1,
        "log:\n{log}"
    );
    for (mut parent, mut child) in pairs {
        parent.kill9();
        child.expect_signal(Some(libc::SIGTERM), &daemon);
    }
}

/// An empty file while configured bindings are held is taken for a file
/// caught between truncation and writing: refused. A file with only a
/// comment drops them.
#[test]
fn an_empty_config_is_refused_while_bindings_are_held() {
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
    daemon.reload("");
    daemon.wait_log(
        "tether.toml: the file is empty while 1 configured bindings are held (rewritten in place?); to drop them all, leave a comment in it",
    );
    parent.kill9();
    child.expect_signal(Some(libc::SIGTERM), &daemon);
    daemon.reload("# no bindings\n");
    daemon.wait_log("configuration applied: 0 added, 1 removed");
}

#[test]
fn a_fifo_at_the_config_path_neither_blocks_a_reload_nor_sigterm() {
    let (parent, child) = (Proc::sleeper(), Proc::sleeper());
    let mut daemon = TestDaemon::start(&binding(parent.pid(), child.pid(), ""));
    std::fs::remove_file(&daemon.config).unwrap();
    nix::unistd::mkfifo(
        &daemon.config,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    daemon.wait_log("not a regular file");
    // Still serving, with the old configuration in force.
    let (code, out, err) = daemon.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bindings:     1"), "{out}");
    let start = Instant::now();
    daemon.stop();
    assert!(start.elapsed() < TIMEOUT);
}
