//! The guard's wire protocol: one JSON object per line, each way, on a Unix
//! stream socket.
//!
//! The monitor sends [`Request`]s; the guard answers each with one
//! [`Reply`] in order, and may also send a [`Reply::Fenced`] at any time
//! (when a deadline passed). JSON lines keep the protocol readable with
//! `socat` and need no framing beyond the newline; a line longer than
//! [`MAX_LINE`] is refused.

use std::path::PathBuf;
use std::time::Duration;

use resmon_contract::Scope;
use serde::{Deserialize, Serialize};

use crate::settings::{Settings, SettingsError, Tls};

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

/// The monitor's [`Settings`] on the wire: what the guard needs to reach
/// etcd and revoke the node's lease. Every field of [`Settings`] is here
/// (the conversions name them all, so a new connection setting, such as
/// TLS or a user, fails to build until it is carried here too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSettings {
    pub node: String,
    pub endpoints: Vec<String>,
    pub lease_ttl_ms: u64,
    pub key_prefix: String,
    pub margin_ms: u64,
    /// `tls`: the CA, client certificate and key files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WireTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// [`Tls`] on the wire: paths, read by whoever connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl From<&Settings> for WireSettings {
    fn from(s: &Settings) -> WireSettings {
        let Settings {
            node,
            endpoints,
            lease_ttl,
            key_prefix,
            margin,
            tls,
            user,
            password_file,
        } = s;
        WireSettings {
            node: node.clone(),
            endpoints: endpoints.clone(),
            lease_ttl_ms: millis(*lease_ttl),
            key_prefix: key_prefix.clone(),
            margin_ms: millis(*margin),
            tls: tls.as_ref().map(|Tls { ca, cert, key }| WireTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            user: user.clone(),
            password_file: password_file.clone(),
        }
    }
}

impl TryFrom<WireSettings> for Settings {
    type Error = SettingsError;

    /// The settings, checked as the monitor checks its own.
    fn try_from(w: WireSettings) -> Result<Settings, SettingsError> {
        let s = Settings {
            node: w.node,
            endpoints: w.endpoints,
            lease_ttl: Duration::from_millis(w.lease_ttl_ms),
            key_prefix: w.key_prefix,
            margin: Duration::from_millis(w.margin_ms),
            tls: w.tls.map(|WireTls { ca, cert, key }| Tls { ca, cert, key }),
            user: w.user,
            password_file: w.password_file,
        };
        s.validate()?;
        Ok(s)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// From the monitor to the guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The monitor introduces itself, once after connecting: how to reach
    /// etcd, how long to wait for a monitor that went away, and where to
    /// leave the report of a fence made while no monitor listens. Without
    /// it the guard never touches the lease.
    Attach {
        etcd: Box<WireSettings>,
        /// How long after the monitor's socket closed (while armed) the
        /// guard waits for a monitor to come back before it kills.
        reattach_grace_ms: u64,
        /// A file for the [`FenceReport`] of a fence made after the
        /// monitor went away (written whole, then renamed into place).
        #[serde(default)]
        report: Option<PathBuf>,
        /// Where the guard listens for a monitor that comes back (a
        /// restarted one, or one that re-executed itself for an upgrade)
        /// while it waits out `reattach_grace` or the deadline: a socket
        /// path in the monitor's private state directory. Only a peer of
        /// the guard's own user is let in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listen: Option<PathBuf>,
    },
    /// Replaces the deadline and the set of scopes to kill when it passes.
    Arm {
        /// The deadline on `CLOCK_BOOTTIME`, in nanoseconds since boot.
        until_boottime_ns: u64,
        scopes: Vec<WireScope>,
        /// The node's etcd lease that the deadline comes from, and that
        /// owns the groups of `scopes`: the guard revokes it once it has
        /// killed them after the monitor died (see [`LeaseAction`]).
        #[serde(default)]
        lease: Option<i64>,
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
    Attached,
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
    /// Whether it killed before the deadline, because the monitor died.
    #[serde(default)]
    pub early: bool,
    /// What the guard did to the node's lease, when no monitor was left
    /// to own it; `None` while the monitor listens (the lease is its).
    #[serde(default)]
    pub lease: Option<LeaseAction>,
}

/// What a fence made after the monitor died did to the node's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum LeaseAction {
    /// Revoked in etcd once every scope was seen empty: the owner keys
    /// went with it, and the next nodes in line take the groups now.
    /// `found` is false when etcd no longer knew the lease (it had
    /// expired).
    Revoked {
        lease: i64,
        found: bool,
        at_boottime_ns: u64,
    },
    /// Left alone: it expires in etcd after its TTL, as it would have
    /// without the guard. `why` says why it was not revoked.
    Kept { lease: Option<i64>, why: String },
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
            lease: Some(0x1234),
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
            early: true,
            lease: Some(LeaseAction::Revoked {
                lease: 7,
                found: true,
                at_boottime_ns: 3,
            }),
        });
        let back: Reply = serde_json::from_slice(&encode(&report)).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn settings_cross_checked() {
        let s = Settings::new("n1", vec!["http://127.0.0.1:2379".into()])
            .with_lease_ttl(Duration::from_secs(2))
            .with_key_prefix("/x");
        let wire = WireSettings::from(&s);
        let attach = Request::Attach {
            etcd: Box::new(wire.clone()),
            reattach_grace_ms: 500,
            report: None,
            listen: None,
        };
        let back: Request = serde_json::from_slice(&encode(&attach)).unwrap();
        assert_eq!(back, attach);
        assert_eq!(Settings::try_from(wire.clone()).unwrap(), s);
        // What the monitor would refuse, the guard refuses too.
        let bad = WireSettings {
            endpoints: vec!["ftp://x".into()],
            ..wire
        };
        let e = Settings::try_from(bad).unwrap_err();
        assert!(e.to_string().contains("etcd: endpoint"), "{e}");
    }

    #[test]
    fn fields_added_later_have_defaults() {
        // An arm and a report as the guard's first version wrote them.
        let arm: Request =
            serde_json::from_slice(b"{\"op\":\"arm\",\"until_boottime_ns\":5,\"scopes\":[]}")
                .unwrap();
        assert_eq!(
            arm,
            Request::Arm {
                until_boottime_ns: 5,
                scopes: vec![],
                lease: None
            }
        );
        let report: FenceReport = serde_json::from_slice(
            b"{\"deadline_boottime_ns\":1,\"at_boottime_ns\":2,\"scopes\":0,\"left\":[],\"errors\":[]}",
        )
        .unwrap();
        assert!(!report.early && report.lease.is_none());
    }
}
