//! `tetherctl`: the client of tetherd's control socket, and the `exec`
//! wrapper that tethers a command to whoever launched it.

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tether::VERSION;
use tether::{parse_duration, parse_kill, parse_signal};
use tether::{BindRequest, BindingInfo, EventInfo, Op, ProcRef, Request, Response, StreamLine};

/// Exit codes, documented in `--help` and tetherctl(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    /// The daemon refused or failed the request.
    Refused = 1,
    /// Bad usage.
    Usage = 2,
    /// No daemon answered on the socket.
    NoDaemon = 3,
    /// exec: the parent is already gone; the command was not started.
    ParentGone = 4,
    /// exec: the command was found but could not be run.
    CannotExec = 126,
    /// exec: the command was not found.
    NotFound = 127,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

const AFTER_HELP: &str = "\
Exit status:
  0    success
  1    the daemon refused the request (the reason is printed)
  2    usage error
  3    no trustworthy tetherd answered (none listening, or the server is
       neither root nor you)
  4    exec: the launcher (or --parent) is already gone; the command was
       not started
  126  exec: the command could not be run
  127  exec: the command was not found

Environment:
  TETHER_SOCKET         the control socket (overridden by --socket;
                        overrides --config)
  TETHER_SYSTEM_SOCKET  where the system daemon listens [default:
                        /run/tether/tether.sock]; for tests

See tetherctl(1) and docs/protocol.md.";

