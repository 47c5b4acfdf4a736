//! Frames to events: what the node sends, shown to the user. Content (DMs,
//! group messages, key shares, files) is checked against the sender's
//! pinned key (waiting for a lookup when there is none yet), shown once per
//! (sender, `msg_id`) and acknowledged once handled.

use serde_json::{Map, Value};

use super::{Deferred, Engine, JOURNAL_BATCH, blocking};
use crate::client::codes::ClientCode;
use crate::client::display::escape;
use crate::client::events::{Event, Frontend};
use crate::client::files;
use crate::client::keyring::GroupKey;
use crate::content;
use crate::crypto::PublicKey;
use crate::wire::messages::{Deliver, GroupKeyShare, Message, MsgGroup, Receipt, UNDECRYPTABLE};
use crate::wire::{Envelope, ids};

impl<F: Frontend> Engine<F> {
    /// One frame from the node.
    pub(super) async fn frame(&mut self, env: Envelope, msg: Message) {
        match msg {
            Message::UserList(l) => self.listed(l),
            Message::UserDbUser(a) => {
                let key = (a.found && !a.pubkey.is_empty()).then_some(a.pubkey.as_str());
                self.key_answer(&a.user_id, key);
            }
            Message::Error(e) => self.refused(e),
            Message::Ack(a) => self.acked(a.msg_ids),
            Message::Receipt(r) => self.receipt(r).await,
            Message::UserDeliver(_)
            | Message::GroupKeyShare(_)
            | Message::MsgGroup(_)
            | Message::FileStart(_)
            | Message::FileChunk(_)
            | Message::FileEnd(_) => self.incoming(env, msg).await,
            Message::UserWelcome(_) | Message::Heartbeat(_) => {}
            other => tracing::debug!(kind = other.type_name(), "ignored frame"),
        }
    }

    async fn receipt(&mut self, r: Receipt) {
        // A receipt can overtake the node's ACK: content its recipient has
        // (or that waits in a mailbox) the node took, so it is "sent" first.
        // (The same for a file's end, still in flight.)
        let unacked: Vec<String> = r
            .msg_ids
            .iter()
            .filter(|id| {
                self.keyring.outbox_get(id).ok().flatten().is_some()
                    || self.flights.file_of(id).is_some()
            })
            .cloned()
            .collect();
        if !unacked.is_empty() {
            self.acked(unacked.clone());
        }
        // A file's receipts name its FILE_END: shown under the file's id.
        let shown = |this: &Self, id: String| this.flights.shown_id(&id).unwrap_or(id);
        let ours_unacked: std::collections::HashSet<String> =
            unacked.into_iter().map(|id| shown(self, id)).collect();
        for msg_id in r.msg_ids {
            let msg_id = shown(self, msg_id);
            // Only for content of ours: a receipt for anything else (made
            // up by a server) must not show as "delivered".
            let ours = self.sent.contains(&msg_id) || ours_unacked.contains(&msg_id);
            if !ours {
                tracing::warn!(msg_id = %escape(&msg_id), "ignored a receipt for content we did not send");
                continue;
            }
            let to = self.sent.recipient(&msg_id).map(str::to_owned);
            let file = self.flights.name_of(&msg_id);
            self.emit(Event::Delivery {
                msg_id,
                status: r.status.clone(),
                to: to.clone(),
                file,
            });
            // They could not open it: their key may have changed. Asked
            // at once, a changed key is announced (`key_changed`) and holds
            // what we send them until `/trust`.
            if r.status == UNDECRYPTABLE
                && let Some(user) = to.filter(|u| ids::check_user(u).is_ok())
                && !matches!(self.keyring.get(&user), Ok(Some(p)) if p.pending.is_some())
            {
                self.request_key(&user).await;
            }
        }
    }

