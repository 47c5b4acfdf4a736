//! Abuse resistance (issue 11, PROTOCOL.md C10-C15): what one user, one
//! server or a flood can do to everyone else, tried against real nodes.

mod common;

use std::time::Duration;

use common::cluster::{TestNode, cached_key, connect, expect, send_dm, user_key};
use common::flood::{eventually, flood};
use common::raw::{Raw, link_as, signed};
use serde_json::json;
use socp::client::Session;
use socp::content;
use socp::crypto::PrivateKey;
use socp::node::MailboxLimits;
use socp::wire::ids::TO_SERVER;
use socp::wire::messages::{ErrorBody, Message};

/// Two users on two locals flood each other through the master at once:
/// every link carries heavy traffic both ways. A connection that cannot read
/// while a write is blocked wedges the link for good (both ends' buffers
/// full, each waiting for the other to read). Everything must arrive, and
/// the nodes must stop promptly even in the middle of a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_flooded_both_ways_keeps_flowing_and_stops_on_request() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local(&master.url()).await;
    master.wait_linked(2).await;
    let alice = connect(&l1.url(), "alice").await;
    let bob = connect(&l2.url(), "bob").await;
    master.wait_online(&["alice", "bob"]).await;
    l1.wait_online(&["bob"]).await;
    l2.wait_online(&["alice"]).await;

    const N: usize = 400;
    const BYTES: usize = 48 << 10; // ~64 KiB frames: 26 MB each way
    let a = flood(alice, "bob", N, BYTES, "a");
    let b = flood(bob, "alice", N, BYTES, "b");
    let all_in = eventually(Duration::from_secs(60), || {
        a.received() == N && b.received() == N
    })
    .await;
    let (sent_a, sent_b, got_a, got_b) = (a.sent(), b.sent(), a.received(), b.received());
    let ra = a.stop().await;
    let rb = b.stop().await;
    assert!(
        all_in,
        "after 60 s: alice sent {sent_a} and got {got_a} of {N}; bob sent {sent_b} and got {got_b} of {N}; errors {:?} {:?}",
        ra.errors, rb.errors
    );
    drop((master, l1, l2));
}

