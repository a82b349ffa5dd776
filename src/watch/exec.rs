//! Where `[[rule]]`s hear of execs: fanotify permission events (before
//! the new program runs), else the process connector's exec events (after
//! it started). Linux only; elsewhere [`ExecWatch::open`] fails and says
//! why (validation refuses rules there already).
//!
//! fanotify: one group, `FAN_OPEN_EXEC_PERM` marked on the inode of each
//! executable a rule names, so execs of anything else never reach tetherd
//! and cost nothing. The exec waits in the kernel until the group answers:
//! [`ExecWatch::read`] keeps every event's answer, and
//! [`ExecWatch::allow_pending`] (called by the daemon in the same loop
//! iteration, whatever happened) allows them all. Nothing between the two
//! blocks, so an exec waits one iteration of the loop at most.
//!
//! Connector: `PROC_EVENT_EXEC` for every exec on the host (a BPF filter
//! drops every other event), the executable identified afterwards by a
//! `stat` of `/proc/PID/exe`. The process runs its new program from the
//! exec on, before tetherd reads the event: it may fork or its launcher
//! may die in that window (typically well under a millisecond, longer on a
//! loaded host or when the event queue overflows).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use mio::{Registry, Token};

use crate::vocab::RuleSource;

/// An executable as the kernel knows it: device and inode.
pub type FileKey = (u64, u64);

/// What marking files gave: each file's key, and the files that could not
/// be marked with why.
pub type Marked = (Vec<(PathBuf, FileKey)>, Vec<(PathBuf, io::Error)>);

/// One exec a rule may want.
#[derive(Debug)]
pub struct Exec {
    /// The exec'ing process.
    pub pid: i32,
    /// The executable it runs (or, with fanotify, is about to run).
    pub key: FileKey,
    /// A pidfd on the process, from the kernel with the event (fanotify's
    /// `FAN_REPORT_PIDFD`), when there is one.
    pub pidfd: Option<OwnedFd>,
}

/// The source of exec events.
#[derive(Debug)]
pub struct ExecWatch {
    inner: imp::Inner,
}

impl ExecWatch {
    /// Opens the source `wanted` asks for; `Auto` tries fanotify, then the
    /// connector. The error says why neither (or the one forced) works.
    pub fn open(wanted: RuleSource) -> io::Result<ExecWatch> {
        imp::Inner::open(wanted).map(|inner| ExecWatch { inner })
    }

    /// `fanotify` or `connector`.
    pub fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// Makes `files` the marked executables (fanotify marks their inodes;
    /// the connector only needs their keys). Returns each file's key, and
    /// the files that could not be marked with why.
    pub fn set_files(&mut self, files: &[PathBuf]) -> Marked {
        self.inner.set_files(files)
    }

    /// Registers the source with the loop.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.inner.register(registry, token)
    }

    /// The execs queued, up to one read's worth (a few hundred), and
    /// whether more may be queued: the loop then comes back at once, after
    /// its other work, so a flood of execs does not hold it. Answers owed
    /// stay here until [`ExecWatch::allow_pending`].
    pub fn read(&mut self) -> (Vec<Exec>, bool) {
        self.inner.read()
    }

    /// Allows every exec read and not yet answered.
    pub fn allow_pending(&mut self) {
        self.inner.allow_pending();
    }
}

/// The parent of `pid` as `/proc` says now (`None`: no such process).
pub fn parent_of(pid: i32) -> io::Result<Option<i32>> {
    imp::parent_of(pid)
}

