//! Finding processes in `/proc`, and signalling them without pid races.
//!
//! Where there is no cgroup, a resource's processes are those whose
//! environment carries its marker variable, plus all their descendants. The
//! scan takes the `/proc` root as a parameter so it is tested on a fake tree.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use rustix::process::{pidfd_open, Pid, PidfdFlags, Signal};

use crate::handle::send_via_pidfd;

/// The fields of `/proc/PID/stat` this crate uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// Clock ticks after boot; with the pid it identifies a process.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie or dead process: it runs no code and is waiting to be reaped.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid pgrp session ...`, where
/// `comm` may hold spaces and parentheses (so we split at the last `)`), and
/// the start time is field 22.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Reads and parses `<proc_root>/<pid>/stat`.
pub(crate) fn read_stat(proc_root: &Path, pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?)
}

/// Whether a `/proc/PID/environ` blob (NUL-separated) holds `entry` (`NAME=VALUE`).
pub(crate) fn environ_has(environ: &[u8], entry: &[u8]) -> bool {
    environ.split(|b| *b == 0).any(|e| e == entry)
}

/// Every live process under `proc_root` whose environment holds `marker`
/// (`NAME=VALUE`), plus all their live descendants (by parent pid). `exclude`
/// (the monitor itself) is never part of it. Zombies are left out: they are
/// already dead.
pub(crate) fn marked_tree(proc_root: &Path, marker: &[u8], exclude: u32) -> Vec<ProcStat> {
    tree_where(proc_root, exclude, |env| environ_has(env, marker))
}

/// Whether a `/proc/PID/environ` blob holds an entry starting with `prefix`.
pub(crate) fn environ_has_prefix(environ: &[u8], prefix: &[u8]) -> bool {
    environ.split(|b| *b == 0).any(|e| e.starts_with(prefix))
}

/// Like [`marked_tree`], with the processes that start the tree chosen by
/// `starts(environ)`.
pub(crate) fn tree_where(
    proc_root: &Path,
    exclude: u32,
    starts: impl Fn(&[u8]) -> bool,
) -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let all: Vec<ProcStat> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != exclude)
        .filter_map(|pid| read_stat(proc_root, pid))
        .filter(|s| !s.is_dead())
        .collect();
    let mut children: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, s) in all.iter().enumerate() {
        children.entry(s.ppid).or_default().push(i);
    }
    let mut chosen = vec![false; all.len()];
    let mut queue: Vec<usize> = (0..all.len())
        .filter(|&i| {
            fs::read(proc_root.join(all[i].pid.to_string()).join("environ"))
                .is_ok_and(|env| starts(&env))
        })
        .collect();
    while let Some(i) = queue.pop() {
        if std::mem::replace(&mut chosen[i], true) {
            continue;
        }
        if let Some(kids) = children.get(&all[i].pid) {
            queue.extend(kids.iter().copied().filter(|&k| !chosen[k]));
        }
    }
    all.into_iter()
        .zip(chosen)
        .filter_map(|(s, c)| c.then_some(s))
        .collect()
}

/// Sends `sig` to `pid` if it is still the process that started at
/// `start_time` (when given). The pidfd pins one process; checking its start
/// time after opening it rules out a pid reused since the scan. A process
/// that is gone is success.
pub(crate) fn signal_checked(pid: u32, start_time: Option<u64>, sig: Signal) -> io::Result<()> {
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("opening a pidfd for process {pid}: {e}"),
            ))
        }
    };
    if let Some(t) = start_time {
        if read_stat(Path::new("/proc"), pid).map(|s| s.start_time) != Some(t) {
            return Ok(());
        }
    }
    send_via_pidfd(&pidfd, sig)
        .map_err(|e| io::Error::new(e.kind(), format!("sending {sig:?} to process {pid}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(pid: u32, comm: &str, state: char, ppid: u32, pgrp: u32, sid: u32) -> String {
        format!(
            "{pid} ({comm}) {state} {ppid} {pgrp} {sid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {} 1000 200",
            1000 + pid
        )
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = parse_stat(&stat_line(42, "we ird) (x", 'S', 1, 42, 7)).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 42,
                state: 'S',
                ppid: 1,
                pgrp: 42,
                session: 7,
                start_time: 1042
            }
        );
        assert!(parse_stat("42 (x) S 1").is_none());
        assert!(parse_stat("").is_none());
    }

    #[test]
    fn environ_entries_match_exactly() {
        let env = b"A=1\0RESMON_RESOURCE=9/web\0B=2\0";
        assert!(environ_has(env, b"RESMON_RESOURCE=9/web"));
        assert!(!environ_has(env, b"RESMON_RESOURCE=9/we"));
        assert!(!environ_has(b"", b"A=1"));
    }

    #[test]
    fn marked_tree_follows_descendants_and_skips_zombies() {
        let tmp = tempfile::tempdir().unwrap();
        let add = |pid: u32, ppid: u32, state: char, env: &[u8]| {
            let dir = tmp.path().join(pid.to_string());
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("stat"), stat_line(pid, "p", state, ppid, pid, pid)).unwrap();
            fs::write(dir.join("environ"), env).unwrap();
        };
        let mark = b"M=1/r\0".as_slice();
        add(1, 0, 'S', b"");
        add(10, 1, 'S', b""); // the monitor (excluded), parent of the resource
        add(11, 10, 'S', mark); // the resource's main process
        add(12, 11, 'S', b"CLEAN=1\0"); // a child that cleared its environment
        add(13, 12, 'R', b""); // and its child
        add(14, 10, 'S', mark); // an orphan re-parented to the monitor
        add(15, 11, 'Z', b""); // a zombie
        add(20, 1, 'S', b"M=1/other\0"); // another resource
        add(21, 10, 'S', b""); // unrelated
        fs::create_dir(tmp.path().join("self")).unwrap();

        let mut pids: Vec<u32> = marked_tree(tmp.path(), b"M=1/r", 10)
            .iter()
            .map(|s| s.pid)
            .collect();
        pids.sort_unstable();
        assert_eq!(pids, vec![11, 12, 13, 14]);
        assert!(marked_tree(&tmp.path().join("missing"), b"M=1/r", 10).is_empty());
    }
}
