//! Content on its way out: where a custody entry can go now, pumping each
//! destination's entries towards their next hop in order within the hop's
//! window, acknowledgements releasing them, and what the senders are told
//! (receipts, `undecryptable` ones as `unreadable.rs` marks them, and
//! errors). Expiry of the master's mailbox too.

use std::collections::BTreeMap;

use super::{ConnId, Frame, Names, Outgoing, Output, Relay, Router, StoreOp, truncate};
use crate::node::custody::{Content, ContentKind, Dest, Entry, Hop};
use crate::wire::ErrorCode;
use crate::wire::messages::{ErrorBody, Message, Receipt, UNDECRYPTABLE};

/// Receipt statuses (see `RECEIPT`).
pub const QUEUED: &str = "queued";
pub const DELIVERED: &str = "delivered";
/// Most ids one `delivered` receipt carries before it is sent anyway.
const RECEIPT_BATCH: usize = 256;

/// How an entry leaves: on which hop, through which connection, with which `to`.
pub(super) struct Route {
    hop: Hop,
    conn: ConnId,
    to: String,
    on_link: bool,
    /// The hop never acknowledges (a reference peer or a legacy client).
    best_effort: bool,
}

impl Router {
    /// Where an entry can go now, if anywhere.
    pub(super) fn route(&self, e: &Entry) -> Option<Route> {
        let link_route = |server: &str, to: &str| {
            self.links.get(server).map(|l| Route {
                hop: Hop::Link(server.to_owned()),
                conn: l.conn,
                to: to.to_owned(),
                on_link: true,
                best_effort: !l.socp,
            })
        };
        let master = self.master_link().filter(|_| !self.cfg.master);
        match &e.dest {
            Dest::User(u) => {
                if let Some(s) = self.sessions.get(u) {
                    return Some(Route {
                        hop: Hop::Conn(s.conn),
                        conn: s.conn,
                        to: u.clone(),
                        on_link: false,
                        best_effort: s.proof.is_none(),
                    });
                }
                if let Some(p) = self
                    .presence
                    .get(u)
                    .filter(|p| p.live && p.location != self.cfg.me)
                {
                    // Earlier DMs still on the master's path: the rest follow
                    // (and wait for it if it is down); just after a start,
                    // the master's path while it is up (`sticky.rs`).
                    let dm = e.kind == ContentKind::Dm;
                    if dm && self.via_master.holds(&e.sender, u) {
                        return master.and_then(|m| link_route(m, &p.location));
                    }
                    if dm
                        && self.via_master.unsure(u)
                        && let Some(r) = master.and_then(|m| link_route(m, &p.location))
                    {
                        return Some(r);
                    }
                    return link_route(&p.location, &p.location)
                        .or_else(|| master.and_then(|m| link_route(m, &p.location)));
                }
                // A local hands its own users' content for unknown recipients
                // to the master; what came over a link waits for the user.
                master
                    .filter(|_| e.via.is_none())
                    .and_then(|m| link_route(m, m))
            }
            Dest::Server(s) => link_route(s, e.to.as_deref().unwrap_or(s)),
        }
    }

    /// Sends what `dest` has pending, in order, while its hop has room.
    pub(super) fn pump(&mut self, dest: &Dest) {
        loop {
            if self.rows_needed(dest) {
                return; // rows on disk only come first: read back, then sent
            }
            let Some(head) = self.custody.next_pending(dest).cloned() else {
                return;
            };
            if self.waits_for_master_path(dest, &head) {
                return;
            }
            let Some(route) = self.route(&head) else {
                return;
            };
            // A link still owed our own users' registrations and adverts
            // gets content once they are out (`owed.rs` pumps then).
            if let Hop::Link(server) = &route.hop
                && self.owed.owes_own(server)
            {
                return;
            }
            if self.custody.is_evicted(head.seq) {
                // Its body is on disk: read a page back, then send on.
                return self.page_in(dest);
            }
            if route.best_effort {
                self.emit_entry(&route, &head, None);
                let released = self.custody.release(&[head.seq]);
                self.persist(StoreOp::Release(released.iter().map(|e| e.seq).collect()));
                continue;
            }
            // A full window, or another frame under the same id in flight
            // on this hop (an ACK names only the id): wait for an ack.
            if self.custody.room(&route.hop) == 0
                || self.custody.in_flight(&route.hop, &head.msg_id)
            {
                self.custody.block(&route.hop, dest);
                return;
            }
            let mut seqs = vec![head.seq];
            let mut recipients = None;
            if route.on_link && head.kind.is_group() {
                // One frame per destination server: take the other members
                // behind the same hop whose next frame is this one too.
                let mut names = vec![dest_user(&head.dest)];
                let others: Vec<Entry> = self
                    .custody
                    .pending_with_msg(&head.sender, &head.msg_id)
                    .into_iter()
                    .cloned()
                    .collect();
                for other in others.iter().filter(|o| o.seq != head.seq) {
                    let at_head = self
                        .custody
                        .next_pending(&other.dest)
                        .is_some_and(|h| h.seq == other.seq);
                    if at_head && self.route(other).is_some_and(|r| r.hop == route.hop) {
                        seqs.push(other.seq);
                        names.push(dest_user(&other.dest));
                    }
                }
                recipients = Some(names.into_iter().flatten().collect::<Vec<_>>());
            }
            self.custody.send(&route.hop, &head.msg_id, &seqs);
            self.emit_entry(&route, &head, recipients);
            self.custody.sent(&seqs);
        }
    }

