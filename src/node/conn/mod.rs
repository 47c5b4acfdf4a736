//! One connection (a user session or a server link) as an actor. It checks
//! the hello (`hello.rs`), registers its bounded queue with the hub, then
//! runs a reader (`reader.rs`: authentication, content limits, typing) and
//! a writer (`writer.rs`: signing or MACs, heartbeats, the write timeout)
//! side by side until either ends or the node shuts down. Its queue is
//! `queue.rs` (bounded in frames, and a user's in bytes). How frames are
//! authenticated each way is `auth.rs`; RSA work runs on the blocking pool,
//! never on the reactor.

mod auth;
mod hello;
mod limits;
mod queue;
mod reader;
mod writer;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::Limits;
use super::hub::{ConnCmd, HubEvent};
use super::metrics::Metrics;
use super::router::{ConnId, Input, Outgoing};
use crate::crypto::PrivateKey;
use crate::wire::messages::{ErrorBody, Message};
use crate::wire::{ErrorCode, MAX_FRAME_BYTES, ids};

pub(crate) use auth::Auth;
pub(crate) use hello::check_link_hello;
pub use queue::USER_QUEUE_BYTES;
#[cfg(test)]
pub(crate) use queue::queue as send_queue;
pub(crate) use queue::{QueueRx, SendQueue};
pub(crate) use writer::sign;
pub use ws::FRAME_TIMEOUT;
#[cfg(test)]
pub(crate) use ws::Role;
pub(crate) use ws::{WsConn, WsError};

/// A connection must say hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one connection before it counts as too slow.
pub const SEND_QUEUE: usize = 1024;
/// The same for a server link: more than its custody window
/// (`custody::LINK_WINDOW`) plus the acks, receipts and presence it carries.
pub const LINK_SEND_QUEUE: usize = 8192;
/// A link owed more than it was sent (`router/owed.rs`) is sent its next
/// chunk once its queue is down to this many frames other than content.
pub const LINK_LOW_WATER: usize = LINK_SEND_QUEUE / 4;
/// How often a link sends `HEARTBEAT`.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// A link silent this long is closed (and redialled by its dialer).
pub const LINK_SILENCE: Duration = Duration::from_secs(45);
/// Default write timeout (`--write-timeout-secs`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Frames a closing connection still sends (the error that ended it among them).
const LAST_WORDS: usize = 8;
/// How long a closing connection waits to say its last words.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Size of tungstenite's buffers during a handshake (freed once it is done).
const WS_BUFFER: usize = 4096;
/// Pings a peer may send before its hello (each answered at once, outside
/// any rate); more closes the connection.
const PINGS_BEFORE_HELLO: usize = 16;

/// WebSocket settings for the handshakes (PROTOCOL.md C8); the frames after
/// them are `ws.rs`, held to [`MAX_FRAME_BYTES`].
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .max_write_buffer_size(4 * MAX_FRAME_BYTES)
}

/// The server's WebSocket handshake on an accepted stream (TLS already
/// done), then the connection's frames.
pub(crate) async fn accept_ws<S>(
    stream: S,
) -> Result<WsConn<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed: the handshake's state is gone once it is done, where inline it
    // would size every connection's task for good.
    let handshake =
        tokio_tungstenite::accept_async_with_config(ws::Recorder::new(stream), Some(ws_config()));
    let ws = Box::pin(handshake).await?;
    Ok(WsConn::accepted(ws, MAX_FRAME_BYTES))
}

/// A link we dialed, once tungstenite's client handshake is done. Nothing
/// can be buffered past the handshake: a node speaks only after our hello,
/// which is not sent yet.
pub(crate) fn dialed<S>(ws: WebSocketStream<S>) -> WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WsConn::new(
        ws.into_inner(),
        Vec::new(),
        ws::Role::Client,
        MAX_FRAME_BYTES,
    )
}

/// Raises this process's soft limit on open files to its hard limit: each
/// connection is a file descriptor, and the common default (1,024) would
/// refuse users long before memory runs out. Returns the limit now in force.
pub(crate) fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// What every connection task shares.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub me: String,
    pub key: Arc<PrivateKey>,
    pub hub: mpsc::Sender<HubEvent>,
    /// Where the frames users bring in go: the hub serves its main queue
    /// first (see [`Input::is_urgent`]), so a flood from users cannot starve
    /// the acks that keep links flowing.
    pub hub_users: mpsc::Sender<HubEvent>,
    pub shutdown: watch::Receiver<bool>,
    /// Offer `mac-v1` link sessions (off with `--no-mac`).
    pub mac: bool,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The peer's address as the per-address limits count it (an IPv6
    /// address by its /64: `accept::address_key`), on an accepted connection.
    pub peer_ip: Option<std::net::IpAddr>,
}

