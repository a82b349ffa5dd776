//! The event stream (`tetherctl events`) and the metrics (`tetherctl
//! metrics`, `[daemon] metrics_file`): what a binding's life shows, who
//! sees what, a reader that never reads, and counters that move.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{
    ctl_as, root_and_test_user, users_sleeper, wait_until, Proc, TestDaemon, TETHERCTL, TIMEOUT,
};

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// The events `args` (`events --json` and more) prints, one JSON object
/// a line.
fn events_json(daemon: &TestDaemon) -> Vec<Value> {
    let (code, out, err) = daemon.ctl(&["events", "--json"]);
    assert_eq!(code, 0, "events failed: {err}");
    parse_lines(&out)
}

fn parse_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The events of binding `id`, in order.
fn of_binding(events: &[Value], id: u64) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["binding"]["id"] == id)
        .cloned()
        .collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `events --json` shows binding `id` unbound; returns its
/// events.
fn until_unbound(daemon: &TestDaemon, id: u64) -> Vec<Value> {
    let mut last = Vec::new();
    let done = wait_until(TIMEOUT, || {
        last = of_binding(&events_json(daemon), id);
        last.iter().any(|e| e["kind"] == "unbound")
    });
    assert!(
        done,
        "binding {id} never unbound: {last:?}\n{}",
        daemon.log_text()
    );
    last
}

#[test]
fn a_bindings_life_shows_in_order_with_pids_and_signal() {
    let daemon = TestDaemon::start("");
    // A follower from the start: it gets the recent events, then the new
    // ones as they happen.
    let mut follower = Command::new(TETHERCTL)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let id = daemon.bind(parent.pid(), &[child.pid()], &["--name", "life"]);
    parent.kill9();
    child.expect_signal(Some(SIGTERM), &daemon);
    let events = until_unbound(&daemon, id);
    assert_eq!(
        kinds(&events),
        [
            "bound",
            "parent_exited",
            "signalled",
            "child_exited",
            "unbound"
        ],
        "{events:?}"
    );
    let (p, c) = (parent.pid(), child.pid());
    assert_eq!(events[0]["parent"], p);
    assert_eq!(events[0]["children"], serde_json::json!([c]));
    assert_eq!(events[0]["binding"]["name"], "life");
    assert_eq!(events[0]["binding"]["origin"], "socket");
    assert_eq!(events[1]["parent"], p);
    assert_eq!(events[2]["pid"], c);
    assert_eq!(events[2]["signal"], "SIGTERM");
    assert_eq!(events[3]["pid"], c);
    assert_eq!(events[4]["reason"], "done");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(events
        .iter()
        .all(|e| e["time"].as_str().unwrap().ends_with('Z')));

    // The follower saw the same, as it happened.
    let mut followed = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !followed
        .iter()
        .any(|e: &Value| e["binding"]["id"] == id && e["kind"] == "unbound")
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the follower stopped short: {followed:?}"));
        followed.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(kinds(&of_binding(&followed, id)), kinds(&events));
    let _ = follower.kill();
    let _ = follower.wait();

    // The human form: one line per event, time, kind, binding, details.
    let (code, out, _) = daemon.ctl(&["events"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.contains(" signalled ") && l.contains("\"life\""))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with(&format!(": SIGTERM to {c}")), "{line}");
}

#[test]
fn escalation_shows() {
    let daemon = TestDaemon::start("");
    let (mut parent, mut child) = (Proc::sleeper(), Proc::term_ignorer());
    let id = daemon.bind(parent.pid(), &[child.pid()], &["--grace", "200ms"]);
    parent.kill9();
    child.expect_signal(Some(SIGKILL), &daemon);
    let events = until_unbound(&daemon, id);
    assert_eq!(
        kinds(&events),
        [
            "bound",
            "parent_exited",
            "signalled",
            "escalated",
            "signalled",
            "child_exited",
            "unbound"
        ],
        "{events:?}"
    );
    assert_eq!(events[3]["children"], serde_json::json!([child.pid()]));
    assert_eq!(events[4]["signal"], "SIGKILL");
    assert_eq!(events[4]["pid"], child.pid());
    let metrics = metrics(&daemon);
    assert_eq!(metrics.value("tether_escalations_total", &[]), 1.0);
    assert_eq!(
        metrics.value("tether_signals_sent_total", &[("signal", "SIGKILL")]),
        1.0
    );
}

