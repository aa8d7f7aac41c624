//! The pure monitor: every rule of resmon's failure policy as a function
//! `(state, event, now) -> (state, actions)`, with no I/O and no clock of its
//! own.
//!
//! The daemon feeds [`Monitor::handle`] what happened (an operator command, an
//! entry point that returned, a process that died, time that passed) and
//! carries out the [`Action`]s it gets back: call an entry point, terminate,
//! force-kill, fail a group over, publish a notice. Time is an input: the
//! daemon sleeps until [`Monitor::next_deadline`] and then feeds
//! [`Event::Tick`]. Tests drive the same code with tokio's paused clock, so
//! every timing rule is a table row instead of a sleep.
//!
//! # What it decides
//!
//! * Health: `looks_alive` every `looks_alive_interval`; `false` (or a
//!   failure notice from the resource) triggers `is_alive` at once;
//!   `is_alive` every `is_alive_interval`; `false` marks the resource
//!   `failed` and terminates it.
//! * Pending calls: `pending_timeout` is the longest gap between two progress
//!   reports of an `online`/`offline`; past it, or on an error, the resource
//!   is terminated. Any other call outstanding past `deadlock_timeout` counts
//!   as a failure.
//! * The ladder: `terminate` is bounded by `terminate_timeout`, then the
//!   resource's whole process tree is force-killed.
//! * Restarts: up to `restart_threshold` within `restart_period`, each after
//!   `restart_delay`; past it the resource stays failed, its group is failed
//!   over (`restart_then_failover`), and it is tried again after
//!   `retry_period_on_failure`.
//! * Thresholds: `failure_threshold` failed `is_alive` answers in a row fail
//!   the resource (each one short of it is reported); `success_threshold`
//!   passes in a row clear a run. A failure the resource reported itself is
//!   never held back.
//! * Back-off: each restart's delay grows by `restart_backoff` up to
//!   `restart_delay_max`, and starts over once the resource stayed online
//!   for `restart_period`.
//! * Dependencies: a resource comes online only once all its providers are
//!   online (and ready, for those with readiness checks) and goes offline
//!   only once all its dependents are down; a provider that goes down takes
//!   its dependents offline, and they come back with it. Readiness gates
//!   starts only: not ready stops nothing.
//! * Maintenance: checks run and are reported, but no failure acts (no
//!   terminate, restart or failover, and a provider going down does not
//!   take it down) until it ends, when the resource is checked at once.
//! * Restart: an operator's restart takes a resource down with its
//!   dependents, then brings back those that were wanted online.

mod lifecycle;
mod monitor;

pub use lifecycle::{start_from, Earlier, Life, SaveSchedule, StartFrom};
pub use monitor::{
    later, Action, CallOutcome, Command, Event, FailureClass, Monitor, Notice, Reconfigured, ResId,
    ResourceSpec, ResourceView, Rung, Settled, SpecError, TermReason,
};
