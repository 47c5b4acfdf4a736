//! `socp-bench --big-state N`: a master with a large directory and a large
//! offline mailbox (issue 13). The rows are written straight into the
//! master's SQLite database, whose schema the master itself created (one
//! start and stop first), in one transaction each. Then the master starts
//! on them: how long until it listens, and its RSS; how fast the
//! directory answers lookups; how fast the mailbox drains when its
//! recipients come online; and, separately, how fast one sender fills an
//! offline user's mailbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::SinkExt;
use serde_json::{Map, Value, json};
use socp::crypto::PrivateKey;
use socp::wire::messages::{Kind, Message};
use socp::wire::{Envelope, ids};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::node_proc::NodeProc;
use crate::throughput::bench_node_options;
use crate::throughput::load::{Conn, Observed, receiver};

/// What to build and measure.
#[derive(Debug, Clone)]
pub struct BigStateConfig {
    pub socp: PathBuf,
    /// Users in the directory.
    pub users: usize,
    /// Frames in the mailbox.
    pub frames: usize,
    /// Recipients the mailbox is spread over (each gets frames/recipients).
    pub recipients: usize,
    /// Seconds one sender fills an offline user's mailbox.
    pub fill_seconds: u64,
    /// Directory lookups timed.
    pub lookups: usize,
    pub out: Option<PathBuf>,
}

/// Size of each mailbox frame's payload, about (a DM with ~400 bytes of
/// ciphertext and short key fields).
const FRAME_BYTES: usize = 1024;
/// Recipients logging in at once during the drain.
const LOGINS_AT_ONCE: usize = 16;
/// Frames unacknowledged at once from the filling sender.
const FILL_WINDOW: usize = 256;

/// Runs the three measurements and prints a table.
pub async fn run_big_state(cfg: BigStateConfig) -> Result<Value> {
    let key = Arc::new(tokio::task::spawn_blocking(PrivateKey::generate).await??);
    let mut figures = Map::new();
    figures.insert("socp".into(), json!(cfg.socp.display().to_string()));
    if cfg.users > 0 {
        eprintln!("socp-bench: directory of {} users…", cfg.users);
        figures.insert("directory".into(), directory(&cfg, &key).await?);
    }
    if cfg.frames > 0 {
        eprintln!(
            "socp-bench: mailbox of {} frames for {} recipients…",
            cfg.frames, cfg.recipients
        );
        figures.insert("mailbox".into(), mailbox(&cfg, &key).await?);
    }
    if cfg.fill_seconds > 0 {
        eprintln!("socp-bench: one sender filling an offline mailbox…");
        figures.insert("fill".into(), fill(&cfg, &key).await?);
    }
    let figures = Value::Object(figures);
    crate::publish(&table(&figures), &figures, cfg.out.as_deref())?;
    Ok(figures)
}

