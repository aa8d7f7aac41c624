//! The guard process's main loop.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use resmon_contract::Scope;
use resmon_task::Container;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::SendFlags;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

use super::protocol::{
    encode, split_lines, FenceReport, GuardStatus, LeaseAction, Reply, Request, MAX_LINE,
};
use crate::clock::BootInstant;
use crate::settings::Settings;

/// The guard exited after its monitor closed the socket while disarmed.
pub const EXIT_CLEAN: i32 = 0;
/// The monitor went away while the guard was armed; the deadline passed
/// and every scope was seen empty.
pub const EXIT_FENCED: i32 = 2;
/// As [`EXIT_FENCED`], but some scope still held processes (or a kill
/// failed) when the guard gave up waiting.
pub const EXIT_FENCE_INCOMPLETE: i32 = 3;
/// The guard could not start (no socket, no timer).
pub const EXIT_SETUP: i32 = 4;

/// How the guard runs.
#[derive(Clone, Debug)]
pub struct GuardOptions {
    /// A watchdog device (e.g. `/dev/watchdog` from `softdog`), off by
    /// default. While armed with a deadline in the future the guard keeps
    /// it open and writes a keepalive every [`watchdog_interval`]; on
    /// disarm and after a complete fence it writes the magic close `V`.
    /// After an incomplete fence, or if the guard itself stops, it stops
    /// writing, and the kernel resets the machine when the watchdog's own
    /// timeout runs out.
    ///
    /// [`watchdog_interval`]: Self::watchdog_interval
    pub watchdog: Option<PathBuf>,
    /// How often to write the keepalive: well under the device's timeout.
    pub watchdog_interval: Duration,
    /// How long a fence waits for its scopes to empty (re-killing them
    /// meanwhile) before it reports what is left.
    pub settle: Duration,
}

impl Default for GuardOptions {
    fn default() -> GuardOptions {
        GuardOptions {
            watchdog: None,
            watchdog_interval: Duration::from_secs(1),
            settle: Duration::from_secs(5),
        }
    }
}

/// Takes the guard's socket from descriptor `fd` (as the monitor passed
/// it; `0` when it came as stdin, as [`GuardClient::spawn`] passes it). It
/// must be a socket. The descriptor is moved above 2 and made
/// close-on-exec; stdin then reads `/dev/null`.
///
/// [`GuardClient::spawn`]: super::GuardClient::spawn
pub fn take_socket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not valid"),
        ));
    }
    // SAFETY: the descriptor is only borrowed for the checks and the dup
    // below, which fail cleanly (EBADF) if it is not open; the caller hands
    // it to us, so nothing else closes it meanwhile.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed)
        .map_err(|e| io::Error::other(format!("descriptor {fd}: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a socket: start the guard through GuardClient::spawn"),
        ));
    }
    let sock = rustix::io::fcntl_dupfd_cloexec(borrowed, 3)?;
    if fd == 0 {
        let null = File::open("/dev/null")?;
        rustix::stdio::dup2_stdin(null.as_fd())?;
    } else {
        // SAFETY: `fd` was given to us to own, and `sock` is our copy of it.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    Ok(sock)
}

/// Runs the fence guard on `sock` until it has nothing left to do, and
/// returns the process exit code ([`EXIT_CLEAN`], [`EXIT_FENCED`],
/// [`EXIT_FENCE_INCOMPLETE`], [`EXIT_SETUP`]). Call it on the main thread
/// of a process of its own, before any async runtime starts: it blocks,
/// changes signal dispositions and locks the process's memory.
///
/// * An `Arm` replaces the deadline and the scopes; when the deadline
///   passes without a newer `Arm`, every scope is killed
///   ([`Container::kill_all`]: `cgroup.kill`, or the process-group and
///   marker scan), a [`Reply::Fenced`] goes to the monitor if it still
///   listens, and the guard stays, disarmed.
/// * On end of file (the monitor exited or was killed) while armed, it
///   does **not** kill at once: it waits the `reattach_grace` of the
///   monitor's `Attach`. If by then the monitor's process is gone (the
///   guard's parent changed), it kills every scope, and only once each is
///   seen empty does it revoke the node's lease in etcd, so the next node
///   in line takes the groups without waiting for the lease to expire
///   (see [`Guard::fence`]). Otherwise (no `Attach`, or the monitor's
///   process still runs) it keeps the deadline the monitor last proved and
///   kills when that passes. Then it exits. Disarmed, it exits at once.
/// * While armed it ignores SIGTERM, SIGINT and SIGHUP: a stop of the
///   monitor's service must not stop the guard before the resources.
///   The monitor ends it with `Disarm` and closing the socket.
/// * It locks its memory (`mlockall`) when it may (root, or an unlimited
///   `RLIMIT_MEMLOCK`), so it is not slowed by paging when memory is short.
pub fn run(sock: OwnedFd, options: &GuardOptions) -> i32 {
    match Guard::new(sock, options) {
        Ok(mut guard) => guard.run(),
        Err(e) => {
            log(&format!("cannot start: {e}"));
            EXIT_SETUP
        }
    }
}

