//! How frames on one connection are authenticated: RSA signatures by the
//! peer's key, or, once a `mac-v1` session is on (PROTOCOL.md B), an HMAC
//! with a sequence number. The writer's half ([`Sealer`]) and the reader's
//! half ([`Checker`]) are each a small state machine, and run side by side.

use crate::crypto::PublicKey;
use crate::crypto::session::{self, CAP_MAC_V1, MacOpen, MacSeal, MacSession};
use crate::node::router::Outgoing;
use crate::wire::Envelope;
use crate::wire::messages::Message;

use super::ConnCtx;

/// Both halves of a connection's authentication, as its hello left them.
pub(crate) struct Auth {
    sealer: Sealer,
    checker: Checker,
}

impl Auth {
    /// A user we accepted the hello of. `key` is None for a legacy
    /// (unsigned) hello: its frames are unsigned. With a session we
    /// offered, the user's frames are RSA-signed until its first MAC'd one.
    pub fn user(key: Option<&PublicKey>, session: Option<MacSession>) -> Self {
        let (offer, open) = halves(session);
        let checker = match (key, open) {
            (Some(key), Some(open)) => Checker::Opening {
                key: PeerKey::new(key),
                open,
            },
            (Some(key), None) => Checker::Signed(PeerKey::new(key)),
            (None, _) => Checker::Unsigned,
        };
        Auth {
            sealer: Sealer::Unaccepted { offer },
            checker,
        }
    }

    /// A server whose link hello we accepted: with a session, every frame
    /// of its carries a MAC (our answer carries the offer).
    pub fn link_acceptor(key: &PublicKey, session: Option<MacSession>) -> Self {
        let (offer, open) = halves(session);
        Auth {
            sealer: Sealer::Unaccepted { offer },
            checker: Checker::new(key, open),
        }
    }

    /// A server that answered our link hello: it proved its key, and with a
    /// session every frame both ways carries a MAC.
    pub fn dialer(key: &PublicKey, session: Option<MacSession>) -> Self {
        let (seal, open) = halves(session);
        Auth {
            sealer: seal.map_or(Sealer::Signing, Sealer::Sealing),
            checker: Checker::new(key, open),
        }
    }

    /// The writer's and the reader's halves: they run side by side, so
    /// neither may wait for the other.
    pub(super) fn split(self) -> (Sealer, Checker) {
        (self.sealer, self.checker)
    }
}

/// A session's two halves, boxed: HMAC keys are large, and an idle
/// connection's future should not be.
fn halves(session: Option<MacSession>) -> (Option<Box<MacSeal>>, Option<Box<MacOpen>>) {
    match session {
        Some(s) => {
            let (seal, open) = s.split();
            (Some(Box::new(seal)), Some(Box::new(open)))
        }
        None => (None, None),
    }
}

/// How one frame from this node goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stamp {
    /// Unsigned: an error to a peer we have not accepted (a refused hello:
    /// replayed, an id in use, registration closed). No private-key work
    /// for such a peer, however often it tries (PROTOCOL.md C14).
    Unsigned,
    /// RSA-signed (on the blocking pool).
    Signed,
    /// MAC'd on the session.
    Mac,
}

/// The writer's half: how our frames are authenticated.
pub(super) enum Sealer {
    /// We have not accepted the peer yet: errors go out unsigned. The frame
    /// that accepts it (a welcome, or our answer to a link hello) is signed
    /// and carries our session offer, if we made one: from the next frame
    /// on, ours are MAC'd.
    Unaccepted { offer: Option<Box<MacSeal>> },
    /// Every frame RSA-signed.
    Signing,
    /// Every frame MAC'd.
    Sealing(Box<MacSeal>),
}

impl Sealer {
    /// How `out` goes out; moves on once the peer is accepted.
    pub fn stamp(&mut self, out: &Outgoing) -> Stamp {
        match self {
            Sealer::Sealing(_) => Stamp::Mac,
            Sealer::Signing => Stamp::Signed,
            Sealer::Unaccepted { offer } => match accepts(out) {
                Some(offered) => {
                    *self = match offer.take() {
                        Some(seal) if offered => Sealer::Sealing(seal),
                        _ => Sealer::Signing,
                    };
                    Stamp::Signed
                }
                None if matches!(out.message(), Some(Message::Error(_))) => Stamp::Unsigned,
                None => Stamp::Signed,
            },
        }
    }

    /// True if no frame will ever be MAC'd: signatures may then be made
    /// several at a time and sent in order.
    pub fn signs_only(&self) -> bool {
        matches!(self, Sealer::Signing | Sealer::Unaccepted { offer: None })
    }

    /// Writes `env` with its MAC, if there is a session.
    pub fn mac(&mut self, env: &mut Envelope) -> Option<String> {
        match self {
            Sealer::Sealing(seal) => seal.seal_to_json(env).ok(),
            _ => None,
        }
    }
}