/// A node stops on request while links are saturated both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_stop_promptly_during_a_two_way_flood() {
    let mut master = TestNode::master().await;
    let mut l1 = TestNode::local(&master.url()).await;
    let mut l2 = TestNode::local(&master.url()).await;
    master.wait_linked(2).await;
    let alice = connect(&l1.url(), "alice").await;
    let bob = connect(&l2.url(), "bob").await;
    l1.wait_online(&["bob"]).await;
    l2.wait_online(&["alice"]).await;
    let a = flood(alice, "bob", 100_000, 48 << 10, "a");
    let b = flood(bob, "alice", 100_000, 48 << 10, "b");
    // Well into the flood (where a link that cannot read while it writes
    // had wedged, and its node then waited for it forever on shutdown).
    eventually(Duration::from_secs(15), || {
        a.received() >= 400 && b.received() >= 400
    })
    .await;
    for node in [&mut l1, &mut master, &mut l2] {
        let stopped = tokio::time::timeout(Duration::from_secs(10), node.stop()).await;
        assert!(
            stopped.is_ok(),
            "a node did not stop within 10 s of being asked during a flood"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// A master and a local, linked; Alice, Bob and Dave on the master and
/// Carol on the local, all online (the group tests' cast).
async fn group_mesh() -> (TestNode, TestNode, [Session; 4]) {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let alice = connect(&master.url(), "alice").await;
    let bob = connect(&master.url(), "bob").await;
    let carol = connect(&local.url(), "carol").await;
    let dave = connect(&master.url(), "dave").await;
    master.wait_online(&["alice", "bob", "carol", "dave"]).await;
    (master, local, [alice, bob, carol, dave])
}

/// A DM from `from` to `to` with this msg_id and a ciphertext of `pad`
/// bytes (nodes never open content, so the padding need not decrypt).
fn padded_dm(from: &Session, to: &str, msg_id: &str, pad: usize) -> Message {
    let mut dm = content::seal_dm(
        from.key(),
        from.user(),
        to,
        user_key(to).public(),
        b"hello",
        socp::wire::now_ms(),
    )
    .unwrap();
    if pad > 0 {
        dm.ciphertext = "A".repeat(pad);
    }
    dm.msg_id = Some(msg_id.to_owned());
    Message::MsgPrivate(dm)
}

/// Waits for an `ERROR` naming `msg_id`; fails if the node acknowledges
/// `msg_id` first (refused content is never also acknowledged).
async fn expect_refusal(s: &mut Session, msg_id: &str) -> ErrorBody {
    let (_, m) = expect(s, "an ERROR naming the msg_id", |_, m| match m {
        Message::Ack(a) => {
            assert!(
                !a.msg_ids.iter().any(|i| i == msg_id),
                "{msg_id} was acknowledged although it is refused"
            );
            false
        }
        Message::Error(e) => e.extra.get("msg_id").and_then(|v| v.as_str()) == Some(msg_id),
        _ => false,
    })
    .await;
    let Message::Error(e) = m else { unreachable!() };
    e
}

/// True if an `ACK` for `msg_id` arrives.
async fn acked(s: &mut Session, msg_id: &str) -> bool {
    expect(
        s,
        "an ACK",
        |_, m| matches!(m, Message::Ack(a) if a.msg_ids.iter().any(|i| i == msg_id)),
    )
    .await;
    true
}

/// A DM whose own frame is just under 1 MiB used to be acknowledged and then
/// grow past 1 MiB on its way out: the recipient was disconnected on every
/// redelivery, and across servers the link was. Now it is refused at once,
/// with its msg_id, never acknowledged, and what comes after it flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_cannot_fit_every_hop_is_refused_by_msg_id_and_blocks_nothing() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let mut carol = connect(&local.url(), "carol").await;
    master.wait_online(&["alice", "bob", "carol"]).await;
    let limit = socp::wire::MAX_FRAME_BYTES;
    for (to, id) in [("bob", "big-same-server"), ("carol", "big-cross-server")] {
        // Fill the frame to within a few hundred bytes of the WebSocket limit.
        let probe = padded_dm(&alice, to, id, 0).into_envelope("alice", to);
        let pad = limit - probe.to_json().len() - 1200;
        alice
            .send(to, &padded_dm(&alice, to, id, pad))
            .await
            .unwrap();
        let e = expect_refusal(&mut alice, id).await;
        assert_eq!(e.code, "TOO_LARGE", "{e:?}");
        assert!(e.detail.contains("limit"), "{e:?}");
    }
    // Content at the limit itself goes through, to both.
    let at_limit = socp::wire::MAX_CONTENT_FRAME_BYTES;
    for (to, id) in [("bob", "max-same-server"), ("carol", "max-cross-server")] {
        let probe = padded_dm(&alice, to, id, 0);
        let env = probe.into_envelope("alice", to);
        // Measured as a node passes it on: the payload plus 1 KiB of header.
        let pad = at_limit - env.to_json().len() - 1200;
        alice
            .send(to, &padded_dm(&alice, to, id, pad))
            .await
            .unwrap();
        assert!(acked(&mut alice, id).await);
    }
    let got = expect(&mut bob, "the DM at the limit", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    assert!(
        matches!(got.1, Message::UserDeliver(d) if d.msg_id.as_deref() == Some("max-same-server"))
    );
    let got = expect(&mut carol, "the DM at the limit", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    assert!(
        matches!(got.1, Message::UserDeliver(d) if d.msg_id.as_deref() == Some("max-cross-server"))
    );
    // And ordinary DMs behind them flow, on the same server and across.
    alice
        .send("bob", &padded_dm(&alice, "bob", "after-1", 0))
        .await
        .unwrap();
    alice
        .send("carol", &padded_dm(&alice, "carol", "after-2", 0))
        .await
        .unwrap();
    expect(
        &mut bob,
        "the next DM",
        |_, m| matches!(m, Message::UserDeliver(d) if d.msg_id.as_deref() == Some("after-1")),
    )
    .await;
    expect(
        &mut carol,
        "the next DM",
        |_, m| matches!(m, Message::UserDeliver(d) if d.msg_id.as_deref() == Some("after-2")),
    )
    .await;
}

/// An over-quota DM used to get `QUOTA_EXCEEDED` *and* an `ACK`: the client
/// emptied its outbox and the message was lost. Refused is never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_content_is_refused_by_msg_id_and_never_acknowledged() {
    let limits = MailboxLimits {
        max_frames: 1,
        ..Default::default()
    };
    let master = TestNode::master_with(|c| c.mailbox = limits).await;
    connect(&master.url(), "bob").await.close().await;
    master.wait_offline("bob").await;
    let mut alice = connect(&master.url(), "alice").await;
    alice
        .send("bob", &padded_dm(&alice, "bob", "first", 0))
        .await
        .unwrap();
    assert!(acked(&mut alice, "first").await);
    alice
        .send("bob", &padded_dm(&alice, "bob", "second", 0))
        .await
        .unwrap();
    let e = expect_refusal(&mut alice, "second").await;
    assert_eq!(e.code, "QUOTA_EXCEEDED");
    // Nothing acknowledges it later either.
    for (_, m) in common::cluster::drain(&mut alice, Duration::from_millis(600)).await {
        assert!(!matches!(m, Message::Ack(a) if a.msg_ids.iter().any(|i| i == "second")));
    }
}

/// A server that has joined the mesh used to be able to disconnect any
/// user with `ERROR {refused_user}`, and the master relayed it to the
/// user's server. Only the master may refuse a user, to its own link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cannot_disconnect_users_hosted_elsewhere() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&local.url(), "bob").await;
    master.wait_online(&["alice", "bob"]).await;
    let rogue_key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let rogue_id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&master.url(), &rogue_id, &rogue_key).await;
    rogue.expect_kind("PEER_HELLO_LINK").await;
    for (user, to) in [
        ("alice", master.id()),
        ("bob", local.id()),
        ("bob", "bob".to_owned()),
    ] {
        rogue
            .send(&signed(
                "ERROR",
                &rogue_id,
                &to,
                json!({"code": "BAD_KEY", "detail": "go away", "refused_user": user}),
                &rogue_key,
            ))
            .await;
    }
    // Once the master has handled all of it, DMs flow both ways.
    rogue.barrier(&rogue_id, &rogue_key).await;
    dm_flows(&mut alice, &mut bob).await;
    dm_flows(&mut bob, &mut alice).await;
    let online = master.status().await.online;
    assert!(online.contains(&"alice".to_owned()) && online.contains(&"bob".to_owned()));
}

