//! The resmon monitor daemon (`resmon serve`).
//!
//! It owns the wiring: read and check the [`config`], make this process the
//! reaper of every resource process, give each resource its container (a
//! cgroup, or process groups where cgroups are not usable), open the
//! resources, serve the local [`api`] on a Unix socket, and run the
//! [`driver`](driver::Driver) until SIGTERM or SIGINT. On a stop signal every
//! resource is taken offline through the whole termination ladder (offline,
//! terminate, forced kill), and the daemon exits only once nothing of any
//! resource runs. A second stop signal terminates everything at once.

pub mod access;
pub mod alerts;
pub mod api;
pub mod cluster;
pub mod config;
mod dashboard;
mod driver;
pub mod events;
mod handoff;
pub mod journal;
pub mod listener;
mod logs;
mod opening;
pub mod private_dir;
mod running;
pub mod sd_notify;
mod socket;
pub mod state;
pub mod upgrade;
mod wire_errors;
pub mod workers;

pub use driver::ResourceStatus;
/// The log relay that `resmon log-relay` runs.
pub use resmon_process::relay;

use anyhow::Context;
use config::{CgroupMode, Config, ResourceConfig};
use driver::{Driver, Msg, Slot};
use events::EventBus;
use resmon_contract::{LogLevel, Notice, Notifier, ResourceType, State};
use resmon_core::{Command, Event, Monitor};
use resmon_process::ProcessType;
use resmon_task::lock;
use resmon_task::{Containers, Reaper};
use state::StateDir;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The resource types this monitor knows.
pub fn resource_types(reaper: Arc<Reaper>) -> Vec<Arc<dyn ResourceType>> {
    let rt = tokio::runtime::Handle::current();
    vec![
        Arc::new(ProcessType::new(
            reaper.clone(),
            rt.clone(),
            relay_program(),
        )),
        Arc::new(resmon_ocf::OcfType::new(reaper.clone(), rt)),
        // Hosts run this very binary (`resmon host`), even after an upgrade
        // replaced the file on disk.
        Arc::new(resmon_plugin::Plugins::new("/proc/self/exe".into(), reaper)),
    ]
}

/// The log relay's program: `resmon-log-relay` beside this binary, or this
/// binary's own `log-relay` (bigger, so it costs more per resource) when
/// the install lacks it.
fn relay_program() -> (std::path::PathBuf, Vec<String>) {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(resmon_process::relay::PROGRAM)))
        .filter(|p| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok());
    match beside {
        Some(p) => (p, Vec::new()),
        None => {
            tracing::debug!(
                "no {} beside resmon: log relays run resmon log-relay",
                resmon_process::relay::PROGRAM
            );
            (
                "/proc/self/exe".into(),
                vec![resmon_process::relay::SUBCOMMAND.into()],
            )
        }
    }
}

/// Checks a config file as `serve` would, starting nothing. Types may run
/// programs to check their parameters (an agent's `meta-data`), so this runs
/// on a blocking thread.
pub async fn check_config(path: &Path) -> Result<Config, config::ConfigError> {
    load_config(path.to_path_buf(), check_types(path)?).await
}

/// The resource types, for a check of the config at `path`.
fn check_types(path: &Path) -> Result<Vec<Arc<dyn ResourceType>>, config::ConfigError> {
    let reaper = Reaper::get().map_err(|e| config::ConfigError {
        file: path.to_path_buf(),
        problems: vec![format!("cannot start the reaper: {e}")],
    })?;
    Ok(resource_types(reaper))
}

