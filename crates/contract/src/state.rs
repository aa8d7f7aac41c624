//! Resource states and entry-point names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The state of a resource, as operators and the API see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not running; the resting state.
    Offline,
    /// `online` was called and has not finished yet.
    OnlinePending,
    /// Running and, as far as the last health check knows, healthy.
    Online,
    /// `offline` was called and has not finished yet.
    OfflinePending,
    /// Terminated because of a failure; stays here until restarted.
    Failed,
}

impl State {
    /// Every state.
    pub const ALL: [State; 5] = [
        State::Offline,
        State::OnlinePending,
        State::Online,
        State::OfflinePending,
        State::Failed,
    ];

    /// The name used in the CLI, the API and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Offline => "offline",
            State::OnlinePending => "online_pending",
            State::Online => "online",
            State::OfflinePending => "offline_pending",
            State::Failed => "failed",
        }
    }

    /// True for the two states in which a call is still under way.
    pub fn is_pending(self) -> bool {
        matches!(self, State::OnlinePending | State::OfflinePending)
    }

    /// True when nothing of the resource should be running.
    pub fn is_down(self) -> bool {
        matches!(self, State::Offline | State::Failed)
    }
}

/// Every change of state the monitor makes, with why it is allowed. A
/// resource may also stay in its state with a new reason. Any other move is
/// a bug of the monitor: debug builds assert it, and the core's property
/// test checks it after every event.
pub const ALLOWED_TRANSITIONS: &[(State, State, &str)] = &[
    (State::Offline, State::OnlinePending, "online is called"),
    (
        State::Offline,
        State::Online,
        "adopted running after a monitor restart",
    ),
    (
        State::Offline,
        State::Failed,
        "its open failed, or it died while no monitor watched",
    ),
    (State::OnlinePending, State::Online, "online finished"),
    (
        State::OnlinePending,
        State::Failed,
        "online failed or its pending_timeout passed",
    ),
    (
        State::OnlinePending,
        State::OfflinePending,
        "an operator's terminate",
    ),
    (
        State::OnlinePending,
        State::Offline,
        "terminated while coming online, at shutdown",
    ),
    (
        State::Online,
        State::OfflinePending,
        "offline is called, or an operator's terminate",
    ),
    (
        State::Online,
        State::Failed,
        "is_alive said no, or it reported a failure",
    ),
    (
        State::OfflinePending,
        State::Offline,
        "offline finished, or terminate ended it",
    ),
    (State::Failed, State::OnlinePending, "a restart"),
    (
        State::Failed,
        State::Offline,
        "an operator's offline or terminate",
    ),
];

impl State {
    /// Whether the monitor may move a resource from `self` to `next`: see
    /// [`ALLOWED_TRANSITIONS`].
    pub fn may_become(self, next: State) -> bool {
        self == next
            || ALLOWED_TRANSITIONS
                .iter()
                .any(|&(from, to, _)| (from, to) == (self, next))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The entry points of a resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryPoint {
    Open,
    Close,
    Online,
    Offline,
    Terminate,
    LooksAlive,
    IsAlive,
    ResourceControl,
    ResourceTypeControl,
}

impl EntryPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryPoint::Open => "open",
            EntryPoint::Close => "close",
            EntryPoint::Online => "online",
            EntryPoint::Offline => "offline",
            EntryPoint::Terminate => "terminate",
            EntryPoint::LooksAlive => "looks_alive",
            EntryPoint::IsAlive => "is_alive",
            EntryPoint::ResourceControl => "resource_control",
            EntryPoint::ResourceTypeControl => "resource_type_control",
        }
    }

    /// Whether this entry point may run while another entry point of the same
    /// resource is in flight. Only `terminate` may.
    pub fn runs_concurrently(self) -> bool {
        self == EntryPoint::Terminate
    }

    /// `looks_alive` or `is_alive`: a check that a stop does not wait for.
    pub fn is_health_check(self) -> bool {
        matches!(self, EntryPoint::LooksAlive | EntryPoint::IsAlive)
    }
}

impl fmt::Display for EntryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_through_json() {
        for s in State::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        }
    }

    #[test]
    fn a_stop_always_ends_down_and_nothing_leaves_a_pending_state_sideways() {
        // Every state can reach `offline`; a pending state only moves on to
        // where its call leads, or down.
        for s in State::ALL {
            let mut seen = vec![s];
            let mut i = 0;
            while i < seen.len() {
                for &(from, to, _) in ALLOWED_TRANSITIONS {
                    if from == seen[i] && !seen.contains(&to) {
                        seen.push(to);
                    }
                }
                i += 1;
            }
            assert!(seen.contains(&State::Offline), "{s} cannot reach offline");
        }
        assert!(!State::OfflinePending.may_become(State::Online));
        assert!(!State::OfflinePending.may_become(State::OnlinePending));
        assert!(!State::Online.may_become(State::Offline));
        assert!(State::Failed.may_become(State::Failed));
    }

    #[test]
    fn only_terminate_runs_concurrently() {
        assert!(EntryPoint::Terminate.runs_concurrently());
        assert!(!EntryPoint::Online.runs_concurrently());
        assert!(!EntryPoint::Close.runs_concurrently());
    }
}
