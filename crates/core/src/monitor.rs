//! The monitor state machine over all resources and groups.

use crate::lifecycle::{Life, StartFrom};
use resmon_contract::{EntryPoint, Policy, RestartAction, State};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// A resource's index in the monitor, stable for its lifetime.
pub type ResId = usize;

/// What the core needs to know of one resource.
#[derive(Clone, Debug)]
pub struct ResourceSpec {
    pub name: String,
    pub group: String,
    /// Names of the providers this resource depends on (same group).
    pub depends_on: Vec<String>,
    pub policy: Policy,
    /// Brought online once opened when a reload adds it (at the monitor's
    /// start, [`crate::start_from`] decides).
    pub autostart: bool,
    /// It reports readiness ([`Event::Readiness`]): once online it is not
    /// ready until its checks pass, and its dependents wait for that.
    pub readiness: bool,
}

/// A set of specs that cannot form a monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub Vec<String>);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// An operator's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Bring the resource online, with its providers first.
    Online,
    /// Take the resource offline, with its dependents first.
    Offline,
    /// End the resource now; its tasks report `exit_code`.
    Terminate { exit_code: i32 },
    /// Take it offline (its dependents first), then bring it and the
    /// dependents that were wanted online back; a resource that is down is
    /// just brought online.
    Restart,
    /// Maintenance on or off. While on, health checks still run and are
    /// reported, but no failure they find acts: no terminate, no restart,
    /// no failover, and a provider going down does not take it down;
    /// operator commands act as always. Turned off, it is checked at once
    /// and what is found is acted on.
    Maintenance(bool),
}

/// Where an operator's command ended, for a caller that waits on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The command's goal is reached.
    Done,
    /// The resource failed on the way.
    Failed,
    /// An online that is no longer wanted (taken offline meanwhile, or the
    /// monitor is stopping): the resource stays offline.
    Abandoned,
}

impl Command {
    /// Whether a resource in `state` is where this command ends: `None`
    /// while it is still on its way (`busy`: a serialized call or a
    /// termination is in progress). `wanted_online` says whether the
    /// monitor still means to bring it online.
    pub fn settled(self, state: State, busy: bool, wanted_online: bool) -> Option<Settled> {
        if let Command::Maintenance(_) = self {
            return Some(Settled::Done); // applied at once
        }
        if busy {
            return None;
        }
        match (self, state) {
            (Command::Online | Command::Restart, State::Online) => Some(Settled::Done),
            (Command::Online | Command::Offline | Command::Restart, State::Failed) => {
                Some(Settled::Failed)
            }
            (Command::Online | Command::Restart, State::Offline) if !wanted_online => {
                Some(Settled::Abandoned)
            }
            (Command::Offline, State::Offline) => Some(Settled::Done),
            (Command::Terminate { .. }, s) if s.is_down() => Some(Settled::Done),
            _ => None,
        }
    }
}

/// How a serialized entry-point call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// `online`/`offline` finished.
    Done,
    /// `online`/`offline` goes on; progress and completion follow.
    Pending,
    /// A health check answered.
    Alive(bool),
    /// The call failed.
    Error(String),
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Command(ResId, Command),
    /// A serialized call returned; `seq` is the one of its [`Action::Call`].
    Returned {
        id: ResId,
        seq: u64,
        outcome: CallOutcome,
    },
    /// A pending `online`/`offline` reported progress.
    Progress {
        id: ResId,
        seq: u64,
        checkpoint: u32,
    },
    /// A pending `online`/`offline` finished.
    Completed {
        id: ResId,
        seq: u64,
        result: Result<(), String>,
    },
    /// The resource said, between polls, that it failed.
    FailureNotice {
        id: ResId,
        reason: String,
    },
    /// `terminate` returned and nothing of the resource is left running;
    /// `seq` is the one of the [`Action::Terminate`] or [`Action::ForceKill`].
    Terminated {
        id: ResId,
        seq: u64,
    },
    /// Time passed; deadlines up to now are due.
    Tick,
    /// Take everything offline (the daemon is stopping).
    Shutdown,
    /// The answer to [`Action::Reattach`]: what the earlier run left of the
    /// resource runs (`alive`) and is watched again; or it died while no
    /// monitor watched (`!alive`), which is a failure under the restart
    /// policy.
    Adopted {
        id: ResId,
        alive: bool,
    },
    /// The answer to [`Action::Open`]. An open that failed leaves the
    /// resource `failed` with the reason and nothing running; its next
    /// start (an operator's online, or the retry after
    /// `retry_period_on_failure` when it is wanted online) opens it again.
    Opened {
        id: ResId,
        result: Result<(), String>,
    },
    /// The answer to [`Action::Close`].
    Closed {
        id: ResId,
    },
    /// One readiness check of an online resource passed (`ready`) or not;
    /// `detail` says why not. Thresholds decide when it is ready or not.
    Readiness {
        id: ResId,
        ready: bool,
        detail: String,
    },
}

/// Why a resource is being terminated; decides the state it ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermReason {
    /// A failure: ends `failed`, then the restart policy applies.
    Failure,
    /// It was being taken offline: ends `offline`.
    Offline,
    /// An operator asked: ends `offline`.
    Operator,
}

/// What the daemon must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Call a serialized entry point. Its return is fed back as
    /// [`Event::Returned`] with the same `seq`.
    Call {
        id: ResId,
        entry: EntryPoint,
        seq: u64,
    },
    /// Cancel any in-flight call (raise "should terminate") and call the
    /// `terminate` entry point, concurrently with whatever runs. Once it has
    /// returned and nothing of the resource runs, feed [`Event::Terminated`].
    Terminate { id: ResId, exit_code: i32, seq: u64 },
    /// Stop waiting for the health check in flight (`looks_alive` or
    /// `is_alive` with this `seq`): an offline, terminate or shutdown came,
    /// and nothing waits behind a check. The resource makes it return at
    /// once (killing any probe it started); its late return is ignored.
    CancelCheck { id: ResId, seq: u64 },
    /// Rung 3: kill every process of the resource. Feed [`Event::Terminated`]
    /// once nothing is left.
    ForceKill { id: ResId, exit_code: i32, seq: u64 },
    /// The group is past what restarts can fix here: move it elsewhere.
    Failover { group: String },
    /// Publish a state change.
    Notify(Notice),
    /// Open the resource with its type (its current config), in its
    /// container; `fresh`: kill whatever runs in the container first (an
    /// earlier run's leftovers, when nothing of it is to be reattached).
    /// Feed [`Event::Opened`]. No entry point is called meanwhile.
    Open { id: ResId, fresh: bool },
    /// At the monitor's start, once opened: find what the earlier run left
    /// of the resource (its saved state) and feed [`Event::Adopted`].
    Reattach { id: ResId },
    /// Close the opened resource (it is down): to open it again with a new
    /// config, or (`release`) for good, when a reload removed it: then its
    /// container is emptied and removed too. Feed [`Event::Closed`].
    Close { id: ResId, release: bool },
    /// The resource failed (its [`Action::Notify`] says why): for counting
    /// failures by class.
    Failed { id: ResId, class: FailureClass },
    /// A stop ended: the resource is down, `rung` of the termination ladder
    /// ended it, `took` after its first rung began.
    Stopped {
        id: ResId,
        rung: Rung,
        took: Duration,
    },
    /// An online resource became ready, or stopped being ready: for the
    /// event feed. Its state does not change.
    Readiness {
        id: ResId,
        ready: bool,
        reason: String,
    },
}

/// The rung of the termination ladder that ended a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rung {
    /// `offline` returned (or completed) successfully.
    Offline,
    /// `terminate` returned and the resource's processes were gone within
    /// `terminate_timeout`.
    Terminate,
    /// The monitor killed the resource's whole process tree.
    Forced,
}

impl Rung {
    pub const ALL: [Rung; 3] = [Rung::Offline, Rung::Terminate, Rung::Forced];

    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Offline => "offline",
            Rung::Terminate => "terminate",
            Rung::Forced => "forced",
        }
    }
}

