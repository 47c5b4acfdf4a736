//! The client engine: one task that turns commands into frames and frames
//! into events. It fetches missing keys before sending, verifies content
//! with pinned directory keys (never `sender_pub`), drops duplicates by
//! `msg_id`, receives files safely and reconnects with backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::commands::{self, Command};
use super::events::{Event, Frontend};
use super::files::{self, Receiver};
use super::journal::Journal;
use super::keyring::{GroupKey, Keyring, Observed};
use super::session::{Session, SessionError};
use crate::content;
use crate::crypto::{self, PrivateKey, PublicKey, aead};
use crate::wire::messages::{
    Deliver, FileChunk, FileEnd, FileMode, FileStart, GroupKeyShare, Message, MsgGroup, UserLookup,
};
use crate::wire::{Envelope, b64, ids, now_ms};

mod sending;
use sending::{FileFlight, Flights};

/// How long to wait for the directory to answer a key lookup.
pub const LOOKUP_PATIENCE: Duration = Duration::from_secs(10);
/// Shown ids gathered in the journal before they go into the keyring.
pub const JOURNAL_BATCH: usize = 512;
/// Acks wait at most this long to be batched, and at most this many go in one.
pub const ACK_DELAY: Duration = Duration::from_millis(10);
pub const ACK_BATCH: usize = 128;
/// Reconnect backoff bounds.
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);

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

/// Work waiting for a user's directory key.
enum Deferred {
    Cmd(Command),
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
    waiting: HashMap<String, Vec<Deferred>>,
    requested: HashMap<String, Instant>,
    explicit: HashSet<String>,
    /// Users the directory does not know (or did not answer for): their
    /// content is shown unverified instead of waiting.
    unknown: HashSet<String>,
    ready: VecDeque<Deferred>,
    /// Content handled but not yet acknowledged to the node (batched).
    to_ack: Vec<String>,
    ack_at: Option<tokio::time::Instant>,
    /// Outbox entries refused for a transient reason, and when to try again.
    retry_at: HashMap<String, tokio::time::Instant>,
    /// Files being sent, until the node acknowledges or refuses them.
    flights: Flights,
    /// Content the node took from us lately: receipts are shown only for
    /// these (and for what is still in the outbox).
    sent: SentIds,
}

/// The `msg_id`s of content we sent lately (and to whom), at most
/// [`SENT_REMEMBERED`].
#[derive(Default)]
struct SentIds {
    to: HashMap<String, String>,
    order: VecDeque<String>,
}

/// How many sent `msg_id`s the client remembers for their receipts.
const SENT_REMEMBERED: usize = 100_000;

