//! `[cluster]` and `[group.NAME]`: the settings of a node that shares its
//! groups with other nodes through etcd, checked like the rest of the
//! config (every problem reported, each naming its place).

use crate::config::check_name;
use resmon_cluster::{Settings, Tls};
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
    /// How long a node that just joined waits for the others before it
    /// takes free groups, so that nodes started together share them.
    pub startup_wait: std::time::Duration,
    /// How long the fence guard waits, after this monitor died, for a
    /// monitor to come back before it kills the node's resources and
    /// revokes its lease. Less than `lease_ttl - fence_margin`.
    pub reattach_grace: Duration,
}

impl ClusterConfig {
    /// The default `reattach_grace`.
    pub const DEFAULT_REATTACH_GRACE: Duration = Duration::from_millis(500);
}

/// `[group.NAME]`: where a group may and prefers to run, as the pure
/// placement rules take it.
pub use resmon_cluster::placement::Rules as GroupConfig;

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
    startup_wait: Option<String>,
    reattach_grace: Option<String>,
    tls: Option<RawTls>,
    user: Option<String>,
    password_file: Option<String>,
}

/// `tls = { ca = PATH, cert = PATH, key = PATH }` as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
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
    let startup_wait = duration("startup_wait", raw.startup_wait, problems);
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
    settings.tls = raw.tls.map(|t| Tls {
        ca: t.ca.map(Into::into),
        cert: t.cert.map(Into::into),
        key: t.key.map(Into::into),
    });
    settings.user = raw.user;
    settings.password_file = raw.password_file.map(Into::into);
    if let Err(e) = settings.validate() {
        problems.extend(e.problems.iter().map(|p| format!("[cluster] {p}")));
    }
    let startup_wait = startup_wait.unwrap_or(settings.lease_ttl);
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
        startup_wait,
        reattach_grace,
    })
}

/// The keys of a `[group.NAME]` table.
const GROUP_KEYS: &[&str] = &[
    "preferred_nodes",
    "possible_nodes",
    "failback",
    "failback_window",
    "anti_affinity",
    "anti_affinity_strict",
    "failover_threshold",
    "failover_period",
];

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
            let at = format!("{here} {k}");
            match (k.as_str(), v) {
                ("preferred_nodes", _) => g.preferred_nodes = node_list(&at, v, problems),
                ("possible_nodes", _) => {
                    g.possible_nodes = node_list(&at, v, problems);
                    if matches!(v, toml::Value::Array(a) if a.is_empty()) {
                        problems.push(format!(
                            "{at}: an empty list would let the group run nowhere; leave it out to allow every node"
                        ));
                    }
                }
                ("failback" | "anti_affinity_strict", toml::Value::Boolean(b)) => {
                    if k == "failback" {
                        g.failback = *b;
                    } else {
                        g.anti_affinity_strict = *b;
                    }
                }
                ("failback" | "anti_affinity_strict", _) => {
                    problems.push(format!("{at}: must be true or false"))
                }
                ("failback_window", toml::Value::String(w)) => match w.parse() {
                    Ok(w) => g.failback_window = Some(w),
                    Err(e) => problems.push(format!("{at}: {e}")),
                },
                ("failback_window", _) => problems.push(format!(
                    "{at}: must be a daily window \"HH:MM-HH:MM\", e.g. \"01:00-05:00\""
                )),
                ("anti_affinity", toml::Value::String(c)) => match check_name(c) {
                    Ok(()) => g.anti_affinity = Some(c.clone()),
                    Err(e) => problems.push(format!("{at}: {e}")),
                },
                ("anti_affinity", _) => problems.push(format!(
                    "{at}: must be the name of a class, e.g. anti_affinity = \"database\""
                )),
                ("failover_threshold", toml::Value::Integer(n)) => match u32::try_from(*n) {
                    Ok(n) => g.failover_threshold = Some(n),
                    Err(_) => problems.push(format!(
                        "{at}: must be a whole number of failovers, 0 or more"
                    )),
                },
                ("failover_threshold", _) => problems.push(format!(
                    "{at}: must be a whole number of failovers, 0 or more"
                )),
                ("failover_period", v) => {
                    match duration_value("failover_period", v.as_str(), false) {
                        Ok(d) => g.failover_period = d,
                        Err(e) => problems.push(format!("{here} {e}")),
                    }
                }
                (other, _) => problems.push(format!(
                    "{here}: {}",
                    resmon_contract::table::unknown_key(other, GROUP_KEYS, &[])
                )),
            }
        }
        for p in &g.preferred_nodes {
            if !g.possible(p) {
                problems.push(format!(
                    "{here} preferred_nodes: {p:?} is not among possible_nodes, so the group can never run there"
                ));
            }
        }
        if g.anti_affinity_strict && g.anti_affinity.is_none() {
            problems.push(format!(
                "{here} anti_affinity_strict: needs anti_affinity, the class the group must not share a node with"
            ));
        }
        if g.failback_window.is_some() && !g.failback {
            problems.push(format!(
                "{here} failback_window: has no effect without failback = true"
            ));
        }
        if t.contains_key("failover_period") && g.failover_threshold.is_none() {
            problems.push(format!(
                "{here} failover_period: has no effect without failover_threshold"
            ));
        }
        out.insert(name.clone(), g);
    }
    out
}

