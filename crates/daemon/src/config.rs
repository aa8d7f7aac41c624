//! The configuration file: parse, then validate everything, then build.
//!
//! Parsing turns each of the monitor's own sections (`[monitor]`, `[api]`
//! and its `[[api.token]]`s, `[access]`, `[cluster]`) into a typed raw
//! struct (`section`: an unknown key is named with the closest known
//! one, a value of the wrong type by its key, and the rest is read on);
//! validation then judges the values, and building makes the config.
//! Resources are read key by key, since their tables mix the monitor's
//! keys with their type's, which the type checks. *All* problems are
//! collected, each naming the file, the section or resource and the
//! field, before the monitor starts anything.

use crate::access::{AccessConfig, Grant};
use crate::cluster::config::{parse_cluster, parse_groups, ClusterConfig, GroupConfig};
pub use resmon_contract::check_name;
use resmon_contract::table::{self, LOG_KEYS, POLICY_KEYS, RESOURCE_KEYS};
use resmon_contract::LIMIT_KEYS;
use resmon_contract::{duration_value, Policy, ResourceType, RestartAction};
use resmon_contract::{LogMode, LogSettings};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{} in the configuration; nothing was started:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Whether resources get a cgroup of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// Use cgroup v2 when it is mounted and writable, else process groups.
    Auto,
    /// Process groups only.
    Off,
}

/// `[monitor]`.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    pub socket: PathBuf,
    pub cgroups: CgroupMode,
    /// Where the monitor keeps what it needs to survive its own restart.
    pub state_dir: PathBuf,
    /// How the monitor writes its own log to stderr.
    pub log_format: LogFormat,
    /// The event journal in the state directory: how large its file grows
    /// before it is rotated, and how many rotated files are kept.
    pub journal: resmon_journal::Options,
    /// Where resources' captured output goes (`NAME.log`); by default
    /// `logs` in the state directory.
    pub log_dir: PathBuf,
}

/// The event journal's bounds when `[monitor]` does not set them.
pub const JOURNAL_DEFAULT: resmon_journal::Options = resmon_journal::Options {
    max_size: 10 << 20,
    keep: 5,
};

/// `[monitor] log_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

impl LogFormat {
    fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The `[monitor] log_format` of the config file at `path`, read before
/// anything else so that the monitor logs in it from its first line; the
/// default when the file or the setting is missing or wrong (the full
/// load reports those).
pub fn log_format_of(path: &Path) -> LogFormat {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| {
            let f = t.get("monitor")?.get("log_format")?.as_str()?.to_owned();
            LogFormat::parse(&f)
        })
        .unwrap_or_default()
}

/// One checked `[[resource]]`.
#[derive(Clone, Debug)]
pub struct ResourceConfig {
    pub name: String,
    pub type_name: String,
    pub group: String,
    pub depends_on: Vec<String>,
    /// Brought online when the monitor starts.
    pub autostart: bool,
    pub policy: Policy,
    /// The type-specific rest of the table.
    pub params: serde_json::Value,
    /// Where its output goes.
    pub log: LogSettings,
    /// What its cgroup allows it.
    pub limits: resmon_contract::Limits,
}

/// `[api]`: the optional TCP listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where the TCP listener binds; `None`: no TCP listener.
    pub tcp: Option<std::net::SocketAddr>,
}

/// The TCP port used by `[api] tcp = true`.
pub const DEFAULT_TCP_PORT: u16 = 7474;

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub monitor: MonitorConfig,
    pub api: ApiConfig,
    pub access: AccessConfig,
    pub resources: Vec<ResourceConfig>,
    /// `[cluster]`: `None` for a single node.
    pub cluster: Option<ClusterConfig>,
    /// `[group.NAME]` tables (groups without one use the defaults).
    pub groups: BTreeMap<String, GroupConfig>,
    /// `[[alert]]` hooks.
    pub alerts: Vec<crate::alerts::AlertConfig>,
}

impl Config {
    /// A group's settings, the defaults when it has no `[group.NAME]`.
    pub fn group(&self, name: &str) -> GroupConfig {
        self.groups.get(name).cloned().unwrap_or_default()
    }
}

