//! Following a resource's processes wherever they go: the second net under
//! the cgroup.
//!
//! A cgroup holds what is born in it, but a process running as root can
//! write its own pid into another cgroup's `cgroup.procs` (where the
//! hierarchy is not mounted with `nsdelegate`, even from a cgroup namespace
//! of its own) and so leave the resource: `cgroup.kill` and `populated 0`
//! no longer see it. The kernel's process connector (netlink,
//! `PROC_EVENT_FORK` / `PROC_EVENT_EXIT`, root only) tells of every fork as
//! it happens, so the tracker keeps, for each resource, every process ever
//! forked from one of its processes, wherever it went since. A container
//! adds the ones no longer in its cgroup (or marker scan) to what it
//! signals, kills and waits for.
//!
//! * A process the monitor spawns into a resource is registered by the
//!   reaper once `clone` returns; forks its children made before that are
//!   kept for a moment in a short list of forks of unknown parents and
//!   claimed at registration, so none slips through.
//! * Every member is named by pid and start time: a pid that was reused
//!   after an exit event was missed never counts.
//! * Where the connector is not available (not root, not in the initial
//!   namespaces), nothing is tracked and the containers rely on the cgroup
//!   and the marker scan alone.

use crate::sync::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use crate::procfs;

/// How many forks of unknown parents are kept for a registration to claim.
const RECENT: usize = 4096;

#[derive(Default)]
struct State {
    /// pid -> (resource key, start time).
    members: HashMap<u32, (Arc<str>, u64)>,
    /// resource key -> its member pids.
    by_key: HashMap<Arc<str>, HashSet<u32>>,
    /// Forks whose parent was not a member when they were seen, by child:
    /// (parent, when it forked in `CLOCK_MONOTONIC` nanoseconds).
    recent: HashMap<u32, (u32, u64)>,
    /// The same forks, oldest first, as (child, when): what to forget first.
    recent_order: VecDeque<(u32, u64)>,
}

impl State {
    fn add(&mut self, pid: u32, key: Arc<str>) {
        let Some(start) = procfs::read_stat(crate::leaf::proc_root(), pid).map(|s| s.start_time)
        else {
            return;
        };
        self.by_key.entry(key.clone()).or_default().insert(pid);
        if let Some((old, _)) = self.members.insert(pid, (key.clone(), start)) {
            if old != key {
                if let Some(set) = self.by_key.get_mut(&old) {
                    set.remove(&pid);
                }
            }
        }
    }

