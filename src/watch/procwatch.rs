//! The Linux backends for kernels without pidfds (before 5.3), or where a
//! seccomp profile forbids `pidfd_open`: `netlink` and `poll`.
//!
//! Both know a process by pid and start time ([`PidHandle`]) and hold
//! nothing in the kernel. They differ in how they learn of exits:
//!
//! - `netlink`: the process connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`)
//!   reports every exit on the host as it happens. It needs CAP_NET_ADMIN
//!   and works only from the initial pid and user namespaces (the kernel
//!   ignores subscriptions from elsewhere); both are checked at start. If
//!   the socket's buffer overflows (ENOBUFS: events were lost), every
//!   watched pid is checked again.
//! - `poll`: every watched pid's `/proc` entry is re-read each
//!   `poll_interval` (default 1s). The degraded mode: an exit is seen up
//!   to one interval late, and the daemon wakes each interval while it
//!   watches anything (never while it watches nothing).
//!
//! An exit event is never trusted on its own: the connector reports each
//! thread's exit, so a process is taken as exited only when `/proc` shows
//! it gone, replaced (another start time) or a zombie with no threads left.
//! An exit of a pid nobody watches costs a hash lookup and no system call.
//!
//! A read of `/proc` that fails (the daemon out of descriptors, say)
//! proves nothing either way: the process is neither taken as exited nor
//! signalled, and the log says so. Such a pid is looked at again: by
//! `poll` at each sweep, by `netlink` at each later event and on a retry
//! timer that runs only while such pids exist, so an exit whose event
//! came while `/proc` could not be read is not lost.
//!
//! Signals go through kill(2) right after the start time is read again
//! and found unchanged. What remains is the window between that read and
//! kill(2): the process would have to exit, be reaped, and its pid be
//! handed out again within microseconds, which Linux's cyclic pid
//! allocation makes need `pid_max` forks in that window (or a privileged
//! writer of `ns_last_pid`). pidfds close even that window; these
//! backends are for kernels that lack them.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{self, sockopt, MsgFlags, NetlinkAddr};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::pids::{self, PidHandle, Watched};
use super::procfs;
use super::{Backend, Delivery, Identity, OpenError, Owner, ProcEntry};
use crate::sys::linux as sys;
use crate::vocab::{BackendKind, Pid, Signal};

