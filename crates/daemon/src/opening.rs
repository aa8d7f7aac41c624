//! The lifecycle work the core asks for ([`Action::Open`],
//! [`Action::Reattach`], [`Action::Close`]), carried out off the event
//! loop: a type's `open` may run programs (an agent's `validate-all`) and
//! killing an earlier run's leftovers waits for them to die. Each task
//! reports back as a message; the driver puts the result in place and feeds
//! the core.
//!
//! Until its `open` succeeds a resource is a [`NotOpen`]: nothing runs, and
//! the core calls none of its entry points.
//!
//! [`Action::Open`]: resmon_core::Action::Open
//! [`Action::Reattach`]: resmon_core::Action::Reattach
//! [`Action::Close`]: resmon_core::Action::Close

use crate::config::ResourceConfig;
use resmon_contract::{
    CallContext, Completion, LogLevel, Notice, Notifier, OpenContext, Resource, ResourceError,
    ResourceType,
};
use resmon_task::{Container, Containers};
use std::sync::Arc;
use std::time::Duration;

/// A resource its type has not opened (or whose open failed). Nothing of
/// it runs; the core calls no entry point on it, and one that came anyway
/// fails.
pub struct NotOpen;

impl Resource for NotOpen {
    fn online(&self, _ctx: &CallContext) -> Result<Completion, ResourceError> {
        Err(ResourceError::new("it is not open"))
    }

    fn offline(&self, _ctx: &CallContext) -> Result<Completion, ResourceError> {
        Ok(Completion::Done)
    }

    fn terminate(&self, _exit_code: i32) {}

    fn terminate_is_cheap(&self) -> bool {
        true
    }

    fn looks_alive(&self) -> bool {
        false
    }

    fn is_alive(&self) -> bool {
        false
    }
}

/// What a resource's `open` is given: its config, its container's scope,
/// and where its notices go.
pub fn open_context(r: &ResourceConfig, container: &Container, notifier: Notifier) -> OpenContext {
    OpenContext {
        name: r.name.clone(),
        type_name: r.type_name.clone(),
        policy: r.policy.clone(),
        params: r.params.clone(),
        scope: container.scope(),
        notifier,
        log: r.log.clone(),
    }
}

/// Kills whatever runs in `container` and waits (at most 5 s) until it is
/// gone.
pub async fn kill_and_wait(container: &Container) {
    if !container.is_empty() {
        let _ = container.kill_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), container.wait_empty()).await;
    }
}

/// A resource's container as the slot starts with it: the one an earlier
/// run left (processes and all), or, when it cannot be made, a stand-in and
/// why (every open tries again, and fails with that reason meanwhile).
pub fn container_of(containers: &Containers, name: &str) -> (Container, Option<String>) {
    match containers.adopt(name) {
        Ok(c) => (c, None),
        Err(e) => (
            containers.unopened(name),
            Some(format!("opening its container: {e}")),
        ),
    }
}

/// What [`open`] brings back.
pub struct Opened {
    /// The container made on this try, when the slot had only a stand-in.
    pub container: Option<Container>,
    /// The opened resource and the fingerprint of the config it was
    /// opened with, or why it did not open.
    pub result: Result<(Arc<dyn Resource>, String), String>,
}

/// How to open one resource.
pub struct OpenJob {
    pub config: ResourceConfig,
    pub ty: Option<Arc<dyn ResourceType>>,
    pub container: Container,
    /// The slot's container is a stand-in: make the real one first.
    pub remake: Option<Arc<Containers>>,
    /// Kill what runs in the container first.
    pub kill_first: bool,
    /// The config is not the one it was opened with before (a reload
    /// changed its type or parameters): a failure says so.
    pub changed: bool,
    pub notifier: Notifier,
}

