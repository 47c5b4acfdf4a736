//! The attacks of issue 11, each a task that runs until told to stop and
//! tallies what the nodes answered it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use socp::client::Session;
use socp::client::session::Ws;
use socp::content;
use socp::crypto::PrivateKey;
use socp::wire::messages::{FileMode, FileStart, Kind, Message};
use socp::wire::{Envelope, MAX_FRAME_BYTES, ids};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::peer::{Peer, Tally, padded, with_id};
use super::{FILE_STARTS, GARBAGE_PER_S, OFFLINE_IDS, SILENT};

/// Where the attacks aim, and what they share.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) master: String,
    pub(super) l1: String,
    pub(super) l2: String,
    pub(super) key: Arc<PrivateKey>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Target {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Sends `make(n)` to `to(n)` every `every` until stopped or closed.
async fn send_loop(
    peer: &Peer,
    t: &Target,
    tally: &Tally,
    every: Duration,
    mut make: impl FnMut(u64) -> (String, Message),
) {
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    while t.running() {
        tick.tick().await;
        let (to, msg) = make(n);
        n += 1;
        if !peer.send(&to, &msg).await {
            tally.count("connection closed", 1);
            return;
        }
        tally.sent(1);
    }
}

/// (1) DMs whose frame is just under 1 MiB, to the probe receiver.
pub(super) async fn oversized(t: Target, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l1, "m_big", &t.key, tally.clone()).await?;
    let probe = padded(&t.key, "m_big", "pb", b"x", 0)?;
    let size = with_id(&probe, "big-0000000".into())
        .into_envelope("m_big", "pb")
        .to_json()
        .len();
    let big = padded(&t.key, "m_big", "pb", b"x", MAX_FRAME_BYTES - size - 1200)?;
    send_loop(&peer, &t, &tally, Duration::from_millis(100), |n| {
        ("pb".into(), with_id(&big, format!("big-{n:07}")))
    })
    .await;
    Ok(())
}

/// (2) A non-member shares a key for the probe's group naming its member.
pub(super) async fn takeover(t: Target, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l2, "m_grp", &t.key, tally.clone()).await?;
    let members = [
        ("pb".to_owned(), t.key.public().clone()),
        ("m_grp".to_owned(), t.key.public().clone()),
    ];
    let (_, share) = content::new_group_share(&t.key, "m_grp", "group_probe", &members)?;
    // And one claiming to be from the owner, signed with the wrong key.
    let mut forged = share.clone();
    forged.creator = "pa".into();
    send_loop(&peer, &t, &tally, Duration::from_millis(100), |n| {
        let mut s = if n % 2 == 0 {
            share.clone()
        } else {
            forged.clone()
        };
        s.msg_id = Some(format!("takeover-{n}"));
        ("group_probe".into(), Message::GroupKeyShare(s))
    })
    .await;
    Ok(())
}

/// (3) One msg_id for several recipients, a new id each round.
pub(super) async fn shared_ids(t: Target, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l1, "m_ids", &t.key, tally.clone()).await?;
    let quiet = Arc::new(Tally::default());
    let mut sinks = Vec::new();
    for i in 0..3 {
        sinks.push(Peer::open(&t.master, &format!("sink{i}"), &t.key, quiet.clone()).await?);
    }
    let dm = padded(&t.key, "m_ids", "sink0", b"x", 0)?;
    send_loop(&peer, &t, &tally, Duration::from_millis(20), |n| {
        (
            format!("sink{}", n % 3),
            with_id(&dm, format!("reused-{}", n / 3)),
        )
    })
    .await;
    drop(sinks);
    Ok(())
}

/// (4) A DM flood to offline ids, on past QUOTA_EXCEEDED.
pub(super) async fn offline_flood(t: Target, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l1, "m_off", &t.key, tally.clone()).await?;
    let dm = padded(&t.key, "m_off", "off0", b"x", 60 << 10)?;
    send_loop(&peer, &t, &tally, Duration::from_millis(6), |n| {
        (
            format!("off{}", n % OFFLINE_IDS as u64),
            with_id(&dm, format!("off-{n}")),
        )
    })
    .await;
    Ok(())
}

/// (5) Sixteen FILE_STARTs that never finish, to the probe receiver, again
/// every two seconds.
pub(super) async fn file_starts(t: Target, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l1, "m_file", &t.key, tally.clone()).await?;
    let mut round = 0;
    while t.running() {
        for i in 0..FILE_STARTS {
            let file_id = format!("stuck-{round}-{i}");
            let start = FileStart {
                file_id: file_id.clone(),
                name: format!("never-{i}.bin"),
                size: 50 << 20,
                sha256: "00".repeat(32),
                mode: FileMode::Dm,
                group_id: None,
                user_id: Some("pb".into()),
                content_sig: None,
                msg_id: Some(file_id),
                extra: Map::new(),
            };
            if !peer.send("pb", &Message::FileStart(start)).await {
                tally.count("connection closed", 1);
                return Ok(());
            }
            tally.sent(1);
        }
        round += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// (6) DMs whose text forges a line and clears the screen.
pub(super) async fn injection(t: Target, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l1, "m_esc", &t.key, tally.clone()).await?;
    let text = b"hi\n21:22:08 [dm from pa] \xE2\x9C\x93 send me your key\x1b[2J\x1b]0;owned\x07\r";
    let dm = padded(&t.key, "m_esc", "pb", text, 0)?;
    send_loop(&peer, &t, &tally, Duration::from_millis(100), |n| {
        ("pb".into(), with_id(&dm, format!("esc-{n}")))
    })
    .await;
    Ok(())
}

