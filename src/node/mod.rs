//! A SOCP server: the master (user directory, server identities, offline
//! mailbox) or a local (serves users, links to the master). [`Node::start`]
//! opens the store, builds the router and starts the tasks around it: the
//! hub that owns the router, the accept loop, the dialers, the housekeeping
//! tick and the `--metrics` endpoint; [`Node::shutdown`] stops them in order.

mod accept;
mod attach;
pub(crate) mod conn;
pub(crate) mod custody;
pub(crate) mod dial;
mod endpoint;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod health;
pub(crate) mod hub;
pub mod identity;
mod lock;
pub mod metrics;
pub mod policy;
pub(crate) mod reach;
pub(crate) mod records;
pub(crate) mod router;
pub(crate) mod state;
mod timers;
mod web;

pub use hub::Status;
pub use lock::lock_path;
pub use policy::{Admission, Registration};
pub use router::MailboxLimits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::store::{self, Pool, Schema};
use conn::ConnCtx;
use hub::HubEvent;
use identity::Identity;
use metrics::Metrics;
use router::{Router, RouterConfig};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub master: bool,
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub keys: PathBuf,
    pub master_url: Option<String>,
    pub peers: Vec<String>,
    /// The URL other servers dial us at (None: from the listening address).
    pub advertise_url: Option<String>,
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
    /// Serve the browser client on the listen address (`--web on`).
    pub web: bool,
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
    /// A frame (or a fragmented message) whose first bytes arrived must be
    /// complete within this time, or the connection is closed.
    pub frame_timeout: std::time::Duration,
    /// Bytes of answers one user connection may have waiting to be written;
    /// more closes it (`conn::SendQueue`).
    pub user_queue_bytes: usize,
    /// At a local: remote users whose presence it holds, those its users
    /// addressed most recently, when the master serves presence on demand
    /// (`--presence-cache`, default [`PRESENCE_CACHE`]; 0: everyone's, as a
    /// reference local does).
    pub presence_cache: usize,
}

/// Default for `--max-conns`.
pub const MAX_CONNS: usize = 50_000;
/// Default for `--presence-cache`: a local holds the presence of at most
/// this many remote users, looked up on demand (the most it may hold).
pub const PRESENCE_CACHE: usize = 65_536;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hello_timeout: conn::HELLO_TIMEOUT,
            write_timeout: conn::WRITE_TIMEOUT,
            max_conns: MAX_CONNS,
            frame_timeout: conn::FRAME_TIMEOUT,
            user_queue_bytes: conn::USER_QUEUE_BYTES,
            user_rate: 1000.0,
            user_burst: 2000.0,
            max_conns_per_ip: 256,
            max_group_members: 1000,
            max_file_size: 1 << 30,
            presence_cache: PRESENCE_CACHE,
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
    /// Closes the doors: the accept loop, the tick and the endpoint stop.
    door: watch::Sender<bool>,
    /// Ends every connection and dialer where it stands.
    stop: watch::Sender<bool>,
    /// Becomes true when the hub's task ends.
    hub_ended: watch::Receiver<bool>,
    /// What the accept loop holds, for [`Node::serve_connected`].
    acceptor: accept::Acceptor,
    tasks: Tasks,
    /// Held while the node runs: `socp admin` commands that change the
    /// directory refuse to run beside it.
    _lock: std::fs::File,
}

/// The node's tasks, by what they do.
struct Tasks {
    hub: JoinHandle<()>,
    listener: JoinHandle<()>,
    tick: JoinHandle<()>,
    endpoint: Option<JoinHandle<()>>,
    dialers: Vec<JoinHandle<()>>,
}

/// Events queued for the hub before connections wait.
const HUB_QUEUE: usize = 4096;
/// Connections the kernel may hold for us before we accept them (it caps
/// this at `net.core.somaxconn`). Tokio's default, 1024, overflowed in a
/// login storm (10,000 users at once): dropped SYNs are retried by the
/// clients only after 1, 3, 7... s, which stretched the storm by minutes.
const ACCEPT_BACKLOG: u32 = 8192;

