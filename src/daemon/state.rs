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
//!
//! Nobody else may choose what the daemon reads back. The temporary file
//! is created exclusively (`O_CREAT|O_EXCL`, never following a symlink)
//! under an unpredictable name, mode 0600, so a file planted in its place
//! is never written to or renamed into place. (`O_TMPFILE` would not help:
//! `linkat` cannot replace the state file, so the new content needs a
//! name of its own before the rename anyway.) A file is read only if it is
//! a regular file (not a symlink or FIFO; the open never blocks), owned by
//! the daemon's uid, writable by nobody else, and at most
//! [`MAX_FILE_BYTES`]; anything else is refused with a warning, moved
//! aside where possible, and the daemon starts without it. The directory
//! and each of its ancestors must be owned by the daemon's uid or root and
//! writable by no one else, except that an ancestor may be a sticky
//! directory such as /tmp; the state directory itself may be sticky and
//! writable by others only for a daemon that is not root. A directory
//! that fails this is neither read nor written.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Pid;
use crate::watch::Identity;

use super::journal::{self, Journal, Log};
use super::pins::{EntryKey, Pins};
#[cfg(test)]
use super::pins::{Pin, MIN_RETIRED_PINS};
#[cfg(test)]
use crate::config::{BindingSpec, PidSource, PidfileBindingSpec, ProcSpec};

/// The version written in the file; a different one is refused.
const STATE_VERSION: u32 = journal::JOURNAL_VERSION;

/// The largest state or pins file read back (64 MiB: about 700,000 pins,
/// far more than the bindings of any host).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The state on disk: the state file (socket bindings) and, beside it, the
/// pins file (`state.pins.json` for `state.json`), each a snapshot and the
/// journals of what changed since (see `journal`).
pub struct StateFile {
    path: PathBuf,
    pins_path: PathBuf,
    boot_id: String,
    bindings_log: Journal<BindingsLog>,
    pins_log: Journal<PinsLog>,
    /// The ids of the socket bindings the state file holds (or may hold,
    /// after a failed write): an unbind of one of these is journalled.
    written: HashSet<u64>,
    /// The next id the state file holds.
    written_next_id: u64,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .field("bindings_log", &self.bindings_log)
            .field("pins_log", &self.pins_log)
            .field("n_written", &self.written.len())
            .finish_non_exhaustive()
    }
}

/// The state file's snapshot: socket bindings, and the first journal
/// generation it does not cover (version 1, before journals, had none).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsOnDisk {
    version: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    journal: u64,
    #[serde(default)]
    next_id: u64,
    #[serde(default)]
    bindings: Vec<SavedBinding>,
}

/// [`BindingsOnDisk`], written from borrowed bindings.
#[derive(Serialize)]
struct BindingsOut<'a> {
    version: u32,
    journal: u64,
    next_id: u64,
    bindings: Vec<&'a SavedBinding>,
}

/// The pins file's snapshot: written whole at load and reload; pins first
/// seen in between are journalled.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsOnDisk {
    version: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    journal: u64,
    #[serde(default)]
    pins: Vec<PinRecord>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A record of the state file's journal: `{"bound":{...}}`,
/// `{"unbound":7}`, `{"next_id":9}`. A binding's fields may grow (optional
/// ones, read with their default by older records).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum BindingRecord {
    Bound(Box<SavedBinding>),
    Unbound(u64),
    NextId(u64),
}

/// A record of the pins file's journal: `{"pin":{...}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum PinsJournalRecord {
    Pin(PinRecord),
}

/// The state file's snapshot and journal folded.
#[derive(Debug, Default)]
pub(super) struct BindingsValue {
    next_id: u64,
    bindings: std::collections::BTreeMap<u64, SavedBinding>,
}

#[derive(Debug)]
pub(super) struct BindingsLog;

impl Log for BindingsLog {
    type Value = BindingsValue;

    fn decode(bytes: &[u8]) -> Result<(BindingsValue, u64), String> {
        let on_disk: BindingsOnDisk = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        check_version(on_disk.version)?;
        let bindings = on_disk.bindings.into_iter().map(|b| (b.id, b)).collect();
        Ok((
            BindingsValue {
                next_id: on_disk.next_id,
                bindings,
            },
            on_disk.journal,
        ))
    }

