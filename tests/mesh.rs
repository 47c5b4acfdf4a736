//! A mesh of real nodes over real sockets: directory lookups, presence,
//! DMs, groups and files across servers.

mod common;

use std::collections::HashMap;

use common::cluster::{TestNode, connect, drain, expect, user_key};
use socp::content;
use socp::crypto::PublicKey;
use socp::wire::messages::{Message, MsgPrivate, UserLookup};
use std::time::Duration;

/// Looks `target` up through `session` and returns the key the directory holds.
async fn lookup(session: &mut socp::client::Session, target: &str) -> Option<PublicKey> {
    let q = Message::UserDbGetUser(UserLookup {
        user_id: target.to_owned(),
        extra: Default::default(),
    });
    session.send(socp::wire::ids::TO_SERVER, &q).await.unwrap();
    let (_, msg) = expect(
        session,
        "USER_DB_USER",
        |_, m| matches!(m, Message::UserDbUser(a) if a.user_id == target),
    )
    .await;
    let Message::UserDbUser(a) = msg else {
        unreachable!()
    };
    a.found.then(|| PublicKey::from_b64(&a.pubkey).unwrap())
}

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
            let as_dm = MsgPrivate {
                ciphertext: d.ciphertext.clone(),
                iv: d.iv.clone(),
                tag: d.tag.clone(),
                wrapped_key: d.wrapped_key.clone(),
                sender_pub: d.sender_pub.clone(),
                content_sig: d.content_sig.clone(),
                content_ts: d.content_ts,
                msg_id: None,
                extra: Default::default(),
            };
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
