//! Dialing other servers: the master (`--master-url`), `--peers`, and the
//! locals the master announces (`PEER_ANNOUNCE`, [`dial_announced`]). Each
//! URL has a loop that connects, says `PEER_HELLO_LINK`, checks the answer,
//! serves the link until it drops, and tries again with capped exponential
//! backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::conn::{self, ConnCtx, HELLO_TIMEOUT, Peer};

use super::router::{Input, LinkHelloIn, Outgoing, PeerDial};

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

/// Most announced servers a local dials (a master cannot make it start
/// dialers without end).
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
    url: &str,
) -> PeerHelloLink {
    PeerHelloLink {
        host: host.to_owned(),
        port,
        pubkey: pubkey.to_owned(),
        role: if master { Role::Master } else { Role::Local },
        caps: Some(super::router::our_caps(mac)),
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
/// the master and checked), once per server id, until shutdown; `template`
/// gives what they share.
pub(crate) async fn dial_announced(
    mut asks: mpsc::UnboundedReceiver<PeerDial>,
    mut template: Dialer,
) {
    let mut dialing: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        std::collections::HashMap::new();
    loop {
        let ask = tokio::select! {
            ask = asks.recv() => ask,
            () = super::stop_requested(&mut template.ctx.shutdown) => None,
        };
        let Some(ask) = ask else { break };
        if dialing.contains_key(&ask.server_id) || dialing.len() >= MAX_ANNOUNCED {
            continue;
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
        dialing.insert(ask.server_id, tokio::spawn(dialer.run()));
    }
    // Each dialer ends on the stop by itself.
    futures_util::future::join_all(dialing.into_values()).await;
}

impl Dialer {
    /// Dials until shutdown.
    pub async fn run(mut self) {
        let mut retries = Retries::new(REDIAL);
        // The server at this URL, once an answer named it: our hello signs
        // it (`to`), so no other server takes the hello.
        let mut acceptor = self.expect.as_ref().map(|(id, _)| id.clone());
        loop {
            if *self.ctx.shutdown.borrow() {
                return;
            }
            // An announced server we are linked to already (it dialed us,
            // or `--peers` did): a second link would replace the first.
            if self.linked_already().await {
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF_MAX) => continue,
                    () = super::stop_requested(&mut self.ctx.shutdown) => return,
                }
            }
            let started = Instant::now();
            let outcome = self.link_once(&mut acceptor).await;
            if started.elapsed() > STABLE {
                retries.reset();
            }
            let backoff = retries.next_delay();
            match outcome {
                Ok(()) => tracing::info!(url = %self.url, "link closed; redialling"),
                Err(e) => {
                    // The URL may lead to another server now (a master
                    // reset, say): the next hello names none.
                    if self.expect.is_none() {
                        acceptor = None;
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

    async fn link_once(&mut self, acceptor: &mut Option<String>) -> anyhow::Result<()> {
        // The connect (TCP, TLS, upgrade) is timed like the hello answer: a
        // server that takes the connection and never answers would stall
        // this dialer for good.
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            &self.url,
            Some(conn::ws_config()),
            true,
            Some(tokio_tungstenite::Connector::Rustls(self.tls.clone())),
        );
        let (ws, _) = tokio::select! {
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
                Some(MacSession::new(&secret, &self.ctx.me, &env.from, true))
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
