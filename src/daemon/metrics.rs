//! Metrics in the Prometheus text exposition format: counters fed by the
//! events (`events`), gauges read when the text is made, and the delay
//! from a parent's exit to its children's signal. Served by the `metrics`
//! request and, with `[daemon] metrics_file`, written to a file for
//! node_exporter's textfile collector: through a temporary file in the
//! same directory and a rename, at most once a second and only after
//! something changed. A change waits for its write as an ordinary poll
//! deadline, so an idle daemon is never woken for it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::warn;

use super::bindings::Phase;
use super::events::{origin_name, What};
use super::requests::RefusalCode;
use super::Daemon;
use crate::watch::Backend;

/// The upper bounds of the delay histogram's buckets, in seconds.
const DELAY_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The file is written at most this often.
pub const FILE_INTERVAL: Duration = Duration::from_secs(1);

/// What the events counted, and the file's schedule.
#[derive(Debug)]
pub struct Metrics {
    /// Signals sent, by signal name.
    signals: BTreeMap<&'static str, u64>,
    escalations: u64,
    /// Refusals by code (every code, from 0).
    pub(super) refusals: BTreeMap<&'static str, u64>,
    /// Delay histogram: per bucket (not cumulative), then the sum and
    /// count.
    delay_buckets: [u64; DELAY_BUCKETS.len()],
    delay_sum: f64,
    delay_count: u64,
    /// Events readers lost because they fell behind.
    pub(super) events_dropped: u64,
    /// When the loop last woke.
    pub(super) woke: Instant,
    /// When the loop learned of the exit of the parent being fired.
    pub(super) exit_learned: Option<Instant>,
    /// `[daemon] metrics_file`.
    file: Option<PathBuf>,
    /// Whether anything changed since the file was written.
    changed: bool,
    written: Option<Instant>,
    /// The last write error, said once.
    failing: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            signals: BTreeMap::new(),
            escalations: 0,
            refusals: RefusalCode::ALL.iter().map(|c| (c.as_str(), 0)).collect(),
            delay_buckets: [0; DELAY_BUCKETS.len()],
            delay_sum: 0.0,
            delay_count: 0,
            events_dropped: 0,
            woke: Instant::now(),
            exit_learned: None,
            file: None,
            changed: true,
            written: None,
            failing: None,
        }
    }
}

impl Metrics {
    /// Counts what an event says.
    pub(super) fn count(&mut self, what: &What) {
        self.changed = true;
        match what {
            What::Signalled { signal, .. } => {
                *self.signals.entry(signal.get().as_str()).or_insert(0) += 1;
            }
            What::Escalated { .. } => self.escalations += 1,
            What::Refused { code, .. } => *self.refusals.entry(code.as_str()).or_insert(0) += 1,
            _ => {}
        }
    }

    /// Records the delay from the loop learning of a parent's exit to
    /// its children's signal.
    pub(super) fn observe_delay(&mut self, delay: Duration) {
        let secs = delay.as_secs_f64();
        if let Some(bucket) = DELAY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .and_then(|idx| self.delay_buckets.get_mut(idx))
        {
            *bucket += 1;
        }
        self.delay_sum += secs;
        self.delay_count += 1;
        self.changed = true;
    }

    /// Sets `[daemon] metrics_file` (at start and on reload).
    pub(super) fn set_file(&mut self, file: Option<PathBuf>) {
        if file != self.file {
            self.file = file;
            self.changed = true;
            self.written = None;
            self.failing = None;
        }
    }

    /// When the file is due to be written, if a change waits for it.
    pub(super) fn file_deadline(&self) -> Option<Instant> {
        if !self.changed || self.file.is_none() {
            return None;
        }
        Some(
            self.written
                .map_or_else(Instant::now, |at| at + FILE_INTERVAL),
        )
    }
}

/// The gauges, read when the text is made.
#[derive(Debug)]
struct Gauges {
    bindings: BTreeMap<(&'static str, String), u64>,
    fds_in_use: u64,
    fds_allowed: u64,
    subscribers: u64,
}

impl<B: Backend> Daemon<B> {
    /// The metrics, in the Prometheus text exposition format.
    pub(super) fn metrics_text(&self) -> String {
        let mut bindings = BTreeMap::new();
        for (_, b) in self.bindings.iter().filter(|(_, b)| b.phase != Phase::Done) {
            *bindings
                .entry((origin_name(b.origin), b.spec.kill.to_string()))
                .or_insert(0) += 1;
        }
        let gauges = Gauges {
            bindings,
            fds_in_use: crate::sys::count_open_fds().unwrap_or(0),
            fds_allowed: self.fd_limit,
            subscribers: u64::try_from(self.feed.n_subscribers()).unwrap_or(u64::MAX),
        };
        render(&self.feed.metrics, &gauges)
    }

