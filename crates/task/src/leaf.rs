//! What every other module of the crate shares and that depends on none
//! of them: the marker variable, where `/proc` is, and sending a signal
//! through a pidfd. Keeping these here keeps the modules' imports a tree.

use rustix::process::{pidfd_send_signal, Signal};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

/// The environment variable that marks a resource's processes.
pub const MARKER_VAR: &str = "RESMON_RESOURCE";

/// Where the kernel's process table is read. Readers take a root as a
/// parameter (tests hand them a tree of their own); the monitor passes
/// this one.
pub(crate) fn proc_root() -> &'static Path {
    Path::new("/proc")
}

/// Sends `sig` through a pidfd; a process that is already gone is success.
pub(crate) fn send_via_pidfd(pidfd: impl AsFd, sig: Signal) -> io::Result<()> {
    match pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
