//! Routing as a state machine: validated events in (a user said hello, a
//! frame arrived on a link, a connection closed, a timer fired), actions out
//! (frames to send, connections to close, rows to persist, timers to set).
//! No sockets, no SQLite, no clock: `step` is deterministic, so every routing
//! decision is unit-tested without I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::state::{GroupRecord, PresenceRecord, ServerRecord, Snapshot, UserRecord};
use crate::crypto::{self, PublicKey};
use crate::wire::canonical;
use crate::wire::ids::{self, IdKind};
use crate::wire::messages::{
    Deliver, DirectoryAnswer, DirectoryLookup, ErrorBody, FileChunk, FileEnd, FileStart,
    GroupKeyShare, Message, MsgGroup, MsgPrivate, PeerHelloLink, Presence, Proof, RegisterUser,
    Role, UserList, UserLookupAnswer, UserWelcome,
};
use crate::wire::{Envelope, ErrorCode};

/// Identifies one connection of this node.
pub(crate) type ConnId = u64;

/// How long a directory lookup through the master may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How far a signed hello's `ts` may be from our clock (PROTOCOL.md C3).
pub const HELLO_FRESHNESS_MS: i64 = 120_000;
/// Frames kept from a connection whose hello is still being checked.
pub const MAX_EARLY_FRAMES: usize = 64;
/// The capability a `socp` peer lists in its hello.
pub const CAP_SOCP: &str = "socp-v1";

/// A frame for a connection's writer to stamp with our id, sign and send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub kind: &'static str,
    pub to: String,
    pub payload: Map<String, Value>,
}

/// A row for the store writer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StoreOp {
    PinUser(String, UserRecord),
    PinServer(String, ServerRecord),
    SetPresence(String, PresenceRecord),
    RemovePresence(String),
    SeenHello([u8; 32], i64),
    ProofOwner([u8; 32], String, String),
    SetGroup(String, GroupRecord),
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    Send(ConnId, Outgoing),
    /// Close after the frames already queued for it are sent.
    Close(ConnId),
    Persist(StoreOp),
    Timer {
        req_id: String,
        after: Duration,
    },
}

/// A user hello whose key, signature and freshness the connection checked.
#[derive(Debug, Clone)]
pub(crate) struct UserHelloIn {
    pub conn: ConnId,
    pub user_id: String,
    pub key: PublicKey,
    /// The signed hello, as proof of presence (None for a legacy hello).
    pub proof: Option<Proof>,
}

/// A server hello whose signature the connection checked.
#[derive(Debug, Clone)]
pub(crate) struct LinkHelloIn {
    pub conn: ConnId,
    pub server_id: String,
    pub key: PublicKey,
    pub role: Role,
    pub host: String,
    pub port: u16,
    /// The hello's envelope `ts`: must grow from one link to the next.
    pub ts: i64,
    /// The peer listed our capability: it re-advertises after a reconnect.
    pub socp: bool,
    /// We dialed it (its hello is the answer to ours).
    pub dialed: bool,
    /// We dialed it as our master (`--master-url`).
    pub dialed_master: bool,
}

/// Events the router consumes.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    UserHello(UserHelloIn),
    UserFrame {
        conn: ConnId,
        env: Envelope,
        msg: Message,
    },
    UserClosed(ConnId),
    LinkHello(LinkHelloIn),
    LinkFrame {
        conn: ConnId,
        env: Envelope,
        msg: Message,
    },
    LinkClosed(ConnId),
    Timeout(String),
}

/// Fixed facts about this node.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub me: String,
    pub master: bool,
    pub allow_legacy: bool,
    pub pubkey: String,
    pub host: String,
    pub port: u16,
}

struct Session {
    conn: ConnId,
    proof: Option<Proof>,
    key: String,
}

struct Link {
    conn: ConnId,
    socp: bool,
}

enum Pending {
    /// A user's `/dbget` forwarded to the master.
    Lookup { conn: ConnId, user_id: String },
    /// A hello waiting for the master to say which key the id is pinned to.
    Hello(UserHelloIn),
}

/// The routing state of one node.
pub(crate) struct Router {
    cfg: RouterConfig,
    master_id: Option<String>,
    users: HashMap<String, UserRecord>,
    servers: HashMap<String, ServerRecord>,
    sessions: HashMap<String, Session>,
    conn_users: HashMap<ConnId, String>,
    links: HashMap<String, Link>,
    conn_links: HashMap<ConnId, String>,
    presence: HashMap<String, PresenceRecord>,
    groups: HashMap<String, GroupRecord>,
    pending: HashMap<String, Pending>,
    /// Frames from connections whose hello waits for the master, replayed
    /// once it is accepted.
    early: HashMap<ConnId, Vec<(Envelope, Message)>>,
    seen_hellos: HashMap<[u8; 32], i64>,
    proof_owners: HashMap<[u8; 32], String>,
    next_req: u64,
    out: Vec<Output>,
    now: i64,
}

fn payload_of<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn error_payload(code: ErrorCode, detail: impl Into<String>) -> Map<String, Value> {
    payload_of(&ErrorBody {
        code: code.as_str().to_owned(),
        detail: detail.into(),
        extra: Map::new(),
    })
}

/// SHA-256 of a proof's signature: how replays and owners are keyed.
pub(crate) fn proof_digest(proof: &Proof) -> [u8; 32] {
    crypto::sha256(proof.sig.as_bytes())
}

impl Router {
    /// A router resuming from what the store kept.
    pub fn new(cfg: RouterConfig, snapshot: Snapshot) -> Self {
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
        Router {
            master_id,
            users: snapshot.users,
            servers: snapshot.servers,
            sessions: HashMap::new(),
            conn_users: HashMap::new(),
            links: HashMap::new(),
            conn_links: HashMap::new(),
            presence,
            groups: snapshot.groups,
            pending: HashMap::new(),
            early: HashMap::new(),
            seen_hellos: snapshot.seen_hellos,
            proof_owners: snapshot.proof_owners,
            next_req: 0,
            out: Vec::new(),
            now: 0,
            cfg,
        }
    }

    /// Users online anywhere in the mesh, sorted.
    pub fn online(&self) -> Vec<String> {
        let mut all: BTreeSet<&String> = self.sessions.keys().collect();
        all.extend(self.presence.iter().filter(|(_, p)| p.live).map(|(u, _)| u));
        all.into_iter().cloned().collect()
    }

