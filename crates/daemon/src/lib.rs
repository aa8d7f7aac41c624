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

pub use driver::ResourceStatus;

use anyhow::{bail, Context};
use config::{CgroupMode, Config};
use driver::{Driver, Msg, Slot};
use events::EventBus;
use resmon_contract::{LogLevel, Notice, Notifier, OpenContext, ResourceType};
use resmon_core::{Command, Event, Monitor, ResourceSpec};
use resmon_process::ProcessType;
use resmon_task::{Containers, Reaper};
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

async fn run(
    config: Config,
    types: Vec<Arc<dyn ResourceType>>,
    listener: UnixListener,
) -> anyhow::Result<()> {
    let bus = EventBus::new();
    let containers = Arc::new(match config.monitor.cgroups {
        CgroupMode::Auto => Containers::detect(None),
        CgroupMode::Off => Containers::process_groups(),
    });
    tracing::info!(
        "resource processes are kept in {}",
        containers.backend_description()
    );

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
    for (id, r) in config.resources.iter().enumerate() {
        let ty = types
            .iter()
            .find(|t| t.name() == r.type_name)
            .expect("types were checked with the config");
        let opened = containers
            .create(&r.name)
            .with_context(|| format!("resource {:?}: creating its container", r.name))
            .and_then(|container| {
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
                Ok(Slot {
                    name: r.name.clone(),
                    type_name: r.type_name.clone(),
                    resource: Arc::from(resource),
                    container,
                    lane: Arc::new(Mutex::new(())),
                    cancel: Arc::new(AtomicBool::new(false)),
                    cheap_looks_alive: ty.looks_alive_is_cheap(),
                })
            });
        match opened {
            Ok(slot) => slots.push(slot),
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
    for (id, r) in config.resources.iter().enumerate() {
        if r.autostart {
            driver.feed(Event::Command(id, Command::Online));
        }
    }

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut stopping = false;
    while !(stopping && driver.all_down()) {
        let signal = tokio::select! {
            biased;
            _ = sigterm.recv() => Some("SIGTERM"),
            _ = sigint.recv() => Some("SIGINT"),
            _ = driver.turn(&mut rx) => None,
        };
        if let Some(signal) = signal {
            stop(&mut driver, &mut stopping, &bus, signal);
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
        if !slot.container.is_empty() {
            let _ = slot.container.kill_all();
            let _ = tokio::time::timeout(Duration::from_secs(5), slot.container.wait_empty()).await;
        }
        if let Err(e) = slot.container.remove() {
            tracing::warn!(resource = %slot.name, "removing its container: {e}");
        }
    }
    containers.cleanup();
    bus.publish("monitor", None, None, None, "monitor stopped");
    server.abort();
    Ok(())
}

fn stop(driver: &mut Driver, stopping: &mut bool, bus: &EventBus, signal: &str) {
    if !*stopping {
        *stopping = true;
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
