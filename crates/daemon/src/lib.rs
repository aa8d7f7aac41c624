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
pub mod api;
pub mod config;
mod driver;
pub mod events;
pub mod state;

pub use driver::ResourceStatus;

use anyhow::{bail, Context};
use config::{CgroupMode, Config};
use driver::{Driver, Msg, Slot};
use events::EventBus;
use resmon_contract::{LogLevel, Notice, Notifier, OpenContext, ResourceType, State};
use resmon_core::{Command, Event, Monitor, ResourceSpec};
use resmon_process::ProcessType;
use resmon_task::{Containers, Reaper};
use state::StateDir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The resource types this monitor knows.
pub fn resource_types(reaper: Arc<Reaper>) -> Vec<Arc<dyn ResourceType>> {
    vec![Arc::new(ProcessType::new(
        reaper,
        tokio::runtime::Handle::current(),
    ))]
}

/// Checks a config file as `serve` would, starting nothing.
pub fn check_config(path: &Path) -> Result<Config, config::ConfigError> {
    let reaper = Reaper::get().map_err(|e| config::ConfigError {
        file: path.to_path_buf(),
        problems: vec![format!("cannot start the reaper: {e}")],
    })?;
    let types = resource_types(reaper);
    let refs: Vec<&dyn ResourceType> = types.iter().map(|t| t.as_ref()).collect();
    Config::load(path, &refs)
}

/// Binds the API socket; refuses to take over the socket of a live monitor.
async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another monitor is already listening on {}; stop it or set [monitor] socket to another path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Anyone may connect; every request is checked against its caller's rights.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Runs the monitor until SIGTERM or SIGINT, then takes everything offline.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let reaper = Reaper::get().context("becoming the reaper of resource processes")?;
    let types = resource_types(reaper);
    let listener = bind(&config.monitor.socket).await?;
    let socket = config.monitor.socket.clone();
    let result = run(config, types, listener).await;
    let _ = std::fs::remove_file(&socket);
    result
}

fn log_notice(resource: &str, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(resource, "{message}"),
        LogLevel::Warn => tracing::warn!(resource, "{message}"),
        LogLevel::Info => tracing::info!(resource, "{message}"),
        LogLevel::Debug => tracing::debug!(resource, "{message}"),
    }
}

/// How a resource starts, decided from the saved state and the config.
enum Start {
    /// A previous run left it running: watch it again.
    Reattach(serde_json::Value),
    /// Bring it online.
    Online,
    /// Wanted online, but its processes died while no monitor watched.
    Lost,
    /// Leave it offline.
    Offline,
}

async fn kill_and_wait(container: &resmon_task::Container) {
    if !container.is_empty() {
        let _ = container.kill_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), container.wait_empty()).await;
    }
}

