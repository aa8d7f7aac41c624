//! The log relay: captures a service's output into its resource's log.
//!
//! A `process` resource with `log = "file"` gets one relay process (the
//! monitor's own binary, `resmon log-relay`), started before its first
//! service beside the resource, not in its cgroup: a stop of the service,
//! forced or not, leaves it, and a restart reuses it, so a restart starts
//! no extra process and waits for none. The service writes into two pipes;
//! the relay holds their read ends (its fd 0 is the service's stdout, its
//! fd 1 the service's stderr) and appends each line, with a timestamp and
//! the stream, to the resource's log (`NAME.log` in the log directory; see
//! `resmon_journal::output` for the format and rotation).
//!
//! So the service never waits for the disk (only for the pipe, which the
//! relay drains), rotation never loses a line, and the capture survives a
//! restart of the monitor: the relay, not the monitor, reads the pipes. It
//! exits once every holder of their write ends is gone: the monitor's copy
//! goes when the resource is closed (which then waits for the relay to
//! drain, and kills it if something still holds them), the service's when
//! its processes end. It ignores the usual stop signals, so a signal sent
//! to a whole session or group does not cut a service's last words.
//!
//! A line longer than `max_line` is split into records whose stream ends in
//! `+` (the line continues in the next). When a record cannot be written
//! (disk full), lines are counted as dropped, the service runs on, and a
//! `resmon` record says how many once writing works again; the count is
//! also kept in `NAME.dropped`, written in place so it needs no new block.

pub use resmon_journal::Options;
use resmon_journal::Writer;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use std::io;
use std::time::SystemTime;

/// The relay's own program, installed beside `resmon`: small, since a
/// monitor runs one per captured resource.
pub const PROGRAM: &str = "resmon-log-relay";

/// The hidden subcommand of the monitor's binary that runs a relay too,
/// for an install that lacks [`PROGRAM`].
pub const SUBCOMMAND: &str = "log-relay";

/// How much a relay reads at a time.
const READ_SIZE: usize = 8 * 1024;

/// The longest line kept as one record.
pub const MAX_LINE: usize = 64 * 1024;

/// What a relay is told on its command line.
#[derive(Clone, Debug)]
pub struct Args {
    pub dir: std::path::PathBuf,
    pub name: String,
    pub options: Options,
    pub max_line: usize,
}

impl Args {
    /// The command line that runs a relay with these arguments.
    pub fn to_argv(&self) -> Vec<String> {
        vec![
            "--dir".into(),
            self.dir.to_string_lossy().into_owned(),
            "--name".into(),
            self.name.clone(),
            "--max-size".into(),
            self.options.max_size.to_string(),
            "--keep".into(),
            self.options.keep.to_string(),
            "--max-line".into(),
            self.max_line.to_string(),
        ]
    }
}

pub use resmon_journal::output::{payload, Line};

/// The name of the file that counts a resource's dropped lines.
pub fn dropped_file(name: &str) -> String {
    format!("{name}.dropped")
}

/// How many lines of resource `name` were dropped, as its relay counted.
pub fn dropped(dir: BorrowedFd<'_>, name: &str) -> u64 {
    let Ok(fd) = rustix::fs::openat(
        dir,
        dropped_file(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return 0;
    };
    read_dropped(&fd)
}

/// The count in an open `NAME.dropped` file.
pub fn read_dropped(fd: &OwnedFd) -> u64 {
    let mut buf = [0u8; 20];
    let n = rustix::io::pread(fd, &mut buf, 0).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One input stream and the part of a line read so far.
struct Input {
    fd: Option<OwnedFd>,
    name: &'static str,
    partial: Vec<u8>,
}

/// Where records go, and what could not be written.
struct Sink {
    writer: Writer,
    dropped: u64,
    /// Why writing fails, while it does.
    failing: Option<String>,
    counter: Option<OwnedFd>,
}

impl Sink {
    fn record(&mut self, stream: &str, text: &[u8]) {
        let now = SystemTime::now();
        if let Some(why) = self.failing.clone() {
            let note = format!("{} line(s) were dropped: {why}", self.dropped);
            if self
                .writer
                .append(&payload(now, "resmon", note.as_bytes()))
                .is_ok()
            {
                self.failing = None;
            }
        }
        if self.failing.is_none() {
            match self.writer.append(&payload(now, stream, text)) {
                Ok(()) => return,
                Err(e) => self.failing = Some(e.to_string()),
            }
        }
        self.dropped += 1;
        if let Some(c) = &self.counter {
            // In place, padded: a full disk has the block already.
            let _ = rustix::io::pwrite(c, format!("{:<20}", self.dropped).as_bytes(), 0);
        }
    }
}

/// Runs a relay on fds 0 and 1 until both reach their end; returns the
/// process's exit code.
pub fn run(args: &Args) -> i32 {
    for sig in [
        libc_signal::TERM,
        libc_signal::INT,
        libc_signal::HUP,
        libc_signal::QUIT,
        libc_signal::USR1,
        libc_signal::USR2,
    ] {
        ignore(sig);
    }
    match relay(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("resmon log-relay for {:?}: {e}", args.name);
            1
        }
    }
}

mod libc_signal {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const QUIT: i32 = 3;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const TERM: i32 = 15;
}

fn ignore(sig: i32) {
    if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
        // SAFETY: SIG_IGN installs no handler: no code of ours runs in a
        // signal context.
        unsafe {
            let _ = nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigIgn);
        }
    }
}