fn log(msg: &str) {
    eprintln!("resmon fence-guard[{}]: {msg}", std::process::id());
}

struct Armed {
    until: BootInstant,
    scopes: Vec<Scope>,
    /// The node's lease behind the deadline.
    lease: Option<i64>,
}

/// What the monitor's `Attach` said.
struct Attachment {
    etcd: Settings,
    reattach_grace: Duration,
    report: Option<PathBuf>,
}

/// Where a monitor that comes back connects.
struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    /// The socket file's device and inode, so that the guard removes it
    /// on exit only while it is still its own.
    file: (u64, u64),
}

impl Listener {
    /// Binds a listening socket at `path` (replacing a stale one).
    fn bind(path: &std::path::Path) -> io::Result<Listener> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&fd, 4)?;
        let st = rustix::fs::lstat(path)?;
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
            file: file_id(&st),
        })
    }

    /// Removes the socket file if it is still this listener's (a guard
    /// started after this one may have bound the path anew).
    fn remove(&self) {
        if let Ok(st) = rustix::fs::lstat(&self.path) {
            if file_id(&st) == self.file {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// A file's device and inode (their types differ between targets).
#[allow(clippy::unnecessary_cast)]
fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// How the guard tells that its monitor's process is gone.
enum MonitorProcess {
    /// The monitor that started the guard: gone when the guard's parent
    /// changes (the kernel hands it to a subreaper or init).
    Parent(rustix::process::Pid),
    /// A monitor that re-attached: gone when its pidfd turns readable.
    Other(OwnedFd),
}

/// The longest the guard waits for etcd to revoke the lease.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest: enough for one round trip to a healthy etcd.
const REVOKE_TIMEOUT_MIN: Duration = Duration::from_millis(200);
/// How often the guard looks again whether a monitor whose socket closed
/// has also exited.
const EXIT_RECHECK: Duration = Duration::from_millis(50);

struct Guard<'a> {
    options: &'a GuardOptions,
    sock: Option<OwnedFd>,
    timer: OwnedFd,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    armed: Option<Armed>,
    watchdog: Watchdog,
    memory_locked: bool,
    /// The outcome of a fence made after the monitor went away, for the
    /// exit code.
    fenced: Option<bool>,
    attachment: Option<Attachment>,
    /// The monitor's process, as far as the guard can tell.
    monitor: Option<MonitorProcess>,
    /// When the monitor's socket closed while the guard was armed: the
    /// `reattach_grace` runs from here. A monitor that re-attaches (through
    /// `listener`) ends the wait.
    detached_at: Option<BootInstant>,
    /// Where a monitor that comes back connects, once an `Attach` named it.
    listener: Option<Listener>,
    /// Whether the guard said that the monitor's process outlived its
    /// socket.
    said_monitor_runs: bool,
}

impl<'a> Guard<'a> {
    fn new(sock: OwnedFd, options: &'a GuardOptions) -> io::Result<Guard<'a>> {
        // Writes to a closed socket must be errors, not a fatal signal.
        set_signal(libc::SIGPIPE, libc::SIG_IGN);
        rustix::io::ioctl_fionbio(&sock, true)
            .map_err(|e| io::Error::other(format!("making the socket non-blocking: {e}")))?;
        let timer = timerfd_create(
            TimerfdClockId::Boottime,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(|e| io::Error::other(format!("timerfd_create(CLOCK_BOOTTIME): {e}")))?;
        let memory_locked = lock_memory();
        Ok(Guard {
            options,
            sock: Some(sock),
            timer,
            inbuf: Vec::new(),
            out: Vec::new(),
            armed: None,
            watchdog: Watchdog::new(options.watchdog.clone()),
            memory_locked,
            fenced: None,
            attachment: None,
            monitor: rustix::process::getppid().map(MonitorProcess::Parent),
            detached_at: None,
            listener: None,
            said_monitor_runs: false,
        })
    }

    /// Whether the monitor's process is gone: the guard was handed to
    /// another parent (a subreaper or init), which the kernel does when the
    /// parent exits, whatever killed it.
    fn monitor_exited(&self) -> bool {
        match &self.monitor {
            None => false,
            Some(MonitorProcess::Parent(m)) => rustix::process::getppid() != Some(*m),
            Some(MonitorProcess::Other(pidfd)) => {
                let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
                let zero = timespec(0);
                matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
            }
        }
    }

    /// A monitor connects to the listener: let it in if it runs as the
    /// guard's own user, as the monitor now.
    fn accept_monitor(&mut self) {
        let Some(l) = &self.listener else { return };
        let conn = match rustix::net::accept_with(&l.fd, rustix::net::SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(Errno::AGAIN | Errno::INTR) => return,
            Err(e) => {
                log(&format!("accepting a monitor: {e}"));
                return;
            }
        };
        let cred = match rustix::net::sockopt::socket_peercred(&conn) {
            Ok(c) => c,
            Err(e) => {
                log(&format!("a connection without credentials ({e}): refused"));
                return;
            }
        };
        if cred.uid != rustix::process::geteuid() {
            log(&format!(
                "a connection from uid {} (pid {}), not the monitor's: refused",
                cred.uid.as_raw(),
                cred.pid.as_raw_nonzero()
            ));
            return;
        }
        if let Err(e) = rustix::io::ioctl_fionbio(&conn, true) {
            log(&format!("making the monitor's socket non-blocking: {e}"));
            return;
        }
        // The monitor's process, to tell later whether it is gone; when it
        // is the guard's parent still (it re-executed itself), as before.
        self.monitor = if rustix::process::getppid() == Some(cred.pid) {
            Some(MonitorProcess::Parent(cred.pid))
        } else {
            match rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty()) {
                Ok(fd) => Some(MonitorProcess::Other(fd)),
                Err(e) => {
                    log(&format!(
                        "watching the monitor pid {}: {e}: refused",
                        cred.pid.as_raw_nonzero()
                    ));
                    return;
                }
            }
        };
        log(&format!(
            "monitor pid {} re-attached{}",
            cred.pid.as_raw_nonzero(),
            match &self.armed {
                Some(a) => format!(
                    ": holding {} scope(s) until {} for it",
                    a.scopes.len(),
                    a.until
                ),
                None => String::new(),
            }
        ));
        self.sock = Some(conn);
        self.inbuf.clear();
        self.out.clear();
        self.detached_at = None;
        self.said_monitor_runs = false;
    }

    /// When the grace after the monitor's socket closed ends, if it runs.
    fn grace_end(&self) -> Option<BootInstant> {
        let grace = self.attachment.as_ref()?.reattach_grace;
        let armed = self.armed.as_ref()?;
        armed.lease?;
        self.detached_at.map(|at| at + grace)
    }

    /// Whether to fence before the deadline: the monitor is gone, no monitor
    /// came back within the grace, and a lease that only the guard can end
    /// early keeps the groups from the other nodes meanwhile.
    fn early_fence_due(&mut self) -> bool {
        if self.sock.is_some() || !self.grace_end().is_some_and(|end| end.has_passed()) {
            return false;
        }
        if self.monitor_exited() {
            return true;
        }
        if !self.said_monitor_runs {
            self.said_monitor_runs = true;
            log("the monitor's socket closed but its process still runs: keeping the deadline until it exits");
        }
        false
    }

    fn run(&mut self) -> i32 {
        loop {
            if let Some(armed) = &self.armed {
                if BootInstant::now() >= armed.until {
                    let armed = self.armed.take().expect("checked above");
                    self.fence(armed, false);
                } else if self.early_fence_due() {
                    let armed = self.armed.take().expect("checked above");
                    self.fence(armed, true);
                }
            }
            if self.sock.is_none() && self.armed.is_none() {
                if let Some(l) = self.listener.take() {
                    l.remove();
                }
                return match self.fenced {
                    None => {
                        self.watchdog.close_clean();
                        EXIT_CLEAN
                    }
                    Some(true) => EXIT_FENCED,
                    Some(false) => EXIT_FENCE_INCOMPLETE,
                };
            }
            if let Err(e) = self.set_timer() {
                // Without the timer, wake up often and check the clock.
                log(&format!("setting the timer: {e}"));
            }
            let future = self.armed.as_ref().is_some_and(|a| !a.until.has_passed());
            if future {
                self.watchdog.pet(self.options.watchdog_interval);
            }
            let timeout = if self.said_monitor_runs && self.armed.is_some() {
                // Until the monitor's process is seen gone.
                Some(EXIT_RECHECK)
            } else if future && self.watchdog.is_open() {
                Some(self.options.watchdog_interval)
            } else if self.armed.is_some() {
                // A safety net should the timer not fire.
                Some(Duration::from_secs(1))
            } else {
                None
            };
            let (sock_ready, _timer_ready) = match self.wait(timeout) {
                Ok(r) => r,
                Err(e) => {
                    log(&format!("poll: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if sock_ready {
                if self.sock.is_some() {
                    self.service_socket();
                } else {
                    self.accept_monitor();
                }
            }
        }
    }

    fn set_timer(&self) -> rustix::io::Result<()> {
        let wake = match (&self.armed, self.grace_end()) {
            (Some(a), Some(end)) => Some(a.until.min(end)),
            (Some(a), None) => Some(a.until),
            (None, _) => None,
        };
        let it_value = match wake {
            // Zero would disarm the timer: an armed deadline is at least 1 ns.
            Some(at) => timespec(at.as_nanos().max(1)),
            None => timespec(0),
        };
        let spec = Itimerspec {
            it_interval: timespec(0),
            it_value,
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::ABSTIME, &spec).map(drop)
    }

    /// Waits for the socket (or, while no monitor is attached, the
    /// listener), the timer, or `timeout`; returns which of the first two
    /// are ready.
    fn wait(&mut self, timeout: Option<Duration>) -> rustix::io::Result<(bool, bool)> {
        let ts = timeout.map(|d| timespec(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
        let mut sock_flags = PollFlags::IN;
        if !self.out.is_empty() {
            sock_flags |= PollFlags::OUT;
        }
        let (sock_ready, timer_ready) = {
            let mut fds = vec![PollFd::new(&self.timer, PollFlags::IN)];
            if let Some(sock) = &self.sock {
                fds.push(PollFd::new(sock, sock_flags));
            } else if let Some(l) = self.listener.as_ref().filter(|_| self.armed.is_some()) {
                fds.push(PollFd::new(&l.fd, PollFlags::IN));
            }
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => return Ok((false, false)),
                Err(e) => return Err(e),
            }
            (
                fds.get(1).is_some_and(|f| !f.revents().is_empty()),
                !fds[0].revents().is_empty(),
            )
        };
        if timer_ready {
            let mut buf = [0_u8; 8];
            // Clears the expiration count; the deadline is re-checked on the clock.
            let _ = rustix::io::read(&self.timer, &mut buf);
        }
        Ok((sock_ready, timer_ready))
    }

    fn service_socket(&mut self) {
        self.flush();
        let mut buf = [0_u8; 8192];
        let mut eof = false;
        loop {
            let Some(sock) = &self.sock else { return };
            match rustix::io::read(sock, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    for line in split_lines(&mut self.inbuf) {
                        self.handle(&line);
                    }
                    if self.inbuf.len() > MAX_LINE {
                        self.inbuf.clear();
                        self.send(&Reply::Error {
                            message: format!("request longer than {MAX_LINE} bytes"),
                        });
                    }
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(e) => {
                    log(&format!("reading the socket: {e}"));
                    eof = true;
                    break;
                }
            }
        }
        self.flush();
        if eof {
            self.monitor_gone();
        }
    }

    fn monitor_gone(&mut self) {
        self.sock = None;
        self.out.clear();
        let Some(a) = &self.armed else { return };
        self.detached_at = Some(BootInstant::now());
        let when = match self.grace_end() {
            Some(end) => end.remaining().min(a.until.remaining()),
            None => a.until.remaining(),
        };
        log(&format!(
            "the monitor closed the socket while armed: killing {} scope(s) in {when:?} unless it comes back",
            a.scopes.len(),
        ));
    }

    fn handle(&mut self, line: &[u8]) {
        match serde_json::from_slice::<Request>(line) {
            Ok(Request::Attach {
                etcd,
                reattach_grace_ms,
                report,
                listen,
            }) => match Settings::try_from(*etcd) {
                Ok(etcd) => {
                    self.attachment = Some(Attachment {
                        etcd,
                        reattach_grace: Duration::from_millis(reattach_grace_ms),
                        report,
                    });
                    let same = self
                        .listener
                        .as_ref()
                        .is_some_and(|l| Some(&l.path) == listen.as_ref());
                    if let (Some(path), false) = (listen, same) {
                        if let Some(old) = self.listener.take() {
                            old.remove();
                        }
                        match Listener::bind(&path) {
                            Ok(l) => self.listener = Some(l),
                            Err(e) => {
                                self.send(&Reply::Error {
                                    message: format!(
                                        "attach: listening at {}: {e}",
                                        path.display()
                                    ),
                                });
                                return;
                            }
                        }
                    }
                    self.send(&Reply::Attached);
                }
                Err(e) => self.send(&Reply::Error {
                    message: format!("attach: {e}"),
                }),
            },
            Ok(Request::Arm {
                until_boottime_ns,
                scopes,
                lease,
            }) => {
                let scopes: Vec<Scope> = scopes.into_iter().map(Scope::from).collect();
                let n = scopes.len();
                self.armed = Some(Armed {
                    until: BootInstant::from_nanos(until_boottime_ns),
                    scopes,
                    lease,
                });
                for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    set_signal(sig, libc::SIG_IGN);
                }
                if let Err(e) = self.watchdog.open() {
                    log(&e);
                }
                self.send(&Reply::Armed {
                    until_boottime_ns,
                    scopes: n,
                });
            }
            Ok(Request::Disarm) => {
                self.disarm();
                self.send(&Reply::Disarmed);
            }
            Ok(Request::Ping) => {
                let status = GuardStatus {
                    pid: std::process::id(),
                    armed_until_boottime_ns: self.armed.as_ref().map(|a| a.until.as_nanos()),
                    scopes: self.armed.as_ref().map_or(0, |a| a.scopes.len()),
                    watchdog: self.watchdog.is_open(),
                    memory_locked: self.memory_locked,
                };
                self.send(&Reply::Pong(status));
            }
            Err(e) => self.send(&Reply::Error {
                message: format!(
                    "cannot read request {:?}: {e}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ),
            }),
        }
    }

    fn disarm(&mut self) {
        self.armed = None;
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            set_signal(sig, libc::SIG_DFL);
        }
        self.watchdog.close_clean();
    }

    /// Kills every scope of `armed` and waits for them to empty; `early`
    /// when the monitor died and the grace passed before the deadline.
    ///
    /// When no monitor listens any more, the node's lease is then the
    /// guard's to settle ([`lease_action`](Self::lease_action)): revoked
    /// only once every scope was *seen empty* and the monitor's process is
    /// gone, so that nothing this node ran can outlive its owner keys.
    /// The kill comes first and the revocation after it, so the deadline's
    /// duty is done before the guard talks to etcd; that talk is bounded
    /// by half the time left to the deadline (at most 1 s), and when it
    /// fails or times out the lease is left to expire in etcd as it would
    /// have without the guard.
    fn fence(&mut self, armed: Armed, early: bool) {
        let mut report = kill_scopes(&armed, self.options.settle);
        report.early = early;
        if self.sock.is_none() {
            report.lease = Some(self.lease_action(&armed, &report));
        }
        let complete = report.complete() && report.errors.is_empty();
        let lease = match &report.lease {
            None => String::new(),
            Some(LeaseAction::Revoked { lease, found, .. }) => format!(
                "; revoked lease {lease:x}{}",
                if *found {
                    ""
                } else {
                    " (etcd no longer knew it)"
                }
            ),
            Some(LeaseAction::Kept { lease, why }) => format!(
                "; left lease {} to expire: {why}",
                lease.map_or("(unknown)".into(), |l| format!("{l:x}"))
            ),
        };
        log(&format!(
            "{} at {}: killed {} scope(s){}{}{lease}",
            if early {
                format!(
                    "the monitor is gone and did not come back before deadline {}",
                    armed.until
                )
            } else {
                format!("deadline {} passed", armed.until)
            },
            BootInstant::from_nanos(report.at_boottime_ns),
            report.scopes,
            if report.left.is_empty() {
                String::new()
            } else {
                format!("; still holding processes: {}", report.left.join(", "))
            },
            if report.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", report.errors.join("; "))
            },
        ));
        if self.sock.is_none() {
            // Alone: the exit code and the report file are what is left.
            self.fenced = Some(complete);
            if let Some(path) = self.attachment.as_ref().and_then(|a| a.report.as_ref()) {
                if let Err(e) = write_report(path, &report) {
                    log(&format!("writing the fence report {}: {e}", path.display()));
                }
            }
        }
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            set_signal(sig, libc::SIG_DFL);
        }
        if complete {
            self.watchdog.close_clean();
        } else if self.watchdog.is_open() {
            log("not everything is down: the watchdog is left to reset the machine");
            self.watchdog.abandon();
        }
        self.send(&Reply::Fenced(report));
        self.flush();
    }

    /// What to do with the node's lease after a fence made with no monitor
    /// left: revoke it when that is safe, else leave it to expire.
    fn lease_action(&self, armed: &Armed, report: &FenceReport) -> LeaseAction {
        let kept = |why: &str| LeaseAction::Kept {
            lease: armed.lease,
            why: why.to_owned(),
        };
        let (Some(lease), Some(attachment)) = (armed.lease, &self.attachment) else {
            return kept("the monitor did not tell the guard its lease and etcd");
        };
        if !self.monitor_exited() {
            return kept("the monitor's process still runs");
        }
        if !report.complete() || !report.errors.is_empty() {
            return kept("not every scope was seen empty");
        }
        let timeout = if armed.until.has_passed() {
            REVOKE_TIMEOUT
        } else {
            (armed.until.remaining() / 2).clamp(REVOKE_TIMEOUT_MIN, REVOKE_TIMEOUT)
        };
        match revoke(&attachment.etcd, lease, timeout) {
            Ok(found) => LeaseAction::Revoked {
                lease,
                found,
                at_boottime_ns: BootInstant::now().as_nanos(),
            },
            Err(e) => kept(&format!("revoking it failed: {e}")),
        }
    }

    fn send(&mut self, reply: &Reply) {
        if self.sock.is_none() {
            return;
        }
        if self.out.len() > MAX_LINE {
            log("the monitor does not read its replies: dropping one");
            return;
        }
        self.out.extend_from_slice(&encode(reply));
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            let Some(sock) = &self.sock else {
                self.out.clear();
                return;
            };
            match rustix::net::send(sock, &self.out, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return,
                Err(_) => {
                    self.monitor_gone();
                    return;
                }
            }
        }
    }
}

/// Revokes `lease` in etcd within `timeout`, on a runtime made for it
/// (the guard has none otherwise); whether etcd still knew the lease.
#[cfg(feature = "etcd")]
fn revoke(settings: &Settings, lease: i64, timeout: Duration) -> Result<bool, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime for the etcd client: {e}"))?;
    runtime.block_on(async {
        match tokio::time::timeout(timeout, crate::etcd::revoke_lease(settings, lease)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("etcd did not answer within {timeout:?}")),
        }
    })
}

#[cfg(not(feature = "etcd"))]
fn revoke(_: &Settings, _: i64, _: Duration) -> Result<bool, String> {
    Err("this build has no etcd client (cargo feature `etcd`)".into())
}

/// Writes `report` as JSON to `path`, whole: to a temporary file first,
/// renamed into place.
fn write_report(path: &std::path::Path, report: &FenceReport) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&encode(report))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Kills every scope, then waits up to `settle` for them to empty,
/// killing again what is left every 100 ms.
fn kill_scopes(armed: &Armed, settle: Duration) -> FenceReport {
    let at = BootInstant::now();
    let containers: Vec<(String, Container)> = armed
        .scopes
        .iter()
        .map(|s| {
            (
                format!("{}={}", s.marker.0, s.marker.1),
                Container::from_scope(s),
            )
        })
        .collect();
    let mut errors = Vec::new();
    for (name, c) in &containers {
        if let Err(e) = c.kill_all() {
            errors.push(format!("{name}: {e}"));
        }
    }
    let mut left: Vec<usize> = (0..containers.len())
        .filter(|&i| !containers[i].1.is_empty())
        .collect();
    let mut last_kill = at;
    while !left.is_empty() && BootInstant::now() - at < settle {
        std::thread::sleep(Duration::from_millis(5));
        if BootInstant::now() - last_kill >= Duration::from_millis(100) {
            for &i in &left {
                let _ = containers[i].1.kill_all();
            }
            last_kill = BootInstant::now();
        }
        left.retain(|&i| !containers[i].1.is_empty());
    }
    FenceReport {
        deadline_boottime_ns: armed.until.as_nanos(),
        at_boottime_ns: at.as_nanos(),
        scopes: containers.len(),
        left: left.into_iter().map(|i| containers[i].0.clone()).collect(),
        errors,
        early: false,
        lease: None,
    }
}

