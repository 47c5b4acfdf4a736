//! Routing as a state machine: validated events in (a user said hello, a
//! frame arrived on a link, a connection closed, a timer fired), actions out
//! (frames to send, connections to close, rows to persist, timers to set).
//! No sockets, no SQLite, no clock: `step` is deterministic, so every routing
//! decision is unit-tested without I/O.

mod admission;
mod bodies;
mod carried;
mod content;
mod delivery;
mod directory;
mod events;
mod fanout;
mod groups;
mod link_hold;
mod links;
mod lookup;
mod online;
mod owed;
mod peers;
mod persist;
mod presence;
mod proofs;
mod replay;
mod req_ids;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod sim;
mod sticky;
#[cfg(test)]
mod tests;
mod unreadable;
mod users;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

pub use events::LinkStatus;
use events::RECIPIENTS;
pub(crate) use events::{
    Frame, Input, LinkHelloIn, Names, Outgoing, Output, Relay, StoreOp, UserHelloIn,
};
pub(crate) use links::url_field;
pub(crate) use peers::DialAsk;

use super::custody::{self, Custody};
#[cfg(test)]
use super::records::UserRecord;
use super::records::{GroupRecord, PresenceRecord, ProofOwner, ServerRecord};
use super::state::{Snapshot, StoreFailure};
use crate::crypto::{self, PublicKey};
use crate::wire::canonical;
use crate::wire::messages::{
    ErrorBody, Message, Presence, Proof, RegisterUser, Role, UserLookupAnswer,
};
use crate::wire::{Envelope, ErrorCode};

pub(crate) use super::records::ConnId;

/// How long a directory lookup through the master may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
pub use crate::wire::HELLO_FRESHNESS_MS;
/// Frames kept from a connection whose hello is still being checked.
pub const MAX_EARLY_FRAMES: usize = 64;
/// Addresses and servers whose registrations are counted at once; beyond
/// it (after forgetting finished windows) new sources are refused.
pub const RATE_SOURCES_MAX: usize = 100_000;
/// The `mac-v1` offer to put in an answer.
fn session_offer(wrapped: &Option<String>) -> Option<crate::wire::messages::SessionOffer> {
    wrapped
        .as_ref()
        .map(|w| crate::wire::messages::SessionOffer {
            cap: crate::crypto::session::CAP_MAC_V1.to_owned(),
            wrapped: w.clone(),
            extra: Map::new(),
        })
}

/// The capabilities we list in a hello (`lookup`: presence on demand, see
/// [`RouterConfig::lists_lookup`]).
pub(crate) fn our_caps(mac: bool, lookup: bool) -> Vec<String> {
    let mut caps = vec![CAP_SOCP.to_owned(), CAP_REGISTER_ANSWER.to_owned()];
    if mac {
        caps.push(crate::crypto::session::CAP_MAC_V1.to_owned());
    }
    if lookup {
        caps.push(CAP_PRESENCE_LOOKUP.to_owned());
    }
    caps
}

pub use lookup::CAP_PRESENCE_LOOKUP;

/// The capability a `socp` peer lists in its hello.
pub const CAP_SOCP: &str = "socp-v1";
/// A master that lists it answers a `DB_REGISTER_USER` carrying a `req_id`
/// (with `DB_USER`, or an `ERROR` naming the user): a local then confirms a
/// new user's key in one round trip (older `socp` masters do not answer).
pub const CAP_REGISTER_ANSWER: &str = "register-answer-v1";

/// Fixed facts about this node.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub me: String,
    pub master: bool,
    pub allow_legacy: bool,
    pub pubkey: String,
    pub host: String,
    pub port: u16,
    /// The URL other servers dial us at (in our link hello, `url`).
    pub url: String,
    pub limits: MailboxLimits,
    /// Most members one group key share may name.
    pub max_group_members: usize,
    /// Largest file a `FILE_START` may announce, in bytes.
    pub max_file_size: u64,
    /// `--admit` and the registration policy.
    pub admission: super::policy::Admission,
    /// At a local, `--presence-cache`: remote users whose presence it holds
    /// when its master serves presence on demand (0: everyone's, as a
    /// reference local). Unused at the master.
    pub presence_cache: usize,
}

impl RouterConfig {
    /// True if our link hellos list [`CAP_PRESENCE_LOOKUP`]: a master
    /// serves presence on demand; a local asks for it unless configured
    /// to hold everyone's.
    pub fn lists_lookup(&self) -> bool {
        self.master || self.presence_cache > 0
    }
}

