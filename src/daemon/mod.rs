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

mod acting;
mod arming;
mod bindings;
mod budget;
mod cgroup;
mod closer;
mod control;
mod events;
mod journal;
mod metrics;
mod persist;
pub mod pidfile;
mod pins;
mod reload;
mod requests;
mod rules;
mod scope;
mod serve;
mod state;

pub use state::StateFile;

use bindings::{BindingId, Origin, Phase};
use control::IDLE_TIMEOUT;

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
use crate::protocol::{LoadProgress, ReloadInfo};
use crate::watch::{self, Backend, Delivery, Identity, OpenError, ProcEntry};
use bindings::{Binding, Bindings, Member, MemberRef, Scope, MAX_CHILDREN, RESERVED_TOKENS};
// What one room offers the others (see each module's documentation).
use acting::Outcome;
use arming::{special_process, Proven};
use control::{Conn, ControlSocket};
use persist::Dirty;
use pins::{EntryKey, Pin};
use reload::{Load, LoadKind, QueuedReload, Reading, READING_TICK};
use state::{SavedBinding, SavedProc};

/// The token of the daemon's own signals.
const SIGNAL_TOKEN: Token = Token(RESERVED_TOKENS);
/// The token of the control socket's listener.
const LISTENER_TOKEN: Token = Token(RESERVED_TOKENS + 1);
/// The token of the watch backend's own event source, if it has one.
const BACKEND_TOKEN: Token = Token(RESERVED_TOKENS + 2);
/// The token the closer wakes the loop with (see `closer`).
const WAKER_TOKEN: Token = Token(RESERVED_TOKENS + 3);
/// The token of the inotify descriptor on the cgroups' `cgroup.events`.
const CGROUP_TOKEN: Token = Token(RESERVED_TOKENS + 4);
/// The token of the rules' exec source (see `rules`).
const RULES_TOKEN: Token = Token(RESERVED_TOKENS + 5);
/// Connection `i` has token `CONN_TOKENS + i`.
const CONN_TOKENS: usize = RESERVED_TOKENS + 6;

/// Everything the loop reacts to, from the token that announced it. The
/// set is closed: a new source of events is a new variant, handled in
/// `Daemon::run`'s one `match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// SIGHUP, SIGTERM or SIGINT arrived.
    Signal,
    /// A client is connecting.
    Listener,
    /// The watch backend's own source is ready (its exits were collected
    /// into member tokens already).
    Backend,
    /// The closer drained a lane the loop waits on.
    Closer,
    /// A cgroup's `cgroup.events` changed (`kill = "cgroup"`).
    Cgroup,
    /// Connection `i` is readable or writable, or has input left.
    Conn(usize),
    /// A binding member (its token) exited.
    Member(Token),
    /// The rules' exec source has execs to handle (and answer).
    Rules,
}

impl Event {
    fn of(token: Token) -> Event {
        match token {
            SIGNAL_TOKEN => Event::Signal,
            LISTENER_TOKEN => Event::Listener,
            BACKEND_TOKEN => Event::Backend,
            WAKER_TOKEN => Event::Closer,
            RULES_TOKEN => Event::Rules,
            CGROUP_TOKEN => Event::Cgroup,
            Token(n) if n >= CONN_TOKENS => Event::Conn(n - CONN_TOKENS),
            token => Event::Member(token),
        }
    }
}

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
                return config::parse(&snapshot.text, &self.path, watch::available())
                    .and_then(|config| rules::check_files(config, &self.path));
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

/// Why [`run`] failed.
#[derive(Debug)]
pub enum Failure {
    /// The daemon could not start: no usable backend, the socket in use,
    /// no descriptors.
    Start(io::Error),
    /// The event loop itself failed (`epoll_wait`).
    Loop(io::Error),
}

