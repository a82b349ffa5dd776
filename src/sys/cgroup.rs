//! cgroup v2 as files: where the hierarchy is mounted and where tetherd's
//! own cgroups live (`locate`), making and removing one, moving a pid in,
//! reading its members and whether it is populated, killing it whole, and
//! the inotify descriptor that says when `cgroup.events` changed.
//!
//! Only Linux has cgroups; elsewhere `locate` refuses with the reason and
//! the rest is never reached. Nothing here proves which process a pid
//! names: the caller holds a handle across every write and read.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where tetherd's cgroups live, found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The cgroup2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
    /// in the hybrid layout).
    pub mount: PathBuf,
    /// The directory under which each binding's cgroup `b<id>` is made.
    pub root: PathBuf,
    /// Whether `cgroup.kill` exists (Linux 5.14); without it a cgroup is
    /// frozen, each member killed, and thawed.
    pub has_kill: bool,
    /// How the root was chosen, for `--list-backends` and `status`.
    pub how: &'static str,
}

/// The prefix of every binding's cgroup name; the rest is the binding's
/// public id.
pub const PREFIX: char = 'b';

/// The prefix of the parent of a user's cgroups; the rest is the uid.
pub const USER_PREFIX: char = 'u';

/// The mount point and root of the first cgroup2 mount in a
/// `/proc/self/mountinfo` text (the mount point unescaped).
#[cfg(test)]
pub fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    cgroup2_mounts(mountinfo).into_iter().next()
}

