//! The load generator of `socp-bench`: sender sessions that send DMs as
//! fast as their window allows (or at a set rate) and receiver sessions that
//! count deliveries, record latencies and acknowledge in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use socp::client::Session;
use socp::client::session::Ws;
use socp::crypto::PrivateKey;
use socp::crypto::session::MacSession;
use socp::wire::messages::{Ack, Kind, Message};
use socp::wire::{Envelope, ids};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::WINDOW;

/// What the receivers observed.
#[derive(Default)]
pub(crate) struct Observed {
    pub(crate) delivered: AtomicU64,
    pub(crate) latencies_us: Mutex<Vec<u64>>,
    sent_at: Mutex<HashMap<u64, Instant>>,
}

/// One side of a benchmark connection.
pub(crate) struct Conn {
    pub(crate) ws: Ws,
    pub(crate) mac: Option<MacSession>,
    pub(crate) user: String,
    key: Arc<PrivateKey>,
}

impl Conn {
    pub(crate) async fn open(url: &str, user: &str, key: Arc<PrivateKey>) -> Result<Conn> {
        let session = Session::connect_retrying(url, user, key.clone(), Duration::from_secs(30))
            .await
            .with_context(|| format!("{user} connecting to {url}"))?;
        let (ws, mac, _) = session.into_parts();
        Ok(Conn {
            ws,
            mac,
            user: user.to_owned(),
            key,
        })
    }

    /// Authenticates a frame: MAC on a session, else an RSA signature.
    pub(crate) async fn seal(&mut self, mut env: Envelope) -> Result<String> {
        match self.mac.as_mut() {
            Some(mac) => return Ok(mac.seal_to_json(&mut env)?),
            None => {
                let bytes = env.signed_bytes()?;
                let key = self.key.clone();
                env.sig = tokio::task::spawn_blocking(move || key.sign_b64(&bytes)).await??;
            }
        }
        Ok(env.to_json())
    }

    /// Reads and authenticates the next frame.
    pub(crate) async fn next(&mut self) -> Option<Envelope> {
        loop {
            match self.ws.next().await? {
                Ok(WsMessage::Text(t)) => {
                    let env = Envelope::parse(t.as_str()).ok()?;
                    if let Some(mac) = self.mac.as_mut() {
                        mac.open(&env).ok()?;
                    }
                    return Some(env);
                }
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// What one sender sends.
pub(crate) struct SenderPlan {
    pub(crate) to: String,
    pub(crate) dm: Map<String, Value>,
    /// Frames signed before the clock started (runs without link sessions).
    pub(crate) presigned: Vec<String>,
    /// The first message number (numbers are unique across senders).
    pub(crate) base: u64,
    /// Messages per second, or as fast as the window allows.
    pub(crate) rate: Option<f64>,
}

/// A sender: sends DMs to `to` as fast as its window allows, or at `rate`.
pub(crate) async fn sender(
    mut c: Conn,
    plan: SenderPlan,
    stop: Arc<AtomicBool>,
    seen: Arc<Observed>,
) -> u64 {
    let SenderPlan {
        to,
        dm,
        presigned,
        base,
        rate,
    } = plan;
    let (mut in_flight, mut sent, mut credit) = (0usize, 0u64, 0.0f64);
    let mut presigned = presigned.into_iter();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut last = Instant::now();
    loop {
        let can_send = in_flight < WINDOW && !stop.load(Ordering::Relaxed);
        tokio::select! {
            biased;
            frame = c.next() => match frame {
                Some(env) if env.kind == Kind::Ack.name() => {
                    let n = env.payload.get("msg_ids").and_then(Value::as_array).map_or(0, Vec::len);
                    in_flight = in_flight.saturating_sub(n);
                }
                Some(_) => {}
                None => return sent,
            },
            _ = tick.tick(), if can_send => {
                let burst = match rate {
                    Some(r) => {
                        credit += r * last.elapsed().as_secs_f64();
                        last = Instant::now();
                        let n = credit.floor();
                        credit -= n;
                        n as usize
                    }
                    None => 256,
                }
                .min(WINDOW - in_flight);
                for _ in 0..burst {
                    let id = base + sent;
                    let text = if c.mac.is_some() {
                        let mut payload = dm.clone();
                        payload.insert("msg_id".into(), Value::String(format!("b{id}")));
                        match c.seal(Envelope::new(Kind::MsgPrivate.name(), &c.user.clone(), &to, payload)).await {
                            Ok(t) => t,
                            Err(_) => return sent,
                        }
                    } else {
                        match presigned.next() {
                            Some(t) => t,
                            None => break,
                        }
                    };
                    if rate.is_some()
                        && let Ok(mut m) = seen.sent_at.lock()
                    {
                        m.insert(id, Instant::now());
                    }
                    if c.ws.feed(WsMessage::text(text)).await.is_err() {
                        return sent;
                    }
                    sent += 1;
                    in_flight += 1;
                }
                if c.ws.flush().await.is_err() {
                    return sent;
                }
            },
        }
    }
}

/// A receiver: counts deliveries, records latencies, acknowledges in batches.
pub(crate) async fn receiver(mut c: Conn, seen: Arc<Observed>) {
    let mut to_ack: Vec<String> = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            frame = c.next() => {
                let Some(env) = frame else { return };
                if env.kind != Kind::UserDeliver.name() {
                    continue;
                }
                seen.delivered.fetch_add(1, Ordering::Relaxed);
                let Some(id) = env.payload.get("msg_id").and_then(Value::as_str).map(str::to_owned) else { continue };
                if let Some(n) = id.strip_prefix('b').and_then(|n| n.parse::<u64>().ok())
                    && let Ok(mut m) = seen.sent_at.lock()
                    && let Some(at) = m.remove(&n)
                    && let Ok(mut l) = seen.latencies_us.lock()
                {
                    l.push(at.elapsed().as_micros() as u64);
                }
                to_ack.push(id);
                if to_ack.len() < 128 {
                    continue;
                }
            }
            _ = flush.tick() => if to_ack.is_empty() { continue },
        }
        let ack = Message::Ack(Ack {
            msg_ids: std::mem::take(&mut to_ack),
            extra: Map::new(),
        })
        .into_envelope(&c.user.clone(), ids::TO_SERVER);
        let Ok(text) = c.seal(ack).await else { return };
        if c.ws.send(WsMessage::text(text)).await.is_err() {
            return;
        }
    }
}
