//! The directory across links (PROTOCOL.md C5, C13): a local registers its
//! users at the master (`DB_REGISTER_USER`) and takes the master's answers
//! to lookups (`DB_USER`) as the keys ids are pinned to. The directory
//! itself stays in SQLite: the router reads records through a bounded
//! cache ([`Directory`]), so a node with a million users starts without
//! loading them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;

use lru::LruCache;
use serde_json::Value;

use super::admission::RegSource;
use super::links::REFUSED_USER;
use super::{HELLO_FRESHNESS_MS, Pending, Router, StoreOp, lookup_answer, truncate};
use crate::crypto::PublicKey;
use crate::node::policy::PolicyOp;
use crate::node::records::UserRecord;
use crate::node::state::StoreRead;
use crate::wire::messages::{
    DirectoryAnswer, DirectoryLookup, ErrorBody, Message, Presence, RegisterUser,
};
use crate::wire::{ErrorCode, ids};

/// Directory records (and ids known not to be in it) kept in memory at
/// most, beside the ones written and not yet committed. About 1 KiB each
/// (an RSA-4096 key in base64): 20 MiB.
pub const DIRECTORY_CACHE: usize = 20_000;

/// The directory as the router sees it: records read from the store on
/// demand and kept in a least-recently-used cache; the router's own
/// writes stay in memory until the store reports them committed (the
/// store's reads see committed rows only), so the router never reads back
/// less than it wrote.
pub(crate) struct Directory {
    store: Box<dyn StoreRead>,
    /// `None`: the id is not in the directory (so a DM to an unknown id
    /// does not read the disk each time).
    cache: RefCell<LruCache<String, Option<UserRecord>>>,
    unwritten: HashMap<String, UserRecord>,
}

impl Directory {
    pub fn new(store: Box<dyn StoreRead>, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Directory {
            store,
            cache: RefCell::new(LruCache::new(capacity)),
            unwritten: HashMap::new(),
        }
    }

    /// `id`'s record, if it is in the directory. A store that cannot be
    /// read answers "not found" (logged, not cached).
    pub fn get(&self, id: &str) -> Option<UserRecord> {
        if let Some(rec) = self.unwritten.get(id) {
            return Some(rec.clone());
        }
        let mut cache = self.cache.borrow_mut();
        if let Some(rec) = cache.get(id) {
            return rec.clone();
        }
        match self.store.user(id) {
            Ok(rec) => {
                cache.put(id.to_owned(), rec.clone());
                rec
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the directory");
                None
            }
        }
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Pins (or replaces) `id`'s record; the router persists it.
    pub fn insert(&mut self, id: String, rec: UserRecord) {
        self.cache.get_mut().pop(&id);
        self.unwritten.insert(id, rec);
    }

    /// Forgets `id`'s record in memory (a pin the store could not write):
    /// the next read asks the store.
    pub fn remove(&mut self, id: &str) {
        self.unwritten.remove(id);
        self.cache.get_mut().pop(id);
    }

    /// These records are committed: they may leave memory.
    pub fn written(&mut self, ids: Vec<String>) {
        for id in ids {
            if let Some(rec) = self.unwritten.remove(&id) {
                self.cache.get_mut().put(id, Some(rec));
            }
        }
    }

    /// The store, for reads beside the directory (custody on disk).
    pub fn store(&self) -> &dyn StoreRead {
        self.store.as_ref()
    }
}

impl Router {
    /// The master answers a local's `DB_GET_USER`.
    pub(super) fn peer_lookup(&mut self, server: &str, q: DirectoryLookup) {
        let pubkey = self.users.get(&q.user_id).map(|u| u.pubkey.clone());
        let answer = Message::DbUser(DirectoryAnswer {
            found: pubkey.is_some(),
            pubkey: pubkey.as_deref().unwrap_or_default().to_owned(),
            user_id: q.user_id,
            req_id: q.req_id,
            extra: Default::default(),
        });
        self.send_link(server, server, answer);
    }

