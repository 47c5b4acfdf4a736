//! The probe of the attack benchmark: DMs across servers and on one
//! server every 50 ms and group messages, their latency and delivery per
//! phase, and what reached the probe users that should not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use socp::content;
use socp::crypto::PrivateKey;
use socp::wire::messages::Message;

use super::peer::{Hook, Peer, Tally, padded, with_id};
use super::{GROUP_EVERY, Mesh, PROBE_EVERY};
use crate::percentile;

/// Latency and delivery of the probe, per phase.
#[derive(Default)]
pub(super) struct Probe {
    /// msg_id -> (phase, sent at).
    pending: Mutex<HashMap<String, (usize, Instant)>>,
    /// Per phase, per path ("cross", "same", "group"): latencies in µs and sent.
    lat: Mutex<BTreeMap<(usize, &'static str), Vec<u64>>>,
    sent: Mutex<BTreeMap<(usize, &'static str), u64>>,
    pub(super) phase: AtomicUsize,
    /// RECEIPTs the probe senders got for ids they never sent.
    pub(super) forged_receipts: AtomicU64,
    /// GROUP_KEY_SHAREs the probe receiver got from anyone but the owner.
    pub(super) foreign_shares: AtomicU64,
    /// FILE_STARTs that reached the probe receiver.
    pub(super) file_starts: AtomicU64,
    /// Probe connections the nodes closed.
    pub(super) disconnects: AtomicU64,
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

    pub(super) fn figures(&self, phase: usize, path: &'static str) -> Value {
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

/// Runs the probe until `stop`: pa (local1) -> pb (local2), pc -> pd (both
/// local1), and pa's group messages to pb.
pub(super) async fn probe(
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
        &mesh.l2.url(),
        "pb",
        key,
        quiet.clone(),
        receiver_hook("cross", p.clone()),
    )
    .await?;
    let pd = Peer::open_with(
        &mesh.l1.url(),
        "pd",
        key,
        quiet.clone(),
        receiver_hook("same", p.clone()),
    )
    .await?;
    let pa = Peer::open_with(
        &mesh.l1.url(),
        "pa",
        key,
        answers.clone(),
        sender_hook(p.clone()),
    )
    .await?;
    let pc = Peer::open_with(
        &mesh.l1.url(),
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
        socp::wire::now_ms(),
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
