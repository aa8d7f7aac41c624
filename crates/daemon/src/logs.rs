//! `GET /v1/resources/{name}/logs`: a resource's captured output, read
//! from its log in the log directory (written by its relay, see
//! `resmon_process::relay`), so it is there for a resource that stopped
//! and after a monitor restart. With `follow`, new lines follow as the
//! relay writes them, across rotations, until the monitor stops.

use crate::api::ApiState;
use axum::response::{IntoResponse, Response};
use resmon_process::relay::Line;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The most lines one answer sends of the past.
pub const MAX_LINES: usize = 100_000;

/// How often a follower looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// The query of `GET /v1/resources/{name}/logs`.
#[derive(Deserialize)]
pub struct LogsQuery {
    /// The last this many lines (default 100).
    pub lines: Option<usize>,
    /// Only lines since then: an RFC 3339 time, or a duration ago.
    pub since: Option<String>,
    /// Only `stdout` or `stderr` (the relay's own notes always show).
    pub stream: Option<String>,
    #[serde(default)]
    pub follow: bool,
}

/// One line as the API sends it.
#[derive(Serialize)]
struct LogLine<'a> {
    time: &'a str,
    stream: &'a str,
    /// The line goes on in the next record (it was longer than 64 KiB).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    continues: bool,
    text: &'a str,
}

struct Filter {
    since: Option<SystemTime>,
    stream: Option<String>,
}

impl Filter {
    fn admits(&self, l: &Line) -> bool {
        if let Some(s) = &self.stream {
            if &l.stream != s && l.stream != "resmon" {
                return false;
            }
        }
        match self.since {
            None => true,
            Some(since) => humantime::parse_rfc3339(&l.time).is_ok_and(|t| t >= since),
        }
    }
}

fn json_line(l: &Line) -> axum::body::Bytes {
    let mut s = serde_json::to_string(&LogLine {
        time: &l.time,
        stream: &l.stream,
        continues: l.continues,
        text: &l.text,
    })
    .unwrap_or_default();
    s.push('\n');
    axum::body::Bytes::from(s)
}

/// Every line of the resource's log, oldest first, that `filter` admits.
fn read_all(dir: BorrowedFd<'_>, name: &str, filter: &Filter) -> Vec<Line> {
    let Ok(scan) = resmon_journal::read(dir, name) else {
        return Vec::new();
    };
    scan.records
        .iter()
        .filter_map(|r| Line::parse(r))
        .filter(|l| filter.admits(l))
        .collect()
}

/// Where a follower is in the current file: its inode and how far it read.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Position {
    ino: u64,
    offset: u64,
}

fn current(dir: BorrowedFd<'_>, name: &str) -> Option<(OwnedFd, Position)> {
    let fd = rustix::fs::openat(
        dir,
        resmon_journal::file_name(name, 0),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    Some((
        fd,
        Position {
            ino: st.st_ino,
            offset: st.st_size.max(0) as u64,
        },
    ))
}

/// The whole lines written since `from`, and where they end. A file that
/// was rotated meanwhile is read from its start.
fn read_new(dir: BorrowedFd<'_>, name: &str, from: Position) -> (Vec<Line>, Position) {
    let Some((fd, now)) = current(dir, name) else {
        return (Vec::new(), from);
    };
    let start = if now.ino == from.ino && now.offset >= from.offset {
        from.offset
    } else {
        0
    };
    let mut bytes = vec![0u8; (now.offset - start).min(16 << 20) as usize];
    let n = rustix::io::pread(&fd, &mut bytes, start).unwrap_or(0);
    bytes.truncate(n);
    // Only up to the last newline: the rest is being written.
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = resmon_journal::parse(&bytes[..whole])
        .records
        .iter()
        .filter_map(|r| Line::parse(r))
        .collect();
    (
        lines,
        Position {
            ino: now.ino,
            offset: start + whole as u64,
        },
    )
}

/// Answers `GET /v1/resources/{name}/logs`.
pub async fn answer(st: &ApiState, name: String, q: LogsQuery) -> Response {
    let bad = |m: String| crate::api::error(axum::http::StatusCode::BAD_REQUEST, m);
    let since = match q.since.as_deref().map(crate::api::since_time).transpose() {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    if let Some(s) = &q.stream {
        if s != "stdout" && s != "stderr" {
            return bad(format!("stream={s:?}: use stdout or stderr"));
        }
    }
    let Some(dir) = st.logs.clone() else {
        return crate::api::error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the log directory could not be opened (see the monitor's log)",
        );
    };
    let filter = Filter {
        since,
        stream: q.stream.clone(),
    };
    let limit = q
        .lines
        .unwrap_or(if since.is_some() { MAX_LINES } else { 100 });
    let limit = limit.min(MAX_LINES);
    let (past, pos) = {
        let (dir, name) = (dir.clone(), name.clone());
        let read = crate::workers::spawn(move || {
            // Where the file ends now first: a follower goes on from there.
            let pos = current(dir.as_fd(), &name).map(|(_, p)| p);
            let mut lines = read_all(dir.as_fd(), &name, &filter);
            let skip = lines.len().saturating_sub(limit);
            lines.drain(..skip);
            // Lines the relay could not write are said, not hidden.
            let lost = resmon_process::relay::dropped(dir.as_fd(), &name);
            if lost > 0 {
                lines.push(Line {
                    time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    stream: "resmon".into(),
                    continues: false,
                    text: format!(
                        "{lost} line(s) of its output could not be written to the log and were dropped"
                    ),
                });
            }
            (lines, pos, filter)
        })
        .await;
        match read {
            Ok((lines, pos, f)) => ((lines, f), pos),
            Err(e) => {
                return crate::api::error(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading the log: {e}"),
                )
            }
        }
    };
    let (past, filter) = past;
    let past: Vec<Result<axum::body::Bytes, std::convert::Infallible>> =
        past.iter().map(|l| Ok(json_line(l))).collect();
    let past = futures_util::stream::iter(past);
    let headers = [("content-type", "application/x-ndjson")];
    if !q.follow {
        return (headers, axum::body::Body::from_stream(past)).into_response();
    }
    let start = pos.unwrap_or(Position { ino: 0, offset: 0 });
    let bus = st.bus.clone();
    let filter = Arc::new(filter);
    let live = futures_util::stream::unfold(
        (start, std::collections::VecDeque::<Line>::new()),
        move |(mut pos, mut queue)| {
            let (dir, name, bus, filter) = (dir.clone(), name.clone(), bus.clone(), filter.clone());
            async move {
                loop {
                    if let Some(l) = queue.pop_front() {
                        return Some((Ok(json_line(&l)), (pos, queue)));
                    }
                    if bus.last().is_some() {
                        return None; // the monitor stopped
                    }
                    tokio::time::sleep(FOLLOW_EVERY).await;
                    let (lines, next) = read_new(dir.as_fd(), &name, pos);
                    pos = next;
                    queue.extend(lines.into_iter().filter(|l| filter.admits(l)));
                }
            }
        },
    );
    use futures_util::StreamExt;
    (headers, axum::body::Body::from_stream(past.chain(live))).into_response()
}
