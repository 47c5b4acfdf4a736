//! A raw WebSocket peer for attack tests: sends exactly the frames a test
//! builds, however wrong, and reads what comes back.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use socp::crypto::PrivateKey;
use socp::wire::Envelope;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::cluster::WAIT;

pub struct Raw {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// An envelope whose payload is signed with `key`.
pub fn signed(kind: &str, from: &str, to: &str, payload: Value, key: &PrivateKey) -> Envelope {
    let Value::Object(map) = payload else {
        panic!("payload must be an object")
    };
    let mut env = Envelope::new(kind, from, to, map);
    env.sig = key.sign_b64(&env.signed_bytes().unwrap()).unwrap();
    env
}

/// An unsigned envelope.
pub fn unsigned(kind: &str, from: &str, to: &str, payload: Value) -> Envelope {
    let Value::Object(map) = payload else {
        panic!("payload must be an object")
    };
    Envelope::new(kind, from, to, map)
}

/// A socp-style hello payload for `user` presenting `pubkey`.
pub fn hello_payload(user: &str, pubkey: &str) -> Value {
    json!({"client": "test", "pubkey": pubkey, "enc_pubkey": pubkey, "ts": socp::wire::now_ms(), "user_id": user})
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Raw { ws }
    }

    pub async fn send(&mut self, env: &Envelope) {
        self.send_text(env.to_json()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        let _ = self.ws.send(WsMessage::text(text)).await;
    }

    /// The next envelope, or None if the connection closed (or `WAIT` passed).
    pub async fn recv(&mut self) -> Option<Envelope> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<Envelope> {
        let next = tokio::time::timeout(wait, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => return Envelope::parse(t.as_str()).ok(),
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        next.unwrap_or(None)
    }

    /// Reads until an `ERROR` arrives and returns its code.
    pub async fn expect_error(&mut self) -> String {
        loop {
            match self.recv().await {
                Some(env) if env.kind == "ERROR" => {
                    return env.payload["code"].as_str().unwrap_or_default().to_owned();
                }
                Some(_) => continue,
                None => panic!("closed without an ERROR"),
            }
        }
    }

    /// Reads until `kind` arrives.
    pub async fn expect_kind(&mut self, kind: &str) -> Envelope {
        loop {
            match self.recv().await {
                Some(env) if env.kind == kind => return env,
                Some(_) => continue,
                None => panic!("closed while waiting for {kind}"),
            }
        }
    }

    /// On a link to the master (`link_as`): waits until the master has
    /// handled every frame sent on it so far. A link's frames reach the
    /// master's router in order, and the router refuses a registration
    /// without a proof (`NOT_ALLOWED`, to the sending link) after them. The
    /// master must admit no legacy clients.
    pub async fn barrier(&mut self, server_id: &str, key: &PrivateKey) {
        let user = format!("barrier{}", uuid::Uuid::new_v4().simple());
        let user = &user[..20];
        self.send(&signed(
            "DB_REGISTER_USER",
            server_id,
            socp::wire::ids::TO_SERVER,
            json!({"user_id": user, "pubkey": key.public().to_b64()}),
            key,
        ))
        .await;
        loop {
            match self.recv().await {
                Some(env) if env.kind == "ERROR" && env.payload["refused_user"] == user => {
                    assert_eq!(env.payload["code"], "NOT_ALLOWED", "{:?}", env.payload);
                    return;
                }
                Some(_) => continue,
                None => panic!("the link closed or went quiet before the barrier's answer"),
            }
        }
    }

    /// True if the node closes the connection (skipping frames) within `WAIT`.
    pub async fn closed(&mut self) -> bool {
        let done = tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        done.is_ok()
    }
}

/// A payload map from `json!`.
pub fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Opens a link to `url` as a local server with the id `id` and `key`
/// (a fresh or rogue server identity); returns it after sending the hello.
pub async fn link_as(url: &str, id: &str, key: &PrivateKey) -> Raw {
    let mut raw = Raw::connect(url).await;
    let pk = key.public().to_b64();
    raw.send(&signed(
        "PEER_HELLO_LINK",
        id,
        socp::wire::ids::TO_SERVER,
        json!({"host": "127.0.0.1", "port": 1, "pubkey": pk, "role": "local"}),
        key,
    ))
    .await;
    raw
}
