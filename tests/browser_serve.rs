//! The browser client is served on the node's WebSocket port: `GET /` over
//! a real socket returns the page with the security headers, the app's
//! modules come with a JavaScript content type, the WebSocket endpoint keeps
//! working for clients on the same port, and `--web off` turns the page off.

mod common;

use std::time::Duration;

use common::cluster::{TestNode, connect, expect};
use socp::wire::messages::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// One plain HTTP/1.1 request; the whole answer (the node closes after it).
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("GET timed out")
}

/// The value of header `name` in a response (case-insensitive name).
fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_comes_with_a_strict_policy_and_websockets_still_work() {
    let master = TestNode::master().await;
    let addr = master.addr();
    let page = get(addr, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(
        header(&page, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = header(&page, "content-security-policy").expect("no CSP");
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        &format!("connect-src 'self' ws://{addr}"),
    ] {
        assert!(csp.contains(part), "CSP lacks {part}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&page, "referrer-policy"), Some("no-referrer"));
    assert!(page.contains("<script type=\"module\" src=\"/js/main.js\">"));
    // No inline script or style in the page itself.
    assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style="));

    let js = get(addr, "/js/main.js").await;
    assert!(js.starts_with("HTTP/1.1 200"), "{js}");
    assert_eq!(
        header(&js, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let css = get(addr, "/app.css").await;
    assert_eq!(
        header(&css, "content-type"),
        Some("text/css; charset=utf-8")
    );
    let missing = get(addr, "/../Cargo.toml").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert_eq!(header(&missing, "x-content-type-options"), Some("nosniff"));

    // The WebSocket endpoint on the same port: a client says hello and is
    // listed, after all those page loads.
    let mut alice = connect(&master.url(), "alice").await;
    alice
        .send("server_*", &Message::UserListReq(Default::default()))
        .await
        .unwrap();
    expect(
        &mut alice,
        "USER_LIST with alice",
        |_, m| matches!(m, Message::UserList(l) if l.users.iter().any(|u| u == "alice")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_off_serves_no_page_but_websockets() {
    let master = TestNode::master_with(|c| c.web = false).await;
    let page = get(master.addr(), "/").await;
    assert!(!page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(!page.contains("main.js"));
    let _alice = connect(&master.url(), "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_request_over_the_address_cap_is_refused_and_pages_hold_no_slot() {
    let master = TestNode::master_with(|c| c.limits.max_conns_per_ip = 2).await;
    let addr = master.addr();
    // Page loads one after another each take the address's slot only
    // while being answered: many in a row all get the page, and the
    // WebSocket connections after them are still let in.
    for _ in 0..6 {
        let page = get(addr, "/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    }
    let alice = connect(&master.url(), "alice").await;
    let bob = connect(&master.url(), "bob").await;
    // The address holds its two: a page request is refused as a WebSocket
    // would be, with the same security headers.
    let busy = get(addr, "/").await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(!busy.contains("main.js"), "{busy}");
    assert_eq!(header(&busy, "x-content-type-options"), Some("nosniff"));
    assert!(header(&busy, "content-security-policy").is_some());
    // A slot given back (bob leaves) is a page for the next request.
    drop(bob);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = get(addr, "/").await;
        if page.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(alice);
}
