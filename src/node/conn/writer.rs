//! The writing half of a connection: the hub's frames (with the reader's
//! error replies among them) and a link's heartbeats, each stamped with our
//! id, authenticated, serialized once and written under the write timeout.
//! The `ACK`s and `RECEIPT`s queued behind a frame are folded into it, and
//! where every frame is RSA-signed several are signed at once.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{Sealer, Stamp};
use super::queue::QueueRx;
use super::ws::WriteHalf;
use super::{ConnCmd, ConnCtx, HEARTBEAT_EVERY};
use crate::crypto::PrivateKey;
use crate::node::router::{ConnId, Outgoing};
use crate::wire::messages::{Empty, Message};
use crate::wire::{MAX_FRAME_BYTES, canonical, ids};

/// Frames a connection without a session signs at once.
const SIGNING_AHEAD: usize = 4;
/// Most `msg_ids` one merged `ACK` or `RECEIPT` carries (about 40 bytes
/// each: far below the frame limit).
const MERGED_IDS: usize = 4096;

/// Signs and serializes a frame from this node (RSA off the reactor).
pub(crate) async fn sign(key: &Arc<PrivateKey>, me: &str, out: Outgoing) -> Option<String> {
    let mut env = out.into_envelope(me);
    let payload = canonical::map_to_string(&env.payload).ok()?;
    let key = key.clone();
    let (payload, sig) = tokio::task::spawn_blocking(move || {
        let sig = key.sign_b64(payload.as_bytes());
        sig.map(|sig| (payload, sig))
    })
    .await
    .ok()?
    .ok()?;
    Some(env.to_json_signed(&payload, sig))
}

/// RSA-signs a frame from this node, counting it in the metrics.
async fn sign_counted(ctx: &ConnCtx, out: Outgoing) -> Option<String> {
    ctx.metrics.frame_out(out.type_name());
    ctx.metrics
        .rsa_ops
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sign(&ctx.key, &ctx.me, out).await
}

/// Stamps, authenticates and serializes one frame (signing it here, if it
/// is signed). None: it cannot be sent (signing failed).
pub(super) async fn seal(ctx: &ConnCtx, sealer: &mut Sealer, out: Outgoing) -> Option<String> {
    let stamp = sealer.stamp(&out);
    finish(ctx, sealer, out, stamp).await
}

/// Authenticates and serializes a frame as `stamp` says.
async fn finish(ctx: &ConnCtx, sealer: &mut Sealer, out: Outgoing, stamp: Stamp) -> Option<String> {
    if stamp == Stamp::Signed {
        return sign_counted(ctx, out).await;
    }
    ctx.metrics.frame_out(out.type_name());
    let mut env = out.into_envelope(&ctx.me);
    match stamp {
        Stamp::Mac => sealer.mac(&mut env),
        _ => Some(env.to_json()),
    }
}

/// What the writer does next.
enum Next {
    /// A frame signed ahead is ready (None: its signing failed).
    Signed(Option<String>),
    /// The hub's next command (None: the hub dropped the queue).
    Cmd(Option<ConnCmd>),
    Heartbeat,
}

/// The writer's state.
struct Writer<'a, 'w, S> {
    sink: &'a mut WriteHalf<'w, S>,
    conn: ConnId,
    ctx: &'a ConnCtx,
    sealer: &'a mut Sealer,
    /// Frames being signed ahead, in order: only where every frame is
    /// RSA-signed (a connection with a session allocates none).
    signing: Option<FuturesOrdered<BoxFuture<'a, Option<String>>>>,
    /// The hub said close: finish what is queued before it, then stop.
    closing: bool,
}

/// Writes the hub's frames until the connection should close. Every write
/// runs under the write timeout.
pub(super) async fn write_frames<S>(
    sink: &mut WriteHalf<'_, S>,
    conn: ConnId,
    ctx: &ConnCtx,
    rx: &mut QueueRx,
    sealer: &mut Sealer,
    is_link: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Links only: a user's connection keeps no timer.
    let mut heartbeat = None;
    if is_link {
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.tick().await;
        heartbeat = Some(beat);
    }
    // Without a session every frame is RSA-signed (~1.5 ms): several are
    // signed at once, on the blocking pool, and sent in order.
    let signing = sealer.signs_only().then(FuturesOrdered::new);
    let mut w = Writer {
        sink,
        conn,
        ctx,
        sealer,
        signing,
        closing: false,
    };
    while !(w.closing && w.signing_len() == 0) {
        let signing = w.signing_len();
        let next = tokio::select! {
            // What is signed goes first (in order), then the queue.
            biased;
            Some(signed) = next_signed(&mut w.signing), if signing > 0 => Next::Signed(signed),
            cmd = rx.recv(), if !w.closing && signing < SIGNING_AHEAD => Next::Cmd(cmd),
            _ = tick(&mut heartbeat) => Next::Heartbeat,
        };
        if rx.overflowed() {
            // A user over its byte budget: what is queued is dropped and
            // the connection told why (`say_last_words`).
            tracing::warn!(
                conn,
                "answers waiting over the byte budget: closing the slow user"
            );
            return;
        }
        // Boxed: sending (signing, the write under its timeout) is most of
        // this future's state, and an idle connection is not sending.
        let ok = Box::pin(w.act(next, rx)).await;
        if !ok {
            return;
        }
    }
}