/// The flags of every master here: no per-address or per-user limits in
/// the way of one benchmark process, and mailbox bounds above what it
/// builds (the quotas are not what is measured).
fn flags() -> Vec<String> {
    [
        "--max-conns-per-ip",
        "100000",
        "--user-rate",
        "1000000",
        "--user-burst",
        "1000000",
        "--registrations-per-address",
        "0",
        "--mailbox-max-frames",
        "100000000",
        "--mailbox-max-bytes",
        "1000000000000",
        "--custody-max-bytes",
        "1000000000000",
        "--sender-max-frames",
        "100000000",
        "--sender-max-bytes",
        "1000000000000",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts a master once (it creates its schema and keys) and stops it.
fn fresh_master(socp: &Path, dir: &Path) -> Result<PathBuf> {
    let mut node = NodeProc::start(bench_node_options(socp), dir, "master", &flags())?;
    node.terminate()?;
    Ok(dir.join("node.sqlite"))
}

/// Starts the master on what was built: time until it listens, its RSS.
fn start_measured(socp: &Path, dir: &Path) -> Result<(NodeProc, f64)> {
    let t0 = Instant::now();
    let node = NodeProc::start(bench_node_options(socp), dir, "master", &flags())?;
    std::net::TcpStream::connect(("127.0.0.1", node.port)).context("connecting to the master")?;
    Ok((node, t0.elapsed().as_secs_f64()))
}

fn rss_mib(node: &NodeProc) -> f64 {
    node.status_kib("VmRSS:") / 1024.0
}

/// Writes `n` users `u0000000…` pinned to `pubkey`, and `extra` users.
fn fill_users(db: &Path, n: usize, pubkey: &str, extra: &[String]) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO users (user_id, pubkey, legacy, first_seen_ms, last_seen_ms) VALUES (?1, ?2, 0, ?3, ?3)",
        )?;
        let now = socp::wire::now_ms();
        for i in 0..n {
            stmt.execute(rusqlite::params![format!("u{i:07}"), pubkey, now])?;
        }
        for id in extra {
            stmt.execute(rusqlite::params![id, pubkey, now])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A DM payload as custody keeps it, about [`FRAME_BYTES`] long.
fn frame_payload(to: &str, sender: &str, msg_id: &str) -> String {
    let b64 = |n: usize| "A".repeat(n);
    let mut p = json!({
        "user_id": to,
        "ciphertext": b64(420),
        "iv": b64(16),
        "tag": b64(22),
        "wrapped_key": b64(172),
        "sender": sender,
        "sender_pub": b64(128),
        "content_sig": b64(172),
        "content_ts": socp::wire::now_ms(),
        "msg_id": msg_id,
    })
    .to_string();
    if p.len() < FRAME_BYTES {
        // Pad the ciphertext up to the size wanted.
        let pad = FRAME_BYTES - p.len();
        p = p.replacen(&b64(420), &b64(420 + pad), 1);
    }
    p
}

/// Writes `frames` mailbox rows for `r0…` (round robin) from `s0…s999`.
fn fill_mailbox(db: &Path, frames: usize, recipients: usize) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO custody (seq, msg_id, dest_kind, dest, kind, to_id, via, sender, payload, bytes, created_ms)
             VALUES (?1, ?2, 'user', ?3, 'PEER_DELIVER', NULL, NULL, ?4, ?5, ?6, ?7)",
        )?;
        let now = socp::wire::now_ms();
        for seq in 1..=frames {
            let to = format!("r{}", seq % recipients);
            let sender = format!("s{}", seq % 1000);
            let msg_id = format!("big{seq}");
            let payload = frame_payload(&to, &sender, &msg_id);
            let bytes = payload.len() as i64;
            stmt.execute(rusqlite::params![
                seq as i64, msg_id, to, sender, payload, bytes, now
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The directory: start, RSS, lookups of random ids (cold, then again).
async fn directory(cfg: &BigStateConfig, key: &Arc<PrivateKey>) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let db = fresh_master(&cfg.socp, dir.path())?;
    let t0 = Instant::now();
    fill_users(&db, cfg.users, key.public().to_b64(), &[])?;
    let built = t0.elapsed().as_secs_f64();
    let (mut node, start_s) = start_measured(&cfg.socp, dir.path())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = rss_mib(&node);
    let mut probe = Conn::open(&node.url(), "probe_user", key.clone()).await?;
    let ids: Vec<String> = (0..cfg.lookups)
        .map(|i| format!("u{:07}", (i * 7_919 + 13) % cfg.users.max(1)))
        .collect();
    let cold = lookups(&mut probe, &ids).await?;
    let warm = lookups(&mut probe, &ids).await?;
    let rss_after = rss_mib(&node);
    node.terminate()?;
    Ok(json!({
        "users": cfg.users,
        "lookups": cfg.lookups,
        "build_s": built,
        "start_s": start_s,
        "rss_mib_start": rss_start,
        "rss_mib_after_lookups": rss_after,
        "lookup_ms": { "cold_p50": cold.0, "cold_p99": cold.1, "warm_p50": warm.0, "warm_p99": warm.1 },
    }))
}

/// Looks each id up in turn; (p50, p99) in ms. Every id must be found.
async fn lookups(c: &mut Conn, ids: &[String]) -> Result<(f64, f64)> {
    let mut took = Vec::with_capacity(ids.len());
    for id in ids {
        let mut payload = Map::new();
        payload.insert("user_id".into(), Value::String(id.clone()));
        let env = Envelope::new(
            Kind::UserDbGetUser.name(),
            &c.user.clone(),
            ids::TO_SERVER,
            payload,
        );
        let text = c.seal(env).await?;
        let t0 = Instant::now();
        c.ws.send(WsMessage::text(text)).await?;
        loop {
            let env = tokio::time::timeout(Duration::from_secs(10), c.next())
                .await
                .context("no answer to a lookup")?
                .context("the master closed the connection")?;
            if env.kind == Kind::UserDbUser.name()
                && env.payload.get("user_id").and_then(Value::as_str) == Some(id)
            {
                if env.payload.get("found") != Some(&Value::Bool(true)) {
                    bail!("{id} not found in the directory");
                }
                break;
            }
        }
        took.push(t0.elapsed().as_micros() as u64);
    }
    took.sort_unstable();
    Ok((
        crate::percentile(&took, 0.5),
        crate::percentile(&took, 0.99),
    ))
}

/// The mailbox: start, RSS, then every recipient logs in and receives.
async fn mailbox(cfg: &BigStateConfig, key: &Arc<PrivateKey>) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let db = fresh_master(&cfg.socp, dir.path())?;
    let t0 = Instant::now();
    let recipients: Vec<String> = (0..cfg.recipients).map(|i| format!("r{i}")).collect();
    fill_users(&db, 0, key.public().to_b64(), &recipients)?;
    fill_mailbox(&db, cfg.frames, cfg.recipients)?;
    let built = t0.elapsed().as_secs_f64();
    let (mut node, start_s) = start_measured(&cfg.socp, dir.path())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = rss_mib(&node);
    let url = node.url();
    let seen = Arc::new(Observed::default());
    let peak = Arc::new(AtomicU64::new(rss_start as u64));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pid, peak, done) = (node.pid(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let rss = crate::procfs::status_kib_of(pid, "VmRSS:") / 1024.0;
                peak.fetch_max(rss as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let t1 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(LOGINS_AT_ONCE));
    let logged_in = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for user in recipients {
        let (url, key, seen, gate) = (url.clone(), key.clone(), seen.clone(), gate.clone());
        let logged_in = logged_in.clone();
        tasks.push(tokio::spawn(async move {
            let c = {
                let _slot = gate.acquire().await;
                Conn::open(&url, &user, key).await
            };
            if let Ok(c) = c {
                logged_in.fetch_add(1, Ordering::Relaxed);
                receiver(c, seen).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(1_800);
    let mut last = (0, Instant::now());
    let mut logins_s = None;
    while seen.delivered.load(Ordering::Relaxed) < cfg.frames as u64 {
        if logins_s.is_none() && logged_in.load(Ordering::Relaxed) >= cfg.recipients as u64 {
            logins_s = Some(t1.elapsed().as_secs_f64());
        }
        let n = seen.delivered.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
        }
        if Instant::now() > deadline || last.1.elapsed() > Duration::from_secs(60) {
            bail!(
                "the mailbox stopped draining at {n} of {} frames",
                cfg.frames
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = t1.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    for t in tasks {
        t.abort();
    }
    let rss_end = rss_mib(&node);
    node.terminate()?;
    Ok(json!({
        "frames": cfg.frames,
        "recipients": cfg.recipients,
        "frame_bytes": FRAME_BYTES,
        "build_s": built,
        "start_s": start_s,
        "rss_mib_start": rss_start,
        "rss_mib_peak_draining": peak.load(Ordering::Relaxed),
        "rss_mib_drained": rss_end,
        "drain_s": drain_s,
        "all_logged_in_s": logins_s.unwrap_or(drain_s),
        "drain_frames_per_s": cfg.frames as f64 / drain_s,
    }))
}

/// One sender, MAC session, DMs to an offline user for `fill_seconds`:
/// frames acknowledged per second (each ack means "on the master's disk").
async fn fill(cfg: &BigStateConfig, key: &Arc<PrivateKey>) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let db = fresh_master(&cfg.socp, dir.path())?;
    fill_users(&db, 0, key.public().to_b64(), &["offline_user".into()])?;
    let (mut node, _) = start_measured(&cfg.socp, dir.path())?;
    let mut c = Conn::open(&node.url(), "filler", key.clone()).await?;
    let sealed = socp::content::seal_dm(
        key,
        "filler",
        "offline_user",
        key.public(),
        &[b'x'; 200],
        socp::wire::now_ms(),
    )?;
    let dm = Message::MsgPrivate(sealed).to_payload();
    let (mut sent, mut acked) = (0u64, 0u64);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(cfg.fill_seconds);
    while Instant::now() < until {
        while sent - acked < FILL_WINDOW as u64 {
            let mut payload = dm.clone();
            payload.insert("msg_id".into(), Value::String(format!("f{sent}")));
            let env = Envelope::new(Kind::MsgPrivate.name(), "filler", "offline_user", payload);
            let text = c.seal(env).await?;
            c.ws.feed(WsMessage::text(text)).await?;
            sent += 1;
        }
        c.ws.flush().await?;
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.next()).await {
            Ok(Some(env)) if env.kind == Kind::Ack.name() => {
                let n = env.payload.get("msg_ids").and_then(Value::as_array);
                acked += n.map_or(0, |v| v.len() as u64);
            }
            Ok(Some(env)) if env.kind == Kind::Error.name() => {
                bail!("the master refused a frame: {:?}", env.payload);
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the master closed the sender's connection"),
            Err(_) => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    node.terminate()?;
    Ok(json!({
        "seconds": secs,
        "acked": acked,
        "frames_per_s": acked as f64 / secs,
    }))
}

/// The figures as a table.
fn table(f: &Value) -> String {
    let mut t = format!("big state: {}\n", f["socp"].as_str().unwrap_or("?"));
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    if let Some(d) = f.get("directory") {
        t += &format!(
            "  directory {:>9} users: start {:.2} s, RSS {:.0} MiB (after {} lookups {:.0} MiB), lookup p50/p99 cold {:.2}/{:.2} ms, warm {:.2}/{:.2} ms\n",
            d["users"],
            num(&d["start_s"]),
            num(&d["rss_mib_start"]),
            d["lookups"],
            num(&d["rss_mib_after_lookups"]),
            num(&d["lookup_ms"]["cold_p50"]),
            num(&d["lookup_ms"]["cold_p99"]),
            num(&d["lookup_ms"]["warm_p50"]),
            num(&d["lookup_ms"]["warm_p99"]),
        );
    }
    if let Some(m) = f.get("mailbox") {
        t += &format!(
            "  mailbox   {:>9} frames ({} recipients): start {:.2} s, RSS {:.0} MiB, peak while draining {:.0} MiB, drained in {:.1} s = {:.0} frames/s (all recipients logged in after {:.1} s)\n",
            m["frames"],
            m["recipients"],
            num(&m["start_s"]),
            num(&m["rss_mib_start"]),
            num(&m["rss_mib_peak_draining"]),
            num(&m["drain_s"]),
            num(&m["drain_frames_per_s"]),
            num(&m["all_logged_in_s"]),
        );
    }
    if let Some(x) = f.get("fill") {
        t += &format!(
            "  fill      one sender to an offline user: {:.0} frames/s acknowledged ({} in {:.1} s)\n",
            num(&x["frames_per_s"]),
            x["acked"],
            num(&x["seconds"]),
        );
    }
    t
}