/// A list of distinct node names at `at`.
fn node_list(at: &str, v: &toml::Value, problems: &mut Vec<String>) -> Vec<String> {
    let Some(a) = v.as_array() else {
        problems.push(format!("{at}: must be a list of node names"));
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, n) in a.iter().enumerate() {
        match n.as_str().map(|s| (s, check_name(s))) {
            Some((s, Ok(()))) if out.iter().any(|p| p == s) => {
                problems.push(format!("{at}: {s:?} is listed twice"))
            }
            Some((s, Ok(()))) => out.push(s.to_string()),
            Some((_, Err(e))) => problems.push(format!("{at}[{i}]: {e}")),
            None => problems.push(format!("{at}[{i}]: must be a node name")),
        }
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

    /// Every problem `cluster` finds in `text`, one a line.
    fn problems(text: &str) -> String {
        cluster(text).unwrap_err().join("\n")
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
        assert_eq!(c.startup_wait, Duration::from_secs(3), "lease_ttl");
        assert_eq!(c.reattach_grace, Duration::from_millis(500));
        let c = cluster(
            "[cluster]\nnode = \"a\"\netcd = [\"http://10.0.0.1:2379\", \"http://e:2379\"]\nlease_ttl = \"2s\"\nkey_prefix = \"/x/y\"\nfence_margin = \"300ms\"\nwatchdog = true\nstartup_wait = \"0s\"\nreattach_grace = \"100ms\"\n",
        )
        .unwrap();
        assert_eq!(c.reattach_grace, Duration::from_millis(100));
        assert_eq!(c.settings.endpoints.len(), 2);
        assert_eq!(c.settings.lease_ttl, Duration::from_secs(2));
        assert_eq!(c.settings.key_prefix, "/x/y");
        assert_eq!(c.settings.margin, Duration::from_millis(300));
        assert_eq!(c.watchdog.as_deref(), Some("/dev/watchdog"));
        assert_eq!(c.startup_wait, Duration::ZERO);
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
        let p = problems(
            "[cluster]\nnode = \"bad name\"\netcd = [\"127.0.0.1:2379\", 7]\nlease_ttl = \"2500ms\"\n",
        );
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
        let p = problems("[cluster]\nnode = \"n\"\netcd = [\"https://e:2379\"]\n");
        assert!(p.contains("[cluster] tls.ca is missing"), "{p}");
        let p = problems("[cluster]\nnode = \"n\"\netcd = []\n");
        assert!(p.contains("at least one endpoint"), "{p}");
        for margin in ["0s", "1500ms", "2s"] {
            let p = problems(&format!(
                "[cluster]\nnode = \"n\"\netcd = [\"http://e\"]\nfence_margin = \"{margin}\"\n"
            ));
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
        let p = problems("[cluster]\nnode = \"n\"\netcd = [\"http://host:2379/v3\"]\n");
        assert!(p.contains("without path"), "{p}");
    }

    #[test]
    fn tls_and_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p.display().to_string()
        };
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let ca = file("ca.pem", cert, 0o644);
        let crt = file("n1.pem", cert, 0o644);
        let key = file(
            "n1-key.pem",
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
            0o600,
        );
        let pw = file("pw", "secret\n", 0o600);
        let c = cluster(&format!(
            "[cluster]\nnode = \"n1\"\netcd = [\"https://10.0.0.1:2379\"]\ntls = {{ ca = \"{ca}\", cert = \"{crt}\", key = \"{key}\" }}\nuser = \"resmon\"\npassword_file = \"{pw}\"\n"
        ))
        .unwrap();
        let tls = c.settings.tls.clone().unwrap();
        assert_eq!(tls.ca.unwrap().display().to_string(), ca);
        assert_eq!(tls.key.unwrap().display().to_string(), key);
        assert_eq!(c.settings.user.as_deref(), Some("resmon"));
        assert_eq!(c.settings.credentials().unwrap().user.unwrap().1, "secret");
        let open = file("open", "secret\n", 0o644);
        let p = problems(&format!(
            "[cluster]\nnode = \"n1\"\netcd = [\"https://e:2379\"]\ntls = {{ ca = \"{ca}\", crt = \"x\" }}\nuser = \"u\"\npassword_file = \"{open}\"\n"
        ));
        assert!(
            p.contains("[cluster] tls > crt: unknown key \"crt\""),
            "{p}"
        );
        // The file problems are said too, with the others.
        assert!(
            p.contains(&format!("[cluster] password_file \"{open}\": is open")),
            "{p}"
        );
        let p = problems(&format!(
            "[cluster]\nnode = \"n1\"\netcd = [\"https://e:2379\"]\ntls = {{ ca = \"{ca}\", cert = \"{crt}\" }}\nuser = \"u\"\npassword_file = \"{open}\"\n"
        ));
        assert!(p.contains("[cluster] tls.key is missing"), "{p}");
        let p = problems(&format!(
            "[cluster]\nnode = \"n1\"\netcd = [\"https://e:2379\"]\ntls = {{ ca = \"{ca}\" }}\nuser = \"u\"\npassword_file = \"{open}\"\n"
        ));
        assert!(
            p.contains(&format!(
                "[cluster] password_file \"{open}\": is open to group or others"
            )),
            "{p}"
        );
        let p = problems("[cluster]\nnode = \"n1\"\netcd = [\"http://e:2379\"]\ntls = 3\n");
        assert!(p.contains("tls"), "{p}");
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

    #[test]
    fn placement_keys() {
        let parse = |text: &str| {
            let v: toml::Value = toml::from_str::<toml::Table>(text).unwrap()["group"].clone();
            let mut problems = Vec::new();
            let g = parse_groups(&v, &mut problems);
            (g, problems.join("\n"))
        };
        let (g, p) = parse(
            "[group.db]\npossible_nodes = [\"n1\", \"n2\"]\npreferred_nodes = [\"n2\"]\nanti_affinity = \"db\"\nanti_affinity_strict = true\nfailback = true\nfailback_window = \"22:00-02:00\"\nfailover_threshold = 2\nfailover_period = \"30m\"\n",
        );
        assert_eq!(p, "");
        let db = &g["db"];
        assert_eq!(db.possible_nodes, ["n1", "n2"]);
        assert_eq!(db.anti_affinity.as_deref(), Some("db"));
        assert!(db.anti_affinity_strict);
        assert_eq!(db.failback_window.unwrap().to_string(), "22:00-02:00");
        assert_eq!(db.failover_threshold, Some(2));
        assert_eq!(db.failover_period, Duration::from_secs(1800));
        // Defaults: six hours, no threshold.
        let (g, _) = parse("[group.web]\nfailback = false\n");
        assert_eq!(g["web"].failover_period, Duration::from_secs(6 * 3600));
        assert_eq!(g["web"].failover_threshold, None);
        let (_, p) = parse(
            "[group.a]\npossible_nodes = []\n[group.b]\npossible_nodes = [\"n1\"]\npreferred_nodes = [\"n2\"]\n[group.c]\nanti_affinity_strict = true\nfailback_window = \"01:00-05:00\"\nfailover_period = \"1h\"\n[group.d]\nfailback_window = \"1-5\"\nfailover_threshold = -1\nanti_affinity = \"a b\"\nfailover_period = \"soon\"\n",
        );
        for want in [
            "[group.a] possible_nodes: an empty list would let the group run nowhere",
            "[group.b] preferred_nodes: \"n2\" is not among possible_nodes",
            "[group.c] anti_affinity_strict: needs anti_affinity",
            "[group.c] failback_window: has no effect without failback = true",
            "[group.c] failover_period: has no effect without failover_threshold",
            "[group.d] failback_window: \"1-5\": must be a daily window \"HH:MM-HH:MM\"",
            "[group.d] failover_threshold: must be a whole number of failovers, 0 or more",
            "[group.d] anti_affinity:",
            "[group.d] failover_period",
        ] {
            assert!(p.contains(want), "{want}\n{p}");
        }
    }
}
