//! The engine's side of keys: the pinned key of a user (ours, or from the
//! keyring), the key we may send with, and directory lookups — sent as
//! [`super::Lookups`] says, their answers pinned, and the work that waited
//! for them released.

use std::time::Instant;

use serde_json::Map;

use super::{Deferred, Engine};
use crate::client::codes::ClientCode;
use crate::client::events::{Event, Frontend};
use crate::client::keyring::Observed;
use crate::client::lookups::Ask;
use crate::crypto::PublicKey;
use crate::wire::ids;
use crate::wire::messages::{Message, UserLookup};

/// Why work that waited for a key is dropped: the directory said no, or
/// said nothing.
#[derive(Clone, Copy)]
enum NoAnswer {
    NotFound,
    TimedOut,
}

impl<F: Frontend> Engine<F> {
    /// The pinned directory key of `user`, parsed.
    pub(super) fn pinned(&self, user: &str) -> Option<PublicKey> {
        if user == self.cfg.user {
            return Some(self.key.public().clone());
        }
        let pinned = self.keyring.get(user).ok().flatten()?;
        PublicKey::from_b64(&pinned.pubkey).ok()
    }

    /// The key to send to `user` with: pinned and not awaiting `/trust`.
    /// Err: nothing may be sent (and the user was told why).
    pub(super) fn sendable(&mut self, user: &str) -> Result<Option<PublicKey>, ()> {
        if user == self.cfg.user {
            return Ok(Some(self.key.public().clone()));
        }
        match self.keyring.get(user) {
            Ok(Some(p)) if p.pending.is_some() => {
                self.emit(Event::error(
                    ClientCode::KeyChanged,
                    format!("{user}'s key changed; compare /fingerprint {user} with them, then /trust {user}"),
                ));
                Err(())
            }
            Ok(Some(p)) => Ok(PublicKey::from_b64(&p.pubkey).ok()),
            Ok(None) => Ok(None),
            Err(e) => {
                self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                Err(())
            }
        }
    }

    /// Asks the directory for `user`'s key, unless a lookup is in flight.
    pub(super) async fn request_key(&mut self, user: &str) {
        let connected = self.session.is_some();
        match self.lookups.ask(user, connected, Instant::now()) {
            // Asked again for everything still waiting once connected.
            Ask::InFlight | Ask::Offline { waits: true } => {}
            Ask::Offline { waits: false } => self.emit(Event::error(
                ClientCode::NotConnected,
                format!("not connected: cannot look {user} up now; try again when connected"),
            )),
            Ask::Send => {
                let q = Message::UserDbGetUser(UserLookup {
                    user_id: user.to_owned(),
                    extra: Map::new(),
                });
                if !self.send(ids::TO_SERVER, &q).await {
                    self.lookups.unsent(user);
                }
            }
        }
    }

    /// False the first time since we connected that `user`'s pinned key is
    /// about to be used to seal something: the caller defers its work and
    /// the directory is asked again first, so a key that changed since it
    /// was pinned is caught (`key_changed`, and nothing sealed to the old
    /// key) before anything is sent. False too while work for `user` waits
    /// for that answer, online or not, so it keeps its order (work sealed
    /// while offline must not overtake work deferred before the connection
    /// dropped). True when offline with nothing waiting (nothing to ask).
    pub(super) fn confirmed(&mut self, user: &str) -> bool {
        if user == self.cfg.user {
            return true;
        }
        if self.lookups.waits_for(user) {
            return false;
        }
        self.session.is_none() || !self.rechecked.insert(user.to_owned())
    }

    /// Content from `sender` did not verify with their pinned key: their
    /// key may have changed, so the directory is asked at once (its answer
    /// says `key_changed` loudly and holds what we send them until
    /// `/trust`). Not asked again while a change already waits for `/trust`.
    pub(super) async fn check_key_if_unverified(
        &mut self,
        sender: &str,
        pinned: bool,
        verified: bool,
    ) {
        if verified || !pinned || sender == self.cfg.user || self.session.is_none() {
            return;
        }
        if matches!(self.keyring.get(sender), Ok(Some(p)) if p.pending.is_some()) {
            return;
        }
        self.request_key(sender).await;
    }

