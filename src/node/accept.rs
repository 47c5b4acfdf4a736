//! Accepting connections: one path for every accepted socket. The node's
//! connection caps (`--max-conns` in all, `--max-conns-per-ip`) are taken
//! before any handshake; then the TLS (with `--tls-cert`) and WebSocket
//! handshakes run under the hello timeout, and the connection is served,
//! or told why it is refused and closed. A plain HTTP request in place of
//! the WebSocket upgrade gets the browser client (`web`) unless `--web off`
//! (or a 503 when its address is over its cap, like a WebSocket from it).
//! An "address" is what one party can cheaply hold many of: an IPv4
//! address, or an IPv6 /64 (a single host is commonly given a whole /64);
//! an IPv4-mapped IPv6 address counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Limits;
use super::conn::{self, ConnCtx};
use super::records::ConnId;
use super::web;
use crate::wire::{ErrorCode, ids};

/// What the accept loop hands each connection (and
/// [`super::Node::serve_connected`], which shares its counts).
#[derive(Clone)]
pub(crate) struct Acceptor {
    /// What every connection task shares (`peer_ip` is set per connection).
    pub ctx: ConnCtx,
    /// Connection ids, shared with the dialers.
    pub next_conn: Arc<AtomicU64>,
    /// Serve `wss://` (`--tls-cert`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Serve the browser client to plain HTTP requests (`--web`).
    pub web: bool,
    /// Connections open, in all and per address.
    pub slots: Slots,
}

/// Connections from one address that is over `--max-conns-per-ip` told
/// so at once; more are dropped without a word.
const REFUSING_PER_IP: usize = 16;

/// The address a connection counts against in the per-address caps (and
/// the registration rate): IPv4 as is, IPv6 by its /64, IPv4-mapped IPv6
/// as the IPv4 address.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Connections open, in all and per IP address; a slot is given back when
/// dropped.
#[derive(Clone, Default)]
pub(crate) struct Slots(Arc<std::sync::Mutex<SlotCounts>>);

#[derive(Default)]
struct SlotCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections being told their address is over its cap, per address
    /// (at most [`REFUSING_PER_IP`]: more are dropped, so that one address
    /// that never finishes a handshake cannot hold every place in the
    /// total).
    refusing: HashMap<IpAddr, usize>,
}

/// A connection's place in the counts: in all, and for its address unless
/// it is being refused for its address (it still counts in all while it
/// is told so, so refusals cannot pile up past `--max-conns`).
pub(super) struct Slot {
    slots: Slots,
    ip: IpAddr,
    per_ip: bool,
}

/// Why a connection got no slot.
pub(super) enum NoSlot {
    /// The node holds `--max-conns` connections already.
    Full,
    /// This address holds `--max-conns-per-ip` already: it is told so,
    /// holding a place in the total meanwhile.
    Address(Slot),
}

impl Slots {
    pub(super) fn take(&self, ip: IpAddr, limits: &Limits) -> Result<Slot, NoSlot> {
        let Ok(mut m) = self.0.lock() else {
            return Err(NoSlot::Full);
        };
        if m.total >= limits.max_conns {
            return Err(NoSlot::Full);
        }
        let n = m.per_ip.entry(ip).or_default();
        let per_ip = *n < limits.max_conns_per_ip;
        if per_ip {
            *n += 1;
        } else {
            let told = m.refusing.entry(ip).or_default();
            if *told >= REFUSING_PER_IP {
                return Err(NoSlot::Full);
            }
            *told += 1;
        }
        m.total += 1;
        let slot = Slot {
            slots: self.clone(),
            ip,
            per_ip,
        };
        if per_ip {
            Ok(slot)
        } else {
            Err(NoSlot::Address(slot))
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.slots.0.lock() {
            m.total = m.total.saturating_sub(1);
            let counts = if self.per_ip {
                &mut m.per_ip
            } else {
                &mut m.refusing
            };
            if let Some(n) = counts.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.ip);
                }
            }
        }
    }
}

