//! One integration binary: every test runs the real `tetherd` against real
//! processes. Modules follow behaviours: `orphan` (what happens when a
//! parent exits), `lifecycle` (start, stop, files, limits), `reload`
//! (SIGHUP), `check` (configuration errors through the binary), `reuse`
//! (pid reuse in a fresh pid namespace), `backends` (the fallback from
//! pidfd to netlink to poll), `control` and `exec` (the socket and
//! tetherctl), `kill_modes` (group and tree), `pidfile`, `scale`,
//! `torture`; and what a hostile local user tries: `hostile` (descriptors,
//! memory, budgets, deputies), `trust` (planted files and sockets),
//! `names` and `comm_names` (names that could fake log lines, program names
//! cut mid-letter), `descriptors` (a daemon out of descriptors),
//! `log_size`, `service` (what the shipped unit needs).
//!
//! The README's test command runs this binary once per Linux backend
//! (`TETHER_TEST_BACKEND=pidfd|netlink|poll`); see `util::backend`.

// Tests may panic, unwrap and index: a failed expectation is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod util;

// Everywhere: configuration checks and the core behaviours, with only
// std, nix and ps (these are what the macOS and FreeBSD CI jobs run).
mod check;
mod corpus;
mod portable;
mod readiness;

// Linux only: they read /proc, use pid namespaces, seccomp, setpriv.
#[cfg(target_os = "linux")]
mod backends;
#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod comm_names;
#[cfg(target_os = "linux")]
mod control;
#[cfg(target_os = "linux")]
mod descriptors;
#[cfg(target_os = "linux")]
mod events;
#[cfg(target_os = "linux")]
mod exec;
#[cfg(target_os = "linux")]
mod hostile;
#[cfg(target_os = "linux")]
mod journal;
#[cfg(target_os = "linux")]
mod kill_modes;
#[cfg(target_os = "linux")]
mod lifecycle;
#[cfg(target_os = "linux")]
mod loads;
#[cfg(target_os = "linux")]
mod log_size;
#[cfg(target_os = "linux")]
mod names;
#[cfg(target_os = "linux")]
mod orphan;
#[cfg(target_os = "linux")]
mod packaging;
#[cfg(target_os = "linux")]
mod pidfile;
#[cfg(target_os = "linux")]
mod reload;
#[cfg(target_os = "linux")]
mod reuse;
#[cfg(target_os = "linux")]
mod rules;
#[cfg(target_os = "linux")]
mod scale;
#[cfg(target_os = "linux")]
mod service;
#[cfg(target_os = "linux")]
mod torture;
#[cfg(target_os = "linux")]
mod trust;