/// Talk to tetherd: bind processes, list and remove bindings, or run a
/// command tethered to whoever launched it.
#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The control socket [default: $TETHER_SOCKET, else the `[daemon]
    /// socket` of the configuration file (--config), else
    /// /run/tether/tether.sock as root; otherwise
    /// $XDG_RUNTIME_DIR/tether/tether.sock (or /tmp/tether-UID/tether.sock)
    /// if a daemon of yours listens there, else the system socket
    /// /run/tether/tether.sock]. The server must be root or you
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// The daemon's configuration file, read only for its `[daemon]
    /// socket` when neither --socket nor TETHER_SOCKET is given [default:
    /// tetherd's: /etc/tether/tether.toml as root,
    /// $XDG_CONFIG_HOME/tether/tether.toml otherwise; ignored if missing]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bind children to a parent; prints the new binding's id
    Bind {
        /// The process to watch: PID or PID:START (start time pin)
        #[arg(long, value_name = "PID[:START]", value_parser = parse_proc)]
        parent: ProcRef,
        /// A process to signal when the parent exits (repeatable)
        #[arg(long, value_name = "PID[:START]", required = true, value_parser = parse_proc)]
        child: Vec<ProcRef>,
        #[command(flatten)]
        options: BindingOptions,
    },
    /// Remove a binding
    Unbind {
        /// The binding's id (from `bind` or `list`)
        id: u64,
    },
    /// List bindings (yours; all of them as root or as the daemon's user)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's version, uptime, backend and capacity
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon re-read its configuration file
    Reload,
    /// Print what the daemon did, one event a line (with --follow, as it happens)
    ///
    /// The kinds: bound, parent_exited, signalled, escalated, child_exited,
    /// unbound, refused, reload_applied; each with its time, binding, pids
    /// and signal. First the recent events the daemon keeps (the last
    /// 1024), yours only unless you are root or the daemon's user; with
    /// --follow, then every new one as it happens. A reader that falls
    /// behind loses events, and a `dropped` line says how many.
    Events {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
        /// Keep printing events as they happen (after the recent ones)
        #[arg(long, short)]
        follow: bool,
    },
    /// Print the daemon's metrics in the Prometheus text format (root or
    /// the daemon's user)
    Metrics,
    /// Print a completion script for SHELL (bash, zsh, fish, ...) on
    /// standard output; the packages install them
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Tether CMD to this command's parent (or --parent), then exec CMD
    Exec {
        /// Watch this process instead of the parent (for launchers that
        /// daemonize): PID or PID:START
        #[arg(long, value_name = "PID[:START]", value_parser = parse_proc)]
        parent: Option<ProcRef>,
        /// When no daemon answers, arm the kernel's parent-death signal
        /// instead of refusing (Linux PR_SET_PDEATHSIG: weaker, see man page)
        #[arg(long, value_name = "MODE", value_parser = ["pdeathsig"])]
        fallback: Option<String>,
        #[command(flatten)]
        options: BindingOptions,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct BindingOptions {
    /// Signal sent to the children (name or number) [default: the daemon's]
    #[arg(long, value_name = "SIGNAL", value_parser = check_signal)]
    signal: Option<String>,
    /// Time from the signal to SIGKILL ("5s", "500ms", "never") [default:
    /// the daemon's]
    #[arg(long, value_name = "DURATION", value_parser = check_grace)]
    grace: Option<String>,
    /// What to signal: process, group (the child's process group) or tree
    /// (the child and its descendants)
    /// [default: the daemon's]
    #[arg(long, value_name = "MODE", value_parser = check_kill)]
    kill: Option<String>,
    /// A label for logs and `list`
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

/// Which socket to talk to.
#[derive(Debug)]
enum Target {
    /// `--socket` or `TETHER_SOCKET`: only this one.
    Explicit(PathBuf),
    /// The user's own daemon if one listens, else the system daemon.
    Default,
}

/// Where the system daemon listens: `TETHER_SYSTEM_SOCKET` (an absolute
/// path; for tests), else /run/tether/tether.sock.
fn system_socket() -> PathBuf {
    std::env::var_os("TETHER_SYSTEM_SOCKET")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/run/tether/tether.sock"))
}

/// Why a default socket's directory is not used.
#[derive(Debug, PartialEq, Eq)]
enum DirProblem {
    /// It does not exist (or cannot be looked at): nobody serves there.
    Missing,
    /// Someone other than root and the caller could have put the socket
    /// there; says who or why.
    Untrusted(String),
}

/// Checks the directory of a default socket: a real directory (not a
/// symlink) owned by root or the caller (`me`) and writable by nobody
/// else. Anyone can create `/tmp/tether-UID/` for another uid and serve a
/// fake daemon in it; such a directory is never used.
fn check_socket_dir(socket: &Path, me: u32) -> Result<(), DirProblem> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::symlink_metadata(dir).map_err(|_| DirProblem::Missing)?;
    let untrusted = |why: String| {
        Err(DirProblem::Untrusted(format!(
            "{}: the socket directory {why}",
            dir.display()
        )))
    };
    if !meta.file_type().is_dir() {
        return untrusted("is not a directory (a symlink?)".into());
    }
    if meta.uid() != 0 && meta.uid() != me {
        return untrusted(format!(
            "is owned by uid {}, neither root nor you (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return untrusted(format!("is writable by others (mode {mode:04o})"));
    }
    Ok(())
}

/// Checks whom `stream` talks to: the server's uid (from the kernel) must
/// be root or the caller's, or the "daemon" could be any user's program
/// that answers "ok" and leaves the command untethered.
fn check_peer(stream: &UnixStream, socket: &Path) -> Result<(), (Exit, String)> {
    let me = nix::unistd::geteuid().as_raw();
    let peer = tether::peer_credentials(stream).map_err(|err| {
        (
            Exit::NoDaemon,
            format!(
                "{}: cannot tell who serves this socket ({err}); refusing to use it",
                socket.display()
            ),
        )
    })?;
    if peer.uid != 0 && peer.uid != me {
        return Err((
            Exit::NoDaemon,
            format!(
                "{}: the server runs as uid {}, neither root nor you (uid {me}); refusing to talk to it (a socket planted by another user?)",
                socket.display(),
                peer.uid
            ),
        ));
    }
    Ok(())
}

/// Connects to the daemon `target` names and proves who it is.
fn connect(target: &Target) -> Result<(UnixStream, PathBuf), (Exit, String)> {
    let open = |socket: &Path, passed: &[String]| {
        let stream = UnixStream::connect(socket).map_err(|err| {
            let mut message = format!("no tetherd answers at {}: {err}", socket.display());
            for why in passed {
                message.push_str(&format!(" (passed over {why})"));
            }
            (Exit::NoDaemon, message)
        })?;
        Ok((stream, socket.to_owned()))
    };
    let (stream, socket) = match target {
        Target::Explicit(socket) => open(socket, &[])?,
        Target::Default => {
            let own = tether::default_socket();
            let me = nix::unistd::geteuid().as_raw();
            match choose_default(&own, &system_socket(), me, |p| UnixStream::connect(p)) {
                Choice::Own(stream) => (stream, own),
                Choice::System(system, passed) => {
                    for why in passed.iter().filter(|why| why.contains("socket directory")) {
                        eprintln!("tetherctl: warning: ignoring {why}");
                    }
                    open(&system, &passed)?
                }
            }
        }
    };
    check_peer(&stream, &socket)?;
    Ok((stream, socket))
}

/// Which default socket to use.
#[derive(Debug)]
enum Choice<S> {
    /// The user's own daemon accepted: this connection.
    Own(S),
    /// The system daemon's socket, with why the user's own was passed over
    /// (nothing when it simply is not there).
    System(PathBuf, Vec<String>),
}

/// The user's own socket (`own`) when its directory is trustworthy and
/// something accepts on it, else the system one. A stale socket file with
/// nothing listening, or a directory another user could have made, does
/// not hide the system daemon.
fn choose_default<S>(
    own: &Path,
    system: &Path,
    me: u32,
    connect: impl FnOnce(&Path) -> std::io::Result<S>,
) -> Choice<S> {
    let system_with = |passed: Vec<String>| Choice::System(system.to_owned(), passed);
    if own == system {
        return system_with(Vec::new());
    }
    match check_socket_dir(own, me) {
        Err(DirProblem::Missing) => system_with(Vec::new()),
        Err(DirProblem::Untrusted(why)) => system_with(vec![why]),
        Ok(()) => match connect(own) {
            Ok(stream) => Choice::Own(stream),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => system_with(Vec::new()),
            Err(err) => system_with(vec![format!("{}: {err}", own.display())]),
        },
    }
}

fn parse_proc(s: &str) -> Result<ProcRef, String> {
    let (pid, start) = match s.split_once(':') {
        Some((pid, start)) => (pid, Some(start)),
        None => (s, None),
    };
    let pid: i32 = pid
        .parse()
        .map_err(|_| format!("\"{pid}\" is not a pid (expected PID or PID:START)"))?;
    let start =
        match start {
            Some(start) => Some(start.parse::<u64>().map_err(|_| {
                format!("\"{start}\" is not a start time (clock ticks since boot)")
            })?),
            None => None,
        };
    Ok(ProcRef {
        pid,
        start,
        pidfd: None,
    })
}

fn check_signal(s: &str) -> Result<String, String> {
    parse_signal(s).map(|_| s.to_owned())
}

fn check_grace(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.to_owned())
}

fn check_kill(s: &str) -> Result<String, String> {
    parse_kill(s).map(|_| s.to_owned())
}

/// `[daemon] socket` of the configuration file tetherd reads: `--config`,
/// else tetherd's default file. Only that key is looked at, so a file the
/// daemon would refuse (the very file a `reload` is about to report) still
/// names its socket; a file that is not TOML at all names none, and the
/// default socket is used with a warning. A missing or unreadable default
/// file is no error; a missing `--config` file is.
fn configured_socket(config: Option<&PathBuf>) -> Result<Option<PathBuf>, (Exit, String)> {
    let path = config.cloned().unwrap_or_else(tether::default_config);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // The default file is the daemon's, not the caller's: one the
        // caller cannot read (another user's home, as after `su`) names
        // nothing for it.
        Err(err)
            if config.is_none()
                && matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            return Ok(None)
        }
        Err(err) => {
            return Err((
                Exit::Usage,
                format!("{}: cannot read the configuration: {err}", path.display()),
            ))
        }
    };
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(err) => {
            let why = err
                .message()
                .lines()
                .next()
                .unwrap_or("not TOML")
                .to_owned();
            eprintln!(
                "tetherctl: warning: {}: cannot read [daemon] socket ({why}); using the default socket",
                path.display()
            );
            return Ok(None);
        }
    };
    let socket = table
        .get("daemon")
        .and_then(|daemon| daemon.get("socket"))
        .and_then(|socket| socket.as_str())
        .map(PathBuf::from)
        .filter(|socket| socket.is_absolute());
    Ok(socket)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = match cli
        .socket
        .clone()
        .or_else(|| std::env::var_os("TETHER_SOCKET").map(PathBuf::from))
    {
        Some(path) => Target::Explicit(path),
        None => match configured_socket(cli.config.as_ref()) {
            Ok(Some(path)) => Target::Explicit(path),
            Ok(None) => Target::Default,
            Err((exit, message)) => {
                eprintln!("tetherctl: {message}");
                return exit.into();
            }
        },
    };
    let result = match cli.command {
        Command::Bind {
            parent,
            child,
            options,
        } => bind(&socket, parent, child, options),
        Command::Unbind { id } => simple(&socket, Op::Unbind { id }).map(|_| Exit::Ok),
        Command::List { json } => list(&socket, json),
        Command::Status { json } => status(&socket, json),
        Command::Reload => reload(&socket),
        Command::Events { json, follow } => events(&socket, json, follow),
        Command::Metrics => simple(&socket, Op::Metrics).map(|response| {
            print!("{}", response.metrics.unwrap_or_default());
            Exit::Ok
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tetherctl",
                &mut std::io::stdout(),
            );
            Ok(Exit::Ok)
        }
        Command::Exec {
            parent,
            fallback,
            options,
            cmd,
        } => exec(&socket, parent, fallback.is_some(), options, &cmd),
    };
    match result {
        Ok(exit) => exit.into(),
        Err((exit, message)) => {
            // The daemon's words may quote what a client sent: nothing in
            // them reaches the terminal as a control or hidden character.
            let shown: Vec<String> = message.lines().map(tether::escape_controls).collect();
            eprintln!("tetherctl: {}", shown.join("\n"));
            exit.into()
        }
    }
}

