//! A deterministic mesh of routers for scenario tests (`scenarios/`):
//! several [`Router`]s wired by in-memory links, users attached as fake
//! connections, one clock. The simulator does the hub's jobs as a running
//! node would (`hub.rs`): a frame sent on a link reaches the peer as the
//! input its connection would hand its router (the hello exchange of
//! `dial.rs` and `conn.rs`, then checked frames, `net.rs`); rows are applied
//! to an in-memory store (`disk.rs`) and then the acknowledgements waiting
//! for them are sent; timers fire when the clock passes them; a close ends
//! a connection after what was queued on it. The test decides the rest
//! (`control.rs`): it holds, drops, reorders and forges frames, cuts and
//! heals links, fails disks, restarts nodes and moves the clock. Users
//! (`client.rs`) act and report what they saw:
//!
//! ```text
//! let mut mesh = Mesh::new(seed).master("M").local("A").local("B")
//!     .link("A", "M").link("B", "M");
//! mesh.user("alice", "A");
//! mesh.user("bob", "B");
//! mesh.dm("alice", "bob", "hi");
//! mesh.run();
//! assert_eq!(mesh.delivered("bob"), ["alice: hi"]);
//! ```
//!
//! Modelled on toydb's cluster tests and quinn's `Pair::drive`: [`Mesh::run`]
//! delivers frames until none is in flight (the clock jumps to each
//! arrival), [`Mesh::advance`] lets time pass (timers, ticks, redials).
//! The simulator's own choices (request ids, latencies) come from the seed.
//! Only `adapt.rs` touches the router's frame and custody types.
//!
//! Not modelled: signatures and MACs on links (frames from an honest router
//! always verify; `conn.rs` checks them), the store's hold (rows are
//! committed at once, one schedule a node may take), and the order of the
//! router's own hash maps (frames for different connections may be emitted
//! in another order from one run to the next; those on one connection keep
//! theirs, and scenarios assert on what that cannot change).

mod adapt;
mod client;
mod control;
mod disk;
mod hub;
mod net;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

pub(crate) use self::adapt::{kind_of, payload_of, to_of};
use self::disk::Disk;
use super::req_ids::{ReqIds, SplitMix};
use super::{ConnId, Input, MailboxLimits, Router, RouterConfig, UserHelloIn, canonical};
use crate::crypto::PrivateKey;
use crate::node::policy::{AdmitEntry, AdmitList};
use crate::wire::messages::{ErrorBody, Kind, Message, Proof};
use crate::wire::{Envelope, ErrorCode};

/// The clock's start (Unix ms): hellos carry real-looking times.
const EPOCH_MS: i64 = 1_700_000_000_000;
/// How long a frame takes on a link, before any jitter.
const LINK_LATENCY_MS: i64 = 1;
/// Events one `run` or `advance` may take before the mesh is said to spin.
const MAX_EVENTS: usize = 200_000;

/// The shared test vectors: `../shared/vectors` beside the repository, or
/// `SOCP_VECTORS`.
pub(crate) fn vectors() -> std::path::PathBuf {
    std::env::var_os("SOCP_VECTORS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"),
        std::path::PathBuf::from,
    )
}

/// A fixture key by user name (from the vectors), loaded once.
pub(crate) fn key(name: &str) -> &'static PrivateKey {
    static KEYS: OnceLock<BTreeMap<&'static str, PrivateKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let dir = vectors();
        [
            ("alice", "keys/alice.pem"),
            ("bob", "keys/bob.pem"),
            ("carol", "keys/carol.pem"),
            ("dave", "reference-run/Alice.pem"),
            ("erin", "reference-run/Bob.pem"),
        ]
        .into_iter()
        .map(|(name, file)| (name, PrivateKey::load(&dir.join(file)).unwrap()))
        .collect()
    });
    keys.get(name)
        .unwrap_or_else(|| panic!("no fixture key for {name}: use alice, bob, carol, dave or erin"))
}

/// The fixture key a simulated server runs with, by its public key.
fn server_key(pubkey: &str) -> &'static PrivateKey {
    ["carol", "dave", "erin", "alice", "bob"]
        .into_iter()
        .map(key)
        .find(|k| k.public().to_b64() == pubkey)
        .unwrap_or_else(|| panic!("no fixture key for a simulated server"))
}

/// A user's signed hello on `conn` at `now`, as a connection hands it on
/// once checked (the signature is real: the master checks it as proof). It
/// lists the capabilities a `socp` client lists.
pub(crate) fn signed_hello(conn: ConnId, user: &str, k: &PrivateKey, now: i64) -> Input {
    let caps = [crate::wire::messages::CAP_UNDECRYPTABLE];
    signed_hello_with(conn, user, k, now, &caps)
}

