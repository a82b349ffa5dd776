//! Control requests: what each one means, who may make it, and how it is
//! refused (a typed `RefusalCode`). When its answer may be sent, and how
//! connections are admitted and bounded, is `serve`'s.
//!
//! A request is answered at the end of the loop iteration it arrived in,
//! after the state file has been written: a `bind` is acknowledged only
//! once it is on disk, and if the write fails the binding is undone and
//! the client told so. Every refusal is logged with the peer's uid and pid.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use log::{info, warn};

use super::bindings::{Member, MAX_CHILDREN};
use super::serve::Ack;
use super::{Daemon, Origin, Phase, Proven};
use crate::config::{
    parse_duration, parse_kill, parse_signal, BindingSpec, ConfigErrors, Pid, ProcSpec,
};
use crate::protocol::{
    BindRequest, BindingInfo, Op, ProcRef, Request, Response, RuleInfo, StatusInfo,
};
use crate::sys::PeerCred;
use crate::watch::{Backend, Identity};

impl<B: Backend> Daemon<B> {
    pub(super) fn refuse(&self, peer: &PeerCred, what: &str, why: &str) {
        warn!(
            "refused {what} from uid {} pid {}: {why}",
            peer.uid,
            peer_pid(peer)
        );
    }

    /// Whether the peer may act on every binding (root, or the daemon's
    /// own user).
    pub(super) fn is_admin(peer: &PeerCred) -> bool {
        peer.uid == 0 || peer.uid == nix::unistd::geteuid().as_raw()
    }

    pub(super) fn handle_line(
        &mut self,
        peer: &PeerCred,
        line: &[u8],
        fds: Vec<OwnedFd>,
    ) -> (Response, Ack) {
        let request = match Request::parse(line) {
            Ok(request) => request,
            Err(err) => {
                let refusal = Refusal::new(RefusalCode::BadRequest, format!("bad request: {err}"));
                self.refused(peer, "request", refusal.code, &refusal.message);
                return (refusal.response(), Ack::Nothing);
            }
        };
        match request.op {
            Op::Bind(bind) => match self.bind(peer, bind, fds) {
                Ok((number, warning)) => (
                    Response {
                        id: Some(number),
                        warning,
                        ..Response::ok()
                    },
                    Ack::Bind(number),
                ),
                Err(refusal) => {
                    self.refused(peer, "bind", refusal.code, &refusal.message);
                    (refusal.response(), Ack::Nothing)
                }
            },
            Op::Unbind { id: number } => match self.unbind(peer, number) {
                Ok(()) => (Response::ok(), Ack::Unbind(number)),
                Err(refusal) => {
                    self.refused(peer, "unbind", refusal.code, &refusal.message);
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
                    self.refused(peer, "reload", refusal.code, &refusal.message);
                    return (refusal.response(), Ack::Nothing);
                }
                info!(
                    "reload requested by uid {} pid {}",
                    peer.uid,
                    peer_pid(peer)
                );
                // Answered when the file is read and its load applied,
                // or found broken (see `reload` and `serve`).
                self.reload();
                (Response::ok(), Ack::Reload)
            }
            Op::Events { follow } => {
                self.feed.request(*peer, Self::is_admin(peer), follow);
                (Response::ok(), Ack::Nothing)
            }
            Op::Metrics => {
                if !Self::is_admin(peer) {
                    let refusal = Refusal::new(
                        RefusalCode::NotPermitted,
                        "metrics are for root or the daemon's own user",
                    );
                    self.refused(peer, "metrics", refusal.code, &refusal.message);
                    return (refusal.response(), Ack::Nothing);
                }
                (
                    Response {
                        metrics: Some(self.metrics_text()),
                        ..Response::ok()
                    },
                    Ack::Nothing,
                )
            }
        }
    }

