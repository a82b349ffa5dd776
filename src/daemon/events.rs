//! The event stream: what the daemon does (bound, parent exited,
//! signalled, escalated, child exited, unbound, refused, reload applied),
//! kept in a bounded ring of the last [`RING`] events and streamed to
//! `events` subscribers.
//!
//! The rooms that act call `self.feed.emit(..)` next to their log line,
//! after any signal of the moment is sent: an emit only appends to the
//! ring (and counts it for the metrics); nothing is written to a reader
//! until the end of the loop iteration (`pump_events`), so a reader costs
//! the signals nothing.
//!
//! A subscriber holds no events of its own: only its place in the ring.
//! Its answers are bounded as every connection's are (64 KiB queued, and
//! 16 MiB over every connection of uids other than root): past that,
//! nothing more is queued for it. A reader so slow that the ring overtakes
//! it loses the events it had not read; it stays connected, and its
//! stream says how many it lost in one `dropped` event before the next
//! one it gets. So a reader that never reads costs the daemon a bounded
//! amount of memory, whatever happens, and never holds the loop up.
//!
//! Who sees what: a socket binding's events go to its uid, refusals to
//! the uid refused; root and the daemon's own user see every event.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::info;

use super::bindings::{label, Binding, Origin};
use super::control::OUTPUT_LOW_WATER;
use super::metrics::Metrics;
use super::requests::{peer_pid, RefusalCode};
use super::serve::OUTPUT_TOTAL;
use super::Daemon;
use crate::config::{BindingSpec, Pid, Signal};
use crate::protocol::{EventBinding, EventInfo, ReloadInfo, StreamLine, VERSION};
use crate::sys::PeerCred;
use crate::watch::Backend;

/// How many recent events the ring keeps (what `events` without
/// `--follow` shows, at most).
pub const RING: usize = 1024;

/// Reads a subscriber's connection may make per turn (its input is read
/// only to notice that it closed).
const READS_PER_TURN: usize = 64;

/// The binding an event concerns. Cheap to make and to clone (its spec
/// is shared): the label is written only when a reader gets the event.
#[derive(Debug, Clone)]
pub(super) struct Subject {
    number: u64,
    origin: Origin,
    spec: Rc<BindingSpec>,
}

impl Subject {
    /// The binding `binding` is, for its events.
    pub(super) fn of<H>(binding: &Binding<H>) -> Subject {
        Subject {
            number: binding.number,
            origin: binding.origin,
            spec: Rc::clone(&binding.spec),
        }
    }
}

/// What happened.
#[derive(Debug)]
pub(super) enum What {
    /// A binding was made (configuration, restore or socket).
    Bound {
        parent: Pid,
        children: Vec<Pid>,
        signal: Signal,
    },
    /// The parent exited (or was gone when the binding was made).
    ParentExited { parent: Pid },
    /// A signal was sent to a process of the binding.
    Signalled { pid: Pid, signal: Signal },
    /// The grace ran out: SIGKILL follows to what is left.
    Escalated { children: Vec<Pid> },
    /// A bound child exited.
    ChildExited { pid: Pid },
    /// The binding ended: done, unbound or removed.
    Unbound { reason: String },
    /// A request was refused.
    Refused {
        uid: u32,
        pid: Option<i32>,
        op: &'static str,
        code: RefusalCode,
        reason: String,
    },
    /// A configuration was applied (at start or on reload).
    ReloadApplied(ReloadInfo),
}

impl What {
    fn kind(&self) -> &'static str {
        match self {
            What::Bound { .. } => "bound",
            What::ParentExited { .. } => "parent_exited",
            What::Signalled { .. } => "signalled",
            What::Escalated { .. } => "escalated",
            What::ChildExited { .. } => "child_exited",
            What::Unbound { .. } => "unbound",
            What::Refused { .. } => "refused",
            What::ReloadApplied(_) => "reload_applied",
        }
    }
}

#[derive(Debug)]
struct Event {
    seq: u64,
    time: SystemTime,
    subject: Option<Subject>,
    what: What,
}

