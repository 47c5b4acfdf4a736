//! The frame layer against hand-made client frames, over in-memory pipes.

use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, DuplexStream, duplex};

const WAIT: Duration = Duration::from_secs(5);

/// A frame as a client sends it (masked).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 14];
    let n = header(&mut head, opcode, payload.len(), true);
    if !fin {
        head[0] &= 0x7f;
    }
    let mask = [1, 2, 3, 4];
    let mut out = head[..n].to_vec();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn server(io: DuplexStream) -> WsConn<DuplexStream> {
    WsConn::new(io, Vec::new(), Role::Server, 1 << 20)
}

async fn next(ws: &mut WsConn<DuplexStream>) -> Option<Result<Incoming, WsError>> {
    tokio::time::timeout(WAIT, ws.next()).await.unwrap()
}

#[tokio::test]
async fn a_large_frame_leaves_no_buffer_behind() {
    let (mut peer, io) = duplex(64 * 1024);
    let mut ws = server(io);
    let big = "x".repeat(900 * 1024);
    let frame = client_frame(true, TEXT, big.as_bytes());
    let writer = tokio::spawn(async move {
        peer.write_all(&frame).await.unwrap();
        peer.write_all(&client_frame(true, TEXT, b"small"))
            .await
            .unwrap();
        peer
    });
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Text(big));
    // At most the start of the next frame, read with the end of this one.
    let held = ws.reader.held();
    assert!(held <= SHRINK_ABOVE, "{held} bytes kept after the frame");
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("small".into())
    );
    assert_eq!(ws.reader.held(), 0);
    drop(writer.await.unwrap());
    assert!(next(&mut ws).await.is_none(), "end of stream");
}

#[tokio::test]
async fn a_frame_header_alone_does_not_reserve_the_frame() {
    let (mut peer, io) = duplex(4096);
    let mut ws = server(io);
    // The start of a 1 MiB frame (header and 100 bytes), then nothing.
    let frame = client_frame(true, TEXT, &vec![b'a'; 1 << 20]);
    peer.write_all(&frame[..114]).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
    assert!(waited.is_err(), "no message from a part of a frame");
    let held = ws.reader.held();
    assert!(held <= 2 * READ_CHUNK, "{held} bytes held for 114 received");
}

#[tokio::test]
async fn fragments_make_one_message_and_pings_come_between() {
    let (mut peer, io) = duplex(4096);
    let mut ws = server(io);
    let mut bytes = client_frame(false, TEXT, b"hel");
    bytes.extend(client_frame(true, PING, b"p"));
    bytes.extend(client_frame(true, CONTINUATION, "lo é".as_bytes()));
    bytes.extend(client_frame(true, CLOSE, &NORMAL_CLOSURE.to_be_bytes()));
    peer.write_all(&bytes).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Ping(b"p".to_vec())
    );
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("hello é".into())
    );
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Close);
    // Our pong and text go out unmasked.
    tokio::time::timeout(WAIT, async {
        ws.pong(b"p").await.unwrap();
        ws.send_text("hi").await.unwrap();
    })
    .await
    .unwrap();
    let mut out = [0u8; 7];
    let read = tokio::time::timeout(WAIT, peer.read_exact(&mut out)).await;
    read.unwrap().unwrap();
    assert_eq!(out, [0x8A, 1, b'p', 0x81, 2, b'h', b'i']);
}

#[tokio::test]
async fn oversized_unmasked_and_bad_frames_are_refused() {
    let (mut peer, io) = duplex(4096);
    let mut ws = WsConn::new(io, Vec::new(), Role::Server, 100);
    peer.write_all(&client_frame(true, TEXT, &[b'a'; 101]))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(Err(WsError::TooLarge {
            size: 101,
            max: 100
        }))
    ));
    for bytes in [
        vec![0x81, 0x01, b'a'],                  // unmasked
        client_frame(true, CONTINUATION, b"a"),  // continuation of nothing
        client_frame(true, TEXT, &[0xff, 0xfe]), // not UTF-8
        client_frame(false, PING, b"a"),         // fragmented control frame
    ] {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        peer.write_all(&bytes).await.unwrap();
        assert!(matches!(next(&mut ws).await, Some(Err(_))), "{bytes:?}");
    }
}

