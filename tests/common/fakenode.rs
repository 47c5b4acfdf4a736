//! A stand-in `socp` node for client tests: it welcomes one client at a
//! time (with a `mac-v1` session unless told not to), answers list and key
//! lookups from the fixture keys, hands every other frame to the test and
//! sends what the test scripts (acknowledgements, refusals naming a
//! `msg_id`, content), so the client's side of a rule can be tested before
//! and whatever the real node does.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use socp::crypto::PublicKey;
use socp::crypto::session::{self, CAP_MAC_V1, MacSession};
use socp::wire::Envelope;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as Ws;

use super::cluster::{WAIT, user_key};

pub const FAKE_ID: &str = "server_0f0e0d0c-0b0a-4908-8706-050403020100";

pub struct FakeNode {
    pub url: String,
    /// Frames clients sent (other than lookups and list requests).
    frames: mpsc::UnboundedReceiver<Envelope>,
    /// Frames to send to the connected client.
    out: mpsc::UnboundedSender<Envelope>,
    pub seen: Vec<Envelope>,
    /// While set, key lookups are handed to the test instead of answered.
    hold_lookups: Arc<AtomicBool>,
    /// Closes the connection of the client connected now.
    hang_up: Arc<Notify>,
}

impl FakeNode {
    /// Listens on port 0; `mac`: offer a session in the welcome.
    pub async fn start(mac: bool) -> FakeNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::unbounded_channel::<Envelope>();
        let hold_lookups = Arc::new(AtomicBool::new(false));
        let hang_up = Arc::new(Notify::new());
        let (hold, hang) = (hold_lookups.clone(), hang_up.clone());
        tokio::spawn(async move {
            let mut out_rx = out_rx;
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    continue;
                };
                let link = Link {
                    frames: &frames_tx,
                    out: &mut out_rx,
                    hold_lookups: &hold,
                    hang_up: &hang,
                };
                serve(ws, mac, link).await;
            }
        });
        FakeNode {
            url,
            frames,
            out,
            seen: Vec::new(),
            hold_lookups,
            hang_up,
        }
    }

    /// `true`: key lookups reach the test (`expect("USER_DB_GET_USER")`)
    /// and are never answered; `false`: answered from the fixture keys.
    pub fn hold_lookups(&self, hold: bool) {
        self.hold_lookups.store(hold, Ordering::SeqCst);
    }

    /// Drops the connected client's connection (it may reconnect).
    pub fn hang_up(&self) {
        self.hang_up.notify_one();
    }

    /// Sends `kind` with `payload` to the client.
    pub fn send(&self, kind: &str, payload: Value) {
        let Value::Object(map) = payload else {
            panic!("payload must be an object")
        };
        let _ = self.out.send(Envelope::new(kind, FAKE_ID, "alice", map));
    }

    /// The next frame of type `kind` a client sent.
    pub async fn expect(&mut self, kind: &str) -> Envelope {
        if let Some(i) = self.seen.iter().position(|e| e.kind == kind) {
            return self.seen.remove(i);
        }
        let found = tokio::time::timeout(WAIT, async {
            while let Some(env) = self.frames.recv().await {
                if env.kind == kind {
                    return Some(env);
                }
                self.seen.push(env);
            }
            None
        })
        .await;
        found
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no {kind} from the client; saw {:?}", self.seen))
    }

    /// Frames the client sent within `quiet`.
    pub async fn drain(&mut self, quiet: std::time::Duration) -> Vec<Envelope> {
        let mut got = std::mem::take(&mut self.seen);
        while let Ok(Some(env)) = tokio::time::timeout(quiet, self.frames.recv()).await {
            got.push(env);
        }
        got
    }
}

fn payload(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What one connection shares with the test.
struct Link<'a> {
    frames: &'a mpsc::UnboundedSender<Envelope>,
    out: &'a mut mpsc::UnboundedReceiver<Envelope>,
    hold_lookups: &'a AtomicBool,
    hang_up: &'a Notify,
}

async fn serve<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, mac: bool, link: Link<'_>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The hello.
    let Some(Ok(Ws::Text(t))) = ws.next().await else {
        return;
    };
    let hello = Envelope::parse(t.as_str()).unwrap();
    let user = hello.from.clone();
    let key = PublicKey::from_b64(hello.payload["pubkey"].as_str().unwrap()).unwrap();
    let mut welcome = json!({"user_id": user, "server_id": FAKE_ID});
    let mut mac_session = None;
    if mac {
        let (secret, wrapped) = session::offer(&key).unwrap();
        welcome["session"] = json!({"cap": CAP_MAC_V1, "wrapped": wrapped});
        mac_session = Some(MacSession::new(&secret, &user, FAKE_ID, false));
    }
    let welcome = Envelope::new("USER_WELCOME", FAKE_ID, &user, payload(welcome));
    if ws.send(Ws::text(welcome.to_json())).await.is_err() {
        return;
    }
    let mut send = |env: &mut Envelope| -> String {
        env.to = user.clone();
        match mac_session.as_mut() {
            Some(m) => m.seal_to_json(env).unwrap(),
            None => env.to_json(),
        }
    };
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(Ws::Text(t))) = msg else { return };
                let Ok(env) = Envelope::parse(t.as_str()) else { continue };
                let reply = match env.kind.as_str() {
                    "USER_LIST_REQ" => Some(("USER_LIST", json!({"users": [env.from.clone()]}))),
                    "USER_DB_GET_USER" if link.hold_lookups.load(Ordering::SeqCst) => {
                        let _ = link.frames.send(env);
                        None
                    }
                    "USER_DB_GET_USER" => {
                        let who = env.payload["user_id"].as_str().unwrap_or_default().to_owned();
                        let known = ["alice", "bob", "carol"].contains(&who.as_str());
                        let pubkey = if known { user_key(&who).public().to_b64().to_owned() } else { String::new() };
                        Some(("USER_DB_USER", json!({"user_id": who, "found": known, "pubkey": pubkey})))
                    }
                    _ => {
                        let _ = link.frames.send(env);
                        None
                    }
                };
                if let Some((kind, p)) = reply {
                    let mut e = Envelope::new(kind, FAKE_ID, "", payload(p));
                    if ws.send(Ws::text(send(&mut e))).await.is_err() { return; }
                }
            }
            () = link.hang_up.notified() => return,
            env = link.out.recv() => {
                let Some(mut env) = env else { return };
                if ws.send(Ws::text(send(&mut env))).await.is_err() { return; }
            }
        }
    }
}
