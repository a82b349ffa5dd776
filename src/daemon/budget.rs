//! What each uid may make the daemon hold.
//!
//! Every process a binding holds costs a descriptor with the pidfd backend
//! (a pidfd), bookkeeping and work when its parent dies with every backend,
//! and room in the state file for socket bindings. The budget counts held
//! processes per uid (a binding's parent, children, and the group or tree
//! members it collects) so that no user can take what the others need:
//!
//! - a uid other than root may hold at most [`Budget::per_uid`] processes;
//! - all uids other than root together may hold at most
//!   [`Budget::others`], which leaves a reserve of the descriptor limit
//!   that only root (its socket bindings and the configuration) and the
//!   control socket's connections can use;
//! - root's socket bindings may use everything but [`CONTROL_RESERVE`],
//!   kept for the control socket so that `tetherctl status` always works.
//!
//! Configuration bindings are root's and are counted, never refused: the
//! administrator chose them, and one that cannot be opened fails alone.

use std::collections::HashMap;

/// Descriptors kept for the control socket (its connections, the closer's
/// queue) and the daemon's own files, whoever else holds what.
pub const CONTROL_RESERVE: usize = 512;

/// How many processes a backend that holds no descriptor per process
/// (netlink, poll, kqueue) may hold in all: each costs a few hundred bytes
/// and a look when its parent dies, so the bound is memory, not the
/// descriptor limit.
pub const PROCESSES_WITHOUT_DESCRIPTORS: u64 = 1 << 20;

/// What the limits below are shares of: the descriptor limit where every
/// held process is a descriptor (pidfd), else
/// [`PROCESSES_WITHOUT_DESCRIPTORS`] (or the descriptor limit, if larger).
pub fn capacity(fd_limit: u64, holds_descriptors: bool) -> u64 {
    if holds_descriptors {
        fd_limit
    } else {
        fd_limit.max(PROCESSES_WITHOUT_DESCRIPTORS)
    }
}

/// Held processes, by uid.
#[derive(Debug)]
pub struct Budget {
    held: HashMap<u32, usize>,
    /// Socket bindings, by the uid that made them (root included).
    socket_bindings: HashMap<u32, usize>,
    /// Held by uids other than root, together.
    held_by_others: usize,
    /// Held by everyone.
    held_total: usize,
    per_uid: usize,
    others: usize,
    total: usize,
}

impl Budget {
    /// A budget for a daemon that may hold `capacity` processes (see
    /// [`capacity`]), whose users may each hold `max_bindings_per_uid`
    /// socket bindings.
    pub fn new(capacity: u64, max_bindings_per_uid: usize) -> Budget {
        let mut budget = Budget {
            held: HashMap::new(),
            socket_bindings: HashMap::new(),
            held_by_others: 0,
            held_total: 0,
            per_uid: 0,
            others: 0,
            total: 0,
        };
        budget.set_limits(capacity, max_bindings_per_uid);
        budget
    }

    /// Sets the limits again (after a reload changed
    /// `max_bindings_per_uid`). What is held stays held.
    pub fn set_limits(&mut self, capacity: u64, max_bindings_per_uid: usize) {
        let limit = usize::try_from(capacity).unwrap_or(usize::MAX);
        self.total = limit.saturating_sub(CONTROL_RESERVE);
        // A quarter of the descriptors (at least 1,024, or half of a limit
        // below 2,048) is root's alone.
        let reserve = (limit / 4).max(1024.min(limit / 2));
        self.others = limit.saturating_sub(reserve).min(self.total);
        // Four processes a binding on average; never more than the others'
        // share.
        self.per_uid = max_bindings_per_uid.saturating_mul(4).min(self.others);
    }

    /// How many processes one uid other than root may hold.
    #[cfg(test)]
    pub fn per_uid(&self) -> usize {
        self.per_uid
    }

    /// How many processes all uids other than root may hold together.
    #[cfg(test)]
    pub fn others(&self) -> usize {
        self.others
    }

    /// What `uid` holds.
    pub fn held(&self, uid: u32) -> usize {
        self.held.get(&uid).copied().unwrap_or(0)
    }

    /// How many more processes `uid` may hold now.
    pub fn room(&self, uid: u32) -> usize {
        let total_room = self.total.saturating_sub(self.held_total);
        if uid == 0 {
            return total_room;
        }
        self.per_uid
            .saturating_sub(self.held(uid))
            .min(self.others.saturating_sub(self.held_by_others))
            .min(total_room)
    }

