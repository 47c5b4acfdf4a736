//! Property tests: canonical JSON is stable (canonicalizing what canonical
//! JSON parses back to gives the same bytes), and every message type parses
//! and writes back to the same payload, unknown fields included.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use socp::wire::canonical;
use socp::wire::messages::{Message, TYPE_NAMES};

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[ -~]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A field's shape in a payload template.
#[derive(Clone, Copy)]
enum F {
    S,
    I,
    U,
    B,
    Strings,
}

fn field(f: F) -> BoxedStrategy<Value> {
    match f {
        F::S => any::<String>().prop_map(Value::String).boxed(),
        F::I => any::<i64>().prop_map(Value::from).boxed(),
        F::U => (0u64..u16::MAX as u64).prop_map(Value::from).boxed(),
        F::B => any::<bool>().prop_map(Value::Bool).boxed(),
        F::Strings => prop::collection::vec(any::<String>().prop_map(Value::String), 0..4)
            .prop_map(Value::Array)
            .boxed(),
    }
}

/// The required fields of every message type (optional ones come as extras).
fn template(kind: &str) -> Vec<(&'static str, F)> {
    use F::*;
    match kind {
        "PEER_HELLO_LINK" => vec![("host", S), ("port", U), ("pubkey", S)],
        "USER_HELLO" => vec![("client", S), ("pubkey", S), ("enc_pubkey", S)],
        "USER_WELCOME" => vec![("user_id", S), ("server_id", S)],
        "USER_LIST_REQ" | "HEARTBEAT" => vec![],
        "USER_LIST" => vec![("users", Strings)],
        "USER_DB_GET_USER" => vec![("user_id", S)],
        "USER_DB_USER" => vec![("user_id", S), ("found", B), ("pubkey", S)],
        "MSG_PRIVATE" => vec![
            ("ciphertext", S),
            ("iv", S),
            ("tag", S),
            ("wrapped_key", S),
            ("sender_pub", S),
            ("content_sig", S),
            ("content_ts", I),
        ],
        "PEER_DELIVER" | "USER_DELIVER" => vec![
            ("user_id", S),
            ("ciphertext", S),
            ("iv", S),
            ("tag", S),
            ("wrapped_key", S),
            ("sender", S),
            ("sender_pub", S),
            ("content_sig", S),
            ("content_ts", I),
        ],
        "GROUP_KEY_SHARE" => vec![
            ("group_id", S),
            ("creator", S),
            ("creator_pub", S),
            ("content_sig", S),
        ],
        "MSG_GROUP" => vec![
            ("group_id", S),
            ("ciphertext", S),
            ("iv", S),
            ("tag", S),
            ("from", S),
            ("ts", I),
            ("sender_pub", S),
            ("content_sig", S),
            ("content_ts", I),
        ],
        "FILE_START" => vec![("file_id", S), ("name", S), ("size", U), ("sha256", S)],
        "FILE_CHUNK" => vec![
            ("file_id", S),
            ("index", U),
            ("ciphertext", S),
            ("iv", S),
            ("tag", S),
        ],
        "FILE_END" => vec![("file_id", S)],
        "USER_ADVERTISE" | "USER_REMOVE" => vec![("user_id", S), ("location", S)],
        "DB_REGISTER_USER" => vec![("user_id", S), ("pubkey", S)],
        "DB_GET_USER" => vec![("user_id", S), ("req_id", S)],
        "DB_USER" => vec![("user_id", S), ("found", B), ("pubkey", S), ("req_id", S)],
        "ACK" => vec![("msg_ids", Strings)],
        "RECEIPT" => vec![("user_id", S), ("msg_ids", Strings), ("status", S)],
        "ERROR" => vec![("code", S), ("detail", S)],
        "PEER_ANNOUNCE" => vec![("server_id", S)],
        "PRESENCE_SUBSCRIBE" => vec![("subscribe", Strings), ("unsubscribe", Strings)],
        "PEER_WITHDRAW" => vec![("server_id", S)],
        other => panic!("no template for {other}; add one"),
    }
}

/// Fields whose type is fixed and which need fixed values in every payload.
fn fixed(kind: &str) -> Map<String, Value> {
    let v = match kind {
        "PEER_HELLO_LINK" => json!({"role": "local"}),
        "GROUP_KEY_SHARE" => {
            json!({"shares": [{"member": "bob", "wrapped_group_key": "k", "zz": 1}]})
        }
        "FILE_START" => json!({"mode": "group", "group_id": "group_x"}),
        "PEER_ANNOUNCE" => json!({"hello": {"payload": {"host": "h", "port": 1}, "sig": "s"}}),
        _ => json!({}),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn payload(kind: &'static str) -> impl Strategy<Value = Map<String, Value>> {
    let fields = template(kind);
    let names: Vec<&'static str> = fields.iter().map(|(n, _)| *n).collect();
    let values: Vec<BoxedStrategy<Value>> = fields.iter().map(|(_, f)| field(*f)).collect();
    let extras = prop::collection::btree_map("x_[a-z]{1,8}", json_value(), 0..3);
    (values, extras).prop_map(move |(vals, extras)| {
        let mut m = fixed(kind);
        for (n, v) in names.iter().zip(vals) {
            m.insert((*n).to_owned(), v);
        }
        for (k, v) in extras {
            m.insert(k, v);
        }
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn canonical_json_is_stable(v in json_value()) {
        let once = canonical::to_string(&v).unwrap();
        let parsed: Value = serde_json::from_str(&once).unwrap();
        prop_assert_eq!(&parsed, &v);
        prop_assert_eq!(canonical::to_string(&parsed).unwrap(), once);
    }

    #[test]
    fn every_message_type_round_trips((kind, p) in (0..TYPE_NAMES.len()).prop_flat_map(|i| payload(TYPE_NAMES[i]).prop_map(move |p| (TYPE_NAMES[i], p)))) {
        let msg = Message::from_payload(kind, p.clone()).map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
        prop_assert_eq!(msg.type_name(), kind);
        let back = msg.to_payload();
        prop_assert_eq!(canonical::map_to_string(&back).unwrap(), canonical::map_to_string(&p).unwrap(), "{}", kind);
        // And through the wire: an envelope written and parsed again.
        let env = msg.into_envelope("alice", "bob");
        let again = socp::wire::Envelope::parse(&env.to_json()).unwrap();
        prop_assert_eq!(Message::from_envelope(&again).unwrap(), msg);
    }
}
