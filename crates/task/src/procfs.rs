//! Finding processes in `/proc`, and signalling them without pid races.
//!
//! Where there is no cgroup, a resource's processes are those whose
//! environment carries its marker variable, plus all their descendants. The
//! scan takes the `/proc` root as a parameter so it is tested on a fake tree.

use crate::sync::lock;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use rustix::process::{pidfd_open, Pid, PidfdFlags, Signal};

use crate::leaf::send_via_pidfd;
use crate::leaf::MARKER_VAR;

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
    /// Forked and not exec'ed yet (`PF_FORKNOEXEC`).
    pub forked_no_exec: bool,
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
        forked_no_exec: fields.get(6)?.parse::<u32>().ok()? & PF_FORKNOEXEC != 0,
    })
}

/// Reads and parses `<proc_root>/<pid>/stat`.
pub(crate) fn read_stat(proc_root: &Path, pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?)
}

/// The value of variable `var` in a `/proc/PID/environ` blob (NUL-separated
/// `NAME=VALUE` entries), the first one as `getenv` finds it.
pub(crate) fn environ_value<'a>(environ: &'a [u8], var: &str) -> Option<&'a [u8]> {
    environ.split(|b| *b == 0).find_map(|e| {
        e.strip_prefix(var.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

/// One look at every live process: what [`ProcIndex`] hands out.
pub(crate) struct Snapshot {
    procs: Vec<ProcStat>,
    /// The marker variable's value in each process's environment.
    marks: Vec<Option<Arc<[u8]>>>,
    children: HashMap<u32, Vec<usize>>,
}

impl Snapshot {
    /// Every process marked with exactly `value`, plus all their live
    /// descendants (by parent pid).
    pub(crate) fn marked_tree(&self, value: &[u8]) -> Vec<ProcStat> {
        let marked = (0..self.procs.len())
            .filter(|&i| self.marks[i].as_deref() == Some(value))
            .collect();
        self.trees(marked, |_| true)
    }

    /// The live descendants of `roots` that are not among them.
    pub(crate) fn descendants(&self, roots: &[u32]) -> Vec<ProcStat> {
        let children = roots.iter().flat_map(|r| self.children_of(*r)).collect();
        self.trees(children, |p| !roots.contains(&p.pid))
    }

    /// The live children of `parent` that `keep` does not keep, with all
    /// their descendants.
    pub(crate) fn children_trees(&self, parent: u32, keep: impl Fn(u32) -> bool) -> Vec<ProcStat> {
        let children = self
            .children_of(parent)
            .filter(|&k| !keep(self.procs[k].pid))
            .collect();
        self.trees(children, |_| true)
    }

    /// The indices of `pid`'s children.
    fn children_of(&self, pid: u32) -> impl Iterator<Item = usize> + '_ {
        self.children.get(&pid).into_iter().flatten().copied()
    }

    /// The live processes at `start` (indices) and all their descendants
    /// that `want` takes.
    fn trees(&self, mut queue: Vec<usize>, want: impl Fn(&ProcStat) -> bool) -> Vec<ProcStat> {
        let mut chosen = vec![false; self.procs.len()];
        while let Some(i) = queue.pop() {
            if std::mem::replace(&mut chosen[i], true) {
                continue;
            }
            queue.extend(self.children_of(self.procs[i].pid).filter(|&k| !chosen[k]));
        }
        self.procs
            .iter()
            .zip(chosen)
            .filter(|&(p, c)| c && !p.is_dead() && want(p))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Every live marked process with its marker value.
    pub(crate) fn marked(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.procs
            .iter()
            .zip(&self.marks)
            .filter(|(p, _)| !p.is_dead())
            .filter_map(|(p, m)| Some((p.pid, m.as_deref()?)))
    }

    /// The distinct marker values of live processes.
    pub(crate) fn marks(&self) -> std::collections::BTreeSet<&[u8]> {
        self.marks.iter().flatten().map(|v| &v[..]).collect()
    }
}

/// The marker found in one process's environment, kept across scans.
struct Verdict {
    start_time: u64,
    mark: Option<Arc<[u8]>>,
    /// Whether it is to be believed from now on: a marker found is; no
    /// marker is only once two reads in two scans agree.
    confirmed: bool,
}

#[derive(Default)]
struct IndexState {
    /// Markers read from processes that have exec'ed: their environment no
    /// longer changes, so it is read once per process, not once per scan.
    verdicts: HashMap<u32, Verdict>,
    /// The newest snapshot and when its scan began.
    latest: Option<(Instant, Arc<Snapshot>)>,
    /// Whether a scan is running (its result is announced on `done`).
    scanning: bool,
}

/// Finds resources' processes without cgroups, by the marker variable in
/// their environment, for every container of the monitor at once.
///
/// A scan reads `/proc/PID/stat` of every process, and `/proc/PID/environ`
/// only of processes it has not seen exec since it last looked: a process
/// that has exec'ed (`PF_FORKNOEXEC` clear) keeps its environment, while
/// one still between `fork` and `exec` (a `vfork` child shows its parent's
/// environment), or in the middle of an exec (an empty environment), is
/// read again next time. Callers that ask at the same
/// moment share one scan: [`snapshot`](Self::snapshot) returns a snapshot
/// whose scan began after the call did, so it is never older than the
/// question, yet a thousand resources checked together cost one scan, not
/// a thousand.
pub(crate) struct ProcIndex {
    root: PathBuf,
    var: String,
    /// The monitor itself, never part of a resource.
    exclude: u32,
    state: Mutex<IndexState>,
    done: Condvar,
}

/// Flags bit of `/proc/PID/stat`: forked and not exec'ed yet.
const PF_FORKNOEXEC: u32 = 0x40;

impl ProcIndex {
    pub(crate) fn new(root: impl Into<PathBuf>, var: &str, exclude: u32) -> ProcIndex {
        ProcIndex {
            root: root.into(),
            var: var.to_owned(),
            exclude,
            state: Mutex::new(IndexState::default()),
            done: Condvar::new(),
        }
    }

    /// A snapshot of every live process taken after this call began.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let asked = Instant::now();
        let mut st = lock(&self.state);
        loop {
            if let Some((began, snap)) = &st.latest {
                if *began >= asked {
                    return snap.clone();
                }
            }
            if !st.scanning {
                break;
            }
            // A scan that began before we asked may miss what we look for:
            // wait for it, then for (or make) the next one.
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.scanning = true;
        let verdicts = std::mem::take(&mut st.verdicts);
        drop(st);
        let began = Instant::now();
        // Announces the end of the scan even if it unwinds.
        struct Finish<'a>(
            &'a ProcIndex,
            Option<(HashMap<u32, Verdict>, Arc<Snapshot>)>,
            Instant,
        );
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let mut st = lock(&self.0.state);
                st.scanning = false;
                if let Some((verdicts, snap)) = self.1.take() {
                    st.verdicts = verdicts;
                    st.latest = Some((self.2, snap));
                }
                self.0.done.notify_all();
            }
        }
        let mut finish = Finish(self, None, began);
        let (verdicts, snap) = self.scan(verdicts);
        let snap = Arc::new(snap);
        finish.1 = Some((verdicts, snap.clone()));
        snap
    }

    fn scan(&self, mut old: HashMap<u32, Verdict>) -> (HashMap<u32, Verdict>, Snapshot) {
        let mut verdicts = HashMap::with_capacity(old.len());
        let mut procs = Vec::new();
        let mut marks = Vec::new();
        let entries = fs::read_dir(&self.root).into_iter().flatten().flatten();
        for pid in entries.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
            if pid == self.exclude {
                continue;
            }
            let Some(stat) = read_stat(&self.root, pid) else {
                continue;
            };
            if stat.is_dead() {
                continue;
            }
            let prior = old.remove(&pid).filter(|v| v.start_time == stat.start_time);
            let (mark, settled, confirmed) = match prior {
                Some(v) if v.confirmed => (v.mark, true, true),
                prior => match fs::read(self.root.join(pid.to_string()).join("environ")) {
                    // Empty in the middle of an exec (the new environment is
                    // put in place after PF_FORKNOEXEC is cleared): read
                    // again next time, like one that could not be read.
                    Ok(env) if !env.is_empty() => {
                        let mark = environ_value(&env, &self.var).map(Arc::from);
                        // Inside an exec a read can also give something that
                        // is neither environment, with PF_FORKNOEXEC already
                        // clear (seen here: a marked process read unmarked,
                        // then kept unmarked for good). A marker found is
                        // believed; its absence once a second read agrees.
                        let confirmed = mark.is_some() || prior.is_some_and(|p| p.mark.is_none());
                        (mark, !stat.forked_no_exec, confirmed)
                    }
                    _ => (None, false, false),
                },
            };
            if settled {
                verdicts.insert(
                    pid,
                    Verdict {
                        start_time: stat.start_time,
                        mark: mark.clone(),
                        confirmed,
                    },
                );
            }
            procs.push(stat);
            marks.push(mark);
        }
        let mut children: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, s) in procs.iter().enumerate() {
            children.entry(s.ppid).or_default().push(i);
        }
        (
            verdicts,
            Snapshot {
                procs,
                marks,
                children,
            },
        )
    }
}

