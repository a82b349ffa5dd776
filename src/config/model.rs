//! The validated configuration: what the rest of the daemon is allowed to see.
//!
//! Every value here has passed validation. Nothing in this module reads
//! files or makes system calls; the types exist so that invariants (a pid is
//! greater than 1, a signal is a real signal, a binding has at least one
//! child) are carried by the type system instead of rechecked at run time.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Settings of the `[daemon]` table.
    pub daemon: DaemonSettings,
    /// The `[defaults]` table: what bindings (also socket bindings) that
    /// leave an option out get.
    pub defaults: Defaults,
    /// The `[[binding]]` entries naming pids, in file order, with
    /// `[defaults]` applied.
    pub bindings: Vec<BindingSpec>,
    /// The `[[binding]]` entries naming a pidfile for the parent or the
    /// child: resolved into a [`BindingSpec`] when the daemon loads them.
    pub pidfile_bindings: Vec<PidfileBindingSpec>,
}

/// Where a binding's process comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PidSource {
    /// A pid given in the configuration.
    Pid(ProcSpec),
    /// The pid written in this file, read at load and reload.
    Pidfile(PathBuf),
}

/// A binding with a `parent_pidfile` or a `child_pidfile`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PidfileBindingSpec {
    /// `name`.
    pub name: Option<String>,
    /// `parent` or `parent_pidfile`.
    pub parent: PidSource,
    /// `child`, `children` or `child_pidfile`. Never empty.
    pub children: Vec<PidSource>,
    /// `signal`.
    pub signal: Signal,
    /// `grace`.
    pub grace: Grace,
    /// `kill`.
    pub kill: KillMode,
}

impl PidfileBindingSpec {
    /// `binding "name"` or `binding PARENT->CHILD` with paths for files.
    pub fn label(&self) -> String {
        let show = |s: &PidSource| match s {
            PidSource::Pid(p) => p.pid.to_string(),
            PidSource::Pidfile(path) => path.display().to_string(),
        };
        match &self.name {
            Some(name) => format!("binding \"{name}\""),
            None => {
                let children: Vec<String> = self.children.iter().map(show).collect();
                format!("binding {}->{}", show(&self.parent), children.join(","))
            }
        }
    }
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// `log`: the log level (overridden by `RUST_LOG`).
    pub log: log::LevelFilter,
    /// `state`: where pins (and later runtime bindings) are persisted.
    /// `None` means the built-in default for the user running the daemon.
    pub state: Option<PathBuf>,
    /// `socket`: the control socket. `None` means the built-in default.
    pub socket: Option<PathBuf>,
    /// `max_bindings_per_uid`: live socket bindings one uid may hold.
    pub max_bindings_per_uid: usize,
    /// `backend`: how processes are watched.
    pub backend: BackendKind,
    /// `poll_interval`: how often the `poll` backend looks.
    pub poll_interval: Duration,
}

/// `[daemon] backend`: how tetherd watches processes. Which ones a build
/// can run depends on its OS; the daemon refuses the others at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// The best this host offers: pidfd, then netlink, then poll on Linux;
    /// kqueue elsewhere.
    #[default]
    Auto,
    /// Linux 5.3+: one pidfd per process. Race-free.
    Pidfd,
    /// Linux without pidfds: the netlink process connector (root, or
    /// CAP_NET_ADMIN, in the initial namespaces).
    Netlink,
    /// Linux without pidfds or netlink: every watched pid re-read each
    /// `poll_interval`. The degraded mode.
    Poll,
    /// macOS and the BSDs: EVFILT_PROC in a kqueue.
    Kqueue,
}

impl BackendKind {
    /// Every name, in the order of the documentation.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Auto,
        BackendKind::Pidfd,
        BackendKind::Netlink,
        BackendKind::Poll,
        BackendKind::Kqueue,
    ];

    /// The name written in the configuration and shown by `status`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Pidfd => "pidfd",
            BackendKind::Netlink => "netlink",
            BackendKind::Poll => "poll",
            BackendKind::Kqueue => "kqueue",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown backend {s:?} (expected one of: auto, pidfd, netlink, poll, kqueue)"
                )
            })
    }
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            log: log::LevelFilter::Info,
            state: None,
            socket: None,
            max_bindings_per_uid: 1024,
            backend: BackendKind::Auto,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// The `[defaults]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Defaults {
    /// `signal`, default SIGTERM.
    pub signal: Signal,
    /// `grace`, default 5s.
    pub grace: Grace,
    /// `kill`, default process.
    pub kill: KillMode,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            signal: Signal::TERM,
            grace: Grace::default(),
            kill: KillMode::default(),
        }
    }
}

