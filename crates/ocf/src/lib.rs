//! The `ocf:PROVIDER:AGENT` resource type: a ClusterLabs OCF resource agent
//! (Debian `resource-agents`, `$OCF_ROOT/resource.d/PROVIDER/AGENT`) run as
//! a resmon resource.
//!
//! | entry point | agent action |
//! |---|---|
//! | `online` | `start` |
//! | `offline` | `stop` |
//! | `looks_alive` | `monitor` with `OCF_CHECK_LEVEL=0` |
//! | `is_alive` | `monitor` with `OCF_CHECK_LEVEL=check_level` (default 10) |
//! | `terminate` | the monitor kills the resource's cgroup (or marked processes) |
//!
//! `params` become `OCF_RESKEY_*`. The agent's `meta-data` is read once per
//! agent and cached: required parameters are checked and unknown ones
//! refused when the config is checked, and its advised action timeouts are
//! used where the config gives none. `validate-all` runs when the resource is
//! opened; its failure refuses the resource with the agent's message.
//!
//! Every action of a resource runs in that resource's cgroup (process group
//! and marker where cgroups are unavailable), so daemons an agent starts are
//! the resource's: terminate kills them even when `stop` hangs or fails.

pub mod meta;
pub mod runner;

use meta::MetaData;
use resmon_contract::table;
use resmon_contract::{
    control, CallContext, Completion, ControlError, LogLevel, LogMode, Notifier, OpenContext,
    Resource, ResourceError, ResourceType, Scope,
};
use resmon_task::lock;
use resmon_task::{CheckAbort, Container, Reaper};
use runner::{Outcome, Run};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where agents live unless `ocf_root` says otherwise.
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";
/// The `monitor` depth used for `is_alive` unless `check_level` says otherwise.
pub const DEFAULT_CHECK_LEVEL: u32 = 10;
/// An action's timeout when neither the config nor the agent gives one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const META_DATA_TIMEOUT: Duration = Duration::from_secs(10);

/// `ocf:PROVIDER:AGENT` split, with the names checked.
/// A type name that is not `ocf:PROVIDER:AGENT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("type {0:?} is not of the form \"ocf:PROVIDER:AGENT\" (e.g. \"ocf:heartbeat:Dummy\")")]
pub struct TypeNameError(pub String);

pub fn parse_type(type_name: &str) -> Result<(String, String), TypeNameError> {
    let parts: Vec<&str> = type_name.split(':').collect();
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match parts[..] {
        ["ocf", provider, agent] if ok(provider) && ok(agent) => {
            Ok((provider.to_string(), agent.to_string()))
        }
        _ => Err(TypeNameError(type_name.to_owned())),
    }
}

/// The agent's file under `root`.
pub fn agent_path(root: &Path, provider: &str, agent: &str) -> PathBuf {
    root.join("resource.d").join(provider).join(agent)
}

/// Every installed agent under `root`, as `(type, path)`, sorted.
pub fn list_agents(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(providers) = std::fs::read_dir(root.join("resource.d")) else {
        return out;
    };
    for p in providers.flatten() {
        let provider = p.file_name().to_string_lossy().into_owned();
        let Ok(agents) = std::fs::read_dir(p.path()) else {
            continue;
        };
        for a in agents.flatten() {
            let path = a.path();
            let name = a.file_name().to_string_lossy().into_owned();
            if path.is_file()
                && !name.starts_with('.')
                && rustix::fs::access(&path, rustix::fs::Access::EXEC_OK).is_ok()
            {
                out.push((format!("ocf:{provider}:{name}"), path));
            }
        }
    }
    out.sort();
    out
}

/// Reads an agent's meta-data with a plain child process, for tools that
/// are not the monitor (no reaper runs there).
pub fn read_meta_data(root: &Path, agent: &Path) -> Result<MetaData, ReadMetaDataError> {
    let out = std::process::Command::new(agent)
        .arg("meta-data")
        .env("OCF_ROOT", root)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ReadMetaDataError::Run {
            agent: agent.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(ReadMetaDataError::Exit {
            agent: agent.to_path_buf(),
            code: out.status.code(),
        });
    }
    Ok(meta::parse(&String::from_utf8_lossy(&out.stdout))?)
}

