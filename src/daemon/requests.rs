//! Control requests: what each one means, who may make it, and when its
//! answer may be sent.
//!
//! A request is answered at the end of the loop iteration it arrived in,
//! after the state file has been written: a `bind` is acknowledged only
//! once it is on disk, and if the write fails the binding is undone and
//! the client told so. Every refusal is logged with the peer's uid and pid.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use log::{debug, info, warn};
use mio::Token;

use super::bindings::{Member, MAX_CHILDREN};
use super::closer::CLOSE_QUEUE_PER_UID;
use super::control::{
    self, Conn, Framing, Incoming, IDLE_TIMEOUT, MAX_CONNECTIONS, OUTPUT_LOW_WATER,
};
use super::{Daemon, Origin, Phase, Proven, CONN_TOKENS};
use crate::config::{parse_duration, parse_kill, parse_signal, BindingSpec, Pid, ProcSpec};
use crate::protocol::{
    BindRequest, BindingInfo, Op, ProcRef, Request, Response, StatusInfo, MAX_FDS, MAX_LINE,
};
use crate::sys::PeerCred;
use crate::watch::{Backend, Identity};

/// Requests handled for one connection per turn before the others get
/// theirs.
const REQUESTS_PER_TURN: usize = 64;

/// Connections one uid other than root (or the daemon's own) may hold open;
/// at the cap, its idlest is closed to admit a new one.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;

