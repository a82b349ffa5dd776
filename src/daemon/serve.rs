//! Serving the control socket's connections: admission (32 a uid, 256 in
//! all), the order and bounds of the work done for each (a request is
//! handled only while the connection's answers drain; a uid whose passed
//! descriptors wait for the closer is not read), and the commit that ends
//! every loop iteration: the state file is written before any `bind` is
//! acknowledged, and a bind that could not be written is undone and
//! refused. What a request means is `requests`'.

use std::time::Instant;

use log::{debug, warn};
use mio::Token;

use super::closer::CLOSE_QUEUE_PER_UID;
use super::control::{
    self, Conn, Framing, Incoming, IDLE_TIMEOUT, MAX_CONNECTIONS, OUTPUT_LOW_WATER,
};
use super::requests::{encode, peer_pid, RefusalCode};
use super::{Daemon, CONN_TOKENS};
use crate::protocol::{Response, MAX_FDS, MAX_LINE};
use crate::sys::PeerCred;
use crate::watch::Backend;

/// Requests handled and reads made for one connection per turn before the
/// others get theirs.
const REQUESTS_PER_TURN: usize = 64;

/// Connections one uid other than root (or the daemon's own) may hold open;
/// at the cap, its idlest is closed to admit a new one.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;

/// Answers queued over all connections above which requests of uids
/// other than root and the daemon's own wait.
pub(super) const OUTPUT_TOTAL: usize = 16 * 1024 * 1024;

/// An answer waiting for the commit.
#[derive(Debug)]
pub(super) struct Reply {
    conn: usize,
    /// The answer, encoded (its size counts against the connection's
    /// output bound from the moment it is made).
    line: Vec<u8>,
    /// What this answer acknowledges, which must be on disk first.
    durable: Ack,
}

/// What an answer acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ack {
    /// Nothing that changes the state file.
    Nothing,
    /// A new binding, by number: undone if it cannot be written.
    Bind(u64),
    /// A removed binding, by number: reported if it cannot be written.
    Unbind(u64),
    /// A reload begun or queued: no answer now; the connection waits for
    /// the load's (and is read no further until then).
    Reload,
}