/// Opens a resource: its container (killing whatever runs in it when
/// asked), then the type's `open`, on a worker thread.
pub async fn open(job: OpenJob) -> Opened {
    let OpenJob {
        config: r,
        ty,
        mut container,
        remake,
        kill_first,
        changed,
        notifier,
    } = job;
    let failed = |why: String| {
        if changed {
            format!("with its new config: {why}")
        } else {
            why
        }
    };
    let mut made = None;
    if let Some(containers) = remake {
        match containers.adopt(&r.name) {
            Ok(c) => {
                container = c.clone();
                made = Some(c);
            }
            Err(e) => {
                return Opened {
                    container: None,
                    result: Err(failed(format!("opening its container: {e}"))),
                }
            }
        }
    }
    if kill_first {
        // Changed, unwanted or unknown: nothing of before may stay.
        kill_and_wait(&container).await;
    }
    let Some(ty) = ty else {
        return Opened {
            container: made,
            result: Err(failed(format!(
                "open failed: no resource type {:?}",
                r.type_name
            ))),
        };
    };
    // What runs in it from now on runs within its limits.
    if let Err(e) = container.apply_limits(&r.limits) {
        return Opened {
            container: made,
            result: Err(failed(format!("setting its limits: {e}"))),
        };
    }
    let ctx = open_context(&r, &container, notifier);
    let fingerprint = crate::state::fingerprint(&r.type_name, &r.params);
    let opened = crate::workers::spawn(move || ty.open(ctx))
        .await
        .map_err(|e| e.to_string())
        .and_then(|o| o.map_err(|e| e.to_string()));
    Opened {
        container: made,
        result: opened
            .map(|res| (Arc::from(res), fingerprint))
            .map_err(|e| failed(format!("open failed: {e}"))),
    }
}

/// Finds what the earlier run left of a resource from its saved state:
/// whether it runs. One that cannot be found is killed, so that no second
/// copy runs beside a stray first.
pub async fn reattach(
    name: String,
    resource: Arc<dyn Resource>,
    blob: Option<serde_json::Value>,
    container: Container,
    notifier: Notifier,
) -> bool {
    let Some(blob) = blob else {
        kill_and_wait(&container).await;
        return false;
    };
    let attached = crate::workers::spawn(move || resource.reattach(&blob))
        .await
        .unwrap_or_else(|e| Err(ResourceError::new(e.to_string())));
    match attached {
        Ok(alive) => alive,
        Err(e) => {
            tracing::warn!(resource = %name, "cannot adopt it: {e}");
            notifier.log(LogLevel::Warn, format!("cannot adopt it: {e}"));
            kill_and_wait(&container).await;
            false
        }
    }
}

/// Closes a resource (it is down); `release`: then empties and removes its
/// container too.
pub async fn close(resource: Arc<dyn Resource>, container: Container, release: bool) {
    let _ = crate::workers::spawn(move || resource.close()).await;
    if release {
        kill_and_wait(&container).await;
        if let Err(e) = container.remove() {
            tracing::warn!(resource = %container.name(), "removing its container: {e}");
        }
    }
}

/// Where a resource's notices go: a failure notice to the core, a log line
/// to the monitor's log and the event feed.
pub fn notifier(
    id: resmon_core::ResId,
    r: &ResourceConfig,
    container: &Container,
    tx: &tokio::sync::mpsc::UnboundedSender<crate::driver::Msg>,
    bus: &crate::events::EventBus,
) -> Notifier {
    let (tx, bus, name, group) = (tx.clone(), bus.clone(), r.name.clone(), r.group.clone());
    // OOM kills seen so far: a failure after a new one says so.
    let oom = container.clone();
    let seen = std::sync::atomic::AtomicU64::new(oom.oom_kills().unwrap_or(0));
    Notifier::new(move |notice| match notice {
        Notice::Failed(mut reason) => {
            if let Some(n) = oom.oom_kills() {
                if n > seen.swap(n, std::sync::atomic::Ordering::AcqRel) {
                    reason.push_str(
                        "; the kernel's OOM killer killed it: it went past its memory_max (memory.events oom_kill)",
                    );
                }
            }
            let _ = tx.send(crate::driver::Msg::Event(
                resmon_core::Event::FailureNotice { id, reason },
            ));
        }
        Notice::Log(level, message) => {
            log_notice(&name, level, &message);
            bus.publish("log", Some(&name), Some(&group), None, message);
        }
        Notice::Readiness { ready, detail } => {
            let _ = tx.send(crate::driver::Msg::Event(resmon_core::Event::Readiness {
                id,
                ready,
                detail,
            }));
        }
    })
}

fn log_notice(resource: &str, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(resource, "{message}"),
        LogLevel::Warn => tracing::warn!(resource, "{message}"),
        LogLevel::Info => tracing::info!(resource, "{message}"),
        LogLevel::Debug => tracing::debug!(resource, "{message}"),
    }
}
