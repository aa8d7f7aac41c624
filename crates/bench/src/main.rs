//! `resmon-bench`: measures the real monitor from the outside.
//!
//! Each scenario starts `resmon serve` (the release binary next to this one,
//! or `--resmon PATH`) on a config of its own in a temporary directory and
//! talks to it over its API socket, as an operator's tools would:
//!
//! * `restart`: SIGKILL the main process of a `process` resource with
//!   `restart_delay = "0s"`; the time until the monitor reports it online
//!   again with a new pid (its event arrives on an `events --follow` stream).
//! * `terminate`: a resource whose command builds a 100-process tree (plain
//!   children, `setsid` children and double-forked orphans); the time of a
//!   `terminate` API call that returns once nothing of it runs, then a scan of
//!   `/proc` for survivors and zombies.
//! * `idle`: 1,000 `sleep` resources at `looks_alive_interval = "1s"`; the
//!   monitor's CPU share over a window, its RSS and PSS.
//! * `api`: with 1,000 resources, the latency of `GET /v1/resources` (what
//!   `status --json` asks) over a fresh connection each time, and of the
//!   whole `resmon status --json` command; then an online/offline round trip
//!   of one resource through the API (`?wait=true`).
//! * `flood` (also run by `api`): the `restart` measurement on one monitor,
//!   first quiet, then while an unprivileged client (`nobody`, when run as
//!   root) holds as many idle connections to its socket as the monitor
//!   lets it keep.
//! * `ocf`: the OCF `Dummy` agent's `monitor`, run directly (fork, exec,
//!   wait) and through resmon's action runner (environment, its own session,
//!   the resource's cgroup, output capture, pidfd wait), alternating in one
//!   run; the runner lives in a worker process of its own, since a process
//!   with resmon's reaper must not wait for children itself.
//! * `plugin`: a resource of the Rust example plugin (`lockfile`) in a host
//!   process: the round trip of a `looks_alive` call into the host (in a
//!   worker process that uses the monitor's plugin client directly); then a
//!   host frozen with SIGSTOP so that `looks_alive` hangs: the time from the
//!   hang being detected (the call's `deadlock_timeout` passing) to the host
//!   being killed and a new host answering; and through the real daemon,
//!   the latency of `GET /v1/resources` all through such a recovery.
//! * `adopt`: 20 online resources, the monitor killed with SIGKILL and
//!   started again: the time until all 20 are online again with the same
//!   pids.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use resmon_client::wire::{EventRecord, OpReply, ResourceStatus, StatusReply};
use resmon_client::Operation;
use resmon_client::{Client, Method};
use resmon_contract::State;
use std::io::{Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmarks of the resmon monitor against the real daemon")]
struct Args {
    /// Which scenarios to run.
    #[arg(value_enum, default_values_t = [Scenario::All])]
    scenarios: Vec<Scenario>,
    /// Measured runs per latency scenario.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Unmeasured runs first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Resources in the idle scenario.
    #[arg(long, default_value_t = 1000)]
    resources: usize,
    /// Seconds over which the idle scenario measures CPU.
    #[arg(long, default_value_t = 30)]
    window: u64,
    /// The resmon binary [default: `resmon` next to this program].
    #[arg(long)]
    resmon: Option<PathBuf>,
    /// Internal (ocf-worker): the Dummy state file.
    #[arg(long, hide = true)]
    state: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Restart,
    Terminate,
    Idle,
    Api,
    Adopt,
    Ocf,
    Plugin,
    /// Internal: the in-process side of `plugin`.
    #[value(hide = true)]
    PluginWorker,
    /// Internal: the resmon side of `ocf`.
    #[value(hide = true)]
    OcfWorker,
    /// Internal: echoes what comes on stdin (a socket) back to it, the
    /// baseline of `plugin`.
    #[value(hide = true)]
    EchoWorker,
    /// Restart latency with and without a connection flood.
    Flood,
    /// `/metrics`: scrape latency at `--resources` and ten times as many,
    /// CPU per scrape, and idle CPU with and without a scrape a second.
    Metrics,
    /// The dashboard in headless Chromium: what its first load transfers,
    /// and how long it takes to show `--resources` resources.
    Dashboard,
    /// Internal: the unprivileged client of `flood`.
    #[value(hide = true)]
    FloodWorker,
    /// Idle CPU with `--resources` resources, each with a readiness probe
    /// and an alert hook listening, against the same without them.
    Operations,
    /// `notify = true`: from a service's `READY=1` to its online event in
    /// the event feed.
    Notify,
}

struct Monitor {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

fn spawn_monitor(bin: &Path, file: &Path) -> Result<Child> {
    Command::new(bin)
        .args(["serve", "--config"])
        .arg(file)
        .env("RESMON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl Monitor {
    fn start(bin: &Path, config: &str) -> Result<Monitor> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("resmon.sock");
        let file = dir.path().join("bench.toml");
        std::fs::write(
            &file,
            format!(
                "[monitor]\nsocket = \"{}\"\nstate_dir = \"{}\"\n{config}",
                socket.display(),
                dir.path().join("state").display()
            ),
        )?;
        let child = spawn_monitor(bin, &file)?;
        let mut m = Monitor { dir, socket, child };
        m.wait_socket()?;
        Ok(m)
    }

    fn wait_socket(&mut self) -> Result<()> {
        let m = self;
        let end = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&m.socket).is_err() {
            if let Some(s) = m.child.try_wait()? {
                bail!("resmon serve exited with {s}");
            }
            if Instant::now() > end {
                bail!("resmon serve did not open its socket");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// SIGKILL, then the same config again.
    fn kill9_and_restart(&mut self, bin: &Path) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_monitor(bin, &self.dir.path().join("bench.toml"))?;
        self.wait_socket()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Online, offline or terminate, waiting for where it leads.
    async fn operate(&self, name: &str, op: Operation) -> Result<OpReply> {
        Ok(self.client().operate(name, op, true).await?)
    }

    async fn resources(&self) -> Result<Vec<ResourceStatus>> {
        Ok(self.client().status(None).await?.resources)
    }

    /// The first pid of resource `name`.
    async fn pid_of(&self, name: &str) -> Result<Option<u32>> {
        let reply = self.client().status(Some(name)).await?;
        Ok(reply
            .resources
            .first()
            .and_then(|r| r.pids.first().copied()))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, extra: &str) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<28} runs={:<4} p50={:>8.3} ms  p90={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms  {extra}",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Whether every thread of `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let root = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(tasks) = std::fs::read_dir(&root) else {
        return false;
    };
    tasks.flatten().all(|t| {
        t.file_name()
            .to_str()
            .and_then(|tid| tid.parse().ok())
            .and_then(|tid| resmon_test_support::stat_in(&root, tid))
            .is_some_and(|s| s.state == 'T')
    })
}

/// Live processes carrying the marker of resource `name` of monitor `m`.
fn marked(m: &Monitor, name: &str) -> usize {
    let instance = std::fs::read_to_string(m.dir.path().join("state/instance")).unwrap_or_default();
    let entry = format!("RESMON_RESOURCE={}/{name}", instance.trim());
    resmon_test_support::all()
        .into_iter()
        .filter(|p| {
            !p.is_dead()
                && std::fs::read(format!("/proc/{}/environ", p.pid))
                    .map(|env| env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()))
                    .unwrap_or(false)
        })
        .count()
}

const RESTARTING: &str = r#"
[[resource]]
name = "svc"
type = "process"
command = "sleep 100000"
restart_action = "restart"
restart_threshold = 1000000
restart_delay = "0s"
"#;

async fn restart(bin: &Path, args: &Args) -> Result<()> {
    let m = Monitor::start(bin, RESTARTING)?;
    let mut rx = event_stream(&m).await?;
    wait_online_event(&mut rx, "svc").await?;
    let samples = restart_samples(&m, &mut rx, args.warmup, args.runs).await?;
    report(
        "restart: kill -9 -> online",
        samples,
        "(target p50 <= 2 ms; restart_delay = 0s)",
    );
    Ok(())
}

/// The monitor's events as they come (`GET /v1/events?follow=true`),
/// starting with the history it keeps.
async fn event_stream(m: &Monitor) -> Result<tokio::sync::mpsc::UnboundedReceiver<EventRecord>> {
    let mut feed = m
        .client()
        .events(&resmon_client::EventsQuery {
            follow: true,
            ..Default::default()
        })
        .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<EventRecord>();
    tokio::spawn(async move {
        while let Ok(Some(e)) = feed.next().await {
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// SIGKILLs the main process of `svc` (see [`RESTARTING`]) `warmup + runs`
/// times; the time until its online event arrives on `rx` (a stream from
/// [`event_stream`] that has seen svc's first start), for the measured runs.
async fn restart_samples(
    m: &Monitor,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<EventRecord>,
    warmup: usize,
    runs: usize,
) -> Result<Vec<Duration>> {
    let online =
        |e: &EventRecord| e.resource.as_deref() == Some("svc") && e.state == Some(State::Online);
    let deadline = Duration::from_secs(10);
    let mut samples = Vec::new();
    for i in 0..warmup + runs {
        let pid = m.pid_of("svc").await?.context("no pid for svc")?;
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        kill(pid, rustix::process::Signal::KILL);
        loop {
            let v = tokio::time::timeout(deadline, rx.recv())
                .await
                .context("no online event within 10 s")?
                .context("event stream ended")?;
            if online(&v) {
                break;
            }
        }
        let took = t0.elapsed();
        let new = m.pid_of("svc").await?;
        if new.is_none_or(|n| n == pid) {
            bail!("run {i}: no new pid after restart ({new:?})");
        }
        if i >= warmup {
            samples.push(took);
        }
    }
    Ok(samples)
}

/// Reads `rx` until resource `name` is reported online.
async fn wait_online_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<EventRecord>,
    name: &str,
) -> Result<()> {
    loop {
        let v = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("no online event within 10 s")?
            .context("event stream ended")?;
        if v.resource.as_deref() == Some(name) && v.state == Some(State::Online) {
            return Ok(());
        }
    }
}

/// Restart latency while an unprivileged client (`nobody`, when this runs
/// as root) holds as many idle connections to the socket as the monitor
/// lets it, against the same monitor without the flood, in one run.
async fn flood(bin: &Path, args: &Args) -> Result<()> {
    let m = Monitor::start(bin, RESTARTING)?;
    // The flooder must reach the socket: the temp dir is 0700.
    std::fs::set_permissions(
        m.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut rx = event_stream(&m).await?;
    wait_online_event(&mut rx, "svc").await?;
    let quiet = restart_samples(&m, &mut rx, args.warmup, args.runs).await?;
    let me = std::env::current_exe()?;
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&me);
        c
    } else {
        Command::new(&me)
    };
    let mut flooder = cmd
        .arg("flood-worker")
        .arg("--state")
        .arg(&m.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the flooding client")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flooder.stdout.take().context("flooder stdout")?),
        &mut line,
    )?;
    let held = line.trim().to_string();
    let flooded = restart_samples(&m, &mut rx, args.warmup, args.runs).await;
    drop(flooder.stdin.take());
    let _ = flooder.kill();
    let _ = flooder.wait();
    let flooded = flooded?;
    let p99 = |v: &Vec<Duration>| {
        let mut v = v.clone();
        v.sort();
        percentile(&v, 99.0)
    };
    let extra = format!(
        "(p99 {:.2} ms over the quiet case; target <= 5 ms)",
        (p99(&flooded).as_secs_f64() - p99(&quiet).as_secs_f64()) * 1e3
    );
    report("flood: restart, quiet", quiet, "(same monitor, no flood)");
    report(&format!("flood: restart, {held}"), flooded, &extra);
    Ok(())
}

/// The flooding client of `flood`: opens up to 5,000 connections to the
/// socket (`--state`), sends nothing, and keeps those the monitor did not
/// close; prints how many it holds, then waits for stdin to close.
fn flood_worker(args: &Args) -> Result<()> {
    let socket = args.state.as_deref().context("--state SOCKET")?;
    let mut conns = Vec::new();
    for _ in 0..5000 {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(c) => conns.push(c),
            Err(_) => break,
        }
    }
    let tried = conns.len();
    // The monitor closes what is over its cap at once: keep the rest.
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        conns.retain(|c| {
            c.set_nonblocking(true).ok();
            let mut b = [0u8; 1];
            !matches!((&*c).read(&mut b), Ok(0))
        });
        if Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} idle connections held by uid {} ({tried} opened)",
        conns.len(),
        rustix::process::geteuid().as_raw()
    );
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// 1 shell + 33 children + 33 setsid children + 33 double-forked orphans.
const TREE: &str = "for i in $(seq 33); do sleep 100000 & done; \
for i in $(seq 33); do setsid sleep 100000 & done; \
for i in $(seq 33); do setsid sh -c 'sleep 100000 &' ; done; wait";

async fn terminate(bin: &Path, args: &Args) -> Result<()> {
    let m = Monitor::start(
        bin,
        &format!(
            r#"
[[resource]]
name = "tree"
type = "process"
command = ["sh", "-c", {TREE:?}]
autostart = false
"#
        ),
    )?;
    let mut samples = Vec::new();
    let mut survivors = 0;
    let mut zombies = 0;
    for i in 0..args.warmup + args.runs {
        m.operate("tree", Operation::Online).await?;
        let end = Instant::now() + Duration::from_secs(20);
        while marked(&m, "tree") < 100 {
            if Instant::now() > end {
                bail!(
                    "run {i}: the tree never reached 100 processes ({})",
                    marked(&m, "tree")
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let t0 = Instant::now();
        m.operate("tree", Operation::Terminate { exit_code: 1 })
            .await?;
        let took = t0.elapsed();
        let left = marked(&m, "tree");
        let z = resmon_test_support::all()
            .iter()
            .filter(|p| p.state == 'Z' && p.ppid == m.pid())
            .count();
        if i >= args.warmup {
            samples.push(took);
            survivors += left;
            zombies += z;
        }
    }
    report(
        "terminate: 100-process tree",
        samples,
        &format!("survivors={survivors} zombies={zombies} (target p99 <= 20 ms, 0 survivors)"),
    );
    Ok(())
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    resmon_test_support::stat(pid).map(|s| s.ticks)
}

fn thread_count(pid: u32) -> u64 {
    proc_field(pid, "status", "Threads:").unwrap_or(0)
}

/// `n` idle `process` resources, `idle0`, `idle1`..., their output dropped.
fn sleepers(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "\n[[resource]]\nname = \"idle{i}\"\ntype = \"process\"\ncommand = \"sleep 100000\"\nstdout = \"null\"\n"
            )
        })
        .collect()
}

async fn idle(bin: &Path, args: &Args) -> Result<()> {
    let config = format!(
        "[defaults]\nlooks_alive_interval = \"1s\"\n{}",
        sleepers(args.resources)
    );
    let f = idle_figures(bin, &config, args).await?;
    println!(
        "idle: {} resources          {f}  (target < 1% and < 30 MB)",
        args.resources
    );
    Ok(())
}

/// What an idle monitor costs once every resource is online.
struct IdleFigures {
    online: usize,
    /// Percent of one core.
    cpu: f64,
    secs: f64,
    rss_kb: u64,
    pss_kb: u64,
    threads: u64,
}

impl std::fmt::Display for IdleFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "online={} cpu={:.3}% of a core over {:.0} s  rss={:.1} MB  pss={:.1} MB  threads={}",
            self.online,
            self.cpu,
            self.secs,
            self.rss_kb as f64 / 1024.0,
            self.pss_kb as f64 / 1024.0,
            self.threads
        )
    }
}

