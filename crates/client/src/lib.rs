//! A client of the resmon API: HTTP/1.1 over the monitor's Unix socket, or
//! over its TCP listener (`[api] tcp`) with a bearer token.
//!
//! One connection per request: the API is local and requests are few, so
//! there is no pool to keep. Before a request is sent, the server is
//! checked to be run by root or the caller (see [`peer`]'s notes): on a
//! socket always, on TCP where it is on loopback. Each route has a typed
//! method that returns the [`wire`] type the monitor sends;
//! [`Client::call`] stays for requests of one's own. Used by the `resmon`
//! CLI and the benchmarks.

mod peer;
pub mod wire;

pub use hyper::{Method, StatusCode};

use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use wire::{
    ActedReply, CallsReply, ControlReply, ErrorReply, EventRecord, MaintenanceBody, MoveBody,
    MoveReply, NodesReply, OpReply, ReloadReport, StatusReply, TerminateBody,
};

/// How long a TCP connection may take to open: an address that drops
/// packets would otherwise hold the command for minutes.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No place tried answered, or none that answered could be trusted:
    /// each place, in the order tried, and why.
    #[error("{}", unreachable_message(tried))]
    Unreachable { tried: Vec<Attempt> },
    #[error("talking to the monitor at {at}: {message}")]
    Protocol { at: String, message: String },
}

/// A place where the monitor was looked for, and why it was not used.
#[derive(Debug)]
pub struct Attempt {
    /// A socket's path, or a URL.
    pub at: String,
    pub why: Unanswered,
    tcp: bool,
}

/// Why a place was not used.
#[derive(Debug)]
pub enum Unanswered {
    /// Nothing answered there.
    Connect(std::io::Error),
    /// Its server runs as this uid, neither root nor the caller.
    Untrusted { uid: u32 },
    /// Who serves it could not be found out.
    Unchecked(std::io::Error),
}

fn unreachable_message(tried: &[Attempt]) -> String {
    match tried {
        [one] => match &one.why {
            Unanswered::Connect(e) if one.tcp => format!(
                "cannot reach the monitor at {}: {e} (is its TCP listener, [api] tcp, on at that address?)",
                one.at
            ),
            Unanswered::Connect(e) => format!(
                "cannot reach the monitor at {}: {e} (is `resmon serve` running? use --socket to name its socket)",
                one.at
            ),
            Unanswered::Untrusted { uid } => format!(
                "{} is served by uid {uid}, which is neither root nor you: it is not a monitor you \
                 can trust (another user may have bound it first); refusing to talk to it. Ask \
                 root where the monitor listens, or use {}",
                one.at,
                if one.tcp { "--url" } else { "--socket" }
            ),
            Unanswered::Unchecked(e) => format!(
                "{}: cannot tell which user serves it ({e}); refusing to talk to it",
                one.at
            ),
        },
        _ => {
            let mut text = String::from("cannot reach the monitor; tried, in this order:");
            for a in tried {
                let why = match &a.why {
                    Unanswered::Connect(e) => e.to_string(),
                    Unanswered::Untrusted { uid } => {
                        format!("served by uid {uid}, neither root nor you: not trusted")
                    }
                    Unanswered::Unchecked(e) => format!("cannot tell which user serves it ({e})"),
                };
                text.push_str(&format!("\n  {}: {why}", a.at));
            }
            text.push_str(
                "\n(is `resmon serve` running? name its socket with --socket (or \
                 RESMON_SOCKET), or its TCP listener with --url)",
            );
            text
        }
    }
}

/// Why an API request did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer (see [`ClientError`]).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The monitor answered with an error status and this message.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    /// The answer was not what this route sends.
    #[error("unexpected answer from the monitor: {0}")]
    Decode(String),
}

/// What an operation on a resource asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Online,
    Offline,
    /// Ends it now; its tasks report `exit_code` (0 to 255).
    Terminate {
        exit_code: i32,
    },
    /// Offline (with its dependents), then back with them.
    Restart,
    /// Maintenance on or off.
    Maintenance(bool),
}

