//! `socp-bench --idle-scale 1000,10000,50000`: what an idle authenticated
//! user costs a node. For each `socp` binary (the one under test and, with
//! `--baseline`, another in the same run) it starts one master, logs in
//! users with signed hellos up to each level in turn (1,000, then 10,000,
//! ...), lets them sit idle, and reports the node's RSS growth per user.
//!
//! The users are light raw WebSocket clients (not [`socp::client::Session`],
//! whose buffers would make this process the bottleneck), bound to several
//! `127.0.0.x` source addresses (one address gives ~28,000 ephemeral ports).
//! A user id binds to a key, not the other way round: every user signs its
//! own fresh hello with one shared key, so the node checks a real signature
//! for each login (nothing is bypassed).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use socp::client::session::CLIENT_NAME;
use socp::crypto::PrivateKey;
use socp::crypto::session::CAP_MAC_V1;
use socp::wire::messages::{Message, UserHello};
use socp::wire::{Envelope, ids, now_ms};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::node_proc::NodeProc;
use crate::procfs::raise_fd_limit;
use crate::throughput::bench_node_options;

/// Logins in flight at once.
pub(crate) const IN_FLIGHT: usize = 128;
/// Connections per source address: each source address has its own
/// ~28,000 ephemeral ports (`IP_BIND_ADDRESS_NO_PORT`), and a port stays in
/// TIME_WAIT for a minute after its run, so runs back to back need several.
const PER_SOURCE: usize = 2_000;
/// How long the node is left alone before its RSS is read.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);
/// How long one login may take, retries included.
const LOGIN_PATIENCE: Duration = Duration::from_secs(120);
/// File descriptors asked for (this process and the nodes it starts).
const FD_WANTED: u64 = 400_000;

/// Settings of the idle-memory benchmark.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// The `socp` binary under test.
    pub socp: PathBuf,
    /// Another `socp` binary measured in the same run (today's main).
    pub baseline: Option<PathBuf>,
    /// Users online at each measurement, ascending.
    pub levels: Vec<usize>,
    /// Each user also asks for `USER_LIST` right after its hello, as the
    /// `socp` client's acceptance probe does.
    pub probe: bool,
    /// The users log in at a local of a master with a second local: the
    /// figures add what each user costs the master and the other local
    /// (the presence they hold).
    pub remote: bool,
    /// Flags for the nodes of the binary under test only (not the baseline).
    pub new_flags: Vec<String>,
    /// Also (first) measure a node of this build inside this process, its
    /// users over in-memory pipes, at every level; the socket runs then
    /// keep to the levels that fit in the open-files limit.
    pub memory: bool,
    pub out: Option<PathBuf>,
}

/// One measurement: a binary with `users` idle users online.
pub(crate) struct Level {
    pub users: usize,
    pub rss_kib: f64,
    pub per_user_kib: f64,
    pub logins_per_s: f64,
    /// None in memory mode: the node and its users share one process.
    pub node_cpu_ms_per_login: Option<f64>,
    /// With `remote`: RSS growth per user at the master and at the other
    /// local (KiB).
    pub master_per_user_kib: Option<f64>,
    pub other_local_per_user_kib: Option<f64>,
}

/// The levels of one binary over one transport.
struct Run {
    label: &'static str,
    transport: &'static str,
    socp: String,
    levels: Vec<Level>,
    /// Memory mode: what the pipes themselves cost, per user.
    pipe: Option<Value>,
}

