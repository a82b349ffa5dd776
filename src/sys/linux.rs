//! Linux system calls without safe wrappers in nix 0.32: `pidfd_open` and
//! `pidfd_send_signal`, and what tetherctl needs to pass a pidfd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

/// `pidfd_open(pid, 0)`: a descriptor that refers to one process for as
/// long as it is held, whatever happens to the pid number.
///
/// Errors are the kernel's: `ESRCH` (no such process), `EINVAL` (also for a
/// process that is just exiting), `EMFILE`/`ENFILE` (out of descriptors),
/// `ENOSYS` (kernel older than 5.3) or `EPERM` (seccomp).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or
    // -1; it reads no memory of ours.
    let ret = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) })?;
    let fd = libc::c_int::try_from(ret).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "pidfd_open returned a descriptor out of range",
        )
    })?;
    // SAFETY: the kernel just created `fd` for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signals exactly the process the
/// descriptor refers to. `ESRCH` means it has exited and been reaped; a
/// zombie still accepts the signal.
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: the descriptor is valid for the borrow; a null siginfo is
    // documented as "like kill(2)"; flags must be 0.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    })?;
    Ok(())
}

/// A non-blocking `NETLINK_CONNECTOR` datagram socket, not yet bound.
pub fn netlink_connector_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes three integers and returns a new descriptor
    // or -1; it reads no memory of ours.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        )
    })?;
    // SAFETY: the kernel just created `fd` for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a classic BPF program to a socket (`SO_ATTACH_FILTER`): the
/// kernel drops what the program rejects before it wakes anyone.
pub fn attach_socket_filter(fd: &OwnedFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        // The kernel copies the program and does not write to it.
        filter: program.as_ptr().cast_mut(),
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>())
        .map_err(|_| io::Error::other("sock_fprog size"))?;
    // SAFETY: `prog` and the program it points to live across the call;
    // the kernel reads exactly `len` bytes of `prog` and `prog.len`
    // instructions, and copies them.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&prog).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Joins or leaves the netlink multicast group `group`
/// (`NETLINK_ADD_MEMBERSHIP`, `NETLINK_DROP_MEMBERSHIP`).
pub fn netlink_membership(fd: &OwnedFd, group: u32, join: bool) -> io::Result<()> {
    let opt = if join {
        libc::NETLINK_ADD_MEMBERSHIP
    } else {
        libc::NETLINK_DROP_MEMBERSHIP
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<u32>())
        .map_err(|_| io::Error::other("u32 size"))?;
    // SAFETY: the option value is a u32 that lives across the call, and
    // `len` is its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            opt,
            std::ptr::from_ref(&group).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Whether `fd` is a pidfd, told without asking the file's own driver
/// anything: the name the kernel gives the descriptor in
/// `/proc/self/fd` is `anon_inode:[pidfd]` (pidfs keeps that name on 6.9
/// and later). Reading the link only formats a path; unlike `fstat` or
/// `fstatfs` it cannot wait on a FUSE server or any other file system.
pub fn is_pidfd(fd: &impl AsRawFd) -> bool {
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) => {
            let name = target.as_os_str().as_encoded_bytes();
            name == b"anon_inode:[pidfd]" || name.starts_with(b"pidfd:")
        }
        Err(_) => false,
    }
}