fn relay(args: &Args) -> io::Result<()> {
    let dir = resmon_journal::open_dir(&args.dir)?;
    let writer = Writer::open(dir.as_fd(), &args.name, args.options)?;
    let counter = rustix::fs::openat(
        dir.as_fd(),
        dropped_file(&args.name),
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok();
    if let Some(c) = &counter {
        let _ = rustix::io::pwrite(c, format!("{:<20}", 0).as_bytes(), 0);
    }
    let mut sink = Sink {
        writer,
        dropped: 0,
        failing: None,
        counter,
    };
    // SAFETY: fds 0 and 1 are the pipes the monitor gave this process,
    // and nothing else in it uses them.
    let (out, err) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1))
    };
    let mut inputs = [
        Input {
            fd: Some(out),
            name: "stdout",
            partial: Vec::new(),
        },
        Input {
            fd: Some(err),
            name: "stderr",
            partial: Vec::new(),
        },
    ];
    // Small: a monitor runs one relay per captured resource, and this
    // buffer is most of what a relay costs in memory of its own.
    let mut buf = vec![0u8; READ_SIZE];
    while inputs.iter().any(|i| i.fd.is_some()) {
        let mut fds: Vec<rustix::event::PollFd<'_>> = inputs
            .iter()
            .filter_map(|i| i.fd.as_ref())
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|p| !p.revents().is_empty()).collect();
        drop(fds);
        let mut k = 0;
        for input in inputs.iter_mut() {
            let Some(fd) = &input.fd else { continue };
            let is_ready = ready[k];
            k += 1;
            if !is_ready {
                continue;
            }
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    if !input.partial.is_empty() {
                        sink.record(input.name, &std::mem::take(&mut input.partial));
                    }
                    input.fd = None;
                }
                Ok(n) => feed(input, &buf[..n], args.max_line, &mut sink),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // No sync at the end: what was written survives the relay in the page
    // cache, and a restart waits for the relay to be gone.
    Ok(())
}

/// Adds what was read to `input`'s line, and records every line it ends
/// (or every `max_line` bytes of one that goes on).
fn feed(input: &mut Input, mut bytes: &[u8], max_line: usize, sink: &mut Sink) {
    while !bytes.is_empty() {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.partial.extend_from_slice(&bytes[..i]);
                bytes = &bytes[i + 1..];
                let line = std::mem::take(&mut input.partial);
                split(input.name, &line, max_line, sink, false);
            }
            None => {
                input.partial.extend_from_slice(bytes);
                bytes = &[];
                if input.partial.len() >= max_line {
                    let line = std::mem::take(&mut input.partial);
                    let keep = split(input.name, &line, max_line, sink, true);
                    input.partial = keep;
                }
            }
        }
    }
}

/// Records `line` in pieces of at most `max_line` bytes. With `open` (the
/// line has not ended yet) the last piece shorter than `max_line` is
/// returned to wait for more.
fn split(stream: &str, line: &[u8], max_line: usize, sink: &mut Sink, open: bool) -> Vec<u8> {
    let max_line = max_line.max(1);
    let mut rest = line;
    loop {
        if rest.len() < max_line && open {
            return rest.to_vec();
        }
        if rest.len() <= max_line && !open {
            sink.record(stream, rest);
            return Vec::new();
        }
        // Not inside a UTF-8 sequence, when one is near.
        let mut cut = max_line;
        while cut > max_line.saturating_sub(4) && cut < rest.len() && (rest[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        if cut == 0 {
            cut = max_line;
        }
        sink.record(&format!("{stream}+"), &rest[..cut]);
        rest = &rest[cut..];
        if rest.is_empty() {
            return Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &OwnedFd) -> Sink {
        Sink {
            writer: Writer::open(
                dir.as_fd(),
                "svc",
                Options {
                    max_size: 1 << 20,
                    keep: 1,
                },
            )
            .unwrap(),
            dropped: 0,
            failing: None,
            counter: None,
        }
    }

    fn lines(dir: &OwnedFd) -> Vec<Line> {
        resmon_journal::read(dir.as_fd(), "svc")
            .unwrap()
            .records
            .iter()
            .map(|r| Line::parse(r).unwrap())
            .collect()
    }

    #[test]
    fn lines_are_split_at_newlines_and_long_ones_in_pieces() {
        let t = tempfile::tempdir().unwrap();
        let dir = resmon_journal::open_dir(t.path()).unwrap();
        let mut s = sink(&dir);
        let mut input = Input {
            fd: None,
            name: "stdout",
            partial: Vec::new(),
        };
        feed(&mut input, b"one\ntw", 8, &mut s);
        feed(&mut input, b"o\n", 8, &mut s);
        feed(&mut input, b"abcdefghijklmnopq", 8, &mut s);
        feed(&mut input, b"rs\n\n", 8, &mut s);
        let got: Vec<(String, bool, String)> = lines(&dir)
            .into_iter()
            .map(|l| (l.stream, l.continues, l.text))
            .collect();
        let want = [
            ("stdout", false, "one"),
            ("stdout", false, "two"),
            ("stdout", true, "abcdefgh"),
            ("stdout", true, "ijklmnop"),
            ("stdout", false, "qrs"),
            ("stdout", false, ""),
        ];
        assert_eq!(got, want.map(|(s, c, t)| (s.to_string(), c, t.to_string())));
        // Every piece of a long line is there: nothing is lost.
        let joined: String = lines(&dir)[2..5].iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined, "abcdefghijklmnopqrs");
    }
}
