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
    /// The last turn handled a due deadline without waiting.
    just_ticked: bool,
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
            just_ticked: false,
        }
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
            _ = sleep_until(deadline.map(|d| coalesce(self.epoch.0, d))) => self.feed(Event::Tick),
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

/// Timer wake-ups are batched on a grid of this size: 1,000 health checks a
/// second spread over the second cost 100 wake-ups instead of 1,000, and no
/// deadline is late by more than this.
const TIMER_GRID: std::time::Duration = std::time::Duration::from_millis(10);

/// `deadline` rounded up to the next point of the grid that starts at `epoch`.
fn coalesce(epoch: Instant, deadline: Instant) -> Instant {
    let grid = TIMER_GRID.as_nanos();
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let rounded = since.div_ceil(grid) * grid;
    epoch + std::time::Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

async fn sleep_until(deadline: Option<Instant>) {
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
    use resmon_core::ResourceSpec;
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
                    self.rec.saw_cancel.store(cancelled, Ordering::SeqCst);
                    if self.rec.in_terminate.load(Ordering::SeqCst) {
                        self.rec.overlapped_terminate.store(true, Ordering::SeqCst);
                    }
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

    fn harness(policy: Policy, script: Vec<Online>) -> Harness {
        let rec = Arc::new(Record::default());
        let spec = ResourceSpec {
            name: "r".into(),
            group: "g".into(),
            depends_on: vec![],
            policy,
        };
        let core = Monitor::new(vec![spec], Instant::now()).unwrap();
        let container = Containers::process_groups().create("r").unwrap();
        let slot = Slot {
            name: "r".into(),
            type_name: "recorder".into(),
            resource: Arc::new(Recorder {
                rec: rec.clone(),
                script,
            }),
            container,
            lane: Arc::new(Mutex::new(())),
            cancel: Arc::new(AtomicBool::new(false)),
            cheap_looks_alive: false,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = EventBus::new();
        Harness {
            driver: Driver::new(core, vec![slot], tx, bus.clone()),
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
