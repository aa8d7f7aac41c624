//! The framed protocol between the monitor and a host process.
//!
//! A frame is a little-endian `u32` length, then that many bytes of one
//! message in postcard encoding. Two kinds of socket carry frames:
//!
//! * The host's **main socket** (the socketpair it gets as its stdin). The
//!   monitor sends [`Request`]s: `open`, `terminate` and type-wide control
//!   codes. The host sends [`FromHost`] messages: the [`Reply`] to each of
//!   those (matched by `call`, in any order, since they run at once), and
//!   the callbacks of pending calls and log messages.
//! * A **lane** per resource: a socketpair whose host end travels with the
//!   resource's `open` request (`SCM_RIGHTS`). Every other entry point of
//!   the resource goes over it as a bare [`Op`] and is answered with a bare
//!   [`Reply`], one call at a time. The caller in the monitor writes and
//!   reads its lane itself and the host's lane thread does the same, so a
//!   call wakes two threads, not four.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// No frame is longer: a control output is at most 1 MiB.
pub const MAX_FRAME: usize = 2 << 20;

/// One request of the monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Matches the reply to the request.
    pub call: u64,
    /// The resource (the monitor numbers them); 0 for type-wide calls.
    pub rid: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Open {
        type_name: String,
        name: String,
        params: String,
    },
    Close,
    /// With the group's fencing token (0 outside cluster mode), which the
    /// plugin reads with the `fencing_token` callback.
    Online {
        fencing_token: i64,
    },
    Offline,
    Terminate,
    /// The monitor no longer waits for the health check in flight: the
    /// plugin's `should_terminate` says so until the next `online` or
    /// `offline`, and checks begun meanwhile fail at once. Sent on the
    /// host's socket, beside the lane, and answered at once.
    CancelCheck,
    LooksAlive,
    IsAlive,
    Control {
        code: u32,
        input: Vec<u8>,
        out_len: u32,
    },
    TypeControl {
        type_name: String,
        code: u32,
        input: Vec<u8>,
        out_len: u32,
    },
}

impl Op {
    /// The entry point's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Open { .. } => "open",
            Op::Close => "close",
            Op::Online { .. } => "online",
            Op::Offline => "offline",
            Op::Terminate => "terminate",
            Op::CancelCheck => "cancel_check",
            Op::LooksAlive => "looks_alive",
            Op::IsAlive => "is_alive",
            Op::Control { .. } => "resource_control",
            Op::TypeControl { .. } => "resource_type_control",
        }
    }
}

/// What an entry point answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `open`, `close`, `terminate` finished.
    Done,
    /// The return code of `online`, `offline`, `looks_alive`, `is_alive`.
    Code(i32),
    /// A control code's return code, its output, and with
    /// `RESMON_MORE_DATA` the size it needs.
    Output {
        code: i32,
        data: Vec<u8>,
        needed: u64,
    },
    /// The host could not make the call (type not served, `open`
    /// returned NULL, a broken answer), with why.
    Failed(String),
}

/// A message of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHost {
    Reply {
        call: u64,
        reply: Reply,
    },
    /// `set_status` of a pending `online`/`offline`.
    Status {
        rid: u64,
        state: i32,
        checkpoint: u32,
    },
    /// `log`; `rid` 0 is a type-wide message.
    Log {
        rid: u64,
        level: i32,
        message: String,
    },
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    let mut buf = postcard::to_extend(msg, std::mem::take(&mut buf))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message of {len} bytes is longer than a frame may be"),
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Writes `msg` as one frame, with one `write` where the kernel allows.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

/// Reads one frame; `None` at a clean end of the stream.
pub fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is longer than the {MAX_FRAME} allowed"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    postcard::from_bytes(buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("a broken frame: {e}")))
}

