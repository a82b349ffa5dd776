//! Pidfiles: where a root daemon accepts one, how one is read without ever
//! blocking, and which locations the shipped systemd unit hides.
//!
//! A pidfile tells root's daemon which process to signal, so whoever can
//! change it chooses the victim. As root, tetherd therefore reads a pidfile
//! only if root owns it and alone can write it, and only if the same holds
//! for every directory on the way to it (`/`, `/run`, `/run/foo`...):
//! whoever can write a directory can replace the file in it, or a directory
//! on the way with a symlink. That rules out `/tmp`, `/var/tmp` and
//! `/dev/shm` (world-writable, sticky or not), home directories and
//! `/run/user/UID`; `/run` and `/var/run` are where services write their
//! pidfiles anyway.
//!
//! The path is walked from `/` one directory at a time, each opened
//! relative to the one before and never through a symlink (`openat` with
//! `O_NOFOLLOW`), and checked once open. A symlink on the way (`/var/run`)
//! is followed only when root owns it and it sits in a directory that
//! passed, and its target is walked the same way; the pidfile itself is
//! never a symlink.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

use crate::config::Pid;

/// The most symlinks followed on one pidfile's path.
const MAX_LINKS: usize = 16;

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

/// Whether a root daemon may read the pidfile `path` for where it is: every
/// directory on the way to it checked as [`read`] does (the file itself
/// need not exist).
pub fn trusted_location(path: &Path) -> Result<(), String> {
    walk(path).map(|_| ())
}

/// Reads a pidfile: opened non-blocking and without following a symlink,
/// and only a small regular file is read. With `root_only` (the daemon is
/// root), the file and every directory on its path must be root's and
/// writable by no other user (see the module's documentation).
pub fn read(path: &Path, root_only: bool) -> Result<Pid, String> {
    let shown = path.display();
    let mut file = if root_only {
        open_trusted(path)?
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::ENOENT) => format!("{shown}: pidfile missing"),
                Some(libc::ELOOP) => format!("{shown}: pidfile is a symlink; refusing it"),
                _ => format!("{shown}: cannot open the pidfile: {err}"),
            })?
    };
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

/// Opens `path` walking from `/`, each directory checked (see the module's
/// documentation).
fn open_trusted(path: &Path) -> Result<File, String> {
    let shown = path.display();
    let (dir, name) = walk(path)?;
    let flags = OFlag::O_RDONLY
        | OFlag::O_NONBLOCK
        | OFlag::O_NOFOLLOW
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd =
        openat(dir.as_fd(), name.as_os_str(), flags, Mode::empty()).map_err(
            |errno| match errno {
                Errno::ENOENT => format!("{shown}: pidfile missing"),
                Errno::ELOOP => format!("{shown}: pidfile is a symlink; refusing it"),
                _ => format!("{shown}: cannot open the pidfile: {errno}"),
            },
        )?;
    Ok(File::from(fd))
}

/// Walks `path` from `/` to the directory holding its last component, each
/// directory checked; returns that directory, open, and the file's name.
fn walk(path: &Path) -> Result<(File, OsString), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown}: a pidfile's path must be absolute"));
    }
    let root = |at: &mut PathBuf| -> Result<File, String> {
        *at = PathBuf::from("/");
        let dir = crate::sys::open_dir_nofollow(None, Path::new("/"))
            .map_err(|err| format!("{shown}: cannot open /: {err}"))?;
        let dir = File::from(dir);
        check_dir(&dir, at, path)?;
        Ok(dir)
    };
    let mut at = PathBuf::new();
    let mut dir = root(&mut at)?;
    // The components still to walk, the next one last.
    let mut todo: Vec<OsString> = names(path);
    todo.reverse();
    let mut n_links = 0;
    while let Some(name) = todo.pop() {
        let here = at.join(&name);
        let last = todo.is_empty();
        let stat = match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // A missing file is for the caller to report.
            Err(Errno::ENOENT) if last => return Ok((dir, name)),
            Err(Errno::ENOENT) => {
                return Err(format!(
                    "{shown}: pidfile missing (no directory {})",
                    here.display()
                ))
            }
            Err(errno) => {
                return Err(format!(
                    "{shown}: cannot look at {}: {errno}",
                    here.display()
                ))
            }
        };
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            if last {
                return Err(format!("{shown}: pidfile is a symlink; refusing it"));
            }
            if stat.st_uid != 0 {
                return Err(format!(
                    "{shown}: {} is a symlink owned by uid {}, not root; refusing the pidfile",
                    here.display(),
                    stat.st_uid
                ));
            }
            n_links += 1;
            if n_links > MAX_LINKS {
                return Err(format!(
                    "{shown}: more than {MAX_LINKS} symlinks on the path; refusing the pidfile"
                ));
            }
            let target =
                PathBuf::from(readlinkat(dir.as_fd(), name.as_os_str()).map_err(|errno| {
                    format!("{shown}: cannot read {}: {errno}", here.display())
                })?);
            if target.is_absolute() {
                dir = root(&mut at)?;
            }
            let mut more = names(&target);
            more.reverse();
            todo.extend(more);
            continue;
        }
        if last {
            return Ok((dir, name));
        }
        let next = crate::sys::open_dir_nofollow(Some(dir.as_fd()), Path::new(&name))
            .map_err(|err| format!("{shown}: cannot open directory {}: {err}", here.display()))?;
        if name == ".." {
            at.pop();
        } else {
            at = here;
        }
        dir = File::from(next);
        check_dir(&dir, &at, path)?;
    }
    Err(format!("{shown}: the path names no file"))
}

/// The names to walk in `path`: `..` kept, `/` and `.` dropped.
fn names(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Refuses a directory on a pidfile's path that a user other than root
/// could change: not root's, or writable by its group or by anyone.
fn check_dir(dir: &File, at: &Path, path: &Path) -> Result<(), String> {
    let meta = dir
        .metadata()
        .map_err(|err| format!("{}: cannot stat {}: {err}", path.display(), at.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: directory {} is writable by a user other than root (owner uid {}, mode {:04o}); a pidfile must be where only root can write, such as /run; refusing it",
            path.display(),
            at.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
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