/// A signed hello listing `caps` (none: an older client).
pub(crate) fn signed_hello_with(
    conn: ConnId,
    user: &str,
    k: &PrivateKey,
    now: i64,
    caps: &[&str],
) -> Input {
    let Value::Object(payload) = json!({"client": "sim", "pubkey": k.public().to_b64(),
            "enc_pubkey": k.public().to_b64(), "ts": now, "user_id": user, "caps": caps})
    else {
        unreachable!()
    };
    let sig = k
        .sign_b64(canonical::map_to_string(&payload).unwrap().as_bytes())
        .unwrap();
    Input::UserHello(UserHelloIn {
        conn,
        user_id: user.into(),
        key: k.public().clone(),
        proof: Some(Proof {
            payload,
            sig,
            extra: Map::new(),
        }),
        session: None,
        addr: None,
    })
}

/// The kind an envelope `type` names. Frames in a simulated mesh come from
/// routers or from the test, all of known types: any other is a failure.
pub(crate) fn kind_named(name: &str) -> Kind {
    Kind::from_name(name).unwrap_or_else(|| panic!("a frame of unknown type {name:?}"))
}

/// An `ERROR` payload, parsed (anything else is a failure).
pub(crate) fn error_body(payload: Map<String, Value>) -> ErrorBody {
    match Message::from_payload(Kind::Error.name(), payload) {
        Ok(Message::Error(body)) => body,
        other => panic!("not an ERROR payload: {other:?}"),
    }
}

/// The code of an `ERROR`. Routers only send codes `socp` knows: any other
/// is a failure.
pub(crate) fn code_of(body: &ErrorBody) -> ErrorCode {
    body.error_code()
        .unwrap_or_else(|| panic!("an ERROR with an unknown code {:?}", body.code))
}

