//! Users of a simulated mesh: each one a fake connection that says a real
//! signed hello, sends content, and acknowledges what it is delivered as a
//! `socp` client does. Content is not encrypted (nodes never open it): a
//! message's text travels base64-encoded as its `ciphertext`. Group key
//! shares are real (the master checks their signature).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::super::ConnId;
use super::{Mesh, Peer, code_of, error_body, key, kind_named, signed_hello_with};
use crate::crypto::PrivateKey;
use crate::wire::messages::{Ack, ErrorBody, Kind, Message, Receipt};
use crate::wire::{Envelope, ErrorCode, b64, ids};

/// One user (or an impostor using a user's id and key).
pub(super) struct SimUser {
    id: String,
    key: &'static PrivateKey,
    /// The node and connection it is on.
    pub at: Option<(String, ConnId)>,
    /// Its current connection was welcomed.
    welcomed: bool,
    /// Every frame it received, in order.
    inbox: Vec<Envelope>,
    /// Acknowledges content as it arrives (else only on `ack_now`).
    auto_ack: bool,
    unacked: Vec<String>,
    /// What it sent, by `msg_id` (for resends).
    sent: BTreeMap<String, Envelope>,
    next_msg: u64,
    /// An older client: its hello lists no capabilities.
    old_client: bool,
}

/// Frame types that carry content a client acknowledges.
fn is_content(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::UserDeliver
            | Kind::MsgGroup
            | Kind::GroupKeyShare
            | Kind::FileStart
            | Kind::FileChunk
            | Kind::FileEnd
    )
}

