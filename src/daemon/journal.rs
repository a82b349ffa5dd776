//! Append-only journals beside the state and pins files, so that what a
//! bind costs does not grow with what is held.
//!
//! Each of the two files is a snapshot (`state.json`, JSON, as before, now
//! also naming the first journal generation it does not cover) followed by
//! journals `state.journal.<generation>` (and `state.pins.journal.<n>`) of
//! records appended since. A record is one line: its length and CRC-32 in
//! hex, then its JSON (`00000042 1c291ca3 {"unbound":7}`), so a torn or
//! corrupt tail is found at load: the records before it are restored and
//! the file is set aside (renamed `.corrupt-<seconds>`) once the state is
//! next written whole, with a warning naming the file and the offset.
//!
//! The loop appends each iteration's records with one write and one
//! fdatasync (the group commit of `Daemon::commit`: answers go out after
//! it). Compaction runs in a background thread and never reads the loop's
//! memory: when the journals exceed twice the snapshot (and at least
//! [`MIN_COMPACT_BYTES`]) the loop closes the journal it appends to (the
//! next record starts generation n+1, which costs one fsync of the
//! directory) and the thread folds the snapshot and the closed generations
//! into a new snapshot (exclusive temporary, fsync, rename, fsync of the
//! directory) that names n+1 as the first it does not cover, then removes
//! the closed journals. A kill at any point leaves either the old snapshot
//! and every journal, or the new snapshot and the journals it does not
//! cover (older ones left over are ignored and removed later).
//!
//! At start everything is read back and the first write is a whole
//! snapshot of the daemon's state after it re-verified every binding, so a
//! restart leaves one snapshot and no journal.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use super::state::{check_dir, read_trusted, set_aside, state_dir, write_atomically, Unread};

/// The format version of journals and of the snapshots that name them.
pub const JOURNAL_VERSION: u32 = 2;

/// Journals smaller than this are not compacted, however small the
/// snapshot.
pub const MIN_COMPACT_BYTES: u64 = 256 * 1024;

/// A journal this long is closed and the next one started, even while a
/// compaction runs, so that no file outgrows what a load reads
/// (`MAX_FILE_BYTES`).
const MAX_JOURNAL_BYTES: u64 = 16 * 1024 * 1024;

/// What a journal holds: how its snapshot is read and written, and how a
/// record changes what it holds.
pub trait Log: 'static {
    /// What the snapshot and records fold into.
    type Value: Default + Send + 'static;
    /// A snapshot's content and the first journal generation it does not
    /// cover.
    fn decode(bytes: &[u8]) -> Result<(Self::Value, u64), String>;
    /// Applies one record.
    fn apply(value: &mut Self::Value, record: &[u8]) -> Result<(), String>;
    /// A snapshot of `value` that covers every journal below `generation`.
    fn encode(value: &Self::Value, generation: u64) -> Result<Vec<u8>, String>;
}

/// The first record of every journal.
#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
}

fn crc_table() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            let mut c = u32::try_from(i).unwrap_or(0);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            c
        })
    })
}

/// CRC-32 (IEEE), as zlib computes it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let table = crc_table();
    let mut c = !0u32;
    for &b in bytes {
        let idx = usize::from(u8::try_from((c ^ u32::from(b)) & 0xff).unwrap_or(0));
        c = table.get(idx).copied().unwrap_or(0) ^ (c >> 8);
    }
    !c
}

/// Appends one framed record.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let _ = write!(out, "{:08x} {:08x} ", payload.len(), crc32(payload));
    out.extend_from_slice(payload);
    out.push(b'\n');
}

const HEAD: usize = 18;

/// Where a journal stops being good records, and why.
type BadAt = (usize, String);

/// The records of a journal's bytes with their offsets, and where and why
/// the bytes stop being good records, if they do.
fn parse(bytes: &[u8]) -> (Vec<(usize, &[u8])>, Option<BadAt>) {
    let mut records = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        match parse_one(bytes.get(off..).unwrap_or_default()) {
            Ok((payload, used)) => {
                records.push((off, payload));
                off += used;
            }
            Err(why) => return (records, Some((off, why))),
        }
    }
    (records, None)
}

