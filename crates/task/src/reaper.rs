//! The reaper: the one place in the process that collects child exit statuses.
//!
//! `waitpid` is process-wide, so there must be exactly one reaper: whoever
//! else waits can steal a status. [`Reaper::get`] starts it on first use: the
//! process becomes a child subreaper, and a thread named `resmon-reaper` runs
//! a current-thread tokio runtime of its own, so the reaper works whichever
//! runtime (or none) its users run on and outlives short-lived ones such as
//! test runtimes.
//!
//! Two events make the thread reap:
//!
//! * `SIGCHLD`: it peeks zombies one by one with
//!   `waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`. A zombie that is a
//!   registered task is reaped through its pidfd and its status delivered to
//!   the task record; any other zombie is an orphan (a re-parented
//!   descendant) and is reaped by pid. Signals coalesce, so it loops until no
//!   zombie is left.
//! * a task's pidfd turning readable (watched with `AsyncFd`): that task
//!   exited; it is reaped at once, without waiting for the signal.
//!
//! Both run under the `tasks` lock, which [`Reaper::spawn`] also holds from
//! `fork` until the child's pidfd is open and registered. So a child is never
//! reaped as an orphan before it is registered, its pid cannot be reused
//! while the pidfd is opened, and std's own clean-up `waitpid` of a child
//! whose `exec` failed is never raced.

use crate::handle::Ended;
use crate::sync::lock;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::runtime::Handle;
use tokio::signal::unix::{signal, SignalKind};

use crate::handle::{ProcessRecord, TaskHandle};
use crate::spawn::{self, SpawnSpec};

/// Reaps every child of this process; see the module documentation.
///
/// The process is made a child subreaper (`PR_SET_CHILD_SUBREAPER`) so that
/// orphaned descendants (double fork, `setsid`) are re-parented to it and
/// reaped here. One per process: [`Reaper::get`] creates it on first use and
/// returns the same `Arc` after. Nothing else in the process may wait for
/// children; spawn them with [`Reaper::spawn`].
pub struct Reaper {
    tasks: Arc<Tasks>,
    /// The reaper thread's runtime, where pidfd watchers run.
    runtime: Handle,
}

/// Process tasks not reaped yet, by pid. Holding this lock is the right to reap.
type Tasks = Mutex<HashMap<u32, Arc<ProcessRecord>>>;

static REAPER: Mutex<Option<Arc<Reaper>>> = Mutex::new(None);

impl Reaper {
    /// The process's reaper if one was started, without starting one.
    pub fn running() -> Option<Arc<Reaper>> {
        lock(&REAPER).clone()
    }

    /// Reaps every zombie child now, on the caller's thread, instead of
    /// waiting for the reaper thread to hear SIGCHLD.
    pub fn reap_now(&self) {
        reap_zombies(&self.tasks);
    }

    /// The process's reaper, started on the first call.
    pub fn get() -> io::Result<Arc<Reaper>> {
        let mut slot = lock(&REAPER);
        if let Some(reaper) = &*slot {
            return Ok(Arc::clone(reaper));
        }
        let reaper = Reaper::start()?;
        *slot = Some(Arc::clone(&reaper));
        Ok(reaper)
    }

