//! The state file: what the daemon must remember across restarts.
//!
//! Two things: the bindings made over the control socket (each process
//! pinned to the identity proven at bind time, written before the client
//! is told OK), and the identity pins of configured pids that the config
//! did not pin itself: the first time the daemon sees such a pid it records
//! the process's identity, so that the same config line read after the
//! process died (or after a reboot) can never be taken to mean whoever has
//! the pid now. Pins and bindings carry the boot id they were taken in; a
//! binding from an earlier boot is dropped at restore, since none of its
//! processes can still exist.
//!
//! The file is JSON, written atomically (temporary file, fsync, rename,
//! fsync of the directory). A file that cannot be parsed is moved aside
//! and the daemon starts without it rather than crash-looping.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Pid;
use crate::watch::Identity;

/// The version written in the file; a different one is refused.
const STATE_VERSION: u32 = 1;

/// A pin recorded for a pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Taken in this boot: the process at the pid must have this identity.
    ThisBoot(Identity),
    /// Taken in an earlier boot: whatever has the pid now is not it.
    EarlierBoot {
        /// The identity recorded then.
        identity: Identity,
        /// The boot it was recorded in.
        boot_id: Box<str>,
    },
}

/// Pins of configured pids, by pid.
///
/// Kept compact (24 bytes a pin, boot ids of earlier boots interned),
/// since there are two for every unpinned configured binding.
#[derive(Debug, Default)]
pub struct Pins {
    map: HashMap<Pid, PackedPin>,
    /// Boot ids of earlier boots; `PackedPin::boot` is 1 + an index here.
    earlier_boots: Vec<Box<str>>,
    dirty: bool,
}

#[derive(Debug, Clone, Copy)]
struct PackedPin {
    start: u64,
    /// 0 when unknown (a pidfs inode is never 0).
    inode: u64,
    /// 0 for this boot, else 1 + index into `earlier_boots`.
    boot: u32,
}

impl Pins {
    /// The pin of `pid`, if one was recorded.
    pub fn get(&self, pid: Pid) -> Option<Pin> {
        let packed = self.map.get(&pid)?;
        let identity = Identity {
            start: packed.start,
            inode: (packed.inode != 0).then_some(packed.inode),
        };
        Some(match packed.boot {
            0 => Pin::ThisBoot(identity),
            n => Pin::EarlierBoot {
                identity,
                boot_id: self
                    .earlier_boots
                    .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
            },
        })
    }

    /// Records the identity first seen at `pid`.
    pub fn record(&mut self, pid: Pid, identity: Identity) {
        self.insert(pid, identity, 0);
        self.dirty = true;
    }

    fn insert(&mut self, pid: Pid, identity: Identity, boot: u32) {
        let packed = PackedPin {
            start: identity.start,
            inode: identity.inode.unwrap_or(0),
            boot,
        };
        self.map.insert(pid, packed);
    }

    /// Records a pin read from the state file, taken in `boot_id`.
    fn insert_earlier(&mut self, pid: Pid, identity: Identity, boot_id: String) {
        let idx = match self.earlier_boots.iter().position(|b| **b == *boot_id) {
            Some(idx) => idx,
            None => {
                self.earlier_boots.push(boot_id.into_boxed_str());
                self.earlier_boots.len() - 1
            }
        };
        let boot = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        self.insert(pid, identity, boot);
    }

    /// Gives back spare capacity after a large load.
    pub fn shrink_to_fit(&mut self) {
        self.map.shrink_to_fit();
    }

    /// Every pin, with the boot id it was taken in (`this_boot` for the
    /// current one).
    fn records<'a>(
        &'a self,
        this_boot: &'a str,
    ) -> impl Iterator<Item = (Pid, Identity, &'a str)> + 'a {
        self.map.iter().map(move |(pid, packed)| {
            let boot = match packed.boot {
                0 => this_boot,
                n => self
                    .earlier_boots
                    .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                    .map_or("unknown", |b| &**b),
            };
            let identity = Identity {
                start: packed.start,
                inode: (packed.inode != 0).then_some(packed.inode),
            };
            (*pid, identity, boot)
        })
    }

    /// Forgets every pin whose pid `keep` does not accept.
    pub fn retain(&mut self, mut keep: impl FnMut(Pid) -> bool) {
        let before = self.map.len();
        self.map.retain(|pid, _| keep(*pid));
        if self.map.len() != before {
            self.dirty = true;
        }
    }

    /// How many pins are recorded.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no pin is recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether something changed since the last save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

/// The state on disk: the state file (socket bindings) and, beside it, the
/// pins file (`state.pins.json` for `state.json`).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    pins_path: PathBuf,
    boot_id: String,
}

