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

use crate::cluster::view::Permits;
use crate::config::ResourceConfig;
use crate::events::EventBus;
use crate::opening;
pub use resmon_client::wire::{CallStatus, ResourceStatus};
use resmon_cluster::BootInstant;
use resmon_contract::{
    control, CallContext, Completion, ControlError, EntryPoint, Resource, ResourceError,
    ResourceType, State, StatusSink,
};
use resmon_core::{Action, CallOutcome, Command, Event, Monitor, ResId, Rung};
use resmon_task::lock;
use resmon_task::{Container, Containers};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Why an operation on a resource did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// No such resource or type.
    NotFound(String),
    /// The request itself is wrong (unsupported code, bad input).
    BadRequest(String),
    /// The resource tried and failed.
    Failed(String),
    /// The monitor is stopping: nothing is brought online any more.
    Stopping,
}

/// A request to the driver.
pub enum Msg {
    Control {
        name: String,
        code: u32,
        input: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, OpError>>,
    },
    TypeControl {
        type_name: String,
        code: u32,
        input: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, OpError>>,
    },
    /// `reload-resource`: the resource's `reload`, on its lane; the
    /// answer says what was done.
    Reload {
        name: String,
        reply: oneshot::Sender<Result<String, OpError>>,
    },
    /// `signal`: the resource's `signal` (a signal number), beside its
    /// lane; the answer says what was done.
    Signal {
        name: String,
        signal: i32,
        all: bool,
        reply: oneshot::Sender<Result<String, OpError>>,
    },
    Calls {
        reply: oneshot::Sender<Vec<CallStatus>>,
    },
    /// `/healthz` and `/readyz`: the loop answers, so it turns.
    Health {
        reply: oneshot::Sender<Health>,
    },
    /// `/metrics`: what the monitor's state says now; `sent` is when the
    /// request was sent, to tell how long it waited for the loop.
    /// `known`: the generation of the rows the asker has; none are sent
    /// back while it is the current one.
    Metrics {
        sent: Instant,
        known: Option<u64>,
        reply: oneshot::Sender<resmon_metrics::Scrape>,
    },
    Event(Event),
    /// An [`Action::Open`] was carried out.
    Opened {
        id: ResId,
        opened: opening::Opened,
    },
    /// An [`Action::Close`] was carried out.
    Closed {
        id: ResId,
    },
    Status {
        name: Option<String>,
        reply: oneshot::Sender<Result<Vec<ResourceStatus>, String>>,
    },
    Command {
        name: String,
        command: Command,
        reply: oneshot::Sender<Result<ResourceStatus, OpError>>,
    },
    /// Maintenance on or off for a whole group, or (`group` none) for
    /// every resource.
    Maintenance {
        group: Option<String>,
        on: bool,
        reply: oneshot::Sender<Result<Vec<ResourceStatus>, OpError>>,
    },
}

/// What the event loop says of itself when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    pub stopping: bool,
}

/// What the driver knows of one resource besides its core state.
pub struct Slot {
    pub name: String,
    pub type_name: String,
    /// Type and params of the opened resource: what makes it the same
    /// resource after a restart.
    pub fingerprint: String,
    /// The config its next open uses (a reload that changes its type or
    /// parameters puts the new one here).
    pub config: ResourceConfig,
    /// An [`opening::NotOpen`] until its type opened it.
    pub resource: Arc<dyn Resource>,
    pub container: Container,
    /// Why its container could not be made (it is a stand-in meanwhile).
    pub container_error: Option<String>,
    /// Serializes entry points (all but `terminate`).
    pub lane: Arc<Lane>,
    /// The "should terminate" flag of the calls now in flight.
    pub cancel: Arc<AtomicBool>,
    pub cheap_looks_alive: bool,
    /// Its type's call-duration histograms.
    pub timers: resmon_metrics::CallTimers,
}

impl Slot {
    /// The slot of a configured resource, not opened yet, in its container.
    pub fn new(
        r: &ResourceConfig,
        types: &[Arc<dyn ResourceType>],
        containers: &Containers,
    ) -> Slot {
        let (container, container_error) = opening::container_of(containers, &r.name);
        Slot {
            name: r.name.clone(),
            type_name: r.type_name.clone(),
            fingerprint: crate::state::fingerprint(&r.type_name, &r.params),
            config: r.clone(),
            resource: Arc::new(opening::NotOpen),
            container,
            container_error,
            lane: Arc::default(),
            cancel: Arc::new(AtomicBool::new(false)),
            cheap_looks_alive: type_of(types, &r.type_name)
                .is_some_and(|t| t.looks_alive_is_cheap()),
            timers: resmon_metrics::global().call_timers(&r.type_name),
        }
    }
}

/// How many opens run at once.
const OPENS_AT_ONCE: usize = 16;

/// The type that handles `type_name` (the config check made sure there is one).
pub(crate) fn type_of(
    types: &[Arc<dyn ResourceType>],
    type_name: &str,
) -> Option<Arc<dyn ResourceType>> {
    types.iter().find(|t| t.handles(type_name)).cloned()
}

/// The serialized entry points of one resource: one runs at a time, and
/// the one running is known even after the core stopped waiting for it (a
/// check cancelled by a stop, an `online` abandoned by `terminate`), so
/// `calls` lists everything that a later call waits behind.
#[derive(Default)]
pub struct Lane {
    turn: Mutex<()>,
    running: Mutex<Option<Running>>,
    /// The `seq` of the last health check the core cancelled: one still
    /// queued for its turn is not started.
    cancelled: std::sync::atomic::AtomicU64,
    /// The last call the core gave up on, and when.
    given_up: Mutex<Option<(u64, Instant)>>,
}

/// The call holding a lane.
#[derive(Clone, Copy)]
struct Running {
    entry: EntryPoint,
    seq: u64,
    started: Instant,
}

impl Lane {
    /// Runs `call` in its turn, unless it is a check cancelled while it
    /// waited (then `None`).
    fn run<T>(&self, entry: EntryPoint, seq: u64, call: impl FnOnce() -> T) -> Option<T> {
        let _turn = self.turn();
        if entry.is_health_check() && self.cancelled.load(Ordering::Acquire) == seq {
            return None;
        }
        let running = Running {
            entry,
            seq,
            started: Instant::now(),
        };
        *lock(&self.running) = Some(running);
        let out = call();
        *lock(&self.running) = None;
        Some(out)
    }

    /// Waits for the lane and holds it.
    fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.turn)
    }

    fn running(&self) -> Option<Running> {
        *lock(&self.running)
    }

    /// The core no longer waits for call `seq` (or, with `None`, for
    /// whatever runs now).
    fn give_up(&self, seq: Option<u64>, now: Instant) {
        if let Some(seq) = seq {
            self.cancelled.store(seq, Ordering::Release);
        }
        if let Some(seq) = seq.or(self.running().map(|r| r.seq)) {
            *lock(&self.given_up) = Some((seq, now));
        }
    }

    fn given_up(&self, seq: u64) -> Option<Instant> {
        let g = *lock(&self.given_up);
        g.filter(|&(s, _)| s == seq).map(|(_, at)| at)
    }
}

