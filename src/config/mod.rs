//! Configuration: TOML text in, a validated [`Config`] out.
//!
//! Three steps, kept apart (ripgrep's LowArgs/HiArgs): `raw` mirrors the
//! TOML exactly and keeps every value's span; `validate` turns it into the
//! typed model of `model`, collecting every error with its file, line,
//! column, binding and field; `load` reads the file. Nothing here opens a
//! process or touches the daemon's state: the event loop only ever sees a
//! `Config` that passed validation.

mod error;
mod model;
mod name;
mod raw;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::{
    BackendKind, BindingSpec, Config, Defaults, Grace, KillMode, LauncherMatch, Pid, PidSource,
    PidfileBindingSpec, ProcSpec, RuleSource, RuleSpec, Signal,
};
pub use name::{check_name, escape_name, is_hidden, name_for_program};
pub use validate::rule::{glob_matches, is_glob};
pub use validate::{parse_duration, parse_kill, parse_poll_interval, parse_signal};

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Whether the file must be safe to trust as root (owned by root, writable
/// by nobody else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The daemon runs as root: refuse a file that another user could write.
    RequireRootOwned,
    /// Any readable file will do.
    Any,
}

/// Reads, parses and validates the file at `path` once (the daemon reads
/// until the file has settled: `daemon::ConfigSource`).
#[cfg(test)]
pub fn load(path: &Path, trust: Trust) -> Result<Config, ConfigErrors> {
    let snapshot = read(path, trust)?;
    if !snapshot.stable {
        return Err(ConfigErrors::whole_file(
            path,
            "the file changed while it was read (being written?)".into(),
        ));
    }
    parse(&snapshot.text, path, &BackendKind::ALL)
}

/// What a read of the file saw: its text, and whether it stayed the same
/// while it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The whole text.
    pub text: String,
    /// What `fstat` said after the read.
    pub stamp: Stamp,
    /// Whether `fstat` said the same before and after the read, and the
    /// bytes read are as many as its size.
    pub stable: bool,
}

/// What `fstat` says of a file that changes whenever it is written:
/// device, inode, size, and the modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// When the file last changed (the later of its modification and
    /// change times).
    pub fn changed(&self) -> std::time::SystemTime {
        let at = |(secs, nsecs): (i64, i64)| {
            let secs = u64::try_from(secs).unwrap_or(0);
            let nsecs = u32::try_from(nsecs).unwrap_or(0);
            std::time::UNIX_EPOCH + std::time::Duration::new(secs, nsecs)
        };
        at(self.mtime).max(at(self.ctime))
    }
}

/// The largest configuration file read (about 500,000 bindings).
const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Reads the whole file at `path` and tells whether it stayed the same
/// while it was read (see [`Snapshot`]); parses nothing.
pub fn read(path: &Path, trust: Trust) -> Result<Snapshot, ConfigErrors> {
    let whole_file = |message: String| ConfigErrors::whole_file(path, message);
    // Opened without blocking (a FIFO planted or left at the path would
    // hold the event loop, and with it SIGTERM, until someone wrote to it)
    // and read only if it is a regular file of a sane size.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| whole_file(format!("cannot read: {err}")))?;
    // The metadata of the open file, not of the path: what is checked is
    // what is read, even if the path is replaced in between.
    let before = file
        .metadata()
        .map_err(|err| whole_file(format!("cannot read: {err}")))?;
    if !before.is_file() {
        return Err(whole_file(
            "cannot read: not a regular file (a FIFO, device or directory is never read)".into(),
        ));
    }
    if before.size() > MAX_CONFIG_BYTES {
        return Err(whole_file(format!(
            "cannot read: {} bytes is more than the {MAX_CONFIG_BYTES} a configuration may have",
            before.size()
        )));
    }
    if trust == Trust::RequireRootOwned {
        check_owner(before.uid(), before.gid(), before.mode()).map_err(whole_file)?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|err| whole_file(format!("cannot read: {err}")))?;
    let after = file
        .metadata()
        .map_err(|err| whole_file(format!("cannot read: {err}")))?;
    let stamp = Stamp::of(&after);
    let stable = Stamp::of(&before) == stamp
        && u64::try_from(bytes.len()).is_ok_and(|len| len == stamp.size);
    let text = String::from_utf8(bytes).map_err(|err| {
        let valid_up_to = err.utf8_error().valid_up_to();
        whole_file(format!(
            "cannot read: not UTF-8 text (invalid byte at offset {valid_up_to})"
        ))
    })?;
    Ok(Snapshot {
        text,
        stamp,
        stable,
    })
}