    fn apply(value: &mut BindingsValue, record: &[u8]) -> Result<(), String> {
        match serde_json::from_slice(record).map_err(|e| e.to_string())? {
            BindingRecord::Bound(binding) => {
                value.next_id = value.next_id.max(binding.id.saturating_add(1));
                value.bindings.insert(binding.id, *binding);
            }
            BindingRecord::Unbound(id) => {
                value.bindings.remove(&id);
            }
            BindingRecord::NextId(next) => value.next_id = value.next_id.max(next),
        }
        Ok(())
    }

    fn encode(value: &BindingsValue, generation: u64) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&BindingsOut {
            version: STATE_VERSION,
            journal: generation,
            next_id: value.next_id,
            bindings: value.bindings.values().collect(),
        })
        .map_err(|e| e.to_string())
    }
}

#[derive(Debug)]
pub(super) struct PinsLog;

impl Log for PinsLog {
    /// Pin records by entry (0 for legacy ones) and pid.
    type Value = std::collections::BTreeMap<(u64, i32), PinRecord>;

    fn decode(bytes: &[u8]) -> Result<(Self::Value, u64), String> {
        let on_disk: PinsOnDisk = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        check_version(on_disk.version)?;
        let pins = on_disk
            .pins
            .into_iter()
            .map(|p| ((p.entry.unwrap_or(EntryKey::LEGACY.0), p.pid), p))
            .collect();
        Ok((pins, on_disk.journal))
    }

    fn apply(value: &mut Self::Value, record: &[u8]) -> Result<(), String> {
        match serde_json::from_slice(record).map_err(|e| e.to_string())? {
            PinsJournalRecord::Pin(p) => {
                value.insert((p.entry.unwrap_or(EntryKey::LEGACY.0), p.pid), p);
            }
        }
        Ok(())
    }

    fn encode(value: &Self::Value, generation: u64) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&PinsOnDisk {
            version: STATE_VERSION,
            journal: generation,
            pins: value.values().cloned().collect(),
        })
        .map_err(|e| e.to_string())
    }
}

/// A socket or rule binding as the state file keeps it.
///
/// Fields added later are optional and left out when they hold their
/// default, so a file that holds none of what they describe is the same
/// as before they existed (no new format version): `origin` and `rule`
/// appear only in the records of rule bindings. An older tetherd takes a
/// journal record holding them for a corrupt tail (it restores the
/// records before it) and a snapshot holding them for a corrupt file
/// (set aside): going back to it drops the rule bindings held, at least.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedBinding {
    /// Its id.
    pub id: u64,
    /// The uid that made it; for a rule binding, its launcher's uid (0
    /// when the launcher ran as root).
    pub uid: u32,
    /// Who made it: absent for a socket binding, `"rule"` for one a rule
    /// made when its captive started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The name of the rule that made it (rule bindings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
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
    /// Journal records replayed.
    pub n_records: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PinRecord {
    /// The entry that took the pin ([`EntryKey`]); missing in files written
    /// before pins had entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<u64>,
    pid: i32,
    start: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inode: Option<u64>,
    boot_id: String,
    /// The retirement round, for a pin of an entry no longer configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<u32>,
}

