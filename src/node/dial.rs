//! Dialing other servers: the master (`--master-url`), `--peers`, and the
//! locals the master announces (`PEER_ANNOUNCE`, [`dial_announced`]). Each
//! URL has a loop that connects, says `PEER_HELLO_LINK`, checks the answer,
//! serves the link until it drops, and tries again with capped exponential
//! backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::conn::{self, ConnCtx, HELLO_TIMEOUT, Peer};
use super::reach::Scope;

use super::router::{DialAsk, Input, LinkHelloIn, Outgoing};

use crate::backoff::{Backoff, Retries};
use crate::crypto::session::{self, CAP_MAC_V1, MacSession};
use crate::wire::announce::{HELLO_TO, HELLO_TS};
use crate::wire::messages::{Kind, Message, PeerHelloLink, Role};
use crate::wire::{Envelope, ids};

/// First wait before redialling.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between dials.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long to wait between dials.
const REDIAL: Backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
/// How long a dialer waits for the hub to say which servers are linked.
const STATUS_WAIT: Duration = Duration::from_secs(2);
/// A link that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);

/// Most announced servers a local dials at once (a master, or servers that
/// link to it under many ids, cannot make it start dialers without end).
pub const MAX_ANNOUNCED: usize = 1024;

/// What a dialer needs.
pub(crate) struct Dialer {
    pub url: String,
    pub is_master: bool,
    /// The server id and key (base64url) the answer must come from: set
    /// for announced servers, whose address came from the master.
    pub expect: Option<(String, String)>,
    pub hello: PeerHelloLink,
    /// What the link's connection task gets.
    pub ctx: ConnCtx,
    pub next_conn: Arc<AtomicU64>,
    /// How `wss://` servers are verified (system roots and `--ca`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Told when the master link goes up and down (readiness).
    pub health: Arc<super::health::Health>,
}

/// Our `PEER_HELLO_LINK` payload, with the `url` we are dialed at.
pub(crate) fn our_hello(
    host: &str,
    port: u16,
    pubkey: &str,
    master: bool,
    mac: bool,
    lookup: bool,
    url: &str,
) -> PeerHelloLink {
    PeerHelloLink {
        host: host.to_owned(),
        port,
        pubkey: pubkey.to_owned(),
        role: if master { Role::Master } else { Role::Local },
        caps: Some(super::router::our_caps(mac, lookup)),
        session: None,
        extra: super::router::url_field(url),
    }
}

/// Our hello for one dial: `template` with the signed `ts` and, if we know
/// which server the URL leads to, its id (`to`), so the hello cannot be
/// taken again later, nor by another server (DESIGN.md "Links").
pub(crate) fn signed_hello(
    template: &PeerHelloLink,
    acceptor: Option<&str>,
    now: i64,
) -> PeerHelloLink {
    let mut hello = template.clone();
    hello.extra.insert(HELLO_TS.into(), now.into());
    if let Some(id) = acceptor {
        hello.extra.insert(HELLO_TO.into(), id.into());
    }
    hello
}

