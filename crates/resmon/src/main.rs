//! `resmon`: the monitor (`resmon serve`) and its command-line client.
//!
//! Every client command is a request to the monitor's API: over its Unix
//! socket (the one named, or the first that answers of the caller's own
//! default and the system's), or over its TCP listener with a bearer token
//! (`--url`). Exit codes are decided here, in one place:
//! 0 done, 1 the operation failed, 2 usage (including an invalid config),
//! 3 cannot reach the monitor, 4 access denied.

use anyhow::Context;
use clap::{Parser, Subcommand};
use resmon_client::wire::{EventRecord, NodesReply, ResourceStatus};
use resmon_client::{ApiError, Client, ClientError, Operation, StatusCode, Token};
use resmon_daemon::config::LogFormat;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "resmon",
    version,
    about = "A resource monitor for high-availability services",
    after_help = "Commands that ask the monitor reach it through --url URL (or RESMON_URL) or \
                  --socket PATH (or RESMON_SOCKET) when one is given, and only there. Else \
                  they try, in this order, your own default socket ($XDG_RUNTIME_DIR/resmon.sock, \
                  else /tmp/resmon-UID.sock; /run/resmon/resmon.sock as root), then the system \
                  socket /run/resmon/resmon.sock, and use the first that answers."
)]
struct Cli {
    /// The form of earlier releases, `resmon --socket PATH COMMAND`: the
    /// same as the command's own --socket.
    #[arg(long, hide = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Cmd,
}

/// The system monitor's socket: the default of a monitor run as root.
const SYSTEM_SOCKET: &str = "/run/resmon/resmon.sock";