/// What kind of failure a resource had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// `online` returned or completed with an error.
    Online,
    /// An `online` made no progress within `pending_timeout`, or a check
    /// did not return within `deadlock_timeout`.
    Timeout,
    /// A health check said no, or failed.
    Health,
    /// The resource reported its failure itself (its main process exited,
    /// its plugin host died), and `is_alive` confirmed it.
    Notice,
    /// It died while no monitor watched it.
    Lost,
    /// Its type could not open it.
    Open,
}

impl FailureClass {
    pub const ALL: [FailureClass; 6] = [
        FailureClass::Online,
        FailureClass::Timeout,
        FailureClass::Health,
        FailureClass::Notice,
        FailureClass::Lost,
        FailureClass::Open,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Online => "online",
            FailureClass::Timeout => "timeout",
            FailureClass::Health => "health",
            FailureClass::Notice => "notice",
            FailureClass::Lost => "lost",
            FailureClass::Open => "open",
        }
    }
}

/// A state change, for the event feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub id: ResId,
    pub state: State,
    pub reason: String,
}

/// What [`Monitor::reconfigure`] did.
#[derive(Clone, Debug)]
pub struct Reconfigured {
    /// New resources, in config order: the next ids.
    pub added: Vec<ResId>,
    /// Removed resources, on their way offline.
    pub retired: Vec<ResId>,
    pub actions: Vec<Action>,
}

/// A read-only view of one resource.
#[derive(Clone, Debug)]
pub struct ResourceView<'a> {
    pub spec: &'a ResourceSpec,
    pub state: State,
    pub since: Instant,
    pub restarts: u32,
    pub wants_online: bool,
    pub terminating: bool,
    pub reason: &'a str,
    /// The serialized call in flight: entry point, start, deadline.
    pub in_flight: Option<(EntryPoint, Instant, Instant)>,
    /// The `seq` of that call.
    pub in_flight_seq: Option<u64>,
    /// While terminating: when it started and when the forced kill is due.
    pub terminate: Option<(Instant, Instant)>,
    /// Where it is in its type's hands.
    pub life: Life,
    /// Its start at the monitor's start (open, then reattach or online) is
    /// not carried out yet.
    pub starting: bool,
    /// In maintenance ([`Command::Maintenance`]).
    pub maintenance: bool,
    /// Whether it is ready: `None` while it is not online or has no
    /// readiness checks.
    pub ready: Option<bool>,
    /// When it is next tried: a restart, or the retry after
    /// `retry_period_on_failure`.
    pub next_attempt: Option<Instant>,
    /// Failed `is_alive` answers in a row, short of `failure_threshold`.
    pub health_failures: u32,
    /// A [`Command::Restart`] is under way.
    pub restarting: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Online,
    Offline,
}

/// What becomes of a resource once its open succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Nothing: it stays as it is wanted.
    Stay,
    /// Bring it online (a start's decision, or `autostart` on a reload).
    Online,
    /// Find what the earlier run left of it ([`Action::Reattach`]).
    Reattach,
    /// It was online, but nothing says how to find it: a failure.
    Lost,
}

#[derive(Clone, Debug)]
struct InFlight {
    entry: EntryPoint,
    seq: u64,
    started: Instant,
    last_progress: Instant,
    checkpoint: u32,
}

#[derive(Clone, Debug)]
struct Terminating {
    seq: u64,
    started: Instant,
    reason: TermReason,
    exit_code: i32,
    deadline: Instant,
    forced: bool,
}

#[derive(Clone, Debug)]
struct Res {
    spec: ResourceSpec,
    /// Removed from the configuration: taken offline, then gone for good.
    retired: bool,
    /// Index of its group in `Monitor::groups`.
    group: usize,
    providers: Vec<ResId>,
    dependents: Vec<ResId>,
    state: State,
    since: Instant,
    reason: String,
    want: Want,
    in_flight: Option<InFlight>,
    terminating: Option<Terminating>,
    /// `is_alive` is owed at the next chance (after `looks_alive` said no).
    check_now: bool,
    /// Why the last cheap check or notice suspected a failure.
    suspicion: String,
    /// The suspicion came from the resource's own failure notice.
    suspicion_noticed: bool,
    /// When the stop under way began (its first rung).
    stop_started: Option<Instant>,
    looks_alive_at: Option<Instant>,
    is_alive_at: Option<Instant>,
    restart_at: Option<Instant>,
    retry_at: Option<Instant>,
    /// A restart (or retry) was granted and is waiting for its providers.
    restart_granted: bool,
    restart_times: VecDeque<Instant>,
    restarts: u32,
    life: Life,
    then: Then,
    /// A reload changed its type or parameters: once down, it is closed
    /// and opened again with the new config.
    reopen: bool,
    /// After that reopen: the resources wanted online before the reload,
    /// which are brought back.
    restore: Vec<ResId>,
    /// The close out is a release (see [`Action::Close`]).
    releasing: bool,
    /// See [`ResourceView::starting`].
    starting: bool,
    maintenance: bool,
    /// In maintenance, a check found a failure that nothing acted on.
    flagged: bool,
    /// `is_alive` answers in a row: failed (short of the threshold), and
    /// passed since the last failure.
    health_fails: u32,
    health_passes: u32,
    /// Meaningful while online with readiness checks.
    ready: bool,
    ready_fails: u32,
    ready_passes: u32,
    /// Restarts since it last stayed online for `restart_period`: how often
    /// `restart_backoff` has grown the delay.
    backoff_steps: u32,
    /// A [`Command::Restart`] takes it down; then these come back.
    restarting: bool,
    bring_back: Vec<ResId>,
}

impl Res {
    /// A resource as it starts: offline, not wanted.
    fn new(
        spec: ResourceSpec,
        group: usize,
        providers: Vec<ResId>,
        dependents: Vec<ResId>,
        now: Instant,
    ) -> Res {
        Res {
            spec,
            retired: false,
            group,
            providers,
            dependents,
            state: State::Offline,
            since: now,
            reason: String::new(),
            want: Want::Offline,
            in_flight: None,
            terminating: None,
            check_now: false,
            suspicion: String::new(),
            suspicion_noticed: false,
            stop_started: None,
            looks_alive_at: None,
            is_alive_at: None,
            restart_at: None,
            retry_at: None,
            restart_granted: false,
            restart_times: VecDeque::new(),
            restarts: 0,
            life: Life::Closed,
            then: Then::Stay,
            reopen: false,
            restore: Vec::new(),
            releasing: false,
            starting: false,
            maintenance: false,
            flagged: false,
            health_fails: 0,
            health_passes: 0,
            ready: false,
            ready_fails: 0,
            ready_passes: 0,
            backoff_steps: 0,
            restarting: false,
            bring_back: Vec::new(),
        }
    }

    /// Whether a resource online in maintenance stays up whatever its
    /// checks or providers say.
    fn kept_by_maintenance(&self) -> bool {
        self.maintenance && self.want == Want::Online && self.state == State::Online
    }

    /// Readiness starts over (it came online, or went down).
    fn reset_checks(&mut self) {
        self.health_fails = 0;
        self.health_passes = 0;
        self.ready = !self.spec.readiness;
        self.ready_fails = 0;
        self.ready_passes = 0;
        self.flagged = false;
    }

    /// Whether nothing of it runs or is in flight.
    fn at_rest(&self) -> bool {
        self.state.is_down() && self.in_flight.is_none() && self.terminating.is_none()
    }
}

#[derive(Clone, Debug, Default)]
struct Group {
    /// Past its threshold with `restart_then_failover` and nowhere to go:
    /// held down until this time.
    failed_until: Option<Instant>,
    members: Vec<ResId>,
}

