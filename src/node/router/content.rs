//! Content coming in: DMs, group key shares, group messages and files, from
//! our own users and over links. Each piece is checked, given its `msg_id`
//! and its destinations, and taken into custody (persisted, then
//! acknowledged to the previous hop), one entry per destination, typed and
//! shared between them. `delivery.rs` sends it on.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

use super::delivery::QUEUED;
use super::{ConnId, Output, RECIPIENTS, Router, StoreOp, take_recipients, truncate};
use crate::node::custody::{Content, ContentKind, Dest, Entry};
use crate::wire::ids::{self, IdKind};
use crate::wire::messages::{Deliver, ErrorBody, GroupKeyShare, Message, MsgPrivate};
use crate::wire::{Envelope, ErrorCode};

/// Why a user's content is refused: the code and what the user is told.
type Refused = (ErrorCode, String);

/// Where one piece of content goes: destinations, each with the frame's
/// `to` when the destination does not imply it.
pub(super) type Dests = Vec<(Dest, Option<String>)>;

/// The field a file frame names its sender in (a `socp` extension).
const FROM: &str = "from";

/// The content's `msg_id`, derived from the SHA-256 of its canonical payload
/// when the sender (a reference client) set none, and written into it.
fn ensure_msg_id(msg: &mut Message) -> String {
    if let Some(id) = msg.msg_id().filter(|id| !id.is_empty()) {
        return id.to_owned();
    }
    let id = crate::content::derived_msg_id(&msg.to_payload());
    msg.set_msg_id(id.clone());
    id
}

/// What to take into custody for one incoming piece of content.
struct Intake {
    msg_id: String,
    content: Content,
    sender: String,
    dests: Dests,
}

/// Whether content was taken (for at least one destination, or already
/// held) or refused for every destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Some,
    /// Over a quota for every destination.
    Refused,
}

impl Router {
    /// Content from our own user on `conn`.
    pub(super) fn user_content(&mut self, conn: ConnId, user: &str, env: Envelope, msg: Message) {
        let legacy = self.sessions.get(user).is_some_and(|s| s.proof.is_none());
        let mut msg = msg;
        // Who a group frame is fanned out to is the servers' business: a
        // user cannot name it (the master would deliver to whoever it named).
        msg.extra_mut().remove(RECIPIENTS);
        let msg_id = ensure_msg_id(&mut msg);
        let intake = match self.user_intake(user, &env, msg) {
            Ok((content, dests)) => Intake {
                msg_id: msg_id.clone(),
                content,
                sender: user.to_owned(),
                dests,
            },
            Err((code, detail)) => {
                let error = ErrorBody::about(code, detail, Some(&msg_id));
                return self.send(conn, user, Message::Error(error));
            }
        };
        for (dest, _) in &intake.dests {
            if let Dest::User(u) = dest {
                self.addressed(u);
            }
        }
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

    /// What a user's content is and where it goes, or why it is refused.
    fn user_intake(
        &mut self,
        user: &str,
        env: &Envelope,
        msg: Message,
    ) -> Result<(Content, Dests), Refused> {
        match msg {
            Message::MsgPrivate(dm) => self.user_dm(user, env, dm),
            Message::GroupKeyShare(share) => {
                let dests = self.user_share_dests(user, &share)?;
                Ok((Content::KeyShare(share), dests))
            }
            Message::MsgGroup(m) => {
                if m.from != user {
                    return Err(not_the_sender("from"));
                }
                let members = self.groups.get(&m.group_id).map(|g| g.members.clone());
                if members.is_none() && self.cfg.master {
                    return Err((
                        ErrorCode::UserNotFound,
                        format!("unknown group {}", m.group_id),
                    ));
                }
                let dests = match self.local_group_fanout(user, members.as_deref()) {
                    Some(dests) => dests,
                    None => self.group_dests(user, members.unwrap_or_default(), None),
                };
                Ok((Content::Group(m), dests))
            }
            msg @ (Message::FileStart(_) | Message::FileChunk(_) | Message::FileEnd(_)) => {
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
                match Content::from_message(msg) {
                    Some(content) => self.user_file(user, env, content),
                    None => Err((ErrorCode::NotAllowed, "not content".to_owned())),
                }
            }
            other => Err((
                ErrorCode::NotAllowed,
                format!("{} is not content", other.type_name()),
            )),
        }
    }

    /// A user's DM: to a registered user (at the master), as a `Deliver`
    /// naming its sender and recipient.
    fn user_dm(
        &self,
        user: &str,
        env: &Envelope,
        dm: MsgPrivate,
    ) -> Result<(Content, Dests), Refused> {
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
            msg_id: dm.msg_id,
            extra: dm.extra,
        };
        Ok((
            Content::Dm(deliver),
            vec![(Dest::User(env.to.clone()), None)],
        ))
    }

