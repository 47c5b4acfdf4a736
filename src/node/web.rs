//! The browser client (`web/` at the top of the repository, embedded in the
//! binary) served on the node's own listen address: a connection whose
//! first request is a plain `GET` gets a page or an asset with a strict
//! Content-Security-Policy and is closed; a WebSocket upgrade goes on to the
//! WebSocket handshake with the bytes already read put back in front of the
//! stream ([`Prefixed`]). `--web off` skips all of this.

use std::pin::Pin;
use std::task::{Context, Poll};

use include_dir::{Dir, include_dir};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The app, embedded at build time (build.rs reruns when `web/` changes).
static APP: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/web");

/// The longest request head read before deciding (a browser's is ~1 KiB).
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Why a connection's first bytes were not a request head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
    #[error("the request head is over {MAX_HEAD} bytes")]
    TooLong,
    #[error("the connection closed before a full request head")]
    Closed,
}

/// What the first request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// The `Host` header if it is a plain host[:port] (used in the CSP).
    pub host: Option<String>,
    /// `Upgrade: websocket`: for the WebSocket handshake, not for us.
    pub upgrade: bool,
}

/// Reads the request head (through the blank line); what follows it, if
/// anything, stays in the returned bytes too.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Only the new bytes (and the three before them) can complete the
        // blank line: a head trickled in a byte at a time costs linear time.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLong);
        }
    }
}

/// Parses a request head; None if it is not HTTP/1.x.
pub(crate) fn parse(head: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = req.parse(head).ok()? else {
        return None;
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let upgrade = header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let host = header("host")
        .map(str::trim)
        .filter(|h| plain_host(h))
        .map(str::to_owned);
    Some(Request {
        method: req.method?.to_owned(),
        path: req.path?.to_owned(),
        host,
        upgrade,
    })
}

/// A host[:port] that can go into a header as it is.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The content type of an asset, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// The policy every answer carries: nothing but this node's own assets,
/// and WebSocket connections back to this node only.
pub(crate) fn csp(host: Option<&str>, tls: bool) -> String {
    let ws = match host {
        Some(h) if tls => format!(" wss://{h}"),
        Some(h) => format!(" ws://{h}"),
        None => String::new(),
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
         connect-src 'self'{ws}; object-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// The asset a path names: `/` is the page; no `..`, no hidden files.
fn asset(path: &str) -> Option<&'static include_dir::File<'static>> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rel = match path {
        "/" | "/index.html" => "index.html",
        p => p.strip_prefix('/')?,
    };
    if rel
        .split('/')
        .any(|seg| seg.is_empty() || seg.starts_with('.'))
    {
        return None;
    }
    APP.get_file(rel)
}

/// Answers one plain HTTP request and returns; the caller closes.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
    tls: bool,
) -> std::io::Result<()> {
    let found = (req.method == "GET" || req.method == "HEAD")
        .then(|| asset(&req.path))
        .flatten();
    let (status, ctype, body): (&str, &str, &[u8]) = match found {
        Some(f) => (
            "200 OK",
            content_type(f.path().to_str().unwrap_or("")),
            f.contents(),
        ),
        None if req.method != "GET" && req.method != "HEAD" => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            b"method not allowed\n",
        ),
        None => ("404 Not Found", "text/plain; charset=utf-8", b"not found\n"),
    };
    answer(stream, req, tls, status, ctype, body, "").await
}

/// Answers a request from an address that holds `--max-conns-per-ip`
/// connections already, as a WebSocket from it would be: refused (503).
pub(crate) async fn busy<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
    tls: bool,
) -> std::io::Result<()> {
    let body: &[u8] = b"too many connections from your address: close some and try again\n";
    let status = "503 Service Unavailable";
    let extra = "Retry-After: 5\r\n";
    answer(
        stream,
        req,
        tls,
        status,
        "text/plain; charset=utf-8",
        body,
        extra,
    )
    .await
}

/// Writes one answer with the security headers (and `extra` header lines)
/// and shuts the stream's write side.
async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
    tls: bool,
    status: &str,
    ctype: &str,
    body: &[u8],
    extra: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}\
         Content-Type: {ctype}\r\n\
         Content-Length: {len}\r\n\
         Content-Security-Policy: {csp}\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n\
         X-Frame-Options: DENY\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\n\
         Cache-Control: no-cache\r\n\
         Connection: close\r\n\r\n",
        len = body.len(),
        csp = csp(req.host.as_deref(), tls),
    );
    stream.write_all(head.as_bytes()).await?;
    if req.method != "HEAD" {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(head: Vec<u8>, inner: S) -> Self {
        Prefixed { head, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_an_upgrade_from_a_page_request() {
        let page = parse(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n").unwrap();
        assert!(!page.upgrade);
        assert_eq!(page.host.as_deref(), Some("127.0.0.1:9000"));
        let ws = parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        assert!(ws.upgrade);
        assert!(parse(b"\x16\x03\x01garbage\r\n\r\n").is_none());
    }

    #[test]
    fn a_host_with_odd_bytes_stays_out_of_the_policy() {
        let r = parse(b"GET / HTTP/1.1\r\nHost: a; script-src *\r\n\r\n").unwrap();
        assert_eq!(r.host, None);
        assert!(!csp(None, false).contains('*'));
    }

    #[test]
    fn only_embedded_files_are_served() {
        assert!(asset("/").is_some());
        assert!(asset("/index.html?x=1").is_some());
        assert!(asset("/../Cargo.toml").is_none());
        assert!(asset("/js/../index.html").is_none());
        assert!(asset("//etc/passwd").is_none());
        assert!(asset("/nope.js").is_none());
    }

    #[tokio::test]
    async fn a_head_trickled_a_byte_at_a_time_is_found_whole() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut mock = tokio_test_reader(head);
        let got = read_head(&mut mock).await.unwrap();
        assert_eq!(got, head);
    }

    /// A reader that hands out one byte per read.
    fn tokio_test_reader(bytes: &'static [u8]) -> impl AsyncRead + Unpin {
        struct OneByte(&'static [u8]);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if let Some((first, rest)) = self.0.split_first() {
                    buf.put_slice(&[*first]);
                    self.0 = rest;
                }
                Poll::Ready(Ok(()))
            }
        }
        OneByte(bytes)
    }
}
