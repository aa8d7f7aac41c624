//! A client of the resmon local API: HTTP/1.1 over the monitor's Unix socket.
//!
//! One connection per request: the API is local and requests are few, so
//! there is no pool to keep. Each route has a typed method that returns
//! the [`wire`] type the monitor sends; [`Client::call`] stays for
//! requests of one's own. Used by the `resmon` CLI and the benchmarks.

pub mod wire;

pub use hyper::{Method, StatusCode};

use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
use wire::{
    ActedReply, CallsReply, ControlReply, ErrorReply, EventRecord, MaintenanceBody, MoveBody,
    MoveReply, NodesReply, OpReply, ReloadReport, StatusReply, TerminateBody,
};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the monitor at {path}: {source} (is `resmon serve` running? use --socket to name its socket)")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is served by uid {uid}, which is neither root nor you: it is not a monitor you can trust (another user may have bound the socket first); refusing to talk to it. Ask root which socket the monitor uses, or use --socket")]
    Impostor { path: PathBuf, uid: u32 },
    #[error("talking to the monitor at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
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

pub struct Client {
    socket: PathBuf,
}

/// A response whose body is still arriving.
pub type Body = hyper::body::Incoming;

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    fn protocol(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message: e.to_string(),
        }
    }

    /// Sends a request; returns the status and the body as a stream.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Body), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.socket.clone(),
                    source,
                })?;
        // The socket's owner could be anyone who bound the path first: talk
        // only to a monitor run by root or by the caller.
        let server = stream.peer_cred().map_err(|e| self.protocol(e))?.uid();
        let me = rustix::process::geteuid().as_raw();
        if server != 0 && server != me {
            return Err(ClientError::Impostor {
                path: self.socket.clone(),
                uid: server,
            });
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "resmon")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e))?;
        Ok((resp.status(), resp.into_body()))
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, body) = self.send(method, path, body).await?;
        let bytes = body
            .collect()
            .await
            .map_err(|e| self.protocol(e))?
            .to_bytes();
        Ok((status, bytes))
    }
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
            return Err(refused(status, &bytes));
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
            return Err(refused(status, &bytes));
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
}
