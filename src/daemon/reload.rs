//! Reload: the configuration read again, and only the difference applied.
//!
//! Unchanged bindings keep their watches and timers; pidfile bindings are
//! resolved here (see `pidfile`); a binding with a pending SIGKILL is never
//! dropped by a reload.
//!
//! A configuration is applied in slices, at start as on reload: each loop
//! iteration applies entries for at most [`SLICE`] (in the file's order,
//! removals first), then serves the socket and the watchers, so a load of
//! any size never keeps them waiting longer than that. A reload is
//! answered once its whole load is applied. The file itself is read and
//! checked on a thread (`Reading`), the loop serving meanwhile; a broken
//! file is refused and changes nothing. A reload asked for while a file is
//! read has it read again after; one whose file is read while a load runs
//! waits for that load (`QueuedReload`), and reloads that wait are merged
//! into one (the last file read), every one of them answered.

use std::sync::mpsc;

use super::*;

/// The longest one slice of a load keeps the loop (the entry being
/// applied when it runs out is finished first).
pub(super) const SLICE: Duration = Duration::from_millis(5);

/// Why a configuration is being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoadKind {
    /// The one read at start: readiness is announced when it is applied.
    Start,
    /// A reload (SIGHUP or `tetherctl reload`).
    Reload,
}

/// Where a load is: its entries, then its end, one step per loop
/// iteration (each step of the end is one piece of work that cannot be
/// cut, so they are not added up in one iteration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Removing and adding bindings, a slice at a time.
    Entries,
    /// The pins follow their entries.
    Pins,
    /// The pins and state files are written.
    Write,
    /// Memory given back, the clients answered, readiness announced.
    End,
}

/// A configuration being applied, a slice per loop iteration.
#[derive(Debug)]
pub(super) struct Load {
    kind: LoadKind,
    stage: Stage,
    /// Loop time of the end's steps (pins, write), and of the longest
    /// turn, for the log.
    end_steps: [Duration; 2],
    longest: Duration,
    /// Configured bindings that left the configuration, to remove first.
    stale: std::vec::IntoIter<BindingId>,
    /// The configuration's entries in its order, each with the key of its
    /// pidfile entry, if it came from one.
    wanted: std::vec::IntoIter<(BindingSpec, Option<EntryKey>)>,
    /// Configured bindings by what they say, kept up to date as entries
    /// are applied (built for the diff, dropped at the end).
    by_spec: HashMap<Rc<BindingSpec>, BindingId>,
    /// The entries held, and the pids each names, gathered as entries are
    /// applied, for the pins to follow at the end.
    live: HashSet<EntryKey>,
    named: HashSet<(EntryKey, Pid)>,
    n_added: usize,
    n_removed: usize,
    n_unchanged: usize,
    n_failed: usize,
    /// Removals and entries in all, and how many are done.
    total: usize,
    done: usize,
    began: Instant,
    /// Loop time spent applying it, and in how many slices.
    busy: Duration,
    n_slices: usize,
    /// Connections waiting for its answer (`tetherctl reload`).
    waiters: Vec<usize>,
}

/// A reload asked for while a load runs: its file, read and checked, is
/// applied when that load is done.
#[derive(Debug)]
pub(super) struct QueuedReload {
    config: Config,
    waiters: Vec<usize>,
}

/// A configuration file being read and checked on a thread of its own
/// (a large file takes a while, and a file still being written is waited
/// for), so that the loop goes on serving meanwhile.
#[derive(Debug)]
pub(super) struct Reading {
    result: mpsc::Receiver<Result<Config, ConfigErrors>>,
    /// Connections waiting for the answer of this read.
    waiters: Vec<usize>,
    /// Reloads asked for during this read (the file may have changed
    /// since it began): read again when it is done, for these.
    again: Option<Vec<usize>>,
}

/// How often the loop looks for the end of a read (only while one runs).
pub(super) const READING_TICK: Duration = Duration::from_millis(2);

impl<B: Backend> Daemon<B> {
    /// Asks for the configuration to be read again and the difference
    /// applied: the file is read on a thread, then its load begins, or
    /// waits for the load that runs (see [`Daemon::reading_done`]).
    pub(super) fn reload(&mut self) {
        info!("reloading {}", self.options.config.path.display());
        self.options.notifier.reloading();
        match &mut self.reading {
            Some(reading) => {
                reading.again.get_or_insert_with(Vec::new);
            }
            None => self.start_reading(Vec::new()),
        }
    }