/// Runs the benchmark and prints (and optionally writes) the figures.
pub async fn run_idle(cfg: IdleConfig) -> Result<Value> {
    let mut levels = cfg.levels.clone();
    levels.sort_unstable();
    levels.dedup();
    let Some(&most) = levels.last() else {
        bail!("--idle-scale needs at least one number of users");
    };
    let fds = raise_fd_limit_to(FD_WANTED);
    let mut socket_levels = levels.clone();
    if cfg.memory {
        // Each process (the node, this one) holds one socket per user.
        socket_levels.retain(|&n| n as u64 + 1000 <= fds);
    } else if fds < most as u64 + 1000 {
        eprintln!(
            "socp-bench: warning: {fds} file descriptors allowed; {most} users need about {}",
            most + 1000
        );
    }
    let key = Arc::new(tokio::task::spawn_blocking(PrivateKey::generate).await??);
    let mut runs = Vec::new();
    if cfg.memory {
        // First, while this process's heap holds nothing freed by other
        // runs that the node could reuse unseen.
        eprintln!("socp-bench: new, in this process over in-memory pipes…");
        let (measured, pipe) = crate::idle_memory::measure(&key, &levels, cfg.probe).await?;
        runs.push(Run {
            label: "new",
            transport: "memory",
            socp: "this build (socp-bench)".into(),
            levels: measured,
            pipe: Some(pipe),
        });
    }
    let mut binaries = vec![("new", cfg.socp.clone(), cfg.new_flags.clone())];
    if let Some(b) = &cfg.baseline {
        binaries.push(("baseline", b.clone(), Vec::new()));
    }
    if !socket_levels.is_empty() {
        for (label, socp, extra) in &binaries {
            eprintln!("socp-bench: {label} ({}) over sockets…", socp.display());
            let measured =
                measure(socp, &key, &socket_levels, cfg.probe, cfg.remote, extra).await?;
            runs.push(Run {
                label,
                transport: "socket",
                socp: socp.display().to_string(),
                levels: measured,
                pipe: None,
            });
        }
    }
    let figures = figures(&cfg, &runs);
    crate::publish(&table(&figures), &figures, cfg.out.as_deref())?;
    Ok(figures)
}

/// Raises this process's open-file limit towards `want` (the hard limit
/// too, where allowed); returns the soft limit it got.
fn raise_fd_limit_to(want: u64) -> u64 {
    raise_fd_limit();
    // SAFETY: getrlimit and setrlimit read and write a struct we own.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        lim.rlim_cur
    }
}

/// Starts a master (with `remote`, and two locals) and measures the node
/// the users log in at, at each level.
async fn measure(
    socp: &std::path::Path,
    key: &Arc<PrivateKey>,
    levels: &[usize],
    probe: bool,
    remote: bool,
    extra: &[String],
) -> Result<Vec<Level>> {
    let dir = tempfile::tempdir()?;
    let most = levels.last().copied().unwrap_or(0);
    let flags: Vec<String> = [
        "--max-conns".to_owned(),
        (most + 1000).to_string(),
        "--max-conns-per-ip".to_owned(),
        (most + 1000).to_string(),
        "--registrations-per-address".to_owned(),
        "0".to_owned(),
        "--registrations-per-server".to_owned(),
        "0".to_owned(),
    ]
    .into();
    let mut flags = flags;
    flags.extend(extra.iter().cloned());
    let master = NodeProc::start(
        bench_node_options(socp),
        &dir.path().join("m"),
        "master",
        &flags,
    )?;
    let mut others = Vec::new();
    let node = if remote {
        let mut local_flags = flags.clone();
        local_flags.extend(["--master-url".to_owned(), master.url()]);
        let opts = || bench_node_options(socp);
        let here = NodeProc::start(opts(), &dir.path().join("l1"), "local", &local_flags)?;
        let other = NodeProc::start(opts(), &dir.path().join("l2"), "local", &local_flags)?;
        others.push(master);
        others.push(other);
        here
    } else {
        master
    };
    tokio::time::sleep(SETTLE).await;
    let rss0 = node.status_kib("VmRSS:");
    let others0: Vec<f64> = others.iter().map(|n| n.status_kib("VmRSS:")).collect();
    let url = node.url();
    let server: SocketAddr = format!("127.0.0.1:{}", node.port).parse()?;
    let mut clients = JoinSet::new();
    let mut measured = Vec::new();
    let mut online = 0;
    for &users in levels {
        let started = Instant::now();
        let cpu0 = node.cpu_ms();
        login(&mut clients, server, &url, key, online..users, probe).await?;
        let dt = started.elapsed().as_secs_f64();
        let cpu = node.cpu_ms() - cpu0;
        let new = (users - online).max(1) as f64;
        online = users;
        // Presence takes a little longer to reach the other nodes.
        let settle = if remote { SETTLE * 2 } else { SETTLE };
        tokio::time::sleep(settle).await;
        if clients.len() != users {
            bail!("{} of {users} users are still connected", clients.len());
        }
        let rss = node.status_kib("VmRSS:");
        let grown: Vec<f64> = others
            .iter()
            .zip(&others0)
            .map(|(n, r0)| (n.status_kib("VmRSS:") - r0) / users as f64)
            .collect();
        let level = Level {
            users,
            rss_kib: rss,
            per_user_kib: (rss - rss0) / users as f64,
            logins_per_s: new / dt,
            node_cpu_ms_per_login: Some(cpu / new),
            master_per_user_kib: grown.first().copied(),
            other_local_per_user_kib: grown.get(1).copied(),
        };
        if let (Some(m), Some(o)) = (level.master_per_user_kib, level.other_local_per_user_kib) {
            eprintln!(
                "           the master: {m:.2} KiB per user; the other local: {o:.2} KiB per user"
            );
        }
        eprintln!(
            "  {users:>7} users: node RSS {:.0} MiB, {:.2} KiB per user ({:.0} logins/s)",
            rss / 1024.0,
            level.per_user_kib,
            level.logins_per_s
        );
        measured.push(level);
    }
    clients.abort_all();
    drop(node);
    drop(others);
    Ok(measured)
}