/// Accepts until `door` closes, then stops listening and waits for the
/// connections it accepted to end (the hub closes them at shutdown, and
/// the node's stop signal ends what is left).
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: Acceptor,
    mut door: watch::Receiver<bool>,
) {
    let slots = acceptor.slots.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = super::stop_requested(&mut door) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let slot = match slots.take(address_key(peer.ip()), &acceptor.ctx.limits) {
                        Ok(slot) => Ok(slot),
                        Err(NoSlot::Full) => {
                            // Not even a handshake: at the cap, each refusal
                            // must cost next to nothing.
                            acceptor.ctx.metrics.conns_refused_global.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "refused a connection: the node is at --max-conns");
                            drop(stream);
                            continue;
                        }
                        Err(NoSlot::Address(slot)) => Err(slot),
                    };
                    let conn = acceptor.next_conn.fetch_add(1, Ordering::Relaxed);
                    let mut ctx = acceptor.ctx.clone();
                    ctx.peer_ip = Some(address_key(peer.ip()));
                    conns.spawn(accept_one(stream, peer, slot, conn, ctx, acceptor.tls.clone(), acceptor.web));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// One accepted TCP connection: the TLS handshake, then either a page of
/// the browser client (a plain HTTP `GET`, unless `--web off`) or the
/// WebSocket handshake, all within the hello timeout; then the connection
/// itself, or a refusal. `slot` is Err when the address is over its cap:
/// it is told so.
///
/// This future is the connection's task for its whole life, so it is laid
/// out for serving an idle connection: the handshakes are boxed and gone
/// once done, a plain connection is served inline (no second allocation),
/// and a TLS one is boxed apart, so that a plain connection's task is not
/// sized for a TLS stream (see DESIGN.md, "Memory per idle connection").
async fn accept_one(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Result<Slot, Slot>,
    conn: ConnId,
    ctx: ConnCtx,
    tls: Option<tokio_rustls::TlsAcceptor>,
    web: bool,
) {
    let _ = stream.set_nodelay(true);
    if let Some(acceptor) = tls {
        return Box::pin(accept_tls(stream, acceptor, peer, slot, conn, &ctx, web)).await;
    }
    let upgrading = Box::pin(upgrade(stream, (false, web), peer, slot.is_ok(), &ctx));
    let Some(mut ws) = upgrading.await else {
        return;
    };
    serve_or_refuse(&mut ws, peer, slot.is_ok(), conn, &ctx).await;
}

/// [`accept_one`] over TLS.
async fn accept_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
    slot: Result<Slot, Slot>,
    conn: ConnId,
    ctx: &ConnCtx,
    web: bool,
) {
    let limit = ctx.limits.hello_timeout;
    // Boxed: its state is large and gone once the handshake is done.
    let handshake = Box::pin(acceptor.accept(stream));
    // In a block: the TLS stream's slot (moved out) is not kept beside the
    // connection while it is served.
    let upgrading = {
        let tls = match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::info!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        Box::pin(upgrade(tls, (true, web), peer, slot.is_ok(), ctx))
    };
    let Some(mut ws) = upgrading.await else {
        return;
    };
    serve_or_refuse(&mut ws, peer, slot.is_ok(), conn, ctx).await;
}

/// After TLS (if any): a plain HTTP request is answered from the embedded
/// browser client (or told the node is busy, when its address is over its
/// cap: `admitted` false) and the connection closed; a WebSocket upgrade
/// is handshaken and returned, to be served.
pub(super) async fn upgrade<S>(
    mut stream: S,
    (tls, web): (bool, bool),
    peer: SocketAddr,
    admitted: bool,
    ctx: &ConnCtx,
) -> Option<conn::WsConn<web::Prefixed<S>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = ctx.limits.hello_timeout;
    let handshake = async {
        let mut head = Vec::new();
        if web {
            head = web::read_head(&mut stream)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(req) = web::parse(&head).filter(|r| !r.upgrade) {
                // Over the address's cap: refused like a WebSocket. Either
                // way the slot is given back as soon as the task ends.
                let served = if admitted {
                    web::respond(&mut stream, &req, tls).await
                } else {
                    web::busy(&mut stream, &req, tls).await
                };
                tracing::debug!(%peer, path = %req.path.escape_debug(), ok = served.is_ok(), "served the web client");
                return Ok(None);
            }
        }
        let stream = web::Prefixed::new(head, stream);
        conn::accept_ws(stream)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(limit, Box::pin(handshake)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake timed out");
            None
        }
    }
}