    /// Makes a socket binding; returns its number, and a warning for the
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
        if kill == crate::config::KillMode::Cgroup {
            self.cgroups
                .permits(peer.uid)
                .map_err(|why| Refusal::new(RefusalCode::NotPermitted, why))?;
        }
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
        let n_mine = self.budget.socket_bindings(uid);
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
        let cost = 1 + child_pids.len() + usize::from(kill == crate::config::KillMode::Cgroup);
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
        let number = self.new_number();
        let origin = Origin::Socket { uid };
        let label = super::bindings::label(&spec, origin, number);
        let n_children = child_pids.len();
        let parent = parent.map(|(member, _)| member);
        let children = children
            .into_iter()
            .map(|(member, _)| Some(member))
            .collect();
        match self.insert(Rc::new(spec), origin, number, parent, children, &label) {
            Ok(_) => {
                info!(
                    "{label}: bound by pid {}: parent {parent_pid}, {n_children} children, {signal}, grace {grace}",
                    peer_pid(peer),
                );
                Ok((number, warning))
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

    fn unbind(&mut self, peer: &PeerCred, number: u64) -> Result<(), Refusal> {
        let from_config = || {
            Refusal::new(
                RefusalCode::ConfigBinding,
                format!(
                    "binding {number} comes from the configuration file; remove it there and reload"
                ),
            )
        };
        // Say "no binding" rather than "not yours": others' ids are not
        // the caller's business.
        let none = || Refusal::new(RefusalCode::NoSuchBinding, format!("no binding {number}"));
        let Some(&id) = self.by_number.get(&number) else {
            if self.bindings.iter().any(|(_, b)| {
                b.number == number && matches!(b.origin, Origin::Config | Origin::Rule { .. })
            }) {
                return Err(from_config());
            }
            return Err(none());
        };
        let Some(binding) = self.bindings.get(id) else {
            return Err(none());
        };
        match binding.origin {
            Origin::Config | Origin::Rule { .. } => Err(from_config()),
            Origin::Socket { uid } if uid != peer.uid && !Self::is_admin(peer) => Err(none()),
            Origin::Socket { .. } => {
                self.mark_durable();
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
                id: b.number,
                name: b.spec.name.clone(),
                origin: match b.origin {
                    Origin::Config => "config".into(),
                    Origin::Socket { .. } => "socket".into(),
                    Origin::Rule { .. } => "rule".into(),
                },
                rule: matches!(b.origin, Origin::Rule { .. })
                    .then(|| {
                        b.spec
                            .name
                            .as_deref()
                            .and_then(|n| n.rsplit_once(':'))
                            .map(|(rule, _)| rule.to_string())
                    })
                    .flatten(),
                uid: match b.origin {
                    // The configuration file is the daemon's own.
                    Origin::Config => nix::unistd::geteuid().as_raw(),
                    Origin::Rule { uid } => uid,
                    Origin::Socket { uid } => uid,
                },
                parent: b.spec.parent.pid.get(),
                children: b.spec.children.iter().map(|c| c.pid.get()).collect(),
                signal: b.spec.signal.to_string(),
                grace: b.spec.grace.to_string(),
                kill: b.spec.kill.to_string(),
                phase: b.phase.as_str().into(),
                cgroup: b
                    .scope
                    .as_ref()
                    .and_then(|s| s.cgroup.as_ref())
                    .map(|h| h.dir.display().to_string()),
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
            rule_source: self.rules.source(),
            rules: self
                .rules
                .counts()
                .into_iter()
                .map(|(name, matches)| RuleInfo { name, matches })
                .collect(),
            cgroup: self.cgroups.describe(),
            loading: self.load_progress(),
        }
    }
}

pub(super) fn peer_pid(peer: &PeerCred) -> String {
    peer.pid.map_or_else(|| "?".into(), |pid| pid.to_string())
}

/// A binding name: the configuration's one rule.
fn check_name(name: &str) -> Result<(), String> {
    crate::config::check_name(name).map_err(|why| format!("name: {why}"))
}

/// The answer to a reload whose file is broken, and its refusal's code
/// and sentence (for the log and the event stream).
pub(super) fn invalid_config(errors: &ConfigErrors) -> (Response, RefusalCode, String) {
    let refusal = Refusal::new(
        RefusalCode::InvalidConfig,
        format!(
            "reload refused: {} error(s) in the configuration; the running one stays in force",
            errors.0.len()
        ),
    );
    let response = Response {
        errors: errors.0.iter().map(ToString::to_string).collect(),
        ..refusal.response()
    };
    (response, refusal.code, refusal.message)
}

/// A response as one line of JSON.
pub(super) fn encode(response: &Response) -> Vec<u8> {
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
    /// No binding has that number (for this caller).
    NoSuchBinding,
    /// The binding comes from the configuration file.
    ConfigBinding,
    /// The configuration file has errors.
    InvalidConfig,
    /// The daemon could not hold the binding (out of descriptors, ...).
    NotHeld,
}

impl RefusalCode {
    /// Every code (for the metrics, which show each from 0).
    pub(super) const ALL: [RefusalCode; 10] = [
        RefusalCode::BadRequest,
        RefusalCode::Invalid,
        RefusalCode::ParentGone,
        RefusalCode::ChildGone,
        RefusalCode::NotPermitted,
        RefusalCode::Limit,
        RefusalCode::NoSuchBinding,
        RefusalCode::ConfigBinding,
        RefusalCode::InvalidConfig,
        RefusalCode::NotHeld,
    ];

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
    pub(super) code: RefusalCode,
    message: String,
}

impl Refusal {
    pub(super) fn new(code: RefusalCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub(super) fn response(&self) -> Response {
        Response {
            code: Some(self.code.as_str().into()),
            ..Response::error(self.message.clone())
        }
    }
}

#[cfg(all(test, linux_like))]
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
