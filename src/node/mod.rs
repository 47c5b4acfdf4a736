//! A SOCP server: the master (user directory, server identities, offline
//! mailbox) or a local (serves users, links to the master).

pub(crate) mod conn;
pub(crate) mod custody;
pub(crate) mod dial;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod health;
pub(crate) mod hub;
pub mod identity;
pub mod metrics;
pub mod policy;
pub(crate) mod router;
pub(crate) mod state;

pub use hub::Status;
pub use policy::{Admission, Registration};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::store::{self, Schema};
use crate::wire::ErrorCode;
use crate::wire::ids;
use conn::ConnCtx;
use hub::HubEvent;
use identity::Identity;
use metrics::Metrics;
pub use router::MailboxLimits;
use router::{Router, RouterConfig};
use std::collections::HashMap;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub master: bool,
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub keys: PathBuf,
    pub master_url: Option<String>,
    pub peers: Vec<String>,
    pub allow_legacy_clients: bool,
    /// Bounds of the master's offline mailbox.
    pub mailbox: MailboxLimits,
    /// Offer and accept `mac-v1` link sessions (`--no-mac` turns them off).
    pub mac: bool,
    /// Abuse limits.
    pub limits: Limits,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Serve `wss://` with this certificate and key.
    pub tls: Option<crate::tls::TlsFiles>,
    /// A CA to trust (besides the system's) when dialing `wss://` servers.
    pub ca: Option<PathBuf>,
    /// Which servers may link (`--admit`) and who may register.
    pub admission: Admission,
}

/// Abuse limits (PROTOCOL.md C8), each answered with a clear error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Frames per second one user connection may send (token bucket rate)…
    pub user_rate: f64,
    /// …and how many it may send at once (bucket size).
    pub user_burst: f64,
    /// Connections one IP address may hold open.
    pub max_conns_per_ip: usize,
    /// Members one group key share may name.
    pub max_group_members: usize,
    /// Largest file a transfer may announce, in bytes.
    pub max_file_size: u64,
    /// A connection that says no hello within this time is closed.
    pub hello_timeout: std::time::Duration,
    /// A write that makes no progress for this long closes the connection
    /// (a peer that stops reading cannot hold the node's memory or its
    /// shutdown).
    pub write_timeout: std::time::Duration,
    /// Connections the node holds at once, all addresses together
    /// (handshakes included).
    pub max_conns: usize,
}

/// Default for `--max-conns`.
pub const MAX_CONNS: usize = 50_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hello_timeout: conn::HELLO_TIMEOUT,
            write_timeout: conn::WRITE_TIMEOUT,
            max_conns: MAX_CONNS,
            user_rate: 1000.0,
            user_burst: 2000.0,
            max_conns_per_ip: 256,
            max_group_members: 1000,
            max_file_size: 1 << 30,
        }
    }
}

/// A running node; [`Node::shutdown`] stops it.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// Where `--metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// `ws` or `wss`.
    pub scheme: &'static str,
    hub: mpsc::Sender<HubEvent>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Held while the node runs: `socp admin` commands that change the
    /// directory refuse to run beside it.
    _lock: std::fs::File,
}

/// Events queued for the hub before connections wait.
const HUB_QUEUE: usize = 4096;

