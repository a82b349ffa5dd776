//! The daemon: one mio event loop that owns every binding.
//!
//! Everything the loop reacts to arrives as a token: a binding member's
//! exit (from the watch backend), or a signal to the daemon itself
//! (SIGHUP, SIGTERM, SIGINT through signal-hook-mio). Grace periods are not
//! timers of their own: the earliest pending deadline is the poll timeout,
//! so a daemon with nothing pending sleeps in the kernel without waking.
//!
//! One binding's failure (a process that cannot be opened, a signal the
//! kernel refuses) is logged with the binding's label and never stops the
//! loop; only a failure of the loop itself (`epoll_wait`) ends `run`.

mod bindings;
mod state;

pub use bindings::{BindingId, Phase};
pub use state::{write_atomically, StateFile};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{self, BindingSpec, Config, ConfigErrors, Grace, Pid, ProcSpec, Signal, Trust};
use crate::watch::{Backend, Delivery, Identity, OpenError, Watcher};
use bindings::{Binding, Bindings, Member, MemberRef, MAX_CHILDREN, RESERVED_TOKENS};
use state::{Pin, Pins};

/// The token of the daemon's own signals.
const SIGNAL_TOKEN: Token = Token(RESERVED_TOKENS);

/// Descriptors kept aside for the daemon's own use (logs, state file,
/// epoll, the signal pipe, later the control socket) when estimating how
/// many bindings the descriptor limit allows.
const RESERVED_FDS: u64 = 64;

type Handle = <Watcher as Backend>::Handle;

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

impl ConfigSource {
    /// Loads and validates the file.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        if !self.required && !self.path.exists() {
            return Ok(Config::default());
        }
        config::load(&self.path, self.trust)
    }
}

/// What the daemon needs besides its configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file, re-read on SIGHUP.
    pub config: ConfigSource,
    /// The state file (`--state`); `None` takes `[daemon] state` or the
    /// built-in default.
    pub state_path: Option<PathBuf>,
    /// Whether `RUST_LOG` set the log filter (then `[daemon] log` is
    /// ignored, also on reload).
    pub log_from_env: bool,
}

/// The built-in state file for the user running the daemon.
pub fn default_state_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/tether/state.json");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("tether/state.json")
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT.
    Signal(i32),
}

