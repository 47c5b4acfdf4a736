//! Server links and presence: link hellos and pinning, snapshots, link
//! loss, and the presence and directory frames of PROTOCOL.md C5.

use serde_json::{Map, Value};

use super::admission::RegSource;
use super::{
    ConnId, HELLO_FRESHNESS_MS, Link, LinkHelloIn, Output, Pending, Router, StoreOp, code_of,
    lookup_answer, our_caps, proof_digest, proof_signed_by, registration, session_offer, truncate,
};
use crate::crypto::PublicKey;
use crate::node::custody::{Dest, Hop};
use crate::node::policy::PolicyOp;
use crate::node::state::{PresenceRecord, ServerRecord, UserRecord};
use crate::wire::ids;
use crate::wire::messages::{
    DirectoryAnswer, ErrorBody, Message, PeerHelloLink, Presence, RegisterUser, Role,
};
use crate::wire::{Envelope, ErrorCode};

impl Router {
    pub(super) fn link_hello(&mut self, hello: LinkHelloIn) {
        let id = hello.server_id.clone();
        let key = hello.key.to_b64().to_owned();
        if id == self.cfg.me {
            return self.out.push(Output::Close(hello.conn));
        }
        // The master a local dialed is its trust anchor, pinned on its own;
        // every other link needs an --admit entry when there is a list.
        if !hello.dialed_master && !self.admits(&id, &hello.key) {
            tracing::warn!(server = %id, fingerprint = %hello.key.fingerprint(), "refused link: not admitted (--admit)");
            return self.refuse(
                hello.conn,
                &id,
                ErrorCode::NotAllowed,
                "this server is not admitted to the mesh: its operator must list its id or key fingerprint (--admit)",
            );
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
            // One live link per pair. Two servers that dial each other keep
            // the link the smaller id dialed; a server that dials again
            // replaces its old link (which may be dead without knowing it).
            let crossed = old.dialed != hello.dialed;
            let new_dialer = if hello.dialed {
                self.cfg.me.as_str()
            } else {
                id.as_str()
            };
            if crossed && new_dialer != self.cfg.me.as_str().min(id.as_str()) {
                tracing::debug!(server = %id, "closing a crossed duplicate link");
                return self.out.push(Output::Close(hello.conn));
            }
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
            let reply = Message::PeerHelloLink(PeerHelloLink {
                host: self.cfg.host.clone(),
                port: self.cfg.port,
                pubkey: self.cfg.pubkey.clone(),
                role: if self.cfg.master {
                    Role::Master
                } else {
                    Role::Local
                },
                caps: Some(our_caps(hello.session.is_some())),
                session: session_offer(&hello.session),
                extra: Map::new(),
            });
            self.send(hello.conn, &id, reply);
        }
        self.links.insert(
            id.clone(),
            Link {
                conn: hello.conn,
                socp: hello.socp,
                dialed: hello.dialed,
            },
        );
        self.conn_links.insert(hello.conn, id.clone());
        tracing::info!(server = %id, role = ?hello.role, "link up");
        self.restore_presence(&id, hello.socp);
        self.send_snapshot(&id);
        self.pump_all();
    }