impl<'a, 'w, S> Writer<'a, 'w, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Carries out what the writer does next; false if the connection
    /// should close.
    async fn act(&mut self, next: Next, rx: &mut QueueRx) -> bool {
        let w = self;
        match next {
            Next::Signed(Some(text)) => w.write(text).await,
            Next::Signed(None) => true,
            Next::Cmd(Some(ConnCmd::Frame(out))) => {
                // ACKs queued behind this one go out as one frame.
                let (out, after) = merge_acks(*out, rx);
                w.send(out).await && w.handle(after).await
            }
            Next::Cmd(Some(ConnCmd::Pong(payload))) => w.pong(&payload).await,
            // Close once what is queued before it is sent.
            Next::Cmd(Some(ConnCmd::Close) | None) => {
                w.closing = true;
                true
            }
            Next::Heartbeat => {
                let beat = Outgoing::new(ids::TO_SERVER, Message::Heartbeat(Empty::default()));
                w.send(beat).await
            }
        }
    }

    /// A command taken from the queue behind a merged frame.
    async fn handle(&mut self, cmd: Option<ConnCmd>) -> bool {
        match cmd {
            Some(ConnCmd::Frame(out)) => self.send(*out).await,
            Some(ConnCmd::Pong(payload)) => self.pong(&payload).await,
            Some(ConnCmd::Close) => {
                self.closing = true;
                true
            }
            None => true,
        }
    }

    /// Sends one frame, or starts signing it; false if the connection
    /// should close.
    async fn send(&mut self, out: Outgoing) -> bool {
        let stamp = self.sealer.stamp(&out);
        if let (Some(signing), Stamp::Signed) = (&mut self.signing, stamp) {
            signing.push_back(sign_counted(self.ctx, out).boxed());
            return true;
        }
        match finish(self.ctx, self.sealer, out, stamp).await {
            Some(text) => self.write(text).await,
            None => true,
        }
    }

    /// Writes one frame under the write timeout; false if the connection
    /// should close.
    async fn write(&mut self, text: String) -> bool {
        let conn = self.conn;
        if text.len() > MAX_FRAME_BYTES {
            // The peer would close the connection over it (and we would
            // resend it after the redial): never put it on the wire.
            tracing::error!(
                conn,
                bytes = text.len(),
                "dropped a frame over the 1 MiB limit"
            );
            self.ctx.metrics.refused("oversized_out");
            return true;
        }
        let limit = self.ctx.limits.write_timeout;
        match tokio::time::timeout(limit, self.sink.send_text(&text)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(conn, "the peer took in nothing for {limit:?}; closing");
                self.ctx
                    .metrics
                    .write_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    }
}

impl<S> Writer<'_, '_, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Answers a peer's ping under the write timeout; false if the
    /// connection should close.
    async fn pong(&mut self, payload: &[u8]) -> bool {
        let limit = self.ctx.limits.write_timeout;
        matches!(
            tokio::time::timeout(limit, self.sink.pong(payload)).await,
            Ok(Ok(()))
        )
    }
}

impl<S> Writer<'_, '_, S> {
    /// Frames being signed ahead.
    fn signing_len(&self) -> usize {
        self.signing.as_ref().map_or(0, FuturesOrdered::len)
    }
}

/// The next frame signed ahead, in order; None if none is being signed.
async fn next_signed<F: std::future::Future>(
    signing: &mut Option<FuturesOrdered<F>>,
) -> Option<F::Output> {
    signing.as_mut()?.next().await
}

