//! Groups as the router sees them: who a group frame is fanned out to, the
//! master's check of a group key share (PROTOCOL.md C10), and the
//! membership recorded from the shares.

use std::collections::BTreeSet;

use super::content::Dests;
use super::{Router, StoreOp, take_recipients, truncate};
use crate::node::custody::Dest;
use crate::node::records::GroupRecord;
use crate::wire::ErrorCode;
use crate::wire::messages::GroupKeyShare;

impl Router {
    /// Destinations of a group frame from our own user: a local serves the
    /// members here and hands one copy to the master, which serves the rest;
    /// the master serves every member.
    pub(super) fn group_dests(
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

    /// Destinations of a group frame relayed by `server`: the members it
    /// names (or, without a list, the members we know), except the sender;
    /// the master leaves out the members `server` hosts (it served them).
    pub(super) fn relayed_group_dests(
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
    pub(super) fn check_share(&self, share: &GroupKeyShare) -> Result<(), (ErrorCode, String)> {
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
            .filter(|m| !self.users.contains_key(m))
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

    /// Where a group key share relayed by `server` goes, once checked: the
    /// master checks every share it is handed and serves every member (those
    /// on the server it came from too: that server waited for the master's
    /// check); a local takes the master's word (it relays only what it
    /// checked). Refused: no destinations, and the creator is told.
    pub(super) fn relayed_share_dests(
        &mut self,
        server: &str,
        share: &mut GroupKeyShare,
        msg_id: &str,
    ) -> Dests {
        let from_master = !self.cfg.master && self.master_id.as_deref() == Some(server);
        let verdict = if from_master {
            Ok(())
        } else if self.cfg.master {
            self.check_share(share)
        } else {
            Err((
                ErrorCode::NotAllowed,
                "group key shares travel through the master".to_owned(),
            ))
        };
        if let Err((code, detail)) = verdict {
            tracing::warn!(server, group = %truncate(&share.group_id), creator = %truncate(&share.creator), %detail, "refused a group key share");
            self.report(Some(server), &share.creator, code, detail, Some(msg_id));
            return Vec::new();
        }
        let mut members: BTreeSet<String> = share.shares.iter().map(|s| s.member.clone()).collect();
        members.insert(share.creator.clone());
        self.record_group(&share.group_id, members.clone(), &share.creator);
        let recipients = take_recipients(&mut share.extra);
        if self.cfg.master {
            let mut dests: Dests = members
                .iter()
                .filter(|m| **m != share.creator)
                .map(|m| (Dest::User(m.clone()), None))
                .collect();
            dests.extend(self.share_back_to(server, share, &members));
            return dests;
        }
        self.relayed_group_dests(
            server,
            &share.creator,
            recipients,
            members.into_iter().collect(),
        )
    }
}
