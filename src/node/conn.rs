//! One connection (a user session or a server link) as an actor: it checks
//! the hello, then runs one `select!` over the socket, its bounded outgoing
//! queue, the heartbeat timer and shutdown. Frames from a link are verified
//! with the peer's pinned key here, before the router sees them; frames to
//! peers are signed here, on the blocking pool, never on the reactor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::Limits;
use super::hub::{ConnCmd, HubEvent};
use super::metrics::Metrics;
use super::router::{
    CAP_SOCP, ConnId, HELLO_FRESHNESS_MS, Input, LinkHelloIn, Outgoing, UserHelloIn,
};
use crate::crypto::session::{self, CAP_MAC_V1, MacOpen, MacSeal, MacSession};
use crate::crypto::{PrivateKey, PublicKey};
use crate::wire::messages::{ErrorBody, Message, PeerHelloLink, Proof, UserHello};
use crate::wire::{
    ENVELOPE_ROOM, Envelope, ErrorCode, MAX_CONTENT_FRAME_BYTES, MAX_FRAME_BYTES, WireError, now_ms,
};
use crate::wire::{canonical, ids};

/// A connection must say hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one connection before it counts as too slow.
pub const SEND_QUEUE: usize = 1024;
/// The same for a server link: more than its custody window
/// (`custody::LINK_WINDOW`) plus the acks, receipts and presence it carries.
pub const LINK_SEND_QUEUE: usize = 8192;
/// How often a link sends `HEARTBEAT`.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// A link silent this long is closed (and redialled by its dialer).
pub const LINK_SILENCE: Duration = Duration::from_secs(45);
/// Default write timeout (`--write-timeout-secs`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// WebSocket limits for every connection (PROTOCOL.md C8).
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // Small starting buffers (they grow for big frames): an idle
        // connection should cost a few KiB, not 256.
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        // Bounded: a peer that does not read is disconnected, not buffered for.
        .max_write_buffer_size(4 * MAX_FRAME_BYTES)
}

/// Starting size of a connection's read and write buffers.
const WS_BUFFER: usize = 4096;

/// What every connection task shares.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub me: String,
    pub key: Arc<PrivateKey>,
    pub hub: mpsc::Sender<HubEvent>,
    /// Where a user connection's frames go: the hub serves links first, so
    /// a flood from users cannot starve the acks that keep links flowing.
    pub hub_users: mpsc::Sender<HubEvent>,
    pub shutdown: watch::Receiver<bool>,
    /// Offer `mac-v1` link sessions (off with `--no-mac`).
    pub mac: bool,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The peer's IP address, on an accepted connection.
    pub peer_ip: Option<std::net::IpAddr>,
}

/// True if a hello lists the `mac-v1` capability.
pub(crate) fn offers_mac(env: &Envelope) -> bool {
    env.payload
        .get("caps")
        .and_then(|c| c.as_array())
        .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some(CAP_MAC_V1)))
}

/// How frames on one connection are authenticated: RSA signatures by the
/// peer's key, or, once a `mac-v1` session is on, HMAC with a sequence number.
pub(crate) struct Auth {
    /// The key frames without a MAC must verify with (None: a legacy user,
    /// whose frames are unsigned).
    pub peer_key: Option<PeerKey>,
    /// Boxed: HMAC keys are large, and an idle connection's future should not be.
    pub session: Option<Box<MacSession>>,
    /// Our frames are MAC'd (from the frame after our session offer).
    pub mac_out: bool,
    /// The peer's frames must be MAC'd (from its first MAC'd frame).
    pub mac_in: bool,
    /// We have accepted the peer (welcomed a user, answered a link hello,
    /// or it answered ours): until then our errors to it are unsigned.
    pub accepted: bool,
}

impl Auth {
    /// The writer's and the reader's halves: they run side by side, so
    /// neither may wait for the other.
    fn split(self) -> (Sealer, Checker) {
        let (seal, open) = match self.session {
            Some(s) => {
                let (seal, open) = s.split();
                (Some(Box::new(seal)), Some(Box::new(open)))
            }
            None => (None, None),
        };
        (
            Sealer {
                session: seal,
                mac_out: self.mac_out,
                accepted: self.accepted,
            },
            Checker {
                peer_key: self.peer_key,
                session: open,
                mac_in: self.mac_in,
            },
        )
    }
}

/// The writer's half of [`Auth`]: stamps and authenticates our frames.
struct Sealer {
    session: Option<Box<MacSeal>>,
    /// Our frames are MAC'd (from the frame after our session offer).
    mac_out: bool,
    /// See [`Auth::accepted`].
    accepted: bool,
}

impl Sealer {
    /// Stamps, authenticates and serializes a frame from this node.
    /// False for a frame that goes out unsigned: an error to a peer we have
    /// not accepted (a refused hello: replayed, an id in use, registration
    /// closed). No private-key work for such a peer, however often it tries
    /// (PROTOCOL.md C14).
    fn signs(&mut self, out: &Outgoing) -> bool {
        if matches!(out.kind, "USER_WELCOME" | "PEER_HELLO_LINK") {
            self.accepted = true;
        }
        self.accepted || out.kind != "ERROR"
    }