type Outcome = Result<Exit, (Exit, String)>;

/// One request, one response, over a fresh connection.
fn request(target: &Target, op: Op, fds: &[BorrowedFd<'_>]) -> Result<Response, (Exit, String)> {
    let (stream, socket) = connect(target)?;
    let mut reader = BufReader::new(&stream);
    request_on(&stream, &mut reader, &socket, op, fds)
}

/// Sends one request on `stream` and reads its response through `reader`.
fn request_on(
    stream: &UnixStream,
    reader: &mut impl BufRead,
    socket: &Path,
    op: Op,
    fds: &[BorrowedFd<'_>],
) -> Result<Response, (Exit, String)> {
    // A reload is answered once its whole load is applied, after any
    // reload it waits for: 100,000 bindings take seconds.
    let timeout = Some(Duration::from_secs(if matches!(op, Op::Reload) {
        300
    } else {
        30
    }));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(&Request { v: VERSION, op })
        .map_err(|err| (Exit::Usage, format!("cannot encode the request: {err}")))?;
    line.push(b'\n');
    let io_err = |err: std::io::Error| (Exit::NoDaemon, format!("{}: {err}", socket.display()));
    if fds.is_empty() {
        (&*stream).write_all(&line).map_err(io_err)?;
    } else {
        let sent = tether::send_with_fds(stream, &line, fds).map_err(io_err)?;
        if let Some(rest) = line.get(sent..) {
            (&*stream).write_all(rest).map_err(io_err)?;
        }
    }
    let mut reply = String::new();
    reader.read_line(&mut reply).map_err(io_err)?;
    if reply.is_empty() {
        return Err((
            Exit::NoDaemon,
            format!("{}: the daemon closed the connection", socket.display()),
        ));
    }
    let response: Response = serde_json::from_str(&reply).map_err(|err| {
        (
            Exit::Refused,
            format!("unreadable answer from the daemon: {err}"),
        )
    })?;
    if !response.ok {
        let mut message = response
            .error
            .clone()
            .unwrap_or_else(|| "request refused".into());
        for line in &response.errors {
            message.push_str("\n  ");
            message.push_str(line);
        }
        return Err((refusal_exit(response.code.as_deref()), message));
    }
    if let Some(warning) = &response.warning {
        eprintln!("tetherctl: warning: {warning}");
    }
    Ok(response)
}

/// The exit status for a refusal with `code`: `parent_gone` is 4; any
/// other code, known or not, and none at all, is 1.
fn refusal_exit(code: Option<&str>) -> Exit {
    match code {
        Some("parent_gone") => Exit::ParentGone,
        _ => Exit::Refused,
    }
}

fn simple(socket: &Target, op: Op) -> Result<Response, (Exit, String)> {
    request(socket, op, &[])
}

fn bind_request(parent: ProcRef, children: Vec<ProcRef>, options: BindingOptions) -> BindRequest {
    BindRequest {
        parent,
        children,
        name: options.name,
        signal: options.signal,
        grace: options.grace,
        kill: options.kill,
        require_live_parent: false,
    }
}

fn bind(
    socket: &Target,
    parent: ProcRef,
    children: Vec<ProcRef>,
    options: BindingOptions,
) -> Outcome {
    let response = simple(socket, Op::Bind(bind_request(parent, children, options)))?;
    match response.id {
        Some(id) => {
            println!("{id}");
            Ok(Exit::Ok)
        }
        None => Err((Exit::Refused, "the daemon answered without an id".into())),
    }
}

fn list(socket: &Target, json: bool) -> Outcome {
    let response = simple(socket, Op::List)?;
    let bindings = response.bindings.unwrap_or_default();
    if json {
        let text = serde_json::to_string_pretty(&bindings)
            .map_err(|err| (Exit::Refused, err.to_string()))?;
        println!("{text}");
        return Ok(Exit::Ok);
    }
    print!("{}", table(&bindings));
    Ok(Exit::Ok)
}

/// The `list` table: one line per binding, columns padded to fit; a
/// `CGROUP` column last when a binding holds a cgroup.
fn table(bindings: &[BindingInfo]) -> String {
    let cgroups = bindings.iter().any(|b| b.cgroup.is_some());
    let mut header = vec![
        "ID", "NAME", "ORIGIN", "UID", "PARENT", "CHILDREN", "SIGNAL", "GRACE", "KILL", "PHASE",
    ];
    if cgroups {
        header.push("CGROUP");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for b in bindings {
        let children: Vec<String> = b.children.iter().map(|c| c.to_string()).collect();
        let mut row = vec![
            b.id.to_string(),
            b.name
                .as_deref()
                .map_or_else(|| "-".into(), tether::escape_name),
            match &b.rule {
                Some(rule) => format!("rule:{}", tether::escape_name(rule)),
                None => b.origin.clone(),
            },
            b.uid.to_string(),
            b.parent.to_string(),
            if children.is_empty() {
                "-".into()
            } else {
                children.join(",")
            },
            b.signal.clone(),
            b.grace.clone(),
            b.kill.clone(),
            b.phase.clone(),
        ];
        if cgroups {
            row.push(b.cgroup.clone().unwrap_or_else(|| "-".into()));
        }
        rows.push(row);
    }
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn status(socket: &Target, json: bool) -> Outcome {
    let response = simple(socket, Op::Status)?;
    let Some(status) = response.status else {
        return Err((Exit::Refused, "the daemon answered without a status".into()));
    };
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|err| (Exit::Refused, err.to_string()))?;
        println!("{text}");
        return Ok(Exit::Ok);
    }
    println!("version:      {}", status.version);
    println!("pid:          {}", status.pid);
    println!("uptime:       {}s", status.uptime_secs);
    println!("backend:      {}", status.backend);
    println!(
        "bindings:     {} ({} watching their parent)",
        status.bindings, status.armed
    );
    println!(
        "descriptors:  {} in use of {} allowed ({} waiting to be closed)",
        status.fds_in_use, status.fds_allowed, status.fds_closing
    );
    println!(
        "processes:    {} held by your bindings of {} allowed",
        status.processes_held, status.processes_allowed
    );
    if !status.cgroup.is_empty() {
        println!("cgroup:       {}", status.cgroup);
    }
    if let Some(source) = &status.rule_source {
        println!("rule source:  {source}");
        for rule in &status.rules {
            println!(
                "rule:         {} ({} matched)",
                tether::escape_name(&rule.name),
                rule.matches
            );
        }
    }
    if status.loading.as_ref().is_some_and(|l| l.what == "reading") {
        println!("loading:      reading the configuration file for a reload");
    } else if let Some(load) = &status.loading {
        println!(
            "loading:      {} in progress, {} of {} configuration entries applied{}",
            load.what,
            load.applied,
            load.total,
            if load.reload_queued {
                "; another reload waits for it"
            } else {
                ""
            }
        );
    }
    Ok(Exit::Ok)
}

/// `tetherctl events`: the answer, then one event per line until the
/// daemon ends the stream (without `--follow`) or stops.
fn events(target: &Target, json: bool, follow: bool) -> Outcome {
    let (stream, socket) = connect(target)?;
    let mut reader = BufReader::new(&stream);
    request_on(&stream, &mut reader, &socket, Op::Events { follow }, &[])?;
    if follow {
        // Events come when they happen: no timeout.
        let _ = stream.set_read_timeout(None);
    }
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|err| {
            (
                Exit::NoDaemon,
                format!("{}: the event stream broke: {err}", socket.display()),
            )
        })?;
        if n == 0 {
            return Err((
                Exit::NoDaemon,
                format!("{}: the daemon ended the event stream", socket.display()),
            ));
        }
        let parsed: StreamLine = serde_json::from_str(&line).map_err(|err| {
            (
                Exit::Refused,
                format!("unreadable event from the daemon: {err}"),
            )
        })?;
        if parsed.end {
            return Ok(Exit::Ok);
        }
        let Some(event) = parsed.event else {
            continue;
        };
        let text = if json {
            serde_json::to_string(&event).map_err(|err| (Exit::Refused, err.to_string()))?
        } else {
            event_line(&event)
        };
        // A reader gone (a closed pipe) ends the command quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(Exit::Ok);
        }
    }
}

