//! Presence on demand (`presence-lookup-v1`): a local holds the presence of
//! the users its users address, learnt from the master when first needed;
//! the first DM to an unknown user goes through the master, the next ones
//! direct; what it evicts it unsubscribes; the master's table is bounded;
//! a local that holds everyone's (a reference one) is served as before.

use serde_json::{Map, Value, json};

use super::{Mesh, all_handed_on};
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;

/// A master and three locals that hold at most `cache` remote users each,
/// linked to each other as the master announces them.
fn lookup_locals(seed: u64, cache: usize) -> Mesh {
    Mesh::new(seed)
        .discover()
        .master("M")
        .node("A", false, |c| c.presence_cache = cache)
        .node("B", false, |c| c.presence_cache = cache)
        .node("C", false, |c| c.presence_cache = cache)
        .link("A", "M")
        .link("B", "M")
        .link("C", "M")
}

/// The users whose `USER_ADVERTISE` `to` received from `from`.
fn advertised(mesh: &Mesh, from: &str, to: &str) -> Vec<String> {
    mesh.carried_frames(from, to, Kind::UserAdvertise)
        .iter()
        .filter_map(|f| f.payload["user_id"].as_str().map(str::to_owned))
        .collect()
}

fn everyone(mesh: &mut Mesh) {
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.user("carol", "C");
    mesh.user("dave", "M");
    mesh.run();
}

#[test]
fn a_local_holds_presence_only_for_users_its_users_addressed() {
    let mut mesh = lookup_locals(90, 100);
    everyone(&mut mesh);
    // The master knows everyone; each local only its own users.
    assert_eq!(mesh.online("M"), ["alice", "bob", "carol", "dave"]);
    for (node, own) in [("A", "alice"), ("B", "bob"), ("C", "carol")] {
        assert_eq!(mesh.online(node), [own], "as {node} sees it");
        assert!(
            advertised(&mesh, "M", node).is_empty(),
            "M told {node} nothing"
        );
    }
    mesh.dm("alice", "bob", "hi");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: hi"]);
    assert_eq!(mesh.online("A"), ["alice", "bob"]);
    assert_eq!(mesh.online("C"), ["carol"], "C heard of nobody");
    assert_eq!(mesh.online("B"), ["alice", "bob"], "B: who wrote to bob");
    assert_eq!(advertised(&mesh, "M", "A"), ["bob"]);
    assert!(mesh.router("A").presence.len() == 1);
    // Looking up a key is addressing its owner too.
    mesh.lookup("alice", "carol");
    mesh.run();
    assert_eq!(mesh.online("A"), ["alice", "bob", "carol"]);
    // A local in full mode beside them still learns everyone.
    let mut mixed = Mesh::new(91)
        .discover()
        .master("M")
        .node("A", false, |c| c.presence_cache = 100)
        .local("B")
        .local("C")
        .link("A", "M")
        .link("B", "M")
        .link("C", "M");
    everyone(&mut mixed);
    assert_eq!(mixed.online("B"), ["alice", "bob", "carol", "dave"]);
    assert_eq!(mixed.online("A"), ["alice"]);
}

#[test]
fn the_first_dm_to_an_unknown_user_goes_via_the_master_the_next_ones_direct() {
    let mut mesh = lookup_locals(92, 100);
    everyone(&mut mesh);
    let first = mesh.dm("alice", "bob", "first");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first"]);
    assert_eq!(
        mesh.carried("A", "M", Kind::PeerDeliver),
        1,
        "via the master"
    );
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 0);
    let second = mesh.dm("alice", "bob", "second");
    mesh.dm("alice", "dave", "to the master's own user");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first", "alice: second"]);
    assert_eq!(mesh.delivered("dave"), ["alice: to the master's own user"]);
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 1, "direct");
    assert_eq!(mesh.receipts("alice", "delivered").len(), 3);
    // B learnt where alice is from her DM: the reply goes direct.
    mesh.dm("bob", "alice", "reply");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["bob: reply"]);
    assert_eq!(mesh.carried("B", "A", Kind::PeerDeliver), 1);
    assert_eq!(mesh.carried("B", "M", Kind::PeerDeliver), 0);
    assert!(mesh.receipts("alice", "delivered").contains(&first));
    assert!(mesh.receipts("alice", "delivered").contains(&second));
    assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]));
}