/// Whether `out` accepts the peer (a welcome, or our link hello), and if
/// so whether it carries a session offer.
fn accepts(out: &Outgoing) -> Option<bool> {
    match out.message()? {
        Message::UserWelcome(w) => Some(w.session.is_some()),
        Message::PeerHelloLink(h) => Some(h.session.is_some()),
        _ => None,
    }
}

/// The reader's half: checks the peer's frames.
pub(super) enum Checker {
    /// A legacy user: its frames are unsigned.
    Unsigned,
    /// Every frame RSA-signed by this key.
    Signed(PeerKey),
    /// RSA-signed until the peer's first MAC'd frame (a user on a session
    /// we offered: it starts MACing once it has our welcome).
    Opening { key: PeerKey, open: Box<MacOpen> },
    /// Every frame MAC'd.
    Open(Box<MacOpen>),
}

impl Checker {
    fn new(key: &PublicKey, open: Option<Box<MacOpen>>) -> Self {
        match open {
            Some(open) => Checker::Open(open),
            None => Checker::Signed(PeerKey::new(key)),
        }
    }

    /// True once every frame must carry a MAC: a frame that fails then
    /// closes the connection.
    pub fn sealed(&self) -> bool {
        matches!(self, Checker::Open(_))
    }

    /// Checks an incoming frame; an error closes the connection.
    pub fn check(&mut self, env: &Envelope) -> Result<(), String> {
        if env.mac.is_some() {
            return self.open(env);
        }
        let key = match self {
            Checker::Open(_) => return Err("a frame without a mac on a mac-v1 session".into()),
            Checker::Unsigned => return Ok(()),
            Checker::Signed(key) | Checker::Opening { key, .. } => key,
        };
        let Some(key) = key.parsed() else {
            return Err("the peer's key no longer parses".into());
        };
        let ok = env
            .signed_bytes()
            .ok()
            .is_some_and(|b| key.verify_b64(&b, &env.sig).is_ok());
        if ok {
            Ok(())
        } else {
            Err(format!("{} signature does not verify", env.kind))
        }
    }

    /// A MAC'd frame: from now on every frame must be (the RSA key, a few
    /// KiB parsed, is not needed any more).
    fn open(&mut self, env: &Envelope) -> Result<(), String> {
        let state = std::mem::replace(self, Checker::Unsigned);
        let mut open = match state {
            Checker::Open(open) | Checker::Opening { open, .. } => open,
            other => {
                *self = other;
                return Err("a mac on a connection without a session".into());
            }
        };
        let result = open.open(env).map_err(|e| e.to_string());
        *self = Checker::Open(open);
        result
    }

    /// A frame that did not parse as an envelope still takes its place in
    /// a session's sequence if it names the next `seq` (it is refused, and
    /// the frames after it line up). False if it breaks the sequence.
    pub fn skip_unparsed(&mut self, text: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct SeqOnly {
            seq: Option<u64>,
        }
        let seq = || {
            serde_json::from_str::<SeqOnly>(text)
                .ok()
                .and_then(|s| s.seq)
        };
        match self {
            Checker::Unsigned | Checker::Signed(_) => true,
            Checker::Open(open) => open.skip_unparsed(seq()),
            Checker::Opening { open, .. } => match seq() {
                // An RSA-signed frame before the session started.
                None => true,
                seq => open.skip_unparsed(seq),
            },
        }
    }
}

/// A peer's key as the connection keeps it: encoded until a frame needs an
/// RSA check (parsed, with its Montgomery tables, it is several KiB, and a
/// peer on a `mac-v1` session never needs it). The encoded text is the one
/// the router's session and directory record hold (shared, not copied).
pub(crate) struct PeerKey {
    b64: std::sync::Arc<str>,
    parsed: Option<PublicKey>,
}

impl PeerKey {
    pub fn new(key: &PublicKey) -> Self {
        PeerKey {
            b64: key.b64_shared(),
            parsed: None,
        }
    }

    fn parsed(&mut self) -> Option<&PublicKey> {
        if self.parsed.is_none() {
            self.parsed = PublicKey::from_b64(&self.b64).ok();
        }
        self.parsed.as_ref()
    }
}

/// True if a hello lists the `mac-v1` capability.
pub(crate) fn offers_mac(env: &Envelope) -> bool {
    env.payload
        .get("caps")
        .and_then(|c| c.as_array())
        .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some(CAP_MAC_V1)))
}

/// The acceptor's side of `mac-v1`: if we allow it and the hello asks for
/// it, a fresh secret wrapped for the peer (into our answer) and our session.
pub(super) fn offer_session(
    ctx: &ConnCtx,
    hello: &Envelope,
    key: &PublicKey,
    signed: bool,
    peer: &str,
) -> (Option<MacSession>, Option<String>) {
    if !(ctx.mac && signed && offers_mac(hello)) {
        return (None, None);
    }
    match session::offer(key) {
        Ok((secret, wrapped)) => (
            Some(MacSession::new(&secret, peer, &ctx.me, false)),
            Some(wrapped),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not offer a link session; using signatures");
            (None, None)
        }
    }
}
