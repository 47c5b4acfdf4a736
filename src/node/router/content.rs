//! Content: DMs, group key shares, group messages and files. Every piece is
//! taken into custody (persisted, then acknowledged to the previous hop),
//! one entry per destination, and pumped towards its next hop in order,
//! within a window of unacknowledged frames per hop. What has nowhere to go
//! waits; at the master that is the offline mailbox.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{
    ConnId, Outgoing, Output, Router, StoreOp, error_payload, payload_of, take_recipients, truncate,
};
use crate::node::custody::{Dest, Entry, Hop};
use crate::node::state::GroupRecord;
use crate::wire::ids::{self, IdKind};
use crate::wire::messages::{self, Deliver, FileChunk, FileEnd, FileStart, Message, Receipt};
use crate::wire::{Envelope, ErrorCode};

/// Receipt statuses (see `RECEIPT`).
pub const QUEUED: &str = "queued";
pub const DELIVERED: &str = "delivered";
/// Most ids one `delivered` receipt carries before it is sent anyway.
const RECEIPT_BATCH: usize = 256;

/// How an entry leaves: on which hop, through which connection, with which `to`.
struct Route {
    hop: Hop,
    conn: ConnId,
    to: String,
    on_link: bool,
    /// The hop never acknowledges (a reference peer or a legacy client).
    best_effort: bool,
}

fn is_group_kind(kind: &str) -> bool {
    matches!(kind, "MSG_GROUP" | "GROUP_KEY_SHARE")
}

fn is_file_kind(kind: &str) -> bool {
    matches!(kind, "FILE_START" | "FILE_CHUNK" | "FILE_END")
}

/// The content's `msg_id`, derived from the SHA-256 of its canonical payload
/// when the sender (a reference client) set none, and written into it.
fn ensure_msg_id(payload: &mut Map<String, Value>) -> String {
    if let Some(Value::String(id)) = payload.get("msg_id")
        && !id.is_empty()
    {
        return id.clone();
    }
    let id = crate::content::derived_msg_id(payload);
    payload.insert("msg_id".into(), Value::String(id.clone()));
    id
}

fn file_user_id(msg: &Message) -> Option<String> {
    match msg {
        Message::FileStart(FileStart { user_id, .. })
        | Message::FileChunk(FileChunk { user_id, .. })
        | Message::FileEnd(FileEnd { user_id, .. }) => user_id.clone(),
        _ => None,
    }
}

/// What to take into custody for one incoming piece of content.
struct Intake {
    msg_id: String,
    kind: String,
    payload: Map<String, Value>,
    sender: String,
    dests: Vec<(Dest, Option<String>)>,
    /// The payload, frozen for the entries (set by `take`).
    shared: Arc<Map<String, Value>>,
    /// Its size as JSON, for mailbox quotas.
    bytes: usize,
}

impl Router {
    fn entry(&self, intake: &Intake, dest: Dest, to: Option<String>, via: Option<&str>) -> Entry {
        let bytes = intake.bytes;
        Entry {
            seq: 0,
            msg_id: intake.msg_id.clone(),
            dest,
            kind: intake.kind.clone(),
            payload: intake.shared.clone(),
            to,
            via: via.map(str::to_owned),
            sender: intake.sender.clone(),
            bytes,
            created_ms: self.now,
        }
    }

    /// Content from our own user on `conn`.
    pub(super) fn user_content(&mut self, conn: ConnId, user: &str, env: Envelope, msg: Message) {
        let legacy = self.sessions.get(user).is_some_and(|s| s.proof.is_none());
        let mut payload = msg.to_payload();
        // Who a group frame is fanned out to is the servers' business: a
        // user cannot name it (the master would deliver to whoever it named).
        payload.remove("recipients");
        let msg_id = ensure_msg_id(&mut payload);
        let intake = match self.user_intake(user, &env, msg, payload, msg_id.clone()) {
            Ok(intake) => intake,
            Err((code, detail)) => {
                let payload = content_error(code, detail, &msg_id);
                return self.send(conn, "ERROR", user, payload);
            }
        };
        // Refused content (a full quota) is never also acknowledged: the
        // sender keeps it and learns why from the error (PROTOCOL.md C12).
        if self.take(intake, None) == Taken::Refused {
            return;
        }
        if !legacy {
            self.out.push(Output::AckAfterPersist {
                conn,
                to: user.to_owned(),
                msg_id,
            });
        }
    }

