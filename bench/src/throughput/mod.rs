//! `socp-bench`: starts a master and a local as separate `socp node`
//! processes on loopback, drives them with sender and receiver sessions, and
//! reports throughput, latency, CPU and memory, with `mac-v1` link sessions
//! and again with `--no-mac`, against the RSA bound of this machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Map, Value, json};
use socp::client::Session;
use socp::content;
use socp::crypto::PrivateKey;
use socp::wire::Envelope;
use socp::wire::messages::{Kind, Message};

use crate::node_proc::{NodeLog, NodeOptions, NodeProc};
use crate::percentile;
use crate::procfs::{cpu_ms_of, raise_fd_limit};

pub(crate) mod load;
mod report;

use load::{Conn, Observed, SenderPlan, receiver, sender};
pub use report::table;

/// Messages a sender may have unacknowledged by its node.
pub(crate) const WINDOW: usize = 256;
/// Signatures per cross-server DM without link sessions: the client's frame,
/// the local's `PEER_DELIVER`, the master's `USER_DELIVER`.
const SIGS_PER_DM: f64 = 3.0;

/// Settings of one benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The `socp` binary the nodes run.
    pub socp: PathBuf,
    pub seconds: u64,
    pub pairs: usize,
    pub idle: usize,
    pub out: Option<PathBuf>,
}

/// A mesh of a master and a local with connected senders and receivers.
struct Rig {
    master: NodeProc,
    local: NodeProc,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(socp: &Path, no_mac: bool) -> Result<Rig> {
        let dir = tempfile::tempdir()?;
        let master = bench_node(socp, &dir.path().join("m"), "master", None, no_mac)?;
        let url = master.url();
        let local = bench_node(socp, &dir.path().join("l"), "local", Some(&url), no_mac)?;
        Ok(Rig {
            master,
            local,
            _dir: dir,
        })
    }
}

/// Starts a node that lets the load through: it comes from one address,
/// faster than any one user would send.
pub(crate) fn bench_node(
    socp: &Path,
    dir: &Path,
    role: &str,
    master_url: Option<&str>,
    no_mac: bool,
) -> Result<NodeProc> {
    bench_node_with(bench_node_options(socp), dir, role, master_url, no_mac)
}

/// [`bench_node`] with more flags (`--new-flag`).
pub(crate) fn bench_node_extra(
    socp: &Path,
    dir: &Path,
    role: &str,
    master_url: Option<&str>,
    extra: &[String],
) -> Result<NodeProc> {
    let mut flags: Vec<String> = Vec::new();
    if let Some(url) = master_url {
        flags.extend(["--master-url".into(), url.to_owned()]);
    }
    flags.extend(LOAD_FLAGS.map(String::from));
    flags.extend(extra.iter().cloned());
    NodeProc::start(bench_node_options(socp), dir, role, &flags)
}

/// What lets a benchmark's load through a node: it comes from one
/// address, faster than any one user would send.
const LOAD_FLAGS: [&str; 10] = [
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
];

/// [`bench_node`] with these process options.
pub(crate) fn bench_node_with(
    opts: NodeOptions,
    dir: &Path,
    role: &str,
    master_url: Option<&str>,
    no_mac: bool,
) -> Result<NodeProc> {
    let mut flags: Vec<String> = Vec::new();
    if let Some(url) = master_url {
        flags.extend(["--master-url".into(), url.to_owned()]);
    }
    if no_mac {
        flags.push("--no-mac".into());
    }
    flags.extend(LOAD_FLAGS.map(String::from));
    NodeProc::start(opts, dir, role, &flags)
}

/// How the benchmarks start their nodes: they die with the benchmark,
/// log warnings and the node's own lines, and may take a minute (key
/// generation on a loaded machine).
pub(crate) fn bench_node_options(socp: &Path) -> NodeOptions {
    NodeOptions {
        rust_log: "warn,socp::node=info".into(),
        log: NodeLog::Drop,
        die_with_starter: true,
        start_timeout: Duration::from_secs(60),
        ..NodeOptions::new(socp)
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
pub(crate) struct Material {
    pub(crate) sender_key: Arc<PrivateKey>,
    pub(crate) receiver_key: Arc<PrivateKey>,
    pub(crate) dm: Map<String, Value>,
}

pub(crate) fn material() -> Result<Material> {
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
        socp::wire::now_ms(),
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
struct Load {
    send_url: String,
    recv_url: String,
    pairs: usize,
    seconds: u64,
    /// Offered DMs per second in all, or saturated.
    rate: Option<f64>,
    /// Frames each sender signs beforehand (without link sessions).
    presign: usize,
}

impl Load {
    fn new(
        send: &NodeProc,
        recv: &NodeProc,
        cfg: &BenchConfig,
        rate: Option<f64>,
        presign: usize,
    ) -> Self {
        Load {
            send_url: send.url(),
            recv_url: recv.url(),
            pairs: cfg.pairs,
            seconds: cfg.seconds,
            rate,
            presign,
        }
    }
}

async fn throughput(rig: &Rig, m: &Material, load: Load) -> Result<(Run, Arc<Observed>)> {
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
        let c = Conn::open(&recv_url, &format!("r{tag}{i}"), m.receiver_key.clone()).await?;
        receivers.push(tokio::spawn(receiver(c, seen.clone())));
    }
    let mut senders = Vec::new();
    for i in 0..pairs {
        let user = format!("s{tag}{i}");
        let c = Conn::open(&send_url, &user, m.sender_key.clone()).await?;
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
                        let mut env = Envelope::new(Kind::MsgPrivate.name(), &user, &to, payload);
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

/// Connects `n` idle users to the master and returns the node's RSS growth per connection.
async fn idle_cost(rig: &Rig, key: &Arc<PrivateKey>, n: usize) -> Result<f64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rig.master.status_kib("VmRSS:");
    let mut conns = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let (url, key) = (rig.master.url(), key.clone());
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
    eprintln!("socp-bench: {cores} cores; generating keys and starting nodes…");
    let m = tokio::task::spawn_blocking(material).await??;
    let sign_ms = rsa_sign_ms(&m.sender_key)?;
    let rsa_bound = cores as f64 / (sign_ms / 1000.0 * SIGS_PER_DM);

    // With link sessions.
    let rig = Rig::start(&cfg.socp, false)?;
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
    let rig = Rig::start(&cfg.socp, true)?;
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
    crate::publish(&table(&figures), &figures, cfg.out.as_deref())?;
    Ok(figures)
}
