//! The HTTP server's own refusals in the API's JSON.
//!
//! A request that cannot be parsed (a malformed request line, headers too
//! large, a URI too long) never reaches the router: hyper answers it
//! itself, with the status alone and an empty body. The API promises
//! `{"error": "..."}` for every error, so the connection's writes pass
//! through [`JsonErrors`], which recognizes such an answer (a 4xx or 5xx
//! head with `content-length: 0` and no `content-type`, which the router
//! never sends: its errors are JSON) and writes it with a JSON body
//! instead.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose bodiless error answers get a JSON body.
pub struct JsonErrors<Io> {
    inner: Io,
    /// A rewritten answer being written: its bytes, how far, and how many
    /// bytes of the caller's it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<Io> JsonErrors<Io> {
    pub fn new(inner: Io) -> Self {
        JsonErrors {
            inner,
            pending: None,
        }
    }
}

/// What an error answer of the server itself means, for its body.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "malformed request: the request line or a header could not be parsed",
        408 => "the request did not arrive in time",
        413 => "the request is too large",
        414 => "the request URI is too long",
        431 => "the request's headers are too large",
        505 => "only HTTP/1.1 and HTTP/1.0 are served",
        _ => "the request was refused by the HTTP server",
    }
}

/// The longest head of an answer the server makes itself.
const HEAD_AT_MOST: usize = 4096;

/// `buf` rewritten with a JSON body, when it is one whole bodiless error
/// answer of the server.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    // Every write passes here: a body's bytes (a large `/metrics` answer
    // comes in many writes) are let through without a scan.
    if buf.len() > HEAD_AT_MOST || !buf.starts_with(b"HTTP/1.") {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    if status < 400 {
        return None;
    }
    let headers: Vec<&str> = lines.collect();
    let has = |name: &str| {
        headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with(name))
    };
    if has("content-type:")
        || !headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let body = serde_json::json!({ "error": meaning(status) }).to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for h in headers
        .iter()
        .filter(|h| !h.eq_ignore_ascii_case("content-length: 0"))
    {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for JsonErrors<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if let Some(out) = rewrite(buf) {
                this.pending = Some((out, 0, buf.len()));
            }
        }
        if let Some((out, pos, stands_for)) = &mut this.pending {
            while *pos < out.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &out[*pos..]))?;
                if n == 0 {
                    return Poll::Ready(Ok(0));
                }
                *pos += n;
            }
            let n = (*stands_for).min(buf.len());
            this.pending = None;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: the server then hands each answer over in one buffer,
    // which is what `rewrite` looks at.
    /// Many buffers at once (a head and its body's chunks, written without
    /// copying them together) pass through; one buffer alone may be an
    /// answer to rewrite, and a rewrite under way goes on with its buffer.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        match (filled.next(), filled.next()) {
            (None, _) => Poll::Ready(Ok(0)),
            (Some(first), _) if self.pending.is_some() => self.poll_write(cx, first),
            (Some(only), None) => self.poll_write(cx, only),
            _ => Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for JsonErrors<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_error_answers_are_rewritten() {
        let hyper_400 =
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper_400).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close") && head.contains("date: x"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed request"));
        for kept in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            b"partial head",
        ] {
            assert!(rewrite(kept).is_none(), "{}", String::from_utf8_lossy(kept));
        }
    }
}