impl Event {
    /// The uid other than root's that may see it (`None`: only root and
    /// the daemon's own user).
    fn owner(&self) -> Option<u32> {
        if let What::Refused { uid, .. } = self.what {
            return Some(uid);
        }
        match self.subject.as_ref().map(|s| s.origin) {
            Some(Origin::Socket { uid }) => Some(uid),
            _ => None,
        }
    }

    fn info(&self) -> EventInfo {
        let pids = |pids: &[Pid]| Some(pids.iter().map(|p| p.get()).collect());
        let mut info = EventInfo {
            seq: self.seq,
            time: rfc3339(self.time),
            kind: self.what.kind().into(),
            binding: self.subject.as_ref().map(|s| EventBinding {
                id: s.number,
                name: s.spec.name.clone(),
                origin: origin_name(s.origin).into(),
                rule: matches!(s.origin, Origin::Rule { .. })
                    .then(|| super::persist::rule_of(&s.spec))
                    .flatten(),
                uid: match s.origin {
                    Origin::Socket { uid } | Origin::Rule { uid, .. } => uid,
                    Origin::Config => nix::unistd::geteuid().as_raw(),
                },
                label: label(&s.spec, s.origin, s.number),
            }),
            parent: None,
            children: None,
            pid: None,
            signal: None,
            uid: None,
            op: None,
            code: None,
            reason: None,
            reload: None,
            count: None,
        };
        match &self.what {
            What::Bound {
                parent,
                children,
                signal,
            } => {
                info.parent = Some(parent.get());
                info.children = pids(children);
                info.signal = Some(signal.to_string());
            }
            What::ParentExited { parent } => info.parent = Some(parent.get()),
            What::Signalled { pid, signal } => {
                info.pid = Some(pid.get());
                info.signal = Some(signal.to_string());
            }
            What::Escalated { children } => {
                info.children = pids(children);
                info.signal = Some(Signal::KILL.to_string());
            }
            What::ChildExited { pid } => info.pid = Some(pid.get()),
            What::Unbound { reason } => info.reason = Some(reason.clone()),
            What::Refused {
                uid,
                pid,
                op,
                code,
                reason,
            } => {
                info.uid = Some(*uid);
                info.pid = *pid;
                info.op = Some((*op).into());
                info.code = Some(code.as_str().into());
                info.reason = Some(reason.clone());
            }
            What::ReloadApplied(reload) => info.reload = Some(*reload),
        }
        info
    }
}

/// "config", "socket" or "rule": how the protocol and the metrics name an
/// origin.
pub(super) fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Config => "config",
        Origin::Socket { .. } => "socket",
        Origin::Rule { .. } => "rule",
    }
}

/// One `events` reader.
#[derive(Debug)]
struct Subscriber {
    /// Its connection.
    conn: usize,
    uid: u32,
    admin: bool,
    /// The sequence number of the next event it may get.
    next: u64,
    /// Without `follow`: the first event it will not get.
    until: Option<u64>,
    /// Events it would have seen that the ring dropped before it read
    /// them, and the last of them, not told yet.
    dropped: u64,
    last_dropped: u64,
}

impl Subscriber {
    fn sees(&self, event: &Event) -> bool {
        self.admin || event.owner() == Some(self.uid)
    }
}

/// The ring, its readers, and the metrics the events feed.
#[derive(Debug)]
pub struct Feed {
    ring: VecDeque<Event>,
    next_seq: u64,
    subscribers: Vec<Subscriber>,
    /// An `events` request handled for a connection not known yet (the
    /// request handler does not know which): taken by `conn_event`.
    pending: Option<(PeerCred, bool, bool)>,
    /// The counters.
    pub(super) metrics: Metrics,
}

impl Feed {
    pub(super) fn new() -> Feed {
        Feed {
            ring: VecDeque::with_capacity(RING),
            next_seq: 1,
            subscribers: Vec::new(),
            pending: None,
            metrics: Metrics::default(),
        }
    }

