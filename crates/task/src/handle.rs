//! Task handles: rights, exit codes, `terminate` and `wait` (docs/design.md §5).
//!
//! A [`TaskHandle`] is an `Arc` on a task record plus the rights of this
//! handle. The record holds the exit code state behind a mutex and a watch
//! channel that flips to "finished" exactly once, which releases every waiter
//! at once. Two kinds of task share that core:
//!
//! * a *process* task: one child process, known by its pidfd. The reaper
//!   finishes the record when it reaps the process; `terminate` and `signal`
//!   go through the pidfd, so once the process is reaped they reach nothing
//!   (`ESRCH`, treated as success) instead of a process that reused the pid;
//! * a *tree* task: everything in a container (its record lives with the
//!   container). It is finished the first time the container is seen
//!   empty; `terminate` kills the container.

use crate::leaf::send_via_pidfd;
use crate::sync::lock;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rustix::process::Signal;
use tokio::sync::watch;

use crate::{Rights, TaskError, STILL_ACTIVE};

/// The exit-code state shared by both kinds of task.
pub(crate) struct TaskCore {
    codes: Mutex<Codes>,
    finished: watch::Sender<bool>,
}

#[derive(Default)]
struct Codes {
    /// The code given to the first `terminate` that found the task running.
    terminate_code: Option<i32>,
    /// What the task ended with on its own (exit status, 128 + signal).
    exit: Option<i32>,
    /// How a process task ended on its own, when its wait status said.
    ended: Option<Ended>,
}

/// How a process ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl Ended {
    /// The exit code it stands for: the status, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(c) => c,
            Ended::Signaled(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Exited(c) => write!(f, "exited with code {c}"),
            Ended::Signaled(s) => write!(
                f,
                "was killed by {} (exit code {})",
                crate::signal_name(s),
                128 + s
            ),
        }
    }
}

impl TaskCore {
    pub(crate) fn new() -> Self {
        TaskCore {
            codes: Mutex::default(),
            finished: watch::Sender::new(false),
        }
    }

    /// Marks the task finished with `exit` and releases every waiter.
    /// Only the first call counts.
    pub(crate) fn finish(&self, exit: i32) {
        {
            let mut codes = lock(&self.codes);
            if codes.exit.is_some() {
                return;
            }
            codes.exit = Some(exit);
        }
        self.finished.send_replace(true);
    }

    /// [`finish`](Self::finish) with how a process ended.
    pub(crate) fn finish_as(&self, ended: Ended) {
        lock(&self.codes).ended.get_or_insert(ended);
        self.finish(ended.code());
    }

    /// How the task ended on its own, once finished.
    fn ended(&self) -> Option<Ended> {
        let codes = lock(&self.codes);
        codes.exit.and(codes.ended)
    }

    pub(crate) fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    fn exit_code(&self) -> i32 {
        let codes = lock(&self.codes);
        match codes.exit {
            Some(exit) => codes.terminate_code.unwrap_or(exit),
            None => STILL_ACTIVE,
        }
    }

    /// Records `code` as the exit code unless the task already finished or
    /// an earlier terminate chose one. Returns whether the task still runs,
    /// i.e. whether the caller must (still) kill it.
    fn begin_terminate(&self, code: i32) -> bool {
        let mut codes = lock(&self.codes);
        if codes.exit.is_some() {
            return false;
        }
        codes.terminate_code.get_or_insert(code);
        true
    }

    pub(crate) async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        // The sender lives in `self`, so this only ends by seeing `true`.
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// A task that is one child process.
pub(crate) struct ProcessRecord {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) core: TaskCore,
}

impl ProcessRecord {
    pub(crate) fn new(pid: u32, pidfd: OwnedFd) -> Self {
        ProcessRecord {
            pid,
            pidfd,
            core: TaskCore::new(),
        }
    }

    fn send(&self, sig: Signal) -> io::Result<()> {
        send_via_pidfd(self.pidfd.as_fd(), sig).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "sending {sig:?} to process {} through its pidfd: {e}",
                    self.pid
                ),
            )
        })
    }
}

