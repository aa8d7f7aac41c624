//! The framed protocol between the monitor and a host process, over the
//! socketpair the host gets as its stdin.
//!
//! A frame is a little-endian `u32` length, then that many bytes of one
//! message in postcard encoding. The monitor sends [`Request`]s; the host
//! sends [`FromHost`] messages: the [`Reply`] to each request (matched by
//! `call`, in any order, since calls of different resources run at once)
//! and, between replies, the callbacks of pending calls and log messages.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{self, Read, Write};

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
    Online,
    Offline,
    Terminate,
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
            Op::Online => "online",
            Op::Offline => "offline",
            Op::Terminate => "terminate",
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
}
