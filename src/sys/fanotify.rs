//! fanotify, for `[[rule]]`s: a group that hears `FAN_OPEN_EXEC_PERM` on
//! the executables rules name, and holds each such exec until it answers.
//!
//! The kernel keeps the exec'ing process waiting (killably) until the
//! group writes a response for the event. When the group's descriptor is
//! closed (tetherd exits, crashes or is killed), the kernel removes the
//! group's marks and allows every event still pending, so a dead tetherd
//! never blocks an exec. A *stopped* tetherd (SIGSTOP, a debugger) does:
//! until it continues or dies.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// One exec the group heard: the executable opened (the descriptor the
/// answer names), the exec'ing process's pid, and its pidfd when the group
/// reports pidfds.
#[derive(Debug)]
pub struct ExecEvent {
    /// The executable, opened read-only by the kernel for us; `None` if
    /// the kernel could not open it (the event then needs no answer).
    pub file: Option<OwnedFd>,
    /// The exec'ing process (thread-group id).
    pub pid: i32,
    /// A pidfd on that process (`FAN_REPORT_PIDFD`).
    pub pidfd: Option<OwnedFd>,
    /// Whether the event is a permission event that needs an answer.
    pub needs_answer: bool,
    /// Whether the kernel's queue overflowed (events were dropped; a
    /// dropped permission event lets its exec go at once).
    pub overflow: bool,
}

/// `fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK
/// [| FAN_REPORT_PIDFD], O_RDONLY | O_LARGEFILE | O_CLOEXEC)`: a group for
/// permission events. Needs CAP_SYS_ADMIN. `FAN_REPORT_PIDFD` needs Linux
/// 5.15 (`EINVAL` before).
pub fn init(report_pidfd: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
    if report_pidfd {
        flags |= libc::FAN_REPORT_PIDFD;
    }
    let event_flags = libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC;
    let event_flags = libc::c_uint::try_from(event_flags).unwrap_or(0);
    // SAFETY: fanotify_init takes two integers and returns a new
    // descriptor or -1; it reads no memory of ours.
    let fd = cvt(unsafe { libc::fanotify_init(flags, event_flags) })?;
    // SAFETY: the kernel just created `fd` for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds (or removes) `FAN_OPEN_EXEC_PERM` on the inode `file` refers to
/// (an open file; not `O_PATH`, which the kernel refuses here): `fanotify_mark(group, FAN_MARK_ADD, mask,
/// file, NULL)`.
pub fn mark_exec(group: &OwnedFd, file: &impl AsFd, add: bool) -> io::Result<()> {
    let how = if add {
        libc::FAN_MARK_ADD
    } else {
        libc::FAN_MARK_REMOVE
    };
    // SAFETY: both descriptors are valid for the borrows; a null pathname
    // means "the object `dirfd` refers to" and no memory is read.
    cvt(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            how,
            libc::FAN_OPEN_EXEC_PERM,
            file.as_fd().as_raw_fd(),
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Writes the answer to an event: allow (or deny) the exec.
pub fn respond(group: &OwnedFd, file: &OwnedFd, allow: bool) -> io::Result<()> {
    let response = if allow {
        libc::FAN_ALLOW
    } else {
        libc::FAN_DENY
    };
    // struct fanotify_response { __s32 fd; __u32 response; }
    let mut bytes = [0u8; 8];
    let (fd, answer) = bytes.split_at_mut(4);
    fd.copy_from_slice(&file.as_raw_fd().to_ne_bytes());
    answer.copy_from_slice(&response.to_ne_bytes());
    let written = nix::unistd::write(group, &bytes)?;
    if written != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of a fanotify response",
        ));
    }
    Ok(())
}

/// Size of `struct fanotify_event_metadata`.
const METADATA_LEN: usize = 24;

/// Reads the events queued on `group` (at most what `buf` holds; call
/// again until it returns none). Every descriptor in them is owned by
/// exactly one returned value.
pub fn read_events(group: &OwnedFd, buf: &mut [u8]) -> io::Result<Vec<ExecEvent>> {
    let n = match nix::unistd::read(group, buf) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut events = Vec::new();
    let mut at = 0usize;
    let data = buf.get(..n).unwrap_or_default();
    while let Some(header) = data.get(at..at.saturating_add(METADATA_LEN)) {
        let u32_at = |b: &[u8], i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_ne_bytes)
        };
        let Some(event_len) = u32_at(header, 0).and_then(|l| usize::try_from(l).ok()) else {
            break;
        };
        let metadata_len = header
            .get(6..8)
            .and_then(|s| s.try_into().ok())
            .map_or(METADATA_LEN, |b| usize::from(u16::from_ne_bytes(b)));
        let mask = header
            .get(8..16)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_ne_bytes);
        let fd = u32_at(header, 16).map_or(-1, |v| i32::from_ne_bytes(v.to_ne_bytes()));
        let pid = u32_at(header, 20).map_or(0, |v| i32::from_ne_bytes(v.to_ne_bytes()));
        if event_len < METADATA_LEN || at.saturating_add(event_len) > data.len() {
            break;
        }
        let record = data.get(at..at + event_len).unwrap_or_default();
        // Info records after the metadata: {type u8, pad u8, len u16, ...}.
        let mut pidfd = None;
        let mut info = metadata_len;
        while let (Some(&kind), Some(len)) = (
            record.get(info),
            record
                .get(info + 2..info + 4)
                .and_then(|s| s.try_into().ok())
                .map(|b| usize::from(u16::from_ne_bytes(b))),
        ) {
            if len < 4 {
                break;
            }
            if kind == libc::FAN_EVENT_INFO_TYPE_PIDFD {
                let raw = u32_at(record, info + 4).map(|v| i32::from_ne_bytes(v.to_ne_bytes()));
                if let Some(raw) = raw.filter(|&raw| raw >= 0) {
                    pidfd = Some(own(raw));
                }
            }
            info = info.saturating_add(len);
        }
        events.push(ExecEvent {
            file: (fd >= 0).then(|| own(fd)),
            pid,
            pidfd,
            needs_answer: mask & libc::FAN_OPEN_EXEC_PERM != 0,
            overflow: mask & libc::FAN_Q_OVERFLOW != 0,
        });
        at += event_len;
    }
    Ok(events)
}

/// Takes ownership of a descriptor the kernel installed in our table for
/// the event just read.
fn own(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was installed for us by the read of this event (the
    // event's file or its pidfd); each is read from the buffer once, so
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
