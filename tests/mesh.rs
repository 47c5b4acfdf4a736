//! A mesh of real nodes over real sockets: directory lookups, presence,
//! DMs, groups and files across servers.

mod common;

use std::collections::HashMap;

use common::cluster::{TestNode, connect, drain, expect, lookup, send_dm, user_key};
use socp::content;
use socp::crypto::PublicKey;
use socp::wire::messages::Message;
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_servers_every_user_reaches_every_other() {
    let master = TestNode::master().await;
    let mut locals = Vec::new();
    for _ in 0..3 {
        locals.push(TestNode::local(&master.url()).await);
    }
    master.wait_linked(3).await;
    let users = ["alice", "bob", "carol", "dave"];
    let urls = [
        master.url(),
        locals[0].url(),
        locals[1].url(),
        locals[2].url(),
    ];
    let mut sessions = Vec::new();
    for (user, url) in users.iter().zip(&urls) {
        sessions.push(connect(url, user).await);
    }
    for node in std::iter::once(&master).chain(&locals) {
        node.wait_online(&users).await;
    }
    // USER_LIST on every server shows all four.
    for s in &mut sessions {
        assert_eq!(list(s).await, users.map(String::from).to_vec());
    }
    // Every user gets every other user's key by lookup.
    let mut keys: HashMap<(usize, usize), PublicKey> = HashMap::new();
    for i in 0..4 {
        for j in 0..4 {
            if i != j {
                let key = lookup(&mut sessions[i], users[j]).await.expect("found");
                assert_eq!(
                    &key,
                    user_key(users[j]).public(),
                    "{} sees a wrong key for {}",
                    users[i],
                    users[j]
                );
                keys.insert((i, j), key);
            }
        }
        assert!(lookup(&mut sessions[i], "nobody").await.is_none());
    }
    // A DM to an unknown user is answered USER_NOT_FOUND, on the master and
    // through a local, and the sender stays connected.
    for i in [0, 1] {
        let key = sessions[i].key().clone();
        let dm = content::seal_dm(&key, users[i], "nobody", key.public(), b"?", 1).unwrap();
        sessions[i]
            .send("nobody", &Message::MsgPrivate(dm))
            .await
            .unwrap();
        let (_, m) = expect(&mut sessions[i], "ERROR", |_, m| {
            matches!(m, Message::Error(_))
        })
        .await;
        assert!(
            matches!(m, Message::Error(e) if e.code == "USER_NOT_FOUND"),
            "{}",
            users[i]
        );
    }

    // A DM from every user to every other arrives once and verifies.
    for i in 0..4 {
        for j in 0..4 {
            if i == j {
                continue;
            }
            let text = format!("{} -> {}", users[i], users[j]);
            let key = sessions[i].key().clone();
            let dm = content::seal_dm(
                &key,
                users[i],
                users[j],
                &keys[&(i, j)],
                text.as_bytes(),
                socp::wire::now_ms(),
            )
            .unwrap();
            sessions[i]
                .send(users[j], &Message::MsgPrivate(dm))
                .await
                .unwrap();
        }
    }
    for j in 0..4 {
        let mut got = Vec::new();
        while got.len() < 3 {
            let (_, msg) = expect(&mut sessions[j], "USER_DELIVER", |_, m| {
                matches!(m, Message::UserDeliver(_))
            })
            .await;
            let Message::UserDeliver(d) = msg else {
                unreachable!()
            };
            let sender_idx = users.iter().position(|u| *u == d.sender).unwrap();
            let as_dm = d.to_private();
            let signed = content::dm_signed_bytes(&as_dm, &d.sender, users[j]).unwrap();
            assert!(content::verify(
                user_key(users[sender_idx]).public(),
                &signed,
                &d.content_sig
            ));
            let key = sessions[j].key().clone();
            got.push(String::from_utf8(content::open_dm(&key, &as_dm).unwrap()).unwrap());
        }
        got.sort();
        let mut want: Vec<String> = (0..4)
            .filter(|i| *i != j)
            .map(|i| format!("{} -> {}", users[i], users[j]))
            .collect();
        want.sort();
        assert_eq!(got, want);
        // Exactly once: nothing more arrives.
        let extra = drain(&mut sessions[j], Duration::from_millis(300)).await;
        assert!(
            !extra
                .iter()
                .any(|(_, m)| matches!(m, Message::UserDeliver(_))),
            "duplicate delivery to {}",
            users[j]
        );
    }
}

