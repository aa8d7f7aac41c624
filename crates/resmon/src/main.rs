//! `resmon`: the monitor (`resmon serve`) and its command-line client.
//!
//! Every client command is a request to the monitor's local API over its
//! Unix socket. Exit codes are decided here, in one place:
//! 0 done, 1 the operation failed, 2 usage (including an invalid config),
//! 3 cannot reach the monitor, 4 access denied.

use anyhow::Context;
use clap::{Parser, Subcommand};
use resmon_client::{Client, ClientError, Method, StatusCode};
use resmon_daemon::api::{
    CallsReply, ControlReply, ErrorReply, OpReply, ReloadReport, StatusReply,
};
use resmon_daemon::cluster::view::NodesReply;
use resmon_daemon::events::EventRecord;
use resmon_daemon::ResourceStatus;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "resmon",
    version,
    about = "A resource monitor for high-availability services"
)]
struct Cli {
    /// The monitor's API socket [default: the config's [monitor] socket, else
    /// /run/resmon/resmon.sock for root, $XDG_RUNTIME_DIR/resmon.sock otherwise]
    #[arg(long, global = true, env = "RESMON_SOCKET")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the monitor in the foreground; SIGTERM/SIGINT take everything offline.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and exit, starting nothing.
    Check {
        #[arg(long, short)]
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
        name: Option<String>,
        /// Print JSON: {"resources":[...]}
        #[arg(long)]
        json: bool,
    },
    /// Cluster mode: the nodes, whether each is live, and the groups each owns.
    Nodes {
        /// Print JSON, as GET /v1/nodes answers.
        #[arg(long)]
        json: bool,
    },
    /// Cluster mode: move a group to a node (offline on its owner, released,
    /// online on the node).
    Move { group: String, node: String },
    /// Bring a resource online (its providers first).
    Online {
        name: String,
        /// Return once it is online (exit 1 if it fails instead).
        #[arg(long)]
        wait: bool,
    },
    /// Take a resource offline (its dependents first).
    Offline {
        name: String,
        /// Return once it is offline.
        #[arg(long)]
        wait: bool,
    },
    /// End a resource now: its whole process tree is killed.
    Terminate {
        name: String,
        /// The exit code its tasks report (0 to 255).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=255))]
        exit_code: i32,
        /// Return as soon as termination has started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Send a control code to a resource (resource_control).
    Control {
        name: String,
        /// A number (`4`, `0x4`) or a name: get_state, get_common_properties,
        /// get_characteristics, get_private_properties.
        code: String,
        /// The input, as JSON.
        #[arg(long)]
        input: Option<String>,
    },
    /// Send a control code to a resource type (resource_type_control).
    TypeControl {
        #[arg(value_name = "TYPE")]
        type_name: String,
        /// A number or a name: get_type_info, get_private_property_names.
        code: String,
        /// The input, as JSON.
        #[arg(long)]
        input: Option<String>,
    },
    /// Re-read the monitor's config file and apply what changed (as SIGHUP).
    Reload,
    /// List entry-point calls in progress, with their elapsed time and deadline.
    Calls {
        /// Print JSON: {"calls":[...]}
        #[arg(long)]
        json: bool,
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
    /// Print the event feed.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// A plugin host process: started by the monitor, never by hand.
    #[command(hide = true)]
    Host {
        /// The plugin library to load.
        #[arg(long)]
        library: PathBuf,
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
        #[arg(value_name = "TYPE")]
        type_name: String,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Unreachable { .. } | ClientError::Impostor { .. } => 3,
            ClientError::Protocol { .. } => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Host { library } = &cli.command {
        // No runtime, no logger: the host is a plain process of worker
        // threads, talking to the monitor over its stdin.
        resmon_plugin::host::run(library);
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RESMON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("resmon: {}", f.message.trim_end());
            }
            ExitCode::from(f.code)
        }
    }
}

fn socket_for(cli_socket: Option<PathBuf>) -> PathBuf {
    cli_socket.unwrap_or_else(resmon_daemon::config::default_socket)
}

/// Maps an API error answer to an exit code.
fn api_error(status: StatusCode, body: &[u8]) -> Failure {
    let msg = serde_json::from_slice::<ErrorReply>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    let code = match status {
        StatusCode::FORBIDDEN => return fail(4, format!("access denied: {msg}")),
        StatusCode::BAD_REQUEST => 2,
        _ => 1,
    };
    fail(code, msg)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Cmd::Host { .. } | Cmd::FenceGuard { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Cmd::Serve { config } => serve(config, cli.socket).await,
        Cmd::Check { config, validate } => {
            let checked = if validate {
                resmon_daemon::validate_config(&config).await
            } else {
                resmon_daemon::check_config(&config).await
            };
            let c = checked.map_err(|e| fail(2, e.to_string()))?;
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
            Ok(())
        }
        Cmd::Status { name, json } => {
            let client = Client::new(&socket_for(cli.socket));
            let path = match &name {
                Some(n) => format!("/v1/resources/{}", encode(n)),
                None => "/v1/resources".to_string(),
            };
            let (status, body) = client.call(Method::GET, &path, None).await?;
            if !status.is_success() {
                return Err(api_error(status, &body));
            }
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let reply: StatusReply = serde_json::from_slice(&body)
                .map_err(|e| fail(1, format!("unexpected answer from the monitor: {e}")))?;
            // What is wrong with the monitor itself heads the table.
            for p in &reply.problems {
                println!("WARNING: {p}");
            }
            print_table(&reply.resources);
            Ok(())
        }
        Cmd::Nodes { json } => {
            let client = Client::new(&socket_for(cli.socket));
            let (status, body) = client.call(Method::GET, "/v1/nodes", None).await?;
            if !status.is_success() {
                return Err(api_error(status, &body));
            }
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let r: NodesReply = serde_json::from_slice(&body)
                .map_err(|e| fail(1, format!("unexpected answer from the monitor: {e}")))?;
            print_nodes(&r);
            Ok(())
        }
        Cmd::Move { group, node } => {
            let client = Client::new(&socket_for(cli.socket));
            let body = serde_json::json!({ "node": node }).to_string();
            let path = format!("/v1/groups/{}/move", encode(&group));
            let (status, body) = client.call(Method::POST, &path, Some(body)).await?;
            if !status.is_success() {
                return Err(api_error(status, &body));
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            println!("{}", v["message"].as_str().unwrap_or("moving"));
            Ok(())
        }
        Cmd::Online { name, wait } => operate(cli.socket, &name, "online", wait, None).await,
        Cmd::Offline { name, wait } => operate(cli.socket, &name, "offline", wait, None).await,
        Cmd::Terminate {
            name,
            exit_code,
            no_wait,
        } => {
            let body = serde_json::json!({ "exit_code": exit_code }).to_string();
            operate(cli.socket, &name, "terminate", !no_wait, Some(body)).await
        }
        Cmd::Events { follow, json } => events(cli.socket, follow, json).await,
        Cmd::Agents {
            show,
            ocf_root,
            json,
        } => tokio::task::spawn_blocking(move || agents(show, &ocf_root, json))
            .await
            .map_err(|e| fail(1, e.to_string()))?,
        Cmd::Control { name, code, input } => {
            let path = format!("/v1/resources/{}/control/{}", encode(&name), encode(&code));
            control(cli.socket, path, input).await
        }
        Cmd::TypeControl {
            type_name,
            code,
            input,
        } => {
            let path = format!("/v1/types/{}/control/{}", encode(&type_name), encode(&code));
            control(cli.socket, path, input).await
        }
        Cmd::Reload => {
            let client = Client::new(&socket_for(cli.socket));
            let (status, body) = client.call(Method::POST, "/v1/reload", None).await?;
            if !status.is_success() {
                return Err(api_error(status, &body));
            }
            let r: ReloadReport = serde_json::from_slice(&body)
                .map_err(|e| fail(1, format!("unexpected answer from the monitor: {e}")))?;
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
        Cmd::Calls { json } => {
            let client = Client::new(&socket_for(cli.socket));
            let (status, body) = client.call(Method::GET, "/v1/calls", None).await?;
            if !status.is_success() {
                return Err(api_error(status, &body));
            }
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let reply: CallsReply = serde_json::from_slice(&body)
                .map_err(|e| fail(1, format!("unexpected answer from the monitor: {e}")))?;
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

async fn control(
    socket: Option<PathBuf>,
    path: String,
    input: Option<String>,
) -> Result<(), Failure> {
    if let Some(i) = &input {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(i) {
            return Err(fail(2, format!("--input is not JSON: {e}")));
        }
    }
    let client = Client::new(&socket_for(socket));
    let (status, body) = client.call(Method::POST, &path, input).await?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    let reply: ControlReply = serde_json::from_slice(&body)
        .map_err(|e| fail(1, format!("unexpected answer from the monitor: {e}")))?;
    let text = serde_json::to_string_pretty(&reply.output).unwrap_or_default();
    println!("{text}");
    Ok(())
}

/// `resmon agents [show TYPE]`: reads the agents on this machine directly.
fn agents(show: Option<AgentsCmd>, root: &std::path::Path, json: bool) -> Result<(), Failure> {
    match show {
        Some(AgentsCmd::Show { type_name }) => {
            let (provider, agent) = resmon_ocf::parse_type(&type_name).map_err(|e| fail(2, e))?;
            let path = resmon_ocf::agent_path(root, &provider, &agent);
            if !path.is_file() {
                return Err(fail(
                    1,
                    format!(
                        "no agent {type_name}: {} does not exist (resmon agents lists them)",
                        path.display()
                    ),
                ));
            }
            let m = resmon_ocf::read_meta_data(root, &path).map_err(|e| fail(1, e))?;
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
                    1,
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
        .map_err(|e| fail(2, e.to_string()))?;
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
        .map_err(|e| fail(1, format!("{e:#}")))?;
    tracing::info!("monitor stopped: every resource is down; exiting 0");
    Ok(())
}

/// Percent-encodes a resource name for a URL path (names are checked by the
/// monitor; this only keeps odd input from breaking the request line).
fn encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn operate(
    socket: Option<PathBuf>,
    name: &str,
    verb: &str,
    wait: bool,
    body: Option<String>,
) -> Result<(), Failure> {
    let client = Client::new(&socket_for(socket));
    let path = format!("/v1/resources/{}/{verb}?wait={wait}", encode(name));
    let (status, reply) = client.call(Method::POST, &path, body).await?;
    if !status.is_success() {
        return Err(api_error(status, &reply));
    }
    let reply: OpReply = serde_json::from_slice(&reply)
        .map_err(|e| fail(1, format!("unexpected answer from the monitor: {e}")))?;
    let r = reply.resource;
    println!("{}: {}", r.name, r.state);
    for w in &reply.warnings {
        eprintln!("resmon: warning: {w}");
    }
    Ok(())
}

async fn events(socket: Option<PathBuf>, follow: bool, json: bool) -> Result<(), Failure> {
    use http_body_util::BodyExt;
    let client = Client::new(&socket_for(socket));
    let path = format!("/v1/events?follow={follow}");
    let (status, mut body) = client.send(Method::GET, &path, None).await?;
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(api_error(status, &bytes));
    }
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(1, format!("reading events: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let mut out = stdout.lock();
            let text = if json {
                String::from_utf8_lossy(&line).trim_end().to_string()
            } else {
                match serde_json::from_slice::<EventRecord>(&line) {
                    Ok(e) => format_event(&e),
                    Err(_) => String::from_utf8_lossy(&line).trim_end().to_string(),
                }
            };
            // A closed stdout (e.g. `| head`) ends the command quietly.
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
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
    let _ = writeln!(out, "{:<width$}  {:<5}  GROUPS", "NODE", "LIVE");
    for n in &r.nodes {
        let groups = if n.groups.is_empty() {
            "-".to_string()
        } else {
            n.groups.join(",")
        };
        let live = if n.live { "yes" } else { "no" };
        let _ = writeln!(out, "{:<width$}  {live:<5}  {groups}", n.name);
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
            row.extend([
                r.state.to_string(),
                pids,
                r.restarts.to_string(),
                r.since.clone(),
            ]);
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
        let text = line(row.iter().map(String::as_str).collect(), &r.reason);
        if writeln!(out, "{text}").is_err() {
            return;
        }
    }
}