    fn user_intake(
        &mut self,
        user: &str,
        env: &Envelope,
        msg: Message,
        mut payload: Map<String, Value>,
        msg_id: String,
    ) -> Result<Intake, (ErrorCode, String)> {
        let not_allowed =
            |what: &str| (ErrorCode::NotAllowed, format!("{what} must be the sender"));
        let mut intake = Intake {
            msg_id,
            kind: msg.type_name().to_owned(),
            payload: Map::new(),
            sender: user.to_owned(),
            dests: Vec::new(),
            shared: Arc::default(),
            bytes: 0,
        };
        match msg {
            Message::MsgPrivate(dm) => {
                ids::check_user(&env.to).map_err(|_| {
                    (
                        ErrorCode::BadFrame,
                        format!("{:?} is not a user id", truncate(&env.to)),
                    )
                })?;
                self.check_registered(&env.to)?;
                let deliver = Deliver {
                    user_id: env.to.clone(),
                    ciphertext: dm.ciphertext,
                    iv: dm.iv,
                    tag: dm.tag,
                    wrapped_key: dm.wrapped_key,
                    sender: user.to_owned(),
                    sender_pub: dm.sender_pub,
                    content_sig: dm.content_sig,
                    content_ts: dm.content_ts,
                    msg_id: Some(intake.msg_id.clone()),
                    extra: dm.extra,
                };
                intake.kind = "DELIVER".into();
                intake.payload = payload_of(&deliver);
                intake.dests.push((Dest::User(env.to.clone()), None));
            }
            Message::GroupKeyShare(share) => {
                if share.creator != user {
                    return Err(not_allowed("creator"));
                }
                if share.shares.len() > self.cfg.max_group_members {
                    return Err((
                        ErrorCode::TooLarge,
                        format!(
                            "a group share may name at most {} members ({} given)",
                            self.cfg.max_group_members,
                            share.shares.len()
                        ),
                    ));
                }
                ids::check_group(&share.group_id)
                    .map_err(|e| (ErrorCode::BadFrame, e.to_string()))?;
                self.check_share(&share)?;
                let mut members: BTreeSet<String> =
                    share.shares.iter().map(|s| s.member.clone()).collect();
                members.insert(share.creator.clone());
                intake.payload = payload;
                if self.cfg.master {
                    self.record_group(&share.group_id, members.clone(), &share.creator);
                    intake.dests = self.group_dests(user, members.into_iter().collect(), None);
                } else {
                    // The master decides (it knows the group's owner and
                    // every member's key) and fans the share out to every
                    // member, ours included: nothing is adopted or recorded
                    // here before it has said yes.
                    let master = self.master_id.clone().ok_or((
                        ErrorCode::Timeout,
                        "this server has not linked to its master yet; try again shortly"
                            .to_owned(),
                    ))?;
                    intake.dests =
                        vec![(Dest::Server(master.clone()), Some(share.group_id.clone()))];
                }
            }
            Message::MsgGroup(m) => {
                if m.from != user {
                    return Err(not_allowed("from"));
                }
                let members = self.groups.get(&m.group_id).map(|g| g.members.clone());
                if members.is_none() && self.cfg.master {
                    return Err((
                        ErrorCode::UserNotFound,
                        format!("unknown group {}", m.group_id),
                    ));
                }
                intake.payload = payload;
                intake.dests = self.group_dests(user, members.unwrap_or_default(), None);
            }
            Message::FileStart(_) | Message::FileChunk(_) | Message::FileEnd(_) => {
                if let Message::FileStart(start) = &msg
                    && start.size > self.cfg.max_file_size
                {
                    return Err((
                        ErrorCode::TooLarge,
                        format!(
                            "{} bytes is over this server's {}-byte file limit",
                            start.size, self.cfg.max_file_size
                        ),
                    ));
                }
                if let Some(from) = payload.get("from")
                    && from.as_str() != Some(user)
                {
                    return Err(not_allowed("from"));
                }
                match ids::classify(&env.to) {
                    Ok(IdKind::User) => {
                        self.check_registered(&env.to)?;
                        payload.insert("user_id".into(), Value::String(env.to.clone()));
                        intake.payload = payload;
                        intake.dests.push((Dest::User(env.to.clone()), None));
                    }
                    Ok(IdKind::Group) => {
                        let members = self.groups.get(&env.to).map(|g| g.members.clone());
                        if members.is_none() && self.cfg.master {
                            return Err((
                                ErrorCode::UserNotFound,
                                format!("unknown group {}", env.to),
                            ));
                        }
                        intake.payload = payload;
                        intake.dests = self.group_dests(
                            user,
                            members.unwrap_or_default(),
                            Some(env.to.clone()),
                        );
                    }
                    _ => {
                        return Err((
                            ErrorCode::BadFrame,
                            format!("{:?} is not a user or group id", truncate(&env.to)),
                        ));
                    }
                }
            }
            other => {
                return Err((
                    ErrorCode::NotAllowed,
                    format!("{} is not content", other.type_name()),
                ));
            }
        }
        Ok(intake)
    }

