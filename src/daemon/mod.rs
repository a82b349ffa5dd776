//! The daemon: one mio event loop that owns every binding.
//!
//! Everything the loop reacts to arrives as a token: a binding member's
//! exit (from the watch backend), a signal to the daemon itself (SIGHUP,
//! SIGTERM, SIGINT through signal-hook-mio), or the control socket and its
//! connections. Grace periods and idle connections are not timers of their
//! own: the earliest pending deadline is the poll timeout, so a daemon with
//! nothing pending sleeps in the kernel without waking.
//!
//! Each loop iteration ends with a commit: the state file is written (once,
//! however many requests came in) *before* any `bind` is acknowledged, so a
//! daemon killed at any moment loses no binding a client was told about.
//!
//! One binding's failure (a process that cannot be opened, a signal the
//! kernel refuses) is logged with the binding's label and never stops the
//! loop; only a failure of the loop itself (`epoll_wait`) ends `run`.

mod bindings;
mod budget;
mod closer;
mod control;
pub mod pidfile;
mod requests;
mod state;

pub use bindings::{BindingId, Origin, Phase};
pub use control::{IDLE_TIMEOUT, MAX_CONNECTIONS};
pub use state::{write_atomically, StateFile};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{
    self, parse_duration, parse_kill, parse_signal, BindingSpec, Config, ConfigErrors, Defaults,
    Grace, KillMode, Pid, PidSource, PidfileBindingSpec, ProcSpec, Signal, Trust,
};
use crate::protocol::ReloadInfo;
use crate::watch::{self, Backend, Delivery, Identity, OpenError, ProcEntry};
use bindings::{Binding, Bindings, Member, MemberRef, Scope, MAX_CHILDREN, RESERVED_TOKENS};
use control::{Conn, ControlSocket};
use state::{EntryKey, Pin, SavedBinding, SavedProc};

/// The token of the daemon's own signals.
const SIGNAL_TOKEN: Token = Token(RESERVED_TOKENS);
/// The token of the control socket's listener.
const LISTENER_TOKEN: Token = Token(RESERVED_TOKENS + 1);
/// The token of the watch backend's own event source, if it has one.
const BACKEND_TOKEN: Token = Token(RESERVED_TOKENS + 2);
/// The token the closer wakes the loop with (see `closer`).
const WAKER_TOKEN: Token = Token(RESERVED_TOKENS + 3);
/// Connection `i` has token `CONN_TOKENS + i`.
const CONN_TOKENS: usize = RESERVED_TOKENS + 4;

/// Descriptors kept aside for the daemon's own use (logs, state file,
/// epoll, the signal pipe, later the control socket) when estimating how
/// many bindings the descriptor limit allows.
const RESERVED_FDS: u64 = 64;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// Whether a missing file is an error (named on the command line) or
    /// means "no static bindings" (the default location).
    pub required: bool,
    /// Whether the file must be root-owned and writable by root alone.
    pub trust: Trust,
}

/// A configuration file that changed less than this long ago may still be
/// being written: it is read again once it has been still that long.
pub const CONFIG_SETTLE: Duration = Duration::from_millis(50);
/// How long a load waits for a file being written to settle before it is
/// refused.
pub const CONFIG_SETTLE_MAX: Duration = Duration::from_millis(200);

impl ConfigSource {
    /// Loads and validates the file.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        self.load_replacing(0)
    }

    /// Loads and validates the file to replace a configuration holding
    /// `n_held` bindings. A file rewritten in place (`cat new > file`) is
    /// empty, then half-written, for a moment: it is used only once the
    /// same read (size, times, inode) is seen across [`CONFIG_SETTLE`], or
    /// it last changed longer ago than that, and refused if it is still
    /// changing after [`CONFIG_SETTLE_MAX`]. An empty file while bindings
    /// are held is refused too: to drop them all, leave a comment in it.
    /// A writer that pauses longer than that mid-file cannot be told from
    /// a finished one: write a temporary file and rename it into place.
    pub fn load_replacing(&self, n_held: usize) -> Result<Config, ConfigErrors> {
        if !self.required && !self.path.exists() {
            return Ok(Config::default());
        }
        let began = Instant::now();
        let mut previous = None;
        loop {
            let snapshot = config::read(&self.path, self.trust)?;
            let age = std::time::SystemTime::now()
                .duration_since(snapshot.stamp.changed())
                .unwrap_or(Duration::ZERO);
            let settled =
                snapshot.stable && (age >= CONFIG_SETTLE || previous == Some(snapshot.stamp));
            if settled {
                if n_held > 0 && snapshot.text.trim().is_empty() {
                    return Err(ConfigErrors::whole_file(&self.path, format!(
                        "the file is empty while {n_held} configured bindings are held (rewritten in place?); to drop them all, leave a comment in it"
                    )));
                }
                return config::parse(&snapshot.text, &self.path);
            }
            let pause = CONFIG_SETTLE
                .saturating_sub(age)
                .max(Duration::from_millis(5));
            if began.elapsed() + pause > CONFIG_SETTLE_MAX {
                return Err(ConfigErrors::whole_file(&self.path, format!(
                    "the file was still being written {}ms after the reload began; write a temporary file and rename it into place",
                    began.elapsed().as_millis()
                )));
            }
            previous = snapshot.stable.then_some(snapshot.stamp);
            std::thread::sleep(pause);
        }
    }
}

/// What the daemon needs besides its configuration.
#[derive(Debug)]
pub struct Options {
    /// The configuration file, re-read on SIGHUP.
    pub config: ConfigSource,
    /// The state file (`--state`); `None` takes `[daemon] state` or the
    /// built-in default.
    pub state_path: Option<PathBuf>,
    /// The control socket (`--socket`); `None` takes `[daemon] socket` or
    /// the built-in default.
    pub socket_path: Option<PathBuf>,
    /// Whether `RUST_LOG` set the log filter (then `[daemon] log` is
    /// ignored, also on reload).
    pub log_from_env: bool,
    /// The backend (`--backend`); `None` takes `[daemon] backend`.
    pub backend: Option<config::BackendKind>,
    /// The poll backend's interval (`--poll-interval`); `None` takes
    /// `[daemon] poll_interval`.
    pub poll_interval: Option<Duration>,
    /// Who is told that the daemon is ready (`--ready-fd`,
    /// `NOTIFY_SOCKET`).
    pub notifier: crate::notify::Notifier,
}

/// A daemon whose watch backend has been chosen; what `tetherd` runs.
pub trait Service: std::fmt::Debug {
    /// Runs until SIGTERM or SIGINT.
    fn run(&mut self) -> io::Result<Stop>;
    /// The number of bindings held.
    fn n_bindings(&self) -> usize;
    /// The backend's name.
    fn backend(&self) -> &'static str;
}

impl<B: Backend> Service for Daemon<B> {
    fn run(&mut self) -> io::Result<Stop> {
        Daemon::run(self)
    }

    fn n_bindings(&self) -> usize {
        Daemon::n_bindings(self)
    }

    fn backend(&self) -> &'static str {
        self.watcher.name()
    }
}

/// Chooses the watch backend (`--backend`, else `[daemon] backend`; with
/// `auto` the best one this host allows) and sets up the daemon on it.
pub fn start(options: Options, config: Config) -> io::Result<Box<dyn Service>> {
    let settings = watch::Settings {
        kind: options.backend.unwrap_or(config.daemon.backend),
        poll_interval: options.poll_interval.unwrap_or(config.daemon.poll_interval),
    };
    struct Starter {
        options: Options,
        config: Config,
    }
    impl watch::Visitor for Starter {
        type Output = io::Result<Box<dyn Service>>;
        fn visit<B: Backend + 'static>(self, backend: B) -> Self::Output {
            Ok(Box::new(Daemon::new(backend, self.options, self.config)?))
        }
    }
    watch::with_backend(&settings, Starter { options, config })?
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT.
    Signal(i32),
}