/// Chooses the watch backend (`--backend`, else `[daemon] backend`; with
/// `auto` the best one this host allows), sets up the daemon on it and
/// runs it until SIGTERM or SIGINT.
pub fn run(options: Options, config: Config) -> Result<(), Failure> {
    let settings = watch::Settings {
        kind: options.backend.unwrap_or(config.daemon.backend),
        poll_interval: options.poll_interval.unwrap_or(config.daemon.poll_interval),
    };
    struct Runner {
        options: Options,
        config: Config,
    }
    impl watch::Visitor for Runner {
        type Output = Result<(), Failure>;
        fn visit<B: Backend + 'static>(self, backend: B) -> Self::Output {
            Daemon::new(backend, self.options, self.config)
                .map_err(Failure::Start)?
                .run()
                .map_err(Failure::Loop)
        }
    }
    watch::with_backend(&settings, Runner { options, config }).map_err(Failure::Start)?
}

/// The running daemon.
pub struct Daemon<B: Backend> {
    poll: Poll,
    events: Events,
    watcher: B,
    signals: Signals,
    bindings: Bindings<B::Handle>,
    /// Socket bindings by the number users see (`Binding::number`).
    /// (Config bindings have numbers too, but are not unbound by number; a
    /// map for them would cost memory on every binding for nothing.)
    by_number: HashMap<u64, BindingId>,
    /// The number the next binding gets (`Daemon::new_number`).
    next_number: u64,
    /// Escalation deadlines, earliest first.
    timers: BinaryHeap<Reverse<(Instant, BindingId)>>,
    /// Signals to send again (binding, child index, whether SIGKILL rather
    /// than the binding's signal) because the child's identity could not
    /// be read, earliest first.
    retries: BinaryHeap<Reverse<(Instant, BindingId, usize, bool)>>,
    pins: pins::Pins,
    /// The configuration entry of each binding made from a pidfile entry
    /// (the entry of any other configured binding is its spec's).
    pidfile_entries: HashMap<BindingId, EntryKey>,
    state: StateFile,
    /// Whether socket bindings changed since the state file was written,
    /// and whether the change must be on disk before anyone is told.
    state_dirty: persist::Changes,
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
    replies: Vec<serve::Reply>,
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
    /// Where `kill = "cgroup"` bindings get their cgroups.
    cgroups: cgroup::Cgroups,
    /// `[daemon] backend` and `poll_interval` as last loaded, to warn
    /// when a reload changes what only a restart applies.
    watch_settings: (config::BackendKind, Duration),
    /// `[[rule]]`s and their exec source.
    rules: rules::Rules,
    /// The event stream and the metrics it feeds.
    feed: events::Feed,
    /// The configuration being applied, a slice per iteration (`reload`).
    load: Option<Box<Load>>,
    /// A reload asked for while `load` runs, applied after it.
    queued: Option<Box<QueuedReload>>,
    /// The configuration file being read for a reload.
    reading: Option<Box<Reading>>,
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
        let mut state = StateFile::new(state_path, boot_id);
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
        let capacity = budget::capacity(fd_limit, watcher.holds_descriptors());
        let budget = budget::Budget::new(capacity, config.daemon.max_bindings_per_uid);
        let cgroups = cgroup::Cgroups::start(
            config.daemon.cgroup_root.as_deref(),
            config.daemon.user_cgroups,
            poll.registry(),
            CGROUP_TOKEN,
        );
        let mut daemon = Daemon {
            poll,
            events: Events::with_capacity(1024),
            watcher,
            signals,
            bindings: Bindings::default(),
            by_number: HashMap::new(),
            next_number: loaded.next_id.max(1),
            timers: BinaryHeap::new(),
            retries: BinaryHeap::new(),
            pins: loaded.pins,
            pidfile_entries: HashMap::new(),
            state,
            state_dirty: persist::Changes::default(),
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
            cgroups,
            watch_settings: (config.daemon.backend, config.daemon.poll_interval),
            rules: rules::Rules::default(),
            feed: events::Feed::new(),
            load: None,
            queued: None,
            reading: None,
        };
        daemon.restore(loaded.bindings);
        // The stray cgroups are swept once this load is applied (`reload`).
        daemon.begin_load(config, LoadKind::Start, Vec::new());
        Ok(daemon)
    }

    /// Runs until SIGTERM or SIGINT. Children are left alone on the way
    /// out. The socket is served from the start; the configuration is
    /// applied in slices meanwhile, and readiness announced once it is.
    pub fn run(&mut self) -> io::Result<()> {
        if let Some(load) = self.load_progress() {
            info!(
                "tetherd {} serving {}; applying {} configured entries before it is ready",
                env!("CARGO_PKG_VERSION"),
                self.control.path().display(),
                load.total
            );
        }
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
            self.woke();
            tokens.clear();
            tokens.extend(self.events.iter().map(|event| event.token()));
            tokens.extend(self.backlog.drain(..).map(|idx| Token(CONN_TOKENS + idx)));
            if self.rules.has_more() && !tokens.contains(&RULES_TOKEN) {
                tokens.push(RULES_TOKEN);
            }
            if self.watcher.has_pending() || tokens.contains(&BACKEND_TOKEN) {
                self.watcher.collect(&mut tokens);
            }
            for &token in &tokens {
                match Event::of(token) {
                    Event::Backend => {}
                    Event::Signal => {
                        if let Some(stop) = self.handle_signals() {
                            // A load still running stops where it is;
                            // its waiting clients see the socket close.
                            self.load = None;
                            self.queued = None;
                            self.reading = None;
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
                            return Ok(());
                        }
                    }
                    Event::Listener => self.accept(),
                    Event::Closer => self.closer_event(),
                    Event::Cgroup => self.cgroup_event(),
                    Event::Conn(idx) => self.conn_event(idx),
                    Event::Member(token) => self.member_event(token),
                    Event::Rules => self.rules_event(),
                }
            }
            self.reading_done();
            self.load_slice();
            self.run_due_retries();
            self.run_due_timers();
            self.expire_idle_conns();
            self.commit();
            self.pump_events();
            self.write_metrics_if_due();
        }
    }

    /// The initial configuration is applied: tell the log and whoever
    /// waits for readiness.
    fn announce_ready(&mut self) {
        // Two processes a binding of one child: its parent and the child.
        let per_binding = 2;
        let room = if self.watcher.holds_descriptors() {
            self.fd_limit.saturating_sub(RESERVED_FDS)
        } else {
            budget::capacity(self.fd_limit, false)
        };
        info!(
            "tetherd {} ready: {} bindings ({} watched), backend {}, descriptor limit {} (about {} bindings of one child), state {}, socket {}",
            env!("CARGO_PKG_VERSION"),
            self.bindings.len(),
            self.n_armed(),
            self.watcher.name(),
            self.fd_limit,
            room / per_binding,
            self.state.path().display(),
            self.control.path().display(),
        );
        let status = self.status_line();
        self.options.notifier.ready(&status);
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
    /// connection's idle timeout), zero while input is left unread or a
    /// load runs, or forever when nothing is pending.
    fn next_timeout(&mut self) -> Option<Duration> {
        if !self.backlog.is_empty()
            || self.watcher.has_pending()
            || self.rules.has_more()
            || self.load.is_some()
        {
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
        let retry = self.retries.peek().map(|Reverse((at, ..))| *at);
        let escalation = match (escalation, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A change to the metrics file waits at most a second for its
        // write; nothing is pending while idle.
        let escalation = match (escalation, self.feed.metrics.file_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let idle = self
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.streaming)
            .map(|c| c.last_active + IDLE_TIMEOUT)
            .min();
        // A file being read for a reload is looked for now and then.
        let reading = self.reading.as_ref().map(|_| Instant::now() + READING_TICK);
        let deadline = [escalation, idle, reading].into_iter().flatten().min()?;
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
            self.reload();
        }
        None
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| sig.to_string())
}
