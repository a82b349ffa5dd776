//! The whole captive: for `kill = "group"` and `"tree"`, how the members
//! beyond the bound children are found in the process table, proven,
//! held within the owner's budget, and signalled. A new kill mode is added
//! here (and in the model), nowhere else.

use super::*;

impl<B: Backend> Daemon<B> {
    /// The process group of each bound child, for `kill = "group"`.
    /// Refuses a group that contains the daemon or pid 1 (pid 1's own
    /// group, and ids 0 and 1), or that the parent belongs to: then the captive has no group of
    /// its own, and signalling it would hit the launcher's siblings.
    pub(super) fn group_check(
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
    pub(super) fn widen(&mut self, id: BindingId) -> usize {
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
            KillMode::Process | KillMode::Cgroup => {}
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

    /// Whether a group or tree binding still holds members other than its
    /// bound children that have not exited.
    pub(super) fn has_live_extras(&self, id: BindingId) -> bool {
        self.bindings
            .get(id)
            .and_then(|b| b.scope.as_ref())
            .is_some_and(|s| s.extras.iter().any(|m| !self.watcher.has_exited(&m.handle)))
    }

    /// Signals the members of a group or tree binding from index `from`
    /// on (those still alive).
    pub(super) fn signal_extras(&mut self, id: BindingId, from: usize, sig: Signal) {
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
}
