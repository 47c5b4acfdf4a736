//! `socp-bench --storm N`: a login storm. N users say signed hellos to a
//! local at once (new ids: the local must ask its master), then the local
//! restarts and all N reconnect at once (ids it knows). Prints the time
//! until every user is welcomed and the CPU each node spent per login, for
//! each `socp` binary given (the new one and a baseline) in the same run.
//!
//! The users share one RSA key (an id binds to a key, not a key to one
//! id), and their hellos are signed before the clock starts: each is a real
//! signed, fresh, never replayed hello; the node takes no shortcut. Each
//! binary's users log in as that version's client does: today's main sends
//! a `USER_LIST_REQ` probe right after its hello (its `{}` payload, and so
//! its signature, is the same for every user of one key), the new client
//! only its hello.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use socp::client::Session;
use socp::client::session::{CLIENT_NAME, Ws};
use socp::crypto::PrivateKey;
use socp::crypto::session::CAP_MAC_V1;
use socp::wire::messages::{Kind, Message, UserHello};
use socp::wire::{Envelope, ids, now_ms};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::node_proc::{NodeLog, NodeOptions, NodeProc};
use crate::procfs::raise_fd_limit;
use crate::throughput::{bench_node_options, bench_node_with};

/// How long one user may take to be welcomed before the run fails.
const LOGIN_PATIENCE: Duration = Duration::from_secs(600);
/// How long one attempt may take, connecting included, before it is made
/// again (a little more than the client's `WELCOME_TIMEOUT`).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// CPU is counted until this long after the last welcome (the master
/// finishes the registrations and presence the logins caused).
const SETTLE: Duration = Duration::from_secs(1);

/// One binary to measure.
#[derive(Debug, Clone)]
pub struct StormBinary {
    pub label: String,
    pub socp: PathBuf,
    /// Its users send the acceptance probe (`USER_LIST_REQ {}`) after
    /// their hello, as the client of today's main does.
    pub probe: bool,
}

/// Settings of a storm run.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// The binaries to measure, in order.
    pub binaries: Vec<StormBinary>,
    pub users: usize,
    pub out: Option<PathBuf>,
}

/// Figures of one storm.
struct Phase {
    secs: f64,
    master_cpu_ms: f64,
    local_cpu_ms: f64,
    retries: u64,
    /// Seconds from the start until half, 90% and 99% of the users were
    /// welcomed.
    welcomed_by: [f64; 3],
    /// The nodes' warnings during the storm: (node, message, count).
    warnings: Vec<(String, String, usize)>,
}

impl Phase {
    fn json(&self, n: usize) -> Value {
        let n = n.max(1) as f64;
        json!({
            "seconds_to_all_welcomed": self.secs,
            "logins_per_s": n / self.secs.max(1e-9),
            "master_cpu_ms_per_login": self.master_cpu_ms / n,
            "local_cpu_ms_per_login": self.local_cpu_ms / n,
            "retries": self.retries,
            "welcomed_by_s": {
                "p50": self.welcomed_by[0],
                "p90": self.welcomed_by[1],
                "p99": self.welcomed_by[2],
            },
            "warnings": self.warnings.iter().map(|(node, what, n)| json!({"node": node, "warning": what, "count": n})).collect::<Vec<_>>(),
        })
    }
}

/// Signs `n` fresh hellos for users `PREFIX0..`, on every core.
fn sign_hellos(key: &Arc<PrivateKey>, prefix: &str, n: usize) -> Result<Vec<String>> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let chunk = n.div_ceil(cores).max(1);
    let parts: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(n);
                s.spawn(move || {
                    (start..end)
                        .map(|i| signed_hello(key, &format!("{prefix}{i}")))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("signing panicked"))?)
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