/// Every cgroup2 mount in a `/proc/self/mountinfo` text (the hierarchy
/// is one per system: a second mount shows the same tree).
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split(' ');
        let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        out.push((PathBuf::from(unescape(point)), unescape(root)));
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` text: the `0::` line.
pub fn v2_path(cgroup_file: &str) -> Option<&str> {
    cgroup_file
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
}

/// Whether a `cgroup.events` text says the cgroup has processes.
pub fn populated_in(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|line| line.strip_prefix("populated "))
        .map(|v| v.trim() != "0")
}

/// Where the cgroups go, given the mount and tetherd's own cgroup path:
/// under systemd (a `.service` cgroup, delegated by `Delegate=yes`) the
/// siblings of a leaf `tetherd` in it; otherwise `<mount>/tether`.
/// Returns the root and, under systemd, the leaf tetherd moves into.
pub fn choose_root(mount: &Path, mount_root: &str, own: &str) -> (PathBuf, Option<PathBuf>) {
    let relative = own
        .strip_prefix(mount_root)
        .unwrap_or(own)
        .trim_start_matches('/');
    let own_dir = mount.join(relative);
    let delegated = relative.ends_with(".service") || relative.ends_with(".service/tetherd");
    if delegated {
        let base = if relative.ends_with("/tetherd") {
            own_dir.parent().map_or(own_dir.clone(), Path::to_path_buf)
        } else {
            own_dir
        };
        let leaf = base.join("tetherd");
        (base, Some(leaf))
    } else {
        (mount.join("tether"), None)
    }
}

/// Finds where tetherd's cgroups live (`root_override`: `[daemon]
/// cgroup_root`). With `create`, makes the root (and, under systemd,
/// moves tetherd into its leaf); without, only looks. Refuses with the
/// reason when cgroup v2 is absent or not writable.
pub fn locate(root_override: Option<&Path>, create: bool) -> Result<Place, String> {
    if !cfg!(linux_like) {
        return Err(if cfg!(target_os = "freebsd") {
            "cgroups are Linux only, and FreeBSD's reaper (procctl PROC_REAP_ACQUIRE) holds only the descendants of a process that was already a reaper when they were forked, not a captive tetherd did not start".into()
        } else {
            "cgroups are Linux only; this OS has no facility that holds a tree of processes tetherd did not start".into()
        });
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mounts = cgroup2_mounts(&mountinfo);
    let (mut mount, mount_root) = mounts
        .first()
        .cloned()
        .ok_or("no cgroup2 hierarchy is mounted (/proc/self/mountinfo has no cgroup2 line)")?;
    let (root, leaf, how) = match root_override {
        Some(root) => {
            // The mount it is under (the deepest, if mounts nest).
            mount = mounts
                .iter()
                .filter(|(m, r)| root.starts_with(m) && r == "/")
                .max_by_key(|(m, _)| m.as_os_str().len())
                .map(|(m, _)| m.clone())
                .ok_or_else(|| {
                    format!(
                        "cgroup_root {} is not under a cgroup2 mount (the first is {})",
                        root.display(),
                        mount.display()
                    )
                })?;
            (root.to_path_buf(), None, "[daemon] cgroup_root")
        }
        None => {
            let own = fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
            let own = v2_path(&own).ok_or("/proc/self/cgroup has no cgroup v2 (0::) line")?;
            let (root, leaf) = choose_root(&mount, &mount_root, own);
            let how = if leaf.is_some() {
                "the service's delegated cgroup"
            } else {
                "a subtree of its own"
            };
            (root, leaf, how)
        }
    };
    if create {
        if let Some(leaf) = &leaf {
            make(leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
            let me = std::process::id().to_string();
            fs::write(leaf.join("cgroup.procs"), me)
                .map_err(|e| format!("cannot move tetherd into {}: {e}", leaf.display()))?;
        } else {
            make(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        }
    }
    let procs = root.join("cgroup.procs");
    if create || root.exists() {
        if !procs.exists() {
            return Err(format!(
                "{} is not a cgroup v2 directory (it has no cgroup.procs)",
                root.display()
            ));
        }
        nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("{} is not writable: {e}", procs.display()))?;
    } else {
        nix::unistd::access(&mount, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("{} is not writable: {e}", mount.display()))?;
    }
    let has_kill = mount.join("cgroup.kill").exists() || root.join("cgroup.kill").exists();
    Ok(Place {
        mount,
        root,
        has_kill,
        how,
    })
}

/// An exclusive lock on a cgroup root, held while tetherd uses it: one
/// tetherd per root (the names `b<id>` are each daemon's own ids).
#[derive(Debug)]
pub struct RootLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Takes the lock on `root` without waiting; refuses with the reason when
/// another process holds it.
pub fn lock_root(root: &Path) -> Result<RootLock, String> {
    let dir = fs::File::open(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(|lock| RootLock { _lock: lock })
        .map_err(|(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => format!(
                "another tetherd uses the cgroup root {} (one tetherd per root; set [daemon] cgroup_root)",
                root.display()
            ),
            errno => format!("cannot lock {}: {errno}", root.display()),
        })
}

/// The `u<uid>` directories directly under `root`: the parents of users'
/// cgroups.
pub fn user_parents(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_user = name
            .to_str()
            .and_then(|n| n.strip_prefix(USER_PREFIX))
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if is_user && entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// `mkdir`, an existing directory being fine.
pub fn make(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Moves the process `pid` (all its threads) into `dir`.
pub fn move_pid(dir: &Path, pid: i32) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// The pids in `dir` (not its descendants'), as the kernel lists them.
pub fn pids(dir: &Path) -> io::Result<Vec<i32>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Whether `dir` or a cgroup below it has a process.
pub fn populated(dir: &Path) -> io::Result<bool> {
    let text = fs::read_to_string(dir.join("cgroup.events"))?;
    populated_in(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "cgroup.events has no populated line",
        )
    })
}

/// The cgroup v2 path of `pid`, relative to the mount, as
/// `/proc/<pid>/cgroup` says (`None`: no such process).
pub fn cgroup_of(pid: i32) -> io::Result<Option<String>> {
    match fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => Ok(v2_path(&text).map(str::to_owned)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `pid` has no child now, from the `children` file of each of
/// its threads (`/proc/<pid>/task/<tid>/children`): `Some(true)` when
/// every one was read empty and the threads were the same before and
/// after (a thread that exits hands its children to another, maybe one
/// already read), or the process is gone; `Some(false)` when one names a
/// child; `None` where the kernel has no such file (it needs
/// CONFIG_PROC_CHILDREN) or something changed or failed.
pub fn childless(pid: i32) -> Option<bool> {
    let threads = |pid: i32| -> io::Result<Vec<std::ffi::OsString>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
            out.push(entry?.file_name());
        }
        out.sort();
        Ok(out)
    };
    let before = match threads(pid) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Some(true),
        Err(_) => return None,
    };
    let task = Path::new("/proc").join(pid.to_string()).join("task");
    for tid in &before {
        let text = fs::read_to_string(task.join(tid).join("children")).ok()?;
        if !text.trim().is_empty() {
            return Some(false);
        }
    }
    (threads(pid).ok()? == before).then_some(true)
}

/// SIGKILLs every process in `dir` and below at once (`cgroup.kill`).
pub fn kill(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("cgroup.kill"), "1")
}

/// Freezes (`true`) or thaws `dir`.
pub fn freeze(dir: &Path, frozen: bool) -> io::Result<()> {
    fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

/// The names `b<id>` directly under `root`, with their ids.
pub fn children(root: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.file_type()?.is_dir() {
            out.push((id, entry.path()));
        }
    }
    Ok(out)
}

/// Removes an empty cgroup.
pub fn remove(dir: &Path) -> io::Result<()> {
    fs::remove_dir(dir)
}

/// An inotify descriptor watching `cgroup.events` files for IN_MODIFY.
#[derive(Debug)]
pub struct Watcher {
    #[cfg(linux_like)]
    fd: std::os::fd::OwnedFd,
}

#[cfg(linux_like)]
impl Watcher {
    /// A non-blocking, close-on-exec inotify descriptor.
    pub fn new() -> io::Result<Watcher> {
        use std::os::fd::FromRawFd;
        // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
        let fd = super::cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        // SAFETY: the kernel just created `fd` and nothing else owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Watcher { fd })
    }

    /// The raw descriptor, to register with mio.
    pub fn raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Watches `<dir>/cgroup.events`; returns the watch descriptor.
    pub fn add(&self, dir: &Path) -> io::Result<i32> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.join("cgroup.events").as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
        // SAFETY: the descriptor is valid for the borrow and `path` is a
        // NUL-terminated string that outlives the call.
        super::cvt(unsafe {
            libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY)
        })
    }

    /// Stops watching `wd` (already gone when the cgroup was removed).
    pub fn remove(&self, wd: i32) {
        use std::os::fd::AsRawFd;
        // SAFETY: both are integers; a stale wd gives EINVAL, ignored.
        let _ = unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    /// Reads every pending event; returns the watch descriptors named.
    pub fn drain(&self) -> Vec<i32> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut file = match self.fd.try_clone() {
            Ok(fd) => fs::File::from(fd),
            Err(_) => return out,
        };
        let header = std::mem::size_of::<libc::inotify_event>();
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut at = 0;
            while let Some(event) = buf.get(at..at + header) {
                let wd = event
                    .get(0..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(-1, i32::from_ne_bytes);
                let len = event
                    .get(12..16)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_ne_bytes);
                out.push(wd);
                at += header + usize::try_from(len).unwrap_or(usize::MAX / 2);
                if at >= n {
                    break;
                }
            }
        }
        out
    }
}

