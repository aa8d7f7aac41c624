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
//! (which counts suspend, like the lease does) and a socket. When the
//! monitor's socket closes while armed, the guard keeps the last deadline
//! the monitor proved and kills when it passes: the monitor may be gone,
//! but its lease lives on in etcd until then, so the resources may too.
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
//!   the guard and connects, [`GuardClient::arm`] and
//!   [`GuardClient::disarm`] feed it;
//! * [`protocol`] is the wire format (JSON lines).

mod client;
pub mod protocol;
mod server;

pub use client::{command, GuardClient, GuardError, SUBCOMMAND};
pub use protocol::{FenceReport, GuardStatus};
pub use server::{
    run, take_socket, GuardOptions, EXIT_CLEAN, EXIT_FENCED, EXIT_FENCE_INCOMPLETE, EXIT_SETUP,
};