/// The monitor of all resources.
///
/// Work is incremental so that 1,000 resources cost little: an event visits
/// only the resources it touches (and, when a state changes, their
/// neighbours in the dependency graph), and deadlines live in an ordered
/// index, so a tick looks only at what is due.
#[derive(Clone, Debug)]
pub struct Monitor {
    res: Vec<Res>,
    index: HashMap<String, ResId>,
    /// Groups by index; `Res::group` points here.
    groups: Vec<Group>,
    seq: u64,
    shutting_down: bool,
    /// Resources to (re)consider in `reconcile`.
    dirty: Vec<ResId>,
    /// Resources whose deadline may have moved.
    touched: Vec<ResId>,
    is_touched: Vec<bool>,
    /// Every resource's next deadline, ordered.
    timers: BTreeSet<(Instant, ResId)>,
    timer_of: Vec<Option<Instant>>,
    /// Resources whose start is not carried out yet.
    starting: usize,
}

impl Monitor {
    /// Builds the monitor. Every resource starts `offline` and wanted online
    /// only once [`Command::Online`] says so. Dependencies must name
    /// resources of the same group and form no cycle.
    pub fn new(specs: Vec<ResourceSpec>, now: Instant) -> Result<Monitor, SpecError> {
        let index: BTreeMap<&str, ResId> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut errors = Vec::new();
        if index.len() != specs.len() {
            errors.push("resource names are not unique".to_string());
        }
        let mut providers = vec![Vec::new(); specs.len()];
        for (i, s) in specs.iter().enumerate() {
            for p in &s.depends_on {
                match index.get(p.as_str()) {
                    None => errors.push(format!(
                        "resource {:?}: depends_on names {p:?}, which is not a resource",
                        s.name
                    )),
                    Some(&j) if j == i => {
                        errors.push(format!("resource {:?}: depends on itself", s.name))
                    }
                    Some(&j) if specs[j].group != s.group => errors.push(format!(
                        "resource {:?} (group {:?}) depends on {p:?} of group {:?}: dependencies must stay within a group (give both the same `group = \"...\"`)",
                        s.name, s.group, specs[j].group
                    )),
                    Some(&j) => providers[i].push(j),
                }
            }
        }
        if errors.is_empty() {
            if let Some(cycle) = find_cycle(&providers) {
                let names: Vec<&str> = cycle.iter().map(|&i| specs[i].name.as_str()).collect();
                errors.push(format!("dependency cycle: {}", names.join(" -> ")));
            }
        }
        if !errors.is_empty() {
            return Err(SpecError(errors));
        }
        let mut dependents = vec![Vec::new(); specs.len()];
        for (i, ps) in providers.iter().enumerate() {
            for &p in ps {
                dependents[p].push(i);
            }
        }
        let mut group_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let g = *group_ids.entry(s.group.as_str()).or_insert_with(|| {
                groups.push(Group::default());
                groups.len() - 1
            });
            groups[g].members.push(i);
            group_of.push(g);
        }
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let n = specs.len();
        let res = specs
            .into_iter()
            .zip(providers)
            .zip(dependents)
            .zip(group_of)
            .map(|(((spec, providers), dependents), group)| {
                Res::new(spec, group, providers, dependents, now)
            })
            .collect();
        Ok(Monitor {
            res,
            index,
            groups,
            seq: 0,
            shutting_down: false,
            dirty: Vec::new(),
            touched: Vec::new(),
            is_touched: vec![false; n],
            timers: BTreeSet::new(),
            timer_of: vec![None; n],
            starting: 0,
        })
    }

    /// The monitor's start: opens every resource, and once each is open
    /// starts it as `from` (the [`crate::start_from`] decision, by id)
    /// says: reattached, lost, brought online, or left offline. Resources
    /// not listed are opened when first wanted online.
    pub fn start(&mut self, now: Instant, from: &[StartFrom]) -> Vec<Action> {
        let mut out = Vec::new();
        for (id, &f) in from.iter().enumerate().take(self.res.len()) {
            let r = &mut self.res[id];
            if r.life != Life::Closed || r.starting {
                continue;
            }
            r.then = match f {
                StartFrom::Reattach => Then::Reattach,
                StartFrom::Lost => Then::Lost,
                StartFrom::Online => Then::Online,
                StartFrom::Offline => Then::Stay,
            };
            r.starting = true;
            r.life = Life::Opening;
            self.starting += 1;
            out.push(Action::Open {
                id,
                fresh: f != StartFrom::Reattach,
            });
            self.mark(id);
        }
        self.reconcile(now, &mut out);
        self.refresh_timers();
        out
    }

    /// Whether every start of [`start`](Self::start) is carried out (what
    /// `/readyz` waits for).
    pub fn is_started(&self) -> bool {
        self.starting == 0
    }

    pub fn len(&self) -> usize {
        self.res.len()
    }

    pub fn is_empty(&self) -> bool {
        self.res.is_empty()
    }

    pub fn id(&self, name: &str) -> Option<ResId> {
        self.index.get(name).copied()
    }

    pub fn view(&self, id: ResId) -> ResourceView<'_> {
        let r = &self.res[id];
        ResourceView {
            spec: &r.spec,
            state: r.state,
            since: r.since,
            restarts: r.restarts,
            wants_online: self.wants_online(id),
            terminating: r.terminating.is_some(),
            reason: &r.reason,
            in_flight: r
                .in_flight
                .as_ref()
                .map(|c| (c.entry, c.started, call_deadline(c, &r.spec.policy))),
            in_flight_seq: r.in_flight.as_ref().map(|c| c.seq),
            terminate: r.terminating.as_ref().map(|t| (t.started, t.deadline)),
            life: r.life,
            starting: r.starting,
            maintenance: r.maintenance,
            ready: (r.spec.readiness && r.state == State::Online).then_some(r.ready),
            next_attempt: if r.state == State::Failed {
                r.restart_at.or(r.retry_at)
            } else {
                None
            },
            health_failures: r.health_fails,
            restarting: r.restarting,
        }
    }

    /// While restarts of the resource count against `restart_threshold`
    /// (its last restart was within `restart_period` of `now`): when that
    /// ends. `None` when none counts now.
    pub fn restart_window_end(&self, id: ResId, now: Instant) -> Option<Instant> {
        let r = &self.res[id];
        let end = later(*r.restart_times.back()?, r.spec.policy.restart_period);
        (end > now).then_some(end)
    }

    /// Whether [`Event::Shutdown`] came: nothing is brought online any more.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn state(&self, id: ResId) -> State {
        self.res[id].state
    }

    /// True once every resource is down and nothing is in flight (no
    /// entry point, and no open, reattach or close).
    pub fn all_down(&self) -> bool {
        self.res.iter().all(|r| r.at_rest() && !r.life.is_busy())
    }

    /// Whether the resource was removed by [`reconfigure`](Self::reconfigure).
    pub fn is_retired(&self, id: ResId) -> bool {
        self.res[id].retired
    }

    /// Applies a new set of specs to a running monitor (a reload). A spec
    /// whose name is known updates that resource in place (policy, group,
    /// dependencies); a new name adds a resource, which is opened and, if
    /// `autostart`, brought online; a known name missing from `specs`
    /// retires that resource: it is taken offline, closed and released.
    /// A known name in `replace` (its type or parameters changed) is taken
    /// offline, closed and opened again, and then what was wanted online
    /// before comes back. Returns the ids added and retired, and the
    /// actions to carry out. The specs must be valid as a whole (as
    /// [`Monitor::new`] checks); on error nothing changes.
    pub fn reconfigure(
        &mut self,
        now: Instant,
        specs: Vec<ResourceSpec>,
        replace: &[String],
    ) -> Result<Reconfigured, SpecError> {
        Monitor::new(specs.clone(), now)?;
        let mut added = Vec::new();
        let wanted: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        let retired: Vec<ResId> = (0..self.res.len())
            .filter(|&id| {
                !self.res[id].retired && !wanted.contains(self.res[id].spec.name.as_str())
            })
            .collect();
        for &id in &retired {
            let r = &mut self.res[id];
            r.retired = true;
            r.want = Want::Offline;
            r.restart_at = None;
            r.retry_at = None;
            r.restart_granted = false;
            self.index.remove(&r.spec.name);
        }
        for spec in specs {
            match self.index.get(&spec.name) {
                Some(&id) => self.res[id].spec = spec,
                None => {
                    let id = self.res.len();
                    self.index.insert(spec.name.clone(), id);
                    // Group and dependencies are linked below.
                    self.res
                        .push(Res::new(spec, 0, Vec::new(), Vec::new(), now));
                    self.is_touched.push(false);
                    self.timer_of.push(None);
                    added.push(id);
                }
            }
        }
        // Re-link dependencies and groups by name; a group keeps its hold.
        let held: HashMap<String, Instant> = self
            .groups
            .iter()
            .filter_map(|g| {
                let until = g.failed_until?;
                let first = *g.members.first()?;
                Some((self.res[first].spec.group.clone(), until))
            })
            .collect();
        let mut group_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for id in 0..self.res.len() {
            self.res[id].providers.clear();
            self.res[id].dependents.clear();
            let name = self.res[id].spec.group.clone();
            let g = *group_ids.entry(name.clone()).or_insert_with(|| {
                groups.push(Group {
                    failed_until: held.get(&name).copied(),
                    members: Vec::new(),
                });
                groups.len() - 1
            });
            groups[g].members.push(id);
            self.res[id].group = g;
        }
        self.groups = groups;
        for id in 0..self.res.len() {
            if self.res[id].retired {
                continue;
            }
            let providers: Vec<ResId> = self.res[id]
                .spec
                .depends_on
                .iter()
                .filter_map(|p| self.index.get(p).copied())
                .collect();
            for &p in &providers {
                self.res[p].dependents.push(id);
            }
            self.res[id].providers = providers;
        }
        let mut out = Vec::new();
        for &id in &added {
            let r = &mut self.res[id];
            r.then = if r.spec.autostart && !self.shutting_down {
                Then::Online
            } else {
                Then::Stay
            };
            r.life = Life::Opening;
            out.push(Action::Open { id, fresh: true });
        }
        let wanted: Vec<ResId> = (0..self.res.len())
            .filter(|&id| !self.res[id].retired && self.wants_online(id))
            .collect();
        for name in replace {
            let Some(id) = self.id(name).filter(|id| !added.contains(id)) else {
                continue;
            };
            // Never opened, or its open failed: its next open takes the new
            // config anyway.
            if self.res[id].life == Life::Closed {
                continue;
            }
            let r = &mut self.res[id];
            r.reopen = true;
            for &w in &wanted {
                if !r.restore.contains(&w) {
                    r.restore.push(w);
                }
            }
            self.command(now, id, Command::Offline, &mut out);
        }
        for id in 0..self.res.len() {
            self.mark(id);
        }
        self.reconcile(now, &mut out);
        self.refresh_timers();
        Ok(Reconfigured {
            added,
            retired,
            actions: out,
        })
    }

    /// The earliest time at which [`Event::Tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// When the event loop should next wake: the earliest deadline, where a
    /// health check may be put off to `round(deadline)` (so that many share
    /// one wake-up) but no other deadline is: a stop's `pending_timeout`, a
    /// terminate's deadline or a restart comes on time.
    pub fn next_wake(&self, round: impl Fn(Instant) -> Instant) -> Option<Instant> {
        let &(first, _) = self.timers.first()?;
        let rounded = round(first).max(first);
        for &(t, id) in &self.timers {
            if t >= rounded {
                break;
            }
            if !self.is_health_check(id, t) {
                return Some(t);
            }
        }
        Some(rounded)
    }

    /// Whether `t`, resource `id`'s earliest deadline, is a health check.
    fn is_health_check(&self, id: ResId, t: Instant) -> bool {
        let r = &self.res[id];
        r.in_flight.is_none()
            && r.terminating.is_none()
            && r.state == State::Online
            && (r.looks_alive_at == Some(t) || r.is_alive_at == Some(t))
    }

    /// The earliest deadline of one resource (its group's included).
    fn deadline_of(&self, id: ResId) -> Option<Instant> {
        let r = &self.res[id];
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(t) = &r.terminating {
            consider(Some(t.deadline));
        }
        if let Some(c) = &r.in_flight {
            consider(Some(call_deadline(c, &r.spec.policy)));
        } else if r.terminating.is_none() {
            if r.state == State::Online {
                consider(r.looks_alive_at);
                consider(r.is_alive_at);
            }
            // Only a resource at rest acts on these (a tick skips busy
            // ones); counting them while busy would wake the loop for
            // nothing until the call ends.
            consider(r.restart_at);
            consider(r.retry_at);
        }
        consider(self.groups[r.group].failed_until);
        next
    }

    /// Checks that the incremental bookkeeping agrees with a full scan:
    /// every deadline is filed where it belongs, and no resource has a step
    /// left to take. For tests; panics with the resource at fault.
    pub fn check_settled(&self, now: Instant) {
        for id in 0..self.res.len() {
            assert_eq!(
                self.timer_of[id],
                self.deadline_of(id),
                "deadline of {:?} not refiled",
                self.res[id].spec.name
            );
            let mut probe = self.clone();
            let mut out = Vec::new();
            probe.step(now, id, &mut out);
            assert!(
                out.is_empty(),
                "{:?} had a step left: {out:?}",
                self.res[id].spec.name
            );
        }
        let min = (0..self.res.len())
            .filter_map(|id| self.deadline_of(id))
            .min();
        assert_eq!(self.next_deadline(), min);
    }

    /// Queues a resource for `reconcile` and a deadline refresh.
    fn mark(&mut self, id: ResId) {
        self.dirty.push(id);
        if !std::mem::replace(&mut self.is_touched[id], true) {
            self.touched.push(id);
        }
    }

    fn mark_group(&mut self, group: usize) {
        for i in 0..self.groups[group].members.len() {
            self.mark(self.groups[group].members[i]);
        }
    }

    /// Re-files the deadlines of every touched resource.
    fn refresh_timers(&mut self) {
        for id in std::mem::take(&mut self.touched) {
            self.is_touched[id] = false;
            let new = self.deadline_of(id);
            let old = std::mem::replace(&mut self.timer_of[id], new);
            if old != new {
                if let Some(t) = old {
                    self.timers.remove(&(t, id));
                }
                if let Some(t) = new {
                    self.timers.insert((t, id));
                }
            }
        }
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match &event {
            Event::Command(id, _)
            | Event::Returned { id, .. }
            | Event::Progress { id, .. }
            | Event::Completed { id, .. }
            | Event::FailureNotice { id, .. }
            | Event::Terminated { id, .. }
            | Event::Adopted { id, .. }
            | Event::Opened { id, .. }
            | Event::Closed { id }
            | Event::Readiness { id, .. } => self.mark(*id),
            Event::Tick => {}
            Event::Shutdown => {
                for id in 0..self.res.len() {
                    self.mark(id);
                }
            }
        }
        match event {
            Event::Command(id, cmd) => self.command(now, id, cmd, &mut out),
            Event::Returned { id, seq, outcome } => self.returned(now, id, seq, outcome, &mut out),
            Event::Progress {
                id,
                seq,
                checkpoint,
            } => {
                if let Some(c) = self.res[id].in_flight.as_mut().filter(|c| c.seq == seq) {
                    // A checkpoint that does not grow is no progress.
                    if checkpoint > c.checkpoint {
                        c.checkpoint = checkpoint;
                        c.last_progress = now;
                    }
                }
            }
            Event::Completed { id, seq, result } => {
                let outcome = match result {
                    Ok(()) => CallOutcome::Done,
                    Err(e) => CallOutcome::Error(e),
                };
                self.finish_pending(now, id, seq, outcome, &mut out);
            }
            Event::FailureNotice { id, reason } => self.failure_notice(now, id, reason, &mut out),
            Event::Terminated { id, seq } => self.terminated(now, id, seq, &mut out),
            Event::Tick => self.tick(now, &mut out),
            Event::Adopted { id, alive } => {
                if self.res[id].life == Life::Reattaching {
                    self.res[id].life = Life::Open;
                    self.adopted(now, id, alive, &mut out);
                    self.started_one(id);
                }
            }
            Event::Opened { id, result } => self.opened(now, id, result, &mut out),
            Event::Closed { id } => self.closed(id, &mut out),
            Event::Readiness { id, ready, detail } => self.readiness(id, ready, detail, &mut out),
            Event::Shutdown => {
                self.shutting_down = true;
                for id in 0..self.res.len() {
                    let r = &mut self.res[id];
                    r.want = Want::Offline;
                    r.restart_at = None;
                    r.retry_at = None;
                    r.restart_granted = false;
                    r.restarting = false;
                    // Nothing waits for an online that is no longer wanted.
                    if r.in_flight
                        .as_ref()
                        .is_some_and(|c| c.entry == EntryPoint::Online)
                    {
                        r.reason = "stopping while coming online".into();
                        self.start_terminate(now, id, TermReason::Offline, 1, &mut out);
                    }
                }
            }
        }
        self.reconcile(now, &mut out);
        self.refresh_timers();
        out
    }

    /// What the earlier run left is watched again (`alive`), or it died
    /// while no monitor watched: a failure under the restart policy.
    fn adopted(&mut self, now: Instant, id: ResId, alive: bool, out: &mut Vec<Action>) {
        let r = &mut self.res[id];
        if r.state != State::Offline || r.in_flight.is_some() || self.shutting_down {
            return;
        }
        // A reload replaced it during the start: watched until it is down,
        // then opened anew (and brought back).
        if !r.reopen {
            r.want = Want::Online;
        }
        if alive {
            r.looks_alive_at = Some(later(now, r.spec.policy.looks_alive_interval));
            r.is_alive_at = Some(later(now, r.spec.policy.is_alive_interval));
            self.set_state(
                now,
                id,
                State::Online,
                "adopted after a monitor restart",
                out,
            );
        } else {
            let why = "its processes died while no monitor watched".into();
            self.fail(now, id, FailureClass::Lost, why, out);
        }
    }

    /// Whether the resource is wanted online; one whose start or open is
    /// still out counts as it will be.
    fn wants_online(&self, id: ResId) -> bool {
        let r = &self.res[id];
        r.want == Want::Online || r.then != Then::Stay || r.life == Life::Reattaching
    }

    /// The start of [`start`](Self::start) for `id` is carried out.
    fn started_one(&mut self, id: ResId) {
        if std::mem::take(&mut self.res[id].starting) {
            self.starting -= 1;
        }
    }

    fn opened(
        &mut self,
        now: Instant,
        id: ResId,
        result: Result<(), String>,
        out: &mut Vec<Action>,
    ) {
        if self.res[id].life != Life::Opening {
            return; // nothing asked for it
        }
        let r = &mut self.res[id];
        let then = std::mem::replace(&mut r.then, Then::Stay);
        let failed = result.is_err();
        r.life = if failed { Life::Closed } else { Life::Open };
        // An open that a reload overtook is closed and opened anew before
        // what was wanted comes back; one that failed is opened with the new
        // config anyway.
        if failed {
            r.reopen = false;
        }
        let restore = if r.reopen {
            Vec::new()
        } else {
            std::mem::take(&mut r.restore)
        };
        // What was wanted before a replacement comes back (a provider that
        // does not open stays failed, and its dependents wait for it).
        for &w in &restore {
            if !self.res[w].retired {
                self.command(now, w, Command::Online, out);
            }
        }
        match result {
            Err(why) => {
                let want_online = then != Then::Stay
                    || self.res[id].want == Want::Online
                    || restore.contains(&id);
                self.open_failed(now, id, why, want_online, out);
            }
            Ok(()) => match then {
                Then::Reattach if !self.shutting_down => {
                    self.res[id].life = Life::Reattaching;
                    out.push(Action::Reattach { id });
                    return;
                }
                Then::Lost => self.adopted(now, id, false, out),
                Then::Online => self.command(now, id, Command::Online, out),
                Then::Reattach | Then::Stay => {}
            },
        }
        self.started_one(id);
    }

    /// An open failed: `failed` with the reason, nothing runs; wanted
    /// online, it is opened again after `retry_period_on_failure`.
    fn open_failed(
        &mut self,
        now: Instant,
        id: ResId,
        reason: String,
        want_online: bool,
        out: &mut Vec<Action>,
    ) {
        let retry = self.res[id].spec.policy.retry_period_on_failure;
        let wanted = want_online && !self.shutting_down;
        let r = &mut self.res[id];
        r.restart_granted = false;
        r.restart_at = None;
        r.want = if wanted { Want::Online } else { Want::Offline };
        r.retry_at = wanted.then(|| later(now, retry));
        self.set_state(now, id, State::Failed, &reason, out);
        out.push(Action::Failed {
            id,
            class: FailureClass::Open,
        });
    }

    fn closed(&mut self, id: ResId, out: &mut Vec<Action>) {
        let r = &mut self.res[id];
        if r.life != Life::Closing {
            return;
        }
        if std::mem::take(&mut r.releasing) {
            r.life = Life::Released;
            return;
        }
        r.life = Life::Closed;
        // Retired meanwhile: its next step releases it.
        if std::mem::take(&mut r.reopen) && !r.retired && !self.shutting_down {
            r.life = Life::Opening;
            out.push(Action::Open { id, fresh: true });
        }
    }

    /// The lifecycle's part of a step: closes what is to be released or
    /// opened anew once it is down, opens what is wanted and not open.
    /// True when entry points must wait (it is not open).
    fn life_step(&mut self, id: ResId, out: &mut Vec<Action>) -> bool {
        let shutting_down = self.shutting_down;
        let r = &mut self.res[id];
        let close = |r: &mut Res, out: &mut Vec<Action>| {
            r.life = Life::Closing;
            r.releasing = r.retired;
            out.push(Action::Close {
                id,
                release: r.retired,
            });
        };
        match r.life {
            Life::Open => {
                if (r.retired || r.reopen) && r.at_rest() {
                    close(r, out);
                    return true;
                }
                false
            }
            Life::Closed => {
                if r.retired {
                    close(r, out);
                } else if !shutting_down
                    && r.want == Want::Online
                    && (r.state == State::Offline || r.restart_granted)
                {
                    r.life = Life::Opening;
                    out.push(Action::Open { id, fresh: true });
                }
                true
            }
            Life::Opening | Life::Reattaching | Life::Closing | Life::Released => true,
        }
    }

    fn command(&mut self, now: Instant, id: ResId, cmd: Command, out: &mut Vec<Action>) {
        match cmd {
            Command::Online => {
                if self.shutting_down {
                    return;
                }
                // Providers first: wanting a resource online wants its providers too.
                for i in self.closure(id, |r| &r.providers) {
                    self.mark(i);
                    let r = &mut self.res[i];
                    r.want = Want::Online;
                    if r.state == State::Failed && r.restart_at.is_none() {
                        // An operator's online is a fresh start.
                        r.restart_times.clear();
                        r.backoff_steps = 0;
                        r.retry_at = None;
                        r.restart_granted = true;
                    }
                    let g = r.group;
                    if self.groups[g].failed_until.take().is_some() {
                        self.mark_group(g);
                    }
                }
            }
            Command::Offline => {
                for i in self.closure(id, |r| &r.dependents) {
                    self.mark(i);
                    let r = &mut self.res[i];
                    r.want = Want::Offline;
                    r.restart_at = None;
                    r.retry_at = None;
                    r.restart_granted = false;
                    r.restarting = false;
                    if r.state == State::Failed && r.terminating.is_none() {
                        self.set_state(now, i, State::Offline, "taken offline by operator", out);
                    }
                }
            }
            Command::Restart => self.restart(now, id, out),
            Command::Maintenance(on) => self.maintenance(now, id, on, out),
            Command::Terminate { exit_code } => {
                let r = &mut self.res[id];
                r.want = Want::Offline;
                r.restart_at = None;
                r.retry_at = None;
                r.restart_granted = false;
                r.restarting = false;
                if r.terminating.is_some() {
                    return; // the first terminate wins
                }
                if r.state.is_down() && r.in_flight.is_none() {
                    if r.state == State::Failed {
                        self.set_state(now, id, State::Offline, "terminated by operator", out);
                    }
                    return;
                }
                // Not "online" while its tree is being killed, however long
                // that takes: it is on its way down.
                if !r.state.is_down() && r.state != State::OfflinePending {
                    let why = format!("terminating (exit code {exit_code}), by operator");
                    self.set_state(now, id, State::OfflinePending, &why, out);
                }
                self.start_terminate(now, id, TermReason::Operator, exit_code, out);
            }
        }
    }

    /// [`Command::Restart`]: down with its dependents, then back with
    /// those that were wanted online.
    fn restart(&mut self, now: Instant, id: ResId, out: &mut Vec<Action>) {
        if self.shutting_down || self.res[id].retired {
            return;
        }
        if self.res[id].at_rest() {
            return self.command(now, id, Command::Online, out);
        }
        let mut back: Vec<ResId> = self
            .closure(id, |r| &r.dependents)
            .into_iter()
            .filter(|&d| d != id && self.wants_online(d))
            .collect();
        back.insert(0, id);
        self.command(now, id, Command::Offline, out);
        let r = &mut self.res[id];
        r.restarting = true;
        r.bring_back = back;
    }

    /// [`Command::Maintenance`].
    fn maintenance(&mut self, now: Instant, id: ResId, on: bool, out: &mut Vec<Action>) {
        let r = &mut self.res[id];
        if std::mem::replace(&mut r.maintenance, on) == on {
            return;
        }
        if on {
            // A restart decided before is not carried out meanwhile; the
            // policy decides again once maintenance ends.
            if r.restart_at.take().is_some() {
                r.restart_times.pop_back();
                r.backoff_steps = r.backoff_steps.saturating_sub(1);
            }
            return;
        }
        // Checked at once; what it finds is acted on.
        r.flagged = false;
        r.health_fails = 0;
        r.health_passes = 0;
        let (state, at_rest) = (r.state, r.at_rest());
        if state == State::Online && r.terminating.is_none() {
            r.check_now = true;
        } else if state == State::Failed
            && at_rest
            && r.want == Want::Online
            && r.restart_at.is_none()
            && r.retry_at.is_none()
            && !r.restart_granted
        {
            self.restart_policy(now, id, out);
        }
    }

    /// One readiness check's answer; the thresholds decide.
    fn readiness(&mut self, id: ResId, ok: bool, detail: String, out: &mut Vec<Action>) {
        let r = &mut self.res[id];
        if !r.spec.readiness || r.state != State::Online || r.terminating.is_some() {
            return;
        }
        let p = &r.spec.policy;
        let (fails, passes) = (p.failure_threshold.max(1), p.success_threshold.max(1));
        if ok {
            r.ready_fails = 0;
            r.ready_passes = r.ready_passes.saturating_add(1);
            if r.ready || r.ready_passes < passes {
                return;
            }
            r.ready = true;
            out.push(Action::Readiness {
                id,
                ready: true,
                reason: "ready".into(),
            });
        } else {
            r.ready_passes = 0;
            r.ready_fails = r.ready_fails.saturating_add(1);
            if !r.ready || r.ready_fails < fails {
                return;
            }
            r.ready = false;
            let reason = match detail.as_str() {
                "" => "not ready".to_string(),
                d => format!("not ready: {d}"),
            };
            out.push(Action::Readiness {
                id,
                ready: false,
                reason,
            });
        }
        // Dependents waiting to start look again.
        for i in 0..self.res[id].dependents.len() {
            self.mark(self.res[id].dependents[i]);
        }
    }

    fn returned(
        &mut self,
        now: Instant,
        id: ResId,
        seq: u64,
        outcome: CallOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(call) = self.res[id].in_flight.as_ref().filter(|c| c.seq == seq) else {
            return; // stale: cancelled by terminate
        };
        match call.entry {
            EntryPoint::Online | EntryPoint::Offline => {
                if outcome == CallOutcome::Pending {
                    let c = self.res[id].in_flight.as_mut().expect("in flight");
                    c.last_progress = now;
                } else {
                    self.finish_pending(now, id, seq, outcome, out);
                }
            }
            EntryPoint::LooksAlive => {
                self.res[id].in_flight = None;
                match outcome {
                    CallOutcome::Alive(true) => {
                        let r = &mut self.res[id];
                        r.looks_alive_at = Some(later(now, r.spec.policy.looks_alive_interval));
                    }
                    CallOutcome::Alive(false) => {
                        let r = &mut self.res[id];
                        r.looks_alive_at = Some(later(now, r.spec.policy.looks_alive_interval));
                        r.check_now = true;
                        r.suspicion = "looks_alive returned false".into();
                        r.suspicion_noticed = false;
                    }
                    other => self.fail(
                        now,
                        id,
                        FailureClass::Health,
                        format!("looks_alive: {}", describe(&other)),
                        out,
                    ),
                }
            }
            EntryPoint::IsAlive => {
                self.res[id].in_flight = None;
                match outcome {
                    CallOutcome::Alive(true) => {
                        let r = &mut self.res[id];
                        r.check_now = false;
                        r.suspicion.clear();
                        r.suspicion_noticed = false;
                        r.is_alive_at = Some(later(now, r.spec.policy.is_alive_interval));
                        if r.health_fails > 0 || r.flagged {
                            r.health_passes = r.health_passes.saturating_add(1);
                            if r.health_passes >= r.spec.policy.success_threshold.max(1) {
                                r.health_fails = 0;
                                r.health_passes = 0;
                                let why = if std::mem::take(&mut r.flagged) {
                                    "maintenance: is_alive passes again"
                                } else {
                                    "is_alive passes again"
                                };
                                self.set_state(now, id, State::Online, why, out);
                            }
                        }
                    }
                    CallOutcome::Alive(false) if self.below_threshold(now, id, out) => {}
                    CallOutcome::Alive(false) => {
                        let r = &mut self.res[id];
                        let class = if std::mem::take(&mut r.suspicion_noticed) {
                            FailureClass::Notice
                        } else {
                            FailureClass::Health
                        };
                        let why = match std::mem::take(&mut r.suspicion).as_str() {
                            "" => "is_alive returned false".to_string(),
                            r => format!("is_alive returned false ({r})"),
                        };
                        self.fail(now, id, class, why, out)
                    }
                    other if self.below_threshold(now, id, out) => drop(other),
                    other => self.fail(
                        now,
                        id,
                        FailureClass::Health,
                        format!("is_alive: {}", describe(&other)),
                        out,
                    ),
                }
            }
            _ => self.res[id].in_flight = None,
        }
    }

    /// A failed `is_alive` that `failure_threshold` does not count as a
    /// failure yet: reported, and checked again at `is_alive_interval` (or
    /// sooner, when `looks_alive` says no). A failure the resource
    /// reported itself is never held back.
    fn below_threshold(&mut self, now: Instant, id: ResId, out: &mut Vec<Action>) -> bool {
        let r = &mut self.res[id];
        r.health_passes = 0;
        r.health_fails = r.health_fails.saturating_add(1);
        let threshold = r.spec.policy.failure_threshold.max(1);
        if r.suspicion_noticed || r.health_fails >= threshold {
            return false;
        }
        r.check_now = false;
        r.suspicion.clear();
        r.is_alive_at = Some(later(now, r.spec.policy.is_alive_interval));
        let why = format!(
            "is_alive returned false ({} of failure_threshold {threshold})",
            r.health_fails
        );
        self.set_state(now, id, State::Online, &why, out);
        true
    }

    fn finish_pending(
        &mut self,
        now: Instant,
        id: ResId,
        seq: u64,
        outcome: CallOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(call) = self.res[id].in_flight.as_ref().filter(|c| c.seq == seq) else {
            return;
        };
        let entry = call.entry;
        self.res[id].in_flight = None;
        match (entry, outcome) {
            (EntryPoint::Online, CallOutcome::Done) => {
                let r = &mut self.res[id];
                r.looks_alive_at = Some(later(now, r.spec.policy.looks_alive_interval));
                r.is_alive_at = Some(later(now, r.spec.policy.is_alive_interval));
                r.check_now = false;
                r.restart_granted = false;
                self.set_state(now, id, State::Online, "online", out);
            }
            (EntryPoint::Online, other) => {
                let why = format!("online failed: {}", describe(&other));
                self.fail(now, id, FailureClass::Online, why, out)
            }
            (EntryPoint::Offline, CallOutcome::Done) => {
                self.set_state(now, id, State::Offline, "offline", out);
                self.stopped(now, id, Rung::Offline, out);
            }
            (EntryPoint::Offline, other) => {
                let why = format!("offline failed: {}", describe(&other));
                self.res[id].reason = why;
                self.start_terminate(now, id, TermReason::Offline, 1, out);
            }
            _ => {}
        }
    }

    fn failure_notice(&mut self, now: Instant, id: ResId, reason: String, out: &mut Vec<Action>) {
        let r = &mut self.res[id];
        if r.terminating.is_some() {
            return;
        }
        match r.state {
            State::Online => {
                // Same answer as a looks_alive that said no: is_alive at once.
                r.check_now = true;
                r.suspicion = reason;
                r.suspicion_noticed = true;
            }
            State::OnlinePending => {
                let why = format!("while coming online: {reason}");
                self.fail(now, id, FailureClass::Notice, why, out)
            }
            _ => {}
        }
    }

    fn terminated(&mut self, now: Instant, id: ResId, seq: u64, out: &mut Vec<Action>) {
        if self.res[id].terminating.as_ref().map(|t| t.seq) != Some(seq) {
            return; // an earlier termination's late report
        }
        let Some(t) = self.res[id].terminating.take() else {
            return;
        };
        // A terminate reported at or past its deadline did not finish in
        // time: what ended it was a guard of the type's own (a plugin host
        // killed for the hang), the forced rung even when the monitor's
        // tick for the same deadline has not come yet.
        let rung = if t.forced || now >= t.deadline {
            Rung::Forced
        } else {
            Rung::Terminate
        };
        match t.reason {
            TermReason::Failure => {
                // Already `failed`; now the restart policy applies.
                self.restart_policy(now, id, out);
            }
            TermReason::Offline => self.set_state(
                now,
                id,
                State::Offline,
                "terminated while going offline",
                out,
            ),
            TermReason::Operator => {
                let why = format!("terminated by operator (exit code {})", t.exit_code);
                self.set_state(now, id, State::Offline, &why, out)
            }
        }
        self.stopped(now, id, rung, out);
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let ids: Vec<ResId> = self
            .timers
            .range(..=(now, ResId::MAX))
            .map(|&(_, id)| id)
            .collect();
        for &id in &ids {
            self.mark(id);
            let g = self.res[id].group;
            if due(self.groups[g].failed_until) {
                self.groups[g].failed_until = None;
                self.mark_group(g);
            }
        }
        for id in ids {
            let r = &mut self.res[id];
            if let Some(t) = r.terminating.as_mut() {
                if t.deadline <= now {
                    let timeout = r.spec.policy.terminate_timeout;
                    t.deadline = later(now, timeout);
                    let first = !t.forced;
                    t.forced = true;
                    let exit_code = t.exit_code;
                    let seq = t.seq;
                    if first {
                        r.reason = format!(
                            "{}; terminate did not finish within {timeout:?}, killing its process tree",
                            r.reason
                        );
                    }
                    out.push(Action::ForceKill { id, exit_code, seq });
                }
                continue;
            }
            if let Some(c) = &self.res[id].in_flight {
                let policy = &self.res[id].spec.policy;
                if call_deadline(c, policy) <= now {
                    let entry = c.entry;
                    let why = match entry {
                        EntryPoint::Online | EntryPoint::Offline => format!(
                            "{entry} made no progress for {:?} (pending_timeout)",
                            policy.pending_timeout
                        ),
                        _ => format!(
                            "{entry} did not return within {:?} (deadlock_timeout)",
                            policy.deadlock_timeout
                        ),
                    };
                    if entry == EntryPoint::Offline {
                        self.res[id].reason = why;
                        self.start_terminate(now, id, TermReason::Offline, 1, out);
                    } else {
                        self.fail(now, id, FailureClass::Timeout, why, out);
                    }
                }
                continue;
            }
            let r = &mut self.res[id];
            if due(r.restart_at) {
                r.restart_at = None;
                r.restart_granted = true;
            }
            if due(r.retry_at) {
                r.retry_at = None;
                r.restart_times.clear();
                r.backoff_steps = 0;
                r.restart_granted = true;
            }
            if r.state == State::Online {
                if due(r.is_alive_at) {
                    r.check_now = true;
                }
                if due(r.looks_alive_at) && !r.check_now {
                    self.call(now, id, EntryPoint::LooksAlive, out);
                }
            }
        }
    }

    /// Brings every resource one step closer to what is wanted of it.
    fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        // A step that changes a state marks the neighbours whose decision
        // depends on it, so the worklist runs until nothing moves.
        while let Some(id) = self.dirty.pop() {
            self.step(now, id, out);
        }
    }

    fn step(&mut self, now: Instant, id: ResId, out: &mut Vec<Action>) {
        if self.res[id].terminating.is_some() || self.life_step(id, out) {
            return;
        }
        let r = &self.res[id];
        if r.restarting && r.at_rest() {
            // Down: what the restart took down comes back.
            let back = std::mem::take(&mut self.res[id].bring_back);
            self.res[id].restarting = false;
            for b in back {
                if !self.res[b].retired {
                    self.command(now, b, Command::Online, out);
                }
            }
        }
        let held = self.wanted_online(id) || self.res[id].kept_by_maintenance();
        let r = &self.res[id];
        // Taken offline now: nothing of it is needed any more.
        let going_offline = r.state == State::Online
            && !held
            && r.dependents.iter().all(|&d| self.res[d].state.is_down());
        // Its providers are ready too: it may start.
        let may_start = held
            && r.providers
                .iter()
                .all(|&p| self.res[p].ready || !self.res[p].spec.readiness);
        if let Some(c) = &r.in_flight {
            if !(going_offline && c.entry.is_health_check()) {
                return;
            }
            // The stop does not wait for a health check: it is cancelled.
            let seq = c.seq;
            let r = &mut self.res[id];
            r.in_flight = None;
            out.push(Action::CancelCheck { id, seq });
        }
        if going_offline {
            self.res[id].check_now = false;
            self.res[id].stop_started.get_or_insert(now);
            self.call(now, id, EntryPoint::Offline, out);
            self.set_state(now, id, State::OfflinePending, "going offline", out);
            return;
        }
        let r = &self.res[id];
        match r.state {
            State::Online if r.check_now => self.call(now, id, EntryPoint::IsAlive, out),
            State::Offline if may_start => {
                self.call(now, id, EntryPoint::Online, out);
                self.set_state(now, id, State::OnlinePending, "coming online", out);
            }
            State::Failed if may_start && r.restart_granted => {
                // The grant is used up: a failure of this start must earn a new one.
                self.res[id].restart_granted = false;
                self.res[id].restarts += 1;
                self.call(now, id, EntryPoint::Online, out);
                self.set_state(now, id, State::OnlinePending, "restarting", out);
            }
            _ => {}
        }
    }

    /// Whether the resource should be online now: wanted, its group not held
    /// down, and every provider online.
    fn wanted_online(&self, id: ResId) -> bool {
        let r = &self.res[id];
        r.want == Want::Online
            && self.groups[r.group].failed_until.is_none()
            && r.providers
                .iter()
                .all(|&p| self.res[p].state == State::Online)
    }

    fn call(&mut self, now: Instant, id: ResId, entry: EntryPoint, out: &mut Vec<Action>) {
        self.mark(id);
        self.seq += 1;
        let seq = self.seq;
        self.res[id].in_flight = Some(InFlight {
            entry,
            seq,
            started: now,
            last_progress: now,
            checkpoint: 0,
        });
        out.push(Action::Call { id, entry, seq });
    }

    /// Marks the resource failed and terminates it.
    fn fail(
        &mut self,
        now: Instant,
        id: ResId,
        class: FailureClass,
        why: String,
        out: &mut Vec<Action>,
    ) {
        let r = &mut self.res[id];
        if r.maintenance && r.state == State::Online && r.terminating.is_none() {
            // Seen and reported; nothing acts on it until maintenance ends.
            if let Some(c) = r.in_flight.take_if(|c| c.entry.is_health_check()) {
                out.push(Action::CancelCheck { id, seq: c.seq });
            }
            r.check_now = false;
            r.suspicion.clear();
            r.suspicion_noticed = false;
            r.flagged = true;
            r.health_passes = 0;
            r.is_alive_at = Some(later(now, r.spec.policy.is_alive_interval));
            let why = format!("maintenance: {why}; no action taken");
            return self.set_state(now, id, State::Online, &why, out);
        }
        // Online for a whole restart_period: restarts start over from
        // restart_delay.
        if r.state == State::Online
            && now.saturating_duration_since(r.since) >= r.spec.policy.restart_period
        {
            r.backoff_steps = 0;
        }
        self.set_state(now, id, State::Failed, &why, out);
        out.push(Action::Failed { id, class });
        self.start_terminate(now, id, TermReason::Failure, 1, out);
    }

    fn start_terminate(
        &mut self,
        now: Instant,
        id: ResId,
        reason: TermReason,
        exit_code: i32,
        out: &mut Vec<Action>,
    ) {
        self.mark(id);
        self.seq += 1;
        let seq = self.seq;
        let r = &mut self.res[id];
        // Cancelled: its late return is ignored.
        if let Some(c) = r.in_flight.take().filter(|c| c.entry.is_health_check()) {
            out.push(Action::CancelCheck { id, seq: c.seq });
        }
        r.check_now = false;
        r.stop_started.get_or_insert(now);
        r.terminating = Some(Terminating {
            seq,
            started: now,
            reason,
            exit_code,
            deadline: later(now, r.spec.policy.terminate_timeout),
            forced: false,
        });
        out.push(Action::Terminate { id, exit_code, seq });
    }

    /// A stop ended by `rung`.
    fn stopped(&mut self, now: Instant, id: ResId, rung: Rung, out: &mut Vec<Action>) {
        let started = self.res[id].stop_started.take().unwrap_or(now);
        out.push(Action::Stopped {
            id,
            rung,
            took: now.saturating_duration_since(started),
        });
    }

    /// [`after_failure`](Self::after_failure), with a notice when it
    /// changed the reason (what it decided: no restart, past the threshold).
    fn restart_policy(&mut self, now: Instant, id: ResId, out: &mut Vec<Action>) {
        let before = self.res[id].reason.clone();
        self.after_failure(now, id, out);
        let r = &self.res[id];
        if r.reason != before {
            out.push(Action::Notify(Notice {
                id,
                state: r.state,
                reason: r.reason.clone(),
            }));
        }
    }

    /// The restart policy, once a failed resource is down.
    fn after_failure(&mut self, now: Instant, id: ResId, out: &mut Vec<Action>) {
        if self.shutting_down || self.res[id].want == Want::Offline {
            return;
        }
        let r = &mut self.res[id];
        let p = r.spec.policy.clone();
        if p.restart_action == RestartAction::None {
            r.reason = format!("{} (restart_action = none)", r.reason);
            return;
        }
        if r.maintenance {
            r.reason = format!("{} (maintenance: not restarted)", r.reason);
            return;
        }
        while r
            .restart_times
            .front()
            .is_some_and(|&t| now.duration_since(t) >= p.restart_period)
        {
            r.restart_times.pop_front();
        }
        if (r.restart_times.len() as u32) < p.restart_threshold {
            r.restart_times.push_back(now);
            let delay =
                p.restart_backoff
                    .delay(p.restart_delay, r.backoff_steps, p.restart_delay_max);
            r.backoff_steps = r.backoff_steps.saturating_add(1);
            r.restart_at = Some(later(now, delay));
            return;
        }
        r.reason = format!(
            "{}; {} restarts within {:?} reached restart_threshold, retrying after {:?}",
            r.reason, p.restart_threshold, p.restart_period, p.retry_period_on_failure
        );
        r.retry_at = Some(later(now, p.retry_period_on_failure));
        if p.restart_action == RestartAction::RestartThenFailover {
            let (g, group) = (r.group, r.spec.group.clone());
            self.groups[g].failed_until = Some(later(now, p.retry_period_on_failure));
            self.mark_group(g);
            out.push(Action::Failover { group });
        }
    }

    fn set_state(
        &mut self,
        now: Instant,
        id: ResId,
        state: State,
        why: &str,
        out: &mut Vec<Action>,
    ) {
        let r = &mut self.res[id];
        if r.state == state && r.reason == why {
            return;
        }
        // Neighbours decide on this state: providers wait for their
        // dependents to be down, dependents for their providers to be online.
        debug_assert!(
            r.state.may_become(state),
            "{} may not move from {} to {state} ({why})",
            r.spec.name,
            r.state
        );
        let neighbours: Vec<ResId> = r.providers.iter().chain(&r.dependents).copied().collect();
        let r = &mut self.res[id];
        if (state == State::Online) != (r.state == State::Online) {
            r.reset_checks();
        }
        r.state = state;
        r.since = now;
        r.reason = why.to_string();
        out.push(Action::Notify(Notice {
            id,
            state,
            reason: why.to_string(),
        }));
        self.mark(id);
        for n in neighbours {
            self.mark(n);
        }
    }

    /// `id` and everything reachable from it through `next`.
    fn closure(&self, id: ResId, next: impl Fn(&Res) -> &Vec<ResId>) -> Vec<ResId> {
        let mut seen = vec![false; self.res.len()];
        let mut stack = vec![id];
        let mut out = Vec::new();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push(i);
            stack.extend(next(&self.res[i]).iter().copied());
        }
        out
    }
}

