//! The `socp client --json` binary end to end against real nodes.

mod common;

use std::time::Duration;

use common::clientproc::ClientProc;
use common::cluster::{TestNode, connect, expect, expect_dm, user_key};
use serde_json::Value;
use socp::content;
use socp::wire::messages::{FileEnd, FileMode, FileStart, Message};

async fn two_servers() -> (TestNode, TestNode) {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    (master, local)
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_both_ways_across_two_servers_with_key_auto_fetch() {
    let (master, local) = two_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &master.url()).await;
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &local.url()).await;
    master.wait_online(&["alice", "bob"]).await;
    // No /dbget first: /msg fetches the key itself.
    alice.cmd("/msg bob Hello Bob! é 😀").await;
    let sent = alice.expect("sent", is("sent")).await;
    assert_eq!(sent["kind"], "dm");
    assert_eq!(sent["to"], "bob");
    let dm = bob.expect("dm", is("dm")).await;
    assert_eq!(dm["from"], "alice");
    assert_eq!(dm["text"], "Hello Bob! é 😀");
    assert_eq!(dm["verified"], true);
    assert_eq!(dm["msg_id"], sent["msg_id"]);
    bob.cmd("/msg alice Hi Alice!").await;
    let dm = alice.expect("dm", is("dm")).await;
    assert_eq!(
        (
            dm["from"].as_str(),
            dm["text"].as_str(),
            dm["verified"].as_bool()
        ),
        (Some("bob"), Some("Hi Alice!"), Some(true))
    );
    // /list, /dbget, /pubget, /fingerprint.
    alice.cmd("/list").await;
    assert_eq!(
        alice.expect("list", is("list")).await["users"],
        serde_json::json!(["alice", "bob"])
    );
    alice.cmd("/dbget nobody").await;
    let miss = alice.expect("pubkey", is("pubkey")).await;
    assert_eq!(
        (miss["found"].as_bool(), miss["fingerprint"].is_null()),
        (Some(false), true)
    );
    alice.cmd("/dbget bob").await;
    let hit = alice.expect("pubkey", is("pubkey")).await;
    assert_eq!(hit["fingerprint"], user_key("bob").public().fingerprint());
    alice.cmd("/pubget").await;
    assert_eq!(
        alice.expect("pubget", is("pubget")).await["pubkey"],
        user_key("alice").public().to_b64()
    );
    alice.cmd("/fingerprint bob").await;
    assert_eq!(
        alice.expect("fingerprint", is("fingerprint")).await["fingerprint"],
        user_key("bob").public().fingerprint()
    );
    // Usage errors name the usage; a DM to nobody says so.
    alice.cmd("/msg bob").await;
    let e = alice.expect("error", is("error")).await;
    assert_eq!(e["code"], "USAGE");
    assert!(e["detail"].as_str().unwrap().contains("/msg USER TEXT"));
    alice.cmd("/msg nobody hi").await;
    assert_eq!(alice.expect("error", is("error")).await["code"], "NO_KEY");
    assert!(alice.quit().await.success());
    assert!(bob.quit().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_signed_by_another_key_shows_unverified() {
    let (master, local) = two_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ClientProc::start(dir.path(), "bob", &local.url()).await;
    let mut alice = connect(&master.url(), "alice").await;
    // Alice's session, but the content signature is made with Carol's key
    // (and sender_pub claims Carol's key too): the directory key decides.
    let mut dm = content::seal_dm(
        &user_key("carol"),
        "alice",
        "bob",
        user_key("bob").public(),
        b"forged",
        1,
    )
    .unwrap();
    dm.msg_id = Some(uuid::Uuid::new_v4().to_string());
    alice.send("bob", &Message::MsgPrivate(dm)).await.unwrap();
    let ev = bob.expect("dm", is("dm")).await;
    assert_eq!(ev["text"], "forged");
    assert_eq!(ev["verified"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_create_message_and_rotate_out_a_member() {
    let (master, local) = two_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &master.url()).await;
    let mut bob = connect(&local.url(), "bob").await;
    let mut carol = connect(&local.url(), "carol").await;
    master.wait_online(&["alice", "bob", "carol"]).await;
    alice.cmd("/gshare group_team bob carol").await;
    assert_eq!(alice.expect("sent", is("sent")).await["kind"], "group_key");
    let open_share = |s: &socp::client::Session, m: &Message| {
        let Message::GroupKeyShare(share) = m else {
            unreachable!()
        };
        content::open_group_share(&user_key(s.user()), s.user(), share)
            .unwrap()
            .unwrap()
    };
    let (_, m) = expect(&mut bob, "share", |_, m| {
        matches!(m, Message::GroupKeyShare(_))
    })
    .await;
    let bob_key1 = open_share(&bob, &m);
    let (_, m) = expect(&mut carol, "share", |_, m| {
        matches!(m, Message::GroupKeyShare(_))
    })
    .await;
    let carol_key1 = open_share(&carol, &m);
    assert_eq!(bob_key1, carol_key1);
    alice.cmd("/gmsg group_team hello team").await;
    let (_, m) = expect(&mut carol, "group msg", |_, m| {
        matches!(m, Message::MsgGroup(_))
    })
    .await;
    let Message::MsgGroup(gm) = m else {
        unreachable!()
    };
    assert_eq!(
        content::open_group(&carol_key1, &gm).unwrap(),
        b"hello team"
    );
    // Bob answers; Alice's client shows it verified.
    let reply = content::seal_group(
        &user_key("bob"),
        "bob",
        "group_team",
        &bob_key1,
        b"hi everyone",
        socp::wire::now_ms(),
    )
    .unwrap();
    bob.send("group_team", &Message::MsgGroup(reply))
        .await
        .unwrap();
    let ev = alice.expect("group_msg", is("group_msg")).await;
    assert_eq!(
        (
            ev["group"].as_str(),
            ev["from"].as_str(),
            ev["text"].as_str(),
            ev["verified"].as_bool()
        ),
        (
            Some("group_team"),
            Some("bob"),
            Some("hi everyone"),
            Some(true)
        )
    );
    expect(
        &mut carol,
        "bob's group msg",
        |_, m| matches!(m, Message::MsgGroup(g) if g.from == "bob"),
    )
    .await;
    // Rotate without Carol: Bob gets a new key, Carol cannot read what follows.
    alice.cmd("/gshare group_team bob").await;
    let (_, m) = expect(&mut bob, "share", |_, m| {
        matches!(m, Message::GroupKeyShare(_))
    })
    .await;
    let bob_key2 = open_share(&bob, &m);
    assert_ne!(bob_key2, bob_key1);
    alice.cmd("/gmsg group_team after rotation").await;
    let (_, m) = expect(&mut bob, "group msg", |_, m| {
        matches!(m, Message::MsgGroup(_))
    })
    .await;
    let Message::MsgGroup(gm) = m else {
        unreachable!()
    };
    assert_eq!(
        content::open_group(&bob_key2, &gm).unwrap(),
        b"after rotation"
    );
    assert!(
        content::open_group(&carol_key1, &gm).is_err(),
        "the removed member's key opens the new message"
    );
    let later = common::cluster::drain(&mut carol, Duration::from_millis(500)).await;
    assert!(
        later
            .iter()
            .all(|(_, m)| !matches!(m, Message::MsgGroup(_))),
        "a removed member was still sent group messages"
    );
}

fn write_file(path: &std::path::Path, len: usize, seed: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_and_group_files_of_a_few_megabytes() {
    let (master, local) = two_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &master.url()).await;
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &local.url()).await;
    let mut carol = ClientProc::start(&dir.path().join("c"), "carol", &local.url()).await;
    master.wait_online(&["alice", "bob", "carol"]).await;
    let src = dir.path().join("report.bin");
    let data = write_file(&src, 3_000_000, 7);
    alice.cmd(&format!("/file bob {}", src.display())).await;
    let ev = bob.expect("file", is("file")).await;
    assert_eq!(
        (
            ev["from"].as_str(),
            ev["mode"].as_str(),
            ev["name"].as_str()
        ),
        (Some("alice"), Some("dm"), Some("report.bin"))
    );
    assert_eq!(
        (
            ev["sha256_ok"].as_bool(),
            ev["verified"].as_bool(),
            ev["size"].as_u64()
        ),
        (Some(true), Some(true), Some(3_000_000))
    );
    let path = std::path::PathBuf::from(ev["path"].as_str().unwrap());
    assert!(path.starts_with(bob.downloads()));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(
        alice
            .expect("sent", |e| e["event"] == "sent" && e["kind"] == "file")
            .await["to"],
        "bob"
    );

    alice.cmd("/gshare group_files bob carol").await;
    bob.expect("group_key", is("group_key")).await;
    carol.expect("group_key", is("group_key")).await;
    let src2 = dir.path().join("team.bin");
    let data2 = write_file(&src2, 2_500_000, 9);
    alice
        .cmd(&format!("/file group_files {}", src2.display()))
        .await;
    for c in [&mut bob, &mut carol] {
        let ev = c.expect("file", is("file")).await;
        assert_eq!(
            (
                ev["mode"].as_str(),
                ev["group"].as_str(),
                ev["sha256_ok"].as_bool(),
                ev["verified"].as_bool()
            ),
            (Some("group"), Some("group_files"), Some(true), Some(true))
        );
        assert_eq!(std::fs::read(ev["path"].as_str().unwrap()).unwrap(), data2);
    }
    // The same name again does not clobber the first file.
    alice.cmd(&format!("/file bob {}", src.display())).await;
    let ev = bob.expect("file", is("file")).await;
    assert!(
        ev["path"].as_str().unwrap().ends_with("report (1).bin"),
        "{ev}"
    );
}

/// Sends a file from a library session with any name, optionally tampering
/// with chunk 1's ciphertext.
async fn send_raw_file(
    s: &mut socp::client::Session,
    to: &str,
    name: &str,
    data: &[u8],
    tamper: bool,
) {
    let file_id = uuid::Uuid::new_v4().to_string();
    let start = FileStart {
        file_id: file_id.clone(),
        name: name.into(),
        size: data.len() as u64,
        sha256: socp::crypto::hex(&socp::crypto::sha256(data)),
        mode: FileMode::Dm,
        group_id: None,
        user_id: None,
        content_sig: None,
        msg_id: None,
        extra: Default::default(),
    };
    s.send(to, &Message::FileStart(start)).await.unwrap();
    let key = socp::crypto::aead::new_key().unwrap();
    let wrapped = socp::wire::b64::encode(user_key(to).public().wrap(key.as_ref()).unwrap());
    for (i, piece) in data.chunks(content::CHUNK_SIZE).enumerate() {
        let mut chunk =
            content::seal_chunk(&file_id, i as u64, key.as_ref(), Some(&wrapped), piece).unwrap();
        if tamper && i == 1 {
            let mut ct = socp::wire::b64::decode(&chunk.ciphertext).unwrap();
            ct[10] ^= 0x40;
            chunk.ciphertext = socp::wire::b64::encode(ct);
        }
        s.send(to, &Message::FileChunk(chunk)).await.unwrap();
    }
    s.send(
        to,
        &Message::FileEnd(FileEnd {
            file_id,
            user_id: None,
            msg_id: None,
            extra: Default::default(),
        }),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_land_safely_and_tampered_chunks_leave_nothing() {
    let master = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ClientProc::start(dir.path(), "bob", &master.url()).await;
    let mut alice = connect(&master.url(), "alice").await;
    let downloads = bob.downloads().canonicalize().unwrap();
    let long = "n".repeat(10 * 1024);
    let hostile = [
        "../../x",
        "/etc/passwd",
        "a/../../b",
        "bell\u{7}new\nline\u{1b}[31m.txt",
        long.as_str(),
        "..",
        ".hidden",
    ];
    for name in hostile {
        send_raw_file(&mut alice, "bob", name, b"payload", false).await;
        let ev = bob.expect("file", is("file")).await;
        let path = std::path::PathBuf::from(ev["path"].as_str().unwrap())
            .canonicalize()
            .unwrap();
        assert_eq!(
            path.parent().unwrap(),
            downloads,
            "{name:?} landed at {}",
            path.display()
        );
        let base = path.file_name().unwrap().to_str().unwrap();
        assert!(
            !base.starts_with('.') && !base.chars().any(char::is_control) && base.len() <= 120,
            "{base:?}"
        );
        assert_eq!(ev["sha256_ok"], true);
        assert_eq!(
            ev["verified"], false,
            "no signed manifest, no verified mark"
        );
    }
    assert!(!dir.path().join("x").exists() && !dir.path().join("b").exists());
    let before: Vec<_> = std::fs::read_dir(&downloads)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let data = vec![5u8; 200_000];
    send_raw_file(&mut alice, "bob", "tampered.bin", &data, true).await;
    let err = bob.expect("error", is("error")).await;
    assert_eq!(err["code"], "FILE");
    assert!(
        err["detail"].as_str().unwrap().contains("tampered.bin"),
        "{err}"
    );
    // The client takes frames in order: once a later file has landed, it
    // is done with the tampered one.
    send_raw_file(&mut alice, "bob", "after.bin", b"fine", false).await;
    let ev = bob.expect("file", is("file")).await;
    assert!(ev["path"].as_str().unwrap().ends_with("after.bin"), "{ev}");
    let after: Vec<_> = std::fs::read_dir(&downloads)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        before.len() + 1,
        after.len(),
        "a tampered transfer left a file: {after:?}"
    );
    assert!(
        bob.drain(Duration::from_millis(200))
            .await
            .iter()
            .all(|e| e["event"] != "file")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_restart_keeps_keyring_and_group_keys_and_node_restart_reconnects() {
    let (master, mut local) = two_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &local.url()).await;
    let mut bob = ClientProc::start(&dir.path().join("b"), "bob", &master.url()).await;
    master.wait_online(&["alice", "bob"]).await;
    alice.cmd("/gshare group_keep bob").await;
    bob.expect("group_key", is("group_key")).await;
    assert!(alice.quit().await.success());
    // Restarted: Bob's key is pinned (no lookup needed) and the group key is kept.
    let mut alice = ClientProc::start(&dir.path().join("a"), "alice", &local.url()).await;
    alice.cmd("/fingerprint bob").await;
    assert_eq!(
        alice.expect("fingerprint", is("fingerprint")).await["fingerprint"],
        user_key("bob").public().fingerprint()
    );
    alice.cmd("/gmsg group_keep still here").await;
    let ev = bob.expect("group_msg", is("group_msg")).await;
    assert_eq!(
        (ev["text"].as_str(), ev["verified"].as_bool()),
        (Some("still here"), Some(true))
    );
    // The node Alice is on restarts: her client says so, reconnects and carries on.
    local.restart().await;
    alice.expect("disconnected", is("disconnected")).await;
    alice.expect("connected", is("connected")).await;
    master.wait_online(&["alice"]).await;
    alice.cmd("/msg bob back again").await;
    let ev = bob.expect("dm", is("dm")).await;
    assert_eq!(ev["text"], "back again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_style_client_and_ours_exchange_everything() {
    use socp::client::{HelloStyle, Session};
    let master = TestNode::master_with(|c| c.allow_legacy_clients = true).await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &local.url()).await;
    // "dave" speaks like the reference client: unsigned frames, no msg_id.
    let mut dave =
        Session::connect_with(&master.url(), "dave", user_key("dave"), HelloStyle::Legacy)
            .await
            .unwrap();
    master.wait_online(&["alice", "dave"]).await;

    // Reference -> ours: a DM, verified with dave's directory key.
    let dm = content::seal_dm(
        &user_key("dave"),
        "dave",
        "alice",
        user_key("alice").public(),
        b"from the reference",
        1,
    )
    .unwrap();
    dave.send("alice", &Message::MsgPrivate(dm)).await.unwrap();
    let ev = alice.expect("dm", is("dm")).await;
    assert_eq!(
        (ev["text"].as_str(), ev["verified"].as_bool()),
        (Some("from the reference"), Some(true))
    );
    assert!(ev["msg_id"].as_str().unwrap().starts_with("sha256:"));

    // A group key share and message from the reference client.
    let members = vec![("alice".to_owned(), user_key("alice").public().clone())];
    let (gk, share) =
        content::new_group_share(&user_key("dave"), "dave", "group_demo", &members).unwrap();
    dave.send(socp::wire::ids::TO_SERVER, &Message::GroupKeyShare(share))
        .await
        .unwrap();
    assert_eq!(
        alice.expect("group_key", is("group_key")).await["verified"],
        true
    );
    let m = content::seal_group(
        &user_key("dave"),
        "dave",
        "group_demo",
        &gk,
        b"hello team",
        2,
    )
    .unwrap();
    dave.send("group_demo", &Message::MsgGroup(m))
        .await
        .unwrap();
    assert_eq!(
        alice.expect("group_msg", is("group_msg")).await["text"],
        "hello team"
    );

    // A reference DM file (no signed manifest): saved, sha256_ok, not verified.
    send_raw_file(&mut dave, "alice", "ref.txt", &[b'r'; 11000], false).await;
    let ev = alice.expect("file", is("file")).await;
    assert_eq!(
        (ev["sha256_ok"].as_bool(), ev["verified"].as_bool()),
        (Some(true), Some(false))
    );

    // Ours -> reference: a DM, a group message and a file, as A5 frames.
    alice.cmd("/msg dave Hi Dave!").await;
    let (_, m) = expect(&mut dave, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    let Message::UserDeliver(d) = m else {
        unreachable!()
    };
    let as_dm = d.to_private();
    assert_eq!(
        content::open_dm(&user_key("dave"), &as_dm).unwrap(),
        b"Hi Dave!"
    );
    assert_eq!(d.sender_pub, user_key("alice").public().to_b64());
    assert!(content::verify(
        user_key("alice").public(),
        &content::dm_signed_bytes(&as_dm, "alice", "dave").unwrap(),
        &d.content_sig
    ));
    alice.cmd("/gmsg group_demo hi everyone").await;
    let (_, m) = expect(&mut dave, "MSG_GROUP", |_, m| {
        matches!(m, Message::MsgGroup(_))
    })
    .await;
    let Message::MsgGroup(g) = m else {
        unreachable!()
    };
    assert_eq!(content::open_group(&gk, &g).unwrap(), b"hi everyone");
    let src = dir.path().join("to-dave.txt");
    std::fs::write(&src, vec![b'x'; 70_000]).unwrap();
    alice.cmd(&format!("/file dave {}", src.display())).await;
    let (_, m) = expect(&mut dave, "FILE_START", |_, m| {
        matches!(m, Message::FileStart(_))
    })
    .await;
    let Message::FileStart(start) = m else {
        unreachable!()
    };
    assert_eq!(
        (start.size, start.user_id.as_deref()),
        (70_000, Some("dave"))
    );
    let mut data = Vec::new();
    loop {
        let (_, m) = expect(&mut dave, "file frame", |_, m| {
            matches!(m, Message::FileChunk(_) | Message::FileEnd(_))
        })
        .await;
        match m {
            Message::FileChunk(c) => {
                let k =
                    content::unwrap_file_key(&user_key("dave"), c.wrapped_key.as_deref().unwrap())
                        .unwrap();
                data.extend(content::open_chunk(&k, &c).unwrap());
            }
            _ => break,
        }
    }
    assert_eq!(
        socp::crypto::hex(&socp::crypto::sha256(&data)),
        start.sha256
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_sends_no_welcome_accepts_us_by_answering_the_list() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    // A stand-in for a reference node: no USER_WELCOME, only the list answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut kinds = Vec::new();
        while kinds.len() < 2 {
            let Some(Ok(Ws::Text(t))) = ws.next().await else {
                break;
            };
            let env = socp::wire::Envelope::parse(t.as_str()).unwrap();
            kinds.push(env.kind);
        }
        let mut list = socp::wire::Envelope::new(
            "USER_LIST",
            "server_6b404614-c9e3-44d2-b66d-50e5eb691287",
            "alice",
            serde_json::Map::new(),
        );
        list.payload
            .insert("users".into(), serde_json::json!(["alice"]));
        ws.send(Ws::text(list.to_json())).await.unwrap();
        kinds
    });
    let session = socp::client::Session::connect(&url, "alice", user_key("alice"))
        .await
        .unwrap();
    assert_eq!(
        session.server_id,
        "server_6b404614-c9e3-44d2-b66d-50e5eb691287"
    );
    assert_eq!(server.await.unwrap(), ["USER_HELLO", "USER_LIST_REQ"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_directory_key_is_reported_and_not_used_until_trusted() {
    // Alice pins Bob's key on one mesh…
    let first = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    connect(&first.url(), "bob").await.close().await;
    let mut alice = ClientProc::start(dir.path(), "alice", &first.url()).await;
    alice.cmd("/dbget bob").await;
    alice.expect("pubkey", is("pubkey")).await;
    assert!(alice.quit().await.success());
    // …then meets a directory where "bob" has another key.
    let second = TestNode::master().await;
    let mut impostor = socp::client::Session::connect(&second.url(), "bob", user_key("carol"))
        .await
        .unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &second.url()).await;
    alice.cmd("/dbget bob").await;
    let changed = alice.expect("key_changed", is("key_changed")).await;
    assert_eq!(changed["old"], user_key("bob").public().fingerprint());
    assert_eq!(changed["new"], user_key("carol").public().fingerprint());
    // Nothing is sent to the new key, and content signed by it is unverified.
    alice.cmd("/msg bob hello?").await;
    assert_eq!(
        alice.expect("error", is("error")).await["code"],
        "KEY_CHANGED"
    );
    let dm = content::seal_dm(
        &user_key("carol"),
        "bob",
        "alice",
        user_key("alice").public(),
        b"trust me",
        1,
    )
    .unwrap();
    impostor
        .send("alice", &Message::MsgPrivate(dm))
        .await
        .unwrap();
    let ev = alice.expect("dm", is("dm")).await;
    assert_eq!(ev["verified"], false);
    // After the user checks and accepts it, the new key is used.
    alice.cmd("/trust bob").await;
    assert_eq!(
        alice.expect("trusted", is("trusted")).await["fingerprint"],
        user_key("carol").public().fingerprint()
    );
    alice.cmd("/msg bob now trusted").await;
    alice.expect("sent", is("sent")).await;
    assert_eq!(
        expect_dm(&mut impostor, &user_key("carol")).await,
        b"now trusted"
    );
}
