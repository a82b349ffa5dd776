//! Bindings as the event loop holds them, and the mapping from mio tokens
//! back to them.
//!
//! A binding lives in a slot of a slab. Its id is the slot plus a
//! generation, so a timer or token left over from a removed binding can
//! never act on the binding that reuses the slot. A token names one member
//! of one binding: member 0 is the parent, member `i + 1` the child at
//! index `i` of the spec.

use std::rc::Rc;
use std::time::Instant;

use mio::Token;

use crate::config::{BindingSpec, Pid};

/// Tokens at or above this value belong to the daemon itself (signals,
/// the control socket); tokens below it name binding members.
pub const RESERVED_TOKENS: usize = 1 << 62;

/// Bits of a token that hold the member index.
const MEMBER_BITS: u32 = 24;

/// The most children one binding may have (member indexes must fit).
pub const MAX_CHILDREN: usize = (1 << MEMBER_BITS) - 2;

/// Names a binding for as long as it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingId {
    slot: u32,
    generation: u32,
}

impl BindingId {
    /// The token of member `member` (0 = parent, `i + 1` = child `i`).
    pub fn token(self, member: usize) -> Token {
        Token(((self.slot as usize) << MEMBER_BITS) | member)
    }
}

impl std::fmt::Display for BindingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// Where a binding came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[[binding]]` of the configuration file.
    Config,
    /// A `bind` request on the control socket, by this uid. Persisted in
    /// the state file until it is done or unbound.
    Socket {
        /// The caller's uid.
        uid: u32,
    },
    /// Made by a `[[rule]]` when a matching process started (named
    /// `RULE:PID`); forgotten when done. It acts on behalf of its
    /// launcher's user (0 when the launcher runs as root): what it holds
    /// is counted against that uid, and it signals only what that uid
    /// could (no set-user-id captive for a user's launcher).
    Rule {
        /// The launcher's uid.
        uid: u32,
    },
}

/// The label of a binding in every log line: the spec's
/// ([`BindingSpec::label`]: `binding "name"`, `binding PARENT->CHILD`,
/// `binding PARENT->(N children)`), with its number and uid for socket
/// bindings (`binding "name" #7 (uid 1000)`).
pub fn label(spec: &BindingSpec, origin: Origin, number: u64) -> String {
    match origin {
        Origin::Config => spec.label(),
        Origin::Rule { .. } => format!("{} #{number}", spec.label()),
        Origin::Socket { uid } => format!("{} #{number} (uid {uid})", spec.label()),
    }
}

/// Where a binding is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Watching the parent.
    Armed,
    /// The parent exited; the children got the binding's signal and SIGKILL
    /// follows at `deadline` (`None`: never).
    Signalled {
        /// When escalation is due.
        deadline: Option<Instant>,
    },
    /// SIGKILL was sent; waiting for the children's exit.
    Killed,
    /// Nothing left to do. The record stays so that a reload sees the
    /// binding as unchanged and does not act on it again.
    Done,
}

/// A process of a binding, proven to be the one bound.
#[derive(Debug)]
pub struct Member<H> {
    /// The pid, for logs.
    pub pid: Pid,
    /// The open handle; it refers to this process and no other.
    pub handle: H,
}

/// One binding at run time.
#[derive(Debug)]
pub struct Binding<H> {
    /// The number users see (`tetherctl list`, `unbind`; `id` in the
    /// protocol and the state file, `#N` in labels). Not a [`BindingId`].
    pub number: u64,
    /// Where it came from.
    pub origin: Origin,
    /// What the configuration or the request said. For socket bindings the
    /// processes are pinned to the identities proven at bind time.
    pub spec: Rc<BindingSpec>,
    /// The parent while it is watched.
    pub parent: Option<Member<H>>,
    /// The children still to be dealt with, by index in `spec.children`;
    /// `None` once a child has exited or was never proven.
    pub children: Vec<Option<Member<H>>>,
    /// Where the binding is in its life.
    pub phase: Phase,
    /// For `kill = "group"` and `"tree"`: what widens the signal beyond the
    /// bound children. `None` for `"process"`.
    pub scope: Option<Box<Scope<H>>>,
    /// Processes counted against the owner's budget for this binding
    /// (released when it ends).
    pub charged: usize,
}

