//! Every rule of docs/design.md §2 and §3 as a table row, driven with tokio's
//! paused clock: the harness sleeps until the monitor's next deadline (the
//! paused clock jumps there at once) and answers its calls as a scripted
//! resource would.

use resmon_contract::{EntryPoint, Policy, RestartAction, State};
use resmon_core::{
    Action, CallOutcome, Command, Event, Life, Monitor, ResId, ResourceSpec, StartFrom,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// How a scripted resource answers.
#[derive(Clone, Debug)]
struct Behaviour {
    online: Answer,
    offline: Answer,
    looks_alive: bool,
    is_alive: bool,
    /// `terminate` returns and the tree is gone at once; if false, only the
    /// forced kill ends it.
    terminate_works: bool,
    /// `is_alive` never returns (a hung probe).
    is_alive_hangs: bool,
    /// `open` fails with this.
    open_error: Option<String>,
    /// `open` does not answer until the test says so.
    open_hangs: bool,
    /// What a reattach finds: the earlier run's processes alive.
    reattach_alive: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Done,
    Error,
    /// Returns pending and never reports again.
    PendingForever,
    /// Never returns.
    Hang,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            online: Answer::Done,
            offline: Answer::Done,
            looks_alive: true,
            is_alive: true,
            terminate_works: true,
            is_alive_hangs: false,
            open_error: None,
            open_hangs: false,
            reattach_alive: true,
        }
    }
}

/// One line of what happened, as `(ms since start, text)`.
type Line = (u128, String);

struct Sim {
    m: Monitor,
    start: Instant,
    behaviour: Vec<Behaviour>,
    /// Pending calls the test may finish by hand: id -> seq.
    pending: HashMap<ResId, u64>,
    trace: Vec<Line>,
    /// Stops with their rung, failures with their class.
    ends: Vec<String>,
    /// The seq of the last `terminate` that has not reported.
    terminating: HashMap<ResId, u64>,
}

fn spec(name: &str, deps: &[&str], policy: Policy) -> ResourceSpec {
    ResourceSpec {
        name: name.into(),
        group: "g".into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        policy,
        autostart: false,
        readiness: false,
    }
}

fn policy() -> Policy {
    Policy::default()
}

impl Sim {
    fn new(specs: Vec<ResourceSpec>) -> Sim {
        let n = specs.len();
        Sim {
            m: Monitor::new(specs, Instant::now()).expect("valid specs"),
            start: Instant::now(),
            behaviour: vec![Behaviour::default(); n],
            pending: HashMap::new(),
            trace: Vec::new(),
            ends: Vec::new(),
            terminating: HashMap::new(),
        }
    }

    fn one(policy: Policy, b: Behaviour) -> Sim {
        let mut sim = Sim::new(vec![spec("r", &[], policy)]);
        sim.behaviour[0] = b;
        sim
    }

    fn ms(&self) -> u128 {
        (Instant::now() - self.start).as_millis()
    }

    fn name(&self, id: ResId) -> String {
        self.m.view(id).spec.name.clone()
    }

    fn log(&mut self, text: String) {
        let t = self.ms();
        self.trace.push((t, text));
    }

    /// Feeds an event and answers every resulting action, recursively.
    fn feed(&mut self, event: Event) {
        let actions = self.m.handle(Instant::now(), event);
        self.m.check_settled(Instant::now());
        for a in actions {
            self.act(a);
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Call { id, entry, seq } => {
                let n = self.name(id);
                self.log(format!("call {n} {entry}"));
                let b = self.behaviour[id].clone();
                let answer = match entry {
                    EntryPoint::Online => b.online,
                    EntryPoint::Offline => b.offline,
                    EntryPoint::LooksAlive => {
                        return self.feed(Event::Returned {
                            id,
                            seq,
                            outcome: CallOutcome::Alive(b.looks_alive),
                        })
                    }
                    EntryPoint::IsAlive if b.is_alive_hangs => {
                        self.pending.insert(id, seq);
                        return;
                    }
                    EntryPoint::IsAlive => {
                        return self.feed(Event::Returned {
                            id,
                            seq,
                            outcome: CallOutcome::Alive(b.is_alive),
                        })
                    }
                    other => panic!("unexpected call {other}"),
                };
                let outcome = match answer {
                    Answer::Done => CallOutcome::Done,
                    Answer::Error => CallOutcome::Error("boom".into()),
                    Answer::PendingForever => {
                        self.pending.insert(id, seq);
                        CallOutcome::Pending
                    }
                    Answer::Hang => {
                        self.pending.insert(id, seq);
                        return;
                    }
                };
                self.feed(Event::Returned { id, seq, outcome });
            }
            Action::Terminate { id, exit_code, seq } => {
                let n = self.name(id);
                self.log(format!("terminate {n} {exit_code}"));
                if self.behaviour[id].terminate_works {
                    self.feed(Event::Terminated { id, seq });
                } else {
                    self.terminating.insert(id, seq);
                }
            }
            Action::ForceKill { id, seq, .. } => {
                let n = self.name(id);
                self.log(format!("force-kill {n}"));
                // A late report of an older termination changes nothing.
                self.feed(Event::Terminated { id, seq: seq - 1 });
                assert!(self.m.view(id).terminating);
                self.feed(Event::Terminated { id, seq });
            }
            Action::CancelCheck { id, seq } => {
                let n = self.name(id);
                self.log(format!("cancel-check {n}"));
                assert_eq!(
                    self.pending.remove(&id),
                    Some(seq),
                    "cancelled what is in flight"
                );
            }
            Action::Failover { group } => self.log(format!("failover {group}")),
            Action::Stopped { id, rung, took } => {
                let n = self.name(id);
                self.ends
                    .push(format!("{n} stopped by {} in {took:?}", rung.as_str()));
            }
            Action::Failed { id, class } => {
                let n = self.name(id);
                self.ends.push(format!("{n} failed: {}", class.as_str()));
            }
            Action::Notify(n) => {
                let name = self.name(n.id);
                self.log(format!("{name} {}", n.state));
            }
            Action::Readiness { id, ready, .. } => {
                let n = self.name(id);
                self.log(format!("{n} {}", if ready { "ready" } else { "not ready" }));
            }
            Action::Open { id, fresh } => {
                let n = self.name(id);
                self.log(format!("open {n}{}", if fresh { "" } else { " keeping" }));
                let b = &self.behaviour[id];
                if !b.open_hangs {
                    let result = b.open_error.clone().map_or(Ok(()), Err);
                    self.feed(Event::Opened { id, result });
                }
            }
            Action::Reattach { id } => {
                let n = self.name(id);
                self.log(format!("reattach {n}"));
                let alive = self.behaviour[id].reattach_alive;
                self.feed(Event::Adopted { id, alive });
            }
            Action::Close { id, release } => {
                let n = self.name(id);
                self.log(format!("{} {n}", if release { "release" } else { "close" }));
                self.feed(Event::Closed { id });
            }
        }
    }

    /// The monitor's start, each resource as `from` says.
    fn start(&mut self, from: &[StartFrom]) {
        for a in self.m.start(Instant::now(), from) {
            self.act(a);
        }
        self.m.check_settled(Instant::now());
    }

    /// A reload to `specs`, replacing the resources named in `replace`.
    fn reconfigure(
        &mut self,
        specs: Vec<ResourceSpec>,
        replace: &[&str],
    ) -> resmon_core::Reconfigured {
        let replace: Vec<String> = replace.iter().map(|r| r.to_string()).collect();
        let mut r = self.m.reconfigure(Instant::now(), specs, &replace).unwrap();
        self.behaviour.resize(self.m.len(), Behaviour::default());
        for a in std::mem::take(&mut r.actions) {
            self.act(a);
        }
        self.m.check_settled(Instant::now());
        r
    }

    fn life(&self, id: ResId) -> Life {
        self.m.view(id).life
    }

    fn cmd(&mut self, name: &str, c: Command) {
        let id = self.m.id(name).expect("resource");
        self.feed(Event::Command(id, c));
    }

    fn online(&mut self, name: &str) {
        self.cmd(name, Command::Online)
    }

