//! The operator's HTTP endpoint (`--metrics ADDR`): `GET /metrics` (the
//! counters of [`super::metrics`] and the router's figures, asked from the
//! hub, as Prometheus text), `/healthz` (the process answers) and `/readyz`
//! (see [`super::health`]). Hand-written HTTP: three GET paths need no more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::health::Health;
use super::hub::{self, HubEvent, Status};
use super::metrics::{Kind, Metrics, write_header, write_metric};

/// How long a request may take to arrive, and its answer to leave.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request read (its head; the checks take no body).
const MAX_REQUEST: usize = 4096;
/// How long `/metrics` and `/readyz` wait for the hub (the router's task).
const HUB_ANSWER: Duration = Duration::from_secs(2);

/// What the endpoint answers from.
#[derive(Clone)]
pub(crate) struct Sources {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub hub: mpsc::Sender<HubEvent>,
}

/// Binds `addr` and serves it until `stop`; returns the bound address and
/// the server's task (which ends, its requests with it, once stopped).
pub(crate) async fn serve(
    addr: SocketAddr,
    sources: Sources,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics on http://{bound}/metrics (health: /healthz, /readyz)");
    let task = tokio::spawn(async move {
        let mut requests = JoinSet::new();
        loop {
            tokio::select! {
                () = super::stop_requested(&mut stop) => return,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        requests.spawn(answer(stream, sources.clone()));
                    }
                }
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
            }
        }
    });
    Ok((bound, task))
}

/// Reads one request and answers it, each under `REQUEST_TIMEOUT`.
async fn answer(mut stream: TcpStream, sources: Sources) {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .unwrap_or_default();
    let request = String::from_utf8_lossy(&head);
    let response = match request_path(&request) {
        Some("/metrics") => {
            let status = hub::ask_status(&sources.hub, HUB_ANSWER)
                .await
                .unwrap_or_default();
            let mut body = exposition(&status);
            sources.metrics.render(&mut body);
            http("200 OK", "text/plain; version=0.0.4", &body)
        }
        Some("/healthz") => http("200 OK", "text/plain", "ok\n"),
        Some("/readyz") => readiness(&sources).await,
        _ => http(
            "404 Not Found",
            "text/plain",
            "try GET /metrics, /healthz or /readyz\n",
        ),
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

/// The request's head: read until its blank line (a request may come in
/// several segments, and closing on unread bytes resets the connection
/// before the client reads the answer), at most `MAX_REQUEST` bytes.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
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

/// `/readyz`: 200 `ready`, or 503 with one reason a line.
async fn readiness(sources: &Sources) -> String {
    let mut why = sources.health.not_ready();
    if hub::ask_status(&sources.hub, HUB_ANSWER).await.is_none() {
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

/// The router's figures as Prometheus text.
fn exposition(status: &Status) -> String {
    let mut out = String::new();
    let limits = &status.limits;
    let gauges = [
        (
            "socp_users_here",
            "Users connected to this node itself.",
            status.users_here,
        ),
        (
            "socp_mailbox_bytes",
            "Payload bytes waiting for users online nowhere (master).",
            status.mailbox_bytes,
        ),
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
        (
            "socp_users_online",
            "Users online anywhere in the mesh (at a local holding presence on demand: those it knows of).",
            status.online.len(),
        ),
        (
            "socp_presence_on_demand",
            "1 at a local that holds presence on demand (socp_users_online counts the users it knows of).",
            usize::from(status.presence_on_demand),
        ),
        (
            "socp_links",
            "Servers with a live link.",
            status.linked.len(),
        ),
        (
            "socp_custody_frames",
            "Frames in custody, not yet acknowledged by the next hop.",
            status.custody,
        ),
        (
            "socp_custody_bytes",
            "Payload bytes in custody (on disk), bounded by socp_custody_max_bytes.",
            status.custody_bytes,
        ),
        (
            "socp_custody_max_bytes",
            "The custody byte cap (--custody-max-bytes).",
            status.custody_max_bytes,
        ),
        (
            "socp_custody_resident_bytes",
            "Payload bytes of custody held in memory (the rest are on disk only).",
            status.custody_resident_bytes,
        ),
        (
            "socp_mailbox_frames",
            "Frames waiting for users online nowhere (master).",
            status.mailbox,
        ),
    ];
    for (name, help, value) in gauges {
        write_metric(&mut out, name, Kind::Gauge, help, value);
    }
    let counters = [
        (
            "socp_dead_letters_total",
            "Content refused after a previous server handed it on: set aside, its sender told.",
            status.dead_letters,
        ),
        (
            "socp_mailbox_expired_total",
            "Mailbox frames dropped for age.",
            status.expired,
        ),
        (
            "socp_custody_unwritten_total",
            "Custody frames the next hop acknowledged before they were written.",
            status.unwritten,
        ),
        (
            "socp_slow_disconnects_total",
            "Connections dropped for a full send queue.",
            status.slow_disconnects,
        ),
    ];
    for (name, help, value) in counters {
        write_metric(&mut out, name, Kind::Counter, help, value);
    }
    write_header(
        &mut out,
        "socp_node_info",
        Kind::Gauge,
        "This node: its server id and role.",
    );
    out.push_str(&format!(
        "socp_node_info{{id=\"{}\",role=\"{}\"}} 1\n",
        label(&status.node_id),
        if status.master { "master" } else { "local" }
    ));
    write_header(
        &mut out,
        "socp_link",
        Kind::Gauge,
        "A live link: the server, its role, and whether this node dialed it.",
    );
    for link in &status.links {
        out.push_str(&format!(
            "socp_link{{server=\"{}\",role=\"{}\",dialed=\"{}\"}} 1\n",
            label(&link.server),
            link.role,
            link.dialed
        ));
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_requests_have_a_path() {
        assert_eq!(request_path("GET /readyz HTTP/1.1\r\n"), Some("/readyz"));
        assert_eq!(request_path("GET /metrics?x=1 HTTP/1.1"), Some("/metrics"));
        assert_eq!(request_path("POST /readyz HTTP/1.1"), None);
        assert_eq!(request_path(""), None);
    }

    #[test]
    fn the_router_figures_name_the_node_and_its_links() {
        let status = Status {
            node_id: "a\"b".into(),
            online: vec!["alice".into()],
            links: vec![hub::LinkStatus {
                server: "s1".into(),
                role: "master",
                dialed: true,
            }],
            ..Default::default()
        };
        let text = exposition(&status);
        assert!(text.contains("socp_users_online 1\n"), "{text}");
        assert!(
            text.contains("socp_node_info{id=\"a\\\"b\",role=\"local\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("socp_link{server=\"s1\",role=\"master\",dialed=\"true\"} 1\n"),
            "{text}"
        );
    }
}