/// The node's listener, with an accept queue of [`ACCEPT_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
/// How long [`Node::status`] waits for the hub.
const STATUS_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits to hand the hub an event.
const HUB_SEND: Duration = Duration::from_secs(2);
/// How long the connections get to send what is queued for them (our
/// goodbyes among it) and close, before they are ended where they stand.
const GOODBYE: Duration = Duration::from_secs(2);
/// How long the tasks get to end once stopped (a connection's last
/// words); what is still running then is aborted.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the hub gets to flush the store.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// What is read from disk before the node starts.
struct Opened {
    store: Pool,
    identity: Identity,
    snapshot: state::Snapshot,
    policy: policy::PolicyState,
    lock: std::fs::File,
}

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
        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || open(&config))
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
        let open_files = conn::raise_open_files_limit();
        tracing::debug!(open_files, "open files limit");
        let listener =
            listen(config.listen).with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let Opened {
            store,
            identity: Identity { id, key },
            snapshot,
            policy,
            lock,
        } = opened;
        let key = Arc::new(key);
        let pubkey = key.public().to_b64().to_owned();
        let scheme = if acceptor.is_some() { "wss" } else { "ws" };
        let url = config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let mut router = Router::new(router_config(&config, &id, &pubkey, addr, &url), snapshot);
        router.set_policy(policy);
        if let Some(list) = admitted {
            router.set_admitted(list);
        }
        let (door, door_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let (hub_tx, hub_rx) = mpsc::channel(HUB_QUEUE);
        let (users_tx, users_rx) = mpsc::channel(HUB_QUEUE);
        let acks = hub_tx.clone();
        let committed: state::Committed = Box::new(move |outcome| {
            let _ = acks.blocking_send(HubEvent::Persisted(Box::new(outcome)));
        });
        let health = Arc::new(health::Health::new(&config.db, config.master));
        let metrics = Arc::new(Metrics::default());
        let writer = state::Writer::start(store, committed, health.clone())
            .context("starting the store writer")?;
        let (metrics_addr, endpoint) = match config.metrics {
            Some(at) => {
                let sources = endpoint::Sources {
                    metrics: metrics.clone(),
                    health: health.clone(),
                    hub: hub_tx.clone(),
                };
                let (bound, task) = endpoint::serve(at, sources, door_rx.clone())
                    .await
                    .with_context(|| format!("serving metrics on {at}"))?;
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        // Nothing fails from here on: the tasks start.
        let (hub_ended_tx, hub_ended) = watch::channel(false);
        let (dial_tx, dial_rx) = mpsc::unbounded_channel();
        let hub_task = tokio::spawn(async move {
            let _ended = Ended(hub_ended_tx);
            hub::run(router, writer, hub_rx, users_rx, dial_tx).await;
        });
        let next_conn = Arc::new(AtomicU64::new(1));
        let ctx = ConnCtx {
            me: id.clone(),
            key: key.clone(),
            hub: hub_tx.clone(),
            hub_users: users_tx,
            shutdown: stop_rx,
            mac: config.mac,
            metrics,
            limits: config.limits,
            peer_ip: None,
        };
        let acceptor = accept::Acceptor {
            ctx: ctx.clone(),
            next_conn: next_conn.clone(),
            tls: acceptor,
            web: config.web,
            slots: Default::default(),
        };
        let listener = tokio::spawn(accept::serve(listener, acceptor.clone(), door_rx.clone()));
        let tick = tokio::spawn(tick(hub_tx.clone(), config.mailbox, door_rx));
        let hello = dial::our_hello(
            &addr.ip().to_string(),
            addr.port(),
            &pubkey,
            config.master,
            config.mac,
            config.master || config.limits.presence_cache > 0,
            &url,
        );
        let mut dialers = dialers(
            &config,
            hello.clone(),
            &ctx,
            &next_conn,
            &tls_client,
            &health,
        );
        let template = dial::Dialer {
            url: String::new(),
            is_master: false,
            expect: None,
            hello,
            ctx: ctx.clone(),
            next_conn: next_conn.clone(),
            tls: tls_client.clone(),
            health: health.clone(),
        };
        let mesh_urls = std::iter::once(url.clone()).chain(config.master_url.clone());
        let announced = dial::dial_announced(dial_rx, template, mesh_urls.collect());
        dialers.push(tokio::spawn(announced));
        if scheme == "ws" && !addr.ip().is_loopback() {
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
            door,
            stop,
            hub_ended,
            acceptor,
            tasks: Tasks {
                hub: hub_task,
                listener,
                tick,
                endpoint,
                dialers,
            },
            _lock: lock,
        })
    }

    /// The URL users and servers dial.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Who is online and which servers are linked, as the router sees it
    /// (empty if the hub does not answer within 10 s).
    pub async fn status(&self) -> Status {
        hub::ask_status(&self.hub, STATUS_WAIT)
            .await
            .unwrap_or_default()
    }

    /// Resolves when the node stopped by itself: its hub (the task that
    /// owns the router) ended, which it does only if it failed.
    pub async fn stopped(&self) {
        let mut ended = self.hub_ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Stops the node in order, every step bounded: the doors close (no
    /// new connections, no housekeeping); the router tells the linked
    /// servers that our users are gone and every connection closes once
    /// what is queued for it is sent; what is still open after `GOODBYE`
    /// is ended; the store writes what it holds.
    pub async fn shutdown(self) {
        let Node {
            id,
            hub,
            door,
            stop,
            tasks,
            acceptor,
            _lock: lock,
            ..
        } = self;
        let _ = door.send(true);
        drop(acceptor);
        if !say_goodbye(&hub).await {
            tracing::warn!("connections still open after {GOODBYE:?}: ending them");
        }
        let _ = stop.send(true);
        let Tasks {
            hub: hub_task,
            listener,
            tick,
            endpoint,
            dialers,
        } = tasks;
        let others = [listener, tick].into_iter().chain(endpoint).chain(dialers);
        join_within(STOP_GRACE, others.collect()).await;
        let _ = tokio::time::timeout(HUB_SEND, hub.send(HubEvent::Stop)).await;
        if tokio::time::timeout(FLUSH_GRACE, hub_task).await.is_err() {
            tracing::error!("the store did not flush within {FLUSH_GRACE:?}");
        }
        drop(lock);
        tracing::info!(id = %id, "node stopped");
    }
}

/// Opens the database (under its lock), the identity and the state.
fn open(config: &NodeConfig) -> Result<Opened> {
    let lock = lock::lock_db(&config.db)?;
    let store = store::open(&config.db, Schema::Node)
        .with_context(|| format!("opening the database {}", config.db.display()))?;
    let (identity, created) = identity::load_or_create(&config.keys, config.master)
        .with_context(|| format!("loading the identity in {}", config.keys.display()))?;
    if created {
        tracing::info!(id = %identity.id, keys = %config.keys.display(), "created a new server identity");
    }
    let conn = store.get()?;
    let snapshot = state::load(&conn, crate::wire::now_ms())
        .with_context(|| format!("reading the state in {}", config.db.display()))?;
    let policy = policy::load(&conn)
        .with_context(|| format!("reading the policy tables in {}", config.db.display()))?;
    drop(conn);
    Ok(Opened {
        store,
        identity,
        snapshot,
        policy,
        lock,
    })
}

/// The router's fixed facts: who we are and the limits we keep.
fn router_config(
    config: &NodeConfig,
    id: &str,
    pubkey: &str,
    addr: SocketAddr,
    url: &str,
) -> RouterConfig {
    RouterConfig {
        me: id.to_owned(),
        master: config.master,
        allow_legacy: config.allow_legacy_clients,
        pubkey: pubkey.to_owned(),
        host: addr.ip().to_string(),
        port: addr.port(),
        url: url.to_owned(),
        limits: config.mailbox,
        max_group_members: config.limits.max_group_members,
        max_file_size: config.limits.max_file_size,
        admission: config.admission.clone(),
        presence_cache: config.limits.presence_cache,
    }
}

/// Starts a dialer for the master's URL and each of `--peers`.
fn dialers(
    config: &NodeConfig,
    hello: crate::wire::messages::PeerHelloLink,
    ctx: &ConnCtx,
    next_conn: &Arc<AtomicU64>,
    tls: &Arc<rustls::ClientConfig>,
    health: &Arc<health::Health>,
) -> Vec<JoinHandle<()>> {
    let urls = config
        .master_url
        .iter()
        .map(|u| (u.clone(), true))
        .chain(config.peers.iter().map(|u| (u.clone(), false)));
    urls.map(|(url, is_master)| {
        let dialer = dial::Dialer {
            url,
            is_master,
            expect: None,
            hello: hello.clone(),
            ctx: ctx.clone(),
            next_conn: next_conn.clone(),
            tls: tls.clone(),
            health: health.clone(),
        };
        tokio::spawn(dialer.run())
    })
    .collect()
}

/// Has the router say goodbye and the hub close every connection; true
/// once none is left, false if some are still open after `GOODBYE`.
async fn say_goodbye(hub: &mpsc::Sender<HubEvent>) -> bool {
    let (done, closed) = oneshot::channel();
    let asked = tokio::time::timeout(HUB_SEND, hub.send(HubEvent::Shutdown(done))).await;
    matches!(asked, Ok(Ok(()))) && matches!(tokio::time::timeout(GOODBYE, closed).await, Ok(Ok(())))
}

/// Waits for `tasks` to end, at most `limit`; aborts those still running.
async fn join_within(limit: Duration, tasks: Vec<JoinHandle<()>>) {
    let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
    let all = futures_util::future::join_all(tasks);
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::warn!("tasks still running {limit:?} after the stop: aborting them");
        for task in aborts {
            task.abort();
        }
    }
}

/// Marks the hub's task ended when dropped (a panic included).
struct Ended(watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Drives the router's housekeeping (mailbox expiry), often enough for the
/// configured age limit.
async fn tick(hub: mpsc::Sender<HubEvent>, limits: MailboxLimits, mut door: watch::Receiver<bool>) {
    let every = Duration::from_millis((limits.max_age_ms / 4).clamp(250, 60_000) as u64);
    let mut timer = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop_requested(&mut door) => return,
            _ = timer.tick() => {
                if hub.send(HubEvent::Input(Box::new(router::Input::Tick))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves once `rx` says stop (the node's stop signal, or its door).
pub(crate) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
