//! Group messages fanned out from the sender's server (DESIGN.md
//! "Discovery"): a local serves its own members, sends one frame to each
//! directly linked `socp` server hosting members, and hands the master one
//! frame naming only the members left (offline, unknown here, or on a
//! server it has no link to). The master stays the group registry and the
//! authority for key shares (C10): it serves only members it recorded.

use super::Router;
use super::content::Dests;
use crate::node::custody::Dest;
use crate::wire::messages::GroupKeyShare;

impl Router {
    /// Destinations of a `MSG_GROUP` from our own user at a local, one per
    /// member (the pump groups the members behind one hop into one frame
    /// with `recipients`). None: fan out at the master as before (we are
    /// the master, the group is unknown here, or the master is not `socp`
    /// and would not honour `recipients`).
    pub(super) fn local_group_fanout(
        &self,
        sender: &str,
        members: Option<&[String]>,
    ) -> Option<Dests> {
        let members = members?;
        let master = self.master_id.as_deref()?;
        if self.cfg.master || !self.links.get(master).is_some_and(|l| l.socp) {
            return None;
        }
        let dests = members
            .iter()
            .filter(|m| *m != sender)
            .map(|m| (Dest::User(m.clone()), None))
            .collect();
        Some(dests)
    }

    /// At the master, a share accepted from `server`'s user: if no other
    /// member is there, `server` gets one copy anyway (addressed to the
    /// group, serving nobody), so that it records the group and can fan
    /// its creator's messages out itself. Only to a `socp` local.
    pub(super) fn share_back_to(
        &self,
        server: &str,
        share: &GroupKeyShare,
        members: &std::collections::BTreeSet<String>,
    ) -> Option<(Dest, Option<String>)> {
        let socp = self.links.get(server).is_some_and(|l| l.socp);
        let served = members.iter().filter(|m| **m != share.creator).any(|m| {
            self.presence
                .get(m)
                .is_some_and(|p| p.live && p.location == server)
        });
        let group = share.group_id.clone();
        (socp && !served).then(|| (Dest::Server(server.to_owned()), Some(group)))
    }

    /// The members a group frame relayed to the master is for: those the
    /// relaying server names, if it names any, among the members the
    /// master recorded (it never serves a list another server made up).
    pub(super) fn master_recipients(
        recipients: Option<Vec<String>>,
        members: &[String],
    ) -> Option<Vec<String>> {
        recipients.map(|named| named.into_iter().filter(|m| members.contains(m)).collect())
    }
}