/// A DM from `from` to `to` arrives.
async fn dm_flows(from: &mut Session, to: &mut Session) {
    let id = uuid::Uuid::new_v4().to_string();
    let dm = padded_dm(from, to.user(), &id, 0);
    let recipient = to.user().to_owned();
    from.send(&recipient, &dm).await.unwrap();
    expect(
        to,
        "the DM",
        |_, m| matches!(m, Message::UserDeliver(d) if d.msg_id.as_deref() == Some(id.as_str())),
    )
    .await;
}

/// Acknowledges `msg_id` as a client does once it has processed a frame.
async fn ack(s: &mut Session, msg_id: &str) {
    let m = Message::Ack(socp::wire::messages::Ack {
        msg_ids: vec![msg_id.to_owned()],
        extra: Default::default(),
    });
    s.send(TO_SERVER, &m).await.unwrap();
}

/// Content identity is (sender, msg_id): a DM that reuses the id of
/// another sender's pending DM to the same recipient used to be taken as a
/// duplicate, acknowledged and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_senders_msg_id_neither_suppresses_nor_is_suppressed() {
    let master = TestNode::master().await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let mut carol = connect(&master.url(), "carol").await;
    alice
        .send("bob", &padded_dm(&alice, "bob", "same-id", 0))
        .await
        .unwrap();
    let (_, first) = expect(&mut bob, "alice's DM", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    assert!(matches!(&first, Message::UserDeliver(d) if d.sender == "alice"));
    // Bob has not acknowledged it yet: carol's DM under the same id comes in.
    carol
        .send("bob", &padded_dm(&carol, "bob", "same-id", 0))
        .await
        .unwrap();
    assert!(acked(&mut carol, "same-id").await);
    ack(&mut bob, "same-id").await;
    let (_, second) = expect(&mut bob, "carol's DM", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    assert!(
        matches!(&second, Message::UserDeliver(d) if d.sender == "carol" && d.msg_id.as_deref() == Some("same-id"))
    );
    // Alice's receipt is for alice only.
    expect(
        &mut alice,
        "alice's receipt",
        |_, m| matches!(m, Message::Receipt(r) if r.msg_ids == ["same-id"]),
    )
    .await;
    ack(&mut bob, "same-id").await;
    expect(
        &mut carol,
        "carol's receipt",
        |_, m| matches!(m, Message::Receipt(r) if r.msg_ids == ["same-id"]),
    )
    .await;
}

/// One msg_id reused for several recipients across a link used to leak a
/// window slot per reuse: a few thousand such DMs stalled the link for
/// everyone on the local until it re-formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_msg_ids_leak_no_window_slots() {
    let master = TestNode::master().await;
    let local = TestNode::local_with(&master.url(), |c| {
        c.limits.user_rate = 1_000_000.0;
        c.limits.user_burst = 1_000_000.0;
    })
    .await;
    master.wait_linked(1).await;
    // The reused ids go to offline users: the master acknowledges them only
    // once written (after its custody hold), so every copy is in flight at
    // once.
    for u in ["bob", "erin"] {
        connect(&master.url(), u).await.close().await;
        master.wait_offline(u).await;
    }
    let mut dave = connect(&master.url(), "dave").await;
    let mut carol = connect(&local.url(), "carol").await;
    let mut alice = connect(&local.url(), "alice").await;
    local.wait_online(&["dave"]).await;
    let recipients = ["bob", "erin"];
    let dms: Vec<Message> = recipients
        .iter()
        .map(|to| padded_dm(&carol, to, "x", 0))
        .collect();
    // 4,200 ids, each reused for two recipients: 4,200 leaked slots would
    // exceed the link's window of 4,096.
    for i in 0..4200 {
        for (to, dm) in recipients.iter().zip(&dms) {
            let mut dm = dm.clone();
            if let Message::MsgPrivate(p) = &mut dm {
                p.msg_id = Some(format!("reused-{i}"));
            }
            carol.send(to, &dm).await.unwrap();
        }
    }
    // Once the local has taken them all, an honest DM from the same local
    // still gets through promptly.
    assert!(acked(&mut carol, "reused-4199").await);
    alice
        .send("dave", &padded_dm(&alice, "dave", "honest", 0))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match dave.recv().await {
                Ok(Some((_, Message::UserDeliver(d)))) if d.msg_id.as_deref() == Some("honest") => {
                    return true;
                }
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
    })
    .await;
    assert!(
        matches!(got, Ok(true)),
        "alice's DM did not arrive behind the reused ids"
    );
    // Once the master has acknowledged everything, no window slot is left
    // taken on the local (each reuse used to leak one for good, shrinking
    // the link's window for everyone until it re-formed).
    let freed = common::cluster::wait_until(|| async { local.status().await.in_flight == 0 }).await;
    assert!(
        freed,
        "{} window slots stay taken",
        local.status().await.in_flight
    );
}