/// After the handshakes: serves the connection, or tells it that its
/// address holds too many (`admitted` false) and closes it. The caller
/// holds the connection's slot until this returns.
pub(super) async fn serve_or_refuse<S>(
    ws: &mut conn::WsConn<S>,
    peer: SocketAddr,
    admitted: bool,
    conn: ConnId,
    ctx: &ConnCtx,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if admitted {
        return conn::serve_accepted(ws, conn, ctx).await;
    }
    tracing::warn!(%peer, "refused a connection: too many from this address");
    let detail = format!(
        "more than {} connections from your address",
        ctx.limits.max_conns_per_ip
    );
    // Boxed, like every state the served connection does not need.
    Box::pin(async {
        conn::send_error(ws, ctx, ids::TO_USER, ErrorCode::RateLimited, &detail).await;
        conn::close_quietly(ws).await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_an_address_still_count_in_the_total() {
        let limits = Limits {
            max_conns: 3,
            max_conns_per_ip: 1,
            ..Default::default()
        };
        let slots = Slots::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = slots.take(ip, &limits).ok().unwrap();
        let refused: Vec<Slot> = (0..2)
            .map(|_| match slots.take(ip, &limits) {
                Err(NoSlot::Address(slot)) => slot,
                _ => panic!("expected a refusal for the address"),
            })
            .collect();
        // The total is reached by the refusals being told: nothing more.
        assert!(matches!(slots.take(ip, &limits), Err(NoSlot::Full)));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(matches!(slots.take(other, &limits), Err(NoSlot::Full)));
        drop(refused);
        let second = slots.take(other, &limits);
        assert!(second.is_ok(), "a slot was not given back");
        drop(first);
    }

    #[test]
    fn ipv6_counts_by_its_slash_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:eeee:dddd:cccc")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        // One /64 is one address for the cap.
        let limits = Limits {
            max_conns_per_ip: 2,
            ..Default::default()
        };
        let slots = Slots::default();
        let held: Vec<Slot> = ["2001:db8::1", "2001:db8::2"]
            .iter()
            .map(|a| slots.take(key(a), &limits).ok().unwrap())
            .collect();
        assert!(matches!(
            slots.take(key("2001:db8::3"), &limits),
            Err(NoSlot::Address(_))
        ));
        assert!(slots.take(key("2001:db8:0:1::3"), &limits).is_ok());
        drop(held);
    }

    #[test]
    fn one_address_cannot_hold_the_total_with_refusals() {
        let limits = Limits {
            max_conns: 100,
            max_conns_per_ip: 2,
            ..Default::default()
        };
        let slots = Slots::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..100 {
            match slots.take(ip, &limits) {
                Ok(slot) | Err(NoSlot::Address(slot)) => held.push(slot),
                Err(NoSlot::Full) => {}
            }
        }
        // Its cap served, a few told so; the rest dropped at once.
        assert_eq!(held.len(), 2 + REFUSING_PER_IP);
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(slots.take(other, &limits).is_ok());
        drop(held);
        assert!(
            slots.take(ip, &limits).is_ok(),
            "a refusal was not given back"
        );
    }

    /// An accepted connection's task is laid out for serving a plain
    /// connection: printed so that it can be watched (`cargo test --lib
    /// accept::tests -- --nocapture`), and bounded so that a change that
    /// sizes it for a handshake or a TLS stream again is noticed.
    #[tokio::test]
    async fn an_accepted_connection_s_task_is_sized_for_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
            accepted.push((client.unwrap(), server.unwrap()));
        }
        let (_c1, (stream, peer)) = accepted.remove(0);
        let (_c2, (other, _)) = accepted.remove(0);
        let ctx = ConnCtx::for_tests();
        let slot = Slots::default().take(peer.ip(), &ctx.limits);
        let slot = slot.map_err(|_| ()).unwrap();
        let task = accept_one(stream, peer, Ok(slot), 1, ctx.clone(), None, true);
        let size = std::mem::size_of_val(&task);
        drop(task);
        let other = web::Prefixed::new(Vec::new(), other);
        let max = crate::wire::MAX_FRAME_BYTES;
        let mut ws = conn::WsConn::new(other, Vec::new(), conn::Role::Server, max);
        let serving = std::mem::size_of_val(&conn::serve_accepted(&mut ws, 1, &ctx));
        println!("accept_one future {size} B, of which serving {serving} B");
        // The serving state and what the task owns (its context, slot and
        // stream), not a handshake's state beside them.
        assert!(size < serving + 1024, "the task is {size} bytes");
    }
}