/// The wider set a group or tree binding signals.
#[derive(Debug)]
pub struct Scope<H> {
    /// `kill = "group"`: the process group of each bound child when the
    /// binding was made (`None` where none was recorded), by child index.
    pub groups: Vec<Option<i32>>,
    /// Members found at bind time (groups), when a bound child exited
    /// (groups), when the parent exited and at escalation (not the bound
    /// children), each held by a handle proven against the process table's
    /// entry, so a reused pid is never among them. Not registered for exit
    /// events: they are signalled, not waited for.
    pub extras: Vec<Member<H>>,
    /// `kill = "cgroup"`: the binding's own cgroup, once made.
    pub cgroup: Option<super::cgroup::Hold>,
}

impl<H> Binding<H> {
    /// `binding "name"` or `binding PARENT->CHILD`, with the id for socket
    /// bindings.
    pub fn label(&self) -> String {
        label(&self.spec, self.origin, self.number)
    }

    /// The number of children still held.
    pub fn n_live_children(&self) -> usize {
        self.children.iter().filter(|c| c.is_some()).count()
    }

    /// The uid on whose behalf the binding signals, when that is not root
    /// (or the daemon's own user, `admin`): every process it signals must
    /// be one this uid could signal itself. `None` for the configuration's
    /// bindings and root's.
    pub fn deputy_for(&self, admin: u32) -> Option<u32> {
        match self.origin {
            Origin::Socket { uid } | Origin::Rule { uid } if uid != 0 && uid != admin => Some(uid),
            _ => None,
        }
    }
}

/// A member addressed by a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRef {
    /// The parent of the binding.
    Parent,
    /// The child at this index of the spec.
    Child(usize),
}

#[derive(Debug)]
struct Slot<H> {
    generation: u32,
    binding: Option<Binding<H>>,
}

/// Every binding of the daemon.
#[derive(Debug)]
pub struct Bindings<H> {
    slots: Vec<Slot<H>>,
    free: Vec<u32>,
    n_live: usize,
}

impl<H> Default for Bindings<H> {
    fn default() -> Self {
        Bindings {
            slots: Vec::new(),
            free: Vec::new(),
            n_live: 0,
        }
    }
}

impl Phase {
    /// A word for `list`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Armed => "armed",
            Phase::Signalled { .. } => "signalled",
            Phase::Killed => "killed",
            Phase::Done => "done",
        }
    }
}

impl<H> Bindings<H> {
    /// Stores `binding` and returns its id, or `None` when the slab is full
    /// (more than 2^32 bindings, or tokens would overflow).
    pub fn insert(&mut self, binding: Binding<H>) -> Option<BindingId> {
        let id = if let Some(slot) = self.free.pop() {
            let entry = self.slots.get_mut(slot as usize)?;
            entry.generation = entry.generation.wrapping_add(1);
            entry.binding = Some(binding);
            BindingId {
                slot,
                generation: entry.generation,
            }
        } else {
            let slot = u32::try_from(self.slots.len()).ok()?;
            if (slot as usize) >= (RESERVED_TOKENS >> MEMBER_BITS) {
                return None;
            }
            self.slots.push(Slot {
                generation: 0,
                binding: Some(binding),
            });
            BindingId {
                slot,
                generation: 0,
            }
        };
        self.n_live += 1;
        Some(id)
    }

