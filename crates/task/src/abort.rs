//! Health checks that a stop cuts short.
//!
//! A check (an `exec` probe, an OCF `monitor`) registers the task it waits
//! for; [`CheckAbort::cancel`], called from another thread when the monitor
//! stops waiting for the check, kills that task with its process group, so
//! the wait returns at once, and makes every later check fail at once until
//! the resource is started again ([`CheckAbort::reset`]). `cancel` only
//! signals: it may run on the monitor's event loop.

use crate::sync::lock;
use crate::TaskHandle;
use rustix::process::{kill_process_group, Pid, Signal};
use std::sync::Mutex;
use tokio::sync::watch;

/// See the module docs.
pub struct CheckAbort {
    inner: Mutex<Inner>,
    /// Flips to true on `cancel`, back on `reset`: for checks that wait on
    /// something other than a task (a connection).
    flag: watch::Sender<bool>,
}

impl Default for CheckAbort {
    fn default() -> Self {
        CheckAbort {
            inner: Mutex::default(),
            flag: watch::Sender::new(false),
        }
    }
}

#[derive(Default)]
struct Inner {
    cancelled: bool,
    /// The task of the check in progress, with its own process group.
    task: Option<TaskHandle>,
}

/// A check was cancelled: its result means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

/// The registration of one check's task; dropping it ends the registration.
pub struct Watched<'a> {
    abort: &'a CheckAbort,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        lock(&self.abort.inner).task = None;
    }
}

impl CheckAbort {
    /// Checks run normally again (called as the resource starts).
    pub fn reset(&self) {
        let mut inner = lock(&self.inner);
        inner.cancelled = false;
        inner.task = None;
        self.flag.send_replace(false);
    }

    /// Whether checks are cancelled now.
    pub fn is_cancelled(&self) -> bool {
        lock(&self.inner).cancelled
    }

    /// Kills the check in progress, if any, and fails the ones to come.
    pub fn cancel(&self) {
        let mut inner = lock(&self.inner);
        inner.cancelled = true;
        self.flag.send_replace(true);
        if let Some(task) = inner.task.take() {
            kill(&task);
        }
    }

    /// Resolves once the checks are cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.flag.subscribe();
        let _ = rx.wait_for(|&c| c).await;
    }

    /// Registers `task`, which a check has just started in a process group
    /// of its own. If the checks were cancelled meanwhile, it is killed at
    /// once and `Err(Cancelled)` is returned.
    pub fn watch(&self, task: &TaskHandle) -> Result<Watched<'_>, Cancelled> {
        let mut inner = lock(&self.inner);
        if inner.cancelled {
            kill(task);
            return Err(Cancelled);
        }
        inner.task = Some(task.clone());
        Ok(Watched { abort: self })
    }
}

/// Kills a check's task and its process group. The group is signalled only
/// while the leader is not reaped, so its id still names that group.
fn kill(task: &TaskHandle) {
    if !task.is_signaled() {
        if let Some(pgid) = task.pid().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }
    let _ = task.terminate(137);
}
