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

use super::protocol::{encode, split_lines, FenceReport, GuardStatus, Reply, Request, MAX_LINE};
use crate::clock::BootInstant;

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
///   does **not** kill at once: it keeps the deadline the monitor last
///   proved, kills when that passes, and exits. Disarmed, it exits at once.
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
}

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
        })
    }

    fn run(&mut self) -> i32 {
        loop {
            if let Some(armed) = &self.armed {
                if BootInstant::now() >= armed.until {
                    let armed = self.armed.take().expect("checked above");
                    self.fence(armed);
                }
            }
            if self.sock.is_none() && self.armed.is_none() {
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
            let timeout = if future && self.watchdog.is_open() {
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
                self.service_socket();
            }
        }
    }

    fn set_timer(&self) -> rustix::io::Result<()> {
        let it_value = match &self.armed {
            // Zero would disarm the timer: an armed deadline is at least 1 ns.
            Some(a) => timespec(a.until.as_nanos().max(1)),
            None => timespec(0),
        };
        let spec = Itimerspec {
            it_interval: timespec(0),
            it_value,
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::ABSTIME, &spec).map(drop)
    }

    /// Waits for the socket, the timer, or `timeout`; returns which of the
    /// first two are ready.
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
        if let Some(a) = &self.armed {
            log(&format!(
                "the monitor closed the socket while armed: killing {} scope(s) in {:?} unless it comes back",
                a.scopes.len(),
                a.until.remaining()
            ));
        }
    }

    fn handle(&mut self, line: &[u8]) {
        match serde_json::from_slice::<Request>(line) {
            Ok(Request::Arm {
                until_boottime_ns,
                scopes,
            }) => {
                let scopes: Vec<Scope> = scopes.into_iter().map(Scope::from).collect();
                let n = scopes.len();
                self.armed = Some(Armed {
                    until: BootInstant::from_nanos(until_boottime_ns),
                    scopes,
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

    fn fence(&mut self, armed: Armed) {
        let report = kill_scopes(&armed, self.options.settle);
        let complete = report.complete() && report.errors.is_empty();
        log(&format!(
            "deadline {} passed at {}: killed {} scope(s){}{}",
            armed.until,
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
            // Alone: the exit code is the only report left.
            self.fenced = Some(complete);
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
