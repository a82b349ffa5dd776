//! Closing what clients hand the daemon, away from the event loop.
//!
//! A descriptor a client passes, and a client's connection, can make
//! `close` block: the last close of a TCP socket with `SO_LINGER` and a
//! full send buffer waits for as long as its peer likes, a file on a FUSE
//! mount waits for its server's answer to the flush, and closing a Unix
//! socket closes whatever descriptors are still queued in it. The loop
//! must never wait on a client, so it never makes such a last close
//! itself: it hands the descriptor to a lane of this module.
//!
//! There is one lane per uid, served by at most one thread at a time
//! (started when something is queued, gone when the lane is empty): a
//! descriptor that blocks stalls only the lane of the uid that passed it.
//! The loop reads how many descriptors wait in a uid's lane and stops
//! reading from that uid's connections while the lane is long; the lane's
//! thread wakes the loop (through a `mio::Waker`) when it has drained a
//! lane the loop is waiting on.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::{debug, warn};

/// Descriptors a uid may have waiting to be closed before its
/// connections are no longer read.
pub const CLOSE_QUEUE_PER_UID: usize = 64;

/// Lanes that may have a thread at once; lanes beyond share the last one.
const MAX_LANE_THREADS: usize = 64;

/// The lane shared by uids beyond [`MAX_LANE_THREADS`].
const OVERFLOW_LANE: u32 = u32::MAX;

/// The closing lanes, shared with their threads.
#[derive(Debug, Clone)]
pub struct Closer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    lanes: Mutex<HashMap<u32, Lane>>,
    waker: mio::Waker,
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<OwnedFd>,
    /// Whether a thread serves the lane (it closes one descriptor at a
    /// time; `in_hand` says whether it holds one now).
    serving: bool,
    in_hand: bool,
    /// Whether the loop waits for this lane to shrink.
    watched: bool,
}

impl Lane {
    fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.in_hand)
    }
}

impl Closer {
    /// Lanes that wake the loop through `waker` when a watched lane drains.
    pub fn new(waker: mio::Waker) -> Closer {
        Closer {
            shared: Arc::new(Shared {
                lanes: Mutex::new(HashMap::new()),
                waker,
            }),
        }
    }

    /// Queues `fd`, which a client of `uid` passed or owns, for closing.
    pub fn close(&self, uid: u32, fd: OwnedFd) {
        let mut lanes = self.shared.lock();
        let n_serving = lanes.values().filter(|l| l.serving).count();
        let uid = if lanes.contains_key(&uid) || n_serving < MAX_LANE_THREADS {
            uid
        } else {
            OVERFLOW_LANE
        };
        let lane = lanes.entry(uid).or_default();
        lane.queue.push_back(fd);
        if lane.serving {
            return;
        }
        lane.serving = true;
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("tetherd-close-{uid}"))
            .stack_size(64 * 1024)
            .spawn(move || shared.serve(uid));
        if let Err(err) = spawned {
            // The descriptor stays queued; the next close tries again.
            lane.serving = false;
            warn!(
                "cannot start a thread to close descriptors of uid {uid}: {err}; they stay queued"
            );
        }
    }

    /// How many descriptors of `uid` wait to be closed (the one being
    /// closed included).
    pub fn pending(&self, uid: u32) -> usize {
        self.shared.lock().get(&uid).map_or(0, Lane::pending)
    }

    /// How many descriptors wait to be closed, all lanes together.
    pub fn pending_total(&self) -> usize {
        self.shared.lock().values().map(Lane::pending).sum()
    }

    /// Asks for a wake-up of the loop once `uid`'s lane is below
    /// [`CLOSE_QUEUE_PER_UID`]. Returns whether it is below already.
    pub fn watch(&self, uid: u32) -> bool {
        let mut lanes = self.shared.lock();
        match lanes.get_mut(&uid) {
            Some(lane) if lane.pending() >= CLOSE_QUEUE_PER_UID => {
                lane.watched = true;
                false
            }
            _ => true,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Lane>> {
        // A lane thread that panicked left the map consistent (every
        // change to it is a single step), so its poison is ignored.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lane's thread: closes its descriptors in order until none is
    /// left. A close that blocks holds up this lane only.
    fn serve(&self, uid: u32) {
        loop {
            let fd = {
                let mut lanes = self.lock();
                let Some(lane) = lanes.get_mut(&uid) else {
                    return;
                };
                match lane.queue.pop_front() {
                    Some(fd) => {
                        lane.in_hand = true;
                        fd
                    }
                    None => {
                        let watched = lane.watched;
                        lanes.remove(&uid);
                        drop(lanes);
                        if watched {
                            self.wake();
                        }
                        return;
                    }
                }
            };
            drop(fd);
            let mut lanes = self.lock();
            if let Some(lane) = lanes.get_mut(&uid) {
                lane.in_hand = false;
                if lane.watched && lane.pending() < CLOSE_QUEUE_PER_UID {
                    lane.watched = false;
                    drop(lanes);
                    self.wake();
                }
            }
        }
    }

    fn wake(&self) {
        if let Err(err) = self.waker.wake() {
            debug!("cannot wake the event loop: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn closes_in_the_background_and_wakes_a_watcher() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(7)).unwrap();
        let closer = Closer::new(waker);
        // A pipe whose write end is closed by the lane: its read end sees EOF.
        let (read, write) = nix::unistd::pipe().unwrap();
        // Hold the lane long enough to be watched: queue many descriptors.
        for _ in 0..CLOSE_QUEUE_PER_UID {
            let (r, w) = nix::unistd::pipe().unwrap();
            closer.close(1000, r);
            closer.close(1000, w);
        }
        // The lane may drain before the watch is asked for: then no wake-up
        // is owed.
        let drained_already = closer.watch(1000);
        closer.close(1000, write);
        let deadline = Instant::now() + Duration::from_secs(10);
        while closer.pending(1000) > 0 {
            assert!(Instant::now() < deadline, "the lane never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&read, &mut buf).unwrap(), 0);
        if !drained_already {
            let mut events = mio::Events::with_capacity(4);
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            assert!(events.iter().any(|e| e.token() == mio::Token(7)));
        }
        assert_eq!(closer.pending_total(), 0);
    }
}
