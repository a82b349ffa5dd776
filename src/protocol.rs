//! The control protocol between `tetherctl` (or any program) and `tetherd`.
//!
//! One JSON object per line each way over a Unix stream socket; every
//! message carries `"v": 1`. The client sends one request and reads one
//! response per line; it may send several requests on one connection. These
//! are the only serde types the running daemon handles, and they never
//! reach the event loop's own data: the daemon turns a request into a
//! validated `BindingSpec` first. docs/protocol.md is the reference.

use serde::{Deserialize, Serialize};

/// The protocol version spoken by this build.
pub const VERSION: u32 = 1;

/// The longest request line the daemon accepts, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// The most descriptors a request may carry (parent and children pidfds).
pub const MAX_FDS: usize = 16;

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Must be [`VERSION`].
    pub v: u32,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

impl Request {
    /// Parses a request line: `v` must be [`VERSION`], `op` one of the
    /// operations, and no other key may appear. A refusal is one line:
    /// control characters the client put in a key or value are escaped,
    /// so they cannot forge lines in the daemon's log.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        Self::parse_line(line).map_err(|why| escape_controls(&why))
    }

    fn parse_line(line: &[u8]) -> Result<Request, String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| "a request is a JSON object".to_string())?;
        let v = object
            .remove("v")
            .ok_or_else(|| "missing field `v` (the protocol version)".to_string())?;
        let v = v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("`v` must be a version number, not {v}"))?;
        if v != VERSION {
            return Err(format!(
                "unsupported protocol version {v} (this tetherd speaks {VERSION})"
            ));
        }
        // serde lets unit variants of a tagged enum ignore extra keys; a
        // request with a key it does not understand is refused instead.
        let allowed: Option<&[&str]> = match object.get("op").and_then(|op| op.as_str()) {
            Some("unbind") => Some(&["op", "id"]),
            Some("list" | "status" | "reload" | "metrics") => Some(&["op"]),
            Some("events") => Some(&["op", "follow"]),
            _ => None,
        };
        if let Some(allowed) = allowed {
            if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(format!(
                    "unknown field `{key}` for op `{}`",
                    object
                        .get("op")
                        .and_then(|op| op.as_str())
                        .unwrap_or_default()
                ));
            }
        }
        let op = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(Request { v, op })
    }
}

/// `text` with every control character (newlines, escapes, NUL) written
/// as its Rust escape, as `\n`, and so is every other character that can
/// hide, reorder or break a line (bidirectional controls, U+2028, zero-width
/// characters: see [`crate::config::is_hidden`]).
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(crate::config::is_hidden) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if crate::config::is_hidden(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Create a binding; answered with its id.
    Bind(BindRequest),
    /// Remove a binding.
    Unbind {
        /// The binding's id.
        id: u64,
    },
    /// List the bindings the caller may see.
    List,
    /// Daemon status.
    Status,
    /// Re-read the configuration file.
    Reload,
    /// The recent events (then the connection ends), or with `follow`
    /// the recent events and every new one as it happens: after the
    /// answer, one [`StreamLine`] per line.
    Events {
        /// Keep streaming.
        #[serde(default)]
        follow: bool,
    },
    /// The daemon's metrics in the Prometheus text format.
    Metrics,
}

/// A process named in a bind request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcRef {
    /// The pid, in the daemon's pid namespace.
    pub pid: i32,
    /// Optional start-time pin (clock ticks since boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Index into the descriptors passed with the request (SCM_RIGHTS):
    /// a pidfd the caller opened on this process. The daemon then uses that
    /// very process, so no pid can be reused between the caller's decision
    /// and the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfd: Option<usize>,
}

