//! The whole captive of `kill = "cgroup"`: a cgroup v2 of the binding's
//! own (`<root>/b<number>`, or `<root>/u<uid>/b<number>` for a
//! user's binding, allowed only with `[daemon] user_cgroups`), which the bound children and their
//! descendants are moved into when the binding is made. When the parent
//! exits, every process in it (each held by a handle and proven a member)
//! gets the binding's signal; when the grace is over, the cgroup is killed
//! whole (`cgroup.kill`, or frozen and each member killed); once
//! `cgroup.events` says it is empty (an inotify event in the loop, no
//! polling), it is removed and the binding ends.
//!
//! The path is the root, the owner and the binding's number, so a restarted tetherd finds a
//! socket binding's cgroup again without the state file recording it; an
//! empty `b<number>` that no binding holds is removed at start. The raw file
//! access is `sys::cgroup`.

use std::path::{Path, PathBuf};

use mio::unix::SourceFd;
use mio::Registry;

use super::events::{Subject, What};
use super::*;
use crate::sys::cgroup as cg;

/// How many times the descendants of a binding's processes are looked for
/// and moved at bind time, while new ones keep appearing outside.
const GATHER_ROUNDS: usize = 8;

/// A binding's cgroup.
#[derive(Debug)]
pub struct Hold {
    /// `<root>/b<number>`.
    pub dir: PathBuf,
    /// The inotify watch on its `cgroup.events`.
    wd: i32,
    /// Processes (pid, start time) found in the cgroup after their pid was
    /// reused during a move, that could not be moved back out: never
    /// signalled, and the cgroup is not killed whole while one is in it.
    strangers: Vec<(Pid, u64)>,
}

/// What to do after a pid was written to a cgroup's `cgroup.procs` and
/// the process held by its handle turned out to have exited (or the pid
/// now names a process with another start time): the write may have
/// moved a stranger that reused the pid.
#[derive(Debug, PartialEq, Eq)]
enum AfterReuse<'a> {
    /// The pid is not in the cgroup: the write hit nobody, or the
    /// stranger already left.
    Nothing,
    /// The pid is in the cgroup: move it back to where the pid was read
    /// to be just before the write.
    MoveBack(&'a str),
    /// The pid is in the cgroup and where it was before is unknown: it
    /// stays, and is never signalled.
    Shun,
}

/// The decision of [`AfterReuse`] from the cgroup the pid is in now, the
/// cgroup it was moved into and the one it was read to be in before.
fn after_reuse<'a>(now: Option<&str>, into: &str, before: Option<&'a str>) -> AfterReuse<'a> {
    if now != Some(into) {
        return AfterReuse::Nothing;
    }
    match before {
        Some(before) if before != into => AfterReuse::MoveBack(before),
        _ => AfterReuse::Shun,
    }
}

/// Where the cgroups live (or why there are none) and the inotify
/// descriptor that reports their `cgroup.events` changes.
#[derive(Debug)]
pub struct Cgroups {
    place: Result<cg::Place, String>,
    /// Held while the daemon runs: one tetherd per root.
    _lock: Option<cg::RootLock>,
    watcher: Option<cg::Watcher>,
    wds: HashMap<i32, BindingId>,
    /// `[daemon] user_cgroups`: whether users other than root may make
    /// cgroup bindings.
    pub(super) users: bool,
}

impl Cgroups {
    /// Finds (and makes) the root, and registers the inotify descriptor
    /// under `token`. A failure only makes `kill = "cgroup"` unavailable.
    pub fn start(root: Option<&Path>, users: bool, registry: &Registry, token: Token) -> Cgroups {
        let place = cg::locate(root, true).and_then(|place| {
            let lock = cg::lock_root(&place.root)?;
            let watcher = cg::Watcher::new()
                .map_err(|e| format!("cannot make an inotify descriptor: {e}"))?;
            registry
                .register(&mut SourceFd(&watcher.raw()), token, Interest::READABLE)
                .map_err(|e| format!("cannot register the inotify descriptor: {e}"))?;
            Ok((place, watcher, lock))
        });
        match place {
            Ok((place, watcher, lock)) => {
                debug!(
                    "cgroups under {} ({}, cgroup.kill {})",
                    place.root.display(),
                    place.how,
                    if place.has_kill { "present" } else { "absent" }
                );
                Cgroups {
                    place: Ok(place),
                    _lock: Some(lock),
                    watcher: Some(watcher),
                    wds: HashMap::new(),
                    users,
                }
            }
            Err(why) => {
                debug!("kill = \"cgroup\" is not available: {why}");
                Cgroups {
                    place: Err(why),
                    _lock: None,
                    watcher: None,
                    wds: HashMap::new(),
                    users,
                }
            }
        }
    }