    fn start() -> io::Result<Arc<Reaper>> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("making the monitor a child subreaper (PR_SET_CHILD_SUBREAPER): {e}"),
            )
        })?;
        // Root can follow forks through the process connector: a process
        // that leaves its resource's cgroup is still found (see `tracker`).
        // `RESMON_FORK_TRACKING=off` leaves it off (the cgroup, parent
        // links and the orphan sweep at exit remain).
        let wanted = std::env::var_os("RESMON_FORK_TRACKING").is_none_or(|v| v != "off");
        if wanted && rustix::process::geteuid().is_root() {
            if let Err(e) = crate::tracker::Tracker::start() {
                tracing::info!("not following forks through the process connector: {e}");
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io::Error::new(e.kind(), format!("building the reaper runtime: {e}")))?;
        // Listen before returning, so no SIGCHLD after `get` is missed.
        let sigchld = {
            let _guard = runtime.enter();
            signal(SignalKind::child())
                .map_err(|e| io::Error::new(e.kind(), format!("listening for SIGCHLD: {e}")))?
        };
        let reaper = Arc::new(Reaper {
            tasks: Arc::new(Mutex::new(HashMap::new())),
            runtime: runtime.handle().clone(),
        });
        let tasks = Arc::clone(&reaper.tasks);
        std::thread::Builder::new()
            .name("resmon-reaper".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut sigchld = sigchld;
                    loop {
                        // Reap first: children may have exited before we listened.
                        reap_zombies(&tasks);
                        if sigchld.recv().await.is_none() {
                            break;
                        }
                    }
                });
            })
            .map_err(|e| io::Error::new(e.kind(), format!("starting the reaper thread: {e}")))?;
        Ok(reaper)
    }

    /// Spawns a process as described by `spec` and returns a handle with all
    /// rights. Blocks until `exec` succeeded or failed; an `exec` failure
    /// (e.g. the program does not exist) is an error naming the program.
    pub fn spawn(&self, spec: &SpawnSpec) -> io::Result<TaskHandle> {
        let mut prepared = spawn::prepare(spec).map_err(|e| spawn::describe_error(spec, e))?;
        let record = {
            // Held while the child is made and registered, so the SIGCHLD
            // loop cannot take it for an orphan and reap it first.
            let mut tasks = lock(&self.tasks);
            let since = crate::tracker::monotonic_ns();
            let (pid, pidfd) =
                spawn::spawn(&mut prepared).map_err(|e| spawn::describe_error(spec, e))?;
            let record = Arc::new(ProcessRecord::new(pid, pidfd));
            tasks.insert(pid, Arc::clone(&record));
            if let Some((_, key)) = spec.env.iter().find(|(k, _)| k == crate::MARKER_VAR) {
                crate::tracker::tracker().register(pid, key, Some(since));
            }
            record
        };
        drop(prepared);
        self.watch_exit(Arc::clone(&record));
        Ok(TaskHandle::new(record))
    }

    /// A handle on a running process that is not our child: one a previous
    /// run of the monitor started. `start_time` (field 22 of
    /// `/proc/PID/stat`) must match, so a reused pid is never adopted. Its
    /// exit is seen through its pidfd; its exit status is not ours to read,
    /// so an adopted task that ends by itself reports exit code -1.
    pub fn adopt(&self, pid: u32, start_time: u64) -> io::Result<TaskHandle> {
        let gone = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} is gone (or its pid was reused)"),
            )
        };
        let p = Pid::from_raw(pid as i32).ok_or_else(gone)?;
        let pidfd = pidfd_open(p, PidfdFlags::empty()).map_err(|_| gone())?;
        // Checked after the pidfd pins the process, so the check holds.
        let stat = crate::procfs::read_stat(crate::leaf::proc_root(), pid).ok_or_else(gone)?;
        if stat.start_time != start_time || stat.is_dead() {
            return Err(gone());
        }
        let record = Arc::new(ProcessRecord::new(pid, pidfd));
        let watched = Arc::clone(&record);
        self.runtime.spawn(async move {
            // SAFETY: `PidfdWatch` owns an `Arc` of the record, whose `OwnedFd`
            // is closed only when the record is dropped, so the descriptor stays
            // open and the same for the AsyncFd's whole life.
            let registered = unsafe {
                AsyncFd::register_with_interest(
                    PidfdWatch(Arc::clone(&watched)),
                    Interest::READABLE,
                )
            };
            match registered {
                Ok(fd) => {
                    if fd.readable().await.is_ok() {
                        watched.core.finish(-1);
                    }
                }
                Err(e) => tracing::warn!(
                    pid,
                    "cannot watch the pidfd of adopted process {pid}: {}",
                    e.into_parts().1
                ),
            }
        });
        Ok(TaskHandle::new(record))
    }

    /// Kills every child of this process that is not a task it spawned or
    /// adopted, with all their descendants: orphans re-parented to the
    /// monitor (it is a child subreaper) whose resource is gone, such as a
    /// process that left its cgroup where forks could not be followed.
    /// Call it last, once every resource is down: nothing the monitor
    /// started may outlive it. Returns how many it killed.
    pub fn kill_orphans(&self) -> usize {
        let me = std::process::id();
        let mut killed = 0;
        for _ in 0..10 {
            let snapshot = crate::procfs::index().snapshot();
            let orphans = {
                let tasks = lock(&self.tasks);
                snapshot.children_trees(me, |pid| tasks.contains_key(&pid))
            };
            if orphans.is_empty() {
                break;
            }
            for p in &orphans {
                if crate::procfs::signal_checked(
                    p.pid,
                    Some(p.start_time),
                    rustix::process::Signal::KILL,
                )
                .is_ok()
                {
                    killed += 1;
                }
            }
            self.reap_now();
        }
        killed
    }

    /// Reaps `record`'s process as soon as its pidfd reports the exit.
    fn watch_exit(&self, record: Arc<ProcessRecord>) {
        let tasks = Arc::clone(&self.tasks);
        self.runtime.spawn(async move {
            let pid = record.pid;
            // SAFETY: `PidfdWatch` owns an `Arc` of the record, whose `OwnedFd`
            // is closed only when the record is dropped, so the descriptor stays
            // open and the same for the AsyncFd's whole life.
            let registered =
                unsafe { AsyncFd::register_with_interest(PidfdWatch(record), Interest::READABLE) };
            let fd = match registered {
                Ok(fd) => fd,
                Err(e) => {
                    let e = e.into_parts().1;
                    // SIGCHLD still reaps it, just not as promptly.
                    tracing::warn!(pid, "cannot watch the pidfd of process {pid}: {e}");
                    return;
                }
            };
            if fd.readable().await.is_ok() {
                reap_task(&tasks, pid);
            }
        });
    }
}

