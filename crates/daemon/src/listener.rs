//! Accepting API connections so that no client can starve the monitor.
//!
//! The monitor runs on one thread, and every connection costs a descriptor.
//! An unprivileged local user who opens connections and never sends a
//! request would, without limits, use up the descriptors a restart needs
//! (a pidfd, a pipe) and the time the event loop has. So:
//!
//! * **Per-user caps on the Unix socket.** The kernel names each caller
//!   (`SO_PEERCRED`). A uid other than root's and the monitor's own may hold
//!   at most [`Limits::per_user`] connections, and all such uids together at
//!   most [`Limits::untrusted`]; a connection past a cap is closed at once.
//!   Root and the monitor's user are never capped, so an operator can always
//!   reach a monitor under attack.
//! * **A cap on the TCP listener**, whose callers are unknown until their
//!   token is read: at most [`Limits::untrusted`] connections at once.
//! * **Header and idle timeouts.** A request whose headers have not arrived
//!   within [`Limits::header_timeout`] is dropped, and so is a keep-alive
//!   connection that sends nothing for as long (hyper starts the same timer
//!   while it waits for the next request). A streaming answer (`events
//!   --follow`) is not cut: the timer runs only while a request is awaited.
//!
//! Nothing here is awaited by the event loop: connections are served on
//! tasks of their own, and answers that need the monitor go through its
//! channel like every other message.
//!
//! **Stopping.** When the monitor stops it flips [`Shutdown`]: no new
//! connection is accepted, every connection finishes the answer it is
//! writing (a `terminate` that was carried out says so; an event stream
//! ends after the monitor's last event) and is closed, and the serve
//! function returns once the last one is gone.

use crate::api::Caller;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use resmon_task::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

/// How many connections callers may hold, and for how long they may idle.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections one untrusted uid may hold at once.
    pub per_user: usize,
    /// Connections all untrusted uids (or all TCP callers) may hold at once.
    pub untrusted: usize,
    /// How long a request's headers may take, and a connection may idle.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_user: 32,
            untrusted: 512,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Open connections per uid (`None`: TCP), shared with the guards that
/// give them back.
#[derive(Default)]
struct Counts {
    by_uid: HashMap<Option<u32>, usize>,
    untrusted: usize,
}

struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: Option<u32>,
    trusted: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
        if !self.trusted {
            c.untrusted = c.untrusted.saturating_sub(1);
        }
    }
}

/// Decides whether a new connection of `uid` may be served; the slot gives
/// its place back when dropped.
fn admit(
    counts: &Arc<Mutex<Counts>>,
    limits: &Limits,
    uid: Option<u32>,
    trusted: bool,
) -> Option<Slot> {
    let mut c = lock(counts);
    let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
    if !trusted {
        let per_user_cap = if uid.is_some() {
            limits.per_user
        } else {
            limits.untrusted
        };
        if mine >= per_user_cap || c.untrusted >= limits.untrusted {
            return None;
        }
        c.untrusted += 1;
    }
    *c.by_uid.entry(uid).or_insert(0) += 1;
    Some(Slot {
        counts: counts.clone(),
        uid,
        trusted,
    })
}

/// Logs refused connections at most once every ten seconds.
#[derive(Default)]
struct Refusals {
    count: u64,
    last_report: Option<std::time::Instant>,
}

impl Refusals {
    fn note(&mut self, who: &str) {
        self.count += 1;
        let now = std::time::Instant::now();
        if self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(
                "API: closed {} connection(s) over the limit (latest from {who})",
                self.count
            );
            self.count = 0;
            self.last_report = Some(now);
        }
    }
}

/// The largest request head (request line and headers) read: an API
/// request needs a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// Tells the listeners to stop (see the module docs).
#[derive(Clone)]
pub struct Shutdown {
    stop: tokio::sync::watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            stop: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// Stops accepting and closes every connection once its answer is out.
    pub fn begin(&self) {
        self.stop.send_replace(true);
    }

    async fn begun(mut rx: tokio::sync::watch::Receiver<bool>) {
        let _ = rx.wait_for(|&s| s).await;
    }
}

/// Each connection holds a clone; the serve function waits until none is left.
type Alive = tokio::sync::mpsc::Sender<()>;

/// Serves one connection: HTTP/1.1 with the header and idle timeout.
fn serve_connection<Io>(io: Io, router: Router, caller: Caller, conn: ConnCtx<'_>)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx {
        limits,
        slot,
        alive,
        shutdown,
    } = conn;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(caller));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A request line and headers past this are refused (414, 431);
        // bodies stream through it.
        .max_buf_size(MAX_HEAD)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(crate::wire_errors::JsonErrors::new(io)),
            service,
        );
    let stop = shutdown.stop.subscribe();
    tokio::spawn(async move {
        let (_slot, _alive) = (slot, alive);
        let mut conn = std::pin::pin!(conn);
        let done = tokio::select! {
            done = conn.as_mut() => done,
            () = Shutdown::begun(stop) => {
                // The answer being written is finished, then it closes.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = done {
            tracing::debug!("API connection: {e}");
        }
    });
}

