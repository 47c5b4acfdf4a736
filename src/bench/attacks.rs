//! `socp bench --attacks`: the "done when" measurement of issue 11. Starts a
//! master and two locals as `socp node` processes with small configured
//! bounds, runs a probe (a DM every 50 ms across servers and on one server,
//! group messages), first alone and then with every attack of issue 11
//! running at once, each from its own task, and reports the probe's latency
//! and delivery, each node's peak RSS against a memory budget, and what the
//! nodes answered each attack.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{NodeProc, percentile, raise_fd_limit};
use crate::client::Session;
use crate::content;
use crate::crypto::PrivateKey;
use crate::wire::messages::{Ack, FileMode, FileStart, Message, MsgPrivate};
use crate::wire::{Envelope, MAX_FRAME_BYTES, ids};

/// The probe sends a DM every this often, on each of its two pairs.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// And a group message every this often.
const GROUP_EVERY: Duration = Duration::from_millis(250);
/// After each phase, time for the last probe DMs to arrive.
const DRAIN: Duration = Duration::from_secs(2);
/// The p90 latency issue 11 asks for under attack.
const TARGET_P90_MS: f64 = 200.0;
/// Offline ids the mailbox flood writes to.
const OFFLINE_IDS: usize = 24;
/// Silent connections (never say hello) to the master from one address,
/// more than `--max-conns-per-ip` allows.
const SILENT: usize = 300;
/// Garbage connections per second.
const GARBAGE_PER_S: u64 = 100;
/// Partial transfers opened at the probe receiver per round.
const FILE_STARTS: usize = 16;

/// The bounds every node of the attack mesh runs with (`socp node` flags).
const NODE_BOUNDS: &[(&str, &str)] = &[
    ("--mailbox-max-bytes", "4194304"),
    ("--mailbox-max-frames", "2000"),
    ("--custody-max-bytes", "67108864"),
    ("--write-timeout-secs", "3"),
    ("--hello-timeout-secs", "3"),
    ("--max-conns", "1024"),
    ("--max-conns-per-ip", "200"),
    ("--user-rate", "200"),
    ("--user-burst", "400"),
    ("--max-file-size", "104857600"),
    // Every bench user registers from 127.0.0.1; the per-server bound stays.
    ("--registrations-per-address", "0"),
];

/// Settings of the attack benchmark.
#[derive(Debug, Clone)]
pub struct AttackConfig {
    /// Seconds of each phase (baseline, then under attack).
    pub seconds: u64,
    /// The memory budget each node's peak RSS is held against, in MiB.
    pub rss_bound_mib: u64,
    pub out: Option<PathBuf>,
}

/// What the nodes answered one attacker (or one attacker's victims saw).
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answers: Mutex<BTreeMap<String, u64>>,
    /// The first `detail` of each error code.
    details: Mutex<BTreeMap<String, String>>,
    /// Ids acknowledged, and ids refused by an ERROR naming them.
    acked: Mutex<std::collections::HashSet<String>>,
    refused: Mutex<std::collections::HashSet<String>>,
}

impl Tally {
    fn count(&self, what: &str, n: u64) {
        if let Ok(mut a) = self.answers.lock() {
            *a.entry(what.to_owned()).or_default() += n;
        }
    }

    fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Value {
        let mut answers = self.answers.lock().map(|a| a.clone()).unwrap_or_default();
        let details = self.details.lock().map(|a| a.clone()).unwrap_or_default();
        let both = match (self.acked.lock(), self.refused.lock()) {
            (Ok(a), Ok(r)) => r.iter().filter(|id| a.contains(*id)).count() as u64,
            _ => 0,
        };
        if both > 0 {
            answers.insert("both ACK and ERROR for one msg_id".into(), both);
        }
        json!({"sent": self.sent.load(Ordering::Relaxed), "answers": answers, "error_details": details})
    }
}

/// A hook a connection's reader calls for each frame before tallying it.
type Hook = Box<dyn FnMut(&Envelope, &Message) + Send>;