#[tokio::test]
async fn a_client_masks_what_it_sends_and_reads_plain_frames() {
    let (a, b) = duplex(4096);
    let mut client = WsConn::new(a, Vec::new(), Role::Client, 1 << 20);
    let mut server = server(b);
    client.send_text("from the client").await.unwrap();
    assert_eq!(
        next(&mut server).await.unwrap().unwrap(),
        Incoming::Text("from the client".into())
    );
    // Larger than the pipe: written while it is read.
    let big = "y".repeat(70_000);
    let (sent, got) = tokio::time::timeout(WAIT, async {
        tokio::join!(server.send_text(&big), client.next())
    })
    .await
    .unwrap();
    sent.unwrap();
    assert_eq!(got.unwrap().unwrap(), Incoming::Text(big));
}

/// Reads the close frame the server wrote and returns its status.
async fn close_status(peer: &mut DuplexStream) -> u16 {
    let mut out = [0u8; 4];
    let read = tokio::time::timeout(WAIT, peer.read_exact(&mut out)).await;
    read.unwrap().unwrap();
    assert_eq!(out[..2], [0x88, 2], "a close frame with a status");
    u16::from_be_bytes([out[2], out[3]])
}

#[tokio::test]
async fn a_trickled_frame_is_cut_off_at_the_frame_timeout() {
    let (mut peer, io) = duplex(4096);
    let mut ws = server(io);
    ws.set_frame_timeout(Duration::from_millis(300));
    let frame = client_frame(true, TEXT, &[b'a'; 1000]);
    let trickle = tokio::spawn(async move {
        peer.write_all(&frame[..20]).await.unwrap();
        for b in &frame[20..200] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if peer.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        peer
    });
    let got = next(&mut ws).await;
    assert!(
        matches!(got, Some(Err(WsError::FrameTimeout(_)))),
        "{got:?}"
    );
    let mut peer = trickle.await.unwrap();
    tokio::time::timeout(WAIT, ws.close())
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(100), peer.read_to_end(&mut rest)).await;
    let status = rest
        .windows(2)
        .position(|w| w == [0x88, 2])
        .map(|i| u16::from_be_bytes([rest[i + 2], rest[i + 3]]));
    assert_eq!(status, Some(POLICY_VIOLATION));
}