/// Bounds of the master's offline mailbox, per recipient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MailboxLimits {
    pub max_age_ms: i64,
    pub max_frames: usize,
    pub max_bytes: usize,
    /// Payload bytes in custody for all recipients together (on disk; see
    /// `bodies.rs` for what stays in memory).
    pub max_total_bytes: usize,
    /// Frames and bytes one sender may have waiting, all recipients
    /// together: one user cannot take the whole node's room.
    pub max_sender_frames: usize,
    pub max_sender_bytes: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_frames: 10_000,
            max_bytes: 256 << 20,
            max_total_bytes: 1 << 30,
            max_sender_frames: 20_000,
            max_sender_bytes: 256 << 20,
        }
    }
}

/// A user online here. Every idle user holds one, so it is kept small:
/// the key is the one copy its directory record and connection share, and
/// the hello's proof is kept compact (see DESIGN.md, "Memory per idle
/// connection").
struct Session {
    conn: ConnId,
    proof: Option<proofs::KeptProof>,
    key: std::sync::Arc<str>,
    /// `USER_LIST` answers left (a bucket of [`LIST_BURST`], one more a
    /// second), and when it was last filled (ms).
    lists: (u32, i64),
    /// Its signed hello listed `receipt-undecryptable-v1` (read once here,
    /// not from the compact proof per receipt).
    undecryptable: bool,
}

/// `USER_LIST` answers a user may ask for at once; then one a second. A
/// list is up to 64 KiB: a user that asks and never reads must not fill
/// its send queue (1,024 frames) with them.
pub const LIST_BURST: u32 = 5;

struct Link {
    conn: ConnId,
    socp: bool,
    /// It listed [`CAP_REGISTER_ANSWER`].
    answers_registrations: bool,
    /// It listed [`CAP_PRESENCE_LOOKUP`].
    lookup: bool,
    /// We dialed it (else it dialed us).
    dialed: bool,
}

enum Pending {
    /// A user's `/dbget` forwarded to the master.
    Lookup { conn: ConnId, user_id: String },
    /// A hello waiting for the master to say which key the id is pinned to.
    Hello(UserHelloIn),
    /// Content the next hop could not store (`STORAGE`), to send again.
    Retry(Vec<custody::Dest>),
    /// At the master: withdraw this local unless it linked again.
    Withdraw(String),
    /// New DMs from `sender` to `user`, waiting since then (ms), wait no
    /// longer for the master's path to drain (`sticky.rs`).
    Barrier {
        sender: String,
        user: String,
        since: i64,
    },
}

/// The routing state of one node.
pub(crate) struct Router {
    cfg: RouterConfig,
    master_id: Option<String>,
    users: directory::Directory,
    servers: HashMap<String, ServerRecord>,
    sessions: HashMap<String, Session>,
    conn_users: HashMap<ConnId, String>,
    links: HashMap<String, Link>,
    conn_links: HashMap<ConnId, String>,
    /// Second links waiting to prove their key (`link_hold.rs`).
    held: link_hold::HeldLinks,
    presence: HashMap<String, PresenceRecord>,
    /// At a local in lookup mode: the remote users our users addressed,
    /// whose presence we hold (`lookup.rs`).
    cache: lookup::Cache,
    /// At the master: which users each lookup-mode local subscribed to.
    subs: lookup::Subscriptions,
    /// Presence owed to links in bulk, sent as they drain (`owed.rs`).
    owed: owed::OwedLinks,
    /// At a lookup-mode local: `USER_LIST` requests it may still forward
    /// to the master (`lookup::LIST_FORWARD_RATE` a second, within the
    /// master's own bound), and when the bucket was refilled (ms).
    lists_forwarded: (f64, i64),
    /// Our master listed [`CAP_PRESENCE_LOOKUP`] on its last link (assumed
    /// until a link says otherwise).
    master_serves_lookups: bool,
    /// Users online here or live elsewhere, sorted (`USER_LIST` pages):
    /// whatever sets a session or a presence record's `live` updates it.
    online: online::Online,
    /// Presence proofs whose signature the master verified.
    verified: proofs::VerifiedProofs,
    /// When our master last answered a directory request (ms).
    master_answered_ms: i64,
    /// Hellos (and their keys) waiting for room among those the master is
    /// confirming (`users::MAX_CONFIRMING`).
    waiting_hellos: std::collections::VecDeque<(UserHelloIn, std::sync::Arc<str>)>,
    groups: HashMap<String, GroupRecord>,
    pending: HashMap<String, Pending>,
    /// Frames from connections whose hello waits for the master, replayed
    /// once it is accepted.
    early: HashMap<ConnId, Vec<(Envelope, Message)>>,
    seen_hellos: HashMap<[u8; 32], i64>,
    proof_owners: HashMap<[u8; 32], ProofOwner>,
    custody: Custody,
    /// The servers `--admit` lists (None: any server may link).
    admitted: Option<super::policy::AdmitList>,
    /// Invite key, used invites and key resets.
    policy: super::policy::PolicyState,
    /// Registrations this hour, by source: (window start, count).
    reg_counts: HashMap<admission::RegSource, (i64, u32)>,
    /// Destinations whose next bodies are being read back from disk.
    paging: std::collections::HashSet<custody::Dest>,
    /// `delivered` receipts held back for batching, by sender and the
    /// link the DMs came over (receipts go back the way they came).
    receipts: std::collections::BTreeMap<(String, Option<String>), Vec<String>>,
    /// Which server each DM we handed on went to (whose receipts count).
    carried: carried::Carried,
    /// DMs their recipient reported undecryptable, until acknowledged.
    unreadable: unreadable::Unreadable,
    /// Mailbox frames dropped for age since start.
    expired: u64,
    /// Content refused by this node after a previous hop handed it on:
    /// acknowledged to that hop so it leaves custody, its sender told.
    dead_letters: u64,
    /// Request ids: random in a node, seeded in the simulator.
    req_ids: req_ids::ReqIds,
    /// At the master: the locals to announce to each other (`peers.rs`).
    announced: peers::Announced,
    /// DMs handed to the master, holding their recipients to that path.
    via_master: sticky::ViaMaster,
    out: Vec<Output>,
    now: i64,
}

