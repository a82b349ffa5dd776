//! `tetherctl`: the client of tetherd's control socket, and the `exec`
//! wrapper that tethers a command to whoever launched it.

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tether::config::{parse_duration, parse_kill, parse_signal};
use tether::protocol::{BindRequest, BindingInfo, Op, ProcRef, Request, Response, VERSION};

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
  3    no tetherd answered on the socket
  4    exec: the parent is already gone; the command was not started
  126  exec: the command could not be run
  127  exec: the command was not found

Environment:
  TETHER_SOCKET  the control socket (overridden by --socket; overrides --config)

See tetherctl(1) and docs/protocol.md.";

/// Talk to tetherd: bind processes, list and remove bindings, or run a
/// command tethered to whoever launched it.
#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The control socket [default: $TETHER_SOCKET, else the `[daemon]
    /// socket` of the configuration file, else /run/tether/tether.sock as
    /// root; otherwise $XDG_RUNTIME_DIR/tether/tether.sock if it exists,
    /// else the system socket /run/tether/tether.sock]
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

/// The user's own daemon if one is listening, else the system daemon.
fn default_socket() -> PathBuf {
    let own = tether::paths::default_socket();
    let system = PathBuf::from("/run/tether/tether.sock");
    if own != system && !own.exists() && system.exists() {
        return system;
    }
    own
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
/// default socket is used with a warning. A missing default file is no
/// error; a missing `--config` file is.
fn configured_socket(config: Option<&PathBuf>) -> Result<Option<PathBuf>, (Exit, String)> {
    let path = config
        .cloned()
        .unwrap_or_else(tether::paths::default_config);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if config.is_none() && err.kind() == std::io::ErrorKind::NotFound => {
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
    let from_config = || match configured_socket(cli.config.as_ref()) {
        Ok(socket) => Ok(socket.unwrap_or_else(default_socket)),
        Err(err) => Err(err),
    };
    let socket = match cli
        .socket
        .clone()
        .or_else(|| std::env::var_os("TETHER_SOCKET").map(PathBuf::from))
        .map_or_else(from_config, Ok)
    {
        Ok(socket) => socket,
        Err((exit, message)) => {
            eprintln!("tetherctl: {message}");
            return exit.into();
        }
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
            eprintln!("tetherctl: {message}");
            exit.into()
        }
    }
}

type Outcome = Result<Exit, (Exit, String)>;

/// One request, one response, over a fresh connection.
fn request(socket: &PathBuf, op: Op, fds: &[BorrowedFd<'_>]) -> Result<Response, (Exit, String)> {
    let stream = UnixStream::connect(socket).map_err(|err| {
        (
            Exit::NoDaemon,
            format!("no tetherd answers at {}: {err}", socket.display()),
        )
    })?;
    let timeout = Some(Duration::from_secs(30));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_vec(&Request { v: VERSION, op })
        .map_err(|err| (Exit::Usage, format!("cannot encode the request: {err}")))?;
    line.push(b'\n');
    let io_err = |err: std::io::Error| (Exit::NoDaemon, format!("{}: {err}", socket.display()));
    if fds.is_empty() {
        (&stream).write_all(&line).map_err(io_err)?;
    } else {
        let sent = tether::sys::send_with_fds(&stream, &line, fds).map_err(io_err)?;
        if let Some(rest) = line.get(sent..) {
            (&stream).write_all(rest).map_err(io_err)?;
        }
    }
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(io_err)?;
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
        return Err((Exit::Refused, message));
    }
    Ok(response)
}

fn simple(socket: &PathBuf, op: Op) -> Result<Response, (Exit, String)> {
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
    socket: &PathBuf,
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

fn list(socket: &PathBuf, json: bool) -> Outcome {
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

/// The `list` table: one line per binding, columns padded to fit.
fn table(bindings: &[BindingInfo]) -> String {
    let header = [
        "ID", "NAME", "ORIGIN", "UID", "PARENT", "CHILDREN", "SIGNAL", "GRACE", "KILL", "PHASE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for b in bindings {
        let children: Vec<String> = b.children.iter().map(|c| c.to_string()).collect();
        rows.push(vec![
            b.id.to_string(),
            b.name.clone().unwrap_or_else(|| "-".into()),
            b.origin.clone(),
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
        ]);
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

fn status(socket: &PathBuf, json: bool) -> Outcome {
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
        "descriptors:  {} in use of {} allowed",
        status.fds_in_use, status.fds_allowed
    );
    Ok(Exit::Ok)
}

fn reload(socket: &PathBuf) -> Outcome {
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
    socket: &PathBuf,
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
    let parent_fd =
        tether::sys::process_descriptor(ppid).map_err(|err| match err.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::EINVAL) => gone("is already gone"),
            _ => (
                Exit::Refused,
                format!("cannot open the parent {ppid}: {err}"),
            ),
        })?;
    let parent_start = match (&parent_fd, parent.and_then(|p| p.start)) {
        (_, Some(start)) => Some(start),
        (Some(_), None) => None,
        (None, None) => match tether::watch::start_time(ppid) {
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
    let self_fd = tether::sys::process_descriptor(me).map_err(|err| {
        (
            Exit::Refused,
            format!("cannot open a pidfd on this process: {err}"),
        )
    })?;
    let self_start = match &self_fd {
        Some(_) => None,
        None => tether::watch::start_time(me).ok().flatten(),
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
            name: options.name.clone().or_else(|| Some(program.clone())),
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
            match tether::sys::arm_parent_death_signal(sig) {
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
