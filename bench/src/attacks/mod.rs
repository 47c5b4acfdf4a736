//! `socp-bench --attacks`: the "done when" measurement of issue 11. Starts a
//! master and two locals as `socp node` processes with small configured
//! bounds, runs a probe (a DM every 50 ms across servers and on one server,
//! group messages), first alone and then with every attack of issue 11
//! running at once, each from its own task, and reports the probe's latency
//! and delivery, each node's peak RSS against a memory budget, and what the
//! nodes answered each attack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use socp::client::Session;
use socp::crypto::PrivateKey;

use crate::node_proc::NodeProc;
use crate::procfs::{cpu_ms_of, raise_fd_limit, status_kib_of};
use crate::throughput::bench_node_options;

mod attackers;
mod peer;
mod probe;
mod report;

use attackers::{
    Target, at_rate, file_starts, garbage, injection, offline_flood, oversized, rogue, shared_ids,
    silent, slow_readers, takeover,
};
use peer::Tally;
use probe::{Probe, probe};
pub use report::table;

/// The probe sends a DM every this often, on each of its two pairs.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(50);
/// And a group message every this often.
pub(super) const GROUP_EVERY: Duration = Duration::from_millis(250);
/// After each phase, time for the last probe DMs to arrive.
const DRAIN: Duration = Duration::from_secs(2);
/// The p90 latency issue 11 asks for under attack.
const TARGET_P90_MS: f64 = 200.0;
/// Offline ids the mailbox flood writes to.
pub(super) const OFFLINE_IDS: usize = 24;
/// Silent connections (never say hello) to the master from one address,
/// more than `--max-conns-per-ip` allows.
pub(super) const SILENT: usize = 300;
/// Garbage connections per second.
pub(super) const GARBAGE_PER_S: u64 = 100;
/// Partial transfers opened at the probe receiver per round.
pub(super) const FILE_STARTS: usize = 16;

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
    /// The `socp` binary the nodes run.
    pub socp: PathBuf,
    /// Seconds of each phase (baseline, then under attack).
    pub seconds: u64,
    /// The memory budget each node's peak RSS is held against, in MiB.
    pub rss_bound_mib: u64,
    pub out: Option<PathBuf>,
    /// A folder to take the keys from instead of generating six RSA-4096
    /// keys (the tests): `probe.pem`, `attacker.pem` and `rogue.pem` for the
    /// users and the rogue server, `master.pem`, `local1.pem` and
    /// `local2.pem` for the nodes.
    pub keys: Option<PathBuf>,
}

/// The three nodes.
pub(super) struct Mesh {
    master: NodeProc,
    pub(super) l1: NodeProc,
    pub(super) l2: NodeProc,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn start(socp: &Path, keys: Option<&Path>) -> Result<Mesh> {
        let dir = tempfile::tempdir()?;
        let bounds: Vec<String> = NODE_BOUNDS
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect();
        let start = |name: &str, key: &str, role: &str, flags: &[String]| {
            let home = dir.path().join(name);
            if let Some(keys) = keys {
                let to = home.join("keys");
                std::fs::create_dir_all(&to)?;
                let from = keys.join(format!("{key}.pem"));
                std::fs::copy(&from, to.join(format!("{role}.pem")))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            NodeProc::start(bench_node_options(socp), &home, role, flags)
        };
        let master = start("m", "master", "master", &bounds)?;
        let local_flags: Vec<String> = ["--master-url".to_owned(), master.url()]
            .into_iter()
            .chain(bounds.iter().cloned())
            .collect();
        let l1 = start("l1", "local1", "local", &local_flags)?;
        let l2 = start("l2", "local2", "local", &local_flags)?;
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

/// The keys from `folder`, or three new ones.
fn keys(folder: Option<&Path>) -> Result<Keys> {
    if let Some(folder) = folder {
        let load = |name: &str| -> Result<Arc<PrivateKey>> {
            let path = folder.join(format!("{name}.pem"));
            let key = PrivateKey::load(&path).with_context(|| format!("{}", path.display()))?;
            Ok(Arc::new(key))
        };
        return Ok(Keys {
            probe: load("probe")?,
            attacker: load("attacker")?,
            rogue: load("rogue")?,
        });
    }
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
                let kib = status_kib_of(*pid, "VmRSS:");
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
    v.push(("bench process", cpu_ms_of("self")));
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
    say("socp-bench --attacks: generating keys and starting a master and two locals…");
    let from = cfg.keys.clone();
    let keys = tokio::task::spawn_blocking(move || keys(from.as_deref())).await??;
    let mesh = Mesh::start(&cfg.socp, cfg.keys.as_deref())?;
    // The offline ids (and the slow readers) exist, and are offline.
    let quiet = Arc::new(Tally::default());
    let users = (0..OFFLINE_IDS)
        .map(|i| format!("off{i}"))
        .chain(["m_slow0".to_owned(), "m_slow1".to_owned()]);
    for user in users {
        let s = Session::connect_retrying(
            &mesh.l2.url(),
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
        master: mesh.master.url(),
        l1: mesh.l1.url(),
        l2: mesh.l2.url(),
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
    crate::publish(&table(&figures), &figures, cfg.out.as_deref())?;
    Ok(figures)
}
