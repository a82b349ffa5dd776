//! Every `unsafe` line of the crate lives under this module.
//!
//! Each wrapper makes exactly one foreign call, checks its return value and
//! hands back owned, safe types (`OwnedFd`, `io::Result`). Platform files are
//! chosen here, once; callers outside `sys` and `watch` never see `cfg`.

#[cfg(any(target_os = "linux", target_os = "android"))]
pub mod linux;

#[cfg(any(
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
pub mod bsd;

use std::io;

/// Turns a C-style `-1` return into the thread's `errno`.
fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

trait IsMinusOne {
    fn is_minus_one(&self) -> bool;
}

impl IsMinusOne for libc::c_int {
    fn is_minus_one(&self) -> bool {
        *self == -1
    }
}

impl IsMinusOne for libc::c_long {
    fn is_minus_one(&self) -> bool {
        *self == -1
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft
/// limit. Failure leaves the old limit, which is also returned.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= hard {
        return Ok(rlim_to_u64(soft));
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(rlim_to_u64(hard)),
        Err(_) => Ok(rlim_to_u64(soft)),
    }
}

/// `rlim_t` is u64 on Linux and i64 on the BSDs (where negative means
/// infinity).
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn rlim_to_u64(limit: libc::rlim_t) -> u64 {
    u64::try_from(limit).unwrap_or(u64::MAX)
}

/// Gives freed heap pages back to the kernel after a large one-off
/// allocation (parsing a big config), so the resident size reflects what
/// the daemon keeps rather than what it once parsed. A no-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes a plain size and only walks the
    // allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Credentials of the peer of a connected Unix socket, from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Effective uid when the peer connected.
    pub uid: u32,
    /// Its pid, where the kernel says (Linux); `None` elsewhere.
    pub pid: Option<i32>,
}

/// `SO_PEERCRED` on Linux; `getpeereid` elsewhere.
pub fn peer_credentials(fd: &impl std::os::fd::AsFd) -> io::Result<PeerCred> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let cred = nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(PeerCred {
            uid: cred.uid(),
            pid: Some(cred.pid()),
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let (uid, _gid) = nix::unistd::getpeereid(fd)?;
        Ok(PeerCred {
            uid: uid.as_raw(),
            pid: None,
        })
    }
}

/// Receives bytes and any descriptors (SCM_RIGHTS) without blocking.
/// Returns the byte count (0 at end of stream), the descriptors, and
/// whether some descriptors were cut off for lack of room.
pub fn recv_with_fds(
    fd: &impl std::os::fd::AsRawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>, bool)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    // macOS has no MSG_CMSG_CLOEXEC; the daemon never forks, so the
    // descriptors (dropped there anyway: no pidfds) cannot leak.
    #[cfg(not(target_os = "macos"))]
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    #[cfg(target_os = "macos")]
    let flags = MsgFlags::MSG_DONTWAIT;
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)?;
    let n = msg.bytes;
    let mut truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
            for raw in raw_fds {
                // SAFETY: the kernel installed `raw` in our table for this
                // message (SCM_RIGHTS); nothing else refers to it, so we
                // own it from here on.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fds.len() < max_fds {
                    fds.push(owned);
                } else {
                    truncated = true;
                }
            }
        }
    }
    Ok((n, fds, truncated))
}

/// Sends `bytes` with `fds` attached (SCM_RIGHTS) in one message.
pub fn send_with_fds(
    fd: &impl std::os::fd::AsRawFd,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::{AsRawFd, RawFd};

    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let iov = [io::IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    Ok(sendmsg::<()>(
        fd.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::empty(),
        None,
    )?)
}

/// Arms the kernel's parent-death signal for the calling process: the
/// kernel sends `sig` when the parent exits. Returns `Ok(false)` where the
/// OS has no such mechanism (macOS, OpenBSD, NetBSD).
///
/// On Linux (`PR_SET_PDEATHSIG`) "parent" means the *thread* that forked
/// us, and the setting is cleared on set-uid/set-gid exec; on FreeBSD
/// (`PROC_PDEATHSIG_CTL`) it is cleared by such an exec too. Callers must
/// say so to the user.
pub fn arm_parent_death_signal(sig: nix::sys::signal::Signal) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::sys::prctl::set_pdeathsig(sig)?;
        Ok(true)
    }
    #[cfg(target_os = "freebsd")]
    {
        let mut signo: libc::c_int = sig as libc::c_int;
        // SAFETY: procctl(P_PID, 0 = ourselves, PROC_PDEATHSIG_CTL) reads
        // one int through the pointer, which lives across the call.
        cvt(unsafe {
            libc::procctl(
                libc::P_PID,
                0,
                libc::PROC_PDEATHSIG_CTL,
                std::ptr::from_mut(&mut signo).cast(),
            )
        })?;
        Ok(true)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = sig;
        Ok(false)
    }
}

/// A descriptor on process `pid` that can be passed to tetherd (a Linux
/// pidfd), or `None` where the OS or kernel has none (kernels before 5.3,
/// pidfd_open forbidden by seccomp, macOS and the BSDs): then the caller
/// identifies the process by its start time instead.
pub fn process_descriptor(pid: i32) -> io::Result<Option<std::os::fd::OwnedFd>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        match linux::pidfd_open(pid) {
            Ok(fd) => Ok(Some(fd)),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => Ok(None),
            Err(err) => Err(err),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = pid;
        Ok(None)
    }
}

/// Takes over descriptor `fd`, inherited from whoever started us (s6's
/// notification descriptor): checks that it is open, and marks it
/// close-on-exec.
pub fn inherited_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is stdin, stdout or stderr"),
        ));
    }
    // SAFETY: `fd` is only borrowed for the two fcntl calls below, which
    // fail with EBADF (and nothing else happens) if it is not open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor {fd} is not open"),
        )
    })?;
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the descriptor is open (checked above) and was given to us
    // to own; nothing else in this process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How many descriptors this process has open.
pub fn count_open_fds() -> io::Result<u64> {
    let dir = if cfg!(any(target_os = "linux", target_os = "android")) {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    // The directory handle itself is one of the entries.
    let n = std::fs::read_dir(dir)?.count().saturating_sub(1);
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}