    async fn seal(&mut self, ctx: &ConnCtx, out: Outgoing) -> Option<String> {
        if !self.signs(&out) {
            ctx.metrics.frame_out(out.kind);
            return Some(Envelope::new(out.kind, &ctx.me, &out.to, out.payload).to_json());
        }
        let offers_session = matches!(out.kind, "USER_WELCOME" | "PEER_HELLO_LINK")
            && out.payload.contains_key("session");
        if self.mac_out
            && let Some(session) = self.session.as_mut()
        {
            ctx.metrics.frame_out(out.kind);
            let mut env = Envelope::new(out.kind, &ctx.me, &out.to, out.payload);
            return session.seal_to_json(&mut env).ok();
        }
        let text = seal_counted(ctx, out).await;
        if offers_session && self.session.is_some() {
            self.mac_out = true;
        }
        text
    }
}

/// The reader's half of [`Auth`]: checks the peer's frames.
struct Checker {
    peer_key: Option<PeerKey>,
    session: Option<Box<MacOpen>>,
    /// The peer's frames must be MAC'd (from its first MAC'd frame).
    mac_in: bool,
}

impl Checker {
    /// Checks an incoming frame; an error closes the connection.
    fn check(&mut self, env: &Envelope) -> Result<(), String> {
        if env.mac.is_some() {
            let session = self
                .session
                .as_mut()
                .ok_or("a mac on a connection without a session")?;
            session.open(env).map_err(|e| e.to_string())?;
            self.mac_in = true;
            // Every later frame must carry a MAC: the RSA key (a few KiB
            // parsed) is not needed any more.
            self.peer_key = None;
            return Ok(());
        }
        if self.mac_in {
            return Err("a frame without a mac on a mac-v1 session".into());
        }
        match self.peer_key.as_mut().map(PeerKey::parsed) {
            None => Ok(()),
            Some(None) => Err("the peer's key no longer parses".into()),
            Some(Some(key)) => {
                let ok = env
                    .signed_bytes()
                    .ok()
                    .is_some_and(|b| key.verify_b64(&b, &env.sig).is_ok());
                if ok {
                    Ok(())
                } else {
                    Err(format!("{} signature does not verify", env.kind))
                }
            }
        }
    }

    /// A frame that did not parse as an envelope still takes its place in
    /// a session's sequence if it names the next `seq` (it is refused, and
    /// the frames after it line up). False if it breaks the sequence.
    fn skip_unparsed(&mut self, text: &str) -> bool {
        let Some(session) = self.session.as_mut() else {
            return true;
        };
        #[derive(serde::Deserialize)]
        struct SeqOnly {
            seq: Option<u64>,
        }
        let seq = serde_json::from_str::<SeqOnly>(text)
            .ok()
            .and_then(|s| s.seq);
        if seq.is_none() && !self.mac_in {
            // An RSA-signed frame before the session started.
            return true;
        }
        session.skip_unparsed(seq)
    }
}

/// A peer's key as the connection keeps it: encoded until a frame needs an
/// RSA check (parsed, with its Montgomery tables, it is several KiB, and a
/// peer on a `mac-v1` session never needs it).
pub(crate) struct PeerKey {
    b64: String,
    parsed: Option<PublicKey>,
}

impl PeerKey {
    pub fn new(key: &PublicKey) -> Self {
        PeerKey {
            b64: key.to_b64().to_owned(),
            parsed: None,
        }
    }

    fn parsed(&mut self) -> Option<&PublicKey> {
        if self.parsed.is_none() {
            self.parsed = PublicKey::from_b64(&self.b64).ok();
        }
        self.parsed.as_ref()
    }
}

/// Why a hello was refused, with the code the peer is told.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl Refusal {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

/// Signs and serializes a frame from this node (RSA off the reactor).
pub(crate) async fn seal(key: &Arc<PrivateKey>, me: &str, out: Outgoing) -> Option<String> {
    let mut env = Envelope::new(out.kind, me, &out.to, out.payload);
    let bytes = env.signed_bytes().ok()?;
    let key = key.clone();
    let sig = tokio::task::spawn_blocking(move || key.sign_b64(&bytes))
        .await
        .ok()?
        .ok()?;
    env.sig = sig;
    Some(env.to_json())
}

/// Checks a `USER_HELLO` (PROTOCOL.md C1, C3): key policy, and for a signed
/// hello its signature, freshness and binding to the claimed id. Replays
/// and legacy admission are the router's call.
pub(crate) fn check_user_hello(
    env: &Envelope,
    now: i64,
) -> Result<(String, PublicKey, Option<Proof>), Refusal> {
    ids::check_user(&env.from).map_err(|e| Refusal::new(ErrorCode::BadFrame, e.to_string()))?;
    let hello = match Message::from_envelope(env)? {
        Message::UserHello(h) => h,
        _ => return Err(Refusal::new(ErrorCode::BadFrame, "expected USER_HELLO")),
    };
    let key = PublicKey::from_b64(&hello.pubkey)
        .map_err(|e| Refusal::new(ErrorCode::BadKey, e.to_string()))?;
    if hello.enc_pubkey != hello.pubkey {
        return Err(Refusal::new(
            ErrorCode::BadKey,
            "enc_pubkey must be the same key as pubkey",
        ));
    }
    if env.sig.is_empty() {
        return Ok((env.from.clone(), key, None));
    }
    check_signed_hello(env, &hello, &key, now)?;
    let proof = Proof {
        payload: env.payload.clone(),
        sig: env.sig.clone(),
        extra: Default::default(),
    };
    Ok((env.from.clone(), key, Some(proof)))
}