/// The executable `pid` runs now (`/proc/PID/exe`).
pub fn exe_of(pid: i32) -> io::Result<PathBuf> {
    imp::exe_of(pid)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::path::PathBuf;

    use log::warn;
    use mio::unix::SourceFd;
    use mio::{Interest, Registry, Token};
    use nix::fcntl::{open, OFlag};
    use nix::sys::socket::{self, MsgFlags, NetlinkAddr};
    use nix::sys::stat::{fstat, Mode};

    use super::{Exec, FileKey, Marked};
    use crate::sys::fanotify;
    use crate::sys::linux as sys;
    use crate::vocab::RuleSource;
    use crate::watch::procfs;
    use crate::watch::procwatch as connector;

    #[derive(Debug)]
    pub(super) enum Inner {
        Fanotify {
            group: OwnedFd,
            buf: Vec<u8>,
            /// A read-only descriptor per marked inode: the mark is added
            /// and removed through it, whatever the path names now
            /// (fanotify_mark refuses `O_PATH` descriptors).
            marks: HashMap<FileKey, OwnedFd>,
            /// Events read and not yet answered (their files).
            pending: Vec<OwnedFd>,
        },
        Connector {
            socket: OwnedFd,
            buf: Vec<u8>,
        },
    }

    impl Inner {
        pub(super) fn open(wanted: RuleSource) -> io::Result<Inner> {
            let fanotify_error = match wanted {
                RuleSource::Connector => None,
                _ => match Inner::fanotify() {
                    Ok(inner) => return Ok(inner),
                    Err(err) if wanted == RuleSource::Fanotify => {
                        return Err(io::Error::new(err.kind(), format!("fanotify: {err}")))
                    }
                    Err(err) => Some(err),
                },
            };
            match Inner::connector() {
                Ok(inner) => {
                    if let Some(err) = fanotify_error {
                        warn!("rules: fanotify permission events are unavailable ({err}); using the process connector, which learns of an exec only after it (see tetherd(8))");
                    }
                    Ok(inner)
                }
                Err(err) => Err(io::Error::new(
                    err.kind(),
                    match fanotify_error {
                        Some(fan) => format!("fanotify: {fan}; process connector: {err}"),
                        None => format!("process connector: {err}"),
                    },
                )),
            }
        }

        fn fanotify() -> io::Result<Inner> {
            let group = fanotify::init(true).or_else(|err| {
                // Before 5.15: no pidfds in events; the pid is opened.
                if err.raw_os_error() == Some(libc::EINVAL) {
                    fanotify::init(false)
                } else {
                    Err(err)
                }
            })?;
            Ok(Inner::Fanotify {
                group,
                buf: vec![0; 16 * 1024],
                marks: HashMap::new(),
                pending: Vec::new(),
            })
        }

        fn connector() -> io::Result<Inner> {
            let socket = sys::netlink_connector_socket()?;
            socket::bind(socket.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            sys::attach_socket_filter(
                &socket,
                &connector::event_filter(connector::PROC_EVENT_EXEC),
            )?;
            sys::netlink_membership(&socket, connector::CN_IDX_PROC, true)?;
            let seq = std::process::id().wrapping_add(1);
            socket::send(
                socket.as_raw_fd(),
                &connector::listen_message(seq),
                MsgFlags::empty(),
            )?;
            connector::wait_for_ack(&socket, seq)?;
            Ok(Inner::Connector {
                socket,
                buf: vec![0; 64 * 1024],
            })
        }

        pub(super) fn name(&self) -> &'static str {
            match self {
                Inner::Fanotify { .. } => "fanotify",
                Inner::Connector { .. } => "connector",
            }
        }

        pub(super) fn set_files(&mut self, files: &[PathBuf]) -> Marked {
            let mut keys = Vec::new();
            let mut failed = Vec::new();
            match self {
                Inner::Connector { .. } => {
                    for file in files {
                        match file_key(file) {
                            Ok(key) => keys.push((file.clone(), key)),
                            Err(err) => failed.push((file.clone(), err)),
                        }
                    }
                }
                Inner::Fanotify { group, marks, .. } => {
                    let mut wanted: HashMap<FileKey, OwnedFd> = HashMap::new();
                    for file in files {
                        let opened = open(
                            file.as_path(),
                            OFlag::O_RDONLY
                                | OFlag::O_NONBLOCK
                                | OFlag::O_NOCTTY
                                | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(io::Error::from)
                        .and_then(|fd| {
                            let st = fstat(&fd)?;
                            let key = (st.st_dev, st.st_ino);
                            Ok((fd, key))
                        });
                        match opened {
                            Ok((fd, key)) => {
                                keys.push((file.clone(), key));
                                if marks.contains_key(&key) || wanted.contains_key(&key) {
                                    continue;
                                }
                                match fanotify::mark_exec(group, &fd, true) {
                                    Ok(()) => {
                                        wanted.insert(key, fd);
                                    }
                                    Err(err) => {
                                        keys.pop();
                                        failed.push((file.clone(), err));
                                    }
                                }
                            }
                            Err(err) => failed.push((file.clone(), err)),
                        }
                    }
                    // Keep the marks still wanted, drop the others.
                    let still: Vec<FileKey> = keys.iter().map(|(_, key)| *key).collect();
                    let old: Vec<FileKey> = marks.keys().copied().collect();
                    for key in old {
                        if still.contains(&key) {
                            continue;
                        }
                        if let Some(fd) = marks.remove(&key) {
                            if let Err(err) = fanotify::mark_exec(group, &fd, false) {
                                warn!("rules: cannot remove the mark on inode {}:{}: {err}; execs of it are allowed at once", key.0, key.1);
                            }
                        }
                    }
                    marks.extend(wanted);
                }
            }
            (keys, failed)
        }

        pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
            let fd = match self {
                Inner::Fanotify { group, .. } => group.as_raw_fd(),
                Inner::Connector { socket, .. } => socket.as_raw_fd(),
            };
            registry.register(&mut SourceFd(&fd), token, Interest::READABLE)
        }

        pub(super) fn read(&mut self) -> (Vec<Exec>, bool) {
            // Answers owed from before (none, if the daemon answered).
            self.allow_pending();
            let mut execs = Vec::new();
            let more = match self {
                Inner::Fanotify {
                    group,
                    buf,
                    pending,
                    ..
                } => {
                    let events = match fanotify::read_events(group, buf) {
                        Ok(events) => events,
                        Err(err) => {
                            warn!("rules: reading fanotify events failed: {err}");
                            Vec::new()
                        }
                    };
                    let more = !events.is_empty();
                    for event in events {
                        if event.overflow {
                            warn!(
                                "rules: the fanotify queue overflowed; execs meanwhile ran unbound"
                            );
                        }
                        let Some(file) = event.file else { continue };
                        let key = fstat(&file).map(|st| (st.st_dev, st.st_ino));
                        if let Ok(key) = key {
                            execs.push(Exec {
                                pid: event.pid,
                                key,
                                pidfd: event.pidfd,
                            });
                        }
                        if event.needs_answer {
                            pending.push(file);
                        }
                    }
                    more
                }
                Inner::Connector { socket, buf } => loop {
                    match socket::recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(0) => break false,
                        Ok(n) => {
                            for pid in connector::parse_execs(buf.get(..n).unwrap_or_default()) {
                                let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                                if let Ok(key) = file_key(&exe) {
                                    execs.push(Exec {
                                        pid,
                                        key,
                                        pidfd: None,
                                    });
                                }
                            }
                        }
                        Err(nix::errno::Errno::ENOBUFS) => {
                            warn!("rules: exec events were lost (receive buffer overflow); processes started meanwhile are not bound");
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(nix::errno::Errno::EAGAIN) => break false,
                        Err(err) => {
                            warn!("rules: reading exec events failed: {err}");
                            break false;
                        }
                    }
                    if execs.len() >= 512 {
                        break true;
                    }
                },
            };
            (execs, more)
        }

        pub(super) fn allow_pending(&mut self) {
            if let Inner::Fanotify { group, pending, .. } = self {
                for file in pending.drain(..) {
                    if let Err(err) = fanotify::respond(group, &file, true) {
                        warn!(
                            "rules: cannot answer an exec (descriptor {}): {err}",
                            file.as_fd().as_raw_fd()
                        );
                    }
                }
            }
        }
    }

    /// The device and inode of the file at `path` (links followed).
    fn file_key(path: &std::path::Path) -> io::Result<FileKey> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }

    pub(super) fn parent_of(pid: i32) -> io::Result<Option<i32>> {
        Ok(procfs::stat(pid)?.map(|stat| stat.ppid))
    }

    pub(super) fn exe_of(pid: i32) -> io::Result<PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/exe"))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::path::PathBuf;

    use mio::{Registry, Token};

    use super::{Exec, Marked};
    use crate::vocab::RuleSource;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "rules need Linux (fanotify or the process connector)",
        )
    }

    #[derive(Debug)]
    pub(super) enum Inner {}

    impl Inner {
        pub(super) fn open(_: RuleSource) -> io::Result<Inner> {
            Err(unsupported())
        }
        pub(super) fn name(&self) -> &'static str {
            match *self {}
        }
        pub(super) fn set_files(&mut self, _: &[PathBuf]) -> Marked {
            match *self {}
        }
        pub(super) fn register(&mut self, _: &Registry, _: Token) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn read(&mut self) -> (Vec<Exec>, bool) {
            match *self {}
        }
        pub(super) fn allow_pending(&mut self) {
            match *self {}
        }
    }

    pub(super) fn parent_of(_: i32) -> io::Result<Option<i32>> {
        Err(unsupported())
    }

    pub(super) fn exe_of(_: i32) -> io::Result<PathBuf> {
        Err(unsupported())
    }
}
