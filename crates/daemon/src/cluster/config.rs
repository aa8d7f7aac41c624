//! `[cluster]` and `[group.NAME]`: the settings of a node that shares its
//! groups with other nodes through etcd, checked like the rest of the
//! config (every problem reported, each naming its place).

use crate::config::check_name;
use resmon_contract::parse_duration;
use std::collections::BTreeMap;
use std::time::Duration;

/// The shortest lease etcd grants reliably (docs/design.md §7).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
pub const DEFAULT_KEY_PREFIX: &str = "/resmon";

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster.
    pub node: String,
    /// etcd client URLs.
    pub etcd: Vec<String>,
    pub lease_ttl: Duration,
    pub key_prefix: String,
    /// How long before the lease could expire elsewhere the node's
    /// resources must be down: covers the time a terminate takes and clock
    /// drift. Default: a quarter of the lease.
    pub fence_margin: Duration,
    /// The kernel watchdog device the fence guard keeps alive while the
    /// node may run groups; `None` (the default): not used.
    pub watchdog: Option<String>,
}

/// `[group.NAME]`: where a group prefers to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupConfig {
    /// Nodes in order of preference; others are used when none of these is
    /// live.
    pub preferred_nodes: Vec<String>,
    /// Move back to a more preferred node when it is live again.
    pub failback: bool,
}

const CLUSTER_KEYS: &str = "node, etcd, lease_ttl, key_prefix, fence_margin, watchdog";

pub fn parse_cluster(v: &toml::Value, problems: &mut Vec<String>) -> Option<ClusterConfig> {
    let Some(t) = v.as_table() else {
        problems.push("[cluster] must be a table".into());
        return None;
    };
    let before = problems.len();
    let mut node = None;
    let mut etcd = Vec::new();
    let mut lease_ttl = DEFAULT_LEASE_TTL;
    let mut key_prefix = DEFAULT_KEY_PREFIX.to_string();
    let mut fence_margin = None;
    let mut watchdog = None;
    let duration = |k: &str, v: &toml::Value, problems: &mut Vec<String>| match v {
        toml::Value::String(s) => match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!("[cluster] {k}: {e}"));
                None
            }
        },
        _ => {
            problems.push(format!("[cluster] {k}: must be a duration such as \"3s\""));
            None
        }
    };
    for (k, v) in t {
        match (k.as_str(), v) {
            ("node", toml::Value::String(s)) => match check_name(s) {
                Ok(()) => node = Some(s.clone()),
                Err(e) => problems.push(format!("[cluster] node: {e}")),
            },
            ("node", _) => problems.push("[cluster] node: must be a string".into()),
            ("etcd", toml::Value::Array(a)) => {
                for (i, e) in a.iter().enumerate() {
                    match e.as_str() {
                        Some(u) if u.starts_with("https://") => problems.push(format!(
                            "[cluster] etcd[{i}]: {u:?}: TLS to etcd is not supported; use http:// on a trusted network"
                        )),
                        Some(u) if u.starts_with("http://") => {
                            if u.len() <= "http://".len() {
                                problems.push(format!("[cluster] etcd[{i}]: {u:?} names no host"));
                            } else {
                                etcd.push(u.to_string());
                            }
                        }
                        _ => problems.push(format!(
                            "[cluster] etcd[{i}]: must be a URL such as \"http://127.0.0.1:2379\""
                        )),
                    }
                }
            }
            ("etcd", _) => problems.push(
                "[cluster] etcd: must be a list of URLs, e.g. [\"http://127.0.0.1:2379\"]".into(),
            ),
            ("lease_ttl", v) => {
                if let Some(d) = duration(k, v, problems) {
                    if d < MIN_LEASE_TTL {
                        problems.push(format!(
                            "[cluster] lease_ttl: {} is shorter than the {} etcd grants reliably",
                            humantime::format_duration(d),
                            humantime::format_duration(MIN_LEASE_TTL)
                        ));
                    } else if d.subsec_millis() != 0 {
                        problems.push("[cluster] lease_ttl: etcd leases are whole seconds".into());
                    } else {
                        lease_ttl = d;
                    }
                }
            }
            ("fence_margin", v) => fence_margin = duration(k, v, problems),
            ("key_prefix", toml::Value::String(s))
                if s.starts_with('/') && s.len() > 1 && !s.ends_with('/') =>
            {
                key_prefix = s.clone()
            }
            ("key_prefix", _) => problems.push(
                "[cluster] key_prefix: must start with / and not end with one, e.g. \"/resmon\""
                    .into(),
            ),
            ("watchdog", toml::Value::Boolean(false)) => watchdog = None,
            ("watchdog", toml::Value::Boolean(true)) => watchdog = Some("/dev/watchdog".into()),
            ("watchdog", toml::Value::String(s)) if s.starts_with('/') => {
                watchdog = Some(s.clone())
            }
            ("watchdog", _) => problems.push(
                "[cluster] watchdog: false (the default), true for /dev/watchdog, or a device path"
                    .into(),
            ),
            (other, _) => problems.push(format!(
                "[cluster]: unknown key {other:?}; the keys are {CLUSTER_KEYS}"
            )),
        }
    }
    if node.is_none() && !t.contains_key("node") {
        problems.push("[cluster] node is missing: this node's name, e.g. node = \"n1\"".into());
    }
    if etcd.is_empty() && !t.contains_key("etcd") {
        problems.push(
            "[cluster] etcd is missing: the etcd endpoints, e.g. etcd = [\"http://127.0.0.1:2379\"]"
                .into(),
        );
    } else if etcd.is_empty() && problems.len() == before {
        problems.push("[cluster] etcd: name at least one endpoint".into());
    }
    let fence_margin = fence_margin.unwrap_or(lease_ttl / 4);
    if fence_margin.is_zero() || fence_margin > lease_ttl / 2 {
        problems.push(format!(
            "[cluster] fence_margin: must be more than 0 and at most half of lease_ttl ({})",
            humantime::format_duration(lease_ttl / 2)
        ));
    }
    if problems.len() != before {
        return None;
    }
    Some(ClusterConfig {
        node: node?,
        etcd,
        lease_ttl,
        key_prefix,
        fence_margin,
        watchdog,
    })
}

