//! A connection's outgoing queue: bounded in frames (a full queue
//! disconnects the peer, `hub.rs`) and, for a user, in bytes. A user that
//! asks for large answers (`USER_LIST`, up to 64 KiB each) and reads them
//! slowly would otherwise hold up to 1,024 of them in the node's memory;
//! past `--user-queue-bytes` its connection is closed with
//! `QUOTA_EXCEEDED` instead, and what is queued for it is dropped.
//!
//! Content from custody is not counted: it is shared with custody (which
//! bounds it with its window of 256 frames per user and its byte limits)
//! and custody sends it again after a close, so counting it would only
//! close a slow reader of large files again and again. A server link keeps
//! the frame bound alone (`LINK_SEND_QUEUE`): its other frames are small
//! (acks, receipts, presence, directory answers) and its peer is an
//! admitted server whose content custody bounds the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use super::ConnCmd;
use crate::node::router::Frame;

/// Default for `--user-queue-bytes`: sixteen of the largest `USER_LIST`
/// answers.
pub const USER_QUEUE_BYTES: usize = 1 << 20;
/// What a queued frame's envelope adds to its payload, roughly (the
/// header fields and a MAC; a signature is counted by its payload alone).
const ENVELOPE_BYTES: usize = 128;

/// Bytes queued for one connection, shared by its senders and its writer.
#[derive(Debug)]
pub(crate) struct Budget {
    held: AtomicUsize,
    max: usize,
    /// Set once a frame did not fit: the connection is to be closed.
    over: AtomicBool,
}

impl Budget {
    /// Takes room for `n` bytes; false (and the budget is spent for good)
    /// if they do not fit. A queue with nothing in it takes any frame.
    fn admit(&self, n: usize) -> bool {
        if self.over.load(Ordering::Relaxed) {
            return false;
        }
        let before = self.held.fetch_add(n, Ordering::Relaxed);
        if before > 0 && before + n > self.max {
            self.held.fetch_sub(n, Ordering::Relaxed);
            self.over.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The sending side of a connection's queue (the hub's, and the reader's
/// through [`WeakQueue`]).
#[derive(Debug, Clone)]
pub(crate) struct SendQueue {
    tx: mpsc::Sender<ConnCmd>,
    budget: Option<Arc<Budget>>,
}

/// A [`SendQueue`] held weakly: when the hub drops the queue (a slow peer),
/// the connection still ends.
pub(crate) struct WeakQueue {
    tx: mpsc::WeakSender<ConnCmd>,
    budget: Option<Arc<Budget>>,
}

/// The receiving side, for the connection's writer.
pub(crate) struct QueueRx {
    rx: mpsc::Receiver<ConnCmd>,
    budget: Option<Arc<Budget>>,
}

/// A queue of `frames` commands, and of `bytes` bytes if given.
pub(crate) fn queue(frames: usize, bytes: Option<usize>) -> (SendQueue, QueueRx) {
    let (tx, rx) = mpsc::channel(frames);
    let budget = bytes.map(|max| {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            max,
            over: AtomicBool::new(false),
        })
    });
    let send = SendQueue {
        tx,
        budget: budget.clone(),
    };
    (send, QueueRx { rx, budget })
}

impl From<mpsc::Sender<ConnCmd>> for SendQueue {
    /// A queue bounded in frames only.
    fn from(tx: mpsc::Sender<ConnCmd>) -> Self {
        SendQueue { tx, budget: None }
    }
}

/// Bytes a command holds while queued, as counted against the budget (the
/// same on the way in and out).
fn bytes_of(cmd: &ConnCmd) -> usize {
    match cmd {
        ConnCmd::Frame(out) => match &out.frame {
            Frame::Msg(msg) => ENVELOPE_BYTES + out.to.len() + msg.json_len(),
            Frame::Content(_) => 0,
        },
        ConnCmd::Pong(payload) => payload.len(),
        ConnCmd::Close => 0,
    }
}

/// Queues `cmd` on `tx` within `budget`; over it, the command comes back as
/// if the queue were full (the hub then drops the connection).
fn try_send(
    tx: &mpsc::Sender<ConnCmd>,
    budget: Option<&Arc<Budget>>,
    cmd: ConnCmd,
) -> Result<(), TrySendError<ConnCmd>> {
    let Some(budget) = budget else {
        return tx.try_send(cmd);
    };
    let n = bytes_of(&cmd);
    if !budget.admit(n) {
        return Err(TrySendError::Full(cmd));
    }
    tx.try_send(cmd).inspect_err(|_| budget.release(n))
}

impl SendQueue {
    pub(crate) fn try_send(&self, cmd: ConnCmd) -> Result<(), TrySendError<ConnCmd>> {
        try_send(&self.tx, self.budget.as_ref(), cmd)
    }

