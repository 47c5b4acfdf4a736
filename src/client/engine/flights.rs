//! Files being sent, until the node acknowledges their `FILE_END`: what
//! it takes to send the rest again after a reconnect (the path, the signed
//! manifest, the file key and the frames' `msg_id`s, so frames sent again
//! carry the ids the node and the recipient already know), and for files
//! sent lately, which `FILE_END` their receipts name.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::client::outbox::SentIds;
use crate::wire::messages::FileStart;

/// Times in a row a file is sent on after a lost connection, with nothing
/// of it acknowledged in between, before it is given up (reported not sent,
/// to `/file` again).
pub const MAX_FILE_RESUMES: u32 = 5;

/// A file being sent: "sent" once the node acknowledges its `FILE_END`,
/// "not sent" if the node refuses any of its frames.
pub(super) struct FileFlight {
    pub name: String,
    pub to: String,
    pub start_msg_id: String,
    pub end_msg_id: Option<String>,
    pub path: PathBuf,
    pub start: FileStart,
    /// The file key, and for a DM the key wrapped for the recipient.
    pub key: Vec<u8>,
    pub wrapped: Option<String>,
    /// The `msg_id` of each chunk sent so far, by index.
    pub chunk_ids: Vec<String>,
    /// Times it was sent on after a lost connection since the node last
    /// acknowledged a frame of it.
    pub resumes: u32,
    /// The user was told the connection cut it (not again in `lost`).
    pub told_cut: bool,
}

/// Where sending a file goes on from: the manifest again or not, and the
/// first chunk the node has not acknowledged.
pub(super) struct Resume {
    pub send_start: bool,
    pub index: u64,
}

/// Files in flight by `file_id` (in the order they were sent), and the
/// `msg_id`s of their frames not yet acknowledged; and for files sent
/// lately, the `FILE_END` `msg_id` their receipts name, with the `msg_id`
/// the file is shown under (its manifest's).
#[derive(Default)]
pub(super) struct Flights {
    files: HashMap<String, FileFlight>,
    order: Vec<String>,
    frames: HashMap<String, String>,
    ended: SentIds,
    /// The names of files sent lately, by the `msg_id` they are shown under.
    names: SentIds,
}

impl Flights {
    pub fn start(&mut self, file_id: &str, flight: FileFlight) {
        self.frames
            .insert(flight.start_msg_id.clone(), file_id.to_owned());
        self.files.insert(file_id.to_owned(), flight);
        self.order.push(file_id.to_owned());
    }

    /// Chunk `index` goes out under `msg_id` (the same one when sent again).
    pub fn chunk_id(&mut self, file_id: &str, index: u64, fresh: fn() -> String) -> String {
        let Some(f) = self.files.get_mut(file_id) else {
            return fresh();
        };
        let i = index as usize;
        if i >= f.chunk_ids.len() {
            f.chunk_ids.push(fresh());
        }
        let id = f.chunk_ids.get(i).cloned().unwrap_or_else(fresh);
        self.frames.insert(id.clone(), file_id.to_owned());
        id
    }

    /// The `FILE_END`'s `msg_id` (the same one when sent again).
    pub fn end_id(&mut self, file_id: &str, fresh: fn() -> String) -> String {
        let Some(f) = self.files.get_mut(file_id) else {
            return fresh();
        };
        let id = f.end_msg_id.get_or_insert_with(fresh).clone();
        self.frames.insert(id.clone(), file_id.to_owned());
        id
    }

    pub fn get(&self, file_id: &str) -> Option<&FileFlight> {
        self.files.get(file_id)
    }

    pub fn get_mut(&mut self, file_id: &str) -> Option<&mut FileFlight> {
        self.files.get_mut(file_id)
    }

    /// Files in flight, in the order they were sent.
    pub fn ids(&self) -> Vec<String> {
        self.order.clone()
    }

    /// Forgets a file in flight.
    pub fn remove(&mut self, file_id: &str) -> Option<FileFlight> {
        self.order.retain(|f| f != file_id);
        self.files.remove(file_id)
    }

    /// Where to go on from: frames the node acknowledged are not sent again.
    pub fn resume(&self, file_id: &str) -> Option<Resume> {
        let f = self.files.get(file_id)?;
        let unacked = |id: &String| self.frames.contains_key(id);
        if unacked(&f.start_msg_id) {
            return Some(Resume {
                send_start: true,
                index: 0,
            });
        }
        let index = f
            .chunk_ids
            .iter()
            .position(unacked)
            .unwrap_or(f.chunk_ids.len());
        Some(Resume {
            send_start: false,
            index: index as u64,
        })
    }

    /// The node acknowledged `msg_id`: the file it ends, if it is a file's
    /// end (then no longer in flight; its receipts are shown under its
    /// manifest's id).
    pub fn acked(&mut self, msg_id: &str) -> Option<FileFlight> {
        let file_id = self.frames.remove(msg_id)?;
        if let Some(f) = self.files.get_mut(&file_id) {
            // It makes progress: cuts count again from here.
            f.resumes = 0;
        }
        let is_end = self
            .files
            .get(&file_id)
            .and_then(|f| f.end_msg_id.as_deref())
            == Some(msg_id);
        if !is_end {
            return None;
        }
        let f = self.remove(&file_id)?;
        self.ended.insert(msg_id, &f.start_msg_id);
        self.names.insert(&f.start_msg_id, &f.name);
        Some(f)
    }

    /// The `msg_id` a sent file is shown under, if `end_id` is its end.
    pub fn shown_id(&self, end_id: &str) -> Option<String> {
        self.ended.recipient(end_id).map(str::to_owned)
    }

    /// The name of the file shown under `shown_id`, if it was sent lately.
    pub fn name_of(&self, shown_id: &str) -> Option<String> {
        self.names.recipient(shown_id).map(str::to_owned)
    }

    /// The file this `msg_id` belongs to, if it is still in flight.
    pub fn file_of(&self, msg_id: &str) -> Option<&str> {
        self.frames
            .get(msg_id)
            .map(String::as_str)
            .filter(|f| self.files.contains_key(*f))
    }
}
