//! Validation: the raw TOML tree in, a [`Config`] or every error out.
//!
//! Nothing stops at the first problem: every unknown key, wrong type and bad
//! value in the file is collected, each with its line and column, the
//! binding it belongs to and the key at fault, and the list is sorted by
//! position. Checks that need the running system (does pid 4242 exist? is
//! its start time right?) are not made here; they belong to the daemon,
//! which reports them per binding.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

use super::error::{ConfigError, ConfigErrors};
use super::model::{
    BackendKind, BindingSpec, Config, DaemonSettings, Defaults, Grace, KillMode, Pid, PidSource,
    PidfileBindingSpec, ProcSpec, Signal,
};
use super::name::{check_name, quote_name};
use super::raw::{self, Entry, RawConfig, SyntaxError, Table, Value, TOP_LEVEL_KEYS};

/// Keys of `[daemon]`.
const DAEMON_KEYS: [&str; 7] = [
    "log",
    "state",
    "socket",
    "max_bindings_per_uid",
    "backend",
    "poll_interval",
    "metrics_file",
];
/// Keys of `[defaults]`.
const DEFAULTS_KEYS: [&str; 3] = ["signal", "grace", "kill"];
/// Keys of a `[[binding]]`.
const BINDING_KEYS: [&str; 13] = [
    "name",
    "parent",
    "child",
    "children",
    "parent_pidfile",
    "child_pidfile",
    "parent_start",
    "child_start",
    "parent_inode",
    "child_inode",
    "signal",
    "grace",
    "kill",
];
/// Keys of an inline table in `children`.
const CHILD_ENTRY_KEYS: [&str; 3] = ["pid", "start", "inode"];

/// The longest grace period, in milliseconds (24 hours).
const MAX_GRACE_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// The start of every duration error, so that all of them read alike.
const DURATION_EXAMPLES: &str = "expected e.g. \"500ms\", \"5s\", \"2m\" or \"never\"";

/// Parses a grace period: `"never"`, or an integer followed by `ms`, `s`,
/// `m` or `h` (`"500ms"`, `"5s"`, `"2m"`, `"1h"`), at most 24 hours.
/// `"0s"` means SIGKILL follows the signal at once.
pub fn parse_duration(s: &str) -> Result<Grace, String> {
    if s == "never" {
        return Ok(Grace::Never);
    }
    let invalid = || format!("invalid duration {s:?} ({DURATION_EXAMPLES})");
    let too_long =
        || format!("{s:?} is too long (at most \"24h\"; use \"never\" to disable escalation)");
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let Some((digits, unit)) = s.split_at_checked(digits_end) else {
        return Err(invalid());
    };
    if digits.is_empty() {
        return Err(invalid());
    }
    let unit_millis: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        _ => return Err(invalid()),
    };
    // `digits` is non-empty and all ASCII digits, so the parse can only fail
    // by overflowing.
    let count: u64 = digits.parse().map_err(|_| too_long())?;
    match count.checked_mul(unit_millis) {
        Some(millis) if millis <= MAX_GRACE_MILLIS => {
            Ok(Grace::After(Duration::from_millis(millis)))
        }
        _ => Err(too_long()),
    }
}

/// Parses a signal: a name with or without `SIG`, in any case (`"TERM"`,
/// `"sigterm"`, `"SIGTERM"`), or a number (`"15"`).
pub fn parse_signal(v: &str) -> Result<Signal, String> {
    if let Ok(number) = v.parse::<i64>() {
        return signal_number(number);
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v} is not a signal number"));
    }
    let upper = v.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    match format!("SIG{bare}").parse::<nix::sys::signal::Signal>() {
        Ok(signal) => Ok(Signal::from(signal)),
        Err(_) => {
            // Compared without "SIG", which every candidate shares.
            let names = nix::sys::signal::Signal::iterator()
                .map(|signal| signal.as_str().trim_start_matches("SIG"));
            let hint = match suggest(bare, names) {
                Some(name) => format!("did you mean SIG{name}?"),
                None => "try SIGTERM".to_string(),
            };
            Err(format!("{v:?} is not a signal name ({hint})"))
        }
    }
}

/// A signal given by number.
fn signal_number(number: i64) -> Result<Signal, String> {
    if number == 0 {
        return Err(
            "0 is not a signal number (signal 0 only checks that a process exists; try SIGTERM)"
                .to_string(),
        );
    }
    i32::try_from(number)
        .ok()
        .and_then(|number| nix::sys::signal::Signal::try_from(number).ok())
        .map(Signal::from)
        .ok_or_else(|| format!("{number} is not a signal number"))
}

/// Parses a `kill` mode.
pub fn parse_kill(s: &str) -> Result<KillMode, String> {
    match s {
        "process" => Ok(KillMode::Process),
        "group" => Ok(KillMode::Group),
        "tree" => Ok(KillMode::Tree),
        _ => Err(format!(
            "unknown kill mode {s:?} (expected \"process\", \"group\" or \"tree\")"
        )),
    }
}

