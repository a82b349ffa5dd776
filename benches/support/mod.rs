//! What both benchmarks need: a real tetherd in a temporary directory,
//! ready once its loop answers a `status` request.

pub mod probe;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tetherd binary being measured.
pub const TETHERD: &str = env!("CARGO_BIN_EXE_tetherd");

/// The watch backends of this host that `--list-backends` calls usable,
/// best first, limited to those named in `--backends a,b` if given.
#[allow(dead_code)] // the latency benchmark's
pub fn usable_backends() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    let wanted: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--backends")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let out = Command::new(TETHERD)
        .arg("--list-backends")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(" usable"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|b| wanted.as_ref().map_or(true, |w| w.contains(b)))
        .collect()
}

/// The number after `--name` on the benchmark's command line, or
/// `default`.
#[allow(dead_code)] // not the load benchmark's
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running tetherd; stopped with SIGTERM when dropped.
pub struct Tetherd {
    child: Child,
    /// Its control socket.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tetherd {
    /// Starts tetherd on a config of `[daemon] log = "warn"`, no per-uid
    /// cap to speak of, and `bindings` (TOML appended as is), and waits
    /// until its configuration is applied: the socket is served while it
    /// loads, and a `status` says `loading` until it is done.
    #[allow(dead_code)] // the control benchmark's
    pub fn start(bindings: &str) -> Tetherd {
        Tetherd::start_on(None, bindings)
    }

    /// Like [`Tetherd::start`], on the watch backend named (`None`: auto).
    pub fn start_on(backend: Option<&str>, bindings: &str) -> Tetherd {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tether.toml");
        let text = format!("[daemon]\nlog = \"warn\"\nmax_bindings_per_uid = 1000000\n{bindings}");
        std::fs::write(&config, text).unwrap();
        let socket = dir.path().join("tether.sock");
        let child = Command::new(TETHERD)
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(dir.path().join("state.json"))
            .arg("--socket")
            .arg(&socket)
            .args(backend.map(|b| ["--backend", b]).into_iter().flatten())
            .env_remove("RUST_LOG")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Ok(mut stream) = UnixStream::connect(&socket) {
                stream.write_all(b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_ok()
                    && line.contains("\"ok\":true")
                    && !line.contains("\"loading\"")
                {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "tetherd did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Tetherd {
            child,
            socket,
            _dir: dir,
        }
    }

    /// Rewrites its configuration with `bindings` and has it reloaded over
    /// the socket; returns once the reload is applied.
    #[allow(dead_code)] // the proof benchmark's
    pub fn reload_with(&self, bindings: &str) {
        let text = format!("[daemon]\nlog = \"warn\"\nmax_bindings_per_uid = 1000000\n{bindings}");
        std::fs::write(self._dir.path().join("tether.toml"), text).unwrap();
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream.write_all(b"{\"v\":1,\"op\":\"reload\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "reload: {line}");
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }
}

impl Drop for Tetherd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
