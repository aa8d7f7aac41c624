//! The fence guard: a small process per node that kills the node's
//! resources when the monitor can no longer prove it may run them.
//!
//! The monitor computes how long its lease lets it run its groups (see
//! [`lease`](crate::lease)) and fences them itself before that. But a
//! monitor that is killed or frozen (SIGKILL, SIGSTOP, a hung machine
//! thread) fences nothing, and its resources would overlap with the new
//! owner's once the lease expires in etcd. The guard holds the deadline
//! for it: the monitor *arms* it with "may run until `T`" (on
//! `CLOCK_BOOTTIME`) and the scopes of every resource of the groups it
//! owns, re-arming on each acknowledged lease renewal. If `T` passes with
//! no newer arm, the guard kills every scope (`cgroup.kill`, or the
//! process-group and marker fallback of [`resmon_task::Container`]).
//!
//! Why a separate process, and why so small: it must survive whatever
//! stops the monitor, so it runs in a session of its own, outside every
//! resource's cgroup, ignores the stop signals while armed, locks its
//! memory, and does nothing but wait on a `timerfd` on `CLOCK_BOOTTIME`
//! (which counts suspend, like the lease does) and a socket.
//!
//! When the monitor dies (SIGKILL, a crash), its socket closes. Waiting
//! for the deadline would keep the node's groups from every other node
//! for a whole lease, so the guard ends the lease itself, in this order:
//!
//! 1. it waits `reattach_grace` (the monitor's `Attach` says how long) for
//!    a monitor to come back: a monitor started again in time connects to
//!    the guard's listening socket (`Attach.listen`), takes over the
//!    guard, its deadline and its lease, and nothing is killed;
//! 2. it checks the monitor's process is gone (the guard's parent
//!    changed), kills every scope and waits until each is seen empty
//!    (`populated 0` in `cgroup.events`, or no marked process left);
//! 3. only then it revokes the node's lease in etcd (it was told the lease
//!    in each `Arm`, and how to reach etcd in the `Attach`): etcd deletes
//!    the owner keys at once and the next nodes in line take the groups.
//!
//! If the kill is not confirmed, the monitor's process still runs, or etcd
//! does not answer within a bound well under the deadline, the guard
//! leaves the lease alone: it expires in etcd as it would have without
//! the guard, and the deadline fence stands as before. A monitor that is
//! frozen (SIGSTOP) keeps its socket open and its process: the guard
//! fences at the deadline as before and leaves the lease alone, because a
//! monitor that wakes up may still renew it and start resources before it
//! reads the guard's report; only the lease's expiry, which the monitor
//! sees for itself, ends its groups safely then.
//!
//! As a last resort, the guard can hold a watchdog device (`/dev/watchdog`
//! with `softdog`), off by default: if the guard itself stops, or cannot
//! get everything killed, nobody pets the watchdog and the kernel resets
//! the machine.
//!
//! Pieces:
//! * [`run`] is the guard's main loop, for resmon's hidden
//!   `resmon fence-guard [--watchdog PATH]` subcommand, with its socket
//!   from [`take_socket`];
//! * [`GuardClient`] is the monitor's side: [`GuardClient::spawn`] starts
//!   the guard and connects, [`GuardClient::attach`] tells it how to reach
//!   etcd, [`GuardClient::arm_lease`] and [`GuardClient::disarm`] feed it;
//! * [`protocol`] is the wire format (JSON lines).

mod client;
pub mod protocol;
mod server;

pub use client::{command, GuardClient, GuardError, SUBCOMMAND};
pub use protocol::{FenceReport, GuardStatus, LeaseAction};
pub use server::{
    run, take_socket, GuardOptions, EXIT_CLEAN, EXIT_FENCED, EXIT_FENCE_INCOMPLETE, EXIT_SETUP,
};
