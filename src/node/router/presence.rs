//! Presence (PROTOCOL.md C5): where remote users are, as links tell us.
//! The master checks every claim (a proof signed with the user's directory
//! key, first presented by the server that hosts them) and relays it; a
//! local takes presence from its master, and from a directly linked `socp`
//! peer for that peer's own users (checked against the directory key it
//! has cached). A new link learns who is online; a reformed link's cache is
//! dropped or restored; when the master link drops, the users a live direct
//! link vouches for stay.

use serde_json::{Map, Value};

use super::owed::Owed;
use super::{HELLO_FRESHNESS_MS, Router, StoreOp, online, proof_digest, proof_signed_by, truncate};
use crate::node::custody::Dest;
use crate::node::records::PresenceRecord;
use crate::wire::ids;
use crate::wire::messages::{Message, Presence};

impl Router {
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
                self.online.set(&user, online::REMOTE, true);
                // Every other link hears of them again, as the link drains.
                if self.cfg.master {
                    self.owe_to_all(server, &user, &Owed::Presence);
                }
            }
        }
    }

    /// A new link learns who is online: our own users (registered first,
    /// if it is our master) and, from the master, everyone else's. A local
    /// in lookup mode learns nothing here: it subscribes to whom it needs
    /// (`lookup.rs`).
    pub(super) fn send_snapshot(&mut self, server: &str) {
        if self.filtered(server) {
            return;
        }
        let own: Vec<String> = self.sessions.keys().cloned().collect();
        for user in own {
            self.owe(server, user, Owed::Own);
        }
        if self.cfg.master {
            let others: Vec<String> = self
                .presence
                .iter()
                .filter(|(_, p)| p.live && p.location != server)
                .map(|(u, _)| u.clone())
                .collect();
            for user in others {
                self.owe(server, user, Owed::Presence);
            }
        }
        // The first chunk goes now, before what the link-up sends next
        // (custody, subscriptions); the rest as the link drains.
        self.send_owed_to(server);
    }

    /// At the master, once `user` registered `key` after a key reset: a
    /// presence whose proof names another key is no longer vouched for.
    /// Kept, it would go to every local that links (`send_snapshot`), which
    /// takes the key a relayed proof names (`key_vouched_by_master`): the
    /// old key back until the user's next presence. So it is dropped and
    /// its removal relayed. (`socp admin reset-key` deletes the user's
    /// presence on the stopped master already; the rule is kept where the
    /// key changes, whatever the path, rather than checked per record sent.)
    pub(super) fn drop_presence_of_old_key(&mut self, user: &str, key: &str) {
        let stale = self.presence.get(user).is_some_and(|p| {
            let named = p.proof.as_ref().and_then(|pr| pr.payload.get("pubkey"));
            named.and_then(Value::as_str) != Some(key)
        });
        let Some(rec) = stale.then(|| self.presence.remove(user)).flatten() else {
            return;
        };
        tracing::warn!(user = %truncate(user), location = %truncate(&rec.location), "dropped a presence made with the key reset");
        self.online.set(user, online::REMOTE, false);
        self.persist(StoreOp::RemovePresence(user.to_owned()));
        let remove = Message::UserRemove(Presence {
            user_id: user.to_owned(),
            location: rec.location,
            proof: None,
            extra: Map::new(),
        });
        self.broadcast_presence(None, user, &remove);
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
            if self.filtered(server) && self.online_elsewhere(&p.user_id, server) {
                return self.name_in_use(server, &p.user_id);
            }
        } else if !from_master {
            if p.location == server && self.links.get(server).is_some_and(|l| l.socp) {
                return self.direct_claim(server, p);
            }
            tracing::debug!(server, user = %p.user_id, "presence from a peer for another server ignored");
            return;
        }
        if from_master && !self.cfg.master {
            if !self.wants_presence(&p.user_id) {
                return; // nobody here addressed them (lookup mode)
            }
            self.key_vouched_by_master(&p);
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
        self.online.set(&p.user_id, online::REMOTE, true);
        self.persist(StoreOp::SetPresence(p.user_id.clone(), rec));
        let user = Dest::User(p.user_id.clone());
        if self.cfg.master {
            let id = p.user_id.clone();
            self.broadcast_presence(Some(server), &id, &Message::UserAdvertise(p));
        }
        self.pump(&user);
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
        let pubkey = rec.pubkey.clone();
        if !self.verified.check(proof, &p.user_id, &pubkey) {
            return Err("proof is not signed with the directory key");
        }
        let digest = proof_digest(proof);
        match self.proof_owners.get(&digest) {
            Some(owner) if owner.server == server => Ok(()),
            Some(_) => Err("proof belongs to another server"),
            None => {
                let ts = proof.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
                if self.now.abs_diff(ts) > HELLO_FRESHNESS_MS as u64 {
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
            self.online.set(&p.user_id, online::REMOTE, false);
            self.persist(StoreOp::RemovePresence(p.user_id.clone()));
            if self.cfg.master {
                let id = p.user_id.clone();
                let relay = Message::UserRemove(Presence { proof: None, ..p });
                self.broadcast_presence(Some(server), &id, &relay);
            }
        }
    }
}

impl Router {
    /// A directly linked `socp` peer says one of its users is online. Taken
    /// if the proof is signed with the user's directory key (as this local
    /// cached it from the master) and is fresh, or is the proof we already
    /// hold for that user there; otherwise the master's relay tells us.
    fn direct_claim(&mut self, server: &str, p: Presence) {
        if self.sessions.contains_key(&p.user_id) || !self.wants_presence(&p.user_id) {
            return;
        }
        if let Err(why) = self.check_direct_claim(&p) {
            tracing::debug!(server, user = %truncate(&p.user_id), why, "direct presence claim not taken");
            return;
        }
        if self
            .presence
            .get(&p.user_id)
            .is_some_and(|r| r.live && r.location == p.location)
        {
            return; // known already (relayed by the master)
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
        self.pump(&Dest::User(p.user_id));
    }

    fn check_direct_claim(&self, p: &Presence) -> Result<(), &'static str> {
        let Some(rec) = self.users.get(&p.user_id) else {
            return Err("directory key not cached here");
        };
        let Some(proof) = &p.proof else {
            return Err("no proof");
        };
        if !proof_signed_by(proof, &p.user_id, &rec.pubkey) {
            return Err("proof is not signed with the directory key");
        }
        let ts = proof.payload.get("ts").and_then(Value::as_i64).unwrap_or(0);
        let fresh = self.now.abs_diff(ts) <= HELLO_FRESHNESS_MS as u64;
        let digest = proof_digest(proof);
        let held = self.presence.get(&p.user_id).is_some_and(|r| {
            r.location == p.location && r.proof.as_ref().map(proof_digest) == Some(digest)
        });
        if fresh || held {
            Ok(())
        } else {
            Err("stale proof the master did not relay")
        }
    }

    /// At a local whose master link dropped: true (and the entry now rides
    /// on that link) if `user`'s own server is linked to us directly.
    pub(super) fn vouched_by_peer(&mut self, user: &str) -> bool {
        if self.cfg.master {
            return false;
        }
        let Some(p) = self.presence.get_mut(user) else {
            return false;
        };
        if !self.links.get(&p.location).is_some_and(|l| l.socp) {
            return false;
        }
        p.via = p.location.clone();
        let rec = p.clone();
        self.persist(StoreOp::SetPresence(user.to_owned(), rec));
        true
    }
}
