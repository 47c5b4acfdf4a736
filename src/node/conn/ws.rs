//! WebSocket frames on an upgraded connection (RFC 6455), read and written
//! here rather than by tungstenite, which only does the handshakes: an idle
//! connection holds no buffer at all. Reads wait with nothing allocated and
//! land in a stack buffer; bytes are kept on the heap only while a frame is
//! incomplete, and the buffer is freed as soon as every byte read has been
//! handed on. Writes go straight from the frame's own text to the socket.
//! A connection that carried one 900 KiB frame therefore does not keep
//! 900 KiB (tungstenite keeps the capacity of the largest frame seen, in
//! both directions).
//!
//! What a peer controls is bounded here: a frame or a fragmented message
//! is refused as soon as its header says it would pass the frame limit,
//! and once its first bytes arrive it must be complete within the frame
//! timeout (a peer trickling bytes cannot hold its buffer for good).
//! Control frames are at most 125 bytes and never fragmented, a client's
//! frames must be masked, close codes and reasons are checked (RFC 6455
//! 7.4), and our close says why we closed (1002, 1007, 1008, 1009).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

/// Bytes one read takes at most (on the stack while a connection is idle).
const READ_CHUNK: usize = 16 * 1024;
/// A read buffer larger than this is not kept for a few bytes left in it.
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;
/// Opcodes (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// Longest payload of a control frame.
const MAX_CONTROL: usize = 125;
/// Close statuses (RFC 6455 7.4.1).
const NORMAL_CLOSURE: u16 = 1000;
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const POLICY_VIOLATION: u16 = 1008;
const MESSAGE_TOO_BIG: u16 = 1009;
/// Default time a started frame or message has to arrive in full
/// (`--frame-timeout-secs`).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Which end of the connection we are: a server reads masked frames and
/// writes plain ones, a client the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

/// Why reading or writing failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("frame of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: u64, max: usize },
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("text frame or close reason is not UTF-8")]
    NotUtf8,
    #[error("a frame took more than {0:?} to arrive")]
    FrameTimeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl WsError {
    /// The close status that tells the peer why we close over this.
    fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge { .. } => MESSAGE_TOO_BIG,
            WsError::Protocol(_) => PROTOCOL_ERROR,
            WsError::NotUtf8 => INVALID_DATA,
            WsError::FrameTimeout(_) => POLICY_VIOLATION,
            WsError::Io(_) => NORMAL_CLOSURE,
        }
    }
}

/// A message from the peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    Binary,
    /// To be answered with a pong carrying the same bytes.
    Ping(Vec<u8>),
    /// Nothing to answer, but it counts in a user's frame rate.
    Pong,
    Close,
}

/// An upgraded connection.
pub(crate) struct WsConn<S> {
    io: S,
    reader: FrameReader,
    role: Role,
    /// A write was cut off inside a frame (its future dropped, say by a
    /// timeout): anything written after it would be read as the rest of
    /// that frame, so nothing more is.
    torn: bool,
}

impl<S> WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Takes over a connection tungstenite did the handshake on. `read`
    /// holds what was read past the handshake (see [`Recorder`]).
    pub(crate) fn new(io: S, read: Vec<u8>, role: Role, max: usize) -> Self {
        let mut reader = FrameReader::new(role, max);
        reader.buf = read;
        WsConn {
            io,
            reader,
            role,
            torn: false,
        }
    }

    /// Takes over a connection we accepted through a [`Recorder`].
    pub(crate) fn accepted(ws: WebSocketStream<Recorder<S>>, max: usize) -> Self {
        let Recorder { io, tail, .. } = ws.into_inner();
        WsConn::new(io, tail, Role::Server, max)
    }

    /// The next message; None at the end of the stream.
    pub(crate) async fn next(&mut self) -> Option<Result<Incoming, WsError>> {
        self.reader.next(&mut self.io).await
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        let bytes = text.as_bytes();
        write_whole(&mut self.torn, &mut self.io, self.role, TEXT, bytes).await
    }

    /// Answers a ping (at most 125 bytes are echoed).
    pub(crate) async fn pong(&mut self, payload: &[u8]) -> Result<(), WsError> {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        write_whole(&mut self.torn, &mut self.io, self.role, PONG, payload).await
    }

    /// A frame (or fragmented message) whose first bytes arrived must be
    /// complete within `limit`.
    pub(crate) fn set_frame_timeout(&mut self, limit: Duration) {
        self.reader.frame_timeout = limit;
    }

    /// Sends a close frame and ends our side of the stream. Its status says
    /// why, if the peer broke the protocol (RFC 6455 7.4.1).
    pub(crate) async fn close(&mut self) -> Result<(), WsError> {
        let code = self.reader.close_code.to_be_bytes();
        if !self.torn {
            write_whole(&mut self.torn, &mut self.io, self.role, CLOSE, &code).await?;
        }
        self.io.shutdown().await?;
        Ok(())
    }

    /// The reading and the writing half, usable at once (the reader must
    /// never wait for the writer).
    pub(crate) fn split(&mut self) -> (ReadHalf<'_, S>, WriteHalf<'_, S>) {
        let (r, w) = tokio::io::split(&mut self.io);
        (
            ReadHalf {
                io: r,
                reader: &mut self.reader,
            },
            WriteHalf {
                io: w,
                role: self.role,
                torn: &mut self.torn,
            },
        )
    }
}

