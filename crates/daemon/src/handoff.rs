//! The work the event loop hands off: a reload (reading the config file,
//! which may run agents' `meta-data`, and opening the resources it adds,
//! which may run `validate-all` and kill what an earlier run left), a
//! replaced resource's close and reopen, and a removed resource's release.
//! Each runs as a task of its own and reports back as a [`Job`]; the loop
//! only decides and applies, so status, health checks and every deadline go
//! on while an agent takes seconds to answer.
//!
//! Reloads are one at a time: requests that arrive while one runs wait and
//! are answered by the next, which reads the file again.

use crate::access::Access;
use crate::api::{ReloadRefused, ReloadReport, ReloadRequest};
use crate::config::{Config, ResourceConfig};
use crate::driver::{Driver, Msg, Slot};
use crate::events::EventBus;
use crate::{kill_and_wait, load_config, open_failed, open_slot};
use resmon_contract::ResourceType;
use resmon_core::{Command, Event, ResId, ResourceSpec};
use resmon_task::Containers;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// What a handed-off task reports.
pub enum Job {
    /// A reload read the config file.
    Loaded(Result<Config, String>),
    /// A reload opened the resources it adds (in the order of `plan.added`).
    Opened {
        new: Config,
        plan: Plan,
        slots: Vec<(Slot, Option<String>)>,
    },
    /// A resource whose type or parameters changed was closed and opened
    /// again with its new config.
    Replaced {
        done: Replacing,
        slot: Slot,
        failed: Option<String>,
    },
    /// A removed resource was closed and its container removed.
    Released(ResId),
    /// What a reload opened when the monitor was already stopping was
    /// closed and its containers removed.
    Discarded,
}

/// A resource being stopped to be opened anew, and what was wanted
/// online before, which comes back once it is.
pub struct Replacing {
    id: ResId,
    wanted_before: Vec<bool>,
}

/// What a reload will do, decided once the new config is read.
pub struct Plan {
    report: ReloadReport,
    /// The resources it adds, with the ids the core will give them.
    added: Vec<(ResId, ResourceConfig)>,
}

/// What the loop needs to hand work off, and the work in flight.
pub struct Handoff {
    pub config: Config,
    types: Vec<Arc<dyn ResourceType>>,
    containers: Arc<Containers>,
    tx: mpsc::UnboundedSender<Msg>,
    bus: EventBus,
    access: Arc<RwLock<Arc<Access>>>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Handed-off tasks that have not reported yet.
    in_flight: usize,
    /// The replies the running reload owes; `None` is a SIGHUP's.
    reloading: Option<Vec<Option<ReloadRequest>>>,
    /// Requests that came while a reload ran: the next one answers them.
    queued: Vec<Option<ReloadRequest>>,
    replacing: Vec<Replacing>,
    /// Replaced resources being closed and opened anew.
    reopening: HashSet<ResId>,
    /// The names of the resources being opened, added or replaced: a stop
    /// kills what their opens run (an agent's validate-all), so that it
    /// does not wait out their timeouts.
    opening: HashSet<String>,
    /// Removed resources whose container is released, and those being
    /// released: a resource added back under their name must wait for it.
    released: HashSet<ResId>,
    releasing: HashSet<ResId>,
    retired_pending: bool,
    /// The monitor is stopping: a reload that ends now adds nothing.
    stopping: bool,
}

impl Handoff {
    pub fn new(
        config: Config,
        types: Vec<Arc<dyn ResourceType>>,
        containers: Arc<Containers>,
        tx: mpsc::UnboundedSender<Msg>,
        bus: EventBus,
        access: Arc<RwLock<Arc<Access>>>,
    ) -> (Handoff, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let h = Handoff {
            config,
            types,
            containers,
            tx,
            bus,
            access,
            jobs,
            in_flight: 0,
            reloading: None,
            queued: Vec::new(),
            replacing: Vec::new(),
            reopening: HashSet::new(),
            opening: HashSet::new(),
            released: HashSet::new(),
            releasing: HashSet::new(),
            retired_pending: false,
            stopping: false,
        };
        (h, rx)
    }

    /// Whether nothing handed off is still running.
    pub fn idle(&self) -> bool {
        self.in_flight == 0
    }