    /// Starts reading the configuration for `waiters`.
    fn start_reading(&mut self, waiters: Vec<usize>) {
        let n_held = self
            .bindings
            .iter()
            .filter(|(_, b)| b.origin == Origin::Config)
            .count();
        let source = self.options.config.clone();
        let (send, result) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("config".into())
            .spawn(move || {
                // The loop may have stopped meanwhile: nothing to tell.
                let _ = send.send(source.load_replacing(n_held));
            });
        let result = match spawned {
            Ok(_) => result,
            Err(err) => {
                warn!("cannot start a thread to read the configuration ({err}); reading it in the loop");
                let (send, result) = mpsc::channel();
                let _ = send.send(self.options.config.load_replacing(n_held));
                result
            }
        };
        self.reading = Some(Box::new(Reading {
            result,
            waiters,
            again: None,
        }));
    }

    /// Takes the configuration read, if the read is done: begins its load,
    /// or queues it behind the one that runs; a broken file is refused
    /// (logged, and its waiters answered) and changes nothing.
    pub(super) fn reading_done(&mut self) {
        let Some(reading) = &self.reading else {
            return;
        };
        let result = match reading.result.try_recv() {
            Ok(result) => result,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err(ConfigErrors::whole_file(
                &self.options.config.path,
                "the thread reading it stopped".to_string(),
            )),
        };
        let Some(reading) = self.reading.take() else {
            return;
        };
        let Reading { waiters, again, .. } = *reading;
        match result {
            Ok(config) => {
                self.warn_if_restart_needed(&config);
                if self.load.is_some() {
                    info!("a load is being applied; the configuration just read is applied when it is done");
                    let mut all = self.queued.take().map(|q| q.waiters).unwrap_or_default();
                    all.extend(waiters);
                    self.queued = Some(Box::new(QueuedReload {
                        config,
                        waiters: all,
                    }));
                } else {
                    self.begin_load(config, LoadKind::Reload, waiters);
                }
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
                let (response, code, why) = super::requests::invalid_config(&errors);
                for idx in waiters {
                    let peer = self
                        .conns
                        .get(idx)
                        .and_then(Option::as_ref)
                        .map(|conn| conn.peer);
                    if let Some(peer) = peer {
                        self.refused(&peer, "reload", code, &why);
                    }
                    self.answer_later(idx, &response);
                }
            }
        }
        match again {
            Some(waiters) => self.start_reading(waiters),
            None => self.ready_if_settled(),
        }
    }

    /// Tells the service manager the daemon is ready again once no reload
    /// is being read, queued or applied.
    fn ready_if_settled(&mut self) {
        if self.reading.is_none() && self.queued.is_none() && self.load.is_none() {
            let status = self.status_line();
            self.options.notifier.ready(&status);
        }
    }

    /// The connections waiting for the answer of the last reload asked
    /// for.
    pub(super) fn load_waiters(&mut self) -> Option<&mut Vec<usize>> {
        if let Some(reading) = &mut self.reading {
            return Some(match &mut reading.again {
                Some(again) => again,
                None => &mut reading.waiters,
            });
        }
        match (&mut self.queued, &mut self.load) {
            (Some(queued), _) => Some(&mut queued.waiters),
            (None, Some(load)) => Some(&mut load.waiters),
            (None, None) => None,
        }
    }

    /// Whether connection `idx` waits for a reload's answer (it is read no
    /// further until then, so its answers stay in order).
    pub(super) fn awaits_load(&self, idx: usize) -> bool {
        self.load.as_ref().is_some_and(|l| l.waiters.contains(&idx))
            || self
                .queued
                .as_ref()
                .is_some_and(|q| q.waiters.contains(&idx))
            || self.reading.as_ref().is_some_and(|r| {
                r.waiters.contains(&idx) || r.again.as_ref().is_some_and(|a| a.contains(&idx))
            })
    }

    /// Forgets connection `idx` as a waiter (it closed).
    pub(super) fn forget_waiter(&mut self, idx: usize) {
        if let Some(reading) = &mut self.reading {
            reading.waiters.retain(|&w| w != idx);
            if let Some(again) = &mut reading.again {
                again.retain(|&w| w != idx);
            }
        }
        if let Some(load) = &mut self.load {
            load.waiters.retain(|&w| w != idx);
        }
        if let Some(queued) = &mut self.queued {
            queued.waiters.retain(|&w| w != idx);
        }
    }

    /// What `tetherctl status` says of the load that runs.
    pub(super) fn load_progress(&self) -> Option<LoadProgress> {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let Some(load) = &self.load else {
            return self.reading.as_ref().map(|_| LoadProgress {
                what: "reading".into(),
                applied: 0,
                total: 0,
                reload_queued: false,
            });
        };
        Some(LoadProgress {
            what: match load.kind {
                LoadKind::Start => "start",
                LoadKind::Reload => "reload",
            }
            .into(),
            applied: count(load.done),
            total: count(load.total),
            reload_queued: self.queued.is_some() || self.reading.is_some(),
        })
    }