/// Logs in users `range` (each a task that stays connected, reading and
/// dropping what the node sends, until aborted).
async fn login(
    clients: &mut JoinSet<()>,
    server: SocketAddr,
    url: &str,
    key: &Arc<PrivateKey>,
    range: std::ops::Range<usize>,
    probe: bool,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let count = range.len();
    for i in range {
        let permit = slots.clone().acquire_owned().await?;
        let (url, key, done) = (url.to_owned(), key.clone(), done_tx.clone());
        clients.spawn(async move {
            let deadline = Instant::now() + LOGIN_PATIENCE;
            let ws = loop {
                match idle_user(server, &url, i, &key, probe).await {
                    Ok(ws) => break ws,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                }
            };
            drop(permit);
            let _ = done.send(Ok(()));
            stay_idle(ws).await;
        });
    }
    for _ in 0..count {
        match done_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.context("an idle user could not log in")),
            None => bail!("the login tasks ended early"),
        }
    }
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects user `i` from its source address, says a signed hello and
/// waits for the welcome.
async fn idle_user(
    server: SocketAddr,
    url: &str,
    i: usize,
    key: &Arc<PrivateKey>,
    probe: bool,
) -> Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    no_port_at_bind(&socket);
    socket.bind(SocketAddr::new(source_ip(i).into(), 0))?;
    let stream = socket.connect(server).await?;
    say_hello(stream, url, i, key, probe).await
}

/// The source address user `i` connects from: [`PER_SOURCE`] users each
/// (`--transport memory` gives its pipes the same addresses).
pub(crate) fn source_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i / PER_SOURCE) as u8)
}

/// Over a connected `stream`: the WebSocket handshake, user `i`'s signed
/// hello (and `USER_LIST` with `probe`), then waits for the welcome.
pub(crate) async fn say_hello<S>(
    stream: S,
    url: &str,
    i: usize,
    key: &Arc<PrivateKey>,
    probe: bool,
) -> Result<tokio_tungstenite::WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Small buffers: this process holds as many connections as the node.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(socp::wire::MAX_FRAME_BYTES))
        .max_frame_size(Some(socp::wire::MAX_FRAME_BYTES));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    let user = format!("idle{i}");
    let hello = signed(key, &user, hello(key, &user)).await?;
    ws.send(WsMessage::text(hello)).await?;
    if probe {
        let list = Message::UserListReq(Default::default()).into_envelope(&user, ids::TO_SERVER);
        ws.send(WsMessage::text(signed(key, &user, list).await?))
            .await?;
    }
    let welcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(frame) = ws.next().await {
            let WsMessage::Text(text) = frame? else {
                continue;
            };
            let env = Envelope::parse(text.as_str())?;
            match env.kind.as_str() {
                "USER_WELCOME" => return Ok(()),
                "ERROR" => bail!("refused: {}", text.as_str()),
                _ => {}
            }
        }
        bail!("closed before the welcome")
    })
    .await;
    welcome.context("no welcome within 60 s")??;
    Ok(ws)
}