/// The socket used when neither the config nor `--socket` names one.
pub fn default_socket() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/run/resmon/resmon.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("resmon.sock"),
        _ => PathBuf::from(format!(
            "/tmp/resmon-{}.sock",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// What to say of a type name no type handles: the form it was probably
/// meant to have (`"ocf"` -> `"ocf:PROVIDER:AGENT"`), a close name, or the
/// list of types.
pub fn unknown_type(type_name: &str, names: &[&str]) -> String {
    let family = |n: &str| n.split(':').next().unwrap_or(n).to_owned();
    let meant = names
        .iter()
        .find(|n| family(n) == family(type_name))
        .copied()
        .or_else(|| resmon_contract::table::suggest(type_name, names.iter().copied()));
    match meant {
        Some(m) => format!("unknown type {type_name:?}; did you mean {m:?}?"),
        None => format!(
            "unknown type {type_name:?}; the types are {}",
            names.join(", ")
        ),
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path, types: &[&dyn ResourceType]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Config::parse(path, &text, types)
    }

    /// Parses and checks config text; `path` only names it in errors.
    pub fn parse(
        path: &Path,
        text: &str,
        types: &[&dyn ResourceType],
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        };
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            fail(vec![format!("not valid TOML: {}", e.to_string().trim())])
        })?;
        let mut problems = Vec::new();

        const SECTIONS: &[&str] = &[
            "monitor", "api", "access", "defaults", "resource", "cluster", "group", "alert",
        ];
        for key in doc.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(match table::suggest(key, SECTIONS.iter().copied()) {
                    Some("resource") => format!("unknown section [{key}]; did you mean [[resource]]?"),
                    Some("group") => format!("unknown section [{key}]; did you mean [group.NAME]?"),
                    Some("alert") => format!("unknown section [{key}]; did you mean [[alert]]?"),
                    Some(s) => format!("unknown section [{key}]; did you mean [{s}]?"),
                    None => format!(
                        "unknown section [{key}]: the sections are [monitor], [api], [access], [cluster], [defaults], [group.NAME], [[resource]] and [[alert]]"
                    ),
                });
            }
        }
        let cluster = doc
            .get("cluster")
            .and_then(|v| parse_cluster(v, &mut problems));
        if cluster.is_some() && !cfg!(feature = "etcd") {
            problems.push(
                "[cluster]: this resmon was built without cluster support; build it with `cargo build --release --features etcd` (needs protoc)".into(),
            );
        }
        let groups = doc
            .get("group")
            .map(|v| parse_groups(v, &mut problems))
            .unwrap_or_default();

        let monitor = parse_monitor(doc.get("monitor"), &mut problems);
        let mut access = parse_access(doc.get("access"), &mut problems);
        let api = parse_api(doc.get("api"), &mut access, &mut problems);

        let mut defaults = Policy::default();
        let mut limit_defaults = resmon_contract::Limits::default();
        let mut log_defaults = LogSettings {
            dir: monitor.log_dir.clone(),
            ..LogSettings::default()
        };
        match doc.get("defaults") {
            None => {}
            Some(toml::Value::Table(t)) => {
                let known: Vec<&str> = POLICY_KEYS
                    .iter()
                    .chain(LOG_KEYS)
                    .chain(LIMIT_KEYS)
                    .copied()
                    .collect();
                for key in t.keys() {
                    if !known.contains(&key.as_str()) {
                        problems.push(format!(
                            "[defaults]: {}",
                            table::unknown_key(key, &known, &[])
                        ));
                    }
                }
                apply_policy(&mut defaults, t, "[defaults]", &mut problems);
                apply_log(&mut log_defaults, t, "[defaults]", &mut problems);
                apply_limits(&mut limit_defaults, t, "[defaults]", &mut problems);
            }
            Some(_) => problems.push("[defaults] must be a table".into()),
        }

        let tables = match doc.get("resource") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items.clone(),
            Some(_) => {
                problems.push("resource must be written as [[resource]] tables".into());
                Vec::new()
            }
        };
        let mut resources = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, item) in tables.iter().enumerate() {
            let place = |name: Option<&str>| match name {
                Some(n) => format!("resource {n:?} ([[resource]] #{})", i + 1),
                None => format!("[[resource]] #{}", i + 1),
            };
            let Some(t) = item.as_table() else {
                problems.push(format!("{}: must be a table", place(None)));
                continue;
            };
            let name = match t.get("name") {
                Some(toml::Value::String(n)) => match check_name(n) {
                    Ok(()) => Some(n.clone()),
                    Err(e) => {
                        problems.push(format!("{}: {e}", place(None)));
                        None
                    }
                },
                Some(_) => {
                    problems.push(format!("{}: name must be a string", place(None)));
                    None
                }
                None => {
                    problems.push(format!("{}: name is missing", place(None)));
                    None
                }
            };
            let here = place(name.as_deref());
            if let Some(n) = &name {
                if !seen.insert(n.clone()) {
                    problems.push(format!("{here}: the name is used by an earlier resource"));
                }
            }
            let before = problems.len();
            let type_name = match t.get("type") {
                Some(toml::Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    problems.push(format!("{here}: type must be a string"));
                    None
                }
                None => {
                    problems.push(format!("{here}: type is missing (e.g. type = \"process\")"));
                    None
                }
            };
            let group = match t.get("group") {
                None => name.clone().unwrap_or_default(),
                Some(toml::Value::String(g)) => {
                    if let Err(e) = check_name(g) {
                        problems.push(format!("{here}: group: {e}"));
                    }
                    g.clone()
                }
                Some(_) => {
                    problems.push(format!("{here}: group must be a string"));
                    String::new()
                }
            };
            let depends_on = match t.get("depends_on") {
                None => Vec::new(),
                Some(toml::Value::Array(a)) if a.iter().all(|v| v.is_str()) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(_) => {
                    problems.push(format!(
                        "{here}: depends_on must be a list of resource names"
                    ));
                    Vec::new()
                }
            };
            let autostart = match t.get("autostart") {
                None => true,
                Some(toml::Value::Boolean(b)) => *b,
                Some(_) => {
                    problems.push(format!("{here}: autostart must be true or false"));
                    true
                }
            };
            let mut policy = defaults.clone();
            apply_policy(&mut policy, t, &here, &mut problems);
            check_backoff(&policy, &here, &mut problems);
            let mut log = log_defaults.clone();
            apply_log(&mut log, t, &here, &mut problems);
            let mut limits = limit_defaults.clone();
            apply_limits(&mut limits, t, &here, &mut problems);
            let mut params = toml::Table::new();
            for (k, v) in t {
                if !RESOURCE_KEYS.contains(&k.as_str())
                    && !POLICY_KEYS.contains(&k.as_str())
                    && !LOG_KEYS.contains(&k.as_str())
                    && !LIMIT_KEYS.contains(&k.as_str())
                {
                    params.insert(k.clone(), v.clone());
                }
            }
            let params = match serde_json::to_value(&params) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{here}: {e}"));
                    serde_json::Value::Null
                }
            };
            if let Some(tn) = &type_name {
                match types.iter().find(|ty| ty.handles(tn)) {
                    None => problems.push(format!(
                        "{here}: {}",
                        unknown_type(tn, &types.iter().map(|t| t.name()).collect::<Vec<_>>())
                    )),
                    Some(ty) => {
                        for p in ty.validate(tn, &params) {
                            problems.push(format!("{here}: {p}"));
                        }
                    }
                }
            }
            if problems.len() == before {
                if let (Some(name), Some(type_name)) = (name, type_name) {
                    resources.push(ResourceConfig {
                        name,
                        type_name,
                        group,
                        depends_on,
                        autostart,
                        policy,
                        params,
                        log,
                        limits,
                    });
                }
            }
        }
        if problems.is_empty() {
            problems.extend(check_dependencies(&resources));
        }
        for name in groups.keys() {
            if !resources.iter().any(|r| &r.group == name) {
                problems.push(format!("[group.{name}]: no resource is in this group"));
            }
        }
        // (A [cluster] that is there but wrong was reported above.)
        if cluster.is_none() && doc.get("cluster").is_none() {
            if let Some((name, _)) = groups.iter().find(|(_, g)| *g != &GroupConfig::default()) {
                problems.push(format!(
                    "[group.{name}]: where a group runs (preferred_nodes, possible_nodes, failback, anti_affinity, failover_threshold) is for cluster mode: it needs a [cluster] section"
                ));
            }
        }
        let alerts = parse_alerts(doc.get("alert"), &resources, &mut problems);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Config {
            file: path.to_path_buf(),
            monitor,
            api,
            access,
            resources,
            cluster,
            groups,
            alerts,
        })
    }
}