/// The reading half of a split [`WsConn`].
pub(crate) struct ReadHalf<'a, S> {
    io: tokio::io::ReadHalf<&'a mut S>,
    reader: &'a mut FrameReader,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReadHalf<'_, S> {
    pub(crate) async fn next(&mut self) -> Option<Result<Incoming, WsError>> {
        self.reader.next(&mut self.io).await
    }
}

/// The writing half of a split [`WsConn`].
pub(crate) struct WriteHalf<'a, S> {
    io: tokio::io::WriteHalf<&'a mut S>,
    role: Role,
    torn: &'a mut bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteHalf<'_, S> {
    pub(crate) async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        let bytes = text.as_bytes();
        write_whole(self.torn, &mut self.io, self.role, TEXT, bytes).await
    }

    /// Answers a ping (at most 125 bytes are echoed).
    pub(crate) async fn pong(&mut self, payload: &[u8]) -> Result<(), WsError> {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        write_whole(self.torn, &mut self.io, self.role, PONG, payload).await
    }
}

/// Writes one frame unless an earlier one was cut off; `torn` stays set
/// if this one is (its future dropped before the end).
async fn write_whole<W: AsyncWrite + Unpin>(
    torn: &mut bool,
    io: &mut W,
    role: Role,
    opcode: u8,
    payload: &[u8],
) -> Result<(), WsError> {
    if *torn {
        return Err(WsError::Protocol("an earlier frame was cut off mid-write"));
    }
    *torn = true;
    write_frame(io, role, opcode, payload).await?;
    *torn = false;
    Ok(())
}

/// Writes one unfragmented frame and flushes it.
async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    role: Role,
    opcode: u8,
    payload: &[u8],
) -> Result<(), WsError> {
    let mut head = [0u8; 14];
    let mut n = header(&mut head, opcode, payload.len(), role == Role::Client);
    match role {
        Role::Server => {
            // Header and payload in one write where the stream takes both.
            let total = n + payload.len();
            let mut done = 0;
            while done < total {
                let (h, p) = if done < n {
                    (&head[done..n], payload)
                } else {
                    (&[][..], &payload[done - n..])
                };
                let k = io
                    .write_vectored(&[IoSlice::new(h), IoSlice::new(p)])
                    .await?;
                if k == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
                done += k;
            }
        }
        Role::Client => {
            let mut mask = [0u8; 4];
            aws_lc_rs::rand::fill(&mut mask).map_err(|_| io::Error::other("no random mask"))?;
            head[n..n + 4].copy_from_slice(&mask);
            n += 4;
            let mut frame = Vec::with_capacity(n + payload.len());
            frame.extend_from_slice(&head[..n]);
            frame.extend_from_slice(payload);
            apply_mask(&mut frame[n..], mask);
            io.write_all(&frame).await?;
        }
    }
    io.flush().await?;
    Ok(())
}