    /// Whether `uid` may hold `n` more processes; why not, if not.
    pub fn check(&self, uid: u32, n: usize) -> Result<(), String> {
        if n <= self.room(uid) {
            return Ok(());
        }
        let held = self.held(uid);
        if uid == 0 {
            return Err(format!(
                "the daemon holds {} processes and keeps {CONTROL_RESERVE} descriptors for its control socket; {n} more do not fit (raise LimitNOFILE)",
                self.held_total
            ));
        }
        if held + n > self.per_uid {
            return Err(format!(
                "uid {uid} holds {held} processes in its bindings and may hold {}; {n} more do not fit",
                self.per_uid
            ));
        }
        Err(format!(
            "the users other than root hold {} processes, all the daemon allows them ({} of its descriptors are kept for root); {n} more do not fit",
            self.held_by_others,
            self.total.saturating_sub(self.others)
        ))
    }

    /// How many socket bindings `uid` holds (kept here so that checking
    /// the per-uid cap costs the same however many bindings are held).
    pub fn socket_bindings(&self, uid: u32) -> usize {
        self.socket_bindings.get(&uid).copied().unwrap_or(0)
    }

    /// Counts a socket binding made by `uid` (`made`), or one that ended.
    pub fn count_socket_binding(&mut self, uid: u32, made: bool) {
        if made {
            *self.socket_bindings.entry(uid).or_insert(0) += 1;
        } else if let Some(n) = self.socket_bindings.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.socket_bindings.remove(&uid);
            }
        }
    }

    /// Counts `n` more processes held by `uid`.
    pub fn charge(&mut self, uid: u32, n: usize) {
        if n == 0 {
            return;
        }
        *self.held.entry(uid).or_insert(0) += n;
        self.held_total += n;
        if uid != 0 {
            self.held_by_others += n;
        }
    }

    /// Counts `n` fewer processes held by `uid`.
    pub fn release(&mut self, uid: u32, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(held) = self.held.get_mut(&uid) {
            let n = n.min(*held);
            *held -= n;
            self.held_total = self.held_total.saturating_sub(n);
            if uid != 0 {
                self.held_by_others = self.held_by_others.saturating_sub(n);
            }
            if *held == 0 {
                self.held.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_capped_and_root_keeps_a_reserve() {
        let mut budget = Budget::new(20_000, 1024);
        assert_eq!(budget.per_uid(), 4096);
        assert_eq!(budget.others(), 15_000);
        // One user: its own cap.
        budget.charge(1000, 4000);
        assert!(budget.check(1000, 96).is_ok());
        let why = budget.check(1000, 97).unwrap_err();
        assert!(why.contains("uid 1000 holds 4000 processes"), "{why}");
        // Users together: the others' share.
        budget.charge(1001, 4096);
        budget.charge(1002, 4096);
        budget.charge(1003, 2800);
        let why = budget.check(1004, 9).unwrap_err();
        assert!(why.contains("users other than root"), "{why}");
        // Root still has the reserve.
        assert!(budget.check(0, 4000).is_ok());
        budget.release(1003, 2800);
        assert!(budget.check(1004, 9).is_ok());
        assert_eq!(budget.held(1003), 0);
    }

    #[test]
    fn a_backend_without_descriptors_is_bounded_by_memory_not_the_limit() {
        assert_eq!(capacity(20_000, true), 20_000);
        assert_eq!(capacity(20_000, false), PROCESSES_WITHOUT_DESCRIPTORS);
        assert_eq!(capacity(1 << 21, false), 1 << 21);
        let mut budget = Budget::new(capacity(20_000, false), 1024);
        budget.charge(0, 100_000);
        assert!(budget.check(0, 1).is_ok());
        assert_eq!(budget.per_uid(), 4096);
    }

    #[test]
    fn a_small_descriptor_limit_still_leaves_users_a_share() {
        let budget = Budget::new(1024, 1024);
        assert_eq!(budget.others(), 512);
        assert_eq!(budget.per_uid(), 512);
    }

    #[test]
    fn root_is_refused_only_at_the_control_reserve() {
        let mut budget = Budget::new(2048, 1024);
        budget.charge(0, 2048 - CONTROL_RESERVE - 1);
        assert!(budget.check(0, 1).is_ok());
        assert!(budget.check(0, 2).is_err());
    }
}