/// A config section as written: each key read into its type, nothing
/// judged yet. Every problem (an unknown key, with the closest known one;
/// a value of the wrong type, named by its key) is pushed onto `problems`
/// with the section's place; the rest of the section is still read. `None`
/// when the section is absent or not a table.
pub(crate) fn section<T: serde::de::DeserializeOwned>(
    v: Option<&toml::Value>,
    place: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let v = v?;
    if !v.is_table() {
        problems.push(format!("{place} must be a table"));
        return None;
    }
    let json = match serde_json::to_value(v) {
        Ok(j) => j,
        Err(e) => {
            problems.push(format!("{place}: {e}"));
            return None;
        }
    };
    let (raw, found) = table::parse_table::<T>(&json, &[]);
    // `[monitor] socket: ...` after a header; `[[api.token]] #1: ...` else.
    let sep = if place.ends_with(']') { " " } else { ": " };
    problems.extend(found.into_iter().map(|p| format!("{place}{sep}{p}")));
    raw
}

/// A size written as a string (`"10MiB"`) or a number of bytes.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "must be a size such as \"10MiB\", or a number of bytes"
)]
enum RawSize {
    Text(String),
    Bytes(u64),
}

impl RawSize {
    /// The size a config value says, or why it says none.
    fn of(v: &toml::Value) -> Result<u64, String> {
        v.clone()
            .try_into::<RawSize>()
            .map_err(|_| "must be a size such as \"10MiB\", or a number of bytes".to_string())?
            .bytes()
    }

    fn bytes(&self) -> Result<u64, String> {
        match self {
            RawSize::Text(s) => resmon_contract::parse_size(s).map_err(|e| e.0),
            RawSize::Bytes(0) => Err("must be more than 0".into()),
            RawSize::Bytes(n) => Ok(*n),
        }
    }
}

/// `[monitor]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    socket: Option<String>,
    cgroups: Option<String>,
    state_dir: Option<String>,
    log_format: Option<String>,
    journal_max_size: Option<RawSize>,
    journal_keep: Option<u32>,
    log_dir: Option<String>,
}