/// A call the driver runs on a resource's lane besides the core's entry
/// points (a control code, a reload): resource, what `calls` lists it as,
/// start, deadline.
type ControlCall = (ResId, &'static str, Instant, Instant);

pub struct Driver {
    core: Monitor,
    slots: Vec<Slot>,
    types: Vec<Arc<dyn ResourceType>>,
    controls: Arc<Mutex<HashMap<u64, ControlCall>>>,
    next_control: u64,
    tx: mpsc::UnboundedSender<Msg>,
    bus: EventBus,
    /// The same moment on both clocks, to show `since` as wall time.
    epoch: (Instant, SystemTime),
    queue: VecDeque<Event>,
    /// The last turn handled a due deadline without waiting.
    just_ticked: bool,
    /// Something the state file records changed since it was last written.
    state_dirty: bool,
    /// Where resource containers are made.
    containers: Arc<Containers>,
    /// Bounds the opens that run at once: a thousand at the start would
    /// each take a worker thread, and fork an agent's validate-all, at the
    /// same moment, for no gain.
    opens: Arc<tokio::sync::Semaphore>,
    /// At the monitor's start: which containers held processes (one look
    /// for all, instead of one per open).
    occupied: Vec<bool>,
    /// What the earlier run saved of each resource, used while its start
    /// is not carried out (to reattach it, and in the state written
    /// meanwhile).
    earlier: HashMap<ResId, crate::state::SavedResource>,
    /// Bumped whenever a resource's metric rows change (a state, restarts,
    /// the restart window, a reload), so that `/metrics` re-reads them.
    metrics_generation: u64,
    /// Cluster mode: where `restart_then_failover` sends a group to move.
    failover: Option<mpsc::UnboundedSender<String>>,
    /// Cluster mode: the groups this node may bring online now.
    permits: Option<Arc<Permits>>,
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

/// What a caught panic said.
pub(crate) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Driver {
    pub fn new(
        core: Monitor,
        slots: Vec<Slot>,
        types: Vec<Arc<dyn ResourceType>>,
        tx: mpsc::UnboundedSender<Msg>,
        bus: EventBus,
        containers: Arc<Containers>,
    ) -> Self {
        Driver {
            core,
            slots,
            types,
            containers,
            opens: Arc::new(tokio::sync::Semaphore::new(OPENS_AT_ONCE)),
            occupied: Vec::new(),
            earlier: HashMap::new(),
            controls: Arc::new(Mutex::new(HashMap::new())),
            next_control: 0,
            tx,
            bus,
            epoch: (Instant::now(), SystemTime::now()),
            queue: VecDeque::new(),
            just_ticked: false,
            state_dirty: false,
            metrics_generation: 0,
            failover: None,
            permits: None,
        }
    }

    /// Whether the state file is behind.
    /// Cluster mode: failovers go to the cluster controller.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn send_failovers_to(&mut self, tx: mpsc::UnboundedSender<String>) {
        self.failover = Some(tx);
    }

    /// Cluster mode: `online` of any resource needs a permit for its group.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn gate_online(&mut self, permits: Arc<Permits>) {
        self.permits = Some(permits);
    }

    pub fn state_dirty(&self) -> bool {
        self.state_dirty
    }

    /// What the state file should say now; clears the dirty mark.
    /// `running` false: record that nothing runs (after a clean stop), with
    /// `wanted` giving what was wanted before the stop.
    pub fn snapshot(&mut self, wanted: Option<&[bool]>) -> crate::state::SavedState {
        self.state_dirty = false;
        let mut out = crate::state::SavedState {
            version: crate::state::VERSION,
            ..Default::default()
        };
        for (id, slot) in self.slots.iter().enumerate() {
            if self.core.is_retired(id) {
                continue;
            }
            let v = self.core.view(id);
            // Not started yet: what the earlier run saved still holds.
            if let Some(before) = self.earlier.get(&id).filter(|_| v.starting) {
                let mut before = before.clone();
                if let Some(w) = wanted {
                    before.wanted_online = w.get(id).copied().unwrap_or(false);
                    before.saved = None;
                }
                out.resources.insert(slot.name.clone(), before);
                continue;
            }
            out.resources.insert(
                slot.name.clone(),
                crate::state::SavedResource {
                    fingerprint: slot.fingerprint.clone(),
                    wanted_online: wanted
                        .map_or(v.wants_online, |w| w.get(id).copied().unwrap_or(false)),
                    state: v.state,
                    restarts: v.restarts,
                    maintenance: v.maintenance,
                    saved: if wanted.is_some() {
                        None
                    } else {
                        slot.resource.persist()
                    },
                },
            );
        }
        out
    }

    /// Whether the monitor's start (opens, adoption) is carried out.
    pub fn is_started(&self) -> bool {
        self.core.is_started()
    }

    /// The resources by state, for people: `3 online, 1 failed, 0 pending`
    /// (systemd's `STATUS=`).
    pub fn counts(&self) -> String {
        let (mut online, mut failed, mut pending, mut offline) = (0, 0, 0, 0);
        for id in 0..self.slots.len() {
            if self.core.is_retired(id) {
                continue;
            }
            match self.core.state(id) {
                State::Online => online += 1,
                State::Failed => failed += 1,
                State::OnlinePending | State::OfflinePending => pending += 1,
                State::Offline => offline += 1,
            }
        }
        format!("{online} online, {failed} failed, {pending} pending, {offline} offline")
    }

    /// What is wanted online now, per resource.
    pub fn wanted(&self) -> Vec<bool> {
        (0..self.slots.len())
            .map(|id| self.core.view(id).wants_online)
            .collect()
    }

    /// One turn of the event loop: handle a due deadline, or wait for the
    /// next message or deadline and handle it. Cancel-safe: it only awaits
    /// before it starts to handle anything.
    pub async fn turn(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        let deadline = self.next_deadline();
        // A deadline already due is handled now: the timer wheel would round
        // a zero sleep up to its next millisecond tick. Only once in a row,
        // so messages are never starved.
        let due = deadline.is_some_and(|d| d <= Instant::now());
        if due && !self.just_ticked {
            self.just_ticked = true;
            self.feed(Event::Tick);
            return;
        }
        self.just_ticked = false;
        tokio::select! {
            Some(msg) = rx.recv() => {
                self.handle(msg);
                // Drain what is already queued before looking at the clock.
                while let Ok(msg) = rx.try_recv() {
                    self.handle(msg);
                }
            }
            _ = sleep_until(self.core.next_wake(|d| coalesce(self.epoch.0, d))) => self.feed(Event::Tick),
        }
    }

    pub fn is_down(&self, id: ResId) -> bool {
        self.core.state(id).is_down()
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
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(ev) = self.queue.pop_front() {
            let actions = self.core.handle(Instant::now(), ev);
            for a in actions {
                self.act(a);
            }
        }
    }

    /// The monitor's start: every resource is opened at once, off the
    /// loop, and then started as `from` says (see [`Monitor::start`]).
    /// `occupied`: which containers held processes; `earlier`: what the
    /// earlier run saved of each.
    pub fn start(
        &mut self,
        from: &[resmon_core::StartFrom],
        occupied: Vec<bool>,
        earlier: HashMap<ResId, crate::state::SavedResource>,
    ) {
        self.occupied = occupied;
        // Maintenance outlives the monitor: the restarted one keeps it.
        for (&id, e) in &earlier {
            if e.maintenance && id < self.slots.len() {
                self.queue
                    .push_back(Event::Command(id, Command::Maintenance(true)));
            }
        }
        self.earlier = earlier;
        self.drain();
        let actions = self.core.start(Instant::now(), from);
        for a in actions {
            self.act(a);
        }
        self.drain();
    }

    /// Applies a reload: see [`Monitor::reconfigure`]. `resources` is the
    /// new config's; `replace` names those whose type or parameters changed
    /// (opened anew with their new config once down).
    pub fn reconfigure(
        &mut self,
        resources: &[ResourceConfig],
        replace: &[String],
    ) -> Result<(Vec<ResId>, Vec<ResId>), resmon_core::SpecError> {
        // Limits that cannot be had refuse the reload, before anything changes.
        crate::limits_possible(resources, &self.containers)
            .map_err(|e| resmon_core::SpecError(vec![e]))?;
        let specs = resources.iter().map(crate::handoff::spec_of).collect();
        let r = self.core.reconfigure(Instant::now(), specs, replace)?;
        // The slots first: the core's actions (their opens) name them.
        for &id in &r.added {
            let name = &self.core.view(id).spec.name;
            if let Some(c) = resources.iter().find(|c| &c.name == name) {
                self.slots.push(Slot::new(c, &self.types, &self.containers));
            }
        }
        for c in resources {
            if let Some(id) = self.core.id(&c.name) {
                let slot = &mut self.slots[id];
                // New limits apply in place: the resource keeps running.
                if slot.config.limits != c.limits && !r.added.contains(&id) {
                    let (container, limits) = (slot.container.clone(), c.limits.clone());
                    let (bus, name, group) = (self.bus.clone(), c.name.clone(), c.group.clone());
                    crate::workers::spawn(move || {
                        let said = match container.apply_limits(&limits) {
                            Ok(()) => "limits changed in place".to_string(),
                            Err(e) => format!("its new limits could not be set: {e}"),
                        };
                        bus.publish("log", Some(&name), Some(&group), None, said);
                    });
                }
                slot.config = c.clone();
            }
        }
        for a in r.actions {
            self.act(a);
        }
        self.drain();
        self.state_dirty = true;
        self.metrics_generation += 1;
        Ok((r.added, r.retired))
    }

    /// Whether a removed resource was closed and its container removed.
    pub fn is_released(&self, id: ResId) -> bool {
        self.core.view(id).life == resmon_core::Life::Released
    }

    /// The monitor is stopping: what the opens out run (an agent's
    /// validate-all) is killed, so that they end now, failed, instead of
    /// at their timeouts.
    pub fn kill_opens(&self) {
        for (id, slot) in self.slots.iter().enumerate() {
            if self.core.view(id).life == resmon_core::Life::Opening {
                if let Err(e) = slot.container.kill_all() {
                    tracing::warn!(resource = %slot.name, "killing what its open runs: {e}");
                }
            }
        }
    }

    pub fn is_retired(&self, id: ResId) -> bool {
        self.core.is_retired(id)
    }

    /// A removed resource was released: its recorded series go too (one
    /// added back under its name later starts its counts afresh).
    pub fn forget_metrics(&self, id: ResId) {
        resmon_metrics::global().forget(
            &self.who(id),
            &Rung::ALL.map(Rung::as_str),
            &resmon_core::FailureClass::ALL.map(resmon_core::FailureClass::as_str),
        );
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn id(&self, name: &str) -> Option<ResId> {
        self.core.id(name)
    }

    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Control {
                name,
                code,
                input,
                reply,
            } => {
                if let Some((id, reply)) = self.named(&name, reply) {
                    self.control(id, code, input, reply);
                }
            }
            Msg::Reload { name, reply } => {
                if let Some((id, reply)) = self.named(&name, reply) {
                    self.reload(id, reply);
                }
            }
            Msg::Signal {
                name,
                signal,
                all,
                reply,
            } => {
                if let Some((id, reply)) = self.named(&name, reply) {
                    self.signal(id, signal, all, reply);
                }
            }
            Msg::TypeControl {
                type_name,
                code,
                input,
                reply,
            } => self.type_control(type_name, code, input, reply),
            Msg::Calls { reply } => {
                let _ = reply.send(self.calls());
            }
            Msg::Health { reply } => {
                let _ = reply.send(Health {
                    ready: self.core.is_started(),
                    stopping: self.core.is_shutting_down(),
                });
            }
            Msg::Metrics { sent, known, reply } => {
                let _ = reply.send(self.scrape(sent, known));
            }
            Msg::Event(e) => self.feed(e),
            Msg::Opened { id, opened } => self.opened(id, opened),
            Msg::Closed { id } => {
                let slot = &mut self.slots[id];
                slot.resource = Arc::new(opening::NotOpen);
                if self.core.is_retired(id) {
                    self.forget_metrics(id);
                }
                self.metrics_generation += 1;
                self.feed(Event::Closed { id });
            }
            Msg::Status { name, reply } => {
                let out = match name {
                    None => Ok((0..self.slots.len())
                        .filter(|&i| !self.core.is_retired(i))
                        .map(|i| self.status(i))
                        .collect()),
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
                    None => Err(OpError::NotFound(no_such(&name))),
                    Some(_) if command == Command::Online && self.core.is_shutting_down() => {
                        Err(OpError::Stopping)
                    }
                    Some(_) if command == Command::Restart && self.core.is_shutting_down() => {
                        Err(OpError::Stopping)
                    }
                    Some(id) => {
                        self.state_dirty = true;
                        match command {
                            Command::Maintenance(on) => self.maintenance(id, on),
                            _ => self.feed(Event::Command(id, command)),
                        }
                        Ok(self.status(id))
                    }
                };
                let _ = reply.send(out);
            }
            Msg::Maintenance { group, on, reply } => {
                let ids: Vec<ResId> = (0..self.slots.len())
                    .filter(|&id| !self.core.is_retired(id))
                    .filter(|&id| {
                        group
                            .as_ref()
                            .is_none_or(|g| &self.core.view(id).spec.group == g)
                    })
                    .collect();
                let out = match (&group, ids.is_empty()) {
                    (Some(g), true) => Err(OpError::NotFound(format!(
                        "no group {g:?}: `resmon status` lists every resource with its group"
                    ))),
                    _ => {
                        self.state_dirty = true;
                        for &id in &ids {
                            self.maintenance(id, on);
                        }
                        Ok(ids.iter().map(|&id| self.status(id)).collect())
                    }
                };
                let _ = reply.send(out);
            }
        }
    }

    /// Maintenance on or off for one resource, in the event feed when it
    /// changes.
    fn maintenance(&mut self, id: ResId, on: bool) {
        if self.core.view(id).maintenance == on {
            return;
        }
        self.feed(Event::Command(id, Command::Maintenance(on)));
        let why = if on {
            "maintenance on: its checks run and are reported, but no failure acts"
        } else {
            "maintenance off: checked at once"
        };
        self.publish("maintenance", id, None, why);
        self.metrics_generation += 1;
    }

    pub fn status(&self, id: ResId) -> ResourceStatus {
        let v = self.core.view(id);
        let slot = &self.slots[id];
        let since = self.epoch.1 + v.since.saturating_duration_since(self.epoch.0);
        ResourceStatus {
            name: slot.name.clone(),
            type_name: slot.type_name.clone(),
            group: v.spec.group.clone(),
            depends_on: v.spec.depends_on.clone(),
            state: v.state,
            pids: slot.resource.pids(),
            restarts: v.restarts,
            since: humantime::format_rfc3339_millis(since).to_string(),
            reason: v.reason.to_string(),
            detail: slot.resource.detail(),
            // An open, reattach or close out shows as the call in flight.
            call: v
                .in_flight
                .map(|(e, _, _)| e.as_str())
                .or(match v.life {
                    resmon_core::Life::Opening => Some("open"),
                    resmon_core::Life::Reattaching => Some("reattach"),
                    resmon_core::Life::Closing => Some("close"),
                    _ => None,
                })
                .map(str::to_string),
            terminating: v.terminating,
            wanted_online: v.wants_online,
            maintenance: v.maintenance,
            ready: v.ready,
            next_attempt: v.next_attempt.map(|t| self.wall(t)),
            health_failures: v.health_failures,
            restarting: v.restarting,
            owner: None,
            output_dropped: slot.resource.output_dropped(),
        }
    }

    /// Who a resource is, for its metric series.
    fn who(&self, id: ResId) -> resmon_metrics::Who {
        let slot = &self.slots[id];
        resmon_metrics::Who {
            resource: slot.name.clone(),
            group: self.core.view(id).spec.group.clone(),
            type_name: slot.type_name.clone(),
        }
    }

    /// What `/metrics` reads of the monitor's state now; the resources'
    /// rows only when the asker's generation (`known`) is not the current.
    fn scrape(&self, sent: Instant, known: Option<u64>) -> resmon_metrics::Scrape {
        let now = Instant::now();
        let live = || (0..self.slots.len()).filter(|&id| !self.core.is_retired(id));
        let rows = (known != Some(self.metrics_generation)).then(|| {
            let mut valid_until: Option<Instant> = None;
            let resources = live()
                .map(|id| {
                    let v = self.core.view(id);
                    let window_end = self.core.restart_window_end(id, now);
                    if let Some(end) = window_end {
                        valid_until = Some(valid_until.map_or(end, |u| u.min(end)));
                    }
                    let online_since = (v.state == State::Online).then(|| {
                        self.wall_time(v.since)
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64())
                    });
                    resmon_metrics::ResourceRow {
                        who: self.who(id),
                        state: v.state.as_str(),
                        restarts: u64::from(v.restarts),
                        in_restart_window: window_end.is_some(),
                        online_since,
                        ready: v.ready,
                        maintenance: v.maintenance,
                    }
                })
                .collect();
            resmon_metrics::Rows {
                generation: self.metrics_generation,
                valid_until: valid_until.map(Instant::into_std),
                state_names: State::ALL.iter().map(|s| s.as_str()).collect(),
                resources,
            }
        });
        let exit_codes = live()
            .filter_map(|id| Some((self.who(id), self.slots[id].resource.exit_code()?)))
            .collect();
        let output_dropped = live()
            .filter_map(|id| {
                let n = self.slots[id].resource.output_dropped();
                (n > 0).then(|| (self.who(id), n))
            })
            .collect();
        let calls = self
            .calls()
            .into_iter()
            .map(|c| resmon_metrics::CallRow {
                type_name: self
                    .core
                    .id(&c.resource)
                    .map(|id| self.slots[id].type_name.clone())
                    .unwrap_or_default(),
                resource: c.resource,
                entry: c.entry,
                seconds_left: c.remaining_ms as f64 / 1000.0,
            })
            .collect();
        resmon_metrics::Scrape {
            rows,
            exit_codes,
            output_dropped,
            calls,
            loop_lag: now.saturating_duration_since(sent),
            cluster: None,
        }
    }

    fn wall_time(&self, t: Instant) -> SystemTime {
        if t >= self.epoch.0 {
            self.epoch.1 + (t - self.epoch.0)
        } else {
            self.epoch.1 - (self.epoch.0 - t)
        }
    }

    fn wall(&self, t: Instant) -> String {
        humantime::format_rfc3339_millis(self.wall_time(t)).to_string()
    }

    /// Every entry-point call in progress, oldest first.
    pub fn calls(&self) -> Vec<CallStatus> {
        let now = Instant::now();
        let mut out: Vec<(Instant, CallStatus)> = Vec::new();
        let mut add = |id: ResId, entry: &str, started: Instant, deadline: Instant| {
            let remaining = if deadline >= now {
                (deadline - now).as_millis() as i64
            } else {
                -((now - deadline).as_millis() as i64)
            };
            out.push((
                started,
                CallStatus {
                    resource: self.slots[id].name.clone(),
                    entry: entry.to_string(),
                    started: self.wall(started),
                    elapsed_ms: now.saturating_duration_since(started).as_millis() as u64,
                    deadline: self.wall(deadline),
                    remaining_ms: remaining,
                },
            ));
        };
        for id in 0..self.slots.len() {
            let v = self.core.view(id);
            if let Some((entry, started, deadline)) = v.in_flight {
                add(id, entry.as_str(), started, deadline);
            }
            // A call the core no longer waits for, still holding the lane:
            // what is queued behind it waits for it all the same. Its
            // deadline is when it was given up.
            let lane = &self.slots[id].lane;
            if let Some(r) = lane.running().filter(|r| v.in_flight_seq != Some(r.seq)) {
                let given_up = lane.given_up(r.seq).unwrap_or(now);
                add(id, &format!("{} (abandoned)", r.entry), r.started, given_up);
            }
            if let Some((started, deadline)) = v.terminate {
                add(id, "terminate", started, deadline);
            }
        }
        let controls = lock(&self.controls);
        for &(id, entry, started, deadline) in controls.values() {
            add(id, entry, started, deadline);
        }
        drop(controls);
        out.sort_by_key(|(started, _)| *started);
        out.into_iter().map(|(_, c)| c).collect()
    }

    /// What the monitor answers for a resource code its type does not handle.
    fn default_control(&self, id: ResId, code: u32) -> Option<serde_json::Value> {
        let v = self.core.view(id);
        let slot = &self.slots[id];
        let dur = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let p = &v.spec.policy;
        match code {
            control::GET_STATE => Some(serde_json::json!({
                "state": v.state,
                "reason": v.reason,
                "since": self.wall(v.since),
            })),
            control::GET_COMMON_PROPERTIES => Some(serde_json::json!({
                "looks_alive_interval": dur(p.looks_alive_interval),
                "is_alive_interval": dur(p.is_alive_interval),
                "pending_timeout": dur(p.pending_timeout),
                "terminate_timeout": dur(p.terminate_timeout),
                "deadlock_timeout": dur(p.deadlock_timeout),
                "restart_action": p.restart_action,
                "restart_threshold": p.restart_threshold,
                "restart_period": dur(p.restart_period),
                "restart_delay": dur(p.restart_delay),
                "retry_period_on_failure": dur(p.retry_period_on_failure),
                "separate_monitor": p.separate_monitor,
                "failure_threshold": p.failure_threshold,
                "success_threshold": p.success_threshold,
                "restart_backoff": p.restart_backoff.factor(),
                "restart_delay_max": dur(p.restart_delay_max),
            })),
            control::GET_CHARACTERISTICS => Some(serde_json::json!({
                "type": slot.type_name,
                "group": v.spec.group,
                "depends_on": v.spec.depends_on,
            })),
            _ => None,
        }
    }

    /// The resource named `name`, with the `reply` to its request; when
    /// there is none, the reply says so.
    fn named<T>(
        &self,
        name: &str,
        reply: oneshot::Sender<Result<T, OpError>>,
    ) -> Option<(ResId, oneshot::Sender<Result<T, OpError>>)> {
        match self.core.id(name) {
            Some(id) => Some((id, reply)),
            None => {
                let _ = reply.send(Err(OpError::NotFound(no_such(name))));
                None
            }
        }
    }

    /// Runs `job` on the resource's lane, serialized with its other entry
    /// points (never with `terminate`), on a worker thread; `calls` lists
    /// it as `entry` while it runs. `done` gets its result there.
    fn on_lane<T: 'static>(
        &mut self,
        id: ResId,
        entry: &'static str,
        job: impl FnOnce(&dyn Resource) -> Result<T, ControlError> + Send + 'static,
        done: impl FnOnce(Result<T, ControlError>) + Send + 'static,
    ) {
        let slot = &self.slots[id];
        let (resource, lane) = (slot.resource.clone(), slot.lane.clone());
        let key = self.next_control;
        self.next_control += 1;
        let started = Instant::now();
        let deadline = resmon_core::later(started, self.core.view(id).spec.policy.deadlock_timeout);
        let controls = self.controls.clone();
        lock(&controls).insert(key, (id, entry, started, deadline));
        crate::workers::spawn(move || {
            let out = {
                // Listed by `calls` from `controls`, not as the lane's call.
                let _turn = lane.turn();
                guarded(|| job(&*resource))
            };
            lock(&controls).remove(&key);
            done(out);
        });
    }

    /// Runs `resource_control` on the resource's lane.
    fn control(
        &mut self,
        id: ResId,
        code: u32,
        input: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, OpError>>,
    ) {
        let default = self
            .default_control(id, code)
            .map(|v| serde_json::to_vec(&v).unwrap_or_default());
        let slot = &self.slots[id];
        let what = format!("resource {:?} (type {})", slot.name, slot.type_name);
        self.on_lane(
            id,
            "resource_control",
            move |r| r.resource_control(code, &input),
            move |out| {
                let _ = reply.send(control_result(out, default, code, &what));
            },
        );
    }

    /// `reload-resource`: the type's `reload` on the resource's lane,
    /// bounded by its `pending_timeout`; only an online resource is
    /// reloaded.
    fn reload(&mut self, id: ResId, reply: oneshot::Sender<Result<String, OpError>>) {
        let v = self.core.view(id);
        if v.state != State::Online || v.life != resmon_core::Life::Open {
            let _ = reply.send(Err(OpError::Failed(format!(
                "resource {} is {}, not online: only an online resource can be reloaded",
                v.spec.name, v.state
            ))));
            return;
        }
        let limit = v.spec.policy.pending_timeout;
        let done = self.request_done(id, "reload", reply);
        self.on_lane(id, "reload", move |r| r.reload(limit), done);
    }

    /// `signal`: the type's `signal`, on a worker thread but not on the
    /// lane (it only signals, like `terminate`): a stop that hangs can
    /// still be signalled. Only while something of the resource runs.
    fn signal(
        &mut self,
        id: ResId,
        signal: i32,
        all: bool,
        reply: oneshot::Sender<Result<String, OpError>>,
    ) {
        let v = self.core.view(id);
        let running = matches!(
            v.state,
            State::OnlinePending | State::Online | State::OfflinePending
        );
        if !running || v.life != resmon_core::Life::Open {
            let _ = reply.send(Err(OpError::Failed(format!(
                "resource {} is {}: no process of it runs to be signalled",
                v.spec.name, v.state
            ))));
            return;
        }
        let resource = self.slots[id].resource.clone();
        let done = self.request_done(id, "signal", reply);
        crate::workers::spawn(move || done(guarded(|| resource.signal(signal, all))));
    }

    /// What an operator's request `op` (`reload`, `signal`) of resource
    /// `id` answers once its type returned, as an [`OpError`] when it did
    /// not succeed; what it did, or why it failed, also goes to the event
    /// feed.
    fn request_done(
        &self,
        id: ResId,
        op: &'static str,
        reply: oneshot::Sender<Result<String, OpError>>,
    ) -> impl FnOnce(Result<String, ControlError>) + Send + 'static {
        let slot = &self.slots[id];
        let (name, type_name) = (slot.name.clone(), slot.type_name.clone());
        let group = self.core.view(id).spec.group.clone();
        let bus = self.bus.clone();
        move |out| {
            let out = match out {
                Ok(done) => {
                    tracing::info!(resource = %name, "{op}: {done}");
                    bus.publish(
                        "log",
                        Some(&name),
                        Some(&group),
                        None,
                        format!("{op}: {done}"),
                    );
                    Ok(done)
                }
                Err(ControlError::NotSupported) => Err(OpError::BadRequest(format!(
                    "{op} is not supported by type {type_name} (resource {name})"
                ))),
                Err(ControlError::InvalidInput(why)) => Err(OpError::BadRequest(why)),
                Err(ControlError::Failed(why)) => {
                    let why = format!("{op} of resource {name}: {why}");
                    tracing::warn!(resource = %name, "{why}");
                    bus.publish("log", Some(&name), Some(&group), None, why.clone());
                    Err(OpError::Failed(why))
                }
            };
            let _ = reply.send(out);
        }
    }

    fn type_control(
        &mut self,
        type_name: String,
        code: u32,
        input: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, OpError>>,
    ) {
        let Some(ty) = self.types.iter().find(|t| t.handles(&type_name)).cloned() else {
            let names: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
            let _ = reply.send(Err(OpError::NotFound(crate::config::unknown_type(
                &type_name, &names,
            ))));
            return;
        };
        let default = (code == control::GET_TYPE_INFO).then(|| {
            let resources: Vec<&str> = self
                .slots
                .iter()
                .filter(|s| s.type_name == type_name)
                .map(|s| s.name.as_str())
                .collect();
            serde_json::to_vec(&serde_json::json!({"name": type_name, "resources": resources}))
                .unwrap_or_default()
        });
        let what = format!("resource type {type_name:?}");
        crate::workers::spawn(move || {
            let out = guarded(|| ty.resource_type_control(&type_name, code, &input));
            let _ = reply.send(control_result(out, default, code, &what));
        });
    }

    fn publish(&self, kind: &str, id: ResId, state: Option<State>, reason: &str) {
        let v = self.core.view(id);
        self.bus
            .publish(kind, Some(&v.spec.name), Some(&v.spec.group), state, reason);
    }

    /// An open came back: the resource goes in its slot, then the core
    /// hears of it.
    fn opened(&mut self, id: ResId, opened: opening::Opened) {
        let slot = &mut self.slots[id];
        if let Some(c) = opened.container {
            slot.container = c;
            slot.container_error = None;
        }
        let result = match opened.result {
            Ok((resource, fingerprint)) => {
                slot.resource = resource;
                slot.fingerprint = fingerprint;
                self.state_dirty = true;
                Ok(())
            }
            Err(why) => {
                tracing::error!(resource = %slot.name, "{why}; it stays failed until its next online");
                Err(why)
            }
        };
        if let Err(why) = &result {
            self.publish("log", id, None, why);
        }
        self.feed(Event::Opened { id, result });
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Call { id, entry, seq } => self.call(id, entry, seq),
            Action::Open { id, fresh } => {
                let slot = &self.slots[id];
                // At the start, one look found which containers held
                // processes; later opens look for themselves.
                let kill_first = fresh && self.occupied.get(id).copied().unwrap_or(true);
                if let Some(o) = self.occupied.get_mut(id) {
                    *o = true;
                }
                let job = opening::OpenJob {
                    config: slot.config.clone(),
                    ty: type_of(&self.types, &slot.config.type_name),
                    container: slot.container.clone(),
                    remake: slot
                        .container_error
                        .is_some()
                        .then(|| self.containers.clone()),
                    kill_first,
                    changed: slot.fingerprint
                        != crate::state::fingerprint(&slot.config.type_name, &slot.config.params),
                    notifier: opening::notifier(
                        id,
                        &slot.config,
                        &slot.container,
                        &self.tx,
                        &self.bus,
                    ),
                };
                let (tx, opens) = (self.tx.clone(), self.opens.clone());
                tokio::spawn(async move {
                    // The semaphore is never closed.
                    let _turn = opens.acquire().await;
                    let opened = opening::open(job).await;
                    let _ = tx.send(Msg::Opened { id, opened });
                });
            }
            Action::Reattach { id } => {
                let slot = &self.slots[id];
                let blob = self.earlier.get(&id).and_then(|e| e.saved.clone());
                let (name, resource, container) = (
                    slot.name.clone(),
                    slot.resource.clone(),
                    slot.container.clone(),
                );
                let notifier =
                    opening::notifier(id, &slot.config, &slot.container, &self.tx, &self.bus);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let alive = opening::reattach(name, resource, blob, container, notifier).await;
                    let _ = tx.send(Msg::Event(Event::Adopted { id, alive }));
                });
            }
            Action::Close { id, release } => {
                let slot = &self.slots[id];
                let (resource, container) = (slot.resource.clone(), slot.container.clone());
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    opening::close(resource, container, release).await;
                    let _ = tx.send(Msg::Closed { id });
                });
            }
            Action::CancelCheck { id, seq } => {
                let slot = &self.slots[id];
                slot.lane.give_up(Some(seq), Instant::now());
                // Inline: the next call (the offline) is issued right after,
                // and must not meet a cancel meant for this check.
                if let Err(p) =
                    std::panic::catch_unwind(AssertUnwindSafe(|| slot.resource.cancel_check()))
                {
                    tracing::error!(resource = %slot.name, "cancel_check panicked: {}", panic_text(p));
                }
            }
            Action::Terminate { id, exit_code, seq } => {
                let slot = &mut self.slots[id];
                slot.lane.give_up(None, Instant::now());
                // Cancel what is in flight; later calls get a fresh flag.
                slot.cancel.store(true, Ordering::Release);
                slot.cancel = Arc::new(AtomicBool::new(false));
                let resource = slot.resource.clone();
                let container = slot.container.clone();
                let tx = self.tx.clone();
                let why = self.core.view(id).reason.to_string();
                self.publish(
                    "terminate",
                    id,
                    None,
                    &format!("terminate (exit code {exit_code}): {why}"),
                );
                let cheap = resource.terminate_is_cheap();
                let timers = self.slots[id].timers.clone();
                let terminate = move || {
                    let started = Instant::now();
                    if let Err(p) =
                        std::panic::catch_unwind(AssertUnwindSafe(|| resource.terminate(exit_code)))
                    {
                        tracing::error!("terminate panicked: {}", panic_text(p));
                    }
                    timers.observe("terminate", started.elapsed());
                };
                // A terminate that only signals runs here: handing it to a
                // worker thread and back would cost two wake-ups on the
                // way to a restart.
                let terminate = if cheap {
                    terminate();
                    None
                } else {
                    Some(terminate)
                };
                tokio::spawn(async move {
                    if let Some(terminate) = terminate {
                        let _ = crate::workers::spawn(terminate).await;
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
                    let killed = crate::workers::spawn(move || task.terminate(exit_code)).await;
                    if let Ok(Err(e)) = killed {
                        tracing::error!("force kill: {e}");
                    }
                    container.wait_empty().await;
                    let _ = tx.send(Msg::Event(Event::Terminated { id, seq }));
                });
            }
            Action::Failover { group } => {
                if let Some(tx) = &self.failover {
                    self.bus.publish(
                        "failover",
                        None,
                        Some(&group),
                        None,
                        "past its restart threshold: moving the group to another node",
                    );
                    let _ = tx.send(group);
                    return;
                }
                self.bus.publish(
                    "failover",
                    None,
                    Some(&group),
                    None,
                    "past its restart threshold; no other node to move to: the group stays failed until retry_period_on_failure",
                );
            }
            Action::Failed { id, class } => {
                self.metrics_generation += 1;
                resmon_metrics::global().failure(&self.who(id), class.as_str());
            }
            Action::Stopped { id, rung, took } => {
                // A failure's restart window begins when it is down.
                self.metrics_generation += 1;
                let who = self.who(id);
                resmon_metrics::global().stop(&who, rung.as_str(), took);
                let took_ms = Duration::from_millis(took.as_millis().min(u64::MAX.into()) as u64);
                self.publish(
                    "stopped",
                    id,
                    None,
                    &format!(
                        "the {} rung ended the stop after {}",
                        rung.as_str(),
                        humantime::format_duration(took_ms)
                    ),
                );
                // The terminate rungs end once the container is empty; an
                // offline ends when the type says so, which is checked.
                if rung == Rung::Offline {
                    let container = self.slots[id].container.clone();
                    crate::workers::spawn(move || {
                        let left = container.pids();
                        if !left.is_empty() {
                            tracing::warn!(
                                resource = %who.resource,
                                "{} processes still ran after offline returned: {left:?}",
                                left.len()
                            );
                            resmon_metrics::global().survivors(&who, left.len() as u64);
                        }
                    });
                }
            }
            Action::Readiness { id, ready, reason } => {
                self.metrics_generation += 1;
                let v = self.core.view(id);
                tracing::info!(resource = %v.spec.name, ready, "{reason}");
                self.publish(if ready { "ready" } else { "not_ready" }, id, None, &reason);
            }
            Action::Notify(n) => {
                self.state_dirty = true;
                self.metrics_generation += 1;
                let v = self.core.view(n.id);
                tracing::info!(resource = %v.spec.name, state = %n.state, "{}", n.reason);
                let exit_code = (n.state == State::Failed)
                    .then(|| self.slots[n.id].resource.exit_code())
                    .flatten();
                self.bus
                    .publish_state(&v.spec.name, &v.spec.group, n.state, &n.reason, exit_code);
            }
        }
    }

    fn call(&mut self, id: ResId, entry: EntryPoint, seq: u64) {
        let slot = &self.slots[id];
        if entry == EntryPoint::LooksAlive && slot.cheap_looks_alive {
            let started = Instant::now();
            let alive = slot.resource.looks_alive();
            slot.timers.observe(entry.as_str(), started.elapsed());
            self.queue.push_back(Event::Returned {
                id,
                seq,
                outcome: CallOutcome::Alive(alive),
            });
            return;
        }
        let resource = slot.resource.clone();
        let lane = slot.lane.clone();
        let timers = slot.timers.clone();
        let tx = self.tx.clone();
        // Cluster mode: `online` only while the node owns the group and its
        // lease lives, checked just before the call.
        let gate = match (&self.permits, entry) {
            (Some(p), EntryPoint::Online) => {
                Some((p.clone(), self.core.view(id).spec.group.clone()))
            }
            _ => None,
        };
        let ctx = CallContext::new(
            slot.cancel.clone(),
            Arc::new(Sink {
                id,
                seq,
                tx: tx.clone(),
            }),
        );
        crate::workers::spawn(move || {
            let run = || {
                match entry {
                EntryPoint::Online => match &gate {
                    Some((p, group)) if !p.allows(group, BootInstant::now()) => CallOutcome::Error(
                        format!("this node does not hold group {group:?} now (cluster): not starting it"),
                    ),
                    _ => completion(resource.online(&ctx)),
                },
                EntryPoint::Offline => completion(resource.offline(&ctx)),
                EntryPoint::LooksAlive => CallOutcome::Alive(resource.looks_alive()),
                EntryPoint::IsAlive => CallOutcome::Alive(resource.is_alive()),
                other => CallOutcome::Error(format!("{other} is not called this way")),
            }
            };
            let outcome = lane.run(entry, seq, || {
                let started = Instant::now();
                let out = std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
                    CallOutcome::Error(format!("{entry} panicked: {}", panic_text(p)))
                });
                timers.observe(entry.as_str(), started.elapsed());
                out
            });
            // A cancelled check never started: the core forgot it already.
            if let Some(outcome) = outcome {
                let _ = tx.send(Msg::Event(Event::Returned { id, seq, outcome }));
            }
        });
    }
}