/// [`check_config`], then opens every resource the way `serve` does
/// (an OCF agent runs `validate-all`, a plugin's library is loaded in a
/// host and asked to open it) without bringing any online, and closes it
/// again. Everything an open starts runs in a scratch container that is
/// killed and removed before this returns. A resource that does not open
/// is a problem naming it, with its type's reason and what it logged.
pub async fn validate_config(path: &Path) -> Result<Config, config::ConfigError> {
    let types = check_types(path)?;
    let config = load_config(path.to_path_buf(), types.clone()).await?;
    let containers = Arc::new(match config.monitor.cgroups {
        CgroupMode::Auto => {
            Containers::detect(Some(&format!("resmon-check.{}", std::process::id())))
        }
        CgroupMode::Off => Containers::process_groups(),
    });
    let mut problems = Vec::new();
    if let Err(e) = limits_possible(&config.resources, &containers) {
        problems.push(e);
    }
    for r in &config.resources {
        let Some(ty) = driver::type_of(&types, &r.type_name) else {
            problems.push(format!(
                "resource {:?}: no resource type {:?}",
                r.name, r.type_name
            ));
            continue;
        };
        if let Err(why) = validate_one(r, ty, &containers).await {
            problems.push(format!("resource {:?}: {why}", r.name));
        }
    }
    containers.cleanup();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(config::ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }
}

/// Whether the limits `resources` set can be had here: their cgroup v2
/// controllers are enabled for resources' cgroups, or what is missing,
/// naming a resource that needs it.
fn limits_possible(resources: &[ResourceConfig], containers: &Containers) -> Result<(), String> {
    let mut needed: Vec<&str> = Vec::new();
    for r in resources {
        for c in r.limits.controllers() {
            if !needed.contains(&c) {
                needed.push(c);
            }
        }
    }
    containers.enable_controllers(&needed).map_err(|e| {
        let who: Vec<&str> = resources
            .iter()
            .filter(|r| !r.limits.is_empty())
            .map(|r| r.name.as_str())
            .collect();
        format!(
            "resource(s) {} set limits (memory_max, cpu_max, ...), which cannot be had here: {e}",
            who.join(", ")
        )
    })
}

/// Opens and closes one resource for [`validate_config`].
async fn validate_one(
    r: &ResourceConfig,
    ty: Arc<dyn ResourceType>,
    containers: &Containers,
) -> Result<(), String> {
    let container = containers
        .create(&r.name)
        .map_err(|e| format!("creating a container to open it in: {e}"))?;
    let logged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = logged.clone();
    let ctx = opening::open_context(
        r,
        &container,
        Notifier::new(move |notice| {
            if let Notice::Log(LogLevel::Error | LogLevel::Warn, message) = notice {
                lock(&log).push(message);
            }
        }),
    );
    let opened = crate::workers::spawn(move || ty.open(ctx).map(drop))
        .await
        .map_err(|e| e.to_string())
        .and_then(|o| o.map_err(|e| e.to_string()));
    // Whatever the open started goes with the container.
    opening::kill_and_wait(&container).await;
    if let Err(e) = container.remove() {
        tracing::warn!("removing the scratch container of {:?}: {e}", r.name);
    }
    opened.map_err(|e| {
        let logged = lock(&logged);
        if logged.is_empty() {
            format!("open failed: {e}")
        } else {
            format!("open failed: {e} (it logged: {})", logged.join("; "))
        }
    })
}

/// Processes of monitors that are not running (see
/// [`resmon_task::unowned_processes`]), as warnings for `resmon check`.
pub fn unowned_warnings() -> Vec<String> {
    resmon_task::unowned_processes()
        .into_iter()
        .map(|found| {
            format!(
                "{found} of a monitor that is not running (was its state directory lost?): a monitor started with that state directory takes them back; another one starts second copies beside them"
            )
        })
        .collect()
}

async fn load_config(
    path: std::path::PathBuf,
    types: Vec<Arc<dyn ResourceType>>,
) -> Result<Config, config::ConfigError> {
    let file = path.clone();
    crate::workers::spawn(move || {
        let refs: Vec<&dyn ResourceType> = types.iter().map(|t| t.as_ref()).collect();
        Config::load(&path, &refs)
    })
    .await
    .unwrap_or_else(|e| {
        Err(config::ConfigError {
            file,
            problems: vec![format!("checking the config failed: {e}")],
        })
    })
}