    /// Records an event. Cheap: no output, no system call but the clock.
    pub(super) fn emit(&mut self, subject: Option<&Subject>, what: What) {
        self.metrics.count(&what);
        if self.ring.len() >= RING {
            if let Some(old) = self.ring.pop_front() {
                for sub in &mut self.subscribers {
                    if sub.next == old.seq {
                        sub.next += 1;
                        if sub.sees(&old) {
                            sub.dropped += 1;
                            sub.last_dropped = old.seq;
                            self.metrics.events_dropped += 1;
                        }
                    }
                }
            }
        }
        self.ring.push_back(Event {
            seq: self.next_seq,
            time: SystemTime::now(),
            subject: subject.cloned(),
            what,
        });
        self.next_seq += 1;
    }

    /// Readers connected now.
    pub(super) fn n_subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// Forgets the reader on connection `conn` (it closed).
    pub(super) fn unsubscribe(&mut self, conn: usize) {
        self.subscribers.retain(|s| s.conn != conn);
    }

    /// Whether connection `conn` is a reader.
    pub(super) fn is_subscriber(&self, conn: usize) -> bool {
        self.subscribers.iter().any(|s| s.conn == conn)
    }

    /// Notes an `events` request of `peer`, for the connection it came on
    /// (see [`Daemon::take_subscription`]).
    pub(super) fn request(&mut self, peer: PeerCred, admin: bool, follow: bool) {
        self.pending = Some((peer, admin, follow));
    }

    fn first_seq(&self) -> u64 {
        self.ring.front().map_or(self.next_seq, |e| e.seq)
    }
}

impl<B: Backend> Daemon<B> {
    /// Makes connection `idx` a reader if the request just handled for it
    /// was `events`. Returns whether it did.
    pub(super) fn take_subscription(&mut self, idx: usize) -> bool {
        let Some((peer, admin, follow)) = self.feed.pending.take() else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return false;
        };
        conn.streaming = true;
        // Requests sent after `events` on the same connection are not
        // answered.
        while conn.next_line().is_some() {}
        let next = self.feed.first_seq();
        self.feed.subscribers.push(Subscriber {
            conn: idx,
            uid: peer.uid,
            admin,
            next,
            until: (!follow).then_some(self.feed.next_seq),
            dropped: 0,
            last_dropped: 0,
        });
        if follow {
            info!(
                "uid {} pid {} follows the event stream",
                peer.uid,
                peer_pid(&peer)
            );
        }
        true
    }

    /// Input on a reader's connection is read only to notice its end
    /// (which ends a `follow` stream; a stream without `follow` is still
    /// written to its end); requests on it are not answered.
    pub(super) fn subscriber_input(&mut self, idx: usize) {
        let follow = self
            .feed
            .subscribers
            .iter()
            .any(|s| s.conn == idx && s.until.is_none());
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            while conn.next_line().is_some() {}
            if !conn.read_once(&self.closer) {
                while conn.next_line().is_some() {}
                if conn.read_closed && follow {
                    self.close_conn(idx);
                }
                return;
            }
        }
        self.backlog.push(idx);
    }

    /// Queues for every reader what it may get now, within the output
    /// bounds, and writes it. Run once at the end of each iteration.
    pub(super) fn pump_events(&mut self) {
        if self.feed.subscribers.is_empty() {
            return;
        }
        let mut total = self.output_total();
        let first = self.feed.first_seq();
        let mut touched = Vec::new();
        let mut finished = Vec::new();
        let feed = &mut self.feed;
        for sub in &mut feed.subscribers {
            let Some(conn) = self.conns.get_mut(sub.conn).and_then(Option::as_mut) else {
                continue;
            };
            // The answer to `events` goes first (it waits for the commit).
            if conn.awaiting > 0 {
                continue;
            }
            let mut queued = false;
            loop {
                if conn.output_len() >= OUTPUT_LOW_WATER || (!sub.admin && total >= OUTPUT_TOTAL) {
                    break;
                }
                let line = if sub.dropped > 0 {
                    let line = dropped_line(sub.dropped, sub.last_dropped);
                    sub.dropped = 0;
                    line
                } else {
                    if sub.until.is_some_and(|until| sub.next >= until) {
                        break;
                    }
                    let at = usize::try_from(sub.next.saturating_sub(first)).unwrap_or(usize::MAX);
                    let Some(event) = feed.ring.get(at) else {
                        break;
                    };
                    sub.next += 1;
                    if !sub.sees(event) {
                        continue;
                    }
                    encode_line(&StreamLine {
                        v: VERSION,
                        event: Some(event.info()),
                        end: false,
                    })
                };
                total += line.len() + 1;
                conn.queue(&line);
                queued = true;
            }
            let ended = sub.dropped == 0 && sub.until.is_some_and(|until| sub.next >= until);
            if ended && conn.output_len() < OUTPUT_LOW_WATER {
                conn.queue(&encode_line(&StreamLine {
                    v: VERSION,
                    event: None,
                    end: true,
                }));
                // Closed once written (see `flush_conn`).
                while conn.next_line().is_some() {}
                conn.streaming = false;
                conn.read_closed = true;
                finished.push(sub.conn);
                queued = true;
            }
            if queued {
                touched.push(sub.conn);
            }
        }
        feed.subscribers.retain(|s| !finished.contains(&s.conn));
        for idx in touched {
            self.flush_conn(idx);
        }
    }

    /// Records a refusal: logged, and an event for the uid refused.
    pub(super) fn refused(
        &mut self,
        peer: &PeerCred,
        op: &'static str,
        code: RefusalCode,
        why: &str,
    ) {
        self.refuse(peer, op, why);
        self.feed.emit(
            None,
            What::Refused {
                uid: peer.uid,
                pid: peer.pid,
                op,
                code,
                reason: why.to_owned(),
            },
        );
    }

    /// When the loop woke (for the delay from a parent's exit to its
    /// signal).
    pub(super) fn woke(&mut self) {
        self.feed.metrics.woke = Instant::now();
    }
}

