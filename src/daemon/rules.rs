//! Rules: `[[rule]]`s bind the processes that exec a named executable to
//! their launcher as they start.
//!
//! The exec source (`watch::exec`) is fanotify when the kernel allows it:
//! `FAN_OPEN_EXEC_PERM` marked on the inode of every file a rule's `exec`
//! names now (globs are expanded at load and at each reload: a file
//! created later is marked by the next reload), so the exec waits until
//! this room has made the binding, and the program's first instruction
//! runs bound. Each exec is handled synchronously in the loop: the
//! captive is taken from the event's pidfd, its launcher found and proven
//! (its parent by `/proc/PID/stat`, opened, then the captive's parent
//! read again: unchanged, so the handle is the parent), the binding made
//! through the ordinary path (`insert`: proof, budget, registration), and
//! then every exec read is allowed, on every path, errors included. A
//! process that cannot be proven runs unbound and the log says why.
//!
//! The answers go out at the end of the loop iteration, after the commit
//! wrote the bindings made to the state file (one write and one fdatasync
//! a turn, shared with the socket's binds): the captive's first
//! instruction runs with its binding durable. A write that fails is
//! logged and the execs are allowed anyway (never denied); the write is
//! retried at the next turn.
//!
//! Rule bindings are named `RULE:PID`, listed with their rule, counted per
//! rule in `status`, kept in the state file like socket bindings (with
//! their origin and rule, the launcher's uid as theirs) until done, and
//! restored at start with the same re-verification.

use super::*;

use crate::config::{glob_matches, is_glob, LauncherMatch, RuleSource, RuleSpec};
use crate::watch::exec::{self, Exec, ExecWatch, FileKey};

/// How far up the process tree `launcher_match = "ancestor"` looks.
const MAX_ANCESTORS: usize = 64;

/// The rules in force and their exec source.
#[derive(Debug, Default)]
pub(super) struct Rules {
    specs: Vec<RuleSpec>,
    /// Which rules (indexes into `specs`) each marked executable serves.
    by_file: HashMap<FileKey, Vec<usize>>,
    watch: Option<ExecWatch>,
    /// The source the configuration asks for.
    wanted: RuleSource,
    /// Why no source is open while rules exist.
    unavailable: Option<String>,
    /// Processes bound per rule name since the rule came into force.
    matches: HashMap<String, u64>,
    /// Whether the source may hold more execs than the last turn read.
    more: bool,
}

impl Rules {
    /// Whether execs may be left for the next turn of the loop.
    pub(super) fn has_more(&self) -> bool {
        self.more && self.watch.is_some()
    }

    /// Allows every exec read and not yet answered. Called by the commit
    /// after the state file's write (one fdatasync a turn, shared with the
    /// socket's binds), so a captive's first instruction runs with its
    /// binding on disk: a tetherd that crashes then restores it.
    pub(super) fn allow_execs(&mut self) {
        if let Some(watch) = self.watch.as_mut() {
            watch.allow_pending();
        }
    }

    /// The source in use (`fanotify`, `connector`), `none (why)` when rules
    /// exist without one, `None` without rules.
    pub(super) fn source(&self) -> Option<String> {
        if self.specs.is_empty() {
            return None;
        }
        Some(match (&self.watch, &self.unavailable) {
            (Some(watch), _) => watch.name().to_string(),
            (None, Some(why)) => format!("none ({why})"),
            (None, None) => "none".to_string(),
        })
    }

    /// Each rule's name and how many processes it bound, in file order.
    pub(super) fn counts(&self) -> Vec<(String, u64)> {
        self.specs
            .iter()
            .map(|rule| {
                let n = self.matches.get(&rule.name).copied().unwrap_or(0);
                (rule.name.clone(), n)
            })
            .collect()
    }
}

