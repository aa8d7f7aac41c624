//! The monitor's side of systemd's notify protocol (`Type=notify`):
//! `READY=1` once start-up and adoption are done, `STATUS=` with the
//! resources' counts as they change, `WATCHDOG=1` from the event loop
//! itself at half of `WATCHDOG_USEC` (a stuck loop stops the pings, and
//! systemd acts), `RELOADING=1` and `READY=1` around a reload, and
//! `STOPPING=1` when a stop begins.
//!
//! The protocol is a datagram of `KEY=VALUE` lines to the socket
//! `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace).
//! The variables are taken out of the monitor's environment before anything
//! starts, so no resource inherits them and speaks for the monitor.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

/// The variables as systemd gave them, for a re-exec of the monitor
/// ([`crate::upgrade`]), which must hear them again.
pub fn env_for_exec() -> Vec<(String, String)> {
    let Some(env) = FROM_ENV.get() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(s) = &env.socket {
        out.push(("NOTIFY_SOCKET".to_string(), s.clone()));
    }
    if let Some(every) = env.ping_every {
        out.push((
            "WATCHDOG_USEC".to_string(),
            (every.as_micros() * 2).to_string(),
        ));
        out.push(("WATCHDOG_PID".to_string(), std::process::id().to_string()));
    }
    out
}

/// What systemd gave this process, taken once by [`take_from_env`].
#[derive(Clone, Debug, Default)]
struct FromEnv {
    socket: Option<String>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is meant for this process.
    ping_every: Option<Duration>,
}

static FROM_ENV: OnceLock<FromEnv> = OnceLock::new();

/// Takes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` out of the
/// environment. Call it first thing in `main`, while the process has one
/// thread (changing the environment is not safe beside other threads).
pub fn take_from_env() {
    let socket = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty());
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .filter(|&u| u > 0);
    // A watchdog meant for another process (the variable inherited) is not ours.
    let ours = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(var);
    }
    let _ = FROM_ENV.set(FromEnv {
        socket,
        ping_every: usec.filter(|_| ours).map(|u| Duration::from_micros(u / 2)),
    });
}

/// The monitor's line to systemd; every method does nothing without one.
pub struct SdNotify {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    ping_every: Option<Duration>,
    ready: bool,
    status: String,
}

impl SdNotify {
    /// The line [`take_from_env`] found, if any.
    pub fn from_env() -> SdNotify {
        let env = FROM_ENV.get().cloned().unwrap_or_default();
        let target = env.socket.and_then(|s| match connect(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET {s}: {e}; systemd will not hear from the monitor");
                None
            }
        });
        SdNotify {
            ping_every: env.ping_every.filter(|_| target.is_some()),
            target,
            ready: false,
            status: String::new(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.target.is_some()
    }

    /// How often the event loop must say `WATCHDOG=1`.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    fn send(&self, text: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(text.as_bytes(), addr) {
                tracing::debug!("telling systemd {text:?}: {e}");
            }
        }
    }

    /// `READY=1`, once: start-up and adoption are done.
    pub fn ready(&mut self, status: String) {
        if std::mem::replace(&mut self.ready, true) {
            return;
        }
        self.send(&format!("READY=1\nSTATUS={status}"));
        self.status = status;
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// `STATUS=`, when it changed.
    pub fn status(&mut self, status: String) {
        if self.ready && status != self.status {
            self.send(&format!("STATUS={status}"));
            self.status = status;
        }
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// A reload begins: systemd waits for the `READY=1` of [`reloaded`](Self::reloaded).
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration"
        ));
    }

    pub fn reloaded(&self) {
        self.send(&format!("READY=1\nSTATUS={}", self.status));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: taking every resource offline");
    }
}

fn connect(name: &str) -> std::io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    use std::os::linux::net::SocketAddrExt;
    let addr = match name.strip_prefix('@') {
        Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())?,
        None if name.starts_with('/') => std::os::unix::net::SocketAddr::from_pathname(name)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor @abstract",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    Ok((sock, addr))
}
