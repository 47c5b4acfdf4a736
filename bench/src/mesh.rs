//! `socp-bench --mesh N`: a master and N locals as `socp node` processes
//! (the locals given only the master's URL), senders and receivers spread
//! over the locals so every DM crosses from one local to another, saturated
//! for `--seconds`. Reports cross-local DMs/s and each process's CPU per DM
//! (from `/proc`), for the binary under test and, with `--baseline`, for
//! another binary in the same run, as a table and JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::SinkExt;
use serde_json::{Value, json};
use socp::wire::ids;
use socp::wire::messages::{Message, UserLookup};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::node_proc::NodeProc;
use crate::procfs::{cpu_ms_of, raise_fd_limit};
use crate::throughput::load::{Conn, Observed, SenderPlan, receiver, sender};
use crate::throughput::{Material, bench_node_extra, material};

/// How long the locals get to learn each other from the master and link.
const SETTLE: Duration = Duration::from_secs(3);

/// Settings of a mesh benchmark.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The `socp` binary under test.
    pub socp: PathBuf,
    /// Another binary measured the same way in the same run (today's main).
    pub baseline: Option<PathBuf>,
    pub locals: usize,
    /// Sender/receiver pairs, spread over the locals.
    pub pairs: usize,
    pub seconds: u64,
    /// Each binary is measured this many times, alternating (a busy
    /// machine's load shifts between runs); the median run is reported.
    pub rounds: usize,
    /// Flags for the nodes of the binary under test only (`--new-flag`).
    pub new_flags: Vec<String>,
    pub out: Option<PathBuf>,
}

/// A master and its locals.
struct MeshRig {
    master: NodeProc,
    locals: Vec<NodeProc>,
    _dir: tempfile::TempDir,
}

impl MeshRig {
    fn start(socp: &Path, n: usize, extra: &[String]) -> Result<MeshRig> {
        let dir = tempfile::tempdir()?;
        let master = bench_node_extra(socp, &dir.path().join("m"), "master", None, extra)?;
        let url = master.url();
        let locals = (0..n)
            .map(|i| {
                let at = dir.path().join(format!("l{i}"));
                bench_node_extra(socp, &at, "local", Some(&url), extra)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MeshRig {
            master,
            locals,
            _dir: dir,
        })
    }

    fn cpu_ms(&self) -> (f64, Vec<f64>) {
        let locals = self.locals.iter().map(NodeProc::cpu_ms).collect();
        (self.master.cpu_ms(), locals)
    }
}

/// Figures of one mesh run.
struct MeshRun {
    rate: f64,
    master_cpu_ms_per_dm: f64,
    local_cpu_ms_per_dm: Vec<f64>,
    /// This process: the senders and receivers.
    load_cpu_ms_per_dm: f64,
}

impl MeshRun {
    fn local_mean(&self) -> f64 {
        let n = self.local_cpu_ms_per_dm.len().max(1) as f64;
        self.local_cpu_ms_per_dm.iter().sum::<f64>() / n
    }