/// A bearer token for the TCP listener, and where it came from: errors
/// name the source (`RESMON_TOKEN`, a file), never the secret.
#[derive(Clone)]
pub struct Token {
    secret: String,
    source: String,
}

impl Token {
    /// `source` says where the secret was read, for error messages.
    pub fn new(secret: impl Into<String>, source: impl Into<String>) -> Token {
        Token {
            secret: secret.into(),
            source: source.into(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A URL `--url` cannot take.
#[derive(Debug, thiserror::Error)]
#[error("{url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: String,
}

/// The monitor's TCP listener.
#[derive(Clone, Debug)]
struct Listener {
    /// `http://HOST:PORT`, as errors name it.
    url: String,
    /// `HOST:PORT`: what is connected to, and the `Host` header.
    authority: String,
    token: Option<Token>,
}

impl Listener {
    fn parse(url: &str, token: Option<Token>) -> Result<Listener, UrlError> {
        let bad = |reason: &str| UrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest =
            match url.split_once("://") {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => return Err(bad(
                    "https is not supported: the monitor's TCP listener speaks plain HTTP; use \
                     http://HOST:PORT on loopback, or through a tunnel you trust (ssh -L)",
                )),
                _ => return Err(bad("not an http://HOST:PORT URL")),
            };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "give the listener as http://HOST:PORT, without a path, query or user",
            ));
        }
        // An IPv6 address comes in brackets: [::1]:7474.
        let port_at = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => Some(i),
            _ => None,
        };
        let authority = match port_at {
            Some(i) => {
                if authority[i + 1..].parse::<u16>().is_err() {
                    return Err(bad("the port is not a number from 0 to 65535"));
                }
                authority.to_owned()
            }
            None => format!("{authority}:80"),
        };
        Ok(Listener {
            url: format!("http://{authority}"),
            authority,
            token,
        })
    }
}

/// Where requests go.
#[derive(Clone, Debug)]
enum Target {
    /// The first of these sockets that answers and is trusted, tried in
    /// this order at each request.
    Sockets(Vec<PathBuf>),
    Tcp(Listener),
}

/// A connection whose server was checked.
enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

pub struct Client {
    target: Target,
}

/// A response whose body is still arriving.
pub type Body = hyper::body::Incoming;