/// Starts a monitor on `config`, waits until its `--resources` resources
/// are online and start-up settled, and measures it over `--window`.
async fn idle_figures(bin: &Path, config: &str, args: &Args) -> Result<IdleFigures> {
    let m = Monitor::start(bin, config)?;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let rs = m.resources().await?;
        if rs.iter().filter(|r| r.state == State::Online).count() == args.resources {
            break;
        }
        if Instant::now() > end {
            bail!("not every resource came online");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let start-up work (and its worker threads) settle before measuring.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pid = m.pid();
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid).context("reading the monitor's CPU time")?;
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let c1 = cpu_ticks(pid).context("reading the monitor's CPU time")?;
    let secs = t0.elapsed().as_secs_f64();
    let rs = m.resources().await?;
    Ok(IdleFigures {
        online: rs.iter().filter(|r| r.state == State::Online).count(),
        cpu: (c1 - c0) as f64 / hz / secs * 100.0,
        secs,
        rss_kb: proc_field(pid, "status", "VmRSS:").unwrap_or(0),
        pss_kb: proc_field(pid, "smaps_rollup", "Pss:").unwrap_or(0),
        threads: thread_count(pid),
    })
}

/// A service that says `READY=1` on its notify socket, having written
/// `CLOCK_MONOTONIC` (ns) just before into the file its argument names.
const NOTIFYING: &str = r#"
import os, socket, sys, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
s.sendto(b"READY=1", addr)
open(sys.argv[1] + ".tmp", "w").write(str(t))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(100000)
"#;

