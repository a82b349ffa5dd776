//! `[[rule]]`: bind the processes that start a given executable, from a
//! given launcher, as they start.
//!
//! A rule is checked here like a binding (every error with its file, line,
//! column, rule and field); whether its executable exists is the daemon's
//! question (`daemon::rules`), asked at load and at every reload, since it
//! needs the file system. Wildcards (`*`, `?`, `[...]`) are allowed in the
//! executable's file name only, so expanding one reads one directory.
//!
//! A room of `validate`, with its helpers (`Cx`, `string`, `signal`,
//! `grace`, `kill`).

use std::collections::HashMap;
use std::path::Path;

use super::problems::{array_of_tables, position, table_of, Cx, Problem};
use super::values::{absolute_path, grace, kill, signal, string};
use crate::config::model::{BackendKind, Defaults, Grace, KillMode, Signal};
use crate::config::name::{check_name, quote_name};
use crate::config::raw::{Entry, Value};

/// Keys of a `[[rule]]`.
pub(super) const RULE_KEYS: [&str; 7] = [
    "name",
    "exec",
    "launcher",
    "launcher_match",
    "signal",
    "grace",
    "kill",
];

/// The largest pid, the longest suffix a rule's binding names get.
const LONGEST_SUFFIX: &str = ":2147483647";

/// Which of the new process's ancestors is its launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LauncherMatch {
    /// Its parent (whose executable must match `launcher`, if given).
    #[default]
    Parent,
    /// The nearest ancestor whose executable matches `launcher`.
    Ancestor,
}

impl LauncherMatch {
    /// The name written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            LauncherMatch::Parent => "parent",
            LauncherMatch::Ancestor => "ancestor",
        }
    }
}

/// One `[[rule]]`, with `[defaults]` applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    /// `name`: unique among rules; the rule's bindings are `NAME:PID`.
    pub name: String,
    /// `exec`: an absolute path, with wildcards in its file name only.
    pub exec: String,
    /// `launcher`: an absolute path or glob the launcher's executable must
    /// match (`None`: the parent, whatever it runs).
    pub launcher: Option<String>,
    /// `launcher_match`.
    pub launcher_match: LauncherMatch,
    /// `signal`.
    pub signal: Signal,
    /// `grace`.
    pub grace: Grace,
    /// `kill`.
    pub kill: KillMode,
    /// Line and column of `exec`, for the daemon's errors about it.
    pub exec_at: (usize, usize),
}

impl RuleSpec {
    /// Whether two rules would do the same (their place in the file
    /// aside): a reload leaves such a rule as it is.
    pub fn same_as(&self, other: &RuleSpec) -> bool {
        RuleSpec {
            exec_at: other.exec_at,
            ..self.clone()
        } == *other
    }

    /// `rule "name"`, for logs.
    pub fn label(&self) -> String {
        format!("rule {}", quote_name(&self.name))
    }
}

/// Whether `text` matches the shell pattern `pattern`: `*` any run of
/// characters but `/`, `?` one character but `/`, `[abc]`, `[a-z]`,
/// `[!a]` one of a set; anything else itself.
///
/// Linear in each path component (the greedy algorithm that backtracks
/// only to the last `*`): a launcher's path is anyone's choice, and a
/// pattern with several `*` must not cost exponential time on it.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let text: Vec<&str> = text.split('/').collect();
    pattern.len() == text.len()
        && pattern.iter().zip(&text).all(|(p, t)| {
            let p: Vec<char> = p.chars().collect();
            let t: Vec<char> = t.chars().collect();
            component_matches(&p, &t)
        })
}

/// Whether `pattern` has a wildcard.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// One path component against one pattern component.
fn component_matches(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where the last `*` was, and the text position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let c = text.get(t).copied().unwrap_or_default();
        let step = match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some('?') => Some(p + 1),
            Some('[') => match class(pattern.get(p + 1..).unwrap_or_default(), c) {
                Some((true, rest)) => Some(pattern.len() - rest.len()),
                Some((false, _)) => None,
                None => (c == '[').then_some(p + 1),
            },
            Some(&lit) => (lit == c).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((star_p, star_t))) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            (None, None) => return false,
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == '*')
}

