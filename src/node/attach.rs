//! Serving a stream that is already connected, as if the accept loop had
//! accepted it from a given address: the same caps, the same WebSocket
//! upgrade (or web page), hello, welcome and session. It exists so that a
//! node can be measured with many users over in-memory pipes
//! (`socp-bench --idle-scale … --transport memory`), past what the
//! process may hold in sockets.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Node;
use super::accept::{self, NoSlot, address_key};

impl Node {
    /// Serves `stream` as a connection accepted from `peer` (plain
    /// WebSocket: `--tls-cert` does not apply, the caller's stream is its
    /// own transport). The per-address and total caps count it with the
    /// listener's connections. It runs in its own task until the peer or
    /// the node ends it; nothing is served once the node is shutting down.
    pub fn serve_connected<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if *self.door.borrow() {
            return;
        }
        let acceptor = &self.acceptor;
        let ip = address_key(peer.ip());
        let slot = match acceptor.slots.take(ip, &acceptor.ctx.limits) {
            Ok(slot) => Ok(slot),
            Err(NoSlot::Full) => {
                let refused = &acceptor.ctx.metrics.conns_refused_global;
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(NoSlot::Address(slot)) => Err(slot),
        };
        let conn = acceptor.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut ctx = acceptor.ctx.clone();
        ctx.peer_ip = Some(ip);
        let web = acceptor.web;
        tokio::spawn(async move {
            let admitted = slot.is_ok();
            let upgrading = Box::pin(accept::upgrade(stream, (false, web), peer, admitted, &ctx));
            let Some(mut ws) = upgrading.await else {
                return;
            };
            accept::serve_or_refuse(&mut ws, peer, admitted, conn, &ctx).await;
            drop(slot);
        });
    }
}