/// The body of a bind request. Absent options take the daemon's
/// `[defaults]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// The process watched.
    pub parent: ProcRef,
    /// The processes signalled when the parent exits.
    pub children: Vec<ProcRef>,
    /// Label for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Signal name or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace before SIGKILL: "5s", "500ms", "never".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// Kill mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<String>,
    /// Refuse the binding (instead of acting at once) if the parent has
    /// already exited. `tetherctl exec` sets it: its command is not started
    /// when the launcher is already gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_live_parent: bool,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`VERSION`].
    pub v: u32,
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong (when `ok` is false), one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a request was refused, for programs: `bad_request`, `invalid`,
    /// `parent_gone`, `child_gone`, `not_permitted`, `limit`,
    /// `no_such_binding`, `config_binding`, `invalid_config`, `not_held`
    /// (docs/protocol.md). Clients treat a code they do not know as a
    /// plain refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Further error lines (a refused reload's configuration errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Something the client should tell its user although the request
    /// succeeded, one line: a bind whose parent was not running (its
    /// children were signalled at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The new binding's id (bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The bindings (list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<Vec<BindingInfo>>,
    /// The daemon's status (status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusInfo>,
    /// What a reload did (reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadInfo>,
    /// The metrics, Prometheus text exposition format (metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl Response {
    /// A bare success.
    pub fn ok() -> Response {
        Response {
            v: VERSION,
            ok: true,
            error: None,
            code: None,
            errors: Vec::new(),
            warning: None,
            id: None,
            bindings: None,
            status: None,
            reload: None,
            metrics: None,
        }
    }

    /// A failure with a one-line reason.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::ok()
        }
    }
}

/// One binding as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInfo {
    /// Its id.
    pub id: u64,
    /// Its label, if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// "config", "socket" or "rule".
    pub origin: String,
    /// The `[[rule]]` that made it (origin "rule").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The uid that made it (0 for the configuration file; a rule's
    /// binding: its launcher's uid).
    pub uid: u32,
    /// The parent's pid.
    pub parent: i32,
    /// The children's pids.
    pub children: Vec<i32>,
    /// Signal name.
    pub signal: String,
    /// Grace.
    pub grace: String,
    /// Kill mode.
    pub kill: String,
    /// "armed", "signalled", "killed" or "done".
    pub phase: String,
    /// The cgroup directory of a `kill = "cgroup"` binding while it holds
    /// one (absent otherwise, and from a tetherd that predates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// The daemon's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// tetherd's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The watch backend.
    pub backend: String,
    /// Bindings held, in any phase.
    pub bindings: u64,
    /// Bindings still watching their parent.
    pub armed: u64,
    /// Descriptors open now.
    pub fds_in_use: u64,
    /// The descriptor limit.
    pub fds_allowed: u64,
    /// The daemon's pid.
    pub pid: u32,
    /// Processes the caller's bindings hold (root: every binding's).
    #[serde(default)]
    pub processes_held: u64,
    /// Processes the caller may hold (its budget; root: what the daemon
    /// has room for).
    #[serde(default)]
    pub processes_allowed: u64,
    /// Descriptors clients passed or left that wait to be closed.
    #[serde(default)]
    pub fds_closing: u64,
    /// Whether `kill = "cgroup"` is available and where the cgroups
    /// live, or why not (empty from a tetherd that predates it).
    #[serde(default)]
    pub cgroup: String,
    /// How `[[rule]]`s learn of execs (`fanotify`, `connector`, or
    /// `none (why)`); absent without rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_source: Option<String>,
    /// Each rule with the processes it bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleInfo>,
    /// The configuration load being applied, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loading: Option<LoadProgress>,
}

/// One `[[rule]]` as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Its name.
    pub name: String,
    /// Processes it bound since it came into force.
    pub matches: u64,
}

/// A line of the event stream that follows the answer to `events`: an
/// event, or the end of a stream without `follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLine {
    /// [`VERSION`].
    pub v: u32,
    /// The event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventInfo>,
    /// The last line of a stream without `follow`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