/// A group key share from `creator` (fixture key) for `members`.
fn share(creator: &str, group: &str, members: &[&str], msg_id: &str) -> Message {
    let keys: Vec<(String, socp::crypto::PublicKey)> = members
        .iter()
        .map(|m| (m.to_string(), user_key(m).public().clone()))
        .collect();
    let (_, mut s) = content::new_group_share(&user_key(creator), creator, group, &keys).unwrap();
    s.msg_id = Some(msg_id.to_owned());
    Message::GroupKeyShare(s)
}

/// Waits for a GROUP_KEY_SHARE with this msg_id (failing after `WAIT`).
async fn expect_share(s: &mut Session, msg_id: &str) {
    expect(
        s,
        "the group key share",
        |_, m| matches!(m, Message::GroupKeyShare(g) if g.msg_id.as_deref() == Some(msg_id)),
    )
    .await;
}

/// PROTOCOL.md C10: a user who is not a group's owner used to be able to
/// share a new key for it (members adopted it, and the attacker read the
/// next message) and rewrite its membership at the master. Now only the
/// owner's shares change anything; forged signatures and unregistered
/// members are refused; each refusal names the share's msg_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_groups_owner_can_change_it_at_the_master() {
    let (master, local, [mut alice, mut bob, mut carol, mut dave]) = group_mesh().await;
    // Alice creates the group with Bob.
    alice
        .send("group_team", &share("alice", "group_team", &["bob"], "s1"))
        .await
        .unwrap();
    assert!(acked(&mut alice, "s1").await);
    expect_share(&mut bob, "s1").await;
    // Dave (on the master) and Carol (through a local) try to take it over.
    dave.send(
        "group_team",
        &share("dave", "group_team", &["bob", "dave"], "takeover-1"),
    )
    .await
    .unwrap();
    assert_eq!(
        expect_refusal(&mut dave, "takeover-1").await.code,
        "NOT_ALLOWED"
    );
    carol
        .send(
            "group_team",
            &share("carol", "group_team", &["bob", "carol"], "takeover-2"),
        )
        .await
        .unwrap();
    let (_, m) = expect(&mut carol, "the master's refusal", |_, m| {
        matches!(m, Message::Error(e) if e.extra.get("msg_id").and_then(|v| v.as_str()) == Some("takeover-2"))
    })
    .await;
    assert!(matches!(m, Message::Error(e) if e.code == "NOT_ALLOWED"));
    // Neither reached Bob: the master refused both before it routed the DM
    // Alice now sends him, and a share it had passed on would come first.
    send_dm(&mut alice, "bob", b"after the takeovers").await;
    let mut before = Vec::new();
    loop {
        let (_, m) = expect(&mut bob, "alice's DM", |_, m| {
            matches!(m, Message::UserDeliver(_) | Message::GroupKeyShare(_))
        })
        .await;
        match m {
            Message::GroupKeyShare(g) => before.extend(g.msg_id),
            _ => break,
        }
    }
    assert!(
        !before.iter().any(|id| id.starts_with("takeover")),
        "bob got {before:?}"
    );
    // Refused after the local handed it on: set aside (counted), and it
    // leaves the local's custody instead of being resent.
    assert!(master.status().await.dead_letters >= 1);
    assert!(common::cluster::wait_until(|| async { local.status().await.custody == 0 }).await);
    // A share whose signature does not verify with the creator's key.
    let Message::GroupKeyShare(mut forged) = share("alice", "group_new", &["bob"], "forged") else {
        unreachable!()
    };
    forged.creator = "dave".into();
    dave.send("group_new", &Message::GroupKeyShare(forged))
        .await
        .unwrap();
    assert_eq!(
        expect_refusal(&mut dave, "forged").await.code,
        "INVALID_SIG"
    );
    // Members must be registered users.
    let Message::GroupKeyShare(mut ghost) = share("alice", "group_ghosts", &["bob"], "ghosts")
    else {
        unreachable!()
    };
    ghost.shares[0].member = "nobody_here".into();
    ghost.content_sig = user_key("alice")
        .sign_b64(&content::share_signed_bytes(&ghost).unwrap())
        .unwrap();
    alice
        .send("group_ghosts", &Message::GroupKeyShare(ghost))
        .await
        .unwrap();
    assert_eq!(
        expect_refusal(&mut alice, "ghosts").await.code,
        "USER_NOT_FOUND"
    );
    // The owner's rotation still works, and the members are as she set them.
    alice
        .send(
            "group_team",
            &share("alice", "group_team", &["bob", "carol"], "s2"),
        )
        .await
        .unwrap();
    assert!(acked(&mut alice, "s2").await);
    expect_share(&mut carol, "s2").await;
}

