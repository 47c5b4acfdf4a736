//! Commands to frames: what each command does, and the content it seals —
//! DMs, group messages and group key shares — handed to the outbox. A
//! command that needs a key the keyring lacks waits for its lookup.

use super::{Engine, blocking, new_msg_id};
use crate::client::codes::ClientCode;
use crate::client::commands::{self, Command};
use crate::client::events::{Event, Frontend};
use crate::client::keyring::GroupKey;
use crate::content;
use crate::crypto::PublicKey;
use crate::wire::messages::Message;
use crate::wire::{ids, now_ms};

impl<F: Frontend> Engine<F> {
    /// Carries out one command; false means quit.
    pub(super) async fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Quit => return false,
            Command::Help => self.emit(Event::Help {
                text: commands::help(),
            }),
            Command::List(prefix) => self.list_first(prefix).await,
            Command::More => self.list_more().await,
            Command::Pubget => {
                let public = self.key.public();
                self.emit(Event::Pubget {
                    pubkey: public.to_b64().to_owned(),
                    fingerprint: public.fingerprint(),
                });
            }
            Command::Dbget(user) => self.lookup_explicitly(&user).await,
            Command::Fingerprint(user) => self.fingerprint(user),
            Command::Trust(user) => self.trust(user),
            Command::Msg { to, text } => self.send_dm(to, text).await,
            Command::Gshare { group, members } => self.share(group, members).await,
            Command::Gmsg { group, text } => self.send_group(group, text).await,
            Command::File { to, path } => self.send_file(to, path).await,
            Command::Outbox(cmd) => self.outbox_command(cmd).await,
        }
        true
    }

    /// `/fingerprint [USER]`: ours, or the pinned key's.
    fn fingerprint(&mut self, user: Option<String>) {
        let Some(user) = user else {
            let fp = self.key.public().fingerprint();
            return self.emit(Event::Fingerprint {
                user: self.cfg.user.clone(),
                fingerprint: fp,
                pending: None,
            });
        };
        let fp = |k: &str| PublicKey::from_b64(k).ok().map(|k| k.fingerprint());
        let pending = match self.keyring.get(&user) {
            Ok(Some(p)) => p.pending.as_deref().and_then(fp),
            _ => None,
        };
        match self.pinned(&user) {
            Some(k) => self.emit(Event::Fingerprint {
                user,
                fingerprint: k.fingerprint(),
                pending,
            }),
            None => self.emit(Event::error(
                ClientCode::NoKey,
                format!("no key pinned for {user}; /dbget {user} fetches it"),
            )),
        }
    }

    /// `/trust USER`: the changed key waiting for it replaces the pinned one.
    fn trust(&mut self, user: String) {
        match self.keyring.trust(&user) {
            Ok(Some((_, new))) => {
                let fingerprint = PublicKey::from_b64(&new)
                    .map(|k| k.fingerprint())
                    .unwrap_or_default();
                self.emit(Event::Trusted { user, fingerprint });
            }
            Ok(None) => self.emit(Event::error(
                ClientCode::Usage,
                format!("{user} has no key change waiting for /trust"),
            )),
            Err(e) => self.emit(Event::error(ClientCode::Keyring, e.to_string())),
        }
    }

    async fn send_dm(&mut self, to: String, text: String) {
        let recipient = match self.sendable(&to) {
            Err(()) => return,
            Ok(Some(k)) if self.confirmed(&to) => k,
            Ok(_) => {
                return self
                    .defer(&to.clone(), self.deferred(Command::Msg { to, text }))
                    .await;
            }
        };
        let (key, user, to2) = (self.key.clone(), self.cfg.user.clone(), to.clone());
        let sealed = blocking(move || {
            content::seal_dm(&key, &user, &to2, &recipient, text.as_bytes(), now_ms())
        })
        .await;
        let Some(Ok(mut dm)) = sealed else {
            return self.emit(Event::error(
                ClientCode::Crypto,
                "could not seal the message",
            ));
        };
        let msg_id = new_msg_id();
        dm.msg_id = Some(msg_id.clone());
        self.send_content(&to, Message::MsgPrivate(dm), msg_id)
            .await;
    }

    /// `/gshare`: a fresh key for `group`, wrapped for each member, kept as
    /// ours (we own the group) and sent.
    async fn share(&mut self, group: String, members: Vec<String>) {
        if !self.may_share(&group) {
            return;
        }
        let Some(keys) = self.member_keys(&group, &members).await else {
            return;
        };
        let (key, user, group2) = (self.key.clone(), self.cfg.user.clone(), group.clone());
        let made = blocking(move || content::new_group_share(&key, &user, &group2, &keys)).await;
        let Some(Ok((group_key, mut share))) = made else {
            return self.emit(Event::error(
                ClientCode::Crypto,
                "could not create the group key",
            ));
        };
        let msg_id = new_msg_id();
        share.msg_id = Some(msg_id.clone());
        let msg = Message::GroupKeyShare(share);
        if !self.fits(ids::TO_SERVER, &msg) {
            return;
        }
        let mut all = members;
        if !all.contains(&self.cfg.user) {
            all.push(self.cfg.user.clone());
        }
        let record = GroupKey {
            key: group_key,
            creator: self.cfg.user.clone(),
            members: all,
        };
        if let Err(e) = self
            .keyring
            .pin_group_owner(&group, &self.cfg.user)
            .and_then(|_| self.keyring.set_group_key(&group, &record))
        {
            return self.emit(Event::error(ClientCode::Keyring, e.to_string()));
        }
        self.send_content(ids::TO_SERVER, msg, msg_id).await;
    }

    /// Only a group's owner rotates its key or changes its members (C10):
    /// members would refuse our share anyway.
    fn may_share(&mut self, group: &str) -> bool {
        match self.keyring.group_owner(group) {
            Ok(Some(owner)) if owner != self.cfg.user => {
                self.emit(Event::error(
                    ClientCode::NotOwner,
                    format!(
                        "{group} belongs to {owner}: only its owner can share a new key or change its members; nothing was sent"
                    ),
                ));
                false
            }
            Ok(_) => true,
            Err(e) => {
                self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                false
            }
        }
    }

    /// Every member's key, or None: a key is refused (the user was told), or
    /// some are missing (asked for, and the `/gshare` runs again when the
    /// first missing one is here).
    async fn member_keys(
        &mut self,
        group: &str,
        members: &[String],
    ) -> Option<Vec<(String, PublicKey)>> {
        let mut keys = Vec::new();
        for m in members {
            match self.sendable(m) {
                Err(()) => return None,
                Ok(Some(k)) => keys.push((m.clone(), k)),
                Ok(None) => {
                    // Ask for every missing key at once.
                    let missing: Vec<String> = members
                        .iter()
                        .filter(|u| self.pinned(u).is_none())
                        .cloned()
                        .collect();
                    let (first, rest) = missing.split_first().unwrap_or((m, &[]));
                    for u in rest {
                        self.request_key(u).await;
                    }
                    let cmd = Command::Gshare {
                        group: group.to_owned(),
                        members: members.to_vec(),
                    };
                    let work = self.deferred(cmd);
                    self.defer(first, work).await;
                    return None;
                }
            }
        }
        Some(keys)
    }

    /// The key we hold for `group`; says how to get one if none.
    pub(super) fn group_key(&mut self, group: &str) -> Option<GroupKey> {
        match self.keyring.group_key(group) {
            Ok(Some(k)) => Some(k),
            Ok(None) => {
                self.emit(Event::error(
                    ClientCode::NoKey,
                    format!("no key for {group}: create it with /gshare {group} MEMBER..., or ask a member to share it"),
                ));
                None
            }
            Err(e) => {
                self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                None
            }
        }
    }

    async fn send_group(&mut self, group: String, text: String) {
        let Some(gk) = self.group_key(&group) else {
            return;
        };
        let (key, user, group2) = (self.key.clone(), self.cfg.user.clone(), group.clone());
        let sealed = blocking(move || {
            content::seal_group(&key, &user, &group2, &gk.key, text.as_bytes(), now_ms())
        })
        .await;
        let Some(Ok(mut m)) = sealed else {
            return self.emit(Event::error(
                ClientCode::Crypto,
                "could not seal the message",
            ));
        };
        let msg_id = new_msg_id();
        m.msg_id = Some(msg_id.clone());
        self.send_content(&group, Message::MsgGroup(m), msg_id)
            .await;
    }
}