/// `CN_IDX_PROC` and `CN_VAL_PROC` (linux/connector.h).
pub(super) const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` (linux/cn_proc.h).
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `proc_event.what` values.
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
pub(super) const PROC_EVENT_EXEC: u32 = 0x0000_0002;
/// `NLMSG_DONE`: the type the connector's messages carry.
const NLMSG_DONE: u16 = 3;
/// Sizes of `struct nlmsghdr` and `struct cn_msg`.
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
/// Where `proc_event.event_data` starts within `proc_event` (after
/// `what`, `cpu` and the 8-aligned `timestamp_ns`).
const EVENT_DATA: usize = 16;
/// The inode numbers of the initial pid and user namespaces
/// (`PROC_PID_INIT_INO`, `PROC_USER_INIT_INO` in linux/proc_ns.h).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;
/// How long to wait for the kernel to acknowledge the subscription.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The receive buffer asked for: a burst of exits on a busy host must not
/// overflow it (an overflow costs a check of every watched pid).
const RCVBUF: usize = 8 << 20;
/// How often `netlink` looks again at pids whose `/proc` entry could not
/// be read, while there are any.
const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// How exits are learnt.
#[derive(Debug)]
enum Source {
    Netlink {
        socket: OwnedFd,
        /// Reused receive buffer.
        buf: Vec<u8>,
        /// Whether the socket is in the connector's multicast group (only
        /// while something is watched: an idle daemon hears nothing).
        joined: bool,
        /// Fires every [`RETRY_INTERVAL`] while `unknown` is not empty,
        /// under the same token as the socket.
        retry: TimerFd,
        /// Whether `retry` is armed.
        retrying: bool,
    },
    Poll {
        timer: TimerFd,
        interval: Duration,
        armed: bool,
    },
}

/// The `netlink` or `poll` backend.
#[derive(Debug)]
pub struct ProcWatcher {
    source: Source,
    watched: Watched,
    /// Watched pids whose last read of `/proc` failed: whether they exited
    /// is unknown, and they are read again (see the module documentation).
    unknown: HashSet<i32>,
}

impl ProcWatcher {
    /// The `netlink` backend: subscribes to the process connector and
    /// waits for the kernel's acknowledgement.
    pub fn netlink() -> io::Result<Self> {
        for (ns, init) in [("pid", PROC_PID_INIT_INO), ("user", PROC_USER_INIT_INO)] {
            let path = format!("/proc/self/ns/{ns}");
            let ino = fs::metadata(&path)?.ino();
            if ino != init {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the process connector reports only to the initial {ns} namespace, and tetherd runs in another"),
                ));
            }
        }
        let socket = sys::netlink_connector_socket()?;
        socket::bind(socket.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // Only exits (and the acknowledgement) get through: forks, execs
        // and the rest of the host's process events never wake the daemon.
        sys::attach_socket_filter(&socket, &exit_filter())?;
        // A bigger buffer than the default; root may force past rmem_max.
        if socket::setsockopt(&socket, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = socket::setsockopt(&socket, sockopt::RcvBuf, &RCVBUF);
        }
        sys::netlink_membership(&socket, CN_IDX_PROC, true)?;
        let seq = std::process::id();
        socket::send(socket.as_raw_fd(), &listen_message(seq), MsgFlags::empty())?;
        wait_for_ack(&socket, seq)?;
        sys::netlink_membership(&socket, CN_IDX_PROC, false)?;
        Ok(ProcWatcher {
            source: Source::Netlink {
                socket,
                buf: vec![0; 64 * 1024],
                joined: false,
                retry: new_timer()?,
                retrying: false,
            },
            watched: Watched::default(),
            unknown: HashSet::new(),
        })
    }

    /// The `poll` backend, re-reading watched pids every `interval`.
    pub fn poll(interval: Duration) -> io::Result<Self> {
        Ok(ProcWatcher {
            source: Source::Poll {
                timer: new_timer()?,
                interval,
                armed: false,
            },
            watched: Watched::default(),
            unknown: HashSet::new(),
        })
    }

    /// Arms the poll timer, or joins the connector's group, while
    /// something is watched, and undoes it when nothing is: a daemon with
    /// nothing to watch never wakes. The netlink retry timer runs only
    /// while some watched pid's exit is unknown.
    fn update_source(&mut self) {
        let want = !self.watched.is_empty();
        let watched = &self.watched;
        self.unknown.retain(|&pid| watched.contains(pid));
        let want_retry = !self.unknown.is_empty();
        let result = match &mut self.source {
            Source::Poll {
                timer,
                interval,
                armed,
            } => switch_timer(timer, armed, want, *interval),
            Source::Netlink {
                socket,
                joined,
                retry,
                retrying,
                ..
            } => {
                let joining = if want == *joined {
                    Ok(())
                } else {
                    sys::netlink_membership(socket, CN_IDX_PROC, want).map(|()| *joined = want)
                };
                joining.and(switch_timer(retry, retrying, want_retry, RETRY_INTERVAL))
            }
        };
        if let Err(err) = result {
            // Left as it was: a timer that stays armed or a group left
            // joined costs wakeups, never a missed exit, except a failed
            // join, which the log must show.
            warn!(
                "{} backend: cannot switch its event source: {err}",
                self.name()
            );
        }
    }

    /// Reads `/proc/PID/stat` once and reports the waiters on `pid` whose
    /// process it shows exited. If it cannot tell (a read failed), they
    /// stay, and `pid` is kept in `unknown` to be read again.
    fn check(&mut self, pid: i32, out: &mut Vec<Token>) {
        let stat = procfs::stat(pid);
        let mut failure = None;
        self.watched.settle(
            pid,
            |start| match exited_given(pid, start, &stat) {
                Ok(exited) => exited,
                Err(err) => {
                    failure = Some(err);
                    false
                }
            },
            out,
        );
        match failure {
            Some(err) => self.mark_unknown(pid, &err),
            None => {
                if self.unknown.remove(&pid) {
                    info!(
                        "{} backend: pid {pid} can be read again; its exit is no longer unknown",
                        self.name()
                    );
                }
            }
        }
    }

    /// Notes that whether `pid` exited is unknown (logged once, not at
    /// every retry).
    fn mark_unknown(&mut self, pid: i32, err: &io::Error) {
        if self.unknown.insert(pid) {
            warn!(
                "{} backend: pid {pid}: {err}; whether it exited is unknown, so it is neither signalled nor taken as exited, and it is read again {}",
                self.name(),
                match self.source {
                    Source::Netlink { .. } => "at the next event or within 250ms",
                    Source::Poll { .. } => "at the next check",
                }
            );
        }
    }

    /// Checks every watched pid; reports those that exited.
    fn sweep(&mut self, out: &mut Vec<Token>) {
        for pid in self.watched.pids() {
            self.check(pid, out);
        }
    }

    /// Reads every queued connector message; returns the thread-group ids
    /// that had a thread exit, and whether events were lost.
    fn read_events(socket: &OwnedFd, buf: &mut [u8]) -> (Vec<i32>, bool) {
        let mut tgids = Vec::new();
        let mut lost = false;
        loop {
            match socket::recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => parse_exits(buf.get(..n).unwrap_or_default(), &mut tgids),
                Err(nix::errno::Errno::ENOBUFS) => lost = true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(err) => {
                    warn!("netlink backend: reading exit events failed: {err}; checking every watched process");
                    lost = true;
                    break;
                }
            }
        }
        (tgids, lost)
    }

    /// Whether the process of `handle` has exited: known without a read
    /// once it was reported, else read afresh. An error: it cannot be told.
    fn exited(&self, handle: &PidHandle) -> io::Result<bool> {
        if self.watched.is_exited(handle) {
            return Ok(true);
        }
        exited_given(handle.pid, handle.start, &procfs::stat(handle.pid))
    }
}

/// A timer for the poll sweeps or the netlink retries, not yet armed.
fn new_timer() -> io::Result<TimerFd> {
    Ok(TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?)
}

/// Arms `timer` every `interval` if `want`, disarms it if not; `armed`
/// tracks which it is.
fn switch_timer(
    timer: &TimerFd,
    armed: &mut bool,
    want: bool,
    interval: Duration,
) -> io::Result<()> {
    if want == *armed {
        return Ok(());
    }
    let result = if want {
        timer.set(
            Expiration::Interval(TimeSpec::from_duration(interval)),
            TimerSetTimeFlags::empty(),
        )
    } else {
        timer.unset()
    };
    result.map(|()| *armed = want).map_err(io::Error::from)
}

/// Whether the process `pid` that started at `start` has exited, given
/// what `/proc/PID/stat` showed. A read error proves nothing: it is
/// returned, and the caller must neither signal nor release the process.
fn exited_given(pid: i32, start: u64, stat: &io::Result<Option<procfs::Stat>>) -> io::Result<bool> {
    match stat {
        Ok(None) => Ok(true),
        Ok(Some(stat)) if stat.start != start => Ok(true),
        // A zombie leader whose other threads still run is a live process:
        // only a zombie with no other task left has exited.
        Ok(Some(stat)) if stat.exited() => match fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(tasks) => Ok(tasks.count() <= 1),
            // Reaped meanwhile.
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(err) => Err(io::Error::new(
                err.kind(),
                format!("/proc/{pid}/task: {err}"),
            )),
        },
        Ok(Some(_)) => Ok(false),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("/proc/{pid}/stat: {err}"),
        )),
    }
}

/// A classic BPF program that passes only `PROC_EVENT_EXIT` and
/// `PROC_EVENT_NONE` (acknowledgements) messages. BPF loads words in
/// network byte order, so the constants are the native bytes read
/// big-endian.
fn exit_filter() -> [libc::sock_filter; 5] {
    event_filter(PROC_EVENT_EXIT)
}

/// The filter of [`exit_filter`] for the events `what` (`watch::exec`
/// takes exec events).
pub(super) fn event_filter(what_passes: u32) -> [libc::sock_filter; 5] {
    let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: u16::try_from(code).unwrap_or(0),
        jt,
        jf,
        k,
    };
    let what = u32::try_from(NLMSG_HDRLEN + CN_MSG_LEN).unwrap_or(36);
    let exit = u32::from_be_bytes(what_passes.to_ne_bytes());
    let none = u32::from_be_bytes(PROC_EVENT_NONE.to_ne_bytes());
    [
        insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, what),
        insn(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 2, 0, exit),
        insn(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 1, 0, none),
        insn(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        insn(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ]
}

/// `PROC_CN_MCAST_LISTEN` as a netlink message: nlmsghdr, cn_msg, op.
pub(super) fn listen_message(seq: u32) -> Vec<u8> {
    let payload: u32 = PROC_CN_MCAST_LISTEN;
    let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
    let mut msg = Vec::with_capacity(total);
    // nlmsghdr: len, type, flags, seq, pid.
    msg.extend_from_slice(&u32::try_from(total).unwrap_or(40).to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&std::process::id().to_ne_bytes());
    // cn_msg: id {idx, val}, seq, ack, len, flags.
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    // The kernel answers with `ack + 1` (it replaces `seq` with a counter
    // of its own), so our number goes in `ack` too.
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&4u16.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&payload.to_ne_bytes());
    msg
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

/// The connector messages in one datagram: (cn_msg.seq, cn_msg.ack,
/// proc_event.what, offset of event_data).
fn messages(buf: &[u8]) -> Vec<(u32, u32, u32, usize)> {
    let mut found = Vec::new();
    let mut at = 0usize;
    while let Some(len) = u32_at(buf, at).and_then(|l| usize::try_from(l).ok()) {
        if len < NLMSG_HDRLEN || at.saturating_add(len) > buf.len() {
            break;
        }
        let cn = at + NLMSG_HDRLEN;
        let event = cn + CN_MSG_LEN;
        let is_proc = u16_at(buf, at + 4) == Some(NLMSG_DONE)
            && u32_at(buf, cn) == Some(CN_IDX_PROC)
            && u32_at(buf, cn + 4) == Some(CN_VAL_PROC);
        if let (true, Some(seq), Some(ack), Some(what)) = (
            is_proc,
            u32_at(buf, cn + 8),
            u32_at(buf, cn + 12),
            u32_at(buf, event),
        ) {
            found.push((seq, ack, what, event + EVENT_DATA));
        }
        // NLMSG_ALIGN: messages are padded to 4 bytes.
        at = at.saturating_add((len + 3) & !3);
    }
    found
}

/// Appends the thread-group id of every exit event in `buf`.
fn parse_exits(buf: &[u8], tgids: &mut Vec<i32>) {
    for (_, _, what, data) in messages(buf) {
        if what != PROC_EVENT_EXIT {
            continue;
        }
        // exit_proc_event: process_pid, process_tgid, ...
        if let Some(tgid) = u32_at(buf, data + 4).and_then(|t| i32::try_from(t).ok()) {
            tgids.push(tgid);
        }
    }
}

/// The thread-group id of every exec event in `buf`.
pub(super) fn parse_execs(buf: &[u8]) -> Vec<i32> {
    let mut tgids = Vec::new();
    for (_, _, what, data) in messages(buf) {
        if what != PROC_EVENT_EXEC {
            continue;
        }
        // exec_proc_event: process_pid, process_tgid.
        if let Some(tgid) = u32_at(buf, data + 4).and_then(|t| i32::try_from(t).ok()) {
            tgids.push(tgid);
        }
    }
    tgids
}

/// Waits for the kernel's answer to our subscription: a `PROC_EVENT_NONE`
/// message whose `ack` is one more than ours, with an error code.
pub(super) fn wait_for_ack(socket: &OwnedFd, seq: u32) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        if left.is_zero() || poll(&mut fds, PollTimeout::from(millis))? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the kernel did not acknowledge the process connector subscription (no CONFIG_PROC_EVENTS, or not the initial namespaces)",
            ));
        }
        let n = match socket::recv(socket.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOBUFS) => continue,
            Err(err) => return Err(err.into()),
        };
        let datagram = buf.get(..n).unwrap_or_default();
        for (_, ack, what, data) in messages(datagram) {
            if what == PROC_EVENT_NONE && ack == seq.wrapping_add(1) {
                return match u32_at(datagram, data) {
                    Some(0) => Ok(()),
                    Some(err) => Err(io::Error::from_raw_os_error(
                        i32::try_from(err).unwrap_or(libc::EPERM),
                    )),
                    None => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short acknowledgement from the process connector",
                    )),
                };
            }
        }
    }
}

impl Backend for ProcWatcher {
    type Handle = PidHandle;

    fn kind(&self) -> BackendKind {
        match self.source {
            Source::Netlink { .. } => BackendKind::Netlink,
            Source::Poll { .. } => BackendKind::Poll,
        }
    }

    fn boot_id(&self) -> io::Result<String> {
        procfs::boot_id()
    }

    fn has_inodes(&self) -> bool {
        false
    }

    fn holds_descriptors(&self) -> bool {
        false
    }

    fn open(&mut self, pid: Pid) -> Result<(PidHandle, Identity), OpenError> {
        let stat = match procfs::stat(pid.get()) {
            Ok(Some(stat)) => stat,
            Ok(None) => return Err(OpenError::Gone),
            Err(err) => return Err(OpenError::Failed(err)),
        };
        match exited_given(pid.get(), stat.start, &Ok(Some(stat))) {
            Ok(false) => {}
            Ok(true) => return Err(OpenError::Gone),
            Err(err) => return Err(OpenError::Failed(err)),
        }
        let handle = PidHandle {
            pid: pid.get(),
            start: stat.start,
            serial: self.watched.serial(),
        };
        Ok((
            handle,
            Identity {
                start: stat.start,
                inode: None,
            },
        ))
    }

    fn adopt(&mut self, fd: OwnedFd, pid: Pid) -> Result<(PidHandle, Identity), OpenError> {
        // The kernel has pidfds after all (the backend was chosen by
        // hand): use the one passed to pin the process race-free, then
        // let it go.
        match procfs::pidfd_pid(&fd).map_err(OpenError::Failed)? {
            None => Err(OpenError::Gone),
            Some(named) if named != pid.get() => Err(OpenError::Failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the pidfd passed refers to pid {named}, not {pid}"),
            ))),
            Some(_) => {
                let opened = self.open(pid)?;
                if procfs::pidfd_exited(&fd) {
                    return Err(OpenError::Gone);
                }
                Ok(opened)
            }
        }
    }

    fn owner(&self, pid: Pid, handle: &PidHandle) -> io::Result<Option<Owner>> {
        // Unchanged after the read: the entry read was this process's.
        procfs::owner_while_alive(pid, || self.exited(handle))
    }

    fn process_table(&self) -> io::Result<Vec<ProcEntry>> {
        procfs::process_table()
    }

    fn init_group(&self) -> Option<i32> {
        procfs::init_group()
    }

    fn entry(&self, pid: Pid, handle: &PidHandle) -> io::Result<Option<ProcEntry>> {
        procfs::entry_while_alive(pid, |stat| exited_given(pid.get(), handle.start, stat))
    }

    fn register(
        &mut self,
        _registry: &Registry,
        handle: &PidHandle,
        token: Token,
    ) -> io::Result<()> {
        self.watched.add(handle, token);
        // Added first, checked second: an exit after the check is an event
        // (or the next sweep) that finds the waiter. A check that cannot be
        // made leaves the pid to be read again.
        match self.exited(handle) {
            Ok(true) => self.watched.push_pending(handle, token),
            Ok(false) => {}
            Err(err) => self.mark_unknown(handle.pid, &err),
        }
        self.update_source();
        Ok(())
    }

    fn deregister(&mut self, _registry: &Registry, handle: &PidHandle) -> io::Result<()> {
        self.watched.remove(handle);
        self.update_source();
        Ok(())
    }

    fn register_source(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match &self.source {
            Source::Netlink { socket, retry, .. } => {
                registry.register(
                    &mut SourceFd(&socket.as_raw_fd()),
                    token,
                    Interest::READABLE,
                )?;
                registry.register(
                    &mut SourceFd(&retry.as_fd().as_raw_fd()),
                    token,
                    Interest::READABLE,
                )
            }
            Source::Poll { timer, .. } => registry.register(
                &mut SourceFd(&timer.as_fd().as_raw_fd()),
                token,
                Interest::READABLE,
            ),
        }
    }

    fn collect(&mut self, out: &mut Vec<Token>) {
        self.watched.drain_pending(out);
        match &mut self.source {
            Source::Netlink {
                socket, buf, retry, ..
            } => {
                // Reading clears the retry timer's readiness, if it fired.
                let _ = retry.wait();
                let (tgids, lost) = Self::read_events(socket, buf);
                if lost {
                    warn!("netlink backend: exit events were lost (receive buffer overflow); checking every watched process");
                    self.sweep(out);
                } else {
                    // Most exits on a host are of processes nobody
                    // watches: a hash lookup rules them out, with no read
                    // of /proc.
                    for tgid in tgids {
                        if self.watched.contains(tgid) {
                            self.check(tgid, out);
                        }
                    }
                    // And what could not be told before is read again.
                    let again: Vec<i32> = self.unknown.iter().copied().collect();
                    for pid in again {
                        self.check(pid, out);
                    }
                }
            }
            Source::Poll { timer, .. } => {
                // Reading clears the timer's readiness; EAGAIN means this
                // call came for pending exits only, and no sweep is due.
                if timer.wait().is_ok() {
                    self.sweep(out);
                }
            }
        }
        self.update_source();
        debug!("{} backend: {} exits collected", self.name(), out.len());
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

use std::os::unix::fs::MetadataExt;

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_message(what: u32, pid: u32, tgid: u32) -> Vec<u8> {
        let mut msg = listen_message(7);
        // Replace the op with a proc_event: what, cpu, timestamp, data.
        msg.truncate(NLMSG_HDRLEN + CN_MSG_LEN);
        msg.extend_from_slice(&what.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u64.to_ne_bytes());
        msg.extend_from_slice(&pid.to_ne_bytes());
        msg.extend_from_slice(&tgid.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 16]);
        let len = u32::try_from(msg.len()).expect("small");
        msg.splice(0..4, len.to_ne_bytes());
        msg
    }

    #[test]
    fn parses_exit_events_and_skips_others() {
        let mut datagram = exit_message(PROC_EVENT_EXIT, 101, 100);
        datagram.extend(exit_message(0x0000_0001, 200, 200)); // a fork
        datagram.extend(exit_message(PROC_EVENT_EXIT, 300, 300));
        let mut tgids = Vec::new();
        parse_exits(&datagram, &mut tgids);
        assert_eq!(tgids, vec![100, 300]);
        // Truncated and garbage input yields nothing and does not panic.
        let mut none = Vec::new();
        parse_exits(&datagram[..30], &mut none);
        parse_exits(&[0xff; 64], &mut none);
        parse_exits(&[], &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn a_failed_read_is_unknown_and_never_signalled() {
        let emfile = || Err(io::Error::from_raw_os_error(libc::EMFILE));
        let me = i32::try_from(std::process::id()).expect("pid fits");
        assert!(exited_given(me, 1, &emfile()).is_err());
        let handle = PidHandle {
            pid: me,
            start: 1,
            serial: 1,
        };
        let err = pids::kill_checked(
            &handle,
            Signal::TERM,
            Err(io::Error::from_raw_os_error(libc::EMFILE)),
        )
        .expect_err("refused");
        assert!(crate::watch::IdentityUnknown::is(&err), "{err}");
        assert!(!crate::watch::IdentityUnknown::is(&io::Error::other("x")));
    }

    #[test]
    fn poll_backend_reports_an_exit_once() {
        let mut watcher = ProcWatcher::poll(Duration::from_millis(10)).expect("timerfd");
        let poll = mio::Poll::new().expect("epoll");
        watcher
            .register_source(poll.registry(), Token(99))
            .expect("register timer");
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = Pid::try_from(i64::from(child.id())).expect("pid > 1");
        let (handle, id) = watcher.open(pid).expect("alive");
        assert_eq!(id.start, handle.start);
        watcher
            .register(poll.registry(), &handle, Token(1))
            .expect("register");
        let mut out = Vec::new();
        watcher.collect(&mut out);
        assert!(out.is_empty(), "alive, so nothing reported: {out:?}");
        child.kill().expect("kill");
        // A zombie until reaped: already counts as exited.
        std::thread::sleep(Duration::from_millis(50));
        assert!(watcher.has_exited(&handle));
        watcher.collect(&mut out);
        assert_eq!(out, vec![Token(1)]);
        out.clear();
        watcher.collect(&mut out);
        assert!(out.is_empty(), "reported once only");
        let _ = child.wait();
        assert_eq!(
            watcher.signal(&handle, Signal::TERM).expect("no error"),
            Delivery::Gone
        );
    }
}
