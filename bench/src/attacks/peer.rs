//! The attack benchmark's user connections: a reader beside a writer, the
//! reader acknowledging content and tallying what the nodes answered.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use socp::client::Session;
use socp::content;
use socp::crypto::PrivateKey;
use socp::wire::messages::{Ack, Kind, Message, MsgPrivate};
use socp::wire::{Envelope, ids};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What the nodes answered one attacker (or one attacker's victims saw).
#[derive(Default)]
pub(super) struct Tally {
    sent: AtomicU64,
    answers: Mutex<BTreeMap<String, u64>>,
    /// The first `detail` of each error code.
    details: Mutex<BTreeMap<String, String>>,
    /// Ids acknowledged, and ids refused by an ERROR naming them.
    acked: Mutex<HashSet<String>>,
    refused: Mutex<HashSet<String>>,
}

impl Tally {
    pub(super) fn count(&self, what: &str, n: u64) {
        if let Ok(mut a) = self.answers.lock() {
            *a.entry(what.to_owned()).or_default() += n;
        }
    }

    pub(super) fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> Value {
        let mut answers = self.answers.lock().map(|a| a.clone()).unwrap_or_default();
        let details = self.details.lock().map(|a| a.clone()).unwrap_or_default();
        let both = match (self.acked.lock(), self.refused.lock()) {
            (Ok(a), Ok(r)) => r.iter().filter(|id| a.contains(*id)).count() as u64,
            _ => 0,
        };
        if both > 0 {
            answers.insert("both ACK and ERROR for one msg_id".into(), both);
        }
        json!({"sent": self.sent.load(Ordering::Relaxed), "answers": answers, "error_details": details})
    }
}

/// A hook a connection's reader calls for each frame before tallying it.
pub(super) type Hook = Box<dyn FnMut(&Envelope, &Message) + Send>;

/// An authenticated user connection whose reader runs beside its writer:
/// the reader acknowledges content and tallies ACKs and ERRORs by code.
pub(super) struct Peer {
    user: String,
    out: mpsc::Sender<Envelope>,
    pub(super) closed: Arc<AtomicBool>,
}

impl Peer {
    pub(super) async fn open(
        url: &str,
        user: &str,
        key: &Arc<PrivateKey>,
        tally: Arc<Tally>,
    ) -> Result<Peer> {
        Self::open_with(url, user, key, tally, Box::new(|_, _| {})).await
    }

    pub(super) async fn open_with(
        url: &str,
        user: &str,
        key: &Arc<PrivateKey>,
        tally: Arc<Tally>,
        mut hook: Hook,
    ) -> Result<Peer> {
        let session = Session::connect_retrying(url, user, key.clone(), Duration::from_secs(30))
            .await
            .with_context(|| format!("{user} connecting to {url}"))?;
        let (ws, mac, _) = session.into_parts();
        let (mut seal, mut open) = match mac {
            Some(m) => {
                let (s, o) = m.split();
                (Some(s), Some(o))
            }
            None => (None, None),
        };
        let key = key.clone();
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::channel::<Envelope>(1024);
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(mut env) = rx.recv().await {
                let text = match seal.as_mut() {
                    Some(s) => match s.seal_to_json(&mut env) {
                        Ok(t) => t,
                        Err(_) => return,
                    },
                    None => {
                        let Ok(bytes) = env.signed_bytes() else {
                            return;
                        };
                        let Ok(sig) = key.sign_b64(&bytes) else {
                            return;
                        };
                        env.sig = sig;
                        env.to_json()
                    }
                };
                if sink.send(WsMessage::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let acks = out.clone();
        let (me, gone) = (user.to_owned(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let WsMessage::Text(text) = frame else {
                    continue;
                };
                let Ok(env) = Envelope::parse(text.as_str()) else {
                    continue;
                };
                if let Some(o) = open.as_mut()
                    && o.open(&env).is_err()
                {
                    tally.count("bad MAC from node", 1);
                    break;
                }
                let Ok(msg) = Message::from_envelope(&env) else {
                    continue;
                };
                hook(&env, &msg);
                match &msg {
                    Message::Ack(a) => {
                        tally.count(Kind::Ack.name(), a.msg_ids.len() as u64);
                        if let Ok(mut acked) = tally.acked.lock() {
                            acked.extend(a.msg_ids.iter().cloned());
                        }
                    }
                    Message::Error(e) => {
                        tally.count(&e.code, 1);
                        if let Ok(mut d) = tally.details.lock() {
                            d.entry(e.code.clone()).or_insert_with(|| e.detail.clone());
                        }
                        if let (Some(id), Ok(mut r)) = (
                            e.extra.get("msg_id").and_then(Value::as_str),
                            tally.refused.lock(),
                        ) {
                            r.insert(id.to_owned());
                        }
                    }
                    Message::Receipt(_) | Message::UserList(_) | Message::Heartbeat(_) => {}
                    _ => {
                        if let Some(id) = env.payload.get("msg_id").and_then(Value::as_str) {
                            let ack = Message::Ack(Ack {
                                msg_ids: vec![id.to_owned()],
                                extra: Map::new(),
                            });
                            let _ = acks.try_send(ack.into_envelope(&me, ids::TO_SERVER));
                        }
                    }
                }
            }
            gone.store(true, Ordering::Relaxed);
        });
        Ok(Peer {
            user: user.to_owned(),
            out,
            closed,
        })
    }

    /// Queues `msg` to `to`; false once the connection is gone.
    pub(super) async fn send(&self, to: &str, msg: &Message) -> bool {
        self.out
            .send(msg.into_envelope(&self.user, to))
            .await
            .is_ok()
            && !self.closed.load(Ordering::Relaxed)
    }
}

/// `dm` again under another msg_id (nodes never open content).
pub(super) fn with_id(dm: &MsgPrivate, id: String) -> Message {
    let mut dm = dm.clone();
    dm.msg_id = Some(id);
    Message::MsgPrivate(dm)
}

/// A DM from `from` to `to` whose ciphertext is `pad` bytes of padding.
pub(super) fn padded(
    key: &PrivateKey,
    from: &str,
    to: &str,
    plain: &[u8],
    pad: usize,
) -> Result<MsgPrivate> {
    let mut dm = content::seal_dm(key, from, to, key.public(), plain, socp::wire::now_ms())?;
    if pad > 0 {
        dm.ciphertext = "A".repeat(pad);
    }
    Ok(dm)
}
