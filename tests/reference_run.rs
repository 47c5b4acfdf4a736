//! The captured session of the reference implementation
//! (`vectors/reference-run/frames.jsonl`): every frame parses into its typed
//! message and back to the same canonical payload, every server signature
//! verifies, and Alice's and Bob's keys open every piece of content.

mod common;

use std::collections::HashMap;

use common::{fixture_key, vectors_dir};
use socp::content;
use socp::crypto::{self, PrivateKey, PublicKey};
use socp::wire::messages::{FileChunk, FileMode, FileStart, Message};
use socp::wire::{Envelope, canonical, ids};

struct Captured {
    dir: String,
    env: Envelope,
    msg: Message,
}

fn frames() -> Vec<Captured> {
    let path = vectors_dir().join("reference-run/frames.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let env = Envelope::parse(record["frame"].as_str().unwrap()).unwrap();
            let msg = Message::from_envelope(&env)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", env.kind));
            Captured {
                dir: record["dir"].as_str().unwrap().to_owned(),
                env,
                msg,
            }
        })
        .collect()
}

#[test]
fn every_frame_round_trips_to_the_same_canonical_payload() {
    let frames = frames();
    assert_eq!(frames.len(), 52);
    for f in &frames {
        assert_eq!(f.msg.type_name(), f.env.kind);
        let again = canonical::map_to_string(&f.msg.to_payload()).unwrap();
        let original = canonical::map_to_string(&f.env.payload).unwrap();
        assert_eq!(again, original, "{} changed on round trip", f.env.kind);
        // And the envelope itself survives a trip through our writer.
        let reparsed = Envelope::parse(&f.env.to_json()).unwrap();
        assert_eq!(reparsed, f.env);
    }
}

#[test]
fn every_server_signature_verifies_with_its_link_key() {
    let frames = frames();
    let mut server_keys: HashMap<String, PublicKey> = HashMap::new();
    for f in &frames {
        if let Message::PeerHelloLink(hello) = &f.msg {
            let key = PublicKey::from_b64(&hello.pubkey).unwrap();
            server_keys.insert(f.env.from.clone(), key);
        }
    }
    assert_eq!(server_keys.len(), 2);
    let mut verified = 0;
    for f in &frames {
        if ids::check_server(&f.env.from).is_ok() {
            let key = &server_keys[&f.env.from];
            key.verify_b64(&f.env.signed_bytes().unwrap(), &f.env.sig)
                .unwrap_or_else(|_| panic!("{} from {} does not verify", f.env.kind, f.env.from));
            verified += 1;
            // A changed payload must not verify.
            let mut tampered = f.env.clone();
            tampered.payload.insert("zz".into(), 1.into());
            assert!(
                key.verify_b64(&tampered.signed_bytes().unwrap(), &f.env.sig)
                    .is_err()
            );
        } else {
            assert_eq!(f.env.sig, "", "reference users send unsigned frames");
            assert_eq!(f.dir, "to-server");
        }
    }
    assert!(verified > 30, "only {verified} server frames");
}

fn user_keys() -> (PrivateKey, PrivateKey) {
    (
        fixture_key("reference-run/Alice.pem"),
        fixture_key("reference-run/Bob.pem"),
    )
}

#[test]
fn dms_decrypt_and_verify() {
    let (alice, bob) = user_keys();
    let mut texts = Vec::new();
    for f in frames() {
        let Message::MsgPrivate(dm) = &f.msg else {
            continue;
        };
        let (recipient, sender_pub) = match f.env.from.as_str() {
            "Alice" => (&bob, alice.public()),
            "Bob" => (&alice, bob.public()),
            other => panic!("unexpected sender {other}"),
        };
        assert_eq!(dm.sender_pub, sender_pub.to_b64());
        let signed = content::dm_signed_bytes(dm, &f.env.from, &f.env.to).unwrap();
        assert!(content::verify(sender_pub, &signed, &dm.content_sig));
        texts.push(String::from_utf8(content::open_dm(recipient, dm).unwrap()).unwrap());
    }
    assert_eq!(texts, ["Hello Bob! é 😀", "Hi Alice!"]);
}

#[test]
fn group_messages_decrypt_and_verify() {
    let (alice, bob) = user_keys();
    let frames = frames();
    let share = frames
        .iter()
        .find_map(|f| match &f.msg {
            Message::GroupKeyShare(s) if f.env.from == "Alice" => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert!(content::verify(
        alice.public(),
        &content::share_signed_bytes(&share).unwrap(),
        &share.content_sig
    ));
    let key = content::open_group_share(&bob, "Bob", &share)
        .unwrap()
        .unwrap();
    let mut texts = Vec::new();
    for f in &frames {
        let Message::MsgGroup(m) = &f.msg else {
            continue;
        };
        if ids::check_server(&f.env.from).is_ok() {
            continue; // relayed copies of the same messages
        }
        let sender = if m.from == "Alice" {
            alice.public()
        } else {
            bob.public()
        };
        assert!(content::verify(
            sender,
            &content::group_signed_bytes(m).unwrap(),
            &m.content_sig
        ));
        texts.push(String::from_utf8(content::open_group(&key, m).unwrap()).unwrap());
    }
    assert_eq!(texts, ["hello team", "hi everyone"]);
}

#[test]
fn files_reassemble_to_their_sha256() {
    let (_, bob) = user_keys();
    let frames = frames();
    let share = frames
        .iter()
        .find_map(|f| match &f.msg {
            Message::GroupKeyShare(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let group_key = content::open_group_share(&bob, "Bob", &share)
        .unwrap()
        .unwrap();
    let mut starts: Vec<FileStart> = Vec::new();
    let mut chunks: HashMap<String, Vec<FileChunk>> = HashMap::new();
    for f in frames.iter().filter(|f| f.env.from == "Alice") {
        match &f.msg {
            Message::FileStart(s) => starts.push(s.clone()),
            Message::FileChunk(c) => chunks.entry(c.file_id.clone()).or_default().push(c.clone()),
            _ => {}
        }
    }
    assert_eq!(starts.len(), 2);
    for start in starts {
        let mut data = Vec::new();
        for chunk in &chunks[&start.file_id] {
            let key = match start.mode {
                FileMode::Dm => {
                    content::unwrap_file_key(&bob, chunk.wrapped_key.as_deref().unwrap()).unwrap()
                }
                FileMode::Group => group_key.clone(),
            };
            data.extend(content::open_chunk(&key, chunk).unwrap());
        }
        assert_eq!(data.len() as u64, start.size);
        assert_eq!(
            crypto::hex(&crypto::sha256(&data)),
            start.sha256,
            "{:?}",
            start.mode
        );
    }
}