#[tokio::test]
async fn a_fragmented_message_must_complete_in_time() {
    let (mut peer, io) = duplex(4096);
    let mut ws = server(io);
    ws.set_frame_timeout(Duration::from_millis(300));
    // Each fragment whole, the message never finished.
    let feeder = tokio::spawn(async move {
        let mut first = true;
        loop {
            let opcode = if first { TEXT } else { CONTINUATION };
            first = false;
            if peer
                .write_all(&client_frame(false, opcode, b"x"))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let got = next(&mut ws).await;
    assert!(
        matches!(got, Some(Err(WsError::FrameTimeout(_)))),
        "{got:?}"
    );
    drop(ws);
    feeder.await.unwrap();
}

#[tokio::test]
async fn a_connection_between_messages_has_no_deadline() {
    let (mut peer, io) = duplex(4096);
    let mut ws = server(io);
    ws.set_frame_timeout(Duration::from_millis(100));
    peer.write_all(&client_frame(true, TEXT, b"one"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("one".into())
    );
    let idle = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(idle.is_err(), "nothing came, nothing ends");
    peer.write_all(&client_frame(true, TEXT, b"two"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("two".into())
    );
}

#[tokio::test]
async fn close_statuses_and_reasons_are_checked() {
    let mut with_reason = 1001u16.to_be_bytes().to_vec();
    with_reason.extend_from_slice("bye é".as_bytes());
    for ok in [
        vec![],
        with_reason,
        3000u16.to_be_bytes().to_vec(),
        4999u16.to_be_bytes().to_vec(),
    ] {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        peer.write_all(&client_frame(true, CLOSE, &ok))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Close,
            "{ok:?}"
        );
        tokio::time::timeout(WAIT, ws.close())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(close_status(&mut peer).await, NORMAL_CLOSURE);
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xff, 0xfe]);
    let cases = [
        (vec![3], PROTOCOL_ERROR),
        (999u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
        (1005u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
        (1006u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
        (1015u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
        (2000u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
        (5000u16.to_be_bytes().to_vec(), PROTOCOL_ERROR),
        (bad_reason, INVALID_DATA),
    ];
    for (payload, status) in cases {
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        peer.write_all(&client_frame(true, CLOSE, &payload))
            .await
            .unwrap();
        assert!(matches!(next(&mut ws).await, Some(Err(_))), "{payload:?}");
        tokio::time::timeout(WAIT, ws.close())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(close_status(&mut peer).await, status, "{payload:?}");
    }
}

#[tokio::test]
async fn what_would_pass_the_limit_is_refused_from_its_header() {
    // A continuation that would take the message past the limit, and
    // a frame of an unknown opcode: refused before their payloads
    // (which never come) are waited for.
    let mut past = client_frame(false, TEXT, &[b'a'; 60]);
    past.extend_from_slice(&client_frame(true, CONTINUATION, &[b'b'; 60])[..8]);
    let unknown = client_frame(true, 0x3, &[0; 50])[..8].to_vec();
    for (bytes, too_large) in [(past, true), (unknown, false)] {
        let (mut peer, io) = duplex(4096);
        let mut ws = WsConn::new(io, Vec::new(), Role::Server, 100);
        peer.write_all(&bytes).await.unwrap();
        let got = next(&mut ws).await;
        match got {
            Some(Err(WsError::TooLarge {
                size: 120,
                max: 100,
            })) => assert!(too_large),
            Some(Err(WsError::Protocol(_))) => assert!(!too_large),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn nothing_follows_a_frame_cut_off_mid_write() {
    let (mut peer, io) = duplex(1024);
    let mut ws = server(io);
    let big = "z".repeat(10_000);
    let cut = tokio::time::timeout(Duration::from_millis(100), ws.send_text(&big)).await;
    assert!(cut.is_err(), "the pipe holds 1 KiB: the write waits");
    assert!(ws.send_text("after").await.is_err());
    tokio::time::timeout(WAIT, ws.close())
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, peer.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1024, "the cut frame's start, and no close frame");
}

#[tokio::test]
async fn pongs_are_reported() {
    let (mut peer, io) = duplex(4096);
    let mut ws = server(io);
    peer.write_all(&client_frame(true, PONG, b"p"))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Pong);
}

#[test]
fn the_recorder_keeps_what_follows_the_http_head() {
    let mut r = Recorder::new(());
    r.record(b"GET / HTTP/1.1\r\nHost: x\r");
    r.record(b"\n\r\nfirst ");
    r.record(b"frame");
    assert_eq!(r.tail, b"first frame");
    let mut r = Recorder::new(());
    r.record(b"GET / HTTP/1.1\r\n\r\r\n\r\n");
    assert!(r.tail.is_empty());
    assert_eq!(r.matched, 4);
}

/// A client's continuation header claiming a length (masked, 64-bit).
fn continuation_header(len: u64) -> Vec<u8> {
    let mut out = vec![CONTINUATION, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

#[tokio::test]
async fn a_length_that_would_wrap_the_sum_is_refused() {
    // A started message, then a continuation whose 64-bit length is near
    // u64::MAX: the sum with what was held must not wrap under the limit
    // (it did: the frame was then held as it arrived, or the read panicked).
    for (len, protocol) in [(u64::MAX - 50, true), ((1u64 << 63) - 10, false)] {
        let mut bytes = client_frame(false, TEXT, &[b'a'; 100]);
        bytes.extend_from_slice(&continuation_header(len));
        let (mut peer, io) = duplex(4096);
        let mut ws = server(io);
        peer.write_all(&bytes).await.unwrap();
        match next(&mut ws).await {
            Some(Err(WsError::Protocol(_))) => assert!(protocol, "len {len}"),
            Some(Err(WsError::TooLarge { .. })) => assert!(!protocol, "len {len}"),
            other => panic!("len {len}: {other:?}"),
        }
    }
}
