//! Presence on demand (`presence-lookup-v1`, DESIGN.md "Presence"): a
//! local that lists the capability holds the presence of the users its own
//! users address, not of everyone online. It subscribes to a user at the
//! master when content for them first leaves (that content goes to the
//! master meanwhile, as for any unknown recipient), keeps what it learns in
//! a bounded LRU ([`Cache`]), and unsubscribes what it evicts. The master
//! relays presence to such a local only for the users it subscribed to
//! ([`Subscriptions`], bounded per local and rate-limited).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Map;

use super::owed::Owed;
use super::{Router, StoreOp, online, truncate};
use crate::wire::messages::{ErrorBody, Message, PresenceSubscribe, UserList, UserListReq};
use crate::wire::{ErrorCode, ids};

/// The capability: listed by a local, it asks for presence on demand; listed
/// by a master, it serves it.
pub const CAP_PRESENCE_LOOKUP: &str = "presence-lookup-v1";
/// Subscriptions the master keeps for one local; beyond it, refused. A
/// local's cache is clamped to it, so an honest local never meets it.
pub const SUBSCRIPTIONS_MAX: usize = 65_536;
/// Most ids one `PRESENCE_SUBSCRIBE` names (each list).
pub const SUBSCRIBE_BATCH: usize = 1_024;
/// Subscriptions one local may ask for at once (a reconnect re-subscribes
/// its whole cache), then [`SUBSCRIBE_RATE`] more a second: each one may
/// cost the master a presence frame back.
pub const SUBSCRIBE_BURST: f64 = SUBSCRIPTIONS_MAX as f64;
pub const SUBSCRIBE_RATE: f64 = 2_000.0;
/// `USER_LIST` requests one lookup-mode local may forward at once, then
/// as many more a second (each user is limited at their own server too).
pub const LIST_RATE: f64 = 200.0;
/// `USER_LIST` requests a lookup local forwards a second (and at once):
/// three quarters of what its master takes ([`LIST_RATE`]), so that
/// requests bunched by the link's queue still fit the master's bucket.
pub const LIST_FORWARD_RATE: f64 = LIST_RATE * 0.75;
/// The field of a `USER_LIST` a local answered alone (its master is down):
/// it lists the users online here and those whose presence it holds.
pub const LIST_PARTIAL: &str = "partial";

/// A local's remote users, least recently addressed first.
#[derive(Debug, Default)]
pub(super) struct Cache {
    stamps: HashMap<String, u64>,
    by_age: BTreeMap<u64, String>,
    next: u64,
}

impl Cache {
    pub fn contains(&self, user: &str) -> bool {
        self.stamps.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Marks `user` as just addressed. True if it was not held. Called for
    /// every DM leaving for a remote user: a held user's id is moved, not
    /// copied again.
    pub fn touch(&mut self, user: &str) -> bool {
        self.next += 1;
        match self.stamps.get_mut(user) {
            Some(stamp) => {
                let name = self.by_age.remove(stamp).unwrap_or_else(|| user.to_owned());
                *stamp = self.next;
                self.by_age.insert(self.next, name);
                false
            }
            None => {
                self.stamps.insert(user.to_owned(), self.next);
                self.by_age.insert(self.next, user.to_owned());
                true
            }
        }
    }

    /// Takes out the least recently addressed user.
    pub fn pop_oldest(&mut self) -> Option<String> {
        let (_, user) = self.by_age.pop_first()?;
        self.stamps.remove(&user);
        Some(user)
    }

    /// Every user held, oldest first.
    pub fn users(&self) -> Vec<String> {
        self.by_age.values().cloned().collect()
    }
}

/// At the master: which users each lookup-mode local subscribed to.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    by_server: HashMap<String, Subscriber>,
    by_user: HashMap<String, HashSet<String>>,
    /// `USER_LIST` requests each local may still forward, and when the
    /// bucket was refilled (ms); forgotten with the link.
    lists: HashMap<String, (f64, i64)>,
}

#[derive(Debug)]
struct Subscriber {
    users: HashSet<String>,
    /// Subscriptions it may still ask for now, and when it was refilled (ms).
    tokens: (f64, i64),
}