    /// Where a user's group key share goes: the master checks, records and
    /// fans it out; a local hands it to the master.
    fn user_share_dests(&mut self, user: &str, share: &GroupKeyShare) -> Result<Dests, Refused> {
        if share.creator != user {
            return Err(not_the_sender("creator"));
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
        ids::check_group(&share.group_id).map_err(|e| (ErrorCode::BadFrame, e.to_string()))?;
        self.check_share(share)?;
        let mut members: BTreeSet<String> = share.shares.iter().map(|s| s.member.clone()).collect();
        members.insert(share.creator.clone());
        if self.cfg.master {
            self.record_group(&share.group_id, members.clone(), &share.creator);
            return Ok(self.group_dests(user, members.into_iter().collect(), None));
        }
        // The master decides (it knows the group's owner and every member's
        // key) and fans the share out to every member, ours included:
        // nothing is adopted or recorded here before it has said yes.
        let master = self.master_id.clone().ok_or((
            ErrorCode::Timeout,
            "this server has not linked to its master yet; try again shortly".to_owned(),
        ))?;
        Ok(vec![(Dest::Server(master), Some(share.group_id.clone()))])
    }

    /// A user's file frame: to one user (named in `user_id`) or a group.
    fn user_file(
        &self,
        user: &str,
        env: &Envelope,
        mut content: Content,
    ) -> Result<(Content, Dests), Refused> {
        if let Some(from) = content.extra().get(FROM)
            && from.as_str() != Some(user)
        {
            return Err(not_the_sender("from"));
        }
        match ids::classify(&env.to) {
            Ok(IdKind::User) => {
                self.check_registered(&env.to)?;
                content.set_file_user_id(env.to.clone());
                Ok((content, vec![(Dest::User(env.to.clone()), None)]))
            }
            Ok(IdKind::Group) => {
                let members = self.groups.get(&env.to).map(|g| g.members.clone());
                if members.is_none() && self.cfg.master {
                    return Err((ErrorCode::UserNotFound, format!("unknown group {}", env.to)));
                }
                let dests =
                    self.group_dests(user, members.unwrap_or_default(), Some(env.to.clone()));
                Ok((content, dests))
            }
            _ => Err((
                ErrorCode::BadFrame,
                format!("{:?} is not a user or group id", truncate(&env.to)),
            )),
        }
    }

    /// True if `user` is in the directory. A user online anywhere is (a
    /// session or a presence is only admitted for one): no directory read
    /// on the way to an online recipient.
    fn is_registered(&self, user: &str) -> bool {
        self.sessions.contains_key(user)
            || self.presence.get(user).is_some_and(|p| p.live)
            || self.users.contains_key(user)
    }

    /// The master knows every registered user; content for anyone else is refused.
    fn check_registered(&self, user: &str) -> Result<(), Refused> {
        if self.cfg.master && !self.is_registered(user) {
            return Err((
                ErrorCode::UserNotFound,
                format!("{user} is not a registered user"),
            ));
        }
        Ok(())
    }

    /// Content that arrived over the link from `server`.
    pub(super) fn link_content(&mut self, conn: ConnId, server: &str, env: Envelope, msg: Message) {
        let mut msg = msg;
        let msg_id = ensure_msg_id(&mut msg);
        let acks = self.links.get(server).is_some_and(|l| l.socp);
        let Some(mut content) = Content::from_message(msg) else {
            return;
        };
        let (sender, dests) = self.relayed_dests(server, &env, &mut content, &msg_id);
        // A DM for one of our users: its sender is likely to be answered.
        let here = |d: &(Dest, Option<String>)| matches!(&d.0, Dest::User(u) if self.sessions.contains_key(u));
        if matches!(content, Content::Dm(_)) && dests.iter().any(here) {
            self.addressed(&sender);
        }
        let intake = Intake {
            msg_id: msg_id.clone(),
            content,
            sender,
            dests,
        };
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

    /// Who sent content relayed by `server` and where it goes. Refused
    /// (its sender told): no destinations.
    fn relayed_dests(
        &mut self,
        server: &str,
        env: &Envelope,
        content: &mut Content,
        msg_id: &str,
    ) -> (String, Dests) {
        match content {
            Content::Dm(d) => {
                let dests = if self.cfg.master && !self.is_registered(&d.user_id) {
                    self.report(
                        Some(server),
                        &d.sender,
                        ErrorCode::UserNotFound,
                        format!("{} is not a registered user", d.user_id),
                        Some(msg_id),
                    );
                    Vec::new()
                } else {
                    vec![(Dest::User(d.user_id.clone()), None)]
                };
                (d.sender.clone(), dests)
            }
            Content::KeyShare(share) => {
                let dests = self.relayed_share_dests(server, share, msg_id);
                (share.creator.clone(), dests)
            }
            Content::Group(m) => {
                let recipients = take_recipients(&mut m.extra);
                let members = self
                    .groups
                    .get(&m.group_id)
                    .map(|g| g.members.clone())
                    .unwrap_or_default();
                // The master fans out to the members it recorded, never to
                // others a server names (`fanout.rs`).
                let recipients = match self.cfg.master {
                    true => Self::master_recipients(recipients, &members),
                    false => recipients,
                };
                if recipients.is_none() && members.is_empty() {
                    self.report(
                        Some(server),
                        &m.from,
                        ErrorCode::UserNotFound,
                        format!("unknown group {}", m.group_id),
                        Some(msg_id),
                    );
                }
                let dests = self.relayed_group_dests(server, &m.from, recipients, members);
                (m.from.clone(), dests)
            }
            file => {
                let sender = file
                    .extra()
                    .get(FROM)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let dests = self.relayed_file_dests(server, env, &sender, file);
                (sender, dests)
            }
        }
    }

    /// Where a file frame relayed by `server` goes: the user it names, or
    /// the members of the group it is sent to.
    fn relayed_file_dests(
        &self,
        server: &str,
        env: &Envelope,
        sender: &str,
        file: &Content,
    ) -> Dests {
        match file.file_user_id() {
            Some(user) => vec![(Dest::User(user.to_owned()), None)],
            None if ids::check_group(&env.to).is_ok() => {
                let members = self
                    .groups
                    .get(&env.to)
                    .map(|g| g.members.clone())
                    .unwrap_or_default();
                self.relayed_group_dests(server, sender, None, members)
            }
            None => {
                tracing::debug!(server, "file frame without user_id or group");
                Vec::new()
            }
        }
    }

    /// Takes an intake into custody: one entry per destination not already
    /// held, persisted, then pumped. A node refuses what would overflow a
    /// recipient's quota; the master tells the sender what it keeps for an
    /// offline recipient is queued.
    fn take(&mut self, intake: Intake, via: Option<&str>) -> Taken {
        if intake.dests.is_empty() {
            return Taken::Some;
        }
        let Intake {
            msg_id,
            content,
            sender,
            dests,
        } = intake;
        let kind = content.kind();
        let bytes = content.json_len();
        let body = Arc::new(content);
        let mut touched = Vec::new();
        let mut queued = false;
        let mut refused = Vec::new();
        let wanted = dests.len();
        // Who, what and where to: never the payload.
        tracing::debug!(
            msg_id = %truncate(&msg_id),
            user = %truncate(&sender),
            kind = ?kind,
            server = via.unwrap_or("-"),
            dests = wanted,
            bytes,
            "content taken into custody"
        );
        for (dest, to) in dests {
            if self.custody.holds(&sender, &msg_id, &dest)
                || self.held_on_disk(&sender, &msg_id, &dest)
            {
                continue;
            }
            let mut entry = Entry {
                seq: 0,
                msg_id: msg_id.clone(),
                dest: dest.clone(),
                kind,
                body: Some(body.clone()),
                to,
                via: via.map(str::to_owned),
                sender: sender.clone(),
                bytes,
                created_ms: self.now,
                mailbox: false,
            };
            // Nowhere to go: nothing downstream will acknowledge it soon,
            // so its row is written (and its sender acknowledged) at once.
            entry.mailbox = self.route(&entry).is_none() || self.custody.on_disk(&dest);
            let offline = self.cfg.master && self.route(&entry).is_none();
            if let Some(detail) = self.over_quota(&dest, &sender, bytes, offline) {
                refused.push(detail);
                continue;
            }
            queued |=
                offline && (kind == ContentKind::Dm || super::delivery::receipted_file(&entry));
            let entry = self.custody.admit(entry);
            self.persist(StoreOp::Custody(entry));
            touched.push(dest);
        }
        if queued {
            self.send_receipt(None, &sender, vec![msg_id.clone()], QUEUED);
        }
        for dest in touched {
            self.pump(&dest);
        }
        let all_refused = !refused.is_empty() && refused.len() == wanted;
        for detail in refused {
            self.report(
                via,
                &sender,
                ErrorCode::QuotaExceeded,
                detail,
                Some(&msg_id),
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
}

/// A content frame naming someone else as its sender.
fn not_the_sender(what: &str) -> Refused {
    (ErrorCode::NotAllowed, format!("{what} must be the sender"))
}
