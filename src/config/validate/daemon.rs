//! `[daemon]` and `[defaults]`: the daemon's settings and the values a
//! binding gets when it does not set its own.

use crate::config::model::{BackendKind, DaemonSettings, Defaults};
use crate::config::raw::{Table, Value};

use super::problems::{Cx, Problem};
use super::values::{
    absolute_path, boolean, grace, integer, kill, parse_log_level, parse_poll_interval, signal,
    string,
};

/// Keys of `[daemon]`.
pub(super) const DAEMON_KEYS: [&str; 10] = [
    "log",
    "state",
    "socket",
    "max_bindings_per_uid",
    "backend",
    "poll_interval",
    "cgroup_root",
    "rule_source",
    "metrics_file",
    "user_cgroups",
];

/// Keys of `[defaults]`.
pub(super) const DEFAULTS_KEYS: [&str; 3] = ["signal", "grace", "kill"];

/// Checks `[daemon]`.
pub(super) fn daemon_settings(
    table: &Table<'_>,
    problems: &mut Vec<Problem>,
    backends: &[BackendKind],
) -> DaemonSettings {
    let mut cx = Cx {
        context: "[daemon]".to_string(),
        problems,
    };
    cx.check_keys(table, &DAEMON_KEYS, None);
    let mut settings = DaemonSettings::default();
    if let Some((log, _)) = cx.field(table, "log", |value| parse_log_level(string(value)?)) {
        settings.log = log;
    }
    if let Some((state, _)) = cx.field(table, "state", |value| state_path(string(value)?)) {
        settings.state = Some(state.into());
    }
    if let Some((socket, _)) = cx.field(table, "socket", |value| socket_path(string(value)?)) {
        settings.socket = Some(socket.into());
    }
    if let Some((file, _)) = cx.field(table, "metrics_file", |value| {
        absolute_path(
            string(value)?,
            "/var/lib/prometheus/node-exporter/tether.prom",
        )
    }) {
        settings.metrics_file = Some(file.into());
    }
    if let Some((source, _)) = cx.field(table, "rule_source", super::rule::rule_source) {
        settings.rule_source = source;
    }
    if let Some((root, _)) = cx.field(table, "cgroup_root", |value| {
        absolute_path(string(value)?, "/sys/fs/cgroup/tether")
    }) {
        settings.cgroup_root = Some(root.into());
    }
    if let Some((users, _)) = cx.field(table, "user_cgroups", boolean) {
        settings.user_cgroups = users;
    }
    if let Some((max, _)) = cx.field(table, "max_bindings_per_uid", max_per_uid) {
        settings.max_bindings_per_uid = max;
    }
    if let Some((backend, _)) = cx.field(table, "backend", |value| backend_kind(value, backends)) {
        settings.backend = backend;
    }
    if let Some((interval, _)) = cx.field(table, "poll_interval", |value| {
        parse_poll_interval(string(value)?)
    }) {
        settings.poll_interval = interval;
    }
    settings
}

/// Checks `[daemon] backend`: a name, and one this build can run.
fn backend_kind(value: &Value<'_>, backends: &[BackendKind]) -> Result<BackendKind, String> {
    let kind: BackendKind = string(value)?.parse()?;
    if kind != BackendKind::Auto && !backends.contains(&kind) {
        let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{kind} is not a backend of this OS (this build has: auto, {})",
            names.join(", ")
        ));
    }
    Ok(kind)
}

/// Checks `[daemon] socket`: an absolute path short enough for a Unix
/// socket address (108 bytes on Linux, 104 on the BSDs).
fn socket_path(path: &str) -> Result<String, String> {
    let path = absolute_path(path, "/run/tether/tether.sock")?;
    if path.len() > 100 {
        return Err(format!(
            "{path:?} is too long for a socket address (at most 100 bytes)"
        ));
    }
    Ok(path)
}

/// Checks `[daemon] max_bindings_per_uid`: from 1 to 1,000,000.
fn max_per_uid(value: &Value<'_>) -> Result<usize, String> {
    let n = integer(value, "expected an integer from 1 to 1000000")?;
    match usize::try_from(n) {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{n} is out of range (expected an integer from 1 to 1000000)"
        )),
    }
}

/// Checks `[daemon] state`.
fn state_path(path: &str) -> Result<String, String> {
    absolute_path(path, "/var/lib/tether/state.json")
}