/// `READY=1` -> online event, over `--runs` starts of a `notify = true`
/// service.
async fn notify(bin: &Path, args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stamp = dir.path().join("ready");
    let config = format!(
        "[[resource]]\nname = \"svc\"\ntype = \"process\"\nnotify = true\nautostart = false\nstdout = \"null\"\ncommand = [\"python3\", \"-c\", {}, \"{}\"]\n",
        serde_json::Value::String(NOTIFYING.into()),
        stamp.display()
    );
    let m = Monitor::start(bin, &config)?;
    let mut rx = event_stream(&m).await?;
    let monotonic = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        t.tv_sec as i128 * 1_000_000_000 + i128::from(t.tv_nsec)
    };
    let mut samples = Vec::new();
    for i in 0..args.warmup + args.runs {
        let _ = std::fs::remove_file(&stamp);
        while rx.try_recv().is_ok() {}
        m.operate("svc", Operation::Online).await?;
        let seen = loop {
            let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("no online event within 10 s")?
                .context("event stream ended")?;
            if e.resource.as_deref() == Some("svc") && e.state == Some(State::Online) {
                break monotonic();
            }
        };
        let end = Instant::now() + Duration::from_secs(5);
        let ready: i128 = loop {
            if let Ok(t) = std::fs::read_to_string(&stamp) {
                break t.trim().parse()?;
            }
            if Instant::now() > end {
                bail!("the service wrote no time");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if i >= args.warmup {
            samples.push(Duration::from_nanos(
                u64::try_from(seen - ready).unwrap_or(0),
            ));
        }
        let client = m.client();
        client.operate("svc", Operation::Offline, true).await?;
    }
    report(
        "notify: READY=1 -> online event",
        samples,
        "(a python service's sendto to the event a follower of /v1/events reads)",
    );
    Ok(())
}

/// Idle cost of readiness probes and alert hooks: the same resources with
/// and without a `readiness` probe each (tcp, every second, to a listener
/// of this program) and an `[[alert]]` hook hearing them all, one after
/// the other in the same run.
async fn operations(bin: &Path, args: &Args) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(conn);
        }
    });
    let base = format!(
        "[defaults]\nlooks_alive_interval = \"1s\"\n{}",
        sleepers(args.resources)
    );
    let with = format!(
        "{}\n[[alert]]\nname = \"all\"\ncommand = [\"true\"]\non = [\"failed\", \"restarted\", \"not_ready\", \"maintenance\"]\n",
        base.replace(
            "stdout = \"null\"\n",
            &format!("stdout = \"null\"\nreadiness = {{ type = \"tcp\", address = \"127.0.0.1:{port}\", interval = \"1s\" }}\n"),
        )
    );
    let without = idle_figures(bin, &base, args).await?;
    println!(
        "operations: {} resources, no readiness, no alert hook      {without}",
        args.resources
    );
    let before = accepted.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let with = idle_figures(bin, &with, args).await?;
    let probes = accepted.load(std::sync::atomic::Ordering::Relaxed) - before;
    println!(
        "operations: {} resources, readiness every 1 s + alert hook  {with}  ({:.0} probes/s)",
        args.resources,
        probes as f64 / t0.elapsed().as_secs_f64()
    );
    println!(
        "operations: readiness and alerts cost {:+.3}% of a core ({:.1} µs of monitor CPU per probe)",
        with.cpu - without.cpu,
        (with.cpu - without.cpu).max(0.0) / 100.0 * 1e6 / args.resources as f64
    );
    Ok(())
}