/// Reaps the registered task `pid` if it has exited.
fn reap_task(tasks: &Tasks, pid: u32) {
    let mut tasks = lock(tasks);
    if let Some(record) = tasks.remove(&pid) {
        if !reap_record(&record) {
            // Not exited after all; SIGCHLD will bring it back.
            tasks.insert(pid, record);
        }
    }
}

/// Reaps every zombie child; see the module documentation.
fn reap_zombies(tasks: &Tasks) {
    let mut tasks = lock(tasks);
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        let pid = match waitid(Id::All, peek) {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => break,
            },
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break,
            Err(e) => {
                tracing::warn!("waitid(P_ALL) failed: {e}");
                break;
            }
        };
        let raw = pid.as_raw() as u32;
        if let Some(record) = tasks.remove(&raw) {
            if reap_record(&record) {
                continue;
            }
            // The pidfd did not give the status: take it by pid (it is
            // still our zombie, so the pid cannot have been reused).
            let status = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            record
                .core
                .finish(status.ok().and_then(ended).map_or(128, Ended::code));
            continue;
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => tracing::debug!(pid = raw, ?status, "reaped an orphan"),
            // Gone already (someone else waited, which they should not).
            Err(Errno::ECHILD) => continue,
            Err(e) => {
                tracing::warn!(pid = raw, "reaping orphan {raw}: {e}");
                break;
            }
        }
    }
}

/// Reaps a registered task through its pidfd and delivers its exit code.
/// Returns false if it has not exited.
fn reap_record(record: &ProcessRecord) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
    loop {
        match waitid(Id::PIDFd(record.pidfd.as_fd()), flags) {
            Ok(status) => {
                return match ended(status) {
                    Some(e) => {
                        record.core.finish_as(e);
                        true
                    }
                    None => false,
                };
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(pid = record.pid, "waitid(P_PIDFD) for {}: {e}", record.pid);
                return false;
            }
        }
    }
}

/// How a wait status says the process ended.
fn ended(status: WaitStatus) -> Option<Ended> {
    match status {
        WaitStatus::Exited(_, code) => Some(Ended::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(Ended::Signaled(sig as i32)),
        _ => None,
    }
}

/// Lends a task's pidfd to `AsyncFd`; the record keeps the descriptor open
/// for as long as the watcher is registered.
struct PidfdWatch(Arc<ProcessRecord>);

impl AsRawFd for PidfdWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.pidfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal as NixSignal;
    use nix::unistd::Pid as NixPid;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let pid = NixPid::from_raw(42);
        assert_eq!(ended(WaitStatus::Exited(pid, 3)), Some(Ended::Exited(3)));
        let killed = ended(WaitStatus::Signaled(pid, NixSignal::SIGKILL, false)).unwrap();
        assert_eq!((killed, killed.code()), (Ended::Signaled(9), 137));
        assert_eq!(killed.to_string(), "was killed by SIGKILL (exit code 137)");
        assert_eq!(ended(WaitStatus::StillAlive), None);
    }
}