impl ConnCtx {
    /// A context whose hub takes nothing, for tests of a connection's state.
    #[cfg(test)]
    pub(crate) fn for_tests() -> ConnCtx {
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors/keys");
        let key = Arc::new(PrivateKey::load(&keys.join("alice.pem")).unwrap());
        let (hub, _) = mpsc::channel(1);
        let (hub_users, _) = mpsc::channel(1);
        let (_, shutdown) = watch::channel(false);
        ConnCtx {
            me: "server_x".into(),
            key,
            hub,
            hub_users,
            shutdown,
            mac: true,
            metrics: Arc::default(),
            limits: Limits::default(),
            peer_ip: None,
        }
    }

    /// Hands the router an input, on the hub queue its urgency says.
    async fn to_hub(&self, input: Input) -> bool {
        let queue = if input.is_urgent() {
            &self.hub
        } else {
            &self.hub_users
        };
        queue.send(HubEvent::Input(Box::new(input))).await.is_ok()
    }
}

/// The kind of peer on a connection, once its hello is accepted.
pub(crate) enum Peer {
    User(String),
    Link { server_id: String },
}

impl Peer {
    fn id(&self) -> &str {
        match self {
            Peer::User(u) => u,
            Peer::Link { server_id } => server_id,
        }
    }

    fn is_link(&self) -> bool {
        matches!(self, Peer::Link { .. })
    }
}

/// Reads the next text frame, answering pings; None at end of stream.
pub(crate) async fn next_text<S>(ws: &mut WsConn<S>) -> Option<Result<String, WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = 0;
    loop {
        match ws.next().await? {
            Ok(ws::Incoming::Text(t)) => return Some(Ok(t)),
            Ok(ws::Incoming::Close) => return None,
            Ok(ws::Incoming::Pong) => {}
            Ok(ws::Incoming::Binary) => {
                return Some(Err(WsError::Protocol(
                    "binary frames are not SOCP; send JSON text frames",
                )));
            }
            Ok(ws::Incoming::Ping(p)) => {
                pings += 1;
                if pings > PINGS_BEFORE_HELLO {
                    return Some(Err(WsError::Protocol("too many pings before the hello")));
                }
                // A pong cut off by the timeout would leave half a frame on
                // the wire: the connection ends there.
                let pong = tokio::time::timeout(CLOSE_GRACE, ws.pong(&p)).await;
                match pong {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(_) => return Some(Err(WsError::Io(std::io::ErrorKind::TimedOut.into()))),
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Sends an `ERROR` frame straight from a connection, before the peer has
/// authenticated (and before the hub knows it). Unsigned: a node does no
/// private-key work for a peer that has proved nothing (PROTOCOL.md C14),
/// so refusing garbage costs next to nothing. Under the write timeout.
pub(crate) async fn send_error<S>(
    ws: &mut WsConn<S>,
    ctx: &ConnCtx,
    to: &str,
    code: ErrorCode,
    detail: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.metrics.refused(code.as_str());
    let out = Outgoing::new(to, Message::Error(ErrorBody::new(code, detail)));
    ctx.metrics.frame_out(out.type_name());
    let text = out.into_envelope(&ctx.me).to_json();
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.send_text(&text)).await;
}

/// Closes a connection, waiting at most a moment for the peer.
pub(crate) async fn close_quietly<S>(ws: &mut WsConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close()).await;
}

/// Runs an accepted connection until it closes: reads the hello, hands it
/// to the router, then serves frames both ways.
/// Takes the stream and context by reference: the caller's task owns them
/// once, where moving them in would store them twice in the task (async fn
/// arguments are kept beside their moved copies); an idle connection is
/// mostly this task.
pub(crate) async fn serve_accepted<S>(ws: &mut WsConn<S>, conn: ConnId, ctx: &ConnCtx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the hello's wait, its text and its check are gone once it is
    // accepted, where inline they would size the connection's task for its
    // whole life (about 1 KiB of an idle connection; see DESIGN.md, "Memory
    // per idle connection").
    ws.set_frame_timeout(ctx.limits.frame_timeout);
    let Some((input, peer, auth)) = Box::pin(first_frame(ws, conn, ctx)).await else {
        return;
    };
    run(ws, conn, ctx, input, peer, auth).await;
}

/// Reads and checks the hello; None if the connection was refused (and
/// told why) or ended. (Not a boxed `Accepted`: a box moved out of keeps
/// its allocation until it goes out of scope, here the connection's life.)
async fn first_frame<S>(
    ws: &mut WsConn<S>,
    conn: ConnId,
    ctx: &ConnCtx,
) -> Option<(Box<Input>, Peer, Auth)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = match tokio::time::timeout(ctx.limits.hello_timeout, next_text(ws)).await {
        Ok(Some(Ok(text))) => text,
        Ok(Some(Err(e @ WsError::TooLarge { .. }))) => {
            refuse(ws, ctx, ids::TO_USER, ErrorCode::TooLarge, &e.to_string()).await;
            return None;
        }
        // The close says what was wrong (RFC 6455 7.4.1).
        Ok(Some(Err(WsError::Io(_)))) | Ok(None) => return None,
        Ok(Some(Err(_))) => {
            close_quietly(ws).await;
            return None;
        }
        Err(_) => {
            let detail = "no hello within 10 s";
            refuse(ws, ctx, ids::TO_USER, ErrorCode::Timeout, detail).await;
            return None;
        }
    };
    let accepted = hello::accept_first(ctx, conn, &first);
    // The hello's text (a few KiB) must not outlive the hello.
    drop(first);
    match accepted {
        Ok(a) => Some((Box::new(a.input), a.peer, a.auth)),
        Err((to, r)) => {
            refuse(ws, ctx, to, r.code, &r.detail).await;
            None
        }
    }
}

/// Answers a refused hello with an error, and closes.
async fn refuse<S>(ws: &mut WsConn<S>, ctx: &ConnCtx, to: &str, code: ErrorCode, detail: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_error(ws, ctx, to, code, detail).await;
    close_quietly(ws).await;
}

/// Registers the connection with the hub, delivers its hello, and serves it.
///
/// The socket is split: a reader and a writer run side by side in this
/// task, so a write that cannot finish (the peer is not reading, perhaps
/// because it is itself blocked writing to us) never stops the reads. Every
/// write runs under the write timeout: a peer that takes in nothing for that
/// long is disconnected. Shutdown ends both at once.
pub(crate) async fn run<S>(
    ws: &mut WsConn<S>,
    conn: ConnId,
    ctx: &ConnCtx,
    hello: Box<Input>,
    peer: Peer,
    auth: Auth,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ws.set_frame_timeout(ctx.limits.frame_timeout);
    let (tx, mut rx) = if peer.is_link() {
        queue::queue(LINK_SEND_QUEUE, Some(queue::LINK_QUEUE_BYTES))
    } else {
        queue::queue(SEND_QUEUE, Some(ctx.limits.user_queue_bytes))
    };
    // The reader's answers to the peer's own frames (errors) go out through
    // the same queue as the hub's; it holds it weakly, so that when the hub
    // drops the queue (a slow peer) the connection still ends.
    let replies = tx.downgrade();
    // The hello goes on the queue its registration went on: before any
    // frame of the connection.
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
        let (mut stream, mut sink) = ws.split();
        let reader = reader::read_frames(&mut stream, conn, ctx, &peer, checker, replies);
        let writer =
            writer::write_frames(&mut sink, conn, ctx, &mut rx, &mut sealer, peer.is_link());
        tokio::select! {
            () = super::stop_requested(&mut shutdown) => {}
            () = reader => {}
            () = writer => {}
        }
    }
    say_last_words(ws, ctx, &mut rx, &mut sealer).await;
    ctx.metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let closed = match peer {
        Peer::User(_) => Input::UserClosed(conn),
        Peer::Link { .. } => Input::LinkClosed(conn),
    };
    ctx.to_hub(closed).await;
    let _ = ctx.hub.send(HubEvent::Unregister(conn)).await;
}

