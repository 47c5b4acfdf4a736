//! `socp-bench --idle-scale … --transport memory`: the idle-user
//! measurement past the open-files limit (20,000 sockets per process on
//! the machine we measure on). A node of this build runs inside this
//! process, and each user reaches it over an in-memory [`Pipe`] served by
//! [`Node::serve_connected`]: the node's real accept path (caps per
//! address, the WebSocket upgrade, the signed hello checked, the welcome,
//! the `mac-v1` session), only without a socket. Users come from the
//! socket mode's `127.0.0.x` addresses ([`source_ip`]) and sign their own
//! hellos with the shared key.
//!
//! Once welcomed, a user keeps only its end of the pipe, which drops what
//! the node sends from then on (counted), so that the process's RSS growth
//! is the node's plus the pipes' own bytes, which are computed exactly and
//! reported beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use socp::crypto::PrivateKey;
use socp::node::{Node, NodeConfig};
use tokio::task::JoinSet;

use crate::idle::{IN_FLIGHT, Level, SETTLE, say_hello, source_ip};
use crate::pipe::Pipe;

/// How long one login may take.
const LOGIN_PATIENCE: Duration = Duration::from_secs(120);

unsafe extern "C" {
    /// mimalloc (the global allocator, linked in by the `mimalloc` crate):
    /// the usable size of an allocated block, which is its size class.
    fn mi_usable_size(p: *const std::ffi::c_void) -> usize;
}

/// The size of the block the global allocator gives for `layout`.
fn block_size(layout: std::alloc::Layout) -> usize {
    // SAFETY: a block of a non-zero layout is allocated, measured and
    // given back; mimalloc is the global allocator of `socp-bench`.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return layout.size();
        }
        let size = mi_usable_size(p.cast());
        std::alloc::dealloc(p, layout);
        size
    }
}

/// The RSS of this process, in KiB.
fn own_rss_kib() -> f64 {
    crate::procfs::status_kib_of(std::process::id(), "VmRSS:")
}

/// A master of this build in this process, as `measure` starts one over
/// sockets: caps above `most`, registrations not rate-limited.
async fn start_node(dir: &std::path::Path, most: usize) -> Result<Node> {
    let limits = socp::node::Limits {
        max_conns: most + 1000,
        max_conns_per_ip: most + 1000,
        ..Default::default()
    };
    let admission = socp::node::Admission {
        per_address_hour: 0,
        per_server_hour: 0,
        ..Default::default()
    };
    let config = NodeConfig {
        master: true,
        listen: "127.0.0.1:0".parse()?,
        db: dir.join("node.sqlite"),
        keys: dir.join("keys"),
        master_url: None,
        peers: Vec::new(),
        advertise_url: None,
        allow_legacy_clients: false,
        mailbox: Default::default(),
        mac: true,
        limits,
        metrics: None,
        tls: None,
        ca: None,
        admission,
        web: true,
    };
    Node::start(config)
        .await
        .context("starting the in-process node")
}

/// Measures an in-process node at each level; returns the levels and what
/// the pipes cost.
pub(crate) async fn measure(
    key: &Arc<PrivateKey>,
    levels: &[usize],
    probe: bool,
) -> Result<(Vec<Level>, Value)> {
    let dir = tempfile::tempdir()?;
    let most = levels.last().copied().unwrap_or(0);
    let node = start_node(dir.path(), most).await?;
    let url = node.url();
    // The users' ends, allocated before the first reading: the slots they
    // fill are counted in the pipes' share.
    let mut ends: Vec<Pipe> = Vec::with_capacity(most);
    crate::idle::warm_signers(key).await?;
    tokio::time::sleep(SETTLE).await;
    let rss0 = own_rss_kib();
    let mut measured = Vec::new();
    for &users in levels {
        let online = ends.len();
        let started = Instant::now();
        login(&node, &url, key, online..users, probe, &mut ends).await?;
        let new = (users - online).max(1) as f64;
        let dt = started.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let closed = ends.iter().filter(|e| e.peer_closed()).count();
        if closed > 0 {
            bail!("the node closed {closed} of {users} idle users");
        }
        let rss = own_rss_kib();
        let level = Level {
            users,
            rss_kib: rss,
            per_user_kib: (rss - rss0) / users as f64,
            logins_per_s: new / dt,
            node_cpu_ms_per_login: None,
            master_per_user_kib: None,
            other_local_per_user_kib: None,
        };
        eprintln!(
            "  {users:>7} users: process RSS {:.0} MiB, {:.2} KiB per user ({:.0} logins/s)",
            rss / 1024.0,
            level.per_user_kib,
            level.logins_per_s
        );
        measured.push(level);
    }
    let discarded: u64 = ends.iter().map(Pipe::discarded).sum();
    let shared = Pipe::heap_bytes(block_size);
    let end = std::mem::size_of::<Pipe>();
    let pipe = json!({
        "shared_block_bytes": shared,
        "end_bytes": end,
        "bytes_per_user": shared + end,
        "discarded_bytes": discarded,
    });
    drop(ends);
    tokio::time::timeout(Duration::from_secs(30), node.shutdown())
        .await
        .context("the in-process node did not stop within 30 s")?;
    Ok((measured, pipe))
}

/// Logs in users `range` over new pipes, [`IN_FLIGHT`] at a time, and
/// keeps their ends in `ends`.
async fn login(
    node: &Node,
    url: &str,
    key: &Arc<PrivateKey>,
    range: std::ops::Range<usize>,
    probe: bool,
    ends: &mut Vec<Pipe>,
) -> Result<()> {
    let mut flying = JoinSet::new();
    for i in range {
        if flying.len() >= IN_FLIGHT {
            ends.push(landed(flying.join_next().await)?);
        }
        let (theirs, mine) = Pipe::pair();
        let peer = SocketAddr::new(source_ip(i).into(), 10_000 + (i % 50_000) as u16);
        node.serve_connected(theirs, peer);
        let (url, key) = (url.to_owned(), key.clone());
        flying.spawn(async move {
            let held = Held(Some(mine));
            let hello = say_hello(held, &url, i, &key, probe);
            let mut ws = tokio::time::timeout(LOGIN_PATIENCE, hello)
                .await
                .context("no welcome in time")??;
            let end = ws.get_mut().0.take().context("the pipe end is gone")?;
            drop(ws);
            end.discard_incoming();
            Ok::<_, anyhow::Error>(end)
        });
    }
    while !flying.is_empty() {
        ends.push(landed(flying.join_next().await)?);
    }
    Ok(())
}

/// The end of a finished login.
fn landed(joined: Option<Result<Result<Pipe>, tokio::task::JoinError>>) -> Result<Pipe> {
    match joined {
        Some(Ok(Ok(end))) => Ok(end),
        Some(Ok(Err(e))) => Err(e.context("an idle user could not log in")),
        Some(Err(e)) => Err(anyhow::Error::new(e).context("a login task failed")),
        None => bail!("no login in flight"),
    }
}

/// A user's end while it logs in, taken back (and the WebSocket state
/// around it dropped) once welcomed.
struct Held(Option<Pipe>);

impl Held {
    fn end(self: std::pin::Pin<&mut Self>) -> std::io::Result<std::pin::Pin<&mut Pipe>> {
        match self.get_mut().0.as_mut() {
            Some(end) => Ok(std::pin::Pin::new(end)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.end() {
            Ok(end) => end.poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.end() {
            Ok(end) => end.poll_write(cx, data),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.end() {
            Ok(end) => end.poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.end() {
            Ok(end) => end.poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}
