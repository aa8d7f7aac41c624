//! The driver: one task owns the pure [`Monitor`] and carries out its
//! actions against real resources.
//!
//! Everything that can block runs off that task: serialized entry points run
//! on blocking-pool threads, one at a time per resource (the resource's
//! *lane*), while `terminate` runs beside them, never waiting for the lane.
//! Their results come back as messages, so the driver task only ever does
//! quick work and `status` answers while entry points hang. The one
//! exception is `looks_alive` of a type that answers it from memory (the
//! `process` type), which is called inline to keep 1,000 resources cheap.

use crate::events::EventBus;
use resmon_contract::{
    CallContext, Completion, EntryPoint, Resource, ResourceError, State, StatusSink,
};
use resmon_core::{Action, CallOutcome, Command, Event, Monitor, ResId};
use resmon_task::Container;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One resource as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResourceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub group: String,
    pub state: State,
    pub pids: Vec<u32>,
    pub restarts: u32,
    /// When it entered `state`, RFC 3339.
    pub since: String,
    /// Why it is in `state`.
    pub reason: String,
    /// The entry point in flight, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub call: Option<String>,
    /// Being terminated right now.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub terminating: bool,
    /// Whether it is meant to be online (an operator's online or autostart).
    pub wanted_online: bool,
}

/// A request to the driver.
pub enum Msg {
    Event(Event),
    Status {
        name: Option<String>,
        reply: oneshot::Sender<Result<Vec<ResourceStatus>, String>>,
    },
    Command {
        name: String,
        command: Command,
        reply: oneshot::Sender<Result<ResourceStatus, String>>,
    },
}

/// What the driver knows of one resource besides its core state.
pub struct Slot {
    pub name: String,
    pub type_name: String,
    pub resource: Arc<dyn Resource>,
    pub container: Container,
    /// Serializes entry points (all but `terminate`).
    pub lane: Arc<Mutex<()>>,
    /// The "should terminate" flag of the calls now in flight.
    pub cancel: Arc<AtomicBool>,
    pub cheap_looks_alive: bool,
}

pub struct Driver {
    core: Monitor,
    slots: Vec<Slot>,
    tx: mpsc::UnboundedSender<Msg>,
    bus: EventBus,
    /// The same moment on both clocks, to show `since` as wall time.
    epoch: (Instant, SystemTime),
    queue: VecDeque<Event>,
}

struct Sink {
    id: ResId,
    seq: u64,
    tx: mpsc::UnboundedSender<Msg>,
}

impl StatusSink for Sink {
    fn checkpoint(&self, checkpoint: u32) {
        let (id, seq) = (self.id, self.seq);
        let _ = self.tx.send(Msg::Event(Event::Progress {
            id,
            seq,
            checkpoint,
        }));
    }

