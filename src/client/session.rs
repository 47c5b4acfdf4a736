//! A user's connection to a node: connect, say a signed hello, wait to be
//! accepted, then send and receive typed frames. Every frame the session
//! sends is signed with the user's key (PROTOCOL.md B), on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::display::escape;
use crate::backoff::{Backoff, Retries};
use crate::crypto::PrivateKey;
use crate::crypto::session::{self, CAP_MAC_V1, MacSession};
use crate::wire::messages::{
    CAP_UNDECRYPTABLE, ErrorBody, Message, UserHello, UserListReq, UserWelcome,
};
use crate::wire::{Envelope, ErrorCode, MAX_FRAME_BYTES, ids, now_ms};

/// What our client calls itself in `USER_HELLO`.
pub const CLIENT_NAME: &str = concat!("socp-rs/", env!("CARGO_PKG_VERSION"));
/// How long to wait for the node to accept a hello.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a hello waits for a welcome before it asks for the user list
/// as a reference client would (a reference node welcomes no one).
pub const PROBE_AFTER: Duration = Duration::from_millis(500);
/// Waits between tries of [`Session::connect_retrying`].
pub const CONNECT_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Why a session could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("the server refused the hello: {code}: {detail}")]
    Refused { code: String, detail: String },
    #[error("the server did not accept the hello within {0:?}")]
    NoWelcome(Duration),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl SessionError {
    /// True if trying again later may succeed (the server was down or busy,
    /// or the connection dropped); false if the server said no.
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Refused { code, .. } => {
                code == ErrorCode::Timeout.as_str() || code == ErrorCode::NameInUse.as_str()
            }
            // A certificate that does not verify will not start to.
            SessionError::Connect { source, .. } if is_tls_failure(source) => false,
            SessionError::Sign(_) => false,
            _ => true,
        }
    }
}

impl SessionError {
    /// True if the node said another connection uses our name.
    pub fn is_name_in_use(&self) -> bool {
        matches!(self, SessionError::Refused { code, .. } if code == ErrorCode::NameInUse.as_str())
    }
}

/// True if connecting failed in TLS (an untrusted or mismatched certificate).
fn is_tls_failure(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Tls(_) => true,
        Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// How a session says hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStyle {
    /// Signed, with `ts` and our id: what `socp` clients send.
    Signed,
    /// Unsigned, as the reference client does (for interoperability tests).
    Legacy,
}

/// The WebSocket a session runs on.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An accepted session with a node.
pub struct Session {
    ws: Ws,
    user: String,
    key: Arc<PrivateKey>,
    style: HelloStyle,
    /// The node's id, from its welcome (or its first answer).
    pub server_id: String,
    /// A `USER_LIST` answer to our acceptance probe is still due (we asked
    /// and were welcomed before it came).
    swallow_list: bool,
    /// The `mac-v1` session, once the node's welcome offered one.
    mac: Option<MacSession>,
    /// The node sent `USER_WELCOME` (a `socp` node: it acknowledges content);
    /// false when a reference node accepted us by answering the list.
    welcomed: bool,
    /// The welcome listed [`CAP_UNDECRYPTABLE`]: the node takes our reports
    /// of content we could not decrypt.
    takes_reports: bool,
}

impl Session {
    /// Connects and says a signed hello.
    pub async fn connect(
        url: &str,
        user: &str,
        key: Arc<PrivateKey>,
    ) -> Result<Self, SessionError> {
        Self::connect_with(url, user, key, HelloStyle::Signed).await
    }

    /// Connects and says hello in the given style.
    pub async fn connect_with(
        url: &str,
        user: &str,
        key: Arc<PrivateKey>,
        style: HelloStyle,
    ) -> Result<Self, SessionError> {
        Self::connect_opts(url, user, key, style, None).await
    }

