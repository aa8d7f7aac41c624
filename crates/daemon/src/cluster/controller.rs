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
use resmon_cluster::etcd::{
    Change, ClusterView as Snapshot, LeaseState, Member, Owner, Ownership, Watch,
};
use resmon_cluster::guard::GuardClient;
use resmon_cluster::placement::{self, Line, Situation};
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
    /// Why no live node may run it, as last reported.
    unplaced: Option<String>,
}

/// What the guard thread is told.
enum GuardOrder {
    /// The deadline, the scopes to kill when it passes, and the node's
    /// lease that the guard revokes once it killed them after this
    /// monitor died; and the arm's number, published once the guard has
    /// answered it.
    Arm(BootInstant, Vec<Scope>, Option<i64>, u64),
    Disarm,
    Stop(oneshot::Sender<()>),
}

/// What the guard was last told.
#[derive(PartialEq)]
enum Sent {
    /// A guard the last monitor left holds its deadline and scopes: the
    /// first order (an arm, or a disarm) replaces them.
    Unknown,
    Nothing,
    Arm(BootInstant, Vec<Scope>, Option<i64>),
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
    armed: Sent,
    /// The lease this node lost, until it is revoked or seen expired.
    lost_lease: Option<i64>,
    /// How many arms were sent, and the number of the last one the guard
    /// answered (the feeding thread publishes it).
    arms_sent: u64,
    arms_answered: tokio::sync::watch::Receiver<u64>,
    /// Groups taken, brought online once the guard has answered an arm
    /// with their scopes (the arm's number).
    starting: Vec<(usize, u64)>,
    /// The cluster's keys as the watch last brought them (with this
    /// node's own transactions applied at once).
    last_snapshot: Option<Snapshot>,
    /// The changes the watch task forwards; `None` until a watch runs.
    changes: Option<mpsc::UnboundedReceiver<Change>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
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
    /// Where the lease is recorded for a restarted monitor.
    state: Arc<crate::state::StateDir>,
    /// Until when free groups are left for the other nodes to join
    /// (`startup_wait` after this monitor first joined).
    settle_until: Option<Instant>,
}

/// Where the node's lease is recorded for the next monitor, and what this
/// one took up of the last one's.
pub struct LeaseMemory {
    pub state: Arc<crate::state::StateDir>,
    pub resumed: Option<Resumed>,
    /// The fence guard the last monitor left waiting, re-attached.
    pub guard_left: Option<GuardClient>,
}

/// What a restarted monitor took up of its predecessor: the member on the
/// same lease, and the groups it still owns.
pub struct Resumed {
    pub member: Member,
    pub owned: Vec<Ownership>,
}

/// How often the controller looks at its lease, its groups' resources and
/// the waits in line. Only local state: etcd is followed by a watch, and
/// asked only when something changed.
const TICK: Duration = Duration::from_millis(100);

/// What woke the controller.
enum Wake {
    Tick,
    Request(ClusterRequest),
    Failover(String),
    Change(Change),
    WatchEnded,
}