/// SHA-256 of a proof's signature: how replays and owners are keyed.
pub(crate) fn proof_digest(proof: &Proof) -> [u8; 32] {
    crypto::sha256(proof.sig.as_bytes())
}

impl Router {
    /// A router resuming from what the store kept.
    pub fn new(cfg: RouterConfig, snapshot: Snapshot) -> Self {
        let resumed = !snapshot.servers.is_empty();
        let master_id = snapshot
            .servers
            .iter()
            .find(|(_, s)| s.role == Role::Master)
            .map(|(id, _)| id.clone())
            .filter(|_| !cfg.master);
        let mut presence = snapshot.presence;
        for p in presence.values_mut() {
            p.live = false; // dormant until the link it came over is back
        }
        // A local that holds presence on demand keeps what it persisted as
        // its cache, within the bound (the rest is forgotten).
        let mut cache = lookup::Cache::default();
        let mut out = Vec::new();
        if !cfg.master && cfg.presence_cache > 0 {
            let mut held: Vec<(&String, i64)> =
                presence.iter().map(|(u, p)| (u, p.updated_ms)).collect();
            held.sort_by_key(|(u, t)| (std::cmp::Reverse(*t), (*u).clone()));
            let cap = cfg.presence_cache.min(lookup::SUBSCRIPTIONS_MAX);
            let (kept, dropped) = held.split_at(held.len().min(cap));
            let mut kept: Vec<(&String, i64)> = kept.to_vec();
            kept.reverse();
            for (u, _) in kept {
                cache.touch(u);
            }
            for (u, _) in dropped {
                out.push(Output::Persist(StoreOp::RemovePresence((*u).clone())));
            }
            presence.retain(|u, _| cache.contains(u));
        }
        Router {
            master_id,
            users: directory::Directory::new(snapshot.store, directory::DIRECTORY_CACHE),
            servers: snapshot.servers,
            sessions: HashMap::new(),
            conn_users: HashMap::new(),
            links: HashMap::new(),
            conn_links: HashMap::new(),
            held: HashMap::new(),
            presence,
            cache,
            subs: Default::default(),
            owed: Default::default(),
            lists_forwarded: (lookup::LIST_FORWARD_RATE, 0),
            master_serves_lookups: true,
            online: Default::default(),
            verified: Default::default(),
            master_answered_ms: 0,
            waiting_hellos: Default::default(),
            groups: snapshot.groups,
            pending: HashMap::new(),
            early: HashMap::new(),
            seen_hellos: snapshot.seen_hellos,
            proof_owners: snapshot.proof_owners,
            custody: Custody::load(snapshot.custody),
            admitted: None,
            policy: Default::default(),
            reg_counts: HashMap::new(),
            paging: Default::default(),
            receipts: Default::default(),
            carried: Default::default(),
            unreadable: Default::default(),
            expired: 0,
            dead_letters: 0,
            req_ids: req_ids::ReqIds::random(),
            announced: Default::default(),
            via_master: sticky::ViaMaster::new(resumed),
            out,
            now: 0,
            cfg,
        }
    }

