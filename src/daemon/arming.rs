//! Making a binding: each process opened and proven against its pin (or
//! pinned at first sight), refused when it is tetherd or a kernel thread,
//! counted against its owner's budget, registered with the loop, and acted
//! on at once when the parent is already gone.

use super::*;

impl<B: Backend> Daemon<B> {
    /// The number the next binding is known by (`tetherctl list`,
    /// `unbind`), never handed out twice, restarts included (the state
    /// file keeps the next one).
    pub(super) fn new_number(&mut self) -> u64 {
        let number = self.next_number;
        self.next_number += 1;
        number
    }

    /// Opens, proves and registers every process of `spec`, and acts at
    /// once when the parent is already gone. Returns `None` (after logging
    /// why) when the binding cannot be held at all.
    pub(super) fn add(
        &mut self,
        spec: Rc<BindingSpec>,
        origin: Origin,
        entry: Option<EntryKey>,
    ) -> Option<BindingId> {
        let number = self.new_number();
        self.add_numbered(spec, origin, number, entry)
    }

    /// Like [`Daemon::add`]; `entry` is the configuration entry whose pins
    /// an unpinned pid is checked against (`None`: socket bindings, whose
    /// specs are pinned).
    pub(super) fn add_numbered(
        &mut self,
        spec: Rc<BindingSpec>,
        origin: Origin,
        number: u64,
        entry: Option<EntryKey>,
    ) -> Option<BindingId> {
        let label = bindings::label(&spec, origin, number);
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
        self.insert(spec, origin, number, parent, children, &label)
            .ok()
    }

    /// Stores a binding whose processes are open and proven, registers them
    /// and acts at once if the parent is already gone. A refusal is logged
    /// and returned (for a socket client).
    pub(super) fn insert(
        &mut self,
        spec: Rc<BindingSpec>,
        origin: Origin,
        number: u64,
        parent: Option<Member<B::Handle>>,
        children: Vec<Option<Member<B::Handle>>>,
        label: &str,
    ) -> Result<BindingId, String> {
        let scope = match spec.kill {
            KillMode::Process => None,
            KillMode::Tree | KillMode::Cgroup => Some(Box::new(Scope {
                groups: Vec::new(),
                extras: Vec::new(),
                cgroup: None,
            })),
            KillMode::Group => match self.group_check(parent.as_ref(), &children) {
                Ok(groups) => Some(Box::new(Scope {
                    groups,
                    extras: Vec::new(),
                    cgroup: None,
                })),
                Err(why) => {
                    error!("{label}: {why}; binding not held");
                    return Err(why);
                }
            },
        };
        // A cgroup counts as one more thing the owner holds.
        let charged = usize::from(parent.is_some())
            + children.iter().flatten().count()
            + usize::from(spec.kill == KillMode::Cgroup);
        let binding = Binding {
            number,
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
        if let Origin::Socket { uid } = origin {
            self.budget.count_socket_binding(uid, true);
        }
        if let Err(why) = self.cgroup_setup(id) {
            error!("{label}: {why}; binding not held");
            self.remove(id, "its cgroup could not be made");
            return Err(why);
        }
        if let Err(err) = self.register_members(id) {
            let why = format!("cannot register with the event loop: {err}");
            error!("{label}: {why}; binding not held");
            self.remove(id, "registration failed");
            return Err(why);
        }
        if let Origin::Socket { .. } | Origin::Rule { .. } = origin {
            self.by_number.insert(number, id);
            self.state_dirty.binding(number, Dirty::Durable);
        }
        let captive_lives = self.cgroup_populated(id);
        let Some(binding) = self.bindings.get_mut(id) else {
            return Ok(id);
        };
        let bound = events::What::Bound {
            parent: binding.spec.parent.pid,
            children: binding.spec.children.iter().map(|c| c.pid).collect(),
            signal: binding.spec.signal,
        };
        self.feed.emit(Some(&events::Subject::of(binding)), bound);
        if binding.n_live_children() == 0 && !captive_lives {
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
                self.widen(id);
            }
        }
        Ok(id)
    }

    /// The uid a binding's processes are counted against: 0 for root, the
    /// daemon's own user and the configuration.
    pub(super) fn budget_uid(origin: Origin) -> u32 {
        match origin {
            Origin::Socket { uid } | Origin::Rule { uid }
                if uid != nix::unistd::geteuid().as_raw() =>
            {
                uid
            }
            _ => 0,
        }
    }

    pub(super) fn register_members(&mut self, id: BindingId) -> io::Result<()> {
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

    /// Opens the process of `spec` and proves it is the bound one: its
    /// identity, read after the handle was opened, must match the pin of the
    /// config, or the pin `entry` recorded when it first saw the pid. A pid
    /// the entry sees for the first time is pinned now.
    pub(super) fn open_member(
        &mut self,
        spec: &ProcSpec,
        origin: Origin,
        entry: Option<EntryKey>,
    ) -> Result<Proven<B::Handle>, String> {
        let opened = self.watcher.open(spec.pid);
        let pin_source = match origin {
            Origin::Config => "the configured pin",
            Origin::Rule { .. } => "the pin taken when the rule matched",
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
    pub(super) fn prove(
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
}

/// Why `identity` is not the pinned process, or `None` if it is.
pub(super) fn pin_mismatch(
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

/// Refuses a configured process proven live that is tetherd itself, or
/// with `kthreads` (children, which are signalled; a parent is only
/// watched, and the check costs a read of `/proc`) a kernel thread.
pub(super) fn refuse_special<H>(
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
pub(super) fn special_process(pid: Pid, start: Option<u64>) -> Result<(), String> {
    // getpid(2) is a system call each time; the daemon never forks.
    static OWN_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if u32::try_from(pid.get()).is_ok_and(|pid| pid == *OWN_PID.get_or_init(std::process::id)) {
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

/// A process proven to be the bound one (with the identity proven), or
/// why it is not there.
pub(super) enum Proven<H> {
    Live(Member<H>, Identity),
    Gone(String),
}
