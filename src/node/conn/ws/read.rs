//! Reading frames: bytes held only while a frame or a fragmented message
//! is incomplete, each checked as soon as its header is known, and a
//! started message cut off at the frame timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use super::*;

/// One frame's header, parsed.
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: usize,
    /// Bytes of the header itself.
    size: usize,
}

/// Frames and messages out of a byte stream, holding bytes only while a
/// frame or a fragmented message is incomplete.
pub(crate) struct FrameReader {
    role: Role,
    max: usize,
    /// Bytes read; those from `start` on are not parsed yet (empty, with
    /// no capacity, when idle).
    pub(super) buf: Vec<u8>,
    start: usize,
    /// A fragmented message being put together: its opcode and bytes.
    partial: Option<(u8, Vec<u8>)>,
    /// When the frame or message being read must be complete (None while
    /// nothing is held: an idle connection keeps no timer).
    deadline: Option<Instant>,
    pub(super) frame_timeout: Duration,
    /// The status our close frame carries.
    pub(super) close_code: u16,
}

impl FrameReader {
    pub(crate) fn new(role: Role, max: usize) -> Self {
        FrameReader {
            role,
            max,
            buf: Vec::new(),
            start: 0,
            partial: None,
            deadline: None,
            frame_timeout: FRAME_TIMEOUT,
            close_code: NORMAL_CLOSURE,
        }
    }