/// Runs the monitor until SIGTERM or SIGINT, then takes everything offline.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    match resmon_task::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            tracing::debug!("descriptor limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    workers::start()?;
    let reaper = Reaper::get().context("becoming the reaper of resource processes")?;
    let types = resource_types(reaper);
    // Before anything answers or starts: a stop signal that arrives during
    // start-up is held until the loop runs, and then takes everything
    // offline like any other (without a handler it would kill the monitor
    // and leave its resources unwatched).
    let signals = Signals {
        term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
    };
    // The TCP listener first: once the socket answers, both are there.
    let tcp = match config.api.tcp {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("[api] tcp: binding {addr}"))?,
        ),
    };
    let (listener, bound) = socket::bind(&config.monitor.socket).await?;
    let result = run(config, types, (listener, tcp), signals).await;
    bound.remove();
    result
}

/// The signals the monitor answers, installed once at start.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

async fn run(
    config: Config,
    types: Vec<Arc<dyn ResourceType>>,
    (listener, tcp): (UnixListener, Option<tokio::net::TcpListener>),
    signals: Signals,
) -> anyhow::Result<()> {
    let bus = EventBus::new();
    let state_dir = Arc::new(StateDir::open(&config.monitor.state_dir)?);
    // Before the first event: every event goes to the journal, numbered on
    // from the last one an earlier run wrote. Without it the monitor runs
    // on, with the history in memory only.
    let (journal_writer, journal_reader) =
        match journal::start(state_dir.fd(), config.monitor.journal) {
            Ok((sink, writer, last)) => {
                bus.attach_journal(sink, last);
                (Some(writer), journal::Reader::new(state_dir.fd()).ok())
            }
            Err(e) => {
                tracing::warn!(
                    "cannot open the event journal in {}: {e}; events are kept in memory only",
                    state_dir.path().display()
                );
                (None, None)
            }
        };
    let saved = state_dir.load().unwrap_or_default();
    // Where log relays write: private to the monitor's user, like the state.
    let log_dir = private_dir::open_private(&config.monitor.log_dir)
        .map_err(|e| anyhow::anyhow!("[monitor] log_dir: the log directory {e}"))?;
    let instance = state_dir.instance().to_string();
    let containers = Arc::new(
        match config.monitor.cgroups {
            CgroupMode::Auto => Containers::detect_for_monitor(Some(&format!("resmon.{instance}"))),
            CgroupMode::Off => Containers::process_groups(),
        }
        .with_instance(&instance),
    );
    // Before anything an earlier run left is touched: only the monitor
    // that holds the instance acts on its cgroups and markers.
    let _claim = containers
        .claim_instance()
        .with_context(|| format!("state directory {}", state_dir.path().display()))?;
    tracing::info!(
        "resource processes are kept in {}; state in {}",
        containers.backend_description(),
        state_dir.path().display()
    );
    // Another instance's processes that no monitor watches: a monitor
    // whose state directory (and so its instance) was lost. This one does
    // not start second copies silently.
    for (dir, procs) in containers.unowned_roots() {
        let why = format!(
            "cgroup {} holds {procs} process(es) of another monitor instance that no running monitor owns (was its state directory lost?); they are left running: start the monitor with that state directory to take them back, or stop them with `echo 1 > {}/cgroup.kill`",
            dir.display(),
            dir.display()
        );
        tracing::warn!("{why}");
        bus.publish("monitor", None, None, None, why);
    }

    limits_possible(&config.resources, &containers)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.file.display()))?;

    // What an earlier run left for resources no longer configured goes.
    let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
    for c in containers.leftovers(&names) {
        tracing::info!("removing what an earlier run left of {:?}", c.name());
        opening::kill_and_wait(&c).await;
        let _ = c.remove();
    }

    // Alert hooks hear everything from here on.
    let node = match &config.cluster {
        Some(c) => c.settings.node.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let alerts = alerts::Alerts::start(&config.alerts, &bus, &containers, &node);
    let alerts_dropped = Arc::new(alerts.dropped_reader());

    let (tx, rx) = mpsc::unbounded_channel::<Msg>();

    let specs = config.resources.iter().map(handoff::spec_of).collect();
    let core = Monitor::new(specs, tokio::time::Instant::now())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.file.display()))?;

    // Each resource gets its slot and container now; the opens run off
    // the loop once it turns (see `Driver::start`).
    let slots: Vec<Slot> = config
        .resources
        .iter()
        .map(|r| Slot::new(r, &types, &containers))
        .collect();
    // A monitor restarted within the fence guard's grace takes up its
    // predecessor's lease, and keeps the groups it owned: their resources
    // are adopted as on a single node.
    // First the fence guard the last monitor left waiting, if one still
    // does: from then on it waits for this monitor, not its grace.
    #[cfg(feature = "etcd")]
    let mut guard_left = config
        .cluster
        .as_ref()
        .and_then(|_| reattach_guard(&config));
    #[cfg(feature = "etcd")]
    let mut resumed = match &config.cluster {
        Some(c) => resume_cluster(c, &state_dir).await,
        None => None,
    };
    #[cfg(feature = "etcd")]
    let kept: std::collections::BTreeSet<String> = resumed
        .as_ref()
        .map(|r| r.owned.iter().map(|o| o.group.clone()).collect())
        .unwrap_or_default();
    #[cfg(not(feature = "etcd"))]
    let kept = std::collections::BTreeSet::<String>::new();
    let mut earlier = std::collections::HashMap::new();
    let mut from = Vec::new();
    for (id, r) in config.resources.iter().enumerate() {
        // Only a resource whose type and params did not change is adopted.
        let before = saved
            .resources
            .get(&r.name)
            .filter(|s| s.fingerprint == slots[id].fingerprint);
        from.push(resmon_core::start_from(
            before.map(|b| resmon_core::Earlier {
                wanted_online: b.wanted_online,
                was_online: b.state == State::Online,
                can_reattach: b.saved.is_some(),
            }),
            r.autostart,
            config.cluster.is_some() && !kept.contains(&r.group),
        ));
        if let Some(b) = before {
            earlier.insert(id, b.clone());
        }
    }
    // One look for all of them: without cgroups, asking each container
    // would scan /proc once per resource.
    let occupied = containers.occupied(&names);

    let (cluster_requests_tx, cluster_requests) = mpsc::unbounded_channel();
    let cluster_handle = config
        .cluster
        .as_ref()
        .map(|c| cluster::view::ClusterHandle {
            view: Arc::new(std::sync::RwLock::new(cluster::view::NodesReply {
                node: c.settings.node.clone(),
                problem: Some("joining the cluster".into()),
                ..Default::default()
            })),
            requests: cluster_requests_tx,
            meter: Arc::default(),
            permits: Arc::default(),
        });
    let access = Arc::new(std::sync::RwLock::new(Arc::new(access::Access::new(
        config.access.clone(),
    ))));
    let (reload_tx, reload_rx) = mpsc::unbounded_channel::<api::ReloadRequest>();
    let (upgrade_tx, upgrade_rx) = mpsc::unbounded_channel::<api::UpgradeRequest>();
    let api = api::router(api::ApiState {
        tx: tx.clone(),
        bus: bus.clone(),
        access: access.clone(),
        reload: reload_tx,
        upgrade: upgrade_tx,
        cluster: cluster_handle.clone(),
        problems: {
            let (dir, bus) = (state_dir.clone(), bus.clone());
            Arc::new(move || {
                let dropped = bus.journal_dropped();
                dir.problem()
                    .into_iter()
                    .chain((dropped > 0).then(|| {
                        format!("{dropped} event(s) could not be written to the event journal (see the monitor's log)")
                    }))
                    .chain(alerts_dropped())
                    .collect()
            })
        },
        metrics: Arc::default(),
        journal: journal_reader,
        logs: Some(Arc::new(log_dir)),
    });
    let shutdown = listener::Shutdown::default();
    let tcp_server = tcp.map(|tcp| {
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!("API also on tcp://{addr} (bearer tokens)");
        }
        tokio::spawn(listener::serve_tcp(
            tcp,
            api.clone(),
            listener::Limits::default(),
            shutdown.clone(),
        ))
    });
    let server = tokio::spawn(listener::serve_unix(
        listener,
        api,
        listener::Limits::default(),
        shutdown.clone(),
    ));

    let mut driver = Driver::new(
        core,
        slots,
        types.clone(),
        tx.clone(),
        bus.clone(),
        containers.clone(),
    );
    let cluster_stop: Option<ClusterStop> = match (&config.cluster, &cluster_handle) {
        // The config check refuses [cluster] in such a build; this is the
        // last line of defence.
        #[cfg(not(feature = "etcd"))]
        (Some(_), _) => {
            anyhow::bail!(
                "[cluster]: this resmon was built without cluster support (--features etcd)"
            )
        }
        #[cfg(feature = "etcd")]
        (Some(_), Some(handle)) => {
            report_previous_fence(&state_dir, &bus);
            Some(start_cluster(
                &config,
                &mut driver,
                handle,
                cluster_requests,
                &tx,
                &bus,
                cluster::controller::LeaseMemory {
                    state: state_dir.clone(),
                    resumed: resumed.take(),
                    guard_left: guard_left.take(),
                },
            )?)
        }
        _ => {
            drop(cluster_requests);
            None
        }
    };
    bus.publish(
        "monitor",
        None,
        None,
        None,
        format!(
            "monitor started with {} resources (resmon {}); processes kept in {}{}",
            config.resources.len(),
            env!("CARGO_PKG_VERSION"),
            containers.backend_description(),
            upgrade::upgraded_from()
                .map(|v| format!("; upgraded in place from {v}, adopting every resource"))
                .unwrap_or_default()
        ),
    );
    driver.start(&from, occupied, earlier);

    // Reloads run off the loop (see handoff).
    let handoff = handoff::Handoff::new(config, types, bus.clone(), access.clone());
    let requests = (reload_rx, upgrade_rx);
    let mut d = running::Running::new(driver, rx, bus, state_dir, handoff, requests, signals);
    while !d.finished() {
        d.turn().await;
    }
    if let Some(up) = d.take_upgrade() {
        // Nothing stops: the state as it runs now, the journal flushed,
        // the answer given, then the binary on disk in this process.
        d.save_running().await;
        let exe = upgrade::exe().map_or_else(String::new, |e| e.display().to_string());
        let message = format!(
            "upgrading: running {exe} ({}) in place of this monitor ({}); every resource keeps running and is adopted",
            up.version,
            env!("CARGO_PKG_VERSION")
        );
        tracing::info!("{message}");
        d.bus.finish(message.clone());
        d.bus.detach_journal();
        if let Some(w) = journal_writer {
            let _ = workers::spawn(move || w.finish(Duration::from_secs(2))).await;
        }
        let _ = up.reply.send(Ok(message));
        alerts.stop().await;
        shutdown.begin();
        let servers = async move {
            let _ = server.await;
            if let Some(t) = tcp_server {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, servers).await;
        let e = upgrade::exec(&sd_notify::env_for_exec());
        anyhow::bail!(
            "upgrade: running the new binary failed: {e}; the resources keep running: start the monitor again and it adopts them"
        );
    }
    // Everything is down; make sure of it, then release. A resource is
    // closed only once it is down (`close` terminates one that is not).
    // One released by a reload is gone already.
    for (id, slot) in d.driver.slots().iter().enumerate() {
        if d.driver.is_released(id) {
            continue;
        }
        let resource = slot.resource.clone();
        let down = d.driver.is_down(id);
        let _ = crate::workers::spawn(move || {
            if !down {
                resource.terminate(1);
            }
            resource.close()
        })
        .await;
    }
    // What is left (a process of a resource that ignored its stop and
    // outlived `close`) is killed; one look finds it for all of them.
    let names: Vec<&str> = d.driver.slots().iter().map(|s| s.name.as_str()).collect();
    let occupied = containers.occupied(&names);
    for (id, (slot, occupied)) in d.driver.slots().iter().zip(occupied).enumerate() {
        if d.driver.is_released(id) {
            continue;
        }
        if occupied {
            opening::kill_and_wait(&slot.container).await;
        }
        if let Err(e) = slot.container.remove() {
            tracing::warn!(resource = %slot.name, "removing its container: {e}");
        }
    }
    if let Some(stop) = cluster_stop {
        // Every group is down: give them up and leave the cluster. The
        // driver goes on answering meanwhile (the controller may be in the
        // middle of a step that asks it for status), and the wait is
        // bounded: the lease expires in etcd anyway.
        let (done, wait) = tokio::sync::oneshot::channel();
        if stop.send(done).is_ok() {
            let mut wait = std::pin::pin!(wait);
            let mut limit = std::pin::pin!(tokio::time::sleep(CLUSTER_STOP_LIMIT));
            loop {
                tokio::select! {
                    _ = wait.as_mut() => break,
                    () = limit.as_mut() => {
                        tracing::warn!("leaving the cluster took longer than {CLUSTER_STOP_LIMIT:?}: stopping without it; this node's lease expires in etcd");
                        break;
                    }
                    _ = d.driver.turn(&mut d.rx) => {}
                }
            }
        }
    }
    alerts.stop().await;
    containers.cleanup();
    // The last net: an orphan of a resource that left both its cgroup and
    // the fork tracking (a monitor without root) was re-parented to us.
    if let Ok(reaper) = Reaper::get() {
        let n = reaper.kill_orphans();
        if n > 0 {
            tracing::warn!("killed {n} orphaned process(es) that had left their resources");
        }
    }
    d.save_final().await;
    d.bus.finish("monitor stopped");
    // The journal gets everything up to the last event, durably.
    d.bus.detach_journal();
    if let Some(w) = journal_writer {
        let _ = workers::spawn(move || w.finish(Duration::from_secs(2))).await;
    }
    // The connections finish what they are answering (a terminate that was
    // carried out says so, an event stream ends with the last event), with
    // the driver still answering them; new requests to bring something
    // online are refused with 503.
    shutdown.begin();
    let aborts: Vec<_> = std::iter::once(&server)
        .chain(tcp_server.as_ref())
        .map(|t| t.abort_handle())
        .collect();
    let mut servers = std::pin::pin!(async move {
        let _ = server.await;
        if let Some(t) = tcp_server {
            let _ = t.await;
        }
    });
    let mut grace = std::pin::pin!(tokio::time::sleep(SHUTDOWN_GRACE));
    loop {
        tokio::select! {
            () = servers.as_mut() => break,
            () = grace.as_mut() => {
                tracing::warn!("API connections still open after {SHUTDOWN_GRACE:?}: closing them");
                aborts.iter().for_each(|a| a.abort());
                break;
            }
            _ = d.driver.turn(&mut d.rx) => {}
        }
    }
    Ok(())
}