    fn spawn(&mut self, work: impl std::future::Future<Output = Job> + Send + 'static) {
        self.in_flight += 1;
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let _ = jobs.send(work.await);
        });
    }

    /// A reload was asked for (`reply` is `None` for SIGHUP). Refused once
    /// the monitor is stopping; else it starts now, or after the one running.
    pub fn request_reload(&mut self, reply: Option<ReloadRequest>, stopping: bool) {
        if stopping {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ReloadRefused::Stopping));
            }
            return;
        }
        self.queued.push(reply);
        self.start_reload();
    }

    fn start_reload(&mut self) {
        if self.reloading.is_some() || self.queued.is_empty() {
            return;
        }
        // Asked for before the stop, while another reload ran: answered
        // now, not read and thrown away.
        if self.stopping {
            for reply in std::mem::take(&mut self.queued).into_iter().flatten() {
                let _ = reply.send(Err(ReloadRefused::Stopping));
            }
            return;
        }
        self.reloading = Some(std::mem::take(&mut self.queued));
        let (file, types) = (self.config.file.clone(), self.types.clone());
        self.spawn(async move {
            Job::Loaded(load_config(file, types).await.map_err(|e| e.to_string()))
        });
    }

    /// The monitor is stopping: what the opens in flight run is killed, so
    /// that they end now (failed) instead of at their timeouts.
    pub fn stop(&mut self) {
        self.stopping = true;
        for name in &self.opening {
            if let Ok(c) = self.containers.adopt(name) {
                if let Err(e) = c.kill_all() {
                    tracing::warn!(resource = %name, "killing what its open runs: {e}");
                }
            }
        }
    }

    /// Applies what a handed-off task reports.
    pub fn finished(&mut self, job: Job, driver: &mut Driver) {
        self.in_flight -= 1;
        match job {
            Job::Loaded(Err(e)) => self.end_reload(Err(ReloadRefused::Invalid(e))),
            Job::Loaded(Ok(_)) if self.stopping => self.end_reload(Err(ReloadRefused::Stopping)),
            Job::Loaded(Ok(new)) => match self.plan(&new, driver) {
                Err(e) => self.end_reload(Err(ReloadRefused::Invalid(e))),
                Ok(plan) => self.open_added(new, plan),
            },
            Job::Opened { new, plan, slots } => {
                for (_, r) in &plan.added {
                    self.opening.remove(&r.name);
                }
                if self.stopping {
                    self.discard(slots);
                    self.end_reload(Err(ReloadRefused::Stopping));
                    return;
                }
                let result = self.apply(new, plan, slots, driver);
                self.end_reload(result.map_err(ReloadRefused::Invalid));
            }
            Job::Discarded => {}
            Job::Replaced { done, slot, failed } => self.reopened(done, slot, failed, driver),
            Job::Released(id) => {
                self.releasing.remove(&id);
                self.released.insert(id);
                driver.forget_metrics(id);
            }
        }
    }

    /// Answers the running reload's requests, and starts the next.
    fn end_reload(&mut self, result: Result<ReloadReport, ReloadRefused>) {
        self.retired_pending |= result.as_ref().is_ok_and(|r| !r.removed.is_empty());
        match &result {
            Ok(r) => self.bus.publish(
                "monitor",
                None,
                None,
                None,
                format!(
                    "reloaded {}: added {:?}, removed {:?}, restarted {:?}, updated {:?}{}",
                    self.config.file.display(),
                    r.added,
                    r.removed,
                    r.restarted,
                    r.updated,
                    r.notes.iter().map(|n| format!("; {n}")).collect::<String>()
                ),
            ),
            Err(ReloadRefused::Invalid(e)) => self.bus.publish(
                "monitor",
                None,
                None,
                None,
                format!("reload refused; the running configuration stays: {e}"),
            ),
            Err(ReloadRefused::Stopping) => {}
        }
        for reply in self.reloading.take().into_iter().flatten().flatten() {
            let _ = reply.send(result.clone());
        }
        self.start_reload();
    }

    /// What the new config changes, or why it cannot be taken now.
    fn plan(&self, new: &Config, driver: &Driver) -> Result<Plan, String> {
        let config = &self.config;
        if config.cluster.is_some() || new.cluster.is_some() {
            let shape = |c: &Config| {
                c.resources
                    .iter()
                    .map(|r| {
                        (
                            r.name.clone(),
                            r.group.clone(),
                            r.type_name.clone(),
                            r.params.clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            if config.cluster != new.cluster
                || config.groups != new.groups
                || shape(config) != shape(new)
            {
                return Err(
                    "in cluster mode, [cluster], [group.NAME] and the resources and their groups, types and parameters change only at the next start (restart the node; its groups fail over meanwhile)"
                        .into(),
                );
            }
        }
        let mut report = ReloadReport::default();
        let m = (&config.monitor, &new.monitor);
        if m.0.socket != m.1.socket || m.0.state_dir != m.1.state_dir || m.0.cgroups != m.1.cgroups
        {
            report
                .notes
                .push("[monitor] changes take effect at the next start".into());
        }
        if config.api != new.api {
            report
                .notes
                .push("[api] tcp changes take effect at the next start; tokens apply now".into());
        }
        let old: std::collections::HashMap<&str, &ResourceConfig> = config
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        let mut added = Vec::new();
        for r in &new.resources {
            match old.get(r.name.as_str()) {
                None => added.push(r),
                Some(o) if o.type_name != r.type_name || o.params != r.params => {
                    report.restarted.push(r.name.clone())
                }
                Some(o)
                    if o.policy != r.policy
                        || o.group != r.group
                        || o.depends_on != r.depends_on
                        || o.autostart != r.autostart =>
                {
                    report.updated.push(r.name.clone())
                }
                Some(_) => {}
            }
        }
        let names: HashSet<&str> = new.resources.iter().map(|r| r.name.as_str()).collect();
        report.removed = config
            .resources
            .iter()
            .filter(|r| !names.contains(r.name.as_str()))
            .map(|r| r.name.clone())
            .collect();
        // A resource removed by an earlier reload keeps its container until
        // it is down and released: one added back under its name would
        // share it, and the old one's stop and cleanup would kill the new one.
        let stopping: Vec<&str> = added
            .iter()
            .filter(|r| {
                driver.slots().iter().enumerate().any(|(id, s)| {
                    s.name == r.name && driver.is_retired(id) && !self.released.contains(&id)
                })
            })
            .map(|r| r.name.as_str())
            .collect();
        if !stopping.is_empty() {
            return Err(format!(
                "{}: removed by an earlier reload and still stopping; reload again once it is gone (its stop takes at most its pending_timeout and terminate_timeout)",
                stopping
                    .iter()
                    .map(|n| format!("resource {n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // The core gives added resources the next ids, in config order;
        // nothing else adds any while a reload runs.
        let first = driver.slots().len();
        Ok(Plan {
            report,
            added: added
                .into_iter()
                .enumerate()
                .map(|(k, r)| (first + k, r.clone()))
                .collect(),
        })
    }

    /// Opens the resources a reload adds, off the loop. One that does not
    /// open is added all the same, failed with the reason.
    fn open_added(&mut self, new: Config, plan: Plan) {
        self.opening
            .extend(plan.added.iter().map(|(_, r)| r.name.clone()));
        let (types, containers) = (self.types.clone(), self.containers.clone());
        let (tx, bus) = (self.tx.clone(), self.bus.clone());
        self.spawn(async move {
            let mut slots = Vec::new();
            for (id, r) in &plan.added {
                let ty = type_of(&types, r);
                slots.push(open_slot(*id, r, &ty, &containers, true, &tx, &bus).await);
            }
            Job::Opened { new, plan, slots }
        });
    }

    /// Closes what a reload opened that will not be added, and removes
    /// its containers.
    fn discard(&mut self, slots: Vec<(Slot, Option<String>)>) {
        self.spawn(async move {
            for (slot, _) in slots {
                let resource = slot.resource.clone();
                let _ = crate::workers::spawn(move || resource.close()).await;
                kill_and_wait(&slot.container).await;
                let _ = slot.container.remove();
            }
            Job::Discarded
        });
    }

    /// Makes the new config the running one.
    fn apply(
        &mut self,
        new: Config,
        plan: Plan,
        slots: Vec<(Slot, Option<String>)>,
        driver: &mut Driver,
    ) -> Result<ReloadReport, String> {
        let Plan { mut report, added } = plan;
        let (added_ids, _retired) =
            match driver.reconfigure(new.resources.iter().map(spec_of).collect()) {
                Ok(done) => done,
                Err(e) => {
                    for (s, _) in &slots {
                        let _ = s.container.remove();
                    }
                    return Err(e.to_string());
                }
            };
        for ((id, (slot, failed)), (_, r)) in added_ids.into_iter().zip(slots).zip(&added) {
            driver.push_slot(slot);
            report.added.push(r.name.clone());
            match failed {
                Some(why) => open_failed(driver, &self.bus, id, why, r.autostart),
                None if r.autostart => driver.feed(Event::Command(id, Command::Online)),
                None => {}
            }
        }
        for name in &report.restarted {
            if let Some(id) = driver.id(name) {
                let wanted_before = driver.wanted();
                driver.feed(Event::Command(id, Command::Offline));
                self.replacing.push(Replacing { id, wanted_before });
            }
        }
        *self.access.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Access::new(new.access.clone()));
        self.config = new;
        Ok(report)
    }

    /// Hands off what is ready: a replaced resource that is down is closed
    /// and opened with its new config; a removed one that is down is closed
    /// and its container released. Call it on every turn of the loop.
    pub fn step(&mut self, driver: &Driver) {
        let mut i = 0;
        while i < self.replacing.len() {
            let id = self.replacing[i].id;
            if !driver.is_settled_down(id) {
                i += 1;
                continue;
            }
            let done = self.replacing.swap_remove(i);
            self.reopening.insert(id);
            self.opening.insert(driver.slots()[id].name.clone());
            let name = &driver.slots()[id].name;
            let Some(r) = self
                .config
                .resources
                .iter()
                .find(|r| &r.name == name)
                .cloned()
            else {
                continue;
            };
            let ty = type_of(&self.types, &r);
            let old = driver.slots()[id].resource.clone();
            let (containers, tx, bus) =
                (self.containers.clone(), self.tx.clone(), self.bus.clone());
            self.spawn(async move {
                let _ = crate::workers::spawn(move || old.close()).await;
                let (slot, failed) = open_slot(id, &r, &ty, &containers, true, &tx, &bus).await;
                Job::Replaced { done, slot, failed }
            });
        }
        if !self.retired_pending {
            return;
        }
        let mut pending = false;
        for id in 0..driver.slots().len() {
            if self.released.contains(&id) || self.releasing.contains(&id) || !driver.is_retired(id)
            {
                continue;
            }
            // Not while it is being opened anew: its new self is released
            // once it is in place.
            if !driver.is_settled_down(id) || self.reopening.contains(&id) {
                pending = true;
                continue;
            }
            self.releasing.insert(id);
            let slot = &driver.slots()[id];
            let (resource, container) = (slot.resource.clone(), slot.container.clone());
            self.spawn(async move {
                let _ = crate::workers::spawn(move || resource.close()).await;
                kill_and_wait(&container).await;
                let _ = container.remove();
                Job::Released(id)
            });
        }
        self.retired_pending = pending;
    }

    /// A replaced resource was opened with its new config (or failed to).
    fn reopened(
        &mut self,
        done: Replacing,
        slot: Slot,
        failed: Option<String>,
        driver: &mut Driver,
    ) {
        let id = done.id;
        self.reopening.remove(&id);
        self.opening.remove(&driver.slots()[id].name);
        driver.replace_resource(id, slot.resource, slot.fingerprint);
        // One that does not open with its new config is failed, wanted
        // online as it was; the rest come back as they were.
        if let Some(why) = &failed {
            let wanted = done.wanted_before.get(id).copied().unwrap_or(false);
            open_failed(
                driver,
                &self.bus,
                id,
                format!("with its new config: {why}"),
                wanted,
            );
        }
        for (rid, wanted) in done.wanted_before.iter().enumerate() {
            if *wanted && !driver.is_retired(rid) && !(rid == id && failed.is_some()) {
                driver.feed(Event::Command(rid, Command::Online));
            }
        }
    }
}

/// The type that handles `r` (the config check made sure there is one).
pub(crate) fn type_of(
    types: &[Arc<dyn ResourceType>],
    r: &ResourceConfig,
) -> Arc<dyn ResourceType> {
    types
        .iter()
        .find(|t| t.handles(&r.type_name))
        .cloned()
        .expect("types were checked with the config")
}

/// What the core knows of a configured resource.
pub(crate) fn spec_of(r: &ResourceConfig) -> ResourceSpec {
    ResourceSpec {
        name: r.name.clone(),
        group: r.group.clone(),
        depends_on: r.depends_on.clone(),
        policy: r.policy.clone(),
    }
}
