//! The etcd key layout, as pure functions that build and parse keys.
//!
//! Under the prefix `<p>` (default `/resmon`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `<p>/nodes/<node>` | JSON [`NodeRecord`] | the node's |
//! | `<p>/groups/<group>/owner` | the owning node's name | the owner's |
//! | `<p>/groups/<group>/target` | the node a move was requested to | none |
//! | `<p>/groups/<group>/failed/<node>` | empty: `node` gave the group up after its restart threshold | that node's |
//! | `<p>/groups/<group>/failovers` | JSON list of the Unix milliseconds of its recent failovers | none |
//! | `<p>/maintenance/<node>` | empty: the node's resources are in maintenance | none |
//! | `<p>/drain/<node>` | empty: the node's groups move off it and no group comes to it | none |
//!
//! A key bound to a lease disappears with it: a node key exists exactly
//! while its node is a live member, and an owner key while its owner may
//! run the group. The owner key's `create_revision` is the group's fencing
//! token: it only grows from one owner to the next.
//!
//! Node and group names never hold `/` ([`check_name`]), so every key
//! parses back without ambiguity.

use serde::{Deserialize, Serialize};

pub use resmon_contract::{check_name, NameError};

/// The value of a node key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// When the node's monitor joined, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The monitor's process id on its machine.
    pub pid: u32,
    /// The node's local time zone: seconds east of UTC when it joined
    /// (for `failback_window`); absent from records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_s: Option<i32>,
}

impl NodeRecord {
    /// The record for `node` joining now from this process.
    pub fn now(node: &str) -> NodeRecord {
        let started_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        NodeRecord {
            node: node.to_owned(),
            started_unix_ms,
            pid: std::process::id(),
            utc_offset_s: local_utc_offset(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a NodeRecord always serializes")
    }

    pub fn from_json(value: &[u8]) -> Result<NodeRecord, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

/// This machine's local time zone now, in seconds east of UTC (`TZ`, or
/// `/etc/localtime`), as the C library has it.
pub fn local_utc_offset() -> Option<i32> {
    let now: libc::time_t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| libc::time_t::try_from(d.as_secs()).ok())?;
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the
    // reentrant form and writes only to `tm`.
    let r = unsafe { libc::localtime_r(&now, &mut tm) };
    if r.is_null() {
        return None;
    }
    i32::try_from(tm.tm_gmtoff).ok()
}

/// What a key under the prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Node(String),
    Owner(String),
    Target(String),
    Failed { group: String, node: String },
    Failovers(String),
    Maintenance(String),
    Drain(String),
}

/// Builds and parses the keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The prefix without a trailing `/` (empty for the prefix `/`).
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// Every key of the cluster starts with this (`<p>/`).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `<p>/nodes/`: the range of node keys.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `<p>/nodes/<node>`.
    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// `<p>/groups/`: the range of every group key.
    pub fn groups(&self) -> String {
        format!("{}/groups/", self.prefix)
    }

    /// `<p>/groups/<group>/owner`.
    pub fn owner(&self, group: &str) -> String {
        format!("{}/groups/{group}/owner", self.prefix)
    }

    /// `<p>/groups/<group>/target`.
    pub fn target(&self, group: &str) -> String {
        format!("{}/groups/{group}/target", self.prefix)
    }

    /// `<p>/groups/<group>/failed/`: the range of the group's failed marks.
    pub fn failed_range(&self, group: &str) -> String {
        format!("{}/groups/{group}/failed/", self.prefix)
    }

    /// `<p>/groups/<group>/failed/<node>`.
    pub fn failed(&self, group: &str, node: &str) -> String {
        format!("{}/groups/{group}/failed/{node}", self.prefix)
    }

    /// `<p>/groups/<group>/failovers`: when the group recently failed
    /// over (no lease: the count outlives its owners).
    pub fn failovers(&self, group: &str) -> String {
        format!("{}/groups/{group}/failovers", self.prefix)
    }

    /// `<p>/maintenance/<node>`: the node's mark (no lease: it stays
    /// across restarts of the node until cleared).
    pub fn maintenance(&self, node: &str) -> String {
        format!("{}/maintenance/{node}", self.prefix)
    }

    /// `<p>/drain/<node>`: the node is drained (no lease: it stays across
    /// restarts of the node until resumed).
    pub fn drain(&self, node: &str) -> String {
        format!("{}/drain/{node}", self.prefix)
    }

    /// What `key` is, or `None` for a key outside this layout.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| check_name(s).is_ok().then(|| s.to_owned());
        match parts.as_slice() {
            ["nodes", node] => name(node).map(Key::Node),
            ["groups", group, "owner"] => name(group).map(Key::Owner),
            ["groups", group, "target"] => name(group).map(Key::Target),
            ["groups", group, "failovers"] => name(group).map(Key::Failovers),
            ["maintenance", node] => name(node).map(Key::Maintenance),
            ["drain", node] => name(node).map(Key::Drain),
            ["groups", group, "failed", node] => Some(Key::Failed {
                group: name(group)?,
                node: name(node)?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_build_and_parse_back() {
        for prefix in ["/resmon", "/resmon/", "/a/b", "/"] {
            let k = Keys::new(prefix);
            let cases = [
                (k.node("n1"), Key::Node("n1".into())),
                (k.owner("web"), Key::Owner("web".into())),
                (k.target("web"), Key::Target("web".into())),
                (k.failovers("web"), Key::Failovers("web".into())),
                (k.maintenance("n1"), Key::Maintenance("n1".into())),
                (k.drain("n1"), Key::Drain("n1".into())),
                (
                    k.failed("web", "n1"),
                    Key::Failed {
                        group: "web".into(),
                        node: "n1".into(),
                    },
                ),
            ];
            for (key, parsed) in cases {
                assert!(key.starts_with(&k.root()), "{key}");
                assert_eq!(k.parse(&key), Some(parsed), "{key}");
            }
            assert!(k.node("n1").starts_with(&k.nodes()));
            assert!(k.owner("g").starts_with(&k.groups()));
            assert!(k.failed("g", "n").starts_with(&k.failed_range("g")));
        }
        assert_eq!(
            Keys::new("/resmon").owner("web"),
            "/resmon/groups/web/owner"
        );
        assert_eq!(Keys::new("/").node("a"), "/nodes/a");
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        let k = Keys::new("/resmon");
        for key in [
            "/resmonx/nodes/a",
            "/other/nodes/a",
            "/resmon/nodes/",
            "/resmon/nodes/a/b",
            "/resmon/groups/web",
            "/resmon/groups/web/owner/x",
            "/resmon/groups/web/failed/",
            "/resmon/groups/.x/owner",
            "/resmon/groups/web/lock",
            "/resmon",
        ] {
            assert_eq!(k.parse(key), None, "{key}");
        }
    }

    #[test]
    fn node_records_round_trip() {
        let r = NodeRecord::now("n1");
        assert_eq!(r.pid, std::process::id());
        assert!(r.started_unix_ms > 1_600_000_000_000);
        let json = r.to_json();
        assert!(json.contains("\"started_unix_ms\""), "{json}");
        assert_eq!(NodeRecord::from_json(json.as_bytes()).unwrap(), r);
        assert!(NodeRecord::from_json(b"garbage").is_err());
        // A record of an older version, without the time zone, still reads.
        let old = NodeRecord::from_json(br#"{"node":"n1","started_unix_ms":1,"pid":2}"#).unwrap();
        assert_eq!(old.utc_offset_s, None);
        assert!(r.utc_offset_s.is_some_and(|o| o.abs() <= 14 * 3600));
    }
}
