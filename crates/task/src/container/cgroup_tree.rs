//! The cgroup v2 backend of a [`Container`]: its processes are those of
//! its cgroup directory and the cgroups below it (plus any the fork tracker
//! saw leave). `cgroup.kill` kills the subtree at once, and
//! `cgroup.events` says when the last process is gone.

use super::Container;
use crate::cgroup;
use crate::procfs;
use crate::sync::lock;
use crate::tracker::tracker;
use rustix::process::Signal;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Cgroups this process wrote `cgroup.kill` to since they were made, by any
/// [`Container`] naming them (a resource type's and the monitor's are two):
/// the first `wait_empty` that sees one empty renews it.
static KILLED: std::sync::LazyLock<Mutex<HashSet<PathBuf>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashSet::new()));

impl Container {
    /// The cgroup's processes; a cgroup's list needs no start times.
    pub(super) fn cgroup_processes(dir: &Path) -> Vec<(u32, Option<u64>)> {
        cgroup::all_procs(dir)
            .into_iter()
            .map(|pid| (pid, None))
            .collect()
    }

    /// Signals `procs`: each pid pinned by a pidfd, then kept only if a
    /// second look still lists it, so a pid reused meanwhile by a process
    /// elsewhere is not signalled. No `/proc` reads, so the signals go out
    /// in one quick loop instead of one by one as the first signalled
    /// processes die. Those that left the cgroup are checked by start time.
    pub(super) fn cgroup_signal(
        &self,
        dir: &Path,
        procs: &[(u32, Option<u64>)],
        sig: Signal,
    ) -> io::Result<()> {
        let mut first_error = None;
        let mut pinned: Vec<(u32, OwnedFd)> = Vec::with_capacity(procs.len());
        for &(pid, _) in procs {
            match procfs::pidfd(pid) {
                Ok(Some(fd)) => pinned.push((pid, fd)),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut still = cgroup::all_procs(dir);
        still.sort_unstable();
        for (pid, fd) in &pinned {
            if still.binary_search(pid).is_ok() {
                if let Err(e) = procfs::send_pinned(*pid, fd, sig) {
                    first_error.get_or_insert(e);
                }
            }
        }
        for &(pid, start) in procs.iter().filter(|p| p.1.is_some()) {
            if let Err(e) = procfs::signal_checked(pid, start, sig) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes `1` to `cgroup.kill`, and kills what left the cgroup.
    pub(super) fn cgroup_kill(&self, dir: &Path) -> io::Result<()> {
        // Remembered so that `wait_empty` can wait for their reaping.
        let mut procs = self.stop_set();
        // Found outside the cgroup before (through a parent link since
        // cut): killed too.
        for (pid, start) in self.remembered_alive() {
            if !procs.iter().any(|p| p.0 == pid) {
                procs.push((pid, Some(start)));
            }
        }
        self.remember(&procs);
        lock(&KILLED).insert(dir.to_path_buf());
        let killed = match cgroup::write_file(&dir.join("cgroup.kill"), "1") {
            // A removed cgroup was empty.
            Err(e) if cgroup::is_gone(&e) => Ok(()),
            other => other,
        };
        // Those that left the cgroup die with it.
        for &(pid, start) in procs.iter().filter(|p| p.1.is_some()) {
            if let Err(e) = procfs::signal_checked(pid, start, Signal::KILL) {
                tracing::warn!("killing resource {:?}: {e}", self.inner.name);
            }
        }
        killed
    }

    /// Empty, and nothing of it left elsewhere.
    pub(super) fn cgroup_is_empty(&self, dir: &Path) -> bool {
        match cgroup::populated(dir) {
            Ok(populated) => {
                !populated
                    && self.escapees(&[]).is_empty()
                    && (tracker().is_active() || self.remembered_alive().is_empty())
            }
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        }
    }

    /// Sleeps on `cgroup.events` until the cgroup is empty, then waits for
    /// what is left of the resource outside it; polls when the file cannot
    /// be watched.
    pub(super) async fn cgroup_wait_unpopulated(&self, dir: &Path) {
        match watch_events(dir).await {
            // Empty: what is left of it is outside, if anything.
            Ok(()) => {
                return self
                    .wait_exits(|| {
                        let mut left = self.escapees(&[]);
                        if !tracker().is_active() {
                            left.extend(self.remembered_alive());
                        }
                        left
                    })
                    .await
            }
            Err(e) => tracing::warn!("watching {}: {e}; polling instead", dir.display()),
        }
        let mut delay = Duration::from_millis(2);
        while !self.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

/// A cgroup killed through `cgroup.kill` is replaced by a new, empty one of
/// the same name once it is empty, so that the next process can be born
/// into it (see [`cgroup::renew`]).
pub(super) fn renew_if_killed(dir: &Path) {
    let killed = lock(&KILLED).remove(dir);
    if killed {
        if let Err(e) = cgroup::renew(dir) {
            // Something was started meanwhile: the next spawn joins by
            // cgroup.procs instead.
            tracing::debug!("renewing {}: {e}", dir.display());
            if !dir.is_dir() {
                tracing::warn!("renewing {}: {e}", dir.display());
            }
        }
    }
}

/// Waits for `populated 0` in `dir/cgroup.events`.
async fn watch_events(dir: &Path) -> io::Result<()> {
    let path = dir.join("cgroup.events");
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if cgroup::is_gone(&e) => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("opening {}: {e}", path.display()),
            ))
        }
    };
    // SAFETY: the AsyncFd owns the File, so the descriptor stays open and
    // names the same file description for the AsyncFd's whole life.
    let events = unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }
        .map_err(|e| e.into_parts().1)?;
    let mut buf = [0_u8; 256];
    loop {
        // Read first, then sleep: a change after the read raises a new edge.
        match events.get_ref().read_at(&mut buf, 0) {
            Ok(n) => {
                if cgroup::parse_populated(&String::from_utf8_lossy(&buf[..n])) == Some(false) {
                    return Ok(());
                }
            }
            Err(e) if cgroup::is_gone(&e) => return Ok(()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                ))
            }
        }
        match tokio::time::timeout(Duration::from_secs(1), events.ready(Interest::PRIORITY)).await {
            Ok(Ok(mut guard)) => guard.clear_ready(),
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => {}
        }
    }
}