/// `[group.NAME]` tables. Groups named here must have resources (checked
/// by the caller, which knows them).
pub fn parse_groups(v: &toml::Value, problems: &mut Vec<String>) -> BTreeMap<String, GroupConfig> {
    let mut out = BTreeMap::new();
    let Some(t) = v.as_table() else {
        problems.push("group must be written as [group.NAME] tables".into());
        return out;
    };
    for (name, v) in t {
        let here = format!("[group.{name}]");
        if let Err(e) = check_name(name) {
            problems.push(format!("{here}: {e}"));
            continue;
        }
        let Some(t) = v.as_table() else {
            problems.push(format!("{here} must be a table"));
            continue;
        };
        let mut g = GroupConfig::default();
        for (k, v) in t {
            match (k.as_str(), v) {
                ("preferred_nodes", toml::Value::Array(a)) => {
                    for (i, n) in a.iter().enumerate() {
                        match n.as_str().map(|s| (s, check_name(s))) {
                            Some((s, Ok(()))) if g.preferred_nodes.iter().any(|p| p == s) => {
                                problems
                                    .push(format!("{here} preferred_nodes: {s:?} is listed twice"))
                            }
                            Some((s, Ok(()))) => g.preferred_nodes.push(s.to_string()),
                            Some((_, Err(e))) => {
                                problems.push(format!("{here} preferred_nodes[{i}]: {e}"))
                            }
                            None => problems
                                .push(format!("{here} preferred_nodes[{i}]: must be a node name")),
                        }
                    }
                }
                ("preferred_nodes", _) => problems.push(format!(
                    "{here} preferred_nodes: must be a list of node names"
                )),
                ("failback", toml::Value::Boolean(b)) => g.failback = *b,
                ("failback", _) => problems.push(format!("{here} failback: must be true or false")),
                (other, _) => problems.push(format!(
                    "{here}: unknown key {other:?}; the keys are preferred_nodes, failback"
                )),
            }
        }
        out.insert(name.clone(), g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(text: &str) -> Result<ClusterConfig, Vec<String>> {
        let v: toml::Value = toml::from_str::<toml::Table>(text).unwrap()["cluster"].clone();
        let mut problems = Vec::new();
        parse_cluster(&v, &mut problems).ok_or(problems)
    }

    #[test]
    fn defaults_and_values() {
        let c = cluster("[cluster]\nnode = \"n1\"\netcd = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.key_prefix, "/resmon");
        assert_eq!(c.fence_margin, Duration::from_millis(750));
        assert_eq!(c.watchdog, None);
        let c = cluster(
            "[cluster]\nnode = \"a\"\netcd = [\"http://10.0.0.1:2379\", \"http://e:2379\"]\nlease_ttl = \"2s\"\nkey_prefix = \"/x/y\"\nfence_margin = \"300ms\"\nwatchdog = true\n",
        )
        .unwrap();
        assert_eq!(c.etcd.len(), 2);
        assert_eq!(c.lease_ttl, Duration::from_secs(2));
        assert_eq!(c.fence_margin, Duration::from_millis(300));
        assert_eq!(c.watchdog.as_deref(), Some("/dev/watchdog"));
    }

    #[test]
    fn every_problem_is_named() {
        let p =
            cluster("[cluster]\nlease_ttl = \"1s\"\nkey_prefix = \"x\"\nfoo = 1\n").unwrap_err();
        let text = p.join("\n");
        for want in [
            "node is missing",
            "etcd is missing",
            "shorter than the 2s",
            "key_prefix: must start with /",
            "unknown key \"foo\"",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        let p = cluster(
            "[cluster]\nnode = \"bad name\"\netcd = [\"127.0.0.1:2379\"]\nlease_ttl = \"2500ms\"\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(p.contains("[cluster] node:"), "{p}");
        assert!(p.contains("etcd[0]: must be a URL"), "{p}");
        assert!(p.contains("whole seconds"), "{p}");
        let p = cluster("[cluster]\nnode = \"n\"\netcd = [\"https://e:2379\"]\n")
            .unwrap_err()
            .join("\n");
        assert!(p.contains("TLS"), "{p}");
        let p = cluster("[cluster]\nnode = \"n\"\netcd = []\n")
            .unwrap_err()
            .join("\n");
        assert!(p.contains("at least one endpoint"), "{p}");
        let p = cluster("[cluster]\nnode = \"n\"\netcd = [\"http://e\"]\nfence_margin = \"2s\"\n")
            .unwrap_err()
            .join("\n");
        assert!(p.contains("fence_margin"), "{p}");
    }

    #[test]
    fn groups() {
        let v: toml::Value = toml::from_str::<toml::Table>(
            "[group.web]\npreferred_nodes = [\"n2\", \"n1\"]\nfailback = true\n[group.db]\nfailback = 1\npreferred_nodes = [\"a\", \"a\"]\nx = 2\n",
        )
        .unwrap()["group"]
            .clone();
        let mut problems = Vec::new();
        let g = parse_groups(&v, &mut problems);
        assert_eq!(g["web"].preferred_nodes, ["n2", "n1"]);
        assert!(g["web"].failback);
        let text = problems.join("\n");
        assert!(
            text.contains("[group.db] failback: must be true or false"),
            "{text}"
        );
        assert!(text.contains("listed twice"), "{text}");
        assert!(text.contains("unknown key \"x\""), "{text}");
    }
}