#[test]
fn presence_of_a_subscribed_user_follows_them_and_no_one_else_is_relayed() {
    let mut mesh = lookup_locals(93, 100);
    everyone(&mut mesh);
    mesh.dm("alice", "bob", "hi");
    mesh.run();
    mesh.disconnect("bob");
    mesh.disconnect("carol");
    mesh.run();
    assert_eq!(mesh.online("A"), ["alice"], "bob left");
    let removes = mesh.carried_frames("M", "A", Kind::UserRemove);
    assert!(removes.iter().all(|f| f.payload["user_id"] == "bob"));
    // bob comes back on another local: A hears of it and reaches him there.
    mesh.connect("bob", "C");
    mesh.run();
    assert_eq!(mesh.online("A"), ["alice", "bob"]);
    mesh.dm("alice", "bob", "found you");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: hi", "alice: found you"]);
    assert_eq!(mesh.carried("A", "C", Kind::PeerDeliver), 1, "direct to C");
    assert!(!advertised(&mesh, "M", "A").contains(&"carol".to_owned()));
}

#[test]
fn an_evicted_user_is_unsubscribed() {
    let mut mesh = lookup_locals(94, 1);
    everyone(&mut mesh);
    let a = mesh.id("A");
    mesh.dm("alice", "bob", "one");
    mesh.run();
    assert_eq!(mesh.router("M").subs.count(&a), 1);
    mesh.dm("alice", "carol", "two");
    mesh.run();
    assert_eq!(mesh.online("A"), ["alice", "carol"], "bob made room");
    assert_eq!(mesh.router("M").subs.count(&a), 1);
    assert!(mesh.router("M").subs.has(&a, "carol"));
    assert_eq!(mesh.router("A").presence.len(), 1);
    // bob's comings and goings no longer reach A.
    let before =
        mesh.carried("M", "A", Kind::UserRemove) + mesh.carried("M", "A", Kind::UserAdvertise);
    mesh.disconnect("bob");
    mesh.run();
    mesh.connect("bob", "B");
    mesh.run();
    let after =
        mesh.carried("M", "A", Kind::UserRemove) + mesh.carried("M", "A", Kind::UserAdvertise);
    assert_eq!(before, after);
    // He is still reached (through the master, then subscribed again).
    mesh.dm("alice", "bob", "three");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: one", "alice: three"]);
    assert_eq!(mesh.online("A"), ["alice", "bob"]);
}

#[test]
fn with_the_master_down_cached_users_are_still_reached_directly() {
    let mut mesh = lookup_locals(95, 100);
    everyone(&mut mesh);
    mesh.dm("alice", "bob", "before");
    mesh.dm("bob", "alice", "hello");
    mesh.run();
    for local in ["A", "B", "C"] {
        mesh.cut(local, "M");
    }
    mesh.run();
    let direct = mesh.dm("alice", "bob", "still here");
    mesh.dm("bob", "alice", "me too");
    let queued = mesh.dm("alice", "carol", "for later");
    mesh.run();
    assert_eq!(
        mesh.delivered("bob"),
        ["alice: before", "alice: still here"]
    );
    assert_eq!(mesh.delivered("alice"), ["bob: hello", "bob: me too"]);
    assert_eq!(
        mesh.custody("A"),
        1,
        "carol was never looked up: waits for M"
    );
    for local in ["A", "B", "C"] {
        mesh.heal(local, "M");
    }
    mesh.run();
    assert_eq!(mesh.delivered("carol"), ["alice: for later"]);
    assert!(mesh.receipts("alice", "delivered").contains(&direct));
    assert!(mesh.receipts("alice", "delivered").contains(&queued));
    // The master link is back: A subscribed again to whom it holds.
    assert!(mesh.router("M").subs.has(&mesh.id("A"), "bob"));
    assert!(all_handed_on(&mesh, &["A", "B", "C", "M"]));
}

