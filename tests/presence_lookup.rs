//! Presence on demand over real sockets: two locals with `--presence-cache`
//! hold the presence of the users their users address, not of everyone the
//! master knows; DMs work both ways; `USER_LIST` still lists the mesh.

mod common;

use common::cluster::{TestNode, connect, expect, send_dm, wait_until};
use socp::wire::messages::Message;

async fn list(session: &mut socp::client::Session) -> Vec<String> {
    session
        .send(
            socp::wire::ids::TO_SERVER,
            &Message::UserListReq(Default::default()),
        )
        .await
        .unwrap();
    let (_, msg) = expect(session, "USER_LIST", |_, m| {
        matches!(m, Message::UserList(_))
    })
    .await;
    let Message::UserList(l) = msg else {
        unreachable!()
    };
    l.users
}

async fn delivered(session: &mut socp::client::Session) {
    expect(session, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_locals_hold_only_the_presence_their_users_need() {
    let master = TestNode::master().await;
    let cache = |c: &mut socp::node::NodeConfig| c.limits.presence_cache = 100;
    let l1 = TestNode::local_with(&master.url(), cache).await;
    let l2 = TestNode::local_with(&master.url(), cache).await;
    l1.wait_linked(2).await;
    l2.wait_linked(2).await;
    let mut alice = connect(&l1.url(), "alice").await;
    let mut bob = connect(&l2.url(), "bob").await;
    let _carol = connect(&l2.url(), "carol").await;
    let _dave = connect(&master.url(), "dave").await;
    master.wait_online(&["alice", "bob", "carol", "dave"]).await;

    // Nobody addressed anyone yet: each local holds its own users only.
    assert_eq!(l1.status().await.online, ["alice"]);
    assert_eq!(l2.status().await.online, ["bob", "carol"]);

    // DMs both ways, twice (the first goes through the master, the next
    // over the direct link once the presence is known).
    for _ in 0..2 {
        send_dm(&mut alice, "bob", b"hi bob").await;
        delivered(&mut bob).await;
        send_dm(&mut bob, "alice", b"hi alice").await;
        delivered(&mut alice).await;
    }
    l1.wait_online(&["bob"]).await;
    l2.wait_online(&["alice"]).await;
    // The list is the mesh's, from the master.
    assert_eq!(list(&mut alice).await, ["alice", "bob", "carol", "dave"]);
    // Nobody on l1 addressed carol or dave; nobody on l2 addressed dave.
    let settled = wait_until(|| async {
        l1.status().await.online == ["alice", "bob"]
            && l2.status().await.online == ["alice", "bob", "carol"]
    })
    .await;
    assert!(
        settled,
        "l1 sees {:?}, l2 sees {:?}",
        l1.status().await.online,
        l2.status().await.online
    );
}
