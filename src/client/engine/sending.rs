//! The engine's side of sending content: the size check at compose time,
//! the outbox (kept until the node's `ACK`, "sent" only then), the node's
//! refusals (dropped or kept and retried later, set aside after repeated
//! refusals), `/outbox`, and the node's answers about files in flight
//! (kept in [`super::flights::Flights`]).

use serde_json::Value;

use super::Engine;
use crate::client::codes::ClientCode;
use crate::client::commands::OutboxCmd;
use crate::client::events::{Event, Frontend};
use crate::client::keyring::{Outgoing, Waiting};
use crate::client::outbox::{self, HOLD_AFTER, Refusal};
use crate::wire::messages::{ErrorBody, Message};

/// The `msg_id` an `ERROR` is about, if it names one.
pub(crate) fn error_msg_id(e: &ErrorBody) -> Option<&str> {
    e.extra.get("msg_id").and_then(Value::as_str)
}

impl<F: Frontend> Engine<F> {
    /// True if `msg` fits in a frame a node takes; says why not otherwise.
    pub(super) fn fits(&mut self, to: &str, msg: &Message) -> bool {
        match outbox::check_size(&self.cfg.user, to, msg) {
            Ok(_) => true,
            Err(e) => {
                self.emit(Event::error(
                    ClientCode::TooLarge,
                    format!("{e}; nothing was sent"),
                ));
                false
            }
        }
    }

    /// Sends content through the outbox: kept until the node acknowledges
    /// it (only then "sent"), and sent again after a reconnect (or a
    /// restart) until then. Content too big for any node is refused here and
    /// never queued.
    pub(super) async fn send_content(&mut self, to: &str, msg: Message, msg_id: String) {
        if !self.fits(to, &msg) {
            return;
        }
        self.tags.content(&msg_id);
        let out = Outgoing {
            msg_id: msg_id.clone(),
            to: to.to_owned(),
            kind: msg.type_name().to_owned(),
            payload: msg.to_payload(),
        };
        if let Err(e) = self.keyring.outbox_add(&out) {
            return self.emit(Event::error(
                ClientCode::Keyring,
                format!("could not keep the message in the outbox, not sent: {e}"),
            ));
        }
        self.transmit(&out).await;
    }

    /// Sends one outbox entry now if connected; says it waits otherwise. A
    /// node that acknowledges nothing (a reference node) gets "sent" at once.
    async fn transmit(&mut self, out: &Outgoing) {
        let Some(msg) = outbox::message(out) else {
            return;
        };
        let (sent, acks) = match self.session.as_mut() {
            Some(session) => (
                session.send(&out.to, &msg).await.is_ok(),
                session.welcomed(),
            ),
            None => (false, true),
        };
        if !sent {
            self.emit(Event::Pending {
                msg_id: Some(out.msg_id.clone()),
                to: outbox::shown_to(out),
                reason: "not connected".into(),
            });
        } else if !acks {
            self.emit_sent(out, outbox::kind_name(&msg));
        }
    }

    fn emit_sent(&mut self, out: &Outgoing, kind: &'static str) {
        self.emit(Event::Sent {
            kind,
            to: outbox::shown_to(out),
            msg_id: out.msg_id.clone(),
        });
    }

    /// After a (re)connect: the outbox goes out in order, except entries set
    /// aside after repeated refusals.
    pub(super) async fn resend_outbox(&mut self) {
        self.retry_at.clear();
        let waiting = match self.keyring.outbox_waiting() {
            Ok(w) => w,
            Err(e) => return self.emit(Event::error(ClientCode::Keyring, e.to_string())),
        };
        for w in waiting.into_iter().filter(|w| !w.held) {
            let Some(msg) = outbox::message(&w.out) else {
                continue;
            };
            let Some(session) = self.session.as_mut() else {
                return;
            };
            if session.send(&w.out.to, &msg).await.is_err() {
                return;
            }
        }
    }