    pub(crate) fn downgrade(&self) -> WeakQueue {
        WeakQueue {
            tx: self.tx.downgrade(),
            budget: self.budget.clone(),
        }
    }
}

impl WeakQueue {
    /// Queues `cmd` if the queue is still there; false if it could not.
    pub(crate) fn try_send(&self, cmd: ConnCmd) -> bool {
        self.tx
            .upgrade()
            .is_some_and(|tx| try_send(&tx, self.budget.as_ref(), cmd).is_ok())
    }
}

impl QueueRx {
    pub(crate) async fn recv(&mut self) -> Option<ConnCmd> {
        let cmd = self.rx.recv().await?;
        self.taken(&cmd);
        Some(cmd)
    }

    pub(crate) fn try_recv(&mut self) -> Result<ConnCmd, TryRecvError> {
        let cmd = self.rx.try_recv()?;
        self.taken(&cmd);
        Ok(cmd)
    }

    fn taken(&self, cmd: &ConnCmd) {
        if let Some(budget) = &self.budget {
            budget.release(bytes_of(cmd));
        }
    }

    /// True once a frame did not fit the byte budget: the connection is to
    /// be closed, and what is queued dropped.
    pub(crate) fn overflowed(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.over.load(Ordering::Relaxed))
    }

    /// The byte budget, if there is one.
    pub(crate) fn max_bytes(&self) -> Option<usize> {
        self.budget.as_ref().map(|b| b.max)
    }

    /// Bytes counted as queued.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.budget
            .as_ref()
            .map_or(0, |b| b.held.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::node::custody::Content;
    use crate::node::router::{Names, Outgoing, Relay};
    use crate::wire::messages::{Deliver, Message, UserList};

    fn list(users: usize) -> ConnCmd {
        let list = UserList {
            users: (0..users).map(|i| format!("user{i:05}")).collect(),
            total: None,
            truncated: None,
            total_capped: None,
            extra: Default::default(),
        };
        ConnCmd::Frame(Box::new(Outgoing::new("alice", Message::UserList(list))))
    }

    #[tokio::test]
    async fn a_user_queue_is_bounded_in_bytes_and_gives_them_back() {
        let (tx, mut rx) = queue(1024, Some(4096));
        // One list of ~2,200 bytes fits, a second does not: the budget is
        // spent and the queue refuses everything from then on.
        tx.try_send(list(200)).unwrap();
        assert!(rx.held() > 2000, "{} bytes counted", rx.held());
        assert!(matches!(tx.try_send(list(200)), Err(TrySendError::Full(_))));
        assert!(rx.overflowed());
        assert!(tx.try_send(ConnCmd::Close).is_err());
        assert!(rx.recv().await.is_some());
        assert_eq!(rx.held(), 0, "what was taken is given back");
        // Within the budget, frames come and go as they like.
        let (tx, mut rx) = queue(1024, Some(4096));
        for _ in 0..100 {
            tx.try_send(list(100)).unwrap();
            assert!(rx.try_recv().is_ok());
        }
        assert_eq!(rx.held(), 0);
        assert!(!rx.overflowed());
    }

    #[test]
    fn a_frame_larger_than_the_budget_passes_alone() {
        let (tx, _rx) = queue(1024, Some(100));
        tx.try_send(list(100)).unwrap();
        assert!(tx.try_send(list(1)).is_err());
    }

    #[test]
    fn content_from_custody_is_not_counted() {
        let (tx, rx) = queue(1024, Some(100));
        let dm: Deliver = serde_json::from_value(serde_json::json!({
            "user_id": "bob", "ciphertext": "x".repeat(10_000), "iv": "", "tag": "",
            "wrapped_key": "", "sender": "alice", "sender_pub": "", "content_sig": "",
            "content_ts": 0,
        }))
        .unwrap();
        for _ in 0..10 {
            let relay = Relay {
                content: Arc::new(Content::Dm(dm.clone())),
                on_link: false,
                names: Names::Nobody,
            };
            let out = Outgoing {
                to: "bob".into(),
                frame: Frame::Content(relay),
            };
            tx.try_send(ConnCmd::Frame(Box::new(out))).unwrap();
        }
        assert_eq!(rx.held(), 0);
    }

    #[test]
    fn the_reader_s_replies_count_too() {
        let (tx, rx) = queue(1024, Some(100));
        let weak = tx.downgrade();
        assert!(weak.try_send(list(20)));
        assert!(!weak.try_send(list(20)));
        assert!(rx.overflowed());
        drop(tx);
        assert!(!weak.try_send(ConnCmd::Close), "no queue, no send");
    }
}
