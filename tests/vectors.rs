//! Every ground-truth vector in `../shared/vectors/` (made with the reference
//! crypto stack and JSON encoder) must pass.

mod common;

use common::{fixture_key, vector_json};
use serde_json::Value;
use socp::content;
use socp::crypto::{self, PublicKey};
use socp::wire::canonical;
use socp::wire::messages::{FileChunk, GroupKeyShare, MsgGroup, MsgPrivate};

fn s(v: &Value) -> &str {
    v.as_str().expect("string")
}

#[test]
fn canonical_json_matches_python() {
    let cases = vector_json("canonical.json");
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let input: Value = serde_json::from_str(s(&case["input"])).unwrap();
        assert_eq!(
            canonical::to_string(&input).unwrap(),
            s(&case["canonical"]),
            "input {}",
            case["input"]
        );
    }
}

#[test]
fn signatures_verify_and_negatives_fail() {
    let cases = vector_json("signatures.json");
    let alice = fixture_key("keys/alice.pem");
    let bob = fixture_key("keys/bob.pem");
    let (mut valid, mut invalid) = (0, 0);
    for case in cases.as_array().unwrap() {
        let canon = canonical::to_string(&case["payload"]).unwrap();
        assert_eq!(canon, s(&case["canonical"]));
        let key = match s(&case["signer"]) {
            "alice" => alice.public(),
            "bob" => bob.public(),
            other => panic!("unknown signer {other}"),
        };
        let ok = key.verify_b64(canon.as_bytes(), s(&case["sig"])).is_ok();
        let expected = case["valid"].as_bool().unwrap();
        assert_eq!(ok, expected, "case {case}");
        if expected { valid += 1 } else { invalid += 1 }
    }
    assert!(
        valid >= 6 && invalid >= 6,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn our_signatures_verify_and_use_salt_32() {
    let alice = fixture_key("keys/alice.pem");
    let sig = alice.sign(b"payload").unwrap();
    assert_eq!(sig.len(), 512);
    alice.public().verify(b"payload", &sig).unwrap();
    assert!(alice.public().verify(b"payload!", &sig).is_err());
}

#[test]
fn pubkey_verdicts() {
    let cases = vector_json("pubkeys.json");
    for (name, case) in cases.as_object().unwrap() {
        let verdict = PublicKey::from_b64(s(&case["pubkey"]));
        assert_eq!(
            verdict.is_ok(),
            case["acceptable"].as_bool().unwrap(),
            "{name}: {verdict:?}"
        );
    }
    // The weak private keys are refused too, so no identity can use them.
    for weak in ["weak-rsa1024", "weak-rsa2048", "weak-rsa4096-e3"] {
        let path = common::vectors_dir().join(format!("keys/{weak}.pem"));
        assert!(
            socp::crypto::PrivateKey::load(&path).is_err(),
            "{weak} accepted"
        );
    }
}

#[test]
fn fixture_public_keys_match_e2e_pubkeys() {
    let e2e = vector_json("e2e.json");
    for name in ["alice", "bob", "carol"] {
        let key = fixture_key(&format!("keys/{name}.pem"));
        assert_eq!(key.public().to_b64(), s(&e2e["pubkeys"][name]), "{name}");
        let parsed = PublicKey::from_b64(s(&e2e["pubkeys"][name])).unwrap();
        assert_eq!(&parsed, key.public());
    }
}

#[test]
fn e2e_dm_opens_and_verifies() {
    let e2e = vector_json("e2e.json");
    let bob = fixture_key("keys/bob.pem");
    let alice_pub = PublicKey::from_b64(s(&e2e["pubkeys"]["alice"])).unwrap();
    let dm: MsgPrivate = serde_json::from_value(e2e["dm"]["payload"].clone()).unwrap();
    let plain = content::open_dm(&bob, &dm).unwrap();
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        s(&e2e["dm"]["plaintext"])
    );
    let signed = content::dm_signed_bytes(&dm, s(&e2e["dm"]["from"]), s(&e2e["dm"]["to"])).unwrap();
    assert_eq!(
        signed,
        canonical::to_vec(&e2e["dm"]["content_signed"]).unwrap()
    );
    assert!(content::verify(&alice_pub, &signed, &dm.content_sig));
    let bob_pub = PublicKey::from_b64(s(&e2e["pubkeys"]["bob"])).unwrap();
    assert!(!content::verify(&bob_pub, &signed, &dm.content_sig));
}

#[test]
fn e2e_tampered_dm_fails_to_open() {
    let e2e = vector_json("e2e.json");
    let bob = fixture_key("keys/bob.pem");
    let dm: MsgPrivate = serde_json::from_value(e2e["tampered_dm"].clone()).unwrap();
    assert!(content::open_dm(&bob, &dm).is_err());
}

#[test]
fn e2e_group_share_and_message() {
    let e2e = vector_json("e2e.json");
    let bob = fixture_key("keys/bob.pem");
    let alice_pub = PublicKey::from_b64(s(&e2e["pubkeys"]["alice"])).unwrap();
    let share: GroupKeyShare =
        serde_json::from_value(e2e["group_key_share"]["payload"].clone()).unwrap();
    assert!(content::verify(
        &alice_pub,
        &content::share_signed_bytes(&share).unwrap(),
        &share.content_sig
    ));
    let key = content::open_group_share(&bob, "bob", &share)
        .unwrap()
        .unwrap();
    assert_eq!(
        socp::wire::b64::encode(&key),
        s(&e2e["group_key_share"]["group_key_b64u"])
    );

    let msg: MsgGroup = serde_json::from_value(e2e["group_msg"]["payload"].clone()).unwrap();
    let signed = content::group_signed_bytes(&msg).unwrap();
    assert_eq!(
        signed,
        canonical::to_vec(&e2e["group_msg"]["content_signed"]).unwrap()
    );
    assert!(content::verify(&alice_pub, &signed, &msg.content_sig));
    let plain = content::open_group(&key, &msg).unwrap();
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        s(&e2e["group_msg"]["plaintext"])
    );
}

