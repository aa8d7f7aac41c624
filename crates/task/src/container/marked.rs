//! The process-group backend of a [`Container`], where there are no
//! cgroups: the resource's processes are those whose environment holds its
//! marker, and their descendants, found by scanning `/proc`.

use super::{own_pid, Container};
use crate::procfs;
use rustix::process::{kill_process_group, Pid, Signal};
use std::io;
use std::time::Duration;

/// How many scan-and-kill rounds `kill_all` makes without cgroups.
const KILL_ROUNDS: usize = 50;

impl Container {
    /// The marked processes and their descendants, with start times.
    pub(super) fn marked_processes(&self) -> Vec<(u32, Option<u64>)> {
        procfs::index()
            .snapshot()
            .marked_tree(self.inner.marker.1.as_bytes())
            .into_iter()
            .map(|s| (s.pid, Some(s.start_time)))
            .collect()
    }

    /// Signals each of `procs`, checked by start time against pid reuse.
    pub(super) fn marked_signal(
        &self,
        procs: Vec<(u32, Option<u64>)>,
        sig: Signal,
    ) -> io::Result<()> {
        let mut first_error = None;
        for (pid, start) in procs {
            if let Err(e) = procfs::signal_checked(pid, start, sig) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether process `pid`'s environment holds this resource's marker.
    pub(super) fn carries_marker(&self, pid: u32) -> bool {
        std::fs::read(
            crate::leaf::proc_root()
                .join(pid.to_string())
                .join("environ"),
        )
        .is_ok_and(|env| {
            procfs::environ_value(&env, &self.inner.marker.0)
                == Some(self.inner.marker.1.as_bytes())
        })
    }

    /// Repeats {find the processes; `SIGKILL` each and its process group}
    /// until a scan finds none, at most [`KILL_ROUNDS`] rounds.
    pub(super) fn marked_kill(&self) -> io::Result<()> {
        let index = procfs::index();
        // Read from /proc, not getpgrp/getsid: in a container both can be 0
        // (a session inherited from outside the pid namespace).
        let me = procfs::read_stat(crate::leaf::proc_root(), own_pid());
        let own_pgrp = me.as_ref().map(|s| s.pgrp);
        let own_sid = me.as_ref().map(|s| s.session);
        for _ in 0..KILL_ROUNDS {
            let procs = index.snapshot().marked_tree(self.inner.marker.1.as_bytes());
            let known: Vec<u32> = procs.iter().map(|p| p.pid).collect();
            let escaped = self.escapees(&known);
            for &(pid, start) in &escaped {
                let _ = procfs::signal_checked(pid, Some(start), Signal::KILL);
            }
            self.remember(
                &escaped
                    .iter()
                    .map(|&(pid, start)| (pid, Some(start)))
                    .collect::<Vec<_>>(),
            );
            if procs.is_empty() && escaped.is_empty() {
                return Ok(());
            }
            self.remember(
                &procs
                    .iter()
                    .map(|p| (p.pid, Some(p.start_time)))
                    .collect::<Vec<_>>(),
            );
            for p in &procs {
                if let Err(e) = procfs::signal_checked(p.pid, Some(p.start_time), Signal::KILL) {
                    tracing::warn!("killing resource {:?}: {e}", self.inner.name);
                }
            }
            // Also kill the process groups, which catch members that lost the
            // marker. Only groups that are the resource's own: led by one of
            // its processes, or in a session one of them created.
            let mut groups: Vec<u32> = procs
                .iter()
                .filter(|p| {
                    p.pgrp > 1
                        && Some(p.pgrp) != own_pgrp
                        && (Some(p.session) != own_sid || procs.iter().any(|q| q.pid == p.pgrp))
                })
                .map(|p| p.pgrp)
                .collect();
            groups.sort_unstable();
            groups.dedup();
            for pgrp in groups.into_iter().filter_map(|g| Pid::from_raw(g as i32)) {
                // Errors are ignored: ESRCH means the group is gone, and its
                // members found by the scan were signalled one by one above.
                let _ = kill_process_group(pgrp, Signal::KILL);
            }
            // Give the kernel a moment to carry the kills out before re-scanning.
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!(
            "resource {:?}: processes still found after {KILL_ROUNDS} kill rounds",
            self.inner.name
        );
        Ok(())
    }

    /// Waits until a scan finds no process of the resource.
    pub(super) async fn marked_wait_gone(&self) {
        self.wait_exits(|| {
            self.processes()
                .into_iter()
                .map(|(pid, start)| (pid, start.unwrap_or(0)))
                .collect()
        })
        .await
    }
}