fn check_signed_hello(
    env: &Envelope,
    hello: &UserHello,
    key: &PublicKey,
    now: i64,
) -> Result<(), Refusal> {
    let Some(ts) = hello.ts else {
        return Err(Refusal::new(
            ErrorCode::BadFrame,
            "a signed hello needs ts (Unix ms)",
        ));
    };
    let skew = (now - ts).abs();
    if skew > HELLO_FRESHNESS_MS {
        return Err(Refusal::new(
            ErrorCode::InvalidSig,
            format!(
                "hello ts is {} s away from the server's clock; check your clock",
                skew / 1000
            ),
        ));
    }
    if let Some(claimed) = hello.extra.get("user_id")
        && claimed.as_str() != Some(env.from.as_str())
    {
        return Err(Refusal::new(
            ErrorCode::NotAllowed,
            "hello user_id differs from from",
        ));
    }
    let bytes = env.signed_bytes().map_err(WireError::from)?;
    key.verify_b64(&bytes, &env.sig).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidSig,
            "hello signature does not verify with its pubkey",
        )
    })
}

/// Checks a `PEER_HELLO_LINK` (PROTOCOL.md C5): a server id, an acceptable
/// key, and a signature by that key. Pinning is the router's call.
pub(crate) fn check_link_hello(env: &Envelope) -> Result<(PeerHelloLink, PublicKey), Refusal> {
    ids::check_server(&env.from).map_err(|e| Refusal::new(ErrorCode::BadFrame, e.to_string()))?;
    let hello = match Message::from_envelope(env)? {
        Message::PeerHelloLink(h) => h,
        _ => {
            return Err(Refusal::new(
                ErrorCode::BadFrame,
                "expected PEER_HELLO_LINK",
            ));
        }
    };
    let key = PublicKey::from_b64(&hello.pubkey)
        .map_err(|e| Refusal::new(ErrorCode::BadKey, e.to_string()))?;
    let bytes = env.signed_bytes().map_err(WireError::from)?;
    key.verify_b64(&bytes, &env.sig).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidSig,
            "link hello is not signed by the key it presents",
        )
    })?;
    Ok((hello, key))
}

/// Builds the router's view of a checked link hello.
pub(crate) fn link_hello_in(
    conn: ConnId,
    env: &Envelope,
    hello: PeerHelloLink,
    key: PublicKey,
    dialed: bool,
    dialed_master: bool,
    session: Option<String>,
) -> LinkHelloIn {
    let socp = hello
        .caps
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c == CAP_SOCP));
    LinkHelloIn {
        conn,
        server_id: env.from.clone(),
        key,
        role: hello.role,
        host: hello.host,
        port: hello.port,
        ts: env.ts,
        socp,
        dialed,
        dialed_master,
        session,
    }
}

/// Reads the next text frame, answering pings; None at end of stream.
pub(crate) async fn next_text<S>(ws: &mut WebSocketStream<S>) -> Option<Result<String, WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(WsMessage::Text(t)) => return Some(Ok(t.as_str().to_owned())),
            Ok(WsMessage::Close(_)) => return None,
            Ok(WsMessage::Binary(_)) => {
                return Some(Err(WsError::Protocol(
                    tokio_tungstenite::tungstenite::error::ProtocolError::UnmaskedFrameFromClient,
                )));
            }
            Ok(_) => continue, // ping, pong: tungstenite answers pings itself
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Sends an `ERROR` frame straight from a connection, before the peer has
/// authenticated (and before the hub knows it). Unsigned: a node does no
/// private-key work for a peer that has proved nothing (PROTOCOL.md C14),
/// so refusing garbage costs next to nothing. Under the write timeout.
pub(crate) async fn send_error<S>(
    ws: &mut WebSocketStream<S>,
    ctx: &ConnCtx,
    to: &str,
    code: ErrorCode,
    detail: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.metrics.refused(code.as_str());
    ctx.metrics.frame_out("ERROR");
    let out = error_frame(to, code, detail);
    let env = Envelope::new(out.kind, &ctx.me, &out.to, out.payload);
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.send(WsMessage::text(env.to_json()))).await;
}

/// Closes a connection, waiting at most a moment for the peer.
pub(crate) async fn close_quietly<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
}

/// An `ERROR` frame for the peer.
fn error_frame(to: &str, code: ErrorCode, detail: &str) -> Outgoing {
    error_about(to, code, detail, None)
}

