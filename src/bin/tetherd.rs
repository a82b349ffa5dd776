//! `tetherd`: the resident daemon. Parses arguments, loads and validates
//! the configuration, sets up logging, and hands over to `daemon::Daemon`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use std::time::Duration;

use tether::{parse_poll_interval, BackendKind, Config, PidSource, Trust};
use tether::{ConfigSource, Failure, Options};

/// Exit codes, documented in `--help` and tetherd(8).
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Clean stop, or a valid configuration with `--check-config`.
    Ok = 0,
    /// A runtime failure: the event loop or the kernel let us down.
    Runtime = 1,
    /// Bad usage or an invalid configuration.
    Config = 2,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

const AFTER_HELP: &str = "\
Signals:
  SIGHUP           reload the configuration; an invalid file is logged and ignored
  SIGTERM, SIGINT  stop; bound children are left alone

Exit status:
  0  stopped cleanly (or, with --check-config, the configuration is valid)
  1  runtime failure (no usable backend, socket in use, event loop error)
  2  usage error or invalid configuration

Files:
  /etc/tether/tether.toml            configuration (as root)
  $XDG_CONFIG_HOME/tether/tether.toml  configuration (other users; ~/.config by default)
  /var/lib/tether/state.json         socket bindings and pins, kept across restarts (as root)
  /run/tether/tether.sock            control socket for tetherctl (as root)

See tetherd(8) and tether.toml(5).";

/// Watch parent processes and signal their bound children when they exit.
#[derive(Debug, Parser)]
#[command(name = "tetherd", version, about, after_help = AFTER_HELP)]
struct Args {
    /// Configuration file [default: /etc/tether/tether.toml as root,
    /// $XDG_CONFIG_HOME/tether/tether.toml otherwise; a missing default
    /// file means no static bindings]
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// State file for socket bindings (with pins of configured pids beside
    /// it, in STATE.pins.json), kept across restarts [default: [daemon]
    /// state, else /var/lib/tether/state.json as root,
    /// $XDG_STATE_HOME/tether/state.json otherwise]
    #[arg(long, value_name = "PATH")]
    state: Option<PathBuf>,

    /// Control socket [default: [daemon] socket, else
    /// /run/tether/tether.sock as root, $XDG_RUNTIME_DIR/tether/tether.sock
    /// otherwise]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// How to watch processes: auto, pidfd, netlink or poll (Linux),
    /// kqueue (macOS, BSDs) [default: [daemon] backend, else auto]
    #[arg(long, value_name = "NAME", value_parser = parse_backend)]
    backend: Option<BackendKind>,

    /// How often the poll backend checks the watched processes, e.g.
    /// "500ms" (10ms to 1h) [default: [daemon] poll_interval, else 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_poll_interval)]
    poll_interval: Option<Duration>,

    /// Validate the configuration, print any errors, and exit (0 valid,
    /// 2 invalid) without starting
    #[arg(short = 't', long)]
    check_config: bool,

    /// Write a newline to descriptor N and close it once the daemon is
    /// ready (s6's notification-fd convention)
    #[arg(long, value_name = "N")]
    ready_fd: Option<i32>,

    /// Print each backend this build has and whether it can run here
    /// (with the reason if not), best first, and exit (0 if any can, 1
    /// if none)
    #[arg(long, conflicts_with = "check_config")]
    list_backends: bool,

    /// Print a completion script for SHELL (bash, zsh, fish, ...) on
    /// standard output and exit; the packages install them
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
}

fn parse_backend(text: &str) -> Result<BackendKind, String> {
    text.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(shell) = args.completions {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "tetherd",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    if args.list_backends {
        return list_backends(&args);
    }
    let root = nix::unistd::geteuid().is_root();
    let source = match &args.config {
        Some(path) => ConfigSource {
            path: path.clone(),
            required: true,
            trust: trust(root),
        },
        None => ConfigSource {
            path: tether::default_config(),
            required: false,
            trust: trust(root),
        },
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "tetherd: {} error(s) in {}",
                errors.0.len(),
                source.path.display()
            );
            return Exit::Config.into();
        }
    };
    if args.check_config {
        if root {
            for warning in service_warnings(&config) {
                eprintln!("tetherd: warning: {}: {warning}", source.path.display());
            }
        }
        println!(
            "{}: configuration OK ({} bindings)",
            source.path.display(),
            config.bindings.len() + config.pidfile_bindings.len()
        );
        return Exit::Ok.into();
    }
    let ready_fd = match args.ready_fd.map(tether::inherited_fd).transpose() {
        Ok(fd) => fd,
        Err(err) => {
            eprintln!("tetherd: --ready-fd: {err}");
            return Exit::Config.into();
        }
    };
    let log_from_env = init_logging(config.daemon.log);
    let options = Options {
        config: source,
        state_path: args.state,
        socket_path: args.socket,
        log_from_env,
        backend: args.backend,
        poll_interval: args.poll_interval,
        notifier: tether::Notifier::new(ready_fd),
    };
    match tether::run(options, config) {
        Ok(()) => Exit::Ok.into(),
        Err(Failure::Start(err)) => {
            log::error!("cannot start: {err}");
            Exit::Runtime.into()
        }
        Err(Failure::Loop(err)) => {
            log::error!("event loop failed: {err}");
            Exit::Runtime.into()
        }
    }
}