    /// Ids of the servers with a live link.
    pub fn linked(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Processes one event at time `now` (Unix ms).
    pub fn step(&mut self, now: i64, input: Input) -> Vec<Output> {
        self.now = now;
        match input {
            Input::UserHello(hello) => self.user_hello(hello),
            Input::UserFrame { conn, env, msg } => self.user_frame(conn, env, msg),
            Input::UserClosed(conn) => self.user_closed(conn),
            Input::LinkHello(hello) => self.link_hello(hello),
            Input::LinkFrame { conn, env, msg } => self.link_frame(conn, env, msg),
            Input::LinkClosed(conn) => self.link_closed(conn),
            Input::Timeout(req_id) => self.timeout(&req_id),
        }
        std::mem::take(&mut self.out)
    }

    // ---- output helpers ----

    fn send(&mut self, conn: ConnId, kind: &'static str, to: &str, payload: Map<String, Value>) {
        self.out.push(Output::Send(
            conn,
            Outgoing {
                kind,
                to: to.to_owned(),
                payload,
            },
        ));
    }

    fn error(&mut self, conn: ConnId, to: &str, code: ErrorCode, detail: impl Into<String>) {
        self.send(conn, "ERROR", to, error_payload(code, detail));
    }

    fn refuse(&mut self, conn: ConnId, to: &str, code: ErrorCode, detail: impl Into<String>) {
        self.early.remove(&conn);
        self.error(conn, to, code, detail);
        self.out.push(Output::Close(conn));
    }

    fn persist(&mut self, op: StoreOp) {
        self.out.push(Output::Persist(op));
    }

    fn send_link(
        &mut self,
        server: &str,
        kind: &'static str,
        to: &str,
        payload: Map<String, Value>,
    ) -> bool {
        match self.links.get(server) {
            Some(link) => {
                let conn = link.conn;
                self.send(conn, kind, to, payload);
                true
            }
            None => false,
        }
    }

    fn broadcast(
        &mut self,
        except: Option<&str>,
        kind: &'static str,
        payload: &Map<String, Value>,
    ) {
        let targets: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .map(|(_, l)| l.conn)
            .collect();
        for conn in targets {
            self.send(conn, kind, ids::TO_ALL, payload.clone());
        }
    }

    fn new_req_id(&mut self) -> String {
        self.next_req += 1;
        format!("{}-{}", uuid::Uuid::new_v4(), self.next_req)
    }

    fn master_link(&self) -> Option<&str> {
        self.master_id
            .as_deref()
            .filter(|m| self.links.contains_key(*m))
    }

    // ---- users ----

    fn user_hello(&mut self, hello: UserHelloIn) {
        let user = hello.user_id.clone();
        if let Some(proof) = &hello.proof {
            let digest = proof_digest(proof);
            if self.seen_hellos.contains_key(&digest) {
                return self.refuse(
                    hello.conn,
                    &user,
                    ErrorCode::InvalidSig,
                    "replayed hello: sign a fresh one",
                );
            }
            self.seen_hellos.insert(digest, self.now);
            self.persist(StoreOp::SeenHello(digest, self.now));
        } else if !self.cfg.allow_legacy {
            return self.refuse(
                hello.conn,
                &user,
                ErrorCode::InvalidSig,
                "unsigned hello refused: this node admits only signed (socp) clients",
            );
        }
        if self.sessions.contains_key(&user) || self.presence.get(&user).is_some_and(|p| p.live) {
            return self.refuse(
                hello.conn,
                &user,
                ErrorCode::NameInUse,
                format!("{user} is already connected"),
            );
        }
        let key = hello.key.to_b64().to_owned();
        match self.users.get(&user) {
            Some(rec) if rec.pubkey != key => self.refuse(
                hello.conn,
                &user,
                ErrorCode::BadKey,
                format!("{user} is registered with another key; pick another user id"),
            ),
            Some(_) => self.accept_user(hello),
            None if self.cfg.master => {
                let rec = UserRecord::new(key, hello.proof.is_none(), self.now);
                self.users.insert(user.clone(), rec.clone());
                self.persist(StoreOp::PinUser(user, rec));
                self.accept_user(hello);
            }
            None => match self.master_link().map(str::to_owned) {
                // Register, then look the id up on the same link: the answer
                // comes after the master applied the registration, so it
                // says which key the id is pinned to now.
                Some(master) => {
                    let reg = registration(&user, &key, hello.proof.clone());
                    self.send_link(&master, "DB_REGISTER_USER", &master, reg);
                    let req_id = self.new_req_id();
                    let ask = payload_of(&DirectoryLookup {
                        user_id: user,
                        req_id: req_id.clone(),
                        extra: Map::new(),
                    });
                    self.send_link(&master, "DB_GET_USER", &master, ask);
                    self.early.insert(hello.conn, Vec::new());
                    self.pending.insert(req_id.clone(), Pending::Hello(hello));
                    self.out.push(Output::Timer {
                        req_id,
                        after: LOOKUP_TIMEOUT,
                    });
                }
                None => self.refuse(
                    hello.conn,
                    &user,
                    ErrorCode::Timeout,
                    "the master is unreachable, so this server cannot check your key yet; try again shortly",
                ),
            },
        }
    }

    fn accept_user(&mut self, hello: UserHelloIn) {
        let user = hello.user_id.clone();
        let key = hello.key.to_b64().to_owned();
        let early = self.early.remove(&hello.conn).unwrap_or_default();
        if self.sessions.contains_key(&user) {
            return self.refuse(
                hello.conn,
                &user,
                ErrorCode::NameInUse,
                format!("{user} is already connected"),
            );
        }
        self.sessions.insert(
            user.clone(),
            Session {
                conn: hello.conn,
                proof: hello.proof.clone(),
                key: key.clone(),
            },
        );
        self.conn_users.insert(hello.conn, user.clone());
        let welcome = payload_of(&UserWelcome {
            user_id: user.clone(),
            server_id: self.cfg.me.clone(),
            session: None,
            extra: Map::new(),
        });
        self.send(hello.conn, "USER_WELCOME", &user, welcome);
        if !self.cfg.master {
            if !self.users.contains_key(&user) {
                let rec = UserRecord::new(key.clone(), hello.proof.is_none(), self.now);
                self.users.insert(user.clone(), rec.clone());
                self.persist(StoreOp::PinUser(user.clone(), rec));
            }
            if let Some(master) = self.master_link().map(str::to_owned) {
                let reg = registration(&user, &key, hello.proof.clone());
                self.send_link(&master, "DB_REGISTER_USER", &master, reg);
            }
        }
        let adv = self.own_advert(&user);
        self.broadcast(None, "USER_ADVERTISE", &adv);
        for (env, msg) in early {
            self.user_frame(hello.conn, env, msg);
        }
    }

    fn own_advert(&self, user: &str) -> Map<String, Value> {
        payload_of(&Presence {
            user_id: user.to_owned(),
            location: self.cfg.me.clone(),
            proof: self.sessions.get(user).and_then(|s| s.proof.clone()),
            extra: Map::new(),
        })
    }

    fn user_closed(&mut self, conn: ConnId) {
        if self.early.remove(&conn).is_some() {
            self.pending
                .retain(|_, p| !matches!(p, Pending::Hello(h) if h.conn == conn));
        }
        let Some(user) = self.conn_users.remove(&conn) else {
            return;
        };
        if self.sessions.get(&user).is_some_and(|s| s.conn == conn) {
            self.sessions.remove(&user);
            let remove = payload_of(&Presence {
                user_id: user,
                location: self.cfg.me.clone(),
                proof: None,
                extra: Map::new(),
            });
            self.broadcast(None, "USER_REMOVE", &remove);
        }
    }

    fn user_frame(&mut self, conn: ConnId, env: Envelope, msg: Message) {
        let Some(user) = self.conn_users.get(&conn).cloned() else {
            if let Some(early) = self.early.get_mut(&conn)
                && early.len() < MAX_EARLY_FRAMES
            {
                early.push((env, msg));
            }
            return;
        };
        if env.from != user {
            return self.error(
                conn,
                &user,
                ErrorCode::NotAllowed,
                format!(
                    "frame from {:?} on {user}'s connection",
                    truncate(&env.from)
                ),
            );
        }
        match msg {
            Message::UserListReq(_) => {
                let list = payload_of(&UserList {
                    users: self.online(),
                    extra: Map::new(),
                });
                self.send(conn, "USER_LIST", &user, list);
            }
            Message::UserDbGetUser(q) => self.user_lookup(conn, &user, q.user_id),
            Message::MsgPrivate(dm) => self.user_dm(conn, &user, &env.to, dm),
            Message::GroupKeyShare(share) => {
                if share.creator != user {
                    return self.error(
                        conn,
                        &user,
                        ErrorCode::NotAllowed,
                        "creator must be the sender",
                    );
                }
                if let Err(e) = ids::check_group(&share.group_id) {
                    return self.error(conn, &user, ErrorCode::BadFrame, e.to_string());
                }
                self.route_share(None, &user, share);
            }
            Message::MsgGroup(m) => {
                if m.from != user {
                    return self.error(
                        conn,
                        &user,
                        ErrorCode::NotAllowed,
                        "from must be the sender",
                    );
                }
                self.route_group_msg(None, &user, m);
            }
            Message::FileStart(_) | Message::FileChunk(_) | Message::FileEnd(_) => {
                self.user_file(conn, &user, &env.to, msg)
            }
            Message::Heartbeat(_) | Message::Ack(_) => {}
            Message::Error(_) => {}
            other => self.error(
                conn,
                &user,
                ErrorCode::NotAllowed,
                format!("{} is not a frame a user may send", other.type_name()),
            ),
        }
    }

    fn user_lookup(&mut self, conn: ConnId, user: &str, target: String) {
        if let Some(rec) = self.users.get(&target) {
            let answer = lookup_answer(&target, Some(&rec.pubkey));
            return self.send(conn, "USER_DB_USER", user, answer);
        }
        if self.cfg.master {
            return self.send(conn, "USER_DB_USER", user, lookup_answer(&target, None));
        }
        let Some(master) = self.master_link().map(str::to_owned) else {
            return self.error(
                conn,
                user,
                ErrorCode::Timeout,
                "the master is unreachable; try again shortly",
            );
        };
        let req_id = self.new_req_id();
        let ask = payload_of(&DirectoryLookup {
            user_id: target.clone(),
            req_id: req_id.clone(),
            extra: Map::new(),
        });
        self.send_link(&master, "DB_GET_USER", &master, ask);
        self.pending.insert(
            req_id.clone(),
            Pending::Lookup {
                conn,
                user_id: target,
            },
        );
        self.out.push(Output::Timer {
            req_id,
            after: LOOKUP_TIMEOUT,
        });
    }

    fn timeout(&mut self, req_id: &str) {
        match self.pending.remove(req_id) {
            Some(Pending::Lookup { conn, user_id }) => {
                if let Some(user) = self.conn_users.get(&conn).cloned() {
                    self.error(
                        conn,
                        &user,
                        ErrorCode::Timeout,
                        format!("the master did not answer the lookup of {user_id} in 5 s"),
                    );
                }
            }
            Some(Pending::Hello(hello)) => self.refuse(
                hello.conn,
                &hello.user_id,
                ErrorCode::Timeout,
                "the master did not confirm your key in 5 s; try again",
            ),
            None => {}
        }
    }

    fn user_dm(&mut self, conn: ConnId, user: &str, to: &str, dm: MsgPrivate) {
        if ids::check_user(to).is_err() {
            return self.error(
                conn,
                user,
                ErrorCode::BadFrame,
                format!("{:?} is not a user id", truncate(to)),
            );
        }
        let deliver = Deliver {
            user_id: to.to_owned(),
            ciphertext: dm.ciphertext,
            iv: dm.iv,
            tag: dm.tag,
            wrapped_key: dm.wrapped_key,
            sender: user.to_owned(),
            sender_pub: dm.sender_pub,
            content_sig: dm.content_sig,
            content_ts: dm.content_ts,
            msg_id: dm.msg_id,
            extra: dm.extra,
        };
        self.route_to_user(
            None,
            "PEER_DELIVER",
            "USER_DELIVER",
            to,
            payload_of(&deliver),
            user,
        );
    }

    /// Routes content for one user: deliver here, send to the server that
    /// hosts it (direct link, else through the master), or report it unknown.
    /// `from_link` is the server the frame came from (None: our own user).
    fn route_to_user(
        &mut self,
        from_link: Option<&str>,
        link_kind: &'static str,
        user_kind: &'static str,
        recipient: &str,
        payload: Map<String, Value>,
        sender: &str,
    ) {
        if let Some(session) = self.sessions.get(recipient) {
            let conn = session.conn;
            return self.send(conn, user_kind, recipient, payload);
        }
        let location = self
            .presence
            .get(recipient)
            .filter(|p| p.live)
            .map(|p| p.location.clone());
        if let Some(loc) = location.filter(|l| Some(l.as_str()) != from_link) {
            if self.send_link(&loc, link_kind, &loc, payload.clone()) {
                return;
            }
            if let Some(master) = self.master_link().map(str::to_owned)
                && from_link != Some(master.as_str())
            {
                self.send_link(&master, link_kind, &loc, payload);
                return;
            }
        }
        // Nobody here knows where the user is: the master decides.
        if !self.cfg.master
            && let Some(master) = self.master_link().map(str::to_owned)
            && from_link != Some(master.as_str())
        {
            self.send_link(&master, link_kind, &master, payload);
            return;
        }
        let detail = if self.users.contains_key(recipient) {
            format!("{recipient} is offline")
        } else if self.cfg.master {
            format!("{recipient} is not a registered user")
        } else {
            format!("{recipient} is not reachable (the master is unreachable)")
        };
        self.report(from_link, sender, ErrorCode::UserNotFound, detail);
    }

    /// Sends an error to `user`, here or on the server the frame came from.
    fn report(&mut self, from_link: Option<&str>, user: &str, code: ErrorCode, detail: String) {
        match from_link {
            None => {
                if let Some(conn) = self.sessions.get(user).map(|s| s.conn) {
                    self.error(conn, user, code, detail);
                }
            }
            Some(server) => {
                if self.links.get(server).is_some_and(|l| l.socp) {
                    let payload = error_payload(code, detail);
                    self.send_link(server, "ERROR", user, payload);
                }
            }
        }
    }

    // ---- groups ----

    fn record_group(&mut self, group_id: &str, members: BTreeSet<String>) {
        let rec = GroupRecord {
            members: members.into_iter().collect(),
            updated_ms: self.now,
        };
        if self.groups.get(group_id).map(|g| &g.members) != Some(&rec.members) {
            self.groups.insert(group_id.to_owned(), rec.clone());
            self.persist(StoreOp::SetGroup(group_id.to_owned(), rec));
        }
    }

    /// Servers (other than us and `except`) hosting any of `members`.
    fn member_servers(
        &self,
        members: &[String],
        except: Option<&str>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut by_server: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in members {
            if self.sessions.contains_key(m) {
                continue;
            }
            if let Some(p) = self.presence.get(m).filter(|p| p.live)
                && Some(p.location.as_str()) != except
                && p.location != self.cfg.me
            {
                by_server
                    .entry(p.location.clone())
                    .or_default()
                    .push(m.clone());
            }
        }
        by_server
    }

    /// Sends a group frame on: a local hands it to the master; the master
    /// sends one frame to each other server hosting members.
    fn fan_out(
        &mut self,
        from_link: Option<&str>,
        kind: &'static str,
        members: &[String],
        payload: &Map<String, Value>,
        with_recipients: bool,
    ) {
        if !self.cfg.master {
            if from_link.is_none()
                && let Some(master) = self.master_link().map(str::to_owned)
            {
                self.send_link(&master, kind, &master, payload.clone());
            }
            return;
        }
        for (server, hosted) in self.member_servers(members, from_link) {
            let mut p = payload.clone();
            if with_recipients {
                p.insert("recipients".into(), Value::from(hosted));
            }
            self.send_link(&server, kind, &server, p);
        }
    }

    fn route_share(&mut self, from_link: Option<&str>, sender: &str, share: GroupKeyShare) {
        let mut members: BTreeSet<String> = share.shares.iter().map(|s| s.member.clone()).collect();
        members.insert(share.creator.clone());
        self.record_group(&share.group_id, members.clone());
        let payload = payload_of(&share);
        for m in &members {
            if m != sender
                && let Some(conn) = self.sessions.get(m).map(|s| s.conn)
            {
                self.send(conn, "GROUP_KEY_SHARE", m, payload.clone());
            }
        }
        let members: Vec<String> = members.into_iter().filter(|m| m != sender).collect();
        self.fan_out(from_link, "GROUP_KEY_SHARE", &members, &payload, false);
    }

    fn group_members(&self, group_id: &str, recipients: Option<Vec<String>>) -> Vec<String> {
        recipients.unwrap_or_else(|| {
            self.groups
                .get(group_id)
                .map(|g| g.members.clone())
                .unwrap_or_default()
        })
    }

    fn route_group_msg(&mut self, from_link: Option<&str>, sender: &str, mut m: MsgGroup) {
        let recipients = take_recipients(&mut m.extra);
        let known = self.groups.contains_key(&m.group_id) || recipients.is_some();
        if !known && (self.cfg.master || from_link.is_some()) {
            return self.report(
                from_link,
                sender,
                ErrorCode::UserNotFound,
                format!("unknown group {}", m.group_id),
            );
        }
        let members: Vec<String> = self
            .group_members(&m.group_id, recipients)
            .into_iter()
            .filter(|u| u != sender)
            .collect();
        let payload = payload_of(&m);
        for u in &members {
            if let Some(conn) = self.sessions.get(u).map(|s| s.conn) {
                self.send(conn, "MSG_GROUP", u, payload.clone());
            }
        }
        if from_link.is_none() || self.cfg.master {
            let all = self.group_members(&m.group_id, None);
            let all: Vec<String> = all.into_iter().filter(|u| u != sender).collect();
            self.fan_out(from_link, "MSG_GROUP", &all, &payload, true);
        }
    }

    // ---- files ----

    fn user_file(&mut self, conn: ConnId, user: &str, to: &str, msg: Message) {
        if let Message::FileStart(s) = &msg
            && s.extra
                .get("from")
                .is_some_and(|f| f.as_str() != Some(user))
        {
            return self.error(conn, user, ErrorCode::NotAllowed, "from must be the sender");
        }
        match ids::classify(to) {
            Ok(IdKind::User) => {
                let kind = msg.type_name();
                let payload = with_user_id(msg.to_payload(), to);
                self.route_to_user(None, kind, kind, to, payload, user);
            }
            Ok(IdKind::Group) => self.route_group_file(None, user, to, msg),
            _ => self.error(
                conn,
                user,
                ErrorCode::BadFrame,
                format!("{:?} is not a user or group id", truncate(to)),
            ),
        }
    }

    fn route_group_file(
        &mut self,
        from_link: Option<&str>,
        sender: &str,
        group: &str,
        msg: Message,
    ) {
        let kind = msg.type_name();
        let members: Vec<String> = self
            .group_members(group, None)
            .into_iter()
            .filter(|u| u != sender)
            .collect();
        if members.is_empty() && (self.cfg.master || from_link.is_some()) {
            return self.report(
                from_link,
                sender,
                ErrorCode::UserNotFound,
                format!("unknown group {group}"),
            );
        }
        let payload = msg.to_payload();
        for u in &members {
            if let Some(conn) = self.sessions.get(u).map(|s| s.conn) {
                self.send(conn, kind, u, with_user_id(payload.clone(), u));
            }
        }
        if !self.cfg.master {
            if from_link.is_none()
                && let Some(master) = self.master_link().map(str::to_owned)
            {
                // The master expands the group; `to` names it.
                self.send_link(&master, kind, group, payload);
            }
            return;
        }
        for (server, hosted) in self.member_servers(&members, from_link) {
            for u in hosted {
                self.send_link(&server, kind, &server, with_user_id(payload.clone(), &u));
            }
        }
    }

    // ---- links ----

    fn link_hello(&mut self, hello: LinkHelloIn) {
        let id = hello.server_id.clone();
        let key = hello.key.to_b64().to_owned();
        if id == self.cfg.me {
            return self.out.push(Output::Close(hello.conn));
        }
        if let Some(rec) = self.servers.get(&id)
            && rec.pubkey != key
        {
            tracing::warn!(server = %id, "refused link: server id is pinned to another key");
            return self.refuse(
                hello.conn,
                &id,
                ErrorCode::BadKey,
                "this server id is pinned to another key",
            );
        }
        if let Some(rec) = self.servers.get(&id)
            && hello.ts <= rec.hello_ts
        {
            tracing::warn!(server = %id, "refused link: its hello is not newer than the last one (a replay?)");
            return self.refuse(
                hello.conn,
                &id,
                ErrorCode::NotAllowed,
                "link hello is not newer than the last accepted one (replayed, or the clock went back)",
            );
        }
        match (self.cfg.master, hello.role) {
            (true, Role::Master) => {
                return self.refuse(
                    hello.conn,
                    &id,
                    ErrorCode::NotAllowed,
                    "a mesh has one master",
                );
            }
            (false, Role::Master) if !hello.dialed_master => {
                return self.refuse(
                    hello.conn,
                    &id,
                    ErrorCode::NotAllowed,
                    "only the master we dial may link as master",
                );
            }
            (false, Role::Local) if hello.dialed_master => {
                tracing::warn!(server = %id, "--master-url answered as a local, not a master");
                return self.out.push(Output::Close(hello.conn));
            }
            _ => {}
        }
        if hello.dialed_master
            && let Some(pinned) = self.master_id.as_deref()
            && pinned != id
        {
            tracing::error!(
                pinned,
                found = %id,
                "the master now has another id; if it was reset on purpose, reset this local too (scripts/reset.sh)"
            );
            return self.out.push(Output::Close(hello.conn));
        }
        if let Some(old) = self.links.get(&id) {
            // One live link per pair: the newer one wins (the old may be dead
            // without knowing it yet).
            let old_conn = old.conn;
            self.out.push(Output::Close(old_conn));
            self.drop_link(old_conn);
        }
        let rec = ServerRecord {
            pubkey: key,
            role: hello.role,
            host: hello.host.clone(),
            port: hello.port,
            hello_ts: hello.ts,
            last_seen_ms: self.now,
        };
        if self.servers.get(&id) != Some(&rec) {
            self.servers.insert(id.clone(), rec.clone());
            self.persist(StoreOp::PinServer(id.clone(), rec));
        }
        if hello.dialed_master {
            self.master_id = Some(id.clone());
        }
        if !hello.dialed {
            let reply = payload_of(&PeerHelloLink {
                host: self.cfg.host.clone(),
                port: self.cfg.port,
                pubkey: self.cfg.pubkey.clone(),
                role: if self.cfg.master {
                    Role::Master
                } else {
                    Role::Local
                },
                caps: Some(vec![CAP_SOCP.to_owned()]),
                session: None,
                extra: Map::new(),
            });
            self.send(hello.conn, "PEER_HELLO_LINK", &id, reply);
        }
        self.links.insert(
            id.clone(),
            Link {
                conn: hello.conn,
                socp: hello.socp,
            },
        );
        self.conn_links.insert(hello.conn, id.clone());
        tracing::info!(server = %id, role = ?hello.role, "link up");
        self.restore_presence(&id, hello.socp);
        self.send_snapshot(&id);
    }

    /// After a link forms: a `socp` peer re-advertises its users, so what we
    /// cached from it is dropped; a reference peer does not, so the cache is
    /// restored.
    fn restore_presence(&mut self, server: &str, socp: bool) {
        let via: Vec<String> = self
            .presence
            .iter()
            .filter(|(_, p)| p.via == server && !p.live)
            .map(|(u, _)| u.clone())
            .collect();
        for user in via {
            if socp {
                self.presence.remove(&user);
                self.persist(StoreOp::RemovePresence(user));
            } else if let Some(p) = self.presence.get_mut(&user) {
                p.live = true;
                let adv = payload_of(&Presence {
                    user_id: user,
                    location: p.location.clone(),
                    proof: p.proof.clone(),
                    extra: Map::new(),
                });
                if self.cfg.master {
                    self.broadcast(Some(server), "USER_ADVERTISE", &adv);
                }
            }
        }
    }

    /// A new link learns who is online: our own users (registered first,
    /// if it is our master) and, from the master, everyone else's.
    fn send_snapshot(&mut self, server: &str) {
        let own: Vec<String> = self.sessions.keys().cloned().collect();
        let is_master_link = self.master_id.as_deref() == Some(server);
        for user in &own {
            if is_master_link && let Some(session) = self.sessions.get(user) {
                let reg = registration(user, &session.key, session.proof.clone());
                self.send_link(server, "DB_REGISTER_USER", server, reg);
            }
            let adv = self.own_advert(user);
            self.send_link(server, "USER_ADVERTISE", ids::TO_ALL, adv);
        }
        if self.cfg.master {
            let others: Vec<(String, PresenceRecord)> = self
                .presence
                .iter()
                .filter(|(_, p)| p.live && p.location != server)
                .map(|(u, p)| (u.clone(), p.clone()))
                .collect();
            for (user, p) in others {
                let adv = payload_of(&Presence {
                    user_id: user,
                    location: p.location,
                    proof: p.proof,
                    extra: Map::new(),
                });
                self.send_link(server, "USER_ADVERTISE", ids::TO_ALL, adv);
            }
        }
    }

    fn link_closed(&mut self, conn: ConnId) {
        self.drop_link(conn);
    }

    fn drop_link(&mut self, conn: ConnId) {
        let Some(server) = self.conn_links.remove(&conn) else {
            return;
        };
        if self.links.get(&server).is_some_and(|l| l.conn == conn) {
            self.links.remove(&server);
            tracing::info!(server = %server, "link down");
            let carried: Vec<String> = self
                .presence
                .iter()
                .filter(|(_, p)| p.via == server && p.live)
                .map(|(u, _)| u.clone())
                .collect();
            for user in carried {
                let Some(p) = self.presence.get_mut(&user) else {
                    continue;
                };
                p.live = false;
                if self.cfg.master {
                    let remove = payload_of(&Presence {
                        user_id: user,
                        location: p.location.clone(),
                        proof: None,
                        extra: Map::new(),
                    });
                    self.broadcast(Some(&server), "USER_REMOVE", &remove);
                }
            }
        }
    }

    fn link_frame(&mut self, conn: ConnId, env: Envelope, msg: Message) {
        let Some(server) = self.conn_links.get(&conn).cloned() else {
            return;
        };
        let from = Some(server.as_str());
        // A frame addressed to another server is forwarded as it is.
        if self.cfg.master
            && env.to != self.cfg.me
            && ids::check_server(&env.to).is_ok()
            && !matches!(msg, Message::PeerHelloLink(_))
        {
            if env.to != server {
                let kind = msg.type_name();
                self.send_link(&env.to.clone(), kind, &env.to, msg.to_payload());
            }
            return;
        }
        match msg {
            Message::UserAdvertise(p) => self.peer_advertise(&server, p),
            Message::UserRemove(p) => self.peer_remove(&server, p),
            Message::DbRegisterUser(r) => self.peer_register(&server, r),
            Message::DbGetUser(q) if self.cfg.master => {
                let answer = payload_of(&DirectoryAnswer {
                    user_id: q.user_id.clone(),
                    found: self.users.contains_key(&q.user_id),
                    pubkey: self
                        .users
                        .get(&q.user_id)
                        .map(|u| u.pubkey.clone())
                        .unwrap_or_default(),
                    req_id: q.req_id,
                    extra: Map::new(),
                });
                self.send_link(&server, "DB_USER", &server, answer);
            }
            Message::DbUser(a) => self.directory_answer(a),
            Message::PeerDeliver(d) => {
                let recipient = d.user_id.clone();
                let sender = d.sender.clone();
                self.route_to_user(
                    from,
                    "PEER_DELIVER",
                    "USER_DELIVER",
                    &recipient,
                    payload_of(&d),
                    &sender,
                );
            }
            Message::GroupKeyShare(share) => {
                let sender = share.creator.clone();
                self.route_share(from, &sender, share);
            }
            Message::MsgGroup(m) => {
                let sender = m.from.clone();
                self.route_group_msg(from, &sender, m);
            }
            Message::FileStart(_) | Message::FileChunk(_) | Message::FileEnd(_) => {
                self.link_file(&server, &env, msg)
            }
            Message::Error(e) => self.peer_error(&server, &env, e),
            Message::Heartbeat(_) | Message::Ack(_) | Message::PeerHelloLink(_) => {}
            other => {
                tracing::debug!(server = %server, kind = other.type_name(), "ignored link frame")
            }
        }
    }

    fn link_file(&mut self, server: &str, env: &Envelope, msg: Message) {
        let user_id = match &msg {
            Message::FileStart(FileStart { user_id, .. })
            | Message::FileChunk(FileChunk { user_id, .. })
            | Message::FileEnd(FileEnd { user_id, .. }) => user_id.clone(),
            _ => None,
        };
        match user_id {
            Some(recipient) => {
                let kind = msg.type_name();
                self.route_to_user(
                    Some(server),
                    kind,
                    kind,
                    &recipient,
                    msg.to_payload(),
                    &env.from,
                );
            }
            None if ids::check_group(&env.to).is_ok() => {
                let sender = env.from.clone();
                self.route_group_file(Some(server), &sender, &env.to.clone(), msg);
            }
            None => tracing::debug!(server, "file frame without user_id or group"),
        }
    }

    fn peer_error(&mut self, server: &str, env: &Envelope, e: ErrorBody) {
        tracing::info!(server, code = %e.code, detail = %e.detail, "error from peer");
        if let Some(Value::String(user)) = e.extra.get("refused_user")
            && let Some(conn) = self.sessions.get(user).map(|s| s.conn)
        {
            let user = user.clone();
            return self.refuse(conn, &user, code_of(&e.code), e.detail.clone());
        }
        if let Some(conn) = self.sessions.get(&env.to).map(|s| s.conn) {
            let to = env.to.clone();
            self.send(
                conn,
                "ERROR",
                &to,
                error_payload(code_of(&e.code), e.detail),
            );
        }
    }

    fn directory_answer(&mut self, a: DirectoryAnswer) {
        if a.found && !self.users.contains_key(&a.user_id) && PublicKey::from_b64(&a.pubkey).is_ok()
        {
            let rec = UserRecord::new(a.pubkey.clone(), false, self.now);
            self.users.insert(a.user_id.clone(), rec.clone());
            self.persist(StoreOp::PinUser(a.user_id.clone(), rec));
        }
        match self.pending.remove(&a.req_id) {
            Some(Pending::Lookup { conn, user_id }) if user_id == a.user_id => {
                if let Some(user) = self.conn_users.get(&conn).cloned() {
                    let pubkey = a.found.then_some(a.pubkey.as_str());
                    self.send(
                        conn,
                        "USER_DB_USER",
                        &user,
                        lookup_answer(&a.user_id, pubkey),
                    );
                }
            }
            Some(Pending::Hello(hello)) if hello.user_id == a.user_id => {
                let user = hello.user_id.clone();
                if !a.found {
                    self.refuse(
                        hello.conn,
                        &user,
                        ErrorCode::NotAllowed,
                        "the master refused to register this user",
                    );
                } else if a.pubkey != hello.key.to_b64() {
                    self.refuse(
                        hello.conn,
                        &user,
                        ErrorCode::BadKey,
                        format!("{user} is registered with another key; pick another user id"),
                    );
                } else {
                    self.accept_user(hello);
                }
            }
            _ => {}
        }
    }

    // ---- presence and directory from peers (PROTOCOL.md C5) ----

    fn peer_register(&mut self, server: &str, r: RegisterUser) {
        if !self.cfg.master {
            return;
        }
        let refuse = |this: &mut Self, code: ErrorCode, detail: String| {
            tracing::warn!(server, user = %truncate(&r.user_id), %detail, "registration refused");
            let mut payload = error_payload(code, detail);
            payload.insert("refused_user".into(), Value::String(r.user_id.clone()));
            this.send_link(server, "ERROR", &r.user_id, payload);
        };
        if ids::check_user(&r.user_id).is_err() || PublicKey::from_b64(&r.pubkey).is_err() {
            return refuse(self, ErrorCode::BadKey, "bad user id or key".into());
        }
        if let Some(proof) = &r.proof
            && !proof_signed_by(proof, &r.user_id, &r.pubkey)
        {
            return refuse(
                self,
                ErrorCode::InvalidSig,
                "registration proof does not verify".into(),
            );
        }
        match self.users.get(&r.user_id) {
            Some(rec) if rec.pubkey != r.pubkey => refuse(
                self,
                ErrorCode::BadKey,
                format!(
                    "{} is registered with another key; pick another user id",
                    r.user_id
                ),
            ),
            Some(_) => {}
            None => {
                let rec = UserRecord::new(r.pubkey.clone(), r.proof.is_none(), self.now);
                self.users.insert(r.user_id.clone(), rec.clone());
                self.persist(StoreOp::PinUser(r.user_id.clone(), rec));
            }
        }
    }

    fn peer_advertise(&mut self, server: &str, p: Presence) {
        let from_master = self.master_id.as_deref() == Some(server);
        if p.location == self.cfg.me || ids::check_user(&p.user_id).is_err() {
            return;
        }
        if self.cfg.master {
            if p.location != server {
                tracing::warn!(server, user = %p.user_id, location = %truncate(&p.location), "refused presence for another server");
                return;
            }
            if let Err(why) = self.check_claim(server, &p) {
                tracing::warn!(server, user = %p.user_id, why, "refused presence claim");
                return;
            }
        } else if !from_master {
            tracing::debug!(server, user = %p.user_id, "presence from a peer ignored: the master relays it");
            return;
        }
        if self.sessions.contains_key(&p.user_id) {
            return;
        }
        let rec = PresenceRecord {
            location: p.location.clone(),
            via: server.to_owned(),
            proof: p.proof.clone(),
            live: true,
            updated_ms: self.now,
        };
        self.presence.insert(p.user_id.clone(), rec.clone());
        self.persist(StoreOp::SetPresence(p.user_id.clone(), rec));
        if self.cfg.master {
            let relay = payload_of(&p);
            self.broadcast(Some(server), "USER_ADVERTISE", &relay);
        }
    }

    /// The master's check of a presence claim: a proof signed with the user's
    /// directory key, fresh when first seen and owned by the first server
    /// that presented it; no proof only for legacy users.
    fn check_claim(&mut self, server: &str, p: &Presence) -> Result<(), &'static str> {
        let Some(rec) = self.users.get(&p.user_id) else {
            return Err("user is not registered");
        };
        let Some(proof) = &p.proof else {
            return if rec.legacy {
                Ok(())
            } else {
                Err("no proof for a signed user")
            };
        };
        if !proof_signed_by(proof, &p.user_id, &rec.pubkey) {
            return Err("proof is not signed with the directory key");
        }
        let digest = proof_digest(proof);
        match self.proof_owners.get(&digest) {
            Some(owner) if owner == server => Ok(()),
            Some(_) => Err("proof belongs to another server"),
            None => {
                let ts = proof.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
                if (self.now - ts).abs() > HELLO_FRESHNESS_MS {
                    return Err("stale proof");
                }
                self.proof_owners.insert(digest, server.to_owned());
                self.persist(StoreOp::ProofOwner(
                    digest,
                    server.to_owned(),
                    p.user_id.clone(),
                ));
                Ok(())
            }
        }
    }

