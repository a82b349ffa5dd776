//! Reload: the configuration read again, and only the difference applied.
//!
//! Unchanged bindings keep their watches and timers; pidfile bindings are
//! resolved here (see `pidfile`); a binding with a pending SIGKILL is never
//! dropped by a reload.

use super::*;

impl<B: Backend> Daemon<B> {
    /// Re-reads the configuration and applies the difference. An invalid
    /// file changes nothing; its errors are logged and returned.
    pub(super) fn reload(&mut self) -> Result<ReloadInfo, ConfigErrors> {
        info!("reloading {}", self.options.config.path.display());
        self.options.notifier.reloading();
        let result = self.reload_config();
        let status = self.status_line();
        self.options.notifier.ready(&status);
        result
    }

    pub(super) fn reload_config(&mut self) -> Result<ReloadInfo, ConfigErrors> {
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

    /// Makes the configured bindings those of `config`: adds new ones,
    /// drops removed ones, leaves unchanged ones (and their timers) alone.
    /// A binding whose SIGKILL is pending is never dropped by a reload: it
    /// stays, outside the configuration, until its escalation is done.
    pub(super) fn apply(&mut self, mut config: Config) -> ReloadInfo {
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
        let info = ReloadInfo {
            added: count(n_added),
            removed: count(n_removed),
            unchanged: count(n_unchanged),
            failed: count(n_failed),
        };
        self.feed.emit(None, events::What::ReloadApplied(info));
        info
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