/// A server used to be able to confirm content it never carried: a forged
/// `RECEIPT` made a client show "delivered" for a made-up id. Receipts are
/// taken only from the server a DM was handed to (or relayed by the master,
/// which checks the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cannot_forge_receipts() {
    let master = TestNode::master().await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut carol = connect(&local.url(), "carol").await;
    let mut bob = connect(&local.url(), "bob").await;
    master.wait_online(&["alice", "bob", "carol"]).await;
    let rogue_key = PrivateKey::load(&cached_key("server-5")).unwrap();
    let rogue_id = socp::wire::ids::new_local_server_id();
    let mut rogue = link_as(&master.url(), &rogue_id, &rogue_key).await;
    rogue.expect_kind("PEER_HELLO_LINK").await;
    // Alice's real DM to Bob is in flight (Bob has not acknowledged it).
    alice
        .send("bob", &padded_dm(&alice, "bob", "real", 0))
        .await
        .unwrap();
    expect(&mut bob, "alice's DM", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    for (user, to) in [("alice", master.id()), ("carol", local.id())] {
        rogue
            .send(&signed(
                "RECEIPT",
                &rogue_id,
                &to,
                json!({"user_id": user, "msg_ids": ["made-up", "real"], "status": "delivered"}),
                &rogue_key,
            ))
            .await;
    }
    // Nor can it say the DM failed, to the master's user or through the
    // master to another server's.
    for to in ["alice".to_owned(), "carol".to_owned(), local.id()] {
        rogue
            .send(&signed(
                "ERROR",
                &rogue_id,
                &to,
                json!({"code": "QUOTA_EXCEEDED", "detail": "forged", "msg_id": "real"}),
                &rogue_key,
            ))
            .await;
    }
    for s in [&mut alice, &mut carol] {
        for (_, m) in common::cluster::drain(s, Duration::from_millis(700)).await {
            assert!(
                !matches!(m, Message::Receipt(_) | Message::Error(_)),
                "a forged receipt or error reached {}: {m:?}",
                s.user()
            );
        }
    }
    // The real one comes when Bob has it.
    ack(&mut bob, "real").await;
    expect(
        &mut alice,
        "the real receipt",
        |_, m| matches!(m, Message::Receipt(r) if r.msg_ids == ["real"] && r.status == "delivered"),
    )
    .await;
}

