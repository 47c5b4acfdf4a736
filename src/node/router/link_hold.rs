//! A second link from a server that already has a live one (DESIGN.md
//! "Links"): its hello may be a replay (every `socp` local holds the others'
//! signed hellos, from `PEER_ANNOUNCE`), so it does not displace the live
//! link at once. With a `mac-v1` session (we offered one, wrapped for the
//! key the hello names) it is held, answered, until its first frame: that
//! frame passed the session's MAC, which only the holder of the key can
//! make, and the newcomer then replaces the old link. One that proves
//! nothing within [`LINK_HOLD`] is closed; the live link never noticed.
//! Without a session (a reference peer, `--no-mac`) nothing later could
//! prove more than the hello did: it replaces the old link at once, as
//! before.

use std::collections::HashMap;
use std::time::Duration;

use super::{ConnId, LinkHelloIn, Output, Router};
use crate::wire::Envelope;

/// How long a held link has to send its first frame. A `socp` dialer sends
/// a `HEARTBEAT` as soon as its link is up; older ones send one within
/// 15 s (`conn::HEARTBEAT_EVERY`).
pub const LINK_HOLD: Duration = Duration::from_secs(20);

/// Held links one server may have at once; a further one closes the oldest.
pub const MAX_HELD_PER_SERVER: usize = 2;

/// A link waiting to prove its key.
#[derive(Debug)]
pub(super) struct Held {
    hello: LinkHelloIn,
    /// The timer that ends the wait.
    timer: String,
    since: i64,
}

/// Held links by connection.
pub(super) type HeldLinks = HashMap<ConnId, Held>;

impl Router {
    /// True if `hello` is held rather than taken now: we accepted it and it
    /// has a session. Also when no link is live: a `socp` hello the dialer
    /// sent before it knew our id names no `to`, and the master hands it to
    /// every local (`PEER_ANNOUNCE`), so within its freshness anyone holding
    /// it could otherwise take the server's place here before the real one
    /// dials (review finding).
    pub(super) fn hold_link(&mut self, hello: &LinkHelloIn) -> bool {
        if hello.dialed || hello.session.is_none() {
            return false;
        }
        // A crossed duplicate the tie-break closes is not held.
        let me = self.cfg.me.as_str();
        if let Some(old) = self.links.get(&hello.server_id)
            && old.dialed
            && hello.server_id.as_str() > me
        {
            return false;
        }
        let mut mine: Vec<(i64, ConnId)> = self
            .held
            .iter()
            .filter(|(_, h)| h.hello.server_id == hello.server_id)
            .map(|(c, h)| (h.since, *c))
            .collect();
        mine.sort_unstable();
        while mine.len() >= MAX_HELD_PER_SERVER {
            let (_, oldest) = mine.remove(0);
            self.held.remove(&oldest);
            self.out.push(Output::Close(oldest));
        }
        let timer = self.new_req_id();
        self.out.push(Output::Timer {
            req_id: timer.clone(),
            after: LINK_HOLD,
        });
        tracing::info!(server = %hello.server_id, conn = hello.conn, "link held until it proves its key");
        self.held.insert(
            hello.conn,
            Held {
                hello: hello.clone(),
                timer,
                since: self.now,
            },
        );
        true
    }

    /// A frame on `conn`: false if it is a held link's and is not from its
    /// server. A held link's first frame from its server proves the key
    /// (it passed the session's MAC): the link is taken.
    pub(super) fn proved(&mut self, conn: ConnId, env: &Envelope) -> bool {
        let Some(held) = self.held.get(&conn) else {
            return true;
        };
        if env.from != held.hello.server_id {
            return false;
        }
        let Some(held) = self.held.remove(&conn) else {
            return false;
        };
        tracing::info!(server = %held.hello.server_id, conn, "held link proved its key; it replaces the old one");
        self.take_link(held.hello, true);
        true
    }

    /// True if `req_id` was a held link's wait: it is over, and the link,
    /// which proved nothing, is closed.
    pub(super) fn hold_expired(&mut self, req_id: &str) -> bool {
        let Some(conn) = self
            .held
            .iter()
            .find(|(_, h)| h.timer == req_id)
            .map(|(c, _)| *c)
        else {
            return false;
        };
        if let Some(held) = self.held.remove(&conn) {
            tracing::warn!(server = %held.hello.server_id, conn, "closed a second link that never proved its key (a replayed hello?)");
        }
        self.out.push(Output::Close(conn));
        true
    }
}
