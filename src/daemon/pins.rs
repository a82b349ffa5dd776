//! The identity pins of configured pids: the first time the daemon sees a
//! pid the configuration did not pin itself, it records the process's
//! identity here, so that the same configuration line read after the
//! process died (or after a reboot) never means whoever has the pid now.
//! Kept in memory compactly and written by `state` (the pins file and its
//! journal).

use std::collections::{HashMap, HashSet};

use crate::config::{BindingSpec, Pid, PidSource, PidfileBindingSpec, ProcSpec};
use crate::watch::Identity;

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

/// The configuration entry a pin belongs to: a stable hash (FNV-1a, the
/// same in every build, since it is stored in the pins file) of what the
/// entry says about its processes: its name, and for the parent and each
/// child the pid with its pins, or the pidfile's path. Signal, grace and
/// kill mode are left out: changing them does not change who is bound.
///
/// Pins are kept per entry and pid, so an entry never inherits a pin that
/// another entry took of the same pid number: a new job whose launcher
/// got the old launcher's pid is pinned afresh, not found "gone".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey(pub(super) u64);

impl EntryKey {
    /// Records of a pins file written before pins had entries: each is
    /// taken over by the first entry that looks its pid up, at the first
    /// load, and the rest are then dropped.
    pub(super) const LEGACY: EntryKey = EntryKey(0);

    /// The key of a `[[binding]]` naming pids only.
    pub fn of_spec(spec: &BindingSpec) -> EntryKey {
        let mut h = EntryHasher::new(spec.name.as_deref());
        h.proc(&spec.parent);
        for child in &spec.children {
            h.proc(child);
        }
        h.finish()
    }

    /// The key of a `[[binding]]` naming a pidfile.
    pub fn of_pidfile(spec: &PidfileBindingSpec) -> EntryKey {
        let mut h = EntryHasher::new(spec.name.as_deref());
        for source in std::iter::once(&spec.parent).chain(&spec.children) {
            match source {
                PidSource::Pid(proc) => h.proc(proc),
                PidSource::Pidfile(path) => {
                    h.bytes(b"f");
                    h.bytes(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()));
                }
            }
        }
        h.finish()
    }
}

/// FNV-1a over length-prefixed fields.
struct EntryHasher(u64);

impl EntryHasher {
    fn new(name: Option<&str>) -> Self {
        let mut h = EntryHasher(0xcbf2_9ce4_8422_2325);
        h.bytes(name.map_or(b"-".as_slice(), |n| n.as_bytes()));
        h
    }

