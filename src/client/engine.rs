//! The client engine: one task that turns commands into frames and frames
//! into events. It fetches missing keys before sending, verifies content
//! with pinned directory keys (never `sender_pub`), drops duplicates by
//! `msg_id`, receives files safely and reconnects with backoff.
//!
//! Its parts, one file each: `connection` (the run loop, reconnects,
//! acknowledgements), `sending` (the outbox and the node's refusals),
//! `keys` (pinned keys and directory lookups, kept in
//! [`super::lookups::Lookups`]), `compose` (commands to frames),
//! `send_file`, `incoming` (frames to events), `receive_file` and
//! `listing` (`/list` pages).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::commands::Command;
use super::events::{Event, Frontend};
use super::files::Receiver;
use super::journal::Journal;
use super::keyring::Keyring;
use super::lookups::Lookups;
use super::outbox::SentIds;
use super::session::Session;
use crate::backoff::Backoff;
use crate::crypto::PrivateKey;
use crate::wire::messages::Message;
use crate::wire::{Envelope, ids};

mod compose;
mod connection;
mod flights;
mod incoming;
mod keys;
mod listing;
mod receive_file;
mod send_file;
mod sending;
mod tags;

pub use super::lookups::LOOKUP_PATIENCE;
pub use connection::Stopped;
pub use listing::LIST_PAGE;

/// Shown ids gathered in the journal before they go into the keyring.
pub const JOURNAL_BATCH: usize = 512;
/// Acks wait at most this long to be batched, and at most this many go in one.
pub const ACK_DELAY: Duration = Duration::from_millis(10);
pub const ACK_BATCH: usize = 128;
/// Reconnect backoff bounds.
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Waits between reconnects.
pub const RECONNECT: Backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);

/// Settings of one client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub user: String,
    pub server: String,
    pub key_path: PathBuf,
    pub keyring_path: PathBuf,
    pub downloads: PathBuf,
    pub max_file_size: u64,
    /// Which `wss://` servers to trust (None: the system's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// An invite code for the first hello (`--invite`).
    pub invite: Option<String>,
}

/// Work waiting for a user's directory key: a command (with the id the
/// caller gave it, if any: see [`tags`]) or a frame.
enum Deferred {
    Cmd(Command, Option<String>),
    Frame(Box<(Envelope, Message)>),
}

/// Runs RSA and other CPU work off the reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// A fresh `msg_id` for content we send (content from a reference client,
/// which sends none, gets `content::derived_msg_id`, as at a node).
fn new_msg_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The client.
pub struct Engine<F: Frontend> {
    cfg: ClientConfig,
    key: Arc<PrivateKey>,
    keyring: Keyring,
    /// Ids shown and not yet in the keyring.
    journal: Journal,
    receiver: Receiver,
    front: F,
    session: Option<Session>,
    /// Directory lookups in flight and the work waiting for them.
    lookups: Lookups<Deferred>,
    /// Work whose key lookup is over, to run next.
    ready: VecDeque<Deferred>,
    /// Content handled but not yet acknowledged to the node (batched).
    to_ack: Vec<String>,
    ack_at: Option<tokio::time::Instant>,
    /// Outbox entries refused for a transient reason, and when to try again.
    retry_at: HashMap<String, tokio::time::Instant>,
    /// The `FILE_END` `msg_id`s acknowledged only once their file is saved
    /// (chunks were missing at the end), by `file_id`, each with the
    /// sender to tell if the file fails (a DM file's end asks for receipts).
    held_ends: HashMap<String, (String, Option<String>)>,
    /// `undecryptable` reports (sender, `FILE_END` msg_id) for DM files that
    /// failed here, sent before the next `ACK` (`receive_file.rs`).
    to_report: Vec<(String, String)>,
    /// Files being sent, until the node acknowledges or refuses them.
    flights: flights::Flights,
    /// Content the node took from us lately: receipts are shown only for
    /// these (and for what is still in the outbox).
    sent: SentIds,
    /// Which command (by the caller's id) caused which events.
    tags: tags::Tags,
    /// Users whose pinned key the directory was asked about since we
    /// connected (see `Engine::confirmed`).
    rechecked: HashSet<String>,
    /// The last `/list`, for `/more`.
    listing: listing::Listing,
}

impl<F: Frontend> Engine<F> {
    /// Loads (or creates) the user's key and keyring.
    pub async fn open(cfg: ClientConfig, front: F) -> anyhow::Result<Self> {
        use anyhow::Context;
        ids::check_user(&cfg.user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
        let key_path = cfg.key_path.clone();
        let (key, created) = blocking(move || PrivateKey::load_or_generate(&key_path))
            .await
            .context("key task")?
            .with_context(|| format!("loading your key {}", cfg.key_path.display()))?;
        if created {
            tracing::info!(path = %cfg.key_path.display(), "created your key");
        }
        let keyring = Keyring::open(&cfg.keyring_path)
            .with_context(|| format!("opening your keyring {}", cfg.keyring_path.display()))?;
        let journal = open_journal(&cfg, &keyring)?;
        let receiver = Receiver::new(&cfg.downloads, cfg.max_file_size).with_context(|| {
            format!("preparing the downloads folder {}", cfg.downloads.display())
        })?;
        Ok(Engine {
            cfg,
            key: Arc::new(key),
            keyring,
            journal,
            receiver,
            front,
            session: None,
            lookups: Lookups::default(),
            ready: VecDeque::new(),
            to_ack: Vec::new(),
            ack_at: None,
            retry_at: HashMap::new(),
            held_ends: HashMap::new(),
            to_report: Vec::new(),
            flights: flights::Flights::default(),
            sent: SentIds::default(),
            tags: tags::Tags::default(),
            rechecked: HashSet::new(),
            listing: Default::default(),
        })
    }

    /// Tells the user; the event carries the id of the command that
    /// caused it, if the caller gave one.
    fn emit(&mut self, event: Event) {
        let id = self.tags.id_for(&event);
        self.front.emit_for(&event, id.as_deref());
    }
}

/// Opens the journal of shown ids, moving what the last run left in it into
/// the keyring first.
fn open_journal(cfg: &ClientConfig, keyring: &Keyring) -> anyhow::Result<Journal> {
    use anyhow::Context;
    let journal_path = cfg.keyring_path.with_extension("shown");
    let (mut journal, left) = Journal::open(&journal_path)
        .with_context(|| format!("opening {}", journal_path.display()))?;
    keyring
        .mark_seen(&left)
        .context("recording the messages shown before the last exit")?;
    journal
        .clear_file()
        .with_context(|| format!("emptying {}", journal_path.display()))?;
    Ok(journal)
}