/// Lets the kernel pick the source port at `connect`, for the pair of
/// addresses, rather than at `bind` among the ports free on every address:
/// otherwise all source addresses together share one range of ports.
fn no_port_at_bind(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int we own, on a socket we own; failing
    // only leaves the kernel's default.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A signed `USER_HELLO` for `user`, as a `socp` client says it.
fn hello(key: &PrivateKey, user: &str) -> Envelope {
    let pubkey = key.public().to_b64().to_owned();
    let mut extra = Map::new();
    extra.insert("user_id".into(), Value::String(user.to_owned()));
    let hello = UserHello {
        client: CLIENT_NAME.to_owned(),
        pubkey: pubkey.clone(),
        enc_pubkey: pubkey,
        ts: Some(now_ms()),
        caps: Some(vec![CAP_MAC_V1.to_owned()]),
        extra,
    };
    Message::UserHello(hello).into_envelope(user, ids::TO_SERVER)
}

/// Signs an envelope (off the reactor, on [`SIGNERS`]) and serializes it.
async fn signed(key: &Arc<PrivateKey>, user: &str, mut env: Envelope) -> Result<String> {
    let bytes = env.signed_bytes()?;
    let (done, signature) = tokio::sync::oneshot::channel();
    signer()
        .send((key.clone(), bytes, done))
        .map_err(|_| anyhow::anyhow!("the signing threads are gone"))?;
    env.sig = signature
        .await?
        .with_context(|| format!("signing for {user}"))?;
    Ok(env.to_json())
}

/// Threads that sign the users' frames. A fixed few rather than tokio's
/// blocking pool, which starts a thread (with its own stack and heap) for
/// each signature waiting, up to 512: with `--transport memory` those
/// would share the process with the node and be counted as its memory.
const SIGNERS: usize = 2;

type SignJob = (
    Arc<PrivateKey>,
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<String, socp::crypto::CryptoError>>,
);

/// The queue of [`SIGNERS`], started on first use.
fn signer() -> &'static std::sync::mpsc::Sender<SignJob> {
    static QUEUE: std::sync::OnceLock<std::sync::mpsc::Sender<SignJob>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SignJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for _ in 0..SIGNERS {
            let rx = rx.clone();
            std::thread::spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((key, bytes, done)) = job else {
                        return;
                    };
                    let _ = done.send(key.sign_b64(&bytes));
                }
            });
        }
        tx
    })
}

/// Signs a few frames at once, so that the signing threads and their
/// heaps exist before a first reading.
pub(crate) async fn warm_signers(key: &Arc<PrivateKey>) -> Result<()> {
    let users: Vec<String> = (0..SIGNERS * 4).map(|i| format!("warm{i}")).collect();
    let warm = users.iter().map(|user| signed(key, user, hello(key, user)));
    for r in futures_util::future::join_all(warm).await {
        r?;
    }
    Ok(())
}