/// An authenticated user connection whose reader runs beside its writer:
/// the reader acknowledges content and tallies ACKs and ERRORs by code.
struct Peer {
    user: String,
    out: mpsc::Sender<Envelope>,
    closed: Arc<AtomicBool>,
}

impl Peer {
    async fn open(url: &str, user: &str, key: &Arc<PrivateKey>, tally: Arc<Tally>) -> Result<Peer> {
        Self::open_with(url, user, key, tally, Box::new(|_, _| {})).await
    }

    async fn open_with(
        url: &str,
        user: &str,
        key: &Arc<PrivateKey>,
        tally: Arc<Tally>,
        mut hook: Hook,
    ) -> Result<Peer> {
        let session = Session::connect_retrying(url, user, key.clone(), Duration::from_secs(30))
            .await
            .with_context(|| format!("{user} connecting to {url}"))?;
        let (ws, mac, _) = session.into_parts();
        let (mut seal, mut open) = match mac {
            Some(m) => {
                let (s, o) = m.split();
                (Some(s), Some(o))
            }
            None => (None, None),
        };
        let key = key.clone();
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::channel::<Envelope>(1024);
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(mut env) = rx.recv().await {
                let text = match seal.as_mut() {
                    Some(s) => match s.seal_to_json(&mut env) {
                        Ok(t) => t,
                        Err(_) => return,
                    },
                    None => {
                        let Ok(bytes) = env.signed_bytes() else {
                            return;
                        };
                        let Ok(sig) = key.sign_b64(&bytes) else {
                            return;
                        };
                        env.sig = sig;
                        env.to_json()
                    }
                };
                if sink.send(WsMessage::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let acks = out.clone();
        let (me, gone) = (user.to_owned(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let WsMessage::Text(text) = frame else {
                    continue;
                };
                let Ok(env) = Envelope::parse(text.as_str()) else {
                    continue;
                };
                if let Some(o) = open.as_mut()
                    && o.open(&env).is_err()
                {
                    tally.count("bad MAC from node", 1);
                    break;
                }
                let Ok(msg) = Message::from_envelope(&env) else {
                    continue;
                };
                hook(&env, &msg);
                match &msg {
                    Message::Ack(a) => {
                        tally.count("ACK", a.msg_ids.len() as u64);
                        if let Ok(mut acked) = tally.acked.lock() {
                            acked.extend(a.msg_ids.iter().cloned());
                        }
                    }
                    Message::Error(e) => {
                        tally.count(&e.code, 1);
                        if let Ok(mut d) = tally.details.lock() {
                            d.entry(e.code.clone()).or_insert_with(|| e.detail.clone());
                        }
                        if let (Some(id), Ok(mut r)) = (
                            e.extra.get("msg_id").and_then(Value::as_str),
                            tally.refused.lock(),
                        ) {
                            r.insert(id.to_owned());
                        }
                    }
                    Message::Receipt(_) | Message::UserList(_) | Message::Heartbeat(_) => {}
                    _ => {
                        if let Some(id) = env.payload.get("msg_id").and_then(Value::as_str) {
                            let ack = Message::Ack(Ack {
                                msg_ids: vec![id.to_owned()],
                                extra: Map::new(),
                            });
                            let _ = acks.try_send(ack.into_envelope(&me, ids::TO_SERVER));
                        }
                    }
                }
            }
            gone.store(true, Ordering::Relaxed);
        });
        Ok(Peer {
            user: user.to_owned(),
            out,
            closed,
        })
    }

    /// Queues `msg` to `to`; false once the connection is gone.
    async fn send(&self, to: &str, msg: &Message) -> bool {
        self.out
            .send(msg.into_envelope(&self.user, to))
            .await
            .is_ok()
            && !self.closed.load(Ordering::Relaxed)
    }
}

/// `dm` again under another msg_id (nodes never open content).
fn with_id(dm: &MsgPrivate, id: String) -> Message {
    let mut dm = dm.clone();
    dm.msg_id = Some(id);
    Message::MsgPrivate(dm)
}

/// A DM from `from` to `to` whose ciphertext is `pad` bytes of padding.
fn padded(key: &PrivateKey, from: &str, to: &str, plain: &[u8], pad: usize) -> Result<MsgPrivate> {
    let mut dm = content::seal_dm(key, from, to, key.public(), plain, crate::wire::now_ms())?;
    if pad > 0 {
        dm.ciphertext = "A".repeat(pad);
    }
    Ok(dm)
}

/// Latency and delivery of the probe, per phase.
#[derive(Default)]
struct Probe {
    /// msg_id -> (phase, sent at).
    pending: Mutex<HashMap<String, (usize, Instant)>>,
    /// Per phase, per path ("cross", "same", "group"): latencies in µs and sent.
    lat: Mutex<BTreeMap<(usize, &'static str), Vec<u64>>>,
    sent: Mutex<BTreeMap<(usize, &'static str), u64>>,
    phase: AtomicUsize,
    /// RECEIPTs the probe senders got for ids they never sent.
    forged_receipts: AtomicU64,
    /// GROUP_KEY_SHAREs the probe receiver got from anyone but the owner.
    foreign_shares: AtomicU64,
    /// FILE_STARTs that reached the probe receiver.
    file_starts: AtomicU64,
    /// Probe connections the nodes closed.
    disconnects: AtomicU64,
}

impl Probe {
    fn sending(&self, path: &'static str, id: &str) {
        let phase = self.phase.load(Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.to_owned(), (phase, Instant::now()));
        }
        if let Ok(mut s) = self.sent.lock() {
            *s.entry((phase, path)).or_default() += 1;
        }
    }

    fn arrived(&self, path: &'static str, id: &str) {
        let Some((phase, at)) = self.pending.lock().ok().and_then(|mut p| p.remove(id)) else {
            return;
        };
        if let Ok(mut l) = self.lat.lock() {
            l.entry((phase, path))
                .or_default()
                .push(at.elapsed().as_micros() as u64);
        }
    }

    fn figures(&self, phase: usize, path: &'static str) -> Value {
        let mut lat = self
            .lat
            .lock()
            .ok()
            .and_then(|l| l.get(&(phase, path)).cloned())
            .unwrap_or_default();
        lat.sort_unstable();
        let sent = self
            .sent
            .lock()
            .ok()
            .and_then(|s| s.get(&(phase, path)).copied())
            .unwrap_or(0);
        json!({
            "sent": sent,
            "delivered": lat.len(),
            "p50_ms": percentile(&lat, 0.50),
            "p90_ms": percentile(&lat, 0.90),
            "p99_ms": percentile(&lat, 0.99),
            "max_ms": lat.last().map_or(0.0, |v| *v as f64 / 1000.0),
        })
    }
}

/// The three nodes.
struct Mesh {
    master: NodeProc,
    l1: NodeProc,
    l2: NodeProc,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn start() -> Result<Mesh> {
        let dir = tempfile::tempdir()?;
        let bounds: Vec<String> = NODE_BOUNDS
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect();
        let master = NodeProc::spawn(&dir.path().join("m"), "master", None, &bounds)?;
        let l1 = NodeProc::spawn(&dir.path().join("l1"), "local", Some(&master.url), &bounds)?;
        let l2 = NodeProc::spawn(&dir.path().join("l2"), "local", Some(&master.url), &bounds)?;
        Ok(Mesh {
            master,
            l1,
            l2,
            _dir: dir,
        })
    }

