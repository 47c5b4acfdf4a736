//! Counters for operators, served as Prometheus text by `--metrics`.
//! Connection tasks count frames, refusals and RSA operations; the router's
//! figures (users online, custody, mailbox) are asked from the hub. The same
//! address answers `/healthz` (the process is up) and `/readyz` (see
//! [`super::health`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::health::Health;
use super::hub::{HubEvent, Status};
use crate::wire::messages::TYPE_NAMES;

/// The node's counters.
pub struct Metrics {
    pub connections: AtomicI64,
    frames_in: Vec<AtomicU64>,
    frames_out: Vec<AtomicU64>,
    refused: Mutex<BTreeMap<String, u64>>,
    pub rsa_ops: AtomicU64,
    /// Connections closed because a write made no progress in time.
    pub write_timeouts: AtomicU64,
    /// Connections refused because the node holds `--max-conns` already.
    pub conns_refused_global: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let slots = || (0..=TYPE_NAMES.len()).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            connections: AtomicI64::new(0),
            frames_in: slots(),
            frames_out: slots(),
            refused: Mutex::new(BTreeMap::new()),
            rsa_ops: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            conns_refused_global: AtomicU64::new(0),
        }
    }
}

fn slot(kind: &str) -> usize {
    TYPE_NAMES
        .iter()
        .position(|n| *n == kind)
        .unwrap_or(TYPE_NAMES.len())
}