#[test]
fn user_list_at_a_lookup_local_is_the_masters_or_says_it_is_partial() {
    let mut mesh = lookup_locals(96, 100);
    everyone(&mut mesh);
    mesh.send_frame("alice", Kind::UserListReq, "server_*", Map::new());
    mesh.run();
    let lists = mesh.frames("alice", Kind::UserList);
    let last = lists.last().expect("a USER_LIST");
    assert_eq!(
        last.payload["users"],
        json!(["alice", "bob", "carol", "dave"])
    );
    assert_eq!(last.payload.get("partial"), None);
    mesh.cut("A", "M");
    mesh.run();
    mesh.advance(2_000);
    mesh.send_frame("alice", Kind::UserListReq, "server_*", Map::new());
    mesh.run();
    let lists = mesh.frames("alice", Kind::UserList);
    let last = lists.last().expect("a USER_LIST");
    assert_eq!(last.payload["users"], json!(["alice"]));
    assert_eq!(last.payload["partial"], Value::Bool(true));
}

#[test]
fn subscriptions_from_a_full_presence_local_or_beyond_a_batch_are_ignored() {
    let mut mesh = Mesh::new(97)
        .master("M")
        .node("A", false, |c| c.presence_cache = 100)
        .local("B")
        .link("A", "M")
        .link("B", "M");
    let ids: Vec<String> = (0..super::super::lookup::SUBSCRIBE_BATCH + 10)
        .map(|i| format!("u{i}"))
        .collect();
    let Value::Object(payload) = json!({ "subscribe": ids }) else {
        unreachable!()
    };
    mesh.inject(
        "B",
        "M",
        Kind::PresenceSubscribe,
        &mesh.id("M"),
        payload.clone(),
    );
    mesh.inject("A", "M", Kind::PresenceSubscribe, &mesh.id("M"), payload);
    mesh.run();
    assert_eq!(mesh.router("M").subs.count(&mesh.id("B")), 0);
    assert_eq!(
        mesh.router("M").subs.count(&mesh.id("A")),
        super::super::lookup::SUBSCRIBE_BATCH
    );
}

#[test]
fn a_second_session_at_a_lookup_local_is_refused_by_the_master() {
    let mut mesh = lookup_locals(98, 100);
    mesh.user("alice", "A");
    mesh.user("bob", "B");
    mesh.twin("alice-again", "alice");
    mesh.connect("alice-again", "B");
    mesh.run();
    // B could not know: it is told by the master, after its welcome.
    assert_eq!(mesh.errors("alice-again"), [ErrorCode::NameInUse]);
    assert!(!mesh.connected("alice-again"));
    mesh.dm("bob", "alice", "still there?");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["bob: still there?"]);
    assert!(mesh.delivered("alice-again").is_empty());
    assert_eq!(mesh.online("M"), ["alice", "bob"]);
}

#[test]
fn a_restarted_local_subscribes_again_to_what_it_held() {
    let mut mesh = lookup_locals(99, 100);
    everyone(&mut mesh);
    mesh.dm("alice", "bob", "hi");
    mesh.run();
    mesh.crash("A");
    mesh.run();
    mesh.advance(5_000);
    // bob's entry came back from A's disk as its cache, and the master
    // was asked again.
    assert_eq!(mesh.router("A").cache.users(), ["bob"]);
    assert!(mesh.router("M").subs.has(&mesh.id("A"), "bob"));
    assert!(mesh.router("A").presence.get("bob").is_some_and(|p| p.live));
    assert_eq!(mesh.router("A").presence.len(), 1);
}

/// Review finding: a second session at another local, welcomed there and
/// then refused by the master, made a directly linked local take its
/// claim over the user's live presence, then drop the user altogether
/// when the refused session's server withdrew it.
#[test]
fn a_refused_second_session_does_not_move_the_user_away_at_a_linked_local() {
    let mut mesh = lookup_locals(100, 100);
    everyone(&mut mesh);
    mesh.dm("carol", "alice", "hi");
    mesh.run();
    assert_eq!(mesh.delivered("alice"), ["carol: hi"]);
    let a = mesh.id("A");
    let held_at = |mesh: &Mesh| {
        mesh.router("C")
            .presence
            .get("alice")
            .map(|p| p.location.clone())
    };
    assert_eq!(held_at(&mesh).as_deref(), Some(a.as_str()));
    mesh.twin("alice-again", "alice");
    mesh.connect("alice-again", "B");
    mesh.run();
    assert_eq!(mesh.errors("alice-again"), [ErrorCode::NameInUse]);
    // B did tell C (a directly linked peer) before the master refused it.
    assert!(advertised(&mesh, "B", "C").contains(&"alice".to_owned()));
    assert_eq!(held_at(&mesh).as_deref(), Some(a.as_str()));
    mesh.dm("carol", "alice", "still there?");
    mesh.run();
    assert_eq!(
        mesh.delivered("alice"),
        ["carol: hi", "carol: still there?"]
    );
}