fn parse_monitor(v: Option<&toml::Value>, problems: &mut Vec<String>) -> MonitorConfig {
    let raw: RawMonitor = section(v, "[monitor]", problems).unwrap_or_default();
    let mut m = MonitorConfig {
        socket: default_socket(),
        cgroups: CgroupMode::Auto,
        state_dir: crate::state::default_state_dir(),
        log_format: LogFormat::Text,
        journal: JOURNAL_DEFAULT,
        log_dir: PathBuf::new(),
    };
    let mut absolute = |key: &str, value: Option<String>, into: &mut PathBuf| match value {
        Some(s) if s.starts_with('/') => *into = PathBuf::from(s),
        Some(_) => problems.push(format!("[monitor] {key}: must be an absolute path")),
        None => {}
    };
    absolute("socket", raw.socket, &mut m.socket);
    absolute("state_dir", raw.state_dir, &mut m.state_dir);
    absolute("log_dir", raw.log_dir, &mut m.log_dir);
    match raw.cgroups.as_deref() {
        None | Some("auto") => {}
        Some("off") => m.cgroups = CgroupMode::Off,
        Some(_) => problems.push("[monitor] cgroups: use \"auto\" or \"off\"".into()),
    }
    if let Some(f) = raw.log_format {
        match LogFormat::parse(&f) {
            Some(f) => m.log_format = f,
            None => problems.push("[monitor] log_format: use \"text\" or \"json\"".into()),
        }
    }
    if let Some(size) = raw.journal_max_size {
        match size.bytes() {
            Ok(n) => m.journal.max_size = n,
            Err(e) => problems.push(format!("[monitor] journal_max_size: {e}")),
        }
    }
    match raw.journal_keep {
        Some(n) if n <= 1000 => m.journal.keep = n,
        Some(_) => {
            problems.push("[monitor] journal_keep: must be a whole number from 0 to 1000".into())
        }
        None => {}
    }
    if m.log_dir.as_os_str().is_empty() {
        m.log_dir = m.state_dir.join("logs");
    }
    m
}

/// The duration properties: name, field, and whether zero is allowed.
type DurationField = fn(&mut Policy) -> &mut std::time::Duration;
const DURATIONS: &[(&str, DurationField, bool)] = &[
    (
        "looks_alive_interval",
        |p| &mut p.looks_alive_interval,
        false,
    ),
    ("is_alive_interval", |p| &mut p.is_alive_interval, false),
    ("pending_timeout", |p| &mut p.pending_timeout, false),
    ("terminate_timeout", |p| &mut p.terminate_timeout, false),
    ("deadlock_timeout", |p| &mut p.deadlock_timeout, false),
    ("restart_period", |p| &mut p.restart_period, false),
    ("restart_delay", |p| &mut p.restart_delay, true),
    ("restart_delay_max", |p| &mut p.restart_delay_max, false),
    (
        "retry_period_on_failure",
        |p| &mut p.retry_period_on_failure,
        false,
    ),
];

/// `[api]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    tcp: Option<RawTcp>,
    /// `[[api.token]]` tables, each read on its own (see [`RawToken`]).
    token: Option<Vec<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "use true, false or \"HOST:PORT\"")]
enum RawTcp {
    On(bool),
    At(String),
}

/// One `[[api.token]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
    rights: Option<Vec<String>>,
}

fn parse_api(
    v: Option<&toml::Value>,
    access: &mut AccessConfig,
    problems: &mut Vec<String>,
) -> ApiConfig {
    let raw: RawApi = section(v, "[api]", problems).unwrap_or_default();
    let mut api = ApiConfig::default();
    match raw.tcp {
        None | Some(RawTcp::On(false)) => {}
        Some(RawTcp::On(true)) => {
            api.tcp = Some(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_TCP_PORT,
            )))
        }
        Some(RawTcp::At(s)) => match s.parse::<std::net::SocketAddr>() {
            Ok(a) => {
                if !a.ip().is_loopback() {
                    tracing::warn!(
                        "[api] tcp listens on {a}, beyond this machine: use TLS in front of it"
                    );
                }
                api.tcp = Some(a)
            }
            Err(_) => problems.push(format!(
                "[api] tcp: {s:?} is not an address such as \"127.0.0.1:{DEFAULT_TCP_PORT}\""
            )),
        },
    }
    for (i, t) in raw.token.iter().flatten().enumerate() {
        let place = format!("[[api.token]] #{}", i + 1);
        if let Some(t) = section::<RawToken>(Some(t), &place, problems) {
            if let Some(tok) = token_of(t, &place, problems) {
                access.tokens.push(tok);
            }
        }
    }
    if api.tcp.is_some() && access.tokens.is_empty() {
        problems
            .push("[api] tcp is on but no [[api.token]] is configured: nobody could use it".into());
    }
    api
}