/// Starts a dialer for each server the router asks to dial (announced by
/// the master and checked), once per server id, until shutdown, and
/// retires one the master withdrew (a live link of its stays); `template`
/// gives what they share, `mesh_urls` (ours and the master's) which
/// networks announced addresses may be on ([`Scope`]). At most
/// [`MAX_ANNOUNCED`] at once: a newcomer retires the dialer that failed
/// most (the oldest among equals) rather than being refused.
pub(crate) async fn dial_announced(
    mut asks: mpsc::UnboundedReceiver<DialAsk>,
    mut template: Dialer,
    mesh_urls: Vec<String>,
) {
    let urls: Vec<&str> = mesh_urls.iter().map(String::as_str).collect();
    let scope = Arc::new(Scope::of(&urls).await);
    let mut dialing: HashMap<String, Announced> = HashMap::new();
    let mut retired: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let ask = tokio::select! {
            ask = asks.recv() => ask,
            () = super::stop_requested(&mut template.ctx.shutdown) => None,
        };
        let Some(ask) = ask else { break };
        // Dialers that gave up leave room, and may be started again by a
        // new announce (the server linked to the master again).
        dialing.retain(|_, d| !d.handle.is_finished());
        retired.retain(|h| !h.is_finished());
        let ask = match ask {
            DialAsk::Dial(ask) => ask,
            DialAsk::Stop(id) => {
                if let Some(old) = dialing.remove(&id) {
                    tracing::info!(server = %id, "stopped dialing a withdrawn server");
                    old.state.retired.store(true, Ordering::Relaxed);
                    retired.push(old.handle);
                }
                continue;
            }
        };
        if dialing.contains_key(&ask.server_id) {
            continue;
        }
        if dialing.len() >= MAX_ANNOUNCED
            && let Some(id) = evictee(&dialing)
            && let Some(old) = dialing.remove(&id)
        {
            tracing::info!(server = %id, "retired an announced server's dialer to make room");
            old.state.retired.store(true, Ordering::Relaxed);
            retired.push(old.handle);
        }
        let dialer = Dialer {
            url: ask.url,
            is_master: false,
            expect: Some((ask.server_id.clone(), ask.pubkey)),
            hello: template.hello.clone(),
            ctx: template.ctx.clone(),
            next_conn: template.next_conn.clone(),
            tls: template.tls.clone(),
            health: template.health.clone(),
        };
        let state = Arc::new(DialState::default());
        let handle = tokio::spawn(dialer.run_announced(state.clone(), scope.clone()));
        let started = Instant::now();
        dialing.insert(
            ask.server_id,
            Announced {
                handle,
                state,
                started,
            },
        );
    }
    // Each dialer ends on the stop by itself.
    let all = dialing.into_values().map(|d| d.handle).chain(retired);
    futures_util::future::join_all(all).await;
}

/// Consecutive failed dials after which an announced server is given up
/// (about 26 s of backoff): it went away, or its address leads nowhere.
/// The master announces it again when it links again.
pub const MAX_ANNOUNCED_FAILURES: u32 = 8;

/// One announced server's dialer, as `dial_announced` keeps it.
struct Announced {
    handle: tokio::task::JoinHandle<()>,
    state: Arc<DialState>,
    started: Instant,
}

/// What an announced server's dialer shares with `dial_announced`.
#[derive(Debug, Default)]
struct DialState {
    /// Failed dials in a row.
    failures: AtomicU32,
    /// Set to make room: the dialer dials no more (a live link of its
    /// stays until it drops).
    retired: AtomicBool,
}

/// The dialer to retire for room: the one that failed most in a row, the
/// oldest among equals.
fn evictee(dialing: &HashMap<String, Announced>) -> Option<String> {
    dialing
        .iter()
        .max_by_key(|(_, d)| {
            (
                d.state.failures.load(Ordering::Relaxed),
                std::cmp::Reverse(d.started),
            )
        })
        .map(|(id, _)| id.clone())
}

impl Dialer {
    /// Dials until shutdown.
    pub async fn run(self) {
        self.dial_loop(None).await
    }

    /// Dials an announced server, at addresses `scope` allows, until
    /// shutdown, [`MAX_ANNOUNCED_FAILURES`] failed dials in a row, or
    /// `state` says it is retired.
    async fn run_announced(self, state: Arc<DialState>, scope: Arc<Scope>) {
        self.dial_loop(Some((state, scope))).await
    }

