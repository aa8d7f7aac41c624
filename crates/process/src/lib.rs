//! The `process` resource type: the Generic Application of the Windows model.
//!
//! * `online` spawns the command in the resource's scope (its own session and
//!   process group, and its cgroup when the monitor has one for it) and, when
//!   a `startup` probe is given, waits until that probe passes (within its
//!   `deadline`).
//! * A `readiness` probe is checked all along while it is online; each
//!   answer goes to the monitor, which reports ready and not ready and
//!   starts the resource's dependents only once it is ready.
//! * `looks_alive` is "the main process lives". It is answered from memory:
//!   the main process's pidfd is watched, and its death is reported to the
//!   monitor at once through the [`Notifier`], not at the next poll.
//! * `is_alive` runs the optional `probe` (`exec`, `tcp` or `http`).
//! * `offline` runs the `stop_command` hook when there is one (as the
//!   service runs, in its scope) and waits for it, then sends `stop_signal`
//!   to every process of the resource and waits until none is left; the
//!   monitor terminates it after `pending_timeout`, a hung hook with it.
//! * `reload` (`resmon reload-resource`) runs `reload_command` as the
//!   service runs, killed past the limit the monitor gives (the resource's
//!   `pending_timeout`), or without one sends `reload_signal` to the main
//!   process; `signal` sends an operator's signal to the main process or to
//!   every process of the resource. Neither changes a pid.
//! * `terminate` kills the whole tree at once: the cgroup (`cgroup.kill`), or
//!   where there is none every process carrying the resource's marker and all
//!   their descendants, so children that double-forked or called `setsid` go
//!   too.

mod notify;
mod params;
mod probe;
pub mod relay;

pub use params::{command_of, find_program, resolve_user, Params, Probe, ProbeKind, Stream};

use resmon_contract::{
    control, CallContext, Completion, ControlError, LogLevel, LogMode, LogSettings, Notifier,
    OpenContext, Resource, ResourceError, ResourceType,
};
use resmon_task::lock;
use resmon_task::{CheckAbort, Container, Output, Reaper, SpawnSpec, TaskHandle};
use rustix::process::Signal;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `process` resource type.
pub struct ProcessType {
    reaper: Arc<Reaper>,
    rt: tokio::runtime::Handle,
    /// The program that runs a log relay, and the arguments before the
    /// relay's own.
    relay: (std::path::PathBuf, Vec<String>),
}

impl ProcessType {
    /// `rt` runs the watchers of main processes; entry points themselves run
    /// on the caller's thread. `relay` is the program (and its first
    /// arguments) that runs a log relay (see [`relay`]).
    pub fn new(
        reaper: Arc<Reaper>,
        rt: tokio::runtime::Handle,
        relay: (std::path::PathBuf, Vec<String>),
    ) -> Self {
        ProcessType { reaper, rt, relay }
    }
}

impl ResourceType for ProcessType {
    fn name(&self) -> &str {
        "process"
    }

    fn validate(&self, _type_name: &str, params: &serde_json::Value) -> Vec<String> {
        Params::parse(params).err().unwrap_or_default()
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, ResourceError> {
        let params = Params::parse(&ctx.params).map_err(|e| ResourceError::new(e.join("; ")))?;
        let container = Container::from_scope(&ctx.scope);
        let notify = if params.notify {
            Some(open_notify(&ctx.scope.marker.1, &container, &ctx.notifier)?)
        } else {
            None
        };
        Ok(Box::new(ProcessResource {
            shared: Arc::new(Shared {
                name: ctx.name,
                notifier: ctx.notifier,
                stopping: AtomicBool::new(false),
                terminated: AtomicBool::new(false),
                spawning: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                last_exit: AtomicI64::new(NO_EXIT),
            }),
            params,
            raw_params: ctx.params.clone(),
            log: ctx.log.clone(),
            relay_exe: self.relay.clone(),
            relay: Mutex::new(None),
            dropped: Mutex::new(Dropped::default()),
            scope: ctx.scope.clone(),
            container,
            reaper: self.reaper.clone(),
            rt: self.rt.clone(),
            main: Mutex::new(None),
            checks: CheckAbort::default(),
            notify,
            watchdog_missed: AtomicBool::new(false),
        }))
    }

    fn looks_alive_is_cheap(&self) -> bool {
        true
    }

    fn resource_type_control(
        &self,
        _type_name: &str,
        code: u32,
        _input: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        match code {
            control::GET_PRIVATE_PROPERTY_NAMES => Ok(serde_json::to_vec(&serde_json::json!([
                "command",
                "environment",
                "working_directory",
                "user",
                "stop_signal",
                "stop_command",
                "reload_signal",
                "reload_command",
                "probe",
                "readiness",
                "startup",
                "stdout",
                "stderr"
            ]))
            .expect("static JSON")),
            _ => Err(ControlError::NotSupported),
        }
    }
}

/// How a hook (`stop_command`, `reload_command`) did not succeed.
enum HookError {
    /// A terminate came: the hook dies with the rest of the resource.
    Terminated,
    /// It could not start, failed, or ran past its limit.
    Failed(String),
}

/// How a finished process ended: its exit status, or the signal that
/// killed it.
fn ended(task: &TaskHandle) -> String {
    task.ended().map_or_else(
        || format!("exited with code {}", task.exit_code().unwrap_or(-1)),
        |e| e.to_string(),
    )
}

/// The notify socket of a resource: bound under its marker. A reopen can
/// find the name still held by the closing socket's reader for a moment.
fn open_notify(
    marker: &str,
    container: &Container,
    notifier: &resmon_contract::Notifier,
) -> Result<notify::NotifySocket, ResourceError> {
    let mut tries = 0;
    loop {
        match notify::NotifySocket::open(marker, container.clone(), notifier.clone()) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(ResourceError::new(format!("making its notify socket: {e}"))),
        }
    }
}

