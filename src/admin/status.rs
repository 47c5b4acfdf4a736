//! `socp admin status`: what running nodes say about themselves, read from
//! their `--metrics` address (the Prometheus text at `/metrics`), shown as a
//! table or JSON. The metrics are the node's one operator interface: SOCP has
//! no admin frame types (PROTOCOL.md C9).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// How long connecting to and reading from a metrics address may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest metrics page read.
const MAX_PAGE: u64 = 4 << 20;

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text (the subset a node writes: no timestamps).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        });
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                (i, '"') => break i,
                (_, c) => val.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `http://HOST:PORT[/metrics]` or `HOST:PORT`: the address and the path.
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        bail!("{url:?}: give the node's --metrics address as http://HOST:PORT");
    }
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) if !p.is_empty() => (h, format!("/{p}")),
        Some((h, _)) => (h, "/metrics".to_owned()),
        None => (rest, "/metrics".to_owned()),
    };
    if host.is_empty() {
        bail!("{url:?} names no host");
    }
    Ok((host.to_owned(), path))
}

/// GETs the metrics page at `url`.
fn fetch(url: &str) -> Result<String> {
    let (host, path) = split_url(url)?;
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {url} (is the node running with --metrics?)"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    // One write: the node reads the request in one read.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("asking {url}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_PAGE)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading {url}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url} did not answer HTTP"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("{url} answered {status:?}");
    }
    Ok(body.to_owned())
}

/// A live link of a node.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Link {
    pub server: String,
    pub role: String,
    /// `dialed` (this node dialed it) or `accepted`.
    pub direction: String,
}

/// One quota: how much is in use against its cap.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quota {
    pub name: &'static str,
    pub used: u64,
    pub cap: u64,
}

/// Frames and their payload bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Held {
    pub frames: u64,
    pub bytes: u64,
}

/// What one node says about itself.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStatus {
    /// The metrics address asked.
    pub metrics: String,
    pub id: String,
    pub role: String,
    pub connections: u64,
    /// Users online anywhere in the mesh, as this node sees it.
    pub users_online: u64,
    /// A local holding presence on demand: `users_online` is the users it
    /// knows of (its own and those they addressed), not the mesh's.
    pub presence_on_demand: bool,
    /// Users connected to this node itself.
    pub users_here: u64,
    pub links: Vec<Link>,
    /// Content waiting for the next hop (the mailbox among it).
    pub custody: Held,
    /// Content waiting for users online nowhere (master).
    pub mailbox: Held,
    pub quotas: Vec<Quota>,
    pub dead_letters: u64,
    pub mailbox_expired: u64,
}

impl NodeStatus {
    fn from_samples(metrics: &str, samples: &[Sample]) -> Self {
        let get = |name: &str| -> u64 {
            samples
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.value.max(0.0) as u64)
                .unwrap_or(0)
        };
        let info = samples.iter().find(|s| s.name == "socp_node_info");
        let label = |key: &str| {
            info.and_then(|s| s.labels.get(key).cloned())
                .unwrap_or_else(|| "?".into())
        };
        let links = samples
            .iter()
            .filter(|s| s.name == "socp_link" && s.value > 0.0)
            .map(|s| Link {
                server: s.labels.get("server").cloned().unwrap_or_default(),
                role: s.labels.get("role").cloned().unwrap_or_default(),
                direction: if s.labels.get("dialed").map(String::as_str) == Some("true") {
                    "dialed".into()
                } else {
                    "accepted".into()
                },
            })
            .collect();
        let quota = |name, used, cap| Quota {
            name,
            used: get(used),
            cap: get(cap),
        };
        NodeStatus {
            metrics: metrics.to_owned(),
            id: label("id"),
            role: label("role"),
            connections: get("socp_connections"),
            users_online: get("socp_users_online"),
            presence_on_demand: get("socp_presence_on_demand") == 1,
            users_here: get("socp_users_here"),
            links,
            custody: Held {
                frames: get("socp_custody_frames"),
                bytes: get("socp_custody_bytes"),
            },
            mailbox: Held {
                frames: get("socp_mailbox_frames"),
                bytes: get("socp_mailbox_bytes"),
            },
            quotas: vec![
                quota(
                    "custody bytes (all users)",
                    "socp_custody_bytes",
                    "socp_custody_max_bytes",
                ),
                quota(
                    "fullest user queue, frames",
                    "socp_user_queue_fullest_frames",
                    "socp_user_queue_max_frames",
                ),
                quota(
                    "fullest user queue, bytes",
                    "socp_user_queue_fullest_bytes",
                    "socp_user_queue_max_bytes",
                ),
                quota(
                    "fullest sender, frames",
                    "socp_sender_fullest_frames",
                    "socp_sender_max_frames",
                ),
                quota(
                    "fullest sender, bytes",
                    "socp_sender_fullest_bytes",
                    "socp_sender_max_bytes",
                ),
            ],
            dead_letters: get("socp_dead_letters_total"),
            mailbox_expired: get("socp_mailbox_expired_total"),
        }
    }
}