    /// Lets virtual time run for `d`, waking at every deadline.
    async fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let mut wakes = 0;
        while let Some(next) = self.m.next_deadline().filter(|&n| n <= end) {
            // A deadline that a tick does not move is a busy loop in the daemon.
            wakes += 1;
            assert!(
                wakes < 10_000,
                "deadlines do not advance: {next:?}, last: {:?}",
                self.texts().iter().rev().take(8).collect::<Vec<_>>()
            );
            tokio::time::sleep_until(next).await;
            self.feed(Event::Tick);
        }
        tokio::time::sleep_until(end).await;
    }

    fn state(&self, name: &str) -> State {
        self.m.state(self.m.id(name).unwrap())
    }

    fn texts(&self) -> Vec<String> {
        self.trace.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Times (ms) at which a line containing `needle` was logged.
    fn times(&self, needle: &str) -> Vec<u128> {
        self.trace
            .iter()
            .filter(|(_, t)| t.contains(needle))
            .map(|(ms, _)| *ms)
            .collect()
    }

    fn count(&self, needle: &str) -> usize {
        self.times(needle).len()
    }
}

#[tokio::test(start_paused = true)]
async fn online_then_health_checks_on_their_intervals() {
    let mut sim = Sim::one(policy(), Behaviour::default());
    sim.online("r");
    assert_eq!(sim.state("r"), State::Online);
    sim.run_for(60 * S).await;
    // looks_alive every 5 s, is_alive every 60 s (at 60 s it replaces looks_alive).
    let la = sim.times("call r looks_alive");
    assert_eq!(la[..3], [5000, 10000, 15000]);
    assert_eq!(sim.times("call r is_alive"), vec![60000]);
}

