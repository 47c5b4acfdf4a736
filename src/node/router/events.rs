//! What goes into the router and what comes out of it: the events it
//! steps on (`Input`), the actions it asks for (`Output`), and the frames
//! it sends (`Outgoing`), typed until a connection's writer serializes them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{CAP_REGISTER_ANSWER, CAP_SOCP, ConnId};
use crate::crypto::PublicKey;
use crate::node::custody::Content;
pub(crate) use crate::node::state::StoreOp;
use crate::node::state::{Bodies, RowsAsk, RowsRead, StoreFailure, Written};
use crate::wire::Envelope;
use crate::wire::messages::{Kind, Message, PeerHelloLink, Proof, Role};

/// A frame for a connection's writer to stamp with our id, sign and send:
/// typed until the writer serializes it, once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub to: String,
    pub frame: Frame,
}

/// What an [`Outgoing`] carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    /// A message made for this send (boxed: a queued frame stays small,
    /// and so does every connection's queue).
    Msg(Box<Message>),
    /// Content from custody, shared with it rather than copied.
    Content(Relay),
}

/// A piece of content in custody as it leaves on one hop.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Relay {
    pub content: Arc<Content>,
    /// On a server link (a DM is a `PEER_DELIVER` there, a `USER_DELIVER`
    /// to its recipient).
    pub on_link: bool,
    /// Who the frame names on this hop, beside what its content says.
    pub names: Names,
}

/// Who a frame from custody names on the hop it leaves on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Names {
    /// Nobody beside what the content says.
    Nobody,
    /// The recipient of a file frame (`user_id`: its destination user).
    User(String),
    /// The members a group frame is for behind a link (`recipients`).
    Members(Vec<String>),
}

impl Outgoing {
    /// A message for `to`.
    pub fn new(to: impl Into<String>, msg: Message) -> Self {
        Outgoing {
            to: to.into(),
            frame: Frame::Msg(Box::new(msg)),
        }
    }

    /// The message, unless it is content from custody.
    pub fn message(&self) -> Option<&Message> {
        match &self.frame {
            Frame::Msg(msg) => Some(msg),
            Frame::Content(_) => None,
        }
    }

    pub fn message_mut(&mut self) -> Option<&mut Message> {
        match &mut self.frame {
            Frame::Msg(msg) => Some(msg),
            Frame::Content(_) => None,
        }
    }

    /// The frame type it is sent as.
    pub fn kind(&self) -> Kind {
        match &self.frame {
            Frame::Msg(msg) => msg.kind(),
            Frame::Content(relay) => relay.content.kind().frame(relay.on_link),
        }
    }

    /// Its envelope `type`.
    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// The payload as it goes on the wire: the one place a frame from this
    /// node becomes JSON.
    pub fn payload(&self) -> Map<String, Value> {
        match &self.frame {
            Frame::Msg(msg) => msg.to_payload(),
            Frame::Content(relay) => relay.payload(),
        }
    }

    /// The unsigned envelope it goes out in, from us (`from`).
    pub fn into_envelope(self, from: &str) -> Envelope {
        Envelope::new(self.type_name(), from, &self.to, self.payload())
    }
}

impl Relay {
    fn payload(&self) -> Map<String, Value> {
        let mut payload = self.content.to_payload();
        match &self.names {
            Names::Nobody => {}
            Names::User(user) => {
                payload.insert(USER_ID.into(), Value::String(user.clone()));
            }
            Names::Members(m) if m.is_empty() => {}
            Names::Members(m) => {
                payload.insert(RECIPIENTS.into(), Value::from(m.clone()));
            }
        }
        payload
    }
}

/// The field a file frame names its recipient in.
pub(super) const USER_ID: &str = "user_id";
/// The field of a group frame on a link that names the members it is for
/// behind that link (a `socp` extension, never taken from a user).
pub(super) const RECIPIENTS: &str = "recipients";

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    Send(ConnId, Outgoing),
    /// Close after the frames already queued for it are sent.
    Close(ConnId),
    Persist(StoreOp),
    Timer {
        req_id: String,
        after: Duration,
    },
    /// Acknowledge `msg_id` to the connection once what came before is
    /// committed (ack after persist).
    AckAfterPersist {
        conn: ConnId,
        to: String,
        msg_id: String,
    },
    /// Read these custody bodies back from disk (answered by `BodiesRead`).
    LoadBodies(Vec<u64>),
    /// Dial a server the master announced (`peers.rs`).
    Dial(super::peers::PeerDial),
    /// Stop dialing a server the master withdrew (`peers.rs`).
    Undial(String),
    /// Read a page of a destination's custody rows back from disk
    /// (answered by `RowsRead`).
    LoadRows(RowsAsk),
    /// Say `Input::Drained` when this link's queue has room again: it is
    /// owed more than it was sent at once (`owed.rs`).
    WhenDrained(ConnId),
}

