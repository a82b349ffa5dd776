//! Acting: a member's exit, the parent's death (the binding's signal to
//! every child, then its scope), escalation to SIGKILL when the grace
//! period is over, and the end of a binding. Every signal a user's binding
//! sends is checked against that user first (`deliver`).

use super::events::{Subject, What};
use super::*;
use crate::watch::IdentityUnknown;

impl<B: Backend> Daemon<B> {
    /// Handles the exit of the member a token names.
    pub(super) fn member_event(&mut self, token: Token) {
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
                self.feed.metrics.exit_learned = Some(self.feed.metrics.woke);
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
                self.feed
                    .emit(Some(&Subject::of(binding)), What::ChildExited { pid });
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
                if self.is_cgroup(id) {
                    self.cgroup_child_gone(id);
                    return;
                }
                // A group is the captive: it stays covered while a member
                // held since the binding was made (or found now, proven by
                // such a member) lives.
                if phase == Phase::Armed && group {
                    self.widen(id);
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
    pub(super) fn fire(&mut self, id: BindingId) {
        let exit_learned = self.feed.metrics.exit_learned.take();
        if self.is_cgroup(id) {
            self.cgroup_fire(id, exit_learned);
            return;
        }
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
                self.widen(id);
                0
            } else {
                self.widen(id)
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
        let signalled_at = Instant::now();
        if let Some(parent) = binding.parent.take() {
            let _ = self
                .watcher
                .deregister(self.poll.registry(), &parent.handle);
        }
        let label = binding.label();
        let parent_pid = binding.spec.parent.pid;
        let subject = Subject::of(binding);
        self.feed
            .emit(Some(&subject), What::ParentExited { parent: parent_pid });
        if let Some(learned) = exit_learned {
            if outcomes.iter().any(|(_, o)| matches!(o, Outcome::Sent)) {
                self.feed
                    .metrics
                    .observe_delay(signalled_at.saturating_duration_since(learned));
            }
        }
        let mut retry = Vec::new();
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
                    info!("{label}: parent {parent_pid} exited; sent {sig} to child {pid}");
                    self.feed
                        .emit(Some(&subject), What::Signalled { pid, signal: sig });
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
                Outcome::Failed(err) if IdentityUnknown::is(&err) => {
                    warn!(
                        "{label}: parent {parent_pid} exited; child {pid} {err}; trying again in {RETRY:?}"
                    );
                    retry.push(idx);
                }
                Outcome::Failed(err) => error!("{label}: cannot send {sig} to child {pid}: {err}"),
            }
        }
        let at = Instant::now() + RETRY;
        for idx in retry {
            self.retries.push(Reverse((at, id, idx, false)));
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

    /// Sends again the signals that could not be sent because the child's
    /// identity could not be read (the pid-based backends, out of
    /// descriptors or memory): never to a pid not proven, and again later
    /// while it stays unknown.
    pub(super) fn run_due_retries(&mut self) {
        let admin = nix::unistd::geteuid().as_raw();
        let now = Instant::now();
        while let Some(Reverse((at, id, idx, kill))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            let Some(binding) = self.bindings.get_mut(id) else {
                continue;
            };
            if binding.phase == Phase::Done || binding.phase == Phase::Armed {
                continue;
            }
            let label = binding.label();
            let deputy_for = binding.deputy_for(admin);
            let sig = if kill {
                Signal::KILL
            } else {
                binding.spec.signal
            };
            let Some(slot) = binding.children.get_mut(idx) else {
                continue;
            };
            let Some(child) = slot.as_ref() else {
                continue;
            };
            let pid = child.pid;
            match Self::deliver(&self.watcher, deputy_for, child, sig) {
                Outcome::Sent => {
                    info!("{label}: sent {sig} to child {pid} (its identity could be read again)");
                    self.feed.emit(
                        Some(&Subject::of(binding)),
                        What::Signalled { pid, signal: sig },
                    );
                }
                Outcome::Exited => {}
                Outcome::Gone => {
                    info!("{label}: child {pid} already gone, not signalled");
                    release(&mut self.watcher, &self.poll, slot);
                }
                Outcome::Refused(why) => {
                    warn!("{label}: child {pid} not signalled: {why}");
                    release(&mut self.watcher, &self.poll, slot);
                }
                Outcome::Failed(err) if IdentityUnknown::is(&err) => {
                    debug!("{label}: child {pid} {err}; trying again in {RETRY:?}");
                    self.retries.push(Reverse((now + RETRY, id, idx, kill)));
                }
                Outcome::Failed(err) => error!("{label}: cannot send {sig} to child {pid}: {err}"),
            }
        }
    }

    /// Sends SIGKILL to the children of every binding whose grace is over.
    pub(super) fn run_due_timers(&mut self) {
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
            let children = binding.children.iter().flatten().map(|c| c.pid).collect();
            self.feed
                .emit(Some(&Subject::of(binding)), What::Escalated { children });
            if binding.spec.kill == KillMode::Cgroup {
                self.cgroup_escalate(id);
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
                self.widen(id);
                self.signal_extras(id, 0, Signal::KILL);
            }
            let Some(binding) = self.bindings.get_mut(id) else {
                continue;
            };
            let label = binding.label();
            let subject = Subject::of(binding);
            let grace = binding.spec.grace;
            let deputy_for = binding.deputy_for(admin);
            for (idx, slot) in binding.children.iter_mut().enumerate() {
                let Some(child) = slot else {
                    continue;
                };
                // Never SIGKILL a child whose exit is already known: it is
                // dead, and only its parent's reaping is pending.
                match Self::deliver(&self.watcher, deputy_for, child, Signal::KILL) {
                    Outcome::Exited => {}
                    Outcome::Sent => {
                        info!(
                            "{label}: grace {grace} over; sent SIGKILL to child {}",
                            child.pid
                        );
                        self.feed.emit(
                            Some(&subject),
                            What::Signalled {
                                pid: child.pid,
                                signal: Signal::KILL,
                            },
                        );
                    }
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
                    Outcome::Failed(err) if IdentityUnknown::is(&err) => {
                        warn!(
                            "{label}: grace {grace} over; child {} {err}; trying again in {RETRY:?}",
                            child.pid
                        );
                        self.retries.push(Reverse((now + RETRY, id, idx, true)));
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
    pub(super) fn finish(&mut self, id: BindingId) {
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        let hold = binding.scope.as_mut().and_then(|s| s.cgroup.take());
        if let Some(hold) = hold {
            self.cgroups.drop_hold(hold, &binding.label());
        }
        if binding.phase != Phase::Done {
            self.feed.emit(
                Some(&Subject::of(binding)),
                What::Unbound {
                    reason: "done".into(),
                },
            );
        }
        if matches!(binding.origin, Origin::Socket { .. } | Origin::Rule { .. }) {
            debug!("{}: done", binding.label());
            if let Some(binding) = self.bindings.remove(id) {
                self.close(binding);
            }
            return;
        }
        release_all(&mut self.watcher, &self.poll, &mut self.budget, binding);
        debug!("{}: done", binding.label());
        binding.phase = Phase::Done;
        binding.children = Vec::new();
    }

    /// Drops a binding entirely, cancelling any pending escalation.
    pub(super) fn remove(&mut self, id: BindingId, why: &str) {
        let Some(binding) = self.bindings.remove(id) else {
            return;
        };
        let label = binding.label();
        let phase = binding.phase;
        if phase != Phase::Done {
            self.feed.emit(
                Some(&Subject::of(&binding)),
                What::Unbound {
                    reason: format!("removed: {why}"),
                },
            );
        }
        self.close(binding);
        match phase {
            Phase::Signalled { deadline: Some(_) } => {
                info!("{label}: removed ({why}); its pending SIGKILL is cancelled")
            }
            _ => info!("{label}: removed ({why})"),
        }
    }

    /// Releases everything a binding removed from the slab holds.
    pub(super) fn close(&mut self, mut binding: Binding<B::Handle>) {
        self.cgroup_release(&mut binding);
        release_all(
            &mut self.watcher,
            &self.poll,
            &mut self.budget,
            &mut binding,
        );
        if let Origin::Socket { uid } = binding.origin {
            self.budget.count_socket_binding(uid, false);
        }
        if self
            .by_number
            .get(&binding.number)
            .is_some_and(|&bid| self.bindings.get(bid).is_none())
        {
            self.by_number.remove(&binding.number);
        }
        // A socket or rule binding that is done or removed need not be on
        // disk at once: if the daemon dies first, it is restored and found
        // done again. An unbind, which is acknowledged, asks for durability.
        if matches!(binding.origin, Origin::Socket { .. } | Origin::Rule { .. }) {
            self.state_dirty.binding(binding.number, Dirty::Lazy);
        }
    }

    /// Signals one member of a binding, through its handle, if the
    /// binding may have it signalled: a binding made by a user other than
    /// root signals only processes that user could signal itself, proven
    /// after the handle is held and just before the signal (a process can
    /// change owner by a set-id exec, or be adopted into a subreaper's
    /// tree or a shared session's group). Never blocks.
    pub(super) fn deliver(
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
                // Unknown is not "no": the signal is tried again later.
                Err(err) => return Outcome::Failed(IdentityUnknown::error(member.pid.get(), err)),
            }
        }
        match watcher.signal(&member.handle, sig) {
            Ok(Delivery::Sent) => Outcome::Sent,
            Ok(Delivery::Gone) => Outcome::Gone,
            Err(err) => Outcome::Failed(err),
        }
    }
}

/// Closes every handle a binding holds (parent, children, scope members)
/// and gives what it was charged back to its owner's budget.
fn release_all<B: Backend>(
    watcher: &mut B,
    poll: &Poll,
    budget: &mut budget::Budget,
    binding: &mut Binding<B::Handle>,
) {
    if let Some(parent) = binding.parent.take() {
        let _ = watcher.deregister(poll.registry(), &parent.handle);
    }
    for slot in binding.children.iter_mut() {
        release(watcher, poll, slot);
    }
    if let Some(scope) = binding.scope.as_mut() {
        scope.extras = Vec::new();
    }
    let charged = std::mem::take(&mut binding.charged);
    budget.release(Daemon::<B>::budget_uid(binding.origin), charged);
}

/// How long before a signal whose target's identity could not be read is
/// tried again.
pub(super) const RETRY: Duration = Duration::from_millis(250);

/// What became of one signal a binding meant to send.
pub(super) enum Outcome {
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

/// Deregisters and closes the member in `slot`, if any.
pub(super) fn release<B: Backend>(
    watcher: &mut B,
    poll: &Poll,
    slot: &mut Option<Member<B::Handle>>,
) {
    if let Some(member) = slot.take() {
        let _ = watcher.deregister(poll.registry(), &member.handle);
    }
}