    fn complete(&self, result: Result<(), ResourceError>) {
        let _ = self.tx.send(Msg::Event(Event::Completed {
            id: self.id,
            seq: self.seq,
            result: result.map_err(|e| e.0),
        }));
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Driver {
    pub fn new(
        core: Monitor,
        slots: Vec<Slot>,
        tx: mpsc::UnboundedSender<Msg>,
        bus: EventBus,
    ) -> Self {
        Driver {
            core,
            slots,
            tx,
            bus,
            epoch: (Instant::now(), SystemTime::now()),
            queue: VecDeque::new(),
        }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn all_down(&self) -> bool {
        self.core.all_down()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    /// Feeds an event and everything it leads to.
    pub fn feed(&mut self, event: Event) {
        self.queue.push_back(event);
        while let Some(ev) = self.queue.pop_front() {
            let actions = self.core.handle(Instant::now(), ev);
            for a in actions {
                self.act(a);
            }
        }
    }

    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Event(e) => self.feed(e),
            Msg::Status { name, reply } => {
                let out = match name {
                    None => Ok((0..self.slots.len()).map(|i| self.status(i)).collect()),
                    Some(n) => self
                        .core
                        .id(&n)
                        .map(|id| vec![self.status(id)])
                        .ok_or_else(|| no_such(&n)),
                };
                let _ = reply.send(out);
            }
            Msg::Command {
                name,
                command,
                reply,
            } => {
                let out = match self.core.id(&name) {
                    None => Err(no_such(&name)),
                    Some(id) => {
                        self.feed(Event::Command(id, command));
                        Ok(self.status(id))
                    }
                };
                let _ = reply.send(out);
            }
        }
    }

    pub fn status(&self, id: ResId) -> ResourceStatus {
        let v = self.core.view(id);
        let slot = &self.slots[id];
        let since = self.epoch.1 + v.since.saturating_duration_since(self.epoch.0);
        ResourceStatus {
            name: slot.name.clone(),
            type_name: slot.type_name.clone(),
            group: v.spec.group.clone(),
            state: v.state,
            pids: slot.resource.pids(),
            restarts: v.restarts,
            since: humantime::format_rfc3339_millis(since).to_string(),
            reason: v.reason.to_string(),
            call: v.in_flight.map(|(e, _)| e.as_str().to_string()),
            terminating: v.terminating,
            wanted_online: v.wants_online,
        }
    }

    fn publish(&self, kind: &str, id: ResId, state: Option<State>, reason: &str) {
        let v = self.core.view(id);
        self.bus
            .publish(kind, Some(&v.spec.name), Some(&v.spec.group), state, reason);
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Call { id, entry, seq } => self.call(id, entry, seq),
            Action::Terminate { id, exit_code, seq } => {
                let slot = &mut self.slots[id];
                // Cancel what is in flight; later calls get a fresh flag.
                slot.cancel.store(true, Ordering::Release);
                slot.cancel = Arc::new(AtomicBool::new(false));
                let resource = slot.resource.clone();
                let container = slot.container.clone();
                let tx = self.tx.clone();
                self.publish(
                    "terminate",
                    id,
                    None,
                    &format!("terminate (exit code {exit_code})"),
                );
                tokio::spawn(async move {
                    let called = tokio::task::spawn_blocking(move || {
                        std::panic::catch_unwind(AssertUnwindSafe(|| resource.terminate(exit_code)))
                    })
                    .await;
                    if let Ok(Err(p)) = called {
                        tracing::error!("terminate panicked: {}", panic_text(p));
                    }
                    container.wait_empty().await;
                    let _ = tx.send(Msg::Event(Event::Terminated { id, seq }));
                });
            }
            Action::ForceKill { id, exit_code, seq } => {
                let container = self.slots[id].container.clone();
                let tx = self.tx.clone();
                let reason = self.core.view(id).reason.to_string();
                self.publish("force_kill", id, None, &reason);
                tokio::spawn(async move {
                    let task = container.task();
                    let killed =
                        tokio::task::spawn_blocking(move || task.terminate(exit_code)).await;
                    if let Ok(Err(e)) = killed {
                        tracing::error!("force kill: {e}");
                    }
                    container.wait_empty().await;
                    let _ = tx.send(Msg::Event(Event::Terminated { id, seq }));
                });
            }
            Action::Failover { group } => {
                self.bus.publish(
                    "failover",
                    None,
                    Some(&group),
                    None,
                    "past its restart threshold; no other node to move to: the group stays failed until retry_period_on_failure",
                );
            }
            Action::Notify(n) => {
                let v = self.core.view(n.id);
                tracing::info!(resource = %v.spec.name, state = %n.state, "{}", n.reason);
                self.publish("state", n.id, Some(n.state), &n.reason);
            }
        }
    }

    fn call(&mut self, id: ResId, entry: EntryPoint, seq: u64) {
        let slot = &self.slots[id];
        if entry == EntryPoint::LooksAlive && slot.cheap_looks_alive {
            let alive = slot.resource.looks_alive();
            self.queue.push_back(Event::Returned {
                id,
                seq,
                outcome: CallOutcome::Alive(alive),
            });
            return;
        }
        let resource = slot.resource.clone();
        let lane = slot.lane.clone();
        let tx = self.tx.clone();
        let ctx = CallContext::new(
            slot.cancel.clone(),
            Arc::new(Sink {
                id,
                seq,
                tx: tx.clone(),
            }),
        );
        tokio::task::spawn_blocking(move || {
            let _turn = lane.lock().unwrap_or_else(|e| e.into_inner());
            let run = || match entry {
                EntryPoint::Online => completion(resource.online(&ctx)),
                EntryPoint::Offline => completion(resource.offline(&ctx)),
                EntryPoint::LooksAlive => CallOutcome::Alive(resource.looks_alive()),
                EntryPoint::IsAlive => CallOutcome::Alive(resource.is_alive()),
                other => CallOutcome::Error(format!("{other} is not called this way")),
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
                CallOutcome::Error(format!("{entry} panicked: {}", panic_text(p)))
            });
            let _ = tx.send(Msg::Event(Event::Returned { id, seq, outcome }));
        });
    }
}

fn completion(r: Result<Completion, ResourceError>) -> CallOutcome {
    match r {
        Ok(Completion::Done) => CallOutcome::Done,
        Ok(Completion::Pending) => CallOutcome::Pending,
        Err(e) => CallOutcome::Error(e.0),
    }
}

pub fn no_such(name: &str) -> String {
    format!("no resource named {name:?} (see `resmon status` for the names)")
}
