//! The Linux backend: one pidfd per process.
//!
//! A pidfd refers to one process for as long as it is open; it becomes
//! readable when the whole thread group has exited (not when one thread
//! does, the trap PR_SET_PDEATHSIG falls into), and `pidfd_send_signal`
//! through it can never reach a process that later got the same pid.
//!
//! The identity is read *after* `pidfd_open`: the start time from
//! `/proc/PID/stat`, then a check that the pidfd is still not readable. If
//! the process was still alive after the read, the pid cannot have been
//! reused in between, so the start time read is the pidfd's own. On pidfs
//! (Linux 6.9+) the pidfd's inode is a per-boot unique id and is added.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Backend, Delivery, Identity, OpenError, Owner, ProcEntry};
use crate::config::{Pid, Signal};
use crate::sys::linux as sys;

/// `PID_FS_MAGIC` from linux/magic.h: the file system of pidfds on 6.9+.
const PIDFS_MAGIC: i64 = 0x5049_4446;

/// Watches processes through pidfds registered directly in the mio loop.
#[derive(Debug)]
pub struct PidfdWatcher {
    pidfs: bool,
}

/// An open pidfd.
#[derive(Debug)]
pub struct PidfdHandle {
    fd: OwnedFd,
}

impl Backend for PidfdWatcher {
    type Handle = PidfdHandle;

    fn new() -> io::Result<Self> {
        // Probe with our own pid: this fails on kernels before 5.3 and
        // under seccomp profiles that forbid pidfd_open.
        let own = sys::pidfd_open(nix::unistd::getpid().as_raw())?;
        // `f_type` is i64 on 64-bit glibc and i32 elsewhere.
        #[allow(clippy::useless_conversion)]
        let pidfs = nix::sys::statfs::fstatfs(own.as_fd())
            .map(|st| i64::from(st.filesystem_type().0) == PIDFS_MAGIC)
            .unwrap_or(false);
        Ok(PidfdWatcher { pidfs })
    }

    fn name(&self) -> &'static str {
        "pidfd"
    }

    fn boot_id(&self) -> io::Result<String> {
        Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_owned())
    }

    fn has_inodes(&self) -> bool {
        self.pidfs
    }

    fn open(&mut self, pid: Pid) -> Result<(PidfdHandle, Identity), OpenError> {
        let fd = match sys::pidfd_open(pid.get()) {
            Ok(fd) => fd,
            // EINVAL is also what a process that is just exiting gives
            // (its struct pid has no tasks left); treat it as gone.
            Err(err) if matches!(err.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)) => {
                return Err(OpenError::Gone)
            }
            Err(err) => return Err(OpenError::Failed(err)),
        };
        self.identify(pid, PidfdHandle { fd })
    }

    fn adopt(&mut self, fd: OwnedFd, pid: Pid) -> Result<(PidfdHandle, Identity), OpenError> {
        // fdinfo of a pidfd names its process: "Pid:\t<pid>", or -1 once
        // it has been reaped. Anything without that line is not a pidfd.
        let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
            .map_err(OpenError::Failed)?;
        let named = fdinfo
            .lines()
            .find_map(|line| line.strip_prefix("Pid:"))
            .and_then(|v| v.trim().parse::<i32>().ok())
            .ok_or_else(|| {
                OpenError::Failed(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the descriptor passed is not a pidfd",
                ))
            })?;
        if named == -1 || named == 0 {
            return Err(OpenError::Gone);
        }
        if named != pid.get() {
            return Err(OpenError::Failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the pidfd passed refers to pid {named}, not {pid}"),
            )));
        }
        let handle = PidfdHandle { fd };
        self.identify(pid, handle)
    }

    fn owner(&self, pid: Pid, handle: &PidfdHandle) -> io::Result<Option<Owner>> {
        let status = match fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(status) => status,
            Err(_) if self.has_exited(handle) => return Ok(None),
            Err(err) => return Err(err),
        };
        // As for the start time: still alive after the read means the
        // /proc entry read was this process's own.
        if self.has_exited(handle) {
            return Ok(None);
        }
        let uids: Vec<u32> = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .map(|v| {
                v.split_ascii_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        match uids.as_slice() {
            [real, _effective, saved, ..] => Ok(Some(Owner {
                real: *real,
                saved: *saved,
            })),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status: cannot parse the Uid line"),
            )),
        }
    }

    fn process_table(&self) -> io::Result<Vec<ProcEntry>> {
        let mut table = Vec::new();
        for dirent in fs::read_dir("/proc")? {
            let Ok(dirent) = dirent else {
                continue;
            };
            let Some(pid) = dirent
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // A process may exit between readdir and the read: skip it.
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(entry) = parse_entry(pid, &stat) {
                    table.push(entry);
                }
            }
        }
        Ok(table)
    }

    fn init_group(&self) -> Option<i32> {
        // Pid 1 never exits, so its /proc entry cannot change owner.
        let stat = fs::read_to_string("/proc/1/stat").ok()?;
        parse_entry(1, &stat).map(|e| e.pgid)
    }

    fn entry(&self, pid: Pid, handle: &PidfdHandle) -> io::Result<Option<ProcEntry>> {
        let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat,
            Err(_) if self.has_exited(handle) => return Ok(None),
            Err(err) => return Err(err),
        };
        // Alive after the read: the /proc entry read was this process's.
        if self.has_exited(handle) {
            return Ok(None);
        }
        parse_entry(pid.get(), &stat).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat: cannot parse it"),
            )
        })
    }

    fn register(
        &mut self,
        registry: &Registry,
        handle: &PidfdHandle,
        token: Token,
    ) -> io::Result<()> {
        let raw = handle.fd.as_raw_fd();
        registry.register(&mut SourceFd(&raw), token, Interest::READABLE)
    }

    fn deregister(&mut self, registry: &Registry, handle: &PidfdHandle) -> io::Result<()> {
        let raw = handle.fd.as_raw_fd();
        registry.deregister(&mut SourceFd(&raw))
    }

    fn has_exited(&self, handle: &PidfdHandle) -> bool {
        let mut fds = [PollFd::new(handle.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) => n > 0,
            // poll on one valid descriptor with a zero timeout cannot block;
            // an error here (EINTR, ENOMEM) says nothing about the process.
            Err(_) => false,
        }
    }

    fn signal(&self, handle: &PidfdHandle, sig: Signal) -> io::Result<Delivery> {
        match sys::pidfd_send_signal(&handle.fd, sig.number()) {
            Ok(()) => Ok(Delivery::Sent),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(Delivery::Gone),
            Err(err) => Err(err),
        }
    }
}