/// The running daemon.
pub struct Daemon<B: Backend> {
    poll: Poll,
    events: Events,
    watcher: B,
    signals: Signals,
    bindings: Bindings<B::Handle>,
    /// Socket bindings by the id users see. (Config bindings have ids
    /// too, but are not unbound by id; a map for them would cost memory on
    /// every binding for nothing.)
    ids: HashMap<u64, BindingId>,
    next_id: u64,
    /// Escalation deadlines, earliest first.
    timers: BinaryHeap<Reverse<(Instant, BindingId)>>,
    pins: state::Pins,
    /// The configuration entry of each binding made from a pidfile entry
    /// (the entry of any other configured binding is its spec's).
    pidfile_entries: HashMap<BindingId, EntryKey>,
    state: StateFile,
    /// Whether socket bindings changed since the state file was written,
    /// and whether the change must be on disk before anyone is told.
    state_dirty: Dirty,
    options: Options,
    /// `[defaults]`, for socket bindings that leave options out.
    defaults: Defaults,
    /// `[daemon] max_bindings_per_uid`.
    max_per_uid: usize,
    control: ControlSocket,
    conns: Vec<Option<Conn>>,
    /// Connections with unread input left after their read budget.
    backlog: Vec<usize>,
    /// Responses waiting for the commit at the end of the iteration.
    replies: Vec<requests::Reply>,
    /// Connections held back while all answers together are over the
    /// bound; served again when it falls.
    waiting: Vec<usize>,
    /// Connections held back while their uid's closer lane is long;
    /// served again when the closer wakes the loop.
    throttled: Vec<usize>,
    /// Closes what clients passed or owned, off the loop.
    closer: closer::Closer,
    /// What each uid holds.
    budget: budget::Budget,
    started: Instant,
    fd_limit: u64,
    /// `[daemon] backend` and `poll_interval` as last loaded, to warn
    /// when a reload changes what only a restart applies.
    watch_settings: (config::BackendKind, Duration),
}