/// Checks `[defaults]`.
pub(super) fn defaults(table: &Table<'_>, problems: &mut Vec<Problem>) -> Defaults {
    let mut cx = Cx {
        context: "[defaults]".to_string(),
        problems,
    };
    cx.check_keys(table, &DEFAULTS_KEYS, None);
    let builtin = Defaults::default();
    Defaults {
        signal: cx
            .field(table, "signal", signal)
            .map_or(builtin.signal, |(v, _)| v),
        grace: cx
            .field(table, "grace", grace)
            .map_or(builtin.grace, |(v, _)| v),
        kill: cx
            .field(table, "kill", kill)
            .map_or(builtin.kill, |(v, _)| v),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{check, secs, valid};
    use crate::config::model::{DaemonSettings, Grace, KillMode, Signal};

    #[test]
    fn defaults_apply_to_bindings_that_do_not_override_them() -> Result<(), String> {
        let config = valid(
            r#"
[defaults]
signal = 2
grace = "500ms"

[[binding]]
parent = 10
child = 11

[[binding]]
parent = 10
child = 12
grace = "1s"
"#,
        )?;
        let summary: Vec<(Signal, Grace, KillMode)> = config
            .bindings
            .iter()
            .map(|binding| (binding.signal, binding.grace, binding.kill))
            .collect();
        let int = Signal::from(nix::sys::signal::Signal::SIGINT);
        assert_eq!(
            summary,
            [
                (
                    int,
                    Grace::After(Duration::from_millis(500)),
                    KillMode::Process
                ),
                (int, secs(1), KillMode::Process),
            ]
        );
        Ok(())
    }

    #[test]
    fn built_in_defaults() -> Result<(), String> {
        let config = valid("[[binding]]\nparent = 10\nchild = 11\n")?;
        assert_eq!(config.daemon, DaemonSettings::default());
        assert_eq!(config.daemon.log, log::LevelFilter::Info);
        assert_eq!(config.daemon.state, None);
        let binding = config.bindings.first().ok_or("no binding")?;
        assert_eq!(binding.signal, Signal::TERM);
        assert_eq!(binding.grace, secs(5));
        assert_eq!(binding.kill, KillMode::Process);
        assert_eq!(binding.name, None);
        Ok(())
    }

    #[test]
    fn daemon_errors() {
        check(
            r#"
[daemon]
log = "loud"
state = "state.json"
"#,
            &[
                r#"t.toml:3:7: [daemon]: log: unknown log level "loud" (expected error, warn, info, debug, trace or off)"#,
                r#"t.toml:4:9: [daemon]: state: "state.json" is a relative path (write an absolute one, e.g. "/var/lib/tether/state.json")"#,
            ],
        );
        check(
            "[daemon]\nlog = 3\nstate = \"\"\nlogs = \"info\"\n",
            &[
                "t.toml:2:7: [daemon]: log: expected a string, found an integer",
                "t.toml:3:9: [daemon]: state: empty path (remove the key to use the default)",
                r#"t.toml:4:1: [daemon]: unknown key "logs" (expected one of: log, state, socket, max_bindings_per_uid, backend, poll_interval, cgroup_root, rule_source, metrics_file, user_cgroups) (did you mean "log"?)"#,
            ],
        );
        check(
            "[daemon]\nbackend = \"epoll\"\npoll_interval = \"1ms\"\n",
            &[
                r#"t.toml:2:11: [daemon]: backend: unknown backend "epoll" (expected one of: auto, pidfd, netlink, poll, kqueue)"#,
                r#"t.toml:3:17: [daemon]: poll_interval: "1ms" is out of range (expected a duration from 10ms to 1h)"#,
            ],
        );
        check(
            "[daemon]\nbackend = \"kqueue\"\n",
            &[
                r#"t.toml:2:11: [daemon]: backend: kqueue is not a backend of this OS (this build has: auto, pidfd, netlink, poll)"#,
            ],
        );
        check(
            "[daemon]\npoll_interval = \"never\"\n",
            &[
                r#"t.toml:2:17: [daemon]: poll_interval: "never" is out of range (expected a duration from 10ms to 1h)"#,
            ],
        );
        check(
            "[daemon]\npoll_interval = \"1 s\"\n",
            &[
                r#"t.toml:2:17: [daemon]: poll_interval: invalid duration "1 s" (expected e.g. "500ms", "5s", "2m")"#,
            ],
        );
        check(
            "[daemon]\nuser_cgroups = \"true\"\n",
            &[
                r#"t.toml:2:16: [daemon]: user_cgroups: expected a boolean, found a string (remove the quotes: true)"#,
            ],
        );
        check(
            "[daemon]\nuser_cgroups = 1\n",
            &["t.toml:2:16: [daemon]: user_cgroups: expected a boolean, found an integer"],
        );
        check(
            "[daemon]\nstate = \"/a\\u0000b\"\n",
            &[r#"t.toml:2:9: [daemon]: state: path "/a\0b" contains a NUL character"#],
        );
    }

    #[test]
    fn defaults_errors() {
        check(
            r#"
[defaults]
signal = "SIGFOO"
grace = "5 sec"
kill = "gruop"
sgnal = 1
"#,
            &[
                r#"t.toml:3:10: [defaults]: signal: "SIGFOO" is not a signal name (try SIGTERM)"#,
                r#"t.toml:4:9: [defaults]: grace: invalid duration "5 sec" (expected e.g. "500ms", "5s", "2m" or "never")"#,
                r#"t.toml:5:8: [defaults]: kill: unknown kill mode "gruop" (expected "process", "group", "tree" or "cgroup")"#,
                r#"t.toml:6:1: [defaults]: unknown key "sgnal" (expected one of: signal, grace, kill) (did you mean "signal"?)"#,
            ],
        );
        check(
            "[defaults]\ngrace = 5\nkill = \"tree\"\n",
            &[
                r#"t.toml:2:9: [defaults]: grace: expected a string such as "5s", found an integer (for seconds write "5s")"#,
            ],
        );
    }
}