    pub(super) fn directory_answer(&mut self, a: DirectoryAnswer) {
        self.master_answered_ms = self.now;
        // The key of a hello waiting for this answer passed the key policy
        // at its connection: not parsed again here, on the hub (a login
        // storm's new users each bring one).
        let checked = matches!(
            self.pending.get(&a.req_id),
            Some(Pending::Hello(h)) if h.user_id == a.user_id && h.key.to_b64() == a.pubkey
        );
        if a.found && (checked || PublicKey::from_b64(&a.pubkey).is_ok()) {
            match self.users.get(&a.user_id) {
                None => {
                    let rec = UserRecord::new(a.pubkey.as_str().into(), false, self.now);
                    self.users.insert(a.user_id.clone(), rec.clone());
                    self.persist(StoreOp::PinUser(a.user_id.clone(), rec));
                }
                // The master is the directory: a key its operator reset
                // replaces what this local cached.
                Some(rec) if *rec.pubkey != *a.pubkey && self.master_id.is_some() => {
                    self.replace_cached_key(&a.user_id, rec, &a.pubkey);
                }
                Some(_) => {}
            }
        }
        match self.pending.remove(&a.req_id) {
            Some(Pending::Lookup { conn, user_id }) if user_id == a.user_id => {
                if a.found {
                    self.addressed(&a.user_id); // subscribed once the directory knows them
                }
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
                    self.accept_user(hello, true);
                }
            }
            _ => {}
        }
    }

    /// A local takes the key the master now has for `user` in place of the
    /// one it cached (the master's operator reset it).
    fn replace_cached_key(&mut self, user: &str, mut rec: UserRecord, pubkey: &str) {
        tracing::warn!(user = %user, "the master has a new key for this user (reset by its operator)");
        rec.pubkey = pubkey.into();
        self.users.insert(user.to_owned(), rec);
        self.persist(StoreOp::Policy(PolicyOp::ReplaceKey {
            user: user.to_owned(),
            pubkey: pubkey.to_owned(),
        }));
    }

    /// At a local: a presence the master relays carries the user's signed
    /// hello, which the master checked against its directory key (C5). If
    /// that key is not the one cached here, the master's operator reset it:
    /// the cache takes it, as from a `DB_USER` answer, so this local's
    /// lookups stop answering with the old key (its users would seal DMs
    /// that its owner can no longer open).
    ///
    /// Only from a `socp` master (a reference master relays a local's
    /// advert as it came), and only a proof that verifies with the key it
    /// names for that user: checked here, once the key differs from the
    /// cached one (rare), not per relayed presence.
    pub(super) fn key_vouched_by_master(&mut self, p: &Presence) {
        let socp_master = self
            .master_id
            .as_deref()
            .and_then(|m| self.links.get(m))
            .is_some_and(|l| l.socp);
        if self.cfg.master || !socp_master {
            return;
        }
        let Some(proof) = p.proof.as_ref() else {
            return;
        };
        let Some(pubkey) = proof.payload.get("pubkey").and_then(Value::as_str) else {
            return;
        };
        match self.users.get(&p.user_id) {
            Some(rec)
                if *rec.pubkey != *pubkey && super::proof_signed_by(proof, &p.user_id, pubkey) =>
            {
                self.replace_cached_key(&p.user_id, rec, pubkey);
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
            Some(proof) if !self.verified.check(proof, &r.user_id, &r.pubkey) => {
                return refuse(
                    self,
                    ErrorCode::InvalidSig,
                    "registration proof does not verify".into(),
                );
            }
            _ => {}
        }
        let known = self
            .users
            .get(&r.user_id)
            .map(|rec| *rec.pubkey == *r.pubkey);
        match known {
            Some(true) => {}
            Some(false) if !self.policy.resets.contains(&r.user_id) => {
                return refuse(
                    self,
                    ErrorCode::BadKey,
                    format!(
                        "{} is registered with another key; pick another user id",
                        r.user_id
                    ),
                );
            }
            _ => {
                // A new id: its proof must be fresh, not a hello kept from
                // long ago, and the policy and the server's rate apply.
                if let Some(proof) = &r.proof {
                    let ts = proof.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
                    if self.now.abs_diff(ts) > HELLO_FRESHNESS_MS as u64 {
                        return refuse(
                            self,
                            ErrorCode::InvalidSig,
                            "stale registration proof".into(),
                        );
                    }
                }
                let source = Some(RegSource::Server(server.to_owned()));
                if let Err((code, detail)) = self.register_new(
                    &r.user_id,
                    &r.pubkey.as_str().into(),
                    r.proof.as_ref(),
                    source,
                ) {
                    return refuse(self, code, detail);
                }
            }
        }
        // A `socp` local waits for this answer to welcome the user.
        if let Some(req_id) = r.req_id {
            let answer = Message::DbUser(DirectoryAnswer {
                found: true,
                pubkey: r.pubkey,
                user_id: r.user_id,
                req_id,
                extra: Default::default(),
            });
            self.send_link(server, server, answer);
        }
    }
}
