//! The engine's connection lifecycle: the run loop (input lines, frames,
//! the reconnect timer, batched acknowledgements and a 1 s tick), connecting
//! with backoff, losing the connection, and quitting.

use serde_json::Map;
use tokio::sync::mpsc;

use super::{ACK_BATCH, ACK_DELAY, Deferred, Engine, RECONNECT, tags};
use crate::client::HelloStyle;
use crate::client::codes::ClientCode;
use crate::client::commands;
use crate::client::events::{Event, Frontend};
use crate::client::session::{Session, SessionError};
use crate::wire::messages::{Ack, Message};
use crate::wire::{Envelope, ids};

/// When to try connecting again, and how many tries failed in a row.
struct Redial {
    attempt: u32,
    at: Option<tokio::time::Instant>,
    /// Connected at least once in this run: a `NAME_IN_USE` then most
    /// likely names our own previous connection, which the node has not
    /// yet seen close, so it is worth another try; before that, it means
    /// another client uses the name, and trying again cannot help.
    was_connected: bool,
}

/// What the run loop does after a step.
enum Next {
    /// Carry on.
    Go,
    /// Leave politely: acknowledge, record what was shown, close.
    Quit,
    /// End at once: the server cannot be used (why).
    Stop(String),
}

/// The client stopped because the server cannot be used: what it said.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

impl<F: Frontend> Engine<F> {
    /// Runs until `/quit` or the end of input (Ok), or until the server
    /// refuses us for good (Err, with what it said; the user was told).
    pub async fn run(mut self, mut input: mpsc::Receiver<String>) -> Result<(), Stopped> {
        let mut redial = Redial {
            attempt: 0,
            at: Some(tokio::time::Instant::now()),
            was_connected: false,
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            if !self.run_ready().await {
                self.quit().await;
                return Ok(());
            }
            let connected = self.session.is_some();
            let next = tokio::select! {
                line = input.recv() => self.line(line).await,
                frame = recv(&mut self.session), if connected => {
                    match frame {
                        Ok(Some((env, msg))) => self.frame(env, msg).await,
                        Ok(None) => self.lost("the server closed the connection".into(), &mut redial),
                        Err(e) => self.lost(e.to_string(), &mut redial),
                    }
                    Next::Go
                }
                _ = sleep_until(redial.at), if !connected => self.connect(&mut redial).await,
                _ = sleep_until(self.ack_at) => {
                    self.flush_acks().await;
                    Next::Go
                }
                _ = tick.tick() => {
                    self.expire_lookups();
                    self.expire_transfers();
                    self.release_ends();
                    self.retry_due().await;
                    Next::Go
                }
            };
            match next {
                Next::Go => {}
                Next::Quit => {
                    self.quit().await;
                    return Ok(());
                }
                Next::Stop(why) => return Err(Stopped(why)),
            }
        }
    }

    /// Runs the work whose key lookup is over; false means quit.
    async fn run_ready(&mut self) -> bool {
        while let Some(work) = self.ready.pop_front() {
            match work {
                Deferred::Cmd(cmd, id) => {
                    self.tags.running(id);
                    let go_on = self.command(cmd).await;
                    self.tags.running(None);
                    if !go_on {
                        return false;
                    }
                }
                Deferred::Frame(frame) => self.frame(frame.0, frame.1).await,
            }
        }
        true
    }

    /// One line of input (None: the end of input).
    async fn line(&mut self, line: Option<String>) -> Next {
        let Some(line) = line else {
            return Next::Quit;
        };
        let (id, line) = if line.trim_start().starts_with('{') {
            match tags::parse_json(&line) {
                Ok(c) => (c.id, c.command),
                Err(e) => {
                    self.emit(Event::error(ClientCode::Usage, e));
                    return Next::Go;
                }
            }
        } else {
            (None, line)
        };
        self.tags.running(id);
        let mut next = Next::Go;
        match commands::parse(&line) {
            Ok(None) => {}
            Ok(Some(cmd)) => {
                if !self.command(cmd).await {
                    next = Next::Quit;
                }
            }
            Err(e) => self.emit(Event::error(ClientCode::Usage, e.to_string())),
        }
        self.tags.running(None);
        next
    }

    /// One try at connecting; a failure that may pass sets the next try.
    async fn connect(&mut self, redial: &mut Redial) -> Next {
        let (server, user, tls) = (
            self.cfg.server.clone(),
            self.cfg.user.clone(),
            self.cfg.tls.clone(),
        );
        let invite = self.cfg.invite.clone();
        let style = HelloStyle::Signed;
        match Session::connect_full(&server, &user, self.key.clone(), style, tls, invite).await {
            Ok(session) if session.welcomed() && !session.authenticated() => {
                // We offered mac-v1: a socp node that welcomes us without a
                // session leaves its frames to us unauthenticated (we know no
                // key of its to check signatures with), so a forged ERROR or
                // ACK could drop our outbox. See DESIGN.md.
                session.close().await;
                let why = format!(
                    "{server} welcomed us without a mac-v1 session, so its frames cannot be authenticated; not retrying: \
                     use a server that offers sessions (not --no-mac), over wss://"
                );
                self.emit(Event::error(ClientCode::NoSession, why.clone()));
                Next::Stop(why)
            }
            Ok(session) => {
                redial.attempt = 0;
                redial.at = None;
                redial.was_connected = true;
                self.emit(Event::Connected {
                    user: self.cfg.user.clone(),
                    server: session.server_id.clone(),
                });
                self.session = Some(session);
                self.on_connect().await;
                Next::Go
            }
            Err(e) if e.is_transient() && (redial.was_connected || !e.is_name_in_use()) => {
                tracing::info!(error = %e, "not connected");
                self.schedule_redial(redial, e.to_string());
                Next::Go
            }
            Err(e) => {
                let code = match &e {
                    SessionError::Refused { code, .. } => code.clone(),
                    _ => ClientCode::Connect.to_string(),
                };
                let detail = format!("{e}; not retrying: {}", advice(&e));
                self.emit(Event::Error {
                    code: code.clone(),
                    detail: detail.clone(),
                });
                Next::Stop(format!("{code}: {detail}"))
            }
        }
    }