fn share_msg(share: socp::wire::messages::GroupKeyShare) -> Message {
    Message::GroupKeyShare(share)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_three_on_three_servers() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local(&master.url()).await;
    let l3 = TestNode::local(&master.url()).await;
    master.wait_linked(3).await;
    let mut alice = connect(&l1.url(), "alice").await;
    let mut bob = connect(&l2.url(), "bob").await;
    let mut carol = connect(&l3.url(), "carol").await;
    for n in [&l1, &l2, &l3] {
        n.wait_online(&["alice", "bob", "carol"]).await;
    }
    let members = vec![
        ("bob".to_owned(), user_key("bob").public().clone()),
        ("carol".to_owned(), user_key("carol").public().clone()),
        ("alice".to_owned(), user_key("alice").public().clone()),
    ];
    let (group_key, share) =
        content::new_group_share(&user_key("alice"), "alice", "group_trio", &members).unwrap();
    alice
        .send(socp::wire::ids::TO_SERVER, &share_msg(share))
        .await
        .unwrap();
    for s in [&mut bob, &mut carol] {
        let (_, msg) = expect(s, "GROUP_KEY_SHARE", |_, m| {
            matches!(m, Message::GroupKeyShare(_))
        })
        .await;
        let Message::GroupKeyShare(got) = msg else {
            unreachable!()
        };
        let user = s.user().to_owned();
        let key = content::open_group_share(&user_key(&user), &user, &got)
            .unwrap()
            .unwrap();
        assert_eq!(key, group_key);
    }
    // Each member sends; the other two get it exactly once.
    let names = ["alice", "bob", "carol"];
    let mut sessions = [alice, bob, carol];
    for (i, s) in sessions.iter_mut().enumerate() {
        let text = format!("hi from {}", names[i]);
        let m = content::seal_group(
            &user_key(names[i]),
            names[i],
            "group_trio",
            &group_key,
            text.as_bytes(),
            socp::wire::now_ms(),
        )
        .unwrap();
        s.send("group_trio", &Message::MsgGroup(m)).await.unwrap();
    }
    let open = |msg: Message| {
        let Message::MsgGroup(m) = msg else {
            return None;
        };
        assert!(content::verify(
            user_key(&m.from).public(),
            &content::group_signed_bytes(&m).unwrap(),
            &m.content_sig
        ));
        Some(String::from_utf8(content::open_group(&group_key, &m).unwrap()).unwrap())
    };
    for (j, s) in sessions.iter_mut().enumerate() {
        // The other two members' messages, then nothing more.
        let mut texts = Vec::new();
        while texts.len() < 2 {
            let (_, msg) = expect(s, "a group message", |_, m| {
                matches!(m, Message::MsgGroup(_))
            })
            .await;
            texts.extend(open(msg));
        }
        for (_, msg) in drain(s, Duration::from_millis(300)).await {
            texts.extend(open(msg));
        }
        texts.sort();
        let mut want: Vec<String> = (0..3)
            .filter(|i| *i != j)
            .map(|i| format!("hi from {}", names[i]))
            .collect();
        want.sort();
        assert_eq!(texts, want, "{} saw the wrong group messages", names[j]);
    }
}

/// Sends `data` as a file from `session` to `to` (a user or a group).
async fn send_file(
    session: &mut socp::client::Session,
    to: &str,
    name: &str,
    data: &[u8],
    group_key: Option<&[u8]>,
    recipient: Option<&PublicKey>,
) {
    use socp::crypto::{aead, hex, sha256};
    use socp::wire::messages::{FileEnd, FileMode, FileStart};
    let file_id = uuid::Uuid::new_v4().to_string();
    let mode = if group_key.is_some() {
        FileMode::Group
    } else {
        FileMode::Dm
    };
    let start = FileStart {
        file_id: file_id.clone(),
        name: name.to_owned(),
        size: data.len() as u64,
        sha256: hex(&sha256(data)),
        mode,
        group_id: group_key.map(|_| to.to_owned()),
        user_id: None,
        content_sig: None,
        msg_id: None,
        extra: Default::default(),
    };
    session.send(to, &Message::FileStart(start)).await.unwrap();
    let file_key = aead::new_key().unwrap();
    let wrapped = recipient.map(|r| socp::wire::b64::encode(r.wrap(file_key.as_ref()).unwrap()));
    let key: &[u8] = group_key.unwrap_or(file_key.as_ref());
    for (i, piece) in data.chunks(content::CHUNK_SIZE).enumerate() {
        let chunk =
            content::seal_chunk(&file_id, i as u64, key, wrapped.as_deref(), piece).unwrap();
        session.send(to, &Message::FileChunk(chunk)).await.unwrap();
    }
    let end = FileEnd {
        file_id,
        user_id: None,
        msg_id: None,
        extra: Default::default(),
    };
    session.send(to, &Message::FileEnd(end)).await.unwrap();
}