impl SentIds {
    fn insert(&mut self, id: &str, to: &str) {
        if self.to.insert(id.to_owned(), to.to_owned()).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.order.len() > SENT_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.to.remove(&old);
            }
        }
    }

    /// Whom content we sent under `id` was for.
    fn recipient(&self, id: &str) -> Option<&str> {
        self.to.get(id).map(String::as_str)
    }

    fn contains(&self, id: &str) -> bool {
        self.to.contains_key(id)
    }
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
        let journal_path = cfg.keyring_path.with_extension("shown");
        let (mut journal, left) = Journal::open(&journal_path)
            .with_context(|| format!("opening {}", journal_path.display()))?;
        keyring
            .mark_seen(&left)
            .context("recording the messages shown before the last exit")?;
        journal
            .clear_file()
            .with_context(|| format!("emptying {}", journal_path.display()))?;
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
            waiting: HashMap::new(),
            requested: HashMap::new(),
            explicit: HashSet::new(),
            unknown: HashSet::new(),
            ready: VecDeque::new(),
            to_ack: Vec::new(),
            ack_at: None,
            retry_at: HashMap::new(),
            flights: Flights::default(),
            sent: SentIds::default(),
        })
    }

    fn emit(&mut self, event: Event) {
        self.front.emit(&event);
    }

    /// Runs until `/quit` or the end of input.
    pub async fn run(mut self, mut input: mpsc::Receiver<String>) {
        let mut attempt = 0u32;
        let mut reconnect_at = Some(tokio::time::Instant::now());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            while let Some(work) = self.ready.pop_front() {
                match work {
                    Deferred::Cmd(cmd) => {
                        if !self.command(cmd).await {
                            return self.quit().await;
                        }
                    }
                    Deferred::Frame(frame) => self.frame(frame.0, frame.1).await,
                }
            }
            let connected = self.session.is_some();
            tokio::select! {
                line = input.recv() => match line {
                    None => return self.quit().await,
                    Some(line) => match commands::parse(&line) {
                        Ok(None) => {}
                        Ok(Some(cmd)) => {
                            if !self.command(cmd).await {
                                return self.quit().await;
                            }
                        }
                        Err(e) => self.emit(Event::error("USAGE", e.to_string())),
                    },
                },
                frame = recv(&mut self.session), if connected => match frame {
                    Ok(Some((env, msg))) => self.frame(env, msg).await,
                    Ok(None) => self.lost("the server closed the connection".into(), &mut reconnect_at, attempt),
                    Err(e) => self.lost(e.to_string(), &mut reconnect_at, attempt),
                },
                _ = sleep_until(reconnect_at), if !connected => {
                    attempt += 1;
                    let (server, user, tls) = (self.cfg.server.clone(), self.cfg.user.clone(), self.cfg.tls.clone());
                    match Session::connect_full(&server, &user, self.key.clone(), super::HelloStyle::Signed, tls, self.cfg.invite.clone()).await {
                        Ok(session) if session.welcomed() && !session.authenticated() => {
                            // We offered mac-v1: a socp node that welcomes us
                            // without a session leaves its frames to us
                            // unauthenticated (we know no key of its to check
                            // signatures with), so a forged ERROR or ACK could
                            // drop our outbox. See DESIGN.md.
                            session.close().await;
                            self.emit(Event::error("NO_SESSION", format!(
                                "{server} welcomed us without a mac-v1 session, so its frames cannot be authenticated; not retrying: \
                                 use a server that offers sessions (not --no-mac), over wss://")));
                            return;
                        }
                        Ok(session) => {
                            attempt = 0;
                            reconnect_at = None;
                            self.emit(Event::Connected { user: self.cfg.user.clone(), server: session.server_id.clone() });
                            self.session = Some(session);
                            self.on_connect().await;
                        }
                        Err(e) if e.is_transient() => {
                            let wait = backoff(attempt);
                            tracing::info!(error = %e, "not connected");
                            self.emit(Event::Reconnecting { attempt, in_ms: wait.as_millis() as u64 });
                            reconnect_at = Some(tokio::time::Instant::now() + wait);
                        }
                        Err(e) => {
                            let code = match &e {
                                SessionError::Refused { code, .. } => code.clone(),
                                _ => "CONNECT".into(),
                            };
                            self.emit(Event::error(&code, format!("{e}; not retrying: fix this and start again")));
                            return;
                        }
                    }
                },
                _ = sleep_until(self.ack_at) => self.flush_acks().await,
                _ = tick.tick() => {
                    self.expire_lookups();
                    self.expire_transfers();
                    self.retry_due().await;
                }
            }
        }
    }

    fn lost(
        &mut self,
        reason: String,
        reconnect_at: &mut Option<tokio::time::Instant>,
        attempt: u32,
    ) {
        self.session = None;
        // What was shown but not yet acknowledged comes again after the
        // reconnect; it is marked as seen, so it is not shown twice.
        self.to_ack.clear();
        self.ack_at = None;
        self.flights.clear();
        for name in self.receiver.abort_all() {
            self.emit(Event::error(
                "FILE",
                format!("{name}: transfer cut off by the disconnect; nothing was saved"),
            ));
        }
        self.emit(Event::Disconnected { reason });
        let wait = backoff(attempt + 1);
        self.emit(Event::Reconnecting {
            attempt: attempt + 1,
            in_ms: wait.as_millis() as u64,
        });
        *reconnect_at = Some(tokio::time::Instant::now() + wait);
    }

    async fn quit(mut self) {
        self.flush_acks().await;
        self.store_journal();
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        for name in self.receiver.abort_all() {
            self.emit(Event::error(
                "FILE",
                format!("{name}: transfer incomplete at /quit; nothing was saved"),
            ));
        }
        self.emit(Event::Disconnected {
            reason: "quit".into(),
        });
    }

    async fn send(&mut self, to: &str, msg: &Message) -> bool {
        let Some(session) = self.session.as_mut() else {
            self.emit(Event::error(
                "NOT_CONNECTED",
                "not connected to the server; try again when it says connected",
            ));
            return false;
        };
        match session.send(to, msg).await {
            Ok(()) => true,
            Err(e) => {
                self.emit(Event::error(
                    "NOT_CONNECTED",
                    format!("sending failed: {e}"),
                ));
                false
            }
        }
    }

    /// After a (re)connect: what the outbox holds goes out first, in order,
    /// then the key lookups that were waiting.
    async fn on_connect(&mut self) {
        self.resend_outbox().await;
        self.requested.clear();
        let waiting: Vec<String> = self.waiting.keys().cloned().collect();
        for user in waiting {
            self.request_key(&user).await;
        }
    }

    /// Acknowledges handled content to the node, one frame for many ids.
    async fn flush_acks(&mut self) {
        self.ack_at = None;
        if self.to_ack.is_empty() {
            return;
        }
        let msg_ids = std::mem::take(&mut self.to_ack);
        if let Some(session) = self.session.as_mut() {
            let ack = Message::Ack(crate::wire::messages::Ack {
                msg_ids,
                extra: Map::new(),
            });
            let _ = session.send(ids::TO_SERVER, &ack).await;
        }
    }

    fn ack_later(&mut self, msg_id: Option<&str>) {
        let Some(id) = msg_id else { return };
        self.to_ack.push(id.to_owned());
        if self.ack_at.is_none() {
            self.ack_at = Some(tokio::time::Instant::now() + ACK_DELAY);
        }
        if self.to_ack.len() >= ACK_BATCH {
            self.ack_at = Some(tokio::time::Instant::now());
        }
    }

    // ---- keys ----

    /// The pinned directory key of `user`, parsed.
    fn pinned(&self, user: &str) -> Option<PublicKey> {
        if user == self.cfg.user {
            return Some(self.key.public().clone());
        }
        let pinned = self.keyring.get(user).ok().flatten()?;
        PublicKey::from_b64(&pinned.pubkey).ok()
    }

    /// The key to send to `user` with: pinned and not awaiting `/trust`.
    fn sendable(&mut self, user: &str) -> Result<Option<PublicKey>, ()> {
        if user == self.cfg.user {
            return Ok(Some(self.key.public().clone()));
        }
        match self.keyring.get(user) {
            Ok(Some(p)) if p.pending.is_some() => {
                self.emit(Event::error(
                    "KEY_CHANGED",
                    format!("{user}'s key changed; compare /fingerprint {user} with them, then /trust {user}"),
                ));
                Err(())
            }
            Ok(Some(p)) => Ok(PublicKey::from_b64(&p.pubkey).ok()),
            Ok(None) => Ok(None),
            Err(e) => {
                self.emit(Event::error("KEYRING", e.to_string()));
                Err(())
            }
        }
    }

    async fn request_key(&mut self, user: &str) {
        if self.requested.contains_key(user) {
            return;
        }
        if self.session.is_none() {
            // Asked again for everything still waiting once connected.
            if !self.waiting.contains_key(user) {
                self.emit(Event::error(
                    "NOT_CONNECTED",
                    format!("not connected: cannot look {user} up now; try again when connected"),
                ));
            }
            return;
        }
        self.requested.insert(user.to_owned(), Instant::now());
        let q = Message::UserDbGetUser(UserLookup {
            user_id: user.to_owned(),
            extra: Map::new(),
        });
        if !self.send(ids::TO_SERVER, &q).await {
            self.requested.remove(user);
        }
    }

    async fn defer(&mut self, user: &str, work: Deferred) {
        self.waiting.entry(user.to_owned()).or_default().push(work);
        self.request_key(user).await;
    }

    fn key_answer(&mut self, user: &str, pubkey: Option<&str>) {
        self.requested.remove(user);
        let fingerprint = pubkey
            .and_then(|k| PublicKey::from_b64(k).ok())
            .map(|k| k.fingerprint());
        if let (Some(pk), Some(_)) = (pubkey, &fingerprint) {
            match self.keyring.observe(user, pk) {
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
                Err(e) => self.emit(Event::error("KEYRING", e.to_string())),
            }
        }
        if fingerprint.is_some() {
            self.unknown.remove(user);
        } else {
            self.unknown.insert(user.to_owned());
        }
        if self.explicit.remove(user) {
            self.emit(Event::Pubkey {
                user: user.to_owned(),
                found: fingerprint.is_some(),
                fingerprint: fingerprint.clone(),
            });
        }
        let waiting = self.waiting.remove(user).unwrap_or_default();
        for work in waiting {
            match work {
                Deferred::Cmd(_) if fingerprint.is_none() => self.emit(Event::error(
                    "NO_KEY",
                    format!("{user} is not in the directory; nothing was sent"),
                )),
                // Frames are handled either way: without a key they show as unverified.
                other => self.ready.push_back(other),
            }
        }
    }

    fn expire_lookups(&mut self) {
        let late: Vec<String> = self
            .requested
            .iter()
            .filter(|(_, at)| at.elapsed() > LOOKUP_PATIENCE)
            .map(|(u, _)| u.clone())
            .collect();
        for user in late {
            self.requested.remove(&user);
            self.explicit.remove(&user);
            self.unknown.insert(user.clone());
            for work in self.waiting.remove(&user).unwrap_or_default() {
                match work {
                    Deferred::Cmd(_) => self.emit(Event::error(
                        "NO_KEY",
                        format!("the directory did not answer for {user}'s key; nothing was sent"),
                    )),
                    // Shown unverified rather than never.
                    frame => self.ready.push_back(frame),
                }
            }
        }
    }

    // ---- commands ----

    /// Carries out one command; false means quit.
    async fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Quit => return false,
            Command::Help => self.emit(Event::Help {
                text: commands::help(),
            }),
            Command::List => {
                self.send(ids::TO_SERVER, &Message::UserListReq(Default::default()))
                    .await;
            }
            Command::Pubget => {
                let public = self.key.public();
                self.emit(Event::Pubget {
                    pubkey: public.to_b64().to_owned(),
                    fingerprint: public.fingerprint(),
                });
            }
            Command::Dbget(user) => {
                self.explicit.insert(user.clone());
                self.requested.remove(&user);
                self.request_key(&user).await;
            }
            Command::Fingerprint(None) => {
                let fp = self.key.public().fingerprint();
                self.emit(Event::Fingerprint {
                    user: self.cfg.user.clone(),
                    fingerprint: fp,
                });
            }
            Command::Fingerprint(Some(user)) => match self.pinned(&user) {
                Some(k) => self.emit(Event::Fingerprint {
                    user,
                    fingerprint: k.fingerprint(),
                }),
                None => self.emit(Event::error(
                    "NO_KEY",
                    format!("no key pinned for {user}; /dbget {user} fetches it"),
                )),
            },
            Command::Trust(user) => match self.keyring.trust(&user) {
                Ok(Some((_, new))) => {
                    let fingerprint = PublicKey::from_b64(&new)
                        .map(|k| k.fingerprint())
                        .unwrap_or_default();
                    self.emit(Event::Trusted { user, fingerprint });
                }
                Ok(None) => self.emit(Event::error(
                    "USAGE",
                    format!("{user} has no key change waiting for /trust"),
                )),
                Err(e) => self.emit(Event::error("KEYRING", e.to_string())),
            },
            Command::Msg { to, text } => self.send_dm(to, text).await,
            Command::Gshare { group, members } => self.share(group, members).await,
            Command::Gmsg { group, text } => self.send_group(group, text).await,
            Command::File { to, path } => self.send_file(to, path).await,
            Command::Outbox(cmd) => self.outbox_command(cmd).await,
        }
        true
    }

    async fn send_dm(&mut self, to: String, text: String) {
        let recipient = match self.sendable(&to) {
            Err(()) => return,
            Ok(None) => {
                return self
                    .defer(&to.clone(), Deferred::Cmd(Command::Msg { to, text }))
                    .await;
            }
            Ok(Some(k)) => k,
        };
        let (key, user, to2) = (self.key.clone(), self.cfg.user.clone(), to.clone());
        let sealed = blocking(move || {
            content::seal_dm(&key, &user, &to2, &recipient, text.as_bytes(), now_ms())
        })
        .await;
        let Some(Ok(mut dm)) = sealed else {
            return self.emit(Event::error("CRYPTO", "could not seal the message"));
        };
        let msg_id = new_msg_id();
        dm.msg_id = Some(msg_id.clone());
        self.send_content(&to, Message::MsgPrivate(dm), msg_id)
            .await;
    }

    async fn share(&mut self, group: String, members: Vec<String>) {
        // Only a group's owner rotates its key or changes its members (C10):
        // members would refuse our share anyway.
        match self.keyring.group_owner(&group) {
            Ok(Some(owner)) if owner != self.cfg.user => {
                return self.emit(Event::error(
                    "NOT_OWNER",
                    format!(
                        "{group} belongs to {owner}: only its owner can share a new key or change its members; nothing was sent"
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => return self.emit(Event::error("KEYRING", e.to_string())),
        }
        let mut keys = Vec::new();
        for m in &members {
            match self.sendable(m) {
                Err(()) => return,
                Ok(Some(k)) => keys.push((m.clone(), k)),
                Ok(None) => {
                    // Ask for every missing key at once; run again when they are here.
                    let missing: Vec<String> = members
                        .iter()
                        .filter(|u| self.pinned(u).is_none())
                        .cloned()
                        .collect();
                    for u in &missing[1..] {
                        self.request_key(u).await;
                    }
                    return self
                        .defer(
                            &missing[0].clone(),
                            Deferred::Cmd(Command::Gshare { group, members }),
                        )
                        .await;
                }
            }
        }
        let (key, user, group2) = (self.key.clone(), self.cfg.user.clone(), group.clone());
        let made = blocking(move || content::new_group_share(&key, &user, &group2, &keys)).await;
        let Some(Ok((group_key, mut share))) = made else {
            return self.emit(Event::error("CRYPTO", "could not create the group key"));
        };
        let msg_id = new_msg_id();
        share.msg_id = Some(msg_id.clone());
        let msg = Message::GroupKeyShare(share);
        if !self.fits(ids::TO_SERVER, &msg) {
            return;
        }
        let mut all = members.clone();
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
            return self.emit(Event::error("KEYRING", e.to_string()));
        }
        self.send_content(ids::TO_SERVER, msg, msg_id).await;
    }

    fn group_key(&mut self, group: &str) -> Option<GroupKey> {
        match self.keyring.group_key(group) {
            Ok(Some(k)) => Some(k),
            Ok(None) => {
                self.emit(Event::error(
                    "NO_KEY",
                    format!("no key for {group}: create it with /gshare {group} MEMBER..., or ask a member to share it"),
                ));
                None
            }
            Err(e) => {
                self.emit(Event::error("KEYRING", e.to_string()));
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
            return self.emit(Event::error("CRYPTO", "could not seal the message"));
        };
        let msg_id = new_msg_id();
        m.msg_id = Some(msg_id.clone());
        self.send_content(&group, Message::MsgGroup(m), msg_id)
            .await;
    }

    async fn send_file(&mut self, to: String, path: PathBuf) {
        let group = ids::check_group(&to).is_ok();
        let (file_key, wrapped) = if group {
            let Some(gk) = self.group_key(&to) else {
                return;
            };
            (gk.key, None)
        } else {
            let recipient = match self.sendable(&to) {
                Err(()) => return,
                Ok(None) => {
                    return self
                        .defer(&to.clone(), Deferred::Cmd(Command::File { to, path }))
                        .await;
                }
                Ok(Some(k)) => k,
            };
            let Ok(key) = aead::new_key() else { return };
            let Ok(wrapped) = recipient.wrap(key.as_ref()) else {
                return self.emit(Event::error("CRYPTO", "could not wrap the file key"));
            };
            (key.to_vec(), Some(b64::encode(wrapped)))
        };
        if let Err(e) = self
            .stream_file(&to, &path, group, &file_key, wrapped)
            .await
        {
            self.emit(Event::error("FILE", format!("{}: {e}", path.display())));
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
        let start_msg_id = new_msg_id();
        let mut start = FileStart {
            file_id: file_id.clone(),
            name: name.clone(),
            size,
            sha256: sha,
            mode,
            group_id: group.then(|| to.to_owned()),
            user_id: None,
            content_sig: Some(sig),
            msg_id: Some(start_msg_id.clone()),
            extra: Map::new(),
        };
        start
            .extra
            .insert("from".into(), Value::String(self.cfg.user.clone()));
        let start = Message::FileStart(start);
        if !self.fits(to, &start) {
            return Ok(());
        }
        if !self.send(to, &start).await {
            anyhow::bail!("not sent");
        }
        self.flights.start(
            &file_id,
            FileFlight {
                name: name.clone(),
                to: to.to_owned(),
                start_msg_id: start_msg_id.clone(),
                end_msg_id: None,
            },
        );
        let mut file = tokio::fs::File::open(path).await?;
        let mut buf = vec![0u8; content::CHUNK_SIZE];
        let (mut index, mut done) = (0u64, 0u64);
        loop {
            let n = read_full(&mut file, &mut buf).await?;
            if n == 0 {
                break;
            }
            let mut chunk =
                content::seal_chunk(&file_id, index, key, wrapped.as_deref(), &buf[..n])?;
            let chunk_id = new_msg_id();
            chunk.msg_id = Some(chunk_id.clone());
            self.flights.add_frame(&file_id, &chunk_id);
            if !self.send(to, &Message::FileChunk(chunk)).await {
                anyhow::bail!("the connection dropped after {done} of {size} bytes");
            }
            index += 1;
            done += n as u64;
            self.emit(Event::Progress {
                direction: "sending",
                name: name.clone(),
                done,
                total: size,
            });
        }
        if done != size {
            anyhow::bail!("the file changed while it was sent ({done} of {size} bytes)");
        }
        let end_id = new_msg_id();
        self.flights.end(&file_id, &end_id);
        let end = FileEnd {
            file_id,
            user_id: None,
            msg_id: Some(end_id),
            extra: Map::new(),
        };
        // "sent" once the node acknowledges the end (a node that
        // acknowledges nothing: now).
        if self.send(to, &Message::FileEnd(end)).await
            && !self.session.as_ref().is_some_and(|s| s.welcomed())
        {
            self.emit(Event::Sent {
                kind: "file",
                to: to.to_owned(),
                msg_id: start_msg_id,
            });
        }
        Ok(())
    }

    // ---- frames ----

    async fn frame(&mut self, env: Envelope, msg: Message) {
        match msg {
            Message::UserList(l) => {
                let total = l
                    .extra
                    .get("truncated")
                    .and_then(Value::as_bool)
                    .filter(|t| *t)
                    .and_then(|_| l.extra.get("total").and_then(Value::as_u64));
                self.emit(Event::List {
                    users: l.users,
                    total,
                })
            }
            Message::UserDbUser(a) => {
                let key = (a.found && !a.pubkey.is_empty()).then_some(a.pubkey.as_str());
                self.key_answer(&a.user_id, key);
            }
            Message::Error(e) => self.refused(e),
            Message::Ack(a) => self.acked(a.msg_ids),
            Message::Receipt(r) => {
                for msg_id in r.msg_ids {
                    // Only for content of ours: a receipt for anything else
                    // (made up by a server) must not show as "delivered".
                    let ours = self.sent.contains(&msg_id)
                        || self.keyring.outbox_get(&msg_id).ok().flatten().is_some();
                    if !ours {
                        tracing::warn!(msg_id = %crate::client::display::escape(&msg_id), "ignored a receipt for content we did not send");
                        continue;
                    }
                    self.emit(Event::Delivery {
                        msg_id,
                        status: r.status.clone(),
                    });
                }
            }
            Message::UserDeliver(_)
            | Message::GroupKeyShare(_)
            | Message::MsgGroup(_)
            | Message::FileStart(_)
            | Message::FileChunk(_)
            | Message::FileEnd(_) => {
                let msg_id = env
                    .payload
                    .get("msg_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(sender) = claimed_sender(&msg)
                    && let Err(e) = ids::check_user(sender)
                {
                    // Not shown as from anyone: a name like "bob ✓" or
                    // "server_x" must not pass for a user.
                    self.emit(Event::Dropped {
                        from: sender.to_owned(),
                        reason: format!(
                            "{} whose sender is not a valid user id ({e})",
                            msg.type_name()
                        ),
                    });
                    return self.ack_later(msg_id.as_deref());
                }
                if self.content(env, msg).await {
                    self.ack_later(msg_id.as_deref());
                }
            }
            Message::UserWelcome(_) | Message::Heartbeat(_) => {}
            other => tracing::debug!(kind = other.type_name(), "ignored frame"),
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
            Message::FileEnd(e) => {
                self.file_end(e);
                true
            }
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
    fn shown(&mut self, msg_id: &str) {
        if let Err(e) = self.journal.record(msg_id) {
            self.emit(Event::error(
                "KEYRING",
                format!("cannot record a shown message: {e}"),
            ));
        }
        if self.journal.len() >= JOURNAL_BATCH {
            self.store_journal();
        }
    }

    /// Moves the journal's ids into the keyring.
    fn store_journal(&mut self) {
        // Into the keyring first; only then out of the journal.
        if let Err(e) = self.keyring.mark_seen(&self.journal.ids()) {
            return self.emit(Event::error("KEYRING", e.to_string()));
        }
        if let Err(e) = self.journal.stored() {
            self.emit(Event::error("KEYRING", e.to_string()));
        }
    }

    /// Returns the sender's pinned key, or defers the frame until it is known.
    async fn sender_key(
        &mut self,
        sender: &str,
        env: &Envelope,
        msg: &Message,
    ) -> Result<Option<PublicKey>, ()> {
        if let Some(k) = self.pinned(sender) {
            return Ok(Some(k));
        }
        if self.unknown.contains(sender)
            || self.session.is_none()
            || ids::check_user(sender).is_err()
        {
            return Ok(None);
        }
        self.defer(
            sender,
            Deferred::Frame(Box::new((env.clone(), msg.clone()))),
        )
        .await;
        Err(())
    }

    async fn incoming_dm(&mut self, env: Envelope, d: Deliver) -> bool {
        let msg = Message::UserDeliver(d.clone());
        let Ok(sender_key) = self.sender_key(&d.sender, &env, &msg).await else {
            return false;
        };
        let (msg_id, seen, new) = self.first_sight(&d.sender, d.msg_id.as_ref(), &env.payload);
        if !new {
            return true;
        }
        let dm = d.to_private();
        let verified = sender_key.is_some_and(|k| {
            content::dm_signed_bytes(&dm, &d.sender, &self.cfg.user)
                .is_ok_and(|b| content::verify(&k, &b, &dm.content_sig))
        });
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
            _ => self.emit(Event::error(
                "DECRYPT",
                format!("a DM from {} could not be decrypted", d.sender),
            )),
        }
        self.shown(&seen);
        true
    }

    async fn incoming_share(&mut self, env: Envelope, s: GroupKeyShare) -> bool {
        let msg = Message::GroupKeyShare(s.clone());
        let Ok(creator_key) = self.sender_key(&s.creator, &env, &msg).await else {
            return false;
        };
        let (_, seen, new) = self.first_sight(&s.creator, s.msg_id.as_ref(), &env.payload);
        if !new {
            return true;
        }
        let verified = creator_key.is_some_and(|k| {
            content::share_signed_bytes(&s).is_ok_and(|b| content::verify(&k, &b, &s.content_sig))
        });
        // C10: once a group has an owner, only a share the owner made and
        // signed with their directory key is adopted.
        let owner = match self.keyring.group_owner(&s.group_id) {
            Ok(o) => o,
            Err(e) => {
                self.emit(Event::error("KEYRING", e.to_string()));
                return true;
            }
        };
        let refusal = match &owner {
            Some(o) if *o != s.creator => Some("its creator is not the group's owner"),
            Some(_) if !verified => Some("it does not verify with the owner's directory key"),
            _ => None,
        };
        if let (Some(reason), Some(owner)) = (refusal, owner) {
            self.emit(Event::GroupKeyRefused {
                group: s.group_id,
                from: s.creator,
                owner,
                reason: reason.to_owned(),
            });
            self.shown(&seen);
            return true;
        }
        let (key, me, share) = (self.key.clone(), self.cfg.user.clone(), s.clone());
        match blocking(move || content::open_group_share(&key, &me, &share)).await {
            Some(Ok(Some(group_key))) => {
                // Only a share signed by its creator's directory key is
                // adopted: an unverified share could hand us a key someone
                // else knows.
                if verified {
                    let mut members: Vec<String> =
                        s.shares.iter().map(|x| x.member.clone()).collect();
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
                        self.emit(Event::error("KEYRING", e.to_string()));
                        return true;
                    }
                }
                self.emit(Event::GroupKey {
                    group: s.group_id,
                    from: s.creator,
                    verified,
                });
            }
            Some(Ok(None)) => {}
            _ => self.emit(Event::error(
                "DECRYPT",
                format!("the key share for {} could not be opened", s.group_id),
            )),
        }
        self.shown(&seen);
        true
    }

    async fn incoming_group(&mut self, env: Envelope, m: MsgGroup) -> bool {
        let msg = Message::MsgGroup(m.clone());
        let Ok(sender_key) = self.sender_key(&m.from, &env, &msg).await else {
            return false;
        };
        let (msg_id, seen, new) = self.first_sight(&m.from, m.msg_id.as_ref(), &env.payload);
        if !new {
            return true;
        }
        match self.keyring.group_key(&m.group_id).ok().flatten() {
            None => self.emit(Event::error(
                "NO_KEY",
                format!(
                    "a message for {} arrived, but you hold no key for it",
                    m.group_id
                ),
            )),
            Some(gk) => {
                let verified = sender_key.is_some_and(|k| {
                    content::group_signed_bytes(&m)
                        .is_ok_and(|b| content::verify(&k, &b, &m.content_sig))
                });
                match content::open_group(&gk.key, &m) {
                    Ok(plain) => {
                        let text = String::from_utf8_lossy(&plain).into_owned();
                        self.emit(Event::GroupMsg { group: m.group_id, from: m.from, text, verified, msg_id: msg_id.clone() });
                    }
                    Err(_) => self.emit(Event::error(
                        "DECRYPT",
                        format!(
                            "a message from {} in {} does not open with your key for the group (rotated without you?)",
                            m.from, m.group_id
                        ),
                    )),
                }
            }
        }
        self.shown(&seen);
        true
    }

    async fn file_start(&mut self, s: FileStart) {
        let from = s
            .extra
            .get("from")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(sender) = &from
            && self.pinned(sender).is_none()
        {
            self.request_key(sender).await;
        }
        if let Err(e) = self.receiver.start(s, from) {
            self.emit(Event::error("FILE", e.to_string()));
        }
    }

    /// Drops transfers that stalled, freeing their slots.
    fn expire_transfers(&mut self) {
        let dropped = self
            .receiver
            .expire(std::time::Instant::now(), files::TRANSFER_IDLE);
        for (name, from) in dropped {
            self.emit(Event::error(
                "FILE",
                format!(
                    "{name} from {}: no data for {} s; the transfer was dropped and nothing was saved",
                    from.as_deref().unwrap_or("an unnamed sender"),
                    files::TRANSFER_IDLE.as_secs()
                ),
            ));
        }
    }

    async fn file_chunk(&mut self, c: FileChunk) {
        let Some(t) = self.receiver.get_mut(&c.file_id) else {
            return;
        };
        let name = t.name.clone();
        let key = match (t.start.mode, &t.start.group_id, &c.wrapped_key) {
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
        };
        let plain = key.and_then(|k| content::open_chunk(&k, &c).ok());
        let Some(plain) = plain else {
            self.receiver.abort(&c.file_id);
            let e = files::FileError::Decrypt {
                name,
                index: c.index,
            };
            return self.emit(Event::error(
                "FILE",
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
            Err(e) => self.emit(Event::error("FILE", format!("{e}; nothing was saved"))),
        }
    }

    fn file_end(&mut self, e: FileEnd) {
        match self.receiver.finish(&e.file_id) {
            Ok(done) => {
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
            }
            Err(files::FileError::Unknown(_)) => {}
            Err(err) => self.emit(Event::error("FILE", format!("{err}; nothing was saved"))),
        }
    }
}

/// Who content says it is from, where it says so.
fn claimed_sender(msg: &Message) -> Option<&str> {
    match msg {
        Message::UserDeliver(d) => Some(&d.sender),
        Message::GroupKeyShare(s) => Some(&s.creator),
        Message::MsgGroup(m) => Some(&m.from),
        Message::FileStart(s) => s.extra.get("from").and_then(Value::as_str),
        _ => None,
    }
}

async fn recv(session: &mut Option<Session>) -> Result<Option<(Envelope, Message)>, SessionError> {
    match session.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn backoff(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(10).saturating_sub(1);
    (RECONNECT_MIN * factor).min(RECONNECT_MAX)
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

/// How content is remembered as shown: by sender and `msg_id` together.
fn seen_key(sender: &str, msg_id: &str) -> String {
    format!("{sender} {msg_id}")
}