/// How long open API connections get to finish their answers when the
/// monitor stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long leaving the cluster may take when the monitor stops.
const CLUSTER_STOP_LIMIT: Duration = Duration::from_secs(15);

/// Where the cluster controller is asked to give up its groups and leave;
/// it answers on the channel it is sent.
type ClusterStop = mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>;

/// Starts the cluster side: the fence guard, then the controller, which
/// joins through etcd and takes the groups this node is first in line for.
/// Returns where to ask it to stop.
#[cfg(feature = "etcd")]
fn start_cluster(
    config: &Config,
    driver: &mut Driver,
    handle: &cluster::view::ClusterHandle,
    requests: mpsc::UnboundedReceiver<cluster::view::ClusterRequest>,
    tx: &mpsc::UnboundedSender<Msg>,
    bus: &EventBus,
    mut memory: cluster::controller::LeaseMemory,
) -> anyhow::Result<ClusterStop> {
    let guard_left = memory.guard_left.take();
    let c = config
        .cluster
        .as_ref()
        .context("cluster mode without a [cluster] section")?;
    use cluster::controller::{Controller, GroupResource, GroupResources};
    let held = guard_left.is_some();
    let mut guard = match guard_left {
        Some(g) => g,
        None => {
            let reaper = Reaper::get().context("becoming the reaper of resource processes")?;
            let exe =
                std::env::current_exe().context("finding the resmon binary for the fence guard")?;
            let spec = resmon_cluster::guard::command(&exe, c.watchdog.as_deref().map(Path::new));
            let g = resmon_cluster::guard::GuardClient::spawn(&reaper, spec)
                .context("starting the fence guard")?;
            tracing::info!(
                "cluster node {}: fence guard started (pid {})",
                c.settings.node,
                g.task().and_then(|t| t.pid()).unwrap_or(0)
            );
            g
        }
    };
    let report = config.monitor.state_dir.join(FENCE_REPORT);
    let listen = config.monitor.state_dir.join(GUARD_SOCKET);
    let attached = guard.attach(&c.settings, c.reattach_grace, Some(&report), Some(&listen));
    if let Err(e) = attached {
        // Without the socket a restarted monitor cannot take the node's
        // groups up again; they fail over instead.
        tracing::warn!(
            "the fence guard cannot listen at {} for a restarted monitor: {e}",
            listen.display()
        );
        guard
            .attach(&c.settings, c.reattach_grace, Some(&report), None)
            .context("telling the fence guard how to reach etcd")?;
    }
    let groups = config::groups(&config.resources)
        .into_iter()
        .map(|(name, members)| GroupResources {
            config: config.group(&name),
            resources: members
                .iter()
                .filter_map(|m| {
                    let id = driver.id(m)?;
                    let r = config.resources.iter().find(|r| &r.name == m)?;
                    Some(GroupResource {
                        id,
                        name: m.clone(),
                        autostart: r.autostart,
                        container: driver.slots()[id].container.clone(),
                    })
                })
                .collect(),
            name,
        })
        .collect();
    let (failover_tx, failovers) = mpsc::unbounded_channel();
    driver.send_failovers_to(failover_tx);
    driver.gate_online(handle.permits.clone());
    let (stop_tx, stop) = mpsc::unbounded_channel();
    let controller = Controller::new(
        c.clone(),
        groups,
        tx.clone(),
        bus.clone(),
        handle,
        (guard, held),
        memory,
    )
    .map_err(anyhow::Error::msg)?;
    tokio::spawn(controller.run(requests, failovers, stop));
    Ok(stop_tx)
}

