//! Receiving files safely (PROTOCOL.md C7): a received name is reduced to a
//! safe base name inside the downloads folder, data goes to a temporary file,
//! and the file is linked into place under a name that clobbers nothing only
//! after its size and SHA-256 match the manifest. A failed transfer leaves
//! nothing behind. A transfer cut by a lost connection is kept (its verified
//! prefix in the temporary file) and continues when the node hands on the
//! rest after the reconnect: frames it had already handed us come again and
//! are recognised as repeats.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use serde_json::{Map, Value};

use crate::content::CHUNK_SIZE;
use crate::crypto::hex;
use crate::wire::messages::{FileChunk, FileMode, FileStart};

/// The longest received file name we keep, in bytes.
pub const MAX_NAME_BYTES: usize = 120;
/// Default largest file accepted (1 GiB).
pub const DEFAULT_MAX_FILE: u64 = 1 << 30;
/// Transfers in progress at once, from everyone.
pub const MAX_TRANSFERS: usize = 32;
/// Transfers in progress at once from one sender (manifests that name no
/// sender count as one sender), so one sender cannot fill every slot.
pub const MAX_TRANSFERS_PER_SENDER: usize = 4;
/// A transfer with no chunk for this long is dropped with its temporary
/// file, freeing its slot.
pub const TRANSFER_IDLE: Duration = Duration::from_secs(60);
/// How far past the chunks received in order (the hashed prefix) a chunk
/// may land. A chunk is written at its place, so one far ahead would make
/// the temporary file as long as its offset at once (a whole file's size
/// on a filesystem without sparse files): chunks further ahead are dropped
/// unwritten. Chunks come out of order only when frames are handed on
/// again after a reconnect or a node's restart, behind at most a link's
/// window of frames ([`crate::node::custody::LINK_WINDOW`], 4,096: about
/// 240 MiB of chunks), so no honest transfer meets the bound. A dropped
/// chunk is acknowledged like any frame (nothing sends it again): its
/// transfer stalls and is dropped after [`TRANSFER_IDLE`].
pub const CHUNKS_AHEAD_MAX: u64 = 4096;
/// Failed transfers remembered (by `file_id`), so their frames that still
/// come are not reported again.
const FAILED_REMEMBERED: usize = 1024;
const PART_PREFIX: &str = ".socp-";
const PART_SUFFIX: &str = ".part";

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{name}: {size} bytes is over the {max}-byte limit")]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("{name}: too many transfers at once ({MAX_TRANSFERS}); refused")]
    TooMany { name: String },
    #[error(
        "{name}: {sender} already has {MAX_TRANSFERS_PER_SENDER} transfers in progress; refused"
    )]
    TooManyFrom { name: String, sender: String },
    #[error("a transfer with this id is already in progress")]
    Duplicate,
    #[error("no transfer {0} in progress")]
    Unknown(String),
    #[error("{name}: chunk {index} of {len} bytes does not fit the {size} bytes announced")]
    BadChunk {
        name: String,
        index: u64,
        len: usize,
        size: u64,
    },
    #[error("{name}: more data than the {size} bytes announced")]
    Overrun { name: String, size: u64 },
    #[error("{name}: chunk {index} does not decrypt (altered, or the wrong key)")]
    Decrypt { name: String, index: u64 },
    #[error("{name}: {got} bytes received, {want} announced")]
    Short { name: String, got: u64, want: u64 },
    #[error("{name}: SHA-256 is {got}, the manifest says {want}")]
    Hash {
        name: String,
        got: String,
        want: String,
    },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// Reduces a name from a peer to a safe base name: no folders, no `..`, no
/// control characters, bounded length, never empty or hidden.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    // Leading dots and spaces in any mix (". .x" must not become ".x").
    let cleaned = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end()
        .to_owned();
    let cleaned = if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    };
    truncate_keeping_extension(&cleaned, MAX_NAME_BYTES)
}

fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= 16 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, ext) = split_ext(name);
    let mut end = max.saturating_sub(ext.len());
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ext}", &stem[..end])
}

