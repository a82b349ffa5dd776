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
