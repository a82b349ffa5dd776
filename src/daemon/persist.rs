//! Persistence: what the state and pins files keep of the running daemon
//! (socket bindings, pinned at bind time; pins of configured pids), when it
//! is written (once per loop iteration, before any bind is acknowledged),
//! and how it is restored and re-verified at start. The file formats are in
//! `state`.

use super::*;

impl<B: Backend> Daemon<B> {
    /// Asks for the state file to be written and fsynced before the
    /// iteration's answers go out (an unbind, which is acknowledged).
    pub(super) fn mark_durable(&mut self) {
        self.state_dirty.mark(Dirty::Durable);
    }

    /// Restores the socket and rule bindings of the state file. Their
    /// processes are pinned, so a parent that exited while the daemon was
    /// down is found gone (and the binding acts at once), and a child whose
    /// pid now belongs to another process is dropped unsignalled. A rule
    /// binding keeps its origin (its launcher's uid, its rule's name) even
    /// if the rule left the configuration meanwhile: it stays until done,
    /// as across a reload.
    pub(super) fn restore(&mut self, saved: Vec<SavedBinding>) {
        let n_saved = saved.len();
        for binding in saved {
            self.next_number = self.next_number.max(binding.id.saturating_add(1));
            if binding.boot_id != self.state.boot_id() {
                info!(
                    "{} binding #{} (uid {}) dropped: made in an earlier boot, its processes are gone",
                    binding.origin.as_deref().unwrap_or("socket"),
                    binding.id,
                    binding.uid
                );
                self.state_dirty.mark(Dirty::Lazy);
                continue;
            }
            match saved_spec(&binding).and_then(|spec| Ok((saved_origin(&binding)?, spec))) {
                Ok((origin, spec)) => {
                    let number = binding.id;
                    if self
                        .add_numbered(Rc::new(spec), origin, number, None)
                        .is_none()
                    {
                        self.state_dirty.mark(Dirty::Lazy);
                    }
                }
                Err(why) => {
                    warn!("binding #{} in the state file dropped: {why}", binding.id);
                    self.state_dirty.mark(Dirty::Lazy);
                }
            }
        }
        if n_saved > 0 {
            info!(
                "restored {n_saved} socket and rule bindings from {}",
                self.state.path().display()
            );
        }
    }

    /// Writes the pins and the state file if anything in them changed.
    /// A lazy change alone (a socket binding that is done) waits for the
    /// next durable write, for [`LAZY_BATCH`] of them, or for the daemon's
    /// exit: a stale entry is harmless, since at restore its processes
    /// are found gone or not the pinned ones.
    ///
    /// What is written is a journal record per binding that changed (see
    /// `journal`), so its cost does not grow with the bindings held; the
    /// first write after a load is a whole snapshot instead.
    pub(super) fn save_state(&mut self) -> Result<(), String> {
        self.save_state_if(Dirty::Durable)
    }

    pub(super) fn save_state_if(&mut self, at_least: Dirty) -> Result<(), String> {
        // While a load runs, its pins are written once, when it is done
        // (as before loads came in slices), not at every slice: a pin not
        // yet written is taken again at first sight after a crash.
        if self.pins.is_dirty() && self.load.is_none() {
            self.state.save_pins(&mut self.pins).map_err(|err| {
                format!(
                    "cannot write the pins file {}: {err}",
                    self.state.pins_path().display()
                )
            })?;
        }
        let failed = |state: &StateFile, err: io::Error| {
            format!(
                "cannot write the state file {}: {err}",
                state.path().display()
            )
        };
        let level = self.state_dirty.level;
        if self.state.needs_full() {
            // After a failure, tried again only when something must be
            // written: it costs as much as the bindings held.
            if self.state_dirty.full_failed && (level == Dirty::Clean || level < at_least) {
                return Ok(());
            }
            let saved = self.saved_bindings();
            if let Err(err) = self.state.save_bindings(saved, self.next_number) {
                self.state_dirty.full_failed = true;
                return Err(failed(&self.state, err));
            }
            self.state_dirty = Changes::default();
            return Ok(());
        }
        let lazy_due = self.state_dirty.touched.len() >= LAZY_BATCH;
        if level == Dirty::Clean || (level < at_least && !lazy_due) {
            return Ok(());
        }
        let durable = level == Dirty::Durable;
        let mut touched = std::mem::take(&mut self.state_dirty.touched);
        touched.sort_unstable();
        touched.dedup();
        let mut bound = Vec::new();
        let mut unbound = Vec::new();
        for &number in &touched {
            let live = self
                .by_number
                .get(&number)
                .and_then(|&id| self.bindings.get(id))
                .and_then(|binding| self.saved_binding(binding));
            match live {
                Some(saved) if !self.state.holds(number) => bound.push(saved),
                None if self.state.holds(number) => unbound.push(number),
                _ => {}
            }
        }
        match self
            .state
            .append_bindings(&bound, &unbound, self.next_number, durable)
        {
            Ok(()) => {
                self.state_dirty = Changes::default();
                Ok(())
            }
            Err(err) => {
                self.state_dirty.touched = touched;
                Err(failed(&self.state, err))
            }
        }
    }

