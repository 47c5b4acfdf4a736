//! `Node::serve_connected`: a stream that is already connected (here an
//! in-memory duplex) is served as if accepted from a given address, through
//! the same WebSocket upgrade, signed hello and welcome, and counted in the
//! same per-address cap as the listener's connections.

mod common;

use std::net::SocketAddr;

use common::cluster::{TestNode, WAIT, user_key};
use common::raw::{hello_payload, signed};
use futures_util::{SinkExt, StreamExt};
use socp::wire::Envelope;
use socp::wire::ids::TO_SERVER;
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Serves a new in-memory stream from `peer` and says `user`'s hello on it;
/// returns the first frame the node answers with.
async fn hello_over_memory(
    node: &TestNode,
    peer: &str,
    user: &str,
) -> (WebSocketStream<DuplexStream>, Envelope) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = peer.parse().unwrap();
    node.node().serve_connected(theirs, peer);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(node.url(), ours))
        .await
        .expect("handshake in time")
        .expect("WebSocket handshake");
    let key = user_key(user);
    let hello = signed(
        "USER_HELLO",
        user,
        TO_SERVER,
        hello_payload(user, key.public().to_b64()),
        &key,
    );
    // A refused connection may be closed before the hello is written.
    let _ = ws.send(WsMessage::text(hello.to_json())).await;
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => return Envelope::parse(text.as_str()).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("closed without an answer: {other:?}"),
            }
        }
    })
    .await
    .expect("an answer in time");
    (ws, first)
}

#[tokio::test]
async fn a_connected_stream_is_served_like_an_accepted_socket() {
    let node = TestNode::master_with(|c| c.limits.max_conns_per_ip = 1).await;
    let (_alice, first) = hello_over_memory(&node, "127.0.0.9:4000", "alice").await;
    assert_eq!(first.kind, "USER_WELCOME", "{first:?}");
    // The address holds its one connection: the next one from it is told so.
    let (_bob, refused) = hello_over_memory(&node, "127.0.0.9:4001", "bob").await;
    assert_eq!(refused.kind, "ERROR", "{refused:?}");
    assert_eq!(refused.payload["code"], "RATE_LIMITED", "{refused:?}");
    // Another address is not affected.
    let (_bob, welcomed) = hello_over_memory(&node, "127.0.0.10:4001", "bob").await;
    assert_eq!(welcomed.kind, "USER_WELCOME", "{welcomed:?}");
    let status = node.node().status().await;
    assert_eq!(status.online.len(), 2, "{status:?}");
}
