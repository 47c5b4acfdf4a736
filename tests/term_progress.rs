//! Issue 14 item 12: the file progress bar (drawn on stderr when it is a
//! terminal) is ended with a newline when the transfer fails, so the next
//! line does not start on the bar's line.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::{TestNode, WAIT, connect, user_key};
use common::pty::capture_pty;
use common::termproc::install_key;
use socp::content;
use socp::wire::messages::{FileChunk, FileMode, FileStart, Message};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Chunk 0 of a DM file, sealed right, then chunk 1 altered.
async fn send_broken_file(s: &mut socp::client::Session, to: &str, data: &[u8]) {
    let file_id = uuid::Uuid::new_v4().to_string();
    let start = FileStart {
        file_id: file_id.clone(),
        name: "broken.bin".into(),
        size: data.len() as u64,
        sha256: socp::crypto::hex(&socp::crypto::sha256(data)),
        mode: FileMode::Dm,
        group_id: None,
        user_id: None,
        content_sig: None,
        msg_id: None,
        extra: Default::default(),
    };
    s.send(to, &Message::FileStart(start)).await.unwrap();
    let key = socp::crypto::aead::new_key().unwrap();
    let wrapped = socp::wire::b64::encode(user_key(to).public().wrap(key.as_ref()).unwrap());
    for (i, piece) in data.chunks(content::CHUNK_SIZE).take(2).enumerate() {
        let mut chunk: FileChunk =
            content::seal_chunk(&file_id, i as u64, key.as_ref(), Some(&wrapped), piece).unwrap();
        if i == 1 {
            let mut ct = socp::wire::b64::decode(&chunk.ciphertext).unwrap();
            ct[10] ^= 0x40;
            chunk.ciphertext = socp::wire::b64::encode(ct);
        }
        s.send(to, &Message::FileChunk(chunk)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_ends_the_progress_bar_line() {
    let node = TestNode::master().await;
    let dir = tempfile::tempdir().unwrap();
    install_key(dir.path(), "alice");
    let (stderr, drawn) = capture_pty();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_socp"))
        .args(["client", "--user", "alice", "--server", &node.url()])
        .arg("--keys")
        .arg(dir.path().join("keys"))
        .arg("--downloads")
        .arg(dir.path().join("downloads"))
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let next_line = async |lines: &mut tokio::io::Lines<_>, want: &str| loop {
        let line: Option<String> = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap();
        let line = line.expect("the client is running");
        if line.contains(want) {
            return line;
        }
    };
    next_line(&mut lines, "connected as alice").await;
    let mut bob = connect(&node.url(), "bob").await;
    send_broken_file(&mut bob, "alice", &vec![1u8; 3 * content::CHUNK_SIZE]).await;
    let failed = next_line(&mut lines, "does not decrypt").await;
    assert!(failed.contains("broken.bin"), "{failed}");
    // The bar was drawn (chunk 0), and its line was ended before the error.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&drawn.lock().unwrap()).into_owned();
        let bar = text.rfind("receiving broken.bin [");
        if let Some(at) = bar
            && text[at..].contains("bytes")
        {
            let after = &text[at..];
            let end = after.find("bytes").unwrap() + "bytes".len();
            if after[end..].starts_with("\r\n") || after[end..].starts_with('\n') {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the bar's line was not ended: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
