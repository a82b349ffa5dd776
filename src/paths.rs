//! Where tether's files live by default: the system locations as root,
//! the XDG base directories otherwise.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `$VAR` if it is an absolute path, else `$HOME/fallback`, else `last`.
fn xdg(var: &str, home_relative: &str, last: PathBuf) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h: &OsString| !h.is_empty())
                .map(|home| Path::new(&home).join(home_relative))
        })
        .unwrap_or(last)
}

/// `/etc/tether/tether.toml` as root, `$XDG_CONFIG_HOME/tether/tether.toml`
/// (default `~/.config`) otherwise.
pub fn default_config() -> PathBuf {
    if is_root() {
        return PathBuf::from("/etc/tether/tether.toml");
    }
    xdg("XDG_CONFIG_HOME", ".config", PathBuf::from("/nonexistent")).join("tether/tether.toml")
}

/// `/var/lib/tether/state.json` as root, `$XDG_STATE_HOME/tether/state.json`
/// (default `~/.local/state`) otherwise.
pub fn default_state() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/tether/state.json");
    }
    let uid = nix::unistd::geteuid();
    xdg(
        "XDG_STATE_HOME",
        ".local/state",
        PathBuf::from(format!("/tmp/tether-{uid}")),
    )
    .join("tether/state.json")
}

/// `/run/tether/tether.sock` as root, `$XDG_RUNTIME_DIR/tether/tether.sock`
/// otherwise (`/tmp/tether-UID/tether.sock` without a runtime directory).
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/tether/tether.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("tether/tether.sock"),
        _ => PathBuf::from(format!(
            "/tmp/tether-{}/tether.sock",
            nix::unistd::geteuid()
        )),
    }
}
