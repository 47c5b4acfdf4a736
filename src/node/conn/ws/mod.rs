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
use tokio_tungstenite::WebSocketStream;

mod read;
pub(crate) use read::FrameReader;

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
mod tests;
