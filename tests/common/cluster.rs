//! A test cluster: nodes in-process, each with its own temp dir, fixture or
//! cached keys (no RSA generation per test), started on port 0 and stopped
//! on drop; and helpers to wait, with timeouts, for what a user would see.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use socp::client::Session;
use socp::crypto::{PrivateKey, PublicKey};
use socp::node::{Node, NodeConfig, Status};
use socp::wire::Envelope;
use socp::wire::ids::TO_SERVER;
use socp::wire::messages::{Message, UserLookup};
use tempfile::TempDir;

/// Every wait in a test gives up after this long.
pub const WAIT: Duration = Duration::from_secs(20);

/// A key generated once per machine and cached under the target dir, for
/// server identities (users use the fixture keys).
pub fn cached_key(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("socp-test-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pem"));
    if !path.exists() {
        let key = PrivateKey::generate().unwrap();
        // Another test binary may have won the race; then use its key.
        let _ = key.save(&path);
    }
    path
}

/// A user key: the fixture keys, by user name.
pub fn user_key(user: &str) -> Arc<PrivateKey> {
    let rel = match user.to_ascii_lowercase().as_str() {
        "alice" => "keys/alice.pem",
        "bob" => "keys/bob.pem",
        "carol" => "keys/carol.pem",
        "dave" => "reference-run/Alice.pem",
        "erin" => "reference-run/Bob.pem",
        other => panic!("no fixture key for {other}"),
    };
    Arc::new(super::fixture_key(rel))
}

static NEXT_SERVER_KEY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A node under test.
pub struct TestNode {
    pub dir: TempDir,
    pub config: NodeConfig,
    pub node: Option<Node>,
}

fn install_key(keys: &Path, role: &str) {
    std::fs::create_dir_all(keys).unwrap();
    let n = NEXT_SERVER_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 6;
    std::fs::copy(
        cached_key(&format!("server-{n}")),
        keys.join(format!("{role}.pem")),
    )
    .unwrap();
}

impl TestNode {
    /// A master with the default configuration.
    pub async fn master() -> TestNode {
        Self::start(None, |_| {}).await
    }

    /// A local of the master at `master_url`, with the default configuration.
    pub async fn local(master_url: &str) -> TestNode {
        Self::start(Some(master_url.to_owned()), |_| {}).await
    }

    /// A master after `adjust` has set what the test needs, by name:
    /// `TestNode::master_with(|c| c.allow_legacy_clients = true)`.
    pub async fn master_with(adjust: impl FnOnce(&mut NodeConfig)) -> TestNode {
        Self::start(None, adjust).await
    }

    /// A local of `master_url` after `adjust` has set what the test needs:
    /// `TestNode::local_with(&url, |c| c.peers = vec![other])`.
    pub async fn local_with(master_url: &str, adjust: impl FnOnce(&mut NodeConfig)) -> TestNode {
        Self::start(Some(master_url.to_owned()), adjust).await
    }

    /// A master (no `master_url`) or a local, configured by `adjust`.
    async fn start(master_url: Option<String>, adjust: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let master = master_url.is_none();
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        install_key(&keys, if master { "master" } else { "local" });
        let config = NodeConfig {
            master,
            listen: "127.0.0.1:0".parse().unwrap(),
            db: dir.path().join("node.sqlite"),
            keys,
            master_url,
            peers: Vec::new(),
            advertise_url: None,
            allow_legacy_clients: false,
            mailbox: Default::default(),
            mac: true,
            limits: Default::default(),
            metrics: None,
            tls: None,
            ca: None,
            admission: Default::default(),
            web: true,
        };
        let mut config = config;
        // These tests watch mesh-wide presence at every node (`wait_online`):
        // their locals hold everyone's, as with `--presence-cache 0`. The
        // default, presence on demand, has its own tests (`presence_lookup`,
        // `mesh_direct`, the router's `scenarios::lookup`) and is what the
        // tests that run `socp node` processes get.
        config.limits.presence_cache = 0;
        adjust(&mut config);
        let node = Node::start(config.clone()).await.unwrap();
        config.listen = node.addr;
        TestNode {
            dir,
            config,
            node: Some(node),
        }
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node is running")
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.config.listen)
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn id(&self) -> String {
        self.node().id.clone()
    }

    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    /// Stops and starts again with the same database, keys and address.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut tries = 0;
        loop {
            match Node::start(self.config.clone()).await {
                Ok(node) => {
                    self.node = Some(node);
                    return;
                }
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("restart: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restart failed: {e:#}"),
            }
        }
    }

    /// The node's Prometheus text (the node must run with `metrics` set).
    pub async fn metrics(&self) -> String {
        let addr = self.node().metrics_addr.expect("the node serves metrics");
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap()
    }

    /// One series of the node's `/metrics` (`name` or `name{labels}`), if
    /// it is there.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    pub async fn status(&self) -> Status {
        self.node().status().await
    }

    /// Waits until the node has `n` live links.
    pub async fn wait_linked(&self, n: usize) {
        let ok = wait_until(|| async { self.status().await.linked.len() >= n }).await;
        assert!(
            ok,
            "node {} has links {:?}, wanted {n}",
            self.id(),
            self.status().await.linked
        );
    }

    /// Waits until the node lists every one of `users` as online.
    pub async fn wait_online(&self, users: &[&str]) {
        let ok = wait_until(|| async {
            let online = self.status().await.online;
            users.iter().all(|u| online.iter().any(|o| o == u))
        })
        .await;
        assert!(
            ok,
            "node {} lists {:?}, wanted {users:?}",
            self.id(),
            self.status().await.online
        );
    }

    /// Waits until the node no longer lists `user`.
    pub async fn wait_offline(&self, user: &str) {
        let ok =
            wait_until(|| async { !self.status().await.online.iter().any(|o| o == user) }).await;
        assert!(ok, "node {} still lists {user}", self.id());
    }
}