    /// Connects with `tls` deciding which `wss://` servers to trust (None:
    /// the system's roots).
    pub async fn connect_opts(
        url: &str,
        user: &str,
        key: Arc<PrivateKey>,
        style: HelloStyle,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, SessionError> {
        Self::connect_full(url, user, key, style, tls, None).await
    }

    /// Connects with a signed hello that presents an invite code (for a
    /// master that registers new users by invite).
    pub async fn connect_invited(
        url: &str,
        user: &str,
        key: Arc<PrivateKey>,
        invite: &str,
    ) -> Result<Self, SessionError> {
        let invite = Some(invite.to_owned());
        Self::connect_full(url, user, key, HelloStyle::Signed, None, invite).await
    }

    /// Connects with every option: `invite` goes into a signed hello.
    pub async fn connect_full(
        url: &str,
        user: &str,
        key: Arc<PrivateKey>,
        style: HelloStyle,
        tls: Option<Arc<rustls::ClientConfig>>,
        invite: Option<String>,
    ) -> Result<Self, SessionError> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector)
                .await
                .map_err(|source| SessionError::Connect {
                    url: url.to_owned(),
                    source,
                })?;
        let mut session = Session {
            ws,
            user: user.to_owned(),
            key,
            style,
            server_id: String::new(),
            swallow_list: false,
            mac: None,
            welcomed: false,
            takes_reports: false,
        };
        session.hello(invite).await?;
        Ok(session)
    }

    /// Connects, retrying transient failures with capped exponential backoff
    /// for at most `patience`.
    pub async fn connect_retrying(
        url: &str,
        user: &str,
        key: Arc<PrivateKey>,
        patience: Duration,
    ) -> Result<Self, SessionError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut retries = Retries::new(CONNECT_RETRY);
        loop {
            let e = match Self::connect(url, user, key.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            let wait = retries.next_delay();
            if !e.is_transient() || tokio::time::Instant::now() + wait >= deadline {
                return Err(e);
            }
            tracing::debug!(error = %e, "connect failed; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    /// Our user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// True if the node welcomed us (a `socp` node): it acknowledges the
    /// content it takes and refuses the rest with an `ERROR` naming it.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// True if the node takes `undecryptable` reports from us (its welcome
    /// said so): a node that does not would refuse them.
    pub fn takes_reports(&self) -> bool {
        self.takes_reports
    }

    /// True if every frame from the node is authenticated (a `mac-v1`
    /// session: a frame that does not verify closes the connection).
    pub fn authenticated(&self) -> bool {
        self.mac.is_some()
    }

    /// Our key.
    pub fn key(&self) -> &Arc<PrivateKey> {
        &self.key
    }

    async fn hello(&mut self, invite: Option<String>) -> Result<(), SessionError> {
        let pubkey = self.key.public().to_b64().to_owned();
        let mut hello = UserHello {
            client: CLIENT_NAME.to_owned(),
            pubkey: pubkey.clone(),
            enc_pubkey: pubkey,
            ts: None,
            caps: None,
            extra: Map::new(),
        };
        if self.style == HelloStyle::Signed {
            hello.ts = Some(now_ms());
            // `undecryptable` receipts: this client shows them as failed
            // (DESIGN.md "Undecryptable content").
            hello.caps = Some(vec![CAP_MAC_V1.to_owned(), CAP_UNDECRYPTABLE.to_owned()]);
            hello
                .extra
                .insert("user_id".into(), Value::String(self.user.clone()));
            if let Some(code) = invite {
                hello.extra.insert("invite".into(), Value::String(code));
            }
        }
        self.send_message(ids::TO_SERVER, &Message::UserHello(hello))
            .await?;
        // A `socp` node answers with a welcome (or an error). A reference
        // node sends neither: if nothing came after PROBE_AFTER we ask for
        // the user list, whose answer tells us we were accepted. We ask for
        // the count alone (limit 0, which a reference node ignores), so a
        // `socp` node that was merely slow answers in O(1).
        let deadline = tokio::time::Instant::now() + WELCOME_TIMEOUT;
        let mut probe_at = Some(tokio::time::Instant::now() + PROBE_AFTER);
        loop {
            let until = probe_at.map_or(deadline, |p| p.min(deadline));
            let Ok(next) = tokio::time::timeout_at(until, self.recv_raw()).await else {
                if probe_at.take().is_some() && tokio::time::Instant::now() < deadline {
                    let probe = UserListReq {
                        limit: Some(0),
                        ..Default::default()
                    };
                    self.send(ids::TO_SERVER, &Message::UserListReq(probe))
                        .await?;
                    self.swallow_list = true;
                    continue;
                }
                return Err(SessionError::NoWelcome(WELCOME_TIMEOUT));
            };
            let Some((env, msg)) = next? else {
                return Err(SessionError::Lost("closed during hello".into()));
            };
            match msg {
                Message::UserWelcome(w) => return self.welcome(w).await,
                Message::UserList(_) => {
                    self.swallow_list = false;
                    self.server_id = env.from;
                    return Ok(());
                }
                Message::Error(ErrorBody { code, detail, .. }) => {
                    return Err(SessionError::Refused { code, detail });
                }
                _ => continue,
            }
        }
    }

    /// The node accepted us with a welcome, and a `mac-v1` session if it
    /// offered one.
    async fn welcome(&mut self, w: UserWelcome) -> Result<(), SessionError> {
        if let Some(offer) = w.session.filter(|o| o.cap == CAP_MAC_V1) {
            let key = self.key.clone();
            let secret = tokio::task::spawn_blocking(move || session::accept(&key, &offer.wrapped))
                .await
                .map_err(|e| SessionError::Sign(e.to_string()))?
                .map_err(|e| SessionError::Lost(format!("the session offer does not open: {e}")))?;
            self.mac = Some(MacSession::new(&secret, &self.user, &w.server_id, true));
        }
        self.takes_reports = w
            .caps
            .is_some_and(|c| c.iter().any(|c| c == CAP_UNDECRYPTABLE));
        self.server_id = w.server_id;
        self.welcomed = true;
        Ok(())
    }

    /// Signs (unless legacy) and sends a frame.
    pub async fn send(&mut self, to: &str, msg: &Message) -> Result<(), SessionError> {
        self.send_message(to, msg).await
    }

    async fn send_message(&mut self, to: &str, msg: &Message) -> Result<(), SessionError> {
        self.send_authenticated(msg.into_envelope(&self.user, to))
            .await
    }

    /// Authenticates an envelope as this session does (MAC on a session,
    /// else our signature) and sends it, whatever it says (tests use this to
    /// send frames no client would).
    pub async fn send_authenticated(&mut self, mut env: Envelope) -> Result<(), SessionError> {
        if let Some(mac) = self.mac.as_mut() {
            let text = mac
                .seal_to_json(&mut env)
                .map_err(|e| SessionError::Sign(e.to_string()))?;
            return self.send_text(text).await;
        } else if self.style == HelloStyle::Signed {
            let bytes = env
                .signed_bytes()
                .map_err(|e| SessionError::Sign(e.to_string()))?;
            let key = self.key.clone();
            env.sig = tokio::task::spawn_blocking(move || key.sign_b64(&bytes))
                .await
                .map_err(|e| SessionError::Sign(e.to_string()))?
                .map_err(|e| SessionError::Sign(e.to_string()))?;
        }
        self.send_envelope(&env).await
    }

    /// Sends an envelope exactly as given (tests use this to misbehave).
    pub async fn send_envelope(&mut self, env: &Envelope) -> Result<(), SessionError> {
        self.ws
            .send(WsMessage::text(env.to_json()))
            .await
            .map_err(|e| SessionError::Lost(e.to_string()))
    }

    /// Sends raw text (tests use this to send what no client would).
    pub async fn send_text(&mut self, text: String) -> Result<(), SessionError> {
        self.ws
            .send(WsMessage::text(text))
            .await
            .map_err(|e| SessionError::Lost(e.to_string()))
    }

    /// The next frame from the node; None when the connection closed.
    /// Frames that do not parse are skipped with a log line.
    pub async fn recv(&mut self) -> Result<Option<(Envelope, Message)>, SessionError> {
        loop {
            let Some((env, msg)) = self.recv_raw().await? else {
                return Ok(None);
            };
            if self.swallow_list && matches!(msg, Message::UserList(_)) {
                self.swallow_list = false;
                continue;
            }
            return Ok(Some((env, msg)));
        }
    }

    async fn recv_raw(&mut self) -> Result<Option<(Envelope, Message)>, SessionError> {
        loop {
            let text = match self.ws.next().await {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(SessionError::Lost(e.to_string())),
            };
            let env = match Envelope::parse(text.as_str()) {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(error = %escape(&e.log_summary()), "unreadable frame from the server");
                    continue;
                }
            };
            if let Some(mac) = self.mac.as_mut() {
                mac.open(&env)
                    .map_err(|e| SessionError::Lost(format!("link session check failed: {e}")))?;
            }
            match Message::from_envelope(&env) {
                Ok(msg) => return Ok(Some((env, msg))),
                Err(e) => {
                    tracing::warn!(kind = %escape(&env.kind), error = %escape(&e.log_summary()), "unknown frame from the server")
                }
            }
        }
    }

    /// The connection and its link session, for callers that drive the
    /// socket themselves (the benchmark).
    pub fn into_parts(self) -> (Ws, Option<MacSession>, String) {
        (self.ws, self.mac, self.server_id)
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