    fn peer_remove(&mut self, server: &str, p: Presence) {
        let trusted = self.master_id.as_deref() == Some(server) || p.location == server;
        if !trusted {
            return;
        }
        if self
            .presence
            .get(&p.user_id)
            .is_some_and(|rec| rec.location == p.location)
        {
            self.presence.remove(&p.user_id);
            self.persist(StoreOp::RemovePresence(p.user_id.clone()));
            if self.cfg.master {
                let relay = payload_of(&Presence { proof: None, ..p });
                self.broadcast(Some(server), "USER_REMOVE", &relay);
            }
        }
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

fn registration(user: &str, pubkey: &str, proof: Option<Proof>) -> Map<String, Value> {
    payload_of(&RegisterUser {
        user_id: user.to_owned(),
        pubkey: pubkey.to_owned(),
        proof,
        extra: Map::new(),
    })
}

fn lookup_answer(user: &str, pubkey: Option<&str>) -> Map<String, Value> {
    payload_of(&UserLookupAnswer {
        user_id: user.to_owned(),
        found: pubkey.is_some(),
        pubkey: pubkey.unwrap_or_default().to_owned(),
        extra: Map::new(),
    })
}

fn with_user_id(mut payload: Map<String, Value>, user: &str) -> Map<String, Value> {
    payload.insert("user_id".into(), Value::String(user.to_owned()));
    payload
}

fn take_recipients(extra: &mut Map<String, Value>) -> Option<Vec<String>> {
    let value = extra.remove("recipients")?;
    serde_json::from_value(value).ok()
}

fn code_of(code: &str) -> ErrorCode {
    serde_json::from_value(Value::String(code.to_owned())).unwrap_or(ErrorCode::NotAllowed)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PrivateKey;
    use serde_json::json;

    fn key(name: &str) -> PrivateKey {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/vectors/keys")
            .join(format!("{name}.pem"));
        PrivateKey::load(&path).unwrap()
    }

    fn router(master: bool) -> Router {
        let cfg = RouterConfig {
            me: if master {
                "master_server_m".into()
            } else {
                "server_l".into()
            },
            master,
            allow_legacy: false,
            pubkey: String::new(),
            host: "127.0.0.1".into(),
            port: 1,
        };
        Router::new(cfg, Snapshot::default())
    }

    fn signed_hello(conn: ConnId, user: &str, k: &PrivateKey, now: i64) -> Input {
        let Value::Object(payload) = json!({"client": "t", "pubkey": k.public().to_b64(),
            "enc_pubkey": k.public().to_b64(), "ts": now, "user_id": user})
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
        })
    }