    fn remove(&mut self, pid: u32) {
        if let Some((key, _)) = self.members.remove(&pid) {
            if let Some(set) = self.by_key.get_mut(&key) {
                set.remove(&pid);
                if set.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// A fork at `at` (monotonic ns): the child of a member is a member of
    /// the same resource; other forks are kept a while for a registration
    /// to claim.
    fn fork(&mut self, parent: u32, child: u32, at: u64) {
        match self.members.get(&parent) {
            Some((key, _)) => {
                let key = key.clone();
                self.add(child, key);
            }
            None => {
                if self.recent_order.len() == RECENT {
                    if let Some((old, when)) = self.recent_order.pop_front() {
                        // Only if not recorded again since (a reused pid).
                        if self.recent.get(&old).is_some_and(|r| r.1 == when) {
                            self.recent.remove(&old);
                        }
                    }
                }
                self.recent.insert(child, (parent, at));
                self.recent_order.push_back((child, at));
            }
        }
    }

    /// A process exited: it is no member any more, and a fork that made it
    /// can no longer be claimed (its pid may be another process's next).
    fn exit(&mut self, pid: u32) {
        self.remove(pid);
        self.recent.remove(&pid);
    }

    /// Registers `pid` and, with `since`, claims the forks it (and its
    /// children) made at or after `since` (monotonic ns, taken before the
    /// process was created) and before it was registered. A fork recorded
    /// earlier was made by an older process that had the same pid: its
    /// child is someone else's.
    fn register(&mut self, pid: u32, key: Arc<str>, since: Option<u64>) {
        self.add(pid, key.clone());
        let Some(since) = since else {
            return;
        };
        let mut parents = vec![pid];
        while let Some(p) = parents.pop() {
            let children: Vec<u32> = self
                .recent
                .iter()
                .filter(|(_, &(parent, at))| parent == p && at >= since)
                .map(|(&c, _)| c)
                .collect();
            for c in children {
                self.recent.remove(&c);
                self.add(c, key.clone());
                parents.push(c);
            }
        }
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of the connector's
/// event timestamps.
pub(crate) fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

pub(crate) struct Tracker {
    state: Mutex<State>,
    active: AtomicBool,
}

static TRACKER: LazyLock<Arc<Tracker>> = LazyLock::new(|| {
    Arc::new(Tracker {
        state: Mutex::new(State::default()),
        active: AtomicBool::new(false),
    })
});

/// The process's one tracker (the connector reports every fork on the
/// machine; one listener is enough).
pub(crate) fn tracker() -> &'static Tracker {
    &TRACKER
}

impl Tracker {
    /// Starts listening to the process connector, once. Returns whether
    /// the tracker is active; the error says why not.
    pub(crate) fn start() -> io::Result<()> {
        static STARTED: Mutex<Option<Result<(), String>>> = Mutex::new(None);
        let mut started = lock(&STARTED);
        if let Some(r) = &*started {
            return r.clone().map_err(io::Error::other);
        }
        let result = (|| {
            let sock = connector_socket()?;
            let tracker = TRACKER.clone();
            std::thread::Builder::new()
                .name("resmon-forks".into())
                .spawn(move || listen(&sock, &tracker))?;
            TRACKER.active.store(true, Ordering::Release);
            Ok::<(), io::Error>(())
        })();
        *started = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }

    /// Whether forks are being followed.
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Makes `pid` (just spawned or adopted) a member of resource `key`.
    /// For a process just spawned, `since` is [`monotonic_ns`] taken before
    /// it was created: the forks it made before this call are claimed too.
    /// An adopted process (`None`) is followed from now on; what it forked
    /// before is found by its cgroup or marker.
    pub(crate) fn register(&self, pid: u32, key: &str, since: Option<u64>) {
        if self.is_active() {
            lock(&self.state).register(pid, Arc::from(key), since);
        }
    }

    /// The live members of resource `key` that are not in `known` (what
    /// its cgroup or marker scan found), as `(pid, start time)`: processes
    /// that left the resource. Members that are gone (an exit missed) are
    /// dropped on the way; only these candidates cost a `/proc` read.
    pub(crate) fn outside(&self, key: &str, known: &[u32]) -> Vec<(u32, u64)> {
        if !self.is_active() {
            return Vec::new();
        }
        let mut state = lock(&self.state);
        let Some(pids) = state.by_key.get(key) else {
            return Vec::new();
        };
        let candidates: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !known.contains(p))
            .collect();
        let mut out = Vec::new();
        for pid in candidates {
            let start = state.members.get(&pid).map(|m| m.1);
            match (start, procfs::read_stat(crate::leaf::proc_root(), pid)) {
                (Some(start), Some(st)) if st.start_time == start && !st.is_dead() => {
                    out.push((pid, start))
                }
                _ => state.remove(pid),
            }
        }
        out
    }
}

// Netlink connector constants (linux/connector.h, linux/cn_proc.h).
const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
/// `what`, `cpu`, `timestamp_ns` before the event's own fields.
const EVENT_HDR: usize = 16;

fn connector_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A big receive buffer: a burst of forks elsewhere must not drop ours.
    set_option(&sock, libc::SO_RCVBUFFORCE, &((8 << 20) as libc::c_int));
    // SAFETY: all-zero is a valid sockaddr_nl; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: bind reads a sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG + 4);
    let total = (NLMSG_HDR + CN_MSG + 4) as u32;
    msg.extend_from_slice(&total.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&std::process::id().to_ne_bytes());
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&4u16.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    // SAFETY: send reads `msg.len()` bytes of `msg`.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel answers the subscription; without CAP_NET_ADMIN (or in a
    // non-initial namespace) it refuses, or sends nothing at all: wait
    // briefly for the answer.
    let timeout = |tv_sec| libc::timeval { tv_sec, tv_usec: 0 };
    set_option(&sock, libc::SO_RCVTIMEO, &timeout(1));
    let mut buf = [0u8; 256];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::other(format!(
            "the process connector did not answer: {}",
            io::Error::last_os_error()
        )));
    }
    // The answer is PROC_EVENT_NONE with the subscription's errno.
    if let Some((0, _, [err, ..])) = parse_event(&buf[..n as usize]) {
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
    }
    // A zero timeout blocks for good.
    set_option(&sock, libc::SO_RCVTIMEO, &timeout(0));
    Ok(sock)
}

/// Sets a `SOL_SOCKET` option; a refusal leaves the default (both options
/// used here only tune the socket).
fn set_option<T>(sock: &OwnedFd, name: libc::c_int, value: &T) {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes at `value`, which
    // points at a live `T` of the type the option takes.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        );
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// One connector message's event: `Some((what, timestamp_ns, fields))`.
fn parse_event(msg: &[u8]) -> Option<(u32, u64, [u32; 4])> {
    let ev = NLMSG_HDR + CN_MSG;
    let what = u32_at(msg, ev)?;
    let at = msg
        .get(ev + 8..ev + 16)
        .map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))?;
    let f = ev + EVENT_HDR;
    Some((
        what,
        at,
        [
            u32_at(msg, f)?,
            u32_at(msg, f + 4)?,
            u32_at(msg, f + 8)?,
            u32_at(msg, f + 12)?,
        ],
    ))
}

