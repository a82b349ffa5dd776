//! Bookkeeping for backends whose handles are not kernel objects (netlink,
//! poll, kqueue): which tokens wait on which pid, and with which start
//! time, so that one exit event for a pid reaches every binding that
//! watches that process, and none that watches a later one with the same
//! pid.

use std::collections::{HashMap, HashSet};
use std::io;

use mio::Token;

use super::{Delivery, IdentityUnknown};
use crate::vocab::Signal;

/// A process known by pid and start time: the handle of the backends
/// without process descriptors. It does not hold the process; every use
/// checks the start time again first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidHandle {
    /// The pid.
    pub pid: i32,
    /// Its start time when it was opened.
    pub start: u64,
    /// Tells apart two handles on the same process (so that deregistering
    /// one leaves the other's watch in place).
    pub serial: u64,
}

/// Signals `handle` by pid with kill(2), only if `exited` (its start
/// time, read again by the caller just before this) says it is still the
/// pinned process. A read that failed proves nothing: then nothing is
/// signalled and the error is an [`IdentityUnknown`]. What remains is the
/// window between the check and the kill: see the backends' module
/// documentation.
pub fn kill_checked(
    handle: &PidHandle,
    sig: Signal,
    exited: io::Result<bool>,
) -> io::Result<Delivery> {
    match exited {
        Ok(true) => return Ok(Delivery::Gone),
        Ok(false) => {}
        Err(err) => return Err(IdentityUnknown::error(handle.pid, err)),
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(handle.pid), sig.get()) {
        Ok(()) => Ok(Delivery::Sent),
        Err(nix::errno::Errno::ESRCH) => Ok(Delivery::Gone),
        Err(err) => Err(err.into()),
    }
}

/// One token waiting for one process.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    /// The handle's serial.
    pub serial: u64,
    /// Its start time.
    pub start: u64,
    /// The token to report.
    pub token: Token,
}

/// The waiters of one pid: nearly always one, kept inline (no allocation
/// of its own, which halves what a binding costs these backends).
#[derive(Debug)]
enum Waiters {
    One(Waiter),
    Many(Vec<Waiter>),
}

impl Waiters {
    fn push(&mut self, waiter: Waiter) -> usize {
        match self {
            Waiters::One(first) => {
                *self = Waiters::Many(vec![*first, waiter]);
                2
            }
            Waiters::Many(all) => {
                all.push(waiter);
                all.len()
            }
        }
    }

    /// Keeps the waiters for which `keep` holds; returns whether any are
    /// left.
    fn retain(&mut self, mut keep: impl FnMut(&Waiter) -> bool) -> bool {
        match self {
            Waiters::One(one) => keep(one),
            Waiters::Many(all) => {
                all.retain(|w| keep(w));
                if let [only] = all.as_slice() {
                    *self = Waiters::One(*only);
                }
                !matches!(self, Waiters::Many(all) if all.is_empty())
            }
        }
    }
}

/// Tokens waiting on pids.
#[derive(Debug, Default)]
pub struct Watched {
    by_pid: HashMap<i32, Waiters>,
    next_serial: u64,
    /// Tokens of processes found exited outside an event (at registration),
    /// for the next `collect`.
    pending: Vec<Token>,
    /// Serials of the handles reported exited and not yet deregistered: an
    /// exit, once proven, stays proven, and [`Watched::is_exited`] answers
    /// for them without reading anything (a read that failed later must
    /// not undo it).
    exited: HashSet<u64>,
}

impl Watched {
    /// A serial for a new handle.
    pub fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Adds a waiter; returns whether it is the first for `pid`.
    pub fn add(&mut self, handle: &PidHandle, token: Token) -> bool {
        let waiter = Waiter {
            serial: handle.serial,
            start: handle.start,
            token,
        };
        match self.by_pid.entry(handle.pid) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().push(waiter) == 1,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Waiters::One(waiter));
                true
            }
        }
    }

    /// Removes the waiter of `handle`; returns whether `pid` has none left
    /// (false also when it was not watched at all).
    pub fn remove(&mut self, handle: &PidHandle) -> bool {
        self.exited.remove(&handle.serial);
        let Some(waiters) = self.by_pid.get_mut(&handle.pid) else {
            return false;
        };
        let before = matches!(waiters, Waiters::One(w) if w.serial == handle.serial);
        if before || !waiters.retain(|w| w.serial != handle.serial) {
            self.by_pid.remove(&handle.pid);
            true
        } else {
            false
        }
    }

    /// Reports the waiters on `pid` for which `exited(start)` holds: their
    /// tokens go to `out` and they are removed. Returns whether waiters
    /// remain for `pid`.
    pub fn settle(
        &mut self,
        pid: i32,
        mut exited: impl FnMut(u64) -> bool,
        out: &mut Vec<Token>,
    ) -> bool {
        let Some(waiters) = self.by_pid.get_mut(&pid) else {
            return false;
        };
        let proven = &mut self.exited;
        let left = waiters.retain(|w| {
            if exited(w.start) {
                out.push(w.token);
                proven.insert(w.serial);
                false
            } else {
                true
            }
        });
        if !left {
            self.by_pid.remove(&pid);
        }
        left
    }

    /// Queues `token`, the waiter of `handle` found exited outside an
    /// event, for the next collect (and removes the waiter).
    pub fn push_pending(&mut self, handle: &PidHandle, token: Token) {
        self.remove(handle);
        self.exited.insert(handle.serial);
        self.pending.push(token);
    }

    /// Whether `handle` was reported exited (and is not deregistered yet).
    pub fn is_exited(&self, handle: &PidHandle) -> bool {
        self.exited.contains(&handle.serial)
    }

    /// Whether any waiter is on `pid`: a hash lookup, nothing read.
    #[cfg_attr(not(linux_like), allow(dead_code))]
    pub fn contains(&self, pid: i32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Moves the queued tokens to `out`.
    pub fn drain_pending(&mut self, out: &mut Vec<Token>) {
        out.append(&mut self.pending);
    }

    /// Whether tokens are queued.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The watched pids.
    #[cfg_attr(not(linux_like), allow(dead_code))]
    pub fn pids(&self) -> Vec<i32> {
        self.by_pid.keys().copied().collect()
    }

    /// Whether nothing is watched.
    #[cfg_attr(not(linux_like), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_exit_reaches_every_waiter_of_that_process_only() {
        let mut w = Watched::default();
        let old = PidHandle {
            pid: 100,
            start: 5,
            serial: w.serial(),
        };
        let twin = PidHandle {
            serial: w.serial(),
            ..old
        };
        let successor = PidHandle {
            pid: 100,
            start: 9,
            serial: w.serial(),
        };
        assert!(w.add(&old, Token(1)));
        assert!(!w.add(&twin, Token(2)));
        assert!(!w.add(&successor, Token(3)));
        let mut out = Vec::new();
        // The process that started at 5 is gone; the one at 9 lives.
        assert!(w.settle(100, |start| start == 5, &mut out));
        assert_eq!(out, vec![Token(1), Token(2)]);
        assert!(w.is_exited(&old) && w.is_exited(&twin) && !w.is_exited(&successor));
        // Deregistering an already reported handle changes nothing.
        assert!(!w.remove(&old));
        assert!(!w.is_exited(&old));
        assert!(w.remove(&successor));
        assert!(w.is_empty());
        out.clear();
        assert!(!w.settle(100, |_| true, &mut out));
        assert!(out.is_empty());
    }
}