/// One scrape of `/metrics`, checked to list `n` resources; its size.
async fn scrape(m: &Monitor, n: usize) -> Result<usize> {
    let (status, body) = m.client().call(Method::GET, "/metrics", None).await?;
    let want = format!("resmon_resources_configured {n}\n");
    if !status.is_success() || !String::from_utf8_lossy(&body).contains(&want) {
        bail!("GET /metrics answered {status} without {want:?}");
    }
    Ok(body.len())
}

/// The monitor's CPU use over `window`, in % of a core, scraping it once a
/// second meanwhile when `scraping`.
async fn cpu_over(m: &Monitor, n: usize, window: Duration, scraping: bool) -> Result<f64> {
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let pid = m.pid();
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid).context("reading the monitor's CPU time")?;
    let mut next = t0;
    while t0.elapsed() < window {
        if scraping && Instant::now() >= next {
            scrape(m, n).await?;
            next += Duration::from_secs(1);
        }
        let left = window.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(next.saturating_duration_since(Instant::now()))).await;
    }
    let c1 = cpu_ticks(pid).context("reading the monitor's CPU time")?;
    Ok((c1 - c0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0)
}

async fn metrics(bin: &Path, args: &Args) -> Result<()> {
    for n in [args.resources, args.resources * 10] {
        let config = format!("[defaults]\nlooks_alive_interval = \"1s\"\n{}", sleepers(n));
        let m = Monitor::start(bin, &config)?;
        wait_all_online(&m, n, Duration::from_secs(600)).await?;
        // Start-up's worker threads settle first.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut samples = Vec::new();
        let mut size = 0;
        for i in 0..args.warmup + args.runs {
            let t0 = Instant::now();
            size = scrape(&m, n).await?;
            if i >= args.warmup {
                samples.push(t0.elapsed());
            }
        }
        report(
            &format!("metrics: scrape ({n})"),
            samples,
            &format!(
                "({} KB; target p99 <= 5 ms at 1,000 resources)",
                size / 1024
            ),
        );
        // CPU per scrape, over many back to back (a tick is 10 ms).
        let hz = rustix::param::clock_ticks_per_second() as f64;
        let rounds = 500;
        let c0 = cpu_ticks(m.pid()).context("reading the monitor's CPU time")?;
        for _ in 0..rounds {
            scrape(&m, n).await?;
        }
        let c1 = cpu_ticks(m.pid()).context("reading the monitor's CPU time")?;
        let per = (c1 - c0) as f64 / hz / f64::from(rounds) * 1e3;
        println!(
            "metrics: cpu per scrape ({n})   {per:.3} ms of the monitor's CPU (over {rounds} scrapes): a scrape a second costs {:.3}% of a core",
            per / 10.0
        );
        if n == args.resources {
            let window = Duration::from_secs(args.window);
            let quiet = cpu_over(&m, n, window, false).await?;
            let scraped = cpu_over(&m, n, window, true).await?;
            println!(
                "metrics: idle ({n})            cpu={quiet:.3}% of a core without scrapes, {scraped:.3}% with a scrape a second (+{:.3}%; target < 0.1%), {}s each",
                scraped - quiet,
                args.window
            );
        }
    }
    Ok(())
}