#[test]
fn a_refusal_shows_its_code() {
    let daemon = TestDaemon::start("");
    let (code, _, _) = daemon.ctl(&["unbind", "424242"]);
    assert_eq!(code, 1);
    let events = events_json(&daemon);
    let refused: Vec<&Value> = events.iter().filter(|e| e["kind"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert_eq!(refused[0]["code"], "no_such_binding");
    assert_eq!(refused[0]["op"], "unbind");
    assert_eq!(refused[0]["uid"], 0);
    assert_eq!(refused[0]["reason"], "no binding 424242");
    let metrics = metrics(&daemon);
    assert_eq!(
        metrics.value("tether_refusals_total", &[("code", "no_such_binding")]),
        1.0
    );
    assert_eq!(
        metrics.value("tether_refusals_total", &[("code", "limit")]),
        0.0
    );
}

#[test]
fn users_see_only_their_own_events_and_root_sees_all() {
    let Some((uid, gid)) = root_and_test_user("to bind as another user") else {
        return;
    };
    let daemon = TestDaemon::start("");
    let (mut root_parent, mut root_child) = (Proc::sleeper(), Proc::sleeper());
    let root_id = daemon.bind(root_parent.pid(), &[root_child.pid()], &[]);
    let (mut user_parent, mut user_child) = (users_sleeper(uid, gid), users_sleeper(uid, gid));
    let (p, c) = (user_parent.pid().to_string(), user_child.pid().to_string());
    let (code, out, err) = ctl_as(uid, gid, &daemon, &["bind", "--parent", &p, "--child", &c]);
    assert_eq!(code, 0, "{err}");
    let user_id: u64 = out.trim().parse().unwrap();
    // The user's own refusal, and root's.
    assert_eq!(
        ctl_as(uid, gid, &daemon, &["unbind", &root_id.to_string()]).0,
        1
    );
    assert_eq!(daemon.ctl(&["unbind", "999999"]).0, 1);
    // Metrics are for root.
    let (code, _, err) = ctl_as(uid, gid, &daemon, &["metrics"]);
    assert_eq!(code, 1, "{err}");
    user_parent.kill9();
    user_child.expect_signal(Some(SIGTERM), &daemon);
    root_parent.kill9();
    root_child.expect_signal(Some(SIGTERM), &daemon);
    until_unbound(&daemon, root_id);
    let all = until_unbound(&daemon, user_id);
    assert_eq!(all.len(), 5, "{all:?}");

    let (code, out, err) = ctl_as(uid, gid, &daemon, &["events", "--json"]);
    assert_eq!(code, 0, "{err}");
    let seen = parse_lines(&out);
    assert_eq!(kinds(&of_binding(&seen, user_id)), kinds(&all), "{seen:?}");
    for event in &seen {
        match event["kind"].as_str().unwrap() {
            "refused" => assert_eq!(event["uid"], uid, "{event}"),
            _ => assert_eq!(event["binding"]["uid"], uid, "{event}"),
        }
    }
    let refusals: Vec<&Value> = seen.iter().filter(|e| e["kind"] == "refused").collect();
    assert_eq!(refusals.len(), 2, "its unbind and its metrics: {seen:?}");
    assert_eq!(refusals[1]["code"], "not_permitted");

    let everything = events_json(&daemon);
    assert_eq!(of_binding(&everything, root_id).len(), 5);
    assert_eq!(of_binding(&everything, user_id).len(), 5);
    assert_eq!(
        everything.iter().filter(|e| e["kind"] == "refused").count(),
        3
    );
    assert!(everything.iter().any(|e| e["kind"] == "reload_applied"));
}

/// The resident set of `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `n` requests on one connection that the daemon refuses (each
/// one event), reading the answers as they come.
fn refusals(daemon: &TestDaemon, n: usize) {
    let stream = UnixStream::connect(&daemon.socket).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..n {
            batch.extend(
                format!("{{\"v\":1,\"op\":\"unbind\",\"id\":{}}}\n", 1_000_000 + i).bytes(),
            );
            if batch.len() > 32 * 1024 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..n {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("no_such_binding"), "{line}");
    }
    sender.join().unwrap();
}

#[test]
fn a_reader_that_never_reads_costs_bounded_memory_and_never_slows_the_daemon() {
    let daemon = TestDaemon::start("");
    // Subscribed, never read.
    let mut stalled = UnixStream::connect(&daemon.socket).unwrap();
    stalled
        .write_all(b"{\"v\":1,\"op\":\"events\",\"follow\":true}\n")
        .unwrap();
    wait_until(TIMEOUT, || daemon.count("follows the event stream") == 1);
    // Warm up (allocator, buffers), then measure across 20,000 events.
    refusals(&daemon, 2_000);
    let before = rss_kib(daemon.pid());
    let started = Instant::now();
    refusals(&daemon, 20_000);
    let took = started.elapsed();
    let after = rss_kib(daemon.pid());
    eprintln!(
        "20,000 events with a stalled reader: {took:?}; daemon RSS {before} KiB -> {after} KiB"
    );
    assert!(
        after < before + 2 * 1024,
        "the daemon grew from {before} KiB to {after} KiB"
    );
    // It still acts at once.
    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    daemon.bind(parent.pid(), &[child.pid()], &[]);
    parent.kill9();
    child.expect_signal(Some(SIGTERM), &daemon);
    let metrics = metrics(&daemon);
    let dropped = metrics.value("tether_events_dropped_total", &[]);
    assert!(dropped > 10_000.0, "{dropped}");
    assert_eq!(metrics.value("tether_event_readers", &[]), 1.0);

    // When it reads at last, it is told what it lost, once, and then
    // gets the newest events.
    stalled.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stalled);
    let mut line = String::new();
    let mut n_dropped = 0;
    let mut lost = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let value: Value = serde_json::from_str(&line).unwrap();
        let Some(event) = value.get("event") else {
            continue;
        };
        if event["kind"] == "dropped" {
            n_dropped += 1;
            lost += event["count"].as_u64().unwrap();
        }
        if event["kind"] == "unbound" {
            break;
        }
    }
    assert_eq!(n_dropped, 1, "one marker for one stretch of drops");
    assert_eq!(lost as f64, dropped);
}