/// The executables a rule's `exec` names now: the file itself, or every
/// regular, executable file of the directory whose name matches.
pub(super) fn resolve(rule: &RuleSpec) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |meta: &std::fs::Metadata| meta.is_file() && meta.permissions().mode() & 0o111 != 0;
    let path = std::path::Path::new(&rule.exec);
    if !is_glob(&rule.exec) {
        let meta =
            std::fs::metadata(path).map_err(|err| format!("cannot use {:?}: {err}", rule.exec))?;
        if !executable(&meta) {
            return Err(format!("{:?} is not an executable file", rule.exec));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let entries =
        std::fs::read_dir(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|file| glob_matches(&rule.exec, &file.to_string_lossy()))
        .filter(|file| std::fs::metadata(file).is_ok_and(|meta| executable(&meta)))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no executable file matches {:?} now (a rule's files are found at load and at each reload)",
            rule.exec
        ));
    }
    Ok(files)
}

/// Refuses a configuration with a rule whose `exec` names no executable
/// (each error at the rule's `exec`).
pub(super) fn check_files(config: Config, path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let errors: Vec<config::ConfigError> = config
        .rules
        .iter()
        .filter_map(|rule| {
            resolve(rule).err().map(|message| config::ConfigError {
                path: path.to_path_buf(),
                position: Some(rule.exec_at),
                context: Some(rule.label()),
                field: Some("exec".into()),
                message,
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

impl<B: Backend> Daemon<B> {
    /// Makes `specs` the rules in force: the difference is logged, the
    /// marks follow the files the rules name now.
    pub(super) fn apply_rules(&mut self, specs: Vec<RuleSpec>, wanted: RuleSource) {
        let old = std::mem::take(&mut self.rules.specs);
        let unchanged = specs
            .iter()
            .filter(|new| old.iter().any(|rule| rule.same_as(new)))
            .count();
        let (added, removed) = (specs.len() - unchanged, old.len() - unchanged);
        if added + removed > 0 {
            info!("rules: {added} added, {removed} removed, {unchanged} unchanged");
        }
        // Counts go on for unchanged rules only.
        self.rules.matches.retain(|name, _| {
            specs
                .iter()
                .any(|rule| &rule.name == name && old.iter().any(|o| o.same_as(rule)))
        });
        self.rules.specs = specs;
        self.rules.by_file.clear();
        if self.rules.specs.is_empty() {
            // Closing the group removes its marks (and allows anything
            // pending).
            self.rules.watch = None;
            self.rules.unavailable = None;
            return;
        }
        if self.rules.watch.is_some() && self.rules.wanted != wanted {
            warn!(
                "[daemon] rule_source changed from {} to {wanted}; reopening the exec source",
                self.rules.wanted
            );
            self.rules.watch = None;
        }
        self.rules.wanted = wanted;
        if self.rules.watch.is_none() {
            self.open_exec_source();
        }
        let Some(watch) = self.rules.watch.as_mut() else {
            return;
        };
        let mut files: Vec<PathBuf> = Vec::new();
        let mut served: Vec<(PathBuf, usize)> = Vec::new();
        for (idx, rule) in self.rules.specs.iter().enumerate() {
            match resolve(rule) {
                Ok(found) => {
                    for file in found {
                        if !files.contains(&file) {
                            files.push(file.clone());
                        }
                        served.push((file, idx));
                    }
                }
                Err(why) => error!(
                    "{}: {why}; the rule binds nothing until a reload finds it",
                    rule.label()
                ),
            }
        }
        let (keys, failed) = watch.set_files(&files);
        for (file, err) in failed {
            error!(
                "rules: cannot watch execs of {}: {err}; they run unbound",
                file.display()
            );
        }
        for (file, key) in keys {
            for (_, idx) in served.iter().filter(|(f, _)| *f == file) {
                let rules = self.rules.by_file.entry(key).or_default();
                if !rules.contains(idx) {
                    rules.push(*idx);
                }
            }
        }
        debug!(
            "rules: {} executables watched through {}",
            self.rules.by_file.len(),
            watch.name()
        );
    }

    /// Opens and registers the exec source the configuration asks for.
    fn open_exec_source(&mut self) {
        if !nix::unistd::geteuid().is_root() {
            let why = "rules need root (fanotify and the process connector are root's)".to_string();
            error!("rules: {why}; no rule is in force");
            self.rules.unavailable = Some(why);
            return;
        }
        match ExecWatch::open(self.rules.wanted) {
            Ok(mut watch) => match watch.register(self.poll.registry(), RULES_TOKEN) {
                Ok(()) => {
                    info!("rules: execs are learnt through {}", watch.name());
                    self.rules.unavailable = None;
                    self.rules.watch = Some(watch);
                }
                Err(err) => {
                    error!("rules: cannot register the exec source with the event loop: {err}; no rule is in force");
                    self.rules.unavailable = Some(err.to_string());
                }
            },
            Err(err) => {
                error!("rules: no exec source: {err}; no rule is in force");
                self.rules.unavailable = Some(err.to_string());
            }
        }
    }

    /// The exec source is readable: handle every exec. They are allowed
    /// (whatever happened: nothing is ever denied) by the commit that ends
    /// this iteration, once the bindings made are durable
    /// ([`Rules::allow_execs`]).
    pub(super) fn rules_event(&mut self) {
        let Some(watch) = self.rules.watch.as_mut() else {
            return;
        };
        let (execs, more) = watch.read();
        self.rules.more = more;
        for exec in execs {
            self.rule_exec(exec);
        }
    }

    /// One exec of a marked executable: bind it by the first rule whose
    /// launcher is found, or say why not.
    fn rule_exec(&mut self, exec: Exec) {
        let Some(idxs) = self.rules.by_file.get(&exec.key).cloned() else {
            return;
        };
        let Ok(pid) = Pid::try_from(i64::from(exec.pid)) else {
            return;
        };
        if special_process(pid, None).is_err() {
            return;
        }
        let before = if self
            .rules
            .watch
            .as_ref()
            .is_some_and(|w| w.name() == "fanotify")
        {
            "before it runs"
        } else {
            "after its exec"
        };
        let already = self.bindings.iter().any(|(_, b)| {
            matches!(b.origin, Origin::Rule { .. })
                && b.phase == Phase::Armed
                && b.spec.children.first().is_some_and(|c| c.pid == pid)
        });
        if already {
            debug!("rules: pid {pid} execs a ruled executable again; its binding stays as it is");
            return;
        }
        let opened = match exec.pidfd {
            Some(pidfd) => self.watcher.adopt(pidfd, pid),
            None => self.watcher.open(pid),
        };
        let (handle, identity) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                warn!("rules: pid {pid} runs unbound: it cannot be proven ({err})");
                return;
            }
        };
        for idx in idxs {
            let Some(rule) = self.rules.specs.get(idx).cloned() else {
                continue;
            };
            match self.find_launcher(&rule, pid, &handle) {
                Ok(Some((launcher, launcher_id))) => {
                    self.bind_by_rule(
                        &rule,
                        Member { pid, handle },
                        identity,
                        launcher,
                        launcher_id,
                        before,
                    );
                    return;
                }
                Ok(None) => debug!(
                    "{}: pid {pid}: no launcher matches (parent {:?} runs {:?})",
                    rule.label(),
                    exec::parent_of(pid.get()),
                    exec::parent_of(pid.get()).ok().flatten().map(exec::exe_of)
                ),
                Err(why) => {
                    warn!("{}: pid {pid} runs unbound: {why}", rule.label());
                    return;
                }
            }
        }
    }

    /// The launcher of the exec'ing `pid` for `rule`, proven: each parent
    /// is opened, then its child's parent is read again and must be the
    /// same (a parent that died in between would have left its child to
    /// another), and its executable is read while it is still alive.
    #[allow(clippy::type_complexity)]
    fn find_launcher(
        &mut self,
        rule: &RuleSpec,
        pid: Pid,
        captive: &B::Handle,
    ) -> Result<Option<(Member<B::Handle>, Identity)>, String> {
        let mut child = pid.get();
        let mut held: Option<B::Handle> = None;
        for _ in 0..MAX_ANCESTORS {
            let read_parent = |of: i32| -> Result<i32, String> {
                exec::parent_of(of)
                    .map_err(|err| format!("cannot read the parent of {of}: {err}"))?
                    .ok_or_else(|| format!("{of} exited while its launcher was looked for"))
            };
            let ppid = read_parent(child)?;
            let Ok(parent) = Pid::try_from(i64::from(ppid)) else {
                return Ok(None);
            };
            if special_process(parent, None).is_err() {
                return Ok(None);
            }
            let (handle, identity) = match self.watcher.open(parent) {
                Ok(opened) => opened,
                Err(OpenError::Gone) => {
                    return Err(format!(
                        "its ancestor {ppid} exited while it was looked for"
                    ))
                }
                Err(err) => return Err(format!("its ancestor {ppid} cannot be opened ({err})")),
            };
            let child_handle = held.as_ref().unwrap_or(captive);
            if read_parent(child)? != ppid || self.watcher.has_exited(child_handle) {
                return Err(format!("the parent of {child} changed while it was read"));
            }
            let exe = exec::exe_of(ppid);
            if self.watcher.has_exited(&handle) {
                return Err(format!("its ancestor {ppid} exited while it was read"));
            }
            // A process without an executable (a kernel thread, such as
            // the kthreadd of a usermode helper) is never a launcher.
            let matches = match (&rule.launcher, &exe) {
                (None, Ok(_)) => true,
                (None, Err(_)) => false,
                (Some(pattern), Ok(exe)) => glob_matches(pattern, &exe.to_string_lossy()),
                (Some(_), Err(_)) => false,
            };
            if matches {
                return Ok(Some((
                    Member {
                        pid: parent,
                        handle,
                    },
                    identity,
                )));
            }
            if rule.launcher_match == LauncherMatch::Parent {
                return Ok(None);
            }
            child = ppid;
            held = Some(handle);
        }
        Ok(None)
    }

    /// Makes the binding of `captive` to `launcher` by `rule`.
    fn bind_by_rule(
        &mut self,
        rule: &RuleSpec,
        captive: Member<B::Handle>,
        captive_id: Identity,
        launcher: Member<B::Handle>,
        launcher_id: Identity,
        when: &str,
    ) {
        let (pid, ppid) = (captive.pid, launcher.pid);
        // On whose behalf: the launcher's user (root if it has root's
        // privileges, really or effectively).
        let uid = match self.watcher.owner(ppid, &launcher.handle) {
            Ok(Some(owner)) => match owner.uids {
                [0, _, _] | [_, 0, _] => 0,
                [real, _, _] => real,
            },
            Ok(None) => {
                warn!(
                    "{}: pid {pid} runs unbound: its launcher {ppid} exited while it was bound",
                    rule.label()
                );
                return;
            }
            Err(err) => {
                warn!("{}: pid {pid} runs unbound: the owner of its launcher {ppid} cannot be read ({err})", rule.label());
                return;
            }
        };
        let origin = Origin::Rule { uid };
        if self.budget.room(Self::budget_uid(origin)) < 2 {
            warn!(
                "{}: pid {pid} runs unbound: uid {uid} holds as many processes as it may",
                rule.label()
            );
            return;
        }
        let spec = BindingSpec {
            name: Some(format!("{}:{pid}", rule.name)),
            parent: ProcSpec {
                pid: ppid,
                start: Some(launcher_id.start),
                inode: launcher_id.inode,
            },
            children: vec![ProcSpec {
                pid,
                start: Some(captive_id.start),
                inode: captive_id.inode,
            }],
            signal: rule.signal,
            grace: rule.grace,
            kill: rule.kill,
        };
        let number = self.new_number();
        let label = bindings::label(&spec, origin, number);
        if self
            .insert(
                Rc::new(spec),
                origin,
                number,
                Some(launcher),
                vec![Some(captive)],
                &label,
            )
            .is_ok()
        {
            *self.rules.matches.entry(rule.name.clone()).or_insert(0) += 1;
            info!(
                "{label}: pid {pid} bound to its launcher {ppid} by {} {when}",
                rule.label()
            );
        }
    }
}
