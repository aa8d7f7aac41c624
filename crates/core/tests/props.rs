//! Random event sequences on random dependency graphs, from a random start
//! and through reloads that replace resources: whatever happens, the
//! incremental bookkeeping agrees with a full scan, a resource never has two
//! serialized calls in flight, no entry point is called on a resource that
//! is not open, nothing is opened or closed twice at once or closed while
//! anything of it runs, nothing is brought online before its providers are,
//! and every stop and failure the core reports is one the states show. A
//! resource in maintenance that is online is never terminated or restarted
//! by anything but an operator's command.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseError;
use resmon_contract::{EntryPoint, Policy, RestartAction, State, ALLOWED_TRANSITIONS};
use resmon_core::{
    Action, CallOutcome, Command, Event, FailureClass, Monitor, ResId, ResourceSpec, Rung,
    StartFrom,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Debug)]
enum Op {
    Cmd(usize, u8),
    Answer(usize, u8),
    Notice(usize),
    Finish(usize),
    Advance(u64),
    Opened(usize, bool),
    Adopted(usize, bool),
    Closed(usize),
    Replace(usize),
    Ready(usize, bool),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..6usize, 0..6u8).prop_map(|(i, c)| Op::Cmd(i, c)),
        6 => (0..6usize, any::<bool>()).prop_map(|(i, r)| Op::Ready(i, r)),
        8 => (0..6usize, 0..5u8).prop_map(|(i, a)| Op::Answer(i, a)),
        8 => (0..6usize).prop_map(Op::Notice),
        8 => (0..6usize).prop_map(Op::Finish),
        8 => (0..4000u64).prop_map(Op::Advance),
        // Most opens succeed: the rest of the rules are reached behind them.
        12 => (0..6usize, 0..4u8).prop_map(|(i, k)| Op::Opened(i, k != 0)),
        8 => (0..6usize, any::<bool>()).prop_map(|(i, a)| Op::Adopted(i, a)),
        8 => (0..6usize).prop_map(Op::Closed),
        2 => (0..6usize).prop_map(Op::Replace),
        1 => Just(Op::Shutdown),
    ]
}

/// How each resource starts (one of `StartFrom`, or 4: never started, so
/// opened when first wanted online).
fn starts() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0..5u8, 6)
}

fn graph() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1..6usize).prop_flat_map(|n| {
        (0..n)
            .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(2)))
            .collect::<Vec<_>>()
    })
}