    /// Writes the metrics file if something changed and the last write
    /// is a second old. Run at the end of each iteration.
    pub(super) fn write_metrics_if_due(&mut self) {
        let now = Instant::now();
        let m = &self.feed.metrics;
        if !m.changed || m.file.is_none() || m.written.is_some_and(|at| now < at + FILE_INTERVAL) {
            return;
        }
        let text = self.metrics_text();
        let metrics = &mut self.feed.metrics;
        let Some(path) = metrics.file.clone() else {
            return;
        };
        metrics.changed = false;
        metrics.written = Some(now);
        match write_file(&path, text.as_bytes()) {
            Ok(()) => metrics.failing = None,
            Err(err) => {
                let why = err.to_string();
                if metrics.failing.as_ref() != Some(&why) {
                    warn!(
                        "[daemon] metrics_file {}: cannot write it: {why}",
                        path.display()
                    );
                    metrics.failing = Some(why);
                }
            }
        }
    }
}

/// A label value, escaped as the format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    header(
        &mut out,
        "tether_bindings",
        "gauge",
        "Bindings held (not yet done), by origin and kill mode.",
    );
    for ((origin, kill), n) in &g.bindings {
        let _ = writeln!(
            out,
            "tether_bindings{{origin=\"{}\",kill=\"{}\"}} {n}",
            label(origin),
            label(kill)
        );
    }
    header(
        &mut out,
        "tether_signals_sent_total",
        "counter",
        "Signals sent to bound processes, by signal.",
    );
    for (signal, n) in &m.signals {
        let _ = writeln!(
            out,
            "tether_signals_sent_total{{signal=\"{}\"}} {n}",
            label(signal)
        );
    }
    header(
        &mut out,
        "tether_escalations_total",
        "counter",
        "Bindings whose grace ran out, so that SIGKILL followed.",
    );
    let _ = writeln!(out, "tether_escalations_total {}", m.escalations);
    header(
        &mut out,
        "tether_refusals_total",
        "counter",
        "Requests refused, by refusal code.",
    );
    for (code, n) in &m.refusals {
        let _ = writeln!(out, "tether_refusals_total{{code=\"{}\"}} {n}", label(code));
    }
    header(
        &mut out,
        "tether_descriptors_in_use",
        "gauge",
        "Descriptors the daemon has open.",
    );
    let _ = writeln!(out, "tether_descriptors_in_use {}", g.fds_in_use);
    header(
        &mut out,
        "tether_descriptors_limit",
        "gauge",
        "The daemon's descriptor limit (RLIMIT_NOFILE).",
    );
    let _ = writeln!(out, "tether_descriptors_limit {}", g.fds_allowed);
    header(
        &mut out,
        "tether_exit_to_signal_seconds",
        "histogram",
        "Time from the loop learning of a parent's exit to its children's signal.",
    );
    let mut cumulative = 0;
    for (le, n) in DELAY_BUCKETS.iter().zip(&m.delay_buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "tether_exit_to_signal_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "tether_exit_to_signal_seconds_bucket{{le=\"+Inf\"}} {}",
        m.delay_count
    );
    let _ = writeln!(out, "tether_exit_to_signal_seconds_sum {}", m.delay_sum);
    let _ = writeln!(out, "tether_exit_to_signal_seconds_count {}", m.delay_count);
    header(
        &mut out,
        "tether_event_readers",
        "gauge",
        "Connections reading the event stream.",
    );
    let _ = writeln!(out, "tether_event_readers {}", g.subscribers);
    header(
        &mut out,
        "tether_events_dropped_total",
        "counter",
        "Events dropped for readers that fell behind.",
    );
    let _ = writeln!(out, "tether_events_dropped_total {}", m.events_dropped);
    out
}

/// Replaces `path` with `bytes`: a new file beside it (an unpredictable
/// name, created exclusively, never through a symlink, not ending in
/// `.prom` so the collector ignores it), mode 0644 so the collector can
/// read it, then a rename. Not fsynced: metrics lost in a crash are
/// rewritten at the next change.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", unpredictable()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// 64 bits nobody outside the process can predict (the random keys std
/// draws from the OS for every `RandomState`).
fn unpredictable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_fall_into_cumulative_buckets() {
        let mut m = Metrics::default();
        m.observe_delay(Duration::from_micros(50));
        m.observe_delay(Duration::from_micros(700));
        m.observe_delay(Duration::from_secs(3));
        let g = Gauges {
            bindings: BTreeMap::new(),
            fds_in_use: 5,
            fds_allowed: 1024,
            subscribers: 0,
        };
        let text = render(&m, &g);
        assert!(text.contains("tether_exit_to_signal_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("tether_exit_to_signal_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("tether_exit_to_signal_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("tether_exit_to_signal_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("tether_exit_to_signal_seconds_count 3\n"));
        assert!(text.contains("tether_refusals_total{code=\"not_held\"} 0\n"));
    }

    #[test]
    fn the_file_is_replaced_whole_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.prom");
        write_file(&path, b"a 1\n").unwrap();
        write_file(&path, b"a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