    /// Content for us: dropped (and acknowledged) if its sender is not a
    /// user id, else handled and acknowledged, unless it waits for a key.
    async fn incoming(&mut self, env: Envelope, msg: Message) {
        let msg_id = content_msg_id(&msg).map(str::to_owned);
        if let Some(sender) = claimed_sender(&msg)
            && let Err(e) = ids::check_user(sender)
        {
            // Not shown as from anyone: a name like "bob ✓" or "server_x"
            // must not pass for a user.
            self.emit(Event::Dropped {
                from: sender.to_owned(),
                reason: format!(
                    "{} whose sender is not a valid user id ({e})",
                    msg.type_name()
                ),
            });
            return self.ack_later(msg_id.as_deref());
        }
        let acked = self.content(env, msg).await;
        // A failed file's report goes out now, well before its end's
        // (delayed) `ACK`, as a DM's does.
        self.send_file_reports().await;
        if acked {
            self.ack_later(msg_id.as_deref());
        }
    }

    /// Handles content; false if it waits for the sender's key (it is
    /// acknowledged only once handled).
    async fn content(&mut self, env: Envelope, msg: Message) -> bool {
        match msg {
            Message::UserDeliver(d) => self.incoming_dm(env, d).await,
            Message::GroupKeyShare(s) => self.incoming_share(env, s).await,
            Message::MsgGroup(m) => self.incoming_group(env, m).await,
            Message::FileStart(s) => {
                self.file_start(s).await;
                true
            }
            Message::FileChunk(c) => {
                self.file_chunk(c).await;
                true
            }
            Message::FileEnd(e) => self.file_end(e),
            _ => true,
        }
    }

    /// The `msg_id` of content, the key it is remembered as shown under,
    /// and whether it is new (not shown before). Content identity is
    /// (sender, msg_id) (PROTOCOL.md C11): another sender's content under
    /// the same id is not a duplicate, so it cannot suppress this one.
    fn first_sight(
        &mut self,
        sender: &str,
        msg_id: Option<&String>,
        payload: &Map<String, Value>,
    ) -> (String, String, bool) {
        let id = msg_id
            .cloned()
            .unwrap_or_else(|| content::derived_msg_id(payload));
        let key = seen_key(sender, &id);
        let new = !self.journal.contains(&key) && !self.keyring.seen(&key).unwrap_or(false);
        (id, key, new)
    }

    /// Marks content as shown, right after it was shown, in the journal (one
    /// append); the keyring takes the ids in batches.
    pub(super) fn shown(&mut self, msg_id: &str) {
        if let Err(e) = self.journal.record(msg_id) {
            self.emit(Event::error(
                ClientCode::Keyring,
                format!("cannot record a shown message: {e}"),
            ));
        }
        if self.journal.len() >= JOURNAL_BATCH {
            self.store_journal();
        }
    }

    /// Moves the journal's ids into the keyring.
    pub(super) fn store_journal(&mut self) {
        // Into the keyring first; only then out of the journal.
        if let Err(e) = self.keyring.mark_seen(&self.journal.ids()) {
            return self.emit(Event::error(ClientCode::Keyring, e.to_string()));
        }
        if let Err(e) = self.journal.stored() {
            self.emit(Event::error(ClientCode::Keyring, e.to_string()));
        }
    }

    /// Returns the sender's pinned key (None: shown unverified), or defers
    /// the frame until the directory answers (Err).
    async fn sender_key(
        &mut self,
        sender: &str,
        env: &Envelope,
        msg: Message,
    ) -> Result<Option<PublicKey>, ()> {
        if let Some(k) = self.pinned(sender) {
            return Ok(Some(k));
        }
        if self.lookups.is_unknown(sender, std::time::Instant::now())
            || self.session.is_none()
            || ids::check_user(sender).is_err()
        {
            return Ok(None);
        }
        let frame = Deferred::Frame(Box::new((env.clone(), msg)));
        self.defer(sender, frame).await;
        Err(())
    }