fn str_field<'a>(env: &'a Envelope, field: &str) -> &'a str {
    env.payload
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn text_of(env: &Envelope) -> String {
    let bytes = b64::decode(str_field(env, "ciphertext")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Mesh {
    pub(super) fn user_ref(&self, handle: &str) -> &SimUser {
        self.users
            .get(handle)
            .unwrap_or_else(|| panic!("no user {handle}"))
    }

    pub(super) fn user_mut(&mut self, handle: &str) -> &mut SimUser {
        self.users
            .get_mut(handle)
            .unwrap_or_else(|| panic!("no user {handle}"))
    }

    /// `handle` is another client of user `id` (same id, same key).
    pub fn twin(&mut self, handle: &str, id: &str) {
        self.add_user(handle, id);
    }

    fn add_user(&mut self, handle: &str, id: &str) {
        if self.users.contains_key(handle) {
            return;
        }
        let user = SimUser {
            id: id.to_owned(),
            key: key(id),
            at: None,
            welcomed: false,
            inbox: Vec::new(),
            auto_ack: true,
            unacked: Vec::new(),
            sent: BTreeMap::new(),
            next_msg: 0,
            old_client: false,
        };
        self.users.insert(handle.to_owned(), user);
    }

    /// `handle` will connect as an older client (no capabilities listed).
    pub fn old_client(&mut self, handle: &str) {
        self.add_user(handle, handle);
        self.user_mut(handle).old_client = true;
    }

    /// `handle` reports that it could not decrypt `from`'s content `msg_ids`
    /// (a `RECEIPT` with status `undecryptable`, as a `socp` client sends
    /// before it acknowledges the content).
    pub fn report_undecryptable(&mut self, handle: &str, from: &str, msg_ids: &[&str]) {
        let receipt = Message::Receipt(Receipt {
            user_id: from.to_owned(),
            msg_ids: msg_ids.iter().map(|s| (*s).to_owned()).collect(),
            status: crate::wire::messages::UNDECRYPTABLE.to_owned(),
            extra: Map::new(),
        });
        self.send_frame(handle, receipt.kind(), from, receipt.to_payload());
    }

    /// `handle` connects to `node` and is welcomed (it panics if not).
    pub fn user(&mut self, handle: &str, node: &str) {
        self.connect(handle, node);
        self.run();
        let errors = self.errors(handle);
        assert!(
            self.welcomed(handle),
            "{handle} was not welcomed at {node}: {errors:?}"
        );
    }

    /// `handle` connects to `node` and says its hello; nothing more happens
    /// until the mesh runs.
    pub fn connect(&mut self, handle: &str, node: &str) {
        self.add_user(handle, handle);
        assert!(
            self.user_ref(handle).at.is_none(),
            "{handle} is already connected"
        );
        let conn = self.open_conn(node, Peer::User(handle.to_owned()));
        let now = self.now;
        let user = self.user_mut(handle);
        user.at = Some((node.to_owned(), conn));
        user.welcomed = false;
        let caps: &[&str] = if user.old_client {
            &[]
        } else {
            &[crate::wire::messages::CAP_UNDECRYPTABLE]
        };
        let hello = signed_hello_with(conn, &user.id, user.key, now, caps);
        self.step(node, hello);
    }

    /// `handle` closes its connection (what was on its way is lost).
    pub fn disconnect(&mut self, handle: &str) {
        let Some((node, conn)) = self.user_mut(handle).at.take() else {
            return;
        };
        for chan in [
            super::net::Chan::ToUser(handle.to_owned()),
            super::net::Chan::FromUser(handle.to_owned()),
        ] {
            self.chans.remove(&chan);
        }
        self.end_conn(&node, conn, super::Input::UserClosed(conn));
    }

    /// A frame `handle` receives, as its client handles it.
    pub(super) fn user_receives(&mut self, handle: &str, env: Envelope) {
        let kind = kind_named(&env.kind);
        let user = self.user_mut(handle);
        if kind == Kind::UserWelcome {
            user.welcomed = true;
        }
        let msg_id = str_field(&env, "msg_id").to_owned();
        let ack = is_content(kind) && !msg_id.is_empty();
        user.inbox.push(env);
        if !ack {
            return;
        }
        user.unacked.push(msg_id);
        if user.auto_ack {
            self.ack_now(handle);
        }
    }

    /// `handle` stops acknowledging what it is delivered (until `ack_now`).
    pub fn hold_acks(&mut self, handle: &str) {
        self.user_mut(handle).auto_ack = false;
    }

    /// `handle` acknowledges everything delivered so far.
    pub fn ack_now(&mut self, handle: &str) {
        let msg_ids = std::mem::take(&mut self.user_mut(handle).unacked);
        if !msg_ids.is_empty() {
            let ack = Message::Ack(Ack {
                msg_ids,
                extra: Map::new(),
            });
            self.send_frame(handle, ack.kind(), ids::TO_SERVER, ack.to_payload());
        }
    }

    /// `handle` sends a frame (from its own id).
    pub fn send_frame(&mut self, handle: &str, kind: Kind, to: &str, payload: Map<String, Value>) {
        let from = self.user_ref(handle).id.clone();
        self.send_forged(handle, &from, kind, to, payload);
    }

    /// `handle` sends a frame claiming to be from `from`.
    pub fn send_forged(
        &mut self,
        handle: &str,
        from: &str,
        kind: Kind,
        to: &str,
        payload: Map<String, Value>,
    ) {
        let mut env = Envelope::new(kind.name(), from, to, payload);
        env.ts = self.now;
        if let Some(Value::String(id)) = env.payload.get("msg_id") {
            let id = id.clone();
            self.user_mut(handle).sent.insert(id, env.clone());
        }
        self.user_sends(handle, env);
    }

    /// A fresh `msg_id` for `handle`'s content.
    fn new_msg_id(&mut self, handle: &str) -> String {
        let user = self.user_mut(handle);
        user.next_msg += 1;
        format!("{}-{}", user.id, user.next_msg)
    }

    /// `from` sends `text` to user `to`; returns its `msg_id`.
    pub fn dm(&mut self, from: &str, to: &str, text: &str) -> String {
        let msg_id = self.new_msg_id(from);
        self.dm_with_id(from, to, text, &msg_id);
        msg_id
    }

    /// A DM under a `msg_id` the test chooses.
    pub fn dm_with_id(&mut self, from: &str, to: &str, text: &str, msg_id: &str) {
        let Value::Object(payload) = json!({
            "ciphertext": b64::encode(text.as_bytes()), "iv": "aXY", "tag": "dGFn",
            "wrapped_key": "a2V5", "sender_pub": "cHVi", "content_sig": "c2ln",
            "content_ts": self.now, "msg_id": msg_id,
        }) else {
            unreachable!()
        };
        self.send_frame(from, Kind::MsgPrivate, to, payload);
    }

    /// `handle` sends again the content it sent under `msg_id`.
    pub fn resend(&mut self, handle: &str, msg_id: &str) {
        let env = self.user_ref(handle).sent.get(msg_id).cloned();
        let env = env.unwrap_or_else(|| panic!("{handle} sent no {msg_id}"));
        self.user_sends(handle, env);
    }

    /// `creator` shares a new key for `group` with `members` (a real,
    /// signed `GROUP_KEY_SHARE`); returns its `msg_id`.
    pub fn share_group(&mut self, creator: &str, group: &str, members: &[&str]) -> String {
        let creator_id = self.user_ref(creator).id.clone();
        let members: Vec<(String, crate::crypto::PublicKey)> = members
            .iter()
            .map(|m| ((*m).to_owned(), key(m).public().clone()))
            .collect();
        let (_, mut share) =
            crate::content::new_group_share(key(&creator_id), &creator_id, group, &members)
                .unwrap();
        let msg_id = self.new_msg_id(creator);
        share.msg_id = Some(msg_id.clone());
        let share = Message::GroupKeyShare(share);
        self.send_frame(creator, share.kind(), ids::TO_SERVER, share.to_payload());
        msg_id
    }

    /// `from` sends `text` to `group`; returns its `msg_id`.
    pub fn group_msg(&mut self, from: &str, group: &str, text: &str) -> String {
        let msg_id = self.new_msg_id(from);
        let from_id = self.user_ref(from).id.clone();
        let Value::Object(payload) = json!({
            "group_id": group, "ciphertext": b64::encode(text.as_bytes()), "iv": "aXY",
            "tag": "dGFn", "from": from_id, "ts": self.now, "sender_pub": "cHVi",
            "content_sig": "c2ln", "content_ts": self.now, "msg_id": msg_id,
        }) else {
            unreachable!()
        };
        self.send_frame(from, Kind::MsgGroup, group, payload);
        msg_id
    }

    /// `handle` asks the directory for `target`'s key (`/dbget`).
    pub fn lookup(&mut self, handle: &str, target: &str) {
        let Value::Object(payload) = json!({ "user_id": target }) else {
            unreachable!()
        };
        self.send_frame(handle, Kind::UserDbGetUser, ids::TO_SERVER, payload);
    }

    // ---- what a user saw ----

    /// True if `handle` is connected.
    pub fn connected(&self, handle: &str) -> bool {
        self.user_ref(handle).at.is_some()
    }

    /// True if `handle`'s current (or last) connection was welcomed.
    pub fn welcomed(&self, handle: &str) -> bool {
        self.user_ref(handle).welcomed
    }

    /// What `handle`'s client shows, in order, once each (a client drops
    /// duplicates by sender and `msg_id`): `"alice: hi"` for a DM,
    /// `"alice in group_x: hi"` for a group message.
    pub fn delivered(&self, handle: &str) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut shown = Vec::new();
        for env in &self.user_ref(handle).inbox {
            let kind = kind_named(&env.kind);
            let line = match kind {
                Kind::UserDeliver => format!("{}: {}", str_field(env, "sender"), text_of(env)),
                Kind::MsgGroup => format!(
                    "{} in {}: {}",
                    str_field(env, "from"),
                    str_field(env, "group_id"),
                    text_of(env)
                ),
                _ => continue,
            };
            let sender = match kind {
                Kind::UserDeliver => str_field(env, "sender"),
                _ => str_field(env, "from"),
            };
            if seen.insert((sender.to_owned(), str_field(env, "msg_id").to_owned())) {
                shown.push(line);
            }
        }
        shown
    }

    /// How many frames of `kind` reached `handle` (duplicates included).
    pub fn received(&self, handle: &str, kind: Kind) -> usize {
        self.frames(handle, kind).len()
    }

    /// The frames of `kind` that reached `handle`.
    pub fn frames(&self, handle: &str, kind: Kind) -> Vec<&Envelope> {
        self.user_ref(handle)
            .inbox
            .iter()
            .filter(|e| e.kind == kind.name())
            .collect()
    }

    /// The `ERROR`s `handle` received, in order.
    fn error_frames(&self, handle: &str) -> Vec<ErrorBody> {
        self.frames(handle, Kind::Error)
            .into_iter()
            .map(|e| error_body(e.payload.clone()))
            .collect()
    }

    /// The codes of the `ERROR`s `handle` received, in order.
    pub fn errors(&self, handle: &str) -> Vec<ErrorCode> {
        self.error_frames(handle).iter().map(code_of).collect()
    }

    /// The code of the `ERROR` about `handle`'s content `msg_id`, if any.
    pub fn error_about(&self, handle: &str, msg_id: &str) -> Option<ErrorCode> {
        self.error_frames(handle)
            .iter()
            .find(|body| body.msg_id().unwrap_or_default() == msg_id)
            .map(code_of)
    }

    /// The `msg_id`s `handle` was sent receipts for with `status`.
    pub fn receipts(&self, handle: &str, status: &str) -> Vec<String> {
        self.frames(handle, Kind::Receipt)
            .into_iter()
            .filter(|e| str_field(e, "status") == status)
            .flat_map(|e| ids_in(e, "msg_ids"))
            .collect()
    }

    /// The `msg_id`s `handle`'s node acknowledged (took into custody).
    pub fn acked(&self, handle: &str) -> Vec<String> {
        self.frames(handle, Kind::Ack)
            .into_iter()
            .flat_map(|e| ids_in(e, "msg_ids"))
            .collect()
    }

    /// The directory answers `handle` received: (user, found).
    pub fn lookups(&self, handle: &str) -> Vec<(String, bool)> {
        self.frames(handle, Kind::UserDbUser)
            .into_iter()
            .map(|e| {
                let found = e.payload.get("found").and_then(Value::as_bool);
                (str_field(e, "user_id").to_owned(), found == Some(true))
            })
            .collect()
    }

    /// The groups whose key shares reached `handle`, once each.
    pub fn shares(&self, handle: &str) -> Vec<String> {
        let groups: BTreeSet<String> = self
            .frames(handle, Kind::GroupKeyShare)
            .into_iter()
            .map(|e| str_field(e, "group_id").to_owned())
            .collect();
        groups.into_iter().collect()
    }
}

fn ids_in(env: &Envelope, field: &str) -> Vec<String> {
    env.payload
        .get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