    /// `backend` and `poll_interval` are read at start only: say so when a
    /// reload changes them (unless the command line set them).
    pub(super) fn warn_if_restart_needed(&mut self, config: &Config) {
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

    /// Begins to make the configured bindings those of `config`: new ones
    /// are added, removed ones dropped, unchanged ones (and their timers)
    /// left alone, a slice at a time ([`Daemon::load_slice`]). A binding
    /// whose SIGKILL is pending is never dropped by a reload: it stays,
    /// outside the configuration, until its escalation is done. Pidfiles
    /// are read and the settings of `[daemon]` and `[defaults]` take effect
    /// now.
    pub(super) fn begin_load(&mut self, mut config: Config, kind: LoadKind, waiters: Vec<usize>) {
        let began = Instant::now();
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
        self.apply_rules(std::mem::take(&mut config.rules), config.daemon.rule_source);
        self.defaults = config.defaults;
        self.feed
            .metrics
            .set_file(config.daemon.metrics_file.clone());
        self.max_per_uid = config.daemon.max_bindings_per_uid;
        self.cgroups.users = config.daemon.user_cgroups;
        let capacity = budget::capacity(self.fd_limit, self.watcher.holds_descriptors());
        self.budget
            .set_limits(capacity, config.daemon.max_bindings_per_uid);
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
        // Removed in the order they are held, so the log reads the same
        // each time.
        let wanted: HashSet<&BindingSpec> = wanted_specs.iter().map(|(spec, _)| spec).collect();
        let stale: Vec<BindingId> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.origin == Origin::Config && !wanted.contains(b.spec.as_ref()))
            .map(|(id, b)| {
                by_spec.remove(&b.spec);
                id
            })
            .collect();
        drop(wanted);
        let n_removed = stale.len();
        let total = stale.len() + wanted_specs.len();
        self.load = Some(Box::new(Load {
            kind,
            stage: Stage::Entries,
            end_steps: [Duration::ZERO; 2],
            longest: Duration::ZERO,
            stale: stale.into_iter(),
            wanted: wanted_specs.into_iter(),
            by_spec,
            live: HashSet::with_capacity(total),
            named: HashSet::with_capacity(total * 2),
            n_added: 0,
            n_removed,
            n_unchanged: 0,
            n_failed: n_refused,
            total,
            done: 0,
            began,
            busy: began.elapsed(),
            n_slices: 0,
            waiters,
        }));
    }

    /// One turn of the load that runs: a slice of its entries (at most
    /// [`SLICE`]), or one step of its end.
    pub(super) fn load_slice(&mut self) {
        let Some(mut load) = self.load.take() else {
            return;
        };
        let began = Instant::now();
        match load.stage {
            Stage::Entries => self.apply_entries(&mut load, began),
            Stage::Pins => {
                self.pins_follow_entries(&mut load);
                load.end_steps[0] = began.elapsed();
                load.stage = Stage::Write;
            }
            Stage::Write => {
                // `self.load` is empty here, so the pins are written too.
                if let Err(err) = self.save_state() {
                    error!("{err}");
                }
                load.end_steps[1] = began.elapsed();
                load.stage = Stage::End;
            }
            Stage::End => {
                self.finish_load(*load);
                return;
            }
        }
        load.busy += began.elapsed();
        load.longest = load.longest.max(began.elapsed());
        load.n_slices += 1;
        self.load = Some(load);
    }

    /// Removes and adds bindings for at most [`SLICE`].
    fn apply_entries(&mut self, load: &mut Load, began: Instant) {
        let mut n_done = 0;
        let finished = loop {
            if n_done > 0 && began.elapsed() >= SLICE {
                break false;
            }
            if let Some(id) = load.stale.next() {
                match self.bindings.get(id) {
                    Some(b) if matches!(b.phase, Phase::Signalled { deadline: Some(_) }) => info!(
                        "{}: no longer in the configuration; kept until its pending SIGKILL is sent",
                        b.label()
                    ),
                    _ => self.remove(id, "no longer in the configuration"),
                }
            } else if let Some((spec, pidfile_entry)) = load.wanted.next() {
                self.apply_entry(load, spec, pidfile_entry);
            } else {
                break true;
            }
            n_done += 1;
        };
        load.done += n_done;
        if finished {
            load.stage = Stage::Pins;
        }
        debug!(
            "load: {n_done} entries applied in {:.1}ms; {} of {} done",
            began.elapsed().as_secs_f64() * 1e3,
            load.done,
            load.total
        );
    }