impl<B: Backend> std::fmt::Debug for Daemon<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("backend", &self.watcher)
            .field("n_bindings", &self.bindings.len())
            .field("n_timers", &self.timers.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Daemon<B> {
    /// Sets up the loop around `watcher` and the signal source, reads the
    /// state file and arms every binding of `config`.
    pub fn new(mut watcher: B, options: Options, config: Config) -> io::Result<Daemon<B>> {
        let fd_limit = crate::sys::raise_nofile_limit()?;
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        watcher.register_source(poll.registry(), BACKEND_TOKEN)?;
        let state_path = options
            .state_path
            .clone()
            .or_else(|| config.daemon.state.clone())
            .unwrap_or_else(crate::paths::default_state);
        let boot_id = watcher.boot_id()?;
        let state = StateFile::new(state_path, boot_id);
        let loaded = state.load();
        if let Some(warning) = &loaded.warning {
            warn!("{warning}");
        }
        let socket_path = options
            .socket_path
            .clone()
            .or_else(|| config.daemon.socket.clone())
            .unwrap_or_else(crate::paths::default_socket);
        let mut control = ControlSocket::bind(&socket_path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("control socket {}: {err}", socket_path.display()),
            )
        })?;
        control.register(poll.registry(), LISTENER_TOKEN)?;
        let closer = closer::Closer::new(mio::Waker::new(poll.registry(), WAKER_TOKEN)?);
        let budget = budget::Budget::new(fd_limit, config.daemon.max_bindings_per_uid);
        let mut daemon = Daemon {
            poll,
            events: Events::with_capacity(1024),
            watcher,
            signals,
            bindings: Bindings::default(),
            ids: HashMap::new(),
            next_id: loaded.next_id.max(1),
            timers: BinaryHeap::new(),
            pins: loaded.pins,
            pidfile_entries: HashMap::new(),
            state,
            state_dirty: Dirty::Clean,
            options,
            defaults: config.defaults,
            max_per_uid: config.daemon.max_bindings_per_uid,
            control,
            conns: Vec::new(),
            backlog: Vec::new(),
            replies: Vec::new(),
            waiting: Vec::new(),
            throttled: Vec::new(),
            closer,
            budget,
            started: Instant::now(),
            fd_limit,
            watch_settings: (config.daemon.backend, config.daemon.poll_interval),
        };
        daemon.restore(loaded.bindings);
        daemon.apply(config);
        Ok(daemon)
    }

    /// The number of bindings held, in any phase.
    pub fn n_bindings(&self) -> usize {
        self.bindings.len()
    }

    /// Runs until SIGTERM or SIGINT. Children are left alone on the way out.
    pub fn run(&mut self) -> io::Result<Stop> {
        let fds_per_binding = 2;
        info!(
            "tetherd {} ready: {} bindings ({} watched), backend {}, descriptor limit {} (about {} bindings of one child), state {}, socket {}",
            env!("CARGO_PKG_VERSION"),
            self.bindings.len(),
            self.n_armed(),
            self.watcher.name(),
            self.fd_limit,
            self.fd_limit.saturating_sub(RESERVED_FDS) / fds_per_binding,
            self.state.path().display(),
            self.control.path().display(),
        );
        let status = self.status_line();
        self.options.notifier.ready(&status);
        let mut tokens: Vec<Token> = Vec::new();
        loop {
            let timeout = self.next_timeout();
            debug!("waiting (timeout {timeout:?})");
            if let Err(err) = self.poll.poll(&mut self.events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            tokens.clear();
            tokens.extend(self.events.iter().map(|event| event.token()));
            tokens.extend(self.backlog.drain(..).map(|idx| Token(CONN_TOKENS + idx)));
            if self.watcher.has_pending() || tokens.contains(&BACKEND_TOKEN) {
                self.watcher.collect(&mut tokens);
            }
            for &token in &tokens {
                if token == BACKEND_TOKEN {
                    continue;
                } else if token == SIGNAL_TOKEN {
                    if let Some(stop) = self.handle_signals() {
                        self.commit();
                        if let Err(err) = self.save_state_if(Dirty::Lazy) {
                            error!("{err}");
                        }
                        self.options.notifier.stopping();
                        info!(
                            "stopping on {}; {} bindings left unwatched, children untouched",
                            signal_name(stop),
                            self.bindings.len()
                        );
                        return Ok(Stop::Signal(stop));
                    }
                } else if token == LISTENER_TOKEN {
                    self.accept();
                } else if token == WAKER_TOKEN {
                    self.closer_event();
                } else if token.0 >= CONN_TOKENS {
                    self.conn_event(token.0 - CONN_TOKENS);
                } else {
                    self.member_event(token);
                }
            }
            self.run_due_timers();
            self.expire_idle_conns();
            self.commit();
        }
    }

    /// The short status a service manager shows.
    fn status_line(&self) -> String {
        format!(
            "{} bindings ({} watched), backend {}",
            self.bindings.len(),
            self.n_armed(),
            self.watcher.name()
        )
    }

    fn n_armed(&self) -> usize {
        self.bindings
            .iter()
            .filter(|(_, b)| b.phase == Phase::Armed)
            .count()
    }

    /// The poll timeout: until the earliest deadline (escalation, or a
    /// connection's idle timeout), zero while input is left unread, or
    /// forever when nothing is pending.
    fn next_timeout(&mut self) -> Option<Duration> {
        if !self.backlog.is_empty() || self.watcher.has_pending() {
            return Some(Duration::ZERO);
        }
        // Deadlines of bindings that finished or went away before their
        // grace ran out would wake an idle daemon for nothing: drop them.
        while let Some(Reverse((deadline, id))) = self.timers.peek().copied() {
            let live = self.bindings.get(id).is_some_and(|b| {
                b.phase
                    == Phase::Signalled {
                        deadline: Some(deadline),
                    }
            });
            if live {
                break;
            }
            self.timers.pop();
        }
        let escalation = self.timers.peek().map(|Reverse((deadline, _))| *deadline);
        let idle = self
            .conns
            .iter()
            .flatten()
            .map(|c| c.last_active + IDLE_TIMEOUT)
            .min();
        let deadline = match (escalation, idle) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Drains pending signals; returns the one that stops the daemon.
    fn handle_signals(&mut self) -> Option<i32> {
        let pending: Vec<i32> = self.signals.pending().collect();
        let mut reload = false;
        for sig in pending {
            match sig {
                SIGTERM | SIGINT => return Some(sig),
                SIGHUP => reload = true,
                _ => {}
            }
        }
        if reload {
            info!("SIGHUP received");
            let _ = self.reload();
        }
        None
    }

    /// Re-reads the configuration and applies the difference. An invalid
    /// file changes nothing; its errors are logged and returned.
    pub fn reload(&mut self) -> Result<ReloadInfo, ConfigErrors> {
        info!("reloading {}", self.options.config.path.display());
        self.options.notifier.reloading();
        let result = self.reload_config();
        let status = self.status_line();
        self.options.notifier.ready(&status);
        result
    }

    fn reload_config(&mut self) -> Result<ReloadInfo, ConfigErrors> {
        let n_held = self
            .bindings
            .iter()
            .filter(|(_, b)| b.origin == Origin::Config)
            .count();
        match self.options.config.load_replacing(n_held) {
            Ok(config) => {
                self.warn_if_restart_needed(&config);
                Ok(self.apply(config))
            }
            Err(errors) => {
                error!(
                    "reload refused: {} error(s) in {}; the running configuration stays in force",
                    errors.0.len(),
                    self.options.config.path.display()
                );
                for err in &errors.0 {
                    error!("{err}");
                }
                Err(errors)
            }
        }
    }

    /// `backend` and `poll_interval` are read at start only: say so when a
    /// reload changes them (unless the command line set them).
    fn warn_if_restart_needed(&mut self, config: &Config) {
        let (backend, interval) = self.watch_settings;
        if self.options.backend.is_none() && config.daemon.backend != backend {
            warn!(
                "[daemon] backend changed from {backend} to {}; it takes effect at the next start (running: {})",
                config.daemon.backend,
                self.watcher.name()
            );
        }
        if self.options.poll_interval.is_none() && config.daemon.poll_interval != interval {
            warn!(
                "[daemon] poll_interval changed from {interval:?} to {:?}; it takes effect at the next start",
                config.daemon.poll_interval
            );
        }
        self.watch_settings = (config.daemon.backend, config.daemon.poll_interval);
    }

    /// Makes the configured bindings those of `config`: adds new ones,
    /// drops removed ones, leaves unchanged ones (and their timers) alone.
    /// A binding whose SIGKILL is pending is never dropped by a reload: it
    /// stays, outside the configuration, until its escalation is done.
    fn apply(&mut self, mut config: Config) -> ReloadInfo {
        // Each entry with its key (for its pins). Pidfile bindings become
        // pid bindings here, each file read now. A refused one is logged
        // and left out, unless the entry holds a binding: a pidfile being
        // rewritten, or removed by a service that exits, does not drop it;
        // only a pidfile naming another live process replaces it.
        let mut wanted_specs: Vec<(BindingSpec, Option<EntryKey>)> =
            config.bindings.drain(..).map(|spec| (spec, None)).collect();
        let mut n_refused = 0;
        for pidfile_binding in std::mem::take(&mut config.pidfile_bindings) {
            let entry = EntryKey::of_pidfile(&pidfile_binding);
            let why = match self.resolve(&pidfile_binding) {
                Ok(spec) => {
                    wanted_specs.push((spec, Some(entry)));
                    continue;
                }
                Err(why) => why,
            };
            let held: Vec<BindingSpec> = self
                .pidfile_entries
                .iter()
                .filter(|&(_, e)| *e == entry)
                .filter_map(|(&id, _)| self.bindings.get(id))
                .filter(|b| b.phase != Phase::Done)
                .map(|b| (*b.spec).clone())
                .collect();
            if held.is_empty() {
                error!("{}: {why}; binding not held", pidfile_binding.label());
                n_refused += 1;
            } else {
                warn!(
                    "{}: {why}; the binding stays held until the pidfile names another running process",
                    pidfile_binding.label()
                );
                wanted_specs.extend(held.into_iter().map(|spec| (spec, Some(entry))));
            }
        }
        if !self.options.log_from_env {
            log::set_max_level(config.daemon.log);
        }
        self.defaults = config.defaults;
        self.max_per_uid = config.daemon.max_bindings_per_uid;
        self.budget
            .set_limits(self.fd_limit, config.daemon.max_bindings_per_uid);
        if let Some(socket) = &config.daemon.socket {
            if self.options.socket_path.is_none() && socket != self.control.path() {
                warn!(
                    "[daemon] socket changed to {}; the daemon keeps serving {} until it restarts",
                    socket.display(),
                    self.control.path().display()
                );
            }
        }
        if let Some(state) = &config.daemon.state {
            if self.options.state_path.is_none() && state != self.state.path() {
                warn!(
                    "[daemon] state changed to {}; the daemon keeps {} until it restarts",
                    state.display(),
                    self.state.path().display()
                );
            }
        }
        // Configured bindings by what they say. Built for the diff and
        // dropped after it, rather than kept: it would cost every binding
        // memory between reloads for nothing.
        let mut by_spec: HashMap<Rc<BindingSpec>, BindingId> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.origin == Origin::Config)
            .map(|(id, b)| (Rc::clone(&b.spec), id))
            .collect();
        let wanted: HashSet<&BindingSpec> = wanted_specs.iter().map(|(spec, _)| spec).collect();
        let stale: Vec<(Rc<BindingSpec>, BindingId)> = by_spec
            .iter()
            .filter(|(spec, _)| !wanted.contains(spec.as_ref()))
            .map(|(spec, id)| (Rc::clone(spec), *id))
            .collect();
        drop(wanted);
        let n_removed = stale.len();
        for (spec, id) in stale {
            by_spec.remove(&spec);
            match self.bindings.get(id) {
                Some(b) if matches!(b.phase, Phase::Signalled { deadline: Some(_) }) => info!(
                    "{}: no longer in the configuration; kept until its pending SIGKILL is sent",
                    b.label()
                ),
                _ => self.remove(id, "no longer in the configuration"),
            }
        }
        let (mut n_added, mut n_unchanged, mut n_failed) = (0, 0, n_refused);
        for (spec, pidfile_entry) in wanted_specs {
            let entry = pidfile_entry.unwrap_or_else(|| EntryKey::of_spec(&spec));
            let id = match by_spec.get(&spec) {
                Some(&id) => {
                    n_unchanged += 1;
                    Some(id)
                }
                None => {
                    let spec = Rc::new(spec);
                    let id = self.add(Rc::clone(&spec), Origin::Config, Some(entry));
                    match id {
                        Some(id) => {
                            by_spec.insert(spec, id);
                            n_added += 1;
                        }
                        None => n_failed += 1,
                    }
                    id
                }
            };
            if let (Some(id), Some(entry)) = (id, pidfile_entry) {
                self.pidfile_entries.insert(id, entry);
            }
        }
        // Pins follow their entries: an entry keeps the pins of the pids
        // it names now; the pins of an entry that left are retired (kept,
        // bounded), so the same entry coming back gets them again, while
        // no other entry can ever use them.
        self.pidfile_entries
            .retain(|&id, _| self.bindings.get(id).is_some());
        let mut live = HashSet::with_capacity(by_spec.len());
        let mut named = HashSet::with_capacity(by_spec.len() * 2);
        for (spec, id) in &by_spec {
            let entry = self
                .pidfile_entries
                .get(id)
                .copied()
                .unwrap_or_else(|| EntryKey::of_spec(spec));
            live.insert(entry);
            for pid in std::iter::once(spec.parent.pid).chain(spec.children.iter().map(|c| c.pid)) {
                named.insert((entry, pid));
            }
        }
        self.pins.sync(&live, &named);
        drop((live, named));
        drop(by_spec);
        self.bindings.shrink_to_fit();
        self.pins.shrink_to_fit();
        if let Err(err) = self.save_state() {
            error!("{err}");
        }
        crate::sys::release_free_memory();
        info!(
            "configuration applied: {n_added} added, {n_removed} removed, {n_unchanged} unchanged, {n_failed} failed; {} bindings held",
            self.bindings.len()
        );
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        ReloadInfo {
            added: count(n_added),
            removed: count(n_removed),
            unchanged: count(n_unchanged),
            failed: count(n_failed),
        }
    }

    /// Reads the pidfiles of a binding and makes it a pid binding.
    fn resolve(&mut self, binding: &PidfileBindingSpec) -> Result<BindingSpec, String> {
        let parent = self.source(&binding.parent)?;
        let mut children = Vec::with_capacity(binding.children.len());
        for child in &binding.children {
            let child = self.source(child)?;
            if child.pid == parent.pid {
                return Err(format!("pid {} is both parent and child", child.pid));
            }
            children.push(child);
        }
        Ok(BindingSpec {
            name: binding.name.clone(),
            parent,
            children,
            signal: binding.signal,
            grace: binding.grace,
            kill: binding.kill,
        })
    }

    /// The process a source names: a configured pid, or the running
    /// process whose pid a pidfile holds (never tetherd or a kernel
    /// thread).
    fn source(&mut self, source: &PidSource) -> Result<ProcSpec, String> {
        let path = match source {
            PidSource::Pid(spec) => return Ok(*spec),
            PidSource::Pidfile(path) => path,
        };
        let pid = pidfile::read(path, self.options.config.trust == Trust::RequireRootOwned)?;
        // A pidfile left by a service that is gone names nothing, or worse,
        // an unrelated process; refuse a dead pid rather than act on it.
        match self.watcher.open(pid) {
            Ok((_, identity)) => match special_process(pid, Some(identity.start)) {
                Ok(()) => Ok(ProcSpec::unpinned(pid)),
                Err(what) => Err(format!(
                    "{}: names pid {pid}, which {what}; refusing it",
                    path.display()
                )),
            },
            Err(OpenError::Gone) => Err(format!(
                "{}: names pid {pid}, which is not running",
                path.display()
            )),
            Err(err) => Err(format!("{}: pid {pid}: {err}", path.display())),
        }
    }

    /// Restores the socket bindings of the state file. Their processes are
    /// pinned, so a parent that exited while the daemon was down is found
    /// gone (and the binding acts at once), and a child whose pid now
    /// belongs to another process is dropped unsignalled.
    fn restore(&mut self, saved: Vec<SavedBinding>) {
        let n_saved = saved.len();
        for binding in saved {
            self.next_id = self.next_id.max(binding.id.saturating_add(1));
            if binding.boot_id != self.state.boot_id() {
                info!(
                    "socket binding #{} (uid {}) dropped: made in an earlier boot, its processes are gone",
                    binding.id, binding.uid
                );
                self.state_dirty.mark(Dirty::Lazy);
                continue;
            }
            match saved_spec(&binding) {
                Ok(spec) => {
                    let origin = Origin::Socket { uid: binding.uid };
                    let id = binding.id;
                    if self.add_with_id(Rc::new(spec), origin, id, None).is_none() {
                        self.state_dirty.mark(Dirty::Lazy);
                    }
                }
                Err(why) => {
                    warn!(
                        "socket binding #{} in the state file dropped: {why}",
                        binding.id
                    );
                    self.state_dirty.mark(Dirty::Lazy);
                }
            }
        }
        if n_saved > 0 {
            info!(
                "restored {n_saved} socket bindings from {}",
                self.state.path().display()
            );
        }
    }

    /// Writes the pins and the state file if anything in them changed.
    /// A lazy change alone (a socket binding that is done) waits for the
    /// next durable write or for the daemon's exit: writing it costs time
    /// in the loop, and a stale entry is harmless, since at restore its
    /// processes are found gone or not the pinned ones.
    fn save_state(&mut self) -> Result<(), String> {
        self.save_state_if(Dirty::Durable)
    }

    fn save_state_if(&mut self, at_least: Dirty) -> Result<(), String> {
        if self.pins.is_dirty() {
            self.state.save_pins(&mut self.pins).map_err(|err| {
                format!(
                    "cannot write the pins file {}: {err}",
                    self.state.pins_path().display()
                )
            })?;
        }
        if self.state_dirty == Dirty::Clean || self.state_dirty < at_least {
            return Ok(());
        }
        let saved = self.saved_bindings();
        let durable = self.state_dirty == Dirty::Durable;
        match self.state.save_bindings(saved, self.next_id, durable) {
            Ok(()) => {
                self.state_dirty = Dirty::Clean;
                Ok(())
            }
            Err(err) => Err(format!(
                "cannot write the state file {}: {err}",
                self.state.path().display()
            )),
        }
    }

    /// The socket bindings as the state file keeps them.
    fn saved_bindings(&self) -> Vec<SavedBinding> {
        let boot_id = self.state.boot_id().to_owned();
        self.bindings
            .iter()
            .filter_map(|(_, binding)| {
                let Origin::Socket { uid } = binding.origin else {
                    return None;
                };
                if binding.phase == Phase::Done {
                    return None;
                }
                let spec = &binding.spec;
                let children = spec
                    .children
                    .iter()
                    .zip(&binding.children)
                    .filter(|(_, live)| live.is_some())
                    .map(|(child, _)| saved_proc(child))
                    .collect();
                Some(SavedBinding {
                    id: binding.id,
                    uid,
                    name: spec.name.clone(),
                    boot_id: boot_id.clone(),
                    parent: saved_proc(&spec.parent),
                    children,
                    signal: spec.signal.to_string(),
                    grace: spec.grace.to_string(),
                    kill: spec.kill.to_string(),
                })
            })
            .collect()
    }

    /// Opens, proves and registers every process of `spec`, and acts at
    /// once when the parent is already gone. Returns `None` (after logging
    /// why) when the binding cannot be held at all.
    fn add(
        &mut self,
        spec: Rc<BindingSpec>,
        origin: Origin,
        entry: Option<EntryKey>,
    ) -> Option<BindingId> {
        let id = self.next_id;
        self.next_id += 1;
        self.add_with_id(spec, origin, id, entry)
    }

    /// Like [`Daemon::add`]; `entry` is the configuration entry whose pins
    /// an unpinned pid is checked against (`None`: socket bindings, whose
    /// specs are pinned).
    fn add_with_id(
        &mut self,
        spec: Rc<BindingSpec>,
        origin: Origin,
        public_id: u64,
        entry: Option<EntryKey>,
    ) -> Option<BindingId> {
        let label = bindings::label(&spec, origin, public_id);
        if spec.children.len() > MAX_CHILDREN {
            error!(
                "{label}: {} children is more than the {MAX_CHILDREN} a binding may have",
                spec.children.len()
            );
            return None;
        }
        // Whether the entry knew a process before this load: by a pin in
        // the configuration or one it recorded. A child first seen now,
        // while its parent's pin turns out stale, was never bound to that
        // parent: it is never signalled for it (the new launcher of a job
        // may have the old launcher's pid, its captive is not the old one's).
        let known = |daemon: &mut Self, p: &ProcSpec| match entry {
            Some(entry) if p.start.is_none() && p.inode.is_none() => {
                daemon.pins.adopt_legacy(entry, p.pid);
                daemon.pins.get(entry, p.pid).is_some()
            }
            _ => true,
        };
        let parent_known = known(self, &spec.parent);
        let opened = self.open_member(&spec.parent, origin, entry);
        let parent = match refuse_special(opened, origin, false) {
            Ok(Proven::Live(member, _)) => Some(member),
            Ok(Proven::Gone(why)) => {
                info!(
                    "{label}: parent {} is gone at load ({why}); acting at once",
                    spec.parent.pid
                );
                None
            }
            Err(why) => {
                error!(
                    "{label}: cannot watch parent {}: {why}; binding not held",
                    spec.parent.pid
                );
                return None;
            }
        };
        let stale_parent = parent.is_none() && parent_known;
        let mut children = Vec::with_capacity(spec.children.len());
        for child in &spec.children {
            let child_known = known(self, child);
            let opened = self.open_member(child, origin, entry);
            match refuse_special(opened, origin, true) {
                Ok(Proven::Live(_, _)) if stale_parent && !child_known => {
                    warn!(
                        "{label}: child {} dropped, it will never be signalled: first seen after the pin of parent {} turned out stale, so it was never bound to that parent",
                        child.pid, spec.parent.pid
                    );
                    children.push(None);
                }
                Ok(Proven::Live(member, _)) => children.push(Some(member)),
                Ok(Proven::Gone(why)) => {
                    warn!(
                        "{label}: child {} dropped, it will never be signalled: {why}",
                        child.pid
                    );
                    children.push(None);
                }
                Err(why) => {
                    error!(
                        "{label}: cannot hold child {}: {why}; binding not held",
                        child.pid
                    );
                    return None;
                }
            }
        }
        self.insert(spec, origin, public_id, parent, children, &label)
            .ok()
    }

    /// Stores a binding whose processes are open and proven, registers them
    /// and acts at once if the parent is already gone. A refusal is logged
    /// and returned (for a socket client).
    fn insert(
        &mut self,
        spec: Rc<BindingSpec>,
        origin: Origin,
        public_id: u64,
        parent: Option<Member<B::Handle>>,
        children: Vec<Option<Member<B::Handle>>>,
        label: &str,
    ) -> Result<BindingId, String> {
        let scope = match spec.kill {
            KillMode::Process => None,
            KillMode::Tree => Some(Box::new(Scope {
                groups: Vec::new(),
                extras: Vec::new(),
            })),
            KillMode::Group => match self.group_check(parent.as_ref(), &children) {
                Ok(groups) => Some(Box::new(Scope {
                    groups,
                    extras: Vec::new(),
                })),
                Err(why) => {
                    error!("{label}: {why}; binding not held");
                    return Err(why);
                }
            },
        };
        let charged = usize::from(parent.is_some()) + children.iter().flatten().count();
        let binding = Binding {
            id: public_id,
            origin,
            spec,
            parent,
            children,
            phase: Phase::Armed,
            scope,
            charged,
        };
        let budget_uid = Self::budget_uid(origin);
        let Some(id) = self.bindings.insert(binding) else {
            let why = "the daemon holds as many bindings as it can address".to_string();
            error!("{label}: {why}; binding not held");
            return Err(why);
        };
        self.budget.charge(budget_uid, charged);
        if let Err(err) = self.register_members(id) {
            let why = format!("cannot register with the event loop: {err}");
            error!("{label}: {why}; binding not held");
            self.remove(id, "registration failed");
            return Err(why);
        }
        if matches!(origin, Origin::Socket { .. }) {
            self.ids.insert(public_id, id);
            self.state_dirty.mark(Dirty::Durable);
        }
        let Some(binding) = self.bindings.get_mut(id) else {
            return Ok(id);
        };
        if binding.n_live_children() == 0 {
            info!("{label}: no bound child is running; nothing to do");
            self.finish(id);
        } else if binding.parent.is_none() {
            self.fire(id);
        } else {
            debug!(
                "{label}: watching parent {} for {} children",
                binding.spec.parent.pid,
                binding.n_live_children()
            );
            // A group is the captive: hold the members it has now, so that
            // it is still covered (and its identity proven) after the
            // bound child exits.
            if binding.spec.kill == KillMode::Group {
                self.collect(id);
            }
        }
        Ok(id)
    }

    /// The uid a binding's processes are counted against: 0 for root, the
    /// daemon's own user and the configuration.
    fn budget_uid(origin: Origin) -> u32 {
        match origin {
            Origin::Socket { uid } if uid != nix::unistd::geteuid().as_raw() => uid,
            _ => 0,
        }
    }

    fn register_members(&mut self, id: BindingId) -> io::Result<()> {
        let Some(binding) = self.bindings.get(id) else {
            return Ok(());
        };
        let registry = self.poll.registry();
        if let Some(parent) = &binding.parent {
            self.watcher
                .register(registry, &parent.handle, id.token(0))?;
        }
        for (idx, child) in binding.children.iter().enumerate() {
            if let Some(child) = child {
                self.watcher
                    .register(registry, &child.handle, id.token(idx + 1))?;
            }
        }
        Ok(())
    }

    /// The process group of each bound child, for `kill = "group"`.
    /// Refuses a group that contains the daemon or pid 1 (pid 1's own
    /// group, and ids 0 and 1), or that the parent belongs to: then the captive has no group of
    /// its own, and signalling it would hit the launcher's siblings.
    fn group_check(
        &self,
        parent: Option<&Member<B::Handle>>,
        children: &[Option<Member<B::Handle>>],
    ) -> Result<Vec<Option<i32>>, String> {
        let own = nix::unistd::getpgrp().as_raw();
        let init_group = self.watcher.init_group();
        let parent_group = match parent {
            Some(p) => self
                .watcher
                .entry(p.pid, &p.handle)
                .map_err(|e| format!("cannot read the parent's process group: {e}"))?
                .map(|e| e.pgid),
            None => None,
        };
        let mut groups = Vec::with_capacity(children.len());
        for child in children {
            let Some(child) = child else {
                groups.push(None);
                continue;
            };
            let entry = self.watcher.entry(child.pid, &child.handle).map_err(|e| {
                format!("cannot read the process group of child {}: {e}", child.pid)
            })?;
            let Some(entry) = entry else {
                groups.push(None);
                continue;
            };
            let group = entry.pgid;
            let pid = child.pid;
            if group == own {
                return Err(format!(
                    "kill = \"group\": child {pid} is in process group {group}, which contains tetherd itself"
                ));
            }
            if group <= 1 || Some(group) == init_group {
                return Err(format!(
                    "kill = \"group\": child {pid} is in process group {group}, which contains pid 1"
                ));
            }
            if parent_group == Some(group) {
                return Err(format!(
                    "kill = \"group\": child {pid} shares process group {group} with its parent, so the captive has no group of its own (use kill = \"tree\")"
                ));
            }
            groups.push(Some(group));
        }
        Ok(groups)
    }

    /// Widens a group or tree binding: finds the members it does not hold
    /// yet in the process table, opens each and proves it against the
    /// entry it was found by, and holds it (within the owner's budget).
    /// Returns the index in `extras` from which members are new (the
    /// length of `extras` if nothing could be found).
    fn collect(&mut self, id: BindingId) -> usize {
        let n_extras = |d: &Self| {
            d.bindings
                .get(id)
                .and_then(|b| b.scope.as_ref())
                .map_or(0, |s| s.extras.len())
        };
        let first_new = n_extras(self);
        let table = match self.watcher.process_table() {
            Ok(table) => table,
            Err(err) => {
                error!("cannot read the process table: {err}; signalling only what is held");
                return first_new;
            }
        };
        let Some(binding) = self.bindings.get(id) else {
            return first_new;
        };
        let label = binding.label();
        let mode = binding.spec.kill;
        let budget_uid = Self::budget_uid(binding.origin);
        let Some(scope) = binding.scope.as_ref() else {
            return first_new;
        };
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        // Who is held and alive now: the roots of the search.
        let held: Vec<(i32, &B::Handle)> = binding
            .children
            .iter()
            .flatten()
            .chain(scope.extras.iter())
            .filter(|m| !self.watcher.has_exited(&m.handle))
            .map(|m| (m.pid.get(), &m.handle))
            .collect();
        let held_pids: HashSet<i32> = binding
            .children
            .iter()
            .flatten()
            .chain(scope.extras.iter())
            .map(|m| m.pid.get())
            .collect();
        let mut found: Vec<(ProcEntry, Option<i32>)> = Vec::new();
        match mode {
            KillMode::Process => {}
            KillMode::Tree => {
                // Breadth first from every held process: a process whose
                // parent is held and alive is that process's child, since a
                // held pid cannot be reused.
                let mut children_of: HashMap<i32, Vec<&ProcEntry>> = HashMap::new();
                for e in &table {
                    children_of.entry(e.ppid).or_default().push(e);
                }
                let mut frontier: Vec<i32> = held.iter().map(|(pid, _)| *pid).collect();
                let mut seen: HashSet<i32> = frontier.iter().copied().collect();
                while let Some(pid) = frontier.pop() {
                    for e in children_of.get(&pid).into_iter().flatten() {
                        if e.pid > 1 && e.pid != me && seen.insert(e.pid) {
                            if !held_pids.contains(&e.pid) {
                                found.push((**e, None));
                            }
                            frontier.push(e.pid);
                        }
                    }
                }
            }
            KillMode::Group => {
                let mut groups: Vec<i32> = scope.groups.iter().flatten().copied().collect();
                groups.sort_unstable();
                groups.dedup();
                for group in groups {
                    // The group id means the recorded group only while the
                    // group was never empty: prove it by a held, living member.
                    let proven = held.iter().any(|(pid, handle)| {
                        Pid::try_from(i64::from(*pid))
                            .ok()
                            .and_then(|pid| self.watcher.entry(pid, handle).ok().flatten())
                            .is_some_and(|e| e.pgid == group)
                    });
                    if !proven {
                        warn!(
                            "{label}: process group {group} not covered: no process known to be in it since the binding was made is left, so the id may have been reused"
                        );
                        continue;
                    }
                    for e in table.iter().filter(|e| e.pgid == group) {
                        if e.pid > 1 && e.pid != me && !held_pids.contains(&e.pid) {
                            found.push((*e, Some(group)));
                        }
                    }
                }
            }
        }
        let room = self.budget.room(budget_uid);
        let mut proven_members = Vec::new();
        let mut not_held: Vec<String> = Vec::new();
        for (candidate, group) in found {
            let Ok(pid) = Pid::try_from(i64::from(candidate.pid)) else {
                continue;
            };
            if proven_members.len() >= room {
                not_held.push(format!("{pid} (the budget of its uid is used up)"));
                continue;
            }
            let handle = match self.watcher.open(pid) {
                Ok((handle, _)) => handle,
                // Exited since the table was read: nothing to signal.
                Err(OpenError::Gone) => continue,
                Err(err) => {
                    not_held.push(format!("{pid} ({err})"));
                    continue;
                }
            };
            // The pid might have been reused between the table and the open:
            // keep only the process the table showed.
            let same = match self.watcher.entry(pid, &handle) {
                Ok(Some(now)) => {
                    now.start == candidate.start
                        && match group {
                            Some(group) => now.pgid == group,
                            None => now.ppid == candidate.ppid,
                        }
                }
                _ => false,
            };
            if same {
                proven_members.push(Member { pid, handle });
            }
        }
        if !not_held.is_empty() {
            let what = if mode == KillMode::Group {
                "group members"
            } else {
                "descendants"
            };
            error!(
                "{label}: {} {what} cannot be held and will not be signalled: {}",
                not_held.len(),
                not_held.join(", ")
            );
        }
        let n_new = proven_members.len();
        if let Some(binding) = self.bindings.get_mut(id) {
            if let Some(scope) = binding.scope.as_mut() {
                scope.extras.extend(proven_members);
                binding.charged += n_new;
                self.budget.charge(budget_uid, n_new);
            }
        }
        first_new
    }

    /// Signals one member of a binding, through its handle, if the
    /// binding may have it signalled: a binding made by a user other than
    /// root signals only processes that user could signal itself, proven
    /// after the handle is held and just before the signal (a process can
    /// change owner by a set-id exec, or be adopted into a subreaper's
    /// tree or a shared session's group). Never blocks.
    fn deliver(
        watcher: &B,
        deputy_for: Option<u32>,
        member: &Member<B::Handle>,
        sig: Signal,
    ) -> Outcome {
        if watcher.has_exited(&member.handle) {
            return Outcome::Exited;
        }
        if let Some(uid) = deputy_for {
            match watcher.owner(member.pid, &member.handle) {
                Ok(Some(owner)) if owner.plainly_owned_by(uid) => {}
                Ok(Some(owner)) => return Outcome::Refused(owner.refusal(uid)),
                Ok(None) => return Outcome::Exited,
                Err(err) => return Outcome::Refused(format!("its owner cannot be read ({err})")),
            }
        }
        match watcher.signal(&member.handle, sig) {
            Ok(Delivery::Sent) => Outcome::Sent,
            Ok(Delivery::Gone) => Outcome::Gone,
            Err(err) => Outcome::Failed(err),
        }
    }

    /// Whether a group or tree binding still holds members other than its
    /// bound children that have not exited.
    fn has_live_extras(&self, id: BindingId) -> bool {
        self.bindings
            .get(id)
            .and_then(|b| b.scope.as_ref())
            .is_some_and(|s| s.extras.iter().any(|m| !self.watcher.has_exited(&m.handle)))
    }

    /// Signals the members of a group or tree binding from index `from`
    /// on (those still alive).
    fn signal_extras(&mut self, id: BindingId, from: usize, sig: Signal) {
        let admin = nix::unistd::geteuid().as_raw();
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        let label = binding.label();
        let deputy_for = binding.deputy_for(admin);
        let what = match binding.spec.kill {
            KillMode::Group => "group member",
            _ => "descendant",
        };
        let Some(scope) = binding.scope.as_mut() else {
            return;
        };
        for member in scope.extras.iter().skip(from) {
            match Self::deliver(&self.watcher, deputy_for, member, sig) {
                Outcome::Sent => info!("{label}: sent {sig} to {what} {}", member.pid),
                Outcome::Exited | Outcome::Gone => {}
                Outcome::Refused(why) => warn!(
                    "{label}: {what} {} not signalled: {why}, and uid {} may not signal it",
                    member.pid,
                    deputy_for.unwrap_or(0)
                ),
                Outcome::Failed(err) => {
                    error!("{label}: cannot send {sig} to {what} {}: {err}", member.pid)
                }
            }
        }
    }

    /// Opens the process of `spec` and proves it is the bound one: its
    /// identity, read after the handle was opened, must match the pin of the
    /// config, or the pin `entry` recorded when it first saw the pid. A pid
    /// the entry sees for the first time is pinned now.
    fn open_member(
        &mut self,
        spec: &ProcSpec,
        origin: Origin,
        entry: Option<EntryKey>,
    ) -> Result<Proven<B::Handle>, String> {
        let opened = self.watcher.open(spec.pid);
        let pin_source = match origin {
            Origin::Config => "the configured pin",
            Origin::Socket { .. } => "the pin taken at bind time",
        };
        let Some(entry) = entry.filter(|_| spec.start.is_none() && spec.inode.is_none()) else {
            return self.prove(spec, opened, pin_source);
        };
        let (handle, identity) = match opened {
            Ok(opened) => opened,
            Err(OpenError::Gone) => return Ok(Proven::Gone("no such process".into())),
            Err(err @ OpenError::Failed(_)) => return Err(err.to_string()),
        };
        let mismatch = match self.pins.get(entry, spec.pid) {
            Some(Pin::ThisBoot(pin)) => pin_mismatch(
                Some(pin.start),
                pin.inode,
                identity,
                "the pin recorded when tetherd first saw it",
            ),
            Some(Pin::EarlierBoot { boot_id, .. }) => Some(format!(
                "pid {} was pinned in an earlier boot ({boot_id}), so the process now at that pid is another one",
                spec.pid
            )),
            None => {
                debug!("pid {} pinned at first sight ({identity})", spec.pid);
                self.pins.record(entry, spec.pid, identity);
                None
            }
        };
        Ok(match mismatch {
            Some(why) => Proven::Gone(why),
            None => Proven::Live(
                Member {
                    pid: spec.pid,
                    handle,
                },
                identity,
            ),
        })
    }

    /// Checks an opened process against the explicit pins of `spec` (a
    /// spec without pins is taken as it is); `pin_source` names where the
    /// pins came from, for the log.
    fn prove(
        &mut self,
        spec: &ProcSpec,
        opened: Result<(B::Handle, Identity), OpenError>,
        pin_source: &str,
    ) -> Result<Proven<B::Handle>, String> {
        let (handle, identity) = match opened {
            Ok(opened) => opened,
            Err(OpenError::Gone) => return Ok(Proven::Gone("no such process".into())),
            Err(err @ OpenError::Failed(_)) => return Err(err.to_string()),
        };
        if spec.inode.is_some() && !self.watcher.has_inodes() {
            return Err(format!(
                "an inode pin needs pidfs (Linux 6.9 or later) and the {} backend here has none; pin the start time instead",
                self.watcher.name()
            ));
        }
        match pin_mismatch(spec.start, spec.inode, identity, pin_source) {
            Some(why) => Ok(Proven::Gone(why)),
            None => Ok(Proven::Live(
                Member {
                    pid: spec.pid,
                    handle,
                },
                identity,
            )),
        }
    }

    /// Handles the exit of the member a token names.
    fn member_event(&mut self, token: Token) {
        let Some((id, member)) = self.bindings.resolve(token) else {
            debug!("event for {token:?}, which names no binding any more");
            return;
        };
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        match member {
            MemberRef::Parent => {
                let Some(parent) = &binding.parent else {
                    return;
                };
                if !self.watcher.has_exited(&parent.handle) {
                    debug!(
                        "{}: spurious wakeup for parent {}",
                        binding.label(),
                        parent.pid
                    );
                    return;
                }
                self.fire(id);
            }
            MemberRef::Child(idx) => {
                let label = binding.label();
                let Some(slot) = binding.children.get_mut(idx) else {
                    return;
                };
                let Some(child) = slot else {
                    return;
                };
                if !self.watcher.has_exited(&child.handle) {
                    debug!("{label}: spurious wakeup for child {}", child.pid);
                    return;
                }
                let pid = child.pid;
                if let Some(child) = slot.take() {
                    let _ = self.watcher.deregister(self.poll.registry(), &child.handle);
                }
                let remaining = binding.n_live_children();
                let phase = binding.phase;
                let group = binding.spec.kill == KillMode::Group;
                match phase {
                    Phase::Armed => {
                        // A captive that daemonized (forked and let its
                        // first process exit) escapes a process binding:
                        // say so where an administrator looks.
                        info!(
                            "{label}: child {pid} exited before the parent; {remaining} bound children left"
                        )
                    }
                    Phase::Signalled { .. } | Phase::Killed => info!("{label}: child {pid} exited"),
                    Phase::Done => {}
                }
                if remaining > 0 {
                    return;
                }
                // A group is the captive: it stays covered while a member
                // held since the binding was made (or found now, proven by
                // such a member) lives.
                if phase == Phase::Armed && group {
                    self.collect(id);
                    if self.has_live_extras(id) {
                        if let Some(binding) = self.bindings.get(id) {
                            let n = binding.scope.as_ref().map_or(0, |s| {
                                s.extras
                                    .iter()
                                    .filter(|m| !self.watcher.has_exited(&m.handle))
                                    .count()
                            });
                            info!(
                                "{label}: its process group lives on in {n} processes, which stay bound to the parent"
                            );
                        }
                        return;
                    }
                }
                let escalation_pending = matches!(phase, Phase::Signalled { deadline: Some(_) });
                if !(escalation_pending && self.has_live_extras(id)) {
                    self.finish(id);
                }
            }
        }
    }

    /// The parent is gone: signal every child still running and arm the
    /// escalation deadline.
    fn fire(&mut self, id: BindingId) {
        let admin = nix::unistd::geteuid().as_raw();
        // Group and tree: the snapshot is taken before the first signal,
        // while the tree is whole (a child killed first would orphan its
        // descendants, which could then no longer be found from it).
        let has_scope = self.bindings.get(id).is_some_and(|b| b.scope.is_some());
        let snapshot = has_scope.then(|| {
            // Members held since bind time (groups) are signalled too.
            if self
                .bindings
                .get(id)
                .is_some_and(|b| b.spec.kill == KillMode::Group)
            {
                self.collect(id);
                0
            } else {
                self.collect(id)
            }
        });
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        let sig = binding.spec.signal;
        let deputy_for = binding.deputy_for(admin);
        // Signal first; bookkeeping and logging wait until every child has
        // had its signal, so they add nothing to the delay.
        let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(binding.children.len());
        for (idx, slot) in binding.children.iter().enumerate() {
            let Some(child) = slot else {
                continue;
            };
            outcomes.push((idx, Self::deliver(&self.watcher, deputy_for, child, sig)));
        }
        if let Some(parent) = binding.parent.take() {
            let _ = self
                .watcher
                .deregister(self.poll.registry(), &parent.handle);
        }
        let label = binding.label();
        let parent_pid = binding.spec.parent.pid;
        for (idx, outcome) in outcomes {
            let Some(slot) = binding.children.get_mut(idx) else {
                continue;
            };
            let Some(pid) = slot.as_ref().map(|c| c.pid) else {
                continue;
            };
            match outcome {
                // A child that has already exited (a zombie, say) needs
                // nothing; its own exit event may be queued behind this one.
                Outcome::Exited => {
                    debug!("{label}: child {pid} had already exited");
                    release(&mut self.watcher, &self.poll, slot);
                }
                Outcome::Sent => {
                    info!("{label}: parent {parent_pid} exited; sent {sig} to child {pid}")
                }
                Outcome::Gone => {
                    info!("{label}: child {pid} already gone, not signalled");
                    release(&mut self.watcher, &self.poll, slot);
                }
                Outcome::Refused(why) => {
                    warn!(
                        "{label}: parent {parent_pid} exited; child {pid} not signalled: {why}, and uid {} may not signal it",
                        deputy_for.unwrap_or(0)
                    );
                    release(&mut self.watcher, &self.poll, slot);
                }
                Outcome::Failed(err) => error!("{label}: cannot send {sig} to child {pid}: {err}"),
            }
        }
        // Group and tree: then the rest of the snapshot.
        if let Some(from) = snapshot {
            self.signal_extras(id, from, sig);
        }
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        let escalates = matches!(binding.spec.grace, Grace::After(_));
        if binding.n_live_children() == 0 && !(escalates && binding.scope.is_some()) {
            self.finish(id);
            return;
        }
        match binding.spec.grace {
            Grace::After(grace) => {
                let deadline = Instant::now() + grace;
                binding.phase = Phase::Signalled {
                    deadline: Some(deadline),
                };
                self.timers.push(Reverse((deadline, id)));
            }
            Grace::Never => {
                info!("{label}: grace is \"never\"; SIGKILL will not follow");
                binding.phase = Phase::Signalled { deadline: None };
            }
        }
    }

    /// Sends SIGKILL to the children of every binding whose grace is over.
    fn run_due_timers(&mut self) {
        let admin = nix::unistd::geteuid().as_raw();
        let now = Instant::now();
        while let Some(Reverse((deadline, id))) = self.timers.peek().copied() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(binding) = self.bindings.get_mut(id) else {
                continue;
            };
            if binding.phase
                != (Phase::Signalled {
                    deadline: Some(deadline),
                })
            {
                continue;
            }
            // Group and tree: everything, including what was forked during
            // the grace period, gets SIGKILL.
            if binding.scope.is_some() {
                info!(
                    "{}: grace {} over; SIGKILL to everything the binding covers",
                    binding.label(),
                    binding.spec.grace
                );
                self.collect(id);
                self.signal_extras(id, 0, Signal::KILL);
            }
            let Some(binding) = self.bindings.get_mut(id) else {
                continue;
            };
            let label = binding.label();
            let grace = binding.spec.grace;
            let deputy_for = binding.deputy_for(admin);
            for slot in binding.children.iter_mut() {
                let Some(child) = slot else {
                    continue;
                };
                // Never SIGKILL a child whose exit is already known: it is
                // dead, and only its parent's reaping is pending.
                match Self::deliver(&self.watcher, deputy_for, child, Signal::KILL) {
                    Outcome::Exited => {}
                    Outcome::Sent => info!(
                        "{label}: grace {grace} over; sent SIGKILL to child {}",
                        child.pid
                    ),
                    Outcome::Gone => {
                        release(&mut self.watcher, &self.poll, slot);
                    }
                    Outcome::Refused(why) => {
                        warn!(
                            "{label}: grace {grace} over; child {} not killed: {why}, and uid {} may not signal it",
                            child.pid,
                            deputy_for.unwrap_or(0)
                        );
                        release(&mut self.watcher, &self.poll, slot);
                    }
                    Outcome::Failed(err) => {
                        error!("{label}: cannot send SIGKILL to child {}: {err}", child.pid)
                    }
                }
            }
            binding.phase = Phase::Killed;
            if binding.n_live_children() == 0 {
                self.finish(id);
            }
        }
    }

    /// Marks a binding done and closes whatever it still holds. A config
    /// binding's record stays, so a reload sees it as unchanged and does
    /// not act on it again; a socket binding is forgotten.
    fn finish(&mut self, id: BindingId) {
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        if matches!(binding.origin, Origin::Socket { .. }) {
            debug!("{}: done", binding.label());
            if let Some(binding) = self.bindings.remove(id) {
                self.close(binding);
            }
            return;
        }
        if let Some(parent) = binding.parent.take() {
            let _ = self
                .watcher
                .deregister(self.poll.registry(), &parent.handle);
        }
        for slot in binding.children.iter_mut() {
            release(&mut self.watcher, &self.poll, slot);
        }
        if let Some(scope) = binding.scope.as_mut() {
            scope.extras = Vec::new();
        }
        debug!("{}: done", binding.label());
        binding.phase = Phase::Done;
        binding.children = Vec::new();
        let charged = std::mem::take(&mut binding.charged);
        let uid = Self::budget_uid(binding.origin);
        self.budget.release(uid, charged);
    }

    /// Drops a binding entirely, cancelling any pending escalation.
    fn remove(&mut self, id: BindingId, why: &str) {
        let Some(binding) = self.bindings.remove(id) else {
            return;
        };
        let label = binding.label();
        let phase = binding.phase;
        self.close(binding);
        match phase {
            Phase::Signalled { deadline: Some(_) } => {
                info!("{label}: removed ({why}); its pending SIGKILL is cancelled")
            }
            _ => info!("{label}: removed ({why})"),
        }
    }

    /// Releases everything a binding removed from the slab holds.
    fn close(&mut self, mut binding: Binding<B::Handle>) {
        if let Some(parent) = binding.parent.take() {
            let _ = self
                .watcher
                .deregister(self.poll.registry(), &parent.handle);
        }
        for slot in binding.children.iter_mut() {
            release(&mut self.watcher, &self.poll, slot);
        }
        let uid = Self::budget_uid(binding.origin);
        self.budget.release(uid, binding.charged);
        if self
            .ids
            .get(&binding.id)
            .is_some_and(|&bid| self.bindings.get(bid).is_none())
        {
            self.ids.remove(&binding.id);
        }
        // A socket binding that is done or removed need not be on disk at
        // once: if the daemon dies first, it is restored and found done
        // again. An unbind, which is acknowledged, asks for durability.
        if matches!(binding.origin, Origin::Socket { .. }) {
            self.state_dirty.mark(Dirty::Lazy);
        }
    }
}

