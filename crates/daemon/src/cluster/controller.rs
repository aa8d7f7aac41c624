//! This node's side of cluster mode: it joins through etcd, takes the
//! groups it is first in line for with one transaction each, brings them
//! online only after that, gives them up when asked (a move, a failback, a
//! failover), and fences them when its lease runs out or its owner key is
//! gone. A fence guard process holds the same deadline, so resources die on
//! time even when this monitor is frozen or dead.
//!
//! The safety rule, in one place ([`Controller::step`]): a group's
//! resources run here only while this node holds the group's owner key and
//! its lease is acknowledged to live past now (`sent + TTL - margin`). When
//! that stops being true they are killed at once; before it, while renewals
//! fail, they are taken offline.

use crate::cluster::config::{ClusterConfig, GroupConfig};
use crate::cluster::view::{ClusterHandle, ClusterRequest, Meter, NodeView, Permits, SharedView};
use crate::driver::{Msg, ResourceStatus};
use crate::events::EventBus;
use resmon_cluster::clock::BootInstant;
use resmon_cluster::etcd::{ClusterView as Snapshot, LeaseState, Member, Ownership};
use resmon_cluster::guard::GuardClient;
use resmon_cluster::Settings;
use resmon_contract::{Scope, State};
use resmon_core::{Command, Event, ResId};
use resmon_task::lock;
use resmon_task::Container;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// One resource of a group, as the controller needs it.
#[derive(Clone)]
pub struct GroupResource {
    pub id: ResId,
    pub name: String,
    pub autostart: bool,
    pub container: Container,
}

/// A configured group and its resources.
#[derive(Clone)]
pub struct GroupResources {
    pub name: String,
    pub config: GroupConfig,
    pub resources: Vec<GroupResource>,
}

/// Why a group is being given up.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Leave {
    Move(String),
    Failback(String),
    Failover,
    /// Renewals of the node's lease are failing.
    LeaseEnding,
    /// The node is drained.
    Drain,
}

impl Leave {
    fn describe(&self) -> String {
        match self {
            Leave::Move(n) => format!("moving to {n}"),
            Leave::Failback(n) => format!("failing back to {n}"),
            Leave::Failover => "past its restart threshold here: failing over".into(),
            Leave::LeaseEnding => {
                "renewals of the node's lease are failing: stopping before it can expire".into()
            }
            Leave::Drain => "the node is drained: moving to another node".into(),
        }
    }
}

enum Phase {
    Free,
    Owned(Ownership),
    Leaving(Ownership, Leave),
}

struct Group {
    res: GroupResources,
    phase: Phase,
    /// Since when it was seen without an owner (for waiting in line).
    unowned_since: Option<Instant>,
    /// `restart_then_failover` fired here.
    failover: bool,
}

/// What the guard thread is told.
enum GuardOrder {
    /// The deadline, the scopes to kill when it passes, and the node's
    /// lease that the guard revokes once it killed them after this
    /// monitor died.
    Arm(BootInstant, Vec<Scope>, Option<i64>),
    Disarm,
    Stop(oneshot::Sender<()>),
}

pub struct Controller {
    cfg: ClusterConfig,
    settings: Settings,
    member: Option<Member>,
    next_join: Instant,
    groups: Vec<Group>,
    tx: mpsc::UnboundedSender<Msg>,
    bus: EventBus,
    view: SharedView,
    guard: std::sync::mpsc::Sender<GuardOrder>,
    /// The last order given to the guard, to send only changes.
    armed: Option<(BootInstant, usize, Option<i64>)>,
    last_snapshot: Option<Snapshot>,
    permits: Arc<Permits>,
    /// Every group's resources, for the fencer.
    all: Arc<Vec<GroupResources>>,
    /// Every node this one knows of (configured or seen live), so that
    /// `resmon nodes` lists the dead ones too.
    known: std::collections::BTreeSet<String>,
    /// What `/metrics` reads of the cluster side.
    meter: Arc<std::sync::Mutex<Meter>>,
    /// Renewals of the members before the current one.
    renewals_before: (u64, u64),
    /// Whether etcd marks this node for maintenance, as last seen.
    maintenance: Option<bool>,
}