    /// Bytes held for this connection (0 between frames).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |(_, b)| b.capacity())
    }

    /// The next message; None at the end of the stream. After an error
    /// the connection is to be closed (with the status it calls for).
    pub(crate) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Option<Result<Incoming, WsError>> {
        let next = self.read_message(io).await;
        if let Some(Err(e)) = &next {
            self.close_code = e.close_code();
        }
        next
    }

    async fn read_message<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Option<Result<Incoming, WsError>> {
        loop {
            match self.parse() {
                Ok(Some(Some(msg))) => return Some(Ok(msg)),
                Ok(Some(None)) => continue,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            let filled = if self.buf.len() > self.start || self.partial.is_some() {
                // Inside a frame or message: it must complete in time.
                let limit = self.frame_timeout;
                let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + limit);
                // Boxed: the timer is part of this future only while a
                // frame is arriving, not while the connection is idle.
                match Box::pin(tokio::time::timeout_at(deadline, self.fill(io))).await {
                    Ok(filled) => filled,
                    Err(_) => return Some(Err(WsError::FrameTimeout(limit))),
                }
            } else {
                self.fill(io).await
            };
            match filled {
                Ok(0) if self.buf.is_empty() && self.partial.is_none() => return None,
                Ok(0) => return Some(Err(WsError::Protocol("stream ended inside a frame"))),
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Reads more bytes. With nothing held, it waits with no buffer of its
    /// own: the bytes land on the stack and only what arrived is kept.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<usize> {
        if !self.buf.is_empty() {
            // Inside a frame: room for the rest of it, read in place.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Room grows with the bytes that arrived (at most doubling),
            // not with the length a header claims: a 14-byte header must
            // not make a connection hold 1 MiB.
            let needs = self.frame_needs().unwrap_or(READ_CHUNK);
            self.buf
                .reserve_exact(needs.min(self.buf.len()).max(READ_CHUNK));
            return tokio::io::AsyncReadExt::read_buf(io, &mut self.buf).await;
        }
        self.buf = Vec::new();
        let buf = &mut self.buf;
        std::future::poll_fn(|cx| poll_read_onto(io, cx, buf)).await
    }

    /// Bytes the frame at the front still needs, once its header is known.
    fn frame_needs(&self) -> Option<usize> {
        match self.header() {
            Ok(Some(h)) => Some((h.size + h.len).saturating_sub(self.buf.len() - self.start)),
            _ => None,
        }
    }

    /// Parses the frame header at the front of the buffer, if complete.
    fn header(&self) -> Result<Option<Header>, WsError> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        let masked = b[1] & 0x80 != 0;
        if rsv != 0 {
            return Err(WsError::Protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::Protocol("unmasked frame from a client")),
            (Role::Client, true) => return Err(WsError::Protocol("masked frame from a server")),
            _ => {}
        }
        let (len, mut size) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x8 != 0;
        if control && (!fin || len > MAX_CONTROL as u64) {
            return Err(WsError::Protocol("fragmented or oversized control frame"));
        }
        // Refused from its header, before its payload is held.
        let so_far = match (opcode, &self.partial) {
            (CLOSE | PING | PONG, _) => 0,
            (TEXT | BINARY, None) => 0,
            (CONTINUATION, Some((_, bytes))) => bytes.len() as u64,
            (TEXT | BINARY, Some(_)) => {
                return Err(WsError::Protocol("a new message inside a fragmented one"));
            }
            (CONTINUATION, None) => return Err(WsError::Protocol("continuation of nothing")),
            _ => return Err(WsError::Protocol("unknown opcode")),
        };
        // RFC 6455 5.2: a 64-bit length has its top bit clear. Checked
        // sums: a length near u64::MAX must not wrap past the limit.
        if len >> 63 != 0 {
            return Err(WsError::Protocol(
                "64-bit frame length with the top bit set",
            ));
        }
        match so_far.checked_add(len) {
            Some(total) if total <= self.max as u64 => {}
            total => {
                return Err(WsError::TooLarge {
                    size: total.unwrap_or(u64::MAX),
                    max: self.max,
                });
            }
        }
        let mask = if masked {
            if b.len() < size + 4 {
                return Ok(None);
            }
            let m = [b[size], b[size + 1], b[size + 2], b[size + 3]];
            size += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len: len as usize,
            size,
        }))
    }

    /// Takes one complete frame off the buffer: Some(Some(message)) when it
    /// completes one, Some(None) when it was a fragment or a pong, None when
    /// more bytes are needed.
    fn parse(&mut self) -> Result<Option<Option<Incoming>>, WsError> {
        let Some(h) = self.header()? else {
            return Ok(None);
        };
        let (from, to) = (self.start + h.size, self.start + h.size + h.len);
        if self.buf.len() < to {
            return Ok(None);
        }
        let mut payload = self.buf[from..to].to_vec();
        self.start = to;
        if self.start == self.buf.len() {
            // Nothing held between frames, however large the last one was.
            self.buf = Vec::new();
            self.start = 0;
        } else if self.buf.capacity() > SHRINK_ABOVE
            && (self.buf.len() - self.start) * 4 < self.buf.capacity()
        {
            // The start of the next frame arrived with a large one: keep
            // those bytes, not the large one's room.
            self.buf = self.buf[self.start..].to_vec();
            self.start = 0;
        }
        if let Some(mask) = h.mask {
            apply_mask(&mut payload, mask);
        }
        let message = self.message(h.fin, h.opcode, payload);
        if self.partial.is_none() {
            // A whole message (or a control frame between two): the next
            // one has its own time.
            self.deadline = None;
        }
        message
    }

    /// Puts frames together into messages.
    fn message(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    ) -> Result<Option<Option<Incoming>>, WsError> {
        let (opcode, bytes) = match (opcode, self.partial.take()) {
            (PING, partial) => {
                self.partial = partial;
                return Ok(Some(Some(Incoming::Ping(payload))));
            }
            (PONG, partial) => {
                self.partial = partial;
                return Ok(Some(Some(Incoming::Pong)));
            }
            (CLOSE, _) => {
                check_close(&payload)?;
                return Ok(Some(Some(Incoming::Close)));
            }
            (TEXT | BINARY, None) => (opcode, payload),
            (CONTINUATION, Some((first, mut bytes))) => {
                if bytes.len() + payload.len() > self.max {
                    return Err(WsError::TooLarge {
                        size: (bytes.len() + payload.len()) as u64,
                        max: self.max,
                    });
                }
                bytes.extend_from_slice(&payload);
                (first, bytes)
            }
            (TEXT | BINARY, Some(_)) => {
                return Err(WsError::Protocol("a new message inside a fragmented one"));
            }
            (CONTINUATION, None) => return Err(WsError::Protocol("continuation of nothing")),
            _ => return Err(WsError::Protocol("unknown opcode")),
        };
        if !fin {
            self.partial = Some((opcode, bytes));
            return Ok(Some(None));
        }
        Ok(Some(Some(match opcode {
            TEXT => Incoming::Text(String::from_utf8(bytes).map_err(|_| WsError::NotUtf8)?),
            _ => Incoming::Binary,
        })))
    }
}

/// Checks a close frame's payload (RFC 6455 5.5.1, 7.4): empty, or a
/// status a peer may send followed by a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), WsError> {
    let (code, reason) = match payload {
        [] => return Ok(()),
        [_] => return Err(WsError::Protocol("a close frame of one byte")),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    // 1004-1006 and 1015 are reserved, never sent; 1016-2999 are for
    // the protocol's future; 3000-4999 are for applications.
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        return Err(WsError::Protocol("a close status a peer may not send"));
    }
    std::str::from_utf8(reason).map_err(|_| WsError::NotUtf8)?;
    Ok(())
}

/// One read onto a stack buffer, keeping only what arrived: a connection
/// waiting here holds no buffer.
fn poll_read_onto<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    out: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut rb = ReadBuf::new(&mut chunk);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            out.extend_from_slice(rb.filled());
            Poll::Ready(Ok(rb.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}