/// How a command that asks the monitor reaches it.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Reaching the monitor")]
struct Reach {
    /// The monitor's API socket [env: RESMON_SOCKET]; only that one is tried.
    ///
    /// Without it (and without --url) the command tries, in this order, your
    /// own default socket ($XDG_RUNTIME_DIR/resmon.sock, else
    /// /tmp/resmon-UID.sock; /run/resmon/resmon.sock as root), then the
    /// system socket /run/resmon/resmon.sock, and uses the first that
    /// answers; a socket served by a user who is neither root nor you is
    /// never used.
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    socket: Option<PathBuf>,
    /// The monitor's TCP listener ([api] tcp), http://HOST:PORT, instead of
    /// a socket [env: RESMON_URL].
    ///
    /// Plain HTTP only, as the listener speaks. Every request carries the
    /// bearer token of RESMON_TOKEN, or of --token-file.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// With --url: the file that holds the bearer token [default: the
    /// RESMON_TOKEN variable].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum NodeAction {
    /// Move every group off the node, and keep new ones away (the mark is
    /// in etcd: it outlives the node's monitor).
    Drain {
        /// The node.
        node: String,
        /// Return once the node runs no group (another node took each).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Let groups run on the node again.
    Resume {
        /// The node.
        node: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the monitor in the foreground; SIGTERM/SIGINT take everything offline.
    Serve {
        /// The config file (TOML; docs/configuration.md).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Listen on this socket instead of the config's [monitor] socket.
        #[arg(long, env = "RESMON_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Check a config file and exit, starting nothing.
    Check {
        /// The config file to check.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Also open every resource as `serve` would, without bringing any
        /// online: an OCF agent runs `validate-all`, a plugin's library is
        /// loaded and asked to open it. Whatever that starts is stopped
        /// before the check exits.
        #[arg(long)]
        validate: bool,
    },
    /// Show resources and their state.
    Status {
        /// Only this resource [default: every resource].
        name: Option<String>,
        /// Print JSON: {"resources":[...]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Cluster mode: the nodes, whether each is live, and the groups each owns.
    Nodes {
        /// Print JSON, as GET /v1/nodes answers.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Cluster mode: drain a node (its groups move to other nodes, and
    /// none comes to it) or resume it.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Cluster mode: move a group to a node (offline on its owner, released,
    /// online on the node).
    Move {
        /// The group to move.
        group: String,
        /// The node to move it to (a live one).
        node: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// Bring a resource online (its providers first).
    #[command(visible_alias = "start")]
    Online {
        /// The resource.
        name: String,
        /// Return once it is online (exit 1 if it fails instead).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Take a resource offline (its dependents first).
    #[command(visible_alias = "stop")]
    Offline {
        /// The resource.
        name: String,
        /// Return once it is offline.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Take a resource offline with its dependents, then bring it back with
    /// the dependents that were online (a resource that is down is just
    /// brought online).
    Restart {
        /// The resource.
        name: String,
        /// Return once it is back online (exit 1 if it fails instead).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Maintenance mode: health checks still run and are reported, but no
    /// failure acts (no terminate, restart or failover) until it is off.
    Maintenance {
        /// Turn it on or off.
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// The resource (or give --group, --all or --node).
        #[arg(required_unless_present_any = ["group", "all", "node"], conflicts_with_all = ["group", "all", "node"])]
        name: Option<String>,
        /// Every resource of this group.
        #[arg(long, conflicts_with_all = ["all", "node"])]
        group: Option<String>,
        /// Every resource.
        #[arg(long, conflicts_with = "node")]
        all: bool,
        /// Cluster mode: every resource of this node, marked in etcd (asked
        /// of any node; the mark outlives the node's monitor).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        reach: Reach,
    },
    /// End a resource now: its whole process tree is killed.
    Terminate {
        /// The resource.
        name: String,
        /// The exit code its tasks report (0 to 255).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=255))]
        exit_code: i32,
        /// Return as soon as termination has started.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Make a running resource take its configuration again, without a restart.
    ///
    /// A process resource runs its reload_command (killed past its
    /// pending_timeout), else sends its reload_signal to its main process;
    /// its pids stay the same. Other types do not support it.
    ReloadResource {
        /// The resource.
        name: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// Send a signal to a resource's main process (or to all of its processes).
    Signal {
        /// The resource.
        name: String,
        /// A name (`SIGHUP`, `HUP`, `hup`) or a number (`1`).
        signal: String,
        /// Send it to every process of the resource.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Send a control code to a resource (resource_control).
    Control {
        /// The resource.
        name: String,
        /// A number (`4`, `0x4`) or a name: get_state, get_common_properties,
        /// get_characteristics, get_private_properties.
        code: String,
        /// The input, as JSON.
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        #[command(flatten)]
        reach: Reach,
    },
    /// Send a control code to a resource type (resource_type_control).
    TypeControl {
        /// The resource type, e.g. process or ocf:heartbeat:Dummy.
        #[arg(value_name = "TYPE")]
        type_name: String,
        /// A number or a name: get_type_info, get_private_property_names.
        code: String,
        /// The input, as JSON.
        #[arg(long, value_name = "JSON")]
        input: Option<String>,
        #[command(flatten)]
        reach: Reach,
    },
    /// Re-read the monitor's config file and apply what changed (as SIGHUP).
    Reload {
        #[command(flatten)]
        reach: Reach,
    },
    /// Run the monitor's binary from disk again in place (same pid) after
    /// installing a new one: every resource keeps running and is adopted.
    Upgrade {
        #[command(flatten)]
        reach: Reach,
    },
    /// List entry-point calls in progress, with their elapsed time and deadline.
    Calls {
        /// Print JSON: {"calls":[...]}
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Print every metric series (the Prometheus text of `GET /metrics`).
    Metrics {
        #[command(flatten)]
        reach: Reach,
    },
    /// List the installed OCF resource agents, or show one's parameters.
    Agents {
        #[command(subcommand)]
        show: Option<AgentsCmd>,
        /// Where agents live.
        #[arg(long, default_value = resmon_ocf::DEFAULT_OCF_ROOT, global = true)]
        ocf_root: PathBuf,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Print the event history and feed, from the durable journal (earlier
    /// runs of the monitor too).
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only events since then: a duration ago ("1h", "30m") or a time
        /// ("2026-12-07T10:00:00Z"). Without it, the last 1,000 events.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only events of this resource.
        #[arg(long, value_name = "NAME")]
        resource: Option<String>,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// A plugin host process: started by the monitor, never by hand.
    #[command(hide = true)]
    Host {
        /// The plugin library to load.
        #[arg(long)]
        library: PathBuf,
    },
    /// Print a resource's captured output (its log), also after it stopped
    /// and across monitor restarts.
    Logs {
        /// The resource.
        name: String,
        /// Keep printing new lines as they are written.
        #[arg(long)]
        follow: bool,
        /// The last N lines [default: 100; all with --since].
        #[arg(long, short = 'n', value_name = "N")]
        lines: Option<usize>,
        /// Only lines since then: a duration ago ("1h") or a time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only this stream.
        #[arg(long, value_parser = ["stdout", "stderr"])]
        stream: Option<String>,
        /// Print JSON lines ({"time", "stream", "text"}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        reach: Reach,
    },
    /// Print a shell's completion script for resmon, e.g.
    /// `source <(resmon completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (resmon.1 and one per command, resmon-status.1
    /// ...) into DIR, or print resmon.1 without --dir.
    Man {
        /// Where to write the pages.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// A resource's log relay: started by the monitor, never by hand. It
    /// reads the service's stdout on fd 0 and its stderr on fd 1.
    #[command(hide = true, name = "log-relay")]
    LogRelay {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// The resource, whose log is NAME.log.
        #[arg(long)]
        name: String,
        /// Rotate past this many bytes.
        #[arg(long)]
        max_size: u64,
        /// Rotated files to keep.
        #[arg(long)]
        keep: u32,
        /// Split lines longer than this.
        #[arg(long)]
        max_line: usize,
    },
    /// The fence guard of a cluster node: started by the monitor, never by hand.
    #[command(hide = true, name = "fence-guard")]
    FenceGuard {
        /// A watchdog device to keep alive while armed.
        #[arg(long)]
        watchdog: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// The parameters and advised timeouts of one agent, e.g. ocf:heartbeat:Dummy.
    Show {
        /// The agent's type, ocf:PROVIDER:AGENT.
        #[arg(value_name = "TYPE")]
        type_name: String,
    },
}

/// A failure with the exit code it maps to.
/// The exit codes, the table of docs/cli.md ("Exit codes"), decided here
/// and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// Done.
    Done = 0,
    /// The operation failed.
    Failed = 1,
    /// Usage: a bad command, argument or config.
    Usage = 2,
    /// Cannot reach the monitor, or the socket's server is not trusted.
    Unreachable = 3,
    /// Access denied.
    Denied = 4,
}

#[cfg(test)]
impl Exit {
    const ALL: [Exit; 5] = [
        Exit::Done,
        Exit::Failed,
        Exit::Usage,
        Exit::Unreachable,
        Exit::Denied,
    ];

    /// How docs/cli.md's table begins the meaning of this code.
    fn documented_as(self) -> &'static str {
        match self {
            Exit::Done => "done",
            Exit::Failed => "the operation failed",
            Exit::Usage => "usage",
            Exit::Unreachable => "cannot reach the monitor",
            Exit::Denied => "access denied",
        }
    }
}

struct Failure {
    code: Exit,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Protocol { .. } => Exit::Failed,
        };
        fail(code, e.to_string())
    }
}

/// An API error's exit code: refused for want of a right (403) or of a
/// token the TCP listener takes (401), a bad request (400), or anything
/// else that failed.
impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Client(e) => e.into(),
            ApiError::Refused { status, message } => match status {
                StatusCode::FORBIDDEN => fail(Exit::Denied, format!("access denied: {message}")),
                StatusCode::UNAUTHORIZED => fail(Exit::Denied, message),
                StatusCode::BAD_REQUEST => fail(Exit::Usage, message),
                _ => fail(Exit::Failed, message),
            },
            ApiError::Decode(_) => fail(Exit::Failed, e.to_string()),
        }
    }
}

fn fail(code: Exit, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    // While this is the only thread: no resource may inherit systemd's
    // notify socket and speak for the monitor.
    resmon_daemon::sd_notify::take_from_env();
    resmon_daemon::upgrade::remember_start();
    let cli = Cli::parse();
    if let Cmd::Host { library } = &cli.command {
        // No runtime, no logger: the host is a plain process of worker
        // threads, talking to the monitor over its stdin.
        resmon_plugin::host::run(library);
    }
    if let Cmd::LogRelay {
        dir,
        name,
        max_size,
        keep,
        max_line,
    } = &cli.command
    {
        // A plain blocking process: it must keep working with no monitor.
        let args = resmon_daemon::relay::Args {
            dir: dir.clone(),
            name: name.clone(),
            options: resmon_daemon::relay::Options {
                max_size: *max_size,
                keep: *keep,
            },
            max_line: *max_line,
        };
        return ExitCode::from(resmon_daemon::relay::run(&args) as u8);
    }
    if let Cmd::FenceGuard { watchdog } = &cli.command {
        // No runtime either: a small blocking process that must keep
        // working when the monitor is frozen or gone.
        let options = resmon_cluster::guard::GuardOptions {
            watchdog: watchdog.clone(),
            ..Default::default()
        };
        let code = match resmon_cluster::guard::take_socket(0) {
            Ok(sock) => resmon_cluster::guard::run(sock, &options),
            Err(e) => {
                eprintln!("resmon fence-guard: stdin is not the monitor's socket: {e}");
                resmon_cluster::guard::EXIT_SETUP
            }
        };
        return ExitCode::from(code as u8);
    }
    let format = match &cli.command {
        Cmd::Serve { config, .. } => resmon_daemon::config::log_format_of(config),
        _ => LogFormat::Text,
    };
    init_logging(format);
    // One thread runs the monitor's event loop, its timers and the API:
    // nothing there blocks (entry points run on the blocking pool), and a
    // single thread saves a cross-thread wake-up on every health-check tick.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resmon: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::from(Exit::Done as u8),
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("resmon: {}", f.message.trim_end());
            }
            ExitCode::from(f.code as u8)
        }
    }
}

/// The monitor's own log, on stderr: text (coloured only on a terminal)
/// or JSON lines as `[monitor] log_format` says; under systemd, whose
/// journal reads stderr, straight to the journal with its fields.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("RESMON_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let mut journal_error = None;
    if stderr_is_the_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(journal.with_syslog_identifier("resmon".into()))
                    .init();
                return;
            }
            Err(e) => journal_error = Some(e),
        }
    }
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter())
            .init(),
    }
    if let Some(e) = journal_error {
        tracing::warn!("JOURNAL_STREAM names stderr but the journal cannot be reached ({e}): logging to stderr");
    }
}

/// Whether stderr is the stream systemd's journal reads: `JOURNAL_STREAM`
/// (`DEVICE:INODE`) names it, as systemd sets for a service.
fn stderr_is_the_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == st.st_dev)
        && ino.parse::<u64>().is_ok_and(|i| i == st.st_ino)
}