/// The running daemon.
pub struct Daemon {
    poll: Poll,
    events: Events,
    watcher: Watcher,
    signals: Signals,
    bindings: Bindings<Handle>,
    /// Configured bindings by what they say, to diff a reloaded config.
    by_spec: HashMap<Rc<BindingSpec>, BindingId>,
    /// Escalation deadlines, earliest first.
    timers: BinaryHeap<Reverse<(Instant, BindingId)>>,
    pins: Pins,
    state: StateFile,
    options: Options,
    fd_limit: u64,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("backend", &self.watcher)
            .field("n_bindings", &self.bindings.len())
            .field("n_timers", &self.timers.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Sets up the loop, the watch backend and the signal source, reads the
    /// state file and arms every binding of `config`.
    pub fn new(options: Options, config: Config) -> io::Result<Daemon> {
        let fd_limit = crate::sys::raise_nofile_limit()?;
        let watcher = Watcher::new().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("the pidfd backend is not available ({err}); tetherd needs Linux 5.3 or later, and pidfd_open allowed by seccomp"),
            )
        })?;
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
        poll.registry().register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        let state_path = options
            .state_path
            .clone()
            .or_else(|| config.daemon.state.clone())
            .unwrap_or_else(default_state_path);
        let boot_id = watcher.boot_id()?;
        let state = StateFile::new(state_path, boot_id);
        let (pins, warning) = state.load();
        if let Some(warning) = warning {
            warn!("{warning}");
        }
        let mut daemon = Daemon {
            poll,
            events: Events::with_capacity(1024),
            watcher,
            signals,
            bindings: Bindings::default(),
            by_spec: HashMap::new(),
            timers: BinaryHeap::new(),
            pins,
            state,
            options,
            fd_limit,
        };
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
            "tetherd {} ready: {} bindings ({} watched), backend {}, descriptor limit {} (about {} bindings of one child), state {}",
            env!("CARGO_PKG_VERSION"),
            self.bindings.len(),
            self.n_armed(),
            self.watcher.name(),
            self.fd_limit,
            self.fd_limit.saturating_sub(RESERVED_FDS) / fds_per_binding,
            self.state.path().display(),
        );
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
            for &token in &tokens {
                if token == SIGNAL_TOKEN {
                    if let Some(stop) = self.handle_signals() {
                        self.save_state();
                        info!("stopping on {}; {} bindings left unwatched, children untouched", signal_name(stop), self.bindings.len());
                        return Ok(Stop::Signal(stop));
                    }
                } else {
                    self.member_event(token);
                }
            }
            self.run_due_timers();
            self.save_state();
        }
    }

    fn n_armed(&self) -> usize {
        self.bindings
            .iter()
            .filter(|(_, b)| b.phase == Phase::Armed)
            .count()
    }

    /// The poll timeout: until the earliest deadline, or forever.
    fn next_timeout(&self) -> Option<Duration> {
        let Reverse((deadline, _)) = self.timers.peek()?;
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
            self.reload();
        }
        None
    }

    /// Re-reads the configuration and applies the difference. An invalid
    /// file changes nothing.
    pub fn reload(&mut self) {
        info!("SIGHUP: reloading {}", self.options.config.path.display());
        match self.options.config.load() {
            Ok(config) => self.apply(config),
            Err(errors) => {
                error!(
                    "reload refused: {} error(s) in {}; the running configuration stays in force",
                    errors.0.len(),
                    self.options.config.path.display()
                );
                for err in &errors.0 {
                    error!("{err}");
                }
            }
        }
    }

    /// Makes the configured bindings those of `config`: adds new ones,
    /// drops removed ones, leaves unchanged ones (and their timers) alone.
    fn apply(&mut self, config: Config) {
        if !self.options.log_from_env {
            log::set_max_level(config.daemon.log);
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
        let wanted: HashSet<&BindingSpec> = config.bindings.iter().collect();
        let stale: Vec<(Rc<BindingSpec>, BindingId)> = self
            .by_spec
            .iter()
            .filter(|(spec, _)| !wanted.contains(spec.as_ref()))
            .map(|(spec, id)| (Rc::clone(spec), *id))
            .collect();
        let n_removed = stale.len();
        for (spec, id) in stale {
            self.by_spec.remove(&spec);
            self.remove(id, "no longer in the configuration");
        }
        let (mut n_added, mut n_unchanged, mut n_failed) = (0, 0, 0);
        for spec in config.bindings {
            if self.by_spec.contains_key(&spec) {
                n_unchanged += 1;
                continue;
            }
            let spec = Rc::new(spec);
            match self.add(Rc::clone(&spec)) {
                Some(id) => {
                    self.by_spec.insert(spec, id);
                    n_added += 1;
                }
                None => n_failed += 1,
            }
        }
        // Pins of pids no configured binding names any more are forgotten:
        // if the administrator names the pid again, it is a new process.
        let named: HashSet<Pid> = self
            .by_spec
            .keys()
            .flat_map(|spec| std::iter::once(spec.parent.pid).chain(spec.children.iter().map(|c| c.pid)))
            .collect();
        self.pins.retain(|pid| named.contains(&pid));
        self.save_state();
        crate::sys::release_free_memory();
        info!(
            "configuration applied: {n_added} added, {n_removed} removed, {n_unchanged} unchanged, {n_failed} failed; {} bindings held",
            self.bindings.len()
        );
    }

    fn save_state(&mut self) {
        if !self.pins.is_dirty() {
            return;
        }
        if let Err(err) = self.state.save(&mut self.pins) {
            error!(
                "cannot write the state file {}: {err}; pins stay in memory and the write is retried",
                self.state.path().display()
            );
        }
    }

    /// Opens, proves and registers every process of `spec`, and acts at
    /// once when the parent is already gone. Returns `None` (after logging
    /// why) when the binding cannot be held at all.
    fn add(&mut self, spec: Rc<BindingSpec>) -> Option<BindingId> {
        let label = format!("binding {}", spec.label());
        if spec.children.len() > MAX_CHILDREN {
            error!("{label}: {} children is more than the {MAX_CHILDREN} a binding may have", spec.children.len());
            return None;
        }
        let parent = match self.open_member(&spec.parent) {
            Ok(Proven::Live(member)) => Some(member),
            Ok(Proven::Gone(why)) => {
                info!("{label}: parent {} is gone at load ({why}); acting at once", spec.parent.pid);
                None
            }
            Err(why) => {
                error!("{label}: cannot watch parent {}: {why}; binding not held", spec.parent.pid);
                return None;
            }
        };
        let mut children = Vec::with_capacity(spec.children.len());
        for child in &spec.children {
            match self.open_member(child) {
                Ok(Proven::Live(member)) => children.push(Some(member)),
                Ok(Proven::Gone(why)) => {
                    warn!("{label}: child {} dropped, it will never be signalled: {why}", child.pid);
                    children.push(None);
                }
                Err(why) => {
                    error!("{label}: cannot hold child {}: {why}; binding not held", child.pid);
                    return None;
                }
            }
        }
        let binding = Binding {
            spec,
            parent,
            children,
            phase: Phase::Armed,
        };
        let Some(id) = self.bindings.insert(binding) else {
            error!("{label}: the daemon holds as many bindings as it can address; binding not held");
            return None;
        };
        if let Err(err) = self.register_members(id) {
            error!("{label}: cannot register with the event loop: {err}; binding not held");
            self.remove(id, "registration failed");
            return None;
        }
        let binding = self.bindings.get_mut(id)?;
        if binding.n_live_children() == 0 {
            info!("{label}: no bound child is running; nothing to do");
            self.finish(id);
        } else if binding.parent.is_none() {
            self.fire(id);
        } else {
            debug!("{label}: watching parent {} for {} children", binding.spec.parent.pid, binding.n_live_children());
        }
        Some(id)
    }

    fn register_members(&mut self, id: BindingId) -> io::Result<()> {
        let Some(binding) = self.bindings.get(id) else {
            return Ok(());
        };
        let registry = self.poll.registry();
        if let Some(parent) = &binding.parent {
            self.watcher.register(registry, &parent.handle, id.token(0))?;
        }
        for (idx, child) in binding.children.iter().enumerate() {
            if let Some(child) = child {
                self.watcher.register(registry, &child.handle, id.token(idx + 1))?;
            }
        }
        Ok(())
    }

    /// Opens the process of `spec` and proves it is the bound one: its
    /// identity, read after the handle was opened, must match the pin of the
    /// config, or the pin recorded when the daemon first saw the pid. A pid
    /// seen for the first time is pinned now.
    fn open_member(&mut self, spec: &ProcSpec) -> Result<Proven, String> {
        let (handle, identity) = match self.watcher.open(spec.pid) {
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
        let mismatch = if spec.start.is_some() || spec.inode.is_some() {
            pin_mismatch(spec.start, spec.inode, identity, "the configured pin")
        } else {
            match self.pins.get(spec.pid) {
                Some(Pin::ThisBoot(pin)) => pin_mismatch(Some(pin.start), pin.inode, identity, "the pin recorded when tetherd first saw it"),
                Some(Pin::EarlierBoot { boot_id, .. }) => Some(format!(
                    "pid {} was pinned in an earlier boot ({boot_id}), so the process now at that pid is another one",
                    spec.pid
                )),
                None => {
                    debug!("pid {} pinned at first sight ({identity})", spec.pid);
                    self.pins.record(spec.pid, identity);
                    None
                }
            }
        };
        match mismatch {
            Some(why) => Ok(Proven::Gone(why)),
            None => Ok(Proven::Live(Member {
                pid: spec.pid,
                handle,
            })),
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
        let label = binding.label();
        match member {
            MemberRef::Parent => {
                let Some(parent) = &binding.parent else {
                    return;
                };
                if !self.watcher.has_exited(&parent.handle) {
                    debug!("{label}: spurious wakeup for parent {}", parent.pid);
                    return;
                }
                info!("{label}: parent {} exited", parent.pid);
                self.fire(id);
            }
            MemberRef::Child(idx) => {
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
                match binding.phase {
                    Phase::Armed => debug!("{label}: child {pid} exited before the parent ({remaining} left)"),
                    Phase::Signalled { .. } | Phase::Killed => info!("{label}: child {pid} exited"),
                    Phase::Done => {}
                }
                if remaining == 0 {
                    self.finish(id);
                }
            }
        }
    }

    /// The parent is gone: signal every child still running and arm the
    /// escalation deadline.
    fn fire(&mut self, id: BindingId) {
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        if let Some(parent) = binding.parent.take() {
            let _ = self.watcher.deregister(self.poll.registry(), &parent.handle);
        }
        let label = binding.label();
        let parent_pid = binding.spec.parent.pid;
        let sig = binding.spec.signal;
        for slot in binding.children.iter_mut() {
            let Some(child) = slot else {
                continue;
            };
            // A child that has already exited (a zombie, say) needs nothing;
            // its own exit event may or may not be queued behind this one.
            if self.watcher.has_exited(&child.handle) {
                debug!("{label}: child {} had already exited", child.pid);
                release(&mut self.watcher, &self.poll, slot);
                continue;
            }
            match self.watcher.signal(&child.handle, sig) {
                Ok(Delivery::Sent) => info!("{label}: parent {parent_pid} exited; sent {sig} to child {}", child.pid),
                Ok(Delivery::Gone) => {
                    info!("{label}: child {} already gone, not signalled", child.pid);
                    release(&mut self.watcher, &self.poll, slot);
                }
                Err(err) => error!("{label}: cannot send {sig} to child {}: {err}", child.pid),
            }
        }
        if binding.n_live_children() == 0 {
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
        let now = Instant::now();
        while let Some(Reverse((deadline, id))) = self.timers.peek().copied() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(binding) = self.bindings.get_mut(id) else {
                continue;
            };
            if binding.phase != (Phase::Signalled { deadline: Some(deadline) }) {
                continue;
            }
            let label = binding.label();
            let grace = binding.spec.grace;
            for slot in binding.children.iter_mut() {
                let Some(child) = slot else {
                    continue;
                };
                // Never SIGKILL a child whose exit is already known: it is
                // dead, and only its parent's reaping is pending.
                if self.watcher.has_exited(&child.handle) {
                    continue;
                }
                match self.watcher.signal(&child.handle, Signal::KILL) {
                    Ok(Delivery::Sent) => info!("{label}: grace {grace} over; sent SIGKILL to child {}", child.pid),
                    Ok(Delivery::Gone) => {
                        release(&mut self.watcher, &self.poll, slot);
                    }
                    Err(err) => error!("{label}: cannot send SIGKILL to child {}: {err}", child.pid),
                }
            }
            binding.phase = Phase::Killed;
            if binding.n_live_children() == 0 {
                self.finish(id);
            }
        }
    }

    /// Marks a binding done and closes whatever it still holds. The record
    /// stays, so a reload sees it as unchanged and does not act on it again.
    fn finish(&mut self, id: BindingId) {
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        if let Some(parent) = binding.parent.take() {
            let _ = self.watcher.deregister(self.poll.registry(), &parent.handle);
        }
        for slot in binding.children.iter_mut() {
            release(&mut self.watcher, &self.poll, slot);
        }
        debug!("{}: done", binding.label());
        binding.phase = Phase::Done;
        binding.children = Vec::new();
    }

    /// Drops a binding entirely, cancelling any pending escalation.
    fn remove(&mut self, id: BindingId, why: &str) {
        let Some(mut binding) = self.bindings.remove(id) else {
            return;
        };
        if let Some(parent) = binding.parent.take() {
            let _ = self.watcher.deregister(self.poll.registry(), &parent.handle);
        }
        for slot in binding.children.iter_mut() {
            release(&mut self.watcher, &self.poll, slot);
        }
        match binding.phase {
            Phase::Signalled { deadline: Some(_) } => {
                info!("{}: removed ({why}); its pending SIGKILL is cancelled", binding.label())
            }
            _ => info!("{}: removed ({why})", binding.label()),
        }
    }
}

/// A process proven to be the bound one, or why it is not there.
enum Proven {
    Live(Member<Handle>),
    Gone(String),
}

/// Deregisters and closes the member in `slot`, if any.
fn release(watcher: &mut Watcher, poll: &Poll, slot: &mut Option<Member<Handle>>) {
    if let Some(member) = slot.take() {
        let _ = watcher.deregister(poll.registry(), &member.handle);
    }
}

/// Why `identity` is not the pinned process, or `None` if it is.
fn pin_mismatch(start: Option<u64>, inode: Option<u64>, identity: Identity, what: &str) -> Option<String> {
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