/// How often the controller looks at etcd and its lease.
const TICK: Duration = Duration::from_millis(100);

impl Controller {
    pub fn new(
        cfg: ClusterConfig,
        groups: Vec<GroupResources>,
        tx: mpsc::UnboundedSender<Msg>,
        bus: EventBus,
        handle: &ClusterHandle,
        guard: GuardClient,
    ) -> Result<Controller, String> {
        let (view, meter, permits) = (
            handle.view.clone(),
            handle.meter.clone(),
            handle.permits.clone(),
        );
        let settings = cfg.settings.clone();
        let (guard_tx, guard_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fence-guard-feed".into())
            .spawn(move || feed_guard(guard, guard_rx))
            .map_err(|e| format!("starting the thread that feeds the fence guard: {e}"))?;
        let all = Arc::new(groups.clone());
        let known = groups
            .iter()
            .flat_map(|g| g.config.preferred_nodes.iter().cloned())
            .chain([cfg.settings.node.clone()])
            .collect();
        Ok(Controller {
            known,
            permits,
            all,
            cfg,
            settings,
            member: None,
            next_join: Instant::now(),
            groups: groups
                .into_iter()
                .map(|res| Group {
                    res,
                    phase: Phase::Free,
                    unowned_since: None,
                    failover: false,
                })
                .collect(),
            tx,
            bus,
            view,
            guard: guard_tx,
            armed: None,
            last_snapshot: None,
            meter,
            renewals_before: (0, 0),
            maintenance: None,
        })
    }

    /// Runs until `stop` brings a reply channel: then gives up every group
    /// (the monitor has taken everything offline by then), leaves the
    /// cluster and answers.
    pub async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<ClusterRequest>,
        mut failovers: mpsc::UnboundedReceiver<String>,
        mut stop: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A stop is seen before another step starts.
                biased;
                Some(done) = stop.recv() => {
                    self.shutdown().await;
                    let _ = done.send(());
                    return;
                }
                _ = tick.tick() => {}
                Some(r) = requests.recv() => self.request(r).await,
                Some(g) = failovers.recv() => {
                    if let Some(group) = self.groups.iter_mut().find(|x| x.res.name == g) {
                        // Only a group running here can fail over from here.
                        group.failover = matches!(group.phase, Phase::Owned(_));
                    }
                }
            }
            self.step().await;
        }
    }

    fn publish(&self, group: Option<&str>, message: String) {
        tracing::info!(group, "{message}");
        self.bus.publish("cluster", None, group, None, message);
    }

    /// One look at the lease and at etcd, and what follows from them.
    async fn step(&mut self) {
        if self.member.is_none() {
            self.join().await;
        }
        let Some(member) = &self.member else {
            self.fence_all("not_member", "this node is not a member of the cluster");
            self.feed_guard();
            return;
        };
        let (ok, failed) = member.renewals();
        lock(&self.meter).renewals = (self.renewals_before.0 + ok, self.renewals_before.1 + failed);
        let lease = member.lease_state().borrow().clone();
        let deadline = lease.may_run_until;
        if let Some(why) = lease.lost.clone() {
            self.fence_all("lease_lost", &format!("the node's lease is gone: {why}"));
            self.renewals_before = lock(&self.meter).renewals;
            self.member = None;
            self.feed_guard();
            return;
        }
        let Some(deadline) = deadline.filter(|d| !d.has_passed()) else {
            self.fence_all(
                "lease_expired",
                "no renewal of the node's lease was acknowledged in time",
            );
            self.feed_guard();
            return;
        };
        // Renewals are failing: leave while there is time to do it cleanly.
        if deadline.remaining() < self.cfg.settings.lease_ttl / 4 {
            for g in 0..self.groups.len() {
                if let Phase::Owned(_) = self.groups[g].phase {
                    self.begin_leaving(g, Leave::LeaseEnding);
                }
            }
        }
        self.feed_guard();
        let Some(member) = &self.member else { return };
        let snapshot = match member.view().await {
            Ok(s) => s,
            Err(e) => {
                self.set_problem(Some(format!("reading etcd: {e}")), Some(deadline));
                return;
            }
        };
        self.follow_maintenance(&snapshot);
        for g in 0..self.groups.len() {
            self.step_group(g, &snapshot).await;
        }
        self.feed_guard();
        self.known.extend(snapshot.nodes.keys().cloned());
        self.last_snapshot = Some(snapshot);
        self.update_view(Some(deadline));
    }

    async fn join(&mut self) {
        if Instant::now() < self.next_join {
            return;
        }
        self.next_join = Instant::now() + self.cfg.settings.lease_ttl / 2;
        match Member::join(self.settings.clone()).await {
            Ok(m) => {
                self.publish(
                    None,
                    format!(
                        "node {} joined the cluster (lease {}s)",
                        self.cfg.settings.node,
                        self.cfg.settings.lease_ttl.as_secs()
                    ),
                );
                tokio::spawn(fencer(
                    m.lease_state(),
                    self.permits.clone(),
                    self.all.clone(),
                    self.tx.clone(),
                    self.bus.clone(),
                ));
                self.member = Some(m);
                self.set_problem(None, None);
            }
            Err(e) => {
                let why = format!("joining the cluster: {e}");
                tracing::warn!("{why}");
                self.set_problem(Some(why), None);
            }
        }
    }

    async fn step_group(&mut self, g: usize, snap: &Snapshot) {
        let me = self.cfg.settings.node.clone();
        let name = self.groups[g].res.name.clone();
        let owner = snap.owners.get(&name);
        match &self.groups[g].phase {
            Phase::Owned(own) | Phase::Leaving(own, _) => {
                if owner.is_none_or(|o| o.node != me || o.token != own.token) {
                    let msg = match owner {
                        None => "its owner key is gone".to_string(),
                        Some(o) => {
                            format!("its owner key now names {} (token {})", o.node, o.token)
                        }
                    };
                    self.fence_group(g, "owner_changed", &msg);
                    return;
                }
            }
            Phase::Free => {}
        }
        match &self.groups[g].phase {
            Phase::Owned(_) => {
                if snap.targets.get(&name) == Some(&me) {
                    if let Some(m) = &self.member {
                        let _ = m.clear_target(&name).await;
                    }
                }
                if self.groups[g].failover {
                    self.begin_leaving(g, Leave::Failover);
                } else if let Some(t) = snap
                    .targets
                    .get(&name)
                    .filter(|t| **t != me && is_live(snap, t))
                {
                    self.begin_leaving(g, Leave::Move(t.clone()));
                } else if snap.drained.contains(&me)
                    && candidates(&self.groups[g].res, snap)
                        .iter()
                        .any(|n| *n != me)
                {
                    // Another node can take it: it goes there.
                    self.begin_leaving(g, Leave::Drain);
                } else if let Some(better) = self.failback_to(g, snap) {
                    self.begin_leaving(g, Leave::Failback(better));
                }
            }
            Phase::Leaving(own, why) => {
                let (own, why) = (own.clone(), why.clone());
                if !self.group_down(g).await {
                    return;
                }
                let Some(m) = &self.member else { return };
                if why == Leave::Failover {
                    if let Err(e) = m.mark_failed(&name).await {
                        tracing::warn!(group = %name, "marking it failed here: {e}");
                    }
                }
                match m.release(&own).await {
                    Ok(_) => {
                        self.set_tokens(g, None);
                        resmon_metrics::global().ownership_change(false);
                        self.groups[g].phase = Phase::Free;
                        self.groups[g].failover = false;
                        self.publish(
                            Some(&name),
                            format!(
                                "gave up group {name} ({}); token {} released",
                                why.describe(),
                                own.token
                            ),
                        );
                    }
                    Err(e) => tracing::warn!(group = %name, "releasing it: {e}"),
                }
            }
            Phase::Free => {
                if owner.is_some() {
                    self.groups[g].unowned_since = None;
                    return;
                }
                let since = *self.groups[g]
                    .unowned_since
                    .get_or_insert_with(Instant::now);
                let line = candidates(&self.groups[g].res, snap);
                let Some(rank) = line.iter().position(|n| *n == me) else {
                    return;
                };
                // The first in line takes it at once; the others wait their
                // turn, in case the first is slow.
                if since.elapsed() < self.cfg.settings.lease_ttl * rank as u32 {
                    return;
                }
                self.acquire(g).await;
            }
        }
    }

    async fn acquire(&mut self, g: usize) {
        let Some(m) = &self.member else { return };
        let name = self.groups[g].res.name.clone();
        match m.acquire(&name).await.map(|c| c.won()) {
            Ok(Some(own)) => {
                let _ = m.clear_failed(&name).await;
                let token = own.token;
                let until = m.lease_state().borrow().may_run_until;
                self.groups[g].phase = Phase::Owned(own);
                if until.is_some() {
                    self.permits.set_until(until);
                }
                self.permits.grant(&name);
                self.groups[g].unowned_since = None;
                self.groups[g].failover = false;
                self.set_tokens(g, Some(token));
                resmon_metrics::global().ownership_change(true);
                // The guard holds the deadline before anything starts.
                self.feed_guard();
                self.publish(
                    Some(&name),
                    format!("took group {name} (fencing token {token}); bringing it online"),
                );
                for r in &self.groups[g].res.resources {
                    if r.autostart {
                        let _ = self
                            .tx
                            .send(Msg::Event(Event::Command(r.id, Command::Online)));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(group = %name, "taking it: {e}"),
        }
    }

    fn begin_leaving(&mut self, g: usize, why: Leave) {
        let Phase::Owned(own) = std::mem::replace(&mut self.groups[g].phase, Phase::Free) else {
            return;
        };
        let name = self.groups[g].res.name.clone();
        // Nothing of it starts again here (no restart while it goes).
        self.permits.revoke(&name);
        self.publish(
            Some(&name),
            format!("taking group {name} offline: {}", why.describe()),
        );
        for r in &self.groups[g].res.resources {
            let _ = self
                .tx
                .send(Msg::Event(Event::Command(r.id, Command::Offline)));
        }
        self.groups[g].phase = Phase::Leaving(own, why);
    }

    /// Kills the group's resources now and forgets the ownership (the key
    /// is gone, or will be with the lease).
    /// `cause` names why, for `resmon_cluster_fences_total`.
    fn fence_group(&mut self, g: usize, cause: &str, why: &str) {
        if let Phase::Free = self.groups[g].phase {
            return;
        }
        resmon_metrics::global().fence(cause);
        resmon_metrics::global().ownership_change(false);
        self.groups[g].phase = Phase::Free;
        self.groups[g].failover = false;
        self.permits.revoke(&self.groups[g].res.name);
        kill_group(&self.groups[g].res, &self.tx, &self.bus, why);
        self.set_tokens(g, None);
    }

    fn fence_all(&mut self, cause: &str, why: &str) {
        for g in 0..self.groups.len() {
            self.fence_group(g, cause, why);
        }
        self.update_view(None);
    }

    fn set_tokens(&self, g: usize, token: Option<i64>) {
        for r in &self.groups[g].res.resources {
            r.container.fencing().set(token);
        }
        let name = &self.groups[g].res.name;
        let mut meter = lock(&self.meter);
        match token {
            Some(t) => meter.tokens.insert(name.clone(), t),
            None => meter.tokens.remove(name),
        };
    }

    /// Whether every resource of the group is down, with no call running.
    async fn group_down(&self, g: usize) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Status { name: None, reply }).is_err() {
            return false;
        }
        // Bounded: the event loop may be stopping and not answer.
        let Ok(Ok(Ok(all))) = tokio::time::timeout(Duration::from_secs(1), rx).await else {
            return false;
        };
        let names: Vec<&str> = self.groups[g]
            .res
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        all.iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .all(is_down)
    }

    /// A more preferred live node, when the group fails back.
    fn failback_to(&self, g: usize, snap: &Snapshot) -> Option<String> {
        let res = &self.groups[g].res;
        if !res.config.failback {
            return None;
        }
        let me = &self.cfg.settings.node;
        let line = candidates(res, snap);
        let first = line.first()?;
        let mine = res.config.preferred_nodes.iter().position(|n| n == me);
        let theirs = res.config.preferred_nodes.iter().position(|n| n == first)?;
        (first != me && mine.is_none_or(|m| theirs < m)).then(|| first.clone())
    }

    /// The guard's deadline: the lease's, plus half the margin (the lease
    /// cannot expire in etcd before `sent + TTL`).
    fn feed_guard(&mut self) {
        let scopes: Vec<Scope> = self
            .groups
            .iter()
            .filter(|g| !matches!(g.phase, Phase::Free))
            .flat_map(|g| g.res.resources.iter().map(|r| r.container.scope()))
            .collect();
        let until = self
            .member
            .as_ref()
            .and_then(|m| m.lease_state().borrow().may_run_until)
            .map(|d| d + self.cfg.settings.margin / 2);
        let lease = self.member.as_ref().map(Member::lease_id);
        let order = match until {
            Some(until) if !scopes.is_empty() => {
                if self.armed == Some((until, scopes.len(), lease)) {
                    return;
                }
                self.armed = Some((until, scopes.len(), lease));
                GuardOrder::Arm(until, scopes, lease)
            }
            _ => {
                if self.armed.is_none() {
                    return;
                }
                self.armed = None;
                GuardOrder::Disarm
            }
        };
        lock(&self.meter).guard_armed = matches!(order, GuardOrder::Arm(..));
        let _ = self.guard.send(order);
    }

    async fn request(&mut self, r: ClusterRequest) {
        match r {
            ClusterRequest::Move { group, node, reply } => {
                let _ = reply.send(self.move_group(&group, &node).await);
            }
            ClusterRequest::NodeDrain { node, on, reply } => {
                let out = match &self.member {
                    None => Err("this node is not a member of the cluster now".into()),
                    Some(m) => m
                        .set_drain(&node, on)
                        .await
                        .map(|()| {
                            if on {
                                format!("node {node} is drained: its groups move to other nodes, and none comes to it")
                            } else {
                                format!("node {node} is resumed: groups may run there again")
                            }
                        })
                        .map_err(|e| format!("writing the drain mark to etcd: {e}")),
                };
                let _ = reply.send(out);
            }
            ClusterRequest::NodeMaintenance { node, on, reply } => {
                let out = match &self.member {
                    None => Err("this node is not a member of the cluster now".into()),
                    Some(m) => m
                        .set_maintenance(&node, on)
                        .await
                        .map(|()| {
                            format!("node {node}: maintenance {}", if on { "on" } else { "off" })
                        })
                        .map_err(|e| format!("writing the maintenance mark to etcd: {e}")),
                };
                let _ = reply.send(out);
            }
        }
    }

    /// This node's maintenance mark in etcd, carried to every resource
    /// here when it changes (the first look only when it is on: a node
    /// without the mark leaves its resources' own maintenance alone).
    fn follow_maintenance(&mut self, snap: &Snapshot) {
        let on = snap.maintenance.contains(&self.cfg.settings.node);
        let before = self.maintenance.replace(on);
        if before == Some(on) || (before.is_none() && !on) {
            return;
        }
        let (reply, _) = oneshot::channel();
        let _ = self.tx.send(Msg::Maintenance {
            group: None,
            on,
            reply,
        });
        self.publish(
            None,
            format!(
                "node {} is marked for maintenance {}: every resource here {}",
                self.cfg.settings.node,
                if on { "on" } else { "off" },
                if on {
                    "is in maintenance (checks run, no failure acts)"
                } else {
                    "leaves maintenance and is checked at once"
                }
            ),
        );
    }

    async fn move_group(&mut self, group: &str, node: &str) -> Result<String, String> {
        if !self.groups.iter().any(|g| g.res.name == group) {
            return Err(format!("no group {group:?} in this node's config"));
        }
        let Some(m) = &self.member else {
            return Err("this node is not a member of the cluster now".into());
        };
        let snap = m.view().await.map_err(|e| format!("reading etcd: {e}"))?;
        if !is_live(&snap, node) {
            let live: Vec<&str> = snap.nodes.keys().map(String::as_str).collect();
            return Err(format!(
                "node {node:?} is not live; the live nodes are {}",
                live.join(", ")
            ));
        }
        if snap.owners.get(group).is_some_and(|o| o.node == node) {
            return Ok(format!("group {group} already runs on {node}"));
        }
        m.set_target(group, node)
            .await
            .map_err(|e| format!("writing the move to etcd: {e}"))?;
        Ok(format!(
            "moving group {group} to {node}: offline on its owner, released, then online on {node}"
        ))
    }

    async fn shutdown(&mut self) {
        if let Some(m) = self.member.take() {
            for g in &self.groups {
                if let Phase::Owned(own) | Phase::Leaving(own, _) = &g.phase {
                    if let Err(e) = m.release(own).await {
                        tracing::warn!(group = %g.res.name, "releasing it: {e}");
                    }
                }
            }
            if let Err(e) = m.leave().await {
                tracing::warn!("leaving the cluster: {e}");
            }
        }
        for g in 0..self.groups.len() {
            self.groups[g].phase = Phase::Free;
        }
        let (done, wait) = oneshot::channel();
        if self.guard.send(GuardOrder::Stop(done)).is_ok() {
            let _ = wait.await;
        }
    }

    fn set_problem(&self, problem: Option<String>, deadline: Option<BootInstant>) {
        let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
        v.member = problem.is_none() && self.member.is_some();
        v.problem = problem;
        v.may_run_for_ms = deadline.map(|d| d.remaining().as_millis() as u64);
    }

    fn update_view(&self, deadline: Option<BootInstant>) {
        let mut v = self.view.write().unwrap_or_else(|e| e.into_inner());
        v.node = self.cfg.settings.node.clone();
        v.member = self.member.is_some();
        v.problem = None;
        v.may_run_for_ms = deadline.map(|d| d.remaining().as_millis() as u64);
        let snap = self.last_snapshot.as_ref();
        v.owners = self
            .groups
            .iter()
            .map(|g| {
                let owner = snap
                    .and_then(|s| s.owners.get(&g.res.name))
                    .map(|o| o.node.clone());
                (g.res.name.clone(), owner)
            })
            .collect();
        let mut owned: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        if let Some(s) = snap {
            for (group, o) in &s.owners {
                owned
                    .entry(o.node.as_str())
                    .or_default()
                    .push(group.clone());
            }
        }
        v.nodes = self
            .known
            .iter()
            .map(|n| NodeView {
                name: n.clone(),
                live: snap.is_some_and(|s| s.nodes.contains_key(n)),
                groups: owned.get(n.as_str()).cloned().unwrap_or_default(),
                maintenance: snap.is_some_and(|s| s.maintenance.contains(n)),
                drained: snap.is_some_and(|s| s.drained.contains(n)),
            })
            .collect();
    }
}

