//! The backend of macOS and the BSDs: EVFILT_PROC / NOTE_EXIT.
//!
//! Every watched pid is an `EVFILT_PROC` filter with `NOTE_EXIT` in one
//! inner kqueue, and that kqueue's descriptor is the one source this
//! backend registers in the mio loop, so the daemon is the same as on
//! Linux. The kernel attaches the filter to the process itself, not to
//! its pid number, so an exit reported is that process's exit.
//!
//! There are no process descriptors, so a process is known by pid and
//! start time ([`PidHandle`]), read from sysctl `kern.proc.pid` (libproc
//! on macOS). Every signal is preceded by a fresh read: the pid must
//! still show the pinned start time and not be a zombie. The window that
//! remains is between that read and kill(2), a few microseconds in which
//! the process would have to exit, be reaped by its parent and have its
//! pid handed to a new process. The BSDs allocate pids at random
//! (FreeBSD with `kern.randompid`, OpenBSD always) or cyclically, so an
//! immediate reuse of that one pid is unlikely, but unlike pidfds this is
//! not a guarantee.
//!
//! Descriptors passed with `tetherctl exec` are Linux pidfds; here the
//! client sends start times instead and [`Backend::adopt`] is refused.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::event::{EvFlags, EventFilter, FilterFlag, KEvent, Kqueue};

use super::pids::{self, PidHandle, Watched};
use super::{Backend, Delivery, Identity, OpenError, Owner, ProcEntry};
use crate::sys::bsd::{self, ProcInfo};
use crate::vocab::{BackendKind, Pid, Signal};

/// The `kqueue` backend.
#[derive(Debug)]
pub struct KqueueWatcher {
    kq: Kqueue,
    watched: Watched,
}

impl KqueueWatcher {
    /// Creates the inner kqueue.
    pub fn new() -> io::Result<Self> {
        Ok(KqueueWatcher {
            kq: Kqueue::new()?,
            watched: Watched::default(),
        })
    }

    /// Adds (or with `EV_DELETE`, removes) the exit filter of `pid`.
    fn change(&self, pid: i32, flags: EvFlags) -> io::Result<()> {
        let ident = usize::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative pid"))?;
        let change = KEvent::new(
            ident,
            EventFilter::EVFILT_PROC,
            flags,
            FilterFlag::NOTE_EXIT,
            0,
            0,
        );
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        self.kq.kevent(&[change], &mut [], Some(zero))?;
        Ok(())
    }

    fn info(handle: &PidHandle) -> Option<ProcInfo> {
        bsd::proc_info(handle.pid).ok().flatten()
    }

    /// Whether the process of `handle` has exited: known without a read
    /// once it was reported, else read afresh. An error: it cannot be told.
    fn exited(&self, handle: &PidHandle) -> io::Result<bool> {
        if self.watched.is_exited(handle) {
            return Ok(true);
        }
        exited_given(handle.start, &bsd::proc_info(handle.pid))
    }
}

/// Whether the process that started at `start` has exited, given what
/// sysctl showed for its pid. A read error proves nothing: it is
/// returned, and the caller must neither signal nor release the process.
fn exited_given(start: u64, info: &io::Result<Option<ProcInfo>>) -> io::Result<bool> {
    match info {
        Ok(None) => Ok(true),
        Ok(Some(info)) => Ok(info.start != start || info.zombie),
        Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
    }
}

fn entry(info: &ProcInfo) -> ProcEntry {
    ProcEntry {
        pid: info.pid,
        ppid: info.ppid,
        pgid: info.pgid,
        start: info.start,
    }
}

impl Backend for KqueueWatcher {
    type Handle = PidHandle;

    fn kind(&self) -> BackendKind {
        BackendKind::Kqueue
    }

    fn boot_id(&self) -> io::Result<String> {
        // A real id where the kernel has one; else the boot time, to the
        // second (a clock step moves it, which only makes pins of this
        // boot look older: a process is then refused, never mistaken).
        for name in ["kern.boot_id", "kern.bootsessionuuid"] {
            if let Ok(id) = bsd::sysctl_string(name) {
                if !id.is_empty() {
                    return Ok(id);
                }
            }
        }
        Ok(format!("boottime-{}", bsd::boot_time()? / 1_000_000))
    }

    fn has_inodes(&self) -> bool {
        false
    }

    fn holds_descriptors(&self) -> bool {
        false
    }