/// Refuses a file that a user other than root could have written: owned by
/// someone else, world-writable, or writable by a group other than root's.
fn check_owner(uid: u32, gid: u32, mode: u32) -> Result<(), String> {
    let group_writable = mode & 0o020 != 0 && gid != 0;
    if uid != 0 || mode & 0o002 != 0 || group_writable {
        return Err(format!(
            "refusing a config file that other users can write (owner uid {uid}, mode {:04o}); \
             make it root-owned and not group/world-writable",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Parses and validates `text`; `path` is used only in error messages,
/// `backends` are those this build can run (`[daemon] backend` must be one
/// of them, or `auto`).
pub fn parse(text: &str, path: &Path, backends: &[BackendKind]) -> Result<Config, ConfigErrors> {
    let raw = raw::RawConfig::parse(text).map_err(|err| validate::syntax_error(err, text, path))?;
    validate::validate(&raw, text, path, backends)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// The invalid fixtures, relative to the crate root (where cargo runs
    /// unit tests), so that messages name them the way a user would.
    const FIXTURES: &str = "config/invalid";

    /// Every `config/invalid/NAME.toml` fails with exactly the lines of
    /// `NAME.err`. With `TETHER_BLESS=1` the `.err` files are rewritten
    /// from the actual output instead (review the diff before committing).
    #[test]
    fn invalid_fixtures_fail_with_their_expected_messages() -> Result<(), String> {
        let bless = std::env::var_os("TETHER_BLESS").is_some_and(|v| v == "1");
        let mut tomls: Vec<PathBuf> = fs::read_dir(FIXTURES)
            .map_err(|err| format!("{FIXTURES}: {err}"))?
            .filter_map(|entry| {
                entry
                    .ok()
                    .map(|entry| Path::new(FIXTURES).join(entry.file_name()))
            })
            .collect();
        tomls.sort();
        let errs: Vec<PathBuf> = tomls
            .iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "err"))
            .cloned()
            .collect();
        tomls.retain(|path| path.extension().is_some_and(|ext| ext == "toml"));
        assert!(tomls.len() >= 8, "too few fixtures: {tomls:?}");
        for err in &errs {
            assert!(
                tomls.contains(&err.with_extension("toml")),
                "{} has no .toml",
                err.display()
            );
        }
        let mut mismatches = Vec::new();
        for toml in &tomls {
            let actual = match load(toml, Trust::Any) {
                Ok(_) => String::from("(valid)\n"),
                Err(errors) => format!("{errors}\n"),
            };
            let err_path = toml.with_extension("err");
            if bless {
                fs::write(&err_path, &actual)
                    .map_err(|err| format!("{}: {err}", err_path.display()))?;
                continue;
            }
            let expected = fs::read_to_string(&err_path)
                .map_err(|err| format!("{}: {err}", err_path.display()))?;
            if actual != expected {
                mismatches.push(format!(
                    "{}:\n--- expected\n{expected}--- actual\n{actual}",
                    toml.display()
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        Ok(())
    }

    /// The example file is valid as shipped, and its commented-out
    /// settings (lines starting `#` followed by a letter or `[`) are valid
    /// too once uncommented.
    #[test]
    fn example_config_is_valid_with_and_without_its_examples() -> Result<(), String> {
        let path = Path::new("config/tether.toml");
        let shipped = load(path, Trust::Any).map_err(|errors| errors.to_string())?;
        assert_eq!(shipped, Config::default());

        let text = fs::read_to_string(path).map_err(|err| err.to_string())?;
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = parse(&uncommented, path, &BackendKind::ALL)
            .map_err(|errors| format!("{errors}\n\n{uncommented}"))?;
        assert!(config.bindings.len() >= 2, "{uncommented}");
        // The documented defaults are the built-in ones.
        assert_eq!(config.daemon.log, log::LevelFilter::Info);
        assert_eq!(
            config.daemon.state,
            Some(PathBuf::from("/var/lib/tether/state.json"))
        );
        Ok(())
    }

    #[test]
    fn unreadable_file() {
        let path = Path::new("config/invalid/does-not-exist.toml");
        assert_eq!(
            load(path, Trust::Any).map_err(|errors| errors.to_string()),
            Err("config/invalid/does-not-exist.toml: cannot read: No such file or directory (os error 2)".to_string())
        );
    }

    #[test]
    fn not_utf8() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let path = dir.path().join("t.toml");
        fs::write(&path, b"# \xff\n").map_err(|err| err.to_string())?;
        assert_eq!(
            load(&path, Trust::Any).map_err(|errors| errors.to_string()),
            Err(format!(
                "{}: cannot read: not UTF-8 text (invalid byte at offset 2)",
                path.display()
            ))
        );
        Ok(())
    }

    #[test]
    fn owner_and_mode_checks() {
        let refused = |uid: u32, mode: u32| {
            Err(format!(
                "refusing a config file that other users can write (owner uid {uid}, mode {mode:04o}); \
                 make it root-owned and not group/world-writable"
            ))
        };
        assert_eq!(check_owner(0, 0, 0o100_644), Ok(()));
        assert_eq!(check_owner(0, 0, 0o100_600), Ok(()));
        assert_eq!(
            check_owner(0, 0, 0o100_664),
            Ok(()),
            "root's group may write"
        );
        assert_eq!(
            check_owner(0, 5, 0o100_640),
            Ok(()),
            "other groups may read"
        );
        assert_eq!(check_owner(1000, 0, 0o100_644), refused(1000, 0o644));
        assert_eq!(check_owner(0, 0, 0o100_646), refused(0, 0o646));
        assert_eq!(check_owner(0, 1000, 0o100_664), refused(0, 0o664));
        assert_eq!(check_owner(0, 0, 0o104_666), refused(0, 0o4666));
    }

    #[test]
    fn root_owned_trust_checks_the_file() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let path = dir.path().join("t.toml");
        fs::write(&path, "[[binding]]\nparent = 10\nchild = 11\n")
            .map_err(|err| err.to_string())?;
        let uid = fs::metadata(&path).map_err(|err| err.to_string())?.uid();

        fs::set_permissions(&path, fs::Permissions::from_mode(0o646))
            .map_err(|err| err.to_string())?;
        let expected = format!(
            "{}: refusing a config file that other users can write (owner uid {uid}, mode 0646); \
             make it root-owned and not group/world-writable",
            path.display()
        );
        assert_eq!(
            load(&path, Trust::RequireRootOwned).map_err(|errors| errors.to_string()),
            Err(expected)
        );
        assert!(load(&path, Trust::Any).is_ok());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(|err| err.to_string())?;
        let result = load(&path, Trust::RequireRootOwned).map_err(|errors| errors.to_string());
        if uid == 0 {
            assert_eq!(result.map(|config| config.bindings.len()), Ok(1));
        } else {
            assert!(result.is_err(), "owner uid {uid} accepted: {result:?}");
        }
        Ok(())
    }
}
