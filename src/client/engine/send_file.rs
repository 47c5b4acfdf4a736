//! Sending a file (`/file`): a signed manifest (`FILE_START`), the file
//! read and sealed in 61440-byte chunks, then `FILE_END`. The file is "sent"
//! once the node acknowledges its end (see [`super::sending::Flights`]).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::sending::FileFlight;
use super::{Engine, blocking, new_msg_id};
use crate::client::codes::ClientCode;
use crate::client::commands::Command;
use crate::client::events::{Event, Frontend};
use crate::client::files::MANIFEST_FROM;
use crate::content;
use crate::crypto::{self, aead};
use crate::wire::messages::{FileChunk, FileEnd, FileMode, FileStart, Message};
use crate::wire::{b64, ids};

/// A file on its way out, once its manifest is sent.
struct Upload<'a> {
    to: &'a str,
    file_id: String,
    name: String,
    size: u64,
    /// The file key, and for a DM the key wrapped for the recipient.
    key: &'a [u8],
    wrapped: Option<String>,
    start_msg_id: String,
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
        let upload = Upload {
            to,
            file_id: start.file_id.clone(),
            name: start.name.clone(),
            size,
            key,
            wrapped,
            start_msg_id: start.msg_id.clone().unwrap_or_default(),
        };
        self.tags.content(&upload.start_msg_id);
        let start = Message::FileStart(start);
        if !self.fits(to, &start) {
            return Ok(());
        }
        if !self.send(to, &start).await {
            anyhow::bail!("not sent");
        }
        self.flights.start(
            &upload.file_id,
            FileFlight {
                name: upload.name.clone(),
                to: to.to_owned(),
                start_msg_id: upload.start_msg_id.clone(),
                end_msg_id: None,
            },
        );
        self.send_chunks(&upload, path).await?;
        self.send_end(upload).await;
        Ok(())
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

    /// Reads, seals and sends the file chunk by chunk, with progress.
    async fn send_chunks(&mut self, up: &Upload<'_>, path: &Path) -> anyhow::Result<()> {
        let mut file = tokio::fs::File::open(path).await?;
        let mut buf = vec![0u8; content::CHUNK_SIZE];
        let (mut index, mut done) = (0u64, 0u64);
        loop {
            let n = read_full(&mut file, &mut buf).await?;
            if n == 0 {
                break;
            }
            let chunk = self.seal_chunk(up, index, &buf[..n])?;
            if !self.send(up.to, &Message::FileChunk(chunk)).await {
                anyhow::bail!("the connection dropped after {done} of {} bytes", up.size);
            }
            index += 1;
            done += n as u64;
            self.emit(Event::Progress {
                direction: "sending",
                name: up.name.clone(),
                done,
                total: up.size,
            });
        }
        if done != up.size {
            anyhow::bail!(
                "the file changed while it was sent ({done} of {} bytes)",
                up.size
            );
        }
        Ok(())
    }

    /// Chunk `index`, sealed, with a `msg_id` of its own in the flight.
    fn seal_chunk(
        &mut self,
        up: &Upload<'_>,
        index: u64,
        data: &[u8],
    ) -> anyhow::Result<FileChunk> {
        let wrapped = up.wrapped.as_deref();
        let mut chunk = content::seal_chunk(&up.file_id, index, up.key, wrapped, data)?;
        let chunk_id = new_msg_id();
        chunk.msg_id = Some(chunk_id.clone());
        self.flights.add_frame(&up.file_id, &chunk_id);
        Ok(chunk)
    }

    /// `FILE_END`: "sent" once the node acknowledges it (a node that
    /// acknowledges nothing: now).
    async fn send_end(&mut self, up: Upload<'_>) {
        let end_id = new_msg_id();
        self.flights.end(&up.file_id, &end_id);
        let mut extra = Map::new();
        if up.wrapped.is_some() {
            // A DM file: its recipient's node sends receipts for it, to the
            // sender named (as in the manifest; the node checks it).
            extra.insert(content::FILE_END_MODE.into(), Value::String("dm".into()));
            extra.insert(MANIFEST_FROM.into(), Value::String(self.cfg.user.clone()));
        }
        let end = FileEnd {
            file_id: up.file_id,
            user_id: None,
            msg_id: Some(end_id),
            extra,
        };
        if self.send(up.to, &Message::FileEnd(end)).await
            && !self.session.as_ref().is_some_and(|s| s.welcomed())
        {
            self.emit(Event::Sent {
                kind: "file",
                to: up.to.to_owned(),
                msg_id: up.start_msg_id,
            });
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
