//! A SOCP server: the master (user directory, server identities, offline
//! mailbox) or a local (serves users, links to the master).

pub mod identity;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::{NodeArgs, RoleArg};
use crate::store::{self, Pool, Schema};
use identity::Identity;

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
}

impl NodeConfig {
    /// Validates the command line's node flags.
    pub fn from_args(args: &NodeArgs) -> Result<Self> {
        let master = args.role == RoleArg::Master;
        if !master && args.master_url.is_none() {
            bail!("a local node needs --master-url ws://HOST:PORT (the master's address)");
        }
        if master && args.master_url.is_some() {
            bail!("--master-url is for local nodes; the master is the directory itself");
        }
        Ok(NodeConfig {
            master,
            listen: args.listen_addr(),
            db: args.db_path(),
            keys: args.keys.clone(),
            master_url: args.master_url.clone(),
            peers: args.peers.clone(),
            allow_legacy_clients: args.allow_legacy_clients,
        })
    }
}

/// A running node; dropping it does not stop it, [`Node::shutdown`] does.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// State shared by every task of a node.
pub(crate) struct Shared {
    pub(crate) identity: Identity,
    pub(crate) store: Pool,
    pub(crate) config: NodeConfig,
}

impl Node {
    /// Opens the database, loads or creates the identity, binds the listener
    /// and starts serving.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let (store, identity) = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<(Pool, Identity)> {
                let store = store::open(&config.db, Schema::Node)
                    .with_context(|| format!("opening the database {}", config.db.display()))?;
                let (identity, created) = identity::load_or_create(&config.keys, config.master)
                    .with_context(|| format!("loading the identity in {}", config.keys.display()))?;
                if created {
                    tracing::info!(id = %identity.id, keys = %config.keys.display(), "created a new server identity");
                }
                Ok((store, identity))
            })
            .await
            .context("identity task")??
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let id = identity.id.clone();
        tracing::info!("node {id} listening on ws://{addr}");
        let shared = Arc::new(Shared {
            identity,
            store,
            config,
        });
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, shared, rx));
        Ok(Node {
            id,
            addr,
            shutdown,
            task,
        })
    }

    /// The URL users and servers dial.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Resolves when the node stopped by itself.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Stops accepting, closes every connection and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        tracing::info!(id = %self.id, "node stopped");
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let _ = &shared;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "connection accepted");
                    drop(stream);
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    }
}
