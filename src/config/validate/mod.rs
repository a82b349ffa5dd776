//! Validation: the raw TOML tree in, a [`Config`] or every error out.
//!
//! Nothing stops at the first problem: every unknown key, wrong type and bad
//! value in the file is collected, each with its line and column, the
//! binding it belongs to and the key at fault, and the list is sorted by
//! position. Checks that need the running system (does pid 4242 exist? is
//! its start time right?) are not made here; they belong to the daemon,
//! which reports them per binding.
//!
//! The rooms: `problems` collects errors (`Cx`) and suggests close names;
//! `daemon` checks `[daemon]` and `[defaults]`; `binding` checks each
//! `[[binding]]` (pid or pidfile sides, pins) and the checks across
//! bindings; `children` its `child`/`children` and their entries; `values`
//! the value parsers (signal, duration, kill mode, log level, pid, pins,
//! paths) that the file and the command line share; `rule` each
//! `[[rule]]` and the glob matcher.

mod binding;
mod children;
mod daemon;
mod problems;
pub(super) mod rule;
#[cfg(test)]
mod testing;
mod values;

pub use values::{parse_duration, parse_kill, parse_poll_interval, parse_signal};

use std::path::Path;

use toml::de::DeValue;

use super::error::{ConfigError, ConfigErrors};
use super::model::{BackendKind, Config};
use super::raw::{self, Entry, RawConfig, SyntaxError, Table, TOP_LEVEL_KEYS};
use binding::{bindings, cross_check, BINDING_KEYS};
use daemon::{daemon_settings, defaults, DAEMON_KEYS, DEFAULTS_KEYS};
use problems::{position, suggest, Problem};

/// Turns a TOML syntax error into the single error of its file.
pub(super) fn syntax_error(err: SyntaxError, text: &str, path: &Path) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        path: path.to_path_buf(),
        position: err.span.map(|span| position(text, span.start)),
        context: None,
        field: None,
        message: err.message,
    }])
}

/// Validates a parsed file. `text` is the file's contents (for line and
/// column numbers), `path` its name as the user gave it.
///
/// `backends` are those this build can run (the daemon knows them; the
/// configuration does not ask the watch module).
pub(super) fn validate(
    raw: &RawConfig<'_>,
    text: &str,
    path: &Path,
    backends: &[BackendKind],
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    for entry in raw.unknown() {
        unknown_top_level(&entry, text, &mut problems);
    }
    let daemon = raw
        .daemon()
        .and_then(|entry| section(&entry, text, &mut problems))
        .map(|table| daemon_settings(table, &mut problems, backends))
        .unwrap_or_default();
    let defaults = raw
        .defaults()
        .and_then(|entry| section(&entry, text, &mut problems))
        .map(|table| defaults(table, &mut problems))
        .unwrap_or_default();
    let mut pidfile_bindings = Vec::new();
    let checked = match raw.binding() {
        Some(entry) => bindings(
            &entry,
            text,
            &defaults,
            &mut pidfile_bindings,
            &mut problems,
        ),
        None => Vec::new(),
    };
    cross_check(&checked, &mut problems);
    let rules = raw.rule().map_or_else(Vec::new, |entry| {
        rule::rules(&entry, text, &defaults, backends, &mut problems)
    });

    if problems.is_empty() {
        Ok(Config {
            daemon,
            defaults,
            bindings: checked.into_iter().map(|binding| binding.spec).collect(),
            pidfile_bindings,
            rules,
        })
    } else {
        // Stable: problems found at one place keep the order they were found.
        problems.sort_by_key(|problem| problem.span.start);
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|problem| ConfigError {
                    path: path.to_path_buf(),
                    position: Some(position(text, problem.span.start)),
                    context: problem.context,
                    field: problem.field.map(str::to_string),
                    message: problem.message,
                })
                .collect(),
        ))
    }
}

/// How a top-level table is written in a header.
pub(super) fn header(name: &str) -> String {
    if name == "binding" || name == "rule" {
        format!("[[{name}]]")
    } else {
        format!("[{name}]")
    }
}