/// A call into a type that may panic: a panic is its failure.
fn guarded<T>(call: impl FnOnce() -> Result<T, ControlError>) -> Result<T, ControlError> {
    std::panic::catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|p| Err(ControlError::Failed(format!("panicked: {}", panic_text(p)))))
}

/// A type's answer to a control code, with the monitor's default handling
/// and the output limit applied.
fn control_result(
    out: Result<Vec<u8>, ControlError>,
    default: Option<Vec<u8>>,
    code: u32,
    what: &str,
) -> Result<Vec<u8>, OpError> {
    let out = match out {
        Ok(o) => o,
        Err(ControlError::NotSupported) => default.ok_or_else(|| {
            OpError::BadRequest(format!("control code {code} is not supported by {what}"))
        })?,
        Err(ControlError::InvalidInput(m)) => {
            return Err(OpError::BadRequest(format!(
                "control code {code} of {what}: invalid input: {m}"
            )))
        }
        Err(ControlError::Failed(m)) => {
            return Err(OpError::Failed(format!(
                "control code {code} of {what}: {m}"
            )))
        }
    };
    if out.len() > control::MAX_OUTPUT {
        return Err(OpError::Failed(format!(
            "control code {code} of {what} returned {} bytes, more than the {} allowed",
            out.len(),
            control::MAX_OUTPUT
        )));
    }
    Ok(out)
}

