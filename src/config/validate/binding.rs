//! `[[binding]]`: each binding checked on its own (its name, its parent
//! given by pid or pidfile, its pins, its signal, grace and kill mode), then
//! the checks across bindings (a pair bound twice, a pid pinned two ways).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::ops::Range;

use toml::de::DeValue;

use crate::config::model::{BindingSpec, Defaults, Pid, PidSource, PidfileBindingSpec, ProcSpec};
use crate::config::name::{check_name, quote_name};
use crate::config::raw::{Entry, Table, Value};

use super::children::children;
use super::problems::{array_of_tables, table_of, Cx, Problem};
use super::values::{absolute_path, grace, inode, kill, pid, signal, start_time, string};

/// Keys of a `[[binding]]`.
pub(super) const BINDING_KEYS: [&str; 13] = [
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

/// A checked pin (`*_start` or `*_inode`) and where its value is written.
pub(super) type Pin = Option<(u64, Range<usize>)>;

/// A process of a binding that passed its own checks, with the places the
/// cross-binding checks point at.
#[derive(Debug)]
pub(super) struct CheckedProc {
    pub(super) spec: ProcSpec,
    pub(super) pid_span: Range<usize>,
    /// `parent_start`, `child_start` or `children`, and where.
    pub(super) start: Option<(&'static str, Range<usize>)>,
    /// `parent_inode`, `child_inode` or `children`, and where.
    pub(super) inode: Option<(&'static str, Range<usize>)>,
}

impl CheckedProc {
    /// `pid`, written at `pid_span`, with its pins (`start`, `inode`) and
    /// the fields that hold them (`parent_start` and `parent_inode`,
    /// `child_start` and `child_inode`, or `children` for both).
    pub(super) fn new(
        pid: Pid,
        pid_span: Range<usize>,
        [start, inode]: [Pin; 2],
        [start_field, inode_field]: [&'static str; 2],
    ) -> Self {
        CheckedProc {
            spec: ProcSpec {
                pid,
                start: start.as_ref().map(|(start, _)| *start),
                inode: inode.as_ref().map(|(inode, _)| *inode),
            },
            pid_span,
            start: start.map(|(_, span)| (start_field, span)),
            inode: inode.map(|(_, span)| (inode_field, span)),
        }
    }
}

/// A binding that passed its own checks.
#[derive(Debug)]
pub(super) struct Checked {
    /// `binding "name"` or `binding 3`.
    label: String,
    pub(super) spec: BindingSpec,
    parent: CheckedProc,
    children: Vec<CheckedProc>,
}

/// Checks `[[binding]]`: every binding, in file order.
pub(super) fn bindings(
    entry: &Entry<'_, '_>,
    text: &str,
    defaults: &Defaults,
    pidfile_bindings: &mut Vec<PidfileBindingSpec>,
    problems: &mut Vec<Problem>,
) -> Vec<Checked> {
    let Some(items) = array_of_tables(entry, "binding", text, problems) else {
        return Vec::new();
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
pub(super) fn binding(
    binding_idx: usize,
    value: &Value<'_>,
    defaults: &Defaults,
    names: &mut HashMap<String, usize>,
    pidfile_bindings: &mut Vec<PidfileBindingSpec>,
    problems: &mut Vec<Problem>,
) -> Option<Checked> {
    let index_label = format!("binding {binding_idx}");
    let table = table_of(value, &index_label, problems)?;
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
    let parent = CheckedProc::new(
        parent_pid,
        pid_span,
        [parent_start, parent_inode],
        ["parent_start", "parent_inode"],
    );
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

/// The pins of one side (`parent_start` and `parent_inode`, or
/// `child_start` and `child_inode`), each checked once; beside a pidfile
/// they are refused instead (its process is pinned when the file is read).
pub(super) fn pins(
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

/// Checks across bindings: a parent/child pair bound twice, and one pid
/// pinned two different ways.
pub(super) fn cross_check(checked: &[Checked], problems: &mut Vec<Problem>) {
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

#[cfg(test)]
mod tests {
    use super::super::testing::{check, proc, valid};

    #[test]
    fn inline_bindings_and_other_integer_forms() -> Result<(), String> {
        let config = valid("binding = [{ parent = 0x10, child = 1_000 }]\n")?;
        let binding = config.bindings.first().ok_or("no binding")?;
        assert_eq!(binding.parent, proc(16, None, None)?);
        assert_eq!(binding.children, [proc(1000, None, None)?]);
        Ok(())
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
                r#"t.toml:8:8: binding "qemu": kill: unknown kill mode "x" (expected "process", "group", "tree" or "cgroup")"#,
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
}