impl StateFile {
    /// A state file at `path` for the boot `boot_id`.
    pub fn new(path: PathBuf, boot_id: String) -> Self {
        let pins_path = path.with_extension("pins.json");
        StateFile {
            bindings_log: Journal::new(path.clone(), "state file"),
            pins_log: Journal::new(pins_path.clone(), "pins file"),
            path,
            pins_path,
            boot_id,
            written: HashSet::new(),
            written_next_id: 0,
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

    /// Reads the state: each snapshot and its journals. A missing file is
    /// an empty state. A snapshot that cannot be read or parsed is moved
    /// aside (the warning says where) and the daemon goes on without it; a
    /// journal's torn or corrupt tail is left out with a warning naming
    /// the file and offset, and the journal is set aside at the first
    /// write, which is a whole snapshot.
    pub fn load(&mut self) -> Loaded {
        let mut loaded = Loaded::default();
        if let Err(why) = check_dir(state_dir(&self.path)) {
            if why.kind() != io::ErrorKind::NotFound {
                loaded.warning = Some(format!(
                    "{why}; starting without the state file {} and the pins file {}",
                    self.path.display(),
                    self.pins_path.display()
                ));
            }
            return loaded;
        }
        let mut warnings = Vec::new();
        match journal::read::<BindingsLog>(&self.path, "state file", None) {
            Ok(mut read) => {
                warnings.append(&mut read.warnings);
                self.bindings_log.loaded(&mut read);
                loaded.next_id = read.value.next_id;
                loaded.bindings = std::mem::take(&mut read.value.bindings)
                    .into_values()
                    .collect();
                loaded.n_records = read.n_records;
            }
            Err(why) => warnings.push(why),
        }
        match journal::read::<PinsLog>(&self.pins_path, "pins file", None) {
            Ok(mut read) => {
                warnings.append(&mut read.warnings);
                self.pins_log.loaded(&mut read);
                match self.pins_of(std::mem::take(&mut read.value).into_values()) {
                    Ok(pins) => loaded.pins = pins,
                    Err(why) => warnings.push(format!(
                        "{}: pins left out: {why}",
                        self.pins_path.display()
                    )),
                }
            }
            Err(why) => warnings.push(why),
        }
        if !warnings.is_empty() {
            loaded.warning = Some(warnings.join("; "));
        }
        loaded
    }

    fn pins_of(&self, records: impl Iterator<Item = PinRecord>) -> Result<Pins, String> {
        let mut pins = Pins::default();
        for record in records {
            let pid = Pid::try_from(i64::from(record.pid))?;
            let identity = Identity {
                start: record.start,
                inode: record.inode,
            };
            let entry = EntryKey(record.entry.unwrap_or(EntryKey::LEGACY.0));
            let retired = record.retired.unwrap_or(0);
            pins.round = pins.round.max(retired);
            if record.boot_id == self.boot_id {
                pins.insert(entry, pid, identity, 0, retired);
            } else {
                pins.insert_earlier(entry, pid, identity, record.boot_id, retired);
            }
        }
        Ok(pins)
    }

    /// Whether the next write of the bindings must be whole (the first
    /// after a load).
    pub fn needs_full(&self) -> bool {
        self.bindings_log.needs_full()
    }

    /// Writes the socket bindings whole, durably: a new snapshot, and the
    /// journals it covers removed.
    pub fn save_bindings(&mut self, bindings: Vec<SavedBinding>, next_id: u64) -> io::Result<()> {
        self.bindings_log.write_full(|generation| {
            serde_json::to_vec(&BindingsOut {
                version: STATE_VERSION,
                journal: generation,
                next_id,
                bindings: bindings.iter().collect(),
            })
            .map_err(|e| e.to_string())
        })?;
        self.written = bindings.iter().map(|b| b.id).collect();
        self.written_next_id = next_id;
        Ok(())
    }

    /// Whether the state file holds (or may hold) socket binding `id`.
    pub fn holds(&self, id: u64) -> bool {
        self.written.contains(&id)
    }

    /// Appends what changed to the journal, with one write (and with
    /// `durable` one fdatasync): `bound` bindings new to the file, ids in
    /// `unbound` it no longer holds, and the next id if it grew. On
    /// failure nothing is taken as written, except that a binding whose
    /// record may have reached the file is still journalled as unbound
    /// when it goes.
    pub fn append_bindings(
        &mut self,
        bound: &[SavedBinding],
        unbound: &[u64],
        next_id: u64,
        durable: bool,
    ) -> io::Result<()> {
        let mut next = self.written_next_id;
        let push = |log: &mut Journal<BindingsLog>, record: &BindingRecord| {
            serde_json::to_vec(record)
                .map(|bytes| log.push(&bytes))
                .map_err(io::Error::other)
        };
        for binding in bound {
            push(
                &mut self.bindings_log,
                &BindingRecord::Bound(Box::new(binding.clone())),
            )?;
            next = next.max(binding.id.saturating_add(1));
            self.written.insert(binding.id);
        }
        for &id in unbound {
            push(&mut self.bindings_log, &BindingRecord::Unbound(id))?;
        }
        if next_id > next {
            push(&mut self.bindings_log, &BindingRecord::NextId(next_id))?;
            next = next_id;
        }
        self.bindings_log.commit(durable)?;
        for id in unbound {
            self.written.remove(id);
        }
        self.written_next_id = next;
        Ok(())
    }

    /// Writes the pins: whole after a load or reload, else the pins
    /// recorded since as journal records; durably; marks them clean.
    pub fn save_pins(&mut self, pins: &mut Pins) -> io::Result<()> {
        if pins.full || self.pins_log.needs_full() {
            let mut records: Vec<PinRecord> = pins
                .records(&self.boot_id)
                .map(|(entry, pid, identity, boot_id, retired)| {
                    pin_record(entry, pid, identity, boot_id, retired)
                })
                .collect();
            records.sort_by_key(|r| (r.pid, r.entry));
            self.pins_log.write_full(|generation| {
                serde_json::to_vec(&PinsOnDisk {
                    version: STATE_VERSION,
                    journal: generation,
                    pins: records,
                })
                .map_err(|e| e.to_string())
            })?;
        } else {
            for key in std::mem::take(&mut pins.changed) {
                let Some(packed) = pins.map.get(&key) else {
                    continue;
                };
                let (entry, pid) = key;
                let record = pin_record(
                    entry,
                    pid,
                    packed.identity(),
                    pins.boot_of(packed, &self.boot_id),
                    packed.retired,
                );
                let bytes = serde_json::to_vec(&PinsJournalRecord::Pin(record))
                    .map_err(io::Error::other)?;
                self.pins_log.push(&bytes);
            }
            if let Err(err) = self.pins_log.commit(true) {
                // What was queued is gone: write them all next time.
                pins.full = true;
                return Err(err);
            }
        }
        pins.changed.clear();
        pins.full = false;
        pins.dirty = false;
        Ok(())
    }
}

fn pin_record(
    entry: EntryKey,
    pid: Pid,
    identity: Identity,
    boot_id: &str,
    retired: u32,
) -> PinRecord {
    PinRecord {
        entry: Some(entry.0),
        pid: pid.get(),
        start: identity.start,
        inode: identity.inode,
        boot_id: boot_id.to_owned(),
        retired: (retired != 0).then_some(retired),
    }
}

fn check_version(version: u32) -> Result<(), String> {
    // Version 1 is the format before journals: read, and replaced by a
    // version 2 snapshot at the first write.
    if version == STATE_VERSION || version == 1 {
        Ok(())
    } else {
        Err(format!(
            "version {version} (this tetherd reads versions 1 and {STATE_VERSION})"
        ))
    }
}

/// Reads and decodes `path`: `Ok(None)` if it does not exist, `Err` with a
/// warning if it cannot be read or decoded (then it is moved aside, so the
/// daemon starts rather than crash-loops, and the file stays for a look).
pub(super) fn read_or_set_aside<T>(
    path: &Path,
    what: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<Option<T>, String> {
    let bytes = match read_trusted(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(Unread::Io(err)) => {
            return Err(format!(
                "{}: cannot read the {what}: {err}; starting without it",
                path.display()
            ))
        }
        Err(Unread::Untrusted(why)) => {
            return Err(match set_aside(path) {
                Ok(to) => format!(
                    "{}: refused the {what}: {why}; moved it to {} and starting without it",
                    path.display(),
                    to.display()
                ),
                Err(err) => format!(
                    "{}: refused the {what}: {why}; it cannot be moved aside ({err}); starting without it",
                    path.display()
                ),
            })
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

/// Why a file was not read.
pub(super) enum Unread {
    /// The read failed.
    Io(io::Error),
    /// The file is not one the daemon may trust; says why.
    Untrusted(String),
}

/// The bytes of `path` if it is a file only the daemon could have written:
/// a regular file (never following a symlink, never blocking on a FIFO),
/// owned by the daemon's euid, not writable by group or others, and at
/// most [`MAX_FILE_BYTES`] long. `Ok(None)` if there is no file.
pub(super) fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>, Unread> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_file(&meta)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Unread::Io(err)),
    }
    // O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO swapped in since the
    // check above fails or opens at once, and is refused below.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Unread::Io(err)),
    };
    // What is checked is what is read, even if the path was replaced.
    check_file(&file.metadata().map_err(Unread::Io)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Unread::Io)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(Unread::Untrusted(format!(
            "it grew past {MAX_FILE_BYTES} bytes while being read"
        )));
    }
    Ok(Some(bytes))
}

fn check_file(meta: &fs::Metadata) -> Result<(), Unread> {
    let me = nix::unistd::geteuid().as_raw();
    let kind = meta.file_type();
    let untrusted = |why: String| Err(Unread::Untrusted(why));
    if kind.is_symlink() {
        return untrusted("it is a symlink".into());
    }
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return untrusted(format!("it is {what}, not a regular file"));
    }
    if meta.uid() != me {
        return untrusted(format!(
            "it is owned by uid {}, not by tetherd's uid {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return untrusted(format!(
            "it is writable by group or others (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return untrusted(format!(
            "it is {} bytes, more than the {MAX_FILE_BYTES} a state file may have",
            meta.len()
        ));
    }
    Ok(())
}

