//! The value parsers: signal, duration, kill mode, log level, pid, pins
//! and paths, each from a TOML value or a string. `parse_*` are also used
//! by the command line and the control protocol.

use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

use crate::config::model::{Grace, KillMode, Pid, Signal};
use crate::config::raw::{self, Value};

use super::problems::suggest;

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
        "cgroup" => Ok(KillMode::Cgroup),
        _ => Err(format!(
            "unknown kill mode {s:?} (expected \"process\", \"group\", \"tree\" or \"cgroup\")"
        )),
    }
}

/// Parses a log level, in any case.
pub(super) fn parse_log_level(s: &str) -> Result<log::LevelFilter, String> {
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

/// An absolute path; `example` is shown when it is relative.
pub(super) fn absolute_path(path: &str, example: &str) -> Result<String, String> {
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

/// A string value.
pub(super) fn string<'v>(value: &'v Value<'_>) -> Result<&'v str, String> {
    match value.get_ref() {
        DeValue::String(s) => Ok(s),
        other => Err(format!(
            "expected a string, found {}",
            raw::type_name(other)
        )),
    }
}

/// A boolean value.
pub(super) fn boolean(value: &Value<'_>) -> Result<bool, String> {
    match value.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        DeValue::String(s) if matches!(s.trim(), "true" | "false") => Err(format!(
            "expected a boolean, found a string (remove the quotes: {})",
            s.trim()
        )),
        other => Err(format!(
            "expected a boolean, found {}",
            raw::type_name(other)
        )),
    }
}

/// An integer value; `range` words the error when it does not fit in 64
/// bits.
pub(super) fn integer(value: &Value<'_>, range: &str) -> Result<i64, String> {
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
pub(super) fn pid(value: &Value<'_>) -> Result<Pid, String> {
    Pid::try_from(integer(value, "expected an integer from 2 to 2147483647")?)
}

/// A start time in clock ticks since boot.
pub(super) fn start_time(value: &Value<'_>) -> Result<u64, String> {
    const EXPECTED: &str = "expected an integer >= 0: field 22 of /proc/PID/stat";
    let n = integer(value, EXPECTED)?;
    u64::try_from(n).map_err(|_| format!("{n} is not a valid start time ({EXPECTED})"))
}

/// A pidfs inode number.
pub(super) fn inode(value: &Value<'_>) -> Result<u64, String> {
    const EXPECTED: &str = "expected an integer > 0";
    let n = integer(value, EXPECTED)?;
    match u64::try_from(n) {
        Ok(inode) if inode > 0 => Ok(inode),
        _ => Err(format!("{n} is not a valid inode ({EXPECTED})")),
    }
}

/// `signal`: a name or a number, as a string or an integer.
pub(super) fn signal(value: &Value<'_>) -> Result<Signal, String> {
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
pub(super) fn grace(value: &Value<'_>) -> Result<Grace, String> {
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
pub(super) fn kill(value: &Value<'_>) -> Result<KillMode, String> {
    parse_kill(string(value)?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, valid};
    use super::*;

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
}