/// What a connection is served with.
struct ConnCtx<'a> {
    limits: &'a Limits,
    slot: Slot,
    alive: Alive,
    shutdown: &'a Shutdown,
}

/// A listener: the Unix socket or the TCP one.
trait Listen {
    type Conn;
    fn next(&self) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Listen for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Conn> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listen for tokio::net::TcpListener {
    type Conn = (tokio::net::TcpStream, std::net::SocketAddr);
    fn next(&self) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send {
        self.accept()
    }
}

impl<'a> ConnCtx<'a> {
    fn new(limits: &'a Limits, slot: Slot, alive: Alive, shutdown: &'a Shutdown) -> Self {
        ConnCtx {
            limits,
            slot,
            alive,
            shutdown,
        }
    }
}

/// Accepts until the shutdown, then waits for the connections to end.
async fn accept_until<L: Listen>(
    shutdown: &Shutdown,
    listener: &L,
    mut serve: impl FnMut(L::Conn, Alive),
) {
    let (alive, mut gone) = tokio::sync::mpsc::channel::<()>(1);
    let stop = shutdown.stop.subscribe();
    let mut stopping = std::pin::pin!(Shutdown::begun(stop));
    loop {
        tokio::select! {
            accepted = listener.next() => match accepted {
                Ok(conn) => serve(conn, alive.clone()),
                Err(e) => accept_failed(e).await,
            },
            () = stopping.as_mut() => break,
        }
    }
    drop(alive);
    // Every sender is gone once every connection ended.
    let _ = gone.recv().await;
}

/// What an accept error means: a full descriptor table is waited out
/// (connections end and free theirs), anything else is retried at once.
async fn accept_failed(e: std::io::Error) {
    use rustix::io::Errno;
    let full = e
        .raw_os_error()
        .is_some_and(|c| c == Errno::MFILE.raw_os_error() || c == Errno::NFILE.raw_os_error());
    if full {
        tracing::warn!("API: cannot accept a connection: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    } else {
        tracing::debug!("API: accept: {e}");
        tokio::task::yield_now().await;
    }
}

/// Serves the API on the Unix socket until `shutdown`, then waits for
/// the open connections to finish.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let me = rustix::process::geteuid().as_raw();
    let mut refusals = Refusals::default();
    accept_until(&shutdown, &listener, |stream, alive| {
        let cred = stream.peer_cred().ok();
        let caller = Caller {
            uid: cred.as_ref().map(|c| c.uid()),
            pid: cred.as_ref().and_then(|c| c.pid()),
            tcp: false,
        };
        let trusted = caller.uid.is_some_and(|u| u == 0 || u == me);
        // A caller the kernel does not name is counted as one untrusted uid.
        let uid = caller.uid.unwrap_or(u32::MAX);
        match admit(&counts, &limits, Some(uid), trusted) {
            Some(slot) => {
                let ctx = ConnCtx::new(&limits, slot, alive, &shutdown);
                serve_connection(stream, router.clone(), caller, ctx)
            }
            None => refusals.note(&format!("uid {uid}")),
        }
    })
    .await;
}

/// Serves the API on the TCP listener until `shutdown`, then waits for
/// the open connections to finish.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut refusals = Refusals::default();
    accept_until(&shutdown, &listener, |(stream, peer), alive| {
        let caller = Caller {
            uid: None,
            pid: None,
            tcp: true,
        };
        match admit(&counts, &limits, None, false) {
            Some(slot) => {
                let ctx = ConnCtx::new(&limits, slot, alive, &shutdown);
                serve_connection(stream, router.clone(), caller, ctx)
            }
            None => refusals.note(&peer.to_string()),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_users_are_capped_and_trusted_ones_are_not() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = Limits {
            per_user: 2,
            untrusted: 3,
            header_timeout: Duration::from_secs(1),
        };
        let a1 = admit(&counts, &limits, Some(1000), false).unwrap();
        let _a2 = admit(&counts, &limits, Some(1000), false).unwrap();
        assert!(
            admit(&counts, &limits, Some(1000), false).is_none(),
            "per-user cap"
        );
        let _b1 = admit(&counts, &limits, Some(1001), false).unwrap();
        assert!(
            admit(&counts, &limits, Some(1002), false).is_none(),
            "untrusted total"
        );
        // Root is never refused.
        let roots: Vec<_> = (0..10)
            .map(|_| admit(&counts, &limits, Some(0), true).unwrap())
            .collect();
        drop(a1);
        assert!(
            admit(&counts, &limits, Some(1000), false).is_some(),
            "a closed one frees its place"
        );
        drop(roots);
        assert!(!counts.lock().unwrap().by_uid.contains_key(&Some(0)));
    }
}