impl Node {
    /// Opens the database, loads or creates the identity, binds the listener
    /// and starts serving and dialing.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let admitted = config
            .admission
            .admit
            .as_deref()
            .map(policy::AdmitList::load)
            .transpose()?;
        if config.admission.admit.is_none() {
            tracing::warn!("no --admit file: any server that proves its key may link to this node");
        }
        let (store, identity, snapshot, policy_state, lock) = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let lock = lock_db(&config.db)?;
                let store = store::open(&config.db, Schema::Node)
                    .with_context(|| format!("opening the database {}", config.db.display()))?;
                let (identity, created) = identity::load_or_create(&config.keys, config.master)
                    .with_context(|| format!("loading the identity in {}", config.keys.display()))?;
                if created {
                    tracing::info!(id = %identity.id, keys = %config.keys.display(), "created a new server identity");
                }
                let snapshot = state::load(&*store.get()?, crate::wire::now_ms())
                    .with_context(|| format!("reading the state in {}", config.db.display()))?;
                let policy_state = policy::load(&*store.get()?).with_context(|| {
                    format!("reading the policy tables in {}", config.db.display())
                })?;
                Ok((store, identity, snapshot, policy_state, lock))
            })
            .await
            .context("startup task")??
        };
        let acceptor = config
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()
            .context("setting up TLS")?;
        let tls_client =
            crate::tls::client_config(config.ca.as_deref()).context("loading the CA to trust")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let Identity { id, key } = identity;
        let key = Arc::new(key);
        let pubkey = key.public().to_b64().to_owned();
        let mut router = Router::new(
            RouterConfig {
                me: id.clone(),
                master: config.master,
                allow_legacy: config.allow_legacy_clients,
                pubkey: pubkey.clone(),
                host: addr.ip().to_string(),
                port: addr.port(),
                limits: config.mailbox,
                max_group_members: config.limits.max_group_members,
                max_file_size: config.limits.max_file_size,
                admission: config.admission.clone(),
            },
            snapshot,
        );
        router.set_policy(policy_state);
        if let Some(list) = admitted {
            router.set_admitted(list);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (hub_tx, hub_rx) = mpsc::channel(HUB_QUEUE);
        let (users_tx, users_rx) = mpsc::channel(HUB_QUEUE);
        let acks = hub_tx.clone();
        let committed: state::Committed = Box::new(move |outcome| {
            let _ = acks.blocking_send(HubEvent::Persisted(outcome));
        });
        let health = Arc::new(health::Health::new(&config.db, config.master));
        let writer = state::Writer::start(store, committed, health.clone())
            .context("starting the store writer")?;
        let mut tasks = vec![tokio::spawn(hub::run(
            router,
            writer,
            hub_tx.clone(),
            hub_rx,
            users_rx,
        ))];
        let next_conn = Arc::new(AtomicU64::new(1));
        let metrics = Arc::new(Metrics::default());
        let base = ConnCtx {
            me: id.clone(),
            key: key.clone(),
            hub: hub_tx.clone(),
            hub_users: users_tx.clone(),
            shutdown: shutdown_rx.clone(),
            mac: config.mac,
            metrics: metrics.clone(),
            limits: config.limits,
            peer_ip: None,
        };
        let ctx = Accept {
            ctx: base.clone(),
            next_conn: next_conn.clone(),
            tls: acceptor.clone(),
        };
        tasks.push(tokio::spawn(serve(listener, ctx)));
        let metrics_addr = match config.metrics {
            Some(addr) => Some(
                metrics::serve(
                    addr,
                    metrics.clone(),
                    health.clone(),
                    hub_tx.clone(),
                    shutdown_rx.clone(),
                )
                .await
                .with_context(|| format!("serving metrics on {addr}"))?,
            ),
            None => None,
        };
        tasks.push(tokio::spawn(tick(
            hub_tx.clone(),
            config.mailbox,
            shutdown_rx.clone(),
        )));
        let hello = dial::our_hello(
            &addr.ip().to_string(),
            addr.port(),
            &pubkey,
            config.master,
            config.mac,
        );
        let urls = config
            .master_url
            .iter()
            .map(|u| (u.clone(), true))
            .chain(config.peers.iter().map(|u| (u.clone(), false)));
        for (url, is_master) in urls {
            let dialer = dial::Dialer {
                url,
                is_master,
                hello: hello.clone(),
                ctx: base.clone(),
                next_conn: next_conn.clone(),
                tls: tls_client.clone(),
                health: health.clone(),
            };
            tasks.push(tokio::spawn(dialer.run()));
        }
        let scheme = if acceptor.is_some() { "wss" } else { "ws" };
        if acceptor.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                "listening on {addr} without TLS: frames are authenticated but readable on the network; use --tls-cert and --tls-key"
            );
        }
        tracing::info!("node {id} listening on {scheme}://{addr}");
        Ok(Node {
            id,
            addr,
            scheme,
            metrics_addr,
            hub: hub_tx,
            shutdown,
            tasks,
            _lock: lock,
        })
    }

    /// The URL users and servers dial.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Who is online and which servers are linked, as the router sees it.
    pub async fn status(&self) -> Status {
        let (tx, rx) = oneshot::channel();
        if self.hub.send(HubEvent::Status(tx)).await.is_err() {
            return Status::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Resolves when the node stopped by itself.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Stops accepting and dialing, closes every connection, flushes the
    /// store and waits for the tasks.
    pub async fn shutdown(self) {
        // Peers hear that our users are gone before the connections close.
        let _ = self
            .hub
            .send(HubEvent::Input(Box::new(router::Input::Shutdown)))
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _ = self.shutdown.send(true);
        let Node {
            id,
            hub,
            mut tasks,
            _lock: lock,
            ..
        } = self;
        let hub_task = tasks.remove(0);
        for task in tasks {
            let _ = task.await;
        }
        let _ = hub.send(HubEvent::Stop).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), hub_task).await;
        drop(lock);
        tracing::info!(id = %id, "node stopped");
    }
}

