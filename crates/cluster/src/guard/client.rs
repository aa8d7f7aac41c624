//! The monitor's side of the guard.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use resmon_contract::Scope;
use resmon_task::{Output, Reaper, SpawnSpec, TaskHandle};

use super::protocol::{
    encode, split_lines, take_line, FenceReport, GuardStatus, Reply, Request, WireScope,
    WireSettings,
};
use crate::clock::BootInstant;
use crate::settings::Settings;

/// The name of the hidden subcommand that runs the guard.
pub const SUBCOMMAND: &str = "fence-guard";

/// Why a guard request failed. Any of these means the guard cannot be
/// relied on: the monitor must not run groups it cannot fence.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("fence guard: {0}")]
    Io(#[from] io::Error),
    #[error("fence guard did not answer within {0:?}")]
    Timeout(Duration),
    #[error("fence guard closed its socket (exited?)")]
    Closed,
    #[error(
        "an earlier request to the fence guard timed out: the connection is not trusted any more"
    )]
    Poisoned,
    #[error("fence guard refused the request: {0}")]
    Refused(String),
    #[error("fence guard answered {got} to {asked}")]
    Unexpected { asked: &'static str, got: String },
}

/// A connection to a fence guard.
///
/// Requests are synchronous and fast (a local socket and a guard that does
/// nothing else); each waits for its answer at most [`timeout`](Self::set_timeout)
/// (1 s by default). From async code call them from `spawn_blocking` or
/// accept that brief block. [`FenceReport`]s the guard sends unasked are
/// kept and handed out by [`take_fenced`](Self::take_fenced).
#[derive(Debug)]
pub struct GuardClient {
    stream: UnixStream,
    inbuf: Vec<u8>,
    fenced: Vec<FenceReport>,
    timeout: Duration,
    task: Option<TaskHandle>,
    /// Set once a request timed out: a late answer could be taken for the
    /// next request's, so the connection is not used again.
    poisoned: bool,
}

/// `<exe> fence-guard [--watchdog PATH]`, its stderr the monitor's: the
/// spec [`GuardClient::spawn`] takes when the guard is resmon's own hidden
/// subcommand.
pub fn command(exe: &Path, watchdog: Option<&Path>) -> SpawnSpec {
    let mut args = vec![SUBCOMMAND.to_owned()];
    if let Some(w) = watchdog {
        args.push("--watchdog".into());
        args.push(w.display().to_string());
    }
    let mut spec = SpawnSpec::new(exe.display().to_string(), args);
    spec.stderr = Output::Inherit;
    spec
}

impl GuardClient {
    /// Starts a guard with `spec` (e.g. [`command`]) and connects to it.
    /// The guard gets its end of a socketpair as its stdin (the program
    /// must call [`take_socket(0)`](super::take_socket) and
    /// [`run`](super::run)), runs in a session and process group of its
    /// own, and in no resource's cgroup (it stays in the monitor's), so
    /// that nothing that kills a resource or the monitor's process group
    /// kills the guard. Spawned through the [`Reaper`], so it is reaped like
    /// every other child. Returns once the guard answered a ping.
    pub fn spawn(reaper: &Reaper, mut spec: SpawnSpec) -> Result<GuardClient, GuardError> {
        let (ours, theirs) = UnixStream::pair()?;
        spec.stdin = Some(Arc::new(theirs.into()));
        spec.new_session = true;
        spec.cgroup = None;
        spec.env.retain(|(k, _)| k != resmon_task::MARKER_VAR);
        let task = reaper.spawn(&spec)?;
        let mut client = GuardClient::from_stream(ours)?;
        client.task = Some(task);
        client.ping()?;
        Ok(client)
    }