/// The index of this process's `/proc` by [`MARKER_VAR`], shared by every
/// container.
pub(crate) fn index() -> &'static ProcIndex {
    static INDEX: OnceLock<ProcIndex> = OnceLock::new();
    INDEX.get_or_init(|| ProcIndex::new(crate::leaf::proc_root(), MARKER_VAR, std::process::id()))
}

/// A pidfd for `pid`; `None` if no such process is left.
pub(crate) fn pidfd(pid: u32) -> io::Result<Option<OwnedFd>> {
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(None);
    };
    match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("opening a pidfd for process {pid}: {e}"),
        )),
    }
}

/// Sends `sig` to `pid` if it is still the process that started at
/// `start_time` (when given). The pidfd pins one process; checking its start
/// time after opening it rules out a pid reused since the scan. A process
/// that is gone is success.
pub(crate) fn signal_checked(pid: u32, start_time: Option<u64>, sig: Signal) -> io::Result<()> {
    let Some(pidfd) = pidfd(pid)? else {
        return Ok(());
    };
    if let Some(t) = start_time {
        if read_stat(crate::leaf::proc_root(), pid).map(|s| s.start_time) != Some(t) {
            return Ok(());
        }
    }
    send_pinned(pid, &pidfd, sig)
}

/// Sends `sig` through `pidfd`, the pidfd of `pid`; a process that is
/// already gone is success.
pub(crate) fn send_pinned(pid: u32, pidfd: &OwnedFd, sig: Signal) -> io::Result<()> {
    send_via_pidfd(pidfd, sig)
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
                start_time: 1042,
                forked_no_exec: false,
            }
        );
        assert!(parse_stat("42 (x) S 1").is_none());
        assert!(parse_stat("").is_none());
    }

    #[test]
    fn environ_values_are_found_by_name() {
        let env = b"A=1\0RESMON_RESOURCE=9/web\0B=2\0RESMON_RESOURCE=9/late\0";
        assert_eq!(environ_value(env, "RESMON_RESOURCE"), Some(&b"9/web"[..]));
        assert_eq!(environ_value(env, "A"), Some(&b"1"[..]));
        assert_eq!(environ_value(env, "RESMON_RESOURC"), None);
        assert_eq!(environ_value(b"", "A"), None);
    }

    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new() -> FakeProc {
            let tmp = tempfile::tempdir().unwrap();
            fs::create_dir(tmp.path().join("self")).unwrap();
            FakeProc(tmp)
        }

        fn add(&self, pid: u32, ppid: u32, state: char, env: &[u8]) {
            let dir = self.0.path().join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("stat"), stat_line(pid, "p", state, ppid, pid, pid)).unwrap();
            fs::write(dir.join("environ"), env).unwrap();
        }

        fn index(&self) -> ProcIndex {
            ProcIndex::new(self.0.path(), "M", 10)
        }
    }

    fn pids(procs: Vec<ProcStat>) -> Vec<u32> {
        let mut pids: Vec<u32> = procs.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        pids
    }

    #[test]
    fn marked_tree_follows_descendants_and_skips_zombies() {
        let fake = FakeProc::new();
        let mark = b"M=1/r\0".as_slice();
        fake.add(1, 0, 'S', b"");
        fake.add(10, 1, 'S', mark); // the monitor (excluded), parent of the resource
        fake.add(11, 10, 'S', mark); // the resource's main process
        fake.add(12, 11, 'S', b"CLEAN=1\0"); // a child that cleared its environment
        fake.add(13, 12, 'R', b""); // and its child
        fake.add(14, 10, 'S', mark); // an orphan re-parented to the monitor
        fake.add(15, 11, 'Z', b""); // a zombie
        fake.add(20, 1, 'S', b"M=1/other\0"); // another resource
        fake.add(21, 10, 'S', b""); // unrelated

        let snap = fake.index().snapshot();
        assert_eq!(pids(snap.marked_tree(b"1/r")), vec![11, 12, 13, 14]);
        assert_eq!(pids(snap.marked_tree(b"1/other")), vec![20]);
        assert!(snap.marked_tree(b"1/none").is_empty());
        let marks: Vec<&[u8]> = snap.marks().into_iter().collect();
        assert_eq!(marks, vec![&b"1/other"[..], &b"1/r"[..]]);
        // Descendants by parent links, whatever their marker.
        assert_eq!(pids(snap.descendants(&[11])), vec![12, 13]);
        // The monitor's children it does not keep, and their trees.
        let orphans = snap.children_trees(10, |p| p == 11);
        assert_eq!(pids(orphans), vec![14, 21]);
        let missing = ProcIndex::new(fake.0.path().join("missing"), "M", 10);
        assert!(missing.snapshot().marked_tree(b"1/r").is_empty());
    }

    #[test]
    fn environments_are_read_again_only_before_exec_or_for_a_new_process() {
        let fake = FakeProc::new();
        fake.add(11, 1, 'S', b"M=1/r\0");
        let index = fake.index();
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![11]);

        // After exec, the environment is read once: a later change (a
        // process rewriting its own memory) is not followed.
        fake.add(11, 1, 'S', b"");
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![11]);

        // A new process under the same pid is read anew.
        let dir = fake.0.path().join("11");
        let reused = stat_line(11, "p", 'S', 1, 11, 11).replace(" 1011 1000", " 5000 1000");
        fs::write(dir.join("stat"), reused).unwrap();
        assert!(index.snapshot().marked_tree(b"1/r").is_empty());

        // A vfork child shows its parent's environment until it exec's
        // (PF_FORKNOEXEC in the flags, field 9): it is read again each time.
        let forked =
            |pid: u32| stat_line(pid, "p", 'S', 1, pid, pid).replace(" 4194560 ", " 4194624 ");
        fake.add(30, 1, 'S', b"");
        fs::write(fake.0.path().join("30/stat"), forked(30)).unwrap();
        assert!(index.snapshot().marked_tree(b"1/r").is_empty());
        fs::write(fake.0.path().join("30/environ"), b"M=1/r\0").unwrap();
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![30]);

        // In the middle of an exec the environment reads empty: read again.
        fake.add(31, 1, 'S', b"");
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![30]);
        fs::write(fake.0.path().join("31/environ"), b"M=1/r\0").unwrap();
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![30, 31]);
    }

    #[test]
    fn no_marker_is_believed_only_once_two_reads_agree() {
        let fake = FakeProc::new();
        // Read inside an exec: an environment, but not the process's own.
        fake.add(40, 1, 'D', b"OTHER=1\0");
        let index = fake.index();
        assert!(index.snapshot().marked_tree(b"1/r").is_empty());
        // Its own environment is in place by the next scan: it is read
        // again, and found.
        fake.add(40, 1, 'S', b"M=1/r\0");
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![40]);

        // A process without the marker read twice is not read again.
        fake.add(41, 1, 'S', b"OTHER=1\0");
        index.snapshot();
        index.snapshot();
        fs::write(fake.0.path().join("41/environ"), b"M=1/r\0").unwrap();
        assert_eq!(pids(index.snapshot().marked_tree(b"1/r")), vec![40]);
    }

    #[test]
    fn callers_share_a_scan_that_began_after_they_asked() {
        let fake = FakeProc::new();
        fake.add(11, 1, 'S', b"M=1/r\0");
        let index = fake.index();
        let first = index.snapshot();
        // A process that appears after a snapshot is in the next one.
        fake.add(12, 1, 'S', b"M=1/r\0");
        let second = index.snapshot();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(pids(second.marked_tree(b"1/r")), vec![11, 12]);

        // Many threads asking together all get a snapshot that saw pid 13.
        fake.add(13, 1, 'S', b"M=1/r\0");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| pids(index.snapshot().marked_tree(b"1/r"))))
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), vec![11, 12, 13]);
            }
        });
    }
}
