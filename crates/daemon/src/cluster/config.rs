//! `[cluster]` and `[group.NAME]`: the settings of a node that shares its
//! groups with other nodes through etcd, checked like the rest of the
//! config (every problem reported, each naming its place).

use crate::config::check_name;
use resmon_cluster::Settings;
use resmon_contract::duration_value;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[cluster]`: how this node takes part, as `resmon-cluster` checks it
/// (one set of rules for `resmon check`, `serve` and the etcd client), and
/// the watchdog its fence guard keeps alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Node name, etcd endpoints, lease TTL, key prefix and fence margin
    /// (`fence_margin`: how long before the lease could expire elsewhere
    /// the node's resources must be down).
    pub settings: Settings,
    /// The kernel watchdog device the fence guard keeps alive while the
    /// node may run groups; `None` (the default): not used.
    pub watchdog: Option<String>,
    /// How long the fence guard waits, after this monitor died, for a
    /// monitor to come back before it kills the node's resources and
    /// revokes its lease. Less than `lease_ttl - fence_margin`.
    pub reattach_grace: Duration,
}

impl ClusterConfig {
    /// The default `reattach_grace`.
    pub const DEFAULT_REATTACH_GRACE: Duration = Duration::from_millis(500);
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

/// `[cluster]` as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    node: Option<String>,
    etcd: Option<Vec<RawUrl>>,
    lease_ttl: Option<String>,
    fence_margin: Option<String>,
    key_prefix: Option<String>,
    watchdog: Option<RawWatchdog>,
    reattach_grace: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(
    untagged,
    expecting = "must be a URL such as \"http://127.0.0.1:2379\""
)]
enum RawUrl {
    Url(String),
}

#[derive(serde::Deserialize)]
#[serde(
    untagged,
    expecting = "false (the default), true for /dev/watchdog, or a device path"
)]
enum RawWatchdog {
    On(bool),
    Device(String),
}

/// Reads `[cluster]`: the types of its keys here, their values by
/// [`Settings::validate`]. Every problem is pushed onto `problems`.
pub fn parse_cluster(v: &toml::Value, problems: &mut Vec<String>) -> Option<ClusterConfig> {
    let Some(t) = v.as_table() else {
        problems.push("[cluster] must be a table".into());
        return None;
    };
    let before = problems.len();
    let raw: RawCluster = crate::config::section(Some(v), "[cluster]", problems)?;
    // Their bounds are the settings' to judge.
    let duration = |k: &str, v: Option<String>, problems: &mut Vec<String>| {
        let v = v?;
        duration_value(k, Some(&v), true)
            .map_err(|e| problems.push(format!("[cluster] {e}")))
            .ok()
    };
    let node = raw.node;
    let endpoints = raw
        .etcd
        .map(|urls| urls.into_iter().map(|RawUrl::Url(u)| u).collect::<Vec<_>>());
    let lease_ttl = duration("lease_ttl", raw.lease_ttl, problems);
    let margin = duration("fence_margin", raw.fence_margin, problems);
    let grace = duration("reattach_grace", raw.reattach_grace, problems);
    let key_prefix = raw.key_prefix;
    let watchdog = match raw.watchdog {
        None | Some(RawWatchdog::On(false)) => None,
        Some(RawWatchdog::On(true)) => Some("/dev/watchdog".into()),
        Some(RawWatchdog::Device(d)) if d.starts_with('/') => Some(d),
        Some(RawWatchdog::Device(_)) => {
            problems.push(
                "[cluster] watchdog: false (the default), true for /dev/watchdog, or a device path"
                    .into(),
            );
            None
        }
    };
    if !t.contains_key("node") {
        problems.push("[cluster] node is missing: this node's name, e.g. node = \"n1\"".into());
    }
    if !t.contains_key("etcd") {
        problems.push(
            "[cluster] etcd is missing: the etcd endpoints, e.g. etcd = [\"http://127.0.0.1:2379\"]"
                .into(),
        );
    }
    // What is missing or mistyped was said above; valid stand-ins keep the
    // validation to what was given.
    let mut settings = Settings::new(
        node.unwrap_or_else(|| "node".into()),
        endpoints.unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]),
    );
    if let Some(ttl) = lease_ttl {
        settings = settings.with_lease_ttl(ttl);
    }
    if let Some(prefix) = key_prefix {
        settings = settings.with_key_prefix(prefix);
    }
    if let Some(margin) = margin {
        settings = settings.with_margin(margin);
    }
    if let Err(e) = settings.validate() {
        problems.extend(e.problems.iter().map(|p| format!("[cluster] {p}")));
    }
    let reattach_grace = grace.unwrap_or(ClusterConfig::DEFAULT_REATTACH_GRACE);
    // The guard must be done (kill, then revoke) before the deadline.
    let run_for = settings.lease_ttl.saturating_sub(settings.margin);
    if reattach_grace >= run_for {
        problems.push(format!(
            "[cluster] reattach_grace: {reattach_grace:?} must be less than lease_ttl - fence_margin ({run_for:?}), or the lease ends before the grace does"
        ));
    }
    (problems.len() == before).then_some(ClusterConfig {
        settings,
        watchdog,
        reattach_grace,
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
                    "{here}: {}",
                    resmon_contract::table::unknown_key(
                        other,
                        &["preferred_nodes", "failback"],
                        &[]
                    )
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
    use std::time::Duration;

    fn cluster(text: &str) -> Result<ClusterConfig, Vec<String>> {
        let v: toml::Value = toml::from_str::<toml::Table>(text).unwrap()["cluster"].clone();
        let mut problems = Vec::new();
        parse_cluster(&v, &mut problems).ok_or(problems)
    }

    #[test]
    fn defaults_and_values() {
        let c = cluster("[cluster]\nnode = \"n1\"\netcd = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert_eq!(
            c.settings,
            Settings::new("n1", vec!["http://127.0.0.1:2379".into()])
        );
        assert_eq!(c.settings.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.settings.key_prefix, "/resmon");
        assert_eq!(c.settings.margin, Duration::from_millis(750));
        assert_eq!(c.watchdog, None);
        assert_eq!(c.reattach_grace, Duration::from_millis(500));
        let c = cluster(
            "[cluster]\nnode = \"a\"\netcd = [\"http://10.0.0.1:2379\", \"http://e:2379\"]\nlease_ttl = \"2s\"\nkey_prefix = \"/x/y\"\nfence_margin = \"300ms\"\nwatchdog = true\nreattach_grace = \"100ms\"\n",
        )
        .unwrap();
        assert_eq!(c.reattach_grace, Duration::from_millis(100));
        assert_eq!(c.settings.endpoints.len(), 2);
        assert_eq!(c.settings.lease_ttl, Duration::from_secs(2));
        assert_eq!(c.settings.key_prefix, "/x/y");
        assert_eq!(c.settings.margin, Duration::from_millis(300));
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
            "[cluster] lease_ttl: 1s is shorter than etcd's smallest lease",
            "[cluster] key_prefix \"x\": must start with '/'",
            "unknown key \"foo\"",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        // A missing node is said once, not also as a bad name.
        assert!(!text.contains("[cluster] node:"), "{text}");
        let p = cluster(
            "[cluster]\nnode = \"bad name\"\netcd = [\"127.0.0.1:2379\", 7]\nlease_ttl = \"2500ms\"\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(
            p.contains("[cluster] node: name \"bad name\" may only hold"),
            "{p}"
        );
        assert!(
            p.contains("endpoint \"127.0.0.1:2379\": must start with http://"),
            "{p}"
        );
        assert!(p.contains("[cluster] etcd > 1: must be a URL"), "{p}");
        assert!(p.contains("whole number of seconds"), "{p}");
        let p = cluster("[cluster]\nnode = \"n\"\netcd = [\"https://e:2379\"]\n")
            .unwrap_err()
            .join("\n");
        assert!(p.contains("TLS"), "{p}");
        let p = cluster("[cluster]\nnode = \"n\"\netcd = []\n")
            .unwrap_err()
            .join("\n");
        assert!(p.contains("at least one endpoint"), "{p}");
        for margin in ["0s", "1500ms", "2s"] {
            let p = cluster(&format!(
                "[cluster]\nnode = \"n\"\netcd = [\"http://e\"]\nfence_margin = \"{margin}\"\n"
            ))
            .unwrap_err()
            .join("\n");
            assert!(
                p.contains("[cluster] fence_margin:") && p.contains("less than half of lease_ttl"),
                "{margin}: {p}"
            );
        }
        // The grace must end well before the lease could.
        for grace in ["1500ms", "5s"] {
            let p = cluster(&format!(
                "[cluster]\nnode = \"n\"\netcd = [\"http://e\"]\nlease_ttl = \"2s\"\nreattach_grace = \"{grace}\"\n"
            ))
            .unwrap_err()
            .join("\n");
            assert!(
                p.contains("[cluster] reattach_grace:") && p.contains("lease_ttl - fence_margin"),
                "{grace}: {p}"
            );
        }
        let p =
            cluster("[cluster]\nnode = \"n\"\netcd = [\"http://e\"]\nreattach_grace = \"soon\"\n")
                .unwrap_err()
                .join("\n");
        assert!(p.contains("reattach_grace"), "{p}");
        // A path after the host: etcd's client cannot use it.
        let p = cluster("[cluster]\nnode = \"n\"\netcd = [\"http://host:2379/v3\"]\n")
            .unwrap_err()
            .join("\n");
        assert!(p.contains("without path"), "{p}");
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