#[cfg(not(linux_like))]
impl Watcher {
    /// Never made: cgroups are Linux only.
    pub fn new() -> io::Result<Watcher> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "cgroups are Linux only",
        ))
    }

    /// Never reached.
    pub fn raw(&self) -> i32 {
        -1
    }

    /// Never reached.
    pub fn add(&self, _dir: &Path) -> io::Result<i32> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "cgroups are Linux only",
        ))
    }

    /// Never reached.
    pub fn remove(&self, _wd: i32) {}

    /// Never reached.
    pub fn drain(&self) -> Vec<i32> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
";
    const UNIFIED: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    #[cfg(target_os = "linux")]
    #[allow(clippy::unwrap_used)]
    fn a_process_without_children_is_known_as_such() {
        if !Path::new("/proc/self/task")
            .join(std::process::id().to_string())
            .join("children")
            .exists()
        {
            eprintln!("skipped: no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(childless(pid), Some(true));
        // The child may hang off any of the test harness's threads.
        assert_eq!(childless(me), Some(false));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(childless(pid), Some(true));
    }

    #[test]
    fn the_mount_is_found_in_both_layouts() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".into()))
        );
        assert_eq!(
            cgroup2_mount(UNIFIED),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".into()))
        );
        assert_eq!(
            cgroup2_mount("31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro"),
            None
        );
        let escaped = "40 1 0:40 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(escaped),
            Some((PathBuf::from("/mnt/my cg"), "/".into()))
        );
    }

    #[test]
    fn own_cgroup_and_events_are_read() {
        let text = "12:memory:/\n1:name=systemd:/init.scope\n0::/system.slice/tetherd.service\n";
        assert_eq!(v2_path(text), Some("/system.slice/tetherd.service"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
        assert_eq!(populated_in("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(populated_in("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(populated_in("frozen 0\n"), None);
    }

    #[test]
    fn the_root_is_a_delegated_subtree_under_systemd_and_its_own_otherwise() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(
            choose_root(mount, "/", "/system.slice/tetherd.service"),
            (
                PathBuf::from("/sys/fs/cgroup/system.slice/tetherd.service"),
                Some(PathBuf::from(
                    "/sys/fs/cgroup/system.slice/tetherd.service/tetherd"
                ))
            )
        );
        // Restarted within its leaf already.
        assert_eq!(
            choose_root(mount, "/", "/system.slice/tetherd.service/tetherd").0,
            PathBuf::from("/sys/fs/cgroup/system.slice/tetherd.service")
        );
        assert_eq!(
            choose_root(Path::new("/sys/fs/cgroup/unified"), "/", "/"),
            (PathBuf::from("/sys/fs/cgroup/unified/tether"), None)
        );
        assert_eq!(
            choose_root(mount, "/", "/user.slice/session-3.scope"),
            (PathBuf::from("/sys/fs/cgroup/tether"), None)
        );
    }
}