    /// After a link forms: a `socp` peer re-advertises its users, so what we
    /// cached from it is dropped; a reference peer does not, so the cache is
    /// restored.
    pub(super) fn restore_presence(&mut self, server: &str, socp: bool) {
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
                let adv = Message::UserAdvertise(Presence {
                    user_id: user,
                    location: p.location.clone(),
                    proof: p.proof.clone(),
                    extra: Map::new(),
                });
                if self.cfg.master {
                    self.broadcast(Some(server), &adv);
                }
            }
        }
    }

    /// A new link learns who is online: our own users (registered first,
    /// if it is our master) and, from the master, everyone else's.
    pub(super) fn send_snapshot(&mut self, server: &str) {
        let own: Vec<String> = self.sessions.keys().cloned().collect();
        let is_master_link = self.master_id.as_deref() == Some(server);
        for user in &own {
            if is_master_link && let Some(session) = self.sessions.get(user) {
                let reg = registration(user, &session.key, session.proof.clone());
                self.send_link(server, server, reg);
            }
            let adv = self.own_advert(user);
            self.send_link(server, ids::TO_ALL, adv);
        }
        if self.cfg.master {
            let others: Vec<(String, PresenceRecord)> = self
                .presence
                .iter()
                .filter(|(_, p)| p.live && p.location != server)
                .map(|(u, p)| (u.clone(), p.clone()))
                .collect();
            for (user, p) in others {
                let adv = Message::UserAdvertise(Presence {
                    user_id: user,
                    location: p.location,
                    proof: p.proof,
                    extra: Map::new(),
                });
                self.send_link(server, ids::TO_ALL, adv);
            }
        }
    }

    pub(super) fn link_closed(&mut self, conn: ConnId) {
        self.drop_link(conn);
    }

    pub(super) fn drop_link(&mut self, conn: ConnId) {
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
                    let remove = Message::UserRemove(Presence {
                        user_id: user,
                        location: p.location.clone(),
                        proof: None,
                        extra: Map::new(),
                    });
                    self.broadcast(Some(&server), &remove);
                }
            }
            self.hop_down(&Hop::Link(server));
        }
    }

    pub(super) fn link_frame(&mut self, conn: ConnId, env: Envelope, msg: Message) {
        let Some(server) = self.sender(conn, &env, true) else {
            return;
        };
        // Receipts addressed to another server (on their way back to a
        // sender) are forwarded once checked; content is routed by its
        // recipients. Errors are never relayed this way: no server has one
        // for another server to pass on.
        if self.cfg.master
            && env.to != self.cfg.me
            && ids::check_server(&env.to).is_ok()
            && matches!(msg, Message::Receipt(_))
        {
            if env.to != server {
                let mut msg = msg;
                // A receipt is relayed only for DMs the master handed to the
                // server that sends it.
                if let Message::Receipt(r) = &mut msg {
                    let ids = std::mem::take(&mut r.msg_ids);
                    r.msg_ids =
                        self.receipt_ids_from(&server, &r.user_id.clone(), ids, &r.status.clone());
                    if r.msg_ids.is_empty() {
                        return;
                    }
                }
                // Only the master itself may refuse a user.
                msg.extra_mut().remove(REFUSED_USER);
                self.send_link(&env.to.clone(), &env.to, msg);
            }
            return;
        }
        match msg {
            Message::UserAdvertise(p) => self.peer_advertise(&server, p),
            Message::UserRemove(p) => self.peer_remove(&server, p),
            Message::DbRegisterUser(r) => self.peer_register(&server, r),
            Message::DbGetUser(q) if self.cfg.master => {
                let answer = Message::DbUser(DirectoryAnswer {
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
                self.send_link(&server, &server, answer);
            }
            Message::DbUser(a) => self.directory_answer(a),
            Message::PeerDeliver(_)
            | Message::GroupKeyShare(_)
            | Message::MsgGroup(_)
            | Message::FileStart(_)
            | Message::FileChunk(_)
            | Message::FileEnd(_) => self.link_content(conn, &server, env, msg),
            Message::Ack(a) => self.acked(Hop::Link(server), a.msg_ids),
            Message::Receipt(r) => {
                let user = r.user_id.clone();
                let ids = self.receipt_ids_from(&server, &user, r.msg_ids, &r.status);
                if !ids.is_empty() {
                    self.send_receipt(Some(&server), &user, ids, &r.status);
                }
            }
            Message::Error(e) => self.peer_error(&server, &env, e),
            Message::Heartbeat(_) | Message::PeerHelloLink(_) => {}
            other => {
                tracing::debug!(server = %server, kind = other.type_name(), "ignored link frame")
            }
        }
    }

    pub(super) fn peer_error(&mut self, server: &str, env: &Envelope, e: ErrorBody) {
        tracing::info!(server, code = %e.code, detail = %truncate(&e.detail), "error from peer");
        // Only the directory may refuse a user, and only to the server that
        // asked to register them: from anyone else (or relayed for anyone
        // else) it would let one server disconnect users hosted elsewhere
        // (PROTOCOL.md C13).
        let from_master = !self.cfg.master && self.master_id.as_deref() == Some(server);
        if let Some(Value::String(user)) = e.extra.get(REFUSED_USER) {
            if !from_master {
                tracing::warn!(server, user = %truncate(user), "ignored a user refusal from a server that is not our master");
                return;
            }
            // The master refused a registration we asked for: the user
            // waiting for it hears why.
            if let Some(req) = self.pending.iter().find_map(|(req, p)| {
                matches!(p, Pending::Hello(h) if h.user_id == *user).then(|| req.clone())
            }) && let Some(Pending::Hello(hello)) = self.pending.remove(&req)
            {
                let user = user.clone();
                return self.refuse(hello.conn, &user, code_of(&e), e.detail);
            }
            if let Some(conn) = self.sessions.get(user).map(|s| s.conn) {
                let user = user.clone();
                return self.refuse(conn, &user, code_of(&e), e.detail.clone());
            }
            return;
        }
        // The next hop could not store content we handed it: it keeps
        // nothing, so we send it again a little later (until then it holds
        // no window slot, and nothing behind it waits on it).
        if e.error_code() == Some(ErrorCode::Storage)
            && env.to == self.cfg.me
            && let Some(id) = e.msg_id()
        {
            let dests = self.custody.requeue(&Hop::Link(server.to_owned()), id);
            if !dests.is_empty() {
                let req_id = self.new_req_id();
                self.pending.insert(req_id.clone(), Pending::Retry(dests));
                self.out.push(Output::Timer {
                    req_id,
                    after: STORAGE_RETRY,
                });
            }
            return;
        }
        // An error for a user (PROTOCOL.md C13): from our master (which
        // checks what it relays), or about a DM of theirs we handed to the
        // server that sends it. Anything else would let any server tell any
        // user their messages failed.
        let user = env.to.clone();
        let msg_id = e.msg_id();
        let carried = msg_id.is_some_and(|id| self.carried.went_to(&user, id, server));
        if !(from_master || carried) {
            tracing::info!(server, user = %truncate(&user), "dropped an error for a user from a server that did not carry their content");
            return;
        }
        let error = Message::Error(ErrorBody::about(code_of(&e), e.detail.clone(), msg_id));
        if let Some(conn) = self.sessions.get(&user).map(|s| s.conn) {
            self.send(conn, &user, error);
            return;
        }
        // The master passes it on to the server the user is on.
        if self.cfg.master
            && let Some(loc) = self
                .presence
                .get(&user)
                .filter(|p| p.live && p.location != server)
                .map(|p| p.location.clone())
        {
            self.send_link(&loc, &user, error);
        }
    }

    pub(super) fn directory_answer(&mut self, a: DirectoryAnswer) {
        if a.found && PublicKey::from_b64(&a.pubkey).is_ok() {
            match self.users.get_mut(&a.user_id) {
                None => {
                    let rec = UserRecord::new(a.pubkey.clone(), false, self.now);
                    self.users.insert(a.user_id.clone(), rec.clone());
                    self.persist(StoreOp::PinUser(a.user_id.clone(), rec));
                }
                // The master is the directory: a key its operator reset
                // replaces what this local cached.
                Some(rec) if rec.pubkey != a.pubkey && self.master_id.is_some() => {
                    tracing::warn!(user = %a.user_id, "the master has a new key for this user (reset by its operator)");
                    rec.pubkey = a.pubkey.clone();
                    self.persist(StoreOp::Policy(PolicyOp::ReplaceKey {
                        user: a.user_id.clone(),
                        pubkey: a.pubkey.clone(),
                    }));
                }
                Some(_) => {}
            }
        }
        match self.pending.remove(&a.req_id) {
            Some(Pending::Lookup { conn, user_id }) if user_id == a.user_id => {
                if let Some(user) = self.conn_users.get(&conn).cloned() {
                    let pubkey = a.found.then_some(a.pubkey.as_str());
                    self.send(conn, &user, lookup_answer(&a.user_id, pubkey));
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

    pub(super) fn peer_register(&mut self, server: &str, r: RegisterUser) {
        if !self.cfg.master {
            return;
        }
        let refuse = |this: &mut Self, code: ErrorCode, detail: String| {
            tracing::warn!(server, user = %truncate(&r.user_id), %detail, "registration refused");
            let mut error = ErrorBody::new(code, detail);
            error
                .extra
                .insert(REFUSED_USER.into(), Value::String(r.user_id.clone()));
            this.send_link(server, &r.user_id, Message::Error(error));
        };
        if ids::check_user(&r.user_id).is_err() || PublicKey::from_b64(&r.pubkey).is_err() {
            return refuse(self, ErrorCode::BadKey, "bad user id or key".into());
        }
        // A server may register only the users whose signed hello it
        // carries (C13); proofless registrations are for legacy clients.
        match &r.proof {
            None if !self.cfg.allow_legacy => {
                return refuse(
                    self,
                    ErrorCode::NotAllowed,
                    "a registration needs the user's signed hello as proof (this master admits no legacy clients)".into(),
                );
            }
            Some(proof) if !proof_signed_by(proof, &r.user_id, &r.pubkey) => {
                return refuse(
                    self,
                    ErrorCode::InvalidSig,
                    "registration proof does not verify".into(),
                );
            }
            _ => {}
        }
        let known = self.users.get(&r.user_id).map(|rec| rec.pubkey == r.pubkey);
        match known {
            Some(true) => {}
            Some(false) if !self.policy.resets.contains(&r.user_id) => refuse(
                self,
                ErrorCode::BadKey,
                format!(
                    "{} is registered with another key; pick another user id",
                    r.user_id
                ),
            ),
            _ => {
                // A new id: its proof must be fresh, not a hello kept from
                // long ago, and the policy and the server's rate apply.
                if let Some(proof) = &r.proof {
                    let ts = proof.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
                    if (self.now - ts).abs() > HELLO_FRESHNESS_MS {
                        return refuse(
                            self,
                            ErrorCode::InvalidSig,
                            "stale registration proof".into(),
                        );
                    }
                }
                let source = Some(RegSource::Server(server.to_owned()));
                if let Err((code, detail)) =
                    self.register_new(&r.user_id, &r.pubkey, r.proof.as_ref(), source)
                {
                    refuse(self, code, detail);
                }
            }
        }
    }

    pub(super) fn peer_advertise(&mut self, server: &str, p: Presence) {
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
            let user = p.user_id.clone();
            self.broadcast(Some(server), &Message::UserAdvertise(p));
            return self.pump(&Dest::User(user));
        }
        self.pump(&Dest::User(p.user_id));
    }

    /// The master's check of a presence claim: a proof signed with the user's
    /// directory key, fresh when first seen and owned by the first server
    /// that presented it; no proof only for legacy users.
    pub(super) fn check_claim(&mut self, server: &str, p: &Presence) -> Result<(), &'static str> {
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
            Some(owner) if owner.server == server => Ok(()),
            Some(_) => Err("proof belongs to another server"),
            None => {
                let ts = proof.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
                if (self.now - ts).abs() > HELLO_FRESHNESS_MS {
                    return Err("stale proof");
                }
                self.own_proof(digest, server, &p.user_id);
                Ok(())
            }
        }
    }

    pub(super) fn peer_remove(&mut self, server: &str, p: Presence) {
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
                let relay = Message::UserRemove(Presence { proof: None, ..p });
                self.broadcast(Some(server), &relay);
            }
        }
    }
}

/// How long content the next hop could not store waits before it is sent
/// again.
pub const STORAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The field of an `ERROR` from the master that names the user whose
/// registration it refused (a `socp` extension).
const REFUSED_USER: &str = "refused_user";
