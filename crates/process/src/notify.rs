//! The resource side of systemd's notify protocol (`notify = true`): the
//! service gets a `NOTIFY_SOCKET` of its own, a datagram socket in the
//! abstract namespace that the monitor reads with `SO_PASSCRED`, so it
//! hears only the resource's own processes: a datagram whose sender is not
//! in the resource's container is dropped (and said in the event feed).
//!
//! What is heard: `READY=1` (the online completes), `STATUS=` (shown in
//! status and the event feed), `WATCHDOG=1` (a liveness ping; with
//! `watchdog_interval`, or `WATCHDOG_USEC=` sent by the service, a missed
//! ping fails `looks_alive`), `EXTEND_TIMEOUT_USEC=` (progress of a pending
//! online or offline), `STOPPING=1`, `ERRNO=` (the failure's reason) and
//! `MAINPID=` (the main process moved; the new one must be the resource's).

use resmon_contract::{LogLevel, Notifier};
use resmon_task::{lock, Container};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the service said since its start.
#[derive(Debug, Default)]
pub struct Heard {
    pub ready: bool,
    /// When `READY=1` was taken: the watchdog counts from it.
    pub ready_at: Option<Instant>,
    pub status: Option<String>,
    /// `EXTEND_TIMEOUT_USEC=` messages: each is progress.
    pub extended: u32,
    pub stopping: bool,
    pub errno: Option<i32>,
    /// The last `WATCHDOG=1`.
    pub pinged: Option<Instant>,
    /// `WATCHDOG_USEC=` the service asked for.
    pub watchdog: Option<Duration>,
    /// A `MAINPID=` not taken yet.
    pub main_pid: Option<u32>,
}

/// A resource's notify socket and what it heard.
pub struct NotifySocket {
    /// `@name`, as `NOTIFY_SOCKET` gives it.
    pub address: String,
    heard: Arc<(Mutex<Heard>, Condvar)>,
    closed: Arc<AtomicBool>,
}

impl NotifySocket {
    /// Binds `@resmon-notify/<marker>` and reads it on a thread of its own
    /// until [`close`](Self::close).
    pub fn open(
        marker: &str,
        container: Container,
        notifier: Notifier,
    ) -> std::io::Result<NotifySocket> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let name = format!("resmon-notify/{marker}");
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::bind(&sock, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
        rustix::net::sockopt::set_socket_passcred(&sock, true)?;
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_millis(200)),
        )?;
        let heard = Arc::new((Mutex::new(Heard::default()), Condvar::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (h, c) = (heard.clone(), closed.clone());
        std::thread::Builder::new()
            .name("resmon-notify".into())
            .spawn(move || listen(sock, &container, &notifier, &h, &c))?;
        Ok(NotifySocket {
            address: format!("@{name}"),
            heard,
            closed,
        })
    }

    /// A new start: nothing heard yet.
    pub fn reset(&self) {
        *lock(&self.heard.0) = Heard::default();
    }

    /// A handle on what is heard, for a task that outlives a borrow.
    pub fn heard(&self) -> Arc<(Mutex<Heard>, Condvar)> {
        self.heard.clone()
    }

    /// Looks at what was heard.
    pub fn with<T>(&self, f: impl FnOnce(&mut Heard) -> T) -> T {
        f(&mut lock(&self.heard.0))
    }

    /// Waits until `done` says something of what was heard, or `limit`.
    pub fn wait<T>(&self, limit: Duration, done: impl Fn(&mut Heard) -> Option<T>) -> Option<T> {
        let (m, cv) = &*self.heard;
        let mut h = lock(m);
        if let Some(t) = done(&mut h) {
            return Some(t);
        }
        let (mut h, _) = cv.wait_timeout(h, limit).unwrap_or_else(|e| e.into_inner());
        done(&mut h)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.close();
    }
}

fn listen(
    sock: OwnedFd,
    container: &Container,
    notifier: &Notifier,
    heard: &(Mutex<Heard>, Condvar),
    closed: &AtomicBool,
) {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; 4096];
    while !closed.load(Ordering::Acquire) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            &sock,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let Ok(got) = got else {
            continue; // the timeout, to look at `closed`
        };
        let pid = control.drain().find_map(|m| match m {
            RecvAncillaryMessage::ScmCredentials(c) => Some(c.pid.as_raw_nonzero().get() as u32),
            _ => None,
        });
        let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
        // Only the resource's own processes are heard.
        match pid {
            Some(pid) if container.holds(pid) => {}
            other => {
                notifier.log(
                    LogLevel::Warn,
                    format!(
                        "ignored a notification from {}: not a process of this resource",
                        other.map_or("an unknown sender".to_string(), |p| format!("pid {p}"))
                    ),
                );
                continue;
            }
        }
        let (m, cv) = heard;
        let mut h = lock(m);
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "READY" if value == "1" => h.ready = true,
                "STATUS" => {
                    h.status = Some(value.to_string());
                    notifier.log(LogLevel::Info, format!("status: {value}"));
                }
                "WATCHDOG" if value == "1" => h.pinged = Some(Instant::now()),
                "WATCHDOG_USEC" => {
                    h.watchdog = value
                        .parse()
                        .ok()
                        .filter(|&u| u > 0)
                        .map(Duration::from_micros)
                }
                "EXTEND_TIMEOUT_USEC" => h.extended = h.extended.saturating_add(1),
                "STOPPING" if value == "1" => {
                    h.stopping = true;
                    notifier.log(LogLevel::Info, "the service says it is stopping");
                }
                "ERRNO" => h.errno = value.parse().ok(),
                "MAINPID" => h.main_pid = value.parse().ok(),
                _ => {}
            }
        }
        // Said while it runs: its failure, with the reason.
        let failed = h
            .ready
            .then_some(h.errno)
            .flatten()
            .filter(|_| text.contains("ERRNO="));
        drop(h);
        cv.notify_all();
        if let Some(e) = failed {
            notifier.failed(errno_text(e));
        }
    }
}

/// `ERRNO=` as people read it.
pub fn errno_text(e: i32) -> String {
    format!(
        "the service reported errno {e} ({})",
        std::io::Error::from_raw_os_error(e)
    )
}