/// Asks the node serving metrics at `url`.
pub fn status(url: &str) -> Result<NodeStatus> {
    let page = fetch(url)?;
    let samples = parse(&page);
    if !samples.iter().any(|s| s.name.starts_with("socp_")) {
        bail!("{url} serves no socp metrics");
    }
    Ok(NodeStatus::from_samples(url, &samples))
}

fn table(headers: &[&str], rows: &[Vec<String>], out: &mut String) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let text = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str("  ");
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
}

fn percent(used: u64, cap: u64) -> String {
    if cap == 0 {
        return "-".into();
    }
    format!("{:.1}%", used as f64 * 100.0 / cap as f64)
}

/// The nodes' status as tables, one block per node.
pub fn render(nodes: &[NodeStatus]) -> String {
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{} ({}) at {}\n", n.id, n.role, n.metrics));
        let scope = if n.presence_on_demand {
            "known here (presence on demand: the master has the mesh's)"
        } else {
            "in the mesh"
        };
        out.push_str(&format!(
            "  users online: {} {scope}, {} here; connections: {}\n",
            n.users_online, n.users_here, n.connections
        ));
        out.push_str(&format!(
            "  custody: {} frames, {} bytes; mailbox (users online nowhere): {} frames, {} bytes\n",
            n.custody.frames, n.custody.bytes, n.mailbox.frames, n.mailbox.bytes
        ));
        if n.dead_letters > 0 || n.mailbox_expired > 0 {
            out.push_str(&format!(
                "  dead letters: {}; mailbox frames expired: {}\n",
                n.dead_letters, n.mailbox_expired
            ));
        }
        let links: Vec<Vec<String>> = n
            .links
            .iter()
            .map(|l| vec![l.server.clone(), l.role.clone(), l.direction.clone()])
            .collect();
        if links.is_empty() {
            out.push_str("  links: none\n");
        } else {
            table(&["LINK", "ROLE", "DIRECTION"], &links, &mut out);
        }
        let quotas: Vec<Vec<String>> = n
            .quotas
            .iter()
            .map(|q| {
                vec![
                    q.name.to_owned(),
                    q.used.to_string(),
                    q.cap.to_string(),
                    percent(q.used, q.cap),
                ]
            })
            .collect();
        table(&["QUOTA", "IN USE", "CAP", "USED"], &quotas, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_with_labels_and_escapes() {
        let text = "# HELP x y\n# TYPE x gauge\nsocp_links 2\n\
                    socp_link{server=\"server_a\",role=\"local\",dialed=\"false\"} 1\n\
                    odd{v=\"a\\\"b,c\"} 3.5\n";
        let s = parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "socp_links");
        assert_eq!(s[0].value, 2.0);
        assert_eq!(s[1].labels["server"], "server_a");
        assert_eq!(s[1].labels["dialed"], "false");
        assert_eq!(s[2].labels["v"], "a\"b,c");
        assert_eq!(s[2].value, 3.5);
    }

    #[test]
    fn urls_default_to_the_metrics_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9190").unwrap(),
            ("127.0.0.1:9190".into(), "/metrics".into())
        );
        assert_eq!(
            split_url("127.0.0.1:9190/metrics").unwrap(),
            ("127.0.0.1:9190".into(), "/metrics".into())
        );
        assert!(split_url("ws://127.0.0.1:9101").is_err());
    }

    #[test]
    fn an_unreachable_node_is_named() {
        // A port just released: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = status(&format!("http://127.0.0.1:{port}")).unwrap_err();
        assert!(format!("{err:#}").contains("--metrics"), "{err:#}");
    }
}