    /// The socket bindings as the state file keeps them.
    pub(super) fn saved_bindings(&self) -> Vec<SavedBinding> {
        self.bindings
            .iter()
            .filter_map(|(_, binding)| self.saved_binding(binding))
            .collect()
    }

    /// A socket or rule binding as the state file keeps it; `None` for a
    /// configured binding or one that is done.
    fn saved_binding(&self, binding: &Binding<B::Handle>) -> Option<SavedBinding> {
        let (uid, origin, rule) = match binding.origin {
            Origin::Socket { uid } => (uid, None, None),
            Origin::Rule { uid } => (uid, Some("rule".to_string()), rule_of(&binding.spec)),
            Origin::Config => return None,
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
            id: binding.number,
            uid,
            origin,
            rule,
            name: spec.name.clone(),
            boot_id: self.state.boot_id().to_owned(),
            parent: saved_proc(&spec.parent),
            children,
            signal: spec.signal.to_string(),
            grace: spec.grace.to_string(),
            kill: spec.kill.to_string(),
        })
    }
}

/// Finished socket bindings left for a durable write are written lazily
/// (without fsync) once there are this many.
const LAZY_BATCH: usize = 1024;

/// A saved process as a pinned spec.
pub(super) fn saved_proc(spec: &ProcSpec) -> SavedProc {
    SavedProc {
        pid: spec.pid.get(),
        start: spec.start.unwrap_or_default(),
        inode: spec.inode,
    }
}

/// The name of the rule that made a rule binding (`RULE:PID`).
pub(super) fn rule_of(spec: &BindingSpec) -> Option<String> {
    spec.name
        .as_deref()
        .and_then(|n| n.rsplit_once(':'))
        .map(|(rule, _)| rule.to_string())
}

/// The origin of a saved binding: a socket binding's, or a rule's whose
/// name and rule agree (`RULE:PID`, the captive's pid).
pub(super) fn saved_origin(saved: &SavedBinding) -> Result<Origin, String> {
    match saved.origin.as_deref() {
        None | Some("socket") => Ok(Origin::Socket { uid: saved.uid }),
        Some("rule") => {
            let rule = saved.rule.as_deref().unwrap_or_default();
            let captive = saved.children.first().map(|c| c.pid);
            let expected = captive.map(|pid| format!("{rule}:{pid}"));
            if rule.is_empty() || saved.children.len() != 1 || saved.name != expected {
                return Err(format!(
                    "a rule binding must name its rule and one captive, as RULE:PID (rule {:?}, name {:?}, {} children)",
                    saved.rule,
                    saved.name,
                    saved.children.len()
                ));
            }
            Ok(Origin::Rule { uid: saved.uid })
        }
        Some(other) => Err(format!("unknown origin {other:?}")),
    }
}

/// Rebuilds the spec of a socket or rule binding from the state file.
pub(super) fn saved_spec(saved: &SavedBinding) -> Result<BindingSpec, String> {
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

/// How urgently the state file must be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(super) enum Dirty {
    /// Nothing changed.
    #[default]
    Clean,
    /// Write it, without fsync.
    Lazy,
    /// Write and fsync it before any answer goes out.
    Durable,
}

/// What changed since the state file was written: how urgently it must
/// be written, and the socket bindings (by public id) whose records may
/// need writing.
#[derive(Debug, Default)]
pub(super) struct Changes {
    level: Dirty,
    touched: Vec<u64>,
    /// Whether the whole write that follows a load failed.
    full_failed: bool,
}

impl Changes {
    /// Something changed that needs no record of its own.
    pub(super) fn mark(&mut self, level: Dirty) {
        self.level = self.level.max(level);
    }

    /// Socket binding `number` was made or went.
    pub(super) fn binding(&mut self, number: u64, level: Dirty) {
        self.mark(level);
        self.touched.push(number);
    }
}