fn dropped_line(count: u64, last: u64) -> Vec<u8> {
    let info = EventInfo {
        seq: last,
        time: rfc3339(SystemTime::now()),
        kind: "dropped".into(),
        binding: None,
        parent: None,
        children: None,
        pid: None,
        signal: None,
        uid: None,
        op: None,
        code: None,
        reason: Some("this reader fell behind; the events were dropped for it".into()),
        reload: None,
        count: Some(count),
    };
    encode_line(&StreamLine {
        v: VERSION,
        event: Some(info),
        end: false,
    })
}

fn encode_line(line: &StreamLine) -> Vec<u8> {
    serde_json::to_vec(line).unwrap_or_else(|_| br#"{"v":1,"end":true}"#.to_vec())
}

/// `time` as RFC 3339, UTC, with milliseconds.
pub(super) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_849_200, 999), "2026-11-28T07:00:00.999Z");
    }

    fn refusal(uid: u32) -> What {
        What::Refused {
            uid,
            pid: None,
            op: "unbind",
            code: RefusalCode::NoSuchBinding,
            reason: "no binding 7".into(),
        }
    }

    #[test]
    fn the_ring_is_bounded_and_a_reader_left_behind_counts_only_its_own() {
        let mut feed = Feed::new();
        feed.subscribers.push(Subscriber {
            conn: 0,
            uid: 1000,
            admin: false,
            next: 1,
            until: None,
            dropped: 0,
            last_dropped: 0,
        });
        for n in 0..RING * 3 {
            feed.emit(None, refusal(if n % 2 == 0 { 1000 } else { 2000 }));
        }
        assert_eq!(feed.ring.len(), RING);
        let sub = &feed.subscribers[0];
        assert_eq!(sub.next, feed.first_seq());
        // Half of what was dropped was another uid's.
        assert_eq!(sub.dropped, u64::try_from(RING).unwrap());
        assert_eq!(feed.metrics.refusals.values().sum::<u64>(), 3 * 1024);
    }
}
