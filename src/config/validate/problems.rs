//! Where validation errors go: a [`Problem`] per error, located by byte
//! offset, collected with its context (`binding 2`, `[defaults]`) through
//! [`Cx`]; and the suggestion of a close name for a misspelt key or value.

use std::ops::Range;

use toml::de::DeValue;

use crate::config::raw::{self, Entry, Table, Value};

/// One error, located by byte offset until the end.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) span: Range<usize>,
    pub(super) context: Option<String>,
    pub(super) field: Option<&'static str>,
    pub(super) message: String,
}

/// The items of an array of tables (`[[binding]]`, `[[rule]]`): `key` is
/// the table's name; anything else is a problem, with a hint for a
/// `[key]` written for `[[key]]`.
pub(super) fn array_of_tables<'a, 'i>(
    entry: &'a Entry<'_, 'i>,
    key: &'static str,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a [Value<'i>]> {
    let other = match entry.value.get_ref() {
        DeValue::Array(items) => return Some(items),
        other => other,
    };
    let header = text.get(entry.value.span()).unwrap_or_default();
    let message = if matches!(other, DeValue::Table(_)) && header.starts_with('[') {
        format!("write [[{key}]], not [{key}] (each {key} is one [[{key}]] table)")
    } else {
        format!("expected [[{key}]] tables, found {}", raw::type_name(other))
    };
    problems.push(Problem {
        span: entry.value.span(),
        context: None,
        field: Some(key),
        message,
    });
    None
}

/// The table `value` is, for an item labelled `label` (`binding 2`);
/// anything else is a problem.
pub(super) fn table_of<'a, 'i>(
    value: &'a Value<'i>,
    label: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a Table<'i>> {
    if let DeValue::Table(table) = value.get_ref() {
        return Some(table);
    }
    problems.push(Problem {
        span: value.span(),
        context: Some(label.to_owned()),
        field: None,
        message: format!(
            "expected a table, found {}",
            raw::type_name(value.get_ref())
        ),
    });
    None
}

/// Where problems go, and the context (`binding 2`, `[defaults]`) they get.
pub(super) struct Cx<'p> {
    pub(super) context: String,
    pub(super) problems: &'p mut Vec<Problem>,
}

impl Cx<'_> {
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        field: Option<&'static str>,
        message: String,
    ) {
        self.problems.push(Problem {
            span,
            context: Some(self.context.clone()),
            field,
            message,
        });
    }

    /// Reports every key of `table` not in `allowed`, at the key.
    pub(super) fn check_keys(
        &mut self,
        table: &Table<'_>,
        allowed: &[&str],
        field: Option<&'static str>,
    ) {
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
    pub(super) fn field<T>(
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
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
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
pub(super) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
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

#[cfg(test)]
mod tests {
    use super::super::binding::BINDING_KEYS;
    use super::super::testing::check;
    use super::*;

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
