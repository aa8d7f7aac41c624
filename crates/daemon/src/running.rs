//! The monitor while it runs: one value that owns the driver and what the
//! event loop waits on, and the loop's steps by name. [`Running::turn`]
//! waits for the next thing to happen (a signal, a reload request, a
//! handed-off job's report, the driver's messages and timers, the state
//! write) and deals with it; nothing in a turn waits for a resource's code.

use crate::api::ReloadRequest;
use crate::driver::{Driver, Msg};
use crate::events::EventBus;
use crate::handoff::{Handoff, Job};
use crate::state::StateDir;
use crate::workers;
use resmon_core::SaveSchedule;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

/// How long after a change the state is written.
const STATE_SETTLE: Duration = Duration::from_millis(20);

/// What woke the loop.
enum Woke {
    Signal(&'static str),
    Reload(Option<ReloadRequest>),
    Job(Box<Job>),
    Ping,
    Upgrade(crate::api::UpgradeRequest),
    Other,
}

pub struct Running {
    pub driver: Driver,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    pub bus: EventBus,
    state_dir: Arc<StateDir>,
    handoff: Handoff,
    jobs: mpsc::UnboundedReceiver<Job>,
    reloads: mpsc::UnboundedReceiver<ReloadRequest>,
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
    /// When to write the state (the core's rule) and the write in flight.
    schedule: SaveSchedule,
    writing: Option<workers::Handle<()>>,
    /// Writes are numbered, so a late one never replaces a newer one.
    seq: u64,
    /// Set by the first stop signal: what was wanted before it, which is
    /// what the next start brings back.
    stopping: Option<Vec<bool>>,
    /// systemd's notify socket, when it gave one.
    systemd: crate::sd_notify::SdNotify,
    /// When the next `WATCHDOG=1` (and `STATUS=` update) is due.
    next_ping: Option<tokio::time::Instant>,
    /// A reload told to systemd, whose `READY=1` is owed.
    reloading: bool,
    upgrades: mpsc::UnboundedReceiver<crate::api::UpgradeRequest>,
    /// An upgrade accepted: the loop ends, and the monitor runs its binary
    /// again (see [`crate::upgrade`]).
    upgrade: Option<crate::api::UpgradeRequest>,
}

/// How often `STATUS=` is brought up to date at most, without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(1);

impl Running {
    pub fn new(
        driver: Driver,
        rx: mpsc::UnboundedReceiver<Msg>,
        bus: EventBus,
        state_dir: Arc<StateDir>,
        (handoff, jobs): (Handoff, mpsc::UnboundedReceiver<Job>),
        (reloads, upgrades): (
            mpsc::UnboundedReceiver<ReloadRequest>,
            mpsc::UnboundedReceiver<crate::api::UpgradeRequest>,
        ),
        signals: crate::Signals,
    ) -> Running {
        let mut r = Running {
            driver,
            rx,
            bus,
            state_dir,
            handoff,
            jobs,
            reloads,
            sigterm: signals.term,
            sigint: signals.int,
            sighup: signals.hup,
            schedule: SaveSchedule::new(STATE_SETTLE),
            writing: None,
            seq: 0,
            stopping: None,
            systemd: crate::sd_notify::SdNotify::from_env(),
            next_ping: None,
            reloading: false,
            upgrades,
            upgrade: None,
        };
        if r.systemd.is_on() {
            r.next_ping = Some(tokio::time::Instant::now());
        }
        r.schedule.started();
        r.writing = Some(r.save(None));
        r
    }

    /// Whether the monitor is done: stopping, every resource down, and
    /// nothing handed off still running.
    pub fn finished(&self) -> bool {
        self.upgrade.is_some()
            || (self.stopping.is_some() && self.driver.all_down() && self.handoff.idle())
    }

    /// The upgrade the loop ended for, if it did.
    pub fn take_upgrade(&mut self) -> Option<crate::api::UpgradeRequest> {
        self.upgrade.take()
    }

    /// An upgrade asked for: taken when nothing is under way that the new
    /// process could not pick up.
    fn upgrade(&mut self, req: crate::api::UpgradeRequest) {
        let refused = if self.stopping.is_some() {
            Some("the monitor is stopping")
        } else if !self.driver.is_started() {
            Some("the monitor is still starting (opening and adopting its resources)")
        } else if !self.handoff.idle() || self.reloading {
            Some("a reload is being applied; upgrade once it is")
        } else {
            None
        };
        if let Some(why) = refused {
            let _ = req.reply.send(Err(format!("not upgrading now: {why}")));
            return;
        }
        self.systemd.reloading();
        self.upgrade = Some(req);
    }

