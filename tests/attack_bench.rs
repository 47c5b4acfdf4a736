//! `socp-bench --attacks` runs to the end: a short run of every attack of
//! issue 11 against a real mesh of this build's `socp` nodes, where the
//! probe's DMs are still delivered. Its figures are measurements, not
//! asserted here (no timing asserts).

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::cached_key;
use socp_bench::AttackConfig;

const BIN: &str = env!("CARGO_BIN_EXE_socp");
/// Keys, three nodes, two 2-second phases, a drain: well under this.
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_bench_completes_and_the_probe_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("attacks.json");
    let keys = dir.path().join("keys");
    install_keys(&keys);
    let cfg = AttackConfig {
        socp: BIN.into(),
        seconds: 2,
        rss_bound_mib: 256,
        out: Some(out.clone()),
        keys: Some(keys),
    };
    let run = tokio::time::timeout(RUN_LIMIT, socp_bench::run_attacks(cfg)).await;
    let returned = run
        .unwrap_or_else(|_| panic!("socp-bench --attacks did not finish within {RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("socp-bench --attacks failed: {e:#}"));
    // What --out wrote is what the run returned, and what the table shows.
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(f, returned);
    let table = socp_bench::attacks::table(&f);
    assert!(table.contains("under attack"), "{table}");
    // The probe works, and under attack its DMs still arrive. (How
    // many it sends under attack depends on the machine: in a debug build
    // on a loaded machine the bench's own signing competes with the
    // attackers' in one process. Figures come from release runs.)
    for path in ["cross_server", "same_server"] {
        let base = &f["baseline"][path];
        assert!(
            base["delivered"].as_u64().unwrap() > 0,
            "no probe DM delivered {path} at baseline:\n{table}"
        );
        let attack = &f["under_attack"][path];
        let (sent, delivered) = (
            attack["sent"].as_u64().unwrap(),
            attack["delivered"].as_u64().unwrap(),
        );
        assert!(
            sent == 0 || delivered > 0,
            "no probe DM delivered {path} under attack:\n{table}"
        );
    }
    assert_eq!(f["victims"]["probe_disconnects"], 0, "{table}");
    assert_eq!(f["attacks"].as_object().unwrap().len(), 11, "{table}");
}

/// Fixture and cached keys where the bench looks for them, so the run
/// generates no RSA-4096 key.
fn install_keys(folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    let fixture = |name: &str| common::vectors_dir().join(format!("keys/{name}.pem"));
    let keys = [
        ("probe", fixture("alice")),
        ("attacker", fixture("bob")),
        ("rogue", cached_key("server-3")),
        ("master", cached_key("server-0")),
        ("local1", cached_key("server-1")),
        ("local2", cached_key("server-2")),
    ];
    for (name, from) in keys {
        std::fs::copy(&from, folder.join(format!("{name}.pem")))
            .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}