/// Sends one frame with `fd` attached (`SCM_RIGHTS`). The descriptor
/// travels with the frame's first bytes, so the reader has it by the time
/// it has read the whole frame.
pub fn send_with_fd(sock: &UnixStream, frame: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for a descriptor in the message"));
    }
    let sent = loop {
        match sendmsg(
            sock,
            &[IoSlice::new(frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut rest = sock;
    rest.write_all(&frame[sent..])
}

/// A reader of a stream socket that keeps the descriptors arriving with
/// the bytes (`SCM_RIGHTS`), in the order they came.
pub struct FdReader {
    sock: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl FdReader {
    pub fn new(sock: UnixStream) -> FdReader {
        FdReader {
            sock,
            fds: VecDeque::new(),
        }
    }

    /// The oldest descriptor received and not yet taken.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r?,
            }
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                self.fds.extend(fds);
            }
        }
        Ok(got.bytes)
    }
}

/// Reads frames from a socket with a deadline for each, keeping what
/// arrived past the frame for the next one.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// The next frame from `sock`: `Ok(None)` at the end of the stream, an
    /// error of kind `TimedOut` when `deadline` passes first, `InvalidData`
    /// for a frame too long or not decodable.
    pub fn next<T: DeserializeOwned>(
        &mut self,
        sock: &UnixStream,
        deadline: Instant,
    ) -> io::Result<Option<T>> {
        self.next_unless(sock, None, deadline)
    }

    /// [`next`](Self::next), but given a wake-up `(fd, cancelled)`: when
    /// `fd` (an eventfd) becomes readable it is drained, and if
    /// `cancelled()` holds the wait ends with an error of kind
    /// `Interrupted`, the frame (if one comes) left for the next read.
    pub fn next_unless<T: DeserializeOwned>(
        &mut self,
        sock: &UnixStream,
        wake: Option<(BorrowedFd<'_>, &dyn Fn() -> bool)>,
        deadline: Instant,
    ) -> io::Result<Option<T>> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            if let Some((_, cancelled)) = wake.as_ref() {
                if cancelled() {
                    return Err(io::ErrorKind::Interrupted.into());
                }
            }
            let wanted = match self.decode()? {
                Decoded::Frame(msg) => return Ok(Some(msg)),
                Decoded::Short(wanted) => wanted,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let timeout = Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            // The wake-up's fd second, polled only when there is one.
            let wake_fd = wake.as_ref().map(|(fd, _)| *fd);
            let mut fds = [
                PollFd::new(sock, PollFlags::IN),
                PollFd::from_borrowed_fd(wake_fd.unwrap_or(sock.as_fd()), PollFlags::IN),
            ];
            let n = if wake_fd.is_some() { 2 } else { 1 };
            let polled = poll(&mut fds[..n], Some(&timeout));
            if let (Some(fd), true) = (wake_fd, n == 2 && !fds[1].revents().is_empty()) {
                // Drained (it is non-blocking); `cancelled` is asked above.
                let _ = rustix::io::read(fd, &mut [0u8; 8]);
            }
            match polled {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) if fds[0].revents().is_empty() => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            // Room for the rest of the frame (at least a small read's worth)
            // after what is buffered, moved to the front.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let room = wanted.max(4096);
            if self.buf.len() < self.end + room {
                self.buf.resize(self.end + room, 0);
            }
            let mut r = sock;
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(None),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn decode<T: DeserializeOwned>(&mut self) -> io::Result<Decoded<T>> {
        let rest = &self.buf[self.start..self.end];
        let Some(len) = rest.get(..4) else {
            return Ok(Decoded::Short(4 - rest.len()));
        };
        let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes is longer than the {MAX_FRAME} allowed"),
            ));
        }
        let Some(body) = rest.get(4..4 + len) else {
            return Ok(Decoded::Short(4 + len - rest.len()));
        };
        let msg = postcard::from_bytes(body).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("a broken frame: {e}"))
        })?;
        self.start += 4 + len;
        Ok(Decoded::Frame(msg))
    }
}

