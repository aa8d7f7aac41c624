//! Append-only journals in a directory the caller owns (the monitor's
//! state directory, or a resource's log directory).
//!
//! A journal `NAME` is the file `NAME.log` and its rotated predecessors
//! `NAME.1.log` (the newest) to `NAME.K.log` (the oldest). Each record is
//! one line, `CRC PAYLOAD\n`, where `CRC` is the CRC-32 of the payload in
//! eight hex digits. So a reader tells a good record from a torn one (a
//! crash in the middle of a write) or a damaged one (blocks zeroed by a
//! power loss) and skips it, counting it, instead of misreading it; and a
//! writer that opens a journal whose last line is torn ends that line
//! first, so the damage stays in one record.
//!
//! [`Writer`] rotates by size: a record that would take `NAME.log` past
//! `max_size` starts a new file, and only `keep` old files stay, so a
//! journal never holds more than about `(keep + 1) * max_size` bytes.
//! Files are opened relative to the directory's descriptor and never
//! through a symbolic link.

pub mod output;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::fs::File;
use std::io::{self, Read, Write};

/// How a journal is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The size past which the current file is rotated.
    pub max_size: u64,
    /// How many rotated files are kept.
    pub keep: u32,
}

/// Opens the directory journals live in, never through a symbolic link
/// at its last step.
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The name of file `n` of journal `name`: 0 is the current one.
pub fn file_name(name: &str, n: u32) -> String {
    if n == 0 {
        format!("{name}.log")
    } else {
        format!("{name}.{n}.log")
    }
}

/// Appends records to a journal.
pub struct Writer {
    dir: OwnedFd,
    name: String,
    options: Options,
    file: File,
    size: u64,
    line: Vec<u8>,
    /// A write failed (a full disk) and may have left part of a line: the
    /// next append ends it first.
    torn: bool,
}

fn open_at(dir: BorrowedFd<'_>, file: &str, flags: OFlags) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        file,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

fn open_append(dir: BorrowedFd<'_>, file: &str) -> io::Result<File> {
    open_at(dir, file, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
}

impl Writer {
    /// Opens journal `name` in `dir` for appending, creating it (mode 0600)
    /// when it does not exist. A torn last line is ended first.
    pub fn open(dir: BorrowedFd<'_>, name: &str, options: Options) -> io::Result<Writer> {
        let dir = rustix::io::fcntl_dupfd_cloexec(dir, 0)?;
        let mut file = open_append(dir.as_fd(), &file_name(name, 0))?;
        let mut size = file.metadata()?.len();
        if size > 0 && !ends_with_newline(dir.as_fd(), &file_name(name, 0), size)? {
            file.write_all(b"\n")?;
            size += 1;
        }
        Ok(Writer {
            dir,
            name: name.to_string(),
            options,
            file,
            size,
            line: Vec::new(),
            torn: false,
        })
    }

    /// Appends one record; `payload` must not hold a newline (one that does
    /// is refused). The line goes out in one `write`, so a crash tears at
    /// most this record.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.contains(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a journal record cannot hold a newline",
            ));
        }
        self.line.clear();
        let crc = crc32fast::hash(payload);
        write!(self.line, "{crc:08x} ")?;
        self.line.extend_from_slice(payload);
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.torn {
            // An empty line where nothing was left: the reader skips it.
            self.file.write_all(b"\n")?;
            self.size += 1;
            self.torn = false;
        }
        if self.size > 0 && self.size.saturating_add(len) > self.options.max_size {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(&self.line) {
            self.torn = true;
            self.size = self.file.metadata().map_or(self.size, |m| m.len());
            return Err(e);
        }
        self.size += len;
        Ok(())
    }

    /// Makes what was appended durable (`fdatasync`).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The current file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `NAME.log` becomes `NAME.1.log`, each older file moves one up, and
    /// the one past `keep` goes.
    fn rotate(&mut self) -> io::Result<()> {
        let dir = self.dir.as_fd();
        let keep = self.options.keep;
        let gone = file_name(&self.name, keep);
        match rustix::fs::unlinkat(dir, &gone, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        for n in (0..keep).rev() {
            let from = file_name(&self.name, n);
            match rustix::fs::renameat(dir, &from, dir, file_name(&self.name, n + 1)) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.file = open_append(dir, &file_name(&self.name, 0))?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

fn ends_with_newline(dir: BorrowedFd<'_>, file: &str, size: u64) -> io::Result<bool> {
    let f = open_at(dir, file, OFlags::RDONLY)?;
    let mut last = [0u8];
    let n = rustix::io::pread(&f, &mut last, size - 1)?;
    Ok(n == 1 && last[0] == b'\n')
}

/// What a read found: the good records' payloads, in order, and how many
/// lines were torn or damaged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Vec<u8>>,
    pub damaged: usize,
}

/// The records of one file's bytes.
pub fn parse(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (line, next, whole) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..], true),
            None => (rest, &rest[rest.len()..], false),
        };
        rest = next;
        if line.is_empty() {
            continue; // the end of a torn line, closed by the next writer
        }
        match record(line).filter(|_| whole) {
            Some(payload) => scan.records.push(payload.to_vec()),
            None => scan.damaged += 1,
        }
    }
    scan
}