/// Receives one file and returns its name and bytes.
async fn receive_file(
    session: &mut socp::client::Session,
    group_key: Option<&[u8]>,
) -> (String, Vec<u8>, String) {
    let (_, msg) = expect(session, "FILE_START", |_, m| {
        matches!(m, Message::FileStart(_))
    })
    .await;
    let Message::FileStart(start) = msg else {
        unreachable!()
    };
    assert_eq!(start.user_id.as_deref(), Some(session.user()));
    let mut data = Vec::new();
    loop {
        let (_, msg) = expect(session, "file frame", |_, m| {
            matches!(m, Message::FileChunk(_) | Message::FileEnd(_))
        })
        .await;
        match msg {
            Message::FileChunk(c) => {
                assert_eq!(c.file_id, start.file_id);
                let key = match group_key {
                    Some(k) => k.to_vec(),
                    None => {
                        content::unwrap_file_key(session.key(), c.wrapped_key.as_deref().unwrap())
                            .unwrap()
                    }
                };
                data.extend(content::open_chunk(&key, &c).unwrap());
            }
            Message::FileEnd(e) => {
                assert_eq!(e.file_id, start.file_id);
                break;
            }
            _ => unreachable!(),
        }
    }
    (start.name, data, start.sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_megabyte_files_dm_and_group_across_locals() {
    use socp::crypto::{hex, sha256};
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local(&master.url()).await;
    master.wait_linked(2).await;
    let mut alice = connect(&l1.url(), "alice").await;
    let mut bob = connect(&l2.url(), "bob").await;
    let mut carol = connect(&master.url(), "carol").await;
    l1.wait_online(&["alice", "bob", "carol"]).await;
    l2.wait_online(&["alice", "bob", "carol"]).await;
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    send_file(
        &mut alice,
        "bob",
        "big.bin",
        &data,
        None,
        Some(user_key("bob").public()),
    )
    .await;
    let (name, got, sha) = receive_file(&mut bob, None).await;
    assert_eq!(name, "big.bin");
    assert_eq!(hex(&sha256(&got)), sha);
    assert_eq!(got, data);

    let members = vec![
        ("bob".to_owned(), user_key("bob").public().clone()),
        ("carol".to_owned(), user_key("carol").public().clone()),
    ];
    let (group_key, share) =
        content::new_group_share(&user_key("alice"), "alice", "group_files", &members).unwrap();
    alice
        .send(socp::wire::ids::TO_SERVER, &share_msg(share))
        .await
        .unwrap();
    expect(&mut bob, "share", |_, m| {
        matches!(m, Message::GroupKeyShare(_))
    })
    .await;
    expect(&mut carol, "share", |_, m| {
        matches!(m, Message::GroupKeyShare(_))
    })
    .await;
    send_file(
        &mut alice,
        "group_files",
        "team.bin",
        &data,
        Some(&group_key),
        None,
    )
    .await;
    for s in [&mut bob, &mut carol] {
        let (name, got, sha) = receive_file(s, Some(&group_key)).await;
        assert_eq!(name, "team.bin");
        assert_eq!(hex(&sha256(&got)), sha);
        assert_eq!(got.len(), data.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_links_later_learns_who_is_online() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    master.wait_linked(1).await;
    let _alice = connect(&l1.url(), "alice").await;
    let _carol = connect(&master.url(), "carol").await;
    master.wait_online(&["alice", "carol"]).await;
    let l2 = TestNode::local(&master.url()).await;
    l2.wait_online(&["alice", "carol"]).await;
    let mut bob = connect(&l2.url(), "bob").await;
    bob.send(
        socp::wire::ids::TO_SERVER,
        &Message::UserListReq(Default::default()),
    )
    .await
    .unwrap();
    let (_, msg) = expect(&mut bob, "USER_LIST", |_, m| {
        matches!(m, Message::UserList(_))
    })
    .await;
    let Message::UserList(list) = msg else {
        unreachable!()
    };
    assert_eq!(list.users, ["alice", "bob", "carol"]);
    // And a user who leaves is no longer listed anywhere.
    drop(_alice);
    l2.wait_offline("alice").await;
    master.wait_offline("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locals_linked_directly_with_peers() {
    let master = TestNode::master().await;
    let l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local_with(&master.url(), |c| c.peers = vec![l1.url()]).await;
    l2.wait_linked(2).await;
    l1.wait_linked(2).await;
    assert!(l1.status().await.linked.contains(&l2.id()));
    let mut alice = connect(&l1.url(), "alice").await;
    let mut bob = connect(&l2.url(), "bob").await;
    l1.wait_online(&["alice", "bob"]).await;
    l2.wait_online(&["alice", "bob"]).await;
    for (from, to) in [(&mut alice, &mut bob)] {
        let dm = content::seal_dm(
            from.key(),
            "alice",
            "bob",
            user_key("bob").public(),
            b"direct",
            1,
        )
        .unwrap();
        from.send("bob", &Message::MsgPrivate(dm)).await.unwrap();
        let (env, _) = expect(to, "USER_DELIVER", |_, m| {
            matches!(m, Message::UserDeliver(_))
        })
        .await;
        assert_eq!(env.from, l2.id());
    }
    send_dm(&mut bob, "alice", b"back").await;
    expect(&mut alice, "USER_DELIVER", |_, m| {
        matches!(m, Message::UserDeliver(_))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locals_that_dial_each_other_keep_one_stable_link() {
    let master = TestNode::master().await;
    let mut l1 = TestNode::local(&master.url()).await;
    let l2 = TestNode::local_with(&master.url(), |c| c.peers = vec![l1.url()]).await;
    l1.config.peers = vec![l2.url()];
    l1.restart().await;
    l1.wait_linked(2).await;
    l2.wait_linked(2).await;
    let mut alice = connect(&l1.url(), "alice").await;
    let mut bob = connect(&l2.url(), "bob").await;
    l1.wait_online(&["alice", "bob"]).await;
    // The link does not flap. Watched for several seconds (dials back off
    // from 250 ms, so a flapping pair drops its link again and again in
    // that time), each local loses the other at most once: when the two
    // links of the simultaneous dials become one, the one given up may be
    // the one its side had counted. Then DMs still go straight through.
    let mut drops = [0, 0];
    let mut was_up = [true, true];
    let watch = tokio::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        for (i, node) in [&l1, &l2].into_iter().enumerate() {
            let up = node.status().await.linked.len() == 2;
            if was_up[i] && !up {
                drops[i] += 1;
            }
            was_up[i] = up;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        drops[0] <= 1 && drops[1] <= 1,
        "the link flapped: {drops:?} drops"
    );
    l1.wait_linked(2).await;
    l2.wait_linked(2).await;
    for i in 0..3 {
        send_dm(&mut alice, "bob", format!("{i}").as_bytes()).await;
        expect(&mut bob, "USER_DELIVER", |_, m| {
            matches!(m, Message::UserDeliver(_))
        })
        .await;
    }
}

/// Without link sessions every frame is RSA-signed; a connection signs
/// several at once. Many DMs across a link must still arrive complete and
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_link_sessions_many_dms_arrive_in_order() {
    let master = TestNode::master_with(|c| c.mac = false).await;
    let local = TestNode::local_with(&master.url(), |c| c.mac = false).await;
    master.wait_linked(1).await;
    let mut bob = connect(&master.url(), "bob").await;
    let mut alice = connect(&local.url(), "alice").await;
    local.wait_online(&["bob"]).await;
    const N: usize = 40;
    for i in 0..N {
        send_dm(&mut alice, "bob", format!("dm {i}").as_bytes()).await;
    }
    for i in 0..N {
        let text = common::cluster::expect_dm(&mut bob, &user_key("bob")).await;
        assert_eq!(String::from_utf8(text).unwrap(), format!("dm {i}"));
    }
}