async fn run(
    config: Config,
    types: Vec<Arc<dyn ResourceType>>,
    listener: UnixListener,
) -> anyhow::Result<()> {
    let bus = EventBus::new();
    let state_dir = Arc::new(StateDir::open(&config.monitor.state_dir)?);
    let saved = state_dir.load().unwrap_or_default();
    let instance = state_dir.instance().to_string();
    let containers = Arc::new(
        match config.monitor.cgroups {
            CgroupMode::Auto => Containers::detect(Some(&format!("resmon.{instance}"))),
            CgroupMode::Off => Containers::process_groups(),
        }
        .with_instance(&instance),
    );
    tracing::info!(
        "resource processes are kept in {}; state in {}",
        containers.backend_description(),
        state_dir.path().display()
    );

    // What an earlier run left for resources no longer configured goes.
    let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
    for c in containers.leftovers(&names) {
        tracing::info!("removing what an earlier run left of {:?}", c.name());
        kill_and_wait(&c).await;
        let _ = c.remove();
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();

    let specs: Vec<ResourceSpec> = config
        .resources
        .iter()
        .map(|r| ResourceSpec {
            name: r.name.clone(),
            group: r.group.clone(),
            depends_on: r.depends_on.clone(),
            policy: r.policy.clone(),
        })
        .collect();
    let core = Monitor::new(specs, tokio::time::Instant::now())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.file.display()))?;

    let mut slots = Vec::new();
    let mut starts = Vec::new();
    for (id, r) in config.resources.iter().enumerate() {
        let ty = types
            .iter()
            .find(|t| t.name() == r.type_name)
            .expect("types were checked with the config");
        let fingerprint = state::fingerprint(&r.type_name, &r.params);
        // Only a resource whose type and params did not change is adopted.
        let before = saved
            .resources
            .get(&r.name)
            .filter(|s| s.fingerprint == fingerprint);
        let start = match before {
            Some(b) if b.wanted_online => match &b.saved {
                Some(blob) => Start::Reattach(blob.clone()),
                None if b.state == State::Online => Start::Lost,
                None => Start::Online,
            },
            Some(_) => Start::Offline,
            None if r.autostart => Start::Online,
            None => Start::Offline,
        };
        let opened = async {
            let container = containers
                .adopt(&r.name)
                .with_context(|| format!("resource {:?}: opening its container", r.name))?;
            if !matches!(start, Start::Reattach(_)) {
                // Changed, unwanted or unknown: nothing of before may stay.
                kill_and_wait(&container).await;
            }
            let notice_tx = tx.clone();
            let (bus, name, group) = (bus.clone(), r.name.clone(), r.group.clone());
            let ctx = OpenContext {
                name: r.name.clone(),
                params: r.params.clone(),
                scope: container.scope(),
                notifier: Notifier::new(move |notice| match notice {
                    Notice::Failed(reason) => {
                        let _ = notice_tx.send(Msg::Event(Event::FailureNotice { id, reason }));
                    }
                    Notice::Log(level, message) => {
                        log_notice(&name, level, &message);
                        bus.publish("log", Some(&name), Some(&group), None, message);
                    }
                }),
            };
            let resource = ty
                .open(ctx)
                .map_err(|e| anyhow::anyhow!("resource {:?}: open failed: {e}", r.name))?;
            anyhow::Ok(Slot {
                name: r.name.clone(),
                type_name: r.type_name.clone(),
                fingerprint,
                resource: Arc::from(resource),
                container,
                lane: Arc::new(Mutex::new(())),
                cancel: Arc::new(AtomicBool::new(false)),
                cheap_looks_alive: ty.looks_alive_is_cheap(),
            })
        }
        .await;
        match opened {
            Ok(slot) => {
                slots.push(slot);
                starts.push(start);
            }
            Err(e) => {
                for s in &slots {
                    let _ = s.container.remove();
                }
                containers.cleanup();
                return Err(e);
            }
        }
    }

    let api = api::router(api::ApiState {
        tx: tx.clone(),
        bus: bus.clone(),
        access: Arc::new(access::Access::new(config.access.clone())),
    });
    let server = tokio::spawn(async move {
        let service = api.into_make_service_with_connect_info::<api::Caller>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!("API server: {e}");
        }
    });

    let mut driver = Driver::new(core, slots, types.clone(), tx.clone(), bus.clone());
    bus.publish(
        "monitor",
        None,
        None,
        None,
        format!(
            "monitor started with {} resources; processes kept in {}",
            config.resources.len(),
            containers.backend_description()
        ),
    );
    for (id, start) in starts.into_iter().enumerate() {
        let event = match start {
            Start::Online => Event::Command(id, Command::Online),
            Start::Offline => continue,
            Start::Lost => Event::Adopted { id, alive: false },
            Start::Reattach(blob) => {
                let slot = &driver.slots()[id];
                let resource = slot.resource.clone();
                let attached = tokio::task::spawn_blocking(move || resource.reattach(&blob))
                    .await
                    .unwrap_or_else(|e| Err(resmon_contract::ResourceError::new(e.to_string())));
                match attached {
                    Ok(true) => Event::Adopted { id, alive: true },
                    Ok(false) => Event::Adopted { id, alive: false },
                    Err(e) => {
                        tracing::warn!(resource = %slot.name, "cannot adopt it: {e}");
                        kill_and_wait(&slot.container).await;
                        Event::Adopted { id, alive: false }
                    }
                }
            }
        };
        driver.feed(event);
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut stopping: Option<Vec<bool>> = None;
    // Snapshots are taken here and written off the event loop (fsync can
    // be slow); numbered, so a late write never replaces a newer one.
    let mut seq = 0u64;
    let mut save = |driver: &mut Driver, wanted: Option<&[bool]>| {
        seq += 1;
        let (snapshot, dir, n) = (driver.snapshot(wanted), state_dir.clone(), seq);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = dir.save_in_order(n, &snapshot) {
                tracing::error!("writing the state in {}: {e}", dir.path().display());
            }
        })
    };
    // One write at a time, started as soon as the last one finished: the
    // file is never more than one write behind.
    let mut writing = Some(save(&mut driver, None));
    while !(stopping.is_some() && driver.all_down()) {
        if writing.as_ref().is_some_and(|w| w.is_finished()) {
            writing = None;
        }
        if writing.is_none() && stopping.is_none() && driver.state_dirty() {
            writing = Some(save(&mut driver, None));
        }
        let signal = tokio::select! {
            biased;
            _ = sigterm.recv() => Some("SIGTERM"),
            _ = sigint.recv() => Some("SIGINT"),
            _ = driver.turn(&mut rx) => None,
            _ = async { if let Some(w) = writing.as_mut() { let _ = w.await; } else { std::future::pending::<()>().await } } => None,
        };
        if let Some(signal) = signal {
            let first = stopping.is_none();
            if first {
                // What was wanted before the stop is what the next start brings back.
                save(&mut driver, None);
                stopping = Some(driver.wanted());
            }
            stop(&mut driver, first, &bus, signal);
        }
    }

    // Everything is down; make sure of it, then release. A resource is
    // closed only once it is down (`close` terminates one that is not).
    for (id, slot) in driver.slots().iter().enumerate() {
        let resource = slot.resource.clone();
        let down = driver.is_down(id);
        let _ = tokio::task::spawn_blocking(move || {
            if !down {
                resource.terminate(1);
            }
            resource.close()
        })
        .await;
        kill_and_wait(&slot.container).await;
        if let Err(e) = slot.container.remove() {
            tracing::warn!(resource = %slot.name, "removing its container: {e}");
        }
    }
    containers.cleanup();
    let _ = save(&mut driver, stopping.as_deref()).await;
    bus.publish("monitor", None, None, None, "monitor stopped");
    server.abort();
    Ok(())
}

/// A stop signal: the first takes everything offline, a later one
/// terminates everything at once.
fn stop(driver: &mut Driver, first: bool, bus: &EventBus, signal: &str) {
    if first {
        bus.publish(
            "monitor",
            None,
            None,
            None,
            format!("{signal}: taking every resource offline"),
        );
        driver.feed(Event::Shutdown);
    } else {
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