/// Label names and values.
type Labels = BTreeMap<String, String>;

/// Parsed Prometheus text: every sample by name and labels.
struct Metrics {
    samples: HashMap<String, Vec<(Labels, f64)>>,
}

impl Metrics {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .get(name)
            .and_then(|s| s.iter().find(|(l, _)| *l == want))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name} {want:?}"))
    }
}

/// A small parser of the text exposition format that checks what the
/// format requires: HELP and TYPE before a family's samples, names and
/// label names as the format allows, numbers, counters named `_total`,
/// histograms with cumulative buckets ending in `+Inf` equal to `_count`.
fn parse_metrics(text: &str) -> Metrics {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    let mut samples: HashMap<String, Vec<(Labels, f64)>> = HashMap::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(name_ok(name) && !help.is_empty(), "{line}");
            helped.push(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                helped.contains(&name.to_owned()),
                "TYPE before HELP: {line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap();
                let mut map = BTreeMap::new();
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(name_ok(k), "{line}");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap();
                    map.insert(k.to_owned(), v.to_owned());
                }
                (name, map)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(name_ok(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples
            .entry(name.to_owned())
            .or_default()
            .push((labels, value));
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets = &samples[&format!("{family}_bucket")];
        let counts: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(buckets.last().unwrap().0["le"], "+Inf");
        assert_eq!(
            *counts.last().unwrap(),
            samples[&format!("{family}_count")][0].1
        );
    }
    Metrics { samples }
}

/// Prometheus's own linter on `text`, where it is installed (Debian's
/// `prometheus` package has it); the parser above checks the rest.
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the metrics are checked by the test's parser only");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics(daemon: &TestDaemon) -> Metrics {
    let (code, out, err) = daemon.ctl(&["metrics"]);
    assert_eq!(code, 0, "metrics failed: {err}");
    parse_metrics(&out)
}