/// A hello as the `socp` client says it: signed, fresh, asking for `mac-v1`.
fn signed_hello(key: &PrivateKey, user: &str) -> Result<String> {
    let pubkey = key.public().to_b64().to_owned();
    let mut extra = Map::new();
    extra.insert("user_id".into(), Value::String(user.to_owned()));
    let hello = Message::UserHello(UserHello {
        client: CLIENT_NAME.to_owned(),
        pubkey: pubkey.clone(),
        enc_pubkey: pubkey,
        ts: Some(now_ms()),
        caps: Some(vec![CAP_MAC_V1.to_owned()]),
        extra,
    });
    let mut env = hello.into_envelope(user, ids::TO_SERVER);
    env.sig = key.sign_b64(&env.signed_bytes()?)?;
    Ok(env.to_json())
}

/// What one attempt at logging in ended with.
enum Attempt {
    Welcomed(Box<Ws>),
    /// Refused or dropped: try again with a fresh hello.
    Again(String),
}

/// How far an attempt got: [`CONNECTING`] until its WebSocket is open,
/// then [`HELLO_SENT`] (what a timed-out attempt was waiting for).
const CONNECTING: u8 = 0;
const HELLO_SENT: u8 = 1;

async fn attempt(url: &str, hello: String, probe: Option<String>, stage: &AtomicU8) -> Attempt {
    stage.store(CONNECTING, Ordering::Relaxed);
    let ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(e) => return Attempt::Again(format!("connect: {e}")),
    };
    stage.store(HELLO_SENT, Ordering::Relaxed);
    let mut ws = ws;
    for text in std::iter::once(hello).chain(probe) {
        if let Err(e) = ws.send(WsMessage::text(text)).await {
            return Attempt::Again(format!("send: {e}"));
        }
    }
    loop {
        let text = match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(_))) | None => return Attempt::Again("closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Attempt::Again(e.to_string()),
        };
        let Ok(env) = Envelope::parse(text.as_str()) else {
            continue;
        };
        if env.kind == Kind::UserWelcome.name() {
            return Attempt::Welcomed(Box::new(ws));
        }
        if env.kind == Kind::Error.name() {
            let detail = env.payload.get("detail").and_then(Value::as_str);
            return Attempt::Again(detail.unwrap_or("error").to_owned());
        }
    }
}

/// The probe of today's client: `USER_LIST_REQ {}` signed with the users'
/// key (the signature covers the payload alone, so one serves every user).
fn probe_for(user: &str, sig: &str) -> String {
    let mut env = Message::UserListReq(Default::default()).into_envelope(user, ids::TO_SERVER);
    env.sig = sig.to_owned();
    env.to_json()
}

/// Why logins were tried again, and how often.
#[derive(Default)]
struct Retries {
    total: AtomicU64,
    why: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Retries {
    fn count(&self, why: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let why: String = why.chars().take(80).collect();
        if let Ok(mut m) = self.why.lock() {
            *m.entry(why).or_default() += 1;
        }
    }

    /// The most frequent reasons (at most 5).
    fn top(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .why
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(5);
        v
    }
}

/// Logs one user in, with a fresh hello on each retry.
async fn login(
    url: String,
    user: String,
    hello: String,
    key: Arc<PrivateKey>,
    probe_sig: Option<Arc<String>>,
    retries: Arc<Retries>,
) -> Result<(Ws, Instant)> {
    let deadline = Instant::now() + LOGIN_PATIENCE;
    let mut hello = hello;
    let mut wait = Duration::from_millis(100);
    let stage = AtomicU8::new(CONNECTING);
    loop {
        let probe = probe_sig.as_ref().map(|sig| probe_for(&user, sig));
        let outcome =
            tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(&url, hello, probe, &stage)).await;
        let why = match outcome {
            Ok(Attempt::Welcomed(ws)) => return Ok((*ws, Instant::now())),
            Ok(Attempt::Again(why)) => why,
            Err(_) if stage.load(Ordering::Relaxed) == CONNECTING => {
                "no answer (still connecting)".to_owned()
            }
            Err(_) => "no answer (hello sent, no welcome)".to_owned(),
        };
        if Instant::now() > deadline {
            bail!("{user} was not welcomed in {LOGIN_PATIENCE:?}: {why}");
        }
        retries.count(&why);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        let (k, u) = (key.clone(), user.clone());
        hello = tokio::task::spawn_blocking(move || signed_hello(&k, &u)).await??;
    }
}