/// What a [`TaskHandle`] is a handle on: the task's exit-code state and
/// the ways to end it and to see that it ended. A process task is a
/// [`ProcessRecord`]; a container's tree task is the container's own record
/// (`container/`), so this module knows nothing of containers.
pub(crate) trait Record: Send + Sync {
    fn core(&self) -> &TaskCore;
    /// The process id of a process task.
    fn pid(&self) -> Option<u32>;
    /// Kills the task; called once, by the terminate that chose the code.
    fn kill(&self) -> io::Result<()>;
    fn signal(&self, sig: Signal) -> io::Result<()>;
    /// Finishes the task if it is over now; whether it is finished.
    fn refresh(&self) -> bool {
        self.core().is_finished()
    }
    /// Returns once the task is finished.
    fn finished(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.core().finished())
    }
    /// What the task is, for `Debug`.
    fn describe(&self) -> String;
}

impl Record for ProcessRecord {
    fn core(&self) -> &TaskCore {
        &self.core
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn kill(&self) -> io::Result<()> {
        self.send(Signal::KILL)
    }

    fn signal(&self, sig: Signal) -> io::Result<()> {
        self.send(sig)
    }

    fn describe(&self) -> String {
        format!("process {}", self.pid)
    }
}

/// A handle on something the monitor can wait on and terminate: a process or
/// a container's whole process tree. Cloning keeps the rights; use
/// [`TaskHandle::duplicate`] to hand out fewer. The task's record lives until
/// its last handle is dropped.
#[derive(Clone)]
pub struct TaskHandle {
    task: Arc<dyn Record>,
    rights: Rights,
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &self.task.describe())
            .field("rights", &self.rights)
            .field("signaled", &self.task.core().is_finished())
            .finish()
    }
}

impl TaskHandle {
    /// A handle with every right on `record`.
    pub(crate) fn new(record: Arc<dyn Record>) -> Self {
        TaskHandle {
            task: record,
            rights: Rights::all(),
        }
    }

    fn check(&self, needed: Rights) -> Result<(), TaskError> {
        if self.rights.contains(needed) {
            Ok(())
        } else {
            Err(TaskError::AccessDenied)
        }
    }

    /// The rights this handle carries.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// A new handle on the same task with `rights`, which must be a subset of
    /// this handle's rights.
    pub fn duplicate(&self, rights: Rights) -> Result<TaskHandle, TaskError> {
        self.check(rights)?;
        Ok(TaskHandle {
            task: self.task.clone(),
            rights,
        })
    }

    /// The process id of a process task; `None` for a tree task.
    pub fn pid(&self) -> Option<u32> {
        self.task.pid()
    }

    /// [`STILL_ACTIVE`] while the task runs. Once it finished: the code given
    /// to the first [`terminate`](Self::terminate) if it was terminated before
    /// it ended by itself, else its exit status (128 + signal number when a
    /// signal killed it; 0 for a tree that emptied by itself). Needs `QUERY`.
    pub fn exit_code(&self) -> Result<i32, TaskError> {
        self.check(Rights::QUERY)?;
        self.is_signaled();
        Ok(self.task.core().exit_code())
    }

    /// Starts killing the task and returns at once: `SIGKILL` through the
    /// pidfd for a process, the container's `kill_all` for a tree. The first
    /// terminate chooses the exit code; later ones, and terminating a task
    /// that already finished, succeed and change nothing. Needs `TERMINATE`.
    pub fn terminate(&self, code: i32) -> Result<(), TaskError> {
        self.check(Rights::TERMINATE)?;
        if !self.task.refresh() && self.task.core().begin_terminate(code) {
            self.task.kill()?;
        }
        Ok(())
    }

    /// Sends `sig` to the task: through the pidfd for a process, to every
    /// process of the container for a tree. A task that is gone is success.
    /// Needs `TERMINATE`.
    pub fn signal(&self, sig: Signal) -> Result<(), TaskError> {
        self.check(Rights::TERMINATE)?;
        self.task.signal(sig)?;
        Ok(())
    }

    /// Waits until the task is gone (a process exited and was reaped; a
    /// container is empty) and returns its exit code. Every waiter is
    /// released at once. Needs `SYNCHRONIZE`. For a tree task the caller's
    /// runtime needs I/O and time enabled (see [`Container::wait_empty`]).
    /// How a process task ended on its own (exit status or signal), once
    /// it finished; `None` while it runs, and for a container.
    pub fn ended(&self) -> Option<Ended> {
        self.task.core().ended()
    }

    pub async fn wait(&self) -> Result<i32, TaskError> {
        self.check(Rights::SYNCHRONIZE)?;
        self.task.finished().await;
        Ok(self.task.core().exit_code())
    }

    /// Whether the task finished: a process exited and was reaped, or a
    /// container was seen empty. Once true it stays true.
    pub fn is_signaled(&self) -> bool {
        self.task.refresh()
    }
}
