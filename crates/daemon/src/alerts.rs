//! Alert hooks (`[[alert]]`): every event of the feed that a hook's filters
//! take reaches it, as a command run with the event in `RESMON_ALERT_*`
//! environment variables and as JSON on its stdin, and/or as a webhook
//! `POST` of the same JSON.
//!
//! Hooks never hold the monitor up. A dispatcher task follows the event
//! bus and puts each alert on its hook's queue; each hook has a worker
//! that delivers its alerts one at a time, in event order. A queue is
//! bounded: when it is full the oldest alert is dropped and counted
//! (`alerts_dropped`: the status's problems, the metrics, the event feed).
//! A command runs as the hook's `user`, in a container of its own (a cgroup,
//! or a marked process group), bounded by `timeout`: past it, the same
//! ladder as a resource's stop (SIGTERM to all of it, then the whole
//! container killed). A delivery that fails is tried again `retries` times.
//! None outlives the monitor: [`Alerts::stop`] kills what still runs.

use crate::events::{EventBus, EventRecord};
use resmon_contract::State;
use resmon_task::{lock, Container, Containers, Output, Reaper, SpawnSpec};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// What an alert can be about: `on = [...]` takes these.
pub const KINDS: &[&str] = &[
    "failed",
    "restarted",
    "online",
    "offline",
    "terminated",
    "forced",
    "stopped",
    "ready",
    "not_ready",
    "failover",
    "fenced",
    "cluster",
    "maintenance",
    "request",
    "monitor",
    "log",
    "state",
];

/// What a hook hears without `on`.
pub const DEFAULT_ON: &[&str] = &[
    "failed",
    "restarted",
    "terminated",
    "forced",
    "not_ready",
    "failover",
    "fenced",
    "maintenance",
];

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_QUEUE: usize = 1000;
/// The pause after a SIGTERM at the timeout before the hook is killed.
const TERM_GRACE: Duration = Duration::from_millis(300);
/// How long [`Alerts::stop`] lets queued alerts go out.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The longest reason sent: a hook's stdin must take the JSON at once.
const MAX_REASON: usize = 16 * 1024;

/// One `[[alert]]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertConfig {
    pub name: String,
    pub command: Option<Vec<String>>,
    pub url: Option<String>,
    pub on: Vec<String>,
    /// Only these resources' events (empty: all).
    pub resources: Vec<String>,
    /// Only these groups' events (empty: all).
    pub groups: Vec<String>,
    pub timeout: Duration,
    /// (uid, gid) the command runs as; `None`: the monitor's user.
    pub user: Option<(u32, u32)>,
    pub retries: u32,
    pub queue: usize,
}

/// The alert kinds an event is, the most specific first.
pub fn kinds_of(e: &EventRecord) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(2);
    match e.kind.as_str() {
        "state" => {
            match e.state {
                Some(State::Failed) => out.push("failed"),
                Some(State::Online) => out.push("online"),
                Some(State::Offline) => out.push("offline"),
                Some(State::OnlinePending) if e.reason == "restarting" => out.push("restarted"),
                _ => {}
            }
            out.push("state");
        }
        "terminate" => out.push("terminated"),
        "force_kill" => out.push("forced"),
        "cluster" if e.reason.starts_with("fenced") => out.extend(["fenced", "cluster"]),
        other => {
            if let Some(k) = KINDS.iter().find(|k| **k == other) {
                out.push(k);
            }
        }
    }
    out
}

impl AlertConfig {
    /// The kind under which this hook takes `e`, if it does.
    fn takes(&self, e: &EventRecord) -> Option<&'static str> {
        let of = |list: &[String], v: &Option<String>| {
            list.is_empty() || v.as_ref().is_some_and(|v| list.contains(v))
        };
        if !of(&self.resources, &e.resource) || !of(&self.groups, &e.group) {
            return None;
        }
        kinds_of(e)
            .into_iter()
            .find(|k| self.on.iter().any(|o| o == k))
    }
}

/// One alert on its way to a hook.
#[derive(Clone, Debug)]
struct Alert {
    kind: &'static str,
    event: EventRecord,
}

/// A hook and its queue.
struct Hook {
    cfg: AlertConfig,
    queue: Mutex<VecDeque<Alert>>,
    wake: Notify,
    dropped: AtomicU64,
    container: Container,
}

impl Hook {
    fn new(cfg: AlertConfig, container: Container) -> Hook {
        Hook {
            cfg,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
            container,
        }
    }
}