/// Why [`read_meta_data`] found nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadMetaDataError {
    #[error("running {} meta-data: {source}", agent.display())]
    Run {
        agent: PathBuf,
        source: std::io::Error,
    },
    #[error("{} meta-data exited {}", agent.display(), code.map_or("on a signal".to_owned(), |c| c.to_string()))]
    Exit { agent: PathBuf, code: Option<i32> },
    #[error(transparent)]
    Parse(#[from] meta::MetaDataError),
}

/// The checked type-specific config of one resource.
#[derive(Clone, Debug)]
struct Settings {
    provider: String,
    agent: String,
    root: PathBuf,
    path: PathBuf,
    params: BTreeMap<String, String>,
    check_level: u32,
    timeouts: HashMap<String, Duration>,
}

const KEYS: &[&str] = &["params", "ocf_root", "check_level", "timeouts"];
/// The actions resmon runs, and so the ones `timeouts` may name.
const ACTIONS: &[&str] = &["start", "stop", "monitor", "validate-all"];

/// The `ocf:PROVIDER:AGENT` resource type.
pub struct OcfType {
    reaper: Arc<Reaper>,
    rt: tokio::runtime::Handle,
    meta: Mutex<HashMap<PathBuf, Result<Arc<MetaData>, String>>>,
}

impl OcfType {
    pub fn new(reaper: Arc<Reaper>, rt: tokio::runtime::Handle) -> Self {
        OcfType {
            reaper,
            rt,
            meta: Mutex::new(HashMap::new()),
        }
    }

    /// The agent's meta-data, read once and cached.
    fn meta_data(&self, root: &Path, path: &Path) -> Result<Arc<MetaData>, String> {
        if let Some(m) = lock(&self.meta).get(path) {
            return m.clone();
        }
        let result = self
            .meta_data_text(root, path)
            .and_then(|t| meta::parse(&t).map_err(|e| e.to_string()))
            .map(Arc::new);
        lock(&self.meta).insert(path.to_path_buf(), result.clone());
        result
    }

    /// Runs `meta-data` (outside any resource's scope) and returns what
    /// it printed on stdout.
    fn meta_data_text(&self, root: &Path, path: &Path) -> Result<String, String> {
        let env = [("OCF_ROOT".to_string(), root.display().to_string())];
        let run = Run {
            agent: path,
            action: "meta-data",
            env: &env,
            timeout: META_DATA_TIMEOUT,
            scope: None,
            abort: None,
        };
        let out = runner::run(&run, &self.reaper, &self.rt).map_err(|e| e.to_string())?;
        if out.code == Some(runner::OCF_SUCCESS) {
            Ok(out.stdout)
        } else {
            Err(format!(
                "{}: {}",
                path.display(),
                out.describe("meta-data", META_DATA_TIMEOUT)
            ))
        }
    }