fn token_of(t: RawToken, place: &str, problems: &mut Vec<String>) -> Option<crate::access::Token> {
    let before = problems.len();
    let name = t.name.unwrap_or_else(|| {
        problems.push(format!("{place}: name is missing"));
        String::new()
    });
    let secret = match (t.token, t.token_file) {
        (Some(s), None) => s,
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                problems.push(format!("{place}: token_file {f}: {e}"));
                String::new()
            }
        },
        _ => {
            problems.push(format!(
                "{place}: give exactly one of token = \"...\" or token_file = \"PATH\""
            ));
            String::new()
        }
    };
    if problems.len() == before && secret.len() < 16 {
        problems.push(format!("{place}: the token must be at least 16 characters"));
    }
    let mut rights = Vec::new();
    match t.rights {
        Some(list) => {
            for r in list {
                match crate::access::Right::parse(&r) {
                    Some(r) => rights.push(r),
                    None => problems.push(format!(
                        "{place}: rights: {r:?} is not one of \"query\", \"control\", \"terminate\""
                    )),
                }
            }
        }
        None => problems.push(format!(
            "{place}: rights must be a list, e.g. [\"query\", \"control\"]"
        )),
    }
    (problems.len() == before).then_some(crate::access::Token {
        name,
        secret,
        rights,
    })
}

/// One `[[alert]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    name: Option<String>,
    command: Option<serde_json::Value>,
    url: Option<String>,
    on: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    timeout: Option<String>,
    user: Option<String>,
    retries: Option<u32>,
    queue: Option<u32>,
}

fn parse_alerts(
    v: Option<&toml::Value>,
    resources: &[ResourceConfig],
    problems: &mut Vec<String>,
) -> Vec<crate::alerts::AlertConfig> {
    use crate::alerts::{AlertConfig, DEFAULT_ON, KINDS};
    let items = match v {
        None => return Vec::new(),
        Some(toml::Value::Array(items)) => items.clone(),
        Some(_) => {
            problems.push("alert must be written as [[alert]] tables".into());
            return Vec::new();
        }
    };
    let mut out: Vec<AlertConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut place = format!("[[alert]] #{}", i + 1);
        let Some(raw) = section::<RawAlert>(Some(item), &place, problems) else {
            continue;
        };
        let before = problems.len();
        let name = match raw.name {
            None => {
                problems.push(format!("{place}: name is missing"));
                String::new()
            }
            Some(n) => {
                place = format!("alert {n:?} ({place})");
                if let Err(e) = check_name(&n) {
                    problems.push(format!("{place}: {e}"));
                } else if out.iter().any(|a| a.name == n) {
                    problems.push(format!("{place}: the name is used by an earlier alert"));
                }
                n
            }
        };
        let command = raw.command.as_ref().and_then(|c| {
            resmon_process::command_of(c, "command")
                .map_err(|e| problems.push(format!("{place}: {e}")))
                .ok()
        });
        if let Some(url) = &raw.url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                problems.push(format!(
                    "{place}: url {url:?} must start with http:// or https://"
                ));
            }
        }
        if raw.command.is_none() && raw.url.is_none() && problems.len() == before {
            problems.push(format!(
                "{place}: give command = [\"PROGRAM\", ...] or url = \"http://...\" (or both)"
            ));
        }
        let on = raw
            .on
            .unwrap_or_else(|| DEFAULT_ON.iter().map(|s| s.to_string()).collect());
        if on.is_empty() {
            problems.push(format!(
                "{place}: on: give at least one kind, e.g. [\"failed\"]"
            ));
        }
        for kind in &on {
            if !KINDS.contains(&kind.as_str()) {
                problems.push(format!(
                    "{place}: on: {}",
                    table::unknown_key(kind, KINDS, &[]).replacen("key", "kind", 1)
                ));
            }
        }
        let names = raw.resources.unwrap_or_default();
        for n in &names {
            if !resources.iter().any(|r| &r.name == n) {
                problems.push(format!("{place}: resources: {n:?} is not a resource"));
            }
        }
        let groups = raw.groups.unwrap_or_default();
        for g in &groups {
            if !resources.iter().any(|r| &r.group == g) {
                problems.push(format!("{place}: groups: no resource is in group {g:?}"));
            }
        }
        let timeout = match raw.timeout {
            None => crate::alerts::DEFAULT_TIMEOUT,
            Some(t) => duration_value("timeout", Some(&t), false).unwrap_or_else(|e| {
                problems.push(format!("{place}: {e}"));
                crate::alerts::DEFAULT_TIMEOUT
            }),
        };
        let user = raw.user.and_then(|u| {
            resmon_process::resolve_user(&u)
                .map_err(|e| problems.push(format!("{place}: user: {e}")))
                .ok()
        });
        let retries = raw.retries.unwrap_or(crate::alerts::DEFAULT_RETRIES);
        if retries > 100 {
            problems.push(format!("{place}: retries: at most 100"));
        }
        let queue = raw
            .queue
            .map_or(crate::alerts::DEFAULT_QUEUE, |q| q as usize);
        if !(1..=1_000_000).contains(&queue) {
            problems.push(format!("{place}: queue: from 1 to 1000000 alerts"));
        }
        if problems.len() == before {
            out.push(AlertConfig {
                name,
                command,
                url: raw.url,
                on,
                resources: names,
                groups,
                timeout,
                user,
                retries,
                queue,
            });
        }
    }
    out
}

