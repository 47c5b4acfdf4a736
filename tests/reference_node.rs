//! Our nodes accept and handle every frame a node received in the captured
//! reference session (`vectors/reference-run/frames.jsonl`): the reference
//! local's link frames and Alice's frames replayed into our master, and the
//! reference master's link frames and Bob's frames replayed into our local.

mod common;

use std::time::Duration;

use common::cluster::{WAIT, cached_key};
use common::raw::Raw;
use common::vectors_dir;
use futures_util::{SinkExt, StreamExt};
use socp::node::{Node, NodeConfig};
use socp::wire::Envelope;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MASTER_ID: &str = "master_server_";
const LOCAL_ID: &str = "server_6b404614-c9e3-44d2-b66d-50e5eb691287";

struct Frame {
    dir: String,
    port: String,
    env: Envelope,
}

fn frames() -> Vec<Frame> {
    let text = std::fs::read_to_string(vectors_dir().join("reference-run/frames.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Frame {
                dir: v["dir"].as_str().unwrap().into(),
                port: v["port"].as_str().unwrap().into(),
                env: Envelope::parse(v["frame"].as_str().unwrap()).unwrap(),
            }
        })
        .collect()
}

fn reference_master_id(frames: &[Frame]) -> String {
    frames
        .iter()
        .find(|f| f.env.from.starts_with(MASTER_ID))
        .unwrap()
        .env
        .from
        .clone()
}

/// Starts one of our nodes under a reference server's id (so the captured
/// `to` fields name it), with a key of our own.
async fn start_as(
    id: &str,
    master: bool,
    master_url: Option<String>,
    seed_users: &[(&str, &str)],
) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let role = if master { "master" } else { "local" };
    std::fs::copy(cached_key("server-3"), keys.join(format!("{role}.pem"))).unwrap();
    std::fs::write(keys.join(format!("{role}.id")), id).unwrap();
    let db = dir.path().join("node.sqlite");
    if !seed_users.is_empty() {
        let pool = socp::store::open(&db, socp::store::Schema::Node).unwrap();
        let conn = pool.get().unwrap();
        for (user, key) in seed_users {
            conn.execute(
                "INSERT INTO users (user_id, pubkey, legacy, first_seen_ms, last_seen_ms) VALUES (?1, ?2, 1, 0, 0)",
                [user, key],
            )
            .unwrap();
        }
    }
    let config = NodeConfig {
        master,
        listen: "127.0.0.1:0".parse().unwrap(),
        db,
        keys,
        master_url,
        peers: Vec::new(),
        advertise_url: None,
        allow_legacy_clients: true,
        mailbox: Default::default(),
        mac: true,
        limits: Default::default(),
        metrics: None,
        tls: None,
        ca: None,
        admission: Default::default(),
        web: true,
    };
    let node = Node::start(config).await.unwrap();
    (dir, node)
}

fn pick<'a>(
    frames: &'a [Frame],
    dir: &str,
    port: &str,
    kind: &str,
    from: &str,
) -> Vec<&'a Envelope> {
    frames
        .iter()
        .filter(|f| {
            f.dir == dir && f.port == port && f.env.kind == kind && f.env.from.starts_with(from)
        })
        .map(|f| &f.env)
        .collect()
}