    fn lost(&mut self, reason: String, redial: &mut Redial) {
        self.session = None;
        // What was shown but not yet acknowledged comes again after the
        // reconnect; it is marked as seen, so it is not shown twice.
        self.to_ack.clear();
        self.to_report.clear();
        self.ack_at = None;
        // Files the node had not acknowledged whole go on after the
        // reconnect (`send_file`); those the cut did not already announce
        // are said to wait now.
        for file_id in self.flights.ids() {
            let Some(f) = self.flights.get(&file_id).filter(|f| !f.told_cut) else {
                continue;
            };
            let (msg_id, to) = (Some(f.start_msg_id.clone()), f.to.clone());
            let reason = format!(
                "{}: the connection dropped before the server acknowledged the whole file; what it lacks follows the reconnect",
                f.name
            );
            self.emit(Event::Pending { msg_id, to, reason });
        }
        // Files being received are kept: the node hands on the rest after
        // the reconnect (see `receive_file`).
        self.emit(Event::Disconnected {
            reason: reason.clone(),
        });
        self.schedule_redial(redial, reason);
    }

    /// The next try at connecting, said once with why the last one failed
    /// (numbered from 1 since the last time we were connected).
    fn schedule_redial(&mut self, redial: &mut Redial, reason: String) {
        redial.attempt += 1;
        let wait = RECONNECT.delay(redial.attempt);
        self.emit(Event::Reconnecting {
            attempt: redial.attempt,
            in_ms: wait.as_millis() as u64,
            reason,
        });
        redial.at = Some(tokio::time::Instant::now() + wait);
    }

    async fn quit(mut self) {
        self.flush_acks().await;
        self.store_journal();
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        for name in self.receiver.abort_all() {
            self.emit(Event::error(
                ClientCode::File,
                format!("{name}: transfer incomplete at /quit; nothing was saved"),
            ));
        }
        for file_id in self.flights.ids() {
            let why = "the client quit before the server acknowledged the whole file".to_owned();
            self.file_failed(&file_id, why);
        }
        self.emit(Event::Disconnected {
            reason: "quit".into(),
        });
    }

    /// Sends a frame now; says why not (and returns false) if it cannot.
    pub(super) async fn send(&mut self, to: &str, msg: &Message) -> bool {
        let Some(session) = self.session.as_mut() else {
            self.emit(Event::error(
                ClientCode::NotConnected,
                "not connected to the server; try again when it says connected",
            ));
            return false;
        };
        match session.send(to, msg).await {
            Ok(()) => true,
            Err(e) => {
                self.emit(Event::error(
                    ClientCode::NotConnected,
                    format!("sending failed: {e}"),
                ));
                false
            }
        }
    }

    /// After a (re)connect: what the outbox holds goes out first, in order,
    /// then the key lookups that were waiting.
    async fn on_connect(&mut self) {
        self.rechecked.clear();
        self.receiver.touch_all(std::time::Instant::now());
        self.resend_outbox().await;
        self.resume_files().await;
        for user in self.lookups.reconnected() {
            self.request_key(&user).await;
        }
    }

    /// Acknowledges handled content to the node, one frame for many ids.
    async fn flush_acks(&mut self) {
        self.ack_at = None;
        // Reports first: the node takes one only for content not yet
        // acknowledged.
        self.send_file_reports().await;
        if self.to_ack.is_empty() {
            return;
        }
        let msg_ids = std::mem::take(&mut self.to_ack);
        if let Some(session) = self.session.as_mut() {
            let ack = Message::Ack(Ack {
                msg_ids,
                extra: Map::new(),
            });
            let _ = session.send(ids::TO_SERVER, &ack).await;
        }
    }

    /// Acknowledges content soon, with others handled meanwhile.
    pub(super) fn ack_later(&mut self, msg_id: Option<&str>) {
        let Some(id) = msg_id else { return };
        self.to_ack.push(id.to_owned());
        if self.ack_at.is_none() {
            self.ack_at = Some(tokio::time::Instant::now() + ACK_DELAY);
        }
        if self.to_ack.len() >= ACK_BATCH {
            self.ack_at = Some(tokio::time::Instant::now());
        }
    }
}

/// What the user can do about a refusal that stops the client.
fn advice(e: &SessionError) -> &'static str {
    if e.is_name_in_use() {
        "another client is connected under this name (close it, or use another --user), then start again"
    } else {
        "fix this and start again"
    }
}

async fn recv(session: &mut Option<Session>) -> Result<Option<(Envelope, Message)>, SessionError> {
    match session.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