/// One sender cannot take the whole node's room by spreading content over
/// many recipients: what one sender may have waiting is bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_is_held_to_its_own_quota_across_recipients() {
    let limits = MailboxLimits {
        max_sender_frames: 2,
        ..Default::default()
    };
    let master = TestNode::master_with(|c| c.mailbox = limits).await;
    for u in ["bob", "carol", "dave"] {
        connect(&master.url(), u).await.close().await;
        master.wait_offline(u).await;
    }
    let mut alice = connect(&master.url(), "alice").await;
    alice
        .send("bob", &padded_dm(&alice, "bob", "to-bob", 0))
        .await
        .unwrap();
    assert!(acked(&mut alice, "to-bob").await);
    alice
        .send("carol", &padded_dm(&alice, "carol", "to-carol", 0))
        .await
        .unwrap();
    assert!(acked(&mut alice, "to-carol").await);
    alice
        .send("dave", &padded_dm(&alice, "dave", "to-dave", 0))
        .await
        .unwrap();
    let e = expect_refusal(&mut alice, "to-dave").await;
    assert_eq!(e.code, "QUOTA_EXCEEDED");
    // Another sender is not affected.
    let mut erin = connect(&master.url(), "erin").await;
    erin.send("dave", &padded_dm(&erin, "dave", "erin-to-dave", 0))
        .await
        .unwrap();
    assert!(acked(&mut erin, "erin-to-dave").await);
}

/// The value of one counter in the node's metrics.
async fn counter(node: &TestNode, name: &str) -> u64 {
    match node.metric(name).await {
        Some(n) => n,
        None => panic!("{name} not in:\n{}", node.metrics().await),
    }
}

/// Two connections that stopped reading used to pin a gigabyte between
/// them and never be disconnected (and shutdown waited for them). A peer
/// that takes in nothing for the write timeout is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let master = TestNode::master_with(|c| {
        c.limits.write_timeout = Duration::from_secs(2);
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let bob = connect(&master.url(), "bob").await; // never reads
    let mut alice = connect(&master.url(), "alice").await;
    for i in 0..250 {
        alice
            .send(
                "bob",
                &padded_dm(&alice, "bob", &format!("fill-{i}"), 48 << 10),
            )
            .await
            .unwrap();
    }
    master.wait_offline("bob").await;
    assert!(counter(&master, "socp_write_timeouts_total").await >= 1);
    // Nothing was lost: what bob did not take waits for him.
    assert!(master.status().await.custody > 0);
    drop(bob);
    let mut bob = connect(&master.url(), "bob").await;
    expect(
        &mut bob,
        "the first DM again",
        |_, m| matches!(m, Message::UserDeliver(d) if d.msg_id.as_deref() == Some("fill-0")),
    )
    .await;
}

/// Refusing an unauthenticated peer used to cost an RSA signature each
/// (105 garbage connections a second used 70% of a core): no private-key
/// work is done for a peer that has proved nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_unauthenticated_peers_costs_no_private_key_operation() {
    let master = TestNode::master_with(|c| {
        c.limits.hello_timeout = Duration::from_secs(1);
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let before = counter(&master, "socp_rsa_operations_total").await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(Raw::connect(&master.url()).await);
    }
    for i in 0..50 {
        let mut raw = Raw::connect(&master.url()).await;
        raw.send_text(format!("garbage {i}")).await;
        assert!(!raw.expect_error().await.is_empty());
        assert!(raw.closed().await);
    }
    for s in &mut silent {
        assert_eq!(s.expect_error().await, "TIMEOUT");
    }
    assert_eq!(counter(&master, "socp_rsa_operations_total").await, before);
    // A signed hello replayed again and again: refused by the router, still
    // without a signature of ours.
    let alice = user_key("alice");
    let hello = signed(
        "USER_HELLO",
        "alice",
        TO_SERVER,
        common::raw::hello_payload("alice", alice.public().to_b64()),
        &alice,
    );
    let mut first = Raw::connect(&master.url()).await;
    first.send(&hello).await;
    first.expect_kind("USER_WELCOME").await;
    drop(first);
    master.wait_offline("alice").await;
    let before = counter(&master, "socp_rsa_operations_total").await;
    for _ in 0..10 {
        let mut replay = Raw::connect(&master.url()).await;
        replay.send(&hello).await;
        assert_eq!(replay.expect_error().await, "INVALID_SIG");
        assert!(replay.closed().await);
    }
    assert_eq!(counter(&master, "socp_rsa_operations_total").await, before);
}

