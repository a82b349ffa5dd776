//! tether: tie a process's life to another's.
//!
//! `tetherd` watches parent processes and, when one exits, signals the
//! children bound to it, escalating to SIGKILL after a grace period. This
//! crate holds everything the binaries share:
//!
//! - [`config`]: TOML text to a validated model (no system calls).
//! - [`watch`]: the per-OS process watcher behind one small trait.
//! - [`daemon`]: the mio event loop that owns bindings, timers, signals and
//!   the control socket.
//! - [`protocol`]: the JSON-lines control protocol (tetherd and tetherctl).
//! - [`notify`]: readiness for supervisors (`--ready-fd`, `NOTIFY_SOCKET`).
//! - [`sys`]: every `unsafe` call, one per block.
//! - [`paths`]: default file locations.

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
)))]
compile_error!("tether supports Linux, macOS and the BSDs only");

pub mod config;
pub mod daemon;
pub mod notify;
pub mod paths;
pub mod protocol;
pub mod sys;
pub mod vocab;
pub mod watch;

#[cfg(test)]
mod fuzz;
