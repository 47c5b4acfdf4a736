//! Users: hellos, directory pinning, sessions, lookups.

use std::sync::Arc;

use serde_json::Map;

use super::admission::RegSource;
use super::proofs::KeptProof;
use super::{
    ConnId, LOOKUP_TIMEOUT, MAX_EARLY_FRAMES, Output, Pending, Router, Session, StoreOp,
    UserHelloIn, lookup_answer, online, proof_digest, registration,
};
use crate::node::custody::{Dest, Hop};
use crate::node::records::UserRecord;
use crate::wire::messages::{CAP_UNDECRYPTABLE, DirectoryLookup, Message, Presence, UserWelcome};
use crate::wire::{Envelope, ErrorCode};

impl Router {
    pub(super) fn user_hello(&mut self, hello: UserHelloIn) {
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
        let key = hello.key.b64_shared();
        match self.users.get(&user) {
            // A local's cache may hold a key the master's operator reset:
            // only the master's answer refuses.
            Some(rec) if rec.pubkey != key && self.cfg.master => self.refuse(
                hello.conn,
                &user,
                ErrorCode::BadKey,
                format!("{user} is registered with another key; pick another user id"),
            ),
            Some(rec) if rec.pubkey == key => self.accept_user(hello, false),
            _ if self.cfg.master => {
                let source = hello.addr.map(RegSource::Addr);
                match self.register_new(&user, &key, hello.proof.as_ref(), source) {
                    Ok(()) => self.accept_user(hello, true),
                    Err((code, detail)) => {
                        tracing::info!(user = %user, addr = ?hello.addr, %detail, "registration refused");
                        self.refuse(hello.conn, &user, code, detail)
                    }
                }
            }
            _ => self.confirm_with_master(hello, key),
        }
    }

    /// A local asks its master which key a user's id is pinned to before it
    /// welcomes them. A `socp` master takes the registration with a
    /// `req_id` and answers it (`DB_USER`, or an `ERROR` naming the user):
    /// one frame each way. A reference master gets the part A pair, the
    /// registration then a lookup on the same link (answered after the
    /// registration was applied, so it says which key the id is pinned to).
    fn confirm_with_master(&mut self, hello: UserHelloIn, key: Arc<str>) {
        let user = hello.user_id.clone();
        let Some(master) = self.master_link().map(str::to_owned) else {
            return self.refuse(
                hello.conn,
                &user,
                ErrorCode::Timeout,
                "the master is unreachable, so this server cannot check your key yet; try again shortly",
            );
        };
        if !self.users.contains_key(&user)
            && let Err((code, detail)) = self.local_rate(hello.addr)
        {
            tracing::info!(user = %user, addr = ?hello.addr, %detail, "registration refused");
            return self.refuse(hello.conn, &user, code, detail);
        }
        if self.confirming() >= MAX_CONFIRMING {
            // A storm: the hello waits its turn here, not in the link's
            // send queue (which would overflow and drop the link).
            self.early.insert(hello.conn, Vec::new());
            self.waiting_hellos.push_back((hello, key));
            return;
        }
        let req_id = self.new_req_id();
        let mut reg = registration(&user, &key, hello.proof.clone());
        if self.master_answers_registrations() {
            if let Message::DbRegisterUser(r) = &mut reg {
                r.req_id = Some(req_id.clone());
            }
            self.send_link(&master, &master, reg);
        } else {
            self.send_link(&master, &master, reg);
            let ask = Message::DbGetUser(DirectoryLookup {
                user_id: user,
                req_id: req_id.clone(),
                extra: Map::new(),
            });
            self.send_link(&master, &master, ask);
        }
        self.early.insert(hello.conn, Vec::new());
        self.pending.insert(req_id.clone(), Pending::Hello(hello));
        self.out.push(Output::Timer {
            req_id,
            after: LOOKUP_TIMEOUT,
        });
    }

    /// Hellos sent to the master for confirmation and not answered yet.
    fn confirming(&self) -> usize {
        self.pending
            .values()
            .filter(|p| matches!(p, Pending::Hello(_)))
            .count()
    }

    /// Sends the hellos that waited for room among those being confirmed
    /// (run after every step; nothing to do outside a storm). A hello
    /// whose id the cache learnt meanwhile is welcomed at once.
    pub(super) fn confirm_waiting(&mut self) {
        while !self.waiting_hellos.is_empty() && self.confirming() < MAX_CONFIRMING {
            let Some((hello, key)) = self.waiting_hellos.pop_front() else {
                return;
            };
            match self.users.get(&hello.user_id) {
                Some(rec) if rec.pubkey == key => self.accept_user(hello, false),
                _ => self.confirm_with_master(hello, key),
            }
        }
    }