/// Parses a log level, in any case.
fn parse_log_level(s: &str) -> Result<log::LevelFilter, String> {
    let levels = [
        ("error", log::LevelFilter::Error),
        ("warn", log::LevelFilter::Warn),
        ("info", log::LevelFilter::Info),
        ("debug", log::LevelFilter::Debug),
        ("trace", log::LevelFilter::Trace),
        ("off", log::LevelFilter::Off),
    ];
    levels
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|&(_, level)| level)
        .ok_or_else(|| {
            format!("unknown log level {s:?} (expected error, warn, info, debug, trace or off)")
        })
}

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

    if problems.is_empty() {
        Ok(Config {
            daemon,
            defaults,
            bindings: checked.into_iter().map(|binding| binding.spec).collect(),
            pidfile_bindings,
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

/// One error, located by byte offset until the end.
#[derive(Debug)]
struct Problem {
    span: Range<usize>,
    context: Option<String>,
    field: Option<&'static str>,
    message: String,
}

/// Where problems go, and the context (`binding 2`, `[defaults]`) they get.
struct Cx<'p> {
    context: String,
    problems: &'p mut Vec<Problem>,
}

impl Cx<'_> {
    fn error(&mut self, span: Range<usize>, field: Option<&'static str>, message: String) {
        self.problems.push(Problem {
            span,
            context: Some(self.context.clone()),
            field,
            message,
        });
    }

    /// Reports every key of `table` not in `allowed`, at the key.
    fn check_keys(&mut self, table: &Table<'_>, allowed: &[&str], field: Option<&'static str>) {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let mut message = format!(
                "unknown key {name:?} (expected one of: {})",
                allowed.join(", ")
            );
            if let Some(close) = suggest(name, allowed.iter().copied()) {
                message.push_str(&format!(" (did you mean {close:?}?)"));
            }
            self.error(key.span(), field, message);
        }
    }

    /// The value of `key` in `table` checked by `check`, with its span;
    /// `None` if the key is absent or its value was reported as wrong.
    fn field<T>(
        &mut self,
        table: &Table<'_>,
        key: &'static str,
        check: impl FnOnce(&Value<'_>) -> Result<T, String>,
    ) -> Option<(T, Range<usize>)> {
        let value = table.get(key)?;
        match check(value) {
            Ok(checked) => Some((checked, value.span())),
            Err(message) => {
                self.error(value.span(), Some(key), message);
                None
            }
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset = offset.saturating_sub(1);
    }
    let before = text.get(..offset).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |idx| idx + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The candidate closest to `word` (ignoring case), if it is close enough
/// to be a plausible misspelling.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|candidate| {
            (
                edit_distance(&word, &candidate.to_ascii_lowercase()),
                candidate,
            )
        })
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance where swapping two neighbours counts as one edit
/// (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before_prev: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev
                .get(j)
                .map_or(usize::MAX, |d| d + usize::from(ca != cb));
            let delete = prev.get(j + 1).map_or(usize::MAX, |d| d + 1);
            let insert = cur.get(j).map_or(usize::MAX, |d| d + 1);
            let mut best = substitute.min(delete).min(insert);
            let swapped = i > 0 && j > 0 && a.get(i - 1) == Some(&cb) && b.get(j - 1) == Some(&ca);
            if swapped {
                if let Some(d) = before_prev.get(j - 1) {
                    best = best.min(d + 1);
                }
            }
            cur.push(best);
        }
        before_prev = std::mem::replace(&mut prev, cur);
    }
    prev.last().copied().unwrap_or(0)
}