    /// Sends again the transiently refused entries whose wait is over.
    pub(super) async fn retry_due(&mut self) {
        if self.session.is_none() {
            return;
        }
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.retry_at.remove(&id);
            if let Ok(Some(w)) = self.keyring.outbox_get(&id)
                && !w.held
            {
                self.transmit(&w.out).await;
            }
        }
    }

    /// The node took these: they leave the outbox and are "sent" now.
    pub(super) fn acked(&mut self, msg_ids: Vec<String>) {
        for id in &msg_ids {
            if let Ok(Some(w)) = self.keyring.outbox_get(id) {
                self.sent.insert(id, &outbox::shown_to(&w.out));
                self.retry_at.remove(id);
                self.emit_sent(&w.out, outbox::entry_kind(&w.out));
            }
            if let Some(f) = self.flights.acked(id) {
                // Its receipts name the end; the file is shown under its
                // manifest's id.
                self.sent.insert(&f.start_msg_id, &f.to);
                self.emit(Event::Sent {
                    kind: "file",
                    to: f.to,
                    msg_id: f.start_msg_id,
                });
            }
        }
        if let Err(e) = self.keyring.outbox_done(&msg_ids) {
            self.emit(Event::error(ClientCode::Keyring, e.to_string()));
        }
    }

    /// An `ERROR` from the node. One naming content we sent means it was not
    /// taken: a permanent refusal drops it from the outbox, a transient one
    /// keeps it for a later try (and sets it aside after [`HOLD_AFTER`]).
    pub(super) fn refused(&mut self, e: ErrorBody) {
        let Some(id) = error_msg_id(&e).map(str::to_owned) else {
            return self.emit(Event::Error {
                code: e.code,
                detail: e.detail,
            });
        };
        if let Ok(Some(w)) = self.keyring.outbox_get(&id) {
            return self.refused_entry(w, e.code, e.detail);
        }
        if let Some(file_id) = self.flights.file_of(&id).map(str::to_owned)
            && let Some(f) = self.flights.remove(&file_id)
        {
            return self.emit(Event::NotSent {
                msg_id: f.start_msg_id,
                to: f.to,
                code: e.code,
                detail: format!("{}: {}", f.name, e.detail),
                kept: false,
            });
        }
        // Content our server took (and acknowledged) and a server further
        // on refused for good: it was set aside there, not delivered.
        if let Some(to) = self.sent.recipient(&id).map(str::to_owned) {
            return self.emit(Event::NotSent {
                msg_id: id,
                to,
                code: e.code,
                detail: format!(
                    "a server further on refused it after yours had taken it: {}; it was not delivered, send it again",
                    e.detail
                ),
                kept: false,
            });
        }
        self.emit(Event::Error {
            code: e.code,
            detail: format!("{} (about {id})", e.detail),
        });
    }

    fn refused_entry(&mut self, w: Waiting, code: String, detail: String) {
        let (msg_id, to) = (w.out.msg_id.clone(), outbox::shown_to(&w.out));
        self.retry_at.remove(&msg_id);
        match Refusal::of(&code) {
            Refusal::Permanent => {
                if let Err(e) = self.keyring.outbox_done(std::slice::from_ref(&msg_id)) {
                    self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                }
                self.emit(Event::NotSent {
                    msg_id,
                    to,
                    code,
                    detail,
                    kept: false,
                });
            }
            Refusal::Transient => {
                let now = match self.keyring.outbox_refused(
                    &msg_id,
                    &format!("{code}: {detail}"),
                    HOLD_AFTER,
                ) {
                    Ok(Some(now)) => now,
                    Ok(None) => return,
                    Err(e) => return self.emit(Event::error(ClientCode::Keyring, e.to_string())),
                };
                let detail = if now.held {
                    format!(
                        "{detail}; refused {} times, set aside: /outbox retry {} sends it again",
                        now.refusals, msg_id
                    )
                } else {
                    let wait = outbox::retry_delay(now.refusals);
                    self.retry_at
                        .insert(msg_id.clone(), tokio::time::Instant::now() + wait);
                    format!("{detail}; trying again in {} s", wait.as_secs())
                };
                self.emit(Event::NotSent {
                    msg_id,
                    to,
                    code,
                    detail,
                    kept: true,
                });
            }
        }
    }

    /// `/outbox`, `/outbox drop ID`, `/outbox retry ID`.
    pub(super) async fn outbox_command(&mut self, cmd: OutboxCmd) {
        let waiting = match self.keyring.outbox_waiting() {
            Ok(w) => w,
            Err(e) => return self.emit(Event::error(ClientCode::Keyring, e.to_string())),
        };
        let id = match &cmd {
            OutboxCmd::List => {
                let entries = waiting.iter().map(outbox::entry).collect();
                return self.emit(Event::Outbox { entries });
            }
            OutboxCmd::Drop(id) | OutboxCmd::Retry(id) => id,
        };
        let w = match outbox::find(&waiting, id) {
            Ok(w) => w.clone(),
            Err(e) => return self.emit(Event::error(ClientCode::Usage, e)),
        };
        match cmd {
            OutboxCmd::Drop(_) => {
                self.retry_at.remove(&w.out.msg_id);
                if let Err(e) = self
                    .keyring
                    .outbox_done(std::slice::from_ref(&w.out.msg_id))
                {
                    return self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                }
                self.emit(Event::NotSent {
                    msg_id: w.out.msg_id.clone(),
                    to: outbox::shown_to(&w.out),
                    code: ClientCode::Dropped.to_string(),
                    detail: "dropped from the outbox with /outbox drop".into(),
                    kept: false,
                });
            }
            _ => {
                if let Err(e) = self.keyring.outbox_release(&w.out.msg_id) {
                    return self.emit(Event::error(ClientCode::Keyring, e.to_string()));
                }
                self.transmit(&w.out).await;
            }
        }
    }
}