#[tokio::test(start_paused = true)]
async fn looks_alive_false_calls_is_alive_at_once() {
    let mut p = policy();
    p.looks_alive_interval = S;
    let b = Behaviour {
        looks_alive: false,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    sim.run_for(S).await;
    assert_eq!(sim.times("call r looks_alive"), vec![1000]);
    assert_eq!(sim.times("call r is_alive"), vec![1000]);
    assert_eq!(sim.state("r"), State::Online, "is_alive said alive");
}

#[tokio::test(start_paused = true)]
async fn failure_notice_calls_is_alive_at_once() {
    let mut sim = Sim::one(policy(), Behaviour::default());
    sim.online("r");
    sim.run_for(1234 * MS).await;
    sim.behaviour[0].is_alive = false;
    let id = sim.m.id("r").unwrap();
    sim.feed(Event::FailureNotice {
        id,
        reason: "main process exited with code 1".into(),
    });
    assert_eq!(sim.times("call r is_alive"), vec![1234]);
    assert_eq!(sim.times("terminate r"), vec![1234]);
    assert!(sim.m.view(id).reason.contains("main process exited"));
}

#[tokio::test(start_paused = true)]
async fn is_alive_false_fails_and_terminates() {
    let mut p = policy();
    p.restart_action = RestartAction::None;
    let b = Behaviour {
        is_alive: false,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    sim.run_for(61 * S).await;
    let t = sim.texts();
    let i = t.iter().position(|l| l == "call r is_alive").unwrap();
    assert_eq!(t[i + 1], "r failed");
    assert_eq!(t[i + 2], "terminate r 1");
    assert_eq!(sim.state("r"), State::Failed);
    assert_eq!(
        sim.count("call r online"),
        1,
        "restart_action none: no restart"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_cancels_a_hung_health_check_at_once() {
    for how in ["offline", "terminate", "shutdown"] {
        let b = Behaviour {
            is_alive_hangs: true,
            ..Default::default()
        };
        let mut sim = Sim::one(policy(), b);
        sim.online("r");
        sim.run_for(61 * S).await;
        assert_eq!(sim.times("call r is_alive"), vec![60000], "{how}");
        match how {
            "offline" => sim.cmd("r", Command::Offline),
            "terminate" => sim.cmd("r", Command::Terminate { exit_code: 1 }),
            _ => sim.feed(Event::Shutdown),
        }
        // No wait for deadlock_timeout (300 s): the check is cancelled and
        // the stop goes on in the same instant.
        assert_eq!(sim.times("cancel-check r"), vec![61000], "{how}");
        let next = if how == "terminate" {
            "terminate r 1"
        } else {
            "call r offline"
        };
        assert_eq!(sim.times(next), vec![61000], "{how}");
        assert_eq!(sim.state("r"), State::Offline, "{how}");
        sim.run_for(400 * S).await;
        assert_eq!(
            sim.count("call r is_alive"),
            1,
            "{how}: no check once offline"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_health_check_is_cancelled_once_its_resource_stops_being_needed() {
    // A provider whose dependent goes down first: its check is cancelled
    // only when it is its turn to go offline.
    let mut sim = Sim::new(vec![
        spec("db", &[], policy()),
        spec("app", &["db"], policy()),
    ]);
    sim.behaviour[0].is_alive_hangs = true;
    sim.behaviour[1].offline = Answer::Hang;
    sim.online("app");
    sim.run_for(61 * S).await;
    sim.cmd("db", Command::Offline);
    assert_eq!(
        sim.count("cancel-check db"),
        0,
        "app is still going offline"
    );
    let app = sim.m.id("app").unwrap();
    let seq = sim.pending[&app];
    sim.feed(Event::Returned {
        id: app,
        seq,
        outcome: CallOutcome::Done,
    });
    assert_eq!(sim.times("cancel-check db"), vec![61000]);
    assert_eq!(sim.state("db"), State::Offline);
}

#[tokio::test(start_paused = true)]
async fn a_failed_open_is_a_failed_resource_that_online_opens_again() {
    let mut p = policy();
    p.retry_period_on_failure = 100 * S;
    let mut sim = Sim::new(vec![spec("bad", &[], p), spec("good", &[], policy())]);
    let bad = sim.m.id("bad").unwrap();
    sim.behaviour[bad].open_error = Some("open failed: validate-all exited 5".into());
    sim.start(&[StartFrom::Online, StartFrom::Offline]);
    assert!(sim.m.is_started());
    sim.online("good");
    assert_eq!(sim.state("bad"), State::Failed);
    assert_eq!(sim.m.view(bad).reason, "open failed: validate-all exited 5");
    assert_eq!(sim.state("good"), State::Online, "the others start");
    assert_eq!(
        sim.count("call bad"),
        0,
        "nothing runs, nothing to terminate"
    );
    assert_eq!(sim.count("terminate bad"), 0);
    // Opened again after retry_period_on_failure, like any failed
    // resource, and brought online once it opens.
    sim.behaviour[bad].open_error = None;
    sim.run_for(100 * S).await;
    assert_eq!(sim.times("open bad"), vec![0, 100_000]);
    assert_eq!(sim.times("call bad online"), vec![100_000]);
    assert_eq!(sim.state("bad"), State::Online);
    // Not wanted: it stays failed until an operator's online.
    let b = Behaviour {
        open_error: Some("open failed".into()),
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.start(&[StartFrom::Offline]);
    sim.run_for(7200 * S).await;
    assert_eq!(sim.count("open r"), 1);
    assert_eq!(sim.count("call r"), 0);
    assert_eq!(sim.state("r"), State::Failed);
    sim.behaviour[0].open_error = None;
    sim.online("r");
    assert_eq!(sim.times("open r"), vec![0, 7_200_000]);
    assert_eq!(sim.times("call r online"), vec![7_200_000]);
    assert_eq!(sim.state("r"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn pending_timeout_is_the_gap_between_progress_reports() {
    let mut p = policy();
    p.pending_timeout = 10 * S;
    p.restart_action = RestartAction::None;
    let b = Behaviour {
        online: Answer::PendingForever,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    let seq = sim.pending[&id];
    // Progress every 8 s keeps it alive well past 10 s in total.
    for cp in 1..=3 {
        sim.run_for(8 * S).await;
        sim.feed(Event::Progress {
            id,
            seq,
            checkpoint: cp,
        });
    }
    assert_eq!(sim.state("r"), State::OnlinePending);
    // A checkpoint that does not grow is not progress.
    sim.run_for(8 * S).await;
    sim.feed(Event::Progress {
        id,
        seq,
        checkpoint: 3,
    });
    sim.run_for(3 * S).await;
    assert_eq!(sim.times("terminate r"), vec![34000]);
    assert_eq!(sim.state("r"), State::Failed);
}

#[tokio::test(start_paused = true)]
async fn pending_completion_brings_it_online() {
    let b = Behaviour {
        online: Answer::PendingForever,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    let seq = sim.pending[&id];
    sim.run_for(2 * S).await;
    sim.feed(Event::Completed {
        id,
        seq,
        result: Ok(()),
    });
    assert_eq!(sim.state("r"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn a_hung_online_is_terminated_after_pending_timeout() {
    let mut p = policy();
    p.restart_action = RestartAction::None;
    let b = Behaviour {
        online: Answer::Hang,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    sim.run_for(200 * S).await;
    assert_eq!(sim.times("terminate r"), vec![180_000]);
    // Its late return is ignored: it was cancelled.
    let id = sim.m.id("r").unwrap();
    let seq = sim.pending[&id];
    sim.feed(Event::Returned {
        id,
        seq,
        outcome: CallOutcome::Done,
    });
    assert_eq!(sim.state("r"), State::Failed);
}

#[tokio::test(start_paused = true)]
async fn hung_offline_is_terminated_and_ends_offline() {
    let mut p = policy();
    p.pending_timeout = 5 * S;
    let b = Behaviour {
        offline: Answer::Hang,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    sim.cmd("r", Command::Offline);
    assert_eq!(sim.state("r"), State::OfflinePending);
    sim.run_for(6 * S).await;
    assert_eq!(sim.times("terminate r"), vec![5000]);
    assert_eq!(sim.state("r"), State::Offline);
}

#[tokio::test(start_paused = true)]
async fn offline_error_terminates_and_ends_offline() {
    let b = Behaviour {
        offline: Answer::Error,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.online("r");
    sim.cmd("r", Command::Offline);
    assert_eq!(sim.count("terminate r"), 1);
    assert_eq!(sim.state("r"), State::Offline);
}

#[tokio::test(start_paused = true)]
async fn terminate_past_its_timeout_escalates_to_a_forced_kill() {
    let mut p = policy();
    p.restart_action = RestartAction::None;
    let b = Behaviour {
        is_alive: false,
        terminate_works: false,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    sim.run_for(61 * S).await;
    assert_eq!(sim.times("terminate r"), vec![60_000]);
    assert_eq!(sim.times("force-kill r"), vec![60_300]);
    assert_eq!(sim.state("r"), State::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_terminate_that_returns_at_its_deadline_counts_as_forced() {
    // A plugin's terminate that hangs is ended by its client killing the
    // host at the same terminate_timeout: the stop took the forced rung
    // whether that report or the monitor's own tick comes first.
    for (late, want) in [
        (MS, "r stopped by terminate in 6.999s"),
        (Duration::ZERO, "r stopped by forced in 7s"),
    ] {
        let mut p = policy();
        p.pending_timeout = 5 * S;
        p.terminate_timeout = 2 * S;
        let b = Behaviour {
            offline: Answer::Hang,
            terminate_works: false,
            ..Default::default()
        };
        let mut sim = Sim::one(p, b);
        sim.online("r");
        sim.cmd("r", Command::Offline);
        sim.run_for(5 * S).await;
        let id = sim.m.id("r").unwrap();
        let seq = sim.terminating[&id];
        tokio::time::sleep(2 * S - late).await;
        sim.feed(Event::Terminated { id, seq });
        assert_eq!(sim.state("r"), State::Offline);
        assert_eq!(sim.count("force-kill r"), 0, "no tick came");
        assert_eq!(sim.ends, [want]);
    }
}

#[tokio::test(start_paused = true)]
async fn operator_terminate_cancels_online_and_first_code_wins() {
    let b = Behaviour {
        online: Answer::Hang,
        terminate_works: false,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.online("r");
    sim.cmd("r", Command::Terminate { exit_code: 7 });
    sim.cmd("r", Command::Terminate { exit_code: 9 });
    assert_eq!(
        sim.texts()
            .iter()
            .filter(|l| l.starts_with("terminate"))
            .count(),
        1
    );
    assert!(sim.texts().contains(&"terminate r 7".to_string()));
    sim.run_for(S).await;
    assert_eq!(sim.state("r"), State::Offline);
    // Terminated by an operator: not restarted.
    sim.run_for(3600 * S).await;
    assert_eq!(sim.count("call r online"), 1);
}

/// restart_action, threshold, period, delay, retry and failover as rows:
/// (action, failures to inject, expected restarts, expect failover, final state)
#[tokio::test(start_paused = true)]
async fn restart_policy_table() {
    struct Row {
        action: RestartAction,
        threshold: u32,
        failures: u32,
        restarts: usize,
        failover: bool,
        end: State,
    }
    let rows = [
        Row {
            action: RestartAction::None,
            threshold: 3,
            failures: 1,
            restarts: 0,
            failover: false,
            end: State::Failed,
        },
        Row {
            action: RestartAction::Restart,
            threshold: 3,
            failures: 2,
            restarts: 2,
            failover: false,
            end: State::Online,
        },
        Row {
            action: RestartAction::Restart,
            threshold: 3,
            failures: 4,
            restarts: 3,
            failover: false,
            end: State::Failed,
        },
        Row {
            action: RestartAction::RestartThenFailover,
            threshold: 3,
            failures: 4,
            restarts: 3,
            failover: true,
            end: State::Failed,
        },
        Row {
            action: RestartAction::RestartThenFailover,
            threshold: 0,
            failures: 1,
            restarts: 0,
            failover: true,
            end: State::Failed,
        },
    ];
    for (n, row) in rows.iter().enumerate() {
        let mut p = policy();
        p.restart_action = row.action;
        p.restart_threshold = row.threshold;
        p.restart_delay = 500 * MS;
        let mut sim = Sim::one(p, Behaviour::default());
        sim.online("r");
        let id = sim.m.id("r").unwrap();
        for _ in 0..row.failures {
            sim.behaviour[0].is_alive = false;
            sim.feed(Event::FailureNotice {
                id,
                reason: "died".into(),
            });
            sim.behaviour[0].is_alive = true;
            sim.run_for(S).await;
        }
        assert_eq!(
            sim.count("call r online") - 1,
            row.restarts,
            "row {n}: restarts"
        );
        assert_eq!(
            sim.count("failover g") == 1,
            row.failover,
            "row {n}: failover"
        );
        assert_eq!(sim.state("r"), row.end, "row {n}: state");
        assert_eq!(
            sim.m.view(id).restarts as usize,
            row.restarts,
            "row {n}: counter"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn restart_waits_restart_delay() {
    let mut p = policy();
    p.restart_delay = 750 * MS;
    p.restart_action = RestartAction::Restart;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    sim.run_for(S).await;
    let id = sim.m.id("r").unwrap();
    sim.behaviour[0].is_alive = false;
    sim.feed(Event::FailureNotice {
        id,
        reason: "died".into(),
    });
    sim.behaviour[0].is_alive = true;
    sim.run_for(S).await;
    assert_eq!(sim.times("call r online"), vec![0, 1750]);
}

#[tokio::test(start_paused = true)]
async fn restarts_outside_the_period_do_not_count() {
    let mut p = policy();
    p.restart_action = RestartAction::Restart;
    p.restart_threshold = 2;
    p.restart_period = 10 * S;
    p.restart_delay = Duration::ZERO;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    // Six failures, 6 s apart: never more than 2 within any 10 s window.
    for _ in 0..6 {
        sim.behaviour[0].is_alive = false;
        sim.feed(Event::FailureNotice {
            id,
            reason: "died".into(),
        });
        sim.behaviour[0].is_alive = true;
        sim.run_for(6 * S).await;
    }
    assert_eq!(sim.count("call r online"), 7);
    assert_eq!(sim.state("r"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn retry_period_on_failure_tries_once_more() {
    let mut p = policy();
    p.restart_action = RestartAction::Restart;
    p.restart_threshold = 1;
    p.restart_delay = Duration::ZERO;
    p.retry_period_on_failure = 100 * S;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    for _ in 0..2 {
        sim.behaviour[0].is_alive = false;
        sim.feed(Event::FailureNotice {
            id,
            reason: "died".into(),
        });
        sim.behaviour[0].is_alive = true;
        sim.run_for(S).await;
    }
    assert_eq!(sim.state("r"), State::Failed);
    sim.run_for(98 * S).await;
    assert_eq!(sim.count("call r online"), 2);
    sim.run_for(2 * S).await;
    assert_eq!(sim.times("call r online")[2], 101_000);
    assert_eq!(sim.state("r"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn failover_holds_the_whole_group_down_until_retry() {
    let mut p = policy();
    p.restart_threshold = 0;
    p.retry_period_on_failure = 50 * S;
    let mut sim = Sim::new(vec![spec("a", &[], p.clone()), spec("b", &[], p)]);
    sim.online("a");
    sim.online("b");
    let a = sim.m.id("a").unwrap();
    sim.behaviour[a].is_alive = false;
    sim.feed(Event::FailureNotice {
        id: a,
        reason: "died".into(),
    });
    sim.behaviour[a].is_alive = true;
    assert_eq!(sim.count("failover g"), 1);
    assert_eq!(sim.state("a"), State::Failed);
    assert_eq!(sim.state("b"), State::Offline, "the group is held down");
    sim.run_for(51 * S).await;
    assert_eq!(sim.state("a"), State::Online);
    assert_eq!(sim.state("b"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn dependencies_order_online_and_offline() {
    // db <- app <- web
    let mut sim = Sim::new(vec![
        spec("web", &["app"], policy()),
        spec("app", &["db"], policy()),
        spec("db", &[], policy()),
    ]);
    sim.online("web");
    let calls: Vec<String> = sim
        .texts()
        .into_iter()
        .filter(|l| l.starts_with("call"))
        .collect();
    assert_eq!(
        calls,
        ["call db online", "call app online", "call web online"]
    );
    sim.trace.clear();
    sim.cmd("db", Command::Offline);
    let calls: Vec<String> = sim
        .texts()
        .into_iter()
        .filter(|l| l.starts_with("call"))
        .collect();
    assert_eq!(
        calls,
        ["call web offline", "call app offline", "call db offline"]
    );
    for n in ["web", "app", "db"] {
        assert_eq!(sim.state(n), State::Offline);
    }
}

#[tokio::test(start_paused = true)]
async fn a_provider_waits_for_pending_dependents() {
    let mut sim = Sim::new(vec![
        spec("app", &["db"], policy()),
        spec("db", &[], policy()),
    ]);
    sim.behaviour[0].offline = Answer::PendingForever;
    sim.online("app");
    sim.cmd("db", Command::Offline);
    assert_eq!(sim.state("app"), State::OfflinePending);
    assert_eq!(sim.state("db"), State::Online, "db waits for app");
    let id = sim.m.id("app").unwrap();
    let seq = sim.pending[&id];
    sim.feed(Event::Completed {
        id,
        seq,
        result: Ok(()),
    });
    assert_eq!(sim.state("db"), State::Offline);
}

#[tokio::test(start_paused = true)]
async fn a_failed_provider_takes_dependents_down_and_they_return() {
    let mut p = policy();
    p.restart_delay = 2 * S;
    let mut sim = Sim::new(vec![spec("app", &["db"], policy()), spec("db", &[], p)]);
    sim.online("app");
    let db = sim.m.id("db").unwrap();
    sim.behaviour[db].is_alive = false;
    sim.feed(Event::FailureNotice {
        id: db,
        reason: "died".into(),
    });
    sim.behaviour[db].is_alive = true;
    assert_eq!(sim.state("db"), State::Failed);
    assert_eq!(sim.state("app"), State::Offline, "dependent taken offline");
    assert_eq!(sim.count("call app offline"), 1);
    sim.run_for(3 * S).await;
    assert_eq!(sim.state("db"), State::Online);
    assert_eq!(
        sim.state("app"),
        State::Online,
        "dependent back with its provider"
    );
    let t = sim.times("call app online");
    assert_eq!(t, vec![0, 2000]);
}

#[tokio::test(start_paused = true)]
async fn a_health_check_stuck_past_deadlock_timeout_is_a_failure() {
    let mut p = policy();
    p.looks_alive_interval = S;
    p.deadlock_timeout = 10 * S;
    p.restart_action = RestartAction::None;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    // Swallow the next looks_alive: it never returns.
    sim.run_for(500 * MS).await;
    let id = sim.m.id("r").unwrap();
    let next = sim.m.next_deadline().unwrap();
    tokio::time::sleep_until(next).await;
    let actions = sim.m.handle(Instant::now(), Event::Tick);
    let [Action::Call {
        entry: EntryPoint::LooksAlive,
        seq,
        ..
    }] = actions[..]
    else {
        panic!("expected a looks_alive call: {actions:?}")
    };
    sim.pending.insert(id, seq);
    sim.run_for(11 * S).await;
    assert_eq!(sim.state("r"), State::Failed);
    // The stuck check is cancelled by the terminate that follows.
    assert_eq!(sim.count("cancel-check r"), 1);
    assert!(
        sim.m.view(id).reason.contains("deadlock_timeout"),
        "{}",
        sim.m.view(id).reason
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_takes_everything_offline_in_order() {
    let mut sim = Sim::new(vec![
        spec("app", &["db"], policy()),
        spec("db", &[], policy()),
    ]);
    sim.online("app");
    sim.trace.clear();
    sim.feed(Event::Shutdown);
    let calls: Vec<String> = sim
        .texts()
        .into_iter()
        .filter(|l| l.starts_with("call"))
        .collect();
    assert_eq!(calls, ["call app offline", "call db offline"]);
    assert!(sim.m.all_down());
    // Commands after shutdown bring nothing up.
    sim.online("app");
    assert!(sim.m.all_down());
}

#[tokio::test(start_paused = true)]
async fn shutdown_terminates_an_online_in_progress() {
    let b = Behaviour {
        online: Answer::Hang,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.online("r");
    sim.feed(Event::Shutdown);
    assert_eq!(sim.count("terminate r"), 1);
    assert!(sim.m.all_down());
}

#[tokio::test(start_paused = true)]
async fn operator_online_restarts_a_failed_resource() {
    let mut p = policy();
    p.restart_action = RestartAction::None;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    sim.behaviour[0].is_alive = false;
    sim.feed(Event::FailureNotice {
        id,
        reason: "died".into(),
    });
    sim.behaviour[0].is_alive = true;
    assert_eq!(sim.state("r"), State::Failed);
    sim.online("r");
    assert_eq!(sim.state("r"), State::Online);
}

#[test]
fn bad_specs_are_refused_with_every_problem_named() {
    let now = Instant::now();
    let err = Monitor::new(
        vec![
            spec("a", &["nope"], policy()),
            spec("b", &["b"], policy()),
            ResourceSpec {
                group: "other".into(),
                ..spec("c", &["a"], policy())
            },
        ],
        now,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("\"a\": depends_on names \"nope\""), "{text}");
    assert!(text.contains("\"b\": depends on itself"), "{text}");
    assert!(text.contains("within a group"), "{text}");

    let err = Monitor::new(
        vec![
            spec("a", &["b"], policy()),
            spec("b", &["c"], policy()),
            spec("c", &["a"], policy()),
        ],
        now,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("dependency cycle: a -> b -> c -> a"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn reconfigure_adds_retires_and_updates_in_place() {
    let mut sim = Sim::new(vec![spec("a", &[], policy()), spec("b", &[], policy())]);
    sim.online("a");
    sim.online("b");
    let mut fast = policy();
    fast.looks_alive_interval = S;
    let resmon_core::Reconfigured { added, retired, .. } =
        sim.reconfigure(vec![spec("a", &[], fast), spec("c", &["a"], policy())], &[]);
    assert_eq!(added, vec![2]);
    assert_eq!(sim.count("open c"), 1, "an added one is opened at once");
    assert_eq!(
        sim.count("release b"),
        1,
        "a retired one is released once down"
    );
    assert_eq!(sim.life(1), Life::Released);
    assert_eq!(retired, vec![1]);
    assert!(sim.m.is_retired(1));
    assert_eq!(
        sim.m.state(1),
        State::Offline,
        "a retired resource is taken offline"
    );
    assert_eq!(sim.m.id("b"), None, "and is no longer found by name");
    assert_eq!(
        sim.state("c"),
        State::Offline,
        "an added one waits to be wanted"
    );
    assert_eq!(
        sim.state("a"),
        State::Online,
        "a policy change keeps it running"
    );
    sim.online("c");
    assert_eq!(sim.state("c"), State::Online);
    // The new policy is in effect: checks every second from the next one on.
    sim.trace.clear();
    sim.run_for(7 * S).await;
    assert!(sim.count("call a looks_alive") >= 2, "{:?}", sim.texts());
    // c depends on a now: taking a offline takes c first.
    sim.trace.clear();
    sim.cmd("a", Command::Offline);
    let calls: Vec<String> = sim
        .texts()
        .into_iter()
        .filter(|l| l.starts_with("call"))
        .collect();
    assert_eq!(calls, ["call c offline", "call a offline"]);
}

#[test]
fn reconfigure_refuses_bad_specs_and_changes_nothing() {
    let now = Instant::now();
    let mut m = Monitor::new(vec![spec("a", &[], policy())], now).unwrap();
    let err = m
        .reconfigure(now, vec![spec("a", &["zz"], policy())], &[])
        .unwrap_err();
    assert!(err.to_string().contains("\"zz\""));
    assert_eq!(m.id("a"), Some(0));
    assert!(m.view(0).spec.depends_on.is_empty());
}

#[tokio::test(start_paused = true)]
async fn failures_while_coming_online_count_toward_the_threshold() {
    let mut p = policy();
    p.restart_action = RestartAction::Restart;
    p.restart_threshold = 2;
    p.restart_delay = Duration::ZERO;
    let b = Behaviour {
        online: Answer::PendingForever,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    for _ in 0..5 {
        if sim.state("r") == State::OnlinePending {
            sim.feed(Event::FailureNotice {
                id,
                reason: "exited".into(),
            });
        }
        sim.run_for(S).await;
    }
    assert_eq!(sim.count("call r online"), 3, "{:?}", sim.texts());
    assert_eq!(sim.m.view(id).restarts, 2);
    assert_eq!(sim.state("r"), State::Failed);
}

#[tokio::test(start_paused = true)]
async fn only_health_checks_wait_for_a_rounded_wake_up() {
    let mut p = policy();
    p.looks_alive_interval = S;
    p.pending_timeout = 1003 * MS;
    let mut sim = Sim::new(vec![spec("a", &[], p.clone()), spec("b", &[], p)]);
    sim.behaviour[1].offline = Answer::Hang;
    sim.online("a");
    sim.online("b");
    sim.run_for(100 * MS).await;
    let late = |t: Instant| t + 10 * MS;
    // Only health checks are due next: they may wait for the rounding.
    let next = sim.m.next_deadline().unwrap();
    assert_eq!(sim.m.next_wake(late), Some(next + 10 * MS));
    // A stop's pending_timeout comes on time, even behind a health check
    // whose rounded wake-up would be later.
    sim.run_for(next - Instant::now() - 2 * MS).await;
    sim.cmd("b", Command::Offline);
    let stop_deadline = Instant::now() + 1003 * MS;
    let a_check = sim.m.next_deadline().unwrap();
    assert!(a_check < stop_deadline, "a's health check comes first");
    assert_eq!(sim.m.next_wake(|t| t + 2 * S), Some(stop_deadline));
    assert_eq!(sim.m.next_wake(late), Some(a_check + 10 * MS));
}

#[tokio::test(start_paused = true)]
async fn durations_too_large_for_the_clock_never_overflow_a_deadline() {
    // Config durations are bounded when parsed; the core must not rely on it.
    let p = Policy {
        looks_alive_interval: Duration::MAX,
        is_alive_interval: Duration::MAX,
        pending_timeout: Duration::MAX,
        terminate_timeout: Duration::MAX,
        deadlock_timeout: Duration::MAX,
        restart_period: Duration::MAX,
        restart_delay: Duration::MAX,
        retry_period_on_failure: Duration::MAX,
        ..policy()
    };
    // Online fails: the terminate, the restart delay and the retry period
    // all compute deadlines from the largest duration there is.
    let mut sim = Sim::one(
        p.clone(),
        Behaviour {
            online: Answer::Error,
            ..Default::default()
        },
    );
    sim.online("r");
    sim.run_for(S).await;
    assert_eq!(sim.state("r"), State::Failed, "{:?}", sim.texts());
    assert!(sim.m.next_deadline().is_some_and(|d| d > Instant::now()));
    // Online works; health checks are due "never"; a terminate that never
    // finishes waits "forever" for its forced kill.
    let mut sim = Sim::one(
        p,
        Behaviour {
            terminate_works: false,
            ..Default::default()
        },
    );
    sim.online("r");
    sim.run_for(S).await;
    assert_eq!(sim.state("r"), State::Online);
    sim.cmd("r", Command::Terminate { exit_code: 1 });
    sim.run_for(S).await;
    assert_eq!(sim.count("terminate r 1"), 1, "{:?}", sim.texts());
    assert_eq!(sim.count("force-kill"), 0);
    assert!(sim.m.view(sim.m.id("r").unwrap()).terminating);
}

#[test]
fn a_waiting_command_ends_where_its_goal_is_reached_or_cannot_be() {
    use resmon_core::Settled::{self, Abandoned, Done};
    use State::{Failed, Offline, OfflinePending, Online, OnlinePending};
    let term = Command::Terminate { exit_code: 1 };
    // (command, state, busy, wanted online) -> where a --wait ends
    let rows: &[(Command, State, bool, bool, Option<Settled>)] = &[
        (Command::Online, Online, false, true, Some(Done)),
        (Command::Online, Online, true, true, None), // a health check runs
        (Command::Online, OnlinePending, false, true, None),
        (Command::Online, Failed, false, true, Some(Settled::Failed)),
        (Command::Online, Failed, true, true, None), // still being terminated
        (Command::Online, Offline, false, true, None), // waits for its providers
        (Command::Online, Offline, false, false, Some(Abandoned)),
        (Command::Offline, Offline, false, false, Some(Done)),
        (Command::Offline, OfflinePending, false, false, None),
        (Command::Offline, Online, false, false, None), // dependents go first
        (
            Command::Offline,
            Failed,
            false,
            false,
            Some(Settled::Failed),
        ),
        (term, Offline, false, false, Some(Done)),
        (term, Failed, false, false, Some(Done)),
        (term, Offline, true, false, None), // its tree is still being killed
        (term, OfflinePending, false, false, None),
        (term, Online, false, false, None),
        // A restart is busy until it is back (the driver counts
        // `restarting` as busy), then ends as an online does.
        (Command::Restart, Online, true, true, None),
        (Command::Restart, Online, false, true, Some(Done)),
        (Command::Restart, Failed, false, true, Some(Settled::Failed)),
        (Command::Restart, Offline, false, false, Some(Abandoned)),
        (Command::Maintenance(true), Online, true, true, Some(Done)),
        (
            Command::Maintenance(false),
            Failed,
            false,
            false,
            Some(Done),
        ),
    ];
    for &(cmd, state, busy, wanted, want) in rows {
        assert_eq!(
            cmd.settled(state, busy, wanted),
            want,
            "{cmd:?} in {state} (busy {busy}, wanted online {wanted})"
        );
    }
}

#[test]
fn what_an_earlier_run_left_starts_as_it_was_wanted() {
    use resmon_core::{start_from, Earlier, StartFrom::*};
    let e = |wanted_online, was_online, can_reattach| {
        Some(Earlier {
            wanted_online,
            was_online,
            can_reattach,
        })
    };
    // (earlier, autostart, cluster) -> start
    let rows = [
        (e(true, true, true), false, false, Reattach),
        (e(true, true, false), false, false, Lost),
        (e(true, false, false), false, false, Online), // it was on its way up
        (e(false, false, false), true, false, Offline), // an operator took it down
        (e(false, true, true), true, false, Offline),
        (None, true, false, Online),
        (None, false, false, Offline),
        // Cluster mode keeps nothing: a group runs once its node took it.
        (e(true, true, true), true, true, Offline),
        (None, true, true, Offline),
    ];
    for (earlier, autostart, cluster, want) in rows {
        assert_eq!(
            start_from(earlier, autostart, cluster),
            want,
            "{earlier:?}, autostart {autostart}, cluster {cluster}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_state_is_written_once_it_settles_one_write_at_a_time_and_not_while_stopping() {
    use resmon_core::SaveSchedule;
    let settle = Duration::from_millis(20);
    let mut s = SaveSchedule::new(settle);
    let t0 = Instant::now();
    assert_eq!(s.wake_at(false), None, "nothing changed, nothing to write");
    // A crash and its restart: three changes, one write, `settle` after the first.
    s.changed(t0);
    s.changed(t0 + Duration::from_millis(5));
    s.changed(t0 + Duration::from_millis(15));
    assert_eq!(s.wake_at(false), Some(t0 + settle));
    assert!(!s.due(t0 + Duration::from_millis(19), false));
    assert!(s.due(t0 + settle, false));
    // One at a time: a change during the write waits for its end.
    s.changed(t0 + Duration::from_millis(25));
    assert_eq!(s.wake_at(false), None);
    assert!(!s.due(t0 + Duration::from_millis(100), false));
    s.finished();
    assert_eq!(s.wake_at(false), Some(t0 + Duration::from_millis(45)));
    // Stopping: the schedule writes nothing (the stop writes at the end).
    assert_eq!(s.wake_at(true), None);
    assert!(!s.due(t0 + Duration::from_secs(1), true));
    assert!(s.due(t0 + Duration::from_secs(1), false));
    // A change at the end of time cannot overflow the deadline.
    let mut far = SaveSchedule::new(Duration::MAX);
    far.changed(t0);
    assert!(far.wake_at(false).is_some());
}

#[tokio::test(start_paused = true)]
async fn each_stop_names_the_rung_that_ended_it_and_how_long_it_took() {
    // (how offline answers, whether terminate works, what is reported)
    let rows = [
        (Answer::Done, true, "r stopped by offline in 0ns"),
        (Answer::Error, true, "r stopped by terminate in 0ns"),
        // pending_timeout 5 s, then terminate_timeout 2 s, then the kill.
        (Answer::Hang, true, "r stopped by terminate in 5s"),
        (Answer::Hang, false, "r stopped by forced in 7s"),
    ];
    for (offline, terminate_works, want) in rows {
        let mut p = policy();
        p.pending_timeout = 5 * S;
        p.terminate_timeout = 2 * S;
        let b = Behaviour {
            offline: offline.clone(),
            terminate_works,
            ..Default::default()
        };
        let mut sim = Sim::one(p, b);
        sim.online("r");
        sim.run_for(S).await;
        sim.cmd("r", Command::Offline);
        sim.run_for(10 * S).await;
        assert_eq!(sim.state("r"), State::Offline, "{offline:?}");
        assert_eq!(sim.ends, [want], "{offline:?} {terminate_works}");
    }
}

#[tokio::test(start_paused = true)]
async fn each_failure_has_its_class_and_its_terminate_is_a_stop() {
    let notice = |sim: &mut Sim| {
        let id = sim.m.id("r").unwrap();
        sim.feed(Event::FailureNotice {
            id,
            reason: "main process exited".into(),
        });
    };
    let health = |_: &mut Sim| {};
    // (behaviour, what happens once online, what is reported)
    type Then = fn(&mut Sim);
    let rows: [(Behaviour, Then, &[&str]); 4] = [
        (
            Behaviour {
                online: Answer::Error,
                ..Default::default()
            },
            health,
            &["r failed: online", "r stopped by terminate in 0ns"],
        ),
        (
            Behaviour {
                online: Answer::Hang,
                ..Default::default()
            },
            health,
            &["r failed: timeout", "r stopped by terminate in 0ns"],
        ),
        (
            Behaviour {
                is_alive: false,
                ..Default::default()
            },
            health,
            &["r failed: health", "r stopped by terminate in 0ns"],
        ),
        (
            Behaviour {
                is_alive: false,
                ..Default::default()
            },
            notice,
            &["r failed: notice", "r stopped by terminate in 0ns"],
        ),
    ];
    for (b, then, want) in rows {
        let mut p = policy();
        p.pending_timeout = 5 * S;
        p.is_alive_interval = 30 * S;
        p.restart_action = RestartAction::None;
        let mut sim = Sim::one(p, b);
        sim.online("r");
        then(&mut sim);
        sim.run_for(40 * S).await;
        assert_eq!(sim.ends, want);
    }
    // Died while no monitor watched; could not be opened.
    let mut sim = Sim::one(policy(), Behaviour::default());
    sim.start(&[StartFrom::Lost]);
    assert_eq!(sim.ends[0], "r failed: lost");
    let b = Behaviour {
        open_error: Some("no such agent".into()),
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.start(&[StartFrom::Online]);
    assert_eq!(sim.ends, ["r failed: open"]);
}

#[tokio::test(start_paused = true)]
async fn the_start_opens_every_resource_at_once_then_starts_each_as_decided() {
    let names = ["kept", "died", "new", "idle", "lost"];
    let from = [
        StartFrom::Reattach,
        StartFrom::Reattach,
        StartFrom::Online,
        StartFrom::Offline,
        StartFrom::Lost,
    ];
    let mut p = policy();
    p.restart_delay = Duration::ZERO;
    let mut sim = Sim::new(names.iter().map(|n| spec(n, &[], p.clone())).collect());
    for b in &mut sim.behaviour {
        b.open_hangs = true;
    }
    sim.behaviour[1].reattach_alive = false;
    sim.start(&from);
    // Every open is out at once; what is reattached keeps its container.
    assert_eq!(
        sim.texts(),
        [
            "open kept keeping",
            "open died keeping",
            "open new",
            "open idle",
            "open lost"
        ]
    );
    assert!(!sim.m.is_started());
    let wanted: Vec<bool> = (0..5).map(|id| sim.m.view(id).wants_online).collect();
    assert_eq!(wanted, [true, true, true, false, true], "as it will be");
    assert!(!sim.m.all_down(), "a stop waits for the opens out");
    for id in 0..5 {
        assert_eq!(sim.life(id), Life::Opening);
        sim.feed(Event::Opened { id, result: Ok(()) });
    }
    assert!(sim.m.is_started());
    assert_eq!(sim.state("kept"), State::Online);
    assert_eq!(sim.m.view(0).reason, "adopted after a monitor restart");
    assert_eq!(
        sim.count("call kept online"),
        0,
        "adopted, not started again"
    );
    // Died while no monitor watched: a failure, restarted by the policy.
    sim.run_for(S).await;
    assert_eq!(sim.count("call died online"), 1);
    assert_eq!(sim.state("died"), State::Online);
    assert_eq!(sim.state("new"), State::Online);
    assert_eq!(sim.state("idle"), State::Offline);
    assert_eq!(sim.count("call idle"), 0);
    assert_eq!(sim.count("reattach lost"), 0, "nothing says how to find it");
    assert_eq!(sim.count("call lost online"), 1);
    assert_eq!(
        sim.ends,
        [
            "died failed: lost",
            "died stopped by terminate in 0ns",
            "lost failed: lost",
            "lost stopped by terminate in 0ns"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_replaced_resource_is_closed_once_down_then_opened_anew_and_what_was_wanted_comes_back() {
    let specs = || vec![spec("db", &[], policy()), spec("app", &["db"], policy())];
    let mut sim = Sim::new(specs());
    sim.start(&[StartFrom::Online, StartFrom::Online]);
    assert_eq!(sim.state("app"), State::Online);
    sim.trace.clear();
    sim.reconfigure(specs(), &["db"]);
    let steps: Vec<String> = sim
        .texts()
        .into_iter()
        .filter(|l| ["call", "close", "open"].iter().any(|p| l.starts_with(p)))
        .collect();
    assert_eq!(
        steps,
        [
            "call app offline",
            "call db offline",
            "close db",
            "open db",
            "call db online",
            "call app online"
        ]
    );
    assert_eq!(sim.state("db"), State::Online);
    assert_eq!(sim.state("app"), State::Online);
    assert_eq!(sim.life(0), Life::Open);

    // A new config that does not open: failed, opened again after
    // retry_period_on_failure; its dependent waits for it.
    let mut p = policy();
    p.retry_period_on_failure = 30 * S;
    let specs = || vec![spec("db", &[], p.clone()), spec("app", &["db"], policy())];
    let mut sim = Sim::new(specs());
    sim.start(&[StartFrom::Online, StartFrom::Online]);
    sim.behaviour[0].open_error = Some("open failed: no such file".into());
    sim.reconfigure(specs(), &["db"]);
    assert_eq!(sim.state("db"), State::Failed);
    assert_eq!(sim.m.view(0).reason, "open failed: no such file");
    assert_eq!(sim.state("app"), State::Offline);
    assert!(sim.m.view(1).wants_online, "app still wants to come back");
    sim.behaviour[0].open_error = None;
    sim.run_for(30 * S).await;
    assert_eq!(sim.times("open db"), vec![0, 0, 30_000]);
    assert_eq!(sim.state("db"), State::Online);
    assert_eq!(sim.state("app"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn a_resource_removed_while_it_opens_is_released_once_the_open_answers() {
    let b = Behaviour {
        open_hangs: true,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.start(&[StartFrom::Online]);
    sim.reconfigure(vec![], &[]);
    assert_eq!(sim.count("release r"), 0, "not while its open runs");
    assert!(!sim.m.all_down());
    sim.feed(Event::Opened {
        id: 0,
        result: Ok(()),
    });
    assert_eq!(sim.count("call r"), 0, "removed: nothing starts it");
    assert_eq!(sim.count("release r"), 1);
    assert_eq!(sim.life(0), Life::Released);
    assert!(sim.m.all_down());
    // Replaced while it opens: the open with the old config is closed,
    // and the new one opened.
    let b = Behaviour {
        open_hangs: true,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.start(&[StartFrom::Online]);
    sim.reconfigure(vec![spec("r", &[], policy())], &["r"]);
    sim.behaviour[0].open_hangs = false;
    sim.feed(Event::Opened {
        id: 0,
        result: Ok(()),
    });
    assert_eq!(sim.texts()[..3], ["open r", "close r", "open r"]);
    assert_eq!(
        sim.state("r"),
        State::Online,
        "wanted before, so brought back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_resources_open_starts_none_of_them() {
    let b = Behaviour {
        open_hangs: true,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.start(&[StartFrom::Reattach]);
    sim.feed(Event::Shutdown);
    assert!(!sim.m.all_down(), "the open is still out");
    sim.feed(Event::Opened {
        id: 0,
        result: Ok(()),
    });
    assert_eq!(sim.count("reattach r"), 0);
    assert_eq!(sim.count("call r"), 0);
    assert_eq!(sim.state("r"), State::Offline);
    assert!(sim.m.is_started() && sim.m.all_down());
    // An online asked for while stopping does not open anything.
    let mut sim = Sim::one(policy(), Behaviour::default());
    sim.feed(Event::Shutdown);
    sim.online("r");
    assert_eq!(sim.count("open r"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_resource_replaced_while_it_is_reattached_is_replaced_once_found() {
    let b = Behaviour {
        open_hangs: true,
        ..Default::default()
    };
    let mut sim = Sim::one(policy(), b);
    sim.start(&[StartFrom::Reattach]);
    sim.reconfigure(vec![spec("r", &[], policy())], &["r"]);
    sim.behaviour[0].open_hangs = false;
    // Found running: watched, taken offline with the old config, closed,
    // opened with the new one, and brought back as it was wanted.
    sim.feed(Event::Opened {
        id: 0,
        result: Ok(()),
    });
    let steps: Vec<String> = sim
        .texts()
        .into_iter()
        .filter(|l| !l.contains("pending"))
        .collect();
    assert_eq!(
        steps,
        [
            "open r keeping",
            "reattach r",
            "r online",
            "call r offline",
            "r offline",
            "close r",
            "open r",
            "call r online",
            "r online"
        ]
    );
    assert!(sim.m.is_started());
}

/// Fails `r` as its own failure notice would (its process died).
fn die(sim: &mut Sim, name: &str) {
    let id = sim.m.id(name).unwrap();
    sim.feed(Event::FailureNotice {
        id,
        reason: "died".into(),
    });
}

#[tokio::test(start_paused = true)]
async fn maintenance_reports_failures_acts_on_none_and_acts_once_it_ends() {
    let mut p = policy();
    p.looks_alive_interval = S;
    p.is_alive_interval = 10 * S;
    p.restart_delay = Duration::ZERO;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    sim.cmd("r", Command::Maintenance(true));
    assert!(sim.m.view(id).maintenance);
    // The checks fail: a notice, then every looks_alive says no.
    sim.behaviour[0].is_alive = false;
    sim.behaviour[0].looks_alive = false;
    die(&mut sim, "r");
    sim.run_for(30 * S).await;
    assert!(sim.count("call r is_alive") >= 30, "checks still run");
    assert_eq!(sim.count("terminate r"), 0, "nothing acts");
    assert_eq!(sim.count("call r online"), 1, "no restart");
    assert_eq!(sim.state("r"), State::Online);
    assert!(sim.ends.is_empty(), "no failure counted: {:?}", sim.ends);
    let reason = sim.m.view(id).reason.to_string();
    assert_eq!(
        reason,
        "maintenance: is_alive returned false (looks_alive returned false); no action taken"
    );
    // Reported as it changes (the notice, then looks_alive), not at every check.
    let notices = sim.texts().iter().filter(|t| *t == "r online").count();
    assert_eq!(notices, 3, "{:?}", sim.texts());
    // Operator commands still act.
    sim.cmd("r", Command::Offline);
    assert_eq!(sim.state("r"), State::Offline);
    sim.online("r");
    assert_eq!(sim.state("r"), State::Online);
    // Off: checked at once, and the failure is acted on.
    sim.run_for(1500 * MS).await;
    let t = sim.ms();
    sim.cmd("r", Command::Maintenance(false));
    assert_eq!(*sim.times("call r is_alive").last().unwrap(), t);
    assert_eq!(sim.times("terminate r"), vec![t]);
    sim.behaviour[0].is_alive = true;
    sim.behaviour[0].looks_alive = true;
    sim.run_for(S).await;
    assert_eq!(sim.times("call r online").last(), Some(&t), "restarted");
    assert_eq!(sim.state("r"), State::Online);
}

#[tokio::test(start_paused = true)]
async fn maintenance_holds_a_planned_restart_and_a_dependent_whose_provider_fails() {
    let mut p = policy();
    p.restart_delay = 5 * S;
    let mut sim = Sim::new(vec![spec("db", &[], p.clone()), spec("app", &["db"], p)]);
    sim.online("app");
    sim.cmd("app", Command::Maintenance(true));
    // The provider fails: the dependent in maintenance stays up.
    sim.behaviour[0].is_alive = false;
    die(&mut sim, "db");
    sim.behaviour[0].is_alive = true;
    assert_eq!(sim.state("db"), State::Failed);
    assert_eq!(sim.state("app"), State::Online);
    assert_eq!(sim.count("call app offline"), 0);
    sim.run_for(6 * S).await;
    assert_eq!(sim.state("db"), State::Online, "the provider is restarted");
    // A failure whose restart is planned, then maintenance: held.
    sim.cmd("app", Command::Maintenance(false));
    sim.behaviour[1].is_alive = false;
    die(&mut sim, "app");
    sim.behaviour[1].is_alive = true;
    assert_eq!(sim.state("app"), State::Failed);
    let id = sim.m.id("app").unwrap();
    assert!(sim.m.view(id).next_attempt.is_some());
    sim.cmd("app", Command::Maintenance(true));
    assert_eq!(sim.m.view(id).next_attempt, None);
    sim.run_for(60 * S).await;
    assert_eq!(
        sim.count("call app online"),
        1,
        "not restarted in maintenance"
    );
    let t = sim.ms();
    sim.cmd("app", Command::Maintenance(false));
    sim.run_for(6 * S).await;
    assert_eq!(
        sim.times("call app online")[1],
        t + 5000,
        "the policy decides again"
    );
    assert_eq!(sim.m.view(id).restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn failure_threshold_counts_failed_is_alive_answers_in_a_row() {
    // (failure_threshold, success_threshold, is_alive answers every 10 s) ->
    // the answer (1-based) at which it fails, or none
    let rows: &[(u32, u32, &[bool], Option<usize>)] = &[
        (1, 1, &[true, false], Some(2)),
        (3, 1, &[false, false, true, false, false, false], Some(6)),
        (3, 1, &[false, false, true, false, false, true], None),
        // Two passes needed to clear a run: one pass between does not.
        (3, 2, &[false, true, false, false], Some(4)),
        (3, 2, &[false, true, true, false, false], None),
    ];
    for (n, &(fails, passes, answers, fails_at)) in rows.iter().enumerate() {
        let mut p = policy();
        p.is_alive_interval = 10 * S;
        p.looks_alive_interval = 100 * S;
        p.failure_threshold = fails;
        p.success_threshold = passes;
        p.restart_action = RestartAction::None;
        let mut sim = Sim::one(p, Behaviour::default());
        sim.online("r");
        let mut failed = None;
        for (i, &ok) in answers.iter().enumerate() {
            sim.behaviour[0].is_alive = ok;
            sim.run_for(10 * S).await;
            if failed.is_none() && sim.state("r") == State::Failed {
                failed = Some(i + 1);
            }
        }
        assert_eq!(failed, fails_at, "row {n}: {:?}", sim.texts());
        assert_eq!(sim.count("call r is_alive"), answers.len(), "row {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_below_the_threshold_is_reported_and_a_notice_is_never_held_back() {
    let mut p = policy();
    p.is_alive_interval = 10 * S;
    p.failure_threshold = 3;
    let b = Behaviour {
        is_alive: false,
        ..Default::default()
    };
    let mut sim = Sim::one(p, b);
    sim.online("r");
    sim.run_for(10 * S).await;
    let id = sim.m.id("r").unwrap();
    assert_eq!(sim.state("r"), State::Online);
    assert_eq!(
        sim.m.view(id).reason,
        "is_alive returned false (1 of failure_threshold 3)"
    );
    assert_eq!(sim.m.view(id).health_failures, 1);
    // The resource says itself it failed: at once.
    die(&mut sim, "r");
    assert_eq!(sim.state("r"), State::Failed);
    assert_eq!(sim.times("terminate r"), vec![10_000]);
}

#[tokio::test(start_paused = true)]
async fn restart_backoff_grows_the_delay_to_its_bound_and_resets_after_a_quiet_period() {
    let mut p = policy();
    p.restart_action = RestartAction::Restart;
    p.restart_threshold = 100;
    p.restart_delay = S;
    p.restart_backoff = resmon_contract::Backoff::new(2.0).unwrap();
    p.restart_delay_max = 5 * S;
    p.restart_period = 60 * S;
    let mut sim = Sim::one(p, Behaviour::default());
    sim.online("r");
    let id = sim.m.id("r").unwrap();
    let mut delays = Vec::new();
    for _ in 0..5 {
        let t = sim.ms();
        sim.behaviour[0].is_alive = false;
        die(&mut sim, "r");
        sim.behaviour[0].is_alive = true;
        let next = sim.m.view(id).next_attempt.unwrap();
        sim.run_for(10 * S).await;
        let online = *sim.times("call r online").last().unwrap();
        assert_eq!(
            (next - sim.start).as_millis(),
            online,
            "status shows the attempt"
        );
        delays.push(online - t);
    }
    assert_eq!(delays, [1000, 2000, 4000, 5000, 5000]);
    // Online for restart_period: the next restart starts over.
    sim.run_for(60 * S).await;
    let t = sim.ms();
    sim.behaviour[0].is_alive = false;
    die(&mut sim, "r");
    sim.behaviour[0].is_alive = true;
    sim.run_for(10 * S).await;
    assert_eq!(*sim.times("call r online").last().unwrap() - t, 1000);
}

#[tokio::test(start_paused = true)]
async fn readiness_gates_dependents_and_restarts_nothing() {
    let mut p = policy();
    p.failure_threshold = 2;
    p.success_threshold = 2;
    let mut db = spec("db", &[], p.clone());
    db.readiness = true;
    let mut sim = Sim::new(vec![db, spec("app", &["db"], p)]);
    sim.online("app");
    let db = sim.m.id("db").unwrap();
    assert_eq!(sim.state("db"), State::Online);
    assert_eq!(sim.m.view(db).ready, Some(false));
    assert_eq!(sim.state("app"), State::Offline, "waits for db to be ready");
    let ready = |sim: &mut Sim, ok: bool| {
        sim.feed(Event::Readiness {
            id: db,
            ready: ok,
            detail: "connection refused".into(),
        })
    };
    ready(&mut sim, true);
    assert_eq!(sim.state("app"), State::Offline, "success_threshold 2");
    ready(&mut sim, true);
    assert_eq!(sim.m.view(db).ready, Some(true));
    assert_eq!(sim.state("app"), State::Online);
    // Not ready: reported once failure_threshold is reached, nothing stops.
    ready(&mut sim, false);
    assert_eq!(sim.m.view(db).ready, Some(true));
    ready(&mut sim, false);
    ready(&mut sim, false);
    assert_eq!(sim.m.view(db).ready, Some(false));
    assert_eq!(sim.count("db not ready"), 1);
    assert_eq!(sim.state("app"), State::Online, "a dependent up stays up");
    assert_eq!(sim.count("terminate"), 0);
    assert_eq!(sim.count("call db offline"), 0);
    // Offline and online again: not ready until its checks pass again.
    sim.cmd("db", Command::Offline);
    assert_eq!(sim.m.view(db).ready, None);
    sim.online("app");
    assert_eq!(sim.m.view(db).ready, Some(false));
    assert_eq!(sim.state("app"), State::Offline);
    assert_eq!(sim.count("db ready"), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_takes_a_resource_down_with_its_dependents_and_brings_back_what_was_up() {
    let p = policy();
    let mut sim = Sim::new(vec![
        spec("db", &[], p.clone()),
        spec("app", &["db"], p.clone()),
        spec("cron", &["db"], p),
    ]);
    sim.online("app");
    sim.trace.clear();
    let db = sim.m.id("db").unwrap();
    sim.cmd("db", Command::Restart);
    assert_eq!(
        sim.texts()
            .into_iter()
            .filter(|t| t.starts_with("call"))
            .collect::<Vec<_>>(),
        [
            "call app offline",
            "call db offline",
            "call db online",
            "call app online"
        ],
        "cron was not wanted online and stays down"
    );
    assert_eq!(sim.state("cron"), State::Offline);
    assert!(!sim.m.view(db).restarting);
    // A restart of a resource that is down brings it online.
    sim.cmd("cron", Command::Offline);
    sim.cmd("app", Command::Offline);
    sim.cmd("db", Command::Offline);
    sim.cmd("app", Command::Restart);
    assert_eq!(sim.state("app"), State::Online);
    // An offline during a restart wins.
    sim.behaviour[db].offline = Answer::PendingForever;
    sim.cmd("db", Command::Restart);
    assert!(sim.m.view(db).restarting);
    sim.cmd("db", Command::Offline);
    assert!(!sim.m.view(db).restarting);
    sim.run_for(200 * S).await;
    assert_eq!(sim.state("db"), State::Offline);
    assert_eq!(sim.state("app"), State::Offline);
}