/// Connections are capped for the whole node as well as per address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_global_cap_are_refused_and_others_served() {
    let master = TestNode::master_with(|c| {
        c.limits.max_conns = 3;
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let _held = Raw::connect(&master.url()).await;
    // The fourth is closed before its WebSocket handshake: at the cap a
    // refusal must cost next to nothing.
    let fourth = tokio_tungstenite::connect_async(master.url()).await;
    assert!(fourth.is_err(), "a fourth connection was served");
    assert!(counter(&master, "socp_connections_refused_total").await >= 1);
    dm_flows(&mut alice, &mut bob).await;
}

/// On a mac-v1 session, a frame refused at parse time used to leave the
/// node's sequence behind, so the next good frame closed the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_frame_keeps_a_session_in_step() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let master = TestNode::master().await;
    connect(&master.url(), "bob").await.close().await;
    let alice = connect(&master.url(), "alice").await;
    let dm = padded_dm(&alice, "bob", "after-garbage", 0);
    let (mut ws, mac, _) = alice.into_parts();
    let (mut seal, mut open) = mac.expect("a mac-v1 session").split();
    // Sealed as the next frame, then given a payload with no canonical form
    // (a float): the node cannot parse it, but it names the next seq.
    let mut env =
        socp::wire::Envelope::new("USER_LIST_REQ", "alice", TO_SERVER, Default::default());
    let sealed = seal.seal_to_json(&mut env).unwrap();
    let mut raw: serde_json::Value = serde_json::from_str(&sealed).unwrap();
    raw["payload"] = json!({"f": 1.5});
    ws.send(WsMessage::text(raw.to_string())).await.unwrap();
    // The next good frame (a DM) is taken, on the same session.
    let mut env = dm.into_envelope("alice", "bob");
    let text = seal.seal_to_json(&mut env).unwrap();
    ws.send(WsMessage::text(text)).await.unwrap();
    let (mut refused, mut listed) = (false, false);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(WsMessage::Text(t))) = ws.next().await {
            let env = socp::wire::Envelope::parse(t.as_str()).unwrap();
            open.open(&env).expect("the node's frames stay in sequence");
            match env.kind.as_str() {
                "ERROR" => refused = true,
                "ACK" if env.payload["msg_ids"] == json!(["after-garbage"]) => listed = true,
                _ => {}
            }
            if refused && listed {
                return;
            }
        }
    })
    .await;
    assert!(refused, "the unparsable frame was not refused");
    assert!(listed, "the session was closed after an unparsable frame");
}

/// A client drops duplicates by (sender, msg_id): a DM from another sender
/// that reuses an id it has seen is still shown (it used to be dropped as a
/// duplicate, so one user could suppress another's messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_shows_another_senders_dm_under_a_seen_id() {
    let master = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = common::clientproc::ClientProc::start(dir.path(), "bob", &master.url()).await;
    let mut alice = connect(&master.url(), "alice").await;
    let mut carol = connect(&master.url(), "carol").await;
    alice
        .send("bob", &padded_dm(&alice, "bob", "shared-id", 0))
        .await
        .unwrap();
    let first = bob.expect("alice's DM", |e| e["event"] == "dm").await;
    assert_eq!(first["from"], "alice");
    carol
        .send("bob", &padded_dm(&carol, "bob", "shared-id", 0))
        .await
        .unwrap();
    let second = bob.expect("carol's DM", |e| e["event"] == "dm").await;
    assert_eq!(second["from"], "carol", "{second}");
    // A true duplicate (alice's again) is still dropped.
    alice
        .send("bob", &padded_dm(&alice, "bob", "shared-id", 0))
        .await
        .unwrap();
    assert!(
        bob.drain(Duration::from_millis(700))
            .await
            .iter()
            .all(|e| e["event"] != "dm"),
        "a duplicate was shown twice"
    );
}

