//! The traits a resource type implements, and what the monitor hands it.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// How an `online` or `offline` call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The call is finished: the resource is online (or offline).
    Done,
    /// The work goes on in the background; it ends with
    /// [`CallContext::complete`], and reports progress meanwhile.
    Pending,
}

/// A failure reported by a resource type, with a message for operators.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResourceError(pub String);

impl ResourceError {
    pub fn new(msg: impl Into<String>) -> Self {
        ResourceError(msg.into())
    }
}

/// Why a control code gave no output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The type does not handle this code; the monitor's default handling applies.
    #[error("control code not supported")]
    NotSupported,
    /// The input was not what the code expects.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The code was understood but failed.
    #[error("{0}")]
    Failed(String),
}

/// Where a pending call reports to. Implemented by the monitor.
pub trait StatusSink: Send + Sync {
    /// Progress of a pending `online`/`offline`: a checkpoint that grows.
    fn checkpoint(&self, checkpoint: u32);
    /// The end of a call that returned [`Completion::Pending`].
    fn complete(&self, result: Result<(), ResourceError>);
}

/// What an `online` or `offline` call gets: a way to report progress and
/// completion, and the "should terminate" flag that `terminate` raises.
#[derive(Clone)]
pub struct CallContext {
    cancel: Arc<AtomicBool>,
    sink: Arc<dyn StatusSink>,
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("should_terminate", &self.should_terminate())
            .finish()
    }
}

impl CallContext {
    pub fn new(cancel: Arc<AtomicBool>, sink: Arc<dyn StatusSink>) -> Self {
        CallContext { cancel, sink }
    }

    /// Reports progress. Returns true once the resource is being terminated:
    /// the caller should then stop its work and return.
    pub fn checkpoint(&self, checkpoint: u32) -> bool {
        self.sink.checkpoint(checkpoint);
        self.should_terminate()
    }

    /// True once `terminate` has been called for this resource.
    pub fn should_terminate(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Finishes a call that returned [`Completion::Pending`].
    pub fn complete(&self, result: Result<(), ResourceError>) {
        self.sink.complete(result);
    }
}

/// Where the monitor wants a resource's processes to live, so that it can
/// find and kill every one of them (rung 3 of the termination ladder).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// The cgroup v2 directory every process of the resource must start in,
    /// when cgroups are usable.
    pub cgroup: Option<PathBuf>,
    /// An environment variable (`NAME`, `VALUE`) to set on every process the
    /// resource starts: where cgroups are not usable, the monitor finds the
    /// resource's escaped descendants by it.
    pub marker: (String, String),
    /// In cluster mode, the fencing token of the node's ownership of the
    /// resource's group, read when a process starts.
    pub fencing: FencingToken,
}

/// The environment variable that carries the fencing token to a resource's
/// processes.
pub const FENCING_TOKEN_VAR: &str = "RESMON_FENCING_TOKEN";

/// The fencing token of a group's current ownership in cluster mode: the
/// revision at which this node's owner key was created, larger for every
/// later owner. A resource hands it to whatever it guards (a storage
/// system, a lock service) so that a stale owner's writes can be refused.
/// Shared: the monitor sets it when it takes the group, before `online`.
#[derive(Clone, Debug, Default)]
pub struct FencingToken(Arc<AtomicI64>);

impl FencingToken {
    /// The token now, if the group is owned (tokens are positive).
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Acquire)).filter(|t| *t > 0)
    }

    pub fn set(&self, token: Option<i64>) {
        self.0.store(token.unwrap_or(0), Ordering::Release);
    }
}

impl PartialEq for FencingToken {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FencingToken {}

/// How much a message from a resource matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// What a resource tells the monitor between entry points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// It failed (e.g. its main process exited). The monitor answers as it
    /// does to a `looks_alive` that returned false: it calls `is_alive` at once.
    Failed(String),
    /// A message for operators (the event feed and the monitor's log), e.g.
    /// why a probe failed.
    Log(LogLevel, String),
    /// One readiness check of the online resource passed, or did not
    /// (`detail` says why); the monitor's thresholds decide when it counts.
    Readiness { ready: bool, detail: String },
}

