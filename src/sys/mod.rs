//! Every `unsafe` line of the crate lives under this module.
//!
//! Each wrapper makes exactly one foreign call, checks its return value and
//! hands back owned, safe types (`OwnedFd`, `io::Result`). Platform files are
//! chosen here, once; callers outside `sys` and `watch` never see `cfg`.

#[cfg(linux_like)]
pub mod linux;

#[cfg(bsd_like)]
pub mod bsd;

pub mod cgroup;

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

/// Opens the directory `name`, relative to `dir` if given, as a handle for
/// walking a path one component at a time: never through a symlink
/// (`O_NOFOLLOW`; `O_DIRECTORY`, so a symlink or a file there fails), and
/// on Linux with `O_PATH`, which needs no read permission on it.
pub fn open_dir_nofollow(
    dir: Option<std::os::fd::BorrowedFd<'_>>,
    name: &std::path::Path,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    #[cfg(linux_like)]
    let access = OFlag::O_PATH;
    #[cfg(not(linux_like))]
    let access = OFlag::O_RDONLY;
    let flags = access | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = nix::sys::stat::Mode::empty();
    Ok(match dir {
        Some(dir) => nix::fcntl::openat(dir, name, flags, mode)?,
        None => nix::fcntl::open(name, flags, mode)?,
    })
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
    #[cfg(linux_like)]
    {
        let cred = nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(PeerCred {
            uid: cred.uid(),
            pid: Some(cred.pid()),
        })
    }
    #[cfg(not(linux_like))]
    {
        let (uid, _gid) = nix::unistd::getpeereid(fd)?;
        Ok(PeerCred {
            uid: uid.as_raw(),
            pid: None,
        })
    }
}

/// The most descriptors the kernel attaches to one message (`SCM_MAX_FD`
/// in linux/scm.h; the BSDs and macOS allow fewer). The receive buffer is
/// sized for this many, so the kernel never has to drop descriptors it
/// could not install: a dropped descriptor's last close would run in the
/// receiving thread, where a hostile one (a lingering socket, a file on a
/// FUSE mount) can block.
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// What one `recvmsg` brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0 at end of stream).
    pub n: usize,
    /// Every descriptor the kernel installed for this message, owned.
    pub fds: Vec<std::os::fd::OwnedFd>,
    /// Whether the kernel cut the control data (MSG_CTRUNC): some
    /// descriptors were dropped, so the request they came with is refused.
    pub truncated: bool,
}

/// Receives bytes and any descriptors (SCM_RIGHTS) without blocking.
///
/// Every descriptor the kernel installed is owned by the result on every
/// path, truncated control data included (nix's `cmsgs()` gives up on
/// MSG_CTRUNC, which leaked the ones already installed).
pub fn recv_with_fds(fd: &impl std::os::fd::AsRawFd, buf: &mut [u8]) -> io::Result<Received> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    // u64 elements keep the buffer aligned for cmsghdr; room for the
    // header and MAX_FDS_PER_MESSAGE ints, rounded up.
    const WORDS: usize = (MAX_FDS_PER_MESSAGE * std::mem::size_of::<RawFd>() + 64) / 8 + 1;
    let mut control = [0u64; WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid
    // value (no name, no iovecs, no control data); the fields used are set
    // below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = std::ptr::from_mut(&mut iov);
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // socklen_t on some targets, size_t on others.
    #[allow(clippy::useless_conversion)]
    {
        msg.msg_controllen = (WORDS * 8)
            .try_into()
            .map_err(|_| io::Error::other("control buffer size"))?;
    }
    // macOS has no MSG_CMSG_CLOEXEC; the daemon never forks, so the
    // descriptors cannot leak into a child there either.
    #[cfg(not(target_os = "macos"))]
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    #[cfg(target_os = "macos")]
    let flags = libc::MSG_DONTWAIT;
    // SAFETY: `msg` points at one iovec over `buf` and at `control`, both
    // alive and exclusively borrowed across the call, with their true
    // lengths; the kernel writes at most that much into each.
    let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    let n = usize::try_from(ret).map_err(|_| io::Error::last_os_error())?;
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    let mut fds = Vec::new();
    // Walk every control message the kernel wrote, whatever the flags
    // say: each SCM_RIGHTS descriptor in it is ours to close.
    // SAFETY: `msg` was filled in by recvmsg; CMSG_FIRSTHDR only reads
    // its control pointer and length.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a
        // pointer to a complete header inside `control`.
        let header = unsafe { std::ptr::read_unaligned(cmsg) };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a length from its argument.
            let empty = usize::try_from(unsafe { libc::CMSG_LEN(0) }).unwrap_or(usize::MAX);
            #[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
            let total = usize::try_from(header.cmsg_len).unwrap_or(0);
            let data_len = total.saturating_sub(empty);
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points just past the header, inside the
            // same control message.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count` and the kernel wrote `count` ints
                // after the header (cmsg_len says so); the data may be
                // unaligned, hence read_unaligned.
                let raw = unsafe { std::ptr::read_unaligned(data.wrapping_add(i)) };
                if raw >= 0 {
                    // SAFETY: the kernel installed `raw` in our table for
                    // this message (SCM_RIGHTS); nothing else refers to
                    // it, so we own it from here on.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: `cmsg` is a header inside `msg`'s control buffer (see
        // above); CMSG_NXTHDR bounds-checks against msg_controllen.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received { n, fds, truncated })
}

/// Whether `fd` is a process descriptor that may be kept from a client:
/// a Linux pidfd. Elsewhere there are none, and every passed descriptor is
/// refused.
pub fn is_process_descriptor(fd: &impl std::os::fd::AsRawFd) -> bool {
    #[cfg(linux_like)]
    {
        linux::is_pidfd(fd)
    }
    #[cfg(not(linux_like))]
    {
        let _ = fd;
        false
    }
}

/// How many bytes wait unread in a socket's receive queue (`FIONREAD`).
/// Descriptors passed over a Unix stream socket always come with at least
/// one byte, so 0 means none are queued either.
pub fn pending_input(fd: &impl std::os::fd::AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which lives
    // across the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, std::ptr::from_mut(&mut n)) })?;
    Ok(usize::try_from(n).unwrap_or(0))
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
    #[cfg(linux_like)]
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
    #[cfg(linux_like)]
    {
        match linux::pidfd_open(pid) {
            Ok(fd) => Ok(Some(fd)),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => Ok(None),
            Err(err) => Err(err),
        }
    }
    #[cfg(not(linux_like))]
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

/// Sends one datagram from `socket` to the abstract Unix address `name`
/// (Linux's `@name`); an error elsewhere, where there are none.
pub fn send_to_abstract(
    socket: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    bytes: &[u8],
) -> io::Result<()> {
    #[cfg(linux_like)]
    {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(bytes, &addr)?;
        Ok(())
    }
    #[cfg(not(linux_like))]
    {
        let _ = (socket, name, bytes);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "abstract socket addresses exist on Linux only",
        ))
    }
}

/// How many descriptors this process has open.
pub fn count_open_fds() -> io::Result<u64> {
    let dir = if cfg!(linux_like) {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    // The directory handle itself is one of the entries.
    let n = std::fs::read_dir(dir)?.count().saturating_sub(1);
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}