/// Answers queued over all connections above which requests of uids
/// other than root and the daemon's own wait.
const OUTPUT_TOTAL: usize = 16 * 1024 * 1024;

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
    /// A new binding: undone if it cannot be written.
    Bind(u64),
    /// A removed binding: reported if it cannot be written.
    Unbind(u64),
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
    /// to admit a new one.
    fn evict_idlest(&mut self, uid: Option<u32>) {
        let idlest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(idx, c)| c.as_ref().map(|c| (idx, c)))
            .filter(|(_, c)| uid.map_or(true, |uid| c.peer.uid == uid))
            .min_by_key(|(_, c)| c.last_active)
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

    fn close_conn(&mut self, idx: usize) {
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::take) {
            let uid = conn.peer.uid;
            let socket = conn.into_socket(self.poll.registry());
            control::close_socket(socket, uid, &self.closer);
            debug!("connection {idx} closed");
        }
        self.replies.retain(|r| r.conn != idx);
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
                    .filter(|c| now >= c.last_active + IDLE_TIMEOUT)
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
    fn output_total(&self) -> usize {
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
        let mut n_handled = 0;
        let mut total = self.output_total();
        loop {
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
            if n_handled >= REQUESTS_PER_TURN {
                self.backlog.push(idx);
                break;
            }
            if let Some(incoming) = conn.next_line() {
                let (response, durable) = self.handle_incoming(&peer, incoming);
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
        self.refuse(peer, "request", &why);
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
    fn flush_conn(&mut self, idx: usize) -> bool {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return false;
        };
        let ok = conn.flush();
        let done = conn.read_closed && !conn.has_output() && !conn.has_line() && conn.awaiting == 0;
        if !ok || done {
            self.close_conn(idx);
            return false;
        }
        true
    }

    /// Ends an iteration: writes the state file, then sends the answers.
    /// A bind whose binding could not be written is undone and refused.
    pub(super) fn commit(&mut self) {
        let saved = self.save_state();
        if let Err(err) = &saved {
            log::error!("{err}; unacknowledged binds are refused and the write is retried");
        }
        let replies = std::mem::take(&mut self.replies);
        let mut touched = Vec::new();
        for reply in replies {
            let line = match (&saved, reply.durable) {
                (Err(err), Ack::Bind(public_id)) => {
                    if let Some(&id) = self.ids.get(&public_id) {
                        self.remove(id, "its binding could not be written to the state file");
                    }
                    encode(&Response::error(format!("binding not made: {err}")))
                }
                (Err(err), Ack::Unbind(public_id)) => encode(&Response::error(format!(
                    "binding {public_id} is removed, but {err}; a restart before the write succeeds would bring it back"
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

    fn refuse(&self, peer: &PeerCred, what: &str, why: &str) {
        warn!(
            "refused {what} from uid {} pid {}: {why}",
            peer.uid,
            peer_pid(peer)
        );
    }

    /// Whether the peer may act on every binding (root, or the daemon's
    /// own user).
    fn is_admin(peer: &PeerCred) -> bool {
        peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw()
    }

    fn handle_line(&mut self, peer: &PeerCred, line: &[u8], fds: Vec<OwnedFd>) -> (Response, Ack) {
        let request = match Request::parse(line) {
            Ok(request) => request,
            Err(err) => {
                let refusal = Refusal::new(RefusalCode::BadRequest, format!("bad request: {err}"));
                self.refuse(peer, "request", &refusal.message);
                return (refusal.response(), Ack::Nothing);
            }
        };
        match request.op {
            Op::Bind(bind) => match self.bind(peer, bind, fds) {
                Ok((id, warning)) => (
                    Response {
                        id: Some(id),
                        warning,
                        ..Response::ok()
                    },
                    Ack::Bind(id),
                ),
                Err(refusal) => {
                    self.refuse(peer, "bind", &refusal.message);
                    (refusal.response(), Ack::Nothing)
                }
            },
            Op::Unbind { id } => match self.unbind(peer, id) {
                Ok(()) => (Response::ok(), Ack::Unbind(id)),
                Err(refusal) => {
                    self.refuse(peer, "unbind", &refusal.message);
                    (refusal.response(), Ack::Nothing)
                }
            },
            Op::List => (
                Response {
                    bindings: Some(self.list(peer)),
                    ..Response::ok()
                },
                Ack::Nothing,
            ),
            Op::Status => (
                Response {
                    status: Some(self.status(peer)),
                    ..Response::ok()
                },
                Ack::Nothing,
            ),
            Op::Reload => {
                if !Self::is_admin(peer) {
                    let refusal = Refusal::new(
                        RefusalCode::NotPermitted,
                        "reload is for root or the daemon's own user",
                    );
                    self.refuse(peer, "reload", &refusal.message);
                    return (refusal.response(), Ack::Nothing);
                }
                info!(
                    "reload requested by uid {} pid {}",
                    peer.uid,
                    peer_pid(peer)
                );
                match self.reload() {
                    Ok(info) => (
                        Response {
                            reload: Some(info),
                            ..Response::ok()
                        },
                        Ack::Nothing,
                    ),
                    Err(errors) => (
                        Response {
                            errors: errors.0.iter().map(ToString::to_string).collect(),
                            ..Refusal::new(
                                RefusalCode::InvalidConfig,
                                format!(
                                    "reload refused: {} error(s) in the configuration; the running one stays in force",
                                    errors.0.len()
                                ),
                            )
                            .response()
                        },
                        Ack::Nothing,
                    ),
                }
            }
        }
    }

    /// Makes a socket binding; returns its id, and a warning for the
    /// client when the parent was not running.
    fn bind(
        &mut self,
        peer: &PeerCred,
        req: BindRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<(u64, Option<String>), Refusal> {
        use RefusalCode::{Invalid, ParentGone};
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        if let Some(name) = &req.name {
            check_name(name).map_err(|why| Refusal::new(Invalid, why))?;
        }
        let signal = match &req.signal {
            Some(s) => {
                parse_signal(s).map_err(|e| Refusal::new(Invalid, format!("signal: {e}")))?
            }
            None => self.defaults.signal,
        };
        let grace = match &req.grace {
            Some(g) => {
                parse_duration(g).map_err(|e| Refusal::new(Invalid, format!("grace: {e}")))?
            }
            None => self.defaults.grace,
        };
        let kill = match &req.kill {
            Some(k) => parse_kill(k).map_err(|e| Refusal::new(Invalid, format!("kill: {e}")))?,
            None => self.defaults.kill,
        };
        let parent_pid = Pid::try_from(i64::from(req.parent.pid)).map_err(|e| {
            // Pid 1 (or 0) as the parent: the launcher is gone and its
            // child was adopted by init, or the caller named it by mistake.
            let code = if req.require_live_parent {
                ParentGone
            } else {
                Invalid
            };
            Refusal::new(code, format!("parent: {e}"))
        })?;
        if req.children.is_empty() {
            return Err(Refusal::new(Invalid, "no child to bind"));
        }
        if req.children.len() > MAX_CHILDREN.min(1024) {
            return Err(Refusal::new(
                Invalid,
                format!(
                    "{} children is more than the 1024 a request may bind",
                    req.children.len()
                ),
            ));
        }
        let mut child_pids = Vec::with_capacity(req.children.len());
        for child in &req.children {
            let pid = Pid::try_from(i64::from(child.pid))
                .map_err(|e| Refusal::new(Invalid, format!("child: {e}")))?;
            if pid == parent_pid {
                return Err(Refusal::new(
                    Invalid,
                    format!("pid {pid} is both parent and child"),
                ));
            }
            if child_pids.contains(&pid) {
                return Err(Refusal::new(Invalid, format!("pid {pid} is listed twice")));
            }
            child_pids.push(pid);
        }
        let uid = peer.uid;
        let n_mine = self
            .bindings
            .iter()
            .filter(|(_, b)| b.origin == Origin::Socket { uid })
            .count();
        if n_mine >= self.max_per_uid {
            return Err(Refusal::new(
                RefusalCode::Limit,
                format!(
                    "uid {uid} already has {n_mine} live bindings, the limit ([daemon] max_bindings_per_uid)"
                ),
            ));
        }
        // Every process the binding holds costs a descriptor (pidfd
        // backend) and room in the state file: within the uid's budget.
        let cost = 1 + child_pids.len();
        self.budget
            .check(uid, cost)
            .map_err(|why| Refusal::new(RefusalCode::Limit, why))?;

        let mut warning = None;
        let parent = match self.open_ref(&req.parent, parent_pid, &mut fds)? {
            Proven::Live(member, identity) => Some((member, identity)),
            Proven::Gone(why) if req.require_live_parent => {
                return Err(Refusal::new(
                    ParentGone,
                    format!("the parent {parent_pid} has already exited ({why})"),
                ))
            }
            Proven::Gone(why) => {
                info!("socket bind: parent {parent_pid} is already gone ({why}); acting at once");
                warning = Some(format!(
                    "the parent {parent_pid} is not running ({why}); the children were signalled at once"
                ));
                None
            }
        };
        let mut children = Vec::with_capacity(req.children.len());
        for (child, &pid) in req.children.iter().zip(&child_pids) {
            match self.open_ref(child, pid, &mut fds)? {
                Proven::Live(member, identity) => {
                    self.authorize(peer, &member)?;
                    children.push((member, identity));
                }
                Proven::Gone(why) => {
                    return Err(Refusal::new(
                        RefusalCode::ChildGone,
                        format!("the child {pid} is not running ({why})"),
                    ))
                }
            }
        }
        // The spec pins every process to the identity just proven, so the
        // binding survives restarts without ever meaning another process.
        let pinned = |(m, identity): &(Member<B::Handle>, Identity)| ProcSpec {
            pid: m.pid,
            start: Some(identity.start),
            inode: identity.inode,
        };
        let spec = BindingSpec {
            name: req.name.clone(),
            parent: parent
                .as_ref()
                .map(pinned)
                .unwrap_or(ProcSpec::unpinned(parent_pid)),
            children: children.iter().map(pinned).collect(),
            signal,
            grace,
            kill,
        };
        let public_id = self.next_id;
        self.next_id += 1;
        let origin = Origin::Socket { uid };
        let label = super::bindings::label(&spec, origin, public_id);
        let n_children = child_pids.len();
        let parent = parent.map(|(member, _)| member);
        let children = children
            .into_iter()
            .map(|(member, _)| Some(member))
            .collect();
        match self.insert(Rc::new(spec), origin, public_id, parent, children, &label) {
            Ok(_) => {
                info!(
                    "{label}: bound by pid {}: parent {parent_pid}, {n_children} children, {signal}, grace {grace}",
                    peer_pid(peer),
                );
                Ok((public_id, warning))
            }
            Err(why) => Err(Refusal::new(RefusalCode::NotHeld, why)),
        }
    }

    /// Opens the process a request names, through the pidfd passed with
    /// it if there is one.
    fn open_ref(
        &mut self,
        r: &ProcRef,
        pid: Pid,
        fds: &mut [Option<OwnedFd>],
    ) -> Result<Proven<B::Handle>, Refusal> {
        let opened = match r.pidfd {
            Some(idx) => {
                let fd = fds.get_mut(idx).and_then(Option::take).ok_or_else(|| {
                    Refusal::new(
                        RefusalCode::Invalid,
                        format!(
                            "pid {pid}: pidfd {idx} was not passed with the request (or used twice)"
                        ),
                    )
                })?;
                self.watcher.adopt(fd, pid)
            }
            None => self.watcher.open(pid),
        };
        let spec = ProcSpec {
            pid,
            start: r.start,
            inode: None,
        };
        // Socket requests are never matched against the config's pin store:
        // only their own explicit pins count.
        if spec.start.is_none() {
            return match opened {
                Ok((handle, identity)) => Ok(Proven::Live(Member { pid, handle }, identity)),
                Err(crate::watch::OpenError::Gone) => Ok(Proven::Gone("no such process".into())),
                Err(err) => Err(Refusal::new(
                    RefusalCode::NotHeld,
                    format!("pid {pid}: {err}"),
                )),
            };
        }
        self.prove(&spec, opened, "the start time given")
            .map_err(|e| Refusal::new(RefusalCode::NotHeld, format!("pid {pid}: {e}")))
    }

    /// A caller other than root may bind only children it could signal
    /// itself, and that run with no privilege it lacks (no set-id program):
    /// `pidfd_open` checks nothing, and a root daemon must not become a
    /// confused deputy. The same test is made again before every signal
    /// (see `Daemon::deliver`), since a process can change owner later.
    fn authorize(&self, peer: &PeerCred, child: &Member<B::Handle>) -> Result<(), Refusal> {
        if peer.uid == 0 {
            return Ok(());
        }
        match self.watcher.owner(child.pid, &child.handle) {
            Ok(Some(owner)) if owner.plainly_owned_by(peer.uid) => Ok(()),
            Ok(Some(owner)) => Err(Refusal::new(
                RefusalCode::NotPermitted,
                format!(
                    "uid {} may not bind child {}: {}",
                    peer.uid,
                    child.pid,
                    owner.refusal(peer.uid)
                ),
            )),
            Ok(None) => Err(Refusal::new(
                RefusalCode::ChildGone,
                format!("the child {} exited", child.pid),
            )),
            Err(err) => Err(Refusal::new(
                RefusalCode::NotHeld,
                format!("cannot tell who owns child {}: {err}", child.pid),
            )),
        }
    }

    fn unbind(&mut self, peer: &PeerCred, public_id: u64) -> Result<(), Refusal> {
        let from_config = || {
            Refusal::new(
                RefusalCode::ConfigBinding,
                format!(
                    "binding {public_id} comes from the configuration file; remove it there and reload"
                ),
            )
        };
        // Say "no binding" rather than "not yours": others' ids are not
        // the caller's business.
        let none = || {
            Refusal::new(
                RefusalCode::NoSuchBinding,
                format!("no binding {public_id}"),
            )
        };
        let Some(&id) = self.ids.get(&public_id) else {
            if self
                .bindings
                .iter()
                .any(|(_, b)| b.id == public_id && b.origin == Origin::Config)
            {
                return Err(from_config());
            }
            return Err(none());
        };
        let Some(binding) = self.bindings.get(id) else {
            return Err(none());
        };
        match binding.origin {
            Origin::Config => Err(from_config()),
            Origin::Socket { uid } if uid != peer.uid && !Self::is_admin(peer) => Err(none()),
            Origin::Socket { .. } => {
                self.state_dirty.mark(super::Dirty::Durable);
                self.remove(
                    id,
                    &format!("unbound by uid {} pid {}", peer.uid, peer_pid(peer)),
                );
                Ok(())
            }
        }
    }

    fn list(&self, peer: &PeerCred) -> Vec<BindingInfo> {
        let admin = Self::is_admin(peer);
        let mut out: Vec<BindingInfo> = self
            .bindings
            .iter()
            .filter(|(_, b)| admin || b.origin == Origin::Socket { uid: peer.uid })
            .map(|(_, b)| BindingInfo {
                id: b.id,
                name: b.spec.name.clone(),
                origin: match b.origin {
                    Origin::Config => "config".into(),
                    Origin::Socket { .. } => "socket".into(),
                },
                uid: match b.origin {
                    // The configuration file is the daemon's own.
                    Origin::Config => nix::unistd::geteuid().as_raw(),
                    Origin::Socket { uid } => uid,
                },
                parent: b.spec.parent.pid.get(),
                children: b.spec.children.iter().map(|c| c.pid.get()).collect(),
                signal: b.spec.signal.to_string(),
                grace: b.spec.grace.to_string(),
                kill: b.spec.kill.to_string(),
                phase: b.phase.as_str().into(),
            })
            .collect();
        out.sort_by_key(|b| b.id);
        out
    }

    fn status(&self, peer: &PeerCred) -> StatusInfo {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            backend: self.watcher.name().into(),
            bindings: count(self.bindings.len()),
            armed: count(
                self.bindings
                    .iter()
                    .filter(|(_, b)| b.phase == Phase::Armed)
                    .count(),
            ),
            fds_in_use: crate::sys::count_open_fds().unwrap_or(0),
            fds_allowed: self.fd_limit,
            pid: std::process::id(),
            processes_held: count(
                self.budget
                    .held(Self::budget_uid(Origin::Socket { uid: peer.uid })),
            ),
            processes_allowed: count(
                self.budget
                    .held(Self::budget_uid(Origin::Socket { uid: peer.uid }))
                    + self
                        .budget
                        .room(Self::budget_uid(Origin::Socket { uid: peer.uid })),
            ),
            fds_closing: count(self.closer.pending_total()),
        }
    }
}

fn peer_pid(peer: &PeerCred) -> String {
    peer.pid.map_or_else(|| "?".into(), |pid| pid.to_string())
}

/// A binding name: the configuration's one rule.
fn check_name(name: &str) -> Result<(), String> {
    crate::config::check_name(name).map_err(|why| format!("name: {why}"))
}

/// A response as one line of JSON.
fn encode(response: &Response) -> Vec<u8> {
    serde_json::to_vec(response).unwrap_or_else(|err| {
        warn!("cannot encode a response: {err}");
        br#"{"ok":false,"error":"the daemon could not encode its answer"}"#.to_vec()
    })
}

/// What kind of refusal an answer carries: its `code` in the protocol,
/// which tetherctl maps to its exit status (docs/protocol.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefusalCode {
    /// The line is not a request (framing, JSON, version).
    BadRequest,
    /// A value of the request is invalid (a name, signal, grace, pid).
    Invalid,
    /// The parent has already exited (or is pid 1: the launcher is gone).
    ParentGone,
    /// A child is not running.
    ChildGone,
    /// The caller may not do this (another user's process, reload).
    NotPermitted,
    /// A limit of the caller's uid is reached.
    Limit,
    /// No binding has that id (for this caller).
    NoSuchBinding,
    /// The binding comes from the configuration file.
    ConfigBinding,
    /// The configuration file has errors.
    InvalidConfig,
    /// The daemon could not hold the binding (out of descriptors, ...).
    NotHeld,
}

impl RefusalCode {
    /// The code as the protocol spells it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "bad_request",
            RefusalCode::Invalid => "invalid",
            RefusalCode::ParentGone => "parent_gone",
            RefusalCode::ChildGone => "child_gone",
            RefusalCode::NotPermitted => "not_permitted",
            RefusalCode::Limit => "limit",
            RefusalCode::NoSuchBinding => "no_such_binding",
            RefusalCode::ConfigBinding => "config_binding",
            RefusalCode::InvalidConfig => "invalid_config",
            RefusalCode::NotHeld => "not_held",
        }
    }
}

/// A refused request: a code for programs and a sentence for people.
#[derive(Debug)]
pub(super) struct Refusal {
    code: RefusalCode,
    message: String,
}

impl Refusal {
    fn new(code: RefusalCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn response(&self) -> Response {
        Response {
            code: Some(self.code.as_str().into()),
            ..Response::error(self.message.clone())
        }
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Request handling without the socket: a real daemon on the pidfd
    //! backend, requests handed to it as the loop would, with made-up
    //! peers.
    use super::*;
    use crate::config::{Config, Trust};
    use crate::daemon::{ConfigSource, Options};
    use crate::watch::pidfd::PidfdWatcher;

    struct Fixture {
        daemon: Daemon<PidfdWatcher>,
        _dir: tempfile::TempDir,
        procs: Vec<std::process::Child>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            for p in &mut self.procs {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }

    fn fixture(config: Config) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            config: ConfigSource {
                path: dir.path().join("none.toml"),
                required: false,
                trust: Trust::Any,
            },
            state_path: Some(dir.path().join("state/state.json")),
            socket_path: Some(dir.path().join("run/tether.sock")),
            log_from_env: true,
            backend: None,
            poll_interval: None,
            notifier: crate::notify::Notifier::new(None),
        };
        let watcher = PidfdWatcher::new().unwrap();
        Fixture {
            daemon: Daemon::new(watcher, options, config).unwrap(),
            _dir: dir,
            procs: Vec::new(),
        }
    }

    impl Fixture {
        fn sleeper(&mut self) -> i32 {
            let child = std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap();
            let pid = i32::try_from(child.id()).unwrap();
            self.procs.push(child);
            pid
        }

        fn ask(&mut self, uid: u32, line: &str) -> Response {
            let peer = PeerCred {
                uid,
                pid: Some(4242),
            };
            self.daemon
                .handle_line(&peer, line.as_bytes(), Vec::new())
                .0
        }
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn refusals_carry_their_codes() {
        let mut f = fixture(Config::default());
        let (p, c) = (f.sleeper(), f.sleeper());
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "bad_request"),
            (r#"{"v":99,"op":"status"}"#.into(), "bad_request"),
            (
                format!(
                    r#"{{"v":1,"op":"bind","parent":{{"pid":{p}}},"children":[{{"pid":{c}}}],"signal":"SIGNOPE"}}"#
                ),
                "invalid",
            ),
            (
                format!(
                    r#"{{"v":1,"op":"bind","parent":{{"pid":{p}}},"children":[{{"pid":{c}}}],"name":"a\u202eb"}}"#
                ),
                "invalid",
            ),
            (
                format!(
                    r#"{{"v":1,"op":"bind","parent":{{"pid":1}},"children":[{{"pid":{c}}}],"require_live_parent":true}}"#
                ),
                "parent_gone",
            ),
            (
                format!(
                    r#"{{"v":1,"op":"bind","parent":{{"pid":{p}}},"children":[{{"pid":{}}}]}}"#,
                    i32::MAX
                ),
                "child_gone",
            ),
            (
                r#"{"v":1,"op":"unbind","id":777}"#.into(),
                "no_such_binding",
            ),
        ];
        for (line, code) in cases {
            let response = f.ask(me(), &line);
            assert!(!response.ok, "{line}");
            assert_eq!(response.code.as_deref(), Some(code), "{line}: {response:?}");
            let error = response.error.unwrap_or_default();
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }

    #[test]
    fn a_dead_parent_gives_parent_gone_only_when_a_live_one_is_required() {
        let mut f = fixture(Config::default());
        let c = f.sleeper();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let d = i32::try_from(dead.id()).unwrap();
        dead.wait().unwrap();
        let strict = format!(
            r#"{{"v":1,"op":"bind","parent":{{"pid":{d}}},"children":[{{"pid":{c}}}],"require_live_parent":true,"signal":"SIGCONT"}}"#
        );
        let response = f.ask(me(), &strict);
        assert_eq!(
            response.code.as_deref(),
            Some("parent_gone"),
            "{response:?}"
        );
        let lenient = strict.replace(r#","require_live_parent":true"#, "");
        let response = f.ask(me(), &lenient);
        assert!(response.ok, "{response:?}");
        assert!(
            response
                .warning
                .is_some_and(|w| w.contains("is not running")),
            "a bind whose parent is gone says so"
        );
    }

    #[test]
    fn users_see_and_unbind_only_their_own() {
        let mut f = fixture(Config::default());
        let (p, c) = (f.sleeper(), f.sleeper());
        let bind =
            format!(r#"{{"v":1,"op":"bind","parent":{{"pid":{p}}},"children":[{{"pid":{c}}}]}}"#);
        let response = f.ask(0, &bind);
        let id = response.id.expect("root may bind anything");
        // Another user: the process is not theirs.
        let stranger = me() + 4321;
        let other = f.sleeper();
        let response = f.ask(stranger, &bind.replace(&c.to_string(), &other.to_string()));
        assert_eq!(
            response.code.as_deref(),
            Some("not_permitted"),
            "{response:?}"
        );
        let listed = f.ask(stranger, r#"{"v":1,"op":"list"}"#);
        assert_eq!(listed.bindings.map(|b| b.len()), Some(0));
        let response = f.ask(stranger, &format!(r#"{{"v":1,"op":"unbind","id":{id}}}"#));
        assert_eq!(
            response.code.as_deref(),
            Some("no_such_binding"),
            "{response:?}"
        );
        let response = f.ask(stranger, r#"{"v":1,"op":"reload"}"#);
        assert_eq!(
            response.code.as_deref(),
            Some("not_permitted"),
            "{response:?}"
        );
        let listed = f.ask(0, r#"{"v":1,"op":"list"}"#);
        assert_eq!(listed.bindings.map(|b| b.len()), Some(1));
        assert!(
            f.ask(0, &format!(r#"{{"v":1,"op":"unbind","id":{id}}}"#))
                .ok
        );
    }

    #[test]
    fn the_per_uid_cap_is_a_limit_refusal() {
        let mut config = Config::default();
        config.daemon.max_bindings_per_uid = 1;
        let mut f = fixture(config);
        let (p, c1, c2) = (f.sleeper(), f.sleeper(), f.sleeper());
        let bind = |c: i32| {
            format!(r#"{{"v":1,"op":"bind","parent":{{"pid":{p}}},"children":[{{"pid":{c}}}]}}"#)
        };
        assert!(f.ask(me(), &bind(c1)).ok);
        let response = f.ask(me(), &bind(c2));
        assert_eq!(response.code.as_deref(), Some("limit"), "{response:?}");
    }
}