/// `--list-backends`: one line per backend, `NAME usable` or `NAME not
/// usable: REASON`.
fn list_backends(args: &Args) -> ExitCode {
    let settings = tether::WatchSettings {
        kind: BackendKind::Auto,
        poll_interval: args.poll_interval.unwrap_or(Duration::from_secs(1)),
    };
    let mut any = false;
    for (kind, result) in tether::probe_backends(&settings) {
        match result {
            Ok(()) => {
                any = true;
                println!("{kind:<8} usable");
            }
            Err(err) => println!("{kind:<8} not usable: {err}"),
        }
    }
    // Not a backend: whether `kill = "cgroup"` can be used, and where.
    match tether::locate_cgroups(None, false) {
        Ok(place) => println!(
            "{:<8} usable: cgroups under {} ({})",
            "cgroup",
            place.root.display(),
            place.how
        ),
        Err(err) => println!("{:<8} not usable: {err}", "cgroup"),
    }
    if any {
        Exit::Ok.into()
    } else {
        Exit::Runtime.into()
    }
}

/// What `--check-config` run as root warns about: paths the shipped
/// systemd unit (packaging/systemd/tetherd.service) cannot see or write,
/// and pidfiles a root daemon would refuse for where they are. Warnings,
/// not errors: the file is valid, and may be meant for another service
/// manager.
fn service_warnings(config: &Config) -> Vec<String> {
    use tether::pidfile;
    let mut warnings = Vec::new();
    for binding in &config.pidfile_bindings {
        let files = std::iter::once(&binding.parent).chain(&binding.children);
        for path in files.filter_map(|source| match source {
            PidSource::Pidfile(path) => Some(path),
            PidSource::Pid(_) => None,
        }) {
            let label = binding.label();
            if let Some(setting) = pidfile::hidden_by_unit(path) {
                warnings.push(format!(
                    "{label}: {}: hidden from the shipped tetherd.service ({setting}), which will find it missing; write pidfiles under /run",
                    path.display()
                ));
            } else if let Err(why) = pidfile::trusted_location(path) {
                // A directory that does not exist yet may be made by the
                // service that writes the pidfile: say nothing of it.
                if !why.contains("pidfile missing") {
                    warnings.push(format!("{label}: {why}"));
                }
            }
        }
    }
    let writable = [
        ("[daemon] socket", &config.daemon.socket, "/run/tether"),
        ("[daemon] state", &config.daemon.state, "/var/lib/tether"),
    ];
    for (key, path, dir) in writable {
        if let Some(path) = path {
            if !path.starts_with(dir) {
                warnings.push(format!(
                    "{key}: {}: outside {dir}, the only place the shipped tetherd.service may write it (ProtectSystem=strict, PrivateTmp=yes)",
                    path.display()
                ));
            }
        }
    }
    warnings
}

fn trust(root: bool) -> Trust {
    if root {
        Trust::RequireRootOwned
    } else {
        Trust::Any
    }
}

/// Logs go to stderr, one line each. Under systemd (JOURNAL_STREAM set)
/// each line gets a `<N>` syslog priority prefix so the journal keeps the
/// level. `RUST_LOG` overrides the configured level; returns whether it did.
fn init_logging(level: log::LevelFilter) -> bool {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder = env_logger::Builder::new();
    if from_env {
        builder.parse_env("RUST_LOG");
    } else {
        // The logger passes everything; `log::set_max_level` is the one
        // filter, so a reload can change the level.
        builder.filter_level(log::LevelFilter::Trace);
    }
    builder.format(move |buf, record| {
        if journal {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>{}", record.args())
        } else {
            writeln!(
                buf,
                "tetherd: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        }
    });
    builder.target(env_logger::Target::Stderr);
    if builder.try_init().is_err() {
        return from_env;
    }
    if !from_env {
        log::set_max_level(level);
    }
    from_env
}
