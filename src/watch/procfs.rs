//! What every Linux backend reads from `/proc`: start times, parents,
//! groups, owners, the process table and the boot id.
//!
//! Nothing here is race-free on its own: a pid read from `/proc` may be
//! reused the moment after. Each backend makes the reads trustworthy its
//! own way (a pidfd still unreadable after the read, or the start time
//! read again and compared).

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Owner, ProcEntry};
use crate::vocab::Pid;

/// The parts of `/proc/PID/stat` tether uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z` (zombie), `X` (dead), ...
    pub state: u8,
    /// Field 4.
    pub ppid: i32,
    /// Field 5.
    pub pgid: i32,
    /// Field 9: the kernel's `PF_*` flags.
    pub flags: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting to be reaped, or
    /// on its way out).
    pub fn exited(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }

    /// As a process-table entry.
    pub fn entry(&self, pid: i32) -> ProcEntry {
        ProcEntry {
            pid,
            ppid: self.ppid,
            pgid: self.pgid,
            start: self.start,
        }
    }
}

/// Reads `/proc/PID/stat`. `Ok(None)`: there is no such process.
///
/// Read as bytes: the command name is whatever the executable's name was,
/// cut by the kernel at 15 bytes, possibly in the middle of a UTF-8
/// letter, so the line need not be valid UTF-8.
pub fn stat(pid: i32) -> io::Result<Option<Stat>> {
    let stat = match read_proc(&format!("/proc/{pid}/stat")) {
        Ok(bytes) => parse_stat(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat: cannot parse it"),
            )
        })?,
        Err(err) if is_gone(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    LAST_STAT.with(|last| last.set(Some((pid, stat))));
    Ok(Some(stat))
}

thread_local! {
    /// The last `/proc/PID/stat` read on this thread, so that a backend's
    /// `open` followed by the kernel-thread check of the same process
    /// reads the file once, not twice (see [`kernel_thread`]).
    static LAST_STAT: std::cell::Cell<Option<(i32, Stat)>> = const { std::cell::Cell::new(None) };
}

/// Whether a read error of `/proc/PID/...` means there is no such process:
/// ENOENT, or ESRCH when it was reaped while the file was being read.
fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// Reads a file under `/proc` whole, as bytes (the kernel's error kept
/// as it is, so that ESRCH and EMFILE can be told apart). `/proc` files
/// say their size is 0: `fs::read` and `File::read_to_end` would ask for
/// it (statx, lseek) and then read in small probes. Through `take`, which
/// asks nothing, a buffer as large as a `stat` line reads most of them in
/// one call (and one more that says the end).
fn read_proc(path: &str) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(1024);
    fs::File::open(path)?
        .take(u64::MAX)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces, parentheses and any bytes (not
/// necessarily UTF-8), so fields are counted from the last `)`, and only
/// what follows it is read as text.
pub fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    // After the `)`, the first field is field 3 (state); field 22 is the
    // 20th of them.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    Some(Stat {
        state: *fields.first()?.as_bytes().first()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The value of the line `key` (with its colon, e.g. `Uid:`) of a
/// `/proc` key-value file, as text; other lines may hold any bytes (the
/// `Name:` line of `status` is the command name).
fn field<'a>(bytes: &'a [u8], key: &str) -> Option<&'a str> {
    bytes
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(key.as_bytes()))
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// The uids and gids from `/proc/PID/status`. `Ok(None)`: there is
/// no such process.
pub fn owner(pid: i32) -> io::Result<Option<Owner>> {
    let status = match read_proc(&format!("/proc/{pid}/status")) {
        Ok(status) => status,
        Err(err) if is_gone(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    let ids = |key: &str| -> Option<[u32; 3]> {
        let values: Vec<u32> = field(&status, key)?
            .split_ascii_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        match values.as_slice() {
            [real, effective, saved, ..] => Some([*real, *effective, *saved]),
            _ => None,
        }
    };
    match (ids("Uid:"), ids("Gid:")) {
        (Some(uids), Some(gids)) => Ok(Some(Owner { uids, gids })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status: cannot parse the Uid and Gid lines"),
        )),
    }
}

/// The owner of `pid`, trusted only if `exited`, asked after the read,
/// says the process the backend's handle refers to was still there: then
/// the `/proc` entry read was its own, not a successor's at the same pid.
/// `Ok(None)`: it has exited.
pub fn owner_while_alive(
    pid: Pid,
    exited: impl FnOnce() -> io::Result<bool>,
) -> io::Result<Option<Owner>> {
    let owner = owner(pid.get());
    if exited()? {
        return Ok(None);
    }
    owner
}

/// The process-table entry of `pid`, trusted as in [`owner_while_alive`];
/// `exited` is given the stat that was read (a backend without pidfds
/// judges from it).
pub fn entry_while_alive(
    pid: Pid,
    exited: impl FnOnce(&io::Result<Option<Stat>>) -> io::Result<bool>,
) -> io::Result<Option<ProcEntry>> {
    let stat = stat(pid.get());
    if exited(&stat)? {
        return Ok(None);
    }
    Ok(stat?.map(|s| s.entry(pid.get())))
}

/// Every process in `/proc`, skipping those that exit during the walk.
pub fn process_table() -> io::Result<Vec<ProcEntry>> {
    let mut table = Vec::new();
    for dirent in fs::read_dir("/proc")? {
        let Ok(dirent) = dirent else {
            continue;
        };
        let Some(pid) = dirent
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(Some(stat)) = stat(pid) {
            table.push(stat.entry(pid));
        }
    }
    Ok(table)
}

/// The process group of pid 1. Pid 1 never exits, so its entry cannot
/// change owner.
pub fn init_group() -> Option<i32> {
    stat(1).ok().flatten().map(|s| s.pgid)
}

/// The kernel's id of this boot.
pub fn boot_id() -> io::Result<String> {
    let bytes = read_proc("/proc/sys/kernel/random/boot_id")?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// The pid a pidfd refers to, from its fdinfo (`Pid:` line): `Ok(None)`
/// once the process has been reaped. An error if `fd` is not a pidfd.
pub fn pidfd_pid(fd: &OwnedFd) -> io::Result<Option<i32>> {
    let fdinfo = read_proc(&format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let named = field(&fdinfo, "Pid:")
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor passed is not a pidfd",
            )
        })?;
    Ok((named > 0).then_some(named))
}