    fn settings(
        &self,
        type_name: &str,
        value: &serde_json::Value,
    ) -> Result<(Settings, Arc<MetaData>), Vec<String>> {
        let mut errors = Vec::new();
        let (provider, agent) = parse_type(type_name).map_err(|e| vec![e.to_string()])?;
        let obj = value.as_object().cloned().unwrap_or_default();
        let monitor_keys: Vec<&str> = table::monitor_keys().collect();
        for k in obj.keys() {
            if !KEYS.contains(&k.as_str()) {
                errors.push(format!(
                    "{} (agent parameters go in params = {{ ... }})",
                    table::unknown_key(k, KEYS, &monitor_keys)
                ));
            }
        }
        let root = match obj.get("ocf_root") {
            None => PathBuf::from(DEFAULT_OCF_ROOT),
            Some(serde_json::Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
            Some(_) => {
                errors.push("ocf_root: must be an absolute path".into());
                PathBuf::from(DEFAULT_OCF_ROOT)
            }
        };
        let check_level = match obj.get("check_level") {
            None => DEFAULT_CHECK_LEVEL,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    errors.push("check_level: must be a whole number, e.g. 10".into());
                    DEFAULT_CHECK_LEVEL
                }
            },
        };
        let mut timeouts = HashMap::new();
        match obj.get("timeouts") {
            None => {}
            Some(serde_json::Value::Object(t)) => {
                for (action, v) in t {
                    if !ACTIONS.contains(&action.as_str()) {
                        let hint = match table::suggest(action, ACTIONS.iter().copied()) {
                            Some(s) => format!("did you mean {s:?}?"),
                            None => format!("the actions resmon runs are {}", ACTIONS.join(", ")),
                        };
                        errors.push(format!("timeouts > {action}: unknown action; {hint}"));
                        continue;
                    }
                    let key = format!("timeouts > {action}");
                    match resmon_contract::duration_value(&key, v.as_str(), false) {
                        Ok(d) => {
                            timeouts.insert(action.clone(), d);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            Some(_) => errors.push("timeouts: must be a table, e.g. { start = \"20s\" }".into()),
        }
        let mut params = BTreeMap::new();
        match obj.get("params") {
            None => {}
            Some(serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => {
                            errors.push(format!("params.{k}: must be a string, number or boolean"));
                            continue;
                        }
                    };
                    if text.contains('\0') {
                        errors.push(format!("params.{k}: contains a NUL byte"));
                        continue;
                    }
                    params.insert(k.clone(), text);
                }
            }
            Some(_) => {
                errors.push("params: must be a table, e.g. params = { state = \"/run/x\" }".into())
            }
        }
        let path = agent_path(&root, &provider, &agent);
        if !path.is_file() || rustix::fs::access(&path, rustix::fs::Access::EXEC_OK).is_err() {
            errors.push(format!(
                "agent {type_name} not found: no executable {} (Debian: apt-get install resource-agents; `resmon agents` lists what is installed)",
                path.display()
            ));
            return Err(errors);
        }
        let meta = match self.meta_data(&root, &path) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("reading the meta-data of {type_name}: {e}"));
                return Err(errors);
            }
        };
        for p in &meta.parameters {
            if p.required && !params.contains_key(&p.name) {
                errors.push(format!(
                    "params.{}: required by {type_name} ({})",
                    p.name, p.shortdesc
                ));
            }
        }
        for k in params.keys() {
            if meta.parameter(k).is_none() {
                let known: Vec<&str> = meta.parameters.iter().map(|p| p.name.as_str()).collect();
                errors.push(match table::suggest(k, known.iter().copied()) {
                    Some(s) => format!(
                        "params.{k}: {type_name} takes no such parameter; did you mean {s:?}?"
                    ),
                    None => format!(
                        "params.{k}: {type_name} takes no such parameter; it takes {}",
                        known.join(", ")
                    ),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok((
            Settings {
                provider,
                agent,
                root,
                path,
                params,
                check_level,
                timeouts,
            },
            meta,
        ))
    }
}

impl ResourceType for OcfType {
    fn name(&self) -> &str {
        "ocf:PROVIDER:AGENT"
    }

    fn handles(&self, type_name: &str) -> bool {
        type_name.starts_with("ocf:")
    }

    fn validate(&self, type_name: &str, params: &serde_json::Value) -> Vec<String> {
        self.settings(type_name, params).err().unwrap_or_default()
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, ResourceError> {
        let (s, meta) = self
            .settings(&ctx.type_name, &ctx.params)
            .map_err(|e| ResourceError::new(e.join("; ")))?;
        let mut env = vec![
            ("OCF_ROOT".to_string(), s.root.display().to_string()),
            ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
            ("OCF_RA_VERSION_MINOR".into(), "1".into()),
            ("OCF_RESOURCE_INSTANCE".into(), ctx.name.clone()),
            ("OCF_RESOURCE_TYPE".into(), s.agent.clone()),
            ("OCF_RESOURCE_PROVIDER".into(), s.provider.clone()),
        ];
        for (k, v) in &s.params {
            env.push((format!("OCF_RESKEY_{k}"), v.clone()));
        }
        let timeout = |action: &str| {
            s.timeouts
                .get(action)
                .copied()
                .or_else(|| meta.timeout(action))
                .unwrap_or(DEFAULT_TIMEOUT)
        };
        let log_name = ctx.name.clone();
        let r = OcfResource {
            name: ctx.name,
            type_name: ctx.type_name,
            agent: s.path.clone(),
            env,
            start_timeout: timeout("start"),
            stop_timeout: timeout("stop"),
            monitor_timeout: timeout("monitor"),
            validate_timeout: timeout("validate-all"),
            check_level: s.check_level,
            intervals: (
                ctx.policy.looks_alive_interval,
                ctx.policy.is_alive_interval,
            ),
            container: Container::from_scope(&ctx.scope),
            scope: ctx.scope,
            notifier: ctx.notifier,
            reaper: self.reaper.clone(),
            rt: self.rt.clone(),
            detail: Mutex::new(None),
            checks: CheckAbort::default(),
            params: ctx.params,
            log: (ctx.log.mode == LogMode::File).then(|| {
                resmon_journal::output::ResourceLog::new(
                    ctx.log.dir.clone(),
                    &log_name,
                    resmon_journal::Options {
                        max_size: ctx.log.max_size,
                        keep: ctx.log.keep,
                    },
                )
            }),
        };
        // validate-all refuses a resource the agent cannot run. It runs in
        // the resource's container like every action, so a stop of the
        // monitor (or of a reload that opens it) can kill it there.
        let out = r.action("validate-all", r.validate_timeout, &[], Some(&r.scope))?;
        match out.code {
            Some(runner::OCF_SUCCESS) | Some(runner::OCF_ERR_UNIMPLEMENTED) => {}
            _ => {
                return Err(ResourceError::new(
                    out.describe("validate-all", r.validate_timeout),
                ))
            }
        }
        Ok(Box::new(r))
    }

    fn resource_type_control(
        &self,
        _type_name: &str,
        code: u32,
        _input: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        match code {
            control::GET_PRIVATE_PROPERTY_NAMES => {
                Ok(serde_json::to_vec(&serde_json::json!(KEYS)).expect("static JSON"))
            }
            _ => Err(ControlError::NotSupported),
        }
    }
}

struct OcfResource {
    name: String,
    type_name: String,
    agent: PathBuf,
    env: Vec<(String, String)>,
    start_timeout: Duration,
    stop_timeout: Duration,
    monitor_timeout: Duration,
    validate_timeout: Duration,
    check_level: u32,
    /// looks_alive and is_alive intervals, passed as the monitor's interval.
    intervals: (Duration, Duration),
    scope: Scope,
    container: Container,
    notifier: Notifier,
    reaper: Arc<Reaper>,
    rt: tokio::runtime::Handle,
    /// Promoted or degraded, as the last monitor said.
    detail: Mutex<Option<String>>,
    /// Cuts a `monitor` short when a stop comes.
    checks: CheckAbort,
    params: serde_json::Value,
    /// Where what its actions print goes (`log = "file"`).
    log: Option<resmon_journal::output::ResourceLog>,
}

impl OcfResource {
    fn action(
        &self,
        action: &str,
        timeout: Duration,
        extra: &[(String, String)],
        scope: Option<&Scope>,
    ) -> Result<Outcome, ResourceError> {
        let mut env = self.env.clone();
        env.extend_from_slice(extra);
        let run = Run {
            agent: &self.agent,
            action,
            env: &env,
            timeout,
            scope,
            abort: (action == "monitor").then_some(&self.checks),
        };
        let out = runner::run(&run, &self.reaper, &self.rt)
            .map_err(|e| ResourceError::new(e.to_string()))?;
        if let Some(log) = &self.log {
            for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
                if !text.trim().is_empty() {
                    let lines: String = text.lines().map(|l| format!("{action}: {l}\n")).collect();
                    log.append(stream, &lines);
                }
            }
        }
        Ok(out)
    }

    /// `monitor` at `depth`; true when it says the resource runs.
    fn monitor(&self, depth: u32, interval: Duration) -> bool {
        let extra = [
            ("OCF_CHECK_LEVEL".to_string(), depth.to_string()),
            (
                "OCF_RESKEY_CRM_meta_interval".to_string(),
                interval.as_millis().to_string(),
            ),
        ];
        if self.checks.is_cancelled() {
            return false;
        }
        let out = match self.action("monitor", self.monitor_timeout, &extra, Some(&self.scope)) {
            Ok(o) => o,
            Err(_) if self.checks.is_cancelled() => return false,
            Err(e) => {
                self.notifier.log(LogLevel::Error, format!("monitor: {e}"));
                return false;
            }
        };
        let (alive, detail) = match out.code {
            Some(runner::OCF_SUCCESS) => (true, None),
            Some(runner::OCF_RUNNING_PROMOTED) => (true, Some("promoted")),
            Some(runner::OCF_DEGRADED) => (true, Some("degraded")),
            Some(runner::OCF_DEGRADED_PROMOTED) => (true, Some("degraded, promoted")),
            Some(runner::OCF_FAILED_PROMOTED) => (false, Some("failed promoted")),
            _ => (false, None),
        };
        *lock(&self.detail) = detail.map(str::to_string);
        if !alive {
            self.notifier.log(
                LogLevel::Warn,
                format!(
                    "{} (OCF_CHECK_LEVEL={depth})",
                    out.describe("monitor", self.monitor_timeout)
                ),
            );
        }
        alive
    }
}

impl Resource for OcfResource {
    fn online(&self, _ctx: &CallContext) -> Result<Completion, ResourceError> {
        self.checks.reset();
        let out = self.action("start", self.start_timeout, &[], Some(&self.scope))?;
        match out.code {
            Some(runner::OCF_SUCCESS) => Ok(Completion::Done),
            _ => Err(ResourceError::new(
                out.describe("start", self.start_timeout),
            )),
        }
    }

    fn offline(&self, _ctx: &CallContext) -> Result<Completion, ResourceError> {
        let out = self.action("stop", self.stop_timeout, &[], Some(&self.scope))?;
        if out.code != Some(runner::OCF_SUCCESS) {
            return Err(ResourceError::new(out.describe("stop", self.stop_timeout)));
        }
        // A stopped resource leaves nothing behind: what the agent's stop
        // left in the resource's scope (children of the daemon it killed)
        // goes too.
        let left = self.container.pids();
        if !left.is_empty() {
            self.notifier.log(
                LogLevel::Info,
                format!(
                    "stop left {} processes ({left:?}); killing them",
                    left.len()
                ),
            );
            let _ = self.container.kill_all();
            let container = &self.container;
            let _ = self.rt.block_on(async {
                tokio::time::timeout(self.stop_timeout, container.wait_empty()).await
            });
        }
        Ok(Completion::Done)
    }

    fn terminate(&self, _exit_code: i32) {
        // Everything in the resource's scope: daemons the agent started and
        // any action still running (a hung stop included).
        if let Err(e) = self.container.kill_all() {
            tracing::warn!(resource = %self.name, "terminate: {e}");
        }
    }

    fn cancel_check(&self) {
        self.checks.cancel();
    }

    fn looks_alive(&self) -> bool {
        self.monitor(0, self.intervals.0)
    }

    fn is_alive(&self) -> bool {
        self.monitor(self.check_level, self.intervals.1)
    }

    fn resource_control(&self, code: u32, _input: &[u8]) -> Result<Vec<u8>, ControlError> {
        match code {
            control::GET_PRIVATE_PROPERTIES => serde_json::to_vec(&serde_json::json!({
                "type": self.type_name,
                "agent": self.agent,
                "params": self.params,
                "check_level": self.check_level,
                "timeouts": {
                    "start": humantime::format_duration(self.start_timeout).to_string(),
                    "stop": humantime::format_duration(self.stop_timeout).to_string(),
                    "monitor": humantime::format_duration(self.monitor_timeout).to_string(),
                },
            }))
            .map_err(|e| ControlError::Failed(e.to_string())),
            _ => Err(ControlError::NotSupported),
        }
    }

    fn close(&self) {}

    fn pids(&self) -> Vec<u32> {
        self.container.pids()
    }

    fn detail(&self) -> Option<String> {
        lock(&self.detail).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_checked() {
        assert_eq!(
            parse_type("ocf:heartbeat:Dummy").unwrap(),
            ("heartbeat".into(), "Dummy".into())
        );
        for bad in [
            "ocf:heartbeat",
            "ocf::Dummy",
            "lsb:x:y",
            "ocf:../x:y",
            "ocf:a:b/c",
        ] {
            assert!(parse_type(bad).is_err(), "{bad}");
        }
    }
}