/// Reads and drops whatever the node sends, until the connection ends.
async fn stay_idle(mut ws: Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

fn figures(cfg: &IdleConfig, runs: &[Run]) -> Value {
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "binary": r.label,
                "transport": r.transport,
                "socp": r.socp,
                "pipe": r.pipe,
                "levels": r.levels.iter().enumerate().map(|(i, l)| json!({
                    "users": l.users,
                    "marginal_kib_per_user": marginal(&r.levels, i),
                    "node_rss_kib": l.rss_kib,
                    "rss_per_idle_user_kib": l.per_user_kib,
                    "logins_per_s": l.logins_per_s,
                    "node_cpu_ms_per_login": l.node_cpu_ms_per_login,
                    "master_rss_per_user_kib": l.master_per_user_kib,
                    "other_local_rss_per_user_kib": l.other_local_per_user_kib,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "idle_scale": { "probe": cfg.probe, "remote": cfg.remote, "runs": runs } })
}

/// RSS growth per user added since the level before `i` (None for the
/// first): the fixed costs of a run (its threads' heaps, the login
/// machinery) cancel out.
fn marginal(levels: &[Level], i: usize) -> Option<f64> {
    let (before, at) = (levels.get(i.checked_sub(1)?)?, levels.get(i)?);
    let added = at.users.checked_sub(before.users).filter(|&n| n > 0)?;
    Some((at.rss_kib - before.rss_kib) / added as f64)
}

/// The figures as a table: one row per level, a column pair per binary
/// and transport ("-" where a run has no such level).
pub fn table(f: &Value) -> String {
    use std::fmt::Write;
    let runs = f["idle_scale"]["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    let probe = if f["idle_scale"]["probe"].as_bool() == Some(true) {
        " (each user asked for USER_LIST)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "socp-bench: RSS per idle authenticated user on one node{probe}\n\
         (KiB/user: RSS growth since the node started, per user online; \
         (+x): per user added since the level above)"
    );
    let name = |r: &Value| match r["transport"].as_str() {
        Some("memory") => format!("{} (mem)", r["binary"].as_str().unwrap_or("?")),
        _ => r["binary"].as_str().unwrap_or("?").to_owned(),
    };
    let mut head = format!("{:>8}", "users");
    for r in &runs {
        let name = name(r);
        head += &format!(
            " {:>22} {:>16}",
            format!("{name} KiB/user"),
            format!("{name} MiB")
        );
    }
    let _ = writeln!(out, "{head}");
    let mut users: Vec<u64> = runs
        .iter()
        .flat_map(|r| r["levels"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["users"].as_u64())
        .collect();
    users.sort_unstable();
    users.dedup();
    for n in users {
        let mut line = format!("{n:>8}");
        for r in &runs {
            let level = r["levels"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["users"].as_u64() == Some(n)));
            match level {
                Some(l) => {
                    let kib = l["rss_per_idle_user_kib"].as_f64().unwrap_or(0.0);
                    let mib = l["node_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0;
                    let kib = match l["marginal_kib_per_user"].as_f64() {
                        Some(m) => format!("{kib:.2} (+{m:.2})"),
                        None => format!("{kib:.2}"),
                    };
                    line += &format!(" {kib:>22} {mib:>16.0}");
                }
                None => line += &format!(" {:>22} {:>16}", "-", "-"),
            }
        }
        let _ = writeln!(out, "{line}");
    }
    for r in &runs {
        let logins: Vec<String> = r["levels"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        let rate = l["logins_per_s"].as_f64().unwrap_or(0.0);
                        match l["node_cpu_ms_per_login"].as_f64() {
                            Some(cpu) => format!("{rate:.0}/s, {cpu:.2} ms CPU"),
                            None => format!("{rate:.0}/s"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name = name(r);
        let _ = writeln!(out, "logins ({name}), per level: {}", logins.join("; "));
        if f["idle_scale"]["remote"].as_bool() == Some(true) {
            let costs: Vec<String> = r["levels"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| {
                            format!(
                                "master {:.2}, other local {:.2}",
                                l["master_rss_per_user_kib"].as_f64().unwrap_or(0.0),
                                l["other_local_rss_per_user_kib"].as_f64().unwrap_or(0.0)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "KiB per user elsewhere ({name}), per level: {}",
                costs.join("; ")
            );
        }
    }
    for r in runs.iter().filter(|r| r["pipe"].is_object()) {
        let p = &r["pipe"];
        let _ = writeln!(
            out,
            "{}: the node and its users in this process; the pipes' own share of the KiB/user above: {:.3} KiB ({} B: shared state {} B as allocated + {} B for the user's end); {} B sent to idle users after their welcome (dropped). Not in memory mode: the socket's entry in tokio's I/O driver",
            name(r),
            p["bytes_per_user"].as_f64().unwrap_or(0.0) / 1024.0,
            p["bytes_per_user"],
            p["shared_block_bytes"],
            p["end_bytes"],
            p["discarded_bytes"],
        );
    }
    out
}
