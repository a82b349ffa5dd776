//! Process watching: the one place that knows which kernel it runs on.
//!
//! A backend opens a handle on a live process, proves who it is (an
//! [`Identity`] read after the handle was opened, so a pid reused between
//! the daemon's decision and the open cannot slip through), reports its
//! exit through the mio loop, and signals exactly the process the handle
//! refers to. Every backend implements [`Backend`]; the daemon is written
//! against that trait alone and never uses `cfg(target_os)`.
//!
//! Backends ([`BackendKind`]; `auto` takes the first that works here):
//! - Linux `pidfd` ([`pidfd`]): pidfd_open, readable on exit,
//!   pidfd_send_signal. Linux 5.3 or later. Race-free.
//! - Linux `netlink` and `poll` ([`procwatch`]): for kernels without
//!   pidfds, or where seccomp forbids them. Exits come from the netlink
//!   process connector (needs CAP_NET_ADMIN in the initial namespaces) or
//!   from re-reading every watched pid's `/proc` entry each interval.
//!   Signals go by pid after the start time was checked.
//! - BSDs and macOS `kqueue` ([`kqueue`]): EVFILT_PROC/NOTE_EXIT in an
//!   inner kqueue; identities from sysctl `kern.proc.pid`; signals by pid
//!   after the start time was checked.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use log::warn;
use mio::{Registry, Token};

pub use crate::vocab::BackendKind;
use crate::vocab::{Pid, Signal};

pub mod exec;
mod pids;

#[cfg(linux_like)]
pub mod pidfd;
#[cfg(linux_like)]
mod procfs;
#[cfg(linux_like)]
pub mod procwatch;

#[cfg(bsd_like)]
pub mod kqueue;

/// How the backend is chosen and tuned (`[daemon] backend`,
/// `poll_interval`, `tetherd --backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Which backend; `Auto` tries them best first.
    pub kind: BackendKind,
    /// How often the `poll` backend re-reads the watched processes.
    pub poll_interval: Duration,
}

/// What to do with the backend once it is chosen: the daemon is generic
/// over [`Backend`], and this is how it gets the concrete type without
/// knowing which kernel it runs on.
pub trait Visitor {
    /// What the visit returns.
    type Output;
    /// Called once with the chosen backend.
    fn visit<B: Backend + 'static>(self, backend: B) -> Self::Output;
}

/// Registers the backends of this build, one line each, best first (the
/// order `auto` tries): `#[cfg(...)] Kind(settings) => opener,` where
/// `Kind` is a [`BackendKind`] variant and the opener, an
/// `io::Result<impl Backend>`, may read the [`Settings`] bound to the
/// pattern. Generates [`available`] and `open`, which hands the opened
/// backend to a [`Visitor`] as its concrete type.
macro_rules! backends {
    ($(#[$cfg:meta] $kind:ident($settings:pat) => $open:expr,)+) => {
        /// The backends this build can run, best first (the order `auto`
        /// tries).
        pub fn available() -> &'static [BackendKind] {
            &[$(#[$cfg] BackendKind::$kind,)+]
        }

        /// Opens the backend `kind` and hands it to `visitor`; on failure
        /// gives the visitor back with the reason.
        fn open<V: Visitor>(
            kind: BackendKind,
            settings: &Settings,
            visitor: V,
        ) -> Result<V::Output, (io::Error, V)> {
            match kind {
                $(
                    #[$cfg]
                    BackendKind::$kind => {
                        let $settings: &Settings = settings;
                        match $open {
                            Ok(backend) => Ok(visitor.visit(backend)),
                            Err(err) => Err((err, visitor)),
                        }
                    }
                )+
                other => Err((not_in_build(other), visitor)),
            }
        }
    };
}

backends! {
    #[cfg(linux_like)] Pidfd(_) => pidfd::PidfdWatcher::new(),
    #[cfg(linux_like)] Netlink(_) => procwatch::ProcWatcher::netlink(),
    #[cfg(linux_like)] Poll(settings) => procwatch::ProcWatcher::poll(settings.poll_interval),
    #[cfg(bsd_like)] Kqueue(_) => kqueue::KqueueWatcher::new(),
}

/// Opens the backend `settings` asks for and hands it to `visitor`. With
/// `auto`, each backend of [`available`] is tried in order and every one
/// that fails is logged with its reason.
pub fn with_backend<V: Visitor>(settings: &Settings, visitor: V) -> io::Result<V::Output> {
    let kinds: &[BackendKind] = match &settings.kind {
        BackendKind::Auto => available(),
        one => std::slice::from_ref(one),
    };
    let mut failures = Vec::new();
    let mut visitor = visitor;
    for &kind in kinds {
        let chosen = Chosen {
            kind,
            passed_over: &failures,
            visitor,
        };
        match open(kind, settings, chosen) {
            Ok(output) => return Ok(output),
            Err((err, back)) => {
                visitor = back.visitor;
                failures.push(format!("{kind} is not usable: {err}"));
            }
        }
    }
    Err(io::Error::other(failures.join("; ")))
}

/// Hands the opened backend on, after logging why the backends tried
/// before it were passed over (before the visit, which runs the daemon).
struct Chosen<'f, V> {
    kind: BackendKind,
    passed_over: &'f [String],
    visitor: V,
}

impl<V: Visitor> Visitor for Chosen<'_, V> {
    type Output = V::Output;

    fn visit<B: Backend + 'static>(self, backend: B) -> V::Output {
        if !self.passed_over.is_empty() {
            warn!(
                "backend {} chosen because {}",
                self.kind,
                self.passed_over.join("; ")
            );
        }
        self.visitor.visit(backend)
    }
}