/// An `ERROR` frame for the peer, naming the content it is about (PROTOCOL.md
/// C12: the sender's client learns which message was refused).
fn error_about(to: &str, code: ErrorCode, detail: &str, msg_id: Option<&str>) -> Outgoing {
    let mut extra = serde_json::Map::new();
    if let Some(id) = msg_id {
        extra.insert("msg_id".into(), Value::String(id.to_owned()));
    }
    let payload = match serde_json::to_value(ErrorBody {
        code: code.as_str().to_owned(),
        detail: detail.to_owned(),
        extra,
    }) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    Outgoing {
        kind: "ERROR",
        to: to.to_owned(),
        payload,
    }
}

/// The kind of peer on a connection, once its hello is accepted.
pub(crate) enum Peer {
    User(String),
    Link { server_id: String },
}

/// Runs an accepted connection until it closes: reads the hello, hands it
/// to the router, then serves frames both ways.
/// Takes the stream and context by reference: the caller's task owns them
/// once, where moving them in would store them twice in the task (async fn
/// arguments are kept beside their moved copies); an idle connection is
/// mostly this task.
pub(crate) async fn serve_accepted<S>(ws: &mut WebSocketStream<S>, conn: ConnId, ctx: &ConnCtx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = match tokio::time::timeout(ctx.limits.hello_timeout, next_text(ws)).await {
        Ok(Some(Ok(text))) => text,
        Ok(Some(Err(WsError::Capacity(e)))) => {
            send_error(ws, ctx, ids::TO_USER, ErrorCode::TooLarge, &e.to_string()).await;
            close_quietly(ws).await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            send_error(
                ws,
                ctx,
                ids::TO_USER,
                ErrorCode::Timeout,
                "no hello within 10 s",
            )
            .await;
            close_quietly(ws).await;
            return;
        }
    };
    let (input, peer, auth) = match Envelope::parse(&first) {
        Err(e) => {
            let r = Refusal::from(e);
            send_error(ws, ctx, ids::TO_USER, r.code, &r.detail).await;
            close_quietly(ws).await;
            return;
        }
        Ok(env) if env.kind == "USER_HELLO" => match check_user_hello(&env, now_ms()) {
            Ok((user_id, key, proof)) => {
                // Only a signed hello proves the key: only then a session.
                let (session, offer) = offer_session(ctx, &env, &key, proof.is_some(), &user_id);
                let auth = Auth {
                    peer_key: proof.is_some().then(|| PeerKey::new(&key)),
                    session: session.map(Box::new),
                    mac_out: false,
                    mac_in: false,
                    accepted: false,
                };
                let input = Input::UserHello(UserHelloIn {
                    conn,
                    user_id: user_id.clone(),
                    key,
                    proof,
                    session: offer,
                    addr: ctx.peer_ip,
                });
                (input, Peer::User(user_id), auth)
            }
            Err(r) => {
                tracing::info!(user = %env.from.chars().take(64).collect::<String>(), code = %r.code, detail = %r.detail, "hello refused");
                send_error(ws, ctx, ids::TO_USER, r.code, &r.detail).await;
                close_quietly(ws).await;
                return;
            }
        },
        Ok(env) if env.kind == "PEER_HELLO_LINK" => match check_link_hello(&env) {
            Ok((hello, key)) => {
                let (session, offer) = offer_session(ctx, &env, &key, true, &env.from);
                let auth = Auth {
                    // With a session every frame carries a MAC.
                    peer_key: session.is_none().then(|| PeerKey::new(&key)),
                    mac_in: session.is_some(),
                    session: session.map(Box::new),
                    mac_out: false,
                    accepted: false,
                };
                let input =
                    Input::LinkHello(link_hello_in(conn, &env, hello, key, false, false, offer));
                (
                    input,
                    Peer::Link {
                        server_id: env.from.clone(),
                    },
                    auth,
                )
            }
            Err(r) => {
                tracing::warn!(code = %r.code, detail = %r.detail, "link hello refused");
                send_error(ws, ctx, ids::TO_SERVER, r.code, &r.detail).await;
                close_quietly(ws).await;
                return;
            }
        },
        Ok(env) => {
            let detail = format!(
                "the first frame must be USER_HELLO or PEER_HELLO_LINK, not {}",
                env.kind.chars().take(64).collect::<String>()
            );
            send_error(ws, ctx, ids::TO_USER, ErrorCode::UnknownType, &detail).await;
            close_quietly(ws).await;
            return;
        }
    };
    run(ws, conn, ctx, Box::new(input), peer, auth).await;
}

/// The acceptor's side of `mac-v1`: if we allow it and the hello asks for
/// it, a fresh secret wrapped for the peer (into our answer) and our session.
fn offer_session(
    ctx: &ConnCtx,
    hello: &Envelope,
    key: &PublicKey,
    signed: bool,
    peer: &str,
) -> (Option<MacSession>, Option<String>) {
    if !(ctx.mac && signed && offers_mac(hello)) {
        return (None, None);
    }
    match session::offer(key) {
        Ok((secret, wrapped)) => (
            Some(MacSession::new(&secret, peer, &ctx.me, false)),
            Some(wrapped),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not offer a link session; using signatures");
            (None, None)
        }
    }
}