/// Rows the dashboard shows now.
async fn rows_shown(c: &resmon_test_support::browser::fantoccini::Client) -> Result<u64> {
    let n = c
        .execute(
            "return document.querySelectorAll('#resources .row:not(.head)').length",
            vec![],
        )
        .await?;
    Ok(n.as_u64().unwrap_or(0))
}

async fn dashboard(bin: &Path, args: &Args) -> Result<()> {
    use resmon_test_support::browser::{chromedriver, sign_in, Browser};
    if chromedriver().is_none() {
        bail!("chromedriver is not installed (apt-get install chromium chromium-driver)");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = "bench-dashboard-token-0123456789";
    let n = args.resources;
    let mut config = format!(
        "[api]\ntcp = \"127.0.0.1:{port}\"\n[[api.token]]\nname = \"bench\"\ntoken = \"{token}\"\nrights = [\"query\", \"control\", \"terminate\"]\n"
    );
    config.push_str(&sleepers(n));
    let m = Monitor::start(bin, &config)?;
    wait_all_online(&m, n, Duration::from_secs(600)).await?;
    let profile = tempfile::tempdir()?;
    let browser = Browser::start(profile.path()).context("starting chromedriver")?;
    let c = browser.client().await;
    let url = format!("http://127.0.0.1:{port}/");
    let shown = |c| async move {
        let end = Instant::now() + Duration::from_secs(60);
        while rows_shown(c).await? < n as u64 {
            if Instant::now() > end {
                bail!("the dashboard never showed {n} resources");
            }
        }
        Ok(())
    };
    // First load: the page, then the token typed in.
    c.goto(&url).await?;
    sign_in(&c, token).await;
    shown(&c).await?;
    let sizes = c
        .execute(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))\
             .map(e => [new URL(e.name).pathname, e.transferSize, e.decodedBodySize])",
            vec![],
        )
        .await?;
    let mut assets = (0, 0);
    let mut data = (0, 0);
    for e in sizes.as_array().cloned().unwrap_or_default() {
        let path = e[0].as_str().unwrap_or_default().to_owned();
        let (wire, body) = (e[1].as_u64().unwrap_or(0), e[2].as_u64().unwrap_or(0));
        let sum = if path.starts_with("/v1/") {
            &mut data
        } else {
            &mut assets
        };
        sum.0 += wire;
        sum.1 += body;
    }
    println!(
        "dashboard: first load         page {:.1} KB on the wire ({:.1} KB of files), API data {:.1} KB for {n} resources",
        assets.0 as f64 / 1024.0,
        assets.1 as f64 / 1024.0,
        data.0 as f64 / 1024.0,
    );
    // Loads with the token kept in the tab: from navigation to every row.
    let mut samples = Vec::new();
    let mut painted = Vec::new();
    for i in 0..args.warmup.min(3) + args.runs.min(30) {
        let t0 = Instant::now();
        c.goto(&url).await?;
        shown(&c).await?;
        // The page marks the frame after its first full list.
        let drawn = c
            .execute(
                "const m = performance.getEntriesByName('resmon:rows-drawn'); \
                 return m.length ? m[0].startTime : null",
                vec![],
            )
            .await?;
        if i >= args.warmup.min(3) {
            samples.push(t0.elapsed());
            let ms = drawn.as_f64().context("the page marked no drawn rows")?;
            painted.push(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    report(
        &format!("dashboard: show {n}"),
        painted,
        "(from navigation to the first frame with every row, as the page measures it)",
    );
    report(
        &format!("dashboard: show {n} (driver)"),
        samples,
        "(the same seen through WebDriver: goto, then polling the rows)",
    );
    c.close().await?;
    Ok(())
}

async fn wait_all_online(m: &Monitor, n: usize, limit: Duration) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        let rs = m.resources().await?;
        if rs.len() == n && rs.iter().all(|r| r.state == State::Online) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("not every resource came online");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn api(bin: &Path, args: &Args) -> Result<()> {
    let mut config = String::new();
    for i in 0..args.resources {
        config.push_str(&format!(
            "\n[[resource]]\nname = \"idle{i}\"\ntype = \"process\"\ncommand = \"sleep 100000\"\n"
        ));
    }
    config.push_str("\n[[resource]]\nname = \"flip\"\ntype = \"process\"\ncommand = \"sleep 100000\"\nautostart = false\n");
    let m = Monitor::start(bin, &config)?;
    wait_all_online_but(&m, args.resources).await?;
    let mut samples = Vec::new();
    for i in 0..args.warmup + args.runs.max(500) {
        // Timed as `status --json` does it: connect, ask, read the answer.
        let t0 = Instant::now();
        let (status, body) = m.client().call(Method::GET, "/v1/resources", None).await?;
        let took = t0.elapsed();
        let listed = serde_json::from_slice::<StatusReply>(&body).map(|r| r.resources.len());
        if !status.is_success() || listed.ok() != Some(args.resources + 1) {
            bail!("status did not list every resource");
        }
        if i >= args.warmup {
            samples.push(took);
        }
    }
    report(
        &format!("api: GET /v1/resources ({})", args.resources),
        samples,
        "(status --json's request; target p99 <= 5 ms)",
    );
    let mut samples = Vec::new();
    for i in 0..args.warmup + args.runs {
        let t0 = Instant::now();
        let out = Command::new(bin)
            .arg("--socket")
            .arg(&m.socket)
            .args(["status", "--json"])
            .stdout(Stdio::null())
            .status()?;
        let took = t0.elapsed();
        if !out.success() {
            bail!("resmon status --json failed");
        }
        if i >= args.warmup {
            samples.push(took);
        }
    }
    report(
        "api: resmon status --json",
        samples,
        "(the whole command: process start, request, output)",
    );
    let mut round = Vec::new();
    for i in 0..args.warmup + args.runs {
        let t0 = Instant::now();
        m.operate("flip", Operation::Online).await?;
        m.operate("flip", Operation::Offline).await?;
        if i >= args.warmup {
            round.push(t0.elapsed());
        }
    }
    report(
        "api: online+offline round trip",
        round,
        "(POST ...?wait=true twice: spawn, SIGTERM, reap)",
    );
    Ok(())
}

/// All resources but the `autostart = false` one are online.
async fn wait_all_online_but(m: &Monitor, n: usize) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let rs = m.resources().await?;
        if rs.iter().filter(|r| r.state == State::Online).count() == n {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("not every resource came online");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn adopt(bin: &Path, args: &Args) -> Result<()> {
    let mut config = String::new();
    for i in 0..20 {
        config.push_str(&format!(
            "\n[[resource]]\nname = \"svc{i}\"\ntype = \"process\"\ncommand = \"sleep 100000\"\n"
        ));
    }
    let mut m = Monitor::start(bin, &config)?;
    wait_all_online(&m, 20, Duration::from_secs(30)).await?;
    let pids =
        |rs: &[ResourceStatus]| -> Vec<Vec<u32>> { rs.iter().map(|r| r.pids.clone()).collect() };
    let runs = (args.runs / 10).max(10);
    let mut samples = Vec::new();
    for _ in 0..runs {
        let before = pids(&m.resources().await?);
        // Let the state file catch up with what runs (it is written as soon
        // as something changes; nothing changed for a while here).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        m.kill9_and_restart(bin)?;
        wait_all_online(&m, 20, Duration::from_secs(10)).await?;
        let took = t0.elapsed();
        if pids(&m.resources().await?) != before {
            bail!("the restarted monitor did not adopt every resource with its pid");
        }
        samples.push(took);
    }
    report(
        "adopt: SIGKILL -> 20 online",
        samples,
        "(same pids every run; target <= 1 s)",
    );
    Ok(())
}

const DUMMY: &str = "/usr/lib/ocf/resource.d/heartbeat/Dummy";

fn dummy_env(state: &Path) -> Vec<(String, String)> {
    vec![
        ("OCF_ROOT".into(), "/usr/lib/ocf".into()),
        ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
        ("OCF_RA_VERSION_MINOR".into(), "1".into()),
        ("OCF_RESOURCE_INSTANCE".into(), "bench".into()),
        ("OCF_RESKEY_state".into(), state.display().to_string()),
        ("OCF_CHECK_LEVEL".into(), "0".into()),
    ]
}

/// A worker's runtime, driven by a thread of its own as the daemon's is
/// while entry points run on its blocking pool, and the reaper on it.
fn worker_reaper() -> Result<(tokio::runtime::Runtime, std::sync::Arc<resmon_task::Reaper>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let reaper = {
        let _guard = rt.enter();
        resmon_task::Reaper::get()?
    };
    Ok((rt, reaper))
}

/// The resmon side: runs `monitor` through the action runner, in a real
/// resource scope, once per line on stdin; answers the elapsed nanoseconds.
fn ocf_worker(state: &Path) -> Result<()> {
    use std::io::BufRead;
    let (rt, reaper) = worker_reaper()?;
    let containers =
        resmon_task::Containers::detect(Some(&format!("resmon-bench-ocf.{}", std::process::id())));
    let container = containers.create("dummy")?;
    let scope = container.scope();
    let env = dummy_env(state);
    let handle = rt.handle().clone();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        if line?.is_empty() {
            break;
        }
        let run = resmon_ocf::runner::Run {
            agent: Path::new(DUMMY),
            action: "monitor",
            env: &env,
            timeout: Duration::from_secs(20),
            scope: Some(&scope),
            abort: None,
        };
        let t0 = Instant::now();
        let o = resmon_ocf::runner::run(&run, &reaper, &handle).map_err(|e| anyhow::anyhow!(e))?;
        let took = t0.elapsed();
        if o.code != Some(0) {
            bail!("monitor through the runner: {o:?}");
        }
        writeln!(out, "{}", took.as_nanos())?;
        out.flush()?;
    }
    let _ = container.remove();
    containers.cleanup();
    Ok(())
}

fn ocf(args: &Args) -> Result<()> {
    use std::io::{BufRead, BufReader};
    if !Path::new(DUMMY).exists() {
        bail!("{DUMMY} is missing: apt-get install resource-agents");
    }
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("dummy.state");
    std::fs::write(&state, "")?;
    let mut worker = Command::new(std::env::current_exe()?)
        .args(["ocf-worker", "--state"])
        .arg(&state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to = worker.stdin.take().context("worker stdin")?;
    let mut from = BufReader::new(worker.stdout.take().context("worker stdout")?);
    let env = dummy_env(&state);
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..args.warmup + args.runs {
        let t0 = Instant::now();
        let out = Command::new(DUMMY)
            .arg("monitor")
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "PATH"))
            .envs(env.iter().cloned())
            .output()?;
        let d = t0.elapsed();
        if !out.status.success() {
            bail!("direct monitor failed: {out:?}");
        }
        writeln!(to, "go")?;
        let mut line = String::new();
        from.read_line(&mut line)?;
        let t: u64 = line.trim().parse().context("worker answer")?;
        if i >= args.warmup {
            direct.push(d);
            through.push(Duration::from_nanos(t));
        }
    }
    writeln!(to)?;
    let _ = worker.wait();
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        percentile(v, 50.0)
    };
    let (dm, tm) = (p50(&mut direct.clone()), p50(&mut through.clone()));
    report("ocf: Dummy monitor, direct", direct, "");
    report(
        "ocf: Dummy monitor, resmon",
        through,
        &format!(
            "overhead at p50 {:+.3} ms (target <= 0.5 ms)",
            (tm.as_secs_f64() - dm.as_secs_f64()) * 1e3
        ),
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.scenarios.contains(&Scenario::PluginWorker) {
        return plugin_worker(&args);
    }
    if args.scenarios.contains(&Scenario::EchoWorker) {
        return echo_worker();
    }
    if args.scenarios.contains(&Scenario::FloodWorker) {
        return flood_worker(&args);
    }
    if args.scenarios.contains(&Scenario::OcfWorker) {
        return ocf_worker(args.state.as_deref().context("--state")?);
    }
    if args.scenarios.contains(&Scenario::Ocf) || args.scenarios.contains(&Scenario::All) {
        ocf(&args)?;
        if args.scenarios == [Scenario::Ocf] {
            return Ok(());
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async_main(args))
}

async fn async_main(args: Args) -> Result<()> {
    let bin = match &args.resmon {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .join("resmon"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release) or pass --resmon",
            bin.display()
        );
    }
    let all = args.scenarios.contains(&Scenario::All);
    let want = |s| all || args.scenarios.contains(&s);
    println!(
        "resmon-bench: {} on {} cores, kernel {}",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    if want(Scenario::Restart) {
        restart(&bin, &args).await?;
    }
    if want(Scenario::Terminate) {
        terminate(&bin, &args).await?;
    }
    if want(Scenario::Idle) {
        idle(&bin, &args).await?;
    }
    if want(Scenario::Operations) {
        operations(&bin, &args).await?;
    }
    if want(Scenario::Notify) {
        notify(&bin, &args).await?;
    }
    if want(Scenario::Api) {
        api(&bin, &args).await?;
    }
    if want(Scenario::Api) || want(Scenario::Flood) {
        flood(&bin, &args).await?;
    }
    if want(Scenario::Adopt) {
        adopt(&bin, &args).await?;
    }
    if want(Scenario::Metrics) {
        metrics(&bin, &args).await?;
    }
    if want(Scenario::Dashboard) {
        dashboard(&bin, &args).await?;
    }
    if want(Scenario::Plugin) {
        plugin(&bin, &args).await?;
    }
    Ok(())
}

/// The Rust example plugin, built by `scripts/bench` next to this program.
fn lockfile_library() -> Result<PathBuf> {
    let lib = std::env::current_exe()?
        .parent()
        .context("no directory for this program")?
        .join("libresmon_example_lockfile.so");
    if !lib.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p resmon-example-lockfile)",
            lib.display()
        );
    }
    Ok(lib)
}

