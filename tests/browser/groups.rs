//! Groups with members of each kind: two browser users on two servers and
//! a terminal user. The owner creates, everyone writes, the owner rotates
//! without the terminal user (who then reads nothing new), and a
//! non-owner's share is refused and reported (PROTOCOL.md C10).

use std::time::Duration;

use serde_json::Value;

use crate::common::browser::{
    Browser, Driver, expect_message, page, profile, screenshot, send, sign_in,
};
use crate::common::clientproc::ClientProc;
use crate::two_servers;

/// Shares a (new) key for `group` with `members` from the page.
async fn share(b: &Browser, group: &str, members: &str) {
    let g = b.named("input", "Group").await;
    b.clear(&g).await;
    b.type_into(&g, group).await;
    let m = b.named("input", "Members").await;
    b.clear(&m).await;
    b.type_into(&m, members).await;
    b.click(&b.named("button", "Share group key").await).await;
}

fn group_msg(text: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == "group_msg" && e["text"] == text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_browser_and_terminal_users_is_made_used_rotated_and_kept_by_its_owner() {
    let (master, local) = two_servers().await;
    let root = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let alice = driver.browser(&profile(root.path(), "alice")).await;
    let bob = driver.browser(&profile(root.path(), "bob")).await;
    sign_in(&alice, &page(&master), "alice").await;
    sign_in(&bob, &page(&local), "bob").await;
    let mut carol = ClientProc::start(&root.path().join("carol"), "carol", &local.url()).await;
    master.wait_online(&["alice", "bob", "carol"]).await;

    // Alice (browser, master) makes the group: all three get its key.
    share(&alice, "group_team", "bob carol").await;
    alice
        .wait_text("#groups", "the group", |t| t.contains("group_team"))
        .await;
    bob.wait_text("#groups", "the group with its members", |t| {
        t.contains("group_team") && ["alice", "bob", "carol"].iter().all(|u| t.contains(u))
    })
    .await;
    let key = carol
        .expect("the group key", |e| e["event"] == "group_key")
        .await;
    assert_eq!(
        (
            key["group"].as_str(),
            key["from"].as_str(),
            key["verified"].as_bool()
        ),
        (Some("group_team"), Some("alice"), Some(true))
    );

    // Every member writes; every other member reads, verified.
    send(&alice, "group_team", "hello team, from alice").await;
    expect_message(&bob, &["alice", "group_team", "hello team, from alice"]).await;
    let m = carol
        .expect("alice's group message", group_msg("hello team, from alice"))
        .await;
    assert_eq!(
        (m["from"].as_str(), m["verified"].as_bool()),
        (Some("alice"), Some(true))
    );
    // Bob picks the group from the list rather than typing it.
    bob.click(&bob.named("button", "group_team").await).await;
    bob.type_into(&bob.named("input", "Message").await, "bob to the team")
        .await;
    bob.click(&bob.named("button", "Send").await).await;
    expect_message(&alice, &["bob", "group_team", "bob to the team"]).await;
    carol
        .expect("bob's group message", group_msg("bob to the team"))
        .await;
    carol.cmd("/gmsg group_team carol, from a terminal").await;
    let lines = ["carol", "group_team", "carol, from a terminal"];
    expect_message(&alice, &lines).await;
    let line = expect_message(&bob, &lines).await;
    assert!(!line.contains("unverified"), "{line}");

    // C10: only the owner changes the key. Bob's page refuses and says
    // why; carol's client refuses too; the group still works as before.
    share(&bob, "group_team", "bob").await;
    bob.wait_text("#errors", "the refusal", |t| {
        t.contains("group_team belongs to alice")
    })
    .await;
    carol.cmd("/gshare group_team carol").await;
    let refused = carol
        .expect("carol's refusal", |e| e["event"] == "error")
        .await;
    assert!(refused.to_string().contains("alice"), "{refused}");
    send(&bob, "group_team", "still alice's group").await;
    expect_message(&alice, &["bob", "still alice's group"]).await;
    carol
        .expect("the group still works", group_msg("still alice's group"))
        .await;
    screenshot(&bob, "group").await;

    // Alice rotates without carol: bob gets the new key and reads on;
    // carol reads nothing written after it.
    share(&alice, "group_team", "bob").await;
    bob.wait_text("#groups li", "the rotated group", |t| {
        t.contains("group_team") && !t.contains("carol")
    })
    .await;
    send(&alice, "group_team", "after carol left").await;
    expect_message(&bob, &["alice", "after carol left"]).await;
    send(&bob, "group_team", "bob, after carol left").await;
    expect_message(&alice, &["bob", "bob, after carol left"]).await;
    let later = carol.collect_for(Duration::from_millis(800)).await;
    assert!(
        !later.iter().any(|e| e["event"] == "group_msg"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.contains("after carol left"))),
        "carol read a message sent after she was removed: {later:?}"
    );
    // After a reload bob's page still lists the group and writes to it.
    bob.refresh().await;
    bob.wait_text("#status", "connected after reload", |t| {
        t.starts_with("connected to")
    })
    .await;
    bob.named("button", "group_team").await;
    send(&bob, "group_team", "bob, after a reload").await;
    expect_message(&alice, &["bob", "bob, after a reload"]).await;
    alice.quit().await;
    bob.quit().await;
}
