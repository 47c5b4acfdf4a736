//! The first frame of a connection: a user's `USER_HELLO` (PROTOCOL.md C1,
//! C3) or a server's `PEER_HELLO_LINK` (C5). What needs no state is checked
//! here (ids, key policy, signatures, freshness); replays, pins and
//! admission are the router's call.

use crate::crypto::PublicKey;
use crate::crypto::session::MacSession;
use crate::node::router::{ConnId, HELLO_FRESHNESS_MS, Input, LinkHelloIn, UserHelloIn};
use crate::wire::messages::{Kind, Message, PeerHelloLink, Proof, UserHello};
use crate::wire::{Envelope, ErrorCode, WireError, ids, now_ms};

use super::auth::{Auth, offer_session};
use super::{ConnCtx, Peer};

/// Why a hello was refused, with the code the peer is told.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub detail: String,
}

impl Refusal {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

/// An accepted first frame: the router's view of the hello, who is on the
/// connection, and how its frames are authenticated.
pub(super) struct Accepted {
    pub input: Input,
    pub peer: Peer,
    pub auth: Auth,
}

/// Checks the first frame of an accepted connection. A refusal says which
/// `to` the error answer goes to.
pub(super) fn accept_first(
    ctx: &ConnCtx,
    conn: ConnId,
    text: &str,
) -> Result<Accepted, (&'static str, Refusal)> {
    let env = Envelope::parse(text).map_err(|e| (ids::TO_USER, Refusal::from(e)))?;
    match Kind::from_name(&env.kind) {
        Some(Kind::UserHello) => accept_user(ctx, conn, &env).map_err(|r| {
            tracing::info!(user = %env.from.chars().take(64).collect::<String>(), code = %r.code, detail = %r.detail, "hello refused");
            (ids::TO_USER, r)
        }),
        Some(Kind::PeerHelloLink) => accept_link(ctx, conn, &env).map_err(|r| {
            tracing::warn!(code = %r.code, detail = %r.detail, "link hello refused");
            (ids::TO_SERVER, r)
        }),
        _ => {
            let detail = format!(
                "the first frame must be {} or {}, not {}",
                Kind::UserHello,
                Kind::PeerHelloLink,
                env.kind.chars().take(64).collect::<String>()
            );
            Err((ids::TO_USER, Refusal::new(ErrorCode::UnknownType, detail)))
        }
    }
}

fn accept_user(ctx: &ConnCtx, conn: ConnId, env: &Envelope) -> Result<Accepted, Refusal> {
    let (user_id, key, proof) = check_user_hello(env, now_ms())?;
    // Only a signed hello proves the key: only then a session.
    let signed = proof.is_some();
    let (session, offer) = offer_session(ctx, env, &key, signed, &user_id);
    let auth = Auth::user(signed.then_some(&key), session);
    let input = Input::UserHello(UserHelloIn {
        conn,
        user_id: user_id.clone(),
        key,
        proof,
        session: offer,
        addr: ctx.peer_ip,
    });
    Ok(Accepted {
        input,
        peer: Peer::User(user_id),
        auth,
    })
}

fn accept_link(ctx: &ConnCtx, conn: ConnId, env: &Envelope) -> Result<Accepted, Refusal> {
    let (hello, key) = check_link_hello(env)?;
    let (session, offer) = offer_session(ctx, env, &key, true, &env.from);
    let auth = Auth::link_acceptor(&key, session.map(MacSession::prepared));
    let input = Input::LinkHello(LinkHelloIn::new(conn, env, hello, key, false, false, offer));
    Ok(Accepted {
        input,
        peer: Peer::Link {
            server_id: env.from.clone(),
        },
        auth,
    })
}

/// Checks a `USER_HELLO` (PROTOCOL.md C1, C3): key policy, and for a signed
/// hello its signature, freshness and binding to the claimed id. Replays
/// and legacy admission are the router's call.
pub(crate) fn check_user_hello(
    env: &Envelope,
    now: i64,
) -> Result<(String, PublicKey, Option<Proof>), Refusal> {
    ids::check_user(&env.from).map_err(|e| Refusal::new(ErrorCode::BadFrame, e.to_string()))?;
    let hello = match Message::from_envelope(env)? {
        Message::UserHello(h) => h,
        _ => {
            let detail = format!("expected {}", Kind::UserHello);
            return Err(Refusal::new(ErrorCode::BadFrame, detail));
        }
    };
    let key = PublicKey::from_b64(&hello.pubkey)
        .map_err(|e| Refusal::new(ErrorCode::BadKey, e.to_string()))?;
    if hello.enc_pubkey != hello.pubkey {
        return Err(Refusal::new(
            ErrorCode::BadKey,
            "enc_pubkey must be the same key as pubkey",
        ));
    }
    if env.sig.is_empty() {
        return Ok((env.from.clone(), key, None));
    }
    check_signed_hello(env, &hello, &key, now)?;
    let proof = Proof {
        payload: env.payload.clone(),
        sig: env.sig.clone(),
        extra: Default::default(),
    };
    Ok((env.from.clone(), key, Some(proof)))
}

fn check_signed_hello(
    env: &Envelope,
    hello: &UserHello,
    key: &PublicKey,
    now: i64,
) -> Result<(), Refusal> {
    let Some(ts) = hello.ts else {
        return Err(Refusal::new(
            ErrorCode::BadFrame,
            "a signed hello needs ts (Unix ms)",
        ));
    };
    let skew = now.abs_diff(ts);
    if skew > HELLO_FRESHNESS_MS as u64 {
        return Err(Refusal::new(
            ErrorCode::InvalidSig,
            format!(
                "hello ts is {} s away from the server's clock; check your clock",
                skew / 1000
            ),
        ));
    }
    if let Some(claimed) = hello.extra.get("user_id")
        && claimed.as_str() != Some(env.from.as_str())
    {
        return Err(Refusal::new(
            ErrorCode::NotAllowed,
            "hello user_id differs from from",
        ));
    }
    let bytes = env.signed_bytes().map_err(WireError::from)?;
    key.verify_b64(&bytes, &env.sig).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidSig,
            "hello signature does not verify with its pubkey",
        )
    })
}

/// Checks a `PEER_HELLO_LINK` (PROTOCOL.md C5): a server id, an acceptable
/// key, and a signature by that key. Pinning is the router's call.
pub(crate) fn check_link_hello(env: &Envelope) -> Result<(PeerHelloLink, PublicKey), Refusal> {
    ids::check_server(&env.from).map_err(|e| Refusal::new(ErrorCode::BadFrame, e.to_string()))?;
    let hello = match Message::from_envelope(env)? {
        Message::PeerHelloLink(h) => h,
        _ => {
            let detail = format!("expected {}", Kind::PeerHelloLink);
            return Err(Refusal::new(ErrorCode::BadFrame, detail));
        }
    };
    let key = PublicKey::from_b64(&hello.pubkey)
        .map_err(|e| Refusal::new(ErrorCode::BadKey, e.to_string()))?;
    let bytes = env.signed_bytes().map_err(WireError::from)?;
    key.verify_b64(&bytes, &env.sig).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidSig,
            "link hello is not signed by the key it presents",
        )
    })?;
    Ok((hello, key))
}