struct NoSink;

impl resmon_contract::StatusSink for NoSink {
    fn checkpoint(&self, _: u32) {}
    fn complete(&self, _: Result<(), resmon_contract::ResourceError>) {}
}

/// Echoes stdin (a socket) back to it until it closes.
fn echo_worker() -> Result<()> {
    let sock = std::os::unix::net::UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut buf = [0u8; 16];
    while (&sock).read_exact(&mut buf).is_ok() {
        (&sock).write_all(&buf)?;
    }
    Ok(())
}

use resmon_test_support::reaped as gone;

/// The in-process side of `plugin`: the monitor's plugin client, used
/// directly, against hosts running the real `resmon host`.
fn plugin_worker(args: &Args) -> Result<()> {
    use resmon_contract::{CallContext, Notifier, OpenContext, Policy, ResourceType, Scope};
    let bin = args.resmon.clone().context("--resmon")?;
    let lib = lockfile_library()?;
    let (_rt, reaper) = worker_reaper()?;
    let plugins = resmon_plugin::Plugins::new(bin, reaper);
    let dir = tempfile::tempdir()?;
    let policy = Policy {
        deadlock_timeout: Duration::from_millis(100),
        ..Policy::default()
    };
    let r = plugins
        .open(OpenContext {
            name: "bench".into(),
            type_name: "plugin:lockfile".into(),
            policy: policy.clone(),
            params: serde_json::json!({
                "library": lib,
                "params": { "path": dir.path().join("bench.lock") },
            }),
            scope: Scope::default(),
            notifier: Notifier::none(),
            log: Default::default(),
        })
        .map_err(|e| anyhow::anyhow!("open: {e}"))?;
    let ctx = CallContext::new(Default::default(), std::sync::Arc::new(NoSink));
    r.online(&ctx).map_err(|e| anyhow::anyhow!("online: {e}"))?;
    for _ in 0..args.warmup * 10 {
        r.looks_alive();
    }
    // The floor, in the same run: a bare round trip of a few bytes over a
    // socketpair to another process and back.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut echo = Command::new(std::env::current_exe()?)
        .arg("echo-worker")
        .stdin(std::os::fd::OwnedFd::from(theirs))
        .spawn()
        .context("starting the echo worker")?;
    let ping = |buf: &mut [u8; 16]| -> Result<()> {
        (&ours).write_all(buf)?;
        (&ours).read_exact(buf)?;
        Ok(())
    };
    let mut bytes = [7u8; 16];
    for _ in 0..args.warmup * 10 {
        ping(&mut bytes)?;
    }
    let mut samples = Vec::with_capacity(args.runs * 10);
    let mut floor = Vec::with_capacity(args.runs * 10);
    for _ in 0..args.runs * 10 {
        let t = Instant::now();
        let alive = r.looks_alive();
        samples.push(t.elapsed());
        if !alive {
            bail!("looks_alive answered false");
        }
        let t = Instant::now();
        ping(&mut bytes)?;
        floor.push(t.elapsed());
    }
    drop(ours);
    let _ = echo.wait();
    report(
        "plugin: looks_alive round trip",
        samples,
        "(monitor -> host -> plugin -> monitor; target p50 <= 0.050 ms)",
    );
    report(
        "plugin: bare socket round trip",
        floor,
        "(baseline, same run, alternating: 16 bytes to another process and back)",
    );

    let mut samples = Vec::new();
    for _ in 0..(args.runs / 10).max(10) {
        let host = *r.pids().first().context("no host pid")?;
        kill(host, rustix::process::Signal::STOP);
        // A stop reaches the threads of a process one after the other: a
        // lane thread woken by a request at that moment could still answer.
        let until = Instant::now() + Duration::from_secs(1);
        while !all_threads_stopped(host) && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(50));
        }
        let t0 = Instant::now();
        if r.looks_alive() {
            bail!("a frozen host answered");
        }
        let hung = t0.elapsed();
        let t1 = Instant::now();
        while !gone(host) {
            std::thread::sleep(Duration::from_micros(100));
        }
        let killed = t1.elapsed();
        let t2 = Instant::now();
        r.looks_alive();
        let restarted = t2.elapsed();
        if r.pids().first() == Some(&host) {
            bail!("no new host");
        }
        samples.push(hung.saturating_sub(policy.deadlock_timeout) + killed + restarted);
    }
    report(
        "plugin: hang -> new host",
        samples,
        "(from deadlock_timeout passing to the host killed and reaped and a new host answering)",
    );
    Ok(())
}