    fn emit_entry(&mut self, route: &Route, e: &Entry, recipients: Option<Vec<String>>) {
        let Some(content) = e.body.clone() else {
            return; // on disk only: `pump` reads it back first
        };
        if receipted_file(e)
            && let Hop::Link(server) = &route.hop
        {
            self.carried.record(&e.sender, &e.msg_id, server);
        }
        if e.kind == ContentKind::Dm
            && let Hop::Link(server) = &route.hop
        {
            self.carried.record(&e.sender, &e.msg_id, server);
            if !self.cfg.master
                && self.master_id.as_deref() == Some(server.as_str())
                && let Dest::User(u) = &e.dest
            {
                self.via_master.record(&e.sender, &e.msg_id, u, self.now);
            }
        }
        let names = match (recipients, &e.dest) {
            (Some(members), _) => Names::Members(members),
            (None, Dest::User(u)) if e.kind.is_file() => Names::User(u.clone()),
            (None, _) => Names::Nobody,
        };
        let relay = Relay {
            content,
            on_link: route.on_link,
            names,
        };
        self.out.push(Output::Send(
            route.conn,
            Outgoing {
                to: route.to.clone(),
                frame: Frame::Content(relay),
            },
        ));
    }

    /// A DM to a user whose earlier DMs are still on the master's path
    /// while a direct link to their server is up: it waits (at most
    /// `sticky::BARRIER_MS`) for that path to drain, so that it can go
    /// direct without overtaking them (`sticky.rs`).
    fn waits_for_master_path(&mut self, dest: &Dest, head: &Entry) -> bool {
        let Dest::User(user) = dest else {
            return false;
        };
        if head.kind != ContentKind::Dm
            || !self.via_master.holds(&head.sender, user)
            || self.sessions.contains_key(user)
        {
            return false;
        }
        // A direct path to switch to; and receipts to say the master's has
        // drained (a client without a signed hello, no proof, sends none).
        let direct = self
            .presence
            .get(user)
            .filter(|p| p.live && p.location != self.cfg.me && p.proof.is_some())
            .is_some_and(|p| self.links.get(&p.location).is_some_and(|l| l.socp));
        if !direct {
            return false;
        }
        match self.via_master.barrier(&head.sender, user, self.now) {
            super::sticky::Barrier::New(since) => {
                let req_id = self.new_req_id();
                let wait = super::Pending::Barrier {
                    sender: head.sender.clone(),
                    user: user.clone(),
                    since,
                };
                self.pending.insert(req_id.clone(), wait);
                self.out.push(Output::Timer {
                    req_id,
                    after: std::time::Duration::from_millis(super::sticky::BARRIER_MS as u64),
                });
                true
            }
            super::sticky::Barrier::Waiting => true,
            super::sticky::Barrier::Over => false,
        }
    }

    /// The wait for `user`'s master path ran out: what waited goes that
    /// way (and what comes in the next `sticky::BARRIER_MS`, then the next
    /// DM waits again).
    pub(super) fn barrier_over(&mut self, sender: &str, user: &str, since: i64) {
        self.via_master.barrier_over(sender, user, since, self.now);
        // Drained meanwhile (what waited went direct then), or not: either
        // way, whatever still waits for `user` is sent now.
        self.pump(&Dest::User(user.to_owned()));
    }

    /// Sends what waited for recipients whose master path was released
    /// (`sticky.rs`: confirmed, expired or forgotten).
    pub(super) fn send_freed(&mut self) {
        for recipient in self.via_master.take_freed() {
            self.pump(&Dest::User(recipient));
        }
    }