/// What became of one signal a binding meant to send.
enum Outcome {
    /// The process had exited already (a zombie): nothing was sent.
    Exited,
    /// The kernel accepted the signal.
    Sent,
    /// The process was reaped: nothing was signalled.
    Gone,
    /// Not sent: the binding's owner may not signal the process (why).
    Refused(String),
    /// The kernel refused it.
    Failed(io::Error),
}

/// How urgently the state file must be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    /// Nothing changed.
    Clean,
    /// Write it, without fsync.
    Lazy,
    /// Write and fsync it before any answer goes out.
    Durable,
}

impl Dirty {
    fn mark(&mut self, level: Dirty) {
        *self = (*self).max(level);
    }
}

/// A process proven to be the bound one (with the identity proven), or
/// why it is not there.
enum Proven<H> {
    Live(Member<H>, Identity),
    Gone(String),
}

/// Deregisters and closes the member in `slot`, if any.
fn release<B: Backend>(watcher: &mut B, poll: &Poll, slot: &mut Option<Member<B::Handle>>) {
    if let Some(member) = slot.take() {
        let _ = watcher.deregister(poll.registry(), &member.handle);
    }
}

/// Why `identity` is not the pinned process, or `None` if it is.
fn pin_mismatch(
    start: Option<u64>,
    inode: Option<u64>,
    identity: Identity,
    what: &str,
) -> Option<String> {
    if let Some(start) = start {
        if start != identity.start {
            return Some(format!(
                "its start time is {} but {what} says {start}, so it is another process",
                identity.start
            ));
        }
    }
    match (inode, identity.inode) {
        (Some(pinned), Some(actual)) if pinned != actual => Some(format!(
            "its pidfs inode is {actual} but {what} says {pinned}, so it is another process"
        )),
        _ => None,
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| sig.to_string())
}