impl Controller {
    pub fn new(
        cfg: ClusterConfig,
        groups: Vec<GroupResources>,
        tx: mpsc::UnboundedSender<Msg>,
        bus: EventBus,
        handle: &ClusterHandle,
        (guard, held): (GuardClient, bool),
        memory: LeaseMemory,
    ) -> Result<Controller, String> {
        let LeaseMemory { state, resumed, .. } = memory;
        let (view, meter, permits) = (
            handle.view.clone(),
            handle.meter.clone(),
            handle.permits.clone(),
        );
        let settings = cfg.settings.clone();
        let (guard_tx, guard_rx) = std::sync::mpsc::channel();
        let (answered, arms_answered) = tokio::sync::watch::channel(0);
        std::thread::Builder::new()
            .name("fence-guard-feed".into())
            .spawn(move || feed_guard(guard, guard_rx, answered))
            .map_err(|e| format!("starting the thread that feeds the fence guard: {e}"))?;
        let all = Arc::new(groups.clone());
        let known = groups
            .iter()
            .flat_map(|g| g.config.preferred_nodes.iter().cloned())
            .chain([cfg.settings.node.clone()])
            .collect();
        let mut c = Controller {
            settle_until: None,
            state,
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
                    unplaced: None,
                })
                .collect(),
            tx,
            bus,
            view,
            guard: guard_tx,
            // A guard the last monitor left holds its deadline and scopes:
            // the first order (an arm, or a disarm) replaces them.
            armed: if held { Sent::Unknown } else { Sent::Nothing },
            starting: Vec::new(),
            arms_sent: 0,
            lost_lease: None,
            arms_answered,
            last_snapshot: None,
            changes: None,
            watcher: None,
            meter,
            renewals_before: (0, 0),
            maintenance: None,
        };
        if let Some(r) = resumed {
            c.resume(r);
        }
        Ok(c)
    }

    /// Takes up the predecessor's lease and the groups it owned: they run
    /// here as before (their resources adopted, their tokens the same).
    fn resume(&mut self, r: Resumed) {
        let until = r.member.lease_state().borrow().may_run_until;
        self.joined(r.member, "resumed its lease");
        self.permits.set_until(until);
        for own in r.owned {
            let Some(g) = self.groups.iter().position(|g| g.res.name == own.group) else {
                continue;
            };
            let (name, token) = (own.group.clone(), own.token);
            self.permits.grant(&name);
            self.groups[g].phase = Phase::Owned(own);
            self.set_tokens(g, Some(token));
            resmon_metrics::global().ownership_change(true);
            self.publish(
                Some(&name),
                format!("kept group {name} (fencing token {token}): its resources are adopted"),
            );
        }
        // The guard holds the deadline before anything else happens.
        self.feed_guard();
    }

    /// A member now: the fencer follows its lease, and the lease is
    /// recorded for a monitor started after this one.
    fn joined(&mut self, m: Member, how: &str) {
        self.publish(
            None,
            format!(
                "node {} {how} (lease {:x}, {}s)",
                self.cfg.settings.node,
                m.lease_id(),
                self.cfg.settings.lease_ttl.as_secs()
            ),
        );
        let record = crate::state::LeaseRecord {
            node: self.cfg.settings.node.clone(),
            key_prefix: self.cfg.settings.key_prefix.clone(),
            lease: m.lease_id(),
        };
        if let Err(e) = self.state.save_lease(Some(&record)) {
            tracing::warn!("recording the node's lease: {e}; a restarted monitor will join anew");
        }
        tokio::spawn(fencer(
            m.lease_state(),
            self.permits.clone(),
            self.all.clone(),
            self.tx.clone(),
            self.bus.clone(),
        ));
        self.member = Some(m);
        self.settle_until
            .get_or_insert_with(|| Instant::now() + self.cfg.startup_wait);
        self.set_problem(None, None);
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
            let wake = tokio::select! {
                // A stop is seen before another step starts.
                biased;
                Some(done) = stop.recv() => {
                    self.shutdown().await;
                    let _ = done.send(());
                    return;
                }
                change = next_change(&mut self.changes) => match change {
                    Some(c) => Wake::Change(c),
                    None => Wake::WatchEnded,
                },
                _ = tick.tick() => Wake::Tick,
                Some(r) = requests.recv() => Wake::Request(r),
                Some(g) = failovers.recv() => Wake::Failover(g),
            };
            match wake {
                Wake::Tick => {}
                Wake::Request(r) => self.request(r).await,
                Wake::Failover(g) => {
                    if let Some(group) = self.groups.iter_mut().find(|x| x.res.name == g) {
                        // Only a group running here can fail over from here.
                        group.failover = matches!(group.phase, Phase::Owned(_));
                    }
                }
                Wake::Change(c) => self.take_changes(c),
                Wake::WatchEnded => self.stop_watch(),
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
            self.lost_lease = self.member.take().map(|m| m.lease_id());
            self.stop_watch();
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
        if self.changes.is_none() {
            if let Err(e) = self.start_watch().await {
                self.set_problem(Some(format!("watching etcd: {e}")), Some(deadline));
                return;
            }
        }
        let Some(mut snapshot) = self.last_snapshot.take() else {
            return;
        };
        self.follow_maintenance(&snapshot);
        for g in 0..self.groups.len() {
            self.step_group(g, &mut snapshot).await;
        }
        self.arm_then_start().await;
        self.known.extend(snapshot.nodes.keys().cloned());
        self.last_snapshot = Some(snapshot);
        self.update_view(Some(deadline));
    }

    async fn join(&mut self) {
        if Instant::now() < self.next_join {
            return;
        }
        self.next_join = Instant::now() + self.cfg.settings.lease_ttl / 2;
        if let Some(lease) = self.lost_lease {
            self.end_lost_lease(lease).await;
        }
        match Member::join(self.settings.clone()).await {
            Ok(m) => self.joined(m, "joined the cluster"),
            Err(e) => {
                let why = format!("joining the cluster: {e}");
                tracing::warn!("{why}");
                self.set_problem(Some(why), None);
            }
        }
    }

    /// The lease this node gave up as lost may live on in etcd (a new etcd
    /// leader gives every lease a whole TTL again): its node key keeps
    /// this node from joining, and its owner keys keep its groups from
    /// every node, until it expires. Once every resource here is seen
    /// gone (they were fenced when the lease was lost), it is revoked, so
    /// the groups are free at once; while any process is left, it is
    /// killed again and the lease left to expire.
    async fn end_lost_lease(&mut self, lease: i64) {
        let left: Vec<&str> = self
            .groups
            .iter()
            .flat_map(|g| g.res.resources.iter())
            .filter(|r| !r.container.is_empty())
            .map(|r| {
                let _ = r.container.kill_all();
                r.name.as_str()
            })
            .collect();
        if !left.is_empty() {
            tracing::info!(
                "lease {lease:x}, which this node lost, is left to expire: processes of {} are still there",
                left.join(", ")
            );
            return;
        }
        let bound = self.cfg.settings.lease_ttl / 2;
        match tokio::time::timeout(
            bound,
            resmon_cluster::etcd::revoke_lease(&self.settings, lease),
        )
        .await
        {
            Ok(Ok(true)) => {
                self.lost_lease = None;
                self.publish(
                    None,
                    format!(
                        "revoked lease {lease:x}, which this node had lost, once its resources were seen gone: its groups are free at once"
                    ),
                );
            }
            // Expired already.
            Ok(Ok(false)) => self.lost_lease = None,
            Ok(Err(e)) => tracing::info!("revoking lease {lease:x}, which this node lost: {e}"),
            Err(_) => tracing::info!(
                "revoking lease {lease:x}, which this node lost: no answer within {bound:?}"
            ),
        }
    }

    /// Reads the whole cluster once and starts following it: a task
    /// forwards every change of one watch stream from the revision read.
    async fn start_watch(&mut self) -> Result<(), resmon_cluster::Error> {
        let Some(m) = &self.member else { return Ok(()) };
        let (view, watch) = m.watch().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.last_snapshot = Some(view);
        self.changes = Some(rx);
        self.watcher = Some(tokio::spawn(forward_changes(watch, tx)));
        Ok(())
    }

    /// Stops following etcd; the next step reads it afresh.
    fn stop_watch(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.changes = None;
    }

    /// Applies `first` and every change already waiting after it.
    fn take_changes(&mut self, first: Change) {
        let Some(snap) = self.last_snapshot.as_mut() else {
            return;
        };
        snap.apply(&first);
        if let Some(rx) = self.changes.as_mut() {
            while let Ok(c) = rx.try_recv() {
                snap.apply(&c);
            }
        }
    }

    async fn step_group(&mut self, g: usize, snap: &mut Snapshot) {
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
                        if m.clear_target(&name).await.is_ok() {
                            snap.targets.remove(&name);
                        }
                    }
                }
                let line = self.line(g, snap);
                if self.groups[g].failover {
                    self.fail_over(g, snap).await;
                } else if let Some(t) = snap
                    .targets
                    .get(&name)
                    .filter(|t| **t != me && line.rank(t).is_some())
                {
                    self.begin_leaving(g, Leave::Move(t.clone()));
                } else if snap.drained.contains(&me) && line.nodes.iter().any(|n| *n != me) {
                    // Another node can take it: it goes there.
                    self.begin_leaving(g, Leave::Drain);
                } else if let Some(better) = self.failback_to(g, &line, snap) {
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
                        if snap.owners.get(&name).is_some_and(|o| o.token == own.token) {
                            snap.owners.remove(&name);
                        }
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
                if let Some(o) = owner {
                    self.groups[g].unowned_since = None;
                    self.set_unplaced(g, None);
                    // Still this lease's (a resumed monitor): take it
                    // back, same token.
                    let mine = self
                        .member
                        .as_ref()
                        .is_some_and(|m| o.node == me && o.lease == m.lease_id());
                    if mine {
                        if let Some(owner) = self.acquire(g).await {
                            snap.owners.insert(name, owner);
                        }
                    }
                    return;
                }
                // Just started: the other nodes may be joining too, and
                // the wait in line starts once they had the time.
                if self.settle_until.is_some_and(|t| Instant::now() < t) {
                    return;
                }
                let since = *self.groups[g]
                    .unowned_since
                    .get_or_insert_with(Instant::now);
                let line = self.line(g, snap);
                self.set_unplaced(g, line.why_empty(&self.groups[g].res.config));
                let Some(rank) = line.rank(&me) else {
                    return;
                };
                // The first in line takes it at once; the others wait their
                // turn, in case the first is slow.
                if since.elapsed() < self.cfg.settings.lease_ttl * rank as u32 {
                    return;
                }
                if let Some(owner) = self.acquire(g).await {
                    snap.owners.insert(name, owner);
                }
            }
        }
    }

    /// Takes group `g` if it is free; what its owner key now says when it
    /// did.
    async fn acquire(&mut self, g: usize) -> Option<Owner> {
        let Some(m) = &self.member else { return None };
        let name = self.groups[g].res.name.clone();
        match m.acquire(&name).await.map(|c| c.won()) {
            Ok(Some(own)) => {
                let _ = m.clear_failed(&name).await;
                let token = own.token;
                let owner = Owner {
                    group: name.clone(),
                    node: self.cfg.settings.node.clone(),
                    token,
                    mod_revision: own.mod_revision,
                    lease: m.lease_id(),
                };
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
                self.publish(
                    Some(&name),
                    format!("took group {name} (fencing token {token}); bringing it online"),
                );
                // Started at the end of the step, once the guard holds
                // the deadline and its scopes.
                self.starting.push((g, u64::MAX));
                Some(owner)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(group = %name, "taking it: {e}");
                None
            }
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

    /// A more preferred live node, when the group fails back now (inside
    /// its `failback_window` on that node's clock).
    fn failback_to(&self, g: usize, line: &Line, snap: &Snapshot) -> Option<String> {
        let now = unix_ms() / 1000;
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        placement::failback_to(
            &self.groups[g].res.config,
            line,
            &self.cfg.settings.node,
            |n| {
                let offset = snap.nodes.get(n)?.as_ref()?.utc_offset_s?;
                Some(placement::local_minute(now, offset))
            },
        )
    }

    /// The live nodes that may take group `g`, in order, as this node sees
    /// the cluster (see [`placement`]).
    fn line(&self, g: usize, snap: &Snapshot) -> Line {
        let res = &self.groups[g].res;
        placement::line_up(&res.name, &res.config, &self.situation(g, snap))
    }

    /// What placement needs of `snap` for group `g`. The groups this node
    /// holds count as here whatever `snap` says (it may be a step behind
    /// this node's own transactions).
    fn situation<'a>(&'a self, g: usize, snap: &'a Snapshot) -> Situation<'a> {
        let res = &self.groups[g].res;
        let me = self.cfg.settings.node.as_str();
        let mut sharing = BTreeMap::new();
        if let Some(class) = &res.config.anti_affinity {
            let same = self.groups.iter().filter(|o| {
                o.res.name != res.name && o.res.config.anti_affinity.as_ref() == Some(class)
            });
            for other in same {
                let name = other.res.name.as_str();
                if let Some(o) = snap.owners.get(name) {
                    sharing.insert(o.node.as_str(), name);
                }
                if !matches!(other.phase, Phase::Free) {
                    sharing.insert(me, name);
                }
            }
        }
        Situation {
            live: snap.nodes.keys().map(String::as_str).collect(),
            drained: snap.drained.iter().map(String::as_str).collect(),
            target: snap.targets.get(&res.name).map(String::as_str),
            failed_on: snap
                .failed
                .get(&res.name)
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            sharing,
        }
    }

    /// Says once, each time it changes, why no node may run group `g`.
    fn set_unplaced(&mut self, g: usize, why: Option<String>) {
        if self.groups[g].unplaced == why {
            return;
        }
        let name = self.groups[g].res.name.clone();
        if let Some(why) = &why {
            self.publish(Some(&name), format!("group {name} stays offline: {why}"));
        }
        self.groups[g].unplaced = why;
    }

    /// `restart_then_failover` fired for group `g` here: it leaves, unless
    /// it failed over `failover_threshold` times in `failover_period`
    /// already; then it stays here, failed.
    async fn fail_over(&mut self, g: usize, snap: &Snapshot) {
        let name = self.groups[g].res.name.clone();
        let rules = &self.groups[g].res.config;
        let history = snap.failovers.get(&name).map_or(&[][..], Vec::as_slice);
        let now = unix_ms();
        if let Err(why) = placement::may_fail_over(rules, history, now) {
            self.groups[g].failover = false;
            self.publish(
                Some(&name),
                format!("group {name} does not fail over: {why}"),
            );
            return;
        }
        if rules.failover_threshold.is_some() {
            let mut times = placement::recent_failovers(rules, history, now);
            times.push(now);
            if let Some(m) = &self.member {
                if let Err(e) = m.record_failovers(&name, &times).await {
                    tracing::warn!(group = %name, "recording the failover: {e}");
                }
            }
        }
        self.begin_leaving(g, Leave::Failover);
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
        let want = match until {
            Some(until) if !scopes.is_empty() => Sent::Arm(until, scopes, lease),
            _ => Sent::Nothing,
        };
        // Compared whole: a group taken as another leaves keeps the count
        // of scopes but not the scopes.
        if self.armed == want {
            return;
        }
        let order = match &want {
            Sent::Arm(until, scopes, lease) => {
                self.arms_sent += 1;
                GuardOrder::Arm(*until, scopes.clone(), *lease, self.arms_sent)
            }
            _ => GuardOrder::Disarm,
        };
        lock(&self.meter).guard_armed = matches!(want, Sent::Arm(..));
        self.armed = want;
        let _ = self.guard.send(order);
    }

    /// Arms the guard with the groups taken in this step, and brings them
    /// online once it has answered: a monitor that dies before then leaves
    /// nothing running that the guard would not kill before it revokes
    /// the lease. A guard that does not answer (frozen) keeps them
    /// waiting, the safe side; one that answers with an error (gone) does
    /// not, as its deadline fence is gone with it and the lease bounds
    /// the groups as before.
    async fn arm_then_start(&mut self) {
        self.feed_guard();
        if self.starting.is_empty() {
            return;
        }
        // Taken now: the last arm sent holds their scopes. Those are
        // waited for here (the guard answers within a millisecond); older
        // ones are looked at on each step.
        let mut fresh = false;
        for (_, n) in &mut self.starting {
            if *n == u64::MAX {
                *n = self.arms_sent;
                fresh = true;
            }
        }
        if fresh {
            let need = self.arms_sent;
            let bound = self.cfg.settings.margin;
            let mut answered = self.arms_answered.clone();
            if tokio::time::timeout(bound, answered.wait_for(|a| *a >= need))
                .await
                .is_err()
            {
                self.publish(
                    None,
                    format!(
                        "the fence guard has not answered within {bound:?}: the groups taken wait for it before they start"
                    ),
                );
            }
        }
        let done = *self.arms_answered.borrow();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.starting)
            .into_iter()
            .partition(|(_, n)| *n <= done);
        self.starting = waiting;
        for (g, _) in ready {
            // Still this node's (nothing fenced it meanwhile).
            if !matches!(self.groups[g].phase, Phase::Owned(_)) {
                continue;
            }
            for r in &self.groups[g].res.resources {
                if r.autostart {
                    let _ = self
                        .tx
                        .send(Msg::Event(Event::Command(r.id, Command::Online)));
                }
            }
        }
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
        if let Some(g) = self.groups.iter().position(|g| g.res.name == group) {
            let mut s = self.situation(g, &snap);
            s.target = Some(node);
            let line = placement::line_up(group, &self.groups[g].res.config, &s);
            if line.rank(node) != Some(0) {
                let why = line
                    .excluded
                    .iter()
                    .find(|(n, _)| n == node)
                    .map_or_else(|| "it cannot take it".to_string(), |(_, e)| e.to_string());
                return Err(format!("group {group} cannot move to {node}: {why}"));
            }
        }
        m.set_target(group, node)
            .await
            .map_err(|e| format!("writing the move to etcd: {e}"))?;
        Ok(format!(
            "moving group {group} to {node}: offline on its owner, released, then online on {node}"
        ))
    }

    async fn shutdown(&mut self) {
        self.stop_watch();
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
            if let Err(e) = self.state.save_lease(None) {
                tracing::warn!("forgetting the node's lease: {e}");
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
        v.unplaced = self
            .groups
            .iter()
            .filter_map(|g| Some((g.res.name.clone(), g.unplaced.clone()?)))
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

/// The next change the watch task forwarded; `None` once it ended. Never
/// ready while no watch runs.
async fn next_change(changes: &mut Option<mpsc::UnboundedReceiver<Change>>) -> Option<Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Follows one etcd watch and forwards its changes until the controller
/// stops listening. While etcd cannot be reached it tries again (the
/// watch resumes from the last revision it delivered, or sends the whole
/// state again when that was compacted).
async fn forward_changes(mut watch: Watch, tx: mpsc::UnboundedSender<Change>) {
    loop {
        match watch.next().await {
            Ok(change) => {
                if tx.send(change).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!("watching etcd: {e}; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Owns the guard client on a thread of its own (its calls block).
fn feed_guard(
    mut guard: GuardClient,
    orders: std::sync::mpsc::Receiver<GuardOrder>,
    answered: tokio::sync::watch::Sender<u64>,
) {
    while let Ok(order) = orders.recv() {
        let r = match order {
            GuardOrder::Arm(until, scopes, lease, n) => {
                let r = match lease {
                    Some(lease) => guard.arm_lease(lease, until, &scopes),
                    None => guard.arm(until, &scopes),
                };
                answered.send_replace(n);
                r
            }
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
