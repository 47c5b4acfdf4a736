//! What a link is owed in bulk, sent at the pace its peer reads.
//!
//! Some steps owe one link a frame or two per user: a link coming up (our
//! users, registered with our master and advertised; from the master,
//! everyone else online), the master's answer to a `PRESENCE_SUBSCRIBE`
//! (up to 1,024 ids at once, 65,536 after a re-link), a local's link going
//! down at the master (each of its users removed, on every other link).
//! Queued in one step, a few thousand users overflowed the link's queue
//! (8,192 frames) and the hub dropped the link as slow: a local with more
//! than ~4,096 users online lost its master link at every re-link, and
//! redialled, in a loop (review finding M4).
//!
//! Instead the router keeps, per link, the *users* it owes news of, each
//! once, and sends [`CHUNK`] of them at a time: one chunk at once, the next
//! when the hub says the link's queue has drained ([`Output::WhenDrained`],
//! answered by `Input::Drained`). What is sent is a user's presence as it
//! is *when sent*: a user who left or moved meanwhile is told as they are
//! now, so a frame sent directly since (a live advert or removal) is never
//! overtaken by an older one. A link is owed each user at most once (news
//! owed again merges with what is owed), so what it is owed is bounded by
//! the users this node knows of, however often links flap or a local
//! re-subscribes.
//!
//! Custody waits on a link that is still owed our own users (their
//! registrations and adverts): content and receipts for a user the master
//! does not know yet would be mailboxed or dropped there (the order the
//! link-up had when all of it went at once).
//!
//! [`Output::WhenDrained`]: super::Output::WhenDrained

use std::collections::{HashMap, VecDeque};

use serde_json::Map;

use super::{ConnId, Output, Router, registration};
use crate::wire::ids;
use crate::wire::messages::{Message, Presence};

/// Users whose frames go out at once; the next as many when the link's
/// queue has drained (`hub.rs` asks at a quarter of the queue): at most
/// two frames each, well within what a link's queue holds.
pub const CHUNK: usize = 512;

/// News of one user owed to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owed {
    /// One of our users: registered (on our master's link) and advertised.
    Own,
    /// The user's presence as this node knows it when sent: an advert if
    /// they are online (here, or at a server other than the link's own);
    /// nothing if they left meanwhile (their removal went to every link).
    Presence,
    /// The user's server's link went down (they were at `location`): a
    /// removal, unless they are online again when sent (then an advert).
    Gone(String),
}

/// What each link is owed, by server.
#[derive(Default)]
pub(super) struct OwedLinks {
    by_server: HashMap<String, LinkOwed>,
}

#[derive(Default)]
struct LinkOwed {
    /// Users in the order they were first owed.
    order: VecDeque<String>,
    /// What each is owed (one entry per user in `order`).
    news: HashMap<String, Owed>,
    /// Of those, our own users (custody waits until none is left).
    own: usize,
    /// The hub was asked to say when the link's queue has drained.
    waiting: bool,
}

impl LinkOwed {
    /// Owes `user` `news`, merged with what they are owed already: our own
    /// users stay ours; a removal takes the place of an advert (both are
    /// told as they are when sent, and a removal also says "gone").
    fn owe(&mut self, user: String, news: Owed) {
        match self.news.get_mut(&user) {
            None => {
                if news == Owed::Own {
                    self.own += 1;
                }
                self.news.insert(user.clone(), news);
                self.order.push_back(user);
            }
            Some(Owed::Own) => {}
            Some(held) => {
                if news == Owed::Own {
                    self.own += 1;
                    *held = news;
                } else if matches!(news, Owed::Gone(_)) {
                    *held = news;
                }
            }
        }
    }

    /// The next `n` users and what each is owed.
    fn take(&mut self, n: usize) -> Vec<(String, Owed)> {
        let n = n.min(self.order.len());
        let mut out = Vec::with_capacity(n);
        for user in self.order.drain(..n) {
            if let Some(news) = self.news.remove(&user) {
                if news == Owed::Own {
                    self.own -= 1;
                }
                out.push((user, news));
            }
        }
        if self.order.is_empty() {
            // Give the buffers back: a snapshot can be 100,000 users long.
            self.order = VecDeque::new();
            self.news = HashMap::new();
        }
        out
    }
}

impl OwedLinks {
    pub fn is_empty(&self) -> bool {
        self.by_server.is_empty()
    }

    /// Forgets what a link that went down was owed.
    pub fn drop_server(&mut self, server: &str) {
        self.by_server.remove(server);
    }

    /// Forgets everything (the node is stopping: its goodbyes went out).
    pub fn clear(&mut self) {
        self.by_server.clear();
    }

    /// True while the link to `server` is owed any of our own users.
    pub fn owes_own(&self, server: &str) -> bool {
        self.by_server.get(server).is_some_and(|o| o.own > 0)
    }

    /// Users `server` is owed news of.
    #[cfg(test)]
    pub fn len(&self, server: &str) -> usize {
        self.by_server.get(server).map_or(0, |o| o.order.len())
    }
}

