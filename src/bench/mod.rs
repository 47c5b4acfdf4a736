//! `socp bench`: starts a master and a local as separate `socp node`
//! processes on loopback, drives them with sender and receiver sessions, and
//! reports throughput, latency, CPU and memory, with `mac-v1` link sessions
//! and again with `--no-mac`, against the RSA bound of this machine.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::Session;
use crate::client::session::Ws;
use crate::content;
use crate::crypto::PrivateKey;
use crate::crypto::session::MacSession;
use crate::wire::messages::{Ack, Message};
use crate::wire::{Envelope, ids};

mod attacks;
pub use attacks::{AttackConfig, run_attacks};

/// Messages a sender may have unacknowledged by its node.
const WINDOW: usize = 256;
/// Signatures per cross-server DM without link sessions: the client's frame,
/// the local's `PEER_DELIVER`, the master's `USER_DELIVER`.
const SIGS_PER_DM: f64 = 3.0;

/// Settings of one benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub seconds: u64,
    pub pairs: usize,
    pub idle: usize,
    pub out: Option<PathBuf>,
}

/// A `socp node` process.
struct NodeProc {
    child: Child,
    url: String,
}

impl NodeProc {
    fn start(dir: &Path, role: &str, master_url: Option<&str>, no_mac: bool) -> Result<NodeProc> {
        let mut args: Vec<String> = Vec::new();
        if no_mac {
            args.push("--no-mac".into());
        }
        // The load comes from one address, faster than any one user would send.
        args.extend(
            [
                "--max-conns-per-ip",
                "100000",
                "--user-rate",
                "1000000",
                "--user-burst",
                "1000000",
                // Thousands of new ids from one address, through one local.
                "--registrations-per-address",
                "0",
                "--registrations-per-server",
                "0",
            ]
            .map(String::from),
        );
        Self::spawn(dir, role, master_url, &args)
    }