/// One event as a line for people: time, kind, binding, then what
/// happened. Nothing the daemon quotes from a client reaches the terminal
/// as a control or hidden character.
fn event_line(e: &EventInfo) -> String {
    let mut text = format!("{} {}", e.time, e.kind);
    if let Some(b) = &e.binding {
        text.push(' ');
        text.push_str(&b.label);
    }
    let pids = |pids: &[i32]| {
        let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
        pids.join(",")
    };
    let signal = e.signal.as_deref().unwrap_or("?");
    let detail = match e.kind.as_str() {
        "bound" => format!(
            "parent {}, children {}, {signal}",
            e.parent.unwrap_or_default(),
            pids(e.children.as_deref().unwrap_or_default())
        ),
        "parent_exited" => format!("parent {}", e.parent.unwrap_or_default()),
        "signalled" => format!("{signal} to {}", e.pid.unwrap_or_default()),
        "escalated" => format!(
            "grace over; {signal} to children {}",
            pids(e.children.as_deref().unwrap_or_default())
        ),
        "child_exited" => format!("child {}", e.pid.unwrap_or_default()),
        "unbound" => e.reason.clone().unwrap_or_default(),
        "refused" => format!(
            "{} from uid {} pid {} ({}): {}",
            e.op.as_deref().unwrap_or("request"),
            e.uid.unwrap_or_default(),
            e.pid.map_or_else(|| "?".into(), |p| p.to_string()),
            e.code.as_deref().unwrap_or("-"),
            e.reason.as_deref().unwrap_or_default()
        ),
        "reload_applied" => e.reload.map_or_else(String::new, |r| {
            format!(
                "{} added, {} removed, {} unchanged, {} failed",
                r.added, r.removed, r.unchanged, r.failed
            )
        }),
        "dropped" => format!(
            "{} events not shown: this reader fell behind",
            e.count.unwrap_or_default()
        ),
        _ => String::new(),
    };
    if !detail.is_empty() {
        text.push_str(": ");
        text.push_str(&detail);
    }
    tether::escape_controls(&text)
}