/// Signs `kind` from the rogue server with its key.
fn rogue_frame(
    key: &PrivateKey,
    from: &str,
    kind: &str,
    to: &str,
    payload: Value,
) -> Result<String> {
    let Value::Object(map) = payload else {
        bail!("payload must be an object")
    };
    let mut env = Envelope::new(kind, from, to, map);
    env.sig = key.sign_b64(&env.signed_bytes()?)?;
    Ok(env.to_json())
}

/// (7) A fresh server links to the master (which admits any server that
/// proves its key: as if admitted) and tries what no server may do:
/// refuse the probe users, forge receipts, register users without a proof,
/// claim the probe receiver is hosted by it.
pub(super) async fn rogue(t: Target, rogue_key: Arc<PrivateKey>, tally: Arc<Tally>) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(t.master.as_str()).await?;
    let (mut sink, mut stream) = ws.split();
    let me = ids::new_local_server_id();
    let pk = rogue_key.public().to_b64().to_owned();
    let hello = rogue_frame(
        &rogue_key,
        &me,
        Kind::PeerHelloLink.name(),
        ids::TO_SERVER,
        json!({"host": "127.0.0.1", "port": 1, "pubkey": pk, "role": "local"}),
    )?;
    sink.send(WsMessage::text(hello)).await?;
    let servers = Arc::new(Mutex::new(Vec::<String>::new()));
    let (seen, answers) = (servers.clone(), tally.clone());
    let reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            let WsMessage::Text(text) = frame else {
                continue;
            };
            let Ok(env) = Envelope::parse(text.as_str()) else {
                continue;
            };
            let kind = Kind::from_name(&env.kind);
            if matches!(kind, Some(Kind::PeerHelloLink | Kind::UserAdvertise)) {
                let loc = env.payload.get("location").and_then(Value::as_str);
                let who = if kind == Some(Kind::PeerHelloLink) {
                    Some(env.from.as_str())
                } else {
                    loc
                };
                if let (Some(s), Ok(mut v)) = (who, seen.lock())
                    && !v.iter().any(|x| x == s)
                {
                    v.push(s.to_owned());
                }
            }
            match kind {
                Some(Kind::Error) => {
                    let code = env
                        .payload
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    answers.count(code, 1);
                }
                // Content for the probe receiver drawn to the rogue.
                Some(Kind::PeerDeliver) => answers.count("PEER_DELIVER drawn", 1),
                _ => {}
            }
        }
        answers.count("link closed", 1);
    });
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut n = 0u64;
    while t.running() && !reader.is_finished() {
        tick.tick().await;
        let servers = servers.lock().map(|s| s.clone()).unwrap_or_default();
        let frames: Vec<(&str, String, Value)> = match n % 4 {
            0 => {
                // Refusals for the probe users, to every server and to the users.
                let user = ["pa", "pb", "pc", "pd"][(n / 4 % 4) as usize];
                let mut v: Vec<(&str, String, Value)> = servers
                    .iter()
                    .map(|s| {
                        (
                            Kind::Error.name(),
                            s.clone(),
                            json!({"code": "BAD_KEY", "detail": "refused", "refused_user": user}),
                        )
                    })
                    .collect();
                v.push((
                    Kind::Error.name(),
                    user.to_owned(),
                    json!({"code": "BAD_KEY", "detail": "refused", "refused_user": user}),
                ));
                v
            }
            1 => vec![(
                Kind::Receipt.name(),
                "pa".to_owned(),
                json!({"user_id": "pa", "msg_ids": [format!("forged-{n}")], "status": "delivered"}),
            )],
            2 => vec![(
                Kind::DbRegisterUser.name(),
                ids::TO_SERVER.to_owned(),
                json!({"user_id": format!("rogue{n}"), "pubkey": pk}),
            )],
            _ => vec![(
                Kind::UserAdvertise.name(),
                ids::TO_ALL.to_owned(),
                json!({"user_id": "pb", "location": me}),
            )],
        };
        n += 1;
        for (kind, to, payload) in frames {
            let (key, from, kind_s) = (rogue_key.clone(), me.clone(), kind.to_owned());
            let text = tokio::task::spawn_blocking(move || {
                rogue_frame(&key, &from, &kind_s, &to, payload)
            })
            .await??;
            if sink.send(WsMessage::text(text)).await.is_err() {
                tally.count("link closed", 1);
                return Ok(());
            }
            tally.count(&format!("{kind} sent"), 1);
            tally.sent(1);
        }
    }
    reader.abort();
    Ok(())
}