/// Across servers, content a local has taken and the master finds over a
/// quota is set aside at the master (counted), its sender is told with the
/// msg_id, and the local lets go of it: refused content must not pile up
/// where it came from (an attacker flooding offline ids would otherwise fill
/// the local for everyone, as `socp-bench --attacks` showed when the local
/// kept such content to retry it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_over_a_quota_further_on_is_set_aside_and_its_sender_told() {
    let limits = MailboxLimits {
        max_frames: 1,
        ..Default::default()
    };
    let master = TestNode::master_with(|c| c.mailbox = limits).await;
    let local = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    connect(&master.url(), "bob").await.close().await;
    master.wait_offline("bob").await;
    let mut alice = connect(&local.url(), "alice").await;
    for id in ["one", "two"] {
        alice
            .send("bob", &padded_dm(&alice, "bob", id, 0))
            .await
            .unwrap();
    }
    // Both taken by the local; "two" refused further on (in either order).
    let (mut acks, mut refusal) = (Vec::new(), None);
    expect(&mut alice, "two ACKs and the master's refusal", |_, m| {
        match m {
            Message::Ack(a) => acks.extend(a.msg_ids.iter().cloned()),
            Message::Error(e) if e.extra.get("msg_id").and_then(|v| v.as_str()) == Some("two") => {
                refusal = Some(e.code.clone())
            }
            _ => {}
        }
        acks.len() >= 2 && refusal.is_some()
    })
    .await;
    assert_eq!(refusal.as_deref(), Some("QUOTA_EXCEEDED"));
    assert!(master.status().await.dead_letters >= 1);
    assert!(common::cluster::wait_until(|| async { local.status().await.custody == 0 }).await);
    let mut bob = connect(&master.url(), "bob").await;
    let got = common::cluster::drain(&mut bob, Duration::from_millis(800)).await;
    let ids: Vec<String> = got
        .iter()
        .filter_map(|(_, m)| match m {
            Message::UserDeliver(d) => d.msg_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(ids, ["one"]);
}

/// Content is measured as servers pass it on: canonical JSON escapes every
/// control and non-ASCII character (a DEL grows six-fold), so a frame of
/// 200 KB of DEL used to be taken, grow past 1 MiB on its way out and stick.
/// And a msg_id is bounded: ids travel many to an ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_grows_on_the_way_or_has_a_huge_id_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let master = TestNode::master().await;
    let alice = connect(&master.url(), "alice").await;
    let mut bob = connect(&master.url(), "bob").await;
    let Message::MsgPrivate(mut dm) = padded_dm(&alice, "bob", "dels", 0) else {
        unreachable!()
    };
    dm.extra
        .insert("note".into(), json!("\u{7f}".repeat(200_000)));
    let huge_id = padded_dm(&alice, "bob", &"x".repeat(600_000), 0);
    let after = padded_dm(&alice, "bob", "after", 0);
    let (mut ws, mac, _) = alice.into_parts();
    let (mut seal, mut open) = mac.expect("a mac-v1 session").split();
    for m in [Message::MsgPrivate(dm), huge_id, after] {
        // MAC'd over the canonical form, sent raw (a DEL is one byte on
        // the wire, six once a node passes it on).
        let mut env = m.into_envelope("alice", "bob");
        seal.seal(&mut env).unwrap();
        ws.send(WsMessage::text(env.to_json())).await.unwrap();
    }
    let (mut too_large, mut bad_id, mut acked_after) = (false, false, false);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(WsMessage::Text(t))) = ws.next().await {
            let env = socp::wire::Envelope::parse(t.as_str()).unwrap();
            open.open(&env).unwrap();
            match Message::from_envelope(&env) {
                Ok(Message::Error(e)) if e.code == "TOO_LARGE" => too_large = true,
                Ok(Message::Error(e)) if e.code == "BAD_FRAME" && e.detail.contains("msg_id") => {
                    bad_id = true
                }
                Ok(Message::Ack(a)) => {
                    assert!(
                        !a.msg_ids.iter().any(|i| i == "dels"),
                        "the DEL frame was taken"
                    );
                    acked_after |= a.msg_ids.iter().any(|i| i == "after");
                }
                _ => {}
            }
            if too_large && bad_id && acked_after {
                return;
            }
        }
    })
    .await;
    assert!(
        too_large,
        "the frame that grows past the limit was not refused"
    );
    assert!(bad_id, "the huge msg_id was not refused");
    assert!(acked_after, "the DM behind them was not taken");
    expect(
        &mut bob,
        "the DM behind them",
        |_, m| matches!(m, Message::UserDeliver(d) if d.msg_id.as_deref() == Some("after")),
    )
    .await;
}

/// A user used to be able to name a group frame's fan-out (`recipients`):
/// the master delivered to whoever it named, members or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_name_a_group_frames_recipients() {
    let (_master, _local, [mut alice, mut bob, mut carol, mut dave]) = group_mesh().await;
    alice
        .send(
            "group_team",
            &share("alice", "group_team", &["bob", "carol"], "s1"),
        )
        .await
        .unwrap();
    expect_share(&mut carol, "s1").await;
    let (key, _) = (b"k".repeat(32), ());
    let mut m = content::seal_group(
        &user_key("carol"),
        "carol",
        "group_team",
        &key,
        b"hi",
        socp::wire::now_ms(),
    )
    .unwrap();
    m.msg_id = Some("g1".into());
    m.extra.insert("recipients".into(), json!(["dave"]));
    carol
        .send("group_team", &Message::MsgGroup(m))
        .await
        .unwrap();
    expect(
        &mut bob,
        "the group message",
        |_, m| matches!(m, Message::MsgGroup(g) if g.msg_id.as_deref() == Some("g1")),
    )
    .await;
    for (_, m) in common::cluster::drain(&mut dave, Duration::from_millis(700)).await {
        assert!(
            !matches!(m, Message::MsgGroup(_)),
            "a non-member named by the sender got {m:?}"
        );
    }
}
