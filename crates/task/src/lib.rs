//! Tasks: the things resmon can wait on and terminate, and the processes behind them.
//!
//! This crate owns everything that touches child processes:
//!
//! * **Reaping** ([`Reaper`]). One thread per process, with its own
//!   current-thread tokio runtime, reaps every child of the monitor. The monitor
//!   is made a *child subreaper*, so descendants that double-fork or call
//!   `setsid` are re-parented to it when their parent dies, and are reaped here
//!   too: no zombie is left behind. The thread wakes on `SIGCHLD` and, for each
//!   process task, on its pidfd becoming readable, so an exit is seen at once.
//!   It peeks the next zombie with `waitid(P_ALL, WNOWAIT)`; a registered task is
//!   reaped through its pidfd and its status handed to the task's record, any
//!   other child is an orphan and is reaped by pid. Because `waitpid` is
//!   process-wide, nothing else in the process may wait for children: spawn
//!   only through [`Reaper::spawn`], never through `std::process::Child::wait`
//!   or `tokio::process`, whose statuses the reaper would steal.
//! * **Spawning** ([`Reaper::spawn`], [`SpawnSpec`]). A child joins its
//!   resource's cgroup (and, if asked, a new session) between `fork` and `exec`,
//!   so it never runs a single instruction of its program outside the
//!   resource, and neither can anything it starts.
//! * **Task handles** ([`TaskHandle`]). The Windows `TerminateThread` /
//!   `TerminateProcess` semantics of docs/design.md §5: rights checked on every
//!   call, [`STILL_ACTIVE`] while running, the first `terminate` choosing the
//!   exit code, asynchronous termination, `wait` releasing every waiter at once.
//!   A process is signalled only through its pidfd, so a pid is never signalled
//!   after it was reaped and possibly reused.
//! * **Containers** ([`Containers`], [`Container`]). Where a resource's
//!   processes live, so that rung 3 of the termination ladder can kill all of
//!   them: a cgroup v2 directory per resource (killed atomically with
//!   `cgroup.kill`, emptiness watched through `cgroup.events`) or, where cgroups
//!   are not usable, an environment marker plus process groups, found by
//!   scanning `/proc` and killed in rounds until a scan finds nothing.
//!
//! Why processes at all: a forced stop must free every lock, file and page of
//! the code it stops, and only the kernel tearing down a process does that.

mod abort;
mod cgroup;
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod clone3;
mod container;
mod handle;
mod leaf;
mod procfs;
mod reaper;
mod signal;
mod spawn;
mod sync;
mod tracker;

pub use abort::{Cancelled, CheckAbort, Watched};
pub use container::{unowned_processes, Container, Containers, InstanceClaim, MARKER_VAR};
pub use handle::{Ended, TaskHandle};
pub use reaper::Reaper;
pub use resmon_contract::STILL_ACTIVE;
pub use signal::{parse_signal, signal_name, SignalError};
pub use spawn::{children_born_in_cgroup, raise_fd_limit, Output, SpawnSpec, MAX_ARG_STRLEN};
pub use sync::lock;

/// Whether forks are followed through the kernel's process connector, so
/// that a process that leaves its resource's cgroup is still the
/// resource's (root only; see the containers' docs).
pub fn follows_forks() -> bool {
    tracker::tracker().is_active()
}

/// When process `pid` started (field 22 of `/proc/PID/stat`, in clock
/// ticks since boot): with the pid, it names one process for good.
pub fn process_start_time(pid: u32) -> Option<u64> {
    procfs::read_stat(crate::leaf::proc_root(), pid).map(|s| s.start_time)
}

bitflags::bitflags! {
    /// What a [`TaskHandle`] allows its holder to do.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Rights: u32 {
        /// Read the exit code.
        const QUERY = 1;
        /// Wait for the task to finish.
        const SYNCHRONIZE = 2;
        /// Terminate or signal the task.
        const TERMINATE = 4;
    }
}

/// Why an operation on a task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The handle lacks the right the operation needs; nothing was changed.
    #[error("access denied")]
    AccessDenied,
    /// The operating system refused.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
