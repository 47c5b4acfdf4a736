//! An in-memory byte pipe between two ends, each an `AsyncRead +
//! AsyncWrite`, for `--idle-scale … --transport memory`: a node serves
//! users over these instead of sockets. It is built to cost next to nothing
//! while idle, so that what is measured is the node: both directions live
//! in one allocation (a buffer each, freed as soon as it is drained, and
//! the wakers), and an end is a pointer and a side.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one direction holds unread before its writer waits.
const MAX_BUFFERED: usize = 64 * 1024;

/// One end of a pipe.
pub struct Pipe {
    shared: Arc<Mutex<Shared>>,
    /// Which direction this end writes (the other reads it).
    side: usize,
}

/// What both ends share: a direction per writer.
pub struct Shared {
    dirs: [Dir; 2],
}

/// Bytes written by one end and not yet read by the other.
#[derive(Default)]
struct Dir {
    buf: Vec<u8>,
    /// How much of `buf` was read.
    read: usize,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The writer shut down or dropped its end: the reader sees the end.
    closed: bool,
    /// The reader dropped its end: writes fail.
    gone: bool,
    /// The reader takes nothing more: writes are dropped as written.
    discard: bool,
    /// Bytes dropped so (see [`Pipe::discard_incoming`]).
    discarded: u64,
}

impl Pipe {
    /// A new pipe: two connected ends.
    pub fn pair() -> (Pipe, Pipe) {
        let shared = Arc::new(Mutex::new(Shared {
            dirs: [Dir::default(), Dir::default()],
        }));
        let a = Pipe {
            shared: shared.clone(),
            side: 0,
        };
        (a, Pipe { shared, side: 1 })
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Shared>> {
        self.shared
            .lock()
            .map_err(|_| io::Error::other("pipe lock poisoned"))
    }

    /// From now on what the other end writes to this one is dropped as it
    /// is written (and counted), as by a peer that reads and ignores
    /// everything, without a task to read it.
    pub fn discard_incoming(&self) {
        if let Ok(mut s) = self.shared.lock() {
            let dir = &mut s.dirs[1 - self.side];
            dir.discard = true;
            dir.buf = Vec::new();
            dir.read = 0;
            if let Some(w) = dir.writer.take() {
                w.wake();
            }
        }
    }

    /// Whether the other end closed (shut down or dropped) its side.
    pub fn peer_closed(&self) -> bool {
        self.shared
            .lock()
            .map_or(true, |s| s.dirs[1 - self.side].closed)
    }

    /// Bytes the other end wrote that were dropped by
    /// [`Pipe::discard_incoming`].
    pub fn discarded(&self) -> u64 {
        self.shared
            .lock()
            .map_or(0, |s| s.dirs[1 - self.side].discarded)
    }

    /// What one pipe costs the heap, in bytes: its shared state as the
    /// global allocator rounds it (`block_size` says how), and one end
    /// per side.
    pub fn heap_bytes(block_size: impl Fn(std::alloc::Layout) -> usize) -> usize {
        // An Arc's allocation: two counters, then the value.
        let counters = std::alloc::Layout::new::<[usize; 2]>();
        let layout = counters
            .extend(std::alloc::Layout::new::<Mutex<Shared>>())
            .map(|(l, _)| l.pad_to_align())
            .unwrap_or(counters);
        block_size(layout)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            let mine = &mut s.dirs[self.side];
            mine.closed = true;
            if let Some(w) = mine.reader.take() {
                w.wake();
            }
            let theirs = &mut s.dirs[1 - self.side];
            theirs.gone = true;
            theirs.buf = Vec::new();
            if let Some(w) = theirs.writer.take() {
                w.wake();
            }
        }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.lock()?;
        let dir = &mut s.dirs[1 - self.side];
        let unread = &dir.buf[dir.read..];
        if unread.is_empty() {
            if dir.closed {
                return Poll::Ready(Ok(()));
            }
            dir.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = unread.len().min(out.remaining());
        out.put_slice(&unread[..n]);
        dir.read += n;
        if dir.read == dir.buf.len() {
            // Drained: the buffer goes, as an idle socket holds nothing.
            dir.buf = Vec::new();
            dir.read = 0;
        }
        if let Some(w) = dir.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.lock()?;
        let dir = &mut s.dirs[self.side];
        if dir.closed || dir.gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if dir.discard {
            dir.discarded += data.len() as u64;
            return Poll::Ready(Ok(data.len()));
        }
        let unread = dir.buf.len() - dir.read;
        if unread >= MAX_BUFFERED {
            dir.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if dir.read > 0 {
            dir.buf.drain(..dir.read);
            dir.read = 0;
        }
        let n = data.len().min(MAX_BUFFERED - unread);
        dir.buf.extend_from_slice(&data[..n]);
        if let Some(w) = dir.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock()?;
        let dir = &mut s.dirs[self.side];
        dir.closed = true;
        if let Some(w) = dir.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_and_the_end_is_seen() {
        let (mut a, mut b) = Pipe::pair();
        let big = vec![7u8; 3 * MAX_BUFFERED];
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 3 * MAX_BUFFERED);
        let a = writer.await.unwrap();
        // Drained: nothing is held.
        assert_eq!(a.shared.lock().unwrap().dirs[0].buf.capacity(), 0);
        drop(b);
        let mut a = a;
        assert!(a.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_discarding_end_drops_what_it_is_sent() {
        let (mut a, b) = Pipe::pair();
        b.discard_incoming();
        a.write_all(&[1u8; 200_000]).await.unwrap();
        assert_eq!(b.discarded(), 200_000);
        assert!(!b.peer_closed());
        drop(a);
        assert!(b.peer_closed());
    }
}
