//! Pidfiles: where a root daemon accepts one, how one is read without ever
//! blocking, and which locations the shipped systemd unit hides.
//!
//! A pidfile tells root's daemon which process to signal, so whoever can
//! change it chooses the victim. As root, tetherd therefore reads a pidfile
//! only if root owns it and alone can write it, and only if the same holds
//! for every directory on the way to it (`/`, `/run`, `/run/foo`...):
//! whoever can write a directory can replace the file in it. That rules out
//! `/tmp`, `/var/tmp` and `/dev/shm` (world-writable, sticky or not), home
//! directories and `/run/user/UID`; `/run` and `/var/run` (a symlink to it)
//! are where services write their pidfiles anyway.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Pid;

/// Locations the shipped `tetherd.service` cannot see, and the setting
/// that hides them. Keep in step with packaging/systemd/tetherd.service.
const HIDDEN_BY_UNIT: [(&str, &str); 6] = [
    ("/tmp", "PrivateTmp=yes"),
    ("/var/tmp", "PrivateTmp=yes"),
    ("/home", "ProtectHome=yes"),
    ("/root", "ProtectHome=yes"),
    ("/run/user", "ProtectHome=yes"),
    ("/var/run/user", "ProtectHome=yes"),
];

/// The unit setting that hides `path` from the shipped service, if one
/// does (a lexical check: the path need not exist).
pub fn hidden_by_unit(path: &Path) -> Option<&'static str> {
    HIDDEN_BY_UNIT
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map(|(_, setting)| *setting)
}

/// Where a root daemon may read the pidfile `path`: its directory resolved
/// (symlinks followed), every directory from there up to `/` checked to be
/// root's and writable by no one else. Returns the path to open, under the
/// resolved directory, so no symlink an unprivileged user controls sits
/// between the check and the open.
pub fn trusted_location(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{shown}: not a path to a file"));
    };
    let dir = std::fs::canonicalize(dir).map_err(|err| match err.raw_os_error() {
        Some(libc::ENOENT) => format!("{shown}: pidfile missing (no directory {})", dir.display()),
        _ => format!("{shown}: cannot resolve the pidfile's directory: {err}"),
    })?;
    for ancestor in dir.ancestors() {
        let meta = std::fs::metadata(ancestor).map_err(|err| {
            format!(
                "{shown}: cannot stat the pidfile's directory {}: {err}",
                ancestor.display()
            )
        })?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{shown}: directory {} is writable by a user other than root (owner uid {}, mode {:04o}); a pidfile must be where only root can write, such as /run; refusing it",
                ancestor.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(dir.join(name))
}

/// Reads a pidfile without ever blocking: opened non-blocking and without
/// following a symlink, and only a small regular file is read. As root
/// (`root_only`), the file and every directory above it must be root's and
/// writable by no one else (see the module's documentation).
pub fn read(path: &Path, root_only: bool) -> Result<Pid, String> {
    let shown = path.display();
    let open_path = if root_only {
        trusted_location(path)?
    } else {
        path.to_path_buf()
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&open_path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ENOENT) => format!("{shown}: pidfile missing"),
            Some(libc::ELOOP) => format!("{shown}: pidfile is a symlink; refusing it"),
            _ => format!("{shown}: cannot open the pidfile: {err}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|err| format!("{shown}: cannot stat the pidfile: {err}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: the pidfile is not a regular file"));
    }
    if root_only && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
        return Err(format!(
            "{shown}: the pidfile is writable by a user other than root (owner uid {}, mode {:04o}); refusing it",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    file.by_ref()
        .take(64)
        .read_to_string(&mut text)
        .map_err(|err| format!("{shown}: cannot read the pidfile: {err}"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{shown}: the pidfile is empty"));
    }
    let number: i64 = text
        .parse()
        .map_err(|_| format!("{shown}: the pidfile does not hold a pid ({text:?})"))?;
    Pid::try_from(number).map_err(|why| format!("{shown}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_hides_tmp_and_homes_but_not_run() {
        assert_eq!(
            hidden_by_unit(Path::new("/tmp/x.pid")),
            Some("PrivateTmp=yes")
        );
        assert_eq!(
            hidden_by_unit(Path::new("/var/tmp/a/x.pid")),
            Some("PrivateTmp=yes")
        );
        assert_eq!(
            hidden_by_unit(Path::new("/home/ann/x.pid")),
            Some("ProtectHome=yes")
        );
        assert_eq!(
            hidden_by_unit(Path::new("/run/user/1000/x.pid")),
            Some("ProtectHome=yes")
        );
        assert_eq!(hidden_by_unit(Path::new("/run/x.pid")), None);
        assert_eq!(hidden_by_unit(Path::new("/tmpfoo/x.pid")), None);
    }

    #[test]
    fn the_hidden_list_follows_the_shipped_unit() {
        let unit = include_str!("../../packaging/systemd/tetherd.service");
        for (_, setting) in HIDDEN_BY_UNIT {
            assert!(unit.lines().any(|line| line == setting), "{setting}");
        }
    }
}