    /// `/dbget`: looks `user` up again and shows the answer.
    pub(super) async fn lookup_explicitly(&mut self, user: &str) {
        self.tags.lookup(user);
        self.lookups.explicit(user);
        self.request_key(user).await;
    }

    /// Puts `work` aside until `user`'s key is known, and asks for it.
    pub(super) async fn defer(&mut self, user: &str, work: Deferred) {
        if self.session.is_none() && matches!(work, Deferred::Cmd(..)) {
            self.emit(Event::Pending {
                msg_id: None,
                to: user.to_owned(),
                reason: format!("not connected; {user}'s key is looked up first"),
            });
        }
        self.lookups.wait(user, work);
        self.request_key(user).await;
    }

    /// The directory's answer for `user`: a key (pinned the first time,
    /// kept pending if it changed), or none.
    pub(super) fn key_answer(&mut self, user: &str, pubkey: Option<&str>) {
        let fingerprint = pubkey
            .and_then(|k| PublicKey::from_b64(k).ok())
            .map(|k| k.fingerprint());
        if let (Some(pk), Some(_)) = (pubkey, &fingerprint) {
            self.observe(user, pk);
            // Just answered: the key is as fresh as a re-check would make it.
            self.rechecked.insert(user.to_owned());
        }
        let answered = self
            .lookups
            .answer(user, fingerprint.is_some(), Instant::now());
        if answered.explicit {
            self.emit(Event::Pubkey {
                user: user.to_owned(),
                found: fingerprint.is_some(),
                fingerprint: fingerprint.clone(),
            });
        }
        let why = fingerprint.is_none().then_some(NoAnswer::NotFound);
        self.release(user, answered.released, why);
    }

    /// Pins `pubkey` for `user`, or says loudly that it changed.
    fn observe(&mut self, user: &str, pubkey: &str) {
        match self.keyring.observe(user, pubkey) {
            Ok(Observed::Changed { old, new }) => {
                let fp = |k: &str| {
                    PublicKey::from_b64(k)
                        .map(|k| k.fingerprint())
                        .unwrap_or_default()
                };
                self.emit(Event::KeyChanged {
                    user: user.to_owned(),
                    old: fp(&old),
                    new: fp(&new),
                });
            }
            Ok(_) => {}
            Err(e) => self.emit(Event::error(ClientCode::Keyring, e.to_string())),
        }
    }

    /// Lookups the directory did not answer in time: what waited is released.
    pub(super) fn expire_lookups(&mut self) {
        for late in self.lookups.expire(Instant::now()) {
            self.release(&late.user, late.released, Some(NoAnswer::TimedOut));
        }
    }

    /// Work that waited for `user`'s key runs next; without a key
    /// (`missing`), commands are dropped with a word and frames are handled
    /// anyway: they show as unverified rather than never.
    fn release(&mut self, user: &str, work: Vec<Deferred>, missing: Option<NoAnswer>) {
        // A pinned key stays usable when the directory does not confirm it
        // (no answer, or a directory that does not know the user).
        let pinned = self.pinned(user).is_some();
        for w in work {
            let detail = match (&w, missing) {
                (Deferred::Cmd(..), Some(_)) if pinned => {
                    self.ready.push_back(w);
                    continue;
                }
                (Deferred::Cmd(..), Some(NoAnswer::NotFound)) => {
                    format!("{user} is not in the directory; nothing was sent")
                }
                (Deferred::Cmd(..), Some(NoAnswer::TimedOut)) => {
                    format!("the directory did not answer for {user}'s key; nothing was sent")
                }
                _ => {
                    self.ready.push_back(w);
                    continue;
                }
            };
            if let Deferred::Cmd(_, id) = w {
                self.tags.running(id);
            }
            self.emit(Event::error(ClientCode::NoKey, detail));
            self.tags.running(None);
        }
    }
}