fn completion(r: Result<Completion, ResourceError>) -> CallOutcome {
    match r {
        Ok(Completion::Done) => CallOutcome::Done,
        Ok(Completion::Pending) => CallOutcome::Pending,
        Err(e) => CallOutcome::Error(e.0),
    }
}

/// Health-check wake-ups are batched on a grid of this size: 1,000 health
/// checks a second spread over the second cost 100 wake-ups instead of
/// 1,000, and none is late by more than this. Other deadlines (a stop's
/// `pending_timeout`, a terminate's, a restart) are not rounded.
const TIMER_GRID: std::time::Duration = std::time::Duration::from_millis(10);

/// `deadline` rounded up to the next point of the grid that starts at `epoch`.
fn coalesce(epoch: Instant, deadline: Instant) -> Instant {
    let grid = TIMER_GRID.as_nanos();
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let rounded = since.div_ceil(grid) * grid;
    epoch + std::time::Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub fn no_such(name: &str) -> String {
    format!("no resource named {name:?} (see `resmon status` for the names)")
}

#[cfg(test)]
mod tests {
    //! The concurrency rules of the contract, through the real driver and a
    //! resource type that records how its entry points overlap.

    use super::*;
    use resmon_contract::Policy;
    use resmon_task::Containers;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn deadlines_round_up_to_the_grid() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(coalesce(epoch, epoch), epoch);
        assert_eq!(coalesce(epoch, epoch + ms(1)), epoch + ms(10));
        assert_eq!(coalesce(epoch, epoch + ms(10)), epoch + ms(10));
        assert_eq!(
            coalesce(epoch, epoch + ms(10) + Duration::from_nanos(1)),
            epoch + ms(20)
        );
    }

    /// How `online` behaves, per call number.
    #[derive(Clone, Copy)]
    enum Online {
        /// Ignores "should terminate" until `release` is set.
        Stubborn,
        /// Reports three checkpoints, then waits for "should terminate".
        Cancellable,
        /// Returns pending; a thread reports progress and completes.
        Pending,
        Done,
    }

    #[derive(Default)]
    struct Record {
        active: AtomicUsize,
        max_active: AtomicUsize,
        /// Serialized calls seen while `terminate` ran.
        overlapped_terminate: AtomicBool,
        in_terminate: AtomicBool,
        online_calls: AtomicUsize,
        saw_cancel: AtomicBool,
        release: AtomicBool,
        log: Mutex<Vec<String>>,
    }

    struct Recorder {
        rec: Arc<Record>,
        script: Vec<Online>,
    }

    impl Recorder {
        fn enter(&self, what: &str) {
            let n = self.rec.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.rec.max_active.fetch_max(n, Ordering::SeqCst);
            self.rec.log.lock().unwrap().push(format!("enter {what}"));
        }
        fn exit(&self, what: &str) {
            self.rec.log.lock().unwrap().push(format!("exit {what}"));
            self.rec.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Polls a condition for up to 10 s (the resource's own wait loop).
    fn until(cond: impl Fn() -> bool) -> bool {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    impl Resource for Recorder {
        fn online(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
            let n = self.rec.online_calls.fetch_add(1, Ordering::SeqCst);
            self.enter("online");
            let out = match self.script[n.min(self.script.len() - 1)] {
                Online::Stubborn => {
                    until(|| self.rec.release.load(Ordering::SeqCst));
                    Err(ResourceError::new("released"))
                }
                Online::Cancellable => {
                    for cp in 1..=3 {
                        ctx.checkpoint(cp);
                    }
                    let cancelled = until(|| ctx.should_terminate());
                    // The flag is raised before terminate is called: wait
                    // for terminate itself to be running beside this call
                    // (it holds on until we have seen the flag).
                    let overlapped = until(|| self.rec.in_terminate.load(Ordering::SeqCst));
                    self.rec
                        .overlapped_terminate
                        .store(overlapped, Ordering::SeqCst);
                    self.rec.saw_cancel.store(cancelled, Ordering::SeqCst);
                    Err(ResourceError::new("cancelled"))
                }
                Online::Pending => {
                    let ctx = ctx.clone();
                    std::thread::spawn(move || {
                        ctx.checkpoint(1);
                        ctx.complete(Ok(()));
                    });
                    Ok(Completion::Pending)
                }
                Online::Done => Ok(Completion::Done),
            };
            self.exit("online");
            out
        }
        fn offline(&self, _ctx: &CallContext) -> Result<Completion, ResourceError> {
            self.enter("offline");
            self.exit("offline");
            Ok(Completion::Done)
        }
        fn terminate(&self, _exit_code: i32) {
            // Runs beside the in-flight call: hold it open until that call
            // has seen the flag, to prove the overlap.
            self.rec.in_terminate.store(true, Ordering::SeqCst);
            if matches!(self.script[0], Online::Cancellable) {
                until(|| {
                    self.rec.saw_cancel.load(Ordering::SeqCst)
                        || self.rec.active.load(Ordering::SeqCst) == 0
                });
            }
            self.rec.in_terminate.store(false, Ordering::SeqCst);
        }
        fn looks_alive(&self) -> bool {
            self.enter("looks_alive");
            self.exit("looks_alive");
            true
        }
        fn is_alive(&self) -> bool {
            self.enter("is_alive");
            self.exit("is_alive");
            true
        }
    }

    struct Harness {
        driver: Driver,
        rx: mpsc::UnboundedReceiver<Msg>,
        rec: Arc<Record>,
        bus: EventBus,
    }

    /// The type whose `open` gives the recorder.
    struct RecorderType {
        rec: Arc<Record>,
        script: Vec<Online>,
    }

    impl ResourceType for RecorderType {
        fn name(&self) -> &str {
            "recorder"
        }

        fn validate(&self, _type_name: &str, _params: &serde_json::Value) -> Vec<String> {
            Vec::new()
        }

        fn open(
            &self,
            _ctx: resmon_contract::OpenContext,
        ) -> Result<Box<dyn Resource>, ResourceError> {
            Ok(Box::new(Recorder {
                rec: self.rec.clone(),
                script: self.script.clone(),
            }))
        }
    }

    fn harness(policy: Policy, script: Vec<Online>) -> Harness {
        let rec = Arc::new(Record::default());
        let config = ResourceConfig {
            name: "r".into(),
            type_name: "recorder".into(),
            group: "g".into(),
            depends_on: vec![],
            autostart: false,
            policy,
            params: serde_json::Value::Null,
            log: Default::default(),
            limits: Default::default(),
        };
        let core = Monitor::new(vec![crate::handoff::spec_of(&config)], Instant::now()).unwrap();
        let types: Vec<Arc<dyn ResourceType>> = vec![Arc::new(RecorderType {
            rec: rec.clone(),
            script,
        })];
        let containers = Arc::new(Containers::process_groups());
        let slot = Slot::new(&config, &types, &containers);
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = EventBus::new();
        Harness {
            driver: Driver::new(core, vec![slot], types, tx, bus.clone(), containers),
            rx,
            rec,
            bus,
        }
    }

    impl Harness {
        async fn run_until(&mut self, what: &str, cond: impl Fn(&Driver) -> bool) {
            let end = Instant::now() + Duration::from_secs(10);
            while !cond(&self.driver) {
                assert!(Instant::now() < end, "timed out waiting for {what}");
                let _ = tokio::time::timeout_at(end, self.driver.turn(&mut self.rx)).await;
            }
        }

        fn state(&self) -> State {
            self.driver.core.state(0)
        }

        fn reasons(&self) -> Vec<String> {
            self.bus
                .subscribe()
                .0
                .into_iter()
                .map(|e| e.reason)
                .collect()
        }
    }

    #[tokio::test]
    async fn terminate_runs_beside_an_online_and_cancels_it() {
        let mut h = harness(Policy::default(), vec![Online::Cancellable]);
        h.driver.feed(Event::Command(0, Command::Online));
        let rec = h.rec.clone();
        h.run_until("online to be in flight", |_| {
            rec.active.load(Ordering::SeqCst) == 1
        })
        .await;
        h.driver
            .feed(Event::Command(0, Command::Terminate { exit_code: 4 }));
        h.run_until("terminated", |d| d.core.all_down()).await;
        assert!(
            h.rec.saw_cancel.load(Ordering::SeqCst),
            "online saw should_terminate"
        );
        assert!(
            h.rec.overlapped_terminate.load(Ordering::SeqCst),
            "terminate ran while online was in flight"
        );
        assert_eq!(h.state(), State::Offline);
        assert!(h.reasons().iter().any(|r| r.contains("exit code 4")));
    }

    #[tokio::test]
    async fn a_restart_waits_for_the_cancelled_call_to_leave_its_lane() {
        let p = Policy {
            pending_timeout: Duration::from_millis(50),
            restart_delay: Duration::ZERO,
            terminate_timeout: Duration::from_secs(5),
            ..Policy::default()
        };
        let mut h = harness(p, vec![Online::Stubborn, Online::Done]);
        h.driver.feed(Event::Command(0, Command::Online));
        // The first online ignores the flag and runs past pending_timeout:
        // it is terminated and a restart is called while it still runs.
        let rec = h.rec.clone();
        h.run_until("the restart to be called", |d| {
            d.core.view(0).restarts == 1 && rec.active.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(
            h.rec.online_calls.load(Ordering::SeqCst),
            1,
            "second online waits for the lane"
        );
        // `calls` shows both: the restart, and the call it waits behind.
        let calls: Vec<String> = h.driver.calls().into_iter().map(|c| c.entry).collect();
        assert_eq!(calls, ["online (abandoned)", "online"], "{calls:?}");
        h.rec.release.store(true, Ordering::SeqCst);
        h.run_until("online", |d| d.core.state(0) == State::Online)
            .await;
        assert_eq!(
            h.rec.max_active.load(Ordering::SeqCst),
            1,
            "{:?}",
            h.rec.log.lock().unwrap()
        );
        assert_eq!(h.rec.online_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn pending_online_completes_through_its_context_and_checks_never_overlap() {
        let p = Policy {
            looks_alive_interval: Duration::from_millis(5),
            is_alive_interval: Duration::from_millis(7),
            ..Policy::default()
        };
        let mut h = harness(p, vec![Online::Pending]);
        h.driver.feed(Event::Command(0, Command::Online));
        h.run_until("online", |d| d.core.state(0) == State::Online)
            .await;
        let rec = h.rec.clone();
        h.run_until("many health checks", |_| {
            let l = rec.log.lock().unwrap();
            l.iter().filter(|e| *e == "enter is_alive").count() >= 5
                && l.iter().filter(|e| *e == "enter looks_alive").count() >= 5
        })
        .await;
        assert_eq!(h.rec.max_active.load(Ordering::SeqCst), 1);
        h.driver.feed(Event::Command(0, Command::Offline));
        h.run_until("offline", |d| d.core.state(0) == State::Offline)
            .await;
    }
}