    fn sends(out: &[Output]) -> Vec<(ConnId, &'static str, String)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(c, f) => Some((*c, f.kind, f.to.clone())),
                _ => None,
            })
            .collect()
    }

    fn error_code(out: &[Output]) -> Option<String> {
        out.iter().find_map(|o| match o {
            Output::Send(_, f) if f.kind == "ERROR" => {
                f.payload["code"].as_str().map(str::to_owned)
            }
            _ => None,
        })
    }

    fn dm(from: &str, to: &str) -> Input {
        let Value::Object(payload) = json!({"ciphertext": "c", "iv": "i", "tag": "t", "wrapped_key": "w",
            "sender_pub": "p", "content_sig": "s", "content_ts": 1})
        else {
            unreachable!()
        };
        let env = Envelope::new("MSG_PRIVATE", from, to, payload);
        let msg = Message::from_envelope(&env).unwrap();
        Input::UserFrame { conn: 1, env, msg }
    }

    #[test]
    fn master_welcomes_pins_and_refuses_replays() {
        let mut r = router(true);
        let alice = key("alice");
        let hello = signed_hello(1, "alice", &alice, 1000);
        let out = r.step(1000, hello.clone());
        assert_eq!(sends(&out), vec![(1, "USER_WELCOME", "alice".into())]);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Persist(StoreOp::PinUser(u, _)) if u == "alice"))
        );
        assert_eq!(r.online(), vec!["alice".to_owned()]);
        r.step(1001, Input::UserClosed(1));
        assert!(r.online().is_empty());
        let Input::UserHello(mut again) = hello else {
            unreachable!()
        };
        again.conn = 2;
        let out = r.step(1002, Input::UserHello(again));
        assert_eq!(error_code(&out).as_deref(), Some("INVALID_SIG"));
        assert!(out.contains(&Output::Close(2)));
    }

    #[test]
    fn pinned_key_and_second_session_are_refused() {
        let mut r = router(true);
        r.step(1000, signed_hello(1, "alice", &key("alice"), 1000));
        let out = r.step(1000, signed_hello(2, "alice", &key("alice"), 1000));
        assert_eq!(error_code(&out).as_deref(), Some("NAME_IN_USE"));
        r.step(1000, Input::UserClosed(1));
        let out = r.step(1000, signed_hello(3, "alice", &key("bob"), 1000));
        assert_eq!(error_code(&out).as_deref(), Some("BAD_KEY"));
    }

    #[test]
    fn dms_are_delivered_here_or_reported() {
        let mut r = router(true);
        r.step(0, signed_hello(1, "alice", &key("alice"), 0));
        r.step(0, signed_hello(2, "bob", &key("bob"), 0));
        let out = r.step(0, dm("alice", "bob"));
        assert_eq!(sends(&out), vec![(2, "USER_DELIVER", "bob".into())]);
        let Output::Send(_, frame) = &out[0] else {
            unreachable!()
        };
        assert_eq!(frame.payload["sender"], "alice");
        assert_eq!(frame.payload["user_id"], "bob");
        let out = r.step(0, dm("alice", "nobody"));
        assert_eq!(error_code(&out).as_deref(), Some("USER_NOT_FOUND"));
        r.step(0, Input::UserClosed(2));
        let out = r.step(0, dm("alice", "bob"));
        let Output::Send(_, f) = &out[0] else {
            panic!()
        };
        assert!(f.payload["detail"].as_str().unwrap().contains("offline"));
        // Sender binding: a frame whose from is not the session's user.
        let out = r.step(0, dm("mallory", "alice"));
        assert_eq!(error_code(&out).as_deref(), Some("NOT_ALLOWED"));
    }

    fn link(
        conn: ConnId,
        id: &str,
        k: &PrivateKey,
        role: Role,
        socp: bool,
        dialed_master: bool,
    ) -> Input {
        Input::LinkHello(LinkHelloIn {
            conn,
            server_id: id.into(),
            key: k.public().clone(),
            role,
            host: "h".into(),
            port: 1,
            ts: 5,
            socp,
            dialed: dialed_master,
            dialed_master,
        })
    }

    #[test]
    fn local_forwards_unknown_recipients_to_the_master() {
        let mut r = router(false);
        r.step(
            0,
            link(
                9,
                "master_server_m",
                &key("carol"),
                Role::Master,
                true,
                true,
            ),
        );
        let out = r.step(0, signed_hello(1, "alice", &key("alice"), 0));
        // Unknown user: register, then confirm the pinned key, before welcoming.
        assert_eq!(
            sends(&out).iter().map(|s| s.1).collect::<Vec<_>>(),
            ["DB_REGISTER_USER", "DB_GET_USER"]
        );
        let req = out
            .iter()
            .find_map(|o| match o {
                Output::Send(_, f) if f.kind == "DB_GET_USER" => Some(f.payload["req_id"].clone()),
                _ => None,
            })
            .unwrap();
        let Value::Object(answer) = json!({"user_id": "alice", "found": true,
            "pubkey": key("alice").public().to_b64(), "req_id": req})
        else {
            unreachable!()
        };
        let env = Envelope::new("DB_USER", "master_server_m", "server_l", answer);
        let msg = Message::from_envelope(&env).unwrap();
        let out = r.step(0, Input::LinkFrame { conn: 9, env, msg });
        assert!(sends(&out).contains(&(1, "USER_WELCOME", "alice".into())));
        let out = r.step(0, dm("alice", "zed"));
        assert_eq!(
            sends(&out),
            vec![(9, "PEER_DELIVER", "master_server_m".into())]
        );
    }

    #[test]
    fn master_refuses_presence_without_proof_and_drops_dormant_users_of_socp_peers() {
        let mut r = router(true);
        let l1 = "server_11111111-1111-4111-8111-111111111111";
        r.step(0, link(7, l1, &key("carol"), Role::Local, true, false));
        r.step(0, signed_hello(1, "alice", &key("alice"), 0));
        r.step(0, Input::UserClosed(1));
        // A claim without proof for a signed user is refused.
        let Value::Object(p) = json!({"user_id": "alice", "location": l1}) else {
            unreachable!()
        };
        let env = Envelope::new("USER_ADVERTISE", l1, "*", p);
        let msg = Message::from_envelope(&env).unwrap();
        r.step(0, Input::LinkFrame { conn: 7, env, msg });
        assert!(r.online().is_empty());
        // With alice's fresh signed hello as proof, it is accepted and listed.
        let Input::UserHello(h) = signed_hello(0, "alice", &key("alice"), 10) else {
            unreachable!()
        };
        let proof = serde_json::to_value(h.proof.unwrap()).unwrap();
        let Value::Object(p) = json!({"user_id": "alice", "location": l1, "proof": proof}) else {
            unreachable!()
        };
        let env = Envelope::new("USER_ADVERTISE", l1, "*", p);
        let msg = Message::from_envelope(&env).unwrap();
        r.step(10, Input::LinkFrame { conn: 7, env, msg });
        assert_eq!(r.online(), ["alice"]);
        // The link drops: alice is no longer listed; a socp peer re-advertises
        // after relinking, so the dormant entry is dropped, not restored.
        r.step(20, Input::LinkClosed(7));
        assert!(r.online().is_empty());
        let Input::LinkHello(mut again) = link(8, l1, &key("carol"), Role::Local, true, false)
        else {
            unreachable!()
        };
        again.ts = 6;
        r.step(30, Input::LinkHello(again));
        assert!(r.online().is_empty());
    }

    #[test]
    fn a_lookup_the_master_does_not_answer_times_out() {
        let mut r = router(false);
        r.step(
            0,
            link(
                9,
                "master_server_m",
                &key("carol"),
                Role::Master,
                true,
                true,
            ),
        );
        let out = r.step(0, signed_hello(1, "alice", &key("alice"), 0));
        let req = out
            .iter()
            .find_map(|o| match o {
                Output::Timer { req_id, after } => {
                    assert_eq!(*after, LOOKUP_TIMEOUT);
                    Some(req_id.clone())
                }
                _ => None,
            })
            .unwrap();
        let out = r.step(5000, Input::Timeout(req));
        assert_eq!(error_code(&out).as_deref(), Some("TIMEOUT"));
        assert!(out.contains(&Output::Close(1)));
    }
}