impl PidfdWatcher {
    /// Reads the identity of the process `handle` refers to, which is `pid`.
    fn identify(
        &self,
        pid: Pid,
        handle: PidfdHandle,
    ) -> Result<(PidfdHandle, Identity), OpenError> {
        let start = match read_start_time(pid) {
            Ok(start) => start,
            // The /proc entry vanished: the process was reaped.
            Err(_) if self.has_exited(&handle) => return Err(OpenError::Gone),
            Err(err) => return Err(OpenError::Failed(err)),
        };
        // Race window: the process might have died and its pid been reused
        // between pidfd_open and the read above. If it is still alive now,
        // it was alive throughout, so the start time is its own.
        if self.has_exited(&handle) {
            return Err(OpenError::Gone);
        }
        let inode = if self.pidfs {
            nix::sys::stat::fstat(handle.fd.as_fd())
                .ok()
                .map(|st| st.st_ino)
        } else {
            None
        };
        Ok((handle, Identity { start, inode }))
    }
}

/// Reads field 22 (starttime) of `/proc/PID/stat`.
fn read_start_time(pid: Pid) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: cannot parse the start time"),
        )
    })
}

/// Fields 4 (ppid), 5 (pgrp) and 22 (starttime) of a `/proc/PID/stat`
/// line, counted from the last `)` as for [`parse_start_time`].
fn parse_entry(pid: i32, stat: &str) -> Option<ProcEntry> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    Some(ProcEntry {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // After the `)`, the first field is field 3 (state); field 22 is the
    // 20th of them.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_after_odd_comm() {
        let line =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(
            parse_entry(1234, line),
            Some(ProcEntry {
                pid: 1234,
                ppid: 1,
                pgid: 1234,
                start: 987654
            })
        );
        assert_eq!(parse_start_time("1 (init) S 0"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_identity_is_stable_and_signal_zero_works() {
        let mut watcher = PidfdWatcher::new().expect("pidfd_open needs Linux 5.3 or later");
        let pid = Pid::try_from(i64::from(std::process::id())).expect("own pid is > 1");
        let (handle, id) = watcher.open(pid).expect("own process is alive");
        let (_, again) = watcher.open(pid).expect("own process is alive");
        assert_eq!(id.start, again.start);
        assert_eq!(id.inode, again.inode);
        assert!(!watcher.has_exited(&handle));
    }
}