/// The payload of a good line.
fn record(line: &[u8]) -> Option<&[u8]> {
    let (crc, payload) = (line.get(..8)?, line.get(9..)?);
    if line[8] != b' ' {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Reads one file of a journal; a file that does not exist is empty.
pub fn read_file(dir: BorrowedFd<'_>, file: &str) -> io::Result<Scan> {
    let mut f = match open_at(dir, file, OFlags::RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(parse(&bytes))
}

/// The numbers of the files journal `name` has in `dir`, oldest first
/// (the current file, 0, last), also those past a `keep` that was larger
/// before.
pub fn files(dir: BorrowedFd<'_>, name: &str) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    let prefix = format!("{name}.");
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy();
        let Some(middle) = file
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".log"))
        else {
            if file == file_name(name, 0) {
                found.push(0);
            }
            continue;
        };
        if let Ok(n) = middle.parse::<u32>() {
            if n > 0 && file == file_name(name, n) {
                found.push(n);
            }
        }
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Every record of journal `name`, oldest first.
pub fn read(dir: BorrowedFd<'_>, name: &str) -> io::Result<Scan> {
    let mut all = Scan::default();
    for n in files(dir, name)? {
        let scan = read_file(dir, &file_name(name, n))?;
        all.records.extend(scan.records);
        all.damaged += scan.damaged;
    }
    Ok(all)
}

/// The newest good record of journal `name`, if any.
pub fn last(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    for n in files(dir, name)?.into_iter().rev() {
        if let Some(r) = read_file(dir, &file_name(name, n))?.records.pop() {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            t.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (t, fd)
    }

    const BIG: Options = Options {
        max_size: 1 << 20,
        keep: 2,
    };

    fn payloads(scan: &Scan) -> Vec<String> {
        scan.records
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    #[test]
    fn records_come_back_in_order_across_reopens() {
        let (_t, d) = dir();
        let mut w = Writer::open(d.as_fd(), "events", BIG).unwrap();
        w.append(b"one").unwrap();
        w.append(b"").unwrap();
        drop(w);
        let mut w = Writer::open(d.as_fd(), "events", BIG).unwrap();
        w.append(b"three").unwrap();
        w.sync().unwrap();
        let scan = read(d.as_fd(), "events").unwrap();
        assert_eq!(payloads(&scan), ["one", "", "three"]);
        assert_eq!(scan.damaged, 0);
        assert_eq!(last(d.as_fd(), "events").unwrap().unwrap(), b"three");
        assert!(w.append(b"a\nb").is_err(), "a newline would split a record");
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_closed_by_the_next_writer() {
        let (t, d) = dir();
        let mut w = Writer::open(d.as_fd(), "events", BIG).unwrap();
        w.append(b"whole").unwrap();
        drop(w);
        // A crash in the middle of the next write.
        let path = t.path().join("events.log");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"0badcafe half of a rec").unwrap();
        let scan = read(d.as_fd(), "events").unwrap();
        assert_eq!((payloads(&scan), scan.damaged), (vec!["whole".into()], 1));
        let mut w = Writer::open(d.as_fd(), "events", BIG).unwrap();
        w.append(b"after").unwrap();
        let scan = read(d.as_fd(), "events").unwrap();
        assert_eq!(payloads(&scan), ["whole", "after"]);
        assert_eq!(scan.damaged, 1, "the torn one stays one damaged line");
        // Zeroed blocks and a flipped byte are damage too, never a record.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0u8; 600]).unwrap();
        f.write_all(b"\n").unwrap();
        drop(f);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(5).position(|w| w == b"whole").unwrap();
        bytes[at] = b'W';
        std::fs::write(&path, bytes).unwrap();
        let scan = read(d.as_fd(), "events").unwrap();
        assert_eq!(payloads(&scan), ["after"]);
        assert_eq!(scan.damaged, 3);
    }

    #[test]
    fn rotation_bounds_the_journal_and_keeps_the_newest() {
        let (t, d) = dir();
        let o = Options {
            max_size: 100,
            keep: 2,
        };
        let mut w = Writer::open(d.as_fd(), "events", o).unwrap();
        for i in 0..100 {
            w.append(format!("record number {i:03}").as_bytes())
                .unwrap();
        }
        assert_eq!(files(d.as_fd(), "events").unwrap(), [2, 1, 0]);
        let total: u64 = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 300, "{total} bytes");
        let got = payloads(&read(d.as_fd(), "events").unwrap());
        let want: Vec<String> = (100 - got.len()..100)
            .map(|i| format!("record number {i:03}"))
            .collect();
        assert_eq!(got, want, "the newest records, in order");
        // A record larger than max_size gets a file of its own.
        w.append(&[b'x'; 300]).unwrap();
        w.append(b"next").unwrap();
        let got = payloads(&read(d.as_fd(), "events").unwrap());
        assert_eq!(got[got.len() - 2].len(), 300);
        // Files left by a larger `keep` are read too, oldest first.
        std::fs::write(t.path().join("events.7.log"), "").unwrap();
        assert_eq!(files(d.as_fd(), "events").unwrap(), [7, 2, 1, 0]);
        assert!(files(d.as_fd(), "other").unwrap().is_empty());
    }

    #[test]
    fn a_symlink_in_place_of_the_journal_is_not_followed() {
        let (t, d) = dir();
        let target = t.path().join("target");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, t.path().join("events.log")).unwrap();
        assert!(Writer::open(d.as_fd(), "events", BIG).is_err());
        assert!(read(d.as_fd(), "events").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    proptest! {
        /// Whatever bytes a file holds, reading it never panics, and every
        /// record it returns was written by a writer (its CRC holds).
        #[test]
        fn any_bytes_read_as_records_or_damage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let scan = parse(&bytes);
            for r in &scan.records {
                let line = format!("{:08x} ", crc32fast::hash(r));
                let mut whole = line.into_bytes();
                whole.extend_from_slice(r);
                prop_assert!(bytes.windows(whole.len()).any(|w| w == whole.as_slice()));
            }
        }

        /// Cutting a journal anywhere loses at most the record cut.
        #[test]
        fn a_cut_anywhere_loses_only_the_record_cut(n in 1..20usize, cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            for i in 0..n {
                let p = format!("record {i}");
                bytes.extend_from_slice(format!("{:08x} {p}\n", crc32fast::hash(p.as_bytes())).as_bytes());
            }
            let at = cut.index(bytes.len() + 1);
            let scan = parse(&bytes[..at]);
            let whole = bytes[..at].iter().filter(|&&b| b == b'\n').count();
            prop_assert_eq!(scan.records.len(), whole);
            prop_assert!(scan.damaged <= 1);
        }
    }
}