    /// Whether a client of `uid` may make a cgroup binding: root and the
    /// daemon's own user may; another user only with `[daemon]
    /// user_cgroups`, as the move takes the user's processes out of the
    /// cgroup (and so the limits) the administrator put them in.
    pub(super) fn permits(&self, uid: u32) -> Result<(), String> {
        let admin = nix::unistd::geteuid().as_raw();
        if self.users || uid == 0 || uid == admin {
            return Ok(());
        }
        Err(format!(
            "kill = \"cgroup\" is refused for uid {uid}: it would move the user's processes out of their own cgroup and its limits ([daemon] user_cgroups = true allows it)"
        ))
    }

    /// One line for `status`: where the cgroups live, or why there are
    /// none.
    pub fn describe(&self) -> String {
        match &self.place {
            Ok(place) => format!(
                "available under {} ({}){}",
                place.root.display(),
                place.how,
                if place.has_kill {
                    ""
                } else {
                    "; no cgroup.kill, freeze and kill instead"
                }
            ),
            Err(why) => format!("not available: {why}"),
        }
    }

    /// Forgets a binding's cgroup and removes it, if it is empty.
    pub(super) fn drop_hold(&mut self, hold: Hold, label: &str) {
        self.wds.remove(&hold.wd);
        if let Some(watcher) = &self.watcher {
            watcher.remove(hold.wd);
        }
        match cg::remove(&hold.dir) {
            Ok(()) => debug!("{label}: cgroup {} removed", hold.dir.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "{label}: cgroup {} not removed ({e}); it is left in place and removed at the next start once empty",
                hold.dir.display()
            ),
        }
    }
}

