//! The shared vocabulary: the few types every part of tether speaks in
//! (a pid, a signal, a grace period, a kill mode, a backend, a process
//! named by pid and pin).
//!
//! This module imports nothing of tether's own, so the configuration, the
//! watch backends and the daemon can all use it without depending on each
//! other. Each type carries its invariant (a pid is above 1, a signal is one
//! the platform knows); parsing them from text is the configuration's job.

use std::fmt;
use std::time::Duration;

/// Defines [`BackendKind`] from one list: each variant with its name, so
/// the enum, [`BackendKind::ALL`] and [`BackendKind::name`] cannot drift.
macro_rules! backend_kinds {
    ($($(#[$attr:meta])* $kind:ident = $name:literal,)+) => {
        /// `[daemon] backend`: how tetherd watches processes. Which ones a
        /// build can run depends on its OS (`watch::available`); the daemon
        /// refuses the others at start.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum BackendKind {
            $($(#[$attr])* $kind,)+
        }

        impl BackendKind {
            /// Every name, in the order of the documentation.
            pub const ALL: [BackendKind; [$($name),+].len()] = [$(BackendKind::$kind),+];

            /// The name written in the configuration and shown by `status`.
            pub fn name(self) -> &'static str {
                match self {
                    $(BackendKind::$kind => $name,)+
                }
            }
        }
    };
}

backend_kinds! {
    /// The best this host offers: pidfd, then netlink, then poll on Linux;
    /// kqueue elsewhere.
    #[default]
    Auto = "auto",
    /// Linux 5.3+: one pidfd per process. Race-free.
    Pidfd = "pidfd",
    /// Linux without pidfds: the netlink process connector (root, or
    /// CAP_NET_ADMIN, in the initial namespaces).
    Netlink = "netlink",
    /// Linux without pidfds or netlink: every watched pid re-read each
    /// `poll_interval`. The degraded mode.
    Poll = "poll",
    /// macOS and the BSDs: EVFILT_PROC in a kqueue.
    Kqueue = "kqueue",
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
                let names: Vec<&str> = BackendKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown backend {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// A process named by pid, optionally pinned to one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcSpec {
    /// The pid, in the daemon's pid namespace.
    pub pid: Pid,
    /// `*_start`: the start time as the backend reads it (see
    /// `watch::Identity::start`: clock ticks since boot on Linux,
    /// microseconds since boot on the BSDs and macOS).
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
    /// A cgroup v2 of the binding's own, which the bound children (and
    /// their descendants at bind time) are moved into: nothing forked
    /// inside can leave it. Linux only.
    Cgroup,
}

impl fmt::Display for KillMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KillMode::Process => f.write_str("process"),
            KillMode::Group => f.write_str("group"),
            KillMode::Tree => f.write_str("tree"),
            KillMode::Cgroup => f.write_str("cgroup"),
        }
    }
}

/// `[daemon] rule_source`: how tetherd learns of the execs `[[rule]]`s
/// match (Linux only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuleSource {
    /// fanotify if the kernel allows it, else the process connector.
    #[default]
    Auto,
    /// fanotify `FAN_OPEN_EXEC_PERM`: the exec waits until the binding is
    /// made (bound before its first instruction).
    Fanotify,
    /// The process connector's exec events: after the fact.
    Connector,
}

impl RuleSource {
    /// The name written in the configuration and shown by `status`.
    pub fn name(self) -> &'static str {
        match self {
            RuleSource::Auto => "auto",
            RuleSource::Fanotify => "fanotify",
            RuleSource::Connector => "connector",
        }
    }
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