    /// Users online anywhere in the mesh, sorted.
    pub fn online(&self) -> Vec<String> {
        self.online.all()
    }

    /// Frames in custody (the mailbox included), and mailbox frames expired.
    /// Content refused after a previous hop handed it on (set aside).
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters
    }

    /// Window slots taken on every hop.
    pub fn in_flight(&self) -> usize {
        self.custody.slots_taken()
    }

    pub fn custody_stats(&self) -> (usize, u64) {
        (self.custody.len(), self.expired)
    }

    /// Frames and bytes waiting for users online nowhere (the master's mailbox).
    pub fn mailbox_len(&self) -> (usize, usize) {
        if !self.cfg.master {
            return (0, 0);
        }
        self.custody
            .pending_dests()
            .iter()
            .filter(|d| match d {
                custody::Dest::User(u) => {
                    !self.sessions.contains_key(u) && !self.presence.get(u).is_some_and(|p| p.live)
                }
                custody::Dest::Server(_) => false,
            })
            .map(|d| self.custody.load_of(d))
            .fold((0, 0), |(f, b), (nf, nb)| (f + nf, b + nb))
    }

    /// The fullest user queue and sender, as `Custody::fullest`.
    pub fn fullest(&self) -> ((usize, usize), (usize, usize)) {
        self.custody.fullest()
    }

    /// The quotas this node runs with.
    pub fn limits(&self) -> MailboxLimits {
        self.cfg.limits
    }

    /// This node's id and whether it is the master.
    pub fn me(&self) -> (&str, bool) {
        (&self.cfg.me, self.cfg.master)
    }

    /// Users connected to this node itself.
    /// True at a local that holds presence on demand (`lookup.rs`): its
    /// `online` is the users it knows of, not the whole mesh.
    pub fn presence_on_demand(&self) -> bool {
        self.lookup_mode()
    }

    pub fn users_here(&self) -> usize {
        self.sessions.len()
    }

    /// The live links: server id, its role, and whether we dialed it.
    pub fn link_status(&self) -> Vec<LinkStatus> {
        let mut links: Vec<_> = self
            .links
            .iter()
            .map(|(id, link)| LinkStatus {
                server: id.clone(),
                role: match self.servers.get(id).map(|s| s.role) {
                    Some(Role::Master) => "master",
                    Some(Role::Local) => "local",
                    None => "unknown",
                },
                dialed: link.dialed,
            })
            .collect();
        links.sort_by(|a, b| a.server.cmp(&b.server));
        links
    }

    /// Tells every link that our users are gone (before the connections close).
    fn shutting_down(&mut self) {
        // What links were still owed would follow the goodbyes below (and
        // advertise users who are leaving): their closing says the rest.
        self.owed.clear();
        let users: Vec<String> = self.sessions.keys().cloned().collect();
        for user in users {
            let remove = Message::UserRemove(Presence {
                user_id: user.clone(),
                location: self.cfg.me.clone(),
                proof: None,
                extra: Map::new(),
            });
            self.broadcast_presence(None, &user, &remove);
        }
    }

    /// True if receipts wait for a quiet moment.
    pub fn has_pending_receipts(&self) -> bool {
        !self.receipts.is_empty()
    }

    /// Ids of the servers with a live link.
    pub fn linked(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Processes one event at time `now` (Unix ms).
    pub fn step(&mut self, now: i64, input: Input) -> Vec<Output> {
        self.now = now;
        self.via_master.start(now);
        match input {
            Input::UserHello(hello) => self.user_hello(hello),
            Input::UserFrame { conn, env, msg } => self.user_frame(conn, env, msg),
            Input::UserClosed(conn) => self.user_closed(conn),
            Input::LinkHello(hello) => self.link_hello(hello),
            Input::LinkFrame { conn, env, msg } => self.link_frame(conn, env, msg),
            Input::LinkClosed(conn) => self.link_closed(conn),
            Input::Timeout(req_id) if self.hold_expired(&req_id) => {}
            Input::Timeout(req_id) => self.timeout(&req_id),
            Input::Tick => {
                self.prune_rates();
                self.tick();
                self.prune_replay_state();
            }
            Input::Shutdown => self.shutting_down(),
            Input::Idle => self.flush_receipts(),
            Input::StoreFailed(failure) => self.store_failed(failure),
            Input::Stored(written) => self.stored(written),
            Input::RowsRead(read) => self.rows_read(read),
            Input::BodiesRead { bodies, unread } => self.bodies_read(bodies, unread),
            Input::Drained(conn) => self.drained(conn),
        }
        self.send_owed();
        // DMs that waited for a master path released on the way (say, the
        // oldest forgotten at `sticky::STICKY_MAX`).
        self.send_freed();
        if !self.waiting_hellos.is_empty() {
            self.confirm_waiting();
        }
        #[cfg(test)]
        self.assert_online_index();
        std::mem::take(&mut self.out)
    }

    // ---- output helpers ----

    fn send(&mut self, conn: ConnId, to: &str, msg: Message) {
        self.out.push(Output::Send(conn, Outgoing::new(to, msg)));
    }

    fn error(&mut self, conn: ConnId, to: &str, code: ErrorCode, detail: impl Into<String>) {
        self.send(conn, to, Message::Error(ErrorBody::new(code, detail)));
    }

    fn refuse(&mut self, conn: ConnId, to: &str, code: ErrorCode, detail: impl Into<String>) {
        self.early.remove(&conn);
        self.error(conn, to, code, detail);
        self.out.push(Output::Close(conn));
    }

    fn persist(&mut self, op: StoreOp) {
        self.out.push(Output::Persist(op));
    }

    /// Sends on the link to `server`; false if there is none.
    fn send_link(&mut self, server: &str, to: &str, msg: Message) -> bool {
        match self.links.get(server) {
            Some(link) => {
                let conn = link.conn;
                self.send(conn, to, msg);
                true
            }
            None => false,
        }
    }

    /// Who sent a frame on `conn` (a link's if `link`, else a user's): the
    /// peer its hello named, if the frame's `from` is that peer. The one
    /// check of `from` for users and links: a user is told, a server's
    /// frame is dropped.
    fn sender(&mut self, conn: ConnId, env: &Envelope, link: bool) -> Option<String> {
        if link {
            let server = self.conn_links.get(&conn)?;
            if env.from == *server {
                return Some(server.clone());
            }
            tracing::warn!(conn, server = %server, from = %truncate(&env.from), "dropped link frame: from is not the linked server");
            return None;
        }
        let user = self.conn_users.get(&conn)?.clone();
        if env.from == user {
            return Some(user);
        }
        let detail = format!(
            "frame from {:?} on {user}'s connection",
            truncate(&env.from)
        );
        self.error(conn, &user, ErrorCode::NotAllowed, detail);
        None
    }

    fn new_req_id(&mut self) -> String {
        self.req_ids.next_id()
    }

    fn master_link(&self) -> Option<&str> {
        self.master_id
            .as_deref()
            .filter(|m| self.links.contains_key(*m))
    }
}