fn reload(socket: &Target) -> Outcome {
    let response = simple(socket, Op::Reload)?;
    if let Some(r) = response.reload {
        println!(
            "reloaded: {} added, {} removed, {} unchanged, {} failed",
            r.added, r.removed, r.unchanged, r.failed
        );
    }
    Ok(Exit::Ok)
}

/// `tetherctl exec`: bind the launcher (or `--parent`) to this process,
/// then become CMD, which keeps this pid and so stays bound.
fn exec(
    socket: &Target,
    parent: Option<ProcRef>,
    fallback: bool,
    options: BindingOptions,
    cmd: &[String],
) -> Outcome {
    let Some((program, args)) = cmd.split_first() else {
        return Err((Exit::Usage, "exec needs a command after --".into()));
    };
    // Capture the parent first. If it then dies before the pidfd is open,
    // either the pid is gone (open fails) or getppid() no longer returns it
    // (we were re-parented to a reaper), so the check after the open proves
    // the pidfd is our real launcher, without comparing with 1 (subreapers
    // adopt orphans too).
    let own_parent = parent.is_none();
    let ppid = match parent {
        Some(p) => p.pid,
        None => nix::unistd::getppid().as_raw(),
    };
    if own_parent && ppid <= 1 {
        // Re-parented to init: whoever ran us has exited (as in `( tetherctl
        // exec -- cmd & )`), and init is not a launcher tetherd watches. An
        // orphan adopted by a subreaper cannot be told from that
        // subreaper's own child: that case needs --parent (tetherctl(1)).
        return Err((
            Exit::ParentGone,
            format!(
                "the launcher is gone: this process was adopted by pid {ppid}; not starting {program} \
                 (a script that starts tetherctl exec from a subshell or in the background should pass --parent $$)"
            ),
        ));
    }
    let gone = |why: &str| {
        (
            Exit::ParentGone,
            format!("the parent {ppid} {why}; not starting {program}"),
        )
    };
    // A pidfd on the parent and on this process where the kernel has
    // them: the daemon then pins both race-free. Elsewhere (macOS, the
    // BSDs, Linux before 5.3 or under seccomp) each is named by its start
    // time, read now, while the parent is proven ours by getppid() below.
    let parent_fd = tether::process_descriptor(ppid).map_err(|err| match err.raw_os_error() {
        Some(libc::ESRCH) | Some(libc::EINVAL) => gone("is already gone"),
        _ => (
            Exit::Refused,
            format!("cannot open the parent {ppid}: {err}"),
        ),
    })?;
    let parent_start = match (&parent_fd, parent.and_then(|p| p.start)) {
        (_, Some(start)) => Some(start),
        (Some(_), None) => None,
        (None, None) => match tether::process_start_time(ppid) {
            Ok(Some(start)) => Some(start),
            Ok(None) => return Err(gone("is already gone")),
            Err(err) => {
                return Err((
                    Exit::Refused,
                    format!("cannot read the start time of the parent {ppid}: {err}"),
                ))
            }
        },
    };
    if own_parent && nix::unistd::getppid().as_raw() != ppid {
        return Err(gone("exited before it could be watched"));
    }
    let me = nix::unistd::getpid().as_raw();
    let self_fd = tether::process_descriptor(me).map_err(|err| {
        (
            Exit::Refused,
            format!("cannot open a pidfd on this process: {err}"),
        )
    })?;
    let self_start = match &self_fd {
        Some(_) => None,
        None => tether::process_start_time(me).ok().flatten(),
    };
    let fds: Vec<BorrowedFd<'_>> = [&parent_fd, &self_fd]
        .into_iter()
        .flatten()
        .map(|fd| fd.as_fd())
        .collect();
    let parent_idx = parent_fd.as_ref().map(|_| 0);
    let self_idx = self_fd.as_ref().map(|_| usize::from(parent_fd.is_some()));

    let mut req = bind_request(
        ProcRef {
            pid: ppid,
            start: parent_start,
            pidfd: parent_idx,
        },
        vec![ProcRef {
            pid: me,
            start: self_start,
            pidfd: self_idx,
        }],
        BindingOptions {
            name: options
                .name
                .clone()
                .or_else(|| tether::name_for_program(program)),
            ..options
        },
    );
    req.require_live_parent = true;
    let signal = req.signal.clone();
    match request(socket, Op::Bind(req), &fds) {
        Ok(_) => {}
        Err((Exit::NoDaemon, why)) if fallback => {
            if !own_parent {
                return Err((
                    Exit::NoDaemon,
                    format!("{why}; --fallback pdeathsig can only watch the real parent, not --parent {ppid}"),
                ));
            }
            let sig = match signal.as_deref().map(parse_signal) {
                Some(Ok(sig)) => sig.get(),
                Some(Err(err)) => return Err((Exit::Usage, err)),
                None => nix::sys::signal::Signal::SIGTERM,
            };
            match tether::arm_parent_death_signal(sig) {
                Ok(true) => eprintln!(
                    "tetherctl: {why}; falling back to the kernel's parent-death signal ({sig}); \
                     it is weaker: on Linux it fires when the launching thread exits, it is cleared by set-uid exec, \
                     and it has no SIGKILL escalation"
                ),
                Ok(false) => {
                    return Err((
                        Exit::NoDaemon,
                        format!("{why}; this OS has no kernel parent-death signal to fall back on (Linux and FreeBSD have one), so tetherctl exec needs the daemon here"),
                    ))
                }
                Err(err) => return Err((Exit::NoDaemon, format!("{why}; arming the parent-death signal failed: {err}"))),
            }
        }
        Err((Exit::NoDaemon, why)) => {
            return Err((
                Exit::NoDaemon,
                format!("{why}; not starting {program} untethered (--fallback pdeathsig would use the kernel's weaker mechanism)"),
            ))
        }
        Err((Exit::ParentGone, why)) => {
            return Err((Exit::ParentGone, format!("{why}; not starting {program}")))
        }
        Err(other) => return Err(other),
    }
    // The re-check after registering: if the launcher died meanwhile, the
    // daemon has already acted (or the fallback would never fire).
    if own_parent && nix::unistd::getppid().as_raw() != ppid {
        return Err(gone("exited while the binding was made"));
    }
    drop(parent_fd);
    drop(self_fd);
    let err = std::process::Command::new(program).args(args).exec();
    let exit = if err.kind() == std::io::ErrorKind::NotFound {
        Exit::NotFound
    } else {
        Exit::CannotExec
    };
    Err((exit, format!("cannot run {program}: {err}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The user's own socket is used only when its directory is the
    /// user's (or root's) alone and something accepts on it; a stale
    /// socket, a missing one, or a directory others could have made falls
    /// through to the system socket.
    #[test]
    fn the_default_socket_falls_through_to_the_system_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let dir = tmp.path().join("own");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o700);
        let own = dir.join("tether.sock");
        let system = tmp.path().join("system.sock");
        let pick = |me: u32| choose_default(&own, &system, me, |p| UnixStream::connect(p));

        // Nothing there: the system socket, nothing to say.
        assert!(matches!(pick(me), Choice::System(s, why) if s == system && why.is_empty()));

        // A stale socket file: passed over, and said why.
        drop(UnixListener::bind(&own).unwrap());
        match pick(me) {
            Choice::System(s, why) => {
                assert_eq!(s, system);
                assert!(why[0].contains("Connection refused"), "{why:?}");
            }
            Choice::Own(_) => panic!("a stale socket was used"),
        }

        // A listener: the user's own daemon.
        std::fs::remove_file(&own).unwrap();
        let _listener = UnixListener::bind(&own).unwrap();
        assert!(matches!(pick(me), Choice::Own(_)));

        // The same listener in a directory others may write, or owned by
        // another uid: never used.
        chmod(&dir, 0o777);
        match pick(me) {
            Choice::System(_, why) => assert!(why[0].contains("writable by others (mode 0777)")),
            Choice::Own(_) => panic!("a directory others can write was trusted"),
        }
        chmod(&dir, 0o1777);
        assert!(matches!(pick(me), Choice::System(..)));
        chmod(&dir, 0o700);
        if me == 0 {
            std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
            match pick(me) {
                Choice::System(_, why) => {
                    assert!(why[0].contains("owned by uid 4242, neither root nor you"));
                }
                Choice::Own(_) => panic!("another uid's directory was trusted"),
            }
            std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        }
        // A symlink to a good directory is not a directory.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let via_link = link.join("tether.sock");
        assert!(matches!(
            choose_default(&via_link, &system, me, |p| UnixStream::connect(p)),
            Choice::System(_, why) if why[0].contains("is not a directory")
        ));
    }

    #[test]
    fn refusal_codes_map_to_exit_statuses() {
        assert_eq!(refusal_exit(Some("parent_gone")), Exit::ParentGone);
        assert_eq!(refusal_exit(Some("something_new")), Exit::Refused);
        assert_eq!(refusal_exit(None), Exit::Refused);
    }
}