/// A saved process as a pinned spec.
fn saved_proc(spec: &ProcSpec) -> SavedProc {
    SavedProc {
        pid: spec.pid.get(),
        start: spec.start.unwrap_or_default(),
        inode: spec.inode,
    }
}

/// Rebuilds the spec of a socket binding from the state file.
fn saved_spec(saved: &SavedBinding) -> Result<BindingSpec, String> {
    let proc = |p: &SavedProc| -> Result<ProcSpec, String> {
        Ok(ProcSpec {
            pid: Pid::try_from(i64::from(p.pid))?,
            start: Some(p.start),
            inode: p.inode,
        })
    };
    // A state file written by an older tetherd, or by hand, may hold a
    // name today's rule refuses: the binding is dropped with the reason.
    if let Some(name) = &saved.name {
        config::check_name(name)?;
    }
    Ok(BindingSpec {
        name: saved.name.clone(),
        parent: proc(&saved.parent)?,
        children: saved.children.iter().map(proc).collect::<Result<_, _>>()?,
        signal: parse_signal(&saved.signal)?,
        grace: parse_duration(&saved.grace)?,
        kill: parse_kill(&saved.kill)?,
    })
}

/// Refuses a configured process proven live that is tetherd itself, or
/// with `kthreads` (children, which are signalled; a parent is only
/// watched, and the check costs a read of `/proc`) a kernel thread.
fn refuse_special<H>(
    proven: Result<Proven<H>, String>,
    origin: Origin,
    kthreads: bool,
) -> Result<Proven<H>, String> {
    if let (Ok(Proven::Live(member, identity)), Origin::Config) = (&proven, origin) {
        special_process(member.pid, kthreads.then_some(identity.start))
            .map_err(|what| format!("pid {} {what}; refusing it", member.pid))?;
    }
    proven
}

/// Why a configured process (a pid, or a pidfile's) must never be bound:
/// tetherd itself, or, if its start time is given, a kernel thread
/// (kthreadd, pid 2 of the initial namespace, and its workers). Pid 1 is
/// no `Pid`.
fn special_process(pid: Pid, start: Option<u64>) -> Result<(), String> {
    if u32::try_from(pid.get()).is_ok_and(|pid| pid == std::process::id()) {
        return Err("is tetherd itself".into());
    }
    let Some(start) = start else {
        return Ok(());
    };
    match watch::is_kernel_thread(pid.get(), start) {
        Ok(Some(false)) => Ok(()),
        Ok(Some(true)) => Err("is a kernel thread".into()),
        Ok(None) => Err("exited while it was checked".into()),
        Err(err) => Err(format!(
            "cannot be checked for being a kernel thread ({err})"
        )),
    }
}
