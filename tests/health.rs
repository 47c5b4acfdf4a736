//! Health checks on the `--metrics` address, as a supervisor sees them:
//! `/healthz` says the process is up; `/readyz` says 503 with a reason while
//! a local has no master link or a master's store cannot write, and 200
//! again once that is over. Nodes are real `socp` processes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::{connect, user_key};
use common::procs::start_node;
use common::tmpfs::Tmpfs;
use socp::client::{Session, SessionError};

/// Every HTTP request and every wait for a state gives up after this long.
const WAIT: Duration = Duration::from_secs(30);

/// `GET path` on `addr`: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// `GET /healthz` written in two pieces, as a slow client might send it.
fn get_healthz_in_pieces(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /heal").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"thz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// Polls `/readyz` until its status is `code`; returns the body.
fn wait_ready(addr: &str, code: u16) -> String {
    wait_readyz(addr, code, "")
}

/// Polls `/readyz` until its status is `code` and its body says `says`.
fn wait_readyz(addr: &str, code: u16, says: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (c, body) = get(addr, "/readyz");
        if c == code && body.contains(says) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {c} (wanted {code} saying {says:?}): {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics_flag() -> Vec<String> {
    vec!["--metrics".into(), "127.0.0.1:0".into()]
}

#[test]
fn a_local_is_ready_only_while_its_master_link_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = start_node(dir.path().join("m"), "master", "server-0", &metrics_flag());
    let mut args = metrics_flag();
    args.extend(["--master-url".into(), master.url()]);
    let local = start_node(dir.path().join("l"), "local", "server-1", &args);
    let m = master
        .metrics_addr()
        .expect("the master logs its metrics address");
    let l = local
        .metrics_addr()
        .expect("the local logs its metrics address");

    assert_eq!(get(&l, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&l, "/nowhere").0, 404);
    let pieces = get_healthz_in_pieces(&l);
    assert!(pieces.starts_with("HTTP/1.1 200 OK"), "{pieces}");
    assert_eq!(wait_ready(&m, 200), "ready\n");
    assert_eq!(wait_ready(&l, 200), "ready\n");

    // The master goes away: the local is up but not ready, and says why.
    master.kill9();
    let why = wait_ready(&l, 503);
    assert!(why.starts_with("master: "), "{why}");
    assert_eq!(get(&l, "/healthz").0, 200, "the process is still up");

    // The master comes back (same port): the local redials and is ready.
    master.restart().unwrap();
    assert_eq!(wait_ready(&l, 200), "ready\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_store_cannot_write_is_not_ready_until_there_is_room() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let master = start_node(fs.path().join("m"), "master", "server-0", &metrics_flag());
    let m = master
        .metrics_addr()
        .expect("the master logs its metrics address");
    let ready = |code| {
        let m = m.clone();
        async move {
            tokio::task::spawn_blocking(move || wait_ready(&m, code))
                .await
                .unwrap()
        }
    };
    assert_eq!(ready(200).await, "ready\n");

    let filler = fs.fill();
    let why = ready(503).await;
    assert!(
        why.starts_with("store: no space left for the database"),
        "{why}"
    );
    // A write that fails is named too.
    match tokio::time::timeout(
        WAIT,
        Session::connect(&master.url(), "dave", user_key("dave")),
    )
    .await
    .expect("dave's hello is answered")
    {
        Err(SessionError::Refused { code, .. }) => assert_eq!(code, "STORAGE"),
        Err(e) => panic!("dave: unexpected failure {e}"),
        Ok(dave) => dave.close().await,
    }
    tokio::task::spawn_blocking({
        let m = m.clone();
        move || wait_readyz(&m, 503, "store: the last write failed")
    })
    .await
    .unwrap();
    assert_eq!(
        tokio::task::spawn_blocking({
            let m = m.clone();
            move || get(&m, "/healthz").0
        })
        .await
        .unwrap(),
        200
    );

    // Room again: the next write commits and the master is ready.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::timeout(WAIT, connect(&master.url(), "alice"))
        .await
        .expect("alice connects")
        .close()
        .await;
    assert_eq!(ready(200).await, "ready\n");
}