/// True if `proof` is `user`'s hello, signed with `pubkey`, naming that key.
fn proof_signed_by(proof: &Proof, user: &str, pubkey: &str) -> bool {
    if proof.payload.get("pubkey").and_then(Value::as_str) != Some(pubkey) {
        return false;
    }
    if let Some(Value::String(claimed)) = proof.payload.get("user_id")
        && claimed != user
    {
        return false;
    }
    let Ok(key) = PublicKey::from_b64(pubkey) else {
        return false;
    };
    let Ok(bytes) = canonical::map_to_string(&proof.payload) else {
        return false;
    };
    key.verify_b64(bytes.as_bytes(), &proof.sig).is_ok()
}

fn registration(user: &str, pubkey: &str, proof: Option<Proof>) -> Message {
    Message::DbRegisterUser(RegisterUser {
        user_id: user.to_owned(),
        pubkey: pubkey.to_owned(),
        proof,
        req_id: None,
        extra: Map::new(),
    })
}

fn lookup_answer(user: &str, pubkey: Option<&str>) -> Message {
    Message::UserDbUser(UserLookupAnswer {
        user_id: user.to_owned(),
        found: pubkey.is_some(),
        pubkey: pubkey.unwrap_or_default().to_owned(),
        extra: Map::new(),
    })
}

/// The members a group frame from a link names (see [`RECIPIENTS`]).
fn take_recipients(extra: &mut Map<String, Value>) -> Option<Vec<String>> {
    let value = extra.remove(RECIPIENTS)?;
    serde_json::from_value(value).ok()
}

/// The code of an error a peer sent (an unknown one counts as `NOT_ALLOWED`).
fn code_of(e: &ErrorBody) -> ErrorCode {
    e.error_code().unwrap_or(ErrorCode::NotAllowed)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