#[test]
fn metrics_move_and_the_textfile_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.prom");
    let daemon = TestDaemon::start(&format!(
        "[daemon]\nmetrics_file = \"{}\"\n",
        file.display()
    ));
    let before = metrics(&daemon);
    assert!(!before.samples.contains_key("tether_signals_sent_total"));
    assert_eq!(
        before.value("tether_exit_to_signal_seconds_count", &[]),
        0.0
    );
    assert!(before.value("tether_descriptors_in_use", &[]) > 0.0);
    assert!(
        before.value("tether_descriptors_limit", &[])
            >= before.value("tether_descriptors_in_use", &[])
    );

    let (mut parent, mut child) = (Proc::sleeper(), Proc::sleeper());
    let (mut parent2, mut child2) = (Proc::sleeper(), Proc::sleeper());
    daemon.bind(parent.pid(), &[child.pid()], &[]);
    daemon.bind(parent2.pid(), &[child2.pid()], &["--kill", "tree"]);
    let held = metrics(&daemon);
    assert_eq!(
        held.value(
            "tether_bindings",
            &[("origin", "socket"), ("kill", "process")]
        ),
        1.0
    );
    assert_eq!(
        held.value("tether_bindings", &[("origin", "socket"), ("kill", "tree")]),
        1.0
    );
    parent.kill9();
    child.expect_signal(Some(SIGTERM), &daemon);
    parent2.kill9();
    child2.expect_signal(Some(SIGTERM), &daemon);
    let wanted = "tether_signals_sent_total{signal=\"SIGTERM\"} 2\n";
    let ok = wait_until(TIMEOUT, || {
        std::fs::read_to_string(&file)
            .is_ok_and(|t| t.contains(wanted) && !t.contains("tether_bindings{"))
    });
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(ok, "the file never said {wanted:?}:\n{text}");
    let written = parse_metrics(&text);
    promtool_check(&text);
    assert_eq!(
        written.value("tether_exit_to_signal_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        written.value("tether_exit_to_signal_seconds_bucket", &[("le", "1")]),
        2.0
    );
    let after = metrics(&daemon);
    assert_eq!(
        after.value("tether_signals_sent_total", &[("signal", "SIGTERM")]),
        2.0
    );
    // Only the file is in the directory (no temporary left), readable by
    // a collector running as another user.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("tether.prom")]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Idle: the file is not rewritten (no timer). A sleep only to show
    // that nothing happens.
    let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), stamp);
}

/// The protocol as a script speaks it (`echo ... | socat`): the request,
/// the writing side shut down, then everything read to the end.
#[test]
fn a_stream_without_follow_is_written_to_its_end_line() {
    let daemon = TestDaemon::start("");
    assert_eq!(daemon.ctl(&["unbind", "31337"]).0, 1);
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(b"{\"v\":1,\"op\":\"events\"}\n{\"v\":1,\"op\":\"status\"}\n")
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    let lines = parse_lines(&text);
    assert_eq!(lines[0]["ok"], true, "{text}");
    let last = lines.last().unwrap();
    assert_eq!(last["end"], true, "{text}");
    let events: Vec<&Value> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| &l["event"])
        .collect();
    assert!(events
        .iter()
        .any(|e| e["kind"] == "refused" && e["reason"] == "no binding 31337"));
    // The status request after it was not answered: the stream is all.
    assert!(lines.iter().all(|l| l.get("status").is_none()), "{text}");
}

#[test]
fn a_relative_metrics_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, "[daemon]\nmetrics_file = \"tether.prom\"\n").unwrap();
    let (code, _, err) =
        crate::util::run_tetherd(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(r#"[daemon]: metrics_file: "tether.prom" is a relative path"#),
        "{err}"
    );
}

/// A follower is silent by design: when the connections are at their cap
/// (256), a new one closes the idlest connection that is not a follower.
#[test]
fn a_follower_is_not_the_idlest_connection_to_close() {
    let daemon = TestDaemon::start("");
    let mut follower = UnixStream::connect(&daemon.socket).unwrap();
    follower
        .write_all(b"{\"v\":1,\"op\":\"events\",\"follow\":true}\n")
        .unwrap();
    wait_until(TIMEOUT, || daemon.count("follows the event stream") == 1);
    // 256 more, each answered once so the daemon has accepted it.
    let mut others = Vec::new();
    for _ in 0..256 {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        stream.write_all(b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        others.push(stream);
    }
    assert_eq!(daemon.ctl(&["unbind", "4711"]).0, 1);
    follower.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(follower);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "the follower was closed:\n{}", daemon.log_text());
        if line.contains("no binding 4711") {
            break;
        }
    }
}