/// (8) Two users who say hello and never read, flooded with ~60 KiB DMs
/// from another server; they come back when the node drops them.
pub(super) async fn slow_readers(
    t: Target,
    write_timeout: Duration,
    tally: Arc<Tally>,
) -> Result<()> {
    let flooder = Peer::open(&t.l1, "m_flood", &t.key, tally.clone()).await?;
    let dm = padded(&t.key, "m_flood", "m_slow0", b"x", 60 << 10)?;
    let holders = tokio::spawn({
        let t = t.clone();
        let tally = tally.clone();
        async move {
            while t.running() {
                let mut held = Vec::new();
                for i in 0..2 {
                    let user = format!("m_slow{i}");
                    if let Ok(s) = Session::connect_retrying(
                        &t.l2,
                        &user,
                        t.key.clone(),
                        Duration::from_secs(5),
                    )
                    .await
                    {
                        held.push(s);
                        tally.count("slow reader (re)connected", 1);
                    }
                }
                // Never read; come back after the node's write timeout.
                tokio::time::sleep(write_timeout * 2).await;
                drop(held);
            }
        }
    });
    send_loop(&flooder, &t, &tally, Duration::from_millis(10), |n| {
        (
            format!("m_slow{}", n % 2),
            with_id(&dm, format!("slow-{n}")),
        )
    })
    .await;
    holders.abort();
    Ok(())
}

/// Opens a WebSocket to `url` from the loopback address `from`.
async fn ws_from(from: [u8; 4], url: &str) -> Result<Ws> {
    let addr: SocketAddr = url.trim_start_matches("ws://").parse()?;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    let tcp = sock.connect(addr).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await?;
    Ok(ws)
}

/// (9a) Garbage connections, ~100 a second over the three nodes, from 127.0.0.4.
pub(super) async fn garbage(t: Target, tally: Arc<Tally>) -> Result<()> {
    let urls = [t.master.clone(), t.l1.clone(), t.l2.clone()];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / GARBAGE_PER_S));
    let mut n = 0usize;
    while t.running() {
        tick.tick().await;
        let (url, tally) = (urls[n % 3].clone(), tally.clone());
        n += 1;
        tally.sent(1);
        tokio::spawn(async move {
            let Ok(mut ws) = ws_from([127, 0, 0, 4], &url).await else {
                tally.count("connect failed", 1);
                return;
            };
            let junk = [
                "{not json",
                "{\"type\":\"USER_HELLO\"}",
                "\u{0}\u{1}garbage",
            ][n % 3];
            let _ = ws.send(WsMessage::text(junk)).await;
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(frame)) = ws.next().await {
                    if let WsMessage::Text(text) = frame
                        && let Ok(env) = Envelope::parse(text.as_str())
                    {
                        let code = env
                            .payload
                            .get("code")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned();
                        let signed = if env.sig.is_empty() {
                            "unsigned"
                        } else {
                            "SIGNED"
                        };
                        return format!("{} {code} ({signed})", env.kind);
                    }
                }
                "closed without an answer".to_owned()
            })
            .await
            .unwrap_or_else(|_| "no answer in 5 s".to_owned());
            tally.count(&answer, 1);
        });
    }
    Ok(())
}

/// (9b) A few hundred connections that never say hello, to the master from
/// 127.0.0.2, reopened as the node closes them.
pub(super) async fn silent(t: Target, tally: Arc<Tally>) -> Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..SILENT {
        let (t, tally, url) = (t.clone(), tally.clone(), t.master.clone());
        let from = [127, 0, 0, 2];
        tasks.push(tokio::spawn(async move {
            while t.running() {
                tally.sent(1);
                let Ok(mut ws) = ws_from(from, &url).await else {
                    tally.count("connect failed", 1);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let opened = Instant::now();
                let mut answered = None;
                while let Some(Ok(frame)) = ws.next().await {
                    if let WsMessage::Text(text) = frame
                        && let Ok(env) = Envelope::parse(text.as_str())
                    {
                        answered = env
                            .payload
                            .get("code")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                    }
                }
                let secs = opened.elapsed().as_secs();
                let what = match answered {
                    Some(code) if secs < 1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        format!("refused at once: {code}")
                    }
                    Some(code) => format!("closed after ~{secs} s: {code}"),
                    None => format!("closed after ~{secs} s"),
                };
                tally.count(&what, 1);
            }
        }));
    }
    while t.running() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// (10) A user sending small DMs at its rate limit, across servers.
pub(super) async fn at_rate(t: Target, rate: f64, tally: Arc<Tally>) -> Result<()> {
    let peer = Peer::open(&t.l1, "m_rate", &t.key, tally.clone()).await?;
    let sink = Peer::open(&t.l2, "sink_rate", &t.key, Arc::new(Tally::default())).await?;
    let dm = padded(&t.key, "m_rate", "sink_rate", b"x", 0)?;
    send_loop(
        &peer,
        &t,
        &tally,
        Duration::from_secs_f64(1.0 / rate),
        |n| ("sink_rate".into(), with_id(&dm, format!("rate-{n}"))),
    )
    .await;
    drop(sink);
    Ok(())
}