/// Whether `c` is in the class that starts `pattern` (after its `[`), and
/// the pattern after the class; `None` if the class is not closed.
fn class(pattern: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match pattern.split_first() {
        Some(('!' | '^', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut found = false;
    let mut first = true;
    loop {
        let (&lo, tail) = rest.split_first()?;
        if lo == ']' && !first {
            return Some((found != negated && c != '/', tail));
        }
        first = false;
        match tail {
            ['-', hi, after @ ..] if *hi != ']' => {
                found |= (lo..=*hi).contains(&c);
                rest = after;
            }
            _ => {
                found |= lo == c;
                rest = tail;
            }
        }
    }
}

/// Checks `[[rule]]`: every rule, in file order. `backends` tells the OS:
/// rules need one of Linux's.
pub(super) fn rules(
    entry: &Entry<'_, '_>,
    text: &str,
    defaults: &Defaults,
    backends: &[BackendKind],
    problems: &mut Vec<Problem>,
) -> Vec<RuleSpec> {
    let Some(items) = array_of_tables(entry, "rule", text, problems) else {
        return Vec::new();
    };
    let linux = backends.iter().any(|b| {
        matches!(
            b,
            BackendKind::Pidfd | BackendKind::Netlink | BackendKind::Poll
        )
    });
    if !linux {
        problems.push(Problem {
            span: entry.value.span(),
            context: None,
            field: Some("rule"),
            message: "rules need Linux (fanotify or the process connector): this OS tells no \
                      daemon of every exec, so a rule could never match"
                .to_string(),
        });
        return Vec::new();
    }
    let mut names = HashMap::new();
    items
        .iter()
        .enumerate()
        .filter_map(|(idx, item)| rule(idx + 1, item, text, defaults, &mut names, problems))
        .collect()
}

/// Checks one rule; `idx` is 1-based, `names` maps earlier rules' names to
/// their index.
fn rule(
    idx: usize,
    value: &Value<'_>,
    text: &str,
    defaults: &Defaults,
    names: &mut HashMap<String, usize>,
    problems: &mut Vec<Problem>,
) -> Option<RuleSpec> {
    let index_label = format!("rule {idx}");
    let table = table_of(value, &index_label, problems)?;
    let n_problems = problems.len();
    let mut cx = Cx {
        context: index_label,
        problems,
    };
    let name = cx.field(table, "name", |value| rule_name(value, names));
    if let Some((name, _)) = &name {
        names.insert(name.clone(), idx);
        cx.context = format!("rule {}", quote_name(name));
    }
    cx.check_keys(table, &RULE_KEYS, None);
    let exec = cx.field(table, "exec", |value| exec_path(string(value)?));
    let launcher = cx.field(table, "launcher", |value| {
        absolute_path(string(value)?, "/usr/bin/guestfish")
    });
    let launcher_match = cx.field(table, "launcher_match", launcher_match);
    if let (Some((how, span)), None) = (&launcher_match, table.get("launcher")) {
        if *how == LauncherMatch::Ancestor {
            cx.error(
                span.clone(),
                Some("launcher_match"),
                "\"ancestor\" needs \"launcher\" (the executable the ancestor runs)".to_string(),
            );
        }
    }
    let signal = cx
        .field(table, "signal", signal)
        .map_or(defaults.signal, |(v, _)| v);
    let grace = cx
        .field(table, "grace", grace)
        .map_or(defaults.grace, |(v, _)| v);
    let kill = cx
        .field(table, "kill", kill)
        .map_or(defaults.kill, |(v, _)| v);
    if !table.contains_key("name") {
        cx.error(
            value.span(),
            None,
            "missing \"name\" (a rule's bindings are called NAME:PID)".to_string(),
        );
    }
    if !table.contains_key("exec") {
        cx.error(
            value.span(),
            None,
            "missing \"exec\" (the executable to bind, e.g. \"/usr/bin/qemu-system-*\")"
                .to_string(),
        );
    }
    if cx.problems.len() > n_problems {
        return None;
    }
    let (name, _) = name?;
    let (exec, exec_span) = exec?;
    Some(RuleSpec {
        name,
        exec,
        launcher: launcher.map(|(l, _)| l),
        launcher_match: launcher_match.map_or_else(LauncherMatch::default, |(how, _)| how),
        signal,
        grace,
        kill,
        exec_at: position(text, exec_span.start),
    })
}

/// A rule's `name`: a binding name once `:PID` is added, not used by an
/// earlier rule.
fn rule_name(value: &Value<'_>, names: &HashMap<String, usize>) -> Result<String, String> {
    let name = string(value)?;
    check_name(name)?;
    if check_name(&format!("{name}{LONGEST_SUFFIX}")).is_err() {
        return Err(format!(
            "name {} is too long for its bindings' names (NAME:PID; at most {} characters)",
            quote_name(name),
            crate::config::name::MAX_NAME_CHARS - LONGEST_SUFFIX.len()
        ));
    }
    if let Some(first) = names.get(name) {
        return Err(format!(
            "name {} is already used by rule {first}",
            quote_name(name)
        ));
    }
    Ok(name.to_string())
}

/// A rule's `exec`: absolute, wildcards in the file name only.
fn exec_path(path: &str) -> Result<String, String> {
    let path = absolute_path(path, "/usr/bin/qemu-system-*")?;
    let dir = Path::new(&path)
        .parent()
        .map(|dir| dir.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_glob(&dir) {
        return Err(format!(
            "{path:?} has a wildcard in a directory (wildcards are allowed in the file name only)"
        ));
    }
    if path.ends_with('/') {
        return Err(format!("{path:?} names a directory, not an executable"));
    }
    Ok(path)
}

/// `launcher_match`: "parent" or "ancestor".
fn launcher_match(value: &Value<'_>) -> Result<LauncherMatch, String> {
    match string(value)? {
        "parent" => Ok(LauncherMatch::Parent),
        "ancestor" => Ok(LauncherMatch::Ancestor),
        other => Err(format!(
            "unknown launcher_match {other:?} (expected \"parent\" or \"ancestor\")"
        )),
    }
}

/// Checks `[daemon] rule_source`.
pub(super) fn rule_source(value: &Value<'_>) -> Result<crate::vocab::RuleSource, String> {
    use crate::vocab::RuleSource;
    match string(value)? {
        "auto" => Ok(RuleSource::Auto),
        "fanotify" => Ok(RuleSource::Fanotify),
        "connector" => Ok(RuleSource::Connector),
        other => Err(format!(
            "unknown rule source {other:?} (expected \"auto\", \"fanotify\" or \"connector\")"
        )),
    }
}

/// The keys a `[[rule]]` has that nothing else has, for the top level's
/// "put it under" hint.
pub(super) fn is_rule_key(key: &str) -> bool {
    matches!(key, "exec" | "launcher" | "launcher_match")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, RuleSource};

    const RULE: &str = "[defaults]\nsignal = \"INT\"\n[daemon]\nrule_source = \"connector\"\n\
                        [[rule]]\nname = \"vm\"\nexec = \"/usr/bin/qemu-system-*\"\n\
                        launcher = \"/usr/bin/virt-*\"\nlauncher_match = \"ancestor\"\nkill = \"tree\"\n";

    #[test]
    fn a_rule_with_every_field_and_the_defaults() -> Result<(), String> {
        let linux = [BackendKind::Pidfd, BackendKind::Netlink, BackendKind::Poll];
        let config = parse(RULE, Path::new("t.toml"), &linux).map_err(|e| e.to_string())?;
        assert_eq!(config.daemon.rule_source, RuleSource::Connector);
        assert_eq!(
            config.rules,
            [RuleSpec {
                name: "vm".into(),
                exec: "/usr/bin/qemu-system-*".into(),
                launcher: Some("/usr/bin/virt-*".into()),
                launcher_match: LauncherMatch::Ancestor,
                signal: crate::config::parse_signal("INT")?,
                grace: Grace::default(),
                kill: KillMode::Tree,
                exec_at: (7, 8),
            }]
        );
        Ok(())
    }

    /// macOS and the BSDs refuse rules, saying why.
    #[test]
    fn rules_are_refused_where_no_exec_notification_exists() {
        let errors = parse(RULE, Path::new("t.toml"), &[BackendKind::Kqueue])
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            errors,
            Err(
                "t.toml:5:1: rule: rules need Linux (fanotify or the process connector): this OS \
                 tells no daemon of every exec, so a rule could never match"
                    .to_string()
            )
        );
    }

    #[test]
    fn globs() {
        assert!(glob_matches(
            "/usr/bin/qemu-system-*",
            "/usr/bin/qemu-system-x86_64"
        ));
        assert!(!glob_matches("/usr/bin/qemu-system-*", "/usr/bin/qemu-img"));
        assert!(!glob_matches("/usr/*", "/usr/bin/x"), "* stops at /");
        assert!(glob_matches("/a/b?", "/a/bc"));
        assert!(!glob_matches("/a/b?", "/a/b"));
        assert!(glob_matches("/a/[bc]x", "/a/cx"));
        assert!(glob_matches("/a/[a-c]x", "/a/bx"));
        assert!(!glob_matches("/a/[!a-c]x", "/a/bx"));
        assert!(glob_matches("/a/[x", "/a/[x"), "an unclosed [ is itself");
        assert!(glob_matches("/a/*x*", "/a/yyxyy"));
        assert!(glob_matches("/exact", "/exact"));
        assert!(glob_matches("/a/*", "/a/"), "* matches nothing");
        assert!(glob_matches("/a/**b", "/a/xb"));
        assert!(!glob_matches("/a/*b", "/a/x/b"));
        assert!(glob_matches("/usr/*/qemu", "/usr/bin/qemu"));
        // Many stars against a long name that almost matches: linear.
        let name = format!("/{}", "-".repeat(250));
        let started = std::time::Instant::now();
        assert!(!glob_matches("/*-*-*-*-*-*-*-*-*-*-x", &name));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert!(!glob_matches("/exact", "/exactly"));
    }
}