    /// Removes and returns the binding `id`.
    pub fn remove(&mut self, id: BindingId) -> Option<Binding<H>> {
        let entry = self.slots.get_mut(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        let binding = entry.binding.take()?;
        self.free.push(id.slot);
        self.n_live -= 1;
        Some(binding)
    }

    /// The binding `id`, if it still exists.
    pub fn get(&self, id: BindingId) -> Option<&Binding<H>> {
        let entry = self.slots.get(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.binding.as_ref()
    }

    /// The binding `id`, if it still exists.
    pub fn get_mut(&mut self, id: BindingId) -> Option<&mut Binding<H>> {
        let entry = self.slots.get_mut(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.binding.as_mut()
    }

    /// The binding and member a token names, if both still exist.
    pub fn resolve(&self, token: Token) -> Option<(BindingId, MemberRef)> {
        if token.0 >= RESERVED_TOKENS {
            return None;
        }
        let slot = u32::try_from(token.0 >> MEMBER_BITS).ok()?;
        let member = token.0 & ((1 << MEMBER_BITS) - 1);
        let entry = self.slots.get(slot as usize)?;
        entry.binding.as_ref()?;
        let id = BindingId {
            slot,
            generation: entry.generation,
        };
        let member = match member {
            0 => MemberRef::Parent,
            n => MemberRef::Child(n - 1),
        };
        Some((id, member))
    }

    /// Gives back the slab's spare capacity after a large load. Slots are
    /// never dropped: their generations keep stale ids from matching.
    pub fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// The number of bindings held (in any phase).
    pub fn len(&self) -> usize {
        self.n_live
    }

    /// Every binding with its id.
    pub fn iter(&self) -> impl Iterator<Item = (BindingId, &Binding<H>)> {
        self.slots.iter().enumerate().filter_map(|(slot, entry)| {
            let binding = entry.binding.as_ref()?;
            let slot = u32::try_from(slot).ok()?;
            Some((
                BindingId {
                    slot,
                    generation: entry.generation,
                },
                binding,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Grace, KillMode, ProcSpec, Signal};

    fn binding(parent: i64) -> Binding<()> {
        let spec = BindingSpec {
            name: None,
            parent: ProcSpec::unpinned(Pid::try_from(parent).unwrap()),
            children: vec![ProcSpec::unpinned(Pid::try_from(parent + 1).unwrap())],
            signal: Signal::TERM,
            grace: Grace::default(),
            kill: KillMode::Process,
        };
        Binding {
            number: 1,
            origin: Origin::Config,
            spec: Rc::new(spec),
            parent: None,
            children: vec![None],
            phase: Phase::Armed,
            scope: None,
            charged: 0,
        }
    }

    /// A name that passed no check (an older state file) is still printed
    /// in quotes it cannot close, with nothing hidden.
    #[test]
    fn labels_quote_and_escape_the_name() {
        let mut b = binding(10);
        assert_eq!(b.label(), "binding 10->11");
        Rc::make_mut(&mut b.spec).name = Some("x\" #1 (uid 0): removed\u{2028}\u{202E}".into());
        b.origin = Origin::Socket { uid: 1000 };
        b.number = 7;
        assert_eq!(
            b.label(),
            r#"binding "x\" #1 (uid 0): removed\u{2028}\u{202E}" #7 (uid 1000)"#
        );
        Rc::make_mut(&mut b.spec).name = Some("qemu-nbd: disk 1".into());
        assert_eq!(b.label(), r#"binding "qemu-nbd: disk 1" #7 (uid 1000)"#);
    }

    #[test]
    fn tokens_resolve_to_member_and_die_with_binding() {
        let mut bindings = Bindings::default();
        let a = bindings.insert(binding(10)).unwrap();
        let b = bindings.insert(binding(20)).unwrap();
        assert_eq!(bindings.resolve(a.token(0)), Some((a, MemberRef::Parent)));
        assert_eq!(bindings.resolve(b.token(3)), Some((b, MemberRef::Child(2))));
        assert!(bindings.remove(a).is_some());
        assert_eq!(bindings.resolve(a.token(0)), None);
        assert_eq!(bindings.len(), 1);
    }

    #[test]
    fn reused_slot_gets_new_generation() {
        let mut bindings = Bindings::default();
        let a = bindings.insert(binding(10)).unwrap();
        bindings.remove(a);
        let c = bindings.insert(binding(30)).unwrap();
        assert_ne!(a, c);
        assert!(
            bindings.get(a).is_none(),
            "a stale id must not reach the new binding"
        );
        assert!(bindings.remove(a).is_none());
        assert_eq!(bindings.get(c).map(|b| b.spec.parent.pid.get()), Some(30));
    }

    #[test]
    fn reserved_tokens_name_no_binding() {
        let mut bindings = Bindings::default();
        bindings.insert(binding(10)).unwrap();
        assert_eq!(bindings.resolve(Token(RESERVED_TOKENS)), None);
        assert_eq!(bindings.resolve(Token(usize::MAX)), None);
    }
}