/// Reports a top-level key that is not one of the three tables.
fn unknown_top_level(entry: &Entry<'_, '_>, text: &str, problems: &mut Vec<Problem>) {
    let name: &str = entry.key.get_ref();
    let written = text.get(entry.value.span()).unwrap_or_default();
    let close =
        suggest(name, TOP_LEVEL_KEYS).map(|close| format!(" (did you mean {}?)", header(close)));
    let (span, message) = match entry.value.get_ref() {
        DeValue::Table(_) | DeValue::Array(_)
            if written.starts_with('[') && !written.starts_with("[{") =>
        {
            let shown = if written.starts_with("[[") {
                format!("[[{name}]]")
            } else {
                format!("[{name}]")
            };
            (
                entry.value.span(),
                format!("unknown table {shown} (expected [daemon], [defaults], [[binding]] or [[rule]])"),
            )
        }
        _ => {
            let home = if DAEMON_KEYS.contains(&name) {
                Some("[daemon]")
            } else if DEFAULTS_KEYS.contains(&name) {
                Some("[defaults] or a [[binding]]")
            } else if BINDING_KEYS.contains(&name) {
                Some("a [[binding]]")
            } else if rule::is_rule_key(name) {
                Some("a [[rule]]")
            } else {
                None
            };
            let message = match home {
                Some(home) => format!("unknown key {name:?} at the top level (put it under {home})"),
                None => format!(
                    "unknown key {name:?} (expected the tables [daemon], [defaults], [[binding]] and [[rule]])"
                ),
            };
            (entry.key.span(), message)
        }
    };
    problems.push(Problem {
        span,
        context: None,
        field: None,
        message: message + close.as_deref().unwrap_or_default(),
    });
}