/// The next heartbeat; never without one.
async fn tick(heartbeat: &mut Option<tokio::time::Interval>) {
    match heartbeat {
        Some(beat) => {
            beat.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The ids of an `ACK` or a `RECEIPT`, the frames that can be folded.
fn ids_of(out: &mut Outgoing) -> Option<&mut Vec<String>> {
    match out.message_mut()? {
        Message::Ack(a) => Some(&mut a.msg_ids),
        Message::Receipt(r) => Some(&mut r.msg_ids),
        _ => None,
    }
}

/// True if `next` can be folded into `out`: both `ACK`s, or both `RECEIPT`s
/// about the same user and status, to the same peer.
fn mergeable(out: &Outgoing, next: &Outgoing) -> bool {
    out.to == next.to
        && match (out.message(), next.message()) {
            (Some(Message::Ack(_)), Some(Message::Ack(_))) => true,
            (Some(Message::Receipt(a)), Some(Message::Receipt(b))) => {
                a.user_id == b.user_id && a.status == b.status
            }
            _ => false,
        }
}

/// Folds the `ACK`s (or `RECEIPT`s) queued right behind `out` into it: one
/// frame, one signature where frames are RSA-signed. Returns the first
/// command that cannot be folded, to be handled next: only later ids move
/// ahead of other frames, and those frames keep their order.
fn merge_acks(mut out: Outgoing, rx: &mut QueueRx) -> (Outgoing, Option<ConnCmd>) {
    loop {
        if ids_of(&mut out).is_none_or(|ids| ids.len() >= MERGED_IDS) {
            return (out, None);
        }
        match rx.try_recv() {
            Ok(ConnCmd::Frame(mut next)) if mergeable(&out, &next) => {
                if let (Some(ids), Some(more)) = (ids_of(&mut out), ids_of(&mut next)) {
                    ids.append(more);
                }
            }
            Ok(other) => return (out, Some(other)),
            Err(_) => return (out, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::{Ack, Receipt};

    fn ack(ids: &[&str]) -> ConnCmd {
        let ack = Ack {
            msg_ids: ids.iter().map(|s| s.to_string()).collect(),
            extra: Default::default(),
        };
        ConnCmd::Frame(Box::new(Outgoing::new("alice", Message::Ack(ack))))
    }

    fn ids(cmd: Option<ConnCmd>) -> Vec<String> {
        match cmd {
            Some(ConnCmd::Frame(mut out)) => ids_of(&mut out).cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn frame(cmd: ConnCmd) -> Outgoing {
        match cmd {
            ConnCmd::Frame(out) => *out,
            _ => unreachable!(),
        }
    }

    #[test]
    fn queued_acks_merge_and_other_frames_keep_their_order() {
        let (tx, mut rx) = super::super::queue::queue(8, None);
        for cmd in [ack(&["b"]), ack(&["c"]), ConnCmd::Close, ack(&["d"])] {
            tx.try_send(cmd).unwrap();
        }
        let (merged, next) = merge_acks(frame(ack(&["a"])), &mut rx);
        assert_eq!(ids(Some(ConnCmd::Frame(Box::new(merged)))), ["a", "b", "c"]);
        assert!(matches!(next, Some(ConnCmd::Close)));
        // What came after the other frame waits for the next turn.
        assert_eq!(ids(rx.try_recv().ok()), ["d"]);
    }

    fn receipt(user: &str, status: &str, ids: &[&str]) -> ConnCmd {
        let receipt = Receipt {
            user_id: user.into(),
            msg_ids: ids.iter().map(|s| s.to_string()).collect(),
            status: status.into(),
            extra: Default::default(),
        };
        ConnCmd::Frame(Box::new(Outgoing::new("alice", Message::Receipt(receipt))))
    }

    #[test]
    fn receipts_merge_only_for_the_same_user_and_status() {
        let (tx, mut rx) = super::super::queue::queue(8, None);
        for cmd in [
            receipt("alice", "delivered", &["b"]),
            receipt("alice", "queued", &["c"]),
        ] {
            tx.try_send(cmd).unwrap();
        }
        let first = frame(receipt("alice", "delivered", &["a"]));
        let (merged, next) = merge_acks(first, &mut rx);
        assert_eq!(ids(Some(ConnCmd::Frame(Box::new(merged)))), ["a", "b"]);
        let Some(ConnCmd::Frame(next)) = next else {
            panic!("the queued receipt comes next")
        };
        assert!(matches!(next.message(), Some(Message::Receipt(r)) if r.status == "queued"));
    }

    #[test]
    fn other_frames_are_not_merged() {
        let (tx, mut rx) = super::super::queue::queue(8, None);
        tx.try_send(ack(&["b"])).unwrap();
        let out = Outgoing::new("alice", Message::Heartbeat(Empty::default()));
        let (same, next) = merge_acks(out, &mut rx);
        assert!(matches!(same.message(), Some(Message::Heartbeat(_))));
        assert!(next.is_none());
        assert!(rx.try_recv().is_ok(), "the ACK is still queued");
    }
}