impl Router {
    /// Owes the link to `server` news of `user` (sent by [`Self::send_owed`]).
    pub(super) fn owe(&mut self, server: &str, user: String, news: Owed) {
        if !self.links.contains_key(server) {
            return;
        }
        let owed = self.owed.by_server.entry(server.to_owned()).or_default();
        owed.owe(user, news);
    }

    /// Owes every link but `except`'s news of `user` (lookup-mode locals
    /// only if they subscribed to `user`).
    pub(super) fn owe_to_all(&mut self, except: &str, user: &str, news: &Owed) {
        let servers: Vec<String> = self
            .links
            .keys()
            .filter(|id| id.as_str() != except)
            .filter(|id| !self.filtered(id) || self.subs.has(id, user))
            .cloned()
            .collect();
        for server in servers {
            self.owe(&server, user.to_owned(), news.clone());
        }
    }

    /// The link to `server` drained: it may be sent its next chunk.
    pub(super) fn drained(&mut self, conn: ConnId) {
        let Some(server) = self.conn_links.get(&conn) else {
            return;
        };
        if let Some(owed) = self.owed.by_server.get_mut(server) {
            owed.waiting = false;
        }
    }

    /// Sends a chunk of what each link is owed, unless it waits for its
    /// queue to drain; a link with more to come asks the hub to say when.
    pub(super) fn send_owed(&mut self) {
        if self.owed.is_empty() {
            return;
        }
        let ready: Vec<String> = self
            .owed
            .by_server
            .iter()
            .filter(|(_, o)| !o.waiting)
            .map(|(s, _)| s.clone())
            .collect();
        for server in ready {
            self.send_owed_to(&server);
        }
    }

    /// Sends the link to `server` a chunk of what it is owed now (if it is
    /// not waiting for its queue to drain). Once it is owed none of our own
    /// users, custody may use it.
    pub(super) fn send_owed_to(&mut self, server: &str) {
        let Some(conn) = self.links.get(server).map(|l| l.conn) else {
            self.owed.drop_server(server);
            return;
        };
        let Some(owed) = self.owed.by_server.get_mut(server) else {
            return;
        };
        if owed.waiting {
            return;
        }
        let owed_own = owed.own > 0;
        let chunk = owed.take(CHUNK);
        let own_done = owed_own && owed.own == 0;
        if owed.order.is_empty() {
            self.owed.drop_server(server);
        } else {
            owed.waiting = true;
            self.out.push(Output::WhenDrained(conn));
        }
        for (user, news) in chunk {
            self.send_news(server, user, news);
        }
        if own_done {
            self.pump_all();
        }
    }

    /// One user's news, as it is now.
    fn send_news(&mut self, server: &str, user: String, news: Owed) {
        match news {
            Owed::Own => {
                let Some(session) = self.sessions.get(&user) else {
                    return; // gone: its removal went out when it left
                };
                if self.master_id.as_deref() == Some(server) {
                    let reg = registration(&user, &session.key, session.proof());
                    self.send_link(server, server, reg);
                }
                let adv = self.own_advert(&user);
                self.send_link(server, ids::TO_ALL, adv);
            }
            Owed::Presence => self.send_presence(server, user, None),
            Owed::Gone(location) => self.send_presence(server, user, Some(location)),
        }
    }

    /// `user`'s advert if they are online (here, or at a server other than
    /// the link's own); else, if `gone_from` is given, their removal.
    fn send_presence(&mut self, server: &str, user: String, gone_from: Option<String>) {
        if self.filtered(server) && !self.subs.has(server, &user) {
            return;
        }
        if self.sessions.contains_key(&user) {
            let adv = self.own_advert(&user);
            self.send_link(server, ids::TO_ALL, adv);
            return;
        }
        let msg = match (self.presence.get(&user), gone_from) {
            (Some(p), _) if p.live => {
                if p.location == server {
                    return; // its own user: it knows
                }
                Message::UserAdvertise(Presence {
                    user_id: user,
                    location: p.location.clone(),
                    proof: p.proof.clone(),
                    extra: Map::new(),
                })
            }
            (_, Some(location)) => Message::UserRemove(Presence {
                user_id: user,
                location,
                proof: None,
                extra: Map::new(),
            }),
            (_, None) => return,
        };
        self.send_link(server, ids::TO_ALL, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_owed_once_and_a_removal_takes_the_place_of_an_advert() {
        let mut o = LinkOwed::default();
        o.owe("a".into(), Owed::Presence);
        o.owe("b".into(), Owed::Own);
        o.owe("a".into(), Owed::Gone("server_x".into()));
        o.owe("a".into(), Owed::Presence);
        o.owe("b".into(), Owed::Gone("server_x".into()));
        o.owe("c".into(), Owed::Presence);
        assert_eq!(o.order.len(), 3, "each user once");
        assert_eq!(o.own, 1);
        let taken = o.take(2);
        assert_eq!(
            taken,
            [
                ("a".to_owned(), Owed::Gone("server_x".into())),
                ("b".to_owned(), Owed::Own)
            ]
        );
        assert_eq!(o.own, 0);
        assert_eq!(o.take(5), [("c".to_owned(), Owed::Presence)]);
        assert!(o.order.is_empty() && o.news.is_empty());
    }
}
