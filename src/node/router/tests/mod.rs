//! Unit tests of one router, driven input by input: what it answers to
//! users (`users.rs`), to and about its server links (`links.rs`), and to
//! every frame of the reference run (`reference.rs`). Meshes of several
//! routers are the scenarios' job (`scenarios/`).

mod hold;
mod links;
mod owed;
mod reference;
mod sticky;
mod users;
mod vouched;

use super::sim::{code_of, error_body, key, kind_of, payload_of, signed_hello, to_of};
use super::*;
use crate::crypto::PrivateKey;
use crate::wire::ErrorCode;
use crate::wire::messages::Kind;
use serde_json::json;

fn router(master: bool) -> Router {
    let cfg = RouterConfig {
        me: if master {
            "master_server_m".into()
        } else {
            "server_l".into()
        },
        master,
        allow_legacy: false,
        pubkey: String::new(),
        host: "127.0.0.1".into(),
        port: 1,
        url: String::new(),
        limits: MailboxLimits::default(),
        max_group_members: 1000,
        max_file_size: 1 << 30,
        admission: Default::default(),
        presence_cache: 0,
    };
    Router::new(cfg, Snapshot::default())
}

fn sends(out: &[Output]) -> Vec<(ConnId, Kind, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, f) => Some((*c, kind_of(f), to_of(f).to_owned())),
            _ => None,
        })
        .collect()
}

fn error_code(out: &[Output]) -> Option<ErrorCode> {
    out.iter().find_map(|o| match o {
        Output::Send(_, f) if kind_of(f) == Kind::Error => {
            Some(code_of(&error_body(payload_of(f))))
        }
        _ => None,
    })
}

fn dm(from: &str, to: &str) -> Input {
    let Value::Object(payload) = json!({"ciphertext": "c", "iv": "i", "tag": "t", "wrapped_key": "w",
            "sender_pub": "p", "content_sig": "s", "content_ts": 1})
    else {
        unreachable!()
    };
    let env = Envelope::new(Kind::MsgPrivate.name(), from, to, payload);
    let msg = Message::from_envelope(&env).unwrap();
    Input::UserFrame { conn: 1, env, msg }
}

fn link(conn: ConnId, id: &str, k: &PrivateKey, role: Role, dialed_master: bool) -> LinkHelloIn {
    LinkHelloIn {
        conn,
        server_id: id.into(),
        key: k.public().clone(),
        role,
        host: "h".into(),
        port: 1,
        ts: 5,
        to: crate::wire::ids::TO_SERVER.into(),
        socp: true,
        answers_registrations: true,
        lookup: false,
        dialed: dialed_master,
        dialed_master,
        session: None,
        signed: None,
    }
}

/// `user` online here on `conn`, as a login would leave them (without the
/// hello's round trips).
fn session_here(r: &mut Router, user: &str, conn: ConnId) {
    r.sessions.insert(
        user.to_owned(),
        Session {
            conn,
            proof: None,
            key: std::sync::Arc::from("k"),
            lists: (LIST_BURST, 0),
            undecryptable: false,
        },
    );
    r.conn_users.insert(conn, user.to_owned());
    r.online.set(user, super::online::HERE, true);
}

/// The link to our master (`master_server_m`), which we dialed, on `conn`.
fn master_link(conn: ConnId) -> Input {
    Input::LinkHello(link(
        conn,
        "master_server_m",
        key("carol"),
        Role::Master,
        true,
    ))
}

/// A `socp` local that dialed us, on `conn`.
fn local_link(conn: ConnId, id: &str) -> Input {
    Input::LinkHello(link(conn, id, key("carol"), Role::Local, false))
}