fn policy(kind: u8) -> Policy {
    Policy {
        looks_alive_interval: Duration::from_millis(500),
        is_alive_interval: Duration::from_millis(1500),
        pending_timeout: Duration::from_millis(2000),
        terminate_timeout: Duration::from_millis(300),
        deadlock_timeout: Duration::from_millis(3000),
        restart_action: match kind % 3 {
            0 => RestartAction::None,
            1 => RestartAction::Restart,
            _ => RestartAction::RestartThenFailover,
        },
        restart_threshold: u32::from(kind % 4),
        restart_period: Duration::from_secs(10),
        restart_delay: Duration::from_millis(u64::from(kind) * 100),
        retry_period_on_failure: Duration::from_secs(5),
        separate_monitor: false,
        failure_threshold: 1 + u32::from(kind % 3),
        success_threshold: 1 + u32::from(kind % 2),
        restart_backoff: resmon_contract::Backoff::new(1.0 + f64::from(kind % 3)).unwrap(),
        restart_delay_max: Duration::from_millis(700),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn bookkeeping_and_ordering_hold(deps in graph(), kind in 0..6u8, starts in starts(), ops in proptest::collection::vec(op(), 1..80)) {
        run(deps, kind, starts, ops, &mut HashSet::new(), &mut Seen::default())?;
    }
}

/// The simulation both tests run: random commands, answers, notices and
/// time on a random dependency graph, with every invariant checked after
/// each event. Each state change seen is added to `moves`, each stop's
/// rung and failure's class to `seen`.
fn run(
    deps: Vec<Vec<usize>>,
    kind: u8,
    starts: Vec<u8>,
    ops: Vec<Op>,
    moves: &mut HashSet<(State, State)>,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    {
        let n = deps.len();
        let specs: Vec<ResourceSpec> = deps
            .iter()
            .enumerate()
            .map(|(i, d)| ResourceSpec {
                name: format!("r{i}"),
                group: "g".into(),
                depends_on: d.iter().map(|p| format!("r{p}")).collect(),
                policy: policy(kind),
                autostart: false,
                readiness: (i + usize::from(kind)) % 2 == 0,
            })
            .collect();
        let mut now = Instant::now();
        let mut m = Monitor::new(specs.clone(), now).unwrap();
        let from: Vec<StartFrom> = starts
            .iter()
            .take(n)
            .map_while(|s| match s {
                0 => Some(StartFrom::Reattach),
                1 => Some(StartFrom::Lost),
                2 => Some(StartFrom::Online),
                3 => Some(StartFrom::Offline),
                _ => None,
            })
            .collect();
        // Opens, reattaches and closes out, as the daemon would hold them.
        let mut life_ops: HashMap<ResId, &'static str> = HashMap::new();
        let mut opened = vec![false; n];
        let mut pending = m.start(now, &from);
        // Outstanding serialized calls and terminations, as the daemon would hold them.
        let mut calls: HashMap<ResId, (EntryPoint, u64)> = HashMap::new();
        let mut terms: HashMap<ResId, u64> = HashMap::new();
        // Each resource's state as its notices told it.
        let mut states = vec![State::Offline; n];
        let mut maintenance = vec![false; n];
        for op in ops {
            // Whether an operator (or a reload) asked for what follows.
            let operator = matches!(op, Op::Cmd(..) | Op::Replace(_) | Op::Shutdown);
            let before = states.clone();
            let wanted: Vec<bool> = (0..n).map(|id| m.view(id).wants_online).collect();
            let event = match op {
                Op::Cmd(i, c) => Event::Command(
                    i % n,
                    match c {
                        0 => Command::Online,
                        1 => Command::Offline,
                        2 => Command::Terminate { exit_code: 3 },
                        3 => Command::Restart,
                        m => {
                            maintenance[i % n] = m == 4;
                            Command::Maintenance(m == 4)
                        }
                    },
                ),
                Op::Ready(i, ready) => Event::Readiness {
                    id: i % n,
                    ready,
                    detail: String::new(),
                },
                Op::Answer(i, a) => {
                    let id = i % n;
                    let Some(&(entry, seq)) = calls.get(&id) else {
                        continue;
                    };
                    calls.remove(&id);
                    let outcome = match (entry, a) {
                        (EntryPoint::LooksAlive | EntryPoint::IsAlive, a) => {
                            CallOutcome::Alive(a % 2 == 0)
                        }
                        (_, 0 | 1) => CallOutcome::Done,
                        (_, 2) => CallOutcome::Pending,
                        _ => CallOutcome::Error("boom".into()),
                    };
                    if outcome == CallOutcome::Pending {
                        calls.insert(id, (entry, seq));
                    }
                    Event::Returned { id, seq, outcome }
                }
                Op::Notice(i) => Event::FailureNotice {
                    id: i % n,
                    reason: "died".into(),
                },
                Op::Finish(i) => {
                    let id = i % n;
                    let Some(seq) = terms.remove(&id) else {
                        continue;
                    };
                    Event::Terminated { id, seq }
                }
                Op::Opened(i, ok) => {
                    let id = i % n;
                    if life_ops.get(&id) != Some(&"open") {
                        continue;
                    }
                    life_ops.remove(&id);
                    opened[id] = ok;
                    Event::Opened {
                        id,
                        result: if ok {
                            Ok(())
                        } else {
                            Err("open failed".into())
                        },
                    }
                }
                Op::Adopted(i, alive) => {
                    let id = i % n;
                    if life_ops.get(&id) != Some(&"reattach") {
                        continue;
                    }
                    life_ops.remove(&id);
                    Event::Adopted { id, alive }
                }
                Op::Closed(i) => {
                    let id = i % n;
                    if life_ops.get(&id) != Some(&"close") {
                        continue;
                    }
                    life_ops.remove(&id);
                    Event::Closed { id }
                }
                Op::Replace(i) => {
                    let replace = [format!("r{}", i % n)];
                    let r = m.reconfigure(now, specs.clone(), &replace).unwrap();
                    pending.extend(r.actions);
                    Event::Tick
                }
                Op::Shutdown => Event::Shutdown,
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    Event::Tick
                }
            };
            let mut actions = std::mem::take(&mut pending);
            actions.extend(m.handle(now, event));
            // Due deadlines are handled the way the daemon does; a tick
            // must move them, or the daemon would spin.
            for _ in 0..50 {
                match m.next_deadline() {
                    Some(t) if t <= now => actions.extend(m.handle(now, Event::Tick)),
                    _ => break,
                }
            }
            prop_assert!(
                m.next_deadline().is_none_or(|t| t > now),
                "a due deadline does not move"
            );
            for a in actions {
                // Maintenance: no failure acts on a resource that was online.
                let kept = |id: ResId| {
                    !operator && maintenance[id] && wanted[id] && before[id] == State::Online
                };
                match &a {
                    Action::Terminate { id, .. } => {
                        prop_assert!(!kept(*id), "r{id} in maintenance terminated")
                    }
                    Action::Call {
                        id,
                        entry: EntryPoint::Offline,
                        ..
                    } => {
                        prop_assert!(!kept(*id), "r{id} in maintenance taken offline")
                    }
                    _ => {}
                }
                match a {
                    Action::Call { id, entry, seq } => {
                        prop_assert!(
                            !calls.contains_key(&id),
                            "second call {entry} on r{id} while {:?} in flight",
                            calls[&id]
                        );
                        if entry == EntryPoint::Online {
                            for p in &deps[id] {
                                prop_assert_eq!(
                                    m.state(*p),
                                    State::Online,
                                    "r{} online before provider r{}",
                                    id,
                                    p
                                );
                            }
                        }
                        prop_assert!(opened[id], "{entry} called on r{id}, which is not open");
                        prop_assert!(
                            !life_ops.contains_key(&id),
                            "{entry} called on r{id} while its {} is out",
                            life_ops[&id]
                        );
                        calls.insert(id, (entry, seq));
                    }
                    Action::Open { id, .. }
                    | Action::Reattach { id }
                    | Action::Close { id, .. } => {
                        let what = match a {
                            Action::Open { .. } => "open",
                            Action::Reattach { .. } => "reattach",
                            _ => "close",
                        };
                        prop_assert!(
                            !life_ops.contains_key(&id),
                            "{what} of r{id} while its {} is out",
                            life_ops[&id]
                        );
                        prop_assert!(
                            (what == "open") != opened[id],
                            "{what} of r{id}, which is {}open",
                            if opened[id] { "" } else { "not " }
                        );
                        if what == "close" {
                            prop_assert!(
                                !calls.contains_key(&id) && !terms.contains_key(&id),
                                "close of r{id} while {:?} / {:?} runs",
                                calls.get(&id),
                                terms.get(&id)
                            );
                            opened[id] = false;
                        }
                        life_ops.insert(id, what);
                    }
                    Action::Terminate { id, seq, .. } | Action::ForceKill { id, seq, .. } => {
                        calls.remove(&id);
                        terms.insert(id, seq);
                    }
                    Action::CancelCheck { id, seq } => {
                        let cancelled = calls.remove(&id);
                        prop_assert!(
                            cancelled.is_some_and(|(e, s)| e.is_health_check() && s == seq),
                            "cancelled {seq} on r{id}, but {cancelled:?} was in flight"
                        );
                    }
                    Action::Notify(notice) => {
                        let before = states[notice.id];
                        prop_assert!(
                            before.may_become(notice.state),
                            "r{} moved {before} -> {} ({}), not in ALLOWED_TRANSITIONS",
                            notice.id,
                            notice.state,
                            notice.reason
                        );
                        moves.insert((before, notice.state));
                        states[notice.id] = notice.state;
                    }
                    Action::Failover { .. } | Action::Readiness { .. } => {}
                    Action::Stopped { id, rung, .. } => {
                        prop_assert!(
                            states[id].is_down(),
                            "r{id} reported stopped by {rung:?} while {}",
                            states[id]
                        );
                        seen.rungs.insert(rung);
                    }
                    Action::Failed { id, class } => {
                        prop_assert_eq!(
                            states[id],
                            State::Failed,
                            "r{} reported failed ({:?}) while {}",
                            id,
                            class,
                            states[id]
                        );
                        seen.classes.insert(class);
                    }
                }
            }
            m.check_settled(now);
        }
    }
    Ok(())
}