    /// Pumps every destination with something pending.
    pub(super) fn pump_all(&mut self) {
        for dest in self.custody.pending_dests() {
            self.pump(&dest);
        }
    }

    /// A hop went away: what was in flight on it goes out again, in order.
    pub(super) fn hop_down(&mut self, hop: &Hop) {
        for dest in self.custody.hop_down(hop) {
            self.pump(&dest);
        }
    }

    /// `hop` acknowledged `msg_ids`: release them, tell senders their DMs
    /// (and DM files' ends) were delivered (when the hop is the recipient's
    /// client), send more.
    pub(super) fn acked(&mut self, hop: Hop, msg_ids: Vec<String>) {
        let released = self.custody.ack(&hop, &msg_ids);
        if !released.is_empty() {
            self.persist(StoreOp::Release(released.iter().map(|e| e.seq).collect()));
        }
        if let Hop::Conn(conn) = hop {
            let mut by_sender: BTreeMap<(String, Option<String>), Vec<String>> = BTreeMap::new();
            let mut unreadable: BTreeMap<(String, Option<String>), Vec<String>> = BTreeMap::new();
            for e in &released {
                // Reported undecryptable by its recipient (`unreadable.rs`):
                // said so, at once, never `delivered`. Any content's mark
                // is taken with its delivery, receipted or not.
                let reported = matches!(e.dest, Dest::User(_))
                    && self.unreadable.take(conn, &e.sender, &e.msg_id);
                if e.kind != ContentKind::Dm && !receipted_file(e) {
                    continue;
                }
                let batch = if reported {
                    &mut unreadable
                } else {
                    &mut by_sender
                };
                batch
                    .entry((e.sender.clone(), e.via.clone()))
                    .or_default()
                    .push(e.msg_id.clone());
            }
            for ((sender, via), ids) in unreadable {
                self.receipt_back(via.as_deref(), &sender, ids, UNDECRYPTABLE);
            }
            for (key, ids) in by_sender {
                let held = self.receipts.entry(key.clone()).or_default();
                held.extend(ids);
                if held.len() >= RECEIPT_BATCH {
                    let ids = self.receipts.remove(&key).unwrap_or_default();
                    self.receipt_back(key.1.as_deref(), &key.0, ids, DELIVERED);
                }
            }
        }
        for dest in self.custody.unblock(&hop) {
            self.pump(&dest);
        }
    }

    /// Sends the `delivered` receipts held back for batching.
    pub(super) fn flush_receipts(&mut self) {
        for ((sender, via), ids) in std::mem::take(&mut self.receipts) {
            self.receipt_back(via.as_deref(), &sender, ids, DELIVERED);
        }
    }

    /// Sends `delivered` (or `undecryptable`) receipts back over the link
    /// the DMs came in on, if it is up: only the server that handed them to
    /// us may confirm them to the sender's server (the master, for its
    /// mailbox, even when the two locals are linked directly). Otherwise as
    /// [`Self::send_receipt`].
    fn receipt_back(&mut self, via: Option<&str>, user: &str, msg_ids: Vec<String>, status: &str) {
        let back = via
            .filter(|v| self.links.get(*v).is_some_and(|l| l.socp))
            .filter(|_| !self.sessions.contains_key(user));
        let Some(via) = back else {
            return self.send_receipt(None, user, msg_ids, status);
        };
        let to = self
            .presence
            .get(user)
            .filter(|p| p.live)
            .map_or_else(|| via.to_owned(), |p| p.location.clone());
        let receipt = Message::Receipt(Receipt {
            user_id: user.to_owned(),
            msg_ids,
            status: status.to_owned(),
            extra: Default::default(),
        });
        let via = via.to_owned();
        self.send_link(&via, &to, receipt);
    }

    /// The ids of a receipt from `server` about `user`'s DMs that `server`
    /// may confirm: DMs we handed to it, or, from our master, DMs we handed
    /// to anyone (the master checks what it relays the same way).
    /// PROTOCOL.md C13: a server cannot confirm content it never carried.
    pub(super) fn receipt_ids_from(
        &mut self,
        server: &str,
        user: &str,
        msg_ids: Vec<String>,
        status: &str,
    ) -> Vec<String> {
        let from_master = !self.cfg.master && self.master_id.as_deref() == Some(server);
        let (ok, forged): (Vec<String>, Vec<String>) = msg_ids.into_iter().partition(|id| {
            self.carried.went_to(user, id, server)
                || (from_master && self.carried.carried(user, id))
        });
        if !forged.is_empty() {
            tracing::warn!(server, user = %truncate(user), ids = forged.len(), "dropped receipts for content that server did not carry");
        }
        let last_word = status == DELIVERED || status == UNDECRYPTABLE;
        if last_word && (self.sessions.contains_key(user) || self.cfg.master) {
            // Delivered (readable or not) is final: on the sender's own
            // server, and at the master once it relays it.
            for id in &ok {
                self.carried.forget(user, id);
            }
        }
        if last_word {
            // The master's path drains whether or not the sender is still
            // online here (only DMs this node handed the master count).
            for id in &ok {
                self.via_master.confirm(user, id);
            }
            self.send_freed();
        }
        ok
    }

