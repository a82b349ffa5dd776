//! The validated configuration: what the rest of the daemon is allowed to see.
//!
//! Every value here has passed validation. Nothing in this module reads
//! files or makes system calls; the types exist so that invariants (a pid is
//! greater than 1, a signal is a real signal, a binding has at least one
//! child) are carried by the type system instead of rechecked at run time.

use std::path::PathBuf;
use std::time::Duration;

pub use super::validate::rule::{LauncherMatch, RuleSpec};
pub use crate::vocab::{BackendKind, Grace, KillMode, Pid, ProcSpec, RuleSource, Signal};

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
    /// The `[[rule]]` entries, in file order, with `[defaults]` applied.
    pub rules: Vec<RuleSpec>,
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
    /// Its label for log lines ([`label`]), files shown by their path.
    pub fn label(&self) -> String {
        let show = |s: &PidSource| match s {
            PidSource::Pid(p) => p.pid.to_string(),
            PidSource::Pidfile(path) => path.display().to_string(),
        };
        label(
            self.name.as_deref(),
            || show(&self.parent),
            self.children.first().map(show),
            self.children.len(),
        )
    }
}

/// The one label of a binding in log lines: `binding "name"`, or without
/// a name `binding PARENT->CHILD` for one child and `binding
/// PARENT->(N children)` for more (the daemon adds `#NUMBER (uid U)` for
/// socket bindings: `daemon::bindings::label`). It never lists the
/// children: every line about one child names it, and a label that listed
/// them all made the log grow with the square of the children.
fn label(
    name: Option<&str>,
    parent: impl FnOnce() -> String,
    first_child: Option<String>,
    n_children: usize,
) -> String {
    match (name, first_child) {
        (Some(name), _) => format!("binding {}", super::name::quote_name(name)),
        (None, Some(child)) if n_children == 1 => format!("binding {}->{child}", parent()),
        (None, _) => format!("binding {}->({n_children} children)", parent()),
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
    /// `rule_source`: how rules learn of execs.
    pub rule_source: RuleSource,
    /// `cgroup_root`: the cgroup v2 directory under which `kill =
    /// "cgroup"` bindings get their cgroups. `None`: found at start.
    pub cgroup_root: Option<PathBuf>,
    /// `metrics_file`: where the metrics are written for node_exporter's
    /// textfile collector, if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// `user_cgroups`: whether a user other than root may make a `kill =
    /// "cgroup"` binding (which moves the user's processes out of the
    /// cgroup, and so the limits, they were in). Default false.
    pub user_cgroups: bool,
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
            rule_source: RuleSource::Auto,
            cgroup_root: None,
            metrics_file: None,
            user_cgroups: false,
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
    /// Its label for log lines ([`label`]).
    pub fn label(&self) -> String {
        label(
            self.name.as_deref(),
            || self.parent.pid.to_string(),
            self.children.first().map(|child| child.pid.to_string()),
            self.children.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i64) -> ProcSpec {
        ProcSpec::unpinned(Pid::try_from(pid).unwrap())
    }

    /// Pid and pidfile bindings are labelled alike: the name, or the
    /// parent and one child, or the parent and a count.
    #[test]
    fn one_label_format_for_every_binding() {
        let mut spec = BindingSpec {
            name: None,
            parent: proc(10),
            children: vec![proc(11)],
            signal: Signal::TERM,
            grace: Grace::Never,
            kill: KillMode::Process,
        };
        assert_eq!(spec.label(), "binding 10->11");
        spec.children.push(proc(12));
        assert_eq!(spec.label(), "binding 10->(2 children)");
        spec.name = Some("db".into());
        assert_eq!(spec.label(), r#"binding "db""#);

        let mut pidfile = PidfileBindingSpec {
            name: None,
            parent: PidSource::Pidfile("/run/p.pid".into()),
            children: vec![PidSource::Pid(proc(11))],
            signal: Signal::TERM,
            grace: Grace::Never,
            kill: KillMode::Process,
        };
        assert_eq!(pidfile.label(), "binding /run/p.pid->11");
        pidfile
            .children
            .push(PidSource::Pidfile("/run/c.pid".into()));
        assert_eq!(pidfile.label(), "binding /run/p.pid->(2 children)");
        pidfile.name = Some("db".into());
        assert_eq!(pidfile.label(), r#"binding "db""#);
    }
}
