//! A binding's children given by pid: `child` with its pins, or
//! `children`, whose entries are pids or `{ pid, start, inode }` tables.

use std::collections::HashSet;

use toml::de::DeValue;

use crate::config::raw::{self, Table, Value};

use super::binding::{CheckedProc, Pin};
use super::problems::Cx;
use super::values::{inode, pid, start_time};

/// Keys of an inline table in `children`.
const CHILD_ENTRY_KEYS: [&str; 3] = ["pid", "start", "inode"];

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
    Some(CheckedProc::new(
        pid,
        pid_span,
        [start, inode],
        ["child_start", "child_inode"],
    ))
}

/// The children given by pid: `child` (pinned by `child_start` and
/// `child_inode`, already checked and passed as `pins`) or `children`;
/// `missing` is the error when neither is there.
pub(super) fn children(
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
pub(super) fn entry(cx: &mut Cx<'_>, item: &Value<'_>) -> Option<CheckedProc> {
    let table = match item.get_ref() {
        DeValue::Integer(_) => {
            return match pid(item) {
                Ok(pid) => Some(CheckedProc::new(
                    pid,
                    item.span(),
                    [None, None],
                    ["children", "children"],
                )),
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
    Some(CheckedProc::new(
        pid,
        pid_span,
        [start, inode],
        ["children", "children"],
    ))
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

#[cfg(test)]
mod tests {
    use super::super::testing::check;

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
}