/// The running hooks.
pub struct Alerts {
    hooks: Vec<Arc<Hook>>,
    stopping: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What every delivery of this monitor shares.
#[derive(Clone)]
struct Context {
    bus: EventBus,
    reaper: Arc<Reaper>,
    node: Arc<str>,
    stopping: Arc<AtomicBool>,
}

impl Alerts {
    /// Starts a worker per hook and the dispatcher; `node` names this
    /// machine in the alerts. A hook whose container cannot be made is
    /// left out, and the event feed says why.
    pub fn start(
        configs: &[AlertConfig],
        bus: &EventBus,
        containers: &Containers,
        node: &str,
    ) -> Alerts {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut alerts = Alerts {
            hooks: Vec::new(),
            stopping: stopping.clone(),
            tasks: Vec::new(),
        };
        if configs.is_empty() {
            return alerts;
        }
        let reaper = match Reaper::get() {
            Ok(r) => r,
            Err(e) => {
                let why = format!("alert hooks are off: no process reaper ({e})");
                tracing::error!("{why}");
                bus.publish("alert", None, None, None, why);
                return alerts;
            }
        };
        let ctx = Context {
            bus: bus.clone(),
            reaper,
            node: node.into(),
            stopping,
        };
        for cfg in configs {
            // Resource names never start with '-': no clash with theirs.
            let container = match containers.create(&format!("-alert-{}", cfg.name)) {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("alert {:?} is off: its container: {e}", cfg.name);
                    tracing::error!("{why}");
                    bus.publish("alert", None, None, None, why);
                    continue;
                }
            };
            let hook = Arc::new(Hook::new(cfg.clone(), container));
            alerts
                .tasks
                .push(tokio::spawn(deliver_all(hook.clone(), ctx.clone())));
            alerts.hooks.push(hook);
        }
        let (_, rx) = bus.subscribe();
        let hooks = alerts.hooks.clone();
        alerts
            .tasks
            .push(tokio::spawn(dispatch(rx, hooks, ctx.bus.clone())));
        alerts
    }

    /// What the status's problems say of dropped alerts: a line per hook
    /// that dropped some, read when asked.
    pub fn dropped_reader(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let hooks = self.hooks.clone();
        move || {
            hooks
                .iter()
                .filter_map(|h| {
                    let n = h.dropped.load(Ordering::Relaxed);
                    (n > 0).then(|| {
                        format!(
                            "alert {:?} dropped {n} alert(s): its queue of {} was full",
                            h.cfg.name, h.cfg.queue
                        )
                    })
                })
                .collect()
        }
    }