    async fn incoming_dm(&mut self, env: Envelope, d: Deliver) -> bool {
        let msg = Message::UserDeliver(d.clone());
        let Ok(sender_key) = self.sender_key(&d.sender, &env, msg).await else {
            return false;
        };
        let (msg_id, seen, new) = self.first_sight(&d.sender, d.msg_id.as_ref(), &env.payload);
        if !new {
            return true;
        }
        let dm = d.to_private();
        let pinned = sender_key.is_some();
        let verified = sender_key.is_some_and(|k| {
            content::dm_signed_bytes(&dm, &d.sender, &self.cfg.user)
                .is_ok_and(|b| content::verify(&k, &b, &dm.content_sig))
        });
        self.check_key_if_unverified(&d.sender, pinned, verified)
            .await;
        let key = self.key.clone();
        match blocking(move || content::open_dm(&key, &dm)).await {
            Some(Ok(plain)) => {
                let text = String::from_utf8_lossy(&plain).into_owned();
                self.emit(Event::Dm {
                    from: d.sender,
                    text,
                    verified,
                    msg_id: msg_id.clone(),
                });
            }
            _ => {
                let told = self
                    .report_undecryptable(&d.sender, d.msg_id.as_deref())
                    .await;
                self.emit(Event::error(
                    ClientCode::Decrypt,
                    format!(
                        "a DM from {} could not be decrypted (sealed to another key of yours?){}",
                        d.sender,
                        if told { "; their client was told" } else { "" }
                    ),
                ));
            }
        }
        self.shown(&seen);
        true
    }

    /// Tells `sender`'s client, through our node, that its DM `msg_id` did
    /// not decrypt, so it is shown there as failed, not delivered
    /// (DESIGN.md "Undecryptable content"). Sent before the DM's `ACK`
    /// (the node takes a report only for content not yet acknowledged),
    /// and only to a node whose welcome said it takes reports. True if sent.
    async fn report_undecryptable(&mut self, sender: &str, msg_id: Option<&str>) -> bool {
        let Some(msg_id) = msg_id else {
            return false;
        };
        let Some(session) = self.session.as_mut().filter(|s| s.takes_reports()) else {
            return false;
        };
        let report = Message::Receipt(Receipt {
            user_id: sender.to_owned(),
            msg_ids: vec![msg_id.to_owned()],
            status: UNDECRYPTABLE.to_owned(),
            extra: Map::new(),
        });
        session.send(ids::TO_SERVER, &report).await.is_ok()
    }

    async fn incoming_share(&mut self, env: Envelope, s: GroupKeyShare) -> bool {
        let msg = Message::GroupKeyShare(s.clone());
        let Ok(creator_key) = self.sender_key(&s.creator, &env, msg).await else {
            return false;
        };
        let (_, seen, new) = self.first_sight(&s.creator, s.msg_id.as_ref(), &env.payload);
        if !new {
            return true;
        }
        let pinned = creator_key.is_some();
        let verified = creator_key.is_some_and(|k| {
            content::share_signed_bytes(&s).is_ok_and(|b| content::verify(&k, &b, &s.content_sig))
        });
        self.check_key_if_unverified(&s.creator, pinned, verified)
            .await;
        match self.owner_allows(&s, verified) {
            Err(()) => return true,
            Ok(false) => {
                self.shown(&seen);
                return true;
            }
            Ok(true) => {}
        }
        let (key, me, share) = (self.key.clone(), self.cfg.user.clone(), s.clone());
        match blocking(move || content::open_group_share(&key, &me, &share)).await {
            Some(Ok(Some(group_key))) => {
                if !self.adopt_share(s, group_key, verified) {
                    return true;
                }
            }
            Some(Ok(None)) => {}
            _ => self.emit(Event::error(
                ClientCode::Decrypt,
                format!("the key share for {} could not be opened", s.group_id),
            )),
        }
        self.shown(&seen);
        true
    }

    /// C10: once a group has an owner, only a share the owner made and
    /// signed with their directory key is adopted. False if this one is not
    /// (reported as refused); Err if the owner cannot be read (reported).
    fn owner_allows(&mut self, s: &GroupKeyShare, verified: bool) -> Result<bool, ()> {
        let owner = match self.keyring.group_owner(&s.group_id) {
            Ok(o) => o,
            Err(e) => {
                self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                return Err(());
            }
        };
        let refusal = match &owner {
            Some(o) if *o != s.creator => Some("its creator is not the group's owner"),
            Some(_) if !verified => Some("it does not verify with the owner's directory key"),
            _ => None,
        };
        let (Some(reason), Some(owner)) = (refusal, owner) else {
            return Ok(true);
        };
        self.emit(Event::GroupKeyRefused {
            group: s.group_id.clone(),
            from: s.creator.clone(),
            owner,
            reason: reason.to_owned(),
        });
        Ok(false)
    }