/// A non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The client a command that asks the monitor uses: `--url` or `--socket`
/// (`before` is `--socket` given before the command), else RESMON_URL or
/// RESMON_SOCKET, each alone; else the first that answers of the caller's
/// own default socket and the system's.
fn client(before: Option<PathBuf>, reach: Reach) -> Result<Client, Failure> {
    let usage = |m: &str| Err(fail(Exit::Usage, m));
    let socket = match (before, reach.socket) {
        (Some(_), Some(_)) => return usage("--socket is given twice"),
        (a, b) => a.or(b),
    };
    // The URL, and what named it.
    let (socket, url) = match (socket, reach.url) {
        (Some(_), Some(_)) => return usage("--socket and --url name two monitors: give one"),
        (None, None) => match (env_var("RESMON_SOCKET"), env_var("RESMON_URL")) {
            (Some(_), Some(_)) => return usage(
                "RESMON_SOCKET and RESMON_URL are both set: unset one, or give --socket or --url",
            ),
            (s, u) => (s.map(PathBuf::from), u.map(|u| (u, "RESMON_URL"))),
        },
        (s, u) => (s, u.map(|u| (u, "--url"))),
    };
    if let Some((url, named_by)) = url {
        return Client::tcp(&url, token(reach.token_file)?)
            .map_err(|e| fail(Exit::Usage, format!("{named_by} {e}")));
    }
    if reach.token_file.is_some() {
        return usage(
            "--token-file goes with --url: on a socket the monitor knows you by your uid",
        );
    }
    Ok(match socket {
        Some(s) => Client::new(&s),
        None => Client::first_of([
            resmon_daemon::config::default_socket(),
            PathBuf::from(SYSTEM_SOCKET),
        ]),
    })
}