fn listen(sock: &OwnedFd, tracker: &Tracker) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    tracing::warn!("the process connector dropped events (a burst of forks); processes forked meanwhile are followed through their cgroup only");
                    continue;
                }
                _ => {
                    tracing::warn!("the process connector failed: {e}; no longer following forks");
                    tracker.active.store(false, Ordering::Release);
                    return;
                }
            }
        }
        let mut data = &buf[..n as usize];
        while data.len() >= NLMSG_HDR {
            let len = u32_at(data, 0).unwrap_or(0) as usize;
            if len < NLMSG_HDR || len > data.len() {
                break;
            }
            if let Some((what, at, f)) = parse_event(&data[..len]) {
                match what {
                    // parent_pid, parent_tgid, child_pid, child_tgid: a new
                    // thread has child_pid != child_tgid and is no process.
                    PROC_EVENT_FORK if f[2] == f[3] => lock(&tracker.state).fork(f[1], f[3], at),
                    // process_pid, process_tgid: the whole process is gone.
                    PROC_EVENT_EXIT if f[0] == f[1] => lock(&tracker.state).exit(f[0]),
                    _ => {}
                }
            }
            let aligned = (len + 3) & !3;
            data = data.get(aligned..).unwrap_or(&[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_before_registration_are_claimed_and_children_follow_parents() {
        let me = std::process::id();
        let mut s = State::default();
        // Forks of unknown parents wait in the recent list; real pids are
        // needed for start times, so this process stands in for all.
        s.fork(1, me, 100);
        assert!(s.members.is_empty());
        s.register(1, Arc::from("x"), Some(100));
        // pid 1's start time is readable, and its recorded fork claimed.
        assert!(s.members.contains_key(&me), "{:?}", s.members.keys());
        assert!(s.recent.is_empty());
        s.remove(me);
        assert!(!s.by_key["x"].contains(&me));
        s.remove(1);
        assert!(s.by_key.is_empty());
    }

    #[test]
    fn a_fork_older_than_the_process_is_not_claimed() {
        // A fork recorded for pid 1 before "our" pid 1 was created came from
        // an earlier process with that pid: its child is not ours.
        let me = std::process::id();
        let mut s = State::default();
        s.fork(1, me, 99);
        s.register(1, Arc::from("x"), Some(100));
        assert!(!s.members.contains_key(&me));
        // An adopted process claims no earlier fork at all.
        let mut s = State::default();
        s.fork(1, me, 100);
        s.register(1, Arc::from("x"), None);
        assert!(!s.members.contains_key(&me));
    }

    #[test]
    fn an_exited_child_is_not_claimed() {
        // Its pid may already be another process's.
        let me = std::process::id();
        let mut s = State::default();
        s.fork(1, me, 100);
        s.exit(me);
        s.register(1, Arc::from("x"), Some(100));
        assert!(!s.members.contains_key(&me));
    }

    #[test]
    fn the_recent_list_is_bounded() {
        let mut s = State::default();
        for i in 0..(RECENT as u32 + 10) {
            s.fork(1_000_000 + i, 2_000_000 + i, u64::from(i));
        }
        assert_eq!(s.recent.len(), RECENT);
        assert_eq!(s.recent_order.len(), RECENT);
        // A child pid seen again keeps its newer record when the older one
        // is forgotten.
        let mut s = State::default();
        s.fork(7, 8, 1);
        s.fork(9, 8, 2);
        for i in 0..(RECENT as u32 - 1) {
            s.fork(1_000_000 + i, 2_000_000 + i, 3);
        }
        assert_eq!(s.recent.get(&8), Some(&(9, 2)));
    }

    #[test]
    fn events_are_parsed_from_connector_messages() {
        let mut m = vec![0u8; NLMSG_HDR + CN_MSG + EVENT_HDR + 16];
        m[NLMSG_HDR + CN_MSG..][..4].copy_from_slice(&PROC_EVENT_FORK.to_ne_bytes());
        m[NLMSG_HDR + CN_MSG + 8..][..8].copy_from_slice(&1234u64.to_ne_bytes());
        for (i, v) in [10u32, 10, 11, 11].iter().enumerate() {
            m[NLMSG_HDR + CN_MSG + EVENT_HDR + 4 * i..][..4].copy_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(
            parse_event(&m),
            Some((PROC_EVENT_FORK, 1234, [10, 10, 11, 11]))
        );
        assert_eq!(parse_event(&m[..20]), None);
    }
}