/// How a top-level table is written in a header.
fn header(name: &str) -> String {
    if name == "binding" {
        "[[binding]]".to_string()
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
                format!("unknown table {shown} (expected [daemon], [defaults] or [[binding]])"),
            )
        }
        _ => {
            let home = if DAEMON_KEYS.contains(&name) {
                Some("[daemon]")
            } else if DEFAULTS_KEYS.contains(&name) {
                Some("[defaults] or a [[binding]]")
            } else if BINDING_KEYS.contains(&name) {
                Some("a [[binding]]")
            } else {
                None
            };
            let message = match home {
                Some(home) => format!("unknown key {name:?} at the top level (put it under {home})"),
                None => format!(
                    "unknown key {name:?} (expected the tables [daemon], [defaults] and [[binding]])"
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

/// Checks `[daemon]`.
fn daemon_settings(
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

/// Checks `[daemon] poll_interval` (and `tetherd --poll-interval`): a
/// duration from 10ms to 1h.
pub fn parse_poll_interval(text: &str) -> Result<Duration, String> {
    let range = || format!("{text:?} is out of range (expected a duration from 10ms to 1h)");
    match parse_duration(text) {
        Ok(Grace::After(interval))
            if (Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&interval) =>
        {
            Ok(interval)
        }
        Ok(_) => Err(range()),
        Err(err) if err.starts_with("invalid") => Err(err.replace(" or \"never\"", "")),
        Err(_) => Err(range()),
    }
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

/// An absolute path; `example` is shown when it is relative.
fn absolute_path(path: &str, example: &str) -> Result<String, String> {
    if path.is_empty() {
        Err("empty path (remove the key to use the default)".to_string())
    } else if path.contains('\0') {
        Err(format!("path {path:?} contains a NUL character"))
    } else if !Path::new(path).is_absolute() {
        Err(format!(
            "{path:?} is a relative path (write an absolute one, e.g. {example:?})"
        ))
    } else {
        Ok(path.to_string())
    }
}

/// Checks `[defaults]`.
fn defaults(table: &Table<'_>, problems: &mut Vec<Problem>) -> Defaults {
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

/// A checked pin (`*_start` or `*_inode`) and where its value is written.
type Pin = Option<(u64, Range<usize>)>;

/// A process of a binding that passed its own checks, with the places the
/// cross-binding checks point at.
#[derive(Debug)]
struct CheckedProc {
    spec: ProcSpec,
    pid_span: Range<usize>,
    /// `parent_start`, `child_start` or `children`, and where.
    start: Option<(&'static str, Range<usize>)>,
    /// `parent_inode`, `child_inode` or `children`, and where.
    inode: Option<(&'static str, Range<usize>)>,
}

/// A binding that passed its own checks.
#[derive(Debug)]
struct Checked {
    /// `binding "name"` or `binding 3`.
    label: String,
    spec: BindingSpec,
    parent: CheckedProc,
    children: Vec<CheckedProc>,
}

/// Checks `[[binding]]`: every binding, in file order.
fn bindings(
    entry: &Entry<'_, '_>,
    text: &str,
    defaults: &Defaults,
    pidfile_bindings: &mut Vec<PidfileBindingSpec>,
    problems: &mut Vec<Problem>,
) -> Vec<Checked> {
    let items = match entry.value.get_ref() {
        DeValue::Array(items) => items,
        other => {
            let header = text.get(entry.value.span()).unwrap_or_default();
            let message = if matches!(other, DeValue::Table(_)) && header.starts_with('[') {
                "write [[binding]], not [binding] (each binding is one [[binding]] table)"
                    .to_string()
            } else {
                format!(
                    "expected [[binding]] tables, found {}",
                    raw::type_name(other)
                )
            };
            problems.push(Problem {
                span: entry.value.span(),
                context: None,
                field: Some("binding"),
                message,
            });
            return Vec::new();
        }
    };
    let mut names = HashMap::new();
    items
        .iter()
        .enumerate()
        .filter_map(|(idx, item)| {
            binding(
                idx + 1,
                item,
                defaults,
                &mut names,
                pidfile_bindings,
                problems,
            )
        })
        .collect()
}

/// Checks one binding; `binding_idx` is 1-based, `names` maps the names of
/// earlier bindings to their index.
fn binding(
    binding_idx: usize,
    value: &Value<'_>,
    defaults: &Defaults,
    names: &mut HashMap<String, usize>,
    pidfile_bindings: &mut Vec<PidfileBindingSpec>,
    problems: &mut Vec<Problem>,
) -> Option<Checked> {
    let index_label = format!("binding {binding_idx}");
    let DeValue::Table(table) = value.get_ref() else {
        problems.push(Problem {
            span: value.span(),
            context: Some(index_label),
            field: None,
            message: format!(
                "expected a table, found {}",
                raw::type_name(value.get_ref())
            ),
        });
        return None;
    };
    let n_problems = problems.len();
    let name = table
        .get("name")
        .and_then(|value| match binding_name(value, names) {
            Ok(name) => Some(name),
            Err(message) => {
                problems.push(Problem {
                    span: value.span(),
                    context: Some(index_label.clone()),
                    field: Some("name"),
                    message,
                });
                None
            }
        });
    let label = match &name {
        Some(name) => {
            names.insert(name.clone(), binding_idx);
            format!("binding {}", quote_name(name))
        }
        None => index_label,
    };
    let mut cx = Cx {
        context: label,
        problems,
    };
    cx.check_keys(table, &BINDING_KEYS, None);

    let parent = cx.field(table, "parent", |value| {
        if matches!(value.get_ref(), DeValue::Array(_)) {
            return Err(
                "expected an integer, found an array (a binding has one parent; \
                 write one [[binding]] per parent)"
                    .to_string(),
            );
        }
        pid(value)
    });
    // Every key is read once, here: the pidfile form below gets the values.
    let parent_file = table.contains_key("parent_pidfile");
    let child_file = table.contains_key("child_pidfile");
    let (parent_start, parent_inode) = pins(
        &mut cx,
        table,
        parent_file,
        ["parent_start", "parent_inode"],
    );
    let (child_start, child_inode) =
        pins(&mut cx, table, child_file, ["child_start", "child_inode"]);
    let signal = cx
        .field(table, "signal", signal)
        .map_or(defaults.signal, |(v, _)| v);
    let grace = cx
        .field(table, "grace", grace)
        .map_or(defaults.grace, |(v, _)| v);
    let kill = cx
        .field(table, "kill", kill)
        .map_or(defaults.kill, |(v, _)| v);

    if parent_file || child_file {
        let n_before = cx.problems.len();
        let parent = parent.map(|(pid, _)| ProcSpec {
            pid,
            start: parent_start.map(|(start, _)| start),
            inode: parent_inode.map(|(inode, _)| inode),
        });
        let sides = pidfile_sides(&mut cx, value, table, parent, [child_start, child_inode]);
        if let Some((parent, children)) = sides.filter(|_| cx.problems.len() == n_before) {
            pidfile_bindings.push(PidfileBindingSpec {
                name,
                parent,
                children,
                signal,
                grace,
                kill,
            });
        }
        return None;
    }

    if !table.contains_key("parent") {
        cx.error(
            value.span(),
            None,
            "missing \"parent\" (the pid to watch)".to_string(),
        );
    }
    let children = children(
        &mut cx,
        value,
        table,
        [child_start, child_inode],
        "missing \"child\" or \"children\" (the pids to signal)",
    );

    if let Some((parent_pid, _)) = &parent {
        for child in children
            .iter()
            .filter(|child| child.spec.pid == *parent_pid)
        {
            cx.error(
                child.pid_span.clone(),
                Some(if table.contains_key("child") {
                    "child"
                } else {
                    "children"
                }),
                format!("pid {parent_pid} is both parent and child"),
            );
        }
    }

    if cx.problems.len() > n_problems || children.is_empty() {
        return None;
    }
    let (parent_pid, pid_span) = parent?;
    let parent = CheckedProc {
        spec: ProcSpec {
            pid: parent_pid,
            start: parent_start.as_ref().map(|(start, _)| *start),
            inode: parent_inode.as_ref().map(|(inode, _)| *inode),
        },
        pid_span,
        start: parent_start.map(|(_, span)| ("parent_start", span)),
        inode: parent_inode.map(|(_, span)| ("parent_inode", span)),
    };
    Some(Checked {
        label: cx.context,
        spec: BindingSpec {
            name,
            parent: parent.spec,
            children: children.iter().map(|child| child.spec).collect(),
            signal,
            grace,
            kill,
        },
        parent,
        children,
    })
}

/// Checks a binding's `name`, which must not be used by an earlier one.
fn binding_name(value: &Value<'_>, names: &HashMap<String, usize>) -> Result<String, String> {
    let name = string(value)?;
    check_name(name)?;
    if let Some(first_idx) = names.get(name) {
        return Err(format!(
            "name {} is already used by binding {first_idx}",
            quote_name(name)
        ));
    }
    Ok(name.to_string())
}

/// `child`, pinned by `child_start` and `child_inode`.
fn single_child(cx: &mut Cx<'_>, table: &Table<'_>, start: Pin, inode: Pin) -> Option<CheckedProc> {
    let (pid, pid_span) = cx.field(table, "child", |value| {
        if matches!(value.get_ref(), DeValue::Array(_)) {
            return Err(
                "expected an integer, found an array (use \"children\" for several pids)"
                    .to_string(),
            );
        }
        pid(value)
    })?;
    Some(CheckedProc {
        spec: ProcSpec {
            pid,
            start: start.as_ref().map(|(start, _)| *start),
            inode: inode.as_ref().map(|(inode, _)| *inode),
        },
        pid_span,
        start: start.map(|(_, span)| ("child_start", span)),
        inode: inode.map(|(_, span)| ("child_inode", span)),
    })
}

/// The pins of one side (`parent_start` and `parent_inode`, or
/// `child_start` and `child_inode`), each checked once; beside a pidfile
/// they are refused instead (its process is pinned when the file is read).
fn pins(
    cx: &mut Cx<'_>,
    table: &Table<'_>,
    beside_pidfile: bool,
    [start_key, inode_key]: [&'static str; 2],
) -> (Pin, Pin) {
    if beside_pidfile {
        no_pins(cx, table, [start_key, inode_key]);
        return (None, None);
    }
    (
        cx.field(table, start_key, start_time),
        cx.field(table, inode_key, inode),
    )
}

/// The children given by pid: `child` (pinned by `child_start` and
/// `child_inode`, already checked and passed as `pins`) or `children`;
/// `missing` is the error when neither is there.
fn children(
    cx: &mut Cx<'_>,
    value: &Value<'_>,
    table: &Table<'_>,
    [start, inode]: [Pin; 2],
    missing: &str,
) -> Vec<CheckedProc> {
    let children = match (
        table.get_key_value("child"),
        table.get_key_value("children"),
    ) {
        (None, None) => {
            cx.error(value.span(), None, missing.to_string());
            Vec::new()
        }
        (Some((child_key, _)), Some((children_key, children_value))) => {
            // Check both values anyway, so that fixing this is the last step.
            single_child(cx, table, None, None);
            entries(cx, children_value);
            let later = if child_key.span().start > children_key.span().start {
                child_key.span()
            } else {
                children_key.span()
            };
            cx.error(
                later,
                None,
                "\"child\" and \"children\" are mutually exclusive".to_string(),
            );
            Vec::new()
        }
        (Some(_), None) => single_child(cx, table, start, inode).into_iter().collect(),
        (None, Some((_, children_value))) => {
            let children = entries(cx, children_value);
            pins_need_entries(cx, table, &children, [start, inode]);
            children
        }
    };
    let mut seen = HashSet::new();
    for child in &children {
        if !seen.insert(child.spec.pid) {
            cx.error(
                child.pid_span.clone(),
                Some("children"),
                format!("pid {} is listed twice", child.spec.pid),
            );
        }
    }
    children
}

/// The parent and children of a binding with `parent_pidfile` or
/// `child_pidfile`: each side is a pid or a pidfile, never both. `parent`
/// and `child_pins` are the values [`binding`] already checked (each key
/// is read once); a pidfile's process has no pin in the file: it is pinned
/// when the daemon reads the pidfile.
fn pidfile_sides(
    cx: &mut Cx<'_>,
    value: &Value<'_>,
    table: &Table<'_>,
    parent: Option<ProcSpec>,
    child_pins: [Pin; 2],
) -> Option<(PidSource, Vec<PidSource>)> {
    let both = |cx: &mut Cx<'_>, key: &'static str, other: &str| {
        if let Some((k, _)) = table.get_key_value(key) {
            cx.error(
                k.span(),
                None,
                format!("{other:?} and {key:?} are mutually exclusive"),
            );
        }
    };
    let parent = if table.contains_key("parent_pidfile") {
        both(cx, "parent", "parent_pidfile");
        cx.field(table, "parent_pidfile", pidfile_path)
            .map(|(path, _)| PidSource::Pidfile(path.into()))
    } else {
        if !table.contains_key("parent") {
            cx.error(
                value.span(),
                None,
                "missing \"parent\" or \"parent_pidfile\"".to_string(),
            );
        }
        parent.map(PidSource::Pid)
    };
    let children = if table.contains_key("child_pidfile") {
        both(cx, "child", "child_pidfile");
        both(cx, "children", "child_pidfile");
        cx.field(table, "child_pidfile", pidfile_path)
            .map(|(path, _)| vec![PidSource::Pidfile(path.into())])
            .unwrap_or_default()
    } else {
        children(
            cx,
            value,
            table,
            child_pins,
            "missing \"child\", \"children\" or \"child_pidfile\"",
        )
        .into_iter()
        .map(|child| PidSource::Pid(child.spec))
        .collect()
    };
    if children.is_empty() {
        return None;
    }
    Some((parent?, children))
}

/// Refuses pins beside a pidfile: its process is pinned when the daemon
/// reads the file.
fn no_pins(cx: &mut Cx<'_>, table: &Table<'_>, keys: [&'static str; 2]) {
    for pin in keys {
        if let Some((key, _)) = table.get_key_value(pin) {
            cx.error(
                key.span(),
                None,
                format!(
                    "{pin:?} cannot pin a pidfile's process (it is pinned when the file is read)"
                ),
            );
        }
    }
}

/// A pidfile's path: absolute.
fn pidfile_path(value: &Value<'_>) -> Result<String, String> {
    absolute_path(string(value)?, "/run/app.pid")
}

/// `children`: an array of pids or `{ pid, start, inode }` tables.
fn entries(cx: &mut Cx<'_>, value: &Value<'_>) -> Vec<CheckedProc> {
    let items = match value.get_ref() {
        DeValue::Array(items) => items,
        DeValue::Integer(_) => {
            cx.error(
                value.span(),
                Some("children"),
                "expected an array, found an integer (use \"child\" for a single pid)".to_string(),
            );
            return Vec::new();
        }
        other => {
            cx.error(
                value.span(),
                Some("children"),
                format!("expected an array of pids, found {}", raw::type_name(other)),
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        cx.error(
            value.span(),
            Some("children"),
            "empty list (give at least one pid)".to_string(),
        );
    }
    items.iter().filter_map(|item| entry(cx, item)).collect()
}

/// One element of `children`.
fn entry(cx: &mut Cx<'_>, item: &Value<'_>) -> Option<CheckedProc> {
    let table = match item.get_ref() {
        DeValue::Integer(_) => {
            return match pid(item) {
                Ok(pid) => Some(CheckedProc {
                    spec: ProcSpec::unpinned(pid),
                    pid_span: item.span(),
                    start: None,
                    inode: None,
                }),
                Err(message) => {
                    cx.error(item.span(), Some("children"), message);
                    None
                }
            };
        }
        DeValue::Table(table) => table,
        other => {
            cx.error(
                item.span(),
                Some("children"),
                format!(
                    "expected a pid or a table like {{ pid = 4344, start = 8812399 }}, found {}",
                    raw::type_name(other)
                ),
            );
            return None;
        }
    };
    cx.check_keys(table, &CHILD_ENTRY_KEYS, Some("children"));
    let mut checked = |key: &str, check: fn(&Value<'_>) -> Result<u64, String>| {
        let value = table.get(key)?;
        match check(value) {
            Ok(n) => Some((n, value.span())),
            Err(message) => {
                cx.error(value.span(), Some("children"), message);
                None
            }
        }
    };
    let start = checked("start", start_time);
    let inode = checked("inode", inode);
    let pid = match table.get("pid") {
        Some(value) => match pid(value) {
            Ok(pid) => Some((pid, value.span())),
            Err(message) => {
                cx.error(value.span(), Some("children"), message);
                None
            }
        },
        None => {
            cx.error(
                item.span(),
                Some("children"),
                "missing \"pid\" in this entry (e.g. { pid = 4344, start = 8812399 })".to_string(),
            );
            None
        }
    };
    let (pid, pid_span) = pid?;
    Some(CheckedProc {
        spec: ProcSpec {
            pid,
            start: start.as_ref().map(|(start, _)| *start),
            inode: inode.as_ref().map(|(inode, _)| *inode),
        },
        pid_span,
        start: start.map(|(_, span)| ("children", span)),
        inode: inode.map(|(_, span)| ("children", span)),
    })
}

/// `child_start` and `child_inode` pin `child`; with `children`, each
/// entry carries its own pins.
/// `checked` holds the values of `child_start` and `child_inode` if they are
/// valid, to make the example in the message the user's own.
fn pins_need_entries(
    cx: &mut Cx<'_>,
    table: &Table<'_>,
    children: &[CheckedProc],
    checked: [Pin; 2],
) {
    let pid = children.first().map_or(4343, |child| child.spec.pid.get());
    let keys = [
        ("child_start", "start", 8_812_399),
        ("child_inode", "inode", 5678),
    ];
    for ((field, pin, example), checked) in keys.into_iter().zip(checked) {
        let Some((key, _)) = table.get_key_value(field) else {
            continue;
        };
        let given = checked.map_or(example, |(value, _)| value);
        cx.error(
            key.span(),
            Some(field),
            format!(
                "cannot be used with \"children\" (pin each entry instead: \
                 children = [{{ pid = {pid}, {pin} = {given} }}])"
            ),
        );
    }
}

/// Checks across bindings: a parent/child pair bound twice, and one pid
/// pinned two different ways.
fn cross_check(checked: &[Checked], problems: &mut Vec<Problem>) {
    let mut bound: HashMap<(Pid, Pid), &str> = HashMap::new();
    let mut starts: HashMap<Pid, (u64, &str)> = HashMap::new();
    let mut inodes: HashMap<Pid, (u64, &str)> = HashMap::new();
    for binding in checked {
        let parent = binding.parent.spec.pid;
        for child in &binding.children {
            match bound.entry((parent, child.spec.pid)) {
                MapEntry::Occupied(first) => problems.push(Problem {
                    span: child.pid_span.clone(),
                    context: Some(binding.label.clone()),
                    field: None,
                    message: format!(
                        "parent {parent} and child {} are already bound by {}",
                        child.spec.pid,
                        first.get()
                    ),
                }),
                MapEntry::Vacant(slot) => {
                    slot.insert(&binding.label);
                }
            }
        }
        for member in std::iter::once(&binding.parent).chain(&binding.children) {
            let pins = [
                (member.spec.start, &member.start, &mut starts, "start time"),
                (member.spec.inode, &member.inode, &mut inodes, "inode"),
            ];
            for (pin, place, seen, what) in pins {
                let (Some(pin), Some((field, span))) = (pin, place) else {
                    continue;
                };
                match seen.entry(member.spec.pid) {
                    MapEntry::Occupied(first) if first.get().0 != pin => {
                        let (first_pin, first_label) = *first.get();
                        problems.push(Problem {
                            span: span.clone(),
                            context: Some(binding.label.clone()),
                            field: Some(field),
                            message: format!(
                                "pid {} is pinned to {what} {pin} here but to {first_pin} by {first_label} \
                                 (at most one can be right)",
                                member.spec.pid
                            ),
                        });
                    }
                    MapEntry::Occupied(_) => {}
                    MapEntry::Vacant(slot) => {
                        slot.insert((pin, &binding.label));
                    }
                }
            }
        }
    }
}

/// A string value.
fn string<'v>(value: &'v Value<'_>) -> Result<&'v str, String> {
    match value.get_ref() {
        DeValue::String(s) => Ok(s),
        other => Err(format!(
            "expected a string, found {}",
            raw::type_name(other)
        )),
    }
}

/// An integer value; `range` words the error when it does not fit in 64
/// bits.
fn integer(value: &Value<'_>, range: &str) -> Result<i64, String> {
    match value.get_ref() {
        DeValue::Integer(int) => raw::integer(int)
            .ok_or_else(|| format!("{} is out of range ({range})", raw::integer_text(int))),
        DeValue::String(s) if s.trim().parse::<i64>().is_ok() => Err(format!(
            "expected an integer, found a string (remove the quotes: {})",
            s.trim()
        )),
        other => Err(format!(
            "expected an integer, found {}",
            raw::type_name(other)
        )),
    }
}

/// A pid, greater than 1.
fn pid(value: &Value<'_>) -> Result<Pid, String> {
    Pid::try_from(integer(value, "expected an integer from 2 to 2147483647")?)
}

/// A start time in clock ticks since boot.
fn start_time(value: &Value<'_>) -> Result<u64, String> {
    const EXPECTED: &str = "expected an integer >= 0: field 22 of /proc/PID/stat";
    let n = integer(value, EXPECTED)?;
    u64::try_from(n).map_err(|_| format!("{n} is not a valid start time ({EXPECTED})"))
}

/// A pidfs inode number.
fn inode(value: &Value<'_>) -> Result<u64, String> {
    const EXPECTED: &str = "expected an integer > 0";
    let n = integer(value, EXPECTED)?;
    match u64::try_from(n) {
        Ok(inode) if inode > 0 => Ok(inode),
        _ => Err(format!("{n} is not a valid inode ({EXPECTED})")),
    }
}

/// `signal`: a name or a number, as a string or an integer.
fn signal(value: &Value<'_>) -> Result<Signal, String> {
    match value.get_ref() {
        DeValue::String(s) => parse_signal(s),
        DeValue::Integer(int) => match raw::integer(int) {
            Some(n) => signal_number(n),
            None => Err(format!("{} is not a signal number", raw::integer_text(int))),
        },
        other => Err(format!(
            "expected a signal name or number, found {}",
            raw::type_name(other)
        )),
    }
}

/// `grace`: a duration string.
fn grace(value: &Value<'_>) -> Result<Grace, String> {
    match value.get_ref() {
        DeValue::String(s) => parse_duration(s),
        DeValue::Integer(int) => Err(format!(
            "expected a string such as \"5s\", found an integer (for seconds write \"{}s\")",
            raw::integer_text(int)
        )),
        other => Err(format!(
            "expected a string such as \"5s\" or \"never\", found {}",
            raw::type_name(other)
        )),
    }
}

/// `kill`: a mode name.
fn kill(value: &Value<'_>) -> Result<KillMode, String> {
    parse_kill(string(value)?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The backends of a Linux build: the tests check the same messages on
    /// every OS.
    const LINUX: [BackendKind; 3] = [BackendKind::Pidfd, BackendKind::Netlink, BackendKind::Poll];

    fn parse(toml: &str, path: &Path) -> Result<Config, ConfigErrors> {
        crate::config::parse(toml, path, &LINUX)
    }

    /// Parses `toml` as `t.toml` and compares its errors, one per line
    /// (none for a valid file).
    fn check(toml: &str, expected: &[&str]) {
        let got: Vec<String> = match parse(toml, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(got, expected, "errors for:\n{toml}");
    }

    /// Parses a file that must be valid.
    fn valid(toml: &str) -> Result<Config, String> {
        parse(toml, Path::new("t.toml")).map_err(|errors| errors.to_string())
    }

    fn proc(pid: i64, start: Option<u64>, inode: Option<u64>) -> Result<ProcSpec, String> {
        Ok(ProcSpec {
            pid: Pid::try_from(pid)?,
            start,
            inode,
        })
    }

    fn secs(n: u64) -> Grace {
        Grace::After(Duration::from_secs(n))
    }

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
    fn inline_bindings_and_other_integer_forms() -> Result<(), String> {
        let config = valid("binding = [{ parent = 0x10, child = 1_000 }]\n")?;
        let binding = config.bindings.first().ok_or("no binding")?;
        assert_eq!(binding.parent, proc(16, None, None)?);
        assert_eq!(binding.children, [proc(1000, None, None)?]);
        Ok(())
    }

    #[test]
    fn log_levels_in_any_case() -> Result<(), String> {
        for (written, level) in [
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
            ("off", log::LevelFilter::Off),
            ("WARN", log::LevelFilter::Warn),
        ] {
            let config = valid(&format!("[daemon]\nlog = \"{written}\"\n"))?;
            assert_eq!(config.daemon.log, level, "{written}");
        }
        Ok(())
    }

    #[test]
    fn durations() {
        let ms = |n| Ok(Grace::After(Duration::from_millis(n)));
        let cases: [(&str, Result<Grace, String>); 20] = [
            ("never", Ok(Grace::Never)),
            ("0s", ms(0)),
            ("0ms", ms(0)),
            ("500ms", ms(500)),
            ("5s", ms(5_000)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("24h", ms(86_400_000)),
            ("1440m", ms(86_400_000)),
            ("007s", ms(7_000)),
            ("5 sec", Err(r#"invalid duration "5 sec" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("5", Err(r#"invalid duration "5" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("s", Err(r#"invalid duration "s" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("", Err(r#"invalid duration "" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("1.5s", Err(r#"invalid duration "1.5s" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("-1s", Err(r#"invalid duration "-1s" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("5S", Err(r#"invalid duration "5S" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("Never", Err(r#"invalid duration "Never" (expected e.g. "500ms", "5s", "2m" or "never")"#.into())),
            ("48h", Err(r#""48h" is too long (at most "24h"; use "never" to disable escalation)"#.into())),
            ("99999999999999999999999s", Err(r#""99999999999999999999999s" is too long (at most "24h"; use "never" to disable escalation)"#.into())),
        ];
        for (written, expected) in cases {
            assert_eq!(parse_duration(written), expected, "{written:?}");
        }
        assert_eq!(
            parse_duration("86400001ms"),
            Err(
                r#""86400001ms" is too long (at most "24h"; use "never" to disable escalation)"#
                    .into()
            )
        );
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err(r#""18446744073709551615h" is too long (at most "24h"; use "never" to disable escalation)"#.into())
        );
    }

    #[test]
    fn signals() {
        use nix::sys::signal::Signal as Nix;
        let ok = |sig: Nix| Ok(Signal::from(sig));
        let cases: [(&str, Result<Signal, String>); 16] = [
            ("SIGTERM", ok(Nix::SIGTERM)),
            ("TERM", ok(Nix::SIGTERM)),
            ("term", ok(Nix::SIGTERM)),
            ("SIGterm", ok(Nix::SIGTERM)),
            ("sigint", ok(Nix::SIGINT)),
            ("KILL", ok(Nix::SIGKILL)),
            ("SIGSTOP", ok(Nix::SIGSTOP)),
            ("15", ok(Nix::SIGTERM)),
            ("1", ok(Nix::SIGHUP)),
            ("SIGFOO", Err(r#""SIGFOO" is not a signal name (try SIGTERM)"#.into())),
            ("", Err(r#""" is not a signal name (try SIGTERM)"#.into())),
            ("SIGTREM", Err(r#""SIGTREM" is not a signal name (did you mean SIGTERM?)"#.into())),
            ("99", Err("99 is not a signal number".into())),
            ("-15", Err("-15 is not a signal number".into())),
            ("99999999999999999999", Err("99999999999999999999 is not a signal number".into())),
            ("0", Err("0 is not a signal number (signal 0 only checks that a process exists; try SIGTERM)".into())),
        ];
        for (written, expected) in cases {
            assert_eq!(parse_signal(written), expected, "{written:?}");
        }
        assert_eq!(
            parse_signal("SIGTERM").map(|sig| sig.to_string()),
            Ok("SIGTERM".into())
        );
    }

    #[test]
    fn signals_as_integers() {
        check("[defaults]\nsignal = 15\n", &[]);
        check(
            "[defaults]\nsignal = 99\n",
            &["t.toml:2:10: [defaults]: signal: 99 is not a signal number"],
        );
        check(
            "[defaults]\nsignal = 0\n",
            &["t.toml:2:10: [defaults]: signal: 0 is not a signal number (signal 0 only checks that a process exists; try SIGTERM)"],
        );
        check(
            "[defaults]\nsignal = -9\n",
            &["t.toml:2:10: [defaults]: signal: -9 is not a signal number"],
        );
        check(
            "[defaults]\nsignal = true\n",
            &["t.toml:2:10: [defaults]: signal: expected a signal name or number, found a boolean"],
        );
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
                r#"t.toml:4:1: [daemon]: unknown key "logs" (expected one of: log, state, socket, max_bindings_per_uid, backend, poll_interval, metrics_file) (did you mean "log"?)"#,
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
                r#"t.toml:5:8: [defaults]: kill: unknown kill mode "gruop" (expected "process", "group" or "tree")"#,
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

    #[test]
    fn binding_value_errors_use_the_name_as_context() {
        check(
            r#"
[[binding]]
name = "qemu"
parent = 4242
child = 4343
signal = "TREM"
grace = "48h"
kill = "x"
sgnal = "SIGINT"
"#,
            &[
                r#"t.toml:6:10: binding "qemu": signal: "TREM" is not a signal name (did you mean SIGTERM?)"#,
                r#"t.toml:7:9: binding "qemu": grace: "48h" is too long (at most "24h"; use "never" to disable escalation)"#,
                r#"t.toml:8:8: binding "qemu": kill: unknown kill mode "x" (expected "process", "group" or "tree")"#,
                r#"t.toml:9:1: binding "qemu": unknown key "sgnal" (expected one of: name, parent, child, children, parent_pidfile, child_pidfile, parent_start, child_start, parent_inode, child_inode, signal, grace, kill) (did you mean "signal"?)"#,
            ],
        );
        check(
            "[[binding]]\nname = \"qemu\"\nparent = 4242\nchild = 4343\ngrace = \"5 sec\"\n",
            &[
                r#"t.toml:5:9: binding "qemu": grace: invalid duration "5 sec" (expected e.g. "500ms", "5s", "2m" or "never")"#,
            ],
        );
    }

    #[test]
    fn unknown_keys_without_a_close_match() {
        check(
            "[[binding]]\nparent = 2\nchild = 3\nwhatever = 1\n",
            &[
                r#"t.toml:4:1: binding 1: unknown key "whatever" (expected one of: name, parent, child, children, parent_pidfile, child_pidfile, parent_start, child_start, parent_inode, child_inode, signal, grace, kill)"#,
            ],
        );
    }

    #[test]
    fn missing_and_exclusive_pids() {
        check(
            "[[binding]]\nname = \"a\"\n",
            &[
                r#"t.toml:1:1: binding "a": missing "parent" (the pid to watch)"#,
                r#"t.toml:1:1: binding "a": missing "child" or "children" (the pids to signal)"#,
            ],
        );
        check(
            "[[binding]]\nparent = 2\nchild = 3\nchildren = [4]\n",
            &[r#"t.toml:4:1: binding 1: "child" and "children" are mutually exclusive"#],
        );
        check(
            "[[binding]]\nchildren = [4]\nparent = 2\nchild = 3\n",
            &[r#"t.toml:4:1: binding 1: "child" and "children" are mutually exclusive"#],
        );
        check(
            "[[binding]]\nparent = 2\nchildren = []\n",
            &["t.toml:3:12: binding 1: children: empty list (give at least one pid)"],
        );
    }

    #[test]
    fn pid_errors() {
        check(
            "[[binding]]\nparent = 1\nchild = 0\n",
            &[
                "t.toml:2:10: binding 1: parent: pid 1 cannot be bound (init never exits and must never be signalled)",
                "t.toml:3:9: binding 1: child: 0 is not a valid pid (expected an integer from 2 to 2147483647)",
            ],
        );
        check(
            "[[binding]]\nparent = 2147483648\nchild = -4\n",
            &[
                "t.toml:2:10: binding 1: parent: 2147483648 is not a valid pid (expected an integer from 2 to 2147483647)",
                "t.toml:3:9: binding 1: child: -4 is not a valid pid (expected an integer from 2 to 2147483647)",
            ],
        );
        check(
            "[[binding]]\nparent = 99999999999999999999\nchild = \"4343\"\n",
            &[
                "t.toml:2:10: binding 1: parent: 99999999999999999999 is out of range (expected an integer from 2 to 2147483647)",
                "t.toml:3:9: binding 1: child: expected an integer, found a string (remove the quotes: 4343)",
            ],
        );
        check(
            "[[binding]]\nparent = [2, 3]\nchild = [4, 5]\n",
            &[
                "t.toml:2:10: binding 1: parent: expected an integer, found an array (a binding has one parent; write one [[binding]] per parent)",
                r#"t.toml:3:9: binding 1: child: expected an integer, found an array (use "children" for several pids)"#,
            ],
        );
        check(
            "[[binding]]\nparent = 2\nchildren = 3\n",
            &[
                r#"t.toml:3:12: binding 1: children: expected an array, found an integer (use "child" for a single pid)"#,
            ],
        );
        check(
            "[[binding]]\nparent = 2\nchildren = \"3\"\n",
            &["t.toml:3:12: binding 1: children: expected an array of pids, found a string"],
        );
        check(
            "[[binding]]\nparent = 2.0\nchild = 3\n",
            &["t.toml:2:10: binding 1: parent: expected an integer, found a float"],
        );
    }

    #[test]
    fn parent_and_children_overlap() {
        check(
            "[[binding]]\nparent = 4242\nchild = 4242\n",
            &["t.toml:3:9: binding 1: child: pid 4242 is both parent and child"],
        );
        check(
            "[[binding]]\nparent = 4242\nchildren = [4343, 4242, 4343]\n",
            &[
                "t.toml:3:19: binding 1: children: pid 4242 is both parent and child",
                "t.toml:3:25: binding 1: children: pid 4343 is listed twice",
            ],
        );
        check(
            "[[binding]]\nparent = 10\nchildren = [11, { pid = 11, start = 5 }]\n",
            &["t.toml:3:25: binding 1: children: pid 11 is listed twice"],
        );
    }

    #[test]
    fn children_entries() {
        check(
            r#"[[binding]]
parent = 10
children = [{ pid = 12, strat = 3 }, "x", { start = 1 }, { pid = 13, start = -1, inode = 0 }, 1.5]
"#,
            &[
                r#"t.toml:3:25: binding 1: children: unknown key "strat" (expected one of: pid, start, inode) (did you mean "start"?)"#,
                "t.toml:3:38: binding 1: children: expected a pid or a table like { pid = 4344, start = 8812399 }, found a string",
                r#"t.toml:3:43: binding 1: children: missing "pid" in this entry (e.g. { pid = 4344, start = 8812399 })"#,
                "t.toml:3:78: binding 1: children: -1 is not a valid start time (expected an integer >= 0: field 22 of /proc/PID/stat)",
                "t.toml:3:90: binding 1: children: 0 is not a valid inode (expected an integer > 0)",
                "t.toml:3:95: binding 1: children: expected a pid or a table like { pid = 4344, start = 8812399 }, found a float",
            ],
        );
    }

    #[test]
    fn child_pins_with_children_point_to_inline_tables() {
        check(
            "[[binding]]\nparent = 10\nchildren = [11, 12]\nchild_start = 7\nchild_inode = 8\n",
            &[
                r#"t.toml:4:1: binding 1: child_start: cannot be used with "children" (pin each entry instead: children = [{ pid = 11, start = 7 }])"#,
                r#"t.toml:5:1: binding 1: child_inode: cannot be used with "children" (pin each entry instead: children = [{ pid = 11, inode = 8 }])"#,
            ],
        );
        check(
            "[[binding]]\nparent = 10\nchildren = [0]\nchild_inode = 0\n",
            &[
                "t.toml:3:13: binding 1: children: 0 is not a valid pid (expected an integer from 2 to 2147483647)",
                r#"t.toml:4:1: binding 1: child_inode: cannot be used with "children" (pin each entry instead: children = [{ pid = 4343, inode = 5678 }])"#,
                "t.toml:4:15: binding 1: child_inode: 0 is not a valid inode (expected an integer > 0)",
            ],
        );
    }

    #[test]
    fn pin_errors() {
        check(
            "[[binding]]\nparent = 10\nchild = 11\nparent_start = -1\nchild_start = \"x\"\nparent_inode = -3\nchild_inode = 99999999999999999999\n",
            &[
                "t.toml:4:16: binding 1: parent_start: -1 is not a valid start time (expected an integer >= 0: field 22 of /proc/PID/stat)",
                "t.toml:5:15: binding 1: child_start: expected an integer, found a string",
                "t.toml:6:16: binding 1: parent_inode: -3 is not a valid inode (expected an integer > 0)",
                "t.toml:7:15: binding 1: child_inode: 99999999999999999999 is out of range (expected an integer > 0)",
            ],
        );
    }

    #[test]
    fn names() {
        let long = "x".repeat(65);
        check(
            &format!(
                "[[binding]]\nname = \"\"\nparent = 2\nchild = 3\n\
                 [[binding]]\nname = \"a\\u0007\"\nparent = 2\nchild = 4\n\
                 [[binding]]\nname = \"{long}\"\nparent = 2\nchild = 5\n\
                 [[binding]]\nname = 7\nparent = 2\nchild = 6\n"
            ),
            &[
                "t.toml:2:8: binding 1: name: empty name (leave the name out or write a label)",
                &format!(
                    r#"t.toml:6:8: binding 2: name: name "a\u{{0007}}" has U+0007 at character 2, a control character ({})"#,
                    crate::config::name::NAME_RULE
                ),
                "t.toml:10:8: binding 3: name: name is 65 characters long (at most 64)",
                "t.toml:14:8: binding 4: name: expected a string, found an integer",
            ],
        );
        // 64 characters, some of them multi-byte, is fine.
        check(
            &format!(
                "[[binding]]\nname = \"{}\"\nparent = 2\nchild = 3\n",
                "é".repeat(64)
            ),
            &[],
        );
    }

    #[test]
    fn duplicate_names_fall_back_to_the_index() {
        check(
            r#"
[[binding]]
name = "qemu"
parent = 10
child = 11

[[binding]]
name = "qemu"
parent = 20
child = 21
grace = "soon"
"#,
            &[
                r#"t.toml:8:8: binding 2: name: name "qemu" is already used by binding 1"#,
                r#"t.toml:11:9: binding 2: grace: invalid duration "soon" (expected e.g. "500ms", "5s", "2m" or "never")"#,
            ],
        );
    }

    #[test]
    fn duplicate_bindings() {
        check(
            r#"
[[binding]]
parent = 4242
child = 4343

[[binding]]
name = "again"
parent = 4242
children = [4344, 4343]

[[binding]]
parent = 4242
child = 4344

[[binding]]
parent = 4343
child = 4242
"#,
            &[
                r#"t.toml:9:19: binding "again": parent 4242 and child 4343 are already bound by binding 1"#,
                r#"t.toml:13:9: binding 3: parent 4242 and child 4344 are already bound by binding "again""#,
            ],
        );
    }

    #[test]
    fn contradicting_pins() {
        check(
            r#"
[[binding]]
parent = 10
child = 11
parent_start = 100
child_inode = 7

[[binding]]
parent = 10
children = [{ pid = 12, start = 5 }]
parent_start = 100

[[binding]]
parent = 11
child = 10
parent_inode = 8
child_start = 101
"#,
            &[
                "t.toml:16:16: binding 3: parent_inode: pid 11 is pinned to inode 8 here but to 7 by binding 1 (at most one can be right)",
                "t.toml:17:15: binding 3: child_start: pid 10 is pinned to start time 101 here but to 100 by binding 1 (at most one can be right)",
            ],
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
                r#"t.toml:1:1: unknown key "stray" (expected the tables [daemon], [defaults] and [[binding]])"#,
                r#"t.toml:2:1: unknown key "signal" at the top level (put it under [defaults] or a [[binding]])"#,
                r#"t.toml:3:1: unknown key "parent" at the top level (put it under a [[binding]])"#,
                r#"t.toml:4:1: unknown key "log" at the top level (put it under [daemon])"#,
                "t.toml:5:1: unknown table [deamon] (expected [daemon], [defaults] or [[binding]]) (did you mean [daemon]?)",
                "t.toml:7:1: unknown table [[bindings]] (expected [daemon], [defaults] or [[binding]]) (did you mean [[binding]]?)",
                "t.toml:9:1: unknown table [[defaulds]] (expected [daemon], [defaults] or [[binding]]) (did you mean [defaults]?)",
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

    #[test]
    fn columns_count_characters() {
        assert_eq!(position("", 0), (1, 1));
        assert_eq!(position("ab\ncd", 3), (2, 1));
        assert_eq!(position("ab\ncd", 4), (2, 2));
        assert_eq!(position("é = 1", 2), (1, 2));
        assert_eq!(position("é = 1", 1), (1, 1));
        assert_eq!(position("ab", 99), (1, 3));
        check(
            "[[binding]]\nname = \"é\"  ;\n",
            &["t.toml:2:13: unexpected key or value, expected newline, `#`"],
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("signal", "sgnal"), 1);
        assert_eq!(edit_distance("signal", "singal"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("Signal", BINDING_KEYS), Some("signal"));
        assert_eq!(suggest("chlid", BINDING_KEYS), Some("child"));
        assert_eq!(suggest("parent-start", BINDING_KEYS), Some("parent_start"));
        assert_eq!(suggest("foo", BINDING_KEYS), None);
    }
}
