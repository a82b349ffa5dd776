//! What the validation tests share: parse a file as `t.toml` with the
//! backends of a Linux build, and compare its errors.

use std::path::Path;
use std::time::Duration;

use crate::config::model::{BackendKind, Config, Grace, Pid, ProcSpec};
use crate::config::ConfigErrors;

/// The backends of a Linux build: the tests check the same messages on
/// every OS.
const LINUX: [BackendKind; 3] = [BackendKind::Pidfd, BackendKind::Netlink, BackendKind::Poll];

fn parse(toml: &str, path: &Path) -> Result<Config, ConfigErrors> {
    crate::config::parse(toml, path, &LINUX)
}

/// Parses `toml` as `t.toml` and compares its errors, one per line
/// (none for a valid file).
pub(super) fn check(toml: &str, expected: &[&str]) {
    let got: Vec<String> = match parse(toml, Path::new("t.toml")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(got, expected, "errors for:\n{toml}");
}

/// Parses a file that must be valid.
pub(super) fn valid(toml: &str) -> Result<Config, String> {
    parse(toml, Path::new("t.toml")).map_err(|errors| errors.to_string())
}

pub(super) fn proc(pid: i64, start: Option<u64>, inode: Option<u64>) -> Result<ProcSpec, String> {
    Ok(ProcSpec {
        pid: Pid::try_from(pid)?,
        start,
        inode,
    })
}

pub(super) fn secs(n: u64) -> Grace {
    Grace::After(Duration::from_secs(n))
}