    /// Pins follow their entries: an entry keeps the pins of the pids it
    /// names now; the pins of an entry that left are retired (kept,
    /// bounded), so the same entry coming back gets them again, while no
    /// other entry can ever use them. (Which entries are held, and which
    /// pids they name, was gathered slice by slice.)
    fn pins_follow_entries(&mut self, load: &mut Load) {
        self.pidfile_entries
            .retain(|&id, _| self.bindings.get(id).is_some());
        let live = std::mem::take(&mut load.live);
        let named = std::mem::take(&mut load.named);
        self.pins.sync(&live, &named);
        drop((live, named));
        drop(std::mem::take(&mut load.by_spec));
        self.bindings.shrink_to_fit();
        self.pins.shrink_to_fit();
    }

    /// Applies one entry of the configuration: adds its binding, unless
    /// one that says the same is held.
    fn apply_entry(&mut self, load: &mut Load, spec: BindingSpec, pidfile_entry: Option<EntryKey>) {
        let entry = pidfile_entry.unwrap_or_else(|| EntryKey::of_spec(&spec));
        let id = match load.by_spec.get(&spec) {
            Some(&id) => {
                load.n_unchanged += 1;
                Some(id)
            }
            None => {
                let spec = Rc::new(spec);
                let id = self.add(Rc::clone(&spec), Origin::Config, Some(entry));
                match id {
                    Some(id) => {
                        load.by_spec.insert(spec, id);
                        load.n_added += 1;
                    }
                    None => load.n_failed += 1,
                }
                id
            }
        };
        let Some(id) = id else {
            return;
        };
        if let Some(entry) = pidfile_entry {
            self.pidfile_entries.insert(id, entry);
        }
        // The key its pins are kept under: the pidfile entry that made it,
        // else its spec's.
        let Some(binding) = self.bindings.get(id) else {
            return;
        };
        let spec = &binding.spec;
        let entry = self
            .pidfile_entries
            .get(&id)
            .copied()
            .unwrap_or_else(|| EntryKey::of_spec(spec));
        load.live.insert(entry);
        for pid in std::iter::once(spec.parent.pid).chain(spec.children.iter().map(|c| c.pid)) {
            load.named.insert((entry, pid));
        }
    }

    /// Ends a load whose entries are applied and pins written: memory is
    /// given back, the waiting clients are answered, readiness is
    /// announced, and a queued reload begins.
    fn finish_load(&mut self, load: Load) {
        let finishing = Instant::now();
        let Load {
            kind,
            began,
            busy,
            n_slices,
            end_steps,
            longest,
            n_added,
            n_removed,
            n_unchanged,
            n_failed,
            total,
            waiters,
            ..
        } = load;
        crate::sys::release_free_memory();
        info!(
            "configuration applied: {n_added} added, {n_removed} removed, {n_unchanged} unchanged, {n_failed} failed; {} bindings held",
            self.bindings.len()
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let [pins, write] = end_steps;
        debug!(
            "load of {total} entries: {:.1}ms, {:.1}ms of it in the loop over {n_slices} turns, the longest {:.1}ms; its end took one turn each: pins {:.1}ms, files written {:.1}ms, memory released {:.1}ms",
            ms(began.elapsed()),
            ms(busy + finishing.elapsed()),
            ms(longest.max(finishing.elapsed())),
            ms(pins),
            ms(write),
            ms(finishing.elapsed()),
        );
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let info = ReloadInfo {
            added: count(n_added),
            removed: count(n_removed),
            unchanged: count(n_unchanged),
            failed: count(n_failed),
        };
        for idx in waiters {
            self.answer_later(
                idx,
                &crate::protocol::Response {
                    reload: Some(info),
                    ..crate::protocol::Response::ok()
                },
            );
        }
        self.feed.emit(None, events::What::ReloadApplied(info));
        if kind == LoadKind::Start {
            self.cgroup_sweep();
            self.announce_ready();
        }
        match self.queued.take() {
            Some(queued) => {
                let QueuedReload { config, waiters } = *queued;
                self.begin_load(config, LoadKind::Reload, waiters);
            }
            None if kind == LoadKind::Reload => self.ready_if_settled(),
            None => {}
        }
    }

    /// Reads the pidfiles of a binding and makes it a pid binding.
    pub(super) fn resolve(&mut self, binding: &PidfileBindingSpec) -> Result<BindingSpec, String> {
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
    pub(super) fn source(&mut self, source: &PidSource) -> Result<ProcSpec, String> {
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
}