/// Review finding: a user looking up made-up ids by the thousand pushed
/// real correspondents out of its local's cache (and spent the master's
/// subscription rate). Only users the directory knows are subscribed.
#[test]
fn made_up_ids_do_not_push_real_correspondents_out_of_the_cache() {
    let mut mesh = lookup_locals(101, 4);
    everyone(&mut mesh);
    mesh.dm("alice", "bob", "hi");
    mesh.run();
    assert!(mesh.router("A").cache.contains("bob"));
    for i in 0..20 {
        mesh.lookup("alice", &format!("nobody{i}"));
    }
    mesh.run();
    assert!(
        mesh.router("A").cache.contains("bob"),
        "{:?}",
        mesh.router("A").cache.users()
    );
    assert_eq!(mesh.router("A").cache.users(), ["bob"]);
    mesh.lookup("alice", "carol");
    mesh.run();
    assert!(mesh.router("A").cache.contains("carol"));
    assert!(mesh.router("M").subs.has(&mesh.id("A"), "carol"));
}

/// Review finding (the sticky-path trap): a recipient whose first DMs went
/// through the master kept that path while any of them was unconfirmed,
/// so a sender that never pauses for receipts kept its whole stream on the
/// master. Now new DMs wait (briefly) for the master's path to drain, then
/// go direct, in order.
#[test]
fn a_steady_stream_leaves_the_master_path_once_it_has_drained() {
    let mut mesh = lookup_locals(102, 100);
    everyone(&mut mesh);
    let n = 500;
    // alice writes to bob every 2 ms for a second, never pausing.
    for i in 0..n {
        mesh.dm("alice", "bob", &format!("m{i:03}"));
        mesh.advance(2);
    }
    mesh.run();
    let want: Vec<String> = (0..n).map(|i| format!("alice: m{i:03}")).collect();
    assert_eq!(mesh.delivered("bob"), want, "every DM, once, in order");
    let via_master = mesh.carried("A", "M", Kind::PeerDeliver);
    assert!(
        via_master < n / 10,
        "{via_master} of {n} DMs went through the master"
    );
    assert_eq!(mesh.receipts("alice", "delivered").len(), n);
}

/// The wait has an end: when the master's path does not drain (here the
/// first DM's receipt is lost), what waited follows it that way after
/// `sticky::BARRIER_MS`, in order, and nothing is lost.
#[test]
fn dms_that_wait_too_long_for_the_masters_path_take_it_after_all() {
    let mut mesh = lookup_locals(103, 100);
    everyone(&mut mesh);
    mesh.drop_next("M", "A", Kind::Receipt);
    mesh.dm("alice", "bob", "first");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first"]);
    assert_eq!(mesh.carried("A", "M", Kind::PeerDeliver), 1);
    mesh.dm("alice", "bob", "second");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first"], "second waits");
    mesh.advance(crate::node::router::sticky::BARRIER_MS + 100);
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first", "alice: second"]);
    assert_eq!(mesh.carried("A", "M", Kind::PeerDeliver), 2);
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 0);
    assert_eq!(mesh.custody("A"), 0);
}

/// A sender who logs off before the receipts of their DMs via the master
/// come back: the path drains all the same (their node recorded the DMs),
/// so the next sender's DMs to the same user go direct at once instead of
/// waiting for ten minutes of master paths (review of the wait).
#[test]
fn a_sender_gone_offline_still_frees_the_masters_path_for_the_others() {
    let mut mesh = lookup_locals(104, 100);
    everyone(&mut mesh);
    mesh.user("erin", "A");
    mesh.run();
    mesh.hold("B", "M");
    mesh.dm("alice", "bob", "first");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first"]);
    mesh.disconnect("alice");
    mesh.run();
    mesh.release("B", "M");
    mesh.run();
    mesh.dm("erin", "bob", "no wait");
    mesh.run();
    assert_eq!(mesh.delivered("bob"), ["alice: first", "erin: no wait"]);
    assert_eq!(mesh.carried("A", "B", Kind::PeerDeliver), 1, "direct");
}
