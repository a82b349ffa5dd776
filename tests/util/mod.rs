//! Test fixtures: a real `tetherd` in its own temporary directory, real
//! processes to bind, and waiting by condition instead of fixed sleeps.

// Off Linux only the portable modules are built, and the helpers only the
// Linux modules use are unused there; on Linux every helper must be used.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The tetherd binary under test.
pub const TETHERD: &str = env!("CARGO_BIN_EXE_tetherd");

/// The tetherctl binary under test.
pub const TETHERCTL: &str = env!("CARGO_BIN_EXE_tetherctl");

/// The watch backend the suite runs against: `TETHER_TEST_BACKEND`
/// (pidfd, netlink, poll), or `None` for the daemon's own choice. The
/// README's test command runs the whole suite once per backend.
pub fn backend() -> Option<String> {
    std::env::var("TETHER_TEST_BACKEND")
        .ok()
        .filter(|b| !b.is_empty())
}

/// The backend the daemon under test will report: the chosen one, or
/// pidfd (what `auto` picks on any kernel these tests run on).
pub fn backend_name() -> String {
    backend().unwrap_or_else(|| "pidfd".into())
}

/// tetherd arguments selecting [`backend`]. The poll backend checks every
/// 100 ms here: the default 1 s is right for hosts, slow for a test suite.
pub fn backend_args() -> Vec<String> {
    match backend() {
        Some(b) if b == "poll" => vec![
            "--backend".into(),
            b,
            "--poll-interval".into(),
            "100ms".into(),
        ],
        Some(b) => vec!["--backend".into(), b],
        None => Vec::new(),
    }
}

/// Makes the test process a child subreaper, so orphaned test processes
/// (a tethered command whose launcher was killed) are re-parented to it
/// and [`reap`] can tell how they ended.
#[cfg(target_os = "linux")]
pub fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// Waits up to `timeout` for `pid` (a child or adopted orphan of the test
/// process) to end; returns the signal that ended it.
pub fn reap(pid: i32, timeout: Duration) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut result = None;
    wait_until(timeout, || {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                result = Some(sig as i32);
                true
            }
            Ok(WaitStatus::Exited(..)) => true,
            Ok(_) => false,
            Err(_) => true,
        }
    });
    result
}