/// Registers the connection with the hub, delivers its hello, and serves it.
///
/// The socket is split: a reader and a writer run side by side in this
/// task, so a write that cannot finish (the peer is not reading, perhaps
/// because it is itself blocked writing to us) never stops the reads. Every
/// write runs under the write timeout: a peer that takes in nothing for that
/// long is disconnected. Shutdown ends both at once.
pub(crate) async fn run<S>(
    ws: &mut WebSocketStream<S>,
    conn: ConnId,
    ctx: &ConnCtx,
    hello: Box<Input>,
    peer: Peer,
    auth: Auth,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let is_link = matches!(peer, Peer::Link { .. });
    let capacity = if is_link { LINK_SEND_QUEUE } else { SEND_QUEUE };
    let (tx, mut rx) = mpsc::channel(capacity);
    // The reader's answers to the peer's own frames (errors) go out through
    // the same queue as the hub's; it holds it weakly, so that when the hub
    // drops the queue (a slow peer) the connection still ends.
    let replies = tx.downgrade();
    if ctx.hub.send(HubEvent::Register(conn, tx)).await.is_err()
        || ctx.hub.send(HubEvent::Input(hello)).await.is_err()
    {
        return;
    }
    ctx.metrics
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut sealer, checker) = auth.split();
    let mut shutdown = ctx.shutdown.clone();
    {
        let (mut sink, mut stream) = StreamExt::split(&mut *ws);
        let reader = read_frames(&mut stream, conn, ctx, &peer, checker, replies);
        let writer = write_frames(&mut sink, conn, ctx, &mut rx, &mut sealer, is_link);
        tokio::select! {
            () = super::stop_requested(&mut shutdown) => {}
            () = reader => {}
            () = writer => {}
        }
    }
    // An error that ended the reading (an oversized frame, say) still goes
    // out, with a few frames queued before it.
    for _ in 0..LAST_WORDS {
        let Ok(ConnCmd::Frame(out)) = rx.try_recv() else {
            break;
        };
        if let Some(text) = sealer.seal(ctx, out).await
            && tokio::time::timeout(CLOSE_GRACE, ws.send(WsMessage::text(text)))
                .await
                .is_err()
        {
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
    ctx.metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let closed = match peer {
        Peer::User(_) => Input::UserClosed(conn),
        Peer::Link { .. } => Input::LinkClosed(conn),
    };
    let queue = if is_link { &ctx.hub } else { &ctx.hub_users };
    let _ = queue.send(HubEvent::Input(Box::new(closed))).await;
    let _ = ctx.hub.send(HubEvent::Unregister(conn)).await;
}

/// Frames a closing connection still sends (the error that ended it among them).
const LAST_WORDS: usize = 8;
/// How long a closing connection waits to say its last words.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The reading half of a connection: every frame the peer sends is checked
/// and handed to the hub, whatever the writer is doing. Returns when the
/// connection should close.
async fn read_frames<R>(
    stream: &mut R,
    conn: ConnId,
    ctx: &ConnCtx,
    peer: &Peer,
    mut checker: Checker,
    replies: mpsc::WeakSender<ConnCmd>,
) where
    R: futures_util::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let is_link = matches!(peer, Peer::Link { .. });
    let mut bucket = Bucket::new(ctx.limits.user_rate, ctx.limits.user_burst);
    let mut last_rate_reply: Option<Instant> = None;
    let reply = |code: ErrorCode, detail: &str, msg_id: Option<&str>| {
        let frame = ConnCmd::Frame(error_about(peer.id(), code, detail, msg_id));
        if replies.upgrade().is_none_or(|q| q.try_send(frame).is_err()) {
            tracing::debug!(
                conn,
                "send queue full or closed; an error reply was dropped"
            );
        }
    };
    loop {
        // A link's peer sends a heartbeat every 15 s: silence means it is gone.
        let frame = if is_link {
            match tokio::time::timeout(LINK_SILENCE, stream.next()).await {
                Ok(frame) => frame,
                Err(_) => {
                    tracing::warn!(conn, "link silent for 45 s; closing");
                    return;
                }
            }
        } else {
            stream.next().await
        };
        let text = match frame {
            None | Some(Ok(WsMessage::Close(_))) => return,
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Binary(_))) => {
                reply(
                    ErrorCode::BadFrame,
                    "binary frames are not SOCP; send JSON text frames",
                    None,
                );
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(WsError::Capacity(e))) => {
                tracing::warn!(conn, error = %e, "oversized frame; closing");
                reply(
                    ErrorCode::TooLarge,
                    &format!("{e}; frames are limited to 1 MiB"),
                    None,
                );
                return;
            }
            Some(Err(_)) => return,
        };
        let verdict = if is_link || bucket.take() {
            handle_frame(ctx, conn, peer, &mut checker, text.as_str()).await
        } else {
            // Still checked, so a session's sequence stays in step.
            match handle_frame_checked_only(&mut checker, text.as_str()) {
                Ok(()) => Verdict::Reply(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} frames per second; this one was dropped, slow down",
                        ctx.limits.user_rate
                    ),
                ),
                Err(()) => Verdict::Stop,
            }
        };
        match verdict {
            Verdict::Continue => {}
            Verdict::Reply(ErrorCode::RateLimited, detail) => {
                // One reply a second at most: each may cost a signature.
                ctx.metrics.refused(ErrorCode::RateLimited.as_str());
                if last_rate_reply.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1))
                {
                    last_rate_reply = Some(Instant::now());
                    reply(ErrorCode::RateLimited, &detail, None);
                }
            }
            Verdict::Reply(code, detail) => {
                ctx.metrics.refused(code.as_str());
                reply(code, &detail, None);
            }
            Verdict::Refuse(code, detail, msg_id) => {
                ctx.metrics.refused(code.as_str());
                reply(code, &detail, msg_id.as_deref());
            }
            Verdict::Stop => {
                ctx.metrics.refused("session");
                return;
            }
        }
    }
}