async fn plugin(bin: &Path, args: &Args) -> Result<()> {
    let out = Command::new(std::env::current_exe()?)
        .arg("plugin-worker")
        .arg("--resmon")
        .arg(bin)
        .args(["--runs", &args.runs.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    std::io::stdout().write_all(&out.stdout)?;
    if !out.status.success() {
        bail!("the plugin worker failed: {}", out.status);
    }

    // Through the daemon: status latency while a hung host is replaced.
    let lib = lockfile_library()?;
    let dir = tempfile::tempdir()?;
    let m = Monitor::start(
        bin,
        &format!(
            r#"[[resource]]
name = "lock"
type = "plugin:lockfile"
library = "{}"
params = {{ path = "{}" }}
looks_alive_interval = "100ms"
deadlock_timeout = "300ms"
restart_delay = "0s"
restart_threshold = 1000
"#,
            lib.display(),
            dir.path().join("lock").display()
        ),
    )?;
    let host_of = |rs: &[ResourceStatus]| rs.first().and_then(|r| r.pids.first().copied());
    let online = |rs: &[ResourceStatus]| rs.first().is_some_and(|r| r.state == State::Online);
    let end = Instant::now() + Duration::from_secs(10);
    while !online(&m.resources().await?) {
        if Instant::now() > end {
            bail!("the plugin resource never came online");
        }
    }
    let mut status = Vec::new();
    let mut recovery = Vec::new();
    for _ in 0..10 {
        let host = host_of(&m.resources().await?).context("no host")?;
        kill(host as u32, rustix::process::Signal::STOP);
        let t0 = Instant::now();
        loop {
            let t = Instant::now();
            let rs = m.resources().await?;
            status.push(t.elapsed());
            if online(&rs) && host_of(&rs).is_some_and(|h| h != host) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the hung host was not replaced");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        recovery.push(t0.elapsed());
    }
    report(
        "plugin: GET /v1/resources",
        status,
        "(all through 10 hang recoveries; target max <= 50 ms)",
    );
    report(
        "plugin: SIGSTOP -> online",
        recovery,
        "(deadlock_timeout 300 ms, looks_alive every 100 ms, new host)",
    );
    Ok(())
}