fn parse_one(rest: &[u8]) -> Result<(&[u8], usize), String> {
    let torn = || "a record cut short".to_owned();
    let head = rest.get(..HEAD).ok_or_else(torn)?;
    let hex = |range: std::ops::Range<usize>| {
        head.get(range)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    let (Some(len), Some(crc)) = (hex(0..8), hex(9..17)) else {
        return Err("not a record header".into());
    };
    if head.get(8) != Some(&b' ') || head.get(17) != Some(&b' ') {
        return Err("not a record header".into());
    }
    let len = usize::try_from(len).map_err(|_| "length out of range".to_owned())?;
    let end = HEAD.saturating_add(len);
    let payload = rest.get(HEAD..end).ok_or_else(torn)?;
    match rest.get(end) {
        Some(b'\n') => {}
        Some(_) => return Err("no newline after the record".into()),
        None => return Err(torn()),
    }
    if crc32(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((payload, end + 1))
}

/// The journal of generation `generation` beside `snapshot`.
pub fn journal_path(snapshot: &Path, generation: u64) -> PathBuf {
    snapshot.with_extension(format!("journal.{generation}"))
}

/// The journals beside `snapshot`, by generation.
fn list_journals(snapshot: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = snapshot.with_extension("journal.");
    let Some(prefix) = prefix.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    let entries = match fs::read_dir(state_dir(snapshot)) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.strip_prefix(prefix) else {
            continue;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(generation) = digits.parse::<u64>() {
            found.push((generation, entry.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// What a snapshot and its journals held.
#[derive(Debug, Default)]
pub struct Read<V> {
    /// The folded content.
    pub value: V,
    /// What was wrong, one line each.
    pub warnings: Vec<String>,
    /// Journals with a torn or corrupt tail, to set aside.
    corrupt: Vec<PathBuf>,
    /// The highest generation seen.
    max_generation: u64,
    /// Bytes of the snapshot and of the journals read.
    snapshot_bytes: u64,
    journal_bytes: u64,
    /// Records applied.
    pub n_records: usize,
}

/// Reads a snapshot and its journals. At load (`upto` None) anything
/// wrong is a warning and the file is set aside where today's rules say
/// so; in the compaction thread (`upto` the first generation left out)
/// anything wrong is an error and nothing is moved.
pub fn read<L: Log>(
    snapshot: &Path,
    what: &str,
    upto: Option<u64>,
) -> Result<Read<L::Value>, String> {
    let strict = upto.is_some();
    let mut read = Read::<L::Value>::default();
    let mut covered = 0;
    if strict {
        match read_trusted(snapshot) {
            Ok(Some(bytes)) => {
                let (value, generation) = L::decode(&bytes)
                    .map_err(|why| format!("{}: corrupt {what}: {why}", snapshot.display()))?;
                read.value = value;
                covered = generation;
                read.snapshot_bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            }
            Ok(None) => {}
            Err(Unread::Io(err)) => return Err(format!("{}: {err}", snapshot.display())),
            Err(Unread::Untrusted(why)) => return Err(format!("{}: {why}", snapshot.display())),
        }
    } else {
        match super::state::read_or_set_aside(snapshot, what, |bytes| {
            L::decode(bytes).map(|(value, generation)| (value, generation, bytes.len()))
        }) {
            Ok(Some((value, generation, len))) => {
                read.value = value;
                covered = generation;
                read.snapshot_bytes = u64::try_from(len).unwrap_or(u64::MAX);
            }
            Ok(None) => {}
            Err(warning) => read.warnings.push(warning),
        }
    }
    read.max_generation = covered;
    let journals = list_journals(snapshot).map_err(|err| {
        format!(
            "{}: cannot list the {what} journals: {err}",
            state_dir(snapshot).display()
        )
    });
    let journals = match journals {
        Ok(journals) => journals,
        Err(why) if strict => return Err(why),
        Err(why) => {
            read.warnings.push(why);
            Vec::new()
        }
    };
    for (generation, path) in journals {
        read.max_generation = read.max_generation.max(generation);
        if generation < covered || upto.is_some_and(|upto| generation >= upto) {
            continue;
        }
        let bytes = match read_trusted(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(Unread::Io(err)) => {
                let why = format!("{}: cannot read the {what} journal: {err}", path.display());
                if strict {
                    return Err(why);
                }
                read.warnings
                    .push(format!("{why}; its records are left out"));
                continue;
            }
            Err(Unread::Untrusted(why)) => {
                if strict {
                    return Err(format!("{}: {why}", path.display()));
                }
                read.warnings.push(match set_aside(&path) {
                    Ok(to) => format!(
                        "{}: refused the {what} journal: {why}; moved it to {} and starting without its records",
                        path.display(),
                        to.display()
                    ),
                    Err(err) => format!(
                        "{}: refused the {what} journal: {why}; it cannot be moved aside ({err}); starting without its records",
                        path.display()
                    ),
                });
                continue;
            }
        };
        read.journal_bytes = read
            .journal_bytes
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
        let (records, mut bad) = parse(&bytes);
        let mut n = 0;
        for (i, (off, payload)) in records.into_iter().enumerate() {
            let applied = if i == 0 {
                serde_json::from_slice::<Header>(payload)
                    .map_err(|err| format!("bad header: {err}"))
                    .and_then(|h| {
                        if h.version == JOURNAL_VERSION {
                            Ok(())
                        } else {
                            Err(format!(
                                "version {} (this tetherd reads version {JOURNAL_VERSION})",
                                h.version
                            ))
                        }
                    })
            } else {
                L::apply(&mut read.value, payload)
            };
            if let Err(why) = applied {
                bad = Some((off, why));
                break;
            }
            n += usize::from(i > 0);
        }
        read.n_records += n;
        if let Some((off, why)) = bad {
            let why = crate::protocol::escape_controls(&why);
            if strict {
                return Err(format!(
                    "{}: bad record at offset {off} ({why})",
                    path.display()
                ));
            }
            read.warnings.push(format!(
                "{}: torn or corrupt record at offset {off} ({why}); the {n} records before it are restored and the file is set aside once the {what} is rewritten",
                path.display()
            ));
            read.corrupt.push(path);
        }
    }
    Ok(read)
}

/// Folds the snapshot and the journals below `upto` into a new snapshot,
/// then removes those journals. Runs in the compaction thread. Returns
/// the new snapshot's size.
fn compact<L: Log>(snapshot: &Path, what: &str, upto: u64) -> Result<u64, String> {
    let read = read::<L>(snapshot, what, Some(upto))?;
    let bytes = L::encode(&read.value, upto)?;
    write_atomically(snapshot, &bytes, true)
        .map_err(|err| format!("cannot write {}: {err}", snapshot.display()))?;
    for line in remove_journals_below(snapshot, upto, &[]) {
        warn!("{line}");
    }
    Ok(u64::try_from(bytes.len()).unwrap_or(u64::MAX))
}

/// Removes the journals a snapshot now covers, or sets aside those in
/// `aside` (a corrupt tail is kept for a look). Returns what to log.
fn remove_journals_below(snapshot: &Path, upto: u64, aside: &[PathBuf]) -> Vec<String> {
    let mut lines = Vec::new();
    let journals = match list_journals(snapshot) {
        Ok(journals) => journals,
        Err(err) => {
            lines.push(format!(
                "{}: cannot list the journals to remove: {err}",
                state_dir(snapshot).display()
            ));
            return lines;
        }
    };
    for (generation, path) in journals {
        if generation >= upto {
            continue;
        }
        if aside.contains(&path) {
            match set_aside(&path) {
                Ok(to) => lines.push(format!(
                    "{}: journal with a torn or corrupt tail moved to {}",
                    path.display(),
                    to.display()
                )),
                Err(err) => lines.push(format!(
                    "{}: journal with a torn or corrupt tail cannot be moved aside: {err}",
                    path.display()
                )),
            }
        } else if let Err(err) = fs::remove_file(&path) {
            if err.kind() != io::ErrorKind::NotFound {
                lines.push(format!(
                    "{}: cannot remove a journal the snapshot covers: {err}",
                    path.display()
                ));
            }
        }
    }
    lines
}

/// The writing side of a snapshot and its journals.
pub struct Journal<L: Log> {
    snapshot: PathBuf,
    what: &'static str,
    /// The generation appended to (its file is created at the first
    /// record).
    generation: u64,
    max_generation: u64,
    file: Option<File>,
    /// What the open journal holds, to cut a failed write off again.
    file_len: u64,
    pending: Vec<u8>,
    /// Bytes in the journal being appended to, and in closed journals the
    /// snapshot does not cover yet.
    live_bytes: u64,
    closed_bytes: u64,
    snapshot_bytes: u64,
    /// After a failed compaction: the journal size to try again at.
    retry_at: u64,
    compaction: Option<JoinHandle<Result<u64, String>>>,
    /// Journals with a corrupt tail, set aside at the next whole write.
    aside: Vec<PathBuf>,
    /// Whether the next write must be a whole snapshot (after a load).
    needs_full: bool,
    _log: PhantomData<L>,
}

impl<L: Log> fmt::Debug for Journal<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("snapshot", &self.snapshot)
            .field("generation", &self.generation)
            .field("live_bytes", &self.live_bytes)
            .field("closed_bytes", &self.closed_bytes)
            .field("snapshot_bytes", &self.snapshot_bytes)
            .finish_non_exhaustive()
    }
}

impl<L: Log> Journal<L> {
    /// The journals of `snapshot`; nothing is opened until the first write.
    pub fn new(snapshot: PathBuf, what: &'static str) -> Self {
        Journal {
            snapshot,
            what,
            generation: 1,
            max_generation: 0,
            file: None,
            file_len: 0,
            pending: Vec::new(),
            live_bytes: 0,
            closed_bytes: 0,
            snapshot_bytes: 0,
            retry_at: 0,
            compaction: None,
            aside: Vec::new(),
            needs_full: true,
            _log: PhantomData,
        }
    }

    /// Takes note of what a load found; the next write is a whole snapshot.
    pub fn loaded<V>(&mut self, read: &mut Read<V>) {
        self.max_generation = self.max_generation.max(read.max_generation);
        self.snapshot_bytes = read.snapshot_bytes;
        self.closed_bytes = read.journal_bytes;
        self.aside.append(&mut read.corrupt);
        self.needs_full = true;
    }

    /// Whether the next write must be a whole snapshot.
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// Queues a record for the next commit.
    pub fn push(&mut self, payload: &[u8]) {
        frame(&mut self.pending, payload);
    }

    /// Appends the queued records with one write, and with `durable` one
    /// fdatasync. On failure the records are dropped (the caller queues
    /// them again) and the journal is cut back to what it held.
    pub fn commit(&mut self, durable: bool) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.append(&pending, durable);
        self.pending = pending;
        self.pending.clear();
        result?;
        if self.file_len >= MAX_JOURNAL_BYTES {
            self.close_generation();
        }
        self.maybe_compact();
        Ok(())
    }

    fn append(&mut self, bytes: &[u8], durable: bool) -> io::Result<()> {
        if self.file.is_none() {
            self.open_generation()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("no journal open"));
        };
        let written =
            file.write_all(bytes)
                .and_then(|()| if durable { file.sync_data() } else { Ok(()) });
        if let Err(err) = written {
            // A partial record would hide every later one: cut it off, or
            // go on in a new generation if even that fails.
            if file.set_len(self.file_len).is_err() {
                self.close_generation();
            }
            return Err(err);
        }
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.file_len = self.file_len.saturating_add(len);
        self.live_bytes = self.live_bytes.saturating_add(len);
        Ok(())
    }

    /// Creates the journal of the current generation: exclusively, 0600,
    /// its header fsynced, then the directory.
    fn open_generation(&mut self) -> io::Result<()> {
        let dir = state_dir(&self.snapshot);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        check_dir(dir)?;
        let mut header = Vec::new();
        let head = serde_json::to_vec(&Header {
            version: JOURNAL_VERSION,
        })
        .map_err(io::Error::other)?;
        frame(&mut header, &head);
        for _ in 0..16 {
            let path = journal_path(&self.snapshot, self.generation);
            match OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(mut file) => {
                    let made = file
                        .write_all(&header)
                        .and_then(|()| file.sync_data())
                        .and_then(|()| File::open(dir)?.sync_all());
                    if let Err(err) = made {
                        let _ = fs::remove_file(&path);
                        return Err(err);
                    }
                    self.max_generation = self.max_generation.max(self.generation);
                    self.file_len = u64::try_from(header.len()).unwrap_or(0);
                    self.live_bytes = self.live_bytes.saturating_add(self.file_len);
                    self.file = Some(file);
                    debug!("{}: journal started", path.display());
                    return Ok(());
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    self.generation = self.generation.saturating_add(1);
                }
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: no free journal generation after 16 tries",
                self.snapshot.display()
            ),
        ))
    }

    /// Closes the journal appended to; the next record starts a new one.
    fn close_generation(&mut self) {
        self.file = None;
        self.file_len = 0;
        self.max_generation = self.max_generation.max(self.generation);
        self.generation = self.max_generation.saturating_add(1);
        self.closed_bytes = self.closed_bytes.saturating_add(self.live_bytes);
        self.live_bytes = 0;
    }

    /// Writes a whole snapshot (made by `encode` for the generation it
    /// does not cover), durably, and removes the journals it covers. The
    /// loop pays for this only at load and reload, which cost as much.
    pub fn write_full(
        &mut self,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, String>,
    ) -> io::Result<()> {
        self.wait_compaction();
        let upto = self.max_generation.max(self.generation).saturating_add(1);
        let bytes = encode(upto).map_err(io::Error::other)?;
        write_atomically(&self.snapshot, &bytes, true)?;
        self.file = None;
        self.file_len = 0;
        self.generation = upto;
        self.max_generation = upto;
        self.pending.clear();
        self.snapshot_bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.live_bytes = 0;
        self.closed_bytes = 0;
        self.retry_at = 0;
        self.needs_full = false;
        let aside = std::mem::take(&mut self.aside);
        for line in remove_journals_below(&self.snapshot, upto, &aside) {
            warn!("{line}");
        }
        Ok(())
    }

    /// Starts a compaction when the journals outgrow the snapshot, if
    /// none runs; takes the result of one that finished.
    fn maybe_compact(&mut self) {
        self.poll_compaction();
        if self.compaction.is_some() || self.needs_full {
            return;
        }
        let total = self.live_bytes.saturating_add(self.closed_bytes);
        if total <= MIN_COMPACT_BYTES.max(self.snapshot_bytes.saturating_mul(2))
            || total < self.retry_at
        {
            return;
        }
        self.close_generation();
        let upto = self.generation;
        let snapshot = self.snapshot.clone();
        let what = self.what;
        let spawned = std::thread::Builder::new()
            .name("tetherd-compact".into())
            .spawn(move || compact::<L>(&snapshot, what, upto));
        match spawned {
            Ok(handle) => {
                debug!(
                    "{}: compacting {total} bytes of journal below generation {upto}",
                    self.snapshot.display()
                );
                self.compaction = Some(handle);
            }
            Err(err) => {
                warn!(
                    "{}: cannot start the compaction thread: {err}; the journal grows until it can",
                    self.snapshot.display()
                );
                self.retry_at = total.saturating_add(MIN_COMPACT_BYTES);
            }
        }
    }

    fn poll_compaction(&mut self) {
        if self
            .compaction
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            self.finish_compaction();
        }
    }

    fn wait_compaction(&mut self) {
        if self.compaction.is_some() {
            self.finish_compaction();
        }
    }

    fn finish_compaction(&mut self) {
        let Some(handle) = self.compaction.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(size)) => {
                debug!("{}: compacted to {size} bytes", self.snapshot.display());
                self.snapshot_bytes = size;
                self.closed_bytes = 0;
                self.retry_at = 0;
            }
            Ok(Err(why)) => {
                warn!(
                    "{}: compaction failed: {why}; the journals are kept and compaction is tried again later",
                    self.snapshot.display()
                );
                self.retry_at = self
                    .live_bytes
                    .saturating_add(self.closed_bytes)
                    .saturating_add(MIN_COMPACT_BYTES);
            }
            Err(_) => {
                warn!(
                    "{}: the compaction thread failed; the journals are kept",
                    self.snapshot.display()
                );
            }
        }
    }
}

impl<L: Log> Drop for Journal<L> {
    fn drop(&mut self) {
        // A compaction cut short is harmless, but one about to finish is
        // worth its few milliseconds at exit.
        self.wait_compaction();
        if self.compaction.is_none() && self.closed_bytes > 0 {
            info!(
                "{}: journals left for the next start",
                self.snapshot.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_torn_or_flipped_record_stops_the_parse_at_its_offset() {
        let mut bytes = Vec::new();
        frame(&mut bytes, b"{\"a\":1}");
        frame(&mut bytes, b"{\"b\":2}");
        let second = bytes.len();
        frame(&mut bytes, b"{\"c\":3}");
        let (records, bad) = parse(&bytes);
        assert_eq!(records.len(), 3);
        assert!(bad.is_none());
        let (records, bad) = parse(&bytes[..bytes.len() - 3]);
        assert_eq!(records.len(), 2);
        assert_eq!(bad.unwrap().0, second);
        let mut flipped = bytes.clone();
        flipped[second + HEAD + 2] ^= 1;
        let (records, bad) = parse(&flipped);
        assert_eq!(records.len(), 2);
        assert_eq!(bad.unwrap(), (second, "checksum mismatch".to_owned()));
    }
}