/// The writing half of a connection: the hub's frames (acks merged),
/// with the reader's replies among them, and a link's heartbeats, each under the
/// write timeout. Returns when the connection should close.
async fn write_frames<W>(
    sink: &mut W,
    conn: ConnId,
    ctx: &ConnCtx,
    rx: &mut mpsc::Receiver<ConnCmd>,
    sealer: &mut Sealer,
    is_link: bool,
) where
    W: futures_util::Sink<WsMessage, Error = WsError> + Unpin,
{
    let limit = ctx.limits.write_timeout;
    let write = async |sink: &mut W, text: String| -> bool {
        if text.len() > MAX_FRAME_BYTES {
            // The peer would close the connection over it (and we would
            // resend it after the redial): never put it on the wire.
            tracing::error!(
                conn,
                bytes = text.len(),
                "dropped a frame over the 1 MiB limit"
            );
            ctx.metrics.refused("oversized_out");
            return true;
        }
        match tokio::time::timeout(limit, sink.send(WsMessage::text(text))).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(conn, "the peer took in nothing for {limit:?}; closing");
                ctx.metrics
                    .write_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.tick().await;
    // Without a session every frame is RSA-signed (~1.5 ms): several are
    // signed at once, on the blocking pool, and sent in order.
    let rsa_only = sealer.session.is_none();
    let mut signing: FuturesOrdered<BoxFuture<'_, Option<String>>> = FuturesOrdered::new();
    let mut closing = false;
    loop {
        if closing && signing.is_empty() {
            return;
        }
        let mut next = None;
        let out = tokio::select! {
            // What is signed goes first (in order), then the queue.
            biased;
            Some(signed) = signing.next(), if !signing.is_empty() => {
                if let Some(text) = signed
                    && !write(sink, text).await
                {
                    return;
                }
                continue;
            },
            cmd = rx.recv(), if !closing && signing.len() < SIGNING_AHEAD => match cmd {
                Some(ConnCmd::Frame(out)) => {
                    // ACKs queued behind this one go out as one frame.
                    let (out, after) = merge_acks(out, rx);
                    next = after;
                    out
                }
                // Close once what is queued before it is sent.
                Some(ConnCmd::Close) | None => {
                    closing = true;
                    continue;
                }
            },
            _ = heartbeat.tick(), if is_link => Outgoing {
                kind: "HEARTBEAT",
                to: ids::TO_SERVER.to_owned(),
                payload: Default::default(),
            },
        };
        for cmd in [Some(ConnCmd::Frame(out)), next] {
            match cmd {
                Some(ConnCmd::Frame(out)) if rsa_only && sealer.signs(&out) => {
                    signing.push_back(seal_counted(ctx, out).boxed());
                }
                Some(ConnCmd::Frame(out)) => {
                    if let Some(text) = sealer.seal(ctx, out).await
                        && !write(sink, text).await
                    {
                        return;
                    }
                }
                Some(ConnCmd::Close) => closing = true,
                None => {}
            }
        }
    }
}

/// The largest content frame a server may relay to us: a user's frame at its
/// limit plus what hops add (`user_id`, `sender`, a group's `recipients`).
pub const MAX_RELAYED_FRAME_BYTES: usize = MAX_CONTENT_FRAME_BYTES + ENVELOPE_ROOM * 3 / 4;

/// What a frame's envelope adds around its payload at most (type, from, to,
/// ts, an RSA signature or seq and MAC).
const ENVELOPE_HEADER: usize = 1024;

/// Longest `msg_id` a node takes: a uuid is 36 characters, a derived id 71.
pub const MAX_MSG_ID_LEN: usize = 128;

/// Why a content frame's `msg_id` is refused, if it is: it must be printable
/// ASCII of at most [`MAX_MSG_ID_LEN`] characters (ids travel in every ACK
/// and receipt, many to a frame: an unbounded one could push those past the
/// frame limit).
fn bad_msg_id(id: Option<&Value>) -> Option<String> {
    match id {
        None => None,
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_MSG_ID_LEN
                && s.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            None
        }
        Some(_) => Some(format!(
            "msg_id must be printable ASCII of 1 to {MAX_MSG_ID_LEN} characters (a uuid)"
        )),
    }
}