/// `[access]` as written: the users, `@groups` or `*` holding each right.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    query: Option<UserList>,
    control: Option<UserList>,
    terminate: Option<UserList>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "must be a list of user names, \"@group\" names or \"*\""
)]
enum UserList {
    List(Vec<String>),
}

fn parse_access(v: Option<&toml::Value>, problems: &mut Vec<String>) -> AccessConfig {
    let raw: RawAccess = section(v, "[access]", problems).unwrap_or_default();
    let mut a = AccessConfig::default();
    for (key, list, slot) in [
        ("query", raw.query, &mut a.query),
        ("control", raw.control, &mut a.control),
        ("terminate", raw.terminate, &mut a.terminate),
    ] {
        if let Some(UserList::List(list)) = list {
            *slot = Grant::parse(&list, key, problems);
        }
    }
    a
}

fn apply_policy(p: &mut Policy, t: &toml::Table, place: &str, problems: &mut Vec<String>) {
    for (key, value) in t {
        let key = key.as_str();
        if let Some(&(_, field, zero_ok)) = DURATIONS.iter().find(|(k, _, _)| *k == key) {
            match duration_value(key, value.as_str(), zero_ok) {
                Ok(d) => *field(p) = d,
                Err(e) => problems.push(format!("{place}: {e}")),
            }
            continue;
        }
        match key {
            "restart_action" => match value.as_str().map(RestartAction::parse) {
                Some(Ok(a)) => p.restart_action = a,
                Some(Err(e)) => problems.push(format!("{place}: restart_action: {e}")),
                None => problems.push(format!("{place}: restart_action must be a string")),
            },
            "restart_threshold" => match value.as_integer().map(u32::try_from) {
                Some(Ok(n)) => p.restart_threshold = n,
                Some(Err(_)) if value.as_integer().is_some_and(|n| n > 0) => {
                    problems.push(format!(
                        "{place}: restart_threshold {value} is too large: at most {}",
                        u32::MAX
                    ))
                }
                _ => problems.push(format!(
                    "{place}: restart_threshold must be a whole number, 0 or more"
                )),
            },
            "separate_monitor" => match value.as_bool() {
                Some(b) => p.separate_monitor = b,
                None => problems.push(format!("{place}: separate_monitor must be true or false")),
            },
            "failure_threshold" | "success_threshold" => {
                match value.as_integer().map(u32::try_from) {
                    Some(Ok(n)) if n >= 1 => {
                        if key == "failure_threshold" {
                            p.failure_threshold = n
                        } else {
                            p.success_threshold = n
                        }
                    }
                    _ => problems.push(format!(
                        "{place}: {key} must be a whole number from 1 to {}",
                        u32::MAX
                    )),
                }
            }
            "restart_backoff" => {
                let factor = value
                    .as_float()
                    .or_else(|| value.as_integer().map(|n| n as f64));
                match factor.map(resmon_contract::Backoff::new) {
                    Some(Ok(b)) => p.restart_backoff = b,
                    Some(Err(e)) => problems.push(format!("{place}: {e}")),
                    None => problems.push(format!(
                        "{place}: restart_backoff must be a number, e.g. 2.0"
                    )),
                }
            }
            _ => {}
        }
    }
}

/// A growing restart delay needs one to grow from, and a bound above it.
fn check_backoff(p: &Policy, place: &str, problems: &mut Vec<String>) {
    if p.restart_backoff == resmon_contract::Backoff::NONE {
        return;
    }
    if p.restart_delay.is_zero() {
        problems.push(format!(
            "{place}: restart_backoff multiplies restart_delay, which is 0s: give restart_delay a start, e.g. \"1s\""
        ));
    } else if p.restart_delay_max < p.restart_delay {
        problems.push(format!(
            "{place}: restart_delay_max ({}) is less than restart_delay ({}): the delay could never grow",
            humantime::format_duration(p.restart_delay_max),
            humantime::format_duration(p.restart_delay)
        ));
    }
}

/// The limit keys of a table (`memory_max`, `cpu_max`, ...).
fn apply_limits(
    l: &mut resmon_contract::Limits,
    t: &toml::Table,
    place: &str,
    problems: &mut Vec<String>,
) {
    for &key in LIMIT_KEYS {
        let value = match t.get(key) {
            None => continue,
            Some(toml::Value::String(s)) => resmon_contract::LimitValue::Text(s.clone()),
            Some(toml::Value::Integer(n)) => resmon_contract::LimitValue::Int(*n),
            Some(_) => resmon_contract::LimitValue::Text(String::new()),
        };
        if let Err(e) = l.set(key, &value) {
            problems.push(format!("{place}: {e}"));
        }
    }
}

