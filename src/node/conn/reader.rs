//! The reading half of a connection: every frame the peer sends is parsed,
//! authenticated, held to the content limits and a user's rate, typed, and
//! handed to the hub, whatever the writer is doing. What is refused is
//! answered with an `ERROR` through the connection's own queue.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::Checker;
use super::limits::{MAX_RELAYED_FRAME_BYTES, check_content};
use super::queue::WeakQueue;
use super::ws::{Incoming, ReadHalf, WsError};
use super::{ConnCmd, ConnCtx, LINK_SILENCE, Peer};
use crate::node::router::{ConnId, Input, Outgoing};
use crate::wire::messages::{ErrorBody, Message};
use crate::wire::{Envelope, ErrorCode, MAX_CONTENT_FRAME_BYTES};

/// What to do after a frame.
enum Verdict {
    Continue,
    Reply(ErrorCode, String),
    /// An error about a piece of content, naming its `msg_id`.
    Refuse(ErrorCode, String, Option<String>),
    Stop,
}

/// What the socket gave.
enum Read {
    Text(String),
    /// Not a frame to handle (a ping, a pong).
    Skip,
    /// A frame refused before it is parsed; the connection stays.
    Refused(ErrorCode, &'static str),
    /// The connection is over (closed, silent, broken, or an oversized
    /// frame, answered first).
    End,
}

/// The reader's state.
struct Reader<'a> {
    conn: ConnId,
    ctx: &'a ConnCtx,
    peer: &'a Peer,
    checker: Checker,
    /// The connection's queue, held weakly, so that when the hub drops it
    /// (a slow peer) the connection still ends.
    replies: WeakQueue,
    bucket: Bucket,
    last_rate_reply: Option<Instant>,
}

/// Reads frames until the connection should close.
pub(super) async fn read_frames<S>(
    stream: &mut ReadHalf<'_, S>,
    conn: ConnId,
    ctx: &ConnCtx,
    peer: &Peer,
    checker: Checker,
    replies: WeakQueue,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = Reader {
        conn,
        ctx,
        peer,
        checker,
        replies,
        bucket: Bucket::new(ctx.limits.user_rate, ctx.limits.user_burst),
        last_rate_reply: None,
    };
    loop {
        let text = match r.next(stream).await {
            Read::Text(text) => text,
            Read::Skip => continue,
            Read::Refused(code, detail) => {
                // Counted like any frame: each answer may cost a signature.
                let verdict = if r.peer.is_link() || r.bucket.take() {
                    Verdict::Reply(code, detail.to_owned())
                } else {
                    r.over_rate_unparsed()
                };
                if !r.carry_out(verdict) {
                    return;
                }
                continue;
            }
            Read::End => return,
        };
        let verdict = if r.peer.is_link() || r.bucket.take() {
            // Boxed: parsing and handing on a frame is most of this
            // future's state, and an idle connection is not doing it.
            Box::pin(r.handle(&text)).await
        } else {
            r.over_rate(&text)
        };
        if !r.carry_out(verdict) {
            return;
        }
    }
}