/// All users say their hellos at once; returns when every one is welcomed.
async fn storm(
    master: &NodeProc,
    local: &NodeProc,
    key: &Arc<PrivateKey>,
    prefix: &str,
    hellos: Vec<String>,
    probe_sig: Option<Arc<String>>,
) -> Result<(Phase, Vec<Ws>)> {
    let retries = Arc::new(Retries::default());
    let logged = (master.log_lines().len(), local.log_lines().len());
    let (m0, l0, t0) = (master.cpu_ms(), local.cpu_ms(), Instant::now());
    let tasks: Vec<_> = hellos
        .into_iter()
        .enumerate()
        .map(|(i, hello)| {
            let (url, user) = (local.url(), format!("{prefix}{i}"));
            let probe_sig = probe_sig.clone();
            tokio::spawn(login(
                url,
                user,
                hello,
                key.clone(),
                probe_sig,
                retries.clone(),
            ))
        })
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    let mut welcomed_at = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (ws, at) = t.await??;
        conns.push(ws);
        welcomed_at.push(at.duration_since(t0).as_secs_f64());
    }
    let secs = t0.elapsed().as_secs_f64();
    welcomed_at.sort_by(f64::total_cmp);
    let by = |q: f64| {
        let i = ((welcomed_at.len() as f64 * q).ceil() as usize).clamp(1, welcomed_at.len());
        welcomed_at[i - 1]
    };
    tokio::time::sleep(SETTLE).await;
    let phase = Phase {
        secs,
        master_cpu_ms: master.cpu_ms() - m0,
        local_cpu_ms: local.cpu_ms() - l0,
        retries: retries.total.load(Ordering::Relaxed),
        welcomed_by: [by(0.5), by(0.9), by(0.99)],
        warnings: [("master", master, logged.0), ("local", local, logged.1)]
            .into_iter()
            .flat_map(|(name, node, from)| {
                warnings(&node.log_lines()[from.min(node.log_lines().len())..])
                    .into_iter()
                    .map(move |(what, n)| (name.to_owned(), what, n))
            })
            .collect(),
    };
    let [p50, p90, p99] = phase.welcomed_by;
    eprintln!("  welcomed: half by {p50:.1} s, 90% by {p90:.1} s, 99% by {p99:.1} s");
    eprintln!("  welcomes per 2 s: {}", timeline(&welcomed_at));
    for (why, n) in retries.top() {
        eprintln!("  retried {n} x: {why}");
    }
    for (node, what, n) in &phase.warnings {
        eprintln!("  {node} warned {n} x: {what}");
    }
    Ok((phase, conns))
}

/// How many welcomes came in each 2-second window from the start.
fn timeline(welcomed_at: &[f64]) -> String {
    let last = welcomed_at.last().copied().unwrap_or(0.0);
    let mut counts = vec![0usize; (last / 2.0) as usize + 1];
    for t in welcomed_at {
        if let Some(c) = counts.get_mut((t / 2.0) as usize) {
            *c += 1;
        }
    }
    let counts: Vec<String> = counts.iter().map(usize::to_string).collect();
    counts.join(" ")
}

/// The nodes' warnings, without their fields and times, most frequent
/// first (at most 5).
fn warnings(lines: &[String]) -> Vec<(String, usize)> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for line in lines.iter().filter(|l| l.contains("WARN")) {
        let text = line.split_once(": ").map_or(line.as_str(), |(_, t)| t);
        let what: Vec<&str> = text
            .split_whitespace()
            .filter(|w| !w.contains('='))
            .collect();
        *counts.entry(what.join(" ")).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    counts.truncate(5);
    counts
}

/// A node of the storm: as the other benchmarks start theirs, keeping its
/// warnings.
fn storm_node(socp: &Path, dir: &Path, role: &str, master: Option<&str>) -> Result<NodeProc> {
    let opts = NodeOptions {
        log: NodeLog::Keep,
        ..bench_node_options(socp)
    };
    bench_node_with(opts, dir, role, master, false)
}

