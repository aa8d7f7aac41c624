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
        for s in [
            State::Offline,
            State::OnlinePending,
            State::Online,
            State::OfflinePending,
            State::Failed,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        }
    }

    #[test]
    fn only_terminate_runs_concurrently() {
        assert!(EntryPoint::Terminate.runs_concurrently());
        assert!(!EntryPoint::Online.runs_concurrently());
        assert!(!EntryPoint::Close.runs_concurrently());
    }
}