impl Reader<'_> {
    /// The next message from the socket.
    async fn next<S>(&mut self, stream: &mut ReadHalf<'_, S>) -> Read
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let conn = self.conn;
        // A link's peer sends a heartbeat every 15 s: silence means it is gone.
        let frame = if self.peer.is_link() {
            match tokio::time::timeout(LINK_SILENCE, stream.next()).await {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::warn!(conn, "link silent for 45 s; closing");
                    return Read::End;
                }
            }
        } else {
            stream.next().await
        };
        match frame {
            None | Some(Ok(Incoming::Close)) => Read::End,
            Some(Ok(Incoming::Text(t))) => Read::Text(t),
            Some(Ok(Incoming::Binary)) => Read::Refused(
                ErrorCode::BadFrame,
                "binary frames are not SOCP; send JSON text frames",
            ),
            Some(Ok(Incoming::Ping(payload))) => {
                // A user's pings count in its frame rate (each costs a
                // pong); over it, they go unanswered.
                if self.peer.is_link() || self.bucket.take() {
                    // Answered by the writer, behind what is queued before it.
                    self.replies.try_send(ConnCmd::Pong(Box::new(payload)));
                } else {
                    self.ctx.metrics.refused("ping");
                }
                Read::Skip
            }
            Some(Ok(Incoming::Pong)) => {
                if !self.peer.is_link() {
                    let _ = self.bucket.take();
                }
                Read::Skip
            }
            Some(Err(e @ WsError::FrameTimeout(_))) => {
                tracing::info!(conn, error = %e, "a frame arrived too slowly; closing");
                let detail = format!("{e}; a frame must arrive in full within that time");
                self.reply(ErrorCode::Timeout, &detail, None);
                Read::End
            }
            Some(Err(e @ WsError::TooLarge { .. })) => {
                tracing::warn!(conn, error = %e, "oversized frame; closing");
                let detail = format!("{e}; frames are limited to 1 MiB");
                self.reply(ErrorCode::TooLarge, &detail, None);
                Read::End
            }
            Some(Err(_)) => Read::End,
        }
    }

    /// Answers the peer through the connection's queue.
    fn reply(&self, code: ErrorCode, detail: &str, msg_id: Option<&str>) {
        let error = ErrorBody::about(code, detail, msg_id);
        let frame = ConnCmd::Frame(Box::new(Outgoing::new(
            self.peer.id(),
            Message::Error(error),
        )));
        if !self.replies.try_send(frame) {
            tracing::debug!(
                conn = self.conn,
                "send queue full or closed; an error reply was dropped"
            );
        }
    }

    /// Acts on a verdict; false if the connection should close.
    fn carry_out(&mut self, verdict: Verdict) -> bool {
        let metrics = &self.ctx.metrics;
        match verdict {
            Verdict::Continue => {}
            Verdict::Reply(ErrorCode::RateLimited, detail) => {
                // One reply a second at most: each may cost a signature.
                metrics.refused(ErrorCode::RateLimited.as_str());
                if self
                    .last_rate_reply
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
                {
                    self.last_rate_reply = Some(Instant::now());
                    self.reply(ErrorCode::RateLimited, &detail, None);
                }
            }
            Verdict::Reply(code, detail) => {
                metrics.refused(code.as_str());
                self.reply(code, &detail, None);
            }
            Verdict::Refuse(code, detail, msg_id) => {
                metrics.refused(code.as_str());
                self.reply(code, &detail, msg_id.as_deref());
            }
            Verdict::Stop => {
                metrics.refused("session");
                return false;
            }
        }
        true
    }

    /// A user's frame over its rate: dropped, but still authenticated, so
    /// a session's sequence stays in step.
    fn over_rate(&mut self, text: &str) -> Verdict {
        let in_step = match Envelope::parse(text) {
            Ok(env) if env.mac.is_some() || self.checker.sealed() => {
                self.checker.check(&env).is_ok()
            }
            Ok(_) => true,
            Err(_) => self.checker.skip_unparsed(text),
        };
        if !in_step {
            return Verdict::Stop;
        }
        Verdict::Reply(
            ErrorCode::RateLimited,
            format!(
                "more than {} frames per second; this one was dropped, slow down",
                self.ctx.limits.user_rate
            ),
        )
    }

    /// A frame refused before parsing (binary), over the user's rate.
    fn over_rate_unparsed(&self) -> Verdict {
        Verdict::Reply(
            ErrorCode::RateLimited,
            format!(
                "more than {} frames per second; this one was dropped, slow down",
                self.ctx.limits.user_rate
            ),
        )
    }

    /// Parses and checks one frame and hands it to the router.
    async fn handle(&mut self, text: &str) -> Verdict {
        let (conn, peer) = (self.conn, self.peer);
        let env = match Envelope::parse(text) {
            Ok(env) => env,
            // On a session, it still counts in the sequence (or ends it).
            Err(e) if self.checker.skip_unparsed(text) => {
                return Verdict::Reply(e.code(), e.to_string());
            }
            Err(e) => {
                tracing::warn!(conn, peer = %peer.id(), error = %e.log_summary(), "closing: an unparsable frame out of sequence");
                return Verdict::Stop;
            }
        };
        self.ctx.metrics.frame_in(&env.kind);
        if let Some(verdict) = self.authenticate(&env) {
            return verdict;
        }
        // Content must fit every hop after this one (PROTOCOL.md C12).
        let limit = match peer {
            Peer::User(_) => MAX_CONTENT_FRAME_BYTES,
            Peer::Link { .. } => MAX_RELAYED_FRAME_BYTES,
        };
        if let Err(refused) = check_content(&env, text, limit) {
            tracing::info!(conn, peer = %peer.id(), code = %refused.code, "refused content: {}", refused.detail);
            return Verdict::Refuse(refused.code, refused.detail, refused.msg_id);
        }
        let input = match self.typed(env) {
            Ok(Some(input)) => input,
            Ok(None) => return Verdict::Continue,
            Err(verdict) => return verdict,
        };
        if self.ctx.to_hub(input).await {
            Verdict::Continue
        } else {
            Verdict::Stop
        }
    }

    /// Checks a frame's MAC or signature: None if it may go on.
    fn authenticate(&mut self, env: &Envelope) -> Option<Verdict> {
        let (conn, peer) = (self.conn, self.peer);
        if env.mac.is_some() || self.checker.sealed() {
            // A session frame that fails closes the connection: something
            // is replaying, reordering or forging frames on it.
            if let Err(why) = self.checker.check(env) {
                tracing::warn!(conn, peer = %peer.id(), %why, "closing: link session check failed");
                return Some(Verdict::Stop);
            }
            return None;
        }
        let why = self.checker.check(env).err()?;
        if let Peer::Link { server_id } = peer {
            tracing::warn!(conn, server = %server_id, kind = %env.kind, "dropped link frame: {why}");
            return Some(Verdict::Continue);
        }
        Some(Verdict::Reply(ErrorCode::InvalidSig, why))
    }

    /// The router's input for a checked frame: the payload moves into the
    /// typed message rather than being copied (the envelope keeps its
    /// header). None for a frame the router need not see.
    fn typed(&self, mut env: Envelope) -> Result<Option<Input>, Verdict> {
        let payload = std::mem::take(&mut env.payload);
        let msg = Message::from_payload(&env.kind, payload).map_err(|e| {
            tracing::info!(conn = self.conn, kind = %env.kind.chars().take(64).collect::<String>(), error = %e.log_summary(), "refused frame");
            Verdict::Reply(e.code(), e.to_string())
        })?;
        let conn = self.conn;
        Ok(Some(match (self.peer, msg) {
            (Peer::User(_), Message::UserHello(_)) => {
                let detail = "already said hello".to_owned();
                return Err(Verdict::Reply(ErrorCode::BadFrame, detail));
            }
            (Peer::User(_), msg) => Input::UserFrame { conn, env, msg },
            // A link's heartbeats reach the router too: the first frame of
            // a held second link proves its key (`router/link_hold.rs`).
            (Peer::Link { .. }, msg) => Input::LinkFrame { conn, env, msg },
        }))
    }
}

/// A token bucket: `rate` frames per second, at most `burst` at once.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