enum Decoded<T> {
    Frame(T),
    /// This many more bytes are needed at least.
    Short(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = vec![
            Request {
                call: 1,
                rid: 7,
                op: Op::Open {
                    type_name: "t".into(),
                    name: "r".into(),
                    params: "{}".into(),
                },
            },
            Request {
                call: u64::MAX,
                rid: 0,
                op: Op::Control {
                    code: 4,
                    input: vec![1, 2, 3],
                    out_len: 65536,
                },
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, m).unwrap();
        }
        let mut r = &wire[..];
        let mut buf = Vec::new();
        for m in &msgs {
            assert_eq!(
                read_frame::<Request>(&mut r, &mut buf).unwrap().as_ref(),
                Some(m)
            );
        }
        assert_eq!(read_frame::<Request>(&mut r, &mut buf).unwrap(), None);
    }

    #[test]
    fn oversized_and_broken_frames_are_errors() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        wire.extend([0; 8]);
        let e = read_frame::<FromHost>(&mut &wire[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");

        let mut wire = 3u32.to_le_bytes().to_vec();
        wire.extend([0xff, 0xff, 0xff]);
        let e = read_frame::<FromHost>(&mut &wire[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("broken frame"), "{e}");

        // Cut short inside a frame.
        let mut wire = 10u32.to_le_bytes().to_vec();
        wire.extend([0; 3]);
        assert!(read_frame::<FromHost>(&mut &wire[..], &mut Vec::new()).is_err());
    }

    #[test]
    fn a_descriptor_travels_with_its_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let (lane, _keep) = UnixStream::pair().unwrap();
        let first = encode(&Request {
            call: 1,
            rid: 1,
            op: Op::LooksAlive,
        })
        .unwrap();
        let second = encode(&Request {
            call: 2,
            rid: 9,
            op: Op::Open {
                type_name: "t".into(),
                name: "r".into(),
                params: "x".repeat(100_000),
            },
        })
        .unwrap();
        let writer = std::thread::spawn(move || {
            (&a).write_all(&first).unwrap();
            send_with_fd(&a, &second, std::os::fd::AsFd::as_fd(&lane)).unwrap();
        });
        let mut r = io::BufReader::new(FdReader::new(b));
        let mut buf = Vec::new();
        let one: Request = read_frame(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!(one.call, 1);
        let two: Request = read_frame(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!((two.call, two.rid), (2, 9));
        let fd = r.get_mut().take_fd().expect("the lane came with the open");
        assert!(r.get_mut().take_fd().is_none());
        writer.join().unwrap();
        // It is the other end's peer: bytes written to it arrive at `_keep`.
        (&UnixStream::from(fd)).write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        (&_keep).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn frame_reader_keeps_what_follows_and_times_out() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut wire = encode(&Reply::Code(1)).unwrap();
        wire.extend(encode(&Reply::Code(2)).unwrap());
        // The third frame arrives in two pieces.
        let third = encode(&Reply::Failed("y".repeat(200_000))).unwrap();
        (&a).write_all(&wire).unwrap();
        let mut frames = FrameReader::default();
        let soon = || Instant::now() + std::time::Duration::from_secs(5);
        assert_eq!(
            frames.next::<Reply>(&b, soon()).unwrap(),
            Some(Reply::Code(1))
        );
        assert_eq!(
            frames.next::<Reply>(&b, soon()).unwrap(),
            Some(Reply::Code(2))
        );
        let e = frames
            .next::<Reply>(&b, Instant::now() + std::time::Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let (head, tail) = third.split_at(10);
        (&a).write_all(head).unwrap();
        let writer = {
            let a = a.try_clone().unwrap();
            let tail = tail.to_vec();
            std::thread::spawn(move || (&a).write_all(&tail).unwrap())
        };
        assert_eq!(
            frames.next::<Reply>(&b, soon()).unwrap(),
            Some(Reply::Failed("y".repeat(200_000)))
        );
        writer.join().unwrap();
        drop(a);
        assert_eq!(frames.next::<Reply>(&b, soon()).unwrap(), None);
    }

    #[test]
    fn frame_reader_refuses_oversized_frames() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&((MAX_FRAME + 1) as u32).to_le_bytes())
            .unwrap();
        let e = FrameReader::default()
            .next::<Reply>(&b, Instant::now() + std::time::Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