/// One binary: a master and a local; N new users at once, then the local
/// restarts and they all come back at once.
async fn run_binary(
    socp: &Path,
    key: &Arc<PrivateKey>,
    n: usize,
    probe: bool,
) -> Result<(Phase, Phase)> {
    let dir = tempfile::tempdir()?;
    let master = storm_node(socp, &dir.path().join("m"), "master", None)?;
    let mut local = storm_node(socp, &dir.path().join("l"), "local", Some(&master.url()))?;
    // The local is linked to its master once a new user can be welcomed.
    let warm = Session::connect_retrying(&local.url(), "warmup", key.clone(), LOGIN_PATIENCE)
        .await
        .context("a first user connecting to the local")?;
    warm.close().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let prefix = format!("st{tag}_");
    let probe_sig = match probe {
        true => {
            let bytes = Message::UserListReq(Default::default())
                .into_envelope("x", ids::TO_SERVER)
                .signed_bytes()?;
            Some(Arc::new(key.sign_b64(&bytes)?))
        }
        false => None,
    };
    let sign = |prefix: String| {
        let k = key.clone();
        let t = Instant::now();
        async move {
            let hellos = tokio::task::spawn_blocking(move || sign_hellos(&k, &prefix, n)).await??;
            eprintln!("  signed {n} hellos in {:.1} s", t.elapsed().as_secs_f64());
            anyhow::Ok(hellos)
        }
    };
    let hellos = sign(prefix.clone()).await?;
    eprintln!("  {n} new users at once…");
    let (first, conns) = storm(&master, &local, key, &prefix, hellos, probe_sig.clone()).await?;
    eprintln!("  …{:.1} s", first.secs);
    let hellos = sign(prefix.clone()).await?;
    local.restart()?;
    drop(conns);
    eprintln!("  local restarted; {n} users reconnect at once…");
    let (again, conns) = storm(&master, &local, key, &prefix, hellos, probe_sig).await?;
    eprintln!("  …{:.1} s", again.secs);
    drop(conns);
    Ok((first, again))
}

/// Runs the storm against each binary and prints (and optionally writes)
/// the figures.
pub async fn run_storm(cfg: StormConfig) -> Result<Value> {
    if cfg.users == 0 {
        bail!("--storm needs at least one user");
    }
    raise_fd_limit();
    eprintln!("socp-bench --storm {}: generating a key…", cfg.users);
    let key = Arc::new(tokio::task::spawn_blocking(PrivateKey::generate).await??);
    let mut runs = Map::new();
    let mut table = format!(
        "login storm: {} users on one local (signed hellos, mac-v1)\n{:<16} {:<22} {:>9} {:>10} {:>15} {:>14} {:>8}\n",
        cfg.users,
        "binary (client)",
        "phase",
        "seconds",
        "logins/s",
        "master ms/login",
        "local ms/login",
        "retries"
    );
    for b in &cfg.binaries {
        let label = format!("{}{}", b.label, if b.probe { " (+probe)" } else { "" });
        eprintln!("{label}: {}", b.socp.display());
        let (first, again) = run_binary(&b.socp, &key, cfg.users, b.probe).await?;
        let figures = json!({
            "binary": b.socp.display().to_string(),
            "client_probe": b.probe,
            "new_users": first.json(cfg.users),
            "reconnect_after_restart": again.json(cfg.users),
        });
        for (phase, f) in [
            ("new users", &figures["new_users"]),
            ("reconnect (restart)", &figures["reconnect_after_restart"]),
        ] {
            table.push_str(&format!(
                "{:<16} {:<22} {:>9.2} {:>10.0} {:>15.2} {:>14.2} {:>8}\n",
                label,
                phase,
                f["seconds_to_all_welcomed"].as_f64().unwrap_or(0.0),
                f["logins_per_s"].as_f64().unwrap_or(0.0),
                f["master_cpu_ms_per_login"].as_f64().unwrap_or(0.0),
                f["local_cpu_ms_per_login"].as_f64().unwrap_or(0.0),
                f["retries"].as_u64().unwrap_or(0),
            ));
        }
        runs.insert(label, figures);
    }
    let figures = json!({ "users": cfg.users, "runs": runs });
    crate::publish(&table, &figures, cfg.out.as_deref())?;
    Ok(figures)
}