/// [`Shared::last_exit`] before a main process ended.
const NO_EXIT: i64 = i64::MIN;

struct Shared {
    name: String,
    notifier: Notifier,
    /// Set by offline/terminate: the main process's exit is then expected.
    stopping: AtomicBool,
    /// Set by terminate, cleared by online and reattach: a hook
    /// (`stop_command`, `reload_command`) starts nothing once it is set.
    terminated: AtomicBool,
    /// Set while the main process is being spawned: `terminate` then kills
    /// the container even if it looks empty.
    spawning: AtomicBool,
    /// Counts starts, so a watcher of an old main process stays quiet.
    generation: AtomicU64,
    /// The exit code of the last main process that ended; [`NO_EXIT`]
    /// before one did. An atomic: `/metrics` reads it of every resource.
    last_exit: AtomicI64,
}

struct ProcessResource {
    shared: Arc<Shared>,
    params: Params,
    /// The params as configured, for `get_private_properties`.
    raw_params: serde_json::Value,
    /// Where output goes when a stream is not set otherwise.
    log: LogSettings,
    /// The program that runs the log relay, and its first arguments.
    relay_exe: (std::path::PathBuf, Vec<String>),
    /// The running log relay and the write ends of its pipes.
    relay: Mutex<Option<Relay>>,
    /// The relay's count of dropped lines: its file (opened at the first
    /// read), and the count as last read, and when.
    dropped: Mutex<Dropped>,
    scope: resmon_contract::Scope,
    container: Container,
    reaper: Arc<Reaper>,
    rt: tokio::runtime::Handle,
    /// Shared with `terminate`, which may run concurrently with the rest.
    main: Mutex<Option<TaskHandle>>,
    /// Cuts an `is_alive` probe short when a stop comes.
    checks: CheckAbort,
    /// With `notify = true`: the service's notify socket.
    notify: Option<notify::NotifySocket>,
    /// A missed watchdog was reported (once per start).
    watchdog_missed: AtomicBool,
}

fn output(s: &Stream) -> Output {
    match s {
        Stream::Inherit | Stream::Log => Output::Inherit,
        Stream::Null => Output::Null,
        Stream::File(p) => Output::File(p.clone()),
    }
}

/// A connection to the systemd journal's stream socket that takes what is
/// written to it as log lines of `identifier` at `priority`.
fn journal_stream(identifier: &str, priority: u8) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect("/run/systemd/journal/stdout")?;
    // Identifier, unit, priority, level prefix, and no forwarding.
    write!(s, "{identifier}\n\n{priority}\n0\n0\n0\n0\n")?;
    s.shutdown(std::net::Shutdown::Read)?;
    Ok(s.into())
}

/// How long a read of the relay's dropped-line count stands.
const DROPPED_FRESH: Duration = Duration::from_secs(1);

/// See [`ProcessResource::dropped`].
#[derive(Default)]
struct Dropped {
    fd: Option<std::os::fd::OwnedFd>,
    count: u64,
    at: Option<std::time::Instant>,
}

/// How long `close` waits for the log relay to drain and exit.
const RELAY_DRAIN: Duration = Duration::from_secs(2);

/// A resource's log relay, and the write ends of the pipes it drains.
struct Relay {
    task: TaskHandle,
    out: Arc<std::os::fd::OwnedFd>,
    err: Arc<std::os::fd::OwnedFd>,
}