/// The lock file beside a node's database (`DB.lock`).
pub fn lock_path(db: &std::path::Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock that says a node runs on `db`: one node per database, and
/// `socp admin` edits of the directory wait until it stops.
fn lock_db(db: &std::path::Path) -> Result<std::fs::File> {
    let path = lock_path(db);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the database folder {}", dir.display()))?;
    }
    let file = std::fs::File::create(&path)
        .with_context(|| format!("creating the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another socp node is running on {} (it holds {}); stop it first",
            db.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Drives the router's housekeeping (mailbox expiry), often enough for the
/// configured age limit.
async fn tick(
    hub: mpsc::Sender<HubEvent>,
    limits: MailboxLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_millis((limits.max_age_ms / 4).clamp(250, 60_000) as u64);
    let mut timer = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop_requested(&mut shutdown) => return,
            _ = timer.tick() => {
                if hub.send(HubEvent::Input(Box::new(router::Input::Tick))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves once shutdown is requested.
pub(crate) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

struct Accept {
    ctx: ConnCtx,
    next_conn: Arc<AtomicU64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Accept {
    fn conn_ctx(&self) -> ConnCtx {
        self.ctx.clone()
    }
}

/// Connections open, in all and per IP address; a slot is given back when
/// dropped.
#[derive(Clone, Default)]
struct Slots(Arc<std::sync::Mutex<SlotCounts>>);

#[derive(Default)]
struct SlotCounts {
    total: usize,
    per_ip: HashMap<std::net::IpAddr, usize>,
}

/// A connection's place in the counts: in all, and for its address unless
/// it is being refused for its address (it still counts in all while it
/// is told so, so refusals cannot pile up past `--max-conns`).
struct Slot {
    slots: Slots,
    ip: std::net::IpAddr,
    per_ip: bool,
}

/// Why a connection got no slot.
enum NoSlot {
    /// The node holds `--max-conns` connections already.
    Full,
    /// This address holds `--max-conns-per-ip` already: it is told so,
    /// holding a place in the total meanwhile.
    Address(Slot),
}

impl Slots {
    fn take(&self, ip: std::net::IpAddr, limits: &Limits) -> Result<Slot, NoSlot> {
        let Ok(mut m) = self.0.lock() else {
            return Err(NoSlot::Full);
        };
        if m.total >= limits.max_conns {
            return Err(NoSlot::Full);
        }
        m.total += 1;
        let n = m.per_ip.entry(ip).or_default();
        let per_ip = *n < limits.max_conns_per_ip;
        if per_ip {
            *n += 1;
        }
        let slot = Slot {
            slots: self.clone(),
            ip,
            per_ip,
        };
        if per_ip {
            Ok(slot)
        } else {
            Err(NoSlot::Address(slot))
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.slots.0.lock() {
            m.total = m.total.saturating_sub(1);
            if self.per_ip
                && let Some(n) = m.per_ip.get_mut(&self.ip)
            {
                *n -= 1;
                if *n == 0 {
                    m.per_ip.remove(&self.ip);
                }
            }
        }
    }
}

async fn serve(listener: TcpListener, ctx: Accept) {
    let slots = Slots::default();
    let mut shutdown = ctx.ctx.shutdown.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop_requested(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let slot = match slots.take(peer.ip(), &ctx.ctx.limits) {
                        Ok(slot) => Ok(slot),
                        Err(NoSlot::Full) => {
                            // Not even a handshake: at the cap, each refusal
                            // must cost next to nothing.
                            ctx.ctx.metrics.conns_refused_global.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "refused a connection: the node is at --max-conns");
                            drop(stream);
                            continue;
                        }
                        Err(NoSlot::Address(slot)) => Err(slot),
                    };
                    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
                    let mut conn_ctx = ctx.conn_ctx();
                    conn_ctx.peer_ip = Some(peer.ip());
                    conns.spawn(accept_one(stream, peer, slot, conn, conn_ctx, ctx.tls.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// One accepted TCP connection: the TLS and WebSocket handshakes (within
/// the hello timeout), then the connection itself, or a refusal.
async fn accept_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Result<Slot, Slot>,
    conn: router::ConnId,
    ctx: ConnCtx,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    let limit = ctx.limits.hello_timeout;
    match tls {
        Some(acceptor) => {
            // Boxed: its state is large and gone once the handshake is done.
            let handshake = Box::pin(async {
                let tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
                tokio_tungstenite::accept_async_with_config(tls, Some(conn::ws_config()))
                    .await
                    .map_err(|e| e.to_string())
            });
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(mut ws)) => serve_or_refuse(&mut ws, peer, slot, conn, &ctx).await,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS or WebSocket handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "handshake timed out"),
            }
        }
        None => {
            let handshake =
                tokio_tungstenite::accept_async_with_config(stream, Some(conn::ws_config()));
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(mut ws)) => serve_or_refuse(&mut ws, peer, slot, conn, &ctx).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
                Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
            }
        }
    }
}

async fn serve_or_refuse<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    peer: SocketAddr,
    slot: Result<Slot, Slot>,
    conn: router::ConnId,
    ctx: &ConnCtx,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match slot {
        Ok(slot) => {
            conn::serve_accepted(ws, conn, ctx).await;
            drop(slot);
        }
        Err(_refusing) => {
            tracing::warn!(%peer, "refused a connection: too many from this address");
            let detail = format!(
                "more than {} connections from your address",
                ctx.limits.max_conns_per_ip
            );
            conn::send_error(ws, ctx, ids::TO_USER, ErrorCode::RateLimited, &detail).await;
            conn::close_quietly(ws).await;
        }
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn refusals_for_an_address_still_count_in_the_total() {
        let limits = Limits {
            max_conns: 3,
            max_conns_per_ip: 1,
            ..Default::default()
        };
        let slots = Slots::default();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let first = slots.take(ip, &limits).ok().unwrap();
        let refused: Vec<Slot> = (0..2)
            .map(|_| match slots.take(ip, &limits) {
                Err(NoSlot::Address(slot)) => slot,
                _ => panic!("expected a refusal for the address"),
            })
            .collect();
        // The total is reached by the refusals being told: nothing more.
        assert!(matches!(slots.take(ip, &limits), Err(NoSlot::Full)));
        let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        assert!(matches!(slots.take(other, &limits), Err(NoSlot::Full)));
        drop(refused);
        let second = slots.take(other, &limits);
        assert!(second.is_ok(), "a slot was not given back");
        drop(first);
    }
}