/// Links `temp` into `dir` as `name`, or `name (1)`, `name (2)`, ... — never
/// replacing a file that is there.
fn place(temp: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let (stem, ext) = split_ext(name);
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{stem} ({n}){ext}")
        };
        let path = dir.join(candidate);
        match std::fs::hard_link(temp, &path) {
            Ok(()) => {
                std::fs::remove_file(temp)?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name"))
}

/// One file being received.
pub struct Incoming {
    pub start: FileStart,
    /// The sender, when the manifest names one.
    pub from: Option<String>,
    pub name: String,
    temp: PathBuf,
    file: std::fs::File,
    received: u64,
    /// Which chunks are written (each at its place: chunks handed on again
    /// after a reconnect may come after later ones, or twice).
    have: Vec<bool>,
    /// The SHA-256 of the chunks before `hashed` (all written): hashed as
    /// they come in order, so only chunks that came early are read back.
    hasher: digest::Context,
    hashed: usize,
    /// `FILE_END` arrived: the file is complete once every chunk is here.
    ended: bool,
    /// When the manifest or the last chunk arrived.
    last_seen: Instant,
    /// The unwrapped DM file key, with the wrapped text it came from.
    pub dm_key: Option<(String, Vec<u8>)>,
}

impl Incoming {
    /// Hashes the chunks that came early and now follow the hashed prefix
    /// (read back from the temporary file).
    fn catch_up(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        while self.have.get(self.hashed).is_some_and(|h| *h) {
            let offset = self.hashed as u64 * CHUNK_SIZE as u64;
            let len = (self.start.size - offset).min(CHUNK_SIZE as u64) as usize;
            buf.resize(len, 0);
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.read_exact(&mut buf)?;
            self.hasher.update(&buf);
            self.hashed += 1;
        }
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// A file that arrived whole.
#[derive(Debug, Clone)]
pub struct Finished {
    pub start: FileStart,
    pub from: Option<String>,
    pub path: PathBuf,
    pub size: u64,
}

/// The transfers in progress for one client.
pub struct Receiver {
    dir: PathBuf,
    max_size: u64,
    transfers: HashMap<String, Incoming>,
    /// Transfers that failed (refused, dropped) lately, oldest first.
    failed: std::collections::VecDeque<String>,
}

impl Receiver {
    /// A receiver saving into `dir` (created if missing); leftovers of an
    /// earlier run that was killed mid-transfer are removed.
    pub fn new(dir: &Path, max_size: u64) -> Result<Self, FileError> {
        let io = |e| FileError::Io(dir.display().to_string(), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PART_PREFIX) && name.ends_with(PART_SUFFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Receiver {
            dir: dir.to_owned(),
            max_size,
            transfers: HashMap::new(),
            failed: Default::default(),
        })
    }

    /// Begins a transfer announced by `FILE_START`; the same manifest again
    /// (handed on again after a reconnect, or sent again by a sender that
    /// resumes) leaves the transfer in progress as it is.
    pub fn start(&mut self, start: FileStart, from: Option<String>) -> Result<(), FileError> {
        if let Some(t) = self.transfers.get(&start.file_id)
            && t.from == from
            && same_manifest(&t.start, &start)
        {
            return Ok(());
        }
        let file_id = start.file_id.clone();
        let result = self.open(start, from);
        if result.is_err() {
            self.note_failed(&file_id);
        }
        result
    }

    /// True if the transfer `file_id` failed lately (and was reported).
    pub fn failed_lately(&self, file_id: &str) -> bool {
        self.failed.iter().any(|f| f == file_id)
    }

    fn note_failed(&mut self, file_id: &str) {
        self.failed.push_back(file_id.to_owned());
        while self.failed.len() > FAILED_REMEMBERED {
            self.failed.pop_front();
        }
    }

    fn open(&mut self, start: FileStart, from: Option<String>) -> Result<(), FileError> {
        let name = safe_name(&start.name);
        if start.size > self.max_size {
            return Err(FileError::TooLarge {
                name,
                size: start.size,
                max: self.max_size,
            });
        }
        if self.transfers.contains_key(&start.file_id) {
            return Err(FileError::Duplicate);
        }
        let from_sender = self.transfers.values().filter(|t| t.from == from).count();
        if from_sender >= MAX_TRANSFERS_PER_SENDER {
            return Err(FileError::TooManyFrom {
                name,
                sender: from.unwrap_or_else(|| "an unnamed sender".into()),
            });
        }
        if self.transfers.len() >= MAX_TRANSFERS {
            return Err(FileError::TooMany { name });
        }
        let temp = self.dir.join(format!(
            "{PART_PREFIX}{}{PART_SUFFIX}",
            uuid::Uuid::new_v4()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| FileError::Io(temp.display().to_string(), e))?;
        let incoming = Incoming {
            from,
            name,
            temp,
            file,
            received: 0,
            have: vec![false; chunk_count(start.size)],
            hasher: digest::Context::new(&digest::SHA256),
            hashed: 0,
            ended: false,
            last_seen: Instant::now(),
            dm_key: None,
            start,
        };
        self.transfers
            .insert(incoming.start.file_id.clone(), incoming);
        Ok(())
    }

    /// True if chunk `index` of `file_id` was already written: a frame
    /// handed on again after a reconnect (acknowledged too late to be
    /// forgotten at the node), to be skipped.
    pub fn is_repeat(&self, file_id: &str, index: u64) -> bool {
        self.transfers.get(file_id).is_some_and(|t| {
            usize::try_from(index)
                .ok()
                .and_then(|i| t.have.get(i))
                .is_some_and(|h| *h)
        })
    }

    /// True if chunk `index` of `file_id` lands more than
    /// [`CHUNKS_AHEAD_MAX`] chunks past those received in order: dropped
    /// unwritten (and not even opened).
    pub fn too_far_ahead(&self, file_id: &str, index: u64) -> bool {
        self.transfers
            .get(file_id)
            .is_some_and(|t| index >= t.hashed as u64 + CHUNKS_AHEAD_MAX)
    }

    /// False if `file_id`'s manifest says its sender names itself in every
    /// chunk and end ([`CHUNKS_NAME_SENDER`]) and this frame (its `extra`)
    /// names someone else, or no one: another user's frame under that
    /// `file_id` (a group's members all see it), ignored rather than mixed
    /// in. True for a transfer we do not hold, or whose manifest does not
    /// say so (a reference or older sender: its frames cannot be told apart).
    pub fn from_its_sender(&self, file_id: &str, extra: &Map<String, Value>) -> bool {
        let Some(t) = self.transfers.get(file_id) else {
            return true;
        };
        let named = t
            .start
            .extra
            .get(CHUNKS_NAME_SENDER)
            .and_then(Value::as_bool);
        if named != Some(true) {
            return true;
        }
        let from = extra.get(MANIFEST_FROM).and_then(Value::as_str);
        t.from.is_some() && from == t.from.as_deref()
    }

    /// True if `file_id` has its `FILE_END` and every chunk: ready for
    /// [`Receiver::finish`].
    pub fn is_complete(&self, file_id: &str) -> bool {
        self.transfers
            .get(file_id)
            .is_some_and(|t| t.ended && t.have.iter().all(|h| *h))
    }

    /// Restarts every transfer's idle clock: the time without a connection
    /// does not count against [`TRANSFER_IDLE`].
    pub fn touch_all(&mut self, now: Instant) {
        for t in self.transfers.values_mut() {
            t.last_seen = now;
        }
    }

    /// The transfer a chunk belongs to.
    pub fn get_mut(&mut self, file_id: &str) -> Option<&mut Incoming> {
        self.transfers.get_mut(file_id)
    }

    /// Appends one chunk's plaintext (already opened by the caller).
    pub fn append(&mut self, chunk: &FileChunk, plaintext: &[u8]) -> Result<(u64, u64), FileError> {
        let t = self
            .transfers
            .get_mut(&chunk.file_id)
            .ok_or_else(|| FileError::Unknown(chunk.file_id.clone()))?;
        let result = (|| {
            let bad = || FileError::BadChunk {
                name: t.name.clone(),
                index: chunk.index,
                len: plaintext.len(),
                size: t.start.size,
            };
            let slot = usize::try_from(chunk.index)
                .ok()
                .filter(|i| *i < t.have.len())
                .ok_or_else(bad)?;
            let offset = chunk.index * CHUNK_SIZE as u64;
            let want = (t.start.size - offset).min(CHUNK_SIZE as u64);
            if plaintext.len() as u64 != want {
                return Err(bad());
            }
            if t.have[slot] || chunk.index >= t.hashed as u64 + CHUNKS_AHEAD_MAX {
                return Ok((t.received, t.start.size));
            }
            let temp = t.temp.display().to_string();
            let io = |e| FileError::Io(temp.clone(), e);
            t.file.seek(SeekFrom::Start(offset)).map_err(io)?;
            t.file.write_all(plaintext).map_err(io)?;
            t.have[slot] = true;
            if slot == t.hashed {
                t.hasher.update(plaintext);
                t.hashed += 1;
                t.catch_up().map_err(io)?;
            }
            t.received += plaintext.len() as u64;
            t.last_seen = Instant::now();
            Ok((t.received, t.start.size))
        })();
        if result.is_err() {
            self.abort(&chunk.file_id);
        }
        result
    }

    /// `FILE_END` arrived: true if the transfer is complete (then
    /// [`Receiver::finish`] it), false if chunks are still missing (handed
    /// on again after a reconnect, they may come after the end).
    pub fn end(&mut self, file_id: &str) -> Result<bool, FileError> {
        let t = self
            .transfers
            .get_mut(file_id)
            .ok_or_else(|| FileError::Unknown(file_id.to_owned()))?;
        t.ended = true;
        t.last_seen = Instant::now();
        Ok(self.is_complete(file_id))
    }

    /// Finishes a complete transfer: size and SHA-256 must match.
    pub fn finish(&mut self, file_id: &str) -> Result<Finished, FileError> {
        let result = self.finish_transfer(file_id);
        if matches!(&result, Err(e) if !matches!(e, FileError::Unknown(_))) {
            self.note_failed(file_id);
        }
        result
    }

    fn finish_transfer(&mut self, file_id: &str) -> Result<Finished, FileError> {
        let t = self
            .transfers
            .remove(file_id)
            .ok_or_else(|| FileError::Unknown(file_id.to_owned()))?;
        let Incoming {
            start,
            from,
            name,
            temp,
            file,
            received,
            hasher,
            ..
        } = t;
        let cleanup = |e: FileError| {
            let _ = std::fs::remove_file(&temp);
            e
        };
        if received != start.size {
            return Err(cleanup(FileError::Short {
                name,
                got: received,
                want: start.size,
            }));
        }
        let got = hex(hasher.finish().as_ref());
        if !got.eq_ignore_ascii_case(&start.sha256) {
            return Err(cleanup(FileError::Hash {
                name,
                got,
                want: start.sha256.clone(),
            }));
        }
        file.sync_all()
            .map_err(|e| cleanup(FileError::Io(temp.display().to_string(), e)))?;
        drop(file);
        let path = place(&temp, &self.dir, &name)
            .map_err(|e| cleanup(FileError::Io(self.dir.display().to_string(), e)))?;
        Ok(Finished {
            start,
            from,
            path,
            size: received,
        })
    }

    /// Drops a transfer and its temporary file; returns its name.
    pub fn abort(&mut self, file_id: &str) -> Option<String> {
        let t = self.transfers.remove(file_id)?;
        self.note_failed(file_id);
        drop(t.file);
        let _ = std::fs::remove_file(&t.temp);
        Some(t.name)
    }

    /// Drops the transfers that had nothing new for `idle` at `now`, with
    /// their temporary files; returns their names and senders.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<(String, Option<String>)> {
        let late: Vec<(String, Option<String>)> = self
            .transfers
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_seen) >= idle)
            .map(|(id, t)| (id.clone(), t.from.clone()))
            .collect();
        late.into_iter()
            .filter_map(|(id, from)| Some((self.abort(&id)?, from)))
            .collect()
    }

    /// Transfers in progress.
    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    /// True if nothing is being received.
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
    }

    /// Drops every transfer (the connection was lost); returns their names.
    pub fn abort_all(&mut self) -> Vec<String> {
        let ids: Vec<String> = self.transfers.keys().cloned().collect();
        ids.iter().filter_map(|id| self.abort(id)).collect()
    }
}