/// Runs tetherctl with `args`; returns (exit code, stdout, stderr).
pub fn tetherctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TETHERCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("TETHER_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run tetherctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How long any wait may take before the test fails. Generous: the
/// machine has 2 cores and tests run in parallel.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// How many times slower than a host this machine runs the tests:
/// `TETHER_TEST_SLOW` (a whole number, default 1). tests/vm sets it in a
/// guest that qemu emulates without KVM, where exec and fork cost about
/// ten times what they cost on the host; [`wait_until`] (and so every
/// wait on [`TIMEOUT`]) and the torture tests' random delays scale by it.
pub fn slow() -> u32 {
    std::env::var("TETHER_TEST_SLOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Polls `cond` every few milliseconds until it holds or `timeout` (times
/// [`slow`]) passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let timeout = timeout * slow();
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the test runs as root (needed for namespaces and ownership).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A process started by the test, so the test can reap it and read how it
/// ended. Killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Runs `sh -c script`.
    pub fn sh(script: &str) -> Proc {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sh");
        Proc {
            child,
            status: None,
        }
    }

    /// Wraps a child the test spawned itself.
    pub fn from_child(child: Child) -> Proc {
        Proc {
            child,
            status: None,
        }
    }

    /// A process that sleeps until signalled.
    pub fn sleeper() -> Proc {
        let child = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Proc {
            child,
            status: None,
        }
    }

    /// A process that ignores SIGTERM (only SIGKILL ends it). The ignored
    /// disposition survives the exec into sleep.
    pub fn term_ignorer() -> Proc {
        let p = Proc::sh("trap '' TERM; exec sleep 1000");
        // Wait for the exec, so the trap is in place before anyone signals.
        let pid = p.pid();
        assert!(
            wait_until(TIMEOUT, || comm(pid) == "sleep"),
            "term ignorer did not exec"
        );
        p
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Reaps the process if it has exited; returns its status.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to end; returns the signal
    /// that ended it (`None`: still alive or exited normally).
    pub fn wait_signal(&mut self, timeout: Duration) -> Option<i32> {
        wait_until(timeout, || self.try_status().is_some());
        self.try_status().and_then(|s| s.signal())
    }

    /// Asserts that the process ends by `sig` (`None`: exits normally)
    /// within [`TIMEOUT`]; the failure shows `daemon`'s log.
    #[track_caller]
    pub fn expect_signal(&mut self, sig: Option<i32>, daemon: &TestDaemon) {
        let got = self.wait_signal(TIMEOUT);
        assert_eq!(
            got,
            sig,
            "pid {} did not end by signal {sig:?} within {TIMEOUT:?}; log:\n{}",
            self.pid(),
            daemon.log_text()
        );
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn is_alive(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// The start time (field 22 of /proc/PID/stat).
    #[cfg(target_os = "linux")]
    pub fn start_time(&self) -> u64 {
        start_time(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The command name of `pid` ("" once it is gone).
pub fn comm(pid: i32) -> String {
    if cfg!(target_os = "linux") {
        fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
    } else {
        Command::new("ps")
            .args(["-o", "comm=", "-p", &pid.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
    .trim()
    .rsplit('/')
    .next()
    .unwrap_or_default()
    .to_string()
}

/// Whether a process with this pid exists (zombies included).
pub fn exists(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` has ended: gone, or a zombie. An orphan adopted by this
/// test process (a subreaper, if another test made it one) is reaped.
pub fn ended(pid: i32) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    if !exists(pid) {
        return true;
    }
    let state = Command::new("ps")
        .args(["-o", "stat=", "-p", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    state.is_empty() || state.starts_with('Z')
}

/// Field 22 of /proc/PID/stat.
#[cfg(target_os = "linux")]
pub fn start_time(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("number")
}

/// A config binding `parent -> child` with optional extra TOML lines.
pub fn binding(parent: i32, child: i32, extra: &str) -> String {
    format!("[[binding]]\nparent = {parent}\nchild = {child}\n{extra}\n")
}

/// A running `tetherd` with its own directory, config, state and log.
#[derive(Debug)]
pub struct TestDaemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl TestDaemon {
    /// Writes `config`, starts tetherd on it and waits until it is ready.
    pub fn start(config: &str) -> TestDaemon {
        TestDaemon::start_with(config, None)
    }

    /// Like [`TestDaemon::start`], with RLIMIT_NOFILE set to `nofile`.
    pub fn start_limited(config: &str, nofile: u64) -> TestDaemon {
        TestDaemon::start_with(config, Some(nofile))
    }

    /// Sets up the directory and config without starting: for tests that
    /// prepare a state file first, then call [`TestDaemon::spawn`].
    pub fn start_stopped(config: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tether.toml");
        fs::write(&path, config).expect("write config");
        TestDaemon {
            child: None,
            config: path,
            state: dir.path().join("state/state.json"),
            socket: dir.path().join("run/tether.sock"),
            log: dir.path().join("tetherd.log"),
            dir,
        }
    }

    fn start_with(config: &str, nofile: Option<u64>) -> TestDaemon {
        let mut daemon = TestDaemon::start_stopped(config);
        daemon.spawn(nofile);
        daemon
    }

    /// Starts tetherd (again) on the same files; `nofile` sets its
    /// descriptor limit (soft and hard).
    pub fn spawn(&mut self, nofile: Option<u64>) {
        self.spawn_under(nofile, &[]);
    }

    /// Like [`TestDaemon::spawn`], tetherd run by `wrapper` (a command
    /// and its arguments that execs the rest, such as `setpriv ... --`).
    pub fn spawn_under(&mut self, nofile: Option<u64>, wrapper: &[&str]) {
        assert!(self.child.is_none(), "daemon already running");
        let n_ready = self.count("ready:");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(TETHERD);
                cmd
            }
            None => Command::new(TETHERD),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(backend_args())
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches no memory
            // shared with the parent.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit as nix::libc::rlim_t,
                        limit as nix::libc::rlim_t,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        self.child = Some(cmd.spawn().expect("spawn tetherd"));
        let ready = wait_until(TIMEOUT, || self.count("ready:") > n_ready || self.exited());
        assert!(
            ready && !self.exited(),
            "tetherd did not become ready:\n{}",
            self.log_text()
        );
    }

    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("try_wait").is_some(),
            None => true,
        }
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).expect("pid")
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the log holds at least `n` lines with `needle`; panics
    /// with the log otherwise.
    pub fn wait_count(&self, needle: &str, n: usize) {
        let ok = wait_until(TIMEOUT, || self.count(needle) >= n);
        assert!(
            ok,
            "expected {n} log line(s) with {needle:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Waits for a log line with `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_count(needle, 1);
    }

    /// Replaces the config and sends SIGHUP; waits for the daemon to say it
    /// applied or refused it.
    pub fn reload(&self, config: &str) {
        let before = self.count("configuration applied") + self.count("reload refused");
        fs::write(&self.config, config).expect("write config");
        kill(Pid::from_raw(self.pid()), Signal::SIGHUP).expect("SIGHUP");
        let done = wait_until(TIMEOUT, || {
            self.count("configuration applied") + self.count("reload refused") > before
        });
        assert!(done, "reload not handled; log:\n{}", self.log_text());
    }

    /// Stops the daemon with `sig` and returns its exit status.
    pub fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = i32::try_from(child.id()).expect("pid");
        kill(Pid::from_raw(pid), sig).expect("signal tetherd");
        child.wait().expect("wait tetherd")
    }

    /// Stops the daemon with SIGTERM.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM)
    }

    /// Runs tetherctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        tetherctl(&self.socket, args)
    }

    /// Binds `parent` to `children` over the socket; returns the id.
    pub fn bind(&self, parent: i32, children: &[i32], extra: &[&str]) -> u64 {
        let parent = parent.to_string();
        let children: Vec<String> = children.iter().map(ToString::to_string).collect();
        let mut args = vec!["bind", "--parent", parent.as_str()];
        for child in &children {
            args.extend(["--child", child.as_str()]);
        }
        args.extend(extra);
        let (code, out, err) = self.ctl(&args);
        assert_eq!(code, 0, "bind failed: {err}\nlog:\n{}", self.log_text());
        out.trim().parse().expect("bind prints the id alone")
    }

    /// The directory holding the daemon's files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `tetherd` with `args` to completion; returns (exit code, stdout,
/// stderr).
pub fn run_tetherd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TETHERD)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tetherd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a pid-reuse script printed, or why it could not run.
pub enum ScriptRun {
    /// It ran: (stdout, stderr).
    Ran(String, String),
    /// It could not run here; the reason.
    Skipped(String),
}

/// Runs a pid-reuse script (see `run_reuse_script`), printing why and
/// returning `None` when it cannot run here; else its stdout, stderr and
/// tetherd's log (`DIR/tetherd.log`).
#[cfg(target_os = "linux")]
pub fn reuse_script_output(script: &str, dir: &Path) -> Option<(String, String, String)> {
    match run_reuse_script(script, dir) {
        ScriptRun::Ran(stdout, stderr) => {
            let log = fs::read_to_string(dir.join("tetherd.log")).unwrap_or_default();
            Some((stdout, stderr, log))
        }
        ScriptRun::Skipped(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// Runs a bash `script` as pid 1 of a fresh pid namespace (where it can
/// steer `ns_last_pid`) with the arguments `tetherd dir tetherctl
/// BACKEND-ARGS...`. The netlink backend works only in the initial pid
/// namespace, so for it the script runs there, steering the host's own
/// `ns_last_pid` (a fork elsewhere on the host in between makes the script
/// skip a step, never pass falsely). Needs root.
#[cfg(target_os = "linux")]
fn run_reuse_script(script: &str, dir: &Path) -> ScriptRun {
    if !is_root() {
        return ScriptRun::Skipped("a new pid namespace and ns_last_pid need root".into());
    }
    let mut cmd = if backend().as_deref() == Some("netlink") {
        Command::new("bash")
    } else {
        let mut unshare = Command::new("unshare");
        unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child", "bash"]);
        unshare
    };
    let out = cmd
        .args(["-c", script, "reuse"])
        .arg(TETHERD)
        .arg(dir)
        .arg(TETHERCTL)
        .args(backend_args())
        .output()
        .expect("run the reuse script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() && stdout.is_empty() {
        return ScriptRun::Skipped(format!("cannot create a pid namespace here: {stderr}"));
    }
    if let Some(reason) = stdout.lines().find_map(|l| l.strip_prefix("SKIP ")) {
        return ScriptRun::Skipped(reason.to_string());
    }
    ScriptRun::Ran(stdout, stderr)
}

/// The uid and gid of the unprivileged test user, created if missing.
pub fn test_user() -> Option<(u32, u32)> {
    const USER: &str = "tether-test";
    let lookup = || nix::unistd::User::from_name(USER).ok().flatten();
    if lookup().is_none() {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot create the test user {USER} with useradd");
            return None;
        }
    }
    lookup().map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// `argv` run as `uid:gid` with no supplementary groups.
pub fn as_user(uid: u32, gid: u32, argv: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .args(argv)
        .env_remove("TETHER_SOCKET")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Whether `c` would break, hide or reorder the text of a log line around
/// it: controls, line and paragraph separators, bidirectional controls,
/// zero-width and other invisible characters, spaces other than U+0020,
/// tags. Written out here, not taken from tetherd, so that tests check the
/// daemon against an independent list.
pub fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00A0}'
                | '\u{00AD}'
                | '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202F}'
                | '\u{2060}'..='\u{2069}'
                | '\u{3000}'
                | '\u{FEFF}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// tetherctl run as `uid:gid` against `daemon`; returns (exit code,
/// stdout, stderr).
pub fn ctl_as(uid: u32, gid: u32, daemon: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let socket = daemon.socket.display().to_string();
    let mut argv = vec![TETHERCTL, "--socket", socket.as_str()];
    argv.extend(args);
    let out = as_user(uid, gid, &argv)
        .output()
        .expect("run tetherctl as the user");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `sleep 1000` run as `uid:gid`, returned once it runs as that user
/// (setpriv has switched and exec'd).
pub fn users_sleeper(uid: u32, gid: u32) -> Proc {
    let child = as_user(uid, gid, &["sleep", "1000"])
        .spawn()
        .expect("spawn the user's sleep");
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    assert!(wait_until(TIMEOUT, || comm(pid) == "sleep"));
    Proc::from_child(child)
}

/// The test user's uid and gid for a test that needs root and another user
/// (`why` says what for); `None`, with the reason printed, elsewhere.
pub fn root_and_test_user(why: &str) -> Option<(u32, u32)> {
    if !is_root() {
        eprintln!("skipped: needs root {why}");
        return None;
    }
    test_user()
}

/// The socket bindings a state file holds: its snapshot's, then the
/// records of the journals beside it (`LEN CRC JSON` lines: `bound`,
/// `unbound`) replayed in order.
pub fn saved_bindings(state: &Path) -> Vec<serde_json::Value> {
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    let mut bindings: Vec<serde_json::Value> =
        snapshot["bindings"].as_array().cloned().unwrap_or_default();
    let first = snapshot["journal"].as_u64().unwrap_or(0);
    let mut journals: Vec<(u64, PathBuf)> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let generation: u64 = name.strip_prefix("state.journal.")?.parse().ok()?;
            (generation >= first).then(|| (generation, e.path()))
        })
        .collect();
    journals.sort();
    for (_, path) in journals {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let Some(Ok(record)) = line
                .get(18..)
                .map(serde_json::from_str::<serde_json::Value>)
            else {
                continue;
            };
            if !record["bound"].is_null() {
                bindings.push(record["bound"].clone());
            } else if let Some(id) = record["unbound"].as_u64() {
                bindings.retain(|b| b["id"].as_u64() != Some(id));
            }
        }
    }
    bindings
}

/// Spawns `command`, trying again while its executable is busy: a copy
/// this process just wrote may still be open for writing in a child that
/// another test's thread forked in the meantime (until that child execs and
/// its close-on-exec descriptors go), and exec then fails with ETXTBSY.
pub fn spawn_copied(command: &mut Command) -> std::process::Child {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match command.spawn() {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.expect("spawn a copied executable"),
        }
    }
}
