//! Resource output logs: the record format of a resource's `NAME.log` in
//! the monitor's log directory, which a `process` resource's log relay
//! writes, and [`ResourceLog`], through which the monitor writes the
//! output it sees itself (an OCF agent's actions, a plugin's log lines).
//!
//! A record's payload is `TIME STREAM TEXT`: the RFC 3339 time it was read,
//! `stdout`, `stderr` or `resmon` (a note of the writer's own), with a `+`
//! after the stream when the line goes on in the next record (a line
//! longer than the relay's limit is split, never cut).

use crate::{Options, Writer};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// One record's payload: `TIME STREAM TEXT`.
pub fn payload(time: SystemTime, stream: &str, text: &[u8]) -> Vec<u8> {
    let mut out = format!("{} {stream} ", humantime::format_rfc3339_millis(time)).into_bytes();
    // Invalid UTF-8 is kept readable; a newline cannot be in `text`.
    out.extend_from_slice(String::from_utf8_lossy(text).as_bytes());
    out
}

/// A record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub time: String,
    /// `stdout`, `stderr`, or `resmon` for the writer's own notes.
    pub stream: String,
    /// The line goes on in the next record.
    pub continues: bool,
    pub text: String,
}

impl Line {
    pub fn parse(payload: &[u8]) -> Option<Line> {
        let s = std::str::from_utf8(payload).ok()?;
        let (time, rest) = s.split_once(' ')?;
        let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let (stream, continues) = match stream.strip_suffix('+') {
            Some(s) => (s, true),
            None => (stream, false),
        };
        Some(Line {
            time: time.to_owned(),
            stream: stream.to_owned(),
            continues,
            text: text.to_owned(),
        })
    }
}

/// The log of one resource whose output the monitor writes itself. It is
/// opened at the first line, and again after a failure; lines that cannot
/// be written are counted, never waited for.
pub struct ResourceLog {
    dir: PathBuf,
    name: String,
    options: Options,
    writer: Mutex<Option<Writer>>,
    dropped: AtomicU64,
}

impl ResourceLog {
    pub fn new(dir: PathBuf, name: &str, options: Options) -> ResourceLog {
        ResourceLog {
            dir,
            name: name.to_owned(),
            options,
            writer: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends each line of `text` to `stream`.
    pub fn append(&self, stream: &str, text: &str) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_none() {
            *w = self.open().ok();
        }
        let now = SystemTime::now();
        for line in text.lines() {
            let ok = w
                .as_mut()
                .is_some_and(|w| w.append(&payload(now, stream, line.as_bytes())).is_ok());
            if !ok {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                *w = None;
            }
        }
    }

    /// Lines that could not be written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn open(&self) -> std::io::Result<Writer> {
        let dir = crate::open_dir(&self.dir)?;
        Writer::open(rustix::fd::AsFd::as_fd(&dir), &self.name, self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_log_takes_each_line_and_reads_back() {
        let t = tempfile::tempdir().unwrap();
        let log = ResourceLog::new(
            t.path().to_path_buf(),
            "db",
            Options {
                max_size: 1 << 20,
                keep: 1,
            },
        );
        log.append("stderr", "start: one\nstart: two\n");
        let dir = rustix::fs::open(
            t.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let lines: Vec<Line> = crate::read(rustix::fd::AsFd::as_fd(&dir), "db")
            .unwrap()
            .records
            .iter()
            .filter_map(|r| Line::parse(r))
            .collect();
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["start: one", "start: two"]
        );
        assert!(lines.iter().all(|l| l.stream == "stderr" && !l.continues));
        assert_eq!(log.dropped(), 0);
        // A log directory that is gone: counted, not fatal.
        let gone = ResourceLog::new(
            t.path().join("nope"),
            "db",
            Options {
                max_size: 10,
                keep: 0,
            },
        );
        gone.append("stdout", "x");
        assert_eq!(gone.dropped(), 1);
    }

    #[test]
    fn a_record_reads_back() {
        let p = payload(SystemTime::UNIX_EPOCH, "stderr+", b"it broke: \xff");
        let l = Line::parse(&p).unwrap();
        assert_eq!(l.time, "1970-01-01T00:00:00.000Z");
        assert_eq!((l.stream.as_str(), l.continues), ("stderr", true));
        assert_eq!(l.text, "it broke: \u{fffd}");
    }
}
