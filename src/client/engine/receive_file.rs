//! Receiving files: the engine's side of [`crate::client::files::Receiver`]
//! — a manifest opens a transfer, each chunk is opened with the group key or
//! the DM file key and written, and at `FILE_END` the file is saved and its
//! signed manifest checked against the sender's pinned key. Stalled
//! transfers are dropped by the 1 s tick (only while connected: a transfer
//! cut by a lost connection waits for the rest, which the node hands on
//! after the reconnect). A file saved once is remembered as shown, so the
//! same file handed on again (its frames acknowledged too late) is not
//! saved twice.
//!
//! A DM file whose transfer fails here for good (a refused start, a chunk
//! that does not decrypt, a size or hash that does not match the signed
//! manifest) is reported `undecryptable` to its sender before its
//! `FILE_END` is acknowledged, so the sender's client shows it failed,
//! never ✓✓ (DESIGN.md "Undecryptable content").

use super::{Engine, blocking};
use crate::client::codes::ClientCode;
use crate::client::display::escape;
use crate::client::events::{Event, Frontend};
use crate::client::files::{self, FileError};
use crate::content;
use crate::wire::ids;
use crate::wire::messages::{
    FileChunk, FileEnd, FileMode, FileStart, Message, Receipt, UNDECRYPTABLE,
};

impl<F: Frontend> Engine<F> {
    /// `FILE_START`: a transfer begins (and the sender's key is fetched, to
    /// check the manifest at the end).
    pub(super) async fn file_start(&mut self, s: FileStart) {
        let from = files::manifest_sender(&s).map(str::to_owned);
        if self.file_saved(from.as_deref(), &s.file_id) {
            return;
        }
        if let Some(sender) = &from
            && self.pinned(sender).is_none()
        {
            self.request_key(sender).await;
        }
        if let Err(e) = self.receiver.start(s, from) {
            self.emit(Event::error(ClientCode::File, e.to_string()));
        }
    }

    /// True if the file `file_id` from `from` was saved already.
    fn file_saved(&self, from: Option<&str>, file_id: &str) -> bool {
        let key = saved_key(from, file_id);
        self.journal.contains(&key) || self.keyring.seen(&key).unwrap_or(false)
    }

    /// Drops transfers that stalled, freeing their slots (not while we are
    /// disconnected: then nothing can arrive).
    pub(super) fn expire_transfers(&mut self) {
        if self.session.is_none() {
            return;
        }
        let dropped = self
            .receiver
            .expire(std::time::Instant::now(), files::TRANSFER_IDLE);
        for (name, from) in dropped {
            self.emit(Event::error(
                ClientCode::File,
                format!(
                    "{name} from {}: no data for {} s; the transfer was dropped and nothing was saved",
                    from.as_deref().unwrap_or("an unnamed sender"),
                    files::TRANSFER_IDLE.as_secs()
                ),
            ));
        }
    }

    /// `FILE_CHUNK`: opened and appended; a chunk that does not open ends
    /// the transfer.
    pub(super) async fn file_chunk(&mut self, c: FileChunk) {
        if !self.receiver.from_its_sender(&c.file_id, &c.extra) {
            tracing::warn!(file_id = %escape(&c.file_id), index = c.index, "ignored a file chunk that does not name the manifest's sender");
            return;
        }
        if self.receiver.too_far_ahead(&c.file_id, c.index) {
            tracing::warn!(file_id = %escape(&c.file_id), index = c.index, "dropped a file chunk too far ahead of those received in order");
            return;
        }
        if self.receiver.is_repeat(&c.file_id, c.index) {
            return;
        }
        let Some(t) = self.receiver.get_mut(&c.file_id) else {
            return;
        };
        let name = t.name.clone();
        let plain = self
            .chunk_key(&c)
            .await
            .and_then(|k| content::open_chunk(&k, &c).ok());
        let Some(plain) = plain else {
            self.receiver.abort(&c.file_id);
            self.report_failed(&c.file_id);
            let e = FileError::Decrypt {
                name,
                index: c.index,
            };
            return self.emit(Event::error(
                ClientCode::File,
                format!("{e}; the transfer was dropped and nothing was saved"),
            ));
        };
        match self.receiver.append(&c, &plain) {
            Ok((done, total)) => self.emit(Event::Progress {
                direction: "receiving",
                name,
                done,
                total,
            }),
            Err(e) => {
                self.report_failed(&c.file_id);
                return self.emit(Event::error(
                    ClientCode::File,
                    format!("{e}; nothing was saved"),
                ));
            }
        }
        // The last missing chunk after the end (handed on again after a
        // reconnect): the file is complete now.
        if self.receiver.is_complete(&c.file_id) {
            self.save_file(&c.file_id);
        }
        self.release_ends();
    }