/// Whether the process a pidfd refers to has exited (the pidfd is
/// readable then, zombie or not). Never blocks.
pub fn pidfd_exited(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) => n > 0,
        // poll on one valid descriptor with a zero timeout cannot block;
        // an error here (EINTR, ENOMEM) says nothing about the process.
        Err(_) => false,
    }
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat` (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether the process at `pid` that started at `start` is a kernel
/// thread; `None` if no such process is there any more. The last read of
/// `/proc/PID/stat` on this thread answers if it was of that pid and
/// showed that start time (it is then the same process, and a process
/// never becomes a kernel thread), so the check right after a backend
/// opened the process costs no second read; otherwise the file is read.
pub fn kernel_thread(pid: i32, start: u64) -> io::Result<Option<bool>> {
    let stat = match LAST_STAT.with(std::cell::Cell::get) {
        Some((last, stat)) if last == pid && stat.start == start => Some(stat),
        _ => stat(pid)?,
    };
    Ok(stat
        .filter(|stat| stat.start == start)
        .map(|stat| stat.flags & PF_KTHREAD != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_after_odd_comm() {
        let line =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let stat = parse_stat(line.as_bytes()).expect("parses");
        assert_eq!(stat.start, 987654);
        assert_eq!(stat.state, b'S');
        assert!(!stat.exited());
        assert_eq!(
            stat.entry(1234),
            ProcEntry {
                pid: 1234,
                ppid: 1,
                pgid: 1234,
                start: 987654
            }
        );
        let zombie = line.replace(" S 1 ", " Z 1 ");
        assert!(parse_stat(zombie.as_bytes()).expect("parses").exited());
        assert_eq!(parse_stat(b"1 (init) S 0"), None);
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn parses_stat_with_a_name_cut_in_the_middle_of_a_letter() {
        // "мониторинг" cut at 15 bytes by the kernel: 7 letters and the
        // first byte of the 8th, which is not valid UTF-8.
        let name = "мониторинг".as_bytes();
        let mut line = b"4321 (".to_vec();
        line.extend_from_slice(&name[..15]);
        line.extend_from_slice(
            b") S 7 4321 4321 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 55 1000 100\n",
        );
        assert!(std::str::from_utf8(&line).is_err());
        let stat = parse_stat(&line).expect("parses");
        assert_eq!((stat.ppid, stat.pgid, stat.start), (7, 4321, 55));
        let mut status = b"Name:\t".to_vec();
        status.extend_from_slice(&name[..15]);
        status.extend_from_slice(b"\nUmask:\t0022\nUid:\t1\t2\t3\t4\n");
        assert_eq!(field(&status, "Uid:"), Some("\t1\t2\t3\t4"));
    }

    #[test]
    fn own_process_is_in_the_table_and_has_an_owner() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let table = process_table().expect("/proc");
        assert!(table.iter().any(|e| e.pid == me));
        let owner = owner(me).expect("status").expect("alive");
        assert_eq!(owner.uids[0], nix::unistd::getuid().as_raw());
        assert_eq!(stat(i32::MAX).expect("no error"), None);
    }

    #[test]
    fn kthreadd_is_a_kernel_thread_and_we_are_not() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = stat(me).unwrap().unwrap().start;
        let kthread = kernel_thread(me, start).unwrap().unwrap();
        assert!(!kthread);
        assert_eq!(Some(start), stat(me).unwrap().map(|s| s.start));
        // Pid 2 is kthreadd in the initial pid namespace only.
        let kthreadd = stat(2).ok().flatten().map(|s| s.start);
        if let Some(Ok(Some(kthread))) = kthreadd.map(|start| kernel_thread(2, start)) {
            let comm = fs::read_to_string("/proc/2/comm").unwrap_or_default();
            assert_eq!(kthread, comm.trim() == "kthreadd", "{comm}");
        }
    }
}