    fn bytes(&mut self, bytes: &[u8]) {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        for b in len.to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn proc(&mut self, proc: &ProcSpec) {
        self.bytes(b"p");
        self.bytes(&proc.pid.get().to_le_bytes());
        self.bytes(&proc.start.map_or(u64::MAX, |s| s).to_le_bytes());
        self.bytes(&proc.inode.map_or(0, |i| i).to_le_bytes());
    }

    fn finish(self) -> EntryKey {
        // 0 is kept for legacy records.
        EntryKey(self.0.max(1))
    }
}

/// At least this many pins of entries that left the configuration are
/// kept (more while the configuration itself has more pins), so an entry
/// that returns (after a reload that read a file being rewritten, say)
/// gets its pins back; the oldest retired go first.
pub const MIN_RETIRED_PINS: usize = 4096;

/// Pins of configured processes, by configuration entry and pid.
///
/// Kept compact (24 bytes a pin and 16 of key, boot ids of earlier boots
/// interned), since there are two for every unpinned configured binding.
#[derive(Debug, Default)]
pub struct Pins {
    pub(super) map: HashMap<(EntryKey, Pid), PackedPin>,
    /// Boot ids of earlier boots; `PackedPin::boot` is 1 + an index here.
    pub(super) earlier_boots: Vec<Box<str>>,
    /// The last retirement round; `PackedPin::retired` counts these.
    pub(super) round: u32,
    pub(super) dirty: bool,
    /// Pins recorded since the last save, appended to the journal.
    pub(super) changed: Vec<(EntryKey, Pid)>,
    /// Whether the next save writes the pins whole (after a load or
    /// reload, which touched them all anyway).
    pub(super) full: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct PackedPin {
    pub(super) start: u64,
    /// 0 when unknown (a pidfs inode is never 0).
    pub(super) inode: u64,
    /// 0 for this boot, else 1 + index into `earlier_boots`.
    pub(super) boot: u32,
    /// 0 while its entry is configured, else the round it left in.
    pub(super) retired: u32,
}

impl PackedPin {
    pub(super) fn identity(&self) -> Identity {
        Identity {
            start: self.start,
            inode: (self.inode != 0).then_some(self.inode),
        }
    }
}

impl Pins {
    /// The pin that `entry` recorded for `pid`, if any.
    pub fn get(&self, entry: EntryKey, pid: Pid) -> Option<Pin> {
        let packed = self.map.get(&(entry, pid))?;
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

    /// Gives `entry` the pin of `pid` from a pins file that did not record
    /// entries, if it has none of its own.
    pub fn adopt_legacy(&mut self, entry: EntryKey, pid: Pid) {
        if self.map.contains_key(&(entry, pid)) {
            return;
        }
        if let Some(&legacy) = self.map.get(&(EntryKey::LEGACY, pid)) {
            self.map.insert((entry, pid), legacy);
            self.changed.push((entry, pid));
            self.dirty = true;
        }
    }

    /// Records the identity `entry` first saw at `pid`.
    pub fn record(&mut self, entry: EntryKey, pid: Pid, identity: Identity) {
        self.insert(entry, pid, identity, 0, 0);
        self.changed.push((entry, pid));
        self.dirty = true;
    }

    pub(super) fn insert(
        &mut self,
        entry: EntryKey,
        pid: Pid,
        identity: Identity,
        boot: u32,
        retired: u32,
    ) {
        let packed = PackedPin {
            start: identity.start,
            inode: identity.inode.unwrap_or(0),
            boot,
            retired,
        };
        self.map.insert((entry, pid), packed);
    }

    /// Records a pin read from the state file, taken in `boot_id`.
    pub(super) fn insert_earlier(
        &mut self,
        entry: EntryKey,
        pid: Pid,
        identity: Identity,
        boot_id: String,
        retired: u32,
    ) {
        let idx = match self.earlier_boots.iter().position(|b| **b == *boot_id) {
            Some(idx) => idx,
            None => {
                self.earlier_boots.push(boot_id.into_boxed_str());
                self.earlier_boots.len() - 1
            }
        };
        let boot = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        self.insert(entry, pid, identity, boot, retired);
    }

    /// Brings the pins in line with the configuration after a load: an
    /// entry still configured keeps the pins of the pids it names now
    /// (`named`) and drops the rest; the pins of an entry that left are
    /// retired, not forgotten, and the oldest retired go once there are
    /// more than [`MIN_RETIRED_PINS`] (or than live pins). Legacy records
    /// not taken over by now are dropped.
    pub fn sync(&mut self, live: &HashSet<EntryKey>, named: &HashSet<(EntryKey, Pid)>) {
        let before = self.map.len();
        let round = self.round.saturating_add(1);
        let mut changed = false;
        self.map.retain(|key, pin| {
            if key.0 == EntryKey::LEGACY {
                return false;
            }
            if live.contains(&key.0) {
                if pin.retired != 0 {
                    pin.retired = 0;
                    changed = true;
                }
                return named.contains(key);
            }
            if pin.retired == 0 {
                pin.retired = round;
                changed = true;
            }
            true
        });
        if changed {
            self.round = round;
        }
        let n_retired = self.map.values().filter(|p| p.retired != 0).count();
        let limit = MIN_RETIRED_PINS.max(self.map.len() - n_retired);
        if n_retired > limit {
            let mut retired: Vec<(u32, (EntryKey, Pid))> = self
                .map
                .iter()
                .filter(|(_, p)| p.retired != 0)
                .map(|(key, p)| (p.retired, *key))
                .collect();
            retired.sort_unstable();
            for (_, key) in retired.iter().take(n_retired - limit) {
                self.map.remove(key);
            }
        }
        if changed || self.map.len() != before || !self.changed.is_empty() {
            // A load or reload costs as much as writing every pin.
            self.dirty = true;
            self.full = true;
        }
    }

    /// Gives back spare capacity after a large load.
    pub fn shrink_to_fit(&mut self) {
        self.map.shrink_to_fit();
    }

    /// Every pin, with the boot id it was taken in (`this_boot` for the
    /// current one).
    pub(super) fn records<'a>(
        &'a self,
        this_boot: &'a str,
    ) -> impl Iterator<Item = (EntryKey, Pid, Identity, &'a str, u32)> + 'a {
        self.map.iter().map(move |((entry, pid), packed)| {
            (
                *entry,
                *pid,
                packed.identity(),
                self.boot_of(packed, this_boot),
                packed.retired,
            )
        })
    }

    /// The boot id a pin was taken in (`this_boot` for the current one).
    pub(super) fn boot_of<'a>(&'a self, packed: &PackedPin, this_boot: &'a str) -> &'a str {
        match packed.boot {
            0 => this_boot,
            n => self
                .earlier_boots
                .get(usize::try_from(n - 1).unwrap_or(usize::MAX))
                .map_or("unknown", |b| &**b),
        }
    }

    /// How many pins are recorded.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// How many pins belong to entries that left the configuration.
    pub fn n_retired(&self) -> usize {
        self.map.values().filter(|p| p.retired != 0).count()
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
