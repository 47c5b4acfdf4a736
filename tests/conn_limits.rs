//! The connection layer against a peer that writes its own WebSocket
//! frames: a frame trickled in is cut off, pings and binary frames count in
//! a user's rate, close frames are checked, and a user that leaves its
//! answers unread is closed once they pass its byte budget.

mod common;

use std::time::Duration;

use common::cluster::{TestNode, WAIT, user_key};
use common::raw::{hello_payload, signed};
use socp::wire::Envelope;
use socp::wire::ids::TO_SERVER;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [7, 1, 9, 3];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What the node sent: a frame's opcode and payload.
type Got = (u8, Vec<u8>);

/// A WebSocket client whose frames the test writes byte by byte.
struct Frames {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
}

impl Frames {
    /// Connects (with a small receive buffer if `rcvbuf`) and does the
    /// upgrade through tungstenite, then takes the socket over.
    async fn connect(node: &TestNode, rcvbuf: Option<u32>) -> Frames {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let tcp = socket.connect(node.addr()).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(node.url(), tcp)
            .await
            .unwrap();
        let (rd, wr) = ws.into_inner().into_split();
        Frames { rd, wr }
    }

    /// Connects and says a signed hello as `user` (no session: every
    /// frame the node sends it is RSA-signed); returns once welcomed.
    async fn login(node: &TestNode, user: &str, rcvbuf: Option<u32>) -> Frames {
        let mut f = Frames::connect(node, rcvbuf).await;
        let key = user_key(user);
        let hello = signed(
            "USER_HELLO",
            user,
            TO_SERVER,
            hello_payload(user, key.public().to_b64()),
            &key,
        );
        f.send(TEXT, hello.to_json().as_bytes()).await;
        loop {
            let (op, payload) = f.read().await.expect("an answer to the hello");
            if op == TEXT && envelope(&payload).kind == "USER_WELCOME" {
                return f;
            }
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.wr.write_all(&frame(opcode, payload)).await.unwrap();
    }

    /// The next frame within `WAIT`; None at the end of the stream.
    async fn read(&mut self) -> Option<Got> {
        tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("a frame or the end within WAIT")
    }

    async fn read_frame(&mut self) -> Option<Got> {
        read_frame(&mut self.rd).await
    }

    async fn until_closed(&mut self) -> Option<Vec<Got>> {
        until_closed(&mut self.rd).await
    }

    /// Frames that arrive within `quiet` of each other.
    async fn drain(&mut self, quiet: Duration) -> Vec<Got> {
        let mut got = Vec::new();
        while let Ok(Some(f)) = tokio::time::timeout(quiet, self.read_frame()).await {
            got.push(f);
        }
        got
    }
}

async fn read_frame(rd: &mut OwnedReadHalf) -> Option<Got> {
    let mut head = [0u8; 2];
    rd.read_exact(&mut head).await.ok()?;
    assert_eq!(head[1] & 0x80, 0, "a server's frames are not masked");
    let len = match head[1] & 0x7f {
        126 => u64::from(rd.read_u16().await.ok()?),
        127 => rd.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    rd.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

/// Every frame until the node closes (within `WAIT`); None if it did not
/// close in that time.
async fn until_closed(rd: &mut OwnedReadHalf) -> Option<Vec<Got>> {
    tokio::time::timeout(WAIT, async {
        let mut got = Vec::new();
        while let Some(f) = read_frame(rd).await {
            got.push(f);
        }
        got
    })
    .await
    .ok()
}

fn envelope(payload: &[u8]) -> Envelope {
    Envelope::parse(std::str::from_utf8(payload).unwrap()).unwrap()
}

/// The codes of the `ERROR` frames among `got`.
fn error_codes(got: &[Got]) -> Vec<String> {
    got.iter()
        .filter(|(op, _)| *op == TEXT)
        .map(|(_, p)| envelope(p))
        .filter(|env| env.kind == "ERROR")
        .map(|env| env.payload["code"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The status of the close frame among `got`.
fn close_status(got: &[Got]) -> Option<u16> {
    got.iter()
        .find(|(op, _)| *op == CLOSE)
        .and_then(|(_, p)| Some(u16::from_be_bytes([*p.first()?, *p.get(1)?])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_trickling_a_frame_is_closed_after_the_frame_timeout() {
    let node = TestNode::master_with(|c| c.limits.frame_timeout = Duration::from_secs(1)).await;
    let Frames { mut rd, mut wr } = Frames::login(&node, "alice", None).await;
    // The start of a 1,000-byte frame, then a byte every 100 ms.
    let bytes = frame(TEXT, &[b'a'; 1000]);
    let trickle = tokio::spawn(async move {
        wr.write_all(&bytes[..16]).await.unwrap();
        for b in &bytes[16..] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    });
    let got = until_closed(&mut rd).await.expect("closed within WAIT");
    assert!(error_codes(&got).contains(&"TIMEOUT".to_owned()), "{got:?}");
    assert_eq!(close_status(&got), Some(1008), "policy violation");
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_binary_frames_count_in_a_users_frame_rate() {
    let node = TestNode::master_with(|c| {
        c.limits.user_rate = 5.0;
        c.limits.user_burst = 5.0;
    })
    .await;
    let mut f = Frames::login(&node, "alice", None).await;
    for _ in 0..40 {
        f.send(PING, b"p").await;
    }
    let got = f.drain(Duration::from_millis(500)).await;
    let pongs = got.iter().filter(|(op, _)| *op == PONG).count();
    assert!(pongs <= 10, "{pongs} pongs for 40 pings at 5 a second");
    // Binary frames are refused with an error each: within the rate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..40 {
        f.send(BINARY, b"b").await;
    }
    let got = f.drain(Duration::from_millis(500)).await;
    let codes = error_codes(&got);
    let bad = codes.iter().filter(|c| *c == "BAD_FRAME").count();
    assert!(bad <= 10, "{bad} errors for 40 binary frames: {codes:?}");
    assert!(codes.contains(&"RATE_LIMITED".to_owned()), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_with_a_bad_status_or_reason_are_answered_in_kind() {
    let node = TestNode::master().await;
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xc3, 0x28]);
    let mut fine = 1001u16.to_be_bytes().to_vec();
    fine.extend_from_slice(b"going away");
    for (payload, status) in [
        (999u16.to_be_bytes().to_vec(), 1002),
        (1006u16.to_be_bytes().to_vec(), 1002),
        (vec![3], 1002),
        (bad_reason, 1007),
        (fine, 1000),
    ] {
        let mut f = Frames::login(&node, "alice", None).await;
        f.send(CLOSE, &payload).await;
        let got = f.until_closed().await.expect("closed within WAIT");
        assert_eq!(close_status(&got), Some(status), "{payload:?}");
        node.wait_offline("alice").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_leaving_its_answers_unread_is_closed_past_its_byte_budget() {
    let node = TestNode::master_with(|c| c.limits.user_queue_bytes = 16 << 10).await;
    // A small receive window, and every answer RSA-signed: answers pile up.
    let mut f = Frames::login(&node, "alice", Some(4096)).await;
    for _ in 0..900 {
        f.send(TEXT, b"not json").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = f.until_closed().await.expect("closed within WAIT");
    let codes = error_codes(&got);
    assert_eq!(
        codes.last().map(String::as_str),
        Some("QUOTA_EXCEEDED"),
        "told why, last: {} errors before",
        codes.len()
    );
    assert!(codes.len() < 900, "what was queued was dropped");
    // The node serves the user again.
    node.wait_offline("alice").await;
    let mut again = Frames::login(&node, "alice", None).await;
    again.send(TEXT, b"not json").await;
    let got = again.drain(Duration::from_millis(500)).await;
    assert_eq!(error_codes(&got), ["BAD_FRAME"]);
}