    /// Starts `socp node --role ROLE` with these further flags and waits
    /// until it listens.
    fn spawn(
        dir: &Path,
        role: &str,
        master_url: Option<&str>,
        args: &[String],
    ) -> Result<NodeProc> {
        let exe = std::env::current_exe().context("finding the socp binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["node", "--role", role, "--listen", "127.0.0.1:0"])
            .arg("--db")
            .arg(dir.join(format!("{role}.sqlite")))
            .arg("--keys")
            .arg(dir.join("keys"))
            .env("RUST_LOG", "warn,socp::node=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(url) = master_url {
            cmd.args(["--master-url", url]);
        }
        cmd.args(args);
        // The nodes die with the benchmark, however it ends.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting a node")?;
        let stderr = child.stderr.take().context("node stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).context("the node did not start")?;
            if let Some(at) = line.find("listening on ws://") {
                let url = line[at + "listening on ".len()..].trim().to_owned();
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return Ok(NodeProc { child, url });
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far, in milliseconds (from `/proc`).
    fn cpu_ms(&self) -> f64 {
        cpu_ms_of(&self.pid().to_string())
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> f64 {
        status_kib_of(self.pid(), field)
    }
}

/// A `/proc/PID/status` field of a process in KiB.
fn status_kib_of(pid: u32, field: &str) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0.0;
    };
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// CPU time a process (a pid, or `self`) used so far, in milliseconds.
fn cpu_ms_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks * 1000.0 / hz
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets this process (and the nodes it starts) hold thousands of sockets.
fn raise_fd_limit() {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What the receivers observed.
#[derive(Default)]
struct Observed {
    delivered: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    sent_at: Mutex<HashMap<u64, Instant>>,
}

/// One side of a benchmark connection.
struct Conn {
    ws: Ws,
    mac: Option<MacSession>,
    user: String,
    key: Arc<PrivateKey>,
}

impl Conn {
    async fn open(url: &str, user: &str, key: Arc<PrivateKey>) -> Result<Conn> {
        let session = Session::connect_retrying(url, user, key.clone(), Duration::from_secs(30))
            .await
            .with_context(|| format!("{user} connecting to {url}"))?;
        let (ws, mac, _) = session.into_parts();
        Ok(Conn {
            ws,
            mac,
            user: user.to_owned(),
            key,
        })
    }

    /// Authenticates a frame: MAC on a session, else an RSA signature.
    async fn seal(&mut self, mut env: Envelope) -> Result<String> {
        match self.mac.as_mut() {
            Some(mac) => return Ok(mac.seal_to_json(&mut env)?),
            None => {
                let bytes = env.signed_bytes()?;
                let key = self.key.clone();
                env.sig = tokio::task::spawn_blocking(move || key.sign_b64(&bytes)).await??;
            }
        }
        Ok(env.to_json())
    }

    /// Reads and authenticates the next frame.
    async fn next(&mut self) -> Option<Envelope> {
        loop {
            match self.ws.next().await? {
                Ok(WsMessage::Text(t)) => {
                    let env = Envelope::parse(t.as_str()).ok()?;
                    if let Some(mac) = self.mac.as_mut() {
                        mac.open(&env).ok()?;
                    }
                    return Some(env);
                }
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// A sender: sends DMs to `to` as fast as its window allows, or at `rate`.
/// What one sender sends.
struct SenderPlan {
    to: String,
    dm: Map<String, Value>,
    /// Frames signed before the clock started (runs without link sessions).
    presigned: Vec<String>,
    /// The first message number (numbers are unique across senders).
    base: u64,
    /// Messages per second, or as fast as the window allows.
    rate: Option<f64>,
}

async fn sender(mut c: Conn, plan: SenderPlan, stop: Arc<AtomicBool>, seen: Arc<Observed>) -> u64 {
    let SenderPlan {
        to,
        dm,
        presigned,
        base,
        rate,
    } = plan;
    let (mut in_flight, mut sent, mut credit) = (0usize, 0u64, 0.0f64);
    let mut presigned = presigned.into_iter();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut last = Instant::now();
    loop {
        let can_send = in_flight < WINDOW && !stop.load(Ordering::Relaxed);
        tokio::select! {
            biased;
            frame = c.next() => match frame {
                Some(env) if env.kind == "ACK" => {
                    let n = env.payload.get("msg_ids").and_then(Value::as_array).map_or(0, Vec::len);
                    in_flight = in_flight.saturating_sub(n);
                }
                Some(_) => {}
                None => return sent,
            },
            _ = tick.tick(), if can_send => {
                let burst = match rate {
                    Some(r) => {
                        credit += r * last.elapsed().as_secs_f64();
                        last = Instant::now();
                        let n = credit.floor();
                        credit -= n;
                        n as usize
                    }
                    None => 256,
                }
                .min(WINDOW - in_flight);
                for _ in 0..burst {
                    let id = base + sent;
                    let text = if c.mac.is_some() {
                        let mut payload = dm.clone();
                        payload.insert("msg_id".into(), Value::String(format!("b{id}")));
                        match c.seal(Envelope::new("MSG_PRIVATE", &c.user.clone(), &to, payload)).await {
                            Ok(t) => t,
                            Err(_) => return sent,
                        }
                    } else {
                        match presigned.next() {
                            Some(t) => t,
                            None => break,
                        }
                    };
                    if rate.is_some()
                        && let Ok(mut m) = seen.sent_at.lock()
                    {
                        m.insert(id, Instant::now());
                    }
                    if c.ws.feed(WsMessage::text(text)).await.is_err() {
                        return sent;
                    }
                    sent += 1;
                    in_flight += 1;
                }
                if c.ws.flush().await.is_err() {
                    return sent;
                }
            },
        }
    }
}

/// A receiver: counts deliveries, records latencies, acknowledges in batches.
async fn receiver(mut c: Conn, seen: Arc<Observed>) {
    let mut to_ack: Vec<String> = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            frame = c.next() => {
                let Some(env) = frame else { return };
                if env.kind != "USER_DELIVER" {
                    continue;
                }
                seen.delivered.fetch_add(1, Ordering::Relaxed);
                let Some(id) = env.payload.get("msg_id").and_then(Value::as_str).map(str::to_owned) else { continue };
                if let Some(n) = id.strip_prefix('b').and_then(|n| n.parse::<u64>().ok())
                    && let Ok(mut m) = seen.sent_at.lock()
                    && let Some(at) = m.remove(&n)
                    && let Ok(mut l) = seen.latencies_us.lock()
                {
                    l.push(at.elapsed().as_micros() as u64);
                }
                to_ack.push(id);
                if to_ack.len() < 128 {
                    continue;
                }
            }
            _ = flush.tick() => if to_ack.is_empty() { continue },
        }
        let ack = Message::Ack(Ack {
            msg_ids: std::mem::take(&mut to_ack),
            extra: Map::new(),
        })
        .into_envelope(&c.user.clone(), ids::TO_SERVER);
        let Ok(text) = c.seal(ack).await else { return };
        if c.ws.send(WsMessage::text(text)).await.is_err() {
            return;
        }
    }
}

/// A mesh of a master and a local with connected senders and receivers.
struct Rig {
    master: NodeProc,
    local: NodeProc,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(no_mac: bool) -> Result<Rig> {
        let dir = tempfile::tempdir()?;
        let master = NodeProc::start(&dir.path().join("m"), "master", None, no_mac)?;
        let local = NodeProc::start(&dir.path().join("l"), "local", Some(&master.url), no_mac)?;
        Ok(Rig {
            master,
            local,
            _dir: dir,
        })
    }
}

/// Figures of one throughput run.
struct Run {
    rate: f64,
    master_cpu_ms_per_dm: f64,
    local_cpu_ms_per_dm: f64,
    /// This process: the senders and receivers.
    load_cpu_ms_per_dm: f64,
}

/// Keys for the run: one for all senders, one for all receivers (a user id
/// binds to a key, not the other way round), and the content they send.
struct Material {
    sender_key: Arc<PrivateKey>,
    receiver_key: Arc<PrivateKey>,
    dm: Map<String, Value>,
}

fn material() -> Result<Material> {
    let pair = std::thread::scope(|s| {
        let a = s.spawn(PrivateKey::generate);
        let b = s.spawn(PrivateKey::generate);
        (a.join(), b.join())
    });
    let sender_key = Arc::new(
        pair.0
            .map_err(|_| anyhow::anyhow!("key generation panicked"))??,
    );
    let receiver_key = Arc::new(
        pair.1
            .map_err(|_| anyhow::anyhow!("key generation panicked"))??,
    );
    let sealed = content::seal_dm(
        &sender_key,
        "s0",
        "r0",
        receiver_key.public(),
        &[b'x'; 200],
        crate::wire::now_ms(),
    )?;
    let dm = Message::MsgPrivate(sealed).to_payload();
    Ok(Material {
        sender_key,
        receiver_key,
        dm,
    })
}

/// Runs senders on `send_url` to receivers on `recv_url` for `seconds`.
/// One measured run: where senders and receivers attach, and the load.
struct Load<'a> {
    send_url: &'a str,
    recv_url: &'a str,
    pairs: usize,
    seconds: u64,
    /// Offered DMs per second in all, or saturated.
    rate: Option<f64>,
    /// Frames each sender signs beforehand (without link sessions).
    presign: usize,
}

impl<'a> Load<'a> {
    fn new(
        send: &'a NodeProc,
        recv: &'a NodeProc,
        cfg: &BenchConfig,
        rate: Option<f64>,
        presign: usize,
    ) -> Self {
        Load {
            send_url: &send.url,
            recv_url: &recv.url,
            pairs: cfg.pairs,
            seconds: cfg.seconds,
            rate,
            presign,
        }
    }
}

async fn throughput(rig: &Rig, m: &Material, load: Load<'_>) -> Result<(Run, Arc<Observed>)> {
    let Load {
        send_url,
        recv_url,
        pairs,
        seconds,
        rate,
        presign,
    } = load;
    let seen = Arc::new(Observed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tag = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let c = Conn::open(recv_url, &format!("r{tag}{i}"), m.receiver_key.clone()).await?;
        receivers.push(tokio::spawn(receiver(c, seen.clone())));
    }
    let mut senders = Vec::new();
    for i in 0..pairs {
        let user = format!("s{tag}{i}");
        let c = Conn::open(send_url, &user, m.sender_key.clone()).await?;
        let to = format!("r{tag}{i}");
        let base = (i as u64) << 40;
        // Without a session, each sender's frames are signed beforehand, on
        // the blocking pool (every core), before the clock starts.
        let signing = (c.mac.is_none() && presign > 0).then(|| {
            let (key, dm, user, to) =
                (m.sender_key.clone(), m.dm.clone(), user.clone(), to.clone());
            tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                (0..presign as u64)
                    .map(|n| {
                        let mut payload = dm.clone();
                        payload.insert("msg_id".into(), Value::String(format!("b{}", base + n)));
                        let mut env = Envelope::new("MSG_PRIVATE", &user, &to, payload);
                        env.sig = key.sign_b64(&env.signed_bytes()?)?;
                        Ok(env.to_json())
                    })
                    .collect()
            })
        });
        senders.push((c, to, base, signing));
    }
    let mut signed = Vec::new();
    for (c, to, base, signing) in senders {
        let presigned = match signing {
            Some(task) => task.await??,
            None => Vec::new(),
        };
        signed.push((c, to, base, presigned));
    }
    let senders = signed;
    // The receivers must be known where the senders are before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tasks = Vec::new();
    for (c, to, base, presigned) in senders {
        let per = rate.map(|r| r / pairs as f64);
        let plan = SenderPlan {
            to,
            dm: m.dm.clone(),
            presigned,
            base,
            rate: per,
        };
        tasks.push(tokio::spawn(sender(c, plan, stop.clone(), seen.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, mc0, lc0, bc0, t0) = (
        seen.delivered.load(Ordering::Relaxed),
        rig.master.cpu_ms(),
        rig.local.cpu_ms(),
        cpu_ms_of("self"),
        Instant::now(),
    );
    if let Ok(mut l) = seen.latencies_us.lock() {
        l.clear();
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, mc1, lc1, bc1, dt) = (
        seen.delivered.load(Ordering::Relaxed),
        rig.master.cpu_ms(),
        rig.local.cpu_ms(),
        cpu_ms_of("self"),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    for r in receivers {
        r.abort();
    }
    let n = (c1 - c0).max(1) as f64;
    Ok((
        Run {
            rate: (c1 - c0) as f64 / dt,
            master_cpu_ms_per_dm: (mc1 - mc0) / n,
            local_cpu_ms_per_dm: (lc1 - lc0) / n,
            load_cpu_ms_per_dm: (bc1 - bc0) / n,
        },
        seen,
    ))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Connects `n` idle users to the master and returns the node's RSS growth per connection.
async fn idle_cost(rig: &Rig, key: &Arc<PrivateKey>, n: usize) -> Result<f64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rig.master.status_kib("VmRSS:");
    let mut conns = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let (url, key) = (rig.master.url.clone(), key.clone());
        pending.push(tokio::spawn(async move {
            Session::connect_retrying(&url, &format!("idle{i}"), key, Duration::from_secs(60)).await
        }));
        if pending.len() == 64 || i + 1 == n {
            for p in pending.drain(..) {
                conns.push(p.await??);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rig.master.status_kib("VmRSS:");
    drop(conns);
    Ok(((after - before) / n as f64).max(0.0))
}

fn rsa_sign_ms(key: &PrivateKey) -> Result<f64> {
    key.sign(b"warm up")?;
    let t = Instant::now();
    for i in 0..50u32 {
        key.sign(&i.to_be_bytes())?;
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0 / 50.0)
}

/// Runs the whole benchmark and prints (and optionally writes) the figures.
pub async fn run(cfg: BenchConfig) -> Result<Value> {
    if cfg.pairs == 0 || cfg.seconds == 0 {
        bail!("--pairs and --seconds must be at least 1");
    }
    raise_fd_limit();
    let started = Instant::now();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!("socp bench: {cores} cores; generating keys and starting nodes…");
    let m = tokio::task::spawn_blocking(material).await??;
    let sign_ms = rsa_sign_ms(&m.sender_key)?;
    let rsa_bound = cores as f64 / (sign_ms / 1000.0 * SIGS_PER_DM);

    // With link sessions.
    let rig = Rig::start(false)?;
    eprintln!(
        "{:>5.1} s  cross-server, saturated…",
        started.elapsed().as_secs_f64()
    );
    let (cross, _) =
        throughput(&rig, &m, Load::new(&rig.local, &rig.master, &cfg, None, 0)).await?;
    eprintln!(
        "{:>5.1} s  same-server, saturated…",
        started.elapsed().as_secs_f64()
    );
    let (same, _) = throughput(&rig, &m, Load::new(&rig.local, &rig.local, &cfg, None, 0)).await?;
    eprintln!(
        "{:>5.1} s  cross-server at half load ({:.0}/s)…",
        started.elapsed().as_secs_f64(),
        cross.rate / 2.0
    );
    let (_, seen) = throughput(
        &rig,
        &m,
        Load::new(&rig.local, &rig.master, &cfg, Some(cross.rate / 2.0), 0),
    )
    .await?;
    let mut lat = seen
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    // Peak RSS of the load runs, before the idle connections add theirs.
    let peak = (
        rig.master.status_kib("VmHWM:"),
        rig.local.status_kib("VmHWM:"),
    );
    eprintln!(
        "{:>5.1} s  {} idle connections…",
        started.elapsed().as_secs_f64(),
        cfg.idle
    );
    let idle_kib = idle_cost(&rig, &m.receiver_key, cfg.idle).await?;
    drop(rig);

    // Without: RSA signatures on every frame, pre-signed by the senders.
    let rig = Rig::start(true)?;
    // Enough for the run at twice the RSA bound (same-server DMs take two
    // signatures, not three).
    let presign = ((rsa_bound * (cfg.seconds as f64 + 1.5) * 1.6) as usize / cfg.pairs).max(50);
    eprintln!(
        "{:>5.1} s  --no-mac cross-server…",
        started.elapsed().as_secs_f64()
    );
    let (nm_cross, _) = throughput(
        &rig,
        &m,
        Load::new(&rig.local, &rig.master, &cfg, None, presign),
    )
    .await?;
    eprintln!(
        "{:>5.1} s  --no-mac same-server…",
        started.elapsed().as_secs_f64()
    );
    let (nm_same, _) = throughput(
        &rig,
        &m,
        Load::new(&rig.local, &rig.local, &cfg, None, presign),
    )
    .await?;
    drop(rig);
    eprintln!("{:>5.1} s  done", started.elapsed().as_secs_f64());

    let figures = json!({
        "cores": cores,
        "seconds_per_run": cfg.seconds,
        "pairs": cfg.pairs,
        "cross_server_dms_per_s": cross.rate.round(),
        "same_server_dms_per_s": same.rate.round(),
        "latency_ms": {
            "offered_per_s": (cross.rate / 2.0).round(),
            "samples": lat.len(),
            "p50": percentile(&lat, 0.50),
            "p99": percentile(&lat, 0.99),
            "max": lat.last().map_or(0.0, |v| *v as f64 / 1000.0),
        },
        "node_cpu_ms_per_dm": { "master": cross.master_cpu_ms_per_dm, "local": cross.local_cpu_ms_per_dm },
        "load_generator_cpu_ms_per_dm": cross.load_cpu_ms_per_dm,
        "peak_rss_kib": { "master": peak.0, "local": peak.1 },
        "rss_per_idle_conn_kib": idle_kib,
        "idle_connections": cfg.idle,
        "rsa_sign_ms": sign_ms,
        "rsa_bound_dms_per_s": rsa_bound.round(),
        "no_mac": {
            "cross_server_dms_per_s": nm_cross.rate.round(),
            "same_server_dms_per_s": nm_same.rate.round(),
            "node_cpu_ms_per_dm": { "master": nm_cross.master_cpu_ms_per_dm, "local": nm_cross.local_cpu_ms_per_dm },
        },
        "mac_speedup": { "cross_server": cross.rate / nm_cross.rate.max(1.0), "same_server": same.rate / nm_same.rate.max(1.0) },
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
        "socp bench ({} cores, {} s per run, {} sender/receiver pairs, custody on)",
        f["cores"], f["seconds_per_run"], f["pairs"]
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "mac-v1", "--no-mac", "ratio"
    );
    for (label, key) in [
        (
            "cross-server DMs/s (delivered and acked)",
            "cross_server_dms_per_s",
        ),
        ("same-server DMs/s", "same_server_dms_per_s"),
    ] {
        let (a, b) = (n(&f[key]), n(&f["no_mac"][key]));
        println!("{label:<44} {a:>12.0} {b:>12.0} {:>7.1}x", a / b.max(1.0));
    }
    println!(
        "{:<44} {:>12.0}",
        "RSA bound, DMs/s (cores / (sign × 3))",
        n(&f["rsa_bound_dms_per_s"])
    );
    let l = &f["latency_ms"];
    println!(
        "{:<44} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples at {}/s)",
        "latency at half load",
        n(&l["p50"]),
        n(&l["p99"]),
        n(&l["max"]),
        l["samples"],
        l["offered_per_s"]
    );
    let c = &f["node_cpu_ms_per_dm"];
    println!(
        "{:<44} master {:.3}, local {:.3}",
        "node CPU ms per cross-server DM",
        n(&c["master"]),
        n(&c["local"])
    );
    println!(
        "{:<44} {:.3}",
        "load generator CPU ms per cross-server DM",
        n(&f["load_generator_cpu_ms_per_dm"])
    );
    let p = &f["peak_rss_kib"];
    println!(
        "{:<44} master {:.0}, local {:.0}",
        "peak RSS KiB under load",
        n(&p["master"]),
        n(&p["local"])
    );
    println!(
        "{:<44} {:.1} ({} connections)",
        "RSS KiB per idle connection",
        n(&f["rss_per_idle_conn_kib"]),
        f["idle_connections"]
    );
    println!("{:<44} {:.3}", "RSA-4096 sign ms", n(&f["rsa_sign_ms"]));
}