impl Drop for TestNode {
    /// A node the test did not stop is shut down here. `drop` cannot await,
    /// so the shutdown runs as a task on the test's runtime: the node stops
    /// serving, dialing and writing while the test goes on, and the
    /// runtime's end cancels what is left. A test that needs the node gone
    /// before its next step awaits [`TestNode::stop`] instead.
    fn drop(&mut self) {
        let Some(node) = self.node.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(node.shutdown())),
            // No runtime left to run on: its end already stopped the tasks.
            Err(_) => drop(node),
        }
    }
}

/// Polls `check` until it is true or `WAIT` passes.
pub async fn wait_until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Connects `user` (fixture key) to `url`, retrying while the mesh forms.
pub async fn connect(url: &str, user: &str) -> Session {
    Session::connect_retrying(url, user, user_key(user), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect to {url}: {e}"))
}

/// The key the directory holds for `target`, asked through `session`
/// (`USER_DB_GET_USER`), as the node sent it; None: not in the directory.
pub async fn lookup_b64(session: &mut Session, target: &str) -> Option<String> {
    let q = Message::UserDbGetUser(UserLookup {
        user_id: target.into(),
        extra: Default::default(),
    });
    session.send(TO_SERVER, &q).await.unwrap();
    let (_, m) = expect(
        session,
        "USER_DB_USER",
        |_, m| matches!(m, Message::UserDbUser(a) if a.user_id == target),
    )
    .await;
    let Message::UserDbUser(a) = m else {
        unreachable!()
    };
    a.found.then_some(a.pubkey)
}

/// The key the directory holds for `target`, asked through `session`.
pub async fn lookup(session: &mut Session, target: &str) -> Option<PublicKey> {
    let b64 = lookup_b64(session, target).await?;
    Some(PublicKey::from_b64(&b64).unwrap_or_else(|e| panic!("{target}'s key: {e}")))
}

/// The key `target`'s id is pinned to, as `asker`, a client of `url`, is
/// told (None: not in the directory).
pub async fn directory_key(url: &str, asker: &str, target: &str) -> Option<String> {
    let mut s = connect(url, asker).await;
    let key = lookup_b64(&mut s, target).await;
    s.close().await;
    key
}

/// Receives until a frame matches `pred`, failing after `WAIT`.
pub async fn expect<F>(session: &mut Session, what: &str, mut pred: F) -> (Envelope, Message)
where
    F: FnMut(&Envelope, &Message) -> bool,
{
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match session.recv().await {
                Ok(Some((env, msg))) if pred(&env, &msg) => return Some((env, msg)),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    })
    .await;
    match found {
        Ok(Some(frame)) => frame,
        Ok(None) => panic!(
            "{}: connection closed while waiting for {what}",
            session.user()
        ),
        Err(_) => panic!("{}: no {what} within {WAIT:?}", session.user()),
    }
}

/// Sends `text` as a DM from this session's user to `to` (sealed for `to`'s
/// fixture key).
pub async fn send_dm(from: &mut Session, to: &str, text: &[u8]) {
    let dm = socp::content::seal_dm(
        from.key(),
        from.user(),
        to,
        user_key(to).public(),
        text,
        socp::wire::now_ms(),
    )
    .unwrap_or_else(|e| panic!("cannot seal a DM to {to}: {e}"));
    from.send(to, &Message::MsgPrivate(dm))
        .await
        .unwrap_or_else(|e| panic!("{} cannot send to {to}: {e}", from.user()));
}

/// Waits for the next DM delivered to this session and opens it with `key`.
pub async fn expect_dm(session: &mut Session, key: &PrivateKey) -> Vec<u8> {
    let (_, m) = expect(session, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    let Message::UserDeliver(d) = m else {
        unreachable!()
    };
    socp::content::open_dm(key, &d.to_private())
        .unwrap_or_else(|e| panic!("{}: a DM does not open: {e}", session.user()))
}

/// Receives every frame that arrives within `quiet`, for "nothing more came" checks.
pub async fn drain(session: &mut Session, quiet: Duration) -> Vec<(Envelope, Message)> {
    let mut got = Vec::new();
    while let Ok(Ok(Some(frame))) = tokio::time::timeout(quiet, session.recv()).await {
        got.push(frame);
    }
    got
}