/// A resource's line to the monitor, given to `open`.
#[derive(Clone)]
pub struct Notifier(Arc<dyn Fn(Notice) + Send + Sync>);

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Notifier")
    }
}

impl Notifier {
    pub fn new(f: impl Fn(Notice) + Send + Sync + 'static) -> Self {
        Notifier(Arc::new(f))
    }

    /// A notifier that drops every notice (for tools and tests).
    pub fn none() -> Self {
        Notifier::new(|_| {})
    }

    /// Reports a failure noticed between polls.
    pub fn failed(&self, reason: impl Into<String>) {
        (self.0)(Notice::Failed(reason.into()))
    }

    /// Reports a message for operators.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        (self.0)(Notice::Log(level, message.into()))
    }

    /// Reports one readiness check's answer.
    pub fn readiness(&self, ready: bool, detail: impl Into<String>) {
        (self.0)(Notice::Readiness {
            ready,
            detail: detail.into(),
        })
    }
}

/// Everything `open` gets.
#[derive(Clone, Debug)]
pub struct OpenContext {
    /// The resource's name, unique in the monitor.
    pub name: String,
    /// The `type = "..."` it was configured with (e.g. `ocf:heartbeat:Dummy`).
    pub type_name: String,
    /// Its failure policy (some types pass intervals and timeouts on).
    pub policy: crate::Policy,
    /// The type-specific part of the resource's configuration.
    pub params: serde_json::Value,
    pub scope: Scope,
    pub notifier: Notifier,
    /// Where the resource's output goes (`log = ...`).
    pub log: LogSettings,
}

/// Where a resource's output goes: `log = "file" | "journal" | "inherit" |
/// "null"`, per resource or in `[defaults]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogMode {
    /// Captured, line by line with a timestamp and the stream, into the
    /// resource's log in the log directory (`resmon logs` reads it).
    #[default]
    File,
    /// To the systemd journal, with the resource's name as its identifier.
    Journal,
    /// The monitor's own stdout and stderr.
    Inherit,
    /// Thrown away.
    Null,
}

impl LogMode {
    pub fn parse(s: &str) -> Option<LogMode> {
        Some(match s {
            "file" => LogMode::File,
            "journal" => LogMode::Journal,
            "inherit" => LogMode::Inherit,
            "null" => LogMode::Null,
            _ => return None,
        })
    }
}

/// A resource's log settings, as the monitor resolved them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub mode: LogMode,
    /// The monitor's log directory (`[monitor] log_dir`): the resource's
    /// log is `NAME.log` in it.
    pub dir: std::path::PathBuf,
    /// The size at which the log is rotated (`log_max_size`).
    pub max_size: u64,
    /// How many rotated files are kept (`log_keep`).
    pub keep: u32,
    /// The longest line kept as one record; a longer one is split
    /// (`log_max_line`).
    pub max_line: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            mode: LogMode::File,
            dir: std::path::PathBuf::new(),
            max_size: 10 << 20,
            keep: 5,
            max_line: 64 << 10,
        }
    }
}

/// A kind of resource: the code that knows how to drive it.
pub trait ResourceType: Send + Sync {
    /// The name used in `type = "..."`, or the family of names it handles
    /// (`ocf` for `ocf:PROVIDER:AGENT`).
    fn name(&self) -> &str;

    /// Whether `type = "type_name"` is this type.
    fn handles(&self, type_name: &str) -> bool {
        type_name == self.name()
    }

    /// Checks a resource's type-specific parameters without starting
    /// anything. Each problem is returned as one message naming its field.
    /// May block (e.g. to ask an agent for its meta-data).
    fn validate(&self, type_name: &str, params: &serde_json::Value) -> Vec<String>;

    /// Creates the resource (entry point `open`). Nothing is started yet.
    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, ResourceError>;

    /// Type-wide control codes; `type_name` is the name asked for (one of
    /// the family this type handles).
    fn resource_type_control(
        &self,
        _type_name: &str,
        _code: u32,
        _input: &[u8],
    ) -> Result<Vec<u8>, ControlError> {
        Err(ControlError::NotSupported)
    }

    /// True when `looks_alive` answers from memory without blocking, so the
    /// monitor may call it inline instead of on a worker thread.
    fn looks_alive_is_cheap(&self) -> bool {
        false
    }
}

