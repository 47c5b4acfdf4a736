//! A flooding user: sends many DMs as fast as its node takes them while it
//! reads (and acknowledges) what is delivered to it, on one session. Used
//! to saturate links in both directions at once.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use socp::client::Session;
use socp::wire::messages::{Ack, Message};
use socp::wire::{Envelope, MAX_CONTENT_FRAME_BYTES};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::cluster::user_key;

/// What a flooder saw when it stopped.
#[derive(Debug, Default)]
pub struct FloodReport {
    /// Ids of the DMs delivered to this user.
    pub received: HashSet<String>,
    /// DMs this user sent.
    pub sent: usize,
    /// `ERROR`s the node sent this user.
    pub errors: Vec<String>,
}

/// Starts `session`'s user sending `count` DMs of about `bytes` to `to`
/// (one sealed DM, sent again under fresh msg_ids: nodes do not read the
/// content), while reading and acknowledging deliveries. The handle ends
/// when `stop` is dropped or the connection closes; the sender half ends
/// after `count` DMs.
pub fn flood(session: Session, to: &str, count: usize, bytes: usize, tag: &str) -> Flood {
    assert!(bytes < MAX_CONTENT_FRAME_BYTES / 2);
    let user = session.user().to_owned();
    let dm = socp::content::seal_dm(
        session.key(),
        &user,
        to,
        user_key(to).public(),
        &vec![b'x'; bytes],
        socp::wire::now_ms(),
    )
    .expect("seal a DM");
    let to = to.to_owned();
    let tag = tag.to_owned();
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(Mutex::new(FloodReport::default()));
    let shared = state.clone();
    let handle = tokio::spawn(async move {
        let (ws, mac, _) = session.into_parts();
        let (mut seal, mut open) = match mac {
            Some(m) => {
                let (s, o) = m.split();
                (Some(s), Some(o))
            }
            None => (None, None),
        };
        let (mut sink, mut stream) = ws.split();
        let (acks_tx, mut acks) = mpsc::unbounded_channel::<String>();
        let writer = async {
            let mut sent = 0;
            let mut seal_send = async |sink: &mut _, mut env: Envelope| -> bool {
                let text = match seal.as_mut() {
                    Some(s) => s.seal_to_json(&mut env).expect("mac"),
                    None => env.to_json(),
                };
                SinkExt::send(sink, WsMessage::text(text)).await.is_ok()
            };
            loop {
                tokio::select! {
                    biased;
                    Some(id) = acks.recv() => {
                        let mut ids = vec![id];
                        while let Ok(more) = acks.try_recv() { ids.push(more); }
                        let env = Message::Ack(Ack { msg_ids: ids, extra: Default::default() }).into_envelope(&user, "server_*");
                        if !seal_send(&mut sink, env).await { return sent; }
                    }
                    () = std::future::ready(()), if sent < count => {
                        let mut m = dm.clone();
                        m.msg_id = Some(format!("{tag}-{sent}"));
                        let env = Message::MsgPrivate(m).into_envelope(&user, &to);
                        if !seal_send(&mut sink, env).await { return sent; }
                        sent += 1;
                        shared.lock().unwrap().sent = sent;
                    }
                    else => {
                        // Everything sent: keep acknowledging.
                        match acks.recv().await {
                            Some(id) => {
                                let env = Message::Ack(Ack { msg_ids: vec![id], extra: Default::default() }).into_envelope(&user, "server_*");
                                if !seal_send(&mut sink, env).await { return sent; }
                            }
                            None => return sent,
                        }
                    }
                }
            }
        };
        let reader = async {
            while let Some(Ok(frame)) = stream.next().await {
                let WsMessage::Text(text) = frame else {
                    continue;
                };
                let Ok(env) = Envelope::parse(text.as_str()) else {
                    continue;
                };
                if let Some(o) = open.as_mut()
                    && o.open(&env).is_err()
                {
                    break;
                }
                match Message::from_envelope(&env) {
                    Ok(Message::UserDeliver(d)) => {
                        if let Some(id) = d.msg_id {
                            shared.lock().unwrap().received.insert(id.clone());
                            let _ = acks_tx.send(id);
                        }
                    }
                    Ok(Message::Error(e)) => shared
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("{}: {}", e.code, e.detail)),
                    _ => {}
                }
            }
        };
        tokio::pin!(writer);
        tokio::pin!(reader);
        let mut writing = true;
        loop {
            tokio::select! {
                _ = &mut writer, if writing => writing = false,
                () = &mut reader => break,
                _ = &mut stop => break,
            }
        }
    });
    Flood {
        state,
        stop: Some(stop_tx),
        handle,
    }
}

/// A running flooder.
pub struct Flood {
    pub state: Arc<Mutex<FloodReport>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: JoinHandle<()>,
}

impl Flood {
    /// DMs sent so far.
    pub fn sent(&self) -> usize {
        self.state.lock().unwrap().sent
    }

    /// Distinct DMs delivered to this user so far.
    pub fn received(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Stops the flooder (closing its connection).
    pub async fn stop(mut self) -> FloodReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.handle).await;
        std::mem::take(&mut *self.state.lock().unwrap())
    }
}

/// Waits up to `within` for `pred`, polling.
pub async fn eventually(within: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pred()
}
