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
use super::control::{Conn, IDLE_TIMEOUT, MAX_CONNECTIONS};
use super::{Daemon, Origin, Phase, Proven, CONN_TOKENS};
use crate::config::{parse_duration, parse_kill, parse_signal, BindingSpec, Pid, ProcSpec};
use crate::protocol::{
    BindRequest, BindingInfo, Op, ProcRef, Request, Response, StatusInfo, MAX_LINE,
};
use crate::sys::PeerCred;
use crate::watch::{Backend, Identity};

/// How a refusal for a parent already gone starts (see `code`).
const PARENT_GONE: &str = "the parent";

/// Bytes read from one connection per wakeup before the others get a turn.
const READ_BUDGET_LINES: usize = 64;

/// An answer waiting for the commit.
#[derive(Debug)]
pub(super) struct Reply {
    conn: usize,
    response: Response,
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
            if self.conns.iter().flatten().count() >= MAX_CONNECTIONS {
                self.evict_idlest();
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

    /// Closes the connection idle the longest, to admit a new one.
    fn evict_idlest(&mut self) {
        let idlest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(idx, c)| c.as_ref().map(|c| (idx, c.last_active)))
            .min_by_key(|(_, at)| *at)
            .map(|(idx, _)| idx);
        if let Some(idx) = idlest {
            if let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) {
                warn!(
                    "control socket: {MAX_CONNECTIONS} connections open; closing the idlest (uid {} pid {}) to admit a new one",
                    conn.peer.uid,
                    peer_pid(&conn.peer)
                );
            }
            self.close_conn(idx);
        }
    }

    fn close_conn(&mut self, idx: usize) {
        if let Some(mut conn) = self.conns.get_mut(idx).and_then(Option::take) {
            conn.deregister(self.poll.registry());
            debug!("connection {idx} closed");
        }
        self.replies.retain(|r| r.conn != idx);
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

    /// Reads and handles what a connection sent; writes what it can.
    pub(super) fn conn_event(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let peer = conn.peer;
        let (lines, more) = conn.read_lines(READ_BUDGET_LINES);
        if more {
            self.backlog.push(idx);
        }
        for incoming in lines {
            let (response, durable) = if incoming.incomplete {
                let why = "request refused: the input ended before its newline".to_string();
                self.refuse(&peer, "request", &why);
                (Response::error(why), Ack::Nothing)
            } else if incoming.oversized {
                let why = format!("request refused: longer than {MAX_LINE} bytes, or more descriptors than allowed");
                self.refuse(&peer, "request", &why);
                (Response::error(why), Ack::Nothing)
            } else {
                self.handle_line(&peer, &incoming.line, incoming.fds)
            };
            self.replies.push(Reply {
                conn: idx,
                response,
                durable,
            });
        }
        self.flush_conn(idx);
    }

    /// Writes a connection's queued output; closes it when it is finished.
    fn flush_conn(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let ok = conn.flush();
        let pending = self.replies.iter().any(|r| r.conn == idx);
        if !ok || (conn.read_closed && !conn.has_output() && !pending) {
            self.close_conn(idx);
        }
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
            let response = match (&saved, reply.durable) {
                (Err(err), Ack::Bind(public_id)) => {
                    if let Some(&id) = self.ids.get(&public_id) {
                        self.remove(id, "its binding could not be written to the state file");
                    }
                    Response::error(format!("binding not made: {err}"))
                }
                (Err(err), Ack::Unbind(public_id)) => Response::error(format!(
                    "binding {public_id} is removed, but {err}; a restart before the write succeeds would bring it back"
                )),
                _ => reply.response,
            };
            let Some(conn) = self.conns.get_mut(reply.conn).and_then(Option::as_mut) else {
                continue;
            };
            match serde_json::to_vec(&response) {
                Ok(line) => conn.queue(&line),
                Err(err) => warn!("cannot encode a response: {err}"),
            }
            touched.push(reply.conn);
        }
        touched.dedup();
        for idx in touched {
            self.flush_conn(idx);
        }
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
                let why = format!("bad request: {err}");
                self.refuse(peer, "request", &why);
                return (Response::error(why), Ack::Nothing);
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
                Err(why) => {
                    self.refuse(peer, "bind", &why);
                    let code = why
                        .starts_with(PARENT_GONE)
                        .then(|| "parent_gone".to_owned());
                    (
                        Response {
                            code,
                            ..Response::error(why)
                        },
                        Ack::Nothing,
                    )
                }
            },
            Op::Unbind { id } => match self.unbind(peer, id) {
                Ok(()) => (Response::ok(), Ack::Unbind(id)),
                Err(why) => {
                    self.refuse(peer, "unbind", &why);
                    (Response::error(why), Ack::Nothing)
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
                    status: Some(self.status()),
                    ..Response::ok()
                },
                Ack::Nothing,
            ),
            Op::Reload => {
                if !Self::is_admin(peer) {
                    let why = "reload is for root or the daemon's own user".to_string();
                    self.refuse(peer, "reload", &why);
                    return (Response::error(why), Ack::Nothing);
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
                            ..Response::error(format!(
                                "reload refused: {} error(s) in the configuration; the running one stays in force",
                                errors.0.len()
                            ))
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
    ) -> Result<(u64, Option<String>), String> {
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        if let Some(name) = &req.name {
            check_name(name)?;
        }
        let signal = match &req.signal {
            Some(s) => parse_signal(s).map_err(|e| format!("signal: {e}"))?,
            None => self.defaults.signal,
        };
        let grace = match &req.grace {
            Some(g) => parse_duration(g).map_err(|e| format!("grace: {e}"))?,
            None => self.defaults.grace,
        };
        let kill = match &req.kill {
            Some(k) => parse_kill(k).map_err(|e| format!("kill: {e}"))?,
            None => self.defaults.kill,
        };
        let parent_pid =
            Pid::try_from(i64::from(req.parent.pid)).map_err(|e| format!("parent: {e}"))?;
        if req.children.is_empty() {
            return Err("no child to bind".into());
        }
        if req.children.len() > MAX_CHILDREN.min(1024) {
            return Err(format!(
                "{} children is more than the 1024 a request may bind",
                req.children.len()
            ));
        }
        let mut child_pids = Vec::with_capacity(req.children.len());
        for child in &req.children {
            let pid = Pid::try_from(i64::from(child.pid)).map_err(|e| format!("child: {e}"))?;
            if pid == parent_pid {
                return Err(format!("pid {pid} is both parent and child"));
            }
            if child_pids.contains(&pid) {
                return Err(format!("pid {pid} is listed twice"));
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
            return Err(format!(
                "uid {uid} already has {n_mine} live bindings, the limit ([daemon] max_bindings_per_uid)"
            ));
        }

        let mut warning = None;
        let parent = match self.open_ref(&req.parent, parent_pid, &mut fds)? {
            Proven::Live(member, identity) => Some((member, identity)),
            Proven::Gone(why) if req.require_live_parent => {
                return Err(format!(
                    "{PARENT_GONE} {parent_pid} has already exited ({why})"
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
                Proven::Gone(why) => return Err(format!("the child {pid} is not running ({why})")),
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
        let children_pids: Vec<String> = child_pids.iter().map(ToString::to_string).collect();
        let parent = parent.map(|(member, _)| member);
        let children = children
            .into_iter()
            .map(|(member, _)| Some(member))
            .collect();
        self.last_refusal = None;
        match self.insert(Rc::new(spec), origin, public_id, parent, children, &label) {
            Some(_) => {
                info!(
                    "{label}: bound by pid {}: parent {parent_pid}, children {}, {signal}, grace {grace}",
                    peer_pid(peer),
                    children_pids.join(",")
                );
                Ok((public_id, warning))
            }
            None => Err(self
                .last_refusal
                .take()
                .unwrap_or_else(|| "the binding could not be held (see the daemon's log)".into())),
        }
    }

    /// Opens the process a request names, through the pidfd passed with
    /// it if there is one.
    fn open_ref(
        &mut self,
        r: &ProcRef,
        pid: Pid,
        fds: &mut [Option<OwnedFd>],
    ) -> Result<Proven<B::Handle>, String> {
        let opened = match r.pidfd {
            Some(idx) => {
                let fd = fds.get_mut(idx).and_then(Option::take).ok_or_else(|| {
                    format!(
                        "pid {pid}: pidfd {idx} was not passed with the request (or used twice)"
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
                Err(err) => Err(format!("pid {pid}: {err}")),
            };
        }
        self.prove(&spec, opened, "the start time given")
            .map_err(|e| format!("pid {pid}: {e}"))
    }

    /// A caller other than root may bind only children it could signal
    /// itself: `pidfd_open` checks nothing, and a root daemon must not
    /// become a confused deputy.
    fn authorize(&self, peer: &PeerCred, child: &Member<B::Handle>) -> Result<(), String> {
        if peer.uid == 0 {
            return Ok(());
        }
        match self.watcher.owner(child.pid, &child.handle) {
            Ok(Some(owner)) if owner.may_be_signalled_by(peer.uid) => Ok(()),
            Ok(Some(owner)) => Err(format!(
                "uid {} may not bind child {}: it belongs to uid {}",
                peer.uid, child.pid, owner.real
            )),
            Ok(None) => Err(format!("the child {} exited", child.pid)),
            Err(err) => Err(format!("cannot tell who owns child {}: {err}", child.pid)),
        }
    }

    fn unbind(&mut self, peer: &PeerCred, public_id: u64) -> Result<(), String> {
        let Some(&id) = self.ids.get(&public_id) else {
            if self
                .bindings
                .iter()
                .any(|(_, b)| b.id == public_id && b.origin == Origin::Config)
            {
                return Err(format!(
                    "binding {public_id} comes from the configuration file; remove it there and reload"
                ));
            }
            return Err(format!("no binding {public_id}"));
        };
        let Some(binding) = self.bindings.get(id) else {
            return Err(format!("no binding {public_id}"));
        };
        match binding.origin {
            Origin::Config => Err(format!(
                "binding {public_id} comes from the configuration file; remove it there and reload"
            )),
            Origin::Socket { uid } if uid != peer.uid && !Self::is_admin(peer) => {
                // Say "no binding" rather than "not yours": others' ids are
                // not the caller's business.
                Err(format!("no binding {public_id}"))
            }
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

    fn status(&self) -> StatusInfo {
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
        }
    }
}

fn peer_pid(peer: &PeerCred) -> String {
    peer.pid.map_or_else(|| "?".into(), |pid| pid.to_string())
}

/// A binding name: what the config accepts.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(format!(
            "name: {name:?} is not a valid name (1 to 64 characters, no control characters)"
        ));
    }
    Ok(())
}
