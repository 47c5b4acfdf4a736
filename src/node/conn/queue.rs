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
//! close a slow reader of large files again and again. A server link is
//! bounded in frames (`LINK_SEND_QUEUE`) and its other frames in
//! [`LINK_QUEUE_BYTES`]: most are small (acks, receipts, presence,
//! directory answers), but a lookup local's forwarded `USER_LIST` is
//! answered with pages of up to 64 KiB, and a local that asks for them
//! faster than it reads could otherwise make its master hold 8,192 of them
//! (512 MiB); past the budget the link is closed (and redialled).
//!
//! The queue is one small allocation shared by its ends (a lock around a
//! `VecDeque`, the writer's waker and the counts), not tokio's `mpsc`: a
//! channel there costs ~1 KiB from the start (the channel, cache-padded,
//! and a first block of 32 slots), which was an eighth of an idle user
//! (DESIGN.md, "Memory per idle connection"). An empty queue holds no
//! buffer: the deque is freed whenever the writer empties it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use super::ConnCmd;
use crate::node::router::Frame;

/// Default for `--user-queue-bytes`: sixteen of the largest `USER_LIST`
/// answers.
pub const USER_QUEUE_BYTES: usize = 1 << 20;
/// What a queued frame's envelope adds to its payload, roughly (the
/// header fields and a MAC; a signature is counted by its payload alone).
const ENVELOPE_BYTES: usize = 128;

/// What the ends of one queue share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Most commands queued at once.
    frames: usize,
    /// Most bytes queued at once (a user's queue).
    max_bytes: Option<usize>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<ConnCmd>,
    /// Bytes counted as queued (against `max_bytes`).
    held: usize,
    /// Commands queued other than content (custody bounds content with
    /// its windows; the hub paces what a link is owed by the rest).
    others: usize,
    /// Set once a frame did not fit the byte budget: the connection is to
    /// be closed, and the queue takes nothing more.
    over: bool,
    /// [`SendQueue`]s alive: at none, the writer sees the end once the
    /// queue is empty, and [`WeakQueue`]s can send no more.
    senders: usize,
    /// The [`QueueRx`] is alive.
    receiving: bool,
    /// The writer waiting for a command.
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (each
        // change is one step): go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `cmd` within the frame and byte bounds; over either, the
    /// command comes back as if the queue were full (the hub then drops
    /// the connection). A queue with nothing in it takes a frame of any
    /// size.
    fn push(&self, cmd: ConnCmd) -> Result<(), TrySendError<ConnCmd>> {
        let mut s = self.lock();
        if !s.receiving {
            return Err(TrySendError::Closed(cmd));
        }
        if s.over {
            return Err(TrySendError::Full(cmd));
        }
        let n = match self.max_bytes {
            Some(max) => {
                let n = bytes_of(&cmd);
                if s.held > 0 && s.held + n > max {
                    // The budget is spent for good.
                    s.over = true;
                    return Err(TrySendError::Full(cmd));
                }
                n
            }
            None => 0,
        };
        if s.queue.len() >= self.frames {
            return Err(TrySendError::Full(cmd));
        }
        s.held += n;
        s.others += usize::from(!is_content(&cmd));
        s.queue.push_back(cmd);
        let waker = s.waker.take();
        drop(s);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

/// The sending side of a connection's queue (the hub's, and the reader's
/// through [`WeakQueue`]).
#[derive(Debug)]
pub(crate) struct SendQueue {
    shared: Arc<Shared>,
}

/// A [`SendQueue`] held weakly: when the hub drops the queue (a slow peer),
/// the connection still ends.
pub(crate) struct WeakQueue {
    shared: Arc<Shared>,
}

/// The receiving side, for the connection's writer.
pub(crate) struct QueueRx {
    shared: Arc<Shared>,
}

/// A queue of `frames` commands, and of `bytes` bytes if given.
pub(crate) fn queue(frames: usize, bytes: Option<usize>) -> (SendQueue, QueueRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            held: 0,
            others: 0,
            over: false,
            senders: 1,
            receiving: true,
            waker: None,
        }),
        frames,
        max_bytes: bytes,
    });
    let send = SendQueue {
        shared: shared.clone(),
    };
    (send, QueueRx { shared })
}

/// Bytes of frames other than content one server link may have waiting:
/// far above what an honest link queues (a full presence snapshot of 8,192
/// adverts is ~12 MiB), far below 8,192 pages of `USER_LIST`.
pub const LINK_QUEUE_BYTES: usize = 64 << 20;