    /// The master knows every registered user; content for anyone else is refused.
    fn check_registered(&self, user: &str) -> Result<(), (ErrorCode, String)> {
        if self.cfg.master && !self.users.contains_key(user) {
            return Err((
                ErrorCode::UserNotFound,
                format!("{user} is not a registered user"),
            ));
        }
        Ok(())
    }

    /// Destinations of a group frame from our own user: a local serves the
    /// members here and hands one copy to the master, which serves the rest;
    /// the master serves every member.
    fn group_dests(
        &self,
        sender: &str,
        members: Vec<String>,
        group_to: Option<String>,
    ) -> Vec<(Dest, Option<String>)> {
        let members = members.into_iter().filter(|m| m != sender);
        if self.cfg.master {
            return members.map(|m| (Dest::User(m), None)).collect();
        }
        let mut dests: Vec<(Dest, Option<String>)> = members
            .filter(|m| self.sessions.contains_key(m))
            .map(|m| (Dest::User(m), None))
            .collect();
        if let Some(master) = self.master_id.clone() {
            dests.push((
                Dest::Server(master.clone()),
                Some(group_to.unwrap_or(master)),
            ));
        }
        dests
    }

    /// Content that arrived over the link from `server`.
    pub(super) fn link_content(&mut self, conn: ConnId, server: &str, env: Envelope, msg: Message) {
        let mut payload = msg.to_payload();
        let msg_id = ensure_msg_id(&mut payload);
        let acks = self.links.get(server).is_some_and(|l| l.socp);
        let mut intake = Intake {
            msg_id: msg_id.clone(),
            kind: msg.type_name().to_owned(),
            payload,
            sender: String::new(),
            dests: Vec::new(),
            shared: Arc::default(),
            bytes: 0,
        };
        match msg {
            Message::PeerDeliver(d) => {
                intake.kind = "DELIVER".into();
                intake.sender = d.sender.clone();
                if self.cfg.master && !self.users.contains_key(&d.user_id) {
                    self.report(
                        Some(server),
                        &d.sender,
                        ErrorCode::UserNotFound,
                        format!("{} is not a registered user", d.user_id),
                        Some(&msg_id),
                    );
                } else {
                    intake.dests.push((Dest::User(d.user_id), None));
                }
            }
            Message::GroupKeyShare(share) => {
                intake.sender = share.creator.clone();
                let from_master = !self.cfg.master && self.master_id.as_deref() == Some(server);
                // The master checks every share it is handed; a local takes
                // the master's word (it relays only what it checked).
                let verdict = if from_master {
                    Ok(())
                } else if self.cfg.master {
                    self.check_share(&share)
                } else {
                    Err((
                        ErrorCode::NotAllowed,
                        "group key shares travel through the master".to_owned(),
                    ))
                };
                if let Err((code, detail)) = verdict {
                    tracing::warn!(server, group = %truncate(&share.group_id), creator = %truncate(&share.creator), %detail, "refused a group key share");
                    self.report(Some(server), &share.creator, code, detail, Some(&msg_id));
                } else {
                    let mut members: BTreeSet<String> =
                        share.shares.iter().map(|s| s.member.clone()).collect();
                    members.insert(share.creator.clone());
                    self.record_group(&share.group_id, members.clone(), &share.creator);
                    let recipients = take_recipients(&mut intake.payload);
                    // The master serves every member of a share, those on
                    // the server it came from too (that server waited for
                    // the master's check).
                    intake.dests = if self.cfg.master {
                        members
                            .into_iter()
                            .filter(|m| m != &share.creator)
                            .map(|m| (Dest::User(m), None))
                            .collect()
                    } else {
                        self.relayed_group_dests(
                            server,
                            &share.creator,
                            recipients,
                            members.into_iter().collect(),
                        )
                    };
                }
            }
            Message::MsgGroup(m) => {
                intake.sender = m.from.clone();
                let recipients = take_recipients(&mut intake.payload);
                // The master fans out to the members it recorded, never to a
                // list another server names.
                let recipients = recipients.filter(|_| !self.cfg.master);
                let members = self
                    .groups
                    .get(&m.group_id)
                    .map(|g| g.members.clone())
                    .unwrap_or_default();
                if recipients.is_none() && members.is_empty() {
                    self.report(
                        Some(server),
                        &m.from,
                        ErrorCode::UserNotFound,
                        format!("unknown group {}", m.group_id),
                        Some(&msg_id),
                    );
                }
                intake.dests = self.relayed_group_dests(server, &m.from, recipients, members);
            }
            Message::FileStart(_) | Message::FileChunk(_) | Message::FileEnd(_) => {
                intake.sender = intake
                    .payload
                    .get("from")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                match file_user_id(&msg) {
                    Some(user) => intake.dests.push((Dest::User(user), None)),
                    None if ids::check_group(&env.to).is_ok() => {
                        let members = self
                            .groups
                            .get(&env.to)
                            .map(|g| g.members.clone())
                            .unwrap_or_default();
                        let sender = intake.sender.clone();
                        intake.dests = self.relayed_group_dests(server, &sender, None, members);
                    }
                    None => tracing::debug!(server, "file frame without user_id or group"),
                }
            }
            _ => return,
        }
        // Over a quota here for every destination: the sender was told (it
        // is set aside and counted, PROTOCOL.md C12), and the server that
        // handed it on is acknowledged so that it does not keep it: content
        // the next hop holds back must not pile up where it came from.
        self.take(intake, Some(server));
        if acks {
            self.out.push(Output::AckAfterPersist {
                conn,
                to: server.to_owned(),
                msg_id,
            });
        }
    }