impl<B: Backend> Daemon<B> {
    /// Accepts every pending connection.
    pub(super) fn accept(&mut self) {
        loop {
            let stream = match self.control.accept() {
                Ok(Some(stream)) => stream,
                Ok(None) => return,
                Err(err) => {
                    // EMFILE and friends: the pending connection stays in
                    // the backlog; the next event retries.
                    warn!("control socket: cannot accept: {err}");
                    return;
                }
            };
            let mut conn = match Conn::new(stream) {
                Ok(conn) => conn,
                Err(err) => {
                    warn!("control socket: connection without peer credentials refused: {err}");
                    continue;
                }
            };
            let uid = conn.peer.uid;
            if !Self::is_admin(&conn.peer) {
                let n_uid = self
                    .conns
                    .iter()
                    .flatten()
                    .filter(|c| c.peer.uid == uid)
                    .count();
                if n_uid >= MAX_CONNECTIONS_PER_UID {
                    self.evict_idlest(Some(uid));
                }
            }
            if self.conns.iter().flatten().count() >= MAX_CONNECTIONS {
                self.evict_idlest(None);
            }
            let idx = match self.conns.iter().position(Option::is_none) {
                Some(idx) => idx,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            if let Err(err) = conn.register(self.poll.registry(), Token(CONN_TOKENS + idx)) {
                warn!("control socket: cannot register a connection: {err}");
                let socket = conn.into_socket(self.poll.registry());
                control::close_socket(socket, uid, &self.closer);
                continue;
            }
            debug!(
                "connection {idx} from uid {} pid {}",
                conn.peer.uid,
                peer_pid(&conn.peer)
            );
            if let Some(slot) = self.conns.get_mut(idx) {
                *slot = Some(conn);
            }
            // Data may have arrived before registration (edge-triggered).
            self.conn_event(idx);
        }
    }

    /// Closes the connection idle the longest (of `uid`, or of anyone),
    /// other than event followers if it can, to admit a new one.
    fn evict_idlest(&mut self, uid: Option<u32>) {
        let idlest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(idx, c)| c.as_ref().map(|c| (idx, c)))
            .filter(|(_, c)| uid.map_or(true, |uid| c.peer.uid == uid))
            // An event follower is silent by design: closed last.
            .min_by_key(|(_, c)| (c.streaming, c.last_active))
            .map(|(idx, _)| idx);
        if let Some(idx) = idlest {
            if let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) {
                match uid {
                    Some(uid) => warn!(
                        "control socket: uid {uid} has {MAX_CONNECTIONS_PER_UID} connections open; closing its idlest (pid {}) to admit a new one",
                        peer_pid(&conn.peer)
                    ),
                    None => warn!(
                        "control socket: {MAX_CONNECTIONS} connections open; closing the idlest (uid {} pid {}) to admit a new one",
                        conn.peer.uid,
                        peer_pid(&conn.peer)
                    ),
                }
            }
            self.close_conn(idx);
        }
    }

    pub(super) fn close_conn(&mut self, idx: usize) {
        self.feed.unsubscribe(idx);
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::take) {
            let uid = conn.peer.uid;
            let socket = conn.into_socket(self.poll.registry());
            control::close_socket(socket, uid, &self.closer);
            debug!("connection {idx} closed");
        }
        self.replies.retain(|r| r.conn != idx);
        self.forget_waiter(idx);
        self.waiting.retain(|&w| w != idx);
        self.throttled.retain(|&w| w != idx);
    }

    /// Closes connections that have been silent for [`IDLE_TIMEOUT`].
    pub(super) fn expire_idle_conns(&mut self) {
        let now = Instant::now();
        let idle: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(idx, c)| {
                c.as_ref()
                    .filter(|c| !c.streaming && now >= c.last_active + IDLE_TIMEOUT)
                    .filter(|_| !self.awaits_load(idx))
                    .map(|_| idx)
            })
            .collect();
        for idx in idle {
            debug!("connection {idx} idle for {IDLE_TIMEOUT:?}; closing it");
            self.close_conn(idx);
        }
    }

    /// The closer drained a lane the loop waited on: serve the
    /// connections held back for it again.
    pub(super) fn closer_event(&mut self) {
        let throttled = std::mem::take(&mut self.throttled);
        self.backlog.extend(throttled);
    }

    /// Answers queued or awaiting the commit, over every connection.
    pub(super) fn output_total(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .map(|c| c.output_len() + c.awaiting)
            .sum()
    }

    /// Reads and handles what a connection sent, as far as its limits
    /// allow; writes what it can.
    ///
    /// A request is handled only while the connection's answers (queued,
    /// and awaiting the commit) are under [`OUTPUT_LOW_WATER`], all
    /// connections' together under [`OUTPUT_TOTAL`] (root and the
    /// daemon's own user are exempt from the second), and the uid's
    /// descriptors waiting for the closer are few. A connection held back
    /// is taken up again when its answers drain (a writable event, or
    /// after the commit), when the total falls, or when the closer wakes
    /// the loop.
    pub(super) fn conn_event(&mut self, idx: usize) {
        if !self.flush_conn(idx) {
            return;
        }
        if self.feed.is_subscriber(idx) {
            self.subscriber_input(idx);
            return;
        }
        let mut n_handled = 0;
        let mut total = self.output_total();
        loop {
            if self.awaits_load(idx) {
                // Taken up again once the load's answer is queued.
                break;
            }
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            let peer = conn.peer;
            let held = conn.output_len() + conn.awaiting;
            if held >= OUTPUT_LOW_WATER {
                // Taken up again when the answers drain.
                break;
            }
            if total >= OUTPUT_TOTAL && !Self::is_admin(&peer) {
                if !self.waiting.contains(&idx) {
                    self.waiting.push(idx);
                }
                break;
            }
            // Requests handled and reads made both count: a client that
            // streams a line longer than the limit sends no request, and
            // must not keep the loop reading it either.
            if n_handled >= REQUESTS_PER_TURN {
                self.backlog.push(idx);
                break;
            }
            if let Some(incoming) = conn.next_line() {
                let (response, durable) = self.handle_incoming(&peer, incoming);
                if durable == Ack::Reload {
                    if let Some(waiters) = self.load_waiters() {
                        waiters.push(idx);
                    }
                    // Its next request waits for this answer.
                    break;
                }
                let line = encode(&response);
                total += line.len();
                if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                    conn.awaiting += line.len();
                }
                self.replies.push(Reply {
                    conn: idx,
                    line,
                    durable,
                });
                if self.take_subscription(idx) {
                    // The stream follows the answer; nothing else is read.
                    return;
                }
                n_handled += 1;
                continue;
            }
            if self.closer.pending(peer.uid) >= CLOSE_QUEUE_PER_UID && !self.closer.watch(peer.uid)
            {
                if !self.throttled.contains(&idx) {
                    warn!(
                        "control socket: uid {} pid {} passed descriptors that are slow to close; its connections wait until they are closed",
                        peer.uid,
                        peer_pid(&peer)
                    );
                    self.throttled.push(idx);
                }
                break;
            }
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            if !conn.read_once(&self.closer) && !conn.has_line() {
                break;
            }
            n_handled += 1;
        }
        self.flush_conn(idx);
    }

    /// Refuses a line the framing rejected, or handles it.
    fn handle_incoming(&mut self, peer: &PeerCred, incoming: Incoming) -> (Response, Ack) {
        let why = match incoming.framing {
            Framing::Ok => return self.handle_line(peer, &incoming.line, incoming.fds),
            Framing::Incomplete => "request refused: the input ended before its newline".to_string(),
            Framing::TooLong => format!("request refused: longer than {MAX_LINE} bytes"),
            Framing::TooManyFds => format!(
                "request refused: more than {MAX_FDS} descriptors came with it"
            ),
            Framing::NotPidfd => {
                "request refused: a descriptor other than a pidfd came with it (only pidfds may be passed)".to_string()
            }
        };
        self.refused(peer, "request", RefusalCode::BadRequest, &why);
        (
            Response {
                code: Some(RefusalCode::BadRequest.as_str().into()),
                ..Response::error(why)
            },
            Ack::Nothing,
        )
    }

    /// Writes a connection's queued output; closes it when it is finished
    /// or broken. Returns whether it is still open.
    pub(super) fn flush_conn(&mut self, idx: usize) -> bool {
        let awaits_load = self.awaits_load(idx);
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return false;
        };
        let ok = conn.flush();
        // A stream without `follow` is written to its end first.
        let done = conn.read_closed
            && !conn.has_output()
            && !conn.has_line()
            && conn.awaiting == 0
            && !conn.streaming
            && !awaits_load;
        if !ok || done {
            self.close_conn(idx);
            return false;
        }
        true
    }

    /// Queues an answer made outside the connection's turn (a reload's,
    /// once its load is applied) for this iteration's commit.
    pub(super) fn answer_later(&mut self, idx: usize, response: &Response) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let line = encode(response);
        conn.awaiting += line.len();
        self.replies.push(Reply {
            conn: idx,
            line,
            durable: Ack::Nothing,
        });
    }

    /// Ends an iteration: writes the state file, then sends the answers
    /// and allows the execs the rules read (their bindings now durable).
    /// A bind whose binding could not be written is undone and refused.
    pub(super) fn commit(&mut self) {
        let saved = self.save_state();
        if let Err(err) = &saved {
            log::error!("{err}; unacknowledged binds are refused and the write is retried");
        }
        self.rules.allow_execs();
        let replies = std::mem::take(&mut self.replies);
        let mut touched = Vec::new();
        for reply in replies {
            let line = match (&saved, reply.durable) {
                (Err(err), Ack::Bind(number)) => {
                    if let Some(&id) = self.by_number.get(&number) {
                        self.remove(id, "its binding could not be written to the state file");
                    }
                    encode(&Response::error(format!("binding not made: {err}")))
                }
                (Err(err), Ack::Unbind(number)) => encode(&Response::error(format!(
                    "binding {number} is removed, but {err}; a restart before the write succeeds would bring it back"
                ))),
                _ => reply.line,
            };
            let Some(conn) = self.conns.get_mut(reply.conn).and_then(Option::as_mut) else {
                continue;
            };
            conn.awaiting = 0;
            conn.queue(&line);
            touched.push(reply.conn);
        }
        touched.sort_unstable();
        touched.dedup();
        for idx in touched {
            // Requests held back while these answers awaited the commit
            // are taken up in the next iteration.
            if self.flush_conn(idx) {
                self.backlog.push(idx);
            }
        }
        if !self.waiting.is_empty() && self.output_total() < OUTPUT_TOTAL {
            let waiting = std::mem::take(&mut self.waiting);
            self.backlog.extend(waiting);
        }
        self.backlog.sort_unstable();
        self.backlog.dedup();
    }
}