    /// Routes a receipt towards `user`, best effort, never back where it came from.
    pub(super) fn send_receipt(
        &mut self,
        from_link: Option<&str>,
        user: &str,
        msg_ids: Vec<String>,
        status: &str,
    ) {
        let receipt = Message::Receipt(Receipt {
            user_id: user.to_owned(),
            msg_ids,
            status: status.to_owned(),
            extra: Default::default(),
        });
        if let Some(s) = self.sessions.get(user) {
            // A client that did not ask for `undecryptable` could show it
            // as delivered: it gets nothing.
            let understood = status != UNDECRYPTABLE || self.takes_undecryptable(user);
            if s.proof.is_some() && understood {
                let conn = s.conn;
                self.send(conn, user, receipt);
            }
            return;
        }
        let socp = |this: &Self, s: &str| {
            this.links.get(s).is_some_and(|l| l.socp) && Some(s) != from_link
        };
        if let Some(loc) = self
            .presence
            .get(user)
            .filter(|p| p.live)
            .map(|p| p.location.clone())
        {
            if socp(self, &loc) {
                self.send_link(&loc, &loc, receipt);
                return;
            }
            if let Some(m) = self.master_link().map(str::to_owned)
                && !self.cfg.master
                && socp(self, &m)
            {
                self.send_link(&m, &loc, receipt);
            }
            return;
        }
        if !self.cfg.master
            && let Some(m) = self.master_link().map(str::to_owned)
            && socp(self, &m)
        {
            self.send_link(&m, &m, receipt);
        }
    }

    /// Sends an error to `user`, here or on the server the frame came from.
    pub(super) fn report(
        &mut self,
        from_link: Option<&str>,
        user: &str,
        code: ErrorCode,
        detail: String,
        msg_id: Option<&str>,
    ) {
        if from_link.is_some() && msg_id.is_some() {
            self.dead_letters += 1;
        }
        tracing::debug!(
            user = %truncate(user),
            msg_id = %truncate(msg_id.unwrap_or("-")),
            server = from_link.unwrap_or("-"),
            code = %code,
            "content refused"
        );
        let error = Message::Error(ErrorBody::about(code, detail, msg_id));
        match from_link {
            None => {
                if let Some(conn) = self.sessions.get(user).map(|s| s.conn) {
                    self.send(conn, user, error);
                }
            }
            Some(server) => {
                if self.links.get(server).is_some_and(|l| l.socp) && !user.is_empty() {
                    self.send_link(server, user, error);
                }
            }
        }
    }

    /// Housekeeping: the master drops mailbox frames older than the limit.
    pub(super) fn tick(&mut self) {
        self.sweep_custody();
        if !self.cfg.master {
            self.via_master.expire(self.now);
            self.send_freed();
            return;
        }
        let cutoff = self.now - self.cfg.limits.max_age_ms;
        let sessions = &self.sessions;
        let presence = &self.presence;
        let gone = self.custody.expire(cutoff, |d| match d {
            Dest::User(u) => !sessions.contains_key(u) && !presence.get(u).is_some_and(|p| p.live),
            Dest::Server(_) => false,
        });
        if !gone.is_empty() {
            self.expired += gone.len() as u64;
            tracing::info!(
                frames = gone.len(),
                total = self.expired,
                "dropped mailbox frames past their age limit"
            );
            self.persist(StoreOp::Release(gone.iter().map(|e| e.seq).collect()));
        }
    }
}

/// A DM file's `FILE_END` (its sender asked for receipts): its sender is
/// told when it is delivered, as for a DM, so a file shows ✓✓ only once its
/// recipient's client has all of it.
pub(super) fn receipted_file(e: &Entry) -> bool {
    e.kind == ContentKind::FileEnd
        && matches!(e.body.as_deref(), Some(Content::FileEnd(end)) if crate::content::file_end_wants_receipts(&end.extra))
}

fn dest_user(d: &Dest) -> Option<String> {
    match d {
        Dest::User(u) => Some(u.clone()),
        Dest::Server(_) => None,
    }
}