/// The directory holding `path`.
pub(super) fn state_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Checks that nobody but the daemon's uid and root can replace what is in
/// `dir`: it and every ancestor (symlinks resolved) are owned by the
/// daemon's euid or root and writable by nobody else, except that an
/// ancestor may be sticky (as /tmp is: then only the owner of an entry can
/// rename or remove it, and the entry below is checked in turn). `dir`
/// itself may be sticky and writable by others only when the daemon is not
/// root: its files are still refused unless they are the daemon's, and
/// root must not keep its state where any user can create names. A
/// missing directory is `NotFound`.
pub(super) fn check_dir(dir: &Path) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let real = fs::canonicalize(dir)?;
    for (depth, ancestor) in real.ancestors().enumerate() {
        let meta = fs::symlink_metadata(ancestor)?;
        let refuse = |why: String| {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: the state directory{} {why}",
                    dir.display(),
                    if depth == 0 {
                        String::new()
                    } else {
                        format!("'s ancestor {}", ancestor.display())
                    }
                ),
            ))
        };
        if meta.uid() != me && meta.uid() != 0 {
            return refuse(format!(
                "is owned by uid {}, not by tetherd's uid {me} or root",
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let shared_ok = sticky && (depth > 0 || me != 0);
        if mode & 0o022 != 0 && !shared_ok {
            return refuse(format!(
                "is writable by group or others (mode {mode:04o}){}",
                if depth == 0 {
                    "; keep the state in a directory only tetherd's uid can write"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// A new file beside `path` that nobody else can have created or can open:
/// an unpredictable name, `O_CREAT|O_EXCL` (so neither a planted file nor a
/// planted symlink is ever opened), mode 0600. Retries on a name taken.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".tmp.{:016x}", unpredictable()));
        let tmp = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = err,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        last.kind(),
        format!(
            "{}: no free temporary name after 16 tries ({last})",
            path.display()
        ),
    ))
}

/// 64 bits nobody outside the process can predict: SipHash under the
/// random keys std draws from the OS for every `RandomState`.
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

pub(super) fn set_aside(path: &Path) -> io::Result<PathBuf> {
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
///
/// The directory must pass the same checks as when the state is read (see
/// the module documentation); the temporary file is created exclusively.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = state_dir(path);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    check_dir(dir)?;
    let (tmp, mut file) = create_temporary(path)?;
    let result = (|| {
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
        let mut file = StateFile::new(path.clone(), "boot-a".into());
        let mut pins = Pins::default();
        let entry = EntryKey(42);
        pins.record(
            entry,
            pid(100),
            Identity {
                start: 5,
                inode: Some(9),
            },
        );
        let saved = SavedBinding {
            id: 7,
            uid: 1000,
            origin: None,
            rule: None,
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
        file.save_bindings(vec![saved.clone()], 8).unwrap();
        assert!(!pins.is_dirty());

        let same_boot = file.load();
        assert!(same_boot.warning.is_none());
        assert_eq!(
            same_boot.pins.get(entry, pid(100)),
            Some(Pin::ThisBoot(Identity {
                start: 5,
                inode: Some(9)
            }))
        );
        assert_eq!(same_boot.bindings, vec![saved]);
        assert_eq!(same_boot.next_id, 8);

        let other_boot = StateFile::new(path, "boot-b".into()).load();
        assert!(
            matches!(other_boot.pins.get(entry, pid(100)), Some(Pin::EarlierBoot { boot_id, .. }) if &*boot_id == "boot-a")
        );
    }

    #[test]
    fn pins_belong_to_their_entry_and_outlive_it_retired() {
        let (a, b) = (EntryKey(7), EntryKey(8));
        let one = Identity {
            start: 1,
            inode: None,
        };
        let mut pins = Pins::default();
        pins.record(a, pid(100), one);
        pins.record(a, pid(101), one);
        // Another entry naming the same pid has no pin of its own.
        assert_eq!(pins.get(b, pid(100)), None);
        // `a` now names 100 only: 101 goes.
        let named = |keys: &[(EntryKey, i64)]| keys.iter().map(|(e, p)| (*e, pid(*p))).collect();
        pins.sync(&[a].into(), &named(&[(a, 100)]));
        assert_eq!(pins.get(a, pid(101)), None);
        // `a` leaves: its pin is retired, not forgotten, and comes back.
        pins.sync(&HashSet::new(), &HashSet::new());
        assert_eq!(pins.n_retired(), 1);
        assert_eq!(pins.get(a, pid(100)), Some(Pin::ThisBoot(one)));
        pins.sync(&[a].into(), &named(&[(a, 100)]));
        assert_eq!(pins.n_retired(), 0);
        // Retired pins are bounded, oldest first.
        for n in 0..MIN_RETIRED_PINS + 10 {
            let e = EntryKey(1000 + n as u64);
            pins.record(e, pid(100), one);
            pins.sync(&[e].into(), &named(&[(e, 100)]));
        }
        pins.sync(&HashSet::new(), &HashSet::new());
        assert_eq!(pins.len(), MIN_RETIRED_PINS);
    }

    /// Entry keys are stored in the pins file: they must not change from
    /// one build to the next, and must tell entries apart.
    #[test]
    fn entry_keys_are_stable_and_cover_name_and_sources() {
        let spec = |name: Option<&str>, child: i64, start: Option<u64>| BindingSpec {
            name: name.map(String::from),
            parent: ProcSpec::unpinned(pid(10)),
            children: vec![ProcSpec {
                pid: pid(child),
                start,
                inode: None,
            }],
            signal: crate::config::Signal::TERM,
            grace: crate::config::Grace::default(),
            kill: crate::config::KillMode::default(),
        };
        let key = EntryKey::of_spec(&spec(Some("job"), 11, None));
        assert_eq!(key, EntryKey(0xf040_e1c0_b55c_132a));
        let mut other = spec(Some("job"), 11, None);
        other.grace = crate::config::Grace::Never;
        assert_eq!(EntryKey::of_spec(&other), key, "grace is not part of it");
        for different in [
            spec(None, 11, None),
            spec(Some("job2"), 11, None),
            spec(Some("job"), 12, None),
            spec(Some("job"), 11, Some(5)),
        ] {
            assert_ne!(EntryKey::of_spec(&different), key, "{different:?}");
        }
        let pidfile = PidfileBindingSpec {
            name: Some("job".into()),
            parent: PidSource::Pid(ProcSpec::unpinned(pid(10))),
            children: vec![PidSource::Pidfile("/run/a.pid".into())],
            signal: crate::config::Signal::TERM,
            grace: crate::config::Grace::default(),
            kill: crate::config::KillMode::default(),
        };
        let mut moved = pidfile.clone();
        moved.children = vec![PidSource::Pidfile("/run/b.pid".into())];
        assert_ne!(EntryKey::of_pidfile(&pidfile), EntryKey::of_pidfile(&moved));
    }

    #[test]
    fn legacy_pins_are_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(
            path.with_extension("pins.json"),
            br#"{"version":1,"pins":[{"pid":100,"start":5,"boot_id":"b"}]}"#,
        )
        .unwrap();
        let mut pins = StateFile::new(path, "b".into()).load().pins;
        let entry = EntryKey(9);
        assert_eq!(pins.get(entry, pid(100)), None);
        pins.adopt_legacy(entry, pid(100));
        assert!(pins.get(entry, pid(100)).is_some());
        pins.sync(&[entry].into(), &[(entry, pid(100))].into());
        assert_eq!(pins.len(), 1);
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

    /// A file planted at the temporary name the daemon used to use
    /// (`STATE.tmp.<pid>`), and a symlink beside it: neither is written
    /// to or renamed into place; the state file is a new 0600 file.
    #[test]
    fn a_planted_temporary_is_never_adopted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let planted = dir
            .path()
            .join(format!("state.json.tmp.{}", std::process::id()));
        fs::write(&planted, b"planted").unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o666)).unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"elsewhere").unwrap();
        let planted_inode = fs::metadata(&planted).unwrap().ino();
        write_atomically(&path, b"{}", true).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_ne!(meta.ino(), planted_inode);
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(fs::read(&planted).unwrap(), b"planted");
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        assert_eq!(fs::read(&target).unwrap(), b"elsewhere");
        // No temporary is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    /// A FIFO at the pins path, a symlink at the state path, a file others
    /// may write: each is refused at once with a warning naming it.
    #[test]
    fn untrusted_files_are_refused_without_blocking() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(path.clone(), "b".into());
        nix::unistd::mkfifo(
            file.pins_path(),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let real = dir.path().join("real.json");
        fs::write(&real, br#"{"version":1,"next_id":9}"#).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let loaded = file.load();
        let warning = loaded.warning.unwrap();
        assert!(
            warning.contains("refused the pins file: it is a FIFO"),
            "{warning}"
        );
        assert!(
            warning.contains("refused the state file: it is a symlink"),
            "{warning}"
        );
        assert_eq!(loaded.next_id, 0);
        assert!(!path.exists() && !file.pins_path().exists());

        fs::copy(&real, &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let warning = file.load().warning.unwrap();
        assert!(
            warning.contains("writable by group or others (mode 0666)"),
            "{warning}"
        );

        fs::copy(&real, &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = file.load();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.next_id, 9);
    }

    /// A state directory anyone can write: refused as root (neither read
    /// nor written), allowed for a daemon of another uid when sticky.
    #[test]
    fn a_state_directory_others_can_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let path = shared.join("state.json");
        let err = write_atomically(&path, b"{}", false).unwrap_err();
        assert!(
            err.to_string()
                .contains("is writable by group or others (mode 0777)"),
            "{err}"
        );
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let sticky = write_atomically(&path, br#"{"version":1}"#, false);
        let loaded = StateFile::new(path, "b".into()).load();
        if nix::unistd::geteuid().is_root() {
            assert!(sticky.is_err());
            let warning = loaded.warning.unwrap();
            assert!(warning.contains("mode 1777"), "{warning}");
        } else {
            sticky.unwrap();
            assert!(loaded.warning.is_none());
        }
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

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn binding(id: u64) -> SavedBinding {
        SavedBinding {
            id,
            uid: 0,
            origin: None,
            rule: None,
            name: None,
            boot_id: "b".into(),
            parent: SavedProc {
                pid: 10,
                start: 1,
                inode: None,
            },
            children: vec![SavedProc {
                pid: 11,
                start: 2,
                inode: None,
            }],
            signal: "SIGTERM".into(),
            grace: "5s".into(),
            kill: "process".into(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn records_are_replayed_and_a_torn_tail_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(path.clone(), "b".into());
        assert!(file.load().warning.is_none());
        file.save_bindings(vec![binding(1)], 2).unwrap();
        file.append_bindings(&[binding(2), binding(3)], &[], 4, true)
            .unwrap();
        file.append_bindings(&[], &[2], 9, true).unwrap();
        drop(file);
        let journal = journal::journal_path(&path, 2);
        assert_eq!(names(dir.path()), ["state.journal.2", "state.json"]);
        let good = fs::metadata(&journal).unwrap().len();
        // A torn last record: the earlier ones are restored.
        let mut bytes = fs::read(&journal).unwrap();
        bytes.extend_from_slice(b"00000100 12345678 {\"bound\":");
        fs::write(&journal, &bytes).unwrap();
        let mut file = StateFile::new(path.clone(), "b".into());
        let loaded = file.load();
        let warning = loaded.warning.unwrap();
        assert!(
            warning.contains(&format!(
                "{}: torn or corrupt record at offset {good} (a record cut short)",
                journal.display()
            )),
            "{warning}"
        );
        assert_eq!(loaded.bindings, vec![binding(1), binding(3)]);
        assert_eq!(loaded.next_id, 9);
        assert_eq!(loaded.n_records, 4);
        // The first write is whole and sets the journal aside.
        file.save_bindings(loaded.bindings, 9).unwrap();
        let after = names(dir.path());
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(
            after[0].starts_with("state.journal.2.corrupt-"),
            "{after:?}"
        );
        let loaded = StateFile::new(path, "b".into()).load();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.bindings, vec![binding(1), binding(3)]);
    }

    #[test]
    fn a_flipped_bit_in_the_middle_keeps_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(path.clone(), "b".into());
        file.load();
        file.save_bindings(Vec::new(), 1).unwrap();
        for id in 1..=5 {
            file.append_bindings(&[binding(id)], &[], id + 1, true)
                .unwrap();
        }
        drop(file);
        let journal = journal::journal_path(&path, 2);
        let mut bytes = fs::read(&journal).unwrap();
        let third = bytes.windows(8).position(|w| w == b"\"id\":3,\"").unwrap();
        bytes[third + 5] = b'4';
        fs::write(&journal, &bytes).unwrap();
        let loaded = StateFile::new(path, "b".into()).load();
        assert!(loaded.warning.unwrap().contains("checksum mismatch"));
        assert_eq!(loaded.bindings, vec![binding(1), binding(2)]);
    }

    #[test]
    fn churn_is_compacted_and_the_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(path.clone(), "b".into());
        file.load();
        file.save_bindings(vec![binding(1)], 2).unwrap();
        let bound = 3 * journal::MIN_COMPACT_BYTES;
        let mut largest = 0;
        for id in 2..20_000 {
            file.append_bindings(&[binding(id)], &[], id + 1, false)
                .unwrap();
            file.append_bindings(&[], &[id], id + 1, false).unwrap();
            let total: u64 = fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            largest = largest.max(total);
        }
        assert!(
            largest < bound,
            "{largest} bytes on disk, more than {bound}"
        );
        drop(file);
        let loaded = StateFile::new(path.clone(), "b".into()).load();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.bindings, vec![binding(1)]);
        assert_eq!(loaded.next_id, 20_000);
        let snapshot: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert!(snapshot["journal"].as_u64().unwrap() > 2, "{snapshot}");
    }

    #[test]
    fn a_version_1_state_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let old = serde_json::json!({"version": 1, "next_id": 5, "bindings": [binding(4)]});
        fs::write(&path, old.to_string()).unwrap();
        let mut file = StateFile::new(path.clone(), "b".into());
        let loaded = file.load();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.bindings, vec![binding(4)]);
        file.save_bindings(loaded.bindings, 5).unwrap();
        file.append_bindings(&[binding(5)], &[], 6, true).unwrap();
        let snapshot: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(snapshot["version"], 2);
        let loaded = StateFile::new(path, "b".into()).load();
        assert_eq!(loaded.bindings, vec![binding(4), binding(5)]);
    }

    #[test]
    fn a_rule_binding_keeps_its_origin_and_rule_and_a_socket_record_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(path.clone(), "b".into());
        let _ = file.load();
        file.save_bindings(vec![binding(1)], 2).unwrap();
        let mut ruled = binding(2);
        ruled.origin = Some("rule".into());
        ruled.rule = Some("sleepers".into());
        ruled.name = Some("sleepers:11".into());
        file.append_bindings(&[ruled.clone()], &[], 3, true)
            .unwrap();
        // A socket binding's record has no field it did not have before.
        let socket = serde_json::to_value(binding(1)).unwrap();
        assert!(socket.get("origin").is_none() && socket.get("rule").is_none());
        let loaded = StateFile::new(path, "b".into()).load();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.bindings, vec![binding(1), ruled]);
    }

    #[test]
    fn pins_recorded_between_loads_are_journalled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(path.clone(), "b".into());
        let mut pins = file.load().pins;
        let one = Identity {
            start: 1,
            inode: None,
        };
        let pid = |n| Pid::try_from(n).unwrap();
        pins.record(EntryKey(5), pid(100), one);
        pins.sync(&[EntryKey(5)].into(), &[(EntryKey(5), pid(100))].into());
        file.save_pins(&mut pins).unwrap();
        pins.record(EntryKey(5), pid(101), one);
        file.save_pins(&mut pins).unwrap();
        assert!(journal::journal_path(file.pins_path(), 2).exists());
        let pins = StateFile::new(path.clone(), "b".into()).load().pins;
        assert_eq!(pins.len(), 2);
        assert_eq!(pins.get(EntryKey(5), pid(101)), Some(Pin::ThisBoot(one)));

        // A torn tail of the pins journal: the pins before it are kept.
        let journal = journal::journal_path(file.pins_path(), 2);
        pins_torn(&journal);
        let mut again = StateFile::new(path, "b".into());
        let loaded = again.load();
        let warning = loaded.warning.unwrap();
        assert!(
            warning.contains(&format!("{}: torn or corrupt record", journal.display())),
            "{warning}"
        );
        assert_eq!(
            loaded.pins.get(EntryKey(5), pid(101)),
            Some(Pin::ThisBoot(one))
        );
        let mut pins = loaded.pins;
        pins.record(EntryKey(5), pid(102), one);
        again.save_pins(&mut pins).unwrap();
        assert!(!journal.exists(), "set aside at the whole write");
    }

    fn pins_torn(journal: &Path) {
        let mut bytes = fs::read(journal).unwrap();
        bytes.extend_from_slice(b"00000040 00000000 {\"pin\"");
        fs::write(journal, bytes).unwrap();
    }
}
