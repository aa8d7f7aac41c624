//! Reloads: reading the config file (which may run agents' `meta-data`)
//! runs as a task of its own and reports back as a [`Job`]; the loop then
//! plans and applies the change at once. What the change sets in motion
//! (opening added resources, closing and reopening replaced ones, releasing
//! removed ones) is the core's lifecycle, carried out by the driver off the
//! loop, so status, health checks and every deadline go on while an agent
//! takes seconds to answer.
//!
//! Reloads are one at a time: requests that arrive while one runs wait and
//! are answered by the next, which reads the file again.

use crate::access::Access;
use crate::api::{ReloadRefused, ReloadReport, ReloadRequest};
use crate::config::{Config, ResourceConfig};
use crate::driver::Driver;
use crate::events::EventBus;
use crate::load_config;
use resmon_contract::ResourceType;
use resmon_core::ResourceSpec;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// What a handed-off task reports.
pub enum Job {
    /// A reload read the config file.
    Loaded(Result<Config, String>),
}

/// What the loop needs to hand work off, and the work in flight.
pub struct Handoff {
    pub config: Config,
    types: Vec<Arc<dyn ResourceType>>,
    bus: EventBus,
    access: Arc<RwLock<Arc<Access>>>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Handed-off tasks that have not reported yet.
    in_flight: usize,
    /// The replies the running reload owes; `None` is a SIGHUP's.
    reloading: Option<Vec<Option<ReloadRequest>>>,
    /// Requests that came while a reload ran: the next one answers them.
    queued: Vec<Option<ReloadRequest>>,
    /// The monitor is stopping: a reload that ends now adds nothing.
    stopping: bool,
}

impl Handoff {
    pub fn new(
        config: Config,
        types: Vec<Arc<dyn ResourceType>>,
        bus: EventBus,
        access: Arc<RwLock<Arc<Access>>>,
    ) -> (Handoff, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let h = Handoff {
            config,
            types,
            bus,
            access,
            jobs,
            in_flight: 0,
            reloading: None,
            queued: Vec::new(),
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

    /// The monitor is stopping: a reload that ends now changes nothing.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Applies what a handed-off task reports.
    pub fn finished(&mut self, job: Job, driver: &mut Driver) {
        self.in_flight -= 1;
        match job {
            Job::Loaded(Err(e)) => self.end_reload(Err(ReloadRefused::Invalid(e))),
            Job::Loaded(Ok(_)) if self.stopping => self.end_reload(Err(ReloadRefused::Stopping)),
            Job::Loaded(Ok(new)) => {
                let result = self
                    .plan(&new, driver)
                    .and_then(|report| self.apply(new, report, driver));
                self.end_reload(result.map_err(ReloadRefused::Invalid));
            }
        }
    }

    /// Answers the running reload's requests, and starts the next.
    fn end_reload(&mut self, result: Result<ReloadReport, ReloadRefused>) {
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
    fn plan(&self, new: &Config, driver: &Driver) -> Result<ReloadReport, String> {
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
                Some(o) if o.type_name != r.type_name || o.params != r.params || o.log != r.log => {
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
                    s.name == r.name && driver.is_retired(id) && !driver.is_released(id)
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
        report.added = added.iter().map(|r| r.name.clone()).collect();
        Ok(report)
    }

    /// Makes the new config the running one: the core opens what it adds,
    /// replaces what changed and releases what it removes.
    fn apply(
        &mut self,
        new: Config,
        report: ReloadReport,
        driver: &mut Driver,
    ) -> Result<ReloadReport, String> {
        driver
            .reconfigure(&new.resources, &report.restarted)
            .map_err(|e| e.to_string())?;
        *self.access.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Access::new(new.access.clone()));
        self.config = new;
        Ok(report)
    }
}

/// What the core knows of a configured resource.
pub(crate) fn spec_of(r: &ResourceConfig) -> ResourceSpec {
    ResourceSpec {
        name: r.name.clone(),
        group: r.group.clone(),
        depends_on: r.depends_on.clone(),
        policy: r.policy.clone(),
        autostart: r.autostart,
        // Only a type that reports readiness takes the key (`process`);
        // the others refuse it as unknown.
        readiness: r.params.get("readiness").is_some(),
    }
}
