//! Server links: link hellos and pinning (PROTOCOL.md C5), link loss, and
//! what a link's frames are dispatched to (presence, directory, content,
//! acks, receipts, errors).

use serde_json::{Map, Value};

use super::owed::Owed;
use super::{
    ConnId, Link, LinkHelloIn, Output, Pending, Router, StoreOp, code_of, our_caps, session_offer,
    truncate,
};
use crate::node::custody::Hop;
use crate::node::records::ServerRecord;
use crate::wire::ids;
use crate::wire::messages::{ErrorBody, Message, PeerHelloLink, Receipt, Role};
use crate::wire::{Envelope, ErrorCode};

impl Router {
    pub(super) fn link_hello(&mut self, mut hello: LinkHelloIn) {
        // A `socp` hello signs its `ts`: that one counts, not the envelope's.
        if let Some(ts) = signed_ts(&hello) {
            hello.ts = ts;
        }
        match self.link_refusal(&hello) {
            Some(NoLink::Close) => return self.out.push(Output::Close(hello.conn)),
            Some(NoLink::Refuse(code, detail)) => {
                return self.refuse(hello.conn, &hello.server_id, code, detail);
            }
            None => {}
        }
        self.remember_link_hello(&hello);
        if self.hold_link(&hello) {
            return self.answer_link_hello(&hello);
        }
        self.take_link(hello, false);
    }

    /// Makes `hello`'s connection the link to its server (`answered`: our
    /// answer went out when it was held).
    pub(super) fn take_link(&mut self, hello: LinkHelloIn, answered: bool) {
        if !self.keep_one_link(&hello) {
            return self.out.push(Output::Close(hello.conn));
        }
        let id = hello.server_id.clone();
        let rec = ServerRecord {
            pubkey: hello.key.to_b64().to_owned(),
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
            self.master_serves_lookups = hello.lookup;
        }
        if !hello.dialed && !answered {
            self.answer_link_hello(&hello);
        }
        // A `socp` acceptor holds a second link from us until its first
        // MAC'd frame (`link_hold.rs`): this is ours, at once.
        if hello.dialed && hello.socp {
            let beat = Message::Heartbeat(Default::default());
            self.send(hello.conn, &hello.server_id, beat);
        }
        let link = Link {
            conn: hello.conn,
            socp: hello.socp,
            answers_registrations: hello.answers_registrations,
            lookup: hello.lookup,
            dialed: hello.dialed,
        };
        self.links.insert(id.clone(), link);
        self.conn_links.insert(hello.conn, id.clone());
        tracing::info!(server = %id, role = ?hello.role, "link up");
        self.restore_presence(&id, hello.socp);
        self.send_snapshot(&id);
        if hello.dialed_master {
            self.resubscribe();
        }
        self.announce_local(&hello);
        self.pump_all();
    }

