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

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::procfs;
use super::{Backend, Delivery, Identity, OpenError, Owner, ProcEntry};
use crate::sys::linux as sys;
use crate::vocab::{BackendKind, Pid, Signal};

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

impl PidfdWatcher {
    /// Probes `pidfd_open` on the daemon's own pid: this fails on kernels
    /// before 5.3 (ENOSYS) and under seccomp profiles that forbid it
    /// (EPERM, or whatever errno the profile chose).
    pub fn new() -> io::Result<Self> {
        let own = sys::pidfd_open(nix::unistd::getpid().as_raw())?;
        let pidfs = nix::sys::statfs::fstatfs(own.as_fd())
            .map(|st| is_magic(st.filesystem_type().0, PIDFS_MAGIC))
            .unwrap_or(false);
        Ok(PidfdWatcher { pidfs })
    }
}

/// Compares a file system type with a magic number: `f_type` is i64 on
/// 64-bit glibc, u64 on musl and i32 elsewhere.
fn is_magic<T: TryInto<i64>>(f_type: T, magic: i64) -> bool {
    f_type.try_into().ok() == Some(magic)
}

impl Backend for PidfdWatcher {
    type Handle = PidfdHandle;

    fn kind(&self) -> BackendKind {
        BackendKind::Pidfd
    }

    fn boot_id(&self) -> io::Result<String> {
        procfs::boot_id()
    }

    fn has_inodes(&self) -> bool {
        self.pidfs
    }

    fn holds_descriptors(&self) -> bool {
        true
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
        match procfs::pidfd_pid(&fd).map_err(OpenError::Failed)? {
            None => Err(OpenError::Gone),
            Some(named) if named != pid.get() => Err(OpenError::Failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the pidfd passed refers to pid {named}, not {pid}"),
            ))),
            Some(_) => self.identify(pid, PidfdHandle { fd }),
        }
    }

    fn owner(&self, pid: Pid, handle: &PidfdHandle) -> io::Result<Option<Owner>> {
        // Still alive after the read: the /proc entry read was this
        // process's own, not a successor's.
        procfs::owner_while_alive(pid, || Ok(self.has_exited(handle)))
    }

    fn process_table(&self) -> io::Result<Vec<ProcEntry>> {
        procfs::process_table()
    }

    fn init_group(&self) -> Option<i32> {
        procfs::init_group()
    }

    fn entry(&self, pid: Pid, handle: &PidfdHandle) -> io::Result<Option<ProcEntry>> {
        procfs::entry_while_alive(pid, |_| Ok(self.has_exited(handle)))
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
        procfs::pidfd_exited(&handle.fd)
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
        let stat = procfs::stat(pid.get());
        // Race window: the process might have died and its pid been reused
        // between pidfd_open and the read above. If it is still alive now,
        // it was alive throughout, so the start time is its own.
        if self.has_exited(&handle) {
            return Err(OpenError::Gone);
        }
        let start = match stat {
            Ok(Some(stat)) => stat.start,
            Ok(None) => return Err(OpenError::Gone),
            Err(err) => return Err(OpenError::Failed(err)),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