    /// Connects to a guard that an earlier monitor of this node started
    /// and that still waits, armed, for a monitor to come back (the path
    /// it was told to `listen` at). The guard then stops waiting: what it
    /// holds (deadline, scopes, lease) is this monitor's to re-arm or
    /// disarm. Fails when no guard listens there (it exited, or fenced
    /// already).
    pub fn reattach(path: &Path) -> Result<GuardClient, GuardError> {
        let stream = UnixStream::connect(path)?;
        let mut client = GuardClient::from_stream(stream)?;
        client.ping()?;
        Ok(client)
    }

    /// A client on a socket already connected to a guard.
    pub fn from_stream(stream: UnixStream) -> io::Result<GuardClient> {
        Ok(GuardClient {
            stream,
            inbuf: Vec::new(),
            fenced: Vec::new(),
            timeout: Duration::from_secs(1),
            task: None,
            poisoned: false,
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The guard process, when this client spawned it: wait on it to learn
    /// that the guard died.
    pub fn task(&self) -> Option<&TaskHandle> {
        self.task.as_ref()
    }

    /// Tells the guard how to reach etcd (`settings`), how long to wait
    /// for a monitor that went away (`reattach_grace`), where to leave
    /// the report of a fence it makes alone (`report`), and where to
    /// listen for a monitor that comes back (`listen`: see
    /// [`reattach`](Self::reattach)). Without it the guard never touches
    /// the node's lease. Send it before arming; a monitor that re-attached
    /// sends it again.
    pub fn attach(
        &mut self,
        settings: &Settings,
        reattach_grace: Duration,
        report: Option<&Path>,
        listen: Option<&Path>,
    ) -> Result<(), GuardError> {
        let req = Request::Attach {
            etcd: Box::new(WireSettings::from(settings)),
            reattach_grace_ms: u64::try_from(reattach_grace.as_millis()).unwrap_or(u64::MAX),
            report: report.map(Path::to_path_buf),
            listen: listen.map(Path::to_path_buf),
        };
        match self.request(&req, "attach")? {
            Reply::Attached => Ok(()),
            other => Err(unexpected("attach", &other)),
        }
    }

    /// Gives the guard a new deadline and the complete set of scopes to
    /// kill when it passes (replacing the previous ones).
    pub fn arm(&mut self, until: BootInstant, scopes: &[Scope]) -> Result<(), GuardError> {
        self.arm_request(until, scopes, None)
    }

    /// As [`arm`](Self::arm), naming the node's etcd `lease` the deadline
    /// comes from: once the monitor is gone and the guard has killed every
    /// scope and seen them empty, it revokes that lease (after an
    /// [`attach`](Self::attach)).
    pub fn arm_lease(
        &mut self,
        lease: i64,
        until: BootInstant,
        scopes: &[Scope],
    ) -> Result<(), GuardError> {
        self.arm_request(until, scopes, Some(lease))
    }

    fn arm_request(
        &mut self,
        until: BootInstant,
        scopes: &[Scope],
        lease: Option<i64>,
    ) -> Result<(), GuardError> {
        let req = Request::Arm {
            until_boottime_ns: until.as_nanos(),
            scopes: scopes.iter().map(WireScope::from).collect(),
            lease,
        };
        match self.request(&req, "arm")? {
            Reply::Armed {
                until_boottime_ns, ..
            } if until_boottime_ns == until.as_nanos() => Ok(()),
            other => Err(unexpected("arm", &other)),
        }
    }

    /// Tells the guard this node owns nothing now.
    pub fn disarm(&mut self) -> Result<(), GuardError> {
        match self.request(&Request::Disarm, "disarm")? {
            Reply::Disarmed => Ok(()),
            other => Err(unexpected("disarm", &other)),
        }
    }

    /// The guard's state.
    pub fn ping(&mut self) -> Result<GuardStatus, GuardError> {
        match self.request(&Request::Ping, "ping")? {
            Reply::Pong(status) => Ok(status),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// The fences the guard reported since the last call, including any
    /// waiting on the socket now.
    pub fn take_fenced(&mut self) -> Result<Vec<FenceReport>, GuardError> {
        self.read_available()?;
        Ok(std::mem::take(&mut self.fenced))
    }

    /// Disarms the guard and closes the socket: the guard exits.
    pub fn shutdown(mut self) -> Result<(), GuardError> {
        self.disarm()?;
        self.stream.shutdown(std::net::Shutdown::Both)?;
        Ok(())
    }

    /// One read that does not wait; whether it brought anything.
    fn read_now(&mut self) -> Result<bool, GuardError> {
        let mut buf = [0_u8; 8192];
        self.stream.set_nonblocking(true)?;
        let got = loop {
            match self.stream.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                got => break got,
            }
        };
        self.stream.set_nonblocking(false)?;
        match got {
            Ok(0) => Err(GuardError::Closed),
            Ok(n) => {
                self.inbuf.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn read_available(&mut self) -> Result<(), GuardError> {
        loop {
            // Lines already here first (an earlier read may have brought a
            // report behind an answer), then whatever the socket has.
            for line in split_lines(&mut self.inbuf) {
                match parse(&line, "an unasked report")? {
                    Reply::Fenced(r) => self.fenced.push(r),
                    other => return Err(unexpected("nothing", &other)),
                }
            }
            if !self.read_now()? {
                return Ok(());
            }
        }
    }

    /// Sends `req` and returns its answer, keeping fence reports that come
    /// before it.
    fn request(&mut self, req: &Request, asked: &'static str) -> Result<Reply, GuardError> {
        if self.poisoned {
            return Err(GuardError::Poisoned);
        }
        let result = self.exchange(req, asked);
        if matches!(result, Err(GuardError::Timeout(_))) {
            self.poisoned = true;
        }
        result
    }

    fn exchange(&mut self, req: &Request, asked: &'static str) -> Result<Reply, GuardError> {
        self.stream.set_write_timeout(Some(self.timeout))?;
        self.stream
            .write_all(&encode(req))
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => GuardError::Closed,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    GuardError::Timeout(self.timeout)
                }
                _ => GuardError::Io(e),
            })?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0_u8; 8192];
        loop {
            // One line at a time: what came after the answer (a fence
            // report sent right behind it) stays for the next call.
            while let Some(line) = take_line(&mut self.inbuf) {
                match parse(&line, asked)? {
                    Reply::Fenced(r) => self.fenced.push(r),
                    Reply::Error { message } => return Err(GuardError::Refused(message)),
                    other => return Ok(other),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The answer may be there all the same: this process was
                // stopped (SIGSTOP) or starved past the deadline.
                if self.read_now()? {
                    continue;
                }
                return Err(GuardError::Timeout(self.timeout));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(GuardError::Closed),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(GuardError::Timeout(self.timeout))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(GuardError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One line from the guard, read as the answer to `asked`.
fn parse(line: &[u8], asked: &str) -> Result<Reply, GuardError> {
    serde_json::from_slice(line).map_err(|e| {
        GuardError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable line from the guard (expecting {asked}): {e}"),
        ))
    })
}

fn unexpected(asked: &'static str, got: &Reply) -> GuardError {
    GuardError::Unexpected {
        asked,
        got: serde_json::to_string(got).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BootInstant;

    #[test]
    fn a_fence_report_right_behind_an_answer_is_kept() {
        let (ours, mut guard) = UnixStream::pair().unwrap();
        let mut client = GuardClient::from_stream(ours).unwrap();
        let armed = Reply::Armed {
            until_boottime_ns: 1,
            scopes: 1,
        };
        let fenced = Reply::Fenced(FenceReport {
            deadline_boottime_ns: 1,
            at_boottime_ns: 2,
            scopes: 1,
            left: Vec::new(),
            errors: Vec::new(),
            early: false,
            lease: None,
        });
        // Both lines in one write: one read gets them together.
        let mut both = encode(&armed);
        both.extend(encode(&fenced));
        guard.write_all(&both).unwrap();
        client.arm(BootInstant::from_nanos(1), &[]).unwrap();
        let reports = client.take_fenced().unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].at_boottime_ns, 2);
    }
}