/// The stop rungs and failure classes the runs reached.
#[derive(Default)]
struct Seen {
    rungs: HashSet<Rung>,
    classes: HashSet<FailureClass>,
}

#[test]
fn every_allowed_transition_is_taken() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        graph(),
        0..6u8,
        starts(),
        proptest::collection::vec(op(), 1..80),
    );
    let mut moves = HashSet::new();
    let mut seen = Seen::default();
    for _ in 0..400 {
        let (deps, kind, starts, ops) = strategy.new_tree(&mut runner).unwrap().current();
        run(deps, kind, starts, ops, &mut moves, &mut seen).unwrap();
    }
    let rungs: Vec<_> = Rung::ALL
        .iter()
        .filter(|r| !seen.rungs.contains(r))
        .collect();
    assert!(rungs.is_empty(), "no stop ended by {rungs:?}");
    let classes: Vec<_> = FailureClass::ALL
        .iter()
        .filter(|c| !seen.classes.contains(c))
        .collect();
    assert!(classes.is_empty(), "no failure of class {classes:?}");
    let missing: Vec<_> = ALLOWED_TRANSITIONS
        .iter()
        .filter(|&&(from, to, _)| !moves.contains(&(from, to)))
        .collect();
    assert!(missing.is_empty(), "never taken: {missing:?}");
}