    /// The key a chunk opens with: the group's, or the DM file key unwrapped
    /// with ours (once per transfer while the wrapped key stays the same).
    async fn chunk_key(&mut self, c: &FileChunk) -> Option<Vec<u8>> {
        let t = self.receiver.get_mut(&c.file_id)?;
        match (t.start.mode, &t.start.group_id, &c.wrapped_key) {
            (FileMode::Group, Some(group), _) => {
                self.keyring.group_key(group).ok().flatten().map(|g| g.key)
            }
            (FileMode::Dm, _, Some(wrapped)) => match &t.dm_key {
                Some((w, k)) if w == wrapped => Some(k.clone()),
                _ => {
                    let (key, wrapped2) = (self.key.clone(), wrapped.clone());
                    let k = blocking(move || content::unwrap_file_key(&key, &wrapped2))
                        .await
                        .and_then(Result::ok);
                    if let (Some(k), Some(t)) = (&k, self.receiver.get_mut(&c.file_id)) {
                        t.dm_key = Some((wrapped.clone(), k.clone()));
                    }
                    k
                }
            },
            _ => None,
        }
    }

    /// `FILE_END`: the file is complete (or waits for chunks handed on
    /// again after a reconnect).
    /// False if it is acknowledged later: only once the file is saved (or
    /// the transfer failed) is it "delivered" for its sender.
    pub(super) fn file_end(&mut self, e: FileEnd) -> bool {
        if !self.receiver.from_its_sender(&e.file_id, &e.extra) {
            tracing::warn!(file_id = %escape(&e.file_id), "ignored a file end that does not name the manifest's sender");
            return true;
        }
        let report_to = report_target(&e);
        match self.receiver.end(&e.file_id) {
            Ok(complete) => {
                // Held even when complete: saving may fail, and the
                // failure is reported before the end is acknowledged.
                let held = e.msg_id.is_some();
                if let Some(id) = e.msg_id {
                    self.held_ends.insert(e.file_id.clone(), (id, report_to));
                }
                if complete {
                    self.save_file(&e.file_id);
                }
                !held
            }
            Err(_) => {
                if self.end_without_transfer(&e)
                    && let (Some(to), Some(id)) = (report_to, e.msg_id)
                {
                    self.to_report.push((to, id));
                }
                true
            }
        }
    }

    /// A transfer failed for good: if its end is held, its sender is told
    /// (the report goes before the end's `ACK`).
    fn report_failed(&mut self, file_id: &str) {
        if let Some((id, Some(to))) = self.held_ends.get(file_id) {
            self.to_report.push((to.clone(), id.clone()));
        }
    }

    /// Sends the `undecryptable` reports for failed DM files (before the
    /// `ACK` of their ends), to a node whose welcome said it takes them.
    pub(super) async fn send_file_reports(&mut self) {
        let reports = std::mem::take(&mut self.to_report);
        let Some(session) = self.session.as_mut().filter(|s| s.takes_reports()) else {
            return;
        };
        for (sender, msg_id) in reports {
            let report = Message::Receipt(Receipt {
                user_id: sender,
                msg_ids: vec![msg_id],
                status: UNDECRYPTABLE.to_owned(),
                extra: Default::default(),
            });
            let _ = session.send(ids::TO_SERVER, &report).await;
        }
    }

