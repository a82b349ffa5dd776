//! Pidfiles: the pid a service wrote, read without ever blocking and, as
//! root, without trusting anything another user could have changed.
//!
//! As root every directory on the path, from `/`, is opened one at a time
//! relative to the one before and never through a symlink (`openat` with
//! `O_NOFOLLOW`), and each must be root's and writable by nobody else: a
//! user who can rename anything on the way could point the daemon at any
//! process. A symlink on the way (`/var/run`) is followed only when it is
//! root's and sits in such a directory; the pidfile itself is never a
//! symlink.

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
        let stat = fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(
            |errno| match errno {
                Errno::ENOENT if last => format!("{shown}: pidfile missing"),
                Errno::ENOENT => format!("{shown}: directory {} missing", here.display()),
                _ => format!("{shown}: cannot look at {}: {errno}", here.display()),
            },
        )?;
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
            let flags = OFlag::O_RDONLY
                | OFlag::O_NONBLOCK
                | OFlag::O_NOFOLLOW
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC;
            let fd =
                openat(dir.as_fd(), name.as_os_str(), flags, Mode::empty()).map_err(|errno| {
                    match errno {
                        Errno::ENOENT => format!("{shown}: pidfile missing"),
                        Errno::ELOOP => format!("{shown}: pidfile is a symlink; refusing it"),
                        _ => format!("{shown}: cannot open the pidfile: {errno}"),
                    }
                })?;
            return Ok(File::from(fd));
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
/// could change: not root's, world-writable, or writable by a group other
/// than root's.
fn check_dir(dir: &File, at: &Path, path: &Path) -> Result<(), String> {
    let meta = dir
        .metadata()
        .map_err(|err| format!("{}: cannot stat {}: {err}", path.display(), at.display()))?;
    let (uid, gid, mode) = (meta.uid(), meta.gid(), meta.mode());
    if uid != 0 || mode & 0o002 != 0 || (mode & 0o020 != 0 && gid != 0) {
        return Err(format!(
            "{}: directory {} can be changed by a user other than root (owner uid {uid}, gid {gid}, mode {:04o}); refusing the pidfile",
            path.display(),
            at.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}