async fn expect_on(raw: &mut Raw, kind: &str, pred: impl Fn(&Envelope) -> bool) -> Envelope {
    loop {
        match raw.recv().await {
            Some(env) if env.kind == kind && pred(&env) => return env,
            Some(_) => continue,
            None => panic!("closed while waiting for {kind}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_master_handles_the_reference_local_and_a_reference_client() {
    let frames = frames();
    let ref_master = reference_master_id(&frames);
    let (_dir, master) = start_as(&ref_master, true, None, &[]).await;
    let url = format!("ws://{}", master.addr);
    let to_master: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.dir == "to-server" && f.port == "9201")
        .collect();

    // The reference local links, registers Bob and advertises him.
    let mut link = Raw::connect(&url).await;
    let local_frames: Vec<&Envelope> = to_master
        .iter()
        .filter(|f| f.env.from == LOCAL_ID)
        .map(|f| &f.env)
        .collect();
    link.send(local_frames[0]).await;
    let answer = expect_on(&mut link, "PEER_HELLO_LINK", |_| true).await;
    assert_eq!(answer.to, LOCAL_ID);
    for env in local_frames
        .iter()
        .filter(|e| e.kind == "DB_REGISTER_USER" || e.kind == "USER_ADVERTISE")
    {
        link.send(env).await;
    }
    assert!(
        common::cluster::wait_until(|| async {
            master.status().await.online.contains(&"Bob".into())
        })
        .await
    );

    // A replay of the same link hello is refused while the link stands.
    let mut replay = Raw::connect(&url).await;
    replay.send(local_frames[0]).await;
    assert_eq!(replay.expect_error().await, "NOT_ALLOWED");

    // Alice, a reference client (unsigned frames), says hello and is served.
    let alice_frames: Vec<&Envelope> = to_master
        .iter()
        .filter(|f| f.env.from == "Alice")
        .map(|f| &f.env)
        .collect();
    let mut alice = Raw::connect(&url).await;
    alice.send(alice_frames[0]).await;
    expect_on(&mut alice, "USER_WELCOME", |_| true).await;
    let mut sent_dm = false;
    for env in &alice_frames[1..] {
        alice.send(env).await;
        match env.kind.as_str() {
            "USER_LIST_REQ" => {
                let list = expect_on(&mut alice, "USER_LIST", |_| true).await;
                assert_eq!(list.payload["users"], serde_json::json!(["Alice", "Bob"]));
            }
            "USER_DB_GET_USER" => {
                let who = env.payload["user_id"].as_str().unwrap().to_owned();
                let answer = expect_on(&mut alice, "USER_DB_USER", |e| {
                    e.payload["user_id"] == who.as_str()
                })
                .await;
                assert_eq!(answer.payload["found"], serde_json::json!(who == "Bob"));
            }
            "MSG_PRIVATE" => {
                let d = expect_on(&mut link, "PEER_DELIVER", |_| true).await;
                assert_eq!(d.to, LOCAL_ID);
                assert_eq!(d.payload["user_id"], "Bob");
                assert_eq!(d.payload["sender"], "Alice");
                assert_eq!(d.payload["ciphertext"], env.payload["ciphertext"]);
                sent_dm = true;
            }
            "GROUP_KEY_SHARE" | "MSG_GROUP" => {
                let kind = env.kind.clone();
                let got = expect_on(&mut link, &kind, |_| true).await;
                assert_eq!(got.payload["content_sig"], env.payload["content_sig"]);
            }
            "FILE_START" | "FILE_CHUNK" | "FILE_END" => {
                let kind = env.kind.clone();
                let got = expect_on(&mut link, &kind, |_| true).await;
                assert_eq!(got.payload["user_id"], "Bob");
                assert_eq!(got.payload["file_id"], env.payload["file_id"]);
            }
            other => panic!("unexpected frame {other}"),
        }
    }
    assert!(sent_dm);

    // The local's remaining frames: Bob's DM and group message reach Alice;
    // its directory lookup is answered.
    for env in local_frames.iter().filter(|e| {
        matches!(
            e.kind.as_str(),
            "PEER_DELIVER" | "MSG_GROUP" | "DB_GET_USER"
        )
    }) {
        link.send(env).await;
        match env.kind.as_str() {
            "PEER_DELIVER" => {
                let d = expect_on(&mut alice, "USER_DELIVER", |_| true).await;
                assert_eq!(d.payload["sender"], "Bob");
            }
            "MSG_GROUP" => {
                let m = expect_on(&mut alice, "MSG_GROUP", |_| true).await;
                assert_eq!(m.payload["from"], "Bob");
            }
            _ => {
                let a = expect_on(&mut link, "DB_USER", |_| true).await;
                assert_eq!(a.payload["req_id"], env.payload["req_id"]);
                assert_eq!(a.payload["found"], true);
            }
        }
    }
    master.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_handles_the_reference_master_and_a_reference_client() {
    let frames = frames();
    let ref_master = reference_master_id(&frames);
    let master_frames: Vec<Envelope> = frames
        .iter()
        .filter(|f| f.dir == "from-server" && f.port == "9201" && f.env.to != "Alice")
        .map(|f| f.env.clone())
        .collect();
    let bob_key = pick(&frames, "to-server", "9202", "USER_HELLO", "Bob")[0].payload["pubkey"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice_key = pick(&frames, "to-server", "9201", "USER_HELLO", "Alice")[0].payload["pubkey"]
        .as_str()
        .unwrap()
        .to_owned();

    // A stand-in for the reference master that replays its captured frames.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let master_url = format!("ws://{}", listener.local_addr().unwrap());
    let (_dir, local) = start_as(
        LOCAL_ID,
        false,
        Some(master_url),
        &[("Bob", &bob_key), ("Alice", &alice_key)],
    )
    .await;
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("PEER_HELLO_LINK"));
    ws.send(WsMessage::text(master_frames[0].to_json()))
        .await
        .unwrap();
    assert!(
        common::cluster::wait_until(|| async {
            local.status().await.linked == vec![ref_master.clone()]
        })
        .await
    );

    // Bob, a reference client, attaches to our local.
    let url = format!("ws://{}", local.addr);
    let bob_frames: Vec<Envelope> = frames
        .iter()
        .filter(|f| f.dir == "to-server" && f.port == "9202")
        .map(|f| f.env.clone())
        .collect();
    let mut bob = Raw::connect(&url).await;
    bob.send(&bob_frames[0]).await;
    expect_on(&mut bob, "USER_WELCOME", |_| true).await;

    // The master's frames: Alice's presence, her DM, the group share and
    // message, and both files reach Bob.
    for env in &master_frames[1..] {
        ws.send(WsMessage::text(env.to_json())).await.unwrap();
        let want = match env.kind.as_str() {
            "PEER_DELIVER" => Some("USER_DELIVER"),
            "GROUP_KEY_SHARE" | "MSG_GROUP" | "FILE_START" | "FILE_CHUNK" | "FILE_END" => {
                Some(env.kind.as_str())
            }
            _ => None,
        };
        if let Some(kind) = want {
            let got = expect_on(&mut bob, kind, |_| true).await;
            assert_eq!(got.to, "Bob");
            if let Some(sig) = env.payload.get("content_sig") {
                assert_eq!(&got.payload["content_sig"], sig);
            }
        }
    }
    assert!(
        common::cluster::wait_until(|| async {
            local.status().await.online == vec!["Alice".to_owned(), "Bob".to_owned()]
        })
        .await
    );

    // Bob's own frames are served, and his content goes to the master.
    let mut to_master = Vec::new();
    for env in &bob_frames[1..] {
        bob.send(env).await;
        match env.kind.as_str() {
            "USER_DB_GET_USER" => {
                let a = expect_on(&mut bob, "USER_DB_USER", |_| true).await;
                assert_eq!(a.payload["pubkey"], alice_key.as_str());
            }
            "USER_LIST_REQ" => {
                let l = expect_on(&mut bob, "USER_LIST", |_| true).await;
                assert_eq!(l.payload["users"], serde_json::json!(["Alice", "Bob"]));
            }
            _ => to_master.push(env.kind.clone()),
        }
    }
    let mut forwarded = Vec::new();
    while forwarded.len() < to_master.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let env = Envelope::parse(msg.to_text().unwrap()).unwrap();
        if matches!(env.kind.as_str(), "PEER_DELIVER" | "MSG_GROUP") {
            forwarded.push(if env.kind == "PEER_DELIVER" {
                "MSG_PRIVATE".to_owned()
            } else {
                env.kind
            });
        }
    }
    assert_eq!(forwarded, to_master);
    local.shutdown().await;
}