    /// Lets what is queued go out for a moment, then kills what still runs
    /// and removes the hooks' containers.
    pub async fn stop(self) {
        let drained = async {
            for h in &self.hooks {
                while !lock(&h.queue).is_empty() || !h.container.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let _ = tokio::time::timeout(STOP_GRACE, drained).await;
        self.stopping.store(true, Ordering::Release);
        for t in &self.tasks {
            t.abort();
        }
        for h in &self.hooks {
            let left = lock(&h.queue).len();
            if left > 0 {
                tracing::warn!(
                    "alert {:?}: {left} alert(s) not sent: the monitor stopped",
                    h.cfg.name
                );
            }
            crate::opening::kill_and_wait(&h.container).await;
            if let Err(e) = h.container.remove() {
                tracing::warn!("alert {:?}: removing its container: {e}", h.cfg.name);
            }
        }
    }
}

/// Follows the event bus and queues each event for the hooks that take it.
async fn dispatch(mut rx: broadcast::Receiver<EventRecord>, hooks: Vec<Arc<Hook>>, bus: EventBus) {
    loop {
        match rx.recv().await {
            Ok(e) => {
                for h in &hooks {
                    if let Some(kind) = h.cfg.takes(&e) {
                        enqueue(
                            h,
                            Alert {
                                kind,
                                event: e.clone(),
                            },
                            &bus,
                        );
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Events the dispatcher never saw: every hook may have
                // missed some.
                for h in &hooks {
                    count_dropped(h, n, &bus);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn enqueue(h: &Hook, alert: Alert, bus: &EventBus) {
    let full = {
        let mut q = lock(&h.queue);
        let full = q.len() >= h.cfg.queue && q.pop_front().is_some();
        q.push_back(alert);
        full
    };
    h.wake.notify_one();
    if full {
        count_dropped(h, 1, bus);
    }
}

fn count_dropped(h: &Hook, n: u64, bus: &EventBus) {
    let total = h.dropped.fetch_add(n, Ordering::Relaxed) + n;
    resmon_metrics::global().alert(&h.cfg.name, "dropped", n);
    // Said at the first drop and as the count doubles, not at each one.
    if (total - n).checked_ilog2() != total.checked_ilog2() {
        let why = format!(
            "alert {:?}: its queue of {} is full; {total} alert(s) dropped so far",
            h.cfg.name, h.cfg.queue
        );
        tracing::warn!("{why}");
        bus.publish("alert", None, None, None, why);
    }
}

/// A hook's worker: its alerts one at a time, in order.
async fn deliver_all(h: Arc<Hook>, ctx: Context) {
    loop {
        let next = lock(&h.queue).pop_front();
        let Some(alert) = next else {
            h.wake.notified().await;
            continue;
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = deliver(&h, &alert, attempt, &ctx).await;
            if ctx.stopping.load(Ordering::Acquire) {
                return;
            }
            match result {
                Ok(()) => {
                    resmon_metrics::global().alert(&h.cfg.name, "delivered", 1);
                    break;
                }
                Err(why) if attempt <= h.cfg.retries => {
                    tracing::warn!(
                        "alert {:?} (event {}): {why}; trying again",
                        h.cfg.name,
                        alert.event.seq
                    );
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(10)))).await;
                }
                Err(why) => {
                    resmon_metrics::global().alert(&h.cfg.name, "failed", 1);
                    let why = format!(
                        "alert {:?} gave up on event {} ({}) after {attempt} attempt(s): {why}",
                        h.cfg.name, alert.event.seq, alert.kind
                    );
                    tracing::warn!("{why}");
                    ctx.bus.publish("alert", None, None, None, why);
                    break;
                }
            }
        }
    }
}

/// The alert as JSON: what stdin and a webhook get.
fn json_of(h: &Hook, alert: &Alert, node: &str) -> serde_json::Value {
    let e = &alert.event;
    let mut reason = e.reason.clone();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    serde_json::json!({
        "alert": h.cfg.name,
        "kind": alert.kind,
        "event": e.kind,
        "seq": e.seq,
        "time": e.time,
        "node": node,
        "resource": e.resource,
        "group": e.group,
        "state": e.state,
        "reason": reason,
        "exit_code": e.exit_code,
    })
}

/// The `RESMON_ALERT_*` variables of an alert.
fn env_of(json: &serde_json::Value, attempt: u32) -> Vec<(String, String)> {
    let mut env = vec![("RESMON_ALERT_ATTEMPT".to_string(), attempt.to_string())];
    for (key, var) in [
        ("alert", "NAME"),
        ("kind", "KIND"),
        ("event", "EVENT"),
        ("seq", "SEQ"),
        ("time", "TIME"),
        ("node", "NODE"),
        ("resource", "RESOURCE"),
        ("group", "GROUP"),
        ("state", "STATE"),
        ("reason", "REASON"),
        ("exit_code", "EXIT_CODE"),
    ] {
        let value = match &json[key] {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // Nothing a variable cannot carry reaches execve.
        env.push((format!("RESMON_ALERT_{var}"), value.replace('\0', " ")));
    }
    env
}

async fn deliver(h: &Hook, alert: &Alert, attempt: u32, ctx: &Context) -> Result<(), String> {
    let json = json_of(h, alert, &ctx.node);
    if let Some(argv) = &h.cfg.command {
        run_command(h, argv, &json, attempt, ctx).await?;
    }
    if let Some(url) = &h.cfg.url {
        let (url, body, timeout) = (url.clone(), json.to_string(), h.cfg.timeout);
        tokio::task::spawn_blocking(move || post(&url, &body, timeout))
            .await
            .map_err(|e| format!("webhook: {e}"))??;
    }
    Ok(())
}

async fn run_command(
    h: &Hook,
    argv: &[String],
    json: &serde_json::Value,
    attempt: u32,
    ctx: &Context,
) -> Result<(), String> {
    // The JSON waits in a pipe: it is small enough to go in at once.
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("making its stdin: {e}"))?;
    let mut text = json.to_string();
    text.push('\n');
    std::io::Write::write_all(&mut std::fs::File::from(write), text.as_bytes())
        .map_err(|e| format!("writing its stdin: {e}"))?;
    let mut spec = SpawnSpec {
        program: argv[0].clone(),
        args: argv[1..].to_vec(),
        env: env_of(json, attempt),
        user: h.cfg.user,
        stdin: Some(Arc::new(read)),
        stdout: Output::Inherit,
        stderr: Output::Inherit,
        ..Default::default()
    };
    spec.set_scope(&h.container.scope());
    spec.new_session = true;
    let reaper = ctx.reaper.clone();
    let task = tokio::task::spawn_blocking(move || reaper.spawn(&spec))
        .await
        .map_err(|e| format!("starting {}: {e}", argv[0]))?
        .map_err(|e| format!("starting {}: {e}", argv[0]))?;
    let waited = tokio::time::timeout(h.cfg.timeout, task.wait()).await;
    let out = match waited {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => Err(format!("{} exited with code {code}", argv[0])),
        Ok(Err(e)) => Err(format!("waiting for {}: {e}", argv[0])),
        Err(_) => {
            // The ladder: asked to stop, then killed, all of it.
            let _ = h.container.signal_all(rustix::process::Signal::TERM);
            let _ = tokio::time::timeout(TERM_GRACE, h.container.wait_empty()).await;
            Err(format!(
                "{} did not finish within its timeout of {}: terminated",
                argv[0],
                humantime::format_duration(h.cfg.timeout)
            ))
        }
    };
    // Whatever it left behind goes with it.
    if !h.container.is_empty() {
        crate::opening::kill_and_wait(&h.container).await;
    }
    out
}

/// POSTs the alert's JSON; a 2xx answer is delivered.
fn post(url: &str, body: &str, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let resp = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| format!("webhook POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("webhook POST {url} answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, state: Option<State>, reason: &str) -> EventRecord {
        EventRecord {
            seq: 7,
            time: "2026-12-07T10:00:00.000Z".into(),
            kind: kind.into(),
            resource: Some("web".into()),
            group: Some("g".into()),
            state,
            reason: reason.into(),
            count: 1,
            last_time: None,
            exit_code: Some(3),
        }
    }

    fn hook(on: &[&str]) -> AlertConfig {
        AlertConfig {
            name: "ops".into(),
            command: Some(vec!["true".into()]),
            url: None,
            on: on.iter().map(|s| s.to_string()).collect(),
            resources: Vec::new(),
            groups: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            user: None,
            retries: 0,
            queue: 2,
        }
    }

    #[test]
    fn events_are_the_alert_kinds_hooks_ask_for() {
        let rows: &[(EventRecord, &[&str])] = &[
            (
                event("state", Some(State::Failed), "x"),
                &["failed", "state"],
            ),
            (
                event("state", Some(State::OnlinePending), "restarting"),
                &["restarted", "state"],
            ),
            (
                event("state", Some(State::OnlinePending), "coming online"),
                &["state"],
            ),
            (event("terminate", None, "x"), &["terminated"]),
            (event("force_kill", None, "x"), &["forced"]),
            (
                event("cluster", None, "fenced group g: lease lost"),
                &["fenced", "cluster"],
            ),
            (event("cluster", None, "took group g"), &["cluster"]),
            (event("not_ready", None, "x"), &["not_ready"]),
            (event("alert", None, "x"), &[]),
        ];
        for (e, want) in rows {
            assert_eq!(kinds_of(e), *want, "{e:?}");
        }
        let h = hook(&["failed", "state"]);
        assert_eq!(
            h.takes(&rows[0].0),
            Some("failed"),
            "the specific kind first"
        );
        assert_eq!(h.takes(&rows[2].0), Some("state"));
        assert_eq!(hook(&["forced"]).takes(&rows[0].0), None);
        let mut only = hook(&["failed"]);
        only.resources = vec!["db".into()];
        assert_eq!(only.takes(&rows[0].0), None, "another resource's");
        only.resources.clear();
        only.groups = vec!["g".into()];
        assert_eq!(only.takes(&rows[0].0), Some("failed"));
    }

    #[test]
    fn an_alert_is_json_and_variables() {
        let h = Hook::new(
            hook(&["failed"]),
            Containers::process_groups().unopened("-alert-ops"),
        );
        let alert = Alert {
            kind: "failed",
            event: event("state", Some(State::Failed), &"x".repeat(MAX_REASON + 10)),
        };
        let json = json_of(&h, &alert, "n1");
        assert_eq!(json["kind"], "failed");
        assert_eq!(json["exit_code"], 3);
        assert_eq!(json["reason"].as_str().unwrap().len(), MAX_REASON);
        let env = env_of(&json, 2);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RESMON_ALERT_KIND"), Some("failed"));
        assert_eq!(get("RESMON_ALERT_STATE"), Some("failed"));
        assert_eq!(get("RESMON_ALERT_SEQ"), Some("7"));
        assert_eq!(get("RESMON_ALERT_NODE"), Some("n1"));
        assert_eq!(get("RESMON_ALERT_EXIT_CODE"), Some("3"));
        assert_eq!(get("RESMON_ALERT_ATTEMPT"), Some("2"));
        assert_eq!(get("RESMON_ALERT_RESOURCE"), Some("web"));
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts() {
        let bus = EventBus::new();
        let h = Hook::new(
            hook(&["failed"]),
            Containers::process_groups().unopened("-alert-ops"),
        );
        for seq in 1..=5 {
            let mut event = event("state", Some(State::Failed), "x");
            event.seq = seq;
            enqueue(
                &h,
                Alert {
                    kind: "failed",
                    event,
                },
                &bus,
            );
        }
        let kept: Vec<u64> = lock(&h.queue).iter().map(|a| a.event.seq).collect();
        assert_eq!(kept, [4, 5]);
        assert_eq!(h.dropped.load(Ordering::Relaxed), 3);
        // Said at the first drop and at the second (the count doubled).
        let (said, _) = bus.subscribe();
        assert_eq!(said.len(), 2, "{said:#?}");
    }
}