/// One thing tetherd did, as the event stream shows it. Which fields are
/// present depends on `kind` (docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Numbers every event the daemon produced since it started (those
    /// a reader may not see included): a gap is events of others, or
    /// events dropped.
    pub seq: u64,
    /// When, UTC, RFC 3339 with milliseconds.
    pub time: String,
    /// `bound`, `parent_exited`, `signalled`, `escalated`,
    /// `child_exited`, `unbound`, `refused`, `reload_applied`, or
    /// `dropped` (this reader fell behind: `count` events it would have
    /// seen were dropped).
    pub kind: String,
    /// The binding it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<EventBinding>,
    /// The parent (bound, parent_exited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<i32>,
    /// The children (bound, escalated: those still held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<i32>>,
    /// The process concerned (signalled, child_exited), or the client's
    /// pid (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The signal (bound: the binding's; signalled; escalated: SIGKILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The client's uid (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The request refused (refused): `bind`, `unbind`, `request`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The refusal's code (refused), as in a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why (unbound, refused), one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a reload did (reload_applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadInfo>,
    /// Events dropped (dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The binding an event concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBinding {
    /// Its id (as `list` shows it).
    pub id: u64,
    /// Its name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it came from: "config", "socket" or "rule".
    pub origin: String,
    /// The rule that made it (origin "rule" only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The uid that made it (the daemon's own for the configuration, the
    /// launcher's for a rule binding).
    pub uid: u32,
    /// How tetherd's log names it.
    pub label: String,
}

/// A configuration load in progress (at start, or a reload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadProgress {
    /// `start` or `reload` (being applied), or `reading` (a reload's
    /// file is being read and checked).
    pub what: String,
    /// Entries applied so far (bindings removed or added, or found
    /// unchanged).
    pub applied: u64,
    /// Entries in all.
    pub total: u64,
    /// Whether another reload waits for this one to be done.
    #[serde(default)]
    pub reload_queued: bool,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadInfo {
    /// Bindings added.
    pub added: u64,
    /// Bindings removed.
    pub removed: u64,
    /// Bindings left as they were.
    pub unchanged: u64,
    /// Bindings that could not be held.
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_for_every_op() {
        // Found by the corpus: unit ops used to accept any extra key.
        for line in [
            r#"{"v":1,"op":"reload","extra":1}"#,
            r#"{"v":1,"op":"status","verbose":true}"#,
            r#"{"v":1,"op":"list","uid":0}"#,
            r#"{"v":1,"op":"unbind","id":1,"force":true}"#,
            r#"{"v":1,"op":"bind","parent":{"pid":2},"children":[{"pid":3}],"x":1}"#,
        ] {
            let err = Request::parse(line.as_bytes()).expect_err(line);
            assert!(err.contains("unknown field"), "{line}: {err}");
        }
        assert_eq!(
            Request::parse(br#"{"v":1,"op":"unbind","id":7}"#),
            Ok(Request {
                v: 1,
                op: Op::Unbind { id: 7 }
            })
        );
        assert!(Request::parse(br#"{"v":1,"op":"status"}"#).is_ok());
    }

    /// Found by `fuzz/run request`: a key with an escaped newline came back
    /// in the refusal as a real one, and the daemon logs refusals.
    #[test]
    fn refusals_escape_the_control_characters_a_client_sent() {
        for line in [
            &br#"{"v":1,"op":"bind","pare\nt":[{"pid":2}]}"#[..],
            br#"{"v":1,"op":"status","x\ntetherd: info: forged":1}"#,
            br#"{"v":1,"op":"bi\u001b[2Jnd"}"#,
        ] {
            let err = Request::parse(line).expect_err("refused");
            assert!(!err.chars().any(char::is_control), "{err:?}");
            assert!(err.contains("\\n") || err.contains("\\u{1b}"), "{err:?}");
        }
    }

    /// A line separator or a bidi override in a key would break or reorder
    /// the daemon's log line as surely as a newline.
    #[test]
    fn refusals_escape_separators_and_bidi_controls() {
        for line in [
            "{\"v\":1,\"op\":\"status\",\"x\u{2028}tetherd: info: forged\":1}",
            "{\"v\":1,\"op\":\"bi\u{202E}dn\"}",
            "{\"v\":1,\"op\":\"status\",\"\u{200B}\u{2066}\":1}",
        ] {
            let err = Request::parse(line.as_bytes()).expect_err("refused");
            assert!(!err.chars().any(crate::config::is_hidden), "{err:?}");
            assert!(err.contains("\\u{"), "{err:?}");
        }
    }
}