/// The table of `[daemon]` or `[defaults]`, or `None` (reported) if it is
/// something else.
fn section<'a, 'i>(
    entry: &Entry<'a, 'i>,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a Table<'i>> {
    let name: &str = entry.key.get_ref();
    let message = match entry.value.get_ref() {
        DeValue::Table(table) => return Some(table),
        DeValue::Array(_)
            if text
                .get(entry.value.span())
                .is_some_and(|written| written.starts_with("[[")) =>
        {
            format!("write [{name}], not [[{name}]] (there is only one {name} table)")
        }
        other => format!("expected a table, found {}", raw::type_name(other)),
    };
    let field = if name == "daemon" {
        "daemon"
    } else {
        "defaults"
    };
    problems.push(Problem {
        span: entry.value.span(),
        context: None,
        field: Some(field),
        message,
    });
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::testing::{check, proc, secs, valid};
    use super::*;
    use crate::config::model::{BindingSpec, Grace, KillMode, Signal};

    #[test]
    fn full_config_field_by_field() -> Result<(), String> {
        let config = valid(
            r#"
[daemon]
log = "debug"
state = "/run/tether/state.json"

[defaults]
signal = "hup"
grace = "2m"
kill = "process"

[[binding]]
name = "appliance"
parent = 4242
child = 4343
parent_start = 8812345
child_start = 8812399
parent_inode = 1234
child_inode = 5678
signal = "SIGINT"
grace = "10s"
kill = "process"

[[binding]]
parent = 5000
children = [5001, { pid = 5002, start = 77 }, { pid = 5003, inode = 9 }, { pid = 5004, start = 0, inode = 1 }]
signal = 9
grace = "never"
"#,
        )?;
        assert_eq!(config.daemon.log, log::LevelFilter::Debug);
        assert_eq!(
            config.daemon.state,
            Some(PathBuf::from("/run/tether/state.json"))
        );
        let expected = vec![
            BindingSpec {
                name: Some("appliance".into()),
                parent: proc(4242, Some(8_812_345), Some(1234))?,
                children: vec![proc(4343, Some(8_812_399), Some(5678))?],
                signal: Signal::from(nix::sys::signal::Signal::SIGINT),
                grace: secs(10),
                kill: KillMode::Process,
            },
            BindingSpec {
                name: None,
                parent: proc(5000, None, None)?,
                children: vec![
                    proc(5001, None, None)?,
                    proc(5002, Some(77), None)?,
                    proc(5003, None, Some(9))?,
                    proc(5004, Some(0), Some(1))?,
                ],
                signal: Signal::KILL,
                grace: Grace::Never,
                kill: KillMode::Process,
            },
        ];
        assert_eq!(config.bindings, expected);
        Ok(())
    }

    #[test]
    fn empty_files_and_tables_are_valid() -> Result<(), String> {
        assert_eq!(valid("")?, Config::default());
        assert_eq!(
            valid("# nothing\n[daemon]\n[defaults]\n")?,
            Config::default()
        );
        assert_eq!(valid("binding = []\n")?, Config::default());
        Ok(())
    }

    #[test]
    fn syntax_errors_are_one_line() {
        check(
            "a = \n",
            &["t.toml:1:5: string values must be quoted, expected literal string"],
        );
        check(
            "[daemon\nlog = 1\n",
            &["t.toml:1:8: unclosed table, expected `]`"],
        );
        check(
            "[[binding]]\nparent = 2\nparent = 3\n",
            &[r#"t.toml:3:1: duplicate key "parent" (each key and table may appear only once)"#],
        );
    }

    #[test]
    fn top_level_mistakes() {
        check(
            r#"stray = 1
signal = "x"
parent = 3
log = "info"
[deamon]
log = 1
[[bindings]]
parent = 2
[[defaulds]]
"#,
            &[
                r#"t.toml:1:1: unknown key "stray" (expected the tables [daemon], [defaults], [[binding]] and [[rule]])"#,
                r#"t.toml:2:1: unknown key "signal" at the top level (put it under [defaults] or a [[binding]])"#,
                r#"t.toml:3:1: unknown key "parent" at the top level (put it under a [[binding]])"#,
                r#"t.toml:4:1: unknown key "log" at the top level (put it under [daemon])"#,
                "t.toml:5:1: unknown table [deamon] (expected [daemon], [defaults], [[binding]] or [[rule]]) (did you mean [daemon]?)",
                "t.toml:7:1: unknown table [[bindings]] (expected [daemon], [defaults], [[binding]] or [[rule]]) (did you mean [[binding]]?)",
                "t.toml:9:1: unknown table [[defaulds]] (expected [daemon], [defaults], [[binding]] or [[rule]]) (did you mean [defaults]?)",
            ],
        );
        check(
            "[binding]\nparent = 2\nchild = 3\n",
            &["t.toml:1:1: binding: write [[binding]], not [binding] (each binding is one [[binding]] table)"],
        );
        check(
            "[[daemon]]\nlog = \"info\"\n",
            &["t.toml:1:1: daemon: write [daemon], not [[daemon]] (there is only one daemon table)"],
        );
        check(
            "daemon = 5\ndefaults = \"x\"\nbinding = [1, { parent = 2, child = 3 }]\n",
            &[
                "t.toml:1:10: daemon: expected a table, found an integer",
                "t.toml:2:12: defaults: expected a table, found a string",
                "t.toml:3:12: binding 1: expected a table, found an integer",
            ],
        );
        check(
            "binding = 5\n",
            &["t.toml:1:11: binding: expected [[binding]] tables, found an integer"],
        );
    }

    #[test]
    fn errors_are_sorted_by_position_across_tables() {
        check(
            "[[binding]]\nparent = 1\nchild = 3\n[defaults]\ngrace = \"x\"\n[daemon]\nlog = \"x\"\n",
            &[
                "t.toml:2:10: binding 1: parent: pid 1 cannot be bound (init never exits and must never be signalled)",
                r#"t.toml:5:9: [defaults]: grace: invalid duration "x" (expected e.g. "500ms", "5s", "2m" or "never")"#,
                r#"t.toml:7:7: [daemon]: log: unknown log level "x" (expected error, warn, info, debug, trace or off)"#,
            ],
        );
    }
}