    /// True if our master answers registrations that carry a `req_id`
    /// (its link hello listed [`super::CAP_REGISTER_ANSWER`]).
    fn master_answers_registrations(&self) -> bool {
        self.master_link()
            .and_then(|m| self.links.get(m))
            .is_some_and(|l| l.answers_registrations)
    }

    /// Welcomes a user. `registered`: the master already has this login's
    /// registration (we are the master, or it confirmed the key). A local
    /// whose cache knew the id registers it only at a reference master,
    /// which expects `DB_REGISTER_USER` at every hello (part A); a `socp`
    /// master learns of the login from the user's advertisement alone.
    pub(super) fn accept_user(&mut self, hello: UserHelloIn, registered: bool) {
        let user = hello.user_id.clone();
        let key = hello.key.b64_shared();
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
                undecryptable: super::unreadable::lists_cap(
                    hello.proof.as_ref(),
                    crate::wire::messages::CAP_UNDECRYPTABLE,
                ),
                proof: hello.proof.clone().map(|p| KeptProof::keep(p, &key)),
                key: key.clone(),
                lists: (super::LIST_BURST, self.now),
            },
        );
        self.online.set(&user, online::HERE, true);
        self.conn_users.insert(hello.conn, user.clone());
        tracing::info!(user = %user, conn = hello.conn, "user online");
        let welcome = Message::UserWelcome(UserWelcome {
            user_id: user.clone(),
            server_id: self.cfg.me.clone(),
            session: super::session_offer(&hello.session),
            caps: Some(vec![CAP_UNDECRYPTABLE.to_owned()]),
            extra: Map::new(),
        });
        self.send(hello.conn, &user, welcome);
        if !self.cfg.master {
            if !self.users.contains_key(&user) {
                let rec = UserRecord::new(key.clone(), hello.proof.is_none(), self.now);
                self.users.insert(user.clone(), rec.clone());
                self.persist(StoreOp::PinUser(user.clone(), rec));
            }
            if !registered
                && !self.master_answers_registrations()
                && let Some(master) = self.master_link().map(str::to_owned)
            {
                let reg = registration(&user, &key, hello.proof.clone());
                self.send_link(&master, &master, reg);
            }
        }
        let adv = self.own_advert(&user);
        self.broadcast_presence(None, &user, &adv);
        for (env, msg) in early {
            self.user_frame(hello.conn, env, msg);
        }
        self.pump(&Dest::User(user));
    }

    pub(super) fn own_advert(&self, user: &str) -> Message {
        Message::UserAdvertise(Presence {
            user_id: user.to_owned(),
            location: self.cfg.me.clone(),
            proof: self.sessions.get(user).and_then(Session::proof),
            extra: Map::new(),
        })
    }

    pub(super) fn user_closed(&mut self, conn: ConnId) {
        // Its undecryptable reports were about deliveries on it; what goes
        // out again is reported again by a client that still cannot open it.
        self.unreadable.forget(conn);
        if self.early.remove(&conn).is_some() {
            self.pending
                .retain(|_, p| !matches!(p, Pending::Hello(h) if h.conn == conn));
            self.waiting_hellos.retain(|(h, _)| h.conn != conn);
        }
        let Some(user) = self.conn_users.remove(&conn) else {
            return;
        };
        if self.sessions.get(&user).is_some_and(|s| s.conn == conn) {
            tracing::info!(user = %user, conn, "user offline");
            self.sessions.remove(&user);
            self.online.set(&user, online::HERE, false);
            let remove = Message::UserRemove(Presence {
                user_id: user.clone(),
                location: self.cfg.me.clone(),
                proof: None,
                extra: Map::new(),
            });
            self.broadcast_presence(None, &user, &remove);
        }
        self.hop_down(&Hop::Conn(conn));
    }

    pub(super) fn user_frame(&mut self, conn: ConnId, env: Envelope, msg: Message) {
        if !self.conn_users.contains_key(&conn) {
            if let Some(early) = self.early.get_mut(&conn)
                && early.len() < MAX_EARLY_FRAMES
            {
                early.push((env, msg));
            }
            return;
        }
        let Some(user) = self.sender(conn, &env, false) else {
            return;
        };
        match msg {
            Message::UserListReq(req) => {
                let now = self.now;
                let allowed = self.sessions.get_mut(&user).is_some_and(|s| {
                    let refill = ((now - s.lists.1).max(0) / 1000) as u32;
                    if refill > 0 {
                        s.lists = ((s.lists.0 + refill).min(super::LIST_BURST), now);
                    }
                    let ok = s.lists.0 > 0;
                    if ok {
                        s.lists.0 -= 1;
                    }
                    ok
                });
                if !allowed {
                    return self.error(
                        conn,
                        &user,
                        ErrorCode::RateLimited,
                        "one user list a second; ask again in a moment",
                    );
                }
                if !self.forward_list(&user, &req) {
                    let list = self.local_list(&req);
                    self.send(conn, &user, Message::UserList(list));
                }
            }
            Message::UserDbGetUser(q) => self.user_lookup(conn, &user, q.user_id),
            Message::MsgPrivate(_)
            | Message::GroupKeyShare(_)
            | Message::MsgGroup(_)
            | Message::FileStart(_)
            | Message::FileChunk(_)
            | Message::FileEnd(_) => self.user_content(conn, &user, env, msg),
            Message::Ack(a) => self.acked(Hop::Conn(conn), a.msg_ids),
            Message::Receipt(r) => self.user_report(conn, &user, r),
            Message::Heartbeat(_) => {}
            Message::Error(_) => {}
            other => self.error(
                conn,
                &user,
                ErrorCode::NotAllowed,
                format!("{} is not a frame a user may send", other.type_name()),
            ),
        }
    }

    pub(super) fn user_lookup(&mut self, conn: ConnId, user: &str, target: String) {
        if let Some(rec) = self.users.get(&target) {
            // A key is looked up to write to its owner: subscribed only once
            // the directory knows them (here, or in the master's answer), so
            // lookups of made-up ids, free to a user, cannot push real
            // correspondents out of the cache (review finding).
            self.addressed(&target);
            let answer = lookup_answer(&target, Some(&rec.pubkey));
            return self.send(conn, user, answer);
        }
        if self.cfg.master {
            return self.send(conn, user, lookup_answer(&target, None));
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
        let ask = Message::DbGetUser(DirectoryLookup {
            user_id: target.clone(),
            req_id: req_id.clone(),
            extra: Map::new(),
        });
        self.send_link(&master, &master, ask);
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

    /// True if a hello still waiting for the master may wait longer: the
    /// master answers in order, and answered lately (in a login storm the
    /// answers come at the master's pace, so a hello waits its turn; only
    /// a master gone silent refuses it), and the hello is recent.
    fn master_answering(&self, hello: &UserHelloIn) -> bool {
        let silent_for = self.now - self.master_answered_ms;
        let age = hello
            .proof
            .as_ref()
            .and_then(|p| p.payload.get("ts"))
            .and_then(serde_json::Value::as_i64)
            .map_or(i64::MAX, |ts| self.now - ts);
        self.master_link().is_some()
            && silent_for < LOOKUP_TIMEOUT.as_millis() as i64
            && age < HELLO_CONFIRM_PATIENCE_MS
    }

    pub(super) fn timeout(&mut self, req_id: &str) {
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
            Some(Pending::Hello(hello)) if self.master_answering(&hello) => {
                self.pending
                    .insert(req_id.to_owned(), Pending::Hello(hello));
                self.out.push(Output::Timer {
                    req_id: req_id.to_owned(),
                    after: LOOKUP_TIMEOUT,
                });
            }
            Some(Pending::Hello(hello)) => self.refuse(
                hello.conn,
                &hello.user_id,
                ErrorCode::Timeout,
                "the master did not confirm your key in time; try again",
            ),
            Some(Pending::Retry(dests)) => {
                for dest in dests {
                    self.pump(&dest);
                }
            }
            Some(Pending::Withdraw(server)) => self.withdraw_timeout(req_id, &server),
            Some(Pending::Barrier {
                sender,
                user,
                since,
            }) => self.barrier_over(&sender, &user, since),
            None => {}
        }
    }
}

/// How long after its `ts` a hello may wait for its master's confirmation
/// while the master is answering others (a client gives up sooner).
pub const HELLO_CONFIRM_PATIENCE_MS: i64 = 60_000;

/// Hellos a local has at its master for confirmation at once; more wait
/// their turn (each registration is a few KiB: the link's send queue of
/// 8192 frames overflowed in a 10,000-user storm and dropped the link).
pub const MAX_CONFIRMING: usize = 512;