    async fn dial_loop(mut self, announced: Option<(Arc<DialState>, Arc<Scope>)>) {
        let mut retries = Retries::new(REDIAL);
        // The server at this URL, once an answer named it: our hello signs
        // it (`to`), so no other server takes the hello.
        let mut acceptor = self.expect.as_ref().map(|(id, _)| id.clone());
        let state = announced.as_ref().map(|(s, _)| s.clone());
        let scope = announced.map(|(_, s)| s);
        loop {
            if *self.ctx.shutdown.borrow()
                || state
                    .as_ref()
                    .is_some_and(|s| s.retired.load(Ordering::Relaxed))
            {
                return;
            }
            // An announced server we are linked to already (it dialed us,
            // or `--peers` did): a second link would replace the first.
            if self.linked_already().await {
                if let Some(s) = &state {
                    s.failures.store(0, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF_MAX) => continue,
                    () = super::stop_requested(&mut self.ctx.shutdown) => return,
                }
            }
            let started = Instant::now();
            let outcome = self.link_once(&mut acceptor, scope.as_deref()).await;
            if started.elapsed() > STABLE {
                retries.reset();
            }
            let backoff = retries.next_delay();
            match outcome {
                Ok(()) => {
                    if let Some(s) = &state {
                        s.failures.store(0, Ordering::Relaxed);
                    }
                    tracing::info!(url = %self.url, "link closed; redialling")
                }
                Err(e) => {
                    // The URL may lead to another server now (a master
                    // reset, say): the next hello names none.
                    if self.expect.is_none() {
                        acceptor = None;
                    }
                    let failures = state
                        .as_ref()
                        .map_or(0, |s| s.failures.fetch_add(1, Ordering::Relaxed) + 1);
                    if failures >= MAX_ANNOUNCED_FAILURES {
                        tracing::warn!(url = %self.url, error = %e, failures, "giving up on an announced server until the master announces it again");
                        return;
                    }
                    tracing::warn!(url = %self.url, error = %e, "cannot link; retrying in {backoff:?}")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                () = super::stop_requested(&mut self.ctx.shutdown) => return,
            }
        }
    }

    /// True if this dialer is for an announced server that has a live link.
    async fn linked_already(&self) -> bool {
        let Some((id, _)) = &self.expect else {
            return false;
        };
        super::hub::ask_status(&self.ctx.hub, STATUS_WAIT)
            .await
            .is_some_and(|s| s.linked.contains(id))
    }

    async fn link_once(
        &mut self,
        acceptor: &mut Option<String>,
        scope: Option<&Scope>,
    ) -> anyhow::Result<()> {
        // The connect (TCP, TLS, upgrade) is timed like the hello answer: a
        // server that takes the connection and never answers would stall
        // this dialer for good.
        let connect = connect(&self.url, self.tls.clone(), scope);
        let ws = tokio::select! {
            r = tokio::time::timeout(HELLO_TIMEOUT, connect) => match r {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("no WebSocket answer within {HELLO_TIMEOUT:?}"),
            },
            () = super::stop_requested(&mut self.ctx.shutdown) => return Ok(()),
        };
        let mut ws = conn::dialed(ws);
        // An announced server's hello names it: a server that is not it
        // (a wrong or planted address) does not take it for a new link.
        let to = self
            .expect
            .as_ref()
            .map_or(ids::TO_SERVER, |(id, _)| id.as_str());
        let hello = signed_hello(&self.hello, acceptor.as_deref(), crate::wire::now_ms());
        let out = Outgoing::new(to, Message::PeerHelloLink(hello));
        let text = conn::sign(&self.ctx.key, &self.ctx.me, out)
            .await
            .ok_or_else(|| anyhow::anyhow!("cannot sign our hello"))?;
        ws.send_text(&text).await?;
        let answer = match tokio::time::timeout(HELLO_TIMEOUT, conn::next_text(&mut ws)).await {
            Ok(Some(Ok(text))) => text,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("closed before answering our hello"),
            Err(_) => anyhow::bail!("no answer to our hello within {HELLO_TIMEOUT:?}"),
        };
        let env = Envelope::parse(&answer).map_err(|e| anyhow::anyhow!(e.log_summary()))?;
        match Kind::from_name(&env.kind) {
            Some(Kind::PeerHelloLink) => {}
            Some(Kind::Error) => anyhow::bail!(
                "refused our hello: {}",
                serde_json::Value::Object(env.payload)
            ),
            _ => anyhow::bail!("answered our hello with {}", env.kind),
        }
        let (hello, key) = conn::check_link_hello(&env)
            .map_err(|r| anyhow::anyhow!("{}: {}", r.code, r.detail))?;
        if let Some((id, pubkey)) = &self.expect
            && (env.from != *id || key.to_b64() != pubkey)
        {
            anyhow::bail!("answered as {} instead of the announced {id}", env.from);
        }
        // A `socp` answer signs whom it answers: not us, not for us.
        if let Some(to) = hello.extra.get(HELLO_TO)
            && to.as_str() != Some(self.ctx.me.as_str())
        {
            anyhow::bail!("its answer names another server than us");
        }
        *acceptor = Some(env.from.clone());
        // The acceptor's mac-v1 offer, if we asked and it agreed.
        let offer = hello
            .session
            .as_ref()
            .filter(|o| self.ctx.mac && o.cap == CAP_MAC_V1)
            .map(|o| o.wrapped.clone());
        let session = match offer {
            Some(wrapped) => {
                let k = self.ctx.key.clone();
                let secret = tokio::task::spawn_blocking(move || session::accept(&k, &wrapped))
                    .await?
                    .map_err(|e| anyhow::anyhow!("the link session offer does not open: {e}"))?;
                Some(MacSession::new(&secret, &self.ctx.me, &env.from, true).prepared())
            }
            None => None,
        };
        // It answered our hello: we dialed it, it proved its key.
        let auth = conn::Auth::dialer(&key, session);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let input = Input::LinkHello(LinkHelloIn::new(
            conn_id,
            &env,
            hello,
            key,
            true,
            self.is_master,
            None,
        ));
        let ctx = self.ctx.clone();
        let peer = Peer::Link {
            server_id: env.from.clone(),
        };
        if self.is_master {
            self.health.master_linked(true);
        }
        conn::run(&mut ws, conn_id, &ctx, Box::new(input), peer, auth).await;
        if self.is_master {
            self.health.master_linked(false);
        }
        Ok(())
    }
}

/// Opens the WebSocket to `url`; with a `scope` (an announced server), only
/// to addresses it allows, resolved once and dialed as checked.
async fn connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    scope: Option<&Scope>,
) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let connector = Some(tokio_tungstenite::Connector::Rustls(tls));
    let Some(scope) = scope else {
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(conn::ws_config()),
            true,
            connector,
        )
        .await?;
        return Ok(ws);
    };
    let addrs = scope.addresses(url).await.map_err(anyhow::Error::msg)?;
    let tcp = TcpStream::connect(&addrs[..]).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        url,
        tcp,
        Some(conn::ws_config()),
        connector,
    )
    .await?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(failures: u32, started: Instant) -> Announced {
        let state = DialState::default();
        state.failures.store(failures, Ordering::Relaxed);
        Announced {
            handle: tokio::spawn(async {}),
            state: Arc::new(state),
            started,
        }
    }

    #[tokio::test]
    async fn a_full_table_retires_the_dialer_that_failed_most_then_the_oldest() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let mut dialing = HashMap::new();
        dialing.insert("linked".to_owned(), entry(0, t0));
        dialing.insert("failing".to_owned(), entry(5, later));
        dialing.insert("new".to_owned(), entry(1, later));
        assert_eq!(evictee(&dialing).as_deref(), Some("failing"));
        dialing.remove("failing");
        dialing.insert("older".to_owned(), entry(1, t0));
        assert_eq!(evictee(&dialing).as_deref(), Some("older"));
    }

    #[test]
    fn each_hello_signs_when_and_for_whom() {
        let base = our_hello("h", 1, "k", false, true, false, "ws://h:1");
        let h = signed_hello(&base, Some("server_x"), 42);
        assert_eq!(h.extra[HELLO_TS], 42);
        assert_eq!(h.extra[HELLO_TO], "server_x");
        assert!(!signed_hello(&base, None, 42).extra.contains_key(HELLO_TO));
    }
}