    fn nodes(&self) -> [(&'static str, &NodeProc); 3] {
        [
            ("master", &self.master),
            ("local1", &self.l1),
            ("local2", &self.l2),
        ]
    }
}

/// Keys: one for the probe users, one for the attackers, one for the rogue server.
struct Keys {
    probe: Arc<PrivateKey>,
    attacker: Arc<PrivateKey>,
    rogue: Arc<PrivateKey>,
}

fn keys() -> Result<Keys> {
    let made: Vec<Result<PrivateKey>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(PrivateKey::generate)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("key generation panicked"))?
                    .map_err(Into::into)
            })
            .collect()
    });
    let mut made = made.into_iter();
    let mut next = || -> Result<Arc<PrivateKey>> { Ok(Arc::new(made.next().context("a key")??)) };
    Ok(Keys {
        probe: next()?,
        attacker: next()?,
        rogue: next()?,
    })
}

/// Runs the probe until `stop`: pa (local1) -> pb (local2), pc -> pd (both
/// local1), and pa's group messages to pb.
async fn probe(
    mesh: &Mesh,
    key: &Arc<PrivateKey>,
    p: Arc<Probe>,
    answers: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let quiet = Arc::new(Tally::default());
    let receiver_hook = |path: &'static str, p: Arc<Probe>| -> Hook {
        Box::new(move |_, msg| match msg {
            Message::UserDeliver(d) => {
                if let Some(id) = &d.msg_id {
                    p.arrived(path, id);
                }
            }
            Message::MsgGroup(g) => {
                if let Some(id) = &g.msg_id {
                    p.arrived("group", id);
                }
            }
            Message::GroupKeyShare(s) if s.creator != "pa" => {
                p.foreign_shares.fetch_add(1, Ordering::Relaxed);
            }
            Message::FileStart(_) => {
                p.file_starts.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        })
    };
    let sender_hook = |p: Arc<Probe>| -> Hook {
        Box::new(move |_, msg| {
            if let Message::Receipt(r) = msg
                && r.msg_ids.iter().any(|i| i.starts_with("forged-"))
            {
                p.forged_receipts.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let pb = Peer::open_with(
        &mesh.l2.url,
        "pb",
        key,
        quiet.clone(),
        receiver_hook("cross", p.clone()),
    )
    .await?;
    let pd = Peer::open_with(
        &mesh.l1.url,
        "pd",
        key,
        quiet.clone(),
        receiver_hook("same", p.clone()),
    )
    .await?;
    let pa = Peer::open_with(
        &mesh.l1.url,
        "pa",
        key,
        answers.clone(),
        sender_hook(p.clone()),
    )
    .await?;
    let pc = Peer::open_with(
        &mesh.l1.url,
        "pc",
        key,
        answers.clone(),
        sender_hook(p.clone()),
    )
    .await?;
    // pa owns a group with pb.
    let (group_key, mut share) = content::new_group_share(
        key,
        "pa",
        "group_probe",
        &[("pb".to_owned(), key.public().clone())],
    )?;
    share.msg_id = Some("probe-share".into());
    tokio::time::sleep(Duration::from_millis(500)).await;
    pa.send("group_probe", &Message::GroupKeyShare(share)).await;
    let group_msg = content::seal_group(
        key,
        "pa",
        "group_probe",
        &group_key,
        b"probe",
        crate::wire::now_ms(),
    )?;
    let to_pb = padded(key, "pa", "pb", b"probe", 0)?;
    let to_pd = padded(key, "pc", "pd", b"probe", 0)?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (p, stop) = (p.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            let mut n = 0u64;
            let mut group_at = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if [&pa, &pb, &pc, &pd]
                    .iter()
                    .any(|c| c.closed.load(Ordering::Relaxed))
                {
                    p.disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                n += 1;
                let (a, c) = (format!("cross-{n}"), format!("same-{n}"));
                p.sending("cross", &a);
                pa.send("pb", &with_id(&to_pb, a)).await;
                p.sending("same", &c);
                pc.send("pd", &with_id(&to_pd, c)).await;
                if group_at.elapsed() >= GROUP_EVERY {
                    group_at = Instant::now();
                    let mut g = group_msg.clone();
                    let id = format!("group-{n}");
                    p.sending("group", &id);
                    g.msg_id = Some(id);
                    pa.send("group_probe", &Message::MsgGroup(g)).await;
                }
            }
        }
    }));
    Ok(tasks)
}

/// Where the attacks aim, and what they share.
#[derive(Clone)]
struct Target {
    master: String,
    l1: String,
    l2: String,
    key: Arc<PrivateKey>,
    stop: Arc<AtomicBool>,
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
async fn oversized(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn takeover(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn shared_ids(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn offline_flood(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn file_starts(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn injection(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn rogue(t: Target, rogue_key: Arc<PrivateKey>, tally: Arc<Tally>) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(t.master.as_str()).await?;
    let (mut sink, mut stream) = ws.split();
    let me = ids::new_local_server_id();
    let pk = rogue_key.public().to_b64().to_owned();
    let hello = rogue_frame(
        &rogue_key,
        &me,
        "PEER_HELLO_LINK",
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
            let kind = env.kind.clone();
            if kind == "PEER_HELLO_LINK" || kind == "USER_ADVERTISE" {
                let loc = env.payload.get("location").and_then(Value::as_str);
                let who = if kind == "PEER_HELLO_LINK" {
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
            match kind.as_str() {
                "ERROR" => {
                    let code = env
                        .payload
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    answers.count(code, 1);
                }
                // Content for the probe receiver drawn to the rogue.
                "PEER_DELIVER" => answers.count("PEER_DELIVER drawn", 1),
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
                            "ERROR",
                            s.clone(),
                            json!({"code": "BAD_KEY", "detail": "refused", "refused_user": user}),
                        )
                    })
                    .collect();
                v.push((
                    "ERROR",
                    user.to_owned(),
                    json!({"code": "BAD_KEY", "detail": "refused", "refused_user": user}),
                ));
                v
            }
            1 => vec![(
                "RECEIPT",
                "pa".to_owned(),
                json!({"user_id": "pa", "msg_ids": [format!("forged-{n}")], "status": "delivered"}),
            )],
            2 => vec![(
                "DB_REGISTER_USER",
                ids::TO_SERVER.to_owned(),
                json!({"user_id": format!("rogue{n}"), "pubkey": pk}),
            )],
            _ => vec![(
                "USER_ADVERTISE",
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
async fn slow_readers(t: Target, write_timeout: Duration, tally: Arc<Tally>) -> Result<()> {
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
async fn ws_from(from: [u8; 4], url: &str) -> Result<crate::client::session::Ws> {
    let addr: SocketAddr = url.trim_start_matches("ws://").parse()?;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    let tcp = sock.connect(addr).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await?;
    Ok(ws)
}

/// (9a) Garbage connections, ~100 a second over the three nodes, from 127.0.0.4.
async fn garbage(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn silent(t: Target, tally: Arc<Tally>) -> Result<()> {
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
async fn at_rate(t: Target, rate: f64, tally: Arc<Tally>) -> Result<()> {
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

/// The attacks, by the name the table shows, each with its tally.
const ATTACKS: [&str; 11] = [
    "oversized",
    "takeover",
    "shared_msg_id",
    "offline_flood",
    "file_starts",
    "injection",
    "rogue_server",
    "slow_readers",
    "garbage",
    "silent",
    "at_rate_limit",
];

fn bound(flag: &str) -> String {
    NODE_BOUNDS
        .iter()
        .find(|(k, _)| *k == flag)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// Samples each node's RSS until `stop`, keeping the peak per phase.
fn sample_rss(
    mesh: &Mesh,
    phase: Arc<Probe>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<(usize, &'static str), f64>> {
    let pids: Vec<(&'static str, u32)> = mesh.nodes().iter().map(|(n, p)| (*n, p.pid())).collect();
    tokio::spawn(async move {
        let mut peak: BTreeMap<(usize, &'static str), f64> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let ph = phase.phase.load(Ordering::Relaxed);
            for (name, pid) in &pids {
                let kib = super::status_kib_of(*pid, "VmRSS:");
                let e = peak.entry((ph, *name)).or_default();
                *e = e.max(kib);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    })
}

/// CPU time so far of each node and of this process (the probe and the
/// attackers), in ms, and when.
fn cpu_now(mesh: &Mesh) -> (Vec<(&'static str, f64)>, Instant) {
    let mut v: Vec<(&'static str, f64)> =
        mesh.nodes().iter().map(|(n, p)| (*n, p.cpu_ms())).collect();
    v.push(("bench process", super::cpu_ms_of("self")));
    (v, Instant::now())
}

/// Percent of one core each used between two readings.
fn cpu_percent(
    a: &(Vec<(&'static str, f64)>, Instant),
    b: &(Vec<(&'static str, f64)>, Instant),
) -> Value {
    let secs = b.1.duration_since(a.1).as_secs_f64().max(0.001);
    let m: Map<String, Value> =
        a.0.iter()
            .zip(&b.0)
            .map(|((name, x), (_, y))| (name.to_string(), json!(((y - x) / 10.0 / secs).round())))
            .collect();
    Value::Object(m)
}

/// Runs the attack benchmark and prints (and optionally writes) the figures.
pub async fn run_attacks(cfg: AttackConfig) -> Result<Value> {
    if cfg.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    raise_fd_limit();
    let started = Instant::now();
    let say = |what: &str| eprintln!("{:>5.1} s  {what}", started.elapsed().as_secs_f64());
    say("socp bench --attacks: generating keys and starting a master and two locals…");
    let keys = tokio::task::spawn_blocking(keys).await??;
    let mesh = Mesh::start()?;
    // The offline ids (and the slow readers) exist, and are offline.
    let quiet = Arc::new(Tally::default());
    let users = (0..OFFLINE_IDS)
        .map(|i| format!("off{i}"))
        .chain(["m_slow0".to_owned(), "m_slow1".to_owned()]);
    for user in users {
        let s = Session::connect_retrying(
            &mesh.l2.url,
            &user,
            keys.attacker.clone(),
            Duration::from_secs(30),
        )
        .await
        .context("registering the offline ids")?;
        s.close().await;
    }
    let p = Arc::new(Probe::default());
    let (probe_stop, sampler_stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let sampler = sample_rss(&mesh, p.clone(), sampler_stop.clone());
    let probe_answers = Arc::new(Tally::default());
    let probe_tasks = probe(
        &mesh,
        &keys.probe,
        p.clone(),
        probe_answers.clone(),
        probe_stop.clone(),
    )
    .await?;
    drop(quiet);
    tokio::time::sleep(Duration::from_secs(1)).await;
    say(&format!("baseline: the probe alone for {} s…", cfg.seconds));
    p.phase.store(1, Ordering::Relaxed);
    let cpu0 = cpu_now(&mesh);
    tokio::time::sleep(Duration::from_secs(cfg.seconds)).await;
    let cpu1 = cpu_now(&mesh);

    say("starting the attacks…");
    p.phase.store(2, Ordering::Relaxed);
    let t = Target {
        master: mesh.master.url.clone(),
        l1: mesh.l1.url.clone(),
        l2: mesh.l2.url.clone(),
        key: keys.attacker.clone(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let tallies: BTreeMap<&str, Arc<Tally>> = ATTACKS
        .iter()
        .map(|a| (*a, Arc::new(Tally::default())))
        .collect();
    let tally = |name: &str| tallies[name].clone();
    let write_timeout = Duration::from_secs(bound("--write-timeout-secs").parse().unwrap_or(3));
    let rate: f64 = bound("--user-rate").parse().unwrap_or(200.0);
    let attacks: Vec<(&str, tokio::task::JoinHandle<Result<()>>)> = vec![
        (
            "oversized",
            tokio::spawn(oversized(t.clone(), tally("oversized"))),
        ),
        (
            "takeover",
            tokio::spawn(takeover(t.clone(), tally("takeover"))),
        ),
        (
            "shared_msg_id",
            tokio::spawn(shared_ids(t.clone(), tally("shared_msg_id"))),
        ),
        (
            "offline_flood",
            tokio::spawn(offline_flood(t.clone(), tally("offline_flood"))),
        ),
        (
            "file_starts",
            tokio::spawn(file_starts(t.clone(), tally("file_starts"))),
        ),
        (
            "injection",
            tokio::spawn(injection(t.clone(), tally("injection"))),
        ),
        (
            "rogue_server",
            tokio::spawn(rogue(t.clone(), keys.rogue.clone(), tally("rogue_server"))),
        ),
        (
            "slow_readers",
            tokio::spawn(slow_readers(
                t.clone(),
                write_timeout,
                tally("slow_readers"),
            )),
        ),
        (
            "garbage",
            tokio::spawn(garbage(t.clone(), tally("garbage"))),
        ),
        ("silent", tokio::spawn(silent(t.clone(), tally("silent")))),
        (
            "at_rate_limit",
            tokio::spawn(at_rate(t.clone(), rate, tally("at_rate_limit"))),
        ),
    ];
    // The attackers connect (RSA hellos) before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    say(&format!(
        "under attack: the probe and eleven attacks for {} s…",
        cfg.seconds
    ));
    p.phase.store(3, Ordering::Relaxed);
    let cpu2 = cpu_now(&mesh);
    tokio::time::sleep(Duration::from_secs(cfg.seconds)).await;
    let cpu3 = cpu_now(&mesh);
    p.phase.store(4, Ordering::Relaxed);
    t.stop.store(true, Ordering::Relaxed);
    let mut failed = BTreeMap::new();
    for (name, task) in attacks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                failed.insert(name, format!("{e:#}"));
            }
            Ok(Err(e)) => {
                failed.insert(name, format!("panicked: {e}"));
            }
            Err(_) => {
                failed.insert(name, "did not stop within 10 s".to_owned());
            }
        }
    }
    say("draining…");
    tokio::time::sleep(DRAIN).await;
    probe_stop.store(true, Ordering::Relaxed);
    sampler_stop.store(true, Ordering::Relaxed);
    for task in probe_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let peak = sampler.await.unwrap_or_default();
    let bound_kib = cfg.rss_bound_mib as f64 * 1024.0;
    let mut rss = Map::new();
    for (name, node) in mesh.nodes() {
        let phase_peak = |ph: usize| peak.get(&(ph, name)).copied().unwrap_or(0.0);
        let attack_peak = (2..=4).map(phase_peak).fold(0.0, f64::max);
        rss.insert(
            name.to_owned(),
            json!({
                "baseline_peak_kib": phase_peak(1),
                "attack_peak_kib": attack_peak,
                "hwm_kib": node.status_kib("VmHWM:"),
                "end_kib": node.status_kib("VmRSS:"),
                "within_bound": node.status_kib("VmHWM:") <= bound_kib,
            }),
        );
    }
    say("done");
    let phase = |ph: usize| {
        json!({
            "cross_server": p.figures(ph, "cross"),
            "same_server": p.figures(ph, "same"),
            "group": p.figures(ph, "group"),
        })
    };
    let attacks: Map<String, Value> = tallies
        .iter()
        .map(|(k, v)| (k.to_string(), v.snapshot()))
        .collect();
    let bounds: Map<String, Value> = NODE_BOUNDS
        .iter()
        .map(|(k, v)| (k.trim_start_matches("--").to_owned(), json!(v)))
        .collect();
    let figures = json!({
        "seconds_per_phase": cfg.seconds,
        "probe_every_ms": PROBE_EVERY.as_millis() as u64,
        "target_p90_ms": TARGET_P90_MS,
        "baseline": phase(1),
        "under_attack": phase(3),
        "rss_bound_kib": bound_kib,
        "rss": rss,
        "cpu_percent": {
            "baseline": cpu_percent(&cpu0, &cpu1),
            "under_attack": cpu_percent(&cpu2, &cpu3),
        },
        "node_bounds": bounds,
        "attacks": attacks,
        "attacks_failed": failed,
        "victims": {
            "forged_receipts_reaching_probe_sender": p.forged_receipts.load(Ordering::Relaxed),
            "foreign_group_shares_reaching_member": p.foreign_shares.load(Ordering::Relaxed),
            "file_starts_reaching_probe_receiver": p.file_starts.load(Ordering::Relaxed),
            "probe_disconnects": p.disconnects.load(Ordering::Relaxed),
            "probe_senders_answers": probe_answers.snapshot()["answers"],
        },
    });
    print_table(&figures);
    if let Some(path) = &cfg.out {
        std::fs::write(path, serde_json::to_string_pretty(&figures)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(figures)
}

fn print_table(f: &Value) {
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "socp bench --attacks ({} s per phase, probe DM every {} ms; node bounds: {})",
        f["seconds_per_phase"],
        f["probe_every_ms"],
        f["node_bounds"]
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    println!(
        "{:<22} {:>16} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "probe", "delivered/sent", "p50 ms", "p90 ms", "p99 ms", "max ms", "p90 x"
    );
    for (label, key) in [
        ("cross-server DM", "cross_server"),
        ("same-server DM", "same_server"),
        ("group message", "group"),
    ] {
        let base_p90 = n(&f["baseline"][key]["p90_ms"]);
        for (phase, which) in [("baseline", "baseline"), ("under attack", "under_attack")] {
            let r = &f[which][key];
            let ratio = if which == "baseline" {
                String::new()
            } else {
                format!("{:.1}x", n(&r["p90_ms"]) / base_p90.max(0.001))
            };
            println!(
                "{:<22} {:>16} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                format!("{label}, {phase}"),
                format!("{}/{}", r["delivered"], r["sent"]),
                n(&r["p50_ms"]),
                n(&r["p90_ms"]),
                n(&r["p99_ms"]),
                n(&r["max_ms"]),
                ratio
            );
        }
    }
    let target = n(&f["target_p90_ms"]);
    let p90 = n(&f["under_attack"]["cross_server"]["p90_ms"])
        .max(n(&f["under_attack"]["same_server"]["p90_ms"]));
    println!(
        "probe p90 under attack {p90:.2} ms: {} the {target:.0} ms target",
        if p90 < target { "under" } else { "OVER" }
    );
    let bound = n(&f["rss_bound_kib"]);
    println!(
        "{:<10} {:>14} {:>14} {:>14}   bound {:.0} KiB",
        "node RSS", "baseline peak", "attack peak", "VmHWM", bound
    );
    if let Some(rss) = f["rss"].as_object() {
        for (node, r) in rss {
            println!(
                "{node:<10} {:>14.0} {:>14.0} {:>14.0}   {}",
                n(&r["baseline_peak_kib"]),
                n(&r["attack_peak_kib"]),
                n(&r["hwm_kib"]),
                if r["within_bound"].as_bool() == Some(true) {
                    "within"
                } else {
                    "OVER"
                }
            );
        }
    }
    for phase in ["baseline", "under_attack"] {
        if let Some(c) = f["cpu_percent"][phase].as_object() {
            let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}%")).collect();
            println!("CPU, {}: {}", phase.replace('_', " "), parts.join(", "));
        }
    }
    println!("attack          what the nodes answered");
    if let Some(attacks) = f["attacks"].as_object() {
        for (name, a) in attacks {
            let answers = a["answers"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!(
                "{name:<15} {} sent: {}",
                a["sent"],
                if answers.is_empty() {
                    "no answer".to_owned()
                } else {
                    answers
                }
            );
        }
    }
    let v = &f["victims"];
    println!(
        "victims: {} forged receipts reached the probe sender, {} foreign group shares reached the member, {} FILE_STARTs reached the probe receiver, {} probe disconnects",
        v["forged_receipts_reaching_probe_sender"],
        v["foreign_group_shares_reaching_member"],
        v["file_starts_reaching_probe_receiver"],
        v["probe_disconnects"]
    );
    if let Some(a) = v["probe_senders_answers"].as_object() {
        let parts: Vec<String> = a.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("the nodes answered the probe senders: {}", parts.join(", "));
    }
    if let Some(failed) = f["attacks_failed"].as_object() {
        for (name, why) in failed {
            println!("attack {name} ended early: {}", why.as_str().unwrap_or(""));
        }
    }
}
