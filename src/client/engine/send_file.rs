//! Sending a file (`/file`): a signed manifest (`FILE_START`), the file
//! read and sealed in 61440-byte chunks, then `FILE_END`. The file is "sent"
//! once the node acknowledges its end (see [`super::flights::Flights`]). A
//! transfer cut by a lost connection goes on after the reconnect from the
//! first frame the node had not acknowledged, under the same ids (the node
//! and the recipient skip what they already have).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::flights::{FileFlight, MAX_FILE_RESUMES};
use super::{Engine, blocking, new_msg_id};
use crate::client::codes::ClientCode;
use crate::client::commands::Command;
use crate::client::events::{Event, Frontend};
use crate::client::files::{CHUNKS_NAME_SENDER, MANIFEST_FROM};
use crate::content;
use crate::crypto::{self, aead};
use crate::wire::messages::{FileEnd, FileMode, FileStart, Message};
use crate::wire::{b64, ids};

/// How far sending a file got.
enum Streamed {
    /// Every frame went to the node.
    All,
    /// The connection dropped after this many bytes: the rest goes out
    /// after the reconnect.
    Cut(u64),
}

impl<F: Frontend> Engine<F> {
    /// `/file`: to a group with its key, to a user with a fresh key
    /// wrapped for them (once their key is known).
    pub(super) async fn send_file(&mut self, to: String, path: PathBuf) {
        let group = ids::check_group(&to).is_ok();
        let (file_key, wrapped) = if group {
            let Some(gk) = self.group_key(&to) else {
                return;
            };
            (gk.key, None)
        } else {
            let recipient = match self.sendable(&to) {
                Err(()) => return,
                Ok(Some(k)) if self.confirmed(&to) => k,
                Ok(_) => {
                    return self
                        .defer(&to.clone(), self.deferred(Command::File { to, path }))
                        .await;
                }
            };
            let Ok(key) = aead::new_key() else { return };
            let Ok(wrapped) = recipient.wrap(key.as_ref()) else {
                return self.emit(Event::error(
                    ClientCode::Crypto,
                    "could not wrap the file key",
                ));
            };
            (key.to_vec(), Some(b64::encode(wrapped)))
        };
        if let Err(e) = self
            .stream_file(&to, &path, group, &file_key, wrapped)
            .await
        {
            self.emit(Event::error(
                ClientCode::File,
                format!("{}: {e}", path.display()),
            ));
        }
    }

    async fn stream_file(
        &mut self,
        to: &str,
        path: &Path,
        group: bool,
        key: &[u8],
        wrapped: Option<String>,
    ) -> anyhow::Result<()> {
        let size = self.file_size(path).await?;
        let start = self.manifest(to, path, group, size).await?;
        let start_msg_id = start.msg_id.clone().unwrap_or_default();
        self.tags.content(&start_msg_id);
        if !self.fits(to, &Message::FileStart(start.clone())) {
            return Ok(());
        }
        let file_id = start.file_id.clone();
        self.flights.start(
            &file_id,
            FileFlight {
                name: start.name.clone(),
                to: to.to_owned(),
                start_msg_id,
                end_msg_id: None,
                path: path.to_owned(),
                start,
                key: key.to_vec(),
                wrapped,
                chunk_ids: Vec::new(),
                resumes: 0,
                told_cut: false,
            },
        );
        self.pump_file(&file_id).await;
        Ok(())
    }

    /// After a reconnect: the files cut by the lost connection go on.
    pub(super) async fn resume_files(&mut self) {
        for file_id in self.flights.ids() {
            if self.session.is_none() {
                return;
            }
            let Some(f) = self.flights.get_mut(&file_id) else {
                continue;
            };
            f.resumes += 1;
            if f.resumes > MAX_FILE_RESUMES {
                let why = format!(
                    "the connection dropped {MAX_FILE_RESUMES} times in a row while it was sent"
                );
                self.file_failed(&file_id, why);
                continue;
            }
            self.pump_file(&file_id).await;
        }
    }

    /// Sends what the node has not acknowledged of a file in flight.
    async fn pump_file(&mut self, file_id: &str) {
        match self.stream_frames(file_id).await {
            Ok(Streamed::All) => {
                // A node that acknowledges nothing (a reference node): sent now.
                let acks = self.session.as_ref().is_some_and(|s| s.welcomed());
                if !acks && let Some(f) = self.flights.remove(file_id) {
                    self.emit(Event::Sent {
                        kind: "file",
                        to: f.to,
                        msg_id: f.start_msg_id,
                    });
                }
            }
            Ok(Streamed::Cut(done)) => {
                let Some(f) = self.flights.get_mut(file_id) else {
                    return;
                };
                f.told_cut = true;
                let (msg_id, to) = (f.start_msg_id.clone(), f.to.clone());
                let reason = if done == 0 && self.session.is_none() {
                    format!("{}: not connected", f.name)
                } else {
                    format!(
                        "{}: the connection dropped after {done} of {} bytes; the rest follows the reconnect",
                        f.name, f.start.size
                    )
                };
                self.emit(Event::Pending {
                    msg_id: Some(msg_id),
                    to,
                    reason,
                });
            }
            Err(e) => self.file_failed(file_id, e.to_string()),
        }
    }

