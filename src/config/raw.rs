//! The configuration exactly as written, with the byte span of every key
//! and value.
//!
//! This module owns TOML syntax and nothing else: it splits the document
//! into the three tables tether knows (`[daemon]`, `[defaults]`,
//! `[[binding]]`) and keeps everything else aside so that `validate` can
//! report it. It checks no types and no values; a file that is valid TOML
//! always parses here, however wrong its contents.
//!
//! The tree is toml's own span-preserving document (`toml::de::DeTable`)
//! rather than `#[derive(Deserialize)]` structs. Serde stops at the first
//! unknown field or wrong type and forgets the position of anything nested
//! in an array, while validation wants every error at once, each with the
//! line and column of the key or array element at fault.

use std::ops::Range;

use toml::de::{DeInteger, DeString, DeTable, DeValue};
use toml::Spanned;

/// A key as written, with its span (for a table header, the name inside
/// the brackets).
pub(super) type Key<'i> = Spanned<DeString<'i>>;

/// A value as written, with its span (for a table, its header or `{`).
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// A table as written: keys and values, both spanned.
pub(super) type Table<'i> = DeTable<'i>;

/// One top-level entry: `[daemon]`, `[[binding]]`, or a stray key.
#[derive(Debug)]
pub(super) struct Entry<'a, 'i> {
    /// The key (`daemon`, `binding`, ...).
    pub(super) key: &'a Key<'i>,
    /// Its value: a table, an array of tables, or anything else a user
    /// might have written there.
    pub(super) value: &'a Value<'i>,
}

/// A parsed configuration file, split by top-level key.
#[derive(Debug)]
pub(super) struct RawConfig<'i> {
    root: Table<'i>,
}

/// A document that is not valid TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// Where toml noticed the problem, in bytes.
    pub(super) span: Option<Range<usize>>,
    /// toml's description, on one line.
    pub(super) message: String,
}

impl<'i> RawConfig<'i> {
    /// Parses `text` as TOML. Only syntax is checked (including duplicate
    /// keys and tables, which TOML forbids).
    pub(super) fn parse(text: &'i str) -> Result<Self, SyntaxError> {
        match DeTable::parse(text) {
            Ok(root) => Ok(RawConfig {
                root: root.into_inner(),
            }),
            Err(err) => Err(SyntaxError::new(&err, text)),
        }
    }

    /// `[daemon]`, if present.
    pub(super) fn daemon(&self) -> Option<Entry<'_, 'i>> {
        self.entry("daemon")
    }

    /// `[defaults]`, if present.
    pub(super) fn defaults(&self) -> Option<Entry<'_, 'i>> {
        self.entry("defaults")
    }

    /// `[[binding]]`, if present: normally an array of tables.
    pub(super) fn binding(&self) -> Option<Entry<'_, 'i>> {
        self.entry("binding")
    }

    /// `[[rule]]`, if present: normally an array of tables.
    pub(super) fn rule(&self) -> Option<Entry<'_, 'i>> {
        self.entry("rule")
    }

    /// Every other top-level key, in file order.
    pub(super) fn unknown(&self) -> Vec<Entry<'_, 'i>> {
        let mut unknown: Vec<Entry<'_, 'i>> = self
            .root
            .iter()
            .filter(|(key, _)| !TOP_LEVEL_KEYS.contains(&key.get_ref().as_ref()))
            .map(|(key, value)| Entry { key, value })
            .collect();
        unknown.sort_by_key(|entry| entry.key.span().start);
        unknown
    }

    fn entry(&self, name: &str) -> Option<Entry<'_, 'i>> {
        self.root
            .get_key_value(name)
            .map(|(key, value)| Entry { key, value })
    }
}

/// The top-level keys tether knows, in the order the documentation gives
/// them.
pub(super) const TOP_LEVEL_KEYS: [&str; 4] = ["daemon", "defaults", "binding", "rule"];

impl SyntaxError {
    fn new(err: &toml::de::Error, text: &str) -> Self {
        let span = err.span();
        let mut message = err.message().trim_end().replace('\n', "; ");
        // "duplicate key" alone leaves the reader to find out which one.
        if message == "duplicate key" {
            let key = span
                .clone()
                .and_then(|span| text.get(span))
                .map(str::trim)
                .filter(|key| !key.is_empty());
            if let Some(key) = key {
                message = if key.starts_with('"') || key.starts_with('\'') {
                    format!("duplicate key {key} (each key and table may appear only once)")
                } else {
                    format!("duplicate key \"{key}\" (each key and table may appear only once)")
                };
            }
        }
        SyntaxError { span, message }
    }
}

/// The value of a TOML integer, or `None` if it does not fit in an `i64`
/// (TOML allows any length; toml parses integers lazily).
pub(super) fn integer(int: &DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(int.as_str(), int.radix()).ok()
}

/// How an integer was written, for messages (`0x10`, `-5`).
pub(super) fn integer_text(int: &DeInteger<'_>) -> String {
    int.to_string()
}

/// The type of `value` with its article, for "expected X, found Y".
pub(super) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date or time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_known_tables_from_the_rest() -> Result<(), String> {
        let text = "stray = 1\n[daemon]\nlog = \"info\"\n[[binding]]\nparent = 2\n[deamon]\n";
        let raw = RawConfig::parse(text).map_err(|err| err.message)?;
        assert!(raw.daemon().is_some());
        assert!(raw.defaults().is_none());
        assert!(raw.binding().is_some());
        let unknown: Vec<&str> = raw
            .unknown()
            .iter()
            .map(|entry| entry.key.get_ref().as_ref())
            .collect();
        assert_eq!(unknown, ["stray", "deamon"]);
        Ok(())
    }

    #[test]
    fn syntax_errors_carry_span_and_one_line_message() {
        let err = RawConfig::parse("[daemon]\nlog = \"info\"\nlog = \"warn\"\n").err();
        assert_eq!(
            err,
            Some(SyntaxError {
                span: Some(22..25),
                message: "duplicate key \"log\" (each key and table may appear only once)".into(),
            })
        );
        let err = RawConfig::parse("[daemon\n").err();
        assert_eq!(
            err.map(|err| err.message),
            Some("unclosed table, expected `]`".to_string())
        );
    }

    #[test]
    fn integers_of_every_radix_and_overflow() -> Result<(), String> {
        let raw = RawConfig::parse("a = 0x10\nb = -5\nc = 1_000\nd = 99999999999999999999\n")
            .map_err(|err| err.message)?;
        let values: Vec<(Option<i64>, String)> = raw
            .unknown()
            .iter()
            .filter_map(|entry| match entry.value.get_ref() {
                DeValue::Integer(int) => Some((integer(int), integer_text(int))),
                _ => None,
            })
            .collect();
        assert_eq!(
            values,
            [
                (Some(16), "0x10".to_string()),
                (Some(-5), "-5".to_string()),
                (Some(1000), "1000".to_string()),
                (None, "99999999999999999999".to_string()),
            ]
        );
        Ok(())
    }
}