fn is_live(snap: &Snapshot, node: &str) -> bool {
    snap.nodes.contains_key(node)
}

fn is_down(s: &ResourceStatus) -> bool {
    matches!(s.state, State::Offline | State::Failed) && s.call.is_none() && !s.terminating
}

/// The live nodes in the order they should take the group (see
/// [`line_up`]), drained nodes left out while any other can.
fn candidates(res: &GroupResources, snap: &Snapshot) -> Vec<String> {
    let line = line_up(res, snap);
    // A drained node takes a group only when no other node can.
    let (open, drained): (Vec<String>, Vec<String>) =
        line.into_iter().partition(|n| !snap.drained.contains(n));
    if open.is_empty() {
        drained
    } else {
        open
    }
}

/// The live nodes in order: a requested target first, then the group's
/// preferred nodes, then the others by name; nodes where it failed
/// recently last.
fn line_up(res: &GroupResources, snap: &Snapshot) -> Vec<String> {
    let mut line: Vec<String> = Vec::new();
    if let Some(t) = snap.targets.get(&res.name).filter(|t| is_live(snap, t)) {
        line.push(t.clone());
    }
    for p in &res.config.preferred_nodes {
        if is_live(snap, p) && !line.contains(p) {
            line.push(p.clone());
        }
    }
    let mut rest: Vec<String> = snap
        .nodes
        .keys()
        .filter(|n| !line.contains(n))
        .cloned()
        .collect();
    rest.sort();
    line.extend(rest);
    let failed = snap.failed.get(&res.name);
    let (ok, bad): (Vec<String>, Vec<String>) = line
        .into_iter()
        .partition(|n| failed.is_none_or(|f| !f.contains(n)));
    ok.into_iter().chain(bad).collect()
}