/// A stable server id for a node name (`server_<uuid4>`, or the master's).
fn server_id(name: &str, master: bool) -> String {
    let mut rng = SplitMix(name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let prefix = if master {
        crate::wire::ids::MASTER_PREFIX
    } else {
        crate::wire::ids::SERVER_PREFIX
    };
    format!("{prefix}{uuid}")
}

/// What a connection of a node leads to.
#[derive(Debug, Clone, PartialEq)]
enum Peer {
    User(String),
    /// A link, by its index in `Mesh::wires`.
    Wire(usize),
}

/// One node: its router, its rows and its connections.
struct SimNode {
    id: String,
    cfg: RouterConfig,
    router: Router,
    disk: Disk,
    conns: BTreeMap<ConnId, Peer>,
    next_conn: ConnId,
    /// Bumped at each start: timers of an earlier run are void.
    incarnation: u64,
    /// Stopped: what its router would do is lost.
    down: bool,
    /// The `--admit` list, as server ids.
    admitted: Option<Vec<String>>,
    /// Its store fails every write.
    failing: bool,
}

/// Something scheduled at a time.
#[derive(Debug, Clone)]
enum Timer {
    Timeout {
        node: String,
        incarnation: u64,
        req_id: String,
    },
    Tick {
        node: String,
        incarnation: u64,
    },
    Redial(usize),
}

/// A mesh under test. Build it with [`Mesh::new`], then `master`, `local`
/// and `link`; drive it with users (`client.rs`) and the test's controls
/// (`control.rs`).
pub(crate) struct Mesh {
    seed: u64,
    now: i64,
    rng: SplitMix,
    /// Extra latency of each link frame, drawn from 0 to this (ms).
    jitter: i64,
    nodes: BTreeMap<String, SimNode>,
    wires: Vec<net::Wire>,
    users: BTreeMap<String, client::SimUser>,
    chans: BTreeMap<net::Chan, net::Channel>,
    timers: BTreeMap<(i64, u64), Timer>,
    /// Orders everything scheduled at the same time.
    seq: u64,
    /// Frames routers received on links: (from node, to node, envelope).
    carried: Vec<(String, String, Envelope)>,
    /// Print every frame as it arrives (`SOCP_SIM_TRACE=1`).
    trace: bool,
    /// Locals dial the servers their master announces (off: only the
    /// links the test declares).
    discover: bool,
}

impl Mesh {
    /// An empty mesh whose choices all come from `seed`.
    pub fn new(seed: u64) -> Self {
        Mesh {
            seed,
            now: EPOCH_MS,
            rng: SplitMix(seed),
            jitter: 0,
            nodes: BTreeMap::new(),
            wires: Vec::new(),
            users: BTreeMap::new(),
            chans: BTreeMap::new(),
            timers: BTreeMap::new(),
            seq: 0,
            carried: Vec::new(),
            trace: std::env::var_os("SOCP_SIM_TRACE").is_some(),
            discover: false,
        }
    }

    /// Locals dial the servers their master announces, as nodes do.
    pub fn discover(mut self) -> Self {
        self.discover = true;
        self
    }

    /// Each link frame takes up to `ms` more, at random (links stay in order).
    pub fn jitter(mut self, ms: i64) -> Self {
        self.jitter = ms;
        self
    }

    /// Adds the master.
    pub fn master(self, name: &str) -> Self {
        self.node(name, true, |_| {})
    }

    /// Adds a local server.
    pub fn local(self, name: &str) -> Self {
        self.node(name, false, |_| {})
    }

    /// Adds a node whose configuration `tweak` changes first.
    pub fn node(mut self, name: &str, master: bool, tweak: impl FnOnce(&mut RouterConfig)) -> Self {
        const SERVER_KEYS: [&str; 5] = ["carol", "dave", "erin", "alice", "bob"];
        let k = key(SERVER_KEYS[self.nodes.len() % SERVER_KEYS.len()]);
        let id = server_id(name, master);
        let mut cfg = RouterConfig {
            me: id.clone(),
            master,
            allow_legacy: false,
            pubkey: k.public().to_b64().to_owned(),
            host: "sim".into(),
            port: 7000 + self.nodes.len() as u16,
            url: format!("ws://sim:{}", 7000 + self.nodes.len()),
            limits: MailboxLimits::default(),
            max_group_members: 1000,
            max_file_size: 1 << 30,
            admission: Default::default(),
            presence_cache: 0,
        };
        tweak(&mut cfg);
        let router = Router::new(cfg.clone(), Default::default());
        self.nodes.insert(
            name.to_owned(),
            SimNode {
                id,
                cfg,
                router,
                disk: Disk::default(),
                conns: BTreeMap::new(),
                next_conn: 0,
                incarnation: 0,
                down: true,
                admitted: None,
                failing: false,
            },
        );
        self.boot(name);
        self
    }

    /// The master admits only the servers named (`--admit`, by id).
    pub fn admit(mut self, node: &str, servers: &[&str]) -> Self {
        let ids = servers.iter().map(|s| self.id(s)).collect();
        self.node_mut(node).admitted = Some(ids);
        self.apply_admitted(node);
        self
    }

    /// `dialer` links to `acceptor` (as its master if it is one), and the
    /// hellos are exchanged.
    pub fn link(mut self, dialer: &str, acceptor: &str) -> Self {
        self.add_link(dialer, acceptor);
        self.run();
        self
    }

    /// The server id of a node.
    pub fn id(&self, node: &str) -> String {
        self.node_ref(node).id.clone()
    }

    fn node_ref(&self, name: &str) -> &SimNode {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut SimNode {
        self.nodes
            .get_mut(name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The router of a node, to ask it what it holds.
    pub fn router(&self, node: &str) -> &Router {
        &self.node_ref(node).router
    }

    /// Users online anywhere, as `node` sees the mesh.
    pub fn online(&self, node: &str) -> Vec<String> {
        self.router(node).online()
    }

    /// Frames in custody at `node` (its mailbox included).
    pub fn custody(&self, node: &str) -> usize {
        self.router(node).custody_stats().0
    }

    /// Frames waiting in the master's mailbox for users online nowhere.
    pub fn mailbox(&self, node: &str) -> usize {
        self.router(node).mailbox_len().0
    }

    /// Custody rows on `node`'s disk.
    pub fn rows(&self, node: &str) -> usize {
        self.node_ref(node).disk.custody.len()
    }

    /// How many frames of `kind` `to` received on its link from `from`.
    pub fn carried(&self, from: &str, to: &str, kind: Kind) -> usize {
        self.carried_frames(from, to, kind).len()
    }

    /// The frames of `kind` `to` received on its link from `from`.
    pub fn carried_frames(&self, from: &str, to: &str, kind: Kind) -> Vec<Envelope> {
        self.carried
            .iter()
            .filter(|(f, t, env)| f == from && t == to && env.kind == kind.name())
            .map(|(_, _, env)| env.clone())
            .collect()
    }

    /// Prints what happens, when tracing.
    fn note(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[sim {:>6} ms] {}", self.now - EPOCH_MS, what());
        }
    }

    /// Starts (or restarts) a node's router from the rows on its disk.
    fn boot(&mut self, name: &str) {
        let now = self.now;
        let seed = self.seed;
        let node = self.node_mut(name);
        node.incarnation += 1;
        node.down = false;
        node.router = Router::new(node.cfg.clone(), node.disk.snapshot(now));
        let salt = name
            .bytes()
            .fold(node.incarnation, |h, b| h.rotate_left(8) ^ u64::from(b));
        node.router.req_ids = ReqIds::seeded(seed ^ salt);
        let every = hub::tick_every(node.cfg.limits);
        let incarnation = node.incarnation;
        self.apply_admitted(name);
        self.schedule(
            now + every,
            Timer::Tick {
                node: name.to_owned(),
                incarnation,
            },
        );
    }

    fn apply_admitted(&mut self, name: &str) {
        let node = self.node_mut(name);
        if let Some(ids) = &node.admitted {
            let entries = ids.iter().cloned().map(AdmitEntry::Id).collect();
            node.router.set_admitted(AdmitList { entries });
        }
    }

    fn schedule(&mut self, at: i64, timer: Timer) {
        self.seq += 1;
        self.timers.insert((at, self.seq), timer);
    }
}