impl Subscriptions {
    /// Subscribes `server` to `user`. False (nothing changed) if it is
    /// subscribed already, holds [`SUBSCRIPTIONS_MAX`], or asks too fast.
    pub fn add(&mut self, server: &str, user: &str, now: i64) -> Result<bool, &'static str> {
        let sub = self
            .by_server
            .entry(server.to_owned())
            .or_insert_with(|| Subscriber {
                users: HashSet::new(),
                tokens: (SUBSCRIBE_BURST, now),
            });
        if sub.users.contains(user) {
            return Ok(false);
        }
        let elapsed = (now - sub.tokens.1).max(0) as f64 / 1000.0;
        sub.tokens = (
            (sub.tokens.0 + elapsed * SUBSCRIBE_RATE).min(SUBSCRIBE_BURST),
            now,
        );
        if sub.tokens.0 < 1.0 {
            return Err("subscribing too fast");
        }
        if sub.users.len() >= SUBSCRIPTIONS_MAX {
            return Err("too many subscriptions");
        }
        sub.tokens.0 -= 1.0;
        sub.users.insert(user.to_owned());
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .insert(server.to_owned());
        Ok(true)
    }

    pub fn remove(&mut self, server: &str, user: &str) {
        if let Some(sub) = self.by_server.get_mut(server) {
            sub.users.remove(user);
        }
        self.forget_user(server, user);
    }

    /// Takes one `USER_LIST` request from `server`'s bucket; false if empty.
    pub fn take_list(&mut self, server: &str, now: i64) -> bool {
        let b = self
            .lists
            .entry(server.to_owned())
            .or_insert((LIST_RATE, now));
        let elapsed = (now - b.1).max(0) as f64 / 1000.0;
        *b = ((b.0 + elapsed * LIST_RATE).min(LIST_RATE), now);
        if b.0 < 1.0 {
            return false;
        }
        b.0 -= 1.0;
        true
    }

    /// A local's link dropped: it subscribes again on its next link.
    pub fn drop_server(&mut self, server: &str) {
        self.lists.remove(server);
        let Some(sub) = self.by_server.remove(server) else {
            return;
        };
        for user in sub.users {
            self.forget_user(server, &user);
        }
    }

    fn forget_user(&mut self, server: &str, user: &str) {
        if let Some(servers) = self.by_user.get_mut(user) {
            servers.remove(server);
            if servers.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    pub fn has(&self, server: &str, user: &str) -> bool {
        self.by_user.get(user).is_some_and(|s| s.contains(server))
    }

    /// How many users `server` subscribed to.
    #[cfg(test)]
    pub fn count(&self, server: &str) -> usize {
        self.by_server.get(server).map_or(0, |s| s.users.len())
    }
}

impl Router {
    /// True if this local holds presence on demand: it is configured to,
    /// and its master serves it.
    pub(super) fn lookup_mode(&self) -> bool {
        !self.cfg.master && self.cfg.presence_cache > 0 && self.master_serves_lookups
    }

    /// True if the link to `server` takes presence only for the users it
    /// subscribed to (we are the master, it listed the capability).
    pub(super) fn filtered(&self, server: &str) -> bool {
        self.cfg.master && self.links.get(server).is_some_and(|l| l.lookup)
    }

    /// Sends a presence frame about `user` to every link but `except`'s,
    /// lookup-mode locals only if they subscribed to `user`.
    pub(super) fn broadcast_presence(&mut self, except: Option<&str>, user: &str, msg: &Message) {
        let targets: Vec<super::ConnId> = self
            .links
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .filter(|(id, l)| !(self.cfg.master && l.lookup) || self.subs.has(id, user))
            .map(|(_, l)| l.conn)
            .collect();
        for conn in targets {
            self.send(conn, ids::TO_ALL, msg.clone());
        }
    }

    /// Our own user addresses `user` (not online here), looks up their
    /// key, or gets a DM from them: in lookup mode, their presence is
    /// wanted. A user new to the cache is subscribed to (now, or when the
    /// master link is back); the oldest goes if full.
    pub(super) fn addressed(&mut self, user: &str) {
        if !self.lookup_mode() || self.sessions.contains_key(user) || ids::check_user(user).is_err()
        {
            return;
        }
        if !self.cache.touch(user) {
            return;
        }
        let cap = self.cfg.presence_cache.min(SUBSCRIPTIONS_MAX);
        let mut gone = Vec::new();
        while self.cache.len() > cap {
            let Some(old) = self.cache.pop_oldest() else {
                break;
            };
            self.forget_presence(&old);
            gone.push(old);
        }
        self.send_subscription(vec![user.to_owned()], gone);
    }

    /// Drops what we hold of `user`'s presence (evicted from the cache).
    fn forget_presence(&mut self, user: &str) {
        if self.presence.remove(user).is_some() {
            self.online.set(user, online::REMOTE, false);
            self.persist(StoreOp::RemovePresence(user.to_owned()));
        }
    }

    fn send_subscription(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        let Some(master) = self.master_link().map(str::to_owned) else {
            return; // sent with the whole cache when the link is back
        };
        let frame = Message::PresenceSubscribe(PresenceSubscribe {
            subscribe: (!subscribe.is_empty()).then_some(subscribe),
            unsubscribe: (!unsubscribe.is_empty()).then_some(unsubscribe),
            extra: Map::new(),
        });
        self.send_link(&master, &master, frame);
    }

    /// The master link is up: subscribe to every user in the cache again
    /// (the master forgot them when the link dropped). Presence held for
    /// anyone else (taken while the master did not serve lookups) goes:
    /// nobody would tell us when it changes.
    pub(super) fn resubscribe(&mut self) {
        if !self.lookup_mode() {
            return;
        }
        let stray: Vec<String> = self
            .presence
            .keys()
            .filter(|u| !self.cache.contains(u))
            .cloned()
            .collect();
        for user in stray {
            self.forget_presence(&user);
        }
        let users = self.cache.users();
        for batch in users.chunks(SUBSCRIBE_BATCH) {
            self.send_subscription(batch.to_vec(), Vec::new());
        }
    }

    /// True if presence for `user` is taken here: always, unless in lookup
    /// mode and nobody here addressed them.
    pub(super) fn wants_presence(&self, user: &str) -> bool {
        !self.lookup_mode() || self.cache.contains(user)
    }

    /// At the master: `user` has a session here or is live on a server
    /// other than `server`.
    pub(super) fn online_elsewhere(&self, user: &str, server: &str) -> bool {
        self.sessions.contains_key(user)
            || self
                .presence
                .get(user)
                .is_some_and(|p| p.live && p.location != server)
    }

    /// At the master: a lookup-mode local welcomed `user`, who is online
    /// elsewhere (it could not know: it holds no presence for them). The
    /// second session is refused, as a local holding everyone's presence
    /// would have refused it (`NAME_IN_USE`, naming the user: only the
    /// master may refuse a user at another server).
    pub(super) fn name_in_use(&mut self, server: &str, user: &str) {
        tracing::info!(server, user = %truncate(user), "refused a second session of a user online elsewhere");
        let mut error =
            ErrorBody::new(ErrorCode::NameInUse, format!("{user} is already connected"));
        error
            .extra
            .insert(super::links::REFUSED_USER.into(), user.into());
        self.send_link(server, user, Message::Error(error));
    }

    /// At the master: a lookup-mode local's `PRESENCE_SUBSCRIBE`. Each new
    /// subscription is answered with the user's presence if they are
    /// online (ours, or relayed with its proof).
    pub(super) fn peer_subscribe(&mut self, server: &str, s: PresenceSubscribe) {
        if !self.filtered(server) {
            tracing::debug!(
                server,
                "ignored PRESENCE_SUBSCRIBE from a link not in lookup mode"
            );
            return;
        }
        for user in s
            .unsubscribe
            .unwrap_or_default()
            .iter()
            .take(SUBSCRIBE_BATCH)
        {
            self.subs.remove(server, user);
        }
        for user in s
            .subscribe
            .unwrap_or_default()
            .into_iter()
            .take(SUBSCRIBE_BATCH)
        {
            if ids::check_user(&user).is_err() {
                continue;
            }
            match self.subs.add(server, &user, self.now) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(why) => {
                    tracing::warn!(server, user = %truncate(&user), why, "refused presence subscription");
                    return;
                }
            }
            let online = self.sessions.contains_key(&user)
                || self
                    .presence
                    .get(&user)
                    .is_some_and(|p| p.live && p.location != server);
            if online {
                self.owe(server, user, Owed::Presence);
            }
        }
    }
}