    /// Keeps the group key a share brought, if the share verified (an
    /// unverified share could hand us a key someone else knows), and says
    /// so; false if the keyring failed (reported).
    fn adopt_share(&mut self, s: GroupKeyShare, group_key: Vec<u8>, verified: bool) -> bool {
        if verified {
            let mut members: Vec<String> = s.shares.iter().map(|x| x.member.clone()).collect();
            if !members.contains(&s.creator) {
                members.push(s.creator.clone());
            }
            let record = GroupKey {
                key: group_key,
                creator: s.creator.clone(),
                members,
            };
            if let Err(e) = self
                .keyring
                .pin_group_owner(&s.group_id, &s.creator)
                .and_then(|_| self.keyring.set_group_key(&s.group_id, &record))
            {
                self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                return false;
            }
        }
        self.emit(Event::GroupKey {
            group: s.group_id,
            from: s.creator,
            verified,
        });
        true
    }

    async fn incoming_group(&mut self, env: Envelope, m: MsgGroup) -> bool {
        let msg = Message::MsgGroup(m.clone());
        let Ok(sender_key) = self.sender_key(&m.from, &env, msg).await else {
            return false;
        };
        let (msg_id, seen, new) = self.first_sight(&m.from, m.msg_id.as_ref(), &env.payload);
        if !new {
            return true;
        }
        let Some(gk) = self.keyring.group_key(&m.group_id).ok().flatten() else {
            self.emit(Event::error(
                ClientCode::NoKey,
                format!(
                    "a message for {} arrived, but you hold no key for it",
                    m.group_id
                ),
            ));
            self.shown(&seen);
            return true;
        };
        let pinned = sender_key.is_some();
        let verified = sender_key.is_some_and(|k| {
            content::group_signed_bytes(&m).is_ok_and(|b| content::verify(&k, &b, &m.content_sig))
        });
        self.check_key_if_unverified(&m.from, pinned, verified)
            .await;
        match content::open_group(&gk.key, &m) {
            Ok(plain) => {
                let text = String::from_utf8_lossy(&plain).into_owned();
                self.emit(Event::GroupMsg {
                    group: m.group_id,
                    from: m.from,
                    text,
                    verified,
                    msg_id,
                });
            }
            Err(_) => self.emit(Event::error(
                ClientCode::Decrypt,
                format!(
                    "a message from {} in {} does not open with your key for the group (rotated without you?)",
                    m.from, m.group_id
                ),
            )),
        }
        self.shown(&seen);
        true
    }
}

/// Who content says it is from, where it says so.
fn claimed_sender(msg: &Message) -> Option<&str> {
    match msg {
        Message::UserDeliver(d) => Some(&d.sender),
        Message::GroupKeyShare(s) => Some(&s.creator),
        Message::MsgGroup(m) => Some(&m.from),
        Message::FileStart(s) => files::manifest_sender(s),
        _ => None,
    }
}

/// The `msg_id` content carries, to acknowledge it by.
fn content_msg_id(msg: &Message) -> Option<&str> {
    let id = match msg {
        Message::UserDeliver(d) => &d.msg_id,
        Message::GroupKeyShare(s) => &s.msg_id,
        Message::MsgGroup(m) => &m.msg_id,
        Message::FileStart(s) => &s.msg_id,
        Message::FileChunk(c) => &c.msg_id,
        Message::FileEnd(e) => &e.msg_id,
        _ => return None,
    };
    id.as_deref()
}

/// How content is remembered as shown: by sender and `msg_id` together.
fn seen_key(sender: &str, msg_id: &str) -> String {
    format!("{sender} {msg_id}")
}