/// Whether each backend of this build can run here: opens it and closes
/// it again (`tetherd --list-backends`).
pub fn probe(settings: &Settings) -> Vec<(BackendKind, io::Result<()>)> {
    /// Closes the backend it is given.
    struct Close;
    impl Visitor for Close {
        type Output = ();
        fn visit<B: Backend + 'static>(self, backend: B) {
            drop(backend);
        }
    }
    available()
        .iter()
        .map(|&kind| (kind, open(kind, settings, Close).map_err(|(err, _)| err)))
        .collect()
}

/// Why `kind` cannot be opened: this build does not have it.
fn not_in_build(kind: BackendKind) -> io::Error {
    let names: Vec<&str> = available().iter().map(|kind| kind.name()).collect();
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{kind} is not a backend of this OS (this build has: {})",
            names.join(", ")
        ),
    )
}

/// The start time of a running process as backends record it (`Identity::start`),
/// for tetherctl, which pins the processes it binds without a backend.
pub fn start_time(pid: i32) -> io::Result<Option<u64>> {
    #[cfg(linux_like)]
    {
        Ok(procfs::stat(pid)?.map(|s| s.start))
    }
    #[cfg(not(linux_like))]
    {
        Ok(crate::sys::bsd::proc_info(pid)?.map(|p| p.start))
    }
}

/// Whether the process at `pid`, if its start time is still `start`, is a
/// kernel thread, which nothing may bind (Linux: `PF_KTHREAD` in the flags
/// of `/proc/PID/stat`; kthreadd and every kernel worker). `None`: no
/// process with that start time is at `pid` any more. Elsewhere `false`:
/// kernel processes there have pids below 2 or cannot be opened.
pub fn is_kernel_thread(pid: i32, start: u64) -> io::Result<Option<bool>> {
    #[cfg(linux_like)]
    {
        procfs::kernel_thread(pid, start)
    }
    #[cfg(not(linux_like))]
    {
        let _ = (pid, start);
        Ok(Some(false))
    }
}

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

/// Who a process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Real, effective and saved uids.
    pub uids: [u32; 3],
    /// Real, effective and saved gids.
    pub gids: [u32; 3],
}

impl Owner {
    /// Whether a caller with effective uid `uid` could signal the process
    /// (kill(2): the sender's uid matches the target's real or saved uid).
    pub fn may_be_signalled_by(&self, uid: u32) -> bool {
        let [real, _, saved] = self.uids;
        uid == 0 || uid == real || uid == saved
    }