/// Frame types that carry user content (and count against content limits).
fn is_content_kind(kind: &str) -> bool {
    matches!(
        kind,
        "MSG_PRIVATE"
            | "PEER_DELIVER"
            | "MSG_GROUP"
            | "GROUP_KEY_SHARE"
            | "FILE_START"
            | "FILE_CHUNK"
            | "FILE_END"
    )
}

/// Frames a connection without a session signs at once.
const SIGNING_AHEAD: usize = 4;

/// RSA-signs a frame from this node, counting it in the metrics.
async fn seal_counted(ctx: &ConnCtx, out: Outgoing) -> Option<String> {
    ctx.metrics.frame_out(out.kind);
    ctx.metrics
        .rsa_ops
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    seal(&ctx.key, &ctx.me, out).await
}

/// Most `msg_ids` one merged `ACK` or `RECEIPT` carries (about 40 bytes
/// each: far below the frame limit).
const MERGED_IDS: usize = 4096;

/// True if `next` can be folded into `out`: both `ACK`s, or both `RECEIPT`s
/// about the same user and status, to the same peer.
fn mergeable(out: &Outgoing, next: &Outgoing) -> bool {
    let same = |field: &str| out.payload.get(field) == next.payload.get(field);
    out.kind == next.kind
        && out.to == next.to
        && match out.kind {
            "ACK" => true,
            "RECEIPT" => same("user_id") && same("status"),
            _ => false,
        }
}