    fn open(&mut self, pid: Pid) -> Result<(PidHandle, Identity), OpenError> {
        match bsd::proc_info(pid.get()) {
            Ok(Some(info)) if !info.zombie => {
                let handle = PidHandle {
                    pid: pid.get(),
                    start: info.start,
                    serial: self.watched.serial(),
                };
                Ok((
                    handle,
                    Identity {
                        start: info.start,
                        inode: None,
                    },
                ))
            }
            Ok(_) => Err(OpenError::Gone),
            Err(err) => Err(OpenError::Failed(err)),
        }
    }

    fn adopt(&mut self, fd: OwnedFd, pid: Pid) -> Result<(PidHandle, Identity), OpenError> {
        drop(fd);
        Err(OpenError::Failed(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("pid {pid}: process descriptors are Linux pidfds, which this OS does not have; send the start time instead"),
        )))
    }

    fn owner(&self, _pid: Pid, handle: &PidHandle) -> io::Result<Option<Owner>> {
        // One sysctl gives the start time and the uids together.
        Ok(Self::info(handle)
            .filter(|info| info.start == handle.start && !info.zombie)
            .map(|info| Owner {
                uids: [info.ruid, info.euid, info.svuid],
                gids: info.gids,
            }))
    }

    fn process_table(&self) -> io::Result<Vec<ProcEntry>> {
        Ok(bsd::all_procs()?.iter().map(entry).collect())
    }

    fn init_group(&self) -> Option<i32> {
        bsd::proc_info(1).ok().flatten().map(|info| info.pgid)
    }

    fn entry(&self, _pid: Pid, handle: &PidHandle) -> io::Result<Option<ProcEntry>> {
        Ok(Self::info(handle)
            .filter(|info| info.start == handle.start && !info.zombie)
            .map(|info| entry(&info)))
    }

    fn register(
        &mut self,
        _registry: &Registry,
        handle: &PidHandle,
        token: Token,
    ) -> io::Result<()> {
        let first = self.watched.add(handle, token);
        if first {
            match self.change(handle.pid, EvFlags::EV_ADD) {
                Ok(()) => {}
                // Already gone: no filter can be attached; report it.
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                Err(err) => {
                    self.watched.remove(handle);
                    return Err(err);
                }
            }
        }
        // The filter is on whatever process holds the pid now: if that is
        // not ours (it exited before the filter was added), report it.
        if self.exited(handle).unwrap_or(false) {
            if self.watched.remove(handle) {
                let _ = self.change(handle.pid, EvFlags::EV_DELETE);
            }
            self.watched.push_pending(handle, token);
        }
        Ok(())
    }

    fn deregister(&mut self, _registry: &Registry, handle: &PidHandle) -> io::Result<()> {
        if self.watched.remove(handle) {
            // ENOENT/ESRCH: the filter went with the process already.
            let _ = self.change(handle.pid, EvFlags::EV_DELETE);
        }
        Ok(())
    }

    fn register_source(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let raw = self.kq.as_fd().as_raw_fd();
        registry.register(&mut SourceFd(&raw), token, Interest::READABLE)
    }

    fn collect(&mut self, out: &mut Vec<Token>) {
        self.watched.drain_pending(out);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let empty = KEvent::new(
            0,
            EventFilter::EVFILT_PROC,
            EvFlags::empty(),
            FilterFlag::empty(),
            0,
            0,
        );
        let mut events = [empty; 64];
        loop {
            let n = match self.kq.kevent(&[], &mut events, Some(zero)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    warn!("kqueue backend: reading exit events failed: {err}");
                    break;
                }
            };
            for event in events.iter().take(n) {
                let Ok(pid) = i32::try_from(event.ident()) else {
                    continue;
                };
                let info = bsd::proc_info(pid);
                // A failed read leaves the waiters (never a signal on it).
                let left = self.watched.settle(
                    pid,
                    |start| exited_given(start, &info).unwrap_or(false),
                    out,
                );
                // The filter fired for the process it was attached to; a
                // waiter left is a later process with the same pid, which
                // needs a filter of its own.
                if left {
                    if let Err(err) = self.change(pid, EvFlags::EV_ADD) {
                        warn!("kqueue backend: cannot watch pid {pid} again: {err}");
                    }
                }
            }
            if n < events.len() {
                break;
            }
        }
        debug!("kqueue backend: {} exits collected", out.len());
    }

    fn has_pending(&self) -> bool {
        self.watched.has_pending()
    }

    fn has_exited(&self, handle: &PidHandle) -> bool {
        // A read that failed tells nothing: not taken as exited (and
        // `signal` refuses it).
        self.exited(handle).unwrap_or(false)
    }

    fn signal(&self, handle: &PidHandle, sig: Signal) -> io::Result<Delivery> {
        // The start time read again just before kill(2); never a kill(2)
        // without it.
        pids::kill_checked(handle, sig, self.exited(handle))
    }
}