#[test]
fn e2e_dm_file_reassembles() {
    let e2e = vector_json("e2e.json");
    let bob = fixture_key("keys/bob.pem");
    let file = &e2e["file_dm"];
    assert_eq!(
        file["chunk_size"].as_u64().unwrap() as usize,
        content::CHUNK_SIZE
    );
    let mut data = Vec::new();
    for (i, chunk) in file["chunks"].as_array().unwrap().iter().enumerate() {
        let chunk: FileChunk = serde_json::from_value(chunk.clone()).unwrap();
        assert_eq!(chunk.index, i as u64);
        let key = content::unwrap_file_key(&bob, chunk.wrapped_key.as_deref().unwrap()).unwrap();
        data.extend(content::open_chunk(&key, &chunk).unwrap());
    }
    assert_eq!(
        data.len() as u64,
        file["manifest"]["size"].as_u64().unwrap()
    );
    assert_eq!(
        crypto::hex(&crypto::sha256(&data)),
        s(&file["plaintext_sha256"])
    );
    assert_eq!(s(&file["manifest"]["sha256"]), s(&file["plaintext_sha256"]));
}

#[test]
fn our_content_round_trips() {
    let alice = fixture_key("keys/alice.pem");
    let bob = fixture_key("keys/bob.pem");
    let dm =
        content::seal_dm(&alice, "alice", "bob", bob.public(), "hé 😀".as_bytes(), 42).unwrap();
    assert_eq!(content::open_dm(&bob, &dm).unwrap(), "hé 😀".as_bytes());
    let signed = content::dm_signed_bytes(&dm, "alice", "bob").unwrap();
    assert!(content::verify(alice.public(), &signed, &dm.content_sig));
    assert!(
        content::open_dm(&alice, &dm).is_err(),
        "only the recipient can open a DM"
    );

    let members = vec![("bob".to_owned(), bob.public().clone())];
    let (key, share) = content::new_group_share(&alice, "alice", "group_x", &members).unwrap();
    assert!(content::verify(
        alice.public(),
        &content::share_signed_bytes(&share).unwrap(),
        &share.content_sig
    ));
    assert_eq!(
        content::open_group_share(&bob, "bob", &share)
            .unwrap()
            .unwrap(),
        key
    );
    assert!(
        content::open_group_share(&alice, "alice", &share)
            .unwrap()
            .is_none()
    );
    let msg = content::seal_group(&alice, "alice", "group_x", &key, b"hi", 7).unwrap();
    assert_eq!(content::open_group(&key, &msg).unwrap(), b"hi");
}