/// `at + d`, or the latest instant the clock can hold: a deadline never
/// overflows, whatever duration reached the core (config durations are bounded
/// when parsed, but the core does not rely on that).
pub fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(|| {
        // Halve until it fits: at most 64 steps, and `at` itself always does.
        let mut d = d;
        loop {
            d /= 2;
            if let Some(t) = at.checked_add(d) {
                return t;
            }
        }
    })
}

fn call_deadline(c: &InFlight, p: &Policy) -> Instant {
    match c.entry {
        EntryPoint::Online | EntryPoint::Offline => later(c.last_progress, p.pending_timeout),
        _ => later(c.started, p.deadlock_timeout),
    }
}

fn describe(outcome: &CallOutcome) -> String {
    match outcome {
        CallOutcome::Error(e) => e.clone(),
        CallOutcome::Alive(a) => format!("answered {a}"),
        CallOutcome::Done => "done".into(),
        CallOutcome::Pending => "pending".into(),
    }
}

fn find_cycle(providers: &[Vec<ResId>]) -> Option<Vec<ResId>> {
    // 0 = new, 1 = on the path, 2 = done
    fn visit(
        i: ResId,
        g: &[Vec<ResId>],
        mark: &mut [u8],
        path: &mut Vec<ResId>,
    ) -> Option<Vec<ResId>> {
        mark[i] = 1;
        path.push(i);
        for &j in &g[i] {
            if mark[j] == 1 {
                let start = path.iter().position(|&p| p == j).expect("on path");
                let mut cycle = path[start..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if mark[j] == 0 {
                if let Some(c) = visit(j, g, mark, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; providers.len()];
    for i in 0..providers.len() {
        if mark[i] == 0 {
            if let Some(c) = visit(i, providers, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}