impl Client {
    /// A client of the monitor on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self::first_of([socket.to_path_buf()])
    }

    /// A client of the first of `sockets` that answers and is served by
    /// root or the caller, tried in this order (a repeat is tried once).
    pub fn first_of(sockets: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut list: Vec<PathBuf> = Vec::new();
        for s in sockets {
            if !list.contains(&s) {
                list.push(s);
            }
        }
        Client {
            target: Target::Sockets(list),
        }
    }

    /// A client of the monitor's TCP listener at `url` (`http://HOST:PORT`),
    /// sending `token` with every request.
    pub fn tcp(url: &str, token: Option<Token>) -> Result<Self, UrlError> {
        Ok(Client {
            target: Target::Tcp(Listener::parse(url, token)?),
        })
    }

    /// Connects to the first place that answers and is trusted; the
    /// connection, and the place as errors name it.
    async fn connect(&self) -> Result<(Connection, String), ClientError> {
        let mut tried = Vec::new();
        match &self.target {
            Target::Sockets(sockets) => {
                for path in sockets {
                    let at = path.display().to_string();
                    let why = match UnixStream::connect(path).await {
                        Err(e) => Unanswered::Connect(e),
                        Ok(stream) => match stream.peer_cred() {
                            Err(e) => Unanswered::Unchecked(e),
                            Ok(cred) if !peer::trusted(cred.uid()) => {
                                Unanswered::Untrusted { uid: cred.uid() }
                            }
                            Ok(_) => return Ok((Connection::Unix(stream), at)),
                        },
                    };
                    tried.push(Attempt {
                        at,
                        why,
                        tcp: false,
                    });
                }
            }
            Target::Tcp(listener) => {
                let at = listener.url.clone();
                let connected = tokio::time::timeout(
                    TCP_CONNECT_TIMEOUT,
                    TcpStream::connect(&listener.authority),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {TCP_CONNECT_TIMEOUT:?}"),
                    ))
                });
                let why = match connected {
                    Err(e) => Unanswered::Connect(e),
                    Ok(stream) => {
                        let owner = stream
                            .local_addr()
                            .and_then(|me| Ok((me, stream.peer_addr()?)))
                            .and_then(|(me, server)| peer::loopback_server_uid(me, server));
                        match owner {
                            Err(e) => Unanswered::Unchecked(e),
                            Ok(Some(uid)) if !peer::trusted(uid) => Unanswered::Untrusted { uid },
                            Ok(_) => return Ok((Connection::Tcp(stream), at)),
                        }
                    }
                };
                tried.push(Attempt { at, why, tcp: true });
            }
        }
        Err(ClientError::Unreachable { tried })
    }

    /// Sends a request; returns the status and the body as a stream.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Body), ClientError> {
        let (status, body, _) = self.request(method, path, body).await?;
        Ok((status, body))
    }

    /// [`send`](Self::send), also saying where the request went.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Body, String), ClientError> {
        let (connection, at) = self.connect().await?;
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol {
            at: at.clone(),
            message: e.to_string(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        req = match &self.target {
            Target::Sockets(_) => req.header("host", "resmon"),
            Target::Tcp(listener) => {
                req = req.header("host", &listener.authority);
                match &listener.token {
                    Some(t) => req.header("authorization", format!("Bearer {}", t.secret)),
                    None => req,
                }
            }
        };
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| protocol(&e))?;
        let mut sender = match connection {
            Connection::Unix(s) => handshake(s).await,
            Connection::Tcp(s) => handshake(s).await,
        }
        .map_err(|e| protocol(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
        Ok((resp.status(), resp.into_body(), at))
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, body, at) = self.request(method, path, body).await?;
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Protocol {
                at,
                message: e.to_string(),
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    /// An error answer, with the token that was sent (its source) when the
    /// listener did not take it or it lacks the right.
    fn refusal(&self, status: StatusCode, body: &[u8]) -> ApiError {
        let e = refused(status, body);
        let Target::Tcp(listener) = &self.target else {
            return e;
        };
        let ApiError::Refused { status, message } = e else {
            return e;
        };
        let sent = match &listener.token {
            Some(t) => format!("the token from {}", t.source),
            None => "no token: set RESMON_TOKEN or pass --token-file".to_owned(),
        };
        let message = match status {
            StatusCode::UNAUTHORIZED => format!(
                "the monitor at {} did not take {sent}: {message}",
                listener.url
            ),
            StatusCode::FORBIDDEN => format!("{message} (sent {sent})"),
            _ => message,
        };
        ApiError::Refused { status, message }
    }
}

/// Opens HTTP/1.1 on a checked connection; its driver runs on a task of
/// its own until the answer is read.
async fn handshake<S>(io: S) -> hyper::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Client {
    /// A request's success answer as the monitor sent it.
    async fn answer(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, ApiError> {
        let (status, bytes) = self.call(method, path, body).await?;
        if !status.is_success() {
            return Err(self.refusal(status, &bytes));
        }
        Ok(bytes)
    }

    /// A request whose success answer is a `T`.
    async fn typed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ApiError> {
        let bytes = self.answer(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// `GET /metrics`: every series, in the Prometheus text format.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let bytes = self.answer(Method::GET, "/metrics", None).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// `GET /v1/resources`, or one resource's status when `name` is given.
    pub async fn status(&self, name: Option<&str>) -> Result<StatusReply, ApiError> {
        self.typed(Method::GET, &status_path(name), None).await
    }

    /// [`status`](Self::status)'s answer as the JSON the monitor sent, for
    /// tools that pass it on (`resmon status --json`): not decoded and
    /// encoded again, which costs a millisecond at a thousand resources.
    pub async fn status_json(&self, name: Option<&str>) -> Result<Bytes, ApiError> {
        self.answer(Method::GET, &status_path(name), None).await
    }

    /// Online, offline or terminate; with `wait`, the answer comes once the
    /// resource got where the operation leads (or failed on the way).
    pub async fn operate(
        &self,
        name: &str,
        op: Operation,
        wait: bool,
    ) -> Result<OpReply, ApiError> {
        let (verb, body) = match op {
            Operation::Online => ("online", None),
            Operation::Offline => ("offline", None),
            Operation::Terminate { exit_code } => {
                ("terminate", Some(json(&TerminateBody { exit_code })?))
            }
            Operation::Restart => ("restart", None),
            Operation::Maintenance(on) => ("maintenance", Some(json(&MaintenanceBody { on })?)),
        };
        let path = format!("/v1/resources/{}/{verb}?wait={wait}", encode(name));
        self.typed(Method::POST, &path, body).await
    }

    /// Cluster mode: drains `node` (`on`), or resumes it.
    pub async fn node_drain(&self, node: &str, on: bool) -> Result<MoveReply, ApiError> {
        let path = format!("/v1/nodes/{}/drain", encode(node));
        let body = json(&MaintenanceBody { on })?;
        self.typed(Method::POST, &path, Some(body)).await
    }

    /// Cluster mode: marks `node` for maintenance, or clears its mark.
    pub async fn node_maintenance(&self, node: &str, on: bool) -> Result<MoveReply, ApiError> {
        let path = format!("/v1/nodes/{}/maintenance", encode(node));
        let body = json(&MaintenanceBody { on })?;
        self.typed(Method::POST, &path, Some(body)).await
    }

    /// Maintenance on or off for every resource of `group`, or (none) for
    /// every resource.
    pub async fn maintenance(
        &self,
        group: Option<&str>,
        on: bool,
    ) -> Result<StatusReply, ApiError> {
        let path = match group {
            Some(g) => format!("/v1/groups/{}/maintenance", encode(g)),
            None => "/v1/maintenance".to_string(),
        };
        let body = json(&MaintenanceBody { on })?;
        self.typed(Method::POST, &path, Some(body)).await
    }

    /// `resource_control`: `code` is a number or a known name; `input` is
    /// JSON.
    pub async fn control(
        &self,
        name: &str,
        code: &str,
        input: Option<String>,
    ) -> Result<ControlReply, ApiError> {
        let path = format!("/v1/resources/{}/control/{}", encode(name), encode(code));
        self.typed(Method::POST, &path, input).await
    }

    /// `resource_type_control` of type `type_name`.
    pub async fn type_control(
        &self,
        type_name: &str,
        code: &str,
        input: Option<String>,
    ) -> Result<ControlReply, ApiError> {
        let path = format!("/v1/types/{}/control/{}", encode(type_name), encode(code));
        self.typed(Method::POST, &path, input).await
    }

    /// Makes resource `name` take its configuration again without a
    /// restart: its `reload_command`, else its `reload_signal`.
    pub async fn reload_resource(&self, name: &str) -> Result<ActedReply, ApiError> {
        let path = format!("/v1/resources/{}/reload", encode(name));
        self.typed(Method::POST, &path, None).await
    }

    /// Sends `signal` (a name such as `SIGHUP` or `HUP`, or a number) to
    /// resource `name`'s main process, or with `all` to every process of it.
    pub async fn signal(
        &self,
        name: &str,
        signal: &str,
        all: bool,
    ) -> Result<ActedReply, ApiError> {
        let path = format!(
            "/v1/resources/{}/signal/{}?all={all}",
            encode(name),
            encode(signal)
        );
        self.typed(Method::POST, &path, None).await
    }

    /// Re-reads the monitor's config and applies what changed.
    pub async fn reload(&self) -> Result<ReloadReport, ApiError> {
        self.typed(Method::POST, "/v1/reload", None).await
    }

    /// `POST /v1/upgrade`: the monitor runs its binary from disk again in
    /// place; the answer says it is under way.
    pub async fn upgrade(&self) -> Result<MoveReply, ApiError> {
        self.typed(Method::POST, "/v1/upgrade", None).await
    }

    /// Whether `GET /readyz` answers 200: the monitor's start is done.
    pub async fn is_ready(&self) -> bool {
        matches!(
            self.send(Method::GET, "/readyz", None).await,
            Ok((s, _)) if s == StatusCode::OK
        )
    }

    /// The entry-point calls in progress.
    pub async fn calls(&self) -> Result<CallsReply, ApiError> {
        self.typed(Method::GET, "/v1/calls", None).await
    }

    /// Cluster mode: the nodes and who owns which group.
    pub async fn nodes(&self) -> Result<NodesReply, ApiError> {
        self.typed(Method::GET, "/v1/nodes", None).await
    }

    /// Cluster mode: moves `group` to `node`.
    pub async fn move_group(&self, group: &str, node: &str) -> Result<MoveReply, ApiError> {
        let body = json(&MoveBody {
            node: node.to_owned(),
        })?;
        let path = format!("/v1/groups/{}/move", encode(group));
        self.typed(Method::POST, &path, Some(body)).await
    }

    /// A resource's captured output, one JSON line per line of it
    /// (`{"time", "stream", "text"}`), then (with `follow`) new ones.
    pub async fn logs(&self, name: &str, q: &LogsQuery) -> Result<Events, ApiError> {
        let mut path = format!("/v1/resources/{}/logs?follow={}", encode(name), q.follow);
        if let Some(n) = q.lines {
            path += &format!("&lines={n}");
        }
        if let Some(since) = &q.since {
            path += &format!("&since={}", encode(since));
        }
        if let Some(s) = &q.stream {
            path += &format!("&stream={}", encode(s));
        }
        self.stream(&path).await
    }

    /// A JSON-lines answer, as it arrives.
    async fn stream(&self, path: &str) -> Result<Events, ApiError> {
        let (status, body) = self.send(Method::GET, path, None).await?;
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(self.refusal(status, &bytes));
        }
        Ok(Events {
            body,
            pending: Vec::new(),
        })
    }

    /// The event feed: the history (earlier runs' too, from the journal),
    /// then (with `follow`) new events as they come, until the monitor's
    /// last one.
    pub async fn events(&self, q: &EventsQuery) -> Result<Events, ApiError> {
        let mut path = format!("/v1/events?follow={}", q.follow);
        if let Some(since) = &q.since {
            path += &format!("&since={}", encode(since));
        }
        if let Some(r) = &q.resource {
            path += &format!("&resource={}", encode(r));
        }
        self.stream(&path).await
    }
}

/// What of a resource's log to get.
#[derive(Clone, Debug, Default)]
pub struct LogsQuery {
    /// The last this many lines (the monitor's default: 100).
    pub lines: Option<usize>,
    /// Only lines since then: an RFC 3339 time, or a duration ago ("1h").
    pub since: Option<String>,
    /// Only `stdout` or `stderr`.
    pub stream: Option<String>,
    /// Go on with new lines as they are written.
    pub follow: bool,
}

/// What of the event feed to get.
#[derive(Clone, Debug, Default)]
pub struct EventsQuery {
    /// Go on with new events as they happen.
    pub follow: bool,
    /// Only events since then: an RFC 3339 time, or a duration ago ("1h").
    pub since: Option<String>,
    /// Only events of this resource.
    pub resource: Option<String>,
}

/// The event feed as it arrives: one JSON line per event.
pub struct Events {
    body: Body,
    pending: Vec<u8>,
}

impl Events {
    /// The next line (an event as JSON, without its newline); `None` once
    /// the feed ended.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            if let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=nl).collect();
                line.pop();
                return Ok(Some(line));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ApiError::Decode(format!("reading events: {e}"))),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.pending.extend_from_slice(data);
                    }
                }
            }
        }
    }

    /// The next event, decoded.
    pub async fn next(&mut self) -> Result<Option<EventRecord>, ApiError> {
        match self.next_line().await? {
            None => Ok(None),
            Some(line) => serde_json::from_slice(&line)
                .map(Some)
                .map_err(|e| ApiError::Decode(e.to_string())),
        }
    }
}