/// A user hello whose key, signature and freshness the connection checked.
#[derive(Debug, Clone)]
pub(crate) struct UserHelloIn {
    pub conn: ConnId,
    pub user_id: String,
    pub key: PublicKey,
    /// The signed hello, as proof of presence (None for a legacy hello).
    pub proof: Option<Proof>,
    /// A `mac-v1` secret wrapped for the user, for the welcome.
    pub session: Option<String>,
    /// The user's IP address, for the registration rate (None: unknown).
    pub addr: Option<std::net::IpAddr>,
}

/// A server hello whose signature the connection checked.
#[derive(Debug, Clone)]
pub(crate) struct LinkHelloIn {
    pub conn: ConnId,
    pub server_id: String,
    pub key: PublicKey,
    pub role: Role,
    pub host: String,
    pub port: u16,
    /// The hello's envelope `ts`: must grow from one link to the next.
    pub ts: i64,
    /// The hello's envelope `to`: `server_*`, or the server it is meant for.
    pub to: String,
    /// The peer listed our capability: it re-advertises after a reconnect.
    pub socp: bool,
    /// The peer answers registrations that carry a `req_id`.
    pub answers_registrations: bool,
    /// The peer listed `presence-lookup-v1` (a local asks for presence on
    /// demand; a master serves it).
    pub lookup: bool,
    /// We dialed it (its hello is the answer to ours).
    pub dialed: bool,
    /// We dialed it as our master (`--master-url`).
    pub dialed_master: bool,
    /// A `mac-v1` secret wrapped for the dialer, for our answer.
    pub session: Option<String>,
    /// The hello's payload and signature, as the master announces it to
    /// the other locals (None if it was not signed).
    pub signed: Option<Proof>,
}

impl LinkHelloIn {
    /// Builds the router's view of a checked link hello.
    pub fn new(
        conn: ConnId,
        env: &Envelope,
        hello: PeerHelloLink,
        key: PublicKey,
        dialed: bool,
        dialed_master: bool,
        session: Option<String>,
    ) -> Self {
        let lists = |cap: &str| {
            hello
                .caps
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == cap))
        };
        let (socp, answers_registrations) = (lists(CAP_SOCP), lists(CAP_REGISTER_ANSWER));
        LinkHelloIn {
            conn,
            server_id: env.from.clone(),
            key,
            role: hello.role,
            host: hello.host,
            port: hello.port,
            ts: env.ts,
            to: env.to.clone(),
            socp,
            answers_registrations,
            lookup: lists(super::CAP_PRESENCE_LOOKUP),
            dialed,
            dialed_master,
            session,
            signed: (!env.sig.is_empty()).then(|| Proof {
                payload: env.payload.clone(),
                sig: env.sig.clone(),
                extra: Map::new(),
            }),
        }
    }
}

/// Events the router consumes.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    UserHello(UserHelloIn),
    /// A frame from a user; `env` carries the header only (the payload
    /// moved into `msg`).
    UserFrame {
        conn: ConnId,
        env: Envelope,
        msg: Message,
    },
    UserClosed(ConnId),
    LinkHello(LinkHelloIn),
    LinkFrame {
        conn: ConnId,
        env: Envelope,
        msg: Message,
    },
    LinkClosed(ConnId),
    Timeout(String),
    /// Periodic housekeeping (mailbox expiry).
    Tick,
    /// The node is stopping: tell the peers our users are gone.
    Shutdown,
    /// Nothing else is queued: send what was held back for batching.
    Idle,
    /// The store could not write these (PROTOCOL.md C14).
    StoreFailed(StoreFailure),
    /// These custody rows and directory records are on disk.
    Stored(Written),
    /// A page of custody rows read back from disk.
    RowsRead(RowsRead),
    /// Custody bodies read back from disk, and those that could not be.
    BodiesRead {
        bodies: Bodies,
        unread: Vec<u64>,
    },
    /// The link on this connection drained its queue after a
    /// [`Output::WhenDrained`]: it may be sent more (`owed.rs`).
    Drained(ConnId),
}

impl Input {
    /// True for what keeps frames moving out: a hello, link traffic, timers,
    /// the store's answers, and a user's `ACK` (it releases what the node
    /// holds). The hub serves these before the rest of what users bring in,
    /// so a flood of user content cannot starve the acks that keep links
    /// flowing. A user's `RECEIPT` (an `undecryptable` report) goes the same
    /// way, so the `ACK` the client sends after it cannot overtake it. A
    /// user's close goes after that user's frames.
    pub fn is_urgent(&self) -> bool {
        match self {
            Input::UserFrame { msg, .. } => {
                matches!(msg, Message::Ack(_) | Message::Receipt(_))
            }
            Input::UserClosed(_) => false,
            _ => true,
        }
    }
}

/// One live link, as the metrics name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub server: String,
    /// `master`, `local`, or `unknown` for a server not pinned yet.
    pub role: &'static str,
    /// We dialed it (else it dialed us).
    pub dialed: bool,
}