/// Owns the guard client on a thread of its own (its calls block).
fn feed_guard(mut guard: GuardClient, orders: std::sync::mpsc::Receiver<GuardOrder>) {
    while let Ok(order) = orders.recv() {
        let r = match order {
            GuardOrder::Arm(until, scopes, Some(lease)) => guard.arm_lease(lease, until, &scopes),
            GuardOrder::Arm(until, scopes, None) => guard.arm(until, &scopes),
            GuardOrder::Disarm => guard.disarm(),
            GuardOrder::Stop(done) => {
                if let Err(e) = guard.shutdown() {
                    tracing::warn!("stopping the fence guard: {e}");
                }
                let _ = done.send(());
                return;
            }
        };
        if let Err(e) = r {
            tracing::error!("the fence guard: {e}");
        }
    }
}

/// Kills a group's resources now (`cgroup.kill`, or the process-group
/// scan) and tells the monitor they are terminated.
fn kill_group(res: &GroupResources, tx: &mpsc::UnboundedSender<Msg>, bus: &EventBus, why: &str) {
    for r in &res.resources {
        if let Err(e) = r.container.kill_all() {
            tracing::error!(resource = %r.name, "fencing: killing its processes: {e}");
        }
        let _ = tx.send(Msg::Event(Event::Command(
            r.id,
            Command::Terminate { exit_code: 1 },
        )));
    }
    let name = &res.name;
    let message = format!("fenced group {name}: {why}; its resources were killed");
    tracing::warn!(group = %name, "{message}");
    bus.publish("cluster", None, Some(name), None, message);
}