impl ProcessResource {
    /// Probes run as the service's user, in its scope; a health check's
    /// can be cut short.
    fn probe_env(&self, health_check: bool) -> probe::ProbeEnv<'_> {
        probe::ProbeEnv {
            user: self.params.user,
            scope: &self.scope,
            reaper: &self.reaper,
            rt: &self.rt,
            abort: health_check.then_some(&self.checks),
        }
    }

    fn main(&self) -> Option<TaskHandle> {
        lock(&self.main).clone()
    }

    /// Where the service's stdout and stderr go: a stream the params leave
    /// to `log` follows it; with `log = "file"` such streams go through
    /// pipes to a relay started here, in the resource's scope.
    fn outputs(&self) -> Result<(Output, Output), ResourceError> {
        let p = &self.params;
        let mut mode = self.log.mode;
        if mode == LogMode::Journal {
            // Each stream a connection of the journal's own, as systemd
            // gives a service; without a journal, captured as with "file".
            let streams = [(&p.stdout, 6), (&p.stderr, 3)].map(|(s, priority)| {
                if *s == Stream::Log {
                    journal_stream(&self.shared.name, priority).map(|fd| Output::Fd(Arc::new(fd)))
                } else {
                    Ok(output(s))
                }
            });
            match streams {
                [Ok(out), Ok(err)] => return Ok((out, err)),
                [Err(e), _] | [_, Err(e)] => {
                    self.shared.notifier.log(
                        LogLevel::Warn,
                        format!("log = \"journal\": the systemd journal cannot be reached ({e}); its output goes to its log file instead"),
                    );
                    mode = LogMode::File;
                }
            }
        }
        let captured = |s: &Stream| *s == Stream::Log && mode == LogMode::File;
        if !captured(&p.stdout) && !captured(&p.stderr) {
            let by_log = |s: &Stream| match (s, mode) {
                (Stream::Log, LogMode::Null) => Output::Null,
                (Stream::Log, _) => Output::Inherit,
                (s, _) => output(s),
            };
            return Ok((by_log(&p.stdout), by_log(&p.stderr)));
        }
        let (out, err) = self.relay()?;
        let pick = |s: &Stream, pipe: Arc<std::os::fd::OwnedFd>| {
            if captured(s) {
                Output::Fd(pipe)
            } else {
                output(s)
            }
        };
        Ok((pick(&p.stdout, out), pick(&p.stderr, err)))
    }

    /// The write ends of the pipes the resource's log relay drains: the
    /// running relay's, or a new relay's. The relay runs beside the
    /// resource, not in its scope: it is not stopped with the service, and
    /// a restart reuses it (no process to start, none to wait for). Its
    /// pipes stay open here until `close`, and in the service while it
    /// runs; once both are gone it has drained everything and exits.
    fn relay(
        &self,
    ) -> Result<(Arc<std::os::fd::OwnedFd>, Arc<std::os::fd::OwnedFd>), ResourceError> {
        let mut relay = lock(&self.relay);
        if let Some(r) = relay.as_ref().filter(|r| !r.task.is_signaled()) {
            return Ok((r.out.clone(), r.err.clone()));
        }
        let failed = |e: std::io::Error| {
            ResourceError::new(format!("capturing its output into its log: {e}"))
        };
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| failed(e.into()))
        };
        let ((out_read, out_write), (err_read, err_write)) = (pipe()?, pipe()?);
        let args = relay::Args {
            dir: self.log.dir.clone(),
            name: self.shared.name.clone(),
            options: resmon_journal::Options {
                max_size: self.log.max_size,
                keep: self.log.keep,
            },
            max_line: self.log.max_line,
        };
        let spec = SpawnSpec {
            program: self.relay_exe.0.to_string_lossy().into_owned(),
            args: self
                .relay_exe
                .1
                .iter()
                .cloned()
                .chain(args.to_argv())
                .collect(),
            new_session: true,
            stdin: Some(Arc::new(out_read)),
            stdout: Output::Fd(Arc::new(err_read)),
            stderr: Output::Inherit,
            ..Default::default()
        };
        let task = self
            .reaper
            .spawn(&spec)
            .map_err(|e| ResourceError::new(format!("starting its log relay: {e}")))?;
        let r = Relay {
            task,
            out: Arc::new(out_write),
            err: Arc::new(err_write),
        };
        let pipes = (r.out.clone(), r.err.clone());
        *relay = Some(r);
        Ok(pipes)
    }

    /// A process of the service: `argv` as its user, with its environment,
    /// working directory and output, in its own session and the
    /// resource's scope.
    fn service_spec(&self, argv: &[String]) -> Result<SpawnSpec, ResourceError> {
        let p = &self.params;
        let (stdout, stderr) = self.outputs()?;
        let mut env = p.environment.clone();
        if let Some(n) = &self.notify {
            env.push(("NOTIFY_SOCKET".into(), n.address.clone()));
            if let Some(w) = p.watchdog_interval {
                env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
            }
        }
        let mut spec = SpawnSpec {
            program: argv[0].clone(),
            args: argv[1..].to_vec(),
            env,
            cwd: p.working_directory.clone(),
            user: p.user,
            new_session: true,
            stdout,
            stderr,
            ..Default::default()
        };
        spec.set_scope(&self.scope);
        Ok(spec)
    }

    /// Spawns `spec` unless `halted` is set. With `terminate`, a handshake
    /// on two flags (both SeqCst): either this sees `halted` (which
    /// `terminate` sets first) and starts nothing, or `terminate` sees
    /// `spawning` and kills the container, catching the new process.
    fn spawn_scoped(
        &self,
        spec: &SpawnSpec,
        halted: &AtomicBool,
    ) -> Result<TaskHandle, ResourceError> {
        self.shared.spawning.store(true, Ordering::SeqCst);
        let spawned = if halted.load(Ordering::SeqCst) {
            Err(ResourceError::new("terminated while starting"))
        } else {
            self.reaper
                .spawn(spec)
                .map_err(|e| ResourceError::new(format!("starting {:?}: {e}", spec.program)))
        };
        self.shared.spawning.store(false, Ordering::SeqCst);
        spawned
    }

    fn spawn_main(&self) -> Result<TaskHandle, ResourceError> {
        let spec = self.service_spec(&self.params.argv)?;
        self.spawn_scoped(&spec, &self.shared.stopping)
    }

    /// Runs a hook (`key` names it) as the service runs (see
    /// [`service_spec`](Self::service_spec)) and waits until it exits,
    /// `limit` passes (it is then killed), or `give_up` turns true (a
    /// terminate came, which kills it with the rest of the resource).
    fn run_hook(
        &self,
        key: &str,
        argv: &[String],
        limit: Option<Duration>,
        give_up: impl Fn() -> bool,
    ) -> Result<(), HookError> {
        let failed = |e: ResourceError| HookError::Failed(format!("{key}: {e}"));
        let task = self.spawn_scoped(
            &self.service_spec(argv).map_err(failed)?,
            &self.shared.terminated,
        );
        let task = match task {
            Err(_) if self.shared.terminated.load(Ordering::SeqCst) => {
                return Err(HookError::Terminated)
            }
            t => t.map_err(failed)?,
        };
        let exited = async {
            match limit {
                Some(limit) => tokio::time::timeout(limit, task.wait()).await.ok(),
                None => Some(task.wait().await),
            }
        };
        match self.wait_unless(exited, give_up) {
            None => Err(HookError::Terminated),
            Some(Some(Ok(0))) => Ok(()),
            Some(Some(Ok(_))) => Err(HookError::Failed(format!("{key} {}", ended(&task)))),
            Some(Some(Err(e))) => Err(HookError::Failed(format!("{key}: {e}"))),
            Some(None) => {
                let _ = task.terminate(1);
                Err(HookError::Failed(format!(
                    "{key} did not finish within {:?}; it was killed",
                    limit.unwrap_or_default()
                )))
            }
        }
    }

    /// Waits for `done` on the resource's runtime, looking at `give_up`
    /// every 100 ms; `None` once that says to stop waiting.
    fn wait_unless<T>(
        &self,
        done: impl std::future::Future<Output = T>,
        give_up: impl Fn() -> bool,
    ) -> Option<T> {
        self.rt.block_on(async {
            tokio::pin!(done);
            loop {
                if let Ok(out) = tokio::time::timeout(Duration::from_millis(100), &mut done).await {
                    return Some(out);
                }
                if give_up() {
                    return None;
                }
            }
        })
    }

    /// The main process while it runs, for an operator's request.
    fn running_main(&self) -> Result<TaskHandle, ControlError> {
        self.main()
            .filter(|m| !m.is_signaled())
            .ok_or_else(|| ControlError::Failed("its main process is not running".into()))
    }

    /// Sends `sig` to the main process, through its pidfd.
    fn signal_main(&self, main: &TaskHandle, sig: Signal) -> Result<String, ControlError> {
        let name = resmon_task::signal_name(sig.as_raw());
        let pid = main.pid().unwrap_or(0);
        main.signal(sig).map_err(|e| {
            ControlError::Failed(format!("sending {name} to main process {pid}: {e}"))
        })?;
        Ok(format!("sent {name} to main process {pid}"))
    }

    /// Tells the event feed of processes found outside the resource's
    /// cgroup: a service tried to escape its stop (they are stopped anyway).
    fn report_escaped(&self) {
        for pid in self.container.take_escaped() {
            self.shared.notifier.log(
                LogLevel::Warn,
                format!(
                    "process {pid} left the resource's cgroup; it is stopped with the resource"
                ),
            );
        }
    }

    /// Reports the main process's exit to the monitor as soon as its pidfd says so.
    fn watch(&self, task: &TaskHandle) {
        let shared = self.shared.clone();
        let generation = shared.generation.load(Ordering::Acquire);
        let task = task.clone();
        let heard = self.notify.as_ref().map(notify::NotifySocket::heard);
        self.rt.spawn(async move {
            let code = task.wait().await;
            if let Ok(c) = code {
                shared.last_exit.store(i64::from(c), Ordering::Release);
            }
            if shared.stopping.load(Ordering::Acquire)
                || shared.generation.load(Ordering::Acquire) != generation
            {
                return;
            }
            // It handed over to another main process (MAINPID=): the next
            // look takes that one.
            let handed_over =
                heard.is_some_and(|h| lock(&h.0).main_pid.is_some_and(|p| Some(p) != task.pid()));
            if handed_over {
                return;
            }
            let pid = task.pid().unwrap_or(0);
            let how = match (code, task.ended()) {
                (Ok(_), Some(ended)) => ended.to_string(),
                (Ok(c), None) => format!("exited with code {c}"),
                (Err(e), _) => format!("could not be waited for: {e}"),
            };
            shared.notifier.failed(format!("main process {pid} {how}"));
        });
    }

    /// `MAINPID=`: the main process is now that one, if it is a process
    /// of this resource (its cgroup or marker say so); else it is said and
    /// ignored.
    fn take_main_pid(&self) {
        let Some(n) = &self.notify else {
            return;
        };
        let Some(pid) = n.with(|h| h.main_pid.take()) else {
            return;
        };
        if self.main().and_then(|m| m.pid()) == Some(pid) {
            return;
        }
        let log = |level, text: String| self.shared.notifier.log(level, text);
        if !self.container.holds(pid) {
            return log(
                LogLevel::Warn,
                format!("MAINPID={pid} ignored: not a process of this resource"),
            );
        }
        let adopted = resmon_task::process_start_time(pid)
            .ok_or_else(|| "it is gone".to_string())
            .and_then(|st| self.reaper.adopt(pid, st).map_err(|e| e.to_string()));
        match adopted {
            Ok(task) => {
                // The old main process's end is no failure now.
                self.shared.generation.fetch_add(1, Ordering::AcqRel);
                *lock(&self.main) = Some(task.clone());
                self.watch(&task);
                self.watch_readiness();
                log(
                    LogLevel::Info,
                    format!("the main process is now {pid} (MAINPID=)"),
                );
            }
            Err(e) => log(LogLevel::Warn, format!("MAINPID={pid} ignored: {e}")),
        }
    }

    fn main_alive(&self) -> bool {
        lock(&self.main).as_ref().is_some_and(|m| !m.is_signaled())
    }

    /// With a watchdog (`watchdog_interval`, or the service's own
    /// `WATCHDOG_USEC=`): whether the last `WATCHDOG=1` (or the start, before
    /// the first) is recent enough. A miss is reported once, as the
    /// failure's reason.
    fn watchdog_ok(&self) -> bool {
        let Some(n) = &self.notify else {
            return true;
        };
        let missed = n.with(|h| {
            let every = h.watchdog.or(self.params.watchdog_interval)?;
            let since = h.pinged.or(h.ready_at)?;
            (since.elapsed() > every).then_some(every)
        });
        let Some(every) = missed else {
            return true;
        };
        if !self.watchdog_missed.swap(true, Ordering::AcqRel) {
            self.shared.notifier.failed(format!(
                "it missed its watchdog: no WATCHDOG=1 within {}",
                humantime::format_duration(every)
            ));
        }
        false
    }

    /// `notify = true`: `online` completes at the service's `READY=1`;
    /// each `EXTEND_TIMEOUT_USEC=` is progress; the main process ending or
    /// `ERRNO=` first fails it.
    fn wait_notified_ready(
        &self,
        n: &notify::NotifySocket,
        ctx: &CallContext,
    ) -> Result<(), ResourceError> {
        let mut extended = 0;
        loop {
            if ctx.should_terminate() {
                return Err(ResourceError::new("cancelled by terminate"));
            }
            self.take_main_pid();
            if let Some(main) = self.main().filter(TaskHandle::is_signaled) {
                return Err(ResourceError::new(format!(
                    "main process {} before it said READY=1",
                    ended(&main)
                )));
            }
            let now = n.wait(Duration::from_millis(100), |h| {
                if let Some(e) = h.errno {
                    return Some(Err(notify::errno_text(e)));
                }
                if h.ready {
                    h.ready_at.get_or_insert_with(std::time::Instant::now);
                    return Some(Ok(()));
                }
                if h.main_pid.is_some() {
                    return Some(Err(String::new()));
                }
                (h.extended != extended).then_some(Err(String::new()))
            });
            self.take_main_pid();
            match now {
                Some(Ok(())) => {
                    self.take_main_pid();
                    return Ok(());
                }
                Some(Err(e)) if !e.is_empty() => {
                    return Err(ResourceError::new(format!("before READY=1: {e}")))
                }
                Some(Err(_)) => {
                    extended = n.with(|h| h.extended);
                    if ctx.checkpoint(extended) {
                        return Err(ResourceError::new("cancelled by terminate"));
                    }
                }
                None => {}
            }
        }
    }

    /// Checks readiness all along while this start's main process runs:
    /// every answer goes to the monitor, whose thresholds decide. Ends with
    /// the start (an offline, a terminate, the next start).
    fn watch_readiness(&self) {
        let Some(probe) = self.params.readiness.clone() else {
            return;
        };
        let shared = self.shared.clone();
        let generation = shared.generation.load(Ordering::Acquire);
        let (user, scope, reaper, rt) = (
            self.params.user,
            self.scope.clone(),
            self.reaper.clone(),
            self.rt.clone(),
        );
        let current = move |s: &Shared| {
            !s.stopping.load(Ordering::Acquire)
                && s.generation.load(Ordering::Acquire) == generation
        };
        self.rt.spawn(async move {
            let probe = Arc::new(probe);
            while current(&shared) {
                let (p, scope, reaper, rt) =
                    (probe.clone(), scope.clone(), reaper.clone(), rt.clone());
                let answer = if let ProbeKind::Tcp(addr) = &probe.kind {
                    Ok(probe::tcp_async(addr, probe.timeout)
                        .await
                        .map_err(|e| e.to_string()))
                } else {
                    tokio::task::spawn_blocking(move || {
                        let env = probe::ProbeEnv {
                            user,
                            scope: &scope,
                            reaper: &reaper,
                            rt: &rt,
                            abort: None,
                        };
                        probe::run(&p, &env).map_err(|e| e.to_string())
                    })
                    .await
                };
                if !current(&shared) {
                    break;
                }
                match answer {
                    Ok(Ok(())) => shared.notifier.readiness(true, ""),
                    Ok(Err(e)) => shared.notifier.readiness(false, e),
                    // No thread for it now: said, and tried again.
                    Err(e) => shared
                        .notifier
                        .readiness(false, format!("readiness probe: {e}")),
                }
                tokio::time::sleep(probe.interval).await;
            }
        });
    }

    /// `online` waits for the startup probe: within its `deadline`, each
    /// attempt a checkpoint (so `pending_timeout` does not cut it short);
    /// without one, bounded by `pending_timeout`.
    fn wait_started(
        &self,
        probe: &Probe,
        main: &TaskHandle,
        ctx: &CallContext,
    ) -> Result<(), ResourceError> {
        let started = std::time::Instant::now();
        let mut attempts: u32 = 0;
        loop {
            if ctx.should_terminate() {
                return Err(ResourceError::new("cancelled by terminate"));
            }
            if main.is_signaled() {
                return Err(ResourceError::new(format!(
                    "main process {} before it was ready",
                    ended(main)
                )));
            }
            let last = match probe::run(probe, &self.probe_env(false)) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            tracing::debug!(resource = %self.shared.name, "not started yet: {last}");
            if let Some(deadline) = probe.deadline {
                if started.elapsed() >= deadline {
                    return Err(ResourceError::new(format!(
                        "the startup probe did not pass within its deadline of {}: {last}",
                        humantime::format_duration(deadline)
                    )));
                }
                attempts = attempts.saturating_add(1);
                if ctx.checkpoint(attempts) {
                    return Err(ResourceError::new("cancelled by terminate"));
                }
            }
            std::thread::sleep(probe.interval);
        }
    }
}