    /// Writes the state as everything runs now, and waits for it.
    pub async fn save_running(&mut self) {
        let _ = self.save(None).await;
    }

    /// One turn of the event loop.
    pub async fn turn(&mut self) {
        self.schedule_save();
        let save_timer = self.schedule.wake_at(self.stopping.is_some());
        let ping = self.next_ping;
        let woke = tokio::select! {
            biased;
            _ = self.sigterm.recv() => Woke::Signal("SIGTERM"),
            _ = self.sigint.recv() => Woke::Signal("SIGINT"),
            _ = self.sighup.recv() => Woke::Reload(None),
            Some(reply) = self.reloads.recv() => Woke::Reload(Some(reply)),
            Some(job) = self.jobs.recv() => Woke::Job(Box::new(job)),
            Some(req) = self.upgrades.recv() => Woke::Upgrade(req),
            _ = self.driver.turn(&mut self.rx) => Woke::Other,
            _ = async {
                match self.writing.as_mut() {
                    Some(w) => { let _ = w.await; }
                    None => std::future::pending::<()>().await,
                }
            } => Woke::Other,
            _ = async {
                match save_timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => Woke::Other,
            _ = async {
                match ping {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => Woke::Ping,
        };
        match woke {
            Woke::Signal(signal) => self.stop(signal),
            Woke::Reload(reply) => {
                if self.stopping.is_none() && !self.reloading && self.systemd.is_ready() {
                    self.systemd.reloading();
                    self.reloading = true;
                }
                self.handoff.request_reload(reply, self.stopping.is_some())
            }
            Woke::Job(job) => {
                self.handoff.finished(*job, &mut self.driver);
                if self.reloading && self.handoff.idle() {
                    self.reloading = false;
                    self.systemd.reloaded();
                }
            }
            Woke::Ping => self.ping(),
            Woke::Upgrade(req) => self.upgrade(req),
            Woke::Other => {}
        }
        if !self.systemd.is_ready() && self.driver.is_started() && self.stopping.is_none() {
            self.systemd.ready(self.driver.counts());
        }
    }

    /// The watchdog's ping, from the loop itself, and the status with it.
    fn ping(&mut self) {
        if self.systemd.ping_every().is_some() {
            self.systemd.watchdog();
        }
        if self.systemd.is_ready() && self.stopping.is_none() {
            self.systemd.status(self.driver.counts());
        }
        let every = self.systemd.ping_every().unwrap_or(STATUS_EVERY);
        self.next_ping = Some(tokio::time::Instant::now() + every);
    }

    /// Ends a finished write, and starts one when the schedule says so.
    fn schedule_save(&mut self) {
        if self.writing.as_ref().is_some_and(|w| w.is_finished()) {
            self.writing = None;
            self.schedule.finished();
        }
        let now = tokio::time::Instant::now();
        if self.driver.state_dirty() {
            self.schedule.changed(now);
        }
        if self.schedule.due(now, self.stopping.is_some()) {
            self.writing = Some(self.save(None));
        }
    }

    /// A stop signal: the first takes everything offline (and kills what
    /// the opens out run), a later one terminates everything at once.
    fn stop(&mut self, signal: &str) {
        let first = self.stopping.is_none();
        if first {
            self.systemd.stopping();
            // What was wanted before the stop is what the next start brings back.
            self.save(None);
            self.stopping = Some(self.driver.wanted());
        }
        crate::stop(&mut self.driver, first, &self.bus, signal);
        self.driver.kill_opens();
        self.handoff.stop();
    }

    /// Writes the state off the loop: as it is now, or (`wanted`) as a
    /// clean stop leaves it.
    fn save(&mut self, wanted: Option<&[bool]>) -> workers::Handle<()> {
        self.seq += 1;
        let (snapshot, dir, n) = (
            self.driver.snapshot(wanted),
            self.state_dir.clone(),
            self.seq,
        );
        let bus = self.bus.clone();
        workers::spawn(move || match dir.save_in_order(n, &snapshot) {
            Some(Some(why)) => bus.publish("monitor", None, None, None, why),
            Some(None) => {
                tracing::info!("the state is saved again in {}", dir.path().display());
                bus.publish("monitor", None, None, None, "the state is saved again");
            }
            None => {}
        })
    }

    /// The last write: everything is down, and the state says what was
    /// wanted before the stop.
    pub async fn save_final(&mut self) {
        let wanted = self.stopping.clone();
        let _ = self.save(wanted.as_deref()).await;
    }
}