impl<B: Backend> Daemon<B> {
    /// Makes the cgroup of a `kill = "cgroup"` binding and moves its
    /// children and their descendants into it. Nothing for other modes.
    pub(super) fn cgroup_setup(&mut self, id: BindingId) -> Result<(), String> {
        let admin = nix::unistd::geteuid().as_raw();
        let Some(binding) = self.bindings.get(id) else {
            return Ok(());
        };
        if binding.spec.kill != KillMode::Cgroup {
            return Ok(());
        }
        let label = binding.label();
        let deputy_for = binding.deputy_for(admin);
        let (place, watcher) = match (&self.cgroups.place, &self.cgroups.watcher) {
            (Ok(place), Some(watcher)) => (place, watcher),
            (Err(why), _) => return Err(format!("kill = \"cgroup\" is not available: {why}")),
            (Ok(_), None) => return Err("kill = \"cgroup\" is not available".into()),
        };
        let base = match deputy_for {
            Some(uid) => {
                let base = place.root.join(format!("{}{uid}", cg::USER_PREFIX));
                cg::make(&base)
                    .map_err(|e| format!("cannot create cgroup {}: {e}", base.display()))?;
                base
            }
            None => place.root.clone(),
        };
        let dir = base.join(format!("{}{}", cg::PREFIX, binding.number));
        let mount = place.mount.clone();
        // A restored socket binding finds its cgroup again. Any other
        // binding's number is new, so a cgroup of that name with processes
        // in it is another's (left by a crash before the number was saved):
        // it is never taken over, unless a bound child is in it.
        if binding.origin == Origin::Config && cg::populated(&dir).unwrap_or(false) {
            let relative = dir
                .strip_prefix(&mount)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_default();
            let ours = binding.children.iter().flatten().any(|c| {
                cg::cgroup_of(c.pid.get()).ok().flatten().as_deref() == Some(relative.as_str())
            });
            if !ours {
                return Err(format!(
                    "cgroup {} already exists and holds processes this binding did not put there",
                    dir.display()
                ));
            }
        }
        // The number must never be handed out again, crash or not: the next
        // one is on disk before the cgroup is used.
        self.state_dirty.mark(Dirty::Durable);
        cg::make(&dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        let wd = watcher
            .add(&dir)
            .map_err(|e| format!("cannot watch {}/cgroup.events: {e}", dir.display()))?;
        self.cgroups.wds.insert(wd, id);
        let Some(binding) = self.bindings.get_mut(id) else {
            return Ok(());
        };
        if let Some(scope) = binding.scope.as_mut() {
            scope.cgroup = Some(Hold {
                dir: dir.clone(),
                wd,
                strangers: Vec::new(),
            });
        }
        // The bound children first: each was proven and authorized when
        // it was opened. Alive after the write means the write hit it.
        let mut predecessors = Vec::new();
        let mut reused = Vec::new();
        for child in binding.children.iter().flatten() {
            let before = cg::cgroup_of(child.pid.get()).ok().flatten();
            if let Some(old) = before
                .as_deref()
                .map(|p| mount.join(p.trim_start_matches('/')))
            {
                if old.parent() == dir.parent() && old != dir {
                    predecessors.push(old);
                }
            }
            let start = match self.watcher.entry(child.pid, &child.handle) {
                Ok(Some(entry)) => entry.start,
                _ => continue,
            };
            cg::move_pid(&dir, child.pid.get()).map_err(|e| {
                format!(
                    "cannot move child {} into cgroup {}: {e}",
                    child.pid,
                    dir.display()
                )
            })?;
            let still = matches!(self.watcher.entry(child.pid, &child.handle), Ok(Some(e)) if e.start == start);
            if !still {
                debug!("{label}: child {} exited while it was moved", child.pid);
                reused.push((child.pid, before));
            }
        }
        for (pid, before) in reused {
            self.undo_reuse(id, &dir, pid, before.as_deref(), &label);
        }
        // A child found in the cgroup of a binding that no longer exists
        // (a configured binding before a restart): its captive comes along.
        predecessors.sort();
        predecessors.dedup();
        let held: HashSet<PathBuf> = self.held_cgroups();
        for old in predecessors.into_iter().filter(|p| !held.contains(p)) {
            self.cgroup_adopt(id, &old, &dir, deputy_for, &label);
        }
        self.cgroup_gather(id, &dir, deputy_for, &label);
        Ok(())
    }

    /// Moves the descendants of the processes in `dir` that are outside it
    /// in, top down, and looks again until none is found (at most
    /// `GATHER_ROUNDS` times). A process whose parent exited before it was
    /// found (reparented to init or a subreaper) is not found.
    fn cgroup_gather(&mut self, id: BindingId, dir: &Path, deputy_for: Option<u32>, label: &str) {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let mut refused: HashSet<i32> = HashSet::new();
        for round in 0..GATHER_ROUNDS {
            // Reading the whole process table costs milliseconds: not done
            // when no process to look from has a child (a child forked
            // since its parent was moved is born inside).
            let mut roots: Vec<i32> = cg::pids(dir).unwrap_or_default();
            if let Some(binding) = self.bindings.get(id) {
                roots.extend(binding.children.iter().flatten().map(|c| c.pid.get()));
            }
            if roots.iter().all(|&pid| cg::childless(pid) == Some(true)) {
                return;
            }
            let table = match self.watcher.process_table() {
                Ok(table) => table,
                Err(err) => {
                    warn!("{label}: cannot read the process table ({err}); descendants not moved into the cgroup");
                    return;
                }
            };
            let inside: HashSet<i32> = cg::pids(dir).unwrap_or_default().into_iter().collect();
            roots.extend(inside.iter().copied());
            let mut children_of: HashMap<i32, Vec<&ProcEntry>> = HashMap::new();
            for e in &table {
                children_of.entry(e.ppid).or_default().push(e);
            }
            let mut seen: HashSet<i32> = roots.iter().copied().collect();
            let mut queue: std::collections::VecDeque<i32> = roots.into_iter().collect();
            let mut outside: Vec<ProcEntry> = Vec::new();
            while let Some(pid) = queue.pop_front() {
                for e in children_of.get(&pid).into_iter().flatten() {
                    if e.pid > 1 && e.pid != me && seen.insert(e.pid) {
                        if !inside.contains(&e.pid) && !refused.contains(&e.pid) {
                            outside.push(**e);
                        }
                        queue.push_back(e.pid);
                    }
                }
            }
            if outside.is_empty() {
                return;
            }
            debug!(
                "{label}: round {round}: {} descendants outside the cgroup",
                outside.len()
            );
            for candidate in outside {
                if !self.move_proven(id, dir, &candidate, deputy_for, label) {
                    refused.insert(candidate.pid);
                }
            }
        }
        warn!(
            "{label}: descendants were still appearing outside the cgroup after {GATHER_ROUNDS} rounds; those forked since are not in it"
        );
    }

    /// Moves every process of `old` (a cgroup of ours no binding holds)
    /// into `dir`, and removes `old` once empty.
    fn cgroup_adopt(
        &mut self,
        id: BindingId,
        old: &Path,
        dir: &Path,
        deputy_for: Option<u32>,
        label: &str,
    ) {
        let Ok(pids) = cg::pids(old) else {
            return;
        };
        let mut n = 0;
        for pid in pids {
            let entry = Pid::try_from(i64::from(pid))
                .ok()
                .and_then(|p| self.watcher.open(p).ok().map(|(h, _)| (p, h)))
                .and_then(|(p, h)| self.watcher.entry(p, &h).ok().flatten());
            if let Some(entry) = entry {
                if self.move_proven(id, dir, &entry, deputy_for, label) {
                    n += 1;
                }
            }
        }
        info!(
            "{label}: {n} processes moved in from {}, left by an earlier binding of the same child",
            old.display()
        );
        if cg::populated(old).is_ok_and(|p| !p) {
            let _ = cg::remove(old);
        }
    }

    /// Opens the process a table entry names, proves it is that entry
    /// (and, for a user's binding, that the user owns it), moves it into
    /// `dir` and proves it was alive after the write. Returns whether it
    /// is inside now.
    fn move_proven(
        &mut self,
        id: BindingId,
        dir: &Path,
        candidate: &ProcEntry,
        deputy_for: Option<u32>,
        label: &str,
    ) -> bool {
        let Ok(pid) = Pid::try_from(i64::from(candidate.pid)) else {
            return false;
        };
        let handle = match self.watcher.open(pid) {
            Ok((handle, _)) => handle,
            Err(_) => return false,
        };
        let same = |d: &Self, h: &B::Handle| matches!(d.watcher.entry(pid, h), Ok(Some(now)) if now.start == candidate.start);
        if !same(self, &handle) {
            return false;
        }
        if let Some(uid) = deputy_for {
            match self.watcher.owner(pid, &handle) {
                Ok(Some(owner)) if owner.plainly_owned_by(uid) => {}
                Ok(Some(owner)) => {
                    warn!(
                        "{label}: descendant {pid} not moved into the cgroup: {}",
                        owner.refusal(uid)
                    );
                    return false;
                }
                _ => return false,
            }
        }
        let before = cg::cgroup_of(pid.get()).ok().flatten();
        if let Err(e) = cg::move_pid(dir, pid.get()) {
            warn!("{label}: cannot move descendant {pid} into the cgroup: {e}");
            return false;
        }
        if !same(self, &handle) {
            debug!("{label}: descendant {pid} exited while it was moved");
            self.undo_reuse(id, dir, pid, before.as_deref(), label);
            return false;
        }
        true
    }

    /// The process tetherd held exited while its pid was moved into
    /// `dir`: if a process with that pid is in `dir` now, it is a
    /// stranger that reused the pid between the check and the write. It
    /// is moved back to `before` (where the pid was read to be just
    /// before the write); if that fails it stays, marked never to be
    /// signalled.
    fn undo_reuse(
        &mut self,
        id: BindingId,
        dir: &Path,
        pid: Pid,
        before: Option<&str>,
        label: &str,
    ) {
        let Ok(place) = &self.cgroups.place else {
            return;
        };
        let mount = place.mount.clone();
        let Some(into) = relative_to(dir, &mount) else {
            return;
        };
        // Held across the look and the move, to name who was shunned.
        let opened = self.watcher.open(pid).ok();
        let now = cg::cgroup_of(pid.get()).ok().flatten();
        let why = match after_reuse(now.as_deref(), &into, before) {
            AfterReuse::Nothing => return,
            AfterReuse::MoveBack(to) => {
                let back = mount.join(to.trim_start_matches('/'));
                match cg::move_pid(&back, pid.get()) {
                    Ok(()) => {
                        error!(
                            "{label}: pid {pid} was reused while it was moved into cgroup {}: process {pid} is not the one checked and was moved back to {}",
                            dir.display(),
                            back.display()
                        );
                        return;
                    }
                    Err(e) => format!("cannot move it back to {}: {e}", back.display()),
                }
            }
            AfterReuse::Shun => "where it was before is unknown".to_string(),
        };
        error!(
            "{label}: pid {pid} was reused while it was moved into cgroup {}: process {pid} is not the one checked and stays in it ({why}); it will not be signalled",
            dir.display()
        );
        let Some((_, identity)) = opened else {
            return;
        };
        if let Some(hold) = self
            .bindings
            .get_mut(id)
            .and_then(|b| b.scope.as_mut())
            .and_then(|s| s.cgroup.as_mut())
        {
            hold.strangers.push((pid, identity.start));
        }
    }

    /// Every process in a binding's cgroup now, each held by a handle and
    /// proven a member: its `/proc/<pid>/cgroup`, read while the handle is
    /// held, names the cgroup, and it was alive after the read.
    fn cgroup_members(&mut self, id: BindingId) -> Vec<Member<B::Handle>> {
        let Some(dir) = self.cgroup_dir(id) else {
            return Vec::new();
        };
        let Ok(place) = &self.cgroups.place else {
            return Vec::new();
        };
        let relative = match dir.strip_prefix(&place.mount) {
            Ok(r) => format!("/{}", r.display()),
            Err(_) => return Vec::new(),
        };
        let pids = match cg::pids(&dir) {
            Ok(pids) => pids,
            Err(e) => {
                warn!("cannot read {}/cgroup.procs: {e}", dir.display());
                return Vec::new();
            }
        };
        let strangers = self.cgroup_strangers(id);
        let mut out = Vec::with_capacity(pids.len());
        for pid in pids {
            let Ok(pid) = Pid::try_from(i64::from(pid)) else {
                continue;
            };
            let Ok((handle, identity)) = self.watcher.open(pid) else {
                continue;
            };
            if strangers.contains(&(pid, identity.start)) {
                continue;
            }
            let member = cg::cgroup_of(pid.get()).ok().flatten().as_deref() == Some(&relative);
            let alive = matches!(self.watcher.entry(pid, &handle), Ok(Some(e)) if e.start == identity.start);
            if member && alive {
                out.push(Member { pid, handle });
            }
        }
        out
    }

    /// The cgroup directory of a binding, if it has one.
    fn cgroup_dir(&self, id: BindingId) -> Option<PathBuf> {
        self.bindings
            .get(id)
            .and_then(|b| b.scope.as_ref())
            .and_then(|s| s.cgroup.as_ref())
            .map(|h| h.dir.clone())
    }

    /// The strangers a binding's cgroup holds (see [`Hold::strangers`]).
    fn cgroup_strangers(&self, id: BindingId) -> Vec<(Pid, u64)> {
        self.bindings
            .get(id)
            .and_then(|b| b.scope.as_ref())
            .and_then(|s| s.cgroup.as_ref())
            .map(|h| h.strangers.clone())
            .unwrap_or_default()
    }

    /// The cgroups live bindings hold.
    fn held_cgroups(&self) -> HashSet<PathBuf> {
        self.bindings
            .iter()
            .filter_map(|(_, b)| b.scope.as_ref()?.cgroup.as_ref().map(|h| h.dir.clone()))
            .collect()
    }

    /// Whether a binding's cgroup still has a process (`false` without
    /// one). A cgroup that cannot be read counts as populated: the
    /// binding is not ended on a guess.
    pub(super) fn cgroup_populated(&self, id: BindingId) -> bool {
        self.cgroup_dir(id)
            .is_some_and(|dir| cg::populated(&dir).unwrap_or(true))
    }

    /// Whether a binding is a cgroup binding.
    pub(super) fn is_cgroup(&self, id: BindingId) -> bool {
        self.bindings
            .get(id)
            .is_some_and(|b| b.spec.kill == KillMode::Cgroup)
    }

    /// The parent of a cgroup binding is gone: the binding's signal to
    /// every member, then the grace period (or the end, if it is empty).
    pub(super) fn cgroup_fire(&mut self, id: BindingId, exit_learned: Option<Instant>) {
        let admin = nix::unistd::geteuid().as_raw();
        let members = self.cgroup_members(id);
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        if let Some(parent) = binding.parent.take() {
            let _ = self
                .watcher
                .deregister(self.poll.registry(), &parent.handle);
        }
        let label = binding.label();
        let sig = binding.spec.signal;
        let parent_pid = binding.spec.parent.pid;
        let deputy_for = binding.deputy_for(admin);
        let member_pids: HashSet<Pid> = members.iter().map(|m| m.pid).collect();
        // A bound child moved out of the cgroup by someone else is still
        // the binding's: it is signalled through its own handle.
        let outside = binding
            .children
            .iter()
            .flatten()
            .filter(|c| !member_pids.contains(&c.pid));
        let mut sent = Vec::new();
        for member in members.iter().chain(outside) {
            match Self::deliver(&self.watcher, deputy_for, member, sig) {
                Outcome::Sent => sent.push(member.pid),
                Outcome::Exited | Outcome::Gone => {}
                Outcome::Refused(why) => warn!(
                    "{label}: {} not signalled: {why}, and uid {} may not signal it",
                    member.pid,
                    deputy_for.unwrap_or(0)
                ),
                Outcome::Failed(err) => {
                    error!("{label}: cannot send {sig} to {}: {err}", member.pid)
                }
            }
        }
        let signalled_at = Instant::now();
        info!(
            "{label}: parent {parent_pid} exited; sent {sig} to {} processes of its cgroup",
            sent.len()
        );
        let subject = Subject::of(binding);
        self.feed
            .emit(Some(&subject), What::ParentExited { parent: parent_pid });
        if let (Some(learned), false) = (exit_learned, sent.is_empty()) {
            self.feed
                .metrics
                .observe_delay(signalled_at.saturating_duration_since(learned));
        }
        for pid in sent {
            self.feed
                .emit(Some(&subject), What::Signalled { pid, signal: sig });
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
        if !self.cgroup_populated(id) {
            self.finish(id);
        }
    }

    /// The grace is over: the whole cgroup is killed. A root binding
    /// writes `cgroup.kill`; a user's binding (each member checked
    /// against the user) and a kernel without `cgroup.kill` freeze the
    /// cgroup, SIGKILL each proven member, and thaw it.
    pub(super) fn cgroup_escalate(&mut self, id: BindingId) {
        let admin = nix::unistd::geteuid().as_raw();
        let Some(dir) = self.cgroup_dir(id) else {
            return;
        };
        let Some(binding) = self.bindings.get(id) else {
            return;
        };
        let label = binding.label();
        let grace = binding.spec.grace;
        let deputy_for = binding.deputy_for(admin);
        let has_kill = self.cgroups.place.as_ref().is_ok_and(|p| p.has_kill);
        let strangers = !self.cgroup_strangers(id).is_empty();
        if deputy_for.is_none() && has_kill && !strangers {
            match cg::kill(&dir) {
                Ok(()) => info!(
                    "{label}: grace {grace} over; cgroup {} killed",
                    dir.display()
                ),
                Err(e) => error!("{label}: cannot kill cgroup {}: {e}", dir.display()),
            }
        } else {
            if let Err(e) = cg::freeze(&dir, true) {
                warn!("{label}: cannot freeze cgroup {}: {e}", dir.display());
            }
            let members = self.cgroup_members(id);
            let mut sent = Vec::new();
            for member in &members {
                match Self::deliver(&self.watcher, deputy_for, member, Signal::KILL) {
                    Outcome::Sent => sent.push(member.pid),
                    Outcome::Refused(why) => {
                        warn!("{label}: {} not killed: {why}", member.pid)
                    }
                    Outcome::Failed(err) => {
                        error!("{label}: cannot send SIGKILL to {}: {err}", member.pid)
                    }
                    Outcome::Exited | Outcome::Gone => {}
                }
            }
            if let Err(e) = cg::freeze(&dir, false) {
                error!("{label}: cannot thaw cgroup {}: {e}", dir.display());
            }
            info!(
                "{label}: grace {grace} over; sent SIGKILL to {} processes of its frozen cgroup",
                sent.len()
            );
            if let Some(binding) = self.bindings.get(id) {
                let subject = Subject::of(binding);
                for pid in sent {
                    self.feed.emit(
                        Some(&subject),
                        What::Signalled {
                            pid,
                            signal: Signal::KILL,
                        },
                    );
                }
            }
        }
        let Some(binding) = self.bindings.get_mut(id) else {
            return;
        };
        // A bound child moved out of the cgroup gets its SIGKILL too.
        for child in binding.children.iter().flatten() {
            let _ = Self::deliver(&self.watcher, deputy_for, child, Signal::KILL);
        }
        binding.phase = Phase::Killed;
        if !self.cgroup_populated(id) {
            self.finish(id);
        }
    }

    /// A bound child of a cgroup binding exited and none is left: the
    /// binding ends only once its cgroup is empty too (a captive that
    /// daemonized lives on in it, still bound to the parent).
    pub(super) fn cgroup_child_gone(&mut self, id: BindingId) {
        if self.cgroup_populated(id) {
            if let Some(binding) = self.bindings.get(id) {
                if binding.phase == Phase::Armed {
                    info!(
                        "{}: its cgroup lives on after its bound children; it stays bound to the parent",
                        binding.label()
                    );
                }
            }
            return;
        }
        self.finish(id);
    }

    /// The inotify descriptor is readable: a cgroup's `cgroup.events`
    /// changed. A cgroup found empty ends its binding, unless the binding
    /// still holds a live bound child (moved out by someone else).
    pub(super) fn cgroup_event(&mut self) {
        let wds = match &self.cgroups.watcher {
            Some(watcher) => watcher.drain(),
            None => return,
        };
        let mut ids: Vec<BindingId> = wds
            .iter()
            .filter_map(|wd| self.cgroups.wds.get(wd).copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if self.cgroup_populated(id) {
                continue;
            }
            let Some(binding) = self.bindings.get(id) else {
                continue;
            };
            if binding.phase == Phase::Armed && binding.n_live_children() > 0 {
                continue;
            }
            if binding.phase != Phase::Done {
                info!("{}: its cgroup is empty", binding.label());
                self.finish(id);
            }
        }
    }

    /// Takes a binding's cgroup out of it and removes the cgroup (if it is
    /// empty; otherwise it stays, and is logged).
    pub(super) fn cgroup_release(&mut self, binding: &mut Binding<B::Handle>) {
        let hold = binding.scope.as_mut().and_then(|s| s.cgroup.take());
        if let Some(hold) = hold {
            let label = binding.label();
            self.cgroups.drop_hold(hold, &label);
        }
    }

    /// At start, after the bindings are restored: removes the empty
    /// `b<id>` cgroups under the root and its `u<uid>` parents that no
    /// binding holds (the `u<uid>` parents stay, with any limits an
    /// administrator set on them) (left by a
    /// crash, or by a configured binding before a restart), and names the
    /// ones that still have processes.
    pub(super) fn cgroup_sweep(&mut self) {
        let Ok(place) = &self.cgroups.place else {
            return;
        };
        let Ok(mut found) = cg::children(&place.root) else {
            return;
        };
        for user in cg::user_parents(&place.root).unwrap_or_default() {
            found.extend(cg::children(&user).unwrap_or_default());
        }
        let held = self.held_cgroups();
        for (_, dir) in found.into_iter().filter(|(_, d)| !held.contains(d)) {
            match cg::populated(&dir) {
                Ok(false) => match cg::remove(&dir) {
                    Ok(()) => info!("stray empty cgroup {} removed", dir.display()),
                    Err(e) => warn!("stray cgroup {} not removed: {e}", dir.display()),
                },
                Ok(true) => warn!(
                    "cgroup {} has processes but no binding; left in place",
                    dir.display()
                ),
                Err(_) => {}
            }
        }
    }
}

/// `dir` as `/proc/<pid>/cgroup` names it: relative to the mount, with a
/// leading slash.
fn relative_to(dir: &Path, mount: &Path) -> Option<String> {
    dir.strip_prefix(mount)
        .ok()
        .map(|r| format!("/{}", r.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stranger_that_reused_the_pid_is_moved_back_or_shunned() {
        let into = "/tether/b7";
        // Not in the cgroup: the write hit nobody, or it already left.
        assert_eq!(
            after_reuse(Some("/user.slice"), into, Some("/user.slice")),
            AfterReuse::Nothing
        );
        assert_eq!(
            after_reuse(None, into, Some("/user.slice")),
            AfterReuse::Nothing
        );
        // In it: back to where the pid was read to be before the write.
        assert_eq!(
            after_reuse(Some(into), into, Some("/user.slice/session-2.scope")),
            AfterReuse::MoveBack("/user.slice/session-2.scope")
        );
        // In it, and where it was is unknown (or was the cgroup itself):
        // it stays and is never signalled.
        assert_eq!(after_reuse(Some(into), into, None), AfterReuse::Shun);
        assert_eq!(after_reuse(Some(into), into, Some(into)), AfterReuse::Shun);
        assert_eq!(
            relative_to(
                Path::new("/sys/fs/cgroup/tether/b7"),
                Path::new("/sys/fs/cgroup")
            ),
            Some(into.to_string())
        );
    }
}
