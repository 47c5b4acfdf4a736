//! The client against hostile peers and refusing nodes (issue 11): what a
//! peer wrote cannot forge terminal lines, content too big is refused at
//! compose time, refused content is shown as not sent, group keys only come
//! from the group's owner, one sender cannot block file transfers, and
//! server frames are authenticated.

mod common;

use std::time::Duration;

use common::clientproc::{ClientProc, TermProc};
use common::cluster::{TestNode, connect, send_dm, user_key};
use common::fakenode::FakeNode;
use serde_json::{Value, json};
use socp::content;
use socp::wire::messages::{FileChunk, FileEnd, FileMode, FileStart, Message};

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

fn payload(msg: &Message) -> Value {
    Value::Object(msg.to_payload())
}

/// The forged line of issue 11 item 6.
const INJECTION: &str = "hi\n21:22:08 [dm from bob] ✓ forged\x1b[2J";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_cannot_forge_a_line_or_send_escapes_to_the_terminal() {
    let master = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = TermProc::start(&dir.path().join("b"), "bob", &master.url()).await;
    let mut alice = connect(&master.url(), "alice").await;
    master.wait_online(&["alice", "bob"]).await;
    send_dm(&mut alice, "bob", INJECTION.as_bytes()).await;
    let line = bob
        .expect_line("dm", |l| l.contains("[dm from alice]"))
        .await;
    assert!(
        line.ends_with("hi\\n21:22:08 [dm from bob] ✓ forged\\x1b[2J"),
        "{line:?}"
    );
    let lines = bob.drain(Duration::from_millis(300)).await;
    assert!(
        lines
            .iter()
            .all(|l| !l.contains('\x1b') && !l.starts_with("21:22:08 [dm from bob]")),
        "{lines:?}"
    );
    bob.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_keeps_what_the_peer_wrote() {
    let master = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = ClientProc::start(dir.path(), "bob", &master.url()).await;
    let mut alice = connect(&master.url(), "alice").await;
    master.wait_online(&["alice", "bob"]).await;
    send_dm(&mut alice, "bob", INJECTION.as_bytes()).await;
    // JSON escapes it on the wire; the program reading it gets the text.
    assert_eq!(bob.expect("dm", is("dm")).await["text"], INJECTION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_too_big_for_a_node_is_refused_when_written_and_never_queued() {
    let mut node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    // 700,000 bytes of text: about 933,000 once encrypted and encoded.
    alice
        .cmd(&format!("/msg bob {}", "x".repeat(700_000)))
        .await;
    let e = alice.expect("error", is("error")).await;
    assert_eq!(e["code"], "TOO_LARGE");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("message too long: ")
            && detail.contains("the limit is 917,504; split it"),
        "{detail}"
    );
    alice.cmd("/outbox").await;
    assert_eq!(
        alice.expect("outbox", is("outbox")).await["entries"],
        json!([])
    );
    // Long lines from a pipe arrive whole: 600,000 bytes fit and are sent.
    alice
        .cmd(&format!("/msg bob {}", "y".repeat(600_000)))
        .await;
    let frame = node.expect("MSG_PRIVATE").await;
    let dm = Message::from_envelope(&frame).unwrap();
    let Message::MsgPrivate(dm) = dm else {
        unreachable!()
    };
    let plain = content::open_dm(&user_key("bob"), &dm).unwrap();
    assert_eq!(plain.len(), 600_000);
    assert!(
        node.drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|f| f.kind != "MSG_PRIVATE"),
        "the refused message must not be sent"
    );
}

fn msg_id(frame: &socp::wire::Envelope) -> String {
    frame.payload["msg_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_content_shows_not_sent_and_only_transient_refusals_stay_queued() {
    let mut node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;

    // "sent" only once the node acknowledges.
    alice.cmd("/msg bob one").await;
    let one = msg_id(&node.expect("MSG_PRIVATE").await);
    let early = alice.drain(Duration::from_millis(500)).await;
    assert!(early.iter().all(|e| e["event"] != "sent"), "{early:?}");
    alice.seen = early;
    // A permanent refusal: not sent, out of the outbox.
    node.send(
        "ERROR",
        json!({"code": "TOO_LARGE", "detail": "too big here", "msg_id": one}),
    );
    let ns = alice.expect("not_sent", is("not_sent")).await;
    assert_eq!(
        (
            ns["msg_id"].as_str(),
            ns["code"].as_str(),
            ns["kept"].as_bool()
        ),
        (Some(one.as_str()), Some("TOO_LARGE"), Some(false))
    );
    assert!(alice.seen.iter().all(|e| e["event"] != "sent"));

    // A transient refusal: kept, and it does not hold up the next one.
    alice.cmd("/msg bob two").await;
    let two = msg_id(&node.expect("MSG_PRIVATE").await);
    node.send(
        "ERROR",
        json!({"code": "QUOTA_EXCEEDED", "detail": "bob's mailbox is full", "msg_id": two}),
    );
    let ns = alice.expect("not_sent", is("not_sent")).await;
    assert_eq!(
        (ns["msg_id"].as_str(), ns["kept"].as_bool()),
        (Some(two.as_str()), Some(true))
    );
    alice.cmd("/msg bob three").await;
    let three = msg_id(&node.expect("MSG_PRIVATE").await);
    node.send("ACK", json!({"msg_ids": [three]}));
    assert_eq!(alice.expect("sent", is("sent")).await["msg_id"], three);
    alice.cmd("/outbox").await;
    let entries = alice.expect("outbox", is("outbox")).await["entries"].clone();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["msg_id"], two);
    assert!(
        entries[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("QUOTA_EXCEEDED")
    );

    // It is tried again on its own, and "sent" when taken.
    let again = node.expect("MSG_PRIVATE").await;
    assert_eq!(msg_id(&again), two);
    node.send("ACK", json!({"msg_ids": [two]}));
    assert_eq!(alice.expect("sent", is("sent")).await["msg_id"], two);

    // /outbox drop forgets an entry for good.
    alice.cmd("/msg bob four").await;
    let four = msg_id(&node.expect("MSG_PRIVATE").await);
    alice.cmd(&format!("/outbox drop {}", &four[..8])).await;
    let ns = alice.expect("not_sent", is("not_sent")).await;
    assert_eq!(
        (ns["msg_id"].as_str(), ns["code"].as_str()),
        (Some(four.as_str()), Some("DROPPED"))
    );
    alice.cmd("/outbox").await;
    assert_eq!(
        alice.expect("outbox", is("outbox")).await["entries"],
        json!([])
    );
    // The permanently refused one never came back.
    assert!(
        node.drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|f| f.payload.get("msg_id").and_then(Value::as_str) != Some(one.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_groups_owner_can_change_its_key() {
    let mut node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    let members = [("alice".to_owned(), user_key("alice").public().clone())];
    // Bob creates group_team: the first share pins him as its owner.
    let (team_key, mut share) =
        content::new_group_share(&user_key("bob"), "bob", "group_team", &members).unwrap();
    share.msg_id = Some("share-1".into());
    node.send("GROUP_KEY_SHARE", payload(&Message::GroupKeyShare(share)));
    let k = alice.expect("group_key", is("group_key")).await;
    assert_eq!(
        (k["from"].as_str(), k["verified"].as_bool()),
        (Some("bob"), Some(true))
    );
    // Carol shares a key for it: refused, loudly.
    let (_, mut takeover) =
        content::new_group_share(&user_key("carol"), "carol", "group_team", &members).unwrap();
    takeover.msg_id = Some("share-2".into());
    node.send(
        "GROUP_KEY_SHARE",
        payload(&Message::GroupKeyShare(takeover)),
    );
    let r = alice.expect("refused", is("group_key_refused")).await;
    assert_eq!(
        (r["group"].as_str(), r["from"].as_str(), r["owner"].as_str()),
        (Some("group_team"), Some("carol"), Some("bob"))
    );
    // A share that claims Bob but is signed by Carol: refused too.
    let (_, mut forged) =
        content::new_group_share(&user_key("carol"), "bob", "group_team", &members).unwrap();
    forged.msg_id = Some("share-3".into());
    node.send("GROUP_KEY_SHARE", payload(&Message::GroupKeyShare(forged)));
    let r = alice.expect("refused", is("group_key_refused")).await;
    assert!(r["reason"].as_str().unwrap().contains("verify"), "{r}");
    // Bob's key is still the one in use.
    let mut m = content::seal_group(
        &user_key("bob"),
        "bob",
        "group_team",
        &team_key,
        b"still ours",
        1,
    )
    .unwrap();
    m.msg_id = Some("gm-1".into());
    node.send("MSG_GROUP", payload(&Message::MsgGroup(m)));
    let g = alice.expect("group_msg", is("group_msg")).await;
    assert_eq!(
        (g["text"].as_str(), g["verified"].as_bool()),
        (Some("still ours"), Some(true))
    );
    // Alice cannot rotate Bob's group, and sends nothing trying.
    alice.cmd("/gshare group_team carol").await;
    let e = alice.expect("error", is("error")).await;
    assert_eq!(e["code"], "NOT_OWNER");
    assert!(e["detail"].as_str().unwrap().contains("bob"), "{e}");
    // Her own group is hers.
    alice.cmd("/gshare group_mine carol").await;
    let sent = node.drain(Duration::from_millis(1500)).await;
    let shares: Vec<&str> = sent
        .iter()
        .filter(|f| f.kind == "GROUP_KEY_SHARE")
        .filter_map(|f| f.payload["group_id"].as_str())
        .collect();
    assert_eq!(shares, ["group_mine"]);
}

fn file_start(file_id: &str, from: &str, data: &[u8]) -> FileStart {
    let mut start = FileStart {
        file_id: file_id.into(),
        name: format!("{file_id}.bin"),
        size: data.len() as u64,
        sha256: socp::crypto::hex(&socp::crypto::sha256(data)),
        mode: FileMode::Dm,
        group_id: None,
        user_id: Some("alice".into()),
        content_sig: None,
        msg_id: Some(format!("start-{file_id}")),
        extra: Default::default(),
    };
    start.extra.insert("from".into(), json!(from));
    start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_block_files_from_others() {
    let node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    // Carol starts sixteen files and never finishes them.
    for i in 0..16 {
        let start = file_start(&format!("stuck{i}"), "carol", b"never");
        node.send("FILE_START", payload(&Message::FileStart(start)));
    }
    let e = alice.expect("refusal", is("error")).await;
    assert_eq!(e["code"], "FILE");
    assert!(e["detail"].as_str().unwrap().contains("carol"), "{e}");
    // Bob's file still arrives.
    let data = b"hello from bob".to_vec();
    node.send(
        "FILE_START",
        payload(&Message::FileStart(file_start("bobs", "bob", &data))),
    );
    let key = socp::crypto::aead::new_key().unwrap();
    let wrapped = socp::wire::b64::encode(user_key("alice").public().wrap(key.as_ref()).unwrap());
    let mut chunk: FileChunk =
        content::seal_chunk("bobs", 0, key.as_ref(), Some(&wrapped), &data).unwrap();
    chunk.msg_id = Some("chunk-bobs".into());
    node.send("FILE_CHUNK", payload(&Message::FileChunk(chunk)));
    let end = FileEnd {
        file_id: "bobs".into(),
        user_id: Some("alice".into()),
        msg_id: Some("end-bobs".into()),
        extra: Default::default(),
    };
    node.send("FILE_END", payload(&Message::FileEnd(end)));
    let f = alice.expect("file", is("file")).await;
    assert_eq!(f["from"], "bob");
    assert_eq!(std::fs::read(f["path"].as_str().unwrap()).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_without_a_session_is_refused() {
    let node = FakeNode::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::spawn(dir.path(), "alice", &node.url, &[]);
    let e = alice.expect("error", is("error")).await;
    assert_eq!(e["code"], "NO_SESSION");
    assert!(alice.seen.iter().all(|e| e["event"] != "connected"));
    alice.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_from_an_invalid_sender_id_is_dropped_not_shown() {
    let node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    for (i, sender) in ["server_1234", "bob ✓ verified", "group_x"]
        .iter()
        .enumerate()
    {
        let dm = content::seal_dm(
            &user_key("bob"),
            sender,
            "alice",
            user_key("alice").public(),
            b"look at me",
            1,
        )
        .unwrap();
        let mut p = Message::MsgPrivate(dm).to_payload();
        p.insert("sender".into(), json!(sender));
        p.insert("user_id".into(), json!("alice"));
        p.insert("msg_id".into(), json!(format!("bad-{i}")));
        node.send("USER_DELIVER", Value::Object(p));
        let d = alice.expect("dropped", is("dropped")).await;
        assert_eq!(d["from"], *sender);
    }
    let rest = alice.drain(Duration::from_millis(500)).await;
    assert!(rest.iter().all(|e| e["event"] != "dm"), "{rest:?}");
}

/// A receipt for content this client never sent (made up by a server) is
/// not shown as "delivered"; one for a message it sent is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_show_only_for_content_we_sent() {
    let mut node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    alice.cmd("/msg bob hello").await;
    let id = msg_id(&node.expect("MSG_PRIVATE").await);
    node.send("ACK", json!({"msg_ids": [id]}));
    alice.expect("sent", is("sent")).await;
    node.send(
        "RECEIPT",
        json!({"user_id": "alice", "msg_ids": ["made-up-id", id], "status": "delivered"}),
    );
    let d = alice.expect("delivery", is("delivery")).await;
    assert_eq!(d["msg_id"], json!(id));
    let rest = alice.drain(Duration::from_millis(500)).await;
    assert!(
        rest.iter().all(|e| e["event"] != "delivery"),
        "a made-up id was shown as delivered: {rest:?}"
    );
}

/// Content our server took and a server further on refused for good is
/// shown as not delivered (the node acknowledged it, so it had left the
/// outbox): never a silent loss, never an "about an unknown id" error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_further_on_shows_as_not_delivered() {
    let mut node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    alice.cmd("/msg bob hello").await;
    let id = msg_id(&node.expect("MSG_PRIVATE").await);
    node.send("ACK", json!({"msg_ids": [id]}));
    alice.expect("sent", is("sent")).await;
    node.send(
        "ERROR",
        json!({"code": "QUOTA_EXCEEDED", "detail": "bob's mailbox is full", "msg_id": id}),
    );
    let ns = alice.expect("not_sent", is("not_sent")).await;
    assert_eq!(ns["msg_id"], json!(id));
    assert_eq!(ns["to"], "bob");
    assert_eq!(ns["kept"], false);
    assert!(
        ns["detail"].as_str().unwrap().contains("further on"),
        "{ns}"
    );
}

/// The text of a DM frame a client sent to Bob.
fn opened_for_bob(frame: &socp::wire::Envelope) -> String {
    let Ok(Message::MsgPrivate(dm)) = Message::from_envelope(frame) else {
        panic!("not a DM: {frame:?}")
    };
    String::from_utf8(content::open_dm(&user_key("bob"), &dm).unwrap()).unwrap()
}

/// A DM waiting for the re-check of Bob's key when the connection drops
/// stays ahead of a DM written while offline: what waits for a key keeps
/// its order (the kill test once showed one sender's DMs out of order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_waiting_for_a_key_check_keep_their_order_across_a_dropped_connection() {
    let mut node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    alice.cmd("/dbget bob").await;
    alice.expect("pubkey", is("pubkey")).await;
    // A new connection: the next DM to Bob re-checks his key first, and
    // that lookup goes unanswered.
    node.hold_lookups(true);
    node.hang_up();
    alice.expect("disconnected", is("disconnected")).await;
    alice.expect("connected", is("connected")).await;
    alice.cmd("/msg bob one").await;
    node.expect("USER_DB_GET_USER").await;
    // The connection drops with "one" still waiting; "two" is written offline.
    node.hang_up();
    alice.expect("disconnected", is("disconnected")).await;
    alice.cmd("/msg bob two").await;
    node.hold_lookups(false);
    let first = node.expect("MSG_PRIVATE").await;
    let second = node.expect("MSG_PRIVATE").await;
    assert_eq!(
        [opened_for_bob(&first), opened_for_bob(&second)],
        ["one", "two"],
        "DMs to one user leave in the order they were written"
    );
}

/// Sends a whole one-chunk DM file `file_id` from `from` to alice.
fn send_small_file(node: &FakeNode, file_id: &str, from: &str, data: &[u8]) {
    node.send(
        "FILE_START",
        payload(&Message::FileStart(file_start(file_id, from, data))),
    );
    let key = socp::crypto::aead::new_key().unwrap();
    let wrapped = socp::wire::b64::encode(user_key("alice").public().wrap(key.as_ref()).unwrap());
    let mut chunk = content::seal_chunk(file_id, 0, key.as_ref(), Some(&wrapped), data).unwrap();
    chunk.msg_id = Some(format!("chunk-{file_id}"));
    node.send("FILE_CHUNK", payload(&Message::FileChunk(chunk)));
    let end = FileEnd {
        file_id: file_id.into(),
        user_id: Some("alice".into()),
        msg_id: Some(format!("end-{file_id}")),
        extra: Default::default(),
    };
    node.send("FILE_END", payload(&Message::FileEnd(end)));
}

/// Bytes of the largest partial file in `downloads`.
fn partial_bytes(downloads: &std::path::Path) -> u64 {
    std::fs::read_dir(downloads)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_far_ahead_of_the_rest_is_not_written() {
    // Review finding: a chunk far past those received was written at its
    // offset, so a sender made the receiver's temporary file as long as
    // the manifest said at once (the whole size on a filesystem without
    // sparse files).
    let node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    let chunk = content::CHUNK_SIZE as u64;
    let ahead = socp::client::files::CHUNKS_AHEAD_MAX;
    let mut start = file_start("big", "bob", b"");
    start.size = (ahead + 2) * chunk;
    start.sha256 = "00".repeat(32);
    node.send("FILE_START", payload(&Message::FileStart(start)));
    let key = socp::crypto::aead::new_key().unwrap();
    let wrapped = socp::wire::b64::encode(user_key("alice").public().wrap(key.as_ref()).unwrap());
    let data = vec![7u8; content::CHUNK_SIZE];
    // The last chunk first, then the first one, then one just inside the
    // window past it.
    for (i, index) in [ahead + 1, 0, ahead].into_iter().enumerate() {
        let mut c = content::seal_chunk("big", index, key.as_ref(), Some(&wrapped), &data).unwrap();
        c.msg_id = Some(format!("big-{i}"));
        node.send("FILE_CHUNK", payload(&Message::FileChunk(c)));
    }
    // Frames are handled in order: once this file is saved, so were they.
    send_small_file(&node, "small", "bob", b"after");
    alice.expect("file", is("file")).await;
    let len = partial_bytes(&alice.downloads());
    assert_eq!(len, (ahead + 1) * chunk, "the last chunk was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_mix_chunks_into_another_members_group_file() {
    // Review finding: chunks carry only the `file_id`, which every member
    // of the group sees, so Mallory's chunk under Bob's `file_id` was
    // written in place of his and the file failed its hash.
    let node = FakeNode::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = ClientProc::start(dir.path(), "alice", &node.url).await;
    let members = [("alice".to_owned(), user_key("alice").public().clone())];
    let (team_key, mut share) =
        content::new_group_share(&user_key("bob"), "bob", "group_team", &members).unwrap();
    share.msg_id = Some("share-1".into());
    node.send("GROUP_KEY_SHARE", payload(&Message::GroupKeyShare(share)));
    alice.expect("group_key", is("group_key")).await;
    let data: Vec<u8> = (0..content::CHUNK_SIZE + 10).map(|i| i as u8).collect();
    let mut start = file_start("teamfile", "bob", &data);
    (start.mode, start.group_id, start.user_id) =
        (FileMode::Group, Some("group_team".into()), None);
    start
        .extra
        .insert(socp::client::files::CHUNKS_NAME_SENDER.into(), json!(true));
    node.send("FILE_START", payload(&Message::FileStart(start)));
    let chunk = |index: u64, bytes: &[u8], from: Option<&str>, id: &str| {
        let mut c = content::seal_chunk("teamfile", index, &team_key, None, bytes).unwrap();
        c.msg_id = Some(id.into());
        if let Some(from) = from {
            c.extra.insert("from".into(), json!(from));
        }
        payload(&Message::FileChunk(c))
    };
    let (first, second) = data.split_at(content::CHUNK_SIZE);
    let junk = vec![0u8; content::CHUNK_SIZE];
    // Mallory's, first: one naming her, one naming no one.
    node.send("FILE_CHUNK", chunk(0, &junk, None, "m-0"));
    node.send("FILE_CHUNK", chunk(1, &[0u8; 10], Some("mallory"), "m-1"));
    node.send("FILE_CHUNK", chunk(0, first, Some("bob"), "b-0"));
    // Her end too: it does not finish Bob's file.
    let mut end = FileEnd {
        file_id: "teamfile".into(),
        user_id: None,
        msg_id: Some("m-end".into()),
        extra: Default::default(),
    };
    end.extra.insert("from".into(), json!("mallory"));
    node.send("FILE_END", payload(&Message::FileEnd(end.clone())));
    node.send("FILE_CHUNK", chunk(1, second, Some("bob"), "b-1"));
    end.msg_id = Some("b-end".into());
    end.extra.insert("from".into(), json!("bob"));
    node.send("FILE_END", payload(&Message::FileEnd(end)));
    let f = alice.expect("file", is("file")).await;
    assert_eq!(
        (f["from"].as_str(), f["group"].as_str()),
        (Some("bob"), Some("group_team"))
    );
    assert_eq!(std::fs::read(f["path"].as_str().unwrap()).unwrap(), data);
}