/// One resource of a type: the entry points of docs/design.md §2.
pub trait Resource: Send + Sync {
    /// Brings the resource online. See the crate docs for pending calls.
    fn online(&self, ctx: &CallContext) -> Result<Completion, ResourceError>;

    /// Takes the resource offline gracefully.
    fn offline(&self, ctx: &CallContext) -> Result<Completion, ResourceError>;

    /// Ends the resource at once, without cleanup and without waiting.
    /// `exit_code` is what the resource's tasks report as their exit code.
    /// May run concurrently with every entry point but `open` and `close`.
    fn terminate(&self, exit_code: i32);

    /// True when `terminate` only signals and returns at once (it neither
    /// waits nor talks to another process), so the monitor may call it
    /// inline instead of on a worker thread: a restart after a crash then
    /// costs two thread wake-ups less.
    fn terminate_is_cheap(&self) -> bool {
        false
    }

    /// The cheap health check.
    fn looks_alive(&self) -> bool;

    /// The thorough health check.
    fn is_alive(&self) -> bool;

    /// The monitor no longer waits for the health check in flight: an
    /// offline, terminate or shutdown came. Make `looks_alive`/`is_alive`
    /// return at once, ending whatever they started (a probe's process
    /// tree); what they return is ignored, and a check that begins later,
    /// before the next `online`, should fail at once. Runs concurrently with
    /// the check, on the monitor's event loop: it must only signal, never
    /// wait or block.
    fn cancel_check(&self) {}

    /// A control code. Unknown codes answer [`ControlError::NotSupported`].
    fn resource_control(&self, _code: u32, _input: &[u8]) -> Result<Vec<u8>, ControlError> {
        Err(ControlError::NotSupported)
    }

    /// Makes the running resource take its configuration again without a
    /// restart (`resmon reload-resource`): its processes stay. Called on
    /// its lane, serialized with the other entry points (never with
    /// `terminate`), while it is online; `limit` is how long it may take
    /// (the resource's `pending_timeout`). Returns what was done, for the
    /// operator. [`ControlError::NotSupported`]: its type cannot reload;
    /// [`ControlError::InvalidInput`]: this resource is not set up for it
    /// (the message says what is missing).
    fn reload(&self, _limit: std::time::Duration) -> Result<String, ControlError> {
        Err(ControlError::NotSupported)
    }

    /// Sends signal number `signal` to the resource's main process, or
    /// with `all` to every process of it (`resmon signal`). Like
    /// `terminate` it only signals, and it may run beside every entry point
    /// but `open` and `close`: a stop that hangs can still be signalled.
    /// Returns what was done, with the errors of [`reload`](Self::reload).
    fn signal(&self, _signal: i32, _all: bool) -> Result<String, ControlError> {
        Err(ControlError::NotSupported)
    }

    /// Releases the resource. The monitor terminates it first if it is not offline.
    fn close(&self) {}

    /// The main processes of the resource, for status displays.
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }

    /// The exit code of the resource's main process when it last ended
    /// (128 + the signal's number when a signal ended it, or the code a
    /// terminate chose), for status and metrics. `None` until one ended,
    /// and for types without a main process.
    fn exit_code(&self) -> Option<i32> {
        None
    }

    /// Lines of its output that could not be written to its log (a full
    /// disk), as far as it knows; cheap, for status and metrics.
    fn output_dropped(&self) -> u64 {
        0
    }

    /// More about its state than the state names say (e.g. `degraded`,
    /// `promoted`), for status displays.
    fn detail(&self) -> Option<String> {
        None
    }

    /// What a restarted monitor needs to find this resource running again
    /// (e.g. its main pid), kept in the monitor's state directory. `None`
    /// when nothing runs.
    fn persist(&self) -> Option<serde_json::Value> {
        None
    }

    /// Called instead of `online` by a monitor that restarted while the
    /// resource kept running, with what [`persist`](Self::persist) saved.
    /// `Ok(true)`: it is running and now watched again (online);
    /// `Ok(false)`: nothing of it runs any more.
    fn reattach(&self, _saved: &serde_json::Value) -> Result<bool, ResourceError> {
        Ok(false)
    }
}