    /// Whether tetherd may signal the process on behalf of `uid`, a user
    /// other than root: `uid` could signal it (kill(2)'s rule), and it runs
    /// with no privilege `uid` lacks: every uid of it is `uid`, and its
    /// gids did not change by a set-group-id exec. The kernel clears
    /// `PR_SET_PDEATHSIG` when a process gains privileges that way, and
    /// tetherd does no more for a user than the kernel would.
    pub fn plainly_owned_by(&self, uid: u32) -> bool {
        let [real_gid, effective_gid, saved_gid] = self.gids;
        self.uids.iter().all(|&u| u == uid) && real_gid == effective_gid && real_gid == saved_gid
    }

    /// Why the process may not be signalled for `uid`, in words.
    pub fn refusal(&self, uid: u32) -> String {
        let [real, effective, saved] = self.uids;
        if !self.may_be_signalled_by(uid) {
            format!("it belongs to uid {real}")
        } else if real != effective || real != saved {
            format!("it runs with the privileges of uid {effective} (real {real}, saved {saved}): a set-user-id program")
        } else {
            let [r, e, s] = self.gids;
            format!("it runs with the privileges of gid {e} (real {r}, saved {s}): a set-group-id program")
        }
    }
}

/// Why a backend without process descriptors (netlink, poll, kqueue)
/// sent no signal: the fresh read of the process's start time, which must
/// come before every kill(2), failed (the daemon out of descriptors, say).
/// Whether the pid still holds the process bound is then unknown, and a
/// kill(2) could reach another that took the pid, so nothing was sent.
/// [`Backend::signal`] returns it wrapped in an `io::Error`
/// ([`IdentityUnknown::is`] tells it apart); the process is neither
/// signalled nor taken as exited, and its exit is looked for again.
#[derive(Debug)]
pub struct IdentityUnknown {
    /// The pid that was to be signalled.
    pub pid: i32,
    /// Why its identity could not be read.
    pub source: io::Error,
}

impl IdentityUnknown {
    /// `source` for `pid`, as the `io::Error` [`Backend::signal`] returns.
    pub fn error(pid: i32, source: io::Error) -> io::Error {
        io::Error::other(IdentityUnknown { pid, source })
    }

    /// Whether `err` is an [`IdentityUnknown`].
    pub fn is(err: &io::Error) -> bool {
        err.get_ref()
            .is_some_and(|inner| inner.is::<IdentityUnknown>())
    }
}

impl fmt::Display for IdentityUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not signalled: whether pid {} is still that process is unknown, its start time cannot be read ({})",
            self.pid, self.source
        )
    }
}

impl std::error::Error for IdentityUnknown {}

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

    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Its name, for logs and status (`pidfd`, `kqueue`, ...).
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// An id of the current boot, stored with pins so that a pin taken
    /// before a reboot is never matched after it.
    fn boot_id(&self) -> io::Result<String>;

    /// Whether identities carry an inode (so inode pins can be checked).
    fn has_inodes(&self) -> bool;

    /// Whether each held process costs the daemon a descriptor (a
    /// pidfd), so that the descriptor limit bounds what can be held.
    fn holds_descriptors(&self) -> bool;

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

    /// Registers the backend's own event source (a netlink socket, a
    /// timer, an inner kqueue), if it has one, under `token`. Backends
    /// whose handles are their own sources (pidfds) have none.
    fn register_source(&mut self, _registry: &Registry, _token: Token) -> io::Result<()> {
        Ok(())
    }

    /// Appends to `out` the tokens of watched processes that have exited,
    /// each once: called when the source's token is ready, and whenever
    /// [`Backend::has_pending`] says exits are queued. A token reported
    /// here needs no [`Backend::deregister`] (it is harmless).
    fn collect(&mut self, _out: &mut Vec<Token>) {}

    /// Whether exits are queued for [`Backend::collect`] that no event of
    /// the source will announce (a process found dead at registration).
    fn has_pending(&self) -> bool {
        false
    }

    /// Whether the process has exited (it may be a zombie). Never blocks.
    /// `false` also when that cannot be told now (a read failed): such a
    /// process is not released, and [`Backend::signal`] refuses it.
    fn has_exited(&self, handle: &Self::Handle) -> bool;

    /// Sends `sig` to exactly the process of `handle`. Backends that
    /// signal by pid check its start time first; if that check cannot be
    /// made they send nothing and fail with an [`IdentityUnknown`].
    fn signal(&self, handle: &Self::Handle, sig: Signal) -> io::Result<Delivery>;
}