    /// Destinations of a group frame relayed by `server`: the members it
    /// names (or, without a list, the members we know), except the sender;
    /// the master leaves out the members `server` hosts (it served them).
    fn relayed_group_dests(
        &self,
        server: &str,
        sender: &str,
        recipients: Option<Vec<String>>,
        members: Vec<String>,
    ) -> Vec<(Dest, Option<String>)> {
        let named = recipients.is_some();
        recipients
            .unwrap_or(members)
            .into_iter()
            .filter(|m| m != sender)
            .filter(|m| {
                if self.cfg.master {
                    !self
                        .presence
                        .get(m)
                        .is_some_and(|p| p.live && p.location == server)
                } else {
                    named || self.sessions.contains_key(m)
                }
            })
            .map(|m| (Dest::User(m), None))
            .collect()
    }

    /// PROTOCOL.md C10: a share for a known group must come from its owner;
    /// at the master, its content signature must verify with the creator's
    /// directory key and every member must be registered.
    fn check_share(&self, share: &messages::GroupKeyShare) -> Result<(), (ErrorCode, String)> {
        if let Some(owner) = self
            .groups
            .get(&share.group_id)
            .and_then(|g| g.owner.as_deref())
            && owner != share.creator
        {
            return Err((
                ErrorCode::NotAllowed,
                format!(
                    "{} belongs to {owner}: only its owner may change its key or members; pick another group id",
                    truncate(&share.group_id)
                ),
            ));
        }
        // A group recorded before owners were kept: only one of its
        // members may become its owner (the next share pins its creator).
        if let Some(g) = self.groups.get(&share.group_id)
            && g.owner.is_none()
            && !g.members.iter().any(|m| m == &share.creator)
        {
            return Err((
                ErrorCode::NotAllowed,
                format!(
                    "{} has members already and {} is not one of them; pick another group id",
                    truncate(&share.group_id),
                    truncate(&share.creator)
                ),
            ));
        }
        if !self.cfg.master {
            return Ok(());
        }
        let Some(creator) = self.users.get(&share.creator) else {
            return Err((
                ErrorCode::UserNotFound,
                format!("{} is not a registered user", truncate(&share.creator)),
            ));
        };
        let verified = crate::crypto::PublicKey::from_b64(&creator.pubkey)
            .ok()
            .zip(crate::content::share_signed_bytes(share).ok())
            .is_some_and(|(key, bytes)| crate::content::verify(&key, &bytes, &share.content_sig));
        if !verified {
            return Err((
                ErrorCode::InvalidSig,
                "the share's content signature does not verify with its creator's directory key"
                    .to_owned(),
            ));
        }
        let unknown: Vec<String> = share
            .shares
            .iter()
            .map(|s| s.member.as_str())
            .filter(|m| !self.users.contains_key(*m))
            .take(5)
            .map(truncate)
            .collect();
        if !unknown.is_empty() {
            return Err((
                ErrorCode::UserNotFound,
                format!(
                    "group members must be registered users; not registered: {}",
                    unknown.join(", ")
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn record_group(
        &mut self,
        group_id: &str,
        members: BTreeSet<String>,
        creator: &str,
    ) {
        let owner = self
            .groups
            .get(group_id)
            .and_then(|g| g.owner.clone())
            .or_else(|| Some(creator.to_owned()));
        let rec = GroupRecord {
            members: members.into_iter().collect(),
            updated_ms: self.now,
            owner,
        };
        if self.groups.get(group_id).map(|g| (&g.members, &g.owner))
            != Some((&rec.members, &rec.owner))
        {
            self.groups.insert(group_id.to_owned(), rec.clone());
            self.persist(StoreOp::SetGroup(group_id.to_owned(), rec));
        }
    }

    /// Takes an intake into custody: one entry per destination not already
    /// held, persisted, then pumped. A node refuses what would overflow a
    /// recipient's quota; the master tells the sender what it keeps for an
    /// offline recipient is queued.
    fn take(&mut self, mut intake: Intake, via: Option<&str>) -> Taken {
        if intake.dests.is_empty() {
            return Taken::Some;
        }
        intake.bytes = json_len_of_map(&intake.payload);
        intake.shared = Arc::new(std::mem::take(&mut intake.payload));
        let mut touched = Vec::new();
        let mut queued = false;
        let mut refused = Vec::new();
        let dests = intake.dests.len();
        // Who, what and where to: never the payload.
        tracing::debug!(
            msg_id = %truncate(&intake.msg_id),
            user = %truncate(&intake.sender),
            kind = %intake.kind,
            server = via.unwrap_or("-"),
            dests,
            bytes = intake.bytes,
            "content taken into custody"
        );
        for (dest, to) in intake.dests.clone() {
            if self.custody.holds(&intake.sender, &intake.msg_id, &dest) {
                continue;
            }
            let entry = self.entry(&intake, dest.clone(), to, via);
            let offline = self.cfg.master && self.route(&entry).is_none();
            if let Some(detail) = self.over_quota(&dest, &intake.sender, entry.bytes, offline) {
                refused.push(detail);
                continue;
            }
            queued |= offline && intake.kind == "DELIVER";
            let entry = self.custody.admit(entry);
            self.persist(StoreOp::Custody(entry));
            touched.push(dest);
        }
        if queued {
            self.send_receipt(None, &intake.sender, vec![intake.msg_id.clone()], QUEUED);
        }
        for dest in touched {
            self.pump(&dest);
        }
        let all_refused = !refused.is_empty() && refused.len() == dests;
        for detail in refused.iter().cloned() {
            self.report(
                via,
                &intake.sender,
                ErrorCode::QuotaExceeded,
                detail,
                Some(&intake.msg_id),
            );
        }
        if all_refused {
            Taken::Refused
        } else {
            Taken::Some
        }
    }

    /// Why one more entry of `bytes` for `dest` from `sender` would break a
    /// quota, if it would: what one recipient may have waiting (offline, or
    /// online and not acknowledging: one that reads but never acks must not
    /// be a way to fill the node), what one sender may have waiting for all
    /// recipients, and what the node holds in all.
    fn over_quota(&self, dest: &Dest, sender: &str, bytes: usize, offline: bool) -> Option<String> {
        let limits = self.cfg.limits;
        if let Dest::User(user) = dest {
            let (frames, held) = self.custody.load_of(dest);
            if frames >= limits.max_frames || held + bytes > limits.max_bytes {
                return Some(if offline {
                    format!(
                        "{user}'s mailbox is full ({frames} frames, {held} bytes); try again when they have been online"
                    )
                } else {
                    format!(
                        "{user} has {frames} frames ({held} bytes) waiting to be delivered already; try again later"
                    )
                });
            }
        }
        let (frames, held) = self.custody.load_from(sender);
        if !sender.is_empty()
            && (frames >= limits.max_sender_frames || held + bytes > limits.max_sender_bytes)
        {
            return Some(format!(
                "you have {frames} frames ({held} bytes) waiting to be delivered already; try again when some have been"
            ));
        }
        if self.custody.bytes().0 + bytes > limits.max_total_bytes {
            return Some(
                "this server holds as much content waiting for delivery as it may; try again later"
                    .to_owned(),
            );
        }
        None
    }

    /// Where an entry can go now, if anywhere.
    fn route(&self, e: &Entry) -> Option<Route> {
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
            let Some(head) = self.custody.next_pending(dest).cloned() else {
                return;
            };
            let Some(route) = self.route(&head) else {
                return;
            };
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
            if route.on_link && is_group_kind(&head.kind) {
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
        }
    }

    fn emit_entry(&mut self, route: &Route, e: &Entry, recipients: Option<Vec<String>>) {
        if e.kind == "DELIVER"
            && let Hop::Link(server) = &route.hop
        {
            self.carried.record(&e.sender, &e.msg_id, server);
        }
        let kind = match e.kind.as_str() {
            "DELIVER" if route.on_link => "PEER_DELIVER",
            "DELIVER" => "USER_DELIVER",
            other => match messages::static_type_name(other) {
                Some(k) => k,
                None => return,
            },
        };
        let mut payload = (*e.payload).clone();
        if let Dest::User(u) = &e.dest
            && is_file_kind(kind)
        {
            payload.insert("user_id".into(), Value::String(u.clone()));
        }
        if let Some(r) = recipients.filter(|r| !r.is_empty()) {
            payload.insert("recipients".into(), Value::from(r));
        }
        self.out.push(Output::Send(
            route.conn,
            Outgoing {
                kind,
                to: route.to.clone(),
                payload,
            },
        ));
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
    /// were delivered (when the hop is the recipient's client), send more.
    pub(super) fn acked(&mut self, hop: Hop, msg_ids: Vec<String>) {
        let released = self.custody.ack(&hop, &msg_ids);
        if !released.is_empty() {
            self.persist(StoreOp::Release(released.iter().map(|e| e.seq).collect()));
        }
        if matches!(hop, Hop::Conn(_)) {
            let mut by_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for e in released.iter().filter(|e| e.kind == "DELIVER") {
                by_sender
                    .entry(e.sender.clone())
                    .or_default()
                    .push(e.msg_id.clone());
            }
            for (sender, ids) in by_sender {
                let held = self.receipts.entry(sender.clone()).or_default();
                held.extend(ids);
                if held.len() >= RECEIPT_BATCH {
                    let ids = self.receipts.remove(&sender).unwrap_or_default();
                    self.send_receipt(None, &sender, ids, DELIVERED);
                }
            }
        }
        for dest in self.custody.unblock(&hop) {
            self.pump(&dest);
        }
    }

    /// Sends the `delivered` receipts held back for batching.
    pub(super) fn flush_receipts(&mut self) {
        for (sender, ids) in std::mem::take(&mut self.receipts) {
            self.send_receipt(None, &sender, ids, DELIVERED);
        }
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
        if status == DELIVERED && (self.sessions.contains_key(user) || self.cfg.master) {
            // Delivered is final: on the sender's own server, and at the
            // master once it relays it.
            for id in &ok {
                self.carried.forget(user, id);
            }
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
        let payload = payload_of(&Receipt {
            user_id: user.to_owned(),
            msg_ids,
            status: status.to_owned(),
            extra: Map::new(),
        });
        if let Some(s) = self.sessions.get(user) {
            if s.proof.is_some() {
                let conn = s.conn;
                self.send(conn, "RECEIPT", user, payload);
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
                self.send_link(&loc, "RECEIPT", &loc, payload);
                return;
            }
            if let Some(m) = self.master_link().map(str::to_owned)
                && !self.cfg.master
                && socp(self, &m)
            {
                self.send_link(&m, "RECEIPT", &loc, payload);
            }
            return;
        }
        if !self.cfg.master
            && let Some(m) = self.master_link().map(str::to_owned)
            && socp(self, &m)
        {
            self.send_link(&m, "RECEIPT", &m, payload);
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
        let payload = match msg_id {
            Some(id) => content_error(code, detail, id),
            None => error_payload(code, detail),
        };
        match from_link {
            None => {
                if let Some(conn) = self.sessions.get(user).map(|s| s.conn) {
                    self.send(conn, "ERROR", user, payload);
                }
            }
            Some(server) => {
                if self.links.get(server).is_some_and(|l| l.socp) && !user.is_empty() {
                    self.send_link(server, "ERROR", user, payload);
                }
            }
        }
    }

    /// Housekeeping: the master drops mailbox frames older than the limit.
    pub(super) fn tick(&mut self) {
        if !self.cfg.master {
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

/// Whether content was taken (for at least one destination, or already
/// held) or refused for every destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Some,
    /// Over a quota for every destination.
    Refused,
}

/// An `ERROR` payload about one piece of content: it names the `msg_id`, so
/// the sender's client knows which message was not taken.
pub(super) fn content_error(code: ErrorCode, detail: String, msg_id: &str) -> Map<String, Value> {
    let mut payload = error_payload(code, detail);
    payload.insert("msg_id".into(), Value::String(msg_id.to_owned()));
    payload
}

/// The size of a payload as compact JSON, counted without writing it out
/// (escapes are not counted: the quotas it feeds need no more precision,
/// and a serialization per frame was a few % of a node's CPU).
fn json_len_of_map(m: &Map<String, Value>) -> usize {
    2 + m.len().saturating_sub(1)
        + m.iter()
            .map(|(k, v)| k.len() + 3 + json_len(v))
            .sum::<usize>()
}

fn json_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(json_len).sum::<usize>(),
        Value::Object(m) => json_len_of_map(m),
    }
}

fn dest_user(d: &Dest) -> Option<String> {
    match d {
        Dest::User(u) => Some(u.clone()),
        Dest::Server(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counted_size_is_the_compact_json_size() {
        let v = serde_json::json!({
            "a": "xyz", "n": 12345, "t": true, "f": false, "z": null,
            "list": [1, "two", [], {}], "obj": {"k": {"deep": [true]}}, "e": {}
        });
        let Value::Object(m) = &v else { unreachable!() };
        assert_eq!(json_len_of_map(m), serde_json::to_string(&v).unwrap().len());
        assert_eq!(json_len_of_map(&Map::new()), 2);
    }
}