impl Router {
    /// A user's `USER_LIST` at a local in lookup mode: the mesh-wide list
    /// lives at the master, which answers it (sent back to the user by
    /// [`Self::list_from_master`]). True if forwarded; false if it must be
    /// answered here (not in lookup mode, the master is down, or this
    /// local forwarded [`LIST_FORWARD_RATE`] a second already: the master
    /// drops what is over its own rate, and the user would wait for an
    /// answer that never comes).
    pub(super) fn forward_list(&mut self, user: &str, req: &UserListReq) -> bool {
        if !self.lookup_mode() {
            return false;
        }
        let Some(master) = self.master_link().map(str::to_owned) else {
            return false;
        };
        let (tokens, at) = self.lists_forwarded;
        let elapsed = (self.now - at).max(0) as f64 / 1000.0;
        let tokens = (tokens + elapsed * LIST_FORWARD_RATE).min(LIST_FORWARD_RATE);
        if tokens < 1.0 {
            self.lists_forwarded = (tokens, self.now);
            return false;
        }
        self.lists_forwarded = (tokens - 1.0, self.now);
        self.send_link(&master, user, Message::UserListReq(req.clone()))
    }

    /// What a local answers alone in lookup mode (master down): the users
    /// it knows of, marked partial.
    pub(super) fn local_list(&self, req: &UserListReq) -> UserList {
        let mut list = self.user_list(req);
        if self.lookup_mode() {
            list.extra.insert(LIST_PARTIAL.into(), true.into());
        }
        list
    }

