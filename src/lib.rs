//! tether: tie a process's life to another's.
//!
//! `tetherd` watches parent processes and, when one exits, signals the
//! children bound to it, escalating to SIGKILL after a grace period. This
//! crate holds everything the binaries share, in modules private to it:
//!
//! - `vocab`: the shared vocabulary (pid, signal, grace, kill mode,
//!   backend, process spec); imports nothing of ours.
//! - `config`: TOML text to a validated model (no system calls).
//! - `watch`: the per-OS process watcher behind one small trait.
//! - `daemon`: the mio event loop that owns bindings, timers, signals and
//!   the control socket.
//! - `protocol`: the JSON-lines control protocol (tetherd and tetherctl).
//! - `notify`: readiness for supervisors (`--ready-fd`, `NOTIFY_SOCKET`).
//! - `sys`: every `unsafe` call, one per block.
//! - `paths`: default file locations.
//!
//! What the binaries, the tests and the fuzzers use is re-exported below,
//! by name; everything else is the crate's own, so rustc reports what no
//! one uses.

#[cfg(not(any(linux_like, bsd_like)))]
compile_error!("tether supports Linux, macOS and the BSDs only");

mod config;
mod daemon;
mod notify;
mod paths;
mod protocol;
mod sys;
mod vocab;
mod watch;

#[cfg(test)]
mod fuzz;

pub use config::{
    escape_name, name_for_program, parse as parse_config, parse_duration, parse_kill,
    parse_poll_interval, parse_signal, Config, PidSource, Trust,
};
pub use daemon::{pidfile, run, ConfigSource, Failure, Options, StateFile};
pub use notify::Notifier;
pub use paths::{default_config, default_socket};
pub use protocol::{
    escape_controls, BindRequest, BindingInfo, Op, ProcRef, Request, Response, VERSION,
};
pub use sys::cgroup::{locate as locate_cgroups, Place as CgroupPlace};
pub use sys::{
    arm_parent_death_signal, inherited_fd, peer_credentials, process_descriptor, send_with_fds,
};
pub use vocab::BackendKind;
pub use watch::{
    probe as probe_backends, start_time as process_start_time, Settings as WatchSettings,
};
