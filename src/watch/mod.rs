//! Process watching: the one place that knows which kernel it runs on.
//!
//! A backend opens a handle on a live process, proves who it is (an
//! [`Identity`] read after the handle was opened, so a pid reused between
//! the daemon's decision and the open cannot slip through), reports its
//! exit through the mio loop, and signals exactly the process the handle
//! refers to. Every backend implements [`Backend`]; the daemon is written
//! against that trait alone and never uses `cfg(target_os)`.
//!
//! Backends:
//! - Linux: [`pidfd`] (pidfd_open, readable on exit, pidfd_send_signal).
//!   Linux 5.3 or later.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use mio::{Registry, Token};

use crate::config::{Pid, Signal};

#[cfg(target_os = "linux")]
pub mod pidfd;

/// The backend of this platform.
#[cfg(target_os = "linux")]
pub type Watcher = pidfd::PidfdWatcher;

/// What pins a process: facts about it that a process reusing its pid
/// cannot share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22 on
    /// Linux).
    pub start: u64,
    /// A per-boot unique inode for the process, where the kernel has one
    /// (pidfs on Linux 6.9 and later).
    pub inode: Option<u64>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "start {}", self.start)?;
        if let Some(inode) = self.inode {
            write!(f, ", inode {inode}")?;
        }
        Ok(())
    }
}

/// Why a process could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// There is no running process with that pid (never was, exited, or
    /// exiting right now).
    Gone,
    /// The kernel refused for another reason (out of descriptors, no
    /// pidfd support, not permitted). The process may well be alive.
    Failed(io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Gone => f.write_str("no such process"),
            OpenError::Failed(err) if err.raw_os_error() == Some(libc::EMFILE) => write!(
                f,
                "{err}: the daemon's descriptor limit is reached (raise RLIMIT_NOFILE, e.g. LimitNOFILE= in the service file)"
            ),
            OpenError::Failed(err) => err.fmt(f),
        }
    }
}

/// One process in the process table, as the kernel showed it at one
/// moment. Only good for finding candidates: a candidate becomes a member
/// only after it is opened and its entry read again through the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its process group.
    pub pgid: i32,
    /// Its start time (as in [`Identity::start`]).
    pub start: u64,
}

/// Who owns a process, as kill(2) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Real uid.
    pub real: u32,
    /// Saved set-user-id.
    pub saved: u32,
}

impl Owner {
    /// Whether a caller with effective uid `uid` could signal the process
    /// (kill(2): the sender's uid matches the target's real or saved uid).
    pub fn may_be_signalled_by(&self, uid: u32) -> bool {
        uid == 0 || uid == self.real || uid == self.saved
    }
}

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The kernel accepted it for the process the handle refers to.
    Sent,
    /// The process has exited and been reaped: nothing was signalled.
    Gone,
}

/// The contract every platform backend fulfils.
pub trait Backend: Sized + fmt::Debug {
    /// A handle on one process. While it is held, it refers to that process
    /// and no other, whatever becomes of the pid.
    type Handle: fmt::Debug;

    /// Prepares the backend. Fails when the kernel lacks what it needs.
    fn new() -> io::Result<Self>;

    /// A short name for logs and status (`pidfd`, `kqueue`, ...).
    fn name(&self) -> &'static str;

    /// An id of the current boot, stored with pins so that a pin taken
    /// before a reboot is never matched after it.
    fn boot_id(&self) -> io::Result<String>;

    /// Whether identities carry an inode (so inode pins can be checked).
    fn has_inodes(&self) -> bool;

    /// Opens a handle on the running process `pid` and reads its identity.
    fn open(&mut self, pid: Pid) -> Result<(Self::Handle, Identity), OpenError>;

    /// Takes over a handle the caller of a control request opened itself
    /// (a pidfd passed over the socket) and reads its identity. Fails with
    /// [`OpenError::Gone`] if it no longer refers to a running process, and
    /// with [`OpenError::Failed`] if it is not a handle on `pid`.
    fn adopt(&mut self, fd: OwnedFd, pid: Pid) -> Result<(Self::Handle, Identity), OpenError>;

    /// The real and saved uids of the process (who may signal it), read
    /// race-free: `None` if it has exited meanwhile.
    fn owner(&self, pid: Pid, handle: &Self::Handle) -> io::Result<Option<Owner>>;

    /// Every process the daemon can see. Costs a walk of the process table
    /// (on Linux, `/proc`): used only when a group or tree binding fires.
    fn process_table(&self) -> io::Result<Vec<ProcEntry>>;

    /// The process group of pid 1, which a group binding must never
    /// signal; `None` if it cannot be read.
    fn init_group(&self) -> Option<i32>;

    /// The entry of an open process, read race-free: `None` if it has
    /// exited (then nothing read about it could be trusted).
    fn entry(&self, pid: Pid, handle: &Self::Handle) -> io::Result<Option<ProcEntry>>;

    /// Arranges for `token` to become readable in `registry` when the
    /// process exits.
    fn register(
        &mut self,
        registry: &Registry,
        handle: &Self::Handle,
        token: Token,
    ) -> io::Result<()>;

    /// Undoes [`Backend::register`].
    fn deregister(&mut self, registry: &Registry, handle: &Self::Handle) -> io::Result<()>;

    /// Whether the process has exited (it may be a zombie). Never blocks.
    fn has_exited(&self, handle: &Self::Handle) -> bool;

    /// Sends `sig` to exactly the process of `handle`.
    fn signal(&self, handle: &Self::Handle, sig: Signal) -> io::Result<Delivery>;
}