    /// At the master: a lookup-mode local forwards its user `user`'s
    /// `USER_LIST` request; the page goes back to that user through it.
    pub(super) fn peer_list(&mut self, server: &str, user: &str, req: UserListReq) {
        if !self.filtered(server) || ids::check_user(user).is_err() {
            return;
        }
        if !self.subs.take_list(server, self.now) {
            tracing::debug!(server, "dropped a forwarded USER_LIST: too many");
            return;
        }
        let list = self.user_list(&req);
        self.send_link(server, user, Message::UserList(list));
    }

    /// At a local: the master's answer to a user's forwarded `USER_LIST`.
    pub(super) fn list_from_master(&mut self, server: &str, user: &str, list: UserList) {
        if self.master_id.as_deref() != Some(server) {
            return;
        }
        if let Some(conn) = self.sessions.get(user).map(|s| s.conn) {
            self.send(conn, user, Message::UserList(list));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_evicts_the_least_recently_addressed() {
        let mut c = Cache::default();
        assert!(c.touch("a"));
        assert!(c.touch("b"));
        assert!(!c.touch("a"));
        assert_eq!(c.users(), ["b", "a"]);
        assert_eq!(c.pop_oldest().as_deref(), Some("b"));
        assert!(!c.contains("b") && c.contains("a"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn subscriptions_are_bounded_and_rate_limited() {
        let mut s = Subscriptions::default();
        assert_eq!(s.add("L", "a", 0), Ok(true));
        assert_eq!(s.add("L", "a", 0), Ok(false));
        assert!(s.has("L", "a") && !s.has("K", "a"));
        s.remove("L", "a");
        assert!(!s.has("L", "a"));
        // Asked slowly enough, up to the bound.
        for i in 0..SUBSCRIPTIONS_MAX {
            assert_eq!(s.add("L", &format!("u{i}"), i as i64), Ok(true));
        }
        let t = SUBSCRIPTIONS_MAX as i64 + 60_000;
        assert_eq!(s.add("L", "late", t), Err("too many subscriptions"));
        // Asked all at once: the burst, then nothing until time passes.
        for i in 0..SUBSCRIBE_BURST as usize {
            assert_eq!(s.add("K", &format!("u{i}"), 0), Ok(true));
        }
        s.remove("K", "u0");
        assert_eq!(s.add("K", "late", 0), Err("subscribing too fast"));
        assert_eq!(s.add("K", "late", 1), Ok(true));
        s.drop_server("L");
        assert_eq!(s.count("L"), 0);
        assert!(!s.has("L", "u1"));
    }
}