/// Takes up the lease the state directory records, when it is this
/// node's and etcd confirms it still holds the node's key; `None` (the
/// record forgotten) otherwise: the node then joins anew.
#[cfg(feature = "etcd")]
async fn resume_cluster(
    c: &cluster::config::ClusterConfig,
    state: &StateDir,
) -> Option<cluster::controller::Resumed> {
    let r = state.load_lease()?;
    let s = &c.settings;
    let forget = |why: String| {
        tracing::info!(
            "not resuming the recorded lease {:x}: {why}; joining anew",
            r.lease
        );
        let _ = state.save_lease(None);
        None
    };
    if r.node != s.node || r.key_prefix != s.key_prefix {
        return forget(format!(
            "it was node {:?} under {}, this is node {:?} under {}",
            r.node, r.key_prefix, s.node, s.key_prefix
        ));
    }
    let limit = s.lease_ttl;
    let member =
        match tokio::time::timeout(limit, resmon_cluster::Member::resume(s.clone(), r.lease)).await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return forget(e.to_string()),
            Err(_) => return forget(format!("etcd did not answer within {limit:?}")),
        };
    // Without the list, the groups are taken again by the controller (same
    // tokens), their resources started afresh.
    let owned = match tokio::time::timeout(limit, member.owned()).await {
        Ok(Ok(owned)) => owned,
        Ok(Err(e)) => {
            tracing::warn!("listing the groups the lease owns: {e}");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    Some(cluster::controller::Resumed { member, owned })
}

/// Where in the state directory the fence guard listens for a monitor
/// that comes back.
#[cfg(feature = "etcd")]
const GUARD_SOCKET: &str = "fence-guard.sock";

/// The fence guard an earlier monitor of this node started, when it still
/// waits (armed) for a monitor to come back.
#[cfg(feature = "etcd")]
fn reattach_guard(config: &Config) -> Option<resmon_cluster::guard::GuardClient> {
    let path = config.monitor.state_dir.join(GUARD_SOCKET);
    match resmon_cluster::guard::GuardClient::reattach(&path) {
        Ok(g) => {
            tracing::info!("re-attached to the fence guard the last monitor left waiting");
            Some(g)
        }
        Err(e) => {
            tracing::debug!("no fence guard to re-attach to at {}: {e}", path.display());
            None
        }
    }
}

/// Where in the state directory the fence guard leaves the report of a
/// fence it made after its monitor died.
#[cfg(feature = "etcd")]
const FENCE_REPORT: &str = "fence-guard-report.json";

/// Tells what the previous monitor's fence guard did after that monitor
/// died (killed its resources, revoked its lease or not), as a "cluster"
/// event, and removes the report.
#[cfg(feature = "etcd")]
fn report_previous_fence(state_dir: &StateDir, bus: &EventBus) {
    use resmon_cluster::guard::{FenceReport, LeaseAction};
    let Ok(text) = private_dir::read_file(state_dir.fd(), FENCE_REPORT) else {
        return;
    };
    let message = match serde_json::from_slice::<FenceReport>(&text) {
        Ok(r) => format!(
            "the previous monitor died; its fence guard killed {} scope(s){}{}",
            r.scopes,
            if r.complete() {
                String::new()
            } else {
                format!(", {} still held processes", r.left.len())
            },
            match &r.lease {
                Some(LeaseAction::Revoked { lease, .. }) => {
                    format!(" and revoked lease {lease:x}")
                }
                Some(LeaseAction::Kept { why, .. }) => {
                    format!(" and left the lease to expire ({why})")
                }
                None => String::new(),
            }
        ),
        Err(e) => format!("the previous fence guard's report is unreadable: {e}"),
    };
    tracing::warn!("{message}");
    bus.publish("cluster", None, None, None, message);
    if let Err(e) = rustix::fs::unlinkat(state_dir.fd(), FENCE_REPORT, rustix::fs::AtFlags::empty())
    {
        tracing::warn!("removing {FENCE_REPORT} from the state directory: {e}");
    }
}

/// A stop signal: the first takes everything offline, a later one
/// terminates everything at once.
pub(crate) fn stop(driver: &mut Driver, first: bool, bus: &EventBus, signal: &str) {
    if first {
        tracing::info!("{signal}: taking every resource offline, then stopping");
        bus.publish(
            "monitor",
            None,
            None,
            None,
            format!("{signal}: taking every resource offline"),
        );
        driver.feed(Event::Shutdown);
    } else {
        tracing::warn!("{signal} again: terminating every resource now");
        bus.publish(
            "monitor",
            None,
            None,
            None,
            format!("{signal} again: terminating every resource now"),
        );
        for id in 0..driver.slots().len() {
            driver.feed(Event::Command(id, Command::Terminate { exit_code: 1 }));
        }
    }
}