/// True for content from custody (shared with custody, which bounds it).
fn is_content(cmd: &ConnCmd) -> bool {
    matches!(cmd, ConnCmd::Frame(out) if matches!(out.frame, Frame::Content(_)))
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

impl SendQueue {
    pub(crate) fn try_send(&self, cmd: ConnCmd) -> Result<(), TrySendError<ConnCmd>> {
        self.shared.push(cmd)
    }

    /// Commands queued and not yet taken by the writer, other than
    /// content (custody keeps up to its window of that queued on a link,
    /// and would hold back what a link is owed behind a slow backlog).
    pub(crate) fn others_queued(&self) -> usize {
        self.shared.lock().others
    }

    pub(crate) fn downgrade(&self) -> WeakQueue {
        WeakQueue {
            shared: self.shared.clone(),
        }
    }
}

impl Clone for SendQueue {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        SendQueue {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.senders -= 1;
        let waker = if s.senders == 0 { s.waker.take() } else { None };
        drop(s);
        // The writer sees the end once what is queued is taken.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl WeakQueue {
    /// Queues `cmd` if the queue is still there; false if it could not.
    pub(crate) fn try_send(&self, cmd: ConnCmd) -> bool {
        if self.shared.lock().senders == 0 {
            return false;
        }
        // A sender that goes in between only lets one more command in,
        // which the writer still takes before it sees the end.
        self.shared.push(cmd).is_ok()
    }
}

impl QueueRx {
    /// The next command; None once every [`SendQueue`] is gone and the
    /// queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<ConnCmd> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ConnCmd>> {
        let mut s = self.shared.lock();
        if let Some(cmd) = self.take(&mut s) {
            return Poll::Ready(Some(cmd));
        }
        if s.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(crate) fn try_recv(&mut self) -> Result<ConnCmd, TryRecvError> {
        let mut s = self.shared.lock();
        match self.take(&mut s) {
            Some(cmd) => Ok(cmd),
            None if s.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The command at the front, its bytes given back; an emptied queue
    /// gives back its buffer too (an idle connection holds none).
    fn take(&self, s: &mut State) -> Option<ConnCmd> {
        let cmd = s.queue.pop_front()?;
        s.others -= usize::from(!is_content(&cmd));
        if self.shared.max_bytes.is_some() {
            s.held = s.held.saturating_sub(bytes_of(&cmd));
        }
        if s.queue.is_empty() {
            s.queue = VecDeque::new();
        }
        Some(cmd)
    }

    /// True once a frame did not fit the byte budget: the connection is to
    /// be closed, and what is queued dropped.
    pub(crate) fn overflowed(&self) -> bool {
        self.shared.lock().over
    }

    /// The byte budget, if there is one.
    pub(crate) fn max_bytes(&self) -> Option<usize> {
        self.shared.max_bytes
    }

    /// Bytes counted as queued.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.shared.lock().held
    }

    /// Commands the queue's buffer has room for.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.shared.lock().queue.capacity()
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiving = false;
        s.waker = None;
        s.others = 0;
        let queued = std::mem::take(&mut s.queue);
        drop(s);
        // What was queued is freed now, not when the last sender goes.
        drop(queued);
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
    async fn a_link_queue_is_bounded_in_bytes_too() {
        // Review finding: a link's queue was bounded in frames alone, so a
        // lookup local asking its master for USER_LIST pages faster than it
        // read them could make the master hold 8,192 pages of 64 KiB.
        let (tx, rx) = queue(super::super::LINK_SEND_QUEUE, Some(LINK_QUEUE_BYTES));
        let page = list(6_000);
        let ConnCmd::Frame(out) = &page else {
            unreachable!()
        };
        let Frame::Msg(msg) = &out.frame else {
            unreachable!()
        };
        assert!(
            msg.json_len() > 60_000,
            "a page of {} bytes",
            msg.json_len()
        );
        let mut taken = 0;
        while tx.try_send(list(6_000)).is_ok() {
            taken += 1;
            assert!(taken < super::super::LINK_SEND_QUEUE, "no byte bound");
        }
        assert!(rx.overflowed());
        assert!(
            taken * 60_000 <= LINK_QUEUE_BYTES + 70_000,
            "{taken} pages held"
        );
        assert!(taken >= 500, "an honest link's burst fits: {taken} pages");
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
        // Nor in what the hub paces a link's owed presence by: a backlog of
        // content must not hold that back (custody bounds it).
        assert_eq!(tx.others_queued(), 0);
    }

    #[test]
    fn frames_other_than_content_are_counted_until_taken() {
        let (tx, mut rx) = queue(1024, None);
        tx.try_send(list(1)).unwrap();
        tx.try_send(ConnCmd::Close).unwrap();
        assert_eq!(tx.others_queued(), 2);
        assert!(rx.try_recv().is_ok());
        assert_eq!(tx.others_queued(), 1);
        drop(rx);
        assert_eq!(tx.others_queued(), 0);
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
    #[tokio::test]
    async fn the_writer_sees_the_end_after_what_is_queued() {
        let (tx, mut rx) = queue(8, None);
        let weak = tx.downgrade();
        tx.try_send(ConnCmd::Close).unwrap();
        assert!(weak.try_send(ConnCmd::Close));
        drop(tx);
        assert!(!weak.try_send(ConnCmd::Close), "no queue, no send");
        assert!(matches!(rx.try_recv(), Ok(ConnCmd::Close)));
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_frame_and_by_the_end() {
        let (tx, mut rx) = queue(8, None);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.is_some();
            (first, rx.recv().await.is_none())
        });
        tokio::task::yield_now().await;
        tx.try_send(ConnCmd::Close).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting);
        assert_eq!(woken.await.unwrap().unwrap(), (true, true));
    }

    #[test]
    fn a_queue_is_bounded_in_frames_and_refuses_once_its_writer_is_gone() {
        let (tx, mut rx) = queue(2, None);
        tx.try_send(ConnCmd::Close).unwrap();
        tx.try_send(ConnCmd::Close).unwrap();
        assert!(matches!(
            tx.try_send(ConnCmd::Close),
            Err(TrySendError::Full(_))
        ));
        assert!(rx.try_recv().is_ok());
        tx.try_send(ConnCmd::Close).unwrap();
        drop(rx);
        assert!(matches!(
            tx.try_send(ConnCmd::Close),
            Err(TrySendError::Closed(_))
        ));
    }

    #[test]
    fn an_emptied_queue_holds_no_buffer() {
        let (tx, mut rx) = queue(1024, None);
        assert_eq!(rx.capacity(), 0);
        for _ in 0..100 {
            tx.try_send(ConnCmd::Close).unwrap();
        }
        assert!(rx.capacity() >= 100);
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.capacity(), 0, "an idle connection keeps a buffer");
    }
}