impl Metrics {
    pub fn frame_in(&self, kind: &str) {
        self.frames_in[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn frame_out(&self, kind: &str) {
        self.frames_out[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A frame or hello refused, by reason (an error code or a check).
    pub fn refused(&self, reason: &str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason.to_owned()).or_default() += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, status: &Status) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "socp_users_here",
            "Users connected to this node itself.",
            status.users_here as f64,
        );
        gauge(
            "socp_mailbox_bytes",
            "Payload bytes waiting for users online nowhere (master).",
            status.mailbox_bytes as f64,
        );
        let limits = &status.limits;
        for (name, help, value) in [
            (
                "socp_user_queue_max_frames",
                "The per-user quota of frames waiting (--mailbox-max-frames).",
                limits.max_frames,
            ),
            (
                "socp_user_queue_max_bytes",
                "The per-user quota of bytes waiting (--mailbox-max-bytes).",
                limits.max_bytes,
            ),
            (
                "socp_user_queue_fullest_frames",
                "Frames waiting for the user with the most (held to socp_user_queue_max_frames).",
                status.fullest_user.0,
            ),
            (
                "socp_user_queue_fullest_bytes",
                "Bytes waiting for the user with the most (held to socp_user_queue_max_bytes).",
                status.fullest_user.1,
            ),
            (
                "socp_sender_max_frames",
                "The per-sender quota of frames waiting (--sender-max-frames).",
                limits.max_sender_frames,
            ),
            (
                "socp_sender_max_bytes",
                "The per-sender quota of bytes waiting (--sender-max-bytes).",
                limits.max_sender_bytes,
            ),
            (
                "socp_sender_fullest_frames",
                "Frames waiting from the sender with the most (held to socp_sender_max_frames).",
                status.fullest_sender.0,
            ),
            (
                "socp_sender_fullest_bytes",
                "Bytes waiting from the sender with the most (held to socp_sender_max_bytes).",
                status.fullest_sender.1,
            ),
        ] {
            gauge(name, help, value as f64);
        }
        gauge(
            "socp_connections",
            "Open connections (users and links).",
            self.connections.load(Ordering::Relaxed) as f64,
        );
        gauge(
            "socp_users_online",
            "Users online anywhere in the mesh.",
            status.online.len() as f64,
        );
        gauge(
            "socp_links",
            "Servers with a live link.",
            status.linked.len() as f64,
        );
        gauge(
            "socp_custody_frames",
            "Frames in custody, not yet acknowledged by the next hop.",
            status.custody as f64,
        );
        gauge(
            "socp_custody_bytes",
            "Payload bytes in custody (on disk), bounded by socp_custody_max_bytes.",
            status.custody_bytes as f64,
        );
        gauge(
            "socp_custody_max_bytes",
            "The custody byte cap (--custody-max-bytes).",
            status.custody_max_bytes as f64,
        );
        gauge(
            "socp_custody_resident_bytes",
            "Payload bytes of custody held in memory (the rest are on disk only).",
            status.custody_resident_bytes as f64,
        );
        gauge(
            "socp_mailbox_frames",
            "Frames waiting for users online nowhere (master).",
            status.mailbox as f64,
        );
        let _ = writeln!(
            out,
            "# HELP socp_dead_letters_total Content refused after a previous server handed it on: set aside, its sender told.\n# TYPE socp_dead_letters_total counter\nsocp_dead_letters_total {}",
            status.dead_letters
        );
        let _ = writeln!(
            out,
            "# HELP socp_mailbox_expired_total Mailbox frames dropped for age.\n# TYPE socp_mailbox_expired_total counter\nsocp_mailbox_expired_total {}",
            status.expired
        );
        let _ = writeln!(
            out,
            "# HELP socp_custody_unwritten_total Custody frames the next hop acknowledged before they were written.\n# TYPE socp_custody_unwritten_total counter\nsocp_custody_unwritten_total {}",
            status.unwritten
        );
        let _ = writeln!(
            out,
            "# HELP socp_slow_disconnects_total Connections dropped for a full send queue.\n# TYPE socp_slow_disconnects_total counter\nsocp_slow_disconnects_total {}",
            status.slow_disconnects
        );
        let _ = writeln!(
            out,
            "# HELP socp_rsa_operations_total RSA private-key operations (signatures, unwraps).\n# TYPE socp_rsa_operations_total counter\nsocp_rsa_operations_total {}",
            self.rsa_ops.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP socp_write_timeouts_total Connections closed because the peer took in nothing for the write timeout.\n# TYPE socp_write_timeouts_total counter\nsocp_write_timeouts_total {}",
            self.write_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP socp_connections_refused_total Connections refused because the node was at --max-conns.\n# TYPE socp_connections_refused_total counter\nsocp_connections_refused_total {}",
            self.conns_refused_global.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP socp_node_info This node: its server id and role.\n# TYPE socp_node_info gauge\nsocp_node_info{{id=\"{}\",role=\"{}\"}} 1",
            label(&status.node_id),
            if status.master { "master" } else { "local" }
        );
        let _ = writeln!(
            out,
            "# HELP socp_link A live link: the server, its role, and whether this node dialed it.\n# TYPE socp_link gauge"
        );
        for link in &status.links {
            let _ = writeln!(
                out,
                "socp_link{{server=\"{}\",role=\"{}\",dialed=\"{}\"}} 1",
                label(&link.server),
                link.role,
                link.dialed
            );
        }
        for (name, help, counts) in [
            (
                "socp_frames_in_total",
                "Frames received, by type.",
                &self.frames_in,
            ),
            (
                "socp_frames_out_total",
                "Frames sent, by type.",
                &self.frames_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, c) in counts.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let kind = TYPE_NAMES.get(i).copied().unwrap_or("other");
                    let _ = writeln!(out, "{name}{{type=\"{kind}\"}} {n}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP socp_refused_total Hellos and frames refused, by reason.\n# TYPE socp_refused_total counter"
        );
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "socp_refused_total{{reason=\"{reason}\"}} {n}");
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// How long a request may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request read (its head; the checks take no body).
const MAX_REQUEST: usize = 4096;
/// How long `/readyz` waits for the hub (the router's task) to answer.
const HUB_ANSWER: Duration = Duration::from_secs(2);

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `addr` until shutdown.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    hub: mpsc::Sender<HubEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics on http://{bound}/metrics (health: /healthz, /readyz)");
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                () = super::stop_requested(&mut shutdown) => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(_) => continue,
                },
            };
            let (metrics, health, hub) = (metrics.clone(), health.clone(), hub.clone());
            tokio::spawn(async move {
                let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
                    .await
                    .unwrap_or_default();
                let request = String::from_utf8_lossy(&head);
                let response = match request_path(&request) {
                    Some("/metrics") => {
                        let status = ask_status(&hub).await.unwrap_or_default();
                        http(
                            "200 OK",
                            "text/plain; version=0.0.4",
                            &metrics.render(&status),
                        )
                    }
                    Some("/healthz") => http("200 OK", "text/plain", "ok\n"),
                    Some("/readyz") => readiness(&health, &hub).await,
                    _ => http(
                        "404 Not Found",
                        "text/plain",
                        "try GET /metrics, /healthz or /readyz\n",
                    ),
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}

/// The request's head: read until its blank line (a request may come in
/// several segments, and closing on unread bytes resets the connection
/// before the client reads the answer), at most `MAX_REQUEST` bytes.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while head.len() < MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// The path of a `GET` request (without its query), if it is one.
fn request_path(request: &str) -> Option<&str> {
    let mut words = request.lines().next()?.split_whitespace();
    if words.next()? != "GET" {
        return None;
    }
    words.next()?.split('?').next()
}

/// The router's figures, if the hub answers within `HUB_ANSWER`.
async fn ask_status(hub: &mpsc::Sender<HubEvent>) -> Option<Status> {
    tokio::time::timeout(HUB_ANSWER, async {
        let (tx, rx) = oneshot::channel();
        hub.send(HubEvent::Status(tx)).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// `/readyz`: 200 `ready`, or 503 with one reason a line.
async fn readiness(health: &Health, hub: &mpsc::Sender<HubEvent>) -> String {
    let mut why = health.not_ready();
    if ask_status(hub).await.is_none() {
        why.push(format!(
            "router: the hub did not answer within {} s",
            HUB_ANSWER.as_secs()
        ));
    }
    if why.is_empty() {
        http("200 OK", "text/plain", "ready\n")
    } else {
        let body: String = why.iter().map(|w| format!("{w}\n")).collect();
        http("503 Service Unavailable", "text/plain", &body)
    }
}

/// A complete HTTP/1.1 response that closes the connection.
fn http(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::request_path;

    #[test]
    fn only_get_requests_have_a_path() {
        assert_eq!(request_path("GET /readyz HTTP/1.1\r\n"), Some("/readyz"));
        assert_eq!(request_path("GET /metrics?x=1 HTTP/1.1"), Some("/metrics"));
        assert_eq!(request_path("POST /readyz HTTP/1.1"), None);
        assert_eq!(request_path(""), None);
    }
}
