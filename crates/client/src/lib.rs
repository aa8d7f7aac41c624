//! A client of the resmon local API: HTTP/1.1 over the monitor's Unix socket.
//!
//! One connection per request: the API is local and requests are few, so
//! there is no pool to keep. Used by the `resmon` CLI and the benchmarks.

pub use hyper::{Method, StatusCode};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

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