/// The state file proper: socket bindings, small and rewritten on every
/// bind, so a bind's fsync does not grow with the number of config pins.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsOnDisk {
    version: u32,
    #[serde(default)]
    next_id: u64,
    #[serde(default)]
    bindings: Vec<SavedBinding>,
}

/// The pins file beside it: rewritten only when configured pids are first
/// seen or forgotten (at load and reload).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsOnDisk {
    version: u32,
    #[serde(default)]
    pins: Vec<PinRecord>,
}

/// A socket binding as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedBinding {
    /// Its id.
    pub id: u64,
    /// The uid that made it.
    pub uid: u32,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The boot it was made in.
    pub boot_id: String,
    /// The parent, pinned.
    pub parent: SavedProc,
    /// The children, pinned.
    pub children: Vec<SavedProc>,
    /// Signal name.
    pub signal: String,
    /// Grace, as in the config ("5s", "never").
    pub grace: String,
    /// Kill mode.
    pub kill: String,
}

/// A pinned process of a saved binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedProc {
    /// Its pid.
    pub pid: i32,
    /// Its start time.
    pub start: u64,
    /// Its pidfs inode, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
}

/// What the state file held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Pins of configured pids.
    pub pins: Pins,
    /// Socket bindings to restore.
    pub bindings: Vec<SavedBinding>,
    /// The next binding id to hand out.
    pub next_id: u64,
    /// Why the file was not used, if it was not.
    pub warning: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRecord {
    pid: i32,
    start: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inode: Option<u64>,
    boot_id: String,
}

impl StateFile {
    /// A state file at `path` for the boot `boot_id`.
    pub fn new(path: PathBuf, boot_id: String) -> Self {
        let pins_path = path.with_extension("pins.json");
        StateFile {
            path,
            pins_path,
            boot_id,
        }
    }

    /// Where the pins live.
    pub fn pins_path(&self) -> &Path {
        &self.pins_path
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the current boot.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Reads the state. A missing file is an empty state. A file that
    /// cannot be read or parsed is moved aside (the warning says where) and
    /// the daemon goes on without it.
    pub fn load(&self) -> Loaded {
        let mut loaded = Loaded::default();
        let mut warnings = Vec::new();
        match read_or_set_aside(&self.path, "state file", |bytes| {
            let on_disk: BindingsOnDisk =
                serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            check_version(on_disk.version)?;
            Ok(on_disk)
        }) {
            Ok(Some(on_disk)) => {
                loaded.bindings = on_disk.bindings;
                loaded.next_id = on_disk.next_id;
            }
            Ok(None) => {}
            Err(warning) => warnings.push(warning),
        }
        match read_or_set_aside(&self.pins_path, "pins file", |bytes| {
            self.decode_pins(bytes)
        }) {
            Ok(Some(pins)) => loaded.pins = pins,
            Ok(None) => {}
            Err(warning) => warnings.push(warning),
        }
        if !warnings.is_empty() {
            loaded.warning = Some(warnings.join("; "));
        }
        loaded
    }

    fn decode_pins(&self, bytes: &[u8]) -> Result<Pins, String> {
        let on_disk: PinsOnDisk = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        check_version(on_disk.version)?;
        let mut pins = Pins::default();
        for record in on_disk.pins {
            let pid = Pid::try_from(i64::from(record.pid))?;
            let identity = Identity {
                start: record.start,
                inode: record.inode,
            };
            if record.boot_id == self.boot_id {
                pins.insert(pid, identity, 0);
            } else {
                pins.insert_earlier(pid, identity, record.boot_id);
            }
        }
        Ok(pins)
    }

    /// Writes the socket bindings atomically; with `durable`, also fsyncs
    /// (before a bind or unbind is acknowledged).
    pub fn save_bindings(
        &self,
        bindings: Vec<SavedBinding>,
        next_id: u64,
        durable: bool,
    ) -> io::Result<()> {
        let on_disk = BindingsOnDisk {
            version: STATE_VERSION,
            next_id,
            bindings,
        };
        let bytes = serde_json::to_vec(&on_disk).map_err(io::Error::other)?;
        write_atomically(&self.path, &bytes, durable)
    }

    /// Writes the pins atomically and durably, and marks them clean.
    pub fn save_pins(&self, pins: &mut Pins) -> io::Result<()> {
        let mut records: Vec<PinRecord> = pins
            .records(&self.boot_id)
            .map(|(pid, identity, boot_id)| PinRecord {
                pid: pid.get(),
                start: identity.start,
                inode: identity.inode,
                boot_id: boot_id.to_owned(),
            })
            .collect();
        records.sort_by_key(|r| r.pid);
        let on_disk = PinsOnDisk {
            version: STATE_VERSION,
            pins: records,
        };
        let bytes = serde_json::to_vec(&on_disk).map_err(io::Error::other)?;
        write_atomically(&self.pins_path, &bytes, true)?;
        pins.dirty = false;
        Ok(())
    }
}

fn check_version(version: u32) -> Result<(), String> {
    if version == STATE_VERSION {
        Ok(())
    } else {
        Err(format!(
            "version {version} (this tetherd reads version {STATE_VERSION})"
        ))
    }
}

/// Reads and decodes `path`: `Ok(None)` if it does not exist, `Err` with a
/// warning if it cannot be read or decoded (then it is moved aside, so the
/// daemon starts rather than crash-loops, and the file stays for a look).
fn read_or_set_aside<T>(
    path: &Path,
    what: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<Option<T>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(format!(
                "{}: cannot read the {what}: {err}; starting without it",
                path.display()
            ))
        }
    };
    match decode(&bytes) {
        Ok(value) => Ok(Some(value)),
        // The parser's words may quote the file's bytes: one line, always.
        Err(why) => Err(match (set_aside(path), crate::protocol::escape_controls(&why)) {
            (Ok(to), why) => format!(
                "{}: corrupt {what} ({why}); moved it to {} and starting without it",
                path.display(),
                to.display()
            ),
            (Err(err), why) => format!(
                "{}: corrupt {what} ({why}) that cannot be moved aside ({err}); starting without it",
                path.display()
            ),
        }),
    }
}

fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let to = PathBuf::from(name);
    fs::rename(path, &to)?;
    Ok(to)
}

/// Writes `bytes` to `path` so that a crash at any moment leaves either the
/// old file or the new one: temporary file, rename. With `durable`, the
/// file is fsynced before the rename and the directory after it, so the
/// new content survives a crash too.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: i64) -> Pid {
        Pid::try_from(n).unwrap()
    }

    #[test]
    fn round_trip_keeps_boot_of_each_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let file = StateFile::new(path.clone(), "boot-a".into());
        let mut pins = Pins::default();
        pins.record(
            pid(100),
            Identity {
                start: 5,
                inode: Some(9),
            },
        );
        let saved = SavedBinding {
            id: 7,
            uid: 1000,
            name: Some("qemu".into()),
            boot_id: "boot-a".into(),
            parent: SavedProc {
                pid: 10,
                start: 1,
                inode: None,
            },
            children: vec![SavedProc {
                pid: 11,
                start: 2,
                inode: Some(3),
            }],
            signal: "SIGTERM".into(),
            grace: "5s".into(),
            kill: "process".into(),
        };
        file.save_pins(&mut pins).unwrap();
        file.save_bindings(vec![saved.clone()], 8, true).unwrap();
        assert!(!pins.is_dirty());

        let same_boot = file.load();
        assert!(same_boot.warning.is_none());
        assert_eq!(
            same_boot.pins.get(pid(100)),
            Some(Pin::ThisBoot(Identity {
                start: 5,
                inode: Some(9)
            }))
        );
        assert_eq!(same_boot.bindings, vec![saved]);
        assert_eq!(same_boot.next_id, 8);

        let other_boot = StateFile::new(path, "boot-b".into()).load();
        assert!(
            matches!(other_boot.pins.get(pid(100)), Some(Pin::EarlierBoot { boot_id, .. }) if &*boot_id == "boot-a")
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        let loaded = StateFile::new(path.clone(), "b".into()).load();
        assert!(loaded.pins.is_empty());
        let warning = loaded.warning.unwrap();
        assert!(warning.contains("corrupt state file"), "{warning}");
        assert!(!path.exists());
        let moved: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(moved.len(), 1);
    }

    #[test]
    fn wrong_version_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, br#"{"version": 99}"#).unwrap();
        let loaded = StateFile::new(path, "b".into()).load();
        assert!(loaded.warning.unwrap().contains("version 99"));
    }
}