impl Resource for ProcessResource {
    fn online(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
        self.shared.stopping.store(false, Ordering::Release);
        self.shared.terminated.store(false, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.checks.reset();
        if !self.container.is_empty() {
            // Leftovers of an earlier run would share the cgroup with the new one.
            self.container
                .kill_all()
                .map_err(|e| ResourceError::new(e.to_string()))?;
        }
        if let Some(n) = &self.notify {
            n.reset();
        }
        self.watchdog_missed.store(false, Ordering::Release);
        let main = self.spawn_main()?;
        *lock(&self.main) = Some(main.clone());
        self.watch(&main);
        if let Some(n) = &self.notify {
            self.wait_notified_ready(n, ctx)?;
        }
        // The main process may have handed over (MAINPID=).
        let main = self.main().unwrap_or(main);
        if let Some(probe) = &self.params.startup {
            self.wait_started(probe, &main, ctx)?;
        }
        self.watch_readiness();
        Ok(Completion::Done)
    }

    fn offline(&self, ctx: &CallContext) -> Result<Completion, ResourceError> {
        self.shared.stopping.store(true, Ordering::Release);
        let cancelled = || ResourceError::new("cancelled by terminate");
        if let Some(argv) = &self.params.stop_command {
            // Part of the offline, so bounded by pending_timeout with it: a
            // hook that hangs is ended by terminate, in the resource's
            // scope with everything else of it.
            match self.run_hook("stop_command", argv, None, || ctx.should_terminate()) {
                Ok(()) => {}
                Err(HookError::Terminated) => return Err(cancelled()),
                Err(HookError::Failed(why)) => self.shared.notifier.log(
                    LogLevel::Warn,
                    format!("{why}; sending stop_signal all the same"),
                ),
            }
        }
        self.container
            .signal_all(self.params.stop_signal)
            .map_err(|e| ResourceError::new(format!("sending the stop signal: {e}")))?;
        // No checkpoints of its own: a service that ignores its stop signal
        // runs into pending_timeout and is terminated; one that speaks the
        // notify protocol may say EXTEND_TIMEOUT_USEC= as it goes.
        let container = &self.container;
        let main = self.main();
        self.report_escaped();
        // Done only once every process of the resource is gone, and the
        // main process too wherever it went (its pidfd says so).
        let gone = async {
            container.wait_empty().await;
            if let Some(main) = &main {
                let _ = main.wait().await;
            }
        };
        let extended =
            std::cell::Cell::new(self.notify.as_ref().map_or(0, |n| n.with(|h| h.extended)));
        let give_up = || {
            if let Some(n) = &self.notify {
                let now = n.with(|h| h.extended);
                if now != extended.replace(now) {
                    return ctx.checkpoint(now);
                }
            }
            ctx.should_terminate()
        };
        match self.wait_unless(gone, give_up) {
            Some(()) => Ok(Completion::Done),
            None => Err(cancelled()),
        }
    }

    fn terminate(&self, exit_code: i32) {
        self.shared.terminated.store(true, Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.container.note_tree();
        if let Some(main) = self.main() {
            let _ = main.terminate(exit_code);
        }
        // A cgroup where nothing runs and nothing is being started has
        // nothing to kill (a crashed main process that left no children):
        // it stays a cgroup never killed, which the next start is born into
        // without renewing it.
        if self.scope.cgroup.is_some()
            && !self.shared.spawning.load(Ordering::SeqCst)
            && self.container.is_empty()
        {
            return;
        }
        if let Err(e) = self.container.kill_all() {
            tracing::warn!(resource = %self.shared.name, "terminate: {e}");
        }
        self.report_escaped();
    }

    fn terminate_is_cheap(&self) -> bool {
        // `cgroup.kill` is one write; without cgroups, killing scans /proc
        // in rounds until nothing is left, and without fork tracking the
        // stop first scans /proc for descendants that left the cgroup
        // (`note_tree`): neither belongs on the event loop.
        self.scope.cgroup.is_some() && resmon_task::follows_forks()
    }

    fn looks_alive(&self) -> bool {
        self.take_main_pid();
        self.main_alive() && self.watchdog_ok()
    }

    fn cancel_check(&self) {
        self.checks.cancel();
    }

    fn is_alive(&self) -> bool {
        if !self.looks_alive() || self.checks.is_cancelled() {
            return false;
        }
        match &self.params.probe {
            None => true,
            Some(p) => match probe::run(p, &self.probe_env(true)) {
                Ok(()) => true,
                Err(_) if self.checks.is_cancelled() => false,
                Err(e) => {
                    self.shared
                        .notifier
                        .log(LogLevel::Warn, format!("is_alive: {e}"));
                    false
                }
            },
        }
    }

    fn resource_control(&self, code: u32, _input: &[u8]) -> Result<Vec<u8>, ControlError> {
        match code {
            control::GET_PRIVATE_PROPERTIES => {
                let out = serde_json::json!({
                    "params": self.raw_params,
                    "main_pid": self.pids().first(),
                });
                serde_json::to_vec(&out).map_err(|e| ControlError::Failed(e.to_string()))
            }
            _ => Err(ControlError::NotSupported),
        }
    }

    fn reload(&self, limit: Duration) -> Result<String, ControlError> {
        // The command when there is one; the signal only without it.
        let argv = match (&self.params.reload_command, self.params.reload_signal) {
            (Some(argv), _) => argv,
            (None, Some(sig)) => return self.signal_main(&self.running_main()?, sig),
            (None, None) => {
                return Err(ControlError::InvalidInput(format!(
                    "resource {} has no reload_signal or reload_command",
                    self.shared.name
                )))
            }
        };
        self.running_main()?;
        let terminated = || self.shared.terminated.load(Ordering::SeqCst);
        match self.run_hook("reload_command", argv, Some(limit), terminated) {
            Ok(()) => Ok("reload_command exited with code 0".into()),
            Err(HookError::Terminated) => Err(ControlError::Failed(
                "reload_command: the resource was terminated meanwhile".into(),
            )),
            Err(HookError::Failed(why)) => Err(ControlError::Failed(why)),
        }
    }

    fn signal(&self, signal: i32, all: bool) -> Result<String, ControlError> {
        let sig = Signal::from_named_raw(signal).ok_or_else(|| {
            ControlError::InvalidInput(format!("{signal} is not a signal that can be sent"))
        })?;
        if !all {
            return self.signal_main(&self.running_main()?, sig);
        }
        let name = resmon_task::signal_name(signal);
        if self.container.is_empty() {
            return Err(ControlError::Failed("no process of it runs".into()));
        }
        self.container
            .signal_all(sig)
            .map_err(|e| ControlError::Failed(format!("sending {name}: {e}")))?;
        self.report_escaped();
        Ok(format!("sent {name} to every process of the resource"))
    }

    fn close(&self) {
        if self.main_alive() {
            self.terminate(1);
        }
        if let Some(n) = &self.notify {
            n.close();
        }
        // Its pipes close here: the relay drains what is left and exits,
        // or is killed if something of the service still holds them.
        let Some(Relay { task, out, err }) = lock(&self.relay).take() else {
            return;
        };
        drop((out, err));
        let drained = self
            .rt
            .block_on(async { tokio::time::timeout(RELAY_DRAIN, task.wait()).await.is_ok() });
        if !drained {
            let _ = task.terminate(1);
        }
    }

    fn output_dropped(&self) -> u64 {
        if self.log.mode != LogMode::File {
            return 0;
        }
        // Status and metrics ask of every resource: the file is read at
        // most once a second.
        let mut d = lock(&self.dropped);
        if d.at.is_some_and(|at| at.elapsed() < DROPPED_FRESH) {
            return d.count;
        }
        if d.fd.is_none() {
            d.fd = rustix::fs::open(
                self.log.dir.join(relay::dropped_file(&self.shared.name)),
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok();
        }
        d.count = d.fd.as_ref().map_or(0, relay::read_dropped);
        d.at = Some(std::time::Instant::now());
        d.count
    }

    fn persist(&self) -> Option<serde_json::Value> {
        let main = self.main().filter(|m| !m.is_signaled())?;
        let pid = main.pid()?;
        let start_time = resmon_task::process_start_time(pid)?;
        Some(serde_json::json!({ "pid": pid, "start_time": start_time }))
    }

    fn reattach(&self, saved: &serde_json::Value) -> Result<bool, ResourceError> {
        let (Some(pid), Some(start_time)) = (
            saved.get("pid").and_then(|v| v.as_u64()),
            saved.get("start_time").and_then(|v| v.as_u64()),
        ) else {
            return Err(ResourceError::new(format!(
                "saved state {saved} has no pid and start_time"
            )));
        };
        let Ok(pid) = u32::try_from(pid) else {
            return Ok(false);
        };
        let main = match self.reaper.adopt(pid, start_time) {
            Ok(task) => task,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ResourceError::new(format!("adopting process {pid}: {e}"))),
        };
        // Checked with the process pinned by its pidfd: a saved pid and
        // start time name a process, but only its cgroup (or marker) says it
        // is this resource's. Anything else is never adopted, so never
        // killed by this resource's stop.
        if !self.container.holds(pid) {
            return Err(ResourceError::new(format!(
                "the saved main process {pid} is not in this resource's {}: not adopting it",
                if self.scope.cgroup.is_some() {
                    "cgroup"
                } else {
                    "process tree (no marker)"
                }
            )));
        }
        self.shared.stopping.store(false, Ordering::Release);
        self.shared.terminated.store(false, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.checks.reset();
        *lock(&self.main) = Some(main.clone());
        self.watch(&main);
        self.watch_readiness();
        // From now on their forks are followed, wherever they go.
        self.container.track_all();
        Ok(true)
    }

    fn pids(&self) -> Vec<u32> {
        self.main()
            .filter(|m| !m.is_signaled())
            .and_then(|m| m.pid())
            .into_iter()
            .collect()
    }

    /// What a service that speaks the notify protocol says of itself
    /// (`STATUS=`).
    fn detail(&self) -> Option<String> {
        self.notify.as_ref()?.with(|h| h.status.clone())
    }

    fn exit_code(&self) -> Option<i32> {
        i32::try_from(self.shared.last_exit.load(Ordering::Acquire)).ok()
    }
}
