//! The monitor's side of plugins: the resource types a plugin library
//! provides, and the host processes that run them.
//!
//! Every call into a plugin is a request to a host, answered over the
//! resource's lane (or, for `terminate`, the host's own socket) and waited
//! for with a deadline: `terminate_timeout` for
//! `terminate`, `deadlock_timeout` for every other entry point. A call past
//! its deadline gets the whole host killed (rung 3 of the termination
//! ladder: the kernel frees every lock its threads held), and the resource
//! that hung, the *culprit*, gets a host of its own from then on
//! (`separate_monitor`). A host that dies for any reason fails the calls in
//! flight in it; each other resource that was online is reported failed to
//! the monitor, which checks it at once with `is_alive` in a fresh host
//! (re-attached where it is still healthy) or restarts it per its policy.
//! Hosts are started when first needed, so a dead one is replaced by the
//! next call that needs it.

use crate::host::FIRST_OUT_LEN;
use crate::protocol::{
    read_frame, send_with_fd, write_frame, FrameReader, FromHost, Op, Reply, Request,
};
use resmon_contract::{
    control, CallContext, Completion, ControlError, FencingToken, LogLevel, Notifier, OpenContext,
    Policy, Resource, ResourceError, ResourceType,
};
use resmon_metrics::HostEnd;
use resmon_sdk::ffi;
use resmon_task::lock;
use resmon_task::{Output, Reaper, SpawnSpec, TaskHandle, STILL_ACTIVE};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Resource numbers, unique in the monitor (a resource gets a new one each
/// time it is opened in a host).
static NEXT_RID: AtomicU64 = AtomicU64::new(1);
static NEXT_HOST: AtomicU64 = AtomicU64::new(1);

/// The `plugin:NAME` resource types: every plugin library of a monitor,
/// each with its host processes.
pub struct Plugins {
    exe: PathBuf,
    reaper: Arc<Reaper>,
    pools: Mutex<HashMap<PathBuf, Arc<Pool>>>,
    /// The library each type name was last opened from, for type-wide
    /// control codes.
    libraries: Mutex<HashMap<String, PathBuf>>,
}

/// The prefix of plugin type names: `type = "plugin:lockfile"`.
pub const PREFIX: &str = "plugin:";

impl Plugins {
    /// `exe` is the `resmon` binary, started as `resmon host` for each host.
    pub fn new(exe: PathBuf, reaper: Arc<Reaper>) -> Plugins {
        Plugins {
            exe,
            reaper,
            pools: Mutex::new(HashMap::new()),
            libraries: Mutex::new(HashMap::new()),
        }
    }

    fn pool(&self, library: &Path) -> Arc<Pool> {
        lock(&self.pools)
            .entry(library.to_path_buf())
            .or_insert_with(|| {
                Arc::new(Pool {
                    exe: self.exe.clone(),
                    reaper: self.reaper.clone(),
                    library: library.to_path_buf(),
                    shared: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// The keys of a plugin resource's table besides the common ones.
const KEYS: &[&str] = &["library", "params"];

/// `library` of a resource's table, made absolute.
fn library_of(params: &serde_json::Value) -> Result<PathBuf, String> {
    let lib = params
        .get("library")
        .and_then(|l| l.as_str())
        .ok_or("library is missing: the path of the plugin's shared library")?;
    let path = Path::new(lib);
    if !path.is_file() {
        return Err(format!("library {lib:?} is not a file"));
    }
    std::fs::canonicalize(path).map_err(|e| format!("library {lib:?}: {e}"))
}

impl ResourceType for Plugins {
    fn name(&self) -> &str {
        "plugin:NAME"
    }

    fn handles(&self, type_name: &str) -> bool {
        type_name.strip_prefix(PREFIX).is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    }

    fn validate(&self, _type_name: &str, params: &serde_json::Value) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(o) = params.as_object() {
            let monitor_keys: Vec<&str> = resmon_contract::table::monitor_keys().collect();
            for k in o.keys().filter(|k| !KEYS.contains(&k.as_str())) {
                problems.push(format!(
                    "{} (the plugin's own settings go in params = {{ ... }})",
                    resmon_contract::table::unknown_key(k, KEYS, &monitor_keys)
                ));
            }
        }
        if let Err(e) = library_of(params) {
            problems.push(e);
        }
        match params.get("params") {
            None | Some(serde_json::Value::Object(_)) => {}
            Some(_) => problems.push("params must be a table: params = { ... }".into()),
        }
        problems
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, ResourceError> {
        let library = library_of(&ctx.params).map_err(ResourceError)?;
        let type_name = ctx.type_name[PREFIX.len()..].to_string();
        lock(&self.libraries).insert(ctx.type_name.clone(), library.clone());
        let params = ctx
            .params
            .get("params")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}))
            .to_string();
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            name: ctx.name.clone(),
            type_name,
            params,
            separate: AtomicBool::new(ctx.policy.separate_monitor),
            policy: ctx.policy,
            fencing: ctx.scope.fencing,
            notifier: ctx.notifier,
            log: (ctx.log.mode == resmon_contract::LogMode::File).then(|| {
                resmon_journal::output::ResourceLog::new(
                    ctx.log.dir.clone(),
                    &ctx.name,
                    resmon_journal::Options {
                        max_size: ctx.log.max_size,
                        keep: ctx.log.keep,
                    },
                )
            }),
            pool: self.pool(&library),
            remote: Mutex::new(None),
            pending: Mutex::new(None),
            up: AtomicBool::new(false),
            check_cancelled: AtomicBool::new(false),
            // Without one, a cancelled check is waited for as before: its
            // deadline, and the host killed if it passes.
            check_wake: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .ok(),
        });
        shared.ensure_open()?;
        Ok(Box::new(PluginResource(shared)))
    }

    /// A type-wide control code of `type_name` (`plugin:NAME`), run in the
    /// shared host of the library the type's resources were opened from.
    fn resource_type_control(
        &self,
        type_name: &str,
        code: u32,
        input: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        let library = lock(&self.libraries)
            .get(type_name)
            .cloned()
            .ok_or_else(|| {
                ControlError::Failed(format!(
                    "no resource of type {type_name:?} was opened, so its library is not known"
                ))
            })?;
        let host = self
            .pool(&library)
            .host(false)
            .map_err(|e| ControlError::Failed(e.0))?;
        let timeout = Policy::default().deadlock_timeout;
        let name = type_name[PREFIX.len()..].to_string();
        control_call(|out_len| {
            let op = Op::TypeControl {
                type_name: name.clone(),
                code,
                input: input.to_vec(),
                out_len,
            };
            match host.call(0, op, timeout) {
                Ok(r) => Ok(r),
                Err(CallError::Gone(why)) => Err(why),
                // Only health checks are cancelled.
                Err(CallError::Cancelled) => Err("cancelled".into()),
                Err(CallError::Timeout) => {
                    let why = format!(
                        "resource_type_control of {type_name:?} did not return within {timeout:?} (deadlock_timeout)"
                    );
                    host.kill_as(HostEnd::Hang, why.clone(), 0);
                    Err(why)
                }
            }
        })
    }
}

/// The hosts of one library: the shared one, started when first needed.
/// Resources with `separate_monitor` get hosts of their own.
struct Pool {
    exe: PathBuf,
    reaper: Arc<Reaper>,
    library: PathBuf,
    shared: Mutex<Option<Arc<Host>>>,
}

impl Pool {
    fn host(&self, separate: bool) -> Result<Arc<Host>, ResourceError> {
        if separate {
            return self.spawn(true);
        }
        let mut shared = lock(&self.shared);
        if let Some(h) = shared.as_ref().filter(|h| !h.is_gone()) {
            return Ok(h.clone());
        }
        let h = self.spawn(false)?;
        *shared = Some(h.clone());
        Ok(h)
    }

    fn spawn(&self, separate: bool) -> Result<Arc<Host>, ResourceError> {
        let failed = |e: std::io::Error| {
            ResourceError(format!(
                "cannot start a host for {}: {e}",
                self.library.display()
            ))
        };
        let (stream, theirs) = UnixStream::pair().map_err(failed)?;
        let mut spec = SpawnSpec::new(
            self.exe.to_string_lossy(),
            [
                "host".to_string(),
                "--library".to_string(),
                self.library.to_string_lossy().into_owned(),
            ],
        );
        spec.stdin = Some(Arc::new(theirs.into()));
        spec.stderr = Output::Inherit;
        // A process group of its own: what the plugin starts dies with it.
        spec.new_session = true;
        let task = self.reaper.spawn(&spec).map_err(failed)?;
        drop(spec);
        let reader = stream.try_clone().map_err(failed)?;
        let file = self.library.file_name().map_or_else(
            || self.library.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        let label = format!(
            "{}host {} of {file} (pid {})",
            if separate { "own " } else { "" },
            NEXT_HOST.fetch_add(1, Ordering::Relaxed),
            task.pid().unwrap_or(0)
        );
        let host = Arc::new(Host {
            label,
            task,
            writer: Mutex::new(stream),
            calls: Mutex::new(Calls::default()),
            ended: Condvar::new(),
            members: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
        });
        let h = host.clone();
        std::thread::Builder::new()
            .name("plugin-host".into())
            .spawn(move || read_loop(h, reader))
            .map_err(failed)?;
        resmon_metrics::global().host_started();
        tracing::info!("started {}", host.label);
        Ok(host)
    }
}

#[derive(Default)]
struct Calls {
    /// Requests waiting for their reply: call number -> (resource, reply slot).
    waiting: HashMap<u64, (u64, mpsc::SyncSender<Result<Reply, String>>)>,
    /// Resources with a call in flight on their lane.
    busy: HashSet<u64>,
    /// Why the host is gone, once it is.
    gone: Option<String>,
    /// Why the monitor killed it, and for which resource.
    killed: Option<(String, u64)>,
    /// How it ends, when the monitor ended it: a call hung in it, or its
    /// last resource was closed.
    end: Option<HostEnd>,
}

impl Calls {
    /// Why the host is gone or being killed, once it is.
    fn ended(&self) -> Option<String> {
        self.gone
            .clone()
            .or_else(|| self.killed.clone().map(|k| k.0))
    }
}

/// One host process.
struct Host {
    label: String,
    task: TaskHandle,
    writer: Mutex<UnixStream>,
    calls: Mutex<Calls>,
    /// Signalled once `calls.gone` is set.
    ended: Condvar,
    members: Mutex<HashMap<u64, Weak<Shared>>>,
    next_call: AtomicU64,
}

/// The monitor's end of a resource's lane in its host.
struct Lane {
    sock: UnixStream,
    frames: FrameReader,
}

/// Where a resource is open: its host, its number there, and its lane.
#[derive(Clone)]
struct Remote {
    host: Arc<Host>,
    rid: u64,
    lane: Arc<Mutex<Lane>>,
}

enum CallError {
    Timeout,
    Gone(String),
    /// The monitor cancelled the health check (see [`Host::lane_call`]).
    Cancelled,
}

/// How a health check on a lane is cancelled.
struct Cancel<'a> {
    entry: &'static str,
    /// Readable once `cancelled` may have become true.
    wake: std::os::fd::BorrowedFd<'a>,
    cancelled: &'a dyn Fn() -> bool,
    /// How long a cancelled check may take to return.
    grace: Duration,
    /// Called before the host is killed for a check that did not return.
    on_hung: &'a dyn Fn(&Host),
}

impl Host {
    fn pid(&self) -> Option<u32> {
        self.task.pid()
    }

    fn is_gone(&self) -> bool {
        lock(&self.calls).ended().is_some()
    }

    /// Why it is gone, once its reader has seen it go (waited for briefly:
    /// a lane closes as the host dies, a moment before its socket does).
    fn gone_reason(&self) -> String {
        let c = lock(&self.calls);
        let (c, _) = self
            .ended
            .wait_timeout_while(c, Duration::from_secs(5), |c| c.gone.is_none())
            .unwrap_or_else(|e| e.into_inner());
        c.gone
            .clone()
            .unwrap_or_else(|| "the host closed the resource's lane".into())
    }

    /// A call on a resource's lane: `op` written to the lane (an `open` to
    /// the host's socket with the lane's other end), the reply read from
    /// the lane, both by the calling thread.
    ///
    /// With `cancel` (a health check): once it is raised, the host is told
    /// (`cancel_check`, which the plugin sees through `should_terminate`)
    /// and the check is given `grace` to return; one that does not gets the
    /// host killed, so that nothing queued behind it on the lane waits.
    fn lane_call(
        &self,
        lane: &Mutex<Lane>,
        rid: u64,
        op: Op,
        open_with: Option<OwnedFd>,
        timeout: Duration,
        cancel: Option<Cancel<'_>>,
    ) -> Result<Reply, CallError> {
        let now = Instant::now();
        // A timeout too large for the clock means "no deadline this side of it".
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(10 * 365 * 24 * 3600));
        let mut lane = lock(lane);
        {
            let mut c = lock(&self.calls);
            if let Some(why) = c.ended() {
                return Err(CallError::Gone(why));
            }
            c.busy.insert(rid);
        }
        let mut r = self.lane_exchange(&mut lane, rid, op, open_with, deadline, cancel.as_ref());
        if let (Err(CallError::Cancelled), Some(c)) = (&r, &cancel) {
            r = self.cancel_on_lane(&mut lane, rid, c);
        }
        lock(&self.calls).busy.remove(&rid);
        r
    }

    /// The check on `lane` was cancelled: tell the host, and wait `grace`
    /// for the check's own (ignored) reply, which keeps the lane in step;
    /// kill the host if none comes.
    fn cancel_on_lane(
        &self,
        lane: &mut Lane,
        rid: u64,
        c: &Cancel<'_>,
    ) -> Result<Reply, CallError> {
        let deadline = Instant::now()
            .checked_add(c.grace)
            .unwrap_or_else(Instant::now);
        let _ = self.call(rid, Op::CancelCheck, c.grace);
        match lane.frames.next::<Reply>(&lane.sock, deadline) {
            Ok(Some(_)) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                (c.on_hung)(self);
                self.kill_as(
                    HostEnd::Hang,
                    format!(
                        "{} did not return within {:?} of being cancelled",
                        c.entry, c.grace
                    ),
                    rid,
                );
            }
            // The host went: the reader reports it.
            Ok(None) | Err(_) => {}
        }
        Err(CallError::Cancelled)
    }

    fn lane_exchange(
        &self,
        lane: &mut Lane,
        rid: u64,
        op: Op,
        open_with: Option<OwnedFd>,
        deadline: Instant,
        cancel: Option<&Cancel<'_>>,
    ) -> Result<Reply, CallError> {
        let sent = match open_with {
            Some(theirs) => crate::protocol::encode(&Request { call: 0, rid, op })
                .and_then(|frame| send_with_fd(&lock(&self.writer), &frame, theirs.as_fd())),
            None => write_frame(&mut &lane.sock, &op),
        };
        if let Err(e) = sent {
            return Err(CallError::Gone(match e.kind() {
                io::ErrorKind::InvalidInput => format!("cannot encode the request: {e}"),
                _ => self.gone_reason(),
            }));
        }
        let wake = cancel.map(|c| (c.wake, c.cancelled));
        match lane.frames.next_unless::<Reply>(&lane.sock, wake, deadline) {
            Ok(Some(r)) => Ok(r),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(CallError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(CallError::Cancelled),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let why = format!("it broke the protocol ({e})");
                self.kill(why.clone(), rid);
                Err(CallError::Gone(why))
            }
            Ok(None) | Err(_) => Err(CallError::Gone(self.gone_reason())),
        }
    }

    /// Sends a request and waits up to `timeout` for its reply.
    fn call(&self, rid: u64, op: Op, timeout: Duration) -> Result<Reply, CallError> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut c = lock(&self.calls);
            if let Some(why) = c.ended() {
                return Err(CallError::Gone(why));
            }
            c.waiting.insert(call, (rid, tx));
        }
        let frame = crate::protocol::encode(&Request { call, rid, op })
            .map_err(|e| CallError::Gone(format!("cannot encode the request: {e}")))?;
        if let Err(e) = lock(&self.writer).write_all(&frame) {
            lock(&self.calls).waiting.remove(&call);
            return Err(CallError::Gone(format!("writing to the host: {e}")));
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(CallError::Gone),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.calls).waiting.remove(&call);
                Err(CallError::Timeout)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(CallError::Gone(
                lock(&self.calls)
                    .gone
                    .clone()
                    .unwrap_or_else(|| "the host went away".into()),
            )),
        }
    }

    /// Kills the host and every process of its group. `rid` is the resource
    /// it is killed for (0: none).
    /// Kills it, saying how its end is to be counted.
    fn kill_as(&self, end: HostEnd, why: String, rid: u64) {
        lock(&self.calls).end.get_or_insert(end);
        self.kill(why, rid);
    }

    fn kill(&self, why: String, rid: u64) {
        {
            let mut c = lock(&self.calls);
            if c.gone.is_none() && c.killed.is_none() {
                c.killed = Some((why, rid));
            }
        }
        let running = self.task.exit_code().is_ok_and(|c| c == STILL_ACTIVE);
        let _ = self.task.terminate(128 + 9);
        if let (true, Some(pid)) = (running, self.pid()) {
            if let Some(pgid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
        }
    }

    fn member(&self, rid: u64) -> Option<Arc<Shared>> {
        lock(&self.members).get(&rid).and_then(Weak::upgrade)
    }

    /// How it ended, once its exit status is known (briefly waited for).
    fn exit_text(&self) -> String {
        let end = Instant::now() + Duration::from_secs(2);
        let code = loop {
            match self.task.exit_code() {
                Ok(c) if c != STILL_ACTIVE => break Some(c),
                Err(_) => break None,
                _ if Instant::now() > end => break None,
                _ => {
                    if let Some(r) = Reaper::running() {
                        r.reap_now();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        match code {
            Some(0) => "it exited".into(),
            Some(c) if c > 128 => format!("it was killed by {}", resmon_task::signal_name(c - 128)),
            Some(c) => format!("it exited with code {c}"),
            None => "it closed its socket".into(),
        }
    }
}

/// Reads what a host sends until it is gone, then tells everyone.
fn read_loop(host: Arc<Host>, stream: UnixStream) {
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    let broken = loop {
        match read_frame::<FromHost>(&mut r, &mut buf) {
            Ok(Some(FromHost::Reply { call, reply })) => {
                if let Some((_, tx)) = lock(&host.calls).waiting.remove(&call) {
                    let _ = tx.send(Ok(reply));
                }
            }
            Ok(Some(FromHost::Status {
                rid,
                state,
                checkpoint,
            })) => {
                if let Some(m) = host.member(rid) {
                    m.on_status(&host, state, checkpoint);
                }
            }
            Ok(Some(FromHost::Log {
                rid,
                level,
                message,
            })) => match host.member(rid) {
                Some(m) => {
                    let level = log_level(level);
                    if let Some(log) = &m.log {
                        let stream = match level {
                            LogLevel::Error | LogLevel::Warn => "stderr",
                            LogLevel::Info | LogLevel::Debug => "stdout",
                        };
                        log.append(stream, &format!("{level:?}: {message}").to_lowercase());
                    }
                    m.notifier.log(level, message)
                }
                None => tracing::info!(host = %host.label, "{message}"),
            },
            Ok(None) => break None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                break Some(format!("it broke the protocol ({e})"))
            }
            // A reset or other read error: it died with data unread.
            Err(_) => break None,
        }
    };
    if let Some(why) = broken {
        host.kill(why, 0);
    }
    let exit = host.exit_text();
    let (waiting, killed, reason, in_calls) = {
        let mut c = lock(&host.calls);
        resmon_metrics::global().host_ended(c.end.unwrap_or(HostEnd::Crash));
        let reason = match &c.killed {
            Some((k, _)) => format!("{k}; the monitor killed its host"),
            None => format!("its host died: {exit}"),
        };
        c.gone = Some(reason.clone());
        host.ended.notify_all();
        let mut suspects: Vec<u64> = c.busy.iter().copied().collect();
        suspects.extend(c.waiting.values().map(|(rid, _)| *rid));
        (
            std::mem::take(&mut c.waiting),
            c.killed.clone(),
            reason,
            suspects,
        )
    };
    tracing::warn!("{} is gone: {reason}", host.label);
    // A crash is blamed on the resources that were in a call or a pending
    // online/offline; a kill on the one it was for.
    let mut suspects: Vec<u64> = match &killed {
        Some((_, rid)) => vec![*rid],
        None => in_calls,
    };
    for (_, tx) in waiting.into_values() {
        let _ = tx.send(Err(reason.clone()));
    }
    let members: Vec<(u64, Arc<Shared>)> = lock(&host.members)
        .drain()
        .filter_map(|(rid, m)| Some((rid, m.upgrade()?)))
        .collect();
    if killed.is_none() {
        suspects.extend(
            members
                .iter()
                .filter(|(_, m)| lock(&m.pending).is_some())
                .map(|(rid, _)| *rid),
        );
    }
    for (rid, m) in members {
        m.host_lost(&host, &reason, suspects.contains(&rid));
    }
}

fn log_level(level: i32) -> LogLevel {
    match level {
        ffi::RESMON_LOG_ERROR => LogLevel::Error,
        ffi::RESMON_LOG_WARN => LogLevel::Warn,
        ffi::RESMON_LOG_DEBUG => LogLevel::Debug,
        _ => LogLevel::Info,
    }
}

/// Runs a control code, growing the output buffer when the plugin asks.
fn control_call(
    mut call: impl FnMut(u32) -> Result<Reply, String>,
) -> Result<Vec<u8>, ControlError> {
    let mut out_len = FIRST_OUT_LEN;
    for _ in 0..4 {
        match call(out_len).map_err(ControlError::Failed)? {
            Reply::Output {
                code: ffi::RESMON_OK,
                data,
                ..
            } => return Ok(data),
            Reply::Output {
                code: ffi::RESMON_INVALID_FUNCTION,
                ..
            } => return Err(ControlError::NotSupported),
            Reply::Output {
                code: ffi::RESMON_MORE_DATA,
                needed,
                ..
            } => {
                if needed > control::MAX_OUTPUT as u64 {
                    return Err(ControlError::Failed(format!(
                        "it needs {needed} bytes of output, more than the {} allowed",
                        control::MAX_OUTPUT
                    )));
                }
                if needed <= out_len as u64 {
                    return Err(ControlError::Failed(format!(
                        "it returned RESMON_MORE_DATA asking for {needed} bytes, no more than the {out_len} it had"
                    )));
                }
                out_len = needed as u32;
            }
            Reply::Output { code, .. } => {
                return Err(ControlError::Failed(format!(
                    "it returned error code {code}"
                )))
            }
            Reply::Failed(e) => return Err(ControlError::Failed(e)),
            other => return Err(ControlError::Failed(format!("the host answered {other:?}"))),
        }
    }
    Err(ControlError::Failed(
        "it kept asking for a larger output buffer".into(),
    ))
}

/// What the monitor keeps of one plugin resource.
struct Shared {
    me: Weak<Shared>,
    name: String,
    type_name: String,
    params: String,
    policy: Policy,
    /// The group's fencing token in cluster mode, passed with `online`.
    fencing: FencingToken,
    notifier: Notifier,
    /// Where its log lines go too (`log = "file"`).
    log: Option<resmon_journal::output::ResourceLog>,
    pool: Arc<Pool>,
    /// Gets a host of its own: configured, or since it hung or crashed one.
    separate: AtomicBool,
    /// The host it is open in, its number and its lane there.
    remote: Mutex<Option<Remote>>,
    /// The pending `online`/`offline` its host's `set_status` reports to.
    pending: Mutex<Option<(u64, CallContext)>>,
    /// Online as far as the plugin told us.
    up: AtomicBool,
    /// The monitor cancelled the health check in flight (an offline,
    /// terminate or shutdown came); lowered when the next `online` or
    /// `offline` starts. Checks begun meanwhile fail at once.
    check_cancelled: AtomicBool,
    /// Wakes a check waiting on the lane once `check_cancelled` is raised
    /// (an eventfd: raising it never blocks).
    check_wake: Option<OwnedFd>,
}

impl Shared {
    /// Where it is open now, opening it in a host first if it is not (at
    /// `open`, and again after its host died).
    fn ensure_open(&self) -> Result<Remote, ResourceError> {
        if let Some(r) = self.current() {
            return Ok(r);
        }
        let host = self.pool.host(self.separate.load(Ordering::Acquire))?;
        let rid = NEXT_RID.fetch_add(1, Ordering::Relaxed);
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| ResourceError(format!("open: no socket for the resource's lane: {e}")))?;
        let remote = Remote {
            host: host.clone(),
            rid,
            lane: Arc::new(Mutex::new(Lane {
                sock: ours,
                frames: FrameReader::default(),
            })),
        };
        lock(&host.members).insert(rid, self.me.clone());
        let op = Op::Open {
            type_name: self.type_name.clone(),
            name: self.name.clone(),
            params: self.params.clone(),
        };
        match self.call_on(
            &remote,
            op,
            Some(theirs.into()),
            self.policy.deadlock_timeout,
        ) {
            Ok(Reply::Done) => {
                *lock(&self.remote) = Some(remote.clone());
                Ok(remote)
            }
            Ok(other) => {
                lock(&host.members).remove(&rid);
                Err(ResourceError(format!("open: the host answered {other:?}")))
            }
            Err(e) => {
                lock(&host.members).remove(&rid);
                Err(e)
            }
        }
    }

    /// The current host, if it is alive (no opening).
    fn current(&self) -> Option<Remote> {
        lock(&self.remote).clone().filter(|r| !r.host.is_gone())
    }

    fn call(&self, op: Op, timeout: Duration) -> Result<Reply, ResourceError> {
        let remote = self.ensure_open()?;
        self.call_on(&remote, op, None, timeout)
    }

    /// One call: `terminate` over the host's socket (it runs beside the
    /// lane), everything else over the lane; `open` brings the lane's
    /// other end.
    fn call_on(
        &self,
        remote: &Remote,
        op: Op,
        open_with: Option<OwnedFd>,
        timeout: Duration,
    ) -> Result<Reply, ResourceError> {
        self.call_on_unless(remote, op, open_with, timeout, None)
    }

    /// [`call_on`](Self::call_on), for a health check the monitor may cancel.
    fn call_on_unless(
        &self,
        remote: &Remote,
        op: Op,
        open_with: Option<OwnedFd>,
        timeout: Duration,
        cancel: Option<Cancel<'_>>,
    ) -> Result<Reply, ResourceError> {
        let entry = op.name();
        let (host, rid) = (&remote.host, remote.rid);
        let limit = if matches!(op, Op::Terminate) {
            "terminate_timeout"
        } else {
            "deadlock_timeout"
        };
        let r = match op {
            Op::Terminate => host.call(rid, op, timeout),
            op => host.lane_call(&remote.lane, rid, op, open_with, timeout, cancel),
        };
        match r {
            Ok(Reply::Failed(e)) => Err(ResourceError(format!("{entry}: {e}"))),
            Ok(r) => Ok(r),
            Err(CallError::Gone(why)) => Err(ResourceError(format!("{entry}: {why}"))),
            Err(CallError::Cancelled) => Err(ResourceError(format!("{entry}: cancelled"))),
            Err(CallError::Timeout) => {
                let why = format!("{entry} did not return within {timeout:?} ({limit})");
                self.make_culprit(host, &why);
                host.kill_as(
                    HostEnd::Hang,
                    format!(
                        "{entry} of {:?} did not return within {timeout:?} ({limit})",
                        self.name
                    ),
                    rid,
                );
                Err(ResourceError(why))
            }
        }
    }

    fn make_culprit(&self, host: &Host, why: &str) {
        if !self.separate.swap(true, Ordering::AcqRel) {
            resmon_metrics::global().culprit();
            self.notifier.log(
                LogLevel::Error,
                format!(
                    "{why}: {} is killed, and {:?} gets a host of its own from now on (separate_monitor)",
                    host.label, self.name
                ),
            );
        } else {
            self.notifier
                .log(LogLevel::Error, format!("{why}: {} is killed", host.label));
        }
    }

    fn on_status(&self, host: &Arc<Host>, state: i32, checkpoint: u32) {
        let mut pending = lock(&self.pending);
        let Some((hid, ctx)) = pending.as_ref() else {
            return;
        };
        if *hid != Arc::as_ptr(host) as u64 {
            return;
        }
        match state {
            ffi::RESMON_STATE_ONLINE_PENDING | ffi::RESMON_STATE_OFFLINE_PENDING => {
                ctx.checkpoint(checkpoint);
            }
            ffi::RESMON_STATE_ONLINE | ffi::RESMON_STATE_OFFLINE => {
                self.up
                    .store(state == ffi::RESMON_STATE_ONLINE, Ordering::Release);
                ctx.complete(Ok(()));
                *pending = None;
            }
            ffi::RESMON_STATE_FAILED => {
                ctx.complete(Err(ResourceError(
                    "the plugin reported failure (its log says why)".into(),
                )));
                *pending = None;
            }
            other => {
                ctx.complete(Err(ResourceError(format!(
                    "set_status with an unknown state {other}"
                ))));
                *pending = None;
            }
        }
    }

    /// Its host is gone: whatever ran there is lost.
    fn host_lost(&self, host: &Arc<Host>, reason: &str, suspect: bool) {
        {
            let mut remote = lock(&self.remote);
            if remote.as_ref().is_some_and(|r| Arc::ptr_eq(&r.host, host)) {
                *remote = None;
            }
        }
        if suspect && !self.separate.swap(true, Ordering::AcqRel) {
            self.notifier.log(
                LogLevel::Error,
                format!(
                    "{} died while running {:?}: it gets a host of its own from now on (separate_monitor)",
                    host.label, self.name
                ),
            );
        }
        let pending = lock(&self.pending)
            .take_if(|(hid, _)| *hid == Arc::as_ptr(host) as u64)
            .map(|(_, ctx)| ctx);
        if let Some(ctx) = pending {
            ctx.complete(Err(ResourceError(reason.to_string())));
        } else if self.up.load(Ordering::Acquire) {
            self.notifier
                .log(LogLevel::Warn, format!("{} is gone: {reason}", host.label));
            self.notifier.failed(reason.to_string());
        }
    }

    /// `online` or `offline`: done at once, or pending with `set_status`.
    fn transition(&self, op: Op, ctx: &CallContext) -> Result<Completion, ResourceError> {
        let online = matches!(op, Op::Online { .. });
        // A new start or stop: health checks are wanted again once it is up.
        self.check_cancelled.store(false, Ordering::Release);
        let remote = self.ensure_open()?;
        let hid = Arc::as_ptr(&remote.host) as u64;
        *lock(&self.pending) = Some((hid, ctx.clone()));
        let entry = op.name();
        let r = self.call_on(&remote, op, None, self.policy.deadlock_timeout);
        let mut pending = lock(&self.pending);
        let ours = pending.as_ref().is_some_and(|(h, _)| *h == hid);
        match r {
            Ok(Reply::Code(ffi::RESMON_PENDING)) => Ok(Completion::Pending),
            other => {
                if ours {
                    *pending = None;
                }
                match other {
                    Ok(Reply::Code(ffi::RESMON_OK)) => {
                        self.up.store(online, Ordering::Release);
                        Ok(Completion::Done)
                    }
                    Ok(Reply::Code(code)) => Err(ResourceError(format!(
                        "{entry} returned {code}, an error (the plugin's log may say more)"
                    ))),
                    Ok(other) => Err(ResourceError(format!(
                        "{entry}: the host answered {other:?}"
                    ))),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn check(&self, op: Op) -> bool {
        let entry = op.name();
        let cancelled = || self.check_cancelled.load(Ordering::Acquire);
        if cancelled() {
            return false;
        }
        let grace = self.policy.terminate_timeout;
        let on_hung = |host: &Host| {
            let why = format!("{entry} did not return within {grace:?} of being cancelled");
            self.make_culprit(host, &why);
        };
        let r = self.ensure_open().and_then(|remote| {
            let cancel = self.check_wake.as_ref().map(|wake| Cancel {
                entry,
                wake: wake.as_fd(),
                cancelled: &cancelled,
                grace,
                on_hung: &on_hung,
            });
            self.call_on_unless(&remote, op, None, self.policy.deadlock_timeout, cancel)
        });
        if cancelled() {
            // Whatever it answered, nobody waits for it any more.
            return false;
        }
        match r {
            Ok(Reply::Code(c)) => c != 0,
            Ok(other) => {
                self.notifier.log(
                    LogLevel::Error,
                    format!("{entry}: the host answered {other:?}"),
                );
                false
            }
            Err(e) => {
                self.notifier.log(LogLevel::Warn, e.0);
                false
            }
        }
    }
}

/// A plugin resource, as the monitor drives it.
struct PluginResource(Arc<Shared>);

impl Resource for PluginResource {
    fn online(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
        let fencing_token = self.0.fencing.get().unwrap_or(0);
        self.0.transition(Op::Online { fencing_token }, ctx)
    }

    fn offline(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
        if self.0.current().is_none() {
            // Its host is gone, and everything it ran with it.
            self.0.up.store(false, Ordering::Release);
            return Ok(Completion::Done);
        }
        self.0.transition(Op::Offline, ctx)
    }

    fn terminate(&self, _exit_code: i32) {
        let s = &self.0;
        s.up.store(false, Ordering::Release);
        if let Some(remote) = s.current() {
            let _ = s.call_on(&remote, Op::Terminate, None, s.policy.terminate_timeout);
        }
    }

    fn cancel_check(&self) {
        let s = &self.0;
        s.check_cancelled.store(true, Ordering::Release);
        if let Some(fd) = &s.check_wake {
            // Non-blocking: an eventfd's counter only fails when full, and a
            // full one wakes the check as well.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    fn looks_alive(&self) -> bool {
        self.0.check(Op::LooksAlive)
    }

    fn is_alive(&self) -> bool {
        self.0.check(Op::IsAlive)
    }

    fn resource_control(&self, code: u32, input: &[u8]) -> Result<Vec<u8>, ControlError> {
        let s = &self.0;
        control_call(|out_len| {
            s.call(
                Op::Control {
                    code,
                    input: input.to_vec(),
                    out_len,
                },
                s.policy.deadlock_timeout,
            )
            .map_err(|e| e.0)
        })
    }

    fn close(&self) {
        let s = &self.0;
        let Some(remote) = lock(&s.remote).take() else {
            return;
        };
        let (host, rid) = (remote.host.clone(), remote.rid);
        if !host.is_gone() {
            let _ = s.call_on(&remote, Op::Close, None, s.policy.deadlock_timeout);
        }
        let empty = {
            let mut m = lock(&host.members);
            m.remove(&rid);
            m.is_empty()
        };
        // An own host has no more use.
        let shared = lock(&s.pool.shared)
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h, &host));
        if empty && !shared {
            host.kill_as(HostEnd::Closed, "its resource was closed".into(), 0);
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.0
            .current()
            .and_then(|r| r.host.pid())
            .into_iter()
            .collect()
    }

    fn detail(&self) -> Option<String> {
        self.0.current().map(|r| format!("in {}", r.host.label))
    }
}