/// Chunks in a file of `size` bytes.
fn chunk_count(size: u64) -> usize {
    usize::try_from(size.div_ceil(CHUNK_SIZE as u64)).unwrap_or(usize::MAX)
}

/// True if two manifests announce the same file under the same id.
fn same_manifest(a: &FileStart, b: &FileStart) -> bool {
    (
        &a.name,
        a.size,
        &a.sha256,
        a.mode,
        &a.group_id,
        &a.content_sig,
    ) == (
        &b.name,
        b.size,
        &b.sha256,
        b.mode,
        &b.group_id,
        &b.content_sig,
    )
}

/// The manifest field naming its sender (a `socp` extension the node checks
/// against the authenticated user).
pub const MANIFEST_FROM: &str = "from";

/// A manifest field (part B, `true`): its sender names itself (`from`) in
/// every chunk and end of the file too, so a receiver ignores the frames
/// another user sends under the same `file_id` (the node checks that a
/// file frame's `from` is its authenticated sender).
pub const CHUNKS_NAME_SENDER: &str = "frames_from";

/// The sender a manifest names, if it names one.
pub fn manifest_sender(start: &FileStart) -> Option<&str> {
    start.extra.get(MANIFEST_FROM).and_then(|v| v.as_str())
}

/// The mode of a manifest, as the JSON events name it.
pub fn mode_name(mode: FileMode) -> &'static str {
    match mode {
        FileMode::Dm => "dm",
        FileMode::Group => "group",
    }
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