    /// A file that cannot be sent on: not sent, say so.
    pub(super) fn file_failed(&mut self, file_id: &str, why: String) {
        if let Some(f) = self.flights.remove(file_id) {
            self.emit(Event::NotSent {
                msg_id: f.start_msg_id,
                to: f.to,
                code: ClientCode::File.to_string(),
                detail: format!("{}: {why}; /file it again", f.name),
                kept: false,
            });
        }
    }

    /// The manifest (unless the node has it), the chunks from the first one
    /// the node has not acknowledged, and the end.
    async fn stream_frames(&mut self, file_id: &str) -> anyhow::Result<Streamed> {
        let Some(from) = self.flights.resume(file_id) else {
            return Ok(Streamed::All);
        };
        let Some(f) = self.flights.get_mut(file_id) else {
            return Ok(Streamed::All);
        };
        f.told_cut = false;
        let (to, start) = (f.to.clone(), f.start.clone());
        let (path, key, wrapped) = (f.path.clone(), f.key.clone(), f.wrapped.clone());
        if from.send_start
            && !self
                .quiet_send(&to, &Message::FileStart(start.clone()))
                .await
        {
            return Ok(Streamed::Cut(0));
        }
        let mut file = tokio::fs::File::open(&path).await?;
        if file.metadata().await?.len() != start.size {
            anyhow::bail!("the file changed while it was sent");
        }
        let mut done = from.index * content::CHUNK_SIZE as u64;
        file.seek(std::io::SeekFrom::Start(done)).await?;
        let mut buf = vec![0u8; content::CHUNK_SIZE];
        let mut index = from.index;
        loop {
            let n = read_full(&mut file, &mut buf).await?;
            if n == 0 {
                break;
            }
            let mut chunk =
                content::seal_chunk(file_id, index, &key, wrapped.as_deref(), &buf[..n])?;
            chunk.msg_id = Some(self.flights.chunk_id(file_id, index, new_msg_id));
            // Named, as the manifest says (`CHUNKS_NAME_SENDER`): another
            // member's chunk under this `file_id` is ignored, not mixed in.
            chunk
                .extra
                .insert(MANIFEST_FROM.into(), Value::String(self.cfg.user.clone()));
            if !self.quiet_send(&to, &Message::FileChunk(chunk)).await {
                return Ok(Streamed::Cut(done));
            }
            index += 1;
            done += n as u64;
            self.emit(Event::Progress {
                direction: "sending",
                name: start.name.clone(),
                done,
                total: start.size,
            });
        }
        if done != start.size {
            anyhow::bail!(
                "the file changed while it was sent ({done} of {} bytes)",
                start.size
            );
        }
        let end = self.file_end_frame(file_id, wrapped.is_some());
        if !self.quiet_send(&to, &Message::FileEnd(end)).await {
            return Ok(Streamed::Cut(done));
        }
        Ok(Streamed::All)
    }

    /// Sends a file frame if connected; false if not (nothing said: the
    /// file in flight reports it).
    async fn quiet_send(&mut self, to: &str, msg: &Message) -> bool {
        match self.session.as_mut() {
            Some(session) => session.send(to, msg).await.is_ok(),
            None => false,
        }
    }

    /// The size of the file at `path`, if it is one we may send.
    async fn file_size(&self, path: &Path) -> anyhow::Result<u64> {
        let meta = tokio::fs::metadata(path).await?;
        if !meta.is_file() {
            anyhow::bail!("not a regular file");
        }
        let size = meta.len();
        if size > self.cfg.max_file_size {
            anyhow::bail!(
                "{size} bytes is over the {}-byte limit",
                self.cfg.max_file_size
            );
        }
        Ok(size)
    }

    /// The signed manifest of the file at `path` for `to`.
    async fn manifest(
        &self,
        to: &str,
        path: &Path,
        group: bool,
        size: u64,
    ) -> anyhow::Result<FileStart> {
        let sha = hash_file(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let file_id = new_msg_id();
        let mode = if group { FileMode::Group } else { FileMode::Dm };
        let signed =
            content::manifest_signed_bytes(&file_id, &name, size, &sha, mode, &self.cfg.user, to)?;
        let k = self.key.clone();
        let sig = blocking(move || k.sign_b64(&signed))
            .await
            .ok_or_else(|| anyhow::anyhow!("signing task"))??;
        let mut extra = Map::new();
        extra.insert(MANIFEST_FROM.into(), Value::String(self.cfg.user.clone()));
        extra.insert(CHUNKS_NAME_SENDER.into(), Value::Bool(true));
        Ok(FileStart {
            file_id,
            name,
            size,
            sha256: sha,
            mode,
            group_id: group.then(|| to.to_owned()),
            user_id: None,
            content_sig: Some(sig),
            msg_id: Some(new_msg_id()),
            extra,
        })
    }

    /// `FILE_END` (the same `msg_id` when sent again), naming its sender as
    /// the manifest does (the node checks it); a DM file's asks for receipts.
    fn file_end_frame(&mut self, file_id: &str, dm: bool) -> FileEnd {
        let mut extra = Map::new();
        if dm {
            extra.insert(content::FILE_END_MODE.into(), Value::String("dm".into()));
        }
        extra.insert(MANIFEST_FROM.into(), Value::String(self.cfg.user.clone()));
        FileEnd {
            file_id: file_id.to_owned(),
            user_id: None,
            msg_id: Some(self.flights.end_id(file_id, new_msg_id)),
            extra,
        }
    }
}

async fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(crypto::hex(ctx.finish().as_ref()))
}

/// Fills `buf` from `file` as far as the file goes.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