/// Masks or unmasks bytes that start at a frame's payload, eight at a time.
fn apply_mask(bytes: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8: the mask is in phase.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Fills `head` with a final frame's header (without the mask key, which
/// follows it when `masked`); returns its length.
fn header(head: &mut [u8; 14], opcode: u8, len: usize, masked: bool) -> usize {
    head[0] = 0x80 | opcode;
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        head[1] = mask_bit | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = mask_bit | 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = mask_bit | 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

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
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being put together: its opcode and bytes.
    partial: Option<(u8, Vec<u8>)>,
    /// When the frame or message being read must be complete (None while
    /// nothing is held: an idle connection keeps no timer).
    deadline: Option<Instant>,
    frame_timeout: Duration,
    /// The status our close frame carries.
    close_code: u16,
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
        if so_far + len > self.max as u64 {
            return Err(WsError::TooLarge {
                size: so_far + len,
                max: self.max,
            });
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

/// A stream under tungstenite's handshake that keeps what was read past
/// the end of the HTTP head (`\r\n\r\n`): a peer may send its first frame
/// right behind its request, and tungstenite would keep those bytes in
/// buffers we do not take over.
pub(crate) struct Recorder<S> {
    io: S,
    /// How much of `\r\n\r\n` the last bytes matched (4: the head ended).
    matched: usize,
    tail: Vec<u8>,
}

impl<S> Recorder<S> {
    pub(crate) fn new(io: S) -> Self {
        Recorder {
            io,
            matched: 0,
            tail: Vec::new(),
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (i, &b) in bytes.iter().enumerate() {
            if self.matched == END.len() {
                self.tail.extend_from_slice(&bytes[i..]);
                return;
            }
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == END[0] {
                1
            } else {
                0
            };
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = buf.filled()[before..].to_vec();
            this.record(&new);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    const WAIT: Duration = Duration::from_secs(5);

    /// A frame as a client sends it (masked).
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; 14];
        let n = header(&mut head, opcode, payload.len(), true);
        if !fin {
            head[0] &= 0x7f;
        }
        let mask = [1, 2, 3, 4];
        let mut out = head[..n].to_vec();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn server(io: DuplexStream) -> WsConn<DuplexStream> {
        WsConn::new(io, Vec::new(), Role::Server, 1 << 20)
    }

    async fn next(ws: &mut WsConn<DuplexStream>) -> Option<Result<Incoming, WsError>> {
        tokio::time::timeout(WAIT, ws.next()).await.unwrap()
    }

    #[tokio::test]
    async fn a_large_frame_leaves_no_buffer_behind() {
        let (mut peer, io) = duplex(64 * 1024);
        let mut ws = server(io);
        let big = "x".repeat(900 * 1024);
        let frame = client_frame(true, TEXT, big.as_bytes());
        let writer = tokio::spawn(async move {
            peer.write_all(&frame).await.unwrap();
            peer.write_all(&client_frame(true, TEXT, b"small"))
                .await
                .unwrap();
            peer
        });
        assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Text(big));
        // At most the start of the next frame, read with the end of this one.
        let held = ws.reader.held();
        assert!(held <= SHRINK_ABOVE, "{held} bytes kept after the frame");
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Text("small".into())
        );
        assert_eq!(ws.reader.held(), 0);
        drop(writer.await.unwrap());
        assert!(next(&mut ws).await.is_none(), "end of stream");
    }

    #[tokio::test]
    async fn a_frame_header_alone_does_not_reserve_the_frame() {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        // The start of a 1 MiB frame (header and 100 bytes), then nothing.
        let frame = client_frame(true, TEXT, &vec![b'a'; 1 << 20]);
        peer.write_all(&frame[..114]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        assert!(waited.is_err(), "no message from a part of a frame");
        let held = ws.reader.held();
        assert!(held <= 2 * READ_CHUNK, "{held} bytes held for 114 received");
    }

    #[tokio::test]
    async fn fragments_make_one_message_and_pings_come_between() {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        let mut bytes = client_frame(false, TEXT, b"hel");
        bytes.extend(client_frame(true, PING, b"p"));
        bytes.extend(client_frame(true, CONTINUATION, "lo é".as_bytes()));
        bytes.extend(client_frame(true, CLOSE, &NORMAL_CLOSURE.to_be_bytes()));
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Ping(b"p".to_vec())
        );
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Text("hello é".into())
        );
        assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Close);
        // Our pong and text go out unmasked.
        tokio::time::timeout(WAIT, async {
            ws.pong(b"p").await.unwrap();
            ws.send_text("hi").await.unwrap();
        })
        .await
        .unwrap();
        let mut out = [0u8; 7];
        let read = tokio::time::timeout(WAIT, peer.read_exact(&mut out)).await;
        read.unwrap().unwrap();
        assert_eq!(out, [0x8A, 1, b'p', 0x81, 2, b'h', b'i']);
    }

    #[tokio::test]
    async fn oversized_unmasked_and_bad_frames_are_refused() {
        let (mut peer, io) = duplex(4096);
        let mut ws = WsConn::new(io, Vec::new(), Role::Server, 100);
        peer.write_all(&client_frame(true, TEXT, &[b'a'; 101]))
            .await
            .unwrap();
        assert!(matches!(
            next(&mut ws).await,
            Some(Err(WsError::TooLarge {
                size: 101,
                max: 100
            }))
        ));
        for bytes in [
            vec![0x81, 0x01, b'a'],                  // unmasked
            client_frame(true, CONTINUATION, b"a"),  // continuation of nothing
            client_frame(true, TEXT, &[0xff, 0xfe]), // not UTF-8
            client_frame(false, PING, b"a"),         // fragmented control frame
        ] {
            let (mut peer, io) = duplex(4096);
            let mut ws = server(io);
            peer.write_all(&bytes).await.unwrap();
            assert!(matches!(next(&mut ws).await, Some(Err(_))), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn a_client_masks_what_it_sends_and_reads_plain_frames() {
        let (a, b) = duplex(4096);
        let mut client = WsConn::new(a, Vec::new(), Role::Client, 1 << 20);
        let mut server = server(b);
        client.send_text("from the client").await.unwrap();
        assert_eq!(
            next(&mut server).await.unwrap().unwrap(),
            Incoming::Text("from the client".into())
        );
        // Larger than the pipe: written while it is read.
        let big = "y".repeat(70_000);
        let (sent, got) = tokio::time::timeout(WAIT, async {
            tokio::join!(server.send_text(&big), client.next())
        })
        .await
        .unwrap();
        sent.unwrap();
        assert_eq!(got.unwrap().unwrap(), Incoming::Text(big));
    }

    /// Reads the close frame the server wrote and returns its status.
    async fn close_status(peer: &mut DuplexStream) -> u16 {
        let mut out = [0u8; 4];
        let read = tokio::time::timeout(WAIT, peer.read_exact(&mut out)).await;
        read.unwrap().unwrap();
        assert_eq!(out[..2], [0x88, 2], "a close frame with a status");
        u16::from_be_bytes([out[2], out[3]])
    }

    #[tokio::test]
    async fn a_trickled_frame_is_cut_off_at_the_frame_timeout() {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        ws.set_frame_timeout(Duration::from_millis(300));
        let frame = client_frame(true, TEXT, &[b'a'; 1000]);
        let trickle = tokio::spawn(async move {
            peer.write_all(&frame[..20]).await.unwrap();
            for b in &frame[20..200] {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if peer.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            peer
        });
        let got = next(&mut ws).await;
        assert!(
            matches!(got, Some(Err(WsError::FrameTimeout(_)))),
            "{got:?}"
        );
        let mut peer = trickle.await.unwrap();
        tokio::time::timeout(WAIT, ws.close())
            .await
            .unwrap()
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(100), peer.read_to_end(&mut rest)).await;
        let status = rest
            .windows(2)
            .position(|w| w == [0x88, 2])
            .map(|i| u16::from_be_bytes([rest[i + 2], rest[i + 3]]));
        assert_eq!(status, Some(POLICY_VIOLATION));
    }

    #[tokio::test]
    async fn a_fragmented_message_must_complete_in_time() {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        ws.set_frame_timeout(Duration::from_millis(300));
        // Each fragment whole, the message never finished.
        let feeder = tokio::spawn(async move {
            let mut first = true;
            loop {
                let opcode = if first { TEXT } else { CONTINUATION };
                first = false;
                if peer
                    .write_all(&client_frame(false, opcode, b"x"))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let got = next(&mut ws).await;
        assert!(
            matches!(got, Some(Err(WsError::FrameTimeout(_)))),
            "{got:?}"
        );
        drop(ws);
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_between_messages_has_no_deadline() {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        ws.set_frame_timeout(Duration::from_millis(100));
        peer.write_all(&client_frame(true, TEXT, b"one"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Text("one".into())
        );
        let idle = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(idle.is_err(), "nothing came, nothing ends");
        peer.write_all(&client_frame(true, TEXT, b"two"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Text("two".into())
        );
    }

    #[tokio::test]
    async fn close_statuses_and_reasons_are_checked() {
        let mut with_reason = 1001u16.to_be_bytes().to_vec();
        with_reason.extend_from_slice("bye é".as_bytes());
        for ok in [
            vec![],
            with_reason,
            3000u16.to_be_bytes().to_vec(),
            4999u16.to_be_bytes().to_vec(),
        ] {
            let (mut peer, io) = duplex(4096);
            let mut ws = server(io);
            peer.write_all(&client_frame(true, CLOSE, &ok))
                .await
                .unwrap();
            assert_eq!(
                next(&mut ws).await.unwrap().unwrap(),
                Incoming::Close,
                "{ok:?}"
            );
            tokio::time::timeout(WAIT, ws.close())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(close_status(&mut peer).await, NORMAL_CLOSURE);
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff, 0xfe]);
        let cases = [
            (vec![3], PROTOCOL_ERROR),
            (999u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
            (1005u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
            (1006u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
            (1015u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
            (2000u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
            (5000u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
            (bad_reason, INVALID_DATA),
        ];
        for (payload, status) in cases {
            let (mut peer, io) = duplex(4096);
            let mut ws = server(io);
            peer.write_all(&client_frame(true, CLOSE, &payload))
                .await
                .unwrap();
            assert!(matches!(next(&mut ws).await, Some(Err(_))), "{payload:?}");
            tokio::time::timeout(WAIT, ws.close())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(close_status(&mut peer).await, status, "{payload:?}");
        }
    }

    #[tokio::test]
    async fn what_would_pass_the_limit_is_refused_from_its_header() {
        // A continuation that would take the message past the limit, and
        // a frame of an unknown opcode: refused before their payloads
        // (which never come) are waited for.
        let mut past = client_frame(false, TEXT, &[b'a'; 60]);
        past.extend_from_slice(&client_frame(true, CONTINUATION, &[b'b'; 60])[..8]);
        let unknown = client_frame(true, 0x3, &[0; 50])[..8].to_vec();
        for (bytes, too_large) in [(past, true), (unknown, false)] {
            let (mut peer, io) = duplex(4096);
            let mut ws = WsConn::new(io, Vec::new(), Role::Server, 100);
            peer.write_all(&bytes).await.unwrap();
            let got = next(&mut ws).await;
            match got {
                Some(Err(WsError::TooLarge {
                    size: 120,
                    max: 100,
                })) => assert!(too_large),
                Some(Err(WsError::Protocol(_))) => assert!(!too_large),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn nothing_follows_a_frame_cut_off_mid_write() {
        let (mut peer, io) = duplex(1024);
        let mut ws = server(io);
        let big = "z".repeat(10_000);
        let cut = tokio::time::timeout(Duration::from_millis(100), ws.send_text(&big)).await;
        assert!(cut.is_err(), "the pipe holds 1 KiB: the write waits");
        assert!(ws.send_text("after").await.is_err());
        tokio::time::timeout(WAIT, ws.close())
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, peer.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1024, "the cut frame's start, and no close frame");
    }

    #[tokio::test]
    async fn pongs_are_reported() {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        peer.write_all(&client_frame(true, PONG, b"p"))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Pong);
    }

    #[test]
    fn the_recorder_keeps_what_follows_the_http_head() {
        let mut r = Recorder::new(());
        r.record(b"GET / HTTP/1.1\r\nHost: x\r");
        r.record(b"\n\r\nfirst ");
        r.record(b"frame");
        assert_eq!(r.tail, b"first frame");
        let mut r = Recorder::new(());
        r.record(b"GET / HTTP/1.1\r\n\r\r\n\r\n");
        assert!(r.tail.is_empty());
        assert_eq!(r.matched, 4);
    }
}