/// Holds the node's deadline apart from the controller, which may be
/// waiting on etcd: keeps the permits' deadline at the lease's, and the
/// moment the lease is lost or its deadline passes, revokes every permit
/// and kills those groups. One per lease; ends with it.
async fn fencer(
    mut lease: watch::Receiver<LeaseState>,
    permits: Arc<Permits>,
    groups: Arc<Vec<GroupResources>>,
    tx: mpsc::UnboundedSender<Msg>,
    bus: EventBus,
) {
    loop {
        let state = lease.borrow_and_update().clone();
        let why = match (&state.lost, state.may_run_until) {
            (None, Some(until)) if !until.has_passed() => {
                permits.set_until(Some(until));
                tokio::select! {
                    changed = lease.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ = tokio::time::sleep(until.remaining()) => {
                        if lease.has_changed().unwrap_or(false) {
                            continue;
                        }
                        "no renewal of the node's lease was acknowledged in time".to_string()
                    }
                }
            }
            (Some(lost), _) => format!("the node's lease is gone: {lost}"),
            _ => "no renewal of the node's lease was acknowledged in time".to_string(),
        };
        permits.set_until(None);
        for name in permits.revoke_all() {
            if let Some(res) = groups.iter().find(|g| g.name == name) {
                kill_group(res, &tx, &bus, &why);
            }
        }
        if lease.changed().await.is_err() {
            return;
        }
    }
}
