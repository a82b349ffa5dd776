//! macOS and the BSDs: what the kqueue backend reads about processes.
//!
//! One [`ProcInfo`] per process, from sysctl `kern.proc.pid` (FreeBSD,
//! DragonFly, OpenBSD; `kern.proc2` on NetBSD) or libproc's
//! `proc_pidinfo(PROC_PIDTBSDINFO)` on macOS, whose `kinfo_proc` the libc
//! crate does not define. Each read is one system call, so the fields of
//! one `ProcInfo` (start time, uids, parent, group) always belong to the
//! same process.
//!
//! Start times are microseconds. Where the kernel reports them as
//! boot time plus uptime at start (every BSD), boot time is subtracted
//! again so that a clock step does not change a process's identity; macOS
//! records the wall-clock time of the fork itself and is used as it is.

use std::io;

/// One process as the kernel showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its process group.
    pub pgid: i32,
    /// Its start time in microseconds (see the module documentation).
    pub start: u64,
    /// Whether it has exited and waits to be reaped.
    pub zombie: bool,
    /// Real uid.
    pub ruid: u32,
    /// Saved set-user-id.
    pub svuid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Real, effective and saved gids.
    pub gids: [u32; 3],
}

/// Seconds and microseconds (of whatever integer types the platform's
/// structs use) to microseconds; negative parts count as 0.
fn micros(sec: impl TryInto<u64>, usec: impl TryInto<u64>) -> u64 {
    let sec: u64 = sec.try_into().unwrap_or(0);
    let usec: u64 = usec.try_into().unwrap_or(0);
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

/// Reads a sysctl whose value is a plain C struct (or an array of them)
/// into `out`; returns the number of bytes the kernel wrote.
#[cfg(not(target_os = "macos"))]
fn sysctl_into<T: Copy>(mib: &[libc::c_int], out: &mut [T]) -> io::Result<usize> {
    let mut len: libc::size_t = std::mem::size_of_val(out);
    let namelen = libc::c_uint::try_from(mib.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sysctl name too long"))?;
    // SAFETY: `mib` is `namelen` valid integers; `out` is `len` writable
    // bytes of plain C structs, for which any bytes are valid; no new
    // value is set (null, 0). The kernel writes at most `len` bytes and
    // updates `len`.
    let ret = unsafe {
        libc::sysctl(
            mib.as_ptr().cast_mut(),
            namelen,
            out.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    super::cvt(ret)?;
    Ok(len)
}

/// `kern.boottime`: when the system booted, in microseconds since the
/// epoch.
pub fn boot_time() -> io::Result<u64> {
    let mib = [libc::CTL_KERN, libc::KERN_BOOTTIME];
    let mut tv = [libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    }];
    #[cfg(not(target_os = "macos"))]
    sysctl_into(&mib, &mut tv)?;
    #[cfg(target_os = "macos")]
    {
        let mut len: libc::size_t = std::mem::size_of_val(&tv);
        // SAFETY: as in `sysctl_into`: a two-integer name, a writable
        // timeval of `len` bytes, no new value.
        let ret = unsafe {
            libc::sysctl(
                mib.as_ptr().cast_mut(),
                2,
                tv.as_mut_ptr().cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        super::cvt(ret)?;
    }
    let [tv] = tv;
    Ok(micros(tv.tv_sec, tv.tv_usec))
}

/// A string sysctl by name (`kern.boot_id`, `kern.bootsessionuuid`).
/// OpenBSD has no sysctlbyname: always an error there.
#[cfg(target_os = "openbsd")]
pub fn sysctl_string(name: &str) -> io::Result<String> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{name}: OpenBSD has no sysctl names"),
    ))
}

/// A string sysctl by name (`kern.boot_id`, `kern.bootsessionuuid`).
#[cfg(not(target_os = "openbsd"))]
pub fn sysctl_string(name: &str) -> io::Result<String> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in sysctl name"))?;
    let mut buf = [0u8; 128];
    let mut len: libc::size_t = buf.len();
    // SAFETY: `name` is a NUL-terminated string; `buf` is `len` writable
    // bytes; no new value is set. The kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    super::cvt(ret)?;
    let bytes = buf.get(..len).unwrap_or_default();
    let text = bytes.split(|&b| b == 0).next().unwrap_or_default();
    Ok(String::from_utf8_lossy(text).into_owned())
}

#[cfg(any(target_os = "freebsd", target_os = "dragonfly"))]
mod imp {
    use super::{micros, sysctl_into, ProcInfo};
    use std::io;

    #[cfg(target_os = "freebsd")]
    fn info(kp: &libc::kinfo_proc, boot: u64) -> ProcInfo {
        let start = micros(kp.ki_start.tv_sec, kp.ki_start.tv_usec);
        ProcInfo {
            pid: kp.ki_pid,
            ppid: kp.ki_ppid,
            pgid: kp.ki_pgid,
            start: start.saturating_sub(boot),
            zombie: kp.ki_stat == libc::SZOMB,
            ruid: kp.ki_ruid,
            svuid: kp.ki_svuid,
            euid: kp.ki_uid,
            gids: [
                kp.ki_rgid,
                kp.ki_groups.first().copied().unwrap_or(kp.ki_rgid),
                kp.ki_svgid,
            ],
        }
    }

    #[cfg(target_os = "dragonfly")]
    fn info(kp: &libc::kinfo_proc, boot: u64) -> ProcInfo {
        let start = micros(kp.kp_start.tv_sec, kp.kp_start.tv_usec);
        ProcInfo {
            pid: kp.kp_pid,
            ppid: kp.kp_ppid,
            pgid: kp.kp_pgid,
            start: start.saturating_sub(boot),
            zombie: matches!(kp.kp_stat, libc::procstat::SZOMB),
            ruid: kp.kp_ruid,
            svuid: kp.kp_svuid,
            euid: kp.kp_uid,
            gids: [
                kp.kp_rgid,
                kp.kp_groups.first().copied().unwrap_or(kp.kp_rgid),
                kp.kp_svgid,
            ],
        }
    }

    fn empty() -> libc::kinfo_proc {
        // SAFETY: kinfo_proc is a plain C struct of integers, arrays and
        // pointers, for which all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }

    pub fn proc_info(pid: i32) -> io::Result<Option<ProcInfo>> {
        let boot = super::boot_time()?;
        let mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
        let mut out = [empty()];
        match sysctl_into(&mib, &mut out) {
            Ok(0) => Ok(None),
            Ok(_) => {
                let [kp] = &out;
                Ok(Some(info(kp, boot)))
            }
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub fn all_procs() -> io::Result<Vec<ProcInfo>> {
        let boot = super::boot_time()?;
        #[cfg(target_os = "freebsd")]
        let mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PROC, 0];
        #[cfg(target_os = "dragonfly")]
        let mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_ALL, 0];
        let mut capacity = 1024;
        loop {
            let mut out = vec![empty(); capacity];
            match sysctl_into(&mib, &mut out) {
                Ok(len) => {
                    let n = len / std::mem::size_of::<libc::kinfo_proc>();
                    return Ok(out.iter().take(n).map(|kp| info(kp, boot)).collect());
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOMEM) && capacity < 1 << 22 => {
                    capacity *= 4;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(any(target_os = "openbsd", target_os = "netbsd"))]
mod imp {
    use super::{micros, sysctl_into, ProcInfo};
    use std::io;

    #[cfg(target_os = "openbsd")]
    type Kinfo = libc::kinfo_proc;
    #[cfg(target_os = "netbsd")]
    type Kinfo = libc::kinfo_proc2;

    #[cfg(target_os = "openbsd")]
    const KERN_PROC: libc::c_int = libc::KERN_PROC;
    #[cfg(target_os = "netbsd")]
    const KERN_PROC: libc::c_int = libc::KERN_PROC2;

    /// `SZOMB` and `SDEAD` of `p_stat` (sys/proc.h on both systems).
    const SZOMB: i8 = 5;
    const SDEAD: i8 = 6;

    fn info(kp: &Kinfo, boot: u64) -> ProcInfo {
        let start = micros(kp.p_ustart_sec, kp.p_ustart_usec);
        ProcInfo {
            pid: kp.p_pid,
            ppid: kp.p_ppid,
            pgid: kp.p__pgid,
            start: start.saturating_sub(boot),
            zombie: kp.p_stat == SZOMB || kp.p_stat == SDEAD,
            ruid: kp.p_ruid,
            svuid: kp.p_svuid,
            euid: kp.p_uid,
            gids: [kp.p_rgid, kp.p_gid, kp.p_svgid],
        }
    }

    fn empty() -> Kinfo {
        // SAFETY: the kinfo struct is plain C integers and arrays, for
        // which all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// `CTL_KERN, KERN_PROC(2), op, arg, elem_size, elem_count`.
    fn mib(op: libc::c_int, arg: libc::c_int, count: usize) -> [libc::c_int; 6] {
        let size = libc::c_int::try_from(std::mem::size_of::<Kinfo>()).unwrap_or(0);
        let count = libc::c_int::try_from(count).unwrap_or(libc::c_int::MAX);
        [libc::CTL_KERN, KERN_PROC, op, arg, size, count]
    }

    pub fn proc_info(pid: i32) -> io::Result<Option<ProcInfo>> {
        let boot = super::boot_time()?;
        let mut out = [empty()];
        match sysctl_into(&mib(libc::KERN_PROC_PID, pid, 1), &mut out) {
            Ok(0) => Ok(None),
            Ok(_) => {
                let [kp] = &out;
                Ok(Some(info(kp, boot)))
            }
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub fn all_procs() -> io::Result<Vec<ProcInfo>> {
        let boot = super::boot_time()?;
        let mut capacity = 1024;
        loop {
            let mut out = vec![empty(); capacity];
            match sysctl_into(&mib(libc::KERN_PROC_ALL, 0, capacity), &mut out) {
                Ok(len) => {
                    let n = len / std::mem::size_of::<Kinfo>();
                    return Ok(out.iter().take(n).map(|kp| info(kp, boot)).collect());
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOMEM) && capacity < 1 << 22 => {
                    capacity *= 4;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use super::{micros, ProcInfo};
    use std::io;

    /// `SZOMB` of `pbi_status` (sys/proc.h).
    const SZOMB: u32 = 5;

    pub fn proc_info(pid: i32) -> io::Result<Option<ProcInfo>> {
        // SAFETY: proc_bsdinfo is a plain C struct of integers and arrays,
        // for which all-zero bytes are a valid value.
        let mut bsd: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
        let size = libc::c_int::try_from(std::mem::size_of::<libc::proc_bsdinfo>())
            .map_err(|_| io::Error::other("proc_bsdinfo size"))?;
        // SAFETY: `bsd` is `size` writable bytes; proc_pidinfo writes at
        // most that many and returns how many it wrote.
        let n = unsafe {
            libc::proc_pidinfo(
                pid,
                libc::PROC_PIDTBSDINFO,
                0,
                std::ptr::from_mut(&mut bsd).cast(),
                size,
            )
        };
        if n <= 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // A zombie has no task left to describe: it has exited.
                Some(libc::ESRCH) | Some(0) | None => Ok(None),
                _ => Err(err),
            };
        }
        if n < size {
            return Ok(None);
        }
        Ok(Some(ProcInfo {
            pid: i32::try_from(bsd.pbi_pid).unwrap_or(pid),
            ppid: i32::try_from(bsd.pbi_ppid).unwrap_or(0),
            pgid: i32::try_from(bsd.pbi_pgid).unwrap_or(0),
            start: micros(bsd.pbi_start_tvsec, bsd.pbi_start_tvusec),
            zombie: bsd.pbi_status == SZOMB,
            ruid: bsd.pbi_ruid,
            svuid: bsd.pbi_svuid,
            euid: bsd.pbi_uid,
            gids: [bsd.pbi_rgid, bsd.pbi_gid, bsd.pbi_svgid],
        }))
    }

    pub fn all_procs() -> io::Result<Vec<ProcInfo>> {
        let mut capacity = 4096usize;
        loop {
            let mut pids = vec![0 as libc::pid_t; capacity];
            let bytes = libc::c_int::try_from(capacity * std::mem::size_of::<libc::pid_t>())
                .map_err(|_| io::Error::other("pid buffer too large"))?;
            // SAFETY: `pids` is `bytes` writable bytes; proc_listallpids
            // writes at most that many and returns the number of pids.
            let n = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast(), bytes) };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            if n >= capacity && capacity < 1 << 22 {
                capacity *= 4;
                continue;
            }
            let mut table = Vec::with_capacity(n);
            for &pid in pids.iter().take(n) {
                if let Ok(Some(info)) = proc_info(pid) {
                    table.push(info);
                }
            }
            return Ok(table);
        }
    }
}

pub use imp::{all_procs, proc_info};
