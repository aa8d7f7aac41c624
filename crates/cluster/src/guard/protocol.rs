//! The guard's wire protocol: one JSON object per line, each way, on a Unix
//! stream socket.
//!
//! The monitor sends [`Request`]s; the guard answers each with one
//! [`Reply`] in order, and may also send a [`Reply::Fenced`] at any time
//! (when a deadline passed). JSON lines keep the protocol readable with
//! `socat` and need no framing beyond the newline; a line longer than
//! [`MAX_LINE`] is refused.

use std::path::PathBuf;

use resmon_contract::Scope;
use serde::{Deserialize, Serialize};

/// The longest line either side accepts.
pub const MAX_LINE: usize = 1 << 20;

/// A [`Scope`] on the wire: a resource's cgroup directory and its marker
/// variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireScope {
    pub cgroup: Option<PathBuf>,
    pub marker: (String, String),
}

impl From<&Scope> for WireScope {
    fn from(s: &Scope) -> WireScope {
        WireScope {
            cgroup: s.cgroup.clone(),
            marker: s.marker.clone(),
        }
    }
}

impl From<WireScope> for Scope {
    fn from(s: WireScope) -> Scope {
        Scope {
            cgroup: s.cgroup,
            marker: s.marker,
            ..Scope::default()
        }
    }
}

/// From the monitor to the guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Replaces the deadline and the set of scopes to kill when it passes.
    Arm {
        /// The deadline on `CLOCK_BOOTTIME`, in nanoseconds since boot.
        until_boottime_ns: u64,
        scopes: Vec<WireScope>,
    },
    /// The node owns nothing now: forget the deadline and the scopes.
    Disarm,
    /// Asks for the guard's state.
    Ping,
}

/// From the guard to the monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Armed {
        until_boottime_ns: u64,
        scopes: usize,
    },
    Disarmed,
    Pong(GuardStatus),
    /// Sent unasked: a deadline passed and the guard killed its scopes.
    Fenced(FenceReport),
    /// A request the guard could not read.
    Error {
        message: String,
    },
}

/// The guard's state, as [`Reply::Pong`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardStatus {
    pub pid: u32,
    /// The deadline it holds, if armed.
    pub armed_until_boottime_ns: Option<u64>,
    pub scopes: usize,
    /// Whether it holds the watchdog device open.
    pub watchdog: bool,
    /// Whether it could lock its memory (`mlockall`).
    pub memory_locked: bool,
}

/// What a fence did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceReport {
    /// The deadline that passed.
    pub deadline_boottime_ns: u64,
    /// When the guard started killing.
    pub at_boottime_ns: u64,
    /// How many scopes it killed.
    pub scopes: usize,
    /// The markers (`NAME=VALUE`) of scopes that still held processes
    /// when it gave up waiting; empty when everything is down.
    pub left: Vec<String>,
    /// Errors from the kills.
    pub errors: Vec<String>,
}

impl FenceReport {
    /// Whether every scope was seen empty.
    pub fn complete(&self) -> bool {
        self.left.is_empty()
    }
}

/// One message as a line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).expect("guard messages always serialize");
    line.push(b'\n');
    line
}

/// Takes every complete line out of `buf`, leaving a partial one.
pub fn split_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(line) = take_line(buf) {
        lines.push(line);
    }
    lines
}

/// Takes the first complete line out of `buf`, if there is one; the rest
/// stays.
pub fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=end).collect();
    line.pop();
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_lines() {
        let arm = Request::Arm {
            until_boottime_ns: 42,
            scopes: vec![WireScope {
                cgroup: Some("/sys/fs/cgroup/resmon.1/web".into()),
                marker: ("RESMON_RESOURCE".into(), "1/web".into()),
            }],
        };
        let line = encode(&arm);
        assert_eq!(line.last(), Some(&b'\n'));
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.starts_with("{\"op\":\"arm\""), "{text}");
        assert_eq!(text.matches('\n').count(), 1);
        let mut buf = line;
        buf.extend_from_slice(&encode(&Request::Ping));
        buf.extend_from_slice(b"{\"op\":\"dis");
        let lines = split_lines(&mut buf);
        assert_eq!(lines.len(), 2);
        assert_eq!(serde_json::from_slice::<Request>(&lines[0]).unwrap(), arm);
        assert_eq!(
            serde_json::from_slice::<Request>(&lines[1]).unwrap(),
            Request::Ping
        );
        assert_eq!(buf, b"{\"op\":\"dis");
        assert_eq!(
            serde_json::from_slice::<Request>(b"{\"op\":\"disarm\"}").unwrap(),
            Request::Disarm
        );
    }

    #[test]
    fn scopes_round_trip() {
        let s = Scope {
            cgroup: Some("/sys/fs/cgroup/x".into()),
            marker: ("RESMON_RESOURCE".into(), "7/db".into()),
            ..Scope::default()
        };
        let back = Scope::from(WireScope::from(&s));
        assert_eq!((back.cgroup, back.marker), (s.cgroup, s.marker));
        let report = Reply::Fenced(FenceReport {
            deadline_boottime_ns: 1,
            at_boottime_ns: 2,
            scopes: 1,
            left: vec![],
            errors: vec![],
        });
        let back: Reply = serde_json::from_slice(&encode(&report)).unwrap();
        assert_eq!(back, report);
    }
}
