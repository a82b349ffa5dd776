//! Telling a supervisor that tetherd is ready, without depending on one.
//!
//! Two conventions, both optional and both written by hand:
//!
//! - s6's notification descriptor (`tetherd --ready-fd N`, also what
//!   runit-style supervisors and `s6-svscan`'s `notification-fd` use): a
//!   newline is written to descriptor N once the configuration read at
//!   start is applied (the loop serves the socket while it is), and N is
//!   closed.
//! - systemd's `sd_notify`, when `NOTIFY_SOCKET` is set: `READY=1`
//!   datagrams to that socket (the first once the configuration read at
//!   start is applied), `RELOADING=1` with `MONOTONIC_USEC` before each
//!   reload and `READY=1` once it is applied or refused (after the last of
//!   reloads that overlap), `STOPPING=1` on the way out, and
//!   a `STATUS=` line. A few lines over a Unix datagram socket; no
//!   libsystemd. The shipped unit is `Type=notify` (systemd before 253,
//!   as in Debian 12, does not know `Type=notify-reload`) and reloads with
//!   `ExecReload=tetherctl reload`, which waits for the daemon's answer:
//!   systemd ignores `RELOADING=1` during that job. A SIGHUP sent by hand
//!   makes systemd show the unit "reloading" from `RELOADING=1` until the
//!   `READY=1` that ends the reload.
//!
//! Failures are logged and never stop the daemon: a supervisor that
//! misses readiness is its problem to time out on, not a reason to leave
//! bindings unwatched.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use log::{debug, warn};

/// Where readiness goes.
#[derive(Debug, Default)]
pub struct Notifier {
    ready_fd: Option<OwnedFd>,
    socket: Option<String>,
}

impl Notifier {
    /// `ready_fd` from `--ready-fd`; the socket from `NOTIFY_SOCKET`.
    pub fn new(ready_fd: Option<OwnedFd>) -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        Notifier { ready_fd, socket }
    }

    /// The configuration is applied: tell whoever waits.
    pub fn ready(&mut self, status: &str) {
        if let Some(fd) = self.ready_fd.take() {
            let mut file = std::fs::File::from(fd);
            match file.write_all(b"\n") {
                Ok(()) => debug!("readiness written to the notification descriptor"),
                Err(err) => warn!("cannot write readiness to --ready-fd: {err}"),
            }
            // Dropping `file` closes the descriptor, as s6 expects.
        }
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload begins (`MONOTONIC_USEC` is what `Type=notify-reload`
    /// wants on systemd 253 and later).
    pub fn reloading(&mut self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The daemon stops.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1");
    }

    fn send(&mut self, message: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        if let Err(err) = send_datagram(socket, message.as_bytes()) {
            warn!("cannot notify the service manager at NOTIFY_SOCKET={socket}: {err}");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as sd_notify's `MONOTONIC_USEC` wants.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            let sec = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nsec = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            sec.saturating_mul(1_000_000).saturating_add(nsec / 1000)
        })
        .unwrap_or(0)
}

/// One datagram to `address`: a path, or `@name` for Linux's abstract
/// namespace.
fn send_datagram(address: &str, bytes: &[u8]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = address.strip_prefix('@') {
        return crate::sys::send_to_abstract(&socket, name.as_bytes(), bytes);
    }
    socket.send_to(bytes, PathBuf::from(address))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_writes_a_newline_and_closes_the_descriptor() {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        let mut notifier = Notifier {
            ready_fd: Some(writer),
            socket: None,
        };
        notifier.ready("test");
        // The write end is closed, so reading ends after the newline.
        let mut got = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(reader), &mut got).expect("read");
        assert_eq!(got, "\n");
        // A second ready writes nothing more and does not fail.
        notifier.ready("again");
    }

    #[test]
    fn sd_notify_datagrams_reach_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let mut notifier = Notifier {
            ready_fd: None,
            socket: Some(path.display().to_string()),
        };
        notifier.ready("3 bindings");
        notifier.reloading();
        notifier.stopping();
        let mut buf = [0u8; 256];
        let mut next = || {
            let n = listener.recv(&mut buf).expect("recv");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(next(), "READY=1\nSTATUS=3 bindings");
        assert!(next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
        assert_eq!(next(), "STOPPING=1");
    }
}