    /// The end of a file we hold no transfer for: fine if we saved it
    /// already (handed on again); otherwise its beginning was lost (this
    /// client restarted mid-transfer, or the transfer failed and was
    /// reported then). The first case is said, so the user can ask again.
    /// True if the transfer failed here (its sender may be told).
    fn end_without_transfer(&mut self, e: &FileEnd) -> bool {
        let Some(from) = e
            .extra
            .get(files::MANIFEST_FROM)
            .and_then(|v| v.as_str())
            .filter(|f| ids::check_user(f).is_ok())
        else {
            return false;
        };
        if self.file_saved(Some(from), &e.file_id) {
            return false;
        }
        if self.receiver.failed_lately(&e.file_id) {
            return true;
        }
        self.emit(Event::error(
            ClientCode::File,
            format!(
                "the end of a file from {} arrived, but not its beginning (this client restarted while it came?); nothing was saved: ask {} to send it again",
                from, from
            ),
        ));
        false
    }

    /// Acknowledges the ends held for transfers that are over (dropped).
    pub(super) fn release_ends(&mut self) {
        let over: Vec<String> = self
            .held_ends
            .keys()
            .filter(|f| self.receiver.get_mut(f).is_none())
            .cloned()
            .collect();
        for file_id in over {
            let id = self.held_ends.remove(&file_id).map(|(id, _)| id);
            self.ack_later(id.as_deref());
        }
    }

    /// A complete file is saved; say so, and whether its manifest verifies.
    fn save_file(&mut self, file_id: &str) {
        let result = self.receiver.finish(file_id);
        if matches!(&result, Err(e) if !matches!(e, FileError::Unknown(_))) {
            self.report_failed(file_id);
        }
        self.release_ends();
        let done = match result {
            Ok(done) => done,
            Err(FileError::Unknown(_)) => return,
            Err(err) => {
                return self.emit(Event::error(
                    ClientCode::File,
                    format!("{err}; nothing was saved"),
                ));
            }
        };
        let s = &done.start;
        let to = match s.mode {
            FileMode::Dm => self.cfg.user.clone(),
            FileMode::Group => s.group_id.clone().unwrap_or_default(),
        };
        let verified = match (&done.from, &s.content_sig) {
            (Some(from), Some(sig)) => self.pinned(from).is_some_and(|k| {
                content::manifest_signed_bytes(
                    &s.file_id, &s.name, s.size, &s.sha256, s.mode, from, &to,
                )
                .is_ok_and(|b| content::verify(&k, &b, sig))
            }),
            _ => false,
        };
        let saved = saved_key(done.from.as_deref(), &s.file_id);
        self.emit(Event::File {
            from: done.from.clone(),
            mode: files::mode_name(s.mode),
            group: s.group_id.clone(),
            name: done
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: done.path.display().to_string(),
            size: done.size,
            sha256_ok: true,
            verified,
        });
        self.shown(&saved);
    }
}

/// Whom to tell if this file fails here: its sender, for a DM file whose
/// end asks for receipts (the node checks the name and drops the rest).
fn report_target(e: &FileEnd) -> Option<String> {
    content::file_end_wants_receipts(&e.extra)
        .then(|| e.extra.get(files::MANIFEST_FROM).and_then(|v| v.as_str()))
        .flatten()
        .filter(|f| ids::check_user(f).is_ok())
        .map(str::to_owned)
}

/// How a saved file is remembered as shown: by sender and `file_id`.
fn saved_key(from: Option<&str>, file_id: &str) -> String {
    format!("{} file {file_id}", from.unwrap_or("-"))
}