/// Folds the `ACK`s (or `RECEIPT`s) queued right behind `out` into it: one
/// frame, one signature where frames are RSA-signed. Returns the first
/// command that cannot be folded, to be handled next: only later ids move
/// ahead of other frames, and those frames keep their order.
fn merge_acks(mut out: Outgoing, rx: &mut mpsc::Receiver<ConnCmd>) -> (Outgoing, Option<ConnCmd>) {
    if !matches!(out.kind, "ACK" | "RECEIPT") {
        return (out, None);
    }
    loop {
        let room = match out.payload.get("msg_ids") {
            Some(Value::Array(ids)) => ids.len() < MERGED_IDS,
            _ => false,
        };
        if !room {
            return (out, None);
        }
        match rx.try_recv() {
            Ok(ConnCmd::Frame(mut next)) if mergeable(&out, &next) => {
                if let (Some(Value::Array(ids)), Some(Value::Array(more))) = (
                    out.payload.get_mut("msg_ids"),
                    next.payload.get_mut("msg_ids"),
                ) {
                    ids.append(more);
                }
            }
            Ok(other) => return (out, Some(other)),
            Err(_) => return (out, None),
        }
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

/// Only the authentication of a frame that is dropped anyway (rate limit).
fn handle_frame_checked_only(checker: &mut Checker, text: &str) -> Result<(), ()> {
    match Envelope::parse(text) {
        Ok(env) if env.mac.is_some() || checker.mac_in => checker.check(&env).map_err(|_| ()),
        Ok(_) => Ok(()),
        Err(_) if checker.skip_unparsed(text) => Ok(()),
        Err(_) => Err(()),
    }
}

/// What to do after a frame.
enum Verdict {
    Continue,
    Reply(ErrorCode, String),
    /// An error about a piece of content, naming its `msg_id`.
    Refuse(ErrorCode, String, Option<String>),
    Stop,
}

impl Peer {
    fn id(&self) -> &str {
        match self {
            Peer::User(u) => u,
            Peer::Link { server_id, .. } => server_id,
        }
    }
}

/// Parses and checks one frame and hands it to the router.
async fn handle_frame(
    ctx: &ConnCtx,
    conn: ConnId,
    peer: &Peer,
    auth: &mut Checker,
    text: &str,
) -> Verdict {
    let env = match Envelope::parse(text) {
        Ok(env) => env,
        // On a session, it still counts in the sequence (or ends it).
        Err(e) if auth.skip_unparsed(text) => return Verdict::Reply(e.code(), e.to_string()),
        Err(e) => {
            tracing::warn!(conn, peer = %peer.id(), error = %e.log_summary(), "closing: an unparsable frame out of sequence");
            return Verdict::Stop;
        }
    };
    ctx.metrics.frame_in(&env.kind);
    if env.mac.is_some() || auth.mac_in {
        // A session frame that fails closes the connection: something is
        // replaying, reordering or forging frames on it.
        if let Err(why) = auth.check(&env) {
            tracing::warn!(conn, peer = %peer.id(), %why, "closing: link session check failed");
            return Verdict::Stop;
        }
    } else if let Err(why) = auth.check(&env) {
        if let Peer::Link { server_id } = peer {
            tracing::warn!(conn, server = %server_id, kind = %env.kind, "dropped link frame: {why}");
            return Verdict::Continue;
        }
        return Verdict::Reply(ErrorCode::InvalidSig, why);
    }
    // Content must fit every hop after this one (PROTOCOL.md C12): what is
    // refused here was never taken, so it is never acknowledged either.
    if is_content_kind(&env.kind) {
        if let Some(why) = bad_msg_id(env.payload.get("msg_id")) {
            tracing::info!(conn, peer = %peer.id(), "refused content: {why}");
            return Verdict::Reply(ErrorCode::BadFrame, why);
        }
        let msg_id = env
            .payload
            .get("msg_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let limit = match peer {
            Peer::User(_) => MAX_CONTENT_FRAME_BYTES,
            Peer::Link { .. } => MAX_RELAYED_FRAME_BYTES,
        };
        // As the next hop will send it: canonical JSON escapes every
        // non-ASCII or control character (a DEL grows six-fold), and a hop
        // adds its own header.
        let size = text
            .len()
            .max(canonical::map_len(&env.payload) + ENVELOPE_HEADER);
        if size > limit {
            tracing::info!(conn, peer = %peer.id(), bytes = size, limit, "refused oversized content");
            return Verdict::Refuse(
                ErrorCode::TooLarge,
                format!(
                    "{} of {size} bytes (as servers pass it on) is over the {limit}-byte limit for content (1 MiB less room for what servers add on the way); it was not sent: make it smaller",
                    env.kind.chars().take(32).collect::<String>(),
                ),
                msg_id,
            );
        }
    }
    // The router works from the typed message; the payload moves into it
    // rather than being copied (the envelope keeps its header).
    let mut env = env;
    let payload = std::mem::take(&mut env.payload);
    let msg = match Message::from_payload(&env.kind, payload) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::info!(conn, kind = %env.kind.chars().take(64).collect::<String>(), error = %e.log_summary(), "refused frame");
            return Verdict::Reply(e.code(), e.to_string());
        }
    };
    let input = match peer {
        Peer::User(_) => {
            if matches!(msg, Message::UserHello(_)) {
                return Verdict::Reply(ErrorCode::BadFrame, "already said hello".into());
            }
            Input::UserFrame { conn, env, msg }
        }
        Peer::Link { server_id } => {
            if &env.from != server_id {
                tracing::warn!(conn, server = %server_id, from = %env.from.chars().take(64).collect::<String>(), "dropped link frame: from is not the linked server");
                return Verdict::Continue;
            }
            if matches!(msg, Message::Heartbeat(_)) {
                return Verdict::Continue;
            }
            Input::LinkFrame { conn, env, msg }
        }
    };
    // A user's ACK releases what the node holds: it goes with the link
    // frames, ahead of the content users bring in.
    let queue = match &input {
        Input::UserFrame { msg, .. } if !matches!(msg, Message::Ack(_)) => &ctx.hub_users,
        _ => &ctx.hub,
    };
    if queue.send(HubEvent::Input(Box::new(input))).await.is_ok() {
        Verdict::Continue
    } else {
        Verdict::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(ids: &[&str]) -> ConnCmd {
        ConnCmd::Frame(Outgoing {
            kind: "ACK",
            to: "alice".into(),
            payload: serde_json::json!({ "msg_ids": ids })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        })
    }

    #[test]
    fn queued_acks_merge_and_other_frames_keep_their_order() {
        let (tx, mut rx) = mpsc::channel(8);
        for cmd in [ack(&["b"]), ack(&["c"]), ConnCmd::Close, ack(&["d"])] {
            tx.try_send(cmd).unwrap();
        }
        let ConnCmd::Frame(first) = ack(&["a"]) else {
            unreachable!()
        };
        let (merged, next) = merge_acks(first, &mut rx);
        assert_eq!(
            merged.payload["msg_ids"],
            serde_json::json!(["a", "b", "c"])
        );
        assert!(matches!(next, Some(ConnCmd::Close)));
        // What came after the other frame waits for the next turn.
        assert!(
            matches!(rx.try_recv(), Ok(ConnCmd::Frame(o)) if o.payload["msg_ids"] == serde_json::json!(["d"]))
        );
    }

    fn receipt(user: &str, status: &str, ids: &[&str]) -> ConnCmd {
        ConnCmd::Frame(Outgoing {
            kind: "RECEIPT",
            to: "alice".into(),
            payload: serde_json::json!({ "user_id": user, "status": status, "msg_ids": ids })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        })
    }

    #[test]
    fn receipts_merge_only_for_the_same_user_and_status() {
        let (tx, mut rx) = mpsc::channel(8);
        for cmd in [
            receipt("alice", "delivered", &["b"]),
            receipt("alice", "queued", &["c"]),
        ] {
            tx.try_send(cmd).unwrap();
        }
        let ConnCmd::Frame(first) = receipt("alice", "delivered", &["a"]) else {
            unreachable!()
        };
        let (merged, next) = merge_acks(first, &mut rx);
        assert_eq!(merged.payload["msg_ids"], serde_json::json!(["a", "b"]));
        assert!(matches!(next, Some(ConnCmd::Frame(o)) if o.payload["status"] == "queued"));
    }

    #[test]
    fn other_frames_are_not_merged() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.try_send(ack(&["b"])).unwrap();
        let out = Outgoing {
            kind: "USER_DELIVER",
            to: "alice".into(),
            payload: Default::default(),
        };
        let (same, next) = merge_acks(out, &mut rx);
        assert_eq!(same.kind, "USER_DELIVER");
        assert!(next.is_none());
        assert!(rx.try_recv().is_ok(), "the ACK is still queued");
    }
}