/// The bearer token for the TCP listener: read from `file`, else from
/// RESMON_TOKEN; none without either.
fn token(file: Option<PathBuf>) -> Result<Option<Token>, Failure> {
    let Some(file) = file else {
        return Ok(env_var("RESMON_TOKEN").map(|t| Token::new(t.trim(), "RESMON_TOKEN")));
    };
    let source = format!("--token-file {}", file.display());
    let text =
        std::fs::read_to_string(&file).map_err(|e| fail(Exit::Usage, format!("{source}: {e}")))?;
    match text.trim() {
        "" => Err(fail(Exit::Usage, format!("{source}: the file is empty"))),
        secret => Ok(Some(Token::new(secret, source))),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if cli.socket.is_some() {
        let local = match &cli.command {
            Cmd::Check { .. } => Some("check"),
            Cmd::Agents { .. } => Some("agents"),
            Cmd::Completions { .. } => Some("completions"),
            Cmd::Man { .. } => Some("man"),
            _ => None,
        };
        if let Some(name) = local {
            return Err(fail(
                Exit::Usage,
                format!("--socket names the monitor to ask; `resmon {name}` asks none"),
            ));
        }
    }
    match cli.command {
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "resmon", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => man_pages(dir.as_deref()),
        Cmd::Host { .. } | Cmd::FenceGuard { .. } | Cmd::LogRelay { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Cmd::Serve { config, socket } => serve(config, cli.socket.or(socket)).await,
        Cmd::Check { config, validate } => {
            let checked = if validate {
                resmon_daemon::validate_config(&config).await
            } else {
                resmon_daemon::check_config(&config).await
            };
            let c = checked.map_err(|e| fail(Exit::Usage, e.to_string()))?;
            for w in resmon_daemon::unowned_warnings() {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok, {} resources{}; socket {}",
                config.display(),
                c.resources.len(),
                if validate { ", each opened" } else { "" },
                c.monitor.socket.display()
            );
            let budget = resmon_daemon::config::stop_budget(&c.resources);
            println!(
                "a stop takes at most {} (under systemd: TimeoutStopSec={}s or more)",
                humantime::format_duration(budget),
                budget.as_secs() + 10
            );
            Ok(())
        }
        Cmd::Status { name, json, reach } => {
            let client = client(cli.socket, reach)?;
            if json {
                // As the monitor sent it: scripts read it, and a thousand
                // resources need not be decoded to be printed.
                let body = client.status_json(name.as_deref()).await?;
                println!("{}", String::from_utf8_lossy(&body).trim_end());
                return Ok(());
            }
            let reply = client.status(name.as_deref()).await?;
            // What is wrong with the monitor itself heads the table.
            for p in &reply.problems {
                println!("WARNING: {p}");
            }
            print_table(&reply.resources);
            Ok(())
        }
        Cmd::Nodes { json, reach } => {
            let reply = client(cli.socket, reach)?.nodes().await?;
            if json {
                return print_json(&reply, false);
            }
            print_nodes(&reply);
            Ok(())
        }
        Cmd::Node {
            action: NodeAction::Resume { node, reach },
        } => {
            let reply = client(cli.socket, reach)?.node_drain(&node, false).await?;
            println!("{}", reply.message);
            Ok(())
        }
        Cmd::Node {
            action: NodeAction::Drain { node, wait, reach },
        } => {
            let client = client(cli.socket, reach)?;
            let reply = client.node_drain(&node, true).await?;
            println!("{}", reply.message);
            if !wait {
                return Ok(());
            }
            // Done once no node is said to run a group there.
            let end = std::time::Instant::now() + std::time::Duration::from_secs(600);
            loop {
                let nodes = client.nodes().await?;
                let left: Vec<String> = nodes
                    .nodes
                    .iter()
                    .filter(|n| n.name == node)
                    .flat_map(|n| n.groups.clone())
                    .collect();
                if left.is_empty() {
                    println!("node {node} runs no group");
                    return Ok(());
                }
                if std::time::Instant::now() > end {
                    return Err(fail(
                        Exit::Failed,
                        format!(
                            "node {node} still runs {} after 10 minutes: no other node could take them",
                            left.join(", ")
                        ),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Cmd::Move { group, node, reach } => {
            let reply = client(cli.socket, reach)?.move_group(&group, &node).await?;
            println!("{}", reply.message);
            Ok(())
        }
        Cmd::Online { name, wait, reach } => {
            let client = client(cli.socket, reach)?;
            operate(&client, &name, Operation::Online, wait).await
        }
        Cmd::Offline { name, wait, reach } => {
            let client = client(cli.socket, reach)?;
            operate(&client, &name, Operation::Offline, wait).await
        }
        Cmd::Restart { name, wait, reach } => {
            let client = client(cli.socket, reach)?;
            operate(&client, &name, Operation::Restart, wait).await
        }
        Cmd::Maintenance {
            mode,
            name,
            group,
            all: _,
            node,
            reach,
        } => {
            let on = mode == "on";
            let client = client(cli.socket, reach)?;
            if let Some(node) = node {
                let reply = client.node_maintenance(&node, on).await?;
                println!("{}", reply.message);
                return Ok(());
            }
            if let Some(name) = name {
                return operate(&client, &name, Operation::Maintenance(on), false).await;
            }
            let reply = client.maintenance(group.as_deref(), on).await?;
            for r in &reply.resources {
                println!(
                    "{}: {}{}",
                    r.name,
                    r.state,
                    if r.maintenance { ", maintenance" } else { "" }
                );
            }
            Ok(())
        }
        Cmd::Terminate {
            name,
            exit_code,
            no_wait,
            reach,
        } => {
            let op = Operation::Terminate { exit_code };
            operate(&client(cli.socket, reach)?, &name, op, !no_wait).await
        }
        Cmd::Logs {
            name,
            follow,
            lines,
            since,
            stream,
            json,
            reach,
        } => {
            let q = resmon_client::LogsQuery {
                lines,
                since,
                stream,
                follow,
            };
            logs(&client(cli.socket, reach)?, &name, &q, json).await
        }
        Cmd::Events {
            follow,
            since,
            resource,
            json,
            reach,
        } => {
            let q = resmon_client::EventsQuery {
                follow,
                since,
                resource,
            };
            events(&client(cli.socket, reach)?, &q, json).await
        }
        Cmd::Agents {
            show,
            ocf_root,
            json,
        } => tokio::task::spawn_blocking(move || agents(show, &ocf_root, json))
            .await
            .map_err(|e| fail(Exit::Failed, e.to_string()))?,
        Cmd::ReloadResource { name, reach } => {
            let r = client(cli.socket, reach)?.reload_resource(&name).await?;
            println!("{}: {}", r.resource, r.message);
            Ok(())
        }
        Cmd::Signal {
            name,
            signal,
            all,
            reach,
        } => {
            let r = client(cli.socket, reach)?
                .signal(&name, &signal, all)
                .await?;
            println!("{}: {}", r.resource, r.message);
            Ok(())
        }
        Cmd::Control {
            name,
            code,
            input,
            reach,
        } => {
            let input = json_input(input)?;
            let reply = client(cli.socket, reach)?
                .control(&name, &code, input)
                .await?;
            print_json(&reply.output, true)
        }
        Cmd::TypeControl {
            type_name,
            code,
            input,
            reach,
        } => {
            let input = json_input(input)?;
            let reply = client(cli.socket, reach)?
                .type_control(&type_name, &code, input)
                .await?;
            print_json(&reply.output, true)
        }
        Cmd::Reload { reach } => {
            let r = client(cli.socket, reach)?.reload().await?;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(", ")
                }
            };
            println!("added:     {}", list(&r.added));
            println!("removed:   {}", list(&r.removed));
            println!("restarted: {}", list(&r.restarted));
            println!("updated:   {}", list(&r.updated));
            for n in &r.notes {
                println!("note: {n}");
            }
            Ok(())
        }
        Cmd::Upgrade { reach } => {
            let client = client(cli.socket, reach)?;
            let reply = client.upgrade().await?;
            println!("{}", reply.message);
            // The old process ends with this answer; the new one is ready
            // once it has adopted everything.
            let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !client.is_ready().await {
                if std::time::Instant::now() > end {
                    return Err(fail(
                        Exit::Unreachable,
                        "the upgraded monitor is not ready after 120 s: see its log",
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            println!("upgraded: the monitor is ready again");
            Ok(())
        }
        Cmd::Metrics { reach } => {
            print!("{}", client(cli.socket, reach)?.metrics().await?);
            Ok(())
        }
        Cmd::Calls { json, reach } => {
            let reply = client(cli.socket, reach)?.calls().await?;
            if json {
                return print_json(&reply, false);
            }
            println!(
                "{:<24} {:<18} {:>10} {:>12}  DEADLINE",
                "RESOURCE", "ENTRY", "ELAPSED", "REMAINING"
            );
            for c in reply.calls {
                println!(
                    "{:<24} {:<18} {:>8}ms {:>10}ms  {}",
                    c.resource, c.entry, c.elapsed_ms, c.remaining_ms, c.deadline
                );
            }
            Ok(())
        }
    }
}

/// `--input`, checked to be JSON before it is sent.
fn json_input(input: Option<String>) -> Result<Option<String>, Failure> {
    if let Some(i) = &input {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(i) {
            return Err(fail(Exit::Usage, format!("--input is not JSON: {e}")));
        }
    }
    Ok(input)
}

/// Prints `value` as JSON on stdout: on one line as the API sends it
/// (`--json`), or `pretty` for people (a control code's output).
fn print_json(value: &impl serde::Serialize, pretty: bool) -> Result<(), Failure> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(|e| fail(Exit::Failed, format!("printing the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `resmon agents [show TYPE]`: reads the agents on this machine directly.
fn agents(show: Option<AgentsCmd>, root: &std::path::Path, json: bool) -> Result<(), Failure> {
    match show {
        Some(AgentsCmd::Show { type_name }) => {
            let (provider, agent) =
                resmon_ocf::parse_type(&type_name).map_err(|e| fail(Exit::Usage, e.to_string()))?;
            let path = resmon_ocf::agent_path(root, &provider, &agent);
            if !path.is_file() {
                return Err(fail(
                    Exit::Failed,
                    format!(
                        "no agent {type_name}: {} does not exist (resmon agents lists them)",
                        path.display()
                    ),
                ));
            }
            let m = resmon_ocf::read_meta_data(root, &path)
                .map_err(|e| fail(Exit::Failed, e.to_string()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
                return Ok(());
            }
            println!("{type_name}: {}", m.shortdesc);
            if !m.longdesc.is_empty() {
                println!("\n{}", m.longdesc);
            }
            println!("\nparameters (params = {{ ... }}):");
            for p in &m.parameters {
                let mut tags = vec![p.content_type.clone()];
                if p.required {
                    tags.push("required".into());
                }
                if let Some(d) = &p.default {
                    tags.push(format!("default {d:?}"));
                }
                println!("  {:<24} {} [{}]", p.name, p.shortdesc, tags.join(", "));
            }
            println!("\nactions (advised timeouts):");
            for a in m.actions.values() {
                let t = a
                    .timeout
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_else(|| "-".into());
                println!("  {:<14} {t}", a.name);
            }
            Ok(())
        }
        None => {
            let list = resmon_ocf::list_agents(root);
            if list.is_empty() {
                return Err(fail(
                    Exit::Failed,
                    format!(
                        "no agents under {}/resource.d (Debian: apt-get install resource-agents)",
                        root.display()
                    ),
                ));
            }
            // meta-data of every agent, a few at a time.
            let descs: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = list
                    .chunks(list.len().div_ceil(8))
                    .map(|chunk| {
                        s.spawn(move || {
                            chunk
                                .iter()
                                .map(|(_, p)| {
                                    resmon_ocf::read_meta_data(root, p)
                                        .map(|m| m.shortdesc)
                                        .unwrap_or_else(|e| format!("(meta-data failed: {e})"))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            let mut out = std::io::stdout().lock();
            if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .zip(&descs)
                    .map(|((t, _), d)| serde_json::json!({"type": t, "description": d}))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
                return Ok(());
            }
            let width = list.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
            for ((t, _), d) in list.iter().zip(&descs) {
                if writeln!(out, "{t:<width$}  {d}").is_err() {
                    break;
                }
            }
            Ok(())
        }
    }
}

async fn serve(config: PathBuf, socket: Option<PathBuf>) -> Result<(), Failure> {
    let mut c = resmon_daemon::check_config(&config)
        .await
        .map_err(|e| fail(Exit::Usage, e.to_string()))?;
    if let Some(s) = socket {
        c.monitor.socket = s;
    }
    tracing::info!(
        "serving {} resources from {} on {}",
        c.resources.len(),
        config.display(),
        c.monitor.socket.display()
    );
    resmon_daemon::serve(c)
        .await
        .context("the monitor stopped on an error")
        .map_err(|e| fail(Exit::Failed, format!("{e:#}")))?;
    tracing::info!("monitor stopped: every resource is down; exiting 0");
    Ok(())
}

async fn operate(client: &Client, name: &str, op: Operation, wait: bool) -> Result<(), Failure> {
    let reply = client.operate(name, op, wait).await?;
    let r = reply.resource;
    println!(
        "{}: {}{}",
        r.name,
        r.state,
        if r.maintenance { ", maintenance" } else { "" }
    );
    for w in &reply.warnings {
        eprintln!("resmon: warning: {w}");
    }
    Ok(())
}

async fn events(
    client: &Client,
    q: &resmon_client::EventsQuery,
    json: bool,
) -> Result<(), Failure> {
    let mut feed = client.events(q).await?;
    let stdout = std::io::stdout();
    while let Some(line) = feed.next_line().await? {
        let text = if json {
            String::from_utf8_lossy(&line).into_owned()
        } else {
            match serde_json::from_slice::<EventRecord>(&line) {
                Ok(e) => format_event(&e),
                Err(_) => String::from_utf8_lossy(&line).into_owned(),
            }
        };
        // A closed stdout (e.g. `| head`) ends the command quietly.
        let mut out = stdout.lock();
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn logs(
    client: &Client,
    name: &str,
    q: &resmon_client::LogsQuery,
    json: bool,
) -> Result<(), Failure> {
    let mut feed = client.logs(name, q).await?;
    let stdout = std::io::stdout();
    // A line longer than 64 KiB comes in pieces: printed as one.
    let mut open = false;
    while let Some(line) = feed.next_line().await? {
        let text = if json {
            format!("{}\n", String::from_utf8_lossy(&line))
        } else {
            match serde_json::from_slice::<serde_json::Value>(&line) {
                Ok(v) => {
                    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    let head = if open {
                        String::new()
                    } else {
                        format!("{} {}: ", field("time"), field("stream"))
                    };
                    open = v["continues"].as_bool().unwrap_or(false);
                    format!("{head}{}{}", field("text"), if open { "" } else { "\n" })
                }
                Err(_) => format!("{}\n", String::from_utf8_lossy(&line)),
            }
        };
        let mut out = stdout.lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Writes resmon.1 and a page per visible command into `dir` (created if
/// missing), or resmon.1 to stdout.
fn man_pages(dir: Option<&std::path::Path>) -> Result<(), Failure> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let io = |e: std::io::Error| fail(Exit::Failed, format!("writing the manual pages: {e}"));
    let Some(dir) = dir else {
        return clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(io);
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let write = |name: String, page: clap::Command| -> Result<(), Failure> {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out).map_err(io)?;
        std::fs::write(dir.join(format!("{name}.1")), out).map_err(io)
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("resmon-{}", sub.get_name());
        write(name.clone(), sub.clone().name(name))?;
    }
    write("resmon".into(), cmd)
}

fn format_event(e: &EventRecord) -> String {
    let what = match (&e.resource, &e.group) {
        (Some(r), _) => r.clone(),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => "monitor".into(),
    };
    let state = e.state.map(|s| format!(" {s}")).unwrap_or_default();
    let kind = if e.kind == "state" {
        String::new()
    } else {
        format!(" [{}]", e.kind)
    };
    let repeats = match (&e.last_time, e.count) {
        (Some(last), n) if n > 1 => format!(" ({n} times, last at {last})"),
        _ => String::new(),
    };
    format!("{} {what}{state}{kind}: {}{repeats}", e.time, e.reason)
}

fn print_nodes(r: &NodesReply) {
    let mut out = std::io::stdout().lock();
    let membership = match (&r.problem, r.may_run_for_ms) {
        (Some(p), _) => format!("not a member: {p}"),
        (None, Some(ms)) => format!("member, may run its groups for {ms} ms without a renewal"),
        (None, None) => "member".into(),
    };
    let _ = writeln!(out, "this node: {} ({membership})", r.node);
    let width = r
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:<5}  {:<7}  {:<11}  GROUPS",
        "NODE", "LIVE", "DRAINED", "MAINTENANCE"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for n in &r.nodes {
        let groups = if n.groups.is_empty() {
            "-".to_string()
        } else {
            n.groups.join(",")
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<5}  {:<7}  {:<11}  {groups}",
            n.name,
            yes(n.live),
            yes(n.drained),
            yes(n.maintenance)
        );
    }
    let unowned: Vec<&str> = r
        .owners
        .iter()
        .filter(|(_, o)| o.is_none())
        .map(|(g, _)| g.as_str())
        .collect();
    if !unowned.is_empty() {
        let _ = writeln!(out, "not running anywhere: {}", unowned.join(", "));
    }
    for (group, why) in &r.unplaced {
        let _ = writeln!(out, "  {group}: {why}");
    }
}

fn print_table(rs: &[ResourceStatus]) {
    // In cluster mode the owner of each resource's group follows its group.
    let owners = rs.iter().any(|r| r.owner.is_some());
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            let pids = if r.pids.is_empty() {
                "-".to_string()
            } else {
                r.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mut row = vec![r.name.clone(), r.type_name.clone(), r.group.clone()];
            if owners {
                row.push(r.owner.clone().unwrap_or_else(|| "-".into()));
            }
            // What else holds of it, after its state.
            let mut state = r.state.to_string();
            for (on, flag) in [
                (r.maintenance, "maintenance"),
                (r.ready == Some(false), "not-ready"),
                (r.restarting, "restarting"),
            ] {
                if on {
                    state.push(',');
                    state.push_str(flag);
                }
            }
            row.extend([state, pids, r.restarts.to_string(), r.since.clone()]);
            row
        })
        .collect();
    let mut head = vec!["NAME", "TYPE", "GROUP"];
    if owners {
        head.push("OWNER");
    }
    head.extend(["STATE", "PIDS", "RESTARTS", "SINCE"]);
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>, reason: &str| {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(&width) {
            s.push_str(&format!("{c:<w$}  "));
        }
        s.push_str(reason);
        s.trim_end().to_string()
    };
    // A closed stdout (e.g. `| head`) ends the listing quietly.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(head.clone(), "REASON"));
    for (row, r) in rows.iter().zip(rs) {
        let mut reason = match r.output_dropped {
            0 => r.reason.clone(),
            n => format!("{} ({n} lines of output could not be logged)", r.reason),
        };
        if let Some(t) = &r.next_attempt {
            reason.push_str(&format!(" (next attempt at {t})"));
        }
        let text = line(row.iter().map(String::as_str).collect(), &reason);
        if writeln!(out, "{text}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command says what it is, in `--help` and
    /// the manual pages.
    #[test]
    fn every_argument_has_a_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path}: {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "resmon",
            &mut missing,
        );
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// --socket, --url and --token-file are offered where a monitor is
    /// asked (and --socket by serve, where it listens), and nowhere else.
    #[test]
    fn only_commands_that_ask_the_monitor_take_socket_and_url() {
        let local = ["check", "agents", "completions", "man"];
        let internal = ["host", "log-relay", "fence-guard"];
        let cmd = <Cli as clap::CommandFactory>::command();
        let takes = |sub: &clap::Command, long: &str| {
            sub.get_arguments()
                .any(|a| a.get_long() == Some(long) && !a.is_hide_set())
        };
        // A group of commands (`node drain|resume`) is judged by its own.
        let leaves = cmd.get_subcommands().flat_map(|sub| {
            let group = sub.has_subcommands() && !local.contains(&sub.get_name());
            let own: Vec<&clap::Command> = if group {
                sub.get_subcommands().collect()
            } else {
                vec![sub]
            };
            own.into_iter().map(move |leaf| (sub.get_name(), leaf))
        });
        for (name, sub) in leaves {
            let asks = !local.contains(&name) && !internal.contains(&name) && name != "serve";
            assert_eq!(
                takes(sub, "socket"),
                asks || name == "serve",
                "{name} --socket"
            );
            assert_eq!(takes(sub, "url"), asks, "{name} --url");
            assert_eq!(takes(sub, "token-file"), asks, "{name} --token-file");
        }
        assert!(!takes(&cmd, "socket"), "resmon --socket is offered");
    }

    /// The exit codes are the table of docs/cli.md, both ways.
    #[test]
    fn exit_codes_are_the_documented_ones() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md"))
                .expect("docs/cli.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Exit codes"))
            .expect("docs/cli.md has a section `## Exit codes`");
        let rows: Vec<(u8, String)> = section
            .lines()
            .filter_map(|l| {
                let mut cells = l.trim().trim_matches('|').split('|');
                let code = cells.next()?.trim().parse().ok()?;
                Some((code, cells.next()?.trim().to_owned()))
            })
            .collect();
        assert_eq!(rows.len(), Exit::ALL.len(), "{rows:?}");
        for e in Exit::ALL {
            let row = rows.iter().find(|(c, _)| *c == e as u8);
            assert!(
                row.is_some_and(|(_, meaning)| meaning.starts_with(e.documented_as())),
                "{e:?} ({}) is documented as {row:?}",
                e as u8
            );
        }
    }
}