/// The `log`, `log_max_size` and `log_keep` keys of a table.
fn apply_log(l: &mut LogSettings, t: &toml::Table, place: &str, problems: &mut Vec<String>) {
    if let Some(v) = t.get("log") {
        match v.as_str().and_then(LogMode::parse) {
            Some(m) => l.mode = m,
            None => problems.push(format!(
                "{place}: log: use \"file\", \"journal\", \"inherit\" or \"null\""
            )),
        }
    }
    if let Some(v) = t.get("log_max_size") {
        match RawSize::of(v) {
            Ok(n) => l.max_size = n,
            Err(e) => problems.push(format!("{place}: log_max_size: {e}")),
        }
    }
    if let Some(v) = t.get("log_max_line") {
        match RawSize::of(v).and_then(|n| {
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= 16 << 20)
                .ok_or_else(|| "must be at most 16MiB".to_string())
        }) {
            Ok(n) => l.max_line = n,
            Err(e) => problems.push(format!("{place}: log_max_line: {e}")),
        }
    }
    if let Some(v) = t.get("log_keep") {
        match v.as_integer().map(u32::try_from) {
            Some(Ok(n)) if n <= 1000 => l.keep = n,
            _ => problems.push(format!(
                "{place}: log_keep: must be a whole number from 0 to 1000"
            )),
        }
    }
}