fn status_path(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/v1/resources/{}", encode(n)),
        None => "/v1/resources".to_owned(),
    }
}

/// An error answer: its `{"error": ...}` message, or the body as text.
fn refused(status: StatusCode, body: &[u8]) -> ApiError {
    let message = serde_json::from_slice::<ErrorReply>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    ApiError::Refused { status, message }
}

fn json(value: &impl serde::Serialize) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::Decode(e.to_string()))
}

/// Percent-encodes a name for a URL path (names are checked by the
/// monitor; this only keeps odd input from breaking the request line).
pub fn encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_a_path() {
        assert_eq!(encode("web-1.a_b"), "web-1.a_b");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn an_error_answer_gives_its_message() {
        match refused(StatusCode::CONFLICT, br#"{"error":"web failed: boom"}"#) {
            ApiError::Refused { status, message } => {
                assert_eq!(status, StatusCode::CONFLICT);
                assert_eq!(message, "web failed: boom");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refused(StatusCode::BAD_GATEWAY, b"plain"),
            ApiError::Refused { message, .. } if message == "plain"
        ));
    }

    #[test]
    fn a_listener_is_an_http_url_with_a_host_and_port() {
        for (url, authority) in [
            ("http://127.0.0.1:7474", "127.0.0.1:7474"),
            ("http://127.0.0.1:7474/", "127.0.0.1:7474"),
            ("HTTP://localhost:9000", "localhost:9000"),
            ("http://[::1]:7474", "[::1]:7474"),
            ("http://monitor.example", "monitor.example:80"),
            ("http://[::1]", "[::1]:80"),
        ] {
            let l = Listener::parse(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(l.authority, authority, "{url}");
            assert_eq!(l.url, format!("http://{authority}"), "{url}");
        }
        for (url, why) in [
            ("https://127.0.0.1:7474", "speaks plain HTTP"),
            ("127.0.0.1:7474", "not an http://HOST:PORT URL"),
            ("http://127.0.0.1:7474/v1", "without a path"),
            (
                "http://user@127.0.0.1:7474",
                "without a path, query or user",
            ),
            ("http://127.0.0.1:x", "not a number"),
            ("http://127.0.0.1:70000", "not a number"),
            ("http://", "without a path"),
        ] {
            let e = Listener::parse(url, None).expect_err(url).to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn a_token_never_shows_its_secret() {
        let t = Token::new("s3cret-0123456789", "RESMON_TOKEN");
        let shown = format!("{t:?}");
        assert!(
            shown.contains("RESMON_TOKEN") && !shown.contains("s3cret"),
            "{shown}"
        );
        let client = Client::tcp("http://127.0.0.1:1", Some(t)).unwrap();
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let e = client.refusal(status, br#"{"error":"no"}"#).to_string();
            assert!(e.contains("the token from RESMON_TOKEN"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let anonymous = Client::tcp("http://127.0.0.1:1", None).unwrap();
        let e = anonymous
            .refusal(StatusCode::UNAUTHORIZED, br#"{"error":"no"}"#)
            .to_string();
        assert!(e.contains("no token"), "{e}");
    }

    #[test]
    fn an_unreachable_monitor_names_every_place_tried_in_order() {
        let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let tried = vec![
            Attempt {
                at: "/run/user/1000/resmon.sock".into(),
                why: Unanswered::Connect(gone()),
                tcp: false,
            },
            Attempt {
                at: "/run/resmon/resmon.sock".into(),
                why: Unanswered::Untrusted { uid: 65534 },
                tcp: false,
            },
        ];
        let text = ClientError::Unreachable { tried }.to_string();
        let first = text.find("/run/user/1000/resmon.sock: ").expect(&text);
        let second = text
            .find("/run/resmon/resmon.sock: served by uid 65534")
            .expect(&text);
        assert!(first < second, "{text}");
        assert!(text.starts_with("cannot reach the monitor"), "{text}");
    }
}