/// One parent/children binding, with defaults already applied.
///
/// Two specs are equal when they would make the daemon do the same thing;
/// reload uses that equality to decide which bindings are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingSpec {
    /// `name`: an optional label for logs.
    pub name: Option<String>,
    /// `parent` (with `parent_start` / `parent_inode`): the process watched.
    pub parent: ProcSpec,
    /// `child` or `children` (with their pins): the processes signalled.
    /// Never empty, never contains the parent, never contains a pid twice.
    pub children: Vec<ProcSpec>,
    /// `signal`: sent to each child when the parent exits.
    pub signal: Signal,
    /// `grace`: time from `signal` to SIGKILL.
    pub grace: Grace,
    /// `kill`: which processes are signalled.
    pub kill: KillMode,
}

impl BindingSpec {
    /// A short label for log lines: the name, or `PARENT->CHILD` for one
    /// child and `PARENT->(N children)` for more. It never lists the
    /// children: every line about one child names it, and a label that
    /// listed them all made the log grow with the square of the children.
    pub fn label(&self) -> String {
        match (&self.name, self.children.as_slice()) {
            (Some(name), _) => format!("\"{name}\""),
            (None, [one]) => format!("{}->{}", self.parent.pid, one.pid),
            (None, all) => format!("{}->({} children)", self.parent.pid, all.len()),
        }
    }
}

/// A process named by pid, optionally pinned to one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcSpec {
    /// The pid, in the daemon's pid namespace.
    pub pid: Pid,
    /// `*_start`: start time in clock ticks since boot (field 22 of
    /// `/proc/PID/stat`).
    pub start: Option<u64>,
    /// `*_inode`: the pidfd's inode on pidfs (Linux 6.9 and later).
    pub inode: Option<u64>,
}

impl ProcSpec {
    /// An unpinned process spec.
    pub fn unpinned(pid: Pid) -> Self {
        ProcSpec {
            pid,
            start: None,
            inode: None,
        }
    }
}

/// A process id greater than 1 (pid 1 never exits and must never be
/// signalled by us; 0 and negative values address groups in kill(2)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(i32);

impl Pid {
    /// The raw pid.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl TryFrom<i64> for Pid {
    type Error = String;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        match i32::try_from(value) {
            Ok(pid) if pid > 1 => Ok(Pid(pid)),
            Ok(1) => {
                Err("pid 1 cannot be bound (init never exits and must never be signalled)".into())
            }
            _ => Err(format!(
                "{value} is not a valid pid (expected an integer from 2 to 2147483647)"
            )),
        }
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A signal that may be sent to a child: a number known to the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(nix::sys::signal::Signal);

impl Signal {
    /// SIGTERM, the default.
    pub const TERM: Signal = Signal(nix::sys::signal::Signal::SIGTERM);
    /// SIGKILL, used for escalation.
    pub const KILL: Signal = Signal(nix::sys::signal::Signal::SIGKILL);

    /// The nix signal.
    pub fn get(self) -> nix::sys::signal::Signal {
        self.0
    }

    /// The raw signal number.
    pub fn number(self) -> i32 {
        self.0 as i32
    }
}

impl From<nix::sys::signal::Signal> for Signal {
    fn from(sig: nix::sys::signal::Signal) -> Self {
        Signal(sig)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// How long after the signal a still-living child gets SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grace {
    /// Escalate after this long.
    After(Duration),
    /// Never escalate.
    Never,
}

impl Default for Grace {
    fn default() -> Self {
        Grace::After(Duration::from_secs(5))
    }
}

impl fmt::Display for Grace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grace::Never => f.write_str("never"),
            Grace::After(d) if d.subsec_millis() == 0 => write!(f, "{}s", d.as_secs()),
            Grace::After(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// Which processes are signalled when the parent exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KillMode {
    /// Only the bound child processes.
    #[default]
    Process,
    /// The process group each bound child had when the binding was made.
    Group,
    /// Each bound child and every descendant it has when the parent exits
    /// (and, at escalation, every descendant forked since).
    Tree,
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillMode::Process => f.write_str("process"),
            KillMode::Group => f.write_str("group"),
            KillMode::Tree => f.write_str("tree"),
        }
    }
}