fn timespec(nanos: u64) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        tv_nsec: i64::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}

fn set_signal(sig: libc::c_int, action: libc::sighandler_t) {
    // SAFETY: SIG_IGN and SIG_DFL install no handler code; changing a
    // disposition is sound at any time.
    unsafe {
        libc::signal(sig, action);
    }
}

/// Locks current and future memory when that cannot make later
/// allocations fail: as root, or with no `RLIMIT_MEMLOCK` limit.
fn lock_memory() -> bool {
    use rustix::mm::{mlockall, MlockAllFlags};
    let unlimited = rustix::process::getrlimit(rustix::process::Resource::Memlock)
        .current
        .is_none();
    if !unlimited && !rustix::process::geteuid().is_root() {
        return false;
    }
    match mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE) {
        Ok(()) => true,
        Err(e) => {
            log(&format!("memory not locked (mlockall: {e})"));
            false
        }
    }
}

/// The optional watchdog device.
struct Watchdog {
    path: Option<PathBuf>,
    file: Option<File>,
    last_pet: Option<BootInstant>,
    /// Set after an incomplete fence: never pet or close it cleanly again.
    abandoned: bool,
}

impl Watchdog {
    fn new(path: Option<PathBuf>) -> Watchdog {
        Watchdog {
            path,
            file: None,
            last_pet: None,
            abandoned: false,
        }
    }

    fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Opens the device (which starts it) if one is configured.
    fn open(&mut self) -> Result<(), String> {
        if self.file.is_some() || self.abandoned {
            return Ok(());
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Appending changes nothing for a device, and keeps every write
        // when the path is a plain file (as in tests).
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("opening watchdog {}: {e}", path.display()))?;
        self.file = Some(file);
        self.last_pet = None;
        Ok(())
    }

    fn pet(&mut self, interval: Duration) {
        if self.abandoned {
            return;
        }
        let Some(file) = &mut self.file else { return };
        let now = BootInstant::now();
        if self.last_pet.is_some_and(|t| now - t < interval / 2) {
            return;
        }
        if let Err(e) = file.write_all(b"\0") {
            log(&format!("writing the watchdog keepalive: {e}"));
        }
        self.last_pet = Some(now);
    }

    /// Writes the magic close and closes the device, stopping it.
    fn close_clean(&mut self) {
        if self.abandoned {
            return;
        }
        if let Some(mut file) = self.file.take() {
            if let Err(e) = file.write_all(b"V") {
                log(&format!("writing the watchdog magic close: {e}"));
            }
        }
    }

    /// Stops petting for good; the device stays open until the process
    /// exits, and is then closed without the magic close.
    fn abandon(&mut self) {
        self.abandoned = true;
    }
}