    fn figures(&self, label: &str, socp: &Path) -> Value {
        let mean = self.local_mean();
        let nodes = self.master_cpu_ms_per_dm + self.local_cpu_ms_per_dm.iter().sum::<f64>();
        json!({
            "label": label,
            "socp": socp.display().to_string(),
            "cross_local_dms_per_s": self.rate.round(),
            "cpu_ms_per_dm": {
                "master": self.master_cpu_ms_per_dm,
                "locals": self.local_cpu_ms_per_dm,
                "local_mean": mean,
                "all_nodes": nodes,
                "load_generator": self.load_cpu_ms_per_dm,
            },
            "master_cpu_vs_local": self.master_cpu_ms_per_dm / mean.max(1e-9),
        })
    }
}

/// Sender `i` sits on local `i % n`, its receiver on the next local.
async fn measure(rig: &MeshRig, m: &Material, pairs: usize, seconds: u64) -> Result<MeshRun> {
    let n = rig.locals.len();
    let seen = Arc::new(Observed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let url = rig.locals[(i + 1) % n].url();
        let c = Conn::open(&url, &format!("r{i}"), m.receiver_key.clone()).await?;
        receivers.push(tokio::spawn(receiver(c, seen.clone())));
    }
    let mut conns = Vec::new();
    for i in 0..pairs {
        let url = rig.locals[i % n].url();
        conns.push(Conn::open(&url, &format!("s{i}"), m.sender_key.clone()).await?);
    }
    // As a client does before its first DM to someone: it looks up their
    // key (a local holding presence on demand learns where they are).
    for (i, c) in conns.iter_mut().enumerate() {
        let ask = Message::UserDbGetUser(UserLookup {
            user_id: format!("r{i}"),
            extra: Default::default(),
        })
        .into_envelope(&c.user, ids::TO_SERVER);
        let text = c.seal(ask).await?;
        c.ws.send(WsMessage::text(text)).await?;
    }
    // Every receiver known at every local before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tasks = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let plan = SenderPlan {
            to: format!("r{i}"),
            dm: m.dm.clone(),
            presigned: Vec::new(),
            base: (i as u64) << 40,
            rate: None,
        };
        tasks.push(tokio::spawn(sender(c, plan, stop.clone(), seen.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, (m0, l0), b0, t0) = (
        seen.delivered.load(Ordering::Relaxed),
        rig.cpu_ms(),
        cpu_ms_of("self"),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, (m1, l1), b1, dt) = (
        seen.delivered.load(Ordering::Relaxed),
        rig.cpu_ms(),
        cpu_ms_of("self"),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    tasks.iter().for_each(|t| t.abort());
    receivers.iter().for_each(|t| t.abort());
    let dms = (c1 - c0).max(1) as f64;
    Ok(MeshRun {
        rate: (c1 - c0) as f64 / dt,
        master_cpu_ms_per_dm: (m1 - m0) / dms,
        local_cpu_ms_per_dm: l0.iter().zip(&l1).map(|(a, b)| (b - a) / dms).collect(),
        load_cpu_ms_per_dm: (b1 - b0) / dms,
    })
}

/// One binary: start its mesh, let it settle, measure, stop it.
async fn run_one(socp: &Path, extra: &[String], cfg: &MeshConfig, m: &Material) -> Result<MeshRun> {
    let rig = MeshRig::start(socp, cfg.locals, extra)?;
    tokio::time::sleep(SETTLE).await;
    let run = measure(&rig, m, cfg.pairs, cfg.seconds).await;
    drop(rig);
    run
}

/// Runs the mesh benchmark and prints (and optionally writes) the figures.
pub async fn run_mesh(cfg: MeshConfig) -> Result<Value> {
    if cfg.locals < 2 || cfg.pairs == 0 || cfg.seconds == 0 {
        bail!("--mesh needs at least 2 locals, and --pairs and --seconds at least 1");
    }
    raise_fd_limit();
    let started = Instant::now();
    let m = tokio::task::spawn_blocking(material).await??;
    let mut binaries = vec![("socp", cfg.socp.clone())];
    if let Some(b) = &cfg.baseline {
        binaries.push(("baseline", b.clone()));
    }
    let mut measured: Vec<Vec<MeshRun>> = binaries.iter().map(|_| Vec::new()).collect();
    for round in 0..cfg.rounds.max(1) {
        for (i, (label, socp)) in binaries.iter().enumerate() {
            eprintln!(
                "{:>5.1} s  {label} (round {}): master + {} locals, {} pairs, cross-local…",
                started.elapsed().as_secs_f64(),
                round + 1,
                cfg.locals,
                cfg.pairs
            );
            let extra = if i == 0 { &cfg.new_flags[..] } else { &[] };
            measured[i].push(run_one(socp, extra, &cfg, &m).await?);
        }
    }
    let mut runs = Vec::new();
    for ((label, socp), mut all) in binaries.iter().zip(measured) {
        all.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let rates: Vec<f64> = all.iter().map(|r| r.rate.round()).collect();
        let median = all.swap_remove(all.len() / 2);
        let mut figures = median.figures(label, socp);
        figures["rounds_dms_per_s"] = json!(rates);
        runs.push(figures);
    }
    let speedup = match runs.as_slice() {
        [new, base] => Some(
            new["cross_local_dms_per_s"].as_f64().unwrap_or(0.0)
                / base["cross_local_dms_per_s"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .max(1.0),
        ),
        _ => None,
    };
    let cpu_ratio = match runs.as_slice() {
        [new, base] => Some(
            base["cpu_ms_per_dm"]["all_nodes"].as_f64().unwrap_or(0.0)
                / new["cpu_ms_per_dm"]["all_nodes"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .max(1e-9),
        ),
        _ => None,
    };
    let figures = json!({
        "locals": cfg.locals,
        "pairs": cfg.pairs,
        "seconds_per_run": cfg.seconds,
        "rounds": cfg.rounds.max(1),
        "runs": runs,
        "speedup_vs_baseline": speedup,
        "node_cpu_per_dm_baseline_over_socp": cpu_ratio,
    });
    crate::publish(&table(&figures), &figures, cfg.out.as_deref())?;
    Ok(figures)
}

/// The figures as a text table.
pub fn table(f: &Value) -> String {
    let mut out = format!(
        "mesh: 1 master + {} locals, {} cross-local pairs, {} s per run, median of {} rounds\n",
        f["locals"], f["pairs"], f["seconds_per_run"], f["rounds"]
    );
    out += &format!(
        "{:<10} {:>8} {:>12} {:>11} {:>12} {:>11} {:>9}  {}\n",
        "binary",
        "DMs/s",
        "master ms/DM",
        "local ms/DM",
        "master/local",
        "nodes ms/DM",
        "load ms/DM",
        "each local ms/DM"
    );
    for r in f["runs"].as_array().into_iter().flatten() {
        let cpu = &r["cpu_ms_per_dm"];
        let locals: Vec<String> = cpu["locals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.4}", v.as_f64().unwrap_or(0.0)))
            .collect();
        let ms = |k: &str| cpu[k].as_f64().unwrap_or(0.0);
        out += &format!(
            "{:<10} {:>8.0} {:>12.4} {:>11.4} {:>11.1}% {:>11.4} {:>9.4}  {}\n",
            r["label"].as_str().unwrap_or("?"),
            r["cross_local_dms_per_s"].as_f64().unwrap_or(0.0),
            ms("master"),
            ms("local_mean"),
            r["master_cpu_vs_local"].as_f64().unwrap_or(0.0) * 100.0,
            ms("all_nodes"),
            ms("load_generator"),
            locals.join(" ")
        );
    }
    for r in f["runs"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<10} DMs/s of each round: {}\n",
            r["label"].as_str().unwrap_or("?"),
            r["rounds_dms_per_s"]
        );
    }
    if let Some(s) = f["speedup_vs_baseline"].as_f64() {
        out += &format!("cross-local throughput vs baseline: {s:.2}x\n");
    }
    if let Some(s) = f["node_cpu_per_dm_baseline_over_socp"].as_f64() {
        out += &format!("node CPU per DM, baseline / socp: {s:.2}x\n");
    }
    out
}