/// An error that ended the reading (an oversized frame, say) still goes
/// out, with a few frames queued before it; then the close. A user whose
/// answers piled up past its byte budget is told so, and what is queued
/// is dropped (custody sends its content again).
async fn say_last_words<S>(
    ws: &mut WsConn<S>,
    ctx: &ConnCtx,
    rx: &mut QueueRx,
    sealer: &mut auth::Sealer,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let (true, Some(max)) = (rx.overflowed(), rx.max_bytes()) {
        ctx.metrics.refused(ErrorCode::QuotaExceeded.as_str());
        let detail = format!(
            "closing: more than {max} bytes of answers were waiting for this connection to read them; read faster or ask for less (messages for you are sent again when you reconnect)"
        );
        let error = ErrorBody::new(ErrorCode::QuotaExceeded, &detail);
        let out = Outgoing::new(ids::TO_USER, Message::Error(error));
        if let Some(text) = writer::seal(ctx, sealer, out).await {
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.send_text(&text)).await;
        }
        return close_quietly(ws).await;
    }
    for _ in 0..LAST_WORDS {
        let Ok(ConnCmd::Frame(out)) = rx.try_recv() else {
            break;
        };
        if let Some(text) = writer::seal(ctx, sealer, *out).await
            && tokio::time::timeout(CLOSE_GRACE, ws.send_text(&text))
                .await
                .is_err()
        {
            break;
        }
    }
    close_quietly(ws).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection's task holds, printed so that it can be
    /// watched (`cargo test --lib conn::tests -- --nocapture`); bounded so
    /// that a change that inlines a large state again is noticed.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let ctx = ConnCtx::for_tests();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_client, (stream, _)) = (client.unwrap(), accepted.unwrap());
        let mut ws = WsConn::new(stream, Vec::new(), ws::Role::Server, MAX_FRAME_BYTES);
        let serve = serve_accepted(&mut ws, 1, &ctx);
        let task = std::mem::size_of_val(&serve);
        drop(serve);
        let conn = std::mem::size_of_val(&ws);
        let accept = std::mem::size_of_val(&accept_ws(tokio::io::empty()));
        println!("serve_accepted future {task} B, WsConn {conn} B, accept_ws future {accept} B");
        // Unoptimized builds lay futures out loosely; release ones are smaller.
        assert!(task < 8 * 1024, "the connection task is {task} bytes");
    }
}