fn check_dependencies(resources: &[ResourceConfig]) -> Vec<String> {
    let specs = resources.iter().map(crate::handoff::spec_of).collect();
    match resmon_core::Monitor::new(specs, tokio::time::Instant::now()) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

/// The longest a stop of the monitor can take: groups stop side by side,
/// the resources of one along its dependencies, each within its
/// `pending_timeout` (offline) and twice its `terminate_timeout` (the
/// terminate, then the forced kill). An upper bound: the resources of a
/// group are counted as if none stopped beside another.
pub fn stop_budget(resources: &[ResourceConfig]) -> std::time::Duration {
    let mut by_group: BTreeMap<&str, std::time::Duration> = BTreeMap::new();
    for r in resources {
        let p = &r.policy;
        let one = p
            .pending_timeout
            .saturating_add(p.terminate_timeout.saturating_mul(2));
        let g = by_group.entry(r.group.as_str()).or_default();
        *g = g.saturating_add(one);
    }
    by_group.into_values().max().unwrap_or_default()
}

/// Groups and the resources in each, in config order.
pub fn groups(resources: &[ResourceConfig]) -> BTreeMap<String, Vec<String>> {
    let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in resources {
        g.entry(r.group.clone()).or_default().push(r.name.clone());
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use resmon_contract::{OpenContext, Resource, ResourceError};
    use std::time::Duration;

    /// A type that accepts any params but `bad = true`.
    struct Lenient;
    impl ResourceType for Lenient {
        fn name(&self) -> &str {
            "lenient"
        }
        fn validate(&self, _type_name: &str, params: &serde_json::Value) -> Vec<String> {
            if params.get("bad").is_some() {
                vec!["bad: not today".into()]
            } else {
                vec![]
            }
        }
        fn open(&self, _: OpenContext) -> Result<Box<dyn Resource>, ResourceError> {
            Err(ResourceError::new("not opened in these tests"))
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text, &[&Lenient])
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().problems.join("\n")
    }

    #[test]
    fn defaults_layer_under_resource_properties() {
        let c = parse(
            r#"
[defaults]
looks_alive_interval = "1s"
restart_delay = "0s"
[[resource]]
name = "a"
type = "lenient"
looks_alive_interval = "2s"
extra = { x = 1 }
[[resource]]
name = "b"
type = "lenient"
group = "g"
"#,
        )
        .unwrap();
        let (a, b) = (&c.resources[0], &c.resources[1]);
        assert_eq!(a.policy.looks_alive_interval, Duration::from_secs(2));
        assert_eq!(b.policy.looks_alive_interval, Duration::from_secs(1));
        assert_eq!(a.policy.restart_delay, Duration::ZERO);
        assert_eq!(a.policy.is_alive_interval, Duration::from_secs(60));
        assert_eq!(a.group, "a", "the group defaults to the name");
        assert_eq!(b.group, "g");
        assert_eq!(a.params, serde_json::json!({"extra": {"x": 1}}));
        assert!(a.autostart);
    }

    #[test]
    fn thresholds_and_backoff_are_read_and_checked() {
        let c = parse(
            r#"
[defaults]
failure_threshold = 3
restart_delay = "1s"
restart_backoff = 2
[[resource]]
name = "a"
type = "lenient"
success_threshold = 2
restart_backoff = 1.5
restart_delay_max = "2m"
"#,
        )
        .unwrap();
        let p = &c.resources[0].policy;
        assert_eq!((p.failure_threshold, p.success_threshold), (3, 2));
        assert_eq!(p.restart_backoff.factor(), 1.5);
        assert_eq!(p.restart_delay_max, Duration::from_secs(120));
        let text = problems(
            r#"
[[resource]]
name = "a"
type = "lenient"
failure_threshold = 0
success_threshold = "two"
restart_backoff = 0.5
[[resource]]
name = "b"
type = "lenient"
restart_backoff = 2.0
restart_delay = "0s"
[[resource]]
name = "c"
type = "lenient"
restart_backoff = 2.0
restart_delay = "10s"
restart_delay_max = "5s"
[[resource]]
name = "d"
type = "lenient"
restart_backoff = "fast"
"#,
        );
        for needle in [
            "resource \"a\" ([[resource]] #1): failure_threshold must be a whole number from 1 to 4294967295",
            "resource \"a\" ([[resource]] #1): success_threshold must be a whole number from 1",
            "resource \"a\" ([[resource]] #1): restart_backoff 0.5 must be from 1.0 (no growth) to 100.0",
            "resource \"b\" ([[resource]] #2): restart_backoff multiplies restart_delay, which is 0s",
            "resource \"c\" ([[resource]] #3): restart_delay_max (5s) is less than restart_delay (10s)",
            "resource \"d\" ([[resource]] #4): restart_backoff must be a number, e.g. 2.0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn every_problem_is_named_with_its_place() {
        let text = problems(
            r#"
[monitr]
[defaults]
looks_alive_interval = "0s"
bogus = 1
[[resource]]
name = "a"
type = "lenient"
bad = true
restart_threshold = -1
[[resource]]
name = "a"
type = "lenient"
[[resource]]
type = "lenient"
[[resource]]
name = "c"
type = "lenient"
terminate_timeout = 300
[[resource]]
name = "d"
type = "lenient"
restart_threshold = 4294967296
"#,
        );
        for needle in [
            "unknown section [monitr]; did you mean [monitor]?",
            "[defaults]: looks_alive_interval: must be more than zero",
            "[defaults]: unknown key \"bogus\"; the keys are looks_alive_interval,",
            "resource \"a\" ([[resource]] #1): bad: not today",
            "resource \"a\" ([[resource]] #1): restart_threshold must be a whole number",
            "resource \"a\" ([[resource]] #2): the name is used by an earlier resource",
            "[[resource]] #3: name is missing",
            "resource \"c\" ([[resource]] #4): terminate_timeout: write durations as strings",
            "resource \"d\" ([[resource]] #5): restart_threshold 4294967296 is too large: at most 4294967295",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn the_monitors_own_sections_report_every_problem_with_its_place() {
        let text = problems(
            r#"
[monitor]
socket = "relative.sock"
sokcet = "/x"
journal_keep = "five"
journal_max_size = "lots"
cgroups = "maybe"
[api]
tcp = 8080
[[api.token]]
name = "ops"
token = "short"
rightz = ["query"]
[access]
query = "*"
contrl = ["root"]
"#,
        );
        for needle in [
            "[monitor] socket: must be an absolute path",
            "[monitor] sokcet: unknown key \"sokcet\"; did you mean \"socket\"?",
            "[monitor] journal_keep: invalid type: string \"five\", expected u32",
            "[monitor] journal_max_size: bad size \"lots\"",
            "[monitor] cgroups: use \"auto\" or \"off\"",
            "[api] tcp: use true, false or \"HOST:PORT\"",
            "[[api.token]] #1: rightz: unknown key \"rightz\"; did you mean \"rights\"?",
            "[[api.token]] #1: rights must be a list",
            "[[api.token]] #1: the token must be at least 16 characters",
            "[access] query: must be a list of user names",
            "[access] contrl: unknown key \"contrl\"; did you mean \"control\"?",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn dependency_problems_are_reported() {
        let text = problems(
            r#"
[[resource]]
name = "a"
type = "lenient"
depends_on = ["b"]
[[resource]]
name = "b"
type = "lenient"
"#,
        );
        assert!(
            text.contains("dependencies must stay within a group"),
            "{text}"
        );
        let text = problems(
            r#"
[[resource]]
name = "a"
type = "lenient"
group = "g"
depends_on = ["b"]
[[resource]]
name = "b"
type = "lenient"
group = "g"
depends_on = ["a"]
"#,
        );
        assert!(text.contains("dependency cycle"), "{text}");
    }

    #[test]
    fn group_rules_need_a_cluster_section_and_a_broken_one_is_reported_once() {
        let groups = "[group.g]\npossible_nodes = [\"n1\"]\n[[resource]]\nname = \"a\"\ntype = \"lenient\"\ngroup = \"g\"\n";
        let p = problems(groups);
        assert!(p.contains("[group.g]: where a group runs"), "{p}");
        assert!(p.contains("it needs a [cluster] section"), "{p}");
        // A [cluster] that is there but wrong is named for what is wrong,
        // not reported as missing.
        let p = problems(&format!("[cluster]\nnode = \"n1\"\n{groups}"));
        assert!(p.contains("[cluster]"), "{p}");
        assert!(!p.contains("it needs a [cluster] section"), "{p}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("[[resource]\nname = 1\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(e.to_string().starts_with("test.toml: 1 problem"), "{e}");
    }
}