    /// Why a link hello is not taken, if it is not: a link to ourselves, a
    /// server not admitted, a key or hello that does not match what is
    /// pinned, a role this node does not take from it.
    fn link_refusal(&self, hello: &LinkHelloIn) -> Option<NoLink> {
        let id = &hello.server_id;
        if *id == self.cfg.me {
            return Some(NoLink::Close);
        }
        // Meant for another server (an announced address that leads here):
        // taking it would replace the link this server already has.
        if hello.to != self.cfg.me && ids::check_server(&hello.to).is_ok() {
            tracing::warn!(server = %id, "refused link: its hello names another server");
            return Some(NoLink::Close);
        }
        if !hello.dialed
            && let Some(refusal) = self.link_hello_replayed(hello)
        {
            return Some(refusal);
        }
        // The master a local dialed is its trust anchor, pinned on its own;
        // every other link needs an --admit entry when there is a list.
        if !hello.dialed_master && !self.admits(id, &hello.key) {
            tracing::warn!(server = %id, fingerprint = %hello.key.fingerprint(), "refused link: not admitted (--admit)");
            return Some(NoLink::Refuse(
                ErrorCode::NotAllowed,
                "this server is not admitted to the mesh: its operator must list its id or key fingerprint (--admit)",
            ));
        }
        // A reference hello's `ts` is the envelope's, outside the signature,
        // and anyone holding the hello may send it: one dated in the future
        // would be pinned below and refuse the server's own hellos until
        // then. (A hello that answers ours came from the address we chose:
        // its clock is its own.)
        if !hello.dialed && hello.ts > self.now.saturating_add(super::HELLO_FRESHNESS_MS) {
            tracing::warn!(server = %id, "refused link: its hello is dated in the future");
            return Some(NoLink::Refuse(
                ErrorCode::NotAllowed,
                "link hello is dated more than 120 s ahead of this server's clock",
            ));
        }
        if let Some(rec) = self.servers.get(id) {
            if rec.pubkey != hello.key.to_b64() {
                tracing::warn!(server = %id, "refused link: server id is pinned to another key");
                return Some(NoLink::Refuse(
                    ErrorCode::BadKey,
                    "this server id is pinned to another key",
                ));
            }
            if hello.ts <= rec.hello_ts {
                tracing::warn!(server = %id, "refused link: its hello is not newer than the last one (a replay?)");
                return Some(NoLink::Refuse(
                    ErrorCode::NotAllowed,
                    "link hello is not newer than the last accepted one (replayed, or the clock went back)",
                ));
            }
        }
        match (self.cfg.master, hello.role) {
            (true, Role::Master) => {
                let detail = "a mesh has one master";
                return Some(NoLink::Refuse(ErrorCode::NotAllowed, detail));
            }
            (false, Role::Master) if !hello.dialed_master => {
                let detail = "only the master we dial may link as master";
                return Some(NoLink::Refuse(ErrorCode::NotAllowed, detail));
            }
            (false, Role::Local) if hello.dialed_master => {
                tracing::warn!(server = %id, "--master-url answered as a local, not a master");
                return Some(NoLink::Close);
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
            return Some(NoLink::Close);
        }
        None
    }

    /// One live link per pair. Two servers that dial each other keep the
    /// link the smaller id dialed; a server that dials again replaces its
    /// old link (which may be dead without knowing it). False if the new
    /// link is the one to close.
    fn keep_one_link(&mut self, hello: &LinkHelloIn) -> bool {
        let id = hello.server_id.as_str();
        let Some(old) = self.links.get(id) else {
            return true;
        };
        let crossed = old.dialed != hello.dialed;
        let new_dialer = if hello.dialed {
            self.cfg.me.as_str()
        } else {
            id
        };
        if crossed && new_dialer != self.cfg.me.as_str().min(id) {
            tracing::debug!(server = %id, "closing a crossed duplicate link");
            return false;
        }
        let old_conn = old.conn;
        self.out.push(Output::Close(old_conn));
        self.drop_link(old_conn);
        true
    }

    /// The acceptor's answer to a link hello: our own hello, with the
    /// `mac-v1` offer if the connection made one.
    pub(super) fn answer_link_hello(&mut self, hello: &LinkHelloIn) {
        let role = if self.cfg.master {
            Role::Master
        } else {
            Role::Local
        };
        let reply = Message::PeerHelloLink(PeerHelloLink {
            host: self.cfg.host.clone(),
            port: self.cfg.port,
            pubkey: self.cfg.pubkey.clone(),
            role,
            caps: Some(our_caps(hello.session.is_some(), self.cfg.lists_lookup())),
            session: session_offer(&hello.session),
            extra: answer_fields(&self.cfg.url, &hello.server_id, self.now),
        });
        self.send(hello.conn, &hello.server_id, reply);
    }

    pub(super) fn link_closed(&mut self, conn: ConnId) {
        self.held.remove(&conn);
        self.drop_link(conn);
    }

    pub(super) fn drop_link(&mut self, conn: ConnId) {
        let Some(server) = self.conn_links.remove(&conn) else {
            return;
        };
        if self.links.get(&server).is_some_and(|l| l.conn == conn) {
            self.links.remove(&server);
            self.forget_announced(&server);
            self.subs.drop_server(&server);
            self.owed.drop_server(&server);
            tracing::info!(server = %server, "link down");
            let carried: Vec<String> = self
                .presence
                .iter()
                .filter(|(_, p)| p.via == server && p.live)
                .map(|(u, _)| u.clone())
                .collect();
            for user in carried {
                // A local whose master link dropped keeps the users a live
                // direct link vouches for: their own server (it tells us
                // when they leave, `USER_REMOVE`).
                if self.vouched_by_peer(&user) {
                    continue;
                }
                let Some(p) = self.presence.get_mut(&user) else {
                    continue;
                };
                p.live = false;
                self.online.set(&user, super::online::REMOTE, false);
                if self.cfg.master {
                    let location = p.location.clone();
                    self.owe_to_all(&server, &user, &Owed::Gone(location));
                }
            }
            self.hop_down(&Hop::Link(server));
        }
    }

    pub(super) fn link_frame(&mut self, conn: ConnId, env: Envelope, msg: Message) {
        if !self.proved(conn, &env) {
            return;
        }
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
            && let Message::Receipt(r) = msg
        {
            return self.relay_receipt(&server, &env.to, r);
        }
        match msg {
            Message::UserAdvertise(p) => self.peer_advertise(&server, p),
            Message::UserRemove(p) => self.peer_remove(&server, p),
            Message::DbRegisterUser(r) => self.peer_register(&server, r),
            Message::DbGetUser(q) if self.cfg.master => self.peer_lookup(&server, q),
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
            Message::PeerAnnounce(a) => self.peer_announce(&server, a),
            Message::PresenceSubscribe(s) if self.cfg.master => self.peer_subscribe(&server, s),
            Message::UserListReq(q) if self.cfg.master => self.peer_list(&server, &env.to, q),
            Message::UserList(l) if !self.cfg.master => self.list_from_master(&server, &env.to, l),
            Message::PeerWithdraw(w) => self.peer_withdraw(&server, w),
            Message::Heartbeat(_) | Message::PeerHelloLink(_) => {}
            other => {
                tracing::debug!(server = %server, kind = other.type_name(), "ignored link frame")
            }
        }
    }

    /// The master passes a receipt from `server` on to the server `to`,
    /// for the DMs it handed to `server` only.
    fn relay_receipt(&mut self, server: &str, to: &str, mut r: Receipt) {
        if to == server {
            return;
        }
        let ids = std::mem::take(&mut r.msg_ids);
        r.msg_ids = self.receipt_ids_from(server, &r.user_id.clone(), ids, &r.status.clone());
        if r.msg_ids.is_empty() {
            return;
        }
        // Only the master itself may refuse a user.
        r.extra.remove(REFUSED_USER);
        self.send_link(to, to, Message::Receipt(r));
    }

    pub(super) fn peer_error(&mut self, server: &str, env: &Envelope, e: ErrorBody) {
        tracing::info!(server, code = %e.code, detail = %truncate(&e.detail), "error from peer");
        let from_master = !self.cfg.master && self.master_id.as_deref() == Some(server);
        if let Some(Value::String(user)) = e.extra.get(REFUSED_USER) {
            let user = user.clone();
            return self.registration_refused(server, from_master, &user, e);
        }
        // The next hop could not store content we handed it: it keeps
        // nothing, so we send it again a little later (until then it holds
        // no window slot, and nothing behind it waits on it).
        if e.error_code() == Some(ErrorCode::Storage)
            && env.to == self.cfg.me
            && let Some(id) = e.msg_id()
        {
            return self.retry_later(server, id);
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

    /// The master refused a registration we asked for: the user waiting for
    /// it (or welcomed meanwhile) hears why. Only the directory may refuse
    /// a user, and only to the server that asked to register them: from
    /// anyone else (or relayed for anyone else) it would let one server
    /// disconnect users hosted elsewhere (PROTOCOL.md C13).
    fn registration_refused(&mut self, server: &str, from_master: bool, user: &str, e: ErrorBody) {
        if !from_master {
            tracing::warn!(server, user = %truncate(user), "ignored a user refusal from a server that is not our master");
            return;
        }
        if let Some(req) = self.pending.iter().find_map(|(req, p)| {
            matches!(p, Pending::Hello(h) if h.user_id == user).then(|| req.clone())
        }) && let Some(Pending::Hello(hello)) = self.pending.remove(&req)
        {
            return self.refuse(hello.conn, user, code_of(&e), e.detail);
        }
        if let Some(conn) = self.sessions.get(user).map(|s| s.conn) {
            self.refuse(conn, user, code_of(&e), e.detail);
        }
    }

    /// `server` could not store what it was handed under `msg_id`: it is
    /// pending again, and sent again after [`STORAGE_RETRY`].
    fn retry_later(&mut self, server: &str, msg_id: &str) {
        let dests = self.custody.requeue(&Hop::Link(server.to_owned()), msg_id);
        if !dests.is_empty() {
            let req_id = self.new_req_id();
            self.pending.insert(req_id.clone(), Pending::Retry(dests));
            self.out.push(Output::Timer {
                req_id,
                after: STORAGE_RETRY,
            });
        }
    }
}

/// Why a link hello is not taken.
pub(super) enum NoLink {
    /// Closed without a word (a link to ourselves, a master that changed).
    Close,
    /// Answered with an error, then closed.
    Refuse(ErrorCode, &'static str),
}

/// How long content the next hop could not store waits before it is sent
/// again.
pub const STORAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The field of an `ERROR` from the master that names the user whose
/// registration it refused (a `socp` extension).
pub(super) const REFUSED_USER: &str = "refused_user";

/// The signed `ts` of a `socp` link hello (a reference one has none).
fn signed_ts(hello: &LinkHelloIn) -> Option<i64> {
    let payload = &hello.signed.as_ref()?.payload;
    payload.get(crate::wire::announce::HELLO_TS)?.as_i64()
}

/// What our answer to a link hello adds (`socp`): our `url`, and, signed,
/// when we made it and whom it answers.
fn answer_fields(url: &str, dialer: &str, now: i64) -> Map<String, Value> {
    let mut extra = url_field(url);
    extra.insert(crate::wire::announce::HELLO_TS.into(), now.into());
    extra.insert(crate::wire::announce::HELLO_TO.into(), dialer.into());
    extra
}

/// The `url` field of our link hello (a `socp` addition; see `peers.rs`).
pub(crate) fn url_field(url: &str) -> Map<String, Value> {
    let mut extra = Map::new();
    if !url.is_empty() {
        extra.insert(
            crate::wire::announce::HELLO_URL.into(),
            Value::String(url.to_owned()),
        );
    }
    extra
}
