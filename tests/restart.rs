//! kill -9 of a local and of the master: after a restart with the same
//! flags, links re-form by themselves, lookups answer with the same keys and
//! DMs flow again.

mod common;

use common::cluster::{connect, expect, expect_dm, lookup, user_key};
use common::procs::start_node;
use socp::content;
use socp::wire::messages::Message;

async fn dm_arrives(from: &mut socp::client::Session, to: &mut socp::client::Session, text: &str) {
    let key = lookup(from, to.user()).await.expect("found");
    assert_eq!(&key, user_key(to.user()).public());
    // The recipient may still be reconnecting; retry until it arrives.
    for _ in 0..40 {
        let dm = content::seal_dm(
            from.key(),
            from.user(),
            to.user(),
            &key,
            text.as_bytes(),
            socp::wire::now_ms(),
        )
        .unwrap();
        let recipient = to.user().to_owned();
        from.send(&recipient, &Message::MsgPrivate(dm))
            .await
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            loop {
                match to.recv().await {
                    Ok(Some((_, Message::UserDeliver(d)))) => return Some(d),
                    Ok(Some(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await;
        if let Ok(Some(d)) = got {
            let dm = d.to_private();
            assert_eq!(content::open_dm(to.key(), &dm).unwrap(), text.as_bytes());
            return;
        }
    }
    panic!(
        "DM {text:?} from {} never reached {}",
        from.user(),
        to.user()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_local_and_master_then_traffic_flows_again() {
    let root = tempfile::tempdir().unwrap();
    let mut master = start_node(root.path().join("master"), "master", "server-0", &[]);
    let master_arg = vec!["--master-url".to_owned(), master.url()];
    let mut l1 = start_node(root.path().join("l1"), "local", "server-1", &master_arg);
    let l2 = start_node(root.path().join("l2"), "local", "server-2", &master_arg);

    let mut alice = connect(&l1.url(), "alice").await;
    let mut bob = connect(&l2.url(), "bob").await;
    dm_arrives(&mut alice, &mut bob, "before any kill").await;

    // kill -9 the local Alice is on; she reconnects once it is back.
    l1.restart().unwrap();
    alice = connect(&l1.url(), "alice").await;
    dm_arrives(&mut alice, &mut bob, "after the local restarted").await;
    dm_arrives(&mut bob, &mut alice, "back to alice").await;

    // Carol registers at the master, then leaves.
    connect(&master.url(), "carol").await.close().await;

    // kill -9 the master: the locals redial it by themselves.
    master.kill9();
    master.restart().unwrap();
    dm_arrives(&mut alice, &mut bob, "after the master restarted").await;
    assert_eq!(
        &lookup(&mut bob, "alice").await.expect("found"),
        user_key("alice").public()
    );

    // A master restart keeps the directory: another key for carol is refused.
    let refused = socp::client::Session::connect(&master.url(), "carol", user_key("alice")).await;
    match refused {
        Err(socp::client::SessionError::Refused { code, .. }) => assert_eq!(code, "BAD_KEY"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("carol's id accepted another key after a master restart"),
    }
}

/// Custody rows wait in memory for a few ms in case the next hop takes the
/// frame first; an ack to the sender still means the frame is on a disk.
/// Bob never acknowledges, so after Alice's ack both nodes hold it on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_sender_was_acked_for_survives_kill_9_of_every_node() {
    let root = tempfile::tempdir().unwrap();
    let mut master = start_node(root.path().join("master"), "master", "server-0", &[]);
    let master_arg = vec!["--master-url".to_owned(), master.url()];
    let mut local = start_node(root.path().join("l1"), "local", "server-1", &master_arg);
    let mut bob = connect(&master.url(), "bob").await;
    let mut alice = connect(&local.url(), "alice").await;
    let key = lookup(&mut alice, "bob").await.expect("found");
    let mut dm = content::seal_dm(
        alice.key(),
        "alice",
        "bob",
        &key,
        b"on disk before the ack",
        socp::wire::now_ms(),
    )
    .unwrap();
    dm.msg_id = Some("durable-1".into());
    alice.send("bob", &Message::MsgPrivate(dm)).await.unwrap();
    expect(&mut bob, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
    expect(
        &mut alice,
        "ACK",
        |_, m| matches!(m, Message::Ack(a) if a.msg_ids.iter().any(|i| i == "durable-1")),
    )
    .await;
    master.kill9();
    local.kill9();
    drop(bob);
    master.restart().unwrap();
    local.restart().unwrap();
    let mut bob = connect(&master.url(), "bob").await;
    assert_eq!(
        expect_dm(&mut bob, &user_key("bob")).await,
        b"on disk before the ack"
    );
}
